//! The admin API through the real binary: `/shards` counts every exchange once, by status
//! class, per shard, with the driver each shard runs.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let body = all.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {all}"))
}

fn total(shards: &serde_json::Value, field: impl Fn(&serde_json::Value) -> u64) -> u64 {
    shards["shards"].as_array().unwrap().iter().map(field).sum()
}

#[test]
fn shards_count_every_exchange_once_by_status_class() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\n\n[admin]\nbind = \"{admin}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n"
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    for _ in 0..6 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    for _ in 0..4 {
        assert_eq!(gw.get("/nope").status, 404);
    }
    // A malformed head is an exchange too (answered 400 by the gateway).
    assert_eq!(
        status_of(&exchange_raw(&gw, b"GET /x HTTP/1.1\r\n\r\n")),
        400
    );
    // A connection that sends nothing is not an exchange.
    drop(gw.connect());
    let mut last = serde_json::Value::Null;
    let counted = wait_until(Duration::from_secs(10), || {
        last = admin_json(admin, "/shards");
        total(&last, |s| s["exchanges"].as_u64().unwrap()) == 11
            && total(&last, |s| s["open_connections"].as_u64().unwrap()) == 0
    });
    assert!(counted, "{last}");
    assert_eq!(
        total(&last, |s| s["responses"]["2xx"].as_u64().unwrap()),
        6,
        "{last}"
    );
    assert_eq!(
        total(&last, |s| s["responses"]["4xx"].as_u64().unwrap()),
        5,
        "{last}"
    );
    assert_eq!(
        total(&last, |s| s["gateway_answers"].as_u64().unwrap()),
        5,
        "{last}"
    );
    // Bytes in are the request heads read; the malformed one is not counted as read.
    let head = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").len() as u64
    };
    assert_eq!(
        total(&last, |s| s["bytes_in"].as_u64().unwrap()),
        6 * head("/hello") + 4 * head("/nope"),
        "{last}"
    );
    let bytes_out = total(&last, |s| s["bytes_out"].as_u64().unwrap());
    assert!(bytes_out > 11 * 60 && bytes_out < 11 * 400, "{last}");
    let shards = last["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for s in shards {
        assert!(
            matches!(s["driver"].as_str(), Some("io_uring" | "epoll")),
            "{s}"
        );
    }
}
