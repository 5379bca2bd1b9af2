//! lb's programs. Entry points only: parse, decide, rewrite, count, return the verdict.
//!
//! - `lb_xdp` (XDP, external interfaces): starts and continues flows to NodePort and
//!   LoadBalancer frontends arriving from outside the node.
//! - `lb_tc_ingress` (TC ingress, pod interfaces): the same for traffic from pods
//!   (ClusterIP); TC because pod traffic carries partial checksums XDP cannot fix.
//!   On external interfaces it hands frames XDP translated to local pods
//!   (`deliver`) and finishes SNAT flows XDP could not forward.
//! - `lb_tc_egress` (TC egress, every lb interface): translates replies back to the
//!   service address after the kernel has routed them, so a rewritten source that is
//!   the node's own address never meets the ingress martian-source check.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4` (cgroup): the node's own processes,
//!   whose packets pass no ingress hook, are sent to a backend at the socket.
#![no_std]
#![no_main]

mod bench;
mod clock;
mod conntrack;
mod csum;
mod deliver;
mod flow;
mod frag;
mod fwd;
mod lb;
mod maps;
mod nat;
mod parse;
mod reject;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use flow::{Forward, Hook, Verdict};
use lb_common::{IFACE_F_PEER, IFACE_POD, TO_PODS_PEER, TO_PODS_XDP, reason};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let mut p = match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(p) => p,
        Err(reason) => {
            stats::verdict(reason, 0);
            return xdp_action::XDP_PASS;
        }
    };
    if let Err(reason) = frag::resolve(&mut p) {
        stats::verdict(reason, p.ip_len);
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    match flow::decide(&p, ingress, Hook::Ingress) {
        Verdict::Pass(reason) => stats::verdict(reason, p.ip_len),
        Verdict::Drop(reason) => {
            stats::verdict(reason, p.ip_len);
            return xdp_action::XDP_DROP;
        }
        // NodePorts live on the node's own addresses: its kernel answers (RST, ICMP).
        Verdict::Reject => stats::verdict(reason::PASS_NO_BACKEND, p.ip_len),
        // Hairpin (`Back`) needs a pod as the client: only TC ingress sees those.
        Verdict::Nat {
            to,
            svc_id,
            backend_id,
            reason,
            forward,
        } => {
            // Translated packets leave by the FIB when it has a full answer (route and
            // neighbour): redirected here, they skip the stack, as Cilium's and
            // Katran's do. Towards a local pod's veth it depends on `--to-pods`: by
            // default (peer) the frame is marked and TC ingress hands it to the pod
            // (`deliver`); XDP redirects it only if the agent was told the pods' ends
            // take XDP frames (xdp); otherwise (stack, or a pod interface that is no
            // veth) it goes on through the stack once rewritten.
            // SNAT flows cannot: rewritten, their packets carry the node's own
            // address (as source, or as the reply's former destination), which the
            // stack would drop as a martian; without a full FIB answer here (no
            // neighbour entry yet, or XDP forwarding off) they go on untouched, and
            // TC ingress, whose bpf_redirect_neigh resolves the neighbour, finishes them.
            // A packet on its last hop (TTL 1) is not forwarded here: the stack
            // routes it and answers "time exceeded" (DNAT flows), or TC drops it.
            let mut route = fwd::Route::NONE;
            let mut to_peer = false;
            if forward != Forward::Back && fwd::xdp_enabled() && p.ttl > 1 {
                let r = fwd::lookup_xdp(&ctx, &to, ingress, p.ip_len);
                let role = if r.found() && forward != Forward::Fib {
                    lb::iface_role(r.ifindex)
                } else {
                    0
                };
                if role & IFACE_POD == 0 {
                    route = r;
                } else {
                    match fwd::to_pods() {
                        TO_PODS_XDP => route = r,
                        TO_PODS_PEER if role & IFACE_F_PEER != 0 && deliver::reserve(&ctx) => {
                            route = r;
                            to_peer = true;
                        }
                        _ => {}
                    }
                }
            }
            if forward == Forward::Fib && !route.found() {
                return xdp_action::XDP_PASS;
            }
            match nat::rewrite_xdp(&ctx, &p, &to, route.found()) {
                Ok(()) => {
                    stats::verdict(reason, p.ip_len);
                    stats::service(svc_id, backend_id, p.ip_len);
                    if to_peer {
                        deliver::mark(&ctx, &route);
                    } else if route.found()
                        && let Some(action) = fwd::send_xdp(&ctx, &route)
                    {
                        stats::verdict(reason::FWD_XDP_REDIRECT, p.ip_len);
                        return action;
                    }
                }
                Err(reason) => stats::verdict(reason, p.ip_len),
            }
        }
    }
    xdp_action::XDP_PASS
}

/// The benchmarks' baseline: the same parsing and counting as `lb_xdp`, no lookups,
/// no rewrite. Never attached.
#[xdp]
pub fn lb_xdp_baseline(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(p) => stats::verdict(lb_common::reason::PASS_NO_SERVICE, p.ip_len),
        Err(reason) => stats::verdict(reason, 0),
    }
    xdp_action::XDP_PASS
}

/// Benchmarks only: the baseline plus one conntrack lookup (read, not refreshed),
/// the floor of an established-flow packet: what lb does beyond it is the rewrite,
/// the refresh and the per-service counters.
#[xdp]
pub fn lb_bench_ct_floor(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(p) => {
            let found = conntrack::peek(&p.key);
            stats::verdict(
                if found {
                    lb_common::reason::NAT_ESTABLISHED
                } else {
                    lb_common::reason::PASS_NO_SERVICE
                },
                p.ip_len,
            )
        }
        Err(reason) => stats::verdict(reason, 0),
    }
    xdp_action::XDP_PASS
}

/// Benchmarks only: the live-frames traffic generator (see `bench`).
#[xdp]
pub fn lb_bench_gen(ctx: XdpContext) -> u32 {
    bench::generate(&ctx)
}

/// Benchmarks only: a plain redirect hop, the ceiling lb is compared with.
#[xdp]
pub fn lb_bench_redirect(_ctx: XdpContext) -> u32 {
    bench::redirect()
}

/// Benchmarks only: the pod's counting sink.
#[xdp]
pub fn lb_bench_sink(ctx: XdpContext) -> u32 {
    bench::sink(&ctx)
}

/// Benchmarks only: a plain hand-over at TC, the floor of delivering socket buffers.
#[classifier]
pub fn lb_bench_redirect_peer(_ctx: TcContext) -> i32 {
    bench::redirect_peer()
}

/// Benchmarks only: the pod's counting sink for socket buffers.
#[classifier]
pub fn lb_bench_sink_tc(ctx: TcContext) -> i32 {
    bench::sink_tc(&ctx)
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, Hook::Ingress)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    tc(&ctx, Hook::Egress)
}

#[inline(always)]
fn tc(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if hook == Hook::Ingress
        && let Some(verdict) = deliver::take(ctx, ifindex)
    {
        return verdict;
    }
    let mut p = match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(p) => p,
        Err(reason) => {
            stats::verdict(reason, 0);
            return TC_ACT_UNSPEC;
        }
    };
    if let Err(reason) = frag::resolve(&mut p) {
        stats::verdict(reason, p.ip_len);
        return TC_ACT_UNSPEC;
    }
    match flow::decide(&p, ifindex, hook) {
        Verdict::Pass(reason) => stats::verdict(reason, p.ip_len),
        Verdict::Reject => match reject::port_unreachable(ctx, &p) {
            Ok(verdict) => {
                stats::verdict(reason::REJECT_NO_BACKEND, p.ip_len);
                return verdict;
            }
            Err(()) => stats::verdict(reason::PASS_NO_BACKEND, p.ip_len),
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

/// The node's own processes: socket-level balancing (see `sock`).
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
