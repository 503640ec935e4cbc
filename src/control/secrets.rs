//! The secret-file watcher: every `file:` secret an injection uses is checked twice a
//! second; when the file changed, it is re-read and the new value goes to every shard
//! through its inbox, so a rotated upstream key takes effect without a reload. A file that
//! cannot be read (or holds a value that is not a header value) keeps the last good value,
//! with a warning naming the file, never the value.

use super::reload::ControlPlane;
use crate::config::Secret;
use crate::perimeter::inject::SecretSource;
use crate::shard::Command;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const EVERY: Duration = Duration::from_millis(500);

/// What a file looked like when last read: modification time, length, and change time
/// (ctime: set by every write, and not settable by `touch` or `cp -p`).
type Stamp = (Option<SystemTime>, u64, i64, i64);
use crate::config::MAX_SECRET_BYTES;

pub(super) fn start(plane: Arc<ControlPlane>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("secret-files".into())
        .spawn(move || run(&plane))
        .map(|_| ())
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.modified().ok(),
        meta.len(),
        meta.ctime(),
        meta.ctime_nsec(),
    ))
}

fn run(plane: &ControlPlane) {
    // Kept across reloads: a file that changed after its last push is pushed again even if
    // a reload read it in between (shards prefer a pushed value to the one loaded with the
    // config, so the newest read always wins within one period).
    let mut seen: HashMap<PathBuf, Stamp> = HashMap::new();
    loop {
        if crate::shard::DRAIN.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let current = plane.current();
        let snapshot = &current.snapshot;
        let injected = snapshot
            .routes
            .iter()
            .filter_map(|r| r.injections.as_deref())
            .flat_map(|i| i.all())
            .map(|i| &i.source);
        let consumers = snapshot
            .auth
            .consumers
            .iter()
            .flat_map(|c| c.secrets.values());
        let mut files: Vec<PathBuf> = injected
            .chain(consumers)
            .filter_map(|source| match source {
                SecretSource::File { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        files.sort();
        files.dedup();
        for path in files {
            let Some(now) = stamp(&path) else { continue };
            let before = *seen.entry(path.clone()).or_insert(now);
            if before == now {
                continue;
            }
            seen.insert(path.clone(), now);
            reread(plane, path);
        }
        std::thread::sleep(EVERY);
    }
}

fn reread(plane: &ControlPlane, path: PathBuf) {
    let reference = format!("file:{}", path.display());
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_SECRET_BYTES) {
        crate::observe::warn(&format!(
            "secret {}: the changed file is over {MAX_SECRET_BYTES} bytes; the last good value stays in use",
            path.display()
        ));
        return;
    }
    // The path is as the config resolved it (relative to the working directory when the
    // config was given by a relative path): read it from here, as the watcher stats it.
    let secret = Secret::load(&reference, std::path::Path::new(".")).and_then(|s| {
        if crate::auth::jwt::is_header_safe(s.expose()) {
            Ok(s)
        } else {
            Err("the new value has control characters (a line break?)".to_string())
        }
    });
    match secret {
        Ok(secret) => {
            let value = Arc::new(secret);
            for shard in 0..plane.mailboxes.len() {
                plane.send(
                    shard,
                    Command::SecretFile {
                        path: path.clone(),
                        value: value.clone(),
                    },
                );
            }
            crate::observe::info(&format!(
                "secret {} changed: the new value is in use",
                path.display()
            ));
        }
        Err(e) => crate::observe::warn(&format!(
            "secret {}: cannot use the changed file ({e}); the last good value stays in use",
            path.display()
        )),
    }
}
