//! Allocation as the API server's allocators do it: ClusterIPs from the service
//! CIDR and nodePorts from their range (requested values checked, others at random,
//! never one twice), and LoadBalancer addresses from the agents' pools. Pure: it
//! reads and changes a [`State`], never the disk.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    ops::RangeInclusive,
};

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus,
};
use rand::Rng as _;

use crate::{
    model::{
        CLUSTER_IP_NONE, FieldError, ObjectKey, TYPE_EXTERNAL_NAME, TYPE_LOAD_BALANCER,
        TYPE_NODE_PORT, cluster_ip, service_type,
    },
    state::State,
};

/// What the API server would be configured with: where ClusterIPs and nodePorts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub service_cidr: (Ipv4Addr, u8),
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation {
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            node_ports: 30000..=32767,
        }
    }
}

impl Allocation {
    pub fn cidr_contains(&self, ip: Ipv4Addr) -> bool {
        let (net, len) = self.service_cidr;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(net) & mask
    }

    pub fn cidr_string(&self) -> String {
        format!("{}/{}", self.service_cidr.0, self.service_cidr.1)
    }

    pub fn node_ports_string(&self) -> String {
        format!("{}-{}", self.node_ports.start(), self.node_ports.end())
    }
}

/// The ranges a write or a command asks for (flags, environment); unset ones are
/// the store's own, or for a new store the API server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    pub service_cidr: Option<(Ipv4Addr, u8)>,
    pub node_ports: Option<RangeInclusive<u16>>,
}

impl From<Allocation> for Ranges {
    fn from(a: Allocation) -> Self {
        Ranges {
            service_cidr: Some(a.service_cidr),
            node_ports: Some(a.node_ports),
        }
    }
}

impl Ranges {
    /// The ranges a write allocates from: the store's (`stored`), which a range
    /// asked for must equal (they change only through `Store::set_ranges`, which
    /// checks the services); for a new store, those asked for or the defaults.
    pub fn resolve(&self, stored: Option<&Allocation>) -> Result<Allocation, String> {
        let Some(stored) = stored else {
            return Ok(self.over(&Allocation::default()));
        };
        let asked = self.over(stored);
        if asked != *stored {
            return Err(format!(
                "the store allocates from service CIDR {} and nodePort range {}, not {} and {} (`lb ranges` changes them)",
                stored.cidr_string(),
                stored.node_ports_string(),
                asked.cidr_string(),
                asked.node_ports_string()
            ));
        }
        Ok(asked)
    }

    /// These ranges, the unset ones taken from `base`.
    pub fn over(&self, base: &Allocation) -> Allocation {
        Allocation {
            service_cidr: self.service_cidr.unwrap_or(base.service_cidr),
            node_ports: self.node_ports.clone().unwrap_or(base.node_ports.clone()),
        }
    }
}

/// The first service whose clusterIP or nodePorts `alloc` does not hold (a change
/// of the ranges must leave every allocated value inside them).
pub fn misfit(state: &State, alloc: &Allocation) -> Option<String> {
    for (key, svc) in &state.services {
        if let Some(ip) = cluster_ip(svc)
            && !alloc.cidr_contains(ip)
        {
            return Some(format!(
                "service {key} has clusterIP {ip}, outside {}",
                alloc.cidr_string()
            ));
        }
        if let Some(np) = Taken::node_ports_of(svc).find(|p| !alloc.node_ports.contains(p)) {
            return Some(format!(
                "service {key} has nodePort {np}, outside {}",
                alloc.node_ports_string()
            ));
        }
    }
    None
}

/// Why a service cannot have the values it asks for, or any.
#[derive(Debug)]
pub enum AllocError {
    /// A requested value is refused (the API server's field error).
    Field(FieldError),
    /// The range has no free value left.
    Exhausted { what: &'static str, range: String },
}

impl From<FieldError> for AllocError {
    fn from(f: FieldError) -> Self {
        AllocError::Field(f)
    }
}

/// Gives the service its clusterIP and nodePorts: requested values if valid and free,
/// the stored object's values on re-apply, fresh random ones otherwise. `state` no
/// longer holds the service being applied.
pub fn allocate(
    taken: &Taken,
    svc: &mut Service,
    old: Option<&Service>,
    alloc: &Allocation,
) -> Result<(), AllocError> {
    let ty = service_type(svc).to_string();
    let old_spec = old.and_then(|o| o.spec.as_ref());
    let spec = svc.spec.get_or_insert_with(Default::default);

    // The families: this cluster is single-stack IPv4.
    if ty != TYPE_EXTERNAL_NAME {
        ip_families(spec)?;
    }

    // clusterIP: immutable once set.
    if ty != TYPE_EXTERNAL_NAME {
        let old_ip = old_spec.and_then(|s| s.cluster_ip.clone());
        let requested = spec.cluster_ip.clone().filter(|s| !s.is_empty());
        let ip = match (requested, old_ip) {
            (Some(req), Some(old)) if req != old => {
                return Err(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("[]string{{\"{req}\"}}"),
                    "may not change once set",
                )
                .into());
            }
            (Some(req), _) if req == CLUSTER_IP_NONE => req,
            (Some(req), Some(_)) => req,
            (Some(req), None) => {
                let ip: Ipv4Addr = req.parse().map_err(|_| {
                    FieldError::invalid("spec.clusterIPs[0]", &req, "must be a valid IP address")
                })?;
                if !alloc.cidr_contains(ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {}", alloc.cidr_string()),
                    )
                    .into());
                }
                if taken.ips.contains(&ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: provided IP is already allocated"),
                    )
                    .into());
                }
                req
            }
            (None, Some(old)) => old,
            (None, None) => random_cluster_ip(&taken.ips, alloc)?.to_string(),
        };
        spec.cluster_ips = Some(vec![ip.clone()]);
        spec.cluster_ip = Some(ip);
    }

    // nodePorts: for NodePort and LoadBalancer services, each port has one (a
    // LoadBalancer with allocateLoadBalancerNodePorts false: only those asked for).
    let allocate_all = ty == TYPE_NODE_PORT
        || (ty == TYPE_LOAD_BALANCER && spec.allocate_load_balancer_node_ports != Some(false));
    if ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER {
        let mut used = taken.node_ports.clone();
        let old_ports = old_spec.and_then(|s| s.ports.clone()).unwrap_or_default();
        let ports = spec.ports.get_or_insert_with(Vec::new);
        // Requested ones first, so a random pick never takes a value asked for
        // later. Ports of one number (TCP and UDP 53) share a nodePort, as the API
        // server's allocator gives them; two numbers never do.
        let mut by_port: BTreeMap<i32, u16> = BTreeMap::new();
        for (i, p) in ports.iter().enumerate() {
            let Some(np) = p.node_port else { continue };
            let field = format!("spec.ports[{i}].nodePort");
            let np16 = in_node_port_range(&field, np, alloc)?;
            if by_port.get(&p.port) == Some(&np16) {
                continue;
            }
            if used.contains(&np16) {
                return Err(
                    FieldError::invalid(field, np, "provided port is already allocated").into(),
                );
            }
            used.insert(np16);
            by_port.entry(p.port).or_insert(np16);
        }
        for p in ports
            .iter_mut()
            .filter(|p| p.node_port.is_none() && allocate_all)
        {
            if let Some(np) = by_port.get(&p.port) {
                p.node_port = Some((*np).into());
                continue;
            }
            // Re-apply keeps the nodePort of the same port (by name, else number and protocol).
            let kept = old_ports
                .iter()
                .find(|o| match (&o.name, &p.name) {
                    (Some(a), Some(b)) => a == b,
                    _ => o.port == p.port && o.protocol == p.protocol,
                })
                .and_then(|o| o.node_port)
                .filter(|np| !used.contains(&(*np as u16)));
            let np = match kept {
                Some(np) => np as u16,
                None => {
                    random_free(&alloc.node_ports, &used).ok_or_else(|| AllocError::Exhausted {
                        what: "nodePort",
                        range: format!("{:?}", alloc.node_ports),
                    })?
                }
            };
            used.insert(np);
            by_port.insert(p.port, np);
            p.node_port = Some(np.into());
        }
        // healthCheckNodePort: a LoadBalancer with externalTrafficPolicy Local has
        // one from the same range (requested, kept, or at random).
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        if ty == TYPE_LOAD_BALANCER && local {
            let field = "spec.healthCheckNodePort";
            let np = match spec.health_check_node_port.filter(|p| *p != 0) {
                Some(np) => {
                    let np16 = in_node_port_range(field, np, alloc)?;
                    let old_same = old_spec.and_then(|s| s.health_check_node_port) == Some(np);
                    if used.contains(&np16) && !old_same {
                        return Err(FieldError::invalid(
                            field,
                            np,
                            "provided port is already allocated",
                        )
                        .into());
                    }
                    np16
                }
                None => match old_spec
                    .and_then(|s| s.health_check_node_port)
                    .filter(|p| *p != 0)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| !used.contains(p))
                {
                    Some(np) => np,
                    None => random_free(&alloc.node_ports, &used).ok_or_else(|| {
                        AllocError::Exhausted {
                            what: "nodePort",
                            range: format!("{:?}", alloc.node_ports),
                        }
                    })?,
                },
            };
            spec.health_check_node_port = Some(np.into());
        }
    }
    Ok(())
}

/// A requested nodePort, if in the range.
fn in_node_port_range(field: &str, np: i32, alloc: &Allocation) -> Result<u16, AllocError> {
    match u16::try_from(np) {
        Ok(p) if alloc.node_ports.contains(&p) => Ok(p),
        _ => Err(FieldError::invalid(
            field,
            np,
            format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                alloc.node_ports.start(),
                alloc.node_ports.end()
            ),
        )
        .into()),
    }
}

/// Checks and completes `ipFamilyPolicy` and `ipFamilies` as the API server's
/// allocator does in a single-stack IPv4 cluster: the families follow the
/// clusterIPs, IPv6 and RequireDualStack are refused (not configured on this
/// cluster), PreferDualStack gets IPv4 alone. A headless service without a selector
/// allocates nothing and may name any family.
fn ip_families(spec: &mut ServiceSpec) -> Result<(), FieldError> {
    let headless = spec.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE);
    let selects = spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    let mut families = spec.ip_families.clone().unwrap_or_default();
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    let policy = spec.ip_family_policy.clone().unwrap_or_else(|| {
        if ips.len() == 2 || families.len() == 2 {
            "RequireDualStack".into()
        } else {
            "SingleStack".into()
        }
    });
    if headless && !selects {
        if families.is_empty() {
            families.push("IPv4".into());
        }
    } else {
        for (i, ip) in ips.iter().enumerate() {
            let Ok(addr) = ip.parse::<IpAddr>() else {
                continue;
            };
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            match families.get(i) {
                Some(f) if f != family => {
                    return Err(FieldError::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("\"{ip}\""),
                        format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                    ));
                }
                Some(_) => {}
                None => families.push(family.into()),
            }
        }
        if policy == "RequireDualStack" {
            return Err(FieldError::invalid(
                "spec.ipFamilyPolicy",
                format!("\"{policy}\""),
                "this cluster is not configured for dual-stack services",
            ));
        }
        if let Some((i, f)) = families.iter().enumerate().find(|(_, f)| *f != "IPv4") {
            return Err(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                format!("\"{f}\""),
                "not configured on this cluster",
            ));
        }
        if policy == "SingleStack" && families.len() > 1 {
            return Err(FieldError::invalid(
                "spec.ipFamilies",
                format!("{families:?}"),
                "when spec.ipFamilyPolicy is SingleStack, only one family may be specified",
            ));
        }
        families.truncate(1);
        if families.is_empty() {
            families.push("IPv4".into());
        }
    }
    spec.ip_families = Some(families);
    spec.ip_family_policy = Some(policy);
    Ok(())
}

pub use crate::lb_ipam::ingress_ips as lb_ingress_ips;

/// The clusterIPs and nodePorts services hold.
pub struct Taken {
    ips: BTreeSet<Ipv4Addr>,
    node_ports: BTreeSet<u16>,
}

/// Kinds of value in the store's index of what is taken (`taken.what`).
pub const TAKEN_CLUSTER_IP: i64 = 0;
pub const TAKEN_NODE_PORT: i64 = 1;

impl Taken {
    /// What the rows of the store's index hold ((`what`, value) pairs).
    pub fn from_rows(rows: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut t = Taken {
            ips: BTreeSet::new(),
            node_ports: BTreeSet::new(),
        };
        for (what, value) in rows {
            match what {
                TAKEN_CLUSTER_IP => drop(t.ips.insert(Ipv4Addr::from(value as u32))),
                TAKEN_NODE_PORT => drop(t.node_ports.insert(value as u16)),
                _ => {}
            }
        }
        t
    }

    /// The index rows `svc` holds: its clusterIP and its nodePorts.
    pub fn rows_of(svc: &Service) -> Vec<(i64, i64)> {
        cluster_ip(svc)
            .map(|ip| (TAKEN_CLUSTER_IP, i64::from(u32::from(ip))))
            .into_iter()
            .chain(Self::node_ports_of(svc).map(|p| (TAKEN_NODE_PORT, i64::from(p))))
            .collect()
    }

    pub fn of(state: &State) -> Self {
        let mut t = Taken {
            ips: BTreeSet::new(),
            node_ports: BTreeSet::new(),
        };
        state.services.values().for_each(|s| t.hold(s));
        t
    }

    /// The nodePorts a service holds, its healthCheckNodePort included.
    pub fn node_ports_of(svc: &Service) -> impl Iterator<Item = u16> + '_ {
        svc.spec
            .iter()
            .flat_map(|sp| {
                sp.ports
                    .iter()
                    .flatten()
                    .filter_map(|p| p.node_port)
                    .chain(sp.health_check_node_port)
            })
            .filter_map(|n| u16::try_from(n).ok().filter(|n| *n != 0))
    }

    pub fn hold(&mut self, svc: &Service) {
        self.ips.extend(cluster_ip(svc));
        self.node_ports.extend(Self::node_ports_of(svc));
    }

    pub fn release(&mut self, svc: &Service) {
        if let Some(ip) = cluster_ip(svc) {
            self.ips.remove(&ip);
        }
        for p in Self::node_ports_of(svc) {
            self.node_ports.remove(&p);
        }
    }
}

fn random_free(range: &RangeInclusive<u16>, used: &BTreeSet<u16>) -> Option<u16> {
    let size = (*range.end() as u32).checked_sub(*range.start() as u32)? + 1;
    if used.iter().filter(|p| range.contains(p)).count() as u32 >= size {
        return None;
    }
    let mut rng = rand::rng();
    loop {
        let p = rng.random_range(range.clone());
        if !used.contains(&p) {
            return Some(p);
        }
    }
}

/// A random free address of the service CIDR, never its network address, its
/// broadcast address or its first host (kept for the `kubernetes` service, as the API
/// server does).
fn random_cluster_ip(
    used: &BTreeSet<Ipv4Addr>,
    alloc: &Allocation,
) -> Result<Ipv4Addr, AllocError> {
    let (net, len) = alloc.service_cidr;
    let host_bits = 32 - len as u32;
    let size: u64 = 1u64 << host_bits;
    let base = u32::from(net) & (u32::MAX.checked_shl(host_bits).unwrap_or(0));
    // Only addresses of the range count (a service may hold one from before the
    // range changed).
    let offsets: Vec<u64> = used
        .iter()
        .filter(|ip| alloc.cidr_contains(**ip))
        .map(|ip| u64::from(u32::from(*ip) - base))
        .collect();
    if size < 4 || offsets.len() as u64 >= size - 3 {
        return Err(AllocError::Exhausted {
            what: "ClusterIP",
            range: alloc.cidr_string(),
        });
    }
    // The range's low band is kept for addresses asked for (the cluster DNS
    // service's 10.96.0.10): random picks take the rest first, as the API server
    // does (KEP-3070: min(max(16, size/16), 256) addresses).
    let band = (size / 16).clamp(16, 256).min(size - 1);
    let upper = 2.max(band)..size - 1;
    let upper_used = offsets.iter().filter(|o| upper.contains(o)).count() as u64;
    let range = if upper_used < upper.end - upper.start {
        upper
    } else {
        2..band
    };
    let mut rng = rand::rng();
    loop {
        let offset = rng.random_range(range.clone()) as u32;
        let ip = Ipv4Addr::from(base + offset);
        if !used.contains(&ip) {
            return Ok(ip);
        }
    }
}

/// Gives LoadBalancer services addresses from `pools` and takes them from services
/// no longer of that type ([`crate::lb_ipam::plan`]), written to
/// `status.loadBalancer.ingress` as a cloud controller would. Returns what was
/// assigned (service, address).
pub fn assign_load_balancer_ips(
    state: &mut State,
    pools: &[(Ipv4Addr, u8)],
) -> Vec<(ObjectKey, Ipv4Addr)> {
    let changes = crate::lb_ipam::plan(&state.services, pools);
    let mut assigned = Vec::new();
    for a in changes {
        if let Some(svc) = state.services.get_mut(&a.service) {
            set_ingress(svc, a.ip);
            assigned.extend(a.ip.map(|ip| (a.service, ip)));
        }
    }
    assigned
}

/// Sets `status.loadBalancer.ingress` to `ip` (None: no status).
pub fn set_ingress(svc: &mut Service, ip: Option<Ipv4Addr>) {
    svc.status = ip.map(|ip| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests;
