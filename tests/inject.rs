//! Upstream credential injection through the real binary: the origin gets exactly one
//! injected header (the client's copies, any case, any number, never reach it) and the
//! injected query parameter instead of the client's; the secret appears in no response, log,
//! audit line, `/config` or `check` output; a `file:` secret rotates without a reload;
//! `consumer:` secrets are per consumer, 403 when the consumer has none; counted and audited.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const LIVE_KEY: &str = "sk-live-UPSTREAM-7f3a9c";
const ACME_KEY: &str = "sk-acme-OWN-41d2";
const FILE_KEY: &str = "maps-FILE-KEY-1";
const ROTATED_KEY: &str = "maps-FILE-KEY-2";

fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut m = TcpStream::connect(admin).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(m, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = m.read_to_string(&mut text);
    text
}

#[test]
fn injected_credentials_reach_only_the_origin_rotate_and_are_per_consumer() {
    let origin = Origin::start(|_| ok(b"done"));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (acme_key, acme_line) = keygen("acme", "acme");
    let (bob_key, bob_line) = keygen("bob", "bob");
    let dir = temp_dir("inject-secrets");
    let key_file = dir.join("maps.key");
    std::fs::write(&key_file, format!("{FILE_KEY}\n")).unwrap();
    // SAFETY: set before the gateway process is spawned; only read by it.
    unsafe {
        std::env::set_var("RG_TEST_LIVE_KEY", LIVE_KEY);
        std::env::set_var("RG_TEST_ACME_KEY", ACME_KEY);
    }
    let config = format!(
        "[server]\nworkers = 2\n\n[admin]\nbind = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n\n[audit_log]\npath = \"audit.log\"\n\n[[consumers]]\nname = \"acme\"\n{acme_line}\nsecrets = {{ openai = \"env:RG_TEST_ACME_KEY\" }}\n\n[[consumers]]\nname = \"bob\"\n{bob_line}\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"llm\"\ntargets = [\"{}\"]\ninject_query = {{ \"key\" = {{ secret = \"file:{}\" }} }}\n\n[[routes]]\nname = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"llm\"\nauth = [\"api_key\"]\ninject_headers = {{ \"Authorization\" = {{ secret = \"env:RG_TEST_LIVE_KEY\", prefix = \"Bearer \" }} }}\n\n[[routes]]\nname = \"per\"\npath_prefix = \"/per\"\nupstream = \"llm\"\nauth = [\"api_key\"]\naudit = true\ninject_headers = {{ \"x-upstream-key\" = {{ secret = \"consumer:openai\" }} }}\n",
        origin.addr,
        key_file.display()
    );
    let gw = Gateway::start(&config);
    let r = gw.request(&format!(
        "GET /llm/v1/chat?key=client-own&model=x&KEY=other HTTP/1.1\r\nHost: t\r\nx-api-key: {acme_key}\r\nauthorization: Bearer client-own\r\nAUTHORIZATION: Basic Zm9v\r\nAuthoriZation: x\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.received().pop().unwrap();
    assert_eq!(seen.headers_named("authorization"), 1, "{}", seen.head);
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {LIVE_KEY}")
    );
    assert!(!seen.head.contains("client-own"), "{}", seen.head);
    assert_eq!(
        seen.request_line(),
        format!("GET /llm/v1/chat?model=x&KEY=other&key={FILE_KEY} HTTP/1.1")
    );
    let all_bytes = format!("{}{}", r.head, r.text());
    for secret in [LIVE_KEY, FILE_KEY, ACME_KEY] {
        assert!(!all_bytes.contains(secret), "a secret reached the client");
    }

    // A consumer's own key; another consumer without one gets 403.
    let r = gw.request(&format!("GET /per/1 HTTP/1.1\r\nHost: t\r\nx-api-key: {acme_key}\r\nx-upstream-key: forged\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 200);
    let seen = origin.received().pop().unwrap();
    assert_eq!(seen.headers_named("x-upstream-key"), 1);
    assert_eq!(seen.header("x-upstream-key").as_deref(), Some(ACME_KEY));
    let reached = origin.received().len();
    let r = gw.request(&format!(
        "GET /per/1 HTTP/1.1\r\nHost: t\r\nx-api-key: {bob_key}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 403);
    assert!(
        r.text()
            .contains("no upstream credential for this consumer")
    );
    assert_eq!(origin.received().len(), reached);

    // Rotation without reload: the file changes, the next requests carry the new value.
    std::fs::write(&key_file, format!("{ROTATED_KEY}\n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let r = gw.request(&format!("GET /llm/x HTTP/1.1\r\nHost: t\r\nx-api-key: {acme_key}\r\nConnection: close\r\n\r\n"));
            r.status == 200
                && origin
                    .received()
                    .last()
                    .is_some_and(|s| s.request_line().contains(ROTATED_KEY))
        }),
        "the rotated file value never reached the origin: {}",
        gw.proc.stderr()
    );

    let metrics = admin_get(admin, "/metrics");
    assert!(
        metrics.contains("ringgate_credential_injections_total{route=\"per\",consumer=\"acme\",secret=\"consumer:openai\"} 1"),
        "{metrics}"
    );
    let audit = gw.dir.join("audit.log");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("credential_injected")
    }));
    std::thread::sleep(Duration::from_millis(300));
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        audit_text.contains("\"secret\":\"consumer:openai\""),
        "{audit_text}"
    );
    let config_json = admin_get(admin, "/config");
    let access = std::fs::read_to_string(gw.dir.join("access.log")).unwrap_or_default();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args([
            "check",
            "--config",
            gw.dir.join("ringgate.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for (what, text) in [
        ("audit log", &audit_text),
        ("/config", &config_json),
        ("access log", &access),
        ("check", &check_out),
        ("metrics", &metrics),
        ("stderr", &gw.proc.stderr()),
    ] {
        for secret in [LIVE_KEY, FILE_KEY, ROTATED_KEY, ACME_KEY] {
            assert!(!text.contains(secret), "{what} shows a secret");
        }
    }
}

#[test]
fn a_missing_secret_is_a_config_error_naming_the_key_not_the_value() {
    let dir = temp_dir("inject-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\ninject_headers = { \"x-key\" = { secret = \"env:RG_SURELY_UNSET_VAR\" } }\ninject_query = { \"k\" = { secret = \"file:nope.txt\" } }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[0].inject_headers.x-key.secret"),
        "{err}"
    );
    assert!(err.contains("RG_SURELY_UNSET_VAR"), "{err}");
    assert!(err.contains("routes[0].inject_query.k.secret"), "{err}");

    // A "secret" file that is really something else (a log, a dump) is refused, not read.
    std::fs::write(dir.join("big.key"), "x".repeat(70 * 1024)).unwrap();
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\ninject_headers = { \"x-key\" = { secret = \"file:big.key\" } }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[0].inject_headers.x-key.secret") && err.contains("over 65536 bytes"),
        "{err}"
    );
}

#[test]
fn a_file_secret_rotates_with_a_relative_config_path_and_trace_is_refused() {
    let origin = Origin::start(|_| ok(b"done"));
    let dir = temp_dir("inject-relative");
    std::fs::write(dir.join("maps.key"), format!("{FILE_KEY}\n")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        dir.join("gw.toml"),
        format!(
            "[server]\nworkers = 1\n\n[[listeners]]\nname = \"main\"\nbind = \"{listen}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"o\"\ninject_query = {{ \"key\" = {{ secret = \"file:maps.key\" }} }}\n",
            origin.addr
        ),
    )
    .unwrap();
    // `--config gw.toml` from inside its folder: the secret's path stays relative.
    let proc = spawn_bin_from(&dir, Some(&dir), &["run", "--config", "gw.toml"]);
    assert!(
        wait_for_port(listen, Duration::from_secs(15)),
        "{}",
        proc.stderr()
    );
    let get = |method: &str| {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        ResponseReader::default().read(&mut s, method == "HEAD")
    };
    assert_eq!(get("GET").status, 200);
    assert!(origin.received()[0].request_line().contains(FILE_KEY));
    std::fs::write(dir.join("maps.key"), format!("{ROTATED_KEY}\n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || get("GET").status == 200
            && origin
                .received()
                .last()
                .is_some_and(|r| r.request_line().contains(ROTATED_KEY))),
        "{}",
        proc.stderr()
    );
    // An origin answering TRACE would echo the injected credential back.
    let reached = origin.received().len();
    assert_eq!(get("TRACE").status, 405);
    assert_eq!(origin.received().len(), reached);
}

#[test]
fn an_origin_redirect_never_hands_the_injected_parameter_to_the_client() {
    const KEY: &str = "sk-redirect/7f3a+9c";
    // The origin redirects to its own URL, with the request's query in it (as many do).
    let origin = Origin::start(|r| {
        let target = r
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("/")
            .to_string();
        Action::Raw(
            format!(
                "HTTP/1.1 302 Found {target}\r\nLocation: https://api.example{target}#frag\r\nContent-Location: {target}\r\nLink: <{target}>; rel=\"next\"\r\nRefresh: 0; url=/login?next={}#/cb{target}\r\ncontent-length: 0\r\n\r\n",
                target.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('&', "%26").replace('=', "%3D")
            )
            .into_bytes(),
        )
    });
    // SAFETY: set before the gateway starts; no other thread of this test reads it.
    unsafe { std::env::set_var("RG_TEST_REDIRECT_KEY", KEY) };
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"o\"\ninject_query = {{ \"api_key\" = {{ secret = \"env:RG_TEST_REDIRECT_KEY\" }} }}\n",
        origin.addr
    ));
    let r = gw.get("/v1/x?a=1&api%5Fkey=mine&b=2");
    assert_eq!(r.status, 302);
    // The origin got the key (encoded as a query value) ...
    let sent = origin.received()[0].request_line().to_string();
    assert!(sent.contains("api_key=sk-redirect%2F7f3a%2B9c"), "{sent}");
    // ... and no byte of the answer carries it, in any form (status line, Link, Refresh
    // with the URL encoded inside another parameter, a fragment).
    let head = r.head.to_ascii_lowercase();
    for form in ["sk-redirect", "7f3a"] {
        assert!(!head.contains(form), "{}", r.head);
    }
    assert!(
        r.header("link").unwrap().contains("[redacted]"),
        "{}",
        r.head
    );
    assert!(
        r.header("refresh").unwrap().contains("[redacted]"),
        "{}",
        r.head
    );
    assert_eq!(
        r.header("location"),
        Some("https://api.example/v1/x?a=1&b=2#frag")
    );
    assert_eq!(r.header("content-location"), Some("/v1/x?a=1&b=2"));
    let r = gw.get("/only");
    assert_eq!(r.header("location"), Some("https://api.example/only#frag"));
    assert_eq!(r.header("content-location"), Some("/only"));
}

#[test]
fn a_consumer_file_secret_rotates_without_a_reload() {
    let origin = Origin::start(|r| ok(r.header("x-upstream-key").unwrap_or_default().as_bytes()));
    let dir = temp_dir("inject-consumer-file");
    std::fs::write(dir.join("acme.key"), "acme-FILE-1\n").unwrap();
    let (key, line) = keygen("acme", "acme");
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\n\n[[consumers]]\nname = \"acme\"\n{line}\nsecrets = {{ own = \"file:{}\" }}\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"o\"\nauth = [\"api_key\"]\ninject_headers = {{ \"x-upstream-key\" = {{ secret = \"consumer:own\" }} }}\n",
        dir.join("acme.key").display(),
        origin.addr
    ));
    let get = || {
        gw.request(&format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
        ))
    };
    assert_eq!(get().status, 200);
    assert_eq!(
        origin.received()[0].header("x-upstream-key").as_deref(),
        Some("acme-FILE-1")
    );
    std::fs::write(dir.join("acme.key"), "acme-FILE-2\n").unwrap();
    // Both shards get the new value: every later request carries it.
    assert!(wait_until(Duration::from_secs(15), || {
        (0..4).all(|_| {
            get();
            origin
                .received()
                .last()
                .and_then(|r| r.header("x-upstream-key"))
                .as_deref()
                == Some("acme-FILE-2")
        })
    }));
}
