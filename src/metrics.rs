//! Prometheus metrics: one registry per process, injected where events happen (no global
//! registry). The request path only touches handles resolved before it runs: per route a
//! histogram and a lazily filled table of counters by (method, status), per backend its outcome
//! counters. State that already lives elsewhere (health verdicts, certificate expiry, refusal
//! counts) is copied into gauges and counters when `/metrics` is scraped.

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Buckets from 100 µs to 1 s, for store calls (most answer in well under a millisecond).
const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// `[cluster]`: every store call's latency and result, and the limits' falls back to
/// `rate_limit_fallback` (`crate::cluster`).
pub struct ClusterMetrics {
    pub store_seconds: Histogram,
    /// By result: `granted`, `refused`, `returned` (tokens given back only), `error`, `timeout`.
    pub store_calls: IntCounterVec,
    /// Times the global limits fell back because the store did not answer in time.
    pub fallbacks: IntCounter,
    /// 1 while global limits are counted in the store, 0 while they fall back.
    pub store_up: IntGauge,
    /// Members with a live heartbeat in the store, this one included (`cluster::members`).
    pub members: IntGauge,
    /// Members whose rate-limit or ACME config digest differs from this instance's.
    pub config_disagreements: IntGauge,
    /// Shared-ACME locks this instance took, released or lost, by event.
    pub acme_lock_changes: IntCounterVec,
    /// Certificates this instance took from the store (another instance ordered them).
    pub acme_certs_received: IntCounter,
    /// Writes the store refused because this instance no longer held the lock (fencing).
    pub acme_fenced_refusals: IntCounter,
    /// Challenge answers looked up in the store, by `type` and `result` (`cluster::challenges`).
    pub challenges_from_store: IntCounterVec,
    /// Challenge answers written to the store, by `type` and `result` (`written`, `down`,
    /// `error`, `timeout`).
    pub challenges_to_store: IntCounterVec,
}

impl ClusterMetrics {
    fn new() -> Result<ClusterMetrics, prometheus::Error> {
        let store_calls = IntCounterVec::new(
            opts("gatehouse_cluster_store_calls_total", "Rate-limit calls to the cluster store, by result (granted, refused, returned, error, timeout)."),
            &["result"],
        )?;
        for result in ["granted", "refused", "returned", "error", "timeout"] {
            store_calls.with_label_values(&[result]);
        }
        let acme_lock_changes = IntCounterVec::new(
            opts("gatehouse_cluster_acme_lock_changes_total", "Shared-ACME locks (one per certificate, one per account) this instance took, released, or lost (expired or taken over before it was done), by event."),
            &["event"],
        )?;
        for event in ["taken", "released", "lost"] {
            acme_lock_changes.with_label_values(&[event]);
        }
        Ok(ClusterMetrics {
            acme_lock_changes,
            acme_certs_received: IntCounter::new("gatehouse_cluster_acme_certs_received_total", "Certificates this instance took from the cluster store (ordered by another instance) and now serves.")?,
            acme_fenced_refusals: IntCounter::new("gatehouse_cluster_acme_fenced_refusals_total", "Writes to the cluster store refused because this instance no longer held the lock they were made under (fencing token).")?,
            store_seconds: Histogram::with_opts(
                HistogramOpts::new("gatehouse_cluster_store_seconds", "Time a rate-limit call to the cluster store took (answered ones; timeouts are counted in gatehouse_cluster_store_calls_total).")
                    .buckets(STORE_BUCKETS.to_vec()),
            )?,
            store_calls,
            fallbacks: IntCounter::new("gatehouse_cluster_fallbacks_total", "Times global rate limits fell back to rate_limit_fallback because the store failed or was slower than [cluster] timeout.")?,
            store_up: IntGauge::new("gatehouse_cluster_store_up", "1 while global rate limits are counted in the cluster store, 0 while they fall back.")?,
            members: IntGauge::new("gatehouse_cluster_members", "Cluster members with a live heartbeat in the store, as this instance last read them (0: store not read).")?,
            config_disagreements: IntGauge::new("gatehouse_cluster_config_disagreements", "Cluster members whose rate-limit or ACME config digest differs from this instance's.")?,
            challenges_from_store: IntCounterVec::new(
                opts("gatehouse_acme_challenges_from_store_total", "ACME challenge answers this instance did not have, looked up in the cluster store, by type and result (hit, miss, invalid, busy, down, error, timeout)."),
                &["type", "result"],
            )?,
            challenges_to_store: IntCounterVec::new(
                opts("gatehouse_acme_challenges_to_store_total", "ACME challenge answers written to the cluster store for the other instances, by type and result (written, down, error, timeout)."),
                &["type", "result"],
            )?,
        })
    }

    fn register(&self, r: &Registry) -> Result<(), prometheus::Error> {
        r.register(Box::new(self.store_seconds.clone()))?;
        r.register(Box::new(self.store_calls.clone()))?;
        r.register(Box::new(self.fallbacks.clone()))?;
        r.register(Box::new(self.members.clone()))?;
        r.register(Box::new(self.config_disagreements.clone()))?;
        r.register(Box::new(self.acme_lock_changes.clone()))?;
        r.register(Box::new(self.acme_certs_received.clone()))?;
        r.register(Box::new(self.acme_fenced_refusals.clone()))?;
        r.register(Box::new(self.challenges_from_store.clone()))?;
        r.register(Box::new(self.challenges_to_store.clone()))?;
        r.register(Box::new(self.store_up.clone()))
    }
}

/// Methods with a label of their own; anything else is "other".
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const CODES: usize = 500; // 100..=599

/// DNS-01 propagation waits: from a second to `propagation_timeout`'s usual range (minutes).
const PROPAGATION_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_healthy: IntGaugeVec,
    connections_open: IntGaugeVec,
    connections_total: IntCounterVec,
    tunnels_open: IntGaugeVec,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    tls_handshakes: IntCounterVec,
    certificate_expiry: IntGaugeVec,
    pub acme_orders: IntCounterVec,
    acme_dns_publishes: IntCounterVec,
    acme_dns_cleanups: IntCounterVec,
    acme_dns_propagation: HistogramVec,
    /// `tls = "on_demand"`: asks of the `ask` endpoint by result, orders by result, and
    /// handshakes left without a certificate by reason.
    pub on_demand_asks: IntCounterVec,
    pub on_demand_orders: IntCounterVec,
    pub on_demand_refusals: IntCounterVec,
    rejected: IntCounterVec,
    access_log_dropped: IntCounter,
    encode_skipped: IntCounterVec,
    /// Header-rule values left out because a placeholder expanded to a control character.
    pub header_values_dropped: IntCounter,
    /// Password hashes `basic_auth` computed (a cache miss or a failed attempt each).
    pub auth_hashes: IntCounter,
    /// `basic_auth` checks answered from the cache of verified credentials.
    pub auth_cache_hits: IntCounter,
    encoders_active: IntGauge,
    tasks_alive: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_success: IntGauge,
    /// `[cluster]`: the store's calls and the limits' fallbacks.
    pub cluster: ClusterMetrics,
    /// Scrapes copy state into gauges; one at a time.
    scrape: Mutex<()>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        let m = Metrics {
            requests: IntCounterVec::new(
                opts("gatehouse_requests_total", "Requests answered, by site, route, method and status code."),
                &["site", "route", "method", "code"],
            )?,
            duration: HistogramVec::new(
                hist("gatehouse_request_duration_seconds", "Time from request head to the end of the response body."),
                &["site", "route"],
            )?,
            upstream_requests: IntCounterVec::new(
                opts("gatehouse_upstream_requests_total", "Attempts sent to upstream servers, by outcome (success, server_error, failure)."),
                &["upstream", "server", "outcome"],
            )?,
            upstream_duration: HistogramVec::new(
                hist("gatehouse_upstream_response_duration_seconds", "Time from sending a request upstream to its response head."),
                &["upstream"],
            )?,
            upstream_healthy: IntGaugeVec::new(
                opts("gatehouse_upstream_healthy", "1 if the server may take traffic (active checks and passive ejection), else 0."),
                &["upstream", "server"],
            )?,
            connections_open: IntGaugeVec::new(
                opts("gatehouse_connections_open", "Client connections open now."),
                &["listener"],
            )?,
            connections_total: IntCounterVec::new(
                opts("gatehouse_connections_total", "Client connections accepted."),
                &["listener"],
            )?,
            tunnels_open: IntGaugeVec::new(
                opts("gatehouse_tunnels_open", "Client connections upgraded to a tunnel (WebSocket) open now; each is also in gatehouse_connections_open."),
                &["listener"],
            )?,
            request_bytes: IntCounter::new("gatehouse_request_body_bytes_total", "Request body bytes received from clients.")?,
            response_bytes: IntCounter::new("gatehouse_response_body_bytes_total", "Response body bytes sent to clients.")?,
            tls_handshakes: IntCounterVec::new(
                opts("gatehouse_tls_handshakes_total", "TLS handshakes on the HTTPS listener, by result."),
                &["result"],
            )?,
            certificate_expiry: IntGaugeVec::new(
                opts("gatehouse_certificate_expiry_timestamp_seconds", "When the certificate served for a site expires (unix time)."),
                &["name"],
            )?,
            acme_orders: IntCounterVec::new(
                opts("gatehouse_acme_orders_total", "ACME certificate orders, by result."),
                &["result"],
            )?,
            acme_dns_publishes: IntCounterVec::new(
                opts("gatehouse_acme_dns_publishes_total", "DNS-01 challenge records published, by provider (rfc2136, exec, httpreq) and result."),
                &["provider", "result"],
            )?,
            acme_dns_cleanups: IntCounterVec::new(
                opts("gatehouse_acme_dns_cleanups_total", "DNS-01 challenge records removed (after an order, or left from an earlier run), by provider and result."),
                &["provider", "result"],
            )?,
            acme_dns_propagation: HistogramVec::new(
                HistogramOpts::new("gatehouse_acme_dns_propagation_seconds", "Time from publishing a DNS-01 record until the checking DNS server answered it (success) or `propagation_timeout` ran out (failure).")
                    .buckets(PROPAGATION_BUCKETS.to_vec()),
                &["provider", "result"],
            )?,
            on_demand_asks: IntCounterVec::new(
                opts("gatehouse_acme_on_demand_asks_total", "Questions to [acme] on_demand.ask before an on-demand certificate is ordered, by result (allowed: 200; refused: any other status; error: no answer in time)."),
                &["result"],
            )?,
            on_demand_orders: IntCounterVec::new(
                opts("gatehouse_acme_on_demand_orders_total", "First orders of on-demand certificates, by result (renewals count in gatehouse_acme_orders_total)."),
                &["result"],
            )?,
            on_demand_refusals: IntCounterVec::new(
                opts("gatehouse_acme_on_demand_refusals_total", "Handshakes on a tls = \"on_demand\" site left without a certificate, by reason."),
                &["reason"],
            )?,
            rejected: IntCounterVec::new(
                opts("gatehouse_rejected_requests_total", "Requests and connections refused at the edge, by reason."),
                &["reason"],
            )?,
            access_log_dropped: IntCounter::new(
                "gatehouse_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind (the queue was full).",
            )?,
            encode_skipped: IntCounterVec::new(
                opts("gatehouse_encode_skipped_total", "Responses that would have been compressed, sent uncompressed instead, by reason (budget: max_encoders encoders were alive)."),
                &["reason"],
            )?,
            header_values_dropped: IntCounter::new(
                "gatehouse_header_values_dropped_total",
                "Header-rule values left out because a placeholder expanded to a control character (CR, LF, NUL...).",
            )?,
            auth_hashes: IntCounter::new(
                "gatehouse_auth_hashes_total",
                "Password hashes computed by basic_auth: credentials not in the cache, and failed attempts (an unknown user costs one too).",
            )?,
            auth_cache_hits: IntCounter::new(
                "gatehouse_auth_cache_hits_total",
                "basic_auth credentials accepted from the cache of recently verified ones, without a hash.",
            )?,
            encoders_active: IntGauge::new(
                "gatehouse_encoders_active",
                "Response encoders alive now (responses being compressed), against [server] max_encoders.",
            )?,
            tasks_alive: IntGauge::new(
                "gatehouse_runtime_tasks_alive",
                "Tokio tasks alive (connections, health checkers, resolvers, certificate watchers...).",
            )?,
            reloads: IntCounterVec::new(
                opts("gatehouse_config_reloads_total", "Config reloads, by result."),
                &["result"],
            )?,
            last_reload_success: IntGauge::new(
                "gatehouse_config_last_reload_success_timestamp_seconds",
                "When the running config was loaded (unix time).",
            )?,
            cluster: ClusterMetrics::new()?,
            registry,
            scrape: Mutex::new(()),
        };
        m.register()?;
        for result in ["success", "failure"] {
            m.tls_handshakes.with_label_values(&[result]);
            m.acme_orders.with_label_values(&[result]);
            m.on_demand_orders.with_label_values(&[result]);
            m.reloads.with_label_values(&[result]);
        }
        for result in ["allowed", "refused", "error"] {
            m.on_demand_asks.with_label_values(&[result]);
        }
        for refusal in crate::acme::on_demand::Refusal::ALL {
            m.on_demand_refusals.with_label_values(&[refusal.label()]);
        }
        m.last_reload_success.set(crate::clock::unix_now());
        Ok(Arc::new(m))
    }

    fn register(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.requests.clone()))?;
        r.register(Box::new(self.duration.clone()))?;
        r.register(Box::new(self.upstream_requests.clone()))?;
        r.register(Box::new(self.upstream_duration.clone()))?;
        r.register(Box::new(self.upstream_healthy.clone()))?;
        r.register(Box::new(self.connections_open.clone()))?;
        r.register(Box::new(self.connections_total.clone()))?;
        r.register(Box::new(self.tunnels_open.clone()))?;
        r.register(Box::new(self.request_bytes.clone()))?;
        r.register(Box::new(self.response_bytes.clone()))?;
        r.register(Box::new(self.tls_handshakes.clone()))?;
        r.register(Box::new(self.certificate_expiry.clone()))?;
        r.register(Box::new(self.acme_orders.clone()))?;
        r.register(Box::new(self.acme_dns_publishes.clone()))?;
        r.register(Box::new(self.acme_dns_cleanups.clone()))?;
        r.register(Box::new(self.acme_dns_propagation.clone()))?;
        r.register(Box::new(self.on_demand_asks.clone()))?;
        r.register(Box::new(self.on_demand_orders.clone()))?;
        r.register(Box::new(self.on_demand_refusals.clone()))?;
        r.register(Box::new(self.rejected.clone()))?;
        r.register(Box::new(self.reloads.clone()))?;
        r.register(Box::new(self.access_log_dropped.clone()))?;
        r.register(Box::new(self.encode_skipped.clone()))?;
        r.register(Box::new(self.encoders_active.clone()))?;
        r.register(Box::new(self.header_values_dropped.clone()))?;
        r.register(Box::new(self.auth_hashes.clone()))?;
        r.register(Box::new(self.auth_cache_hits.clone()))?;
        r.register(Box::new(self.tasks_alive.clone()))?;
        r.register(Box::new(self.last_reload_success.clone()))?;
        self.cluster.register(r)?;
        let build = IntGaugeVec::new(
            opts(
                "gatehouse_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build))?;
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(())
    }

    /// The handles for one route (or, with `route = "-"`, for requests no route took).
    pub fn route(self: &Arc<Self>, site: &str, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            duration: self.duration.with_label_values(&[site, route]),
            counters: (0..=METHODS.len()).map(|_| OnceLock::new()).collect(),
            labels: [site.to_string(), route.to_string()],
            metrics: self.clone(),
        })
    }

    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections_open.with_label_values(&[name]),
            total: self.connections_total.with_label_values(&[name]),
            tunnels: self.tunnels_open.with_label_values(&[name]),
        }
    }

    /// The count of responses sent uncompressed for `reason`.
    pub fn encode_skipped(&self, reason: &str) -> IntCounter {
        self.encode_skipped.with_label_values(&[reason])
    }

    pub fn encoders_active(&self) -> IntGauge {
        self.encoders_active.clone()
    }

    pub fn upstream_duration(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    /// One DNS-01 record published (`cleanup: false`) or removed through `provider`.
    pub fn acme_dns_change(&self, provider: &str, cleanup: bool, ok: bool) {
        let counter = if cleanup {
            &self.acme_dns_cleanups
        } else {
            &self.acme_dns_publishes
        };
        counter.with_label_values(&[provider, result(ok)]).inc();
    }

    /// One DNS-01 record's wait until it was answered (or the wait gave up).
    pub fn acme_dns_propagation(&self, provider: &str, ok: bool, waited: Duration) {
        self.acme_dns_propagation
            .with_label_values(&[provider, result(ok)])
            .observe(waited.as_secs_f64());
    }

    pub fn tls_handshake(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_handshakes.with_label_values(&[result]).inc();
    }

    /// The text exposition, after copying in state kept elsewhere (`fill`).
    pub fn render(&self, fill: impl FnOnce(&Scrape<'_>)) -> Vec<u8> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        fill(&Scrape { metrics: self });
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

fn result(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}

/// Setters for scrape-time values.
pub struct Scrape<'a> {
    metrics: &'a Metrics,
}

impl Scrape<'_> {
    /// Replaces every server's health gauge (servers that left disappear).
    pub fn upstream_health(&self, servers: &[(String, String, bool)]) {
        let g = &self.metrics.upstream_healthy;
        g.reset();
        for (upstream, server, up) in servers {
            g.with_label_values(&[upstream.as_str(), server.as_str()])
                .set(i64::from(*up));
        }
    }

    pub fn certificate_expiry(&self, certs: &[(String, i64)]) {
        let g = &self.metrics.certificate_expiry;
        g.reset();
        for (name, not_after) in certs {
            g.with_label_values(&[name.as_str()]).set(*not_after);
        }
    }

    pub fn tasks_alive(&self, n: usize) {
        self.metrics.tasks_alive.set(n as i64);
    }

    /// The access log's own count of dropped lines.
    pub fn access_log_dropped(&self, total: u64) {
        let c = &self.metrics.access_log_dropped;
        c.inc_by(total.saturating_sub(c.get()));
    }

    /// Counts kept by `middleware::Rejections`, by reason.
    pub fn rejections(&self, counts: &[(&str, u64)]) {
        let c = &self.metrics.rejected;
        c.reset();
        for (reason, n) in counts {
            c.with_label_values(&[*reason]).inc_by(*n);
        }
    }
}

/// One method's counters on one route, indexed by status - 100.
type ByStatus = Box<[OnceLock<IntCounter>]>;

/// One route's handles.
pub struct RouteMetrics {
    duration: Histogram,
    /// By method index, then status - 100; a method's table is made when the method is first
    /// seen and a counter when its status is (label values are formatted once).
    counters: Box<[OnceLock<ByStatus>]>,
    labels: [String; 2],
    metrics: Arc<Metrics>,
}

impl RouteMetrics {
    pub fn record(
        &self,
        method: &Method,
        status: u16,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.duration.observe(took.as_secs_f64());
        let m = METHODS
            .iter()
            .position(|x| x == method)
            .unwrap_or(METHODS.len());
        let status = status.clamp(100, 599);
        let by_status =
            self.counters[m].get_or_init(|| (0..CODES).map(|_| OnceLock::new()).collect());
        let counter = by_status[usize::from(status) - 100].get_or_init(|| {
            let method = METHODS.get(m).map_or("other", Method::as_str);
            let code = status.to_string();
            let [site, route] = &self.labels;
            self.metrics.requests.with_label_values(&[
                site.as_str(),
                route.as_str(),
                method,
                code.as_str(),
            ])
        });
        counter.inc();
        self.metrics.request_bytes.inc_by(bytes_in);
        self.metrics.response_bytes.inc_by(bytes_out);
    }
}

pub struct ListenerMetrics {
    pub open: IntGauge,
    pub total: IntCounter,
    /// Connections of `open` that are tunnels now.
    pub tunnels: IntGauge,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("site", &self.labels[0])
            .field("route", &self.labels[1])
            .finish()
    }
}
