//! Shards: one thread per core, pinned from inside its own thread, each with its own monoio
//! runtime (io_uring, or epoll when io_uring is unavailable), its own `SO_REUSEPORT` listeners
//! and all request-path state.
//!
//! Owns thread start-up, accept loops, the per-shard connection registry and the drain
//! sequence. It must not parse HTTP or pick upstreams: connections are handed to
//! [`crate::request_path`].

use crate::config::{IoDriver, Snapshot};
use crate::http::RequestIds;
use crate::http::io::BufPool;
use crate::observe;
use crate::upstream::{Cluster, ShardUpstreams};
use monoio::net::TcpListener;
use monoio::time::{Duration, Instant};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Set once by the control thread on SIGTERM/SIGINT; shards poll it on their tick.
pub static DRAIN: AtomicBool = AtomicBool::new(false);

/// The longest a shard goes without looking at its inbox, gossip and drain.
const TICK: Duration = Duration::from_millis(5);
/// Idle connections are reaped this often: idle timeouts are that precise.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Everything one shard owns. Lives in an `Rc`: never crosses threads.
pub struct Shard {
    pub id: usize,
    /// The config new exchanges start with (see [`Shard::config`]).
    active: RefCell<Rc<Active>>,
    pub bufs: Rc<BufPool>,
    /// Larger buffers lent to a connection while it streams a large request body.
    pub body_bufs: BufPool,
    pub ids: RequestIds,
    pub draining: Cell<bool>,
    cluster: Arc<Cluster>,
    mailboxes: Arc<Mailboxes>,
    /// The epoll driver needs non-blocking listener sockets; io_uring must not get them.
    legacy_driver: bool,
    registry: RefCell<Registry>,
    open_total: Cell<usize>,
}

/// One config as this shard runs it: the snapshot, and this shard's state for its names
/// (upstream pools and counters, listener counters), indexed like the snapshot. An exchange
/// pins the one it starts with; a reload installs the next one, built from this one.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: ShardUpstreams,
    pub generation: u64,
    listener_states: Vec<Rc<ListenerState>>,
    /// Set when a newer config replaces this one: its probes stop.
    retired: Rc<Cell<bool>>,
}

impl std::ops::Deref for Active {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// One listener on this shard, kept across reloads while its name and address stay.
pub struct ListenerState {
    pub name: std::rc::Rc<str>,
    addr: std::net::SocketAddr,
    /// Where its spec is in the current snapshot.
    index: Cell<usize>,
    /// The listening socket (-1 once its accept loop ended), for drain and retirement.
    fd: Cell<RawFd>,
    /// Removed (or moved) by a reload: its connections close after their current request.
    retired: Cell<bool>,
    /// Open client connections (for `max_connections`).
    open: Cell<usize>,
    /// Open client connections per client address (for `max_connections_per_ip`).
    open_per_ip: RefCell<HashMap<IpAddr, usize>>,
}

impl ListenerState {
    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }

    /// Ends its accept loop: the pending accept fails and the loop sees the flag.
    fn stop_accepting(&self) {
        let fd = self.fd.replace(-1);
        if fd >= 0 {
            // SAFETY: the fd is this shard's open listening socket (its accept loop, which
            // owns it, resets `fd` to -1 before closing it).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// A new config for a shard: the snapshot, its generation, and the listening sockets the
/// control thread bound for it (listener index, socket) for listeners that are new or moved.
pub struct Reconfigure {
    pub snapshot: Arc<Snapshot>,
    pub generation: u64,
    pub sockets: Vec<(usize, std::net::TcpListener)>,
}

/// What the control thread asks of a shard; drained on the shard's tick.
pub enum Command {
    Apply(Box<Reconfigure>),
}

/// One bounded lock-free inbox per shard (the control thread is the only sender).
pub struct Mailboxes {
    inboxes: Vec<crossbeam_queue::ArrayQueue<Command>>,
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
    pub fn send(&self, shard: usize, command: Command) -> Result<(), Command> {
        self.inboxes[shard].push(command)
    }

    pub fn depth(&self, shard: usize) -> usize {
        self.inboxes[shard].len()
    }

    fn take(&self, shard: usize) -> Option<Command> {
        self.inboxes[shard].pop()
    }
}

/// Open client connections, so drain can wake the idle ones.
#[derive(Default)]
struct Registry {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Clone, Copy)]
struct Slot {
    fd: RawFd,
    /// Set while the connection waits for its next request: when it must be closed.
    idle_until: Option<Instant>,
    live: bool,
    /// The request id of the connection's current request, for a panic report.
    request_id: [u8; REQUEST_ID_SHOWN],
    request_id_len: u8,
}

/// How much of a request id a panic report shows.
const REQUEST_ID_SHOWN: usize = 64;

/// Connection tasks that panicked, all shards together (the task is dropped, the shard and
/// every other connection on it go on).
pub static CONNECTION_PANICS: AtomicU64 = AtomicU64::new(0);

/// Shards that are serving (started and not stopped or dead): `/readyz` compares it with
/// `workers`.
pub static SHARDS_ALIVE: AtomicUsize = AtomicUsize::new(0);

/// A connection's place in the registry; unregisters itself when dropped.
pub struct ConnGuard {
    shard: Rc<Shard>,
    slot: usize,
    listener: Rc<ListenerState>,
    peer: IpAddr,
}

impl ConnGuard {
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
    fn new(
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
        // Nothing runs on this until the first `apply` replaces it.
        let empty = Active {
            snapshot: first.clone(),
            upstreams,
            generation: 0,
            listener_states: Vec::new(),
            retired: Rc::new(Cell::new(false)),
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
        }
    }

    /// The config to run an exchange with: pinned (an `Rc`, shard-local) until the caller
    /// drops it, whatever reloads happen meanwhile.
    pub fn config(&self) -> Rc<Active> {
        self.active.borrow().clone()
    }

    /// Registers a new connection, or `None` when the listener is at `max_connections` or
    /// the client's address at `max_connections_per_ip`.
    fn admit(
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
        self.open_total.set(self.open_total.get() + 1);
        self.stats().set_open_connections(self.open_connections());
        let mut reg = self.registry.borrow_mut();
        let slot_value = Slot {
            fd,
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
    fn request_id_in(&self, slot: usize) -> String {
        let reg = self.registry.borrow();
        let slot = &reg.slots[slot];
        String::from_utf8_lossy(&slot.request_id[..usize::from(slot.request_id_len)]).into_owned()
    }

    /// This shard's counters (shared with the admin thread).
    pub fn stats(&self) -> &crate::observe::ShardStats {
        &self.cluster.shard_stats[self.id]
    }

    /// Open client connections on every listener, current or retired.
    fn open_connections(&self) -> usize {
        self.open_total.get()
    }

    /// Ends the read side of idle connections parked past `now` (all of them when `now` is
    /// `None`): the wait sees EOF and the connection closes itself.
    fn close_idle_connections(&self, now: Option<Instant>) {
        let mut registry = self.registry.borrow_mut();
        for slot in registry.slots.iter_mut() {
            let expired = match (slot.idle_until, now) {
                (Some(deadline), Some(now)) => deadline <= now,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if slot.live && expired {
                slot.idle_until = None;
                // SAFETY: the fd belongs to a live connection owned by this shard.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RD) };
            }
        }
    }
}

/// What a shard thread reports once its runtime runs (or could not be built).
pub enum Started {
    Ready { shard: usize },
    RuntimeFailed { shard: usize, error: std::io::Error },
}

/// Starts one shard thread per [`Reconfigure`] in `first` (shard i gets `first[i]`, with the
/// listening sockets bound for it); each reports once on `started`.
pub fn spawn_shards(
    first: Vec<Reconfigure>,
    cluster: &Arc<Cluster>,
    mailboxes: &Arc<Mailboxes>,
    started: mpsc::Sender<Started>,
) -> Vec<std::thread::JoinHandle<()>> {
    let pin = first.first().is_some_and(|f| f.snapshot.pin_cores);
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    first
        .into_iter()
        .enumerate()
        .map(|(id, first)| {
            let cluster = cluster.clone();
            let mailboxes = mailboxes.clone();
            let started = started.clone();
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    let parts = ShardParts {
                        id,
                        cluster,
                        mailboxes,
                        started,
                    };
                    shard_thread(core, first, parts)
                })
                .unwrap_or_else(|e| {
                    eprintln!("ringgate: cannot start shard thread {id}: {e}");
                    std::process::exit(1);
                })
        })
        .collect()
}

/// What a shard thread is started with besides its first config.
struct ShardParts {
    id: usize,
    cluster: Arc<Cluster>,
    mailboxes: Arc<Mailboxes>,
    started: mpsc::Sender<Started>,
}

fn shard_thread(core: Option<core_affinity::CoreId>, first: Reconfigure, parts: ShardParts) {
    let id = parts.id;
    // Pinning applies to the calling thread only, so it must happen here, not in the spawner.
    let pinned = core.is_some_and(core_affinity::set_for_current);
    let entries = first.snapshot.io_uring_entries;
    let describe = |driver: &str| {
        let pin = match (core, pinned) {
            (Some(c), true) => format!("pinned to core {}", c.id),
            (Some(c), false) => format!("could not pin to core {}", c.id),
            (None, _) => "not pinned".to_string(),
        };
        observe::info(&format!("shard {id}: {driver} driver, {pin}"));
    };
    let wants_uring = first.snapshot.io_driver == IoDriver::Auto;
    if wants_uring && monoio::utils::detect_uring() {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                describe("io_uring");
                parts.cluster.shard_stats[id]
                    .driver
                    .store(crate::observe::exchange::DRIVER_IO_URING, Ordering::Relaxed);
                exit_if_panicked(id, || rt.block_on(run_shard(first, parts, false)));
                return;
            }
            Err(e) => observe::warn(&format!(
                "shard {id}: io_uring runtime failed ({e}); falling back to epoll (raise the memlock limit or lower server.io_uring_entries)"
            )),
        }
    } else if wants_uring {
        observe::warn(&format!(
            "shard {id}: io_uring is not available (old kernel or seccomp); falling back to epoll"
        ));
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            describe("epoll");
            parts.cluster.shard_stats[id]
                .driver
                .store(crate::observe::exchange::DRIVER_EPOLL, Ordering::Relaxed);
            exit_if_panicked(id, || rt.block_on(run_shard(first, parts, true)));
        }
        Err(error) => {
            let _ = parts
                .started
                .send(Started::RuntimeFailed { shard: id, error });
        }
    }
}

/// A panic outside any connection task (accept loop, probes, gossip, the drain loop) ends
/// the shard's runtime. A dead shard's `SO_REUSEPORT` listener would keep taking its share
/// of new connections into a queue nobody accepts from, so the whole process exits non-zero
/// instead, for its supervisor to restart it: loud and whole beats quiet and partial.
fn exit_if_panicked(id: usize, run: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        SHARDS_ALIVE.fetch_sub(1, Ordering::AcqRel);
        observe::warn(&format!(
            "shard {id} died: {}; exiting (status 70) so a supervisor restarts the gateway",
            panic_message(&*panic)
        ));
        std::process::exit(70);
    }
}

async fn run_shard(first: Reconfigure, parts: ShardParts, legacy_driver: bool) {
    let id = parts.id;
    let shard = Rc::new(Shard::new(
        id,
        &first.snapshot,
        parts.cluster,
        parts.mailboxes,
        legacy_driver,
    ));
    shard.apply(first);
    let _ = parts.started.send(Started::Ready { shard: id });
    drop(parts.started);
    SHARDS_ALIVE.fetch_add(1, Ordering::AcqRel);
    tick_loop(&shard).await;
}

impl Shard {
    /// Installs a new config at a safe point (between tasks, on this shard's tick): state of
    /// unchanged names is carried over, new listeners start accepting, removed or moved ones
    /// stop (their open connections close after their current request), probes restart on
    /// the new targets. Exchanges in flight finish on the config they pinned.
    fn apply(self: &Rc<Self>, next: Reconfigure) {
        let old = self.config();
        let Reconfigure {
            snapshot,
            generation,
            mut sockets,
        } = next;
        let mut listeners = Vec::with_capacity(snapshot.listeners.len());
        for (index, spec) in snapshot.listeners.iter().enumerate() {
            let kept = old
                .listener_states
                .iter()
                .find(|l| *l.name == *spec.name && l.addr == spec.addr && !l.retired.get());
            let bound = sockets.iter().position(|(i, _)| *i == index);
            let state = match (bound, kept) {
                (Some(at), _) => {
                    let (_, socket) = sockets.swap_remove(at);
                    match self.start_listener(index, spec, socket) {
                        Some(state) => state,
                        None => continue,
                    }
                }
                (None, Some(kept)) => kept.clone(),
                (None, None) => {
                    observe::warn(&format!(
                        "shard {}: listener {:?} has no socket (not bound by the control thread)",
                        self.id, spec.name
                    ));
                    continue;
                }
            };
            state.index.set(index);
            listeners.push(state);
        }
        for gone in old.listener_states.iter() {
            if !listeners.iter().any(|l| Rc::ptr_eq(l, gone)) {
                gone.retired.set(true);
                gone.stop_accepting();
            }
        }
        old.retired.set(true);
        let active = Rc::new(Active {
            upstreams: old.upstreams.rebuild(snapshot.clone()),
            snapshot,
            generation,
            listener_states: listeners,
            retired: Rc::new(Cell::new(false)),
        });
        *self.active.borrow_mut() = active.clone();
        start_probes(self, &active);
        self.stats()
            .config_generation
            .store(generation, Ordering::Relaxed);
    }

    /// Starts accepting on a socket the control thread bound for this shard.
    fn start_listener(
        self: &Rc<Self>,
        index: usize,
        spec: &crate::config::ListenerSpec,
        socket: std::net::TcpListener,
    ) -> Option<Rc<ListenerState>> {
        let converted = socket
            .set_nonblocking(self.legacy_driver)
            .and_then(|()| TcpListener::from_std(socket));
        let listener = match converted {
            Ok(l) => l,
            Err(e) => {
                observe::warn(&format!(
                    "shard {}: listener {:?} on {}: cannot use its socket: {e}",
                    self.id, spec.name, spec.addr
                ));
                return None;
            }
        };
        let state = Rc::new(ListenerState {
            name: spec.name.as_str().into(),
            addr: spec.addr,
            index: Cell::new(index),
            fd: Cell::new(listener.as_raw_fd()),
            retired: Cell::new(false),
            open: Cell::new(0),
            open_per_ip: RefCell::new(HashMap::new()),
        });
        monoio::spawn(accept_loop(self.clone(), state.clone(), listener));
        Some(state)
    }

    /// Applies what the control thread sent since the last tick.
    fn take_commands(self: &Rc<Self>) {
        while let Some(command) = self.mailboxes.take(self.id) {
            match command {
                Command::Apply(next) => self.apply(*next),
            }
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, state: Rc<ListenerState>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        if shard.draining.get() || DRAIN.load(Ordering::Acquire) || state.retired.get() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                let key = per_ip_key(peer.ip());
                let config = shard.config();
                let spec = &config.listeners[state.index.get()];
                match shard.admit(&state, &spec.limits, stream.as_raw_fd(), key) {
                    Some(guard) => {
                        let accepted = (config.clone(), state.index.get());
                        monoio::spawn(serve_guarded(shard.clone(), guard, accepted, stream, peer));
                    }
                    None => drop(stream),
                }
            }
            // Out of fds or memory: back off instead of spinning; existing connections go on.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    // The socket closes when `listener` drops below: nobody may shut it down after that.
    state.fd.set(-1);
}

/// What `max_connections_per_ip` counts: an IPv4 address, or an IPv6 /64 (one subscriber
/// usually holds a whole /64, so counting single v6 addresses would be no limit at all).
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Serves one connection, catching a panic at the task boundary: monoio does not, and an
/// uncaught one would end the shard thread (and black-hole its listener's share of new
/// connections). The panicking connection is dropped and reported with its request id.
async fn serve_guarded(
    shard: Rc<Shard>,
    guard: ConnGuard,
    accepted: (Rc<Active>, usize),
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let slot = guard.slot;
    let served =
        crate::request_path::serve_connection(shard.clone(), guard, accepted, stream, peer);
    let mut served = std::pin::pin!(served);
    if let Err(panic) = CatchUnwind(served.as_mut()).await {
        CONNECTION_PANICS.fetch_add(1, Ordering::Relaxed);
        // Read before anything else runs on this shard: the slot may be reused afterwards.
        let request_id = shard.request_id_in(slot);
        observe::warn(&format!(
            "shard {}: connection from {peer} panicked (request id {request_id:?}): {}; that connection was closed, the shard goes on",
            shard.id,
            panic_message(&*panic)
        ));
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Polls a future inside `catch_unwind`. The future is not polled again after a panic.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Starts the active probes of `active`'s targets that this shard owns (one shard per
/// target); they stop when a newer config replaces `active` (or on drain).
fn start_probes(shard: &Rc<Shard>, active: &Rc<Active>) {
    let cluster = shard.cluster.clone();
    for (u, spec) in active.upstreams.snapshot().upstreams.iter().enumerate() {
        if spec.health.is_none() {
            continue;
        }
        for (t, target) in spec.targets.iter().enumerate() {
            if cluster.prober_of(target.slot) == shard.id {
                let active = active.clone();
                let shard = shard.clone();
                monoio::spawn(async move {
                    let stop = || shard.draining.get() || active.retired.get();
                    crate::upstream::probe::probe_loop(&active.upstreams, u, t, &stop).await;
                });
            }
        }
    }
}

/// The shard's one tick: applies commands from its inbox and backend news from other shards
/// (senders only push; nobody wakes this shard), reaps idle connections, and watches for
/// drain. On drain, stops accepting and lets in-flight requests finish within
/// `drain_timeout` while idle connections are closed.
async fn tick_loop(shard: &Rc<Shard>) {
    let mut last_reap = Instant::now();
    while !DRAIN.load(Ordering::Acquire) {
        shard.take_commands();
        let config = shard.config();
        config.upstreams.health().drain_gossip();
        let now = Instant::now();
        if now.duration_since(last_reap) >= REAP_EVERY {
            last_reap = now;
            shard.close_idle_connections(Some(now));
            config.upstreams.close_stale();
        }
        let tick = config.gossip_interval.min(TICK);
        drop(config);
        monoio::time::sleep(tick).await;
    }
    shard.draining.set(true);
    let config = shard.config();
    for listener in &config.listener_states {
        listener.stop_accepting();
    }
    config.upstreams.clear();
    let deadline = Instant::now() + config.drain_timeout;
    drop(config);
    while shard.open_connections() > 0 && Instant::now() < deadline {
        shard.close_idle_connections(None);
        monoio::time::sleep(TICK).await;
    }
    SHARDS_ALIVE.fetch_sub(1, Ordering::AcqRel);
    observe::info(&format!(
        "shard {}: drained ({} connections still open)",
        shard.id,
        shard.open_connections()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_panicking_task_is_caught_at_its_boundary() {
        let mut panicking = CatchUnwind(Box::pin(async {
            panic!("boom in a connection");
        }));
        match poll_once(&mut panicking) {
            Poll::Ready(Err(panic)) => assert_eq!(panic_message(&*panic), "boom in a connection"),
            _ => panic!("the panic was not caught"),
        }
        let mut fine = CatchUnwind(Box::pin(async { 7 }));
        assert!(matches!(poll_once(&mut fine), Poll::Ready(Ok(7))));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(per_ip_key(a), per_ip_key(b));
        assert_ne!(per_ip_key(a), per_ip_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(per_ip_key(mapped), v4);
    }
}
