//! Route `validate = {...}`: whether a request is acceptable before any origin spends a cycle
//! on it. Head checks (content type, required headers, query size) run in `admit()`; the JSON
//! check runs on a body the request path has buffered (only on `json = true` routes). Pure:
//! no sockets, no shard state.

use crate::http::{Framing, RequestHead};
use std::borrow::Cow;

/// Deepest nesting of arrays and objects a JSON body may have. Parsing is iterative either
/// way; the bound keeps hostile bodies (`[[[[…`) cheap and refuses what no API means.
pub const MAX_JSON_DEPTH: usize = 64;

/// A route's compiled `validate` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Lower-case media types (`type/subtype`, or `type/*`) a request body may have; empty:
    /// any.
    pub content_types: Vec<String>,
    /// Lower-case names of header fields that must be present with a non-empty value.
    pub required_headers: Vec<String>,
    pub max_query_params: Option<usize>,
    /// The body must be well-formed JSON.
    pub json: bool,
}

/// Why a request is not acceptable: the status and the client's JSON `error` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub status: u16,
    pub message: Cow<'static, str>,
}

impl Invalid {
    fn bad(message: impl Into<Cow<'static, str>>) -> Invalid {
        Invalid {
            status: 400,
            message: message.into(),
        }
    }
}

/// Whether a request with this framing carries a body (`Content-Length: 0` does not).
pub fn has_body(framing: Framing) -> bool {
    matches!(framing, Framing::Chunked | Framing::UntilClose)
        || matches!(framing, Framing::Length(n) if n > 0)
}

impl Validation {
    /// The head checks, in order: required headers (400), content type of a body (415),
    /// query parameter count (400).
    pub fn check_head(&self, buf: &[u8], head: &RequestHead) -> Result<(), Invalid> {
        for name in &self.required_headers {
            let present = head.fields.iter().any(|f| {
                buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes())
                    && !buf[f.value.clone()].is_empty()
            });
            if !present {
                return Err(Invalid::bad(format!("missing required header {name}")));
            }
        }
        if !self.content_types.is_empty() && has_body(head.framing) {
            let copies = head
                .fields
                .iter()
                .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"content-type"))
                .count();
            if copies > 1 {
                // Which one would the origin read? Refuse to guess.
                return Err(Invalid::bad("more than one Content-Type"));
            }
            let media = head.field(buf, b"content-type").map(media_type);
            if !media.is_some_and(|m| self.content_types.iter().any(|t| media_matches(t, m))) {
                return Err(Invalid {
                    status: 415,
                    message: format!(
                        "unsupported content type; expected {}",
                        self.content_types.join(" or ")
                    )
                    .into(),
                });
            }
        }
        if let Some(max) = self.max_query_params {
            let query = &buf[head.query.clone()];
            let count = query
                .strip_prefix(b"?")
                .unwrap_or(query)
                .split(|&b| b == b'&')
                .filter(|p| !p.is_empty())
                .count();
            if count > max {
                return Err(Invalid::bad(format!(
                    "too many query parameters ({count}, at most {max})"
                )));
            }
        }
        Ok(())
    }
}

/// The media type of a `Content-Type` value: before any parameter, trimmed.
fn media_type(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// `allowed` is lower-case `type/subtype` or `type/*`; `media` any case.
fn media_matches(allowed: &str, media: &[u8]) -> bool {
    match allowed.strip_suffix("/*") {
        Some(main) => {
            media.len() > main.len() + 1
                && media[..main.len()].eq_ignore_ascii_case(main.as_bytes())
                && media[main.len()] == b'/'
        }
        None => media.eq_ignore_ascii_case(allowed.as_bytes()),
    }
}

/// Whether `body` is one well-formed JSON value (RFC 8259) nested at most
/// [`MAX_JSON_DEPTH`] deep; the error says where it broke.
pub fn check_json(body: &[u8]) -> Result<(), Invalid> {
    if let Some(offset) = too_deep(body) {
        return Err(Invalid::bad(format!(
            "body is not accepted JSON: nested deeper than {MAX_JSON_DEPTH} at byte {offset}"
        )));
    }
    serde_json::from_slice::<Checked>(body)
        .map(|_| ())
        .map_err(|e| Invalid::bad(format!("body is not valid JSON: {e}")))
}

/// Any JSON value, visited without being kept: unlike `IgnoredAny`, strings (keys too) are
/// decoded, so invalid UTF-8 and lone surrogate escapes are refused. Nesting is bounded
/// before this runs ([`too_deep`]), so the recursion is too.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// The offset where nesting first exceeds the bound, if it does (strings skipped, escapes
/// honoured; the rest of the grammar is serde_json's to judge).
fn too_deep(body: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeadLimits;

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 100,
            max_uri_bytes: 4096,
        };
        assert!(h.parse(raw, &limits).unwrap());
        h
    }

    fn rules() -> Validation {
        Validation {
            content_types: vec!["application/json".into(), "text/*".into()],
            required_headers: vec!["x-tenant".into()],
            max_query_params: Some(2),
            json: true,
        }
    }

    fn verdict(raw: &str) -> Result<(), u16> {
        let h = head(raw.as_bytes());
        rules().check_head(raw.as_bytes(), &h).map_err(|e| e.status)
    }

    #[test]
    fn head_checks() {
        let ok = "POST /a?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Tenant: t\r\nContent-Type: Application/JSON; charset=utf-8\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(verdict(ok), Ok(()));
        assert_eq!(
            verdict(&ok.replace("Application/JSON", "text/plain")),
            Ok(())
        );
        assert_eq!(
            verdict(&ok.replace("Application/JSON", "application/xml")),
            Err(415)
        );
        assert_eq!(verdict(&ok.replace("Application/JSON", "text")), Err(415));
        assert_eq!(
            verdict(&ok.replace("Content-Type: Application/JSON; charset=utf-8\r\n", "")),
            Err(415)
        );
        assert_eq!(verdict(&ok.replace("X-Tenant: t", "X-Tenant:")), Err(400));
        let twice = ok.replace("Content-Length", "Content-Type: text/xml\r\nContent-Length");
        assert_eq!(verdict(&twice), Err(400));
        assert_eq!(verdict(&ok.replace("X-Tenant", "X-Other")), Err(400));
        assert_eq!(verdict(&ok.replace("?x=1&y=2", "?x=1&y=2&z")), Err(400));
        assert_eq!(verdict(&ok.replace("?x=1&y=2", "?x=1&&y=2&")), Ok(()));
        // No body: the content type is not asked for.
        assert_eq!(
            verdict("GET / HTTP/1.1\r\nHost: h\r\nX-Tenant: t\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            verdict("POST / HTTP/1.1\r\nHost: h\r\nX-Tenant: t\r\nContent-Length: 0\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn json_bodies() {
        assert_eq!(check_json(br#"{"a":[1,2,{"b":"]]]]"}]}"#), Ok(()));
        assert_eq!(check_json(b" 3 "), Ok(()));
        let e = check_json(b"{\"a\":\n tru}").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert!(check_json(b"").is_err());
        assert!(check_json(b"{} {}").is_err());
        let deep = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert_eq!(check_json(deep.as_bytes()), Ok(()));
        let bomb = "[".repeat(1_000_000);
        let e = check_json(bomb.as_bytes()).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{}", e.message);
        // Strings must be text: raw invalid UTF-8 and lone surrogates are refused.
        assert!(check_json(b"[\"\xff\xfe\"]").is_err());
        assert!(check_json(br#"["\ud800"]"#).is_err());
        assert!(check_json(br#"{"\udc00": 1}"#).is_err());
        assert_eq!(check_json(br#"["\ud83d\ude00", "caf\u00e9"]"#), Ok(()));
        // Brackets inside strings (with escaped quotes) do not count.
        let quoted = format!("[\"\\\"{}\"]", "[".repeat(100));
        assert_eq!(check_json(quoted.as_bytes()), Ok(()));
    }
}
