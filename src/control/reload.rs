//! Hot reload: the control thread reads and validates the file, binds the sockets of new or
//! moved listeners, and hands the new snapshot to every shard's inbox; each shard swaps it in
//! on its own tick. A bad file (or a bind failure) changes nothing: the problems are returned
//! and the running config keeps serving. Never on a request's path.

use crate::config::reload::{SlotMap, carry_sticky_keys, restart_only_changes};
use crate::config::{self, ConfigError, Problem, Snapshot};
use crate::observe;
use crate::shard::{Command, Mailboxes, Reconfigure};
use crate::upstream::Cluster;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a reload waits for every shard to take the new config.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// What a reload was asked by.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Admin(SocketAddr),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Trigger::Signal => f.write_str("SIGHUP"),
            Trigger::Admin(peer) => write!(f, "admin POST /reload from {peer}"),
        }
    }
}

/// The config the process runs, and what it needs to change it. Shared by the control
/// thread (signals) and the admin thread; reloads are serialised by its lock.
pub struct ControlPlane {
    pub cluster: Arc<Cluster>,
    pub mailboxes: Arc<Mailboxes>,
    loaded: Mutex<Loaded>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

struct Loaded {
    snapshot: Arc<Snapshot>,
    generation: u64,
    loaded_unix_ms: u64,
    slots: SlotMap,
}

/// The running config as admin shows it.
pub struct Current {
    pub snapshot: Arc<Snapshot>,
    pub generation: u64,
    pub loaded_unix_ms: u64,
}

/// A reload that went through.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// Shards that had taken it when the reload returned (all of them, unless one was stuck
    /// past [`APPLY_DEADLINE`]; it takes it on its next tick).
    pub shards_applied: usize,
    pub workers: usize,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl ControlPlane {
    /// The plane for a first snapshot: the gossip capacity its slot map allows.
    pub fn new(first: &Arc<Snapshot>) -> ControlPlane {
        let slots = SlotMap::new(first);
        ControlPlane {
            cluster: Arc::new(Cluster::new(slots.capacity(), first.workers)),
            mailboxes: Arc::new(Mailboxes::new(first.workers)),
            loaded: Mutex::new(Loaded {
                snapshot: first.clone(),
                generation: 1,
                loaded_unix_ms: unix_ms(),
                slots,
            }),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // A panic while holding it left `Loaded` whole (it is replaced in one assignment).
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current(&self) -> Current {
        let loaded = self.lock();
        Current {
            snapshot: loaded.snapshot.clone(),
            generation: loaded.generation,
            loaded_unix_ms: loaded.loaded_unix_ms,
        }
    }

    /// Reloads the config file: every problem is returned (and logged) and nothing changes,
    /// or every shard gets the new config.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let started = Instant::now();
        let result = self.try_reload();
        match &result {
            Ok(r) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                observe::info(&format!(
                    "reload ({trigger}): generation {} applied by {}/{} shards in {} ms",
                    r.generation,
                    r.shards_applied,
                    r.workers,
                    started.elapsed().as_millis()
                ));
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                observe::warn(&format!(
                    "reload ({trigger}) refused, the running config keeps serving:\n{e}"
                ));
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, ConfigError> {
        let mut loaded = self.lock();
        let old = loaded.snapshot.clone();
        let refuse = |problems: Vec<Problem>| ConfigError {
            file: old.file.clone(),
            problems,
        };
        if crate::shard::DRAIN.load(Ordering::Acquire) {
            return Err(refuse(vec![Problem {
                key: String::new(),
                line: None,
                message: "the gateway is draining; nothing was reloaded".to_string(),
            }]));
        }
        let mut new = config::load(&old.file)?;
        let problems = restart_only_changes(&old, &new);
        if !problems.is_empty() {
            return Err(refuse(problems));
        }
        carry_sticky_keys(&old, &mut new);
        let entering = loaded
            .slots
            .assign(&old, &mut new)
            .map_err(|p| refuse(vec![p]))?;
        let mut sockets = bind_moved_listeners(&old, &new).map_err(refuse)?;
        for slot in entering {
            self.cluster.reset_slot(slot);
        }
        let snapshot = Arc::new(new);
        let generation = loaded.generation + 1;
        for (shard, sockets) in sockets.drain(..).enumerate() {
            let command = Command::Apply(Box::new(Reconfigure {
                snapshot: snapshot.clone(),
                generation,
                sockets,
            }));
            self.send(shard, command);
        }
        loaded.snapshot = snapshot;
        loaded.generation = generation;
        loaded.loaded_unix_ms = unix_ms();
        let workers = loaded.snapshot.workers;
        drop(loaded);
        Ok(Reloaded {
            generation,
            shards_applied: self.wait_applied(generation),
            workers,
        })
    }

    /// Queues a command, waiting while the shard's inbox is full (it drains every tick).
    fn send(&self, shard: usize, mut command: Command) {
        let deadline = Instant::now() + APPLY_DEADLINE;
        while let Err(back) = self.mailboxes.send(shard, command) {
            if Instant::now() >= deadline {
                observe::warn(&format!(
                    "shard {shard}: inbox full for {} s; this reload skips it",
                    APPLY_DEADLINE.as_secs()
                ));
                return;
            }
            command = back;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every shard serves `generation`; returns how many do.
    fn wait_applied(&self, generation: u64) -> usize {
        let deadline = Instant::now() + APPLY_DEADLINE;
        loop {
            let applied = self
                .cluster
                .shard_stats
                .iter()
                .filter(|s| s.config_generation.load(Ordering::Relaxed) >= generation)
                .count();
            if applied == self.cluster.shard_stats.len() || Instant::now() >= deadline {
                return applied;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The first config's sockets: every listener, for every shard (`result[shard]`).
pub fn bind_all(snapshot: &Snapshot) -> Result<Vec<Vec<(usize, std::net::TcpListener)>>, Problem> {
    let indexes: Vec<usize> = (0..snapshot.listeners.len()).collect();
    bind_listeners(snapshot, &indexes)
}

/// Sockets for the listeners of `new` that `old` does not have under the same name and
/// address, for every shard (`result[shard]`).
fn bind_moved_listeners(
    old: &Snapshot,
    new: &Snapshot,
) -> Result<Vec<Vec<(usize, std::net::TcpListener)>>, Vec<Problem>> {
    let moved: Vec<usize> = new
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            !old.listeners
                .iter()
                .any(|o| o.name == l.name && o.addr == l.addr)
        })
        .map(|(i, _)| i)
        .collect();
    bind_listeners(new, &moved).map_err(|p| vec![p])
}

fn bind_listeners(
    snapshot: &Snapshot,
    indexes: &[usize],
) -> Result<Vec<Vec<(usize, std::net::TcpListener)>>, Problem> {
    let mut per_shard: Vec<Vec<(usize, std::net::TcpListener)>> =
        (0..snapshot.workers).map(|_| Vec::new()).collect();
    for &i in indexes {
        let spec = &snapshot.listeners[i];
        for sockets in per_shard.iter_mut() {
            let socket = bind_reuseport(spec.addr).map_err(|e| Problem {
                key: format!("listeners[{i}].bind"),
                line: spec.bind_line,
                message: format!("cannot bind {}: {e}", spec.addr),
            })?;
            sockets.push((i, socket));
        }
    }
    Ok(per_shard)
}

/// A listening socket in the address's `SO_REUSEPORT` group: each shard has its own, and
/// the kernel spreads new connections over them.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
