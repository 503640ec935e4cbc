//! Active health probes: each target is probed by exactly one shard ([`Cluster::prober_of`]);
//! verdicts that cross a threshold go to every shard through the gossip channel.

use super::{ShardUpstreams, UpstreamConn};
use crate::config::HealthSpec;
use crate::http::ResponseHead;
use crate::http::io::write_all_buf;
use std::time::Duration;

/// Probes `target` of `upstream` until `stop` says so.
pub async fn probe_loop(
    upstreams: &ShardUpstreams,
    upstream: usize,
    target: usize,
    stop: &dyn Fn() -> bool,
) {
    let spec = &upstreams.snapshot.upstreams[upstream];
    let Some(health) = &spec.health else { return };
    let slot = spec.targets[target].slot;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringgate-health-check\r\nConnection: close\r\n\r\n",
        health.path, spec.targets[target].label
    )
    .into_bytes();
    let (mut passes, mut failures) = (0u32, 0u32);
    while !stop() {
        let jitter = upstreams.jitter_ms(health.jitter.as_millis() as u64);
        monoio::time::sleep(health.interval + Duration::from_millis(jitter)).await;
        if stop() {
            return;
        }
        let passed = probe_once(upstreams, upstream, target, health, &request).await;
        if passed {
            passes += 1;
            failures = 0;
        } else {
            failures += 1;
            passes = 0;
        }
        let view = upstreams.health();
        let target_view = view.view(slot);
        let unhealthy = target_view
            .unhealthy
            .load(std::sync::atomic::Ordering::Relaxed);
        let ejected = !unhealthy && !target_view.usable(crate::gossip::now_ms());
        if passed && ((unhealthy && passes >= health.healthy_threshold) || ejected) {
            view.probe_verdict(slot, true);
        } else if !passed && !unhealthy && failures >= health.unhealthy_threshold {
            view.probe_verdict(slot, false);
        }
    }
}

async fn probe_once(
    upstreams: &ShardUpstreams,
    upstream: usize,
    target: usize,
    health: &HealthSpec,
    request: &[u8],
) -> bool {
    let attempt = async {
        let UpstreamConn {
            mut reader,
            mut writer,
            ..
        } = upstreams.connect(upstream, target).await.ok()?;
        let (written, _) = write_all_buf(&mut writer, request.to_vec()).await;
        written.ok()?;
        let mut head = ResponseHead::default();
        loop {
            if head.parse(reader.buffered(), false, 16 * 1024).ok()? {
                return Some(health.expected.contains(&head.status));
            }
            reader.fill().await.ok()?;
        }
    };
    matches!(
        monoio::time::timeout(health.timeout, attempt).await,
        Ok(Some(true))
    )
}
