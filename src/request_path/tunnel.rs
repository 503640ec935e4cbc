//! After `101 Switching Protocols`: a bounded bidirectional byte tunnel.

use super::conn::*;
use crate::http::io::BufConn;
use crate::upstream::UpstreamConn;
use monoio::io::AsyncWriteRent;
use monoio::time::Instant;
use std::cell::Cell;
use std::time::Duration;

/// After `101 Switching Protocols`: bytes flow both ways until either side closes, the
/// tunnel has been quiet for `limits.idle`, or it has lived `limits.total`. Reads carry no
/// timer of their own (a cancelled read can lose bytes); one watchdog ends the whole tunnel.
pub(super) async fn tunnel(
    client: &mut ClientReader,
    client_writer: &mut ClientWriter,
    origin: UpstreamConn,
    limits: TunnelLimits,
) {
    let UpstreamConn {
        reader: mut origin_reader,
        writer: mut origin_writer,
        ..
    } = origin;
    let last_activity = Cell::new(Instant::now());
    let upstream = pump(client, &mut origin_writer, &last_activity, limits.send);
    let downstream = pump(
        &mut origin_reader,
        client_writer,
        &last_activity,
        limits.send,
    );
    let watchdog = async {
        let end = Instant::now() + limits.total;
        loop {
            let quiet_until = last_activity.get() + limits.idle;
            monoio::time::sleep_until(quiet_until.min(end)).await;
            let now = Instant::now();
            if now >= end || now >= last_activity.get() + limits.idle {
                return;
            }
        }
    };
    monoio::select! {
        _ = upstream => {},
        _ = downstream => {},
        _ = watchdog => {},
    }
}

/// Copies `src` to `dst` until either fails, noting each transfer in `last_activity`.
pub(super) async fn pump<S: monoio::io::AsyncReadRent, W: AsyncWriteRent>(
    src: &mut BufConn<S>,
    dst: &mut W,
    last_activity: &Cell<Instant>,
    send_timeout: Duration,
) {
    loop {
        let pending = src.buffered().len();
        if pending > 0 {
            let sent = monoio::time::timeout(send_timeout, src.forward_buffered(pending, dst));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
            last_activity.set(Instant::now());
        }
        if src.fill().await.is_err() {
            return;
        }
        last_activity.set(Instant::now());
    }
}
