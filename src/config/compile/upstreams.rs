//! Upstreams: targets (resolved once, at load), balancing, health, TLS, sticky sessions.

use super::*;
use crate::config::file::*;
use crate::config::resolve::{is_host_name, resolve_target};
use crate::config::snapshot::*;
use crate::tls::ClientTls;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Each target's sticky cookie value: a keyed hash of its address.
pub fn sticky_ids(key: &super::Secret, targets: &[TargetSpec]) -> Vec<String> {
    targets
        .iter()
        .map(|t| crate::config::secret::keyed_id(key.expose(), t.label.as_bytes()))
        .collect()
}

pub(super) fn compile_upstreams(
    c: &mut Checker,
    config: &Config,
    base: &Path,
) -> Vec<UpstreamSpec> {
    c.unique_names(
        "upstreams",
        config.upstreams.iter().map(|u| u.name.as_str()),
    );
    let hosts_file = hosts_file(c, config, base);
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
            match resolve_target(t.addr(), hosts_file.as_deref(), None) {
                Ok(addr) => targets.push(TargetSpec {
                    label: t.addr().to_string(),
                    addr,
                    weight: t.weight(),
                    host_name: is_host_name(t.addr()),
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
                    super::Secret::generated("generated", crate::config::secret::random_key()),
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
        if u.resolve_interval.0 < std::time::Duration::from_millis(100) {
            c.problem(
                format!("upstreams[{i}].resolve_interval"),
                "must be at least 100ms",
            );
        }
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
            connect_timeout: u.connect_timeout.0,
            response_timeout: u.response_timeout.0,
            max_idle_connections: u.max_idle_connections,
            idle_timeout: u.idle_timeout.0,
            resolve_interval: targets
                .iter()
                .any(|t| t.host_name)
                .then_some(u.resolve_interval.0),
            targets,
        });
    }
    out
}

pub(super) fn health_spec(
    c: &mut Checker,
    i: usize,
    h: &super::HealthConfig,
) -> Option<HealthSpec> {
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

pub(super) fn hash_key(c: &mut Checker, i: usize, u: &super::UpstreamConfig) -> Option<HashKey> {
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

pub(super) fn parse_status_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some(lo..=hi)
}

pub(super) fn passive_spec(c: &mut Checker, i: usize, p: &super::PassiveConfig) -> PassiveSpec {
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

pub(super) fn upstream_tls(
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

/// `[server] hosts_file` against the config's folder, checked readable at load.
pub(super) fn hosts_file(c: &mut Checker, config: &Config, base: &Path) -> Option<PathBuf> {
    let path = base.join(config.server.hosts_file.as_ref()?);
    if let Err(e) = crate::config::resolve::read_hosts_file(&path) {
        c.problem("server.hosts_file", e);
    }
    Some(path)
}

/// Points per unit of weight on the ring: enough for an even spread with few targets.
const RING_POINTS: u32 = 160;

pub(super) fn build_ring(targets: &[TargetSpec]) -> Vec<(u64, usize)> {
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
