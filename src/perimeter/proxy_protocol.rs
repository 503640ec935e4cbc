//! The PROXY protocol header (v1 text and v2 binary, haproxy.org/download/2.9/doc/proxy-protocol.txt)
//! that L4 balancers (AWS NLB, HAProxy, most others) put before a connection's first byte to
//! say who the client is. A pure parser over the bytes read so far: it never reads past the
//! header, so what follows (a TLS ClientHello, an HTTP request) is left to the next layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 line is at most 107 bytes, CRLF included (the spec's own bound).
pub const V1_MAX: usize = 107;

/// Longest v2 header accepted (16-byte prefix + addresses + TLVs). The spec allows 64 KiB of
/// TLVs; balancers send a few dozen bytes (AWS adds a VPC endpoint id), so a larger one is
/// refused rather than buffered.
pub const V2_MAX: usize = 1024;

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header takes at the start of the stream.
    pub len: usize,
    /// The client's address; `None` for v2 `LOCAL` (the balancer's own health check) and v1
    /// `UNKNOWN`: the peer is then the client.
    pub source: Option<SocketAddr>,
}

/// Why the bytes are not (yet) a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("incomplete PROXY header")]
    Incomplete,
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than {V2_MAX} bytes")]
    TooLong,
}

/// Parses the header at the start of `bytes`: `Incomplete` means read more and try again.
pub fn parse(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let probe = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..probe] == V2_SIGNATURE[..probe] {
        return if probe < V2_SIGNATURE.len() {
            Err(ProxyError::Incomplete)
        } else {
            parse_v2(bytes)
        };
    }
    let probe = bytes.len().min(6);
    if bytes[..probe] == b"PROXY "[..probe] {
        return if probe < 6 {
            Err(ProxyError::Incomplete)
        } else {
            parse_v1(bytes)
        };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Err(ProxyError::Incomplete)
        };
    };
    if window[newline - 1] != b'\r' {
        return Err(ProxyError::Malformed("v1 line not ended by CRLF"));
    }
    let end = newline - 1;
    let len = end + 2;
    // "UNKNOWN": the receiver ignores whatever follows (the spec's words).
    if window[6..end].starts_with(b"UNKNOWN") && matches!(window.get(13), Some(b' ' | b'\r')) {
        return Ok(ProxyHeader { len, source: None });
    }
    let line = std::str::from_utf8(&window[6..end])
        .map_err(|_| ProxyError::Malformed("v1 line is not text"))?;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let src = fields
                .next()
                .ok_or(ProxyError::Malformed("v1 source missing"))?;
            let dst = fields
                .next()
                .ok_or(ProxyError::Malformed("v1 destination missing"))?;
            let sport = fields
                .next()
                .ok_or(ProxyError::Malformed("v1 port missing"))?;
            let dport = fields
                .next()
                .ok_or(ProxyError::Malformed("v1 port missing"))?;
            if fields.next().is_some() {
                return Err(ProxyError::Malformed("v1 line has extra fields"));
            }
            let v4 = family == "TCP4";
            let src = v1_address(src, v4)?;
            v1_address(dst, v4)?;
            let sport = v1_port(sport)?;
            v1_port(dport)?;
            Some(SocketAddr::new(src, sport))
        }
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(ProxyHeader { len, source })
}

fn v1_address(text: &str, v4: bool) -> Result<IpAddr, ProxyError> {
    let parsed = if v4 {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    } else {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    };
    parsed.map_err(|_| ProxyError::Malformed("v1 address does not match its family"))
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    // The spec forbids leading zeros and signs; `u16::from_str` would take "+80".
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProxyError::Malformed("v1 port is not a number"));
    }
    text.parse()
        .map_err(|_| ProxyError::Malformed("v1 port out of range"))
}

fn parse_v2(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if bytes.len() < 16 {
        return Err(ProxyError::Incomplete);
    }
    let version_command = bytes[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    let family = bytes[13];
    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let len = 16 + declared;
    if len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    if bytes.len() < len {
        return Err(ProxyError::Incomplete);
    }
    let body = &bytes[16..len];
    // LOCAL: the real endpoints are used and the address block is discarded, whatever it is.
    if local {
        return Ok(ProxyHeader { len, source: None });
    }
    // The only families the spec defines for a stream: UNSPEC and TCP over IPv4, IPv6 or a
    // UNIX socket; every other value "must be rejected as invalid" (UDP included: this is a
    // TCP connection).
    if !matches!(family, 0x00 | 0x11 | 0x21 | 0x31) {
        return Err(ProxyError::Malformed(
            "v2 address family and transport not TCP",
        ));
    }
    let source = match family >> 4 {
        // AF_UNSPEC: no address (always so for LOCAL).
        0 => None,
        1 => {
            let addrs = body
                .get(..12)
                .ok_or(ProxyError::Malformed("v2 IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addrs[8], addrs[9]]),
            ))
        }
        2 => {
            let addrs = body
                .get(..36)
                .ok_or(ProxyError::Malformed("v2 IPv6 address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addrs[32], addrs[33]]),
            ))
        }
        // AF_UNIX: a local socket path says nothing about a client address.
        3 => None,
        _ => None,
    };
    Ok(ProxyHeader { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /").unwrap();
        assert_eq!(h.len, 45);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN whatever 1 2\r\n\x16\x03").unwrap();
        assert_eq!((h.len, h.source), (28, None));
        let h = parse(b"PROXY UNKNOWN \xff\xfe\r\n").unwrap();
        assert_eq!((h.len, h.source), (18, None));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().len, 15);
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn incomplete_until_the_header_is_whole() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for cut in 0..full.len() {
            assert_eq!(
                parse(&full[..cut]),
                Err(ProxyError::Incomplete),
                "cut {cut}"
            );
        }
        let mut body = vec![192, 0, 2, 1, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0, 3, b'x', b'y', b'z']); // a TLV
        let full = v2(1, 0x11, &body);
        for cut in 0..full.len() {
            assert_eq!(
                parse(&full[..cut]),
                Err(ProxyError::Incomplete),
                "cut {cut}"
            );
        }
        let h = parse(&full).unwrap();
        assert_eq!(h.len, full.len());
        assert_eq!(h.source, Some("192.0.2.1:8080".parse().unwrap()));
    }

    #[test]
    fn v2_tcp6_local_and_limits() {
        let mut body = vec![0u8; 36];
        body[15] = 1; // ::1
        body[32..34].copy_from_slice(&443u16.to_be_bytes());
        let h = parse(&v2(1, 0x21, &body)).unwrap();
        assert_eq!(h.source, Some("[::1]:443".parse().unwrap()));
        // LOCAL: addresses (if any) are ignored.
        let h = parse(&v2(0, 0x21, &body)).unwrap();
        assert_eq!(h.source, None);
        let h = parse(&v2(0, 0x00, &[])).unwrap();
        assert_eq!((h.len, h.source), (16, None));
        assert_eq!(parse(&v2(1, 0x11, &[0; V2_MAX])), Err(ProxyError::TooLong));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 4])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        for family in [0x51, 0x10, 0x20, 0x12, 0x22, 0x13] {
            assert!(
                matches!(
                    parse(&v2(1, family, &[0; 36])),
                    Err(ProxyError::Malformed(_))
                ),
                "{family:#x}"
            );
        }
        // LOCAL discards the block whatever its family.
        assert_eq!(parse(&v2(0, 0x51, &[0; 4])).unwrap().source, None);
    }

    #[test]
    fn anything_else_is_missing() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
    }

    proptest::proptest! {
        /// Any bytes: a verdict, never a panic; an accepted header never claims more bytes
        /// than it was given, nor more than the protocol's bounds.
        #[test]
        fn any_bytes_get_a_verdict(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(h) = parse(&bytes) {
                proptest::prop_assert!(h.len <= bytes.len() && h.len <= V2_MAX);
            }
        }

        /// A v2 signature then any bytes: the same.
        #[test]
        fn any_v2_tail_gets_a_verdict(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let bytes = [V2_SIGNATURE.as_slice(), &tail].concat();
            if let Ok(h) = parse(&bytes) {
                proptest::prop_assert!(h.len <= bytes.len() && h.len >= 16);
            }
        }
    }
}
