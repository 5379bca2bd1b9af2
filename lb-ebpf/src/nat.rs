//! Address and port rewrite with checksum update. Never reads maps: it is handed
//! the packet and the tuple to rewrite it to.
//!
//! XDP sees frames as they came off the wire (complete checksums), so it updates
//! them by hand. TC sees socket buffers whose L4 checksum may be CHECKSUM_PARTIAL
//! (only the pseudo-header sum, from a local or veth sender): only the kernel's
//! `bpf_l4_csum_replace` knows which, so TC uses it.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use lb_common::{Addr6, FlowKey, FlowKey6, PROTO_UDP, reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum::Csum,
    parse::{
        Frag, IP_CHECK_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IP_TTL_OFF, IP6_DADDR_OFF, IP6_HOP_OFF,
        IP6_SADDR_OFF, Ip6Hdr, Packet, ptr_at,
    },
};

/// The TTL/protocol word of the IPv4 header before and after a TTL decrement, as
/// the checksum sees it.
#[inline(always)]
fn ttl_words(ttl: u8, proto: u8) -> (u16, u16) {
    (
        u16::from_ne_bytes([ttl, proto]),
        u16::from_ne_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// Rewrites an XDP frame from `p.key` to `to`, and lowers its TTL if `hop` (the
/// program forwards it itself, as a router would); `Err(reason)` if the frame no
/// longer holds the headers `p` describes. A later fragment has no L4 header: only
/// its addresses change (the first fragment's L4 checksum covers the datagram).
#[inline(always)]
pub fn rewrite_xdp(ctx: &XdpContext, p: &Packet, to: &FlowKey, hop: bool) -> Result<(), u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, p.l3_off).ok_or(reason::PASS_MALFORMED)?;
    let from = &p.key;
    let l4 = if p.frag == Frag::Later {
        None
    } else {
        let ports: *mut [u16; 2] =
            ptr_at(data, data_end, p.l4_off).ok_or(reason::PASS_MALFORMED)?;
        let l4_check: *mut u16 =
            ptr_at(data, data_end, p.l4_check_off()).ok_or(reason::PASS_MALFORMED)?;
        Some((ports, l4_check))
    };
    // SAFETY: every pointer was bounds-checked against data_end just above, and
    // nothing has changed the packet's size since.
    unsafe {
        let mut ip_sum = Csum::start(u16::from_ne_bytes((*ip).check));
        if from.saddr_be != to.saddr_be {
            (*ip).src_addr = to.saddr_be.to_ne_bytes();
            ip_sum.replace32(from.saddr_be, to.saddr_be);
        }
        if from.daddr_be != to.daddr_be {
            (*ip).dst_addr = to.daddr_be.to_ne_bytes();
            ip_sum.replace32(from.daddr_be, to.daddr_be);
        }
        if hop {
            let (old, new) = ttl_words((*ip).ttl, (*ip).proto);
            (*ip).ttl = (*ip).ttl.wrapping_sub(1);
            ip_sum.replace16(old, new);
        }
        (*ip).check = ip_sum.finish().to_ne_bytes();
    }
    let Some((ports, l4_check)) = l4 else {
        return Ok(());
    };
    // SAFETY: as above.
    unsafe {
        let old_l4 = *l4_check;
        let mut l4_sum = Csum::start(old_l4);
        if from.saddr_be != to.saddr_be {
            l4_sum.replace32(from.saddr_be, to.saddr_be);
        }
        if from.daddr_be != to.daddr_be {
            l4_sum.replace32(from.daddr_be, to.daddr_be);
        }
        if from.sport_be != to.sport_be {
            (*ports)[0] = to.sport_be;
            l4_sum.replace16(from.sport_be, to.sport_be);
        }
        if from.dport_be != to.dport_be {
            (*ports)[1] = to.dport_be;
            l4_sum.replace16(from.dport_be, to.dport_be);
        }
        // A UDP checksum of 0 means "none" and stays so; a computed 0 is sent as 0xffff.
        if from.proto == PROTO_UDP {
            if old_l4 != 0 {
                let sum = l4_sum.finish();
                *l4_check = if sum == 0 { 0xffff } else { sum };
            }
        } else {
            *l4_check = l4_sum.finish();
        }
    }
    Ok(())
}

/// [`rewrite_xdp`] for IPv6: no header checksum; the L4 checksum covers the
/// addresses through the pseudo header (a later fragment, which has none, gets its
/// addresses alone). `hop`: lower the hop limit. A subprogram of its own (see
/// `flow::Work6`).
#[inline(never)]
pub fn rewrite_xdp6(
    ctx: &XdpContext,
    p: &Packet<Addr6>,
    to: &FlowKey6,
    hop: bool,
) -> Result<(), u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if p.frag == Frag::Later {
        let ip: *mut Ip6Hdr = ptr_at(data, data_end, EthHdr::LEN).ok_or(reason::PASS_MALFORMED)?;
        // SAFETY: bounds-checked just above; the header's fields are bytes.
        unsafe {
            for i in 0..4 {
                (*ip).src[i] = to.saddr_be[i].to_ne_bytes();
                (*ip).dst[i] = to.daddr_be[i].to_ne_bytes();
            }
            if hop {
                (*ip).hop = (*ip).hop.wrapping_sub(1);
            }
        }
        return Ok(());
    }
    // The offsets come back from map memory (`flow::Work6`) with no bounds the
    // verifier knows: masked to what `parse6` gives (an Ethernet header, then the
    // L4 header within the frame's first 16 KiB).
    let l4_off = p.l4_off & 0x3fff;
    let check_off = l4_off + ((p.l4_check_off() - p.l4_off) & 0x1f);
    let ip: *mut Ip6Hdr = ptr_at(data, data_end, EthHdr::LEN).ok_or(reason::PASS_MALFORMED)?;
    let ports: *mut [u16; 2] = ptr_at(data, data_end, l4_off).ok_or(reason::PASS_MALFORMED)?;
    let l4_check: *mut u16 = ptr_at(data, data_end, check_off).ok_or(reason::PASS_MALFORMED)?;
    let from = &p.key;
    // SAFETY: every pointer was bounds-checked against data_end just above, and
    // nothing has changed the packet's size since; the header's fields are bytes.
    unsafe {
        let old_l4 = *l4_check;
        let mut l4_sum = Csum::start(old_l4);
        for i in 0..4 {
            if from.saddr_be[i] != to.saddr_be[i] {
                (*ip).src[i] = to.saddr_be[i].to_ne_bytes();
                l4_sum.replace32(from.saddr_be[i], to.saddr_be[i]);
            }
            if from.daddr_be[i] != to.daddr_be[i] {
                (*ip).dst[i] = to.daddr_be[i].to_ne_bytes();
                l4_sum.replace32(from.daddr_be[i], to.daddr_be[i]);
            }
        }
        if hop {
            (*ip).hop = (*ip).hop.wrapping_sub(1);
        }
        if from.sport_be != to.sport_be {
            (*ports)[0] = to.sport_be;
            l4_sum.replace16(from.sport_be, to.sport_be);
        }
        if from.dport_be != to.dport_be {
            (*ports)[1] = to.dport_be;
            l4_sum.replace16(from.dport_be, to.dport_be);
        }
        // IPv6 UDP always carries a checksum; a computed 0 is sent as 0xffff.
        let sum = l4_sum.finish();
        *l4_check = if from.proto == PROTO_UDP && sum == 0 {
            0xffff
        } else {
            sum
        };
    }
    Ok(())
}

/// [`rewrite_tc`] for IPv6: the addresses' words through the L4 checksum's
/// pseudo-header part (no header checksum), then the ports; a later fragment (no L4
/// header) its addresses alone, the socket buffer's own checksum kept in step;
/// `hop`: lower the hop limit. A subprogram of its own (see `flow::Work6`).
#[inline(never)]
pub fn rewrite_tc6(
    ctx: &TcContext,
    p: &Packet<Addr6>,
    to: &FlowKey6,
    hop: bool,
) -> Result<(), u32> {
    let from = &p.key;
    let err = |_| reason::PASS_MALFORMED;
    if p.frag == Frag::Later {
        // Nothing to keep in step but the socket buffer's own sum of its bytes
        // (CHECKSUM_COMPLETE), which the store recomputes.
        let flags = BPF_F_RECOMPUTE_CSUM as u64;
        if hop {
            ctx.store(p.l3_off + IP6_HOP_OFF, &p.ttl.wrapping_sub(1), flags)
                .map_err(err)?;
        }
        ctx.store(p.l3_off + IP6_SADDR_OFF, &to.saddr_be, flags)
            .map_err(err)?;
        return ctx
            .store(p.l3_off + IP6_DADDR_OFF, &to.daddr_be, flags)
            .map_err(err);
    }
    let l4_check = p.l4_check_off();
    let udp_flag = if from.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    if hop {
        ctx.store(p.l3_off + IP6_HOP_OFF, &p.ttl.wrapping_sub(1), 0)
            .map_err(err)?;
    }
    replace_addr6_tc(
        ctx,
        p.l3_off + IP6_SADDR_OFF,
        l4_check,
        udp_flag,
        &from.saddr_be,
        &to.saddr_be,
    )?;
    // The ports as `rewrite_tc` writes them, written out again: one function for
    // both took the TC program past the verifier's 1,000,000 instructions
    // processed under one configuration (`--to-pods xdp`).
    replace_addr6_tc(
        ctx,
        p.l3_off + IP6_DADDR_OFF,
        l4_check,
        udp_flag,
        &from.daddr_be,
        &to.daddr_be,
    )?;
    replace_port_tc(
        ctx,
        p.l4_off,
        l4_check,
        udp_flag,
        from.sport_be,
        to.sport_be,
    )?;
    replace_port_tc(
        ctx,
        p.l4_off + 2,
        l4_check,
        udp_flag,
        from.dport_be,
        to.dport_be,
    )
}

/// Writes IPv6 address `to` over `from` at `off`, the L4 checksum at `l4_check`
/// updated word by word. Nothing when they are equal.
#[inline(always)]
fn replace_addr6_tc(
    ctx: &TcContext,
    off: usize,
    l4_check: usize,
    udp_flag: u64,
    from: &Addr6,
    to: &Addr6,
) -> Result<(), u32> {
    if from == to {
        return Ok(());
    }
    let err = |_| reason::PASS_MALFORMED;
    ctx.store(off, to, 0).map_err(err)?;
    for i in 0..4 {
        if from[i] != to[i] {
            ctx.l4_csum_replace(
                l4_check,
                from[i] as u64,
                to[i] as u64,
                BPF_F_PSEUDO_HDR as u64 | udp_flag | 4,
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

/// Rewrites a socket buffer from `p.key` to `to` through the kernel's store and
/// checksum helpers, lowering the TTL if `hop` (as `rewrite_xdp`; later fragments
/// likewise get their IPv4 header rewritten only).
#[inline(always)]
pub fn rewrite_tc(ctx: &TcContext, p: &Packet, to: &FlowKey, hop: bool) -> Result<(), u32> {
    let from = &p.key;
    let ip_check = p.l3_off + IP_CHECK_OFF;
    let l4_check = p.l4_check_off();
    let udp_flag = if from.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let err = |_| reason::PASS_MALFORMED;
    if hop {
        let (old, new) = ttl_words(p.ttl, from.proto);
        ctx.store(p.l3_off + IP_TTL_OFF, &p.ttl.wrapping_sub(1), 0)
            .map_err(err)?;
        ctx.l3_csum_replace(ip_check, old as u64, new as u64, 2)
            .map_err(err)?;
    }
    // Later fragments carry no L4 header: only their IPv4 header changes.
    let l4 = (p.frag != Frag::Later).then_some((l4_check, udp_flag));
    replace_addr_tc(
        ctx,
        p.l3_off + IP_SADDR_OFF,
        ip_check,
        l4,
        from.saddr_be,
        to.saddr_be,
    )?;
    replace_addr_tc(
        ctx,
        p.l3_off + IP_DADDR_OFF,
        ip_check,
        l4,
        from.daddr_be,
        to.daddr_be,
    )?;
    if l4.is_none() {
        return Ok(());
    }
    replace_port_tc(
        ctx,
        p.l4_off,
        l4_check,
        udp_flag,
        from.sport_be,
        to.sport_be,
    )?;
    replace_port_tc(
        ctx,
        p.l4_off + 2,
        l4_check,
        udp_flag,
        from.dport_be,
        to.dport_be,
    )
}

/// Writes address `to` over `from` at `off` with the IPv4 checksum at `ip_check`
/// updated and, given `l4` (its checksum's offset and flags), the L4 checksum's
/// pseudo-header part too. Nothing when they are equal.
#[inline(always)]
fn replace_addr_tc(
    ctx: &TcContext,
    off: usize,
    ip_check: usize,
    l4: Option<(usize, u64)>,
    from: u32,
    to: u32,
) -> Result<(), u32> {
    if from == to {
        return Ok(());
    }
    let err = |_| reason::PASS_MALFORMED;
    ctx.store(off, &to, 0).map_err(err)?;
    ctx.l3_csum_replace(ip_check, from as u64, to as u64, 4)
        .map_err(err)?;
    if let Some((l4_check, udp_flag)) = l4 {
        ctx.l4_csum_replace(
            l4_check,
            from as u64,
            to as u64,
            BPF_F_PSEUDO_HDR as u64 | udp_flag | 4,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Writes port `to` over `from` at `off`, the L4 checksum at `l4_check` updated.
/// Nothing when they are equal.
#[inline(always)]
fn replace_port_tc(
    ctx: &TcContext,
    off: usize,
    l4_check: usize,
    udp_flag: u64,
    from: u16,
    to: u16,
) -> Result<(), u32> {
    if from == to {
        return Ok(());
    }
    let err = |_| reason::PASS_MALFORMED;
    ctx.store(off, &to, 0).map_err(err)?;
    ctx.l4_csum_replace(l4_check, from as u64, to as u64, udp_flag | 2)
        .map_err(err)
}

/// Swaps the frame's Ethernet addresses and sends it back out of `ifindex`, the
/// interface it came in on (hairpin: the pod talks to itself through a service).
#[inline(always)]
pub fn send_back_tc(ctx: &TcContext, ifindex: u32) -> Result<i32, u32> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| reason::PASS_MALFORMED)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0)
        .map_err(|_| reason::PASS_MALFORMED)?;
    // SAFETY: a helper taking plain values.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
