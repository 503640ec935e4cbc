//! The request path, stage by stage (DESIGN.md §3). Reading this file top to bottom shows
//! everything that happens to a request:
//!
//! read + strictly parse the head -> route (host, path, method) -> direct response, or:
//! transform (forwarding headers, request id, strip prefix, header edits) -> pick a target ->
//! pooled upstream connection -> send head and stream the body -> read the response head
//! (retrying once on a fresh connection if a reused one was dead) -> transform the response ->
//! stream the body back -> keep-alive or close.
//!
//! Each stage that can fail maps to one status with the JSON error body of DESIGN.md §6.

mod reject;

pub use reject::Reject;

use crate::config::RetryOn;
use crate::config::{CompiledTransform, EffectiveLimits, RouteAction, RouteSpec};
use crate::config::{HashKey, UpstreamSpec, stable_hash};
use crate::http::body::{BodyError, BodyLimits, stream_body};
use crate::http::head::HeadScan;
use crate::http::io::{BufConn, ReadError, write_all_buf, write_all_within};
use crate::http::{
    Framing, HeadLimits, Known, RequestHead, ResponseHead, Version, push_decimal,
    push_error_response, push_header,
};
use crate::observe::ExchangeRecord;
use crate::route::Match;
use crate::shard::{Active, ConnGuard, Shard};
use crate::tls::{ConnRead, ConnWrite};
use crate::upstream::{Affinity, ConnectError, InFlight, Outcome, Tried, UpstreamConn};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::time::Instant;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Bodies at most this large that are already buffered travel in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
/// Read buffer lent to a connection while it streams a request body too large to inline.
const BODY_BUF: usize = 64 * 1024;
/// Initial capacity of a connection's output buffer (heads; it grows for inline bodies).
const OUT_BUF: usize = 4096;

type ClientReader = BufConn<ConnRead>;
type ClientWriter = ConnWrite;
type UpstreamReader = BufConn<ConnRead>;

/// Per-connection state, allocated once per connection and reused by every request on it.
/// The socket is split once so a request body can stream up while the response streams down.
struct Client {
    reader: ClientReader,
    head: RequestHead,
    down: Downstream,
    /// Re-chunking buffer for request bodies.
    up_scratch: Vec<u8>,
    peer_ip: PeerIp,
    limits: EffectiveLimits,
    /// A plain listener told to send everything to HTTPS on this port.
    redirect_https: Option<u16>,
    tls: bool,
    /// The verified client certificate's subject (mTLS listeners), for later stages.
    client_subject: Option<Box<str>>,
    /// Close by lingering: an error response went out while the client may still be sending.
    linger: bool,
    /// The listener says `x_forwarded_for = "replace"`.
    replace_x_forwarded_for: bool,
}

/// Everything that writes to the client.
struct Downstream {
    writer: ClientWriter,
    resp: ResponseHead,
    out: Vec<u8>,
    /// Re-chunking buffer for response bodies.
    scratch: Vec<u8>,
    /// Per-response header lines the gateway adds (a sticky cookie).
    extra: Vec<u8>,
    /// What this exchange did, for the one exit ([`crate::observe::ShardStats::record`]).
    record: ExchangeRecord,
}

/// Facts about the current request that outlive its head bytes in the read buffer.
struct Exchange {
    request_id: [u8; 128],
    request_id_len: usize,
    version: Version,
    keep_alive: bool,
    head_method: bool,
    framing: Framing,
    tls: bool,
    /// Safe to send twice (RFC 9110 §9.2.2), for retries.
    idempotent: bool,
    /// The request offers an upgrade the route allows (else `Upgrade` is not forwarded and a
    /// `101` from the origin is refused).
    upgrade: bool,
    /// Longest wait for one write to the client.
    send_timeout: Duration,
}

impl Exchange {
    fn request_id(&self) -> &[u8] {
        &self.request_id[..self.request_id_len]
    }
}

/// What happens to the client connection after an exchange.
enum Next {
    KeepAlive,
    Close,
    Tunnel(UpstreamConn, TunnelLimits),
}

/// How long an upgraded connection may live: quiet, and in all.
#[derive(Clone, Copy)]
struct TunnelLimits {
    idle: Duration,
    total: Duration,
    send: Duration,
}

/// Serves one client connection. `accepted` is the config the connection was accepted
/// under, and its listener's index there: the listener's settings (limits, TLS, forwarding)
/// hold for the connection's life; each exchange runs on the config current when its
/// request head arrives.
pub async fn serve_connection(
    shard: Rc<Shard>,
    guard: ConnGuard,
    accepted: (Rc<Active>, usize),
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let (config, listener) = accepted;
    let spec = &config.listeners[listener];
    let limits = spec.limits;
    let (reader, writer, client_subject) = match &spec.tls {
        None => {
            let (r, w) = stream.into_split();
            (ConnRead::Plain(r), ConnWrite::Plain(w), None)
        }
        Some(tls) => match accept_tls(tls, stream).await {
            Some(halves) => halves,
            None => return,
        },
    };
    let tls = reader.is_tls();
    let state = ConnState::take();
    let mut client = Client {
        reader: BufConn::new(
            reader,
            shard.bufs.take(limits.max_header_bytes.max(16 * 1024)),
        ),
        head: state.head,
        down: Downstream {
            writer,
            resp: state.resp,
            out: shard.bufs.take(OUT_BUF),
            scratch: state.down_scratch,
            extra: Vec::new(),
            record: ExchangeRecord::default(),
        },
        up_scratch: state.up_scratch,
        peer_ip: PeerIp::new(peer.ip()),
        limits,
        redirect_https: spec.redirect_https,
        tls,
        client_subject,
        linger: false,
        replace_x_forwarded_for: spec.replace_x_forwarded_for,
    };
    // Idle connections must not keep an old config (and its pools) alive.
    drop(config);
    loop {
        let next = exchange(&shard, &guard, &mut client).await;
        // The one exit: every exchange that read a request is recorded once, whatever
        // happened to it.
        shard.stats().record(&client.down.record);
        match next {
            Next::KeepAlive => {}
            Next::Close => break,
            Next::Tunnel(upstream, limits) => {
                tunnel(client.reader, client.down.writer, upstream, limits).await;
                return;
            }
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

/// The TLS handshake, on this shard, bounded by the listener's `handshake_timeout`. A failed
/// or stalled handshake just closes the connection (rustls has sent its alert).
async fn accept_tls(
    tls: &crate::tls::ServerTls,
    stream: TcpStream,
) -> Option<(ConnRead, ConnWrite, Option<Box<str>>)> {
    let session = rustls::ServerConnection::new(tls.config.clone()).ok()?;
    let handshake = crate::tls::handshake(stream, session, true);
    let (read, write) = monoio::time::timeout(tls.handshake_timeout, handshake)
        .await
        .ok()?
        .ok()?;
    let subject = if tls.mtls {
        read.peer_subject().map(String::into_boxed_str)
    } else {
        None
    };
    Some((
        ConnRead::Tls(Box::new(read)),
        ConnWrite::Tls(Box::new(write)),
        subject,
    ))
}

/// The parts of a connection's state that outlive it: parser indexes and re-chunking
/// buffers are reused by the shard's next connections instead of being allocated anew.
struct ConnState {
    head: RequestHead,
    resp: ResponseHead,
    up_scratch: Vec<u8>,
    down_scratch: Vec<u8>,
}

/// At most this many spare connection states are kept per shard, and at most this many bytes
/// (each state is shrunk first, so the count bound is the one that usually holds).
const SPARE_CONN_STATES: usize = 4096;
const SPARE_CONN_BYTES: usize = 16 * 1024 * 1024;

thread_local! {
    // One free list per shard thread: shards never share it.
    static SPARE_STATES: std::cell::RefCell<(Vec<ConnState>, usize)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

impl ConnState {
    /// Heap bytes this state holds.
    fn footprint(&self) -> usize {
        self.head.footprint()
            + self.resp.footprint()
            + self.up_scratch.capacity()
            + self.down_scratch.capacity()
    }

    fn take() -> ConnState {
        SPARE_STATES
            .with(|spare| {
                let (states, bytes) = &mut *spare.borrow_mut();
                let state = states.pop()?;
                *bytes -= state.footprint();
                Some(state)
            })
            .unwrap_or_else(|| ConnState {
                head: RequestHead::default(),
                resp: ResponseHead::default(),
                up_scratch: Vec::new(),
                down_scratch: Vec::new(),
            })
    }

    fn give_back(mut self) {
        self.head.shrink();
        self.resp.shrink();
        shrink_scratch(&mut self.up_scratch);
        shrink_scratch(&mut self.down_scratch);
        SPARE_STATES.with(|spare| {
            let (states, bytes) = &mut *spare.borrow_mut();
            let size = self.footprint();
            if states.len() < SPARE_CONN_STATES && *bytes + size <= SPARE_CONN_BYTES {
                *bytes += size;
                states.push(self);
            }
        });
    }
}

/// Re-chunking buffers above this are released between requests (one large chunked body
/// must not pin its buffer for the connection's life, or in the spare pool after it).
const KEEP_SCRATCH: usize = 16 * 1024;

fn shrink_scratch(scratch: &mut Vec<u8>) {
    if scratch.capacity() > KEEP_SCRATCH {
        *scratch = Vec::new();
    }
}

/// The client's address as text, formatted once per connection without allocating.
struct PeerIp {
    text: [u8; 48],
    len: usize,
}

impl PeerIp {
    fn new(ip: std::net::IpAddr) -> PeerIp {
        use std::io::Write;
        let mut text = [0u8; 48];
        let mut rest = &mut text[..];
        let _ = write!(rest, "{}", ip.to_canonical());
        let len = 48 - rest.len();
        PeerIp { text, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// One request and its response.
async fn exchange(shard: &Shard, guard: &ConnGuard, c: &mut Client) -> Next {
    c.down.record = ExchangeRecord::default();
    // Stage 1: read and strictly parse the request head.
    match read_request_head(shard, guard, c).await {
        Ok(()) => c.down.record.begin(),
        Err(HeadStop::Quiet) => return Next::Close,
        Err(HeadStop::Reject(refusal)) => {
            c.down.record.begin();
            let id = shard.ids.next_id();
            return reject(c, &refusal, &id, true).await;
        }
    }
    // The config this exchange runs on, whatever reloads happen before it ends.
    let pinned = shard.config();
    let cfg = &*pinned;
    let mut ex = exchange_facts(shard, c);
    if guard.listener().is_retired() {
        // A reload removed this connection's listener: finish this request, then close.
        ex.keep_alive = false;
    }
    guard.set_request_id(ex.request_id());
    c.down.extra.clear();
    if let Err(e) = normalize_request_path(cfg, c) {
        return reject(c, &e, ex.request_id(), true).await;
    }

    // Stage 2: a plain listener told to redirect sends everything to HTTPS.
    if let Some(port) = c.redirect_https {
        return redirect_to_https(c, &ex, port).await;
    }

    // Stage 3: route.
    let (route_index, prefix_len) = match route(cfg, c) {
        Ok(found) => found,
        Err(RouteMiss::NotFound) => {
            return reject_with_body_pending(c, &ex, reject::NO_ROUTE).await;
        }
        Err(RouteMiss::MethodNotAllowed(allow)) => {
            return reject_with_body_pending(c, &ex, reject::method_not_allowed(&allow)).await;
        }
        Err(RouteMiss::BadPath) => {
            return reject(c, &reject::BAD_PATH, ex.request_id(), true).await;
        }
    };
    let route = &cfg.routes[route_index];
    c.down.record.route = Some(route_index);
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
            proxy(shard, cfg, c, &ex, route, *upstream, prefix_len).await
        }
    }
}

enum HeadStop {
    /// The client went away or idled out between requests: close without a response.
    Quiet,
    Reject(Reject),
}

/// Waits up to `idle_timeout` for a request to start, then up to `header_read_timeout` for
/// its head to complete.
async fn read_request_head(
    shard: &Shard,
    guard: &ConnGuard,
    c: &mut Client,
) -> Result<(), HeadStop> {
    let limits = HeadLimits {
        max_header_bytes: c.limits.max_header_bytes,
        max_headers: c.limits.max_headers,
        max_uri_bytes: c.limits.max_uri_bytes,
    };
    c.reader.compact();
    if c.reader.buffered().is_empty() {
        wait_for_next_request(shard, guard, c).await?;
        let first = if c.tls {
            // Readable only means some ciphertext arrived: a partial record would hold this
            // read (and the connection, no longer parked for the reaper) forever.
            c.reader
                .fill_until(Instant::now() + c.limits.header_read_timeout)
                .await
        } else {
            // Readable: this read completes at once (with bytes, or EOF after a reap or drain).
            c.reader.fill().await
        };
        if first.is_err() {
            return Err(HeadStop::Quiet);
        }
    }
    let deadline = Instant::now() + c.limits.header_read_timeout;
    // The first look parses at once (a head usually arrives whole); after a partial one,
    // the full parse waits until a scan of only the new bytes finds the blank line, so a
    // head dribbled byte by byte costs one pass, not one per byte.
    let mut scan: Option<HeadScan> = None;
    loop {
        if !c.reader.buffered().is_empty() {
            let buf = c.reader.buffered();
            let parsed = match scan.as_mut().map(|s| s.check(buf, &limits)) {
                None | Some(Ok(true)) => c.head.parse(buf, &limits),
                Some(other) => other,
            };
            if scan.is_none() {
                scan = Some(HeadScan::default());
            }
            match parsed {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(HeadStop::Reject(e.into())),
            }
        }
        let started = !c.reader.buffered().is_empty();
        match c.reader.fill_until(deadline).await {
            Ok(_) => {}
            Err(ReadError::TimedOut) => {
                return Err(HeadStop::Reject(reject::HEADER_TIMEOUT));
            }
            Err(ReadError::BufferFull) => {
                return Err(HeadStop::Reject(reject::HEADERS_TOO_LARGE));
            }
            Err(ReadError::Closed) if started => {
                return Err(HeadStop::Reject(reject::INCOMPLETE_HEAD));
            }
            Err(_) => return Err(HeadStop::Quiet),
        }
    }
}

/// Normalises the parsed path in place before anything looks at it (routing, forwarding).
fn normalize_request_path(cfg: &Active, c: &mut Client) -> Result<(), Reject> {
    let keep = cfg.keep_escaped_slashes;
    c.head
        .normalize_path(c.reader.buffered_mut(), keep)
        .map_err(Reject::from)
}

/// An idle keep-alive connection waits for readability without holding its buffers (they go
/// back to the shard's pool), so thousands of idle clients cost little memory. Drain wakes it
/// by shutting down its read side.
async fn wait_for_next_request(
    shard: &Shard,
    guard: &ConnGuard,
    c: &mut Client,
) -> Result<(), HeadStop> {
    if shard.draining.get() {
        return Err(HeadStop::Quiet);
    }
    // The configured size, not the current one: a buffer that grew (or was swapped in) for
    // one large message must not become this connection's read buffer for good.
    let read_capacity = c.limits.max_header_bytes.max(16 * 1024);
    c.head.shrink();
    c.down.resp.shrink();
    shrink_scratch(&mut c.up_scratch);
    shrink_scratch(&mut c.down.scratch);
    shard.bufs.give(c.reader.take_buffer());
    shard.bufs.give(std::mem::take(&mut c.down.out));
    c.reader.io.park_buffers(&shard.bufs);
    c.down.writer.park_buffers(&shard.bufs);
    guard.park(Instant::now() + c.limits.idle_timeout);
    let ready = c.reader.io.readable().await;
    guard.unpark();
    // Taken back in the reverse order they were given: the pool is a stack, so each take
    // finds the buffer of the size it needs (not a smaller one to free and replace).
    c.down.writer.unpark_buffers(&shard.bufs);
    c.reader.io.unpark_buffers(&shard.bufs);
    c.down.out = shard.bufs.take(OUT_BUF);
    c.reader.restore_buffer(shard.bufs.take(read_capacity));
    ready.map_err(|_| HeadStop::Quiet)
}

fn exchange_facts(shard: &Shard, c: &Client) -> Exchange {
    let buf = c.reader.buffered();
    let mut ex = Exchange {
        request_id: [0; 128],
        request_id_len: 0,
        version: c.head.version,
        keep_alive: c.head.keep_alive && !shard.draining.get(),
        head_method: c.head.is_head_method(buf),
        framing: c.head.framing,
        tls: c.tls,
        idempotent: is_idempotent(c.head.method(buf)),
        upgrade: false,
        send_timeout: c.limits.send_timeout,
    };
    match &c.head.request_id {
        Some(r) => {
            ex.request_id_len = r.len();
            ex.request_id[..r.len()].copy_from_slice(&buf[r.clone()]);
        }
        None => {
            ex.request_id_len = 32;
            ex.request_id[..32].copy_from_slice(&shard.ids.next_id());
        }
    }
    ex
}

enum RouteMiss {
    NotFound,
    MethodNotAllowed(String),
    BadPath,
}

/// Whether every protocol an `Upgrade` field offers is on the route's allow-list.
fn offers_only_allowed(route: &RouteSpec, offer: &[u8]) -> bool {
    offer
        .split(|&b| b == b',')
        .all(|p| route.allows_upgrade(p.trim_ascii()))
}

/// Host (from an absolute-form target, else `Host`, port dropped, lower-cased), path and
/// method to a route.
fn route(cfg: &Active, c: &Client) -> Result<(usize, usize), RouteMiss> {
    let buf = c.reader.buffered();
    let head = &c.head;
    let mut host_buf = [0u8; 256];
    let host = request_host(c, &mut host_buf);
    let path = std::str::from_utf8(&buf[head.path.clone()]).map_err(|_| RouteMiss::BadPath)?;
    let method = std::str::from_utf8(head.method(buf)).map_err(|_| RouteMiss::BadPath)?;
    match cfg.router.lookup(host, path, method) {
        Match::Found { route, prefix_len } => Ok((route, prefix_len)),
        Match::MethodNotAllowed { allow } => Err(RouteMiss::MethodNotAllowed(allow)),
        Match::NotFound => Err(RouteMiss::NotFound),
    }
}

/// The request's host: from an absolute-form target, else `Host`; port dropped, lower-cased.
fn request_host<'a>(c: &Client, out: &'a mut [u8; 256]) -> &'a str {
    let buf = c.reader.buffered();
    let raw = c
        .head
        .target_authority
        .clone()
        .or_else(|| c.head.host.clone())
        .map_or(&b""[..], |r| &buf[r]);
    lower_host_without_port(raw, out)
}

fn lower_host_without_port<'a>(raw: &[u8], out: &'a mut [u8; 256]) -> &'a str {
    let (without_port, _) = split_host_port(raw);
    if without_port.len() > out.len() {
        return "";
    }
    let out = &mut out[..without_port.len()];
    for (o, &b) in out.iter_mut().zip(without_port) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).unwrap_or("")
}

/// A host as sent (`name`, `name:port`, `[v6]:port`) split into the name, without one
/// trailing dot (`example.com.` is `example.com`), and the `:port` part (maybe empty).
fn split_host_port(raw: &[u8]) -> (&[u8], &[u8]) {
    let colon = if raw.first() == Some(&b'[') {
        // [v6]:port keeps its brackets
        raw.iter()
            .position(|&b| b == b']')
            .map_or(raw.len(), |end| end + 1)
    } else {
        raw.iter().rposition(|&b| b == b':').unwrap_or(raw.len())
    };
    let (name, port) = raw.split_at(colon);
    (name.strip_suffix(b".").unwrap_or(name), port)
}

/// Sends a gateway answer: the one writer of every [`Reject`]. `close` ends the connection
/// afterwards.
async fn reject(c: &mut Client, refusal: &Reject, request_id: &[u8], close: bool) -> Next {
    let down = &mut c.down;
    down.record.status = refusal.status;
    down.record.reject_kind = Some(refusal.kind);
    down.out.clear();
    push_error_response(
        &mut down.out,
        refusal.status,
        refusal.message,
        request_id,
        close,
        &refusal.headers,
    );
    let out = std::mem::take(&mut down.out);
    let (result, out) = write_all_within(&mut down.writer, out, c.limits.send_timeout).await;
    down.out = out;
    c.linger = close && result.is_ok();
    if close || result.is_err() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Lingering close (as nginx does) after an error response on a connection whose client may
/// still be sending: closing with unread bytes would make the kernel send a reset, which can
/// destroy our response before the client reads it. So: send FIN, then read and discard for
/// a bounded time and amount.
async fn linger(c: &mut Client) {
    const LINGER_TIME: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 1024 * 1024;
    let deadline = Instant::now() + LINGER_TIME;
    // Also bounded: a TLS close_notify is a write to a client that may not be reading.
    if monoio::time::timeout_at(deadline, c.down.writer.shutdown())
        .await
        .is_err()
    {
        return;
    }
    if c.reader.lost_bytes() || c.reader.capacity() == 0 {
        // A cancelled operation kept the read buffer; any buffer will do for discarding.
        c.reader.restore_buffer(Vec::with_capacity(16 * 1024));
    }
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        let pending = c.reader.buffered().len();
        c.reader.consume(pending);
        match c.reader.fill_until(deadline).await {
            Ok(n) => discarded += n,
            Err(_) => return,
        }
    }
}

/// An error for a request whose body (if any) has not been read: the connection closes unless
/// there is no body and the client wants keep-alive.
async fn reject_with_body_pending(c: &mut Client, ex: &Exchange, refusal: Reject) -> Next {
    let close = !ex.keep_alive || ex.framing != Framing::None;
    if !close {
        c.reader.consume(c.head.len);
    }
    reject(c, &refusal, ex.request_id(), close).await
}

/// `308` to the same host (without its port) and target over HTTPS.
async fn redirect_to_https(c: &mut Client, ex: &Exchange, port: u16) -> Next {
    let buf = c.reader.buffered();
    let head = &c.head;
    let mut host_buf = [0u8; 256];
    let host = request_host(c, &mut host_buf);
    if host.is_empty() {
        const NO_HOST: Reject =
            Reject::new(400, "bad_request", "missing host for the https redirect");
        return reject_with_body_pending(c, ex, NO_HOST).await;
    }
    let mut location = Vec::with_capacity(host.len() + head.path.len() + head.query.len() + 20);
    location.extend_from_slice(b"https://");
    location.extend_from_slice(host.as_bytes());
    if port != 443 {
        location.push(b':');
        push_decimal(&mut location, u64::from(port));
    }
    location.extend_from_slice(&buf[head.path.clone()]);
    location.extend_from_slice(&buf[head.query.clone()]);
    let redirect =
        Reject::new(308, "redirect_https", "use https").with_header(b"location", &location);
    reject_with_body_pending(c, ex, redirect).await
}

async fn direct_response(
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    status: u16,
    content_type: &str,
    body: &str,
) -> Next {
    let close = !ex.keep_alive || ex.framing != Framing::None;
    c.reader.consume(c.head.len);
    c.down.record.status = status;
    let out = &mut c.down.out;
    out.clear();
    crate::http::push_status_line(out, status);
    push_header(out, b"content-type", content_type.as_bytes());
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_header(out, b"x-request-id", ex.request_id());
    out.extend_from_slice(&route.response_edits(ex.tls).add);
    push_connection_header(out, ex, close);
    out.extend_from_slice(b"\r\n");
    if !ex.head_method {
        out.extend_from_slice(body.as_bytes());
    }
    let out = std::mem::take(&mut c.down.out);
    let (result, out) = write_all_within(&mut c.down.writer, out, c.limits.send_timeout).await;
    c.down.out = out;
    if close || result.is_err() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

fn push_connection_header(out: &mut Vec<u8>, ex: &Exchange, close: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ex.version == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// Why talking to the origin failed, each mapped to one client-visible status.
enum UpstreamFailure {
    Connect(ConnectError),
    /// Nothing (or an unusable head) came back.
    BadGateway(&'static str),
    TimedOut,
    /// The client side failed while we streamed its body: no response is possible.
    ClientGone,
    ClientBody(Reject),
}

async fn proxy(
    shard: &Shard,
    cfg: &Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    prefix_len: usize,
) -> Next {
    if let Framing::Length(n) = ex.framing
        && n > c.limits.max_body_bytes
    {
        return reject(c, &reject::BODY_TOO_LARGE, ex.request_id(), true).await;
    }
    // Circuit breaking and target choice (healthy, not ejected) come before any work.
    if !cfg.upstreams.has_capacity(upstream) {
        return reject_with_body_pending(c, ex, reject::UPSTREAM_OVERLOADED).await;
    }
    cfg.upstreams.count_request(upstream);
    c.down.record.upstream = Some(upstream);
    let affinity = affinity_of(&cfg.snapshot.upstreams[upstream], c);
    let target = match cfg.upstreams.pick(upstream, Tried::default(), &affinity) {
        Ok(t) => t,
        Err(_) => {
            return reject_with_body_pending(c, ex, reject::NO_HEALTHY_TARGET).await;
        }
    };
    // Transform the head (plus a small, fully buffered body) into `out`.
    let label = &cfg.snapshot.upstreams[upstream].targets[target].label;
    let mut out = std::mem::take(&mut c.down.out);
    out.clear();
    write_upstream_head(&mut out, c, ex, route, prefix_len, label);
    c.reader.consume(c.head.len);
    let body_inline = match ex.framing {
        Framing::None => true,
        Framing::Length(n) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && c.reader.buffered().len() >= n;
            if whole {
                out.extend_from_slice(&c.reader.buffered()[..n]);
                c.reader.consume(n);
            }
            whole
        }
        Framing::Chunked | Framing::UntilClose => false,
    };
    if !body_inline {
        // Boxed: this path's state is large and rare; keeping it out of every connection's
        // future keeps idle connections small.
        return Box::pin(streamed_exchange(
            shard, cfg, c, ex, route, upstream, target, &affinity, out,
        ))
        .await;
    }
    match send_replayable(cfg, c, ex, route, upstream, target, &affinity, out).await {
        Ok((mut up, target, flight)) => {
            c.down.record.target = Some(target);
            stick_to(
                &cfg.snapshot.upstreams[upstream],
                &affinity,
                target,
                &mut c.down,
            );
            let relayed =
                relay_response(shard, cfg, &mut c.down, ex, route, upstream, &mut up.reader).await;
            drop(flight);
            let ends = Ends {
                request_complete: true,
                reusable: c.down.resp.reusable,
                tunnel: tunnel_limits(route, c),
            };
            finish(cfg, upstream, target, up, relayed, ends)
        }
        Err(failure) => fail_upstream(c, ex, failure, true).await,
    }
}

/// A sticky cookie naming a known target, and the consistent-hash key, if configured.
fn affinity_of(spec: &UpstreamSpec, c: &Client) -> Affinity {
    let buf = c.reader.buffered();
    let sticky = spec.sticky.as_ref().and_then(|st| {
        let value = c.head.cookie(buf, st.cookie.as_bytes())?;
        st.ids.iter().position(|id| id.as_bytes() == value)
    });
    let hash = match &spec.hash_key {
        Some(HashKey::Header(name)) => c.head.field(buf, name.as_bytes()).map(stable_hash),
        Some(HashKey::Cookie(name)) => c.head.cookie(buf, name.as_bytes()).map(stable_hash),
        Some(HashKey::ClientIp) => Some(stable_hash(c.peer_ip.as_bytes())),
        None => None,
    };
    Affinity { sticky, hash }
}

/// With sticky sessions, a response from a target the client was not stuck to sets the
/// cookie that sticks it there. Appends to the exchange's extra response lines (cleared once
/// when the exchange starts), so a line an earlier stage added is kept.
fn stick_to(spec: &UpstreamSpec, affinity: &Affinity, target: usize, down: &mut Downstream) {
    if let Some(st) = &spec.sticky
        && affinity.sticky != Some(target)
    {
        down.extra.extend_from_slice(b"set-cookie: ");
        down.extra.extend_from_slice(st.cookie.as_bytes());
        down.extra.push(b'=');
        down.extra.extend_from_slice(st.ids[target].as_bytes());
        down.extra.extend_from_slice(b"; Path=/; Max-Age=");
        push_decimal(&mut down.extra, st.max_age_secs);
        down.extra.extend_from_slice(b"; HttpOnly\r\n");
    }
}

/// How one try at one target failed.
enum TryFailure {
    Connect(ConnectError),
    Response(ResponseFailure),
}

impl TryFailure {
    /// Whether the target is to blame (for passive detection).
    fn outcome(&self) -> Outcome {
        match self {
            TryFailure::Connect(ConnectError::Overloaded) => Outcome::Neutral,
            TryFailure::Connect(_) => Outcome::Failed,
            TryFailure::Response(ResponseFailure::Bad(_)) => Outcome::Neutral,
            TryFailure::Response(_) => Outcome::Failed,
        }
    }

    /// Whether the route retries this failure; a request that may have reached the origin
    /// is retried only when it is idempotent (or the route allows it).
    fn retryable(&self, on: RetryOn, idempotent: bool) -> bool {
        match self {
            TryFailure::Connect(ConnectError::Overloaded) => false,
            TryFailure::Connect(_) => on.connect_failure,
            TryFailure::Response(ResponseFailure::NothingReceived) => on.reset && idempotent,
            TryFailure::Response(ResponseFailure::TimedOut) => on.timeout && idempotent,
            TryFailure::Response(ResponseFailure::Bad(_)) => false,
        }
    }
}

impl From<TryFailure> for UpstreamFailure {
    fn from(f: TryFailure) -> Self {
        match f {
            TryFailure::Connect(e) => UpstreamFailure::Connect(e),
            TryFailure::Response(r) => r.into(),
        }
    }
}

fn retries_status(on: RetryOn, status: u16) -> bool {
    match status {
        502 => on.status_502,
        503 => on.status_503,
        504 => on.status_504,
        _ => false,
    }
}

fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Sends a request that is entirely in `out` and reads the response head into
/// `c.down.resp`, retrying per the route (each retry on a different target, within the
/// upstream's retry budget, after a jittered backoff). Returns the connection, the target
/// that answered, and its in-flight guard.
#[allow(clippy::too_many_arguments)]
async fn send_replayable<'s>(
    cfg: &'s Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    mut target: usize,
    affinity: &Affinity,
    mut out: Vec<u8>,
) -> Result<(UpstreamConn, usize, InFlight<'s>), UpstreamFailure> {
    let spec = &cfg.snapshot.upstreams[upstream];
    let try_timeout = route.per_try_timeout.unwrap_or(spec.response_timeout);
    let idempotent = route.retry_non_idempotent || ex.idempotent;
    let mut tried = Tried::default();
    let mut retries_left = route.retries;
    let mut backoff_ms = 25;
    loop {
        tried.add(target);
        let mut flight = cfg.upstreams.begin(upstream, target);
        let started = Instant::now();
        let attempt = try_once(cfg, c, ex, route, (upstream, target), &mut out, try_timeout);
        let failure = match attempt.await {
            Ok(up) => {
                let status = c.down.resp.status;
                flight.outcome = Outcome::Answered {
                    status,
                    micros: started.elapsed().as_micros() as u64,
                };
                let retry = retries_status(route.retry_on, status) && idempotent;
                if !(retry && retries_left > 0) {
                    c.down.out = out;
                    return Ok((up, target, flight));
                }
                // Retrying a 5xx: this connection (with the unread body) is dropped.
                None
            }
            Err(f) => {
                flight.outcome = f.outcome();
                Some(f)
            }
        };
        drop(flight);
        // An empty `out` went with a write that timed out: there is nothing left to resend.
        let retryable = !out.is_empty()
            && failure
                .as_ref()
                .is_none_or(|f| f.retryable(route.retry_on, idempotent));
        let next = if retryable && retries_left > 0 && cfg.upstreams.try_retry(upstream) {
            cfg.upstreams.pick(upstream, tried, affinity).ok()
        } else {
            None
        };
        let Some(next) = next else {
            c.down.out = out;
            return Err(match failure {
                Some(f) => f.into(),
                None => UpstreamFailure::BadGateway("upstream answered with an error status"),
            });
        };
        monoio::time::sleep(Duration::from_millis(cfg.upstreams.jitter_ms(backoff_ms))).await;
        backoff_ms *= 2;
        retries_left -= 1;
        target = next;
    }
}

/// One try at one target: send the request and read the response head, both within
/// `timeout` (one timer). A reused connection that fails before any response byte is
/// replaced by a fresh one to the same target at once, but only for a request that is safe
/// to send twice: the origin may have read it before closing.
async fn try_once(
    cfg: &Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    (upstream, target): (usize, usize),
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<UpstreamConn, TryFailure> {
    let replay_safe = ex.idempotent || route.retry_non_idempotent;
    let upgrade = ex.upgrade.then_some(route);
    let mut up = checkout(cfg, upstream, target)
        .await
        .map_err(TryFailure::Connect)?;
    loop {
        let exchange = async {
            let (written, returned) = write_all_buf(&mut up.writer, std::mem::take(out)).await;
            *out = returned;
            match written {
                Err(_) => Err(ResponseFailure::NothingReceived),
                Ok(()) => {
                    read_response_head(&mut up.reader, &mut c.down.resp, ex.head_method, upgrade)
                        .await
                }
            }
        };
        let attempt = monoio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ResponseFailure::TimedOut));
        match attempt {
            Ok(()) => return Ok(up),
            Err(ResponseFailure::NothingReceived) if up.reused && replay_safe => {
                up = cfg
                    .upstreams
                    .connect(upstream, target)
                    .await
                    .map_err(TryFailure::Connect)?;
            }
            Err(failure) => return Err(TryFailure::Response(failure)),
        }
    }
}

async fn checkout(
    cfg: &Active,
    upstream: usize,
    target: usize,
) -> Result<UpstreamConn, ConnectError> {
    match cfg.upstreams.checkout_idle(upstream, target) {
        Some(up) => Ok(up),
        None => cfg.upstreams.connect(upstream, target).await,
    }
}

/// A request whose body is streamed: the body goes up while the response may already come
/// down (an origin may answer early, or echo as it reads). The response timeout starts once
/// the whole request has been sent.
#[allow(clippy::too_many_arguments)]
async fn streamed_exchange(
    shard: &Shard,
    cfg: &Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    target: usize,
    affinity: &Affinity,
    out: Vec<u8>,
) -> Next {
    let response_timeout = cfg.snapshot.upstreams[upstream].response_timeout;
    // The body has not been read yet, so a failed connect can move to another target.
    let mut target = target;
    let mut tried = Tried::default();
    let mut retries_left = route.retries;
    let mut up = loop {
        tried.add(target);
        match checkout(cfg, upstream, target).await {
            Ok(up) => break up,
            Err(e) => {
                let failure = TryFailure::Connect(e);
                cfg.upstreams.begin(upstream, target).outcome = failure.outcome();
                let next = (failure.retryable(route.retry_on, ex.idempotent)
                    && retries_left > 0
                    && cfg.upstreams.try_retry(upstream))
                .then(|| cfg.upstreams.pick(upstream, tried, affinity).ok())
                .flatten();
                match next {
                    Some(next) => {
                        retries_left -= 1;
                        target = next;
                    }
                    None => {
                        c.down.out = out;
                        return fail_upstream(c, ex, failure.into(), false).await;
                    }
                }
            }
        }
    };
    let mut flight = cfg.upstreams.begin(upstream, target);
    let started = Instant::now();
    c.down.record.target = Some(target);
    stick_to(
        &cfg.snapshot.upstreams[upstream],
        affinity,
        target,
        &mut c.down,
    );
    let (written, out) = write_all_within(&mut up.writer, out, c.limits.send_timeout).await;
    c.down.out = out;
    if let Err(e) = written {
        let failure = if e.kind() == std::io::ErrorKind::TimedOut {
            UpstreamFailure::TimedOut
        } else {
            UpstreamFailure::BadGateway(
                "upstream closed the connection while receiving the request",
            )
        };
        return fail_upstream(c, ex, failure, false).await;
    }
    // No 1xx for HTTP/1.0 clients (RFC 9110 §15.2): they just send the body.
    if c.head.expect_continue && ex.version == Version::Http11 {
        let continued = monoio::time::timeout(ex.send_timeout, c.down.writer.write_all(CONTINUE));
        if !matches!(continued.await, Ok((Ok(_), _))) {
            return Next::Close;
        }
    }
    // A large body streams through a larger buffer (fewer reads and writes), lent for the
    // duration of this exchange.
    let lent = (c.reader.capacity() < BODY_BUF)
        .then(|| c.reader.swap_buffer(shard.body_bufs.take(BODY_BUF)));
    let head_received = Cell::new(false);
    let head_micros = Cell::new(0);
    let answered_first = Cell::new(false);
    let (sent, answered) = {
        let UpstreamConn {
            reader: up_reader,
            writer: up_writer,
            ..
        } = &mut up;
        let limits = BodyLimits {
            max_bytes: c.limits.max_body_bytes,
            read_timeout: c.limits.idle_timeout,
            write_timeout: c.limits.send_timeout,
            read_deadline: Some(Instant::now() + c.limits.body_read_timeout),
        };
        let upgrade = ex.upgrade.then_some(route);
        let rechunk = ex.framing == Framing::Chunked;
        let sending = stream_body(
            &mut c.reader,
            up_writer,
            ex.framing,
            rechunk,
            limits,
            &mut c.up_scratch,
        );
        let receiving = async {
            // No deadline while the body is still going up (the origin may read it all
            // first); the select below starts the response timeout once it is sent.
            read_response_head(up_reader, &mut c.down.resp, ex.head_method, upgrade).await?;
            head_received.set(true);
            head_micros.set(started.elapsed().as_micros() as u64);
            Ok(relay_response(shard, cfg, &mut c.down, ex, route, upstream, up_reader).await)
        };
        let mut sending = std::pin::pin!(sending);
        let mut receiving = std::pin::pin!(receiving);
        monoio::select! {
            sent = &mut sending => match sent {
                Ok(()) | Err(BodyError::DestinationIo) => {
                    let deadline = Instant::now() + response_timeout;
                    let answered = monoio::select! {
                        r = &mut receiving => r,
                        _ = monoio::time::sleep_until(deadline) => {
                            if head_received.get() {
                                (&mut receiving).await
                            } else {
                                Err(UpstreamFailure::TimedOut)
                            }
                        }
                    };
                    (sent, Some(answered))
                }
                Err(e) => (Err(e), None),
            },
            answered = &mut receiving => {
                // Usually the origin answered because it read the whole body and our last
                // write just has not been observed yet; an origin that answered early without
                // reading gets a short grace period before the connection is closed.
                answered_first.set(true);
                let sent = match monoio::time::timeout(EARLY_ANSWER_GRACE, &mut sending).await {
                    Ok(sent) => sent,
                    Err(_) => Err(BodyError::DestinationIo),
                };
                (sent, Some(answered))
            }
        }
    };
    let sent_all = sent.is_ok();
    if let Some(small) = lent {
        let returned = c.reader.swap_buffer(small);
        if returned.capacity() >= BODY_BUF {
            shard.body_bufs.give(returned);
        } else {
            shard.bufs.give(returned);
        }
    }
    flight.outcome = match &answered {
        _ if head_received.get() => Outcome::Answered {
            status: c.down.resp.status,
            micros: head_micros.get(),
        },
        Some(Err(UpstreamFailure::TimedOut)) => Outcome::Failed,
        _ => Outcome::Neutral,
    };
    drop(flight);
    match (sent, answered) {
        (_, Some(Ok(relayed))) => {
            // An origin that answered before the whole body arrived: the client may still
            // be sending, so close by lingering or the answer could be lost to a reset.
            c.linger = !sent_all;
            // A whole response before the whole body was sent: the origin may not have read
            // the rest, which would then start the next request on a pooled connection
            // (whoever sends it). Such a connection is never pooled.
            let ends = Ends {
                request_complete: sent_all,
                reusable: c.down.resp.reusable && !answered_first.get(),
                tunnel: tunnel_limits(route, c),
            };
            finish(cfg, upstream, target, up, relayed, ends)
        }
        (_, Some(Err(failure))) if !head_received.get() => {
            fail_upstream(c, ex, failure, sent_all).await
        }
        (Err(e), None) if !head_received.get() => {
            fail_upstream(c, ex, client_body_failure(e), false).await
        }
        _ => Next::Close,
    }
}

fn client_body_failure(e: BodyError) -> UpstreamFailure {
    match e {
        BodyError::SourceClosed | BodyError::SourceIo => UpstreamFailure::ClientGone,
        BodyError::SourceTimedOut => UpstreamFailure::ClientBody(reject::BODY_TIMEOUT),
        BodyError::Malformed => UpstreamFailure::ClientBody(reject::BAD_CHUNKED_BODY),
        BodyError::TooLarge => UpstreamFailure::ClientBody(reject::BODY_TOO_LARGE),
        BodyError::DestinationIo => {
            UpstreamFailure::BadGateway("upstream stopped receiving the request")
        }
        // An origin that stops reading the body is as stuck as one that never answers.
        BodyError::DestinationTimedOut => UpstreamFailure::TimedOut,
    }
}

/// How long a request body may still take to finish sending once the response is complete.
const EARLY_ANSWER_GRACE: Duration = Duration::from_millis(100);

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What relaying a response did to the two connections.
enum Relayed {
    /// The whole response reached the client; `close` says the client connection must end.
    Done { close: bool },
    /// `101 Switching Protocols` was forwarded: the connections become a tunnel.
    Upgraded,
    /// Either side failed mid-response: both connections must close.
    Broken,
}

/// How both messages of an exchange ended.
struct Ends {
    request_complete: bool,
    /// The origin allows another request on its connection.
    reusable: bool,
    tunnel: TunnelLimits,
}

fn tunnel_limits(route: &RouteSpec, c: &Client) -> TunnelLimits {
    TunnelLimits {
        idle: route.tunnel_idle_timeout.unwrap_or(c.limits.idle_timeout),
        total: route.tunnel_max_duration,
        send: c.limits.send_timeout,
    }
}

/// Ends an exchange: pools the upstream connection when both messages ended cleanly, and
/// says what the client connection does next.
fn finish(
    cfg: &Active,
    upstream: usize,
    target: usize,
    up: UpstreamConn,
    relayed: Relayed,
    ends: Ends,
) -> Next {
    let request_complete = ends.request_complete;
    match relayed {
        Relayed::Upgraded if request_complete => Next::Tunnel(up, ends.tunnel),
        Relayed::Done { close } => {
            if request_complete && ends.reusable {
                cfg.upstreams.checkin(upstream, target, up);
            }
            if close || !request_complete {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Relayed::Upgraded | Relayed::Broken => Next::Close,
    }
}

/// Maps a failure to its status. `body_read` says whether the request body was consumed;
/// if not, the connection cannot carry another request.
async fn fail_upstream(
    c: &mut Client,
    ex: &Exchange,
    failure: UpstreamFailure,
    body_read: bool,
) -> Next {
    let Some(refusal) = failure.into_reject() else {
        return Next::Close;
    };
    let close = !ex.keep_alive || !body_read;
    reject(c, &refusal, ex.request_id(), close).await
}

impl UpstreamFailure {
    /// The answer the client gets; `None` when the client is gone and gets nothing.
    fn into_reject(self) -> Option<Reject> {
        Some(match self {
            UpstreamFailure::Connect(ConnectError::TimedOut) => Reject::new(
                502,
                "upstream_connect_timeout",
                "upstream connect timed out",
            ),
            UpstreamFailure::Connect(ConnectError::Failed(_)) => {
                Reject::new(502, "upstream_connect_failed", "upstream connect failed")
            }
            UpstreamFailure::Connect(ConnectError::Tls(_)) => {
                Reject::new(502, "upstream_tls_failed", "upstream TLS handshake failed")
            }
            UpstreamFailure::Connect(ConnectError::Overloaded) => Reject::new(
                503,
                "upstream_overloaded",
                "upstream overloaded (max_pending connections being opened)",
            ),
            UpstreamFailure::BadGateway(m) => reject::bad_gateway(m),
            UpstreamFailure::TimedOut => reject::UPSTREAM_TIMEOUT,
            UpstreamFailure::ClientGone => return None,
            UpstreamFailure::ClientBody(refusal) => refusal,
        })
    }
}

enum ResponseFailure {
    /// The connection failed before any response byte: the origin never answered.
    NothingReceived,
    TimedOut,
    Bad(&'static str),
}

impl From<ResponseFailure> for UpstreamFailure {
    fn from(f: ResponseFailure) -> Self {
        match f {
            ResponseFailure::NothingReceived => {
                UpstreamFailure::BadGateway("upstream closed the connection without a response")
            }
            ResponseFailure::TimedOut => UpstreamFailure::TimedOut,
            ResponseFailure::Bad(message) => UpstreamFailure::BadGateway(message),
        }
    }
}

/// Reads a final response head (skipping 1xx interim responses other than 101), with no
/// deadline of its own: callers bound it. A `101` is accepted only when the request offered
/// an upgrade (`upgrade` is its route) and it switches to a protocol the route allows.
async fn read_response_head(
    up: &mut UpstreamReader,
    resp: &mut ResponseHead,
    head_method: bool,
    upgrade: Option<&RouteSpec>,
) -> Result<(), ResponseFailure> {
    let mut received = false;
    loop {
        if !up.buffered().is_empty() {
            received = true;
            match resp.parse(up.buffered(), head_method, crate::upstream::UPSTREAM_BUF) {
                Ok(true) if resp.status < 200 && resp.status != 101 => {
                    up.consume(resp.len);
                    continue;
                }
                Ok(true) if resp.status == 101 => {
                    let allowed = upgrade.is_some_and(|route| {
                        resp.upgrade(up.buffered())
                            .is_some_and(|p| route.allows_upgrade(p))
                    });
                    return if allowed {
                        Ok(())
                    } else {
                        Err(ResponseFailure::Bad("upstream switched protocols unasked"))
                    };
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(ResponseFailure::Bad(e.0)),
            }
        }
        match up.fill().await {
            Ok(_) => {}
            Err(ReadError::TimedOut) => return Err(ResponseFailure::TimedOut),
            Err(ReadError::BufferFull) => {
                return Err(ResponseFailure::Bad("response head too large"));
            }
            Err(ReadError::Closed | ReadError::Io(_)) if !received => {
                return Err(ResponseFailure::NothingReceived);
            }
            Err(_) => return Err(ResponseFailure::Bad("upstream closed mid-response")),
        }
    }
}

/// Sends the transformed response head and streams the body to the client.
async fn relay_response(
    shard: &Shard,
    cfg: &Active,
    down: &mut Downstream,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    up: &mut UpstreamReader,
) -> Relayed {
    let upgraded = down.resp.status == 101;
    let framing = down.resp.framing;
    let open_ended = matches!(framing, Framing::Chunked | Framing::UntilClose);
    // HTTP/1.0 clients cannot receive chunked bodies: they get the bytes, then a close.
    let rechunk = open_ended && ex.version == Version::Http11;
    let close = !ex.keep_alive || shard.draining.get() || (open_ended && !rechunk);
    let mut out = std::mem::take(&mut down.out);
    out.clear();
    write_client_head(
        &mut out,
        &down.resp,
        up.buffered(),
        ex,
        route.response_edits(ex.tls),
        &down.extra,
        rechunk,
        close,
        upgraded,
    );
    up.consume(down.resp.len);
    let inline_body = match framing {
        Framing::None => true,
        Framing::Length(n) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && up.buffered().len() >= n;
            if whole {
                out.extend_from_slice(&up.buffered()[..n]);
                up.consume(n);
            }
            whole
        }
        Framing::Chunked | Framing::UntilClose => false,
    };
    let (written, out) = write_all_within(&mut down.writer, out, ex.send_timeout).await;
    down.out = out;
    if written.is_err() {
        return Relayed::Broken;
    }
    down.record.status = down.resp.status;
    if upgraded {
        return Relayed::Upgraded;
    }
    if !inline_body {
        let limits = BodyLimits {
            max_bytes: u64::MAX,
            read_timeout: cfg.snapshot.upstreams[upstream].response_timeout,
            write_timeout: ex.send_timeout,
            read_deadline: None,
        };
        if stream_body(
            up,
            &mut down.writer,
            framing,
            rechunk,
            limits,
            &mut down.scratch,
        )
        .await
        .is_err()
        {
            // The head is gone already: closing is the only way to show the truncation.
            return Relayed::Broken;
        }
    }
    Relayed::Done { close }
}

/// The request head as the origin sees it: one framing, hop-by-hop fields dropped, forwarding
/// fields set, route edits applied.
fn write_upstream_head(
    out: &mut Vec<u8>,
    c: &Client,
    ex: &Exchange,
    route: &RouteSpec,
    prefix_len: usize,
    target_label: &str,
) {
    let buf = c.reader.buffered();
    let head = &c.head;
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    let path = &buf[head.path.clone()];
    if route.strip_prefix {
        let rest = &path[prefix_len.min(path.len())..];
        if rest.first() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rest);
    } else {
        out.extend_from_slice(path);
    }
    out.extend_from_slice(&buf[head.query.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // An absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2): the origin
    // must see the host the route was chosen by.
    let client_host = head
        .target_authority
        .clone()
        .or_else(|| head.host.clone())
        .map(|r| &buf[r])
        .filter(|h| !h.is_empty());
    match (&route.host_rewrite, client_host) {
        (Some(h), _) => push_header(out, b"host", h.as_bytes()),
        (None, Some(h)) => push_host(out, b"host", h),
        _ => push_header(out, b"host", target_label.as_bytes()),
    }

    for (field, &kind) in head.fields.iter().zip(&head.kinds) {
        let name = &buf[field.name.clone()];
        let forward = match kind {
            Known::Other => {
                !name.eq_ignore_ascii_case(b"expect")
                    && !head.is_connection_named(buf, name)
                    && !route.request_headers.removes(name)
            }
            Known::Upgrade => ex.upgrade,
            // Forwarding claims, the gateway's own fields, framing, hop-by-hop and names
            // with `_` are never passed on as the client sent them.
            _ => false,
        };
        if forward {
            push_header(out, name, &buf[field.value.clone()]);
        }
    }
    // Every X-Forwarded-For field joins one list, with the client's address appended last.
    if !route.request_headers.removes(b"x-forwarded-for") {
        out.extend_from_slice(b"x-forwarded-for: ");
        let keep_client_list = !c.replace_x_forwarded_for;
        for (field, &kind) in head.fields.iter().zip(&head.kinds) {
            if keep_client_list && kind == Known::XForwardedFor {
                out.extend_from_slice(&buf[field.value.clone()]);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(c.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    push_header(
        out,
        b"x-forwarded-proto",
        if c.tls { b"https" } else { b"http" },
    );
    if let Some(subject) = &c.client_subject {
        push_header(out, b"x-client-cert-subject", subject.as_bytes());
    }
    if let Some(h) = client_host {
        push_host(out, b"x-forwarded-host", h);
    }
    push_header(out, b"x-real-ip", c.peer_ip.as_bytes());
    push_header(out, b"x-request-id", ex.request_id());
    out.extend_from_slice(&route.request_headers.add);
    match ex.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            if matches!(head.method(buf), b"POST" | b"PUT" | b"PATCH") {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    if ex.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A host field as the client sent it, less one trailing dot on the name.
fn push_host(out: &mut Vec<u8>, field: &[u8], raw: &[u8]) {
    let (name, port) = split_host_port(raw);
    out.extend_from_slice(field);
    out.extend_from_slice(b": ");
    out.extend_from_slice(name);
    out.extend_from_slice(port);
    out.extend_from_slice(b"\r\n");
}

/// The response head as the client sees it.
#[allow(clippy::too_many_arguments)]
fn write_client_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    buf: &[u8],
    ex: &Exchange,
    edits: &CompiledTransform,
    extra: &[u8],
    rechunk: bool,
    close: bool,
    tunnel: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(&buf[resp.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let mut length_sent = false;
    for (field, &kind) in resp.fields.iter().zip(&resp.kinds) {
        let name = &buf[field.name.clone()];
        match kind {
            Known::ContentLength if !length_sent && resp.status >= 200 && resp.status != 204 => {
                length_sent = true;
            }
            Known::Upgrade if tunnel => {}
            Known::HopByHop
            | Known::TransferEncoding
            | Known::Upgrade
            | Known::ContentLength
            | Known::XRequestId => continue,
            _ => {}
        }
        if resp.is_connection_named(buf, name) || edits.removes(name) {
            continue;
        }
        push_header(out, name, &buf[field.value.clone()]);
    }
    out.extend_from_slice(&edits.add);
    out.extend_from_slice(extra);
    push_header(out, b"x-request-id", ex.request_id());
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if tunnel {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        push_connection_header(out, ex, close);
    }
    out.extend_from_slice(b"\r\n");
}

/// After `101 Switching Protocols`: bytes flow both ways until either side closes, the
/// tunnel has been quiet for `limits.idle`, or it has lived `limits.total`. Reads carry no
/// timer of their own (a cancelled read can lose bytes); one watchdog ends the whole tunnel.
async fn tunnel(
    mut client: ClientReader,
    mut client_writer: ClientWriter,
    origin: UpstreamConn,
    limits: TunnelLimits,
) {
    let UpstreamConn {
        reader: mut origin_reader,
        writer: mut origin_writer,
        ..
    } = origin;
    let last_activity = Cell::new(Instant::now());
    let upstream = pump(&mut client, &mut origin_writer, &last_activity, limits.send);
    let downstream = pump(
        &mut origin_reader,
        &mut client_writer,
        &last_activity,
        limits.send,
    );
    let watchdog = async {
        let end = Instant::now() + limits.total;
        loop {
            let quiet_until = last_activity.get() + limits.idle;
            monoio::time::sleep_until(quiet_until.min(end)).await;
            let now = Instant::now();
            if now >= end || now >= last_activity.get() + limits.idle {
                return;
            }
        }
    };
    monoio::select! {
        _ = upstream => {},
        _ = downstream => {},
        _ = watchdog => {},
    }
}

/// Copies `src` to `dst` until either fails, noting each transfer in `last_activity`.
async fn pump<S: monoio::io::AsyncReadRent, W: AsyncWriteRent>(
    src: &mut BufConn<S>,
    dst: &mut W,
    last_activity: &Cell<Instant>,
    send_timeout: Duration,
) {
    loop {
        let pending = src.buffered().len();
        if pending > 0 {
            let sent = monoio::time::timeout(send_timeout, src.forward_buffered(pending, dst));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
            last_activity.set(Instant::now());
        }
        if src.fill().await.is_err() {
            return;
        }
        last_activity.set(Instant::now());
    }
}
