//! `ringgate echo`: a tiny, fast origin for demos, tests and benchmarks.
//!
//! - `GET /bytes/N` answers N bytes (streamed, so any size works with flat memory)
//! - `GET /headers` answers the request head it received, as text, after an `x-origin` line
//!   naming this origin (every answer also carries an `x-origin` header: which origin
//!   answered shows how a gateway balances)
//! - `GET /delay/MS` answers after MS milliseconds (at most 60000)
//! - a request with a body gets the same body back (chunked stays chunked)
//! - anything else gets a short fixed text
//!
//! Plain HTTP, or TLS with a self-signed certificate ([`self_signed`]) for demos of TLS
//! upstreams. Owns its own threads and runtimes; shares only the HTTP parser and the TLS
//! stream with the gateway.

use crate::http::body::{BodyLimits, stream_body};
use crate::http::io::{BufConn, write_all_buf};
use crate::http::{Framing, HeadLimits, RequestHead, push_decimal};
use crate::tls::{ConnRead, ConnWrite};
use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::time::{Duration, Instant};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, mpsc};

const HELLO: &[u8] = b"hello from ringgate echo\n";
const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 64 * 1024,
    max_headers: 1000,
    max_uri_bytes: 16 * 1024,
};
const IDLE: Duration = Duration::from_secs(120);

/// Binds `addr` on `workers` threads and returns once all are listening; with `tls`, every
/// connection starts with a TLS handshake.
pub fn spawn(
    addr: SocketAddr,
    workers: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let tx = tx.clone();
        let tls = tls.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-{i}"))
                .spawn(move || echo_thread(addr, tls, tx))?,
        );
    }
    drop(tx);
    for _ in 0..workers.max(1) {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("echo thread exited during start-up")),
        }
    }
    Ok(threads)
}

/// A self-signed certificate and key for `names` (DNS names or IP addresses; `localhost`,
/// 127.0.0.1 and ::1 are always included), written as `cert.pem` and `key.pem` (0600) in a
/// new private folder (0700, an unpredictable name) under the temporary directory. Returns
/// (certificate, key) paths: the certificate is its own CA.
pub fn self_signed(purpose: &str, names: &[String]) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let cert = rcgen::generate_simple_self_signed(all)
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| "no randomness for a folder name".to_string())?;
    let suffix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("ringgate-{purpose}-{suffix}"));
    // create, not create_dir_all: the folder must be new (nobody else's, no symlink).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let cert_path = write("cert.pem", cert.cert.pem())?;
    let key_path = write("key.pem", cert.signing_key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// A TLS server config for the echo origin from a certificate and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let settings = crate::tls::ServerTlsSettings {
        certificates: vec![(cert, key)],
        allow_tls12: true,
        client_ca: None,
        client_cert_required: false,
        alpn: &[],
        handshake_timeout: Duration::from_secs(10),
    };
    crate::tls::server_tls(&settings, Path::new("."))
        .map(|t| t.config)
        .map_err(|problems| {
            problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

fn echo_thread(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    ready: mpsc::Sender<std::io::Result<()>>,
) {
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        let listener = match TcpListener::bind_with_config(addr, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let name: Rc<str> = addr.to_string().into();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(serve(stream, tls.clone(), name.clone()));
                }
                Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

type EchoReader = BufConn<ConnRead>;
type EchoWriter = ConnWrite;

/// One echo connection: split so an echoed body streams back while it arrives.
struct EchoConn {
    reader: EchoReader,
    writer: EchoWriter,
    out: Vec<u8>,
    scratch: Vec<u8>,
    /// This origin's address, in `x-origin`.
    name: Rc<str>,
}

async fn serve(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, name: Rc<str>) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = match tls {
        None => {
            let (r, w) = stream.into_split();
            (ConnRead::Plain(r), ConnWrite::Plain(w))
        }
        Some(config) => {
            let Ok(session) = rustls::ServerConnection::new(config) else {
                return;
            };
            let handshake = crate::tls::handshake(stream, session, true, Vec::new());
            match monoio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok((r, w))) => (ConnRead::Tls(Box::new(r)), ConnWrite::Tls(Box::new(w))),
                _ => return,
            }
        }
    };
    let mut c = EchoConn {
        reader: BufConn::new(reader, Vec::with_capacity(64 * 1024)),
        writer,
        out: Vec::with_capacity(4096),
        scratch: Vec::new(),
        name,
    };
    let mut head = RequestHead::default();
    loop {
        c.reader.compact();
        let parsed = loop {
            if !c.reader.buffered().is_empty() {
                match head.parse(c.reader.buffered(), &LIMITS) {
                    Ok(true) => break true,
                    Ok(false) => {}
                    Err(_) => break false,
                }
            }
            if c.reader.fill_until(Instant::now() + IDLE).await.is_err() {
                return;
            }
        };
        if !parsed {
            let bad =
                &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"[..];
            let _ = c.writer.write_all(bad).await;
            return;
        }
        c.out.clear();
        match respond(&mut c, &head).await {
            Ok(true) => {}
            _ => return,
        }
    }
}

fn push_head(out: &mut Vec<u8>, name: &str, framing: Framing, keep_alive: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-origin: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => out.extend_from_slice(b"content-length: 0\r\n"),
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Answers one request; `Ok(true)` keeps the connection.
async fn respond(c: &mut EchoConn, head: &RequestHead) -> std::io::Result<bool> {
    let buf = c.reader.buffered();
    let path = &buf[head.path.clone()];
    let keep_alive = head.keep_alive;
    let head_method = head.is_head_method(buf);
    let framing = head.framing;
    let bytes = path.strip_prefix(b"/bytes/").and_then(parse_number);
    let delay = path.strip_prefix(b"/delay/").and_then(parse_number);
    if path == b"/headers" {
        let text = &buf[..head.len];
        let origin_line = format!("x-origin: {}\r\n", c.name);
        let len = (origin_line.len() + text.len()) as u64;
        push_head(&mut c.out, &c.name, Framing::Length(len), keep_alive);
        c.out.extend_from_slice(origin_line.as_bytes());
        c.out.extend_from_slice(text);
    }
    c.reader.consume(head.len);
    if let Some(n) = bytes {
        skip_body(&mut c.reader, framing, &mut c.scratch).await?;
        push_head(&mut c.out, &c.name, Framing::Length(n), keep_alive);
        send_bytes(c, if head_method { 0 } else { n }).await?;
        return Ok(keep_alive);
    }
    if let Some(ms) = delay {
        skip_body(&mut c.reader, framing, &mut c.scratch).await?;
        monoio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        push_head(&mut c.out, &c.name, Framing::Length(3), keep_alive);
        c.out.extend_from_slice(b"ok\n");
    } else if !c.out.is_empty() {
        skip_body(&mut c.reader, framing, &mut c.scratch).await?;
    } else if framing != Framing::None {
        push_head(&mut c.out, &c.name, framing, keep_alive);
        flush_out(c).await?;
        echo_body(&mut c.reader, &mut c.writer, framing, &mut c.scratch).await?;
        return Ok(keep_alive);
    } else {
        push_head(
            &mut c.out,
            &c.name,
            Framing::Length(HELLO.len() as u64),
            keep_alive,
        );
        if !head_method {
            c.out.extend_from_slice(HELLO);
        }
    }
    flush_out(c).await?;
    Ok(keep_alive)
}

async fn flush_out(c: &mut EchoConn) -> std::io::Result<()> {
    let (result, out) = write_all_buf(&mut c.writer, std::mem::take(&mut c.out)).await;
    c.out = out;
    c.out.clear();
    result
}

/// Sends the head already in `c.out` followed by `n` bytes, in 64 KiB writes.
async fn send_bytes(c: &mut EchoConn, n: u64) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let mut remaining = n;
    loop {
        let add = (remaining as usize).min(PIECE.saturating_sub(c.out.len()));
        c.out.resize(c.out.len() + add, b'x');
        remaining -= add as u64;
        flush_out(c).await?;
        if remaining == 0 {
            return Ok(());
        }
    }
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Echoed and skipped bodies go through the gateway's own streaming code.
const BODY_LIMITS: BodyLimits = BodyLimits {
    max_bytes: u64::MAX,
    read_timeout: IDLE,
    write_timeout: IDLE,
    read_deadline: None,
};

/// Writes the request body back as it arrives, with the request's own framing.
async fn echo_body(
    conn: &mut EchoReader,
    writer: &mut EchoWriter,
    framing: Framing,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    let rechunk = framing == Framing::Chunked;
    stream_body(conn, writer, framing, rechunk, BODY_LIMITS, scratch)
        .await
        .map_err(|e| std::io::Error::other(format!("{e:?}")))
}

/// Reads and drops a request body the response does not depend on.
async fn skip_body(
    conn: &mut EchoReader,
    framing: Framing,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    stream_body(conn, &mut Discard, framing, false, BODY_LIMITS, scratch)
        .await
        .map_err(|e| std::io::Error::other(format!("{e:?}")))
}

/// A writer that accepts and drops everything.
struct Discard;

impl AsyncWriteRent for Discard {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(buf.bytes_init()), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf_vec: T) -> monoio::BufResult<usize, T> {
        let total = (0..buf_vec.read_iovec_len())
            // SAFETY: the IoVecBuf contract makes the pointer valid for `read_iovec_len` entries.
            .map(|i| unsafe { (*buf_vec.read_iovec_ptr().add(i)).iov_len })
            .sum();
        (Ok(total), buf_vec)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
