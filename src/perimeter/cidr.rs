//! CIDR blocks for IPv4 and IPv6. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4
//! here, in blocks and in the addresses checked against them.

use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    v4: bool,
    network: u128,
    mask: u128,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) if self.v4 => u128::from(u32::from(a)) & self.mask == self.network,
            IpAddr::V6(a) if !self.v4 => u128::from(a) & self.mask == self.network,
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`: a /32 or /128).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || {
            format!(
                "bad CIDR {text:?}: expected an address or ADDRESS/PREFIX such as \"10.0.0.0/8\""
            )
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let (v4, bits, max, prefix) = match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                let p = prefix.unwrap_or(128);
                if p < 96 {
                    return Err(format!(
                        "{text:?}: an IPv4-mapped block needs a prefix of at least 96"
                    ));
                }
                let v4 = v6.to_ipv4_mapped().map_or(0, u32::from);
                (true, u128::from(v4), 32, p - 96)
            }
            IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32, prefix.unwrap_or(32)),
            IpAddr::V6(a) => (false, u128::from(a), 128, prefix.unwrap_or(128)),
        };
        if prefix > max {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            (u128::MAX << (max - prefix)) & (u128::MAX >> (128 - max))
        };
        if bits & !mask != 0 {
            return Err(format!(
                "{text:?} has bits set past its prefix (did you mean the network address?)"
            ));
        }
        Ok(Cidr {
            v4,
            network: bits & mask,
            mask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_both_families() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::a00:1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        let mapped: Cidr = "::ffff:192.0.2.0/120".parse().unwrap();
        assert!(mapped.contains("192.0.2.77".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(
            one.contains("192.0.2.7".parse().unwrap())
                && !one.contains("192.0.2.8".parse().unwrap())
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "x/8",
            "::ffff:1.2.3.4/90",
            "",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
