//! Identity through the real binary: API keys (from `ringgate keygen`), JWTs signed in the
//! test with real keys (RS256 from `openssl`, ES256 and EdDSA from ring, HS256), a table of
//! hostile tokens, JWKS served by a local HTTP server (rotation, outage, never fetched),
//! roles and scopes, the shard-local cache, what the origin gets.

mod common;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const HS_SECRET: &str = "an-hmac-secret-of-more-than-32-bytes!!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The signing keys of one test run, and the JWKS that publishes their public halves.
struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: Vec<u8>,
    ec: EncodingKey,
    ed: EncodingKey,
    jwks: serde_json::Value,
}

fn keys(dir: &std::path::Path) -> Keys {
    let pem = dir.join("rsa.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&["genrsa", "-out", pem.to_str().unwrap(), "2048"]);
    let modulus = String::from_utf8(run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-noout",
        "-modulus",
    ]))
    .unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let rsa_public_pem = run(&["rsa", "-in", pem.to_str().unwrap(), "-pubout"]);
    let rng = ring::rand::SystemRandom::new();
    let ec_pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ec_pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = ec_pair.public_key().as_ref();
    let ed_pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_pair = ring::signature::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig", "n": B64.encode(&n), "e": "AQAB"},
        {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
        {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": B64.encode(ed_pair.public_key().as_ref())},
    ]});
    Keys {
        rsa: EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(),
        rsa_public_pem,
        ec: EncodingKey::from_ec_der(ec_pkcs8.as_ref()),
        ed: EncodingKey::from_ed_der(ed_pkcs8.as_ref()),
        jwks,
    }
}

fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": "https://idp.test/", "aud": "orders", "sub": sub, "exp": now() + 600,
        "roles": ["reader"], "scope": "orders:read orders:write", "email": "a@b.test",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token from raw header and payload JSON, with a given signature segment.
fn forge(header: &str, payload: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header),
        B64.encode(payload.to_string())
    )
}

fn get(gw: &Gateway, path: &str, headers: &str) -> Response {
    gw.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    ))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn jwt_config(origin: SocketAddr, jwks_file: &str, extra: &str) -> String {
    format!(
        "{}[admin]\nbind = \"{{admin}}\"\n\n[jwt.idp]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nissuer = \"https://idp.test/\"\naudiences = [\"orders\", \"other\"]\njwks_file = \"{jwks_file}\"\nleeway = \"0s\"\nforward_claims = {{ \"x-user-email\" = \"email\" }}\n\n[jwt.hs]\nalgorithms = [\"HS256\"]\nsecret = \"env:RG_TEST_HS\"\nissuer = \"https://idp.test/\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"o\"\nauth = [\"jwt:idp\", \"jwt:hs\"]\n\n[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"o\"\nauth = [\"jwt:idp\"]\nrequire_roles = [\"admin\"]\n\n[[routes]]\nname = \"write\"\npath_prefix = \"/write\"\nupstream = \"o\"\nauth = [\"jwt:idp\"]\nrequire_scopes = [\"orders:write\", \"orders:delete\"]\n\n{extra}",
        base_config()
    )
}

struct JwtGateway {
    gw: Gateway,
    admin: SocketAddr,
}

fn start_jwt_gateway(origin: SocketAddr, jwks: &serde_json::Value, extra: &str) -> JwtGateway {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("jwks");
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    // SAFETY: set before the gateway process is spawned; tests in this file only read it.
    unsafe { std::env::set_var("RG_TEST_HS", HS_SECRET) };
    let config =
        jwt_config(origin, file.to_str().unwrap(), extra).replace("{admin}", &admin.to_string());
    JwtGateway {
        gw: Gateway::start(&config),
        admin,
    }
}

#[test]
fn good_tokens_of_every_algorithm_pass_with_consumer_and_claims_and_bad_ones_never_reach_the_origin()
 {
    let origin = Origin::echo_path();
    let dir = temp_dir("keys");
    let k = keys(&dir);
    let JwtGateway { gw, admin } = start_jwt_gateway(origin.addr, &k.jwks, "");
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let good = [
        sign(
            Algorithm::RS256,
            Some("rsa1"),
            &k.rsa,
            &claims("alice", serde_json::json!({})),
        ),
        sign(
            Algorithm::ES256,
            Some("ec1"),
            &k.ec,
            &claims("bob", serde_json::json!({})),
        ),
        sign(
            Algorithm::EdDSA,
            Some("ed1"),
            &k.ed,
            &claims("carol", serde_json::json!({})),
        ),
        // A `kid` the secret has none of: HMAC issuers often set one.
        sign(
            Algorithm::HS256,
            Some("k1"),
            &hs,
            &claims("dave", serde_json::json!({"aud": null})),
        ),
    ];
    for (token, who) in good.iter().zip(["alice", "bob", "carol", "dave"]) {
        let r = get(
            &gw,
            "/orders/1",
            &format!(
                "{}x-consumer: mallory\r\nX-User-Email: ceo@corp.test\r\n",
                bearer(token)
            ),
        );
        assert_eq!(r.status, 200, "{who}: {}", r.text());
        let seen = origin.received().pop().unwrap();
        assert_eq!(
            seen.header("x-consumer").as_deref(),
            Some(who),
            "{}",
            seen.head
        );
        assert_eq!(
            seen.headers_named("x-consumer"),
            1,
            "the client's own is dropped"
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "credentials are not forwarded"
        );
        assert!(
            !seen.head.contains("ceo@corp"),
            "a client's copy of a forwarded claim reached the origin: {}",
            seen.head
        );
        if who != "dave" {
            assert_eq!(seen.header("x-user-email").as_deref(), Some("a@b.test"));
        }
    }
    let reached = origin.received().len();

    let c = |extra: serde_json::Value| claims("eve", extra);
    let ok_claims = c(serde_json::json!({}));
    let rs = |claims: &serde_json::Value| sign(Algorithm::RS256, Some("rsa1"), &k.rsa, claims);
    let good_rs = rs(&ok_claims);
    let (gh, gp, gs) = {
        let p: Vec<&str> = good_rs.split('.').collect();
        (p[0].to_string(), p[1].to_string(), p[2].to_string())
    };
    let other_rsa = keys(&temp_dir("other")).rsa;
    let mut bad: Vec<(&str, String)> = vec![
        ("alg none", forge(r#"{"alg":"none"}"#, &ok_claims, "")),
        (
            "alg none with sig",
            forge(r#"{"alg":"none"}"#, &ok_claims, "AAAA"),
        ),
        (
            "alg None",
            forge(r#"{"alg":"None","kid":"rsa1"}"#, &ok_claims, &gs),
        ),
        (
            "alg NONE",
            forge(r#"{"alg":"NONE","kid":"rsa1"}"#, &ok_claims, &gs),
        ),
        ("alg nOnE", forge(r#"{"alg":"nOnE"}"#, &ok_claims, "x")),
        (
            "HS256 with the RSA public key",
            sign(
                Algorithm::HS256,
                Some("rsa1"),
                &EncodingKey::from_secret(&k.rsa_public_pem),
                &ok_claims,
            ),
        ),
        (
            "HS256 with the public key, no kid",
            sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(&k.rsa_public_pem),
                &ok_claims,
            ),
        ),
        ("signature stripped", format!("{gh}.{gp}.")),
        (
            "signature truncated",
            format!("{gh}.{gp}.{}", &gs[..gs.len() - 8]),
        ),
        (
            "signature of another token",
            format!(
                "{gh}.{}.{gs}",
                B64.encode(c(serde_json::json!({"sub": "root"})).to_string())
            ),
        ),
        (
            "signed by another key",
            sign(Algorithm::RS256, Some("rsa1"), &other_rsa, &ok_claims),
        ),
        ("expired", rs(&c(serde_json::json!({"exp": now() - 120})))),
        (
            "nbf in the future",
            rs(&c(serde_json::json!({"nbf": now() + 600}))),
        ),
        (
            "wrong iss",
            rs(&c(serde_json::json!({"iss": "https://evil.test/"}))),
        ),
        ("no iss", rs(&c(serde_json::json!({"iss": null})))),
        (
            "no matching aud",
            rs(&c(serde_json::json!({"aud": ["x", "y"]}))),
        ),
        ("no aud", rs(&c(serde_json::json!({"aud": null})))),
        ("no exp", rs(&c(serde_json::json!({"exp": null})))),
        (
            "exp as a string",
            rs(&c(serde_json::json!({"exp": "9999999999"}))),
        ),
        ("no sub", rs(&c(serde_json::json!({"sub": null})))),
        (
            "sub with spaces around",
            rs(&c(serde_json::json!({"sub": " alice"}))),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("nope"), &k.rsa, &ok_claims),
        ),
        (
            "kid path traversal",
            sign(
                Algorithm::RS256,
                Some("../../etc/passwd"),
                &k.rsa,
                &ok_claims,
            ),
        ),
        (
            "embedded jwk",
            forge(
                &format!(r#"{{"alg":"RS256","jwk":{}}}"#, k.jwks["keys"][0]),
                &ok_claims,
                &gs,
            ),
        ),
        (
            "jku elsewhere",
            forge(
                r#"{"alg":"RS256","jku":"http://127.0.0.1:1/k"}"#,
                &ok_claims,
                &gs,
            ),
        ),
        (
            "x5u elsewhere",
            forge(
                r#"{"alg":"RS256","x5u":"http://127.0.0.1:1/c"}"#,
                &ok_claims,
                &gs,
            ),
        ),
        ("two segments", format!("{gh}.{gp}")),
        ("four segments", format!("{gh}.{gp}.{gs}.{gs}")),
        ("bad base64url", format!("{gh}.{gp}*.{gs}")),
        ("padding", format!("{gh}=.{gp}.{gs}")),
        (
            "standard base64 chars",
            format!("{gh}.{gp}.{}+/", &gs[..gs.len() - 2]),
        ),
        (
            "non-JSON header",
            format!("{}.{gp}.{gs}", B64.encode("not json")),
        ),
        (
            "non-JSON payload",
            format!("{gh}.{}.{gs}", B64.encode("[1,2")),
        ),
        (
            "unknown crit",
            forge(
                r#"{"alg":"RS256","kid":"rsa1","crit":["exp-x"],"exp-x":1}"#,
                &ok_claims,
                &gs,
            ),
        ),
        (
            "claim with a newline",
            rs(&c(serde_json::json!({"email": "a@b\r\nx-admin: 1"}))),
        ),
        (
            "token over 8 KiB",
            rs(&c(serde_json::json!({"pad": "p".repeat(9000)}))),
        ),
        (
            "alg not allowed (RS384)",
            sign(Algorithm::RS384, Some("rsa1"), &k.rsa, &ok_claims),
        ),
        ("empty token", String::new()),
    ];
    // The signature segment of a valid token under a header that changed: invalid.
    bad.push((
        "header swapped to ES256",
        forge(r#"{"alg":"ES256","kid":"rsa1"}"#, &ok_claims, &gs),
    ));
    assert!(bad.len() >= 30);
    for (what, token) in &bad {
        let r = get(&gw, "/orders/1", &bearer(token));
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.starts_with("Bearer realm=\"ringgate\""),
            "{what}: {challenge}"
        );
        if !token.is_empty() {
            assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        }
        assert!(
            !r.text().contains(token.as_str()) || token.is_empty(),
            "{what}: the token was echoed"
        );
    }
    let two = format!("{}{}", bearer(&good[0]), bearer(&good[0]));
    assert_eq!(
        get(&gw, "/orders/1", &two).status,
        401,
        "two Authorization fields"
    );
    let none = get(&gw, "/orders/1", "");
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"ringgate\"")
    );
    assert_eq!(
        origin.received().len(),
        reached,
        "no bad token reached the origin"
    );
    assert!(
        admin_metric(
            admin,
            "ringgate_auth_denied_total{route=\"orders\",reason=\"token_signature\"}"
        ) >= 1
    );
    assert!(
        admin_metric(
            admin,
            "ringgate_auth_denied_total{route=\"orders\",reason=\"missing_credentials\"}"
        ) >= 1
    );
}

#[test]
fn roles_and_scopes_refuse_with_403_and_the_cache_verifies_once() {
    let origin = Origin::echo_path();
    let k = keys(&temp_dir("keys"));
    let JwtGateway { gw, admin } = start_jwt_gateway(origin.addr, &k.jwks, "");
    let reader = sign(
        Algorithm::ES256,
        Some("ec1"),
        &k.ec,
        &claims("r", serde_json::json!({})),
    );
    let r = get(&gw, "/admin/x", &bearer(&reader));
    assert_eq!(r.status, 403, "{}", r.text());
    let admin_token = sign(
        Algorithm::ES256,
        Some("ec1"),
        &k.ec,
        &claims("a", serde_json::json!({"roles": ["reader", "admin"]})),
    );
    assert_eq!(get(&gw, "/admin/x", &bearer(&admin_token)).status, 200);
    let r = get(&gw, "/write/x", &bearer(&reader));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"ringgate\", error=\"insufficient_scope\"")
    );
    let all_scopes = sign(
        Algorithm::ES256,
        Some("ec1"),
        &k.ec,
        &claims(
            "w",
            serde_json::json!({"scope": ["orders:write", "orders:delete"]}),
        ),
    );
    assert_eq!(get(&gw, "/write/x", &bearer(&all_scopes)).status, 200);

    // One keep-alive connection stays on one shard: one verification, then hits.
    let token = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &k.rsa,
        &claims("c", serde_json::json!({})),
    );
    let misses_before = admin_metric(admin, "ringgate_jwt_cache_misses_total");
    let hits_before = admin_metric(admin, "ringgate_jwt_cache_hits_total");
    let mut s = gw.connect();
    let mut reader_ = ResponseReader::default();
    for _ in 0..5 {
        s.write_all(
            format!(
                "GET /orders/c HTTP/1.1\r\nHost: t\r\n{}\r\n",
                bearer(&token)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(reader_.read(&mut s, false).status, 200);
    }
    assert_eq!(
        admin_metric(admin, "ringgate_jwt_cache_misses_total") - misses_before,
        1
    );
    assert_eq!(
        admin_metric(admin, "ringgate_jwt_cache_hits_total") - hits_before,
        4
    );

    // A cached token is refused once its exp passes (leeway 0).
    let short = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &k.rsa,
        &claims("s", serde_json::json!({"exp": now() + 2})),
    );
    s.write_all(
        format!(
            "GET /orders/s HTTP/1.1\r\nHost: t\r\n{}\r\n",
            bearer(&short)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(reader_.read(&mut s, false).status, 200);
    std::thread::sleep(Duration::from_millis(3500));
    s.write_all(
        format!(
            "GET /orders/s HTTP/1.1\r\nHost: t\r\n{}\r\n",
            bearer(&short)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(reader_.read(&mut s, false).status, 401);
}

/// A JWKS server: answers with whatever `body` holds, or 500 while it is empty.
fn jwks_server(body: Arc<Mutex<String>>) -> Origin {
    Origin::start(move |_| {
        let body = body.lock().unwrap().clone();
        if body.is_empty() {
            Action::Raw(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n".to_vec())
        } else {
            ok(body.as_bytes())
        }
    })
}

#[test]
fn jwks_by_url_rotates_survives_an_outage_and_answers_503_before_the_first_fetch() {
    let origin = Origin::echo_path();
    let k = keys(&temp_dir("keys"));
    let body = Arc::new(Mutex::new(k.jwks.to_string()));
    let server = jwks_server(body.clone());
    let dead = free_port();
    let extra = format!(
        "[jwt.url]\nalgorithms = [\"RS256\", \"ES256\"]\njwks_url = \"http://{}/jwks.json\"\njwks_refresh = \"1s\"\n\n[jwt.never]\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:{dead}/jwks.json\"\n\n[[routes]]\nname = \"u\"\npath_prefix = \"/u\"\nupstream = \"o\"\nauth = [\"jwt:url\"]\n\n[[routes]]\nname = \"n\"\npath_prefix = \"/n\"\nupstream = \"o\"\nauth = [\"jwt:never\"]\n",
        server.addr
    );
    let JwtGateway { gw, .. } = start_jwt_gateway(origin.addr, &k.jwks, &extra);
    let rsa_token = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &k.rsa,
        &claims("u", serde_json::json!({})),
    );
    assert!(
        wait_until(Duration::from_secs(15), || get(
            &gw,
            "/u/1",
            &bearer(&rsa_token)
        )
        .status
            == 200),
        "keys from the URL never arrived: {}",
        gw.proc.stderr()
    );
    let r = get(&gw, "/n/1", &bearer(&rsa_token));
    assert_eq!(r.status, 503, "never fetched: {}", r.text());

    // Outage: the server fails every refresh; the last good keys keep serving.
    body.lock().unwrap().clear();
    let fetches = server.received().len();
    assert!(wait_until(Duration::from_secs(10), || server
        .received()
        .len()
        >= fetches + 2));
    assert_eq!(get(&gw, "/u/1", &bearer(&rsa_token)).status, 200);
    assert!(
        gw.proc.stderr().contains("jwt.url.jwks_url: fetch failed"),
        "{}",
        gw.proc.stderr()
    );

    // Rotation: a new key with a new kid is accepted once the set is refetched.
    let other = keys(&temp_dir("rotated"));
    let mut rotated = other.jwks.clone();
    rotated["keys"][0]["kid"] = "rsa2".into();
    *body.lock().unwrap() = rotated.to_string();
    let new_token = sign(
        Algorithm::RS256,
        Some("rsa2"),
        &other.rsa,
        &claims("v", serde_json::json!({})),
    );
    assert!(
        wait_until(Duration::from_secs(20), || get(
            &gw,
            "/u/1",
            &bearer(&new_token)
        )
        .status
            == 200),
        "the rotated key was never accepted"
    );
    // Each shard takes the new set from its inbox on its own tick: the shard that answered
    // the new token may be ahead of the one that answers next.
    assert!(
        wait_until(Duration::from_secs(10), || get(
            &gw,
            "/u/1",
            &bearer(&rsa_token)
        )
        .status
            == 401),
        "the old key is gone"
    );
}

#[test]
fn api_keys_from_keygen_work_by_header_apikey_scheme_and_configured_query_and_rotate() {
    let keygen = |consumer: &str| keygen(consumer, &format!("{consumer}-1"));
    let (key1, line1) = keygen("acme");
    let (key2, line2) = keygen("acme");
    let (expired_key, expired_line) = keygen("old");
    let expired_line = expired_line.replace(" }", ", expires = \"2020-01-01T00:00:00Z\" }");
    let both = format!(
        "api_keys = [ {}, {} ]",
        line1
            .trim_start_matches("api_keys = [ ")
            .trim_end_matches(" ]"),
        line2
            .trim_start_matches("api_keys = [ ")
            .trim_end_matches(" ]")
            .replace("acme-1", "acme-2")
    );
    let origin = Origin::echo_path();
    let config = |keys_line: &str| {
        format!(
            "{}[api_keys]\nquery = \"api_key\"\n\n[[consumers]]\nname = \"acme\"\nroles = [\"buyer\"]\n{keys_line}\n\n[[consumers]]\nname = \"old\"\n{expired_line}\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"k\"\npath_prefix = \"/k\"\nupstream = \"o\"\nauth = [\"api_key\"]\nrequire_roles = [\"buyer\"]\n",
            base_config(),
            origin.addr
        )
    };
    let gw = Gateway::start(&config(&both));
    for (how, path, headers) in [
        (
            "header",
            "/k/1".to_string(),
            format!("x-api-key: {key1}\r\n"),
        ),
        (
            "ApiKey scheme",
            "/k/1".to_string(),
            format!("Authorization: ApiKey {key2}\r\n"),
        ),
        (
            "query",
            format!("/k/1?a=1&api_key={key1}&b=2"),
            String::new(),
        ),
    ] {
        let r = get(&gw, &path, &headers);
        assert_eq!(r.status, 200, "{how}: {}", r.text());
        let seen = origin.received().pop().unwrap();
        assert_eq!(seen.header("x-consumer").as_deref(), Some("acme"));
        assert_eq!(
            seen.header("x-api-key"),
            None,
            "{how}: the key reached the origin"
        );
        assert!(
            !seen.head.contains(&key1) && !seen.head.contains(&key2),
            "{how}: {}",
            seen.head
        );
        if how == "query" {
            assert_eq!(seen.request_line(), "GET /k/1?a=1&b=2 HTTP/1.1");
        }
    }
    let reached = origin.received().len();
    for (what, headers) in [
        ("wrong", "x-api-key: rgk_not-a-key\r\n".to_string()),
        ("expired", format!("x-api-key: {expired_key}\r\n")),
        ("missing", String::new()),
    ] {
        let r = get(&gw, "/k/1", &headers);
        assert_eq!(r.status, 401, "{what}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("ApiKey realm=\"ringgate\""),
            "{what}"
        );
    }
    assert_eq!(origin.received().len(), reached);
    // A refused HEAD has no body: the next response on the connection is read whole.
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    let two = format!(
        "HEAD /k/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /k/2 HTTP/1.1\r\nHost: t\r\nx-api-key: {key1}\r\n\r\n"
    );
    s.write_all(two.as_bytes()).unwrap();
    let head = reader.read(&mut s, true);
    assert_eq!((head.status, head.body.len()), (401, 0));
    assert_eq!(reader.read(&mut s, false).status, 200);
    assert!(reader.leftover().is_empty(), "bytes after the answers");
    drop(gw);
    // The old key removed from the config: refused, the new one still works.
    let gw = Gateway::start(&config(&line2.replace("acme-1", "acme-2")));
    assert_eq!(
        get(&gw, "/k/1", &format!("x-api-key: {key1}\r\n")).status,
        401
    );
    assert_eq!(
        get(&gw, "/k/1", &format!("x-api-key: {key2}\r\n")).status,
        200
    );
}

#[test]
fn tokens_in_a_cookie_or_query_are_removed_before_the_origin_and_denials_are_audited_and_logged() {
    let origin = Origin::start(|r| ok(r.head.as_bytes()));
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    // SAFETY: set before the gateway process is spawned; tests in this file only read it.
    unsafe { std::env::set_var("RG_TEST_HS", HS_SECRET) };
    let gw = Gateway::start(&format!(
        "{}[access_log]\npath = \"access.log\"\n\n[audit_log]\npath = \"audit.log\"\n\n[jwt.c]\nalgorithms = [\"HS256\"]\nsecret = \"env:RG_TEST_HS\"\ntoken = \"cookie:session\"\n\n[jwt.q]\nalgorithms = [\"HS256\"]\nsecret = \"env:RG_TEST_HS\"\ntoken = \"query:access_token\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"c\"\npath_prefix = \"/c\"\nupstream = \"o\"\nauth = [\"jwt:c\"]\n\n[[routes]]\nname = \"q\"\npath_prefix = \"/q\"\nupstream = \"o\"\nauth = [\"jwt:q\"]\n",
        base_config(),
        origin.addr
    ));
    let token = sign(
        Algorithm::HS256,
        None,
        &hs,
        &claims("zoe", serde_json::json!({})),
    );
    let r = get(
        &gw,
        "/c/1",
        &format!("Cookie: theme=dark; session={token}; lang=en\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.text();
    assert!(
        !seen.contains(&token),
        "the token cookie reached the origin: {seen}"
    );
    assert!(seen.contains("cookie: theme=dark; lang=en\r\n"), "{seen}");
    let r = get(&gw, &format!("/q/1?access_token={token}&x=1"), "");
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /q/1?x=1 HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    assert_eq!(get(&gw, "/q/1?access_token=abc.def.ghi", "").status, 401);
    // A second copy under an encoded or padded name (what origins decode to the same name)
    // is ambiguous, not ignored.
    let encoded = format!("/q/1?access_token={token}&access%5Ftoken=forged");
    assert_eq!(get(&gw, &encoded, "").status, 401);
    let padded = format!("Cookie: session={token}; session =forged\r\n");
    assert_eq!(get(&gw, "/c/1", &padded).status, 401);

    let audit = gw.dir.join("audit.log");
    let mut events = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        events = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        events.len() >= 3
    }));
    // Two shards flush their lines independently: look each refusal up by its reason.
    let parsed: Vec<serde_json::Value> = events
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(&str, &str, &str)> = parsed
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["route"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("auth_denied", "q", "token_bad_header"),
        ("auth_denied", "q", "ambiguous_credentials"),
        ("auth_denied", "c", "ambiguous_credentials"),
    ] {
        assert!(
            summary.contains(&expected),
            "{expected:?} missing: {summary:?}"
        );
    }
    for e in &parsed {
        assert!(e["request_id"].is_string() && e["client_ip"] == "127.0.0.1");
    }
    let raw = events.concat();
    assert!(
        !raw.contains("abc.def") && !raw.contains(&token),
        "a token reached the audit log"
    );
    let access = gw.dir.join("access.log");
    let mut lines = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        lines.len() >= 3
    }));
    // Lines from two shards come in any order: the cookie request's line names zoe.
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        parsed
            .iter()
            .any(|v| v["consumer"] == "zoe" && v["route"] == "c" && v["status"] == 200),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains(&token)));
}
