//! Routing through the real binary: hosts (exact, wildcard, port ignored), exact and
//! segment-aware prefix paths, methods (405 + Allow), 404, direct responses, strip_prefix.

mod common;
use common::*;

fn config(a: &Origin, b: &Origin) -> String {
    format!(
        r#"{base}
[[upstreams]]
name = "a"
targets = ["{a}"]

[[upstreams]]
name = "b"
targets = ["{b}"]

[[routes]]
name = "users"
path_prefix = "/users"
methods = ["GET", "POST"]
upstream = "a"

[[routes]]
name = "users-admin"
path_prefix = "/users/admin"
upstream = "b"

[[routes]]
name = "exact"
path = "/exact"
upstream = "b"

[[routes]]
name = "api-host"
host = "api.example.com"
path_prefix = "/"
upstream = "b"

[[routes]]
name = "wild-host"
host = "*.example.org"
path_prefix = "/"
upstream = "a"

[[routes]]
name = "strip"
path_prefix = "/svc/"
strip_prefix = true
upstream = "a"

[[routes]]
name = "strip-whole"
path_prefix = "/whole"
strip_prefix = true
upstream = "b"

[[routes]]
name = "hello"
path = "/hello"
direct_response = {{ status = 201, body = "hi there\n", content_type = "text/plain" }}
response_headers = {{ add = {{ "x-direct" = "yes" }} }}
"#,
        base = base_config(),
        a = a.addr,
        b = b.addr
    )
}

fn get_host(gw: &Gateway, host: &str, path: &str) -> Response {
    gw.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ))
}

/// Which origin answered ("a" or "b") and the path it saw.
fn answered(r: &Response, a: &Origin, b: &Origin) -> (String, usize, usize) {
    (r.text(), a.received().len(), b.received().len())
}

#[test]
fn prefix_routes_are_segment_aware_and_longest_wins() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    assert_eq!(
        answered(&gw.get("/users"), &a, &b),
        ("path=/users".into(), 1, 0)
    );
    assert_eq!(
        answered(&gw.get("/users/7"), &a, &b),
        ("path=/users/7".into(), 2, 0)
    );
    assert_eq!(
        answered(&gw.get("/users/admin/x"), &a, &b),
        ("path=/users/admin/x".into(), 2, 1)
    );
    let r = gw.get("/usersX");
    assert_eq!(r.status, 404, "/users must not match /usersX");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        "{\"error\":\"no route matched\",\"status\":404}\n"
    );
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn exact_paths_match_only_themselves() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    assert_eq!(gw.get("/exact").text(), "path=/exact");
    assert_eq!(gw.get("/exact?q=1").text(), "path=/exact?q=1");
    assert_eq!(gw.get("/exact/more").status, 404);
}

#[test]
fn hosts_exact_and_wildcard_ignore_port_and_case() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    get_host(&gw, "API.example.com:8443", "/anything");
    assert_eq!(b.received().len(), 1);
    get_host(&gw, "www.example.org", "/anything");
    assert_eq!(a.received().len(), 1);
    assert_eq!(
        get_host(&gw, "example.org", "/anything").status,
        404,
        "*.example.org needs a subdomain"
    );
    let r = gw.request(
        "GET http://api.example.com/abs HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.text(), "path=/abs", "absolute-form authority routes");
    assert_eq!(b.received().len(), 2);
}

#[test]
fn methods_outside_the_allow_list_get_405_with_allow() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    let r = gw.request("DELETE /users/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    assert!(r.text().contains("\"status\":405"));
    let r = gw.request("HEAD /users/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "GET allows HEAD");
    assert!(
        a.received()
            .iter()
            .all(|r| !r.request_line().starts_with("DELETE"))
    );
}

#[test]
fn direct_response_is_answered_by_the_gateway() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    let r = gw.get("/hello");
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "hi there\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-direct"), Some("yes"));
    assert!(a.received().is_empty() && b.received().is_empty());
}

#[test]
fn strip_prefix_rewrites_the_upstream_path() {
    let (a, b) = (Origin::echo_path(), Origin::echo_path());
    let gw = Gateway::start(&config(&a, &b));
    assert_eq!(gw.get("/svc/v1/items?x=1").text(), "path=/v1/items?x=1");
    assert_eq!(
        gw.get("/whole").text(),
        "path=/",
        "stripping the whole path leaves /"
    );
    assert_eq!(gw.get("/whole/x").text(), "path=/x");
}

#[test]
fn many_routes_still_route_correctly() {
    let a = Origin::echo_path();
    let mut config = format!(
        "{}[[upstreams]]\nname = \"a\"\ntargets = [\"{}\"]\n",
        base_config(),
        a.addr
    );
    for i in 0..500 {
        config.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/svc{i}\"\nupstream = \"a\"\n"
        ));
    }
    let gw = Gateway::start(&config);
    assert_eq!(gw.get("/svc499/x").text(), "path=/svc499/x");
    assert_eq!(gw.get("/svc0").text(), "path=/svc0");
    assert_eq!(gw.get("/svc500").status, 404);
}
