//! Upstream credential injection: headers and query parameters the gateway adds to the
//! upstream request from a secret the client never sees (an `env:` or `file:` secret, or the
//! authenticated consumer's own). Values are only ever written into the upstream head; they
//! have no `Display` and their `Debug` shows the reference.

use crate::config::Secret;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an injected value comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `env:NAME`, read at load.
    Fixed(Secret),
    /// `file:PATH`, read at load and again whenever the file changes (the control thread
    /// pushes the new value to every shard).
    File { path: PathBuf, loaded: Secret },
    /// `consumer:NAME`: the authenticated consumer's `secrets.NAME`.
    Consumer(String),
}

/// One header or query parameter to set.
#[derive(Debug, Clone)]
pub struct Injection {
    /// Lower-case header name, or the parameter name.
    pub name: String,
    pub prefix: String,
    pub source: SecretSource,
    /// The secret's reference (`env:OPENAI_API_KEY`), its only printable form.
    pub reference: String,
}

/// A route's injections (its own and its upstream's, the route winning by name).
#[derive(Debug, Clone, Default)]
pub struct Injections {
    pub headers: Vec<Injection>,
    pub query: Vec<Injection>,
    /// `audit = true` on the route.
    pub audit: bool,
    /// Some injection needs the consumer's own secret.
    pub needs_consumer: bool,
}

impl Injections {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty()
    }

    /// Whether a client's header of this name is dropped (an injected name, any case).
    pub fn drops_header(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|i| i.name.as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn all(&self) -> impl Iterator<Item = &Injection> {
        self.headers.iter().chain(&self.query)
    }
}

/// What injection reads at request time: the consumer's secrets and the latest file values.
pub struct Resolver<'a> {
    pub consumer_secrets: Option<&'a HashMap<String, SecretSource>>,
    pub files: &'a HashMap<PathBuf, Arc<Secret>>,
}

impl<'a> Resolver<'a> {
    /// Every value these injections send, for [`redact`].
    pub fn values(&self, injections: &'a Injections) -> impl Iterator<Item = &'a [u8]> + '_ {
        injections.all().filter_map(|i| self.value(i))
    }

    /// The value of an injection, `None` when the consumer has no such secret.
    pub fn value(&self, injection: &'a Injection) -> Option<&'a [u8]> {
        match &injection.source {
            SecretSource::Consumer(name) => self.resolve(self.consumer_secrets?.get(name)?),
            own => self.resolve(own),
        }
    }

    /// A fixed or file secret's current value (a consumer's secrets are never `consumer:`).
    fn resolve(&self, source: &'a SecretSource) -> Option<&'a [u8]> {
        match source {
            SecretSource::Fixed(secret) => Some(secret.expose()),
            SecretSource::File { path, loaded } => Some(
                self.files
                    .get(path)
                    .map_or(loaded.expose(), |latest| latest.expose()),
            ),
            SecretSource::Consumer(_) => None,
        }
    }
}

/// What replaces an injected secret found in a response head.
pub const REDACTED: &[u8] = b"[redacted]";

/// Replaces every occurrence of an injected value in `head` (a response head on its way to
/// the client): as written, percent-encoded as a query value, and encoded twice (a URL
/// carried inside another parameter, as login redirects do). An origin that echoes its
/// request URL in `Link`, `Refresh`, a `Location` fragment or a reason phrase must not hand
/// the key to the client.
pub fn redact(head: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    replace_all(head, value, false);
    let mut once = Vec::with_capacity(value.len() * 3);
    push_query_value(&mut once, value);
    if once != value {
        replace_all(head, &once, true);
        let mut twice = Vec::with_capacity(once.len() * 3);
        push_query_value(&mut twice, &once);
        replace_all(head, &twice, true);
    }
}

/// Replaces `needle` (hex digits in any case when `any_case`) with [`REDACTED`].
fn replace_all(haystack: &mut Vec<u8>, needle: &[u8], any_case: bool) {
    let matches = |w: &[u8]| {
        if any_case {
            w.eq_ignore_ascii_case(needle)
        } else {
            w == needle
        }
    };
    let mut at = 0;
    while at + needle.len() <= haystack.len() {
        if matches(&haystack[at..at + needle.len()]) {
            haystack.splice(at..at + needle.len(), REDACTED.iter().copied());
            at += REDACTED.len();
        } else {
            at += 1;
        }
    }
}

/// A query parameter value: bytes outside RFC 3986 unreserved are percent-encoded.
pub fn push_query_value(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}
