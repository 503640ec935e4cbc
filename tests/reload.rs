//! Hot reload through the real binary: `POST /reload` and SIGHUP, under load, with bad files,
//! and with the state a reload must keep (pools, ejections) or drop (a removed upstream's
//! pool, a removed listener).

mod common;
use common::reloadable::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn header() -> String {
    "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n[admin]\nbind = \"{admin}\"\ntoken = \"file:admin.token\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{listen}\"\n\n".to_string()
}

fn upstream(name: &str, target: SocketAddr) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\ntargets = [\"{target}\"]\n\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\n\n"
    )
}

/// Sends GETs to `/a/...` until `stop`, over keep-alive (or a new connection each time),
/// counting what came back: (sent, answered 200, failed: any other answer, lost: no answer).
fn client(listen: SocketAddr, keep_alive: bool, stop: &AtomicBool) -> [u64; 4] {
    let mut counts = [0u64; 4];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn: Option<(TcpStream, ResponseReader)> = None;
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline && counts[0] < 200_000 {
        if conn.is_none() {
            let s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            conn = Some((s, ResponseReader::default()));
        }
        let (s, reader) = conn.as_mut().unwrap();
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        counts[0] += 1;
        let sent = write!(s, "GET /a/{} HTTP/1.1\r\nHost: t\r\n{close}\r\n", counts[0]);
        match sent.ok().and_then(|()| reader.try_read(s, false)) {
            Some(r) if r.status == 200 && r.text() == format!("path=/a/{}", counts[0]) => {
                counts[1] += 1;
                if !keep_alive || r.header("connection") == Some("close") {
                    conn = None;
                }
            }
            Some(_) => {
                counts[2] += 1;
                conn = None;
            }
            None => {
                counts[3] += 1;
                conn = None;
            }
        }
    }
    counts
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_each_shows_its_routes() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let config_a = format!("{}{}", header(), upstream("a", a.addr));
    let config_b = format!("{config_a}{}", upstream("b", b.addr));
    let gw = Reloadable::start(&config_a);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [true, true, false]
        .into_iter()
        .map(|keep_alive| {
            let stop = stop.clone();
            let listen = gw.listen;
            std::thread::spawn(move || client(listen, keep_alive, &stop))
        })
        .collect();
    for i in 0..20u64 {
        let with_b = i % 2 == 0;
        gw.write(if with_b { &config_b } else { &config_a });
        let reloaded = gw.reload();
        assert_eq!(reloaded["generation"], i + 2, "{reloaded}");
        assert_eq!(reloaded["shards_applied"], 2, "{reloaded}");
        // Every shard runs the new config once the reload answers: each new connection
        // (whichever shard takes it) sees the new routes.
        for _ in 0..4 {
            let r = gw.get("/b/x");
            if with_b {
                assert_eq!((r.status, r.text()), (200, "path=/b/x".to_string()));
            } else {
                assert_eq!(r.status, 404, "{}", r.text());
            }
        }
    }
    stop.store(true, Ordering::Release);
    let mut total = [0u64; 4];
    for c in clients {
        let counts = c.join().unwrap();
        for (t, n) in total.iter_mut().zip(counts) {
            *t += n;
        }
    }
    let [sent, answered, failed, lost] = total;
    assert!(sent >= 20, "the clients hardly ran: {total:?}");
    assert_eq!((failed, lost), (0, 0), "sent {sent}, answered {answered}");
    assert_eq!(sent, answered);
    let shards = gw.json("/shards");
    for s in shards["shards"].as_array().unwrap() {
        assert_eq!(s["config_generation"], 21, "{s}");
    }
}

#[test]
fn pools_survive_reloads_and_a_removed_upstreams_pool_is_closed() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let config_a = format!("{}{}", header(), upstream("a", a.addr));
    let config_b = format!("{config_a}{}", upstream("b", b.addr));
    let gw = Reloadable::start(&config_b);
    // One keep-alive client stays on one shard, whose pool then holds one connection each.
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = ResponseReader::default();
    let mut get = |path: &str| {
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = reader.read(&mut s, false);
        (r.status, r.text())
    };
    assert_eq!(get("/a/1"), (200, "path=/a/1".to_string()));
    assert_eq!(get("/b/1"), (200, "path=/b/1".to_string()));
    assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
    for i in 0..10 {
        gw.write(&config_b);
        gw.reload();
        assert_eq!(get(&format!("/a/{i}")).0, 200);
        assert_eq!(get(&format!("/b/{i}")).0, 200);
    }
    assert_eq!(
        (a.connection_count(), b.connection_count()),
        (1, 1),
        "reloads of unchanged upstreams must keep their pooled connections"
    );
    gw.write(&config_a);
    gw.reload();
    assert!(
        wait_until(Duration::from_secs(10), || b.open_count() == 0),
        "the removed upstream's pooled connection is still open"
    );
    assert_eq!(get("/a/2").0, 200);
    assert_eq!(get("/b/2").0, 404);
    assert_eq!(a.connection_count(), 1, "upstream a kept its connection");
    assert_eq!(a.open_count(), 1);
}

#[test]
fn an_ejected_target_stays_ejected_across_a_reload() {
    let live = Origin::echo_path();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = |extra: &str| {
        format!(
            "{}[[upstreams]]\nname = \"a\"\ntargets = [\"{dead}\", \"{}\"]\npassive = {{ consecutive_failures = 1, ejection_time = \"300s\" }}\n\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"a\"\n\n{extra}",
            header(),
            live.addr
        )
    };
    let gw = Reloadable::start(&config(""));
    let state_of_dead = |gw: &Reloadable| -> Vec<String> {
        let up = gw.json("/upstreams");
        let target = up["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["addr"] == dead.to_string())
            .cloned()
            .unwrap();
        target["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect()
    };
    // Round robin reaches the dead target within two requests; the retry answers.
    let ejected = wait_until(Duration::from_secs(20), || {
        assert_eq!(gw.get("/a/x").status, 200);
        state_of_dead(&gw).iter().all(|s| s == "ejected")
    });
    assert!(ejected, "{:?}", state_of_dead(&gw));
    gw.write(&config(
        "[[routes]]\nname = \"more\"\npath = \"/more\"\ndirect_response = { status = 200, body = \"more\" }\n",
    ));
    gw.reload();
    assert_eq!(gw.get("/more").text(), "more");
    assert_eq!(state_of_dead(&gw), vec!["ejected", "ejected"]);
    let before = live.connection_count();
    for _ in 0..6 {
        assert_eq!(gw.get("/a/y").status, 200);
    }
    assert!(live.connection_count() >= before);
}

#[test]
fn a_bad_file_is_refused_with_its_problems_and_the_old_config_keeps_serving() {
    let a = Origin::echo_path();
    let good = format!("{}{}", header(), upstream("a", a.addr));
    let gw = Reloadable::start(&good);
    // Two problems, both reported: a route to a missing upstream, and an unknown key.
    gw.write(&format!(
        "{good}[[routes]]\nname = \"broken\"\npath = \"/broken\"\nupstream = \"nope\"\n"
    ));
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    let problems = refused["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["key"] == "routes[1].upstream" && p["line"].as_u64().is_some()),
        "{body}"
    );
    assert!(
        problems[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("ringgate.toml")
    );
    assert_eq!(gw.get("/a/still").text(), "path=/a/still");
    assert_eq!(gw.json("/config")["generation"], 1);

    // SIGHUP with a file that does not parse: logged with file, line and key; nothing changes.
    gw.write(&format!("{good}[[routes]]\nname = \"x\"\nbogus_key = 1\n"));
    gw.proc.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .proc
            .stderr()
            .contains("reload (SIGHUP) refused")),
        "{}",
        gw.proc.stderr()
    );
    let log = gw.proc.stderr();
    assert!(
        log.contains("ringgate.toml:") && log.contains("bogus_key"),
        "{log}"
    );
    assert_eq!(gw.get("/a/again").text(), "path=/a/again");
    let config = gw.json("/config");
    assert_eq!(config["generation"], 1);
    assert_eq!(config["reloads"]["failed"], 2);

    // A good file on SIGHUP is applied.
    gw.write(&format!(
        "{good}[[routes]]\nname = \"new\"\npath = \"/new\"\ndirect_response = {{ status = 201, body = \"new\" }}\n"
    ));
    gw.proc.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || gw
        .get("/new")
        .status
        == 201));
    assert_eq!(gw.json("/config")["generation"], 2);
}

#[test]
fn settings_only_a_restart_can_change_are_refused_by_name() {
    let a = Origin::echo_path();
    let good = format!("{}{}", header(), upstream("a", a.addr));
    let gw = Reloadable::start(&good);
    gw.write(&good.replace("workers = 2", "workers = 3"));
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("server.workers") && body.contains("restart"),
        "{body}"
    );
    assert_eq!(gw.get("/a/ok").status, 200);
}

#[test]
fn listeners_are_added_and_removed_by_a_reload() {
    // `/a/slow` answers after 1.5 s: a request in flight while its listener goes away.
    let a = Origin::start(|r| {
        let path = r.request_line().split(' ').nth(1).unwrap_or("").to_string();
        if path == "/a/slow" {
            std::thread::sleep(Duration::from_millis(1500));
        }
        ok(format!("path={path}").as_bytes())
    });
    let good = format!("{}{}", header(), upstream("a", a.addr));
    let gw = Reloadable::start(&good);
    let extra: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let with_extra = good.replace(
        "[[upstreams]]",
        &format!("[[listeners]]\nname = \"extra\"\nbind = \"{extra}\"\n\n[[upstreams]]"),
    );
    gw.write(&with_extra);
    gw.reload();
    let get_extra = || -> Option<Response> {
        let mut s = TcpStream::connect(extra).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /a/e HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        ResponseReader::default().try_read(&mut s, false)
    };
    for _ in 0..4 {
        assert_eq!(get_extra().map(|r| r.text()).as_deref(), Some("path=/a/e"));
    }
    // On the listener about to go away: an idle keep-alive connection, and one whose
    // request is in flight at the origin.
    let connect_extra = || {
        let s = TcpStream::connect(extra).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let (mut idle, mut busy) = (connect_extra(), connect_extra());
    let (mut idle_reader, mut busy_reader) = (ResponseReader::default(), ResponseReader::default());
    write!(idle, "GET /a/k HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(idle_reader.read(&mut idle, false).status, 200);
    write!(busy, "GET /a/slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || a
        .received()
        .iter()
        .any(|r| r.request_line().contains("/a/slow"))));

    gw.write(&good);
    gw.reload();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(extra)
            .is_err()),
        "the removed listener still accepts"
    );
    // The idle connection is closed at once (no waiting out its idle timeout) ...
    let mut byte = [0u8; 1];
    assert_eq!(
        idle.read(&mut byte).ok(),
        Some(0),
        "the idle connection was not closed"
    );
    // ... and the request in flight gets its answer, marked as the last.
    let last = busy_reader.read(&mut busy, false);
    assert_eq!(
        (last.status, last.text(), last.header("connection")),
        (200, "path=/a/slow".to_string(), Some("close"))
    );
    assert_eq!(gw.get("/a/main").status, 200, "the main listener goes on");
}

#[test]
fn admin_reload_needs_the_token_and_config_never_shows_a_secret() {
    let a = Origin::echo_path();
    let sticky_secret = "sticky-9d2b41";
    let good = format!(
        "{}{}",
        header(),
        upstream("a", a.addr).replace(
            "targets =",
            "sticky = { cookie = \"s\", secret = \"file:sticky.key\" }\ntargets ="
        )
    );
    let gw = Reloadable::start_with(&good, &[("sticky.key", sticky_secret)]);
    let wrong_by_one_char = format!("{}b", &TOKEN[..TOKEN.len() - 1]);
    for token in [None, Some("wrong"), Some(wrong_by_one_char.as_str())] {
        let (status, body) = gw.admin("POST", "/reload", token);
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    let (status, config) = gw.admin("GET", "/config", None);
    assert_eq!(status, 200);
    assert!(
        !config.contains(TOKEN) && !config.contains(sticky_secret),
        "{config}"
    );
    assert!(
        !config.contains("admin.token") && !config.contains("sticky.key"),
        "{config}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(parsed["config"]["admin"]["token"], "<redacted>");
    assert_eq!(
        parsed["config"]["upstreams"][0]["sticky"]["secret"],
        "<redacted>"
    );
    // Defaults are filled in: the effective config, not only what the file says.
    assert_eq!(parsed["config"]["limits"]["max_headers"], 100);
    assert!(parsed["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(!gw.proc.stderr().contains(TOKEN));
}
