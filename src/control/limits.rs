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
use crate::gossip::usage::{FROM_CLUSTER, PolicyUsage, Usage, UsageBatch};
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

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("limit-sync".into())
        .spawn(move || Sync::new().run(&plane))
        .map(|_| ())
}

struct Sync {
    node: String,
    conn: Option<(Vec<u8>, redis::Connection)>,
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
                let (length_us, gcra) = if policy.entries.first().is_some_and(|u| u.window == 0) {
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
        self.connect(url)?;
        let now = Instant::now();
        self.seen
            .retain(|_, s| now.duration_since(s.last_used) < WATCH_FOR);
        let mut ids: Vec<(CounterId, i64, u64, bool)> = self
            .pending
            .iter()
            .map(|(id, &(n, period, gcra))| (id.clone(), n, period, gcra))
            .collect();
        for (id, s) in &self.seen {
            if !self.pending.contains_key(id) {
                ids.push((id.clone(), 0, s.period_us, s.gcra));
            }
        }
        let now_ms = crate::observe::unix_ms();
        let mut pipe = redis::pipe();
        for (id, n, period_us, _) in &ids {
            let key = format!("ringgate:rl:{}:{:016x}:{}", id.policy, id.key, id.window);
            let ttl_ms = (2 * period_us / 1000).max(1000);
            pipe.cmd("INCRBY").arg(&key).arg(*n);
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        }
        let stale = now_ms.saturating_sub(3 * (interval.as_millis() as u64).max(1000));
        pipe.cmd("ZADD")
            .arg(NODES_KEY)
            .arg(now_ms)
            .arg(&self.node)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg(0)
            .arg(stale)
            .ignore();
        pipe.cmd("ZCARD").arg(NODES_KEY);
        let Some((_, conn)) = &mut self.conn else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no connection",
            )));
        };
        let mut replies: Vec<i64> = pipe.query(conn)?;
        self.nodes = replies.pop().unwrap_or(1).max(1) as u64;
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

    fn connect(&mut self, url: &[u8]) -> redis::RedisResult<()> {
        if self.conn.as_ref().is_some_and(|(u, _)| u != url) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let text = std::str::from_utf8(url).map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "not UTF-8"))
            })?;
            let conn = redis::Client::open(text)?.get_connection_with_timeout(TIMEOUT)?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            conn.set_write_timeout(Some(TIMEOUT))?;
            self.conn = Some((url.to_vec(), conn));
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
