//! The cluster sync thread (`scope = "cluster"` rate limits): the only code that talks to
//! Redis. Every `sync_interval` it adds this node's usage (batched by the shards) to one
//! counter per (policy, key, window) in a single pipeline (`INCRBY` + `PEXPIRE`), learns from
//! the totals what the other nodes admitted since the last sync, and sends that to every shard
//! as usage to charge. A heartbeat in a sorted set counts the nodes. Shards never wait on it.
//!
//! When Redis cannot be reached (connect or command timeout: 1 s), shards are told the
//! `on_redis_down` mode (`local`: each node enforces `1 / nodes` of the limit; `open`;
//! `closed`), reconnection backs off from 100 ms to 5 s, and usage admitted meanwhile is not
//! replayed afterwards (each node already enforced its share of it). The Redis URL may hold a
//! password: it is never logged.

use super::reload::ControlPlane;
use crate::config::RedisDown;
use crate::gossip::usage::{FROM_CLUSTER, PolicyUsage, Usage, UsageBatch, UsageKind};
use crate::limit::ClusterMode;
use crate::shard::Command;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Keys whose counters are read back while quiet here (other nodes may be using them).
const WATCH_FOR: Duration = Duration::from_secs(2);
const NODES_KEY: &str = "ringgate:nodes";
/// How long a GCRA policy's Redis counter lives before the next one starts (at least).
const GCRA_COUNTER_US: u64 = 60_000_000;

/// What `/metrics` shows of the sync.
#[derive(Default)]
pub struct SyncState {
    pub up: AtomicBool,
    pub nodes: AtomicU64,
}

/// One Redis counter: a policy's key in one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CounterId {
    policy: Arc<str>,
    key: u64,
    window: u64,
}

/// What this node knows of a counter.
struct Seen {
    /// The total Redis returned last time.
    total: i64,
    period_us: u64,
    gcra: bool,
    last_used: Instant,
}

impl Seen {
    fn remember_for(&self) -> Duration {
        if self.gcra {
            WATCH_FOR
        } else {
            Duration::from_micros(self.period_us) + WATCH_FOR
        }
    }
}

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("limit-sync".into())
        .spawn(move || Sync::new().run(&plane))
        .map(|_| ())
}

struct Sync {
    node: String,
    conn: Option<(Vec<u8>, Link)>,
    /// This node's usage since the last successful sync.
    /// (requests, counter length, GCRA) per counter.
    pending: HashMap<CounterId, (i64, u64, bool)>,
    seen: HashMap<CounterId, Seen>,
    retry_at: Instant,
    backoff: Duration,
    mode: Option<ClusterMode>,
    nodes: u64,
}

impl Sync {
    fn new() -> Sync {
        Sync {
            node: format!(
                "{:016x}{:016x}",
                crate::http::random_seed(),
                crate::http::random_seed()
            ),
            conn: None,
            pending: HashMap::new(),
            seen: HashMap::new(),
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            mode: None,
            nodes: 1,
        }
    }

    fn run(mut self, plane: &ControlPlane) {
        loop {
            if crate::shard::DRAIN.load(Ordering::Acquire) {
                return;
            }
            let started = Instant::now();
            let snapshot = plane.current().snapshot;
            let Some(cluster) = &snapshot.cluster else {
                while plane.cluster.usage.receive_for_cluster().is_some() {}
                self.conn = None;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            self.gather(plane);
            if started >= self.retry_at {
                match self.sync(cluster.redis.expose(), cluster.sync_interval) {
                    Ok(others) => {
                        self.backoff = Duration::from_millis(100);
                        plane.limit_sync.up.store(true, Ordering::Relaxed);
                        plane.limit_sync.nodes.store(self.nodes, Ordering::Relaxed);
                        self.tell_mode(plane, ClusterMode::Synced);
                        if let Some(batch) = others {
                            let batch = Arc::new(batch);
                            for shard in 0..plane.cluster.usage.shards() {
                                let _ = plane.cluster.usage.send(shard, batch.clone());
                            }
                        }
                    }
                    Err(e) => {
                        self.conn = None;
                        self.pending.clear();
                        self.retry_at = Instant::now() + self.backoff;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        plane.limit_sync.up.store(false, Ordering::Relaxed);
                        let mode = match cluster.on_redis_down {
                            RedisDown::Local => ClusterMode::Local { nodes: self.nodes },
                            RedisDown::Open => ClusterMode::Open,
                            RedisDown::Closed => ClusterMode::Closed,
                        };
                        if self.mode != Some(mode) {
                            crate::observe::warn(&format!(
                                "cluster rate limits: Redis ({}) cannot be reached ({}); on_redis_down = {:?} until it can",
                                cluster.shown,
                                describe(&e),
                                cluster.on_redis_down
                            ));
                        }
                        self.tell_mode(plane, mode);
                    }
                }
            }
            let spent = started.elapsed();
            std::thread::sleep(cluster.sync_interval.saturating_sub(spent));
        }
    }

    /// Takes the shards' batches of cluster usage into `pending`.
    fn gather(&mut self, plane: &ControlPlane) {
        let now_unix = crate::limit::gcra::Clocks::now().unix_us;
        while let Some(batch) = plane.cluster.usage.receive_for_cluster() {
            for policy in batch.policies.iter().filter(|p| p.cluster) {
                // Fixed windows count in their own window; GCRA usage goes to counters that
                // rotate (so they expire) far more slowly than syncs happen, since what is
                // read back is the difference between two syncs.
                let (length_us, gcra) = if policy.kind == UsageKind::Admissions {
                    (policy.period_us.max(GCRA_COUNTER_US), true)
                } else {
                    (policy.period_us.max(1), false)
                };
                for u in &policy.entries {
                    let window = if gcra { now_unix / length_us } else { u.window };
                    let id = CounterId {
                        policy: policy.name.clone(),
                        key: u.key,
                        window,
                    };
                    let entry = self.pending.entry(id).or_insert((0, length_us, gcra));
                    entry.0 += u.n;
                }
            }
        }
    }

    fn tell_mode(&mut self, plane: &ControlPlane, mode: ClusterMode) {
        if self.mode == Some(mode) {
            return;
        }
        if self.mode.is_some() && mode == ClusterMode::Synced {
            crate::observe::info("cluster rate limits: Redis is reachable again");
        }
        self.mode = Some(mode);
        for shard in 0..plane.mailboxes.len() {
            plane.send(shard, Command::ClusterMode(mode));
        }
    }

    /// One round trip: this node's usage in, the totals and the node count out. Returns
    /// what the other nodes admitted since the last sync.
    fn sync(&mut self, url: &[u8], interval: Duration) -> redis::RedisResult<Option<UsageBatch>> {
        let deadline = Instant::now() + TIMEOUT;
        self.connect(url, deadline)?;
        let now = Instant::now();
        // A quota's counter is remembered until its window ends, so that using it again
        // after a quiet spell charges only what the others added (never this node's own
        // earlier usage twice); a GCRA counter's first reading after a quiet spell is a
        // fresh baseline. Only counters used lately are polled.
        self.seen
            .retain(|_, s| now.duration_since(s.last_used) < s.remember_for());
        let mut ids: Vec<(CounterId, i64, u64, bool)> = self
            .pending
            .iter()
            .map(|(id, &(n, period, gcra))| (id.clone(), n, period, gcra))
            .collect();
        for (id, s) in &self.seen {
            if !self.pending.contains_key(id) && now.duration_since(s.last_used) < WATCH_FOR {
                ids.push((id.clone(), 0, s.period_us, s.gcra));
            }
        }
        let now_ms = crate::observe::unix_ms();
        let mut packed = Vec::with_capacity(ids.len() * 96 + 256);
        for (id, n, period_us, _) in &ids {
            let key = format!("ringgate:rl:{}:{:016x}:{}", id.policy, id.key, id.window);
            let ttl_ms = (2 * period_us / 1000).max(1000);
            packed.extend(redis::cmd("INCRBY").arg(&key).arg(*n).get_packed_command());
            packed.extend(
                redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl_ms)
                    .get_packed_command(),
            );
        }
        let stale = now_ms.saturating_sub(3 * (interval.as_millis() as u64).max(1000));
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(NODES_KEY).arg(now_ms).arg(&self.node);
        packed.extend(zadd.get_packed_command());
        let mut zrem = redis::cmd("ZREMRANGEBYSCORE");
        zrem.arg(NODES_KEY).arg(0).arg(stale);
        packed.extend(zrem.get_packed_command());
        packed.extend(redis::cmd("ZCARD").arg(NODES_KEY).get_packed_command());
        let Some((_, link)) = &mut self.conn else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no connection",
            )));
        };
        let all = link.query(&packed, 2 * ids.len() + 3, deadline)?;
        // INCRBY replies are every other one (PEXPIRE's in between); ZCARD's is last.
        let replies = all[..2 * ids.len()]
            .iter()
            .step_by(2)
            .map(as_int)
            .collect::<redis::RedisResult<Vec<i64>>>()?;
        self.nodes = all.last().map(as_int).transpose()?.unwrap_or(1).max(1) as u64;
        self.pending.clear();
        let mut others: HashMap<Arc<str>, PolicyUsage> = HashMap::new();
        for ((id, n, period_us, gcra), total) in ids.into_iter().zip(replies) {
            let first_sight = !self.seen.contains_key(&id);
            let seen = self.seen.entry(id.clone()).or_insert(Seen {
                total: 0,
                period_us,
                gcra,
                last_used: now,
            });
            // A GCRA counter sums a minute of usage, most of it refilled long ago: the first
            // reading is a baseline, and only what others add after it is charged. A quota's
            // window is what it counts: all of it is charged.
            let elsewhere = if first_sight && gcra {
                0
            } else {
                total - seen.total - n
            };
            seen.total = total;
            if n != 0 {
                seen.last_used = now;
            }
            if elsewhere > 0 {
                others
                    .entry(id.policy.clone())
                    .or_insert_with(|| PolicyUsage {
                        name: id.policy.clone(),
                        kind: if gcra {
                            UsageKind::Admissions
                        } else {
                            UsageKind::WindowCounts
                        },
                        cluster: true,
                        period_us,
                        entries: Vec::new(),
                    })
                    .entries
                    .push(Usage {
                        key: id.key,
                        n: elsewhere,
                        window: id.window,
                    });
            }
        }
        Ok((!others.is_empty()).then(|| UsageBatch {
            from: FROM_CLUSTER,
            policies: others.into_values().collect(),
        }))
    }

    fn connect(&mut self, url: &[u8], deadline: Instant) -> redis::RedisResult<()> {
        if self.conn.as_ref().is_some_and(|(u, _)| u != url) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let text = std::str::from_utf8(url).map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "not UTF-8"))
            })?;
            let link = Link::open(redis::Client::open(text)?.get_connection_info(), deadline)?;
            self.conn = Some((url.to_vec(), link));
        }
        Ok(())
    }
}

/// A Redis error without anything from the URL (it may hold a password).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connection_refusal() {
        "connection refused".to_string()
    } else if e.is_io_error() {
        "I/O error".to_string()
    } else {
        format!("{:?}", e.kind())
    }
}

fn as_int(v: &redis::Value) -> redis::RedisResult<i64> {
    match v {
        redis::Value::Int(n) => Ok(*n),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "Redis answered something other than an integer",
        ))),
    }
}

/// A connection to Redis whose every exchange has one deadline for the whole round trip.
/// (The `redis` crate's own connection applies its timeout to each reply of a pipeline, so a
/// Redis that stops answering mid-pipeline held the sync for one timeout per reply.) The
/// crate still encodes the commands and parses the replies.
struct Link {
    stream: std::net::TcpStream,
    parser: redis::Parser,
}

impl Link {
    fn open(info: &redis::ConnectionInfo, deadline: Instant) -> redis::RedisResult<Link> {
        use std::net::ToSocketAddrs;
        let redis::ConnectionAddr::Tcp(host, port) = &info.addr else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "only redis:// over TCP is supported",
            )));
        };
        let addr = (host.as_str(), *port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no address"))
            })?;
        let stream = std::net::TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
        stream.set_nodelay(true)?;
        let mut link = Link {
            stream,
            parser: redis::Parser::new(),
        };
        let mut hello = Vec::new();
        let mut replies = 0;
        if let Some(password) = &info.redis.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &info.redis.username {
                auth.arg(user);
            }
            auth.arg(password);
            hello.extend(auth.get_packed_command());
            replies += 1;
        }
        if info.redis.db != 0 {
            hello.extend(redis::cmd("SELECT").arg(info.redis.db).get_packed_command());
            replies += 1;
        }
        for reply in link.query(&hello, replies, deadline)? {
            if !matches!(reply, redis::Value::Okay | redis::Value::SimpleString(_)) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::AuthenticationFailed,
                    "AUTH or SELECT refused",
                )));
            }
        }
        Ok(link)
    }

    /// Sends `packed` commands and reads `replies` replies, all before `deadline`.
    fn query(
        &mut self,
        packed: &[u8],
        replies: usize,
        deadline: Instant,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        use std::io::Write;
        if replies == 0 {
            return Ok(Vec::new());
        }
        self.stream.set_write_timeout(Some(remaining(deadline)?))?;
        (&self.stream).write_all(packed)?;
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            let reader = DeadlineReader {
                stream: &self.stream,
                deadline,
            };
            let value = self.parser.parse_value(reader)?;
            if let redis::Value::ServerError(e) = value {
                return Err(redis::RedisError::from(e));
            }
            out.push(value);
        }
        Ok(out)
    }
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        ))
    } else {
        Ok(left)
    }
}

/// Reads that all end by one deadline.
struct DeadlineReader<'a> {
    stream: &'a std::net::TcpStream,
    deadline: Instant,
}

impl std::io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream
            .set_read_timeout(Some(remaining(self.deadline)?))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}
