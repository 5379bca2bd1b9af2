//! Fragmented datagrams. Only the first fragment carries the L4 header; its ports are
//! remembered under the datagram's identity (source, destination, protocol, IP id)
//! so that later fragments find the same flow and are translated the same way (their
//! IPv4 header only). As with Cilium's fragment tracking, a later fragment that
//! arrives before its first finds nothing and goes to the kernel unchanged.

use lb_common::{FragKey, FragValue, reason};

use crate::{
    maps::LB_FRAGS,
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

/// Fills in a later fragment's ports; records a first fragment's. Whole packets
/// (nearly all) are not looked at. `Err(PASS_FRAGMENT)`: a later fragment whose
/// first was not seen.
#[inline(always)]
pub fn resolve(p: &mut Packet) -> Result<(), u32> {
    if p.frag == Frag::Whole {
        return Ok(());
    }
    let key = FragKey {
        saddr_be: p.key.saddr_be,
        daddr_be: p.key.daddr_be,
        id_be: p.ip_id_be,
        proto: p.key.proto,
        _pad: 0,
    };
    if p.frag == Frag::First {
        let ports = FragValue {
            sport_be: p.key.sport_be,
            dport_be: p.key.dport_be,
        };
        // Best effort: a full (LRU) map forgets the oldest datagram, whose later
        // fragments then pass unchanged.
        let _ = LB_FRAGS.insert(key, ports, 0);
        return Ok(());
    }
    // SAFETY: the value is read at once, not kept across helper calls.
    match unsafe { LB_FRAGS.get(key) } {
        Some(ports) => {
            p.key.sport_be = ports.sport_be;
            p.key.dport_be = ports.dport_be;
            Ok(())
        }
        None => Err(reason::PASS_FRAGMENT),
    }
}
