//! Strict parsing of request and response heads with `httparse`, plus the framing and
//! connection semantics RFC 9110/9112 derive from them.
//!
//! Heads are parsed in place: results are byte ranges into the connection's read buffer, so
//! nothing is copied or allocated per request (the header index is reused across requests).

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header fields we index; the configured `max_headers` is capped to this.
pub const MAX_HEADERS_CAP: usize = 1000;
/// Most header fields we accept in an origin's response.
pub const MAX_RESPONSE_HEADERS: usize = 200;
/// Most `Connection` tokens naming other fields, in a request or a response. Real clients
/// send one or two; a long list only multiplies per-field work and per-connection memory.
pub const MAX_CONNECTION_TOKENS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the origin closes.
    UntilClose,
}

/// Why a head was rejected; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request-target too long")]
    UriTooLong,
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("unsupported expectation")]
    ExpectationFailed,
    #[error("method not implemented")]
    MethodNotImplemented,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::HeadersTooLarge => 431,
            HeadError::UriTooLong => 414,
            HeadError::UnsupportedTransferCoding | HeadError::MethodNotImplemented => 501,
            HeadError::ExpectationFailed => 417,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Which well-known header a field is, decided once while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Other,
    /// Hop-by-hop: never forwarded as is.
    HopByHop,
    Host,
    ContentLength,
    TransferEncoding,
    Upgrade,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRealIp,
    XRequestId,
    /// Set only by the gateway (`x-client-cert-subject` from a verified client certificate,
    /// `x-consumer` from authentication); a client's own is always dropped.
    GatewayAsserted,
    /// `Cookie`: read by authentication (a token cookie), forwarded otherwise.
    Cookie,
    /// `Forwarded` and `X-Forwarded-*` fields the gateway does not set (`-Port`, `-Prefix`,
    /// …), other client-address claims (`True-Client-IP`, …) and rewrite or method overrides
    /// (`X-Original-URL`, `X-HTTP-Method-Override`, …) that origins may act on behind the
    /// gateway's routing: claims only a trusted hop may make.
    ForwardingClaim,
    /// A name with `_`: CGI-style origins fold `Content_Length` onto `Content-Length`.
    Underscored,
}

/// A parsed request head: ranges into the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub len: usize,
    pub method: Range<usize>,
    /// The request-target as sent (origin-form or absolute-form).
    pub target: Range<usize>,
    /// The path (origin-form, without the query).
    pub path: Range<usize>,
    /// The query including its `?`, or empty.
    pub query: Range<usize>,
    /// Authority from an absolute-form target, which overrides `Host` for routing.
    pub target_authority: Option<Range<usize>>,
    pub version: Version,
    pub fields: Vec<Field>,
    pub kinds: Vec<Known>,
    pub host: Option<Range<usize>>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub upgrade: bool,
    pub request_id: Option<Range<usize>>,
    /// Tokens of the `Connection` header that name other hop-by-hop fields.
    connection_names: Vec<Range<usize>>,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            len: 0,
            method: 0..0,
            target: 0..0,
            path: 0..0,
            query: 0..0,
            target_authority: None,
            version: Version::Http11,
            fields: Vec::with_capacity(32),
            kinds: Vec::with_capacity(32),
            host: None,
            framing: Framing::None,
            keep_alive: true,
            expect_continue: false,
            upgrade: false,
            request_id: None,
            connection_names: Vec::new(),
        }
    }
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Bare CR, bare LF and NUL are never allowed in a head (httparse tolerates bare LF).
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    let mut prev = 0u8;
    for &b in head {
        match b {
            0 => return Err(HeadError::Malformed("NUL in request head")),
            b'\n' if prev != b'\r' => return Err(HeadError::Malformed("bare LF in request head")),
            _ if prev == b'\r' && b != b'\n' => {
                return Err(HeadError::Malformed("bare CR in request head"));
            }
            _ => {}
        }
        prev = b;
    }
    Ok(())
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Splits a comma-separated field value into trimmed elements (empty ones included).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn classify(name: &[u8]) -> Known {
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if eq("te") => Known::HopByHop,
        4 if eq("host") => Known::Host,
        7 if eq("upgrade") => Known::Upgrade,
        7 if eq("trailer") => Known::HopByHop,
        9 if eq("x-real-ip") => Known::XRealIp,
        10 if eq("connection") || eq("keep-alive") => Known::HopByHop,
        12 if eq("x-request-id") => Known::XRequestId,
        14 if eq("content-length") => Known::ContentLength,
        15 if eq("x-forwarded-for") => Known::XForwardedFor,
        16 if eq("proxy-connection") => Known::HopByHop,
        16 if eq("x-forwarded-host") => Known::XForwardedHost,
        17 if eq("transfer-encoding") => Known::TransferEncoding,
        17 if eq("x-forwarded-proto") => Known::XForwardedProto,
        21 if eq("x-client-cert-subject") => Known::GatewayAsserted,
        10 if eq("x-consumer") => Known::GatewayAsserted,
        6 if eq("cookie") => Known::Cookie,
        9 if eq("forwarded") || eq("client-ip") => Known::ForwardingClaim,
        11 if eq("x-forwarded") => Known::ForwardingClaim,
        13 if eq("x-rewrite-url") || eq("x-http-method") => Known::ForwardingClaim,
        14 if eq("x-original-url") || eq("true-client-ip") => Known::ForwardingClaim,
        17 if eq("x-method-override") => Known::ForwardingClaim,
        19 if eq("x-cluster-client-ip") => Known::ForwardingClaim,
        22 if eq("x-http-method-override") => Known::ForwardingClaim,
        n if n > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") => Known::ForwardingClaim,
        _ if name.contains(&b'_') => Known::Underscored,
        _ => Known::Other,
    }
}

/// RFC 3986 `host [":" port]`, strictly: a name of letters, digits, `-` and `_` in non-empty
/// dot-separated labels (one trailing dot allowed; IPv4 addresses are such names), at most
/// 253 bytes, or an `[IPv6]` literal; a port of 1 to 5 digits. Anything looser (`a.com?`,
/// `a%2ecom`, `a..com`, `a:80:80`) is read differently by different origins, which turns a
/// host-scoped route into a suggestion.
pub fn is_valid_authority(v: &[u8]) -> bool {
    let (host_end, ok) = if v.first() == Some(&b'[') {
        match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let inner = &v[1..end];
                let ok = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                (end + 1, ok)
            }
            None => (v.len(), false),
        }
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let name = &v[..end];
        let name = name.strip_suffix(b".").unwrap_or(name);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split(|&b| b == b'.').all(|label| {
                !label.is_empty()
                    && label
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        (end, ok)
    };
    ok && match &v[host_end..] {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// A client's request id is kept when it is printable ASCII and at most 128 bytes.
pub fn is_valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// RFC 3986 characters allowed in a request-target (pchar, `/`, `?`, `%`, and the
/// authority's `[`/`]`); anything else (controls, space, `"<>\\^`{|}`, non-ASCII) is
/// something origins disagree on, so it is refused rather than forwarded.
fn is_target_byte(b: u8) -> bool {
    TARGET_BYTES[usize::from(b)]
}

const TARGET_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=:@/?%[]";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// Rejects `.` and `..` segments (also percent-encoded) so prefix routes cannot be escaped.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(is_dot_segment)
}

fn is_dot_segment(segment: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// Why a path was refused by [`normalize_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `;` (also `%3B`) while they are refused: origins disagree on what
    /// they mean.
    AmbiguousSegment,
    /// An encoded control character (`%00`-`%1F`, `%7F`) or a byte that never starts valid
    /// UTF-8 (`%C0`, `%C1`, `%F5`-`%FF`: overlong or out-of-range forms origins may fold).
    ForbiddenByte,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a path in place (RFC 3986 §6.2.2) and returns its new length: percent-encoded
/// unreserved characters are decoded, other escapes get upper-case hex, and runs of `/` merge
/// into one. `%2F`, `%5C` and `;` are refused unless `keep_escaped_slashes`. The result is
/// never longer than the input, so it fits where the input was. (Dot segments are refused
/// before this runs, encoded ones included, so decoding cannot create one.)
pub fn normalize_path(path: &mut [u8], keep_escaped_slashes: bool) -> Result<usize, PathError> {
    let (mut read, mut write) = (0, 0);
    while read < path.len() {
        let b = path[read];
        match b {
            b'%' => {
                let hi = path.get(read + 1).copied().and_then(hex_value);
                let lo = path.get(read + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                let decoded = hi << 4 | lo;
                if decoded < 0x20 || decoded == 0x7f || matches!(decoded, 0xc0 | 0xc1 | 0xf5..) {
                    return Err(PathError::ForbiddenByte);
                }
                if is_unreserved(decoded) {
                    path[write] = decoded;
                    write += 1;
                } else {
                    if matches!(decoded, b'/' | b'\\' | b';') && !keep_escaped_slashes {
                        return Err(PathError::AmbiguousSegment);
                    }
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    path[write] = b'%';
                    path[write + 1] = HEX[usize::from(hi)];
                    path[write + 2] = HEX[usize::from(lo)];
                    write += 3;
                }
                read += 3;
            }
            b';' if !keep_escaped_slashes => return Err(PathError::AmbiguousSegment),
            b'/' if write > 0 && path[write - 1] == b'/' => read += 1,
            _ => {
                path[write] = b;
                write += 1;
                read += 1;
            }
        }
    }
    Ok(write)
}

/// Scans a growing request head only where it grew, so a client that dribbles its head byte
/// by byte costs one pass over it, not one per byte (the full parse runs once, when the blank
/// line is in).
#[derive(Default)]
pub struct HeadScan {
    scanned: usize,
    saw_line_end: bool,
}

impl HeadScan {
    /// `Ok(true)` when the head may be complete (parse it now), `Ok(false)` when more bytes are
    /// needed, or the error an incomplete head already shows.
    pub fn check(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<bool, HeadError> {
        let new = buf.get(self.scanned..).unwrap_or_default();
        let complete = buf
            .get(self.scanned.saturating_sub(3)..)
            .is_some_and(|tail| tail.windows(4).any(|w| w == b"\r\n\r\n"));
        self.saw_line_end |= new.contains(&b'\n');
        let nul = new.contains(&0);
        self.scanned = buf.len();
        if complete {
            return Ok(true);
        }
        if !self.saw_line_end && buf.len() > limits.max_uri_bytes + 64 {
            return Err(HeadError::UriTooLong);
        }
        if buf.len() >= limits.max_header_bytes {
            return Err(HeadError::HeadersTooLarge);
        }
        if nul {
            return Err(HeadError::Malformed("NUL in request head"));
        }
        Ok(false)
    }
}

/// Vectors whose capacity grew past this many entries are shrunk before a connection idles
/// or its state is pooled, so one large request does not pin memory for the connection's life.
const KEEP_ENTRIES: usize = 64;

fn footprint<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > KEEP_ENTRIES {
        v.clear();
        v.shrink_to(KEEP_ENTRIES / 2);
    }
}

/// Heap bytes of a head's index (fields, their kinds, `Connection` names).
fn index_footprint(fields: &Vec<Field>, kinds: &Vec<Known>, names: &Vec<Range<usize>>) -> usize {
    footprint(fields) + footprint(kinds) + footprint(names)
}

/// Gives back memory a large head made its index grow to (between messages only).
fn shrink_index(fields: &mut Vec<Field>, kinds: &mut Vec<Known>, names: &mut Vec<Range<usize>>) {
    shrink(fields);
    shrink(kinds);
    shrink(names);
}

/// The value of the first `Upgrade` field.
fn upgrade_field<'b>(fields: &[Field], kinds: &[Known], buf: &'b [u8]) -> Option<&'b [u8]> {
    fields
        .iter()
        .zip(kinds)
        .find(|(_, k)| **k == Known::Upgrade)
        .map(|(f, _)| &buf[f.value.clone()])
}

impl RequestHead {
    pub fn footprint(&self) -> usize {
        index_footprint(&self.fields, &self.kinds, &self.connection_names)
    }

    pub fn shrink(&mut self) {
        shrink_index(
            &mut self.fields,
            &mut self.kinds,
            &mut self.connection_names,
        );
    }

    /// The `Upgrade` field's value, if the request asked to upgrade (`Connection: upgrade`).
    pub fn upgrade_offer<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.upgrade
            .then(|| upgrade_field(&self.fields, &self.kinds, buf))
            .flatten()
    }

    /// Normalises the path in `buf` (see [`normalize_path`]) and shrinks its range.
    pub fn normalize_path(
        &mut self,
        buf: &mut [u8],
        keep_escaped_slashes: bool,
    ) -> Result<(), PathError> {
        if buf.get(self.path.start) != Some(&b'/') {
            return Ok(()); // `OPTIONS *`
        }
        let len = normalize_path(&mut buf[self.path.clone()], keep_escaped_slashes)?;
        self.path.end = self.path.start + len;
        Ok(())
    }

    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method.clone()]
    }

    pub fn is_head_method(&self, buf: &[u8]) -> bool {
        self.method(buf) == b"HEAD"
    }

    /// The first field named `name` (any case).
    pub fn field<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| buf[f.name.clone()].eq_ignore_ascii_case(name))
            .map(|f| &buf[f.value.clone()])
    }

    /// Whether more than one field is named `name` (any case).
    pub fn is_repeated(&self, buf: &[u8], name: &[u8]) -> bool {
        self.fields
            .iter()
            .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(name))
            .nth(1)
            .is_some()
    }

    /// The value of cookie `name` from any `Cookie` field.
    pub fn cookie<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"cookie"))
            .flat_map(|f| buf[f.value.clone()].split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (&pair[..eq] == name).then(|| &pair[eq + 1..])
            })
    }

    /// True when `name` (lower-case) is listed in `Connection` and so must not be forwarded.
    pub fn is_connection_named(&self, buf: &[u8], lower_name: &[u8]) -> bool {
        self.connection_names
            .iter()
            .any(|r| buf[r.clone()].eq_ignore_ascii_case(lower_name))
    }

    /// Parses a request head at the start of `buf`. `Ok(false)` means more bytes are needed.
    pub fn parse(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<bool, HeadError> {
        let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(buf, &mut storage[..max_headers]);
        let len = match status {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                check_partial(buf, limits)?;
                return Ok(false);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
            Err(httparse::Error::Version) => {
                return Err(HeadError::Malformed("unsupported HTTP version"));
            }
            Err(httparse::Error::Token) => {
                return Err(HeadError::Malformed("invalid character in method"));
            }
            Err(httparse::Error::HeaderName) => {
                return Err(HeadError::Malformed("invalid header field name"));
            }
            Err(httparse::Error::HeaderValue) => {
                return Err(HeadError::Malformed("invalid header field value"));
            }
            Err(httparse::Error::NewLine) => {
                return Err(HeadError::Malformed("invalid line ending"));
            }
            Err(_) => return Err(HeadError::Malformed("malformed request line")),
        };
        if len > limits.max_header_bytes {
            return Err(HeadError::HeadersTooLarge);
        }
        check_line_endings(&buf[..len])?;
        self.len = len;
        self.version = match req.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(HeadError::Malformed("unsupported HTTP version")),
        };
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("");
        if target.len() > limits.max_uri_bytes {
            return Err(HeadError::UriTooLong);
        }
        self.method = range_of(buf, method.as_bytes());
        self.target = range_of(buf, target.as_bytes());
        if method == "CONNECT" {
            return Err(HeadError::MethodNotImplemented);
        }
        self.split_target(buf, method)?;
        self.fields.clear();
        self.kinds.clear();
        for h in req.headers.iter() {
            if h.name.is_empty() {
                return Err(HeadError::Malformed("empty header field name"));
            }
            self.fields.push(Field {
                name: range_of(buf, h.name.as_bytes()),
                value: range_of(buf, h.value),
            });
            self.kinds.push(classify(h.name.as_bytes()));
        }
        self.analyse_fields(buf).map(|()| true)
    }

    fn split_target(&mut self, buf: &[u8], method: &str) -> Result<(), HeadError> {
        let target = &buf[self.target.clone()];
        if target.contains(&b'#') {
            return Err(HeadError::Malformed("fragment in request-target"));
        }
        if !target.iter().all(|&b| is_target_byte(b)) {
            return Err(HeadError::Malformed("invalid character in request-target"));
        }
        self.target_authority = None;
        let origin_form = if target.first() == Some(&b'/') {
            self.target.clone()
        } else if target == b"*" && method == "OPTIONS" {
            self.path = self.target.clone();
            self.query = self.target.end..self.target.end;
            return Ok(());
        } else {
            let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
                7
            } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
                8
            } else {
                return Err(HeadError::Malformed("invalid request-target"));
            };
            let after = &target[rest..];
            let auth_len = after
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after.len());
            if !is_valid_authority(&after[..auth_len]) {
                return Err(HeadError::Malformed("invalid authority in request-target"));
            }
            let start = self.target.start + rest;
            self.target_authority = Some(start..start + auth_len);
            if auth_len == after.len() || after[auth_len] != b'/' {
                // `http://host?q` means path `/` (RFC 9112 §3.2.2). The path range points at
                // the last `/` of the scheme's `//` so that it stays a range into the head.
                let q = start + auth_len;
                self.path = start - 1..start;
                self.query = q..self.target.end;
                return Ok(());
            }
            start + auth_len..self.target.end
        };
        let q = buf[origin_form.clone()]
            .iter()
            .position(|&b| b == b'?')
            .map_or(origin_form.end, |p| origin_form.start + p);
        self.path = origin_form.start..q;
        self.query = q..origin_form.end;
        if has_dot_segment(&buf[self.path.clone()]) {
            return Err(HeadError::Malformed("dot segment in path"));
        }
        Ok(())
    }

    fn analyse_fields(&mut self, buf: &[u8]) -> Result<(), HeadError> {
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut saw_te = false;
        let mut close = false;
        let mut keep_alive_token = false;
        let mut upgrade_token = false;
        let mut has_upgrade = false;
        self.host = None;
        self.request_id = None;
        self.expect_continue = false;
        self.connection_names.clear();
        for (field, &kind) in self.fields.iter().zip(&self.kinds) {
            let value = &buf[field.value.clone()];
            match kind {
                Known::ContentLength => {
                    if content_length.is_some() {
                        return Err(HeadError::Malformed("multiple Content-Length fields"));
                    }
                    content_length = Some(
                        parse_content_length(value)
                            .ok_or(HeadError::Malformed("invalid Content-Length"))?,
                    );
                }
                Known::TransferEncoding => {
                    if saw_te {
                        return Err(HeadError::Malformed("multiple Transfer-Encoding fields"));
                    }
                    saw_te = true;
                    if self.version == Version::Http10 {
                        return Err(HeadError::Malformed(
                            "Transfer-Encoding in an HTTP/1.0 request",
                        ));
                    }
                    chunked = transfer_coding_is_chunked(value)?;
                }
                Known::Host => {
                    if self.host.is_some() {
                        return Err(HeadError::Malformed("multiple Host fields"));
                    }
                    // Empty is allowed (RFC 9112 §3.2: a target without an authority).
                    if !value.is_empty() && !is_valid_authority(value) {
                        return Err(HeadError::Malformed("invalid Host"));
                    }
                    self.host = Some(field.value.clone());
                }
                Known::Upgrade => {
                    // Two fields would let an allow-list check one and the origin read both.
                    if has_upgrade {
                        return Err(HeadError::Malformed("multiple Upgrade fields"));
                    }
                    has_upgrade = true;
                }
                Known::XRequestId if self.request_id.is_none() && is_valid_request_id(value) => {
                    self.request_id = Some(field.value.clone());
                }
                Known::HopByHop if buf[field.name.clone()].eq_ignore_ascii_case(b"connection") => {
                    let start = field.value.start;
                    for token in value.split(|&b| b == b',') {
                        let t = trim_ows(token);
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive_token = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            upgrade_token = true;
                        } else if !t.is_empty() {
                            if self.connection_names.len() >= MAX_CONNECTION_TOKENS {
                                return Err(HeadError::Malformed("too many Connection tokens"));
                            }
                            let off = start + (t.as_ptr() as usize - value.as_ptr() as usize);
                            self.connection_names.push(off..off + t.len());
                        }
                    }
                }
                Known::Other if buf[field.name.clone()].eq_ignore_ascii_case(b"expect") => {
                    if value.eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    } else {
                        return Err(HeadError::ExpectationFailed);
                    }
                }
                _ => {}
            }
        }
        if self.version == Version::Http11 && self.host.is_none() {
            return Err(HeadError::Malformed("missing Host"));
        }
        self.framing = match (content_length, saw_te) {
            (Some(_), true) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            (_, true) if chunked => Framing::Chunked,
            (_, true) => return Err(HeadError::UnsupportedTransferCoding),
            (Some(0) | None, false) => Framing::None,
            (Some(n), false) => Framing::Length(n),
        };
        self.keep_alive = match self.version {
            Version::Http11 => !close,
            Version::Http10 => keep_alive_token && !close,
        };
        self.upgrade = upgrade_token && has_upgrade;
        Ok(())
    }
}

/// `Transfer-Encoding` must be exactly `chunked` (no empty elements, no repeats). Other
/// codings are answered with 501, since we would have to forward them undecoded.
fn transfer_coding_is_chunked(value: &[u8]) -> Result<bool, HeadError> {
    let mut elements = 0;
    let mut chunked_count = 0;
    let mut last_chunked = false;
    for element in list_elements(value) {
        if element.is_empty() {
            return Err(HeadError::Malformed("empty element in Transfer-Encoding"));
        }
        elements += 1;
        last_chunked = element.eq_ignore_ascii_case(b"chunked");
        chunked_count += usize::from(last_chunked);
    }
    if chunked_count > 1 {
        return Err(HeadError::Malformed(
            "chunked listed twice in Transfer-Encoding",
        ));
    }
    if !last_chunked {
        return Err(HeadError::Malformed("final transfer coding is not chunked"));
    }
    if elements > 1 {
        return Err(HeadError::UnsupportedTransferCoding);
    }
    Ok(true)
}

/// Errors we can already see in an incomplete head.
fn check_partial(buf: &[u8], limits: &HeadLimits) -> Result<(), HeadError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.is_none() && buf.len() > limits.max_uri_bytes + 64 {
        return Err(HeadError::UriTooLong);
    }
    if buf.len() >= limits.max_header_bytes {
        return Err(HeadError::HeadersTooLarge);
    }
    if buf.contains(&0) {
        return Err(HeadError::Malformed("NUL in request head"));
    }
    Ok(())
}

/// A parsed response head from an origin.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub version: Version,
    pub fields: Vec<Field>,
    pub kinds: Vec<Known>,
    pub framing: Framing,
    /// The origin allows reusing this connection after the body.
    pub reusable: bool,
    connection_names: Vec<Range<usize>>,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            len: 0,
            status: 0,
            reason: 0..0,
            version: Version::Http11,
            fields: Vec::with_capacity(32),
            kinds: Vec::with_capacity(32),
            framing: Framing::None,
            reusable: false,
            connection_names: Vec::new(),
        }
    }
}

/// Why an origin's response head was unusable (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from upstream: {0}")]
pub struct BadResponse(pub &'static str);

impl ResponseHead {
    pub fn footprint(&self) -> usize {
        index_footprint(&self.fields, &self.kinds, &self.connection_names)
    }

    pub fn shrink(&mut self) {
        shrink_index(
            &mut self.fields,
            &mut self.kinds,
            &mut self.connection_names,
        );
    }

    /// The `Upgrade` field's value, if any.
    pub fn upgrade<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        upgrade_field(&self.fields, &self.kinds, buf)
    }

    pub fn is_connection_named(&self, buf: &[u8], lower_name: &[u8]) -> bool {
        self.connection_names
            .iter()
            .any(|r| buf[r.clone()].eq_ignore_ascii_case(lower_name))
    }

    /// Parses a response head; `Ok(false)` means more bytes are needed. `head_request` and
    /// the status decide whether a body follows (RFC 9112 §6.3).
    pub fn parse(
        &mut self,
        buf: &[u8],
        head_request: bool,
        max_bytes: usize,
    ) -> Result<bool, BadResponse> {
        let mut storage =
            [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut storage,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= max_bytes {
                    return Err(BadResponse("response head too large"));
                }
                return Ok(false);
            }
            Err(_) => return Err(BadResponse("malformed response head")),
        };
        if len > max_bytes {
            return Err(BadResponse("response head too large"));
        }
        check_line_endings(&buf[..len]).map_err(|_| BadResponse("invalid line ending"))?;
        self.len = len;
        self.status = res.code.unwrap_or(0);
        if !(100..=599).contains(&self.status) {
            return Err(BadResponse("invalid status code"));
        }
        self.reason = range_of(buf, res.reason.unwrap_or("").as_bytes());
        self.version = if res.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        self.fields.clear();
        self.kinds.clear();
        for h in res.headers.iter() {
            self.fields.push(Field {
                name: range_of(buf, h.name.as_bytes()),
                value: range_of(buf, h.value),
            });
            self.kinds.push(classify(h.name.as_bytes()));
        }
        self.analyse_fields(buf, head_request)?;
        Ok(true)
    }

    fn analyse_fields(&mut self, buf: &[u8], head_request: bool) -> Result<(), BadResponse> {
        let mut content_length: Option<u64> = None;
        let mut saw_te = false;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive_token = false;
        let mut saw_upgrade = false;
        self.connection_names.clear();
        for (field, &kind) in self.fields.iter().zip(&self.kinds) {
            let value = &buf[field.value.clone()];
            match kind {
                Known::ContentLength => {
                    let n =
                        parse_content_length(value).ok_or(BadResponse("invalid Content-Length"))?;
                    if content_length.is_some_and(|c| c != n) {
                        return Err(BadResponse("conflicting Content-Length fields"));
                    }
                    content_length = Some(n);
                }
                Known::Upgrade => {
                    if saw_upgrade {
                        return Err(BadResponse("multiple Upgrade fields"));
                    }
                    saw_upgrade = true;
                }
                Known::TransferEncoding => {
                    if saw_te {
                        return Err(BadResponse("multiple Transfer-Encoding fields"));
                    }
                    saw_te = true;
                    chunked = transfer_coding_is_chunked(value)
                        .map_err(|_| BadResponse("unsupported Transfer-Encoding"))?;
                }
                Known::HopByHop if buf[field.name.clone()].eq_ignore_ascii_case(b"connection") => {
                    let start = field.value.start;
                    for token in value.split(|&b| b == b',') {
                        let t = trim_ows(token);
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive_token = true;
                        } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade") {
                            if self.connection_names.len() >= MAX_CONNECTION_TOKENS {
                                return Err(BadResponse("too many Connection tokens"));
                            }
                            let off = start + (t.as_ptr() as usize - value.as_ptr() as usize);
                            self.connection_names.push(off..off + t.len());
                        }
                    }
                }
                _ => {}
            }
        }
        if saw_te && content_length.is_some() {
            return Err(BadResponse("both Content-Length and Transfer-Encoding"));
        }
        let bodiless =
            head_request || self.status < 200 || self.status == 204 || self.status == 304;
        self.framing = if bodiless {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else {
            match content_length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        self.reusable = self.framing != Framing::UntilClose
            && !close
            && (self.version == Version::Http11 || keep_alive_token);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 16384,
        max_headers: 100,
        max_uri_bytes: 8192,
    };

    fn parse(raw: &[u8]) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        match head.parse(raw, &LIMITS)? {
            true => Ok(head),
            false => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn parses_a_simple_request() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(&raw[h.path.clone()], b"/a/b");
        assert_eq!(&raw[h.query.clone()], b"?x=1");
        assert_eq!(&raw[h.host.clone().unwrap()], b"Example.com:8080");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert!(h.is_connection_named(raw, b"x-secret"));
        assert_eq!(h.len, raw.len());
    }

    #[test]
    fn partial_heads_need_more() {
        let mut head = RequestHead::default();
        assert_eq!(
            head.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS),
            Ok(false)
        );
    }

    #[test]
    fn framing_from_length_and_chunked() {
        let h = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        let h = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn absolute_form_targets_split_authority() {
        let raw = b"GET http://api.example.com/v1?q HTTP/1.1\r\nHost: x\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(
            &raw[h.target_authority.clone().unwrap()],
            b"api.example.com"
        );
        assert_eq!(&raw[h.path.clone()], b"/v1");
        assert_eq!(&raw[h.query.clone()], b"?q");
    }

    fn rejected(raw: &[u8]) -> u16 {
        match parse(raw) {
            Ok(_) => panic!("accepted: {:?}", String::from_utf8_lossy(raw)),
            Err(e) => e.status(),
        }
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a/%2e%2E/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in cases {
            assert_eq!(rejected(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    fn normalized(path: &str, keep: bool) -> Result<String, PathError> {
        let mut bytes = path.as_bytes().to_vec();
        let n = normalize_path(&mut bytes, keep)?;
        Ok(String::from_utf8(bytes[..n].to_vec()).unwrap())
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalized("//admin//x/", false).unwrap(), "/admin/x/");
        assert_eq!(
            normalized("/%61dmin/%7Euser", false).unwrap(),
            "/admin/~user"
        );
        assert_eq!(normalized("/a%20b/%c3%a9", false).unwrap(), "/a%20b/%C3%A9");
        assert_eq!(normalized("/", false).unwrap(), "/");
        for bad in [
            "/admin%2Fsecret",
            "/x/..%2fadmin",
            "/a%5cb",
            "/admin;x/secret",
        ] {
            assert_eq!(
                normalized(bad, false),
                Err(PathError::AmbiguousSegment),
                "{bad}"
            );
        }
        assert_eq!(
            normalized("/admin%2fsecret", true).unwrap(),
            "/admin%2Fsecret"
        );
        assert_eq!(normalized("/a;b", true).unwrap(), "/a;b");
        for bad in ["/%", "/%4", "/%zz"] {
            assert_eq!(normalized(bad, false), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(
            normalized("/admin%3B", false),
            Err(PathError::AmbiguousSegment)
        );
        for bad in [
            "/admin%00",
            "/a%09",
            "/a%7f",
            "/%C0%AFadmin",
            "/%c1",
            "/%ff",
        ] {
            assert_eq!(
                normalized(bad, false),
                Err(PathError::ForbiddenByte),
                "{bad}"
            );
        }
    }

    #[test]
    fn absolute_form_without_path_means_slash() {
        let raw = b"GET http://example.com?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(&raw[h.path.clone()], b"/");
        assert_eq!(&raw[h.query.clone()], b"?x=1");
        assert_eq!(&raw[h.target_authority.clone().unwrap()], b"example.com");
        let raw = b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(&raw[h.path.clone()], b"/");
        assert!(h.query.is_empty());
    }

    #[test]
    fn connection_tokens_are_capped() {
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: {}a\r\n\r\n",
            "a,".repeat(8000)
        );
        let mut h = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 64 * 1024,
            ..LIMITS
        };
        assert_eq!(
            h.parse(many.as_bytes(), &limits),
            Err(HeadError::Malformed("too many Connection tokens"))
        );
        assert!(h.connection_names.capacity() <= 64);
    }

    #[test]
    fn authorities_are_strict() {
        for good in [
            "a",
            "example.com",
            "Example.COM.",
            "a-b_c.d:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "x:1",
        ] {
            assert!(is_valid_authority(good.as_bytes()), "{good}");
        }
        let long = format!("{}.admin.example.com", "a".repeat(250));
        for bad in [
            "",
            "a.com?",
            "a.com#",
            "a.com\\x",
            "a.com,x",
            "a.com;",
            "a%2ecom",
            "a..com",
            "a.com..",
            "a:80:80",
            "x:a.com",
            "[::1]a.com",
            "a:",
            "a:123456",
            "[]",
            "[::1",
            ".",
            "é.com",
            long.as_str(),
        ] {
            assert!(!is_valid_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn a_second_upgrade_field_is_refused() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n";
        assert_eq!(rejected(raw), 400);
    }

    #[test]
    fn forwarding_claims_and_underscores_are_classified() {
        for claim in [
            "X-Original-URL",
            "x-rewrite-url",
            "X-Forwarded",
            "True-Client-IP",
            "client-ip",
            "X-HTTP-Method-Override",
        ] {
            assert_eq!(
                classify(claim.as_bytes()),
                Known::ForwardingClaim,
                "{claim}"
            );
        }
        assert_eq!(classify(b"Forwarded"), Known::ForwardingClaim);
        assert_eq!(classify(b"X-Forwarded-Port"), Known::ForwardingClaim);
        assert_eq!(classify(b"x-forwarded-prefix"), Known::ForwardingClaim);
        assert_eq!(classify(b"X-Forwarded-For"), Known::XForwardedFor);
        assert_eq!(classify(b"Transfer_Encoding"), Known::Underscored);
        assert_eq!(classify(b"x-custom"), Known::Other);
    }

    #[test]
    fn head_completion_scan_is_incremental() {
        let mut scan = HeadScan::default();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 1..head.len() {
            assert_eq!(scan.check(&head[..end], &LIMITS), Ok(false), "{end}");
        }
        assert_eq!(scan.check(head, &LIMITS), Ok(true));
        let mut scan = HeadScan::default();
        assert_eq!(scan.check(b"GET /", &LIMITS), Ok(false));
        assert!(scan.check(b"GET /\0", &LIMITS).is_err());
    }

    #[test]
    fn unknown_transfer_coding_is_501() {
        assert_eq!(
            rejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
    }

    #[test]
    fn limits_map_to_431_and_414() {
        let limits = HeadLimits {
            max_header_bytes: 1024,
            max_headers: 3,
            max_uri_bytes: 32,
        };
        let mut h = RequestHead::default();
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(h.parse(many, &limits), Err(HeadError::HeadersTooLarge));
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(40));
        assert_eq!(
            h.parse(long_uri.as_bytes(), &limits),
            Err(HeadError::UriTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(2000));
        assert_eq!(
            h.parse(big.as_bytes(), &limits),
            Err(HeadError::HeadersTooLarge)
        );
    }

    #[test]
    fn response_framing() {
        let mut r = ResponseHead::default();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(r.parse(raw, false, 16384), Ok(true));
        assert_eq!(r.framing, Framing::Length(3));
        assert!(r.reusable);
        assert_eq!(r.parse(raw, true, 16384), Ok(true));
        assert_eq!(r.framing, Framing::None);
        let raw = b"HTTP/1.1 200 OK\r\n\r\n";
        r.parse(raw, false, 16384).unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.reusable);
        let raw = b"HTTP/1.1 204 No Content\r\n\r\n";
        r.parse(raw, false, 16384).unwrap();
        assert_eq!(r.framing, Framing::None);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(r.parse(raw, false, 16384).is_err());
    }
}
