//! Address ranges in CIDR notation, for `trusted_proxies`: `"10.0.0.0/8"`, `"::1/128"`, or a
//! bare address meaning that one address. IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`, what a
//! dual-stack socket reports) match IPv4 ranges.

use std::fmt;
use std::net::IpAddr;

/// One address range. The address is stored with its host bits cleared, so `contains` is a
/// mask and a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare `ADDR`. Host bits set under the mask (`10.1.2.3/8`) are
    /// refused rather than cleared: the operator most likely meant another prefix length.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr)
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("`/{p}` is not a prefix length (0-{max})")),
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked() != network {
            return Err(format!(
                "`{s}` has bits set past the first {prefix}; the range it starts is {}",
                Cidr {
                    network: cidr.masked(),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    fn masked(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(a) => IpAddr::V4(mask32(u32::from(a), self.prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask128(u128::from(a), self.prefix).into()),
        }
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    bits & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    bits & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn ranges_and_bare_addresses_parse() {
        let c = Cidr::parse("10.0.0.0/8").expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));

        let one = Cidr::parse("192.0.2.7").expect("valid");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));

        let v6 = Cidr::parse("::1").expect("valid");
        assert_eq!(v6.to_string(), "::1/128");
        assert!(v6.contains(ip("::1")));
        assert!(!v6.contains(ip("::2")));

        let net6 = Cidr::parse("2001:db8::/32").expect("valid");
        assert!(net6.contains(ip("2001:db8:ffff::1")));
        assert!(!net6.contains(ip("2001:db9::1")));
        assert_eq!(Cidr::parse("[::1]/128"), Ok(v6));
    }

    #[test]
    fn zero_prefix_takes_every_address_of_its_family() {
        let all4 = Cidr::parse("0.0.0.0/0").expect("valid");
        assert!(all4.contains(ip("203.0.113.9")));
        assert!(!all4.contains(ip("::1")));
        let all6 = Cidr::parse("::/0").expect("valid");
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(!all6.contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let c = Cidr::parse("127.0.0.0/8").expect("valid");
        assert!(c.contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        let cases = [
            ("10.0.0.0/33", "`/33` is not a prefix length (0-32)"),
            ("::/129", "`/129` is not a prefix length (0-128)"),
            ("10.0.0.0/", "`/` is not a prefix length (0-32)"),
            ("10.0.0.0/+8", "`/+8` is not a prefix length (0-32)"),
            ("10.0.0.0/8/8", "`/8/8` is not a prefix length (0-32)"),
            ("10.0.0/8", "`10.0.0` is not an IP address"),
            ("localhost", "`localhost` is not an IP address"),
            ("", "`` is not an IP address"),
            (
                "10.1.2.3/8",
                "`10.1.2.3/8` has bits set past the first 8; the range it starts is 10.0.0.0/8",
            ),
            (
                "2001:db8::1/32",
                "`2001:db8::1/32` has bits set past the first 32; the range it starts is 2001:db8::/32",
            ),
        ];
        for (text, why) in cases {
            assert_eq!(Cidr::parse(text), Err(why.to_owned()), "{text}");
        }
    }
}
