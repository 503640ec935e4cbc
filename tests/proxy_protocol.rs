//! PROXY protocol listeners through the real binary: v1 and v2 (TCP4, TCP6, LOCAL) name the
//! client (what the origin, the access log and the listener's ip rules see), TLS after the
//! header (sent apart or in the same segment as the ClientHello), and every way a header can
//! be wrong (missing, malformed, truncated, oversized, too slow) closes the connection
//! without an answer, counted in /metrics.

mod common;
use common::pki::*;
use common::*;
use rcgen::PKCS_ECDSA_P256_SHA256;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&443u16.to_be_bytes());
    out
}

fn v2_tcp6(src: std::net::Ipv6Addr, tlv: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x21]);
    out.extend_from_slice(&(36 + tlv.len() as u16).to_be_bytes());
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    out.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    out.extend_from_slice(tlv);
    out
}

fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

fn gateway(listener_extra: &str, tls: &str, origin: SocketAddr) -> (Gateway, SocketAddr) {
    gateway_with(2, listener_extra, tls, origin)
}

fn gateway_with(
    workers: usize,
    listener_extra: &str,
    tls: &str,
    origin: SocketAddr,
) -> (Gateway, SocketAddr) {
    let listener_extra = if listener_extra.starts_with("limits") {
        listener_extra.to_string()
    } else {
        format!("limits = {{ header_read_timeout = \"2s\" }}\n{listener_extra}")
    };
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = {workers}\n\n[admin]\nbind = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n\n[[listeners]]\nname = \"edge\"\nbind = \"{{listen}}\"\nproxy_protocol = true\n{listener_extra}\n{tls}\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n"
    ));
    (gw, admin)
}

fn real_ip_origin() -> Origin {
    Origin::start(|r| ok(r.header("x-real-ip").unwrap_or_default().as_bytes()))
}

/// Sends `preamble` and a GET in one write on a new connection; the answer, if any.
fn get_behind(gw: &Gateway, preamble: &[u8]) -> Option<Response> {
    let mut s = gw.connect();
    let mut bytes = preamble.to_vec();
    bytes.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(&bytes).ok()?;
    ResponseReader::default().try_read(&mut s, false)
}

/// The connection is closed by the gateway without one byte of answer.
fn closed_silently(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&buf[..n]));
}

#[test]
fn v1_and_v2_headers_name_the_client() {
    let origin = real_ip_origin();
    let (gw, _) = gateway("", "", origin.addr);
    let r = get_behind(&gw, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "192.0.2.7"));
    let r = get_behind(&gw, b"PROXY TCP6 2001:db8::5 ::1 40000 80\r\n").unwrap();
    assert_eq!(r.text(), "2001:db8::5");
    let r = get_behind(&gw, &v2_tcp4([198, 51, 100, 9], 1234)).unwrap();
    assert_eq!(r.text(), "198.51.100.9");
    // IPv4-mapped is IPv4; a TLV after the addresses is skipped.
    let mapped = "::ffff:203.0.113.4".parse().unwrap();
    let r = get_behind(&gw, &v2_tcp6(mapped, &[0x04, 0, 2, b'i', b'd'])).unwrap();
    assert_eq!(r.text(), "203.0.113.4");
    // LOCAL (the balancer's own health check) and UNKNOWN: the peer is the client.
    let r = get_behind(&gw, &v2_local()).unwrap();
    assert_eq!(r.text(), "127.0.0.1");
    let r = get_behind(&gw, b"PROXY UNKNOWN\r\n").unwrap();
    assert_eq!(r.text(), "127.0.0.1");

    // The header comes once per connection: keep-alive requests keep its client, and the
    // header may arrive in pieces.
    let mut s = gw.connect();
    let header = b"PROXY TCP4 192.0.2.8 127.0.0.1 40000 80\r\n";
    s.write_all(&header[..9]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&header[9..]).unwrap();
    let mut reader = ResponseReader::default();
    for _ in 0..2 {
        s.write_all(b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(reader.read(&mut s, false).text(), "192.0.2.8");
    }
    drop(s);

    let log = gw.dir.join("access.log");
    let mut text = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 8
    }));
    for ip in [
        "192.0.2.7",
        "2001:db8::5",
        "198.51.100.9",
        "203.0.113.4",
        "192.0.2.8",
    ] {
        assert!(
            text.contains(&format!("\"client_ip\":\"{ip}\"")),
            "{ip} not logged: {text}"
        );
    }
}

#[test]
fn a_bad_or_missing_header_closes_without_an_answer() {
    let origin = real_ip_origin();
    let (gw, admin) = gateway("", "", origin.addr);
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2 3\r\n",
        b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\nGET / HTTP/1.1\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"\x16\x03\x01\x00\x05hello",
    ];
    for case in cases {
        let mut s = gw.connect();
        s.write_all(case).unwrap();
        closed_silently(s);
    }
    // A v1 line that never ends within 107 bytes.
    let mut s = gw.connect();
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    let _ = s.write_all(&long);
    closed_silently(s);
    // Truncated, then the client closes its side: nothing is answered, nothing proxied.
    let mut s = gw.connect();
    s.write_all(b"PROXY TCP4 192.0.2").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    closed_silently(s);
    // Slow: half a header, then silence. Closed by the header timeout (2 s), not left open.
    let started = Instant::now();
    let mut s = gw.connect();
    s.write_all(&v2_tcp4([192, 0, 2, 1], 1)[..14]).unwrap();
    closed_silently(s);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert!(origin.received().is_empty());
    // The readiness probe of the test kit (connect, close) counts too: at least ours.
    let refused = admin_metric(
        admin,
        "ringgate_proxy_protocol_refused_total{listener=\"edge\"}",
    );
    assert!(refused >= 9, "{refused}");
}

#[test]
fn listener_rules_apply_to_the_address_the_header_names() {
    let origin = real_ip_origin();
    // The peer (127.0.0.1) is outside the allow list: only the header's address counts.
    let (gw, admin) = gateway(
        "ip_allow = [\"192.0.2.0/24\"]\nip_deny = [\"192.0.2.66\"]",
        "",
        origin.addr,
    );
    let r = get_behind(&gw, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n").unwrap();
    assert_eq!(r.text(), "192.0.2.7");
    for denied in [
        &b"PROXY TCP4 192.0.2.66 127.0.0.1 40000 80\r\n"[..],
        b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 80\r\n",
        // LOCAL: the peer itself, which is not allowed.
        &v2_local(),
    ] {
        let mut s = gw.connect();
        let mut bytes = denied.to_vec();
        bytes.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(&bytes).unwrap();
        closed_silently(s);
    }
    assert_eq!(origin.received().len(), 1);
    assert_eq!(
        admin_metric(
            admin,
            "ringgate_ip_denied_total{scope=\"listener\",name=\"edge\"}"
        ),
        3
    );
}

/// A TLS client over a socket that already carried `preamble`; with `coalesce`, the header
/// and the ClientHello leave in one write.
fn tls_behind(
    addr: SocketAddr,
    ca: &Ca,
    preamble: &[u8],
    coalesce: bool,
) -> StreamOwned<ClientConnection, TcpStream> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let mut conn = ClientConnection::new(client_config(ca, None), name).unwrap();
    let mut first = preamble.to_vec();
    if coalesce {
        conn.write_tls(&mut first).unwrap();
    }
    tcp.write_all(&first).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

#[test]
fn tls_follows_the_header() {
    let ca = Ca::new("proxy protocol ca");
    let dir = temp_dir("pp-tls");
    let cert = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let origin = real_ip_origin();
    let (gw, _) = gateway("", &tls_listener(&[cert], ""), origin.addr);
    for (preamble, coalesce, client) in [
        (v2_tcp4([192, 0, 2, 10], 5), false, "192.0.2.10"),
        (v2_tcp4([192, 0, 2, 11], 5), true, "192.0.2.11"),
        (
            b"PROXY TCP6 2001:db8::7 ::1 1 2\r\n".to_vec(),
            true,
            "2001:db8::7",
        ),
    ] {
        let mut tls = tls_behind(gw.listen, &ca, &preamble, coalesce);
        tls.write_all(b"GET /who HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let r = ResponseReader::default().read(&mut tls, false);
        assert_eq!((r.status, r.text().as_str()), (200, client));
    }
    // A TLS hello without the header: closed before any handshake byte.
    let tcp = TcpStream::connect(gw.listen).unwrap();
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let mut conn = ClientConnection::new(client_config(&ca, None), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    (&tcp).write_all(&hello).unwrap();
    closed_silently(tcp);
}

#[test]
fn connections_count_per_named_client_not_against_the_balancer() {
    let origin = real_ip_origin();
    // One shard: the per-address limit is per shard.
    let (gw, _) = gateway_with(
        1,
        "limits = { header_read_timeout = \"20s\", max_connections_per_ip = 2 }",
        "",
        origin.addr,
    );
    // Three connections from the balancer's address that have not sent their header yet do
    // not lock out the next client.
    let idle: Vec<TcpStream> = (0..3).map(|_| gw.connect()).collect();
    let r = get_behind(&gw, b"PROXY TCP4 192.0.2.50 127.0.0.1 1 2\r\n").unwrap();
    assert_eq!(r.text(), "192.0.2.50");
    // The limit holds per client the headers name: a third connection of 192.0.2.51 is
    // closed, one of 192.0.2.52 is served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = gw.connect();
        s.write_all(b"PROXY TCP4 192.0.2.51 127.0.0.1 1 2\r\nGET /who HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(
            ResponseReader::default().read(&mut s, false).text(),
            "192.0.2.51"
        );
        held.push(s);
    }
    let mut third = gw.connect();
    third
        .write_all(b"PROXY TCP4 192.0.2.51 127.0.0.1 1 2\r\nGET /who HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    closed_silently(third);
    let r = get_behind(&gw, b"PROXY TCP4 192.0.2.52 127.0.0.1 1 2\r\n").unwrap();
    assert_eq!(r.text(), "192.0.2.52");
    drop(idle);
}
