//! The kernel side's clock: jiffies when the agent told us the kernel's HZ (free to
//! read), the coarse monotonic clock in nanoseconds otherwise. Timestamps in maps
//! are in this clock's ticks; timeouts are given in seconds and scaled here.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

use crate::maps::LB_CLOCK;

/// Set by the agent at load time (`lb_common::GLOBAL_CLOCK_HZ`); read-only data, so
/// the verifier knows it and keeps only one of the branches below.
#[unsafe(no_mangle)]
static CLOCK_HZ: u64 = 0;

const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn hz() -> u64 {
    // SAFETY: a plain read of a global the loader set.
    unsafe { core::ptr::read_volatile(&CLOCK_HZ) }
}

/// Now, in ticks.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helpers with no preconditions.
    unsafe {
        if hz() == 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_jiffies64()
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock the agent reads as well (for deadlines
/// it writes, as `LB_ARP_HOLD`'s).
#[inline(always)]
pub fn monotonic_ns() -> u64 {
    // SAFETY: a helper with no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `secs` seconds, in ticks.
#[inline(always)]
pub fn secs(secs: u64) -> u64 {
    match hz() {
        0 => secs * NS_PER_SEC,
        hz => secs * hz,
    }
}

/// Ticks per second.
#[inline(always)]
pub fn ticks_per_s() -> u64 {
    secs(1)
}

/// Writes now to `LB_CLOCK[0]`, for the agent.
#[inline(always)]
pub fn publish() {
    if let Some(slot) = LB_CLOCK.get_ptr_mut(0) {
        // SAFETY: the pointer came from a successful lookup of an array slot.
        unsafe { *slot = now() };
    }
}
