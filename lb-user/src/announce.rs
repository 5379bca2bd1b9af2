//! LoadBalancer addresses on the LAN, as MetalLB's layer-2 mode does: for each
//! address one live node answers ARP, or IPv6's Neighbor Solicitations (the
//! address is put on its uplink, so the kernel answers) and says so at once with
//! gratuitous ARP, or an unsolicited Neighbor Advertisement; when that node's agent
//! stops, the next node in line takes the address over within a tick or two.
//!
//! In the embedded store's mode (every node a namespace of one machine), agents
//! know each other through heartbeat files in the shared store directory
//! (`STORE/nodes/NODE`, touched every tick, removed on a clean stop). The node for
//! an address is the live node with the highest hash of (node, address), so every
//! agent comes to the same answer, and addresses spread over the nodes. Kubernetes
//! mode elects through Leases instead (`kube_lb`) and shares [`claim`], [`let_go`]
//! and [`ranking`] (its preferred candidates).

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

/// A node whose heartbeat is older than this is taken as gone.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// How long a starting agent only beats before it claims addresses: by then every
/// other agent has seen it and let go of what is now its own, so two nodes never
/// answer for one address (a moment with none is harmless: neighbours keep their
/// cache, and the previous node's pinned data plane still forwards).
pub const CLAIM_AFTER: Duration = Duration::from_secs(2);

/// How long after a heartbeat this node may answer for its addresses: short
/// of [`HEARTBEAT_TTL`], after which the others take them over.
pub const HOLD: Duration = Duration::from_millis(2500);

pub struct Announcer {
    dir: PathBuf,
    /// `LB_ARP_HOLD` and `LB_NDP_HOLD` (None: they could not be opened; the
    /// kernel then answers for a crashed agent's addresses until it is restarted).
    holds: Option<crate::maps::NeighHolds>,
    node: String,
    iface: String,
    held: BTreeSet<IpAddr>,
    since: std::time::Instant,
}

/// FNV-1a with murmur3's final mix: stable across processes and versions (std's
/// hasher is neither), and every input bit reaches the high bits that decide.
fn score(node: &str, ip: IpAddr) -> u64 {
    let octets = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut h = node
        .bytes()
        .chain([0])
        .chain(octets)
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The node that announces `ip` among `alive`.
pub fn owner(alive: &[String], ip: IpAddr) -> Option<&str> {
    ranking(alive, ip).into_iter().next()
}

/// `nodes` in the order they are preferred for `ip` (the same on every agent).
pub fn ranking(nodes: &[String], ip: IpAddr) -> Vec<&str> {
    let mut ranked: Vec<&str> = nodes.iter().map(String::as_str).collect();
    ranked.sort_by_key(|n| std::cmp::Reverse((score(n, ip), *n)));
    ranked
}

impl Announcer {
    pub fn new(store: &std::path::Path, node: &str, iface: &str, pins: &std::path::Path) -> Self {
        Announcer {
            dir: store.join("nodes"),
            holds: crate::maps::NeighHolds::open_pinned(pins)
                .inspect_err(|e| warn!(error = %e, "answers about LoadBalancer addresses will not be cut off when this agent stops beating"))
                .ok(),
            node: node.to_string(),
            iface: iface.to_string(),
            held: BTreeSet::new(),
            since: std::time::Instant::now(),
        }
    }

    fn heartbeat(&self) {
        let _ = crate::store::files::private_dir(&self.dir);
        if let Err(e) = crate::store::files::write_private(&self.dir.join(&self.node), b"") {
            warn!(error = %e, "cannot write the heartbeat");
        }
    }

    /// Nodes with a fresh heartbeat (this one included).
    fn alive(&self) -> Vec<String> {
        let now = SystemTime::now();
        let mut nodes: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < HEARTBEAT_TTL)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        if !nodes.contains(&self.node) {
            nodes.push(self.node.clone());
        }
        nodes
    }

    /// Beats, then takes the addresses this node should announce and lets go of the
    /// others.
    pub fn sync(&mut self, addrs: &BTreeSet<IpAddr>) {
        self.heartbeat();
        let alive = self.alive();
        let mine: BTreeSet<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|ip| owner(&alive, *ip) == Some(self.node.as_str()))
            .collect();
        let may_claim = self.since.elapsed() >= CLAIM_AFTER;
        for ip in self.held.clone().difference(&mine) {
            let_go(&self.iface, *ip);
            self.hold(*ip, Duration::ZERO);
            self.held.remove(ip);
        }
        for ip in mine.iter().filter(|_| may_claim) {
            self.hold(*ip, HOLD);
            if !self.held.contains(ip) && claim(&self.iface, *ip) {
                self.held.insert(*ip);
            }
        }
    }

    fn hold(&mut self, ip: IpAddr, until: Duration) {
        if let Some(h) = &mut self.holds
            && let Err(e) = h.hold(ip, until)
        {
            warn!(%ip, error = %e, "writing the neighbour answer hold");
        }
    }

    /// On a clean stop: every address let go, the heartbeat removed, so another node
    /// takes over at its next tick.
    pub fn withdraw(&mut self) {
        for ip in std::mem::take(&mut self.held) {
            ip_addr("del", ip, &self.iface);
            self.hold(ip, Duration::ZERO);
        }
        let _ = fs::remove_file(self.dir.join(&self.node));
    }
}

/// Starts answering ARP (IPv6: Neighbor Solicitations) for `ip` on `iface` (the
/// address on the uplink, so the kernel answers) and says so with gratuitous ARP
/// (an unsolicited Neighbor Advertisement). False when it could not.
pub fn claim(iface: &str, ip: IpAddr) -> bool {
    if !ip_addr("add", ip, iface) {
        return false;
    }
    info!(%ip, iface, "announcing LoadBalancer address");
    tell_neighbours(iface, ip);
    true
}

/// Stops answering for `ip` on `iface`.
pub fn let_go(iface: &str, ip: IpAddr) {
    ip_addr("del", ip, iface);
    info!(%ip, iface, "no longer announcing LoadBalancer address");
}

/// Removes from `iface` the single addresses of `pools` (announced by an agent of
/// this node that was killed before it could let go of them).
pub fn clear_stale(iface: &str, pools: &[crate::model::Cidr]) {
    if pools.is_empty() {
        return;
    }
    let Ok(out) = Command::new("ip")
        .args(["-o", "addr", "show", "dev", iface])
        .output()
    else {
        return;
    };
    let stale = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6")
                .skip(1);
            let (ip, len) = f.next()?.split_once('/')?;
            let ip: IpAddr = ip.parse().ok()?;
            (len == single(ip).to_string()).then_some(ip)
        })
        .filter(|ip| crate::lb_ipam::in_pools(pools, *ip))
        .collect::<Vec<_>>();
    for ip in stale {
        info!(%ip, iface, "removing a LoadBalancer address left by an earlier agent");
        ip_addr("del", ip, iface);
    }
}

/// The prefix length of a single address of `ip`'s family.
fn single(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `ip addr VERB IP/32 dev IFACE`; an IPv6 address is added without duplicate
/// address detection (a tentative address answers nothing) and deprecated
/// (`preferred_lft 0`, as keepalived adds its addresses): it answers and takes
/// traffic, but the node never picks it as the source of its own connections.
fn ip_addr(verb: &str, ip: IpAddr, iface: &str) -> bool {
    let cidr = format!("{ip}/{}", single(ip));
    let mut args = vec!["addr", verb, &cidr, "dev", iface];
    if verb == "add" && ip.is_ipv6() {
        args.extend(["nodad", "preferred_lft", "0"]);
    }
    let out = Command::new("ip").args(&args).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) if verb == "add" && String::from_utf8_lossy(&o.stderr).contains("File exists") => {
            true
        }
        Ok(o) => {
            warn!(%ip, iface, verb, error = %String::from_utf8_lossy(&o.stderr).trim(), "ip addr");
            false
        }
        Err(e) => {
            warn!(%ip, iface, verb, error = %e, "running ip");
            false
        }
    }
}

/// The MAC address of `iface` in this network namespace.
fn mac_of(iface: &str) -> Option<[u8; 6]> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
}

/// A broadcast ARP frame about `ip` being at `mac`, in the two forms Linux takes as
/// gratuitous (and so lets override a cached entry at once): a request with sender
/// and target address both `ip`, and a reply whose target MAC is the sender's.
fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend([0xff; 6]);
    frame.extend(mac);
    frame.extend([0x08, 0x06]); // ARP
    frame.extend([
        0x00,
        0x01,
        0x08,
        0x00,
        6,
        4,
        0x00,
        if reply { 2 } else { 1 },
    ]);
    frame.extend(mac);
    frame.extend(ip.octets());
    frame.extend(if reply { mac } else { [0; 6] });
    frame.extend(ip.octets());
    frame
}

/// An unsolicited Neighbor Advertisement of `ip` at `mac` to all nodes (RFC 4861
/// 7.2.6): hop limit 255, Override set (neighbours with an entry for `ip` move it
/// to `mac` at once), Solicited clear, Router as the node forwards, and the target
/// link-layer address option.
fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr, router: bool) -> Vec<u8> {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend([136, 0, 0, 0]); // type, code, checksum
    icmp.extend([if router { 0xa0 } else { 0x20 }, 0, 0, 0]);
    icmp.extend(ip.octets());
    icmp.extend([2, 1]); // target link-layer address, 8 bytes
    icmp.extend(mac);
    // The checksum over the pseudo-header (addresses, length, next header) and
    // the message.
    let mut sum: u32 = [ip.octets(), ALL_NODES.octets()]
        .iter()
        .flat_map(|a| a.chunks(2))
        .chain(icmp.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>()
        + icmp.len() as u32
        + 58;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend([0x33, 0x33, 0, 0, 0, 1]);
    frame.extend(mac);
    frame.extend([0x86, 0xdd]);
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((icmp.len() as u16).to_be_bytes());
    frame.extend([58, 255]);
    frame.extend(ip.octets());
    frame.extend(ALL_NODES.octets());
    frame.extend(icmp);
    frame
}

/// Tells the LAN that `ip` is at this interface's MAC now, so neighbours' caches
/// move at once: gratuitous ARP for IPv4, an unsolicited Neighbor Advertisement
/// for IPv6 (each sent twice, a lost frame costs nothing).
fn tell_neighbours(iface: &str, ip: IpAddr) {
    let (Some(mac), Ok(ifindex)) = (mac_of(iface), crate::loader::ifindex(iface)) else {
        warn!(iface, "no MAC or index to announce an address");
        return;
    };
    let (protocol, dst, frames) = match ip {
        IpAddr::V4(ip) => (
            0x0806u16,
            [0xff; 6],
            vec![garp_frame(mac, ip, false), garp_frame(mac, ip, true)],
        ),
        IpAddr::V6(ip) => {
            let forwarding =
                fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
                    .is_ok_and(|v| v.trim() == "1");
            let na = unsolicited_na(mac, ip, forwarding);
            (0x86dd, [0x33, 0x33, 0, 0, 0, 1], vec![na.clone(), na])
        }
    };
    // SAFETY: a raw packet socket we own and close; the address structure is fully
    // initialised and its size passed.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            warn!(error = %std::io::Error::last_os_error(), "packet socket to announce an address");
            return;
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst);
        for frame in frames {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
        }
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_picks_the_same_owner_and_addresses_spread() {
        let nodes: Vec<String> = (1..=3).map(|n| format!("node{n}")).collect();
        let ips: Vec<IpAddr> = (1..=30)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 168, 1, 200 + i)))
            .chain((1..=30).map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xf0 + i))))
            .collect();
        let owners: BTreeSet<&str> = ips.iter().filter_map(|ip| owner(&nodes, *ip)).collect();
        assert_eq!(owners.len(), 3, "60 addresses land on every node");
        // Order of discovery does not matter.
        let mut reversed = nodes.clone();
        reversed.reverse();
        for ip in &ips {
            assert_eq!(owner(&nodes, *ip), owner(&reversed, *ip));
        }
        // A node leaving moves only its own addresses.
        let without: Vec<String> = nodes.iter().filter(|n| *n != "node2").cloned().collect();
        for ip in &ips {
            if owner(&nodes, *ip) != Some("node2") {
                assert_eq!(owner(&nodes, *ip), owner(&without, *ip));
            }
        }
    }

    #[test]
    fn the_neighbor_advertisement_is_checksummed_and_overrides() {
        let mac = [0x02, 0, 0, 0, 0, 0x07];
        let ip: Ipv6Addr = "fd00:192:168:1::f1".parse().unwrap();
        let f = unsolicited_na(mac, ip, true);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1], "to all nodes");
        assert_eq!((f[12], f[13], f[20], f[21]), (0x86, 0xdd, 58, 255));
        assert_eq!(&f[22..38], &ip.octets(), "from the address itself");
        assert_eq!((f[54], f[55], f[58]), (136, 0, 0xa0), "router and override");
        assert_eq!(&f[62..78], &ip.octets(), "about it");
        assert_eq!(&f[78..80], &[2, 1]);
        assert_eq!(&f[80..86], &mac);
        // The one's-complement sum over the pseudo-header and the message, the
        // checksum included, is all ones.
        let mut sum: u32 = f[22..54]
            .chunks(2)
            .chain(f[54..].chunks(2))
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>()
            + 32
            + 58;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(unsolicited_na(mac, ip, false)[58], 0x20, "override alone");
    }
}
