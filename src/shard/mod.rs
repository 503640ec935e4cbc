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
use monoio::net::{ListenerOpts, TcpListener};
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

/// How often a shard checks for drain.
const TICK: Duration = Duration::from_millis(5);
/// Idle connections are reaped every 50 ticks (250 ms): idle timeouts are that precise.
const REAP_EVERY_TICKS: u32 = 50;

/// Everything one shard owns. Lives in an `Rc`: never crosses threads.
pub struct Shard {
    pub id: usize,
    pub snapshot: Arc<Snapshot>,
    pub bufs: Rc<BufPool>,
    /// Larger buffers lent to a connection while it streams a large request body.
    pub body_bufs: BufPool,
    pub upstreams: ShardUpstreams,
    pub ids: RequestIds,
    pub draining: Cell<bool>,
    /// Open client connections per listener (for `max_connections`).
    open: Vec<Cell<usize>>,
    /// Open client connections per listener per client address (for `max_connections_per_ip`).
    open_per_ip: Vec<RefCell<HashMap<IpAddr, usize>>>,
    registry: RefCell<Registry>,
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
    listener: usize,
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
        let open = &self.shard.open[self.listener];
        open.set(open.get() - 1);
        self.shard
            .stats()
            .set_open_connections(self.shard.open_connections());
        let mut per_ip = self.shard.open_per_ip[self.listener].borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.peer);
            }
        }
    }
}

impl Shard {
    fn new(id: usize, snapshot: Arc<Snapshot>, cluster: Arc<Cluster>) -> Self {
        let bufs = Rc::new(BufPool::new(1024));
        Shard {
            id,
            upstreams: ShardUpstreams::new(
                snapshot.clone(),
                bufs.clone(),
                cluster,
                id,
                crate::http::random_seed(),
            ),
            open: snapshot.listeners.iter().map(|_| Cell::new(0)).collect(),
            open_per_ip: snapshot
                .listeners
                .iter()
                .map(|_| RefCell::new(HashMap::new()))
                .collect(),
            snapshot,
            bufs,
            body_bufs: BufPool::new(64),
            ids: RequestIds::new(crate::http::random_seed()),
            draining: Cell::new(false),
            registry: RefCell::new(Registry::default()),
        }
    }

    /// Registers a new connection, or `None` when the listener is at `max_connections` or
    /// the client's address at `max_connections_per_ip`.
    fn admit(self: &Rc<Self>, listener: usize, fd: RawFd, peer: IpAddr) -> Option<ConnGuard> {
        let limits = &self.snapshot.listeners[listener].limits;
        let open = &self.open[listener];
        if open.get() >= limits.max_connections {
            return None;
        }
        {
            let mut per_ip = self.open_per_ip[listener].borrow_mut();
            let from_peer = per_ip.entry(peer).or_insert(0);
            if *from_peer >= limits.max_connections_per_ip {
                return None;
            }
            *from_peer += 1;
        }
        open.set(open.get() + 1);
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
            listener,
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
        &self.upstreams.cluster().shard_stats[self.id]
    }

    fn open_connections(&self) -> usize {
        self.open.iter().map(Cell::get).sum()
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

/// What a shard thread reports after binding its listeners.
pub enum Started {
    Ready {
        shard: usize,
        listener_fds: Vec<RawFd>,
    },
    BindFailed {
        listener: usize,
        error: std::io::Error,
    },
    RuntimeFailed {
        shard: usize,
        error: std::io::Error,
    },
}

/// Starts `snapshot.workers` shard threads; each reports once on `started`.
pub fn spawn_shards(
    snapshot: &Arc<Snapshot>,
    cluster: &Arc<Cluster>,
    started: mpsc::Sender<Started>,
) -> Vec<std::thread::JoinHandle<()>> {
    let cores = if snapshot.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    (0..snapshot.workers)
        .map(|id| {
            let snapshot = snapshot.clone();
            let cluster = cluster.clone();
            let started = started.clone();
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || shard_thread(id, core, snapshot, cluster, started))
                .unwrap_or_else(|e| {
                    eprintln!("ringgate: cannot start shard thread {id}: {e}");
                    std::process::exit(1);
                })
        })
        .collect()
}

fn shard_thread(
    id: usize,
    core: Option<core_affinity::CoreId>,
    snapshot: Arc<Snapshot>,
    cluster: Arc<Cluster>,
    started: mpsc::Sender<Started>,
) {
    // Pinning applies to the calling thread only, so it must happen here, not in the spawner.
    let pinned = core.is_some_and(core_affinity::set_for_current);
    let entries = snapshot.io_uring_entries;
    let describe = |driver: &str| {
        let pin = match (core, pinned) {
            (Some(c), true) => format!("pinned to core {}", c.id),
            (Some(c), false) => format!("could not pin to core {}", c.id),
            (None, _) => "not pinned".to_string(),
        };
        observe::info(&format!("shard {id}: {driver} driver, {pin}"));
    };
    let wants_uring = snapshot.io_driver == IoDriver::Auto;
    if wants_uring && monoio::utils::detect_uring() {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                describe("io_uring");
                cluster.shard_stats[id]
                    .driver
                    .store(crate::observe::exchange::DRIVER_IO_URING, Ordering::Relaxed);
                exit_if_panicked(id, || {
                    rt.block_on(run_shard(id, snapshot, cluster, started))
                });
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
            cluster.shard_stats[id]
                .driver
                .store(crate::observe::exchange::DRIVER_EPOLL, Ordering::Relaxed);
            exit_if_panicked(id, || {
                rt.block_on(run_shard(id, snapshot, cluster, started))
            });
        }
        Err(error) => {
            let _ = started.send(Started::RuntimeFailed { shard: id, error });
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

async fn run_shard(
    id: usize,
    snapshot: Arc<Snapshot>,
    cluster: Arc<Cluster>,
    started: mpsc::Sender<Started>,
) {
    let mut listeners = Vec::new();
    for (i, spec) in snapshot.listeners.iter().enumerate() {
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        match TcpListener::bind_with_config(spec.addr, &opts) {
            Ok(l) => listeners.push(l),
            Err(error) => {
                let _ = started.send(Started::BindFailed { listener: i, error });
                return;
            }
        }
    }
    let listener_fds = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let _ = started.send(Started::Ready {
        shard: id,
        listener_fds,
    });
    drop(started);
    SHARDS_ALIVE.fetch_add(1, Ordering::AcqRel);
    let shard = Rc::new(Shard::new(id, snapshot, cluster));
    monoio::spawn(gossip_loop(shard.clone()));
    start_probes(&shard);
    for (i, listener) in listeners.into_iter().enumerate() {
        monoio::spawn(accept_loop(shard.clone(), i, listener));
    }
    wait_for_drain(&shard).await;
}

async fn accept_loop(shard: Rc<Shard>, listener_index: usize, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        if shard.draining.get() || DRAIN.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let key = per_ip_key(peer.ip());
                match shard.admit(listener_index, stream.as_raw_fd(), key) {
                    Some(guard) => {
                        monoio::spawn(serve_guarded(
                            shard.clone(),
                            guard,
                            listener_index,
                            stream,
                            peer,
                        ));
                    }
                    None => drop(stream),
                }
            }
            // Out of fds or memory: back off instead of spinning; existing connections go on.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
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
    listener: usize,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let slot = guard.slot;
    let served =
        crate::request_path::serve_connection(shard.clone(), guard, listener, stream, peer);
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

/// Applies backend news from other shards every `gossip_interval` (no cross-thread wake-ups:
/// senders only push; this shard looks on its own tick).
async fn gossip_loop(shard: Rc<Shard>) {
    let interval = shard.snapshot.gossip_interval;
    while !shard.draining.get() {
        shard.upstreams.health().drain_gossip();
        monoio::time::sleep(interval).await;
    }
}

/// Starts the active probes for the targets this shard owns (one shard per target).
fn start_probes(shard: &Rc<Shard>) {
    let cluster = shard.upstreams.cluster().clone();
    for (u, spec) in shard.snapshot.upstreams.iter().enumerate() {
        if spec.health.is_none() {
            continue;
        }
        for t in 0..spec.targets.len() {
            if cluster.prober_of(spec.first_slot + t) == shard.id {
                let shard = shard.clone();
                monoio::spawn(async move {
                    crate::upstream::probe::probe_loop(&shard.upstreams, u, t, &shard.draining)
                        .await;
                });
            }
        }
    }
}

/// Runs until drain is requested (reaping idle connections on the way), then lets in-flight
/// requests finish within `drain_timeout` while idle connections are closed.
async fn wait_for_drain(shard: &Rc<Shard>) {
    let mut ticks: u32 = 0;
    while !DRAIN.load(Ordering::Acquire) {
        monoio::time::sleep(TICK).await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(REAP_EVERY_TICKS) {
            shard.close_idle_connections(Some(Instant::now()));
            shard.upstreams.close_stale();
        }
    }
    shard.draining.set(true);
    shard.upstreams.clear();
    let deadline = Instant::now() + shard.snapshot.drain_timeout;
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
