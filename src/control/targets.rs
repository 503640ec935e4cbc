//! The target watcher: logs each target's state changes (ejected, unhealthy, back in
//! service) once for the whole process, with the precise reason, by reading the gossip state
//! words a few times a second. Shards never log these themselves: one change is seen by every
//! shard, and a shard must not write to stderr.

use super::reload::ControlPlane;
use crate::gossip::{AdminState, Reason, TargetState, describe_change, now_ms};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(100);

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("target-watch".into())
        .spawn(move || {
            // Slot → the state name last logged (targets start healthy: nothing to say).
            let mut shown: HashMap<usize, &'static str> = HashMap::new();
            while !crate::shard::DRAIN.load(Ordering::Acquire) {
                watch_once(&plane, &mut shown);
                std::thread::sleep(POLL);
            }
        })
        .map(|_| ())
}

/// `draining`, `disabled`, `ejected`, `unhealthy` or `healthy`, as `/upstreams` says.
pub fn state_name(s: &TargetState, now: u64) -> &'static str {
    if s.admin != AdminState::Enabled {
        s.admin.name()
    } else if s.is_ejected(now) {
        "ejected"
    } else if s.unhealthy {
        "unhealthy"
    } else {
        "healthy"
    }
}

fn watch_once(plane: &ControlPlane, shown: &mut HashMap<usize, &'static str>) {
    let snapshot = plane.current().snapshot;
    let now = now_ms();
    for u in &snapshot.upstreams {
        for t in &u.targets {
            let state = plane.cluster.gossip.read(t.slot);
            let name = state_name(&state, now);
            let before = shown.insert(t.slot, name).unwrap_or("healthy");
            // An operator's change is logged by the admin endpoint that made it (two in a
            // row may fall between two polls here).
            if before != name && state.reason != Reason::Operator {
                crate::observe::log::line(
                    level_of(name),
                    &change_line(&u.name, &t.label, &state, name, now),
                );
            }
        }
    }
}

fn level_of(name: &str) -> crate::observe::log::Level {
    if name == "healthy" {
        crate::observe::log::Level::Info
    } else {
        crate::observe::log::Level::Warn
    }
}

/// `upstream "api" target 127.0.0.1:9001: ejected for 30s: consecutive failures (status 503)`
pub fn change_line(upstream: &str, target: &str, s: &TargetState, name: &str, now: u64) -> String {
    let why = match name {
        // An ejection that ran out has no state change of its own.
        "healthy" if s.reason == Reason::ConsecutiveFailures => "ejection ended".to_string(),
        _ => describe_change(s.reason, s.fault),
    };
    let what = match name {
        "ejected" => format!(
            "ejected for {}s",
            s.ejected_until_ms.saturating_sub(now).div_ceil(1000)
        ),
        "healthy" => "back in service".to_string(),
        other => other.to_string(),
    };
    format!("upstream {upstream:?} target {target}: {what}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::Fault;

    fn state(reason: Reason, fault: Fault, unhealthy: bool, until: u64) -> TargetState {
        TargetState {
            generation: 1,
            unhealthy,
            ejections: 1,
            reason,
            ejected_until_ms: until,
            changed_ms: 0,
            fault,
            admin: AdminState::Enabled,
        }
    }

    #[test]
    fn lines_say_what_happened_and_why() {
        let mut drained = state(Reason::Operator, Fault::None, false, 0);
        drained.admin = AdminState::Draining;
        assert_eq!(
            change_line("api", "a:1", &drained, state_name(&drained, 0), 0),
            "upstream \"api\" target a:1: draining: set by an operator"
        );
        let s = state(
            Reason::ConsecutiveFailures,
            Fault::Status(503),
            false,
            30_000,
        );
        assert_eq!(
            change_line("api", "127.0.0.1:9001", &s, state_name(&s, 0), 0),
            "upstream \"api\" target 127.0.0.1:9001: ejected for 30s: consecutive failures (status 503)"
        );
        assert_eq!(
            change_line("api", "a:1", &s, state_name(&s, 40_000), 40_000),
            "upstream \"api\" target a:1: back in service: ejection ended"
        );
        let s = state(Reason::ActiveCheckFailed, Fault::ConnectRefused, true, 0);
        assert_eq!(
            change_line("api", "a:1", &s, state_name(&s, 0), 0),
            "upstream \"api\" target a:1: unhealthy: active check failed (connection refused)"
        );
    }
}
