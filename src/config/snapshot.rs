//! The compiled config: what the data plane reads, immutable, shared by every shard through
//! an `Arc` and replaced whole by a reload. Built only by [`super::compile`].

use super::file::{Balance, Config};
use crate::route::{PathMatch, Router};
use crate::tls::{ClientTls, ServerTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The compiled, read-only config every shard shares through an `Arc`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub file: PathBuf,
    /// Legal but risky or useless settings (`check` shows them; `run` logs them).
    pub warnings: Vec<crate::config::Problem>,
    /// Where `admin.bind` is written, for bind failures at run time.
    pub admin_line: Option<usize>,
    pub workers: usize,
    pub pin_cores: bool,
    pub drain_timeout: Duration,
    pub io_uring_entries: u32,
    pub io_driver: super::IoDriver,
    pub listeners: Vec<ListenerSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub router: Arc<Router>,
    pub gossip_interval: Duration,
    pub admin: Option<SocketAddr>,
    /// `[admin] token`: the bearer token admin requests must carry (see `admin`).
    pub admin_token: Option<super::Secret>,
    /// `[access_log]`: where and how.
    pub access_log: Option<AccessLogSpec>,
    /// `[audit_log]`: where (always JSON lines).
    pub audit_log: Option<AccessLogSpec>,
    /// `[server] path_escaped_slashes = "keep"`: `%2F`, `%5C` and `;` pass through.
    pub keep_escaped_slashes: bool,
    /// Targets of all upstreams together.
    pub total_targets: usize,
    /// The file as parsed, defaults filled in: what admin `/config` shows (secrets redacted).
    pub source: Config,
    /// Consumers, API keys, JWT providers.
    pub auth: Arc<crate::auth::AuthSpec>,
    /// `[server] trusted_proxies`.
    pub trusted_proxies: Vec<crate::perimeter::Cidr>,
    /// `[rate_limits.NAME]`, in name order (routes refer to them by index).
    pub rate_limits: Vec<Arc<crate::limit::PolicySpec>>,
    /// `[cluster]`.
    pub cluster: Option<ClusterSpec>,
    /// `[server] hosts_file`, against the config's folder.
    pub hosts_file: Option<PathBuf>,
    /// Whether a reload may re-read `file` (not for a config made on the command line).
    pub reloadable: bool,
}

/// `[cluster]` compiled: the Redis URL (a secret: it may hold a password).
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub redis: super::Secret,
    /// The URL with any password redacted, for messages.
    pub shown: String,
    pub sync_interval: Duration,
    pub on_redis_down: super::RedisDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    /// A file path (resolved against the config's folder), or `None` for stdout.
    pub file: Option<PathBuf>,
    pub format: super::file::AccessLogFormat,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub limits: EffectiveLimits,
    /// Where `bind` is written, for bind failures reported after validation.
    pub bind_line: Option<usize>,
    pub tls: Option<Arc<ServerTls>>,
    /// Plain listener that answers everything with 308 to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// `x_forwarded_for = "replace"`: the client's own `X-Forwarded-For` is dropped.
    pub replace_x_forwarded_for: bool,
    /// `ip_allow` / `ip_deny`, checked at accept (after the PROXY header when there is one).
    pub ip_rules: crate::perimeter::IpRules,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// `[limits]` merged with a listener's overrides, in the units the data plane uses.
#[derive(Debug, Clone, Copy)]
pub struct EffectiveLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub balance: Balance,
    pub targets: Vec<TargetSpec>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_idle_connections: usize,
    pub idle_timeout: Duration,
    pub tls: Option<Arc<ClientTls>>,
    pub health: Option<HealthSpec>,
    pub passive: PassiveSpec,
    pub panic_mode: bool,
    pub max_requests: usize,
    pub max_pending: usize,
    pub retry_budget_percent: u32,
    pub retry_budget_min: u32,
    pub hash_key: Option<HashKey>,
    /// The consistent-hash ring: (point, target), sorted by point.
    pub ring: Vec<(u64, usize)>,
    pub sticky: Option<StickySpec>,
    pub slow_start: Option<Duration>,
    /// How connections to the targets are made (TLS settings): a reload keeps a target's
    /// pooled connections only when this is unchanged.
    pub connection_key: String,
    /// How often its host-name targets are looked up again (`None`: every target is an IP).
    pub resolve_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    ClientIp,
}

#[derive(Debug, Clone)]
pub struct StickySpec {
    pub cookie: String,
    pub max_age_secs: u64,
    /// The opaque cookie value of each target (a hash of its address).
    pub ids: Vec<String>,
    /// The key the ids are made with; a generated one is carried over by a reload so
    /// clients stay stuck (see [`super::reload`]).
    pub key: super::Secret,
    pub generated_key: bool,
}

/// FNV-1a, then a final avalanche: stable across processes and restarts (sticky cookies and
/// the hash ring must agree between shards and gateway instances).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expected: std::ops::RangeInclusive<u16>,
    pub jitter: Duration,
}

#[derive(Debug, Clone)]
pub struct PassiveSpec {
    /// 0: passive detection off.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub on_5xx: bool,
}

/// Which failures a route retries.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub status_502: bool,
    pub status_503: bool,
    pub status_504: bool,
}

#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// As written in the config (`host:port`).
    pub label: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Written as a host name (looked up again every `resolve_interval`).
    pub host_name: bool,
    /// Its gossip slot and health-view index: stable for the same upstream name and target
    /// across reloads (see [`super::reload::SlotMap`]).
    pub slot: usize,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub host: Option<String>,
    pub path: PathMatch,
    pub action: RouteAction,
    pub strip_prefix: bool,
    pub host_rewrite: Option<String>,
    pub request_headers: CompiledTransform,
    pub response_headers: CompiledTransform,
    /// `response_headers` plus `strict-transport-security` when the route sets `hsts`: what
    /// responses over TLS get (HSTS over plain HTTP is meaningless, RFC 6797 §7.2).
    pub response_headers_tls: CompiledTransform,
    pub retries: u32,
    pub retry_on: RetryOn,
    pub per_try_timeout: Option<Duration>,
    pub retry_non_idempotent: bool,
    /// Lower-case protocol names a 101 may switch to.
    pub upgrade_protocols: Vec<String>,
    pub tunnel_idle_timeout: Option<Duration>,
    pub tunnel_max_duration: Duration,
    /// `auth`, `require_roles`, `require_scopes`: `None` for a public route.
    pub auth: Option<Arc<crate::auth::RouteAuth>>,
    /// `ip_allow` / `ip_deny` on the client address (empty: no check).
    pub ip_rules: crate::perimeter::IpRules,
    /// Upstream credentials to inject (the route's and its upstream's).
    pub injections: Option<Arc<crate::perimeter::inject::Injections>>,
    /// `validate = {...}`.
    pub validate: Option<Arc<crate::perimeter::validate::Validation>>,
    /// Indices into [`Snapshot::rate_limits`]; all must admit.
    pub rate_limits: Vec<usize>,
}

impl RouteSpec {
    /// Whether `protocol` (an `Upgrade` element, `name/version` allowed) may be tunnelled.
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        let name = protocol
            .split(|&b| b == b'/')
            .next()
            .unwrap_or(protocol)
            .trim_ascii();
        self.upgrade_protocols
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(name))
    }
}

impl RouteSpec {
    pub fn response_edits(&self, tls: bool) -> &CompiledTransform {
        if tls {
            &self.response_headers_tls
        } else {
            &self.response_headers
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy {
        upstream: usize,
    },
    Direct {
        status: u16,
        content_type: String,
        body: String,
    },
}

/// Header edits ready for the hot path: lower-case names to drop (including every name `add`
/// sets, so `add` replaces) and the added lines already serialised.
#[derive(Debug, Clone, Default)]
pub struct CompiledTransform {
    pub remove: Vec<String>,
    pub add: Vec<u8>,
    /// Query parameters the gateway injects upstream: dropped from the URLs of an origin's
    /// `Location` and `Content-Location` (an origin redirecting to its own URL would hand
    /// the credential to the client).
    pub redact_query: Vec<String>,
}

impl CompiledTransform {
    /// Whether a field named `name` (any case) is dropped.
    pub fn removes(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}
