//! TLS to upstreams (`https://` servers): the rustls client config built from `[upstream.NAME]`
//! (`ca_root`, `client_cert`, `sni`) and the `Connector` every upstream connection is made with
//! (`conn::Dialer`, and the health checks' client): TCP through hyper-util's `HttpConnector`, then,
//! for a TLS upstream, the handshake under the configured name.
//!
//! A request's URI names a resolved backend address (`https://10.0.0.7:8443/...`), so the name sent
//! as SNI and verified never comes from the URI: it is `sni`, else the host of the server the address
//! was resolved from (an IP literal is verified against the certificate's IP address SANs). Each
//! upstream keeps its own keep-alive connections (on its backends): connections with different
//! trust or client certificates never mix, even towards the same address. ALPN offers what the
//! upstream's `protocol` speaks: `http/1.1`, `h2`, or both for `auto` (the server chooses).

use crate::config::{Protocol, ServerAddr, Upstream};
use crate::load::UpstreamFiles;
use crate::tls::TlsError;
use http::uri::Scheme;
use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use rustls::crypto::ring;
use rustls::sign::SingleCertAndKey;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to a backend: plain TCP, or TLS over it.
pub type UpstreamStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Connects to backends: TCP (`HttpConnector`: connect timeout, nodelay, keepalive), then the TLS
/// handshake for a TLS upstream.
#[derive(Clone)]
pub struct Connector {
    http: hyper_util::client::legacy::connect::HttpConnector,
    tls: Option<Arc<Handshake>>,
}

impl Connector {
    pub(super) fn new(
        mut http: hyper_util::client::legacy::connect::HttpConnector,
        tls: Option<Arc<Handshake>>,
    ) -> Connector {
        // a plain client refuses https URIs; a TLS one checks the scheme itself
        http.enforce_http(tls.is_none());
        Connector { http, tls }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let tcp = self.http.call(dst.clone());
        match self.tls.clone() {
            None => Box::pin(async move { Ok(MaybeHttpsStream::Http(tcp.await?)) }),
            Some(tls) => Box::pin(async move { tls.connect(&dst, tcp).await }),
        }
    }
}

/// Everything a TLS handshake with one upstream's backends needs.
pub struct Handshake {
    upstream: String,
    connector: tokio_rustls::TlsConnector,
    names: Names,
    /// For the rare lookup that tells which server a backend address came from.
    resolve_timeout: Duration,
}

/// Where the name to send and verify comes from.
enum Names {
    /// `sni`: one name for every backend.
    Fixed(String),
    /// The servers as written: each backend is verified against the server it was resolved from.
    Servers(Vec<ServerAddr>),
}

impl Handshake {
    /// The handshake settings of a TLS upstream, from the roots and client certificate
    /// `crate::load` read for it; `None` for a plain one. How long a handshake may take is the
    /// caller's: the request path bounds TCP and TLS together by the route's `upstream_connect`,
    /// a health check its whole probe by the check's `timeout`.
    pub fn new(
        upstream: &str,
        spec: &Upstream,
        files: Option<&UpstreamFiles>,
    ) -> Result<Option<Arc<Handshake>>, TlsError> {
        let Some(tls) = &spec.tls else {
            return Ok(None);
        };
        let files = files.ok_or_else(|| TlsError::NotLoaded(format!("upstream `{upstream}`")))?;
        let names = match &tls.sni {
            Some(name) => Names::Fixed(name.clone()),
            // a TLS upstream has TCP servers only (validation)
            None => Names::Servers(
                spec.servers
                    .iter()
                    .filter_map(|s| s.addr.tcp().cloned())
                    .collect(),
            ),
        };
        Ok(Some(Arc::new(Handshake {
            upstream: upstream.to_string(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client_config(
                upstream,
                files,
                spec.protocol,
            )?)),
            names,
            resolve_timeout: spec.resolve_timeout,
        })))
    }

    async fn connect<F, E>(&self, dst: &Uri, tcp: F) -> Result<UpstreamStream, BoxError>
    where
        F: Future<Output = Result<TokioIo<TcpStream>, E>>,
        E: Into<BoxError>,
    {
        let https = dst.scheme() == Some(&Scheme::HTTPS);
        let addr = backend_addr(dst)
            .filter(|_| https)
            .ok_or_else(|| ConnectError::Target {
                upstream: self.upstream.clone(),
                uri: dst.clone(),
            })?;
        let name = self.server_name(addr).await?;
        let tcp = tcp.await.map_err(Into::into)?;
        let handshake = self.connector.connect(name.clone(), TokioIo::new(tcp));
        let failed = |source: io::Error, hint: &'static str| ConnectError::Handshake {
            upstream: self.upstream.clone(),
            addr,
            name: name.to_str().into_owned(),
            hint,
            source,
        };
        match handshake.await {
            Ok(stream) => Ok(MaybeHttpsStream::Https(TokioIo::new(stream))),
            Err(source) => {
                let hint = source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .map_or("", hint);
                Err(failed(source, hint).into())
            }
        }
    }

    async fn server_name(&self, addr: SocketAddr) -> Result<ServerName<'static>, ConnectError> {
        let host = match &self.names {
            Names::Fixed(name) => Some(name.clone()),
            Names::Servers(servers) => server_host(servers, addr, self.resolve_timeout).await,
        };
        let host = host.ok_or_else(|| ConnectError::NoName {
            upstream: self.upstream.clone(),
            addr,
        })?;
        ServerName::try_from(host.clone()).map_err(|_| ConnectError::BadName {
            upstream: self.upstream.clone(),
            name: host,
        })
    }
}

/// TLS 1.2 and 1.3 with ring; the system's roots plus `ca_root`; the client certificate if any;
/// ALPN as `protocol` says.
fn client_config(
    upstream: &str,
    files: &UpstreamFiles,
    protocol: Protocol,
) -> Result<ClientConfig, TlsError> {
    let roots = files.roots.clone();
    if roots.is_empty() {
        tracing::warn!(upstream, "no trusted root certificates (install ca-certificates or set `ca_root`): every TLS handshake with this upstream will fail");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let mut config = match &files.client {
        None => builder.with_no_client_auth(),
        Some(key) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())))
        }
    };
    config.alpn_protocols = match protocol {
        Protocol::H2 | Protocol::H2c => vec![b"h2".to_vec()],
        Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// The backend address a request URI names (`IP:PORT`, as `UpstreamPool` writes it).
fn backend_addr(uri: &Uri) -> Option<SocketAddr> {
    uri.authority()?.as_str().parse().ok()
}

/// The host, as written, of the server `addr` was resolved from: the IP literal equal to it, else
/// the one name with its port; only when several names share the port is DNS asked which one
/// resolves to it now (each lookup within `resolve_timeout`).
async fn server_host(
    servers: &[ServerAddr],
    addr: SocketAddr,
    resolve_timeout: Duration,
) -> Option<String> {
    let same_port = || servers.iter().filter(|s| s.port == addr.port());
    let is_literal = |s: &ServerAddr| s.host.parse::<IpAddr>().is_ok();
    if let Some(literal) = same_port().find(|s| s.host.parse::<IpAddr>().ok() == Some(addr.ip())) {
        return Some(literal.host.clone());
    }
    let mut names: Vec<&ServerAddr> = same_port().filter(|s| !is_literal(s)).collect();
    names.sort_by(|a, b| a.host.cmp(&b.host));
    names.dedup_by(|a, b| a.host == b.host);
    if let [one] = names.as_slice() {
        return Some(one.host.clone());
    }
    for server in names {
        let lookup = tokio::net::lookup_host((server.host.as_str(), server.port));
        let found = tokio::time::timeout(resolve_timeout, lookup).await;
        if found.is_ok_and(|found| found.is_ok_and(|mut addrs| addrs.any(|a| a == addr))) {
            return Some(server.host.clone());
        }
    }
    None
}

/// What the TLS error usually means for whoever reads the log line.
fn hint(err: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    match err {
        Error::InvalidCertificate(Cert::UnknownIssuer) => {
            " (the certificate is not trusted: its issuer is neither a system root nor in `ca_root`)"
        }
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            " (the certificate is not valid for this name: set `sni` to a name it carries)"
        }
        Error::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => " (the certificate is expired or not valid yet)",
        Error::AlertReceived(Alert::CertificateRequired | Alert::HandshakeFailure) => {
            " (the server may require a client certificate: `client_cert`)"
        }
        Error::AlertReceived(Alert::BadCertificate | Alert::UnknownCA) => {
            " (the server refused our client certificate)"
        }
        _ => "",
    }
}

/// Why a connection to a TLS upstream failed; named in the `upstream error` log line.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream `{upstream}`: TLS handshake with {addr} as `{name}` failed{hint}")]
    Handshake {
        upstream: String,
        addr: SocketAddr,
        name: String,
        hint: &'static str,
        source: io::Error,
    },
    #[error("upstream `{upstream}`: no server name for {addr} (no server resolves to it any more); set `sni`")]
    NoName { upstream: String, addr: SocketAddr },
    #[error("upstream `{upstream}`: `{name}` is not a valid TLS server name")]
    BadName { upstream: String, name: String },
    #[error("upstream `{upstream}`: {uri} is not an https://IP:PORT backend URI")]
    Target { upstream: String, uri: Uri },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn servers(list: &[(&str, u16)]) -> Vec<ServerAddr> {
        list.iter()
            .map(|(host, port)| ServerAddr {
                host: host.to_string(),
                port: *port,
            })
            .collect()
    }

    #[tokio::test]
    async fn an_ip_literal_server_is_its_own_name() {
        let s = servers(&[("10.0.0.1", 443), ("10.0.0.2", 443), ("api.internal", 443)]);
        let addr: SocketAddr = "10.0.0.2:443".parse().unwrap();
        assert_eq!(
            server_host(&s, addr, SECOND).await.as_deref(),
            Some("10.0.0.2")
        );
    }

    #[tokio::test]
    async fn a_resolved_address_takes_the_one_name_on_its_port() {
        let s = servers(&[("10.0.0.1", 443), ("api.internal", 8443)]);
        let addr: SocketAddr = "10.9.9.9:8443".parse().unwrap();
        assert_eq!(
            server_host(&s, addr, SECOND).await.as_deref(),
            Some("api.internal")
        );
        let elsewhere: SocketAddr = "10.9.9.9:9000".parse().unwrap();
        assert_eq!(server_host(&s, elsewhere, SECOND).await, None);
    }

    #[tokio::test]
    async fn several_names_on_one_port_are_told_apart_by_dns() {
        let s = servers(&[("localhost", 8443), ("name.invalid", 8443)]);
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            server_host(&s, addr, SECOND).await.as_deref(),
            Some("localhost")
        );
    }

    #[test]
    fn backend_addresses_come_from_the_authority() {
        let uri: Uri = "https://[::1]:8443/x".parse().unwrap();
        assert_eq!(backend_addr(&uri), Some("[::1]:8443".parse().unwrap()));
        let uri: Uri = "https://api.internal:8443/x".parse().unwrap();
        assert_eq!(backend_addr(&uri), None);
    }

    #[test]
    fn common_certificate_failures_get_a_hint() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(hint(&unknown).contains("not trusted"));
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert!(hint(&name).contains("`sni`"));
        assert_eq!(hint(&rustls::Error::DecryptError), "");
    }
}
