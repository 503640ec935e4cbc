//! A strict, incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! Chunk sizes must be plain hex (no sign, `0x`, spaces or overflow), every line ends in CRLF,
//! chunk data is followed by CRLF, and extensions and trailers are bounded and dropped.

use std::ops::Range;

/// Longest chunk-size line (size + extensions) we accept.
const MAX_CHUNK_LINE: usize = 4096;
/// Total trailer section we accept (then drop).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// 15 hex digits keep every size below 2^60, far beyond any real body, so sums never overflow.
const MAX_SIZE_DIGITS: u32 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("invalid chunk line ending")]
    BadLineEnding,
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("invalid character in chunk extension")]
    BadExtension,
    #[error("trailer section too large")]
    TrailerTooLarge,
    #[error("invalid trailer line")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a size line: at least one hex digit is required.
    SizeStart,
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (an empty line ends the message).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used (framing and data).
    pub consumed: usize,
    /// Chunk data inside the input (empty when this step saw only framing).
    pub data: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u32,
    line_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            line_bytes: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` until it reaches chunk data (returned as a range of
    /// `input`), the end of the message, or the end of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded {
                    consumed: i + take,
                    data: i..i + take,
                });
            }
            if self.state == State::Done {
                break;
            }
            self.step(input[i])?;
            i += 1;
        }
        Ok(Decoded {
            consumed: i,
            data: i..i,
        })
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::SizeStart | State::Size => self.size_byte(b)?,
            State::Extension => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_CHUNK_LINE {
                    return Err(ChunkError::ExtensionTooLong);
                }
                match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' | 0 => return Err(ChunkError::BadExtension),
                    b if b < b' ' && b != b'\t' => return Err(ChunkError::BadExtension),
                    _ => {}
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                };
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                self.state = State::SizeStart;
                self.size = 0;
                self.digits = 0;
                self.line_bytes = 0;
            }
            State::TrailerStart => match b {
                b'\r' => self.state = State::EndLf,
                b' ' | b'\t' | b'\n' | 0 => return Err(ChunkError::BadTrailer),
                _ => {
                    self.count_trailer()?;
                    self.state = State::Trailer;
                }
            },
            State::Trailer => {
                self.count_trailer()?;
                match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' | 0 => return Err(ChunkError::BadTrailer),
                    _ => {}
                }
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadTrailer);
                }
                self.state = State::TrailerStart;
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                self.state = State::Done;
            }
            State::Data | State::Done => {}
        }
        Ok(())
    }

    fn size_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        let digit = match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        };
        if let Some(d) = digit {
            self.digits += 1;
            if self.digits > MAX_SIZE_DIGITS {
                return Err(ChunkError::SizeOverflow);
            }
            self.size = self.size * 16 + u64::from(d);
            self.state = State::Size;
            return Ok(());
        }
        if self.state == State::SizeStart {
            return Err(ChunkError::BadSize);
        }
        match b {
            b'\r' => self.state = State::SizeLf,
            b';' => {
                self.state = State::Extension;
                self.line_bytes = self.digits as usize + 1;
            }
            _ => return Err(ChunkError::BadSize),
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

/// Writes the size line that precedes `len` bytes of chunk data.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                let r = d.decode(&pending)?;
                body.extend_from_slice(&pending[r.data.clone()]);
                pending.drain(..r.consumed);
                if r.consumed == 0 || d.is_done() {
                    break;
                }
            }
        }
        Ok((body, d.is_done()))
    }

    #[test]
    fn decodes_chunks_in_any_split() {
        let input = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..input.len() {
            let (body, done) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello0123456789");
            assert!(done);
        }
    }

    #[test]
    fn stops_at_end_of_message() {
        let mut d = ChunkedDecoder::new();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        let r = d.decode(input).unwrap();
        assert!(d.is_done());
        assert_eq!(r.consumed, 5);
    }

    #[test]
    fn rejects_malformed_sizes() {
        for bad in [
            &b"-5\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5z\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_bad_line_endings_and_data_terminators() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds_extensions_and_trailers() {
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&long_ext, 64), Err(ChunkError::ExtensionTooLong));
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES));
        long_trailer.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            decode_all(&long_trailer, 64),
            Err(ChunkError::TrailerTooLarge)
        );
    }

    #[test]
    fn chunk_header_is_lower_hex() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 0x1a2b);
        assert_eq!(out, b"1a2b\r\n");
        out.clear();
        write_chunk_header(&mut out, 0);
        assert_eq!(out, b"0\r\n");
    }
}
