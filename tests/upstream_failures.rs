//! Upstream failures map to the error table: refused -> 502, silent -> 504, and the one safe
//! retry of a request whose reused pooled connection turned out dead.

mod common;
use common::*;
use std::io::Write;

fn config(target: &str, timeouts: &str) -> String {
    format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{target}\"]\n{timeouts}\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n",
        base_config()
    )
}

#[test]
fn refused_upstream_gives_502_json() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&config(&dead, ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.text(),
            "{\"error\":\"upstream connect failed\",\"status\":502}\n"
        );
        assert!(r.header("x-request-id").is_some());
    }
}

#[test]
fn silent_upstream_gives_504_after_response_timeout() {
    let origin = Origin::start(|_| Action::Hang);
    let gw = Gateway::start(&config(
        &origin.addr.to_string(),
        "response_timeout = \"500ms\"",
    ));
    let started = std::time::Instant::now();
    let r = gw.get("/slow");
    assert_eq!(r.status, 504);
    assert_eq!(
        r.text(),
        "{\"error\":\"upstream response timed out\",\"status\":504}\n"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(450));
    assert_eq!(origin.received().len(), 1);
}

#[test]
fn dead_reused_connection_is_retried_once_on_a_fresh_one() {
    // Each origin connection answers its first request, then drops the connection on the next
    // one without answering: the keep-alive race every proxy meets.
    let origin = Origin::start(|r| {
        if r.index_on_connection == 0 {
            ok(b"fine")
        } else {
            Action::Close
        }
    });
    let gw = Gateway::start(&config(&origin.addr.to_string(), ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..3 {
        s.write_all(b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "fine");
    }
    // Requests 2 and 3 each died once on a reused connection and were retried on a fresh one.
    let received = origin.received();
    assert_eq!(received.len(), 5);
    assert_eq!(origin.connection_count(), 3);
}

#[test]
fn post_with_streamed_body_is_not_retried() {
    let origin = Origin::start(|r| {
        if r.index_on_connection == 0 {
            ok(b"fine")
        } else {
            Action::Close
        }
    });
    let gw = Gateway::start(&config(&origin.addr.to_string(), ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(reader.read(&mut s, false).status, 200);
    // A chunked body was streamed, not buffered: it cannot be replayed, so the failure shows.
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .unwrap();
    let r = reader.read(&mut s, false);
    assert_eq!(r.status, 502);
    assert_eq!(origin.received().len(), 2);
}

#[test]
fn origin_closed_pooled_connection_is_not_used() {
    // The origin closes every connection right after answering, while announcing keep-alive.
    let origin = Origin::start(|_| {
        Action::RawThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let gw = Gateway::start(&config(&origin.addr.to_string(), ""));
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(reader.read(&mut s, false).text(), "ok");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Each request reached the origin exactly once: the closed pooled connection was detected
    // before use instead of being written to and retried.
    assert_eq!(origin.received().len(), 3);
    assert_eq!(origin.connection_count(), 3);
}

#[test]
fn ambiguous_origin_framing_gives_502() {
    let origin = Origin::start(|_| {
        Action::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec())
    });
    let gw = Gateway::start(&config(&origin.addr.to_string(), ""));
    let r = gw.get("/");
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("invalid response") || r.text().contains("Content-Length"),
        "{}",
        r.text()
    );
}

#[test]
fn ambiguous_origin_responses_are_502_and_their_connections_never_reused() {
    let bad: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for raw in bad {
        let response = raw.to_vec();
        // Every request gets the bad response; a reused connection would show as a request
        // arriving on an already-seen connection.
        let origin = Origin::start(move |_| Action::Raw(response.clone()));
        let gw = Gateway::start(&config(&origin.addr.to_string(), ""));
        for _ in 0..3 {
            let r = gw.request("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(
                r.status,
                502,
                "{:?}: {}",
                String::from_utf8_lossy(raw),
                r.text()
            );
        }
        let received = origin.received();
        assert_eq!(received.len(), 3);
        assert!(
            received.iter().all(|r| r.index_on_connection == 0),
            "a connection that carried an ambiguous response was reused: {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}
