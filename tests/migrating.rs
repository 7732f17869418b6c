//! `docs/migrating.md`: every whole-config `toml` block passes `gatehouse check`, every
//! `toml fragment` block is TOML, and every key the guide writes is one docs/config.md's config
//! reference documents, so the guide cannot drift from what Gatehouse accepts.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use support::run_gatehouse;

struct Snippet {
    line: usize,
    fragment: bool,
    text: String,
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The ```toml and ```toml fragment blocks of a Markdown text.
fn snippets(markdown: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut open: Option<Snippet> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut open, line.trim_end()) {
            (None, "```toml") | (None, "```toml fragment") => {
                open = Some(Snippet {
                    line: i + 1,
                    fragment: line.contains("fragment"),
                    text: String::new(),
                });
            }
            (Some(_), "```") => out.extend(open.take()),
            (Some(s), text) => {
                s.text.push_str(text);
                s.text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(open.is_none(), "unclosed code block");
    out
}

/// Every key of a TOML value, except the names given to upstreams (`[upstream.api]`).
fn keys(value: &toml::Value, parent: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                if parent != "upstream" {
                    out.push(key.clone());
                }
                keys(child, key, out);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|item| keys(item, parent, out)),
        _ => {}
    }
}

/// docs/config.md mentions `key` as a whole word inside a code span.
fn documented(readme: &str, key: &str) -> bool {
    let span = format!(r"`[^`\n]*\b{}\b[^`\n]*`", regex::escape(key));
    regex::Regex::new(&span).unwrap().is_match(readme)
}

#[test]
fn every_whole_config_in_the_guide_passes_check() {
    let guide = read("docs/migrating.md");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for snippet in snippets(&guide).iter().filter(|s| !s.fragment) {
        let path = dir.path().join(format!("line-{}.toml", snippet.line));
        std::fs::write(&path, &snippet.text).unwrap();
        let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
        assert!(
            out.status.success(),
            "docs/migrating.md line {}: gatehouse check failed:\n{}\n{}",
            snippet.line,
            out.stderr,
            snippet.text
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} whole configs in the guide");
}

#[test]
fn fragments_are_toml() {
    let guide = read("docs/migrating.md");
    let fragments: Vec<Snippet> = snippets(&guide)
        .into_iter()
        .filter(|s| s.fragment)
        .collect();
    assert!(!fragments.is_empty());
    for snippet in fragments {
        if let Err(e) = snippet.text.parse::<toml::Table>() {
            panic!("docs/migrating.md line {}: not TOML: {e}", snippet.line);
        }
    }
}

#[test]
fn every_key_in_the_guide_is_in_the_config_reference() {
    let guide = read("docs/migrating.md");
    let readme = read("docs/config.md");
    let mut missing = Vec::new();
    for snippet in snippets(&guide) {
        let value: toml::Value = toml::Value::Table(snippet.text.parse().unwrap());
        let mut found = Vec::new();
        keys(&value, "", &mut found);
        for key in found {
            if !documented(&readme, &key) {
                missing.push(format!("line {}: `{key}`", snippet.line));
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
}

#[test]
fn the_block_reader_tells_whole_configs_from_fragments() {
    let md =
        "text\n```toml\n[listen]\n```\n```toml fragment\nx = 1\n```\n```nginx\nlisten 80;\n```\n";
    let found = snippets(md);
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].line, found[0].fragment), (2, false));
    assert_eq!(found[0].text, "[listen]\n");
    assert!(found[1].fragment);
    let mut all = Vec::new();
    let value: toml::Value = toml::Value::Table("[upstream.api]\nservers = []\n".parse().unwrap());
    keys(&value, "", &mut all);
    assert_eq!(all, ["upstream", "servers"]);
    assert!(documented("`max_body = \"1MB\"`", "max_body"));
    assert!(!documented("`max_bodyx`", "max_body"));
}
