//! The difference between the entries the maps hold and the entries we want, as an
//! ordered list of writes that never lets the kernel see a frontend pointing at a
//! slot that is not there: new slots before the counts that reach them, counts
//! lowered before the slots beyond them go; and what goes entirely (frontends, the
//! slots no frontend reaches) before anything comes, so that a full map takes a
//! replacement. Both families go through the same entries: a frontend or a slot
//! says which map it belongs to (`LB_*` or `LB6_*`); service-port and backend ids
//! are one space over both, as the counters are.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    Addr6, Backend, Backend6, BackendKey, BackendOf, MAP_BACKENDS, MAP_BACKENDS6, MAP_PORTS,
    MAP_SERVICES, MAP_SERVICES6, ServiceKey, ServiceKey6, ServiceKeyOf, ServiceValue,
};

/// An IPv6 address as the maps hold it (`lb_common::Addr6`).
pub fn addr6(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The IPv6 address an `Addr6` holds.
pub fn ipv6(a: Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A frontend of either family: a key of `LB_SERVICES` or of `LB6_SERVICES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frontend {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl Frontend {
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        fn key<A>(addr_be: A, port: u16, proto: u8) -> ServiceKeyOf<A> {
            ServiceKeyOf {
                addr_be,
                port_be: port.to_be(),
                proto,
                _pad: 0,
            }
        }
        match addr {
            IpAddr::V4(a) => Frontend::V4(key(u32::from(a).to_be(), port, proto)),
            IpAddr::V6(a) => Frontend::V6(key(addr6(a), port, proto)),
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Frontend::V4(k) => Ipv4Addr::from(u32::from_be(k.addr_be)).into(),
            Frontend::V6(k) => ipv6(k.addr_be).into(),
        }
    }

    /// The port, in host order.
    pub fn port(&self) -> u16 {
        match self {
            Frontend::V4(k) => u16::from_be(k.port_be),
            Frontend::V6(k) => u16::from_be(k.port_be),
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            Frontend::V4(k) => k.proto,
            Frontend::V6(k) => k.proto,
        }
    }

    /// The map it is a key of.
    pub fn map(&self) -> &'static str {
        match self {
            Frontend::V4(_) => MAP_SERVICES,
            Frontend::V6(_) => MAP_SERVICES6,
        }
    }
}

/// What a backend slot holds, of either family: a value of `LB_BACKENDS` or of
/// `LB6_BACKENDS` (a service port's slots are all of its frontends' family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    V4(Backend),
    V6(Backend6),
}

impl Slot {
    pub fn new(addr: IpAddr, port: u16, proto: u8, flags: u8, backend_id: u32) -> Self {
        fn value<A>(addr_be: A, port: u16, proto: u8, flags: u8, backend_id: u32) -> BackendOf<A> {
            BackendOf {
                addr_be,
                port_be: port.to_be(),
                proto,
                flags,
                backend_id,
            }
        }
        match addr {
            IpAddr::V4(a) => Slot::V4(value(u32::from(a).to_be(), port, proto, flags, backend_id)),
            IpAddr::V6(a) => Slot::V6(value(addr6(a), port, proto, flags, backend_id)),
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Slot::V4(b) => Ipv4Addr::from(u32::from_be(b.addr_be)).into(),
            Slot::V6(b) => ipv6(b.addr_be).into(),
        }
    }

    /// The port, in host order.
    pub fn port(&self) -> u16 {
        match self {
            Slot::V4(b) => u16::from_be(b.port_be),
            Slot::V6(b) => u16::from_be(b.port_be),
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            Slot::V4(b) => b.proto,
            Slot::V6(b) => b.proto,
        }
    }

    pub fn flags(&self) -> u8 {
        match self {
            Slot::V4(b) => b.flags,
            Slot::V6(b) => b.flags,
        }
    }

    pub fn backend_id(&self) -> u32 {
        match self {
            Slot::V4(b) => b.backend_id,
            Slot::V6(b) => b.backend_id,
        }
    }

    /// The map it is a value of.
    pub fn map(&self) -> &'static str {
        match self {
            Slot::V4(_) => MAP_BACKENDS,
            Slot::V6(_) => MAP_BACKENDS6,
        }
    }
}

/// The contents of the service maps of both families and of `LB_PORTS`: what we
/// want, or what the maps hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub services: BTreeMap<Frontend, ServiceValue>,
    pub backends: BTreeMap<BackendKey, Slot>,
    /// The non-zero words of the frontend-port bitmap (`lb_common::port_bit`).
    pub ports: BTreeMap<u32, u64>,
}

impl Entries {
    /// The slots of service-port `svc_id`, in order.
    pub fn slots(&self, svc_id: u32) -> impl Iterator<Item = (&BackendKey, &Slot)> {
        self.backends.range(
            BackendKey { svc_id, slot: 0 }..=BackendKey {
                svc_id,
                slot: u32::MAX,
            },
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PutBackend(BackendKey, Slot),
    PutService(Frontend, ServiceValue),
    DeleteService(Frontend),
    /// A slot, in the map named (`LB_BACKENDS` or `LB6_BACKENDS`).
    DeleteBackend(BackendKey, &'static str),
    /// One word of the frontend-port bitmap (0 clears it).
    PutPorts(u32, u64),
}

impl Op {
    /// The map the write goes to.
    pub fn map(&self) -> &'static str {
        match self {
            Op::PutBackend(_, v) => v.map(),
            Op::PutService(k, _) | Op::DeleteService(k) => k.map(),
            Op::DeleteBackend(_, map) => map,
            Op::PutPorts(..) => MAP_PORTS,
        }
    }
}

/// The writes that turn `actual` into `desired`, in a safe order; empty when they
/// are equal.
pub fn diff(actual: &Entries, desired: &Entries) -> Vec<Op> {
    // At least one put for each key `desired` holds beyond `actual`'s count, made
    // room for at once: grown write by write, the 1,100,000 writes of a store read
    // whole copied themselves ~20 times and faulted in twice their pages (~0.1 s
    // of the round, on one core).
    let new_keys = desired.backends.len().saturating_sub(actual.backends.len())
        + desired.services.len().saturating_sub(actual.services.len());
    let mut ops = Vec::with_capacity(new_keys);
    // Port bits a new frontend needs go in first (as the union of old and new, so no
    // frontend that still exists loses its bit); the final words after the deletes.
    let words: std::collections::BTreeSet<u32> = actual
        .ports
        .keys()
        .chain(desired.ports.keys())
        .copied()
        .collect();
    let word = |e: &Entries, w: u32| e.ports.get(&w).copied().unwrap_or(0);
    let mut interim = Vec::new();
    for &w in &words {
        let (a, d) = (word(actual, w), word(desired, w));
        if d & !a != 0 {
            ops.push(Op::PutPorts(w, a | d));
        }
        interim.push((w, if d & !a != 0 { a | d } else { a }, d));
    }
    // What goes goes first, where that is safe, so the maps never hold more than
    // the larger of before and after (a full map takes a replacement): frontends
    // no longer wanted, then the slots of service ports no frontend will reach.
    for k in actual.services.keys() {
        if !desired.services.contains_key(k) {
            ops.push(Op::DeleteService(*k));
        }
    }
    let reached: std::collections::BTreeSet<u32> =
        desired.services.values().map(|v| v.svc_id).collect();
    let gone = |k: &BackendKey| !desired.backends.contains_key(k);
    for (k, v) in &actual.backends {
        if gone(k) && !reached.contains(&k.svc_id) {
            ops.push(Op::DeleteBackend(*k, v.map()));
        }
    }
    for (k, v) in &desired.backends {
        if actual.backends.get(k) != Some(v) {
            ops.push(Op::PutBackend(*k, *v));
        }
    }
    for (k, v) in &desired.services {
        if actual.services.get(k) != Some(v) {
            ops.push(Op::PutService(*k, *v));
        }
    }
    // Slots beyond a lowered count, once the count is lowered.
    for (k, v) in &actual.backends {
        if gone(k) && reached.contains(&k.svc_id) {
            ops.push(Op::DeleteBackend(*k, v.map()));
        }
    }
    for (w, written, d) in interim {
        if written != d {
            ops.push(Op::PutPorts(w, d));
        }
    }
    ops
}

/// What `ops` do to `entries` (the agent's record of the maps after writing them).
pub fn replay(entries: &mut Entries, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::PutBackend(k, v) => {
                entries.backends.insert(k, v);
            }
            Op::PutService(k, v) => {
                entries.services.insert(k, v);
            }
            Op::DeleteService(k) => {
                entries.services.remove(&k);
            }
            Op::DeleteBackend(k, _) => {
                entries.backends.remove(&k);
            }
            Op::PutPorts(w, 0) => {
                entries.ports.remove(&w);
            }
            Op::PutPorts(w, bits) => {
                entries.ports.insert(w, bits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::port_bit;

    fn svc(id: u32, count: u32) -> ServiceValue {
        ServiceValue {
            svc_id: id,
            backend_count: count,
            flags: 0,
            affinity_timeout_s: 0,
        }
    }
    fn be(id: u32) -> Slot {
        Slot::V4(Backend {
            addr_be: id,
            port_be: 80,
            proto: 6,
            flags: 0,
            backend_id: id,
        })
    }
    fn fk(port: u16) -> Frontend {
        Frontend::V4(ServiceKey {
            addr_be: 1,
            port_be: port,
            proto: 6,
            _pad: 0,
        })
    }

    #[test]
    fn equal_entries_need_no_writes() {
        let mut e = Entries::default();
        e.services.insert(fk(80), svc(1, 1));
        e.backends.insert(BackendKey { svc_id: 1, slot: 0 }, be(1));
        assert!(diff(&e, &e).is_empty());
    }

    #[test]
    fn growing_writes_slots_before_the_count_and_shrinking_after() {
        let mut small = Entries::default();
        small.services.insert(fk(80), svc(1, 1));
        small
            .backends
            .insert(BackendKey { svc_id: 1, slot: 0 }, be(1));
        let mut big = small.clone();
        big.services.insert(fk(80), svc(1, 2));
        big.backends
            .insert(BackendKey { svc_id: 1, slot: 1 }, be(2));

        let grow = diff(&small, &big);
        assert_eq!(
            grow,
            vec![
                Op::PutBackend(BackendKey { svc_id: 1, slot: 1 }, be(2)),
                Op::PutService(fk(80), svc(1, 2))
            ]
        );
        let shrink = diff(&big, &small);
        assert_eq!(
            shrink,
            vec![
                Op::PutService(fk(80), svc(1, 1)),
                Op::DeleteBackend(BackendKey { svc_id: 1, slot: 1 }, MAP_BACKENDS)
            ]
        );
        let mut e = small.clone();
        replay(&mut e, &grow);
        assert_eq!(e, big);
        replay(&mut e, &shrink);
        assert_eq!(e, small);
    }

    #[test]
    fn port_bits_are_set_before_a_frontend_and_cleared_after_it() {
        let with = |port: u16| {
            let mut e = Entries::default();
            e.services.insert(fk(port.to_be()), svc(1, 1));
            e.backends.insert(BackendKey { svc_id: 1, slot: 0 }, be(1));
            // The frontend's port, and the SNAT range while any frontend exists.
            for p in
                std::iter::once(port).chain(lb_common::SNAT_PORT_MIN..=lb_common::SNAT_PORT_MAX)
            {
                let (w, bit) = port_bit(p);
                *e.ports.entry(w).or_insert(0) |= bit;
            }
            e
        };
        // 80 and 81 share bitmap word 1 (ports 64..127).
        let (bit80, bit81) = (1u64 << (80 % 64), 1u64 << (81 % 64));
        let (old, new) = (with(80), with(81));
        let ops = diff(&old, &new);
        assert_eq!(
            ops,
            vec![
                Op::PutPorts(1, bit80 | bit81),
                Op::DeleteService(fk(80u16.to_be())),
                Op::PutService(fk(81u16.to_be()), svc(1, 1)),
                Op::PutPorts(1, bit81),
            ]
        );
        let mut e = old.clone();
        replay(&mut e, &ops);
        assert_eq!(e, new);
        // Removing the last frontend of a word clears it after the frontend is gone.
        let gone = diff(&new, &Entries::default());
        let delete = gone
            .iter()
            .position(|o| matches!(o, Op::DeleteService(_)))
            .unwrap();
        let clear = gone.iter().position(|o| *o == Op::PutPorts(1, 0)).unwrap();
        assert!(delete < clear, "{gone:?}");
        // The SNAT range is marked while any frontend exists, and cleared with the last.
        let (snat_word, _) = port_bit(lb_common::SNAT_PORT_MIN);
        assert!(new.ports.contains_key(&snat_word));
        assert!(gone.contains(&Op::PutPorts(snat_word, 0)), "{gone:?}");
        replay(&mut e, &gone);
        assert_eq!(e, Entries::default());
    }

    #[test]
    fn what_goes_entirely_goes_before_anything_comes() {
        // Service port 1 is replaced by service port 2: a map with room for one
        // frontend and one slot takes that, as the deletes come first.
        let mut one = Entries::default();
        one.services.insert(fk(80), svc(1, 1));
        one.backends
            .insert(BackendKey { svc_id: 1, slot: 0 }, be(1));
        let mut two = Entries::default();
        two.services.insert(fk(81), svc(2, 1));
        two.backends
            .insert(BackendKey { svc_id: 2, slot: 0 }, be(2));
        let ops = diff(&one, &two);
        assert_eq!(
            ops,
            vec![
                Op::DeleteService(fk(80)),
                Op::DeleteBackend(BackendKey { svc_id: 1, slot: 0 }, MAP_BACKENDS),
                Op::PutBackend(BackendKey { svc_id: 2, slot: 0 }, be(2)),
                Op::PutService(fk(81), svc(2, 1)),
            ]
        );
    }

    #[test]
    fn removing_a_service_deletes_its_frontend_before_its_slots() {
        let mut one = Entries::default();
        one.services.insert(fk(80), svc(1, 1));
        one.backends
            .insert(BackendKey { svc_id: 1, slot: 0 }, be(1));
        let ops = diff(&one, &Entries::default());
        assert_eq!(
            ops,
            vec![
                Op::DeleteService(fk(80)),
                Op::DeleteBackend(BackendKey { svc_id: 1, slot: 0 }, MAP_BACKENDS)
            ]
        );
    }
}
