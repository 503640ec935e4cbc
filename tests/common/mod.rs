//! Test helpers: the real `ringgate` binary on free loopback ports, small blocking origins that
//! record what reaches them, and a raw HTTP/1.1 client.
#![allow(dead_code)]

pub mod hostile;
pub mod pki;
pub mod reloadable;

use ringgate::http::chunked::ChunkedDecoder;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

/// A port that was free a moment ago (the OS picks it), never handed out twice in this test
/// process: tests run in parallel, and the gateway binds with `SO_REUSEPORT`, so two tests
/// given the same port would both bind it and silently share its connections.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringgate-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A child process killed (by PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    /// Waits for exit up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the ringgate binary with `args`, stdout/stderr to files in `dir`.
pub fn spawn_bin(dir: &std::path::Path, args: &[&str]) -> Proc {
    spawn_bin_from(dir, None, args)
}

/// [`spawn_bin`] with the process's working directory set (for relative `--config` paths).
pub fn spawn_bin_from(dir: &std::path::Path, cwd: Option<&std::path::Path>, args: &[&str]) -> Proc {
    let stderr_path = dir.join("stderr.log");
    let mut command = Command::new(BIN);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let child = command
        .args(args)
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("stdout.log")).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&stderr_path).expect("stderr file"),
        ))
        .spawn()
        .expect("spawn ringgate");
    Proc { child, stderr_path }
}

/// The gateway running on a config; `listen` is its first listener.
pub struct Gateway {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub dir: PathBuf,
}

impl Gateway {
    /// Starts `ringgate run` on `config` (TOML, may use `{listen}` for a free port).
    pub fn start(config: &str) -> Gateway {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = config.replace("{listen}", &listen.to_string());
        let dir = temp_dir("gw");
        let path = dir.join("ringgate.toml");
        std::fs::write(&path, config).expect("write config");
        let proc = spawn_bin(&dir, &["run", "--config", path.to_str().unwrap()]);
        let mut gw = Gateway { proc, listen, dir };
        if !wait_for_port(listen, Duration::from_secs(15)) {
            let code = gw.proc.wait_exit(Duration::from_millis(100));
            panic!(
                "gateway did not start (exit {code:?}): {}",
                gw.proc.stderr()
            );
        }
        gw
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.listen).expect("connect to gateway");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// One request on a new connection.
    pub fn request(&self, raw: &str) -> Response {
        let mut s = self.connect();
        s.write_all(raw.as_bytes()).unwrap();
        let mut reader = ResponseReader::default();
        reader.read(&mut s, raw.starts_with("HEAD "))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        ))
    }
}

/// Sends raw bytes on a new connection and reads until the gateway closes it; returns
/// everything it answered.
pub fn exchange_raw(gw: &Gateway, raw: &[u8]) -> String {
    let mut s = gw.connect();
    let _ = s.write_all(raw);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

/// The status code of a raw response (0 when there is none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The gateway config header every test shares: two shards, one listener.
pub fn base_config() -> String {
    "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n[[listeners]]\nname = \"main\"\nbind = \"{listen}\"\n\n"
        .to_string()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads responses from a stream, keeping bytes that belong to the next one.
#[derive(Default)]
pub struct ResponseReader {
    buf: Vec<u8>,
}

impl ResponseReader {
    fn fill(&mut self, s: &mut impl Read) -> usize {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one full response (head and body). Panics if the connection ends first.
    pub fn read(&mut self, s: &mut impl Read, head_request: bool) -> Response {
        self.try_read(s, head_request).unwrap_or_else(|| {
            panic!(
                "connection ended before a full response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    pub fn try_read(&mut self, s: &mut impl Read, head_request: bool) -> Option<Response> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill(s) == 0 {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut body = Vec::new();
        if head_request || status < 200 || status == 204 || status == 304 {
        } else if chunked {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let step = decoder.decode(&self.buf).expect("valid chunked body");
                body.extend_from_slice(&self.buf[step.data.clone()]);
                self.buf.drain(..step.consumed);
                if decoder.is_done() {
                    break;
                }
                if step.consumed == 0 && self.fill(s) == 0 {
                    return None;
                }
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().ok()?;
            while self.buf.len() < len {
                if self.fill(s) == 0 {
                    return None;
                }
            }
            body = self.buf.drain(..len).collect();
        } else {
            while self.fill(s) > 0 {}
            body = std::mem::take(&mut self.buf);
        }
        Some(Response {
            status,
            head,
            headers,
            body,
            chunked,
        })
    }

    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// A request as an origin received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Which connection (1-based, in accept order) carried it.
    pub connection: usize,
    /// Position of the request on its connection (0-based).
    pub index_on_connection: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
    pub fn headers_named(&self, name: &str) -> usize {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .count()
    }
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }
}

/// What an origin does with a request.
pub enum Action {
    /// Writes these raw bytes (a full response), keeps the connection.
    Raw(Vec<u8>),
    /// Writes these raw bytes, then closes (for close-delimited bodies).
    RawThenClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Never answers (holds the connection until the origin stops).
    Hang,
}

/// `200 OK` with a body and Content-Length.
pub fn ok(body: &[u8]) -> Action {
    let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    Action::Raw(out)
}

type Handler = dyn Fn(&Received) -> Action + Send + Sync;

/// A blocking origin on a free port that records every request it receives.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Connections that ended (the peer closed, or the handler ended them).
    pub closed: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    pub fn start(handler: impl Fn(&Received) -> Action + Send + Sync + 'static) -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// An origin on this address (another loopback address, a chosen port).
    pub fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Received) -> Action + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind(addr).expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let origin = Origin {
            addr,
            connections: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicUsize::new(0)),
            received: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let (connections, closed, received, stop) = (
            origin.connections.clone(),
            origin.closed.clone(),
            origin.received.clone(),
            origin.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let id = connections.fetch_add(1, Ordering::AcqRel) + 1;
                let (handler, received, stop) = (handler.clone(), received.clone(), stop.clone());
                let closed = closed.clone();
                std::thread::spawn(move || {
                    serve_origin_conn(stream, id, &*handler, &received, &stop);
                    closed.fetch_add(1, Ordering::AcqRel);
                });
            }
        });
        origin
    }

    /// The default origin: answers `200` with `path=<request path>` as the body.
    pub fn echo_path() -> Origin {
        Origin::start(|r| {
            let path = r.request_line().split(' ').nth(1).unwrap_or("").to_string();
            ok(format!("path={path}").as_bytes())
        })
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Connections that are still open.
    pub fn open_count(&self) -> usize {
        self.connection_count() - self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_origin_conn(
    mut s: TcpStream,
    id: usize,
    handler: &Handler,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut index = 0;
    loop {
        let Some(req) = read_request(&mut s, &mut buf, stop) else {
            return;
        };
        let req = Received {
            connection: id,
            index_on_connection: index,
            ..req
        };
        index += 1;
        received.lock().unwrap().push(req.clone());
        match handler(&req) {
            Action::Raw(bytes) => {
                if s.write_all(&bytes).is_err() {
                    return;
                }
            }
            Action::RawThenClose(bytes) => {
                let _ = s.write_all(&bytes);
                return;
            }
            Action::Close => return,
            Action::Hang => {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        }
    }
}

/// Reads more into `buf`; `false` when the peer closed or the origin is stopping.
fn fill_origin(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> bool {
    let mut chunk = [0u8; 65536];
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
}

fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Received> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if !fill_origin(s, buf, stop) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut req = Received {
        head,
        body: Vec::new(),
        chunked: false,
        connection: 0,
        index_on_connection: 0,
    };
    if req.header("transfer-encoding").is_some() {
        req.chunked = true;
        let mut decoder = ChunkedDecoder::new();
        loop {
            let step = decoder.decode(buf).ok()?;
            req.body.extend_from_slice(&buf[step.data.clone()]);
            buf.drain(..step.consumed);
            if decoder.is_done() {
                break;
            }
            if step.consumed == 0 && !fill_origin(s, buf, stop) {
                return None;
            }
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().ok()?;
        while buf.len() < len {
            if !fill_origin(s, buf, stop) {
                return None;
            }
        }
        req.body = buf.drain(..len).collect();
    }
    Some(req)
}

/// The value of one series (`name{labels}` as written) from admin `/metrics`; 0 if absent.
pub fn admin_metric(admin: SocketAddr, series: &str) -> u64 {
    let mut m = TcpStream::connect(admin).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    let _ = m.read_to_string(&mut all);
    all.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `ringgate keygen --consumer CONSUMER --id ID`: (the key, the `api_keys = [...]` line).
pub fn keygen(consumer: &str, id: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["keygen", "--consumer", consumer, "--id", id])
        .output()
        .expect("run keygen");
    let text = String::from_utf8(out.stdout).expect("keygen prints text");
    let key = text
        .lines()
        .nth(1)
        .expect("the key line")
        .trim()
        .to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("api_keys"))
        .expect("the config line")
        .to_string();
    (key, line)
}
