//! The cluster DNS service in the embedded store, as kubeadm installs it:
//! `kube-system/kube-dns` at the cluster DNS address, ports 53 UDP (`dns`) and TCP
//! (`dns-tcp`), whose endpoints are the agents' own listeners, one EndpointSlice
//! per node (`kube-dns-<node>`). `internalTrafficPolicy: Local`: a pod's queries go
//! to its own node's agent (as NodeLocal DNSCache), never across nodes. Written
//! through the same apply as `lb apply` (validation, allocation); a `kube-dns` the
//! agents did not write (a user's own DNS) is left alone.

use std::net::Ipv4Addr;

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

/// The EndpointSlice of `node`'s listener.
fn slice_name(node: &str) -> String {
    format!("{NAME}-{node}")
}

/// The service and `node`'s EndpointSlice (its listener at `addr`), as a manifest.
pub fn manifest(cluster_ip: Ipv4Addr, node: &str, addr: Ipv4Addr) -> String {
    let slice = slice_name(node);
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
  labels: {{k8s-app: kube-dns, kubernetes.io/name: lb-dns, {MANAGED_BY}: {MANAGER}}}
spec:
  clusterIP: {cluster_ip}
  internalTrafficPolicy: Local
  ports:
  - {{name: dns, port: 53, targetPort: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice}
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: {NAME}, endpointslice.kubernetes.io/managed-by: lb-agent, {MANAGED_BY}: {MANAGER}}}
addressType: IPv4
endpoints:
- addresses: ['{addr}']
  nodeName: '{node}'
  conditions: {{ready: true, serving: true, terminating: false}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"
    )
}

/// What `state` needs for the cluster DNS service at `cluster_ip` to reach
/// `node`'s listener at `addr`.
pub fn due(state: &Facts, cluster_ip: Ipv4Addr, node: &str, addr: Ipv4Addr) -> Due {
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
    if crate::model::cluster_ip(svc) != Some(cluster_ip) {
        return Due::Write;
    }
    let slice = state
        .endpoint_slices
        .get(&ObjectKey::new(NAMESPACE, &slice_name(node)));
    let current = slice.is_some_and(|s| {
        s.endpoints.len() == 1
            && s.endpoints[0].ready
            && s.endpoints[0].node_name.as_deref() == Some(node)
            && s.endpoints[0].ipv4().eq([addr])
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
        let ip: Ipv4Addr = "10.96.0.10".parse().unwrap();
        let addr: Ipv4Addr = "192.168.1.2".parse().unwrap();
        assert_eq!(due(&Facts::default(), ip, "node1", addr), Due::Write);
        let s = facts(&manifest(ip, "node1", addr));
        assert_eq!(
            crate::model::cluster_ip(&s.services[&ObjectKey::new(NAMESPACE, NAME)]),
            Some(ip)
        );
        assert_eq!(due(&s, ip, "node1", addr), Due::Nothing);
        // Another node's agent writes its own slice; a moved address rewrites it.
        assert_eq!(due(&s, ip, "node2", addr), Due::Write);
        assert_eq!(
            due(&s, ip, "node1", "192.168.1.9".parse().unwrap()),
            Due::Write
        );
        let foreign = facts(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: kube-dns\n  namespace: kube-system\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 53, protocol: UDP}]\n",
        );
        assert_eq!(due(&foreign, ip, "node1", addr), Due::Foreign);
    }
}
