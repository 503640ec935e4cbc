//! The serde contract: the config file's struct tree as users write it (DESIGN.md §4, §4b),
//! with its defaults, `deny_unknown_fields` everywhere, and secrets serialized redacted. Plain
//! data: the compiler ([`super::compile`]) checks it and turns it into a [`super::Snapshot`].

use super::secret;
use super::units::{ByteSize, ConfigDuration};
use serde::{Deserialize, Deserializer, Serialize, de};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Defaults for every listener; a listener may override single fields.
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The admin listener (`/healthz`, `/metrics`, `/reload`, ...); off unless given.
    pub admin: Option<AdminConfig>,
    /// One line per exchange; off unless given.
    pub access_log: Option<AccessLogConfig>,
    /// Security events (reloads, admin actions, auth denials); off unless given.
    pub audit_log: Option<AuditLogConfig>,
    /// Who calls the APIs: names, roles, API keys (hashed).
    #[serde(default)]
    pub consumers: Vec<super::ConsumerConfig>,
    /// Where API keys may be presented.
    #[serde(default)]
    pub api_keys: super::ApiKeysConfig,
    /// JWT providers by name (`auth = ["jwt:NAME"]` on a route).
    #[serde(default)]
    pub jwt: BTreeMap<String, super::JwtProviderConfig>,
    /// Rate-limit and quota policies by name (`rate_limits = [...]` on a route).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, super::RateLimitConfig>,
    /// Shared with other ringgate processes (`scope = "cluster"` limits).
    pub cluster: Option<super::ClusterConfig>,
}

/// `[audit_log]`: JSON lines, written off the shards like the access log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogConfig {
    /// A file (relative to this config's folder; reopened on SIGUSR1 and on reload), or
    /// `"stdout"`.
    pub path: String,
}

/// `[access_log]`: one line per exchange, written off the shards (a shard never waits on the
/// disk: when the writer falls behind, lines are dropped and counted, never requests).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file (relative to this config's folder; reopened on SIGUSR1 and on reload), or
    /// `"stdout"`.
    pub path: String,
    #[serde(default)]
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object a line (DESIGN.md §4b fields).
    #[default]
    Json,
    /// nginx's `combined` (referer and user agent are not recorded: `"-"`).
    Combined,
}

/// `[admin]`: a small HTTP listener for operators, on its own thread (never on a shard).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `IP:PORT`; keep it on loopback or a private network.
    pub bind: String,
    /// `"env:NAME"` or `"file:PATH"`: required as `Authorization: Bearer <token>` on POST
    /// endpoints, and on every endpoint when `bind` is not a loopback address (where it is
    /// then mandatory).
    #[serde(serialize_with = "redacted")]
    pub token: Option<String>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `"auto"` (one shard per available core) or a number of shards.
    #[serde(default)]
    pub workers: Workers,
    /// Pin shard i to core i.
    #[serde(default = "default_true")]
    pub pin_cores: bool,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    /// io_uring submission queue size per shard.
    #[serde(default = "default_io_uring_entries")]
    pub io_uring_entries: u32,
    /// `"auto"`: io_uring when the kernel allows it, else epoll (logged). `"epoll"`: always
    /// epoll (e.g. where io_uring is known to be blocked, or to compare the two).
    #[serde(default)]
    pub io_driver: IoDriver,
    /// How often each shard reads news from the others (backend state); the propagation
    /// bound is about two of these.
    #[serde(default = "default_gossip_interval")]
    pub gossip_interval: ConfigDuration,
    /// `%2F` (`/`), `%5C` (`\\`) and `;` in a path: `"reject"` (default, 400) or `"keep"`
    /// (forwarded as sent, for origins that give them meaning). Rejecting them is what makes
    /// a narrower route a boundary an origin cannot be tricked past.
    #[serde(default)]
    pub path_escaped_slashes: EscapedSlashes,
    /// CIDRs of the proxies in front (load balancers, CDNs): only their `X-Forwarded-For`
    /// is believed, read right to left. Empty: the peer is always the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The gateway's own log lines on stderr: `"text"` (`TIME LEVEL message`) or `"json"`
    /// (one object a line: `time`, `level`, `message`). Applies from the next line after a
    /// reload.
    #[serde(default)]
    pub log_format: LogFormat,
    /// An `/etc/hosts`-format file consulted before the system resolver for targets given
    /// as host names (read again at every lookup): names a deployment pins, or a test's.
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Keep,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    #[default]
    Auto,
    Epoll,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: Workers::Auto,
            pin_cores: true,
            drain_timeout: default_drain_timeout(),
            io_uring_entries: default_io_uring_entries(),
            io_driver: IoDriver::Auto,
            gossip_interval: default_gossip_interval(),
            path_escaped_slashes: EscapedSlashes::Reject,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Text,
            hosts_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// A secret reference shows only that it is set: `/config` and logs never carry it.
pub(super) fn redacted<S: serde::Serializer>(
    value: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(secret::REDACTED),
        None => s.serialize_none(),
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a number of workers")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                match usize::try_from(v) {
                    Ok(n) if (1..=1024).contains(&n) => Ok(Workers::Count(n)),
                    _ => Err(E::custom(format!(
                        "workers must be \"auto\" or between 1 and 1024, got {v}"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom(format!(
                        "workers must be \"auto\" or a number, got {v:?}"
                    )))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[limits]`: bounds on everything a client controls.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Whole request head (request line + headers); beyond it: 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Number of header fields; beyond it: 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request-target length; beyond it: 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: ByteSize,
    /// Request body; beyond it: 413 (up front from Content-Length, or mid-stream when chunked).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// From the first byte of a request until its head is complete; beyond it: 408 and close.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// How long a keep-alive client connection may sit between requests, and how long a
    /// request body may stall between reads.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Longest wait for one write to a client (or of a request body to an origin) to make
    /// progress: a peer that stops reading is cut off after it.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: ConfigDuration,
    /// From the end of a request head until its whole body has arrived; beyond it: 408. Bounds
    /// a client that trickles a body one byte per `idle_timeout`.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: ConfigDuration,
    /// Open client connections per shard; beyond it new connections are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open client connections from one IP address per shard (SO_REUSEPORT spreads one
    /// client's connections over the shards, so the whole gateway allows about this times
    /// `workers`); beyond it new connections from that address are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_bytes: default_max_body_bytes(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            send_timeout: default_send_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

/// A listener's partial override of `[limits]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub max_header_bytes: Option<ByteSize>,
    pub max_headers: Option<usize>,
    pub max_uri_bytes: Option<ByteSize>,
    pub max_body_bytes: Option<ByteSize>,
    pub header_read_timeout: Option<ConfigDuration>,
    pub idle_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    pub body_read_timeout: Option<ConfigDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
}

impl Limits {
    pub fn with_override(&self, o: &LimitsOverride) -> Limits {
        Limits {
            max_header_bytes: o.max_header_bytes.unwrap_or(self.max_header_bytes),
            max_headers: o.max_headers.unwrap_or(self.max_headers),
            max_uri_bytes: o.max_uri_bytes.unwrap_or(self.max_uri_bytes),
            max_body_bytes: o.max_body_bytes.unwrap_or(self.max_body_bytes),
            header_read_timeout: o.header_read_timeout.unwrap_or(self.header_read_timeout),
            idle_timeout: o.idle_timeout.unwrap_or(self.idle_timeout),
            send_timeout: o.send_timeout.unwrap_or(self.send_timeout),
            body_read_timeout: o.body_read_timeout.unwrap_or(self.body_read_timeout),
            max_connections: o.max_connections.unwrap_or(self.max_connections),
            max_connections_per_ip: o
                .max_connections_per_ip
                .unwrap_or(self.max_connections_per_ip),
        }
    }
}

/// `[[listeners]]`: an address clients connect to. Every shard binds it with SO_REUSEPORT.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `IP:PORT`, e.g. `"0.0.0.0:8080"` or `"[::1]:8080"`.
    pub bind: String,
    #[serde(default)]
    pub limits: LimitsOverride,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsConfig>,
    /// Answer every request on this (plain) listener with `308` to the same host and path
    /// over HTTPS: `redirect_https = {}` (port 443) or `redirect_https = { port = 8443 }`.
    pub redirect_https: Option<RedirectHttps>,
    /// `"append"` (default): the client's `X-Forwarded-For` is kept and its address appended.
    /// `"replace"`: only the client's address is sent (for listeners facing the internet
    /// directly, where a client's own list is never true).
    #[serde(default)]
    pub x_forwarded_for: XForwardedFor,
    /// CIDRs allowed to connect (empty: everyone), checked at accept, before any TLS (on a
    /// `proxy_protocol` listener: right after the PROXY header, still before TLS).
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// CIDRs refused at accept (deny wins over allow).
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Every connection must start with a PROXY protocol header (v1 or v2, before TLS), read
    /// within `header_read_timeout`; the client address is the one it carries, and
    /// `ip_allow` / `ip_deny` apply to that address. Only for listeners that nothing but the
    /// balancer can reach: anyone who can connect can claim any address.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XForwardedFor {
    #[default]
    Append,
    Replace,
}

/// `[listeners.tls]`: certificates, versions and client authentication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain + key pairs (RSA, ECDSA or Ed25519). Each serves the DNS names in
    /// its certificate (subjectAltName, else CN; `*.x` wildcards too); the first one is the
    /// default for clients without SNI or with a name no certificate serves.
    pub certificates: Vec<CertificateConfig>,
    /// Oldest protocol accepted: `"1.2"` (default) or `"1.3"`. Older ones are always refused.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// PEM bundle of CAs that sign client certificates: turns on mTLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (default; no certificate, no connection) or `"optional"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// A handshake not finished within this is dropped.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttps {
    /// The HTTPS port in the `Location` (omitted when 443).
    #[serde(default = "default_https_port")]
    pub port: u16,
}

/// `hsts` on a route: `Strict-Transport-Security` on its responses over TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    pub max_age: ConfigDuration,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

/// `[[upstreams]]`: a named group of origin servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    /// Headers set on every request to this upstream from a secret (see routes).
    #[serde(default)]
    pub inject_headers: BTreeMap<String, super::InjectConfig>,
    /// Query parameters set on every request to this upstream from a secret.
    #[serde(default)]
    pub inject_query: BTreeMap<String, super::InjectConfig>,
    #[serde(default)]
    pub balance: Balance,
    /// TCP connect to a target; beyond it: 502.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// From the request being sent until the response head has arrived; beyond it: 504.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: ConfigDuration,
    /// Idle keep-alive connections kept per target per shard.
    #[serde(default = "default_max_idle_connections")]
    pub max_idle_connections: usize,
    /// An idle pooled connection older than this is closed instead of reused.
    #[serde(default = "default_upstream_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Speak TLS to the targets (certificate verification on unless `tls_verify = false`).
    #[serde(default)]
    pub tls: bool,
    /// Name sent as SNI and verified against the origin's certificate (default: the first
    /// target's host).
    pub tls_server_name: Option<String>,
    /// PEM bundle of CAs trusted for the origins (default: the Mozilla roots, webpki-roots).
    pub tls_ca_file: Option<PathBuf>,
    /// `false` accepts any origin certificate: only for testing against self-signed origins.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Active health checks (off unless this table is present).
    pub health: Option<HealthConfig>,
    /// Passive outlier detection (on by default).
    #[serde(default)]
    pub passive: PassiveConfig,
    /// When every target is down: `false` (default) answers 503; `true` spreads traffic over
    /// all targets anyway (Envoy's panic mode), betting that some still work.
    #[serde(default)]
    pub panic_mode: bool,
    /// Requests in flight to this upstream per shard; beyond it: 503 at once.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Connections being opened to this upstream per shard; beyond it: 503 at once.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Retries allowed per shard: at most `percent` of the requests of the last 10 s, plus
    /// `min_per_10s`, so a failing origin cannot multiply its load.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// The key `consistent_hash` hashes: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    pub hash_key: Option<String>,
    /// Sticky sessions: the first response sets a cookie naming (opaquely) the target that
    /// answered; later requests carrying it go there while it is healthy.
    pub sticky: Option<StickyConfig>,
    /// A target that comes back (health check passed, ejection over) gets a share of its
    /// picks that ramps linearly from 10 % to 100 % over this time. Off unless set.
    pub slow_start: Option<ConfigDuration>,
    /// How often targets given as host names are looked up again (off the shards); a new
    /// address takes the target's place and the old one's pooled connections are closed.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    #[serde(default = "default_sticky_ttl")]
    pub ttl: ConfigDuration,
    /// `"env:NAME"` or `"file:PATH"`: the key the cookie values are derived with (HMAC), so
    /// they reveal nothing about target addresses. Give every gateway of a deployment the
    /// same secret so cookies work across them and across restarts; without one, a random
    /// key is made at start (cookies then last one process; a reload keeps it).
    #[serde(serialize_with = "redacted")]
    pub secret: Option<String>,
}

/// `[upstreams.health]`: each target is probed by exactly one shard; changes are gossiped.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: ConfigDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that pass, as `"200-399"` or `"200"`.
    #[serde(default = "default_expected_status")]
    pub expected_status: String,
    /// Each probe waits `interval` plus up to this much random delay, so probes spread out.
    #[serde(default = "default_health_jitter")]
    pub jitter: ConfigDuration,
}

/// `[upstreams.passive]`: ejection after consecutive failures seen by a shard.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Consecutive connect errors, resets and timeouts (and 5xx with `on_5xx`); 0 disables.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection; doubles on each repeat, up to `max_ejection_time`.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: ConfigDuration,
    #[serde(default = "default_max_ejection_time")]
    pub max_ejection_time: ConfigDuration,
    /// Never more than this share of the upstream's targets ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Count 5xx responses from the origin as failures too.
    #[serde(default)]
    pub on_5xx: bool,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            consecutive_failures: default_consecutive_failures(),
            ejection_time: default_ejection_time(),
            max_ejection_time: default_max_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
            on_5xx: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_retry_percent")]
    pub percent: u32,
    #[serde(default = "default_retry_min")]
    pub min_per_10s: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: default_retry_percent(),
            min_per_10s: default_retry_min(),
        }
    }
}

/// A target: `"host:port"` or `{ addr = "host:port", weight = 2 }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TargetConfig {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

impl TargetConfig {
    pub fn addr(&self) -> &str {
        match self {
            TargetConfig::Addr(a) | TargetConfig::Weighted { addr: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Addr(_) => 1,
            TargetConfig::Weighted { weight, .. } => *weight,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm).
    Weighted,
    /// Uniformly random (per-shard xorshift).
    Random,
    /// Fewest requests in flight on this shard (ties: round robin).
    LeastConn,
    /// Power of two random choices over (EWMA latency x (in flight + 1)).
    P2cEwma,
    /// A hash ring over `hash_key`: adding or removing a target moves about 1/N of the keys.
    ConsistentHash,
}

impl Balance {
    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::Random => "random",
            Balance::LeastConn => "least_conn",
            Balance::P2cEwma => "p2c_ewma",
            Balance::ConsistentHash => "consistent_hash",
        }
    }
}

/// `[[routes]]`: which requests go where.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Exact host (`"api.example.com"`) or wildcard (`"*.example.com"`); the port is ignored.
    pub host: Option<String>,
    /// Exact path match.
    pub path: Option<String>,
    /// Segment-aware prefix match; the longest prefix wins.
    pub path_prefix: Option<String>,
    /// Allow-list; `GET` also allows `HEAD`. Other methods get 405 with `Allow`.
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub direct_response: Option<DirectResponse>,
    /// Remove the matched `path_prefix` before forwarding (the whole path leaves `/`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the `Host` sent upstream (the client's is kept by default).
    pub host_rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderTransform,
    #[serde(default)]
    pub response_headers: HeaderTransform,
    /// `hsts = { max_age = "365d", include_subdomains = true }`: sent on TLS listeners only.
    pub hsts: Option<HstsConfig>,
    /// Extra tries, each on a different target, for failures listed in `retry_on`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `"connect-failure"`, `"reset"` (closed before any response byte), `"timeout"`,
    /// `"502"`, `"503"`, `"504"`.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Time for each try's response head (default: the upstream's `response_timeout`).
    pub per_try_timeout: Option<ConfigDuration>,
    /// Retry POST/PATCH etc. even after the request may have reached an origin.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Protocols a `101 Switching Protocols` may switch to (an `Upgrade` offering anything
    /// else is forwarded without it; an unsolicited 101 is a 502).
    #[serde(default = "default_upgrade_protocols")]
    pub upgrade_protocols: Vec<String>,
    /// An upgraded tunnel with no bytes either way for this long is closed (default: the
    /// listener's `idle_timeout`).
    pub tunnel_idle_timeout: Option<ConfigDuration>,
    /// An upgraded tunnel is closed after this long, busy or not.
    #[serde(default = "default_tunnel_max_duration")]
    pub tunnel_max_duration: ConfigDuration,
    /// Any of these authenticates a request: `"jwt:NAME"`, `"api_key"`, `"mtls"` (a
    /// verified client certificate). Empty: the route is public.
    #[serde(default)]
    pub auth: Vec<String>,
    /// The consumer must have one of these roles (403 otherwise).
    #[serde(default)]
    pub require_roles: Vec<String>,
    /// The token must grant all of these scopes (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub require_scopes: Vec<String>,
    /// Pass the client's credentials (`Authorization`, the API-key header or parameter,
    /// the token cookie) on to the origin; removed by default.
    #[serde(default)]
    pub forward_credentials: bool,
    /// CIDRs of client addresses allowed on this route (empty: everyone), on top of the
    /// listener's; the client address is the one `trusted_proxies` yield. 403 otherwise.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// CIDRs refused on this route with 403 (deny wins over allow).
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Headers the gateway sets on the upstream request from a secret (the upstream's
    /// entries apply too; the route's wins for the same name). A client's own copies are
    /// always dropped.
    #[serde(default)]
    pub inject_headers: BTreeMap<String, super::InjectConfig>,
    /// Query parameters set from a secret (replacing a client's own).
    #[serde(default)]
    pub inject_query: BTreeMap<String, super::InjectConfig>,
    /// A `credential_injected` audit event for every request that gets an injection.
    #[serde(default)]
    pub audit: bool,
    /// Checks a request must pass before any origin sees it.
    pub validate: Option<ValidateConfig>,
    /// `[rate_limits.NAME]` policies, all of which must admit the request (after
    /// authentication: consumer keys need the consumer).
    #[serde(default)]
    pub rate_limits: Vec<String>,
}

/// A route's `validate = {...}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Media types a request body may have (`"application/json"`, `"text/*"`), compared
    /// without parameters and case-insensitively; others get 415. Requests without a body
    /// are not asked for one.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Header fields that must be present with a non-empty value (400).
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// At most this many `&`-separated query parameters (400).
    pub max_query_params: Option<usize>,
    /// A request body must be one well-formed JSON value nested at most 64 deep (400 saying
    /// where it broke). Such bodies are read whole (up to `max_body_bytes`) before the origin
    /// is chosen; other routes stream.
    #[serde(default)]
    pub json: bool,
}

/// Header edits: `add` sets a header (replacing any of the same name), `remove` drops it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTransform {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A response the gateway answers itself, without an upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_true() -> bool {
    true
}

fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_io_uring_entries() -> u32 {
    1024
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(16 * 1024)
}

fn default_max_headers() -> usize {
    100
}

fn default_max_uri_bytes() -> ByteSize {
    ByteSize(8 * 1024)
}

fn default_max_body_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}

fn default_header_read_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

fn default_send_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

fn default_body_read_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

fn default_upgrade_protocols() -> Vec<String> {
    vec!["websocket".to_string()]
}

fn default_tunnel_max_duration() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(24 * 3600))
}

fn default_max_connections() -> usize {
    100_000
}

fn default_max_connections_per_ip() -> usize {
    1024
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

fn default_response_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_max_idle_connections() -> usize {
    64
}

fn default_resolve_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_upstream_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

fn default_gossip_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(5))
}

fn default_max_requests() -> usize {
    10_000
}

fn default_max_pending() -> usize {
    1_000
}

fn default_health_path() -> String {
    "/healthz".to_string()
}

fn default_health_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn default_health_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_expected_status() -> String {
    "200-399".to_string()
}

fn default_health_jitter() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(100))
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_ejection_time() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_max_ejection_time() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

fn default_max_ejection_percent() -> u32 {
    50
}

fn default_retry_percent() -> u32 {
    20
}

fn default_retry_min() -> u32 {
    30
}

fn default_retries() -> u32 {
    1
}

fn default_retry_on() -> Vec<String> {
    vec!["connect-failure".to_string(), "reset".to_string()]
}

fn default_sticky_cookie() -> String {
    "rg_sticky".to_string()
}

fn default_sticky_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3600))
}

fn default_alpn() -> Vec<String> {
    vec!["http/1.1".to_string()]
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn default_https_port() -> u16 {
    443
}

fn default_weight() -> u32 {
    1
}

fn default_content_type() -> String {
    "text/plain".to_string()
}
