//! The shipping files against the repo: `Dockerfile` (+ `.dockerignore`) and
//! `config/gatehouse.service`. No Docker engine or systemd runs here, so every path, binary name,
//! subcommand, flag and config they name is checked against what the repo and the built binary
//! really have: a renamed flag or a moved file fails here, not at `docker build` or boot.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use support::run_gatehouse;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The `[[bin]]` name Cargo builds, from Cargo.toml.
fn bin_name() -> String {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let bins = manifest["bin"].as_array().expect("[[bin]] in Cargo.toml");
    assert_eq!(bins.len(), 1, "one binary");
    bins[0]["name"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// A Dockerfile, read the way docker reads it: comments dropped, `\` continuations joined.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
    /// The stage (`FROM ... AS name`, else its index) the instruction belongs to.
    stage: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut stage = String::new();
    let mut stages = 0;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // comment lines (parser directives too) are dropped, even inside a continuation
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        let (part, continues) = match trimmed.strip_suffix('\\') {
            Some(part) => (part.trim_end(), true),
            None => (trimmed, false),
        };
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(part);
        if continues {
            pending = Some((start, joined));
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            stage = match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                Some(at) => words[at + 1].to_string(),
                None => stages.to_string(),
            };
            stages += 1;
        }
        out.push(Instruction {
            line: start,
            keyword,
            args: args.trim().to_string(),
            stage: stage.clone(),
        });
    }
    assert!(pending.is_none(), "Dockerfile ends inside a continuation");
    out
}

/// `COPY [--from=x] [--chown=..] SRC... DEST`: flags, sources, destination.
struct Copy {
    line: usize,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn copy_of(ins: &Instruction) -> Copy {
    let mut flags = BTreeMap::new();
    let mut paths = Vec::new();
    for word in ins.args.split_whitespace() {
        match word.strip_prefix("--") {
            Some(flag) => {
                let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
                flags.insert(k.to_string(), v.to_string());
            }
            None => paths.push(word.to_string()),
        }
    }
    assert!(
        !ins.args.starts_with('['),
        "line {}: JSON-form COPY not handled",
        ins.line
    );
    let dest = paths.pop().expect("COPY destination");
    assert!(
        !paths.is_empty(),
        "line {}: COPY without a source",
        ins.line
    );
    Copy {
        line: ins.line,
        from: flags.get("from").cloned(),
        sources: paths,
        dest,
    }
}

/// An exec-form (JSON array) command.
fn exec_form(args: &str, line: usize) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("line {line}: expected the exec (JSON) form, got {args}: {e}"))
}

struct Dockerfile {
    all: Vec<Instruction>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        Dockerfile {
            all: instructions(&read("Dockerfile")),
        }
    }

    fn final_stage(&self) -> &str {
        &self.all.last().expect("instructions").stage
    }

    /// The final stage's instructions with `keyword`.
    fn last(&self, keyword: &str) -> &Instruction {
        self.all
            .iter()
            .rev()
            .filter(|i| i.stage == self.final_stage())
            .find(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("no {keyword} in the final stage"))
    }

    fn copies(&self) -> Vec<Copy> {
        let kinds = ["COPY", "ADD"];
        self.all
            .iter()
            .filter(|i| kinds.contains(&i.keyword.as_str()))
            .map(copy_of)
            .collect()
    }

    fn stage_runs(&self, stage: &str) -> String {
        let runs = self
            .all
            .iter()
            .filter(|i| i.stage == stage && i.keyword == "RUN");
        runs.map(|i| i.args.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// The container's command: ENTRYPOINT followed by CMD.
    fn command(&self) -> Vec<String> {
        let ins = self.last("ENTRYPOINT");
        let mut cmd = exec_form(&ins.args, ins.line);
        let args = self.last("CMD");
        cmd.extend(exec_form(&args.args, args.line));
        cmd
    }

    fn healthcheck(&self) -> Vec<String> {
        let ins = self.last("HEALTHCHECK");
        let (_, cmd) = ins
            .args
            .split_once("CMD ")
            .unwrap_or_else(|| panic!("line {}: HEALTHCHECK without CMD", ins.line));
        exec_form(cmd.trim(), ins.line)
    }

    /// The repo file a path in the image was copied from (`COPY repo/path /image/path`).
    fn repo_source_of(&self, image_path: &str) -> String {
        let copy = self
            .copies()
            .into_iter()
            .rev()
            .find(|c| c.from.is_none() && c.dest == image_path)
            .unwrap_or_else(|| panic!("nothing is copied to {image_path}"));
        copy.sources[0].clone()
    }
}

/// The value following `flag` in a command line.
fn flag<'a>(cmd: &'a [String], name: &str) -> &'a str {
    let at = cmd
        .iter()
        .position(|w| w == name)
        .unwrap_or_else(|| panic!("{name} not in {cmd:?}"));
    cmd.get(at + 1)
        .unwrap_or_else(|| panic!("{name} without a value"))
}

/// `gatehouse SUB --help` succeeds and lists every flag `cmd` uses: the subcommand and its flags
/// exist in the binary this repo builds.
fn assert_runs(cmd: &[String]) {
    let sub = cmd[1].as_str();
    let help = run_gatehouse(&[sub, "--help"], &[], &[]);
    assert!(
        help.status.success(),
        "`gatehouse {sub}` does not exist: {}",
        help.stderr
    );
    for word in cmd.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.stdout.contains(word.as_str()),
            "`gatehouse {sub}` has no {word}:\n{}",
            help.stdout
        );
    }
}

/// `.dockerignore` patterns, as far as this repo uses them: paths (a directory ignores what is
/// under it), `**/` prefixes, `*` in the last component; `!` re-includes.
fn docker_ignored(rel: &str) -> bool {
    let mut ignored = false;
    for line in read(".dockerignore").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern = pattern.trim_end_matches('/');
        let matches = |path: &str| match pattern.strip_prefix("**/") {
            Some(tail) => path == tail || path.ends_with(&format!("/{tail}")),
            None => glob(pattern, path),
        };
        // a path is ignored when it or any folder above it matches
        let mut prefixes = rel
            .match_indices('/')
            .map(|(i, _)| &rel[..i])
            .collect::<Vec<_>>();
        prefixes.push(rel);
        if prefixes.into_iter().any(matches) {
            ignored = !negate;
        }
    }
    ignored
}

/// `*` matches within one path component.
fn glob(pattern: &str, path: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == path,
        Some((head, tail)) => {
            path.starts_with(head)
                && path.len() >= head.len() + tail.len()
                && path.ends_with(tail)
                && !path[head.len()..path.len() - tail.len()].contains('/')
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

#[test]
fn every_copied_path_exists_and_reaches_the_build_context() {
    let docker = Dockerfile::load();
    let copies = docker.copies();
    assert!(
        copies.iter().any(|c| c.from.is_none()),
        "nothing copied from the repo"
    );
    for copy in copies.iter().filter(|c| c.from.is_none()) {
        for src in &copy.sources {
            let rel = src.trim_start_matches("./").trim_end_matches('/');
            assert!(
                repo().join(rel).exists(),
                "Dockerfile line {}: COPY {src}: no such path in the repo",
                copy.line
            );
            assert!(
                !docker_ignored(rel),
                "Dockerfile line {}: COPY {src} is excluded by .dockerignore",
                copy.line
            );
        }
    }
}

#[test]
fn stage_copies_take_what_the_build_stage_makes() {
    let docker = Dockerfile::load();
    let bin = bin_name();
    let mut binary_copied = false;
    for copy in docker.copies() {
        let Some(stage) = &copy.from else { continue };
        let runs = docker.stage_runs(stage);
        for src in &copy.sources {
            let made = src.trim_end_matches('/');
            assert!(
                runs.contains(made),
                "line {}: {src} is not made by any RUN of stage {stage}",
                copy.line
            );
            if Path::new(src).file_name().and_then(|n| n.to_str()) == Some(bin.as_str()) {
                // the RUN that puts the binary there builds it too
                let run = docker
                    .all
                    .iter()
                    .find(|i| i.stage == *stage && i.keyword == "RUN" && i.args.contains(made))
                    .unwrap();
                assert_built_by_cargo(&run.args, &bin, src);
                binary_copied = true;
            }
        }
    }
    assert!(
        binary_copied,
        "the final image gets no {bin} from the build stage"
    );
}

/// `src` is the binary `cargo build --release --locked` wrote: installed from
/// `target/<triple>/release/<bin>` (a `--target` build) or `target/release/<bin>`.
fn assert_built_by_cargo(run: &str, bin: &str, src: &str) {
    assert!(
        run.contains("cargo build --release --locked"),
        "{src} needs `cargo build --release --locked`"
    );
    let with_triple = format!(
        r#"target/[^/\s]+/release/{bin}"?\s+{}(\s|$)"#,
        regex::escape(src)
    );
    let plain = format!(r#"target/release/{bin}"?\s+{}(\s|$)"#, regex::escape(src));
    let found = |re: &str| regex::Regex::new(re).unwrap().is_match(run);
    if found(&with_triple) {
        assert!(
            run.contains("--target "),
            "target/<triple>/ needs a --target build"
        );
    } else {
        assert!(
            found(&plain),
            "{src} is not installed from cargo's target/…/release/{bin}"
        );
        assert!(
            !run.contains("--target "),
            "a --target build writes elsewhere"
        );
    }
}

#[test]
fn a_static_base_image_gets_a_static_binary() {
    let docker = Dockerfile::load();
    let base = &docker.last("FROM").args;
    let static_base = base.contains("distroless/static") || base.starts_with("scratch");
    if !static_base {
        return;
    }
    let build = docker
        .all
        .iter()
        .filter(|i| i.stage != docker.final_stage() && i.keyword == "ENV")
        .any(|i| i.args.contains("+crt-static"));
    assert!(
        build,
        "{base} has no libc: the build must set -C target-feature=+crt-static"
    );
}

#[test]
fn entrypoint_and_healthcheck_run_the_copied_binary_with_real_subcommands() {
    let docker = Dockerfile::load();
    let bin = bin_name();
    let command = docker.command();
    let health = docker.healthcheck();
    let image_bin = docker
        .copies()
        .into_iter()
        .find(|c| c.from.is_some() && c.sources[0].ends_with(&format!("/{bin}")))
        .map(|c| c.dest)
        .expect("binary COPY");
    for cmd in [&command, &health] {
        assert_eq!(cmd[0], image_bin, "{cmd:?} does not run the copied binary");
        assert_eq!(
            Path::new(&cmd[0]).file_name().unwrap().to_str().unwrap(),
            bin
        );
        assert_runs(cmd);
    }
    assert_eq!(command[1], "run");
    assert_eq!(health[1], "health");
}

#[test]
fn the_container_config_passes_check_and_matches_healthcheck_ports_and_volume() {
    let docker = Dockerfile::load();
    let config_in_image = flag(&docker.command(), "--config").to_string();
    let source = docker.repo_source_of(&config_in_image);
    let path = repo().join(&source);
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert!(out.status.success(), "{source}: {}", out.stderr);

    let config = gatehouse::config::load(&path).unwrap();
    let admin: SocketAddr = flag(&docker.healthcheck(), "--admin").parse().unwrap();
    assert_eq!(
        config.listen.admin,
        Some(admin),
        "HEALTHCHECK asks {admin}, {source} has [listen] admin = {:?}",
        config.listen.admin
    );
    let http = *config.listen.http.first().expect("http listener");
    assert!(
        http.ip().is_unspecified(),
        "{source}: a container must bind all interfaces, not {http}"
    );
    let exposed: Vec<u16> = docker
        .last("EXPOSE")
        .args
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    for port in [
        Some(http.port()),
        config.listen.https.first().map(|a| a.port()),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            exposed.contains(&port),
            "port {port} not in EXPOSE {exposed:?}"
        );
        assert!(
            port >= 1024,
            "uid 65532 cannot bind {port} on every runtime"
        );
    }
    assert_eq!(
        PathBuf::from(&docker.last("VOLUME").args),
        config.server.state_dir,
        "VOLUME is not the config's state_dir"
    );
}

#[test]
fn the_image_runs_as_a_non_root_user() {
    let docker = Dockerfile::load();
    let user = &docker.last("USER").args;
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0", ""].contains(&name), "USER {user} is root");
    // the state dir is handed to that user
    let chowned = docker
        .copies()
        .into_iter()
        .any(|c| c.from.is_some() && c.dest.starts_with("/var/lib"));
    let copy_line = docker
        .all
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.contains("/var/lib"))
        .expect("state dir COPY");
    assert!(chowned && copy_line.args.contains(&format!("--chown={user}")));
}

#[test]
fn dockerignore_keeps_target_and_git_out() {
    for path in ["target", "target/release/gatehouse", ".git/HEAD"] {
        assert!(docker_ignored(path), "{path} is sent to the build context");
    }
    for path in ["src/main.rs", "Cargo.lock", "config/docker.toml"] {
        assert!(!docker_ignored(path), "{path} is ignored");
    }
}

#[test]
fn the_line_parser_joins_continuations_and_skips_comments() {
    let text = "# syntax=docker/dockerfile:1\nFROM a AS build\nRUN one \\\n  # inner comment\n  && two\nFROM b\nCMD [\"x\"]\n";
    let all = instructions(text);
    let words: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|i| (i.keyword.as_str(), i.args.as_str(), i.stage.as_str()))
        .collect();
    assert_eq!(
        words,
        [
            ("FROM", "a AS build", "build"),
            ("RUN", "one && two", "build"),
            ("FROM", "b", "1"),
            ("CMD", "[\"x\"]", "1"),
        ]
    );
    assert_eq!(all[1].line, 3);
}

// ---------------------------------------------------------------------------------------------
// systemd unit
// ---------------------------------------------------------------------------------------------

/// `Key=Value` lines of a unit file; a key given twice keeps every value.
fn unit(rel: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read(rel).lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=Value");
        keys.entry(k.to_string()).or_default().push(v.to_string());
    }
    keys
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

#[test]
fn the_systemd_unit_runs_real_subcommands_on_its_config_and_state_dir() {
    let unit = unit("config/gatehouse.service");
    let bin = bin_name();
    let config_dir = format!("/etc/{}", one(&unit, "ConfigurationDirectory"));
    for key in ["ExecStartPre", "ExecStart"] {
        let cmd: Vec<String> = one(&unit, key)
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(cmd[0], format!("/usr/local/bin/{bin}"), "{key}");
        assert!(
            flag(&cmd, "--config").starts_with(&format!("{config_dir}/")),
            "{key}: the config is not under ConfigurationDirectory"
        );
        assert_runs(&cmd);
    }
    assert!(one(&unit, "ExecStartPre").contains(" check "));
    assert!(one(&unit, "ExecStart").contains(" run "));
    // SIGHUP is Gatehouse's reload signal (tests/reload.rs)
    assert_eq!(one(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(
        ["simple", "exec"].contains(&one(&unit, "Type")),
        "no sd_notify"
    );

    // the shipped config leaves state_dir at its default: the unit's StateDirectory
    let config = gatehouse::config::load(&repo().join("config/gatehouse.toml")).unwrap();
    let state = format!("/var/lib/{}", one(&unit, "StateDirectory"));
    assert_eq!(config.server.state_dir, PathBuf::from(state));

    for (key, want) in [
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(&unit, key), want, "{key}");
    }
    let nofile: u64 = one(&unit, "LimitNOFILE").parse().unwrap();
    assert!(
        nofile > 10_000,
        "LimitNOFILE under the default max_connections"
    );
}

/// `systemd-analyze verify` in a scratch root holding the unit, the binary and the system's units
/// (no systemd runs here). Skipped where systemd is not installed.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    };
    assert!(out.status.success());
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let place = |from: &Path, to: &str| {
        let to = r.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    };
    place(Path::new(support::BIN), "usr/local/bin/gatehouse");
    place(Path::new("/bin/kill"), "bin/kill");
    place(
        &repo().join("config/gatehouse.service"),
        "etc/systemd/system/gatehouse.service",
    );
    // the targets the unit names (multi-user.target, network-online.target, ...)
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg(r.join("etc/systemd/system/gatehouse.service"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
