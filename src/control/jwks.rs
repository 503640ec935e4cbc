//! The JWKS fetcher: a control-side thread that fetches every `jwks_url` of the running
//! config, refreshes it every `jwks_refresh`, refetches at most once per 10 s when a shard
//! met an unknown `kid`, and delivers each new key set to every shard through its inbox.
//! A failed fetch keeps the last good set (logged and counted); a URL never fetched leaves
//! its routes answering 503.

use super::reload::ControlPlane;
use crate::auth::KeySource;
use crate::auth::jwt::{Algorithm, KeySet};
use crate::shard::Command;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the fetcher looks for due work.
const TICK: Duration = Duration::from_millis(100);
/// An unknown `kid` refetches at most this often per URL.
const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// First retry after a failure while no keys were ever fetched (doubling up to the refresh).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Every algorithm: a URL's key set is shared by the providers that name it, each of which
/// still applies its own allow-list when verifying.
const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Default)]
struct UrlState {
    keys: Option<Arc<KeySet>>,
    body: Vec<u8>,
    last_attempt: Option<Instant>,
    next_due: Option<Instant>,
    retry: Duration,
    /// A fetch of this URL is running (each URL has its own fetch thread, so a slow or
    /// hanging server delays only its own providers).
    in_flight: bool,
}

/// Fetch counters by URL, for `/metrics`.
#[derive(Default, Clone, Copy)]
pub struct FetchStats {
    pub ok: u64,
    pub failed: u64,
    pub has_keys: bool,
}

/// A finished fetch: the URL, the provider it is reported under, and the body or the error.
type Fetched = (String, String, Result<Vec<u8>, String>);

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("jwks".into())
        .spawn(move || run(&plane))
        .map(|_| ())
}

fn run(plane: &ControlPlane) {
    let mut states: HashMap<String, UrlState> = HashMap::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Fetched>();
    loop {
        if crate::shard::DRAIN.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        while let Ok((url, provider, result)) = done_rx.try_recv() {
            if let Some(state) = states.get_mut(&url) {
                state.in_flight = false;
                let refresh = refresh_of(plane, &url);
                settle(plane, &provider, &url, refresh, state, result);
            }
        }
        let mut wanted = HashSet::new();
        while let Some(url) = plane.cluster.jwks_wanted.pop() {
            wanted.insert(url);
        }
        let snapshot = plane.current().snapshot;
        let mut in_use = HashSet::new();
        for provider in &snapshot.auth.providers {
            let KeySource::Url(source) = &provider.keys else {
                continue;
            };
            if !in_use.insert(source.url.clone()) {
                continue;
            }
            let state = states.entry(source.url.clone()).or_default();
            let now = Instant::now();
            let due = state.next_due.is_none_or(|at| now >= at);
            let asked = wanted.contains(source.url.as_str())
                && state
                    .last_attempt
                    .is_none_or(|at| now.duration_since(at) >= REFETCH_EVERY);
            if (due || asked) && !state.in_flight {
                state.in_flight = true;
                state.last_attempt = Some(now);
                spawn_fetch(source.clone(), provider.name.clone(), done_tx.clone());
            }
        }
        states.retain(|url, _| in_use.contains(url));
        std::thread::sleep(TICK);
    }
}

/// The refresh interval of the provider that names `url` in the running config.
fn refresh_of(plane: &ControlPlane, url: &str) -> Duration {
    plane
        .current()
        .snapshot
        .auth
        .providers
        .iter()
        .find_map(|p| match &p.keys {
            KeySource::Url(u) if u.url == url => Some(u.refresh),
            _ => None,
        })
        .unwrap_or(Duration::from_secs(300))
}

fn spawn_fetch(
    source: crate::auth::JwksUrl,
    provider: String,
    done: std::sync::mpsc::Sender<Fetched>,
) {
    let spawned = std::thread::Builder::new()
        .name("jwks-fetch".into())
        .spawn(move || {
            let result =
                crate::auth::fetch::fetch(&source.parts, source.tls.as_deref(), source.max_bytes);
            let _ = done.send((source.url, provider, result));
        });
    if let Err(e) = spawned {
        crate::observe::warn(&format!("jwks: cannot start a fetch thread: {e}"));
    }
}

/// Applies a finished fetch: a new key set goes to every shard; a failure keeps the last
/// good one and schedules a retry.
fn settle(
    plane: &ControlPlane,
    provider: &str,
    url: &str,
    refresh: Duration,
    state: &mut UrlState,
    fetched: Result<Vec<u8>, String>,
) {
    let now = Instant::now();
    let fetched = fetched.and_then(|body| {
        if state.keys.is_some() && body == state.body {
            return Ok(None);
        }
        KeySet::from_jwks(&body, &ALL).map(|keys| Some((body, keys)))
    });
    let mut stats = plane.jwks_stats.lock().unwrap_or_else(|e| e.into_inner());
    let entry = stats.entry(url.to_string()).or_default();
    match fetched {
        Ok(changed) => {
            entry.ok += 1;
            entry.has_keys = true;
            drop(stats);
            state.next_due = Some(now + refresh);
            state.retry = FIRST_RETRY;
            if let Some((body, keys)) = changed {
                let keys = Arc::new(keys);
                state.body = body;
                state.keys = Some(keys.clone());
                for shard in 0..plane.mailboxes.len() {
                    plane.send(
                        shard,
                        Command::Jwks {
                            url: url.into(),
                            keys: keys.clone(),
                        },
                    );
                }
            }
        }
        Err(e) => {
            entry.failed += 1;
            drop(stats);
            let kept = if state.keys.is_some() {
                "keeping the last good keys"
            } else {
                "its routes answer 503 until a fetch succeeds"
            };
            crate::observe::warn(&format!(
                "jwt.{provider}.jwks_url: fetch failed: {e}; {kept}"
            ));
            state.retry = (state.retry * 2).clamp(FIRST_RETRY, refresh);
            let wait = if state.keys.is_some() {
                refresh.min(Duration::from_secs(30))
            } else {
                state.retry
            };
            state.next_due = Some(now + wait);
        }
    }
}
