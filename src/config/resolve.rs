//! Target addresses from `HOST:PORT`: an IP literal as it is, a host name through
//! `[server] hosts_file` (when set, an `/etc/hosts`-format file read at every lookup) and
//! then the system resolver. Blocking: called at load and by the control thread's resolver
//! ([`crate::control::resolve`]), never by a shard.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

/// A hosts file larger than this is refused (it is read at every lookup).
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// `HOST:PORT` split and checked, without resolving.
pub fn split_target(addr: &str) -> Result<(&str, u16), String> {
    let bad = || format!("bad address {addr:?}: expected HOST:PORT such as \"127.0.0.1:9001\"");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Whether `addr` names its host (and so is looked up again every `resolve_interval`).
pub fn is_host_name(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_err()
}

/// The address of `addr`. With several, `keep` stays while the name still resolves to it
/// (round-robin DNS must not move a target on every lookup); else the first, IPv4 first.
pub fn resolve_target(
    addr: &str,
    hosts_file: Option<&Path>,
    keep: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let (host, port) = split_target(addr)?;
    let mut found: Vec<SocketAddr> = Vec::new();
    if let Some(file) = hosts_file {
        found = hosts_file_lookup(file, host)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
    }
    if found.is_empty() {
        found = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
            .collect();
    }
    if let Some(kept) = keep.filter(|k| found.contains(k)) {
        return Ok(kept);
    }
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {addr:?}: no addresses"))
}

/// Every address `host` has in a hosts file (`IP NAME [ALIAS...]` lines, `#` comments;
/// names compared without case), in file order.
fn hosts_file_lookup(file: &Path, host: &str) -> Result<Vec<IpAddr>, String> {
    let text = read_hosts_file(file)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect())
}

/// A hosts file's text, bounded.
pub fn read_hosts_file(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_HOSTS_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes.len() as u64 > MAX_HOSTS_FILE {
        return Err(format!("{}: larger than 1 MiB", file.display()));
    }
    // Names and addresses are ASCII; a Latin-1 comment must not make the file unreadable.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "ringgate-hosts-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn literals_need_no_lookup_and_names_come_from_the_hosts_file_first() {
        assert_eq!(
            resolve_target("[::1]:80", None, None).unwrap(),
            "[::1]:80".parse().unwrap()
        );
        let file = hosts("# comment\n127.0.0.9 other\n127.0.0.7  api.internal API # x\n");
        let got = resolve_target("Api.Internal:8080", Some(&file), None).unwrap();
        assert_eq!(got, "127.0.0.7:8080".parse().unwrap());
        // Not in the file: the system resolver.
        let got = resolve_target("localhost:1", Some(&file), None).unwrap();
        assert!(got.ip().is_loopback());
    }

    #[test]
    fn a_current_address_stays_while_the_name_still_has_it() {
        let file = hosts("127.0.0.1 svc\n127.0.0.2 svc\n");
        let first = resolve_target("svc:9", Some(&file), None).unwrap();
        assert_eq!(first, "127.0.0.1:9".parse().unwrap());
        let kept = "127.0.0.2:9".parse().unwrap();
        assert_eq!(
            resolve_target("svc:9", Some(&file), Some(kept)).unwrap(),
            kept
        );
        let gone = "127.0.0.3:9".parse().unwrap();
        assert_eq!(
            resolve_target("svc:9", Some(&file), Some(gone)).unwrap(),
            first
        );
    }

    #[test]
    fn bad_addresses_say_what_was_expected() {
        for bad in ["nohost", ":80", "host:99999", "host:"] {
            let e = resolve_target(bad, None, None).unwrap_err();
            assert!(e.contains("expected HOST:PORT"), "{bad}: {e}");
        }
        assert!(!is_host_name("10.0.0.1:80"));
        assert!(is_host_name("api:80"));
    }
}
