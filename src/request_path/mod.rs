//! The request path, stage by stage (DESIGN.md §3). This file is the order; each stage lives
//! in its own file:
//!
//! 1. [`conn`]: read and strictly parse the request head (limits, smuggling rules), then pin
//!    the config this exchange runs on ([`Shard::config`]) and normalise the path.
//! 2. [`admit`]: the policy stages, synchronous, over a [`admit::RequestView`] (no socket):
//!    HTTPS redirect, route (host, path, method); each refusal is a [`Reject`].
//! 3. a direct response ([`respond`]), or [`proxy`]: transform the head ([`transform`]),
//!    pick a target and a pooled connection and retry per the route
//!    ([`crate::upstream::attempt`]), send the head and stream the body, read the response
//!    head ([`origin`]), transform and stream the response back; an upgrade becomes a
//!    [`tunnel`].
//! 4. one exit: [`record_exchange`] hands the exchange's record to `observe`, once, whatever
//!    happened; then keep-alive or close.
//!
//! Every refusal is one [`Reject`] (status, JSON error, `kind`, header lines) written by one
//! writer ([`respond::reject`]).

mod admit;
mod conn;
mod origin;
mod proxy;
mod reject;
mod respond;
mod transform;
mod tunnel;

pub use reject::Reject;

use crate::auth::CacheCounters;
use crate::config::RouteAction;
use crate::http::io::{BufConn, Counted};
use crate::observe::ExchangeRecord;
use crate::observe::access_log::Line;
use crate::shard::{Active, ConnGuard, Shard};
use crate::tls::{ConnRead, ConnWrite};
use admit::*;
use conn::*;
use monoio::io::Splitable;
use monoio::net::TcpStream;
use proxy::*;
use respond::*;
use std::net::SocketAddr;
use std::rc::Rc;
use tunnel::*;

/// Largest output buffer a connection keeps between exchanges.
const MAX_KEPT_OUT: usize = 256 * 1024;

/// Serves one client connection. `accepted` is the config the connection was accepted
/// under, and its listener's index there: the listener's settings (limits, TLS, forwarding)
/// hold for the connection's life; each exchange runs on the config current when its
/// request head arrives.
pub async fn serve_connection(
    shard: Rc<Shard>,
    mut guard: ConnGuard,
    accepted: (Rc<Active>, usize),
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let (config, listener) = accepted;
    let spec = &config.listeners[listener];
    let limits = spec.limits;
    let (stream, peer, early) = if spec.proxy_protocol {
        match read_proxy_preamble(stream, peer, spec, &mut guard).await {
            Some(preamble) => preamble,
            None => return,
        }
    } else {
        (stream, peer, Vec::new())
    };
    let (reader, writer, client_subject) = match &spec.tls {
        None => {
            let (r, w) = stream.into_split();
            (ConnRead::Plain(r), ConnWrite::Plain(w), None)
        }
        Some(tls) => match accept_tls(tls, stream, &early).await {
            Some(halves) => {
                guard.listener().metrics.tls_handshakes.add(1);
                halves
            }
            None => return,
        },
    };
    let tls = reader.is_tls();
    let state = ConnState::take();
    let mut client = Client {
        reader: BufConn::with_buffered(
            reader,
            shard.bufs.take(limits.max_header_bytes.max(16 * 1024)),
            if tls { &[] } else { &early },
        ),
        head: state.head,
        down: Downstream {
            writer: Counted::new(writer),
            resp: state.resp,
            out: shard.bufs.take(OUT_BUF),
            scratch: state.down_scratch,
            extra: Vec::new(),
            record: ExchangeRecord::new(guard.listener().name.borrow().clone(), peer.ip(), tls),
            listener: guard.listener_rc(),
            pinned: None,
            head_request: false,
        },
        up_scratch: state.up_scratch,
        peer_ip: PeerIp::new(peer.ip()),
        peer: peer.ip(),
        forwarded_client: None,
        limits,
        redirect_https: spec.redirect_https,
        tls,
        client_subject,
        linger: false,
        replace_x_forwarded_for: spec.replace_x_forwarded_for,
        held: Default::default(),
    };
    // Idle connections must not keep an old config (and its pools) alive.
    drop(config);
    loop {
        let next = exchange(&shard, &guard, &mut client).await;
        if let Next::Tunnel(upstream, limits) = next {
            tunnel(
                &mut client.reader,
                &mut client.down.writer,
                upstream,
                limits,
            )
            .await;
            record_exchange(&shard, &mut client);
            return;
        }
        record_exchange(&shard, &mut client);
        if let Next::Close = next {
            break;
        }
    }
    if client.linger {
        linger(&mut client).await;
    }
    let (_, buf) = client.reader.into_parts();
    shard.bufs.give(buf);
    shard.bufs.give(client.down.out);
    ConnState {
        head: client.head,
        resp: client.down.resp,
        up_scratch: client.up_scratch,
        down_scratch: client.down.scratch,
    }
    .give_back();
}

/// The one exit: every exchange that read a request head is recorded once, whatever
/// happened to it (answered, refused, failed upstream, client gone, tunnel ended).
fn record_exchange(shard: &Shard, c: &mut Client) {
    c.held.release();
    let record = &mut c.down.record;
    if record.started {
        record.finish((c.reader.consumed(), c.down.writer.written()));
        shard.stats().record(record);
        let route = record.route_metrics.take();
        route
            .as_deref()
            .unwrap_or(shard.unrouted_metrics())
            .count(record.status, record.duration());
        let config = c.down.pinned.take().unwrap_or_else(|| shard.config());
        if let Some(log) = &config.access_log {
            shard.log(log.format, &access_line(&config, record));
        }
        record.idle();
    }
}

/// The access-log line of a finished record; names come from the config the exchange ran on.
fn access_line<'a>(cfg: &'a Active, record: &'a ExchangeRecord) -> Line<'a> {
    let (method, host, path) = record.request_parts();
    let upstream = record.upstream.map(|u| &cfg.snapshot.upstreams[u]);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Line {
        unix_ms,
        request_id: record.request_id(),
        client_ip: record.client_ip,
        method,
        host,
        path,
        status: record.status,
        bytes_in: record.bytes_in,
        bytes_out: record.bytes_out,
        duration: record.duration(),
        route: record.route.map(|r| cfg.snapshot.routes[r].name.as_str()),
        upstream: upstream.map(|u| u.name.as_str()),
        target: upstream
            .zip(record.target)
            .map(|(u, t)| u.targets[t].label.as_str()),
        consumer: record.identity.as_deref().map(|i| &*i.consumer),
        tls: record.tls,
        cache: record.cache,
    }
}

/// What a refusal by the policy stages leaves behind: its route on the record, and for an
/// authentication or authorization denial a metric and an audit line (never the credential).
fn note_refusal(shard: &Shard, cfg: &Active, c: &mut Client, ex: &Exchange, refused: &Refused) {
    let Some(route) = refused.route else { return };
    c.down.record.route = Some(route);
    c.down.record.route_metrics = Some(cfg.route_metrics[route].clone());
    if refused.reject.kind == reject::IP_DENIED.kind {
        cfg.route_metrics[route].ip_denied.add(1);
    }
    if let Some(denial) = refused.denial {
        cfg.route_metrics[route].auth_denied[denial.slot()].add(1);
        if cfg.audit_log.is_some() {
            shard.audit(&crate::observe::audit::Event {
                event: "auth_denied",
                request_id: Some(ex.request_id()),
                client_ip: Some(c.down.record.client_ip),
                route: Some(&cfg.routes[route].name),
                consumer: None,
                reason: denial.reason(),
                secret: None,
            });
        }
    }
}

/// One request and its response.
async fn exchange(shard: &Shard, guard: &ConnGuard, c: &mut Client) -> Next {
    // Stage 1: read and strictly parse the request head.
    let at_start = (c.reader.consumed(), c.down.writer.written());
    c.down.head_request = false;
    match read_request_head(shard, guard, c).await {
        Ok(()) => c.down.record.begin(at_start),
        Err(HeadStop::Quiet) => return Next::Close,
        Err(HeadStop::Reject(refusal)) => {
            c.down.record.begin(at_start);
            let id = shard.ids.next_id();
            c.down.record.set_request_id(&id);
            return reject(c, &refusal, &id, true).await;
        }
    }
    // The config this exchange runs on, whatever reloads happen before it ends.
    let pinned = shard.config();
    let cfg = &*pinned;
    let mut ex = exchange_facts(shard, c);
    c.down.head_request = ex.head_method;
    if guard.listener().is_retired() {
        // A reload removed this connection's listener: finish this request, then close.
        ex.keep_alive = false;
    }
    guard.set_request_id(ex.request_id());
    c.down.record.set_request_id(ex.request_id());
    c.down.extra.clear();
    // Captured as sent (before normalization), so a path refused below is still logged.
    if cfg.access_log.is_some() {
        let (buf, head) = (c.reader.buffered(), &c.head);
        let host = head.target_authority.clone().or_else(|| head.host.clone());
        c.down.record.capture_request(
            head.method(buf),
            host.map_or(&b""[..], |r| &buf[r]),
            &buf[head.path.clone()],
        );
    }
    c.down.pinned = Some(pinned.clone());
    if let Err(e) = normalize_request_path(cfg, c) {
        return reject(c, &e, ex.request_id(), true).await;
    }

    // Stage 2: the policy stages, over the parsed head (no socket): HTTPS redirect, route,
    // client address rules, authentication, authorization.
    let client_ip = c.settle_client_ip(&cfg.trusted_proxies);
    let view = RequestView {
        client_ip,
        buf: c.reader.buffered(),
        head: &c.head,
        redirect_https: c.redirect_https,
        client_subject: c.client_subject.as_deref(),
    };
    let metrics = shard.metrics();
    let policy = Policy {
        cfg: &cfg.snapshot,
        auth: &cfg.auth,
        url_keys: shard,
        counters: CacheCounters {
            hits: &metrics.jwt_cache_hits,
            misses: &metrics.jwt_cache_misses,
        },
        now: None,
        limits: &cfg.limits,
    };
    let Admitted {
        route: route_index,
        prefix_len,
        identity,
        limits,
    } = match admit(&policy, &view, &mut c.held) {
        Ok(admitted) => admitted,
        Err(refused) => {
            note_refusal(shard, cfg, c, &ex, &refused);
            if refused.reject.closes {
                return reject(c, &refused.reject, ex.request_id(), true).await;
            }
            return reject_with_body_pending(c, &ex, refused.reject).await;
        }
    };
    c.down.record.identity = identity;
    if !limits.is_empty() {
        crate::limit::push_fields(&mut c.down.extra, &cfg.limits, &limits);
    }
    let route = &cfg.routes[route_index];
    c.down.record.route = Some(route_index);
    c.down.record.route_metrics = Some(cfg.route_metrics[route_index].clone());
    ex.upgrade = c
        .head
        .upgrade_offer(c.reader.buffered())
        .is_some_and(|offer| offers_only_allowed(route, offer));

    match &route.action {
        RouteAction::Direct {
            status,
            content_type,
            body,
        } => direct_response(c, &ex, route, *status, content_type, body).await,
        RouteAction::Proxy { upstream } => {
            let next = proxy(shard, cfg, c, &ex, route, *upstream, prefix_len).await;
            // A whole body (a `json = true` route) went through `out`: do not keep its size
            // for the connection's life.
            if c.down.out.capacity() > MAX_KEPT_OUT {
                c.down.out = Vec::with_capacity(OUT_BUF);
            }
            next
        }
    }
}
