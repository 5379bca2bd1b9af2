//! Data-plane behaviour on one node, with real traffic through veth namespaces: a
//! laptop, a node running the agent, three backend pods and a client pod.

use std::time::Duration;

use lb_tests::{
    Netns, Topology,
    cluster::{CLIENT_IP, Cluster, cluster, lbclient, pod_yaml, pods, ready, tally},
    lbctl::podserver_bin,
    seeds::NODE_IP,
};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";

#[test]
fn cluster_ip_spreads_new_connections_and_keeps_each_flow_on_its_pod() {
    let pods: String = pods("web", "web", 3);
    let tcp: &[&str] = &["--tcp", "8080"];
    let c = cluster("spread", &[tcp, tcp, tcp], &format!("{WEB}{pods}"));
    ready(&c, &c.client, "tcp", "10.96.0.80:80");

    // A long-lived connection streams while 300 others come and go.
    let bin = podserver_bin()
        .with_file_name("lbclient")
        .display()
        .to_string();
    let mut t = c.t;
    t.spawn(
        &c.client,
        "stream",
        &[&bin, "stream", "10.96.0.80:80", "6"],
        &[],
    )
    .unwrap();
    let c = Cluster { t, ..c };
    let answers = lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "300"]);
    assert_eq!(answers.len(), 300);
    let by_pod = tally(&c, &answers);
    assert_eq!(by_pod.len(), 3, "every pod answers: {by_pod:?}");
    for (pod, n) in &by_pod {
        assert!(*n >= 60, "{pod} served {n} of 300 (< 20%): {by_pod:?}");
    }

    let mut t = c.t;
    let log = Topology::wait_for(Duration::from_secs(10), || {
        let log = t.log("stream");
        (log.contains("END") || log.contains("ERR")).then_some(log)
    })
    .expect("the stream client finishes");
    t.stop("stream");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.last().unwrap().starts_with("END"),
        "the stream broke: {:?}",
        lines.last()
    );
    let data = &lines[..lines.len() - 1];
    assert!(
        data.len() >= 50,
        "the stream kept flowing: {} lines",
        data.len()
    );
    let pod = data[0].split_whitespace().next().unwrap();
    for (i, l) in data.iter().enumerate() {
        let mut w = l.split_whitespace();
        assert_eq!(
            w.next(),
            Some(pod),
            "every packet of the flow went to one pod"
        );
        assert_eq!(
            w.next().and_then(|n| n.parse::<usize>().ok()),
            Some(i),
            "no line lost or repeated"
        );
    }
}

#[test]
fn udp_echo_through_a_cluster_ip_and_a_node_port() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.53\n  selector: {app: dns}\n  ports:\n  - {name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}\n---\n";
    let pods: String = pods("dns", "dns", 2);
    let udp: &[&str] = &["--udp", "5353"];
    let c = cluster("udp", &[udp, udp], &format!("{svc}{pods}"));
    ready(&c, &c.client, "udp", "10.96.0.53:53");
    let from_pod = tally(
        &c,
        &lbclient(&c, &c.client, &["udp", "10.96.0.53:53", "40"]),
    );
    assert_eq!(
        from_pod.len(),
        2,
        "both pods echo through the ClusterIP: {from_pod:?}"
    );
    let nodeport = format!("{NODE_IP}:30053");
    ready(&c, &c.laptop, "udp", &nodeport);
    let from_laptop = tally(&c, &lbclient(&c, &c.laptop, &["udp", &nodeport, "40"]));
    assert_eq!(from_laptop.values().sum::<usize>(), 40);
    assert_eq!(
        from_laptop.len(),
        2,
        "both pods echo through the NodePort: {from_laptop:?}"
    );
    // 4,000-byte datagrams travel as IPv4 fragments both ways: later fragments
    // follow the flow of their first (lb's fragment map), so echoes come back whole.
    for (from, to) in [(&c.laptop, nodeport.as_str()), (&c.client, "10.96.0.53:53")] {
        let big = tally(&c, &lbclient(&c, from, &["bigudp", to, "10"]));
        assert_eq!(
            big.values().sum::<usize>(),
            10,
            "fragmented datagrams to {to} echo whole: {big:?}"
        );
    }
}

#[test]
fn a_named_target_port_resolves_per_pod() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.81\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: http}\n---\n";
    let pods = format!(
        "{}{}",
        pod_yaml("web0", "10.244.0.2", "web", &[("http", 8080, "TCP")]),
        pod_yaml("web1", "10.244.0.3", "web", &[("http", 9090, "TCP")])
    );
    let c = cluster(
        "named",
        &[&["--tcp", "8080"], &["--tcp", "9090"]],
        &format!("{svc}{pods}"),
    );
    ready(&c, &c.client, "tcp", "10.96.0.81:80");
    let by_pod = tally(
        &c,
        &lbclient(&c, &c.client, &["tcp", "10.96.0.81:80", "40"]),
    );
    assert_eq!(
        by_pod.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "both ports answer: {by_pod:?}"
    );
}

#[test]
fn client_ip_affinity_holds_and_moves_after_its_timeout() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: sticky\nspec:\n  clusterIP: 10.96.0.82\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 3\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";
    let pods: String = pods("web", "web", 3);
    let tcp: &[&str] = &["--tcp", "8080"];
    let c = cluster("affinity", &[tcp, tcp, tcp], &format!("{svc}{pods}"));
    ready(&c, &c.client, "tcp", "10.96.0.82:80");
    let by_pod = tally(
        &c,
        &lbclient(&c, &c.client, &["tcp", "10.96.0.82:80", "50"]),
    );
    assert_eq!(
        by_pod.len(),
        1,
        "50 connections from one client all reach one pod: {by_pod:?}"
    );
    let first = by_pod.keys().next().unwrap().clone();
    let one = || {
        let a = lbclient(&c, &c.client, &["tcp", "10.96.0.82:80", "1"]);
        tally(&c, &a).into_keys().next().expect("one answer")
    };
    // Within the timeout the choice holds, and each new connection renews it (as
    // kube-proxy's `recent --set`): 6 connections 2 s apart, 12 s in all, stay on
    // the first pod (were it forgotten early, each would stay with odds 1/3).
    for round in 0..6 {
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            one(),
            first,
            "round {round}: 2 s after the last connection, within the 3 s timeout"
        );
    }
    // After the timeout the choice is made afresh: within 12 tries 3.5 s apart (each
    // 1/3 likely to stay) some connection lands elsewhere.
    let moved = (0..12).any(|_| {
        std::thread::sleep(Duration::from_millis(3500));
        one() != first
    });
    assert!(
        moved,
        "affinity never expired\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}

#[test]
fn a_pods_port_unreachable_reaches_the_client_about_the_service() {
    // The pod answers nothing on the target port: its kernel sends "port
    // unreachable" about the packet it got (client -> pod), which lb translates as
    // part of the flow, so the laptop's connected socket learns it at once.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: gone\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.54\n  selector: {app: gone}\n  ports:\n  - {name: dns, port: 53, targetPort: 5399, protocol: UDP, nodePort: 30054}\n---\n";
    let c = cluster(
        "icmprel",
        &[&["--udp", "5353"]],
        &format!("{svc}{}", pod_yaml("gone0", "10.244.0.2", "gone", &[])),
    );
    for (from, to) in [
        (&c.laptop, format!("{NODE_IP}:30054")),
        (&c.client, "10.96.0.54:53".to_string()),
    ] {
        let answer = Topology::wait_for(Duration::from_secs(10), || {
            lbclient(&c, from, &["udp", &to, "1"])
                .first()
                .filter(|a| a.contains("Connection refused"))
                .cloned()
        });
        assert!(
            answer.is_some(),
            "{to}: the pod's port unreachable never reached the client\n{}",
            c.lb.diagnostics(&c.t, "node1")
        );
    }
    let maps = lb_user::maps::Maps::open_pinned(&c.lb.pins("node1")).unwrap();
    let related = maps.verdicts().unwrap()[lb_common::reason::NAT_RELATED as usize];
    assert!(related.packets >= 2, "translated as related: {related:?}");
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  clusterIP: 10.96.0.83\n  selector: {app: nobody}\n  ports:\n  - {name: web, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n---\n";
    let c = cluster("noep", &[], svc);
    let answer = Topology::wait_for(Duration::from_secs(10), || {
        lbclient(&c, &c.client, &["connect", "10.96.0.83:80"])
            .first()
            .filter(|a| a.contains("ConnectionRefused"))
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "connect was never refused\n{}",
            c.lb.diagnostics(&c.t, "node1")
        )
    });
    let ms: u64 = answer.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ms < 1000, "refused after {ms} ms");
    let udp = lbclient(&c, &c.client, &["udp", "10.96.0.83:53", "1"]);
    assert!(
        udp[0].contains("Connection refused"),
        "UDP gets port unreachable: {udp:?}"
    );
}

#[test]
fn a_pod_reaching_its_own_service_gets_its_answer() {
    // The only endpoint of the service is the client itself (hairpin), over TCP and UDP.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: self\nspec:\n  clusterIP: 10.96.0.84\n  selector: {app: self}\n  ports:\n  - {name: web, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n---\n";
    let me = pod_yaml("web0", "10.244.0.2", "self", &[]);
    let c = cluster(
        "hairpin",
        &[&["--tcp", "8080", "--udp", "5353"]],
        &format!("{svc}{me}"),
    );
    let pod = Netns {
        name: c.client.name.replace("-client", "-pod0"),
    };
    ready(&c, &pod, "tcp", "10.96.0.84:80");
    let by_pod = tally(&c, &lbclient(&c, &pod, &["tcp", "10.96.0.84:80", "20"]));
    assert_eq!(by_pod.get("pod-0"), Some(&20), "{by_pod:?}");
    let by_pod = tally(&c, &lbclient(&c, &pod, &["udp", "10.96.0.84:53", "5"]));
    assert_eq!(by_pod.get("pod-0"), Some(&5), "{by_pod:?}");
}

#[test]
fn a_process_on_the_node_reaches_a_cluster_ip() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.85\n  selector: {app: web}\n  ports:\n  - {name: web, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  clusterIP: 10.96.0.86\n  selector: {app: nobody}\n  ports:\n  - {port: 80}\n---\n";
    let pods: String = pods("web", "web", 2);
    let both: &[&str] = &["--tcp", "8080", "--udp", "5353"];
    let c = cluster("hostproc", &[both, both], &format!("{svc}{pods}"));
    ready(&c, &c.node, "tcp", "10.96.0.85:80");
    let tcp = tally(&c, &lbclient(&c, &c.node, &["tcp", "10.96.0.85:80", "40"]));
    assert_eq!(tcp.len(), 2, "both pods answer the node's process: {tcp:?}");
    let udp = tally(&c, &lbclient(&c, &c.node, &["udp", "10.96.0.85:53", "20"]));
    assert_eq!(udp.values().sum::<usize>(), 20, "{udp:?}");
    // Unconnected sockets: answers appear to come from the service address itself
    // (lbclient prints `ERR from ...` otherwise).
    let sendto = tally(
        &c,
        &lbclient(&c, &c.node, &["sendto", "10.96.0.85:53", "20"]),
    );
    assert_eq!(sendto.values().sum::<usize>(), 20, "{sendto:?}");
    // A service without endpoints refuses the node's process at once, too.
    let refused = lbclient(&c, &c.node, &["connect", "10.96.0.86:80"]);
    let ms: u64 = refused[0]
        .strip_prefix("ERR ConnectionRefused ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("not refused: {refused:?}"));
    assert!(ms < 1000, "refused after {ms} ms");
    // Processes of other namespaces are left alone (the hooks sit on the cgroup v2
    // root, which every namespace's processes share), even where the service's and
    // the pods' networks route through the node: the laptop reaches a pod directly,
    // but its connect() to the ClusterIP is not sent to one.
    for net in ["10.96.0.0/12", "10.244.0.0/16"] {
        c.t.sh(
            &c.laptop,
            &["ip", "route", "add", net, "via", "192.168.1.2"],
        )
        .unwrap();
    }
    assert_eq!(
        lbclient(&c, &c.laptop, &["connect", "10.244.0.2:8080"]),
        ["OK"],
        "the laptop reaches a pod through the node"
    );
    let other = lbclient(&c, &c.laptop, &["connect", "10.96.0.85:80"]);
    assert!(
        other[0].starts_with("ERR"),
        "a process of another namespace was balanced: {other:?}"
    );
}

#[test]
fn traffic_that_is_not_for_a_service_is_untouched() {
    let mut c = cluster(
        "plain",
        &[&["--tcp", "8080"]],
        &format!("{WEB}{}", pod_yaml("web0", "10.244.0.2", "web", &[])),
    );
    let server = podserver_bin().display().to_string();
    c.t.spawn(
        &c.node,
        "nodesrv",
        &[&server, "--text", "node", "--tcp", "9000"],
        &[],
    )
    .unwrap();
    ready(&c, &c.client, "tcp", "10.96.0.80:80");
    let first_word_and_ip = |answer: &str| -> (String, String) {
        let mut f = answer.split_whitespace();
        let text = f.next().unwrap_or("").to_string();
        let ip = f
            .next()
            .and_then(|p| p.rsplit_once(':'))
            .map(|(ip, _)| ip.to_string());
        (text, ip.unwrap_or_else(|| panic!("no peer in {answer:?}")))
    };
    // Pod to pod, straight to the pod's address: the server sees the client pod.
    let direct = lbclient(&c, &c.client, &["peer", "10.244.0.2:8080", "5"]);
    for a in &direct {
        assert_eq!(
            first_word_and_ip(a),
            ("pod-0".into(), CLIENT_IP.into()),
            "{direct:?}"
        );
    }
    // Through the ClusterIP the pod also sees the client's own address (no SNAT).
    let via = lbclient(&c, &c.client, &["peer", "10.96.0.80:80", "5"]);
    for a in &via {
        assert_eq!(
            first_word_and_ip(a),
            ("pod-0".into(), CLIENT_IP.into()),
            "{via:?}"
        );
    }
    // The laptop to a port of the node that is no service: the node's own server
    // answers and sees the laptop.
    let ok = Topology::wait_for(Duration::from_secs(5), || {
        let a = lbclient(&c, &c.laptop, &["peer", "192.168.1.2:9000", "5"]);
        a.iter().all(|a| !a.starts_with("ERR")).then_some(a)
    })
    .expect("the node's own server never answered the laptop");
    for a in &ok {
        assert_eq!(
            first_word_and_ip(a),
            ("node".into(), "192.168.1.10".into()),
            "{ok:?}"
        );
    }
}

/// `spec.externalIPs`: the service answers on each on its port, from outside (the
/// address routed to the node, as the cluster's admin routes it; kube-proxy does
/// not announce it either) and from pods, and the pods see the client itself.
#[test]
fn external_ips_are_served_on_the_service_port() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  clusterIP: 10.96.0.87\n  selector: {app: web}\n  externalIPs: [192.168.1.50]\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";
    let pods: String = pods("web", "web", 2);
    let tcp: &[&str] = &["--tcp", "8080"];
    let c = cluster("extip", &[tcp, tcp], &format!("{svc}{pods}"));
    c.t.sh(
        &c.laptop,
        &[
            "ip",
            "route",
            "add",
            "192.168.1.50/32",
            "via",
            "192.168.1.2",
        ],
    )
    .unwrap();
    ready(&c, &c.laptop, "tcp", "192.168.1.50:80");
    for (who, ns, ip) in [
        ("laptop", &c.laptop, "192.168.1.10"),
        ("pod", &c.client, CLIENT_IP),
    ] {
        let answers = lbclient(&c, ns, &["peer", "192.168.1.50:80", "40"]);
        let by = tally(&c, &answers);
        assert_eq!(by.len(), 2, "{who}: both pods answer: {by:?}");
        for a in &answers {
            assert!(
                a.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with(&format!("{ip}:"))),
                "{who}: the pod sees the client itself: {a}"
            );
        }
    }
    // Not on other ports of the address.
    let other = lbclient(&c, &c.laptop, &["connect", "192.168.1.50:81"]);
    assert!(other[0].starts_with("ERR"), "{other:?}");
}

/// A cgroup v2 directory made for one test, removed when it ends (also when it
/// fails; its processes have ended by then).
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `lb agent --cgroup DIR`: socket-level balancing for the node's processes in that
/// cgroup only. A process moved into it reaches the ClusterIP; one outside it (the
/// node has no route to the service network) does not.
#[test]
fn with_cgroup_only_its_processes_are_balanced_at_the_socket() {
    lb_tests::require_root();
    let root = lb_user::loader::cgroup2_root().expect("a cgroup v2 mount");
    let cg = TestCgroup(root.join(format!("lb-test-{}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.88\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";
    let dir = cg.0.display().to_string();
    let tcp: &[&str] = &["--tcp", "8080"];
    let c = lb_tests::cluster::cluster_with("cgroup", &[tcp], |_, _, lb| {
        lb.apply(&format!(
            "{svc}{}",
            pod_yaml("web0", "10.244.0.2", "web", &[])
        ))
        .unwrap();
        vec!["--cgroup".into(), dir.clone()]
    });
    let bin = podserver_bin()
        .with_file_name("lbclient")
        .display()
        .to_string();
    let inside = |args: &str| {
        c.t.sh(
            &c.node,
            &[
                "sh",
                "-c",
                &format!("echo $$ > {dir}/cgroup.procs && exec {bin} {args}"),
            ],
        )
        .unwrap()
    };
    let answered = Topology::wait_for(Duration::from_secs(10), || {
        let out = inside("tcp 10.96.0.88:80 10");
        (out.lines().filter(|l| l.starts_with("pod-0")).count() == 10).then_some(out)
    });
    assert!(
        answered.is_some(),
        "a process in the cgroup never reached the ClusterIP\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    let outside = lbclient(&c, &c.node, &["connect", "10.96.0.88:80"]);
    assert!(
        outside[0].starts_with("ERR"),
        "a process outside the cgroup was balanced: {outside:?}"
    );
}
