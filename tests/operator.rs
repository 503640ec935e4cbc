//! What an operator of nginx or HAProxy takes for granted (issue #16), through the real
//! binary: plain HTTP sent to a TLS port gets a readable 400, every answer the gateway makes
//! itself carries `Date`, and its 503s say when to come back.

mod common;
use common::pki::*;
use common::*;
use rcgen::PKCS_ECDSA_P256_SHA256;
use std::io::{Read, Write};

fn is_imf_fixdate(v: &str) -> bool {
    // `Tue, 01 Dec 2026 11:30:35 GMT`
    let b = v.as_bytes();
    b.len() == 29
        && v.ends_with(" GMT")
        && b[3] == b','
        && b[7] == b' '
        && b[11] == b' '
        && b[16] == b' '
        && b[19] == b':'
        && b[22] == b':'
}

#[test]
fn plain_http_on_a_tls_port_gets_a_400_it_can_read() {
    let ca = Ca::new("operator ca");
    let dir = temp_dir("operator-tls");
    let cert = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let gw = Gateway::start(&format!(
        "{}{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n",
        base_config(),
        tls_listener(&[cert], "")
    ));
    let mut s = gw.connect();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.contains("plain HTTP request sent to an HTTPS port"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"));
    // TLS still works on the same port.
    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let r = ResponseReader::default().read(&mut tls, false);
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.header("date").is_some_and(is_imf_fixdate), "{}", r.head);
}

#[test]
fn the_gateways_own_answers_carry_date_and_its_503s_retry_after() {
    // An upstream whose only target refuses connections, with passive ejection quick.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"gone\"\ntargets = [\"{dead}\"]\npanic_mode = false\n[upstreams.passive]\nconsecutive_failures = 1\nejection_time = \"30s\"\nmax_ejection_percent = 100\n\n[[routes]]\nname = \"gone\"\nupstream = \"gone\"\nretries = 0\n",
        base_config()
    ));
    let r = gw.get("/nothing-here");
    assert!(r.status == 502 || r.status == 503, "{}", r.head);
    assert!(r.header("date").is_some_and(is_imf_fixdate), "{}", r.head);
    // Once ejected on both shards: no healthy target, 503 with Retry-After.
    assert!(wait_until(std::time::Duration::from_secs(15), || {
        let r = gw.get("/x");
        r.status == 503 && r.header("retry-after") == Some("1")
    }));
}

#[test]
fn a_second_instance_on_a_served_address_is_refused_unless_handing_over() {
    let first = Gateway::start(&format!(
        "{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"first\" }}\n",
        base_config()
    ));
    let path = first.dir.join("ringgate.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind {}", first.listen)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {} (ringgate)", first.proc.pid())),
        "names the process: {stderr}"
    );
    assert!(stderr.contains("--handover"), "{stderr}");

    // A listener that is not ringgate's is refused the same way.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = temp_dir("operator-taken");
    let other = dir.join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[[listeners]]\nname = \"l\"\nbind = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["run", "--config", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );

    // --handover joins the address on purpose: the second one runs.
    let mut second = spawn_bin(
        &first.dir,
        &["run", "--handover", "--config", path.to_str().unwrap()],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        second.wait_exit(std::time::Duration::from_millis(10)),
        None,
        "{}",
        second.stderr()
    );
    assert_eq!(first.get("/hello").status, 200);
}

#[test]
fn version_names_the_commit_the_build_date_and_the_io_driver() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("ringgate {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let commit = text
        .split("commit ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert!(
        commit == "unknown"
            || commit
                .trim_end_matches("-dirty")
                .bytes()
                .all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
    assert!(text.contains(", built 20"), "{text}");
    assert!(text.contains("io_uring"), "{text}");
}

#[test]
fn check_reports_every_problem_in_file_order() {
    let dir = temp_dir("check-all");
    let path = dir.join("five.toml");
    std::fs::write(
        &path,
        "[server]\nworkers = \"two\"\n\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\nbogus = 1\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9\"]\nlb = \"sideways\"\n\n[[routes]]\nname = \"r\"\nupstream = \"nowhere\"\npath_prefix = \"/a\"\n\n[[routes]]\nname = \"s\"\nupstream = \"u\"\npath_prefix = \"/b\"\ntimeout = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        (":2: server.workers:", "\"two\""),
        (":7: listeners[0].bogus:", "unknown field"),
        (":12: upstreams[0].lb:", "unknown field"),
        (":16: routes[0].upstream:", "\"nowhere\""),
        (":23: routes[1].timeout:", "unknown field"),
    ];
    assert_eq!(lines.len(), expected.len(), "{err}");
    for (line, (place, what)) in lines.iter().zip(expected) {
        assert!(
            line.contains(place) && line.contains(what),
            "{line:?} should name {place} and {what}\n{err}"
        );
    }
}

#[test]
fn check_warns_about_risky_configs_and_fails_on_them_when_strict() {
    let dir = temp_dir("check-warn");
    let path = dir.join("warn.toml");
    let config = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9\"]\ntls = true\ntls_verify = false\n\n[[upstreams]]\nname = \"spare\"\ntargets = [\"127.0.0.1:10\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n";
    std::fs::write(&path, config).unwrap();
    let check = |strict: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["check", "--config", path.to_str().unwrap()]);
        if strict {
            cmd.arg("--strict");
        }
        cmd.output().unwrap()
    };
    let out = check(false);
    assert!(out.status.success(), "warnings alone pass");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains(":9: upstreams[0].tls_verify:"),
        "{err}"
    );
    assert!(
        warnings[1].contains(":11: upstreams[1]:") && warnings[1].contains("used by no route"),
        "{err}"
    );
    assert!(!check(true).status.success(), "--strict fails on warnings");

    // An admin address that is a listener's is a problem, with its line.
    std::fs::write(
        &path,
        format!("[admin]\nbind = \"127.0.0.1:1\"\n\n{config}"),
    )
    .unwrap();
    let out = check(false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: admin.bind:") && err.contains("listeners[0]"),
        "{err}"
    );
}

#[test]
fn proxy_needs_no_config_file() {
    let a = Origin::echo_path();
    let b = Origin::echo_path();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("proxy-cmd");
    let proc = spawn_bin(
        &dir,
        &[
            "proxy",
            "--from",
            &listen.to_string(),
            "--to",
            &format!("{},http://{}", a.addr, b.addr),
        ],
    );
    assert!(
        wait_for_port(listen, std::time::Duration::from_secs(15)),
        "{}",
        proc.stderr()
    );
    let gw = Gateway { proc, listen, dir };
    for i in 0..10 {
        let r = gw.get(&format!("/p/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("path=/p/{i}"));
    }
    assert!(
        !a.received().is_empty() && !b.received().is_empty(),
        "round robin over both"
    );
    // Nothing to re-read: a reload is refused, and it keeps serving.
    gw.proc.signal(libc::SIGHUP);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || gw
            .proc
            .stderr()
            .contains("there is no file to re-read")),
        "{}",
        gw.proc.stderr()
    );
    assert_eq!(gw.get("/after").text(), "path=/after");

    // A bad target is refused with what was wrong.
    let out = std::process::Command::new(BIN)
        .args([
            "proxy",
            "--from",
            "127.0.0.1:1",
            "--to",
            "ftp://127.0.0.1:2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"ftp\" is not http or https"));
}

/// `ringgate demo --config` on a TLS upstream (an echo origin the demo starts on a free
/// port) behind route `/s`, with `listener_tls` under the listener; returns the gateway
/// (stopped by PID when dropped) and the origin's port.
fn demo_with_a_tls_upstream(dir: &std::path::Path, listener_tls: &str) -> (Gateway, u16) {
    let (listen_port, origin_port) = (free_port(), free_port());
    let path = dir.join("demo.toml");
    std::fs::write(
        &path,
        format!("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:{listen_port}\"\n{listener_tls}\n[[upstreams]]\nname = \"secure\"\ntargets = [\"127.0.0.1:{origin_port}\"]\ntls = true\n\n[[routes]]\nname = \"s\"\npath_prefix = \"/s\"\nstrip_prefix = true\nupstream = \"secure\"\n"),
    )
    .unwrap();
    let proc = spawn_bin(dir, &["demo", "--config", path.to_str().unwrap()]);
    let listen: std::net::SocketAddr = format!("127.0.0.1:{listen_port}").parse().unwrap();
    assert!(
        wait_for_port(listen, std::time::Duration::from_secs(15)),
        "{}",
        proc.stderr()
    );
    let gw = Gateway {
        proc,
        listen,
        dir: dir.to_path_buf(),
    };
    (gw, origin_port)
}

#[test]
fn demo_starts_tls_origins_for_tls_upstreams_and_names_them() {
    let dir = temp_dir("demo-tls");
    let (gw, origin_port) = demo_with_a_tls_upstream(&dir, "");
    let r = gw.get("/s/headers");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.proc.stderr());
    assert_eq!(
        r.header("x-origin"),
        Some(format!("127.0.0.1:{origin_port}").as_str())
    );
    assert!(r.text().starts_with(&format!(
        "x-origin: 127.0.0.1:{origin_port}\r\nGET /headers "
    )));
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("stdout.log")).is_ok_and(|out| {
            out.contains(&format!("https://127.0.0.1:{origin_port}")) && out.contains("/s/headers")
        })
    }));
    // A reload compiles the file again: the upstream still trusts the demo's certificate on
    // new connections (three at once: the pool holds one).
    gw.proc.signal(libc::SIGHUP);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || gw
            .proc
            .stderr()
            .contains("generation 2 applied")),
        "{}",
        gw.proc.stderr()
    );
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| gw.get("/s/delay/300").status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200, 200, 200], "{}", gw.proc.stderr());
}

/// Makes the io_uring syscalls fail with ENOSYS in the child, as Docker's default seccomp
/// profile does.
#[cfg(target_arch = "x86_64")]
fn without_io_uring(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let program: Vec<libc::sock_filter> = vec![
        stmt(load, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, SECCOMP_RET_ALLOW),
        stmt(load, 0),   // seccomp_data.nr
        jump(425, 2, 0), // io_uring_setup
        jump(426, 1, 0), // io_uring_enter
        jump(427, 0, 1), // io_uring_register
        stmt(ret, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret, SECCOMP_RET_ALLOW),
    ];
    let program = Box::leak(program.into_boxed_slice());
    let fprog = Box::leak(Box::new(libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    }));
    // The address only: the closure must be Send + Sync, a raw pointer is neither.
    let fprog = fprog as *const libc::sock_fprog as usize;
    // SAFETY: only prctl (async-signal-safe) runs between fork and exec, on data leaked above.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn where_seccomp_forbids_io_uring_shards_fall_back_to_epoll_and_say_so() {
    let origin = Origin::echo_path();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("no-uring");
    let path = dir.join("ringgate.toml");
    std::fs::write(
        &path,
        format!("[server]\nworkers = 2\n\n[[listeners]]\nname = \"l\"\nbind = \"{listen}\"\n\n[[upstreams]]\nname = \"o\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"o\"\n", origin.addr),
    )
    .unwrap();
    let mut version = std::process::Command::new(BIN);
    version.arg("--version");
    without_io_uring(&mut version);
    let out = version.output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("io_uring unavailable here: epoll fallback"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let stderr_path = dir.join("stderr.log");
    let mut command = std::process::Command::new(BIN);
    command
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    without_io_uring(&mut command);
    let proc = Proc {
        child: command.spawn().unwrap(),
        stderr_path,
    };
    assert!(
        wait_for_port(listen, std::time::Duration::from_secs(15)),
        "{}",
        proc.stderr()
    );
    let gw = Gateway { proc, listen, dir };
    for i in 0..5 {
        assert_eq!(gw.get(&format!("/{i}")).text(), format!("path=/{i}"));
    }
    let log = gw.proc.stderr();
    for shard in 0..2 {
        assert!(
            log.contains(&format!(
                "shard {shard}: io_uring is not available (old kernel or seccomp); falling back to epoll"
            )) && log.contains(&format!("shard {shard}: epoll driver")),
            "{log}"
        );
    }
}

/// Splits a printed shell command into words (single quotes group, as the demo prints them).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn demo_with_a_tls_listener_and_a_tls_upstream_prints_commands_that_work() {
    let dir = temp_dir("demo-tls-listener");
    let ca = Ca::new("demo test ca");
    let leaf = ca.leaf(&["localhost"], "localhost", &PKCS_ECDSA_P256_SHA256);
    let certs = [write_leaf(&dir, "gw", &leaf)];
    let (gw, origin_port) = demo_with_a_tls_upstream(&dir, &tls_listener(&certs, ""));
    let listen = gw.listen;
    let listen_port = listen.port();
    let mut commands = Vec::new();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
        commands = out
            .lines()
            .filter(|l| l.trim_start().starts_with("curl "))
            .map(shell_words)
            .collect();
        out.contains("Stop with Ctrl-C")
    }));
    // The three the demo prints for this config: the route, a POST echo, a 404.
    assert_eq!(commands.len(), 3, "{commands:?}");
    let base = format!("https://127.0.0.1:{listen_port}");
    let mut answered = Vec::new();
    for words in &commands {
        assert!(words.contains(&"-k".to_string()), "{words:?}");
        let url = words.iter().find(|w| w.starts_with("https://")).unwrap();
        let path = url.strip_prefix(&base).unwrap_or_else(|| panic!("{url}"));
        let data = words
            .iter()
            .position(|w| w == "--data")
            .map(|i| words[i + 1].clone());
        let method = if data.is_some() { "POST" } else { "GET" };
        let body = data.unwrap_or_default();
        let mut tls = tls_connect(listen, client_config(&ca, None), "localhost").unwrap();
        write!(
            tls,
            "{method} {path} HTTP/1.1\r\nHost: demo\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let r = ResponseReader::default().read(&mut tls, false);
        answered.push((path.to_string(), r.status, r.text()));
    }
    assert_eq!(answered[0].0, "/s/headers");
    assert_eq!(answered[0].1, 200, "{answered:?}");
    assert!(
        answered[0]
            .2
            .starts_with(&format!("x-origin: 127.0.0.1:{origin_port}"))
    );
    assert_eq!(
        (
            answered[1].0.as_str(),
            answered[1].1,
            answered[1].2.as_str()
        ),
        ("/s/echo", 200, "hello")
    );
    assert_eq!(
        (answered[2].0.as_str(), answered[2].1),
        ("/nope", 404),
        "{}",
        gw.proc.stderr()
    );
}
