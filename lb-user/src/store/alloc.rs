//! Allocation as the API server's allocators do it: ClusterIPs from the service
//! CIDR and nodePorts from their range (requested values checked, others at random,
//! never one twice), and LoadBalancer addresses from the agents' pools. Pure: it
//! reads and changes a [`State`], never the disk.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec, ServiceStatus,
};
use rand::Rng as _;

use crate::{
    model::cidr::number,
    model::{
        CLUSTER_IP_NONE, Cidr, Family, FieldError, ObjectKey, TYPE_EXTERNAL_NAME,
        TYPE_LOAD_BALANCER, TYPE_NODE_PORT, cluster_ips, service_type,
    },
    state::State,
};

/// What the API server would be configured with: where ClusterIPs and nodePorts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// One range per family the cluster serves, the primary family's first (as
    /// `--service-cluster-ip-range`: `10.96.0.0/12,fd00:10:96::/112` is a
    /// dual-stack cluster whose services are IPv4 unless they ask otherwise).
    pub service_cidrs: Vec<Cidr>,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation {
            service_cidrs: vec![Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 0)),
                len: 12,
            }],
            node_ports: 30000..=32767,
        }
    }
}

impl Allocation {
    /// The range of `family`, if the cluster serves it.
    pub fn cidr(&self, family: Family) -> Option<&Cidr> {
        self.service_cidrs.iter().find(|c| c.family() == family)
    }

    /// The family services get when they ask for none.
    pub fn primary_family(&self) -> Family {
        self.service_cidrs.first().map_or(Family::V4, Cidr::family)
    }

    pub fn dual_stack(&self) -> bool {
        self.service_cidrs.len() == 2
    }

    pub fn cidr_contains(&self, ip: IpAddr) -> bool {
        self.cidr(Family::of(ip)).is_some_and(|c| c.contains(ip))
    }

    pub fn cidr_string(&self) -> String {
        let cidrs: Vec<String> = self.service_cidrs.iter().map(Cidr::to_string).collect();
        cidrs.join(",")
    }

    pub fn node_ports_string(&self) -> String {
        format!("{}-{}", self.node_ports.start(), self.node_ports.end())
    }
}

/// The ranges a write or a command asks for (flags, environment); unset ones are
/// the store's own, or for a new store the API server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    pub service_cidrs: Option<Vec<Cidr>>,
    pub node_ports: Option<RangeInclusive<u16>>,
}

impl From<Allocation> for Ranges {
    fn from(a: Allocation) -> Self {
        Ranges {
            service_cidrs: Some(a.service_cidrs),
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
            service_cidrs: self
                .service_cidrs
                .clone()
                .unwrap_or(base.service_cidrs.clone()),
            node_ports: self.node_ports.clone().unwrap_or(base.node_ports.clone()),
        }
    }
}

/// The service CIDRs `--service-cidr` names: one or two ranges, comma-separated, of
/// different families (the primary first), each leaving room for services: IPv4 at
/// most /30, IPv6 /64 to /126.
pub fn parse_service_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    let want = "want one range per family, the primary first, such as 10.96.0.0/12 or 10.96.0.0/12,fd00:10:96::/112";
    let cidrs = s
        .split(',')
        .map(|c| Cidr::parse(c.trim()).ok_or_else(|| format!("{c}: not a CIDR; {want}")))
        .collect::<Result<Vec<_>, _>>()?;
    if cidrs.len() > 2 || (cidrs.len() == 2 && cidrs[0].family() == cidrs[1].family()) {
        return Err(format!("{s}: {want}"));
    }
    for c in &cidrs {
        let ok = match c.family() {
            Family::V4 => c.len <= 30,
            Family::V6 => (64..=126).contains(&c.len),
        };
        if !ok {
            return Err(format!(
                "{c}: too small or too large for services (IPv4 at most /30, IPv6 /64 to /126)"
            ));
        }
    }
    Ok(cidrs)
}

/// The first service whose clusterIPs or nodePorts `alloc` does not hold (a change
/// of the ranges must leave every allocated value inside them).
pub fn misfit(state: &State, alloc: &Allocation) -> Option<String> {
    for (key, svc) in &state.services {
        if let Some(ip) = cluster_ips(svc)
            .into_iter()
            .find(|ip| !alloc.cidr_contains(*ip))
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

    // The families, then one clusterIP per family (the API server's
    // initIPFamilyFields and allocClusterIPs / updateClusterIPs).
    if ty != TYPE_EXTERNAL_NAME {
        let old_spec =
            old_spec.filter(|_| old.is_some_and(|o| service_type(o) != TYPE_EXTERNAL_NAME));
        if let Some(os) = old_spec {
            keep_allocated_ips(spec, os);
        }
        if !same_prefer_dual_stack(spec, old_spec) {
            ip_families(spec, old_spec, alloc)?;
        }
        allocate_cluster_ips(taken, spec, old_spec, alloc)?;
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

const SINGLE_STACK: &str = "SingleStack";
const PREFER_DUAL_STACK: &str = "PreferDualStack";
const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

/// The clusterIPs a spec names: `clusterIPs`, else `clusterIP` alone.
fn requested_ips(spec: &ServiceSpec) -> Vec<String> {
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.to_vec(),
        _ => spec
            .cluster_ip
            .iter()
            .filter(|ip| !ip.is_empty())
            .cloned()
            .collect(),
    }
}

fn families_of(spec: &ServiceSpec) -> Vec<String> {
    spec.ip_families.clone().unwrap_or_default()
}

/// An update that names no clusterIP keeps the allocated ones (the API server's
/// `patchAllocatedValues`): `clusterIP` and `clusterIPs` each taken from the stored
/// object when the manifest leaves them out.
fn keep_allocated_ips(spec: &mut ServiceSpec, old: &ServiceSpec) {
    // v1's pair first: a clusterIP given alone is the list's first.
    if spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
        && let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty())
    {
        spec.cluster_ips = Some(vec![ip]);
    }
    if spec.cluster_ip.as_deref().is_none_or(str::is_empty) {
        spec.cluster_ip = old.cluster_ip.clone();
    }
    if spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
        && old.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    {
        spec.cluster_ips = old.cluster_ips.clone();
    }
}

/// A PreferDualStack service updated with the same clusterIPs and families keeps
/// them, whatever the cluster serves now: such a service is only upgraded or
/// downgraded when its policy says so (the API server's
/// `isMatchingPreferDualStackClusterIPFields`).
fn same_prefer_dual_stack(spec: &ServiceSpec, old: Option<&ServiceSpec>) -> bool {
    let Some(old) = old else { return false };
    spec.type_ == old.type_
        && spec.ip_family_policy.as_deref() == Some(PREFER_DUAL_STACK)
        && old.ip_family_policy.as_deref() == Some(PREFER_DUAL_STACK)
        && requested_ips(spec) == requested_ips(old)
        && families_of(spec) == families_of(old)
}

/// Checks and completes `ipFamilyPolicy` and `ipFamilies` as the API server's
/// allocator does (`initIPFamilyFields`) on a cluster serving `alloc`'s families:
/// the policy defaults to the stored one, else SingleStack (RequireDualStack for a
/// headless service without a selector); the families follow the clusterIPs, then
/// the cluster's primary; a dual-stack policy on a dual-stack cluster gets both;
/// a family the cluster does not serve, or RequireDualStack on a single-stack
/// cluster, is refused. A headless service without a selector allocates nothing
/// and may name any family.
fn ip_families(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    alloc: &Allocation,
) -> Result<(), FieldError> {
    let headless = spec.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE);
    let selects = spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    if spec.ip_family_policy.is_none() {
        let policy = old
            .and_then(|o| o.ip_family_policy.clone())
            .unwrap_or_else(|| {
                if headless && !selects {
                    REQUIRE_DUAL_STACK.into()
                } else {
                    SINGLE_STACK.into()
                }
            });
        spec.ip_family_policy = Some(policy);
    }
    let policy = spec.ip_family_policy.clone().unwrap_or_default();
    let policy_error =
        |why: &str| FieldError::invalid("spec.ipFamilyPolicy", format!("\"{policy}\""), why);
    if let Some(old) = old {
        if policy == SINGLE_STACK {
            // Asking for one family with the stored values is clear intent: the
            // primary is kept, the secondary released.
            if requested_ips(spec) == requested_ips(old)
                && requested_ips(spec).len() > 1
                && let Some(ips) = spec.cluster_ips.as_mut()
            {
                ips.truncate(1);
            }
            if families_of(spec) == families_of(old)
                && families_of(spec).len() > 1
                && let Some(f) = spec.ip_families.as_mut()
            {
                f.truncate(1);
            }
        } else {
            let fewer = |new: usize, old: usize| new != 0 && new < old;
            if fewer(requested_ips(spec).len(), requested_ips(old).len()) {
                return Err(policy_error(
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if fewer(families_of(spec).len(), families_of(old).len()) {
                return Err(policy_error(
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    let ips = requested_ips(spec);
    let mut families = families_of(spec);
    if policy == SINGLE_STACK {
        if ips.len() == 2 {
            return Err(policy_error(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            return Err(policy_error(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    // The families follow the clusterIPs asked for.
    for (i, ip) in ips.iter().enumerate() {
        if ip == CLUSTER_IP_NONE {
            break;
        }
        let Ok(addr) = ip.parse::<IpAddr>() else {
            continue;
        };
        let family = Family::of(addr);
        match families.get(i) {
            Some(f) if Family::parse(f) != Some(family) => {
                return Err(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    format!("\"{ip}\""),
                    format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            Some(_) => {}
            None if alloc.cidr(family).is_none() => {
                return Err(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ips:?}"),
                    format!("{family} is not configured on this cluster"),
                ));
            }
            None => families.push(family.name().into()),
        }
    }
    if headless && !selects {
        let first = families
            .first()
            .and_then(|f| Family::parse(f))
            .unwrap_or(alloc.primary_family());
        if families.is_empty() {
            families.push(first.name().into());
        }
        if families.len() < 2 && policy != SINGLE_STACK {
            families.push(first.other().name().into());
        }
        spec.ip_families = Some(families);
        return Ok(());
    }
    if policy == REQUIRE_DUAL_STACK && !alloc.dual_stack() {
        return Err(policy_error(
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if Family::parse(f).is_none_or(|f| alloc.cidr(f).is_none()) {
            return Err(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                format!("\"{f}\""),
                "not configured on this cluster",
            ));
        }
    }
    if families.is_empty() {
        families.push(alloc.primary_family().name().into());
    }
    if policy != SINGLE_STACK && families.len() == 1 && alloc.dual_stack() {
        let first = Family::parse(&families[0]).unwrap_or(alloc.primary_family());
        families.push(first.other().name().into());
    }
    spec.ip_families = Some(families);
    Ok(())
}

/// One clusterIP per family of `spec.ipFamilies`, in their order: the one asked
/// for (in the family's range and free), else the stored one, else a free one at
/// random; a headless service keeps `None`. Stored clusterIPs never change; a
/// service that drops its second family releases its second address (it is no
/// longer among the service's, so no longer taken).
fn allocate_cluster_ips(
    taken: &Taken,
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    alloc: &Allocation,
) -> Result<(), AllocError> {
    let requested = requested_ips(spec);
    if requested.first().map(String::as_str) == Some(CLUSTER_IP_NONE) {
        spec.cluster_ip = Some(CLUSTER_IP_NONE.into());
        spec.cluster_ips = Some(vec![CLUSTER_IP_NONE.into()]);
        return Ok(());
    }
    let old_ips = old.map(requested_ips).unwrap_or_default();
    let families: Vec<Family> = families_of(spec)
        .iter()
        .filter_map(|f| Family::parse(f))
        .collect();
    let mut ips = Vec::with_capacity(families.len());
    for (i, family) in families.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        let asked = requested.get(i).filter(|ip| !ip.is_empty());
        let stored = old_ips
            .get(i)
            .filter(|ip| ip.parse().is_ok_and(|ip| Family::of(ip) == *family));
        let ip = match (asked, stored) {
            (Some(a), Some(o)) if a != o => {
                return Err(FieldError::invalid(
                    field,
                    format!("{requested:?}"),
                    "may not change once set",
                )
                .into());
            }
            (Some(a), Some(_)) => a.clone(),
            (Some(a), None) => {
                let ip: IpAddr = a
                    .parse()
                    .map_err(|_| FieldError::invalid(&field, a, "must be a valid IP address"))?;
                let range = alloc.cidr(*family).map(Cidr::to_string).unwrap_or_default();
                if !alloc.cidr_contains(ip) {
                    return Err(FieldError::invalid(
                        field,
                        a,
                        format!("failed to allocate IP {a}: the provided IP ({a}) is not in the valid range. The range of valid IPs is {range}"),
                    )
                    .into());
                }
                if taken.ips.contains(&ip) {
                    return Err(FieldError::invalid(
                        field,
                        a,
                        format!("failed to allocate IP {a}: provided IP is already allocated"),
                    )
                    .into());
                }
                ip.to_string()
            }
            (None, Some(o)) => o.clone(),
            (None, None) => {
                let cidr = alloc.cidr(*family).ok_or_else(|| AllocError::Exhausted {
                    what: "ClusterIP",
                    range: format!("no {family} service CIDR"),
                })?;
                random_cluster_ip(&taken.ips, cidr)?.to_string()
            }
        };
        ips.push(ip);
    }
    spec.cluster_ip = ips.first().cloned();
    spec.cluster_ips = Some(ips);
    Ok(())
}

pub use crate::lb_ipam::ingress_ips as lb_ingress_ips;

/// The clusterIPs and nodePorts services hold.
pub struct Taken {
    ips: BTreeSet<IpAddr>,
    node_ports: BTreeSet<u16>,
}

/// Kinds of value in the store's index of what is taken (`taken.what`).
pub const TAKEN_CLUSTER_IP: i64 = 0;
pub const TAKEN_NODE_PORT: i64 = 1;
/// An IPv6 clusterIP: its low 64 bits (the service CIDR, /64 or longer, holds the
/// rest; the ranges change only while every clusterIP stays inside them).
pub const TAKEN_CLUSTER_IP6: i64 = 2;

impl Taken {
    /// What the rows of the store's index hold ((`what`, value) pairs), the IPv6
    /// clusterIPs in `alloc`'s IPv6 range.
    pub fn from_rows(rows: impl IntoIterator<Item = (i64, i64)>, alloc: &Allocation) -> Self {
        let mut t = Taken {
            ips: BTreeSet::new(),
            node_ports: BTreeSet::new(),
        };
        let prefix6 = alloc
            .cidr(Family::V6)
            .map(|c| c.base() & !u128::from(u64::MAX));
        for (what, value) in rows {
            match what {
                TAKEN_CLUSTER_IP => drop(t.ips.insert(Ipv4Addr::from(value as u32).into())),
                TAKEN_CLUSTER_IP6 => {
                    if let Some(prefix) = prefix6 {
                        let n = prefix | u128::from(value as u64);
                        t.ips.insert(Ipv6Addr::from(n).into());
                    }
                }
                TAKEN_NODE_PORT => drop(t.node_ports.insert(value as u16)),
                _ => {}
            }
        }
        t
    }

    /// The index rows `svc` holds: its clusterIPs and its nodePorts.
    pub fn rows_of(svc: &Service) -> Vec<(i64, i64)> {
        cluster_ips(svc)
            .into_iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => (TAKEN_CLUSTER_IP, i64::from(u32::from(v4))),
                IpAddr::V6(v6) => (TAKEN_CLUSTER_IP6, u128::from(v6) as u64 as i64),
            })
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
        self.ips.extend(cluster_ips(svc));
        self.node_ports.extend(Self::node_ports_of(svc));
    }

    pub fn release(&mut self, svc: &Service) {
        for ip in cluster_ips(svc) {
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

/// A random free address of `cidr`, never its network address, its last (IPv4's
/// broadcast) or its first host (kept for the `kubernetes` service, as the API
/// server does).
fn random_cluster_ip(used: &BTreeSet<IpAddr>, cidr: &Cidr) -> Result<IpAddr, AllocError> {
    let size = cidr.size();
    let base = cidr.base();
    // Only addresses of the range count (a service may hold one from before the
    // range changed).
    let offsets: Vec<u128> = used
        .iter()
        .filter(|ip| cidr.contains(**ip))
        .map(|ip| number(*ip) - base)
        .collect();
    if size < 4 || offsets.len() as u128 >= size - 3 {
        return Err(AllocError::Exhausted {
            what: "ClusterIP",
            range: cidr.to_string(),
        });
    }
    // The range's low band is kept for addresses asked for (the cluster DNS
    // service's 10.96.0.10): random picks take the rest first, as the API server
    // does (KEP-3070: min(max(16, size/16), 256) addresses).
    let band = (size / 16).clamp(16, 256).min(size - 1);
    let upper = 2.max(band)..size - 1;
    let upper_used = offsets.iter().filter(|o| upper.contains(o)).count() as u128;
    let range = if upper_used < upper.end - upper.start {
        upper
    } else {
        2..band
    };
    let mut rng = rand::rng();
    loop {
        let ip = cidr.at(rng.random_range(range.clone()));
        if !used.contains(&ip) {
            return Ok(ip);
        }
    }
}

/// Gives LoadBalancer services addresses from `pools` and takes them from services
/// no longer of that type ([`crate::lb_ipam::plan`]), written to
/// `status.loadBalancer.ingress` as a cloud controller would. Returns what was
/// newly given (service, address).
pub fn assign_load_balancer_ips(state: &mut State, pools: &[Cidr]) -> Vec<(ObjectKey, IpAddr)> {
    let changes = crate::lb_ipam::plan(state.services.iter().map(|(k, s)| (k, &**s)), pools);
    let mut assigned = Vec::new();
    for a in changes {
        if let Some(svc) = state.services.get_mut(&a.service) {
            let before = lb_ingress_ips(svc);
            set_ingress(svc, &a.ips);
            assigned.extend(
                a.ips
                    .iter()
                    .filter(|ip| !before.contains(ip))
                    .map(|ip| (a.service.clone(), *ip)),
            );
        }
    }
    assigned
}

/// Sets `status.loadBalancer.ingress` to `ips` (none: no status).
pub fn set_ingress(svc: &mut Service, ips: &[IpAddr]) {
    svc.status = (!ips.is_empty()).then(|| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests;
