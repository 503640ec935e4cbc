//! API keys: stored as the SHA-256 of the key, looked up by that hash, compared in constant
//! time. The plain key lives only in the request buffer; `generate` makes new ones from the
//! OS CSPRNG.

use base64::Engine;
use std::collections::HashMap;

/// One configured key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub sha256: [u8; 32],
    /// Index of its consumer in [`super::AuthSpec::consumers`].
    pub consumer: usize,
    /// The key's name (safe to log).
    pub id: Box<str>,
    /// Unix seconds after which the key is refused.
    pub expires: Option<u64>,
}

/// What a presented key turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Valid { consumer: usize },
    Expired,
    Unknown,
}

/// The keys of every consumer, by their hash.
#[derive(Debug, Default)]
pub struct ApiKeyIndex {
    /// Keyed by the hash's first 8 bytes; the whole hash is compared in constant time.
    by_prefix: HashMap<u64, Vec<KeyEntry>>,
}

impl ApiKeyIndex {
    pub fn insert(&mut self, entry: KeyEntry) {
        self.by_prefix
            .entry(prefix(&entry.sha256))
            .or_default()
            .push(entry);
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Checks a key as presented, at `now` (Unix seconds).
    pub fn check(&self, key: &[u8], now: u64) -> KeyCheck {
        let hash = sha256(key);
        let Some(candidates) = self.by_prefix.get(&prefix(&hash)) else {
            return KeyCheck::Unknown;
        };
        for entry in candidates {
            if crate::config::constant_time_eq(&entry.sha256, &hash) {
                return match entry.expires {
                    Some(at) if now >= at => KeyCheck::Expired,
                    _ => KeyCheck::Valid {
                        consumer: entry.consumer,
                    },
                };
            }
        }
        KeyCheck::Unknown
    }
}

fn prefix(hash: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|&b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

/// 64 hex digits (either case) to 32 bytes.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// A new key: `rgk_` and 32 random bytes (256 bits) from the OS CSPRNG, base64url.
pub fn generate() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!(
        "rgk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(expires: Option<u64>) -> ApiKeyIndex {
        let mut index = ApiKeyIndex::default();
        index.insert(KeyEntry {
            sha256: sha256(b"good-key"),
            consumer: 3,
            id: "k1".into(),
            expires,
        });
        index
    }

    #[test]
    fn keys_are_found_by_hash_and_expire() {
        assert_eq!(
            index(None).check(b"good-key", 100),
            KeyCheck::Valid { consumer: 3 }
        );
        assert_eq!(index(None).check(b"good-kez", 100), KeyCheck::Unknown);
        assert_eq!(index(None).check(b"", 100), KeyCheck::Unknown);
        assert_eq!(
            index(Some(200)).check(b"good-key", 199),
            KeyCheck::Valid { consumer: 3 }
        );
        assert_eq!(index(Some(200)).check(b"good-key", 200), KeyCheck::Expired);
    }

    #[test]
    fn generated_keys_are_long_url_safe_and_distinct() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(
            a[4..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        let hash = hex(&sha256(a.as_bytes()));
        assert_eq!(parse_sha256_hex(&hash), Some(sha256(a.as_bytes())));
        assert_eq!(parse_sha256_hex("zz"), None);
    }
}
