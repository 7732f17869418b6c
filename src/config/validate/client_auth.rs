//! A site's `client_auth` (client certificates, mTLS): the CA file it names (read by
//! `crate::load`, never here) and the mode. It needs the site's `tls`, and plain HTTP requests
//! must be redirected: a request that came without TLS carries no certificate.

use super::Ctx;
use crate::config::file::{FileClientAuth, Str};
use crate::config::model::{ClientAuth, ClientAuthMode};
use crate::config::FileKind;
use toml::Spanned;

const KEY: &str = "site.client_auth";
const MODES: &str = "expected \"require\" (the default: no certificate, no handshake) or \"optional\" (asked for, the request goes on without one)";

/// What the site's TLS settings are: whether it has `tls`, and `redirect_https` if set.
pub(super) struct SiteTls {
    pub tls: bool,
    pub redirect_https: Option<Spanned<bool>>,
}

pub(super) fn resolve(
    cx: &mut Ctx,
    raw: &Spanned<FileClientAuth>,
    site: SiteTls,
) -> Option<ClientAuth> {
    if !site.tls {
        let msg = "`client_auth` needs `tls` on the site: client certificates are asked for in the TLS handshake";
        cx.error(raw.span(), KEY, msg);
        return None;
    }
    if let Some(redirect) = site.redirect_https.filter(|r| !*r.get_ref()) {
        let msg = "a site with `client_auth` cannot be served over plain HTTP (a request without TLS carries no certificate); remove `redirect_https = false`";
        cx.error(redirect.span(), "site.redirect_https", msg);
        return None;
    }
    let FileClientAuth { ca, mode } = raw.get_ref();
    let mode = match mode {
        Some(mode) => self::mode(cx, mode)?,
        None => ClientAuthMode::Require,
    };
    let ca = ca_file(cx, ca)?;
    Some(ClientAuth { ca, mode })
}

fn mode(cx: &mut Ctx, value: &Str) -> Option<ClientAuthMode> {
    let key = format!("{KEY}.mode");
    match cx.expand(value, &key)?.as_str() {
        "require" => Some(ClientAuthMode::Require),
        "optional" => Some(ClientAuthMode::Optional),
        other => {
            let msg = format!("`{other}` is not a client_auth mode; {MODES}");
            cx.error(value.span(), &key, msg);
            None
        }
    }
}

fn ca_file(cx: &mut Ctx, value: &Str) -> Option<std::path::PathBuf> {
    let key = format!("{KEY}.ca");
    let text = cx.expand(value, &key)?;
    if text.is_empty() {
        let msg = "no file named; expected the PEM file of the CA that issues the clients' certificates, like \"clients-ca.pem\" (relative to the config file's folder)";
        cx.error(value.span(), &key, msg);
        return None;
    }
    let path = cx.relative(&text);
    cx.names(FileKind::Roots(path.clone()), value.span(), &key);
    Some(path)
}
