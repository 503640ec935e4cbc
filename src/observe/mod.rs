//! Operator-facing output. For now: start-up and shutdown lines on stderr, written only from
//! the control thread or at shard start/stop, never per request (a full pipe must not stall a
//! shard). Per-exchange records and per-shard counters in [`exchange`]; Prometheus metrics in
//! [`metrics`].

pub mod access_log;
pub mod audit;
pub mod exchange;
pub mod metrics;

pub use exchange::{ExchangeRecord, ShardStats};

/// One line on stderr, prefixed with the program name.
pub fn info(message: &str) {
    eprintln!("ringgate: {message}");
}

pub fn warn(message: &str) {
    eprintln!("ringgate: WARNING {message}");
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
