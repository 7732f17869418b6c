//! The runtime snapshot compiled from a validated `Config` and the files it names (read
//! beforehand by `load`: nothing here reads a file), published through one `ArcSwap` so a
//! request sees one whole config from start to end.

use crate::access_log::{AccessLog, AccessLogError};
use crate::acme;
use crate::cluster::acme::SharedAcme;
use crate::cluster::connect::Endpoint;
use crate::cluster::members::{Identity, Membership};
use crate::cluster::Store;
use crate::config::{
    Action, ClientAuthMode, Config, Encode, HeaderRules, Http1Engine, Log, Redirect, Respond,
    RouteHeaders, SiteTls, Timeouts, Upstream,
};
use crate::error_pages::{ErrorPages, Page, Pages};
use crate::http::rewrite::Rewrite;
use crate::load::{Files, Loaded};
use crate::metrics::{Metrics, MetricsError, RouteMetrics};
use crate::middleware::basic_auth::{BasicGuard, Verifier};
use crate::middleware::cors::CorsPolicy;
use crate::middleware::forward_auth::{AuthClient, ForwardGuard};
use crate::middleware::rate_limit::{KeyCaps, Limiters};
use crate::middleware::{RouteAuth, RoutePolicy};
use crate::routing::Router;
use crate::tls::client::{CaId, ClientCa, ClientCert, ClientTls};
use crate::tls::{self, TlsError};
use crate::upstream::{self, UpstreamPool};
use arc_swap::ArcSwap;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub struct RuntimeState {
    pub config: Arc<Config>,
    pub router: Router,
    /// Indexed by `RouteId` (the router's): every route of every site, in config order.
    pub routes: Vec<Route>,
    /// Requests no route took, per site, then one for no site; empty with metrics off.
    pub unrouted_metrics: Vec<Arc<RouteMetrics>>,
    pub metrics: Arc<Metrics>,
    /// Each TLS site's first name and certificate slot, for the expiry gauge.
    pub certs: Vec<(String, tls::CertSlot)>,
    pub upstreams: HashMap<String, Arc<UpstreamPool>>,
    /// Per site, in config order (the router's site index).
    pub sites: Vec<SiteState>,
    /// For the HTTPS listener; `None` when no site has TLS.
    pub tls: Option<Arc<tls::ServerConfigs>>,
    /// Where finished requests are logged (`[log]`).
    pub access_log: AccessLog,
    /// hyper's connection settings (head and HTTP/2 limits) for connections accepted now.
    pub http: Arc<crate::http::Protocols>,
    /// `error_pages` per route, site and server, with their files' contents.
    pub error_pages: ErrorPages,
    /// `basic_auth` users files as read, by path: a reload of an unchanged config compares them.
    pub users_files: HashMap<std::path::PathBuf, Arc<crate::config::Users>>,
    /// `[cluster]`'s heartbeat and the members it last read (`/cluster`); it stops with the
    /// last snapshot that holds it.
    pub cluster: Option<Arc<Membership>>,
}

pub struct SiteState {
    /// Served over HTTPS; a request for a plain site on the HTTPS listener is misdirected.
    pub tls: bool,
    /// Plain-HTTP requests are redirected to HTTPS.
    pub redirect_https: bool,
    pub hsts: Option<HeaderValue>,
    /// The site's `response_headers` (over the server's), for answers no route claims.
    pub response_headers: HeaderRules,
    /// `client_auth`: the CA a request's connection must have been verified against.
    pub client_auth: Option<(CaId, ClientAuthMode)>,
}

impl SiteState {
    /// Whether a request for this site may be served on a TLS connection whose handshake left
    /// `client` (`None` for one made with the config of sites without `client_auth`): a plain
    /// site never, a `client_auth` site only when the handshake was made for its CA.
    pub fn served_over(&self, client: Option<&ClientTls>) -> bool {
        match self.client_auth {
            None => self.tls,
            Some((ca, mode)) => ClientTls::admits(client, ca, mode),
        }
    }

    /// The client certificate a request for this site shows its placeholders: only a
    /// `client_auth` site's, and only one verified against its CA.
    pub fn client_cert<'c>(&self, client: Option<&'c ClientTls>) -> Option<&'c ClientCert> {
        let (ca, _) = self.client_auth?;
        client.filter(|c| c.ca == ca)?.cert.as_ref()
    }
}

/// One route as the request path uses it: everything compiled from its config entry.
pub struct Route {
    pub action: RouteAction,
    pub policy: RoutePolicy,
    /// `None` for a route without `cors` (the upstream's CORS passes).
    pub cors: Option<CorsPolicy>,
    /// `None` for a route that compresses nothing.
    pub encode: Option<Encode>,
    /// `None` with `[server] metrics = false`.
    pub metrics: Option<Arc<RouteMetrics>>,
    /// Header rules both ways, `upstream_host`, `X-Forwarded-Prefix` (`middleware::header_rules`).
    pub headers: RouteHeaders,
    /// Reachable only through `X-Accel-Redirect` (`internal`): to a client, no route.
    pub internal: bool,
    /// `error_pages` as resolved for the route; `None` when it has none.
    pub error_pages: Option<Arc<Pages>>,
    /// `intercept_errors`: the upstream's error answers get the route's pages too.
    pub intercept_errors: bool,
    /// `basic_auth`, `forward_auth`; `None` for a route with neither.
    pub auth: Option<Box<RouteAuth>>,
}

impl Route {
    /// The page that replaces an upstream answer with `status`, if the route has
    /// `intercept_errors` and a page for it (an answer under 400 is never looked at).
    pub fn intercepts(&self, status: http::StatusCode) -> Option<&Page> {
        if !self.intercept_errors || status.as_u16() < 400 {
            return None;
        }
        self.error_pages.as_deref()?.get(status)
    }
}

pub enum RouteAction {
    Proxy(Box<ProxyRoute>),
    Respond(Respond),
    Redirect(Redirect),
    /// An `Arc`: each request hands it to the blocking pool, where the files are read.
    Files(Arc<crate::files::FilesRoute>),
}

pub struct ProxyRoute {
    /// The upstream's servers, with their keep-alive connections (TLS ones for a TLS upstream).
    pub pool: Arc<UpstreamPool>,
    /// The target sent upstream, and `Location` mapped back.
    pub rewrite: Rewrite,
    /// `X-Accel-Redirect` in the upstream's answer is followed (`crate::files::accel`).
    pub accel_redirect: bool,
    /// A folder tried before the upstream (`files` and `upstream` on one route).
    pub files_first: Option<Arc<crate::files::FilesRoute>>,
}

/// What outlives any one snapshot: ACME work per name set, rate-limit budgets per definition,
/// the cluster store connection, the metrics registry.
pub struct Keep {
    pub acme: acme::Manager,
    /// TLS session tickets and caches: a client resumes across reloads.
    pub resumption: tls::Resumptions,
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
    /// Runs `basic_auth`'s hashes and remembers verified credentials, across reloads.
    pub verifier: Arc<Verifier>,
    /// Pools (with their health state, resolved members and their keep-alive connections) of
    /// the last snapshot built, reused by the next one when unchanged.
    upstreams: tokio::sync::Mutex<HashMap<String, KeptUpstream>>,
    /// The access log of the last snapshot built, reused while `[log]` stays.
    access_log: std::sync::Mutex<Option<(Log, AccessLog)>>,
    /// Lines lost by every access log the process opened.
    log_dropped: Arc<AtomicU64>,
    /// The cluster store global limits count in, reused while `[cluster]` stays.
    cluster: std::sync::Mutex<Option<Arc<Store>>>,
    /// With `rate_limits = "local"`, the store only challenge answers go through.
    answers: std::sync::Mutex<Option<Arc<Store>>>,
    /// The heartbeat, reused while `[cluster]`, the digests and the store stay.
    membership: std::sync::Mutex<Option<Arc<Membership>>>,
    /// Shared ACME's store (`[cluster] acme = "shared"`), kept while its settings stay.
    shared_acme: std::sync::Mutex<Option<Arc<SharedAcme>>>,
    /// When the process started (Unix seconds), for its cluster record.
    started: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    AccessLog(#[from] AccessLogError),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    /// A route names an upstream the config does not define (validation rules that out).
    #[error("route {0}: upstream {1:?} is not defined")]
    NoUpstream(String, String),
    /// A `users_file` the load step did not read (it reads every one a valid config names).
    #[error("users file {} was not read", .0.display())]
    NoUsers(std::path::PathBuf),
    #[error("forward_auth client: {0}")]
    AuthTls(#[from] rustls::Error),
}

/// Everything an upstream's pool and its connections are built from: its spec, the server timeouts,
/// the metrics switch, the state of its TLS files (a CA or client certificate replaced under
/// the same name is read again by the next reload), and the HTTP/1.1 engine its client is.
type MadeFrom = (Upstream, Timeouts, bool, tls::FileStamp, Http1Engine);

#[derive(Clone)]
pub struct KeptUpstream {
    /// Everything the pool was built from.
    made_from: MadeFrom,
    pub pool: Arc<UpstreamPool>,
}

impl Keep {
    pub fn new() -> Result<Keep, BuildError> {
        let metrics = Metrics::new()?;
        let acme = acme::Manager::default();
        acme.set_metrics(metrics.clone());
        let verifier = Verifier::new(metrics.auth_hashes.clone(), metrics.auth_cache_hits.clone());
        Ok(Keep {
            acme,
            resumption: tls::Resumptions::new()?,
            limiters: Arc::default(),
            verifier,
            metrics,
            upstreams: tokio::sync::Mutex::default(),
            access_log: std::sync::Mutex::default(),
            log_dropped: Arc::default(),
            cluster: std::sync::Mutex::default(),
            answers: std::sync::Mutex::default(),
            membership: std::sync::Mutex::default(),
            shared_acme: std::sync::Mutex::default(),
            started: crate::cluster::members::unix_now(),
        })
    }

    /// The kept access log if `[log]` did not change, else a new one (file opened, on the
    /// blocking pool, and writer started). Only `keep_access_log` makes it the kept one, once
    /// the snapshot is complete.
    async fn access_log(&self, log: &Log) -> Result<AccessLog, AccessLogError> {
        {
            let kept = self.access_log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, access_log)) = kept.as_ref().filter(|(l, _)| l == log) {
                return Ok(access_log.clone());
            }
        }
        start_access_log(log.clone(), self.log_dropped.clone()).await
    }

    fn keep_access_log(&self, log: &Log, access_log: &AccessLog) {
        let mut kept = self.access_log.lock().unwrap_or_else(|e| e.into_inner());
        *kept = Some((log.clone(), access_log.clone()));
    }

    /// Whether a TLS file an upstream of `config` reads (`ca_root`, `client_cert`) changed on
    /// disk since its pool was built (`files` were read just now): then a reload of an unchanged
    /// config still rebuilds.
    pub async fn tls_files_changed(&self, config: &Config, files: &Files) -> bool {
        let kept = self.upstreams.lock().await;
        config.upstreams.keys().any(|name| {
            kept.get(name)
                .is_some_and(|k| k.made_from.3 != files.upstream_stamp(name))
        })
    }

    /// The pools for `config`: the kept one for an upstream whose definition did not change,
    /// a new one (resolved, checks started) otherwise. The new ones resolve their names and run
    /// their first checks all at once, so a reload waits for the slowest, not for the sum. The
    /// kept set becomes exactly this one.
    async fn upstreams(
        &self,
        config: &Config,
        files: &Files,
    ) -> Result<HashMap<String, KeptUpstream>, TlsError> {
        let mut kept = self.upstreams.lock().await;
        let mut next = HashMap::new();
        let mut new = Vec::new();
        for (name, spec) in &config.upstreams {
            let made_from = (
                spec.clone(),
                config.server.timeouts.clone(),
                config.server.metrics,
                files.upstream_stamp(name),
                config.server.http1_engine,
            );
            match kept.get(name).filter(|k| k.made_from == made_from) {
                Some(entry) => {
                    next.insert(name.clone(), entry.clone());
                }
                None => new.push(self.new_upstream(name, made_from, files)),
            }
        }
        for (name, entry) in futures_util::future::try_join_all(new).await? {
            next.insert(name, entry);
        }
        *kept = next.clone();
        Ok(next)
    }

    async fn new_upstream(
        &self,
        name: &str,
        made_from: MadeFrom,
        files: &Files,
    ) -> Result<(String, KeptUpstream), TlsError> {
        let (spec, timeouts, metrics, _, engine) = &made_from;
        let tls = files.upstream(name);
        let handshake = upstream::tls::Handshake::new(name, spec, tls)?;
        let pool = UpstreamPool::new(name, spec, handshake.clone(), *engine);
        if *metrics {
            pool.set_metrics(&self.metrics);
        }
        pool.resolve().await;
        pool.spawn_resolver();
        pool.spawn_sweeper();
        if let Some(check) = &spec.health {
            // probes go over the same kind of connection as the traffic, TLS included
            upstream::health::start_checks(&pool, check.clone(), timeouts, handshake).await;
        }
        Ok((name.to_string(), KeptUpstream { made_from, pool }))
    }
}

impl RuntimeState {
    /// Whether the `basic_auth` users files `read` now differ from the ones this snapshot has.
    pub fn users_changed(
        &self,
        read: &HashMap<std::path::PathBuf, Arc<crate::config::Users>>,
    ) -> bool {
        read.len() != self.users_files.len()
            || read
                .iter()
                .any(|(path, users)| self.users_files.get(path) != Some(users))
    }

    /// Compiles a snapshot. Must run inside a tokio runtime (pools start their DNS resolvers,
    /// certificate files get watchers, new ACME names get their task).
    pub async fn build(loaded: Loaded, keep: &Keep) -> Result<RuntimeState, BuildError> {
        let Loaded { config, files } = loaded;
        let access_log = keep.access_log(&config.log).await?;
        let acme = &keep.acme;
        let shared = keep.shared_acme(&config, &files);
        let mut slots = Vec::with_capacity(config.sites.len());
        for site in &config.sites {
            slots.push(match &site.tls {
                None => None,
                Some(SiteTls::Files(tls)) => match files.pair(tls) {
                    Some(pair) => {
                        Some(tls::watched_slot(tls, pair.stamp.clone(), pair.key.clone()))
                    }
                    None => return Err(TlsError::NotLoaded(tls.cert.display().to_string()).into()),
                },
                // a placeholder: the resolver looks the name up in `OnDemandCerts`
                Some(SiteTls::OnDemand) => Some(Arc::new(arc_swap::ArcSwapOption::empty())),
                Some(SiteTls::Acme) => Some(
                    acme.slot(
                        &config.acme.for_site(site).for_orders(),
                        &config.server.state_dir,
                        site.names(),
                        shared.as_ref(),
                    )
                    .await,
                ),
            });
        }
        let (min, default_sni) = (
            config.server.tls_min_version,
            config.server.default_sni.as_deref(),
        );
        let cas = client_cas(&config, &files)?;
        let tls = tls::server_configs(
            &config.sites,
            &slots,
            &cas,
            &keep.resumption,
            (min, default_sni),
            acme.on_demand().certs(),
        )?;
        let certs = config
            .sites
            .iter()
            .zip(&slots)
            .filter(|(site, _)| site.tls != Some(SiteTls::OnDemand))
            .filter_map(|(site, slot)| Some((site_label(site), slot.clone()?)))
            .collect();
        let kept = keep.upstreams(&config, &files).await?;
        let upstreams: HashMap<String, Arc<UpstreamPool>> = kept
            .iter()
            .map(|(name, k)| (name.clone(), k.pool.clone()))
            .collect();
        let (error_pages, route_pages) = ErrorPages::build(&config, files.pages());
        let routes = routes(&config, &kept, keep, route_pages, &files)?;
        let sites = config
            .sites
            .iter()
            .zip(&cas)
            .map(|(s, ca)| SiteState {
                tls: s.tls.is_some(),
                redirect_https: s.tls.is_some() && s.redirect_https,
                hsts: s.hsts.clone().filter(|_| s.tls.is_some()),
                response_headers: s.response_headers.clone(),
                client_auth: ca.as_ref().map(|ca| (ca.id, ca.mode)),
            })
            .collect();
        let unrouted_metrics = if config.server.metrics {
            unrouted_metrics(&config, &keep.metrics)
        } else {
            Vec::new()
        };
        keep.keep_access_log(&config.log, &access_log);
        keep.acme
            .retain(&slots.iter().flatten().collect::<Vec<_>>());
        keep.acme.configure_on_demand(&config);
        let answers = keep.answers_store(&config, &files);
        keep.acme.challenges().share_through(answers);
        let cluster = keep.membership(&config, &files);
        Ok(RuntimeState {
            cluster,
            access_log,
            http: Arc::new(crate::http::builder(&config.server)),
            unrouted_metrics,
            metrics: keep.metrics.clone(),
            certs,
            router: Router::new(&config.sites),
            sites,
            tls,
            routes,
            upstreams,
            error_pages,
            users_files: files.users().clone(),
            config: Arc::new(config),
        })
    }
}

impl RuntimeState {
    /// Whether a site's `client_auth` CA file holds other certificates than when this snapshot
    /// was built (`files` were read just now for `config`): then a reload of an unchanged config
    /// still rebuilds.
    pub fn client_cas_changed(&self, config: &Config, files: &Files) -> bool {
        let now = config.sites.iter().map(|s| {
            let ca = s.client_auth.as_ref().and_then(|a| files.client_ca(a));
            ca.map(|ca| (ca.id, ca.mode))
        });
        !now.eq(self.sites.iter().map(|s| s.client_auth))
    }
}

/// Each site's `client_auth` as read, in config order.
fn client_cas(config: &Config, files: &Files) -> Result<Vec<Option<ClientCa>>, TlsError> {
    let read = |auth: &crate::config::ClientAuth| {
        files
            .client_ca(auth)
            .cloned()
            .ok_or_else(|| TlsError::NotLoaded(auth.ca.display().to_string()))
    };
    let sites = config.sites.iter();
    sites
        .map(|s| s.client_auth.as_ref().map(read).transpose())
        .collect()
}

/// `AccessLog::start` on the blocking pool: opening a file may wait on its disk.
async fn start_access_log(log: Log, dropped: Arc<AtomicU64>) -> Result<AccessLog, AccessLogError> {
    let path = match &log.access {
        crate::config::AccessTarget::File(path) => path.clone(),
        _ => std::path::PathBuf::new(),
    };
    match tokio::task::spawn_blocking(move || AccessLog::start(&log, dropped)).await {
        Ok(started) => started,
        Err(e) => Err(AccessLogError {
            path,
            source: std::io::Error::other(e),
        }),
    }
}

/// A site's metric label: its first host, or "*" for the catch-all.
fn site_label(site: &crate::config::Site) -> String {
    site.hosts
        .first()
        .map_or("*".to_string(), ToString::to_string)
}

impl Keep {
    /// The store global limits count in: `None` without `[cluster]` or with `rate_limits =
    /// "local"`. The last one is kept while its settings (and secret) stay; else a new one
    /// connects in the background, and the old one goes with the last snapshot that uses it.
    fn cluster_store(&self, config: &Config, files: &Files) -> Option<Arc<Store>> {
        let settings = config.cluster.as_ref().filter(|c| c.global_limits())?;
        let secret = files.cluster_secret(config)?;
        let mut kept = self.cluster.lock().unwrap_or_else(|e| e.into_inner());
        let endpoint = Endpoint::new(settings, files.store_tls());
        if let Some(store) = kept
            .as_ref()
            .filter(|s| s.serves(settings, &endpoint, &secret))
        {
            return Some(store.clone());
        }
        let store = Store::start(settings, endpoint, secret, self.metrics.clone());
        *kept = Some(store.clone());
        Some(store)
    }
}

impl Keep {
    /// Shared ACME's store handle: `None` without `[cluster]` or with `acme = "local"`. Kept
    /// while its settings and secret stay (the certificate tasks keep theirs).
    fn shared_acme(&self, config: &Config, files: &Files) -> Option<Arc<SharedAcme>> {
        let mut kept = self.shared_acme.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settings) = config.cluster.as_ref().filter(|c| c.shared_acme()) else {
            *kept = None;
            return None;
        };
        let secret = files.cluster_secret(config)?;
        let endpoint = Endpoint::new(settings, files.store_tls());
        if let Some(shared) = kept
            .as_ref()
            .filter(|s| s.serves(settings, &endpoint, &secret))
        {
            return Some(shared.clone());
        }
        match SharedAcme::start(settings, endpoint, secret, self.metrics.clone()) {
            Ok(shared) => {
                *kept = Some(shared.clone());
                Some(shared)
            }
            Err(e) => {
                tracing::error!(error = %e, "shared ACME cannot start; certificates are not ordered");
                None
            }
        }
    }

    /// The store ACME challenge answers are shared through: whenever `[cluster]` is configured
    /// (`None` without). With global limits, theirs; else one of its own, kept the same way.
    fn answers_store(&self, config: &Config, files: &Files) -> Option<Arc<Store>> {
        let mut kept = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settings) = config.cluster.as_ref() else {
            *kept = None;
            return None;
        };
        if settings.global_limits() {
            *kept = None;
            drop(kept);
            return self.cluster_store(config, files);
        }
        let secret = files.cluster_secret(config)?;
        let endpoint = Endpoint::new(settings, files.store_tls());
        if let Some(store) = kept
            .as_ref()
            .filter(|s| s.serves(settings, &endpoint, &secret))
        {
            return Some(store.clone());
        }
        let store = Store::start(settings, endpoint, secret, self.metrics.clone());
        *kept = Some(store.clone());
        Some(store)
    }

    /// The heartbeat for `[cluster]` (`None` without one: a removed `[cluster]` stops it once
    /// the last snapshot holding it goes). Kept while what it publishes stays the same.
    fn membership(&self, config: &Config, files: &Files) -> Option<Arc<Membership>> {
        let mut kept = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settings) = &config.cluster else {
            *kept = None;
            return None;
        };
        let identity = Identity::of(settings, config);
        let endpoint = Endpoint::new(settings, files.store_tls());
        let store = self.cluster_store(config, files);
        if let Some(m) = kept
            .as_ref()
            .filter(|m| m.publishes(&identity, &endpoint, store.as_ref()))
        {
            return Some(m.clone());
        }
        let m = Membership::start(
            identity,
            endpoint,
            store,
            self.metrics.clone(),
            self.started,
        );
        *kept = Some(m.clone());
        Some(m)
    }
}

/// Every route of every site in config order (the router's `RouteId`s), compiled.
fn routes(
    config: &Config,
    upstreams: &HashMap<String, KeptUpstream>,
    keep: &Keep,
    pages: Vec<Option<Arc<Pages>>>,
    files: &Files,
) -> Result<Vec<Route>, BuildError> {
    let mut pages = pages.into_iter();
    let key_caps = KeyCaps::from(&config.server.limits);
    let store = keep.cluster_store(config, files);
    let mut routes = Vec::new();
    let mut auth_client = None;
    for site in &config.sites {
        let label = site_label(site);
        for route in &site.routes {
            let metrics = config
                .server
                .metrics
                .then(|| keep.metrics.route(&label, route.matcher.as_str()));
            let auth = route_auth(route, routes.len(), (keep, files, &mut auth_client))?;
            routes.push(Route {
                action: compile(route, upstreams)?,
                policy: RoutePolicy::compile(
                    &route.policy,
                    &keep.limiters,
                    key_caps,
                    store.as_ref(),
                ),
                cors: route.cors.as_ref().map(CorsPolicy::compile),
                encode: Some(route.encode.clone()).filter(|e| !e.codings.is_empty()),
                metrics,
                headers: route.headers.clone(),
                internal: route.internal,
                error_pages: pages.next().flatten(),
                intercept_errors: route.intercept_errors,
                auth,
            });
        }
    }
    Ok(routes)
}

/// A route's `basic_auth` and `forward_auth`, `None` for neither. `id` is the route's index;
/// the one `AuthClient` of the snapshot is made for the first route that needs it.
fn route_auth(
    route: &crate::config::Route,
    id: usize,
    (keep, files, client): (&Keep, &Files, &mut Option<Arc<AuthClient>>),
) -> Result<Option<Box<RouteAuth>>, BuildError> {
    if route.basic_auth.is_none() && route.forward_auth.is_none() {
        return Ok(None);
    }
    let basic = match &route.basic_auth {
        None => None,
        Some(spec) => {
            let users = match &spec.users {
                crate::config::UserSource::Inline(users) => Arc::new(users.clone()),
                crate::config::UserSource::File(path) => files
                    .users()
                    .get(path)
                    .cloned()
                    .ok_or_else(|| BuildError::NoUsers(path.clone()))?,
            };
            Some(BasicGuard::new(spec, users, id, keep.verifier.clone()))
        }
    };
    let forward = match &route.forward_auth {
        None => None,
        Some(spec) => {
            let client = match client {
                Some(client) => client.clone(),
                None => client
                    .insert(Arc::new(AuthClient::new(files.auth_roots().cloned())?))
                    .clone(),
            };
            Some(ForwardGuard::new(spec, client))
        }
    };
    Ok(Some(Box::new(RouteAuth { basic, forward })))
}

/// Requests no route took: one per site, then one for no site.
fn unrouted_metrics(config: &Config, metrics: &Arc<Metrics>) -> Vec<Arc<RouteMetrics>> {
    let mut unrouted: Vec<_> = config
        .sites
        .iter()
        .map(|site| metrics.route(&site_label(site), "-"))
        .collect();
    unrouted.push(metrics.route("-", "-"));
    unrouted
}

fn compile(
    route: &crate::config::Route,
    upstreams: &HashMap<String, KeptUpstream>,
) -> Result<RouteAction, BuildError> {
    Ok(match &route.action {
        Action::Proxy {
            upstream,
            target,
            rewrite_location,
            accel_redirect,
            files_first,
        } => {
            let kept = upstreams.get(upstream).ok_or_else(|| {
                BuildError::NoUpstream(route.matcher.as_str().to_string(), upstream.clone())
            })?;
            RouteAction::Proxy(Box::new(ProxyRoute {
                pool: kept.pool.clone(),
                rewrite: Rewrite::new(&route.matcher, target, *rewrite_location),
                accel_redirect: *accel_redirect,
                files_first: files_first
                    .as_deref()
                    .map(|files| Arc::new(crate::files::FilesRoute::new(files))),
            }))
        }
        Action::Respond(respond) => RouteAction::Respond(respond.clone()),
        Action::Redirect(redirect) => RouteAction::Redirect(redirect.clone()),
        Action::Files(files) => RouteAction::Files(Arc::new(crate::files::FilesRoute::new(files))),
    })
}

/// The one place the current snapshot lives.
pub struct Shared {
    state: ArcSwap<RuntimeState>,
}

impl Shared {
    pub fn new(state: RuntimeState) -> Arc<Shared> {
        Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
        })
    }

    pub fn load(&self) -> Arc<RuntimeState> {
        self.state.load_full()
    }

    pub fn store(&self, state: RuntimeState) {
        self.state.store(Arc::new(state));
    }
}
