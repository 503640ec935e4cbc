//! Upstreams as one shard sees them: target choice (round robin, smooth weighted, random,
//! least connections, power of two choices over EWMA latency), health (in [`health`]: passive
//! ejection, active probes, gossip), circuit breaking, the retry budget, and keep-alive
//! connection pools per target.
//!
//! Owns shard-local state (`Cell`/`RefCell`) plus this shard's row of the [`Cluster`] views
//! (atomics written only by this shard, read by the admin thread). It must not parse HTTP:
//! the request path decides whether a connection is clean enough to pool and how an
//! exchange went.

pub mod attempt;
pub mod health;
pub mod probe;

pub use health::{Cluster, Outcome, ShardHealth, TargetView};

use crate::config::{Balance, Snapshot, UpstreamSpec};
use crate::gossip::{AdminState, now_ms};
use crate::http::io::{BufConn, BufPool};
use crate::observe::metrics::TargetMetrics;
use crate::tls::{ConnRead, ConnWrite};
use monoio::io::Splitable;
use monoio::net::TcpStream;
use monoio::time::Instant;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

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

/// One upstream as one config runs it on this shard. Its parts live behind `Rc`s keyed by
/// name, so a reload that keeps the upstream's name keeps its counters and retry budget,
/// and keeps each target's pool and weights while the target's address and TLS stay.
struct Group {
    shared: Rc<GroupState>,
    targets: Vec<Rc<TargetLocal>>,
    /// Each target's metric series (by upstream and target name, across reloads).
    metrics: Vec<Arc<TargetMetrics>>,
}

/// What survives a reload for an unchanged upstream name.
#[derive(Default)]
struct GroupState {
    next: Cell<usize>,
    /// Requests in flight to this upstream on this shard (circuit breaking).
    in_flight: Cell<usize>,
    /// Connections being opened (circuit breaking).
    pending: Cell<usize>,
    budget: RetryBudget,
}

/// What survives a reload for an unchanged (upstream, target, connection settings).
#[derive(Default)]
struct TargetLocal {
    /// Smooth weighted round robin's running weight.
    current: Cell<i64>,
    idle: RefCell<Vec<Idle>>,
}

/// Retries allowed over a sliding 10 s window (two 5 s buckets): `percent` of requests plus
/// a floor, per upstream per shard.
#[derive(Default)]
struct RetryBudget {
    bucket_start_ms: Cell<u64>,
    requests: [Cell<u32>; 2],
    retries: [Cell<u32>; 2],
}

const BUDGET_BUCKET_MS: u64 = 5_000;

impl RetryBudget {
    fn roll(&self, now: u64) {
        let start = self.bucket_start_ms.get();
        if now >= start + 2 * BUDGET_BUCKET_MS {
            for b in 0..2 {
                self.requests[b].set(0);
                self.retries[b].set(0);
            }
            self.bucket_start_ms.set(now);
        } else if now >= start + BUDGET_BUCKET_MS {
            self.requests[1].set(self.requests[0].get());
            self.retries[1].set(self.retries[0].get());
            self.requests[0].set(0);
            self.retries[0].set(0);
            self.bucket_start_ms.set(start + BUDGET_BUCKET_MS);
        }
    }

    fn count_request(&self, now: u64) {
        self.roll(now);
        self.requests[0].set(self.requests[0].get().saturating_add(1));
    }

    fn try_spend(&self, now: u64, percent: u32, floor: u32) -> bool {
        self.roll(now);
        let requests = u64::from(self.requests[0].get()) + u64::from(self.requests[1].get());
        let retries = u64::from(self.retries[0].get()) + u64::from(self.retries[1].get());
        let allowed = u64::from(floor) + requests * u64::from(percent) / 100;
        if retries < allowed {
            self.retries[0].set(self.retries[0].get().saturating_add(1));
            true
        } else {
            false
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream connect timed out")]
    TimedOut,
    #[error("upstream connect failed: {0}")]
    Failed(std::io::Error),
    #[error("upstream {0}")]
    Tls(crate::tls::HandshakeError),
    #[error("too many connections being opened to the upstream (max_pending)")]
    Overloaded,
}

impl ConnectError {
    /// What to show for it in a target's state.
    pub fn fault(&self) -> crate::gossip::Fault {
        use crate::gossip::Fault;
        match self {
            ConnectError::TimedOut => Fault::ConnectTimedOut,
            ConnectError::Failed(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Fault::ConnectRefused
            }
            ConnectError::Failed(_) | ConnectError::Overloaded => Fault::ConnectFailed,
            ConnectError::Tls(_) => Fault::Tls,
        }
    }
}

/// Why no target was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every target is unhealthy or ejected (and `panic_mode` is off).
    NoneHealthy,
    /// Every usable target was already tried for this request.
    Exhausted,
}

/// The upstreams of one config as one shard runs them (target choice, pools, circuit
/// breaking). A reload builds the next one from this one with [`ShardUpstreams::rebuild`];
/// an exchange keeps the one it started with.
pub struct ShardUpstreams {
    snapshot: Arc<Snapshot>,
    groups: Vec<Group>,
    parts: Rc<ShardParts>,
}

/// The shard-wide parts every config's upstreams share.
struct ShardParts {
    bufs: Rc<BufPool>,
    cluster: Arc<Cluster>,
    shard: usize,
    rng: Cell<u64>,
}

/// Capacity of an upstream connection's read buffer (response heads must fit in it).
pub const UPSTREAM_BUF: usize = 64 * 1024;

/// What ties a request to a target: a valid sticky cookie, or a consistent-hash key.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affinity {
    pub sticky: Option<usize>,
    pub hash: Option<u64>,
}

/// Targets already tried by one request (bit i: target i; upstreams beyond 64 targets reuse
/// bits, which only makes a retry less picky).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, target: usize) {
        self.0 |= 1 << (target % 64);
    }
    fn has(&self, target: usize) -> bool {
        self.0 & (1 << (target % 64)) != 0
    }
}

impl ShardUpstreams {
    pub fn new(
        snapshot: Arc<Snapshot>,
        bufs: Rc<BufPool>,
        cluster: Arc<Cluster>,
        shard: usize,
        seed: u64,
    ) -> Self {
        let parts = Rc::new(ShardParts {
            bufs,
            cluster,
            shard,
            rng: Cell::new(seed | 1),
        });
        let empty = ShardUpstreams {
            snapshot: snapshot.clone(),
            groups: Vec::new(),
            parts,
        };
        empty.rebuild(snapshot)
    }

    /// The upstreams of `snapshot`, keeping this config's state for every unchanged name:
    /// counters and retry budget per upstream name; pool and weight per target while its
    /// address and connection settings are the same. What is not carried over closes when
    /// the last exchange still using this config ends.
    pub fn rebuild(&self, snapshot: Arc<Snapshot>) -> ShardUpstreams {
        let groups = snapshot
            .upstreams
            .iter()
            .map(|spec| {
                let old = self
                    .snapshot
                    .upstreams
                    .iter()
                    .zip(&self.groups)
                    .find(|(o, _)| o.name == spec.name);
                let same_connections = old.filter(|(o, _)| o.connection_key == spec.connection_key);
                let series = &self.parts.cluster.shard_metrics[self.parts.shard];
                Group {
                    metrics: spec
                        .targets
                        .iter()
                        .map(|t| series.target(&spec.name, &t.label))
                        .collect(),
                    shared: old.map_or_else(Rc::default, |(_, g)| g.shared.clone()),
                    targets: spec
                        .targets
                        .iter()
                        .map(|t| {
                            same_connections
                                .and_then(|(o, g)| {
                                    let k = o
                                        .targets
                                        .iter()
                                        .position(|ot| ot.label == t.label && ot.addr == t.addr)?;
                                    g.targets.get(k).cloned()
                                })
                                .unwrap_or_default()
                        })
                        .collect(),
                }
            })
            .collect();
        ShardUpstreams {
            snapshot,
            groups,
            parts: self.parts.clone(),
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    fn spec(&self, upstream: usize) -> &UpstreamSpec {
        &self.snapshot.upstreams[upstream]
    }

    pub fn health(&self) -> ShardHealth<'_> {
        ShardHealth {
            shard: self.parts.shard,
            cluster: &self.parts.cluster,
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.parts.cluster
    }

    pub fn view(&self, upstream: usize, target: usize) -> &TargetView {
        &self.parts.cluster.views[self.parts.shard][self.spec(upstream).targets[target].slot]
    }

    fn random(&self) -> u64 {
        // xorshift64*: shard-local, no syscalls; one generator per shard, across configs
        let rng = &self.parts.rng;
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random duration in `0..=max_ms` milliseconds (retry backoff, probe jitter).
    pub fn jitter_ms(&self, max_ms: u64) -> u64 {
        if max_ms == 0 {
            0
        } else {
            self.random() % (max_ms + 1)
        }
    }

    /// Whether this upstream can take another request on this shard (`max_requests`).
    pub fn has_capacity(&self, upstream: usize) -> bool {
        self.groups[upstream].shared.in_flight.get() < self.spec(upstream).max_requests
    }

    /// Counts a request against the retry budget's denominator.
    pub fn count_request(&self, upstream: usize) {
        self.groups[upstream].shared.budget.count_request(now_ms());
    }

    /// Takes one retry from the budget, if any is left.
    pub fn try_retry(&self, upstream: usize) -> bool {
        let spec = self.spec(upstream);
        self.groups[upstream].shared.budget.try_spend(
            now_ms(),
            spec.retry_budget_percent,
            spec.retry_budget_min,
        )
    }

    /// Picks the target for the next request to `upstream`, skipping unhealthy, ejected and
    /// already-tried targets; a sticky cookie or hash key is honoured while its target is
    /// usable. With every target down, `panic_mode` ignores health.
    pub fn pick(
        &self,
        upstream: usize,
        tried: Tried,
        affinity: &Affinity,
    ) -> Result<usize, PickError> {
        let now = now_ms();
        let n = self.spec(upstream).targets.len();
        // A draining target still takes what its sticky cookie pins to it.
        if let Some(t) = affinity.sticky
            && t < n
            && !tried.has(t)
            && self.view(upstream, t).admin() == AdminState::Draining
            && self.view(upstream, t).healthy(now)
        {
            return Ok(t);
        }
        let healthy = |t: usize| !tried.has(t) && self.view(upstream, t).usable(now);
        if let Some(t) = self
            .pick_by_affinity(upstream, affinity, &healthy)
            .or_else(|| self.pick_among(upstream, &healthy))
        {
            return Ok(self.slow_start_filter(upstream, t, tried, &healthy, now));
        }
        let any_usable = (0..n).any(|t| self.view(upstream, t).usable(now));
        if any_usable {
            return Err(PickError::Exhausted);
        }
        if self.spec(upstream).panic_mode {
            // Health is ignored; what an operator took out stays out.
            let untried =
                |t: usize| !tried.has(t) && self.view(upstream, t).admin() == AdminState::Enabled;
            return self
                .pick_by_affinity(upstream, affinity, &untried)
                .or_else(|| self.pick_among(upstream, &untried))
                .ok_or(PickError::Exhausted);
        }
        Err(PickError::NoneHealthy)
    }

    /// A target still ramping up after coming back keeps a pick with probability
    /// 10 %..100 % (linear over `slow_start`); otherwise one other usable target is picked.
    fn slow_start_filter(
        &self,
        upstream: usize,
        t: usize,
        tried: Tried,
        healthy: &dyn Fn(usize) -> bool,
        now: u64,
    ) -> usize {
        let Some(ramp) = self.spec(upstream).slow_start else {
            return t;
        };
        let since = self.view(upstream, t).usable_since(now);
        let ramp_ms = ramp.as_millis() as u64;
        let elapsed = now.saturating_sub(since);
        if since == 0 || elapsed >= ramp_ms {
            return t;
        }
        let permille = 100 + elapsed * 900 / ramp_ms.max(1);
        if self.random() % 1000 < permille {
            return t;
        }
        let mut others = tried;
        others.add(t);
        let other = |x: usize| !others.has(x) && healthy(x);
        self.pick_among(upstream, &other).unwrap_or(t)
    }

    fn pick_by_affinity(
        &self,
        upstream: usize,
        affinity: &Affinity,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if let Some(t) = affinity.sticky
            && t < self.spec(upstream).targets.len()
            && ok(t)
        {
            return Some(t);
        }
        let hash = affinity.hash?;
        let ring = &self.spec(upstream).ring;
        let start = ring.partition_point(|&(point, _)| point < hash);
        (0..ring.len())
            .map(|i| ring[(start + i) % ring.len()].1)
            .find(|&t| ok(t))
    }

    fn pick_among(&self, upstream: usize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let group = &self.groups[upstream];
        let targets = &self.spec(upstream).targets;
        let n = targets.len();
        match self.spec(upstream).balance {
            // consistent_hash without a key (header or cookie missing) spreads like round robin
            Balance::RoundRobin | Balance::ConsistentHash => {
                let start = group.shared.next.get();
                let t = (0..n).map(|i| (start + i) % n).find(|&t| ok(t))?;
                group.shared.next.set(t + 1);
                Some(t)
            }
            Balance::Weighted => {
                let mut best: Option<usize> = None;
                let mut total = 0i64;
                for (i, t) in targets.iter().enumerate().filter(|&(i, _)| ok(i)) {
                    let c = &group.targets[i].current;
                    c.set(c.get() + i64::from(t.weight));
                    total += i64::from(t.weight);
                    if best.is_none_or(|b| c.get() > group.targets[b].current.get()) {
                        best = Some(i);
                    }
                }
                let best = best?;
                let c = &group.targets[best].current;
                c.set(c.get() - total);
                Some(best)
            }
            Balance::Random => {
                let start = (self.random() % n as u64) as usize;
                (0..n).map(|i| (start + i) % n).find(|&t| ok(t))
            }
            Balance::LeastConn => {
                // rotate the starting point so ties spread instead of piling on target 0
                let start = group.shared.next.get();
                group.shared.next.set(start.wrapping_add(1));
                (0..n)
                    .map(|i| (start + i) % n)
                    .filter(|&t| ok(t))
                    .min_by_key(|&t| self.view(upstream, t).in_flight.load(Relaxed))
            }
            Balance::P2cEwma => {
                // two distinct random candidates (with two targets: always both)
                let a = (self.random() % n as u64) as usize;
                let first = (0..n).map(|i| (a + i) % n).find(|&t| ok(t))?;
                let skip = 1 + (self.random() % (n as u64 - 1).max(1)) as usize;
                let second = (0..n)
                    .map(|i| (first + skip + i) % n)
                    .find(|&t| t != first && ok(t))
                    .unwrap_or(first);
                let cost = |t: usize| {
                    let v = self.view(upstream, t);
                    // unmeasured targets look fast so they get measured
                    v.ewma_us.load(Relaxed).max(1) * (u64::from(v.in_flight.load(Relaxed)) + 1)
                };
                Some(if cost(second) < cost(first) {
                    second
                } else {
                    first
                })
            }
        }
    }

    /// Counts a try at `target` that is followed by another.
    pub fn count_retry(&self, upstream: usize, target: usize) {
        self.groups[upstream].metrics[target].retried.add(1);
    }

    /// Marks a request to `target` as in flight until the returned guard is dropped.
    pub fn begin(&self, upstream: usize, target: usize) -> InFlight<'_> {
        let view = self.view(upstream, target);
        view.in_flight
            .store(view.in_flight.load(Relaxed) + 1, Relaxed);
        let group = &self.groups[upstream].shared;
        group.in_flight.set(group.in_flight.get() + 1);
        InFlight {
            upstreams: self,
            upstream,
            target,
            outcome: Outcome::Neutral,
        }
    }
}

/// A request in flight to a target; dropping it records the outcome.
pub struct InFlight<'a> {
    upstreams: &'a ShardUpstreams,
    upstream: usize,
    target: usize,
    pub outcome: Outcome,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let u = self.upstreams;
        let view = u.view(self.upstream, self.target);
        view.in_flight
            .store(view.in_flight.load(Relaxed).saturating_sub(1), Relaxed);
        let group = &u.groups[self.upstream];
        let shared = &group.shared;
        shared
            .in_flight
            .set(shared.in_flight.get().saturating_sub(1));
        match self.outcome {
            Outcome::Answered { status, .. } => group.metrics[self.target].responses.count(status),
            Outcome::Failed(_) => group.metrics[self.target].failures.add(1),
            Outcome::Neutral => {}
        }
        u.health()
            .record(u.spec(self.upstream), self.target, self.outcome);
    }
}

impl ShardUpstreams {
    /// A pooled connection that is still open and fresh enough, if any.
    pub fn checkout_idle(&self, upstream: usize, target: usize) -> Option<UpstreamConn> {
        let idle_timeout = self.spec(upstream).idle_timeout;
        let mut list = self.groups[upstream].targets[target].idle.borrow_mut();
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout
                && !idle.reader.has_pending()
                && origin_still_open(idle.fd)
            {
                return Some(UpstreamConn {
                    reader: BufConn::new(idle.reader, idle.buf),
                    writer: idle.writer,
                    reused: true,
                    fd: idle.fd,
                });
            }
            self.parts.bufs.give(idle.buf);
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
        let group = &self.groups[upstream].shared;
        if group.pending.get() >= spec.max_pending {
            return Err(ConnectError::Overloaded);
        }
        group.pending.set(group.pending.get() + 1);
        let _pending = scopeguard(|| group.pending.set(group.pending.get() - 1));
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
            let (r, w) = crate::tls::handshake(stream, session, false, Vec::new())
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
            reader: BufConn::new(reader, self.parts.bufs.take(UPSTREAM_BUF)),
            writer,
            reused: false,
            fd,
        })
    }

    /// Returns a connection whose last response was fully read and framed, for reuse.
    pub fn checkin(&self, upstream: usize, target: usize, conn: UpstreamConn) {
        let max_idle = self.spec(upstream).max_idle_connections;
        // Bytes after a complete response (buffered, or still inside TLS), or an operation
        // cancelled mid-way: the stream position is not where the next response starts.
        if !conn.reader.buffered().is_empty()
            || conn.reader.lost_bytes()
            || conn.reader.io.has_pending()
        {
            return;
        }
        let (reader, buf) = conn.reader.into_parts();
        let mut list = self.groups[upstream].targets[target].idle.borrow_mut();
        if list.len() < max_idle {
            list.push(Idle {
                reader,
                writer: conn.writer,
                fd: conn.fd,
                buf,
                since: Instant::now(),
            });
        } else {
            self.parts.bufs.give(buf);
        }
    }

    /// Closes pooled connections idle longer than their upstream's `idle_timeout` (they would
    /// only be found stale at the next checkout, holding file descriptors until then).
    pub fn close_stale(&self) {
        for (upstream, group) in self.groups.iter().enumerate() {
            let idle_timeout = self.spec(upstream).idle_timeout;
            for target in &group.targets {
                target.idle.borrow_mut().retain_mut(|idle| {
                    let fresh = idle.since.elapsed() < idle_timeout;
                    if !fresh {
                        self.parts.bufs.give(std::mem::take(&mut idle.buf));
                    }
                    fresh
                });
            }
        }
    }

    /// Closes every pooled connection (on drain).
    pub fn clear(&self) {
        for group in &self.groups {
            for target in &group.targets {
                for idle in target.idle.borrow_mut().drain(..) {
                    self.parts.bufs.give(idle.buf);
                }
            }
        }
    }
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
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
        let snapshot = Arc::new(load_str(Path::new("test.toml"), &text).unwrap());
        let cluster = Arc::new(Cluster::new(64, 1));
        ShardUpstreams::new(snapshot, Rc::new(BufPool::new(4)), cluster, 0, 42)
    }

    #[test]
    fn round_robin_cycles() {
        let u = upstreams(
            "round_robin",
            r#"["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#,
        );
        let picks: Vec<usize> = (0..6)
            .map(|_| u.pick(0, Tried::default(), &Affinity::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_interleaves_by_weight() {
        let u = upstreams(
            "weighted",
            r#"[{ addr = "127.0.0.1:1", weight = 5 }, "127.0.0.1:2", "127.0.0.1:3"]"#,
        );
        let picks: Vec<usize> = (0..7)
            .map(|_| u.pick(0, Tried::default(), &Affinity::default()).unwrap())
            .collect();
        // nginx's smooth weighted round robin for 5:1:1
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7000 {
            counts[u.pick(0, Tried::default(), &Affinity::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }
}
