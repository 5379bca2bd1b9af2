//! The EndpointSlice controller of the embedded store, as kube-controller-
//! manager's is a cluster's: every service with a selector gets EndpointSlices
//! listing the pods it selects (ready or not, with their conditions), so that
//! what reads the store through the Kubernetes API (`kubectl describe`, an agent
//! in Kubernetes mode on another machine) sees the endpoints the store-mode
//! agents compute from the pods themselves. `lb api-server` runs it.
//!
//! Its slices carry `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.lb.io`; slices of other managers (written by hand
//! for a service without a selector) are never touched. A service's pods are
//! grouped by the ports their named target ports resolve to (one group, one or
//! more slices), at most 100 endpoints a slice, named `SERVICE-lb-N`; a
//! dual-stack service gets slices of each of its families (`addressType` IPv4 and
//! IPv6, each pod under its address of the family), as the controller makes them. It wakes on
//! each commit to the store (its commit marker). The store
//! agents ignore slices of services with a selector (they select the pods), so
//! these never count twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Result;
use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use tracing::warn;

use crate::{
    model::{
        Document, Family, Kind, LABEL_SERVICE_NAME, Object, ObjectKey, PodFacts,
        TYPE_EXTERNAL_NAME, cluster_ips, service_type,
    },
    state::{Tracked, selector_pair},
    store::{self, Mode, Ranges, Store},
};

pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.lb.io";
/// Endpoints per slice (the controller's default `--max-endpoints-per-slice`).
const MAX_ENDPOINTS: usize = 100;
/// How often the store's revision is looked at when no commit woke the
/// controller (a missed notification).
const POLL: Duration = Duration::from_secs(1);

/// One port of a slice: (name, protocol, number).
type SlicePort = (String, String, u16);

/// The slices the service `key` should have (none without a selector, or for an
/// ExternalName service).
pub fn desired(key: &ObjectKey, svc: &Service, tracked: &Tracked) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
    let (Some(selector), Some(pair)) = (selector, selector_pair(key, svc)) else {
        return Vec::new();
    };
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        return Vec::new();
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut slices = Vec::new();
    for family in families(svc) {
        let before = slices.len();
        family_slices(
            key,
            svc,
            tracked,
            &pair,
            selector,
            family,
            publish_not_ready,
            &mut slices,
        );
        if slices.len() == before {
            // A selector that selects nothing still gets one slice per family (no
            // endpoints, the service's ports), as the API server's controller keeps.
            let ports = placeholder_ports(svc);
            let index = slices.len();
            slices.push(slice(key, svc, index, &ports, Vec::new(), family));
        }
    }
    slices
}

/// The families a service's slices are of: `spec.ipFamilies`, else its
/// clusterIPs', else IPv4.
fn families(svc: &Service) -> Vec<Family> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    if out.is_empty() {
        out = cluster_ips(svc).into_iter().map(Family::of).collect();
    }
    out.dedup();
    if out.is_empty() {
        out.push(Family::V4);
    }
    out
}

/// The slices of `family` for the pods `selector` selects (none when no pod has an
/// address of the family), appended to `slices` (their index goes on from its
/// length).
#[allow(clippy::too_many_arguments)]
fn family_slices(
    key: &ObjectKey,
    svc: &Service,
    tracked: &Tracked,
    pair: &crate::state::LabelPair,
    selector: &std::collections::BTreeMap<String, String>,
    family: Family,
    publish_not_ready: bool,
    slices: &mut Vec<EndpointSlice>,
) {
    let Some(spec) = &svc.spec else {
        return;
    };
    let addr = |pod: &PodFacts| -> Option<IpAddr> {
        match family {
            Family::V4 => pod.ip.map(IpAddr::V4),
            Family::V6 => pod.ip6.map(IpAddr::V6),
        }
    };
    let mut groups: BTreeMap<Vec<SlicePort>, Vec<(&ObjectKey, &PodFacts)>> = BTreeMap::new();
    for pod_key in tracked.index.pods_with(pair) {
        let Some(pod) = tracked.state.pods.get(pod_key) else {
            continue;
        };
        if addr(pod).is_none() || !pod.selected_by(Some(selector)) {
            continue;
        }
        let ports: Vec<SlicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                let number = pod.target_port(&target, &protocol)?;
                Some((p.name.clone().unwrap_or_default(), protocol, number))
            })
            .collect();
        groups.entry(ports).or_default().push((pod_key, pod));
    }
    for (ports, mut pods) in groups {
        pods.sort_by_key(|(k, p)| (addr(p), (*k).clone()));
        for chunk in pods.chunks(MAX_ENDPOINTS) {
            let endpoints = chunk
                .iter()
                .map(|(pod_key, pod)| {
                    let ready = publish_not_ready || pod.ready;
                    Endpoint {
                        addresses: vec![
                            addr(pod)
                                .expect("pods without an address are left out")
                                .to_string(),
                        ],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        hostname: pod.hostname_in(&key.name).map(str::to_string),
                        node_name: pod.node_name.as_deref().map(str::to_string),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            namespace: Some(pod_key.namespace.clone()),
                            name: Some(pod_key.name.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect();
            let index = slices.len();
            slices.push(slice(key, svc, index, &ports, endpoints, family));
        }
    }
}

/// The ports of a slice without endpoints: the service's ports whose target port
/// is a number (a name resolves only through a pod).
fn placeholder_ports(svc: &Service) -> Vec<SlicePort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| matches!(p.target_port, None | Some(IntOrString::Int(_))))
        .map(|p| {
            let number = match p.target_port {
                Some(IntOrString::Int(n)) => n,
                _ => p.port,
            };
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                u16::try_from(number).unwrap_or(0),
            )
        })
        .collect()
}

fn slice(
    key: &ObjectKey,
    svc: &Service,
    index: usize,
    ports: &[SlicePort],
    endpoints: Vec<Endpoint>,
    family: Family,
) -> EndpointSlice {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.into(), key.name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    EndpointSlice {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("{}-lb-{index}", key.name)),
            namespace: Some(key.namespace.clone()),
            labels: Some(labels),
            owner_references: svc.metadata.uid.as_ref().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: key.name.clone(),
                    uid: uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        },
        address_type: family.name().into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: Some(name.clone()),
                    protocol: Some(protocol.clone()),
                    port: Some(i32::from(*port)),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// Brings the slices of `services` to what they should be: desired ones written
/// (unchanged ones are left as they are by the store's apply), ones this
/// controller made that are no longer wanted deleted.
fn reconcile(store: &Store, tracked: &Tracked, services: &BTreeSet<ObjectKey>) -> Result<()> {
    let mut docs = Vec::new();
    let mut stale = Vec::new();
    for key in services {
        let wanted = tracked
            .state
            .services
            .get(key)
            .map(|svc| desired(key, svc, tracked))
            .unwrap_or_default();
        let names: BTreeSet<String> = wanted
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        for slice_key in tracked.index.slices_of(key) {
            if names.contains(&slice_key.name) {
                continue;
            }
            let ours = store
                .row(Kind::EndpointSlice, slice_key)?
                .and_then(|r| r.body)
                .is_some_and(|b| managed_here(&b));
            if ours {
                stale.push((Kind::EndpointSlice, slice_key.clone()));
            }
        }
        docs.extend(wanted.into_iter().map(|s| Document {
            file: "endpointslice-controller".into(),
            index: 1,
            object: Object::EndpointSlice(Box::new(s)),
        }));
    }
    if !docs.is_empty() {
        store.apply_owned(docs, &Ranges::default(), Mode::Apply)?;
    }
    if !stale.is_empty() {
        store.delete(&stale)?;
    }
    Ok(())
}

/// Whether a stored slice (JSON) is one this controller made.
fn managed_here(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["metadata"]["labels"][MANAGED_BY_LABEL].as_str() == Some(MANAGED_BY))
}

/// Every service, and every service a slice names (a deleted service's slices).
fn everything(tracked: &Tracked) -> BTreeSet<ObjectKey> {
    let state = &tracked.state;
    let owners = state.endpoint_slices.iter().filter_map(|(k, s)| {
        s.service
            .as_deref()
            .map(|name| ObjectKey::new(&k.namespace, name))
    });
    state.services.keys().cloned().chain(owners).collect()
}

/// Follows the store in `dir` and keeps the slices in step, until `stop`.
pub fn run(dir: &Path, stop: &AtomicBool) -> Result<()> {
    let store = Store::new(dir);
    let load = || -> Result<(u64, Tracked)> {
        let facts = store.load_facts()?;
        Ok((facts.revision, Tracked::new(facts)))
    };
    let (wake, woken) = std::sync::mpsc::channel();
    let _watcher = store::on_commit(dir, move || {
        let _ = wake.send(());
    })?;
    let (mut rev, mut tracked) = load()?;
    let mut pending = everything(&tracked);
    while !stop.load(Ordering::Relaxed) {
        if !pending.is_empty() {
            match reconcile(&store, &tracked, &pending) {
                Ok(()) => pending.clear(),
                // Another writer got in between (a service deleted under us):
                // the next round reads its change and tries again.
                Err(e) => warn!(error = %e, "EndpointSlice controller: will retry"),
            }
        }
        let _ = woken.recv_timeout(POLL);
        while woken.try_recv().is_ok() {}
        if store::last_commit(dir).is_some_and(|(r, _)| r <= rev) {
            continue;
        }
        let mut touched = BTreeSet::new();
        match store.fact_changes_since(rev, |batch| touched.extend(tracked.take(batch).services))? {
            Some(now) => rev = now,
            None => {
                (rev, tracked) = load()?;
                touched = everything(&tracked);
            }
        }
        pending.extend(touched);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{state::Facts, store::apply::applied};

    fn tracked(yaml: &str) -> Tracked {
        Tracked::new(Facts::from(applied(yaml)))
    }

    const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
";

    fn pod(name: &str, ip: &str, port: u16, ready: bool) -> String {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: node1
  containers: [{{name: c, image: x, ports: [{{name: http, containerPort: {port}}}]}}]
status:
  podIP: {ip}
  phase: Running
  conditions: [{{type: Ready, status: \"{}\"}}]
",
            if ready { "True" } else { "False" }
        )
    }

    #[test]
    fn selected_pods_become_endpoints_grouped_by_their_resolved_ports() {
        let yaml = format!(
            "{SERVICE}{}{}{}",
            pod("a", "10.244.0.2", 8080, true),
            pod("b", "10.244.0.3", 8080, false),
            pod("c", "10.244.0.4", 9090, true)
        );
        let t = tracked(&yaml);
        let key = ObjectKey::new("default", "web");
        let slices = desired(&key, &t.state.services[&key], &t);
        assert_eq!(slices.len(), 2, "{slices:#?}");
        let by_port: BTreeMap<i32, &EndpointSlice> = slices
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port.unwrap(), s))
            .collect();
        let s8080 = by_port[&8080];
        let addrs: Vec<(&str, Option<bool>)> = s8080
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].as_str(),
                    e.conditions.as_ref().unwrap().ready,
                )
            })
            .collect();
        assert_eq!(
            addrs,
            [("10.244.0.2", Some(true)), ("10.244.0.3", Some(false))]
        );
        assert_eq!(by_port[&9090].endpoints.len(), 1);
        let labels = s8080.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(s8080.endpoints[0].node_name.as_deref(), Some("node1"));
    }

    #[test]
    fn a_service_without_a_selector_gets_none_and_one_that_selects_nothing_gets_an_empty_one() {
        let t = tracked(
            "apiVersion: v1\nkind: Service\nmetadata: {name: manual}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: lonely}\nspec:\n  selector: {app: none}\n  ports: [{port: 80, targetPort: 8080}]\n",
        );
        let manual = ObjectKey::new("default", "manual");
        assert!(desired(&manual, &t.state.services[&manual], &t).is_empty());
        let lonely = ObjectKey::new("default", "lonely");
        let slices = desired(&lonely, &t.state.services[&lonely], &t);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
    }

    #[test]
    fn more_than_a_hundred_pods_take_several_slices() {
        let mut yaml = SERVICE.to_string();
        for i in 0..250 {
            yaml.push_str(&pod(
                &format!("p{i}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                8080,
                true,
            ));
        }
        let t = tracked(&yaml);
        let key = ObjectKey::new("default", "web");
        let slices = desired(&key, &t.state.services[&key], &t);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let names: Vec<&str> = slices
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["web-lb-0", "web-lb-1", "web-lb-2"]);
    }

    /// A dual-stack service gets slices of each family, each pod under its address
    /// of the family (a pod without one is left out of that family's); a family
    /// with no pod gets its empty slice.
    #[test]
    fn a_dual_stack_service_gets_slices_of_each_family() {
        let alloc = crate::store::alloc::Allocation {
            service_cidrs: crate::store::alloc::parse_service_cidrs(
                "10.96.0.0/12,fd00:10:96::/112",
            )
            .unwrap(),
            ..Default::default()
        };
        let yaml = format!(
            "{}{}{}",
            SERVICE.replace("spec:\n", "spec:\n  ipFamilyPolicy: RequireDualStack\n"),
            pod("a", "10.244.0.2", 8080, true).replace(
                "  podIP: 10.244.0.2\n",
                "  podIP: 10.244.0.2\n  podIPs: [{ip: 10.244.0.2}, {ip: 'fd00:10:244::2'}]\n"
            ),
            pod("b", "10.244.0.3", 8080, true)
        );
        let t = Tracked::new(crate::store::apply::applied_in(&yaml, &alloc).into());
        let key = ObjectKey::new("default", "web");
        let slices = desired(&key, &t.state.services[&key], &t);
        let seen: Vec<(&str, &str, Vec<&str>)> = slices
            .iter()
            .map(|s| {
                (
                    s.metadata.name.as_deref().unwrap(),
                    s.address_type.as_str(),
                    s.endpoints
                        .iter()
                        .map(|e| e.addresses[0].as_str())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("web-lb-0", "IPv4", vec!["10.244.0.2", "10.244.0.3"]),
                ("web-lb-1", "IPv6", vec!["fd00:10:244::2"]),
            ]
        );
        // An IPv6-only service whose pods have no IPv6 address: one empty IPv6 slice.
        let six = format!(
            "{}{}",
            SERVICE.replace("spec:\n", "spec:\n  ipFamilies: [IPv6]\n"),
            pod("b", "10.244.0.3", 8080, true)
        );
        let t = Tracked::new(crate::store::apply::applied_in(&six, &alloc).into());
        let slices = desired(&key, &t.state.services[&key], &t);
        assert_eq!(slices.len(), 1, "{slices:#?}");
        assert_eq!(slices[0].address_type, "IPv6");
        assert!(slices[0].endpoints.is_empty());
    }
}
