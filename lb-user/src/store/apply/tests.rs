use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::{
    model::{cluster_ip, parse_manifest},
    store::Allocation,
};

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Applies `yaml` to `state` as `lb apply` would; the error's text when refused
/// (then `state` is as it was).
fn apply_to(state: &mut State, yaml: &str) -> Result<Vec<Outcome>, String> {
    let docs = parse_manifest("t.yaml", yaml).map_err(|e| e.to_string())?;
    let rev = state.revision + 1;
    let before = state.clone();
    let out = apply(
        state,
        &docs,
        &Allocation::default(),
        Mode::Apply,
        Timestamp::now(),
        rev,
    )
    .map_err(|e| e.to_string());
    if out.is_err() {
        // The store commits nothing on an error; the state a caller keeps is its copy.
        *state = before;
    }
    out
}

const EXTERNAL: &str = "  type: ExternalName\n  externalName: db.example.com\n";

#[test]
fn an_external_name_service_holds_no_cluster_ip_and_gets_a_fresh_one_as_cluster_ip() {
    let mut state = State::default();
    let err = apply_to(
        &mut state,
        &svc("ext", &format!("{EXTERNAL}  clusterIP: 10.96.0.50\n")),
    )
    .unwrap_err();
    assert!(
        err.contains("spec.clusterIPs: Forbidden: may not be set for ExternalName services"),
        "{err}"
    );
    let err = apply_to(&mut state, &svc("ext", "  type: ExternalName\n")).unwrap_err();
    assert!(err.contains("spec.externalName: Required value"), "{err}");
    apply_to(&mut state, &svc("ext", EXTERNAL)).unwrap();
    apply_to(
        &mut state,
        &svc("held", "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n"),
    )
    .unwrap();
    // ExternalName -> ClusterIP asking for an address another service holds: refused.
    let err = apply_to(
        &mut state,
        &svc("ext", "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n"),
    )
    .unwrap_err();
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // Asking for none: a fresh one from the range.
    apply_to(&mut state, &svc("ext", "  ports: [{port: 80}]\n")).unwrap();
    let ip = |n: &str| cluster_ip(&state.services[&ObjectKey::new("default", n)]).unwrap();
    assert_ne!(ip("ext"), ip("held"));
    assert!(u32::from(ip("ext")) >> 20 == u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20);
}

#[test]
fn a_type_change_cannot_store_a_foreign_cluster_ip() {
    let mut state = State::default();
    apply_to(&mut state, &svc("ext", EXTERNAL)).unwrap();
    let err = apply_to(
        &mut state,
        &svc(
            "ext",
            "  type: NodePort\n  clusterIP: 8.8.8.8\n  ports: [{port: 53, protocol: UDP}]\n",
        ),
    )
    .unwrap_err();
    assert!(err.contains("is not in the valid range"), "{err}");
    assert_eq!(
        state.services[&ObjectKey::new("default", "ext")]
            .spec
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("ExternalName"),
        "nothing stored"
    );
}

#[test]
fn a_headless_service_cannot_become_a_node_port_one() {
    let mut state = State::default();
    apply_to(
        &mut state,
        &svc("h", "  clusterIP: None\n  ports: [{port: 80}]\n"),
    )
    .unwrap();
    // The manifest says nothing of clusterIP: the stored None is carried over, and
    // the service as it would be stored is refused, as the API server refuses it.
    let err = apply_to(
        &mut state,
        &svc("h", "  type: NodePort\n  ports: [{port: 80}]\n"),
    )
    .unwrap_err();
    assert!(
        err.contains(
            "t.yaml (document 1): The Service \"h\" is invalid: spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"
        ),
        "{err}"
    );
    let h = &state.services[&ObjectKey::new("default", "h")];
    assert_eq!(h.spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
}

fn stored(state: &State, name: &str) -> k8s_openapi::api::core::v1::ServiceSpec {
    state.services[&ObjectKey::new("default", name)]
        .spec
        .clone()
        .unwrap()
}

#[test]
fn a_type_change_clears_what_the_new_type_does_not_use_when_the_manifest_kept_it() {
    let mut state = State::default();
    let np = "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n";
    apply_to(&mut state, &svc("web", np)).unwrap();
    // The manifest turned ClusterIP but kept the stored nodePort (as `kubectl get
    // -o yaml | edit` does): cleared, not refused, and the port is free again.
    apply_to(
        &mut state,
        &svc("web", "  ports: [{port: 80, nodePort: 30080}]\n"),
    )
    .unwrap();
    assert_eq!(stored(&state, "web").ports.unwrap()[0].node_port, None);
    apply_to(&mut state, &svc("other", np)).unwrap();
    // Another value than the stored one is the user's request: refused.
    let err = apply_to(
        &mut state,
        &svc("other", "  ports: [{port: 80, nodePort: 30081}]\n"),
    )
    .unwrap_err();
    assert!(err.contains("spec.ports[0].nodePort: Forbidden"), "{err}");
    // ClusterIP -> ExternalName keeping the clusterIP, its families and policy: cleared.
    apply_to(
        &mut state,
        &svc("db", "  clusterIP: 10.96.0.60\n  ports: [{port: 5432}]\n"),
    )
    .unwrap();
    let kept = "  type: ExternalName\n  externalName: db.example.com\n  clusterIP: 10.96.0.60\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n";
    apply_to(&mut state, &svc("db", kept)).unwrap();
    let spec = stored(&state, "db");
    assert_eq!((spec.cluster_ip, spec.ip_families), (None, None));
    // A LoadBalancer's class, unchanged, goes when it becomes a NodePort service.
    let lb = "  type: LoadBalancer\n  loadBalancerClass: example.com/lb\n  ports: [{port: 443}]\n";
    apply_to(&mut state, &svc("edge", lb)).unwrap();
    apply_to(
        &mut state,
        &svc("edge", &lb.replace("LoadBalancer\n", "NodePort\n")),
    )
    .unwrap();
    assert_eq!(stored(&state, "edge").load_balancer_class, None);
}

#[test]
fn a_load_balancer_keeps_its_class() {
    let mut state = State::default();
    let lb = |class: &str| {
        svc(
            "edge",
            &format!("  type: LoadBalancer\n{class}  ports: [{{port: 443}}]\n"),
        )
    };
    apply_to(&mut state, &lb("  loadBalancerClass: example.com/a\n")).unwrap();
    for other in ["  loadBalancerClass: example.com/b\n", ""] {
        let err = apply_to(&mut state, &lb(other)).unwrap_err();
        assert!(
            err.contains("spec.loadBalancerClass: Invalid value"),
            "{err}"
        );
        assert!(err.contains("may not change once set"), "{err}");
    }
}

#[test]
fn ports_of_one_number_share_a_node_port_and_two_numbers_never_do() {
    let mut state = State::default();
    let dns = "  type: NodePort\n  ports:\n  - {name: dns-udp, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53, protocol: TCP}\n";
    apply_to(&mut state, &svc("dns", dns)).unwrap();
    let ports = stored(&state, "dns").ports.unwrap();
    assert_eq!(
        ports[0].node_port, ports[1].node_port,
        "TCP and UDP 53 share one nodePort"
    );
    let two = "  type: NodePort\n  ports:\n  - {name: a, port: 1, protocol: TCP, nodePort: 30001}\n  - {name: b, port: 2, protocol: UDP, nodePort: 30001}\n";
    let err = apply_to(&mut state, &svc("two", two)).unwrap_err();
    assert!(
        err.contains(
            "spec.ports[1].nodePort: Invalid value: 30001: provided port is already allocated"
        ),
        "{err}"
    );
}

#[test]
fn a_local_load_balancer_holds_a_health_check_node_port() {
    let mut state = State::default();
    let local = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n";
    apply_to(&mut state, &svc("a", local)).unwrap();
    let hc = stored(&state, "a").health_check_node_port.unwrap();
    assert!((30000..=32767).contains(&hc), "{hc}");
    // Kept across a re-apply, and no other service may take it.
    apply_to(&mut state, &svc("a", local)).unwrap();
    assert_eq!(stored(&state, "a").health_check_node_port, Some(hc));
    let err = apply_to(
        &mut state,
        &svc(
            "b",
            &format!("  type: NodePort\n  ports: [{{port: 80, nodePort: {hc}}}]\n"),
        ),
    )
    .unwrap_err();
    assert!(err.contains("provided port is already allocated"), "{err}");
    // Cluster policy: the health check port goes.
    apply_to(&mut state, &svc("a", &local.replace("Local", "Cluster"))).unwrap();
    assert_eq!(stored(&state, "a").health_check_node_port, None);
}

#[test]
fn uids_are_random_version_4_uuids_in_their_text_form() {
    let uids: std::collections::HashSet<String> = (0..1000).map(|_| new_uid()).collect();
    assert_eq!(uids.len(), 1000);
    for u in &uids {
        let b = u.as_bytes();
        assert_eq!(b.len(), 36, "{u}");
        for (i, c) in b.iter().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(*c, b'-', "{u}"),
                _ => assert!(c.is_ascii_digit() || (b'a'..=b'f').contains(c), "{u}"),
            }
        }
        assert_eq!(b[14], b'4', "version 4: {u}");
        assert!(b"89ab".contains(&b[19]), "variant 10: {u}");
    }
    // Every hex digit outside the version and variant varies.
    for i in (0..36).filter(|i| ![8, 13, 14, 18, 23].contains(i)) {
        let seen: std::collections::HashSet<u8> = uids.iter().map(|u| u.as_bytes()[i]).collect();
        assert!(seen.len() >= 4, "position {i}: {seen:?}");
    }
}
