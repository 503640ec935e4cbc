//! The control thread: binds every listener's sockets (a bind failure names the listener's
//! file, line and key), starts the shards, handles signals (SIGHUP reloads, SIGTERM/SIGINT
//! drain) and waits for the shards to drain. Never on a request's path.

pub mod jwks;
pub mod limits;
pub mod reload;
pub mod resolve;
mod secrets;
pub mod targets;

pub use reload::{ControlPlane, Trigger};

use crate::config::Snapshot;
use crate::observe;
use crate::shard::{self, DRAIN, Reconfigure, Started};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{file}{line}: {key}: {message}")]
    Bind {
        file: String,
        line: String,
        key: String,
        message: String,
    },
    #[error("shard {shard}: cannot start a runtime: {error}")]
    Runtime { shard: usize, error: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{file}{line}: admin.bind: cannot bind {addr}: {error}")]
    Admin {
        file: String,
        line: String,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// A running gateway: its shard threads and the plane that reloads them.
pub struct Running {
    threads: Vec<std::thread::JoinHandle<()>>,
    pub plane: Arc<ControlPlane>,
}

/// Binds every listener for every shard, starts the shards and waits until each runs.
pub fn start(snapshot: &Arc<Snapshot>) -> Result<Running, StartError> {
    let plane = Arc::new(ControlPlane::new(snapshot));
    plane.start_reloader().map_err(StartError::Signals)?;
    let access_log = &plane.cluster.access_log;
    access_log.retarget(snapshot.access_log.clone());
    access_log.start_writer().map_err(StartError::Signals)?;
    let audit_log = &plane.cluster.audit_log;
    audit_log.retarget(snapshot.audit_log.clone());
    audit_log.start_writer().map_err(StartError::Signals)?;
    let listeners = reload::bind_all(snapshot).map_err(|p| StartError::Bind {
        file: snapshot.file.display().to_string(),
        line: p.line.map(|l| format!(":{l}")).unwrap_or_default(),
        key: p.key,
        message: p.message,
    })?;
    if let Some(addr) = snapshot.admin {
        crate::admin::start(addr, plane.clone()).map_err(|error| StartError::Admin {
            file: snapshot.file.display().to_string(),
            line: snapshot
                .admin_line
                .map(|l| format!(":{l}"))
                .unwrap_or_default(),
            addr,
            error,
        })?;
    }
    let first = listeners
        .into_iter()
        .map(|listeners| Reconfigure {
            snapshot: snapshot.clone(),
            generation: 1,
            listeners,
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let threads = shard::spawn_shards(first, &plane.cluster, &plane.mailboxes, tx);
    jwks::start(plane.clone()).map_err(StartError::Signals)?;
    secrets::start(plane.clone()).map_err(StartError::Signals)?;
    limits::start(plane.clone()).map_err(StartError::Signals)?;
    targets::start(plane.clone()).map_err(StartError::Signals)?;
    resolve::start(plane.clone()).map_err(StartError::Signals)?;
    let running = Running { threads, plane };
    for _ in 0..snapshot.workers {
        let failure = match rx.recv() {
            Ok(Started::Ready { .. }) => continue,
            Ok(Started::RuntimeFailed { shard, error }) => StartError::Runtime { shard, error },
            Err(_) => StartError::Runtime {
                shard: 0,
                error: std::io::Error::other("a shard thread exited during start-up"),
            },
        };
        begin_drain();
        return Err(failure);
    }
    Ok(running)
}

/// Stops accepting and tells shards to drain (each closes its listeners on its next tick).
pub fn begin_drain() {
    DRAIN.store(true, Ordering::Release);
}

impl Running {
    /// Serves until SIGTERM/SIGINT, drains, and returns when every shard has stopped. A
    /// second signal exits the process at once. SIGHUP reloads the config file.
    pub fn serve_until_signalled(self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(StartError::Signals)?;
        let plane = self.plane.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0;
                for signal in signals.forever() {
                    if signal == SIGUSR1 {
                        // logrotate moved the file away: write to a new one.
                        plane.cluster.access_log.reopen();
                        plane.cluster.audit_log.reopen();
                        continue;
                    }
                    if signal == SIGHUP {
                        if !DRAIN.load(Ordering::Acquire) {
                            // On the reloader thread: this one must stay free for SIGTERM.
                            drop(plane.request_reload(Trigger::Signal));
                        }
                        continue;
                    }
                    seen += 1;
                    if seen == 1 {
                        observe::info(&format!(
                            "signal {signal}: draining (send again to exit at once)"
                        ));
                        begin_drain();
                    } else {
                        observe::warn("second signal: exiting without waiting for requests");
                        std::process::exit(1);
                    }
                }
            })
            .map_err(StartError::Signals)?;
        let plane = self.plane.clone();
        self.wait();
        for log in [&plane.cluster.access_log, &plane.cluster.audit_log] {
            log.close(std::time::Duration::from_secs(2));
        }
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
