//! Every matching and rewrite key's errors: located at the line of the value, naming the key,
//! saying what would be valid. And what a valid route becomes.

use crate::config::{
    parse, Action, Config, ConfigError, Located, PathMatch, UpstreamTarget, ValueMatch,
};
use std::path::Path;

/// A config with one site whose routes are `routes` (TOML), and an upstream `app`.
fn config(routes: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n{routes}\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n"
    )
}

fn errors(routes: &str) -> Vec<Located> {
    match parse(Path::new("t.toml"), &config(routes)) {
        Err(ConfigError::Invalid(errors)) => errors,
        other => panic!("expected errors, got {other:?}"),
    }
}

fn valid(routes: &str) -> Config {
    parse(Path::new("t.toml"), &config(routes)).unwrap()
}

/// `routes` has exactly one error, on the last line holding `marker`, for `key`, mentioning each of
/// `mentions`.
fn one_error(routes: &str, marker: &str, key: &str, mentions: &[&str]) {
    let text = config(routes);
    let errors = errors(routes);
    assert_eq!(errors.len(), 1, "{routes}\n{errors:#?}");
    let e = &errors[0];
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.iter().rposition(|l| l.contains(marker)).unwrap() + 1;
    assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
    for m in mentions {
        assert!(e.message.contains(m), "{m:?} not in: {}", e.message);
    }
}

const ROUTE: &str = "[[site.route]]\n";

#[test]
fn bad_and_too_big_regexes() {
    one_error(
        &format!("{ROUTE}regex = \"^/u/([0-9]+/avatar$\"\nupstream = \"app\"\n"),
        "regex =",
        "site.route.regex",
        &["not a valid regex", "unclosed group", "(?<id>[0-9]+)"],
    );
    // a Unicode class repeated: several MiB compiled
    one_error(
        &format!("{ROUTE}regex = '^/(\\w{{100}})+$'\nupstream = \"app\"\n"),
        "regex =",
        "site.route.regex",
        &["1 MiB", "ASCII classes"],
    );
    one_error(
        &format!("{ROUTE}regex = \"^/x\"\npath = \"/x\"\nupstream = \"app\"\n"),
        "[[site.route]]",
        "site.route",
        &["exactly one of `path`", "`regex`"],
    );
}

#[test]
fn unknown_placeholders_and_captures_without_regex() {
    one_error(
        &format!(
            "{ROUTE}regex = \"^/u/(?<id>[0-9]+)$\"\nupstream = \"app\"\nrewrite = \"/a/{{uid}}\"\n"
        ),
        "rewrite =",
        "site.route.rewrite",
        &["unknown placeholder `{uid}`", "{id}"],
    );
    one_error(
        &format!("{ROUTE}path = \"/u/\"\nupstream = \"app\"\nrewrite = \"/a/{{1}}\"\n"),
        "rewrite =",
        "site.route.rewrite",
        &["`{1}`", "needs a route with `regex`"],
    );
    one_error(
        &format!("{ROUTE}exact = \"/u\"\nredirect = {{ to = \"/a/{{id}}\" }}\n"),
        "redirect =",
        "site.route.redirect.to",
        &["`{id}`", "needs a route with `regex`"],
    );
    one_error(
        &format!("{ROUTE}path = \"/u/\"\nupstream = \"app\"\nrewrite = \"avatars/{{path}}\"\n"),
        "rewrite =",
        "site.route.rewrite",
        &["does not start with a path", "{path}"],
    );
}

#[test]
fn rewrite_keys_need_an_upstream_and_exclude_each_other() {
    one_error(
        &format!(
            "{ROUTE}path = \"/api/\"\nrespond = {{ status = 200 }}\nupstream_path = \"/v2/\"\n"
        ),
        "upstream_path",
        "site.route.upstream_path",
        &["no `upstream`", "upstream = \"NAME\""],
    );
    one_error(
        &format!("{ROUTE}path = \"/api/\"\nupstream = \"app\"\nstrip_prefix = true\nupstream_path = \"/v2/\"\n"),
        "upstream_path",
        "site.route.upstream_path",
        &["`strip_prefix` and `upstream_path`", "keep one"],
    );
    one_error(
        &format!("{ROUTE}path = \"/api/\"\nupstream = \"app\"\nupstream_path = \"/v2/\"\nrewrite = \"/v3{{path}}\"\n"),
        "rewrite",
        "site.route.rewrite",
        &["`upstream_path` and `rewrite`"],
    );
    one_error(
        &format!("{ROUTE}regex = \"^/a\"\nupstream = \"app\"\nupstream_path = \"/v2/\"\n"),
        "upstream_path",
        "site.route.upstream_path",
        &["`regex` route has none", "rewrite"],
    );
    one_error(
        &format!("{ROUTE}path = \"/api/\"\nupstream = \"app\"\nupstream_path = \"/v2\"\n"),
        "upstream_path",
        "site.route.upstream_path",
        &["`/api/x` would go upstream as `/v2x`", "end both with `/`"],
    );
    one_error(
        &format!("{ROUTE}path = \"/api/\"\nupstream = \"app\"\nupstream_path = \"/v2/../x/\"\n"),
        "upstream_path",
        "site.route.upstream_path",
        &["not a canonical path"],
    );
    one_error(
        &format!("{ROUTE}exact = \"/a\"\nupstream = \"app\"\nstrip_prefix = true\n"),
        "strip_prefix",
        "site.route.strip_prefix",
        &["only applies to a `path` route", "upstream_path"],
    );
}

#[test]
fn methods_must_be_upper_case_names() {
    one_error(
        &format!("{ROUTE}path = \"/\"\nupstream = \"app\"\nmethods = []\n"),
        "methods",
        "site.route.methods",
        &["`methods` is empty", "[\"GET\", \"HEAD\"]"],
    );
    one_error(
        &format!("{ROUTE}path = \"/\"\nupstream = \"app\"\nmethods = [\"GET\", \"post\"]\n"),
        "methods",
        "site.route.methods",
        &["upper-case: \"POST\""],
    );
    one_error(
        &format!("{ROUTE}path = \"/\"\nupstream = \"app\"\nmethods = [\"GE T\"]\n"),
        "methods",
        "site.route.methods",
        &["not a method name", "PROPFIND"],
    );
    one_error(
        &format!("{ROUTE}path = \"/\"\nupstream = \"app\"\nmethods = [\"CONNECT\"]\n"),
        "methods",
        "site.route.methods",
        &["refused before routing"],
    );
}

#[test]
fn header_and_query_conditions_are_checked() {
    let route = |cond: &str| format!("{ROUTE}path = \"/\"\nupstream = \"app\"\n{cond}\n");
    one_error(
        &route("headers = { \"Bad Name\" = \"x\" }"),
        "headers",
        "site.route.headers",
        &["`Bad Name` is not a header name"],
    );
    one_error(
        &route("headers = { \"Upgrade\" = \"websocket\", \"upgrade\" = \"h2c\" }"),
        "headers",
        "site.route.headers",
        &["listed twice"],
    );
    one_error(
        &route("headers = { \"Accept\" = \"~^application/(json\" }"),
        "headers",
        "site.route.headers",
        &["not a valid regex"],
    );
    one_error(
        &route("query = { \"a=b\" = \"x\" }"),
        "query",
        "site.route.query",
        &["not a query argument name"],
    );
    one_error(
        &route("query = { \"a\" = \"x&y\" }"),
        "query",
        "site.route.query",
        &["never holds `&`"],
    );
}

#[test]
fn a_route_never_chosen_is_an_error() {
    one_error(
        &format!("{ROUTE}exact = \"/x\"\nupstream = \"app\"\n{ROUTE}exact = \"/x/\"\nmethods = [\"GET\"]\nupstream = \"app\"\n"),
        "exact = \"/x/\"",
        "site.route.exact",
        &["never chosen", "line 6", "has no conditions"],
    );
    one_error(
        &format!("{ROUTE}path = \"/x/\"\nmethods = [\"GET\"]\nupstream = \"app\"\n{ROUTE}path = \"/x/\"\nmethods = [\"GET\"]\nupstream = \"app\"\n"),
        "path = \"/x/\"",
        "site.route.path",
        &["has the same conditions"],
    );
    // the same path with other conditions, or the one without conditions last: fine
    valid(&format!("{ROUTE}exact = \"/x\"\nmethods = [\"POST\"]\nupstream = \"app\"\n{ROUTE}exact = \"/x\"\nupstream = \"app\"\n"));
}

#[test]
fn a_valid_route_with_every_key() {
    let c = valid(&format!(
        "{ROUTE}regex = \"^/u/(?<id>[0-9]+)/avatar$\"\nmethods = [\"GET\", \"HEAD\"]\n\
         headers = {{ \"Accept\" = \"~^image/\", \"X-Debug\" = \"*\", \"Upgrade\" = \"websocket\" }}\n\
         query = {{ \"s\" = \"~^[0-9]+$\" }}\nupstream = \"app\"\nrewrite = \"/avatars/{{id}}?size={{query.s}}\"\n\
         rewrite_location = false\n\
         {ROUTE}regex = \"^/old/(.*)$\"\nredirect = {{ to = \"/new/{{1}}\" }}\n\
         {ROUTE}path = \"/api/\"\nupstream = \"app\"\nupstream_path = \"/v2/\"\n"
    ));
    let routes = &c.sites[0].routes;
    assert!(
        matches!(&routes[0].matcher, PathMatch::Regex(r) if r.as_str() == "^/u/(?<id>[0-9]+)/avatar$")
    );
    let cond = &routes[0].conditions;
    assert_eq!(cond.methods, [http::Method::GET, http::Method::HEAD]);
    let names: Vec<&str> = cond.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["accept", "upgrade", "x-debug"]);
    assert!(matches!(cond.headers[2].1, ValueMatch::Present));
    assert!(matches!(&cond.headers[1].1, ValueMatch::Exact(v) if v == "websocket"));
    assert!(matches!(&cond.query[0].1, ValueMatch::Regex(_)));
    match &routes[0].action {
        Action::Proxy {
            target: UpstreamTarget::Rewrite(t),
            rewrite_location,
            ..
        } => {
            assert!(t.uses_captures());
            assert!(!rewrite_location);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&routes[1].action, Action::Redirect(r) if r.to.uses_captures()));
    assert!(matches!(
        &routes[2].action,
        Action::Proxy { target: UpstreamTarget::ReplacePrefix(p), rewrite_location: true, .. } if p == "/v2/"
    ));
}
