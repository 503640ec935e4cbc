//! ringgate: a thread-per-core API gateway and reverse proxy on monoio/io_uring.
//!
//! Start at [`request_path`] (`request_path/mod.rs`): it composes the stages every request
//! goes through, in order. The concerns live in their own modules:
//! - [`config`]: the TOML contract, validation with file/line/key, the compiled
//!   [`config::Snapshot`], what a reload keeps
//! - [`shard`]: per-shard state (the pinned config, listeners, connections, inbox) and the
//!   threads that run it (runtimes, accept loops, the tick, drain)
//! - [`http`]: strict HTTP/1.1 parsing, chunked coding, buffered I/O
//! - [`route`]: host/path/method lookup tables
//! - [`auth`]: identity (API keys, JWT with shard-local caches, client certificates) and
//!   authorization by role and scope
//! - [`perimeter`]: the client's address (trusted proxies, PROXY protocol), IP allow/deny
//!   rules, request validation, upstream credential injection
//! - [`limit`]: rate limits and quotas (shard-local cells, global over gossip, cluster over
//!   Redis)
//! - [`tls`]: TLS termination and origination (rustls), certificates, SNI, mTLS
//! - [`gossip`]: the lock-free cross-shard channel (backend state, additive quota usage)
//! - [`upstream`]: target choice, per-shard keep-alive pools, health, the retry policy
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/upstreams`, `/shards`, `/config`,
//!   `POST /reload`) on its own thread
//! - [`control`]: the control thread (binding listeners, start-up reports, signals, hot reload)
//! - [`observe`]: the one exit of every exchange, per-shard counters, logging
//! - [`echo`]: the built-in origin used by `demo`, tests and benchmarks

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod echo;
pub mod gossip;
pub mod http;
pub mod limit;
pub mod observe;
pub mod perimeter;
pub mod request_path;
pub mod route;
pub mod shard;
pub mod tls;
pub mod upstream;
