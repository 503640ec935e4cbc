//! A shard's state, apart from the threads that run it: the pinned config ([`Active`]),
//! listener and connection bookkeeping, the command inbox. The request path reads it; only
//! [`super::run`] (the shard's own thread) changes the config.

use crate::config::Snapshot;
use crate::http::RequestIds;
use crate::http::io::BufPool;
use crate::observe::metrics::{ListenerMetrics, RouteMetrics};
use crate::upstream::{Cluster, ShardUpstreams};
use monoio::time::Instant;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

/// Set once by the control thread on SIGTERM/SIGINT; shards poll it on their tick.
pub static DRAIN: AtomicBool = AtomicBool::new(false);

/// Everything one shard owns. Lives in an `Rc`: never crosses threads.
pub struct Shard {
    pub id: usize,
    /// The config new exchanges start with (see [`Shard::config`]).
    pub(super) active: RefCell<Rc<Active>>,
    pub bufs: Rc<BufPool>,
    /// Larger buffers lent to a connection while it streams a large request body.
    pub body_bufs: BufPool,
    pub ids: RequestIds,
    pub draining: Cell<bool>,
    pub(super) cluster: Arc<Cluster>,
    pub(super) mailboxes: Arc<Mailboxes>,
    /// The epoll driver needs non-blocking listener sockets; io_uring must not get them.
    pub(super) legacy_driver: bool,
    pub(super) registry: RefCell<Registry>,
    pub(super) open_total: Cell<usize>,
    /// Slots of the targets this shard runs a probe loop for.
    pub(super) probing: RefCell<std::collections::HashSet<usize>>,
    /// The next [`ListenerState::id`].
    pub(super) next_listener_id: Cell<u32>,
    /// The metric series of requests that matched no route.
    pub(super) unrouted: Arc<RouteMetrics>,
    /// Access-log lines not yet handed to the writer, and how many.
    access_lines: LineBuffer,
    /// Audit lines (`auth_denied`) not yet handed to the writer.
    audit_lines: LineBuffer,
    /// JWT key sets fetched from URLs, by URL (delivered by the control thread; kept
    /// across reloads).
    jwks: RefCell<std::collections::HashMap<Box<str>, Arc<crate::auth::jwt::KeySet>>>,
    /// The latest values of `file:` secrets that changed since they were loaded, by path.
    secret_files: RefCell<HashMap<std::path::PathBuf, Arc<crate::config::Secret>>>,
    /// Usage batches an inbox had no room for: (destination, batch), sent again next tick
    /// (`None`: the cluster sync thread).
    usage_unsent: RefCell<Vec<(Option<usize>, Arc<crate::gossip::usage::UsageBatch>)>>,
    /// The tick backs off while the shard holds no connection (an idle gateway should not
    /// wake every core 200 times a second); the next accept catches up and wakes it.
    pub(super) idle: Cell<bool>,
    pub(super) ticker: Cell<Option<std::task::Waker>>,
}

/// Batches kept for full inboxes at most (about a second of ticks for every peer): beyond
/// that a receiver is not draining at all, and the oldest are dropped.
const MAX_UNSENT_USAGE: usize = 4096;

impl Shard {
    /// The tick's rate-limit exchange: what this shard admitted for global and cluster
    /// policies goes to every other shard (and the cluster sync thread); what they admitted
    /// is charged to this shard's cells. Never waits: a full inbox keeps the batch here for
    /// the next tick.
    /// Publishes this shard's usage and charges the others'; true when anything arrived or
    /// still waits to be sent (the shard then keeps ticking at full rate).
    pub(super) fn exchange_usage(&self) -> bool {
        let usage = &self.cluster.usage;
        let now = crate::limit::gcra::Clocks::now();
        let config = self.config();
        let mut unsent = self.usage_unsent.borrow_mut();
        let retry = std::mem::take(&mut *unsent);
        let mut send = |to: Option<usize>, batch: Arc<crate::gossip::usage::UsageBatch>| {
            let sent = match to {
                Some(shard) => usage.send(shard, batch),
                None => usage.send_to_cluster(batch),
            };
            if let Err(batch) = sent {
                unsent.push((to, batch));
            }
        };
        for (to, batch) in retry {
            send(to, batch);
        }
        if let Some(batch) = config.limits.take_usage(self.id, now) {
            let batch = Arc::new(batch);
            for shard in (0..usage.shards()).filter(|&s| s != self.id) {
                send(Some(shard), batch.clone());
            }
            if batch.policies.iter().any(|p| p.cluster) {
                send(None, batch);
            }
        }
        if unsent.len() > MAX_UNSENT_USAGE {
            let excess = unsent.len() - MAX_UNSENT_USAGE;
            unsent.drain(..excess);
        }
        let mut busy = !unsent.is_empty();
        drop(unsent);
        while let Some(batch) = usage.receive(self.id) {
            config.limits.charge(&batch, now);
            busy = true;
        }
        busy
    }
}

/// Lines gathered on the shard for one log, handed to its writer in chunks.
#[derive(Default)]
struct LineBuffer {
    chunk: RefCell<Vec<u8>>,
    lines: Cell<u64>,
}

impl LineBuffer {
    /// Adds one line; hands the chunk over once it is full.
    fn push(
        &self,
        write: impl FnOnce(&mut Vec<u8>),
        pipe: &crate::observe::access_log::LogPipe,
        shard: usize,
        dropped: &crate::observe::metrics::Counter,
    ) {
        let mut chunk = self.chunk.borrow_mut();
        if chunk.capacity() == 0 {
            chunk.reserve(crate::observe::access_log::CHUNK_BYTES + 1024);
        }
        write(&mut chunk);
        self.lines.set(self.lines.get() + 1);
        if chunk.len() >= crate::observe::access_log::CHUNK_BYTES {
            drop(chunk);
            self.flush(pipe, shard, dropped);
        }
    }

    /// Hands the lines gathered so far to the writer; when it is behind, they are dropped
    /// and counted (the shard never waits).
    fn flush(
        &self,
        pipe: &crate::observe::access_log::LogPipe,
        shard: usize,
        dropped: &crate::observe::metrics::Counter,
    ) {
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let chunk = std::mem::take(&mut *self.chunk.borrow_mut());
        if pipe.send(shard, chunk, lines).is_err() {
            dropped.add(lines);
        }
    }
}

/// One config as this shard runs it: the snapshot, and this shard's state for its names
/// (upstream pools and counters, listener counters), indexed like the snapshot. An exchange
/// pins the one it starts with; a reload installs the next one, built from this one.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: ShardUpstreams,
    /// Each route's metric series, by route index.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    pub generation: u64,
    pub(super) listener_states: Vec<Rc<ListenerState>>,
    /// This shard's JWT caches for this config's providers.
    pub auth: crate::auth::ShardAuth,
    /// Injection counters by route: `[injection * (consumers + 1) + consumer]`, the last
    /// consumer slot for callers that are not configured consumers.
    pub injection_counters: Vec<Vec<Arc<crate::observe::metrics::Counter>>>,
    /// This shard's rate-limit cells for this config's policies (cells of policies a reload
    /// kept are the same cells).
    pub limits: crate::limit::ShardLimits,
}

impl Active {
    /// The running listener called `name`, if this config has it.
    pub(super) fn listener_named(&self, name: &str) -> Option<Rc<ListenerState>> {
        self.listener_states
            .iter()
            .find(|l| &**l.name.borrow() == name)
            .cloned()
    }
}

impl std::ops::Deref for Active {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// One listener on this shard, kept across reloads while its address stays (and its name,
/// or it was renamed).
pub struct ListenerState {
    /// Its current name (a reload may rename it).
    pub name: RefCell<std::rc::Rc<str>>,
    /// Tells its connections apart in the registry (per shard, never reused).
    pub(super) id: u32,
    /// Where its spec is in the current snapshot.
    pub(super) index: Cell<usize>,
    /// The listening socket (-1 once its accept loop ended), for drain and retirement.
    pub(super) fd: Cell<RawFd>,
    /// Removed (or moved) by a reload: its connections close after their current request.
    pub(super) retired: Cell<bool>,
    /// Open client connections (for `max_connections`).
    pub(super) open: Cell<usize>,
    /// Open client connections per client address (for `max_connections_per_ip`).
    pub(super) open_per_ip: RefCell<HashMap<IpAddr, usize>>,
    pub metrics: Arc<ListenerMetrics>,
}

impl ListenerState {
    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }

    /// Ends its accept loop: the pending accept fails and the loop sees the flag.
    pub(super) fn stop_accepting(&self) {
        let fd = self.fd.replace(-1);
        if fd >= 0 {
            // SAFETY: the fd is this shard's open listening socket (its accept loop, which
            // owns it, resets `fd` to -1 before closing it).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// A new config for a shard: the snapshot, its generation, and what each of its listeners
/// is on this shard.
pub struct Reconfigure {
    pub snapshot: Arc<Snapshot>,
    pub generation: u64,
    pub listeners: Vec<ListenerPlan>,
}

/// A listener of a new config, as the control thread planned it for one shard.
pub enum ListenerPlan {
    /// The running listener called `running_name` goes on (same address), as listener
    /// `index` of the new snapshot.
    Keep { index: usize, running_name: String },
    /// A socket the control thread bound for this shard (a new or moved listener).
    Bind {
        index: usize,
        socket: std::net::TcpListener,
    },
}

/// What the control thread asks of a shard; drained on the shard's tick.
pub enum Command {
    Apply(Box<Reconfigure>),
    /// A `file:` secret's new value (the file changed), read by the control thread.
    SecretFile {
        path: std::path::PathBuf,
        value: Arc<crate::config::Secret>,
    },
    /// Whether cluster rate limits are synced with Redis, and what to do while they are not
    /// (from the cluster sync thread).
    ClusterMode(crate::limit::ClusterMode),
    /// A JWKS URL's keys, fetched by the control thread.
    Jwks {
        url: Box<str>,
        keys: Arc<crate::auth::jwt::KeySet>,
    },
}

/// One bounded lock-free inbox per shard (the control thread is the only sender).
pub struct Mailboxes {
    pub(super) inboxes: Vec<crossbeam_queue::ArrayQueue<Command>>,
}

impl Mailboxes {
    pub fn new(shards: usize) -> Mailboxes {
        Mailboxes {
            inboxes: (0..shards)
                .map(|_| crossbeam_queue::ArrayQueue::new(16))
                .collect(),
        }
    }

    /// Queues `command` for `shard`; gives it back when the inbox is full.
    /// How many shards have an inbox.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    pub fn send(&self, shard: usize, command: Command) -> Result<(), Command> {
        self.inboxes[shard].push(command)
    }

    pub fn depth(&self, shard: usize) -> usize {
        self.inboxes[shard].len()
    }

    pub(super) fn take(&self, shard: usize) -> Option<Command> {
        self.inboxes[shard].pop()
    }
}

/// Open client connections, so drain can wake the idle ones.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<usize>,
}

#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) fd: RawFd,
    /// The [`ListenerState::id`] of the listener it came in on.
    pub(super) listener: u32,
    /// Set while the connection waits for its next request: when it must be closed.
    pub(super) idle_until: Option<Instant>,
    pub(super) live: bool,
    /// The request id of the connection's current request, for a panic report.
    pub(super) request_id: [u8; REQUEST_ID_SHOWN],
    pub(super) request_id_len: u8,
}

/// How much of a request id a panic report shows.
pub(super) const REQUEST_ID_SHOWN: usize = 64;

/// Connection tasks that panicked, all shards together (the task is dropped, the shard and
/// every other connection on it go on).
pub static CONNECTION_PANICS: AtomicU64 = AtomicU64::new(0);

/// Shards that are serving (started and not stopped or dead): `/readyz` compares it with
/// `workers`.
pub static SHARDS_ALIVE: AtomicUsize = AtomicUsize::new(0);

/// A connection's place in the registry; unregisters itself when dropped.
pub struct ConnGuard {
    pub(super) shard: Rc<Shard>,
    pub(super) slot: usize,
    pub(super) listener: Rc<ListenerState>,
    pub(super) peer: IpAddr,
}

impl ConnGuard {
    /// Counts the connection against `ip` instead of the accepting peer (a PROXY header named
    /// the client): false, and nothing changed, when `ip` is already at `limit`.
    pub fn rekey_peer(&mut self, ip: IpAddr, limit: usize) -> bool {
        let ip = per_ip_key(ip);
        if ip == self.peer {
            return true;
        }
        let mut per_ip = self.listener.open_per_ip.borrow_mut();
        let from_client = per_ip.entry(ip).or_insert(0);
        if *from_client >= limit {
            if *from_client == 0 {
                per_ip.remove(&ip);
            }
            return false;
        }
        *from_client += 1;
        if let Some(n) = per_ip.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.peer);
            }
        }
        self.peer = ip;
        true
    }

    /// Marks the connection as waiting for its next request until `deadline`. Idle
    /// connections hold no timer: the shard's reaper (and drain) end them by shutting down
    /// their read side, which wakes the wait with EOF.
    pub fn park(&self, deadline: Instant) {
        self.shard.registry.borrow_mut().slots[self.slot].idle_until = Some(deadline);
    }

    pub fn unpark(&self) {
        self.shard.registry.borrow_mut().slots[self.slot].idle_until = None;
    }

    /// The listener the connection came in on (retired when a reload removed it).
    pub fn listener(&self) -> &ListenerState {
        &self.listener
    }

    pub fn listener_rc(&self) -> Rc<ListenerState> {
        self.listener.clone()
    }

    /// Remembers the current request's id, so a panic can be reported with it.
    pub fn set_request_id(&self, id: &[u8]) {
        let n = id.len().min(REQUEST_ID_SHOWN);
        let mut reg = self.shard.registry.borrow_mut();
        let slot = &mut reg.slots[self.slot];
        slot.request_id[..n].copy_from_slice(&id[..n]);
        slot.request_id_len = n as u8;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut reg = self.shard.registry.borrow_mut();
        reg.slots[self.slot].live = false;
        reg.free.push(self.slot);
        drop(reg);
        let open = &self.listener.open;
        open.set(open.get() - 1);
        self.listener
            .metrics
            .connections_active
            .set(open.get() as u64);
        let total = &self.shard.open_total;
        total.set(total.get() - 1);
        self.shard
            .stats()
            .set_open_connections(self.shard.open_connections());
        let mut per_ip = self.listener.open_per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.peer);
            }
        }
    }
}

impl Shard {
    pub(super) fn new(
        id: usize,
        first: &Arc<Snapshot>,
        cluster: Arc<Cluster>,
        mailboxes: Arc<Mailboxes>,
        legacy_driver: bool,
    ) -> Self {
        let bufs = Rc::new(BufPool::new(1024));
        let upstreams = ShardUpstreams::new(
            first.clone(),
            bufs.clone(),
            cluster.clone(),
            id,
            crate::http::random_seed(),
        );
        let unrouted = cluster.shard_metrics[id].route("");
        // Nothing runs on this until the first `apply` replaces it.
        let empty = Active {
            snapshot: first.clone(),
            upstreams,
            route_metrics: Vec::new(),
            generation: 0,
            listener_states: Vec::new(),
            auth: crate::auth::ShardAuth::new(&Default::default()),
            injection_counters: Vec::new(),
            limits: crate::limit::ShardLimits::new(),
        };
        Shard {
            id,
            active: RefCell::new(Rc::new(empty)),
            bufs,
            body_bufs: BufPool::new(64),
            ids: RequestIds::new(crate::http::random_seed()),
            draining: Cell::new(false),
            cluster,
            mailboxes,
            legacy_driver,
            registry: RefCell::new(Registry::default()),
            open_total: Cell::new(0),
            probing: RefCell::new(std::collections::HashSet::new()),
            next_listener_id: Cell::new(0),
            unrouted,
            access_lines: LineBuffer::default(),
            audit_lines: LineBuffer::default(),
            jwks: RefCell::new(Default::default()),
            usage_unsent: RefCell::new(Vec::new()),
            idle: Cell::new(false),
            ticker: Cell::new(None),
            secret_files: RefCell::new(Default::default()),
        }
    }

    /// The config to run an exchange with: pinned (an `Rc`, shard-local) until the caller
    /// drops it, whatever reloads happen meanwhile.
    pub fn config(&self) -> Rc<Active> {
        self.active.borrow().clone()
    }

    /// Registers a new connection, or `None` when the listener is at `max_connections` or
    /// the client's address at `max_connections_per_ip`.
    pub(super) fn admit(
        self: &Rc<Self>,
        listener: &Rc<ListenerState>,
        limits: &crate::config::EffectiveLimits,
        fd: RawFd,
        peer: IpAddr,
    ) -> Option<ConnGuard> {
        let open = &listener.open;
        if open.get() >= limits.max_connections {
            return None;
        }
        {
            let mut per_ip = listener.open_per_ip.borrow_mut();
            let from_peer = per_ip.entry(peer).or_insert(0);
            if *from_peer >= limits.max_connections_per_ip {
                return None;
            }
            *from_peer += 1;
        }
        open.set(open.get() + 1);
        listener.metrics.connections_active.set(open.get() as u64);
        self.open_total.set(self.open_total.get() + 1);
        self.stats().set_open_connections(self.open_connections());
        let mut reg = self.registry.borrow_mut();
        let slot_value = Slot {
            fd,
            listener: listener.id,
            idle_until: None,
            live: true,
            request_id: [0; REQUEST_ID_SHOWN],
            request_id_len: 0,
        };
        let slot = match reg.free.pop() {
            Some(i) => {
                reg.slots[i] = slot_value;
                i
            }
            None => {
                reg.slots.push(slot_value);
                reg.slots.len() - 1
            }
        };
        Some(ConnGuard {
            shard: self.clone(),
            slot,
            listener: listener.clone(),
            peer,
        })
    }

    /// The request id a connection last recorded (empty before its first request).
    pub(super) fn request_id_in(&self, slot: usize) -> String {
        let reg = self.registry.borrow();
        let slot = &reg.slots[slot];
        String::from_utf8_lossy(&slot.request_id[..usize::from(slot.request_id_len)]).into_owned()
    }

    /// Appends one access-log line; a full chunk goes to the writer at once.
    pub fn log(
        &self,
        format: crate::config::AccessLogFormat,
        line: &crate::observe::access_log::Line,
    ) {
        self.access_lines.push(
            |out| line.push(format, out),
            &self.cluster.access_log,
            self.id,
            &self.metrics().access_log_dropped,
        );
    }

    /// Writes an audit event (off the shard, like the access log).
    pub fn audit(&self, event: &crate::observe::audit::Event) {
        let unix_ms = crate::observe::unix_ms();
        self.audit_lines.push(
            |out| event.push_json(unix_ms, out),
            &self.cluster.audit_log,
            self.id,
            &self.metrics().audit_log_dropped,
        );
    }

    /// Hands the lines gathered so far to the writers.
    pub(super) fn flush_log(&self) {
        let metrics = self.metrics();
        self.access_lines.flush(
            &self.cluster.access_log,
            self.id,
            &metrics.access_log_dropped,
        );
        self.audit_lines
            .flush(&self.cluster.audit_log, self.id, &metrics.audit_log_dropped);
    }

    /// The key set delivered for a JWKS URL, if any yet.
    pub fn jwks(&self, url: &str) -> Option<Arc<crate::auth::jwt::KeySet>> {
        self.jwks.borrow().get(url).cloned()
    }

    /// The `file:` secrets re-read since load (injection reads them while writing a head).
    pub fn secret_files(
        &self,
    ) -> std::cell::Ref<'_, HashMap<std::path::PathBuf, Arc<crate::config::Secret>>> {
        self.secret_files.borrow()
    }

    pub(super) fn set_secret_file(
        &self,
        path: std::path::PathBuf,
        value: Arc<crate::config::Secret>,
    ) {
        self.secret_files.borrow_mut().insert(path, value);
    }

    pub(super) fn set_jwks(&self, url: Box<str>, keys: Arc<crate::auth::jwt::KeySet>) {
        self.jwks.borrow_mut().insert(url, keys);
    }

    pub fn unrouted_metrics(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// This shard's metric series (shared with the admin thread).
    pub fn metrics(&self) -> &crate::observe::metrics::ShardMetrics {
        &self.cluster.shard_metrics[self.id]
    }

    /// This shard's counters (shared with the admin thread).
    pub fn stats(&self) -> &crate::observe::ShardStats {
        &self.cluster.shard_stats[self.id]
    }

    /// Open client connections on every listener, current or retired.
    pub(super) fn open_connections(&self) -> usize {
        self.open_total.get()
    }

    /// Ends the read side of idle connections parked past `now` (all of them when `now` is
    /// `None`): the wait sees EOF and the connection closes itself.
    pub(super) fn close_idle_connections(&self, now: Option<Instant>) {
        self.close_idle_where(|slot| match (slot.idle_until, now) {
            (Some(deadline), Some(now)) => deadline <= now,
            (Some(_), None) => true,
            (None, _) => false,
        });
    }

    /// Ends the idle connections of the listeners in `retired` (a reload removed them): they
    /// would otherwise wait out their idle timeout on a listener that no longer exists.
    pub(super) fn close_idle_connections_of(&self, retired: &[u32]) {
        if !retired.is_empty() {
            self.close_idle_where(|slot| {
                slot.idle_until.is_some() && retired.contains(&slot.listener)
            });
        }
    }

    fn close_idle_where(&self, expired: impl Fn(&Slot) -> bool) {
        let mut registry = self.registry.borrow_mut();
        for slot in registry.slots.iter_mut() {
            let expired = expired(slot);
            if slot.live && expired {
                slot.idle_until = None;
                // SAFETY: the fd belongs to a live connection owned by this shard.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RD) };
            }
        }
    }
}

/// What `max_connections_per_ip` counts: an IPv4 address, or an IPv6 /64 (one subscriber
/// usually holds a whole /64, so counting single v6 addresses would be no limit at all).
pub(super) fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Key sets from JWKS URLs, as this shard has them; unknown `kid`s are passed to the control
/// thread (which rate-limits the refetch).
impl crate::auth::UrlKeys for Shard {
    fn keys(&self, url: &str) -> Option<Arc<crate::auth::jwt::KeySet>> {
        self.jwks(url)
    }

    fn refetch(&self, url: &str) {
        let _ = self.cluster.jwks_wanted.push(url.into());
    }
}
