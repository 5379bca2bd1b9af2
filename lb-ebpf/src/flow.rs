//! What happens to one packet: conntrack state first, then service and backend.
//! Decides only; `nat` carries the decision out.

use lb_common::{CT_DIR_REPLY, CT_F_HAIRPIN, FlowKey, HAIRPIN_SNAT_ADDR, reason};

use crate::{clock, conntrack, lb, parse::Packet};

pub enum Verdict {
    /// Leave the packet as it is; counted under the reason.
    Pass(u32),
    /// A service without endpoints: answer "port unreachable" where the hook can.
    Reject,
    /// Rewrite the packet's tuple to `to`.
    Nat {
        to: FlowKey,
        svc_id: u32,
        backend_id: u32,
        reason: u32,
        /// Send it straight back out the interface it came in on (hairpin).
        back: bool,
    },
}

/// Where a program runs. Ingress hooks (XDP, TC ingress) translate the original
/// direction and start flows; the egress hook translates replies, after the kernel
/// has routed them (a reply rewritten before routing would carry the node's own
/// address as its source and be dropped as a martian). Hairpin flows are the
/// exception: both directions are translated at the pod's ingress and sent back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

#[inline(always)]
pub fn decide(p: &Packet, ifindex: u32, hook: Hook) -> Verdict {
    // At ingress only packets to a frontend (new or established) and hairpin replies
    // are translated; everything else leaves after one array read.
    if hook == Hook::Ingress
        && !lb::frontend_port(p.key.dport_be)
        && p.key.daddr_be != u32::from_ne_bytes(HAIRPIN_SNAT_ADDR)
    {
        return Verdict::Pass(reason::PASS_NO_SERVICE);
    }
    let now = clock::now();
    if let Some(ct) = conntrack::lookup(&p.key, p.tcp_flags, now) {
        let reply = ct.direction == CT_DIR_REPLY;
        let hairpin = ct.flags & CT_F_HAIRPIN != 0;
        let translate = match hook {
            Hook::Ingress => !reply || hairpin,
            Hook::Egress => reply && !hairpin,
        };
        if !translate {
            return Verdict::Pass(match hook {
                Hook::Ingress => reason::PASS_REPLY_INGRESS,
                Hook::Egress => reason::PASS_ORIGINAL_EGRESS,
            });
        }
        return Verdict::Nat {
            to: conntrack::nat_tuple(&ct, p.key.proto),
            svc_id: ct.svc_id,
            backend_id: ct.backend_id,
            reason: if reply {
                reason::NAT_REPLY
            } else {
                reason::NAT_ESTABLISHED
            },
            back: hairpin,
        };
    }
    if hook == Hook::Egress {
        return Verdict::Pass(reason::PASS_NO_SERVICE);
    }
    let sel = match lb::select(&p.key, lb::Origin::Iface(ifindex), now) {
        Ok(sel) => sel,
        Err(reason::PASS_NO_BACKEND) => return Verdict::Reject,
        Err(reason) => return Verdict::Pass(reason),
    };
    match conntrack::create(&p.key, sel.svc_id, &sel.backend, p.tcp_flags, now) {
        Ok((to, hairpin)) => Verdict::Nat {
            to,
            svc_id: sel.svc_id,
            backend_id: sel.backend.backend_id,
            reason: reason::NAT_NEW_FLOW,
            back: hairpin,
        },
        Err(_) => Verdict::Pass(reason::PASS_CT_FULL),
    }
}
