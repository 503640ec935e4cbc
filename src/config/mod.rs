//! The config file: one typed, documented struct tree read from TOML (DESIGN.md §4).
//!
//! Owns parsing, defaults and validation, and compiling a valid config into the immutable
//! [`Snapshot`] the shards share. Every problem names the file, the line and the key path.
//! Must not touch sockets or shard state: resolving upstream addresses (once, at load) is the
//! only I/O besides reading the file.
//!
//! Three parts, each depending only on the ones before it: [`file`] (the serde contract),
//! [`snapshot`] (the compiled types the data plane reads) and [`compile`] (checks and
//! compiles one into the other, one file per concern); [`reload`] says what a reload keeps.

pub mod compile;
pub mod file;
mod file_identity;
mod file_limits;
pub mod reload;
mod secret;
pub mod snapshot;
mod source;
mod units;

pub use compile::compile;
pub use file::*;
pub use file_identity::*;
pub use file_limits::*;
pub use secret::{MAX_SECRET_BYTES, Secret, constant_time_eq};
pub use snapshot::*;
pub use units::{ByteSize, ConfigDuration, parse_duration, parse_size};

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `routes[2].upstream`; empty for whole-file problems.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Everything wrong with a config file, each problem naming the file, line and key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if !p.key.is_empty() {
                write!(f, ": {}", p.key)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

/// Reads, parses, validates and compiles a config file.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            key: String::new(),
            line: None,
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    load_str(path, &text)
}

/// Parses, validates and compiles config text; `path` names it in errors.
pub fn load_str(path: &Path, text: &str) -> Result<Snapshot, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let lines = source::KeyLines::new(text);
    let config: Config = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start);
        fail(vec![Problem {
            key: start.map(|s| lines.key_at(s)).unwrap_or_default(),
            line: start.map(|s| source::line_of(text, s)),
            message: e.message().trim().to_string(),
        }])
    })?;
    compile(path, &config, &lines).map_err(fail)
}
