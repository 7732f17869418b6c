use super::*;
use crate::config::{parse, Config, ConfigError, Route};
use std::path::Path;

const PATH: &str = "/etc/gatehouse/gatehouse.toml";

/// A config with `server` in `[server]`, `site` in the one site, and two proxy routes: `/a/`
/// with `route` and `/b/` with nothing of its own.
fn config(server: &str, site: &str, route: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
{server}

[[site]]
{site}

  [[site.route]]
  path = "/a/"
  upstream = "app"
  {route}

  [[site.route]]
  path = "/b/"
  upstream = "app"

[upstream.app]
servers = ["127.0.0.1:9"]
"#
    )
}

fn load(text: &str) -> Config {
    parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn errors(text: &str) -> String {
    match parse(Path::new(PATH), text) {
        Err(ConfigError::Invalid(errors)) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected config errors, got {other:?}"),
    }
}

/// `name: op value…` for each rule, sorted by name, literal values only.
fn show(rules: &HeaderRules) -> Vec<String> {
    let mut out: Vec<String> = rules
        .rules
        .iter()
        .map(|r| {
            let values = match &r.op {
                HeaderOp::Set(v) | HeaderOp::Add(v) | HeaderOp::Default(v) => v
                    .iter()
                    .map(|v| match v {
                        RuleValue::Literal(v) => v.to_str().unwrap().to_string(),
                        RuleValue::Template { template, slot } => format!("{template}@{slot}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" | "),
                HeaderOp::Remove => String::new(),
            };
            format!("{}: {} {values}", r.name, r.op.word())
                .trim_end()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

fn routes(config: &Config) -> (&Route, &Route) {
    let routes = &config.sites[0].routes;
    (&routes[0], &routes[1])
}

#[test]
fn rules_are_inherited_per_header_name() {
    let text = config(
        r#"response_headers = { set = { "X-Frame-Options" = "DENY", "X-Server-Only" = "s" }, remove = ["Server"] }
request_headers = { set = { "X-Env" = "prod" } }"#,
        r#"response_headers = { set = { "X-Frame-Options" = "SAMEORIGIN" }, default = { "Cache-Control" = "no-store" } }
request_headers = { add = { "X-Tag" = "site" } }"#,
        r#"response_headers = { set = { "x-frame-options" = "ALLOW-FROM x" }, remove = ["Cache-Control"], add = { "Server" = "gatehouse" } }
request_headers = { remove = ["X-Env"] }"#,
    );
    let config = load(&text);
    assert_eq!(
        show(&config.server.response_headers),
        [
            "server: remove",
            "x-frame-options: set DENY",
            "x-server-only: set s"
        ]
    );
    let site = &config.sites[0];
    assert_eq!(
        show(&site.response_headers),
        [
            "cache-control: default no-store",
            "server: remove",
            "x-frame-options: set SAMEORIGIN",
            "x-server-only: set s"
        ]
    );
    let (a, b) = routes(&config);
    // the route's rule for a name wins, whatever it is; names it does not name come from above
    assert_eq!(
        show(&a.headers.response),
        [
            "cache-control: remove",
            "server: add gatehouse",
            "x-frame-options: set ALLOW-FROM x",
            "x-server-only: set s"
        ]
    );
    assert_eq!(
        show(&a.headers.request),
        ["x-env: remove", "x-tag: add site"]
    );
    assert!(!a.headers.response_as_site);
    assert_eq!(b.headers.response, site.response_headers);
    assert!(b.headers.response_as_site);
    assert_eq!(
        show(&b.headers.request),
        ["x-env: set prod", "x-tag: add site"]
    );
}

#[test]
fn nothing_written_is_nothing_to_do() {
    let config = load(&config("", "", ""));
    let (a, _) = routes(&config);
    assert!(a.headers.request.is_empty() && a.headers.response.is_empty());
    assert!(a.headers.response_as_site);
    assert_eq!(a.headers.upstream_host, None);
    assert_eq!(a.headers.forwarded_prefix, None);
}

#[test]
fn placeholders_are_parsed_and_numbered_per_route() {
    let text = config(
        r#"response_headers = { set = { "X-Id" = "{request_id}" } }"#,
        "",
        r#"request_headers = { set = { "X-Client" = "{client_ip}", "X-Lit" = "a{b" }, add = { "X-Many" = ["{host}", "lit", "{header.Accept}"] } }"#,
    );
    let config = load(&text);
    let (a, _) = routes(&config);
    assert_eq!(
        show(&a.headers.request),
        [
            "x-client: set {client_ip}@0",
            "x-lit: set a{b",
            "x-many: add {host}@1 | lit | {header.accept}@2"
        ]
    );
    assert_eq!(a.headers.request.templates, 3);
    assert_eq!(show(&a.headers.response), ["x-id: set {request_id}@0"]);
    assert_eq!(a.headers.response.templates, 1);
    assert_eq!(config.server.response_headers.templates, 1);
}

#[test]
fn unknown_placeholders_and_control_characters_are_errors() {
    let text = config(
        "",
        "",
        r#"response_headers = { set = { "X-A" = "{nope}", "X-B" = "a\r\nInjected: 1", "X-C" = "{host}\u0000" } }"#,
    );
    let err = errors(&text);
    assert!(err.contains("site.route.response_headers.set"), "{err}");
    assert!(err.contains("unknown placeholder `{nope}`"), "{err}");
    assert!(err.contains("{client_ip}"), "{err}");
    assert!(
        err.contains("`X-B`: the value contains the control character '\\r'"),
        "{err}"
    );
    assert!(
        err.contains("`X-C`: the value contains the control character '\\0'"),
        "{err}"
    );
    assert!(err.contains(&format!("{PATH}:14:")), "{err}");
}

#[test]
fn framing_and_hop_by_hop_names_are_refused_everywhere() {
    for name in [
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
    ] {
        for rule in [
            format!(r#"request_headers = {{ set = {{ "{name}" = "x" }} }}"#),
            format!(r#"request_headers = {{ remove = ["{name}"] }}"#),
            format!(r#"response_headers = {{ default = {{ "{name}" = "x" }} }}"#),
            format!(r#"response_headers = {{ add = {{ "{name}" = "x" }} }}"#),
        ] {
            for (server, site, route) in [
                (&rule[..], "", ""),
                ("", &rule[..], ""),
                ("", "", &rule[..]),
            ] {
                let err = errors(&config(server, site, route));
                assert!(
                    err.contains(&format!("`{name}` cannot be")),
                    "{rule}: {err}"
                );
                assert!(err.contains("_headers."), "{rule}: {err}");
            }
        }
    }
    let err = errors(&config(
        r#"request_headers = { set = { "Host" = "x" } }"#,
        "",
        "",
    ));
    assert!(err.contains("`server.request_headers.set`"), "{err}");
    assert!(err.contains("upstream_host"), "{err}");
    // `Host` means nothing on a response: no reason to refuse it there
    load(&config(
        r#"response_headers = { remove = ["Host"] }"#,
        "",
        "",
    ));
}

#[test]
fn one_rule_per_name_and_level() {
    let text = config(
        "",
        r#"response_headers = { set = { "X-A" = "1" }, remove = ["x-a"] }"#,
        r#"request_headers = { set = { "X-B" = "1", "x-b" = "2" } }"#,
    );
    let err = errors(&text);
    assert!(
        err.contains("`x-a` already has a rule here (in `set`"),
        "{err}"
    );
    assert!(err.contains("`site.response_headers.remove`"), "{err}");
    assert!(err.contains("`site.route.request_headers.set`"), "{err}");
}

#[test]
fn bad_names_values_and_keys_say_what_is_valid() {
    let err = errors(&config(
        "",
        "",
        r#"response_headers = { set = { "Bad Name" = "x", "X-N" = 5, "X-E" = [], "X-L" = ["a", 1] } }"#,
    ));
    assert!(err.contains("`Bad Name` is not a header name"), "{err}");
    assert!(
        err.contains("`X-N`: `5` is not a header value; expected a string"),
        "{err}"
    );
    assert!(err.contains("`X-E`: an empty list"), "{err}");
    assert!(err.contains("`X-L`: expected a string"), "{err}");
    let err = errors(&config(
        "",
        "",
        r#"request_headers = { default = { "X" = "1" } }"#,
    ));
    assert!(err.contains("unknown field `default`"), "{err}");
    let err = errors(&config(r#"request_headers = "X-A: 1""#, "", ""));
    assert!(
        err.contains(
            "`request_headers`: invalid type: string \"X-A: 1\", expected a table like `{ set = {"
        ),
        "{err}"
    );
}

#[test]
fn upstream_host_is_inherited_and_checked() {
    let config_ = load(&config("", r#"upstream_host = "API.internal:8080""#, ""));
    let (a, b) = routes(&config_);
    assert_eq!(
        a.headers.upstream_host.as_ref().unwrap(),
        "api.internal:8080"
    );
    assert_eq!(b.headers.upstream_host, a.headers.upstream_host);
    let config_ = load(&config(
        r#""#,
        r#"upstream_host = "[2001:db8::1]""#,
        r#"upstream_host = "other.internal""#,
    ));
    let (a, b) = routes(&config_);
    assert_eq!(a.headers.upstream_host.as_ref().unwrap(), "other.internal");
    assert_eq!(b.headers.upstream_host.as_ref().unwrap(), "[2001:db8::1]");
    for bad in ["http://api", "api/x", "api:0", "2001:db8::1", "api:x", ""] {
        let err = errors(&config("", &format!("upstream_host = \"{bad}\""), ""));
        assert!(err.contains("`site.upstream_host`"), "{bad}: {err}");
        assert!(
            err.contains("is not a host for the `Host` header"),
            "{bad}: {err}"
        );
    }
    let text = r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/"
  respond = { status = 200 }
  upstream_host = "api.internal"
"#;
    let err = errors(text);
    assert!(
        err.contains("only applies to a route with an `upstream`"),
        "{err}"
    );
    let text = text.replace(
        "upstream_host = \"api.internal\"",
        "request_headers = { add = { \"X-A\" = \"1\" } }",
    );
    let err = errors(&text);
    assert!(
        err.contains("`site.route.request_headers`: `request_headers` only apply to a route with an `upstream`"),
        "{err}"
    );
}

#[test]
fn strip_prefix_forwards_the_prefix_without_its_slash() {
    let prefix = |path: &str, strip: bool| {
        let text = format!(
            r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "{path}"
  upstream = "app"
  strip_prefix = {strip}

[upstream.app]
servers = ["127.0.0.1:9"]
"#
        );
        load(&text).sites[0].routes[0]
            .headers
            .forwarded_prefix
            .clone()
    };
    assert_eq!(prefix("/api/", true).unwrap(), "/api");
    assert_eq!(prefix("/api", true).unwrap(), "/api");
    assert_eq!(prefix("/a/b/", true).unwrap(), "/a/b");
    assert_eq!(prefix("/", true), None);
    assert_eq!(prefix("/api/", false), None);
}

/// The tables written as TOML tables and dotted keys, not inline: toml gives no span to a table
/// that exists only implicitly, and a `Spanned` one refused these configs.
#[test]
fn rules_written_as_tables_and_dotted_keys() {
    let route = r#"
  [site.route.request_headers.set]
  "X-Env" = "prod"

  [site.route.response_headers]
  set."X-Frame-Options" = "DENY"
  remove = ["Server"]
"#;
    let text = config(
        "",
        r#"response_headers.default."Cache-Control" = "no-store""#,
        "",
    )
    .replace(
        "  [[site.route]]\n  path = \"/b/\"",
        &format!("{route}\n  [[site.route]]\n  path = \"/b/\""),
    );
    let config = load(&text);
    let (a, b) = routes(&config);
    assert_eq!(show(&a.headers.request), ["x-env: set prod"]);
    assert_eq!(
        show(&a.headers.response),
        [
            "cache-control: default no-store",
            "server: remove",
            "x-frame-options: set DENY"
        ]
    );
    assert_eq!(
        show(&b.headers.response),
        ["cache-control: default no-store"]
    );
}
