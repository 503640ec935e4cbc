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
/// (empty buffer, `pos = 0`, `in_flight`) and restores it only on completion, so every
/// accessor stays in bounds whatever happens. A connection that `lost_bytes()` cannot carry
/// another message (its stream position is unknown) and must be closed.
pub struct BufConn<S> {
    pub io: S,
    buf: Vec<u8>,
    pos: usize,
    /// An operation lent the buffer out and has not given it back (yet, or ever: dropped).
    in_flight: bool,
    /// An earlier operation was dropped mid-way; sticky.
    lost: bool,
    /// Bytes consumed over the connection's life (a request's share is the difference).
    consumed: u64,
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
            in_flight: false,
            lost: false,
            consumed: 0,
        }
    }

    /// Like [`BufConn::new`], with `early` already read from the connection (bytes a
    /// preamble read took past its end). `buf` must be able to hold them.
    pub fn with_buffered(io: S, mut buf: Vec<u8>, early: &[u8]) -> Self {
        buf.clear();
        buf.extend_from_slice(early);
        BufConn {
            io,
            buf,
            pos: 0,
            in_flight: false,
            lost: false,
            consumed: 0,
        }
    }

    /// Puts `bytes` back in front of the unconsumed ones, as if never consumed (a head set
    /// aside while its body was read whole). The buffer grows if it must.
    pub fn unread(&mut self, bytes: &[u8]) {
        if self.pos >= bytes.len() {
            self.pos -= bytes.len();
            self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        } else {
            self.buf.splice(self.pos..self.pos, bytes.iter().copied());
        }
        self.consumed -= bytes.len() as u64;
    }

    /// Bytes consumed so far (read and dealt with), over the connection's life.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether an operation on this connection was cancelled mid-way: bytes may have been
    /// read or written that nobody accounted for, so it must not carry another message.
    pub fn lost_bytes(&self) -> bool {
        self.lost || self.in_flight
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The unconsumed bytes, for in-place rewriting (path normalisation).
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.consumed += n as u64;
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
        // Still in flight: the previous operation never came back.
        self.lost |= self.in_flight;
        self.in_flight = true;
        let pos = self.pos;
        self.pos = 0;
        pos
    }

    /// The operation completed: the buffer is back, and so is its position.
    fn give_back(&mut self, pos: usize) {
        self.pos = pos;
        self.in_flight = false;
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

/// A writer into memory, for a body that must be read whole before it goes anywhere (the
/// caller bounds its size).
#[derive(Default)]
pub struct Collect(pub Vec<u8>);

impl AsyncWriteRent for Collect {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let n = buf.bytes_init();
        // SAFETY: the buffer has `bytes_init` initialised bytes at `read_ptr`.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
        self.0.extend_from_slice(bytes);
        (Ok(n), buf)
    }

    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let mut n = 0;
        for i in 0..buf.read_iovec_len() {
            // SAFETY: the buffer has `read_iovec_len` iovecs at `read_iovec_ptr`, each
            // describing initialised bytes.
            let bytes = unsafe {
                let iov = &*buf.read_iovec_ptr().add(i);
                std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len)
            };
            self.0.extend_from_slice(bytes);
            n += bytes.len();
        }
        (Ok(n), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that counts the bytes it wrote (an exchange's bytes out are the difference).
pub struct Counted<W> {
    pub inner: W,
    written: u64,
}

impl<W> Counted<W> {
    pub fn new(inner: W) -> Self {
        Counted { inner, written: 0 }
    }

    /// Bytes written so far, over the connection's life.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl<W: AsyncWriteRent> AsyncWriteRent for Counted<W> {
    async fn write<T: monoio::buf::IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let (result, buf) = self.inner.write(buf).await;
        if let Ok(n) = result {
            self.written += n as u64;
        }
        (result, buf)
    }

    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let (result, buf) = self.inner.writev(buf).await;
        if let Ok(n) = result {
            self.written += n as u64;
        }
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
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

/// A shard-local free list of buffers, so requests do not allocate. Bounded in count and in
/// bytes, and a buffer that grew past [`MAX_POOLED_BUFFER`] for one large message is freed
/// rather than kept: what the pool holds never outgrows the steady state.
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    max_free: usize,
    bytes: std::cell::Cell<usize>,
}

/// Larger buffers are not pooled (the largest standard one is a 64 KiB body buffer).
pub const MAX_POOLED_BUFFER: usize = 64 * 1024;
/// Most bytes one pool keeps.
const MAX_POOLED_BYTES: usize = 32 * 1024 * 1024;

impl BufPool {
    pub fn new(max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            max_free,
            bytes: std::cell::Cell::new(0),
        }
    }

    /// An empty buffer with at least `capacity` bytes of room.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let popped = self.free.borrow_mut().pop();
        if let Some(b) = &popped {
            self.bytes.set(self.bytes.get() - b.capacity());
        }
        match popped {
            Some(mut b) if b.capacity() >= capacity => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(capacity),
        }
    }

    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        let size = buf.capacity();
        if free.len() < self.max_free
            && size > 0
            && size <= MAX_POOLED_BUFFER
            && self.bytes.get() + size <= MAX_POOLED_BYTES
        {
            self.bytes.set(self.bytes.get() + size);
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection state machine driven by arbitrary interleavings of reads, writes,
    //! consumption and cancellation (a future dropped after some polls, as `select!` and
    //! timeouts do), over a deterministic in-memory transport, polled by hand.
    use super::*;
    use monoio::BufResult;
    use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
    use proptest::prelude::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    /// Returns `Pending` this many times, then `Ready`.
    struct Delay(u8);

    impl Future for Delay {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                Poll::Ready(())
            } else {
                self.0 -= 1;
                Poll::Pending
            }
        }
    }

    /// A peer that delivers `stream` in chunks of `chunk` bytes, each read after `delay`
    /// pending polls; as a writer it records what was written.
    struct Transport {
        stream: Vec<u8>,
        sent: usize,
        chunk: usize,
        delay: u8,
        written: Vec<u8>,
    }

    impl AsyncReadRent for Transport {
        async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
            Delay(self.delay).await;
            let n = self
                .chunk
                .min(buf.bytes_total())
                .min(self.stream.len() - self.sent);
            // SAFETY: `n` is within the buffer's writable capacity.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.stream[self.sent..].as_ptr(),
                    buf.write_ptr(),
                    n,
                );
                buf.set_init(n);
            }
            self.sent += n;
            (Ok(n), buf)
        }

        async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
            (Ok(0), buf)
        }
    }

    impl AsyncWriteRent for Transport {
        async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            Delay(self.delay).await;
            let n = self.chunk.min(buf.bytes_init());
            // SAFETY: the buffer has `bytes_init` initialised bytes at `read_ptr`.
            let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
            self.written.extend_from_slice(bytes);
            (Ok(n), buf)
        }

        async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            (Ok(0), buf)
        }

        async fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Polls `fut` at most `polls` times; `None` when it was dropped unfinished.
    fn poll_at_most<F: Future>(fut: F, polls: u8) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..polls {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Some(v);
            }
        }
        None
    }

    #[derive(Debug, Clone)]
    enum Op {
        Fill { polls: u8 },
        Consume(usize),
        Compact,
        Forward { n: usize, polls: u8 },
        Swap(usize),
        Restore(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..6).prop_map(|polls| Op::Fill { polls }),
            (0usize..64).prop_map(Op::Consume),
            Just(Op::Compact),
            (0usize..64, 1u8..6).prop_map(|(n, polls)| Op::Forward { n, polls }),
            (0usize..128).prop_map(Op::Swap),
            (1usize..128).prop_map(Op::Restore),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever is cancelled when, no accessor panics, and until an operation is lost
        /// every byte reaches exactly one place, in order: consumed, forwarded or still
        /// buffered.
        #[test]
        fn buffers_stay_consistent_under_cancellation(
            ops in prop::collection::vec(op(), 1..60),
            chunk in 1usize..40,
            delay in 0u8..3,
            cap in 1usize..96,
        ) {
            let stream: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
            let transport = Transport { stream: stream.clone(), sent: 0, chunk, delay, written: Vec::new() };
            let mut conn = BufConn::new(transport, Vec::with_capacity(cap));
            let mut sink = Transport { stream: Vec::new(), sent: 0, chunk, delay, written: Vec::new() };
            // Bytes taken out of the buffer, in order (consumed or forwarded).
            let mut taken: Vec<u8> = Vec::new();
            let mut forwarded: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Fill { polls } => {
                        let _ = poll_at_most(conn.fill(), polls);
                    }
                    Op::Consume(n) => {
                        let n = n.min(conn.buffered().len());
                        taken.extend_from_slice(&conn.buffered()[..n]);
                        conn.consume(n);
                    }
                    Op::Compact => conn.compact(),
                    Op::Forward { n, polls } => {
                        let n = n.min(conn.buffered().len());
                        let before = conn.buffered()[..n].to_vec();
                        if let Some(result) = poll_at_most(conn.forward_buffered(n, &mut sink), polls) {
                            prop_assert!(result.is_ok());
                            taken.extend_from_slice(&before);
                            forwarded.extend_from_slice(&before);
                        }
                    }
                    Op::Swap(capacity) => {
                        let _ = conn.swap_buffer(Vec::with_capacity(capacity));
                    }
                    Op::Restore(capacity) => {
                        if conn.buffered().is_empty() {
                            conn.restore_buffer(Vec::with_capacity(capacity));
                        }
                    }
                }
                // Every accessor is in bounds, whatever happened.
                let buffered = conn.buffered().to_vec();
                prop_assert!(buffered.len() <= conn.capacity().max(buffered.len()));
                if !conn.lost_bytes() {
                    let read = conn.io.sent;
                    let mut seen = taken.clone();
                    seen.extend_from_slice(&buffered);
                    prop_assert_eq!(&seen[..], &stream[..read], "bytes lost or reordered");
                }
            }
            if !conn.lost_bytes() {
                prop_assert_eq!(&sink.written, &forwarded, "the destination got exactly what was forwarded");
            }
        }
    }

    #[test]
    fn a_dropped_fill_leaves_an_empty_lost_connection() {
        let transport = Transport {
            stream: vec![7; 100],
            sent: 0,
            chunk: 10,
            delay: 0,
            written: Vec::new(),
        };
        let mut conn = BufConn::new(transport, Vec::with_capacity(64));
        assert_eq!(poll_at_most(conn.fill(), 1).map(|r| r.ok()), Some(Some(10)));
        conn.consume(3);
        conn.io.delay = 2;
        assert!(
            poll_at_most(conn.fill(), 1).is_none(),
            "dropped while pending"
        );
        assert!(conn.lost_bytes());
        assert!(conn.buffered().is_empty());
        assert!(matches!(
            poll_at_most(conn.fill(), 5),
            Some(Err(ReadError::BufferFull))
        ));
        conn.restore_buffer(Vec::with_capacity(16));
        assert!(poll_at_most(conn.fill(), 5).is_some_and(|r| r.is_ok()));
        assert!(conn.lost_bytes(), "once lost, always lost");
    }
}
