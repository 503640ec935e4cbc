//! The audit log through the real binary: every admin POST (with the peer and whether its
//! token was accepted) and every reload (with its outcome) is one JSON line; a token's value
//! never appears.

mod common;
use common::reloadable::*;
use common::*;
use std::time::Duration;

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn admin_posts_and_reloads_are_audited_without_the_token() {
    let good = "[server]\nworkers = 2\n\n[admin]\nbind = \"{admin}\"\ntoken = \"file:admin.token\"\n\n[audit_log]\npath = \"audit.log\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{listen}\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = { status = 200, body = \"hi\" }\n";
    let gw = Reloadable::start(good);
    let log = gw.path.with_file_name("audit.log");
    assert_eq!(gw.admin("POST", "/reload", Some("wrong")).0, 401);
    // A method no endpoint takes is refused before any token check: the answer cannot tell
    // a right token from a wrong one.
    assert_eq!(gw.admin("PUT", "/reload", Some("wrong")).0, 405);
    assert_eq!(gw.admin("PUT", "/reload", Some(TOKEN)).0, 405);
    gw.reload();
    gw.write(&format!("{good}bogus = 1\n"));
    assert_eq!(gw.admin("POST", "/reload", Some(TOKEN)).0, 400);
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            found = events(&log);
            found.len() == 5
        }),
        "{found:#?}"
    );
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains(TOKEN), "the token reached the audit log");
    let summary: Vec<(String, String)> = found
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let admin: Vec<&(String, String)> = summary.iter().filter(|(e, _)| e == "admin").collect();
    assert_eq!(admin.len(), 3, "{summary:?}");
    assert!(admin[0].1.contains("POST /reload: refused"), "{summary:?}");
    assert!(
        admin[1].1.contains("accepted") && admin[2].1.contains("accepted"),
        "{summary:?}"
    );
    let reloads: Vec<&(String, String)> = summary.iter().filter(|(e, _)| e == "reload").collect();
    assert_eq!(reloads.len(), 2, "{summary:?}");
    assert!(
        reloads[0].1.starts_with("applied generation 2"),
        "{summary:?}"
    );
    assert!(
        reloads[1].1.starts_with("refused") && reloads[1].1.contains("bogus"),
        "{summary:?}"
    );
    for e in &found {
        assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        for field in [
            "ts",
            "event",
            "request_id",
            "client_ip",
            "route",
            "consumer",
            "reason",
            "secret",
        ] {
            assert!(e.get(field).is_some(), "{field} missing from {e}");
        }
    }
    let admin_event = found.iter().find(|e| e["event"] == "admin").unwrap();
    assert_eq!(
        admin_event["secret"], "file:admin.token",
        "the secret by its name only"
    );
}
