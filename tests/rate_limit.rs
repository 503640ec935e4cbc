//! Rate limits and quotas through the real binary: GCRA with burst (429, Retry-After,
//! RateLimit-Policy and RateLimit on refusals and admissions), keys (header, a missing header's
//! shared bucket, consumer), fixed-window quotas, concurrency, a global limit exact across
//! shards, a reload that keeps exhausted cells, and cluster limits shared by two processes
//! through a real redis-server (and what happens while it is down).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn admin_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A gateway with `workers` shards, an admin listener, the policies and route lines given.
fn gateway(
    workers: usize,
    admin: SocketAddr,
    policies: &str,
    route: &str,
    origin: SocketAddr,
) -> Gateway {
    Gateway::start(&config(workers, admin, policies, route, origin, "{listen}"))
}

fn config(
    workers: usize,
    admin: SocketAddr,
    policies: &str,
    route: &str,
    origin: SocketAddr,
    listen: &str,
) -> String {
    format!(
        "[server]\nworkers = {workers}\n\n[admin]\nbind = \"{admin}\"\n\n{policies}\n\n[[listeners]]\nname = \"main\"\nbind = \"{listen}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"api\"\nupstream = \"o\"\n{route}\n"
    )
}

fn get(gw: &Gateway, headers: &str) -> Response {
    gw.request(&format!(
        "GET /x HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    ))
}

fn error_of(r: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn gcra_with_burst_answers_429_with_its_fields() {
    let origin = Origin::start(|_| ok(b"ok"));
    let admin = admin_addr();
    // 5 per 10 s (one every 2 s) plus 2 at once: 3 immediately, then one every 2 s.
    let gw = gateway(
        1,
        admin,
        "[rate_limits.per-ip]\nkey = \"ip\"\nrate = 5\nperiod = \"10s\"\nburst = 2",
        "rate_limits = [\"per-ip\"]",
        origin.addr,
    );
    let answers: Vec<Response> = (0..4).map(|_| get(&gw, "")).collect();
    for (i, r) in answers[..3].iter().enumerate() {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=5;w=10"));
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-ip\";r={};t={}", 2 - i, 2 * (i + 1)).as_str())
        );
    }
    let refused = &answers[3];
    assert_eq!(refused.status, 429);
    assert!(
        refused
            .head
            .starts_with("HTTP/1.1 429 Too Many Requests\r\n")
    );
    assert_eq!(error_of(refused), "rate limit exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit"), Some("\"per-ip\";r=0;t=6"));
    assert_eq!(
        origin.received().len(),
        3,
        "the refused request never reached the origin"
    );
    assert_eq!(
        admin_metric(
            admin,
            "ringgate_ratelimit_rejected_total{policy=\"per-ip\"}"
        ),
        1
    );
    assert_eq!(
        admin_metric(
            admin,
            "ringgate_ratelimit_admitted_total{policy=\"per-ip\"}"
        ),
        3
    );
    // After the interval, exactly one more.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(&gw, "").status, 200);
    assert_eq!(get(&gw, "").status, 429);
}

#[test]
fn header_keys_quotas_and_the_shared_bucket_of_a_missing_header() {
    let origin = Origin::start(|_| ok(b"ok"));
    let admin = admin_addr();
    let gw = gateway(
        1,
        admin,
        "[rate_limits.daily]\nkey = \"header:x-user\"\nalgorithm = \"fixed_window\"\nrate = 2\nperiod = \"1d\"\nheaders = false",
        "rate_limits = [\"daily\"]",
        origin.addr,
    );
    for user in ["x-user: ann\r\n", "x-user: bob\r\n", ""] {
        assert_eq!(get(&gw, user).status, 200);
        let r = get(&gw, user);
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none(), "headers = false");
        let refused = get(&gw, user);
        assert_eq!(refused.status, 429, "{user:?}");
        // The window ends at midnight UTC: Retry-After says how far that is.
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry));
        assert!(refused.header("ratelimit").is_none());
    }
    // A header that is present but empty is a key of its own, not the missing bucket.
    assert_eq!(get(&gw, "x-user:\r\n").status, 200);
    // ann, bob, the missing header's bucket and the empty value's.
    assert!(wait_until(Duration::from_secs(10), || {
        admin_metric(admin, "ringgate_ratelimit_keys{policy=\"daily\"}") == 4
    }));
    // Two copies of the key header: which one names the bucket would be the client's pick
    // (a fresh name to dodge an exhausted one), so neither is believed.
    let twice = get(&gw, "x-user: ann\r\nX-User: carol\r\n");
    assert_eq!(twice.status, 400);
    assert_eq!(error_of(&twice), "more than one x-user header");
    assert_eq!(
        admin_metric(admin, "ringgate_ratelimit_keys{policy=\"daily\"}"),
        4,
        "a refused request makes no key"
    );
}

#[test]
fn consumers_have_their_own_budget_and_concurrency_is_held_until_the_answer() {
    let origin = Origin::start(|r| {
        if r.request_line().contains("/slow") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        ok(b"ok")
    });
    let admin = admin_addr();
    let (ann_key, ann_line) = keygen("ann", "ann");
    let (bob_key, bob_line) = keygen("bob", "bob");
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 1\n\n[admin]\nbind = \"{admin}\"\n\n[[consumers]]\nname = \"ann\"\n{ann_line}\n\n[[consumers]]\nname = \"bob\"\n{bob_line}\n\n[rate_limits.per-consumer]\nkey = \"consumer\"\nrate = 1\nperiod = \"1m\"\n\n[rate_limits.one-at-a-time]\nkey = \"route\"\nconcurrency = 1\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"keyed\"\npath_prefix = \"/k\"\nupstream = \"o\"\nauth = [\"api_key\"]\nrate_limits = [\"per-consumer\"]\n\n[[routes]]\nname = \"serial\"\npath_prefix = \"/\"\nupstream = \"o\"\nrate_limits = [\"one-at-a-time\"]\n",
        origin.addr
    ));
    let as_user = |key: &str| {
        gw.request(&format!(
            "GET /k HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
        ))
    };
    assert_eq!(as_user(&ann_key).status, 200);
    assert_eq!(as_user(&ann_key).status, 429);
    assert_eq!(as_user(&bob_key).status, 200);
    assert_eq!(as_user(&bob_key).status, 429);

    // One request in flight at a time on "serial": a second one while the first waits on a
    // slow origin is refused; once the first is answered, the next goes through.
    let mut slow = gw.connect();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        origin
            .received()
            .iter()
            .any(|r| r.request_line().contains("/slow"))
    }));
    let refused = gw.get("/fast");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"one-at-a-time\";q=1")
    );
    let first = ResponseReader::default().read(&mut slow, false);
    assert_eq!(first.status, 200);
    assert_eq!(gw.get("/fast").status, 200);
    // The slot is held by the exchange, not the connection: keep-alive does not pin it.
    slow.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(ResponseReader::default().read(&mut slow, false).status, 200);
    assert_eq!(gw.get("/fast").status, 200);
}

/// Requests over `conns` keep-alive connections in turn, with a pause between them long
/// enough for gossip ticks; how many were admitted.
fn spread(gw: &Gateway, conns: &mut [TcpStream], n: usize, pause: Duration) -> usize {
    let mut admitted = 0;
    for i in 0..n {
        let s = &mut conns[i % conns.len()];
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = ResponseReader::default().read(s, false);
        admitted += usize::from(r.status == 200);
        std::thread::sleep(pause);
    }
    let _ = gw;
    admitted
}

fn shard_exchanges(admin: SocketAddr) -> Vec<u64> {
    let mut m = TcpStream::connect(admin).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    m.write_all(b"GET /shards HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = m.read_to_string(&mut text);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["exchanges"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_global_limit_holds_for_the_whole_process_and_survives_a_reload() {
    let origin = Origin::start(|_| ok(b"ok"));
    let admin = admin_addr();
    let policy = |rate: u32| {
        format!(
            "[rate_limits.everyone]\nkey = \"route\"\nrate = {rate}\nperiod = \"1h\"\nburst = {}\nscope = \"global\"",
            rate - 1
        )
    };
    let gw = gateway(
        2,
        admin,
        &policy(10),
        "rate_limits = [\"everyone\"]",
        origin.addr,
    );
    let mut conns: Vec<TcpStream> = (0..16).map(|_| gw.connect()).collect();
    // A pause well over two gossip ticks between requests: every shard knows the others'
    // usage before the next request (the overshoot bound is about requests within a tick).
    let admitted = spread(&gw, &mut conns, 30, Duration::from_millis(100));
    assert_eq!(admitted, 10, "10 for the whole process, not 10 per shard");
    let per_shard = shard_exchanges(admin);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards served: {per_shard:?}"
    );

    // A reload that changes the rate keeps the exhausted cell.
    let path = gw.dir.join("ringgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&policy(10), &policy(12))).unwrap();
    let mut m = TcpStream::connect(admin).unwrap();
    m.write_all(b"POST /reload HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = m.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut conns: Vec<TcpStream> = (0..16).map(|_| gw.connect()).collect();
    let admitted = spread(&gw, &mut conns, 16, Duration::from_millis(100));
    assert_eq!(
        admitted, 2,
        "the 2 the higher rate adds: the 10 used stay used"
    );
}

/// A redis-server on a free loopback port, killed (by PID) when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        assert!(wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(15)
        ));
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cluster_limits_are_shared_through_redis_and_redis_down_follows_the_config() {
    let origin = Origin::start(|_| ok(b"ok"));
    let redis = Redis::start_on(free_port());
    let cluster = |down: &str| {
        format!(
            "[cluster]\nredis = \"redis://127.0.0.1:{}\"\nsync_interval = \"50ms\"\non_redis_down = \"{down}\"\n\n[rate_limits.shared]\nkey = \"header:x-tenant\"\nrate = 10\nperiod = \"1h\"\nburst = 9\nscope = \"cluster\"",
            redis.port
        )
    };
    let (admin1, admin2) = (admin_addr(), admin_addr());
    let one = gateway(
        2,
        admin1,
        &cluster("closed"),
        "rate_limits = [\"shared\"]",
        origin.addr,
    );
    let two = gateway(
        1,
        admin2,
        &cluster("open"),
        "rate_limits = [\"shared\"]",
        origin.addr,
    );
    let tenant = "x-tenant: acme\r\n";
    assert!(wait_until(Duration::from_secs(15), || admin_metric(
        admin1,
        "ringgate_ratelimit_redis_up"
    ) == 1
        && admin_metric(admin2, "ringgate_ratelimit_redis_up") == 1));
    assert!(wait_until(Duration::from_secs(15), || admin_metric(
        admin1,
        "ringgate_ratelimit_cluster_nodes"
    ) == 2));
    // Node two touches the key first, so it watches it; node one spends 6.
    assert_eq!(get(&two, tenant).status, 200);
    for _ in 0..6 {
        assert_eq!(get(&one, tenant).status, 200);
    }
    // A few syncs later, node two knows: 3 of the 10 are left.
    std::thread::sleep(Duration::from_millis(400));
    let admitted = (0..10).filter(|_| get(&two, tenant).status == 200).count();
    assert_eq!(admitted, 3);
    // Another tenant is untouched.
    assert_eq!(get(&one, "x-tenant: other\r\n").status, 200);

    // Redis goes away: node one (closed) refuses with 503, node two (open) admits.
    let port = redis.port;
    drop(redis);
    assert!(wait_until(Duration::from_secs(20), || admin_metric(
        admin1,
        "ringgate_ratelimit_redis_up"
    ) == 0));
    assert!(wait_until(Duration::from_secs(10), || get(
        &one,
        "x-tenant: third\r\n"
    )
    .status
        == 503));
    let r = get(&one, "x-tenant: third\r\n");
    assert_eq!(error_of(&r), "rate limit cannot be checked");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(wait_until(Duration::from_secs(10), || get(&two, tenant)
        .status
        == 200));
    // It comes back (same port): synced again, and the limit applies again.
    let _redis = Redis::start_on(port);
    assert!(wait_until(Duration::from_secs(20), || admin_metric(
        admin1,
        "ringgate_ratelimit_redis_up"
    ) == 1));
    assert!(wait_until(Duration::from_secs(10), || get(
        &one,
        "x-tenant: fourth\r\n"
    )
    .status
        == 200));
}

/// Checks a `RateLimit-Policy` or `RateLimit` value is a structured-field List of items,
/// each an sf-string with integer parameters (RFC 9651): `"name";k=1;k=2, "other";k=3`.
fn parse_sf_list(value: &str) -> Vec<(String, Vec<(String, u64)>)> {
    let mut items = Vec::new();
    for member in value.split(", ") {
        let rest = member.strip_prefix('"').expect("an item is an sf-string");
        let (name, params) = rest.split_once('"').expect("the string ends");
        assert!(
            name.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'\\'),
            "{name:?}"
        );
        let mut parsed = Vec::new();
        for param in params.split(';').skip(1) {
            let (key, v) = param.split_once('=').expect("key=value");
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{key:?}"
            );
            parsed.push((key.to_string(), v.parse().expect("an sf-integer")));
        }
        assert!(params.is_empty() || params.starts_with(';'), "{params:?}");
        items.push((name.to_string(), parsed));
    }
    items
}

#[test]
fn the_fields_parse_as_structured_field_lists() {
    let origin = Origin::start(|_| ok(b"ok"));
    let gw = gateway(
        1,
        admin_addr(),
        "[rate_limits.a]\nkey = \"ip\"\nrate = 3\nperiod = \"1m\"\n\n[rate_limits.b-2]\nkey = \"route\"\nrate = 100\nperiod = \"1h\"\nburst = 5",
        "rate_limits = [\"a\", \"b-2\"]",
        origin.addr,
    );
    let r = get(&gw, "");
    let policy = parse_sf_list(r.header("ratelimit-policy").unwrap());
    assert_eq!(
        policy,
        [
            (
                "a".to_string(),
                vec![("q".to_string(), 3), ("w".to_string(), 60)]
            ),
            (
                "b-2".to_string(),
                vec![("q".to_string(), 100), ("w".to_string(), 3600)]
            ),
        ]
    );
    let state = parse_sf_list(r.header("ratelimit").unwrap());
    assert_eq!(
        state[0],
        (
            "a".to_string(),
            vec![("r".to_string(), 0), ("t".to_string(), 20)]
        )
    );
    assert_eq!(state[1].1[0], ("r".to_string(), 5));
    let refused = get(&gw, "");
    assert_eq!(refused.status, 429);
    let only = parse_sf_list(refused.header("ratelimit").unwrap());
    assert_eq!(only.len(), 1, "the refusing policy's state");
    assert_eq!(only[0].0, "a");
}

/// Sends requests as fast as `threads` clients can for `seconds`, each on its own keep-alive
/// connection; how many were admitted.
fn drive(listen: SocketAddr, threads: usize, seconds: f64) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(listen).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut reader = ResponseReader::default();
                let mut admitted = 0;
                while std::time::Instant::now() < deadline {
                    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                    admitted += usize::from(reader.read(&mut s, false).status == 200);
                }
                admitted
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// A connection served by a different shard than `first` (found through /shards).
fn connection_on_another_shard(
    gw: &Gateway,
    admin: SocketAddr,
    first: &mut TcpStream,
) -> TcpStream {
    let shard_of = |s: &mut TcpStream| {
        let before = shard_exchanges(admin);
        s.write_all(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        ResponseReader::default().read(s, false);
        let after = shard_exchanges(admin);
        (0..before.len()).find(|&i| after[i] > before[i])
    };
    let home = shard_of(first);
    for _ in 0..64 {
        let mut s = gw.connect();
        if shard_of(&mut s) != home {
            return s;
        }
    }
    panic!("64 connections all landed on shard {home:?}");
}

#[test]
fn a_global_limit_is_the_process_limit_in_every_load_shape() {
    let origin = Origin::start(|_| ok(b"ok"));
    // 100 per second plus 10 at once; each run lasts 2 s (two periods).
    let policy = "[rate_limits.one]\nkey = \"route\"\nrate = 100\nperiod = \"1s\"\nburst = 10\nscope = \"global\"";
    for workers in [2, 4] {
        for shape in ["uniform", "one connection", "moving"] {
            let admin = admin_addr();
            let gw = gateway(
                workers,
                admin,
                policy,
                "rate_limits = [\"one\"]",
                origin.addr,
            );
            let started = std::time::Instant::now();
            let driven = match shape {
                "uniform" => drive(gw.listen, 8, 2.0),
                "one connection" => drive(gw.listen, 1, 2.0),
                _ => {
                    let mut first = gw.connect();
                    let mut second = connection_on_another_shard(&gw, admin, &mut first);
                    // The probes above were admitted too: count from here.
                    let before =
                        admin_metric(admin, "ringgate_ratelimit_admitted_total{policy=\"one\"}");
                    let mut n = 0;
                    for (s, until) in [(&mut first, 1.0), (&mut second, 2.0)] {
                        let mut reader = ResponseReader::default();
                        while started.elapsed().as_secs_f64() < until {
                            s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                            n += usize::from(reader.read(s, false).status == 200);
                        }
                    }
                    n + before as usize
                }
            };
            let elapsed = started.elapsed().as_secs_f64();
            let admitted =
                admin_metric(admin, "ringgate_ratelimit_admitted_total{policy=\"one\"}") as usize;
            assert_eq!(admitted, driven, "the metric counts what clients got");
            let allowed = 11.0 + 100.0 * elapsed;
            let bound = (workers - 1) as f64 * (11.0 + 100.0 * 0.01);
            // Generous margins (a loaded 2-core machine), yet far from a per-shard split
            // (allowed / workers) and from independent shards (allowed * workers).
            assert!(
                admitted as f64 >= allowed * 0.75 && admitted as f64 <= allowed * 1.1 + bound,
                "{workers} shards, {shape}: admitted {admitted}, allowed {allowed:.0}"
            );
        }
    }
}

#[test]
fn a_concurrency_limit_never_lets_more_through_than_it_says() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, p) = (now.clone(), peak.clone());
    let origin = Origin::start(move |_| {
        let inside = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(inside, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        n.fetch_sub(1, Ordering::SeqCst);
        ok(b"ok")
    });
    let gw = gateway(
        1,
        admin_addr(),
        "[rate_limits.three]\nkey = \"route\"\nconcurrency = 3",
        "rate_limits = [\"three\"]",
        origin.addr,
    );
    let admitted = drive(gw.listen, 12, 2.0);
    assert!(admitted > 20, "requests went through: {admitted}");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "at most 3 in flight, and the limit was reached"
    );
}
