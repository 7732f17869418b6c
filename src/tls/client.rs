//! Client certificates (a site's `client_auth`, mTLS): the verifier a site group's handshakes
//! use (rustls's `WebPkiClientVerifier` against the site's CA file), and what a verified
//! handshake leaves on its connection (`ClientTls`): the subject, SANs, serial and SHA-256
//! fingerprint of the client's leaf certificate, for the `{tls.client.*}` placeholders, and which
//! CA verified it, for the check that a request on the connection is for a site that trusts
//! that CA (`421` otherwise).
//!
//! A CA is known by the digest of its certificates (`CaId`), not by its file's name: two files
//! with the same certificates are one CA, a file whose certificates change is another CA from
//! the next reload on, and a connection verified before a reload stays good for a site whose CA
//! did not change.

use super::TlsError;
use crate::config::ClientAuthMode;
use rustls::crypto::ring;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

/// What identifies a set of CA certificates: the SHA-256 digest of their DER encodings, in
/// file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaId([u8; 32]);

impl CaId {
    pub fn of(certs: &[CertificateDer<'_>]) -> CaId {
        let mut ctx = ::ring::digest::Context::new(&::ring::digest::SHA256);
        for cert in certs {
            ctx.update(&(cert.len() as u64).to_be_bytes());
            ctx.update(cert);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        CaId(id)
    }
}

/// A site's `client_auth` as read from its CA file: the verifier its handshakes use.
#[derive(Clone)]
pub struct ClientCa {
    pub id: CaId,
    pub mode: ClientAuthMode,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// The verifier for `certs` (read from `path`): a client must present a certificate issued
    /// by one of them (`Require`), or may present none (`Optional`; one it presents must verify).
    pub fn new(
        path: &Path,
        certs: &[CertificateDer<'static>],
        mode: ClientAuthMode,
    ) -> Result<ClientCa, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert.clone())
                .map_err(|source| TlsError::BadRoot {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let provider = Arc::new(ring::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = match mode {
            ClientAuthMode::Require => builder,
            ClientAuthMode::Optional => builder.allow_unauthenticated(),
        };
        let verifier = builder.build().map_err(|source| TlsError::ClientCa {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ClientCa {
            id: CaId::of(certs),
            mode,
            verifier,
        })
    }
}

/// What the handshake of a connection made with a `client_auth` site group's config settled:
/// the group's CA, and the client's certificate if it sent one (it was verified: an unverified
/// one fails the handshake).
#[derive(Debug)]
pub struct ClientTls {
    pub ca: CaId,
    pub cert: Option<ClientCert>,
}

impl ClientTls {
    /// Whether a request for a site with `client_auth` of `ca` and `mode` may be served on this
    /// connection: its handshake went through that CA's config (and with `Require`, a
    /// certificate was verified), not through another site's.
    pub fn admits(client: Option<&ClientTls>, ca: CaId, mode: ClientAuthMode) -> bool {
        client.is_some_and(|c| c.ca == ca && (mode == ClientAuthMode::Optional || c.cert.is_some()))
    }
}

/// A verified client certificate, as the placeholders show it (made once per connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject DN as RFC 4514 writes it (`CN=client,O=Example`: last RDN first).
    pub subject: String,
    /// DNS, URI and email SANs, in certificate order, joined by `, `.
    pub san: String,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint: String,
    /// The serial number, upper-case hex (as nginx's `$ssl_client_serial`).
    pub serial: String,
}

impl ClientCert {
    /// The certificate `leaf` (DER) describes. rustls verified it already; one x509-parser
    /// cannot read gets its fingerprint alone.
    pub fn of(leaf: &[u8]) -> ClientCert {
        let fingerprint = hex(::ring::digest::digest(&::ring::digest::SHA256, leaf).as_ref());
        let mut cert = ClientCert {
            fingerprint: fingerprint.to_ascii_lowercase(),
            ..ClientCert::default()
        };
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) {
            cert.subject = rfc4514(parsed.subject());
            cert.san = sans(&parsed);
            cert.serial = hex(parsed.raw_serial());
        }
        cert
    }
}

/// Upper-case hex.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02X}");
    }
    out
}

fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return String::new();
    };
    let names = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => Some(*s),
            _ => None,
        });
    names.collect::<Vec<_>>().join(", ")
}

/// A distinguished name as RFC 4514 writes it: RDNs from last to first, `,` between them, `+`
/// between the attributes of one, special characters escaped; an attribute that is not a string
/// is `OID=#hex`.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex(attr.as_slice()).to_ascii_lowercase());
                }
            }
        }
    }
    out
}

/// RFC 4514 section 2.4.
fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            // a header value cannot carry it either: `\XX` per byte
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn leaf(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_sans_serial_and_fingerprint() {
        let mut params = CertificateParams::new(vec!["svc.internal".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example, Inc.");
        params
            .distinguished_name
            .push(DnType::CommonName, "#build bot ");
        params.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/ns/prod/sa/api".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@example.org".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        params.serial_number = Some(vec![0x01, 0xab, 0xcd].into());
        let der = leaf(params);
        let cert = ClientCert::of(&der);
        assert_eq!(cert.subject, r"CN=\#build bot\ ,O=Example\, Inc.");
        assert_eq!(
            cert.san,
            "svc.internal, spiffe://example.org/ns/prod/sa/api, ops@example.org"
        );
        assert_eq!(cert.serial, "01ABCD");
        assert_eq!(cert.fingerprint.len(), 64);
        assert!(cert
            .fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(
            ClientCert::of(&leaf(CertificateParams::default())).fingerprint,
            cert.fingerprint
        );
    }

    #[test]
    fn a_ca_is_its_certificates() {
        let a = CertificateDer::from(leaf(CertificateParams::default()));
        let b = CertificateDer::from(leaf(CertificateParams::default()));
        let (one_a, one_b) = (std::slice::from_ref(&a), std::slice::from_ref(&b));
        let again = CertificateDer::from(a.to_vec());
        assert_eq!(CaId::of(one_a), CaId::of(&[again]));
        assert_ne!(CaId::of(one_a), CaId::of(one_b));
        assert_ne!(CaId::of(&[a.clone(), b.clone()]), CaId::of(one_a));
    }

    #[test]
    fn require_needs_a_certificate_for_the_same_ca() {
        let (ca, other) = (CaId([1; 32]), CaId([2; 32]));
        let with = ClientTls {
            ca,
            cert: Some(ClientCert::default()),
        };
        let without = ClientTls { ca, cert: None };
        use ClientAuthMode::{Optional, Require};
        assert!(ClientTls::admits(Some(&with), ca, Require));
        assert!(ClientTls::admits(Some(&with), ca, Optional));
        assert!(!ClientTls::admits(Some(&without), ca, Require));
        assert!(ClientTls::admits(Some(&without), ca, Optional));
        assert!(!ClientTls::admits(Some(&with), other, Optional));
        assert!(!ClientTls::admits(None, ca, Optional));
    }
}
