//! Shards: one thread per core, pinned from inside its own thread, each with its own monoio
//! runtime (io_uring, or epoll when io_uring is unavailable), its own `SO_REUSEPORT` listeners
//! and all request-path state.
//!
//! Owns thread start-up, accept loops, the per-shard connection registry and the drain
//! sequence. It must not parse HTTP or pick upstreams: connections are handed to
//! [`crate::request_path`].

mod run;
mod state;

pub use run::{Started, spawn_shards};
pub use state::{
    Active, CONNECTION_PANICS, Command, ConnGuard, DRAIN, ListenerPlan, ListenerState, Mailboxes,
    Reconfigure, SHARDS_ALIVE, Shard,
};
