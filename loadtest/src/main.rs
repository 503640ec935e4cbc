//! Bounded load runs that count everything: every request sent, every answer by status, every
//! failure, and for request bodies whether the origin's echo came back byte for byte. Latency
//! goes into an HDR histogram measured from each request's *scheduled* send time, so a stalled
//! server cannot hide its queueing delay (no coordinated omission).
//!
//! Every run stops by itself; only 127.0.0.1 / ::1 targets are accepted.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Bounded soak and fault runs against an HTTP/1.1 gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fixed-rate load over keep-alive connections (GETs and echoed POSTs).
    Soak {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Holds N idle keep-alive connections while load runs; reports RSS per idle connection.
    Idle {
        #[command(flatten)]
        load: LoadArgs,
        /// Idle connections to hold.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// PID of the server whose RSS is measured (its children are included).
        #[arg(long)]
        pid: u32,
    },
    /// Slow clients dribble header bytes while normal load runs.
    Slow {
        #[command(flatten)]
        load: LoadArgs,
        /// Slow clients.
        #[arg(long, default_value_t = 50)]
        slow: usize,
        /// Delay between the bytes a slow client sends.
        #[arg(long, default_value_t = 1000)]
        slow_interval_ms: u64,
    },
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    /// Target address (loopback only).
    #[arg(long)]
    target: SocketAddr,
    /// Requests per second across all connections.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Keep-alive connections carrying the load.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Every Nth request is a POST of this many bytes to /echo (0: GETs only).
    #[arg(long, default_value_t = 4096)]
    post_bytes: usize,
    /// Every Nth request is a POST.
    #[arg(long, default_value_t = 4)]
    post_every: u64,
    /// Label for the closing line.
    #[arg(long, default_value = "run")]
    label: String,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    failed: u64,
    body_mismatch: u64,
    latency: Option<Histogram<u64>>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.body_mismatch += other.body_mismatch;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        match (&mut self.latency, other.latency) {
            (Some(a), Some(b)) => {
                let _ = a.add(b);
            }
            (slot @ None, b) => *slot = b,
            _ => {}
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn main() {
    let cli = Cli::parse();
    let load = match &cli.command {
        Command::Soak { load } | Command::Idle { load, .. } | Command::Slow { load, .. } => {
            load.clone()
        }
    };
    if !load.target.ip().is_loopback() {
        eprintln!("loadtest only sends traffic to 127.0.0.1 or ::1");
        std::process::exit(2);
    }
    match cli.command {
        Command::Soak { load } => {
            let tally = run_load(&load);
            report(&load, &tally, "");
            exit_with(&tally);
        }
        Command::Idle { load, idle, pid } => {
            let before = rss_kib(pid);
            let held = open_idle(load.target, idle);
            let after = rss_kib(pid);
            let per_conn = (after.saturating_sub(before)) as f64 / held.len().max(1) as f64;
            println!(
                "idle: {} of {idle} connections held; server RSS {before} KiB -> {after} KiB = {per_conn:.1} KiB per idle connection",
                held.len()
            );
            let tally = run_load(&load);
            let still_open = held.iter().filter(|s| is_open(s)).count();
            report(
                &load,
                &tally,
                &format!(
                    ", idle connections still open {still_open}/{}, {per_conn:.1} KiB RSS each",
                    held.len()
                ),
            );
            exit_with(&tally);
        }
        Command::Slow {
            load,
            slow,
            slow_interval_ms,
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            let outcomes = Arc::new(Mutex::new(Vec::new()));
            let dribblers: Vec<_> = (0..slow)
                .map(|_| {
                    let (stop, outcomes) = (stop.clone(), outcomes.clone());
                    let target = load.target;
                    std::thread::spawn(move || {
                        let outcome =
                            dribble(target, Duration::from_millis(slow_interval_ms), &stop);
                        outcomes.lock().expect("outcomes").push(outcome);
                    })
                })
                .collect();
            let tally = run_load(&load);
            stop.store(true, Ordering::Release);
            for d in dribblers {
                let _ = d.join();
            }
            let outcomes = outcomes.lock().expect("outcomes");
            let cut = outcomes.iter().filter(|o| o.is_some()).count();
            let mut cut_after: Vec<u64> = outcomes.iter().flatten().map(|d| d.as_secs()).collect();
            cut_after.sort_unstable();
            let median = cut_after.get(cut_after.len() / 2).copied().unwrap_or(0);
            report(
                &load,
                &tally,
                &format!(", slow clients cut off {cut}/{slow} (median after {median}s)"),
            );
            exit_with(&tally);
        }
    }
}

fn exit_with(tally: &Tally) {
    let lost = tally.failed + tally.body_mismatch + non_2xx(tally);
    std::process::exit(if lost == 0 { 0 } else { 1 });
}

fn non_2xx(tally: &Tally) -> u64 {
    tally
        .by_status
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum()
}

fn report(load: &LoadArgs, tally: &Tally, extra: &str) {
    let h = tally.latency.clone().unwrap_or_else(histogram);
    let statuses: Vec<String> = tally
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    println!(
        "{}: latency p50 {}us p99 {}us p99.9 {}us max {}us",
        load.label,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    let lost = tally.failed + tally.body_mismatch + non_2xx(tally);
    println!(
        "{}: sent {} answered [{}] failed {} body-mismatch {} => LOST {}{}",
        load.label,
        tally.sent,
        statuses.join(" "),
        tally.failed,
        tally.body_mismatch,
        lost,
        extra
    );
}

/// Runs fixed-rate load on `connections` threads until `duration` has passed.
fn run_load(load: &LoadArgs) -> Tally {
    let threads: Vec<_> = (0..load.connections.max(1))
        .map(|i| {
            let load = load.clone();
            std::thread::spawn(move || load_thread(&load, i))
        })
        .collect();
    let mut total = Tally::default();
    for t in threads {
        if let Ok(tally) = t.join() {
            total.merge(tally);
        }
    }
    total
}

fn load_thread(load: &LoadArgs, index: usize) -> Tally {
    let mut tally = Tally {
        latency: Some(histogram()),
        ..Tally::default()
    };
    let per_thread_rate = (load.rate as f64 / load.connections.max(1) as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_thread_rate);
    let start = Instant::now() + interval.mul_f64(index as f64 / load.connections.max(1) as f64);
    let end = Instant::now() + Duration::from_secs(load.duration);
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    loop {
        let scheduled = start + interval.mul_f64(n as f64);
        if scheduled >= end {
            break;
        }
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let post = load.post_bytes > 0 && load.post_every > 0 && n.is_multiple_of(load.post_every);
        let body: Vec<u8> = if post {
            (0..load.post_bytes)
                .map(|i| ((i as u64 + n + index as u64) % 251) as u8)
                .collect()
        } else {
            Vec::new()
        };
        n += 1;
        tally.sent += 1;
        let c = match conn.take() {
            Some(c) => Some(c),
            None => Conn::open(load.target).ok(),
        };
        let Some(mut c) = c else {
            tally.failed += 1;
            continue;
        };
        match c.exchange(post, &body) {
            Ok((status, echoed, keep)) => {
                *tally.by_status.entry(status).or_default() += 1;
                if post && status == 200 && echoed != body {
                    tally.body_mismatch += 1;
                }
                let micros = scheduled.elapsed().as_micros().max(1) as u64;
                if let Some(h) = &mut tally.latency {
                    let _ = h.record(micros.min(60_000_000));
                }
                if keep {
                    conn = Some(c);
                }
            }
            Err(_) => tally.failed += 1,
        }
    }
    tally
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(target: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one request; returns (status, body, keep-alive).
    fn exchange(&mut self, post: bool, body: &[u8]) -> std::io::Result<(u16, Vec<u8>, bool)> {
        if post {
            write!(
                self.stream,
                "POST /echo HTTP/1.1\r\nHost: loadtest\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            self.stream.write_all(body)?;
        } else {
            self.stream
                .write_all(b"GET / HTTP/1.1\r\nHost: loadtest\r\n\r\n")?;
        }
        self.read_response()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_response(&mut self) -> std::io::Result<(u16, Vec<u8>, bool)> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.drain(..head_end);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            })
        };
        let keep = header("connection").is_none_or(|v| v != "close");
        let body = if header("transfer-encoding").is_some_and(|v| v == "chunked") {
            self.read_chunked()?
        } else {
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        };
        Ok((status, body, keep))
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill()?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "chunk size"))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// Opens `n` keep-alive connections, each having completed one request.
fn open_idle(target: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut c) = Conn::open(target) else { break };
        if c.exchange(false, &[])
            .is_ok_and(|(s, _, keep)| s == 200 && keep)
        {
            held.push(c.stream);
        }
    }
    held
}

fn is_open(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut byte = [0u8; 1];
    let open = matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    open
}

/// Sends a request head one byte per `interval`; returns how long until the server cut it off.
fn dribble(target: SocketAddr, interval: Duration, stop: &AtomicBool) -> Option<Duration> {
    let mut s = TcpStream::connect(target).ok()?;
    let started = Instant::now();
    let head = b"GET /slow HTTP/1.1\r\nHost: loadtest\r\nX-Slow: ";
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let byte = head.get(i).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            return Some(started.elapsed());
        }
        i += 1;
        if !is_open(&s) {
            return Some(started.elapsed());
        }
        std::thread::sleep(interval);
    }
    None
}

fn rss_kib(pid: u32) -> u64 {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}
