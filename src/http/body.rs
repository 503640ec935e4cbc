//! Streaming one message body from a buffered reader to a writer through bounded buffers,
//! in any of the framings, optionally re-chunking it. Every read and write is bounded by a
//! deadline (one watchdog timer per body) so a stalled peer cannot hold a connection forever.

use super::Framing;
use super::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk_header};
use super::io::{BufConn, ReadError, write_all_buf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::time::Instant;
use std::cell::Cell;
use std::time::Duration;

#[derive(Clone, Copy)]
pub struct BodyLimits {
    /// Beyond this many body bytes: [`BodyError::TooLarge`].
    pub max_bytes: u64,
    /// Longest wait for one read to make progress.
    pub read_timeout: Duration,
    /// Longest wait for one write to make progress (a destination that stops reading).
    pub write_timeout: Duration,
    /// When the whole body must have been read (a source that trickles).
    pub read_deadline: Option<Instant>,
}

/// Per-operation deadlines for a whole body, with one timer: every read and write notes when
/// it started, and a single watchdog wakes at the current operation's deadline (or sooner,
/// to look again); so a body costs about one timer registration per shortest timeout of
/// streaming, not one per read and per write.
struct Watch {
    started: Cell<Instant>,
    writing: Cell<bool>,
}

impl Watch {
    fn new() -> Self {
        Watch {
            started: Cell::new(Instant::now()),
            writing: Cell::new(false),
        }
    }

    fn begin(&self, writing: bool) {
        self.started.set(Instant::now());
        self.writing.set(writing);
    }

    async fn read<S: AsyncReadRent>(&self, src: &mut BufConn<S>) -> Result<usize, ReadError> {
        self.begin(false);
        src.fill().await
    }

    async fn write<F: std::future::Future<Output = std::io::Result<()>>>(
        &self,
        write: F,
    ) -> Result<(), BodyError> {
        self.begin(true);
        write.await.map_err(|_| BodyError::DestinationIo)
    }

    /// Ends (with the error to report) when the running operation is past its deadline.
    /// The operation running when it wakes is the current one (operations follow each other
    /// with no await between them), and it never sleeps longer than the shortest timeout, so
    /// an operation that starts while it sleeps, with an earlier deadline, is still caught
    /// on time.
    async fn expired(&self, limits: BodyLimits) -> BodyError {
        let shortest = limits.read_timeout.min(limits.write_timeout);
        loop {
            let started = self.started.get();
            let (deadline, error) = if self.writing.get() {
                (
                    started + limits.write_timeout,
                    BodyError::DestinationTimedOut,
                )
            } else {
                let per_read = started + limits.read_timeout;
                let deadline = limits.read_deadline.map_or(per_read, |d| d.min(per_read));
                (deadline, BodyError::SourceTimedOut)
            };
            let now = Instant::now();
            if now >= deadline {
                return error;
            }
            let mut wake = deadline.min(now + shortest);
            if let Some(total) = limits.read_deadline {
                wake = wake.min(total);
            }
            monoio::time::sleep_until(wake).await;
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    SourceClosed,
    SourceIo,
    SourceTimedOut,
    Malformed,
    TooLarge,
    DestinationIo,
    DestinationTimedOut,
}

impl From<ReadError> for BodyError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed => BodyError::SourceClosed,
            ReadError::TimedOut => BodyError::SourceTimedOut,
            ReadError::Io(_) | ReadError::BufferFull => BodyError::SourceIo,
        }
    }
}

/// Streams one body from `src` to `dst` through bounded buffers. `framing` is how `src`
/// delimits it; `rechunk` sends it chunked (otherwise raw: length-delimited or until close).
pub async fn stream_body<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    framing: Framing,
    rechunk: bool,
    limits: BodyLimits,
    scratch: &mut Vec<u8>,
) -> Result<(), BodyError>
where
    S: AsyncReadRent,
    W: AsyncWriteRent,
{
    if framing == Framing::None {
        return Ok(());
    }
    let watch = Watch::new();
    let streaming = async {
        match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => stream_length(src, dst, n, &watch).await,
            Framing::Chunked => stream_chunked(src, dst, rechunk, limits, scratch, &watch).await,
            Framing::UntilClose => stream_until_close(src, dst, rechunk, scratch, &watch).await,
        }
    };
    // A timed-out operation is dropped mid-way; its connection is then `lost_bytes()` and
    // closed by the caller, as after any body error.
    monoio::select! {
        streamed = streaming => streamed,
        error = watch.expired(limits) => Err(error),
    }
}

async fn stream_length<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    len: u64,
    watch: &Watch,
) -> Result<(), BodyError>
where
    S: AsyncReadRent,
    W: AsyncWriteRent,
{
    let mut remaining = len;
    while remaining > 0 {
        if src.buffered().is_empty() {
            watch.read(src).await?;
        }
        let take = (src.buffered().len() as u64).min(remaining) as usize;
        watch.write(src.forward_buffered(take, dst)).await?;
        remaining -= take as u64;
    }
    Ok(())
}

async fn stream_chunked<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    rechunk: bool,
    limits: BodyLimits,
    scratch: &mut Vec<u8>,
    watch: &Watch,
) -> Result<(), BodyError>
where
    S: AsyncReadRent,
    W: AsyncWriteRent,
{
    let mut decoder = ChunkedDecoder::new();
    let mut total: u64 = 0;
    loop {
        // Decode everything buffered into one write.
        scratch.clear();
        loop {
            let step = decoder
                .decode(src.buffered())
                .map_err(|_| BodyError::Malformed)?;
            if !step.data.is_empty() {
                total += step.data.len() as u64;
                if total > limits.max_bytes {
                    return Err(BodyError::TooLarge);
                }
                let data = &src.buffered()[step.data.clone()];
                if rechunk {
                    write_chunk_header(scratch, data.len());
                    scratch.extend_from_slice(data);
                    scratch.extend_from_slice(b"\r\n");
                } else {
                    scratch.extend_from_slice(data);
                }
            }
            src.consume(step.consumed);
            if step.consumed == 0 || decoder.is_done() {
                break;
            }
        }
        if decoder.is_done() && rechunk {
            scratch.extend_from_slice(LAST_CHUNK);
        }
        if !scratch.is_empty() {
            write_scratch(dst, scratch, watch).await?;
        }
        if decoder.is_done() {
            return Ok(());
        }
        watch.read(src).await?;
    }
}

async fn stream_until_close<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    rechunk: bool,
    scratch: &mut Vec<u8>,
    watch: &Watch,
) -> Result<(), BodyError>
where
    S: AsyncReadRent,
    W: AsyncWriteRent,
{
    loop {
        if !src.buffered().is_empty() {
            if rechunk {
                scratch.clear();
                write_chunk_header(scratch, src.buffered().len());
                scratch.extend_from_slice(src.buffered());
                scratch.extend_from_slice(b"\r\n");
                let n = src.buffered().len();
                src.consume(n);
                write_scratch(dst, scratch, watch).await?;
            } else {
                let n = src.buffered().len();
                watch.write(src.forward_buffered(n, dst)).await?;
            }
        }
        match watch.read(src).await {
            Ok(_) => {}
            Err(ReadError::Closed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if rechunk {
        scratch.clear();
        scratch.extend_from_slice(LAST_CHUNK);
        write_scratch(dst, scratch, watch).await?;
    }
    Ok(())
}

async fn write_scratch<W: AsyncWriteRent>(
    dst: &mut W,
    scratch: &mut Vec<u8>,
    watch: &Watch,
) -> Result<(), BodyError> {
    let write = async {
        let (written, returned) = write_all_buf(dst, std::mem::take(scratch)).await;
        *scratch = returned;
        written
    };
    watch.write(write).await
}
