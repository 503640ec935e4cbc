//! Target operations an operator needs on day two (issue #16): state changes logged once
//! with the precise reason, `/upstreams` with a process-wide view (state, weight, counters),
//! and drain / disable / enable reaching every shard. Real origins on 127.0.0.1.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn admin_call(admin: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let status = status_of(&all);
    let body = all.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn target(admin: SocketAddr, t: usize) -> serde_json::Value {
    admin_call(admin, "GET", "/upstreams").1["upstreams"][0]["targets"][t].clone()
}

fn gateway(upstream: &str) -> (Gateway, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\n\n[admin]\nbind = \"{admin}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"api\"\n{upstream}\n\n[[routes]]\nname = \"all\"\nupstream = \"api\"\n"
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    (gw, admin)
}

/// How many of `n` fresh-connection GETs each origin answered.
fn spread(gw: &Gateway, origins: &[&Origin], n: usize) -> Vec<usize> {
    let before: Vec<usize> = origins.iter().map(|o| o.received().len()).collect();
    for _ in 0..n {
        assert_eq!(gw.get("/x").status, 200);
    }
    origins
        .iter()
        .zip(before)
        .map(|(o, b)| o.received().len() - b)
        .collect()
}

#[test]
fn state_changes_are_logged_once_with_the_precise_reason() {
    let failing = Origin::start(|r| {
        if r.request_line().contains("/health") {
            Action::Raw(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
        } else {
            ok(b"ok")
        }
    });
    let good = Origin::echo_path();
    let refused = free_port();
    let (gw, admin) = gateway(&format!(
        "targets = [\"{}\", \"{}\", \"127.0.0.1:{refused}\"]\n[upstreams.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2",
        failing.addr, good.addr
    ));
    let status_line = format!(
        "upstream \"api\" target {}: unhealthy: active check failed (status 503)",
        failing.addr
    );
    let refused_line = format!(
        "upstream \"api\" target 127.0.0.1:{refused}: unhealthy: active check failed (connection refused)"
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            let err = gw.proc.stderr();
            err.contains(&status_line) && err.contains(&refused_line)
        }),
        "{}",
        gw.proc.stderr()
    );
    assert_eq!(target(admin, 0)["state"], "unhealthy");
    assert_eq!(
        target(admin, 0)["reason"],
        "active check failed (status 503)"
    );
    assert_eq!(
        target(admin, 2)["reason"],
        "active check failed (connection refused)"
    );
    // Many probes later, still one line each (the change is logged, not every probe).
    std::thread::sleep(Duration::from_millis(600));
    let err = gw.proc.stderr();
    assert_eq!(err.matches(&status_line).count(), 1, "{err}");
    assert_eq!(err.matches(&refused_line).count(), 1, "{err}");
    // Every line has an RFC 3339 time and a level.
    let line = err.lines().find(|l| l.contains(&status_line)).unwrap();
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{line}"
    );
    assert!(rest.starts_with("WARN "), "{line}");
}

#[test]
fn drain_disable_and_enable_reach_every_shard() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let (gw, admin) = gateway(&format!(
        "targets = [\"{}\", \"{}\"]\n[upstreams.health]\npath = \"/health\"\ninterval = \"100ms\"",
        a.addr, b.addr
    ));
    let both = spread(&gw, &[&a, &b], 20);
    assert!(both[0] > 0 && both[1] > 0, "{both:?}");
    assert_eq!(target(admin, 0)["weight"], 1);

    let (status, body) = admin_call(
        admin,
        "POST",
        &format!("/upstreams/api/targets/{}/drain", a.addr),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admin"], "draining");
    assert!(wait_until(Duration::from_secs(10), || {
        target(admin, 0)["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "draining")
    }));
    assert_eq!(target(admin, 0)["state"], "draining");
    assert_eq!(
        spread(&gw, &[&a, &b], 20),
        vec![0, 20],
        "a draining target takes no new requests"
    );

    // Disabled: no requests and no health checks.
    let (status, _) = admin_call(
        admin,
        "POST",
        &format!("/upstreams/api/targets/{}/disable", a.addr),
    );
    assert_eq!(status, 200);
    assert!(wait_until(
        Duration::from_secs(10),
        || target(admin, 0)["state"] == "disabled"
    ));
    std::thread::sleep(Duration::from_millis(300));
    let probes = |o: &Origin| {
        o.received()
            .iter()
            .filter(|r| r.request_line().contains("/health"))
            .count()
    };
    let before = probes(&a);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(probes(&a), before, "a disabled target is not probed");
    assert!(probes(&b) > 0);
    assert_eq!(spread(&gw, &[&a, &b], 10), vec![0, 10]);

    let (status, _) = admin_call(
        admin,
        "POST",
        &format!("/upstreams/api/targets/{}/enable", a.addr),
    );
    assert_eq!(status, 200);
    assert!(wait_until(Duration::from_secs(10), || {
        target(admin, 0)["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "healthy")
    }));
    let back = spread(&gw, &[&a, &b], 20);
    assert!(back[0] > 0 && back[1] > 0, "{back:?}");
    assert!(
        gw.proc
            .stderr()
            .contains(&format!("target {}: draining: set by an operator", a.addr))
    );

    // Counters: every answer counted once, process-wide.
    let t0 = target(admin, 0);
    let t1 = target(admin, 1);
    let answered = t0["requests"].as_u64().unwrap() + t1["requests"].as_u64().unwrap();
    let origin_saw = [&a, &b]
        .iter()
        .map(|o| {
            o.received()
                .iter()
                .filter(|r| !r.request_line().contains("/health"))
                .count()
        })
        .sum::<usize>() as u64;
    assert_eq!(answered, origin_saw);
    assert_eq!(t0["responses_5xx"], 0);

    // Unknown names are 404s that say what was not found.
    let (status, body) = admin_call(admin, "POST", "/upstreams/api/targets/127.0.0.1:1/drain");
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("no target"),
        "{body}"
    );
    let (status, _) = admin_call(admin, "POST", "/upstreams/nope/targets/127.0.0.1:1/drain");
    assert_eq!(status, 404);
    let (status, body) = admin_call(
        admin,
        "POST",
        &format!("/upstreams/api/targets/{}/pause", a.addr),
    );
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("unknown action"),
        "{body}"
    );
}

#[test]
fn host_name_targets_follow_the_hosts_file_and_close_the_old_address_pool() {
    // One port on two loopback addresses: the name moves from one origin to the other.
    let port = free_port();
    let old = Origin::start_on(format!("127.0.0.1:{port}").parse().unwrap(), |_| ok(b"old"));
    let new = Origin::start_on(format!("127.0.0.2:{port}").parse().unwrap(), |_| ok(b"new"));
    let hosts = temp_dir("hosts-file").join("hosts");
    std::fs::write(&hosts, "# test resolver\n127.0.0.1 api.test\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 2\nhosts_file = \"{}\"\n\n[admin]\nbind = \"{admin}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"api\"\ntargets = [\"api.test:{port}\"]\nresolve_interval = \"200ms\"\n\n[[routes]]\nname = \"all\"\nupstream = \"api\"\n",
        hosts.display()
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    for _ in 0..6 {
        assert_eq!(gw.get("/x").text(), "old");
    }
    assert!(
        old.open_count() >= 1,
        "pooled connections to the old address"
    );
    assert_eq!(target(admin, 0)["addr"], format!("api.test:{port}"));
    assert_eq!(target(admin, 0)["resolved"], format!("127.0.0.1:{port}"));

    std::fs::write(&hosts, "127.0.0.2 api.test\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            (0..4).all(|_| gw.get("/x").text() == "new")
        }),
        "{}",
        gw.proc.stderr()
    );
    // Every shard let go of the old address's pool.
    assert!(
        wait_until(Duration::from_secs(10), || old.open_count() == 0),
        "{} connections to the old address still open",
        old.open_count()
    );
    let before = old.received().len();
    for _ in 0..6 {
        assert_eq!(gw.get("/x").text(), "new");
    }
    assert_eq!(old.received().len(), before);
    assert!(!new.received().is_empty());
    assert_eq!(target(admin, 0)["resolved"], format!("127.0.0.2:{port}"));
    assert!(
        gw.proc.stderr().contains(&format!(
            "target api.test:{port}: now 127.0.0.2:{port} (was 127.0.0.1:{port})"
        )),
        "{}",
        gw.proc.stderr()
    );

    // A lookup that fails keeps the last address, with one warning naming the file.
    std::fs::remove_file(&hosts).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            gw.proc.stderr().contains(&format!(
                "target api.test:{port}: {}: No such file or directory (os error 2); keeping 127.0.0.2:{port}",
                hosts.display()
            ))
        }),
        "{}",
        gw.proc.stderr()
    );
    assert_eq!(gw.get("/x").text(), "new");
}
