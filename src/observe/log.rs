//! The gateway's own log lines on stderr (not the access or audit logs): an RFC 3339 time and
//! a level on every line, as text or JSON (`[server] log_format`).
//!
//! A shard never writes to stderr itself (a full pipe would stall it): its lines go into a
//! bounded lock-free queue that a writer thread empties; when the queue is full the line is
//! dropped and counted. Other threads (control, admin, start-up) write directly, after
//! flushing what the shards queued, so lines keep their order.

use crate::config::LogFormat;
use crossbeam_queue::ArrayQueue;
use std::cell::Cell;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn text(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }

    fn json(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

static JSON: AtomicBool = AtomicBool::new(false);
/// Lines shards could not queue.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
const QUEUE_LINES: usize = 1024;

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

static QUEUE: OnceLock<ArrayQueue<Vec<u8>>> = OnceLock::new();

fn queue() -> &'static ArrayQueue<Vec<u8>> {
    QUEUE.get_or_init(|| {
        // The writer for shard lines; if it cannot start, shard lines wait for the next
        // line another thread writes (which flushes the queue first).
        let _ = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(|| {
                // Shard lines are rare (start, stop, a panic): the wait backs off when quiet.
                let mut wait = Duration::from_millis(20);
                loop {
                    std::thread::sleep(wait);
                    let wrote = flush_queued(&mut std::io::stderr().lock());
                    wait = if wrote {
                        Duration::from_millis(20)
                    } else {
                        (wait * 2).min(Duration::from_millis(500))
                    };
                }
            });
        ArrayQueue::new(QUEUE_LINES)
    })
}

pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Marks the calling thread as a shard: its lines are queued, never written in place.
pub fn mark_shard_thread() {
    ON_SHARD.with(|s| s.set(true));
}

/// One line in the configured format.
pub fn line(level: Level, message: &str) {
    let formatted = format_line(
        level,
        message,
        crate::observe::unix_ms(),
        JSON.load(Ordering::Relaxed),
    );
    if ON_SHARD.with(Cell::get) {
        if queue().push(formatted).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let mut err = std::io::stderr().lock();
    flush_queued(&mut err);
    let _ = err.write_all(&formatted);
}

/// Writes what shards queued; true when there was something.
fn flush_queued(out: &mut impl Write) -> bool {
    let Some(q) = QUEUE.get() else {
        return false;
    };
    let mut wrote = false;
    while let Some(line) = q.pop() {
        let _ = out.write_all(&line);
        wrote = true;
    }
    wrote
}

fn format_line(level: Level, message: &str, unix_ms: u64, json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    if json {
        out.extend_from_slice(b"{\"time\":\"");
        crate::observe::access_log::push_rfc3339(&mut out, unix_ms);
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(level.json().as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        crate::http::push_escaped_json(&mut out, message.as_bytes(), true);
        out.extend_from_slice(b"}\n");
    } else {
        crate::observe::access_log::push_rfc3339(&mut out, unix_ms);
        out.push(b' ');
        out.extend_from_slice(level.text().as_bytes());
        out.push(b' ');
        // Continuation lines (a list of config problems) are indented under the first.
        for (i, part) in message.split('\n').enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\n    ");
            }
            out.extend_from_slice(part.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_carry_time_and_level() {
        let line = format_line(Level::Warn, "a\nb", 1_780_000_000_123, false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-05-28T20:26:40.123Z WARN a\n    b\n"
        );
    }

    #[test]
    fn json_lines_are_one_escaped_object() {
        let line = format_line(Level::Info, "say \"hi\"\n", 0, true);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "say \"hi\"\n");
    }
}
