//! The lock-free cross-shard channel (DESIGN.md §2): what one shard learns about a backend
//! reaches every other shard within a tick or two.
//!
//! Owns the authoritative per-target state word (the whole state, generation-stamped, in one
//! atomic updated by compare-and-swap) and one bounded lock-free inbox per shard. Notices
//! carry no state: a receiver reads the current word, so stale news cannot arrive out of
//! order. A sender never blocks and never wakes anyone: it swaps the state word and pushes a
//! notice into each other shard's inbox; a full inbox only sets its `behind` flag, after which the
//! receiver re-reads every state word (coalescing: memory stays bounded however far a shard
//! falls behind). Receivers drain their inbox on their own tick. Must not touch sockets or
//! shard-local state; shards apply what they receive themselves.
//!
//! Propagation bound: a change is visible to every shard within one tick of the slowest
//! shard (`server.gossip_interval`, default 5 ms) plus that shard's current task, i.e. well
//! under two ticks on a shard that is not overloaded.

pub mod usage;

use crossbeam_queue::ArrayQueue;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds since the process started: a clock every thread can compare.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Why a target's state last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    Initial = 0,
    ActiveCheckPassed = 1,
    ActiveCheckFailed = 2,
    ConsecutiveFailures = 3,
    EjectionEnded = 4,
    /// `POST /upstreams/.../drain|disable|enable`.
    Operator = 5,
}

impl Reason {
    fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::ActiveCheckPassed,
            2 => Reason::ActiveCheckFailed,
            3 => Reason::ConsecutiveFailures,
            4 => Reason::EjectionEnded,
            5 => Reason::Operator,
            _ => Reason::Initial,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::ActiveCheckPassed => "active check passed",
            Reason::ActiveCheckFailed => "active check failed",
            Reason::ConsecutiveFailures => "consecutive failures",
            Reason::EjectionEnded => "ejection ended",
            Reason::Operator => "set by an operator",
        }
    }
}

/// What went wrong, precisely, when a target was found failing (shown in logs and
/// `/upstreams`; not part of the state word, so it may lag the state by an instant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    ConnectRefused,
    ConnectTimedOut,
    /// Any other connect error (unreachable, reset during connect).
    ConnectFailed,
    Tls,
    /// The connection closed or reset before a response head arrived.
    NoResponse,
    ResponseTimedOut,
    /// An unexpected status (a health check's), or a 5xx (passive detection).
    Status(u16),
    /// Not a parseable HTTP response.
    BadResponse,
}

impl Fault {
    pub fn packed(self) -> u32 {
        let (kind, status) = match self {
            Fault::None => (0, 0),
            Fault::ConnectRefused => (1, 0),
            Fault::ConnectTimedOut => (2, 0),
            Fault::ConnectFailed => (3, 0),
            Fault::Tls => (4, 0),
            Fault::NoResponse => (5, 0),
            Fault::ResponseTimedOut => (6, 0),
            Fault::Status(s) => (7, s),
            Fault::BadResponse => (8, 0),
        };
        (kind << 16) | u32::from(status)
    }

    pub fn from_packed(v: u32) -> Fault {
        match v >> 16 {
            1 => Fault::ConnectRefused,
            2 => Fault::ConnectTimedOut,
            3 => Fault::ConnectFailed,
            4 => Fault::Tls,
            5 => Fault::NoResponse,
            6 => Fault::ResponseTimedOut,
            7 => Fault::Status(v as u16),
            8 => Fault::BadResponse,
            _ => Fault::None,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Fault::None => String::new(),
            Fault::ConnectRefused => "connection refused".into(),
            Fault::ConnectTimedOut => "connect timed out".into(),
            Fault::ConnectFailed => "connect failed".into(),
            Fault::Tls => "TLS handshake failed".into(),
            Fault::NoResponse => "closed before answering".into(),
            Fault::ResponseTimedOut => "response timed out".into(),
            Fault::Status(s) => format!("status {s}"),
            Fault::BadResponse => "not an HTTP response".into(),
        }
    }
}

/// The reason a state change is shown with: `active check failed (connection refused)`.
pub fn describe_change(reason: Reason, fault: Fault) -> String {
    match fault {
        Fault::None => reason.describe().to_string(),
        f => format!("{} ({})", reason.describe(), f.describe()),
    }
}

/// A target's cluster-wide state: what every shard converges to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    /// Bumped on every change (16 bits, wrapping): tells whether a shard's view is current.
    pub generation: u32,
    /// Active checks say it is down.
    pub unhealthy: bool,
    /// How many times passive detection ejected it (drives the doubling ejection time).
    pub ejections: u8,
    pub reason: Reason,
    /// Ejected until this [`now_ms`] instant (0: not ejected).
    pub ejected_until_ms: u64,
    /// When the change happened ([`now_ms`]).
    pub changed_ms: u64,
    /// What failed, when the change is a failure (display only).
    pub fault: Fault,
    /// What an operator set: in service, draining or disabled.
    pub admin: AdminState,
}

/// A target's operator state (`POST /upstreams/NAME/targets/ADDR/drain|disable|enable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Takes requests by its health.
    #[default]
    Enabled = 0,
    /// No new requests, except those a sticky cookie pins to it; in-flight ones finish;
    /// health checks go on (so it can be seen healthy before it is enabled again).
    Draining = 1,
    /// No requests at all and no health checks (maintenance).
    Disabled = 2,
}

impl AdminState {
    pub fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Draining,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

impl TargetState {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms > now_ms
    }
}

// The state word holds the whole state, so one compare-and-swap publishes it atomically:
// generation (16) | operator state (2) | reason (6) | ejections (7) | unhealthy (1) |
// ejected until (32, in tenths of a second since the process started: 13 years).
fn pack(s: &TargetState) -> u64 {
    let until_ds = s.ejected_until_ms.div_ceil(100).min(u64::from(u32::MAX));
    (u64::from(s.generation & 0xffff) << 48)
        | (u64::from(s.admin as u8 & 0x3) << 46)
        | (u64::from(s.reason as u8 & 0x3f) << 40)
        | (u64::from(s.ejections & 0x7f) << 33)
        | (u64::from(s.unhealthy) << 32)
        | until_ds
}

fn unpack(word: u64, changed_ms: u64, fault: Fault) -> TargetState {
    TargetState {
        generation: (word >> 48) as u32,
        admin: AdminState::from_u8(((word >> 46) & 0x3) as u8),
        reason: Reason::from_u8(((word >> 40) & 0x3f) as u8),
        ejections: ((word >> 33) & 0x7f) as u8,
        unhealthy: (word >> 32) & 1 == 1,
        ejected_until_ms: (word & 0xffff_ffff) * 100,
        changed_ms,
        fault,
    }
}

/// One target's slot: the state word, and when it last changed (for display only: it is
/// stored after the word and may lag it for an instant).
struct Slot {
    word: AtomicU64,
    changed_ms: AtomicU64,
    fault: AtomicU32,
}

/// A notice that target `slot` changed; the receiver reads the slot for the (current) state,
/// so a notice can never carry stale news.
#[derive(Debug, Clone, Copy)]
pub struct Notice {
    pub slot: usize,
    pub generation: u32,
}

struct Inbox {
    queue: ArrayQueue<Notice>,
    behind: AtomicBool,
}

pub struct Gossip {
    slots: Vec<Slot>,
    inboxes: Vec<Inbox>,
}

impl Gossip {
    /// `targets` slots (every target of every upstream, flattened), `shards` inboxes of
    /// `capacity` notices each.
    pub fn new(targets: usize, shards: usize, capacity: usize) -> Gossip {
        Gossip {
            slots: (0..targets)
                .map(|_| Slot {
                    word: AtomicU64::new(0),
                    changed_ms: AtomicU64::new(0),
                    fault: AtomicU32::new(0),
                })
                .collect(),
            inboxes: (0..shards)
                .map(|_| Inbox {
                    queue: ArrayQueue::new(capacity.max(1)),
                    behind: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    pub fn targets(&self) -> usize {
        self.slots.len()
    }

    /// The current cluster-wide state of `slot`.
    pub fn read(&self, slot: usize) -> TargetState {
        let s = &self.slots[slot];
        unpack(
            s.word.load(Ordering::Acquire),
            s.changed_ms.load(Ordering::Relaxed),
            Fault::from_packed(s.fault.load(Ordering::Relaxed)),
        )
    }

    /// Applies `change` to the current state of `slot` and tells every other shard. Returns
    /// the new state, or `None` when `change` declines (nothing to do). Lock-free: on a race
    /// with another shard the change is re-applied to the newer state.
    pub fn update(
        &self,
        from_shard: usize,
        slot: usize,
        mut change: impl FnMut(&TargetState) -> Option<TargetState>,
    ) -> Option<TargetState> {
        let s = &self.slots[slot];
        loop {
            let current_word = s.word.load(Ordering::Acquire);
            let current = unpack(
                current_word,
                s.changed_ms.load(Ordering::Relaxed),
                Fault::from_packed(s.fault.load(Ordering::Relaxed)),
            );
            let mut next = change(&current)?;
            next.generation = (current.generation + 1) & 0xffff;
            next.changed_ms = now_ms();
            let next_word = pack(&next);
            next = unpack(next_word, next.changed_ms, next.fault); // as readers will see it (rounded)
            if s.word
                .compare_exchange(current_word, next_word, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.changed_ms.store(next.changed_ms, Ordering::Relaxed);
                s.fault.store(next.fault.packed(), Ordering::Relaxed);
                self.notify(from_shard, slot, next.generation);
                return Some(next);
            }
        }
    }

    fn notify(&self, from_shard: usize, slot: usize, generation: u32) {
        for (shard, inbox) in self.inboxes.iter().enumerate() {
            if shard != from_shard && inbox.queue.push(Notice { slot, generation }).is_err() {
                inbox.behind.store(true, Ordering::Release);
            }
        }
    }

    /// Hands every pending notice for `shard` to `apply` (with the slot's current state);
    /// after an overflow, every slot. Returns how many notices were applied.
    pub fn drain(&self, shard: usize, mut apply: impl FnMut(usize, TargetState)) -> usize {
        let inbox = &self.inboxes[shard];
        let mut n = 0;
        if inbox.behind.swap(false, Ordering::AcqRel) {
            while inbox.queue.pop().is_some() {}
            for slot in 0..self.slots.len() {
                apply(slot, self.read(slot));
                n += 1;
            }
            return n;
        }
        while let Some(notice) = inbox.queue.pop() {
            apply(notice.slot, self.read(notice.slot));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn eject(s: &TargetState) -> Option<TargetState> {
        Some(TargetState {
            ejections: s.ejections.saturating_add(1),
            reason: Reason::ConsecutiveFailures,
            ejected_until_ms: u64::MAX,
            ..*s
        })
    }

    #[test]
    fn every_other_shard_hears_of_a_change_once() {
        let g = Gossip::new(4, 3, 16);
        let state = g.update(0, 2, eject).unwrap();
        assert_eq!(state.generation, 1);
        let mut seen = Vec::new();
        assert_eq!(g.drain(1, |slot, s| seen.push((slot, s))), 1);
        assert_eq!(seen[0].0, 2);
        assert_eq!(seen[0].1.ejections, 1);
        assert_eq!(g.drain(1, |_, _| {}), 0);
        assert_eq!(
            g.drain(0, |_, _| {}),
            0,
            "the sender does not notify itself"
        );
        assert_eq!(g.drain(2, |_, _| {}), 1);
    }

    #[test]
    fn a_full_inbox_coalesces_into_a_resync() {
        let g = Gossip::new(3, 2, 2);
        for _ in 0..10 {
            g.update(0, 1, eject);
        }
        let mut slots = Vec::new();
        g.drain(1, |slot, s| slots.push((slot, s.generation)));
        assert_eq!(slots, vec![(0, 0), (1, 10), (2, 0)]);
    }

    #[test]
    fn the_state_word_round_trips() {
        let s = TargetState {
            generation: 65_535,
            unhealthy: true,
            ejections: 100,
            reason: Reason::ActiveCheckFailed,
            ejected_until_ms: 123_456_700,
            changed_ms: 9,
            fault: Fault::Status(503),
            admin: AdminState::Disabled,
        };
        assert_eq!(unpack(pack(&s), 9, Fault::from_packed(s.fault.packed())), s);
        for f in [
            Fault::None,
            Fault::ConnectRefused,
            Fault::Status(0),
            Fault::BadResponse,
        ] {
            assert_eq!(Fault::from_packed(f.packed()), f);
        }
    }

    #[test]
    fn declined_changes_send_nothing() {
        let g = Gossip::new(1, 2, 4);
        assert!(g.update(0, 0, |_| None).is_none());
        assert_eq!(g.drain(1, |_, _| {}), 0);
    }

    /// Concurrent senders on every shard: no update is lost (the generation counts them all),
    /// every receiver ends with the latest state, and inbox memory stays bounded.
    #[test]
    fn concurrent_senders_converge() {
        const SHARDS: usize = 4;
        const PER_SHARD: u32 = 5_000;
        let g = Arc::new(Gossip::new(2, SHARDS, 64));
        let handles: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let g = g.clone();
                std::thread::spawn(move || {
                    // this shard's view: its own changes applied at once, others' as heard
                    let mut view = [0u32; 2];
                    for i in 0..PER_SHARD {
                        let slot = (i % 2) as usize;
                        let mine = g
                            .update(shard, slot, |s| {
                                Some(TargetState {
                                    unhealthy: !s.unhealthy,
                                    ..*s
                                })
                            })
                            .unwrap();
                        view[slot] = view[slot].max(mine.generation);
                        g.drain(shard, |slot, s| view[slot] = view[slot].max(s.generation));
                    }
                    view
                })
            })
            .collect();
        let views: Vec<[u32; 2]> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let total = g.read(0).generation + g.read(1).generation;
        assert_eq!(total, SHARDS as u32 * PER_SHARD, "no update lost");
        for (shard, mut view) in views.into_iter().enumerate() {
            g.drain(shard, |slot, s| view[slot] = view[slot].max(s.generation));
            for (slot, seen) in view.iter().enumerate() {
                assert_eq!(*seen, g.read(slot).generation, "shard {shard} converged");
            }
        }
    }
}
