//! Forwarding a translated packet without the kernel's stack: a FIB lookup for the
//! tuple it now carries, then XDP_REDIRECT (XDP) or bpf_redirect_neigh (TC).
//! Used for SNAT flows, whose replies the stack would take for itself, and for their
//! original packets towards another node, and for packets to local pods.
//!
//! A full answer (route, neighbour, the way out's role) is kept per CPU for its
//! tuple (`LB_ROUTES`, `LB6_ROUTES`) and used for that tuple's packets for up to
//! `ROUTE_TTL_MS`: in the live path a lookup costs about a tenth of a packet's
//! whole way through the node. A change of route, neighbour or role reaches
//! the programs within that time.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use lb_common::{FlowKey, FlowKey6, FlowKeyOf, ROUTE_SLOTS, ROUTE_TTL_MS, TO_PODS_STACK};

use crate::{clock, family::Family, lb, maps::LB_ROUTING, parse::ptr_at};

/// Set by the agent at load time (`lb_common::GLOBAL_FIB_REDIRECT`): 1 lets XDP send
/// packets on itself; 0 leaves forwarding to the kernel's stack (for comparison).
#[unsafe(no_mangle)]
static FIB_REDIRECT: u32 = 1;

/// Set by the agent at load time (`lb_common::GLOBAL_TO_PODS`): how translated
/// packets reach local pods (`TO_PODS_*`).
#[unsafe(no_mangle)]
static TO_PODS: u32 = TO_PODS_STACK;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Whether XDP may redirect by itself.
#[inline(always)]
pub fn xdp_enabled() -> bool {
    // SAFETY: a plain read of a global the loader set.
    unsafe { core::ptr::read_volatile(&FIB_REDIRECT) != 0 }
}

/// How translated packets reach local pods (`lb_common::TO_PODS_*`).
#[inline(always)]
pub fn to_pods() -> u32 {
    // SAFETY: a plain read of a global the loader set.
    unsafe { core::ptr::read_volatile(&TO_PODS) }
}

/// Where the FIB sends `to`: the egress interface, the role the agent gave it
/// (`IFACE_*`, 0 for one lb is not attached to) and the MACs to write. A plain
/// struct, never an `Option`: ifindex 0 is "no route" (an `Option`'s undefined
/// payload may be spilled to the stack, which the verifier refuses to read back).
#[derive(Clone, Copy)]
pub struct Route {
    pub ifindex: u32,
    pub role: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl Route {
    pub const NONE: Route = Route {
        ifindex: 0,
        role: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };

    #[inline(always)]
    pub fn found(&self) -> bool {
        self.ifindex != 0
    }
}

/// Asks the FIB the way for `to` (`ifindex`: where the packet came in); returns the
/// helper's code, the answer being in `p`. The request is zeroed eight bytes at a
/// time with plain stores: `mem::zeroed()` would be a call to a byte-by-byte memset
/// in BPF code.
#[inline(always)]
fn query(
    ctx: *mut c_void,
    p: &mut MaybeUninit<bpf_fib_lookup>,
    to: &FlowKey,
    ifindex: u32,
    tot_len: u16,
) -> i64 {
    let r = p.as_mut_ptr();
    let words = r.cast::<u64>();
    // SAFETY: `r` points to a writable request (size a multiple of 8, 8-aligned);
    // once zeroed, every field is valid and is written in place. Then the helper
    // gets the program's context and a request of the size given.
    unsafe {
        for i in 0..size_of::<bpf_fib_lookup>() / 8 {
            words.add(i).write_volatile(0);
        }
        (*r).family = AF_INET;
        (*r).l4_protocol = to.proto;
        (*r).sport = to.sport_be;
        (*r).dport = to.dport_be;
        // Host byte order: the kernel compares it with the MTU.
        (*r).__bindgen_anon_1.tot_len = tot_len;
        (*r).ifindex = ifindex;
        (*r).__bindgen_anon_3.ipv4_src = to.saddr_be;
        (*r).__bindgen_anon_4.ipv4_dst = to.daddr_be;
        fib_lookup(ctx, r, size_of::<bpf_fib_lookup>() as i32, 0)
    }
}

/// The route for `to` from an XDP program, complete with the neighbour's MAC;
/// `Route::NONE` when the FIB has no full answer (no route, or no neighbour entry yet).
#[inline(always)]
pub fn lookup_xdp(ctx: &XdpContext, to: &FlowKey, ifindex: u32, tot_len: u16) -> Route {
    lookup_full(ctx.as_ptr(), to, ifindex, tot_len)
}

/// [`lookup_xdp`] from TC: the route with both MACs, or `Route::NONE` (also when
/// the packet does not fit it: the stack then forwards it, or answers).
#[inline(always)]
pub fn lookup_tc_full(ctx: &TcContext, to: &FlowKey, ifindex: u32, ip_len: u16) -> Route {
    lookup_full(ctx.as_ptr(), to, ifindex, tc_len(ctx, ip_len))
}

#[inline(always)]
fn lookup_full(ctx: *mut c_void, to: &FlowKey, ifindex: u32, tot_len: u16) -> Route {
    let mut route = Route::NONE;
    cached(to, ifindex, tot_len, &mut route, |out| {
        let mut p = MaybeUninit::<bpf_fib_lookup>::uninit();
        let rc = query(ctx, &mut p, to, ifindex, tot_len);
        *out = full_route(rc, &p);
    });
    route
}

/// The full route for `to` arriving on `ifindex` with IP length `tot_len`, into
/// `out`: from this CPU's cache when it holds the same tuple and interface, asked
/// less than `ROUTE_TTL_MS` ago and for a packet at least as long; else `ask`
/// writes the FIB's answer, which a full one is then kept for. A length of 0 (a
/// GSO socket buffer, which the kernel checks itself) always asks.
#[inline(always)]
fn cached<A: Family>(
    to: &FlowKeyOf<A>,
    ifindex: u32,
    tot_len: u16,
    out: &mut Route,
    ask: impl FnOnce(&mut Route),
) {
    let now = clock::now();
    // Routes by destination alone: one answer for every flow to it.
    let by_dst = LB_ROUTING.get(0).is_some_and(|r| r & A::ROUTED_BY_DST != 0);
    let key = if by_dst {
        FlowKeyOf {
            saddr_be: A::default(),
            sport_be: 0,
            dport_be: 0,
            ..*to
        }
    } else {
        *to
    };
    let to = &key;
    let Some(slot) = A::routes().get_ptr_mut(slot_of(to, ifindex)) else {
        ask(out);
        return;
    };
    // SAFETY: the pointer came from a successful lookup of this CPU's slot, which
    // only this CPU's programs touch, one at a time.
    let s = unsafe { &mut *slot };
    if s.stamp != 0
        && now.wrapping_sub(s.stamp) < clock::secs(1) * ROUTE_TTL_MS / 1000
        && tot_len != 0
        && tot_len <= s.fits
        && s.in_ifindex == ifindex
        && s.key == *to
    {
        out.ifindex = s.ifindex;
        out.role = s.role;
        out.smac = s.smac;
        out.dmac = s.dmac;
        return;
    }
    ask(out);
    if !out.found() || tot_len == 0 {
        return;
    }
    s.stamp = now;
    s.key = *to;
    s.in_ifindex = ifindex;
    s.ifindex = out.ifindex;
    s.role = out.role;
    s.fits = tot_len;
    s.smac = out.smac;
    s.dmac = out.dmac;
}

/// The cache slot of `to` arriving on `ifindex`: a multiplicative hash of the
/// tuple's words, its top bits.
#[inline(always)]
fn slot_of<A: Family>(to: &FlowKeyOf<A>, ifindex: u32) -> u32 {
    let words = A::word_sum(to.saddr_be)
        .wrapping_add(A::word_sum(to.daddr_be).rotate_left(17))
        .wrapping_add((u64::from(to.sport_be) << 16 | u64::from(to.dport_be)) << 32)
        .wrapping_add(u64::from(ifindex) << 8 | u64::from(to.proto));
    let h = words.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - ROUTE_SLOTS.trailing_zeros())) as u32
}

/// The route of a FIB answer with code `rc` in `p` (written whole by `query` or
/// `query6`, then by the kernel), or `Route::NONE` when it is not a full one.
#[inline(always)]
fn full_route(rc: i64, p: &MaybeUninit<bpf_fib_lookup>) -> Route {
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Route::NONE;
    }
    // SAFETY: written whole by the query, then by the kernel.
    let p = unsafe { p.assume_init_ref() };
    Route {
        ifindex: p.ifindex,
        role: lb::iface_role(p.ifindex),
        smac: p.smac,
        dmac: p.dmac,
    }
}

/// Writes the route's MACs and redirects the frame to the route's interface. Also
/// when that is the interface it came in on: XDP_TX would be cheaper on a NIC, but a
/// veth only wakes its peer for XDP_TX frames when the peer runs an XDP program of
/// its own, while a redirect's flush always does.
#[inline(always)]
pub fn send_xdp(ctx: &XdpContext, route: &Route) -> Option<u32> {
    write_macs(ctx.data(), ctx.data_end(), &route.dmac, &route.smac)?;
    // SAFETY: a helper taking plain values.
    Some(unsafe { bpf_redirect(route.ifindex, 0) } as u32)
}

/// Writes the frame's destination and source MACs (the frame between `data` and
/// `data_end`); None if it is too short.
#[inline(always)]
pub fn write_macs(data: usize, data_end: usize, dmac: &[u8; 6], smac: &[u8; 6]) -> Option<()> {
    let macs: *mut [u8; 12] = ptr_at(data, data_end, 0)?;
    let mut both = [0u8; 12];
    both[..6].copy_from_slice(dmac);
    both[6..].copy_from_slice(smac);
    // SAFETY: bounds-checked just above; a plain store of 12 bytes.
    unsafe { macs.write_unaligned(both) };
    Some(())
}

/// From TC, where `to` leaves: an interface (the neighbour may still be unknown:
/// bpf_redirect_neigh resolves it), none (no route), or too big for it. A plain
/// struct (see [`Route`]).
#[derive(Clone, Copy)]
pub struct TcRoute {
    /// The egress interface; 0 when there is none (no route, or too big).
    pub ifindex: u32,
    /// Non-zero: the packet does not fit the way out, whose MTU this is.
    pub mtu: u16,
}

impl TcRoute {
    pub const NONE: TcRoute = TcRoute { ifindex: 0, mtu: 0 };
}

/// [`TcRoute`] for `to`. The MTU is checked as the kernel checks a forwarded
/// packet: a GSO socket buffer (a local sender's or GRO's super-packet) by the
/// segments it will be cut into, against the egress device; any other by its length,
/// against the route's MTU.
#[inline(always)]
pub fn lookup_tc(ctx: &TcContext, to: &FlowKey, ifindex: u32, ip_len: u16) -> TcRoute {
    let mut p = MaybeUninit::<bpf_fib_lookup>::uninit();
    let rc = query(ctx.as_ptr(), &mut p, to, ifindex, tc_len(ctx, ip_len));
    // SAFETY: written whole by `query`, then by the kernel.
    let p = unsafe { p.assume_init_ref() };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        TcRoute {
            ifindex: p.ifindex,
            mtu: 0,
        }
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        TcRoute {
            ifindex: 0,
            // SAFETY: the kernel writes the MTU over the length it checked.
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        }
    } else {
        TcRoute::NONE
    }
}

/// [`query`] for an IPv6 tuple.
#[inline(always)]
fn query6(
    ctx: *mut c_void,
    p: &mut MaybeUninit<bpf_fib_lookup>,
    to: &FlowKey6,
    ifindex: u32,
    tot_len: u16,
) -> i64 {
    let r = p.as_mut_ptr();
    let words = r.cast::<u64>();
    // SAFETY: as in `query`: the request zeroed, then written field by field; the
    // helper gets the program's context and a request of the size given.
    unsafe {
        for i in 0..size_of::<bpf_fib_lookup>() / 8 {
            words.add(i).write_volatile(0);
        }
        (*r).family = AF_INET6;
        (*r).l4_protocol = to.proto;
        (*r).sport = to.sport_be;
        (*r).dport = to.dport_be;
        (*r).__bindgen_anon_1.tot_len = tot_len;
        (*r).ifindex = ifindex;
        (*r).__bindgen_anon_3.ipv6_src = to.saddr_be;
        (*r).__bindgen_anon_4.ipv6_dst = to.daddr_be;
        fib_lookup(ctx, r, size_of::<bpf_fib_lookup>() as i32, 0)
    }
}

/// [`lookup_xdp`] / [`lookup_tc_full`] for an IPv6 tuple, written to `out` (map
/// memory, see `flow::Work6`; `Route::NONE` without a full answer). `ctx`: the
/// program's context; `tot_len`: as the family's lookups take it (TC: `tc_len`). A
/// subprogram of its own: the request's 64 bytes of stack are not added to the IPv6
/// pipeline's.
#[inline(never)]
pub fn lookup6_full(ctx: *mut c_void, to: &FlowKey6, ifindex: u32, tot_len: u16, out: &mut Route) {
    cached(to, ifindex, tot_len, out, |out| {
        let mut p = MaybeUninit::<bpf_fib_lookup>::uninit();
        let rc = query6(ctx, &mut p, to, ifindex, tot_len);
        *out = full_route(rc, &p);
    });
}

/// [`lookup_tc`] for an IPv6 flow's translated tuple, as one number (a subprogram
/// returns one register): the egress interface in the low 32 bits, 0 when there is
/// none; when the packet does not fit the way out, that way's MTU in the high bits
/// (see [`route6_ifindex`], [`route6_mtu`]). A subprogram of its own: the request's
/// 64 bytes of stack are not added to the IPv6 pipeline's.
#[inline(never)]
pub fn route_tc6(ctx: &TcContext, to: &FlowKey6, ifindex: u32, ip_len: u16) -> u64 {
    let mut p = MaybeUninit::<bpf_fib_lookup>::uninit();
    let rc = query6(ctx.as_ptr(), &mut p, to, ifindex, tc_len(ctx, ip_len));
    let r = p.as_ptr();
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: written whole by `query6`, then by the kernel.
        unsafe { (*r).ifindex as u64 }
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the kernel writes the MTU over the length it checked.
        (unsafe { (*r).__bindgen_anon_1.mtu_result } as u64) << 32
    } else {
        0
    }
}

/// The egress interface of a [`route_tc6`] answer (0: none).
#[inline(always)]
pub fn route6_ifindex(route: u64) -> u32 {
    route as u32
}

/// The MTU of a [`route_tc6`] answer the packet does not fit (0: it fits, or no
/// route).
#[inline(always)]
pub fn route6_mtu(route: u64) -> u16 {
    (route >> 32) as u16
}

/// The length a TC FIB lookup checks: 0 (the kernel then checks the socket buffer,
/// segments included) for a GSO one, else the IP length.
#[inline(always)]
pub fn tc_len(ctx: &TcContext, ip_len: u16) -> u16 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        0
    } else {
        ip_len
    }
}

/// Sends the socket buffer out `ifindex`, the kernel filling in the neighbour.
#[inline(always)]
pub fn send_tc(ifindex: u32) -> i32 {
    // SAFETY: a helper taking plain values; no neighbour parameters.
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if rc < 0 { TC_ACT_SHOT } else { rc as i32 }
}
