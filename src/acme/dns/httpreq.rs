//! lego's `httpreq` DNS provider protocol: `POST <endpoint>/present` (and `/cleanup`) with the
//! JSON body `{"fqdn": "_acme-challenge.example.com.", "value": "..."}`, optionally with basic
//! authentication; any 2xx answer is success. (lego's `RAW` mode is not offered.)

use super::{DnsError, Record};
use crate::config::HttpReq;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// lego's default `HTTPREQ_HTTP_TIMEOUT`.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Enough of an error answer's body to say why.
const BODY_SHOWN: usize = 300;

/// One `present` or `cleanup` request.
pub async fn post(h: &HttpReq, action: &str, record: &Record) -> Result<(), DnsError> {
    let url = format!("{}/{action}", h.endpoint);
    let fail = |outcome: String| DnsError::HttpReq {
        url: url.clone(),
        name: record.fqdn.clone(),
        value: record.value.clone(),
        outcome,
    };
    let body = serde_json::json!({ "fqdn": record.fqdn, "value": record.value }).to_string();
    let mut request = http::Request::post(&url).header("content-type", "application/json");
    if let Some((user, password)) = &h.auth {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request = request.header("authorization", format!("Basic {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(format!("cannot be asked: {e}")))?;
    let client = client().await.map_err(fail)?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
            format!("cannot be reached: {e}{cause}")
        })?;
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        Ok::<_, String>((status, body.unwrap_or_default()))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("did not answer within {TIMEOUT:?}")))?
        .map_err(fail)?;
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_SHOWN)]);
    Err(fail(format!("answered {status}: {}", text.trim())))
}

/// An HTTP and HTTPS client trusting the system roots (read on the blocking pool).
async fn client() -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>, String>
{
    let tls = tokio::task::spawn_blocking(|| crate::acme::order::client_tls(Vec::new()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
