//! What planning reads of a pod and of an EndpointSlice, taken from the object once
//! when it arrives. A decoded `Pod` is ~4.5 KB before its strings (its spec and one
//! container are 3.5 KB of mostly empty fields) and an EndpointSlice of 10 endpoints
//! ~4 KB: an agent holding 1,000,000 pods as objects needs ~10 GB, as facts ~0.3 GB.
//! The readings themselves (readiness, addresses, named ports) are the model's.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{core::v1::Pod, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{pod_ip, pod_ready, slice_service};

/// A named port: (name, protocol, number).
pub type NamedPort = (Box<str>, Box<str>, u16);

/// A pod as planning reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Its labels, sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Its address while it is an endpoint candidate ([`pod_ready`]), else None.
    pub ready_ip: Option<Ipv4Addr>,
    /// Its address, ready or not (the agent follows the routes to every pod).
    pub ip: Option<Ipv4Addr>,
    /// `spec.nodeName`.
    pub node_name: Option<Box<str>>,
    /// Its containers' named ports: (name, protocol, port), in the containers' order.
    named_ports: Box<[NamedPort]>,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> Self {
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let named_ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some((
                    p.name.as_deref()?.into(),
                    p.protocol.as_deref().unwrap_or("TCP").into(),
                    u16::try_from(p.container_port).ok()?,
                ))
            })
            .collect();
        let ip = pod_ip(pod);
        PodFacts {
            labels,
            ready_ip: ip.filter(|_| pod_ready(pod)),
            ip,
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(Into::into),
            named_ports,
        }
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

    /// The IPv4 addresses of its endpoints (none unless the slice is IPv4).
    pub fn ipv4_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.endpoints
            .iter()
            .filter(|_| &*self.address_type == "IPv4")
            .flat_map(EndpointFacts::ipv4)
    }
}
