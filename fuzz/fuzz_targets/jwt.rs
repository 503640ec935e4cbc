//! Any bytes as a JWT: splitting, base64url, the JOSE header and the claims must refuse or
//! verify without panicking; with the fuzzer's bytes nothing may verify (it has no key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::auth::jwt::{Algorithm, ClaimRules, KeySet, kid_of, verify};

fuzz_target!(|data: &[u8]| {
    let keys = KeySet::from_secret(b"0123456789abcdef0123456789abcdef", &[Algorithm::HS256])
        .expect("a valid secret");
    let rules = ClaimRules {
        issuer: None,
        audiences: Vec::new(),
        leeway: 30,
        consumer_claim: "sub".into(),
        roles_claim: "roles".into(),
        scopes_claim: "scope".into(),
        forward_claims: vec![("x-user".into(), "sub".into())],
    };
    let _ = kid_of(data);
    assert!(verify(data, &keys, &[Algorithm::HS256, Algorithm::RS256], &rules, 1_000).is_err());
});
