//! How many ICMP errors lb may send, as the kernel limits its own: one token bucket
//! for the node (`icmp_global_allow`: `net.ipv4.icmp_msgs_per_sec` 1000,
//! `icmp_msgs_burst` 50) and one per client (`icmpv4_xrlim_allow`:
//! `net.ipv4.icmp_ratelimit` one a second, a burst of 6), so a flood to a service
//! without endpoints is never answered one for one, and no client gets more than
//! its share. As the kernel, "fragmentation needed" is not limited (path MTU
//! discovery must work). The buckets are updated without atomics: racing CPUs may
//! let a few more through, never fewer.

use lb_common::{
    REJECT_BURST, REJECT_PEER_BURST, REJECTS_PER_PEER_PER_S, REJECTS_PER_S, RateBucket,
};

use crate::{
    clock,
    maps::{LB_REJECT_PEERS, LB_REJECT_RATE},
};

/// Whether one more ICMP error to `client_be` may go now (takes a token from both
/// buckets if so).
#[inline(always)]
pub fn allow(client_be: u32) -> bool {
    let now = clock::now();
    let Some(node) = LB_REJECT_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the pointer came from a successful lookup of an array slot; a torn
    // update by another CPU at worst misplaces a token.
    let node = unsafe { &mut *node };
    fill(node, now, REJECTS_PER_S, REJECT_BURST);
    if node.credit == 0 {
        return false;
    }
    let Some(peer) = LB_REJECT_PEERS.get_ptr_mut(client_be) else {
        // A client not heard of (or evicted) starts with a full bucket, less this
        // answer's token.
        let taken = RateBucket {
            credit: REJECT_PEER_BURST - 1,
            last: now,
        };
        if LB_REJECT_PEERS.insert(client_be, taken, 0).is_err() {
            return false;
        }
        node.credit -= 1;
        return true;
    };
    // SAFETY: as above, for an LRU entry.
    let peer = unsafe { &mut *peer };
    fill(peer, now, REJECTS_PER_PEER_PER_S, REJECT_PEER_BURST);
    if peer.credit == 0 {
        return false;
    }
    peer.credit -= 1;
    node.credit -= 1;
    true
}

/// Adds the tokens earned since the bucket was last filled, `per_s` a second, up
/// to `burst`.
#[inline(always)]
fn fill(bucket: &mut RateBucket, now: u64, per_s: u64, burst: u64) {
    let elapsed = now.wrapping_sub(bucket.last);
    let tick = clock::ticks_per_s();
    // Long enough to fill the bucket whole: full (and no product that could
    // overflow); shorter, what was earned, the partial token kept in `last`.
    let full = burst * tick / per_s;
    if elapsed >= full {
        bucket.credit = burst;
        bucket.last = now;
        return;
    }
    let earned = elapsed * per_s / tick;
    if earned > 0 {
        let credit = bucket.credit + earned;
        bucket.credit = if credit > burst { burst } else { credit };
        bucket.last += earned * tick / per_s;
    }
}
