//! The access log through the real binary: one JSON line per exchange (gateway errors and
//! clients that left included; a status 0 is written as 499, see the unit tests), no secret, logrotate with SIGUSR1, and a sink that never
//! drains costing requests nothing.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn config(extra: &str, log: &str) -> String {
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n[limits]\nheader_read_timeout = \"1s\"\n\n[access_log]\npath = \"{log}\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n\n{extra}"
    )
}

#[test]
fn one_json_line_per_exchange_with_errors_and_departed_clients_and_no_secrets() {
    let slow = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(1500));
        ok(b"late")
    });
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&config(
        &format!(
            "[[upstreams]]\nname = \"dead\"\ntargets = [\"{dead}\"]\n\n[[upstreams]]\nname = \"slow\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"dead\"\npath = \"/dead\"\nupstream = \"dead\"\n\n[[routes]]\nname = \"slow\"\npath = \"/slow\"\nupstream = \"slow\"\n",
            slow.addr
        ),
        "access.log",
    ));
    let log = gw.dir.join("access.log");
    let secret = "tok-9f8e7d6c";
    let r = gw.request(&format!(
        "GET /hello?api_key={secret} HTTP/1.1\r\nHost: h.example\r\nAuthorization: Bearer {secret}\r\nCookie: s={secret}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(gw.get("/nope").status, 404);
    assert_eq!(
        status_of(&exchange_raw(&gw, b"GET /x HTTP/1.1\r\n\r\n")),
        400
    );
    // A head that never completes: 408 after header_read_timeout.
    assert_eq!(
        status_of(&exchange_raw(&gw, b"GET /hello HTTP/1.1\r\n")),
        408
    );
    assert_eq!(gw.get("/dead").status, 502);
    // A client that leaves while the origin works: logged as 499 once the origin answers.
    let mut gone = gw.connect();
    gone.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !slow
        .received()
        .is_empty()));
    drop(gone);

    let mut found = Vec::new();
    let all_there = wait_until(Duration::from_secs(15), || {
        found = lines(&log);
        found.len() >= 6
    });
    assert!(all_there, "{found:#?}\n{}", gw.proc.stderr());
    std::thread::sleep(Duration::from_millis(300));
    let found = lines(&log);
    assert_eq!(found.len(), 6, "exactly one line per exchange: {found:#?}");
    let mut statuses = Vec::new();
    for line in &found {
        assert!(!line.contains(secret), "a secret reached the log: {line}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in [
            "ts",
            "request_id",
            "client_ip",
            "method",
            "host",
            "path",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "route",
            "upstream",
            "target",
            "consumer",
            "tls",
            "cache",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {line}");
        }
        assert_eq!(v["client_ip"], "127.0.0.1");
        if v["path"] != "/slow" {
            statuses.push(v["status"].as_u64().unwrap());
        }
        if v["path"] == "/slow" {
            // The client left while the origin worked. ringgate does not watch a client
            // while it waits for the origin, so the late answer is written (into the
            // kernel's buffer, usually: 200) or fails (499); either way one line.
            assert!(matches!(v["status"].as_u64(), Some(200 | 499)), "{line}");
            assert_eq!(v["route"], "slow", "{line}");
            continue;
        }
        match v["status"].as_u64().unwrap() {
            200 => {
                assert_eq!(
                    (v["path"].as_str(), v["route"].as_str()),
                    (Some("/hello"), Some("hello")),
                    "{line}"
                );
                assert_eq!(v["host"], "h.example");
                assert!(
                    v["bytes_in"].as_u64().unwrap() > 50 && v["bytes_out"].as_u64().unwrap() > 20,
                    "{line}"
                );
            }
            502 => assert_eq!(
                (v["upstream"].as_str(), v["target"].as_str()),
                (Some("dead"), Some(dead.to_string().as_str())),
                "{line}"
            ),
            404 => assert_eq!(v["route"], serde_json::Value::Null, "{line}"),
            _ => {}
        }
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 400, 404, 408, 502]);
}

#[test]
fn logrotate_moves_the_file_and_sigusr1_starts_a_new_one_losing_nothing() {
    let gw = Gateway::start(&config("", "access.log"));
    let log = gw.dir.join("access.log");
    for _ in 0..5 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    assert!(wait_until(Duration::from_secs(10), || lines(&log).len() == 5));
    let rotated = gw.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // Lines written between the move and the signal still land in the moved file.
    for _ in 0..3 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    assert!(wait_until(Duration::from_secs(10), || lines(&rotated)
        .len()
        == 8));
    gw.proc.signal(libc::SIGUSR1);
    assert!(wait_until(Duration::from_secs(10), || log.exists()));
    for _ in 0..4 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || lines(&log).len() == 4),
        "{:?}",
        lines(&log)
    );
    assert_eq!(
        lines(&rotated).len(),
        8,
        "nothing lost, nothing written twice"
    );
}

#[test]
fn a_log_sink_that_never_drains_costs_requests_nothing_and_drops_are_counted() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("fifo-log");
    let fifo = dir.join("stuck.log");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path we own. Nobody ever reads it: the
    // writer's open blocks forever.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let gw = Gateway::start(&format!(
        "[admin]\nbind = \"{admin}\"\n\n{}",
        config("", fifo.to_str().unwrap())
    ));
    // One keep-alive connection stays on one shard; its queue fills after a few thousand
    // lines, then lines are dropped while every request goes on being answered.
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    let n = 20_000;
    for _ in 0..n {
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        assert_eq!(reader.read(&mut s, false).status, 200);
    }
    let dropped = || {
        let mut m = TcpStream::connect(admin).unwrap();
        m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(m, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut all = String::new();
        let _ = m.read_to_string(&mut all);
        all.lines()
            .find_map(|l| l.strip_prefix("ringgate_access_log_dropped_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || dropped() > 0),
        "no drop counted"
    );
    assert!(dropped() < n, "only what did not fit was dropped");
}

#[test]
fn an_answer_the_client_never_got_is_499_and_names_keep_their_characters() {
    let stall = Origin::start(|_| {
        std::thread::sleep(Duration::from_secs(4));
        ok(b"late")
    });
    let gw = Gateway::start(&config(
        &format!(
            "[[upstreams]]\nname = \"stall\"\ntargets = [\"{}\"]\nresponse_timeout = \"1s\"\n\n[[routes]]\nname = \"café\"\npath = \"/stall\"\nupstream = \"stall\"\nretries = 0\n",
            stall.addr
        ),
        "access.log",
    ));
    let log = gw.dir.join("access.log");
    // The client resets its connection before the gateway's 504 is due: that 504 never
    // reaches anyone, so it is a 499.
    let s = gw.connect();
    (&s).write_all(b"GET /stall HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !stall
        .received()
        .is_empty()));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            found = lines(&log);
            !found.is_empty()
        }),
        "{}",
        gw.proc.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(&found[0]).unwrap();
    assert_eq!(v["status"], 499, "{v}");
    assert_eq!(
        v["route"], "café",
        "UTF-8 names are characters, not bytes: {v}"
    );
}

#[test]
fn lines_the_file_cannot_take_are_counted_as_dropped() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Every write to /dev/full fails with ENOSPC: a full disk.
    let gw = Gateway::start(&format!(
        "[admin]\nbind = \"{admin}\"\n\n{}",
        config("", "/dev/full")
    ));
    for _ in 0..20 {
        assert_eq!(gw.get("/hello").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || admin_metric(
            admin,
            "ringgate_access_log_dropped_total"
        ) >= 20),
        "lost lines not counted; stderr: {}",
        gw.proc.stderr()
    );
    assert!(gw.proc.stderr().contains("access_log.path: write failed"));
}
