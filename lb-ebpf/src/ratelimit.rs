//! How many ICMP errors lb may send: one token bucket for the node, as the kernel's
//! `icmp_global_allow` (`net.ipv4.icmp_msgs_per_sec` 1000, `icmp_msgs_burst` 50), so a
//! flood to a service without endpoints is never answered one for one. As the
//! kernel, "fragmentation needed" is not limited (path MTU discovery must work).
//! The bucket is shared by every CPU and updated without atomics: racing CPUs may
//! let a few more through, never fewer.

use lb_common::{REJECT_BURST, REJECTS_PER_S, RateBucket};

use crate::{clock, maps::LB_REJECT_RATE};

/// Whether one more ICMP error may go now (takes a token if so).
#[inline(always)]
pub fn allow() -> bool {
    let Some(b) = LB_REJECT_RATE.get_ptr_mut(0) else {
        return false;
    };
    let now = clock::now();
    // SAFETY: the pointer came from a successful lookup of an array slot; a torn
    // update by another CPU at worst misplaces a token.
    let bucket: &mut RateBucket = unsafe { &mut *b };
    let elapsed = now.wrapping_sub(bucket.last);
    let per_s = clock::ticks_per_s();
    // A second or more fills the bucket; below that the product fits in 64 bits.
    let earned = if elapsed >= per_s {
        REJECT_BURST
    } else {
        elapsed * REJECTS_PER_S / per_s
    };
    if earned > 0 {
        let credit = bucket.credit + earned;
        bucket.credit = if credit > REJECT_BURST {
            REJECT_BURST
        } else {
            credit
        };
        bucket.last = now;
    }
    if bucket.credit == 0 {
        return false;
    }
    bucket.credit -= 1;
    true
}
