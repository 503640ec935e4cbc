//! Hot reload: the control thread reads and validates the file, binds the sockets of new or
//! moved listeners, and hands the new snapshot to every shard's inbox; each shard swaps it in
//! on its own tick. A bad file (or a bind failure) changes nothing: the problems are returned
//! and the running config keeps serving. Never on a request's path.

use crate::config::reload::{SlotMap, carry_sticky_keys, restart_only_changes};
use crate::config::{self, ConfigError, Problem, Snapshot};
use crate::observe;
use crate::shard::{Command, ListenerPlan, Mailboxes, Reconfigure};
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
    /// The running config: held only to read or replace it, never across a reload, so
    /// admin endpoints answer while a slow reload runs.
    loaded: Mutex<Current>,
    /// Serialises reloads; holds what only a reload touches.
    reloading: Mutex<SlotMap>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// When the process started (Unix ms), for `process_start_time_seconds`.
    pub started_unix_ms: u64,
    reloader: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<ReloadRequest>>>,
    signal_pending: std::sync::atomic::AtomicBool,
    /// JWKS fetches by URL (written by the fetcher thread, read by `/metrics`).
    pub jwks_stats: Mutex<std::collections::HashMap<String, super::jwks::FetchStats>>,
    /// The cluster sync thread's view of Redis (read by `/metrics`).
    pub limit_sync: super::limits::SyncState,
}

type ReloadRequest = (
    Trigger,
    Option<std::sync::mpsc::Sender<Result<Reloaded, ConfigError>>>,
);

/// The running config as admin shows it.
#[derive(Clone)]
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
            loaded: Mutex::new(Current {
                snapshot: first.clone(),
                generation: 1,
                loaded_unix_ms: unix_ms(),
            }),
            reloading: Mutex::new(slots),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            started_unix_ms: unix_ms(),
            reloader: std::sync::OnceLock::new(),
            signal_pending: std::sync::atomic::AtomicBool::new(false),
            jwks_stats: Mutex::new(Default::default()),
            limit_sync: Default::default(),
        }
    }

    pub fn current(&self) -> Current {
        // A panic while holding it left it whole (it is replaced in one assignment).
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts the reloader thread: reloads run there, one at a time, never on the signal
    /// thread (a slow file read must not delay SIGTERM) nor on the admin event loop.
    pub fn start_reloader(self: &Arc<Self>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<ReloadRequest>();
        let plane = self.clone();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for (trigger, reply) in rx {
                    if matches!(trigger, Trigger::Signal) {
                        plane.signal_pending.store(false, Ordering::Release);
                    }
                    let result = plane.reload(trigger);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            })?;
        let _ = self.reloader.set(Mutex::new(tx));
        Ok(())
    }

    /// Asks the reloader thread for a reload; the answer comes on the returned channel. A
    /// SIGHUP while another waits is folded into it (both would read the same file).
    pub fn request_reload(
        &self,
        trigger: Trigger,
    ) -> std::sync::mpsc::Receiver<Result<Reloaded, ConfigError>> {
        let (reply, answer) = std::sync::mpsc::channel();
        if matches!(trigger, Trigger::Signal) && self.signal_pending.swap(true, Ordering::AcqRel) {
            return answer;
        }
        if let Some(tx) = self.reloader.get() {
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
            let _ = tx.send((trigger, Some(reply)));
        }
        answer
    }

    /// Reloads the config file: every problem is returned (and logged) and nothing changes,
    /// or every shard gets the new config.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let started = Instant::now();
        let result = self.try_reload();
        let peer = match trigger {
            Trigger::Admin(peer) => Some(peer.ip()),
            Trigger::Signal => None,
        };
        let reason = match &result {
            Ok(r) => format!("applied generation {} ({trigger})", r.generation),
            Err(e) => format!("refused ({trigger}): {e}"),
        };
        crate::observe::audit::Event {
            event: "reload",
            client_ip: peer,
            reason: &reason,
            ..Default::default()
        }
        .record_off_shard(&self.cluster.audit_log);
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
        let mut slots = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        let old = &current.snapshot;
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
        if !old.reloadable {
            return Err(refuse(vec![Problem {
                key: String::new(),
                line: None,
                message: "this config was given on the command line (ringgate proxy, or the built-in demo): there is no file to re-read; restart to change it".to_string(),
            }]));
        }
        let mut new = config::load(&old.file)?;
        keep_resolved_addresses(old, &mut new);
        observe::log::set_format(new.source.server.log_format);
        for line in new.warning_lines() {
            observe::warn(&line);
        }
        let problems = restart_only_changes(old, &new);
        if !problems.is_empty() {
            return Err(refuse(problems));
        }
        carry_sticky_keys(old, &mut new);
        // Slots are committed only when the reload goes through: a refused one takes none.
        let mut planned = slots.clone();
        let entering = planned.assign(old, &mut new).map_err(|p| refuse(vec![p]))?;
        let plans = plan_listeners(old, &new).map_err(refuse)?;
        *slots = planned;
        for slot in entering {
            self.cluster.reset_slot(slot);
        }
        for slot in unprobed_slots(&new) {
            // Health checks were removed: nothing would ever mark the target healthy again.
            self.cluster.clear_unhealthy(slot);
        }
        // Reopened on every reload (a moved file is picked up; a new path applies).
        self.cluster.access_log.retarget(new.access_log.clone());
        self.cluster.audit_log.retarget(new.audit_log.clone());
        let workers = new.workers;
        let moved = moved_slots(old, &new);
        let generation = self.publish(Arc::new(new), plans, &current);
        drop(slots);
        let shards_applied = self.wait_applied(generation);
        self.forget_health_of(&moved);
        Ok(Reloaded {
            generation,
            shards_applied,
            workers,
        })
    }

    /// Hands `snapshot` to every shard as the generation after `current`'s and makes it the
    /// running config. The caller holds the reload lock.
    fn publish(
        &self,
        snapshot: Arc<Snapshot>,
        plans: Vec<Vec<ListenerPlan>>,
        current: &Current,
    ) -> u64 {
        let generation = current.generation + 1;
        for (shard, listeners) in plans.into_iter().enumerate() {
            let command = Command::Apply(Box::new(Reconfigure {
                snapshot: snapshot.clone(),
                generation,
                listeners,
            }));
            self.send(shard, command);
        }
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Current {
            snapshot,
            generation,
            loaded_unix_ms: unix_ms(),
        };
        generation
    }

    /// Targets whose host names now resolve elsewhere ([`super::resolve`]): the running
    /// config with those addresses, applied like a reload that binds nothing. A shard keeps
    /// a target's pool only while its address stays, so the old address's connections close.
    pub fn move_targets(&self, moved: &[super::resolve::Moved]) {
        let slots = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        if crate::shard::DRAIN.load(Ordering::Acquire) {
            return;
        }
        let current = self.current();
        let mut next = (*current.snapshot).clone();
        let mut fresh = Vec::new();
        for m in moved {
            // Only from the address the lookup saw: a reload in between resolved afresh.
            let target = next
                .upstreams
                .iter_mut()
                .filter(|u| u.name == m.upstream)
                .flat_map(|u| u.targets.iter_mut())
                .find(|t| t.label == m.label && t.addr == m.from);
            if let Some(t) = target {
                observe::info(&format!(
                    "upstream {:?} target {}: now {} (was {})",
                    m.upstream, m.label, m.to, m.from
                ));
                t.addr = m.to;
                fresh.push(t.slot);
            }
        }
        if fresh.is_empty() {
            return;
        }
        let keep_every_listener = || {
            let listeners = next.listeners.iter().enumerate();
            listeners
                .map(|(index, l)| ListenerPlan::Keep {
                    index,
                    running_name: l.name.clone(),
                })
                .collect()
        };
        let plans = (0..next.workers).map(|_| keep_every_listener()).collect();
        let generation = self.publish(Arc::new(next), plans, &current);
        drop(slots);
        self.wait_applied(generation);
        self.forget_health_of(&fresh);
    }

    /// Targets now at another address start healthy: after every shard has the new address,
    /// so nothing learnt of the old one lands on the fresh state (a probe still on its way to
    /// the old address gives no verdict).
    fn forget_health_of(&self, slots: &[usize]) {
        for &slot in slots {
            self.cluster.forget_health(slot);
        }
    }

    /// Queues a command, waiting while the shard's inbox is full (it drains every tick): a
    /// shard never skips a config, or it would run one the others have left behind. Only a
    /// drain (the shard stops ticking) ends the wait.
    pub(super) fn send(&self, shard: usize, mut command: Command) {
        let mut warned = false;
        while let Err(back) = self.mailboxes.send(shard, command) {
            if crate::shard::DRAIN.load(Ordering::Acquire) {
                return;
            }
            if !warned {
                observe::warn(&format!(
                    "shard {shard}: its inbox is full (the shard is not ticking); the reload waits"
                ));
                warned = true;
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

/// The first config's listeners: a fresh socket for each, for every shard (`result[shard]`).
pub fn bind_all(snapshot: &Snapshot) -> Result<Vec<Vec<ListenerPlan>>, Problem> {
    let mut per_shard: Vec<Vec<ListenerPlan>> = (0..snapshot.workers).map(|_| Vec::new()).collect();
    for (i, spec) in snapshot.listeners.iter().enumerate() {
        bind_for_every_shard(i, spec, &mut per_shard)?;
    }
    Ok(per_shard)
}

/// What each listener of `new` becomes on every shard (`result[shard]`): the running listener
/// on the same address when there is one under the same name, or under a name `new` no longer
/// has (a rename keeps the socket, so no queued connection is reset); else a fresh socket.
fn plan_listeners(old: &Snapshot, new: &Snapshot) -> Result<Vec<Vec<ListenerPlan>>, Vec<Problem>> {
    let mut per_shard: Vec<Vec<ListenerPlan>> = (0..new.workers).map(|_| Vec::new()).collect();
    let mut claimed: Vec<&str> = Vec::new();
    for (i, spec) in new.listeners.iter().enumerate() {
        let same_name = old
            .listeners
            .iter()
            .find(|o| o.addr == spec.addr && o.name == spec.name);
        let renamed = || {
            old.listeners.iter().find(|o| {
                o.addr == spec.addr
                    && !new.listeners.iter().any(|n| n.name == o.name)
                    && !claimed.contains(&o.name.as_str())
            })
        };
        match same_name.or_else(renamed) {
            Some(kept) => {
                claimed.push(&kept.name);
                for plans in per_shard.iter_mut() {
                    plans.push(ListenerPlan::Keep {
                        index: i,
                        running_name: kept.name.clone(),
                    });
                }
            }
            None => bind_for_every_shard(i, spec, &mut per_shard).map_err(|p| vec![p])?,
        }
    }
    Ok(per_shard)
}

fn bind_for_every_shard(
    i: usize,
    spec: &crate::config::ListenerSpec,
    per_shard: &mut [Vec<ListenerPlan>],
) -> Result<(), Problem> {
    if !HANDOVER.load(Ordering::Relaxed) {
        refuse_if_served(spec.addr).map_err(|message| Problem {
            key: format!("listeners[{i}].bind"),
            line: spec.bind_line,
            message,
        })?;
    }
    for plans in per_shard.iter_mut() {
        let socket = bind_reuseport(spec.addr).map_err(|e| Problem {
            key: format!("listeners[{i}].bind"),
            line: spec.bind_line,
            message: format!("cannot bind {}: {e}", spec.addr),
        })?;
        plans.push(ListenerPlan::Bind { index: i, socket });
    }
    Ok(())
}

/// A reload resolves every host name afresh: a name that still has the address it runs on
/// keeps it (a name with several addresses would otherwise move to its first on every
/// reload).
fn keep_resolved_addresses(old: &Snapshot, new: &mut Snapshot) {
    for u in &mut new.upstreams {
        let Some(running) = old.upstreams.iter().find(|o| o.name == u.name) else {
            continue;
        };
        for t in u.targets.iter_mut().filter(|t| t.host_name) {
            let kept = running
                .targets
                .iter()
                .find(|o| o.label == t.label && o.addr != t.addr)
                .and_then(|o| {
                    crate::config::resolve::resolve_target(
                        &t.label,
                        new.hosts_file.as_deref(),
                        Some(o.addr),
                    )
                    .ok()
                });
            if let Some(addr) = kept {
                t.addr = addr;
            }
        }
    }
}

/// Slots of targets the new config keeps by name at another address.
fn moved_slots(old: &Snapshot, new: &Snapshot) -> Vec<usize> {
    let mut slots = Vec::new();
    for u in &new.upstreams {
        let Some(running) = old.upstreams.iter().find(|o| o.name == u.name) else {
            continue;
        };
        for t in &u.targets {
            if let Some(o) = running.targets.iter().find(|o| o.label == t.label)
                && o.addr != t.addr
            {
                observe::info(&format!(
                    "upstream {:?} target {}: now {} (was {})",
                    u.name, t.label, t.addr, o.addr
                ));
                slots.push(t.slot);
            }
        }
    }
    slots
}

/// Slots of targets without active health checks.
fn unprobed_slots(snapshot: &Snapshot) -> impl Iterator<Item = usize> + '_ {
    snapshot
        .upstreams
        .iter()
        .filter(|u| u.health.is_none())
        .flat_map(|u| u.targets.iter().map(|t| t.slot))
}

/// `ringgate run --handover`: bind addresses another process serves (a deliberate hand-over,
/// such as a binary upgrade: both serve until the old one is stopped).
pub static HANDOVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `SO_REUSEPORT` would let this process join another's listening group and split its
/// connections with it; nginx refuses to start instead, and so do we. A probe socket without
/// `SO_REUSEPORT` cannot bind where anyone listens.
fn refuse_if_served(addr: SocketAddr) -> Result<(), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).and_then(|s| {
            // TIME_WAIT leftovers do not count; a listener does.
            s.set_reuse_address(true)?;
            s.bind(&addr.into())
        });
    match probe {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot bind {addr}: it is already served by {}; stop that, or start with `ringgate run --handover` to share the address on purpose",
            who_listens(addr.port()).unwrap_or_else(|| "another process".to_string())
        )),
        _ => Ok(()),
    }
}

/// The process listening on `port` ("pid 1234 (nginx)"), when /proc lets this user see it.
fn who_listens(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port)
                && fields.get(3) == Some(&"0A")
                && let Some(inode) = fields.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", name.trim()));
            }
        }
    }
    None
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
