//! Whether a packet's L4 checksum holds, asked where a corrupted packet would do
//! harm: a FIN or an RST that would end a flow (conntrack acts on them only when it
//! holds, as netfilter with `nf_conntrack_checksum`), and a packet about to be
//! answered "port unreachable" (as netfilter's REJECT, which answers no packet with
//! a bad checksum). Reads only; the hooks hand it a way to copy packet bytes (XDP
//! frames and socket buffers, linear or not).
//!
//! Three answers count as valid: the kernel already verified it (a socket buffer
//! marked CHECKSUM_UNNECESSARY, asked by TC through `bpf_csum_level`); the field
//! holds only the pseudo-header sum (CHECKSUM_PARTIAL: a local or veth sender whose
//! NIC or peer kernel completes it; corruption does not produce that value); or the
//! one's-complement sum of pseudo header and segment is all ones (RFC 1071). A UDP
//! datagram without a checksum (0) is valid; one is summed over the IPv4 payload, so
//! bytes past its UDP length make it count as corrupt.
//! Segments longer than `CHUNK` times the family's `VERIFY_CHUNKS` (16 KiB for
//! IPv4, beyond which only GSO/GRO aggregates come, which the kernel vouches for;
//! 512 bytes for IPv6) and fragments (the checksum covers a datagram no fragment
//! holds whole) are not computed and count as valid.

use aya_ebpf::{
    bindings::BPF_CSUM_LEVEL_QUERY,
    cty::c_void,
    helpers::{bpf_csum_diff, bpf_csum_level, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use lb_common::{PROTO_TCP, SCRATCH_LEN};

use crate::{
    family::Family,
    maps::LB_SCRATCH,
    parse::{Frag, Packet, TCP_CHECK_OFF, UDP_CHECK_OFF},
};

/// Bytes read and summed at a time (`LB_SCRATCH`'s per-CPU buffer); a segment is
/// summed in at most `Family::VERIFY_CHUNKS` of them (16 KiB for IPv4, 512 bytes
/// for IPv6), and a longer one counts as valid.
const CHUNK: usize = SCRATCH_LEN;

/// [`l4_checksum_valid`] for an XDP frame (linear or not).
#[inline(always)]
pub fn xdp<A: Family>(ctx: &XdpContext, p: &Packet<A>) -> bool {
    l4_checksum_valid(p, |off, buf, n| {
        // SAFETY: the helper copies `n` <= CHUNK bytes into the buffer and fails on
        // offsets outside the frame.
        unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf, n as u32) == 0 }
    })
}

/// [`l4_checksum_valid`] for a socket buffer, unless the kernel already
/// verified its checksum (CHECKSUM_UNNECESSARY).
#[inline(always)]
pub fn tc<A: Family>(ctx: &TcContext, p: &Packet<A>) -> bool {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run; the query
    // changes nothing.
    if unsafe { bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_QUERY as u64) } >= 0 {
        return true;
    }
    l4_checksum_valid(p, |off, buf, n| {
        // SAFETY: as for XDP; the helper reads paged data too.
        unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off as u32, buf, n as u32) == 0 }
    })
}

/// [`xdp`] for IPv6, a subprogram of its own (see `flow::Work6`).
#[inline(never)]
pub fn xdp6(ctx: &XdpContext, p: &Packet<lb_common::Addr6>) -> bool {
    xdp(ctx, p)
}

/// [`tc`] for IPv6, a subprogram of its own (see `flow::Work6`).
#[inline(never)]
pub fn tc6(ctx: &TcContext, p: &Packet<lb_common::Addr6>) -> bool {
    tc(ctx, p)
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Whether `p`'s TCP or UDP checksum holds. `load(off, buf, n)` copies `n`
/// (1..=CHUNK) bytes at `off` of the frame to `buf`, false when it cannot.
/// One's-complement sums do not depend on the byte order words are read in, as long
/// as every word is read the same way: the kernel's `bpf_csum_diff` reads them as
/// they lie in memory, and so does the pseudo-header sum here.
#[inline(always)]
pub fn l4_checksum_valid<A: Family>(
    p: &Packet<A>,
    load: impl Fn(usize, *mut c_void, usize) -> bool,
) -> bool {
    if p.frag != Frag::Whole {
        return true;
    }
    let tcp = p.key.proto == PROTO_TCP;
    let l4_len = p.ip_len as usize - (p.l4_off - p.l3_off);
    if l4_len > CHUNK * A::VERIFY_CHUNKS {
        return true;
    }
    let Some(buf) = LB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // The pseudo header: both addresses, the protocol, the L4 length (IPv6 makes
    // the length 32 bits and the protocol's word zero-extended too: the same sum for
    // lengths below 65536).
    let pseudo = p.key.saddr_be.word_sum()
        + p.key.daddr_be.word_sum()
        + u16::from_ne_bytes([0, p.key.proto]) as u64
        + (l4_len as u16).to_be() as u64;
    let mut sum = 0u32;
    let mut field = 0u16;
    for i in 0..A::VERIFY_CHUNKS {
        let off = i * CHUNK;
        if off >= l4_len {
            break;
        }
        let n = l4_len - off;
        let n = if n > CHUNK { CHUNK } else { n };
        // Masked as well as compared, so the verifier sees the bounds the loop
        // guarantees: 1..=CHUNK bytes to read; the last word to zero first, since the
        // odd bytes of the last chunk are summed as if zero-padded to a word (RFC
        // 1071's odd byte, and bpf_csum_diff's multiple of 4).
        // (A volatile read, so the compiler cannot drop the mask it knows changes
        // nothing.)
        // SAFETY: a read of a local.
        let n = unsafe { core::ptr::read_volatile(&n) };
        let n = (n.wrapping_sub(1) & (CHUNK - 1)) + 1;
        let last_word = (n + 3).wrapping_sub(4) & (CHUNK - 4);
        let padded = last_word + 4;
        // SAFETY: the pointer is a per-CPU map value of CHUNK bytes, written below
        // `padded <= CHUNK`; nothing else on this CPU runs meanwhile.
        unsafe {
            *((buf as *mut u8).add(last_word) as *mut u32) = 0;
            if !load(p.l4_off + off, buf as *mut c_void, n) {
                return false;
            }
            if i == 0 {
                let b = buf as *const u8;
                let at = if tcp { TCP_CHECK_OFF } else { UDP_CHECK_OFF };
                field = u16::from_ne_bytes([*b.add(at), *b.add(at + 1)]);
                if !tcp && field == 0 {
                    return true; // UDP without a checksum
                }
            }
            let r = bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                buf as *mut u32,
                padded as u32,
                sum,
            );
            if r < 0 {
                return false;
            }
            sum = r as u32;
        }
    }
    fold(pseudo + sum as u64) == 0xffff || field == fold(pseudo)
}
