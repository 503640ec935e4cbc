//! Buffered connection I/O on owned buffers (monoio's rent model): a read buffer that parsed
//! heads point into, deadline-bounded reads, and zero-copy forwarding of buffered bytes.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;
use std::cell::RefCell;
use std::io;

/// A connection with its read buffer. Bytes in `buf[pos..]` are read but not yet consumed.
///
/// Cancellation safety: a read or write lends `buf` to the kernel (monoio's rent model). If
/// that future is dropped mid-way (a `select!` or a timeout), the buffer does not come back.
/// Every such operation therefore first puts the `BufConn` in the state a drop leaves behind
/// (empty buffer, `pos = 0`, `lost = true`) and restores it only on completion, so every
/// accessor stays in bounds whatever happens. A connection that `lost_bytes()` cannot carry
/// another message (its stream position is unknown) and must be closed.
pub struct BufConn<S> {
    pub io: S,
    buf: Vec<u8>,
    pos: usize,
    lost: bool,
}

/// Why a read did not produce bytes.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending anything more.
    Closed,
    TimedOut,
    Io(io::Error),
    /// The buffer is full of unconsumed bytes (the caller's limit should have caught it).
    BufferFull,
}

impl<S: AsyncReadRent> BufConn<S> {
    pub fn new(io: S, mut buf: Vec<u8>) -> Self {
        buf.clear();
        BufConn {
            io,
            buf,
            pos: 0,
            lost: false,
        }
    }

    /// Whether an operation on this connection was cancelled mid-way: bytes may have been
    /// read or written that nobody accounted for, so it must not carry another message.
    pub fn lost_bytes(&self) -> bool {
        self.lost
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The unconsumed bytes, for in-place rewriting (path normalisation).
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Moves unconsumed bytes to the front so a parsed head starts at offset 0 and the buffer
    /// has room to grow.
    pub fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Hands the (empty) read buffer out, e.g. back to a pool while the connection idles.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        debug_assert!(self.buffered().is_empty());
        self.pos = 0;
        std::mem::take(&mut self.buf)
    }

    /// Gives the connection a read buffer again (after `take_buffer`, or after a cancelled
    /// operation kept the old one).
    pub fn restore_buffer(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.buf = buf;
        self.pos = 0;
    }

    /// Reads more bytes after the buffered ones, giving up at `deadline`.
    pub async fn fill_until(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        // On timeout the in-flight read keeps the buffer; the caller closes this connection,
        // so the bytes it may still receive are never needed.
        monoio::time::timeout_at(deadline, self.fill())
            .await
            .unwrap_or(Err(ReadError::TimedOut))
    }

    /// Reads more bytes after the buffered ones, with no deadline (for a socket known to be
    /// readable, or inside a caller's timeout).
    pub async fn fill(&mut self) -> Result<usize, ReadError> {
        if self.buf.len() == self.buf.capacity() {
            self.compact();
            if self.buf.len() == self.buf.capacity() {
                return Err(ReadError::BufferFull);
            }
        }
        let pos = self.lend();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = self.io.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        self.give_back(pos);
        match result {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => Ok(n),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Writes `n` buffered bytes to `dst` without copying them, then consumes them.
    pub async fn forward_buffered<W: AsyncWriteRent>(
        &mut self,
        n: usize,
        dst: &mut W,
    ) -> io::Result<()> {
        let pos = self.lend();
        let buf = std::mem::take(&mut self.buf);
        let (result, slice) = dst.write_all(buf.slice(pos..pos + n)).await;
        self.buf = slice.into_inner();
        self.give_back(pos);
        result?;
        self.consume(n);
        Ok(())
    }

    /// Enters the state a dropped operation leaves (see the type's docs); returns `pos`.
    fn lend(&mut self) -> usize {
        let pos = self.pos;
        self.pos = 0;
        self.lost = true;
        pos
    }

    /// The operation completed: the buffer is back, and so is its position.
    fn give_back(&mut self, pos: usize) {
        self.pos = pos;
        self.lost = false;
    }

    /// Moves the unconsumed bytes into `buf` and returns the old buffer, or gives `buf` back
    /// when it cannot hold them.
    pub fn swap_buffer(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        let pending = self.buffered().len();
        if pending > buf.capacity() {
            return buf;
        }
        buf.clear();
        buf.extend_from_slice(self.buffered());
        self.pos = 0;
        std::mem::replace(&mut self.buf, buf)
    }

    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.buf)
    }
}

/// Writes all of `out`, handing the buffer back for reuse.
pub async fn write_all_buf<W: AsyncWriteRent>(
    dst: &mut W,
    out: Vec<u8>,
) -> (io::Result<()>, Vec<u8>) {
    let (result, out) = dst.write_all(out).await;
    (result.map(|_| ()), out)
}

/// Writes all of `out` within `timeout` (a peer that stops reading is cut off). On timeout
/// the buffer stays with the cancelled write and an empty one comes back; the caller must
/// close the connection, whose stream position is now unknown.
pub async fn write_all_within<W: AsyncWriteRent>(
    dst: &mut W,
    out: Vec<u8>,
    timeout: std::time::Duration,
) -> (io::Result<()>, Vec<u8>) {
    match monoio::time::timeout(timeout, write_all_buf(dst, out)).await {
        Ok(done) => done,
        Err(_) => (
            Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
            Vec::new(),
        ),
    }
}

/// A shard-local free list of buffers, so requests do not allocate.
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    max_free: usize,
}

impl BufPool {
    pub fn new(max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            max_free,
        }
    }

    /// An empty buffer with at least `capacity` bytes of room.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        match self.free.borrow_mut().pop() {
            Some(mut b) if b.capacity() >= capacity => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(capacity),
        }
    }

    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free && buf.capacity() > 0 {
            free.push(buf);
        }
    }
}
