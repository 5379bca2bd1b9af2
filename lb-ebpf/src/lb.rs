//! Service lookup and backend selection. Reads maps, never writes the packet.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, BackendKey, FlowKey, IFACE_POD, SVC_F_INTERNAL, ServiceKey, reason};

use crate::maps::{LB_BACKENDS, LB_IFACES, LB_SERVICES};

pub struct Selection {
    pub svc_id: u32,
    pub backend: Backend,
}

/// The frontend this packet is addressed to and the backend a new flow goes to, or
/// the reason (a `lb_common::reason`) there is none.
#[inline(always)]
pub fn select(key: &FlowKey, ifindex: u32) -> Result<Selection, u32> {
    let frontend = ServiceKey {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: service values are only replaced whole by the agent; a copy is taken.
    let svc = unsafe { LB_SERVICES.get(&frontend) }
        .copied()
        .ok_or(reason::PASS_NO_SERVICE)?;
    if svc.flags & SVC_F_INTERNAL != 0 && !from_pod(ifindex) {
        return Err(reason::PASS_INTERNAL_ONLY);
    }
    if svc.backend_count == 0 {
        return Err(reason::PASS_NO_BACKEND);
    }
    // SAFETY: a helper with no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.backend_count;
    let slot_key = BackendKey {
        svc_id: svc.svc_id,
        slot,
    };
    // SAFETY: as above.
    let backend = unsafe { LB_BACKENDS.get(&slot_key) }
        .copied()
        .ok_or(reason::PASS_NO_SLOT)?;
    Ok(Selection {
        svc_id: svc.svc_id,
        backend,
    })
}

/// Whether the packet entered through an interface behind which pods live.
#[inline(always)]
fn from_pod(ifindex: u32) -> bool {
    // SAFETY: as above.
    matches!(unsafe { LB_IFACES.get(&ifindex) }, Some(v) if v.role == IFACE_POD)
}
