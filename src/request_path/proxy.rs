//! A proxied exchange: the replayable path (the whole request in one buffer, retried per the
//! route) and the streamed path (the body goes up while the response may come down), then
//! what happens to both connections.

use super::conn::*;
use super::origin::*;
use super::respond::*;
use super::transform::*;
use super::*;
use crate::config::RouteSpec;
use crate::http::body::{BodyError, BodyLimits, stream_body};
use crate::http::io::{Collect, write_all_within};
use crate::http::{Framing, Version};
use crate::perimeter::inject::Resolver;
use crate::perimeter::validate::{check_json, has_body};
use crate::shard::{Active, Shard};
use crate::upstream::attempt::{Attempts, RetryPolicy};
use crate::upstream::{Outcome, UpstreamConn};
use monoio::io::AsyncWriteRentExt;
use monoio::time::Instant;
use std::cell::Cell;
use std::time::Duration;

/// Bodies at most this large that are already buffered travel in the same write as the head.
pub(super) const INLINE_BODY: usize = 16 * 1024;

/// Read buffer lent to a connection while it streams a request body too large to inline.
pub(super) const BODY_BUF: usize = 64 * 1024;

pub(super) async fn proxy(
    shard: &Shard,
    cfg: &Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    upstream: usize,
    prefix_len: usize,
) -> Next {
    if let Framing::Length(n) = ex.framing
        && n > c.limits.max_body_bytes
    {
        return reject(c, &reject::BODY_TOO_LARGE, ex.request_id(), true).await;
    }
    // A `json = true` route reads the body whole and checks it before any origin is chosen;
    // it then goes up as one length-delimited body, replayable like any small one.
    let checked_json;
    let mut whole_body = None;
    let ex = if route.validate.as_ref().is_some_and(|v| v.json) && has_body(ex.framing) {
        match read_json_body(c, ex).await {
            Ok(body) => {
                checked_json = Exchange {
                    framing: Framing::Length(body.len() as u64),
                    ..ex.clone()
                };
                whole_body = Some(body);
                &checked_json
            }
            Err(answered) => return answered,
        }
    } else {
        ex
    };
    // Circuit breaking and target choice (healthy, not ejected) come before any work.
    if !cfg.upstreams.has_capacity(upstream) {
        let refusal = reject::UPSTREAM_OVERLOADED.with_header(b"retry-after", b"1");
        return reject_with_body_pending(c, ex, refusal).await;
    }
    cfg.upstreams.count_request(upstream);
    c.down.record.upstream = Some(upstream);
    let affinity = affinity_of(&cfg.snapshot.upstreams[upstream], c);
    let policy = RetryPolicy {
        retries: route.retries,
        on: route.retry_on,
        replay_safe: ex.idempotent || route.retry_non_idempotent,
    };
    let mut attempts = Attempts::new(&cfg.upstreams, upstream, affinity, policy);
    let Ok(target) = attempts.first() else {
        // Health checks and ejections work on seconds: ask for a retry in one.
        let refusal = reject::NO_HEALTHY_TARGET.with_header(b"retry-after", b"1");
        return reject_with_body_pending(c, ex, refusal).await;
    };
    // Transform the head (plus a small, fully buffered body) into `out`.
    let label = &cfg.snapshot.upstreams[upstream].targets[target].label;
    let mut out = std::mem::take(&mut c.down.out);
    out.clear();
    {
        // The secret-file values are borrowed only while the head is written (no await).
        let mut forwarded = Forwarded::of(c);
        let files;
        if route.injections.is_some() {
            files = shard.secret_files();
            forwarded.resolver = Some(Resolver {
                consumer_secrets: consumer_of(cfg, forwarded.identity).map(|c| &c.secrets),
                files: &files,
            });
        }
        write_upstream_head(&mut out, &forwarded, ex, route, prefix_len, label);
    }
    if let Some(injections) = &route.injections {
        note_injections(shard, cfg, c, ex, route, injections);
    }
    c.reader.consume(c.head.len);
    let body_inline = match ex.framing {
        _ if whole_body.is_some() => {
            out.extend_from_slice(whole_body.as_deref().unwrap_or_default());
            true
        }
        Framing::None => true,
        Framing::Length(n) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && c.reader.buffered().len() >= n;
            if whole {
                out.extend_from_slice(&c.reader.buffered()[..n]);
                c.reader.consume(n);
            }
            whole
        }
        Framing::Chunked | Framing::UntilClose => false,
    };
    if !body_inline {
        // Boxed: this path's state is large and rare; keeping it out of every connection's
        // future keeps idle connections small.
        return Box::pin(streamed_exchange(
            shard,
            cfg,
            c,
            ex,
            route,
            &mut attempts,
            (upstream, target),
            out,
        ))
        .await;
    }
    let sent = send_replayable(cfg, c, ex, route, &mut attempts, (upstream, target), out);
    match sent.await {
        Ok((mut up, target, flight)) => {
            c.down.record.target = Some(target);
            stick_to(
                &cfg.snapshot.upstreams[upstream],
                &affinity,
                target,
                &mut c.down,
            );
            let relayed =
                relay_response(shard, cfg, &mut c.down, ex, route, upstream, &mut up.reader).await;
            drop(flight);
            let ends = Ends {
                request_complete: true,
                reusable: c.down.resp.reusable,
                tunnel: tunnel_limits(route, c),
            };
            finish(cfg, upstream, target, up, relayed, ends)
        }
        Err(failure) => fail_upstream(c, ex, failure, true).await,
    }
}

/// Reads a `json = true` route's body whole (within the body limits, after a `100 Continue`
/// when asked) and checks it. `Ok`: the body, with the head back in front of the read buffer
/// as if untouched. `Err`: the exchange's end, already answered (400 saying where the JSON
/// broke, or the body's own failure).
async fn read_json_body(c: &mut Client, ex: &Exchange) -> Result<Vec<u8>, Next> {
    if c.head.expect_continue && ex.version == Version::Http11 {
        let continued = monoio::time::timeout(ex.send_timeout, c.down.writer.write_all(CONTINUE));
        if !matches!(continued.await, Ok((Ok(_), _))) {
            return Err(Next::Close);
        }
    }
    let head = c.reader.buffered()[..c.head.len].to_vec();
    c.reader.consume(c.head.len);
    let limits = BodyLimits {
        max_bytes: c.limits.max_body_bytes,
        read_timeout: c.limits.idle_timeout,
        write_timeout: c.limits.send_timeout,
        read_deadline: Some(Instant::now() + c.limits.body_read_timeout),
    };
    let expected = match ex.framing {
        Framing::Length(n) => n as usize,
        _ => 0,
    };
    let mut body = Collect(Vec::with_capacity(expected));
    let read = stream_body(
        &mut c.reader,
        &mut body,
        ex.framing,
        false,
        limits,
        &mut c.up_scratch,
    );
    if let Err(e) = read.await {
        return Err(fail_upstream(c, ex, client_body_failure(e), false).await);
    }
    if let Err(invalid) = check_json(&body.0) {
        // The body was read to its end: the connection may carry another request.
        return Err(reject(
            c,
            &Reject::invalid(invalid),
            ex.request_id(),
            !ex.keep_alive,
        )
        .await);
    }
    c.reader.unread(&head);
    Ok(body.0)
}

/// A request whose body is streamed: the body goes up while the response may already come
/// down (an origin may answer early, or echo as it reads). The response timeout starts once
/// the whole request has been sent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn streamed_exchange(
    shard: &Shard,
    cfg: &Active,
    c: &mut Client,
    ex: &Exchange,
    route: &RouteSpec,
    attempts: &mut Attempts<'_>,
    (upstream, mut target): (usize, usize),
    out: Vec<u8>,
) -> Next {
    let response_timeout = cfg.snapshot.upstreams[upstream].response_timeout;
    // The body has not been read yet, so a failed connect can move to another target.
    let mut up = loop {
        c.down.record.target = Some(target);
        match attempts.connect(target).await {
            Ok(up) => break up,
            Err(e) => {
                let failure = TryFailure::Connect(e);
                cfg.upstreams.begin(upstream, target).outcome = failure.outcome();
                match attempts.retry(failure.end()).await {
                    Some(next) => target = next,
                    None => {
                        c.down.out = out;
                        return fail_upstream(c, ex, failure.into(), false).await;
                    }
                }
            }
        }
    };
    let mut flight = cfg.upstreams.begin(upstream, target);
    let started = Instant::now();
    c.down.record.target = Some(target);
    stick_to(
        &cfg.snapshot.upstreams[upstream],
        attempts.affinity(),
        target,
        &mut c.down,
    );
    let (written, out) = write_all_within(&mut up.writer, out, c.limits.send_timeout).await;
    c.down.out = out;
    if let Err(e) = written {
        let failure = if e.kind() == std::io::ErrorKind::TimedOut {
            UpstreamFailure::TimedOut
        } else {
            UpstreamFailure::BadGateway(
                "upstream closed the connection while receiving the request",
            )
        };
        return fail_upstream(c, ex, failure, false).await;
    }
    // No 1xx for HTTP/1.0 clients (RFC 9110 §15.2): they just send the body.
    if c.head.expect_continue && ex.version == Version::Http11 {
        let continued = monoio::time::timeout(ex.send_timeout, c.down.writer.write_all(CONTINUE));
        if !matches!(continued.await, Ok((Ok(_), _))) {
            return Next::Close;
        }
    }
    // A large body streams through a larger buffer (fewer reads and writes), lent for the
    // duration of this exchange.
    let lent = (c.reader.capacity() < BODY_BUF)
        .then(|| c.reader.swap_buffer(shard.body_bufs.take(BODY_BUF)));
    let head_received = Cell::new(false);
    let head_micros = Cell::new(0);
    let answered_first = Cell::new(false);
    let (sent, answered) = {
        let UpstreamConn {
            reader: up_reader,
            writer: up_writer,
            ..
        } = &mut up;
        let limits = BodyLimits {
            max_bytes: c.limits.max_body_bytes,
            read_timeout: c.limits.idle_timeout,
            write_timeout: c.limits.send_timeout,
            read_deadline: Some(Instant::now() + c.limits.body_read_timeout),
        };
        let upgrade = ex.upgrade.then_some(route);
        let rechunk = ex.framing == Framing::Chunked;
        let sending = stream_body(
            &mut c.reader,
            up_writer,
            ex.framing,
            rechunk,
            limits,
            &mut c.up_scratch,
        );
        let receiving = async {
            // No deadline while the body is still going up (the origin may read it all
            // first); the select below starts the response timeout once it is sent.
            read_response_head(up_reader, &mut c.down.resp, ex.head_method, upgrade).await?;
            head_received.set(true);
            head_micros.set(started.elapsed().as_micros() as u64);
            Ok(relay_response(shard, cfg, &mut c.down, ex, route, upstream, up_reader).await)
        };
        let mut sending = std::pin::pin!(sending);
        let mut receiving = std::pin::pin!(receiving);
        monoio::select! {
            sent = &mut sending => match sent {
                Ok(()) | Err(BodyError::DestinationIo) => {
                    let deadline = Instant::now() + response_timeout;
                    let answered = monoio::select! {
                        r = &mut receiving => r,
                        _ = monoio::time::sleep_until(deadline) => {
                            if head_received.get() {
                                (&mut receiving).await
                            } else {
                                Err(UpstreamFailure::TimedOut)
                            }
                        }
                    };
                    (sent, Some(answered))
                }
                Err(e) => (Err(e), None),
            },
            answered = &mut receiving => {
                // Usually the origin answered because it read the whole body and our last
                // write just has not been observed yet; an origin that answered early without
                // reading gets a short grace period before the connection is closed.
                answered_first.set(true);
                let sent = match monoio::time::timeout(EARLY_ANSWER_GRACE, &mut sending).await {
                    Ok(sent) => sent,
                    Err(_) => Err(BodyError::DestinationIo),
                };
                (sent, Some(answered))
            }
        }
    };
    let sent_all = sent.is_ok();
    if let Some(small) = lent {
        let returned = c.reader.swap_buffer(small);
        if returned.capacity() >= BODY_BUF {
            shard.body_bufs.give(returned);
        } else {
            shard.bufs.give(returned);
        }
    }
    if head_received.get() {
        c.down.record.upstream_head_time = Some(Duration::from_micros(head_micros.get()));
    }
    flight.outcome = match &answered {
        _ if head_received.get() => Outcome::Answered {
            status: c.down.resp.status,
            micros: head_micros.get(),
        },
        Some(Err(UpstreamFailure::TimedOut)) => {
            Outcome::Failed(crate::gossip::Fault::ResponseTimedOut)
        }
        _ => Outcome::Neutral,
    };
    drop(flight);
    match (sent, answered) {
        (_, Some(Ok(relayed))) => {
            // An origin that answered before the whole body arrived: the client may still
            // be sending, so close by lingering or the answer could be lost to a reset.
            c.linger = !sent_all;
            // A whole response before the whole body was sent: the origin may not have read
            // the rest, which would then start the next request on a pooled connection
            // (whoever sends it). Such a connection is never pooled.
            let ends = Ends {
                request_complete: sent_all,
                reusable: c.down.resp.reusable && !answered_first.get(),
                tunnel: tunnel_limits(route, c),
            };
            finish(cfg, upstream, target, up, relayed, ends)
        }
        (_, Some(Err(failure))) if !head_received.get() => {
            fail_upstream(c, ex, failure, sent_all).await
        }
        (Err(e), None) if !head_received.get() => {
            fail_upstream(c, ex, client_body_failure(e), false).await
        }
        _ => Next::Close,
    }
}

pub(super) fn client_body_failure(e: BodyError) -> UpstreamFailure {
    match e {
        BodyError::SourceClosed | BodyError::SourceIo => UpstreamFailure::ClientGone,
        BodyError::SourceTimedOut => UpstreamFailure::ClientBody(reject::BODY_TIMEOUT),
        BodyError::Malformed => UpstreamFailure::ClientBody(reject::BAD_CHUNKED_BODY),
        BodyError::TooLarge => UpstreamFailure::ClientBody(reject::BODY_TOO_LARGE),
        BodyError::DestinationIo => {
            UpstreamFailure::BadGateway("upstream stopped receiving the request")
        }
        // An origin that stops reading the body is as stuck as one that never answers.
        BodyError::DestinationTimedOut => UpstreamFailure::TimedOut,
    }
}

/// How long a request body may still take to finish sending once the response is complete.
pub(super) const EARLY_ANSWER_GRACE: Duration = Duration::from_millis(100);

pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What relaying a response did to the two connections.
pub(super) enum Relayed {
    /// The whole response reached the client; `close` says the client connection must end.
    Done { close: bool },
    /// `101 Switching Protocols` was forwarded: the connections become a tunnel.
    Upgraded,
    /// Either side failed mid-response: both connections must close.
    Broken,
}

/// How both messages of an exchange ended.
pub(super) struct Ends {
    pub(super) request_complete: bool,
    /// The origin allows another request on its connection.
    pub(super) reusable: bool,
    pub(super) tunnel: TunnelLimits,
}

pub(super) fn tunnel_limits(route: &RouteSpec, c: &Client) -> TunnelLimits {
    TunnelLimits {
        idle: route.tunnel_idle_timeout.unwrap_or(c.limits.idle_timeout),
        total: route.tunnel_max_duration,
        send: c.limits.send_timeout,
    }
}

/// Ends an exchange: pools the upstream connection when both messages ended cleanly, and
/// says what the client connection does next.
pub(super) fn finish(
    cfg: &Active,
    upstream: usize,
    target: usize,
    up: UpstreamConn,
    relayed: Relayed,
    ends: Ends,
) -> Next {
    let request_complete = ends.request_complete;
    match relayed {
        Relayed::Upgraded if request_complete => Next::Tunnel(up, ends.tunnel),
        Relayed::Done { close } => {
            if request_complete && ends.reusable {
                cfg.upstreams.checkin(upstream, target, up);
            }
            if close || !request_complete {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Relayed::Upgraded | Relayed::Broken => Next::Close,
    }
}

/// Maps a failure to its status. `body_read` says whether the request body was consumed;
/// if not, the connection cannot carry another request.
pub(super) async fn fail_upstream(
    c: &mut Client,
    ex: &Exchange,
    failure: UpstreamFailure,
    body_read: bool,
) -> Next {
    let Some(refusal) = failure.into_reject() else {
        return Next::Close;
    };
    let close = !ex.keep_alive || !body_read;
    reject(c, &refusal, ex.request_id(), close).await
}

/// The configured consumer an identity names, if any.
pub(super) fn consumer_of<'a>(
    cfg: &'a Active,
    identity: Option<&crate::auth::Identity>,
) -> Option<&'a crate::auth::ConsumerSpec> {
    let auth = &cfg.snapshot.auth;
    let index = *auth.consumer_by_name.get(&*identity?.consumer)?;
    auth.consumers.get(index)
}

/// Counts the injections of this request (by route, consumer and secret name) and, with
/// `audit = true`, writes a `credential_injected` event (the secret by its name only).
fn note_injections(
    shard: &Shard,
    cfg: &Active,
    c: &Client,
    ex: &Exchange,
    route: &RouteSpec,
    injections: &crate::perimeter::inject::Injections,
) {
    let identity = c.down.record.identity.as_deref();
    let consumer = consumer_of(cfg, identity);
    let Some(route_index) = c.down.record.route else {
        return;
    };
    if let Some(counters) = cfg.injection_counters.get(route_index) {
        let consumers = cfg.snapshot.auth.consumers.len() + 1;
        let who = consumer
            .and_then(|spec| cfg.snapshot.auth.consumer_by_name.get(&spec.name).copied())
            .unwrap_or(consumers - 1);
        for i in 0..injections.headers.len() + injections.query.len() {
            if let Some(counter) = counters.get(i * consumers + who) {
                counter.add(1);
            }
        }
    }
    if injections.audit && cfg.audit_log.is_some() {
        for injection in injections.all() {
            shard.audit(&crate::observe::audit::Event {
                event: "credential_injected",
                request_id: Some(ex.request_id()),
                client_ip: Some(c.down.record.client_ip),
                route: Some(&route.name),
                consumer: identity.map(|i| &*i.consumer),
                reason: &injection.name,
                secret: Some(&injection.reference),
            });
        }
    }
}
