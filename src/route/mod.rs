//! Route matching: host (exact, then `*.suffix` wildcards longest first, then routes without a
//! host), then path (exact, then the longest segment-aware prefix), then method.
//!
//! Owns the compiled lookup tables only; it knows nothing about what a route does once matched.
//! Lookups are hash probes (one per host candidate and one per path segment boundary), never a
//! scan over all routes.

use std::collections::HashMap;

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware prefix: `/users` matches `/users` and `/users/7`, not `/usersX`.
    Prefix(String),
}

/// What the router needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteKey {
    pub host: Option<String>,
    pub path: PathMatch,
    /// Upper-case method names; `None` allows every method.
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `route` is the index into the keys given to [`Router::build`]; `prefix_len` is how many
    /// bytes of the path the matched prefix covers (0 for exact matches).
    Found {
        route: usize,
        prefix_len: usize,
    },
    /// A route matched host and path but not the method; `allow` lists what it accepts.
    MethodNotAllowed {
        allow: String,
    },
    NotFound,
}

#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    methods: Option<Vec<String>>,
}

impl Entry {
    fn allows(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET")),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    exact: HashMap<Box<str>, Vec<Entry>>,
    prefix: HashMap<Box<str>, Vec<Entry>>,
}

#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, Table>,
    /// Keyed by the suffix including its leading dot: `*.example.com` -> `.example.com`.
    wildcard_hosts: HashMap<Box<str>, Table>,
    any_host: Table,
}

/// Two routes that would match the same requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub first: usize,
    pub second: usize,
}

fn methods_overlap(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

impl Router {
    /// Builds the tables; reports routes that match exactly the same requests.
    pub fn build(keys: &[RouteKey]) -> Result<Router, Vec<Conflict>> {
        let mut router = Router::default();
        let mut conflicts = Vec::new();
        for (route, key) in keys.iter().enumerate() {
            let table = match &key.host {
                None => &mut router.any_host,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => router
                        .wildcard_hosts
                        .entry(suffix.to_ascii_lowercase().into())
                        .or_default(),
                    None => router
                        .exact_hosts
                        .entry(h.to_ascii_lowercase().into())
                        .or_default(),
                },
            };
            let (map, path) = match &key.path {
                PathMatch::Exact(p) => (&mut table.exact, p),
                PathMatch::Prefix(p) => (&mut table.prefix, p),
            };
            let entries = map.entry(path.as_str().into()).or_default();
            if let Some(existing) = entries
                .iter()
                .find(|e| methods_overlap(&e.methods, &key.methods))
            {
                conflicts.push(Conflict {
                    first: existing.route,
                    second: route,
                });
            }
            entries.push(Entry {
                route,
                methods: key.methods.clone(),
            });
        }
        if conflicts.is_empty() {
            Ok(router)
        } else {
            Err(conflicts)
        }
    }

    /// `host` must already be lower-case and without its port; `path` excludes the query.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Match {
        let mut first_allow: Option<String> = None;
        let mut try_table = |table: &Table| -> Option<Match> {
            let (entries, prefix_len) = table.find_path(path)?;
            if let Some(e) = entries.iter().find(|e| e.allows(method)) {
                return Some(Match::Found {
                    route: e.route,
                    prefix_len,
                });
            }
            if first_allow.is_none() {
                first_allow = Some(allow_header(entries));
            }
            None
        };
        if let Some(table) = self.exact_hosts.get(host)
            && let Some(m) = try_table(table)
        {
            return m;
        }
        if !self.wildcard_hosts.is_empty() {
            for (i, b) in host.bytes().enumerate() {
                if b == b'.'
                    && i > 0
                    && let Some(table) = self.wildcard_hosts.get(&host[i..])
                    && let Some(m) = try_table(table)
                {
                    return m;
                }
            }
        }
        if let Some(m) = try_table(&self.any_host) {
            return m;
        }
        match first_allow {
            Some(allow) => Match::MethodNotAllowed { allow },
            None => Match::NotFound,
        }
    }
}

impl Table {
    /// Exact match first, then prefixes from the longest candidate down: the full path, then
    /// each `/` boundary both with and without its trailing slash.
    fn find_path(&self, path: &str) -> Option<(&[Entry], usize)> {
        if let Some(e) = self.exact.get(path) {
            return Some((e, 0));
        }
        if self.prefix.is_empty() {
            return None;
        }
        if let Some(e) = self.prefix.get(path) {
            return Some((e, path.len()));
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if slash + 1 < bytes.len()
                && let Some(e) = self.prefix.get(&path[..=slash])
            {
                return Some((e, slash + 1));
            }
            if slash > 0
                && let Some(e) = self.prefix.get(&path[..slash])
            {
                return Some((e, slash));
            }
            end = slash;
        }
        None
    }
}

fn allow_header(entries: &[Entry]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for e in entries {
        for m in e.methods.iter().flatten() {
            if !methods.contains(&m.as_str()) {
                methods.push(m);
            }
            if m == "GET" && !methods.contains(&"HEAD") {
                methods.push("HEAD");
            }
        }
    }
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: Option<&str>, path: PathMatch, methods: Option<&[&str]>) -> RouteKey {
        RouteKey {
            host: host.map(str::to_string),
            path,
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
        }
    }
    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_string())
    }
    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.to_string())
    }
    fn found(route: usize, prefix_len: usize) -> Match {
        Match::Found { route, prefix_len }
    }

    #[test]
    fn prefix_is_segment_aware_and_longest_wins() {
        let r = Router::build(&[
            key(None, prefix("/users"), None),
            key(None, prefix("/users/admin"), None),
            key(None, prefix("/"), None),
        ])
        .unwrap();
        assert_eq!(r.lookup("h", "/users", "GET"), found(0, 6));
        assert_eq!(r.lookup("h", "/users/7", "GET"), found(0, 6));
        assert_eq!(r.lookup("h", "/users/admin/x", "GET"), found(1, 12));
        assert_eq!(r.lookup("h", "/usersX", "GET"), found(2, 1));
        assert_eq!(r.lookup("h", "/", "GET"), found(2, 1));
    }

    #[test]
    fn prefix_with_trailing_slash_needs_the_slash() {
        let r = Router::build(&[key(None, prefix("/api/"), None)]).unwrap();
        assert_eq!(r.lookup("h", "/api/x", "GET"), found(0, 5));
        assert_eq!(r.lookup("h", "/api", "GET"), Match::NotFound);
    }

    #[test]
    fn exact_beats_prefix_and_does_not_match_longer_paths() {
        let r = Router::build(&[
            key(None, prefix("/a"), None),
            key(None, exact("/a/b"), None),
        ])
        .unwrap();
        assert_eq!(r.lookup("h", "/a/b", "GET"), found(1, 0));
        assert_eq!(r.lookup("h", "/a/b/c", "GET"), found(0, 2));
        let r = Router::build(&[key(None, exact("/only"), None)]).unwrap();
        assert_eq!(r.lookup("h", "/only/x", "GET"), Match::NotFound);
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = Router::build(&[
            key(Some("api.example.com"), prefix("/"), None),
            key(Some("*.example.com"), prefix("/"), None),
            key(None, prefix("/"), None),
        ])
        .unwrap();
        assert_eq!(r.lookup("api.example.com", "/x", "GET"), found(0, 1));
        assert_eq!(r.lookup("www.example.com", "/x", "GET"), found(1, 1));
        assert_eq!(r.lookup("a.b.example.com", "/x", "GET"), found(1, 1));
        assert_eq!(r.lookup("example.com", "/x", "GET"), found(2, 1));
        assert_eq!(r.lookup("other.org", "/x", "GET"), found(2, 1));
    }

    #[test]
    fn host_specific_table_falls_through_when_path_missing() {
        let r = Router::build(&[
            key(Some("api.example.com"), prefix("/v1"), None),
            key(None, prefix("/health"), None),
        ])
        .unwrap();
        assert_eq!(r.lookup("api.example.com", "/health", "GET"), found(1, 7));
        assert_eq!(r.lookup("other", "/v1", "GET"), Match::NotFound);
    }

    #[test]
    fn methods_give_405_with_allow_and_get_allows_head() {
        let r = Router::build(&[
            key(None, prefix("/u"), Some(&["GET"])),
            key(None, prefix("/u"), Some(&["POST"])),
        ])
        .unwrap();
        assert_eq!(r.lookup("h", "/u", "HEAD"), found(0, 2));
        assert_eq!(r.lookup("h", "/u", "POST"), found(1, 2));
        assert_eq!(
            r.lookup("h", "/u", "DELETE"),
            Match::MethodNotAllowed {
                allow: "GET, HEAD, POST".into()
            }
        );
    }

    #[test]
    fn duplicate_routes_conflict() {
        let err = Router::build(&[
            key(None, prefix("/u"), Some(&["GET"])),
            key(None, prefix("/u"), Some(&["GET", "PUT"])),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                first: 0,
                second: 1
            }]
        );
    }

    #[test]
    fn many_routes_lookup() {
        let keys: Vec<RouteKey> = (0..1000)
            .map(|i| key(None, prefix(&format!("/svc{i}")), None))
            .collect();
        let r = Router::build(&keys).unwrap();
        assert_eq!(r.lookup("h", "/svc999/x/y", "GET"), found(999, 7));
        assert_eq!(r.lookup("h", "/svc1000", "GET"), Match::NotFound);
    }
}
