//! One attempt policy for every proxied request, replayable or streamed: pick a target →
//! pooled connection or a new one → (the caller's try) → may this failure be retried →
//! jittered backoff → pick another target. The retry rule (what may be retried, the
//! idempotency rule, the route's `retries`, the upstream's retry budget) is written once,
//! here. Knows nothing of HTTP beyond a response status: the request path runs the try.

use super::{Affinity, ConnectError, PickError, ShardUpstreams, Tried, UpstreamConn};
use crate::config::RetryOn;
use std::time::Duration;

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryEnd {
    /// Connecting failed or timed out: the request never left.
    ConnectFailed,
    /// Too many connections being opened (`max_pending`): retrying adds to the pile.
    Overloaded,
    /// The connection failed before any response byte: the origin may have read it.
    NothingReceived,
    /// No response within the try's timeout: the origin may be working on it.
    TimedOut,
    /// A response that cannot be used (malformed, too large, an unasked `101`).
    BadResponse,
    /// A response head with this status.
    Answered(u16),
    /// The request cannot be sent again (its body was streamed, or went with a failed
    /// write): whatever happened, no retry.
    Unrepeatable,
}

impl From<&ConnectError> for TryEnd {
    fn from(e: &ConnectError) -> TryEnd {
        match e {
            ConnectError::Overloaded => TryEnd::Overloaded,
            ConnectError::TimedOut | ConnectError::Failed(_) | ConnectError::Tls(_) => {
                TryEnd::ConnectFailed
            }
        }
    }
}

/// What a route allows to be retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: u32,
    pub on: RetryOn,
    /// The request may reach the origin twice: an idempotent method, or the route says
    /// `retry_non_idempotent`.
    pub replay_safe: bool,
}

impl RetryPolicy {
    /// The one retry table. A try that may have reached the origin is retried only when the
    /// request is safe to send twice.
    pub fn allows(&self, end: TryEnd) -> bool {
        match end {
            TryEnd::ConnectFailed => self.on.connect_failure,
            TryEnd::NothingReceived => self.on.reset && self.replay_safe,
            TryEnd::TimedOut => self.on.timeout && self.replay_safe,
            TryEnd::Answered(status) => retries_status(self.on, status) && self.replay_safe,
            TryEnd::Overloaded | TryEnd::BadResponse | TryEnd::Unrepeatable => false,
        }
    }
}

fn retries_status(on: RetryOn, status: u16) -> bool {
    match status {
        502 => on.status_502,
        503 => on.status_503,
        504 => on.status_504,
        _ => false,
    }
}

/// The first backoff; it doubles per retry, and each sleep is a random part of it.
const FIRST_BACKOFF_MS: u64 = 25;

/// The tries of one request to one upstream.
pub struct Attempts<'a> {
    upstreams: &'a ShardUpstreams,
    upstream: usize,
    affinity: Affinity,
    policy: RetryPolicy,
    tried: Tried,
    retries_left: u32,
    backoff_ms: u64,
}

impl<'a> Attempts<'a> {
    pub fn new(
        upstreams: &'a ShardUpstreams,
        upstream: usize,
        affinity: Affinity,
        policy: RetryPolicy,
    ) -> Attempts<'a> {
        Attempts {
            upstreams,
            upstream,
            affinity,
            policy,
            tried: Tried::default(),
            retries_left: policy.retries,
            backoff_ms: FIRST_BACKOFF_MS,
        }
    }

    /// What ties the request to a target (a sticky cookie, a hash key).
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }

    /// The first target (sticky or hashed when the request says so).
    pub fn first(&mut self) -> Result<usize, PickError> {
        let target = self
            .upstreams
            .pick(self.upstream, self.tried, &self.affinity)?;
        self.tried.add(target);
        Ok(target)
    }

    /// A pooled connection to `target`, or a new one.
    pub async fn connect(&self, target: usize) -> Result<UpstreamConn, ConnectError> {
        match self.upstreams.checkout_idle(self.upstream, target) {
            Some(up) => Ok(up),
            None => self.upstreams.connect(self.upstream, target).await,
        }
    }

    /// A new connection to `target` (a pooled one just failed before any response byte).
    pub async fn connect_new(&self, target: usize) -> Result<UpstreamConn, ConnectError> {
        self.upstreams.connect(self.upstream, target).await
    }

    /// Whether the answer ends the request here (no retry wanted or possible for it).
    pub fn accepts_answer(&self, status: u16) -> bool {
        !(self.policy.allows(TryEnd::Answered(status)) && self.retries_left > 0)
    }

    /// After a try ended with `end`: the next target to try (after the backoff), or `None`
    /// when the route does not retry this, its retries or the upstream's budget are spent,
    /// or no untried usable target is left.
    pub async fn retry(&mut self, end: TryEnd) -> Option<usize> {
        if !self.policy.allows(end) || self.retries_left == 0 {
            return None;
        }
        if !self.upstreams.try_retry(self.upstream) {
            return None;
        }
        let next = self
            .upstreams
            .pick(self.upstream, self.tried, &self.affinity)
            .ok()?;
        self.tried.add(next);
        self.retries_left -= 1;
        let sleep_ms = self.upstreams.jitter_ms(self.backoff_ms);
        self.backoff_ms = self.backoff_ms.saturating_mul(2);
        monoio::time::sleep(Duration::from_millis(sleep_ms)).await;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(connect_failure: bool, reset: bool, timeout: bool, s502: bool) -> RetryOn {
        RetryOn {
            connect_failure,
            reset,
            timeout,
            status_502: s502,
            status_503: false,
            status_504: false,
        }
    }

    #[test]
    fn the_retry_table() {
        let all = on(true, true, true, true);
        let safe = RetryPolicy {
            retries: 1,
            on: all,
            replay_safe: true,
        };
        let unsafe_ = RetryPolicy {
            replay_safe: false,
            ..safe
        };
        // (end, retried when replay-safe, retried when not)
        let table = [
            (TryEnd::ConnectFailed, true, true),
            (TryEnd::Overloaded, false, false),
            (TryEnd::NothingReceived, true, false),
            (TryEnd::TimedOut, true, false),
            (TryEnd::BadResponse, false, false),
            (TryEnd::Answered(502), true, false),
            (TryEnd::Answered(503), false, false),
            (TryEnd::Answered(200), false, false),
            (TryEnd::Unrepeatable, false, false),
        ];
        for (end, when_safe, when_not) in table {
            assert_eq!(safe.allows(end), when_safe, "{end:?}");
            assert_eq!(unsafe_.allows(end), when_not, "{end:?}");
        }
        let none = RetryPolicy {
            on: on(false, false, false, false),
            ..safe
        };
        assert!(!none.allows(TryEnd::ConnectFailed));
        assert!(!none.allows(TryEnd::NothingReceived));
    }

    #[test]
    fn connect_errors_map_to_their_end() {
        assert_eq!(TryEnd::from(&ConnectError::Overloaded), TryEnd::Overloaded);
        assert_eq!(TryEnd::from(&ConnectError::TimedOut), TryEnd::ConnectFailed);
    }
}
