//! The control thread: starts the shards, turns their start-up reports into one clear result
//! (a bind failure names the listener's file, line and key), handles signals, and waits for
//! the shards to drain. Never on a request's path.

use crate::config::Snapshot;
use crate::observe;
use crate::shard::{self, DRAIN, Started};
use crate::upstream::Cluster;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{file}{line}: listeners[{index}].bind: cannot bind {addr}: {error}")]
    Bind {
        file: String,
        line: String,
        index: usize,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("shard {shard}: cannot start a runtime: {error}")]
    Runtime { shard: usize, error: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{file}: admin.bind: cannot bind {addr}: {error}")]
    Admin {
        file: String,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// A running gateway: its shard threads and every listener socket they bound.
pub struct Running {
    threads: Vec<std::thread::JoinHandle<()>>,
    listener_fds: Vec<RawFd>,
}

/// Starts every shard and waits until each has bound its listeners (or one failed).
pub fn start(snapshot: &Arc<Snapshot>) -> Result<Running, StartError> {
    let cluster = Arc::new(Cluster::new(snapshot));
    if let Some(addr) = snapshot.admin {
        crate::admin::start(addr, snapshot.clone(), cluster.clone()).map_err(|error| {
            StartError::Admin {
                file: snapshot.file.display().to_string(),
                addr,
                error,
            }
        })?;
    }
    let (tx, rx) = mpsc::channel();
    let threads = shard::spawn_shards(snapshot, &cluster, tx);
    let mut running = Running {
        threads,
        listener_fds: Vec::new(),
    };
    for _ in 0..snapshot.workers {
        let report = rx.recv();
        let failure = match report {
            Ok(Started::Ready { listener_fds, .. }) => {
                running.listener_fds.extend(listener_fds);
                continue;
            }
            Ok(Started::BindFailed { listener, error }) => {
                let spec = &snapshot.listeners[listener];
                StartError::Bind {
                    file: snapshot.file.display().to_string(),
                    line: spec.bind_line.map(|l| format!(":{l}")).unwrap_or_default(),
                    index: listener,
                    addr: spec.addr,
                    error,
                }
            }
            Ok(Started::RuntimeFailed { shard, error }) => StartError::Runtime { shard, error },
            Err(_) => StartError::Runtime {
                shard: 0,
                error: std::io::Error::other("a shard thread exited during start-up"),
            },
        };
        running.begin_drain();
        return Err(failure);
    }
    Ok(running)
}

impl Running {
    /// Stops accepting at once (new connections are refused) and tells shards to drain.
    pub fn begin_drain(&self) {
        DRAIN.store(true, Ordering::Release);
        for &fd in &self.listener_fds {
            // SAFETY: listener fds stay open until their shard exits, which happens only
            // after DRAIN is set; shutdown on a listening socket makes pending accepts fail.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    /// Serves until SIGTERM/SIGINT, drains, and returns when every shard has stopped.
    /// A second signal exits the process at once.
    pub fn serve_until_signalled(self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(StartError::Signals)?;
        let listener_fds = self.listener_fds.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0;
                for signal in signals.forever() {
                    seen += 1;
                    if seen == 1 {
                        observe::info(&format!(
                            "signal {signal}: draining (send again to exit at once)"
                        ));
                        Running {
                            threads: Vec::new(),
                            listener_fds: listener_fds.clone(),
                        }
                        .begin_drain();
                    } else {
                        observe::warn("second signal: exiting without waiting for requests");
                        std::process::exit(1);
                    }
                }
            })
            .map_err(StartError::Signals)?;
        self.wait();
        observe::info("stopped");
        Ok(())
    }

    /// Waits for every shard thread to finish.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
