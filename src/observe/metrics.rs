//! Metrics: each shard counts into its own memory, and the admin thread merges every shard's
//! counts when `/metrics` is scraped (Prometheus text format 0.0.4).
//!
//! Every counter is an atomic written by one shard only (a relaxed load and store, no
//! read-modify-write, no contention); the admin thread only reads. A family's series are kept
//! by name in a per-shard registry ([`ShardMetrics`]) whose map is locked only when a config
//! is applied (to hand the shard its handles) and when admin scrapes; the request path holds
//! `Arc` handles and never touches the map. Series survive reloads by name.
//!
//! Adding a family: a field in the per-name struct (a [`Counter`], a [`CodeCounts`] or a
//! [`Histogram`]) and one line in [`render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A monotonically increasing count written by one shard.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        // One writer: a load and a store are enough (no lock prefix on the request path).
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value written by one shard (connections active).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Status codes counted under their own label; any other status counts under its class
/// (`code="2xx"`), so a hostile origin cannot make series without bound.
const CODES: [u16; 30] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    414, 415, 417, 429, 431, 499, 500, 501, 502, 503, 504,
];
const CODE_SLOTS: usize = CODES.len() + 5;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counts by status code.
#[derive(Debug)]
pub struct CodeCounts([Counter; CODE_SLOTS]);

impl Default for CodeCounts {
    fn default() -> Self {
        CodeCounts(std::array::from_fn(|_| Counter::default()))
    }
}

impl CodeCounts {
    pub fn count(&self, status: u16) {
        self.0[code_slot(status)].add(1);
    }

    fn each(&self, mut f: impl FnMut(String, u64)) {
        for (slot, counter) in self.0.iter().enumerate() {
            let n = counter.get();
            if n > 0 {
                f(code_label(slot), n);
            }
        }
    }
}

fn code_slot(status: u16) -> usize {
    match CODES.iter().position(|&c| c == status) {
        Some(i) => i,
        None => CODES.len() + usize::from(status / 100).clamp(1, 5) - 1,
    }
}

fn code_label(slot: usize) -> String {
    match CODES.get(slot) {
        Some(code) => code.to_string(),
        None => CLASSES[slot - CODES.len()].to_string(),
    }
}

/// Upper bounds of the latency buckets, in microseconds: 100 µs to 10 s.
pub const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram (each bucket counts its own range; rendering accumulates).
#[derive(Debug)]
pub struct Histogram {
    buckets: [Counter; BUCKETS_US.len() + 1],
    sum_us: Counter,
    count: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum_us: Counter::default(),
            count: Counter::default(),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[bucket].add(1);
        self.sum_us.add(us);
        self.count.add(1);
    }
}

/// One route's series on one shard.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub requests: CodeCounts,
    pub duration: Histogram,
    /// Requests refused by the route's `ip_allow` / `ip_deny`.
    pub ip_denied: Counter,
    /// Refusals of authentication or authorization, by [`crate::auth::Denial::slot`].
    pub auth_denied: [Counter; crate::auth::Denial::REASONS.len()],
}

impl RouteMetrics {
    /// One exchange: the status the client got (0: none, counted as 499 as nginx does).
    pub fn count(&self, status: u16, duration: Option<Duration>) {
        self.requests.count(if status == 0 { 499 } else { status });
        if let Some(d) = duration {
            self.duration.observe(d);
        }
    }
}

/// One upstream target's series on one shard.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    /// Response heads from the origin, by their status.
    pub responses: CodeCounts,
    /// Tries that failed without a response head (connect error, reset, timeout).
    pub failures: Counter,
    /// Tries that were followed by another try (at this target or another).
    pub retried: Counter,
}

/// A target's counters summed over every shard, for `/upstreams`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TargetTotals {
    pub responses: u64,
    pub responses_5xx: u64,
    pub failures: u64,
    pub retried: u64,
}

/// The totals of target `target` of `upstream` over `shards`.
pub fn target_totals(shards: &[ShardMetrics], upstream: &str, target: &str) -> TargetTotals {
    let key = (upstream.to_string(), target.to_string());
    let mut totals = TargetTotals::default();
    for shard in shards {
        let map = shard.targets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = map.get(&key) else { continue };
        for (slot, counter) in m.responses.0.iter().enumerate() {
            let n = counter.get();
            totals.responses += n;
            if slot_is_5xx(slot) {
                totals.responses_5xx += n;
            }
        }
        totals.failures += m.failures.get();
        totals.retried += m.retried.get();
    }
    totals
}

fn slot_is_5xx(slot: usize) -> bool {
    match CODES.get(slot) {
        Some(&code) => code >= 500,
        None => CLASSES[slot - CODES.len()] == "5xx",
    }
}

/// One listener's series on one shard.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub connections_active: Gauge,
    pub tls_handshakes: Counter,
    /// Connections refused at accept by `ip_allow` / `ip_deny`.
    pub ip_denied: Counter,
    /// Connections closed for a missing, malformed or late PROXY header.
    pub proxy_protocol_refused: Counter,
}

/// One shard's series, by name.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Audit lines dropped because the writer fell behind.
    pub audit_log_dropped: Counter,
    /// Tokens answered from this shard's JWT cache, and verified anew.
    pub jwt_cache_hits: Counter,
    pub jwt_cache_misses: Counter,
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    targets: Mutex<BTreeMap<(String, String), Arc<TargetMetrics>>>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerMetrics>>>,
    injections: Mutex<BTreeMap<(String, String, String), Arc<Counter>>>,
    limits: Mutex<BTreeMap<String, Arc<LimitMetrics>>>,
}

/// One rate-limit policy's series on one shard.
#[derive(Debug, Default)]
pub struct LimitMetrics {
    pub admitted: Counter,
    pub rejected: Counter,
    /// Keys with a cell on this shard.
    pub keys: Gauge,
}

fn handle<K: Ord, V: Default>(map: &Mutex<BTreeMap<K, Arc<V>>>, key: K) -> Arc<V> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

impl ShardMetrics {
    /// The series of route `name` (`""`: requests that matched no route).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        handle(&self.routes, name.to_string())
    }

    /// The counter of injections of `secret` (its name) on `route` for `consumer` (`""`: a
    /// caller that is not a configured consumer).
    pub fn injection(&self, route: &str, consumer: &str, secret: &str) -> Arc<Counter> {
        handle(
            &self.injections,
            (route.to_string(), consumer.to_string(), secret.to_string()),
        )
    }

    /// The series of rate-limit policy `name`.
    pub fn limit(&self, name: &str) -> Arc<LimitMetrics> {
        handle(&self.limits, name.to_string())
    }

    pub fn target(&self, upstream: &str, target: &str) -> Arc<TargetMetrics> {
        handle(&self.targets, (upstream.to_string(), target.to_string()))
    }

    pub fn listener(&self, name: &str) -> Arc<ListenerMetrics> {
        handle(&self.listeners, name.to_string())
    }
}

/// Process-wide values the control side adds to a scrape.
pub struct Extra<'a> {
    pub version: &'a str,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// (upstream, target, up) for every target of the running config.
    pub targets_up: Vec<(String, String, bool)>,
    pub start_time_unix_s: f64,
    /// Lines the log writers lost off the shards (file not writable, queue full).
    pub access_log_lost: u64,
    pub audit_log_lost: u64,
    /// JWT providers with a `jwks_url`: (provider, fetches ok, fetches failed, keys loaded).
    pub jwks: Vec<(String, u64, u64, bool)>,
    /// `[cluster]` sync with Redis: (up, nodes last counted), when configured.
    pub cluster: Option<(bool, u64)>,
}

/// The whole exposition: every shard's series merged, plus process metrics.
pub fn render(shards: &[ShardMetrics], extra: &Extra) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Merge by name across shards.
    let mut requests: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut buckets: BTreeMap<String, ([u64; BUCKETS_US.len() + 1], u64, u64)> = BTreeMap::new();
    let mut upstream: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut active: BTreeMap<String, u64> = BTreeMap::new();
    let mut handshakes: BTreeMap<String, u64> = BTreeMap::new();
    let mut denied: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut ip_denied: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut proxy_refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut injections: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut limits: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for shard in shards {
        for (name, m) in shard
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let sums = limits.entry(name.clone()).or_default();
            sums.0 += m.admitted.get();
            sums.1 += m.rejected.get();
            sums.2 += m.keys.get();
        }
        for (key, n) in shard
            .injections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if n.get() > 0 {
                *injections.entry(key.clone()).or_default() += n.get();
            }
        }
        for (route, m) in shard
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            m.requests.each(|code, n| {
                *requests.entry((route.clone(), code)).or_default() += n;
            });
            let h = buckets.entry(route.clone()).or_default();
            for (i, b) in m.duration.buckets.iter().enumerate() {
                h.0[i] += b.get();
            }
            h.1 += m.duration.sum_us.get();
            h.2 += m.duration.count.get();
            if m.ip_denied.get() > 0 {
                *ip_denied.entry(("route", route.clone())).or_default() += m.ip_denied.get();
            }
            for (reason, n) in crate::auth::Denial::REASONS.iter().zip(&m.auth_denied) {
                if n.get() > 0 {
                    *denied.entry((route.clone(), reason)).or_default() += n.get();
                }
            }
        }
        for ((u, t), m) in shard
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            m.responses.each(|code, n| {
                *upstream.entry((u.clone(), t.clone(), code)).or_default() += n;
            });
        }
        for (l, m) in shard
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *active.entry(l.clone()).or_default() += m.connections_active.get();
            *handshakes.entry(l.clone()).or_default() += m.tls_handshakes.get();
            if m.proxy_protocol_refused.get() > 0 {
                *proxy_refused.entry(l.clone()).or_default() += m.proxy_protocol_refused.get();
            }
            if m.ip_denied.get() > 0 {
                *ip_denied.entry(("listener", l.clone())).or_default() += m.ip_denied.get();
            }
        }
    }
    family(
        &mut out,
        "ringgate_requests_total",
        "counter",
        "Requests answered, by route and status code (499: the client went away; route \"\": no route matched).",
    );
    for ((route, code), n) in &requests {
        let _ = writeln!(
            out,
            "ringgate_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
            escape(route)
        );
    }
    family(
        &mut out,
        "ringgate_request_duration_seconds",
        "histogram",
        "From the complete request head to the end of the response, by route.",
    );
    for (route, (counts, sum_us, count)) in &buckets {
        let route = escape(route);
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = match BUCKETS_US.get(i) {
                Some(us) => format_seconds(*us),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "ringgate_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "ringgate_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            *sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "ringgate_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }
    family(
        &mut out,
        "ringgate_auth_denied_total",
        "counter",
        "Requests refused by authentication or authorization, by route and reason.",
    );
    for ((route, reason), n) in &denied {
        let _ = writeln!(
            out,
            "ringgate_auth_denied_total{{route=\"{}\",reason=\"{reason}\"}} {n}",
            escape(route)
        );
    }
    for (name, help, pick) in [
        (
            "ringgate_jwt_cache_hits_total",
            "Valid tokens answered from a shard's cache (no signature check).",
            (|s: &ShardMetrics| s.jwt_cache_hits.get()) as fn(&ShardMetrics) -> u64,
        ),
        (
            "ringgate_jwt_cache_misses_total",
            "Tokens verified (signature and claims), not found in a shard's cache.",
            |s: &ShardMetrics| s.jwt_cache_misses.get(),
        ),
    ] {
        family(&mut out, name, "counter", help);
        let total: u64 = shards.iter().map(pick).sum();
        let _ = writeln!(out, "{name} {total}");
    }
    family(
        &mut out,
        "ringgate_jwks_fetches_total",
        "counter",
        "JWKS URL fetches by provider and result (a failure keeps the last good keys).",
    );
    for (provider, ok, failed, _) in &extra.jwks {
        let provider = escape(provider);
        let _ = writeln!(
            out,
            "ringgate_jwks_fetches_total{{provider=\"{provider}\",result=\"ok\"}} {ok}"
        );
        let _ = writeln!(
            out,
            "ringgate_jwks_fetches_total{{provider=\"{provider}\",result=\"failed\"}} {failed}"
        );
    }
    family(
        &mut out,
        "ringgate_jwks_keys_loaded",
        "gauge",
        "1 once a provider's JWKS URL has been fetched (its routes answer 503 before).",
    );
    for (provider, _, _, loaded) in &extra.jwks {
        let _ = writeln!(
            out,
            "ringgate_jwks_keys_loaded{{provider=\"{}\"}} {}",
            escape(provider),
            u8::from(*loaded)
        );
    }
    family(
        &mut out,
        "ringgate_upstream_requests_total",
        "counter",
        "Response heads received from origins, by upstream, target and status code.",
    );
    for ((u, t, code), n) in &upstream {
        let _ = writeln!(
            out,
            "ringgate_upstream_requests_total{{upstream=\"{}\",target=\"{}\",code=\"{code}\"}} {n}",
            escape(u),
            escape(t)
        );
    }
    family(
        &mut out,
        "ringgate_upstream_target_up",
        "gauge",
        "1 while the target is healthy and not ejected.",
    );
    for (u, t, up) in &extra.targets_up {
        let _ = writeln!(
            out,
            "ringgate_upstream_target_up{{upstream=\"{}\",target=\"{}\"}} {}",
            escape(u),
            escape(t),
            u8::from(*up)
        );
    }
    family(
        &mut out,
        "ringgate_connections_active",
        "gauge",
        "Open client connections, by listener.",
    );
    for (l, n) in &active {
        let _ = writeln!(
            out,
            "ringgate_connections_active{{listener=\"{}\"}} {n}",
            escape(l)
        );
    }
    family(
        &mut out,
        "ringgate_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes, by listener.",
    );
    for (l, n) in &handshakes {
        let _ = writeln!(
            out,
            "ringgate_tls_handshakes_total{{listener=\"{}\"}} {n}",
            escape(l)
        );
    }
    family(
        &mut out,
        "ringgate_credential_injections_total",
        "counter",
        "Upstream credentials injected, by route, consumer (\"\": not a configured consumer) and secret name.",
    );
    for ((route, consumer, secret), n) in &injections {
        let _ = writeln!(
            out,
            "ringgate_credential_injections_total{{route=\"{}\",consumer=\"{}\",secret=\"{}\"}} {n}",
            escape(route),
            escape(consumer),
            escape(secret)
        );
    }
    family(
        &mut out,
        "ringgate_ratelimit_admitted_total",
        "counter",
        "Requests a rate-limit policy admitted.",
    );
    for (name, (admitted, _, _)) in &limits {
        let _ = writeln!(
            out,
            "ringgate_ratelimit_admitted_total{{policy=\"{}\"}} {admitted}",
            escape(name)
        );
    }
    family(
        &mut out,
        "ringgate_ratelimit_rejected_total",
        "counter",
        "Requests a rate-limit policy refused (429, or 503 while Redis is down with on_redis_down = \"closed\").",
    );
    for (name, (_, rejected, _)) in &limits {
        let _ = writeln!(
            out,
            "ringgate_ratelimit_rejected_total{{policy=\"{}\"}} {rejected}",
            escape(name)
        );
    }
    family(
        &mut out,
        "ringgate_ratelimit_keys",
        "gauge",
        "Keys with a cell, summed over shards (each shard holds at most max_keys).",
    );
    for (name, (_, _, keys)) in &limits {
        let _ = writeln!(
            out,
            "ringgate_ratelimit_keys{{policy=\"{}\"}} {keys}",
            escape(name)
        );
    }
    if let Some((up, nodes)) = extra.cluster {
        family(
            &mut out,
            "ringgate_ratelimit_redis_up",
            "gauge",
            "1 while the last sync of cluster rate limits with Redis succeeded.",
        );
        let _ = writeln!(out, "ringgate_ratelimit_redis_up {}", u8::from(up));
        family(
            &mut out,
            "ringgate_ratelimit_cluster_nodes",
            "gauge",
            "ringgate processes sharing the cluster limits, as Redis last counted them.",
        );
        let _ = writeln!(out, "ringgate_ratelimit_cluster_nodes {nodes}");
    }
    family(
        &mut out,
        "ringgate_ip_denied_total",
        "counter",
        "Refused by ip_allow/ip_deny: connections at a listener, requests on a route.",
    );
    for ((scope, name), n) in &ip_denied {
        let _ = writeln!(
            out,
            "ringgate_ip_denied_total{{scope=\"{scope}\",name=\"{}\"}} {n}",
            escape(name)
        );
    }
    family(
        &mut out,
        "ringgate_proxy_protocol_refused_total",
        "counter",
        "Connections closed on listeners with proxy_protocol = true for a missing, malformed or late PROXY header.",
    );
    for (l, n) in &proxy_refused {
        let _ = writeln!(
            out,
            "ringgate_proxy_protocol_refused_total{{listener=\"{}\"}} {n}",
            escape(l)
        );
    }
    family(
        &mut out,
        "ringgate_access_log_dropped_total",
        "counter",
        "Access-log lines dropped: the writer fell behind or the file was not writable (requests never wait).",
    );
    let dropped: u64 = shards.iter().map(|s| s.access_log_dropped.get()).sum();
    let _ = writeln!(
        out,
        "ringgate_access_log_dropped_total {}",
        dropped + extra.access_log_lost
    );
    family(
        &mut out,
        "ringgate_audit_log_dropped_total",
        "counter",
        "Audit-log lines dropped (writer behind, file not writable).",
    );
    let _ = writeln!(
        out,
        "ringgate_audit_log_dropped_total {}",
        extra.audit_log_lost
    );
    family(
        &mut out,
        "ringgate_config_reloads_total",
        "counter",
        "Config reloads, by result.",
    );
    let _ = writeln!(
        out,
        "ringgate_config_reloads_total{{result=\"ok\"}} {}",
        extra.reloads_ok
    );
    let _ = writeln!(
        out,
        "ringgate_config_reloads_total{{result=\"failed\"}} {}",
        extra.reloads_failed
    );
    family(
        &mut out,
        "ringgate_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    let _ = writeln!(
        out,
        "ringgate_build_info{{version=\"{}\"}} 1",
        escape(extra.version)
    );
    process_metrics(&mut out, extra.start_time_unix_s);
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn format_seconds(us: u64) -> String {
    let s = us as f64 / 1e6;
    format!("{s}")
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `process_*` as Prometheus client libraries export them (Linux `/proc`).
fn process_metrics(out: &mut String, start_time_unix_s: f64) {
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch.",
    );
    let _ = writeln!(out, "process_start_time_seconds {start_time_unix_s}");
    let page = 4096u64;
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    family(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let _ = writeln!(out, "process_resident_memory_bytes {}", rss_pages * page);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    family(out, "process_open_fds", "gauge", "Open file descriptors.");
    let _ = writeln!(out, "process_open_fds {fds}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_outside_the_table_count_under_their_class() {
        assert_eq!(code_label(code_slot(200)), "200");
        assert_eq!(code_label(code_slot(299)), "2xx");
        assert_eq!(code_label(code_slot(599)), "5xx");
        assert_eq!(code_label(code_slot(0)), "1xx");
        assert_eq!(code_label(code_slot(999)), "5xx");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let shards = [ShardMetrics::default(), ShardMetrics::default()];
        shards[0]
            .route("a")
            .count(200, Some(Duration::from_micros(80)));
        shards[1]
            .route("a")
            .count(0, Some(Duration::from_millis(3)));
        shards[1]
            .route("a")
            .count(503, Some(Duration::from_secs(20)));
        let text = render(
            &shards,
            &Extra {
                version: "t",
                reloads_ok: 0,
                reloads_failed: 0,
                targets_up: Vec::new(),
                start_time_unix_s: 1.0,
                access_log_lost: 0,
                audit_log_lost: 0,
                jwks: Vec::new(),
                cluster: None,
            },
        );
        assert!(
            text.contains("ringgate_requests_total{route=\"a\",code=\"499\"} 1"),
            "{text}"
        );
        assert!(text.contains("le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("ringgate_request_duration_seconds_count{route=\"a\"} 3"),
            "{text}"
        );
    }
}
