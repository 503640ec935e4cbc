//! The serde contract of identity (DESIGN.md §4b): `[[consumers]]`, `[api_keys]`, `[jwt.NAME]`.
//! Plain data; [`super::compile`] checks it. Secret references serialize redacted.

use super::units::{ByteSize, ConfigDuration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[[consumers]]`: someone who calls the APIs, known by name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Keys stored hashed; several at once is how keys rotate.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// This consumer's own upstream credentials by name (`"env:NAME"` / `"file:PATH"`),
    /// injected where a route says `secret = "consumer:NAME"`.
    #[serde(default, serialize_with = "redacted_map")]
    pub secrets: BTreeMap<String, String>,
}

/// One credential the gateway adds to the upstream request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// `"env:NAME"`, `"file:PATH"` (re-read when the file changes) or `"consumer:NAME"`
    /// (the authenticated consumer's `secrets.NAME`).
    pub secret: String,
    /// Put before the value (`"Bearer "`).
    #[serde(default)]
    pub prefix: String,
}

fn redacted_map<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(map.len()))?;
    for name in map.keys() {
        out.serialize_entry(name, super::secret::REDACTED)?;
    }
    out.end()
}

/// One API key of a consumer, by the SHA-256 of its text.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for the key (shown in logs instead of the key).
    pub id: String,
    /// Lower-case hex SHA-256 of the key as the client sends it (`ringgate keygen`).
    pub sha256: String,
    /// RFC 3339 UTC time after which the key is refused (`2027-01-01T00:00:00Z`).
    pub expires: Option<String>,
}

/// `[api_keys]`: where a client may present a key (the first found wins).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// A header holding the key; `Authorization: ApiKey <key>` is also accepted.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// A query parameter holding the key: off unless set (keys in URLs end up in logs).
    #[serde(default)]
    pub query: String,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            header: default_api_key_header(),
            query: String::new(),
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

/// `[jwt.NAME]`: a JWT provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    /// Allow-list of `alg` values (`HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, ...);
    /// `none` is never accepted.
    pub algorithms: Vec<String>,
    /// The `iss` a token must carry.
    pub issuer: Option<String>,
    /// The token's `aud` must contain one of these (unset: `aud` is not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// A JWKS file (relative to this config's folder).
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched off the shards (https, or http for a loopback host only).
    pub jwks_url: Option<String>,
    /// `"env:NAME"` or `"file:PATH"`: the HMAC key of HS256/384/512 providers.
    #[serde(serialize_with = "super::file::redacted", default)]
    pub secret: Option<String>,
    /// `jwks_url`: refetch interval.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: ConfigDuration,
    /// `jwks_url` over https with a private CA (default: the webpki roots).
    pub jwks_ca_file: Option<String>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    /// `"header:authorization"` (`Bearer <jwt>`), `"cookie:NAME"` or `"query:NAME"`.
    #[serde(default = "default_token_location")]
    pub token: String,
    /// The claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The claim holding roles (an array of strings, or one string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim holding scopes (a space-separated string, or an array).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Header name -> claim: sent to the origin (values must be header-safe).
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Verified tokens kept per shard (least recently used evicted).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Largest JWKS document accepted (file or URL).
    #[serde(default = "default_jwks_max_bytes")]
    pub jwks_max_bytes: ByteSize,
}

fn default_jwks_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_token_location() -> String {
    "header:authorization".into()
}

fn default_consumer_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_scopes_claim() -> String {
    "scope".into()
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_jwks_max_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
