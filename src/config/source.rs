//! Maps key paths (`routes[2].upstream`) to line numbers in the config text, and byte offsets
//! back to key paths, so every problem can point at its line.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub struct KeyLines<'a> {
    text: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let close = stripped.find(']').unwrap_or(stripped.len());
            if let Ok(i) = stripped[..close].parse() {
                out.push(Segment::Index(i));
            }
            rest = stripped.get(close + 1..).unwrap_or("");
        }
    }
    out
}

impl<'a> KeyLines<'a> {
    pub fn new(text: &'a str) -> Self {
        KeyLines {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The line of the deepest part of `path` present in the file (a missing key points at
    /// its table).
    pub fn line(&self, path: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut span = root.span();
        let mut table: Option<&DeTable> = Some(root.get_ref());
        let mut value: Option<&DeValue> = None;
        for segment in segments(path) {
            let next = match (segment, table, value) {
                (Segment::Key(k), Some(t), _) => t.get(k),
                (Segment::Key(k), None, Some(v)) => v.get(k),
                (Segment::Index(i), _, Some(v)) => v.get(i),
                _ => None,
            };
            let Some(next) = next else { break };
            span = next.span();
            table = None;
            value = Some(next.get_ref());
        }
        if span.start == 0 && span.end == self.text.len() {
            return None;
        }
        Some(line_of(self.text, span.start))
    }

    /// The key path of the innermost value whose span holds `offset`.
    pub fn key_at(&self, offset: usize) -> String {
        let Some(root) = &self.root else {
            return String::new();
        };
        let mut path = String::new();
        walk_table(root.get_ref(), offset, &mut path);
        path
    }
}

/// TOML spans of tables and arrays of tables do not always cover their contents, so the
/// innermost entry is the one starting last at or before `offset`.
fn walk_table(table: &DeTable, offset: usize, path: &mut String) {
    let best = table
        .iter()
        .filter(|(k, _)| k.span().start <= offset)
        .max_by_key(|(k, _)| k.span().start);
    if let Some((key, value)) = best {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        walk_value(value.get_ref(), offset, path);
    }
}

fn walk_value(value: &DeValue, offset: usize, path: &mut String) {
    match value {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(items) => {
            let best = items
                .iter()
                .enumerate()
                .filter(|(_, item)| item.span().start <= offset)
                .max_by_key(|(_, item)| item.span().start);
            if let Some((i, item)) = best {
                path.push_str(&format!("[{i}]"));
                walk_value(item.get_ref(), offset, path);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nworkers = 2\n\n[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nupstream = \"x\"\n";

    #[test]
    fn key_paths_map_to_lines() {
        let lines = KeyLines::new(TEXT);
        assert_eq!(lines.line("server.workers"), Some(2));
        assert_eq!(lines.line("routes[1].upstream"), Some(9));
        assert_eq!(lines.line("routes[0].name"), Some(5));
    }

    #[test]
    fn offsets_map_to_key_paths() {
        let lines = KeyLines::new(TEXT);
        let offset = TEXT.find("\"x\"").unwrap();
        assert_eq!(lines.key_at(offset), "routes[1].upstream");
    }
}
