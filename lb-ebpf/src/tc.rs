//! The TC pipeline, ingress and egress: parse, resolve fragments, decide, rewrite,
//! forward, count, return the action. At ingress on pod interfaces it starts and
//! continues flows from pods (ClusterIP; TC because pod traffic carries partial
//! checksums XDP cannot fix); on external interfaces it hands frames XDP translated
//! to local pods (`deliver`), finishes SNAT flows XDP could not forward, and where
//! no XDP runs (virtual uplinks) serves NodePort and LoadBalancer flows itself. At
//! egress it translates replies back to the service address after the kernel has
//! routed them, and lets ARP and Neighbor Advertisements about a LoadBalancer
//! address out only while this node holds it (`neigh`).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use lb_common::{FlowKeyOf, reason};

use crate::{
    conntrack, deliver,
    flow::{self, Forward, Hook, Verdict},
    frag, fwd, icmp, nat, neigh, parse,
    reject::{self, Answer},
    stats, verify,
};

/// Runs the pipeline of the packet's family on one socket buffer at `hook`; returns
/// the TC action. Each family's pipeline is a function of its own (a BPF
/// subprogram with its own stack frame: inlined together, their keys and entries
/// would not fit one 512-byte frame).
#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> i32 {
    if hook == Hook::Egress
        && let Some(verdict) = neigh::egress(ctx)
    {
        return verdict;
    }
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // A frame XDP translated and marked for a local pod, of either family.
    if hook == Hook::Ingress {
        let verdict = take_marked(ctx);
        if verdict != TC_ACT_UNSPEC {
            return verdict;
        }
    }
    if parse::is_ipv6(ctx.data(), ctx.data_end()) == Some(true) {
        return run6(ctx, ifindex, hook);
    }
    if icmp::is_icmp4(ctx.data(), ctx.data_end())
        && let Some(verdict) = icmp4(ctx, hook, ifindex)
    {
        return verdict;
    }
    run4(ctx, hook)
}

/// An IPv4 ICMP error about a flow: decided, then rewritten and sent, in two
/// subprograms one after the other (see `icmp::Work`); None for ICMP that is no
/// error. A subprogram apart from [`run4`], so that its chain of calls does not
/// carry the IPv4 pipeline's frame (512 bytes of stack for all of a chain's
/// frames).
#[inline(never)]
fn icmp4(ctx: &TcContext, hook: Hook, ifindex: u32) -> Option<i32> {
    let w = icmp::work::<u32>()?;
    match icmp::decide4_into(ctx.data(), ctx.data_end(), hook, w) {
        icmp::Found::Related => Some(related4(ctx, w, ifindex)),
        icmp::Found::Untranslated => {
            stats::verdict(reason::PASS_NOT_L4, w.error.ip_len);
            Some(TC_ACT_UNSPEC)
        }
        icmp::Found::NotError => None,
    }
}

/// [`deliver::take`]: the TC verdict for a frame XDP marked, `TC_ACT_UNSPEC` for
/// any other (it goes on to its family's pipeline). A subprogram of its own, so
/// that its frame is not added to the pipelines' call chains (512 bytes of stack
/// for all of a chain's frames).
#[inline(never)]
fn take_marked(ctx: &TcContext) -> i32 {
    deliver::take(ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// The IPv4 pipeline.
#[inline(never)]
fn run4(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(p) = frag::packet(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return TC_ACT_UNSPEC;
    };
    match flow::decide(&p, ifindex, hook, || verify::tc(ctx, &p)) {
        Verdict::Pass(reason) => stats::verdict(reason, p.ip_len),
        // As netfilter's REJECT: no answer to a packet whose checksum is wrong.
        Verdict::Reject if !verify::tc(ctx, &p) => {
            stats::verdict(reason::DROP_BAD_CHECKSUM, p.ip_len);
            return TC_ACT_SHOT;
        }
        Verdict::Reject => return rejected(reject::port_unreachable(ctx, &p), p.ip_len),
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
            new,
        } => {
            // A flow created for this packet goes again if the packet is not sent on.
            let forget = || {
                if new {
                    conntrack::forget(&p.key, &to);
                }
            };
            // SNAT flows: find the way out first; a packet with none is left alone,
            // one too big for it is answered as a router answers (ICMP
            // "fragmentation needed" with the MTU, for path MTU discovery) or, when
            // it may be fragmented, dropped: its rewritten tuple cannot go to the stack.
            let out = match forward {
                Forward::Fib => fwd::lookup_tc(ctx, &to, ifindex, p.ip_len),
                _ => fwd::TcRoute::NONE,
            };
            if forward == Forward::Fib && out.ifindex == 0 {
                forget();
                if out.mtu == 0 {
                    stats::verdict(reason::PASS_NO_ROUTE, p.ip_len);
                    return TC_ACT_UNSPEC;
                }
                if p.df
                    && let Some(verdict) = reject::frag_needed(ctx, &p, out.mtu)
                {
                    stats::verdict(reason::REJECT_FRAG_NEEDED, p.ip_len);
                    return verdict;
                }
                stats::verdict(reason::DROP_FRAG_NEEDED, p.ip_len);
                return TC_ACT_SHOT;
            }
            // A packet for a local pod may be handed to it here (no XDP before us).
            let peer = match (forward, hook) {
                (Forward::Stack, Hook::Ingress) => {
                    deliver::peer_route(ctx, &to, ifindex, p.ttl, p.ip_len)
                }
                _ => fwd::Route::NONE,
            };
            // Sent on by the program, as by a router: one hop less, none left at 1.
            let hop = forward != Forward::Stack || peer.found();
            if hop && p.ttl <= 1 {
                forget();
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
                        (Forward::Fib, out) => {
                            stats::verdict(reason::FWD_TC_NEIGH, p.ip_len);
                            return fwd::send_tc(out.ifindex);
                        }
                        (Forward::Stack, _) if peer.found() => {
                            if let Some(verdict) = deliver::send_peer(ctx, &peer) {
                                stats::verdict(reason::FWD_TC_PEER, p.ip_len);
                                return verdict;
                            }
                        }
                        _ => {}
                    }
                }
                Err(reason) => {
                    forget();
                    stats::verdict(reason, p.ip_len);
                }
            }
        }
    }
    TC_ACT_UNSPEC
}

/// The pipeline for IPv6: flows from pods (and, where no XDP runs, from outside)
/// start at ingress, replies are translated at egress, as for IPv4; translated
/// packets go on through the kernel's stack, hairpin ones straight back to the pod,
/// SNAT ones out where the FIB says; ICMPv6 errors about a flow are translated with
/// it; a service without endpoints is answered ICMPv6 "port unreachable"; later
/// fragments follow their first's flow; packets for local pods are handed to them
/// (`deliver`) as IPv4's.
#[inline(never)]
fn run6(ctx: &TcContext, ifindex: u32, hook: Hook) -> i32 {
    let len = ctx.len() as usize;
    let Some(w) = flow::work6() else {
        return TC_ACT_UNSPEC;
    };
    let not = frag::packet6_into(ctx.data(), ctx.data_end(), len, &mut w.packet);
    // Neither TCP nor UDP: an ICMPv6 error about a flow is translated as IPv4's
    // ([`related`]), anything else passed. Decided, then rewritten and sent, in two
    // subprograms one after the other (see `icmp::Work`).
    if not == reason::PASS_NOT_L4 {
        if let Some(e) = icmp::work()
            && icmp::decide6_into(ctx.data(), ctx.data_end(), hook, e) == icmp::Found::Related
        {
            return related6(ctx, e, ifindex);
        }
        stats::verdict(reason::PASS_NOT_L4, len as u16);
        return TC_ACT_UNSPEC;
    }
    if not != 0 {
        stats::verdict(not, len as u16);
        return TC_ACT_UNSPEC;
    }
    let p = &w.packet;
    flow::decide6(p, ifindex, hook, || verify::tc6(ctx, p), &mut w.decision);
    let d = &w.decision;
    match d.kind {
        flow::DECIDED_PASS => stats::verdict(d.reason, p.ip_len),
        // As IPv4's: no answer to a packet whose checksum is wrong.
        flow::DECIDED_REJECT if !verify::tc6(ctx, p) => {
            stats::verdict(reason::DROP_BAD_CHECKSUM, p.ip_len);
            return TC_ACT_SHOT;
        }
        flow::DECIDED_REJECT => return rejected(reject::port_unreachable6(ctx, p), p.ip_len),
        flow::DECIDED_DROP => {
            stats::verdict(d.reason, p.ip_len);
            return TC_ACT_SHOT;
        }
        _ => {
            let forget = || {
                if d.new {
                    conntrack::forget6(&p.key, &d.to);
                }
            };
            let forward = d.forward();
            if forward == Forward::Fib {
                // An SNAT flow's packet (to a remote backend, or its reply to the
                // client): out where the FIB sends its translated tuple, as IPv4's.
                let route = fwd::route_tc6(ctx, &d.to, ifindex, p.ip_len);
                let out = fwd::route6_ifindex(route);
                if out == 0 {
                    forget();
                    let mtu = fwd::route6_mtu(route);
                    if mtu == 0 {
                        stats::verdict(reason::PASS_NO_ROUTE, p.ip_len);
                        return TC_ACT_UNSPEC;
                    }
                    // Too big for its way out: answered "packet too big" with the
                    // MTU, as a router does (IPv6 routers never fragment).
                    if let Answer::Sent(verdict) = reject::packet_too_big6(ctx, p, mtu) {
                        stats::verdict(reason::REJECT_FRAG_NEEDED, p.ip_len);
                        return verdict;
                    }
                    stats::verdict(reason::DROP_FRAG_NEEDED, p.ip_len);
                    return TC_ACT_SHOT;
                }
                if p.ttl <= 1 {
                    forget();
                    stats::verdict(reason::DROP_TTL_EXCEEDED, p.ip_len);
                    return TC_ACT_SHOT;
                }
                return match nat::rewrite_tc6(ctx, p, &d.to, true) {
                    Ok(()) => {
                        stats::verdict(d.reason, p.ip_len);
                        stats::verdict(reason::FWD_TC_NEIGH, p.ip_len);
                        stats::service(d.svc_id, d.backend_id, p.ip_len);
                        fwd::send_tc(out)
                    }
                    Err(reason) => {
                        forget();
                        stats::verdict(reason, p.ip_len);
                        TC_ACT_UNSPEC
                    }
                };
            }
            // A packet for a local pod may be handed to it here (no XDP before
            // us), as IPv4's.
            let peer = forward == Forward::Stack
                && hook == Hook::Ingress
                && deliver::may_hand_over(ifindex, p.ttl)
                && {
                    let len = fwd::tc_len(ctx, p.ip_len);
                    fwd::lookup6_full(ctx.as_ptr(), &d.to, ifindex, len, &mut w.route);
                    deliver::is_peer(&w.route)
                };
            let back = forward == Forward::Back;
            let hop = back || peer;
            if back && p.ttl <= 1 {
                forget();
                stats::verdict(reason::DROP_TTL_EXCEEDED, p.ip_len);
                return TC_ACT_SHOT;
            }
            match nat::rewrite_tc6(ctx, p, &d.to, hop) {
                Ok(()) => {
                    stats::verdict(d.reason, p.ip_len);
                    stats::service(d.svc_id, d.backend_id, p.ip_len);
                    if back {
                        match nat::send_back_tc(ctx, ifindex) {
                            Ok(verdict) => return verdict,
                            Err(reason) => stats::verdict(reason, p.ip_len),
                        }
                    } else if peer && let Some(verdict) = deliver::send_peer(ctx, &w.route) {
                        stats::verdict(reason::FWD_TC_PEER, p.ip_len);
                        return verdict;
                    }
                }
                Err(reason) => {
                    forget();
                    stats::verdict(reason, p.ip_len);
                }
            }
        }
    }
    TC_ACT_UNSPEC
}

/// The TC action and count of a "port unreachable" answer to a packet for a
/// service without endpoints: sent, rate-limited (dropped), or not for this packet
/// (passed to the kernel).
#[inline(always)]
fn rejected(answer: Answer, ip_len: u16) -> i32 {
    match answer {
        Answer::Sent(verdict) => {
            stats::verdict(reason::REJECT_NO_BACKEND, ip_len);
            verdict
        }
        Answer::Limited => {
            stats::verdict(reason::DROP_REJECT_LIMITED, ip_len);
            TC_ACT_SHOT
        }
        Answer::Not => {
            stats::verdict(reason::PASS_NO_BACKEND, ip_len);
            TC_ACT_UNSPEC
        }
    }
}

/// [`related`] for an IPv4 ICMP error, decided into `w`.
#[inline(never)]
fn related4(ctx: &TcContext, w: &icmp::Work<u32>, ifindex: u32) -> i32 {
    let ip_len = w.error.ip_len;
    related(ctx, &w.error, &w.related, |to| {
        fwd::lookup_tc(ctx, to, ifindex, ip_len).ifindex
    })
}

/// [`related`] for an ICMPv6 error, decided into `w`.
#[inline(never)]
fn related6(ctx: &TcContext, w: &icmp::Work6, ifindex: u32) -> i32 {
    let ip_len = w.error.ip_len;
    related(ctx, &w.error, &w.related, |to| {
        fwd::route6_ifindex(fwd::route_tc6(ctx, to, ifindex, ip_len))
    })
}

/// An ICMP error about a flow, `r` what it becomes: translated with its flow and
/// sent on as the flow's packets of its direction are (through the stack, or out
/// where the FIB says for SNAT flows: `route`, the egress interface of a tuple, 0
/// for none).
#[inline(always)]
fn related<A: icmp::Quoting>(
    ctx: &TcContext,
    e: &icmp::IcmpError<A>,
    r: &icmp::Related<A>,
    route: impl FnOnce(&FlowKeyOf<A>) -> u32,
) -> i32 {
    let out = match r.forward {
        Forward::Stack => 0,
        Forward::Fib => {
            let to = FlowKeyOf {
                saddr_be: r.saddr_be,
                daddr_be: r.daddr_be,
                sport_be: 0,
                dport_be: 0,
                proto: A::PROTO_ICMP,
                _pad: 0,
                _pad2: 0,
            };
            match route(&to) {
                0 => {
                    stats::verdict(reason::PASS_NO_ROUTE, e.ip_len);
                    return TC_ACT_UNSPEC;
                }
                oif if e.ttl > 1 => oif,
                _ => {
                    stats::verdict(reason::DROP_TTL_EXCEEDED, e.ip_len);
                    return TC_ACT_SHOT;
                }
            }
        }
        // A hairpin flow's errors concern the pod itself: left to the kernel.
        Forward::Back => {
            stats::verdict(reason::PASS_NOT_L4, e.ip_len);
            return TC_ACT_UNSPEC;
        }
    };
    if A::rewrite(ctx.data(), ctx.data_end(), e, r, out != 0).is_none() {
        stats::verdict(reason::PASS_MALFORMED, e.ip_len);
        return TC_ACT_UNSPEC;
    }
    stats::verdict(reason::NAT_RELATED, e.ip_len);
    stats::service(r.svc_id, r.backend_id, e.ip_len);
    if out != 0 {
        stats::verdict(reason::FWD_TC_NEIGH, e.ip_len);
        return fwd::send_tc(out);
    }
    TC_ACT_UNSPEC
}
