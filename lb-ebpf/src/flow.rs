//! What happens to one packet: conntrack state first, then service and backend.
//! Decides only; `nat` carries the decision out.

use core::mem::size_of;

use lb_common::{
    Addr6, BE_F_REMOTE, CT_F_HAIRPIN, CT_F_SNAT, CtValueOf, FlowKeyOf, PROTO_TCP, reason,
};

use crate::{
    clock,
    conntrack::{self, Created, CtState, Snat},
    family::Family,
    fwd::Route,
    lb::{self, Select},
    maps::{LB6_WORK, WORK6_FLOW, WORK6_LEN},
    parse::{Frag, Packet, TCP_FIN, TCP_RST, opens_connection},
};

pub enum Verdict<A = u32> {
    /// Leave the packet as it is; counted under the reason.
    Pass(u32),
    /// Drop it; counted under the reason.
    Drop(u32),
    /// A service without endpoints: answer "port unreachable" where the hook can.
    Reject,
    /// Rewrite the packet's tuple to `to`, then send it on as `forward` says.
    Nat {
        to: FlowKeyOf<A>,
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
#[repr(u8)]
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
pub fn decide<A: Family>(
    p: &Packet<A>,
    ifindex: u32,
    hook: Hook,
    closing_valid: impl FnOnce() -> bool + Copy,
) -> Verdict<A> {
    let now = clock::now();
    match tracked(p, hook, now, closing_valid) {
        Some(verdict) => verdict,
        None => new_flow(p, ifindex, now, closing_valid),
    }
}

/// The first half of [`decide`]: the verdict for a packet that is not service
/// traffic or belongs to a tracked flow; None for a packet that may start one.
#[inline(always)]
fn tracked<A: Family>(
    p: &Packet<A>,
    hook: Hook,
    now: u64,
    closing_valid: impl FnOnce() -> bool,
) -> Option<Verdict<A>> {
    // At ingress only packets to a frontend port (new or established flows, and the
    // replies of SNAT flows, whose ports are marked too) and hairpin replies are
    // translated; everything else leaves after one array read.
    if hook == Hook::Ingress && !lb::frontend_port(p.key.dport_be) && p.key.daddr_be != A::HAIRPIN {
        return Some(Verdict::Pass(reason::PASS_NO_SERVICE));
    }
    let verdict = match conntrack::lookup(&p.key, p.tcp_flags, now, closing_valid) {
        CtState::New if hook == Hook::Egress => Verdict::Pass(reason::PASS_NO_SERVICE),
        CtState::New => return None,
        // Corrupted on the way: the receiver would drop it too (kube-proxy drops
        // conntrack's INVALID packets).
        CtState::Corrupt => Verdict::Drop(reason::DROP_BAD_CHECKSUM),
        state => match translated_at(&state, hook) {
            Some(ct) if matches!(state, CtState::Reply(_)) => translate(&ct, p, reason::NAT_REPLY),
            Some(ct) => translate(&ct, p, reason::NAT_ESTABLISHED),
            None if hook == Hook::Ingress => Verdict::Pass(reason::PASS_REPLY_INGRESS),
            None => Verdict::Pass(reason::PASS_ORIGINAL_EGRESS),
        },
    };
    Some(verdict)
}

/// The second half of [`decide`]: a packet that may start a flow gets a backend
/// and its conntrack entries, or the reason it does not. A later packet of a flow
/// written with its reply entry alone (`conntrack`'s notes) comes here too, picks
/// the same backend and continues the flow (`closing_valid` as for [`decide`]).
#[inline(always)]
fn new_flow<A: Family>(
    p: &Packet<A>,
    ifindex: u32,
    now: u64,
    closing_valid: impl FnOnce() -> bool,
) -> Verdict<A> {
    // A flow starts with a whole packet or a first fragment, never a later one; a TCP
    // flow with a SYN (a stray ACK, FIN or RST is the kernel's to answer). Those may
    // only continue a flow lb has not seen answered yet.
    let refused = if p.frag == Frag::Later {
        Some(reason::PASS_FRAGMENT)
    } else if p.key.proto == PROTO_TCP && !opens_connection(p.tcp_flags) {
        Some(reason::PASS_TCP_NOT_SYN)
    } else {
        None
    };
    let selected = lb::select(&p.key, lb::Origin::Iface(ifindex), now, refused.is_none());
    let (svc_id, backend) = match selected {
        Select::Backend { svc_id, backend } => (svc_id, backend),
        _ if let Some(reason) = refused => return Verdict::Pass(reason),
        Select::NoBackend => return Verdict::Reject,
        Select::NoLocalBackend => return Verdict::Drop(reason::DROP_NO_LOCAL_BACKEND),
        Select::NotServed(reason) => return Verdict::Pass(reason),
    };
    // A local pod that lands on itself is answered from the hairpin address. Clients
    // outside the node reach a remote backend through this node (SNAT), a remote pod
    // landing on itself included; local pods' addresses route between nodes, so
    // theirs stay.
    let node_addr = A::snat_addr();
    let from_pod = lb::from_pod(ifindex);
    let snat = if from_pod && backend.addr_be == p.key.saddr_be {
        Snat::Hairpin
    } else if backend.flags & BE_F_REMOTE != 0 && node_addr != A::default() && !from_pod {
        Snat::Node
    } else {
        Snat::None
    };
    let how = conntrack::Start {
        snat,
        node_addr,
        refused,
    };
    let created = conntrack::create(
        &p.key,
        svc_id,
        &backend,
        p.tcp_flags,
        now,
        how,
        closing_valid,
    );
    let (to, flags, reason) = match created {
        Ok((to, flags, Created::New)) => (to, flags, reason::NAT_NEW_FLOW),
        Ok((to, flags, Created::Continued)) => (to, flags, reason::NAT_ESTABLISHED),
        Ok((_, _, Created::Corrupt)) => return Verdict::Drop(reason::DROP_BAD_CHECKSUM),
        Err(reason) => return Verdict::Pass(reason),
    };
    Verdict::Nat {
        to,
        svc_id,
        backend_id: backend.backend_id,
        reason,
        forward: forward(flags),
        new: reason == reason::NAT_NEW_FLOW,
    }
}

/// An IPv6 packet's parse and verdict, kept between the pipeline's steps in per-CPU
/// map memory (`maps::LB6_WORK`), not on the stack: the verifier allows 512 bytes
/// of stack for a whole call chain, and IPv6's keys and entries (2.5 times
/// IPv4's) leave no room for copies of them there.
pub struct Work6 {
    pub packet: Packet<Addr6>,
    pub decision: Decision6,
    /// The way a translated packet leaves, when the program sends it itself
    /// (`fwd::lookup6_full`).
    pub route: Route,
}

/// A [`Verdict`] as plain fields, every one written each time: an enum written to
/// memory leaves the bytes its variant does not use undefined, which the verifier
/// refuses to see stored.
#[repr(C)]
pub struct Decision6 {
    pub to: FlowKeyOf<Addr6>,
    pub svc_id: u32,
    pub backend_id: u32,
    /// The `reason` of `Pass`, `Drop` and `Nat`.
    pub reason: u32,
    /// `DECIDED_*`.
    pub kind: u8,
    /// [`Forward`] as a number (`Nat`).
    pub forward: u8,
    pub new: bool,
    pub _pad: u8,
}

pub const DECIDED_PASS: u8 = 0;
pub const DECIDED_DROP: u8 = 1;
pub const DECIDED_REJECT: u8 = 2;
pub const DECIDED_NAT: u8 = 3;

impl Decision6 {
    #[inline(always)]
    fn set(&mut self, v: Verdict<Addr6>) {
        // Every field but `to` from a value on every path (no field left to
        // whatever a register held).
        let (kind, reason, svc_id, backend_id, forward, new) = match v {
            Verdict::Pass(r) => (DECIDED_PASS, r, 0, 0, 0, false),
            Verdict::Drop(r) => (DECIDED_DROP, r, 0, 0, 0, false),
            Verdict::Reject => (DECIDED_REJECT, 0, 0, 0, 0, false),
            Verdict::Nat {
                to,
                svc_id,
                backend_id,
                reason,
                forward,
                new,
            } => {
                self.to = to;
                (DECIDED_NAT, reason, svc_id, backend_id, forward as u8, new)
            }
        };
        self.kind = kind;
        self.reason = reason;
        self.svc_id = svc_id;
        self.backend_id = backend_id;
        self.forward = forward;
        self.new = new;
    }

    /// How a `Nat` decision's packet leaves.
    #[inline(always)]
    pub fn forward(&self) -> Forward {
        match self.forward {
            f if f == Forward::Back as u8 => Forward::Back,
            f if f == Forward::Fib as u8 => Forward::Fib,
            _ => Forward::Stack,
        }
    }
}

const _: () = assert!(size_of::<Work6>() <= WORK6_LEN);

/// This CPU's [`Work6`] (map memory, 8-byte aligned, as long as a `Work6`).
#[inline(always)]
pub fn work6() -> Option<&'static mut Work6> {
    let w = LB6_WORK.get_ptr_mut(WORK6_FLOW)?;
    // SAFETY: a per-CPU map value of WORK6_LEN >= size_of::<Work6>() bytes, aligned
    // to 8 (as every map value); only this CPU's program touches it while it runs,
    // and every field is written before it is read.
    Some(unsafe { &mut *(w as *mut Work6) })
}

/// [`decide`] for IPv6, its verdict written to `out` (map memory, see [`Work6`]),
/// in subprograms called one after the other, each with a stack frame of its own:
/// together their frames would not fit one.
#[inline(always)]
pub fn decide6(
    p: &Packet<Addr6>,
    ifindex: u32,
    hook: Hook,
    closing_valid: impl FnOnce() -> bool,
    out: &mut Decision6,
) {
    let now = clock::now();
    // Asked before the lookup for every FIN or RST (not only those that would close
    // a live flow, as for IPv4): inside the lookup, its stack frame would not fit
    // the lookup's call chain.
    let closing = p.key.proto == PROTO_TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let valid = !closing || closing_valid();
    if tracked6(p, hook, now, valid, out) {
        return;
    }
    new_flow6(p, ifindex, now, valid, out);
}

/// [`tracked`] for IPv6, with the answer [`decide6`] found to "does this closing
/// packet's checksum hold?"; false when the packet may start a flow.
#[inline(never)]
fn tracked6(p: &Packet<Addr6>, hook: Hook, now: u64, valid: bool, out: &mut Decision6) -> bool {
    match tracked(p, hook, now, || valid) {
        Some(verdict) => {
            out.set(verdict);
            true
        }
        None => false,
    }
}

/// [`new_flow`] for IPv6, with [`decide6`]'s answer to "does this closing packet's
/// checksum hold?".
#[inline(never)]
fn new_flow6(p: &Packet<Addr6>, ifindex: u32, now: u64, valid: bool, out: &mut Decision6) {
    out.set(new_flow(p, ifindex, now, || valid));
}

/// The flow's entry if its packet in `state` is translated at `hook`: originals at
/// ingress; replies at egress, after routing, except those of hairpin and SNAT
/// flows, which ingress translates and redirects. The rule for a flow's packets and
/// for ICMP errors about them (`icmp`).
#[inline(always)]
pub fn translated_at<A: Family>(state: &CtState<A>, hook: Hook) -> Option<CtValueOf<A>> {
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
fn translate<A: Family>(ct: &CtValueOf<A>, p: &Packet<A>, reason: u32) -> Verdict<A> {
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
