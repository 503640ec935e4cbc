//! The one exit of every exchange: an [`ExchangeRecord`] filled as the exchange goes and
//! handed to [`ShardStats::record`] exactly once, on every path (answered, refused by the
//! gateway, failed upstream, client gone, upgraded). Per-shard counters live in atomics that
//! only their shard writes (`Relaxed`, no contention) and the admin thread reads for
//! `/shards`. Metrics, the access log and the audit log will hang off the same record.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// What one exchange did, for observers. Indices refer to the config the exchange pinned.
#[derive(Debug, Clone)]
pub struct ExchangeRecord {
    // Facts of the connection, set once when it opens.
    /// The listener's name.
    pub listener: Rc<str>,
    pub client_ip: IpAddr,
    pub tls: bool,

    // Facts of the exchange, reset by `begin`.
    /// A request head was read (otherwise there is nothing to record).
    pub started: bool,
    /// When the request head was complete.
    pub start: Option<Instant>,
    pub request_id: [u8; 128],
    pub request_id_len: u8,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    pub target: Option<usize>,
    /// The status the client got (0 when it got none: it left, or the connection broke).
    pub status: u16,
    /// Set when the gateway answered itself (`Reject::kind`).
    pub reject_kind: Option<&'static str>,
    /// From sending the request to the origin until its response head arrived.
    pub upstream_head_time: Option<Duration>,
    /// Request bytes read from the client (head and body; a tunnel's bytes too).
    pub bytes_in: u64,
    /// Response bytes written to the client.
    pub bytes_out: u64,
    /// When the exchange ended (its record was handed over).
    pub end: Option<Instant>,
    /// Who the caller is, once authenticated (its consumer name is logged).
    pub identity: Option<std::sync::Arc<crate::auth::Identity>>,
    /// Room for the cache stage: `HIT`, `MISS`, `BYPASS`.
    pub cache: Option<&'static str>,
    /// Method, host and path as the request sent them (after normalisation), kept for the
    /// access log only when it is on: one buffer per connection, reused.
    request_text: Vec<u8>,
    method_len: usize,
    host_len: usize,
    /// The route's metric series (`None`: no route matched).
    pub route_metrics: Option<std::sync::Arc<super::metrics::RouteMetrics>>,
    /// The client connection's byte counters when the exchange began.
    pub counters_at_start: (u64, u64),
}

impl ExchangeRecord {
    pub fn new(listener: Rc<str>, client_ip: IpAddr, tls: bool) -> ExchangeRecord {
        ExchangeRecord {
            listener,
            client_ip,
            tls,
            started: false,
            start: None,
            request_id: [0; 128],
            request_id_len: 0,
            route: None,
            upstream: None,
            target: None,
            status: 0,
            reject_kind: None,
            upstream_head_time: None,
            bytes_in: 0,
            bytes_out: 0,
            end: None,
            identity: None,
            cache: None,
            route_metrics: None,
            request_text: Vec::new(),
            method_len: 0,
            host_len: 0,
            counters_at_start: (0, 0),
        }
    }

    /// Starts the next exchange on the connection: `counters` are the connection's bytes
    /// (consumed, written) so far.
    pub fn begin(&mut self, counters: (u64, u64)) {
        self.started = true;
        self.start = Some(Instant::now());
        self.request_id_len = 0;
        self.route = None;
        self.upstream = None;
        self.target = None;
        self.status = 0;
        self.reject_kind = None;
        self.upstream_head_time = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.end = None;
        self.identity = None;
        self.cache = None;
        self.route_metrics = None;
        self.request_text.clear();
        self.method_len = 0;
        self.host_len = 0;
        self.counters_at_start = counters;
    }

    /// No exchange in progress (the connection waits for, or never sent, a request).
    pub fn idle(&mut self) {
        self.started = false;
    }

    /// Keeps method, host and path for the access log (the head's bytes do not outlive the
    /// exchange). A path longer than 2 KiB is cut there.
    pub fn capture_request(&mut self, method: &[u8], host: &[u8], path: &[u8]) {
        const MAX_PATH: usize = 2048;
        self.request_text.clear();
        self.request_text.extend_from_slice(method);
        self.request_text.extend_from_slice(host);
        self.request_text
            .extend_from_slice(&path[..path.len().min(MAX_PATH)]);
        self.method_len = method.len();
        self.host_len = host.len();
    }

    /// (method, host, path) as captured (empty when not).
    pub fn request_parts(&self) -> (&[u8], &[u8], &[u8]) {
        let t = &self.request_text;
        let (method, rest) = t.split_at(self.method_len.min(t.len()));
        let (host, path) = rest.split_at(self.host_len.min(rest.len()));
        (method, host, path)
    }

    pub fn set_request_id(&mut self, id: &[u8]) {
        let n = id.len().min(self.request_id.len());
        self.request_id[..n].copy_from_slice(&id[..n]);
        self.request_id_len = n as u8;
    }

    pub fn request_id(&self) -> &[u8] {
        &self.request_id[..usize::from(self.request_id_len)]
    }

    /// Closes the record: the byte counts from the connection's counters now.
    pub fn finish(&mut self, counters: (u64, u64)) {
        self.end = Some(Instant::now());
        self.bytes_in = counters.0.saturating_sub(self.counters_at_start.0);
        self.bytes_out = counters.1.saturating_sub(self.counters_at_start.1);
    }

    /// How long the exchange took, head complete to end.
    pub fn duration(&self) -> Option<Duration> {
        Some(self.end?.saturating_duration_since(self.start?))
    }
}

/// Counters of one shard, written only by that shard.
#[derive(Default)]
pub struct ShardStats {
    /// 0 before start, 1 io_uring, 2 epoll.
    pub driver: std::sync::atomic::AtomicU8,
    pub open_connections: AtomicU64,
    pub exchanges: AtomicU64,
    /// Responses by class: 1xx .. 5xx; index 0 counts exchanges that got no response.
    pub by_class: [AtomicU64; 6],
    /// Answers the gateway gave itself (a `Reject`), of any status.
    pub gateway_answers: AtomicU64,
    /// The config generation this shard serves new exchanges with.
    pub config_generation: AtomicU64,
    /// Request bytes read from clients and response bytes written to them.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

pub const DRIVER_IO_URING: u8 = 1;
pub const DRIVER_EPOLL: u8 = 2;

impl ShardStats {
    /// The one exit: called once per exchange that read a request head.
    pub fn record(&self, record: &ExchangeRecord) {
        if !record.started {
            return;
        }
        bump(&self.exchanges);
        let class = usize::from(record.status / 100).min(5);
        bump(&self.by_class[class]);
        if record.reject_kind.is_some() {
            bump(&self.gateway_answers);
        }
        add(&self.bytes_in, record.bytes_in);
        add(&self.bytes_out, record.bytes_out);
    }

    pub fn set_open_connections(&self, n: usize) {
        self.open_connections.store(n as u64, Relaxed);
    }

    /// `{"shard":0,"driver":"io_uring",...}` for `/shards`; `inbox_depth` is how many
    /// commands wait for the shard's next tick.
    pub fn json(&self, shard: usize, inbox_depth: usize) -> String {
        let driver = match self.driver.load(Relaxed) {
            DRIVER_IO_URING => "io_uring",
            DRIVER_EPOLL => "epoll",
            _ => "starting",
        };
        let c = |i: usize| self.by_class[i].load(Relaxed);
        format!(
            r#"{{"shard":{shard},"driver":"{driver}","open_connections":{},"exchanges":{},"responses":{{"1xx":{},"2xx":{},"3xx":{},"4xx":{},"5xx":{},"none":{}}},"gateway_answers":{},"bytes_in":{},"bytes_out":{},"config_generation":{},"inbox_depth":{inbox_depth}}}"#,
            self.open_connections.load(Relaxed),
            self.exchanges.load(Relaxed),
            c(1),
            c(2),
            c(3),
            c(4),
            c(5),
            c(0),
            self.gateway_answers.load(Relaxed),
            self.bytes_in.load(Relaxed),
            self.bytes_out.load(Relaxed),
            self.config_generation.load(Relaxed),
        )
    }
}

/// Only the owning shard writes: a load and a store, no read-modify-write needed.
fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_counts_once_by_class() {
        let stats = ShardStats::default();
        let mut r = ExchangeRecord::new("main".into(), IpAddr::from([127, 0, 0, 1]), false);
        stats.record(&r); // no request head: nothing
        r.begin((0, 0));
        r.status = 404;
        r.reject_kind = Some("no_route");
        r.finish((100, 150));
        stats.record(&r);
        r.begin((100, 150));
        r.status = 200;
        r.finish((160, 1150));
        assert_eq!((r.bytes_in, r.bytes_out), (60, 1000));
        assert!(r.duration().is_some());
        stats.record(&r);
        r.begin((160, 1150)); // client left before any response
        r.finish((160, 1150));
        stats.record(&r);
        let json = stats.json(3, 0);
        assert!(json.contains(r#""exchanges":3"#), "{json}");
        assert!(
            json.contains(r#""2xx":1"#) && json.contains(r#""4xx":1"#),
            "{json}"
        );
        assert!(
            json.contains(r#""none":1"#) && json.contains(r#""gateway_answers":1"#),
            "{json}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["shard"], 3);
        assert_eq!(
            (parsed["bytes_in"].as_u64(), parsed["bytes_out"].as_u64()),
            (Some(160), Some(1150))
        );
    }
}
