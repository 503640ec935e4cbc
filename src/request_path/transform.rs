//! The head writers: the request head as the origin sees it (forwarding fields, route edits,
//! one framing) and the response head as the client sees it; sticky-session affinity.
//! Pure functions over parsed heads: no I/O.

use super::admit::*;
use super::conn::*;
use super::respond::*;
use crate::config::{CompiledTransform, RouteSpec};
use crate::config::{HashKey, UpstreamSpec, stable_hash};
use crate::http::{Framing, Known, ResponseHead, push_decimal, push_header};
use crate::upstream::Affinity;

/// The request head as the origin sees it: one framing, hop-by-hop fields dropped, forwarding
/// fields set, route edits applied.
pub(super) fn write_upstream_head(
    out: &mut Vec<u8>,
    c: &Client,
    ex: &Exchange,
    route: &RouteSpec,
    prefix_len: usize,
    target_label: &str,
) {
    let buf = c.reader.buffered();
    let head = &c.head;
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    let path = &buf[head.path.clone()];
    if route.strip_prefix {
        let rest = &path[prefix_len.min(path.len())..];
        if rest.first() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rest);
    } else {
        out.extend_from_slice(path);
    }
    out.extend_from_slice(&buf[head.query.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // An absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2): the origin
    // must see the host the route was chosen by.
    let client_host = head
        .target_authority
        .clone()
        .or_else(|| head.host.clone())
        .map(|r| &buf[r])
        .filter(|h| !h.is_empty());
    match (&route.host_rewrite, client_host) {
        (Some(h), _) => push_header(out, b"host", h.as_bytes()),
        (None, Some(h)) => push_host(out, b"host", h),
        _ => push_header(out, b"host", target_label.as_bytes()),
    }

    for (field, &kind) in head.fields.iter().zip(&head.kinds) {
        let name = &buf[field.name.clone()];
        let forward = match kind {
            Known::Other => {
                !name.eq_ignore_ascii_case(b"expect")
                    && !head.is_connection_named(buf, name)
                    && !route.request_headers.removes(name)
            }
            Known::Upgrade => ex.upgrade,
            // Forwarding claims, the gateway's own fields, framing, hop-by-hop and names
            // with `_` are never passed on as the client sent them.
            _ => false,
        };
        if forward {
            push_header(out, name, &buf[field.value.clone()]);
        }
    }
    // Every X-Forwarded-For field joins one list, with the client's address appended last.
    if !route.request_headers.removes(b"x-forwarded-for") {
        out.extend_from_slice(b"x-forwarded-for: ");
        let keep_client_list = !c.replace_x_forwarded_for;
        for (field, &kind) in head.fields.iter().zip(&head.kinds) {
            if keep_client_list && kind == Known::XForwardedFor {
                out.extend_from_slice(&buf[field.value.clone()]);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(c.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    push_header(
        out,
        b"x-forwarded-proto",
        if c.tls { b"https" } else { b"http" },
    );
    if let Some(subject) = &c.client_subject {
        push_header(out, b"x-client-cert-subject", subject.as_bytes());
    }
    if let Some(h) = client_host {
        push_host(out, b"x-forwarded-host", h);
    }
    push_header(out, b"x-real-ip", c.peer_ip.as_bytes());
    push_header(out, b"x-request-id", ex.request_id());
    out.extend_from_slice(&route.request_headers.add);
    match ex.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            if matches!(head.method(buf), b"POST" | b"PUT" | b"PATCH") {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    if ex.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A host field as the client sent it, less one trailing dot on the name.
pub(super) fn push_host(out: &mut Vec<u8>, field: &[u8], raw: &[u8]) {
    let (name, port) = split_host_port(raw);
    out.extend_from_slice(field);
    out.extend_from_slice(b": ");
    out.extend_from_slice(name);
    out.extend_from_slice(port);
    out.extend_from_slice(b"\r\n");
}

/// The response head as the client sees it.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_client_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    buf: &[u8],
    ex: &Exchange,
    edits: &CompiledTransform,
    extra: &[u8],
    rechunk: bool,
    close: bool,
    tunnel: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(&buf[resp.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let mut length_sent = false;
    for (field, &kind) in resp.fields.iter().zip(&resp.kinds) {
        let name = &buf[field.name.clone()];
        match kind {
            Known::ContentLength if !length_sent && resp.status >= 200 && resp.status != 204 => {
                length_sent = true;
            }
            Known::Upgrade if tunnel => {}
            Known::HopByHop
            | Known::TransferEncoding
            | Known::Upgrade
            | Known::ContentLength
            | Known::XRequestId => continue,
            _ => {}
        }
        if resp.is_connection_named(buf, name) || edits.removes(name) {
            continue;
        }
        push_header(out, name, &buf[field.value.clone()]);
    }
    out.extend_from_slice(&edits.add);
    out.extend_from_slice(extra);
    push_header(out, b"x-request-id", ex.request_id());
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if tunnel {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        push_connection_header(out, ex, close);
    }
    out.extend_from_slice(b"\r\n");
}

/// A sticky cookie naming a known target, and the consistent-hash key, if configured.
pub(super) fn affinity_of(spec: &UpstreamSpec, c: &Client) -> Affinity {
    let buf = c.reader.buffered();
    let sticky = spec.sticky.as_ref().and_then(|st| {
        let value = c.head.cookie(buf, st.cookie.as_bytes())?;
        st.ids.iter().position(|id| id.as_bytes() == value)
    });
    let hash = match &spec.hash_key {
        Some(HashKey::Header(name)) => c.head.field(buf, name.as_bytes()).map(stable_hash),
        Some(HashKey::Cookie(name)) => c.head.cookie(buf, name.as_bytes()).map(stable_hash),
        Some(HashKey::ClientIp) => Some(stable_hash(c.peer_ip.as_bytes())),
        None => None,
    };
    Affinity { sticky, hash }
}

/// With sticky sessions, a response from a target the client was not stuck to sets the
/// cookie that sticks it there. Appends to the exchange's extra response lines (cleared once
/// when the exchange starts), so a line an earlier stage added is kept.
pub(super) fn stick_to(
    spec: &UpstreamSpec,
    affinity: &Affinity,
    target: usize,
    down: &mut Downstream,
) {
    if let Some(st) = &spec.sticky
        && affinity.sticky != Some(target)
    {
        down.extra.extend_from_slice(b"set-cookie: ");
        down.extra.extend_from_slice(st.cookie.as_bytes());
        down.extra.push(b'=');
        down.extra.extend_from_slice(st.ids[target].as_bytes());
        down.extra.extend_from_slice(b"; Path=/; Max-Age=");
        push_decimal(&mut down.extra, st.max_age_secs);
        down.extra.extend_from_slice(b"; HttpOnly\r\n");
    }
}
