//! The admin listener: `GET /healthz`, `GET /readyz` (every shard serving) and
//! `GET /upstreams` (every target's state as every shard sees it). Runs off the shards, with
//! blocking std sockets: one short-lived thread per connection (at most
//! [`MAX_ADMIN_CONNECTIONS`] at once), one request per connection, the whole request read
//! within [`REQUEST_DEADLINE`], so a slow client can delay nobody but itself. It only reads
//! the shards' atomic views and must not write shard state. Not authenticated: bind it to
//! loopback or a private network.

use crate::config::Snapshot;
use crate::gossip::now_ms;
use crate::upstream::Cluster;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Admin connections served at once; more are answered 503 and closed.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;
/// The whole request must arrive within this, and the answer be written within it again.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Binds `addr` (an error is reported at start) and serves on a background thread.
pub fn start(
    addr: SocketAddr,
    snapshot: Arc<Snapshot>,
    cluster: Arc<Cluster>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
        - now_ms();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(&listener, &snapshot, &cluster, started_at))?;
    Ok(())
}

fn accept_loop(
    listener: &TcpListener,
    snapshot: &Arc<Snapshot>,
    cluster: &Arc<Cluster>,
    epoch_ms: u64,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of fds (EMFILE) and the like: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, AcqRel) >= MAX_ADMIN_CONNECTIONS {
            active.fetch_sub(1, AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(&mut stream, 503, r#"{"error":"admin busy","status":503}"#);
            continue;
        }
        let (snapshot, cluster, done) = (snapshot.clone(), cluster.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                let _ = serve(stream, &snapshot, &cluster, epoch_ms);
                done.fetch_sub(1, AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, AcqRel);
        }
    }
}

fn serve(
    mut stream: TcpStream,
    snapshot: &Snapshot,
    cluster: &Cluster,
    epoch_ms: u64,
) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        // Each read gets what is left of the one deadline, not a fresh timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(
                &mut stream,
                408,
                r#"{"error":"request header read timed out","status":408}"#,
            );
        }
        stream.set_read_timeout(Some(left))?;
        if len == buf.len() {
            return respond(
                &mut stream,
                431,
                r#"{"error":"request header fields too large","status":431}"#,
            );
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
    match (method, path) {
        (b"GET", b"/healthz") => respond(&mut stream, 200, r#"{"status":"ok"}"#),
        (b"GET", b"/readyz") => {
            let alive = crate::shard::SHARDS_ALIVE.load(Relaxed);
            let draining = crate::shard::DRAIN.load(Relaxed);
            if alive == snapshot.workers && !draining {
                respond(&mut stream, 200, r#"{"status":"ready"}"#)
            } else {
                let body = format!(
                    r#"{{"status":"not ready","shards_alive":{alive},"workers":{},"draining":{draining}}}"#,
                    snapshot.workers
                );
                respond(&mut stream, 503, &body)
            }
        }
        (b"GET", b"/upstreams") => {
            let body = upstreams_json(snapshot, cluster, epoch_ms);
            respond(&mut stream, 200, &body)
        }
        (b"GET", _) => respond(&mut stream, 404, r#"{"error":"not found","status":404}"#),
        _ => respond(
            &mut stream,
            405,
            r#"{"error":"method not allowed","status":405}"#,
        ),
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = crate::http::reason_phrase(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// `{"upstreams":[{"name":…,"balance":…,"targets":[{"addr":…,"shards":[{…}]}]}]}`
pub fn upstreams_json(snapshot: &Snapshot, cluster: &Cluster, epoch_ms: u64) -> String {
    let now = now_ms();
    let mut out = String::from(r#"{"upstreams":["#);
    for (ui, u) in snapshot.upstreams.iter().enumerate() {
        if ui > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"name":{},"balance":"{}","targets":["#,
            json_string(&u.name),
            u.balance.name()
        );
        for (ti, t) in u.targets.iter().enumerate() {
            if ti > 0 {
                out.push(',');
            }
            let slot = u.first_slot + ti;
            let _ = write!(out, r#"{{"addr":{},"shards":["#, json_string(&t.label));
            for (shard, views) in cluster.views.iter().enumerate() {
                let v = &views[slot];
                if shard > 0 {
                    out.push(',');
                }
                let changed = v.changed_ms.load(Relaxed);
                let _ = write!(
                    out,
                    r#"{{"shard":{shard},"state":"{}","consecutive_failures":{},"ejections":{},"in_flight":{},"ewma_ms":{:.3},"generation":{},"last_change":{},"reason":"{}"}}"#,
                    v.state_name(now),
                    v.consecutive_failures.load(Relaxed),
                    v.ejections.load(Relaxed),
                    v.in_flight.load(Relaxed),
                    v.ewma_us.load(Relaxed) as f64 / 1000.0,
                    v.generation.load(Relaxed),
                    if changed == 0 {
                        "null".to_string()
                    } else {
                        format!("\"{}\"", rfc3339(epoch_ms + changed))
                    },
                    v.reason()
                );
            }
            out.push_str("]}");
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Unix milliseconds as `2026-01-01T00:00:00.000Z` (civil-from-days, no time crate).
fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
