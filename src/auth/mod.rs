//! Identity and authorization: who is calling (API key, JWT, client certificate) and whether
//! the route lets them in (roles, scopes).
//!
//! Owns the compiled identity config ([`AuthSpec`], [`RouteAuth`]), each shard's JWT caches
//! ([`ShardAuth`]), and the two synchronous stages [`authenticate`] and [`authorize`] that
//! `admit()` calls. Reads credentials through [`Credentials`] (the request path implements
//! it over the parsed head); must not touch sockets, fetch anything (JWKS URLs are fetched by
//! the control thread, with [`fetch`]) or log (refusals go back as [`Denial`]s).

pub mod api_key;
pub mod cache;
pub mod fetch;
pub mod jwt;

use cache::{TokenCache, Verdict};
use jwt::{Algorithm, ClaimRules, KeySet, TokenError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

/// Who a request comes from, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub consumer: Box<str>,
    pub roles: Vec<Box<str>>,
    pub scopes: Vec<Box<str>>,
    /// Header lines for the origin: `x-consumer`, then any forwarded claims.
    pub forward: Vec<u8>,
}

impl Identity {
    pub fn named(consumer: &str) -> Identity {
        Identity::new(consumer, Vec::new(), Vec::new(), &[])
    }

    fn new(consumer: &str, roles: Vec<Box<str>>, scopes: Vec<Box<str>>, claims: &[u8]) -> Identity {
        let mut forward = Vec::with_capacity(consumer.len() + 14 + claims.len());
        crate::http::push_header(&mut forward, b"x-consumer", consumer.as_bytes());
        forward.extend_from_slice(claims);
        Identity {
            consumer: consumer.into(),
            roles,
            scopes,
            forward,
        }
    }
}

/// A configured consumer.
#[derive(Debug)]
pub struct ConsumerSpec {
    pub name: String,
    pub roles: Vec<String>,
    /// What an API key of this consumer authenticates as.
    pub identity: Arc<Identity>,
    /// Its own upstream credentials (`secrets`), by name.
    /// `file:` ones are watched and rotate like injected `file:` secrets.
    pub secrets: HashMap<String, crate::perimeter::inject::SecretSource>,
}

/// Where a JWT is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// `Authorization: Bearer <jwt>`.
    Bearer,
    Cookie(String),
    Query(String),
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file or a secret, loaded with the config.
    Static(Arc<KeySet>),
    /// Fetched by the control thread and delivered to every shard.
    Url(JwksUrl),
}

#[derive(Debug, Clone)]
pub struct JwksUrl {
    pub url: String,
    pub parts: fetch::UrlParts,
    pub refresh: std::time::Duration,
    /// Verification for an https URL (webpki roots, or `jwks_ca_file`).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    pub max_bytes: usize,
}

/// A compiled `[jwt.NAME]`.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub location: TokenLocation,
    pub rules: ClaimRules,
    pub cache_entries: usize,
}

/// The identity part of a snapshot.
#[derive(Debug, Default)]
pub struct AuthSpec {
    pub consumers: Vec<ConsumerSpec>,
    pub consumer_by_name: HashMap<String, usize>,
    pub api_keys: api_key::ApiKeyIndex,
    /// Lower-case header name a key may come in.
    pub key_header: String,
    /// Query parameter a key may come in (off when `None`).
    pub key_query: Option<String>,
    pub providers: Vec<Provider>,
}

/// One way a route accepts callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Jwt(usize),
    ApiKey,
    Mtls,
}

/// A route's `auth`, `require_roles`, `require_scopes`, compiled.
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    pub methods: Vec<Method>,
    pub require_roles: Vec<String>,
    pub require_scopes: Vec<String>,
    /// What the origin must not see of the client's credentials.
    pub strip: CredentialStrip,
    /// The `WWW-Authenticate` lines of a 401 (without and with `error="invalid_token"`).
    pub challenge: Vec<u8>,
    pub challenge_invalid: Vec<u8>,
}

/// What the origin does not get from the client: its credentials (unless
/// `forward_credentials`), and always its own copies of the headers the gateway asserts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialStrip {
    /// Lower-case names of the `forward_claims` headers: a client's own would pass for
    /// a verified claim.
    pub asserted: Vec<String>,
    pub authorization: bool,
    /// Lower-case header names.
    pub headers: Vec<String>,
    pub query: Vec<String>,
    pub cookies: Vec<String>,
}

impl CredentialStrip {
    pub fn removes_header(&self, name: &[u8]) -> bool {
        (self.authorization && name.eq_ignore_ascii_case(b"authorization"))
            || self
                .headers
                .iter()
                .chain(&self.asserted)
                .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Whether a query parameter or cookie name as sent is `want`: compared after
/// percent-decoding and trimming, as origins read names (`api%5Fkey` is `api_key`), so a
/// second copy cannot hide from the lookup or from the stripping.
pub fn name_is(raw: &[u8], want: &[u8]) -> bool {
    let raw = raw.trim_ascii();
    let mut decoded = 0;
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' if i + 2 < raw.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(raw[i + 1]), hex(raw[i + 2])) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        (h * 16 + l) as u8
                    }
                    _ => b'%',
                }
            }
            b => b,
        };
        if want.get(decoded) != Some(&byte) {
            return false;
        }
        decoded += 1;
        i += 1;
    }
    decoded == want.len()
}

/// What a header lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    None,
    One(&'a [u8]),
    /// The field came more than once: ambiguous, refused.
    Many,
}

/// The request as authentication reads it.
pub trait Credentials {
    /// A header's value by its lower-case name.
    fn header(&self, name: &[u8]) -> Found<'_>;
    fn cookie(&self, name: &[u8]) -> Found<'_>;
    fn query(&self, name: &[u8]) -> Found<'_>;
    /// The verified client certificate's subject.
    fn client_subject(&self) -> Option<&str>;
}

/// The JWT keys delivered to this shard from URLs (by URL), and asks for a refetch.
pub trait UrlKeys {
    fn keys(&self, url: &str) -> Option<Arc<KeySet>>;
    /// A token named a `kid` the set lacks: ask the control thread to refetch (it and the
    /// caller rate-limit this).
    fn refetch(&self, url: &str);
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No credential the route accepts was presented.
    Missing,
    Token(TokenError),
    /// Two `Authorization` (or key) fields.
    Ambiguous,
    KeyUnknown,
    KeyExpired,
    /// The provider has never had keys (its JWKS URL was never fetched).
    KeysUnavailable,
    NoCertificate,
    Role,
    Scope,
}

impl Denial {
    pub fn reason(self) -> &'static str {
        match self {
            Denial::Missing => "missing_credentials",
            Denial::Token(e) => e.reason(),
            Denial::Ambiguous => "ambiguous_credentials",
            Denial::KeyUnknown => "api_key_unknown",
            Denial::KeyExpired => "api_key_expired",
            Denial::KeysUnavailable => "jwks_unavailable",
            Denial::NoCertificate => "no_client_certificate",
            Denial::Role => "role",
            Denial::Scope => "scope",
        }
    }

    /// Every reason, for metric series.
    pub const REASONS: [&'static str; 22] = [
        "missing_credentials",
        "ambiguous_credentials",
        "api_key_unknown",
        "api_key_expired",
        "jwks_unavailable",
        "no_client_certificate",
        "role",
        "scope",
        "token_too_large",
        "token_malformed",
        "token_bad_header",
        "token_algorithm",
        "token_crit",
        "token_unknown_kid",
        "token_signature",
        "token_bad_claims",
        "token_expired",
        "token_not_yet_valid",
        "token_issuer",
        "token_audience",
        "token_no_consumer",
        "token_unsafe_claim",
    ];

    pub fn slot(self) -> usize {
        let reason = self.reason();
        Denial::REASONS
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(0)
    }
}

/// A provider's state on one shard.
pub struct ProviderState {
    cache: RefCell<TokenCache>,
    /// When this shard last asked for a JWKS refetch (Unix seconds).
    last_refetch: Cell<u64>,
}

/// One shard's authentication state for one config: a token cache per provider. A reload
/// starts empty caches (a `jwks_file` or `secret` is read anew, so earlier verdicts are not
/// trusted): the first use of each token after it costs one signature check per shard.
pub struct ShardAuth {
    providers: Vec<ProviderState>,
}

/// This shard's JWT cache counters (read by `/metrics`).
pub struct CacheCounters<'a> {
    pub hits: &'a crate::observe::metrics::Counter,
    pub misses: &'a crate::observe::metrics::Counter,
}

/// How often one shard may ask for a refetch of one provider's keys.
const REFETCH_EVERY: u64 = 10;

impl ShardAuth {
    pub fn new(spec: &AuthSpec) -> ShardAuth {
        ShardAuth {
            providers: spec
                .providers
                .iter()
                .map(|p| ProviderState {
                    cache: RefCell::new(TokenCache::new(p.cache_entries)),
                    last_refetch: Cell::new(0),
                })
                .collect(),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tries the route's methods in order; the first that succeeds names the caller.
pub fn authenticate(
    spec: &AuthSpec,
    state: &ShardAuth,
    route: &RouteAuth,
    req: &dyn Credentials,
    url_keys: &dyn UrlKeys,
    counters: &CacheCounters,
    now: u64,
) -> Result<Arc<Identity>, Denial> {
    let mut first_failure = None;
    for &method in &route.methods {
        let outcome = match method {
            Method::Jwt(p) => by_token(spec, state, p, req, url_keys, counters, now),
            Method::ApiKey => by_api_key(spec, req, now),
            Method::Mtls => by_certificate(spec, req),
        };
        match outcome {
            Ok(identity) => return Ok(identity),
            Err(Denial::Missing) => {}
            Err(denial) => {
                first_failure.get_or_insert(denial);
            }
        }
    }
    Err(
        first_failure.unwrap_or(if route.methods.iter().all(|&m| m == Method::Mtls) {
            Denial::NoCertificate
        } else {
            Denial::Missing
        }),
    )
}

/// Roles (any of) and scopes (all of).
pub fn authorize(route: &RouteAuth, who: &Identity) -> Result<(), Denial> {
    if !route.require_roles.is_empty()
        && !who
            .roles
            .iter()
            .any(|r| route.require_roles.iter().any(|w| **r == **w))
    {
        return Err(Denial::Role);
    }
    if !route
        .require_scopes
        .iter()
        .all(|need| who.scopes.iter().any(|s| **s == **need))
    {
        return Err(Denial::Scope);
    }
    Ok(())
}

fn token_of<'a>(location: &TokenLocation, req: &'a dyn Credentials) -> Found<'a> {
    match location {
        TokenLocation::Bearer => match req.header(b"authorization") {
            Found::One(value) => match split_scheme(value) {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer") => {
                    Found::One(token)
                }
                _ => Found::None,
            },
            other => other,
        },
        TokenLocation::Cookie(name) => req.cookie(name.as_bytes()),
        TokenLocation::Query(name) => req.query(name.as_bytes()),
    }
}

/// `Scheme credentials` (one or more spaces between).
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, rest.trim_ascii()))
}

fn by_token(
    spec: &AuthSpec,
    state: &ShardAuth,
    index: usize,
    req: &dyn Credentials,
    url_keys: &dyn UrlKeys,
    counters: &CacheCounters,
    now: u64,
) -> Result<Arc<Identity>, Denial> {
    let provider = &spec.providers[index];
    let token = match token_of(&provider.location, req) {
        Found::None => return Err(Denial::Missing),
        Found::Many => return Err(Denial::Ambiguous),
        Found::One(t) => t,
    };
    if token.len() > jwt::MAX_TOKEN_BYTES {
        return Err(Denial::Token(TokenError::TooLarge));
    }
    let delivered;
    let keys: &KeySet = match &provider.keys {
        KeySource::Static(keys) => keys,
        KeySource::Url(u) => {
            delivered = url_keys.keys(&u.url).ok_or(Denial::KeysUnavailable)?;
            &delivered
        }
    };
    let digest = api_key::sha256(token);
    let provider_state = &state.providers[index];
    let mut cache = provider_state.cache.borrow_mut();
    let cached = cache.get(&digest).map(|v| {
        (v.keys_version == keys.version && now <= v.valid_until).then(|| v.identity.clone())
    });
    match cached {
        Some(Some(identity)) => {
            counters.hits.add(1);
            return Ok(identity);
        }
        // Expired, or verified with keys that have since changed.
        Some(None) => cache.remove(&digest),
        None => {}
    }
    counters.misses.add(1);
    let claims = match jwt::verify(token, keys, &provider.algorithms, &provider.rules, now) {
        Ok(claims) => claims,
        Err(TokenError::UnknownKid) => {
            if let KeySource::Url(u) = &provider.keys
                && now >= provider_state.last_refetch.get() + REFETCH_EVERY
            {
                provider_state.last_refetch.set(now);
                url_keys.refetch(&u.url);
            }
            return Err(Denial::Token(TokenError::UnknownKid));
        }
        Err(e) => return Err(Denial::Token(e)),
    };
    let mut roles: Vec<Box<str>> = claims.roles.iter().map(|r| r.as_str().into()).collect();
    if let Some(&c) = spec.consumer_by_name.get(&claims.consumer) {
        roles.extend(spec.consumers[c].roles.iter().map(|r| r.as_str().into()));
    }
    let scopes = claims.scopes.iter().map(|s| s.as_str().into()).collect();
    let identity = Arc::new(Identity::new(
        &claims.consumer,
        roles,
        scopes,
        &claims.forward,
    ));
    cache.insert(
        digest,
        Verdict {
            identity: identity.clone(),
            valid_until: claims.expires.saturating_add(provider.rules.leeway),
            keys_version: keys.version,
        },
    );
    Ok(identity)
}

fn by_api_key(spec: &AuthSpec, req: &dyn Credentials, now: u64) -> Result<Arc<Identity>, Denial> {
    let key = match api_key_of(spec, req) {
        Found::None => return Err(Denial::Missing),
        Found::Many => return Err(Denial::Ambiguous),
        Found::One(key) => key,
    };
    match spec.api_keys.check(key, now) {
        api_key::KeyCheck::Valid { consumer } => Ok(spec.consumers[consumer].identity.clone()),
        api_key::KeyCheck::Expired => Err(Denial::KeyExpired),
        api_key::KeyCheck::Unknown => Err(Denial::KeyUnknown),
    }
}

/// The key from the configured header, else `Authorization: ApiKey <key>`, else the query
/// parameter where one is configured.
fn api_key_of<'a>(spec: &AuthSpec, req: &'a dyn Credentials) -> Found<'a> {
    match req.header(spec.key_header.as_bytes()) {
        Found::None => {}
        found => return found,
    }
    match req.header(b"authorization") {
        Found::One(value) => {
            if let Some((scheme, key)) = split_scheme(value)
                && scheme.eq_ignore_ascii_case(b"apikey")
            {
                return Found::One(key);
            }
        }
        Found::Many => return Found::Many,
        Found::None => {}
    }
    match &spec.key_query {
        Some(name) => req.query(name.as_bytes()),
        None => Found::None,
    }
}

/// The certificate's `CN` (or its whole subject when it has none) is the consumer; roles
/// come from the `[[consumers]]` entry of that name.
fn by_certificate(spec: &AuthSpec, req: &dyn Credentials) -> Result<Arc<Identity>, Denial> {
    let subject = req.client_subject().ok_or(Denial::Missing)?;
    let name = common_name(subject).unwrap_or(subject);
    Ok(match spec.consumer_by_name.get(name) {
        Some(&c) => spec.consumers[c].identity.clone(),
        None => Arc::new(Identity::named(name)),
    })
}

/// The `CN=` value of an RFC 4514 subject (escaped commas respected).
fn common_name(subject: &str) -> Option<&str> {
    let bytes = subject.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        if i == bytes.len() || (bytes[i] == b',' && (i == 0 || bytes[i - 1] != b'\\')) {
            let rdn = subject[start..i].trim();
            if let Some(cn) = rdn.strip_prefix("CN=") {
                return Some(cn);
            }
            start = i + 1;
        }
        i += 1;
    }
    None
}
