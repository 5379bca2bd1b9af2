//! Programs for `cargo xtask bench` only, never attached by the agent: a traffic
//! generator for BPF_PROG_RUN's live-frames mode, a plain redirect hop (the ceiling
//! lb is compared with), a plain hand-over at TC (the floor of delivering socket
//! buffers), a plain NAT hop to another node (the ceiling of forwarding to a remote
//! pod) and counting sinks for the pod (XDP and TC ingress). Settings live in
//! `LB_BENCH`, the frame templates in `LB_BENCH_FRAME`, the count in `LB_BENCH_SINK`.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_clone_redirect, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    BENCH_FRAME_GEN, BENCH_FRAME_HOP, BENCH_GEN_IFINDEX, BENCH_HDR_LEN, BENCH_IPV6,
    BENCH_NEW_FLOWS, BENCH_REDIRECT_IFINDEX, CtValue, PROTO_UDP,
};

use lb_ebpf::{
    conntrack,
    csum::Csum,
    ct_table::NewFlows,
    family::Family,
    parse::{self, IP_CHECK_OFF, IP_DADDR_OFF, IP_SADDR_OFF, ptr_at},
};

use crate::{LB_BENCH, LB_BENCH_FRAME, LB_BENCH_SINK};

const ETH_LEN: usize = 14;
/// Offset of the UDP source port in the template (Ethernet + 20-byte IPv4).
const UDP_SPORT_OFF: usize = ETH_LEN + 20;
/// Offset of the UDP destination port.
const UDP_DPORT_OFF: usize = UDP_SPORT_OFF + 2;
/// Ethernet + IPv4 + UDP headers: what an IPv4 frame takes from its template.
const HDR4_LEN: usize = ETH_LEN + 20 + 8;
/// In an IPv6 template: the UDP source port, its checksum, and the last two bytes
/// of the source address.
const UDP6_SPORT_OFF: usize = ETH_LEN + 40;
const UDP6_CHECK_OFF: usize = UDP6_SPORT_OFF + 6;
const IP6_SADDR_LO_OFF: usize = ETH_LEN + 8 + 14;

#[inline(always)]
fn setting(index: u32) -> u32 {
    LB_BENCH.get(index).copied().unwrap_or(0)
}

/// Live-frames generator. Pages are recycled without being re-initialised and the
/// hops downstream rewrite them, so every frame gets the template's headers anew.
/// With `BENCH_NEW_FLOWS` every frame is a new flow: a random source port and a
/// random last byte of the source address (IPv4: the header checksum is updated,
/// the UDP checksum is 0, so it stays valid; IPv6, `BENCH_IPV6`: the UDP checksum,
/// which covers both, is updated). The frame then leaves through its interface.
#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    if write_frame(ctx.data(), ctx.data_end()) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// The generator where the kernel refuses live frames (it answers EPERM): run by
/// BPF_PROG_RUN on one socket buffer, `repeat` times in the kernel, each run writes
/// the frame as [`generate`] does and sends a clone of it out of
/// `BENCH_GEN_IFINDEX` (`bpf_clone_redirect`, egress: the device transmits it as
/// any sent packet). The write unclones the buffer first (the verifier's prologue
/// for programs that write packets), so a clone still queued keeps its own frame.
#[inline(always)]
pub fn generate_tc(ctx: &TcContext) -> i32 {
    if write_frame(ctx.data(), ctx.data_end()) {
        // SAFETY: the program's own socket buffer; the helper checks the ifindex.
        unsafe { bpf_clone_redirect(ctx.skb.skb, setting(BENCH_GEN_IFINDEX), 0) };
    }
    TC_ACT_SHOT
}

/// The generators' frame, written over `data..end`: false when it is shorter than
/// the template's headers.
#[inline(always)]
fn write_frame(data: usize, end: usize) -> bool {
    let (Some(hdr), Some(tmpl)) = (
        ptr_at::<[u8; BENCH_HDR_LEN]>(data, end, 0),
        LB_BENCH_FRAME.get_ptr(BENCH_FRAME_GEN),
    ) else {
        return false;
    };
    // Two-byte words, each a plain load and store: a copy of the whole array would
    // be a call to compiler_builtins' memmove, a byte loop on the generator's CPU.
    // The IPv4 headers' 21 words, and an IPv6 template's 10 more (not copied for
    // IPv4: the generator's rate is the ceiling every row is read against).
    // Frames start at least 2-aligned (NET_IP_ALIGN) and map values 8-aligned.
    let ipv6 = setting(BENCH_IPV6) != 0;
    let (dst, src) = (hdr as *mut u16, tmpl as *const u16);
    for i in 0..HDR4_LEN / 2 {
        // SAFETY: both bounds-checked above for BENCH_HDR_LEN >= HDR4_LEN bytes,
        // 2-aligned; they do not overlap (packet vs map).
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
    if ipv6 {
        for i in HDR4_LEN / 2..BENCH_HDR_LEN / 2 {
            // SAFETY: as above, within BENCH_HDR_LEN bytes.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        }
    }
    if setting(BENCH_NEW_FLOWS) != 0 {
        let (sport_off, saddr_lo_off, check_off) = if ipv6 {
            (UDP6_SPORT_OFF, IP6_SADDR_LO_OFF, UDP6_CHECK_OFF)
        } else {
            (
                UDP_SPORT_OFF,
                ETH_LEN + IP_SADDR_OFF + 2,
                ETH_LEN + IP_CHECK_OFF,
            )
        };
        let (Some(sport), Some(saddr_lo), Some(check)) = (
            ptr_at::<[u8; 2]>(data, end, sport_off),
            ptr_at::<[u8; 2]>(data, end, saddr_lo_off),
            ptr_at::<[u8; 2]>(data, end, check_off),
        ) else {
            return false;
        };
        // SAFETY: a helper with no preconditions.
        let r = unsafe { bpf_get_prandom_u32() };
        let port = 1024 + ((r & 0xffff) % 64_000) as u16;
        let host = 11 + ((r >> 16) % 240) as u8;
        // SAFETY: all three bounds-checked just above.
        unsafe {
            let old_port = sport.read_unaligned();
            sport.write_unaligned(port.to_be_bytes());
            let old = saddr_lo.read_unaligned();
            let new = [old[0], host];
            saddr_lo.write_unaligned(new);
            let mut c = Csum::start(u16::from_ne_bytes(check.read_unaligned()));
            c.replace16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
            if ipv6 {
                c.replace16(u16::from_ne_bytes(old_port), port.to_be());
            }
            check.write_unaligned(c.finish().to_ne_bytes());
        }
    }
    true
}

/// The ceiling: every frame redirected to `BENCH_REDIRECT_IFINDEX` untouched.
#[inline(always)]
pub fn redirect() -> u32 {
    // SAFETY: a helper taking plain values.
    unsafe { bpf_redirect(setting(BENCH_REDIRECT_IFINDEX), 0) as u32 }
}

/// The floor of any hop that keeps per-flow NAT state: the ceiling plus, per
/// packet, the parse and the flow lookup, and for a packet of a new flow the one
/// entry every such hop writes (the reply it expects, which the reverse
/// translation needs; lb writes the original direction's at the flow's second
/// packet or answer), in lb's own `LB_CT` (`ct_table`) sized as the agent sizes
/// its own.
#[inline(always)]
pub fn redirect_ct(ctx: &XdpContext) -> u32 {
    let Ok(p) = parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) else {
        return xdp_action::XDP_PASS;
    };
    if !conntrack::peek(&p.key) {
        let k = &p.key;
        let value = CtValue {
            nat_daddr_be: k.saddr_be,
            nat_dport_be: k.sport_be,
            ..CtValue::default()
        };
        let _ = <u32 as Family>::conntrack().insert(k, value, 0);
    }
    redirect()
}

/// The ceiling of forwarding to a pod on another node: the frame is translated as
/// a NodePort's translation would (destination address and port to the pod's,
/// source address to this node's, the IPv4 checksum updated; the UDP checksum is
/// 0), addressed to the next node's MAC, all read from the hop template
/// (`LB_BENCH_FRAME[BENCH_FRAME_HOP]`), and redirected to `BENCH_REDIRECT_IFINDEX`
/// (the interface it came in on: as lb's forwarding does, a redirect rather than
/// XDP_TX, which a veth delivers only to a peer running XDP). No parsing beyond the
/// template's fixed offsets, no lookup, no flow.
#[inline(always)]
pub fn nat_hop(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let (Some(hdr), Some(tmpl)) = (
        ptr_at::<[u8; BENCH_HDR_LEN]>(data, end, 0),
        LB_BENCH_FRAME.get_ptr(BENCH_FRAME_HOP),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    let (p, t) = (hdr as *mut u8, tmpl as *const u8);
    // SAFETY: both bounds-checked above for BENCH_HDR_LEN bytes and every offset
    // below lies within them; plain 2-byte loads and stores (frames start 2-aligned,
    // map values 8-aligned, every offset is even), no memmove call.
    unsafe {
        let word = |base: *const u8, off: usize| (base.add(off) as *const u16).read_volatile();
        let put = |off: usize, v: u16| (p.add(off) as *mut u16).write_volatile(v);
        // Ethernet: the next node's MAC, from this node's.
        for off in (0..12).step_by(2) {
            put(off, word(t, off));
        }
        // IPv4 source and destination, the header checksum updated for them.
        let mut c = Csum::start(word(p, ETH_LEN + IP_CHECK_OFF));
        for off in (ETH_LEN + IP_SADDR_OFF..ETH_LEN + IP_DADDR_OFF + 4).step_by(2) {
            let (old, new) = (word(p, off), word(t, off));
            c.replace16(old, new);
            put(off, new);
        }
        put(ETH_LEN + IP_CHECK_OFF, c.finish());
        // UDP destination port (the checksum is 0: nothing to update).
        put(UDP_DPORT_OFF, word(t, UDP_DPORT_OFF));
    }
    redirect()
}

/// The socket-buffer floor: every frame handed to the peer of
/// `BENCH_REDIRECT_IFINDEX` untouched, from TC ingress.
#[inline(always)]
pub fn redirect_peer() -> i32 {
    // SAFETY: a helper taking plain values.
    unsafe { bpf_redirect_peer(setting(BENCH_REDIRECT_IFINDEX), 0) as i32 }
}

/// The pod's sink: counts and drops IPv4 UDP frames; passes everything else (ARP).
#[inline(always)]
pub fn sink(ctx: &XdpContext) -> u32 {
    if count(ctx.data(), ctx.data_end()) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The same at TC ingress, for frames handed over as socket buffers.
#[inline(always)]
pub fn sink_tc(ctx: &TcContext) -> i32 {
    if count(ctx.data(), ctx.data_end()) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// Whether the frame is UDP (over IPv4 or IPv6), counted if so. The EtherType is
/// read first: byte 9 of an ARP packet is its sender's MAC, and an ARP request
/// from a MAC whose second byte is 17 was once taken for UDP and dropped (the node
/// then never resolved the pod).
#[inline(always)]
fn count(data: usize, end: usize) -> bool {
    let proto_off = match parse::is_ipv6(data, end) {
        Some(false) => ETH_LEN + 9,
        Some(true) => ETH_LEN + 6,
        None => return false,
    };
    let Some(proto) = ptr_at::<u8>(data, end, proto_off) else {
        return false;
    };
    // SAFETY: bounds-checked above.
    if unsafe { *proto } != PROTO_UDP {
        return false;
    }
    if let Some(n) = LB_BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, ours alone while this program runs.
        unsafe { *n += 1 };
    }
    true
}
