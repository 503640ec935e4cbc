//! Secrets in the config are references, never inline values: `"env:NAME"` or `"file:PATH"`
//! (relative paths resolve against the config file's folder). Only the reference is ever
//! printed; the value stays in memory.

use std::path::Path;

/// The bytes a secret reference points at, or a message saying what was wrong (naming the
/// reference, never the value).
pub fn resolve(reference: &str, base: &Path) -> Result<Vec<u8>, String> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("environment variable {name:?} is not set"))?
            .into_bytes()
    } else if let Some(path) = reference.strip_prefix("file:") {
        let path = base.join(path);
        let mut bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        bytes
    } else {
        return Err(format!(
            "a secret must be \"env:NAME\" or \"file:PATH\", not written inline (got a value starting with {:?})",
            reference.chars().take(4).collect::<String>()
        ));
    };
    if value.is_empty() {
        return Err(format!("secret {reference} is empty"));
    }
    Ok(value)
}

/// 32 random bytes, for keys that only need to live as long as the process.
pub fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
        // No system randomness at all: fall back to the process's seed (still unguessable
        // from outside in practice, and only used for opaque ids).
        let seed = crate::http::random_seed();
        key[..8].copy_from_slice(&seed.to_le_bytes());
    }
    key
}

/// An opaque id for `label`: the first 128 bits of HMAC-SHA256(key, label), hex. Without the
/// key nobody can map an id back to its label or forge the id of another label.
pub fn keyed_id(key: &[u8], label: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, label);
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_depend_on_the_key() {
        let a = keyed_id(b"key-a", b"10.0.0.1:80");
        assert_eq!(a, keyed_id(b"key-a", b"10.0.0.1:80"));
        assert_ne!(a, keyed_id(b"key-b", b"10.0.0.1:80"));
        assert_ne!(a, keyed_id(b"key-a", b"10.0.0.2:80"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn inline_secrets_are_refused_without_echoing_them() {
        let e = resolve("hunter2-very-secret", Path::new(".")).unwrap_err();
        assert!(!e.contains("very-secret"), "{e}");
        assert!(resolve("env:RINGGATE_TEST_SURELY_UNSET", Path::new(".")).is_err());
    }
}
