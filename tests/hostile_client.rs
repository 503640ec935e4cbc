//! Regression tests for the findings of the 2026-11-30 security audit
//! (/work/shared/audits/security-2026-11-30.md) where the attacker is a CLIENT: H2 (never
//! reads), H3 (one TLS byte), M1 (absolute-form vs Host), M3 (mTLS subject injection), M4
//! (slow admin client), M5 (path/host normalisation), M7 (Connection token flood), L2
//! (forwarding headers), L3 (dribbled body), L6 (config names, Expect on HTTP/1.0), and the
//! admin `/readyz`. The hostile clients live in tests/common/hostile.rs.

mod common;
use common::hostile::{self, read_until_closed};
use common::pki::{Ca, Tls, client_config, tls_connect, tls_listener, write_leaf};
use common::*;
use rcgen::PKCS_ECDSA_P256_SHA256;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `[server]` with `workers` shards, `[limits]` with `limits`, one plain listener.
fn config_head(workers: usize, limits: &str) -> String {
    format!(
        "[server]\nworkers = {workers}\ndrain_timeout = \"5s\"\n\n[limits]\n{limits}\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n"
    )
}

fn upstream_and_catch_all(origin: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n{upstream_extra}\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n"
    )
}

const HELLO_ROUTE: &str = "[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = { status = 200, body = \"hi\" }\n\n";

/// `ringgate echo` on a free port (killed on drop).
fn echo_origin() -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("echo-origin");
    let proc = spawn_bin(
        &dir,
        &["echo", "--bind", &addr.to_string(), "--workers", "1"],
    );
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "echo origin did not start: {}",
        proc.stderr()
    );
    (proc, addr)
}

/// One request on a new connection with `Connection: close`; `None` when no full answer
/// came within `timeout`.
fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> Option<Response> {
    try_get(addr, path, timeout).ok()
}

/// Like [`get_within`], with what went wrong (connect, write, timeout, EOF, reset).
fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut recording = ErrorRecordingReader {
        inner: &mut s,
        error: None,
    };
    ResponseReader::default()
        .try_read(&mut recording, false)
        .ok_or_else(|| match recording.error {
            Some(e) => format!("read after {:?}: {e}", started.elapsed()),
            None => format!(
                "connection closed after {:?} without a full response",
                started.elapsed()
            ),
        })
}

/// A reader that remembers its last error (ResponseReader treats errors like EOF).
struct ErrorRecordingReader<'a, R: Read> {
    inner: &'a mut R,
    error: Option<std::io::Error>,
}

impl<R: Read> Read for ErrorRecordingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }
}

// ---------------------------------------------------------------------------------------------
// H2

#[test]
fn h2_client_that_never_reads_is_cut_off_after_send_timeout() {
    let (_echo, echo) = echo_origin();
    let gw = Gateway::start(&format!(
        "{}{}",
        config_head(
            1,
            "send_timeout = \"2s\"\nidle_timeout = \"2s\"\nheader_read_timeout = \"2s\""
        ),
        upstream_and_catch_all(echo, "max_requests = 1")
    ));
    // sanity: the upstream works
    let r = get_within(gw.listen, "/bytes/10", Duration::from_secs(10)).expect("a first answer");
    assert_eq!(r.status, 200, "{}", r.head);

    let mut slow = hostile::never_reading_client(gw.listen);
    let slow_port = slow.local_addr().unwrap().port();
    let started = Instant::now();
    slow.write_all(b"GET /bytes/300000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Ready when the gateway's send queue to this client is stuck with data (its response
    // is in flight and holds the upstream's only max_requests slot).
    assert!(
        wait_until(Duration::from_secs(10), || {
            hostile::tcp_queues(gw.listen.port(), slow_port).is_some_and(|(tx, _)| tx > 100_000)
        }),
        "test setup: the gateway never queued the large response ({:?})",
        hostile::tcp_queues(gw.listen.port(), slow_port)
    );
    // A normal request to the same upstream must get 200 again once the gateway has given
    // up on the client that never reads (send_timeout = 2s), not 503 for good.
    let mut statuses = Vec::new();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(15) {
        let status = get_within(gw.listen, "/bytes/10", Duration::from_secs(5)).map(|r| r.status);
        statuses.push(status);
        if status == Some(200) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    statuses.dedup();
    assert!(
        served,
        "after {:?} the upstream slot is still held by the client that never reads; statuses seen: {statuses:?}",
        started.elapsed()
    );
    // ...and the gateway has closed that connection: its side is no longer ESTABLISHED...
    assert!(
        wait_until(Duration::from_secs(5), || !hostile::gateway_side_open(
            gw.listen.port(),
            &slow
        )),
        "the gateway still holds the connection of the client that never reads: state {:?}, queues {:?}",
        hostile::tcp_state(gw.listen.port(), slow_port),
        hostile::tcp_queues(gw.listen.port(), slow_port)
    );
    // ...so reading it to the end ends (EOF or reset) after at most what was queued, rather
    // than streaming the 300 MB or blocking.
    let end = read_until_closed(
        &mut slow,
        64 << 20,
        Duration::from_secs(5),
        Duration::from_secs(10),
    );
    assert!(end.is_ok(), "{}", end.unwrap_err());
}

#[test]
fn h2_pipelining_client_that_never_reads_is_cut_off() {
    let gw = Gateway::start(&format!(
        "{}{}",
        config_head(
            1,
            "send_timeout = \"2s\"\nidle_timeout = \"2s\"\nheader_read_timeout = \"2s\""
        ),
        HELLO_ROUTE
    ));
    let mut slow = hostile::never_reading_client(gw.listen);
    // the gateway's side of this connection is visible in /proc/net/tcp (else the check
    // below would prove nothing)
    assert!(
        wait_until(Duration::from_secs(5), || hostile::gateway_side_open(
            gw.listen.port(),
            &slow
        )),
        "test setup: the gateway side of the connection is not in /proc/net/tcp"
    );
    let request = b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n";
    let pipeline: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * (4_000_000 / request.len()))
        .collect();
    let started = Instant::now();
    let writer = hostile::spawn_writer(
        slow.try_clone().unwrap(),
        pipeline,
        64 * 1024,
        Duration::ZERO,
    );
    let closed = wait_until(Duration::from_secs(15), || {
        !hostile::gateway_side_open(gw.listen.port(), &slow)
    });
    let port = slow.local_addr().unwrap().port();
    assert!(
        closed,
        "after {:?} the gateway still holds a pipelining client that never reads (state {:?}, queues {:?}, {} request bytes sent)",
        started.elapsed(),
        hostile::tcp_state(gw.listen.port(), port),
        hostile::tcp_queues(gw.listen.port(), port),
        writer.written()
    );
    drop(writer);
    let end = read_until_closed(
        &mut slow,
        64 << 20,
        Duration::from_secs(5),
        Duration::from_secs(10),
    );
    assert!(end.is_ok(), "{}", end.unwrap_err());
    // the gateway is fine for others
    let r = get_within(gw.listen, "/hello", Duration::from_secs(5)).expect("answer");
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// H3

/// A TLS listener (certificate for `a.test` from a fresh CA) with `limits`, a `/hello` route.
fn tls_hello_gateway(workers: usize, limits: &str) -> (Ca, Gateway) {
    let ca = Ca::new("ringgate test ca");
    let dir = temp_dir("h3");
    let cert = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let gw = Gateway::start(&format!(
        "{}{}{}",
        config_head(workers, limits),
        tls_listener(&[cert], ""),
        HELLO_ROUTE
    ));
    (ca, gw)
}

fn tls_hello(tls: &mut Tls) -> Option<Response> {
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .ok()?;
    ResponseReader::default().try_read(tls, false)
}

#[test]
fn h3_tls_client_that_sends_one_byte_is_closed_on_time() {
    let (ca, gw) = tls_hello_gateway(2, "idle_timeout = \"2s\"\nheader_read_timeout = \"2s\"");
    let started = Instant::now();
    let mut attacker = hostile::tls_one_byte_client(gw.listen, client_config(&ca, None), "a.test")
        .expect("handshake");
    let end = read_until_closed(
        &mut attacker.sock,
        1 << 20,
        Duration::from_secs(10),
        Duration::from_secs(12),
    );
    let waited = started.elapsed();
    assert!(
        end.is_ok(),
        "one byte of a TLS record after the handshake: {}",
        end.unwrap_err()
    );
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
    // and a normal TLS client is served
    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    assert_eq!(tls_hello(&mut tls).expect("answer").status, 200);
}

#[test]
fn h3_one_byte_tls_clients_cannot_use_up_max_connections() {
    let (ca, gw) = tls_hello_gateway(
        1,
        "idle_timeout = \"2s\"\nheader_read_timeout = \"2s\"\nmax_connections = 20",
    );
    let config = client_config(&ca, None);
    let attackers: Vec<Tls> = (0..20)
        .map(|i| {
            hostile::tls_one_byte_client(gw.listen, config.clone(), "a.test")
                .unwrap_or_else(|e| panic!("attacker {i}: handshake: {e}"))
        })
        .collect();
    let started = Instant::now();
    // The attackers must be reaped by the header/idle timeouts (2 s), so a normal client
    // gets in well within 12 s.
    let mut last = String::new();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(12) {
        match tls_connect(gw.listen, config.clone(), "a.test") {
            Ok(mut tls) => {
                tls.sock
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                match tls_hello(&mut tls) {
                    Some(r) if r.status == 200 => {
                        served = true;
                        break;
                    }
                    other => last = format!("{:?}", other.map(|r| r.status)),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        served,
        "with 20 one-byte TLS clients holding max_connections = 20, a normal client was still refused after {:?} (last: {last})",
        started.elapsed()
    );
    drop(attackers);
}

// ---------------------------------------------------------------------------------------------
// M1

#[test]
fn m1_absolute_form_authority_is_what_the_origin_gets_as_host() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"admin\"\nhost = \"admin.example.com\"\ndirect_response = {{ status = 403, body = \"no\" }}\n\n[[routes]]\nname = \"public\"\nhost = \"public.example.com\"\nupstream = \"o\"\n",
        base_config(),
        origin.addr
    ));
    // sanity: the admin host is blocked
    let r = gw.request("GET /x HTTP/1.1\r\nHost: admin.example.com\r\n\r\n");
    assert_eq!(r.status, 403);

    let r =
        gw.request("GET http://public.example.com/x HTTP/1.1\r\nHost: admin.example.com\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = origin.received();
    let last = seen.last().expect("the request reached the origin");
    assert_eq!(
        last.header("host").as_deref(),
        Some("public.example.com"),
        "the origin must get the absolute-form authority as Host: {}",
        last.head
    );
    assert_eq!(
        last.header("x-forwarded-host").as_deref(),
        Some("public.example.com"),
        "{}",
        last.head
    );
    assert_eq!(last.headers_named("host"), 1, "{}", last.head);

    // an absolute-form target without a path means "/"
    let r = gw
        .request("GET http://public.example.com?x=1 HTTP/1.1\r\nHost: public.example.com\r\n\r\n");
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    let seen = origin.received();
    let last = seen.last().unwrap();
    assert_eq!(last.request_line(), "GET /?x=1 HTTP/1.1");
}

// ---------------------------------------------------------------------------------------------
// M3

#[test]
fn m3_client_certificate_subject_is_escaped_not_injected() {
    let ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let dir = temp_dir("m3");
    let cert = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let client_ca_path = client_ca.write_pem(&dir, "clients.pem");
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        base_config(),
        tls_listener(
            &[cert],
            &format!(
                "client_ca = {:?}\nclient_auth = \"required\"",
                client_ca_path.display().to_string()
            )
        ),
        upstream_and_catch_all(origin.addr, "")
    ));
    let subject_for = |cn: &str, path: &str| -> (String, String) {
        let leaf = client_ca.leaf(&[], cn, &PKCS_ECDSA_P256_SHA256);
        let mut tls = tls_connect(gw.listen, client_config(&ca, Some(&leaf)), "a.test")
            .unwrap_or_else(|e| panic!("mTLS handshake with CN {cn:?}: {e}"));
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .unwrap();
        let r = ResponseReader::default()
            .try_read(&mut tls, false)
            .unwrap_or_else(|| panic!("no answer for CN {cn:?}"));
        assert_eq!(r.status, 200, "CN {cn:?}: {}", r.head);
        let seen = origin.received();
        let req = seen
            .iter()
            .find(|r| r.request_line().starts_with(&format!("GET {path} ")))
            .expect("the request reached the origin");
        assert_eq!(
            req.headers_named("x-client-cert-subject"),
            1,
            "{:?}",
            req.head
        );
        (
            req.header("x-client-cert-subject").unwrap_or_default(),
            req.head.clone(),
        )
    };

    let (subject, head) = subject_for("alice\r\nx-injected: evil", "/alice");
    assert!(
        !head.to_ascii_lowercase().contains("\r\nx-injected:"),
        "a CR/LF in the certificate's CN injected a header line: {head:?}"
    );
    assert!(
        !subject.contains('\r') && !subject.contains('\n'),
        "{subject:?}"
    );
    assert_eq!(subject, r"CN=alice\0D\0Ax-injected: evil", "{head:?}");

    let (subject, head) = subject_for("mallory, O=admins", "/mallory");
    assert_eq!(
        subject, r"CN=mallory\, O=admins",
        "a ',' in a CN must be escaped (RFC 4514), not forge an RDN: {head:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// M4 and /readyz

fn admin_gateway() -> (Gateway, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\ndrain_timeout = \"5s\"\n\n[admin]\nbind = \"{admin}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n{HELLO_ROUTE}"
    ));
    assert!(
        wait_for_port(admin, Duration::from_secs(10)),
        "admin listener did not start: {}",
        gw.proc.stderr()
    );
    (gw, admin)
}

#[test]
fn m4_slow_admin_client_does_not_block_healthz() {
    let (_gw, admin) = admin_gateway();
    let slow = TcpStream::connect(admin).unwrap();
    // one byte every 1.5 s: under the old per-read timeout of 2 s this held the admin thread
    let dribbler = hostile::dribble(
        &slow,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n",
        Duration::from_millis(1500),
    );
    assert!(wait_until(Duration::from_secs(5), || dribbler.written() >= 1));
    // let the admin side pick the slow connection up first
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let t = Instant::now();
        let r = try_get(admin, "/healthz", Duration::from_secs(3));
        assert!(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "probe {i}: /healthz while one admin client dribbles: {:?} after {:?}",
            r.map(|r| r.status),
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    drop(dribbler);
}

#[test]
fn m4_many_slow_admin_clients_do_not_block_healthz() {
    let (_gw, admin) = admin_gateway();
    // 40 connections that each send one byte and then nothing (more than any thread pool
    // the admin could afford): /healthz must still answer at once.
    let slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let t = Instant::now();
        let r = try_get(admin, "/healthz", Duration::from_secs(3));
        assert!(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "probe {i}: /healthz with 40 stalled admin clients: {:?} after {:?}",
            r.map(|r| (r.status, r.text())),
            t.elapsed()
        );
    }
    drop(slow);
}

#[test]
fn a_second_upgrade_field_is_400() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}{}",
        base_config(),
        upstream_and_catch_all(origin.addr, "")
    ));
    let r = gw.request(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(origin.received().is_empty());
}

#[test]
fn admin_readyz_is_200_while_all_shards_are_alive() {
    let (gw, admin) = admin_gateway();
    for _ in 0..4 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    // Readiness is polled: right after start a shard may still be coming up (503 then).
    let mut last = Err(String::new());
    let ready = wait_until(Duration::from_secs(10), || {
        last = try_get(admin, "/readyz", Duration::from_secs(5)).map(|r| (r.status, r.text()));
        matches!(last, Ok((200, _)))
    });
    assert!(
        ready,
        "/readyz never answered 200 with every shard alive: last {last:?}"
    );
    let r = get_within(admin, "/healthz", Duration::from_secs(5)).expect("an answer on /healthz");
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// M5

fn m5_gateway(server_extra: &str) -> (Origin, Gateway) {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"admin-host\"\nhost = \"admin.example.com\"\ndirect_response = {{ status = 403, body = \"no\" }}\n\n[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\ndirect_response = {{ status = 403, body = \"no\" }}\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"o\"\n",
        base_config().replace(
            "drain_timeout = \"10s\"\n",
            &format!("drain_timeout = \"10s\"\n{server_extra}")
        ),
        origin.addr
    ));
    (origin, gw)
}

fn status_and_body(gw: &Gateway, host: &str, path: &str) -> (u16, String) {
    let r = gw.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ));
    (r.status, r.text())
}

#[test]
fn m5_paths_and_hosts_are_normalised_before_routing() {
    let (origin, gw) = m5_gateway("");
    let mut wrong = Vec::new();
    let mut expect = |host: &str, path: &str, status: u16, body: Option<&str>| {
        let (got, text) = status_and_body(&gw, host, path);
        if got != status || body.is_some_and(|b| b != text) {
            wrong.push(format!(
                "Host {host} {path}: expected {status} {body:?}, got {got} {text:?}"
            ));
        }
    };
    // sanity
    expect("a", "/admin/secret", 403, None);
    expect("a", "/public", 200, Some("path=/public"));
    // forms that used to dodge the /admin route
    expect("a", "//admin/secret", 403, None);
    expect("a", "/%61dmin/secret", 403, None);
    expect("a", "/admin;x/secret", 400, None);
    expect("a", "/x/..%2Fadmin/secret", 400, None);
    expect("a", "/admin%2Fsecret", 400, None);
    expect("a", "/admin%5Csecret", 400, None);
    // hosts
    expect("admin.example.com", "/x", 403, None);
    expect("admin.example.com.", "/x", 403, None);
    expect("ADMIN.example.com.", "/x", 403, None);
    // the normalised path is what the origin gets
    expect("a", "/a//b/%7Euser", 200, Some("path=/a/b/~user"));
    // Paths match case-sensitively (RFC 3986): /ADMIN is not /admin and goes to the "/"
    // route. An origin that treats paths case-insensitively needs its own rule.
    expect("a", "/ADMIN/x", 200, Some("path=/ADMIN/x"));
    // Escapes origins fold: encoded ';', control characters, bytes that never start UTF-8.
    expect("a", "/admin%3B", 400, None);
    expect("a", "/admin%00", 400, None);
    expect("a", "/admin%09", 400, None);
    expect("a", "/%C0%AFadmin", 400, None);
    // Hosts an origin's URL parser would read as admin.example.com are refused, not routed
    // to the catch-all; so is a host too long to be a DNS name.
    for host in [
        "admin.example.com?",
        "admin.example.com#",
        "admin.example.com\\x",
        "admin.example.com,x",
        "admin%2eexample.com",
        "admin.example.com..",
        "admin.example.com:80:80",
        "x:admin.example.com",
    ] {
        expect(host, "/x", 400, None);
    }
    let long = format!("{}.admin.example.com", "a".repeat(250));
    expect(&long, "/x", 400, None);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let leaked: Vec<String> = origin
        .received()
        .iter()
        .map(|r| r.request_line().to_string())
        .filter(|l| l.contains("admin") || l.contains("dmin"))
        .collect();
    assert!(leaked.is_empty(), "reached the origin: {leaked:?}");
}

#[test]
fn m5_path_escaped_slashes_keep_forwards_them_unchanged() {
    let (_origin, gw) = m5_gateway("path_escaped_slashes = \"keep\"\n");
    assert_eq!(
        status_and_body(&gw, "a", "/admin%2Fsecret"),
        (200, "path=/admin%2Fsecret".to_string())
    );
    // still routed on the normalised form
    assert_eq!(status_and_body(&gw, "a", "//admin/secret").0, 403);
}

// ---------------------------------------------------------------------------------------------
// M7

#[test]
fn m7_thousands_of_connection_tokens_are_400() {
    // 8 000 `Connection` tokens (16 KB, under max_header_bytes) used to grow the
    // per-connection header index to ~128 KiB, kept while idle and after close. The cap is
    // 32 tokens. (No RSS measurement here: a request with up to 32 tokens cannot amplify
    // memory, so the 400 is the behaviour to pin.)
    let gw = Gateway::start(&format!("{}{HELLO_ROUTE}", base_config()));
    let flood = format!(
        "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: {}\r\n\r\n",
        hostile::connection_tokens(8000)
    );
    assert!(
        flood.len() < 16 * 1024,
        "under the default max_header_bytes"
    );
    let answer = exchange_raw(&gw, flood.as_bytes());
    assert_eq!(
        status_of(&answer),
        400,
        "{}",
        &answer[..answer.len().min(300)]
    );
    // 30 tokens are allowed
    let ok = gw.request(&format!(
        "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: {}\r\n\r\n",
        hostile::connection_tokens(30)
    ));
    assert_eq!(ok.status, 200, "{}", ok.head);
}

// ---------------------------------------------------------------------------------------------
// L2

const SPOOFED: &str = "Forwarded: for=1.2.3.4;proto=https;host=bank.example\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /admin\r\nTransfer_Encoding: chunked\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nTrue-Client-IP: 1.2.3.4\r\nX-Forwarded: for=1.2.3.4\r\nX-Forwarded-For: 6.6.6.6\r\n";

#[test]
fn l2_client_forwarding_headers_are_not_trusted() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}{}",
        base_config(),
        upstream_and_catch_all(origin.addr, "")
    ));
    let r = gw.request(&format!("GET /x HTTP/1.1\r\nHost: a\r\n{SPOOFED}\r\n"));
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = origin.received();
    let req = &seen[0];
    let passed: Vec<&str> = [
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "transfer_encoding",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "true-client-ip",
        "x-forwarded",
    ]
    .into_iter()
    .filter(|name| req.header(name).is_some())
    .collect();
    assert!(
        passed.is_empty(),
        "passed through: {passed:?} in {:?}",
        req.head
    );
    assert_eq!(
        req.header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1"),
        "append is the default: {:?}",
        req.head
    );
}

#[test]
fn l2_x_forwarded_for_replace_keeps_only_the_client_address() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&format!(
        "{}{}",
        base_config().replace(
            "bind = \"{listen}\"\n",
            "bind = \"{listen}\"\nx_forwarded_for = \"replace\"\n"
        ),
        upstream_and_catch_all(origin.addr, "")
    ));
    let r = gw.request(&format!("GET /x HTTP/1.1\r\nHost: a\r\n{SPOOFED}\r\n"));
    assert_eq!(r.status, 200, "{}", r.head);
    let req = &origin.received()[0];
    assert_eq!(
        req.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{:?}",
        req.head
    );
    assert_eq!(req.headers_named("x-forwarded-for"), 1);
}

// ---------------------------------------------------------------------------------------------
// L3

#[test]
fn l3_dribbled_body_is_408_after_body_read_timeout() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&format!(
        "{}{}",
        config_head(1, "body_read_timeout = \"3s\"\nidle_timeout = \"10s\""),
        upstream_and_catch_all(origin.addr, "")
    ));
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    // one byte per second: each read is well within idle_timeout, the whole body is not
    let dribbler = hostile::dribble(&s, &[b'x'; 100], Duration::from_secs(1));
    let answer = ResponseReader::default().try_read(&mut s, false);
    let waited = started.elapsed();
    drop(dribbler);
    let answer = answer.unwrap_or_else(|| {
        panic!("no answer after {waited:?} to a body dribbled at 1 byte/s (body_read_timeout = 3s)")
    });
    assert_eq!(answer.status, 408, "{}{}", answer.head, answer.text());
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(
        origin.received().iter().all(|r| r.body.len() < 100),
        "the origin never gets the whole dribbled body"
    );
}

// ---------------------------------------------------------------------------------------------
// L6

fn check_config(name: &str, config: &str) -> (i32, String, PathBuf) {
    let dir = temp_dir("l6-check");
    let path = dir.join(name);
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
        path,
    )
}

#[test]
fn l6_check_refuses_gateway_owned_names_in_request_headers_add() {
    let config = |name: &str| {
        format!(
            "[[listeners]]\nname = \"main\"\nbind = \"127.0.0.1:1\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\nrequest_headers = {{ add = {{ \"{name}\" = \"v\" }} }}\n"
        )
    };
    // control: an ordinary name is fine, so a failure below is about the name
    let (code, out, _) = check_config("l6-ok.toml", &config("x-gateway"));
    assert_eq!(code, 0, "{out}");
    let mut wrong = Vec::new();
    for name in [
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "x-forwarded-for",
        "x-request-id",
    ] {
        let file = format!("l6-{name}.toml");
        let (code, out, _) = check_config(&file, &config(name));
        if code == 0 || !out.contains(&file) || !out.contains("routes[0].request_headers.add") {
            wrong.push(format!("{name}: exit {code}: {out}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "`check` must fail naming the file and routes[0].request_headers.add:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn l6_http10_expect_100_continue_gets_no_interim_response() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&format!(
        "{}{}",
        base_config(),
        upstream_and_catch_all(origin.addr, "")
    ));
    let mut s = gw.connect();
    s.write_all(
        b"POST /e HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    // a 1.0 client gets no 1xx (RFC 9110 15.2): whatever comes before we send the body
    // (the bug sent `HTTP/1.1 100 Continue` at once)
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut early = vec![0u8; 4096];
    let n = s.read(&mut early).unwrap_or(0);
    early.truncate(n);
    s.write_all(b"hello").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let all = String::from_utf8_lossy(&[early, rest].concat()).into_owned();
    assert!(
        !all.contains("100 Continue") && !all.starts_with("HTTP/1.1 1"),
        "an HTTP/1.0 client got an interim response: {all:?}"
    );
    assert_eq!(status_of(&all), 200, "{all:?}");
    assert!(all.ends_with("hello"), "{all:?}");
}

// ---------------------------------------------------------------------------------------------
// Admin token

fn admin_exchange(admin: SocketAddr, raw: &str) -> Response {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    ResponseReader::default().read(&mut s, false)
}

#[test]
fn admin_post_needs_the_bearer_token_and_get_on_loopback_does_not() {
    let dir = temp_dir("admin-token");
    std::fs::write(dir.join("admin.token"), "tok-7f3a9c1e\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 1\n\n[admin]\nbind = \"{admin}\"\ntoken = \"file:{}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n{HELLO_ROUTE}",
        dir.join("admin.token").display()
    ));
    assert!(
        wait_for_port(admin, Duration::from_secs(10)),
        "{}",
        gw.proc.stderr()
    );
    let get = admin_exchange(admin, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(get.status, 200, "GET on a loopback admin needs no token");
    for authorization in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic dG9r\r\n",
    ] {
        let r = admin_exchange(
            admin,
            &format!(
                "POST /reload HTTP/1.1\r\nHost: a\r\n{authorization}Content-Length: 0\r\n\r\n"
            ),
        );
        assert_eq!(r.status, 401, "{authorization:?}: {}", r.head);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
        assert!(!r.text().contains("tok-7f3a9c1e"));
    }
    // With the token the reload goes through (the same file, reloaded).
    let r = admin_exchange(
        admin,
        "POST /reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-7f3a9c1e\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().contains(r#""generation":2"#), "{}", r.text());
    assert!(
        !gw.proc.stderr().contains("tok-7f3a9c1e"),
        "the token reached a log line"
    );
}

#[test]
fn check_refuses_an_admin_beyond_loopback_without_a_token() {
    let config = format!(
        "[admin]\nbind = \"0.0.0.0:9901\"\n\n[[listeners]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n{HELLO_ROUTE}"
    );
    let (code, out, path) = check_config("admin-open.toml", &config);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(path.to_str().unwrap()) && out.contains("admin.token"),
        "{out}"
    );
    let with_token = config.replace(
        "bind = \"0.0.0.0:9901\"\n",
        "bind = \"0.0.0.0:9901\"\ntoken = \"env:RINGGATE_TEST_ADMIN_TOKEN_SURELY_UNSET\"\n",
    );
    let (code, out, _) = check_config("admin-token-unset.toml", &with_token);
    assert_ne!(code, 0, "an unset token variable is a config error: {out}");
    assert!(
        out.contains("RINGGATE_TEST_ADMIN_TOKEN_SURELY_UNSET"),
        "{out}"
    );
}
