//! Operator-facing output: the gateway's own log lines ([`log`]: start-up, reloads, target
//! state changes; never per request, and never written in place by a shard). Per-exchange
//! records and per-shard counters in [`exchange`]; Prometheus metrics in [`metrics`].

pub mod access_log;
pub mod audit;
pub mod exchange;
pub mod log;
pub mod metrics;

pub use exchange::{ExchangeRecord, ShardStats};

/// One `INFO` line of the gateway's own log (see [`log`]).
pub fn info(message: &str) {
    log::line(log::Level::Info, message);
}

/// One `WARN` line of the gateway's own log (see [`log`]).
pub fn warn(message: &str) {
    log::line(log::Level::Warn, message);
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
