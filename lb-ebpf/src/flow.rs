//! What happens to one packet: conntrack state first, then service and backend.
//! Decides only; `nat` carries the decision out.

use lb_common::{
    BE_F_REMOTE, CT_F_HAIRPIN, CT_F_SNAT, CtValue, FlowKey, HAIRPIN_SNAT_ADDR, PROTO_TCP, reason,
};

use crate::{
    clock,
    conntrack::{self, CtState, Snat},
    lb::{self, Select},
    parse::{Frag, Packet, opens_connection},
};

/// Set by the agent at load time (`lb_common::GLOBAL_SNAT_ADDR`): the node address
/// flows to remote backends leave with.
#[unsafe(no_mangle)]
static SNAT_ADDR: u32 = 0;

pub enum Verdict {
    /// Leave the packet as it is; counted under the reason.
    Pass(u32),
    /// Drop it; counted under the reason.
    Drop(u32),
    /// A service without endpoints: answer "port unreachable" where the hook can.
    Reject,
    /// Rewrite the packet's tuple to `to`, then send it on as `forward` says.
    Nat {
        to: FlowKey,
        svc_id: u32,
        backend_id: u32,
        reason: u32,
        forward: Forward,
        /// The flow was created for this packet: if it is not sent on after all,
        /// the hook forgets it (`conntrack::forget`).
        new: bool,
    },
}

/// Where a translated packet goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// On through the kernel's stack, which routes it.
    Stack,
    /// Straight back out the interface it came in on (hairpin, at TC).
    Back,
    /// Out where a FIB lookup says, redirected by the program: packets of SNAT flows,
    /// whose replies carry the node's own address as destination (the stack would
    /// take them for itself) and whose originals may leave at XDP speed.
    Fib,
}

/// Where a program runs. Ingress hooks (XDP, TC ingress) translate the original
/// direction and start flows; the egress hook translates replies, after the kernel
/// has routed them (a reply rewritten before routing would carry the node's own
/// address as its source and be dropped as a martian). Hairpin and SNAT flows are
/// the exceptions: both directions are translated at ingress and redirected.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

/// `closing_valid()`: whether the packet's L4 checksum holds (`verify`), asked only
/// when a FIN or RST would close a live flow.
#[inline(always)]
pub fn decide(
    p: &Packet,
    ifindex: u32,
    hook: Hook,
    closing_valid: impl FnOnce() -> bool,
) -> Verdict {
    // At ingress only packets to a frontend port (new or established flows, and the
    // replies of SNAT flows, whose ports are marked too) and hairpin replies are
    // translated; everything else leaves after one array read.
    if hook == Hook::Ingress
        && !lb::frontend_port(p.key.dport_be)
        && p.key.daddr_be != u32::from_ne_bytes(HAIRPIN_SNAT_ADDR)
    {
        return Verdict::Pass(reason::PASS_NO_SERVICE);
    }
    let now = clock::now();
    match conntrack::lookup(&p.key, p.tcp_flags, now, closing_valid) {
        CtState::New if hook == Hook::Egress => return Verdict::Pass(reason::PASS_NO_SERVICE),
        CtState::New => {}
        // Corrupted on the way: the receiver would drop it too (kube-proxy drops
        // conntrack's INVALID packets).
        CtState::Corrupt => return Verdict::Drop(reason::DROP_BAD_CHECKSUM),
        state => {
            return match translated_at(&state, hook) {
                Some(ct) if matches!(state, CtState::Reply(_)) => {
                    translate(&ct, p, reason::NAT_REPLY)
                }
                Some(ct) => translate(&ct, p, reason::NAT_ESTABLISHED),
                None if hook == Hook::Ingress => Verdict::Pass(reason::PASS_REPLY_INGRESS),
                None => Verdict::Pass(reason::PASS_ORIGINAL_EGRESS),
            };
        }
    }
    // A flow starts with a whole packet or a first fragment, never a later one; a TCP
    // flow with a SYN (a stray ACK, FIN or RST is the kernel's to answer).
    if p.frag == Frag::Later {
        return Verdict::Pass(reason::PASS_FRAGMENT);
    }
    if p.key.proto == PROTO_TCP && !opens_connection(p.tcp_flags) {
        return Verdict::Pass(reason::PASS_TCP_NOT_SYN);
    }
    let (svc_id, backend) = match lb::select(&p.key, lb::Origin::Iface(ifindex), now) {
        Select::Backend { svc_id, backend } => (svc_id, backend),
        Select::NoBackend => return Verdict::Reject,
        Select::NoLocalBackend => return Verdict::Drop(reason::DROP_NO_LOCAL_BACKEND),
        Select::NotServed(reason) => return Verdict::Pass(reason),
    };
    // A local pod that lands on itself is answered from the hairpin address. Clients
    // outside the node reach a remote backend through this node (SNAT), a remote pod
    // landing on itself included; local pods' addresses route between nodes, so
    // theirs stay.
    // SAFETY: a plain read of a global the loader set.
    let node_addr = unsafe { core::ptr::read_volatile(&SNAT_ADDR) };
    let from_pod = lb::from_pod(ifindex);
    let snat = if from_pod && backend.addr_be == p.key.saddr_be {
        Snat::Hairpin
    } else if backend.flags & BE_F_REMOTE != 0 && node_addr != 0 && !from_pod {
        Snat::Node
    } else {
        Snat::None
    };
    match conntrack::create(&p.key, svc_id, &backend, p.tcp_flags, now, snat, node_addr) {
        Ok((to, flags)) => Verdict::Nat {
            to,
            svc_id,
            backend_id: backend.backend_id,
            reason: reason::NAT_NEW_FLOW,
            forward: forward(flags),
            new: true,
        },
        Err(reason) => Verdict::Pass(reason),
    }
}

/// The flow's entry if its packet in `state` is translated at `hook`: originals at
/// ingress; replies at egress, after routing, except those of hairpin and SNAT
/// flows, which ingress translates and redirects. The rule for a flow's packets and
/// for ICMP errors about them (`icmp`).
#[inline(always)]
pub fn translated_at(state: &CtState, hook: Hook) -> Option<CtValue> {
    match (state, hook) {
        (CtState::Established(ct), Hook::Ingress) => Some(*ct),
        (CtState::Reply(ct), Hook::Ingress) if ct.flags & (CT_F_HAIRPIN | CT_F_SNAT) != 0 => {
            Some(*ct)
        }
        (CtState::Reply(ct), Hook::Egress) if ct.flags & (CT_F_HAIRPIN | CT_F_SNAT) == 0 => {
            Some(*ct)
        }
        _ => None,
    }
}

/// The verdict for a packet of a tracked flow: rewritten as its entry says.
#[inline(always)]
fn translate(ct: &CtValue, p: &Packet, reason: u32) -> Verdict {
    Verdict::Nat {
        to: conntrack::nat_tuple(ct, p.key.proto),
        svc_id: ct.svc_id,
        backend_id: ct.backend_id,
        reason,
        forward: forward(ct.flags),
        new: false,
    }
}

/// How a flow's packets leave, from its `CT_F_*` flags.
#[inline(always)]
pub fn forward(ct_flags: u8) -> Forward {
    if ct_flags & CT_F_HAIRPIN != 0 {
        Forward::Back
    } else if ct_flags & CT_F_SNAT != 0 {
        Forward::Fib
    } else {
        Forward::Stack
    }
}
