//! Limits a client controls, through a real listener: 413 (up front and mid-stream), 431
//! (bytes and count), 414, 408, and that nothing of a rejected request reaches the origin.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn config(origin: std::net::SocketAddr) -> String {
    format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n",
        base_config().replace(
            "[[listeners]]",
            "[limits]\nmax_body_bytes = \"1KiB\"\nmax_header_bytes = \"2KiB\"\nmax_headers = 10\nmax_uri_bytes = 256\nheader_read_timeout = \"1s\"\n\n[[listeners]]",
        )
    )
}

#[test]
fn body_over_the_limit_is_413_up_front() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&config(origin.addr));
    let answer = exchange_raw(
        &gw,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("\"status\":413"));
    assert!(origin.received().is_empty());
}

#[test]
fn chunked_body_growing_past_the_limit_is_cut_off() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&config(origin.addr));
    let mut raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend(std::iter::repeat_n(b'a', 0x200));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange_raw(&gw, &raw);
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(
        origin.received().iter().all(|r| r.body.len() <= 1024),
        "the origin never gets a whole oversized body"
    );
}

#[test]
fn too_many_or_too_large_headers_are_431() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&config(origin.addr));
    let many: String = (0..12).map(|i| format!("X-{i}: v\r\n")).collect();
    let answer = exchange_raw(
        &gw,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(status_of(&answer), 431, "{answer}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let answer = exchange_raw(&gw, big.as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert!(origin.received().is_empty());
}

#[test]
fn long_request_target_is_414() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&config(origin.addr));
    let raw = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(300));
    let answer = exchange_raw(&gw, raw.as_bytes());
    assert_eq!(status_of(&answer), 414, "{answer}");
    assert!(origin.received().is_empty());
}

#[test]
fn dribbled_head_is_cut_off_with_408_while_others_are_served() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&config(origin.addr));
    let mut slow = gw.connect();
    let started = Instant::now();
    // One header byte every 200 ms: progress alone must not keep the head alive.
    let mut dribbler = slow.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        for &b in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if dribbler.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Other clients are served normally meanwhile.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(gw.get("/fast").status, 200);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    let _ = dribble.join();
    let answer = String::from_utf8_lossy(&all);
    assert_eq!(status_of(&answer), 408, "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(origin.received().len(), 5);
}

fn one_shard_config(origin: std::net::SocketAddr, limits: &str) -> String {
    format!(
        "[server]\nworkers = 1\n\n[limits]\n{limits}\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n"
    )
}

fn keep_alive_get(s: &mut std::net::TcpStream, path: &str) -> Option<Response> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .ok()?;
    ResponseReader::default().try_read(s, false)
}

/// Whether the gateway closes a fresh connection without answering its request.
fn refused(gw: &Gateway) -> bool {
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    keep_alive_get(&mut s, "/refused").is_none()
}

fn connection_cap_holds(limits: &str) {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&one_shard_config(origin.addr, limits));
    let mut open: Vec<_> = (0..3).map(|_| gw.connect()).collect();
    for (i, s) in open.iter_mut().enumerate() {
        assert_eq!(keep_alive_get(s, &format!("/{i}")).unwrap().status, 200);
    }
    assert!(refused(&gw), "a 4th connection is closed at once");
    // The admitted ones keep working.
    for s in &mut open {
        assert_eq!(keep_alive_get(s, "/again").unwrap().status, 200);
    }
    assert!(
        origin
            .received()
            .iter()
            .all(|r| !r.head.contains("/refused"))
    );
    // A slot frees up when a client leaves.
    drop(open.pop());
    assert!(wait_until(Duration::from_secs(10), || !refused(&gw)));
}

#[test]
fn max_connections_refuses_new_connections_and_keeps_existing_ones() {
    connection_cap_holds("max_connections = 3");
}

#[test]
fn max_connections_per_ip_caps_one_client_address() {
    connection_cap_holds("max_connections_per_ip = 3");
}

#[test]
fn stalled_request_body_is_408_after_the_idle_timeout() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&one_shard_config(origin.addr, "idle_timeout = \"1s\""));
    let mut s = gw.connect();
    let started = Instant::now();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    // meanwhile another client is served
    assert_eq!(gw.get("/fast").status, 200);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let answer = String::from_utf8_lossy(&all);
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(origin.received().iter().all(|r| !r.head.contains("/slow")));
}
