//! Rate limits: `[rate_limits.NAME]` policies, `[cluster]`, and which policies each route uses.

use super::*;
use crate::config::{ClusterConfig, LimitAlgorithm, LimitScope, RateLimitConfig};
use crate::limit::gcra::Algorithm;
use crate::limit::{KeySource, PolicySpec, Scope};
use std::sync::Arc;

pub(super) fn compile_limits(
    c: &mut Checker,
    config: &Config,
    base: &Path,
) -> (Vec<Arc<PolicySpec>>, Option<ClusterSpec>) {
    let cluster = config
        .cluster
        .as_ref()
        .and_then(|k| compile_cluster(c, k, base));
    let mut out = Vec::new();
    for (name, p) in &config.rate_limits {
        let key = format!("rate_limits.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            c.problem(
                &key,
                "a policy name is printable ASCII without spaces, quotes or backslashes (it is sent in RateLimit fields)",
            );
        }
        let source = match p.key.as_str() {
            "consumer" => Some(KeySource::Consumer),
            "ip" => Some(KeySource::Ip),
            "route" => Some(KeySource::Route),
            other => {
                match other.strip_prefix("header:") {
                    Some(h) if is_token(h) => Some(KeySource::Header(
                        h.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                    )),
                    _ => {
                        c.problem(
                        format!("{key}.key"),
                        format!("{other:?}: expected \"consumer\", \"ip\", \"route\" or \"header:NAME\""),
                    );
                        None
                    }
                }
            }
        };
        let scope = match p.scope {
            LimitScope::Shard => Scope::Shard,
            LimitScope::Global => Scope::Global,
            LimitScope::Cluster => {
                if config.cluster.is_none() {
                    c.problem(
                        format!("{key}.scope"),
                        "scope = \"cluster\" needs a [cluster] table with the Redis to share",
                    );
                }
                Scope::Cluster
            }
        };
        if p.max_keys == 0 {
            c.problem(format!("{key}.max_keys"), "must be at least 1");
        }
        let algorithm = algorithm(c, &key, p, scope);
        let (Some(source), Some((algorithm, item))) = (source, algorithm) else {
            continue;
        };
        out.push(Arc::new(PolicySpec {
            name: name.as_str().into(),
            key: source,
            algorithm,
            scope,
            max_keys: p.max_keys.max(1),
            headers: p.headers,
            policy_item: item,
        }));
    }
    (out, cluster)
}

/// The algorithm and its `RateLimit-Policy` item.
fn algorithm(
    c: &mut Checker,
    key: &str,
    p: &RateLimitConfig,
    scope: Scope,
) -> Option<(Algorithm, Box<str>)> {
    let period_us = p.period.0.as_micros() as u64;
    match (p.rate, p.concurrency) {
        (Some(_), Some(_)) | (None, None) => {
            c.problem(key, "give either rate (per period) or concurrency");
            None
        }
        (None, Some(limit)) => {
            if limit == 0 {
                c.problem(format!("{key}.concurrency"), "must be at least 1");
            }
            if p.algorithm != LimitAlgorithm::Gcra || p.burst != 0 {
                c.problem(
                    format!("{key}.concurrency"),
                    "a concurrency limit takes no algorithm or burst",
                );
            }
            if scope == Scope::Cluster {
                c.problem(
                    format!("{key}.scope"),
                    "a concurrency limit is per process: scope \"shard\" or \"global\"",
                );
            }
            Some((
                Algorithm::Concurrency { limit },
                crate::limit::policy_item(key_name(key), limit, None),
            ))
        }
        (Some(rate), None) => {
            if rate == 0 || period_us < 1000 || rate > period_us {
                c.problem(
                    format!("{key}.rate"),
                    "rate must be at least 1, period at least 1ms, and at most one request per microsecond",
                );
                return None;
            }
            let item = rate_item(key_name(key), rate, period_us);
            match p.algorithm {
                LimitAlgorithm::Gcra => {
                    let interval_us = period_us / rate;
                    Some((
                        Algorithm::Gcra {
                            interval_us,
                            tolerance_us: interval_us.saturating_mul(p.burst),
                        },
                        item,
                    ))
                }
                LimitAlgorithm::FixedWindow => {
                    if p.burst != 0 {
                        c.problem(
                            format!("{key}.burst"),
                            "burst is for algorithm = \"gcra\"; a fixed window's quota is its rate",
                        );
                    }
                    Some((
                        Algorithm::FixedWindow {
                            limit: rate,
                            period_us,
                        },
                        item,
                    ))
                }
            }
        }
    }
}

/// A rate's `RateLimit-Policy` item. The field counts windows in whole seconds, so a period
/// that is not a whole number of seconds is shown as the same rate over the next whole
/// number of seconds (5 per 500ms: `q=10;w=1`).
fn rate_item(name: &str, rate: u64, period_us: u64) -> Box<str> {
    const SECOND_US: u64 = 1_000_000;
    let window = period_us.div_ceil(SECOND_US).max(1);
    let quota = (rate as u128 * (window * SECOND_US) as u128 / period_us.max(1) as u128).max(1);
    crate::limit::policy_item(name, quota.min(u64::MAX as u128) as u64, Some(window))
}

fn key_name(key: &str) -> &str {
    key.strip_prefix("rate_limits.").unwrap_or(key)
}

fn compile_cluster(c: &mut Checker, k: &ClusterConfig, base: &Path) -> Option<ClusterSpec> {
    let url = if k.redis.starts_with("env:") || k.redis.starts_with("file:") {
        match Secret::load(&k.redis, base) {
            Ok(secret) => String::from_utf8(secret.expose().to_vec()).ok(),
            Err(e) => {
                c.problem("cluster.redis", e);
                return None;
            }
        }
    } else {
        Some(k.redis.clone())
    };
    let url = url.filter(|u| u.starts_with("redis://") && redis::Client::open(u.as_str()).is_ok());
    let Some(url) = url else {
        c.problem(
            "cluster.redis",
            "expected a URL such as \"redis://127.0.0.1:6379\" (TLS is not supported)",
        );
        return None;
    };
    if k.sync_interval.0 < Duration::from_millis(10) || k.sync_interval.0 > Duration::from_secs(10)
    {
        c.problem("cluster.sync_interval", "must be between 10ms and 10s");
    }
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.clone(),
    };
    Some(ClusterSpec {
        shown,
        redis: Secret::generated(&k.redis, url.into_bytes()),
        sync_interval: k.sync_interval.0,
        on_redis_down: k.on_redis_down,
    })
}

/// A route's `rate_limits`: indices into the config's policies.
pub(super) fn route_limits(
    c: &mut Checker,
    key: &str,
    names: &[String],
    policies: &[Arc<PolicySpec>],
    declared: &std::collections::BTreeMap<String, RateLimitConfig>,
) -> Vec<usize> {
    if names.len() > crate::limit::MAX_POLICIES_PER_ROUTE {
        c.problem(
            format!("{key}.rate_limits"),
            format!(
                "at most {} policies per route",
                crate::limit::MAX_POLICIES_PER_ROUTE
            ),
        );
    }
    let mut out = Vec::new();
    for name in names {
        match policies.iter().position(|p| &*p.name == name) {
            Some(i) if !out.contains(&i) => out.push(i),
            Some(_) => c.problem(
                format!("{key}.rate_limits"),
                format!("{name:?} is listed twice"),
            ),
            // Declared but refused: its own problems say why.
            None if declared.contains_key(name) => {}
            None => c.problem(
                format!("{key}.rate_limits"),
                format!("no [rate_limits.{name}] policy"),
            ),
        }
    }
    out.truncate(crate::limit::MAX_POLICIES_PER_ROUTE);
    out
}

#[cfg(test)]
mod tests {
    use super::rate_item;

    #[test]
    fn policy_items_count_whole_seconds() {
        assert_eq!(&*rate_item("a", 100, 60_000_000), "\"a\";q=100;w=60");
        assert_eq!(&*rate_item("a", 5, 500_000), "\"a\";q=10;w=1");
        assert_eq!(&*rate_item("a", 3, 1_500_000), "\"a\";q=4;w=2");
        assert_eq!(
            &*rate_item("a", 1, 10_000_000_000_000),
            "\"a\";q=1;w=10000000"
        );
        assert_eq!(&*rate_item("a", 1, 2_500_000), "\"a\";q=1;w=3");
    }
}
