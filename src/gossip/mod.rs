//! The lock-free cross-shard channel (DESIGN.md §2): what one shard learns about a backend
//! reaches every other shard within a tick or two.
//!
//! Owns the authoritative per-target state word (a generation-stamped snapshot in one
//! atomic, so stale news always loses) and one bounded lock-free inbox per shard. A sender
//! never blocks and never wakes anyone: it updates the state word and pushes a notice into
//! each other shard's inbox; a full inbox only sets its `behind` flag, after which the
//! receiver re-reads every state word (coalescing: memory stays bounded however far a shard
//! falls behind). Receivers drain their inbox on their own tick. Must not touch sockets or
//! shard-local state; shards apply what they receive themselves.
//!
//! Propagation bound: a change is visible to every shard within one tick of the slowest
//! shard (`server.gossip_interval`, default 5 ms) plus that shard's current task, i.e. well
//! under two ticks on a shard that is not overloaded.

use crossbeam_queue::ArrayQueue;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
}

impl Reason {
    fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::ActiveCheckPassed,
            2 => Reason::ActiveCheckFailed,
            3 => Reason::ConsecutiveFailures,
            4 => Reason::EjectionEnded,
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
        }
    }
}

/// A target's cluster-wide state: what every shard converges to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    /// Bumped on every change; a shard ignores news older than what it has.
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
}

impl TargetState {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms > now_ms
    }
}

// The state word: generation (32) | unhealthy (8) | ejections (8) | reason (8).
fn pack(s: &TargetState) -> u64 {
    (u64::from(s.generation) << 32)
        | (u64::from(s.unhealthy) << 16)
        | (u64::from(s.ejections) << 8)
        | u64::from(s.reason as u8)
}

/// One target's slot: the state word plus the times that do not fit in it. A writer stores
/// the times before publishing the word (Release); a reader loads the word first (Acquire).
struct Slot {
    word: AtomicU64,
    ejected_until_ms: AtomicU64,
    changed_ms: AtomicU64,
}

/// A notice that target `slot` changed; the receiver reads the slot for the state.
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
                    ejected_until_ms: AtomicU64::new(0),
                    changed_ms: AtomicU64::new(0),
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
        let word = s.word.load(Ordering::Acquire);
        TargetState {
            generation: (word >> 32) as u32,
            unhealthy: (word >> 16) & 0xff != 0,
            ejections: ((word >> 8) & 0xff) as u8,
            reason: Reason::from_u8((word & 0xff) as u8),
            ejected_until_ms: s.ejected_until_ms.load(Ordering::Acquire),
            changed_ms: s.changed_ms.load(Ordering::Acquire),
        }
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
            let current = self.read(slot);
            let mut next = change(&current)?;
            next.generation = current.generation.wrapping_add(1);
            next.changed_ms = now_ms();
            // Times first, then the word that makes them current. A reader racing this may
            // pair the old word with new times for an instant; the next notice corrects it.
            s.ejected_until_ms
                .store(next.ejected_until_ms, Ordering::Release);
            s.changed_ms.store(next.changed_ms, Ordering::Release);
            let old_word = pack(&current);
            if s.word
                .compare_exchange(old_word, pack(&next), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
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
