//! `GET /metrics` through the real binary: every exchange counted once by route and code
//! across shards, histograms consistent, and the whole output valid Prometheus text format
//! 0.0.4 (checked by a strict parser written here).

mod common;
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn scrape(admin: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// A strict reader of the text format: HELP/TYPE before a family's samples, valid names,
/// quoted and escaped label values, numeric values, no series twice.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
            assert!(is_name(name, true), "bad name in {line:?}");
            match kind {
                "HELP" => assert!(tail.is_some_and(|t| !t.is_empty()), "{line:?}"),
                "TYPE" => {
                    let t = tail.unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        typed.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {line:?}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        assert!(is_name(&name, true), "bad metric name {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name);
        assert!(
            typed.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        assert!(seen.insert(series.to_string()), "series twice: {line:?}");
        samples.push((name, labels, value));
    }
    samples
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
        assert!(is_name(name, false), "bad label name in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label twice: {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn every_exchange_is_counted_once_by_route_and_code_and_the_output_parses() {
    let origin = Origin::echo_path();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "{}[admin]\nbind = \"{admin}\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"u\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n\n[[routes]]\nname = \"made\"\npath = \"/made\"\ndirect_response = {{ status = 201, body = \"ok\" }}\n",
        base_config(),
        origin.addr
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let plan = [
        ("/hello", 200, 5),
        ("/made", 201, 3),
        ("/api/x", 200, 4),
        ("/nope", 404, 2),
    ];
    for (path, status, n) in plan {
        for _ in 0..n {
            assert_eq!(gw.get(path).status, status, "{path}");
        }
    }
    assert_eq!(
        status_of(&exchange_raw(&gw, b"GET /x HTTP/1.1\r\n\r\n")),
        400
    );
    let total = 15.0;
    let mut samples = Vec::new();
    let settled = wait_until(Duration::from_secs(10), || {
        samples = parse(&scrape(admin).1);
        sum(&samples, "ringgate_requests_total", &[]) == total
            && sum(&samples, "ringgate_connections_active", &[]) == 0.0
    });
    assert!(settled, "{samples:?}");
    let (head, _) = scrape(admin);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for (route, code, n) in [
        ("hello", "200", 5.0),
        ("made", "201", 3.0),
        ("api", "200", 4.0),
        ("", "404", 2.0),
        ("", "400", 1.0),
    ] {
        assert_eq!(
            sum(
                &samples,
                "ringgate_requests_total",
                &[("route", route), ("code", code)]
            ),
            n,
            "route {route:?} code {code}"
        );
    }
    // Histograms: per route, buckets never decrease, +Inf equals _count; counts sum to N.
    assert_eq!(
        sum(&samples, "ringgate_request_duration_seconds_count", &[]),
        total
    );
    for route in ["hello", "made", "api", ""] {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "ringgate_request_duration_seconds_bucket" && l["route"] == route
            })
            .map(|(_, l, v)| {
                let le = if l["le"] == "+Inf" {
                    f64::INFINITY
                } else {
                    l["le"].parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{route}: {buckets:?}"
        );
        let count = sum(
            &samples,
            "ringgate_request_duration_seconds_count",
            &[("route", route)],
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{route}");
        assert_eq!(buckets.first().unwrap().0, 0.0001);
    }
    let target = origin.addr.to_string();
    assert_eq!(
        sum(
            &samples,
            "ringgate_upstream_requests_total",
            &[("upstream", "u"), ("target", &target), ("code", "200")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &samples,
            "ringgate_upstream_target_up",
            &[("target", &target)]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "ringgate_config_reloads_total",
            &[("result", "ok")]
        ),
        0.0
    );
    assert_eq!(sum(&samples, "ringgate_build_info", &[]), 1.0);
    assert!(sum(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sum(&samples, "process_open_fds", &[]) > 3.0);
    assert!(sum(&samples, "process_start_time_seconds", &[]) > 1.7e9);
}

#[test]
fn top_shows_each_routes_rate_and_the_targets_health() {
    let origin = Origin::echo_path();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "{}[admin]\nbind = \"{admin}\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"u\"\n",
        base_config(),
        origin.addr
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    // Load that runs while top takes its two scrapes (bounded in count and time).
    let listen = gw.listen;
    let load = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = ResponseReader::default();
        for _ in 0..2_000 {
            if std::time::Instant::now() > deadline {
                break;
            }
            s.write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(reader.read(&mut s, false).status, 200);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let out = std::process::Command::new(BIN)
        .args([
            "top",
            "--admin",
            &admin.to_string(),
            "--interval",
            "0.5",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    load.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("no api row in\n{text}"));
    let rate: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rate > 0.0, "{text}");
    assert!(
        text.contains(&origin.addr.to_string()) && text.contains(" up"),
        "{text}"
    );
    // An admin address with nothing listening is a clear error, not a hang.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new(BIN)
        .args(["top", "--admin", &dead, "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("top: admin"));
}
