//! Regression tests for the findings of the 2026-11-30 security audit
//! (/work/shared/audits/security-2026-11-30.md) where the attacker is a misbehaving ORIGIN:
//! H1 (early answer + stop reading panics a shard), M2 (origin never reads a request body),
//! M6 (unsolicited 101, tunnel idle), M8 (stale TLS bytes in a pooled connection), L1 (POST
//! replayed on a fresh connection), L6 (idle pooled connections closed proactively).
//! The hostile origins live in tests/common/hostile.rs.

mod common;
use common::hostile::{self, HostileOrigin, SockOpts, read_until_closed};
use common::pki::Ca;
use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One listener, one upstream `o` (with `upstream_extra` keys) and a catch-all route to it
/// (with `route_extra` keys); `workers` shards.
fn proxy_config(
    workers: usize,
    limits: &str,
    origin: SocketAddr,
    upstream_extra: &str,
    route_extra: &str,
) -> String {
    format!(
        "[server]\nworkers = {workers}\ndrain_timeout = \"5s\"\n\n[limits]\n{limits}\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n{upstream_extra}\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n{route_extra}\n"
    )
}

#[test]
fn h1_early_answer_origin_does_not_kill_a_shard() {
    // The origin answers a POST after reading only its head and then never reads again; its
    // listening socket has SO_RCVBUF = 2048 and TCP_MAXSEG = 536 (a WAN-like MSS on
    // loopback), so the gateway's 63 000-byte body write cannot finish within the early-answer
    // grace and is cancelled. With a 64 KiB read buffer (max_header_bytes = 64KiB, or grown by
    // the 60 KB response head) that cancellation used to leave the BufConn inconsistent and
    // the next `buffered()` panicked the whole shard, whose listener then black-holed new
    // connections.
    let origin = hostile::early_answer_origin();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\ndrain_timeout = \"5s\"\n\n[limits]\nmax_header_bytes = \"64KiB\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"up\"\npath_prefix = \"/up\"\nupstream = \"up\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hello\" }}\n",
        origin.addr
    ));
    let mut post = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    post.extend(std::iter::repeat_n(b'x', 63_000));
    // Several rounds on new connections, so that both shards (SO_REUSEPORT spreads them)
    // very likely see the trigger.
    let mut rounds = 0;
    let mut round_failure = None;
    for round in 0..4 {
        let mut s = gw.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /up/big HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        match ResponseReader::default().try_read(&mut s, false) {
            Some(big) if big.status == 200 && big.body.len() == 10_000 => {}
            other => {
                // (a shard killed by an earlier round takes its connections with it)
                round_failure = Some(format!(
                    "round {round}: GET /up/big (60 KB head, 10 000-byte body) got {:?}",
                    other.map(|r| (r.status, r.body.len()))
                ));
                break;
            }
        }
        // As in the audit's reproducer: the connection goes idle (its buffers are recycled)
        // before the POST comes.
        std::thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(&post);
        // The early answer (or the connection's end, when a shard died): either comes fast.
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = ResponseReader::default().try_read(&mut s, false);
        drop(s);
        rounds += 1;
    }
    let answered_early = wait_until(Duration::from_secs(5), || {
        origin.events("early-answered").len() >= rounds
    });
    // Every shard must still be accepting and serving: 20 new connections, concurrently,
    // each gets 200 within a few seconds (a dead shard's listener would leave about half
    // of them hanging).
    let probes: Vec<_> = (0..20)
        .map(|i| {
            let addr = gw.listen;
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map_err(|e| format!("probe {i}: connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .map_err(|e| format!("probe {i}: write: {e}"))?;
                match ResponseReader::default().try_read(&mut s, false) {
                    Some(r) if r.status == 200 => Ok(()),
                    Some(r) => Err(format!("probe {i}: status {}", r.status)),
                    None => Err(format!("probe {i}: no answer within 5 s (hung)")),
                }
            })
        })
        .collect();
    let failures: Vec<String> = probes
        .into_iter()
        .filter_map(|p| p.join().unwrap().err())
        .collect();
    let stderr = gw.proc.stderr();
    assert!(
        !stderr.contains("panicked"),
        "a shard panicked:\n{stderr}\n({round_failure:?}; /hello probe failures: {failures:?})"
    );
    assert!(
        failures.is_empty(),
        "{} of 20 /hello probes failed after the trigger: {failures:?}\nstderr:\n{stderr}",
        failures.len()
    );
    assert_eq!(round_failure, None, "stderr:\n{stderr}");
    assert!(
        answered_early,
        "test setup: the origin answered early {} times in {rounds} rounds",
        origin.events("early-answered").len()
    );
}

#[test]
fn m2_origin_that_never_reads_the_body_gets_a_504() {
    // The origin accepts and never reads (SO_RCVBUF = 2048): the request body write to it
    // stalls. With send_timeout = 2s and response_timeout = 2s the client gets a 504 soon,
    // instead of waiting up to 24 h.
    let origin = hostile::never_reading_origin();
    let gw = Gateway::start(&proxy_config(
        1,
        "send_timeout = \"2s\"\nidle_timeout = \"10s\"",
        origin.addr,
        "response_timeout = \"2s\"",
        "",
    ));
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    // keeps sending the body in the background (bounded: 10 MB, stops when dropped)
    let _sender = hostile::spawn_writer(
        s.try_clone().unwrap(),
        vec![b'x'; 10_000_000],
        64 * 1024,
        Duration::ZERO,
    );
    let answer = ResponseReader::default().try_read(&mut s, false);
    let waited = started.elapsed();
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "no response within {waited:?} while the origin never reads the body (origin saw {} connection(s))",
            origin.connection_count()
        )
    });
    assert_eq!(answer.status, 504, "{}{}", answer.head, answer.text());
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    assert!(
        origin.connection_count() >= 1,
        "the request reached the origin"
    );
}

fn upgrade_config(origin: SocketAddr, route_extra: &str) -> String {
    proxy_config(2, "idle_timeout = \"10s\"", origin, "", route_extra)
}

#[test]
fn m6_unsolicited_101_is_a_502_and_h2c_is_not_forwarded() {
    let origin = hostile::unsolicited_101_origin();
    let gw = Gateway::start(&upgrade_config(origin.addr, ""));
    // A request that asked for no upgrade: the origin's 101 must not open a tunnel.
    let plain = gw.request("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        plain.status, 502,
        "a 101 to a request without Upgrade: {}",
        plain.head
    );
    // h2c is not in the default allow-list (upgrade_protocols = ["websocket"]): the origin
    // must not see the Upgrade, and its 101 anyway is a 502.
    let h2c =
        gw.request("GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n");
    let heads = origin.heads();
    let h2c_head = heads
        .iter()
        .find(|h| h.starts_with("GET /h2c "))
        .unwrap_or_else(|| panic!("the h2c request reached the origin: {heads:?}"));
    let upgrade_fields: Vec<&str> = h2c_head
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("upgrade:"))
        .collect();
    assert!(
        upgrade_fields.is_empty(),
        "the origin got an Upgrade for a protocol outside the allow-list: {h2c_head:?}"
    );
    assert_eq!(h2c.status, 502, "{}", h2c.head);
}

/// Sends a websocket upgrade on a new connection; returns the stream after the 101.
fn websocket(gw: &Gateway) -> (TcpStream, Response) {
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut reader = ResponseReader::default();
    let r = reader.read(&mut s, false);
    assert!(
        reader.leftover().is_empty(),
        "nothing after the 101 yet: {:?}",
        reader.leftover()
    );
    (s, r)
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut out = vec![0u8; n];
    s.read_exact(&mut out)
        .unwrap_or_else(|e| panic!("reading {n} tunnelled bytes: {e}"));
    out
}

#[test]
fn m6_websocket_upgrade_still_tunnels_both_ways() {
    let origin = hostile::unsolicited_101_origin();
    let gw = Gateway::start(&upgrade_config(origin.addr, ""));
    let (mut s, r) = websocket(&gw);
    assert_eq!(r.status, 101, "{}", r.head);
    let head = &origin.heads()[0];
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nupgrade: websocket\r\n"),
        "the origin got the websocket Upgrade: {head:?}"
    );
    for msg in [
        &b"hello tunnel"[..],
        &[0u8, 1, 2, 255, 13, 10][..],
        &[b'z'; 5000][..],
    ] {
        s.write_all(msg).unwrap();
        assert_eq!(read_exactly(&mut s, msg.len()), msg);
    }
}

#[test]
fn m6_tunnel_is_closed_after_tunnel_idle_timeout() {
    let origin = hostile::unsolicited_101_origin();
    let gw = Gateway::start(&upgrade_config(origin.addr, "tunnel_idle_timeout = \"1s\""));
    let (mut s, r) = websocket(&gw);
    assert_eq!(r.status, 101, "{}", r.head);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut s, 4), b"ping");
    let silent_since = Instant::now();
    let closed = read_until_closed(&mut s, 1024, Duration::from_secs(8), Duration::from_secs(9));
    let waited = silent_since.elapsed();
    assert!(
        closed.is_ok(),
        "a silent tunnel with tunnel_idle_timeout = 1s: {}",
        closed.unwrap_err()
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(6),
        "closed after {waited:?} of silence"
    );
}

#[test]
fn m8_stale_tls_record_from_a_pooled_origin_never_reaches_another_client() {
    // The TLS origin sends a complete 3 978-byte response and, in the same TCP write, a
    // second TLS record holding `HTTP/1.1 200 OK ... POISON`. That record straddles the
    // ~4 KiB the TLS layer reads at once, so it used to sit undecrypted while the connection
    // went back to the pool, and became the next client's response.
    let ca = Ca::new("origin ca");
    let leaf = ca.leaf(&["origin.test"], "origin", &rcgen::PKCS_ECDSA_P256_SHA256);
    let origin = hostile::tls_poison_origin(&leaf);
    let dir = temp_dir("m8");
    let ca_file = ca.write_pem(&dir, "origin-ca.pem");
    let gw = Gateway::start(&proxy_config(
        1,
        "",
        origin.addr,
        &format!(
            "tls = true\ntls_server_name = \"origin.test\"\ntls_ca_file = {:?}",
            ca_file.display().to_string()
        ),
        "",
    ));
    for round in 0..3 {
        let a = gw.get("/a");
        assert_eq!(a.status, 200, "round {round}, client A: {}", a.head);
        assert_eq!(
            a.body.len(),
            hostile::POISON_FIRST_RESPONSE
                - "HTTP/1.1 200 OK\r\ncontent-length: 0000\r\n\r\n".len(),
            "round {round}: client A gets its own response"
        );
        let b = gw.get("/b");
        assert_ne!(
            b.text(),
            "POISON",
            "round {round}: client B got the bytes the origin left after A's response"
        );
        assert_eq!(
            (b.status, b.text().as_str()),
            (200, "fresh"),
            "round {round}: client B gets the origin's real answer (on a clean connection)"
        );
    }
    assert!(
        origin.events("poisoned").len() >= 3,
        "the origin sent its extra record each round (test setup): {}",
        origin.events("poisoned").len()
    );
}

#[test]
fn l1_post_dropped_by_a_pooled_origin_is_not_replayed() {
    // The origin answers a connection's first request, then reads the second (POST /pay with
    // its body) and closes without answering. The gateway may not know whether the POST ran:
    // it must answer 502 instead of re-sending it on a fresh connection.
    let origin = hostile::closes_on_second_request_origin();
    let gw = Gateway::start(&proxy_config(1, "", origin.addr, "", ""));
    for attempt in 0..5 {
        let path = format!("/pay/{attempt}");
        let mut s = gw.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET /warm/{attempt} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let warm = ResponseReader::default().read(&mut s, false);
        assert_eq!(warm.status, 200, "warm-up: {}", warm.head);
        // give the gateway a moment to put the origin connection back in its pool
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\namount=10")
                .as_bytes(),
        )
        .unwrap();
        let answer = ResponseReader::default().try_read(&mut s, false);
        let posts: Vec<Received> = origin
            .received()
            .into_iter()
            .filter(|r| r.request_line().starts_with(&format!("POST {path} ")))
            .collect();
        let Some(first) = posts.first() else {
            panic!("attempt {attempt}: the POST never reached the origin; answer {answer:?}")
        };
        if first.index_on_connection == 0 {
            // The POST went out on a new origin connection (the pooled one was not back in
            // the pool yet), so the scenario did not happen: try again.
            continue;
        }
        assert_eq!(
            posts.len(),
            1,
            "the origin received POST {path} {} times (replayed): {posts:?}",
            posts.len()
        );
        let answer = answer.expect("an answer to the POST");
        assert_eq!(answer.status, 502, "{}{}", answer.head, answer.text());
        return;
    }
    panic!("test setup: in 5 attempts the POST never went out on a pooled connection");
}

#[test]
fn l6_idle_pooled_upstream_connection_is_closed_after_its_idle_timeout() {
    // A pooled upstream connection idle past the upstream's idle_timeout used to be closed
    // only when a later checkout found it. It must be closed proactively.
    let origin = hostile::eof_watching_origin();
    let gw = Gateway::start(&proxy_config(
        1,
        "",
        origin.addr,
        "idle_timeout = \"1s\"",
        "",
    ));
    let r = gw.get("/x");
    assert_eq!((r.status, r.text().as_str()), (200, "pooled"));
    let answered = Instant::now();
    let closed = wait_until(Duration::from_secs(5), || !origin.events("eof").is_empty());
    let eofs = origin.events("eof");
    assert!(
        closed,
        "the origin saw no EOF on its idle pooled connection within idle_timeout (1 s) + 4 s ({} connection(s))",
        origin.connection_count()
    );
    let after = eofs[0].at.saturating_duration_since(answered);
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}: the connection was not kept in the pool at all"
    );
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
}

/// An origin that answers a POST (401) without reading its body leaves the body in its
/// socket, where it would become the start of the next request on that connection. When the
/// answer came before the gateway had sent the whole body, that connection must never be
/// pooled: the next client's request (and its cookie) must not be absorbed into the rest of
/// the first client's body.
#[test]
fn early_answered_upstream_connection_is_never_pooled() {
    let origin = HostileOrigin::start(SockOpts::default(), |peer| {
        while let Some(head) = peer.read_head() {
            let reply: &[u8] = if head.starts_with("POST ") {
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nvictim"
            };
            if !peer.send(reply) {
                return;
            }
        }
    });
    let gw = Gateway::start(&proxy_config(1, "", origin.addr, "", ""));
    // The body (20 000 bytes: streamed, not inline) starts a request with no end of head.
    let mut body = b"GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Ignore: ".to_vec();
    body.resize(20_000, b'a');
    let mut attacker = gw.connect();
    attacker
        .write_all(b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n")
        .unwrap();
    attacker.write_all(&body[..10_000]).unwrap();
    let first = ResponseReader::default().read(&mut attacker, false);
    assert_eq!(first.status, 401);
    // The rest of the body right after the early answer (within the gateway's grace).
    attacker.write_all(&body[10_000..]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let victim = gw.request(
        "GET /victim HTTP/1.1\r\nHost: a\r\nCookie: session=VICTIM-SECRET\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(victim.status, 200, "{}", victim.head);
    assert_eq!(victim.text(), "victim");
    let absorbed: Vec<String> = origin
        .heads()
        .into_iter()
        .filter(|h| h.contains("VICTIM-SECRET") && !h.starts_with("GET /victim"))
        .map(|h| format!("{} … ({} bytes)", &h[..h.len().min(60)], h.len()))
        .collect();
    assert!(absorbed.is_empty(), "victim absorbed: {absorbed:?}");
    assert_eq!(
        origin.connection_count(),
        2,
        "the victim went on a new connection"
    );
}
