//! A shard's cache of verified tokens: keyed by the SHA-256 of the token (an attacker
//! cannot make two tokens share an entry), bounded, least recently used evicted first. A
//! hit is a hash lookup and two index swaps: no signature check, no allocation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// What a verified token gave, and until when it holds.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub identity: Arc<super::Identity>,
    /// Unix seconds after which the token is expired (its `exp` plus the leeway).
    pub valid_until: u64,
    /// The [`super::jwt::KeySet::version`] it was verified with.
    pub keys_version: u64,
}

const NONE: u32 = u32::MAX;

struct Slot {
    key: [u8; 32],
    verdict: Verdict,
    newer: u32,
    older: u32,
}

/// The keys are SHA-256 outputs: their first 8 bytes are already a uniform hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length then its bytes: keep the first 8 bytes after it.
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(first);
        }
    }
}

pub struct TokenCache {
    index: HashMap<[u8; 32], u32, BuildHasherDefault<DigestHasher>>,
    slots: Vec<Slot>,
    newest: u32,
    oldest: u32,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            index: HashMap::default(),
            slots: Vec::new(),
            newest: NONE,
            oldest: NONE,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The verdict for `key`, made the most recently used.
    pub fn get(&mut self, key: &[u8; 32]) -> Option<&Verdict> {
        let slot = *self.index.get(key)?;
        self.unlink(slot);
        self.push_newest(slot);
        Some(&self.slots[slot as usize].verdict)
    }

    /// Forgets `key` (an expired or stale verdict).
    pub fn remove(&mut self, key: &[u8; 32]) {
        if let Some(slot) = self.index.remove(key) {
            self.unlink(slot);
            // The slot is reused by the next insert: move the last slot into it.
            self.move_last_into(slot);
        }
    }

    pub fn insert(&mut self, key: [u8; 32], verdict: Verdict) {
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot as usize].verdict = verdict;
            self.unlink(slot);
            self.push_newest(slot);
            return;
        }
        if self.index.len() >= self.capacity {
            let oldest = self.oldest;
            let old_key = self.slots[oldest as usize].key;
            self.index.remove(&old_key);
            self.unlink(oldest);
            self.slots[oldest as usize].key = key;
            self.slots[oldest as usize].verdict = verdict;
            self.index.insert(key, oldest);
            self.push_newest(oldest);
            return;
        }
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            key,
            verdict,
            newer: NONE,
            older: NONE,
        });
        self.index.insert(key, slot);
        self.push_newest(slot);
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.newest = NONE;
        self.oldest = NONE;
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
    }

    fn push_newest(&mut self, slot: u32) {
        let old_newest = self.newest;
        {
            let s = &mut self.slots[slot as usize];
            s.newer = NONE;
            s.older = old_newest;
        }
        match old_newest {
            NONE => self.oldest = slot,
            n => self.slots[n as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// Fills the hole at `hole` (unlinked, not indexed) with the last slot.
    fn move_last_into(&mut self, hole: u32) {
        let last = (self.slots.len() - 1) as u32;
        if hole != last {
            self.unlink(last);
            self.slots.swap(hole as usize, last as usize);
            let key = self.slots[hole as usize].key;
            self.index.insert(key, hole);
            self.push_newest(hole);
        }
        self.slots.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(n: u64) -> Verdict {
        Verdict {
            identity: Arc::new(super::super::Identity::named("x")),
            valid_until: n,
            keys_version: 0,
        }
    }

    fn key(n: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = n;
        k[31] = n;
        k
    }

    #[test]
    fn least_recently_used_is_evicted_first() {
        let mut cache = TokenCache::new(3);
        for n in 1..=3 {
            cache.insert(key(n), verdict(u64::from(n)));
        }
        assert!(cache.get(&key(1)).is_some()); // 1 is now the newest; 2 the oldest
        cache.insert(key(4), verdict(4));
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&key(2)).is_none(),
            "2 was the least recently used"
        );
        for n in [1, 3, 4] {
            assert_eq!(cache.get(&key(n)).unwrap().valid_until, u64::from(n));
        }
    }

    #[test]
    fn removal_and_churn_keep_the_list_consistent() {
        let mut cache = TokenCache::new(8);
        for round in 0..200u32 {
            let n = (round * 7 % 13) as u8;
            if round % 3 == 0 {
                cache.remove(&key(n));
            } else {
                cache.insert(key(n), verdict(u64::from(n)));
            }
            assert!(cache.len() <= 8);
            // Walking from the newest reaches every entry exactly once.
            let mut seen = 0;
            let mut at = cache.newest;
            while at != NONE {
                let slot = &cache.slots[at as usize];
                assert_eq!(cache.index[&slot.key], at);
                seen += 1;
                at = slot.older;
            }
            assert_eq!(seen, cache.len());
            assert_eq!(cache.slots.len(), cache.len());
        }
    }
}
