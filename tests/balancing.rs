//! Load balancing, health, failover, retries and circuit breaking with real origins on
//! 127.0.0.1, observed through the client side and the admin `/upstreams` endpoint.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn targets_list(addrs: &[String]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A gateway with `workers` shards, an admin listener, one upstream and one catch-all route.
fn gateway(workers: usize, upstream: &str, route: &str) -> (Gateway, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[server]\nworkers = {workers}\ngossip_interval = \"5ms\"\n\n[admin]\nbind = \"{admin}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\n{upstream}\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n{route}\n"
    );
    let gw = Gateway::start(&config);
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    (gw, admin)
}

fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    all.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// `state` of target `t` on every shard, from `/upstreams`.
fn shard_states(admin: SocketAddr, t: usize) -> Vec<String> {
    let body = admin_get(admin, "/upstreams");
    let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    json["upstreams"][0]["targets"][t]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect()
}

fn keep_alive_get(s: &mut TcpStream, reader: &mut ResponseReader, path: &str) -> Option<Response> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .ok()?;
    reader.try_read(s, false)
}

/// Sends `n` GETs on one keep-alive connection (so one shard sees them in order).
fn send_many(gw: &Gateway, n: usize) {
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for i in 0..n {
        let r = keep_alive_get(&mut s, &mut reader, &format!("/{i}")).expect("response");
        assert_eq!(r.status, 200);
    }
}

fn origins(n: usize) -> Vec<Origin> {
    (0..n).map(|_| Origin::echo_path()).collect()
}

fn addrs(origins: &[Origin]) -> Vec<String> {
    origins.iter().map(|o| o.addr.to_string()).collect()
}

#[test]
fn admin_healthz_and_upstreams_shape() {
    let os = origins(2);
    let (_gw, admin) = gateway(2, &format!("targets = [{}]", targets_list(&addrs(&os))), "");
    assert_eq!(admin_get(admin, "/healthz"), r#"{"status":"ok"}"#);
    let body = admin_get(admin, "/upstreams");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let u = &json["upstreams"][0];
    assert_eq!(u["name"], "o");
    assert_eq!(u["balance"], "round_robin");
    let shards = u["targets"][1]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "one entry per shard");
    for key in [
        "shard",
        "state",
        "consecutive_failures",
        "ejections",
        "in_flight",
        "ewma_ms",
        "last_change",
        "reason",
    ] {
        assert!(shards[0].get(key).is_some(), "missing {key}: {body}");
    }
    assert_eq!(shards[0]["state"], "healthy");
}

#[test]
fn weights_random_and_round_robin_distribute_as_configured() {
    for (balance, targets, expected) in [
        ("round_robin", "", [1.0 / 3.0; 3]),
        ("weighted", "weighted", [5.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0]),
        ("random", "", [1.0 / 3.0; 3]),
    ] {
        let os = origins(3);
        let a = addrs(&os);
        let list = if targets == "weighted" {
            format!(
                "[{{ addr = \"{}\", weight = 5 }}, \"{}\", \"{}\"]",
                a[0], a[1], a[2]
            )
        } else {
            format!("[{}]", targets_list(&a))
        };
        let (gw, _) = gateway(1, &format!("targets = {list}\nbalance = \"{balance}\""), "");
        let n = 10_000;
        send_many(&gw, n);
        for (i, o) in os.iter().enumerate() {
            let share = o.received().len() as f64 / n as f64;
            assert!(
                (share - expected[i]).abs() < 0.03,
                "{balance}: target {i} got {share:.3}, expected {:.3}",
                expected[i]
            );
        }
    }
}

/// Concurrent clients against one fast and one slow origin: `least_conn` and `p2c_ewma`
/// send most traffic to the fast one.
#[test]
fn least_conn_and_p2c_ewma_prefer_the_faster_origin() {
    for balance in ["least_conn", "p2c_ewma"] {
        let fast = Origin::echo_path();
        let slow = Origin::start(|r| {
            std::thread::sleep(Duration::from_millis(20));
            let path = r.request_line().split(' ').nth(1).unwrap_or("").to_string();
            ok(path.as_bytes())
        });
        let (gw, _) = gateway(
            1,
            &format!(
                "targets = [\"{}\", \"{}\"]\nbalance = \"{balance}\"",
                fast.addr, slow.addr
            ),
            "",
        );
        let gw = Arc::new(gw);
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let gw = gw.clone();
                std::thread::spawn(move || send_many(&gw, 100))
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let (f, s) = (fast.received().len(), slow.received().len());
        assert_eq!(f + s, 800);
        assert!(f > 3 * s, "{balance}: fast {f}, slow {s}");
    }
}

/// `ringgate echo` as a separate origin process that can be killed.
fn echo_origin() -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("echo-origin");
    let p = spawn_bin(
        &dir,
        &["echo", "--bind", &addr.to_string(), "--workers", "1"],
    );
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    (p, addr)
}

#[test]
fn a_killed_origin_fails_no_request_and_every_shard_stops_using_it() {
    let (mut doomed, doomed_addr) = echo_origin();
    let (_survivor, survivor_addr) = echo_origin();
    let (gw, admin) = gateway(
        2,
        &format!(
            "targets = [\"{doomed_addr}\", \"{survivor_addr}\"]\n[upstreams.passive]\nconsecutive_failures = 2\nejection_time = \"60s\""
        ),
        "retries = 2",
    );
    let gw = Arc::new(gw);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop, sent, failed) = (gw.clone(), stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut s = gw.connect();
                let mut reader = ResponseReader::default();
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    sent.fetch_add(1, Ordering::AcqRel);
                    match keep_alive_get(&mut s, &mut reader, "/") {
                        Some(r) if r.status == 200 => {}
                        other => {
                            failed.fetch_add(1, Ordering::AcqRel);
                            eprintln!("failed: {:?}", other.map(|r| (r.status, r.text())));
                            s = gw.connect();
                            reader = ResponseReader::default();
                        }
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || sent
        .load(Ordering::Acquire)
        > 200));
    doomed.signal(libc::SIGKILL);
    let _ = doomed.wait_exit(Duration::from_secs(5));
    // Once one shard has ejected it, all shards agree within a couple of gossip ticks.
    let mut first_seen = None;
    let all = wait_until(Duration::from_secs(20), || {
        let states = shard_states(admin, 0);
        if first_seen.is_none() && states.iter().any(|s| s == "ejected") {
            first_seen = Some(Instant::now());
        }
        states.iter().all(|s| s == "ejected")
    });
    assert!(
        all,
        "every shard ejects the dead origin: {:?}",
        shard_states(admin, 0)
    );
    let spread = first_seen.map(|t| t.elapsed()).unwrap_or_default();
    assert!(
        spread < Duration::from_millis(500),
        "propagation took {spread:?}"
    );
    let before = sent.load(Ordering::Acquire);
    assert!(wait_until(Duration::from_secs(10), || sent
        .load(Ordering::Acquire)
        > before + 200));
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Acquire),
        0,
        "of {} requests",
        sent.load(Ordering::Acquire)
    );
}

#[test]
fn a_hanging_origin_is_ejected_via_timeouts() {
    let hang = Origin::start(|_| Action::Hang);
    let good = Origin::echo_path();
    let (gw, admin) = gateway(
        1,
        &format!(
            "targets = [\"{}\", \"{}\"]\nresponse_timeout = \"200ms\"\n[upstreams.passive]\nconsecutive_failures = 2",
            hang.addr, good.addr
        ),
        "retry_on = [\"timeout\"]\nretries = 1",
    );
    for _ in 0..6 {
        assert_eq!(
            gw.get("/").status,
            200,
            "timeouts are retried on the good origin"
        );
    }
    assert_eq!(shard_states(admin, 0), vec!["ejected"]);
    let body = admin_get(admin, "/upstreams");
    assert!(body.contains("consecutive failures"), "{body}");
    let hung = hang.received().len();
    for _ in 0..10 {
        assert_eq!(gw.get("/").status, 200);
    }
    assert_eq!(
        hang.received().len(),
        hung,
        "an ejected origin gets no traffic"
    );
}

#[test]
fn an_origin_that_comes_back_is_readmitted_by_active_checks() {
    let (mut first, addr) = echo_origin();
    let (_other, other_addr) = echo_origin();
    let (gw, admin) = gateway(
        2,
        &format!(
            "targets = [\"{addr}\", \"{other_addr}\"]\n[upstreams.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\njitter = \"10ms\""
        ),
        "",
    );
    first.signal(libc::SIGKILL);
    let _ = first.wait_exit(Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(10), || shard_states(
        admin, 0
    )
    .iter()
    .all(|s| s == "unhealthy")));
    for _ in 0..10 {
        assert_eq!(gw.get("/").status, 200);
    }
    // back on the same port
    let dir = temp_dir("echo-back");
    let _back = spawn_bin(
        &dir,
        &["echo", "--bind", &addr.to_string(), "--workers", "1"],
    );
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(10), || shard_states(admin, 0)
            .iter()
            .all(|s| s == "healthy")),
        "{:?}",
        shard_states(admin, 0)
    );
    let body = admin_get(admin, "/upstreams");
    assert!(body.contains("active check passed"), "{body}");
}

#[test]
fn health_probes_happen_once_per_target_per_interval_whatever_the_shard_count() {
    let probes = Arc::new(AtomicUsize::new(0));
    let counter = probes.clone();
    let origin = Origin::start(move |r| {
        if r.request_line().contains("/healthz") {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        ok(b"ok")
    });
    let (_gw, _admin) = gateway(
        4,
        &format!(
            "targets = [\"{}\"]\n[upstreams.health]\ninterval = \"100ms\"\njitter = \"0ms\"",
            origin.addr
        ),
        "",
    );
    std::thread::sleep(Duration::from_millis(200));
    let start = probes.load(Ordering::Acquire);
    std::thread::sleep(Duration::from_secs(2));
    let n = probes.load(Ordering::Acquire) - start;
    // one prober: about 20 in 2 s; four would be about 80
    assert!((8..=26).contains(&n), "{n} probes in 2 s");
}

#[test]
fn the_retry_budget_caps_retries_while_every_request_fails() {
    let failing = || {
        Origin::start(|_| {
            Action::Raw(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
        })
    };
    let (a, b) = (failing(), failing());
    let (gw, _) = gateway(
        1,
        &format!(
            "targets = [\"{}\", \"{}\"]\nretry_budget = {{ percent = 10, min_per_10s = 5 }}\n[upstreams.passive]\nconsecutive_failures = 0",
            a.addr, b.addr
        ),
        "retries = 3\nretry_on = [\"503\"]",
    );
    let n = 100;
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for _ in 0..n {
        let r = keep_alive_get(&mut s, &mut reader, "/").unwrap();
        assert!(r.status == 503 || r.status == 502, "{}", r.status);
    }
    let reached = a.received().len() + b.received().len();
    // without a budget: up to 2 tries each (two targets) = 200; with it: 100 + 5 + 10% of 100
    assert!(
        reached <= n + 5 + 10 + 1,
        "{reached} origin requests for {n} client requests"
    );
    assert!(reached > n, "some retries happened: {reached}");
}

#[test]
fn the_circuit_breaker_answers_503_beyond_max_requests() {
    let (_echo, addr) = echo_origin();
    let (gw, _) = gateway(1, &format!("targets = [\"{addr}\"]\nmax_requests = 2"), "");
    let gw = Arc::new(gw);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || gw.get("/delay/1500").status)
        })
        .collect();
    // wait until both are in flight (the admin view shows them)
    std::thread::sleep(Duration::from_millis(500));
    let r = gw.get("/fast");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("max_requests"), "{}", r.text());
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(gw.get("/fast").status, 200);
}

/// Which origin (by index) served each request, from the `x-user` header it received.
fn owners(origins: &[Origin]) -> std::collections::HashMap<String, usize> {
    let mut map = std::collections::HashMap::new();
    for (i, o) in origins.iter().enumerate() {
        for r in o.received() {
            if let Some(user) = r.header("x-user") {
                map.insert(user, i);
            }
        }
    }
    map
}

fn send_keys(gw: &Gateway, keys: usize) {
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for k in 0..keys {
        s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: user-{k}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(reader.read(&mut s, false).status, 200);
    }
}

#[test]
fn consistent_hash_keeps_keys_and_moves_about_one_in_n_when_a_target_is_added() {
    let os = origins(5);
    let all = addrs(&os);
    let upstream = |n: usize| {
        format!(
            "targets = [{}]\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
            targets_list(&all[..n])
        )
    };
    let keys = 2000;
    let (four, _) = gateway(2, &upstream(4), "");
    send_keys(&four, keys);
    send_keys(&four, keys); // the same keys again, possibly on the other shard
    let before = owners(&os[..4]);
    // a key never shows up at two origins (both rounds, both shards)
    let mut homes: std::collections::HashMap<String, std::collections::HashSet<usize>> =
        std::collections::HashMap::new();
    for (i, o) in os[..4].iter().enumerate() {
        for r in o.received() {
            homes
                .entry(r.header("x-user").unwrap())
                .or_default()
                .insert(i);
        }
    }
    assert_eq!(homes.len(), keys);
    assert!(
        homes.values().all(|h| h.len() == 1),
        "a key went to two origins"
    );
    drop(four);
    for o in &os {
        o.received.lock().unwrap().clear();
    }
    let (five, _) = gateway(2, &upstream(5), "");
    send_keys(&five, keys);
    let after = owners(&os);
    let moved: Vec<&String> = before
        .iter()
        .filter(|(k, i)| after.get(*k) != Some(i))
        .map(|(k, _)| k)
        .collect();
    let share = moved.len() as f64 / keys as f64;
    assert!(
        (0.12..=0.30).contains(&share),
        "moved {share:.3} of keys (ideal 0.2)"
    );
    assert!(
        moved.iter().all(|k| after[*k] == 4),
        "keys only move to the new target"
    );
}

#[test]
fn sticky_cookie_holds_while_healthy_and_moves_when_not() {
    let broken: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let os: Vec<Origin> = broken
        .iter()
        .map(|b| {
            let b = b.clone();
            Origin::start(move |_| {
                if b.load(Ordering::Acquire) {
                    Action::Close
                } else {
                    ok(b"ok")
                }
            })
        })
        .collect();
    let (gw, _) = gateway(
        2,
        &format!(
            "targets = [{}]\nsticky = {{ cookie = \"rg_sticky\", ttl = \"1h\" }}\n[upstreams.passive]\nconsecutive_failures = 1",
            targets_list(&addrs(&os))
        ),
        "retries = 2",
    );
    let r = gw.get("/");
    let set = r
        .header("set-cookie")
        .expect("first response sets the cookie")
        .to_string();
    assert!(
        set.starts_with("rg_sticky=") && set.contains("Max-Age=3600") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let stuck = (0..2)
        .find(|&i| os[i].received().len() == 1)
        .expect("one target answered the first request");
    assert!(
        !cookie_is_unkeyed_hash_of(&cookie, &os[stuck].addr),
        "the cookie must not reveal the target's address: {cookie}"
    );
    let before = os[stuck].received().len();
    // With the cookie every request (on any shard: new connections) goes to the same origin.
    for _ in 0..20 {
        let r = gw.request(&format!(
            "GET / HTTP/1.1\r\nHost: t\r\nCookie: a=b; {cookie}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("set-cookie"), None, "no new cookie while it holds");
    }
    assert_eq!(os[stuck].received().len(), before + 20);
    // The stuck origin starts failing: the request moves, and so does the cookie.
    broken[stuck].store(true, Ordering::Release);
    let r = gw.request(&format!(
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "retried on the other target");
    let moved = r
        .header("set-cookie")
        .expect("a new cookie for the new target");
    let moved = moved.split(';').next().unwrap().to_string();
    assert_ne!(moved, cookie, "the new cookie names the other target");
    let other_before = os[1 - stuck].received().len();
    let r = gw.request(&format!(
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: {moved}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(os[1 - stuck].received().len(), other_before + 1);
}

/// Whether a sticky cookie (`name=value`) is the unkeyed hash of the target's address (what
/// it used to be: anyone could brute-force the internal address out of it).
fn cookie_is_unkeyed_hash_of(cookie: &str, addr: &SocketAddr) -> bool {
    cookie.ends_with(&format!(
        "={:016x}",
        ringgate::config::stable_hash(addr.to_string().as_bytes())
    ))
}

/// With `secret`, cookie values are keyed: stable across restarts with the same secret
/// (and the same for every gateway of a deployment), different with another secret.
#[test]
fn sticky_cookie_values_are_keyed_by_the_secret() {
    let origin = Origin::start(|_| ok(b"ok"));
    let dir = temp_dir("sticky-secret");
    let cookie_with = |secret: &str| {
        let file = dir.join(format!("{secret}.key"));
        std::fs::write(&file, secret).unwrap();
        let (gw, _) = gateway(
            1,
            &format!(
                "targets = [\"{}\"]\nsticky = {{ cookie = \"rg\", secret = \"file:{}\" }}",
                origin.addr,
                file.display()
            ),
            "",
        );
        let r = gw.get("/");
        r.header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let first = cookie_with("alpha-secret-0123456789");
    assert_eq!(first, cookie_with("alpha-secret-0123456789"));
    assert_ne!(first, cookie_with("beta-secret-0123456789"));
    assert!(!cookie_is_unkeyed_hash_of(&first, &origin.addr));
}

#[test]
fn every_target_down_is_503_unless_panic_mode() {
    let dead = || format!("127.0.0.1:{}", free_port());
    for (panic_mode, expected) in [(false, 503), (true, 502)] {
        let (gw, admin) = gateway(
            1,
            &format!(
                "targets = [\"{}\", \"{}\"]\npanic_mode = {panic_mode}\n[upstreams.passive]\nconsecutive_failures = 1\nmax_ejection_percent = 100",
                dead(),
                dead()
            ),
            "retries = 0",
        );
        // fail once on each target: both get ejected
        for _ in 0..2 {
            assert_eq!(gw.get("/").status, 502);
        }
        assert!(wait_until(Duration::from_secs(5), || {
            (0..2).all(|t| shard_states(admin, t) == vec!["ejected"])
        }));
        let r = gw.get("/");
        assert_eq!(
            r.status,
            expected,
            "panic_mode = {panic_mode}: {}",
            r.text()
        );
        if !panic_mode {
            assert!(
                r.text().contains("no healthy upstream target"),
                "{}",
                r.text()
            );
        }
    }
}

#[test]
fn bad_balancing_and_health_settings_are_config_errors_with_line_and_key() {
    let dir = temp_dir("lb-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:2\"]\nbalance = \"consistent_hash\"\n[upstreams.health]\ninterval = \"0s\"\nexpected_status = \"abc\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\nretry_on = [\"sometimes\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        ":9: upstreams[0].health.interval: must be greater than zero",
        ":10: upstreams[0].health.expected_status: bad status range",
        "upstreams[0].hash_key: balance = \"consistent_hash\" needs hash_key",
        ":14: routes[0].retry_on[0]: unknown condition \"sometimes\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn slow_start_ramps_a_returning_target_up_gradually() {
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let steady = Origin::echo_path();
    let returning = Origin::start(move |_| {
        if flag.load(Ordering::Acquire) {
            Action::Close
        } else {
            ok(b"ok")
        }
    });
    let (gw, admin) = gateway(
        1,
        &format!(
            "targets = [\"{}\", \"{}\"]\nslow_start = \"30s\"\n[upstreams.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\njitter = \"0ms\"",
            steady.addr, returning.addr
        ),
        "retries = 1",
    );
    down.store(true, Ordering::Release);
    assert!(wait_until(Duration::from_secs(10), || shard_states(
        admin, 1
    ) == vec![
        "unhealthy"
    ]));
    down.store(false, Ordering::Release);
    assert!(wait_until(Duration::from_secs(10), || shard_states(
        admin, 1
    ) == vec!["healthy"]));
    let count = |o: &Origin| {
        o.received()
            .iter()
            .filter(|r| !r.head.contains("/healthz"))
            .count()
    };
    let (s0, r0) = (count(&steady), count(&returning));
    send_many(&gw, 400);
    let (s, r) = (count(&steady) - s0, count(&returning) - r0);
    assert_eq!(s + r, 400);
    // Round robin would give it half; early in a 30 s ramp it gets about a tenth.
    assert!(r > 0 && r < 120, "returning target got {r} of 400");
}

/// A TLS origin that accepts TCP but never answers the handshake keeps a connect pending;
/// beyond `max_pending` such connects the gateway answers 503 at once instead of queueing.
#[test]
fn max_pending_answers_503_instead_of_queueing_connects() {
    let silent = Origin::start(|_| Action::Hang);
    let (gw, _) = gateway(
        1,
        &format!(
            "targets = [\"{}\"]\ntls = true\ntls_verify = false\ntls_server_name = \"origin.test\"\nconnect_timeout = \"3s\"\nmax_pending = 1",
            silent.addr
        ),
        "retries = 0",
    );
    let gw = Arc::new(gw);
    let first = {
        let gw = gw.clone();
        std::thread::spawn(move || gw.get("/first").status)
    };
    // wait until the first connect is pending (the origin has accepted it)
    assert!(wait_until(Duration::from_secs(10), || silent
        .connection_count()
        >= 1));
    let started = Instant::now();
    let r = gw.get("/second");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("max_pending"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not queued"
    );
    assert_eq!(
        first.join().unwrap(),
        502,
        "the stalled handshake times out"
    );
}
