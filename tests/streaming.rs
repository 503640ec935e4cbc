//! Large bodies stream through bounded buffers: 200 MiB up and down with the gateway's RSS
//! staying flat, against the real `ringgate echo` origin.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const SIZE: u64 = 200 * 1024 * 1024;
/// Growth allowed over the idle RSS: buffers are per connection and a few tens of KiB, so
/// anything near the body size means something buffered it.
const MAX_GROWTH_KIB: u64 = 48 * 1024;

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

struct Setup {
    _echo: Proc,
    gw: Gateway,
}

fn setup() -> Setup {
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = temp_dir("echo");
    let echo = spawn_bin(&dir, &["echo", "--bind", &echo_addr.to_string()]);
    assert!(
        wait_for_port(echo_addr, Duration::from_secs(15)),
        "echo did not start"
    );
    let config = format!(
        "{}[limits]\nmax_body_bytes = \"1GiB\"\n\n[[upstreams]]\nname = \"echo\"\ntargets = [\"{echo_addr}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        base_config()
    );
    Setup {
        _echo: echo,
        gw: Gateway::start(&config),
    }
}

/// Samples the gateway's RSS until `done`; returns the peak in KiB.
fn watch_rss(pid: i32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(Ordering::Acquire) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// Reads a response head and returns the rest of the stream positioned at the body.
fn read_head(s: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(p + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Counts and checks `len` body bytes following the pattern, starting with `first`.
fn read_body(
    s: &mut std::net::TcpStream,
    first: Vec<u8>,
    len: u64,
    check: impl Fn(u64, u8) -> bool,
) {
    let mut seen = 0u64;
    let verify = |bytes: &[u8], seen: &mut u64| {
        for &b in bytes {
            assert!(check(*seen, b), "wrong byte at offset {seen}");
            *seen += 1;
        }
    };
    verify(&first, &mut seen);
    let mut chunk = vec![0u8; 256 * 1024];
    while seen < len {
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "body ended after {seen} of {len} bytes");
        verify(&chunk[..n], &mut seen);
    }
    assert_eq!(seen, len);
}

#[test]
fn upload_of_200_mib_streams_both_ways_with_flat_memory() {
    let setup = setup();
    let gw = &setup.gw;
    let baseline = gw.proc.rss_kib();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_rss(gw.proc.pid(), done.clone());

    let mut s = gw.connect();
    let mut writer = s.try_clone().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_by_writer = sent.clone();
    let upload = std::thread::spawn(move || {
        write!(
            writer,
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n"
        )
        .unwrap();
        let mut block = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        while offset < SIZE {
            for (i, b) in block.iter_mut().enumerate() {
                *b = pattern(offset + i as u64);
            }
            writer.write_all(&block).unwrap();
            offset += block.len() as u64;
            sent_by_writer.store(offset, Ordering::Release);
        }
    });
    let (head, first) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    read_body(&mut s, first, SIZE, |i, b| b == pattern(i));
    upload.join().unwrap();
    assert_eq!(sent.load(Ordering::Acquire), SIZE);

    done.store(true, Ordering::Release);
    let peak = watcher.join().unwrap();
    assert!(
        peak < baseline + MAX_GROWTH_KIB,
        "gateway RSS grew from {baseline} KiB to {peak} KiB while streaming"
    );
}

#[test]
fn download_of_200_mib_streams_with_flat_memory() {
    let setup = setup();
    let gw = &setup.gw;
    let baseline = gw.proc.rss_kib();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_rss(gw.proc.pid(), done.clone());
    let mut s = gw.connect();
    write!(s, "GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (head, first) = read_head(&mut s);
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    read_body(&mut s, first, SIZE, |_, b| b == b'x');
    done.store(true, Ordering::Release);
    let peak = watcher.join().unwrap();
    assert!(
        peak < baseline + MAX_GROWTH_KIB,
        "gateway RSS grew from {baseline} KiB to {peak} KiB while streaming"
    );
    // The connection is still usable afterwards.
    s.write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.text(), "xxx");
}

#[test]
fn chunked_upload_of_64_mib_is_echoed_chunked() {
    let setup = setup();
    let gw = &setup.gw;
    let mut s = gw.connect();
    let mut writer = s.try_clone().unwrap();
    const TOTAL: u64 = 64 * 1024 * 1024;
    let upload = std::thread::spawn(move || {
        writer
            .write_all(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let mut offset = 0u64;
        let mut block = Vec::new();
        while offset < TOTAL {
            let len = 10_000.min(TOTAL - offset);
            block.clear();
            block.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            block.extend((0..len).map(|i| pattern(offset + i)));
            block.extend_from_slice(b"\r\n");
            writer.write_all(&block).unwrap();
            offset += len;
        }
        writer.write_all(b"0\r\n\r\n").unwrap();
    });
    let mut reader = ResponseReader::default();
    let r = reader.read(&mut s, false);
    upload.join().unwrap();
    assert!(r.chunked);
    assert_eq!(r.body.len() as u64, TOTAL);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64))
    );
}
