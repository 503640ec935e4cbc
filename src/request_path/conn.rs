//! One client connection: its per-connection state (reused across its requests and, through a
//! per-shard spare list, across connections), the TLS handshake, reading a request head
//! within its limits, idling between requests without holding buffers, and lingering close.
//! Must not route, authenticate or talk to origins.

use super::origin::*;
use super::*;
use crate::config::EffectiveLimits;
use crate::http::head::HeadScan;
use crate::http::io::{BufConn, Counted, ReadError};
use crate::http::{Framing, HeadLimits, RequestHead, ResponseHead, Version};
use crate::observe::ExchangeRecord;
use crate::shard::{Active, ConnGuard, ListenerState, Shard};
use crate::tls::{ConnRead, ConnWrite};
use crate::upstream::UpstreamConn;
use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;
use monoio::time::Instant;
use std::rc::Rc;
use std::time::Duration;

/// Initial capacity of a connection's output buffer (heads; it grows for inline bodies).
pub(super) const OUT_BUF: usize = 4096;

pub(super) type ClientReader = BufConn<ConnRead>;

pub(super) type ClientWriter = Counted<ConnWrite>;

pub(super) type UpstreamReader = BufConn<ConnRead>;

/// Per-connection state, allocated once per connection and reused by every request on it.
/// The socket is split once so a request body can stream up while the response streams down.
pub(super) struct Client {
    pub(super) reader: ClientReader,
    pub(super) head: RequestHead,
    pub(super) down: Downstream,
    /// Re-chunking buffer for request bodies.
    pub(super) up_scratch: Vec<u8>,
    pub(super) peer_ip: PeerIp,
    /// The connection's peer.
    pub(super) peer: std::net::IpAddr,
    /// The current request's client when trusted proxies say it is not the peer.
    pub(super) forwarded_client: Option<PeerIp>,
    pub(super) limits: EffectiveLimits,
    /// A plain listener told to send everything to HTTPS on this port.
    pub(super) redirect_https: Option<u16>,
    pub(super) tls: bool,
    /// The verified client certificate's subject (mTLS listeners), for later stages.
    pub(super) client_subject: Option<Box<str>>,
    /// Close by lingering: an error response went out while the client may still be sending.
    pub(super) linger: bool,
    /// The listener says `x_forwarded_for = "replace"`.
    pub(super) replace_x_forwarded_for: bool,
    /// Concurrency slots of rate-limit policies the current exchange holds (given back at
    /// its one exit).
    pub(super) held: crate::limit::Held,
}

/// Everything that writes to the client.
pub(super) struct Downstream {
    pub(super) writer: ClientWriter,
    pub(super) resp: ResponseHead,
    pub(super) out: Vec<u8>,
    /// Re-chunking buffer for response bodies.
    pub(super) scratch: Vec<u8>,
    /// Per-response header lines the gateway adds (a sticky cookie).
    pub(super) extra: Vec<u8>,
    /// What this exchange did, for the one exit ([`crate::observe::ShardStats::record`]).
    pub(super) record: ExchangeRecord,
    /// The listener the connection came in on: once a reload removes it, the connection
    /// ends after the response in progress.
    pub(super) listener: Rc<ListenerState>,
    /// The config the current exchange runs on, until its record is made (the record's
    /// indices are into it).
    pub(super) pinned: Option<Rc<Active>>,
    /// The current request is a HEAD: the gateway's own answers carry no body.
    pub(super) head_request: bool,
}

/// Facts about the current request that outlive its head bytes in the read buffer.
#[derive(Clone)]
pub(super) struct Exchange {
    pub(super) request_id: [u8; 128],
    pub(super) request_id_len: usize,
    pub(super) version: Version,
    pub(super) keep_alive: bool,
    pub(super) head_method: bool,
    pub(super) framing: Framing,
    pub(super) tls: bool,
    /// Safe to send twice (RFC 9110 §9.2.2), for retries.
    pub(super) idempotent: bool,
    /// The request offers an upgrade the route allows (else `Upgrade` is not forwarded and a
    /// `101` from the origin is refused).
    pub(super) upgrade: bool,
    /// Longest wait for one write to the client.
    pub(super) send_timeout: Duration,
}

impl Exchange {
    pub(super) fn request_id(&self) -> &[u8] {
        &self.request_id[..self.request_id_len]
    }
}

/// What happens to the client connection after an exchange.
pub(super) enum Next {
    KeepAlive,
    Close,
    Tunnel(UpstreamConn, TunnelLimits),
}

/// How long an upgraded connection may live: quiet, and in all.
#[derive(Clone, Copy)]
pub(super) struct TunnelLimits {
    pub(super) idle: Duration,
    pub(super) total: Duration,
    pub(super) send: Duration,
}

/// The TLS handshake, on this shard, bounded by the listener's `handshake_timeout`. A failed
/// or stalled handshake just closes the connection (rustls has sent its alert).
pub(super) async fn accept_tls(
    tls: &crate::tls::ServerTls,
    mut stream: TcpStream,
    early: &[u8],
) -> Option<(ConnRead, ConnWrite, Option<Box<str>>)> {
    let deadline = Instant::now() + tls.handshake_timeout;
    let mut first = Vec::with_capacity(crate::tls::CIPHER_BUF.max(early.len()));
    first.extend_from_slice(early);
    if first.is_empty() {
        use monoio::io::AsyncReadRent;
        let read = stream.read(first);
        let (result, buf) = monoio::time::timeout_at(deadline, read).await.ok()?;
        first = buf;
        if !matches!(result, Ok(n) if n > 0) {
            return None;
        }
    }
    // A TLS connection starts with a handshake record (0x16); an upper-case letter is an
    // HTTP method: answer in HTTP, as nginx does, instead of a TLS alert nobody can read.
    if first[0].is_ascii_uppercase() {
        let mut out = Vec::with_capacity(256);
        crate::http::push_error_response(
            &mut out,
            400,
            "plain HTTP request sent to an HTTPS port",
            b"",
            true,
            b"",
        );
        use monoio::io::AsyncWriteRentExt;
        let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
        return None;
    }
    let session = rustls::ServerConnection::new(tls.config.clone()).ok()?;
    let handshake = crate::tls::handshake(stream, session, true, first);
    let (read, write) = monoio::time::timeout_at(deadline, handshake)
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

/// A `proxy_protocol` listener's preamble: the PROXY header, read within the header timeout.
/// Returns the stream, the client the header names (the peer for `LOCAL` / `UNKNOWN`) and
/// the bytes read past the header (the next layer's first). `None`: close the connection
/// (no header, a malformed or late one, or a client the listener's rules or its per-address
/// limit refuse), counted.
pub(super) async fn read_proxy_preamble(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    spec: &crate::config::ListenerSpec,
    guard: &mut ConnGuard,
) -> Option<(TcpStream, std::net::SocketAddr, Vec<u8>)> {
    use crate::perimeter::proxy_protocol::{self, ProxyError};
    let metrics = &guard.listener().metrics;
    let deadline = Instant::now() + spec.limits.header_read_timeout;
    let mut conn = BufConn::new(stream, Vec::with_capacity(proxy_protocol::V2_MAX));
    let header = loop {
        match proxy_protocol::parse(conn.buffered()) {
            Ok(header) => break header,
            Err(ProxyError::Incomplete) => {}
            Err(_) => {
                metrics.proxy_protocol_refused.add(1);
                return None;
            }
        }
        if conn.fill_until(deadline).await.is_err() {
            metrics.proxy_protocol_refused.add(1);
            return None;
        }
    };
    conn.consume(header.len);
    let client = header.source.map_or(peer, |source| {
        std::net::SocketAddr::new(source.ip().to_canonical(), source.port())
    });
    if !spec.ip_rules.permits(client.ip()) {
        metrics.ip_denied.add(1);
        return None;
    }
    if !guard.rekey_peer(client.ip(), spec.limits.max_connections_per_ip) {
        return None;
    }
    let early = conn.buffered().to_vec();
    let (stream, _) = conn.into_parts();
    Some((stream, client, early))
}

/// The parts of a connection's state that outlive it: parser indexes and re-chunking
/// buffers are reused by the shard's next connections instead of being allocated anew.
pub(super) struct ConnState {
    pub(super) head: RequestHead,
    pub(super) resp: ResponseHead,
    pub(super) up_scratch: Vec<u8>,
    pub(super) down_scratch: Vec<u8>,
}

/// At most this many spare connection states are kept per shard, and at most this many bytes
/// (each state is shrunk first, so the count bound is the one that usually holds).
pub(super) const SPARE_CONN_STATES: usize = 4096;

pub(super) const SPARE_CONN_BYTES: usize = 16 * 1024 * 1024;

thread_local! {
    // One free list per shard thread: shards never share it.
    static SPARE_STATES: std::cell::RefCell<(Vec<ConnState>, usize)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

impl ConnState {
    /// Heap bytes this state holds.
    pub(super) fn footprint(&self) -> usize {
        self.head.footprint()
            + self.resp.footprint()
            + self.up_scratch.capacity()
            + self.down_scratch.capacity()
    }

    pub(super) fn take() -> ConnState {
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

    pub(super) fn give_back(mut self) {
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
pub(super) const KEEP_SCRATCH: usize = 16 * 1024;

pub(super) fn shrink_scratch(scratch: &mut Vec<u8>) {
    if scratch.capacity() > KEEP_SCRATCH {
        *scratch = Vec::new();
    }
}

/// The client's address as text, formatted once per connection without allocating.
pub(super) struct PeerIp {
    pub(super) text: [u8; 48],
    pub(super) len: usize,
}

impl PeerIp {
    pub(super) fn new(ip: std::net::IpAddr) -> PeerIp {
        use std::io::Write;
        let mut text = [0u8; 48];
        let mut rest = &mut text[..];
        let _ = write!(rest, "{}", ip.to_canonical());
        let len = 48 - rest.len();
        PeerIp { text, len }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

impl Client {
    /// The client's address as text: what trusted proxies said, else the peer.
    pub(super) fn client_ip_text(&self) -> &[u8] {
        self.forwarded_client
            .as_ref()
            .unwrap_or(&self.peer_ip)
            .as_bytes()
    }

    /// The current request's client address (`[server] trusted_proxies`), recorded for
    /// the log and the policy stages.
    pub(super) fn settle_client_ip(
        &mut self,
        trusted: &[crate::perimeter::Cidr],
    ) -> std::net::IpAddr {
        if trusted.is_empty() {
            return self.peer;
        }
        let buf = self.reader.buffered();
        let fields = self
            .head
            .fields
            .iter()
            .zip(&self.head.kinds)
            .filter(|(_, k)| **k == crate::http::Known::XForwardedFor)
            .map(|(f, _)| &buf[f.value.clone()]);
        let client = crate::perimeter::client_ip(self.peer, trusted, fields);
        self.forwarded_client = (client != self.peer.to_canonical()).then(|| PeerIp::new(client));
        self.down.record.client_ip = client;
        client
    }
}

pub(super) enum HeadStop {
    /// The client went away or idled out between requests: close without a response.
    Quiet,
    Reject(Reject),
}

/// Waits up to `idle_timeout` for a request to start, then up to `header_read_timeout` for
/// its head to complete.
pub(super) async fn read_request_head(
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

/// An idle keep-alive connection waits for readability without holding its buffers (they go
/// back to the shard's pool), so thousands of idle clients cost little memory. Drain wakes it
/// by shutting down its read side.
pub(super) async fn wait_for_next_request(
    shard: &Shard,
    guard: &ConnGuard,
    c: &mut Client,
) -> Result<(), HeadStop> {
    if shard.draining.get() || guard.listener().is_retired() {
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
    c.down.writer.inner.park_buffers(&shard.bufs);
    guard.park(Instant::now() + c.limits.idle_timeout);
    let ready = c.reader.io.readable().await;
    guard.unpark();
    // Taken back in the reverse order they were given: the pool is a stack, so each take
    // finds the buffer of the size it needs (not a smaller one to free and replace).
    c.down.writer.inner.unpark_buffers(&shard.bufs);
    c.reader.io.unpark_buffers(&shard.bufs);
    c.down.out = shard.bufs.take(OUT_BUF);
    c.reader.restore_buffer(shard.bufs.take(read_capacity));
    ready.map_err(|_| HeadStop::Quiet)
}

pub(super) fn exchange_facts(shard: &Shard, c: &Client) -> Exchange {
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

/// Lingering close (as nginx does) after an error response on a connection whose client may
/// still be sending: closing with unread bytes would make the kernel send a reset, which can
/// destroy our response before the client reads it. So: send FIN, then read and discard for
/// a bounded time and amount.
pub(super) async fn linger(c: &mut Client) {
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

/// Normalises the parsed path in place before anything looks at it (routing, forwarding).
pub(super) fn normalize_request_path(cfg: &Active, c: &mut Client) -> Result<(), Reject> {
    let keep = cfg.keep_escaped_slashes;
    c.head
        .normalize_path(c.reader.buffered_mut(), keep)
        .map_err(Reject::from)
}
