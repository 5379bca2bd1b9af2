//! ICMP errors about tracked flows (netfilter's RELATED): a "destination
//! unreachable", "time exceeded" or "parameter problem" quoting a packet of a flow
//! lb translates is translated with it, outer and quoted headers, so it reaches the
//! flow's other end about the packet that end sent: a pod's "port unreachable"
//! reaches the client about the service address, a router's "fragmentation needed"
//! reaches the sender it concerns. Without it path MTU discovery through a NodePort
//! breaks and clients never learn a pod is gone.
//!
//! Only the common shape is looked at (IPv4 headers without options, outside and
//! quoted, a TCP or UDP packet quoted with at least its ports); any other ICMP goes
//! on unchanged. Frame (from the start): `[Ethernet 14][IPv4 20][ICMP 8][quoted
//! IPv4 20][quoted L4, 8 or more]`.

use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::{
    clock, conntrack,
    csum::Csum,
    flow::{self, Forward, Hook},
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

/// An ICMP error quoting a TCP or UDP packet.
pub struct IcmpError {
    /// The quoted packet's tuple, as quoted.
    pub quoted: FlowKey,
    pub outer_saddr_be: u32,
    pub outer_daddr_be: u32,
    pub ip_len: u16,
    pub ttl: u8,
    /// The quote holds the TCP checksum (18 bytes of TCP or more).
    tcp_check: bool,
}

/// What a related error becomes: its new outer addresses, the quoted tuple, and
/// how it leaves (as the flow's packets of its direction do).
pub struct Related {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub quoted: FlowKey,
    pub forward: Forward,
    pub svc_id: u32,
    pub backend_id: u32,
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
        quoted: FlowKey {
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
pub fn decide(e: &IcmpError, hook: Hook) -> Option<Related> {
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
        quoted: FlowKey {
            saddr_be: to.daddr_be,
            daddr_be: to.saddr_be,
            sport_be: to.dport_be,
            dport_be: to.sport_be,
            proto: q.proto,
            _pad: 0,
            _pad2: 0,
        },
        forward: flow::forward(ct.flags),
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
    let tcp_check: Option<*mut [u8; 2]> = if e.tcp_check {
        Some(ptr_at(data, data_end, INNER_TCP_CHECK)?)
    } else {
        None
    };
    // SAFETY: bounds-checked by ptr_at; nothing changes the frame's size here.
    let f = unsafe { &mut *frame };
    let (old, new) = (&e.quoted, &r.quoted);
    let get16 = |f: &[u8; INNER_L4 + 8], at: usize| u16::from_ne_bytes([f[at], f[at + 1]]);
    let mut icmp = Csum::start(get16(f, ICMP + 2));

    // The quoted L4 checksum (UDP: in the 8 bytes; TCP: when quoted), over the quoted
    // addresses and ports.
    let l4_update = |check: u16| -> u16 {
        let mut c = Csum::start(check);
        c.replace32(old.saddr_be, new.saddr_be);
        c.replace32(old.daddr_be, new.daddr_be);
        c.replace16(old.sport_be, new.sport_be);
        c.replace16(old.dport_be, new.dport_be);
        c.finish()
    };
    if old.proto == PROTO_UDP {
        let check = get16(f, INNER_UDP_CHECK);
        if check != 0 {
            let next = l4_update(check);
            let next = if next == 0 { 0xffff } else { next };
            icmp.replace16(check, next);
            f[INNER_UDP_CHECK..INNER_UDP_CHECK + 2].copy_from_slice(&next.to_ne_bytes());
        }
    } else if let Some(at) = tcp_check {
        // SAFETY: bounds-checked by ptr_at above.
        let check = u16::from_ne_bytes(unsafe { *at });
        let next = l4_update(check);
        icmp.replace16(check, next);
        // SAFETY: as above.
        unsafe { *at = next.to_ne_bytes() };
    }
    // The quoted ports and addresses, and the quoted IPv4 checksum.
    icmp.replace16(old.sport_be, new.sport_be);
    icmp.replace16(old.dport_be, new.dport_be);
    f[INNER_L4..INNER_L4 + 2].copy_from_slice(&new.sport_be.to_ne_bytes());
    f[INNER_L4 + 2..INNER_L4 + 4].copy_from_slice(&new.dport_be.to_ne_bytes());
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
