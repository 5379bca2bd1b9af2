//! `lb trace`: what this node's data plane would do with one packet, read from the
//! live maps without changing them, decided as the programs decide (`lb-ebpf`'s
//! `flow::decide` at an ingress hook): the frontend, an existing flow or the backend
//! a new flow would get (each with its probability), ClientIP affinity, the
//! translation, the verdict reason the packet would be counted under, and how it
//! would leave. A TCP packet is taken as a connection's SYN when no flow exists.
//! Idle timeouts are not checked: an entry is taken as live (the programs would
//! start a new flow for an expired one).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use lb_common::{
    AffinityKey, AffinityValue, BE_F_REMOTE, Backend, CT_DIR_REPLY, CT_F_HAIRPIN, CT_F_SNAT,
    CtValue, FlowKey, HAIRPIN_SNAT_ADDR, IFACE_F_PEER, IFACE_F_XDP_XMIT, IFACE_POD, IfaceValue,
    SVC_F_AFFINITY, SVC_F_EXTERNAL_LOCAL, SVC_F_INTERNAL, ServiceKey, ServiceValue, reason,
};
use serde::Serialize;

use crate::maps::Maps;

/// The lookups a trace makes (the live maps, or a test's).
pub trait View {
    fn port_served(&self, port: u16) -> Result<bool>;
    fn frontend(&self, key: &ServiceKey) -> Result<Option<ServiceValue>>;
    fn slot(&self, svc_id: u32, slot: u32) -> Result<Option<Backend>>;
    /// A flow entry and whether it is assured.
    fn flow(&self, key: &FlowKey) -> Result<Option<(CtValue, bool)>>;
    fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>>;
    fn iface(&self, ifindex: u32) -> Result<Option<IfaceValue>>;
}

impl View for Maps {
    fn port_served(&self, port: u16) -> Result<bool> {
        Ok(Maps::port_served(self, port)?)
    }
    fn frontend(&self, key: &ServiceKey) -> Result<Option<ServiceValue>> {
        Ok(Maps::frontend(self, key)?)
    }
    fn slot(&self, svc_id: u32, slot: u32) -> Result<Option<Backend>> {
        Ok(Maps::slot(self, svc_id, slot)?)
    }
    fn flow(&self, key: &FlowKey) -> Result<Option<(CtValue, bool)>> {
        Ok(self.conntrack_entry_where(key)?)
    }
    fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        Ok(Maps::affinity(self, key)?)
    }
    fn iface(&self, ifindex: u32) -> Result<Option<IfaceValue>> {
        Ok(Maps::iface(self, ifindex)?)
    }
}

/// The packet traced.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
}

/// An interface, by the routes of the node: (name, ifindex).
pub type Iface = (String, u32);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trace {
    /// The interface the packet would come in on (the route back to its source) and
    /// what lb knows it as: "external", "pod", or "not attached".
    pub ingress: Option<String>,
    pub ingress_role: &'static str,
    /// The frontend (`address:port/protocol`) and its service port id, if one.
    pub frontend: Option<String>,
    pub svc_id: Option<u32>,
    /// The service port, when the caller knows which (the store's).
    pub service: Option<String>,
    /// An existing flow the packet belongs to: "original" or "reply", and whether
    /// its backend has answered (assured).
    pub flow: Option<&'static str>,
    pub assured: bool,
    /// The backends a new flow would go to, with their probabilities.
    pub candidates: Vec<Candidate>,
    /// ClientIP affinity: the backend this client's last flow went to, if it still
    /// holds its slot (a new flow goes there).
    pub affinity: Option<String>,
    /// The packet as rewritten (`src -> dst`), if it is.
    pub translated: Option<String>,
    /// How the source is rewritten: "none", "node address" (SNAT), "hairpin".
    pub snat: &'static str,
    /// The verdict reason the packet is counted under (`lb stats`' names).
    pub verdict: &'static str,
    /// How it leaves.
    pub forward: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub backend: String,
    pub probability: f64,
    /// On another node (reached through this one, SNAT for outside clients).
    pub remote: bool,
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

fn ep(addr_be: u32, port_be: u16) -> String {
    format!("{}:{}", addr(addr_be), u16::from_be(port_be))
}

/// Traces `p`. `route(addr)`: the interface the node routes `addr` out of.
pub fn trace(
    view: &impl View,
    p: &Probe,
    route: impl Fn(Ipv4Addr) -> Option<Iface>,
) -> Result<Trace> {
    let ingress = route(*p.src.ip());
    let role = match &ingress {
        Some((_, ifindex)) => view.iface(*ifindex)?.map(|v| v.role),
        None => None,
    };
    let from_pod = role.is_some_and(|r| r & IFACE_POD != 0);
    let mut t = Trace {
        ingress: ingress.as_ref().map(|(n, _)| n.clone()),
        ingress_role: match role {
            Some(r) if r & IFACE_POD != 0 => "pod",
            Some(_) => "external",
            None => "not attached",
        },
        frontend: None,
        svc_id: None,
        service: None,
        flow: None,
        assured: false,
        candidates: Vec::new(),
        affinity: None,
        translated: None,
        snat: "none",
        verdict: reason::NAMES[reason::PASS_NO_SERVICE as usize],
        forward: "the kernel's stack, untouched".into(),
    };
    let key = FlowKey {
        saddr_be: u32::from(*p.src.ip()).to_be(),
        daddr_be: u32::from(*p.dst.ip()).to_be(),
        sport_be: p.src.port().to_be(),
        dport_be: p.dst.port().to_be(),
        proto: p.proto,
        _pad: 0,
        _pad2: 0,
    };
    let hairpin_reply = p.dst.ip().octets() == HAIRPIN_SNAT_ADDR;
    if !view.port_served(p.dst.port())? && !hairpin_reply {
        return Ok(t);
    }
    if let Some((ct, assured)) = view.flow(&key)? {
        t.assured = assured;
        t.svc_id = Some(ct.svc_id);
        let reply = ct.direction == CT_DIR_REPLY;
        t.flow = Some(if reply { "reply" } else { "original" });
        let to = format!(
            "{} -> {}",
            ep(ct.nat_saddr_be, ct.nat_sport_be),
            ep(ct.nat_daddr_be, ct.nat_dport_be)
        );
        let at_ingress = !reply || ct.flags & (CT_F_HAIRPIN | CT_F_SNAT) != 0;
        if at_ingress {
            t.translated = Some(to);
            t.verdict = reason::NAMES[if reply {
                reason::NAT_REPLY
            } else {
                reason::NAT_ESTABLISHED
            } as usize];
            t.forward = forward(view, &route, ct.nat_daddr_be, ct.flags)?;
        } else {
            // A plain reply: the egress hook translates it after the kernel routed it.
            t.verdict = reason::NAMES[reason::PASS_REPLY_INGRESS as usize];
            t.forward = format!("the kernel's stack; translated at egress to {to} (nat_reply)");
        }
        return Ok(t);
    }
    if p.proto == lb_common::PROTO_TCP {
        t.forward = "the kernel's stack, untouched (taken as a SYN)".into();
    }
    let fk = ServiceKey {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: p.proto,
        _pad: 0,
    };
    let Some(svc) = view.frontend(&fk)? else {
        return Ok(t);
    };
    t.frontend = Some(format!("{}/{}", p.dst, crate::plan::proto_name(p.proto)));
    t.svc_id = Some(svc.svc_id);
    if svc.flags & SVC_F_INTERNAL != 0 && !from_pod {
        t.verdict = reason::NAMES[reason::PASS_INTERNAL_ONLY as usize];
        return Ok(t);
    }
    if svc.backend_count == 0 {
        if svc.flags & SVC_F_EXTERNAL_LOCAL != 0 {
            t.verdict = reason::NAMES[reason::DROP_NO_LOCAL_BACKEND as usize];
            t.forward = "dropped (externalTrafficPolicy: Local, no endpoint here)".into();
        } else {
            t.verdict = reason::NAMES[reason::REJECT_NO_BACKEND as usize];
            t.forward = "answered: ICMP port unreachable (no endpoints)".into();
        }
        return Ok(t);
    }
    // Slots are chosen uniformly; a backend in several slots is that much likelier.
    let mut slots: Vec<(Backend, u32)> = Vec::new();
    for slot in 0..svc.backend_count {
        let Some(b) = view.slot(svc.svc_id, slot)? else {
            continue;
        };
        match slots.iter_mut().find(|(s, _)| s.backend_id == b.backend_id) {
            Some((_, n)) => *n += 1,
            None => slots.push((b, 1)),
        }
    }
    if slots.is_empty() {
        t.verdict = reason::NAMES[reason::PASS_NO_SLOT as usize];
        return Ok(t);
    }
    let mut chosen = None;
    if svc.flags & SVC_F_AFFINITY != 0 {
        let ak = AffinityKey {
            client_addr_be: key.saddr_be,
            svc_id: svc.svc_id,
        };
        if let Some(a) = view.affinity(&ak)?
            && a.slot < svc.backend_count
            && let Some(b) = view.slot(svc.svc_id, a.slot)?
            && b.backend_id == a.backend_id
        {
            t.affinity = Some(ep(b.addr_be, b.port_be));
            chosen = Some(b);
        }
    }
    let total = svc.backend_count as f64;
    t.candidates = match chosen {
        Some(b) => vec![Candidate {
            backend: ep(b.addr_be, b.port_be),
            probability: 1.0,
            remote: b.flags & BE_F_REMOTE != 0,
        }],
        None => slots
            .iter()
            .map(|(b, n)| Candidate {
                backend: ep(b.addr_be, b.port_be),
                probability: f64::from(*n) / total,
                remote: b.flags & BE_F_REMOTE != 0,
            })
            .collect(),
    };
    // Without affinity, the slot the flow's tuple hashes to, as the kernel side
    // picks it (`lb_common::flow_slot`).
    let slot = lb_common::flow_slot(
        lb_common::fold4(key.saddr_be, key.daddr_be),
        key.sport_be,
        key.dport_be,
        key.proto,
        svc.backend_count,
    );
    let Some(b) = chosen.or(view.slot(svc.svc_id, slot)?) else {
        t.verdict = reason::NAMES[reason::PASS_NO_SLOT as usize];
        return Ok(t);
    };
    // The source as `flow::decide` rewrites it.
    let (snat, flags, src) = if from_pod && b.addr_be == key.saddr_be {
        (
            "hairpin",
            CT_F_HAIRPIN,
            format!("{}:{}", Ipv4Addr::from(HAIRPIN_SNAT_ADDR), p.src.port()),
        )
    } else if b.flags & BE_F_REMOTE != 0 && !from_pod {
        ("node address", CT_F_SNAT, "NODE:PORT".to_string())
    } else {
        ("none", 0, p.src.to_string())
    };
    t.snat = snat;
    t.translated = Some(format!("{src} -> {}", ep(b.addr_be, b.port_be)));
    t.verdict = reason::NAMES[reason::NAT_NEW_FLOW as usize];
    t.forward = forward(view, &route, b.addr_be, flags)?;
    // A flow lb has not seen answered is known by its reply entry alone until its
    // second packet (`conntrack`'s notes): this packet would continue it.
    if flags & CT_F_SNAT == 0 {
        let nat_saddr_be = if flags & CT_F_HAIRPIN != 0 {
            u32::from_ne_bytes(HAIRPIN_SNAT_ADDR)
        } else {
            key.saddr_be
        };
        let reply_key = FlowKey {
            saddr_be: b.addr_be,
            daddr_be: nat_saddr_be,
            sport_be: b.port_be,
            dport_be: key.sport_be,
            ..key
        };
        if let Some((ct, _)) = view.flow(&reply_key)?
            && ct.is_reply_of(&key, svc.svc_id)
        {
            t.flow = Some("original (known by its reply entry)");
            t.verdict = reason::NAMES[reason::NAT_ESTABLISHED as usize];
        }
    }
    Ok(t)
}

/// How a translated packet to `to_be` leaves, by its flow's flags and the role the
/// agent gave the interface the node routes it out of.
fn forward(
    view: &impl View,
    route: &impl Fn(Ipv4Addr) -> Option<Iface>,
    to_be: u32,
    ct_flags: u8,
) -> Result<String> {
    if ct_flags & CT_F_HAIRPIN != 0 {
        return Ok("straight back out of the interface it came in on (hairpin)".into());
    }
    let Some((name, ifindex)) = route(addr(to_be)) else {
        return Ok(format!("no route to {}", addr(to_be)));
    };
    if ct_flags & CT_F_SNAT != 0 {
        return Ok(format!(
            "bpf_fib_lookup, then out of {name} (XDP_REDIRECT where XDP may, else TC's bpf_redirect_neigh)"
        ));
    }
    let role = view.iface(ifindex)?.map_or(0, |v| v.role);
    Ok(if role & IFACE_F_XDP_XMIT != 0 {
        format!("XDP_REDIRECT into {name}, the pod's veth (fwd_xdp_redirect)")
    } else if role & IFACE_F_PEER != 0 {
        format!("TC hands it to the pod's end of {name} (bpf_redirect_peer, fwd_tc_peer)")
    } else {
        format!("the kernel's stack routes it out of {name}")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_common::{CtValue, IFACE_EXTERNAL, PROTO_TCP};

    use super::*;

    /// Maps as a test writes them.
    #[derive(Default)]
    struct Fake {
        ports: Vec<u16>,
        frontends: BTreeMap<(u32, u16), ServiceValue>,
        slots: BTreeMap<(u32, u32), Backend>,
        flows: Vec<(FlowKey, CtValue)>,
        ifaces: BTreeMap<u32, u32>,
    }

    impl View for Fake {
        fn port_served(&self, port: u16) -> Result<bool> {
            Ok(self.ports.contains(&port))
        }
        fn frontend(&self, k: &ServiceKey) -> Result<Option<ServiceValue>> {
            Ok(self.frontends.get(&(k.addr_be, k.port_be)).copied())
        }
        fn slot(&self, svc_id: u32, slot: u32) -> Result<Option<Backend>> {
            Ok(self.slots.get(&(svc_id, slot)).copied())
        }
        fn flow(&self, key: &FlowKey) -> Result<Option<(CtValue, bool)>> {
            Ok(self
                .flows
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (*v, true)))
        }
        fn affinity(&self, _: &AffinityKey) -> Result<Option<AffinityValue>> {
            Ok(None)
        }
        fn iface(&self, ifindex: u32) -> Result<Option<IfaceValue>> {
            Ok(self
                .ifaces
                .get(&ifindex)
                .map(|role| IfaceValue { role: *role }))
        }
    }

    fn be(a: &str) -> u32 {
        u32::from(a.parse::<Ipv4Addr>().unwrap()).to_be()
    }

    fn backend(a: &str, id: u32, flags: u8) -> Backend {
        Backend {
            addr_be: be(a),
            port_be: 8080u16.to_be(),
            proto: PROTO_TCP,
            flags,
            backend_id: id,
        }
    }

    /// A NodePort 192.168.1.2:30080 with two slots for one local pod and one for a
    /// remote one; eth0 (1) external, lxc0 (2) a pod veth.
    fn node() -> Fake {
        let mut f = Fake::default();
        f.ports.push(30080);
        f.frontends.insert(
            (be("192.168.1.2"), 30080u16.to_be()),
            ServiceValue {
                svc_id: 7,
                backend_count: 3,
                ..Default::default()
            },
        );
        f.slots.insert((7, 0), backend("10.244.0.2", 1, 0));
        f.slots.insert((7, 1), backend("10.244.0.2", 1, 0));
        f.slots
            .insert((7, 2), backend("10.244.1.2", 2, BE_F_REMOTE));
        f.ifaces.insert(1, IFACE_EXTERNAL);
        f.ifaces.insert(2, IFACE_POD | IFACE_F_PEER);
        f
    }

    fn route(a: Ipv4Addr) -> Option<Iface> {
        if a.octets()[..3] == [10, 244, 0] {
            Some(("lxc0".into(), 2))
        } else {
            Some(("eth0".into(), 1))
        }
    }

    fn probe(src: &str, dst: &str) -> Probe {
        Probe {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: PROTO_TCP,
        }
    }

    #[test]
    fn a_new_flow_gets_each_backend_with_its_share_of_the_slots() {
        let t = trace(
            &node(),
            &probe("192.168.1.10:40000", "192.168.1.2:30080"),
            route,
        )
        .unwrap();
        assert_eq!(t.verdict, "nat_new_flow");
        assert_eq!(t.ingress_role, "external");
        assert_eq!(t.svc_id, Some(7));
        let shares: Vec<(&str, f64, bool)> = t
            .candidates
            .iter()
            .map(|c| (c.backend.as_str(), c.probability, c.remote))
            .collect();
        assert_eq!(
            shares,
            [
                ("10.244.0.2:8080", 2.0 / 3.0, false),
                ("10.244.1.2:8080", 1.0 / 3.0, true)
            ]
        );
        assert!(t.forward.contains("bpf_redirect_peer"), "{}", t.forward);
    }

    /// The backend a new flow gets is the one the kernel side picks (the slot its
    /// tuple hashes to), and a packet of a flow known by its reply entry alone
    /// continues it.
    #[test]
    fn a_new_flow_goes_where_its_tuple_hashes_and_its_reply_entry_continues_it() {
        let mut f = node();
        let mut local_port = None;
        for port in 40000u16..40060 {
            let p = probe(&format!("192.168.1.10:{port}"), "192.168.1.2:30080");
            let t = trace(&f, &p, route).unwrap();
            let slot = lb_common::flow_slot(
                lb_common::fold4(be("192.168.1.10"), be("192.168.1.2")),
                port.to_be(),
                30080u16.to_be(),
                PROTO_TCP,
                3,
            );
            let want = addr(f.slots[&(7, slot)].addr_be);
            let to = t.translated.unwrap();
            assert!(
                to.ends_with(&format!("-> {want}:8080")),
                "port {port}: {to}"
            );
            if slot == 0 {
                local_port.get_or_insert(port);
            }
        }
        let port = local_port.expect("some flow hashes to slot 0");
        f.flows.push((
            FlowKey {
                saddr_be: be("10.244.0.2"),
                daddr_be: be("192.168.1.10"),
                sport_be: 8080u16.to_be(),
                dport_be: port.to_be(),
                proto: PROTO_TCP,
                _pad: 0,
                _pad2: 0,
            },
            CtValue {
                nat_saddr_be: be("192.168.1.2"),
                nat_daddr_be: be("192.168.1.10"),
                nat_sport_be: 30080u16.to_be(),
                nat_dport_be: port.to_be(),
                svc_id: 7,
                direction: CT_DIR_REPLY,
                ..Default::default()
            },
        ));
        let p = probe(&format!("192.168.1.10:{port}"), "192.168.1.2:30080");
        let t = trace(&f, &p, route).unwrap();
        assert_eq!(t.verdict, "nat_established");
        assert_eq!(t.flow, Some("original (known by its reply entry)"));
    }

    #[test]
    fn no_frontend_port_an_existing_flow_and_no_endpoints_are_told_apart() {
        let mut f = node();
        let t = trace(&f, &probe("192.168.1.10:40000", "192.168.1.2:22"), route).unwrap();
        assert_eq!((t.verdict, t.frontend), ("pass_no_service", None));

        let p = probe("192.168.1.10:40001", "192.168.1.2:30080");
        f.flows.push((
            FlowKey {
                saddr_be: be("192.168.1.10"),
                daddr_be: be("192.168.1.2"),
                sport_be: 40001u16.to_be(),
                dport_be: 30080u16.to_be(),
                proto: PROTO_TCP,
                _pad: 0,
                _pad2: 0,
            },
            CtValue {
                nat_saddr_be: be("192.168.1.10"),
                nat_daddr_be: be("10.244.0.2"),
                nat_sport_be: 40001u16.to_be(),
                nat_dport_be: 8080u16.to_be(),
                svc_id: 7,
                ..Default::default()
            },
        ));
        let t = trace(&f, &p, route).unwrap();
        assert_eq!(t.verdict, "nat_established");
        assert_eq!(t.flow, Some("original"));
        assert_eq!(
            t.translated.as_deref(),
            Some("192.168.1.10:40001 -> 10.244.0.2:8080")
        );

        f.frontends.values_mut().for_each(|v| v.backend_count = 0);
        let t = trace(&f, &probe("192.168.1.10:40002", "192.168.1.2:30080"), route).unwrap();
        assert_eq!(t.verdict, "reject_no_backend");
        f.frontends
            .values_mut()
            .for_each(|v| v.flags = SVC_F_EXTERNAL_LOCAL);
        let t = trace(&f, &probe("192.168.1.10:40002", "192.168.1.2:30080"), route).unwrap();
        assert_eq!(t.verdict, "drop_no_local_backend");
    }

    #[test]
    fn a_cluster_ip_serves_pods_only_and_a_pod_reaching_itself_hairpins() {
        let mut f = node();
        f.ports.push(80);
        f.frontends.insert(
            (be("10.96.0.10"), 80u16.to_be()),
            ServiceValue {
                svc_id: 8,
                backend_count: 1,
                flags: SVC_F_INTERNAL,
                ..Default::default()
            },
        );
        f.slots.insert((8, 0), backend("10.244.0.2", 1, 0));
        let t = trace(&f, &probe("192.168.1.10:40000", "10.96.0.10:80"), route).unwrap();
        assert_eq!(t.verdict, "pass_internal_only");
        let t = trace(&f, &probe("10.244.0.2:40000", "10.96.0.10:80"), route).unwrap();
        assert_eq!(
            (t.verdict, t.ingress_role, t.snat),
            ("nat_new_flow", "pod", "hairpin")
        );
    }
}
