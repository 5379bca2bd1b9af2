//! ARP about LoadBalancer addresses, at TC egress of the node's interfaces: sent
//! only while this node holds the address (`LB_ARP_HOLD`). The kernel answers ARP
//! for an announced address (it is on the uplink); if the agent that put it there
//! crashes, freezes or is cut from the lease's API, its hold runs out before any
//! other node may take the address, and from then on this node's ARP about it is
//! dropped here: never two nodes answering for one address.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use lb_common::reason;

use crate::{clock, maps::LB_ARP_HOLD, parse, stats};

/// Size of an IPv4-over-Ethernet ARP packet, for the byte counters.
const ARP_LEN: u16 = 28;

/// TC_ACT_SHOT for ARP whose sender address is a LoadBalancer address this node's
/// hold on ran out; None for every other frame (it goes on through the pipeline).
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Option<i32> {
    let sender = parse::arp_sender(ctx.data(), ctx.data_end())?;
    // SAFETY: a lookup in a map of plain values, read at once.
    let until = unsafe { LB_ARP_HOLD.get(sender) }.copied()?;
    if clock::monotonic_ns() < until {
        return None;
    }
    stats::verdict(reason::DROP_ARP_NOT_HOLDER, ARP_LEN);
    Some(TC_ACT_SHOT)
}
