//! The admin listener: `GET /healthz`, `GET /readyz` (every shard serving), `GET /upstreams`
//! (every target's process-wide state, weight and counters, and its state as every shard
//! sees it), `GET /shards`, `GET /config` (effective, redacted), `POST /reload` and
//! `POST /upstreams/NAME/targets/ADDR/drain|disable|enable`. Runs off the shards, on its own thread with its own small
//! event loop (epoll): a task per connection (at most [`MAX_ADMIN_CONNECTIONS`]), one request
//! per connection, its head read within [`REQUEST_DEADLINE`], so a slow client holds only its
//! own task. It only reads the shards' atomic views and must not write shard state (a reload
//! goes through the control plane and the shards' inboxes; an operator state through the
//! gossip state words). With `token`, POST endpoints (and every
//! endpoint when it listens beyond loopback) need `Authorization: Bearer`, compared in
//! constant time; keep it on loopback or a private network all the same.

pub mod top;

use crate::config::Snapshot;
use crate::control::reload::Current;
use crate::control::{ControlPlane, Trigger};
use crate::gossip::{AdminState, now_ms};
use crate::upstream::Cluster;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Admin connections served at once (each costs a small task, not a thread); more are
/// closed at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 1024;
/// The whole request must arrive, and the answer be written, within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
const MAX_REQUEST_HEAD: usize = 4096;

/// Binds `addr` (an error is reported at start) and serves on a background thread with its
/// own small event loop: a slow client holds only its own task, never the listener.
pub fn start(addr: SocketAddr, plane: Arc<ControlPlane>) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
        - now_ms();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let mut runtime = match runtime {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        accept_loop(listener, plane, started_at).await
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("admin thread exited at start")))
}

async fn accept_loop(listener: TcpListener, plane: Arc<ControlPlane>, epoch_ms: u64) {
    let active = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of fds (EMFILE) and the like: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if active.get() >= MAX_ADMIN_CONNECTIONS {
            continue; // dropped: closed at once
        }
        active.set(active.get() + 1);
        let (plane, active) = (plane.clone(), active.clone());
        monoio::spawn(async move {
            let _ = serve(stream, peer, &plane, epoch_ms).await;
            active.set(active.get() - 1);
        });
    }
}

/// Reads one request head within [`REQUEST_DEADLINE`], answers it, closes.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    plane: &Arc<ControlPlane>,
    epoch_ms: u64,
) -> std::io::Result<()> {
    let Ok(head) = monoio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream)).await else {
        return Ok(());
    };
    let Some(buf) = head? else {
        let body = r#"{"error":"request header fields too large","status":431}"#;
        return write_within(respond(&mut stream, 431, "", body)).await;
    };
    let line = buf.split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
    if method != b"GET" && method != b"POST" {
        // Before any token check: a method no endpoint takes must not tell a right token
        // from a wrong one.
        let body = r#"{"error":"method not allowed","status":405}"#;
        return write_within(respond(&mut stream, 405, "allow: GET, POST\r\n", body)).await;
    }
    let current = plane.current();
    let accepted = authorized(&current.snapshot, method, &buf);
    if method == b"POST" || !accepted {
        audit_admin(plane, peer, method, path, accepted, &current.snapshot);
    }
    if !accepted {
        let body = r#"{"error":"admin token required","status":401}"#;
        return write_within(respond(&mut stream, 401, UNAUTHORIZED_HEADER, body)).await;
    }
    let snapshot = &current.snapshot;
    let cluster = &plane.cluster;
    let (status, body) = match (method, path) {
        (b"GET", b"/healthz") => (200, r#"{"status":"ok"}"#.to_string()),
        (b"GET", b"/readyz") => readyz(snapshot),
        (b"GET", b"/upstreams") => (200, upstreams_json(snapshot, cluster, epoch_ms)),
        (b"GET", b"/shards") => (200, shards_json(plane)),
        (b"GET", b"/config") => (200, config_json(plane, &current)),
        (b"GET", b"/metrics") => {
            let body = metrics_text(plane, snapshot);
            return write_within(respond_as(&mut stream, 200, PROMETHEUS, "", &body)).await;
        }
        (b"POST", b"/reload") => reload(plane, peer).await,
        (b"POST", p) if p.starts_with(b"/upstreams/") => target_action(snapshot, cluster, p),
        _ => (404, r#"{"error":"not found","status":404}"#.to_string()),
    };
    write_within(respond(&mut stream, status, "", &body)).await
}

/// A request head (through the blank line), or `None` when it is larger than
/// [`MAX_REQUEST_HEAD`]. A body, if any, is ignored: no endpoint takes one.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(MAX_REQUEST_HEAD);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() == MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let len = buf.len();
        let (read, slice) = stream.read(buf.slice_mut(len..MAX_REQUEST_HEAD)).await;
        buf = slice.into_inner();
        if read? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(buf))
}

async fn write_within(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    monoio::time::timeout(REQUEST_DEADLINE, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// `POST /reload`: runs on the reloader thread (it reads files and waits for the shards), so
/// this loop keeps answering `/healthz` meanwhile. 200 with the new generation, or 400 with
/// every problem (file, line, key, message) while the old config keeps serving.
async fn reload(plane: &Arc<ControlPlane>, peer: SocketAddr) -> (u16, String) {
    let answer = plane.request_reload(Trigger::Admin(peer));
    let result = loop {
        match answer.try_recv() {
            Ok(result) => break result,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                monoio::time::sleep(Duration::from_millis(2)).await
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return (
                    503,
                    r#"{"error":"the reloader is not running","status":503}"#.to_string(),
                );
            }
        }
    };
    match result {
        Ok(r) => (
            200,
            format!(
                r#"{{"status":"reloaded","generation":{},"shards_applied":{},"workers":{}}}"#,
                r.generation, r.shards_applied, r.workers
            ),
        ),
        Err(e) => (400, problems_json(&e)),
    }
}

/// `{"error":"config refused","status":400,"problems":[{"file":…,"line":…,"key":…,"message":…}]}`
fn problems_json(e: &crate::config::ConfigError) -> String {
    let problems: Vec<serde_json::Value> = e
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "file": e.file.display().to_string(),
                "line": p.line,
                "key": p.key,
                "message": p.message,
            })
        })
        .collect();
    serde_json::json!({
        "error": "config refused; the running config keeps serving",
        "status": 400,
        "problems": problems,
    })
    .to_string()
}

/// The effective config (the file with every default filled in; secrets redacted), its
/// generation and when it was loaded.
fn config_json(plane: &ControlPlane, current: &Current) -> String {
    serde_json::json!({
        "generation": current.generation,
        "loaded_at": rfc3339(current.loaded_unix_ms),
        "file": current.snapshot.file.display().to_string(),
        "reloads": {
            "ok": plane.reloads_ok.load(Relaxed),
            "failed": plane.reloads_failed.load(Relaxed),
        },
        "config": current.snapshot.source,
    })
    .to_string()
}

/// 200 while every shard serves and the gateway is not draining, else 503 with why.
fn readyz(snapshot: &Snapshot) -> (u16, String) {
    let alive = crate::shard::SHARDS_ALIVE.load(Relaxed);
    let draining = crate::shard::DRAIN.load(Relaxed);
    if alive == snapshot.workers && !draining {
        (200, r#"{"status":"ready"}"#.to_string())
    } else {
        let body = format!(
            r#"{{"status":"not ready","shards_alive":{alive},"workers":{},"draining":{draining}}}"#,
            snapshot.workers
        );
        (503, body)
    }
}

const UNAUTHORIZED_HEADER: &str = "www-authenticate: Bearer realm=\"ringgate-admin\"\r\n";

/// With `[admin] token`, POST endpoints need it as `Authorization: Bearer`, and so does every
/// endpoint when admin listens beyond loopback (`check` refuses that without a token).
fn authorized(snapshot: &Snapshot, method: &[u8], head: &[u8]) -> bool {
    let Some(token) = &snapshot.admin_token else {
        return true;
    };
    let beyond_loopback = snapshot.admin.is_some_and(|a| !a.ip().is_loopback());
    if method == b"GET" && !beyond_loopback {
        return true;
    }
    bearer_token(head).is_some_and(|presented| token.matches(presented))
}

/// The token of an `Authorization: Bearer <token>` field in a request head.
fn bearer_token(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"authorization") {
            return None;
        }
        let value = line[colon + 1..].trim_ascii();
        let (scheme, token) = value.split_at(value.len().min(7));
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| token.trim_ascii())
    })
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_as(stream, status, "application/json", extra_headers, body).await
}

/// An answer of `content_type` with `extra_headers` (lines ending in CRLF), then close.
async fn respond_as(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut message = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n",
        crate::http::reason_phrase(status),
        body.len()
    );
    message.push_str(body);
    stream.write_all(message.into_bytes()).await.0.map(|_| ())
}

/// Every POST and every refused token, with the peer and the verdict (never the token, nor
/// the query string, where a client may have put one).
fn audit_admin(
    plane: &ControlPlane,
    peer: SocketAddr,
    method: &[u8],
    path: &[u8],
    accepted: bool,
    snapshot: &Snapshot,
) {
    let verdict = if accepted { "accepted" } else { "refused" };
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    let path = String::from_utf8_lossy(&path[..path.len().min(256)]);
    let method = String::from_utf8_lossy(method);
    let reason = format!("{method} {path}: {verdict}");
    crate::observe::audit::Event {
        event: "admin",
        client_ip: Some(peer.ip()),
        reason: &reason,
        secret: snapshot.admin_token.as_ref().map(|t| t.reference()),
        ..Default::default()
    }
    .record_off_shard(&plane.cluster.audit_log);
}

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every shard's series merged, plus target health from shard 0's view (all shards converge
/// within a gossip tick) and process metrics.
fn metrics_text(plane: &ControlPlane, snapshot: &Snapshot) -> String {
    let now = now_ms();
    let views = &plane.cluster.views[0];
    let targets_up = snapshot
        .upstreams
        .iter()
        .flat_map(|u| {
            u.targets
                .iter()
                .map(|t| (u.name.clone(), t.label.clone(), views[t.slot].usable(now)))
        })
        .collect();
    crate::observe::metrics::render(
        &plane.cluster.shard_metrics,
        &crate::observe::metrics::Extra {
            version: env!("CARGO_PKG_VERSION"),
            reloads_ok: plane.reloads_ok.load(Relaxed),
            reloads_failed: plane.reloads_failed.load(Relaxed),
            targets_up,
            start_time_unix_s: plane.started_unix_ms as f64 / 1000.0,
            access_log_lost: plane.cluster.access_log.lost.load(Relaxed),
            audit_log_lost: plane.cluster.audit_log.lost.load(Relaxed),
            jwks: jwks_stats(plane, snapshot),
            cluster: snapshot.cluster.as_ref().map(|_| {
                (
                    plane.limit_sync.up.load(Relaxed),
                    plane.limit_sync.nodes.load(Relaxed),
                )
            }),
        },
    )
}

/// Fetch counters of every provider with a `jwks_url` in the running config.
fn jwks_stats(plane: &ControlPlane, snapshot: &Snapshot) -> Vec<(String, u64, u64, bool)> {
    let stats = plane.jwks_stats.lock().unwrap_or_else(|e| e.into_inner());
    snapshot
        .auth
        .providers
        .iter()
        .filter_map(|p| match &p.keys {
            crate::auth::KeySource::Url(u) => {
                let s = stats.get(&u.url).copied().unwrap_or_default();
                Some((p.name.clone(), s.ok, s.failed, s.has_keys))
            }
            crate::auth::KeySource::Static(_) => None,
        })
        .collect()
}

/// `{"shards":[{"shard":0,"driver":"io_uring","open_connections":…,"exchanges":…,…}]}`
fn shards_json(plane: &ControlPlane) -> String {
    let shards: Vec<String> = plane
        .cluster
        .shard_stats
        .iter()
        .enumerate()
        .map(|(i, s)| s.json(i, plane.mailboxes.depth(i)))
        .collect();
    format!(r#"{{"shards":[{}]}}"#, shards.join(","))
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
            let slot = t.slot;
            let state = cluster.gossip.read(slot);
            let totals =
                crate::observe::metrics::target_totals(&cluster.shard_metrics, &u.name, &t.label);
            let _ = write!(
                out,
                r#"{{"addr":{},"resolved":"{}","weight":{},"state":"{}","admin":"{}","reason":{},"requests":{},"responses_5xx":{},"failures":{},"retries":{},"shards":["#,
                json_string(&t.label),
                t.addr,
                t.weight,
                crate::control::targets::state_name(&state, now),
                state.admin.name(),
                json_string(&crate::gossip::describe_change(state.reason, state.fault)),
                totals.responses,
                totals.responses_5xx,
                totals.failures,
                totals.retried,
            );
            for (shard, views) in cluster.views.iter().enumerate() {
                let v = &views[slot];
                if shard > 0 {
                    out.push(',');
                }
                let changed = v.changed_ms.load(Relaxed);
                let _ = write!(
                    out,
                    r#"{{"shard":{shard},"state":"{}","consecutive_failures":{},"ejections":{},"in_flight":{},"ewma_ms":{:.3},"generation":{},"last_change":{},"reason":{}}}"#,
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
                    json_string(&v.reason())
                );
            }
            out.push_str("]}");
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

/// `POST /upstreams/NAME/targets/ADDR/drain|disable|enable`: sets the target's operator
/// state for every shard (through the gossip state word; each shard applies it on its next
/// tick). ADDR is the target as written in the config; either part may be percent-encoded.
fn target_action(snapshot: &Snapshot, cluster: &Cluster, path: &[u8]) -> (u16, String) {
    let not_found = |what: String| {
        (
            404,
            format!(r#"{{"error":{},"status":404}}"#, json_string(&what)),
        )
    };
    let parts: Vec<String> = path
        .strip_prefix(b"/upstreams/")
        .unwrap_or_default()
        .split(|&b| b == b'/')
        .map(percent_decode)
        .collect();
    let [name, targets, addr, action] = parts.as_slice() else {
        return not_found("expected /upstreams/NAME/targets/ADDR/drain|disable|enable".into());
    };
    let admin = match action.as_str() {
        "drain" => AdminState::Draining,
        "disable" => AdminState::Disabled,
        "enable" => AdminState::Enabled,
        _ if targets == "targets" => {
            return not_found(format!(
                "unknown action {action:?}: drain, disable or enable"
            ));
        }
        _ => return not_found("expected /upstreams/NAME/targets/ADDR/drain|disable|enable".into()),
    };
    let Some(upstream) = snapshot.upstreams.iter().find(|u| &u.name == name) else {
        return not_found(format!("no upstream named {name:?}"));
    };
    let Some(target) = upstream.targets.iter().find(|t| &t.label == addr) else {
        return not_found(format!("upstream {name:?} has no target {addr:?}"));
    };
    let changed = cluster.set_admin(target.slot, admin);
    if changed {
        let state = cluster.gossip.read(target.slot);
        let now = now_ms();
        crate::observe::info(&crate::control::targets::change_line(
            name,
            addr,
            &state,
            crate::control::targets::state_name(&state, now),
            now,
        ));
    }
    (
        200,
        format!(
            r#"{{"upstream":{},"target":{},"admin":"{}","changed":{changed}}}"#,
            json_string(name),
            json_string(addr),
            admin.name()
        ),
    )
}

/// `%XX` escapes decoded (invalid ones kept as written); the result is lossy UTF-8.
fn percent_decode(part: &[u8]) -> String {
    let mut out = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if part[i] == b'%'
            && let (Some(Some(h)), Some(Some(l))) = (
                part.get(i + 1).map(|&b| hex(b)),
                part.get(i + 2).map(|&b| hex(b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(part[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// `2026-12-01T04:52:00.123Z`
fn rfc3339(unix_ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    crate::observe::access_log::push_rfc3339(&mut out, unix_ms);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_in_any_case() {
        let head = b"POST /reload HTTP/1.1\r\nHost: a\r\nAUTHORIZATION:  bearer  abc123 \r\n\r\n";
        assert_eq!(bearer_token(head), Some(&b"abc123"[..]));
        assert_eq!(
            bearer_token(b"GET / HTTP/1.1\r\nAuthorization: Basic eA==\r\n\r\n"),
            None
        );
        assert_eq!(bearer_token(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(
            bearer_token(b"GET /?Authorization: Bearer x HTTP/1.1\r\n\r\n"),
            None
        );
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
