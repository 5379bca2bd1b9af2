//! The cluster DNS service in the embedded store, as kubeadm installs it:
//! `kube-system/kube-dns` at the cluster DNS address, ports 53 UDP (`dns`) and TCP
//! (`dns-tcp`), whose endpoints are the agents' own listeners, one EndpointSlice
//! per node (`kube-dns-<node>`). `internalTrafficPolicy: Local`: a pod's queries go
//! to its own node's agent (as NodeLocal DNSCache), never across nodes. Written
//! through the same apply as `lb apply` (validation, allocation); a `kube-dns` the
//! agents did not write (a user's own DNS) is left alone.

use std::net::IpAddr;

use crate::{model::ObjectKey, state::Facts};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
/// The label that marks the objects as the agents' (the Kubernetes convention).
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "lb";

/// What the store's cluster DNS service needs from this node's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// As it should be.
    Nothing,
    /// Missing or stale: (re)write [`manifest`].
    Write,
    /// Someone else's `kube-dns`: left alone.
    Foreign,
}

/// The EndpointSlice of `node`'s listener of a family (IPv4's keeps the name it had
/// before IPv6 was served).
fn slice_name(node: &str, addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{NAME}-{node}"),
        IpAddr::V6(_) => format!("{NAME}-{node}-ipv6"),
    }
}

/// The family's name as `ipFamilies` and `addressType` spell it.
fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The service and `node`'s EndpointSlices, as a manifest: `dns` pairs each of the
/// service's clusterIPs (primary first, one per family) with `node`'s listener of
/// that family.
pub fn manifest(dns: &[(IpAddr, IpAddr)], node: &str) -> String {
    let ips: Vec<String> = dns.iter().map(|(ip, _)| format!("'{ip}'")).collect();
    let families: Vec<&str> = dns.iter().map(|(ip, _)| family(*ip)).collect();
    let policy = if dns.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
  labels: {{k8s-app: kube-dns, kubernetes.io/name: lb-dns, {MANAGED_BY}: {MANAGER}}}
spec:
  clusterIP: {}
  clusterIPs: [{}]
  ipFamilyPolicy: {policy}
  ipFamilies: [{}]
  internalTrafficPolicy: Local
  ports:
  - {{name: dns, port: 53, targetPort: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}}
",
        ips.first().map(String::as_str).unwrap_or("''"),
        ips.join(", "),
        families.join(", "),
    );
    for (_, addr) in dns {
        let slice = slice_name(node, *addr);
        let family = family(*addr);
        out.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice}
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: {NAME}, endpointslice.kubernetes.io/managed-by: lb-agent, {MANAGED_BY}: {MANAGER}}}
addressType: {family}
endpoints:
- addresses: ['{addr}']
  nodeName: '{node}'
  conditions: {{ready: true, serving: true, terminating: false}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"
        ));
    }
    out
}

/// What `state` needs for the cluster DNS service at `dns`'s clusterIPs to reach
/// `node`'s listeners (see [`manifest`]).
pub fn due(state: &Facts, dns: &[(IpAddr, IpAddr)], node: &str) -> Due {
    let Some(svc) = state.services.get(&ObjectKey::new(NAMESPACE, NAME)) else {
        return Due::Write;
    };
    let ours = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|m| m == MANAGER);
    if !ours {
        return Due::Foreign;
    }
    let want: Vec<IpAddr> = dns.iter().map(|(ip, _)| *ip).collect();
    if crate::model::cluster_ips(svc) != want {
        return Due::Write;
    }
    let current = dns.iter().all(|(_, addr)| {
        let slice = state
            .endpoint_slices
            .get(&ObjectKey::new(NAMESPACE, &slice_name(node, *addr)));
        slice.is_some_and(|s| {
            s.endpoints.len() == 1
                && s.endpoints[0].ready
                && s.endpoints[0].node_name.as_deref() == Some(node)
                && s.ip_addrs().eq([*addr])
        })
    });
    if current { Due::Nothing } else { Due::Write }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::applied;

    fn facts(yaml: &str) -> Facts {
        applied(yaml).into()
    }

    #[test]
    fn the_manifest_is_valid_and_written_until_it_is_there() {
        let ip: IpAddr = "10.96.0.10".parse().unwrap();
        let addr: IpAddr = "192.168.1.2".parse().unwrap();
        let dns = [(ip, addr)];
        assert_eq!(due(&Facts::default(), &dns, "node1"), Due::Write);
        let s = facts(&manifest(&dns, "node1"));
        assert_eq!(
            crate::model::cluster_ips(&s.services[&ObjectKey::new(NAMESPACE, NAME)]),
            vec![ip]
        );
        assert_eq!(due(&s, &dns, "node1"), Due::Nothing);
        // Another node's agent writes its own slice; a moved address rewrites it.
        assert_eq!(due(&s, &dns, "node2"), Due::Write);
        assert_eq!(
            due(&s, &[(ip, "192.168.1.9".parse().unwrap())], "node1"),
            Due::Write
        );
        let foreign = facts(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: kube-dns\n  namespace: kube-system\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 53, protocol: UDP}]\n",
        );
        assert_eq!(due(&foreign, &dns, "node1"), Due::Foreign);
    }

    /// A dual-stack cluster DNS (`--cluster-dns 10.96.0.10,fd00:10:96::a`): one
    /// RequireDualStack service with both clusterIPs, and a slice per family for
    /// the node's listener of that family; adding the IPv6 address to a service
    /// that had the IPv4 one alone rewrites it.
    #[test]
    fn a_dual_stack_cluster_dns_has_a_cluster_ip_and_a_slice_per_family() {
        let v4: IpAddr = "10.96.0.10".parse().unwrap();
        let v6: IpAddr = "fd00:10:96::a".parse().unwrap();
        let (a4, a6): (IpAddr, IpAddr) =
            ("192.168.1.2".parse().unwrap(), "fd00:1::2".parse().unwrap());
        let dns = [(v4, a4), (v6, a6)];
        let alloc = crate::store::alloc::Allocation {
            service_cidrs: crate::store::alloc::parse_service_cidrs(
                "10.96.0.0/12,fd00:10:96::/112",
            )
            .unwrap(),
            ..Default::default()
        };
        let s: Facts = crate::store::apply::applied_in(&manifest(&dns, "node1"), &alloc).into();
        assert_eq!(
            crate::model::cluster_ips(&s.services[&ObjectKey::new(NAMESPACE, NAME)]),
            vec![v4, v6]
        );
        let v6_slice = &s.endpoint_slices[&ObjectKey::new(NAMESPACE, "kube-dns-node1-ipv6")];
        assert_eq!(&*v6_slice.address_type, "IPv6");
        assert_eq!(v6_slice.ip_addrs().collect::<Vec<_>>(), vec![a6]);
        assert_eq!(due(&s, &dns, "node1"), Due::Nothing);
        let single = facts(&manifest(&[(v4, a4)], "node1"));
        assert_eq!(due(&single, &dns, "node1"), Due::Write);
    }
}
