//! Answers about LoadBalancer addresses (ARP; IPv6's Neighbor Discovery), at
//! TC egress of the node's interfaces: sent only while this node holds the address
//! (`LB_ARP_HOLD`, `LB_NDP_HOLD`). The kernel answers for an announced address (it
//! is on the uplink); if the agent that put it there crashes, freezes or is cut
//! from the lease's API, its hold runs out before any other node may take the
//! address, and from then on this node's answers about it are dropped here: never
//! two nodes answering for one address.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use lb_common::reason;

use crate::{
    clock,
    maps::{LB_ARP_HOLD, LB_NDP_HOLD},
    parse, stats,
};

/// Size of an IPv4-over-Ethernet ARP packet, for the byte counters.
const ARP_LEN: u16 = 28;
/// Size of a Neighbor Advertisement or Solicitation with its link-layer address
/// option.
const ND_LEN: u16 = 32;

/// TC_ACT_SHOT for ARP whose sender address, or Neighbor Discovery whose claimed
/// address (an advertisement's target, a solicitation's source), is a
/// LoadBalancer address this node's hold on ran out; None for every other frame
/// (it goes on through the pipeline).
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Option<i32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // SAFETY: lookups in maps of plain values, read at once.
    let (until, why, len) = match parse::arp_sender(data, data_end) {
        Some(sender) => (
            unsafe { LB_ARP_HOLD.get(sender) }.copied()?,
            reason::DROP_ARP_NOT_HOLDER,
            ARP_LEN,
        ),
        None => (
            unsafe { LB_NDP_HOLD.get(parse::nd_claim(data, data_end)?) }.copied()?,
            reason::DROP_NDP_NOT_HOLDER,
            ND_LEN,
        ),
    };
    if clock::monotonic_ns() < until {
        return None;
    }
    stats::verdict(why, len);
    Some(TC_ACT_SHOT)
}
