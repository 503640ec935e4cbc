//! `ringgate top`: a terminal view of a running gateway, read from its admin `/metrics` once
//! per interval: requests/s, error rate and p50/p99 per route, and target health. A client of
//! the admin API only (blocking, no runtime); nothing here runs inside the gateway.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One scrape, reduced to what the view shows.
#[derive(Debug, Default, Clone)]
struct Scrape {
    /// Per route: requests, of which 5xx.
    requests: BTreeMap<String, (f64, f64)>,
    /// Per route: cumulative bucket counts by upper bound (seconds).
    buckets: BTreeMap<String, Vec<(f64, f64)>>,
    /// (upstream, target) -> up.
    targets: BTreeMap<(String, String), bool>,
}

/// Runs the view: `count` refreshes (forever when `None`), `interval` apart.
pub fn run(
    admin: SocketAddr,
    token: Option<&str>,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), String> {
    let mut previous = fetch(admin, token)?;
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let started = Instant::now();
        std::thread::sleep(interval);
        let current = fetch(admin, token)?;
        let text = render(&previous, &current, started.elapsed());
        let mut out = std::io::stdout().lock();
        if count.is_none() {
            // Clear the screen and go home, as top does.
            let _ = out.write_all(b"\x1b[2J\x1b[H");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        previous = current;
        shown += 1;
    }
    Ok(())
}

fn fetch(admin: SocketAddr, token: Option<&str>) -> Result<Scrape, String> {
    let fail = |e: std::io::Error| format!("admin {admin}: {e}");
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: ringgate\r\n{auth}\r\n").map_err(fail)?;
    let mut all = String::new();
    s.read_to_string(&mut all).map_err(fail)?;
    let (head, body) = all
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("admin {admin}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("admin {admin}: /metrics answered {line:?}"));
    }
    Ok(parse(body))
}

fn parse(body: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| label_value(labels, key);
        match name {
            "ringgate_requests_total" => {
                let entry = scrape.requests.entry(label("route")).or_default();
                entry.0 += value;
                if label("code").starts_with('5') {
                    entry.1 += value;
                }
            }
            "ringgate_request_duration_seconds_bucket" => {
                let le = label("le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                scrape
                    .buckets
                    .entry(label("route"))
                    .or_default()
                    .push((le, value));
            }
            "ringgate_upstream_target_up" => {
                scrape
                    .targets
                    .insert((label("upstream"), label("target")), value > 0.0);
            }
            _ => {}
        }
    }
    scrape
}

/// A label's value in `key="value",...` (escapes undone).
fn label_value(labels: &str, key: &str) -> String {
    let needle = format!("{key}=\"");
    let Some(start) = labels
        .match_indices(&needle)
        .find(|(i, _)| *i == 0 || labels.as_bytes()[i - 1] == b',')
        .map(|(i, _)| i + needle.len())
    else {
        return String::new();
    };
    let mut out = String::new();
    let mut chars = labels[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// The quantile `q` of the requests between two scrapes, from histogram bucket deltas.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

fn render(before: &Scrape, after: &Scrape, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>10} {:>8} {:>10} {:>10}\n",
        "ROUTE", "REQ/S", "5XX %", "P50", "P99"
    ));
    for (route, &(total, errors)) in &after.requests {
        let (old_total, old_errors) = before.requests.get(route).copied().unwrap_or_default();
        let (n, e) = (total - old_total, errors - old_errors);
        let buckets = (
            before.buckets.get(route).map_or(&[][..], |b| &b[..]),
            after.buckets.get(route).map_or(&[][..], |b| &b[..]),
        );
        let show = |q| {
            quantile(buckets.0, buckets.1, q).map_or("-".to_string(), |s| {
                if s.is_infinite() {
                    ">10s".to_string()
                } else {
                    format!("<={}ms", s * 1000.0)
                }
            })
        };
        let name = if route.is_empty() {
            "(no route)"
        } else {
            route
        };
        let error_rate = if n > 0.0 { 100.0 * e / n } else { 0.0 };
        out.push_str(&format!(
            "{:<24} {:>10.1} {:>8.1} {:>10} {:>10}\n",
            name,
            n / secs,
            error_rate,
            show(0.5),
            show(0.99)
        ));
    }
    out.push_str(&format!(
        "\n{:<24} {:<28} {}\n",
        "UPSTREAM", "TARGET", "STATE"
    ));
    for ((upstream, target), up) in &after.targets {
        let state = if *up { "up" } else { "DOWN" };
        out.push_str(&format!("{upstream:<24} {target:<28} {state}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "ringgate_requests_total{route=\"a\",code=\"200\"} 10\nringgate_requests_total{route=\"a\",code=\"503\"} 0\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"0.001\"} 5\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"0.01\"} 10\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 10\nringgate_upstream_target_up{upstream=\"u\",target=\"127.0.0.1:1\"} 1\n";
    const TWO: &str = "ringgate_requests_total{route=\"a\",code=\"200\"} 28\nringgate_requests_total{route=\"a\",code=\"503\"} 2\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"0.001\"} 5\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"0.01\"} 29\nringgate_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 30\nringgate_upstream_target_up{upstream=\"u\",target=\"127.0.0.1:1\"} 0\n";

    #[test]
    fn rates_errors_and_quantiles_come_from_the_difference_of_two_scrapes() {
        let text = render(&parse(ONE), &parse(TWO), Duration::from_secs(2));
        let row = text.lines().find(|l| l.starts_with("a ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, vec!["a", "10.0", "10.0", "<=10ms", ">10s"], "{text}");
        assert!(
            text.contains("127.0.0.1:1") && text.contains("DOWN"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_unescaped_and_matched_whole() {
        assert_eq!(
            label_value("xroute=\"no\",route=\"a\\\"b\"", "route"),
            "a\"b"
        );
        assert_eq!(label_value("route=\"\"", "route"), "");
    }
}
