//! The one exit of every exchange: an [`ExchangeRecord`] filled as the exchange goes and
//! handed to [`ShardStats::record`] exactly once, on every path (answered, refused by the
//! gateway, failed upstream, client gone, upgraded). Per-shard counters live in atomics that
//! only their shard writes (`Relaxed`, no contention) and the admin thread reads for
//! `/shards`. Metrics, the access log and the audit log will hang off the same record.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// What one exchange did, for observers. Indices refer to the shard's pinned snapshot.
#[derive(Debug, Clone, Default)]
pub struct ExchangeRecord {
    /// A request head was read (otherwise there is nothing to record).
    pub started: bool,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    pub target: Option<usize>,
    /// The status the client got (0 when it got none: it left, or the connection broke).
    pub status: u16,
    /// Set when the gateway answered itself (`Reject::kind`).
    pub reject_kind: Option<&'static str>,
}

impl ExchangeRecord {
    pub fn begin(&mut self) {
        *self = ExchangeRecord {
            started: true,
            ..ExchangeRecord::default()
        };
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
            r#"{{"shard":{shard},"driver":"{driver}","open_connections":{},"exchanges":{},"responses":{{"1xx":{},"2xx":{},"3xx":{},"4xx":{},"5xx":{},"none":{}}},"gateway_answers":{},"config_generation":{},"inbox_depth":{inbox_depth}}}"#,
            self.open_connections.load(Relaxed),
            self.exchanges.load(Relaxed),
            c(1),
            c(2),
            c(3),
            c(4),
            c(5),
            c(0),
            self.gateway_answers.load(Relaxed),
            self.config_generation.load(Relaxed),
        )
    }
}

/// Only the owning shard writes: a load and a store, no read-modify-write needed.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_counts_once_by_class() {
        let stats = ShardStats::default();
        let mut r = ExchangeRecord::default();
        stats.record(&r); // no request head: nothing
        r.begin();
        r.status = 404;
        r.reject_kind = Some("no_route");
        stats.record(&r);
        r.begin();
        r.status = 200;
        stats.record(&r);
        r.begin(); // client left before any response
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
    }
}
