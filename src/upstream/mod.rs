//! Upstreams as one shard sees them: target choice (round robin, smooth weighted round robin)
//! and keep-alive connection pools per target.
//!
//! Owns shard-local state only (`Cell`/`RefCell`, never shared across threads). It must not
//! parse HTTP: the request path decides whether a connection is clean enough to pool.

use crate::config::{Balance, Snapshot, UpstreamSpec};
use crate::http::io::{BufConn, BufPool};
use crate::tls::{ConnRead, ConnWrite};
use monoio::io::Splitable;
use monoio::net::TcpStream;
use monoio::time::Instant;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

/// A connection to a target, with whether it came from the pool (a reused connection may have
/// been closed by the origin in the meantime, which makes one retry safe).
pub struct UpstreamConn {
    pub reader: BufConn<ConnRead>,
    pub writer: ConnWrite,
    pub reused: bool,
    fd: RawFd,
}

/// Connections are split once, when opened, so a request body can stream up while the
/// response streams down.
struct Idle {
    reader: ConnRead,
    writer: ConnWrite,
    fd: RawFd,
    buf: Vec<u8>,
    since: Instant,
}

struct Group {
    next: Cell<usize>,
    /// Smooth weighted round robin's running weights.
    current: Vec<Cell<i64>>,
    total_weight: i64,
    idle: Vec<RefCell<Vec<Idle>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream connect timed out")]
    TimedOut,
    #[error("upstream connect failed: {0}")]
    Failed(std::io::Error),
    #[error("upstream {0}")]
    Tls(crate::tls::HandshakeError),
}

pub struct ShardUpstreams {
    snapshot: Arc<Snapshot>,
    groups: Vec<Group>,
    bufs: Rc<BufPool>,
}

/// Capacity of an upstream connection's read buffer (response heads must fit in it).
pub const UPSTREAM_BUF: usize = 32 * 1024;

impl ShardUpstreams {
    pub fn new(snapshot: Arc<Snapshot>, bufs: Rc<BufPool>) -> Self {
        let groups = snapshot
            .upstreams
            .iter()
            .map(|u| Group {
                next: Cell::new(0),
                current: u.targets.iter().map(|_| Cell::new(0)).collect(),
                total_weight: u.targets.iter().map(|t| i64::from(t.weight)).sum(),
                idle: u.targets.iter().map(|_| RefCell::new(Vec::new())).collect(),
            })
            .collect();
        ShardUpstreams {
            snapshot,
            groups,
            bufs,
        }
    }

    fn spec(&self, upstream: usize) -> &UpstreamSpec {
        &self.snapshot.upstreams[upstream]
    }

    /// Picks the target for the next request to `upstream`.
    pub fn pick(&self, upstream: usize) -> usize {
        let group = &self.groups[upstream];
        let targets = &self.spec(upstream).targets;
        match self.spec(upstream).balance {
            Balance::RoundRobin => {
                let i = group.next.get() % targets.len();
                group.next.set(i + 1);
                i
            }
            Balance::Weighted => {
                let mut best = 0;
                for (i, t) in targets.iter().enumerate() {
                    let c = &group.current[i];
                    c.set(c.get() + i64::from(t.weight));
                    if c.get() > group.current[best].get() {
                        best = i;
                    }
                }
                let c = &group.current[best];
                c.set(c.get() - group.total_weight);
                best
            }
        }
    }

    /// A pooled connection that is still open and fresh enough, if any.
    pub fn checkout_idle(&self, upstream: usize, target: usize) -> Option<UpstreamConn> {
        let idle_timeout = self.spec(upstream).idle_timeout;
        let mut list = self.groups[upstream].idle[target].borrow_mut();
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout && origin_still_open(idle.fd) {
                return Some(UpstreamConn {
                    reader: BufConn::new(idle.reader, idle.buf),
                    writer: idle.writer,
                    reused: true,
                    fd: idle.fd,
                });
            }
            self.bufs.give(idle.buf);
        }
        None
    }

    /// Opens a new connection (and its TLS session, for TLS upstreams) within the upstream's
    /// `connect_timeout`.
    pub async fn connect(
        &self,
        upstream: usize,
        target: usize,
    ) -> Result<UpstreamConn, ConnectError> {
        let spec = self.spec(upstream);
        let addr = spec.targets[target].addr;
        let opened = monoio::time::timeout(spec.connect_timeout, async {
            let stream = TcpStream::connect_addr(addr)
                .await
                .map_err(ConnectError::Failed)?;
            let _ = stream.set_nodelay(true);
            let fd = stream.as_raw_fd();
            let Some(tls) = &spec.tls else {
                let (r, w) = stream.into_split();
                return Ok((ConnRead::Plain(r), ConnWrite::Plain(w), fd));
            };
            let session =
                rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(|e| ConnectError::Tls(e.into()))?;
            let (r, w) = crate::tls::handshake(stream, session, false)
                .await
                .map_err(ConnectError::Tls)?;
            Ok((ConnRead::Tls(Box::new(r)), ConnWrite::Tls(Box::new(w)), fd))
        })
        .await;
        let (reader, writer, fd) = match opened {
            Err(_) => return Err(ConnectError::TimedOut),
            Ok(result) => result?,
        };
        Ok(UpstreamConn {
            reader: BufConn::new(reader, self.bufs.take(UPSTREAM_BUF)),
            writer,
            reused: false,
            fd,
        })
    }

    /// Returns a connection whose last response was fully read and framed, for reuse.
    pub fn checkin(&self, upstream: usize, target: usize, conn: UpstreamConn) {
        let max_idle = self.spec(upstream).max_idle_connections;
        if !conn.reader.buffered().is_empty() {
            return; // bytes after a complete response: the origin is confused, do not reuse
        }
        let (reader, buf) = conn.reader.into_parts();
        let mut list = self.groups[upstream].idle[target].borrow_mut();
        if list.len() < max_idle {
            list.push(Idle {
                reader,
                writer: conn.writer,
                fd: conn.fd,
                buf,
                since: Instant::now(),
            });
        } else {
            self.bufs.give(buf);
        }
    }

    /// Closes every pooled connection (on drain).
    pub fn clear(&self) {
        for group in &self.groups {
            for list in &group.idle {
                for idle in list.borrow_mut().drain(..) {
                    self.bufs.give(idle.buf);
                }
            }
        }
    }
}

/// A pooled connection the origin closed (or wrote to unasked) reads as EOF or data; an open,
/// quiet one has nothing to read. One non-blocking peek tells them apart.
fn origin_still_open(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which outlives the call.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn upstreams(balance: &str, targets: &str) -> ShardUpstreams {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\nbalance = \"{balance}\"\ntargets = {targets}\n"
        );
        let snapshot = load_str(Path::new("test.toml"), &text).unwrap();
        ShardUpstreams::new(Arc::new(snapshot), Rc::new(BufPool::new(4)))
    }

    #[test]
    fn round_robin_cycles() {
        let u = upstreams(
            "round_robin",
            r#"["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#,
        );
        let picks: Vec<usize> = (0..6).map(|_| u.pick(0)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_interleaves_by_weight() {
        let u = upstreams(
            "weighted",
            r#"[{ addr = "127.0.0.1:1", weight = 5 }, "127.0.0.1:2", "127.0.0.1:3"]"#,
        );
        let picks: Vec<usize> = (0..7).map(|_| u.pick(0)).collect();
        // nginx's smooth weighted round robin for 5:1:1
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7000 {
            counts[u.pick(0)] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }
}
