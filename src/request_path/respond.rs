//! Answers the gateway writes itself: the one writer of every [`Reject`], direct responses.

use super::conn::*;
use super::*;
use crate::config::RouteSpec;
use crate::http::io::write_all_within;
use crate::http::{Framing, Version, push_decimal, push_error_response, push_header};

/// Sends a gateway answer: the one writer of every [`Reject`]. `close` ends the connection
/// afterwards.
pub(super) async fn reject(
    c: &mut Client,
    refusal: &Reject,
    request_id: &[u8],
    close: bool,
) -> Next {
    let down = &mut c.down;
    down.record.status = refusal.status;
    down.record.reject_kind = Some(refusal.kind);
    down.out.clear();
    push_error_response(
        &mut down.out,
        refusal.status,
        &refusal.message,
        request_id,
        close,
        &refusal.headers,
    );
    if down.head_request {
        // A HEAD answer has no body (RFC 9110 §9.3.2); Content-Length still says its size.
        if let Some(end) = down.out.windows(4).position(|w| w == b"\r\n\r\n") {
            down.out.truncate(end + 4);
        }
    }
    let out = std::mem::take(&mut down.out);
    let (result, out) = write_all_within(&mut down.writer, out, c.limits.send_timeout).await;
    down.out = out;
    if result.is_err() {
        // The client got nothing whole: logged and counted as 499, not as the answer.
        down.record.status = 0;
    }
    c.linger = close && result.is_ok();
    if close || result.is_err() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// An error for a request whose body (if any) has not been read: the connection closes unless
/// there is no body and the client wants keep-alive.
pub(super) async fn reject_with_body_pending(
    c: &mut Client,
    ex: &Exchange,
    refusal: Reject,
) -> Next {
    let close = !ex.keep_alive || ex.framing != Framing::None;
    // The head is dealt with either way (and counted in the exchange's bytes in); a body
    // left unread is discarded by the lingering close.
    c.reader.consume(c.head.len);
    reject(c, &refusal, ex.request_id(), close).await
}

pub(super) async fn direct_response(
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    status: u16,
    content_type: &str,
    body: &str,
) -> Next {
    let close = !ex.keep_alive || ex.framing != Framing::None;
    c.reader.consume(c.head.len);
    c.down.record.status = status;
    let out = &mut c.down.out;
    out.clear();
    crate::http::push_status_line(out, status);
    push_header(out, b"content-type", content_type.as_bytes());
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_header(out, b"x-request-id", ex.request_id());
    out.extend_from_slice(&c.down.extra);
    out.extend_from_slice(&route.response_edits(ex.tls).add);
    push_connection_header(out, ex, close);
    out.extend_from_slice(b"\r\n");
    if !ex.head_method {
        out.extend_from_slice(body.as_bytes());
    }
    let out = std::mem::take(&mut c.down.out);
    let (result, out) = write_all_within(&mut c.down.writer, out, c.limits.send_timeout).await;
    c.down.out = out;
    if result.is_err() {
        c.down.record.status = 0;
    }
    if close || result.is_err() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

pub(super) fn push_connection_header(out: &mut Vec<u8>, ex: &Exchange, close: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ex.version == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}
