//! TLS termination (and origination towards TLS upstreams) with rustls.
//!
//! Owns: loading certificates and keys (errors name the file), the SNI certificate choice with
//! a default, client-certificate verification (mTLS), protocol versions, ALPN, session
//! resumption, and the split TLS stream. Must not parse HTTP or touch routing: the request
//! path only sees [`ConnRead`]/[`ConnWrite`], which are plain TCP or TLS alike.
//!
//! Handshakes run on the shard that accepted the connection. Resumption uses stateless
//! tickets shared by all shards (a resumed client may land on any shard); the ticket key
//! rotation inside rustls takes an uncontended read lock once per handshake, never per request.

mod certs;
mod stream;

pub use certs::{
    ClientTls, ServerTls, ServerTlsSettings, TlsProblem, client_tls, server_tls, trust_also,
};
pub use stream::{CIPHER_BUF, HandshakeError, TlsReadHalf, TlsWriteHalf, handshake};

use crate::http::io::BufPool;
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The read half of a client or upstream connection.
pub enum ConnRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(Box<TlsReadHalf>),
}

/// The write half of a client or upstream connection.
pub enum ConnWrite {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(Box<TlsWriteHalf>),
}

impl ConnRead {
    fn tcp(&self) -> &TcpStream {
        match self {
            // SAFETY: a shared reference used only to poll readiness or read the fd; the
            // halves never hold a reference to the stream across this call.
            ConnRead::Plain(r) => unsafe { &*r.0.get() },
            ConnRead::Tls(t) => t.tcp(),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ConnRead::Tls(_))
    }

    /// Lends TLS buffers to `pool` while the connection idles (plain halves hold none).
    pub fn park_buffers(&mut self, pool: &BufPool) {
        if let ConnRead::Tls(t) = self
            && let Some(buf) = t.park_buffer()
        {
            pool.give(buf);
        }
    }

    pub fn unpark_buffers(&mut self, pool: &BufPool) {
        if let ConnRead::Tls(t) = self {
            t.unpark_buffer(pool.take(16 * 1024));
        }
    }

    /// Whether bytes were already read from the socket that no one has consumed (TLS:
    /// ciphertext not yet decrypted, a partial record, or plaintext not yet read). A pooled
    /// connection with any of these would hand them to the next request.
    pub fn has_pending(&self) -> bool {
        match self {
            ConnRead::Plain(_) => false,
            ConnRead::Tls(t) => t.has_pending(),
        }
    }

    /// Waits until a read would not block: the socket is readable, or TLS already holds bytes.
    pub async fn readable(&self) -> io::Result<()> {
        if let ConnRead::Tls(t) = self
            && t.has_pending()
        {
            return Ok(());
        }
        self.tcp().readable(true).await.map(|_| ())
    }
}

impl ConnWrite {
    /// Lends TLS buffers to `pool` while the connection idles (plain halves hold none).
    pub fn park_buffers(&mut self, pool: &BufPool) {
        if let ConnWrite::Tls(t) = self {
            pool.give(t.park_buffer());
        }
    }

    pub fn unpark_buffers(&mut self, pool: &BufPool) {
        if let ConnWrite::Tls(t) = self {
            t.unpark_buffer(pool.take(4096));
        }
    }
}

impl AsyncReadRent for ConnRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ConnRead::Plain(r) => r.read(buf).await,
            ConnRead::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ConnRead::Plain(r) => r.readv(buf).await,
            ConnRead::Tls(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for ConnWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ConnWrite::Plain(w) => w.write(buf).await,
            ConnWrite::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ConnWrite::Plain(w) => w.writev(buf).await,
            ConnWrite::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ConnWrite::Plain(w) => w.flush().await,
            ConnWrite::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ConnWrite::Plain(w) => w.shutdown().await,
            ConnWrite::Tls(t) => t.shutdown().await,
        }
    }
}
