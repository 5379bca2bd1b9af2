//! From the objects to what each service port needs, as Kubernetes means it: its
//! frontends (ClusterIP, NodePorts on this node's addresses, LoadBalancer and
//! external IPs) and its endpoints (the ready pods its selector selects, or its
//! EndpointSlices), with the traffic policies applied. Pure: no maps, no files, no
//! clock; the ids and slots of map entries are `entries`' business.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use lb_common::{PROTO_TCP, PROTO_UDP, SVC_F_EXTERNAL_LOCAL, SVC_F_INTERNAL};

use crate::{
    model::{
        Family, ObjectKey, PodFacts, SliceFacts, TYPE_EXTERNAL_NAME, TYPE_LOAD_BALANCER,
        TYPE_NODE_PORT, cluster_ips, service_type,
    },
    state::{Tracked, selector_pair},
    sync::Frontend,
};

/// The node an agent serves: its name and the addresses NodePorts answer on, per
/// family (a family's NodePorts answer on that family's addresses, as kube-proxy's).
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
    pub addrs6: Vec<Ipv6Addr>,
}

impl Node {
    /// The addresses of `family`.
    pub fn addrs_of(&self, family: Family) -> Vec<IpAddr> {
        match family {
            Family::V4 => self.addrs.iter().map(|a| IpAddr::V4(*a)).collect(),
            Family::V6 => self.addrs6.iter().map(|a| IpAddr::V6(*a)).collect(),
        }
    }

    /// Whether an endpoint on `node_name` is on this node. One that names no node is
    /// taken as local (a single-node store need not say where its pods run).
    pub fn hosts(&self, node_name: Option<&str>) -> bool {
        node_name.is_none_or(|n| n.is_empty() || n == self.name)
    }
}

/// One `spec.ports[]` entry of a service in one of its IP families as lb balances
/// it: its frontends and endpoints are all of that family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    pub service: ObjectKey,
    /// [`port_id`] of the port; " (external)" added for the external frontends of a
    /// port whose traffic policies give them other endpoints, " (IPv6)" for the
    /// IPv6 family of a dual-stack service.
    pub port: String,
    pub proto: u8,
    /// Where the service answers: (frontend, `SVC_F_*` flags).
    pub frontends: Vec<(Frontend, u32)>,
    /// Ready endpoints (address, target port), sorted, without duplicates.
    pub endpoints: Vec<(IpAddr, u16)>,
    /// Those of `endpoints`' addresses that live on another node.
    pub remote: BTreeSet<IpAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 for no affinity.
    pub affinity_timeout_s: u32,
}

/// How a service port is named in plans: its name, or its number when unnamed.
pub fn port_id(port: &ServicePort) -> String {
    port.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| port.port.to_string())
}

/// A protocol number's name, as Kubernetes writes it (the inverse of
/// [`proto_number`]).
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

fn proto_number(protocol: &str) -> Option<u8> {
    match protocol {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

pub fn frontend(addr: impl Into<IpAddr>, port: u16, proto: u8) -> Frontend {
    Frontend::new(addr.into(), port, proto)
}

/// The plans of `services` on `node` (those gone plan to nothing), in their order;
/// many services are planned on every core. Headless and ExternalName services get
/// none (they are DNS-only in Kubernetes).
pub fn plan<'a>(
    tracked: &Tracked,
    node: &Node,
    services: impl IntoIterator<Item = &'a ObjectKey>,
) -> Vec<PortPlan> {
    let services: Vec<(&ObjectKey, &Service)> = services
        .into_iter()
        .filter_map(|k| Some((k, tracked.state.services.get(k)?)))
        .collect();
    crate::par::in_parallel(services, |(k, svc)| plan_service(tracked, k, svc, node))
        .into_iter()
        .flatten()
        .collect()
}

/// The plans of every service.
pub fn plan_all(tracked: &Tracked, node: &Node) -> Vec<PortPlan> {
    plan(tracked, node, tracked.state.services.keys())
}

/// The ready pods `svc`'s selector selects, found through the index by the
/// selector's first pair.
fn selected_pods<'a>(tracked: &'a Tracked, key: &ObjectKey, svc: &Service) -> Vec<&'a PodFacts> {
    let Some(pair) = selector_pair(key, svc) else {
        return Vec::new();
    };
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
    tracked
        .index
        .pods_with(&pair)
        .filter_map(|k| tracked.state.pods.get(k))
        .filter(|p| p.ready && p.selected_by(selector))
        .collect()
}

/// The endpoints a service port without a selector takes from its EndpointSlices:
/// the addresses of `family` of the slice port with the same name and protocol
/// (slices of that `addressType`). Ready
/// endpoints serve; when none is ready, serving endpoints that are terminating do
/// (as kube-proxy does). Conditions left unset count as ready and serving.
fn slice_endpoints(
    slices: &[&SliceFacts],
    port_name: &str,
    protocol: &str,
    node: &Node,
    family: Family,
) -> BTreeMap<(IpAddr, u16), bool> {
    let (mut ready, mut terminating) = (BTreeMap::new(), BTreeMap::new());
    for slice in slices
        .iter()
        .filter(|s| Family::parse(&s.address_type) == Some(family))
    {
        let Some(port) = slice
            .ports
            .iter()
            .find(|(name, proto, _)| **name == *port_name && **proto == *protocol)
            .map(|(_, _, port)| *port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let into = if ep.ready && !ep.terminating {
                &mut ready
            } else if ep.serving && ep.terminating {
                &mut terminating
            } else {
                continue;
            };
            let local = node.hosts(ep.node_name.as_deref());
            let addrs = ep.addresses.iter().filter(|a| Family::of(**a) == family);
            into.extend(addrs.map(|a| ((*a, port), local)));
        }
    }
    if ready.is_empty() { terminating } else { ready }
}

fn plan_service(tracked: &Tracked, key: &ObjectKey, svc: &Service, node: &Node) -> Vec<PortPlan> {
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        return Vec::new();
    }
    let ips = cluster_ips(svc);
    // A dual-stack service's second family is named in its ports' plans.
    let dual = ips.len() > 1;
    ips.into_iter()
        .flat_map(|ip| {
            let suffix = if dual && ip.is_ipv6() { " (IPv6)" } else { "" };
            plan_family(tracked, key, svc, node, ip, suffix)
        })
        .collect()
}

/// The plans of `svc` in the family of its ClusterIP `cluster_ip`: that family's
/// frontends (the ClusterIP, the node's addresses of the family for NodePorts, the
/// LoadBalancer and external IPs of the family) and endpoints (the selected pods'
/// addresses of the family, or the EndpointSlices of that `addressType`).
fn plan_family(
    tracked: &Tracked,
    key: &ObjectKey,
    svc: &Service,
    node: &Node,
    cluster_ip: IpAddr,
    suffix: &str,
) -> Vec<PortPlan> {
    let state = &tracked.state;
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let family = Family::of(cluster_ip);
    let ty = service_type(svc);
    let has_selector =
        !state.endpoints_from_slices && spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    let selected = if has_selector {
        selected_pods(tracked, key, svc)
    } else {
        Vec::new()
    };
    let slices: Vec<&SliceFacts> = if has_selector {
        Vec::new()
    } else {
        tracked
            .index
            .slices_of(key)
            .filter_map(|k| state.endpoint_slices.get(k))
            .collect()
    };
    let external = ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER;
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        timeout
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    } else {
        0
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    // LoadBalancer addresses and external IPs answer on the service port itself.
    let lb_addrs: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .cloned()
        .chain(
            svc.status
                .iter()
                .flat_map(|s| s.load_balancer.iter())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.ip.clone()),
        )
        .filter_map(|a| a.parse().ok())
        .filter(|a| Family::of(*a) == family)
        .collect();
    let node_addrs = node.addrs_of(family);
    let mut plans = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let (Some(proto), Ok(port)) = (proto_number(protocol), u16::try_from(p.port)) else {
            continue;
        };
        let ext_flags = if external_local {
            SVC_F_EXTERNAL_LOCAL
        } else {
            0
        };
        let mut ext_frontends: Vec<(Frontend, u32)> = lb_addrs
            .iter()
            .map(|a| (frontend(*a, port, proto), ext_flags))
            .collect();
        if external && let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
            ext_frontends.extend(
                node_addrs
                    .iter()
                    .map(|a| (frontend(*a, np, proto), ext_flags)),
            );
        }
        let target = p
            .target_port
            .clone()
            .unwrap_or(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port));
        // With a selector, the pods it selects; without, the service's EndpointSlices.
        // Each with whether it lives on this node.
        let endpoints: BTreeMap<(IpAddr, u16), bool> = if has_selector {
            selected
                .iter()
                .filter_map(|pod| {
                    let local = node.hosts(pod.node_name.as_deref());
                    let addr = pod.ready_addr(family)?;
                    Some(((addr, pod.target_port(&target, protocol)?), local))
                })
                .collect()
        } else {
            let name = p.name.as_deref().unwrap_or("");
            slice_endpoints(&slices, name, protocol, node, family)
        };
        let all: Vec<(IpAddr, u16)> = endpoints.keys().copied().collect();
        let local: Vec<(IpAddr, u16)> = endpoints
            .iter()
            .filter(|(_, local)| **local)
            .map(|(e, _)| *e)
            .collect();
        let remote: BTreeSet<IpAddr> = endpoints
            .iter()
            .filter(|(_, local)| !**local)
            .map(|((a, _), _)| *a)
            .collect();
        let internal_eps = if internal_local {
            local.clone()
        } else {
            all.clone()
        };
        let external_eps = if external_local { local } else { all };
        let name = format!("{}{suffix}", port_id(p));
        let cluster = (frontend(cluster_ip, port, proto), SVC_F_INTERNAL);
        let make =
            |port: String, frontends: Vec<(Frontend, u32)>, eps: Vec<(IpAddr, u16)>| PortPlan {
                service: key.clone(),
                port,
                proto,
                frontends,
                endpoints: eps,
                remote: remote.clone(),
                affinity_timeout_s,
            };
        // One set of backends serves every frontend unless a traffic policy makes the
        // external ones see other endpoints than the ClusterIP.
        if ext_frontends.is_empty() || internal_eps == external_eps {
            let mut frontends = vec![cluster];
            frontends.extend(ext_frontends);
            plans.push(make(name, frontends, internal_eps));
        } else {
            plans.push(make(name.clone(), vec![cluster], internal_eps));
            plans.push(make(
                format!("{} (external){suffix}", port_id(p)),
                ext_frontends,
                external_eps,
            ));
        }
    }
    plans
}

#[cfg(test)]
mod tests;
