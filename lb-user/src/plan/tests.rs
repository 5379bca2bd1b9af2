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
            (frontend(NODE.parse().unwrap(), 30008, PROTO_TCP), 0)
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
    let eps = |port: &str| -> Vec<(Ipv4Addr, u16)> {
        plans
            .iter()
            .find(|p| p.port == port)
            .unwrap()
            .endpoints
            .clone()
    };
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
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
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
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
        .map(|b| b.flags & BE_F_REMOTE)
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

/// Until the agent's entries carry IPv6, a service is served in the IPv4 family
/// alone: a dual-stack service by its IPv4 clusterIP and the node's IPv4 addresses,
/// an IPv6-only one not at all (never on an IPv4 address: kube-proxy serves a
/// family's NodePorts on that family's node addresses only).
#[test]
fn a_service_is_planned_in_its_ipv4_family_only() {
    let alloc = crate::store::alloc::Allocation {
        service_cidrs: crate::store::alloc::parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112")
            .unwrap(),
        ..Default::default()
    };
    let svc = |name: &str, families: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: {families}\n  selector: {{app: web}}\n  ports:\n  - {{port: 80}}\n---\n"
        )
    };
    let yaml = format!(
        "{}{}{}",
        svc("dual", "[IPv6, IPv4]"),
        svc("six", "[IPv6]").replace("PreferDualStack", "SingleStack"),
        pod("a", "10.244.0.2", "{app: web}", "[]"),
    );
    let s = Tracked::new(crate::store::apply::applied_in(&yaml, &alloc).into());
    let plans = plan(&s, &node());
    assert_eq!(plans.len(), 1, "{plans:?}");
    let dual = &s.state.services[&ObjectKey::new("default", "dual")];
    let ips = crate::model::cluster_ips(dual);
    assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{ips:?}");
    assert_eq!(plans[0].service, ObjectKey::new("default", "dual"));
    let v4 = crate::model::cluster_ip(dual).unwrap();
    assert_eq!(IpAddr::V4(v4), ips[1]);
    assert_eq!(
        plans[0].frontends[0],
        (frontend(v4, 80, PROTO_TCP), SVC_F_INTERNAL)
    );
    assert_eq!(plans[0].frontends.len(), 2);
}
