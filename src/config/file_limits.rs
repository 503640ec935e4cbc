//! The serde contract of rate limits (DESIGN.md §4b): `[rate_limits.NAME]` and `[cluster]`.
//! Plain data; [`super::compile`] checks it.

use super::units::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[rate_limits.NAME]`: a policy routes list in `rate_limits = [...]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What is counted: `"consumer"` (requests without one share a bucket), `"ip"` (the
    /// client address), `"route"` (everyone on the route together) or `"header:NAME"`
    /// (requests without the header share a bucket).
    pub key: String,
    /// Requests per `period` (GCRA, or the quota of a fixed window).
    pub rate: Option<u64>,
    #[serde(default = "default_period")]
    pub period: ConfigDuration,
    /// GCRA: requests allowed at once on top of the rate.
    #[serde(default)]
    pub burst: u64,
    /// `"gcra"` (default) or `"fixed_window"` (quotas: windows aligned to UTC).
    #[serde(default)]
    pub algorithm: LimitAlgorithm,
    /// Instead of `rate`: at most this many requests in flight per key.
    pub concurrency: Option<u64>,
    /// `"shard"`, `"global"` (the whole process) or `"cluster"` (every node on `[cluster]`).
    #[serde(default)]
    pub scope: LimitScope,
    /// Keys each shard keeps a cell for; the least recently seen key at rest makes room.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// `RateLimit` / `RateLimit-Policy` on responses (429s carry `Retry-After` regardless).
    #[serde(default = "default_headers")]
    pub headers: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitAlgorithm {
    #[default]
    Gcra,
    FixedWindow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Shard,
    Global,
    Cluster,
}

/// `[cluster]`: what several ringgate processes share (cluster rate limits, through Redis).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`, or `env:NAME` / `file:PATH` holding such a URL (the way to
    /// give a password: `redis://:PASSWORD@HOST:PORT`). Shown with any password redacted.
    #[serde(serialize_with = "without_password")]
    pub redis: String,
    /// How often usage goes to Redis and the cluster's comes back. Shards never wait for it.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: ConfigDuration,
    /// While Redis cannot be reached: `"local"` (each node enforces its share: the rate
    /// divided by the nodes last seen), `"open"` (admit) or `"closed"` (refuse with 503).
    #[serde(default)]
    pub on_redis_down: RedisDown,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisDown {
    #[default]
    Local,
    Open,
    Closed,
}

/// A Redis URL as `/config` shows it: `user:password@` becomes `<redacted>@`.
fn without_password<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            s.serialize_str(&format!("{}<redacted>{}", &url[..scheme + 3], &url[at..]))
        }
        _ => s.serialize_str(url),
    }
}

fn default_period() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

fn default_max_keys() -> usize {
    100_000
}

fn default_headers() -> bool {
    true
}

fn default_sync_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(100))
}
