//! HTTP/1.1 wire format: strict head parsing, chunked decoding, buffered connection I/O and
//! the serialisation helpers the request path uses (error bodies, numbers, request ids).
//!
//! Owns bytes on the wire only. It must not know about routes, upstreams or shards.

pub mod body;
pub mod chunked;
pub mod date;
pub mod head;
pub mod io;

pub use head::{Framing, HeadError, HeadLimits, Known, RequestHead, ResponseHead, Version};

/// `tchar` from RFC 9110 §5.6.2.
pub fn is_token_byte(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Appends the decimal form of `n` without allocating.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    // Every answer the gateway makes itself starts here: it carries the time it was made.
    date::push_date(out);
}

/// Copies clean runs whole and escapes byte by byte only where needed; bytes from 0x80 up
/// are kept only when `utf8` says the input is valid UTF-8.
pub fn push_escaped_json(out: &mut Vec<u8>, bytes: &[u8], utf8: bool) {
    out.push(b'"');
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x20..=0x7e => continue,
            0x80..=0xff if utf8 => continue,
            _ => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                JSON_HEX[usize::from(b >> 4)],
                JSON_HEX[usize::from(b & 15)],
            ],
        };
        out.extend_from_slice(&bytes[clean..i]);
        out.extend_from_slice(escape);
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

/// The length of `text` as [`push_escaped_json`] writes it (UTF-8 text), quotes excluded.
pub fn escaped_json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0x20..=0x7e | 0x80..=0xff => 1,
            _ => 6,
        })
        .sum()
}

const JSON_HEX: &[u8; 16] = b"0123456789abcdef";

/// A gateway-generated response: status, the `{"error", "status"}` JSON body of DESIGN.md §6,
/// the request id, and `extra` header lines (already CRLF-terminated).
pub fn push_error_response(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    extra: &[u8],
) {
    push_status_line(out, status);
    out.extend_from_slice(b"content-type: application/json\r\n");
    // `{"error":` + the message as a JSON string + `,"status":` + three digits + `}\n`
    let body_len = 9 + escaped_json_len(message) + 2 + 10 + 3 + 2;
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    // Empty before any request was read (a plain request on a TLS port).
    if !request_id.is_empty() {
        push_header(out, b"x-request-id", request_id);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    let body_start = out.len();
    out.extend_from_slice(b"{\"error\":");
    push_escaped_json(out, message.as_bytes(), true);
    out.extend_from_slice(b",\"status\":");
    push_decimal(out, u64::from(status));
    out.extend_from_slice(b"}\n");
    debug_assert_eq!(out.len() - body_start, body_len);
}

/// Request ids: 32 hex digits from a per-shard xorshift generator seeded from the OS, so ids
/// are unique across shards and restarts without any shared state.
pub struct RequestIds {
    state: std::cell::Cell<u64>,
}

impl RequestIds {
    pub fn new(seed: u64) -> Self {
        RequestIds {
            state: std::cell::Cell::new(seed | 1),
        }
    }

    fn next_u64(&self) -> u64 {
        let mut x = self.state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_id(&self) -> [u8; 32] {
        let mut id = [0u8; 32];
        for half in 0..2 {
            let mut v = self.next_u64();
            for slot in id[half * 16..half * 16 + 16].iter_mut() {
                *slot = b"0123456789abcdef"[(v & 15) as usize];
                v >>= 4;
            }
        }
        id
    }
}

/// A seed from the OS random source (falling back to time and thread id).
pub fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut bytes).is_ok() {
            return u64::from_ne_bytes(bytes);
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (std::process::id() as u64).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_has_json_body_with_exact_length() {
        let mut out = Vec::new();
        push_error_response(&mut out, 404, "no route", b"abc", false, b"");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("x-request-id: abc"));
        assert_eq!(body, "{\"error\":\"no route\",\"status\":404}\n");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn request_ids_differ() {
        let ids = RequestIds::new(42);
        assert_ne!(ids.next_id(), ids.next_id());
    }
}
