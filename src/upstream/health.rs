//! Backend health as one shard sees it, and how it changes: passive outlier detection on
//! this shard's traffic, active probes for the targets this shard owns, and gossip from
//! the others. Every change goes through [`Gossip::update`], so all shards converge.

use crate::config::{PassiveSpec, UpstreamSpec};
use crate::gossip::{AdminState, Fault, Gossip, Reason, TargetState, now_ms};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

/// One target as one shard sees it. Atomics only so the admin thread can read them; the
/// owning shard is the only writer (relaxed stores: plain moves on x86).
#[derive(Default)]
pub struct TargetView {
    pub generation: AtomicU32,
    pub unhealthy: AtomicBool,
    pub ejected_until_ms: AtomicU64,
    pub ejections: AtomicU32,
    pub reason: AtomicU8,
    /// [`Fault`], packed.
    pub fault: AtomicU32,
    /// [`AdminState`].
    pub admin: AtomicU8,
    pub changed_ms: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub in_flight: AtomicU32,
    /// Exponentially weighted response-head latency, microseconds.
    pub ewma_us: AtomicU64,
    /// When the target last came back from unhealthy ([`now_ms`]; 0: never went down).
    pub recovered_ms: AtomicU64,
}

impl TargetView {
    /// Takes new requests: healthy, not ejected, and enabled.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.admin() == AdminState::Enabled && self.healthy(now_ms)
    }

    /// Healthy and not ejected, whatever an operator set.
    pub fn healthy(&self, now_ms: u64) -> bool {
        !self.unhealthy.load(Relaxed) && self.ejected_until_ms.load(Relaxed) <= now_ms
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    /// When the target became usable again: after a recovery, or when its last ejection ran
    /// out (0 when it has always been usable).
    pub fn usable_since(&self, now_ms: u64) -> u64 {
        let ejection_end = self.ejected_until_ms.load(Relaxed);
        let recovered = self.recovered_ms.load(Relaxed);
        if ejection_end <= now_ms {
            recovered.max(ejection_end)
        } else {
            recovered
        }
    }

    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if self.admin() != AdminState::Enabled {
            self.admin().name()
        } else if self.ejected_until_ms.load(Relaxed) > now_ms {
            "ejected"
        } else if self.unhealthy.load(Relaxed) {
            "unhealthy"
        } else {
            "healthy"
        }
    }

    /// Why the state last changed, with what failed: `active check failed (status 503)`.
    pub fn reason(&self) -> String {
        let reason = match self.reason.load(Relaxed) {
            1 => Reason::ActiveCheckPassed,
            2 => Reason::ActiveCheckFailed,
            3 => Reason::ConsecutiveFailures,
            4 => Reason::EjectionEnded,
            5 => Reason::Operator,
            _ => Reason::Initial,
        };
        crate::gossip::describe_change(reason, Fault::from_packed(self.fault.load(Relaxed)))
    }

    /// Takes a cluster-wide state if it is newer than what this shard has.
    fn apply(&self, s: &TargetState) {
        // `s` is always the slot's current state (notices carry no state), so any other
        // generation than ours is newer.
        if s.generation == self.generation.load(Relaxed) {
            return;
        }
        let now = now_ms();
        let was_down = self.unhealthy.load(Relaxed) || self.ejected_until_ms.load(Relaxed) > now;
        if was_down && !s.unhealthy && !s.is_ejected(now) {
            self.recovered_ms.store(s.changed_ms.max(1), Relaxed);
        }
        self.generation.store(s.generation, Relaxed);
        self.unhealthy.store(s.unhealthy, Relaxed);
        self.ejected_until_ms.store(s.ejected_until_ms, Relaxed);
        self.ejections.store(u32::from(s.ejections), Relaxed);
        self.reason.store(s.reason as u8, Relaxed);
        self.fault.store(s.fault.packed(), Relaxed);
        self.admin.store(s.admin as u8, Relaxed);
        self.changed_ms.store(s.changed_ms, Relaxed);
        if !s.is_ejected(now_ms()) {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    fn record_latency(&self, micros: u64) {
        // EWMA with alpha = 1/8; the first sample seeds it.
        let old = self.ewma_us.load(Relaxed);
        let new = if old == 0 {
            micros.max(1)
        } else {
            (old * 7 + micros) / 8
        };
        self.ewma_us.store(new.max(1), Relaxed);
    }
}

/// Every shard's view of every target (indexed by gossip slot), plus the gossip channel:
/// shared by the shards and the admin thread.
pub struct Cluster {
    pub gossip: Gossip,
    pub views: Vec<Vec<TargetView>>,
    /// Each shard's counters (written by it, read by admin `/shards`).
    pub shard_stats: Vec<crate::observe::ShardStats>,
    /// Each shard's metric series (written by it, merged by admin `/metrics`).
    pub shard_metrics: Vec<crate::observe::metrics::ShardMetrics>,
    /// Access-log chunks from every shard to the writer thread.
    pub access_log: std::sync::Arc<crate::observe::access_log::LogPipe>,
    /// Audit events to their own writer thread and file.
    pub audit_log: std::sync::Arc<crate::observe::access_log::LogPipe>,
    /// JWKS URLs a shard saw an unknown `kid` for: the control thread refetches them.
    pub jwks_wanted: crossbeam_queue::ArrayQueue<Box<str>>,
    /// Rate-limit usage between shards, and to and from the cluster sync thread.
    pub usage: crate::gossip::usage::UsageExchange,
}

impl Cluster {
    /// Room for `slots` targets over the process's life (see
    /// [`crate::config::reload::SlotMap`]) and `workers` shards.
    pub fn new(slots: usize, workers: usize) -> Cluster {
        Cluster {
            gossip: Gossip::new(slots, workers, 1024),
            views: (0..workers)
                .map(|_| (0..slots).map(|_| TargetView::default()).collect())
                .collect(),
            shard_stats: (0..workers)
                .map(|_| crate::observe::ShardStats::default())
                .collect(),
            shard_metrics: (0..workers).map(|_| Default::default()).collect(),
            access_log: std::sync::Arc::new(crate::observe::access_log::LogPipe::new(
                "access_log",
                workers,
                None,
            )),
            audit_log: std::sync::Arc::new(crate::observe::access_log::LogPipe::new(
                "audit_log",
                workers,
                None,
            )),
            jwks_wanted: crossbeam_queue::ArrayQueue::new(64),
            usage: crate::gossip::usage::UsageExchange::new(workers),
        }
    }

    /// A target that enters (or re-enters) the config starts healthy and never ejected,
    /// whatever its slot last held; every shard hears of it on its next tick.
    pub fn reset_slot(&self, slot: usize) {
        self.fresh_health(slot, Some(AdminState::Enabled));
    }

    /// A target now at another address: its health starts afresh, and an operator's drain
    /// or disable stays.
    pub fn forget_health(&self, slot: usize) {
        self.fresh_health(slot, None);
    }

    fn fresh_health(&self, slot: usize, admin: Option<AdminState>) {
        self.gossip.update(usize::MAX, slot, |s| {
            let fresh = TargetState {
                unhealthy: false,
                ejections: 0,
                reason: Reason::Initial,
                ejected_until_ms: 0,
                fault: Fault::None,
                admin: admin.unwrap_or(s.admin),
                ..*s
            };
            (fresh != *s).then_some(fresh)
        });
    }

    /// A target that no longer has active health checks cannot be found healthy by one:
    /// an `unhealthy` mark from the last check goes (an ejection runs out by itself).
    pub fn clear_unhealthy(&self, slot: usize) {
        self.gossip.update(usize::MAX, slot, |s| {
            s.unhealthy.then_some(TargetState {
                unhealthy: false,
                reason: Reason::Initial,
                fault: Fault::None,
                ..*s
            })
        });
    }

    /// An operator's drain, disable or enable: every shard hears of it on its next tick.
    /// Returns false when the target already was in that state.
    pub fn set_admin(&self, slot: usize, admin: AdminState) -> bool {
        self.gossip
            .update(usize::MAX, slot, |s| {
                (s.admin != admin).then_some(TargetState {
                    admin,
                    reason: Reason::Operator,
                    fault: Fault::None,
                    ..*s
                })
            })
            .is_some()
    }

    /// The shard that actively probes `slot`: exactly one per target.
    pub fn prober_of(&self, slot: usize) -> usize {
        slot % self.views.len().max(1)
    }
}

/// How an exchange with a target went, for passive detection and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (its status, and how long it took).
    Answered { status: u16, micros: u64 },
    /// Connect error, reset before any response byte, or response timeout.
    Failed(Fault),
    /// Neither (the client went away, or the request was refused before sending).
    Neutral,
}

/// This shard's side of health: applying gossip, passive detection, probe results.
pub struct ShardHealth<'a> {
    pub shard: usize,
    pub cluster: &'a Cluster,
}

impl ShardHealth<'_> {
    pub fn view(&self, slot: usize) -> &TargetView {
        &self.cluster.views[self.shard][slot]
    }

    /// Applies news from other shards; returns how many notices there were.
    pub fn drain_gossip(&self) -> usize {
        let views = &self.cluster.views[self.shard];
        self.cluster
            .gossip
            .drain(self.shard, |slot, state| views[slot].apply(&state))
    }

    fn publish(&self, slot: usize, change: impl FnMut(&TargetState) -> Option<TargetState>) {
        if let Some(state) = self.cluster.gossip.update(self.shard, slot, change) {
            self.view(slot).apply(&state);
        }
    }

    /// Counts an exchange's outcome; enough consecutive failures eject the target for
    /// everyone (within `max_ejection_percent`).
    pub fn record(&self, spec: &UpstreamSpec, target: usize, outcome: Outcome) {
        let slot = spec.targets[target].slot;
        let view = self.view(slot);
        let fault = match outcome {
            Outcome::Answered { status, micros } => {
                view.record_latency(micros);
                (spec.passive.on_5xx && status >= 500).then_some(Fault::Status(status))
            }
            Outcome::Failed(fault) => Some(fault),
            Outcome::Neutral => return,
        };
        let Some(fault) = fault else {
            view.consecutive_failures.store(0, Relaxed);
            return;
        };
        let failures = view.consecutive_failures.load(Relaxed) + 1;
        view.consecutive_failures.store(failures, Relaxed);
        let passive = &spec.passive;
        if passive.consecutive_failures == 0 || failures < passive.consecutive_failures {
            return;
        }
        let now = now_ms();
        if view.ejected_until_ms.load(Relaxed) > now || !self.may_eject(spec, now) {
            return;
        }
        view.consecutive_failures.store(0, Relaxed);
        self.publish(slot, |s| {
            let earlier = earlier_ejections(s, passive, now);
            (!s.is_ejected(now)).then(|| TargetState {
                ejections: earlier.saturating_add(1).min(127),
                ejected_until_ms: now + ejection_ms(passive, earlier),
                reason: Reason::ConsecutiveFailures,
                fault,
                ..*s
            })
        });
    }

    fn may_eject(&self, spec: &UpstreamSpec, now: u64) -> bool {
        let n = spec.targets.len();
        let ejected = spec
            .targets
            .iter()
            .filter(|t| self.view(t.slot).ejected_until_ms.load(Relaxed) > now)
            .count();
        (ejected + 1) * 100 <= n * spec.passive.max_ejection_percent as usize
    }

    /// An active probe's verdict after the thresholds: `true` healthy, `false` unhealthy.
    pub fn probe_verdict(&self, slot: usize, healthy: bool, fault: Fault) {
        let now = now_ms();
        self.publish(slot, |s| {
            let ends_ejection = healthy && s.is_ejected(now);
            if s.unhealthy != healthy && !ends_ejection {
                return None;
            }
            Some(TargetState {
                unhealthy: !healthy,
                ejected_until_ms: if healthy { 0 } else { s.ejected_until_ms },
                reason: match (healthy, ends_ejection) {
                    (true, true) if !s.unhealthy => Reason::EjectionEnded,
                    (true, _) => Reason::ActiveCheckPassed,
                    (false, _) => Reason::ActiveCheckFailed,
                },
                fault: if healthy { Fault::None } else { fault },
                ..*s
            })
        });
    }
}

/// Earlier ejections that still count: a target that stayed in service for
/// `max_ejection_time` since its last ejection ended starts over at the base time.
fn earlier_ejections(s: &TargetState, p: &PassiveSpec, now: u64) -> u8 {
    let forgiven_after = s.ejected_until_ms + p.max_ejection_time.as_millis() as u64;
    if s.ejections > 0 && now >= forgiven_after {
        0
    } else {
        s.ejections
    }
}

/// `ejection_time` doubled for each earlier ejection, capped at `max_ejection_time`.
fn ejection_ms(p: &PassiveSpec, earlier: u8) -> u64 {
    let base = p.ejection_time.as_millis() as u64;
    let cap = p.max_ejection_time.as_millis() as u64;
    base.saturating_mul(1u64 << u32::from(earlier).min(20))
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ejections_are_forgiven_after_a_long_healthy_spell() {
        let p = passive();
        let s = TargetState {
            generation: 3,
            unhealthy: false,
            ejections: 3,
            reason: Reason::ConsecutiveFailures,
            ejected_until_ms: 1_000_000,
            changed_ms: 0,
            fault: Fault::None,
            admin: AdminState::Enabled,
        };
        assert_eq!(earlier_ejections(&s, &p, 1_000_000 + 299_999), 3);
        assert_eq!(earlier_ejections(&s, &p, 1_000_000 + 300_000), 0);
    }

    fn passive() -> PassiveSpec {
        PassiveSpec {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            on_5xx: false,
        }
    }

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let p = PassiveSpec {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            on_5xx: false,
        };
        let times: Vec<u64> = (0..6).map(|e| ejection_ms(&p, e) / 1000).collect();
        assert_eq!(times, vec![30, 60, 120, 240, 300, 300]);
    }
}
