//! The policy stages, run synchronously over a view of the parsed request (no sockets): path
//! normalisation, the HTTPS redirect, route lookup. Each refusal is a [`Reject`]. Later stages
//! (client IP, authentication, authorization, limits, validation) go here, in order.

use super::conn::*;
use super::*;
use crate::config::RouteSpec;
use crate::route::Match;
use crate::shard::Active;

pub(super) enum RouteMiss {
    NotFound,
    MethodNotAllowed(String),
    BadPath,
}

/// Whether every protocol an `Upgrade` field offers is on the route's allow-list.
pub(super) fn offers_only_allowed(route: &RouteSpec, offer: &[u8]) -> bool {
    offer
        .split(|&b| b == b',')
        .all(|p| route.allows_upgrade(p.trim_ascii()))
}

/// Host (from an absolute-form target, else `Host`, port dropped, lower-cased), path and
/// method to a route.
pub(super) fn route(cfg: &Active, c: &Client) -> Result<(usize, usize), RouteMiss> {
    let buf = c.reader.buffered();
    let head = &c.head;
    let mut host_buf = [0u8; 256];
    let host = request_host(c, &mut host_buf);
    let path = std::str::from_utf8(&buf[head.path.clone()]).map_err(|_| RouteMiss::BadPath)?;
    let method = std::str::from_utf8(head.method(buf)).map_err(|_| RouteMiss::BadPath)?;
    match cfg.router.lookup(host, path, method) {
        Match::Found { route, prefix_len } => Ok((route, prefix_len)),
        Match::MethodNotAllowed { allow } => Err(RouteMiss::MethodNotAllowed(allow)),
        Match::NotFound => Err(RouteMiss::NotFound),
    }
}

/// The request's host: from an absolute-form target, else `Host`; port dropped, lower-cased.
pub(super) fn request_host<'a>(c: &Client, out: &'a mut [u8; 256]) -> &'a str {
    let buf = c.reader.buffered();
    let raw = c
        .head
        .target_authority
        .clone()
        .or_else(|| c.head.host.clone())
        .map_or(&b""[..], |r| &buf[r]);
    lower_host_without_port(raw, out)
}

pub(super) fn lower_host_without_port<'a>(raw: &[u8], out: &'a mut [u8; 256]) -> &'a str {
    let (without_port, _) = split_host_port(raw);
    if without_port.len() > out.len() {
        return "";
    }
    let out = &mut out[..without_port.len()];
    for (o, &b) in out.iter_mut().zip(without_port) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).unwrap_or("")
}

/// A host as sent (`name`, `name:port`, `[v6]:port`) split into the name, without one
/// trailing dot (`example.com.` is `example.com`), and the `:port` part (maybe empty).
pub(super) fn split_host_port(raw: &[u8]) -> (&[u8], &[u8]) {
    let colon = if raw.first() == Some(&b'[') {
        // [v6]:port keeps its brackets
        raw.iter()
            .position(|&b| b == b']')
            .map_or(raw.len(), |end| end + 1)
    } else {
        raw.iter().rposition(|&b| b == b':').unwrap_or(raw.len())
    };
    let (name, port) = raw.split_at(colon);
    (name.strip_suffix(b".").unwrap_or(name), port)
}

/// Normalises the parsed path in place before anything looks at it (routing, forwarding).
pub(super) fn normalize_request_path(cfg: &Active, c: &mut Client) -> Result<(), Reject> {
    let keep = cfg.keep_escaped_slashes;
    c.head
        .normalize_path(c.reader.buffered_mut(), keep)
        .map_err(Reject::from)
}
