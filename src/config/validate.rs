//! Validation of a parsed [`Config`] and its compilation into the immutable [`Snapshot`].
//! Every problem is collected (not just the first) with its key path and line.

use super::source::KeyLines;
use super::{Balance, Config, HeaderTransform, Limits, Problem, RouteConfig, Workers};
use crate::route::{PathMatch, RouteKey, Router};
use crate::tls::{ClientTls, ServerTls, TlsProblem};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The compiled, read-only config every shard shares through an `Arc`.
#[derive(Debug)]
pub struct Snapshot {
    pub file: PathBuf,
    pub workers: usize,
    pub pin_cores: bool,
    pub drain_timeout: Duration,
    pub io_uring_entries: u32,
    pub io_driver: super::IoDriver,
    pub listeners: Vec<ListenerSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub router: Router,
    pub gossip_interval: Duration,
    pub admin: Option<SocketAddr>,
    /// `[admin] token`: the bearer token admin requests must carry (see `admin`).
    pub admin_token: Option<super::Secret>,
    /// `[server] path_escaped_slashes = "keep"`: `%2F`, `%5C` and `;` pass through.
    pub keep_escaped_slashes: bool,
    /// Targets of all upstreams together.
    pub total_targets: usize,
    /// The file as parsed, defaults filled in: what admin `/config` shows (secrets redacted).
    pub source: Config,
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

/// Points per unit of weight on the ring: enough for an even spread with few targets.
const RING_POINTS: u32 = 160;

fn build_ring(targets: &[TargetSpec]) -> Vec<(u64, usize)> {
    let mut ring: Vec<(u64, usize)> = targets
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            (0..RING_POINTS * t.weight)
                .map(move |p| (stable_hash(format!("{}#{p}", t.label).as_bytes()), i))
        })
        .collect();
    ring.sort_unstable();
    ring
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
}

impl CompiledTransform {
    /// Whether a field named `name` (any case) is dropped.
    pub fn removes(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

struct Checker<'a> {
    lines: &'a KeyLines<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.problems.push(Problem {
            line: self.lines.line(&key),
            key,
            message: message.into(),
        });
    }

    fn tls_problems(&mut self, prefix: &str, problems: Vec<TlsProblem>) {
        for p in problems {
            let key = if p.key.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", p.key)
            };
            self.problem(key, p.message);
        }
    }

    fn unique_names<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            if name.is_empty() {
                self.problem(format!("{section}[{i}].name"), "name must not be empty");
            } else if let Some(first) = seen.insert(name, i) {
                self.problem(
                    format!("{section}[{i}].name"),
                    format!("duplicate name {name:?} (also used by {section}[{first}])"),
                );
            }
        }
    }
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::is_token_byte)
}

fn is_field_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn is_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Validates `config` and compiles it; `file` names the config in the snapshot.
pub fn compile(file: &Path, config: &Config, lines: &KeyLines) -> Result<Snapshot, Vec<Problem>> {
    let mut c = Checker {
        lines,
        problems: Vec::new(),
    };
    let workers = match config.server.workers {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };
    if !(16..=32768).contains(&config.server.io_uring_entries)
        || !config.server.io_uring_entries.is_power_of_two()
    {
        c.problem(
            "server.io_uring_entries",
            "must be a power of two between 16 and 32768",
        );
    }
    check_limits(&mut c, "limits", &config.limits);
    let base = file.parent().unwrap_or(Path::new("."));
    if config.server.gossip_interval.0.is_zero()
        || config.server.gossip_interval.0 > Duration::from_secs(1)
    {
        c.problem("server.gossip_interval", "must be between 1ms and 1s");
    }
    let admin = config.admin.as_ref().and_then(|a| match a.bind.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.problem(
                "admin.bind",
                format!(
                    "bad address {:?}: expected IP:PORT such as \"127.0.0.1:9901\"",
                    a.bind
                ),
            );
            None
        }
    });
    let admin_token = config.admin.as_ref().and_then(|a| {
        let token = a.token.as_ref().and_then(|reference| {
            super::Secret::load(reference, base)
                .map_err(|e| c.problem("admin.token", e))
                .ok()
        });
        if a.token.is_none() && admin.is_some_and(|addr: SocketAddr| !addr.ip().is_loopback()) {
            c.problem(
                "admin.token",
                "required when admin.bind is not a loopback address (the admin API would be open to the network)",
            );
        }
        token
    });
    let listeners = compile_listeners(&mut c, config, base);
    let upstreams = compile_upstreams(&mut c, config, base);
    let (routes, keys) = compile_routes(&mut c, config, &upstreams);
    let router = match Router::build(&keys) {
        Ok(r) => Some(r),
        Err(conflicts) => {
            for conflict in conflicts {
                c.problem(
                    format!("routes[{}]", conflict.second),
                    format!(
                        "route {:?} matches the same host, path and methods as route {:?}",
                        config.routes[conflict.second].name, config.routes[conflict.first].name
                    ),
                );
            }
            None
        }
    };
    match router {
        Some(router) if c.problems.is_empty() => Ok(Snapshot {
            file: file.to_path_buf(),
            workers,
            pin_cores: config.server.pin_cores,
            drain_timeout: config.server.drain_timeout.0,
            io_uring_entries: config.server.io_uring_entries,
            io_driver: config.server.io_driver,
            gossip_interval: config.server.gossip_interval.0,
            admin,
            admin_token,
            keep_escaped_slashes: config.server.path_escaped_slashes == super::EscapedSlashes::Keep,
            total_targets: upstreams.iter().map(|u| u.targets.len()).sum(),
            source: config.clone(),
            listeners,
            upstreams,
            routes,
            router,
        }),
        _ => Err(c.problems),
    }
}

fn check_limits(c: &mut Checker, key: &str, limits: &Limits) {
    let header_bytes = limits.max_header_bytes.0;
    if !(1024..=1024 * 1024).contains(&header_bytes) {
        c.problem(
            format!("{key}.max_header_bytes"),
            "must be between 1KiB and 1MiB",
        );
    }
    if !(1..=10_000).contains(&limits.max_headers) {
        c.problem(format!("{key}.max_headers"), "must be between 1 and 10000");
    }
    if limits.max_uri_bytes.0 < 16 || limits.max_uri_bytes.0 > header_bytes {
        c.problem(
            format!("{key}.max_uri_bytes"),
            "must be at least 16 and at most max_header_bytes",
        );
    }
    if limits.max_connections == 0 {
        c.problem(format!("{key}.max_connections"), "must be at least 1");
    }
    if limits.max_connections_per_ip == 0 {
        c.problem(
            format!("{key}.max_connections_per_ip"),
            "must be at least 1",
        );
    }
    for (name, d) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("send_timeout", limits.send_timeout),
        ("body_read_timeout", limits.body_read_timeout),
    ] {
        if d.0.is_zero() {
            c.problem(format!("{key}.{name}"), "must be greater than zero");
        }
    }
}

fn effective(limits: &Limits) -> EffectiveLimits {
    EffectiveLimits {
        max_header_bytes: limits.max_header_bytes.0 as usize,
        max_headers: limits.max_headers,
        max_uri_bytes: limits.max_uri_bytes.0 as usize,
        max_body_bytes: limits.max_body_bytes.0,
        header_read_timeout: limits.header_read_timeout.0,
        idle_timeout: limits.idle_timeout.0,
        send_timeout: limits.send_timeout.0,
        body_read_timeout: limits.body_read_timeout.0,
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
    }
}

fn compile_listeners(c: &mut Checker, config: &Config, base: &Path) -> Vec<ListenerSpec> {
    if config.listeners.is_empty() {
        c.problem("listeners", "at least one [[listeners]] entry is required");
    }
    c.unique_names(
        "listeners",
        config.listeners.iter().map(|l| l.name.as_str()),
    );
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}].bind");
        let limits = config.limits.with_override(&l.limits);
        check_limits(c, &format!("listeners[{i}].limits"), &limits);
        let addr: SocketAddr = match l.bind.parse() {
            Ok(a) => a,
            Err(_) => {
                c.problem(
                    &key,
                    format!(
                        "bad address {:?}: expected IP:PORT such as \"0.0.0.0:8080\" or \"[::1]:8080\"",
                        l.bind
                    ),
                );
                continue;
            }
        };
        if let Some(first) = seen.insert(addr, i) {
            c.problem(
                &key,
                format!("address {addr} is also bound by listeners[{first}]"),
            );
        }
        let tls = l.tls.as_ref().and_then(|t| {
            crate::tls::server_tls(t, base)
                .map_err(|problems| c.tls_problems(&format!("listeners[{i}].tls"), problems))
                .ok()
        });
        if l.tls.is_some() && l.redirect_https.is_some() {
            c.problem(
                format!("listeners[{i}].redirect_https"),
                "a TLS listener cannot redirect to HTTPS (it already is)",
            );
        }
        out.push(ListenerSpec {
            name: l.name.clone(),
            addr,
            limits: effective(&limits),
            bind_line: c.lines.line(&key),
            tls: tls.map(Arc::new),
            redirect_https: l.redirect_https.as_ref().map(|r| r.port),
            replace_x_forwarded_for: l.x_forwarded_for == super::XForwardedFor::Replace,
        });
    }
    out
}

/// Each target's sticky cookie value: a keyed hash of its address.
pub fn sticky_ids(key: &super::Secret, targets: &[TargetSpec]) -> Vec<String> {
    targets
        .iter()
        .map(|t| super::secret::keyed_id(key.expose(), t.label.as_bytes()))
        .collect()
}

fn compile_upstreams(c: &mut Checker, config: &Config, base: &Path) -> Vec<UpstreamSpec> {
    c.unique_names(
        "upstreams",
        config.upstreams.iter().map(|u| u.name.as_str()),
    );
    let mut out = Vec::new();
    let mut next_slot = 0;
    for (i, u) in config.upstreams.iter().enumerate() {
        if u.targets.is_empty() {
            c.problem(
                format!("upstreams[{i}].targets"),
                "must list at least one target",
            );
        }
        for (name, d) in [
            ("connect_timeout", u.connect_timeout),
            ("response_timeout", u.response_timeout),
            ("idle_timeout", u.idle_timeout),
        ] {
            if d.0.is_zero() {
                c.problem(
                    format!("upstreams[{i}].{name}"),
                    "must be greater than zero",
                );
            }
        }
        let mut targets = Vec::new();
        for (j, t) in u.targets.iter().enumerate() {
            let key = format!("upstreams[{i}].targets[{j}]");
            if t.weight() == 0 || t.weight() > 10_000 {
                c.problem(&key, "weight must be between 1 and 10000");
            }
            match resolve(t.addr()) {
                Ok(addr) => targets.push(TargetSpec {
                    label: t.addr().to_string(),
                    addr,
                    weight: t.weight(),
                    slot: next_slot + j,
                }),
                Err(message) => c.problem(&key, message),
            }
        }
        next_slot += u.targets.len();
        let tls = upstream_tls(c, i, u, base);
        let health = u.health.as_ref().and_then(|h| health_spec(c, i, h));
        let passive = passive_spec(c, i, &u.passive);
        for (name, v) in [
            ("max_requests", u.max_requests),
            ("max_pending", u.max_pending),
        ] {
            if v == 0 {
                c.problem(format!("upstreams[{i}].{name}"), "must be at least 1");
            }
        }
        if u.retry_budget.percent > 100 {
            c.problem(
                format!("upstreams[{i}].retry_budget.percent"),
                "must be between 0 and 100",
            );
        }
        let hash_key = hash_key(c, i, u);
        let ring = if u.balance == super::Balance::ConsistentHash {
            build_ring(&targets)
        } else {
            Vec::new()
        };
        let sticky = u.sticky.as_ref().map(|st| {
            if !is_token(&st.cookie) {
                c.problem(
                    format!("upstreams[{i}].sticky.cookie"),
                    format!("bad cookie name {:?}", st.cookie),
                );
            }
            let (key, generated_key) = match &st.secret {
                Some(reference) => (
                    super::Secret::load(reference, base).unwrap_or_else(|e| {
                        c.problem(format!("upstreams[{i}].sticky.secret"), e);
                        super::Secret::generated(reference, Vec::new())
                    }),
                    false,
                ),
                None => (
                    super::Secret::generated("generated", super::secret::random_key()),
                    true,
                ),
            };
            StickySpec {
                cookie: st.cookie.clone(),
                max_age_secs: st.ttl.0.as_secs(),
                ids: sticky_ids(&key, &targets),
                key,
                generated_key,
            }
        });
        if u.slow_start.is_some_and(|d| d.0.is_zero()) {
            c.problem(
                format!("upstreams[{i}].slow_start"),
                "must be greater than zero when given",
            );
        }
        out.push(UpstreamSpec {
            slow_start: u.slow_start.map(|d| d.0),
            hash_key,
            ring,
            sticky,
            tls,
            health,
            passive,
            panic_mode: u.panic_mode,
            max_requests: u.max_requests,
            max_pending: u.max_pending,
            retry_budget_percent: u.retry_budget.percent,
            retry_budget_min: u.retry_budget.min_per_10s,
            connection_key: format!(
                "tls={} sni={:?} ca={:?} verify={}",
                u.tls, u.tls_server_name, u.tls_ca_file, u.tls_verify
            ),
            name: u.name.clone(),
            balance: u.balance,
            targets,
            connect_timeout: u.connect_timeout.0,
            response_timeout: u.response_timeout.0,
            max_idle_connections: u.max_idle_connections,
            idle_timeout: u.idle_timeout.0,
        });
    }
    out
}

fn health_spec(c: &mut Checker, i: usize, h: &super::HealthConfig) -> Option<HealthSpec> {
    let key = format!("upstreams[{i}].health");
    let before = c.problems.len();
    if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        c.problem(
            format!("{key}.path"),
            "must start with '/' and contain no spaces",
        );
    }
    for (name, d) in [("interval", h.interval), ("timeout", h.timeout)] {
        if d.0.is_zero() {
            c.problem(format!("{key}.{name}"), "must be greater than zero");
        }
    }
    for (name, n) in [
        ("healthy_threshold", h.healthy_threshold),
        ("unhealthy_threshold", h.unhealthy_threshold),
    ] {
        if !(1..=100).contains(&n) {
            c.problem(format!("{key}.{name}"), "must be between 1 and 100");
        }
    }
    let expected = parse_status_range(&h.expected_status);
    if expected.is_none() {
        c.problem(
            format!("{key}.expected_status"),
            format!(
                "bad status range {:?}: expected \"200\" or \"200-399\"",
                h.expected_status
            ),
        );
    }
    (c.problems.len() == before).then(|| HealthSpec {
        path: h.path.clone(),
        interval: h.interval.0,
        timeout: h.timeout.0,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        expected: expected.unwrap_or(200..=399),
        jitter: h.jitter.0,
    })
}

fn hash_key(c: &mut Checker, i: usize, u: &super::UpstreamConfig) -> Option<HashKey> {
    let key = format!("upstreams[{i}].hash_key");
    let consistent = u.balance == super::Balance::ConsistentHash;
    let Some(text) = &u.hash_key else {
        if consistent {
            c.problem(
                key,
                "balance = \"consistent_hash\" needs hash_key (\"header:NAME\", \"cookie:NAME\" or \"client_ip\")",
            );
        }
        return None;
    };
    if !consistent {
        c.problem(&key, "hash_key needs balance = \"consistent_hash\"");
    }
    let parsed = match text.split_once(':') {
        Some(("header", name)) if is_token(name) => {
            Some(HashKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if is_token(name) => Some(HashKey::Cookie(name.to_string())),
        None if text == "client_ip" => Some(HashKey::ClientIp),
        _ => None,
    };
    if parsed.is_none() {
        c.problem(
            key,
            format!(
                "bad hash_key {text:?}: expected \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
            ),
        );
    }
    parsed
}

fn parse_status_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some(lo..=hi)
}

fn passive_spec(c: &mut Checker, i: usize, p: &super::PassiveConfig) -> PassiveSpec {
    let key = format!("upstreams[{i}].passive");
    if p.max_ejection_percent > 100 {
        c.problem(
            format!("{key}.max_ejection_percent"),
            "must be between 0 and 100",
        );
    }
    if p.consecutive_failures > 0 && p.ejection_time.0.is_zero() {
        c.problem(format!("{key}.ejection_time"), "must be greater than zero");
    }
    if p.max_ejection_time.0 < p.ejection_time.0 {
        c.problem(
            format!("{key}.max_ejection_time"),
            "must be at least ejection_time",
        );
    }
    PassiveSpec {
        consecutive_failures: p.consecutive_failures,
        ejection_time: p.ejection_time.0,
        max_ejection_time: p.max_ejection_time.0,
        max_ejection_percent: p.max_ejection_percent,
        on_5xx: p.on_5xx,
    }
}

fn retry_on(c: &mut Checker, key: &str, list: &[String]) -> RetryOn {
    let mut on = RetryOn::default();
    for (j, item) in list.iter().enumerate() {
        match item.as_str() {
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "timeout" => on.timeout = true,
            "502" => on.status_502 = true,
            "503" => on.status_503 = true,
            "504" => on.status_504 = true,
            other => c.problem(
                format!("{key}.retry_on[{j}]"),
                format!(
                    "unknown condition {other:?}: expected connect-failure, reset, timeout, 502, 503 or 504"
                ),
            ),
        }
    }
    on
}

fn upstream_tls(
    c: &mut Checker,
    i: usize,
    u: &super::UpstreamConfig,
    base: &Path,
) -> Option<Arc<ClientTls>> {
    if !u.tls {
        for (set, name) in [
            (u.tls_server_name.is_some(), "tls_server_name"),
            (u.tls_ca_file.is_some(), "tls_ca_file"),
            (!u.tls_verify, "tls_verify"),
        ] {
            if set {
                c.problem(format!("upstreams[{i}].{name}"), "needs tls = true");
            }
        }
        return None;
    }
    let first_host = u.targets.first().map(|t| {
        let addr = t.addr();
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let name = u.tls_server_name.clone().or(first_host)?;
    match crate::tls::client_tls(&name, u.tls_ca_file.as_deref(), u.tls_verify, base) {
        Ok(t) => Some(Arc::new(t)),
        Err(p) => {
            c.tls_problems(&format!("upstreams[{i}]"), vec![p]);
            None
        }
    }
}

/// Resolves once at load: shards never do DNS on the request path.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        format!("bad address {addr:?}: expected HOST:PORT such as \"127.0.0.1:9001\"")
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "bad address {addr:?}: expected HOST:PORT such as \"127.0.0.1:9001\""
        ));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {addr:?}: no addresses"))
}

fn compile_routes(
    c: &mut Checker,
    config: &Config,
    upstreams: &[UpstreamSpec],
) -> (Vec<RouteSpec>, Vec<RouteKey>) {
    c.unique_names("routes", config.routes.iter().map(|r| r.name.as_str()));
    let mut specs = Vec::new();
    let mut keys = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let path = route_path(c, &key, r);
        if let Some(host) = &r.host
            && !is_host_pattern(host)
        {
            c.problem(
                format!("{key}.host"),
                format!(
                    "bad host {host:?}: expected a name such as \"api.example.com\" or \"*.example.com\" (no port)"
                ),
            );
        }
        let methods = r.methods.as_ref().map(|list| {
            if list.is_empty() {
                c.problem(format!("{key}.methods"), "must not be empty when given");
            }
            for (j, m) in list.iter().enumerate() {
                if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                    c.problem(
                        format!("{key}.methods[{j}]"),
                        format!("bad method {m:?}: expected an upper-case token such as \"GET\""),
                    );
                }
            }
            list.clone()
        });
        let action = route_action(c, &key, r, upstreams);
        if r.retries > 10 {
            c.problem(format!("{key}.retries"), "must be between 0 and 10");
        }
        if r.per_try_timeout.is_some_and(|d| d.0.is_zero()) {
            c.problem(
                format!("{key}.per_try_timeout"),
                "must be greater than zero",
            );
        }
        if r.strip_prefix && r.path_prefix.is_none() {
            c.problem(
                format!("{key}.strip_prefix"),
                "strip_prefix needs path_prefix",
            );
        }
        if let Some(h) = &r.host_rewrite
            && (h.is_empty() || !is_field_value(h) || h.contains(' '))
        {
            c.problem(format!("{key}.host_rewrite"), "must be a valid Host value");
        }
        for (field, d) in [
            ("tunnel_idle_timeout", r.tunnel_idle_timeout),
            ("tunnel_max_duration", Some(r.tunnel_max_duration)),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                c.problem(format!("{key}.{field}"), "must be greater than zero");
            }
        }
        let request_headers = transform(
            c,
            &format!("{key}.request_headers"),
            &r.request_headers,
            GATEWAY_REQUEST_FIELDS,
        );
        let response_headers = transform(
            c,
            &format!("{key}.response_headers"),
            &r.response_headers,
            GATEWAY_RESPONSE_FIELDS,
        );
        keys.push(RouteKey {
            host: r.host.clone(),
            path: path.clone(),
            methods,
        });
        specs.push(RouteSpec {
            name: r.name.clone(),
            host: r.host.clone(),
            path,
            action,
            strip_prefix: r.strip_prefix,
            host_rewrite: r.host_rewrite.clone(),
            request_headers,
            response_headers_tls: with_hsts(&response_headers, r.hsts.as_ref()),
            response_headers,
            retries: r.retries,
            retry_on: retry_on(c, &key, &r.retry_on),
            per_try_timeout: r.per_try_timeout.map(|d| d.0),
            retry_non_idempotent: r.retry_non_idempotent,
            upgrade_protocols: upgrade_protocols(c, &key, &r.upgrade_protocols),
            tunnel_idle_timeout: r.tunnel_idle_timeout.map(|d| d.0),
            tunnel_max_duration: r.tunnel_max_duration.0,
        });
    }
    (specs, keys)
}

fn with_hsts(edits: &CompiledTransform, hsts: Option<&super::HstsConfig>) -> CompiledTransform {
    let mut edits = edits.clone();
    if let Some(h) = hsts {
        edits.remove.push("strict-transport-security".to_string());
        edits.add.extend_from_slice(&hsts_line(h));
    }
    edits
}

fn hsts_line(h: &super::HstsConfig) -> Vec<u8> {
    let mut line = format!(
        "strict-transport-security: max-age={}",
        h.max_age.0.as_secs()
    );
    if h.include_subdomains {
        line.push_str("; includeSubDomains");
    }
    if h.preload {
        line.push_str("; preload");
    }
    line.push_str("\r\n");
    line.into_bytes()
}

fn route_path(c: &mut Checker, key: &str, r: &RouteConfig) -> PathMatch {
    let path = match (&r.path, &r.path_prefix) {
        (Some(_), Some(_)) => {
            c.problem(
                format!("{key}.path"),
                "give either path or path_prefix, not both",
            );
            return PathMatch::Prefix("/".into());
        }
        (Some(p), None) => PathMatch::Exact(p.clone()),
        (None, Some(p)) => PathMatch::Prefix(p.clone()),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let (field, text) = match &path {
        PathMatch::Exact(p) => ("path", p),
        PathMatch::Prefix(p) => ("path_prefix", p),
    };
    if !text.starts_with('/') || text.bytes().any(|b| b <= b' ' || b == b'?' || b >= 0x7f) {
        c.problem(
            format!("{key}.{field}"),
            format!("bad path {text:?}: must start with '/' and contain no spaces or '?'"),
        );
    }
    path
}

fn route_action(
    c: &mut Checker,
    key: &str,
    r: &RouteConfig,
    upstreams: &[UpstreamSpec],
) -> RouteAction {
    match (&r.upstream, &r.direct_response) {
        (Some(name), None) => match upstreams.iter().position(|u| &u.name == name) {
            Some(upstream) => RouteAction::Proxy { upstream },
            None => {
                c.problem(
                    format!("{key}.upstream"),
                    format!("unknown upstream {name:?} (no [[upstreams]] entry has that name)"),
                );
                RouteAction::Proxy { upstream: 0 }
            }
        },
        (None, Some(d)) => {
            if !(200..=599).contains(&d.status) {
                c.problem(
                    format!("{key}.direct_response.status"),
                    "must be between 200 and 599",
                );
            }
            if !is_field_value(&d.content_type) {
                c.problem(
                    format!("{key}.direct_response.content_type"),
                    "must be a valid header value",
                );
            }
            RouteAction::Direct {
                status: d.status,
                content_type: d.content_type.clone(),
                body: d.body.clone(),
            }
        }
        (Some(_), Some(_)) => {
            c.problem(
                key.to_string(),
                "give either upstream or direct_response, not both",
            );
            RouteAction::Proxy { upstream: 0 }
        }
        (None, None) => {
            c.problem(key.to_string(), "needs upstream or direct_response");
            RouteAction::Proxy { upstream: 0 }
        }
    }
}

/// Fields that frame a message or hop one connection: the gateway always computes them.
const FRAMING_FIELDS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Request fields the gateway sets itself (its own value is the only true one).
const GATEWAY_REQUEST_FIELDS: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "x-client-cert-subject",
    "forwarded",
];

const XFF_OWNED: &str =
    "is set by the gateway itself (remove it, or use the listener's x_forwarded_for)";

const GATEWAY_RESPONSE_FIELDS: &[&str] = &["x-request-id"];

fn upgrade_protocols(c: &mut Checker, key: &str, list: &[String]) -> Vec<String> {
    for (j, p) in list.iter().enumerate() {
        if !is_token(p) {
            c.problem(
                format!("{key}.upgrade_protocols[{j}]"),
                format!("bad protocol name {p:?}: expected a token such as \"websocket\""),
            );
        }
    }
    list.iter().map(|p| p.to_ascii_lowercase()).collect()
}

/// Configured edits may not touch framing or the gateway's own fields: a second
/// `content-length` would be a smuggling vector made by a config typo, and a second
/// `x-real-ip` a lie the origin cannot tell from the truth. (`x-forwarded-for` may be
/// removed or replaced: its removal is honoured.)
fn reserved_field(name: &str, gateway_owned: &[&str]) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if FRAMING_FIELDS.contains(&lower.as_str()) {
        Some("is a framing or hop-by-hop field the gateway computes itself")
    } else if gateway_owned.contains(&lower.as_str()) {
        Some("is set by the gateway itself")
    } else {
        None
    }
}

fn transform(
    c: &mut Checker,
    key: &str,
    t: &HeaderTransform,
    gateway_owned: &[&str],
) -> CompiledTransform {
    let mut out = CompiledTransform::default();
    for (j, name) in t.remove.iter().enumerate() {
        if !is_token(name) {
            c.problem(
                format!("{key}.remove[{j}]"),
                format!("bad header name {name:?}"),
            );
        } else if let Some(why) = reserved_field(name, gateway_owned) {
            c.problem(
                format!("{key}.remove[{j}]"),
                format!("{name:?} cannot be removed: it {why}"),
            );
        }
        out.remove.push(name.to_ascii_lowercase());
    }
    for (name, value) in &t.add {
        if !is_token(name) {
            c.problem(format!("{key}.add"), format!("bad header name {name:?}"));
        } else if let Some(why) = reserved_field(name, gateway_owned).or_else(|| {
            name.eq_ignore_ascii_case("x-forwarded-for")
                .then_some(XFF_OWNED)
        }) {
            c.problem(
                format!("{key}.add"),
                format!("{name:?} cannot be added: it {why}"),
            );
        }
        if !is_field_value(value) {
            c.problem(
                format!("{key}.add.{name}"),
                "header value must not contain control characters",
            );
        }
        out.remove.push(name.to_ascii_lowercase());
        out.add.extend_from_slice(name.as_bytes());
        out.add.extend_from_slice(b": ");
        out.add.extend_from_slice(value.as_bytes());
        out.add.extend_from_slice(b"\r\n");
    }
    out
}
