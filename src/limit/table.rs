//! One policy's cells on one shard: a table bounded by `max_keys`, ordered by when each key
//! was last seen. A new key takes a free slot, else the slot of the least recently seen key
//! *at rest* (its cell says what a fresh one would: forgetting it loses nothing), looking at
//! the [`EVICTION_SCAN`] least recently seen keys. When none of them is at rest, the new key
//! gets no cell of its own and shares the table's *overflow* cell: a flood of distinct keys
//! is then limited as one key, and no key that is over its limit is ever reset to make room.
//!
//! Memory: [`BYTES_PER_KEY`] per key at most (slot plus index entry), allocated as keys
//! arrive, never more than `max_keys` of them.

use super::gcra::{Algorithm, Cell, Clocks};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// How many of the least recently seen keys an insertion looks at for one at rest.
pub const EVICTION_SCAN: usize = 16;

/// The memory one key takes in a full table: its slot (48 bytes) and its index entry (a
/// 16-byte `(u64, u32)` plus one control byte, at hashbrown's 7/8 load): 68 bytes. While a
/// table fills, doubling can leave up to twice that allocated per key.
pub const BYTES_PER_KEY: usize =
    std::mem::size_of::<Slot>() + (std::mem::size_of::<(u64, u32)>() + 1) * 8 / 7 + 1;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    key: u64,
    cell: Cell,
    /// Usage admitted here and not yet told to the other shards (global / cluster scopes).
    unpublished: i64,
    /// Towards more recently seen.
    newer: u32,
    /// Towards less recently seen.
    older: u32,
}

/// Keys are already hashes (keyed SipHash or SHA-256): index them as they are.
#[derive(Default)]
pub struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where a key's cell lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Slot(u32),
    Overflow,
}

pub struct Table {
    index: HashMap<u64, u32, BuildHasherDefault<KeyIsHash>>,
    slots: Vec<Slot>,
    /// Most recently seen.
    newest: u32,
    /// Least recently seen.
    oldest: u32,
    max_keys: usize,
    overflow: Cell,
    overflow_unpublished: i64,
    /// Slots with unpublished usage (each listed once).
    dirty: Vec<u32>,
    overflow_dirty: bool,
}

impl Table {
    pub fn new(max_keys: usize, algorithm: &Algorithm, now: Clocks) -> Table {
        Table {
            index: HashMap::default(),
            slots: Vec::new(),
            newest: NONE,
            oldest: NONE,
            max_keys: max_keys.max(1),
            overflow: algorithm.empty(now),
            overflow_unpublished: 0,
            dirty: Vec::new(),
            overflow_dirty: false,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn set_max_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys.max(1);
    }

    /// The key's place, making one (and marking the key seen) if it has none.
    pub fn place(&mut self, key: u64, algorithm: &Algorithm, now: Clocks) -> Place {
        if let Some(&slot) = self.index.get(&key) {
            self.touch(slot);
            return Place::Slot(slot);
        }
        let slot = if self.slots.len() < self.max_keys {
            self.slots.push(Slot {
                key,
                cell: algorithm.empty(now),
                unpublished: 0,
                newer: NONE,
                older: NONE,
            });
            (self.slots.len() - 1) as u32
        } else {
            match self.reclaim(algorithm, now) {
                Some(slot) => {
                    let s = &mut self.slots[slot as usize];
                    s.key = key;
                    s.cell = algorithm.empty(now);
                    s.unpublished = 0;
                    slot
                }
                None => return Place::Overflow,
            }
        };
        self.index.insert(key, slot);
        self.link_newest(slot);
        Place::Slot(slot)
    }

    /// The key's place if it has one, without marking it seen.
    pub fn existing(&self, key: u64) -> Option<Place> {
        self.index.get(&key).map(|&s| Place::Slot(s))
    }

    /// The key's place if it has one (charges from elsewhere for a key this shard does not
    /// hold make it one only when that loses nothing).
    pub fn existing_or_place(
        &mut self,
        key: u64,
        algorithm: &Algorithm,
        now: Clocks,
    ) -> Option<Place> {
        match self.place(key, algorithm, now) {
            Place::Overflow => None,
            place => Some(place),
        }
    }

    pub fn cell(&mut self, place: Place) -> &mut Cell {
        match place {
            Place::Slot(s) => &mut self.slots[s as usize].cell,
            Place::Overflow => &mut self.overflow,
        }
    }

    /// Notes usage admitted here, for the next publication.
    pub fn note_usage(&mut self, place: Place, n: i64) {
        match place {
            Place::Slot(s) => {
                let slot = &mut self.slots[s as usize];
                if slot.unpublished == 0 {
                    self.dirty.push(s);
                }
                slot.unpublished += n;
            }
            Place::Overflow => {
                self.overflow_unpublished += n;
                self.overflow_dirty = true;
            }
        }
    }

    /// Takes every key's unpublished usage: `(key, n, cell)`; the overflow cell's usage is
    /// kept here (it has no key the others would know).
    pub fn take_usage(&mut self, mut out: impl FnMut(u64, i64, &Cell)) {
        for s in self.dirty.drain(..) {
            let Some(slot) = self.slots.get_mut(s as usize) else {
                continue;
            };
            if slot.unpublished != 0 {
                out(slot.key, slot.unpublished, &slot.cell);
                slot.unpublished = 0;
            }
        }
        self.overflow_unpublished = 0;
        self.overflow_dirty = false;
    }

    /// Visits every cell (a reload rescaling them).
    pub fn for_each_cell(&mut self, mut f: impl FnMut(&mut Cell)) {
        for slot in &mut self.slots {
            f(&mut slot.cell);
        }
        f(&mut self.overflow);
    }

    /// Evicts keys at rest until at most `max_keys` remain (after a reload lowered it).
    pub fn trim(&mut self, algorithm: &Algorithm, now: Clocks) {
        while self.index.len() > self.max_keys {
            let Some(slot) = self.reclaim(algorithm, now) else {
                return;
            };
            // The freed slot stays allocated but unindexed; swap it out of the list.
            self.free_tail_slot(slot);
        }
    }

    /// The least recently seen slot at rest among the oldest few, unlinked and unindexed.
    fn reclaim(&mut self, algorithm: &Algorithm, now: Clocks) -> Option<u32> {
        let mut at = self.oldest;
        for _ in 0..EVICTION_SCAN {
            if at == NONE {
                return None;
            }
            let slot = &self.slots[at as usize];
            if slot.unpublished == 0 && algorithm.at_rest(&slot.cell, now) {
                self.index.remove(&slot.key);
                self.unlink(at);
                return Some(at);
            }
            at = slot.newer;
        }
        None
    }

    /// Removes an unlinked, unindexed slot from the vector (moving the last slot into it).
    fn free_tail_slot(&mut self, slot: u32) {
        let last = (self.slots.len() - 1) as u32;
        if slot != last {
            // The last slot moves into the freed one, keeping its place in the order.
            let moved = self.slots[last as usize].clone();
            match moved.newer {
                NONE => self.newest = slot,
                n => self.slots[n as usize].older = slot,
            }
            match moved.older {
                NONE => self.oldest = slot,
                o => self.slots[o as usize].newer = slot,
            }
            self.slots[slot as usize] = moved;
            let key = self.slots[slot as usize].key;
            self.index.insert(key, slot);
            for d in &mut self.dirty {
                if *d == last {
                    *d = slot;
                }
            }
        } else {
            self.dirty.retain(|&d| d != last);
        }
        self.slots.pop();
    }

    fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let s = &self.slots[slot as usize];
            (s.newer, s.older)
        };
        match newer {
            NONE => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        let s = &mut self.slots[slot as usize];
        s.newer = NONE;
        s.older = NONE;
    }

    fn link_newest(&mut self, slot: u32) {
        let old_newest = self.newest;
        {
            let s = &mut self.slots[slot as usize];
            s.older = old_newest;
            s.newer = NONE;
        }
        match old_newest {
            NONE => self.oldest = slot,
            n => self.slots[n as usize].newer = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Clocks {
        Clocks {
            mono_us: 3_600_000_000 + s * 1_000_000,
            unix_us: s * 1_000_000,
        }
    }

    const ONE_PER_10S: Algorithm = Algorithm::Gcra {
        interval_us: 10_000_000,
        tolerance_us: 0,
    };

    fn admit(t: &mut Table, key: u64, now: Clocks) -> (Place, bool) {
        let place = t.place(key, &ONE_PER_10S, now);
        (place, ONE_PER_10S.check(t.cell(place), now, 1).allowed)
    }

    #[test]
    fn keys_over_their_limit_are_never_reset_to_make_room() {
        let mut t = Table::new(4, &ONE_PER_10S, at(0));
        for key in 0..4 {
            assert!(admit(&mut t, key, at(0)).1);
        }
        // Full of keys that are not at rest: a new key shares the overflow cell.
        assert_eq!(admit(&mut t, 100, at(1)), (Place::Overflow, true));
        assert_eq!(admit(&mut t, 101, at(1)), (Place::Overflow, false));
        // And key 0 is still limited.
        assert!(!admit(&mut t, 0, at(1)).1);
        assert_eq!(t.len(), 4);
        // Once keys are at rest, the least recently seen one makes room.
        let (place, allowed) = admit(&mut t, 200, at(30));
        assert!(matches!(place, Place::Slot(_)) && allowed);
        assert_eq!(t.len(), 4);
        assert!(
            !t.index.contains_key(&1),
            "key 1 was the least recently seen"
        );
        assert!(t.index.contains_key(&0));
    }

    #[test]
    fn a_key_costs_what_the_docs_say() {
        assert_eq!(std::mem::size_of::<Slot>(), 48);
        assert_eq!(BYTES_PER_KEY, 68);
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_memory_flat() {
        let mut t = Table::new(1000, &ONE_PER_10S, at(0));
        for key in 0..1_000_000u64 {
            admit(&mut t, key, at(key / 1000));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.slots.len(), 1000);
        assert!(t.slots.capacity() < 2048);
    }

    #[test]
    fn usage_is_taken_once_and_trim_keeps_busy_keys() {
        let mut t = Table::new(8, &ONE_PER_10S, at(0));
        for key in 0..8 {
            let (place, _) = admit(&mut t, key, at(0));
            t.note_usage(place, 1);
        }
        let mut seen = Vec::new();
        t.take_usage(|k, n, _| seen.push((k, n)));
        assert_eq!(seen.len(), 8);
        let mut again = 0;
        t.take_usage(|_, _, _| again += 1);
        assert_eq!(again, 0);
        t.set_max_keys(2);
        t.trim(&ONE_PER_10S, at(1));
        assert_eq!(t.len(), 8, "nothing at rest: nothing evicted");
        t.trim(&ONE_PER_10S, at(60));
        assert_eq!(t.len(), 2);
        assert_eq!(t.slots.len(), 2);
        for key in 6..8 {
            assert!(t.index.contains_key(&key), "the most recent keys stay");
        }
        // The remaining slots are consistent: touching and evicting still work.
        for key in 6..8 {
            assert!(admit(&mut t, key, at(60)).1);
        }
        assert!(admit(&mut t, 50, at(100)).1);
    }

    #[test]
    fn trimming_keys_still_on_the_dirty_list_keeps_it_sound() {
        // A reload lowering max_keys while a key's usage netted to zero (a concurrency slot
        // taken and given back) leaves it on the dirty list though it may be evicted: the
        // evicted slots must leave the list, and moved ones must keep their usage.
        let mut t = Table::new(8, &ONE_PER_10S, at(0));
        for key in 0..8 {
            let (place, _) = admit(&mut t, key, at(0));
            t.note_usage(place, 1);
            if key < 7 {
                t.note_usage(place, -1);
            }
        }
        t.set_max_keys(1);
        t.trim(&ONE_PER_10S, at(60));
        assert_eq!(t.len(), 1, "only the key with usage to publish stays");
        assert!(t.index.contains_key(&7));
        let mut published = Vec::new();
        t.take_usage(|k, n, _| published.push((k, n)));
        assert_eq!(published, vec![(7, 1)]);
        let (place, _) = admit(&mut t, 99, at(100));
        t.note_usage(place, 1);
        let mut again = Vec::new();
        t.take_usage(|k, n, _| again.push((k, n)));
        assert_eq!(again, vec![(99, 1)]);
    }
}
