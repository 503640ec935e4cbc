//! The gateway's own answers, typed: one [`Reject`] per refusal (status, the JSON error
//! text, a stable `kind` label for metrics and logs, and any header lines it must carry), and
//! the conversions from every lower-layer failure, so each text is written once. Knows
//! nothing of sockets: the request path writes a `Reject` with one writer.

use crate::auth::{Denial, RouteAuth};
use crate::http::HeadError;
use crate::http::head::PathError;

/// A refusal the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// The `error` text of the JSON body (written by the gateway, or escaped when it quotes
    /// a peer: the JSON writer escapes it either way).
    pub message: std::borrow::Cow<'static, str>,
    /// Stable label for metrics and logs (`no_route`, `upstream_timeout`, …).
    pub kind: &'static str,
    /// Header lines the answer carries (`allow`, `location`, …), each ending in CRLF.
    pub headers: Vec<u8>,
    /// The request was malformed: the connection closes after the answer, whatever its
    /// keep-alive said (its framing cannot be trusted).
    pub closes: bool,
}

impl Reject {
    pub const fn new(status: u16, kind: &'static str, message: &'static str) -> Reject {
        Reject {
            status,
            message: std::borrow::Cow::Borrowed(message),
            kind,
            headers: Vec::new(),
            closes: false,
        }
    }

    /// A refusal from `validate = {...}`.
    pub fn invalid(invalid: crate::perimeter::validate::Invalid) -> Reject {
        let kind = match invalid.status {
            415 => "unsupported_media_type",
            _ => "invalid_request",
        };
        Reject {
            message: invalid.message,
            ..Reject::new(invalid.status, kind, "")
        }
    }

    /// A refusal by a rate-limit policy: 429 with `Retry-After` and the policy's fields, or
    /// 503 for a cluster limit that cannot be checked (`on_redis_down = "closed"`).
    pub fn rate_limited(
        limits: &crate::limit::ShardLimits,
        refusal: &crate::limit::Refusal,
    ) -> Reject {
        let mut reject = match refusal.verdict {
            Some(_) => Reject::new(429, "rate_limited", "rate limit exceeded"),
            None => Reject::new(503, "ratelimit_unavailable", "rate limit cannot be checked"),
        };
        crate::limit::push_refusal_fields(&mut reject.headers, limits, refusal);
        reject
    }

    /// A request sending a rate-limit key header more than once (names are from the
    /// config, checked to be a header token at load).
    pub fn repeated_key_header(name: &[u8]) -> Reject {
        Reject {
            message: format!("more than one {} header", String::from_utf8_lossy(name)).into(),
            ..Reject::new(400, "invalid_request", "")
        }
    }

    /// The same answer, closing the connection after it.
    pub const fn closing(mut self) -> Reject {
        self.closes = true;
        self
    }

    /// Adds a header line (`name: value`); values come from the gateway, never a peer.
    pub fn with_header(mut self, name: &[u8], value: &[u8]) -> Reject {
        crate::http::push_header(&mut self.headers, name, value);
        self
    }
}

impl From<HeadError> for Reject {
    fn from(e: HeadError) -> Reject {
        let refusal = match e {
            HeadError::Malformed(m) => Reject::new(400, "bad_request", m),
            HeadError::HeadersTooLarge => {
                Reject::new(431, "headers_too_large", "request header fields too large")
            }
            HeadError::UriTooLong => Reject::new(414, "uri_too_long", "request-target too long"),
            HeadError::UnsupportedTransferCoding => Reject::new(
                501,
                "unsupported_transfer_coding",
                "unsupported transfer coding",
            ),
            HeadError::ExpectationFailed => {
                Reject::new(417, "expectation_failed", "unsupported expectation")
            }
            HeadError::MethodNotImplemented => {
                Reject::new(501, "method_not_implemented", "method not implemented")
            }
        };
        refusal.closing()
    }
}

impl From<PathError> for Reject {
    fn from(e: PathError) -> Reject {
        let message = match e {
            PathError::BadEscape => "invalid percent-encoding in path",
            PathError::AmbiguousSegment => "encoded slash, backslash or ';' in path",
            PathError::ForbiddenByte => "encoded control character or invalid UTF-8 byte in path",
        };
        Reject::new(400, "bad_path", message).closing()
    }
}

pub const HEADER_TIMEOUT: Reject =
    Reject::new(408, "header_timeout", "request header read timed out");
pub const HEADERS_TOO_LARGE: Reject =
    Reject::new(431, "headers_too_large", "request header fields too large");
pub const INCOMPLETE_HEAD: Reject = Reject::new(400, "bad_request", "incomplete request head");
pub const NO_ROUTE: Reject = Reject::new(404, "no_route", "no route matched");
pub const IP_DENIED: Reject = Reject::new(403, "ip_denied", "client address not allowed");
pub const NO_UPSTREAM_CREDENTIAL: Reject = Reject::new(
    403,
    "no_upstream_credential",
    "no upstream credential for this consumer",
);
pub const BAD_PATH: Reject = Reject::new(400, "bad_path", "invalid path").closing();
pub const BODY_TOO_LARGE: Reject = Reject::new(413, "body_too_large", "request body too large");
pub const BODY_TIMEOUT: Reject = Reject::new(408, "body_timeout", "request body read timed out");
pub const BAD_CHUNKED_BODY: Reject =
    Reject::new(400, "bad_request", "invalid chunked request body");
pub const UPSTREAM_OVERLOADED: Reject = Reject::new(
    503,
    "upstream_overloaded",
    "upstream overloaded (max_requests in flight)",
);
pub const NO_HEALTHY_TARGET: Reject =
    Reject::new(503, "no_healthy_upstream", "no healthy upstream target");
pub const UPSTREAM_TIMEOUT: Reject =
    Reject::new(504, "upstream_timeout", "upstream response timed out");

/// `405` with the methods the route allows.
pub fn method_not_allowed(allow: &str) -> Reject {
    Reject::new(405, "method_not_allowed", "method not allowed")
        .with_header(b"allow", allow.as_bytes())
}

/// The answer to an authentication or authorization refusal (DESIGN.md §4b): 401 with the
/// route's challenges (`error="invalid_token"` when a credential was presented but bad),
/// 403 for a role, 403 `insufficient_scope` for a scope, 503 while keys are unavailable.
pub fn denied(denial: Denial, rules: &RouteAuth) -> Reject {
    let mut r = match denial {
        Denial::Missing => Reject::new(401, "unauthorized", "authentication required"),
        Denial::KeysUnavailable => Reject::new(
            503,
            "jwks_unavailable",
            "token keys not available yet; try again later",
        ),
        Denial::NoCertificate => Reject::new(
            403,
            "forbidden",
            "a verified client certificate is required",
        ),
        Denial::Role => Reject::new(403, "forbidden", "not allowed for this consumer"),
        Denial::Scope => Reject::new(403, "insufficient_scope", "token lacks a required scope")
            .with_header(
                b"www-authenticate",
                b"Bearer realm=\"ringgate\", error=\"insufficient_scope\"",
            ),
        Denial::Token(_) | Denial::Ambiguous | Denial::KeyUnknown | Denial::KeyExpired => {
            Reject::new(401, "unauthorized", "invalid credentials")
        }
    };
    match denial {
        Denial::Missing => r.headers.extend_from_slice(&rules.challenge),
        Denial::Token(_) | Denial::Ambiguous | Denial::KeyUnknown | Denial::KeyExpired => {
            r.headers.extend_from_slice(&rules.challenge_invalid)
        }
        Denial::KeysUnavailable => r.headers.extend_from_slice(b"retry-after: 5\r\n"),
        _ => {}
    }
    r
}

/// `502` for an origin that failed, with what went wrong.
pub fn bad_gateway(message: &'static str) -> Reject {
    Reject::new(502, "bad_gateway", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_errors_keep_their_status() {
        let cases = [
            (HeadError::Malformed("x"), 400),
            (HeadError::HeadersTooLarge, 431),
            (HeadError::UriTooLong, 414),
            (HeadError::UnsupportedTransferCoding, 501),
            (HeadError::ExpectationFailed, 417),
            (HeadError::MethodNotImplemented, 501),
        ];
        for (e, status) in cases {
            let refusal = Reject::from(e);
            assert_eq!(refusal.status, status);
            assert!(refusal.closes, "a malformed head ends its connection");
        }
        assert_eq!(Reject::from(PathError::ForbiddenByte).status, 400);
    }

    #[test]
    fn headers_ride_along() {
        let r = method_not_allowed("GET, HEAD");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, b"allow: GET, HEAD\r\n");
        assert_eq!(r.kind, "method_not_allowed");
    }
}
