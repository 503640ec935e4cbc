//! Property tests for the parsers every client and origin byte goes through (the stable-Rust
//! companion of the `fuzz/` targets): no input panics, verdicts are well-formed, valid
//! messages parse the same however they are split.

use proptest::prelude::*;
use ringgate::http::chunked::{ChunkedDecoder, write_chunk_header};
use ringgate::http::{Framing, HeadLimits, RequestHead, ResponseHead};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 * 1024,
    max_headers: 100,
    max_uri_bytes: 8 * 1024,
};

/// Pieces of HTTP, glued at random: reaches far deeper into the parser than uniform bytes.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"GET "[..],
        b"POST ",
        b"/",
        b"/a?b=c",
        b"http://h/x",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\r",
        b"\n",
        b"\0",
        b" ",
        b"\t",
        b":",
        b",",
        b"Host: a",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"chunked",
        b"gzip",
        b"Connection: close",
        b"Expect: 100-continue",
        b"Upgrade: websocket",
        b"0",
        b"12",
        b"99999999999999999999",
        b"-1",
        b"+",
        b"x-id",
        b"%2e",
        b"..",
        b"\xff",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

fn check_request_verdict(data: &[u8]) {
    let mut head = RequestHead::default();
    match head.parse(data, &LIMITS) {
        Ok(true) => {
            assert!(head.len <= data.len());
            for r in [&head.method, &head.target, &head.path, &head.query] {
                assert!(r.start <= r.end && r.end <= head.len);
            }
            for f in &head.fields {
                assert!(f.name.end <= head.len && f.value.end <= head.len);
            }
            // what we accept has exactly one framing and a Host on 1.1
            assert!(matches!(
                head.framing,
                Framing::None | Framing::Length(_) | Framing::Chunked
            ));
        }
        Ok(false) => {}
        Err(e) => assert!((400..=599).contains(&e.status()), "{e:?}"),
    }
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$&'*+.^_`|~-]{1,20}"
}

fn field_value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}".prop_map(|v| v.trim().to_string())
}

fn encode_chunked(body: &[u8], sizes: &[usize], ext: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        write_chunk_header(&mut out, n);
        if ext {
            // extensions ride on the size line, before its CRLF
            out.truncate(out.len() - 2);
            out.extend_from_slice(b";k=v\r\n");
        }
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

/// Decodes `input` fed in pieces of the given sizes; returns the body, or None on error.
fn decode_in_pieces(input: &[u8], pieces: &[usize]) -> Option<Vec<u8>> {
    let mut decoder = ChunkedDecoder::new();
    let mut pending = Vec::new();
    let mut body = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while offset < input.len() && !decoder.is_done() {
        let n = pieces[i % pieces.len()].clamp(1, input.len() - offset);
        pending.extend_from_slice(&input[offset..offset + n]);
        offset += n;
        i += 1;
        loop {
            let d = decoder.decode(&pending).ok()?;
            assert!(d.consumed <= pending.len() && d.data.end <= d.consumed);
            body.extend_from_slice(&pending[d.data.clone()]);
            pending.drain(..d.consumed);
            if d.consumed == 0 || decoder.is_done() {
                break;
            }
        }
    }
    decoder.is_done().then_some(body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_parser_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        check_request_verdict(&data);
    }

    #[test]
    fn request_parser_never_panics_on_http_ish_input(data in http_ish()) {
        check_request_verdict(&data);
        let mut with_end = data.clone();
        with_end.extend_from_slice(b"\r\n\r\n");
        check_request_verdict(&with_end);
    }

    #[test]
    fn valid_requests_parse_whole_and_need_more_when_cut(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        path in "(/[A-Za-z0-9_~-]{1,12}){1,5}",
        query in prop::option::of("[a-z0-9=&]{1,20}"),
        fields in prop::collection::vec((token(), field_value()), 0..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut raw = format!("{method} {path}");
        if let Some(q) = &query {
            raw.push('?');
            raw.push_str(q);
        }
        raw.push_str(" HTTP/1.1\r\nHost: example.test\r\n");
        let mut expected_fields = 1;
        for (name, value) in &fields {
            let lower = name.to_ascii_lowercase();
            if matches!(lower.as_str(), "host" | "content-length" | "transfer-encoding" | "connection" | "expect" | "upgrade" | "te" | "keep-alive" | "trailer" | "proxy-connection") {
                continue;
            }
            raw.push_str(&format!("{name}: {value}\r\n"));
            expected_fields += 1;
        }
        raw.push_str("\r\n");
        let bytes = raw.as_bytes();
        let mut head = RequestHead::default();
        prop_assert_eq!(head.parse(bytes, &LIMITS), Ok(true));
        prop_assert_eq!(head.len, bytes.len());
        prop_assert_eq!(&bytes[head.method.clone()], method.as_bytes());
        prop_assert_eq!(&bytes[head.path.clone()], path.as_bytes());
        prop_assert_eq!(head.fields.len(), expected_fields);
        let cut = cut.index(bytes.len());
        let mut partial = RequestHead::default();
        prop_assert_eq!(partial.parse(&bytes[..cut], &LIMITS), Ok(false));
    }

    #[test]
    fn chunked_round_trips_however_it_is_split(
        body in prop::collection::vec(any::<u8>(), 0..4096),
        sizes in prop::collection::vec(1usize..600, 1..8),
        pieces in prop::collection::vec(1usize..300, 1..8),
        ext in any::<bool>(),
    ) {
        let encoded = encode_chunked(&body, &sizes, ext);
        prop_assert_eq!(decode_in_pieces(&encoded, &pieces), Some(body));
    }

    #[test]
    fn chunked_decoder_never_panics_on_bytes(
        data in prop::collection::vec(any::<u8>(), 0..1024),
        pieces in prop::collection::vec(1usize..64, 1..4),
    ) {
        let _ = decode_in_pieces(&data, &pieces);
    }

    #[test]
    fn response_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..1024), head_request in any::<bool>()) {
        let mut head = ResponseHead::default();
        if let Ok(true) = head.parse(&data, head_request, 32 * 1024) {
            prop_assert!(head.len <= data.len());
        }
        let mut with_status = b"HTTP/1.1 200 OK\r\n".to_vec();
        with_status.extend_from_slice(&data);
        let _ = head.parse(&with_status, head_request, 32 * 1024);
    }
}
