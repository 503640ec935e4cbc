//! Secrets in the config are references, never inline values: `"env:NAME"` or `"file:PATH"`
//! (relative paths resolve against the config file's folder). Only the reference is ever
//! printed; the value stays in memory.

use std::fmt;
use std::path::Path;

/// A secret value loaded from its reference. It never prints: `Debug` shows the reference
/// only and `Display` shows `<redacted>`, so a secret cannot reach a log line or an error by
/// accident.
/// What shows in place of any secret.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone)]
pub struct Secret {
    reference: String,
    value: Vec<u8>,
}

impl Secret {
    /// Loads `reference` (`"env:NAME"` or `"file:PATH"`, relative to `base`).
    pub fn load(reference: &str, base: &Path) -> Result<Secret, String> {
        Ok(Secret {
            reference: reference.to_string(),
            value: resolve(reference, base)?,
        })
    }

    /// A secret made here (a generated key), never written anywhere.
    pub fn generated(reference: &str, value: Vec<u8>) -> Secret {
        Secret {
            reference: reference.to_string(),
            value,
        }
    }

    /// The value itself, for code that derives something from it (never to print).
    pub fn expose(&self) -> &[u8] {
        &self.value
    }

    /// Where the value came from (`env:NAME`), safe to show.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Whether `candidate` is the secret, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(&self.value, candidate)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.reference)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Byte equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The bytes a secret reference points at, or a message saying what was wrong (naming the
/// reference, never the value).
/// A secret file larger than this is refused (keys and PEM bundles are a few KiB at most).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

pub fn resolve(reference: &str, base: &Path) -> Result<Vec<u8>, String> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("environment variable {name:?} is not set"))?
            .into_bytes()
    } else if let Some(path) = reference.strip_prefix("file:") {
        let path = base.join(path);
        let mut bytes = Vec::new();
        // Bounded: a path pointing at a log or a device must not be read whole.
        std::fs::File::open(&path)
            .and_then(|f| {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, MAX_SECRET_BYTES + 1),
                    &mut bytes,
                )
            })
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_SECRET_BYTES {
            return Err(format!(
                "secret file {} is over {MAX_SECRET_BYTES} bytes: not a secret",
                path.display()
            ));
        }
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        bytes
    } else {
        return Err(
            "a secret must be \"env:NAME\" or \"file:PATH\", not written inline (the value is not shown)"
                .to_string(),
        );
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
    fn secrets_never_print_their_value() {
        let dir = std::env::temp_dir().join(format!("rg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cr3t-value\n").unwrap();
        let secret = Secret::load("file:token", &dir).unwrap();
        assert!(secret.matches(b"s3cr3t-value"));
        assert!(!secret.matches(b"s3cr3t-valuX"));
        assert!(!secret.matches(b"s3cr3t"));
        for shown in [format!("{secret}"), format!("{secret:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert_eq!(secret.reference(), "file:token");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn inline_secrets_are_refused_without_echoing_them() {
        let e = resolve("hunter2-very-secret", Path::new(".")).unwrap_err();
        assert!(!e.contains("very-secret"), "{e}");
        assert!(resolve("env:RINGGATE_TEST_SURELY_UNSET", Path::new(".")).is_err());
    }
}
