//! Bounds-checked header access: the only module that turns packet offsets into
//! pointers. Everything else works on [`Packet`] (offsets and the 5-tuple).

use core::mem::size_of;

use lb_common::{Addr6, FlowKey, FlowKeyOf, PROTO_TCP, PROTO_UDP, reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

/// EtherType of IPv4 as it sits in the frame (network byte order).
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// EtherType of IPv6 as it sits in the frame (network byte order).
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// The IPv6 header's length and where its fields are.
pub const IP6_HLEN: usize = 40;
pub const IP6_HOP_OFF: usize = 7;
pub const IP6_SADDR_OFF: usize = 8;
pub const IP6_DADDR_OFF: usize = 24;
/// IPv6 extension headers: hop-by-hop options, routing, fragment, destination
/// options (the others end the chain, or are not followed by TCP or UDP).
const IP6_HOPOPTS: u8 = 0;
const IP6_ROUTING: u8 = 43;
const IP6_FRAGMENT: u8 = 44;
const IP6_DSTOPTS: u8 = 60;
/// The IPv6 header as the rewrite writes it: every field bytes, so a pointer to it
/// needs no alignment.
#[repr(C)]
pub struct Ip6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next: u8,
    pub hop: u8,
    pub src: [[u8; 4]; 4],
    pub dst: [[u8; 4]; 4],
}
const _: () = assert!(size_of::<Ip6Hdr>() == IP6_HLEN);
/// How many extension headers are skipped before the L4 header, at most (as
/// Cilium's `IPV6_MAX_HEADERS`); a longer chain is passed to the kernel.
const IP6_MAX_EXT: usize = 4;
/// The Fragment header's offset mask and more-fragments flag (host order).
const IP6_OFFSET_MASK: u16 = 0xfff8;
const IP6_MF: u16 = 0x0001;
/// More-fragments flag and fragment offset mask of `Ipv4Hdr::frags` (host order).
const IP_MF: u16 = 0x2000;
/// Don't-fragment flag of `Ipv4Hdr::frags` (host order).
const IP_DF: u16 = 0x4000;
const IP_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether TCP flags make a connection's first packet: SYN alone (no ACK, and not
/// with FIN or RST, combinations netfilter takes as invalid).
#[inline(always)]
pub fn opens_connection(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// Offset of the data-offset byte (high nibble: header length in words).
const TCP_DOFF_OFF: usize = 12;
/// Offsets of the checksum fields in their headers.
pub const IP_TTL_OFF: usize = 8;
pub const IP_CHECK_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment (offset 0, more to come): it carries the L4 header.
    First,
    /// A later fragment: no L4 header; `key`'s ports are 0 until `frag::resolve`
    /// fills them in from the first fragment, and only the IPv4 header may be rewritten.
    Later,
}

/// A parsed IPv4 (`A` = `u32`) or IPv6 (`A` = [`Addr6`]) TCP or UDP packet: where
/// its headers are and its 5-tuple as it arrived.
#[derive(Clone, Copy)]
pub struct Packet<A = u32> {
    pub l3_off: usize,
    pub l4_off: usize,
    pub key: FlowKeyOf<A>,
    /// The TCP flags byte (0 for UDP and later fragments).
    pub tcp_flags: u8,
    /// IPv4 total length (IPv6: header and payload), for byte counters.
    pub ip_len: u16,
    /// TTL (IPv6: hop limit).
    pub ttl: u8,
    pub frag: Frag,
    /// The datagram's identification as it lies in the packet (IPv4's 16 bits,
    /// zero-extended; IPv6's Fragment header's 32; 0 for whole packets): with the
    /// addresses and protocol it names the datagram a fragment belongs to.
    pub frag_id_be: u32,
    /// Don't fragment: a packet too big for its way out is answered with ICMP
    /// "fragmentation needed", not fragmented.
    pub df: bool,
}

impl<A> Packet<A> {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_check_off(&self) -> usize {
        if self.key.proto == PROTO_TCP {
            self.l4_off + TCP_CHECK_OFF
        } else {
            self.l4_off + UDP_CHECK_OFF
        }
    }
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds it whole.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    let start = data.checked_add(off)?;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// EtherType of ARP as it sits in the frame (network byte order).
const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();

/// The sender protocol address (network order) of an Ethernet frame that is an
/// IPv4-over-Ethernet ARP packet (request or reply); None for anything else.
#[inline(always)]
pub fn arp_sender(data: usize, data_end: usize) -> Option<u32> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_ARP_BE {
        return None;
    }
    // hardware type 1 (Ethernet), protocol 0x0800, lengths 6 and 4, then the
    // operation, the sender's MAC and its IPv4 address.
    let arp: *const [u8; 18] = ptr_at(data, data_end, EthHdr::LEN)?;
    // SAFETY: as above, for the ARP header up to the sender's address.
    let a = unsafe { *arp };
    if a[..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    Some(u32::from_ne_bytes([a[14], a[15], a[16], a[17]]))
}

/// ICMPv6's next-header number and Neighbor Discovery's message types.
const NEXT_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;

/// The address an Ethernet frame tells the LAN is at its sender's MAC, when it is
/// an ICMPv6 Neighbor Advertisement (its target) or Neighbor Solicitation (its
/// source: the solicited node caches it) right after the IPv6 header, as the
/// kernel sends them; None for anything else.
#[inline(always)]
pub fn nd_claim(data: usize, data_end: usize) -> Option<Addr6> {
    // Ethernet, IPv6, then the message's type, code, checksum, flags and target.
    let f: *const [u8; EthHdr::LEN + IP6_HLEN + 24] = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the bytes lie inside the packet; the address is
    // read unaligned.
    unsafe {
        if u16::from_ne_bytes([(*f)[12], (*f)[13]]) != ETH_P_IPV6_BE
            || (*f)[EthHdr::LEN + 6] != NEXT_ICMPV6
        {
            return None;
        }
        let off = match (*f)[EthHdr::LEN + IP6_HLEN] {
            ICMPV6_NA => EthHdr::LEN + IP6_HLEN + 8,
            ICMPV6_NS => EthHdr::LEN + IP6_SADDR_OFF,
            _ => return None,
        };
        Some(core::ptr::read_unaligned((data + off) as *const Addr6))
    }
}

/// The ports and TCP flags of the L4 header at `l4_off` (zeros for a later
/// fragment), checked against what the datagram holds after the IP headers
/// (`l4_len`): a TCP header within it, a UDP length that fits it exactly (a first
/// fragment: that goes past it).
#[inline(always)]
fn l4_ports(
    data: usize,
    data_end: usize,
    l4_off: usize,
    l4_len: usize,
    proto: u8,
    frag: Frag,
) -> Result<(u16, u16, u8), u32> {
    if frag == Frag::Later {
        return Ok((0, 0, 0));
    }
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(data, data_end, l4_off).ok_or(reason::PASS_MALFORMED)?;
        // SAFETY: ptr_at checked the whole TCP header; the flags and data-offset
        // bytes lie inside it (read through the same pointer, so the verifier sees
        // the same bounds).
        let (sport, dport, flags, doff) = unsafe {
            (
                u16::from_ne_bytes((*tcp).source),
                u16::from_ne_bytes((*tcp).dest),
                *(tcp as *const u8).add(TCP_FLAGS_OFF),
                (*(tcp as *const u8).add(TCP_DOFF_OFF) >> 4) as usize * 4,
            )
        };
        if doff < TcpHdr::LEN || doff > l4_len {
            return Err(reason::PASS_MALFORMED);
        }
        return Ok((sport, dport, flags));
    }
    let udp: *const UdpHdr = ptr_at(data, data_end, l4_off).ok_or(reason::PASS_MALFORMED)?;
    // SAFETY: checked by ptr_at.
    let (sport, dport, len) = unsafe {
        (
            u16::from_ne_bytes((*udp).src),
            u16::from_ne_bytes((*udp).dst),
            u16::from_be_bytes((*udp).len) as usize,
        )
    };
    // A whole datagram holds exactly its UDP length; a first fragment holds the
    // header and the start of a longer one.
    let fits = match frag {
        Frag::Whole => len <= l4_len,
        _ => len > l4_len,
    };
    if len < UdpHdr::LEN || l4_len < UdpHdr::LEN || !fits {
        return Err(reason::PASS_MALFORMED);
    }
    Ok((sport, dport, 0))
}

/// Which IP version an Ethernet frame carries: `Some(false)` IPv4, `Some(true)`
/// IPv6, None anything else (or too short to say).
#[inline(always)]
pub fn is_ipv6(data: usize, data_end: usize) -> Option<bool> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the whole header lies inside the packet.
    match unsafe { (*eth).ether_type } {
        ETH_P_IP_BE => Some(false),
        ETH_P_IPV6_BE => Some(true),
        _ => None,
    }
}

/// Parses an Ethernet frame carrying IPv6 into a [`Packet`], skipping up to
/// `IP6_MAX_EXT` extension headers, or says (as a `reason`) why the packet is not
/// one lb translates. A fragment's place in its datagram comes from its Fragment
/// header, as IPv4's from its header's offset and flags.
#[inline(always)]
pub fn parse6(data: usize, data_end: usize, len: usize) -> Result<Packet<Addr6>, u32> {
    let l3_off = EthHdr::LEN;
    let ip: *const [u8; IP6_HLEN] = ptr_at(data, data_end, l3_off).ok_or(reason::PASS_MALFORMED)?;
    // SAFETY: ptr_at checked that the whole header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(reason::PASS_MALFORMED);
    }
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    // The datagram lies whole in the frame (jumbograms, payload length 0, are not
    // taken).
    if payload == 0 || l3_off + IP6_HLEN + payload > len {
        return Err(reason::PASS_MALFORMED);
    }
    let mut next = ip[6];
    let mut off = l3_off + IP6_HLEN;
    let mut frag = Frag::Whole;
    let mut frag_id_be = 0;
    for _ in 0..IP6_MAX_EXT {
        match next {
            IP6_HOPOPTS | IP6_ROUTING | IP6_DSTOPTS => {
                let h: *const [u8; 2] =
                    ptr_at(data, data_end, off).ok_or(reason::PASS_MALFORMED)?;
                // SAFETY: checked by ptr_at.
                let h = unsafe { *h };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Next header, reserved, offset (13 bits, in 8 bytes) with the
            // more-fragments flag (the lowest bit), identification. A second
            // Fragment header is not a datagram lb looks at.
            IP6_FRAGMENT if frag == Frag::Whole => {
                let h: *const [u8; 8] =
                    ptr_at(data, data_end, off).ok_or(reason::PASS_MALFORMED)?;
                // SAFETY: checked by ptr_at.
                let h = unsafe { *h };
                next = h[0];
                off += 8;
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                frag_id_be = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
                if offset_flags & IP6_OFFSET_MASK != 0 {
                    // A later fragment: what follows is the datagram's middle, not
                    // a header (its first fragment's chain named the L4 protocol).
                    frag = Frag::Later;
                    break;
                }
                // Offset 0 and more to come: the first fragment. Offset 0 and none
                // to come is an atomic fragment (RFC 6946): a whole datagram.
                if offset_flags & IP6_MF != 0 {
                    frag = Frag::First;
                }
            }
            _ => break,
        }
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(reason::PASS_NOT_L4);
    }
    let l4_off = off;
    let end = l3_off + IP6_HLEN + payload;
    if l4_off >= end {
        return Err(reason::PASS_MALFORMED);
    }
    let (sport_be, dport_be, tcp_flags) =
        l4_ports(data, data_end, l4_off, end - l4_off, next, frag)?;
    // The addresses last, so that their bytes are not held through the checks.
    let word = |at: usize| u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    let saddr_be = [word(8), word(12), word(16), word(20)];
    let daddr_be = [word(24), word(28), word(32), word(36)];
    let hop = ip[IP6_HOP_OFF];
    Ok(Packet {
        l3_off,
        l4_off,
        key: FlowKeyOf {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto: next,
            _pad: 0,
            _pad2: 0,
        },
        tcp_flags,
        ip_len: (IP6_HLEN + payload) as u16,
        ttl: hop,
        frag,
        frag_id_be,
        // IPv6 routers never fragment: a packet too big is answered.
        df: true,
    })
}

/// Parses an Ethernet frame into a [`Packet`], or says (as a `reason`) why the
/// packet is not one lb translates. `len`: the whole frame's length (at TC a socket
/// buffer's data may go on past `data_end`, in pages).
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: usize) -> Result<Packet, u32> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0).ok_or(reason::PASS_MALFORMED)?;
    // SAFETY: ptr_at checked that the whole header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Err(reason::PASS_NOT_IP);
    }
    let l3_off = EthHdr::LEN;
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, l3_off).ok_or(reason::PASS_MALFORMED)?;
    // SAFETY: as above.
    let ip = unsafe { *ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(reason::PASS_MALFORMED);
    }
    let ip_len = u16::from_be_bytes(ip.tot_len);
    // The datagram lies whole in the frame (after it, at most Ethernet padding) and
    // holds its own header.
    if (ip_len as usize) < ihl || l3_off + ip_len as usize > len {
        return Err(reason::PASS_MALFORMED);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(reason::PASS_NOT_L4);
    }
    // Only the first fragment of a datagram carries the L4 header (and must carry it
    // whole here); later ones get their ports from it (`frag::resolve`).
    let frag = if frags & IP_OFFSET_MASK != 0 {
        Frag::Later
    } else if frags & IP_MF != 0 {
        Frag::First
    } else {
        Frag::Whole
    };
    let l4_off = l3_off + ihl;
    // What the datagram (or this first fragment) holds after the IPv4 header: the L4
    // header must lie in it whole, never in the frame's padding (RFC 1858's tiny
    // fragments included).
    let l4_len = ip_len as usize - ihl;
    let (sport_be, dport_be, tcp_flags) = l4_ports(data, data_end, l4_off, l4_len, proto, frag)?;
    Ok(Packet {
        l3_off,
        l4_off,
        key: FlowKey {
            saddr_be: u32::from_ne_bytes(ip.src_addr),
            daddr_be: u32::from_ne_bytes(ip.dst_addr),
            sport_be,
            dport_be,
            proto,
            _pad: 0,
            _pad2: 0,
        },
        tcp_flags,
        ip_len,
        ttl: ip.ttl,
        frag,
        frag_id_be: u16::from_ne_bytes(ip.id) as u32,
        df: frags & IP_DF != 0,
    })
}
