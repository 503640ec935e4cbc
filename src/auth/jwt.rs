//! JWT verification over bytes (RFC 7519/7515, compact form only): split, decode the JOSE
//! header, choose the key by `kid`, check the signature with `jsonwebtoken`'s primitives,
//! then the claims. Knows nothing of requests; the request path hands it the token's bytes.
//!
//! Rules that keep known attacks out:
//! - the algorithm must be on the provider's allow-list *and* allowed for the key chosen,
//!   whose family comes from the key itself (an RSA key never verifies an HMAC token, so the
//!   public key cannot be used as an HMAC secret); `none` is never an algorithm;
//! - `jku`, `x5u`, `x5c` and an embedded `jwk` are ignored (keys come only from the config);
//! - a `crit` header is refused (no extension is understood);
//! - `exp` is required; every segment is strict base64url without padding.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
pub use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Keys tried for a token without `kid` (a rotation window holds two or three).
const MAX_KEYS_WITHOUT_KID: usize = 8;

/// One verification key and the algorithms it may verify.
pub struct Key {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.kid, self.algorithms)
    }
}

/// The keys of one provider. `version` changes with every new set, so cached verdicts made
/// with an older set are not trusted.
#[derive(Debug)]
pub struct KeySet {
    pub version: u64,
    pub keys: Vec<Key>,
}

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    fn new(keys: Vec<Key>) -> KeySet {
        KeySet {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            keys,
        }
    }

    /// An HMAC secret, for the HS algorithms of `allowed`.
    pub fn from_secret(secret: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        let algorithms = family_algorithms(Family::Hmac, allowed);
        if algorithms.is_empty() {
            return Err(
                "a secret verifies HS256/HS384/HS512 only, and none is in algorithms".into(),
            );
        }
        if secret.len() < 32 {
            return Err("the HMAC secret must be at least 32 bytes (RFC 7518 §3.2)".into());
        }
        Ok(KeySet::new(vec![Key {
            kid: None,
            algorithms,
            key: DecodingKey::from_secret(secret),
        }]))
    }

    /// A JWKS document (`{"keys": [...]}`): the usable signature keys whose algorithms meet
    /// `allowed`. Keys of other types, for encryption, or unusable are skipped; a document
    /// with none left is an error.
    pub fn from_jwks(text: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<Key> = doc
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| key_of(&jwk, allowed))
            .collect();
        if keys.is_empty() {
            return Err("no usable signature key for the configured algorithms in the JWKS".into());
        }
        Ok(KeySet::new(keys))
    }

    /// Whether the set holds a key with this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

fn family_of(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 => Family::EcP256,
        ES384 => Family::EcP384,
        EdDSA => Family::Ed25519,
    }
}

fn family_algorithms(family: Family, allowed: &[Algorithm]) -> Vec<Algorithm> {
    allowed
        .iter()
        .copied()
        .filter(|&a| family_of(a) == family)
        .collect()
}

fn key_of(jwk: &Jwk, allowed: &[Algorithm]) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::EcP256,
            EllipticCurve::P384 => Family::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
        AlgorithmParameters::OctetKeyPair(_) => return None,
    };
    let mut algorithms = family_algorithms(family, allowed);
    if let Some(declared) = jwk.common.key_algorithm {
        let declared = algorithm_of_key(declared)?;
        algorithms.retain(|&a| a == declared);
    }
    if algorithms.is_empty() {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn algorithm_of_key(alg: KeyAlgorithm) -> Option<Algorithm> {
    parse_algorithm(&format!("{alg:?}"))
}

/// An `alg` name; `none` (in any spelling) and unknown names are `None`.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

/// What the claims must say, and which claims carry what.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub consumer_claim: String,
    pub roles_claim: String,
    pub scopes_claim: String,
    /// (lower-case header name, claim)
    pub forward_claims: Vec<(String, String)>,
}

/// Why a token was refused: the `reason` of metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    BadHeader,
    Algorithm,
    Crit,
    UnknownKid,
    Signature,
    BadClaims,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    NoConsumer,
    UnsafeClaim,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed => "token_malformed",
            TokenError::BadHeader => "token_bad_header",
            TokenError::Algorithm => "token_algorithm",
            TokenError::Crit => "token_crit",
            TokenError::UnknownKid => "token_unknown_kid",
            TokenError::Signature => "token_signature",
            TokenError::BadClaims => "token_bad_claims",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Issuer => "token_issuer",
            TokenError::Audience => "token_audience",
            TokenError::NoConsumer => "token_no_consumer",
            TokenError::UnsafeClaim => "token_unsafe_claim",
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub consumer: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// `name: value\r\n` lines for the origin (`forward_claims`), values checked header-safe.
    pub forward: Vec<u8>,
    /// Unix seconds (`exp`).
    pub expires: u64,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The three segments of a compact JWS, each non-empty and strict base64url.
fn split(token: &[u8]) -> Result<[&[u8]; 3], TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let base64url = |seg: &[u8]| {
        !seg.is_empty()
            && seg
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if ![h, p, s].iter().all(|seg| base64url(seg)) {
        return Err(TokenError::Malformed);
    }
    Ok([h, p, s])
}

fn decode(segment: &[u8]) -> Result<Vec<u8>, TokenError> {
    B64.decode(segment).map_err(|_| TokenError::Malformed)
}

/// The `kid` of a token's header, if it parses (to ask for a JWKS refetch).
pub fn kid_of(token: &[u8]) -> Option<String> {
    let [h, _, _] = split(token).ok()?;
    serde_json::from_slice::<JoseHeader>(&decode(h).ok()?)
        .ok()?
        .kid
}

/// Verifies `token` with `keys` and the provider's `allowed` algorithms at `now` (Unix
/// seconds).
pub fn verify(
    token: &[u8],
    keys: &KeySet,
    allowed: &[Algorithm],
    rules: &ClaimRules,
    now: u64,
) -> Result<Claims, TokenError> {
    let [h, p, s] = split(token)?;
    let header: JoseHeader =
        serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::BadHeader)?;
    if header.crit.is_some() {
        return Err(TokenError::Crit);
    }
    let alg = parse_algorithm(&header.alg)
        .filter(|a| allowed.contains(a))
        .ok_or(TokenError::Algorithm)?;
    let message = &token[..h.len() + 1 + p.len()];
    let signature = std::str::from_utf8(s).map_err(|_| TokenError::Malformed)?;
    let candidates: Vec<&Key> = match &header.kid {
        Some(kid) if keys.has_kid(kid) => keys
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
            .collect(),
        // A `kid` the set lacks: keys without one (a `secret`) may still verify the token;
        // with none of those, the `kid` is unknown (and worth a refetch).
        Some(_) if !keys.keys.iter().any(|k| k.kid.is_none()) => {
            return Err(TokenError::UnknownKid);
        }
        Some(_) => keys
            .keys
            .iter()
            .filter(|k| k.kid.is_none() && k.algorithms.contains(&alg))
            .take(MAX_KEYS_WITHOUT_KID)
            .collect(),
        None => keys
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
            .take(MAX_KEYS_WITHOUT_KID)
            .collect(),
    };
    let verified = candidates.iter().any(|k| {
        k.algorithms.contains(&alg)
            && jsonwebtoken::crypto::verify(signature, message, &k.key, alg).unwrap_or(false)
    });
    if !verified {
        return Err(TokenError::Signature);
    }
    let payload: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decode(p)?).map_err(|_| TokenError::BadClaims)?;
    check_claims(&payload, rules, now)
}

fn seconds(value: Option<&serde_json::Value>) -> Result<Option<u64>, TokenError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Some(s as u64))
            .ok_or(TokenError::BadClaims),
    }
}

fn check_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<Claims, TokenError> {
    let expires = seconds(claims.get("exp"))?.ok_or(TokenError::BadClaims)?;
    if now > expires.saturating_add(rules.leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = seconds(claims.get("nbf"))?
        && now.saturating_add(rules.leeway) < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(issuer) = &rules.issuer
        && claims.get("iss").and_then(|v| v.as_str()) != Some(issuer.as_str())
    {
        return Err(TokenError::Issuer);
    }
    if !rules.audiences.is_empty() {
        let aud = strings(claims.get("aud"), false);
        if !aud.iter().any(|a| rules.audiences.contains(a)) {
            return Err(TokenError::Audience);
        }
    }
    let consumer = claims
        .get(&rules.consumer_claim)
        .and_then(|v| v.as_str())
        .filter(|c| !c.is_empty() && c.len() <= 256)
        .ok_or(TokenError::NoConsumer)?;
    // `" boss"` would reach the origin as `boss` (header values are trimmed) while the
    // gateway took it for someone else: refused, not trimmed.
    if !is_header_safe(consumer.as_bytes()) || consumer.trim() != consumer {
        return Err(TokenError::UnsafeClaim);
    }
    let mut forward = Vec::new();
    for (header, claim) in &rules.forward_claims {
        let Some(value) = claims.get(claim).and_then(claim_text) else {
            continue;
        };
        if !is_header_safe(value.as_bytes()) {
            return Err(TokenError::UnsafeClaim);
        }
        crate::http::push_header(&mut forward, header.as_bytes(), value.trim().as_bytes());
    }
    Ok(Claims {
        consumer: consumer.to_string(),
        roles: strings(claims.get(&rules.roles_claim), false),
        scopes: strings(claims.get(&rules.scopes_claim), true),
        forward,
        expires,
    })
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON, arrays of
/// those joined by `, `; objects are not forwarded.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) => None,
                    other => claim_text(other),
                })
                .collect();
            Some(parts?.join(", "))
        }
        _ => None,
    }
}

/// A string claim, or an array of strings (other elements ignored); with `split_spaces`, a
/// string is a space-separated list (OAuth `scope`).
fn strings(value: Option<&serde_json::Value>, split_spaces: bool) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(s)) if split_spaces => s
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Field-value bytes (RFC 9110 §5.5): no control characters but tab.
pub fn is_header_safe(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Some("iss".into()),
            audiences: vec!["aud".into()],
            leeway: 0,
            consumer_claim: "sub".into(),
            roles_claim: "roles".into(),
            scopes_claim: "scope".into(),
            forward_claims: vec![("x-team".into(), "team".into())],
        }
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn good() -> String {
        token(serde_json::json!({
            "iss": "iss", "aud": ["x", "aud"], "sub": "alice", "exp": 2_000,
            "roles": "admin", "scope": "a  b", "team": ["red", 7],
        }))
    }

    fn keys() -> KeySet {
        KeySet::from_secret(SECRET, &[Algorithm::HS256]).unwrap()
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let claims = verify(
            good().as_bytes(),
            &keys(),
            &[Algorithm::HS256],
            &rules(),
            1_000,
        )
        .unwrap();
        assert_eq!(claims.consumer, "alice");
        assert_eq!(claims.roles, ["admin"]);
        assert_eq!(claims.scopes, ["a", "b"]);
        assert_eq!(claims.forward, b"x-team: red, 7\r\n");
        assert_eq!(claims.expires, 2_000);
        assert_eq!(
            verify(
                good().as_bytes(),
                &keys(),
                &[Algorithm::HS256],
                &rules(),
                2_001
            ),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_key_only_verifies_algorithms_of_its_own_type() {
        // An HMAC key set offered an RS256 header: refused before any signature check.
        let jwks = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "alg": "HS256"}]});
        let set = KeySet::from_jwks(jwks.to_string().as_bytes(), &[Algorithm::RS256]);
        assert!(set.is_err(), "an oct key has no RS256 to offer");
        let hs_header = B64.encode(r#"{"alg":"RS256"}"#);
        let t = format!("{hs_header}.{}", good().split_once('.').unwrap().1);
        assert_eq!(
            verify(
                t.as_bytes(),
                &keys(),
                &[Algorithm::HS256, Algorithm::RS256],
                &rules(),
                1_000
            ),
            Err(TokenError::Signature),
            "no key of the RSA type: nothing verifies"
        );
        assert!(parse_algorithm("none").is_none() && parse_algorithm("HS256").is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_verify_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(verify(&bytes, &keys(), &[Algorithm::HS256], &rules(), 1_000).is_err());
            let _ = kid_of(&bytes);
        }

        #[test]
        fn any_one_byte_change_to_a_good_token_is_refused(at in 0usize..10_000, to in any::<u8>()) {
            let mut t = good().into_bytes();
            let at = at % t.len();
            prop_assume!(t[at] != to);
            t[at] = to;
            prop_assert!(verify(&t, &keys(), &[Algorithm::HS256], &rules(), 1_000).is_err());
        }

        #[test]
        fn tokens_of_random_json_parts_never_panic(header in "\\PC{0,80}", payload in "\\PC{0,200}") {
            let t = format!("{}.{}.{}", B64.encode(header), B64.encode(payload), B64.encode("sig"));
            prop_assert!(verify(t.as_bytes(), &keys(), &[Algorithm::HS256], &rules(), 1_000).is_err());
        }
    }
}
