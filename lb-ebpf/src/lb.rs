//! Service lookup and backend selection. Reads maps (and remembers affinity choices),
//! never writes the packet.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, FlowKey, IFACE_POD, SVC_F_AFFINITY,
    SVC_F_EXTERNAL_LOCAL, SVC_F_INTERNAL, ServiceKey, ServiceValue, port_bit, reason,
};

use crate::clock;
use crate::maps::{LB_AFFINITY, LB_BACKENDS, LB_IFACES, LB_PORTS, LB_SERVICES};

/// Whether some frontend listens on this port (network byte order): one array read,
/// so traffic for no service leaves after it.
#[inline(always)]
pub fn frontend_port(port_be: u16) -> bool {
    let (word, bit) = port_bit(u16::from_be(port_be));
    LB_PORTS.get(word).is_some_and(|w| *w & bit != 0)
}

/// Where a new flow comes from, for frontends only served inside the cluster.
#[derive(Clone, Copy)]
pub enum Origin {
    /// A packet that entered through this interface.
    Iface(u32),
    /// A socket of one of the node's own processes.
    Host,
}

/// What a new flow to this packet's destination gets.
pub enum Select {
    /// A backend of service port `svc_id`.
    Backend { svc_id: u32, backend: Backend },
    /// Not a frontend, or one this origin may not use, or a slot not there: the
    /// packet is not ours (counted under the reason, a `lb_common::reason`).
    NotServed(u32),
    /// A frontend without endpoints: answer as kube-proxy's REJECT does.
    NoBackend,
    /// `externalTrafficPolicy: Local` and no endpoint on this node: drop.
    NoLocalBackend,
}

/// The frontend this packet is addressed to and the backend a new flow goes to.
#[inline(always)]
pub fn select(key: &FlowKey, origin: Origin, now: u64) -> Select {
    let frontend = ServiceKey {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: service values are only replaced whole by the agent; a copy is taken.
    let Some(svc) = unsafe { LB_SERVICES.get(frontend) }.copied() else {
        return Select::NotServed(reason::PASS_NO_SERVICE);
    };
    let inside = match origin {
        Origin::Host => true,
        Origin::Iface(ifindex) => svc.flags & SVC_F_INTERNAL == 0 || from_pod(ifindex),
    };
    if !inside {
        return Select::NotServed(reason::PASS_INTERNAL_ONLY);
    }
    if svc.backend_count == 0 {
        return if svc.flags & SVC_F_EXTERNAL_LOCAL != 0 {
            Select::NoLocalBackend
        } else {
            Select::NoBackend
        };
    }
    let backend = if svc.flags & SVC_F_AFFINITY != 0 {
        sticky(key.saddr_be, &svc, now)
    } else {
        random(&svc).map(|(_, b)| b)
    };
    match backend {
        Some(backend) => Select::Backend {
            svc_id: svc.svc_id,
            backend,
        },
        None => Select::NotServed(reason::PASS_NO_SLOT),
    }
}

/// A slot chosen uniformly at random, and its backend (None: the slot is not
/// there, the agent is rewriting the service).
#[inline(always)]
fn random(svc: &ServiceValue) -> Option<(u32, Backend)> {
    // SAFETY: a helper with no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.backend_count;
    Some((slot, slot_backend(svc.svc_id, slot)?))
}

#[inline(always)]
fn slot_backend(svc_id: u32, slot: u32) -> Option<Backend> {
    // SAFETY: backend values are only replaced whole by the agent; a copy is taken.
    unsafe { LB_BACKENDS.get(BackendKey { svc_id, slot }) }.copied()
}

/// ClientIP affinity: the backend this client's last new flow went to, if that was
/// within the timeout and its slot still holds it; otherwise a random one, remembered.
#[inline(always)]
fn sticky(client: u32, svc: &ServiceValue, now: u64) -> Option<Backend> {
    let key = AffinityKey {
        client_addr_be: client,
        svc_id: svc.svc_id,
    };
    let timeout = clock::secs(svc.affinity_timeout_s as u64);
    if let Some(a) = LB_AFFINITY.get_ptr_mut(key) {
        // SAFETY: the pointer came from a successful lookup; the entry is plain data.
        let a = unsafe { &mut *a };
        if now.wrapping_sub(a.last_used) <= timeout
            && a.slot < svc.backend_count
            && let Some(b) = slot_backend(svc.svc_id, a.slot)
            && b.backend_id == a.backend_id
        {
            a.last_used = now;
            return Some(b);
        }
    }
    let (slot, backend) = random(svc)?;
    let remembered = AffinityValue {
        last_used: now,
        slot,
        backend_id: backend.backend_id,
    };
    // A full map only costs stickiness, never the flow.
    let _ = LB_AFFINITY.insert(key, remembered, 0);
    Some(backend)
}

/// Whether the packet entered through an interface behind which pods live.
#[inline(always)]
pub fn from_pod(ifindex: u32) -> bool {
    iface_role(ifindex) & IFACE_POD != 0
}

/// The interface's role and flags (`IFACE_*`), 0 for one lb is not attached to.
#[inline(always)]
pub fn iface_role(ifindex: u32) -> u32 {
    // SAFETY: as above.
    unsafe { LB_IFACES.get(ifindex) }.map_or(0, |v| v.role)
}
