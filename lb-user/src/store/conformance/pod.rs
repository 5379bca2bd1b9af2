//! TestValidatePorts (container ports) and the ValidatePodCreate basics lb reads or
//! a manifest must have (pkg/apis/core/validation), as v1 Pods. A Pod's status
//! is the API server's to write (a create drops it); lb reads `status.podIP` and
//! `status.podIPs` as the addresses a stand-in pod declares, checked as
//! TestPodIPsValidation checks a status update.

use serde_json::{Value, json};

use super::{
    Row,
    Want::{self, Accept, Refuse},
};

const PORTS: &str = "PodPorts";
const POD: &str = "PodCreate";
const POD_IPS: &str = "PodIPs";

fn base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pod", "namespace": "ns"},
        "spec": {
            "containers": [{"name": "ctr", "image": "image"}],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst"
        }
    })
}

fn with_ports(ports: Value) -> Value {
    let mut v = base();
    v["spec"]["containers"][0]["ports"] = ports;
    v
}

fn pod(tweak: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    tweak(&mut v);
    v
}

pub fn rows() -> Vec<Row> {
    let p =
        |name: &str, ports: Value, want: Want| Row::create(PORTS, name, with_ports(ports), want);
    let c =
        |name: &str, tweak: fn(&mut Value), want: Want| Row::create(POD, name, pod(tweak), want);
    vec![
        p(
            "success: named, host ports, every protocol",
            json!([{"name": "abc", "containerPort": 80, "hostPort": 80, "protocol": "TCP"}, {"name": "easy", "containerPort": 82, "protocol": "TCP"}, {"name": "as", "containerPort": 83, "protocol": "UDP"}, {"name": "do-re-me", "containerPort": 84, "protocol": "SCTP"}, {"containerPort": 85, "protocol": "TCP"}]),
            Accept,
        ),
        p(
            "success: unnamed",
            json!([{"containerPort": 80, "protocol": "TCP"}]),
            Accept,
        ),
        p(
            "success: same port, other protocol",
            json!([{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 80, "protocol": "UDP"}]),
            Accept,
        ),
        p(
            "name > 15 characters",
            json!([{"name": "a".repeat(16), "containerPort": 80, "protocol": "TCP"}]),
            Refuse("ports[0].name"),
        ),
        p(
            "name contains invalid characters",
            json!([{"name": "a.b.c", "containerPort": 80, "protocol": "TCP"}]),
            Refuse("ports[0].name"),
        ),
        p(
            "name is a number",
            json!([{"name": "80", "containerPort": 80, "protocol": "TCP"}]),
            Refuse("ports[0].name"),
        ),
        p(
            "name not unique",
            json!([{"name": "abc", "containerPort": 80, "protocol": "TCP"}, {"name": "abc", "containerPort": 81, "protocol": "TCP"}]),
            Refuse("ports[1].name"),
        ),
        p(
            "zero container port",
            json!([{"containerPort": 0, "protocol": "TCP"}]),
            Refuse("ports[0].containerPort"),
        ),
        p(
            "invalid container port",
            json!([{"containerPort": 65536, "protocol": "TCP"}]),
            Refuse("ports[0].containerPort"),
        ),
        p(
            "invalid host port",
            json!([{"containerPort": 80, "hostPort": 65536, "protocol": "TCP"}]),
            Refuse("ports[0].hostPort"),
        ),
        p(
            "invalid protocol case",
            json!([{"containerPort": 80, "protocol": "tcp"}]),
            Refuse("ports[0].protocol"),
        ),
        p(
            "invalid protocol",
            json!([{"containerPort": 80, "protocol": "ICMP"}]),
            Refuse("ports[0].protocol"),
        ),
        // v1 defaults the protocol to TCP.
        p(
            "protocol required",
            json!([{"name": "abc", "containerPort": 80, "protocol": ""}]),
            Accept,
        ),
        c("valid pod", |_| {}, Accept),
        c(
            "missing name",
            |s| s["metadata"]["name"] = json!(""),
            Refuse("metadata.name"),
        ),
        c(
            "invalid name",
            |s| s["metadata"]["name"] = json!("Bad_Name"),
            Refuse("metadata.name"),
        ),
        c(
            "invalid namespace",
            |s| s["metadata"]["namespace"] = json!("Bad_NS"),
            Refuse("metadata.namespace"),
        ),
        c(
            "invalid label",
            |s| s["metadata"]["labels"] = json!({"NoUppercaseOrSpecialCharsLike=Equals": "bar"}),
            Refuse("metadata.labels"),
        ),
        c(
            "no containers",
            |s| s["spec"]["containers"] = json!([]),
            Refuse("spec.containers"),
        ),
        c(
            "container without name",
            |s| s["spec"]["containers"] = json!([{"image": "image"}]),
            Refuse("name"),
        ),
        c(
            "invalid container name",
            |s| s["spec"]["containers"][0]["name"] = json!("Ctr"),
            Refuse("spec.containers[0].name"),
        ),
        c(
            "duplicate container names",
            |s| {
                s["spec"]["containers"] =
                    json!([{"name": "ctr", "image": "image"}, {"name": "ctr", "image": "image"}])
            },
            Refuse("spec.containers[1].name"),
        ),
        c(
            "missing image",
            |s| s["spec"]["containers"] = json!([{"name": "ctr"}]),
            Refuse("spec.containers[0].image"),
        ),
        c(
            "invalid restartPolicy",
            |s| s["spec"]["restartPolicy"] = json!("Sometimes"),
            Refuse("spec.restartPolicy"),
        ),
        c(
            "invalid dnsPolicy",
            |s| s["spec"]["dnsPolicy"] = json!("Custom"),
            Refuse("spec.dnsPolicy"),
        ),
        c(
            "invalid nodeName",
            |s| s["spec"]["nodeName"] = json!("Node_1"),
            Refuse("spec.nodeName"),
        ),
        c(
            "valid nodeName",
            |s| s["spec"]["nodeName"] = json!("node-1.example"),
            Accept,
        ),
    ]
    .into_iter()
    .chain(pod_ips())
    .collect()
}

/// TestPodIPsValidation's rows: the pod's `status.podIPs`.
fn pod_ips() -> Vec<Row> {
    let ips = |name: &str, ips: &[&str], want: Want| {
        let mut v = base();
        if !ips.is_empty() {
            v["status"] = json!({
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            });
        }
        Row::create(POD_IPS, name, v, want)
    };
    vec![
        ips("no ips", &[], Accept),
        ips("single ip family (v4)", &["1.1.1.1"], Accept),
        ips("single ip family (v6)", &["::1"], Accept),
        ips("dual stack (v4,v6)", &["1.1.1.1", "::1"], Accept),
        ips("dual stack (v6,v4)", &["::1", "1.1.1.1"], Accept),
        ips("invalid ip", &["1.1.1.1.1"], Refuse("status.podIPs[0]")),
        ips(
            "dualstack same family",
            &["1.1.1.1", "2.2.2.2"],
            Refuse("status.podIPs"),
        ),
        ips(
            "dualstack repeated ip family",
            &["1.1.1.1", "::1", "2.2.2.2"],
            Refuse("status.podIPs"),
        ),
        ips(
            "dualstack repeated ip",
            &["1.1.1.1", "1.1.1.1"],
            Refuse("status.podIPs[1]"),
        ),
    ]
}
