//! Turns a packet into an ICMP "destination unreachable" answer and sends it back
//! out the interface it came in on: "port unreachable" for a service without
//! endpoints, as kube-proxy's REJECT rule sends (UDP gets ECONNREFUSED on its next
//! call, a TCP connect() fails at once with "Connection refused" instead of
//! hanging), and "fragmentation needed" with the next hop's MTU for a packet too big
//! for its way out, as a router sends it (path MTU discovery). The answer comes from
//! the address the packet was sent to, quoting it as it arrived, so the sender's
//! socket takes it.
//!
//! Frame built in place (70 bytes):
//! `[Ethernet 14][IPv4 20][ICMP 8][original IPv4 header 20][first 8 bytes of L4]`
//!
//! IPv6 likewise ([`port_unreachable6`], [`packet_too_big6`], 110 bytes):
//! `[Ethernet 14][IPv6 40][ICMPv6 8][original IPv6 header 40][first 8 bytes of L4]`

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use lb_common::Addr6;

use crate::{
    parse::{Packet, ptr_at},
    ratelimit,
};

const ICMP_HDR_LEN: usize = 8;
/// Bytes inserted after the Ethernet header: the new IPv4 and ICMP headers.
const GROW: usize = Ipv4Hdr::LEN + ICMP_HDR_LEN;
/// The quoted original: its IPv4 header (without options) and 8 bytes of L4.
const QUOTE: usize = Ipv4Hdr::LEN + 8;
const FRAME: usize = EthHdr::LEN + GROW + QUOTE;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const PROTO_ICMP: u8 = 1;

/// Whether `addr` (network order) can be a host's source: not 0.0.0.0/8, loopback,
/// multicast, reserved or broadcast.
#[inline(always)]
fn unicast_host(addr_be: u32) -> bool {
    let first = addr_be.to_ne_bytes()[0];
    first != 0 && first != 127 && first < 224
}

/// Internet checksum of `N` 16-bit words at `ptr`.
#[inline(always)]
fn checksum<const N: usize>(ptr: *const [u8; 2]) -> u16 {
    fold(sum::<N>(ptr))
}

/// The unfolded sum of `N` 16-bit words at `ptr`.
#[inline(always)]
fn sum<const N: usize>(ptr: *const [u8; 2]) -> u32 {
    let mut sum: u32 = 0;
    for i in 0..N {
        // SAFETY: the caller bounds-checked N words from ptr.
        sum += u16::from_be_bytes(unsafe { *ptr.add(i) }) as u32;
    }
    sum
}

/// The checksum of an unfolded sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The frame's (source, destination) MACs, unless it was sent to a broadcast or
/// multicast address (never answered).
#[inline(always)]
fn unicast_macs(ctx: &TcContext) -> Option<([u8; 6], [u8; 6])> {
    let eth = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: bounds-checked by ptr_at.
    let (client_mac, our_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    (our_mac[0] & 1 == 0).then_some((client_mac, our_mac))
}

/// Resizes the socket buffer to an answer of `N` bytes (growing a short datagram,
/// cutting a long one; the headers stay where they are, so a partial checksum's
/// offsets stay valid) and gives its bytes.
#[inline(always)]
fn resized<const N: usize>(ctx: &TcContext) -> Option<&'static mut [u8; N]> {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, N as u32, 0) } != 0 {
        return None;
    }
    let frame: *mut [u8; N] = ptr_at(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: ptr_at checked that all N bytes lie inside the packet, and nothing
    // changes its size while the answer is written.
    Some(unsafe { &mut *frame })
}

/// What became of an answer.
pub enum Answer {
    /// Built in place of the packet and sent: the TC verdict.
    Sent(i32),
    /// Would be sent, but the ICMP rate limit is spent (`ratelimit`).
    Limited,
    /// Not for this packet (no host's unicast, IPv4 options) or not buildable; the
    /// packet is left as it was where possible.
    Not,
}

/// "Port unreachable" for `p` (see the module), within the ICMP rate limit.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, p: &Packet) -> Answer {
    unreachable(ctx, p, ICMP_PORT_UNREACH, 0)
}

/// "Fragmentation needed" for `p`, naming `mtu` as the next hop's.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, p: &Packet, mtu: u16) -> Option<i32> {
    match unreachable(ctx, p, ICMP_FRAG_NEEDED, mtu) {
        Answer::Sent(verdict) => Some(verdict),
        _ => None,
    }
}

/// Rewrites the packet into the ICMP answer and redirects it back.
#[inline(always)]
fn unreachable(ctx: &TcContext, p: &Packet, code: u8, mtu: u16) -> Answer {
    if p.l4_off != EthHdr::LEN + Ipv4Hdr::LEN {
        return Answer::Not; // IPv4 options: not quoted, left to the kernel
    }
    // As the kernel's icmp_send (RFC 1122): never about a frame sent to a broadcast
    // or multicast address, nor to a source that is no host's.
    let Some((client_mac, our_mac)) = unicast_macs(ctx) else {
        return Answer::Not;
    };
    if !unicast_host(p.key.saddr_be) {
        return Answer::Not;
    }
    if code != ICMP_FRAG_NEEDED && !ratelimit::allow(p.key.saddr_be) {
        return Answer::Limited;
    }
    match build(ctx, p, code, mtu, client_mac, our_mac) {
        Some(verdict) => Answer::Sent(verdict),
        None => Answer::Not,
    }
}

#[inline(always)]
fn build(
    ctx: &TcContext,
    p: &Packet,
    code: u8,
    mtu: u16,
    client_mac: [u8; 6],
    our_mac: [u8; 6],
) -> Option<i32> {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    let f = resized::<FRAME>(ctx)?;
    // Quote the original IPv4 header and 8 bytes of L4 where the answer carries them.
    let quote_at = EthHdr::LEN + GROW;
    for i in 0..QUOTE {
        f[quote_at + i] = f[EthHdr::LEN + i];
    }
    f[0..6].copy_from_slice(&client_mac);
    f[6..12].copy_from_slice(&our_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = EthHdr::LEN;
    let total = (GROW + QUOTE) as u16;
    f[ip..ip + 12].copy_from_slice(&[
        0x45,
        0xc0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
    ]);
    // The service address answers the client: swap the quoted packet's addresses.
    let (src, dst) = (p.key.daddr_be.to_ne_bytes(), p.key.saddr_be.to_ne_bytes());
    f[ip + 12..ip + 16].copy_from_slice(&src);
    f[ip + 16..ip + 20].copy_from_slice(&dst);
    let icmp = ip + Ipv4Hdr::LEN;
    // Two 32-bit words, each one store: an array with runtime bytes in it would be
    // built with a call to memset.
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
    let head = u32::from_be_bytes([ICMP_DEST_UNREACH, code, 0, 0]);
    let rest = u32::from_be_bytes([0, 0, mtu_hi, mtu_lo]);
    f[icmp..icmp + 4].copy_from_slice(&head.to_be_bytes());
    f[icmp + 4..icmp + 8].copy_from_slice(&rest.to_be_bytes());
    let ip_sum = checksum::<10>(f[ip..].as_ptr() as *const [u8; 2]);
    f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = checksum::<{ (ICMP_HDR_LEN + QUOTE) / 2 }>(f[icmp..].as_ptr() as *const [u8; 2]);
    f[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    // SAFETY: a helper taking plain values.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

const IP6_HLEN: usize = 40;
/// Bytes inserted after the Ethernet header: the new IPv6 and ICMPv6 headers.
const GROW6: usize = IP6_HLEN + ICMP_HDR_LEN;
/// The quoted original: its IPv6 header and 8 bytes of L4.
const QUOTE6: usize = IP6_HLEN + 8;
const FRAME6: usize = EthHdr::LEN + GROW6 + QUOTE6;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PORT_UNREACH: u8 = 4;
const ICMP6_PKT_TOOBIG: u8 = 2;
const PROTO_ICMPV6: u8 = 58;

/// Whether an IPv6 source can be a host's (RFC 4443 2.4 (e)): not the unspecified
/// address, loopback or multicast.
#[inline(always)]
fn unicast_host6(addr: &Addr6) -> bool {
    let first = addr[0].to_ne_bytes()[0];
    let low = addr[0] | addr[1] | addr[2];
    first != 0xff && !(low == 0 && (addr[3] == 0 || addr[3] == 1u32.to_be()))
}

/// The per-client rate limit's key for an IPv6 client: its address's words folded
/// (two clients whose folds meet share a bucket: they get fewer answers, never more).
#[inline(always)]
fn peer_key6(addr: &Addr6) -> u32 {
    addr[0] ^ addr[1] ^ addr[2] ^ addr[3]
}

/// [`port_unreachable`] for IPv6: ICMPv6 "port unreachable" (as ip6tables' REJECT
/// sends for kube-proxy), from the address the packet was sent to, within the same
/// rate limits. Not for a packet with extension headers (left to the kernel). A
/// subprogram of its own (see `flow::Work6`).
#[inline(never)]
pub fn port_unreachable6(ctx: &TcContext, p: &Packet<Addr6>) -> Answer {
    unreachable6(ctx, p, ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH, 0)
}

/// ICMPv6 "packet too big" for `p`, naming `mtu` as the next hop's (as a router
/// sends it; never rate-limited, as the kernel's `icmpv6_xrlim_allow`: path MTU
/// discovery must work). Quotes the IPv6 header and 8 bytes of L4, which the
/// sender's TCP and UDP need to find their socket. A subprogram of its own.
#[inline(never)]
pub fn packet_too_big6(ctx: &TcContext, p: &Packet<Addr6>, mtu: u16) -> Answer {
    unreachable6(ctx, p, ICMP6_PKT_TOOBIG, 0, mtu as u32)
}

/// An ICMPv6 error of `kind` and `code` (`word`: the 32 bits after its checksum)
/// in place of `p`, sent back out the interface it came in on.
#[inline(always)]
fn unreachable6(ctx: &TcContext, p: &Packet<Addr6>, kind: u8, code: u8, word: u32) -> Answer {
    if p.l4_off != EthHdr::LEN + IP6_HLEN {
        return Answer::Not;
    }
    let Some((client_mac, our_mac)) = unicast_macs(ctx) else {
        return Answer::Not;
    };
    if !unicast_host6(&p.key.saddr_be) {
        return Answer::Not;
    }
    if kind != ICMP6_PKT_TOOBIG && !ratelimit::allow(peer_key6(&p.key.saddr_be)) {
        return Answer::Limited;
    }
    match build6(ctx, client_mac, our_mac, kind, code, word) {
        Some(verdict) => Answer::Sent(verdict),
        None => Answer::Not,
    }
}

#[inline(always)]
fn build6(
    ctx: &TcContext,
    client_mac: [u8; 6],
    our_mac: [u8; 6],
    kind: u8,
    code: u8,
    word: u32,
) -> Option<i32> {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let f = resized::<FRAME6>(ctx)?;
    let ip = EthHdr::LEN;
    let quote_at = ip + GROW6;
    for i in 0..QUOTE6 {
        f[quote_at + i] = f[ip + i];
    }
    f[0..6].copy_from_slice(&client_mac);
    f[6..12].copy_from_slice(&our_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let payload = (ICMP_HDR_LEN + QUOTE6) as u16;
    let [len_hi, len_lo] = payload.to_be_bytes();
    let head = u32::from_be_bytes([0x60, 0, 0, 0]);
    let rest = u32::from_be_bytes([len_hi, len_lo, PROTO_ICMPV6, 64]);
    f[ip..ip + 4].copy_from_slice(&head.to_be_bytes());
    f[ip + 4..ip + 8].copy_from_slice(&rest.to_be_bytes());
    // The service address answers the client: the quoted packet's addresses swapped.
    let (q_src, q_dst) = (quote_at + 8, quote_at + 24);
    for i in 0..16 {
        f[ip + 8 + i] = f[q_dst + i];
        f[ip + 24 + i] = f[q_src + i];
    }
    let icmp = ip + IP6_HLEN;
    let head = u32::from_be_bytes([kind, code, 0, 0]);
    f[icmp..icmp + 4].copy_from_slice(&head.to_be_bytes());
    f[icmp + 4..icmp + 8].copy_from_slice(&word.to_be_bytes());
    // Over the pseudo-header (both addresses, the length, the next header) and the
    // message.
    let addrs = sum::<16>(f[ip + 8..].as_ptr() as *const [u8; 2]);
    let message = sum::<{ (ICMP_HDR_LEN + QUOTE6) / 2 }>(f[icmp..].as_ptr() as *const [u8; 2]);
    let icmp_sum = fold(addrs + message + payload as u32 + PROTO_ICMPV6 as u32);
    f[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    // SAFETY: a helper taking plain values.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
