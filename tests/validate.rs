//! Route `validate = {...}` through the real binary: each refusal's status and JSON body
//! (415 content type, 400 required header, 400 query size, 400 JSON saying where it broke),
//! none of them reaching the origin; JSON bodies read whole (chunked or not, after 100
//! Continue) and sent up length-delimited; a nesting bomb refused without harm; a valid
//! 1 MiB document accepted; keep-alive after a refused body.

mod common;
use common::*;
use std::io::Write;
use std::net::SocketAddr;

fn gateway(origin: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[server]\nworkers = 2\n\n[limits]\nmax_body_bytes = \"2MiB\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"o\"\nvalidate = {{ content_types = [\"application/json\"], required_headers = [\"x-tenant\"], max_query_params = 3, json = true }}\n\n[[routes]]\nname = \"forms\"\npath_prefix = \"/forms\"\nupstream = \"o\"\nvalidate = {{ content_types = [\"application/x-www-form-urlencoded\", \"multipart/*\"] }}\n"
    ))
}

fn body_origin() -> Origin {
    Origin::start(|r| ok(format!("got {} bytes", r.body.len()).as_bytes()))
}

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const JSON: &str = "X-Tenant: acme\r\nContent-Type: application/json; charset=utf-8\r\n";

fn error_of(r: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn each_head_check_refuses_with_its_status_before_the_origin() {
    let origin = body_origin();
    let gw = gateway(origin.addr);
    let r = gw.request(&post("/api/x?a=1&b=2", JSON, "{\"ok\":true}"));
    assert_eq!((r.status, r.text().as_str()), (200, "got 11 bytes"));

    let r = gw.request(&post(
        "/api/x",
        "X-Tenant: acme\r\nContent-Type: text/plain\r\n",
        "{}",
    ));
    assert_eq!(r.status, 415);
    assert!(
        r.head
            .starts_with("HTTP/1.1 415 Unsupported Media Type\r\n")
    );
    assert_eq!(
        error_of(&r),
        "unsupported content type; expected application/json"
    );
    // Two Content-Types: which would the origin read? Refused.
    let r = gw.request(&post(
        "/api/x",
        "X-Tenant: acme\r\nContent-Type: application/json\r\nContent-Type: text/xml\r\n",
        "{}",
    ));
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (400, "more than one Content-Type")
    );
    let r = gw.request(&post("/api/x", "X-Tenant: acme\r\n", "{}"));
    assert_eq!(r.status, 415, "a body without a content type");

    let r = gw.request(&post(
        "/api/x",
        "Content-Type: application/json\r\nX-Tenant:\r\n",
        "{}",
    ));
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r), "missing required header x-tenant");

    let r = gw.request(&post("/api/x?a&b&c&d", JSON, "{}"));
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r), "too many query parameters (4, at most 3)");

    // No body: no content type asked for, nothing to parse.
    let r =
        gw.request("GET /api/x HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    // Wildcard subtypes.
    let r = gw.request(&post(
        "/forms",
        "Content-Type: multipart/form-data; boundary=x\r\n",
        "--x--",
    ));
    assert_eq!(r.status, 200);
    let r = gw.request(&post("/forms", "Content-Type: multipart\r\n", "--x--"));
    assert_eq!(r.status, 415);
    assert_eq!(
        origin.received().len(),
        3,
        "refused requests reached the origin"
    );
}

#[test]
fn json_bodies_are_checked_whole_and_sent_up_length_delimited() {
    let origin = body_origin();
    let gw = gateway(origin.addr);
    let r = gw.request(&post("/api/x", JSON, "{\"a\":\n  [1, 2,, 3]}"));
    assert_eq!(r.status, 400);
    let error = error_of(&r);
    assert!(
        error.starts_with("body is not valid JSON: ") && error.contains("line 2 column"),
        "{error}"
    );
    // Strings must be text; the error (quoting a control character) is still valid JSON.
    for bad in ["[\"\\ud800\"]", "[\"a\u{1}\"]"] {
        let r = gw.request(&post("/api/x", JSON, bad));
        assert_eq!(r.status, 400, "{bad:?}");
        assert!(error_of(&r).starts_with("body is not valid JSON"));
    }
    // serde_json's words quote `\u0000-\u001F`: the client reads them as written.
    let r = gw.request(&post("/api/x", JSON, "[\"a\u{1}\"]"));
    assert!(
        error_of(&r).contains("(\\u0000-\\u001F)"),
        "{}",
        error_of(&r)
    );
    let mut s = gw.connect();
    let mut raw = format!(
        "POST /api/x HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: 6\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(b"[\"\xff\xfe\"]");
    s.write_all(&raw).unwrap();
    assert_eq!(ResponseReader::default().read(&mut s, false).status, 400);
    assert!(origin.received().is_empty());

    // Chunked, in pieces: decoded, checked, and sent as one Content-Length body.
    let mut s = gw.connect();
    write!(
        s,
        "POST /api/c HTTP/1.1\r\nHost: t\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.write_all(b"3\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n").unwrap();
    let mut reader = ResponseReader::default();
    assert_eq!(reader.read(&mut s, false).text(), "got 9 bytes");
    let up = origin.received().pop().unwrap();
    assert_eq!(up.body, b"{\"a\":[1]}");
    assert!(!up.chunked);
    assert_eq!(up.header("content-length").as_deref(), Some("9"));

    // A refused body was read to its end: the same connection carries the next request.
    s.write_all(
        format!("POST /api/x HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: 5\r\n\r\n{{\"a\"}}")
            .as_bytes(),
    )
    .unwrap();
    let refused = reader.read(&mut s, false);
    assert_eq!(refused.status, 400);
    s.write_all(
        format!("POST /api/x HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: 2\r\n\r\n[]").as_bytes(),
    )
    .unwrap();
    assert_eq!(reader.read(&mut s, false).text(), "got 2 bytes");

    // Expect: 100-continue: the gateway asks for the body itself.
    let mut s = gw.connect();
    write!(
        s,
        "POST /api/e HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 25];
    std::io::Read::read_exact(&mut s, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"null").unwrap();
    assert_eq!(
        ResponseReader::default().read(&mut s, false).text(),
        "got 4 bytes"
    );
}

#[test]
fn a_nesting_bomb_is_refused_and_a_large_document_accepted() {
    let origin = body_origin();
    let gw = gateway(origin.addr);
    let bomb = "[".repeat(1_500_000);
    let r = gw.request(&post("/api/x", JSON, &bomb));
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("nested deeper than 64"),
        "{}",
        error_of(&r)
    );
    // The shards are fine.
    assert_eq!(gw.request(&post("/api/x", JSON, "1")).status, 200);

    let mut doc = String::from("[");
    while doc.len() < 1024 * 1024 - 40 {
        doc.push_str("{\"k\":\"v\",\"n\":[1,2.5,true,null]},");
    }
    doc.push_str("{}]");
    let r = gw.request(&post("/api/x", JSON, &doc));
    assert_eq!(r.text(), format!("got {} bytes", doc.len()));

    // Over max_body_bytes (chunked, so it is only known while reading): 413.
    let mut s = gw.connect();
    write!(
        s,
        "POST /api/x HTTP/1.1\r\nHost: t\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 512 * 1024, " ".repeat(512 * 1024));
    for _ in 0..5 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    assert_eq!(ResponseReader::default().read(&mut s, false).status, 413);
}
