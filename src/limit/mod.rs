//! Rate limits and quotas (DESIGN.md §2, §4b): `[rate_limits.NAME]` policies that routes list.
//! Owns each shard's cells ([`ShardLimits`]: one bounded [`table::Table`] per policy, no lock,
//! no shared atomic per request), the admission of a request against its route's policies,
//! the `RateLimit` / `RateLimit-Policy` / `Retry-After` fields, and the usage a shard tells
//! the others (`scope = "global"`) and the cluster sync thread (`scope = "cluster"`).
//! The algorithms are in [`gcra`] and know nothing of requests. Must not touch sockets or
//! wait on anything: a shard only reads its own cells and its inbox.
//!
//! Worst-case overshoot of a global limit, in requests over the limit within one period:
//! `(S − 1) · (burst + 1 + rate · 2·tick / period)` for S shards and the gossip tick (each
//! other shard may spend a full burst plus what it admits before its usage arrives: one tick
//! until it publishes, up to one more until the receiver drains). With the default 5 ms tick,
//! 2 shards and 100/s, burst 20: 22 requests in the worst case, measured in PERF.md. Cluster
//! limits add the same with `sync_interval` in place of the tick, per other node.

pub mod gcra;
pub mod table;

use crate::gossip::usage::{PolicyUsage, Usage, UsageBatch, UsageKind};
use crate::http::RequestHead;
use gcra::{Algorithm, Cell as LimitCell, Clocks, Verdict};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use table::{Place, Table};

/// A route lists at most this many policies.
pub const MAX_POLICIES_PER_ROUTE: usize = 8;

/// What a policy counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The authenticated consumer; requests without one share one bucket.
    Consumer,
    /// The client address (after trusted proxies and the PROXY protocol).
    Ip,
    /// The route: one bucket for everyone on it.
    Route,
    /// A request header's value (lower-case name); requests without it share one bucket.
    Header(Box<[u8]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each shard limits on its own (a process limit is the rate times the shards).
    Shard,
    /// The whole process: shards tell each other their usage every tick.
    Global,
    /// Every ringgate process sharing `[cluster] redis`.
    Cluster,
}

/// A compiled `[rate_limits.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub name: Arc<str>,
    pub key: KeySource,
    pub algorithm: Algorithm,
    pub scope: Scope,
    pub max_keys: usize,
    /// Send `RateLimit` / `RateLimit-Policy` (429s always carry `Retry-After`).
    pub headers: bool,
    /// This policy's `RateLimit-Policy` item, ready to copy: `"name";q=100;w=1`.
    pub policy_item: Box<str>,
}

/// What Redis being unreachable does to cluster limits (`[cluster] on_redis_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// Redis answers: cluster usage arrives every `sync_interval`.
    Synced,
    /// Down: each node enforces its share (every admission counts `nodes` times).
    Local { nodes: u64 },
    /// Down: cluster limits admit everything.
    Open,
    /// Down: cluster limits refuse everything (503).
    Closed,
}

/// What the key of a request is made from.
pub struct KeyInput<'a> {
    pub consumer: Option<&'a str>,
    pub client_ip: IpAddr,
    pub route: &'a str,
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
}

/// The verdicts of a route's policies on an admitted request (for `RateLimit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decisions {
    len: usize,
    items: [(usize, Option<Verdict>); MAX_POLICIES_PER_ROUTE],
}

impl Decisions {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A refused request: which policy, and what it said (`None`: a cluster limit that cannot
/// be checked while Redis is down and `on_redis_down = "closed"`).
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub policy: usize,
    pub verdict: Option<Verdict>,
}

/// Concurrency slots an exchange holds until its end.
#[derive(Default)]
pub struct Held {
    /// (policy, key, weight, whether the key had to share the overflow cell)
    slots: Vec<(Rc<RefCell<PolicyState>>, u64, u64, bool)>,
}

impl Held {
    /// Gives every slot back (the exchange ended, however).
    pub fn release(&mut self) {
        for (state, key, weight, overflow) in self.slots.drain(..) {
            let mut state = state.borrow_mut();
            let state = &mut *state;
            let algorithm = state.spec.algorithm;
            // A key with requests in flight is never at rest, so it kept its cell (slots may
            // move on a reload's trim: look it up by key).
            let place = if overflow {
                Some(Place::Overflow)
            } else {
                state.table.existing(key)
            };
            if let Some(place) = place {
                algorithm.release(state.table.cell(place), weight);
                if state.spec.scope != Scope::Shard {
                    state.table.note_usage(place, -(weight as i64));
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One policy's state on one shard.
pub struct PolicyState {
    pub spec: Arc<PolicySpec>,
    table: Table,
    metrics: Arc<crate::observe::metrics::LimitMetrics>,
}

/// Every policy's cells on one shard, in the order of the running config's policies.
pub struct ShardLimits {
    policies: Vec<Rc<RefCell<PolicyState>>>,
    by_name: HashMap<Arc<str>, usize>,
    mode: Cell<ClusterMode>,
}

/// Keys of shard and global policies: SipHash with a per-process random key (a client
/// cannot aim a key at another's bucket).
fn local_hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    STATE.get_or_init(std::collections::hash_map::RandomState::new)
}

impl PolicySpec {
    /// The request's key under this policy: the same bytes give the same key on every shard,
    /// and (for cluster policies, SHA-256) on every node.
    pub fn key_of(&self, input: &KeyInput) -> u64 {
        let ip;
        let (present, bytes): (bool, &[u8]) = match &self.key {
            KeySource::Consumer => (
                input.consumer.is_some(),
                input.consumer.unwrap_or("").as_bytes(),
            ),
            KeySource::Ip => {
                ip = match input.client_ip.to_canonical() {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                (true, &ip)
            }
            KeySource::Route => (true, input.route.as_bytes()),
            KeySource::Header(name) => match input.head.field(input.buf, name) {
                Some(value) => (true, value),
                None => (false, b""),
            },
        };
        if self.scope == Scope::Cluster {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&[u8::from(present)]);
            ctx.update(bytes);
            let digest = ctx.finish();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest.as_ref()[..8]);
            u64::from_be_bytes(first)
        } else {
            local_hasher().hash_one((present, bytes))
        }
    }
}

impl ShardLimits {
    pub fn new() -> ShardLimits {
        ShardLimits {
            policies: Vec::new(),
            by_name: HashMap::new(),
            mode: Cell::new(ClusterMode::Synced),
        }
    }

    /// The state for a new config: policies that kept their name, key and algorithm kind keep
    /// their cells (an exhausted key stays exhausted; new parameters apply from the next
    /// request); others start empty.
    pub fn rebuild(
        &self,
        specs: &[Arc<PolicySpec>],
        metrics: &crate::observe::metrics::ShardMetrics,
    ) -> ShardLimits {
        let now = Clocks::now();
        let mut policies = Vec::with_capacity(specs.len());
        let mut by_name = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let kept = self
                .by_name
                .get(&spec.name)
                .map(|&j| self.policies[j].clone())
                .filter(|old| {
                    let old = old.borrow();
                    old.spec.key == spec.key
                        && old.spec.scope == spec.scope
                        && std::mem::discriminant(&old.spec.algorithm)
                            == std::mem::discriminant(&spec.algorithm)
                });
            let state = match kept {
                Some(state) => {
                    {
                        let mut s = state.borrow_mut();
                        // GCRA debt is kept in requests, not in time: a key that used 10
                        // keeps having used 10 under the new rate.
                        if let (
                            Algorithm::Gcra {
                                interval_us: old, ..
                            },
                            Algorithm::Gcra {
                                interval_us: new, ..
                            },
                        ) = (s.spec.algorithm, spec.algorithm)
                            && old != new
                        {
                            s.table.for_each_cell(|cell| {
                                if let LimitCell::Gcra { tat } = cell
                                    && *tat > now.mono_us
                                {
                                    let debt = u128::from(*tat - now.mono_us);
                                    let scaled = debt * u128::from(new) / u128::from(old.max(1));
                                    *tat =
                                        now.mono_us + scaled.min(u128::from(u64::MAX / 2)) as u64;
                                }
                            });
                        }
                        s.spec = spec.clone();
                        s.table.set_max_keys(spec.max_keys);
                        s.table.trim(&spec.algorithm, now);
                    }
                    state
                }
                None => Rc::new(RefCell::new(PolicyState {
                    spec: spec.clone(),
                    table: Table::new(spec.max_keys, &spec.algorithm, now),
                    metrics: metrics.limit(&spec.name),
                })),
            };
            by_name.insert(spec.name.clone(), i);
            policies.push(state);
        }
        ShardLimits {
            policies,
            by_name,
            mode: Cell::new(self.mode.get()),
        }
    }

    /// The first `header:NAME` key among `route_policies` that the request sends more than
    /// once: which copy names the bucket would be the client's choice, so it is refused.
    pub fn ambiguous_key(&self, route_policies: &[usize], input: &KeyInput) -> Option<Box<[u8]>> {
        route_policies.iter().find_map(|&p| {
            let state = self.policies[p].borrow();
            match &state.spec.key {
                KeySource::Header(name) if input.head.is_repeated(input.buf, name) => {
                    Some(name.clone())
                }
                _ => None,
            }
        })
    }

    pub fn set_mode(&self, mode: ClusterMode) {
        self.mode.set(mode);
    }

    /// Admits a request against every policy in `route_policies` (indices into the running
    /// config's policies), or refuses it at the first that says no: then no policy is
    /// charged. Concurrency slots go to `held` until the exchange ends.
    pub fn admit(
        &self,
        route_policies: &[usize],
        input: &KeyInput,
        now: Clocks,
        held: &mut Held,
    ) -> Result<Decisions, Refusal> {
        let mut decisions = Decisions::default();
        // (policy, place, key, the cell before, weight) to commit or roll back.
        let mut taken: [(usize, Place, u64, Option<LimitCell>, u64); MAX_POLICIES_PER_ROUTE] =
            [(0, Place::Overflow, 0, None, 0); MAX_POLICIES_PER_ROUTE];
        let mut refusal = None;
        for (n, &p) in route_policies
            .iter()
            .enumerate()
            .take(MAX_POLICIES_PER_ROUTE)
        {
            let mut state = self.policies[p].borrow_mut();
            let state = &mut *state;
            let weight = match (state.spec.scope, self.mode.get()) {
                (Scope::Cluster, ClusterMode::Open) => {
                    decisions.items[decisions.len] = (p, None);
                    decisions.len += 1;
                    continue;
                }
                (Scope::Cluster, ClusterMode::Closed) => {
                    refusal = Some(Refusal {
                        policy: p,
                        verdict: None,
                    });
                    break;
                }
                (Scope::Cluster, ClusterMode::Local { nodes }) => nodes.max(1),
                _ => 1,
            };
            let key = state.spec.key_of(input);
            let algorithm = state.spec.algorithm;
            let place = state.table.place(key, &algorithm, now);
            let cell = state.table.cell(place);
            let before = *cell;
            let verdict = algorithm.check(cell, now, weight);
            decisions.items[decisions.len] = (p, Some(verdict));
            decisions.len += 1;
            if !verdict.allowed {
                refusal = Some(Refusal {
                    policy: p,
                    verdict: Some(verdict),
                });
                break;
            }
            taken[n] = (p, place, key, Some(before), weight);
        }
        let taken = &taken[..route_policies.len().min(MAX_POLICIES_PER_ROUTE)];
        if let Some(refusal) = refusal {
            for &(p, place, _, before, _) in taken.iter() {
                if let Some(before) = before {
                    *self.policies[p].borrow_mut().table.cell(place) = before;
                }
            }
            let state = self.policies[refusal.policy].borrow();
            state.metrics.rejected.add(1);
            return Err(refusal);
        }
        for &(p, place, key, before, weight) in taken {
            if before.is_none() {
                continue;
            }
            let mut state = self.policies[p].borrow_mut();
            state.metrics.admitted.add(1);
            if state.spec.scope != Scope::Shard {
                state.table.note_usage(place, weight as i64);
            }
            if matches!(state.spec.algorithm, Algorithm::Concurrency { .. }) {
                let overflow = place == Place::Overflow;
                held.slots
                    .push((self.policies[p].clone(), key, weight, overflow));
            }
        }
        Ok(decisions)
    }

    pub fn spec(&self, policy: usize) -> Arc<PolicySpec> {
        self.policies[policy].borrow().spec.clone()
    }

    /// Usage admitted here since the last call, for the other shards (global and cluster
    /// policies) and the cluster sync thread (cluster policies). `None` when there is none.
    pub fn take_usage(&self, from: usize, now: Clocks) -> Option<UsageBatch> {
        let mut batch = UsageBatch {
            from,
            policies: Vec::new(),
        };
        for state in &self.policies {
            let mut state = state.borrow_mut();
            let state = &mut *state;
            state.metrics.keys.set(state.table.len() as u64);
            if state.spec.scope == Scope::Shard {
                continue;
            }
            let algorithm = state.spec.algorithm;
            let window = algorithm.window(now);
            let mut entries = Vec::new();
            state.table.take_usage(|key, n, _| {
                entries.push(Usage { key, n, window });
            });
            if !entries.is_empty() {
                batch.policies.push(PolicyUsage {
                    name: state.spec.name.clone(),
                    kind: usage_kind(&algorithm),
                    cluster: state.spec.scope == Scope::Cluster,
                    period_us: match algorithm {
                        Algorithm::Gcra {
                            interval_us,
                            tolerance_us,
                        } => (interval_us + tolerance_us).max(1),
                        Algorithm::FixedWindow { period_us, .. } => period_us,
                        Algorithm::Concurrency { .. } => 0,
                    },
                    entries,
                });
            }
        }
        (!batch.policies.is_empty()).then_some(batch)
    }

    /// Charges usage from elsewhere to this shard's cells.
    pub fn charge(&self, batch: &UsageBatch, now: Clocks) {
        for usage in &batch.policies {
            let Some(&p) = self.by_name.get(&usage.name) else {
                continue;
            };
            let mut state = self.policies[p].borrow_mut();
            let state = &mut *state;
            let algorithm = state.spec.algorithm;
            let cluster = state.spec.scope == Scope::Cluster;
            if state.spec.scope == Scope::Shard
                || cluster != usage.cluster
                || usage_kind(&algorithm) != usage.kind
            {
                continue;
            }
            for u in &usage.entries {
                if let Some(place) = state.table.existing_or_place(u.key, &algorithm, now) {
                    algorithm.charge(state.table.cell(place), now, u.n, u.window);
                }
            }
        }
    }
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits::new()
    }
}

fn usage_kind(algorithm: &Algorithm) -> UsageKind {
    match algorithm {
        Algorithm::Gcra { .. } => UsageKind::Admissions,
        Algorithm::FixedWindow { .. } => UsageKind::WindowCounts,
        Algorithm::Concurrency { .. } => UsageKind::InFlight,
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Appends the `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers
/// structured fields) for the policies that send headers.
pub fn push_fields(out: &mut Vec<u8>, limits: &ShardLimits, decisions: &Decisions) {
    let items = &decisions.items[..decisions.len];
    let shown = |&&(p, v): &&(usize, Option<Verdict>)| {
        v.is_some() && limits.policies[p].borrow().spec.headers
    };
    if !items.iter().any(|i| shown(&i)) {
        return;
    }
    out.extend_from_slice(b"ratelimit-policy: ");
    for (i, (p, _)) in items.iter().filter(shown).enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(limits.policies[*p].borrow().spec.policy_item.as_bytes());
    }
    out.extend_from_slice(b"\r\nratelimit: ");
    for (i, (p, v)) in items.iter().filter(shown).enumerate() {
        let Some(v) = v else { continue };
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        push_item_name(out, &limits.policies[*p].borrow().spec.name);
        out.extend_from_slice(b";r=");
        crate::http::push_decimal(out, v.remaining);
        out.extend_from_slice(b";t=");
        crate::http::push_decimal(out, ceil_secs(v.reset_us));
    }
    out.extend_from_slice(b"\r\n");
}

/// The fields of a refusal: `Retry-After`, and the refusing policy's `RateLimit-Policy` and
/// `RateLimit` when it sends headers.
pub fn push_refusal_fields(out: &mut Vec<u8>, limits: &ShardLimits, refusal: &Refusal) {
    out.extend_from_slice(b"retry-after: ");
    crate::http::push_decimal(out, retry_after_secs(refusal));
    out.extend_from_slice(b"\r\n");
    if refusal.verdict.is_some() {
        let mut one = Decisions::default();
        one.items[0] = (refusal.policy, refusal.verdict);
        one.len = 1;
        push_fields(out, limits, &one);
    }
}

/// `Retry-After` for a refusal: whole seconds, at least 1.
pub fn retry_after_secs(refusal: &Refusal) -> u64 {
    refusal.verdict.map_or(1, |v| ceil_secs(v.retry_us).max(1))
}

/// A policy name as a structured-field string (names are checked to be printable ASCII
/// without `"` or `\` at load).
fn push_item_name(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

/// The `RateLimit-Policy` item of a policy: `"name";q=QUOTA[;w=WINDOW_SECONDS]`.
pub fn policy_item(name: &str, quota: u64, window_secs: Option<u64>) -> Box<str> {
    let mut item = format!("\"{name}\";q={quota}");
    if let Some(w) = window_secs {
        item.push_str(&format!(";w={w}"));
    }
    item.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeadLimits;

    fn spec(name: &str, key: KeySource, algorithm: Algorithm, scope: Scope) -> Arc<PolicySpec> {
        Arc::new(PolicySpec {
            name: name.into(),
            key,
            algorithm,
            scope,
            max_keys: 100,
            headers: true,
            policy_item: policy_item(name, 2, Some(1)),
        })
    }

    fn two_per_second() -> Algorithm {
        Algorithm::Gcra {
            interval_us: 500_000,
            tolerance_us: 500_000,
        }
    }

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 100,
            max_uri_bytes: 4096,
        };
        assert!(h.parse(raw, &limits).unwrap());
        h
    }

    #[test]
    fn every_policy_must_admit_and_a_refusal_charges_none() {
        let metrics = crate::observe::metrics::ShardMetrics::default();
        let specs = vec![
            spec("wide", KeySource::Route, two_per_second(), Scope::Shard),
            spec(
                "narrow",
                KeySource::Header(b"x-user".to_vec().into()),
                Algorithm::FixedWindow {
                    limit: 1,
                    period_us: 3_600_000_000,
                },
                Scope::Shard,
            ),
        ];
        let limits = ShardLimits::new().rebuild(&specs, &metrics);
        let raw_a = b"GET / HTTP/1.1\r\nHost: h\r\nX-User: a\r\n\r\n";
        let raw_b = b"GET / HTTP/1.1\r\nHost: h\r\nX-User: b\r\n\r\n";
        let (ha, hb) = (head(raw_a), head(raw_b));
        let input = |buf: &'static [u8], head| KeyInput {
            consumer: None,
            client_ip: "127.0.0.1".parse().unwrap(),
            route: "r",
            buf,
            head,
        };
        let now = Clocks::now();
        let mut held = Held::default();
        let ok = limits
            .admit(&[0, 1], &input(raw_a, &ha), now, &mut held)
            .unwrap();
        let mut fields = Vec::new();
        push_fields(&mut fields, &limits, &ok);
        let fields = String::from_utf8(fields).unwrap();
        // "narrow"'s window is the UTC hour: its reset is whatever is left of it.
        assert!(
            fields.starts_with("ratelimit-policy: \"wide\";q=2;w=1, \"narrow\";q=2;w=1\r\nratelimit: \"wide\";r=1;t=1, \"narrow\";r=0;t="),
            "{fields}"
        );
        // "narrow" refuses a's second request: "wide" is not charged for it.
        let refused = limits
            .admit(&[0, 1], &input(raw_a, &ha), now, &mut held)
            .unwrap_err();
        assert_eq!(refused.policy, 1);
        assert!((1..=3600).contains(&retry_after_secs(&refused)));
        // b still gets "wide"'s last token.
        assert!(
            limits
                .admit(&[0, 1], &input(raw_b, &hb), now, &mut held)
                .is_ok()
        );
        assert!(
            limits
                .admit(&[0], &input(raw_b, &hb), now, &mut held)
                .is_err()
        );
        assert_eq!(metrics.limit("narrow").rejected.get(), 1);
    }

    #[test]
    fn usage_crosses_shards_and_reload_keeps_cells() {
        let metrics = crate::observe::metrics::ShardMetrics::default();
        let specs = vec![spec("g", KeySource::Route, two_per_second(), Scope::Global)];
        let a = ShardLimits::new().rebuild(&specs, &metrics);
        let b = ShardLimits::new().rebuild(&specs, &metrics);
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = head(raw);
        let input = KeyInput {
            consumer: None,
            client_ip: "::1".parse().unwrap(),
            route: "r",
            buf: raw,
            head: &h,
        };
        let now = Clocks::now();
        let mut held = Held::default();
        assert!(a.admit(&[0], &input, now, &mut held).is_ok());
        assert!(a.admit(&[0], &input, now, &mut held).is_ok());
        let batch = a.take_usage(0, now).unwrap();
        assert!(a.take_usage(0, now).is_none());
        b.charge(&batch, now);
        assert!(
            b.admit(&[0], &input, now, &mut held).is_err(),
            "a spent both"
        );
        // A reload with a new rate keeps the exhausted cell.
        let faster = vec![spec(
            "g",
            KeySource::Route,
            Algorithm::Gcra {
                interval_us: 400_000,
                tolerance_us: 400_000,
            },
            Scope::Global,
        )];
        let a2 = a.rebuild(&faster, &metrics);
        assert!(a2.admit(&[0], &input, now, &mut held).is_err());
    }

    #[test]
    fn concurrency_slots_are_held_until_released() {
        let metrics = crate::observe::metrics::ShardMetrics::default();
        let specs = vec![spec(
            "c",
            KeySource::Consumer,
            Algorithm::Concurrency { limit: 1 },
            Scope::Shard,
        )];
        let limits = ShardLimits::new().rebuild(&specs, &metrics);
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = head(raw);
        let input = KeyInput {
            consumer: Some("acme"),
            client_ip: "::1".parse().unwrap(),
            route: "r",
            buf: raw,
            head: &h,
        };
        let now = Clocks::now();
        let (mut first, mut second) = (Held::default(), Held::default());
        assert!(limits.admit(&[0], &input, now, &mut first).is_ok());
        assert!(limits.admit(&[0], &input, now, &mut second).is_err());
        assert!(second.is_empty());
        first.release();
        assert!(limits.admit(&[0], &input, now, &mut second).is_ok());
        second.release();

        // One key per shard: "acme" in flight holds the only cell, so others share the
        // overflow cell, and giving a slot back gives back the overflow's.
        let narrow = vec![Arc::new(PolicySpec {
            max_keys: 1,
            ..(*specs[0]).clone()
        })];
        let limits = ShardLimits::new().rebuild(&narrow, &metrics);
        let as_consumer = |name: &'static str| KeyInput {
            consumer: Some(name),
            ..input
        };
        let (mut a, mut b, mut c) = (Held::default(), Held::default(), Held::default());
        assert!(
            limits
                .admit(&[0], &as_consumer("acme"), now, &mut a)
                .is_ok()
        );
        assert!(limits.admit(&[0], &as_consumer("bob"), now, &mut b).is_ok());
        assert!(
            limits
                .admit(&[0], &as_consumer("carol"), now, &mut c)
                .is_err()
        );
        b.release();
        assert!(
            limits
                .admit(&[0], &as_consumer("carol"), now, &mut c)
                .is_ok()
        );
    }
}
