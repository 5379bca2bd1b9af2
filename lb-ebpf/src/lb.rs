//! Service lookup and backend selection. Reads maps (and remembers affinity choices),
//! never writes the packet.

use lb_common::{
    AffinityKeyOf, AffinityValue, BackendKey, BackendOf, FlowKeyOf, ID_NONE, IFACE_POD,
    SVC_F_AFFINITY, SVC_F_EXTERNAL_LOCAL, SVC_F_INTERNAL, ServiceKeyOf, ServiceValue, flow_slot,
    port_bit, reason,
};

use crate::{
    clock,
    family::Family,
    maps::{LB_IFACES, LB_PORTS},
};

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
pub enum Select<A> {
    /// A backend of service port `svc_id`.
    Backend { svc_id: u32, backend: BackendOf<A> },
    /// Not a frontend, or one this origin may not use, or a slot not there: the
    /// packet is not ours (counted under the reason, a `lb_common::reason`).
    NotServed(u32),
    /// A frontend without endpoints: answer as kube-proxy's REJECT does.
    NoBackend,
    /// `externalTrafficPolicy: Local` and no endpoint on this node: drop.
    NoLocalBackend,
}

/// The frontend this packet is addressed to and the backend a new flow goes to.
/// `starts`: whether the packet may start a flow (a ClientIP affinity choice is
/// remembered only then).
#[inline(always)]
pub fn select<A: Family>(key: &FlowKeyOf<A>, origin: Origin, now: u64, starts: bool) -> Select<A> {
    let frontend = ServiceKeyOf {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: service values are only replaced whole by the agent; a copy is taken.
    let Some(svc) = unsafe { A::services().get(frontend) }.copied() else {
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
        sticky(key, &svc, now, starts)
    } else {
        hashed(key, &svc).1
    };
    if backend.backend_id == ID_NONE {
        return Select::NotServed(reason::PASS_NO_SLOT);
    }
    Select::Backend {
        svc_id: svc.svc_id,
        backend,
    }
}

/// The slot the flow's tuple hashes to (uniform over the slots, the same for every
/// packet of the flow while the slots stay: `lb_common::flow_slot`), and its
/// backend (`backend_id` `ID_NONE`: the slot is not there, the agent is rewriting
/// the service). No `Option`: a backend with every field defined on every path, so
/// no code merging the paths ever keeps an undefined register the verifier refuses.
#[inline(always)]
fn hashed<A: Family>(key: &FlowKeyOf<A>, svc: &ServiceValue) -> (u32, BackendOf<A>) {
    let addrs = A::fold(key.saddr_be, key.daddr_be);
    let slot = flow_slot(
        addrs,
        key.sport_be,
        key.dport_be,
        key.proto,
        svc.backend_count,
    );
    (slot, slot_backend(svc.svc_id, slot))
}

/// The backend in `slot` of service port `svc_id` (`backend_id` `ID_NONE`: none).
#[inline(always)]
fn slot_backend<A: Family>(svc_id: u32, slot: u32) -> BackendOf<A> {
    // SAFETY: backend values are only replaced whole by the agent; a copy is taken.
    unsafe { A::backends().get(BackendKey { svc_id, slot }) }
        .copied()
        .unwrap_or_default()
}

/// ClientIP affinity: the backend this client's last new flow went to, if that was
/// within the timeout and its slot still holds it; otherwise the flow's hashed one.
/// `remember`: a new flow, which renews or writes the client's choice (a packet that
/// may only continue a flow changes nothing).
#[inline(always)]
fn sticky<A: Family>(
    flow: &FlowKeyOf<A>,
    svc: &ServiceValue,
    now: u64,
    remember: bool,
) -> BackendOf<A> {
    let key = AffinityKeyOf {
        client_addr_be: flow.saddr_be,
        svc_id: svc.svc_id,
    };
    let timeout = clock::secs(svc.affinity_timeout_s as u64);
    if let Some(a) = A::affinity().get_ptr_mut(key) {
        // SAFETY: the pointer came from a successful lookup; the entry is plain data.
        let a = unsafe { &mut *a };
        if now.wrapping_sub(a.last_used) <= timeout && a.slot < svc.backend_count {
            let b = slot_backend(svc.svc_id, a.slot);
            if b.backend_id != ID_NONE && b.backend_id == a.backend_id {
                if remember {
                    a.last_used = now;
                }
                return b;
            }
        }
    }
    let (slot, backend) = hashed(flow, svc);
    if backend.backend_id == ID_NONE || !remember {
        return backend;
    }
    let remembered = AffinityValue {
        last_used: now,
        slot,
        backend_id: backend.backend_id,
    };
    // A full map only costs stickiness, never the flow.
    let _ = A::affinity().insert(key, remembered, 0);
    backend
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
