//! Streaming one message body from a buffered reader to a writer through bounded buffers,
//! in any of the framings, optionally re-chunking it. Every read and write is bounded by a
//! timeout so a stalled peer cannot hold a connection forever.

use super::Framing;
use super::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk_header};
use super::io::{BufConn, ReadError, write_all_buf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::time::Instant;
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

impl BodyLimits {
    fn next_read_deadline(&self) -> Instant {
        let per_read = Instant::now() + self.read_timeout;
        self.read_deadline.map_or(per_read, |d| d.min(per_read))
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
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => stream_length(src, dst, n, limits).await,
        Framing::Chunked => stream_chunked(src, dst, rechunk, limits, scratch).await,
        Framing::UntilClose => stream_until_close(src, dst, rechunk, limits, scratch).await,
    }
}

async fn stream_length<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    len: u64,
    limits: BodyLimits,
) -> Result<(), BodyError>
where
    S: AsyncReadRent,
    W: AsyncWriteRent,
{
    let mut remaining = len;
    while remaining > 0 {
        if src.buffered().is_empty() {
            src.fill_until(limits.next_read_deadline()).await?;
        }
        let take = (src.buffered().len() as u64).min(remaining) as usize;
        timed(limits, src.forward_buffered(take, dst)).await?;
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
            write_scratch(dst, scratch, limits).await?;
        }
        if decoder.is_done() {
            return Ok(());
        }
        src.fill_until(limits.next_read_deadline()).await?;
    }
}

async fn stream_until_close<S, W>(
    src: &mut BufConn<S>,
    dst: &mut W,
    rechunk: bool,
    limits: BodyLimits,
    scratch: &mut Vec<u8>,
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
                write_scratch(dst, scratch, limits).await?;
            } else {
                let n = src.buffered().len();
                timed(limits, src.forward_buffered(n, dst)).await?;
            }
        }
        match src.fill_until(limits.next_read_deadline()).await {
            Ok(_) => {}
            Err(ReadError::Closed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if rechunk {
        scratch.clear();
        scratch.extend_from_slice(LAST_CHUNK);
        write_scratch(dst, scratch, limits).await?;
    }
    Ok(())
}

/// A write that must finish within `write_timeout` (a peer that stops reading is cut off).
async fn timed<F: std::future::Future<Output = std::io::Result<()>>>(
    limits: BodyLimits,
    write: F,
) -> Result<(), BodyError> {
    match monoio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(BodyError::DestinationIo),
        Err(_) => Err(BodyError::DestinationTimedOut),
    }
}

async fn write_scratch<W: AsyncWriteRent>(
    dst: &mut W,
    scratch: &mut Vec<u8>,
    limits: BodyLimits,
) -> Result<(), BodyError> {
    let write = async {
        let (written, returned) = write_all_buf(dst, std::mem::take(scratch)).await;
        *scratch = returned;
        written
    };
    timed(limits, write).await
}
