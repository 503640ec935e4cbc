//! Talking to the origin: one try (send, read the response head), the failure table (what a
//! client sees, what counts against the target, what may be retried), relaying the response.

use super::conn::*;
use super::proxy::*;
use super::transform::*;
use super::*;
use crate::config::RouteSpec;
use crate::gossip::Fault;
use crate::http::body::{BodyLimits, stream_body};
use crate::http::io::{ReadError, write_all_buf, write_all_within};
use crate::http::{Framing, ResponseHead, Version};
use crate::shard::{Active, Shard};
use crate::upstream::attempt::{Attempts, TryEnd};
use crate::upstream::{ConnectError, InFlight, Outcome, UpstreamConn};
use monoio::time::Instant;
use std::time::Duration;

/// Why talking to the origin failed, each mapped to one client-visible status.
pub(super) enum UpstreamFailure {
    Connect(ConnectError),
    /// Nothing (or an unusable head) came back.
    BadGateway(&'static str),
    TimedOut,
    /// The client side failed while we streamed its body: no response is possible.
    ClientGone,
    ClientBody(Reject),
}

impl UpstreamFailure {
    /// The answer the client gets; `None` when the client is gone and gets nothing.
    pub(super) fn into_reject(self) -> Option<Reject> {
        Some(match self {
            UpstreamFailure::Connect(ConnectError::TimedOut) => Reject::new(
                502,
                "upstream_connect_timeout",
                "upstream connect timed out",
            ),
            UpstreamFailure::Connect(ConnectError::Failed(_)) => {
                Reject::new(502, "upstream_connect_failed", "upstream connect failed")
            }
            UpstreamFailure::Connect(ConnectError::Tls(_)) => {
                Reject::new(502, "upstream_tls_failed", "upstream TLS handshake failed")
            }
            UpstreamFailure::Connect(ConnectError::Overloaded) => Reject::new(
                503,
                "upstream_overloaded",
                "upstream overloaded (max_pending connections being opened)",
            ),
            UpstreamFailure::BadGateway(m) => reject::bad_gateway(m),
            UpstreamFailure::TimedOut => reject::UPSTREAM_TIMEOUT,
            UpstreamFailure::ClientGone => return None,
            UpstreamFailure::ClientBody(refusal) => refusal,
        })
    }
}

pub(super) enum ResponseFailure {
    /// The connection failed before any response byte: the origin never answered.
    NothingReceived,
    TimedOut,
    Bad(&'static str),
}

impl From<ResponseFailure> for UpstreamFailure {
    fn from(f: ResponseFailure) -> Self {
        match f {
            ResponseFailure::NothingReceived => {
                UpstreamFailure::BadGateway("upstream closed the connection without a response")
            }
            ResponseFailure::TimedOut => UpstreamFailure::TimedOut,
            ResponseFailure::Bad(message) => UpstreamFailure::BadGateway(message),
        }
    }
}

/// How one try at one target failed.
pub(super) enum TryFailure {
    Connect(ConnectError),
    Response(ResponseFailure),
}

impl TryFailure {
    /// Whether the target is to blame (for passive detection).
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            TryFailure::Connect(ConnectError::Overloaded) => Outcome::Neutral,
            TryFailure::Connect(e) => Outcome::Failed(e.fault()),
            TryFailure::Response(ResponseFailure::Bad(_)) => Outcome::Neutral,
            TryFailure::Response(ResponseFailure::TimedOut) => {
                Outcome::Failed(Fault::ResponseTimedOut)
            }
            TryFailure::Response(ResponseFailure::NothingReceived) => {
                Outcome::Failed(Fault::NoResponse)
            }
        }
    }

    /// How the try ended, for the retry table ([`crate::upstream::attempt`]).
    pub(super) fn end(&self) -> TryEnd {
        match self {
            TryFailure::Connect(e) => TryEnd::from(e),
            TryFailure::Response(ResponseFailure::NothingReceived) => TryEnd::NothingReceived,
            TryFailure::Response(ResponseFailure::TimedOut) => TryEnd::TimedOut,
            TryFailure::Response(ResponseFailure::Bad(_)) => TryEnd::BadResponse,
        }
    }
}

impl From<TryFailure> for UpstreamFailure {
    fn from(f: TryFailure) -> Self {
        match f {
            TryFailure::Connect(e) => UpstreamFailure::Connect(e),
            TryFailure::Response(r) => r.into(),
        }
    }
}

pub(super) fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Sends a request that is entirely in `out` and reads the response head into
/// `c.down.resp`, trying again per the route's retry policy ([`Attempts`]). Returns the
/// connection, the target that answered, and its in-flight guard.
pub(super) async fn send_replayable<'s>(
    cfg: &'s Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    attempts: &mut Attempts<'s>,
    (upstream, mut target): (usize, usize),
    mut out: Vec<u8>,
) -> Result<(UpstreamConn, usize, InFlight<'s>), UpstreamFailure> {
    let spec = &cfg.snapshot.upstreams[upstream];
    let try_timeout = route.per_try_timeout.unwrap_or(spec.response_timeout);
    loop {
        // The target tried last is the one the record names, answered or not.
        c.down.record.target = Some(target);
        let mut flight = cfg.upstreams.begin(upstream, target);
        let started = Instant::now();
        let attempt = try_once(attempts, c, ex, route, target, &mut out, try_timeout);
        let (end, failure) = match attempt.await {
            Ok(up) => {
                let status = c.down.resp.status;
                let waited = started.elapsed();
                c.down.record.upstream_head_time = Some(waited);
                flight.outcome = Outcome::Answered {
                    status,
                    micros: waited.as_micros() as u64,
                };
                if attempts.accepts_answer(status) {
                    c.down.out = out;
                    return Ok((up, target, flight));
                }
                // Retrying a 5xx: this connection (with the unread body) is dropped.
                (TryEnd::Answered(status), None)
            }
            Err(f) => {
                flight.outcome = f.outcome();
                (f.end(), Some(f))
            }
        };
        drop(flight);
        // An empty `out` went with a write that timed out: there is nothing left to resend.
        let end = if out.is_empty() {
            TryEnd::Unrepeatable
        } else {
            end
        };
        match attempts.retry(end).await {
            Some(next) => {
                cfg.upstreams.count_retry(upstream, target);
                target = next;
            }
            None => {
                c.down.out = out;
                return Err(match failure {
                    Some(f) => f.into(),
                    None => UpstreamFailure::BadGateway("upstream answered with an error status"),
                });
            }
        }
    }
}

/// One try at one target: send the request and read the response head, both within
/// `timeout` (one timer). A reused connection that fails before any response byte is
/// replaced by a fresh one to the same target at once, but only for a request that is safe
/// to send twice: the origin may have read it before closing.
pub(super) async fn try_once(
    attempts: &Attempts<'_>,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    target: usize,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<UpstreamConn, TryFailure> {
    let replay_safe = ex.idempotent || route.retry_non_idempotent;
    let upgrade = ex.upgrade.then_some(route);
    let mut up = attempts
        .connect(target)
        .await
        .map_err(TryFailure::Connect)?;
    loop {
        let exchange = async {
            let (written, returned) = write_all_buf(&mut up.writer, std::mem::take(out)).await;
            *out = returned;
            match written {
                Err(_) => Err(ResponseFailure::NothingReceived),
                Ok(()) => {
                    read_response_head(&mut up.reader, &mut c.down.resp, ex.head_method, upgrade)
                        .await
                }
            }
        };
        let attempt = monoio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ResponseFailure::TimedOut));
        match attempt {
            Ok(()) => return Ok(up),
            Err(ResponseFailure::NothingReceived) if up.reused && replay_safe => {
                up = attempts
                    .connect_new(target)
                    .await
                    .map_err(TryFailure::Connect)?;
            }
            Err(failure) => return Err(TryFailure::Response(failure)),
        }
    }
}

/// Reads a final response head (skipping 1xx interim responses other than 101), with no
/// deadline of its own: callers bound it. A `101` is accepted only when the request offered
/// an upgrade (`upgrade` is its route) and it switches to a protocol the route allows.
pub(super) async fn read_response_head(
    up: &mut UpstreamReader,
    resp: &mut ResponseHead,
    head_method: bool,
    upgrade: Option<&RouteSpec>,
) -> Result<(), ResponseFailure> {
    let mut received = false;
    loop {
        if !up.buffered().is_empty() {
            received = true;
            match resp.parse(up.buffered(), head_method, crate::upstream::UPSTREAM_BUF) {
                Ok(true) if resp.status < 200 && resp.status != 101 => {
                    up.consume(resp.len);
                    continue;
                }
                Ok(true) if resp.status == 101 => {
                    let allowed = upgrade.is_some_and(|route| {
                        resp.upgrade(up.buffered())
                            .is_some_and(|p| route.allows_upgrade(p))
                    });
                    return if allowed {
                        Ok(())
                    } else {
                        Err(ResponseFailure::Bad("upstream switched protocols unasked"))
                    };
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(ResponseFailure::Bad(e.0)),
            }
        }
        match up.fill().await {
            Ok(_) => {}
            Err(ReadError::TimedOut) => return Err(ResponseFailure::TimedOut),
            Err(ReadError::BufferFull) => {
                return Err(ResponseFailure::Bad("response head too large"));
            }
            Err(ReadError::Closed | ReadError::Io(_)) if !received => {
                return Err(ResponseFailure::NothingReceived);
            }
            Err(_) => return Err(ResponseFailure::Bad("upstream closed mid-response")),
        }
    }
}

/// Sends the transformed response head and streams the body to the client.
pub(super) async fn relay_response(
    shard: &Shard,
    cfg: &Active,
    down: &mut Downstream,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    up: &mut UpstreamReader,
) -> Relayed {
    let upgraded = down.resp.status == 101;
    let framing = down.resp.framing;
    let open_ended = matches!(framing, Framing::Chunked | Framing::UntilClose);
    // HTTP/1.0 clients cannot receive chunked bodies: they get the bytes, then a close.
    let rechunk = open_ended && ex.version == Version::Http11;
    let retired = down.listener.is_retired();
    let close = !ex.keep_alive || shard.draining.get() || retired || (open_ended && !rechunk);
    let mut out = std::mem::take(&mut down.out);
    out.clear();
    write_client_head(
        &mut out,
        &down.resp,
        up.buffered(),
        ex,
        route.response_edits(ex.tls),
        &down.extra,
        rechunk,
        close,
        upgraded,
    );
    if let Some(injections) = &route.injections {
        // The secret-file values are borrowed only while the head is scanned (no await).
        let files = shard.secret_files();
        let resolver = crate::perimeter::inject::Resolver {
            consumer_secrets: super::proxy::consumer_of(cfg, down.record.identity.as_deref())
                .map(|c| &c.secrets),
            files: &files,
        };
        for value in resolver.values(injections) {
            crate::perimeter::inject::redact(&mut out, value);
        }
    }
    up.consume(down.resp.len);
    let inline_body = match framing {
        Framing::None => true,
        Framing::Length(n) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && up.buffered().len() >= n;
            if whole {
                out.extend_from_slice(&up.buffered()[..n]);
                up.consume(n);
            }
            whole
        }
        Framing::Chunked | Framing::UntilClose => false,
    };
    let (written, out) = write_all_within(&mut down.writer, out, ex.send_timeout).await;
    down.out = out;
    if written.is_err() {
        return Relayed::Broken;
    }
    down.record.status = down.resp.status;
    if upgraded {
        return Relayed::Upgraded;
    }
    if !inline_body {
        let limits = BodyLimits {
            max_bytes: u64::MAX,
            read_timeout: cfg.snapshot.upstreams[upstream].response_timeout,
            write_timeout: ex.send_timeout,
            read_deadline: None,
        };
        if stream_body(
            up,
            &mut down.writer,
            framing,
            rechunk,
            limits,
            &mut down.scratch,
        )
        .await
        .is_err()
        {
            // The head is gone already: closing is the only way to show the truncation.
            return Relayed::Broken;
        }
    }
    Relayed::Done { close }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_failure_has_one_answer() {
        let table: Vec<(UpstreamFailure, Option<(u16, &str)>)> = vec![
            (
                UpstreamFailure::Connect(ConnectError::TimedOut),
                Some((502, "upstream_connect_timeout")),
            ),
            (
                UpstreamFailure::Connect(ConnectError::Failed(
                    std::io::ErrorKind::ConnectionRefused.into(),
                )),
                Some((502, "upstream_connect_failed")),
            ),
            (
                UpstreamFailure::Connect(ConnectError::Overloaded),
                Some((503, "upstream_overloaded")),
            ),
            (UpstreamFailure::BadGateway("x"), Some((502, "bad_gateway"))),
            (UpstreamFailure::TimedOut, Some((504, "upstream_timeout"))),
            (UpstreamFailure::ClientGone, None),
            (
                UpstreamFailure::ClientBody(reject::BODY_TOO_LARGE),
                Some((413, "body_too_large")),
            ),
        ];
        for (failure, expected) in table {
            let got = failure.into_reject().map(|r| (r.status, r.kind));
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn only_the_targets_own_failures_count_against_it() {
        let table = [
            (
                TryFailure::Connect(ConnectError::TimedOut),
                Outcome::Failed(Fault::ConnectTimedOut),
                TryEnd::ConnectFailed,
            ),
            (
                TryFailure::Connect(ConnectError::Overloaded),
                Outcome::Neutral,
                TryEnd::Overloaded,
            ),
            (
                TryFailure::Response(ResponseFailure::NothingReceived),
                Outcome::Failed(Fault::NoResponse),
                TryEnd::NothingReceived,
            ),
            (
                TryFailure::Response(ResponseFailure::TimedOut),
                Outcome::Failed(Fault::ResponseTimedOut),
                TryEnd::TimedOut,
            ),
            (
                TryFailure::Response(ResponseFailure::Bad("unasked 101")),
                Outcome::Neutral,
                TryEnd::BadResponse,
            ),
        ];
        for (failure, outcome, end) in table {
            assert_eq!((failure.outcome(), failure.end()), (outcome, end));
        }
    }
}
