//! Hot reload as a hostile operator, client or origin would drive it: reload storms, reloads
//! that change health checking, slow config reads, refused reloads, concurrent reloads from
//! admin and SIGHUP, listener churn under load, reloads while draining.
//!
//! Several of these were written against defects found by a hostile review (each test's doc
//! says what used to go wrong); all now hold as regression tests.

mod common;
use common::reloadable::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn header(workers: usize) -> String {
    format!(
        "[server]\nworkers = {workers}\ndrain_timeout = \"10s\"\n\n[admin]\nbind = \"{{admin}}\"\ntoken = \"file:admin.token\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{{listen}}\"\n\n"
    )
}

fn upstream(name: &str, target: SocketAddr, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\ntargets = [\"{target}\"]\n{extra}\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\n\n"
    )
}

/// An origin whose `/healthz` fails (503) and which answers every other path 200.
fn failing_health_origin() -> Origin {
    Origin::start(|r| {
        let path = r.request_line().split(' ').nth(1).unwrap_or("").to_string();
        if path == "/healthz" {
            Action::Raw(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
        } else {
            ok(format!("path={path}").as_bytes())
        }
    })
}

/// What used to go wrong (fixed; this is now its regression test):
/// `Shard::apply` restarts every probe loop on every reload (src/shard/run.rs start_probes),
/// and a new loop first sleeps a whole `interval` with fresh pass/fail counters
/// (src/upstream/probe.rs probe_loop). Reloads more often than `interval` (times
/// `unhealthy_threshold`) therefore stop active health checking altogether: a target whose
/// health check fails is never marked unhealthy.
#[test]
fn frequent_reloads_do_not_starve_active_health_checks() {
    let origin = failing_health_origin();
    let health = "[upstreams.health]\npath = \"/healthz\"\ninterval = \"500ms\"\njitter = \"1ms\"\ntimeout = \"300ms\"\nunhealthy_threshold = 3\n";
    let config = format!("{}{}", header(1), upstream("a", origin.addr, health));
    let gw = Reloadable::start(&config);
    // The storm: one reload (of the same file) every 150 ms for 4 s. Three failed probes
    // take 1.5 s; the target must go unhealthy during the storm.
    let storm_started = Instant::now();
    let mut unhealthy_during_storm = None;
    while storm_started.elapsed() < Duration::from_secs(4) {
        gw.reload();
        if unhealthy_during_storm.is_none() && gw.target_states(0)[0][0] == "unhealthy" {
            unhealthy_during_storm = Some(storm_started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let probes_during_storm = origin
        .received()
        .iter()
        .filter(|r| r.request_line().starts_with("GET /healthz"))
        .count();
    // Control: with the reloads stopped, the same checks mark it unhealthy.
    let calm = Instant::now();
    let unhealthy_after = wait_until(Duration::from_secs(5), || {
        gw.target_states(0)[0][0] == "unhealthy"
    });
    assert!(
        unhealthy_during_storm.is_some(),
        "a failing target was never marked unhealthy during 4 s of reloads every 150 ms \
         ({probes_during_storm} probes reached the origin); with reloads stopped it went \
         unhealthy: {unhealthy_after} after {:?}",
        calm.elapsed()
    );
}

/// What used to go wrong (fixed; this is now its regression test):
/// A target marked unhealthy by active checks keeps `unhealthy` in its gossip slot until a
/// probe passes (src/upstream/health.rs probe_verdict) or the target re-enters the config
/// (src/control/reload.rs reset_slot). A reload that removes `[upstreams.health]` keeps the
/// target (same slot, not "entering") but starts no prober: it stays unhealthy, and with
/// `panic_mode` off every request gets 503, until a restart.
#[test]
fn removing_health_checks_frees_an_unhealthy_target() {
    let origin = failing_health_origin();
    let health = "[upstreams.health]\npath = \"/healthz\"\ninterval = \"100ms\"\njitter = \"1ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";
    let with_health = format!("{}{}", header(2), upstream("a", origin.addr, health));
    let without_health = format!("{}{}", header(2), upstream("a", origin.addr, ""));
    let gw = Reloadable::start(&with_health);
    assert!(
        wait_until(Duration::from_secs(10), || gw.get("/a/x").status == 503),
        "the failing health check never took the target out: {:?}",
        gw.target_states(0)
    );
    gw.write(&without_health);
    gw.reload();
    let served = wait_until(Duration::from_secs(5), || gw.get("/a/y").status == 200);
    assert!(
        served,
        "5 s after a reload removed its health checks, the origin (which answers /a/y) is \
         still refused: status {}, states {:?}",
        gw.get("/a/y").status,
        gw.target_states(0)
    );
}

/// What used to go wrong (fixed; this is now its regression test):
/// Each probe task holds an `Rc<Active>` of the config it was started for and only notices
/// its retirement after sleeping a whole `interval` (src/shard/run.rs start_probes). The
/// retired `Active` owns the pools of upstreams the reload removed, so their idle
/// connections stay open for up to `interval` (and every reload in between piles up another
/// retired config, with its pools).
#[test]
fn probes_do_not_keep_a_removed_upstreams_pool_open() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let health = "[upstreams.health]\npath = \"/healthz\"\ninterval = \"8s\"\njitter = \"1ms\"\n";
    let config_a = format!("{}{}", header(1), upstream("a", a.addr, health));
    let config_b = format!("{config_a}{}", upstream("b", b.addr, ""));
    let gw = Reloadable::start(&config_b);
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = ResponseReader::default();
    write!(s, "GET /b/1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(reader.read(&mut s, false).status, 200);
    assert_eq!(b.open_count(), 1, "one pooled connection to b");
    gw.write(&config_a);
    gw.reload();
    let reloaded = Instant::now();
    write!(s, "GET /b/2 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(reader.read(&mut s, false).status, 404, "b is gone");
    let closed_soon = wait_until(Duration::from_secs(3), || b.open_count() == 0);
    // Diagnosis: it closes once the probe of upstream a wakes (8 s after it last slept).
    let closed_later = wait_until(Duration::from_secs(10), || b.open_count() == 0);
    assert!(
        closed_soon,
        "3 s after the reload removed upstream b, its pooled connection was still open; it \
         closed (closed: {closed_later}) {:?} after the reload, when upstream a's 8 s health \
         probe woke and dropped the retired config",
        reloaded.elapsed()
    );
}

/// Replaces the config file with a FIFO, so the next reload blocks reading it (as a slow
/// disk, NFS mount or slow DNS lookup of a target hostname at compile time would), and
/// returns once a reload is blocked inside `config::load` (its open succeeded). The
/// returned writer unblocks it.
fn block_next_reload_on_a_fifo(gw: &Reloadable, trigger: impl FnOnce()) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::remove_file(&gw.path).unwrap();
    let c_path = std::ffi::CString::new(gw.path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    trigger();
    let mut writer = None;
    let reading = wait_until(Duration::from_secs(10), || {
        // A non-blocking open for writing succeeds only once a reader has the FIFO open.
        writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&gw.path)
            .ok();
        writer.is_some()
    });
    assert!(reading, "the reload never opened the config file");
    writer.unwrap()
}

/// Finishes the blocked reload with `config` and puts a regular file back.
fn unblock(gw: &Reloadable, mut writer: std::fs::File, config: &str) {
    // The FIFO was opened non-blocking: make the write a plain blocking one.
    // SAFETY: fcntl(2) on a descriptor we own.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&writer), libc::F_SETFL, 0) };
    // The process may have exited meanwhile (a drain does not wait for a reload).
    let _ = writer.write_all(gw.text(config).as_bytes());
    drop(writer);
    let _ = std::fs::remove_file(&gw.path);
    std::fs::write(&gw.path, gw.text(config)).unwrap();
}

/// What used to go wrong (fixed; this is now its regression test):
/// `ControlPlane::try_reload` holds the plane's mutex while it reads and compiles the file
/// (and binds, and waits on full inboxes), and every admin request takes the same mutex in
/// `plane.current()` (src/admin/mod.rs serve) on the admin thread's only event loop. One
/// slow reload therefore freezes every admin endpoint, `/healthz` and `/readyz` included,
/// although the admin docs say the loop "keeps answering /healthz meanwhile".
#[test]
fn a_slow_reload_does_not_freeze_the_admin_endpoints() {
    let a = Origin::echo_path();
    let config = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Reloadable::start(&config);
    let writer = block_next_reload_on_a_fifo(&gw, || gw.proc.signal(libc::SIGHUP));
    let started = Instant::now();
    let healthz = gw.admin_within("GET", "/healthz", None, Duration::from_secs(3));
    let waited = started.elapsed();
    // The request path is unaffected (shards never take the lock).
    assert_eq!(gw.get("/a/during").status, 200);
    unblock(&gw, writer, &config);
    assert!(
        wait_until(Duration::from_secs(10), || gw.generation() == 2),
        "the unblocked reload did not apply"
    );
    assert!(
        healthz.as_ref().is_some_and(|(s, _)| *s == 200),
        "admin /healthz did not answer within 3 s while a reload was reading its file \
         (got {healthz:?} after {waited:?})"
    );
}

/// What used to go wrong (fixed; this is now its regression test):
/// SIGHUP reloads run on the signal thread itself (src/control/mod.rs
/// serve_until_signalled): while one is slow (file, DNS, or up to 2 x 10 s waiting on
/// shards), SIGTERM/SIGINT are not looked at, so drain does not start.
#[test]
fn a_slow_sighup_reload_does_not_delay_sigterm_drain() {
    let a = Origin::echo_path();
    let config = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let mut gw = Reloadable::start(&config);
    let writer = block_next_reload_on_a_fifo(&gw, || gw.proc.signal(libc::SIGHUP));
    gw.proc.signal(libc::SIGTERM);
    let draining = wait_until(Duration::from_secs(3), || {
        gw.proc.stderr().contains("draining")
    });
    unblock(&gw, writer, &config);
    let exited = gw.proc.wait_exit(Duration::from_secs(15));
    assert!(
        draining,
        "SIGTERM did not start a drain within 3 s while a SIGHUP reload was reading its \
         file (it exited with {exited:?} only after the reload was unblocked)\n{}",
        gw.proc.stderr()
    );
}

/// What used to go wrong (fixed; this is now its regression test):
/// `SlotMap::assign` (src/config/reload.rs) records a slot for every new (upstream, target)
/// name as it goes, before the reload can still be refused (slots running out half way, or a
/// later bind failure). A refused reload with too many targets therefore uses up the
/// process's whole slot capacity for names it never served, and every later reload that
/// adds even one target is refused with "this process has already served 4096 distinct
/// targets".
#[test]
fn a_refused_reload_takes_no_gossip_slots() {
    let a = Origin::echo_path();
    let good = format!("{}{}", header(1), upstream("a", a.addr, ""));
    let gw = Reloadable::start(&good);
    // An operator's generator goes wrong once: 5000 targets (the capacity is 4096).
    let many: Vec<String> = (0..5000)
        .map(|i| format!("\"127.0.0.{}:{}\"", 2 + i / 60000, 1024 + i % 60000))
        .collect();
    let oversized = format!(
        "{good}[[upstreams]]\nname = \"big\"\ntargets = [{}]\n",
        many.join(", ")
    );
    gw.write(&oversized);
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("capacity"), "{body}");
    // Fixed: the config gains one new upstream with one target. Nothing was ever served
    // beyond the first target, so there is plenty of room.
    let b = Origin::echo_path();
    gw.write(&format!("{good}{}", upstream("b", b.addr, "")));
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(
        status, 200,
        "adding one target after one refused reload was refused: {body}"
    );
    assert_eq!(gw.get("/b/x").status, 200);
}

/// A reload refused because a listener cannot bind changes nothing: no route, no target, no
/// generation; once the port is free the same file applies, and the new target starts
/// healthy and serves.
#[test]
fn a_reload_refused_for_a_bind_failure_changes_nothing() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let good = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Reloadable::start(&good);
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap();
    let more = good.replace(
        "[[upstreams]]",
        &format!("[[listeners]]\nname = \"extra\"\nbind = \"{taken}\"\n\n[[upstreams]]"),
    ) + &upstream("b", b.addr, "");
    gw.write(&more);
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("listeners[1].bind") && body.contains("cannot bind"),
        "{body}"
    );
    assert_eq!(gw.generation(), 1);
    assert_eq!(
        gw.get("/b/x").status,
        404,
        "the refused route must not serve"
    );
    assert_eq!(
        gw.json("/upstreams")["upstreams"].as_array().unwrap().len(),
        1
    );
    assert_eq!(gw.get("/a/x").status, 200);
    drop(blocker);
    let reloaded = gw.reload();
    assert_eq!(reloaded["generation"], 2, "{reloaded}");
    assert_eq!(gw.get("/b/x").text(), "path=/b/x");
    assert_eq!(gw.target_states(1), vec![vec!["healthy", "healthy"]]);
    let mut s = TcpStream::connect(taken).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /b/e HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(
        ResponseReader::default().read(&mut s, false).text(),
        "path=/b/e"
    );
}

/// Admin POSTs from several clients at once and SIGHUPs interleave: every POST applies its
/// own generation (no two answers share one), every shard ends on the last one, and a
/// keep-alive client on the request path loses nothing meanwhile.
#[test]
fn concurrent_admin_and_sighup_reloads_apply_in_order() {
    let a = Origin::echo_path();
    let config = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Arc::new(Reloadable::start(&config));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, failures, listen) = (stop.clone(), failures.clone(), gw.listen);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut reader = ResponseReader::default();
            while !stop.load(Ordering::Acquire) && sent < 100_000 {
                sent += 1;
                let ok = write!(s, "GET /a/{sent} HTTP/1.1\r\nHost: t\r\n\r\n").is_ok()
                    && reader
                        .try_read(&mut s, false)
                        .is_some_and(|r| r.text() == format!("path=/a/{sent}"));
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                    s = TcpStream::connect(listen).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    reader = ResponseReader::default();
                }
            }
            sent
        })
    };
    let posters: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| gw.reload()["generation"].as_u64().unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    for _ in 0..5 {
        gw.proc.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut generations: Vec<u64> = posters
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    generations.sort_unstable();
    let before = generations.len();
    generations.dedup();
    assert_eq!(
        generations.len(),
        before,
        "two POSTs reported one generation"
    );
    // SIGHUPs may coalesce; the last applied generation is at least 1 + 20 POSTs.
    let settled = wait_until(Duration::from_secs(10), || {
        let g = gw.generation();
        let shards = gw.json("/shards");
        g >= 21
            && shards["shards"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["config_generation"] == g)
    });
    assert!(settled, "{}", gw.json("/shards"));
    stop.store(true, Ordering::Release);
    let sent = client.join().unwrap();
    assert!(sent > 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {sent} requests");
    assert!(
        !gw.proc.stderr().contains("panicked"),
        "{}",
        gw.proc.stderr()
    );
}

/// A POST /reload whose head never completes, or is too large, reloads nothing and does not
/// hold up other admin requests.
#[test]
fn partial_and_oversized_admin_heads_do_not_reload() {
    let a = Origin::echo_path();
    let config = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Reloadable::start(&config);
    let mut partial = TcpStream::connect(gw.admin).unwrap();
    write!(
        partial,
        "POST /reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n"
    )
    .unwrap();
    let (status, _) = gw
        .admin_within("GET", "/healthz", None, Duration::from_secs(1))
        .expect("healthz while a partial head waits");
    assert_eq!(status, 200);
    // The partial one is closed without an answer after its deadline.
    partial
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = partial.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Too large a head.
    let mut big = TcpStream::connect(gw.admin).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let filler = "x".repeat(6000);
    let _ = write!(
        big,
        "POST /reload HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Filler: {filler}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(gw.generation(), 1);
    assert_eq!(gw.json("/config")["reloads"]["ok"], 0);
}

/// Once SIGTERM started a drain, POST /reload is refused (nothing is bound or sent to
/// shards that no longer read their inbox), while an exchange in flight finishes.
#[test]
fn a_reload_while_draining_is_refused() {
    let slow = Origin::start(|r| {
        if r.request_line().contains("/a/slow") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        ok(b"done")
    });
    let config = format!("{}{}", header(2), upstream("a", slow.addr, ""));
    let mut gw = Reloadable::start(&config);
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /a/slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(wait_until(Duration::from_secs(5), || !slow
        .received()
        .is_empty()));
    gw.proc.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || gw
        .proc
        .stderr()
        .contains("draining")));
    let (status, body) = gw.admin("POST", "/reload", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("draining"), "{body}");
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!((r.status, r.text()), (200, "done".to_string()));
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(15)), Some(0));
}

/// A second listener added, moved and removed 15 times while clients hammer both the main
/// listener (nothing may fail) and the churning one (whatever it answers must be whole).
/// No shard dies and no connection task panics.
#[test]
fn listener_churn_under_load_never_panics_a_shard() {
    let a = Origin::echo_path();
    let base = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Arc::new(Reloadable::start(&base));
    let ports: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let with_extra = |addr: SocketAddr, name: &str| {
        base.replace(
            "[[upstreams]]",
            &format!("[[listeners]]\nname = \"{name}\"\nbind = \"{addr}\"\n\n[[upstreams]]"),
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let main_failures = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..2 {
        let (stop, fails, listen) = (stop.clone(), main_failures.clone(), gw.listen);
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) && n < 50_000 {
                n += 1;
                let mut s = TcpStream::connect(listen).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let keep = if t == 0 { "" } else { "Connection: close\r\n" };
                let ok = write!(s, "GET /a/{n} HTTP/1.1\r\nHost: t\r\n{keep}\r\n").is_ok()
                    && ResponseReader::default()
                        .try_read(&mut s, false)
                        .is_some_and(|r| r.status == 200);
                if !ok {
                    fails.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for &port in &ports {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Ok(mut s) = TcpStream::connect(port) else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let _ = write!(s, "GET /a/x HTTP/1.1\r\nHost: t\r\n\r\n");
                let mut reader = ResponseReader::default();
                // Keep-alive until the listener goes: every answer must be whole and 200.
                while let Some(r) = reader.try_read(&mut s, false) {
                    assert_eq!(r.status, 200);
                    if r.header("connection") == Some("close") || stop.load(Ordering::Acquire) {
                        break;
                    }
                    if write!(s, "GET /a/x HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                        break;
                    }
                }
            }
        }));
    }
    for i in 0..15 {
        let config = match i % 3 {
            0 => with_extra(ports[0], "extra"),
            1 => with_extra(ports[1], "extra"),   // moved
            _ => with_extra(ports[1], "renamed"), // same address, new name
        };
        gw.write(&config);
        gw.reload();
        if i % 5 == 4 {
            gw.write(&base);
            gw.reload();
        }
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a client thread saw a broken answer");
    }
    assert_eq!(main_failures.load(Ordering::Relaxed), 0);
    let log = gw.proc.stderr();
    assert!(!log.contains("panicked") && !log.contains("died"), "{log}");
    assert_eq!(gw.get("/a/end").status, 200);
}

/// What used to go wrong (fixed; this is now its regression test):
/// Renaming a listener (same address) binds new sockets into the address's SO_REUSEPORT
/// group and closes the old ones: connections the kernel queued on an old socket (and any
/// accept that completed after `retired` was set, which `accept_loop` drops) are reset.
/// New connections to an address that never stops being configured must not fail.
#[test]
fn renaming_a_listener_keeps_its_socket_and_resets_nothing() {
    const RENAMES: usize = 100;
    let a = Origin::echo_path();
    let base = format!("{}{}", header(2), upstream("a", a.addr, ""));
    let gw = Arc::new(Reloadable::start(&base));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, counts, listen) = (stop.clone(), counts.clone(), gw.listen);
            let errors = errors.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    let outcome = (|| -> Result<u16, String> {
                        let mut s =
                            TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        write!(
                            s,
                            "GET /a/r HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                        )
                        .map_err(|e| format!("write: {e}"))?;
                        let mut all = Vec::new();
                        s.read_to_end(&mut all).map_err(|e| format!("read: {e}"))?;
                        match status_of(&String::from_utf8_lossy(&all)) {
                            0 => Err("closed without an answer".to_string()),
                            status => Ok(status),
                        }
                    })();
                    if outcome != Ok(200) {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("{outcome:?}"));
                    }
                }
            })
        })
        .collect();
    for i in 0..RENAMES {
        let name = if i % 2 == 0 { "main-renamed" } else { "main" };
        gw.write(&base.replace("name = \"main\"", &format!("name = \"{name}\"")));
        gw.reload();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, failed) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    assert!(sent > 100, "the clients hardly ran: {sent}");
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} new connections failed across {RENAMES} renames: {:?}",
        errors.lock().unwrap()
    );
}
