//! The process around the data plane: graceful drain on SIGTERM, a second signal, config
//! errors that name file, line and key, `check`, `demo`, and the example configs.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn slow_origin(delay: Duration) -> Origin {
    Origin::start(move |_| {
        std::thread::sleep(delay);
        ok(b"slow done")
    })
}

fn proxy_config(origin: SocketAddr) -> String {
    format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n",
        base_config()
    )
}

#[test]
fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let origin = slow_origin(Duration::from_millis(1500));
    let mut gw = Gateway::start(&proxy_config(origin.addr));

    // An idle keep-alive connection (one finished request)...
    let mut idle = gw.connect();
    let mut idle_reader = ResponseReader::default();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(idle_reader.read(&mut idle, false).status, 200);
    // ...and a slow request in flight.
    let mut busy = gw.connect();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || origin
        .received()
        .len()
        == 2));

    gw.proc.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(gw.listen)
            .is_err()),
        "new connections must be refused once draining"
    );
    let r = ResponseReader::default().read(&mut busy, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = idle.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed without a response");
    assert_eq!(
        gw.proc.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.proc.stderr()
    );
}

#[test]
fn second_signal_exits_at_once() {
    let origin = slow_origin(Duration::from_secs(20));
    let mut gw = Gateway::start(&proxy_config(origin.addr));
    let mut busy = gw.connect();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || origin
        .received()
        .len()
        == 1));
    gw.proc.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || gw
        .proc
        .stderr()
        .contains("draining")));
    let started = Instant::now();
    gw.proc.signal(libc::SIGINT);
    let code = gw.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Runs `ringgate check` on `text`; returns (exit code, stdout + stderr, config path).
fn check(text: &str) -> (i32, String, String) {
    let dir = temp_dir("check");
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        text,
        path.display().to_string(),
    )
}

const LISTENER: &str = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\n";

#[test]
fn config_errors_name_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nupstream = \"missing\"\n",
            ":9: routes[0].upstream",
            "unknown upstream \"missing\"",
        ),
        (
            "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\"]\n[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:2\"]\n",
            ":8: upstreams[1].name",
            "duplicate name \"a\"",
        ),
        (
            "[[upstreams]]\nname = \"a\"\ntargets = []\n",
            ":6: upstreams[0].targets",
            "at least one target",
        ),
        (
            "[[upstreams]]\nname = \"a\"\ntargets = [\"not an address\"]\n",
            ":6: upstreams[0].targets[0]",
            "bad address",
        ),
        (
            "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\"]\nconnect_timeout = \"5 parsecs\"\n",
            ":7: upstreams[0].connect_timeout",
            "invalid duration",
        ),
        (
            "[server]\nworkerz = 2\n",
            ":5: server",
            "unknown field `workerz`",
        ),
        (
            "[[routes]]\nname = \"r\"\npath = \"/a\"\npath_prefix = \"/b\"\ndirect_response = { status = 200 }\n",
            ":6: routes[0].path",
            "not both",
        ),
    ];
    for (body, location, message) in cases {
        let (code, out, path) = check(&format!("{LISTENER}{body}"));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&path), "names the file: {out}");
        assert!(out.contains(location), "expected {location:?} in: {out}");
        assert!(out.contains(message), "expected {message:?} in: {out}");
    }
    let (code, out, _) = check("[[listeners]]\nname = \"l\"\nbind = \"localhost\"\n");
    assert_eq!(code, 1);
    assert!(out.contains(":3: listeners[0].bind: bad address"), "{out}");
}

#[test]
fn check_reports_every_problem_at_once() {
    let (code, out, _) = check(&format!(
        "{LISTENER}[[routes]]\nname = \"a\"\nupstream = \"x\"\n[[routes]]\nname = \"b\"\nupstream = \"y\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        out.contains("routes[0].upstream") && out.contains("routes[1].upstream"),
        "{out}"
    );
}

#[test]
fn check_accepts_a_valid_config_with_a_summary() {
    let (code, out, _) = check(&format!(
        "{LISTENER}[[routes]]\nname = \"h\"\npath = \"/h\"\ndirect_response = {{ status = 200, body = \"x\" }}\n"
    ));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: 1 listeners, 0 upstreams, 1 routes"),
        "{out}"
    );
}

#[test]
fn listener_bind_failure_names_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir("bind");
    let path = dir.join("bind.toml");
    std::fs::write(
        &path,
        format!("[[listeners]]\nname = \"l\"\nbind = \"{addr}\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(":3: listeners[0].bind: cannot bind {addr}")),
        "{stderr}"
    );
}

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // The example's admin token is an `env:` reference, as an operator would set it.
            let out = Command::new(BIN)
                .args(["check", "--config", path.to_str().unwrap()])
                .env("RINGGATE_ADMIN_TOKEN", "example-token")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "config/ must hold the demo and the reference example"
    );
}

#[test]
fn demo_answers_with_its_echo_origins() {
    let dir = temp_dir("demo");
    let (gw_port, o1, o2) = (free_port(), free_port(), free_port());
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gw_port}"))
        .replace("127.0.0.1:9101", &format!("127.0.0.1:{o1}"))
        .replace("127.0.0.1:9102", &format!("127.0.0.1:{o2}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", free_port()));
    let path = dir.join("demo.toml");
    std::fs::write(&path, demo).unwrap();
    let proc = spawn_bin(&dir, &["demo", "--config", path.to_str().unwrap()]);
    let listen: SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
    assert!(
        wait_for_port(listen, Duration::from_secs(15)),
        "{}",
        proc.stderr()
    );
    let gw = Gateway {
        proc,
        listen,
        dir: dir.clone(),
    };
    let r = gw.get("/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from ringgate\n");
    let r = gw.get("/api/headers");
    assert_eq!(r.status, 200);
    // The echo origin names itself first (the demo balances over two of them).
    let origin = r.header("x-origin").expect("x-origin").to_string();
    let (first, head) = r
        .text()
        .split_once("\r\n")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    assert_eq!(first, format!("x-origin: {origin}"));
    assert!(
        [format!("127.0.0.1:{o1}"), format!("127.0.0.1:{o2}")].contains(&origin),
        "{origin}"
    );
    assert!(head.starts_with("GET /headers HTTP/1.1"), "{}", r.text());
    assert!(
        r.text()
            .to_ascii_lowercase()
            .contains("x-gateway: ringgate")
    );
    assert_eq!(r.header("x-served-by"), Some("ringgate"));
    let r = gw.request(
        "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(r.text(), "hello");
    let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    assert!(
        stdout.contains(&format!("curl -i http://127.0.0.1:{gw_port}/hello")),
        "{stdout}"
    );
}
