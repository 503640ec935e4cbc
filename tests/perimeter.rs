//! The perimeter through the real binary: the client address from trusted proxies'
//! X-Forwarded-For (and not from anyone else's), route ip_allow/ip_deny on it (deny wins),
//! listener rules at accept (a denied peer is closed before any byte or TLS handshake).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn origin() -> Origin {
    Origin::start(|r| ok(r.header("x-real-ip").unwrap_or_default().as_bytes()))
}

fn gateway(server: &str, listener: &str, origin: SocketAddr, route: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nworkers = 2\n{server}\n\n[access_log]\npath = \"access.log\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n{listener}\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"guarded\"\npath_prefix = \"/g\"\nupstream = \"o\"\n{route}\n\n[[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstream = \"o\"\n"
    ))
}

fn get_with_xff(gw: &Gateway, path: &str, xff: &str) -> Response {
    gw.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
    ))
}

fn logged_client_ips(gw: &Gateway, n: usize) -> Vec<String> {
    let log = gw.dir.join("access.log");
    let mut lines = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        lines.len() >= n
    }));
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["client_ip"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_trusted_proxy_names_the_client_and_route_rules_apply_to_it() {
    let origin = origin();
    let gw = gateway(
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        "",
        origin.addr,
        "ip_allow = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nip_deny = [\"198.51.100.7\"]",
    );
    // 127.0.0.1 (trusted) <- 10.0.0.5 (trusted) <- 198.51.100.8: the client.
    let r = get_with_xff(&gw, "/g/1", "203.0.113.1, 198.51.100.8, 10.0.0.5");
    assert_eq!((r.status, r.text().as_str()), (200, "198.51.100.8"));
    // Deny wins over allow.
    let r = get_with_xff(&gw, "/g/1", "198.51.100.7");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("client address not allowed"));
    // Outside the allow list; garbage stops the walk at the trusted hop that appended it.
    assert_eq!(get_with_xff(&gw, "/g/1", "203.0.113.1").status, 403);
    assert_eq!(
        get_with_xff(&gw, "/g/1", "198.51.100.9, bogus, 10.0.0.5").status,
        403
    );
    let r = get_with_xff(&gw, "/", "198.51.100.9, bogus, 10.0.0.5");
    assert_eq!(r.text(), "10.0.0.5");
    // IPv6 and IPv4-mapped entries.
    assert_eq!(get_with_xff(&gw, "/g/1", "[2001:db8::9]:1234").status, 200);
    assert_eq!(get_with_xff(&gw, "/g/1", "::ffff:198.51.100.8").status, 200);
    assert_eq!(
        origin.received().len(),
        4,
        "refused requests never reached the origin"
    );
    // Two shards flush their lines independently: compare as sorted lists.
    let mut ips = logged_client_ips(&gw, 7);
    ips.sort();
    let mut expected = [
        "198.51.100.8",
        "198.51.100.7",
        "203.0.113.1",
        "10.0.0.5",
        "10.0.0.5",
        "2001:db8::9",
        "198.51.100.8",
    ];
    expected.sort();
    assert_eq!(ips, expected);
}

#[test]
fn an_untrusted_peer_cannot_choose_its_address() {
    let origin = origin();
    let gw = gateway("", "", origin.addr, "ip_allow = [\"198.51.100.0/24\"]");
    // The peer is 127.0.0.1 and nobody is trusted: its X-Forwarded-For is not believed.
    let r = get_with_xff(&gw, "/g/1", "198.51.100.8");
    assert_eq!(r.status, 403);
    let r = get_with_xff(&gw, "/", "198.51.100.8");
    assert_eq!((r.status, r.text().as_str()), (200, "127.0.0.1"));
    assert_eq!(logged_client_ips(&gw, 2), ["127.0.0.1", "127.0.0.1"]);
}

#[test]
fn a_denied_peer_is_closed_at_accept_before_any_byte() {
    let origin = origin();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[admin]\nbind = \"{admin}\"\n\n{}",
        gateway_config_denying_loopback(origin.addr)
    ));
    // The gateway closes without reading: no request is needed (nor would a TLS hello be
    // answered).
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a denied peer got bytes");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at once, not on a timeout"
    );
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(origin.received().is_empty());
    let mut m = TcpStream::connect(admin).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(m, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = m.read_to_string(&mut text);
    // The readiness probe of the test kit was refused too: at least ours.
    let denied: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ringgate_ip_denied_total{scope=\"listener\",name=\"main\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(denied >= 1, "{text}");
}

fn gateway_config_denying_loopback(origin: SocketAddr) -> String {
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\nip_allow = [\"0.0.0.0/0\"]\nip_deny = [\"127.0.0.0/8\"]\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n"
    )
}
