//! What the node's network says: interface addresses and the route to an address,
//! read from the kernel of the namespace lb runs in.

use std::{fs, net::Ipv4Addr};

/// IPv4 addresses of `iface`.
pub fn ipv4_addrs(iface: &str) -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

/// The main IPv4 routing table (`/proc/net/route` of this network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// (destination, prefix length, interface), longest prefix first.
    routes: Vec<(u32, u32, String)>,
}

impl Routes {
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string("/proc/net/route")?))
    }

    /// Parses the table; the kernel writes addresses and masks as the hex of their
    /// in-memory (network order) value.
    pub fn parse(text: &str) -> Self {
        let mut routes: Vec<(u32, u32, String)> = text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
                let up = u32::from_str_radix(flags, 16).ok()? & 1 != 0;
                let dest = u32::from_be_bytes(u32::from_str_radix(dest, 16).ok()?.to_ne_bytes());
                let mask = u32::from_be_bytes(u32::from_str_radix(mask, 16).ok()?.to_ne_bytes());
                up.then(|| (dest, mask, iface.to_string()))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.1.count_ones()));
        Routes { routes }
    }

    /// The interface the kernel would send a packet to `addr` out of.
    pub fn iface_for(&self, addr: Ipv4Addr) -> Option<&str> {
        let a = u32::from(addr);
        self.routes
            .iter()
            .find(|(dest, mask, _)| a & mask == *dest & mask)
            .map(|(_, _, i)| i.as_str())
    }

    /// Interfaces with a route to (part of) `net`/`prefix`: where a pod network's
    /// pods are.
    pub fn ifaces_within(&self, net: Ipv4Addr, prefix: u8) -> Vec<&str> {
        let m = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        self.routes
            .iter()
            .filter(|(dest, mask, _)| {
                mask.count_ones() >= u32::from(prefix) && dest & m == u32::from(net) & m
            })
            .map(|(_, _, i)| i.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        // 10.244.0.2/32 dev veth-a, 10.244.0.0/24 dev br0, default via 192.168.1.1 dev eth0
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            veth-a\t0200F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            br0\t0000F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let r = Routes::parse(table);
        assert_eq!(r.iface_for(Ipv4Addr::new(10, 244, 0, 2)), Some("veth-a"));
        assert_eq!(r.iface_for(Ipv4Addr::new(10, 244, 0, 3)), Some("br0"));
        assert_eq!(r.iface_for(Ipv4Addr::new(8, 8, 8, 8)), Some("eth0"));
    }
}
