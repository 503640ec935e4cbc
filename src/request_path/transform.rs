//! The head writers: the request head as the origin sees it (forwarding fields, route edits,
//! one framing) and the response head as the client sees it; sticky-session affinity.
//! Pure functions over parsed heads: no I/O.

use super::admit::*;
use super::conn::*;
use super::respond::*;
use crate::auth::Identity;
use crate::config::{CompiledTransform, RouteSpec};
use crate::config::{HashKey, UpstreamSpec, stable_hash};
use crate::http::{Framing, Known, RequestHead, ResponseHead, push_decimal, push_header};
use crate::perimeter::inject::{Resolver, push_query_value};
use crate::upstream::Affinity;

/// What the origin's request head is written from: the client's parsed head and what the
/// connection says about the client. No socket.
pub(super) struct Forwarded<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    /// The peer's address as text (appended to `X-Forwarded-For`).
    pub peer_ip: &'a [u8],
    /// The client's address as text (the peer, or what trusted proxies said).
    pub client_ip: &'a [u8],
    pub tls: bool,
    /// The verified client certificate's subject (mTLS).
    pub client_subject: Option<&'a str>,
    /// The listener says `x_forwarded_for = "replace"`.
    pub replace_x_forwarded_for: bool,
    /// Who the caller is (routes with `auth`): `x-consumer` and forwarded claims.
    pub identity: Option<&'a Identity>,
    /// Secret values for the route's injections (`None`: the route injects nothing).
    pub resolver: Option<Resolver<'a>>,
}

impl<'a> Forwarded<'a> {
    pub(super) fn of(c: &'a Client) -> Forwarded<'a> {
        Forwarded {
            buf: c.reader.buffered(),
            head: &c.head,
            peer_ip: c.peer_ip.as_bytes(),
            client_ip: c.client_ip_text(),
            tls: c.tls,
            client_subject: c.client_subject.as_deref(),
            replace_x_forwarded_for: c.replace_x_forwarded_for,
            identity: c.down.record.identity.as_deref(),
            resolver: None,
        }
    }
}

/// The request head as the origin sees it: one framing, hop-by-hop fields dropped, forwarding
/// fields set, route edits applied.
pub(super) fn write_upstream_head(
    out: &mut Vec<u8>,
    c: &Forwarded,
    ex: &Exchange,
    route: &RouteSpec,
    prefix_len: usize,
    target_label: &str,
) {
    let buf = c.buf;
    let head = c.head;
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
    let strip = route.auth.as_ref().map(|a| &a.strip);
    let inject = route.injections.as_deref().zip(c.resolver.as_ref());
    let stripped_query = strip.is_some_and(|s| !s.query.is_empty());
    if stripped_query || inject.is_some_and(|(i, _)| !i.query.is_empty()) {
        let query = &buf[head.query.clone()];
        let dropped = |name: &[u8]| {
            strip.is_some_and(|s| {
                s.query
                    .iter()
                    .any(|q| crate::auth::name_is(name, q.as_bytes()))
            }) || inject.is_some_and(|(i, _)| {
                i.query
                    .iter()
                    .any(|q| crate::auth::name_is(name, q.name.as_bytes()))
            })
        };
        let mut first = push_query_without(out, query, dropped);
        if let Some((injections, resolver)) = inject {
            for injection in &injections.query {
                let Some(value) = resolver.value(injection) else {
                    continue;
                };
                out.push(if first { b'?' } else { b'&' });
                first = false;
                out.extend_from_slice(injection.name.as_bytes());
                out.push(b'=');
                push_query_value(out, injection.prefix.as_bytes());
                push_query_value(out, value);
            }
        }
    } else {
        out.extend_from_slice(&buf[head.query.clone()]);
    }
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
                    && !strip.is_some_and(|s| s.removes_header(name))
                    && !inject.is_some_and(|(i, _)| i.drops_header(name))
            }
            Known::Cookie if inject.is_some_and(|(i, _)| i.drops_header(name)) => false,
            Known::Cookie => match strip {
                Some(s) if !s.cookies.is_empty() => {
                    push_cookie_without(out, &buf[field.value.clone()], &s.cookies);
                    false
                }
                _ => !route.request_headers.removes(name),
            },
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
        out.extend_from_slice(c.peer_ip);
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
    push_header(out, b"x-real-ip", c.client_ip);
    push_header(out, b"x-request-id", ex.request_id());
    if let Some(who) = c.identity {
        out.extend_from_slice(&who.forward);
    }
    if let Some((injections, resolver)) = inject {
        for injection in &injections.headers {
            let Some(value) = resolver.value(injection) else {
                continue;
            };
            out.extend_from_slice(injection.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(injection.prefix.as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
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

/// The query string less the parameters `dropped` says (the client's credentials, names the
/// gateway injects); returns whether nothing was written (the next parameter starts `?`).
fn push_query_without(out: &mut Vec<u8>, query: &[u8], dropped: impl Fn(&[u8]) -> bool) -> bool {
    let mut first = true;
    for pair in query
        .strip_prefix(b"?")
        .unwrap_or(query)
        .split(|&b| b == b'&')
    {
        let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
        if pair.is_empty() || dropped(name) {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(pair);
    }
    first
}

/// A URL-valued field less the query parameters named in `drop` (compared as origins read
/// them: percent-decoded). The fragment, if any, is kept.
fn push_url_field_without(out: &mut Vec<u8>, name: &[u8], url: &[u8], drop: &[String]) {
    let fragment_at = url.iter().position(|&b| b == b'#').unwrap_or(url.len());
    let (url, fragment) = url.split_at(fragment_at);
    let query_at = url.iter().position(|&b| b == b'?').unwrap_or(url.len());
    let (base, query) = url.split_at(query_at);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(base);
    push_query_without(out, query, |n| {
        drop.iter().any(|d| crate::auth::name_is(n, d.as_bytes()))
    });
    out.extend_from_slice(fragment);
    out.extend_from_slice(b"\r\n");
}

/// A `Cookie` field less the cookies named in `drop`; nothing when none is left.
fn push_cookie_without(out: &mut Vec<u8>, value: &[u8], drop: &[String]) {
    let mut first = true;
    for pair in value.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
        if pair.is_empty()
            || drop
                .iter()
                .any(|d| crate::auth::name_is(name, d.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(if first { b"cookie: " } else { b"; " });
        first = false;
        out.extend_from_slice(pair);
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
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
        let value = &buf[field.value.clone()];
        if !edits.redact_query.is_empty()
            && (name.eq_ignore_ascii_case(b"location")
                || name.eq_ignore_ascii_case(b"content-location"))
        {
            push_url_field_without(out, name, value, &edits.redact_query);
            continue;
        }
        push_header(out, name, value);
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
        Some(HashKey::ClientIp) => Some(stable_hash(c.client_ip_text())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Snapshot, load_str};
    use crate::http::{HeadLimits, Version};
    use std::path::Path;
    use std::time::Duration;

    const CONFIG: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[[upstreams]]
name = "u"
targets = ["127.0.0.1:9"]

[[routes]]
name = "api"
path_prefix = "/api"
strip_prefix = true
upstream = "u"
request_headers = { add = { "x-added" = "yes" }, remove = ["x-remove-me"] }
response_headers = { add = { "x-resp" = "r" }, remove = ["server"] }
"#;

    fn snapshot() -> Snapshot {
        load_str(Path::new("transform.toml"), CONFIG).unwrap()
    }

    fn exchange(framing: Framing, version: Version) -> Exchange {
        let mut request_id = [0u8; 128];
        request_id[..6].copy_from_slice(b"rid-42");
        Exchange {
            request_id,
            request_id_len: 6,
            version,
            keep_alive: true,
            head_method: false,
            framing,
            tls: false,
            idempotent: false,
            upgrade: false,
            send_timeout: Duration::from_secs(1),
        }
    }

    fn upstream_head(raw: &str, replace_x_forwarded_for: bool) -> String {
        let buf = raw.as_bytes().to_vec();
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        };
        assert_eq!(head.parse(&buf, &limits), Ok(true));
        let cfg = snapshot();
        let forwarded = Forwarded {
            buf: &buf,
            head: &head,
            peer_ip: b"10.0.0.9",
            client_ip: b"10.0.0.9",
            resolver: None,
            tls: false,
            client_subject: None,
            replace_x_forwarded_for,
            identity: None,
        };
        let mut out = Vec::new();
        let ex = exchange(head.framing, Version::Http11);
        write_upstream_head(&mut out, &forwarded, &ex, &cfg.routes[0], 4, "127.0.0.1:9");
        String::from_utf8(out).unwrap()
    }

    const REQUEST: &str = "POST /api/v1/x?q=1 HTTP/1.1\r\nHost: Example.com.:8080\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\nX-Remove-Me: r\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nX-Request-Id: client-id\r\nKeep-Alive: 5\r\nExpect: 100-continue\r\nAccept: */*\r\nContent-Length: 3\r\n\r\n";

    #[test]
    fn the_origin_sees_one_framing_forwarding_fields_and_route_edits() {
        let head = upstream_head(REQUEST, false);
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "POST /v1/x?q=1 HTTP/1.1", "{head}");
        assert_eq!(lines[1], "host: Example.com:8080", "{head}");
        for expected in [
            "Accept: */*",
            "x-forwarded-for: 1.2.3.4, 10.0.0.9",
            "x-forwarded-proto: http",
            "x-forwarded-host: Example.com:8080",
            "x-real-ip: 10.0.0.9",
            "x-request-id: rid-42",
            "x-added: yes",
            "content-length: 3",
        ] {
            assert!(
                lines.contains(&expected),
                "{expected:?} missing from\n{head}"
            );
        }
        let lower = head.to_ascii_lowercase();
        for gone in [
            "x-secret",
            "x-remove-me",
            "keep-alive",
            "expect",
            "6.6.6.6",
            "client-id",
            "connection:",
        ] {
            assert!(!lower.contains(gone), "{gone:?} was forwarded:\n{head}");
        }
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn an_edge_listener_replaces_the_clients_forwarding_list() {
        let head = upstream_head(REQUEST, true);
        assert!(head.contains("x-forwarded-for: 10.0.0.9\r\n"), "{head}");
        assert!(!head.contains("1.2.3.4"), "{head}");
    }

    fn client_head(raw: &str, version: Version, extra: &[u8], close: bool) -> String {
        let buf = raw.as_bytes();
        let mut resp = ResponseHead::default();
        assert_eq!(resp.parse(buf, false, 64 * 1024).map_err(|e| e.0), Ok(true));
        let cfg = snapshot();
        let ex = exchange(Framing::None, version);
        let rechunk = resp.framing == Framing::Chunked && version == Version::Http11;
        let mut out = Vec::new();
        let edits = cfg.routes[0].response_edits(false);
        write_client_head(
            &mut out, &resp, buf, &ex, edits, extra, rechunk, close, false,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_client_sees_the_origins_fields_less_hop_by_hop_plus_ours() {
        let head = client_head(
            "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Request-Id: origin-id\r\nServer: origin\r\nETag: \"e\"\r\n\r\n",
            Version::Http11,
            b"set-cookie: s=1\r\n",
            false,
        );
        assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
        for expected in [
            "content-length: 5\r\n",
            "etag: \"e\"\r\n",
            "x-resp: r\r\n",
            "set-cookie: s=1\r\n",
            "x-request-id: rid-42\r\n",
        ] {
            assert!(
                head.to_ascii_lowercase()
                    .contains(&expected.to_ascii_lowercase()),
                "{expected:?} missing from\n{head}"
            );
        }
        for gone in ["x-hop", "origin-id", "server:", "connection:"] {
            assert!(
                !head.to_ascii_lowercase().contains(gone),
                "{gone:?}:\n{head}"
            );
        }
    }

    #[test]
    fn a_chunked_response_is_rechunked_for_http11_and_closed_for_http10() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let h11 = client_head(raw, Version::Http11, b"", false);
        assert!(h11.contains("transfer-encoding: chunked\r\n"), "{h11}");
        let h10 = client_head(raw, Version::Http10, b"", true);
        assert!(
            !h10.to_ascii_lowercase().contains("transfer-encoding"),
            "{h10}"
        );
        assert!(h10.contains("connection: close\r\n"), "{h10}");
    }
}
