//! Kubernetes mode: the agent follows an API server (a fake one speaking the real
//! list/watch wire format, see `fakeapi`) instead of the embedded store. The same
//! end-to-end NodePort and ClusterIP test runs in both modes, on the same objects
//! (built as k8s-openapi types: what `lb apply` reads is what the API serves).

mod fakeapi;

use std::{net::Ipv4Addr, time::Duration};

use fakeapi::FakeApi;
use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_common::PROTO_TCP;
use lb_tests::{
    Topology,
    cluster::{Cluster, cluster_with, lbclient, tally},
    seeds::NODE_IP,
};
use lb_user::{maps::Maps, plan::frontend};
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `lb apply` into the embedded store.
    Store,
    /// An API server, `lb agent --kubeconfig`.
    Kube,
    /// `lb apply` into a store that `lb api-server` serves, and the agent in
    /// Kubernetes mode following that server (store mode across machines).
    LbApi,
}

fn service(name: &str, cluster_ip: &str, node_port: Option<i32>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(
                if node_port.is_some() {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The service's EndpointSlice: `ready` addresses, then `not_ready` ones.
fn slice(svc: &str, ready: &[&str], not_ready: &[&str]) -> EndpointSlice {
    let ep = |a: &&str, ready: bool| Endpoint {
        addresses: vec![a.to_string()],
        conditions: Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: Some("node1".into()),
        ..Default::default()
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-1")),
            namespace: Some("default".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), svc.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ready
            .iter()
            .map(|a| ep(a, true))
            .chain(not_ready.iter().map(|a| ep(a, false)))
            .collect(),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn node_object() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("node1".into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("10.244.0.0/24".into()),
            pod_cidrs: Some(vec!["10.244.0.0/24".into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                address: NODE_IP.into(),
                type_: "InternalIP".into(),
            }]),
            ..Default::default()
        }),
    }
}

fn value<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("serialisable")
}

const POD0: &str = "10.244.0.2";
const POD1: &str = "10.244.0.3";
const WEB_IP: &str = "10.96.0.90";

/// Two pods serving TCP 8080 behind service `web` (NodePort 30090), and `extra`
/// objects, told to the agent in `mode`. Returns the cluster and, in Kubernetes
/// mode, the API server.
fn web_cluster(tag: &str, mode: Mode, extra: &[Value]) -> (Cluster, Option<FakeApi>) {
    let mut objects = vec![
        value(&service("web", WEB_IP, Some(30090))),
        value(&slice("web", &[POD0, POD1], &[])),
    ];
    objects.extend(extra.iter().cloned());
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut api = None;
    let c = cluster_with(tag, &[tcp, tcp], |t, node, lb| match mode {
        Mode::Store => {
            // JSON documents are YAML documents: one file for `lb apply -f`.
            let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
            lb.apply(&format!("---\n{}", docs.join("\n---\n"))).unwrap();
            // The client pod is in no object: the pod network says where pods are
            // (in Kubernetes mode, the Node's podCIDR does).
            vec!["--cluster-cidr".into(), "10.244.0.0/16".into()]
        }
        Mode::LbApi => {
            let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
            lb.apply(&format!("---\n{}", docs.join("\n---\n"))).unwrap();
            let path = lb_tests::kubectl::serve_in(t, node, lb).unwrap();
            // lb's store keeps no Node objects: the pod network is given.
            vec![
                "--kubeconfig".into(),
                path.display().to_string(),
                "--cluster-cidr".into(),
                "10.244.0.0/16".into(),
                "--dns".into(),
                "on".into(),
                "--dns-upstream".into(),
                "none".into(),
            ]
        }
        Mode::Kube => {
            let server = FakeApi::start(node);
            server.put(value(&node_object()));
            for o in &objects {
                server.put(o.clone());
            }
            let path = t.dir().join("kubeconfig");
            std::fs::write(&path, server.kubeconfig()).unwrap();
            api = Some(server);
            // The cluster's names too (CoreDNS's job there, asked for).
            vec![
                "--kubeconfig".into(),
                path.display().to_string(),
                "--dns".into(),
                "on".into(),
                "--dns-upstream".into(),
                "none".into(),
            ]
        }
    });
    (c, api)
}

/// Waits (up to 30 s) until 30 TCP requests to `addr` from the laptop (or the
/// client pod) all succeed and are answered by exactly the pods in `want`. Rounds
/// with failed requests are waited through only until the address first serves (or
/// not at all when `served`: it already does); after that a failed request fails
/// the test, as a change under traffic must break none.
fn answered_by(c: &Cluster, from_laptop: bool, addr: &str, want: &[&str], served: bool) {
    let ns = if from_laptop { &c.laptop } else { &c.client };
    let mut last = Default::default();
    let mut serving = served;
    let ok = Topology::wait_for(Duration::from_secs(30), || {
        let answers = lbclient(c, ns, &["tcp", addr, "30"]);
        let failed = answers.iter().filter(|a| a.starts_with("ERR")).count();
        if failed > 0 {
            assert!(
                !serving,
                "{addr}: {failed} of 30 requests failed while it serves: {answers:?}\n{}",
                c.lb.diagnostics(&c.t, "node1")
            );
            return None;
        }
        serving = true;
        last = tally(c, &answers);
        let pods: Vec<&str> = last.keys().map(String::as_str).collect();
        (pods == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{addr}: wanted answers from {want:?}, last got {last:?}\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}

/// Service `front`: a LoadBalancer with `externalTrafficPolicy: Local` and
/// healthCheckNodePort 32101, its one ready endpoint on node1.
fn front() -> [Value; 2] {
    let mut svc = service("front", "10.96.0.91", Some(30091));
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("LoadBalancer".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32101);
    }
    [value(&svc), value(&slice("front", &[POD0], &[]))]
}

fn nodeport_and_cluster_ip(mode: Mode) {
    let (c, _api) = web_cluster(&format!("{mode:?}").to_lowercase(), mode, &front());
    answered_by(
        &c,
        true,
        &format!("{NODE_IP}:30090"),
        &["pod-0", "pod-1"],
        false,
    );
    answered_by(
        &c,
        false,
        &format!("{WEB_IP}:80"),
        &["pod-0", "pod-1"],
        false,
    );
    // The LoadBalancer's healthCheckNodePort answers as kube-proxy's does: 200 and
    // its one ready endpoint on this node.
    let url = format!("http://{NODE_IP}:32101/healthz");
    let answer = Topology::wait_for(Duration::from_secs(10), || {
        lb_tests::lbctl::http(&c.t, &c.laptop, &url, 2).filter(|(code, _)| *code == 200)
    })
    .unwrap_or_else(|| panic!("{url} never answered 200 ({mode:?})"))
    .1;
    let body: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(body["localEndpoints"], 1, "{answer}");
    assert_eq!(body["service"]["name"], "front", "{answer}");
    // The service's name, from the agent's DNS: in the store, through the kube-dns
    // service the agent keeps there; from the API, at the node's address (the
    // agent writes no service into a cluster).
    let (from, server) = match mode {
        Mode::Store => (&c.client, "@10.96.0.10".to_string()),
        Mode::Kube | Mode::LbApi => (&c.laptop, format!("@{NODE_IP}")),
    };
    let name = "web.default.svc.cluster.local";
    let got = Topology::wait_for(Duration::from_secs(10), || {
        let out =
            c.t.run(
                from,
                &["dig", "+short", "+tries=1", "+time=1", &server, name],
            )
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (text == WEB_IP).then_some(text)
    });
    assert!(
        got.is_some(),
        "{name} not answered ({mode:?})\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}

#[test]
fn nodeport_cluster_ip_and_health_check_node_port_from_the_embedded_store() {
    nodeport_and_cluster_ip(Mode::Store);
}

#[test]
fn nodeport_cluster_ip_and_health_check_node_port_from_the_kubernetes_api() {
    nodeport_and_cluster_ip(Mode::Kube);
}

#[test]
fn nodeport_cluster_ip_and_health_check_node_port_from_lb_api_server() {
    nodeport_and_cluster_ip(Mode::LbApi);
}

/// kubectl (in the node, where `lb api-server` listens) with `config`.
fn kubectl(
    t: &Topology,
    node: &lb_tests::Netns,
    config: &std::path::Path,
    args: &[&str],
) -> String {
    let out = lb_tests::kubectl::kubectl_in_ns(t, node, config, args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seeds' NodePort with the seeds' manifests applied by kubectl to `lb
/// api-server`, served by an agent in Kubernetes mode that follows that server
/// (its endpoints from the EndpointSlice controller's slices); a change made with
/// kubectl reaches the data plane.
#[test]
fn the_seeds_nodeport_applied_with_kubectl_served_by_an_agent_following_lb_api_server() {
    let mut config = None;
    let c = cluster_with("lbapi-seeds", &[&["--tcp", "80"]], |t, node, lb| {
        let path = lb_tests::kubectl::serve_in(t, node, lb).unwrap();
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        for f in ["node-port-service.yaml", "myapp-pod.yaml"] {
            let out = kubectl(t, node, &path, &["apply", "-f", &format!("{examples}/{f}")]);
            assert!(out.contains("created"), "{out}");
        }
        config = Some(path.clone());
        vec![
            "--kubeconfig".into(),
            path.display().to_string(),
            "--cluster-cidr".into(),
            "10.244.0.0/16".into(),
        ]
    });
    let config = config.unwrap();
    let log = c.t.log("agent-node1");
    assert!(
        log.contains("Kubernetes mode"),
        "the agent follows the API:\n{log}"
    );
    answered_by(&c, true, &format!("{NODE_IP}:30008"), &["pod-0"], false);
    kubectl(
        &c.t,
        &c.node,
        &config,
        &[
            "patch",
            "svc",
            "node-port-service",
            "-p",
            r#"{"spec":{"ports":[{"port":80,"nodePort":30009}]}}"#,
        ],
    );
    answered_by(&c, true, &format!("{NODE_IP}:30009"), &["pod-0"], false);
}

/// The maps' frontends for `ip`:80/TCP, as the agent pinned them.
fn has_frontend(c: &Cluster, ip: &str) -> bool {
    let maps = Maps::open_pinned(&c.lb.pins("node1")).expect("pinned maps");
    let key = frontend(ip.parse::<Ipv4Addr>().unwrap(), 80, PROTO_TCP);
    maps.read_entries()
        .expect("read maps")
        .services
        .contains_key(&key)
}

#[test]
fn kubernetes_mode_follows_changes_survives_an_outage_and_relists_after_410() {
    let (c, api) = web_cluster("kube", Mode::Kube, &[]);
    let api = api.unwrap();
    answered_by(
        &c,
        false,
        &format!("{WEB_IP}:80"),
        &["pod-0", "pod-1"],
        false,
    );

    // A service labelled for another proxy (`service.kubernetes.io/service-proxy-name`,
    // as kube-proxy skips it) is not lb's: never programmed, while one put after it
    // is.
    let mut other = service("other", "10.96.0.93", None);
    other.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "other-proxy".to_string(),
        )]
        .into(),
    );
    api.put(value(&other));
    api.put(value(&slice("other", &[POD0], &[])));
    api.put(value(&service("after", "10.96.0.94", None)));
    // Its slice carries the EndpointSlice controller's trigger time: the agent times
    // the change from it to the maps (kube-proxy's network_programming_duration).
    let mut after = slice("after", &[POD0], &[]);
    after.metadata.annotations = Some(
        [(
            "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
            jiff::Timestamp::now().to_string(),
        )]
        .into(),
    );
    api.put(value(&after));
    Topology::wait_for(Duration::from_secs(30), || {
        has_frontend(&c, "10.96.0.94").then_some(())
    })
    .expect("service after in the maps");
    let timed = Topology::wait_for(Duration::from_secs(10), || {
        let text =
            c.t.sh(
                &c.node,
                &["curl", "-sS", "-m", "5", "http://127.0.0.1:10249/metrics"],
            )
            .ok()?;
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("lb_network_programming_duration_seconds_count "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        (count >= 1.0).then_some(text)
    });
    assert!(
        timed.is_some(),
        "the slice's change was never timed from its trigger time"
    );
    assert!(
        !has_frontend(&c, "10.96.0.93"),
        "a service of another proxy was programmed"
    );

    // Scale-down: pod-1's endpoint goes unready; it no longer gets traffic.
    api.put(value(&slice("web", &[POD0], &[POD1])));
    answered_by(&c, false, &format!("{WEB_IP}:80"), &["pod-0"], true);

    // An API outage of 10 s: the maps keep serving the last known state.
    api.set_down(true);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let answers = lbclient(&c, &c.laptop, &["tcp", &format!("{NODE_IP}:30090"), "5"]);
        let by_pod = tally(&c, &answers);
        assert_eq!(
            by_pod.get("pod-0"),
            Some(&5),
            "traffic during the outage: {by_pod:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    api.set_down(false);
    // Back: the watchers reconnect and changes flow again (scale-up).
    api.put(value(&slice("web", &[POD0, POD1], &[])));
    answered_by(
        &c,
        false,
        &format!("{WEB_IP}:80"),
        &["pod-0", "pod-1"],
        true,
    );

    // 410 Gone: a service and its slice go, another comes, and no watcher hears of
    // it; history is compacted, so the watchers must relist. The relist converges
    // with no stale entry.
    api.put(value(&service("old", "10.96.0.91", None)));
    api.put(value(&slice("old", &[POD0], &[])));
    Topology::wait_for(Duration::from_secs(30), || {
        has_frontend(&c, "10.96.0.91").then_some(())
    })
    .expect("service old in the maps");
    api.delete_unannounced(value(&service("old", "10.96.0.91", None)));
    api.delete_unannounced(value(&slice("old", &[POD0], &[])));
    api.put_unannounced(value(&service("fresh", "10.96.0.92", None)));
    api.put_unannounced(value(&slice("fresh", &[POD1], &[])));
    api.compact();
    let converged = Topology::wait_for(Duration::from_secs(60), || {
        (!has_frontend(&c, "10.96.0.91") && has_frontend(&c, "10.96.0.92")).then_some(())
    });
    assert!(
        converged.is_some(),
        "after 410 the maps still hold old or miss fresh\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    answered_by(&c, false, "10.96.0.92:80", &["pod-1"], false);
    // A deletion the watchers do hear of, as a DELETED event: once every watcher is
    // back to watching (no list for 3 s), the service leaves the maps with no list.
    let mut lists = api.lists();
    let settled = Topology::wait_for(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(3));
        let now = api.lists();
        let still = now == lists;
        lists = now;
        still.then_some(())
    });
    assert!(settled.is_some(), "the watchers kept relisting");
    api.delete(value(&service("fresh", "10.96.0.92", None)));
    let gone = Topology::wait_for(Duration::from_secs(30), || {
        (!has_frontend(&c, "10.96.0.92")).then_some(())
    });
    assert!(gone.is_some(), "service fresh deleted, still in the maps");
    assert_eq!(
        api.lists(),
        lists,
        "the deletion reached the maps through a relist, not the DELETED event"
    );
    assert!(
        c.t.log("agent-node1").contains("watch failed"),
        "the agent logged the outage"
    );
}

/// Kubernetes mode sizes the maps from what the API holds at start, as the store
/// mode does from the store: sizes asked below it are raised (with the reason in
/// the log) and every service is programmed, none left out for want of room.
#[test]
fn kubernetes_mode_sizes_the_maps_from_what_the_api_holds() {
    let n = 40;
    let ip = |i: usize| format!("10.96.1.{}", 10 + i);
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut api = None;
    let c = cluster_with("kubesize", &[tcp, tcp], |t, node, _| {
        let server = FakeApi::start(node);
        server.put(value(&node_object()));
        for i in 0..n {
            let name = format!("s{i}");
            server.put(value(&service(&name, &ip(i), None)));
            server.put(value(&slice(&name, &[POD0, POD1], &[])));
        }
        let path = t.dir().join("kubeconfig");
        std::fs::write(&path, server.kubeconfig()).unwrap();
        api = Some(server);
        [
            "--kubeconfig",
            &path.display().to_string(),
            "--max-frontends",
            "16",
            "--max-backends",
            "16",
        ]
        .map(String::from)
        .to_vec()
    });
    let log = c.t.log("agent-node1");
    // 40 ClusterIP frontends and 80 slots: raised to a power of two with a quarter more.
    for size in [
        "frontends=64 (raised from 16 (flag): the source holds 40)",
        "backends=128 (raised from 16 (flag): the source holds 80)",
    ] {
        assert!(log.contains(size), "{size}: {log}");
    }
    let all = Topology::wait_for(Duration::from_secs(30), || {
        (0..n).all(|i| has_frontend(&c, &ip(i))).then_some(())
    });
    assert!(
        all.is_some(),
        "every service programmed\n{}",
        c.t.log("agent-node1")
    );
    answered_by(
        &c,
        false,
        &format!("{}:80", ip(n - 1)),
        &["pod-0", "pod-1"],
        false,
    );
    assert!(
        !c.t.log("agent-node1").contains("services not programmed"),
        "none left out"
    );
}
