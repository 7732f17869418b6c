//! The CA as the checks know it: whether its directory answers, and its names for CAA
//! (`meta.caaIdentities`, RFC 8555 7.1.1), with the directory's host standing in when it lists
//! none (Pebble, many private CAs) or cannot be read.

use super::super::order;
use super::{Finding, Outcome};
use crate::config;
use std::time::Duration;

/// The directory request gets this long.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA as the checks know it: its CAA identities, and the finding about its directory.
#[derive(Clone)]
pub struct Ca {
    pub identities: Vec<String>,
    pub finding: Finding,
}

/// Reads the directory's `meta.caaIdentities`; the directory host stands in when it lists
/// none or cannot be read.
pub async fn directory(settings: &config::Acme) -> Ca {
    let url = &settings.directory;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or(url)
        .to_string();
    let fetched = tokio::time::timeout(DIRECTORY_TIMEOUT, fetch_directory(settings)).await;
    let fetched =
        fetched.unwrap_or_else(|_| Err(format!("no answer within {DIRECTORY_TIMEOUT:?}")));
    let (identities, outcome) = match fetched {
        Ok(listed) if !listed.is_empty() => {
            let text = format!("{url} answers; CAA identities: {}", listed.join(", "));
            (listed, Outcome::Ok(text))
        }
        Ok(_) => {
            let text = format!(
                "{url} answers; it lists no CAA identities, so its host `{host}` stands for it"
            );
            (vec![host], Outcome::Ok(text))
        }
        Err(e) => {
            let what = format!("cannot read the ACME directory {url}: {e}");
            let fix = "check `[acme] directory` and `ca_root`, DNS and outbound HTTPS (a proxy or firewall in the way?)".to_string();
            (vec![host], Outcome::problem(what, fix))
        }
    };
    Ca {
        identities,
        finding: Finding {
            check: "ca",
            outcome,
        },
    }
}

async fn fetch_directory(settings: &config::Acme) -> Result<Vec<String>, String> {
    use instant_acme::BodyWrapper;
    let s = settings.clone();
    let client = tokio::task::spawn_blocking(move || order::http_client(&s))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(&settings.directory)
        .body(BodyWrapper::default())
        .map_err(|e| e.to_string())?;
    let mut response = client.request(request).await.map_err(|e| e.to_string())?;
    if !response.parts.status.is_success() {
        return Err(format!("answered {}", response.parts.status));
    }
    let body = response
        .body
        .into_bytes()
        .await
        .map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("not a directory: {e}"))?;
    let listed = json["meta"]["caaIdentities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(listed
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}
