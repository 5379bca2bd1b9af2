//! What the node's network says: interface addresses and the route to an address,
//! read from the kernel of the namespace lb runs in.

use crate::model::Cidr;
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

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

/// Global IPv6 addresses of `iface` (link-local and other scoped ones are not
/// where NodePorts answer, as kube-proxy's node address filter leaves them out).
pub fn ipv6_addrs(iface: &str) -> Vec<Ipv6Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address?.as_sockaddr_in6().map(|s| s.ip()))
        .filter(|ip| !ip.is_unicast_link_local() && !ip.is_loopback() && !ip.is_multicast())
        .collect()
}

/// A pod's interface as the kernel describes it, asked by rtnetlink (RTM_GETLINK).
/// (`/sys/class/net` would describe the namespace sysfs was mounted in, not ours.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodLink {
    /// A veth (or netkit) whose peer lives in another network namespace: a pod's
    /// interface behind it, which `bpf_redirect_peer` can reach. From the link's
    /// kind and the peer's namespace id, which the kernel reports only for a peer
    /// in another namespace.
    pub peer_in_other_netns: bool,
    /// A veth whose peer (the pod's end) has a native-mode XDP program attached:
    /// it takes frames XDP redirects into it (the peer's NAPI runs them). Without
    /// one (or with a generic-mode one only), a redirected frame is dropped unless
    /// the peer has GRO on, which rtnetlink does not tell: such pods are taken as
    /// not taking them. The peer is asked of the kernel in its own namespace
    /// (RTM_GETLINK with IFLA_TARGET_NETNSID, the namespace id this side reports).
    pub peer_runs_xdp: bool,
}

/// What the kernel says of `iface` as a pod's interface; its peer's XDP program
/// only when `ask_xdp` (one more request, into the peer's namespace).
pub fn pod_link(iface: &str, ask_xdp: bool) -> PodLink {
    let Some(info) = link_info(iface) else {
        return PodLink::default();
    };
    let kind = info.kind.as_deref();
    let peer_runs_xdp = ask_xdp
        && kind == Some("veth")
        && match (info.link, info.netnsid) {
            (Some(peer), Some(netnsid)) => {
                getlink(peer, Some(netnsid)).is_some_and(|p| p.xdp_native)
            }
            _ => false,
        };
    PodLink {
        peer_in_other_netns: matches!(kind, Some("veth" | "netkit")) && info.peer_netnsid,
        peer_runs_xdp,
    }
}

/// The link's kind (`veth`, `bridge`, `netkit`, ...) for a virtual device; None
/// for a NIC (or an interface netlink does not know).
pub fn link_kind(iface: &str) -> Option<String> {
    link_info(iface).and_then(|l| l.kind)
}

#[derive(Debug, Default)]
struct LinkInfo {
    kind: Option<String>,
    peer_netnsid: bool,
    /// IFLA_LINK: for a veth, its peer's ifindex (in the peer's namespace).
    link: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, as this namespace numbers it.
    netnsid: Option<i32>,
    /// IFLA_XDP: an XDP program is attached in native (driver) mode, alone
    /// (IFLA_XDP_ATTACHED = XDP_ATTACHED_DRV) or beside others (XDP_ATTACHED_MULTI
    /// with IFLA_XDP_DRV_PROG_ID). A generic (skb) one gives a veth no NAPI: frames
    /// redirected into it would be dropped.
    xdp_native: bool,
}

// Kernel uapi values (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h).
const NLMSG_HDR_LEN: usize = 16;
const IFINFO_LEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK: u16 = 5;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const XDP_ATTACHED_DRV: u8 = 1;
const IFLA_TARGET_NETNSID: u16 = 46;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn link_info(iface: &str) -> Option<LinkInfo> {
    getlink(nix::net::if_::if_nametoindex(iface).ok()?, None)
}

/// RTM_GETLINK for `index` in this namespace, or in the one this namespace numbers
/// `netnsid`.
fn getlink(index: u32, netnsid: Option<i32>) -> Option<LinkInfo> {
    // The header, struct ifinfomsg and, to ask another namespace, one attribute.
    let mut req = vec![0u8; NLMSG_HDR_LEN + IFINFO_LEN];
    if let Some(id) = netnsid {
        req.extend(8u16.to_ne_bytes());
        req.extend(IFLA_TARGET_NETNSID.to_ne_bytes());
        req.extend(id.to_ne_bytes());
    }
    req[NLMSG_HDR_LEN] = libc::AF_UNSPEC as u8;
    req[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&(index as i32).to_ne_bytes());
    let fd = ask_kernel(&mut req, RTM_GETLINK, NLM_F_REQUEST).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    parse_link(buf.get(..usize::try_from(n).ok()?)?)
}

/// Sends `req` (a netlink header's room, then the message's body) to the kernel's
/// rtnetlink as message `ty` with `flags`, its header filled in here; the socket,
/// for the answer.
fn ask_kernel(req: &mut [u8], ty: u16, flags: u16) -> std::io::Result<std::os::fd::OwnedFd> {
    let err = std::io::Error::last_os_error;
    let fd = rtnetlink_socket(0)?;
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&ty.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    // SAFETY: the buffer is valid for its length; a null address means the kernel.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent != req.len() as isize {
        return Err(err());
    }
    Ok(fd)
}

/// A new rtnetlink socket (`flags` beside SOCK_RAW | SOCK_CLOEXEC).
fn rtnetlink_socket(flags: libc::c_int) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned (and closed) below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The link message's kind and whether it names the peer's namespace.
fn parse_link(msg: &[u8]) -> Option<LinkInfo> {
    // Anything else is an error (NLMSG_ERROR: no such link).
    if u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?) != RTM_NEWLINK {
        return None;
    }
    let len = (u32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?) as usize).min(msg.len());
    let mut info = LinkInfo::default();
    for (ty, value) in attrs(msg.get(NLMSG_HDR_LEN + IFINFO_LEN..len)?) {
        match ty {
            IFLA_LINK => info.link = Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?)),
            IFLA_LINK_NETNSID => {
                info.peer_netnsid = true;
                info.netnsid = Some(i32::from_ne_bytes(value.get(..4)?.try_into().ok()?));
            }
            IFLA_XDP => {
                info.xdp_native = attrs(value).any(|(ty, v)| match ty {
                    IFLA_XDP_ATTACHED => v.first() == Some(&XDP_ATTACHED_DRV),
                    IFLA_XDP_DRV_PROG_ID => true,
                    _ => false,
                });
            }
            IFLA_LINKINFO => {
                for (ty, value) in attrs(value) {
                    if ty == IFLA_INFO_KIND {
                        let name = value.split(|b| *b == 0).next().unwrap_or_default();
                        info.kind = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(info)
}

/// Netlink attributes: (type, value), each padded to 4 bytes.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = buf.get(4..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((ty, value))
    })
}

/// Whether the kernel's route to an address depends on the destination alone, per
/// family: no routing rule selects by source address, IP protocol or port
/// (`ip rule ... from`, `ipproto`, `sport`, `dport`), no route is
/// source-specific (IPv6 `from`) and none has several next hops (multipath, or a
/// nexthop object, which may be a group: the kernel hashes the source, and maybe
/// the ports, to pick one). Then the data plane may keep one FIB answer per
/// destination and incoming interface for every flow to it, not one per flow
/// (`lb_common::MAP_ROUTING`). Rules by destination, incoming interface, mark or
/// TOS do not count: the data plane's lookups always ask with the same mark and
/// TOS, and its answers are kept per incoming interface. Read by rtnetlink dumps
/// of the rules and routes (RTM_GETRULE, RTM_GETROUTE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutedByDestination {
    pub v4: bool,
    pub v6: bool,
}

impl RoutedByDestination {
    pub fn read() -> std::io::Result<Self> {
        Ok(Self {
            v4: by_destination(libc::AF_INET as u8)?,
            v6: by_destination(libc::AF_INET6 as u8)?,
        })
    }

    /// The bits of `lb_common::MAP_ROUTING`.
    pub fn bits(self) -> u32 {
        (u32::from(self.v4) * lb_common::ROUTED_BY_DST4)
            | (u32::from(self.v6) * lb_common::ROUTED_BY_DST6)
    }
}

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_GETRULE: u16 = 34;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// struct fib_rule_hdr and struct rtmsg: 12 bytes each, the source prefix length
/// at byte 2 of both.
const RULE_OR_ROUTE_HDR_LEN: usize = 12;
const FRA_IP_PROTO: u16 = 22;
const FRA_SPORT_RANGE: u16 = 23;
const FRA_DPORT_RANGE: u16 = 24;
const RTA_MULTIPATH: u16 = 9;
const RTA_NH_ID: u16 = 30;

fn by_destination(family: u8) -> std::io::Result<bool> {
    let by_dst = |selectors: &'static [u16]| {
        move |m: &[u8]| {
            m.get(2) == Some(&0)
                && !attrs(m.get(RULE_OR_ROUTE_HDR_LEN..).unwrap_or_default())
                    .any(|(ty, _)| selectors.contains(&ty))
        }
    };
    Ok(dump(
        RTM_GETRULE,
        RTM_NEWRULE,
        family,
        by_dst(&[FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE]),
    )? && dump(
        RTM_GETROUTE,
        RTM_NEWROUTE,
        family,
        by_dst(&[RTA_MULTIPATH, RTA_NH_ID]),
    )?)
}

/// An rtnetlink dump of `family`'s `ask` (RTM_GETRULE, RTM_GETROUTE): whether
/// `each` holds for every `answer` message's payload (its header struct and
/// attributes), read one receive at a time and left at the first it does not hold
/// for (a node's routes may be many).
fn dump(
    ask: u16,
    answer: u16,
    family: u8,
    mut each: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<bool> {
    let err = std::io::Error::last_os_error;
    let mut req = [0u8; NLMSG_HDR_LEN + RULE_OR_ROUTE_HDR_LEN];
    req[NLMSG_HDR_LEN] = family;
    let fd = ask_kernel(&mut req, ask, NLM_F_REQUEST | NLM_F_DUMP)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| err())?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut msgs = &buf[..n];
        while msgs.len() >= NLMSG_HDR_LEN {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
            let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < NLMSG_HDR_LEN || len > msgs.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            match ty {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let code = msgs
                        .get(NLMSG_HDR_LEN..NLMSG_HDR_LEN + 4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                    return Err(std::io::Error::from_raw_os_error(-code));
                }
                t if t == answer && !each(&msgs[NLMSG_HDR_LEN..len]) => return Ok(false),
                _ => {}
            }
            msgs = msgs.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
    }
}

/// rtnetlink's multicast groups of link, route and rule changes (linux/rtnetlink.h:
/// bit `RTNLGRP_x - 1` of `nl_groups`): RTNLGRP_LINK 1, RTNLGRP_IPV4_ROUTE 7,
/// RTNLGRP_IPV4_RULE 8, RTNLGRP_IPV6_ROUTE 11, RTNLGRP_IPV6_RULE 19.
const ROUTE_GROUPS: u32 = 1 << 0 | 1 << 6 | 1 << 7 | 1 << 10 | 1 << 18;

/// The kernel's notifications of this namespace's link, route and rule changes
/// (an rtnetlink socket in their multicast groups, as `ip monitor` opens): a new
/// pod's veth and its route, a rule by source or a multipath route are followed
/// as they come, not at the next read of every route.
#[derive(Debug)]
pub struct RouteEvents {
    fd: std::os::fd::OwnedFd,
}

impl RouteEvents {
    pub fn subscribe() -> std::io::Result<Self> {
        let fd = rtnetlink_socket(libc::SOCK_NONBLOCK)?;
        // SAFETY: sockaddr_nl is plain data; zeroed is its "any port" value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = ROUTE_GROUPS;
        // SAFETY: the address is a valid sockaddr_nl of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads every notification waiting, without blocking: whether any came, or
    /// some were lost (the socket's buffer overran: ENOBUFS), either way the
    /// routes are to be read again.
    pub fn drain(&self) -> std::io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut any = false;
        loop {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                any = true;
                continue;
            }
            if n == 0 {
                return Ok(any);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(any),
                Some(libc::EINTR) => {}
                // Notifications were lost: what they said is read whole.
                Some(libc::ENOBUFS) => any = true,
                _ => return Err(e),
            }
        }
    }
}

impl std::os::fd::AsRawFd for RouteEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// The routing tables of this network namespace, both families (`/proc/net/route`,
/// `/proc/net/ipv6_route`): where the kernel sends a packet to an address, so where
/// a pod is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// (destination, interface), longest prefix first.
    routes: Vec<(Cidr, String)>,
}

/// `/proc/net/ipv6_route`'s flags: a usable route, and the local table's routes
/// to the node's own addresses (not where a pod is).
const RTF_UP: u32 = 0x1;
const RTF_LOCAL: u32 = 0x8000_0000;

impl Routes {
    pub fn read() -> std::io::Result<Self> {
        let mut r = Self::parse(&fs::read_to_string("/proc/net/route")?);
        // A kernel without IPv6 has no IPv6 table.
        if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
            r.routes.extend(Self::parse6(&text).routes);
            r.sort();
        }
        Ok(r)
    }

    fn sort(&mut self) {
        self.routes.sort_by_key(|(c, _)| std::cmp::Reverse(c.len));
    }

    /// Parses the IPv4 table; the kernel writes addresses and masks as the hex of
    /// their in-memory (network order) value.
    pub fn parse(text: &str) -> Self {
        let routes = text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
                let up = u32::from_str_radix(flags, 16).ok()? & RTF_UP != 0;
                let dest = u32::from_be_bytes(u32::from_str_radix(dest, 16).ok()?.to_ne_bytes());
                let mask = u32::from_be_bytes(u32::from_str_radix(mask, 16).ok()?.to_ne_bytes());
                let cidr = Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(dest)),
                    len: mask.count_ones() as u8,
                };
                up.then(|| (cidr, iface.to_string()))
            })
            .collect();
        let mut r = Routes { routes };
        r.sort();
        r
    }

    /// Parses the IPv6 table: destination and its prefix length in hex, the
    /// source, the next hop, metric, counts, flags, interface.
    pub fn parse6(text: &str) -> Self {
        let routes = text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (dest, len, flags, iface) = (f.first()?, f.get(1)?, f.get(8)?, f.get(9)?);
                let flags = u32::from_str_radix(flags, 16).ok()?;
                let cidr = Cidr {
                    addr: IpAddr::V6(u128::from_str_radix(dest, 16).ok()?.into()),
                    len: u8::from_str_radix(len, 16).ok().filter(|l| *l <= 128)?,
                };
                (flags & RTF_UP != 0 && flags & RTF_LOCAL == 0).then(|| (cidr, iface.to_string()))
            })
            .collect();
        let mut r = Routes { routes };
        r.sort();
        r
    }

    /// The interface the kernel would send a packet to `addr` out of.
    pub fn iface_for(&self, addr: IpAddr) -> Option<&str> {
        self.routes
            .iter()
            .find(|(dest, _)| dest.contains(addr))
            .map(|(_, i)| i.as_str())
    }

    /// Interfaces with a route to (part of) `net`: where a pod network's pods are.
    pub fn ifaces_within(&self, net: Cidr) -> Vec<&str> {
        self.routes
            .iter()
            .filter(|(dest, _)| dest.len >= net.len && net.contains(dest.addr))
            .map(|(_, i)| i.as_str())
            .collect()
    }
}

/// `ADDR/N`, IPv4 or IPv6 (`--cluster-cidr`, a Node's podCIDRs).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s)
        .ok_or_else(|| format!("{s}: want a CIDR such as 10.244.0.0/16 or fd00:10:244::/56"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_peer() {
        let lo = link_info("lo").expect("rtnetlink answers for lo");
        assert_eq!(lo.kind, None);
        assert!(!lo.peer_netnsid);
        assert_eq!(pod_link("lo", true), PodLink::default());
        assert_eq!(pod_link("no-such-iface0", true), PodLink::default());
    }

    #[test]
    fn link_attributes_are_read() {
        // RTM_NEWLINK for a veth: IFLA_IFNAME "v", IFLA_LINKINFO { IFLA_INFO_KIND
        // "veth" }, IFLA_LINK_NETNSID 0.
        let mut attrs = Vec::new();
        attrs.extend([6, 0, 3, 0, b'v', 0, 0, 0]);
        attrs.extend([16, 0, 18, 0, 9, 0, 1, 0, b'v', b'e', b't', b'h', 0, 0, 0, 0]);
        attrs.extend([8, 0, 37, 0, 0, 0, 0, 0]);
        let mut msg = vec![0u8; NLMSG_HDR_LEN + IFINFO_LEN];
        msg.extend(&attrs);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        let info = parse_link(&msg).unwrap();
        assert_eq!(info.kind.as_deref(), Some("veth"));
        assert!(info.peer_netnsid);
        assert_eq!((info.netnsid, info.link), (Some(0), None));
        assert!(!info.xdp_native);
        // The peer as its namespace reports it: IFLA_LINK 7, IFLA_XDP {
        // IFLA_XDP_ATTACHED mode, and for several programs (XDP_ATTACHED_MULTI, 4)
        // IFLA_XDP_DRV_PROG_ID 9 or IFLA_XDP_SKB_PROG_ID (6) 9 }.
        let with = |attached: u8, prog: Option<u8>| {
            let mut m = msg.clone();
            m.extend([8, 0, 5, 0, 7, 0, 0, 0]);
            let mut xdp = vec![5, 0, 2, 0, attached, 0, 0, 0];
            if let Some(ty) = prog {
                xdp.extend([8, 0, ty, 0, 9, 0, 0, 0]);
            }
            m.extend([(4 + xdp.len()) as u8, 0, 43, 0]);
            m.extend(xdp);
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            parse_link(&m).unwrap()
        };
        let native = with(1, None);
        assert_eq!(native.link, Some(7));
        assert!(native.xdp_native);
        assert!(!with(0, None).xdp_native, "none");
        assert!(!with(2, None).xdp_native, "generic (skb) mode");
        assert!(with(4, Some(5)).xdp_native, "native among several");
        assert!(!with(4, Some(6)).xdp_native, "generic among several");
        // Without the namespace id: a veth whose peer is in this namespace.
        let cut = msg.len() - 8;
        msg.truncate(cut);
        msg[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
        assert!(!parse_link(&msg).unwrap().peer_netnsid);
    }

    #[test]
    fn longest_prefix_wins() {
        // 10.244.0.2/32 dev veth-a, 10.244.0.0/24 dev br0, default via 192.168.1.1 dev eth0
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            veth-a\t0200F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            br0\t0000F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let r = Routes::parse(table);
        let at = |a: &str| r.iface_for(a.parse().unwrap());
        assert_eq!(at("10.244.0.2"), Some("veth-a"));
        assert_eq!(at("10.244.0.3"), Some("br0"));
        assert_eq!(at("8.8.8.8"), Some("eth0"));
        let net = Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(r.ifaces_within(net), ["veth-a", "br0"]);
    }

    #[test]
    fn ipv6_routes_are_read_longest_prefix_first_without_the_local_ones() {
        // fd00:10:244::2/128 dev lxc1, fd00:10:244::/64 dev br0, default via
        // fd00:1::1 dev eth0, and the local route to the node's own address.
        let table = "\
fd000010024400000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     lxc1
fd000010024400000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001      br0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000001000000000000000000000001 00000400 00000001 00000000 00000003     eth0
fd000010024400000000000000000003 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
";
        let r = Routes::parse6(table);
        let at = |a: &str| r.iface_for(a.parse().unwrap());
        assert_eq!(at("fd00:10:244::2"), Some("lxc1"));
        assert_eq!(at("fd00:10:244::3"), Some("br0"), "not the local route");
        assert_eq!(at("2001:db8::1"), Some("eth0"));
        assert_eq!(at("10.244.0.2"), None, "another family");
        let net = Cidr::parse("fd00:10:244::/56").unwrap();
        assert_eq!(r.ifaces_within(net), ["lxc1", "br0"]);
    }
}
