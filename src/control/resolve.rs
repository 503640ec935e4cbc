//! The target resolver: targets written as host names are looked up again every
//! `resolve_interval` of their upstream, on this thread (blocking lookups never reach a
//! shard). A name that now has another address becomes a new snapshot that differs only in
//! that address, handed to every shard through its inbox like a reload: the target keeps its
//! slot and counters, the old address's pooled connections close as the shard lets go of
//! them, and its health starts afresh (a new address is another machine). A failed lookup
//! keeps the last address, with one warning until the name resolves again.

use super::reload::ControlPlane;
use crate::config::resolve::resolve_target;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The longest this thread sleeps: a reload that adds host names is seen this soon.
const AT_MOST: Duration = Duration::from_secs(1);

/// A target that moved: upstream name, target as written, the address the lookup replaces
/// and the new one.
pub struct Moved {
    pub upstream: String,
    pub label: String,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("resolver".into())
        .spawn(move || run(&plane))
        .map(|_| ())
}

fn run(plane: &ControlPlane) {
    // Upstream name → when its names are looked up next (the load resolved them just now).
    let mut due: HashMap<String, Instant> = HashMap::new();
    // (upstream, target) whose last lookup failed: warned once until it works again.
    let mut failing: HashSet<(String, String)> = HashSet::new();
    while !crate::shard::DRAIN.load(Ordering::Acquire) {
        let snapshot = plane.current().snapshot;
        let now = Instant::now();
        let mut moved: Vec<Moved> = Vec::new();
        let mut next = now + AT_MOST;
        for u in &snapshot.upstreams {
            let Some(interval) = u.resolve_interval else {
                continue;
            };
            let when = *due.entry(u.name.clone()).or_insert(now + interval);
            if when > now {
                next = next.min(when);
                continue;
            }
            due.insert(u.name.clone(), now + interval);
            next = next.min(now + interval);
            for t in u.targets.iter().filter(|t| t.host_name) {
                let key = (u.name.clone(), t.label.clone());
                match resolve_target(&t.label, snapshot.hosts_file.as_deref(), Some(t.addr)) {
                    Ok(addr) => {
                        if failing.remove(&key) {
                            crate::observe::info(&format!(
                                "upstream {:?} target {}: resolves again ({addr})",
                                u.name, t.label
                            ));
                        }
                        if addr != t.addr {
                            moved.push(Moved {
                                upstream: u.name.clone(),
                                label: t.label.clone(),
                                from: t.addr,
                                to: addr,
                            });
                        }
                    }
                    Err(e) => {
                        if failing.insert(key) {
                            crate::observe::warn(&format!(
                                "upstream {:?} target {}: {e}; keeping {}",
                                u.name, t.label, t.addr
                            ));
                        }
                    }
                }
            }
        }
        drop(snapshot);
        if !moved.is_empty() {
            plane.move_targets(&moved);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
