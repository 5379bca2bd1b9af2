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
