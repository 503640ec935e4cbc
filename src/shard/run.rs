//! The threads that run shards: start-up (pinning, runtime, driver), the accept loops, the
//! per-connection panic boundary, applying a new config, probes, and the one tick (inbox,
//! gossip, reaping, drain). Hands each connection to [`crate::request_path`].

use super::state::*;
use crate::config::IoDriver;
use crate::observe;
use crate::upstream::Cluster;
use crate::upstream::probe::{ProbeCounts, judge, probe_once};
use monoio::net::TcpListener;
use monoio::time::{Duration, Instant};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

/// The longest a shard goes without looking at its inbox, gossip and drain.
pub(super) const TICK: Duration = Duration::from_millis(5);
/// The longest tick of a shard with no connection (an accept wakes it at once).
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Idle connections are reaped this often: idle timeouts are that precise.
pub(super) const REAP_EVERY: Duration = Duration::from_millis(250);

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
                    observe::log::line(
                        observe::log::Level::Error,
                        &format!("cannot start shard thread {id}: {e}"),
                    );
                    std::process::exit(1);
                })
        })
        .collect()
}

/// What a shard thread is started with besides its first config.
pub(super) struct ShardParts {
    pub(super) id: usize,
    pub(super) cluster: Arc<Cluster>,
    pub(super) mailboxes: Arc<Mailboxes>,
    pub(super) started: mpsc::Sender<Started>,
}

pub(super) fn shard_thread(
    core: Option<core_affinity::CoreId>,
    first: Reconfigure,
    parts: ShardParts,
) {
    let id = parts.id;
    // Pinning applies to the calling thread only, so it must happen here, not in the spawner.
    let pinned = core.is_some_and(core_affinity::set_for_current);
    observe::log::mark_shard_thread();
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
pub(super) fn exit_if_panicked(id: usize, run: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        SHARDS_ALIVE.fetch_sub(1, Ordering::AcqRel);
        observe::warn(&format!(
            "shard {id} died: {}; exiting (status 70) so a supervisor restarts the gateway",
            panic_message(&*panic)
        ));
        std::process::exit(70);
    }
}

pub(super) async fn run_shard(first: Reconfigure, parts: ShardParts, legacy_driver: bool) {
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
    pub(super) fn apply(self: &Rc<Self>, next: Reconfigure) {
        let old = self.config();
        let Reconfigure {
            snapshot,
            generation,
            listeners: plans,
        } = next;
        let mut listeners = Vec::with_capacity(plans.len());
        for plan in plans {
            let (index, state) = match plan {
                ListenerPlan::Bind { index, socket } => (
                    index,
                    self.start_listener(index, &snapshot.listeners[index], socket),
                ),
                ListenerPlan::Keep {
                    index,
                    running_name,
                } => (index, old.listener_named(&running_name)),
            };
            let Some(state) = state else {
                observe::warn(&format!(
                    "shard {}: listener {:?} has no socket on this shard",
                    self.id, snapshot.listeners[index].name
                ));
                continue;
            };
            state.index.set(index);
            *state.name.borrow_mut() = snapshot.listeners[index].name.as_str().into();
            listeners.push(state);
        }
        let mut retired = Vec::new();
        for gone in old.listener_states.iter() {
            if !listeners.iter().any(|l| Rc::ptr_eq(l, gone)) {
                gone.retired.set(true);
                gone.stop_accepting();
                retired.push(gone.id);
            }
        }
        self.close_idle_connections_of(&retired);
        let metrics = self.metrics();
        let active = Rc::new(Active {
            route_metrics: snapshot
                .routes
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            upstreams: old.upstreams.rebuild(snapshot.clone()),
            auth: crate::auth::ShardAuth::new(&snapshot.auth),
            injection_counters: injection_counters(metrics, &snapshot),
            limits: old.limits.rebuild(&snapshot.rate_limits, metrics),
            snapshot,
            generation,
            listener_states: listeners,
        });
        *self.active.borrow_mut() = active;
        drop(old);
        start_probes(self);
        self.stats()
            .config_generation
            .store(generation, Ordering::Relaxed);
    }

    /// Starts accepting on a socket the control thread bound for this shard.
    pub(super) fn start_listener(
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
        let id = self.next_listener_id.get();
        self.next_listener_id.set(id.wrapping_add(1));
        let state = Rc::new(ListenerState {
            name: RefCell::new(spec.name.as_str().into()),
            id,
            index: Cell::new(index),
            fd: Cell::new(listener.as_raw_fd()),
            retired: Cell::new(false),
            open: Cell::new(0),
            open_per_ip: RefCell::new(HashMap::new()),
            metrics: self.metrics().listener(&spec.name),
        });
        monoio::spawn(accept_loop(self.clone(), state.clone(), listener));
        Some(state)
    }

    /// Applies what the control thread sent since the last tick.
    pub(super) fn take_commands(self: &Rc<Self>) {
        while let Some(command) = self.mailboxes.take(self.id) {
            match command {
                Command::Apply(next) => self.apply(*next),
                Command::Jwks { url, keys } => self.set_jwks(url, keys),
                Command::SecretFile { path, value } => self.set_secret_file(path, value),
                Command::ClusterMode(mode) => self.config().limits.set_mode(mode),
            }
        }
    }
}

pub(super) async fn accept_loop(shard: Rc<Shard>, state: Rc<ListenerState>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        // First: a reload that waited in the inbox may retire this very listener.
        shard.wake_from_idle();
        if shard.draining.get() || DRAIN.load(Ordering::Acquire) || state.retired.get() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                let key = per_ip_key(peer.ip());
                let config = shard.config();
                let spec = &config.listeners[state.index.get()];
                // Before anything else (connection limits, TLS): a denied peer costs a close.
                // Behind a PROXY header the rules are for the client it names (checked there).
                if !spec.proxy_protocol && !spec.ip_rules.permits(peer.ip()) {
                    state.metrics.ip_denied.add(1);
                    drop(stream);
                    continue;
                }
                // Behind a PROXY header the peer is the balancer: its connections count
                // per client once the header names one, never against each other.
                let mut limits = spec.limits;
                if spec.proxy_protocol {
                    limits.max_connections_per_ip = usize::MAX;
                }
                match shard.admit(&state, &limits, stream.as_raw_fd(), key) {
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

/// Serves one connection, catching a panic at the task boundary: monoio does not, and an
/// uncaught one would end the shard thread (and black-hole its listener's share of new
/// connections). The panicking connection is dropped and reported with its request id.
pub(super) async fn serve_guarded(
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

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Polls a future inside `catch_unwind`. The future is not polled again after a panic.
pub(super) struct CatchUnwind<F>(F);

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

/// Starts a probe loop for every target of the current config that has active health
/// checks, is probed by this shard, and has no loop yet. Loops are keyed by the target's slot
/// and outlive reloads.
pub(super) fn start_probes(shard: &Rc<Shard>) {
    let config = shard.config();
    for u in &config.snapshot.upstreams {
        if u.health.is_none() {
            continue;
        }
        for target in &u.targets {
            let owned = shard.cluster.prober_of(target.slot) == shard.id;
            if owned && shard.probing.borrow_mut().insert(target.slot) {
                monoio::spawn(probe_loop(shard.clone(), target.slot));
            }
        }
    }
}

/// Probes the target in `slot` every `interval` (plus jitter) while the current config
/// gives it active health checks; the config is looked up afresh for each probe, so none is
/// kept alive in between, and a changed interval or threshold applies at the next probe.
async fn probe_loop(shard: Rc<Shard>, slot: usize) {
    let mut counts = ProbeCounts::default();
    while let Some(wait) = shard.next_probe_in(slot) {
        monoio::time::sleep(wait).await;
        let Some((config, u, t)) = shard.probed_target(slot) else {
            break;
        };
        let Some(health) = config.snapshot.upstreams[u].health.clone() else {
            break;
        };
        // A disabled target is in maintenance: not checked until it is enabled again.
        if config.upstreams.view(u, t).admin() == crate::gossip::AdminState::Disabled {
            counts = ProbeCounts::default();
            continue;
        }
        let probed = config.snapshot.upstreams[u].targets[t].addr;
        let result = probe_once(&config.upstreams, u, t, &health).await;
        drop(config);
        // A reload may have removed the check while the probe ran: then no verdict.
        let Some((config, u, t)) = shard.probed_target(slot) else {
            break;
        };
        // Or moved the target to another address (its name resolves elsewhere): the old
        // address's answer says nothing about the new one, which starts from scratch.
        if config.snapshot.upstreams[u].targets[t].addr != probed {
            counts = ProbeCounts::default();
            continue;
        }
        judge(&config.upstreams, slot, &health, &mut counts, result);
    }
    shard.probing.borrow_mut().remove(&slot);
}

impl Shard {
    /// The current config, and where in it the target of `slot` is, while it has active
    /// health checks and the shard is not draining.
    fn probed_target(&self, slot: usize) -> Option<(Rc<Active>, usize, usize)> {
        if self.draining.get() {
            return None;
        }
        let config = self.config();
        let (u, t) = config
            .snapshot
            .upstreams
            .iter()
            .enumerate()
            .find_map(|(u, spec)| {
                spec.health.as_ref()?;
                let t = spec.targets.iter().position(|t| t.slot == slot)?;
                Some((u, t))
            })?;
        Some((config, u, t))
    }

    fn next_probe_in(&self, slot: usize) -> Option<Duration> {
        let (config, u, _) = self.probed_target(slot)?;
        let health = config.snapshot.upstreams[u].health.as_ref()?;
        let jitter = config.upstreams.jitter_ms(health.jitter.as_millis() as u64);
        Some(health.interval + Duration::from_millis(jitter))
    }
}

/// The shard's one tick: applies commands from its inbox and backend news from other shards
/// (senders only push; nobody wakes this shard), reaps idle connections, and watches for
/// drain. On drain, stops accepting and lets in-flight requests finish within
/// `drain_timeout` while idle connections are closed.
pub(super) async fn tick_loop(shard: &Rc<Shard>) {
    let mut last_reap = Instant::now();
    let mut idle_tick = None;
    while !DRAIN.load(Ordering::Acquire) {
        let busy = shard.catch_up();
        shard.flush_log();
        let config = shard.config();
        let now = Instant::now();
        if now.duration_since(last_reap) >= REAP_EVERY {
            last_reap = now;
            shard.close_idle_connections(Some(now));
            config.upstreams.close_stale();
        }
        let busy_tick = config.gossip_interval.min(TICK);
        drop(config);
        // With no connection, nothing here is urgent: the tick doubles up to IDLE_TICK, and
        // an accept catches up at once (so what it serves is as fresh as on a busy shard).
        // Rate-limit usage still flowing in (other shards serve a global key) is work too:
        // an inbox drained only every IDLE_TICK would overflow.
        idle_tick = if shard.open_connections() == 0 && !busy {
            Some(idle_tick.map_or(busy_tick, |t: Duration| (t * 2).min(IDLE_TICK)))
        } else {
            None
        };
        let tick = idle_tick.unwrap_or(busy_tick);
        shard.idle.set(tick > busy_tick);
        sleep_unless_woken(shard, tick).await;
    }
    // From here an accept must not apply what waits in the inbox (a reload's new listener
    // would start accepting on a draining shard).
    shard.idle.set(false);
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
    shard.flush_log();
    SHARDS_ALIVE.fetch_sub(1, Ordering::AcqRel);
    observe::info(&format!(
        "shard {}: drained ({} connections still open)",
        shard.id,
        shard.open_connections()
    ));
}

/// Sleeps `tick`; an idle shard's longer sleep ends early when an accept wakes it
/// ([`Shard::wake_from_idle`]).
async fn sleep_unless_woken(shard: &Shard, tick: Duration) {
    if !shard.idle.get() {
        monoio::time::sleep(tick).await;
        return;
    }
    let mut sleep = std::pin::pin!(monoio::time::sleep(tick));
    std::future::poll_fn(|cx| {
        if !shard.idle.get() {
            return std::task::Poll::Ready(());
        }
        shard.ticker.set(Some(cx.waker().clone()));
        sleep.as_mut().poll(cx)
    })
    .await;
    shard.ticker.set(None);
}

impl Shard {
    /// The tick's inbound work: commands, rate-limit usage, backend news. True when usage
    /// is still flowing.
    pub(super) fn catch_up(self: &Rc<Self>) -> bool {
        self.take_commands();
        let busy = self.exchange_usage();
        self.config().upstreams.health().drain_gossip();
        busy
    }

    /// A connection arrived on an idle shard: apply what waited, and tick at full rate again.
    pub(super) fn wake_from_idle(self: &Rc<Self>) {
        if self.idle.replace(false) && !DRAIN.load(Ordering::Acquire) {
            self.catch_up();
            if let Some(waker) = self.ticker.take() {
                waker.wake();
            }
        }
    }
}

/// Handles of every (route, consumer, secret) injection counter of a config, resolved once
/// here so the request path counts without a lookup.
fn injection_counters(
    metrics: &crate::observe::metrics::ShardMetrics,
    snapshot: &crate::config::Snapshot,
) -> Vec<Vec<Arc<crate::observe::metrics::Counter>>> {
    let consumers: Vec<&str> = snapshot
        .auth
        .consumers
        .iter()
        .map(|c| c.name.as_str())
        .chain([""])
        .collect();
    snapshot
        .routes
        .iter()
        .map(|route| match &route.injections {
            None => Vec::new(),
            Some(injections) => injections
                .all()
                .flat_map(|i| {
                    consumers
                        .iter()
                        .map(|consumer| metrics.injection(&route.name, consumer, &i.reference))
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::net::IpAddr;
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
