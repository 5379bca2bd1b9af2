//! ICMP errors about tracked flows (netfilter's RELATED): a "destination
//! unreachable", "time exceeded" or "parameter problem" quoting a packet of a flow
//! lb translates is translated with it, outer and quoted headers, so it reaches the
//! flow's other end about the packet that end sent: a pod's "port unreachable"
//! reaches the client about the service address, a router's "fragmentation needed"
//! reaches the sender it concerns. Without it path MTU discovery through a NodePort
//! breaks and clients never learn a pod is gone.
//!
//! IPv6 likewise: ICMPv6 "destination unreachable", "packet too big", "time
//! exceeded" and "parameter problem" (types 1-4). "Packet too big" is how IPv6
//! learns a path's MTU at all (its routers never fragment): untranslated, a
//! client's or a pod's large packets would be lost for good.
//!
//! Only the common shape is looked at (IP headers without options or extension
//! headers, outside and quoted, a TCP or UDP packet quoted with at least its ports);
//! any other ICMP goes on unchanged. Frames (from the start): `[Ethernet 14][IPv4
//! 20][ICMP 8][quoted IPv4 20][quoted L4, 8 or more]` and `[Ethernet 14][IPv6
//! 40][ICMPv6 8][quoted IPv6 40][quoted L4, 8 or more]`.

use lb_common::{Addr6, FlowKeyOf, PROTO_TCP, PROTO_UDP};

use crate::{
    clock, conntrack,
    csum::Csum,
    family::Family,
    flow::{self, Forward, Hook},
    maps::{LB6_WORK, WORK6_ICMP, WORK6_LEN},
    parse::ptr_at,
};

const PROTO_ICMP: u8 = 1;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const OUTER: usize = 14;
const ICMP: usize = OUTER + 20;
const INNER: usize = ICMP + 8;
const INNER_L4: usize = INNER + 20;
/// The quoted TCP checksum's offset, when the quote holds it.
const INNER_TCP_CHECK: usize = INNER_L4 + 16;
const INNER_UDP_CHECK: usize = INNER_L4 + 6;

const PROTO_ICMPV6: u8 = 58;
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const OUTER6: usize = 14;
const ICMP6: usize = OUTER6 + 40;
const INNER6: usize = ICMP6 + 8;
const INNER6_L4: usize = INNER6 + 40;
const INNER6_TCP_CHECK: usize = INNER6_L4 + 16;
const INNER6_UDP_CHECK: usize = INNER6_L4 + 6;

/// An ICMP error quoting a TCP or UDP packet; `A` the address family.
pub struct IcmpError<A = u32> {
    /// The quoted packet's tuple, as quoted.
    pub quoted: FlowKeyOf<A>,
    pub outer_saddr_be: A,
    pub outer_daddr_be: A,
    /// The outer datagram's length (IPv6: its header included).
    pub ip_len: u16,
    /// The outer TTL or hop limit.
    pub ttl: u8,
    /// The quote holds the TCP checksum (18 bytes of TCP or more).
    tcp_check: bool,
}

/// What a related error becomes: its new outer addresses, the quoted tuple, and
/// how it leaves (as the flow's packets of its direction do).
pub struct Related<A = u32> {
    pub saddr_be: A,
    pub daddr_be: A,
    pub quoted: FlowKeyOf<A>,
    pub forward: Forward,
    /// Every byte a field's: written whole to map memory (see [`Work6`]).
    _pad: [u8; 3],
    pub svc_id: u32,
    pub backend_id: u32,
}

/// An ICMP error and what it becomes, kept in per-CPU map memory (`maps::LB6_WORK`,
/// slot `WORK6_ICMP`) as the IPv6 pipeline keeps its packet (`flow::Work6`): with
/// IPv6's addresses, the two and the flow lookup between them do not fit a 512-byte
/// stack beside the pipeline's frame; and read back from map memory, their fields
/// are values the verifier no longer tells apart, so the rewrite after the decision
/// is walked once rather than once per way the decision was reached (IPv4's ICMP
/// path inlined in the TC pipeline cost the verifier ~450,000 instructions of its
/// 1,000,000).
pub struct Work<A> {
    pub error: IcmpError<A>,
    pub related: Related<A>,
}

pub type Work6 = Work<Addr6>;

const _: () = assert!(core::mem::size_of::<Work<Addr6>>() <= WORK6_LEN);
const _: () = assert!(core::mem::size_of::<Work<u32>>() <= WORK6_LEN);

/// This CPU's [`Work`] (map memory, 8-byte aligned, long enough).
#[inline(always)]
pub fn work<A>() -> Option<&'static mut Work<A>> {
    let w = LB6_WORK.get_ptr_mut(WORK6_ICMP)?;
    // SAFETY: a per-CPU map value of WORK6_LEN >= size_of::<Work<A>>() bytes (both
    // families asserted above), aligned to 8 (as every map value); only this CPU's
    // program touches it while it runs, and every field is written before it is read.
    Some(unsafe { &mut *(w as *mut Work<A>) })
}

/// What a frame is to the ICMP path.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Not an ICMP error of the shape looked at.
    NotError,
    /// An error, but not about a flow this hook translates: passed, as `pass_not_l4`.
    Untranslated,
    /// An error about a flow, decided into the [`Work`]: to be rewritten.
    Related,
}

/// `e` (the frame as an ICMP error, if it is one) decided into `w`.
#[inline(always)]
fn decide_into<A: Family>(e: Option<IcmpError<A>>, hook: Hook, w: &mut Work<A>) -> Found {
    let Some(e) = e else {
        return Found::NotError;
    };
    w.error = e;
    match decide(&w.error, hook) {
        Some(r) => {
            w.related = r;
            Found::Related
        }
        None => Found::Untranslated,
    }
}

/// Whether an IPv4 frame carries ICMP at all: the one byte every IPv4 frame is
/// tested on before the ICMP path's work slot and subprogram are touched (most
/// frames are TCP or UDP and leave here).
#[inline(always)]
pub fn is_icmp4(data: usize, data_end: usize) -> bool {
    ptr_at::<[u8; ICMP]>(data, data_end, 0)
        // SAFETY: bounds-checked by ptr_at: the Ethernet and IPv4 headers.
        .is_some_and(|head| unsafe { (*head)[OUTER + 9] } == PROTO_ICMP)
}

/// The frame as an IPv4 ICMP error about a flow, into `w`: [`parse`], then
/// [`decide`]. A subprogram of its own, with its own frame.
#[inline(never)]
pub fn decide4_into(data: usize, data_end: usize, hook: Hook, w: &mut Work<u32>) -> Found {
    decide_into(parse(data, data_end), hook, w)
}

/// [`decide4_into`] for ICMPv6 ([`parse6`]).
#[inline(never)]
pub fn decide6_into(data: usize, data_end: usize, hook: Hook, w: &mut Work6) -> Found {
    decide_into(parse6(data, data_end), hook, w)
}

/// The family's error rewrite.
pub trait Quoting: Family {
    /// Rewrites the error as `r` says (see [`rewrite`], [`rewrite6`]).
    fn rewrite(
        data: usize,
        data_end: usize,
        e: &IcmpError<Self>,
        r: &Related<Self>,
        hop: bool,
    ) -> Option<()>;
}

impl Quoting for u32 {
    #[inline(always)]
    fn rewrite(
        data: usize,
        data_end: usize,
        e: &IcmpError<u32>,
        r: &Related<u32>,
        hop: bool,
    ) -> Option<()> {
        rewrite(data, data_end, e, r, hop)
    }
}

impl Quoting for Addr6 {
    #[inline(always)]
    fn rewrite(
        data: usize,
        data_end: usize,
        e: &IcmpError<Addr6>,
        r: &Related<Addr6>,
        hop: bool,
    ) -> Option<()> {
        rewrite6(data, data_end, e, r, hop)
    }
}

/// The frame as an ICMP error of the shape looked at, or None.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Option<IcmpError> {
    let head: *const [u8; INNER_L4 + 4] = ptr_at(data, data_end, 0)?;
    // SAFETY: bounds-checked by ptr_at: the headers up to the quoted ports.
    let f = unsafe { &*head };
    if u16::from_ne_bytes([f[12], f[13]]) != ETH_P_IP_BE
        || f[OUTER] != 0x45
        || f[OUTER + 9] != PROTO_ICMP
        || u16::from_be_bytes([f[OUTER + 6], f[OUTER + 7]]) & 0x3fff != 0
        || !matches!(f[ICMP], 3 | 11 | 12)
        || f[INNER] != 0x45
        || !matches!(f[INNER + 9], PROTO_TCP | PROTO_UDP)
        || u16::from_be_bytes([f[INNER + 6], f[INNER + 7]]) & 0x1fff != 0
    {
        return None;
    }
    let ip_len = u16::from_be_bytes([f[OUTER + 2], f[OUTER + 3]]);
    if (ip_len as usize) < INNER_L4 + 8 - OUTER || data + OUTER + ip_len as usize > data_end {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let proto = f[INNER + 9];
    Some(IcmpError {
        quoted: FlowKeyOf {
            saddr_be: word(INNER + 12),
            daddr_be: word(INNER + 16),
            sport_be: u16::from_ne_bytes([f[INNER_L4], f[INNER_L4 + 1]]),
            dport_be: u16::from_ne_bytes([f[INNER_L4 + 2], f[INNER_L4 + 3]]),
            proto,
            _pad: 0,
            _pad2: 0,
        },
        outer_saddr_be: word(OUTER + 12),
        outer_daddr_be: word(OUTER + 16),
        ip_len,
        ttl: f[OUTER + 8],
        tcp_check: proto == PROTO_TCP && ip_len as usize >= INNER_TCP_CHECK + 2 - OUTER,
    })
}

/// The packet the error travels like: the quoted one's reverse. Its flow, if this
/// hook translates that packet (`flow::translated_at`).
#[inline(always)]
pub fn decide<A: Family>(e: &IcmpError<A>, hook: Hook) -> Option<Related<A>> {
    let q = &e.quoted;
    let like = conntrack::peer_key(q);
    let ct = flow::translated_at(&conntrack::related(&like, clock::now()), hook)?;
    let to = conntrack::nat_tuple(&ct, q.proto);
    // The outer header changes where the flow's translation changes an address (an
    // intermediate router's own source stays); the quote becomes the reverse of
    // the translated tuple: the packet the other end sent.
    Some(Related {
        saddr_be: if to.saddr_be != like.saddr_be {
            to.saddr_be
        } else {
            e.outer_saddr_be
        },
        daddr_be: if to.daddr_be != like.daddr_be {
            to.daddr_be
        } else {
            e.outer_daddr_be
        },
        quoted: FlowKeyOf {
            saddr_be: to.daddr_be,
            daddr_be: to.saddr_be,
            sport_be: to.dport_be,
            dport_be: to.sport_be,
            proto: q.proto,
            _pad: 0,
            _pad2: 0,
        },
        forward: flow::forward(ct.flags),
        _pad: [0; 3],
        svc_id: ct.svc_id,
        backend_id: ct.backend_id,
    })
}

/// Rewrites the error as `r` says, every checksum updated: the quoted L4 one (when
/// quoted), the quoted IPv4 one, the ICMP one over both, the outer IPv4 one; the
/// TTL lowered if `hop`. None if the frame no longer holds what `e` describes.
#[inline(always)]
pub fn rewrite(data: usize, data_end: usize, e: &IcmpError, r: &Related, hop: bool) -> Option<()> {
    let frame: *mut [u8; INNER_L4 + 8] = ptr_at(data, data_end, 0)?;
    let tcp_check = (data, data_end, INNER_TCP_CHECK);
    // SAFETY: bounds-checked by ptr_at; nothing changes the frame's size here.
    let f = unsafe { &mut *frame };
    let (old, new) = (&e.quoted, &r.quoted);
    let mut icmp = Csum::start(get16(f, ICMP + 2));
    // The quoted L4 checksum and ports; then the quoted addresses, and the quoted
    // IPv4 checksum.
    quote_l4(
        f,
        INNER_L4,
        INNER_UDP_CHECK,
        e.tcp_check,
        tcp_check,
        old,
        new,
        &mut icmp,
    )?;
    let inner_check = get16(f, INNER + 10);
    let mut inner = Csum::start(inner_check);
    inner.replace32(old.saddr_be, new.saddr_be);
    inner.replace32(old.daddr_be, new.daddr_be);
    let inner_next = inner.finish();
    icmp.replace32(old.saddr_be, new.saddr_be);
    icmp.replace32(old.daddr_be, new.daddr_be);
    icmp.replace16(inner_check, inner_next);
    f[INNER + 10..INNER + 12].copy_from_slice(&inner_next.to_ne_bytes());
    f[INNER + 12..INNER + 16].copy_from_slice(&new.saddr_be.to_ne_bytes());
    f[INNER + 16..INNER + 20].copy_from_slice(&new.daddr_be.to_ne_bytes());
    f[ICMP + 2..ICMP + 4].copy_from_slice(&icmp.finish().to_ne_bytes());
    // The outer header.
    let mut outer = Csum::start(get16(f, OUTER + 10));
    outer.replace32(e.outer_saddr_be, r.saddr_be);
    outer.replace32(e.outer_daddr_be, r.daddr_be);
    if hop {
        let old_word = u16::from_ne_bytes([f[OUTER + 8], f[OUTER + 9]]);
        f[OUTER + 8] = f[OUTER + 8].wrapping_sub(1);
        outer.replace16(old_word, u16::from_ne_bytes([f[OUTER + 8], f[OUTER + 9]]));
    }
    f[OUTER + 10..OUTER + 12].copy_from_slice(&outer.finish().to_ne_bytes());
    f[OUTER + 12..OUTER + 16].copy_from_slice(&r.saddr_be.to_ne_bytes());
    f[OUTER + 16..OUTER + 20].copy_from_slice(&r.daddr_be.to_ne_bytes());
    Some(())
}

/// A 16-bit word of the frame, as it sits.
#[inline(always)]
fn get16<const N: usize>(f: &[u8; N], at: usize) -> u16 {
    u16::from_ne_bytes([f[at], f[at + 1]])
}

/// The quoted L4 header's part of a rewrite, for both families: its checksum (UDP:
/// in the 8 bytes, unless "none"; TCP: when `quoted_tcp_check`, at `tcp_check`'s
/// offset, bounds-checked here against its data and data_end) over the quoted
/// addresses and ports, and the ports; every change also in `icmp`, the ICMP
/// checksum that covers the quote. None if the TCP checksum is not in the frame.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn quote_l4<A: Family, const N: usize>(
    f: &mut [u8; N],
    l4: usize,
    udp_check: usize,
    quoted_tcp_check: bool,
    tcp_check: (usize, usize, usize),
    old: &FlowKeyOf<A>,
    new: &FlowKeyOf<A>,
    icmp: &mut Csum,
) -> Option<()> {
    let l4_update = |check: u16| -> u16 {
        let mut c = Csum::start(check);
        old.saddr_be.replace_in(new.saddr_be, &mut c);
        old.daddr_be.replace_in(new.daddr_be, &mut c);
        c.replace16(old.sport_be, new.sport_be);
        c.replace16(old.dport_be, new.dport_be);
        c.finish()
    };
    if old.proto == PROTO_UDP {
        let check = get16(f, udp_check);
        if check != 0 {
            let next = l4_update(check);
            let next = if next == 0 { 0xffff } else { next };
            icmp.replace16(check, next);
            f[udp_check..udp_check + 2].copy_from_slice(&next.to_ne_bytes());
        }
    } else if quoted_tcp_check {
        let (data, data_end, off) = tcp_check;
        let at: *mut [u8; 2] = ptr_at(data, data_end, off)?;
        // SAFETY: bounds-checked by ptr_at just above.
        let check = u16::from_ne_bytes(unsafe { *at });
        let next = l4_update(check);
        icmp.replace16(check, next);
        // SAFETY: as above.
        unsafe { *at = next.to_ne_bytes() };
    }
    icmp.replace16(old.sport_be, new.sport_be);
    icmp.replace16(old.dport_be, new.dport_be);
    f[l4..l4 + 2].copy_from_slice(&new.sport_be.to_ne_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&new.dport_be.to_ne_bytes());
    Some(())
}

/// The frame as an ICMPv6 error of the shape looked at, or None.
#[inline(always)]
pub fn parse6(data: usize, data_end: usize) -> Option<IcmpError<Addr6>> {
    let head: *const [u8; INNER6_L4 + 4] = ptr_at(data, data_end, 0)?;
    // SAFETY: bounds-checked by ptr_at: the headers up to the quoted ports.
    let f = unsafe { &*head };
    if u16::from_ne_bytes([f[12], f[13]]) != ETH_P_IPV6_BE
        || f[OUTER6] >> 4 != 6
        || f[OUTER6 + 6] != PROTO_ICMPV6
        || !matches!(f[ICMP6], 1..=4)
        || f[INNER6] >> 4 != 6
        || !matches!(f[INNER6 + 6], PROTO_TCP | PROTO_UDP)
    {
        return None;
    }
    let payload = u16::from_be_bytes([f[OUTER6 + 4], f[OUTER6 + 5]]) as usize;
    if payload < INNER6_L4 + 8 - ICMP6 || data + ICMP6 + payload > data_end {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let addr = |at: usize| [word(at), word(at + 4), word(at + 8), word(at + 12)];
    let proto = f[INNER6 + 6];
    Some(IcmpError {
        quoted: FlowKeyOf {
            saddr_be: addr(INNER6 + 8),
            daddr_be: addr(INNER6 + 24),
            sport_be: u16::from_ne_bytes([f[INNER6_L4], f[INNER6_L4 + 1]]),
            dport_be: u16::from_ne_bytes([f[INNER6_L4 + 2], f[INNER6_L4 + 3]]),
            proto,
            _pad: 0,
            _pad2: 0,
        },
        outer_saddr_be: addr(OUTER6 + 8),
        outer_daddr_be: addr(OUTER6 + 24),
        ip_len: (ICMP6 - OUTER6 + payload) as u16,
        ttl: f[OUTER6 + 7],
        tcp_check: proto == PROTO_TCP && payload >= INNER6_TCP_CHECK + 2 - ICMP6,
    })
}

/// [`rewrite`] for an ICMPv6 error: no IP header checksums, but the ICMPv6 one
/// covers the outer addresses through its pseudo-header; the hop limit lowered if
/// `hop`.
#[inline(always)]
pub fn rewrite6(
    data: usize,
    data_end: usize,
    e: &IcmpError<Addr6>,
    r: &Related<Addr6>,
    hop: bool,
) -> Option<()> {
    let frame: *mut [u8; INNER6_L4 + 8] = ptr_at(data, data_end, 0)?;
    let tcp_check = (data, data_end, INNER6_TCP_CHECK);
    // SAFETY: bounds-checked by ptr_at; nothing changes the frame's size here.
    let f = unsafe { &mut *frame };
    let (old, new) = (&e.quoted, &r.quoted);
    let mut icmp = Csum::start(get16(f, ICMP6 + 2));
    quote_l4(
        f,
        INNER6_L4,
        INNER6_UDP_CHECK,
        e.tcp_check,
        tcp_check,
        old,
        new,
        &mut icmp,
    )?;
    old.saddr_be.replace_in(new.saddr_be, &mut icmp);
    old.daddr_be.replace_in(new.daddr_be, &mut icmp);
    e.outer_saddr_be.replace_in(r.saddr_be, &mut icmp);
    e.outer_daddr_be.replace_in(r.daddr_be, &mut icmp);
    f[ICMP6 + 2..ICMP6 + 4].copy_from_slice(&icmp.finish().to_ne_bytes());
    for i in 0..4 {
        let w = 4 * i;
        f[INNER6 + 8 + w..INNER6 + 12 + w].copy_from_slice(&new.saddr_be[i].to_ne_bytes());
        f[INNER6 + 24 + w..INNER6 + 28 + w].copy_from_slice(&new.daddr_be[i].to_ne_bytes());
        f[OUTER6 + 8 + w..OUTER6 + 12 + w].copy_from_slice(&r.saddr_be[i].to_ne_bytes());
        f[OUTER6 + 24 + w..OUTER6 + 28 + w].copy_from_slice(&r.daddr_be[i].to_ne_bytes());
    }
    if hop {
        f[OUTER6 + 7] = f[OUTER6 + 7].wrapping_sub(1);
    }
    Some(())
}
