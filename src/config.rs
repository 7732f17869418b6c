//! Configuration: the raw TOML shape (`file`), the validated model (`model`), the conversion between
//! them with located errors (`validate`), and unit parsing (`units`).

pub mod auth;
pub mod cluster;
pub mod file;
pub mod model;
pub mod units;
mod validate;

pub use auth::{BasicAuth, ForwardAuth, PasswordHash, UserSource, Users};
pub use cluster::{
    Cluster, ClusterAcme, ClusterSecret, Fallback, GlobalScope, Secret, SentinelStore,
    StoreTlsFiles,
};
pub use model::*;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config file, located to the byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    source_line: String,
}

impl Located {
    fn new(path: &Path, text: &str, span: Range<usize>, key: String, message: String) -> Self {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        Located {
            path: path.to_path_buf(),
            line: text[..start].matches('\n').count() + 1,
            column: text[line_start..start].chars().count() + 1,
            key,
            message,
            source_line: text[line_start..line_end].trim_end().to_string(),
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, line, col) = (self.path.display(), self.line, self.column);
        if self.key.is_empty() {
            writeln!(f, "{path}:{line}:{col}: {}", self.message)?;
        } else {
            writeln!(f, "{path}:{line}:{col}: `{}`: {}", self.key, self.message)?;
        }
        let gutter = " ".repeat(line.to_string().len());
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{line} | {}", self.source_line)?;
        write!(f, "{gutter} | {}^", " ".repeat(col.saturating_sub(1)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", join(.0))]
    Invalid(Vec<Located>),
}

fn join(errors: &[Located]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&e.to_string());
    }
    let n = errors.len();
    out.push_str(&format!(
        "\n\n{n} error{} in config",
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// Reads, parses and validates a config file. No file it names (certificates, keys, CA roots) is
/// read: `crate::load` does that, after this.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    validate_file(path)?.finish(Vec::new())
}

/// Parses and validates config text; `path` is only used in error messages and as the config's
/// source. As with [`load`], no file the config names is read.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate_text(path, text.to_string())?.finish(Vec::new())
}

/// Reads and validates a config file, keeping what the step that reads the files it names needs
/// (see [`Validated`]). A file that cannot be read or is not TOML of the right shape is an error
/// here; validation's problems wait in `Validated::config`, to be reported together with those
/// of the files.
pub fn validate_file(path: &Path) -> Result<Validated, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    validate_text(path, text)
}

/// [`validate_file`] on text already read.
pub fn validate_text(path: &Path, text: String) -> Result<Validated, ConfigError> {
    let raw: file::FileConfig = toml::from_str(&text).map_err(|e| syntax(path, &text, &e))?;
    let (config, files) = validate::validate(path, &text, raw);
    Ok(Validated {
        config,
        files,
        path: path.to_path_buf(),
        text,
    })
}

/// A config file validated without reading the files it names: the config (or every problem
/// found), those files, and the text, so that a problem found in a file later is reported at the
/// key that names it, like any other.
#[derive(Debug)]
pub struct Validated {
    pub config: Result<Config, Vec<Located>>,
    pub files: Vec<NamedFile>,
    path: PathBuf,
    text: String,
}

impl Validated {
    /// `message` about `named`, located where the config names it.
    pub fn locate(&self, named: &NamedFile, message: String) -> Located {
        let span = named.span.clone();
        Located::new(&self.path, &self.text, span, named.key.clone(), message)
    }

    /// The config, unless validation or `more` (problems found in the files) found something:
    /// then every problem, in file order.
    pub fn finish(self, more: Vec<Located>) -> Result<Config, ConfigError> {
        let mut errors = match self.config {
            Ok(config) if more.is_empty() => return Ok(config),
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        };
        errors.extend(more);
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigError::Invalid(errors))
    }
}

/// A file the config names, and where: validation records it, `crate::load` reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedFile {
    pub file: FileKind,
    /// The key errors name (`site.tls`, `upstream.api.ca_root`).
    pub key: String,
    span: Range<usize>,
}

impl NamedFile {
    fn new(file: FileKind, key: String, span: Range<usize>) -> NamedFile {
        NamedFile { file, key, span }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A certificate chain and its key: a site's (`site.tls`) or an upstream's `client_cert`.
    CertPair(TlsFiles),
    /// CA roots in PEM: `acme.ca_root`, `upstream.NAME.ca_root`.
    Roots(PathBuf),
    /// An error page (`error_pages`), kept in memory as it is.
    Page(PathBuf),
    /// A folder files are served from (`site.route.files.root`): it must exist.
    Folder(PathBuf),
    /// A `basic_auth` `users_file` (`user:hash` lines).
    Users(PathBuf),
    /// `[cluster] secret_file`: the secret's bytes, trailing white space trimmed.
    Secret(PathBuf),
    /// `[cluster] store_ca`: roots in PEM, kept as PEM (the Redis client takes PEM).
    StoreCa(PathBuf),
    /// `[cluster] store_client_cert` and `store_client_key`, checked to belong together.
    StoreClient(TlsFiles),
}

/// Reads and validates only the `[listen]` section of a config file: the addresses a client of
/// the running instance (`gatehouse health`) connects to. The rest of the file must be TOML but
/// is not validated, and no file it names (certificates, `state_dir`) is read.
pub fn load_listen(path: &Path) -> Result<Listen, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_listen(path, &text)
}

/// [`load_listen`] on text already read.
pub fn parse_listen(path: &Path, text: &str) -> Result<Listen, ConfigError> {
    let raw: file::FileListenOnly = toml::from_str(text).map_err(|e| syntax(path, text, &e))?;
    validate::validate_listen(path, text, raw.listen.as_ref()).map_err(ConfigError::Invalid)
}

/// A TOML or shape error (unknown key, wrong type), located like the validation errors.
fn syntax(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let key = validate::key_at(text, &span);
    let mut message = e.message().trim_end().to_string();
    if message.ends_with("expected a borrowed string") {
        // toml cannot locate a table that exists only through dotted keys or a sub-table's
        // header, and says so in its own words
        message = format!("{message}: this table is written with dotted keys (`files.root = ...`) or only through a sub-table's header; write it as an inline table (`files = {{ root = ... }}`) or under its own header (`[site.route.files]`)");
    }
    ConfigError::Invalid(vec![Located::new(path, text, span, key, message)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/gatehouse/gatehouse.toml";

    #[test]
    fn a_table_toml_cannot_locate_gets_a_way_out() {
        let text = "[[site]]\n  [[site.route]]\n  path = \"/\"\n  files.root = \"/srv\"\n";
        let err = parse(Path::new(PATH), text).unwrap_err().to_string();
        assert!(err.contains("write it as an inline table"), "{err}");
    }

    #[test]
    fn parse_listen_reads_listen_and_skips_the_rest() {
        // a site whose certificate files do not exist, and a key no full parse accepts
        let text = r#"
[listen]
http = "0.0.0.0:8080"
admin = "127.0.0.1:9901"

[[site]]
tls = { cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }
not_a_key = 1
"#;
        assert!(parse(Path::new(PATH), text).is_err());
        let listen = parse_listen(Path::new(PATH), text).unwrap();
        assert_eq!(listen.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(listen.http, ["0.0.0.0:8080".parse().unwrap()]);
    }

    #[test]
    fn parse_listen_still_locates_errors_in_listen() {
        let text = "[listen]\nhttp = \"0.0.0.0:8080\"\nadmin = \"localhost\"\n";
        let err = parse_listen(Path::new(PATH), text).unwrap_err().to_string();
        assert!(err.contains(&format!("{PATH}:3:")), "{err}");
        assert!(err.contains("listen.admin"), "{err}");
        let typo = "[listen]\nhttp = \"0.0.0.0:8080\"\nadmn = \"127.0.0.1:9901\"\n";
        let err = parse_listen(Path::new(PATH), typo).unwrap_err().to_string();
        assert!(err.contains("admn"), "{err}");
    }
}
