//! The response-compression keys (`encode`, `encode_min_size`, `encode_types`), read at three
//! levels like the request policy: `[server]`, `[[site]]` and `[[site.route]]`, each key
//! overriding the level above on its own.

use super::{Ctx, Repeats};
use crate::config::file::{EncodeKeys, Str};
use crate::config::model::{Coding, Encode, MediaRange};
use toml::Spanned;

const CODINGS_HINT: &str =
    "expected a list of \"zstd\", \"br\" and \"gzip\" in your order of preference, e.g. `encode = [\"zstd\", \"br\", \"gzip\"]`, or `encode = []` for none";
const TYPES_HINT: &str =
    "expected media types like \"application/json\", \"text/*\" (every subtype) or \"application/*+json\" (every subtype with that suffix), without parameters";

/// `inherited` with whatever `keys` sets; `key` is the config path prefix for errors.
pub(super) fn resolve(cx: &mut Ctx, keys: EncodeKeys<'_>, inherited: &Encode, key: &str) -> Encode {
    let mut encode = inherited.clone();
    if let Some(list) = keys.encode {
        encode.codings = codings(cx, list, &format!("{key}.encode"));
    }
    if keys.min_size.is_some() {
        let name = format!("{key}.encode_min_size");
        encode.min_size = cx.size(
            &keys.min_size.cloned(),
            &name,
            0..=u64::MAX,
            inherited.min_size,
        );
    }
    if let Some(list) = keys.types {
        encode.types = types(cx, list, &format!("{key}.encode_types"));
    }
    encode
}

fn codings(cx: &mut Ctx, list: &Spanned<Vec<Str>>, key: &str) -> Vec<Coding> {
    let parse = |text: &str| {
        Coding::from_token(text.trim())
            .ok_or_else(|| format!("unknown algorithm `{text}`; {CODINGS_HINT}"))
    };
    cx.list(list, key, Repeats::Refused(CODINGS_HINT), parse)
        .unwrap_or_else(|good| good)
}

fn types(cx: &mut Ctx, list: &Spanned<Vec<Str>>, key: &str) -> Vec<MediaRange> {
    if list.get_ref().is_empty() {
        let msg = format!("the list is empty, so nothing would be compressed; {TYPES_HINT}, or turn compression off with `encode = []`");
        cx.error(list.span(), key, msg);
    }
    let parse = |text: &str| {
        MediaRange::parse(text)
            .ok_or_else(|| format!("`{text}` is not a media type pattern; {TYPES_HINT}"))
    };
    cx.list(list, key, Repeats::Dropped, parse)
        .unwrap_or_else(|good| good)
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Coding, ConfigError, Encode, MediaRange};
    use std::path::Path;

    const BASE: &str = r#"
[listen]
http = "127.0.0.1:0"

[server]
encode = ["zstd", "gzip"]
encode_min_size = "1KB"

[[site]]
hosts = ["a.example"]
encode_types = ["application/json"]

  [[site.route]]
  path = "/"
  upstream = "app"

  [[site.route]]
  path = "/plain/"
  upstream = "app"
  encode = []

  [[site.route]]
  path = "/br/"
  upstream = "app"
  encode = ["br"]
  encode_min_size = "0B"

[[site]]
hosts = ["b.example"]

  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["127.0.0.1:9"]
"#;

    fn routes(text: &str) -> Vec<Encode> {
        let config = parse(Path::new("t.toml"), text).unwrap();
        config
            .sites
            .iter()
            .flat_map(|s| s.routes.iter().map(|r| r.encode.clone()))
            .collect()
    }

    #[test]
    fn each_key_inherits_on_its_own() {
        let json = vec![MediaRange::parse("application/json").unwrap()];
        let got = routes(BASE);
        assert_eq!(got[0].codings, [Coding::Zstd, Coding::Gzip]);
        assert_eq!((got[0].min_size, &got[0].types), (1024, &json));
        assert!(got[1].codings.is_empty(), "`encode = []` turns it off");
        assert_eq!(got[2].codings, [Coding::Br]);
        assert_eq!((got[2].min_size, &got[2].types), (0, &json));
        assert_eq!(got[3].codings, [Coding::Zstd, Coding::Gzip]);
        assert_eq!(got[3].types, Encode::default().types);
    }

    #[test]
    fn off_unless_configured() {
        let text = BASE.replace("encode = [\"zstd\", \"gzip\"]\n", "");
        let got = routes(&text);
        assert!(got[0].codings.is_empty() && got[3].codings.is_empty());
        assert_eq!(got[2].codings, [Coding::Br]);
    }

    #[test]
    fn errors_name_the_key_and_what_is_valid() {
        let cases = [
            (
                "encode = [\"zstd\", \"gzip\"]",
                "encode = [\"gzip\", \"deflate\"]",
                "server.encode",
                "unknown algorithm `deflate`",
            ),
            (
                "encode = [\"zstd\", \"gzip\"]",
                "encode = [\"gzip\", \"GZIP\"]",
                "server.encode",
                "listed twice",
            ),
            (
                "encode_min_size = \"1KB\"",
                "encode_min_size = \"1 kilo\"",
                "server.encode_min_size",
                "512B",
            ),
            (
                "encode_types = [\"application/json\"]",
                "encode_types = [\"json\"]",
                "site.encode_types",
                "text/*",
            ),
            (
                "encode_types = [\"application/json\"]",
                "encode_types = [\"*/*\"]",
                "site.encode_types",
                "application/*+json",
            ),
            (
                "encode_types = [\"application/json\"]",
                "encode_types = []",
                "site.encode_types",
                "encode = []",
            ),
        ];
        for (from, to, key, hint) in cases {
            let text = BASE.replacen(from, to, 1);
            let Err(ConfigError::Invalid(errors)) = parse(Path::new("t.toml"), &text) else {
                panic!("{to}: accepted");
            };
            assert_eq!(errors.len(), 1, "{to}: {errors:?}");
            let message = errors[0].to_string();
            assert!(
                message.contains(key) && message.contains(hint),
                "{to}: {message}"
            );
        }
    }
}
