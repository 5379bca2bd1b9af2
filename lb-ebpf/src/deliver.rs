//! Handing translated packets to local pods (`TO_PODS_PEER`). XDP has no socket
//! buffer to hand over and a veth drops XDP frames its pod end cannot take, so XDP
//! translates the frame and marks it in its metadata (`DeliverMeta`); TC ingress on
//! the same interface, the first hook with a socket buffer, writes the MACs and sends
//! it to the pod's end of the veth with `bpf_redirect_peer`, past the node's routing,
//! netfilter and the veth's backlog queue, as Cilium's host routing does. Where XDP
//! does not run (a virtual uplink, `--xdp off`), TC ingress translates and hands the
//! packet over itself (`peer_route`, `send_peer`).

use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_redirect_peer, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
};
use lb_common::{DeliverMeta, FlowKey, IFACE_EXTERNAL, IFACE_F_PEER, TO_PODS_PEER, reason};

use crate::{
    fwd::{self, Route},
    lb,
    parse::ptr_at,
    stats,
};

/// Set by the agent at load time (`lb_common::GLOBAL_DELIVER_KEY`): random, never 0.
#[unsafe(no_mangle)]
static DELIVER_KEY: u64 = 0;

#[inline(always)]
fn key() -> u64 {
    // SAFETY: a plain read of a global the loader set.
    unsafe { core::ptr::read_volatile(&DELIVER_KEY) }
}

/// Set by the agent at load time (`lb_common::GLOBAL_XDP_META`): 1 where the kernel
/// has `bpf_xdp_adjust_meta` for XDP.
#[unsafe(no_mangle)]
static XDP_META: u32 = 0;

/// Makes room for the mark in front of the frame, still unset; false when the kernel
/// or the driver keeps no metadata (the packet then goes on untranslated, and TC
/// ingress translates it and hands it over itself). Called before the frame is
/// rewritten: once rewritten for the pod, it must be delivered this way.
#[inline(always)]
pub fn reserve(ctx: &XdpContext) -> bool {
    // SAFETY: a plain read of a global the loader set. A constant of the load: where
    // it is 0 the verifier never sees the helper's call below.
    if unsafe { core::ptr::read_volatile(&XDP_META) } == 0 {
        return false;
    }
    // SAFETY: the program's own context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<DeliverMeta>() as i32)) } != 0 {
        return false;
    }
    let Some(meta) = ptr_at::<DeliverMeta>(ctx.metadata(), ctx.metadata_end(), 0) else {
        return false;
    };
    // Headroom is recycled: an old mark must not be read as this frame's.
    // SAFETY: bounds-checked against the start of the frame just above.
    unsafe { (*meta).key = 0 };
    true
}

/// Marks the (translated) frame for delivery through `route`'s veth (one the agent
/// declared for hand-over: the caller checked `route.role`).
#[inline(always)]
pub fn mark(ctx: &XdpContext, route: &Route) {
    if let Some(meta) = ptr_at::<DeliverMeta>(ctx.metadata(), ctx.metadata_end(), 0) {
        let m = DeliverMeta {
            key: key(),
            ifindex: route.ifindex,
            dmac: route.dmac,
            smac: route.smac,
        };
        // SAFETY: bounds-checked against the start of the frame just above.
        unsafe { meta.write_unaligned(m) };
    }
}

/// At TC ingress: a frame lb's XDP marked on this interface goes to its pod's
/// interface now (`Some(TC verdict)`); anything else goes on (`None`). A mark is
/// lb's when it carries this load's key: only lb's XDP program, on the external
/// interfaces, writes it, and only towards a veth the agent declared
/// (`IFACE_F_PEER`), so no lookup of either interface's role is needed here.
#[inline(always)]
pub fn take(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    let meta = ptr_at::<DeliverMeta>(meta, data, 0)?;
    // SAFETY: bounds-checked against the start of the frame just above.
    let m = unsafe { meta.read_unaligned() };
    if m.key != key() || m.key == 0 {
        return None;
    }
    fwd::write_macs(ctx.data(), ctx.data_end(), &m.dmac, &m.smac)?;
    stats::verdict(reason::FWD_TC_PEER, ctx.len().min(u16::MAX as u32) as u16);
    // SAFETY: a helper taking plain values.
    Some(unsafe { bpf_redirect_peer(m.ifindex, 0) } as i32)
}

/// At TC ingress of an external interface, for a packet translated for the stack
/// (`to`): the route to a local pod's veth that TC may hand it to, or
/// `Route::NONE` (another `--to-pods`, not a declared veth, its last hop, or no full
/// FIB answer yet: the stack then routes it and resolves the neighbour).
#[inline(always)]
pub fn peer_route(ctx: &TcContext, to: &FlowKey, ifindex: u32, ttl: u8, ip_len: u16) -> Route {
    if !may_hand_over(ifindex, ttl) {
        return Route::NONE;
    }
    let r = fwd::lookup_tc_full(ctx, to, ifindex, ip_len);
    if is_peer(&r) { r } else { Route::NONE }
}

/// Whether a packet translated at TC ingress of `ifindex` for the stack may be
/// handed to a local pod instead ([`peer_route`]): `--to-pods peer`, an external
/// interface, not the packet's last hop.
#[inline(always)]
pub fn may_hand_over(ifindex: u32, ttl: u8) -> bool {
    fwd::to_pods() == TO_PODS_PEER && ttl > 1 && lb::iface_role(ifindex) & IFACE_EXTERNAL != 0
}

/// Whether `route` leads to a pod's veth the agent declared for hand-over.
#[inline(always)]
pub fn is_peer(route: &Route) -> bool {
    route.found() && route.role & IFACE_F_PEER != 0
}

/// Hands the translated packet to the pod behind `route` (see [`peer_route`]).
#[inline(always)]
pub fn send_peer(ctx: &TcContext, route: &Route) -> Option<i32> {
    fwd::write_macs(ctx.data(), ctx.data_end(), &route.dmac, &route.smac)?;
    // SAFETY: a helper taking plain values.
    Some(unsafe { bpf_redirect_peer(route.ifindex, 0) } as i32)
}
