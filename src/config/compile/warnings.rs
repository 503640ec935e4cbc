//! Legal but risky or useless configs: `check` prints these as `warning:` lines (and fails on
//! them with `--strict`); `run` and reloads log them. Also the admin listener's clash with a
//! data-plane listener, which is a problem (the bind would fail at run time).

use super::Checker;
use crate::config::Problem;
use crate::config::file::{Config, Workers};
use crate::config::snapshot::ListenerSpec;
use std::net::SocketAddr;

/// Two addresses that cannot both be bound without SO_REUSEPORT sharing (the same port on
/// the same address, or on a wildcard).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The admin address must not be a listener's: the listener would take its connections.
pub(super) fn check_admin_clash(
    c: &mut Checker,
    admin: Option<SocketAddr>,
    listeners: &[ListenerSpec],
) {
    let Some(admin) = admin else { return };
    for (i, l) in listeners.iter().enumerate() {
        if overlap(admin, l.addr) {
            c.problem(
                "admin.bind",
                format!(
                    "{admin} is also where listeners[{i}] ({:?}) binds ({}): give admin a port of its own",
                    l.name, l.addr
                ),
            );
        }
    }
}

pub(super) fn warnings(c: &Checker, config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut warn = |key: String, message: String| {
        out.push(Problem {
            line: (!key.is_empty()).then(|| c.lines.line(&key)).flatten(),
            key,
            message,
        })
    };
    if config.routes.is_empty() {
        warn(
            String::new(),
            "no [[routes]]: every request will be answered 404".into(),
        );
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        if u.tls && !u.tls_verify {
            warn(
                format!("upstreams[{i}].tls_verify"),
                format!(
                    "upstream {:?} does not verify its origin's certificate: anyone on the path can impersonate the origin",
                    u.name
                ),
            );
        }
        if !config
            .routes
            .iter()
            .any(|r| r.upstream.as_deref() == Some(u.name.as_str()))
        {
            warn(
                format!("upstreams[{i}]"),
                format!("upstream {:?} is used by no route", u.name),
            );
        }
    }
    if let Workers::Count(n) = config.server.workers {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n > cores {
            warn(
                "server.workers".into(),
                format!(
                    "{n} shards on {cores} cores: shards will share cores and wait on each other (\"auto\" runs one per core)"
                ),
            );
        }
    }
    out.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    out
}
