//! A hostile-peer kit for the regression tests of the 2026-11-30 security audit
//! (tests/hostile_origin.rs, tests/hostile_client.rs).
//!
//! - Scripted hostile ORIGINS: raw blocking `std` sockets, one thread per connection, whose
//!   listening socket can get a small `SO_RCVBUF` and a small `TCP_MAXSEG` (set before
//!   `listen(2)`, so every accepted connection inherits them: a WAN-like MSS on loopback).
//! - Hostile CLIENTS: one that never reads (small `SO_RCVBUF`), one that sends one byte of a
//!   TLS record after the handshake, one that dribbles a body, one with thousands of
//!   `Connection` tokens.
//! - Observers: how a TCP connection looks from the gateway's side (`/proc/net/tcp`), and
//!   "was this connection closed by the peer" with a byte cap and a deadline.
//!
//! Every thread here is bounded: it ends when its owner is dropped (stop flag) and in any case
//! after `MAX_LIFETIME`. Everything talks to 127.0.0.1 only.

use super::Received;
use super::pki::{Leaf, Tls, tls_connect};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any hostile peer thread lives, whatever happens to the test.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Socket options

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a live c_int with its size.
    unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    value
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Options for a socket, applied before `listen(2)` / `connect(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SockOpts {
    /// `SO_RCVBUF` in bytes (the kernel doubles it and applies a minimum).
    pub rcvbuf: Option<i32>,
    /// `TCP_MAXSEG`: the MSS this side announces (536 simulates a small WAN MSS on loopback).
    pub mss: Option<i32>,
}

fn new_tcp_socket(opts: SockOpts) -> std::io::Result<i32> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let set = || -> std::io::Result<()> {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if let Some(n) = opts.rcvbuf {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n)?;
        }
        if let Some(n) = opts.mss {
            setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, n)?;
        }
        Ok(())
    };
    if let Err(e) = set() {
        // SAFETY: closing the fd we just made and nobody else owns.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// A listener on a free 127.0.0.1 port whose options are set BEFORE `listen(2)`, so every
/// accepted connection inherits them (std's `TcpListener::bind` listens at once).
pub fn tuned_listener(opts: SockOpts) -> TcpListener {
    let fd = new_tcp_socket(opts).expect("socket");
    // SAFETY: `fd` is a fresh socket we own; the TcpListener takes ownership (closes it).
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let addr = sockaddr_v4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    // SAFETY: bind(2)/listen(2) on our socket with a live sockaddr_in and its size.
    unsafe {
        assert_eq!(
            libc::bind(
                fd,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::listen(fd, 128),
            0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
    }
    listener
}

/// A client connection to `addr` (IPv4) whose options are set before `connect(2)` (a small
/// `SO_RCVBUF` must be set before the handshake to shrink the announced window).
pub fn tuned_connect(addr: SocketAddr, opts: SockOpts) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let fd = new_tcp_socket(opts).expect("socket");
    // SAFETY: `fd` is a fresh socket we own; the TcpStream takes ownership (closes it).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sa = sockaddr_v4(v4);
    // SAFETY: connect(2) on our socket with a live sockaddr_in and its size.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect {addr}: {}", std::io::Error::last_os_error());
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// The receive buffer the kernel actually gave `s` (for sanity checks).
pub fn rcvbuf_of(s: &impl AsRawFd) -> i32 {
    getsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)
}

// ---------------------------------------------------------------------------------------------
// Observers

/// TCP states as in `/proc/net/tcp` (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_FIN_WAIT1: u8 = 0x04;
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// The state of the IPv4 socket whose local port is `local_port` and remote port is
/// `remote_port` (both on 127.0.0.1), or `None` when there is no such socket (closed and
/// gone, or reset). Used to see the GATEWAY's side of a client connection: local = the
/// gateway's listen port, remote = the client's local port. That shows a close even while a
/// client that never reads has a zero window, when the FIN cannot reach it yet.
pub fn tcp_state(local_port: u16, remote_port: u16) -> Option<u8> {
    let cols = proc_net_tcp_row(local_port, remote_port)?;
    u8::from_str_radix(cols.get(3)?, 16).ok()
}

/// The `(tx_queue, rx_queue)` byte counts of the socket found like [`tcp_state`].
pub fn tcp_queues(local_port: u16, remote_port: u16) -> Option<(u64, u64)> {
    let cols = proc_net_tcp_row(local_port, remote_port)?;
    let (tx, rx) = cols.get(4)?.split_once(':')?;
    Some((
        u64::from_str_radix(tx, 16).ok()?,
        u64::from_str_radix(rx, 16).ok()?,
    ))
}

/// The columns of the `/proc/net/tcp` row with this local and remote port.
fn proc_net_tcp_row(local_port: u16, remote_port: u16) -> Option<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |col: &str| {
        col.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() >= 5 && port(cols[1]) == Some(local_port) && port(cols[2]) == Some(remote_port))
            .then(|| cols.iter().map(|c| c.to_string()).collect())
    })
}

/// Whether the gateway side of client connection `client` (to gateway port `gw_port`) is
/// still open: present and ESTABLISHED (or CLOSE_WAIT: the client half-closed, the gateway
/// has not).
pub fn gateway_side_open(gw_port: u16, client: &TcpStream) -> bool {
    let client_port = client.local_addr().map(|a| a.port()).unwrap_or(0);
    matches!(
        tcp_state(gw_port, client_port),
        Some(TCP_ESTABLISHED) | Some(TCP_CLOSE_WAIT)
    )
}

/// How a read-until-closed ended.
#[derive(Debug)]
pub enum Closed {
    /// The peer closed (EOF) after `bytes` bytes.
    Eof { bytes: usize },
    /// The peer reset the connection (or another hard error) after `bytes` bytes.
    Reset { bytes: usize, error: String },
}

/// Reads (and discards) until the peer closes or resets the connection. `Err` when the
/// connection is still open: a read waited `idle` with nothing arriving, `deadline` passed,
/// or more than `max_bytes` arrived (the peer is still streaming to us).
pub fn read_until_closed(
    s: &mut TcpStream,
    max_bytes: usize,
    idle: Duration,
    deadline: Duration,
) -> Result<Closed, String> {
    let started = Instant::now();
    s.set_read_timeout(Some(idle)).unwrap();
    let mut total = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        if started.elapsed() > deadline {
            return Err(format!(
                "still open after {:?} ({total} bytes read)",
                started.elapsed()
            ));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(Closed::Eof { bytes: total }),
            Ok(n) => {
                total += n;
                if total > max_bytes {
                    return Err(format!(
                        "still streaming: more than {max_bytes} bytes read before any close"
                    ));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "still open: nothing arrived for {idle:?} ({total} bytes read in {:?})",
                    started.elapsed()
                ));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Ok(Closed::Reset {
                    bytes: total,
                    error: e.to_string(),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile origins

/// One accepted connection of a [`HostileOrigin`], handed to its script.
pub struct Peer {
    pub stream: TcpStream,
    /// 1-based, in accept order.
    pub id: usize,
    /// Bytes read but not consumed yet.
    pub buf: Vec<u8>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Event>>>,
    started: Instant,
}

/// Something an origin script noted (`what`), on connection `conn`, at `at`.
#[derive(Debug, Clone)]
pub struct Event {
    pub conn: usize,
    pub at: Instant,
    pub what: String,
}

impl Peer {
    /// Whether the origin is being dropped (or this thread has lived too long).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.started.elapsed() > MAX_LIFETIME
    }

    /// Records an event in the origin's log.
    pub fn note(&self, what: impl Into<String>) {
        self.log.lock().unwrap().push(Event {
            conn: self.id,
            at: Instant::now(),
            what: what.into(),
        });
    }

    /// Reads more bytes into `buf`. `Some(false)` on EOF, `None` on an error or stop.
    fn fill(&mut self) -> Option<bool> {
        let mut chunk = [0u8; 65536];
        loop {
            if self.stopped() {
                return None;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Some(true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads one request head (up to and including the blank line), records it as
    /// `head:<the whole head>` in the log and returns it; any bytes after it stay in `buf`.
    /// `None` on EOF (noted as `eof`), error or stop.
    pub fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p + 4]).into_owned();
                self.buf.drain(..p + 4);
                self.note(format!("head:{head}"));
                return Some(head);
            }
            match self.fill() {
                Some(true) => {}
                Some(false) => {
                    self.note("eof");
                    return None;
                }
                None => return None,
            }
        }
    }

    /// Reads exactly `n` body bytes (after a head).
    pub fn read_body(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill() != Some(true) {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Writes all of `bytes`; `false` on error.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Keeps the connection open and never reads from it again, until the origin is dropped.
    pub fn hold(&self) {
        while !self.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Echoes raw bytes (first what is already buffered) until EOF, error or stop.
    pub fn echo_raw(&mut self) {
        loop {
            if !self.buf.is_empty() {
                let pending = std::mem::take(&mut self.buf);
                if self.stream.write_all(&pending).is_err() {
                    return;
                }
            }
            match self.fill() {
                Some(true) => {}
                Some(false) => {
                    self.note("eof");
                    return;
                }
                None => return,
            }
        }
    }
}

type Script = dyn Fn(&mut Peer) + Send + Sync;

/// An origin whose every connection runs a script on a raw blocking socket.
pub struct HostileOrigin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
}

impl HostileOrigin {
    /// Listens on a free port with `opts` (set before `listen`) and runs `script` for every
    /// accepted connection on its own thread. Reads time out every 200 ms so that scripts
    /// notice the stop flag.
    pub fn start(opts: SockOpts, script: impl Fn(&mut Peer) + Send + Sync + 'static) -> Self {
        let listener = tuned_listener(opts);
        let addr = listener.local_addr().unwrap();
        let origin = HostileOrigin {
            addr,
            connections: Arc::new(AtomicUsize::new(0)),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let script: Arc<Script> = Arc::new(script);
        let (connections, log, stop) = (
            origin.connections.clone(),
            origin.log.clone(),
            origin.stop.clone(),
        );
        let started = Instant::now();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) || started.elapsed() > MAX_LIFETIME {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let id = connections.fetch_add(1, Ordering::AcqRel) + 1;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                let mut peer = Peer {
                    stream,
                    id,
                    buf: Vec::new(),
                    stop: stop.clone(),
                    log: log.clone(),
                    started: Instant::now(),
                };
                let script = script.clone();
                std::thread::spawn(move || script(&mut peer));
            }
        });
        origin
    }

    /// Everything the scripts noted so far, in order.
    pub fn log(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    /// The events whose text starts with `prefix`.
    pub fn events(&self, prefix: &str) -> Vec<Event> {
        self.log()
            .into_iter()
            .filter(|e| e.what.starts_with(prefix))
            .collect()
    }

    /// The request heads received (whole heads, CRLFs included), in order.
    pub fn heads(&self) -> Vec<String> {
        self.events("head:")
            .into_iter()
            .map(|e| e.what["head:".len()..].to_string())
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

impl Drop for HostileOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // wake the accept loop so it sees the flag
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

/// H1: an origin with `SO_RCVBUF = 2048` and `TCP_MAXSEG = 536` on its listening socket.
/// `GET` gets `200` with a 60 000-byte `X-Pad` header and a 10 000-byte body (the big
/// response that grows the gateway's buffers). Anything else (a `POST`) gets
/// `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok` after only its head was read, and the
/// connection is then held open and never read again (noted as `early-answered`).
pub fn early_answer_origin() -> HostileOrigin {
    let pad = "a".repeat(60_000);
    let big = {
        let mut r = format!("HTTP/1.1 200 OK\r\nX-Pad: {pad}\r\nContent-Length: 10000\r\n\r\n")
            .into_bytes();
        r.extend(std::iter::repeat_n(b'b', 10_000));
        r
    };
    HostileOrigin::start(
        SockOpts {
            rcvbuf: Some(2048),
            mss: Some(536),
        },
        move |peer| {
            while let Some(head) = peer.read_head() {
                if head.starts_with("GET ") {
                    if !peer.send(&big) {
                        return;
                    }
                } else {
                    let _ = peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    peer.note("early-answered");
                    peer.hold();
                    return;
                }
            }
        },
    )
}

/// M2: an origin (`SO_RCVBUF = 2048`) that accepts and never reads a byte.
pub fn never_reading_origin() -> HostileOrigin {
    HostileOrigin::start(
        SockOpts {
            rcvbuf: Some(2048),
            mss: None,
        },
        |peer| {
            peer.note("accepted");
            peer.hold();
        },
    )
}

/// M6: answers ANY request with `101 Switching Protocols` (websocket), asked or not, then
/// echoes raw bytes both ways until the connection ends.
pub fn unsolicited_101_origin() -> HostileOrigin {
    HostileOrigin::start(SockOpts::default(), |peer| {
        if peer.read_head().is_none() {
            return;
        }
        if !peer.send(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        ) {
            return;
        }
        peer.note("switched");
        peer.echo_raw();
    })
}

/// Answers every (bodiless) request `200 pooled`, and notes `eof` when the gateway closes the
/// connection: to see when pooled upstream connections are closed.
pub fn eof_watching_origin() -> HostileOrigin {
    HostileOrigin::start(SockOpts::default(), |peer| {
        while peer.read_head().is_some() {
            if !peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\npooled") {
                return;
            }
        }
    })
}

/// L1: answers the first request of each connection (`200 first`), then reads the second
/// one (head and body, recorded like every request) and closes without answering.
pub fn closes_on_second_request_origin() -> super::Origin {
    super::Origin::start(|r: &Received| {
        if r.index_on_connection == 0 {
            super::ok(b"first")
        } else {
            super::Action::Close
        }
    })
}

/// The size of the first response the M8 TLS origin sends (head and body), as in the audit.
pub const POISON_FIRST_RESPONSE: usize = 3978;

/// M8: a TLS origin (rustls, no session tickets) certified by `leaf`. A request for a path
/// starting with `/a` gets a complete `200` response of exactly [`POISON_FIRST_RESPONSE`]
/// bytes followed, in the same TCP write but as a separate TLS record, by
/// `HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON` plus 250 bytes of padding. Any other
/// request gets `200 fresh`.
pub fn tls_poison_origin(leaf: &Leaf) -> HostileOrigin {
    let mut config = super::pki::server_config(leaf);
    config.send_tls13_tickets = 0;
    let config = Arc::new(config);
    let first = {
        let head_len = "HTTP/1.1 200 OK\r\ncontent-length: 0000\r\n\r\n".len();
        let body_len = POISON_FIRST_RESPONSE - head_len;
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len:04}\r\n\r\n").into_bytes();
        r.extend(std::iter::repeat_n(b'A', body_len));
        assert_eq!(r.len(), POISON_FIRST_RESPONSE);
        r
    };
    let mut poison = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON".to_vec();
    poison.extend(std::iter::repeat_n(b'P', 250));
    HostileOrigin::start(SockOpts::default(), move |peer| {
        let _ = peer.stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        while conn.is_handshaking() {
            if conn.complete_io(&mut peer.stream).is_err() {
                return;
            }
        }
        let mut plain: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            // one request head, in plaintext
            let end = loop {
                if let Some(p) = plain.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                if peer.stopped() {
                    return;
                }
                match conn.reader().read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        plain.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                match conn.read_tls(&mut peer.stream) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if conn.process_new_packets().is_err() {
                            return;
                        }
                    }
                }
            };
            let head = String::from_utf8_lossy(&plain[..end]).into_owned();
            plain.drain(..end);
            let line = head.split("\r\n").next().unwrap_or("").to_string();
            peer.note(format!("head:{head}"));
            let path = line.split(' ').nth(1).unwrap_or("");
            if path.starts_with("/a") {
                // two writes: two records (rustls seals each write on its own)
                if conn.writer().write_all(&first).is_err()
                    || conn.writer().write_all(&poison).is_err()
                {
                    return;
                }
                peer.note("poisoned");
            } else if conn
                .writer()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
                .is_err()
            {
                return;
            }
            // ...and all of it in one TCP write
            let mut out = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    return;
                }
            }
            if peer.stream.write_all(&out).is_err() {
                return;
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Hostile clients

/// H2: a client connection with a tiny receive buffer (`SO_RCVBUF = 4096`) that the test then
/// never reads from.
pub fn never_reading_client(addr: SocketAddr) -> TcpStream {
    tuned_connect(
        addr,
        SockOpts {
            rcvbuf: Some(4096),
            mss: None,
        },
    )
}

/// H3: completes a TLS handshake, then writes ONE raw byte (`0x17`, the first byte of an
/// application-data record header) to the TCP socket and says nothing more. Keep the
/// returned stream alive for as long as the client should hold the connection.
pub fn tls_one_byte_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<Tls> {
    let mut tls = tls_connect(addr, config, sni)?;
    tls.sock.write_all(&[0x17])?;
    Ok(tls)
}

/// `n` `Connection` tokens: `a,a,...,a`.
pub fn connection_tokens(n: usize) -> String {
    vec!["a"; n].join(",")
}

/// A background writer, stopped and joined on drop. Bounded by its data and by `MAX_LIFETIME`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn written(&self) -> usize {
        self.written.load(Ordering::Acquire)
    }
    /// Whether the writer has finished (all sent, an error, or stopped).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Writes `data` to `stream` in `chunk`-byte pieces, sleeping `every` between pieces, until
/// all is written, a write fails (a 1 s write timeout is set: a write that cannot progress
/// for that long is retried until the stop flag is set) or the writer is dropped.
pub fn spawn_writer(stream: TcpStream, data: Vec<u8>, chunk: usize, every: Duration) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let (stop2, written2) = (stop.clone(), written.clone());
    let handle = std::thread::spawn(move || {
        let mut s = stream;
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let started = Instant::now();
        let mut pos = 0;
        while pos < data.len() {
            if stop2.load(Ordering::Acquire) || started.elapsed() > MAX_LIFETIME {
                return;
            }
            let end = (pos + chunk).min(data.len());
            match s.write(&data[pos..end]) {
                Ok(0) => return,
                Ok(n) => {
                    pos += n;
                    written2.fetch_add(n, Ordering::AcqRel);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
            if !every.is_zero() {
                // sleep in small steps so a drop is noticed quickly
                let until = Instant::now() + every;
                while Instant::now() < until && !stop2.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
    Writer {
        stop,
        written,
        handle: Some(handle),
    }
}

/// L3: dribbles `body` one byte every `every` (from a clone of the stream).
pub fn dribble(stream: &TcpStream, body: &[u8], every: Duration) -> Writer {
    spawn_writer(stream.try_clone().unwrap(), body.to_vec(), 1, every)
}
