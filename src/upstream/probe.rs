//! Active health probes: each target is probed by exactly one shard ([`Cluster::prober_of`]);
//! verdicts that cross a threshold go to every shard through the gossip channel. One probe
//! and the threshold counting live here; the shard runs the loop, keyed by the target's slot,
//! so a reload neither restarts a probe (its counts and timing carry on) nor keeps an old
//! config alive.
//!
//! [`Cluster::prober_of`]: super::Cluster::prober_of

use super::{ShardUpstreams, UpstreamConn};
use crate::config::HealthSpec;
use crate::gossip::Fault;
use crate::http::ResponseHead;
use crate::http::io::write_all_buf;
use std::sync::atomic::Ordering::Relaxed;

/// Consecutive results of one target's probes.
#[derive(Debug, Default)]
pub struct ProbeCounts {
    passes: u32,
    failures: u32,
}

/// Probes `target` of `upstream` once, within the check's `timeout`: `Ok` when it answered
/// an expected status, else what went wrong.
pub async fn probe_once(
    upstreams: &ShardUpstreams,
    upstream: usize,
    target: usize,
    health: &HealthSpec,
) -> Result<(), Fault> {
    let label = &upstreams.snapshot.upstreams[upstream].targets[target].label;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {label}\r\nUser-Agent: ringgate-health-check\r\nConnection: close\r\n\r\n",
        health.path
    )
    .into_bytes();
    let attempt = async {
        let UpstreamConn {
            mut reader,
            mut writer,
            ..
        } = upstreams
            .connect(upstream, target)
            .await
            .map_err(|e| e.fault())?;
        let (written, _) = write_all_buf(&mut writer, request).await;
        written.map_err(|_| Fault::NoResponse)?;
        let mut head = ResponseHead::default();
        loop {
            match head.parse(reader.buffered(), false, 16 * 1024) {
                Ok(true) if health.expected.contains(&head.status) => return Ok(()),
                Ok(true) => return Err(Fault::Status(head.status)),
                Ok(false) => {}
                Err(_) => return Err(Fault::BadResponse),
            }
            match reader.fill().await {
                Ok(_) => {}
                Err(crate::http::io::ReadError::BufferFull) => return Err(Fault::BadResponse),
                Err(_) => return Err(Fault::NoResponse),
            }
        }
    };
    monoio::time::timeout(health.timeout, attempt)
        .await
        .unwrap_or(Err(Fault::ResponseTimedOut))
}

/// Counts a probe's result and publishes a verdict once a threshold is crossed: unhealthy
/// after `unhealthy_threshold` failures in a row, healthy again after `healthy_threshold`
/// passes (and a pass ends a passive ejection at once).
pub fn judge(
    upstreams: &ShardUpstreams,
    slot: usize,
    health: &HealthSpec,
    counts: &mut ProbeCounts,
    result: Result<(), Fault>,
) {
    let passed = result.is_ok();
    if passed {
        counts.passes += 1;
        counts.failures = 0;
    } else {
        counts.failures += 1;
        counts.passes = 0;
    }
    let view = upstreams.health();
    let target_view = view.view(slot);
    let unhealthy = target_view.unhealthy.load(Relaxed);
    let ejected = !unhealthy && !target_view.healthy(crate::gossip::now_ms());
    if passed && ((unhealthy && counts.passes >= health.healthy_threshold) || ejected) {
        view.probe_verdict(slot, true, Fault::None);
    } else if !passed && !unhealthy && counts.failures >= health.unhealthy_threshold {
        view.probe_verdict(slot, false, result.err().unwrap_or_default());
    }
}
