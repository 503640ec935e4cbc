//! The second gossip primitive (DESIGN.md §2): *additive* usage. Each shard tells every other
//! shard, once per tick, how much it admitted per (policy, key) since it last told them; each
//! receiver adds that to its own cells. Nothing is shared per request and nothing is lost: a
//! batch that does not fit a full inbox stays with its sender and goes on the next tick. The
//! cluster sync thread takes the same batches (cluster policies only) to Redis and sends back
//! what other nodes admitted the same way. Plain data: no shard state, no sockets.

use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

/// Usage of one key since the last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub key: u64,
    /// Requests admitted (negative: in-flight requests that ended).
    pub n: i64,
    /// The fixed window they were counted in (0 for other algorithms).
    pub window: u64,
}

/// What kind of usage a batch carries: a receiver whose policy of that name now counts in
/// another way (a reload changed it) ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    Admissions,
    WindowCounts,
    InFlight,
}

/// One policy's usage in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUsage {
    pub name: Arc<str>,
    pub kind: UsageKind,
    /// A `scope = "cluster"` policy (also goes to Redis).
    pub cluster: bool,
    /// How long usage matters (a fixed window's period; for GCRA the time a full bucket
    /// takes to refill), for the expiry of its Redis counters.
    pub period_us: u64,
    pub entries: Vec<Usage>,
}

/// What one sender admitted since its last batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    /// The sending shard, or [`FROM_CLUSTER`].
    pub from: usize,
    pub policies: Vec<PolicyUsage>,
}

/// The sender of usage other nodes admitted (the cluster sync thread).
pub const FROM_CLUSTER: usize = usize::MAX;

/// Batches waiting in one inbox, at most (a sender ticks once per tick, so this many ticks of
/// every other shard fit).
const INBOX: usize = 256;

/// One inbox of usage batches per shard, and one for the cluster sync thread.
pub struct UsageExchange {
    inboxes: Vec<ArrayQueue<Arc<UsageBatch>>>,
    to_cluster: ArrayQueue<Arc<UsageBatch>>,
}

impl UsageExchange {
    pub fn new(shards: usize) -> UsageExchange {
        UsageExchange {
            inboxes: (0..shards).map(|_| ArrayQueue::new(INBOX)).collect(),
            to_cluster: ArrayQueue::new(INBOX),
        }
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues `batch` for `shard`; gives it back when that inbox is full.
    pub fn send(&self, shard: usize, batch: Arc<UsageBatch>) -> Result<(), Arc<UsageBatch>> {
        self.inboxes[shard].push(batch)
    }

    pub fn receive(&self, shard: usize) -> Option<Arc<UsageBatch>> {
        self.inboxes[shard].pop()
    }

    /// Queues a batch for the cluster sync thread; gives it back when its inbox is full.
    pub fn send_to_cluster(&self, batch: Arc<UsageBatch>) -> Result<(), Arc<UsageBatch>> {
        self.to_cluster.push(batch)
    }

    pub fn receive_for_cluster(&self) -> Option<Arc<UsageBatch>> {
        self.to_cluster.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_inbox_gives_the_batch_back() {
        let x = UsageExchange::new(2);
        let batch = Arc::new(UsageBatch {
            from: 0,
            policies: Vec::new(),
        });
        for _ in 0..INBOX {
            assert!(x.send(1, batch.clone()).is_ok());
        }
        assert!(x.send(1, batch.clone()).is_err());
        assert!(x.receive(0).is_none());
        assert_eq!(x.receive(1).as_deref(), Some(&*batch));
    }
}
