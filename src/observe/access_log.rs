//! The access log: one line per exchange, formatted on the shard into a shard-local buffer
//! and handed in chunks to a writer thread through a bounded lock-free queue per shard. A
//! shard never waits on the disk: when the writer falls behind (a slow disk, a pipe nobody
//! reads) the queue is full, the chunk is dropped and its lines are counted
//! (`ringgate_access_log_dropped_total`), never a request. The writer reopens the file on
//! SIGUSR1 (logrotate's `postrotate`) and on every reload.
//!
//! What a line may hold is fixed (DESIGN.md §4b): never a header value, never the query
//! string; every byte a peer sent is JSON-escaped.

use crate::config::{AccessLogFormat, AccessLogSpec};
use crossbeam_queue::ArrayQueue;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A chunk is handed over once it holds this much (or on the shard's next tick).
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks waiting per shard: at most 2 MiB of lines per shard are in flight.
const QUEUED_CHUNKS: usize = 64;
/// Lines waiting from the threads that are not shards (one line each: audit events).
const OFF_SHARD_LINES: usize = 4096;
/// How often the writer looks for chunks when it found none.
const WRITER_IDLE: Duration = Duration::from_millis(5);
const WRITER_IDLE_MAX: Duration = Duration::from_millis(50);

/// What one exchange's line says.
pub struct Line<'a> {
    pub unix_ms: u64,
    pub request_id: &'a [u8],
    pub client_ip: IpAddr,
    pub method: &'a [u8],
    pub host: &'a [u8],
    pub path: &'a [u8],
    /// 0: the client got nothing (logged as 499, as nginx does).
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Option<Duration>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub tls: bool,
    pub cache: Option<&'a str>,
}

impl Line<'_> {
    pub fn push(&self, format: AccessLogFormat, out: &mut Vec<u8>) {
        match format {
            AccessLogFormat::Json => self.push_json(out),
            AccessLogFormat::Combined => self.push_combined(out),
        }
    }

    fn status(&self) -> u16 {
        if self.status == 0 { 499 } else { self.status }
    }

    // Formatting is written by hand (no `fmt` machinery): it runs once per exchange on the
    // shard, and `write!` with padding and floats cost most of the log's CPU (PERF.md).
    fn push_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, self.unix_ms);
        out.extend_from_slice(b"\",\"request_id\":");
        push_json_string(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":\"");
        push_ip(out, self.client_ip);
        out.extend_from_slice(b"\",\"method\":");
        push_json_string(out, self.method);
        out.extend_from_slice(b",\"host\":");
        push_json_string(out, self.host);
        out.extend_from_slice(b",\"path\":");
        push_json_string(out, self.path);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status()));
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.duration.unwrap_or_default());
        for (name, value) in [
            (&b",\"route\":"[..], self.route),
            (b",\"upstream\":", self.upstream),
            (b",\"target\":", self.target),
            (b",\"consumer\":", self.consumer),
        ] {
            out.extend_from_slice(name);
            push_json_text_or_null(out, value);
        }
        out.extend_from_slice(if self.tls {
            b",\"tls\":true,\"cache\":"
        } else {
            b",\"tls\":false,\"cache\":"
        });
        push_json_text_or_null(out, self.cache);
        out.extend_from_slice(b"}\n");
    }

    /// nginx's `combined`: `ip - - [time] "METHOD path HTTP/1.1" status bytes "-" "-"`.
    fn push_combined(&self, out: &mut Vec<u8>) {
        push_ip(out, self.client_ip);
        out.extend_from_slice(b" - - [");
        push_clf_time(out, self.unix_ms);
        out.extend_from_slice(b"] \"");
        push_escaped(out, or_dash(self.method));
        out.push(b' ');
        push_escaped(out, or_dash(self.path));
        out.extend_from_slice(b" HTTP/1.1\" ");
        push_u64(out, u64::from(self.status()));
        out.push(b' ');
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b" \"-\" \"-\"\n");
    }
}

fn or_dash(bytes: &[u8]) -> &[u8] {
    if bytes.is_empty() { b"-" } else { bytes }
}

/// A JSON string of peer bytes: `"` `\\` and every control or non-ASCII byte escaped, so the
/// line is valid UTF-8 and one line whatever the bytes were.
pub fn push_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::http::push_escaped_json(out, bytes, false);
}

/// A JSON string of text that is already UTF-8 (names from the config, claims): quotes,
/// backslashes and control characters escaped, other characters kept as they are.
pub fn push_json_text(out: &mut Vec<u8>, text: &str) {
    crate::http::push_escaped_json(out, text.as_bytes(), true);
}

pub fn push_json_text_or_null(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => push_json_text(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Peer bytes in a `combined` line: `"`, `\` and non-printable bytes as `\xHH`, as nginx does.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        match b {
            0x21..=0x7e if b != b'"' && b != b'\\' => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                UPPER[usize::from(b >> 4)],
                UPPER[usize::from(b & 15)],
            ]),
        }
    }
}

/// A decimal number.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` as exactly `width` digits (`n` is below 10^width).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 4];
    let mut n = n;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Milliseconds with three decimals (`1.500`), from the duration's microseconds.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// An address as `Display` writes it, IPv4-mapped IPv6 as plain IPv4.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// (year, month, day, hour, minute, second, millisecond) of a Unix time in milliseconds.
fn civil(unix_ms: u64) -> (i64, u64, u64, u64, u64, u64, u64) {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000,
    )
}

/// `2026-12-01T04:52:00.123Z`
pub fn push_rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
    let (y, mo, d, h, mi, s, ms) = civil(unix_ms);
    push_padded(out, y.clamp(0, 9999) as u64, 4);
    for (sep, n) in [(b'-', mo), (b'-', d), (b'T', h), (b':', mi), (b':', s)] {
        out.push(sep);
        push_padded(out, n, 2);
    }
    out.push(b'.');
    push_padded(out, ms, 3);
    out.push(b'Z');
}

/// `01/Dec/2026:04:52:00 +0000`
fn push_clf_time(out: &mut Vec<u8>, unix_ms: u64) {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(unix_ms);
    push_padded(out, d, 2);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(mo as usize).clamp(1, 12) - 1]);
    out.push(b'/');
    push_padded(out, y.clamp(0, 9999) as u64, 4);
    for n in [h, mi, s] {
        out.push(b':');
        push_padded(out, n, 2);
    }
    out.extend_from_slice(b" +0000");
}

/// Chunks of lines from every shard to the writer thread.
pub struct LogPipe {
    /// The config key, for warnings (`access_log`, `audit_log`).
    key: &'static str,
    queues: Vec<ArrayQueue<(Vec<u8>, u64)>>,
    /// Lines lost off the shards: the file could not be opened or written, or a non-shard
    /// thread found its queue full. (Shards count their own drops.)
    pub lost: AtomicU64,
    /// A write error was reported (once until the next successful write).
    write_error_reported: AtomicBool,
    /// The file (or stdout) to write to; replaced on reload.
    target: Mutex<Option<AccessLogSpec>>,
    /// Set to make the writer reopen its file (SIGUSR1, reload).
    reopen: AtomicBool,
    /// Lines written, for tests and `/metrics`.
    pub written: AtomicU64,
    /// Set at exit: the writer writes what is queued, flushes, and says so in `closed`.
    closing: AtomicBool,
    closed: AtomicBool,
}

impl LogPipe {
    /// A pipe with one queue per shard plus one for the other threads.
    pub fn new(key: &'static str, shards: usize, target: Option<AccessLogSpec>) -> LogPipe {
        LogPipe {
            key,
            queues: (0..=shards)
                .map(|i| {
                    ArrayQueue::new(if i == shards {
                        OFF_SHARD_LINES
                    } else {
                        QUEUED_CHUNKS
                    })
                })
                .collect(),
            lost: AtomicU64::new(0),
            write_error_reported: AtomicBool::new(false),
            target: Mutex::new(target),
            reopen: AtomicBool::new(true),
            written: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// The queue of the threads that are not shards (control, admin).
    pub fn control_queue(&self) -> usize {
        self.queues.len() - 1
    }

    /// Hands a chunk of `lines` lines to the writer; gives it back when the queue is full.
    pub fn send(&self, shard: usize, chunk: Vec<u8>, lines: u64) -> Result<(), (Vec<u8>, u64)> {
        self.queues[shard].push((chunk, lines))
    }

    /// Sends from a thread that is not a shard; a full queue loses the lines, counted.
    pub fn send_off_shard(&self, chunk: Vec<u8>, lines: u64) {
        if self.send(self.control_queue(), chunk, lines).is_err() {
            self.lost.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// Points the writer at `target` (reopening it, also when it is the same file).
    pub fn retarget(&self, target: Option<AccessLogSpec>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
        self.reopen.store(true, Ordering::Release);
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// At exit (the shards have stopped and handed over their last lines): waits up to
    /// `timeout` for the writer to write everything queued.
    pub fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + timeout;
        while !self.closed.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts the writer thread. Errors opening the file are reported on stderr (once per
    /// open attempt); lines that cannot be written are dropped.
    pub fn start_writer(self: &Arc<Self>) -> std::io::Result<()> {
        let pipe = self.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || pipe.write_forever())
            .map(|_| ())
    }

    fn write_forever(&self) {
        let mut sink: Option<Box<dyn Write + Send>> = None;
        // Quiet spells back off from WRITER_IDLE to WRITER_IDLE_MAX: an idle gateway should
        // not wake a thread 200 times a second; the first chunk brings the short wait back.
        let mut idle = WRITER_IDLE;
        loop {
            if self.reopen.swap(false, Ordering::AcqRel) {
                if let Some(mut old) = sink.take() {
                    let _ = old.flush();
                }
                sink = self.open();
            }
            let mut wrote = false;
            for queue in &self.queues {
                while let Some((chunk, lines)) = queue.pop() {
                    wrote = true;
                    self.write_chunk(sink.as_mut(), &chunk, lines);
                }
            }
            if wrote {
                idle = WRITER_IDLE;
                if let Some(out) = sink.as_mut() {
                    let _ = out.flush();
                }
            } else if self.closing.load(Ordering::Acquire) {
                self.closed.store(true, Ordering::Release);
                return;
            } else {
                std::thread::sleep(idle);
                idle = (idle * 2).min(WRITER_IDLE_MAX);
            }
        }
    }

    fn write_chunk(&self, sink: Option<&mut Box<dyn Write + Send>>, chunk: &[u8], lines: u64) {
        let Some(out) = sink else {
            self.lost.fetch_add(lines, Ordering::Relaxed);
            return;
        };
        match out.write_all(chunk) {
            Ok(()) => {
                self.written.fetch_add(lines, Ordering::Relaxed);
                self.write_error_reported.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                self.lost.fetch_add(lines, Ordering::Relaxed);
                if !self.write_error_reported.swap(true, Ordering::Relaxed) {
                    super::warn(&format!(
                        "{}.path: write failed: {e}; lines are dropped and counted",
                        self.key
                    ));
                }
            }
        }
    }

    fn open(&self) -> Option<Box<dyn Write + Send>> {
        let target = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        match &target.file {
            None => Some(Box::new(std::io::stdout())),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                // Unbuffered: chunks are already batches, and a failed write must be seen (and
                // its lines counted) at once, not at a later flush.
                Ok(f) => Some(Box::new(f)),
                Err(e) => {
                    super::warn(&format!(
                        "{}.path: cannot open {}: {e}; lines are dropped (and counted) until it can be opened (SIGUSR1 or a reload retries)",
                        self.key,
                        path.display()
                    ));
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a [u8], status: u16) -> Line<'a> {
        Line {
            unix_ms: 1_764_564_720_123,
            request_id: b"rid\"1",
            client_ip: "::ffff:10.0.0.9".parse().unwrap(),
            method: b"GET",
            host: b"api.example.com",
            path,
            status,
            bytes_in: 70,
            bytes_out: 512,
            duration: Some(Duration::from_micros(1500)),
            route: Some("api"),
            upstream: Some("u"),
            target: Some("127.0.0.1:9001"),
            consumer: None,
            tls: true,
            cache: None,
        }
    }

    #[test]
    fn a_json_line_is_one_valid_object_with_the_design_fields() {
        let mut out = Vec::new();
        line(b"/a\n\"b\xff", 0).push(AccessLogFormat::Json, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "2025-12-01T04:52:00.123Z");
        assert_eq!(v["status"], 499, "a client that got nothing is 499");
        assert_eq!(v["path"], "/a\n\"b\u{ff}");
        assert_eq!(v["client_ip"], "10.0.0.9");
        assert_eq!(v["request_id"], "rid\"1");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["consumer"], serde_json::Value::Null);
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
            assert!(v.get(field).is_some(), "{field} missing");
        }
    }

    #[test]
    fn a_combined_line_is_nginx_shaped() {
        let mut out = Vec::new();
        line(b"/x y", 200).push(AccessLogFormat::Combined, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.9 - - [01/Dec/2025:04:52:00 +0000] \"GET /x\\x20y HTTP/1.1\" 200 512 \"-\" \"-\"\n"
        );
    }

    #[test]
    fn hand_written_numbers_and_addresses_match_display() {
        for n in [0u64, 7, 10, 99, 1000, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::7:0:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (1_500, "1.500"),
            (12_345_678, "12345.678"),
        ] {
            let mut out = Vec::new();
            push_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn every_byte_survives_a_json_string() {
        let all: Vec<u8> = (0..=255u8).chain(*b"plain tail").collect();
        let mut out = Vec::new();
        push_json_string(&mut out, &all);
        assert!(
            out.iter().all(|b| (0x20..0x7f).contains(b)),
            "printable ASCII only"
        );
        let back: String = serde_json::from_slice(&out).unwrap();
        let expected: String = all.iter().map(|&b| char::from(b)).collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn names_from_the_config_keep_their_characters() {
        let mut out = Vec::new();
        push_json_text(&mut out, "café \"x\"\n");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "café \"x\"\n");
    }
}
