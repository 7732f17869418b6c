//! Loading a config: the step between validation and the snapshot. `config` validates without
//! reading any file the config names; this step reads them all (site certificates and keys,
//! a site's `client_auth` CA, upstream `ca_root` and `client_cert`, the system root store when
//! an upstream or a `forward_auth` service speaks TLS, `acme.ca_root`, error pages,
//! `basic_auth` users files), reports what is wrong with one at the key that names it, as validation
//! reports its own problems (all of them together, in file order), and hands what it read to
//! `state::RuntimeState::build`, which reads no file.
//!
//! Everything here blocks (reading files; parsing 200 certificate pairs takes a runtime thread
//! away for tens of milliseconds even in a release build): at start-up it runs before the
//! runtime exists, and a reload runs it on tokio's blocking pool ([`load_off_runtime`]), so the
//! threads serving traffic never wait for it.

use crate::config::auth::{parse_users_file, BadLine};
use crate::config::cluster::MIN_SECRET_LEN;
use crate::config::{
    self, ClientAuth, ClusterSecret, Config, ConfigError, FileKind, Located, Secret, TlsFiles,
    UpstreamTls, Users, Validated,
};
use crate::tls::client::ClientCa;
use crate::tls::{self, FileStamp, TlsError};
use bytes::Bytes;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A config and what the files it names held when they were read.
pub struct Loaded {
    pub config: Config,
    pub files: Files,
}

/// The contents of a config's files, each with the stamp its files had just before they were
/// read (a change after that is seen by the next comparison).
#[derive(Default)]
pub struct Files {
    pairs: HashMap<TlsFiles, Pair>,
    upstreams: HashMap<String, UpstreamFiles>,
    /// Error pages (`error_pages`) as read, by path.
    pages: HashMap<PathBuf, Bytes>,
    /// The sites' `client_auth`, each with the verifier made from its CA file.
    client_cas: HashMap<ClientAuth, ClientCa>,
    /// `basic_auth` users files as read and checked, by path.
    users: HashMap<PathBuf, Arc<Users>>,
    /// The system's roots, for a `forward_auth` service over `https://`; `None` when none is.
    auth_roots: Option<Arc<RootCertStore>>,
    /// `[cluster] secret_file` as read; `None` without one.
    cluster_secret: Option<Secret>,
    /// `[cluster] store_ca` and client certificate as read (empty without them).
    store_tls: StorePem,
}

/// A TLS store connection's files as read and checked, in PEM (`crate::cluster::connect`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorePem {
    /// `store_ca`; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// `store_client_cert` and `store_client_key`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// A certificate chain and its key, checked to belong together.
#[derive(Clone)]
pub struct Pair {
    pub stamp: FileStamp,
    pub key: Arc<CertifiedKey>,
}

/// What a TLS upstream's handshakes are made from: the roots it trusts (the system's and its
/// `ca_root`) and its client certificate, if any.
#[derive(Clone)]
pub struct UpstreamFiles {
    /// Of `ca_root`, then the `client_cert` pair; empty for neither.
    pub stamp: FileStamp,
    pub roots: Arc<RootCertStore>,
    pub client: Option<Arc<CertifiedKey>>,
}

impl Files {
    /// The pair read for `files` (every pair a loaded config names was read).
    pub fn pair(&self, files: &TlsFiles) -> Option<&Pair> {
        self.pairs.get(files)
    }

    /// A TLS upstream's files; `None` for a plain one.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamFiles> {
        self.upstreams.get(name)
    }

    /// A site's `client_auth` as read (every one a loaded config names was read).
    pub fn client_ca(&self, auth: &ClientAuth) -> Option<&ClientCa> {
        self.client_cas.get(auth)
    }

    /// The error pages as read, by path.
    pub fn pages(&self) -> &HashMap<PathBuf, Bytes> {
        &self.pages
    }

    /// `basic_auth` users files as read, by path.
    pub fn users(&self) -> &HashMap<PathBuf, Arc<Users>> {
        &self.users
    }

    /// The roots a `forward_auth` service's certificate is checked against (the system's);
    /// `None` when no such service speaks TLS.
    pub fn auth_roots(&self) -> Option<&Arc<RootCertStore>> {
        self.auth_roots.as_ref()
    }

    /// The `[cluster]` secret: written in the config, or read from its `secret_file`.
    pub fn cluster_secret(&self, config: &Config) -> Option<Secret> {
        match &config.cluster.as_ref()?.secret {
            ClusterSecret::Inline(secret) => Some(secret.clone()),
            ClusterSecret::File(_) => self.cluster_secret.clone(),
        }
    }

    /// The `[cluster]` store's TLS files as read (empty without `store_ca` and a client pair).
    pub fn store_tls(&self) -> &StorePem {
        &self.store_tls
    }

    /// The stamp of the files upstream `name` was made from (empty for a plain upstream).
    pub fn upstream_stamp(&self, name: &str) -> FileStamp {
        self.upstream(name)
            .map_or_else(FileStamp::default, |u| u.stamp.clone())
    }
}

/// Reads and validates the config at `path`, then reads every file it names. Blocking: call it
/// before the runtime starts, or through [`load_off_runtime`].
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let validated = config::validate_file(path)?;
    let (read, mut errors) = read_named(&validated);
    let mut files = Files::default();
    if let (Ok(config), true) = (&validated.config, errors.is_empty()) {
        let client_cas = client_cas(config, &read, &validated, &mut errors);
        files = upstream_files(config, read, &validated, &mut errors);
        files.client_cas = client_cas;
    }
    let config = validated.finish(errors)?;
    Ok(Loaded { config, files })
}

/// [`load`] on tokio's blocking pool, for a reload: the runtime's threads go on serving.
pub async fn load_off_runtime(path: PathBuf) -> Result<Loaded, ConfigError> {
    let at = path.clone();
    match tokio::task::spawn_blocking(move || load(&at)).await {
        Ok(loaded) => loaded,
        // the runtime is shutting down (or the loading panicked): no config either way
        Err(e) => Err(ConfigError::Read {
            path,
            source: std::io::Error::other(e),
        }),
    }
}

/// Every named file as read: pairs and roots by path.
#[derive(Default)]
struct Read {
    pairs: HashMap<TlsFiles, Pair>,
    roots: HashMap<PathBuf, (FileStamp, Vec<CertificateDer<'static>>)>,
    pages: HashMap<PathBuf, Bytes>,
    users: HashMap<PathBuf, Arc<Users>>,
    secret: Option<Secret>,
    store_tls: StorePem,
}

/// The largest error page kept in memory: a page is sent whole, from memory, with every answer
/// it replaces.
pub const PAGE_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error("cannot read error page {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("error page {} is {len} bytes; at most {PAGE_MAX} (1 MiB) are kept in memory", path.display())]
    TooLarge { path: PathBuf, len: u64 },
}

fn read_page(path: &Path) -> Result<Bytes, PageError> {
    let read = |source| PageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > PAGE_MAX {
        let path = path.to_path_buf();
        return Err(PageError::TooLarge { path, len });
    }
    std::fs::read(path).map(Bytes::from).map_err(read)
}

/// Reads each file the config names once; a problem is located where the config names it.
fn read_named(validated: &Validated) -> (Read, Vec<Located>) {
    let mut read = Read::default();
    let mut errors = Vec::new();
    for named in &validated.files {
        let result = match &named.file {
            FileKind::CertPair(files) if read.pairs.contains_key(files) => Ok(()),
            FileKind::CertPair(files) => read_pair(files)
                .map(|pair| {
                    read.pairs.insert(files.clone(), pair);
                })
                .map_err(|e| e.to_string()),
            FileKind::Roots(path) if read.roots.contains_key(path) => Ok(()),
            FileKind::Roots(path) => {
                let stamp = FileStamp::of_paths([path.as_path()]);
                tls::read_roots(path)
                    .map(|roots| {
                        read.roots.insert(path.clone(), (stamp, roots));
                    })
                    .map_err(|e| e.to_string())
            }
            FileKind::Page(path) if read.pages.contains_key(path) => Ok(()),
            FileKind::Page(path) => read_page(path)
                .map(|page| {
                    read.pages.insert(path.clone(), page);
                })
                .map_err(|e| e.to_string()),
            FileKind::Users(path) if read.users.contains_key(path) => Ok(()),
            FileKind::Users(path) => read_users(path).map(|users| {
                read.users.insert(path.clone(), Arc::new(users));
            }),
            FileKind::Secret(path) => read_secret(path).map(|secret| {
                read.secret = Some(secret);
            }),
            FileKind::StoreCa(path) => read_store_ca(path).map(|pem| {
                read.store_tls.ca = Some(pem);
            }),
            FileKind::StoreClient(files) => read_store_client(files).map(|pair| {
                read.store_tls.client = Some(pair);
            }),
            FileKind::Folder(path) => {
                if let Err(message) = folder(path) {
                    errors.push(validated.locate(named, message));
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            errors.push(validated.locate(named, e));
        }
    }
    (read, errors)
}

/// `[cluster] secret_file`: its bytes, without the line end an editor leaves.
fn read_secret(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read the secret file `{shown}`: {e}"))?;
    let trimmed = bytes.trim_ascii_end();
    if trimmed.len() < MIN_SECRET_LEN {
        return Err(format!("the secret in `{shown}` is {} bytes; expected at least {MIN_SECRET_LEN} (e.g. `openssl rand -base64 32 > {shown}`)", trimmed.len()));
    }
    Ok(Secret(trimmed.to_vec()))
}

/// `[cluster] store_ca`: checked to hold certificates rustls reads, kept as the PEM it is (the
/// Redis client takes PEM).
fn read_store_ca(path: &Path) -> Result<Vec<u8>, String> {
    tls::read_roots(path).map_err(|e| format!("{e}; `store_ca` names a PEM file of the CA certificates the store's certificate is checked against"))?;
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// `[cluster] store_client_cert` and `store_client_key`: checked as a site's pair is (they
/// parse, and the key is the certificate's), kept as PEM.
fn read_store_client(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    tls::load_certified_key(files).map_err(|e| e.to_string())?;
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()));
    Ok((read(&files.cert)?, read(&files.key)?))
}

/// The largest users file read: thousands of users are a job for an auth service.
const USERS_MAX: u64 = 1 << 20;

/// A `basic_auth` users file, every line checked; what is wrong names the file's line.
fn read_users(path: &Path) -> Result<Users, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the users file `{shown}`: {e}"))?
        .len();
    if len > USERS_MAX {
        return Err(format!(
            "the users file `{shown}` is {len} bytes; at most {USERS_MAX} (1 MiB) are read"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the users file `{shown}`: {e}"))?;
    parse_users_file(&text).map_err(|BadLine(line, msg)| match line {
        0 => format!("{shown}: {msg}"),
        n => format!("{shown}:{n}: {msg}"),
    })
}

/// A `files` route's `root` must be a folder that exists now (it is read at each request; one
/// that goes away later answers `404`).
fn folder(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "`{shown}` is not a folder; `root` names the folder whose files are served"
        )),
        Err(e) => Err(format!(
            "cannot read the folder `{shown}`: {e}; `root` names an existing folder (a relative path starts at the config file's folder)"
        )),
    }
}

fn read_pair(files: &TlsFiles) -> Result<Pair, TlsError> {
    let stamp = FileStamp::of(files);
    let key = tls::load_certified_key(files)?;
    Ok(Pair { stamp, key })
}

/// The site pairs as read, and each TLS upstream's roots and client certificate. The system
/// roots are read once, and only when some upstream speaks TLS.
fn upstream_files(
    config: &Config,
    read: Read,
    validated: &Validated,
    errors: &mut Vec<Located>,
) -> Files {
    let mut system = None;
    let mut upstreams = HashMap::new();
    for (name, spec) in &config.upstreams {
        let Some(tls) = &spec.tls else { continue };
        let system = system.get_or_insert_with(system_roots);
        match upstream_entry(tls, system, &read) {
            Ok(entry) => {
                upstreams.insert(name.clone(), entry);
            }
            Err(e) => {
                // only `ca_root` can be at fault: a certificate in it that rustls cannot use
                let key = format!("upstream.{name}.ca_root");
                let named = validated.files.iter().find(|n| n.key == key);
                errors.extend(named.map(|n| validated.locate(n, e.to_string())));
            }
        }
    }
    let auth_tls = config.sites.iter().flat_map(|s| &s.routes).any(|r| {
        r.forward_auth
            .as_ref()
            .is_some_and(|f| f.url.scheme_str() == Some("https"))
    });
    let auth_roots = auth_tls.then(|| Arc::new(system.unwrap_or_else(system_roots)));
    Files {
        pairs: read.pairs,
        upstreams,
        pages: read.pages,
        client_cas: HashMap::new(),
        users: read.users,
        cluster_secret: read.secret,
        store_tls: read.store_tls,
        auth_roots,
    }
}

/// Each site's `client_auth`: a verifier from its CA file's certificates. A certificate rustls
/// cannot use as a trust anchor is an error at the `ca` key that names the file.
fn client_cas(
    config: &Config,
    read: &Read,
    validated: &Validated,
    errors: &mut Vec<Located>,
) -> HashMap<ClientAuth, ClientCa> {
    let mut cas = HashMap::new();
    for auth in config.sites.iter().filter_map(|s| s.client_auth.as_ref()) {
        if cas.contains_key(auth) {
            continue;
        }
        let Some((_, certs)) = read.roots.get(&auth.ca) else {
            continue;
        };
        match ClientCa::new(&auth.ca, certs, auth.mode) {
            Ok(ca) => {
                cas.insert(auth.clone(), ca);
            }
            Err(e) => {
                let file = FileKind::Roots(auth.ca.clone());
                let named = validated.files.iter().find(|n| n.file == file);
                errors.extend(named.map(|n| validated.locate(n, e.to_string())));
            }
        }
    }
    cas
}

/// One TLS upstream's roots (the system's and its `ca_root`) and client certificate, with the
/// stamps of its files (`ca_root`, then the pair).
fn upstream_entry(
    tls: &UpstreamTls,
    system: &RootCertStore,
    read: &Read,
) -> Result<UpstreamFiles, TlsError> {
    let mut roots = system.clone();
    let mut stamps = Vec::new();
    let ca = tls
        .ca_root
        .as_ref()
        .and_then(|p| Some((p, read.roots.get(p)?)));
    if let Some((path, (stamp, certs))) = ca {
        stamps.push(stamp.clone());
        for cert in certs {
            let bad = |source| TlsError::BadRoot {
                path: path.clone(),
                source,
            };
            roots.add(cert.clone()).map_err(bad)?;
        }
    }
    let client = tls.client_cert.as_ref().and_then(|c| read.pairs.get(c));
    stamps.extend(client.map(|pair| pair.stamp.clone()));
    Ok(UpstreamFiles {
        stamp: FileStamp::join(stamps),
        roots: Arc::new(roots),
        client: client.map(|pair| pair.key.clone()),
    })
}

/// The operating system's trusted roots (`/etc/ssl/certs` and the like); the ones that do not
/// parse are skipped, as every TLS client does.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "\n[[site]]\nhosts = [\"HOST\"]\ntls = { cert = \"CERT.pem\", key = \"CERT.key\" }\n  [[site.route]]\n  path = \"/\"\n  upstream = \"api\"\n";

    fn site(host: &str, cert: &str) -> String {
        SITE.replace("HOST", host).replace("CERT", cert)
    }

    #[test]
    fn reads_the_named_files_and_locates_what_fails_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("a.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), made.key_pair.serialize_pem()).unwrap();
        let head = "[listen]\nhttps = \"127.0.0.1:0\"\n\n[upstream.api]\nservers = [\"https://10.0.0.1:443\"]\nca_root = \"a.pem\"\n";
        let path = dir.path().join("gatehouse.toml");
        let good = format!("{head}{}{}", site("a.test", "a"), site("b.test", "a"));
        std::fs::write(&path, &good).unwrap();
        let loaded = load(&path).unwrap();
        let Some(crate::config::SiteTls::Files(pair)) = &loaded.config.sites[0].tls else {
            panic!("a site with certificate files");
        };
        assert!(loaded.files.pair(pair).is_some());
        let api = loaded.files.upstream("api").unwrap();
        assert_eq!(
            api.stamp,
            FileStamp::of_paths([dir.path().join("a.pem").as_path()])
        );
        assert!(api.client.is_none());

        let bad = format!("{good}{}", site("c.test", "missing"));
        std::fs::write(&path, &bad).unwrap();
        let Err(ConfigError::Invalid(errors)) = load(&path) else {
            panic!("a missing certificate file is a config error");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        let line = bad.lines().position(|l| l.contains("missing.pem")).unwrap() + 1;
        assert_eq!((errors[0].line, errors[0].key.as_str()), (line, "site.tls"));
        assert!(errors[0].message.contains("missing.pem"), "{}", errors[0]);
    }
}
