//! Several nodes, one LAN, one store: NodePort on every node's address reaching pods
//! on any node, traffic policies, ClusterIP across nodes.

use std::{collections::BTreeMap, time::Duration};

use lb_user::announce::HEARTBEAT_TTL;

use lb_tests::{
    Netns, Topology,
    lbctl::{Lb, podserver_bin},
    require_root,
    topology::multinode::{self, Lan, node_ip, pod_ip},
};

struct Cluster {
    t: Topology,
    lan: Lan,
    lb: Lb,
}

/// `nodes` nodes with `pods` pods each, every pod running `podserver --tcp 8080`
/// answering `nNpI`; the pods in `declared` ((node, pod) pairs) are in the store with
/// `app: web` and their nodeName; `manifests` applied; an agent on every node.
fn cluster(
    tag: &str,
    nodes: usize,
    pods: usize,
    declared: &[(usize, usize)],
    manifests: &str,
) -> Cluster {
    cluster_with(tag, nodes, pods, declared, manifests, &[])
}

/// [`cluster`] with more `lb agent` arguments for every agent.
fn cluster_with(
    tag: &str,
    nodes: usize,
    pods: usize,
    declared: &[(usize, usize)],
    manifests: &str,
    agent_args: &[&str],
) -> Cluster {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let lan = multinode::lan(&mut t, nodes, pods).unwrap();
    let server = podserver_bin().display().to_string();
    for (n, node_pods) in lan.pods.iter().enumerate() {
        for (i, pod) in node_pods.iter().enumerate() {
            let text = format!("n{}p{i}", n + 1);
            t.spawn(
                pod,
                &text.clone(),
                &[&server, "--text", &text, "--tcp", "8080"],
                &[],
            )
            .unwrap();
        }
    }
    let lb = Lb::new(&mut t).unwrap();
    let pod_manifests: String = declared
        .iter()
        .map(|(n, i)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: n{}p{i}\n  labels: {{app: web}}\nspec:\n  nodeName: node{}\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {}\n---\n",
                n + 1,
                n + 1,
                pod_ip(*n, *i)
            )
        })
        .collect();
    lb.apply(&format!("{manifests}{pod_manifests}")).unwrap();
    for (n, node) in lan.nodes.clone().iter().enumerate() {
        lb.start_agent_with(
            &mut t,
            node,
            &format!("node{}", n + 1),
            &["eth0"],
            agent_args,
        )
        .unwrap();
    }
    Cluster { t, lan, lb }
}

fn lbclient(c: &Cluster, ns: &Netns, args: &[&str]) -> Vec<String> {
    lb_tests::cluster::lbclient_in(&c.t, ns, args)
}

fn diagnostics(c: &Cluster) -> String {
    (1..=c.lan.nodes.len())
        .map(|n| c.lb.diagnostics(&c.t, &format!("node{n}")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Answers counted by pod; panics (with every node's log and counters) on a failure.
fn tally(c: &Cluster, answers: &[String]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for a in answers {
        assert!(
            !a.starts_with("ERR"),
            "a request failed: {a}\n{}",
            diagnostics(c)
        );
        *by.entry(a.split_whitespace().next().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    by
}

fn ready(c: &Cluster, ns: &Netns, addr: &str) {
    let ok = Topology::wait_for(Duration::from_secs(10), || {
        lbclient(c, ns, &["tcp", addr, "1"])
            .first()
            .filter(|a| !a.starts_with("ERR"))
            .cloned()
    });
    assert!(ok.is_some(), "{addr} never answered\n{}", diagnostics(c));
}

fn verdict(c: &Cluster, node: usize, reason: &str) -> u64 {
    c.lb.verdict(&format!("node{}", node + 1), reason)
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30080}\n---\n";

#[test]
fn node_port_answers_on_every_node_and_reaches_pods_on_any_node() {
    let all: Vec<(usize, usize)> = (0..3).flat_map(|n| (0..2).map(move |i| (n, i))).collect();
    let c = cluster("3nodes", 3, 2, &all, WEB);
    let mut seen = BTreeMap::new();
    for n in 0..3 {
        let addr = format!("{}:30080", node_ip(n));
        ready(&c, &c.lan.laptop, &addr);
        let forwarded =
            |c: &Cluster| verdict(c, n, "fwd_xdp_redirect") + verdict(c, n, "fwd_tc_neigh");
        let before = forwarded(&c);
        let answers = lbclient(&c, &c.lan.laptop, &["peer", &addr, "60"]);
        let after = forwarded(&c);
        let by = tally(&c, &answers);
        // Who each pod saw: the laptop itself on this node; on the others this
        // node's address with a port of the SNAT range (61000-65535), so that they
        // answer through it.
        let mut remote = 0;
        for a in &answers {
            let mut w = a.split_whitespace();
            let (pod, peer) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            let (ip, port) = peer
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("no peer in {a:?}"));
            if pod.starts_with(&format!("n{}", n + 1)) {
                assert_eq!(ip, "192.168.1.10", "a local pod sees the laptop: {a}");
            } else {
                remote += 1;
                assert_eq!(ip, node_ip(n), "a remote pod sees node {}: {a}", n + 1);
                let port: u16 = port.parse().unwrap();
                assert!((61_000..=65_535).contains(&port), "SNAT port {port}: {a}");
            }
        }
        // Every packet of those connections, both ways, went through this node's
        // own forwarding (XDP's redirect or TC's): at least the SYN, the final ACK
        // and the request one way, the SYN-ACK and the answer the other.
        assert!(
            after - before >= 5 * remote,
            "node {}: {} packets forwarded for {remote} connections to remote pods",
            n + 1,
            after - before
        );
        assert_eq!(by.values().sum::<usize>(), 60, "node {}: {by:?}", n + 1);
        assert!(
            by.keys().any(|p| !p.starts_with(&format!("n{}", n + 1))),
            "node {} sent some to other nodes' pods: {by:?}",
            n + 1
        );
        for (pod, k) in by {
            *seen.entry(pod).or_insert(0) += k;
        }
    }
    assert_eq!(seen.len(), 6, "every pod answered some: {seen:?}");
    // Remote pods were reached through a FIB lookup and redirect: XDP's where it
    // runs (`--xdp native` on tuned links), TC's on links as they come, where XDP
    // redirects nothing (a veth would drop what it sent).
    // Every node sent some of its 60 to other nodes' pods: each one's counters
    // must show it forwarded them itself.
    for n in 0..3 {
        let (xdp, tc) = (
            verdict(&c, n, "fwd_xdp_redirect"),
            verdict(&c, n, "fwd_tc_neigh"),
        );
        if lb_tests::lbctl::xdp_from_env().as_deref() == Some("native") {
            assert!(
                xdp > 0,
                "node {}: nothing redirected by XDP\n{}",
                n + 1,
                diagnostics(&c)
            );
        } else {
            assert!(
                xdp == 0 && tc > 0,
                "node {}: TC, not XDP, redirects on virtual links: xdp {xdp}, tc {tc}\n{}",
                n + 1,
                diagnostics(&c)
            );
        }
    }

    // ClusterIP from a pod on node 1 to pods on every node.
    let client = c.lan.pods[0][0].clone();
    let by = tally(&c, &lbclient(&c, &client, &["tcp", "10.96.0.80:80", "60"]));
    assert!(
        by.keys().any(|p| p.starts_with("n2")) && by.keys().any(|p| p.starts_with("n3")),
        "a pod on node 1 reaches pods on nodes 2 and 3: {by:?}"
    );
    // Another node's NodePort from a pod on node 1, as between nodes of a kind
    // cluster: every connection answered, also those that land on the client pod
    // itself (SNAT by the remote node, not the local hairpin).
    for n in 1..3 {
        let addr = format!("{}:30080", node_ip(n));
        let by = tally(&c, &lbclient(&c, &client, &["tcp", &addr, "30"]));
        assert_eq!(
            by.values().sum::<usize>(),
            30,
            "node 1's pod -> node {}: {by:?}",
            n + 1
        );
    }
    // Full-size frames of the 1,500-byte links both ways, through a NodePort whose
    // flows go to pods on other nodes (SNAT): 1 MiB up and down per connection.
    let by = tally(
        &c,
        &lbclient(
            &c,
            &c.lan.laptop,
            &["bulk", &format!("{}:30080", node_ip(0)), "12"],
        ),
    );
    assert_eq!(by.values().sum::<usize>(), 12, "{by:?}");
    assert!(
        by.keys().any(|p| !p.starts_with("n1")),
        "some bulk flows went to other nodes' pods: {by:?}"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_only_local_pods_serve() {
    let svc = WEB.replace(
        "  type: NodePort\n",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    );
    // Pods on nodes 1 and 2 only; node 3 has none.
    let c = cluster("etplocal", 3, 1, &[(0, 0), (1, 0)], &svc);
    for n in 0..2 {
        let addr = format!("{}:30080", node_ip(n));
        ready(&c, &c.lan.laptop, &addr);
        let answers = lbclient(&c, &c.lan.laptop, &["peer", &addr, "20"]);
        for a in &answers {
            let mut w = a.split_whitespace();
            assert_eq!(
                w.next(),
                Some(format!("n{}p0", n + 1).as_str()),
                "only the local pod: {answers:?}"
            );
            let peer = w.next().unwrap_or("");
            assert!(
                peer.starts_with("192.168.1.10:"),
                "the pod sees the laptop's own address, not a node's: {a}"
            );
        }
    }
    // Node 3 has no local endpoint: it does not serve the port (packets are dropped,
    // as kube-proxy does, so a load balancer's health check moves away).
    let before = verdict(&c, 2, "drop_no_local_backend");
    let node3 = lbclient(
        &c,
        &c.lan.laptop,
        &["connect", &format!("{}:30080", node_ip(2))],
    );
    assert!(
        node3[0].starts_with("ERR TimedOut") || node3[0].starts_with("ERR WouldBlock"),
        "node 3 must not answer: {node3:?}"
    );
    assert!(verdict(&c, 2, "drop_no_local_backend") > before);
}

/// Which nodes carry `ip` on their uplink (announce it).
fn announcers(c: &Cluster, ip: &str) -> Vec<usize> {
    (0..c.lan.nodes.len())
        .filter(|n| {
            c.t.sh(
                &c.lan.nodes[*n],
                &["ip", "-4", "addr", "show", "dev", "eth0"],
            )
            .unwrap()
            .contains(&format!("inet {ip}/32"))
        })
        .collect()
}

#[test]
fn a_load_balancer_address_moves_to_another_node_when_its_agent_stops() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";
    let all: Vec<(usize, usize)> = (0..3).map(|n| (n, 0)).collect();
    let mut c = cluster_with(
        "lbfail",
        3,
        1,
        &all,
        svc,
        &["--lb-pool", "192.168.1.240/29"],
    );
    // The first usable address of the pool, shown as kubectl shows it, with a nodePort.
    let lb_ip = "192.168.1.241";
    let shown = Topology::wait_for(Duration::from_secs(10), || {
        let table = c.lb.ok(&["get", "svc", "front"]).ok()?;
        table.contains(lb_ip).then_some(table)
    })
    .unwrap_or_else(|| panic!("no address assigned\n{}", diagnostics(&c)));
    let row: Vec<&str> = shown.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1], "LoadBalancer");
    assert_eq!(row[3], lb_ip);
    assert!(
        row[4].starts_with("80:3") && row[4].ends_with("/TCP"),
        "{shown}"
    );
    let json = c.lb.ok(&["get", "svc", "front", "-o", "json"]).unwrap();
    assert!(
        json.contains(&format!("\"ip\": \"{lb_ip}\"")),
        "status.loadBalancer.ingress: {json}"
    );

    let addr = format!("{lb_ip}:80");
    ready(&c, &c.lan.laptop, &addr);
    let owner = Topology::wait_for(Duration::from_secs(5), || {
        let a = announcers(&c, lb_ip);
        (a.len() == 1).then(|| a[0])
    })
    .unwrap_or_else(|| panic!("exactly one node announces {lb_ip}\n{}", diagnostics(&c)));
    let by = tally(&c, &lbclient(&c, &c.lan.laptop, &["tcp", &addr, "30"]));
    assert_eq!(
        by.len(),
        3,
        "pods on every node answer through the address: {by:?}\n{}",
        diagnostics(&c)
    );

    // The announcing agent stops (SIGTERM: it lets the address go and removes its
    // heartbeat): another node takes the address at its next tick and the laptop
    // gets through it (the README says within about a second; 3 s allowed).
    c.t.stop(&format!("agent-node{}", owner + 1));
    let started = std::time::Instant::now();
    let next = Topology::wait_for(Duration::from_secs(10), || {
        let a = announcers(&c, lb_ip);
        (a.len() == 1 && a[0] != owner).then(|| a[0])
    })
    .unwrap_or_else(|| panic!("no other node took {lb_ip} over\n{}", diagnostics(&c)));
    // Through the new node: its counters take every new connection. (The stopped
    // node's pinned data plane still forwards what reaches it, so nothing breaks
    // while the laptop's ARP cache moves.)
    fn through(c: &Cluster, addr: &str, node: usize) -> bool {
        Topology::wait_for(Duration::from_secs(10), || {
            let before = verdict(c, node, "nat_new_flow");
            let a = lbclient(c, &c.lan.laptop, &["tcp", addr, "5"]);
            (a.iter().all(|a| !a.starts_with("ERR"))
                && verdict(c, node, "nat_new_flow") >= before + 5)
                .then_some(a)
        })
        .is_some()
    }
    assert!(
        through(&c, &addr, next),
        "the laptop never got through node {}\n{}",
        next + 1,
        diagnostics(&c)
    );
    let took = started.elapsed();
    eprintln!(
        "LoadBalancer failover (SIGTERM): node {} -> node {} in {took:?}",
        owner + 1,
        next + 1
    );
    assert!(took < Duration::from_secs(3), "failover took {took:?}");

    // The new owner's agent is killed (SIGKILL, as a crash: no withdrawal; its
    // address stays on its uplink and its pinned data plane keeps forwarding): the
    // last node takes the address once the heartbeat is older than its 3 s timeout,
    // at its next tick, and its gratuitous ARP moves the laptop over.
    let last = (0..3).find(|n| *n != owner && *n != next).unwrap();
    c.t.kill(&format!("agent-node{}", next + 1));
    let killed = std::time::Instant::now();
    let claimed = Topology::wait_for(Duration::from_secs(10), || {
        announcers(&c, lb_ip).contains(&last).then_some(())
    });
    let took = killed.elapsed();
    assert!(
        claimed.is_some(),
        "node {} never took {lb_ip} after node {} was killed\n{}",
        last + 1,
        next + 1,
        diagnostics(&c)
    );
    assert!(
        took < HEARTBEAT_TTL + Duration::from_secs(2),
        "taken {took:?} after the kill: more than the heartbeat timeout and a tick"
    );
    assert!(
        through(&c, &addr, last),
        "the laptop never got through node {}\n{}",
        last + 1,
        diagnostics(&c)
    );
    // The killed node still has the address on its uplink, but once its hold ran
    // out (short of the heartbeat timeout) its data plane lets no ARP about it out:
    // only the new node answers the LAN.
    let macs: Vec<String> = c
        .lan
        .nodes
        .iter()
        .map(|n| lb_tests::topology::mac_text(c.t.mac(n, "eth0").unwrap()))
        .collect();
    let answers = lbclient(&c, &c.lan.laptop, &["arp", &format!("{lb_ip}:0"), "100"]);
    assert_eq!(
        answers,
        vec![format!("MAC {}", macs[last]), "END 1".to_string()],
        "only node {} answers ARP for {lb_ip}\n{}",
        last + 1,
        diagnostics(&c)
    );
    eprintln!(
        "LoadBalancer failover (SIGKILL): node {} -> node {}: address in {took:?}, traffic in {:?}",
        next + 1,
        last + 1,
        killed.elapsed()
    );
}

#[test]
fn a_packet_too_big_for_the_way_to_a_remote_pod_gets_fragmentation_needed() {
    // The pod is on node 2; node 1's route to it holds 1,400 bytes, less than the
    // 1,500 of the laptop's link. The laptop sends full-size segments one by one
    // (no segmentation offload, as from a NIC without it). Node 1 answers them as a
    // router does, "fragmentation needed" with the MTU, from the address they were
    // sent to: the laptop's TCP lowers its segment size and the transfer completes.
    let c = cluster("pmtu", 2, 1, &[(1, 0)], WEB);
    c.t.ip(
        &c.lan.nodes[0],
        &[
            "route",
            "replace",
            "10.244.1.0/24",
            "via",
            &node_ip(1),
            "dev",
            "eth0",
            "mtu",
            "lock",
            "1400",
        ],
    )
    .unwrap();
    c.t.sh(
        &c.lan.laptop,
        &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
    )
    .unwrap();
    let addr = format!("{}:30080", node_ip(0));
    ready(&c, &c.lan.laptop, &addr);
    let by = tally(&c, &lbclient(&c, &c.lan.laptop, &["bulk", &addr, "3"]));
    assert_eq!(by.get("n2p0"), Some(&3), "{by:?}");
    // With GRO on node 1's uplink the segments arrive merged, and are checked (and
    // cut) as the kernel forwards them: against the device, which holds them.
    let gro = matches!(
        lb_tests::topology::Links::from_env(),
        lb_tests::topology::Links::GroOn | lb_tests::topology::Links::Tuned
    );
    if !gro {
        assert!(
            verdict(&c, 0, "reject_frag_needed") > 0,
            "node 1 answered fragmentation needed\n{}",
            diagnostics(&c)
        );
    }
}

/// What a node's healthCheckNodePort answers: (HTTP status, localEndpoints).
fn health_check(c: &Cluster, node: usize, port: u16) -> Option<(u16, u64)> {
    let url = format!("http://{}:{port}/", node_ip(node));
    let (code, body) = lb_tests::lbctl::http(&c.t, &c.lan.laptop, &url, 2)?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["service"]["name"], "front", "{url}: {body}");
    assert_eq!(v["serviceProxyHealthy"], true, "{url}: {body}");
    Some((code, v["localEndpoints"].as_u64()?))
}

/// Waits until node `node`'s healthCheckNodePort answers `want`.
fn health_check_becomes(c: &Cluster, node: usize, port: u16, want: (u16, u64)) {
    let got = Topology::wait_for(Duration::from_secs(10), || {
        health_check(c, node, port).filter(|g| *g == want)
    });
    assert!(
        got.is_some(),
        "node {} :{port} never answered {want:?} (last: {:?})\n{}",
        node + 1,
        health_check(c, node, port),
        diagnostics(c)
    );
}

#[test]
fn a_health_check_node_port_answers_with_the_nodes_ready_endpoints() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n---\n";
    // One ready pod on node 1, none on node 2.
    let c = cluster("hcnp", 2, 1, &[(0, 0)], svc);
    // kube-proxy's answers: 200 where the service has a ready endpoint, 503 where not.
    health_check_becomes(&c, 0, 32100, (200, 1));
    health_check_becomes(&c, 1, 32100, (503, 0));
    // The pod on node 1 stops being ready and one on node 2 starts: the answers follow.
    c.lb.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: n1p0\n  labels: {{app: web}}\nspec:\n  nodeName: node1\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {}\n  conditions: [{{type: Ready, status: \"False\"}}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: n2p0\n  labels: {{app: web}}\nspec:\n  nodeName: node2\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {}\n",
        pod_ip(0, 0),
        pod_ip(1, 0)
    ))
    .unwrap();
    health_check_becomes(&c, 0, 32100, (503, 0));
    health_check_becomes(&c, 1, 32100, (200, 1));
    // A service that stops being eTP Local no longer has the port: it closes.
    c.lb.apply(&svc.replace(
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n",
        "",
    ))
    .unwrap();
    let closed = Topology::wait_for(Duration::from_secs(10), || {
        health_check(&c, 1, 32100).is_none().then_some(())
    });
    assert!(closed.is_some(), "port 32100 still answers on node 2");
}

/// The cluster DNS address answered from a pod, by dig (None: no answer).
fn resolve(c: &Cluster, pod: &Netns, name: &str) -> Option<String> {
    let out =
        c.t.run(
            pod,
            &["dig", "+short", "+tries=1", "+time=1", "@10.96.0.10", name],
        )
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse::<std::net::Ipv4Addr>().ok().map(|_| text)
}

#[test]
fn each_nodes_pods_ask_their_own_nodes_agent_for_names() {
    let mut c = cluster("mndns", 2, 1, &[(0, 0), (1, 0)], WEB);
    let name = "web.default.svc.cluster.local";
    let (p1, p2) = (c.lan.pods[0][0].clone(), c.lan.pods[1][0].clone());
    for pod in [&p1, &p2] {
        let got = Topology::wait_for(Duration::from_secs(10), || resolve(&c, pod, name));
        assert_eq!(got.as_deref(), Some("10.96.0.80"), "{}", diagnostics(&c));
    }
    // One kube-dns service, one EndpointSlice per node naming its own listener.
    let slices =
        c.lb.ok(&["get", "endpointslices", "-n", "kube-system"])
            .unwrap();
    for n in 0..2 {
        let line = slices
            .lines()
            .find(|l| l.starts_with(&format!("kube-dns-node{}", n + 1)))
            .unwrap_or_else(|| panic!("no slice of node{}:\n{slices}", n + 1));
        assert!(line.contains(&node_ip(n)), "{line}");
    }
    // internalTrafficPolicy Local: with node 1's agent stopped, its pods get no
    // answer (their queries never cross to node 2), node 2's pods still do.
    c.t.stop("agent-node1");
    for _ in 0..5 {
        assert_eq!(resolve(&c, &p1, name), None);
        assert_eq!(resolve(&c, &p2, name).as_deref(), Some("10.96.0.80"));
    }
}
