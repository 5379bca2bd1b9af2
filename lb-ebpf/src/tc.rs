//! The TC pipeline, ingress and egress: parse, resolve fragments, decide, rewrite,
//! forward, count, return the action. At ingress on pod interfaces it starts and
//! continues flows from pods (ClusterIP; TC because pod traffic carries partial
//! checksums XDP cannot fix); on external interfaces it hands frames XDP translated
//! to local pods (`deliver`) and finishes SNAT flows XDP could not forward. At
//! egress it translates replies back to the service address after the kernel has
//! routed them.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use lb_common::reason;

use crate::{
    deliver,
    flow::{self, Forward, Hook, Verdict},
    frag, fwd, nat, reject, stats,
};

/// Runs the pipeline on one socket buffer at `hook`; returns the TC action.
#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if hook == Hook::Ingress
        && let Some(verdict) = deliver::take(ctx, ifindex)
    {
        return verdict;
    }
    let Some(p) = frag::packet(ctx.data(), ctx.data_end()) else {
        return TC_ACT_UNSPEC;
    };
    match flow::decide(&p, ifindex, hook) {
        Verdict::Pass(reason) => stats::verdict(reason, p.ip_len),
        Verdict::Reject => match reject::port_unreachable(ctx, &p) {
            Some(verdict) => {
                stats::verdict(reason::REJECT_NO_BACKEND, p.ip_len);
                return verdict;
            }
            None => stats::verdict(reason::PASS_NO_BACKEND, p.ip_len),
        },
        Verdict::Drop(reason) => {
            stats::verdict(reason, p.ip_len);
            return TC_ACT_SHOT;
        }
        Verdict::Nat {
            to,
            svc_id,
            backend_id,
            reason,
            forward,
        } => {
            // SNAT flows: find the way out first; a reply with none is left alone.
            let out = match forward {
                Forward::Fib => fwd::lookup_tc(ctx, &to, ifindex, p.ip_len),
                _ => None,
            };
            if forward == Forward::Fib && out.is_none() {
                stats::verdict(reason::PASS_NO_ROUTE, p.ip_len);
                return TC_ACT_UNSPEC;
            }
            // Sent on by the program, as by a router: one hop less, none left at 1.
            let hop = forward != Forward::Stack;
            if hop && p.ttl <= 1 {
                stats::verdict(reason::DROP_TTL_EXCEEDED, p.ip_len);
                return TC_ACT_SHOT;
            }
            match nat::rewrite_tc(ctx, &p, &to, hop) {
                Ok(()) => {
                    stats::verdict(reason, p.ip_len);
                    stats::service(svc_id, backend_id, p.ip_len);
                    match (forward, out) {
                        (Forward::Back, _) => match nat::send_back_tc(ctx, ifindex) {
                            Ok(verdict) => return verdict,
                            Err(reason) => stats::verdict(reason, p.ip_len),
                        },
                        (Forward::Fib, Some(oif)) => {
                            stats::verdict(reason::FWD_TC_NEIGH, p.ip_len);
                            return fwd::send_tc(oif);
                        }
                        _ => {}
                    }
                }
                Err(reason) => stats::verdict(reason, p.ip_len),
            }
        }
    }
    TC_ACT_UNSPEC
}
