//! Address ranges: service CIDRs, pod networks, LoadBalancer pools, in both
//! families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Family;

/// An address range: an IPv4 or IPv6 network and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `ADDR/LEN`, IPv4 or IPv6.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let cidr = Cidr { addr, len };
        (len as u32 <= cidr.width()).then_some(cidr)
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    fn width(&self) -> u32 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Bits of the address left to hosts.
    fn host_bits(&self) -> u32 {
        self.width() - self.len as u32
    }

    /// The network's first address as a number.
    pub(crate) fn base(&self) -> u128 {
        let host = self.host_bits();
        let mask = if host >= 128 { 0 } else { u128::MAX << host };
        number(self.addr) & mask
    }

    /// How many addresses it holds, up to 2^64 (a larger IPv6 range counts as that).
    pub(crate) fn size(&self) -> u128 {
        1u128 << self.host_bits().min(64)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && number(ip) >= self.base() && {
            let host = self.host_bits();
            host >= 128 || (number(ip) - self.base()) >> host == 0
        }
    }

    /// The address `offset` past the network's.
    pub(crate) fn at(&self, offset: u128) -> IpAddr {
        let n = self.base() + offset;
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

/// A range as a pool of addresses to give out (LoadBalancer pools).
impl Cidr {
    /// The addresses the pool gives out, in order: every address but the network's
    /// (IPv6's subnet-router anycast) and IPv4's broadcast, unless the range is a
    /// point-to-point one or a single address (IPv4 /31 and /32, IPv6 /127 and
    /// /128). Lazy: an IPv6 pool may be a /64.
    pub fn hosts(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let size = self.size();
        let (lo, hi) = match (self.family(), size) {
            (_, ..=2) => (0, size),
            (Family::V4, _) => (1, size - 1),
            (Family::V6, _) => (1, size),
        };
        (lo..hi).map(|i| self.at(i))
    }

    /// Whether the pool gives out `ip` (one of [`hosts`](Self::hosts)).
    pub fn gives(&self, ip: IpAddr) -> bool {
        if !self.contains(ip) {
            return false;
        }
        let offset = number(ip) - self.base();
        match (self.family(), self.host_bits()) {
            (_, ..=1) => true,
            (Family::V4, bits) => offset != 0 && offset != (1 << bits) - 1,
            (Family::V6, _) => offset != 0,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn a_pool_gives_its_hosts_and_only_them() {
        let hosts = |s: &str| cidr(s).hosts().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            hosts("192.168.1.240/30"),
            ["192.168.1.241", "192.168.1.242"]
        );
        assert_eq!(
            hosts("192.168.1.240/31"),
            ["192.168.1.240", "192.168.1.241"]
        );
        assert_eq!(hosts("192.168.1.240/32"), ["192.168.1.240"]);
        assert_eq!(hosts("fd00::f0/126"), ["fd00::f1", "fd00::f2", "fd00::f3"]);
        assert_eq!(hosts("fd00::f0/127"), ["fd00::f0", "fd00::f1"]);
        assert_eq!(hosts("fd00::f0/128"), ["fd00::f0"]);
        // A /64 is walked lazily.
        assert_eq!(
            cidr("fd00:1::/64").hosts().nth(1).unwrap().to_string(),
            "fd00:1::2"
        );
        for (pool, ip, gives) in [
            ("192.168.1.240/30", "192.168.1.240", false),
            ("192.168.1.240/30", "192.168.1.241", true),
            ("192.168.1.240/30", "192.168.1.243", false),
            ("192.168.1.240/31", "192.168.1.240", true),
            ("192.168.1.240/30", "192.168.1.244", false),
            ("fd00::f0/126", "fd00::f0", false),
            ("fd00::f0/126", "fd00::f3", true),
            ("fd00::f0/126", "192.168.1.241", false),
            ("192.168.1.240/30", "::ffff:192.168.1.241", false),
            ("fd00::/0", "fd00::1", true),
            ("0.0.0.0/0", "10.0.0.1", true),
        ] {
            assert_eq!(
                cidr(pool).gives(ip.parse().unwrap()),
                gives,
                "{pool} gives {ip}"
            );
        }
    }
}
