//! Fragmented datagrams. Only the first fragment carries the L4 header; its ports are
//! remembered under the datagram's identity (source, destination, protocol, and the
//! IPv4 header's or the IPv6 Fragment header's identification) so that later
//! fragments find the same flow and are translated the same way (their IP header
//! only). As with Cilium's fragment tracking, a later fragment that arrives before
//! its first finds nothing and goes to the kernel unchanged.

use lb_common::{Addr6, FragValue, reason};

use crate::{
    family::Family,
    parse::{self, Frag, Packet},
    stats,
};

/// The packet between `data` and `data_end` (of `len` bytes in all) with its ports, a later fragment's
/// taken from its first fragment; None when it is not one lb looks at (not IPv4
/// TCP/UDP, malformed, a fragment whose first was not seen), counted under its
/// reason and to be passed on unchanged. Every hook starts with it.
#[inline(always)]
pub fn packet(data: usize, data_end: usize, len: usize) -> Option<Packet> {
    let mut p = match parse::parse(data, data_end, len) {
        Ok(p) => p,
        Err(reason) => {
            stats::verdict(reason, 0);
            return None;
        }
    };
    if let Err(reason) = resolve(&mut p) {
        stats::verdict(reason, p.ip_len);
        return None;
    }
    Some(p)
}

/// The IPv6 [`packet`], written to `out` (map memory, see `flow::Work6`): 0, or
/// the reason the packet is not one lb looks at (for the caller to count). A
/// subprogram of its own.
#[inline(never)]
pub fn packet6_into(data: usize, data_end: usize, len: usize, out: &mut Packet<Addr6>) -> u32 {
    match parse::parse6(data, data_end, len) {
        Ok(p) => {
            *out = p;
            match resolve(out) {
                Ok(()) => 0,
                Err(reason) => reason,
            }
        }
        Err(reason) => reason,
    }
}

/// Fills in a later fragment's ports; records a first fragment's. Whole packets
/// (nearly all) are not looked at. `Err(PASS_FRAGMENT)`: a later fragment whose
/// first was not seen.
#[inline(always)]
pub fn resolve<A: Family>(p: &mut Packet<A>) -> Result<(), u32> {
    if p.frag == Frag::Whole {
        return Ok(());
    }
    let key = A::frag_key(&p.key, p.frag_id_be);
    if p.frag == Frag::First {
        let ports = FragValue {
            sport_be: p.key.sport_be,
            dport_be: p.key.dport_be,
        };
        // Best effort: a full (LRU) map forgets the oldest datagram, whose later
        // fragments then pass unchanged.
        let _ = A::frags().insert(&key, ports, 0);
        return Ok(());
    }
    // SAFETY: the value is read at once, not kept across helper calls.
    match unsafe { A::frags().get(&key) } {
        Some(ports) => {
            p.key.sport_be = ports.sport_be;
            p.key.dport_be = ports.dport_be;
            Ok(())
        }
        None => Err(reason::PASS_FRAGMENT),
    }
}
