//! `ringgate echo`: a tiny, fast origin for demos, tests and benchmarks.
//!
//! - `GET /bytes/N` answers N bytes (streamed, so any size works with flat memory)
//! - `GET /headers` answers the request head it received, as text
//! - `GET /delay/MS` answers after MS milliseconds (at most 60000)
//! - a request with a body gets the same body back (chunked stays chunked)
//! - anything else gets a short fixed text
//!
//! Owns its own threads and runtimes; shares only the HTTP parser with the gateway.

use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk_header};
use crate::http::io::{BufConn, ReadError, write_all_buf};
use crate::http::{Framing, HeadLimits, RequestHead, push_decimal};
use monoio::io::AsyncWriteRentExt;
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::time::{Duration, Instant};
use std::net::SocketAddr;
use std::sync::mpsc;

const HELLO: &[u8] = b"hello from ringgate echo\n";
const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 64 * 1024,
    max_headers: 1000,
    max_uri_bytes: 16 * 1024,
};
const IDLE: Duration = Duration::from_secs(120);

/// Binds `addr` on `workers` threads and returns once all are listening.
pub fn spawn(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-{i}"))
                .spawn(move || echo_thread(addr, tx))?,
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

fn echo_thread(addr: SocketAddr, ready: mpsc::Sender<std::io::Result<()>>) {
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
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(serve(stream));
                }
                Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufConn::new(stream, Vec::with_capacity(64 * 1024));
    let mut head = RequestHead::default();
    let mut out = Vec::with_capacity(4096);
    loop {
        conn.compact();
        let parsed = loop {
            if !conn.buffered().is_empty() {
                match head.parse(conn.buffered(), &LIMITS) {
                    Ok(true) => break true,
                    Ok(false) => {}
                    Err(_) => break false,
                }
            }
            if conn.fill_until(Instant::now() + IDLE).await.is_err() {
                return;
            }
        };
        if !parsed {
            let _ = conn
                .io
                .write_all(
                    &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        [..],
                )
                .await;
            return;
        }
        out.clear();
        match respond(&mut conn, &head, &mut out).await {
            Ok(true) => {}
            _ => return,
        }
    }
}

fn push_head(out: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n");
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
async fn respond(
    conn: &mut BufConn<TcpStream>,
    head: &RequestHead,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let buf = conn.buffered();
    let path = &buf[head.path.clone()];
    let keep_alive = head.keep_alive;
    let head_method = head.is_head_method(buf);
    let framing = head.framing;
    if let Some(n) = path.strip_prefix(b"/bytes/").and_then(parse_number) {
        conn.consume(head.len);
        skip_body(conn, framing).await?;
        push_head(out, Framing::Length(n), keep_alive);
        return send_bytes(conn, std::mem::take(out), n, head_method)
            .await
            .map(|()| keep_alive);
    }
    if let Some(ms) = path.strip_prefix(b"/delay/").and_then(parse_number) {
        conn.consume(head.len);
        skip_body(conn, framing).await?;
        monoio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        push_head(out, Framing::Length(3), keep_alive);
        out.extend_from_slice(b"ok\n");
    } else if path == b"/headers" {
        let text = buf[..head.len].to_vec();
        conn.consume(head.len);
        skip_body(conn, framing).await?;
        push_head(out, Framing::Length(text.len() as u64), keep_alive);
        out.extend_from_slice(&text);
    } else if framing != Framing::None {
        conn.consume(head.len);
        push_head(out, framing, keep_alive);
        let (r, _) = write_all_buf(&mut conn.io, std::mem::take(out)).await;
        r?;
        echo_body(conn, framing).await?;
        return Ok(keep_alive);
    } else {
        conn.consume(head.len);
        push_head(out, Framing::Length(HELLO.len() as u64), keep_alive);
        if !head_method {
            out.extend_from_slice(HELLO);
        }
    }
    let (r, returned) = write_all_buf(&mut conn.io, std::mem::take(out)).await;
    *out = returned;
    r.map(|()| keep_alive)
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn send_bytes(
    conn: &mut BufConn<TcpStream>,
    mut out: Vec<u8>,
    n: u64,
    head_method: bool,
) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let mut remaining = if head_method { 0 } else { n };
    loop {
        let add = (remaining as usize).min(PIECE.saturating_sub(out.len()));
        out.resize(out.len() + add, b'x');
        remaining -= add as u64;
        let (r, returned) = write_all_buf(&mut conn.io, out).await;
        r?;
        out = returned;
        out.clear();
        if remaining == 0 {
            return Ok(());
        }
    }
}

async fn read_more(conn: &mut BufConn<TcpStream>) -> std::io::Result<()> {
    match conn.fill_until(Instant::now() + IDLE).await {
        Ok(_) => Ok(()),
        Err(ReadError::Io(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Writes the request body back as it arrives, with the request's own framing.
async fn echo_body(conn: &mut BufConn<TcpStream>, framing: Framing) -> std::io::Result<()> {
    match framing {
        Framing::Length(mut remaining) => {
            while remaining > 0 {
                if conn.buffered().is_empty() {
                    read_more(conn).await?;
                }
                let take = (conn.buffered().len() as u64).min(remaining) as usize;
                let piece = conn.buffered()[..take].to_vec();
                conn.consume(take);
                remaining -= take as u64;
                conn.io.write_all(piece).await.0?;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let mut piece = Vec::new();
                loop {
                    let step = decoder
                        .decode(conn.buffered())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    if !step.data.is_empty() {
                        write_chunk_header(&mut piece, step.data.len());
                        piece.extend_from_slice(&conn.buffered()[step.data.clone()]);
                        piece.extend_from_slice(b"\r\n");
                    }
                    conn.consume(step.consumed);
                    if step.consumed == 0 || decoder.is_done() {
                        break;
                    }
                }
                if decoder.is_done() {
                    piece.extend_from_slice(LAST_CHUNK);
                }
                if !piece.is_empty() {
                    conn.io.write_all(piece).await.0?;
                }
                if decoder.is_done() {
                    return Ok(());
                }
                read_more(conn).await?;
            }
        }
        Framing::None | Framing::UntilClose => Ok(()),
    }
}

async fn skip_body(conn: &mut BufConn<TcpStream>, framing: Framing) -> std::io::Result<()> {
    match framing {
        Framing::Length(mut remaining) => {
            while remaining > 0 {
                if conn.buffered().is_empty() {
                    read_more(conn).await?;
                }
                let take = (conn.buffered().len() as u64).min(remaining) as usize;
                conn.consume(take);
                remaining -= take as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            while !decoder.is_done() {
                let step = decoder
                    .decode(conn.buffered())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                conn.consume(step.consumed);
                if step.consumed == 0 && !decoder.is_done() {
                    read_more(conn).await?;
                }
            }
            Ok(())
        }
        Framing::None | Framing::UntilClose => Ok(()),
    }
}
