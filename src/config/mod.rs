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
pub mod resolve;
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

impl Snapshot {
    /// Each warning as `FILE:LINE: KEY: message`.
    pub fn warning_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.warnings.iter().map(|w| {
            ConfigError {
                file: self.file.clone(),
                problems: vec![w.clone()],
            }
            .to_string()
        })
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
    let problem_at = |e: &toml::de::Error| {
        let start = e.span().map(|s| s.start);
        Problem {
            key: start.map(|s| lines.key_at(s)).unwrap_or_default(),
            line: start.map(|s| source::line_of(text, s)),
            message: e.message().trim().to_string(),
        }
    };
    // A syntax error stops everything: nothing after it can be trusted.
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(fail(vec![problem_at(&e)]));
    }
    let first = match toml::from_str::<Config>(text) {
        Ok(config) => {
            return compile(path, &config, &lines).map_err(|mut problems| {
                // In file order (problems without a line, such as a missing table, last).
                problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
                fail(problems)
            });
        }
        Err(first) => first,
    };
    let (mut problems, rest) = type_problems(text, first, &problem_at);
    // What the rest of the file means is checked too. Problems the blanking itself caused
    // (a table left without a field, a name nothing defines any more) have no line of
    // their own or sit on a blanked line, and are left out.
    if let Some((rest, blanked_lines)) = rest
        && let Err(semantic) = compile(path, &rest, &lines)
    {
        let reported: Vec<usize> = problems.iter().filter_map(|p| p.line).collect();
        problems.extend(semantic.into_iter().filter(|p| {
            p.line
                .is_some_and(|l| !blanked_lines.contains(&l) && !reported.contains(&l))
        }));
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    }
    Err(fail(problems))
}

/// Every type problem of a file that parses: serde stops at the first, so each offending
/// part is blanked out (its lines kept as empty lines, so later lines keep their numbers) and
/// the file read again, until it reads or nothing more can be blanked.
/// Also returns the config the rest of the file makes, with the (1-based) lines blanked.
fn type_problems(
    text: &str,
    first: toml::de::Error,
    problem_at: &dyn Fn(&toml::de::Error) -> Problem,
) -> (Vec<Problem>, Option<(Config, Vec<usize>)>) {
    let mut problems = vec![problem_at(&first)];
    let mut blanked = text.to_string();
    let mut error = first;
    let mut rest = None;
    for _ in 0..64 {
        let Some(span) = error.span() else { break };
        if !blank_out(&mut blanked, span) {
            break;
        }
        match toml::from_str::<Config>(&blanked) {
            Ok(config) => {
                let blanked_lines = text
                    .lines()
                    .zip(blanked.lines())
                    .enumerate()
                    .filter(|(_, (was, is))| was != is)
                    .map(|(n, _)| n + 1)
                    .collect();
                rest = Some((config, blanked_lines));
                break;
            }
            Err(next) => {
                let problem = problem_at(&next);
                // Blanking a key may make it "missing": that is the same problem again.
                let repeated = problems.iter().any(|p| {
                    p.line == problem.line
                        || (!p.key.is_empty()
                            && problem.message.contains("missing field")
                            && problem
                                .key
                                .starts_with(&p.key[..p.key.rfind('.').unwrap_or(0)]))
                });
                if !repeated {
                    problems.push(problem);
                }
                error = next;
            }
        }
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    (problems, rest)
}

/// Blanks the lines `span` covers; a span on a table header blanks the whole table (its
/// problem, such as a missing field, is the table's). Returns false when nothing changed.
fn blank_out(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let mut end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i);
    if text[start..].trim_start().starts_with('[') {
        // To the next table header.
        let body = text[end..].find("\n[").map_or(text.len(), |i| end + i);
        end = body;
    }
    let blank: String = text[start..end]
        .chars()
        // One space per byte: later spans keep their offsets into the original text.
        .flat_map(|c| {
            let width = if c == '\n' { 0 } else { c.len_utf8() };
            std::iter::repeat_n(' ', width).chain((c == '\n').then_some('\n'))
        })
        .collect();
    if blank == text[start..end] {
        return false;
    }
    text.replace_range(start..end, &blank);
    true
}
