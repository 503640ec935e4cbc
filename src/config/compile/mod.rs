//! The compiler: checks a parsed [`Config`] and compiles it into a [`Snapshot`], collecting
//! every problem (not just the first) with its key path and line. One file per concern:
//! [`listeners`], [`upstreams`], [`routes`]; this file holds the checker and the order.

mod auth;
mod limits;
mod listeners;
mod routes;
mod upstreams;
mod warnings;

use super::source::KeyLines;
use crate::config::file::*;
use crate::config::snapshot::*;
use crate::config::{Problem, Secret};
use crate::route::Router;
use crate::tls::TlsProblem;
use listeners::*;
use routes::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
pub use upstreams::sticky_ids;
use upstreams::*;

struct Checker<'a> {
    lines: &'a KeyLines<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.problems.push(Problem {
            line: self.lines.line(&key),
            key,
            message: message.into(),
        });
    }

    fn tls_problems(&mut self, prefix: &str, problems: Vec<TlsProblem>) {
        for p in problems {
            let key = if p.key.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", p.key)
            };
            self.problem(key, p.message);
        }
    }

    fn unique_names<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            if name.is_empty() {
                self.problem(format!("{section}[{i}].name"), "name must not be empty");
            } else if let Some(first) = seen.insert(name, i) {
                self.problem(
                    format!("{section}[{i}].name"),
                    format!("duplicate name {name:?} (also used by {section}[{first}])"),
                );
            }
        }
    }
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::is_token_byte)
}

fn is_field_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn is_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Validates `config` and compiles it; `file` names the config in the snapshot.
pub fn compile(file: &Path, config: &Config, lines: &KeyLines) -> Result<Snapshot, Vec<Problem>> {
    let mut c = Checker {
        lines,
        problems: Vec::new(),
    };
    let workers = match config.server.workers {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };
    if !(16..=32768).contains(&config.server.io_uring_entries)
        || !config.server.io_uring_entries.is_power_of_two()
    {
        c.problem(
            "server.io_uring_entries",
            "must be a power of two between 16 and 32768",
        );
    }
    check_limits(&mut c, "limits", &config.limits);
    let base = file.parent().unwrap_or(Path::new("."));
    if config.server.gossip_interval.0.is_zero()
        || config.server.gossip_interval.0 > Duration::from_secs(1)
    {
        c.problem("server.gossip_interval", "must be between 1ms and 1s");
    }
    let admin = config.admin.as_ref().and_then(|a| match a.bind.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.problem(
                "admin.bind",
                format!(
                    "bad address {:?}: expected IP:PORT such as \"127.0.0.1:9901\"",
                    a.bind
                ),
            );
            None
        }
    });
    let admin_token = config.admin.as_ref().and_then(|a| {
        let token = a.token.as_ref().and_then(|reference| {
            super::Secret::load(reference, base)
                .map_err(|e| c.problem("admin.token", e))
                .ok()
        });
        if a.token.is_none() && admin.is_some_and(|addr: SocketAddr| !addr.ip().is_loopback()) {
            c.problem(
                "admin.token",
                "required when admin.bind is not a loopback address (the admin API would be open to the network)",
            );
        }
        token
    });
    let access_log = config.access_log.as_ref().map(|a| AccessLogSpec {
        file: log_file(&mut c, "access_log.path", &a.path, base),
        format: a.format,
    });
    let audit_log = config.audit_log.as_ref().map(|a| AccessLogSpec {
        file: log_file(&mut c, "audit_log.path", &a.path, base),
        format: AccessLogFormat::Json,
    });
    let listeners = compile_listeners(&mut c, config, base);
    warnings::check_admin_clash(&mut c, admin, &listeners);
    let upstreams = compile_upstreams(&mut c, config, base);
    let auth = auth::compile_auth(&mut c, config, base);
    let trusted_proxies = cidrs(
        &mut c,
        "server.trusted_proxies",
        &config.server.trusted_proxies,
    );
    let (rate_limits, cluster) = limits::compile_limits(&mut c, config, base);
    let (routes, keys) = compile_routes(&mut c, config, &upstreams, &auth, &rate_limits, base);
    let router = match Router::build(&keys) {
        Ok(r) => Some(r),
        Err(conflicts) => {
            for conflict in conflicts {
                c.problem(
                    format!("routes[{}]", conflict.second),
                    format!(
                        "route {:?} matches the same host, path and methods as route {:?}",
                        config.routes[conflict.second].name, config.routes[conflict.first].name
                    ),
                );
            }
            None
        }
    };
    let warnings = warnings::warnings(&c, config);
    match router {
        Some(router) if c.problems.is_empty() => Ok(Snapshot {
            warnings,
            admin_line: lines.line("admin.bind"),
            file: file.to_path_buf(),
            workers,
            pin_cores: config.server.pin_cores,
            drain_timeout: config.server.drain_timeout.0,
            io_uring_entries: config.server.io_uring_entries,
            io_driver: config.server.io_driver,
            gossip_interval: config.server.gossip_interval.0,
            admin,
            admin_token,
            access_log,
            audit_log,
            keep_escaped_slashes: config.server.path_escaped_slashes == super::EscapedSlashes::Keep,
            total_targets: upstreams.iter().map(|u| u.targets.len()).sum(),
            source: config.clone(),
            listeners,
            upstreams,
            routes,
            router: std::sync::Arc::new(router),
            auth: std::sync::Arc::new(auth),
            trusted_proxies,
            rate_limits,
            cluster,
            hosts_file: config.server.hosts_file.as_ref().map(|p| base.join(p)),
            reloadable: true,
        }),
        _ => Err(c.problems),
    }
}

/// A list of CIDRs, each problem naming its index.
fn cidrs(c: &mut Checker, key: &str, list: &[String]) -> Vec<crate::perimeter::Cidr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            text.parse()
                .map_err(|e: String| c.problem(format!("{key}[{i}]"), e))
                .ok()
        })
        .collect()
}

/// `ip_allow` and `ip_deny` under `key`.
fn ip_rules(
    c: &mut Checker,
    key: &str,
    allow: &[String],
    deny: &[String],
) -> crate::perimeter::IpRules {
    crate::perimeter::IpRules {
        allow: cidrs(c, &format!("{key}.ip_allow"), allow),
        deny: cidrs(c, &format!("{key}.ip_deny"), deny),
    }
}

/// A log's file (`None`: stdout). Its folder must exist: the file is created on first open,
/// but a typo in the folder would otherwise only show as dropped lines at run time.
fn log_file(c: &mut Checker, key: &str, path: &str, base: &Path) -> Option<std::path::PathBuf> {
    if path == "stdout" {
        return None;
    }
    let file = base.join(path);
    let folder = file.parent().unwrap_or(Path::new("."));
    if path.is_empty() || path.ends_with('/') || file.is_dir() {
        c.problem(key, format!("{path:?} is not a file name"));
    } else if !folder.as_os_str().is_empty() && !folder.is_dir() {
        c.problem(
            key,
            format!(
                "folder {} does not exist (the file is created, its folder is not)",
                folder.display()
            ),
        );
    }
    Some(file)
}

fn check_limits(c: &mut Checker, key: &str, limits: &Limits) {
    let header_bytes = limits.max_header_bytes.0;
    if !(1024..=1024 * 1024).contains(&header_bytes) {
        c.problem(
            format!("{key}.max_header_bytes"),
            "must be between 1KiB and 1MiB",
        );
    }
    if !(1..=10_000).contains(&limits.max_headers) {
        c.problem(format!("{key}.max_headers"), "must be between 1 and 10000");
    }
    if limits.max_uri_bytes.0 < 16 || limits.max_uri_bytes.0 > header_bytes {
        c.problem(
            format!("{key}.max_uri_bytes"),
            "must be at least 16 and at most max_header_bytes",
        );
    }
    if limits.max_connections == 0 {
        c.problem(format!("{key}.max_connections"), "must be at least 1");
    }
    if limits.max_connections_per_ip == 0 {
        c.problem(
            format!("{key}.max_connections_per_ip"),
            "must be at least 1",
        );
    }
    for (name, d) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("send_timeout", limits.send_timeout),
        ("body_read_timeout", limits.body_read_timeout),
    ] {
        if d.0.is_zero() {
            c.problem(format!("{key}.{name}"), "must be greater than zero");
        }
    }
}

fn effective(limits: &Limits) -> EffectiveLimits {
    EffectiveLimits {
        max_header_bytes: limits.max_header_bytes.0 as usize,
        max_headers: limits.max_headers,
        max_uri_bytes: limits.max_uri_bytes.0 as usize,
        max_body_bytes: limits.max_body_bytes.0,
        header_read_timeout: limits.header_read_timeout.0,
        idle_timeout: limits.idle_timeout.0,
        send_timeout: limits.send_timeout.0,
        body_read_timeout: limits.body_read_timeout.0,
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use std::path::Path;

    const LISTENER: &str = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n";
    const UPSTREAM: &str = "[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9\"]\n";

    /// Compiles `text` and returns (key, line, message) of every problem.
    fn problems(text: &str) -> Vec<(String, Option<usize>, String)> {
        match load_str(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.key, p.line, p.message))
                .collect(),
        }
    }

    #[test]
    fn each_mistake_is_named_by_its_key_and_line() {
        // (config, the key named, a piece of the message)
        let table: &[(String, &str, &str)] = &[
            (String::new(), "listeners", "at least one"),
            (
                format!("{LISTENER}[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\n"),
                "listeners[1].bind",
                "also bound by listeners[0]",
            ),
            (
                format!("{LISTENER}[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n"),
                "listeners[1].name",
                "duplicate name",
            ),
            (
                format!("[server]\nio_uring_entries = 1000\n{LISTENER}"),
                "server.io_uring_entries",
                "power of two",
            ),
            (
                format!("[server]\ngossip_interval = \"2s\"\n{LISTENER}"),
                "server.gossip_interval",
                "between 1ms and 1s",
            ),
            (
                format!("[admin]\nbind = \"0.0.0.0:9901\"\n{LISTENER}"),
                "admin.token",
                "not a loopback",
            ),
            (
                format!("[access_log]\npath = \"no-such-folder/a.log\"\n{LISTENER}"),
                "access_log.path",
                "does not exist",
            ),
            (
                format!("[audit_log]\npath = \"logs/\"\n{LISTENER}"),
                "audit_log.path",
                "not a file name",
            ),
            (
                format!("[limits]\nmax_headers = 0\n{LISTENER}"),
                "limits.max_headers",
                "between 1 and 10000",
            ),
            (
                format!("{LISTENER}[[upstreams]]\nname = \"u\"\ntargets = []\n"),
                "upstreams[0].targets",
                "at least one target",
            ),
            (
                format!(
                    "{LISTENER}[[upstreams]]\nname = \"u\"\ntargets = [{{ addr = \"127.0.0.1:9\", weight = 0 }}]\n"
                ),
                "upstreams[0].targets[0]",
                "weight",
            ),
            (
                format!("{LISTENER}{UPSTREAM}retry_budget = {{ percent = 101 }}\n"),
                "upstreams[0].retry_budget.percent",
                "between 0 and 100",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"nope\"\n"
                ),
                "routes[0].upstream",
                "unknown upstream",
            ),
            (
                format!("{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\n"),
                "routes[0]",
                "needs upstream or direct_response",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/a\"\npath_prefix = \"/b\"\nupstream = \"u\"\n"
                ),
                "routes[0].path",
                "not both",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/a\"\nstrip_prefix = true\nupstream = \"u\"\n"
                ),
                "routes[0].strip_prefix",
                "needs path_prefix",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\nretries = 11\n"
                ),
                "routes[0].retries",
                "between 0 and 10",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\nrequest_headers = {{ remove = [\"host\"] }}\n"
                ),
                "routes[0].request_headers.remove[0]",
                "cannot be removed",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\ndirect_response = {{ status = 99 }}\n"
                ),
                "routes[0].direct_response.status",
                "between 200 and 599",
            ),
            (
                format!(
                    "{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\nbogus = 1\n"
                ),
                "routes[0]",
                "unknown field",
            ),
        ];
        for (text, key, message) in table {
            let found = problems(text);
            let hit = found
                .iter()
                .find(|(k, _, m)| k.starts_with(key) && m.contains(message));
            assert!(
                hit.is_some(),
                "{key}: {message:?} not among {found:#?}\nin:\n{text}"
            );
            if !text.is_empty() && *key != "listeners" {
                assert!(hit.unwrap().1.is_some(), "{key}: no line in {found:?}");
            }
        }
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let text = format!(
            "[limits]\nmax_headers = 0\n{LISTENER}{UPSTREAM}retry_budget = {{ percent = 200 }}\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"nope\"\n"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.0).collect();
        for key in [
            "limits.max_headers",
            "upstreams[0].retry_budget.percent",
            "routes[0].upstream",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn a_good_config_compiles_with_safe_defaults() {
        let s = load_str(
            Path::new("t.toml"),
            &format!("{LISTENER}{UPSTREAM}[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n"),
        )
        .unwrap();
        let limits = s.listeners[0].limits;
        assert_eq!(limits.max_header_bytes, 16 * 1024);
        assert_eq!(limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(s.routes[0].retries, 1);
        assert!(s.admin.is_none() && s.admin_token.is_none());
        assert_eq!(s.upstreams[0].targets[0].slot, 0);
    }
}
