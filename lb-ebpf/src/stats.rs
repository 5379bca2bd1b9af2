//! Per-CPU counters: every verdict by reason, and packets/bytes per service port
//! and per backend.

use aya_ebpf::maps::PerCpuArray;
use lb_common::Counters;

use crate::maps::{LB_BE_STATS, LB_STATS, LB_SVC_STATS};

#[inline(always)]
fn add(map: &PerCpuArray<Counters>, index: u32, bytes: u16) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and the pointer came
        // from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

/// Counts one packet under `reason` (a `lb_common::reason` constant).
#[inline(always)]
pub fn verdict(reason: u32, bytes: u16) {
    add(&LB_STATS, reason, bytes);
}

/// Counts one translated packet for its service port and backend.
#[inline(always)]
pub fn service(svc_id: u32, backend_id: u32, bytes: u16) {
    add(&LB_SVC_STATS, svc_id, bytes);
    add(&LB_BE_STATS, backend_id, bytes);
}
