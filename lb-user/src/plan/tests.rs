use std::net::IpAddr;

use lb_common::BE_F_REMOTE;

use super::*;
use crate::entries::{Programmed, Scope, Update};

/// The objects of `yaml` as the store would hold them (defaults, allocation), with
/// their indexes; no disk.
fn state(yaml: &str) -> Tracked {
    Tracked::new(crate::store::apply::applied(yaml).into())
}

fn plan(t: &Tracked, node: &Node) -> Vec<PortPlan> {
    plan_all(t, node)
}

fn pod(name: &str, ip: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {labels}\nspec:\n  containers:\n  - name: c\n    image: app\n    ports: {ports}\nstatus:\n  podIP: {ip}\n---\n"
    )
}

const NODE: &str = "192.168.1.2";

fn node() -> Node {
    Node {
        name: "n1".into(),
        addrs: vec![NODE.parse().unwrap()],
        addrs6: Vec::new(),
    }
}

#[test]
fn nodeport_has_a_cluster_frontend_and_one_per_node_address() {
    let s = state(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports:\n  - {{port: 80, targetPort: 8080, nodePort: 30008}}\n---\n{}{}{}",
        pod("a", "10.244.0.2", "{app: web}", "[]"),
        pod("b", "10.244.0.3", "{app: web}", "[]"),
        pod("other", "10.244.0.4", "{app: db}", "[]"),
    ));
    let plans = plan(&s, &node());
    assert_eq!(plans.len(), 1);
    let p = &plans[0];
    let cluster_ip =
        crate::model::cluster_ip(&s.state.services[&ObjectKey::new("default", "web")]).unwrap();
    assert_eq!(
        p.frontends,
        vec![
            (frontend(cluster_ip, 80, PROTO_TCP), SVC_F_INTERNAL),
            (
                frontend(NODE.parse::<IpAddr>().unwrap(), 30008, PROTO_TCP),
                0
            )
        ]
    );
    assert_eq!(
        p.endpoints,
        vec![
            ("10.244.0.2".parse().unwrap(), 8080),
            ("10.244.0.3".parse().unwrap(), 8080)
        ]
    );
}

#[test]
fn named_target_ports_resolve_per_pod_and_several_ports_are_separate() {
    let s = state(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: web}}\n  - {{name: dns, port: 53, protocol: UDP}}\n---\n{}{}",
        pod(
            "a",
            "10.244.0.2",
            "{app: web}",
            "[{name: web, containerPort: 8080}]"
        ),
        pod(
            "b",
            "10.244.0.3",
            "{app: web}",
            "[{name: web, containerPort: 9090}]"
        ),
    ));
    let plans = plan(&s, &node());
    assert_eq!(plans.len(), 2);
    assert_eq!(
        plans[0].endpoints,
        vec![
            ("10.244.0.2".parse().unwrap(), 8080),
            ("10.244.0.3".parse().unwrap(), 9090)
        ]
    );
    assert_eq!(plans[1].proto, PROTO_UDP);
    assert_eq!(plans[1].endpoints.len(), 2);
    assert_eq!(
        plans[1].frontends.len(),
        1,
        "a ClusterIP service has no node frontends"
    );
}

#[test]
fn headless_services_and_other_namespaces_are_not_balanced() {
    let s = state(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: h\nspec:\n  clusterIP: None\n  selector: {{app: web}}\n  ports:\n  - {{port: 80}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: w\n  namespace: prod\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{port: 80}}\n---\n{}",
        pod("a", "10.244.0.2", "{app: web}", "[]"),
    ));
    let plans = plan(&s, &node());
    assert_eq!(plans.len(), 1, "headless gets no frontend");
    assert!(
        plans[0].endpoints.is_empty(),
        "a pod in another namespace is not an endpoint"
    );
}

#[test]
fn services_without_selector_take_ready_endpoints_from_their_slices() {
    let slice = |name: &str, svc: &str, eps: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports:\n- {{name: web, port: 8080}}\n- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{eps}---\n"
        )
    };
    let s = state(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  clusterIP: 10.96.0.90\n  ports:\n  - {{name: web, port: 80}}\n  - {{name: dns, port: 53, protocol: UDP}}\n---\n{}{}{}",
        // Two slices of one service, and a slice of another service.
        slice(
            "ext-1",
            "ext",
            "- addresses: [10.244.0.2]\n- addresses: [10.244.0.3]\n  conditions: {ready: false}\n"
        ),
        slice(
            "ext-2",
            "ext",
            "- addresses: [10.244.0.4]\n  conditions: {ready: true}\n"
        ),
        slice("other-1", "other", "- addresses: [10.244.0.9]\n"),
    ));
    let plans = plan(&s, &node());
    let eps = |port: &str| -> Vec<(IpAddr, u16)> {
        plans
            .iter()
            .find(|p| p.port == port)
            .unwrap()
            .endpoints
            .clone()
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        eps("web"),
        vec![(ip("10.244.0.2"), 8080), (ip("10.244.0.4"), 8080)]
    );
    assert_eq!(
        eps("dns"),
        vec![(ip("10.244.0.2"), 5353), (ip("10.244.0.4"), 5353)]
    );

    // None ready: serving endpoints that terminate take over; others never serve.
    let s = state(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  clusterIP: 10.96.0.90\n  ports:\n  - {{name: web, port: 80}}\n---\n{}",
        slice(
            "ext-1",
            "ext",
            "- addresses: [10.244.0.2]\n  conditions: {ready: false, serving: true, terminating: true}\n- addresses: [10.244.0.3]\n  conditions: {ready: false, serving: false, terminating: true}\n"
        ),
    ));
    let plans = plan(&s, &node());
    assert_eq!(plans[0].endpoints, vec![(ip("10.244.0.2"), 8080)]);
}

#[test]
fn traffic_policies_and_remote_endpoints() {
    let pod_on = |name: &str, ip: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {ip}\n---\n"
        )
    };
    let pods = format!(
        "{}{}",
        pod_on("a", "10.244.0.2", "n1"),
        pod_on("b", "10.244.1.2", "n2")
    );
    let svc = |policies: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.80\n{policies}  selector: {{app: web}}\n  ports:\n  - {{port: 80, nodePort: 30080}}\n---\n{pods}"
        )
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // Cluster policies: one plan for every frontend; the pod on n2 is remote.
    let plans = plan(&state(&svc("")), &node());
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].frontends.len(), 2);
    assert_eq!(plans[0].endpoints.len(), 2);
    assert_eq!(plans[0].remote, BTreeSet::from([ip("10.244.1.2")]));
    let mut p = Programmed::default();
    let Ok(Update::Writes(ops, _)) = p.update(Scope::All, &plans) else {
        panic!("a full update writes")
    };
    p.record(&ops);
    let remote_flags: Vec<u8> = p
        .entries()
        .backends
        .values()
        .map(|b| b.flags() & BE_F_REMOTE)
        .collect();
    assert_eq!(
        remote_flags,
        vec![0, BE_F_REMOTE],
        "only the pod on n2 is remote"
    );

    // externalTrafficPolicy: Local: the NodePort has only the local pod, flagged.
    let plans = plan(&state(&svc("  externalTrafficPolicy: Local\n")), &node());
    assert_eq!(plans.len(), 2, "{plans:#?}");
    let ext = plans
        .iter()
        .find(|p| p.port.ends_with("(external)"))
        .unwrap();
    assert_eq!(ext.endpoints, vec![(ip("10.244.0.2"), 80)]);
    assert!(
        ext.frontends
            .iter()
            .all(|(_, f)| *f == SVC_F_EXTERNAL_LOCAL)
    );
    let int = plans
        .iter()
        .find(|p| !p.port.ends_with("(external)"))
        .unwrap();
    assert_eq!(int.endpoints.len(), 2, "the ClusterIP still reaches both");

    // internalTrafficPolicy: Local: the ClusterIP has only the local pod.
    let plans = plan(&state(&svc("  internalTrafficPolicy: Local\n")), &node());
    let int = plans
        .iter()
        .find(|p| !p.port.ends_with("(external)"))
        .unwrap();
    assert_eq!(int.endpoints, vec![(ip("10.244.0.2"), 80)]);
}

const NODE6: &str = "2001:db8::2";

/// A dual-stack service is planned in each of its families, each with that
/// family's frontends (its clusterIP, the node's addresses of the family for the
/// NodePort) and endpoints (the pods' addresses of the family, from
/// `status.podIPs`); an IPv6-only service only in IPv6, never on an IPv4 address
/// (kube-proxy serves a family's NodePorts on that family's node addresses only).
#[test]
fn a_service_is_planned_in_each_of_its_families_with_that_familys_addresses() {
    let alloc = crate::store::alloc::Allocation {
        service_cidrs: crate::store::alloc::parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112")
            .unwrap(),
        ..Default::default()
    };
    let svc = |name: &str, families: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: {families}\n  selector: {{app: web}}\n  ports:\n  - {{port: 80, nodePort: 3000{}}}\n---\n",
            name.len()
        )
    };
    let dual_pod = pod("a", "10.244.0.2", "{app: web}", "[]").replace(
        "  podIP: 10.244.0.2\n",
        "  podIP: 10.244.0.2\n  podIPs: [{ip: 10.244.0.2}, {ip: 'fd00:10:244::2'}]\n",
    );
    let yaml = format!(
        "{}{}{}{}",
        svc("dual", "[IPv6, IPv4]"),
        svc("six", "[IPv6]").replace("PreferDualStack", "SingleStack"),
        dual_pod,
        // An IPv4-only pod: an endpoint of the IPv4 family only.
        pod("b", "10.244.0.3", "{app: web}", "[]"),
    );
    let s = Tracked::new(crate::store::apply::applied_in(&yaml, &alloc).into());
    let node = Node {
        addrs6: vec![NODE6.parse().unwrap()],
        ..node()
    };
    let plans = plan(&s, &node);
    let names: Vec<(&str, &str)> = plans
        .iter()
        .map(|p| (p.service.name.as_str(), p.port.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("dual", "80 (IPv6)"), ("dual", "80"), ("six", "80")],
        "{plans:#?}"
    );
    let ips = crate::model::cluster_ips(&s.state.services[&ObjectKey::new("default", "dual")]);
    assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{ips:?}");
    let (v6, v4) = (&plans[0], &plans[1]);
    let node6: IpAddr = NODE6.parse().unwrap();
    let node4: IpAddr = NODE.parse().unwrap();
    assert_eq!(
        v6.frontends,
        vec![
            (frontend(ips[0], 80, PROTO_TCP), SVC_F_INTERNAL),
            (frontend(node6, 30004, PROTO_TCP), 0)
        ]
    );
    assert_eq!(v6.endpoints, vec![("fd00:10:244::2".parse().unwrap(), 80)]);
    assert_eq!(
        v4.frontends,
        vec![
            (frontend(ips[1], 80, PROTO_TCP), SVC_F_INTERNAL),
            (frontend(node4, 30004, PROTO_TCP), 0)
        ]
    );
    assert_eq!(
        v4.endpoints,
        vec![
            ("10.244.0.2".parse().unwrap(), 80),
            ("10.244.0.3".parse().unwrap(), 80)
        ]
    );
    let six = &plans[2];
    assert!(
        six.frontends.iter().all(|(f, _)| f.addr().is_ipv6()),
        "{six:?}"
    );
    assert_eq!(six.frontends[1].0, frontend(node6, 30003, PROTO_TCP));
    assert_eq!(six.endpoints, v6.endpoints);

    // Both families' entries in one update: one id space, each slot in its
    // family's map.
    let mut p = Programmed::default();
    let Ok(Update::Writes(ops, left_out)) = p.update(Scope::All, &plans) else {
        panic!("a full update writes")
    };
    assert!(left_out.is_empty());
    p.record(&ops);
    let e = p.entries();
    let ids: BTreeSet<u32> = e.services.values().map(|v| v.svc_id).collect();
    assert_eq!(ids.len(), 3, "one service-port id per plan: {e:?}");
    for (k, slot) in &e.backends {
        let family = e
            .services
            .iter()
            .find(|(_, v)| v.svc_id == k.svc_id)
            .map(|(f, _)| f.addr().is_ipv6());
        assert_eq!(family, Some(slot.addr().is_ipv6()), "{k:?} {slot:?}");
    }
    assert!(ops.iter().any(|o| o.map() == lb_common::MAP_SERVICES6));
    assert!(ops.iter().any(|o| o.map() == lb_common::MAP_BACKENDS6));
}

/// A service without a selector takes each family's endpoints from the
/// EndpointSlices of that `addressType`.
#[test]
fn ipv6_endpoint_slices_serve_the_ipv6_family() {
    let alloc = crate::store::alloc::Allocation {
        service_cidrs: crate::store::alloc::parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112")
            .unwrap(),
        ..Default::default()
    };
    let slice = |name: &str, ty: &str, addr: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: ext}}\naddressType: {ty}\nports: [{{port: 8080}}]\nendpoints: [{{addresses: ['{addr}']}}]\n---\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - {{port: 80}}\n---\n{}{}",
        slice("ext-4", "IPv4", "10.1.0.1"),
        slice("ext-6", "IPv6", "fd00:1::1"),
    );
    let s = Tracked::new(crate::store::apply::applied_in(&yaml, &alloc).into());
    let plans = plan(&s, &node());
    let eps: Vec<(&str, Vec<(IpAddr, u16)>)> = plans
        .iter()
        .map(|p| (p.port.as_str(), p.endpoints.clone()))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("80", vec![("10.1.0.1".parse().unwrap(), 8080)]),
            ("80 (IPv6)", vec![("fd00:1::1".parse().unwrap(), 8080)]),
        ]
    );
}

/// Traffic policies in IPv6, as in IPv4 (`traffic_policies_and_remote_endpoints`):
/// a dual-stack service's IPv6 NodePort with `externalTrafficPolicy: Local` has the
/// local pod's IPv6 address alone, flagged; its IPv6 ClusterIP reaches both pods,
/// unless `internalTrafficPolicy: Local` leaves it the local one.
#[test]
fn traffic_policies_hold_in_ipv6() {
    let alloc = crate::store::alloc::Allocation {
        service_cidrs: crate::store::alloc::parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112")
            .unwrap(),
        ..Default::default()
    };
    let pod_on = |name: &str, ip: &str, ip6: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}, {{ip: '{ip6}'}}]\n---\n"
        )
    };
    let pods = pod_on("a", "10.244.0.2", "fd00:10:244::2", "n1")
        + &pod_on("b", "10.244.1.2", "fd00:10:244:1::2", "n2");
    let svc = |policies: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n{policies}  selector: {{app: web}}\n  ports:\n  - {{port: 80, nodePort: 30080}}\n---\n{pods}"
        )
    };
    let node = Node {
        addrs6: vec![NODE6.parse().unwrap()],
        ..node()
    };
    let state = |yaml: &str| Tracked::new(crate::store::apply::applied_in(yaml, &alloc).into());
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let six = |plans: &[PortPlan], external: bool| -> PortPlan {
        plans
            .iter()
            .find(|p| p.port.contains("IPv6") && p.port.contains("external") == external)
            .unwrap_or_else(|| panic!("{plans:#?}"))
            .clone()
    };
    let plans = plan(&state(&svc("  externalTrafficPolicy: Local\n")), &node);
    let ext = six(&plans, true);
    assert_eq!(ext.endpoints, vec![(ip("fd00:10:244::2"), 80)]);
    assert_eq!(
        ext.frontends,
        vec![(frontend(ip(NODE6), 30080, PROTO_TCP), SVC_F_EXTERNAL_LOCAL)]
    );
    assert_eq!(
        six(&plans, false).endpoints.len(),
        2,
        "the ClusterIP reaches both"
    );
    let plans = plan(&state(&svc("  internalTrafficPolicy: Local\n")), &node);
    let int = six(&plans, false);
    assert_eq!(int.endpoints, vec![(ip("fd00:10:244::2"), 80)]);
    assert!(int.frontends.iter().all(|(f, _)| f.addr().is_ipv6()));
}
