//! What ACME leaves on disk under `[server] state_dir`, and how it is written:
//!
//! ```text
//! state_dir/acme/<directory>/account.json      account key + URL (0600)
//! state_dir/certs/<directory>/<first name>/cert.pem   chain, leaf first (0644)
//! state_dir/certs/<directory>/<first name>/key.pem    private key (0600)
//! state_dir/certs/<directory>/<first name>/issued.log one line per issuance: `<unix secs> <names,>`
//! ```
//!
//! The issuance log is what `gatehouse certs doctor` counts against the CA's rate limits: the
//! certificate files only hold the latest one. It keeps [`ISSUED_KEPT`] of history.
//!
//! `<directory>` is the CA's directory URL made into a file name, so staging, production and a
//! private CA never mix. Every write is atomic: a temp file in the same folder, fsync, rename,
//! fsync of the folder; a crash leaves the old file or the new one, never half of one.

use crate::tls::{self, KeyError};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    Bad { path: PathBuf, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.to_path_buf(),
        }
    }

    pub fn account_path(&self, directory: &str) -> PathBuf {
        self.root
            .join("acme")
            .join(slug(directory))
            .join("account.json")
    }

    pub fn cert_dir(&self, directory: &str, names: &[String]) -> PathBuf {
        let first = names.first().map_or("default", String::as_str);
        // `*.example.com` must not share `example.com`'s folder; `_wildcard` is no host name
        // a CA issues for, so no other name set's folder is called that
        let first = match first.strip_prefix("*.") {
            Some(base) => format!("_wildcard.{base}"),
            None => first.to_string(),
        };
        self.root
            .join("certs")
            .join(slug(directory))
            .join(slug(&first))
    }

    /// Every stored certificate folder, for `gatehouse certs`.
    pub fn cert_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for ca in read_dir(&self.root.join("certs")) {
            dirs.extend(read_dir(&ca).into_iter().filter(|d| d.is_dir()));
        }
        dirs.sort();
        dirs
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// `https://acme-v02.api.letsencrypt.org/directory` -> `acme-v02.api.letsencrypt.org-directory`.
fn slug(text: &str) -> String {
    let text = text.split_once("://").map_or(text, |(_, rest)| rest);
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '-',
        })
        .collect::<String>()
        .trim_matches(|c| c == '-' || c == '.')
        .to_string()
}

/// A certificate as stored, with what the renewal schedule and `gatehouse certs` need.
pub struct Stored {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

#[derive(Clone, Debug)]
pub struct CertInfo {
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn parse(leaf: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        let time = |t: ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| cert.issuer().to_string(), str::to_string);
        Ok(CertInfo {
            names,
            issuer,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }

    /// Renew when a third of the lifetime is left (30 days of Let's Encrypt's 90).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }
}

/// Reads a stored certificate; `Ok(None)` when there is none yet.
pub fn load_cert(dir: &Path) -> Result<Option<Stored>, StoreError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let chain_pem = match fs::read(&cert_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: cert_path,
                source,
            })
        }
    };
    let key_pem = fs::read(&key_path).map_err(|source| StoreError::Read {
        path: key_path.clone(),
        source,
    })?;
    let bad = |path: &Path, message: String| StoreError::Bad {
        path: path.to_path_buf(),
        message,
    };
    let (key, info) = parse_pair(&chain_pem, &key_pem).map_err(|m| bad(&cert_path, m))?;
    Ok(Some(Stored { key, info }))
}

/// A PEM chain and key as the CA and rcgen hand them over, checked and ready to serve.
pub fn parse_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let info = CertInfo::parse(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key PEM: {e}"))?;
    let key = tls::certified_key(chain, key).map_err(|e: KeyError| e.to_string())?;
    Ok((key, info))
}

pub fn save_cert(dir: &Path, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), StoreError> {
    // key first: a crash in between leaves a new key with the old cert, which fails to load
    // and is re-ordered, rather than a cert whose key is lost
    write_atomic(&dir.join("key.pem"), key_pem, 0o600)?;
    write_atomic(&dir.join("cert.pem"), chain_pem, 0o644)
}

const ISSUED_LOG: &str = "issued.log";
/// How long issuance log lines are kept: rate limits count over days (Let's Encrypt: 7).
pub const ISSUED_KEPT: Duration = Duration::from_secs(30 * 86400);

/// One issuance, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuance {
    pub at: SystemTime,
    pub names: Vec<String>,
}

/// Adds an issuance of `names` at `at` to the log in `dir`, dropping lines older than
/// [`ISSUED_KEPT`].
pub fn log_issued(dir: &Path, names: &[String], at: SystemTime) -> Result<(), StoreError> {
    let mut kept: Vec<Issuance> = read_issued(dir)
        .into_iter()
        .filter(|i| at.duration_since(i.at).unwrap_or_default() < ISSUED_KEPT)
        .collect();
    kept.push(Issuance {
        at,
        names: names.to_vec(),
    });
    let text: String = kept
        .iter()
        .map(|i| {
            let secs = i.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("{secs} {}\n", i.names.join(","))
        })
        .collect();
    write_atomic(&dir.join(ISSUED_LOG), text.as_bytes(), 0o644)
}

/// The issuances logged in `dir`; none when there is no log (lines that do not parse are
/// skipped: the log is advisory).
pub fn read_issued(dir: &Path) -> Vec<Issuance> {
    let text = fs::read_to_string(dir.join(ISSUED_LOG)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (secs, names) = line.split_once(' ')?;
            Some(Issuance {
                at: UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?),
                names: names.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Write-temp, fsync, rename, fsync-folder; folders are created 0700.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` applies only on creation; a leftover temp file keeps its bits otherwise
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(err)
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_has_a_folder_apart_from_its_base_name() {
        let store = Store::new(Path::new("/state"));
        let dir = |name: &str| store.cert_dir("https://ca/dir", &[name.to_string()]);
        assert_ne!(dir("*.example.com"), dir("example.com"));
        assert!(dir("*.example.com").ends_with("_wildcard.example.com"));
    }

    #[test]
    fn slug_keeps_host_and_path_apart_from_other_cas() {
        assert_eq!(
            slug("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org-directory"
        );
        assert_eq!(slug("https://127.0.0.1:14000/dir"), "127.0.0.1-14000-dir");
        assert_eq!(slug("../../etc"), "etc");
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parent = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let leftovers: Vec<_> = read_dir(path.parent().unwrap());
        assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");
    }

    #[test]
    fn the_issuance_log_keeps_thirty_days() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let names = vec!["a.test".to_string(), "b.test".to_string()];
        log_issued(dir.path(), &names, start).unwrap();
        log_issued(dir.path(), &names, start + 20 * day).unwrap();
        assert_eq!(read_issued(dir.path()).len(), 2);
        log_issued(dir.path(), &names[..1], start + 31 * day).unwrap();
        let kept = read_issued(dir.path());
        assert_eq!(
            kept.len(),
            2,
            "the first line is over 30 days old: {kept:?}"
        );
        assert_eq!(kept[0].names, names);
        assert_eq!(kept[1].at, start + 31 * day);
    }

    #[test]
    fn renewal_starts_with_a_third_left() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            names: vec!["a.test".into()],
            issuer: "ca".into(),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
        };
        assert_eq!(info.renew_at(), start + Duration::from_secs(60 * 86400));
        assert!(info.covers(&["a.test".into()]));
        assert!(!info.covers(&["a.test".into(), "b.test".into()]));
    }
}
