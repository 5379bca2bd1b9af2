//! The XDP pipeline of external interfaces: parse, resolve fragments, decide,
//! choose the way out, rewrite, count, return the action. Starts and continues
//! flows to NodePort and LoadBalancer frontends arriving from outside the node.

use aya_ebpf::{EbpfContext as _, bindings::xdp_action, programs::XdpContext};
use lb_common::{IFACE_F_PEER, IFACE_F_XDP_XMIT, IFACE_POD, TO_PODS_PEER, TO_PODS_XDP, reason};

use crate::{
    conntrack, deliver,
    flow::{self, Forward, Hook, Verdict},
    frag,
    fwd::{self, Route},
    icmp, nat, parse, stats, verify,
};

/// Runs the pipeline of the frame's family; returns the XDP action. Each family's
/// pipeline is a function of its own (see `tc::run`).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    if parse::is_ipv6(ctx.data(), ctx.data_end()) == Some(true) {
        return run6(ctx);
    }
    if icmp::is_icmp4(ctx.data(), ctx.data_end())
        && let Some(action) = icmp4(ctx)
    {
        return action;
    }
    run4(ctx)
}

/// An IPv4 ICMP error about a flow: decided, then rewritten, in two subprograms
/// one after the other (see `icmp::Work`); None for ICMP that is no error. A
/// subprogram apart from [`run4`], so that its chain of calls does not carry the
/// IPv4 pipeline's frame (512 bytes of stack for all of a chain's frames).
#[inline(never)]
fn icmp4(ctx: &XdpContext) -> Option<u32> {
    let w = icmp::work::<u32>()?;
    match icmp::decide4_into(ctx.data(), ctx.data_end(), Hook::Ingress, w) {
        icmp::Found::Related => Some(related4(ctx, w)),
        icmp::Found::Untranslated => {
            stats::verdict(reason::PASS_NOT_L4, w.error.ip_len);
            Some(xdp_action::XDP_PASS)
        }
        icmp::Found::NotError => None,
    }
}

/// The IPv4 pipeline.
#[inline(never)]
fn run4(ctx: &XdpContext) -> u32 {
    let Some(p) = frag::packet(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) else {
        return xdp_action::XDP_PASS;
    };
    let ingress = ctx.ingress_ifindex() as u32;
    match flow::decide(&p, ingress, Hook::Ingress, || verify::xdp(ctx, &p)) {
        Verdict::Pass(reason) => stats::verdict(reason, p.ip_len),
        Verdict::Drop(reason) => {
            stats::verdict(reason, p.ip_len);
            return xdp_action::XDP_DROP;
        }
        // NodePorts live on the node's own addresses: its kernel answers (RST, ICMP).
        Verdict::Reject => stats::verdict(reason::PASS_NO_BACKEND, p.ip_len),
        Verdict::Nat {
            to,
            svc_id,
            backend_id,
            reason,
            forward,
            new,
        } => {
            let way = way_out(ctx, p.ttl, forward, || {
                fwd::lookup_xdp(ctx, &to, ingress, p.ip_len)
            });
            // SNAT flows cannot go through the stack once rewritten: their packets
            // carry the node's own address (as source, or as the reply's former
            // destination), which it would drop as a martian. Without a way out here
            // (no full FIB answer, or an interface that takes no XDP frames) they go
            // on untouched, and TC ingress, whose bpf_redirect_neigh resolves the
            // neighbour and takes any interface, finishes them.
            // A flow created here is forgotten: TC starts it anew. So do packets for
            // a local pod XDP cannot mark for TC (`Way::to_tc`).
            if (forward == Forward::Fib && !way.route.found()) || way.to_tc {
                if new {
                    conntrack::forget(&p.key, &to);
                }
                stats::verdict(reason::PASS_TO_TC, p.ip_len);
                return xdp_action::XDP_PASS;
            }
            match nat::rewrite_xdp(ctx, &p, &to, way.route.found()) {
                Ok(()) => {
                    stats::verdict(reason, p.ip_len);
                    stats::service(svc_id, backend_id, p.ip_len);
                    if let Some(action) = send(ctx, &way, p.ip_len) {
                        return action;
                    }
                }
                Err(reason) => {
                    if new {
                        conntrack::forget(&p.key, &to);
                    }
                    stats::verdict(reason, p.ip_len);
                }
            }
        }
    }
    xdp_action::XDP_PASS
}

/// The pipeline for IPv6: flows to NodePort and LoadBalancer frontends start and
/// continue here; once rewritten their packets leave as IPv4's do ([`way_out`]:
/// redirected by the FIB, marked for TC to hand to the pod, or through the stack);
/// SNAT and hairpin flows are TC's; ICMPv6 errors about a flow are translated with
/// it. Frames lb does not translate are counted under their reason.
#[inline(never)]
fn run6(ctx: &XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let Some(w) = flow::work6() else {
        return xdp_action::XDP_PASS;
    };
    let not = frag::packet6_into(ctx.data(), ctx.data_end(), len, &mut w.packet);
    // Neither TCP nor UDP: an ICMPv6 error about a flow is translated as IPv4's
    // ([`related`]), anything else passed. Decided, then rewritten, in two
    // subprograms one after the other (see `icmp::Work`).
    if not == reason::PASS_NOT_L4 {
        if let Some(e) = icmp::work()
            && icmp::decide6_into(ctx.data(), ctx.data_end(), Hook::Ingress, e)
                == icmp::Found::Related
        {
            return related6(ctx, e);
        }
        stats::verdict(reason::PASS_NOT_L4, len as u16);
        return xdp_action::XDP_PASS;
    }
    if not != 0 {
        stats::verdict(not, len as u16);
        return xdp_action::XDP_PASS;
    }
    let p = &w.packet;
    let ingress = ctx.ingress_ifindex() as u32;
    flow::decide6(
        p,
        ingress,
        Hook::Ingress,
        || verify::xdp6(ctx, p),
        &mut w.decision,
    );
    let d = &w.decision;
    match d.kind {
        flow::DECIDED_PASS => stats::verdict(d.reason, p.ip_len),
        flow::DECIDED_DROP => {
            stats::verdict(d.reason, p.ip_len);
            return xdp_action::XDP_DROP;
        }
        flow::DECIDED_REJECT => stats::verdict(reason::PASS_NO_BACKEND, p.ip_len),
        _ => {
            if d.forward() != Forward::Stack {
                if d.new {
                    conntrack::forget6(&p.key, &d.to);
                }
                stats::verdict(reason::PASS_TO_TC, p.ip_len);
                return xdp_action::XDP_PASS;
            }
            let way = way_out(ctx, p.ttl, Forward::Stack, || {
                fwd::lookup6_full(ctx.as_ptr(), &d.to, ingress, p.ip_len, &mut w.route);
                w.route
            });
            if way.to_tc {
                if d.new {
                    conntrack::forget6(&p.key, &d.to);
                }
                stats::verdict(reason::PASS_TO_TC, p.ip_len);
                return xdp_action::XDP_PASS;
            }
            match nat::rewrite_xdp6(ctx, p, &d.to, way.route.found()) {
                Ok(()) => {
                    stats::verdict(d.reason, p.ip_len);
                    stats::service(d.svc_id, d.backend_id, p.ip_len);
                    if let Some(action) = send(ctx, &way, p.ip_len) {
                        return action;
                    }
                }
                Err(reason) => {
                    if d.new {
                        conntrack::forget6(&p.key, &d.to);
                    }
                    stats::verdict(reason, p.ip_len);
                }
            }
        }
    }
    xdp_action::XDP_PASS
}

/// [`related`] for an IPv4 ICMP error, decided into `w`.
#[inline(never)]
fn related4(ctx: &XdpContext, w: &icmp::Work<u32>) -> u32 {
    related(ctx, &w.error, &w.related)
}

/// [`related`] for an ICMPv6 error, decided into `w`.
#[inline(never)]
fn related6(ctx: &XdpContext, w: &icmp::Work6) -> u32 {
    related(ctx, &w.error, &w.related)
}

/// An ICMP error about a flow, `r` what it becomes: translated here when the
/// flow's packets go through the stack; an SNAT or hairpin flow's goes on
/// untouched to TC, which forwards it.
#[inline(always)]
fn related<A: icmp::Quoting>(
    ctx: &XdpContext,
    e: &icmp::IcmpError<A>,
    r: &icmp::Related<A>,
) -> u32 {
    if r.forward != Forward::Stack {
        stats::verdict(reason::PASS_TO_TC, e.ip_len);
    } else if A::rewrite(ctx.data(), ctx.data_end(), e, r, false).is_some() {
        stats::verdict(reason::NAT_RELATED, e.ip_len);
        stats::service(r.svc_id, r.backend_id, e.ip_len);
    } else {
        stats::verdict(reason::PASS_MALFORMED, e.ip_len);
    }
    xdp_action::XDP_PASS
}

/// How a translated frame leaves: redirected by the FIB's route (`route` found), or
/// marked for TC ingress to hand to the pod (`to_peer`), or on through the stack
/// (no route); or it is not translated here at all (`to_tc`: for a local pod's veth
/// where no mark can be left, the kernel or the driver keeping no XDP metadata, TC
/// ingress translates it and hands it over itself, as on a virtual uplink). A plain
/// struct, never an enum with a payload (see `fwd::Route`).
struct Way {
    route: Route,
    to_peer: bool,
    to_tc: bool,
}

/// Sends a translated frame the way [`way_out`] chose: redirected
/// (`Some(action)`), or marked for TC ingress to hand to the pod, or neither (None
/// for both: it goes on through the stack, to TC).
#[inline(always)]
fn send(ctx: &XdpContext, way: &Way, ip_len: u16) -> Option<u32> {
    if way.to_peer {
        deliver::mark(ctx, &way.route);
        return None;
    }
    if !way.route.found() {
        return None;
    }
    let action = fwd::send_xdp(ctx, &way.route)?;
    stats::verdict(reason::FWD_XDP_REDIRECT, ip_len);
    Some(action)
}

/// The route / peer / stack choice. Translated packets leave by the FIB when it has
/// a full answer (route and neighbour) towards an interface that takes XDP frames
/// (`IFACE_F_XDP_XMIT`, set by the agent): redirected here, they skip the stack, as
/// Cilium's and Katran's do. A frame for any other interface is not redirected (the
/// kernel would drop it: a veth whose peer has no NAPI): SNAT flows go on untouched
/// to TC, whose `bpf_redirect_neigh` sends socket buffers anywhere; others through
/// the stack once rewritten. Towards a local pod's veth it depends on `--to-pods`:
/// by default (peer) XDP redirects it to a pod whose end runs a native-mode XDP
/// program (`IFACE_F_XDP_XMIT`, set by the agent per pod), and for any other pod
/// the frame is marked and TC ingress hands it over (`deliver`), or, where no mark
/// can be left, it goes on untranslated for TC to translate and hand over; with `--to-pods
/// xdp` XDP redirects every one (the agent was told the pods' ends take XDP
/// frames). A packet on its last hop (TTL 1) is not forwarded here: the stack
/// routes it and answers "time exceeded" (DNAT flows), or TC drops it. Hairpin
/// (`Back`) needs a pod as the client: only TC sees those.
/// `lookup`: the FIB's full answer for the translated tuple (the family's lookup).
#[inline(always)]
fn way_out(ctx: &XdpContext, ttl: u8, forward: Forward, lookup: impl FnOnce() -> Route) -> Way {
    let mut way = Way {
        route: Route::NONE,
        to_peer: false,
        to_tc: false,
    };
    if forward == Forward::Back || !fwd::xdp_enabled() || ttl <= 1 {
        return way;
    }
    let r = lookup();
    if !r.found() {
        return way;
    }
    let role = r.role;
    if role & IFACE_POD == 0 || forward == Forward::Fib {
        if role & IFACE_F_XDP_XMIT != 0 {
            way.route = r;
        }
        return way;
    }
    match fwd::to_pods() {
        TO_PODS_XDP => way.route = r,
        // The pod's end runs native XDP (the agent saw it): it takes redirected frames.
        TO_PODS_PEER if role & IFACE_F_XDP_XMIT != 0 => way.route = r,
        TO_PODS_PEER if role & IFACE_F_PEER != 0 => {
            if deliver::reserve(ctx) {
                way.route = r;
                way.to_peer = true;
            } else {
                way.to_tc = true;
            }
        }
        _ => {}
    }
    way
}
