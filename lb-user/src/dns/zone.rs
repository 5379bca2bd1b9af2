//! The cluster's names, as the Kubernetes DNS specification (kubernetes/dns,
//! docs/specification.md, schema 1.1.0) gives them, from the objects the agent
//! follows: a service's name to its ClusterIP, a headless service's to its ready
//! endpoints (and each endpoint's own name), SRV records for named ports, PTR
//! records back, ExternalName as a CNAME. Both families: A records for IPv4
//! addresses, AAAA for IPv6 ones (a dual-stack service has one of each), PTR
//! records under `in-addr.arpa.` and `ip6.arpa.`. Pure: built and changed one service at a
//! time by the agent, read by the server's lookups.

use foldhash::HashMap;
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};

use crate::{
    model::{
        CLUSTER_IP_NONE, Family, ObjectKey, SliceFacts, TYPE_EXTERNAL_NAME, cluster_ips,
        service_type,
    },
    state::{Tracked, selector_pair},
};

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// Time to live of every answer, negative ones included: CoreDNS's kubernetes
/// plugin's default, so a changed name is seen within seconds even by caches.
pub const TTL: u32 = 5;

/// One record's data; the owner name is where the zone keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Box<str>,
    },
    Cname(Box<str>),
    Txt(Box<str>),
    Ptr(Box<str>),
    Ns(Box<str>),
    /// The zone's SOA: its serial (the other fields are fixed).
    Soa(u32),
}

/// A record type as lookups ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    A,
    Aaaa,
    Srv,
    Cname,
    Txt,
    Ptr,
    Ns,
    Soa,
    Any,
    /// A type no name here has (MX, CAA, ...): NODATA where the name exists.
    Other,
}

impl Data {
    fn answers(&self, want: Want) -> bool {
        matches!(
            (self, want),
            (_, Want::Any)
                | (Data::A(_), Want::A)
                | (Data::Aaaa(_), Want::Aaaa)
                | (Data::Srv { .. }, Want::Srv)
                | (Data::Cname(_), Want::Cname)
                | (Data::Txt(_), Want::Txt)
                | (Data::Ptr(_), Want::Ptr)
                | (Data::Ns(_), Want::Ns)
                | (Data::Soa(_), Want::Soa)
        )
    }
}

/// What a name holds for a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records (owner, data), a CNAME first when the name is an alias.
    Answer(Vec<(Box<str>, Data)>),
    /// The name exists with no record of that type.
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not a name this zone answers for (forwarded, or refused).
    Outside,
}

/// A record a service puts in the zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Entry {
    Name(Box<str>, Data),
    /// The reverse name of an address, to the name it points at.
    Ptr(IpAddr, Box<str>),
}

/// The zone: every service's records, the addresses they point back from, and
/// the names that exist only as parents (`<namespace>.svc.<zone>`).
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// `cluster.local.`: lowercase, with the root's dot.
    domain: Box<str>,
    /// The cluster DNS service's addresses (the zone's name server, `ns.dns.<zone>`,
    /// A and AAAA).
    dns_ips: Vec<IpAddr>,
    serial: u32,
    names: HashMap<Box<str>, Vec<Data>>,
    reverse: HashMap<IpAddr, Vec<Box<str>>>,
    /// Names below the apex that hold records' names: how many records each holds.
    parents: HashMap<Box<str>, u32>,
    of_service: HashMap<ObjectKey, Vec<Entry>>,
}

/// `name` as the zone keys it: lowercase, with the root's dot.
pub fn fqdn(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl Zone {
    /// An empty zone for `domain` (e.g. `cluster.local`) whose name server is at
    /// `dns_ips`.
    pub fn new(domain: &str, dns_ips: &[IpAddr]) -> Self {
        Zone {
            domain: fqdn(domain).into(),
            dns_ips: dns_ips.to_vec(),
            ..Zone::default()
        }
    }

    /// The zone's domain, `cluster.local.`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The zone of every service `tracked` holds.
    pub fn of(domain: &str, dns_ips: &[IpAddr], tracked: &Tracked) -> Self {
        let mut zone = Zone::new(domain, dns_ips);
        for key in tracked.state.services.keys() {
            zone.update(tracked, key);
        }
        zone.serial = tracked.state.revision as u32;
        zone
    }

    /// Brings `key`'s records in line with `tracked` (removes them when the service
    /// is gone).
    pub fn update(&mut self, tracked: &Tracked, key: &ObjectKey) {
        let entries = tracked
            .state
            .services
            .get(key)
            .map(|svc| service_entries(tracked, key, svc, &self.domain))
            .unwrap_or_default();
        if self.of_service.get(key) == Some(&entries) {
            return;
        }
        for e in self.of_service.remove(key).unwrap_or_default() {
            self.remove(e);
        }
        for e in &entries {
            self.insert(e.clone());
        }
        if !entries.is_empty() {
            self.of_service.insert(key.clone(), entries);
        }
    }

    /// The serial the SOA says.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Sets the SOA's serial: the source's revision (it changes when names do).
    pub fn set_serial(&mut self, serial: u64) {
        self.serial = serial as u32;
    }

    /// How many names hold records (the apex's own left out).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn insert(&mut self, e: Entry) {
        match e {
            Entry::Name(owner, data) => {
                // Looked up before it is copied: most parents are there already.
                for p in parents(&owner, &self.domain) {
                    match self.parents.get_mut(p) {
                        Some(n) => *n += 1,
                        None => {
                            self.parents.insert(p.into(), 1);
                        }
                    }
                }
                self.names.entry(owner).or_default().push(data);
            }
            Entry::Ptr(addr, target) => self.reverse.entry(addr).or_default().push(target),
        }
    }

    fn remove(&mut self, e: Entry) {
        match e {
            Entry::Name(owner, data) => {
                for p in parents(&owner, &self.domain) {
                    if let Some(n) = self.parents.get_mut(p) {
                        *n -= 1;
                        if *n == 0 {
                            self.parents.remove(p);
                        }
                    }
                }
                if let Some(records) = self.names.get_mut(&owner) {
                    if let Some(i) = records.iter().position(|d| *d == data) {
                        records.swap_remove(i);
                    }
                    if records.is_empty() {
                        self.names.remove(&owner);
                    }
                }
            }
            Entry::Ptr(addr, target) => {
                if let Some(names) = self.reverse.get_mut(&addr) {
                    if let Some(i) = names.iter().position(|n| *n == target) {
                        names.swap_remove(i);
                    }
                    if names.is_empty() {
                        self.reverse.remove(&addr);
                    }
                }
            }
        }
    }

    /// What `name` (lowercase, with the root's dot) holds for `want`.
    pub fn lookup(&self, name: &str, want: Want) -> Lookup {
        if let Some(rest) = name.strip_suffix(".in-addr.arpa.") {
            return self.lookup_reverse(rest, want, "in-addr.arpa.");
        }
        if let Some(rest) = name.strip_suffix(".ip6.arpa.") {
            return self.lookup_reverse(rest, want, "ip6.arpa.");
        }
        let Some(relative) = self.relative(name) else {
            return Lookup::Outside;
        };
        let found = |records: Vec<(Box<str>, Data)>| {
            if records.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Answer(records)
            }
        };
        let own = |data: Vec<Data>| {
            found(
                data.into_iter()
                    .filter(|d| d.answers(want))
                    .map(|d| (Box::from(name), d))
                    .collect(),
            )
        };
        match relative {
            "" => {
                let ns = Data::Ns(format!("ns.dns.{}", self.domain).into());
                return own(vec![Data::Soa(self.serial), ns]);
            }
            "dns-version" => return own(vec![Data::Txt(SCHEMA_VERSION.into())]),
            "ns.dns" => return own(self.dns_ips.iter().map(|a| address(*a)).collect()),
            "dns" | "svc" | "pod" => return Lookup::NoData,
            _ => {}
        }
        if let Some(pod) = relative.strip_suffix(".pod") {
            return match pod_address(pod) {
                Some(Some(addr)) => own(vec![address(addr)]),
                Some(None) => Lookup::NoData,
                None => Lookup::NxDomain,
            };
        }
        if let Some(records) = self.names.get(name) {
            // An alias answers for every type but its own with the CNAME, then what
            // its target holds here (a target outside the zone is the resolver's).
            if let Some(Data::Cname(target)) = records.first()
                && !matches!(want, Want::Cname | Want::Any)
            {
                let mut out = vec![(Box::from(name), Data::Cname(target.clone()))];
                if let Some(chased) = self.names.get(&**target) {
                    out.extend(
                        chased
                            .iter()
                            .filter(|d| d.answers(want))
                            .map(|d| (target.clone(), d.clone())),
                    );
                }
                return Lookup::Answer(out);
            }
            return own(records.clone());
        }
        if self.parents.contains_key(name) {
            return Lookup::NoData;
        }
        Lookup::NxDomain
    }

    /// A name under `in-addr.arpa.` or `ip6.arpa.` (`tree`; `rest`: its labels
    /// before that): the names an address points back at, or outside the zone (the
    /// rest of the reverse tree is the upstream's).
    fn lookup_reverse(&self, rest: &str, want: Want, tree: &str) -> Lookup {
        let labels: Vec<&str> = rest.split('.').collect();
        let addr = if tree == "in-addr.arpa." {
            (labels.len() == 4)
                .then(|| {
                    let mut o = [0u8; 4];
                    for (i, label) in labels.iter().rev().enumerate() {
                        o[i] = label.parse().ok()?;
                    }
                    Some(IpAddr::V4(Ipv4Addr::from(o)))
                })
                .flatten()
        } else {
            // 32 nibbles, the lowest first.
            (labels.len() == 32)
                .then(|| {
                    let mut bits = 0u128;
                    for label in labels.iter().rev() {
                        let [c] = label.as_bytes() else { return None };
                        bits = bits << 4 | u128::from((*c as char).to_digit(16)?);
                    }
                    Some(IpAddr::V6(Ipv6Addr::from(bits)))
                })
                .flatten()
        };
        let Some(names) = addr.and_then(|a| self.reverse.get(&a)) else {
            return Lookup::Outside;
        };
        if !matches!(want, Want::Ptr | Want::Any) {
            return Lookup::NoData;
        }
        let owner: Box<str> = format!("{rest}.{tree}").into();
        let mut names = names.clone();
        names.sort();
        names.dedup();
        Lookup::Answer(
            names
                .into_iter()
                .map(|n| (owner.clone(), Data::Ptr(n)))
                .collect(),
        )
    }

    /// `name` relative to the apex ("" for the apex itself); None outside the zone.
    fn relative<'a>(&self, name: &'a str) -> Option<&'a str> {
        if name == &*self.domain {
            return Some("");
        }
        name.strip_suffix(&*self.domain)?.strip_suffix('.')
    }

    /// The address records `owner` holds (what an SRV target resolves to), A and
    /// AAAA.
    pub fn addresses(&self, owner: &str) -> Vec<Data> {
        self.names
            .get(owner)
            .into_iter()
            .flatten()
            .filter(|d| matches!(d, Data::A(_) | Data::Aaaa(_)))
            .cloned()
            .collect()
    }
}

/// The names between `owner` and the apex, both left out.
fn parents<'a>(owner: &'a str, domain: &str) -> impl Iterator<Item = &'a str> {
    let stop = owner.len().saturating_sub(domain.len());
    owner
        .match_indices('.')
        .map(|(i, _)| i + 1)
        .take_while(move |i| *i < stop)
        .map(move |i| &owner[i..])
}

/// The address a pod name (`a-b-c-d.<namespace>` or, IPv6, `fd00-10-244--2.<namespace>`,
/// relative to `pod.<zone>`) gives: Some(Some) for an address, Some(None) for a
/// namespace's own name, None for neither. As kube-dns and CoreDNS's `pods
/// insecure` answer them: from the name alone.
fn pod_address(relative: &str) -> Option<Option<IpAddr>> {
    let labels: Vec<&str> = relative.split('.').collect();
    match labels.as_slice() {
        [_namespace] => Some(None),
        [dashed, _namespace] => {
            let v4 = dashed.replace('-', ".").parse::<Ipv4Addr>().map(IpAddr::V4);
            let v6 = || dashed.replace('-', ":").parse::<Ipv6Addr>().map(IpAddr::V6);
            v4.or_else(|_| v6()).ok().map(Some)
        }
        _ => None,
    }
}

/// An address as a name's label: `10-244-0-2`, `fd00-10-244--2` (CoreDNS's).
fn dashed(addr: IpAddr) -> String {
    addr.to_string().replace(['.', ':'], "-")
}

/// An address's record: A or AAAA.
fn address(addr: IpAddr) -> Data {
    match addr {
        IpAddr::V4(a) => Data::A(a),
        IpAddr::V6(a) => Data::Aaaa(a),
    }
}

/// One ready endpoint of a headless service, as its names need it.
struct Endpoint {
    addr: IpAddr,
    hostname: Option<Box<str>>,
    /// Its port for each of the service's named ports: (name, protocol, port).
    ports: Vec<(String, String, u16)>,
}

/// The records `svc` puts in the zone `domain`.
fn service_entries(tracked: &Tracked, key: &ObjectKey, svc: &Service, domain: &str) -> Vec<Entry> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let base: Box<str> = format!("{}.{}.svc.{domain}", key.name, key.namespace)
        .to_ascii_lowercase()
        .into();
    let mut out = Vec::new();
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        if let Some(target) = spec.external_name.as_deref().filter(|n| !n.is_empty()) {
            out.push(Entry::Name(base, Data::Cname(fqdn(target).into())));
        }
        return out;
    }
    let srv_owner = |name: &str, proto: &str| -> Box<str> {
        format!(
            "_{}._{}.{base}",
            name.to_ascii_lowercase(),
            proto.to_ascii_lowercase()
        )
        .into()
    };
    let ips = cluster_ips(svc);
    if !ips.is_empty() && spec.cluster_ip.as_deref() != Some(CLUSTER_IP_NONE) {
        for ip in ips {
            out.push(Entry::Name(base.clone(), address(ip)));
            out.push(Entry::Ptr(ip, base.clone()));
        }
        for p in spec.ports.iter().flatten() {
            let (Some(name), Ok(port)) = (
                p.name.as_deref().filter(|n| !n.is_empty()),
                u16::try_from(p.port),
            ) else {
                continue;
            };
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            out.push(Entry::Name(
                srv_owner(name, proto),
                Data::Srv {
                    priority: 0,
                    weight: 100,
                    port,
                    target: base.clone(),
                },
            ));
        }
    } else if spec.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE) {
        let endpoints = headless_endpoints(tracked, key, svc);
        let weight = u16::try_from(100 / endpoints.len().max(1))
            .unwrap_or(1)
            .max(1);
        let mut addrs = BTreeSet::new();
        for ep in &endpoints {
            if addrs.insert(ep.addr) {
                out.push(Entry::Name(base.clone(), address(ep.addr)));
            }
            let label = ep
                .hostname
                .as_deref()
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| dashed(ep.addr));
            let own: Box<str> = format!("{label}.{base}").into();
            out.push(Entry::Name(own.clone(), address(ep.addr)));
            if ep.hostname.is_some() {
                out.push(Entry::Ptr(ep.addr, own.clone()));
            }
            for (name, proto, port) in &ep.ports {
                out.push(Entry::Name(
                    srv_owner(name, proto),
                    Data::Srv {
                        priority: 0,
                        weight,
                        port: *port,
                        target: own.clone(),
                    },
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The endpoints a headless service's names list: with a selector (the embedded
/// store), the pods it selects; otherwise its EndpointSlices. Ready ones, or every
/// one with an address when `publishNotReadyAddresses` is set.
fn headless_endpoints(tracked: &Tracked, key: &ObjectKey, svc: &Service) -> Vec<Endpoint> {
    let state = &tracked.state;
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let unready_too = spec.publish_not_ready_addresses == Some(true);
    // The families it lists (`spec.ipFamilies`; IPv4 when unset, as the API
    // server defaults a single-stack cluster's).
    let families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    let families = if families.is_empty() {
        vec![Family::V4]
    } else {
        families
    };
    let ports: Vec<(String, String, &IntOrString, i32)> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| !n.is_empty())?;
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            Some((name.to_string(), protocol, p.target_port.as_ref()?, p.port))
        })
        .collect();
    let has_selector =
        !state.endpoints_from_slices && spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    if has_selector {
        let Some(pair) = selector_pair(key, svc) else {
            return Vec::new();
        };
        let selector = spec.selector.as_ref();
        return tracked
            .index
            .pods_with(&pair)
            .filter_map(|k| state.pods.get(k))
            .filter(|p| p.selected_by(selector) && (unready_too || p.ready))
            .flat_map(|p| {
                // Each of the pod's addresses of the service's families.
                let addrs = [p.ip.map(IpAddr::V4), p.ip6.map(IpAddr::V6)];
                let hostname: Option<Box<str>> = p.hostname_in(&key.name).map(Into::into);
                let ports: Vec<(String, String, u16)> = ports
                    .iter()
                    .filter_map(|(name, proto, target, _)| {
                        let port = p.target_port(target, proto)?;
                        Some((name.clone(), proto.clone(), port))
                    })
                    .collect();
                addrs
                    .into_iter()
                    .flatten()
                    .filter(|a| families.contains(&Family::of(*a)))
                    .map(move |addr| Endpoint {
                        addr,
                        hostname: hostname.clone(),
                        ports: ports.clone(),
                    })
            })
            .collect();
    }
    let slices: Vec<&SliceFacts> = tracked
        .index
        .slices_of(key)
        .filter_map(|k| state.endpoint_slices.get(k))
        .filter(|s| Family::parse(&s.address_type).is_some_and(|f| families.contains(&f)))
        .collect();
    let mut out = Vec::new();
    for slice in slices {
        let ports: Vec<(String, String, u16)> = slice
            .ports
            .iter()
            .filter(|(name, _, _)| !name.is_empty())
            .map(|(name, proto, port)| (name.to_string(), proto.to_string(), *port))
            .collect();
        for ep in slice.endpoints.iter().filter(|e| e.ready || unready_too) {
            for &addr in &ep.addresses {
                out.push(Endpoint {
                    addr,
                    hostname: ep.hostname.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
