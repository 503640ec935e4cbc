//! ringgate: a thread-per-core API gateway and reverse proxy on monoio/io_uring.
//!
//! Start at [`request_path`]: it composes the stages every request goes through. The
//! concerns live in their own modules:
//! - [`config`]: the TOML contract, validation with file/line/key, the compiled [`config::Snapshot`]
//! - [`shard`]: threads, runtimes, listeners, accept loops, drain
//! - [`http`]: strict HTTP/1.1 parsing, chunked coding, buffered I/O
//! - [`route`]: host/path/method lookup tables
//! - [`tls`]: TLS termination and origination (rustls), certificates, SNI, mTLS
//! - [`gossip`]: the lock-free cross-shard channel (backend state now, global quotas next)
//! - [`upstream`]: target choice and per-shard keep-alive pools
//! - [`admin`]: the admin listener (`/healthz`, `/upstreams`) on its own thread
//! - [`control`]: the control thread (start-up reports, signals)
//! - [`echo`]: the built-in origin used by `demo`, tests and benchmarks

pub mod admin;
pub mod config;
pub mod control;
pub mod echo;
pub mod gossip;
pub mod http;
pub mod observe;
pub mod request_path;
pub mod route;
pub mod shard;
pub mod tls;
pub mod upstream;
