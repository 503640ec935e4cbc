//! Strict HTTP/1.1 framing through a real listener (RFC 9112 §6.3, §11.2; RFC 9110 §5.5):
//! every ambiguous or malformed shape gets 400 (501 for an unknown transfer coding) and a
//! closed connection, and not a byte of the smuggled second request reaches the origin.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An origin that records every byte it receives on every connection and answers a complete
/// request with a small 200 (enough for the cases that must pass).
struct RawOrigin {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl RawOrigin {
    fn start() -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = [0u8; 65536];
                    let mut message: Vec<u8> = Vec::new();
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                        message.extend_from_slice(&buf[..n]);
                        // answer a whole message only (a chunked body ends in 0 CRLF CRLF),
                        // never early: early answers are another test's subject
                        let text = String::from_utf8_lossy(&message).to_ascii_lowercase();
                        let complete = text.contains("\r\n\r\n")
                            && (!text.contains("transfer-encoding: chunked")
                                || text.contains("\r\n0\r\n\r\n"));
                        if complete {
                            message.clear();
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        }
                    }
                });
            }
        });
        RawOrigin { addr, bytes }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

fn gateway(origin: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n",
        base_config()
    ))
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Sends `raw` followed by a smuggled request; returns what the gateway answered before it
/// closed the connection.
fn attack(gw: &Gateway, raw: &[u8]) -> String {
    let mut all = raw.to_vec();
    all.extend_from_slice(SMUGGLED);
    exchange_raw(gw, &all)
}

fn assert_rejected(gw: &Gateway, origin: &RawOrigin, raw: &[u8], status: u16) {
    let answer = attack(gw, raw);
    let shown = String::from_utf8_lossy(raw);
    assert_eq!(status_of(&answer), status, "{shown:?} -> {answer:?}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response, then close: {shown:?} -> {answer:?}"
    );
    assert!(answer.contains("connection: close"), "{answer:?}");
    let seen = origin.received();
    assert!(
        !seen.contains("/smuggled"),
        "smuggled request reached the origin for {shown:?}: {seen:?}"
    );
}

#[test]
fn ambiguous_heads_are_400_and_nothing_reaches_the_origin() {
    let origin = RawOrigin::start();
    let gw = gateway(origin.addr);
    let cases: &[&[u8]] = &[
        // both Transfer-Encoding and Content-Length
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        // Transfer-Encoding listed twice, with empty elements, or not ending in chunked
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
        // several or differing Content-Length values; empty, signed, hex, junk
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3abc\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        // whitespace between field name and colon
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
        // obsolete line folding
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
        // whitespace before the first field
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\tX: y\r\nHost: a\r\n\r\n",
        // bare CR, bare LF, NUL in the head
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n",
        // missing or duplicate Host on HTTP/1.1
        b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        // invalid characters in the method, the target or a field name
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\"x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: z\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
        // HTTP versions other than 1.0 / 1.1
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET / http/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        // final coding not chunked (the body length cannot be known)
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        // Transfer-Encoding on HTTP/1.0
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for raw in cases {
        assert_rejected(&gw, &origin, raw, 400);
    }
    assert_eq!(origin.received(), "", "no rejected head reached the origin");
}

#[test]
fn unknown_transfer_coding_is_501() {
    let origin = RawOrigin::start();
    let gw = gateway(origin.addr);
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n",
    ] {
        assert_rejected(&gw, &origin, raw, 501);
    }
    assert_eq!(origin.received(), "");
}

#[test]
fn malformed_chunks_are_400_and_the_smuggled_request_never_reaches_the_origin() {
    let origin = RawOrigin::start();
    let gw = gateway(origin.addr);
    let head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies: &[&[u8]] = &[
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5z\r\nhello\r\n0\r\n\r\n",
        b"g\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5;ext\rx\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut raw = head.to_vec();
        raw.extend_from_slice(body);
        assert_rejected(&gw, &origin, &raw, 400);
    }
}

#[test]
fn chunk_extensions_and_trailers_are_dropped_and_the_body_is_reframed() {
    let origin = RawOrigin::start();
    let gw = gateway(origin.addr);
    let mut s = gw.connect();
    s.write_all(
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\nX-Trailer: secret\r\n\r\n",
    )
    .unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.status, 200);
    let seen = origin.received();
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen:?}");
    assert!(
        !seen.contains("name=value"),
        "chunk extension forwarded: {seen:?}"
    );
    assert!(!seen.contains("X-Trailer"), "trailer forwarded: {seen:?}");
    assert!(seen.contains("hello"), "{seen:?}");
    assert_eq!(
        seen.matches("content-length").count(),
        0,
        "one framing only: {seen:?}"
    );
}

#[test]
fn oversized_chunk_extensions_and_trailers_are_refused() {
    let origin = RawOrigin::start();
    let gw = gateway(origin.addr);
    let head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut long_ext = head.to_vec();
    long_ext.extend_from_slice(b"5;");
    long_ext.extend(std::iter::repeat_n(b'e', 64 * 1024));
    long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_rejected(&gw, &origin, &long_ext, 400);
    let mut long_trailers = head.to_vec();
    long_trailers.extend_from_slice(b"0\r\n");
    for i in 0..2000 {
        long_trailers.extend_from_slice(format!("X-T{i}: {}\r\n", "v".repeat(32)).as_bytes());
    }
    long_trailers.extend_from_slice(b"\r\n");
    assert_rejected(&gw, &origin, &long_trailers, 400);
}
