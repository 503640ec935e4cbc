//! JWKS over the network: the URL rules and one blocking GET with deadlines and a size
//! bound. Runs only on the control thread's JWKS fetcher, never on a shard.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The whole fetch (connect, TLS, request, response) must finish within this.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(10);
/// A response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;

/// A JWKS URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

/// `https://host[:port]/path`, or `http://` for a loopback host only (keys fetched in the
/// clear could be swapped by anyone on the path).
pub fn parse_url(url: &str) -> Result<UrlParts, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?} must start with https:// (or http:// for a loopback host)"
        ));
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_string()
    };
    if authority.contains('@') || target.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(format!("{url:?}: no user info, spaces or fragment allowed"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or(format!("{url:?}: unclosed [ in host"))?;
            (h.to_string(), after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
        None if https => 443,
        None => 80,
    };
    if host.is_empty() || !crate::http::head::is_valid_authority(host_for_check(&host).as_bytes()) {
        return Err(format!("{url:?}: bad host"));
    }
    if !https && !is_loopback(&host) {
        return Err(format!(
            "{url:?}: plain http is accepted for loopback hosts only; use https"
        ));
    }
    Ok(UrlParts {
        https,
        host,
        port,
        target,
    })
}

fn host_for_check(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// GETs `url` and returns its body (status 200 only, at most `max_bytes`).
pub fn fetch(
    url: &UrlParts,
    tls: Option<&crate::tls::ClientTls>,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", url.host))?;
    let tcp = TcpStream::connect_timeout(&addr, FETCH_DEADLINE)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: ringgate/{}\r\nConnection: close\r\n\r\n",
        url.target,
        host_for_check(&url.host),
        env!("CARGO_PKG_VERSION")
    );
    let limit = MAX_HEAD + max_bytes;
    let raw = match (url.https, tls) {
        (true, Some(tls)) => {
            let session =
                rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(|e| format!("TLS: {e}"))?;
            let mut stream = rustls::StreamOwned::new(session, tcp);
            exchange(&mut stream, &request, limit, started)?
        }
        (true, None) => return Err("https URL without TLS settings".into()),
        (false, _) => {
            let mut stream = tcp;
            exchange(&mut stream, &request, limit, started)?
        }
    };
    body_of(&raw, max_bytes)
}

/// Writes the request and reads until the peer closes, within the deadline and `limit`.
fn exchange<S: Read + Write + AsTcp>(
    stream: &mut S,
    request: &str,
    limit: usize,
    started: Instant,
) -> Result<Vec<u8>, String> {
    let remaining = || {
        FETCH_DEADLINE
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
    };
    let deadline = remaining().ok_or("timed out")?;
    stream
        .tcp()
        .set_write_timeout(Some(deadline))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = remaining().ok_or("timed out reading the response")?;
        stream
            .tcp()
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > limit {
                    return Err("response larger than jwks_max_bytes".into());
                }
                // A server may keep the connection open despite `Connection: close`.
                if is_complete(&raw) {
                    return Ok(raw);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out reading the response".into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A server that closes without close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {
                return Ok(raw);
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

trait AsTcp {
    fn tcp(&self) -> &TcpStream;
}

impl AsTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl AsTcp for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Whether `raw` holds a whole response framed by length or chunks (a response framed by
/// the close is complete only at the close).
fn is_complete(raw: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(raw) else {
        return false;
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").is_some() {
        return raw.ends_with(b"0\r\n\r\n");
    }
    header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
        .is_some_and(|n| raw.len() >= head_len + n)
}

/// The body of a complete `200` response (content-length, chunked, or until close).
fn body_of(raw: &[u8], max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    if response.code != Some(200) {
        return Err(format!("status {}", response.code.unwrap_or(0)));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let rest = &raw[head_len..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let n: usize = std::str::from_utf8(length)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("bad content-length")?;
        rest.get(..n).ok_or("response body cut short")?.to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > max_bytes {
        return Err("response larger than jwks_max_bytes".into());
    }
    Ok(body)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("chunked body cut short")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("chunked body cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback() {
        let ok = parse_url("https://idp.example.com/.well-known/jwks.json").unwrap();
        assert_eq!(
            (ok.https, ok.port, ok.target.as_str()),
            (true, 443, "/.well-known/jwks.json")
        );
        assert_eq!(parse_url("http://127.0.0.1:8080/k").unwrap().port, 8080);
        assert_eq!(parse_url("http://[::1]:81").unwrap().target, "/");
        for bad in [
            "http://idp.example.com/jwks",
            "ftp://x/y",
            "https://user@idp/x",
            "https://idp/x y",
            "https://:443/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(body_of(by_length, 100).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked, 100).unwrap(), b"{}");
        assert!(body_of(b"HTTP/1.1 404 No\r\n\r\n", 100).is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\n\r\nxxxxx", 3).is_err());
    }
}
