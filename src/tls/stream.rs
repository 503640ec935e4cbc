//! A TLS connection split into a read half and a write half that can be used at the same
//! time (a request body streaming up while the response streams down).
//!
//! Each half owns its socket half and its ciphertext buffer; the rustls session they share
//! sits in a `RefCell` that is only borrowed between awaits, never across one, so the two
//! halves can interleave freely and no borrow can ever conflict (no panic, no lock).

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// Ciphertext read size. rustls reassembles records across reads, so this need not hold a
/// whole record; matching the shard pool's buffer size lets idle connections lend it back.
pub const CIPHER_BUF: usize = 16 * 1024;

type Session = Rc<RefCell<rustls::Connection>>;

pub struct TlsReadHalf {
    session: Session,
    io: OwnedReadHalf<TcpStream>,
    cipher: Vec<u8>,
    pos: usize,
    /// Where the ciphertext handed to rustls stands in its record framing: a partial record
    /// inside rustls is pending input no other check can see.
    records: RecordTracker,
    /// A peer that closes TCP without `close_notify` reads as a clean end (clients do this all
    /// the time between requests); where truncation matters (origins), it is an error.
    eof_without_close_notify_is_clean: bool,
}

pub struct TlsWriteHalf {
    session: Session,
    io: OwnedWriteHalf<TcpStream>,
    out: Vec<u8>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS handshake I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed during the TLS handshake")]
    Closed,
}

/// Runs the handshake on `stream` and splits it. A rustls error sends its alert first.
pub async fn handshake(
    mut stream: TcpStream,
    session: impl Into<rustls::Connection>,
    eof_without_close_notify_is_clean: bool,
    mut cipher: Vec<u8>,
) -> Result<(TlsReadHalf, TlsWriteHalf), HandshakeError> {
    let mut session = session.into();
    // `cipher` may already hold the peer's first bytes (read to tell TLS from plain HTTP, or
    // past a PROXY header): the handshake starts with them.
    if cipher.capacity() < CIPHER_BUF {
        cipher.reserve_exact(CIPHER_BUF - cipher.len());
    }
    let mut pos = 0;
    let mut out = Vec::new();
    let mut records = RecordTracker::default();
    loop {
        flush_session(&mut session, &mut stream, &mut out).await?;
        if !session.is_handshaking() {
            break;
        }
        if pos == cipher.len() {
            cipher.clear();
            pos = 0;
            let (result, slice) = stream.read(cipher.slice_mut(0..CIPHER_BUF)).await;
            cipher = slice.into_inner();
            if result? == 0 {
                return Err(HandshakeError::Closed);
            }
        }
        match feed(&mut session, &mut records, &cipher[pos..]) {
            Ok(n) => pos += n,
            Err(e) => {
                let _ = flush_session(&mut session, &mut stream, &mut out).await;
                return Err(match e.downcast::<rustls::Error>() {
                    Ok(tls) => HandshakeError::Tls(tls),
                    Err(io) => HandshakeError::Io(io),
                });
            }
        }
    }
    let (read, write) = stream.into_split();
    let session = Rc::new(RefCell::new(session));
    out.clear();
    Ok((
        TlsReadHalf {
            session: session.clone(),
            io: read,
            cipher,
            pos,
            records,
            eof_without_close_notify_is_clean,
        },
        TlsWriteHalf {
            session,
            io: write,
            out,
        },
    ))
}

/// Follows the TLS record framing (5-byte header, then `length` bytes) of a byte stream, so
/// we know whether everything handed to rustls ends on a record boundary.
#[derive(Default, Clone, Copy)]
struct RecordTracker {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl RecordTracker {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }
}

/// Hands ciphertext to rustls and processes it; returns how many bytes it took.
fn feed(
    session: &mut rustls::Connection,
    records: &mut RecordTracker,
    mut cipher: &[u8],
) -> io::Result<usize> {
    let before = cipher.len();
    let all = cipher;
    session.read_tls(&mut cipher)?;
    let taken = before - cipher.len();
    records.advance(&all[..taken]);
    session
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(taken)
}

async fn flush_session(
    session: &mut rustls::Connection,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(out)?;
    }
    if out.is_empty() {
        return Ok(());
    }
    let (result, buf) = stream.write_all(std::mem::take(out)).await;
    *out = buf;
    out.clear();
    result.map(|_| ())
}

impl TlsReadHalf {
    /// Whether decrypted or undecrypted bytes are already waiting (so waiting for the socket
    /// to become readable would be wrong).
    pub fn has_pending(&self) -> bool {
        if self.pos < self.cipher.len() || !self.records.at_boundary() {
            return true;
        }
        match self.session.borrow_mut().process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// The subject of the certificate the peer presented, if any.
    pub fn peer_subject(&self) -> Option<String> {
        let session = self.session.borrow();
        let cert = session.peer_certificates()?.first()?;
        super::certs::subject_of(cert)
    }

    pub fn tcp(&self) -> &TcpStream {
        // SAFETY: only a shared reference to the stream is produced, used to poll readiness or
        // read the fd; the halves never hold a reference across this call.
        unsafe { &*self.io.0.get() }
    }

    fn read_plaintext(&mut self, dst: &mut [u8]) -> Option<io::Result<usize>> {
        let mut session = self.session.borrow_mut();
        loop {
            match session.reader().read(dst) {
                Ok(n) => return Some(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && self.eof_without_close_notify_is_clean =>
                {
                    return Some(Ok(0));
                }
                Err(e) => return Some(Err(e)),
            }
            if self.pos == self.cipher.len() {
                return None;
            }
            match feed(&mut session, &mut self.records, &self.cipher[self.pos..]) {
                Ok(n) => self.pos += n,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Lends the ciphertext buffer out while the connection idles (nothing undecrypted in it).
    pub fn park_buffer(&mut self) -> Option<Vec<u8>> {
        (self.pos == self.cipher.len()).then(|| {
            self.pos = 0;
            std::mem::take(&mut self.cipher)
        })
    }

    pub fn unpark_buffer(&mut self, mut buf: Vec<u8>) {
        if self.cipher.capacity() == 0 {
            buf.clear();
            self.cipher = buf;
        }
    }

    async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(result) = self.read_plaintext(dst) {
                return result;
            }
            if self.cipher.capacity() < CIPHER_BUF {
                self.cipher.reserve_exact(CIPHER_BUF);
            }
            self.cipher.clear();
            self.pos = 0;
            let cipher = std::mem::take(&mut self.cipher);
            let cap = cipher.capacity();
            let (result, slice) = self.io.read(cipher.slice_mut(0..cap)).await;
            self.cipher = slice.into_inner();
            if result? == 0 {
                // Tell rustls the transport ended; the next read_plaintext reports how.
                self.session.borrow_mut().read_tls(&mut &[][..])?;
            }
        }
    }
}

impl AsyncReadRent for TlsReadHalf {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the slice covers the buffer's writable capacity and is dropped before
        // `set_init`; the buffer is owned by this future for the whole call.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        let result = self.read_into(dst).await;
        if let Ok(n) = result {
            // SAFETY: rustls wrote `n` bytes at the start of the writable region.
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: RawBuf points at the first iovec, which `buf` keeps alive for this call.
        let result = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = result {
            // SAFETY: `n` bytes were written into the first iovec.
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }
}

impl TlsWriteHalf {
    async fn write_from(&mut self, src: &[u8]) -> io::Result<usize> {
        let n = {
            let mut session = self.session.borrow_mut();
            let n = session.writer().write(src)?;
            while session.wants_write() {
                session.write_tls(&mut self.out)?;
            }
            n
        };
        self.send_out().await?;
        Ok(n)
    }

    async fn send_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (result, mut out) = self.io.write_all(std::mem::take(&mut self.out)).await;
        out.clear();
        self.out = out;
        result.map(|_| ())
    }

    /// Lends the output buffer out while the connection idles (it is empty between writes).
    pub fn park_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn unpark_buffer(&mut self, mut buf: Vec<u8>) {
        if self.out.capacity() == 0 {
            buf.clear();
            self.out = buf;
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        // SAFETY: see TlsReadHalf::tcp.
        unsafe { &*self.io.0.get() }
    }
}

impl AsyncWriteRent for TlsWriteHalf {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the slice covers the initialised bytes of `buf`, owned by this future.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let result = self.write_from(src).await;
        (result, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: RawBuf points at the first iovec, which `buf` keeps alive for this call.
        let result = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_out().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        {
            let mut session = self.session.borrow_mut();
            session.send_close_notify();
            while session.wants_write() {
                session.write_tls(&mut self.out)?;
            }
        }
        self.send_out().await?;
        self.io.shutdown().await
    }
}
