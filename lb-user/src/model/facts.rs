//! What planning reads of a pod and of an EndpointSlice, taken from the object once
//! when it arrives. A decoded `Pod` is ~4.5 KB before its strings (its spec and one
//! container are 3.5 KB of mostly empty fields) and an EndpointSlice of 10 endpoints
//! ~4 KB: an agent holding 1,000,000 pods as objects needs ~10 GB, as facts ~0.3 GB.
//! The readings themselves (readiness, addresses, named ports) are the model's.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use serde::Deserialize;

use super::{Family, PodIps, candidate, ips_of, pod_ips, pod_ready, slice_service};

/// Makes a service as the agent keeps it: the object whole (planning, DNS, LoadBalancer
/// addresses and the EndpointSlice controller read most of it), less what none of
/// them reads (`managedFields`), and without the room decoding leaves spare in its
/// lists (a one-port service's `ports` had room for four). About 0.5 KB less per
/// service: 50 MB of an agent holding 100,000.
pub fn trim_service(svc: &mut Service) {
    let meta = &mut svc.metadata;
    meta.managed_fields = None;
    shrink(&mut meta.finalizers);
    shrink(&mut meta.owner_references);
    if let Some(spec) = &mut svc.spec {
        shrink(&mut spec.ports);
        shrink(&mut spec.cluster_ips);
        shrink(&mut spec.ip_families);
        shrink(&mut spec.external_ips);
        shrink(&mut spec.load_balancer_source_ranges);
    }
    if let Some(status) = &mut svc.status {
        shrink(&mut status.conditions);
        if let Some(lb) = &mut status.load_balancer {
            shrink(&mut lb.ingress);
            for ingress in lb.ingress.iter_mut().flatten() {
                shrink(&mut ingress.ports);
            }
        }
    }
}

fn shrink<T>(list: &mut Option<Vec<T>>) {
    if let Some(list) = list {
        list.shrink_to_fit();
    }
}

/// What [`PodFacts::from_json`] decodes of a stored pod (every other field is
/// skipped unread), its strings borrowed from the row ([`Text`]).
#[derive(Deserialize)]
struct PodRow<'a> {
    #[serde(default, borrow)]
    metadata: MetaRow<'a>,
    #[serde(borrow)]
    spec: Option<SpecRow<'a>>,
    #[serde(borrow)]
    status: Option<StatusRow<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaRow<'a> {
    #[serde(borrow)]
    labels: Option<BTreeMap<Text<'a>, Text<'a>>>,
    /// Only whether it is set is read.
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecRow<'a> {
    #[serde(borrow)]
    node_name: Option<Text<'a>>,
    #[serde(borrow)]
    hostname: Option<Text<'a>>,
    #[serde(borrow)]
    subdomain: Option<Text<'a>>,
    #[serde(default, borrow)]
    containers: Vec<ContainerRow<'a>>,
}

#[derive(Deserialize)]
struct ContainerRow<'a> {
    #[serde(borrow)]
    ports: Option<Vec<PortRow<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortRow<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    protocol: Option<Text<'a>>,
    container_port: i32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusRow<'a> {
    #[serde(rename = "podIP", borrow)]
    pod_ip: Option<Text<'a>>,
    #[serde(rename = "podIPs", borrow)]
    pod_ips: Option<Vec<PodIpRow<'a>>>,
    #[serde(borrow)]
    phase: Option<Text<'a>>,
    #[serde(borrow)]
    conditions: Option<Vec<ConditionRow<'a>>>,
}

#[derive(Deserialize)]
struct PodIpRow<'a> {
    #[serde(borrow)]
    ip: Text<'a>,
}

#[derive(Deserialize)]
struct ConditionRow<'a> {
    #[serde(rename = "type", borrow)]
    type_: Text<'a>,
    #[serde(borrow)]
    status: Text<'a>,
}

/// A string of a stored row: borrowed from the row's text, or copied where JSON
/// escapes it. Decoded as `String`s, each of a pod's strings (its labels, node,
/// address) was allocated only to be copied into its facts (~36 ns of a pod's
/// ~0.79 us).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(std::borrow::Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }

    /// The string of `text`, if any.
    fn of<'t>(text: &'t Option<Text<'_>>) -> Option<&'t str> {
        text.as_ref().map(Text::as_str)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(v.into()))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(v.to_owned().into()))
            }

            fn visit_string<E>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(v.into()))
            }
        }
        d.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// A named port: (name, protocol, number).
pub type NamedPort = (Box<str>, Box<str>, u16);

/// A pod as planning reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Its labels, sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Its IPv4 address while it is an endpoint candidate ([`pod_ready`]), else None.
    pub ready_ip: Option<Ipv4Addr>,
    /// Its IPv4 address, ready or not (the agent follows the routes to every pod).
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address, ready or not.
    pub ip6: Option<Ipv6Addr>,
    /// Whether it is an endpoint candidate ([`pod_ready`]).
    pub ready: bool,
    /// `spec.nodeName`.
    pub node_name: Option<Box<str>>,
    /// Its containers' named ports: (name, protocol, port), in the containers' order.
    named_ports: Box<[NamedPort]>,
    /// `spec.hostname` and `spec.subdomain`, when both are set: its own DNS name
    /// under the headless service the subdomain names.
    dns_name: Option<(Box<str>, Box<str>)>,
}

impl PodFacts {
    /// Its addresses, both families, ready or not.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ip6.map(IpAddr::V6))
    }

    pub fn of(pod: &Pod) -> Self {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.container_port));
        let ip = pod_ips(pod);
        let spec = pod.spec.as_ref();
        Self::from_parts(
            (pod.metadata.labels.iter().flatten()).map(|(k, v)| (k.as_str(), v.as_str())),
            ip,
            pod_ready(pod),
            spec.and_then(|s| s.node_name.as_deref()),
            ports,
        )
        .named(spec.and_then(|s| Some((s.hostname.as_deref()?, s.subdomain.as_deref()?))))
    }

    /// The facts of a pod stored as JSON (as `serde_json` writes a `Pod`), decoding
    /// only the fields they read: the agent reads 1,000,000 pods at start, and a
    /// whole `Pod` decoded is ~4.5 KB of mostly empty fields.
    pub fn from_json(json: &str) -> serde_json::Result<Self> {
        let row: PodRow = serde_json::from_str(json)?;
        let ip = row.status.as_ref().map_or_else(PodIps::default, |s| {
            ips_of(
                Text::of(&s.pod_ip),
                s.pod_ips.iter().flatten().map(|i| i.ip.as_str()),
            )
        });
        let ready = row.status.as_ref().is_some_and(|s| {
            candidate(
                ip.any(),
                Text::of(&s.phase),
                row.metadata.deletion_timestamp.is_some(),
                s.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_.as_str() == "Ready")
                    .map(|c| c.status.as_str()),
            )
        });
        let spec = row.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (Text::of(&p.name), Text::of(&p.protocol), p.container_port));
        let labels = row.metadata.labels.iter().flatten();
        Ok(Self::from_parts(
            labels.map(|(k, v)| (k.as_str(), v.as_str())),
            ip,
            ready,
            spec.and_then(|s| Text::of(&s.node_name)),
            ports,
        )
        .named(spec.and_then(|s| Some((Text::of(&s.hostname)?, Text::of(&s.subdomain)?)))))
    }

    /// From what is read of a pod: its labels (sorted by key), address, whether
    /// it is ready, node, and its containers' ports (name, protocol, number).
    fn from_parts<'a>(
        labels: impl Iterator<Item = (&'a str, &'a str)>,
        ip: PodIps,
        ready: bool,
        node_name: Option<&str>,
        ports: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, i32)>,
    ) -> Self {
        PodFacts {
            labels: labels.map(|(k, v)| (k.into(), v.into())).collect(),
            ready_ip: ip.v4.filter(|_| ready),
            ip: ip.v4,
            ip6: ip.v6,
            ready,
            node_name: node_name.map(Into::into),
            named_ports: ports
                .filter_map(|(name, protocol, port)| {
                    Some((
                        name?.into(),
                        protocol.unwrap_or("TCP").into(),
                        u16::try_from(port).ok()?,
                    ))
                })
                .collect(),
            dns_name: None,
        }
    }

    /// Its address of `family` while it is an endpoint candidate.
    pub fn ready_addr(&self, family: Family) -> Option<IpAddr> {
        if !self.ready {
            return None;
        }
        match family {
            Family::V4 => self.ip.map(IpAddr::V4),
            Family::V6 => self.ip6.map(IpAddr::V6),
        }
    }

    /// With its DNS name (`hostname`, `subdomain`), when both are set and not empty.
    fn named(mut self, name: Option<(&str, &str)>) -> Self {
        self.dns_name = name
            .filter(|(h, s)| !h.is_empty() && !s.is_empty())
            .map(|(h, s)| (h.into(), s.into()));
        self
    }

    /// Its hostname under the headless service `service`: set when its subdomain
    /// names that service (as the EndpointSlice controller sets an endpoint's).
    pub fn hostname_in(&self, service: &str) -> Option<&str> {
        let (host, sub) = self.dns_name.as_ref()?;
        (**sub == *service).then_some(&**host)
    }

    /// Its labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (&**k, &**v))
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }

    /// Whether `selector` selects the pod: every pair present and equal. An empty or
    /// missing selector selects no pod (such services take manual endpoints).
    pub fn selected_by(&self, selector: Option<&BTreeMap<String, String>>) -> bool {
        let Some(selector) = selector.filter(|s| !s.is_empty()) else {
            return false;
        };
        selector
            .iter()
            .all(|(k, v)| self.label(k) == Some(v.as_str()))
    }

    /// The port the pod serves `target_port` on for `protocol`: a number as is, a
    /// name through its containers' ports.
    pub fn target_port(&self, target_port: &IntOrString, protocol: &str) -> Option<u16> {
        match target_port {
            IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
            IntOrString::String(name) => self
                .named_ports
                .iter()
                .find(|(n, p, _)| **n == **name && **p == *protocol)
                .map(|(_, _, port)| *port),
        }
    }
}

/// One endpoint of an EndpointSlice as planning reads it; unset conditions defaulted
/// as the API defines them (ready when unset, serving as ready, not terminating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Its addresses that parse (IPv4 in an IPv4 slice).
    pub addresses: Box<[IpAddr]>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<Box<str>>,
    /// Its `hostname` (its own DNS name under a headless service).
    pub hostname: Option<Box<str>>,
}

impl EndpointFacts {
    /// Its IPv4 addresses.
    pub fn ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addresses.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }
}

/// An EndpointSlice as planning reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceFacts {
    /// Its `kubernetes.io/service-name` label.
    pub service: Option<Box<str>>,
    /// `addressType`.
    pub address_type: Box<str>,
    /// Its ports: (name, protocol, port); unset names are "", protocols "TCP";
    /// ports unset, 0 or out of range left out.
    pub ports: Box<[NamedPort]>,
    pub endpoints: Box<[EndpointFacts]>,
}

impl SliceFacts {
    pub fn of(slice: &EndpointSlice) -> Self {
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                EndpointFacts {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    node_name: ep.node_name.as_deref().map(Into::into),
                    hostname: ep.hostname.as_deref().map(Into::into),
                }
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.as_deref().unwrap_or("").into(),
                    p.protocol.as_deref().unwrap_or("TCP").into(),
                    p.port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0)?,
                ))
            })
            .collect();
        SliceFacts {
            service: slice_service(slice).map(Into::into),
            address_type: slice.address_type.as_str().into(),
            ports,
            endpoints,
        }
    }

    /// The addresses of its endpoints (none unless the slice is IPv4 or IPv6).
    pub fn ip_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints
            .iter()
            .filter(|_| matches!(&*self.address_type, "IPv4" | "IPv6"))
            .flat_map(|e| e.addresses.iter().copied())
    }
}
