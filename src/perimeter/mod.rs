//! The perimeter: who the client is (the peer, or what trusted proxies say in
//! `X-Forwarded-For`), whether that address may come in (`ip_allow` / `ip_deny` on
//! listeners and routes), whether the request is acceptable at all ([`validate`]), and
//! what crosses outward: the upstream credentials the gateway
//! injects ([`inject`]). Pure functions and compiled data: no sockets, no shard state.
//! Must not know about routes or authentication.

pub mod cidr;
pub mod inject;
pub mod proxy_protocol;
pub mod validate;

pub use cidr::Cidr;
use std::net::IpAddr;

/// `ip_allow` / `ip_deny`: deny wins; an empty allow list allows everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address. From a trusted peer, `X-Forwarded-For` is read right to left
/// (`fields` in the order they came, each a comma-separated list): the first entry that is
/// not itself a trusted proxy is the client; an entry that is not an address stops the walk
/// (the client is then the last address read: the hop that appended the garbage is the one
/// vouched for); all trusted means the left-most. From any other peer the header is not
/// believed: the client is the peer.
pub fn client_ip<'a>(
    peer: IpAddr,
    trusted: &[Cidr],
    fields: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    for field in fields.rev() {
        for entry in field.rsplit(|&b| b == b',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(trusted, ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally `[v6]` or with a port.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    text.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_chains_are_read_right_to_left() {
        let trusted = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        let xff: &[&[u8]] = &[b"203.0.113.9, 198.51.100.7", b"10.1.1.1"];
        // peer 10.0.0.1 (trusted) <- 10.1.1.1 (trusted) <- 198.51.100.7: the client.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, xff.iter().copied()),
            ip("198.51.100.7")
        );
        // An untrusted peer's header is not believed.
        assert_eq!(
            client_ip(ip("192.0.2.1"), &trusted, xff.iter().copied()),
            ip("192.0.2.1")
        );
        // All trusted: the left-most.
        let all: &[&[u8]] = &[b"10.9.9.9, 10.8.8.8"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, all.iter().copied()),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last address read.
        let junk: &[&[u8]] = &[b"198.51.100.1, unknown, 10.2.2.2"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, junk.iter().copied()),
            ip("10.2.2.2")
        );
        // IPv6, brackets, ports, and mapped addresses.
        let v6: &[&[u8]] = &[b"[2001:db9::1]:443, ::ffff:198.51.100.3, 2001:db8::5"];
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &trusted, v6.iter().copied()),
            ip("198.51.100.3")
        );
        let none: &[&[u8]] = &[];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, none.iter().copied()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn deny_wins_and_empty_allow_allows_all() {
        let rules = IpRules {
            allow: cidrs(&["192.0.2.0/24"]),
            deny: cidrs(&["192.0.2.66/32"]),
        };
        assert!(rules.permits(ip("192.0.2.1")));
        assert!(rules.permits(ip("::ffff:192.0.2.1")), "IPv4-mapped is IPv4");
        assert!(!rules.permits(ip("192.0.2.66")));
        assert!(!rules.permits(ip("198.51.100.1")));
        assert!(IpRules::default().permits(ip("::1")));
    }

    proptest! {
        #[test]
        fn any_header_bytes_give_the_peer_or_an_address_from_them(
            fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..4)
        ) {
            let trusted = cidrs(&["10.0.0.0/8"]);
            let peer = ip("10.0.0.1");
            let got = client_ip(peer, &trusted, fields.iter().map(Vec::as_slice));
            let entries: Vec<IpAddr> = fields
                .iter()
                .flat_map(|f| f.split(|&b| b == b','))
                .filter_map(parse_entry)
                .collect();
            prop_assert!(got == peer || entries.contains(&got), "{got} from nowhere");
        }
    }
}
