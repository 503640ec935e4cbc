//! Identity: `[[consumers]]`, `[api_keys]`, `[jwt.NAME]`, and each route's `auth`,
//! `require_roles`, `require_scopes`, `forward_credentials`.

use super::*;
use crate::auth::api_key::{KeyEntry, parse_sha256_hex};
use crate::auth::jwt::{self, ClaimRules, KeySet};
use crate::auth::*;
use crate::config::{InjectConfig, JwtProviderConfig};
use std::sync::Arc;

pub(super) fn compile_auth(c: &mut Checker, config: &Config, base: &Path) -> AuthSpec {
    c.unique_names(
        "consumers",
        config.consumers.iter().map(|x| x.name.as_str()),
    );
    let mut spec = AuthSpec {
        key_header: config.api_keys.header.to_ascii_lowercase(),
        key_query: (!config.api_keys.query.is_empty()).then(|| config.api_keys.query.clone()),
        ..Default::default()
    };
    if !is_token(&config.api_keys.header) {
        c.problem("api_keys.header", "must be a header name");
    }
    if spec.key_header == "authorization" {
        c.problem(
            "api_keys.header",
            "keys in Authorization are read as `ApiKey <key>` already: name another header",
        );
    }
    if spec.key_query.as_deref().is_some_and(|q| !is_query_name(q)) {
        c.problem("api_keys.query", "must be a query parameter name");
    }
    let mut seen_hashes: HashMap<[u8; 32], String> = HashMap::new();
    for (i, consumer) in config.consumers.iter().enumerate() {
        let key = format!("consumers[{i}]");
        if !is_field_value(&consumer.name) || consumer.name.len() > 256 {
            c.problem(
                format!("{key}.name"),
                "must be at most 256 bytes of header-safe text (it is sent as x-consumer)",
            );
        }
        let mut ids = HashMap::new();
        for (j, k) in consumer.api_keys.iter().enumerate() {
            let kkey = format!("{key}.api_keys[{j}]");
            if ids.insert(k.id.as_str(), j).is_some() {
                c.problem(format!("{kkey}.id"), format!("duplicate key id {:?}", k.id));
            }
            let Some(sha256) = parse_sha256_hex(&k.sha256) else {
                c.problem(
                    format!("{kkey}.sha256"),
                    "must be 64 hex digits: the SHA-256 of the key (`ringgate keygen` prints it)",
                );
                continue;
            };
            if let Some(other) = seen_hashes.insert(sha256, kkey.clone()) {
                c.problem(format!("{kkey}.sha256"), format!("the same key as {other}"));
            }
            let expires = k.expires.as_ref().and_then(|text| {
                let at = parse_rfc3339(text);
                if at.is_none() {
                    c.problem(
                        format!("{kkey}.expires"),
                        format!(
                            "bad time {text:?}: expected RFC 3339 such as \"2027-01-01T00:00:00Z\""
                        ),
                    );
                }
                at
            });
            spec.api_keys.insert(KeyEntry {
                sha256,
                consumer: i,
                id: k.id.as_str().into(),
                expires,
            });
        }
        let roles: Vec<Box<str>> = consumer.roles.iter().map(|r| r.as_str().into()).collect();
        let mut identity = Identity::named(&consumer.name);
        identity.roles = roles;
        let mut secrets = HashMap::new();
        for (name, reference) in &consumer.secrets {
            match secret_source(reference, base) {
                Ok(source) => {
                    secrets.insert(name.clone(), source);
                }
                Err(e) => c.problem(format!("{key}.secrets.{name}"), e),
            }
        }
        spec.consumer_by_name.insert(consumer.name.clone(), i);
        spec.consumers.push(ConsumerSpec {
            name: consumer.name.clone(),
            roles: consumer.roles.clone(),
            identity: Arc::new(identity),
            secrets,
        });
    }
    for (name, p) in &config.jwt {
        if let Some(provider) = compile_provider(c, name, p, base) {
            spec.providers.push(provider);
        }
    }
    spec
}

fn compile_provider(
    c: &mut Checker,
    name: &str,
    p: &JwtProviderConfig,
    base: &Path,
) -> Option<Provider> {
    let key = format!("jwt.{name}");
    let mut algorithms = Vec::new();
    if p.algorithms.is_empty() {
        c.problem(
            format!("{key}.algorithms"),
            "must list at least one algorithm",
        );
    }
    for (i, a) in p.algorithms.iter().enumerate() {
        match jwt::parse_algorithm(a) {
            Some(alg) => algorithms.push(alg),
            None if a.eq_ignore_ascii_case("none") => c.problem(
                format!("{key}.algorithms[{i}]"),
                "\"none\" is never accepted (an unsigned token proves nothing)",
            ),
            None => c.problem(
                format!("{key}.algorithms[{i}]"),
                format!("unknown algorithm {a:?}: expected HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
            ),
        }
    }
    let sources = [
        p.jwks_file.is_some(),
        p.jwks_url.is_some(),
        p.secret.is_some(),
    ];
    if sources.iter().filter(|&&s| s).count() != 1 {
        c.problem(
            key.clone(),
            "set exactly one of jwks_file, jwks_url and secret",
        );
        return None;
    }
    let max_bytes = p.jwks_max_bytes.0 as usize;
    let keys = if let Some(file) = &p.jwks_file {
        let path = base.join(file);
        let text = match std::fs::read(&path) {
            Ok(t) if t.len() <= max_bytes => t,
            Ok(_) => {
                c.problem(
                    format!("{key}.jwks_file"),
                    format!("{} is larger than jwks_max_bytes", path.display()),
                );
                return None;
            }
            Err(e) => {
                c.problem(
                    format!("{key}.jwks_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        };
        match KeySet::from_jwks(&text, &algorithms) {
            Ok(set) => KeySource::Static(Arc::new(set)),
            Err(e) => {
                c.problem(
                    format!("{key}.jwks_file"),
                    format!("{}: {e}", path.display()),
                );
                return None;
            }
        }
    } else if let Some(reference) = &p.secret {
        let secret = match Secret::load(reference, base) {
            Ok(s) => s,
            Err(e) => {
                c.problem(format!("{key}.secret"), e);
                return None;
            }
        };
        match KeySet::from_secret(secret.expose(), &algorithms) {
            Ok(set) => KeySource::Static(Arc::new(set)),
            Err(e) => {
                c.problem(format!("{key}.secret"), e);
                return None;
            }
        }
    } else {
        let url = p.jwks_url.clone().unwrap_or_default();
        if p.jwks_refresh.0 < Duration::from_secs(1) {
            c.problem(format!("{key}.jwks_refresh"), "must be at least 1s");
        }
        let parts = match crate::auth::fetch::parse_url(&url) {
            Ok(parts) => parts,
            Err(e) => {
                c.problem(format!("{key}.jwks_url"), e);
                return None;
            }
        };
        let tls = if parts.https {
            let ca = p.jwks_ca_file.as_ref().map(Path::new);
            match crate::tls::client_tls(&parts.host, ca, true, base) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(e) => {
                    let field = if e.key == "tls_ca_file" {
                        "jwks_ca_file"
                    } else {
                        "jwks_url"
                    };
                    c.problem(format!("{key}.{field}"), e.message);
                    return None;
                }
            }
        } else {
            None
        };
        KeySource::Url(JwksUrl {
            url,
            parts,
            refresh: p.jwks_refresh.0,
            tls,
            max_bytes,
        })
    };
    if p.jwks_ca_file.is_some() && p.jwks_url.is_none() {
        c.problem(format!("{key}.jwks_ca_file"), "only used with jwks_url");
    }
    let location = match token_location(&p.token) {
        Some(l) => l,
        None => {
            c.problem(
                format!("{key}.token"),
                format!("bad token location {:?}: expected \"header:authorization\", \"cookie:NAME\" or \"query:NAME\"", p.token),
            );
            TokenLocation::Bearer
        }
    };
    if !(1..=1_000_000).contains(&p.cache_entries) {
        c.problem(
            format!("{key}.cache_entries"),
            "must be between 1 and 1000000",
        );
    }
    let mut forward_claims = Vec::new();
    for (header, claim) in &p.forward_claims {
        let lower = header.to_ascii_lowercase();
        if !is_token(header) || RESERVED_FORWARD.contains(&lower.as_str()) {
            c.problem(
                format!("{key}.forward_claims"),
                format!("{header:?} is not a header name the gateway may set"),
            );
        }
        forward_claims.push((lower, claim.clone()));
    }
    Some(Provider {
        name: name.to_string(),
        algorithms,
        keys,
        location,
        rules: ClaimRules {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            leeway: p.leeway.0.as_secs(),
            consumer_claim: p.consumer_claim.clone(),
            roles_claim: p.roles_claim.clone(),
            scopes_claim: p.scopes_claim.clone(),
            forward_claims,
        },
        cache_entries: p.cache_entries,
    })
}

/// Names a forwarded claim or an injected header must not take: framing, routing and the
/// gateway's own fields.
const RESERVED_FORWARD: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "authorization",
    "cookie",
    "x-consumer",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-client-cert-subject",
    "forwarded",
];

fn token_location(text: &str) -> Option<TokenLocation> {
    let (kind, name) = text.split_once(':')?;
    match kind {
        "header" if name.eq_ignore_ascii_case("authorization") => Some(TokenLocation::Bearer),
        "cookie" if is_token(name) => Some(TokenLocation::Cookie(name.to_string())),
        "query" if is_query_name(name) => Some(TokenLocation::Query(name.to_string())),
        _ => None,
    }
}

fn is_query_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// A route's `auth`: its methods, the challenges of its 401s and what to strip.
pub(super) fn compile_route_auth(
    c: &mut Checker,
    key: &str,
    r: &RouteConfig,
    spec: &AuthSpec,
) -> Option<Arc<RouteAuth>> {
    if r.auth.is_empty() {
        for (field, set) in [
            ("require_roles", !r.require_roles.is_empty()),
            ("require_scopes", !r.require_scopes.is_empty()),
            ("forward_credentials", r.forward_credentials),
        ] {
            if set {
                c.problem(format!("{key}.{field}"), "needs auth on the route");
            }
        }
        return None;
    }
    let mut auth = RouteAuth {
        require_roles: r.require_roles.clone(),
        require_scopes: r.require_scopes.clone(),
        ..Default::default()
    };
    let mut strip = CredentialStrip::default();
    for (i, method) in r.auth.iter().enumerate() {
        let m = match method.as_str() {
            "api_key" => {
                strip.authorization = true;
                strip.headers.push(spec.key_header.clone());
                strip.query.extend(spec.key_query.clone());
                Method::ApiKey
            }
            "mtls" => Method::Mtls,
            other => match other
                .strip_prefix("jwt:")
                .and_then(|n| spec.providers.iter().position(|p| p.name == n))
            {
                Some(p) => {
                    match &spec.providers[p].location {
                        TokenLocation::Bearer => strip.authorization = true,
                        TokenLocation::Cookie(n) => strip.cookies.push(n.clone()),
                        TokenLocation::Query(n) => strip.query.push(n.clone()),
                    }
                    Method::Jwt(p)
                }
                None => {
                    c.problem(
                        format!("{key}.auth[{i}]"),
                        format!("unknown auth method {other:?}: expected \"jwt:NAME\" (a [jwt.NAME] provider), \"api_key\" or \"mtls\""),
                    );
                    continue;
                }
            },
        };
        if auth.methods.contains(&m) {
            c.problem(
                format!("{key}.auth[{i}]"),
                format!("{method:?} is listed twice"),
            );
        }
        auth.methods.push(m);
    }
    if !r.require_scopes.is_empty() && !auth.methods.iter().any(|m| matches!(m, Method::Jwt(_))) {
        c.problem(
            format!("{key}.require_scopes"),
            "scopes come from JWTs: add a \"jwt:NAME\" method to auth",
        );
    }
    if r.forward_credentials {
        strip = CredentialStrip::default();
    }
    for m in &auth.methods {
        if let Method::Jwt(p) = m {
            let claims = &spec.providers[*p].rules.forward_claims;
            strip
                .asserted
                .extend(claims.iter().map(|(header, _)| header.clone()));
        }
    }
    auth.strip = strip;
    let bearer = auth.methods.iter().any(|m| matches!(m, Method::Jwt(_)));
    let keys = auth.methods.contains(&Method::ApiKey);
    for (out, invalid) in [
        (&mut auth.challenge, false),
        (&mut auth.challenge_invalid, true),
    ] {
        if bearer {
            let value: &[u8] = if invalid {
                b"Bearer realm=\"ringgate\", error=\"invalid_token\""
            } else {
                b"Bearer realm=\"ringgate\""
            };
            crate::http::push_header(out, b"www-authenticate", value);
        }
        if keys {
            crate::http::push_header(out, b"www-authenticate", b"ApiKey realm=\"ringgate\"");
        }
    }
    Some(Arc::new(auth))
}

/// `2027-01-01T00:00:00Z` (fraction and `+HH:MM` offsets allowed) to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let (oh, om) = (num_in(rest, 1..3)?, num_in(rest, 4..6)?);
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s - offset).ok()
}

fn num_in(text: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let s = text.get(r)?;
    s.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| s.parse().ok())?
}

/// An `env:`/`file:` secret whose value can go into a header (no control characters).
fn load_header_secret(reference: &str, base: &Path) -> Result<Secret, String> {
    let secret = Secret::load(reference, base)?;
    if !jwt::is_header_safe(secret.expose()) {
        return Err(format!(
            "the value of {reference} has control characters (a line break?): not a header value"
        ));
    }
    Ok(secret)
}

/// An `env:` or `file:` secret for a header, loaded now; a `file:` one is watched.
fn secret_source(
    reference: &str,
    base: &Path,
) -> Result<crate::perimeter::inject::SecretSource, String> {
    use crate::perimeter::inject::SecretSource;
    let loaded = load_header_secret(reference, base)?;
    Ok(match reference.strip_prefix("file:") {
        Some(path) => SecretSource::File {
            path: base.join(path),
            loaded,
        },
        None => SecretSource::Fixed(loaded),
    })
}

/// A route's injections: its own, then its upstream's for names it does not set.
pub(super) fn compile_injections(
    c: &mut Checker,
    key: &str,
    r: &RouteConfig,
    upstream: Option<&UpstreamConfig>,
    base: &Path,
) -> Option<Arc<crate::perimeter::inject::Injections>> {
    use crate::perimeter::inject::Injections;
    let mut out = Injections {
        audit: r.audit,
        ..Default::default()
    };
    let add = |c: &mut Checker,
               at: &str,
               map: &std::collections::BTreeMap<String, InjectConfig>,
               header: bool,
               out: &mut Injections| {
        for (name, inject) in map {
            let field = format!("{at}.{name}");
            let lower = if header {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            let list = if header {
                &mut out.headers
            } else {
                &mut out.query
            };
            if list.iter().any(|i| i.name == lower) {
                continue; // the route's entry wins
            }
            let name_ok = if header {
                // Credentials go in `authorization` or `cookie` too: those two may be set.
                is_token(name)
                    && (matches!(lower.as_str(), "authorization" | "cookie")
                        || !RESERVED_FORWARD.contains(&lower.as_str()))
            } else {
                is_query_name(name)
            };
            if !name_ok {
                c.problem(
                    field.clone(),
                    format!("{name:?} is not a name the gateway may set"),
                );
            }
            if !is_field_value(&inject.prefix) {
                c.problem(format!("{field}.prefix"), "must be header-safe text");
            }
            let source = if let Some(consumer_secret) = inject.secret.strip_prefix("consumer:") {
                if r.auth.is_empty() {
                    c.problem(
                        format!("{field}.secret"),
                        "a consumer: secret needs auth on the route (no consumer otherwise)",
                    );
                }
                out.needs_consumer = true;
                crate::perimeter::inject::SecretSource::Consumer(consumer_secret.to_string())
            } else {
                match secret_source(&inject.secret, base) {
                    Ok(source) => source,
                    Err(e) => {
                        c.problem(format!("{field}.secret"), e);
                        continue;
                    }
                }
            };
            list.push(crate::perimeter::inject::Injection {
                name: lower,
                prefix: inject.prefix.clone(),
                source,
                reference: inject.secret.clone(),
            });
        }
    };
    add(
        c,
        &format!("{key}.inject_headers"),
        &r.inject_headers,
        true,
        &mut out,
    );
    add(
        c,
        &format!("{key}.inject_query"),
        &r.inject_query,
        false,
        &mut out,
    );
    if let Some(u) = upstream {
        let ukey = "upstreams";
        add(
            c,
            &format!("{ukey}.{}.inject_headers", u.name),
            &u.inject_headers,
            true,
            &mut out,
        );
        add(
            c,
            &format!("{ukey}.{}.inject_query", u.name),
            &u.inject_query,
            false,
            &mut out,
        );
    }
    if r.audit && out.is_empty() {
        c.problem(
            format!("{key}.audit"),
            "audits credential injections: the route has none",
        );
    }
    (!out.is_empty()).then(|| Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(1_798_761_600));
        assert_eq!(
            parse_rfc3339("2027-01-01T01:00:00+01:00"),
            Some(1_798_761_600)
        );
        assert_eq!(
            parse_rfc3339("2027-01-01T00:00:00.250Z"),
            Some(1_798_761_600)
        );
        for bad in [
            "2027-01-01",
            "2027-13-01T00:00:00Z",
            "2027-01-01T00:00:00",
            "x027-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
