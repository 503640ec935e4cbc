//! Proxying through the real binary: keep-alive, pipelining, bodies, 100-continue, forwarding
//! and transformed headers, HTTP/1.0, HEAD, upgrades.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;

fn proxy_config(origin: SocketAddr, route_extra: &str) -> String {
    format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"o\"\n{route_extra}\n",
        base_config()
    )
}

#[test]
fn keep_alive_is_reused_on_both_sides() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for i in 0..20 {
        write!(s, "GET /n/{i} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("path=/n/{i}"));
        assert!(
            r.header("connection").is_none(),
            "keep-alive response must not close"
        );
    }
    assert_eq!(origin.received().len(), 20);
    assert_eq!(
        origin.connection_count(),
        1,
        "the gateway must reuse one upstream connection"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let batch: String = (0..5)
        .map(|i| format!("GET /p/{i} HTTP/1.1\r\nHost: test\r\n\r\n"))
        .collect();
    s.write_all(batch.as_bytes()).unwrap();
    let mut reader = ResponseReader::default();
    for i in 0..5 {
        let r = reader.read(&mut s, false);
        assert_eq!(r.text(), format!("path=/p/{i}"));
    }
}

#[test]
fn chunked_request_body_reaches_origin_rechunked() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let raw = "POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let r = gw.request(raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    let got = &origin.received()[0];
    assert!(got.chunked, "a chunked body stays chunked upstream");
    assert_eq!(got.body, b"hello world");
    assert!(!got.head.contains("ext=1"));
    assert_eq!(got.headers_named("transfer-encoding"), 1);
    assert!(got.header("content-length").is_none());
}

#[test]
fn chunked_response_body_reaches_client() {
    let origin = Origin::start(|_| {
        Action::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n".to_vec())
    });
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert!(r.chunked);
        assert_eq!(r.text(), "abcdefg");
    }
    assert_eq!(origin.connection_count(), 1);
}

#[test]
fn close_delimited_response_is_rechunked_for_http11_clients() {
    let origin =
        Origin::start(|_| Action::RawThenClose(b"HTTP/1.0 200 OK\r\n\r\nuntil-close".to_vec()));
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert!(r.chunked, "a close-delimited body is re-framed as chunked");
        assert_eq!(r.text(), "until-close");
    }
    assert_eq!(
        origin.connection_count(),
        2,
        "a close-delimited upstream connection is never reused"
    );
}

#[test]
fn expect_100_continue_is_answered_by_the_gateway() {
    let origin = Origin::start(|r| ok(&r.body));
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ping");
    let got = &origin.received()[0];
    assert!(
        got.header("expect").is_none(),
        "Expect is handled by the gateway"
    );
}

#[test]
fn forwarding_headers_and_request_id() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let r = gw.request("GET /f HTTP/1.1\r\nHost: api.example.com:8080\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let got = &origin.received()[0];
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(got.header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("api.example.com:8080")
    );
    assert_eq!(
        got.header("host").as_deref(),
        Some("api.example.com:8080"),
        "client Host is kept"
    );
    let id = got.header("x-request-id").expect("request id generated");
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "same id returned to the client"
    );

    let r = gw.request(
        "GET /f HTTP/1.1\r\nHost: t\r\nX-Request-Id: client-id-1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert_eq!(
        origin.received()[1].header("x-request-id").as_deref(),
        Some("client-id-1")
    );
    assert_eq!(origin.received()[1].headers_named("x-request-id"), 1);
}

#[test]
fn header_transforms_and_hop_by_hop_removal() {
    let origin = Origin::start(|_| {
        Action::Raw(b"HTTP/1.1 200 OK\r\nServer: origin\r\nX-Internal: secret\r\nConnection: X-Internal\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let extra = "host_rewrite = \"internal.svc\"\nrequest_headers = { add = { \"x-gateway\" = \"ringgate\" }, remove = [\"x-debug\"] }\nresponse_headers = { add = { \"x-served-by\" = \"ringgate\" }, remove = [\"server\"] }\n";
    let gw = Gateway::start(&proxy_config(origin.addr, extra));
    let r = gw.request("GET / HTTP/1.1\r\nHost: t\r\nX-Debug: 1\r\nX-Gateway: client\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nKeep-Alive: 300\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header("x-served-by"), Some("ringgate"));
    assert!(r.header("server").is_none());
    assert!(
        r.header("x-internal").is_none(),
        "fields named by Connection are hop-by-hop"
    );
    assert!(r.header("keep-alive").is_none());
    let got = &origin.received()[0];
    assert_eq!(got.header("host").as_deref(), Some("internal.svc"));
    assert_eq!(
        got.header("x-gateway").as_deref(),
        Some("ringgate"),
        "add replaces the client's value"
    );
    assert_eq!(got.headers_named("x-gateway"), 1);
    for dropped in ["x-debug", "x-hop", "te", "keep-alive", "connection"] {
        assert!(
            got.header(dropped).is_none(),
            "{dropped} must not reach the origin"
        );
    }
}

#[test]
fn http10_client_gets_body_and_close() {
    let origin = Origin::start(|_| {
        Action::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        )
    });
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "no chunked for 1.0: {text}"
    );
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
}

#[test]
fn http10_keep_alive_client() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..2 {
        s.write_all(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!(r.text(), "path=/k");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn head_and_204_and_304_have_no_body() {
    let origin = Origin::start(|r| {
        let path = r.request_line().split(' ').nth(1).unwrap_or("").to_string();
        match path.as_str() {
            "/204" => Action::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "/304" => {
                Action::Raw(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_vec())
            }
            _ => Action::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()),
        }
    });
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = reader.read(&mut s, true);
    assert_eq!(
        r.header("content-length"),
        Some("10"),
        "HEAD keeps the length of the GET"
    );
    for (path, status) in [("/204", 204), ("/304", 304)] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!(r.status, status);
    }
    // Still in sync: one more normal request works on the same connection.
    s.write_all(b"HEAD /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(reader.read(&mut s, true).status, 200);
    assert!(reader.leftover().is_empty(), "no stray body bytes");
}

#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    // After 101 the origin echoes raw bytes, which the recording origin cannot do.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.contains("upgrade: websocket"));
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let gw = Gateway::start(&proxy_config(addr, ""));
    let mut s = gw.connect();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    for msg in [&b"frame-one"[..], b"frame-two"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn malformed_request_gets_400_and_nothing_reaches_origin() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    let smuggle = "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut s = gw.connect();
    s.write_all(smuggle.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"status\":400"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "connection closed after the 400: {text}"
    );
    assert!(origin.received().is_empty());
}

#[test]
fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let origin = Origin::echo_path();
    let config = proxy_config(origin.addr, "").replace(
        "[[listeners]]",
        "[limits]\nidle_timeout = \"300ms\"\n\n[[listeners]]",
    );
    let gw = Gateway::start(&config);
    let mut s = gw.connect();
    s.write_all(b"GET /i HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut reader = ResponseReader::default();
    assert_eq!(reader.read(&mut s, false).status, 200);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed without a response"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < std::time::Duration::from_secs(10),
        "idle connection kept {waited:?}"
    );
}

#[test]
fn epoll_driver_serves_the_same_requests() {
    let origin = Origin::start(|r| ok(&r.body));
    let config =
        proxy_config(origin.addr, "").replace("[server]\n", "[server]\nio_driver = \"epoll\"\n");
    let gw = Gateway::start(&config);
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for i in 0..3 {
        let body = format!("body-{i}");
        write!(
            s,
            "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        assert_eq!(reader.read(&mut s, false).text(), body);
    }
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(reader.read(&mut s, false).text(), "abc");
    assert_eq!(origin.connection_count(), 1);
    let logged = |log: String| {
        log.contains("shard 0: epoll driver") && log.contains("shard 1: epoll driver")
    };
    assert!(
        wait_until(std::time::Duration::from_secs(10), || logged(
            gw.proc.stderr()
        )),
        "{}",
        gw.proc.stderr()
    );
}

#[test]
fn shards_log_their_driver_at_start() {
    let origin = Origin::echo_path();
    let gw = Gateway::start(&proxy_config(origin.addr, ""));
    assert_eq!(gw.get("/d").status, 200);
    let logged = |log: String| {
        (0..2).all(|shard| {
            log.contains(&format!("shard {shard}: io_uring driver"))
                || log.contains(&format!("shard {shard}: epoll driver"))
        })
    };
    assert!(
        wait_until(std::time::Duration::from_secs(10), || logged(
            gw.proc.stderr()
        )),
        "{}",
        gw.proc.stderr()
    );
}
