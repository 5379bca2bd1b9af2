//! Dual-stack services end to end, in veth namespaces on default link settings: the
//! seeds' laptop, node and pod with IPv6 addresses beside their IPv4 ones, a store
//! allocating from one range per family, and lb's agent in the node: following
//! the embedded store, or (`kubernetes_mode_...`) an API server's dual-stack objects.

mod fakeapi;

use std::{net::IpAddr, time::Duration};

use fakeapi::FakeApi;
use serde_json::{Value, json};

use lb_common::{PROTO_TCP, reason};
use lb_user::{maps::Maps, plan::frontend};

use lb_tests::{
    Netns, Topology,
    cluster::lbclient_in,
    dual::{self, LAPTOP_IP6, NODE_IP6, POD_IP6, SERVICE_CIDRS},
    lbctl::{Lb, curl, podserver_bin},
    require_root,
    seeds::{LAPTOP_IP, NODE_IP, POD_IP},
    topology::{
        multinode::pod_ip,
        multinode6::{self, node_ip6, pod_ip6},
    },
};

/// The seeds' pod with both addresses, as a dual-stack kubelet reports them.
const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  labels: {app: myapp, type: front-end}
spec:
  nodeName: node1
  containers:
  - name: nginx-container
    image: nginx
    ports: [{name: http, containerPort: 80}]
status:
  podIP: 10.244.0.2
  podIPs: [{ip: 10.244.0.2}, {ip: 'fd00:10:244::2'}]
";

/// A client pod on the node, both families (in the store too: the agent attaches
/// to the interfaces of the pods it knows).
const CLIENT_IP: &str = "10.244.0.3";
const CLIENT_IP6: &str = "fd00:10:244::3";
const CLIENT: &str = "apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node1
  containers: [{name: c, image: c}]
status:
  podIP: 10.244.0.3
  podIPs: [{ip: 10.244.0.3}, {ip: 'fd00:10:244::3'}]
";

/// A service selecting the seeds' pod: `name`, `ipFamilyPolicy: policy`, the
/// families asked for (`[]`: none), TCP 80 on NodePort `node_port` and UDP 53 ->
/// 5353 on NodePort `node_port + 1000`.
fn service(name: &str, policy: &str, families: &str, node_port: u16) -> String {
    let families = if families == "[]" {
        String::new()
    } else {
        format!("  ipFamilies: {families}\n")
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: NodePort
  ipFamilyPolicy: {policy}
{families}  selector: {{app: myapp, type: front-end}}
  ports:
  - {{name: http, port: 80, targetPort: 80, nodePort: {node_port}}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: {}}}
---
",
        node_port + 1000
    )
}

struct Scenario {
    t: Topology,
    laptop: Netns,
    node: Netns,
    pod: Netns,
    client: Netns,
    lb: Lb,
    /// The API server the agent follows, in Kubernetes mode.
    api: Option<FakeApi>,
}

/// Where the agent reads its objects from.
enum Source<'a> {
    /// These manifests applied to a dual-stack embedded store (with the pods); the
    /// agent started with these flags.
    Store(&'a str, &'a [&'a str]),
    /// An API server in the node serving these objects (and the node's Node).
    Kube(&'a [Value]),
}

/// Laptop, node, the seeds' pod (TCP 80, UDP 5353) and a client pod, all dual-stack;
/// a dual-stack store with `manifests` applied; the agent in the node.
fn scenario(tag: &str, manifests: &str) -> Scenario {
    scenario_from(tag, Source::Store(manifests, &[]))
}

/// [`scenario`] with the agent's objects from `source`.
fn scenario_from(tag: &str, source: Source) -> Scenario {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let s = dual::lan(&mut t).unwrap();
    let pod = dual::pod(&mut t, &s.node, "pod", "lxc1", POD_IP, POD_IP6).unwrap();
    let client = dual::pod(&mut t, &s.node, "client", "lxc2", CLIENT_IP, CLIENT_IP6).unwrap();
    let server = podserver_bin().display().to_string();
    t.spawn(&pod, "pod", &[&server, "--tcp", "80", "--udp", "5353"], &[])
        .unwrap();
    let lb = Lb::new(&mut t).unwrap();
    let api = match source {
        Source::Store(manifests, args) => {
            lb.ok(&["ranges", "--service-cidr", SERVICE_CIDRS]).unwrap();
            lb.apply(&format!("{manifests}---\n{POD}---\n{CLIENT}"))
                .unwrap();
            lb.start_agent_with(&mut t, &s.node, "node1", &["eth0"], args)
                .unwrap();
            None
        }
        Source::Kube(objects) => {
            let api = FakeApi::start(&s.node);
            api.put(node_object());
            for o in objects {
                api.put(o.clone());
            }
            let path = t.dir().join("kubeconfig");
            std::fs::write(&path, api.kubeconfig()).unwrap();
            let path = path.display().to_string();
            let args = [
                "--kubeconfig",
                &path,
                "--dns",
                "on",
                "--dns-upstream",
                "none",
            ];
            lb.start_agent_with(&mut t, &s.node, "node1", &["eth0"], &args)
                .unwrap();
            Some(api)
        }
    };
    Scenario {
        t,
        laptop: s.laptop,
        node: s.node,
        pod,
        client,
        lb,
        api,
    }
}

impl Scenario {
    /// The service's clusterIPs, as `lb get svc -o json` reports them.
    fn cluster_ips(&self, name: &str) -> Vec<String> {
        let json = self.lb.ok(&["get", "svc", name, "-o", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["spec"]["clusterIPs"]
            .as_array()
            .unwrap_or_else(|| panic!("no clusterIPs: {json}"))
            .iter()
            .map(|ip| ip.as_str().unwrap().to_string())
            .collect()
    }

    /// `curl URL` from `ns` until it answers (10 s at most).
    fn fetch(&self, ns: &Netns, url: &str) -> Option<String> {
        Topology::wait_for(Duration::from_secs(10), || curl(&self.t, ns, url))
    }

    fn must_fetch(&self, ns: &Netns, url: &str) -> String {
        self.fetch(ns, url).unwrap_or_else(|| {
            panic!(
                "{url} never answered\n{}",
                self.lb.diagnostics(&self.t, "node1")
            )
        })
    }
}

/// `http://ADDR:PORT`, with an IPv6 address in brackets.
fn url(addr: &str, port: u16, path: &str) -> String {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    format!("http://{}{path}", std::net::SocketAddr::new(addr, port))
}

/// The seeds' scenario over IPv6: laptop -> [node]:30008 -> pod -> Hello World!, the
/// pod seeing the laptop's own IPv6 address (a local endpoint: no SNAT); the same
/// service still answers on the node's IPv4 address.
#[test]
fn laptop_curls_the_nodeport_over_ipv6_and_gets_hello_world() {
    let s = scenario(
        "ds-seeds",
        &service("node-port-service", "PreferDualStack", "[]", 30008),
    );
    assert_eq!(
        s.must_fetch(&s.laptop, &url(NODE_IP6, 30008, "")),
        "Hello World!\n"
    );
    let peer = s.must_fetch(&s.laptop, &url(NODE_IP6, 30008, "/peer"));
    assert!(
        peer.starts_with(&format!("Hello World! [{LAPTOP_IP6}]:")),
        "the pod sees the laptop's address: {peer}"
    );
    assert_eq!(
        s.must_fetch(&s.laptop, &url(NODE_IP, 30008, "/peer"))
            .split(' ')
            .nth(2)
            .and_then(|p| p.rsplit_once(':'))
            .map(|(a, _)| a.to_string()),
        Some(LAPTOP_IP.to_string())
    );
    // UDP over IPv6 through the NodePort, several new flows.
    let udp = lbclient_in(
        &s.t,
        &s.laptop,
        &["udp", &format!("[{NODE_IP6}]:31008"), "3"],
    );
    assert_eq!(
        udp,
        vec!["Hello World!"; 3],
        "{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    // 4,000-byte datagrams travel as IPv6 fragments both ways (a Fragment header
    // each): the later ones follow their first's flow (lb's IPv6 fragment map), so
    // the echoes come back whole. Passed untranslated, the node would reassemble
    // them for a port no socket has.
    let big = lbclient_in(
        &s.t,
        &s.laptop,
        &["bigudp", &format!("[{NODE_IP6}]:31008"), "5"],
    );
    assert_eq!(
        big,
        vec!["Hello World!"; 5],
        "fragmented datagrams through the IPv6 NodePort echo whole\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    // The IPv6 frontend's and its backend's counters moved: the IPv6 maps served it.
    let maps = Maps::open_pinned(&s.lb.pins("node1")).expect("the agent's pinned maps");
    // Packets for the pod are handed to it at TC ingress (`bpf_redirect_peer`, as
    // IPv4's; the veth uplink runs no XDP): one more IPv6 request moves
    // `fwd_tc_peer` by its packets to the pod (SYN, request, ACKs, FIN).
    let handed = |m: &Maps| m.verdicts().unwrap()[reason::FWD_TC_PEER as usize].packets;
    let before = handed(&maps);
    s.must_fetch(&s.laptop, &url(NODE_IP6, 30008, ""));
    let moved = handed(&maps) - before;
    assert!(
        moved >= 3,
        "fwd_tc_peer moved by {moved} for an IPv6 request\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    let entries = maps.read_entries().unwrap();
    let fe = frontend(NODE_IP6.parse::<IpAddr>().unwrap(), 30008, PROTO_TCP);
    let svc = entries
        .services
        .get(&fe)
        .expect("a frontend for [NODE_IP6]:30008/TCP");
    assert!(maps.service_counters(svc.svc_id).unwrap().packets >= 6);
    let slot = entries
        .backends
        .get(&lb_common::BackendKey {
            svc_id: svc.svc_id,
            slot: 0,
        })
        .expect("one IPv6 slot");
    assert_eq!(slot.addr().to_string(), POD_IP6);
    assert!(maps.backend_counters(slot.backend_id()).unwrap().packets >= 6);
    // `lb conntrack` lists the IPv6 flows as the IPv4 ones: the laptop's to the
    // NodePort, translated to the pod.
    let ct = s.lb.conntrack("node1");
    let to_pod = format!("[{POD_IP6}]:80");
    let nodeport = format!("[{NODE_IP6}]:30008");
    assert!(
        ct.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5 && f[0] == "tcp" && f[1] == "original" && f[3] == nodeport && f[5] == to_pod
        }),
        "lb conntrack lists the IPv6 flow:\n{ct}"
    );
    // The pod's IPv6 address is not reachable from the laptop: only the NodePort
    // leads to it.
    assert_eq!(curl(&s.t, &s.laptop, &url(POD_IP6, 80, "")), None);
}

/// IPv6 on the fast path, as IPv4's (`seeds::by_default_...`, `seeds::with_to_pods_xdp_...`):
/// with XDP on the uplink (`--xdp native`, the laptop filling in its checksums:
/// tuned links), an IPv6 NodePort packet for a pod whose end of its veth takes no
/// XDP frames (GRO off, as a CNI makes it) is translated by XDP, marked, and handed
/// to the pod by TC ingress (`bpf_redirect_peer`); with `--to-pods xdp` (GRO on at
/// the pod's end) XDP redirects it into the veth itself. Each request is answered.
#[test]
fn with_xdp_on_the_uplink_ipv6_nodeport_packets_are_handed_over_or_redirected() {
    let service = service("node-port-service", "PreferDualStack", "[]", 30008);
    for (tag, args, gro, reason, other) in [
        (
            "ds-xpeer",
            &["--xdp", "native"][..],
            "off",
            reason::FWD_TC_PEER,
            reason::FWD_XDP_REDIRECT,
        ),
        (
            "ds-xxdp",
            &["--xdp", "native", "--to-pods", "xdp"][..],
            "on",
            reason::FWD_XDP_REDIRECT,
            reason::FWD_TC_PEER,
        ),
    ] {
        let s = scenario_from(tag, Source::Store(&service, args));
        s.t.sh(&s.pod, &["ethtool", "-K", "eth0", "gro", gro])
            .unwrap();
        s.t.sh(&s.laptop, &["ethtool", "-K", "eth0", "tx", "off"])
            .unwrap();
        for _ in 0..5 {
            assert_eq!(
                s.must_fetch(&s.laptop, &url(NODE_IP6, 30008, "")),
                "Hello World!\n"
            );
        }
        let maps = Maps::open_pinned(&s.lb.pins("node1")).expect("the agent's pinned maps");
        let v = maps.verdicts().unwrap();
        // The first packets find no neighbour entry for the pod yet and go through
        // the stack (which resolves it); later ones take the fast path.
        assert!(
            v[reason as usize].packets >= 10,
            "{tag}: IPv6 packets to the local pod went by {}: {:?}\n{}",
            lb_common::reason::NAMES[reason as usize],
            v[reason as usize],
            s.lb.diagnostics(&s.t, "node1")
        );
        assert_eq!(
            v[other as usize].packets,
            0,
            "{tag}: none by {}",
            lb_common::reason::NAMES[other as usize]
        );
    }
}

/// Path MTU discovery through an IPv6 NodePort: a client two hops away, behind a
/// router (the laptop) whose route to it holds 1,280 bytes. The pod's full-size
/// answers leave the node from the NodePort; the router answers them "packet too
/// big" about a packet from [node]:30008, which no socket of the node has. lb
/// translates that error with its flow, so it reaches the pod about the pod's own
/// packet: the pod's TCP lowers its segment size and 1 MiB each way goes through
/// (IPv6 routers never fragment: untranslated, the transfer stalls).
#[test]
fn an_ipv6_client_behind_a_smaller_mtu_gets_a_bulk_answer_through_the_nodeport() {
    const FAR_IP6: &str = "fd00:2::10";
    const ROUTER_IP6: &str = "fd00:2::1";
    let mut s = scenario(
        "ds-pmtu",
        &service("node-port-service", "PreferDualStack", "[]", 30008),
    );
    let far = s.t.netns("far").unwrap();
    s.t.link(&far, "eth0", &s.laptop, "eth1").unwrap();
    for (ns, dev, ip) in [(&far, "eth0", FAR_IP6), (&s.laptop, "eth1", ROUTER_IP6)] {
        s.t.ip(
            ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                dev,
                "nodad",
            ],
        )
        .unwrap();
    }
    s.t.ip(&far, &["-6", "route", "add", "default", "via", ROUTER_IP6])
        .unwrap();
    // The links hold 1,500 bytes (the client announces that segment size); the
    // router's route to the client only 1,280 (locked: a router checks what it
    // forwards against its device's MTU, unless the route's is locked).
    s.t.ip(
        &s.laptop,
        &[
            "-6",
            "route",
            "add",
            &format!("{FAR_IP6}/128"),
            "dev",
            "eth1",
            "mtu",
            "lock",
            "1280",
        ],
    )
    .unwrap();
    s.t.sysctl(&s.laptop, "net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    s.t.ip(
        &s.node,
        &["-6", "route", "add", "fd00:2::/64", "via", LAPTOP_IP6],
    )
    .unwrap();
    let addr = format!("[{NODE_IP6}]:30008");
    assert_eq!(
        s.fetch(&far, &url(NODE_IP6, 30008, "")).as_deref(),
        Some("Hello World!\n"),
        "{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    let got = lbclient_in(&s.t, &far, &["bulk", &addr, "2"]);
    assert_eq!(
        got,
        vec!["Hello World!"; 2],
        "{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    assert!(
        s.lb.verdict("node1", "nat_related") > 0,
        "the router's packet too big was translated for the pod\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
}

/// A dual-stack service without endpoints refuses a pod's connections in both
/// families, as kube-proxy's REJECT rules do: ICMP and ICMPv6 "port unreachable"
/// from the service address (TCP: connect fails with "connection refused" instead
/// of hanging, at once for IPv4, at the SYN's first retransmission for IPv6, see
/// below; UDP: the connected socket's next call fails).
#[test]
fn a_dual_stack_service_without_endpoints_refuses_connections_in_both_families() {
    let s = scenario(
        "ds-noep",
        "apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: nobody}
  ports:
  - {name: web, port: 80}
  - {name: dns, port: 53, protocol: UDP}
",
    );
    for ip in s.cluster_ips("empty") {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 80).to_string();
        let answer = Topology::wait_for(Duration::from_secs(10), || {
            lbclient_in(&s.t, &s.client, &["connect", &addr])
                .first()
                .filter(|a| a.contains("ConnectionRefused"))
                .cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "{addr}: connect was never refused\n{}",
                s.lb.diagnostics(&s.t, "node1")
            )
        });
        let ms: u64 = answer.rsplit(' ').next().unwrap().parse().unwrap();
        // IPv6: the answer to the first SYN comes back while connect() still holds
        // its socket, and the pod's kernel drops it (TcpExtLockDroppedIcmps); the
        // retransmitted SYN's answer, a second later, refuses the connection.
        let bound = if addr.starts_with('[') { 1500 } else { 1000 };
        assert!(
            ms < bound,
            "{addr}: refused after {ms} ms\n{}",
            s.lb.diagnostics(&s.t, "node1")
        );
        let udp = std::net::SocketAddr::new(ip.parse().unwrap(), 53).to_string();
        let got = lbclient_in(&s.t, &s.client, &["udp", &udp, "1"]);
        assert!(
            got[0].contains("Connection refused"),
            "{udp}: UDP gets port unreachable: {got:?}"
        );
    }
    assert!(s.lb.verdict("node1", "reject_no_backend") >= 4);
}

/// A pod and the node's own processes (the socket programs, connect4/6, sendmsg4/6,
/// recvmsg4/6) reach a dual-stack service's ClusterIP in both families, TCP and
/// UDP, as `spec.clusterIPs` lists them (IPv4 first: the store's primary family);
/// its name answers A and AAAA.
#[test]
fn pods_and_the_node_reach_a_dual_stack_clusterip_in_both_families() {
    let s = scenario("ds-cip", &service("web", "RequireDualStack", "[]", 30010));
    let ips = s.cluster_ips("web");
    assert_eq!(ips.len(), 2, "{ips:?}");
    let (v4, v6) = (&ips[0], &ips[1]);
    assert!(v4.parse::<std::net::Ipv4Addr>().is_ok(), "{ips:?}");
    assert!(v6.starts_with("fd00:10:96::"), "{ips:?}");
    for ip in [v4, v6] {
        assert_eq!(
            s.must_fetch(&s.client, &url(ip, 80, "/peer"))
                .split(' ')
                .nth(2)
                .map(|p| p
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .trim_matches(['[', ']'])
                    .to_string()),
            Some(if ip == v4 { CLIENT_IP } else { CLIENT_IP6 }.to_string()),
            "the pod sees the client pod's own address of the family"
        );
        let at = std::net::SocketAddr::new(ip.parse().unwrap(), 53).to_string();
        let udp = lbclient_in(&s.t, &s.client, &["udp", &at, "3"]);
        assert_eq!(udp, vec!["Hello World!"; 3], "UDP to {at}");
        // Fragmented datagrams (IPv4 fragments, IPv6 Fragment headers) both ways.
        let big = lbclient_in(&s.t, &s.client, &["bigudp", &at, "3"]);
        assert_eq!(
            big,
            vec!["Hello World!"; 3],
            "fragmented UDP to {at} echoes whole"
        );
        // From the node: its sockets are sent to the pod at connect() and sendmsg(),
        // and an unconnected socket's answers come from the service's address.
        assert_eq!(
            s.must_fetch(&s.node, &url(ip, 80, "")),
            "Hello World!\n",
            "the node to {ip}"
        );
        for mode in ["udp", "sendto"] {
            let got = lbclient_in(&s.t, &s.node, &[mode, &at, "3"]);
            assert_eq!(got, vec!["Hello World!"; 3], "{mode} from the node to {at}");
        }
    }
    // The service's name answers in both families from the cluster DNS (the agent's,
    // at 10.96.0.10), and each address points back at the name.
    let dig = |args: &[&str]| {
        let mut argv = vec!["dig", "+tries=3", "+time=1", "+short", "@10.96.0.10"];
        argv.extend_from_slice(args);
        let out = s.t.run(&s.client, &argv).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let name = "web.default.svc.cluster.local";
    assert_eq!(dig(&["A", name]), *v4);
    assert_eq!(dig(&["AAAA", name]), *v6);
    assert_eq!(dig(&["-x", v6]), format!("{name}."));
    assert_eq!(dig(&["-x", v4]), format!("{name}."));
    // The seeds' pod reaches itself through both clusterIPs (hairpin: answered from
    // the hairpin address of the family, translated back to the ClusterIP).
    for ip in &ips {
        let to = std::net::SocketAddr::new(ip.parse().unwrap(), 80).to_string();
        assert_eq!(
            lbclient_in(&s.t, &s.pod, &["tcp", &to, "3"]),
            vec!["Hello World!"; 3],
            "{to} from the pod itself\n{}",
            s.lb.diagnostics(&s.t, "node1")
        );
        let to = std::net::SocketAddr::new(ip.parse().unwrap(), 53).to_string();
        assert_eq!(
            lbclient_in(&s.t, &s.pod, &["udp", &to, "3"]),
            vec!["Hello World!"; 3],
            "{to} (UDP) from the pod itself"
        );
    }
}

/// An IPv6-only service answers on the node's IPv6 address and its IPv6
/// ClusterIP, never on IPv4 (its NodePort is not open on the node's IPv4 address),
/// also to a pod with an IPv6 address alone; an IPv6-primary dual-stack one lists
/// its IPv6 address first and answers on both.
#[test]
fn an_ipv6_only_service_answers_in_ipv6_only() {
    let manifests = format!(
        "{}{}",
        service("six", "SingleStack", "[IPv6]", 30020),
        service("six-first", "PreferDualStack", "[IPv6, IPv4]", 30021),
    );
    // The cluster DNS in both families (kubelet's --cluster-dns, dual-stack).
    let dns_args = ["--cluster-dns", "10.96.0.10,fd00:10:96::a"];
    let s = scenario_from("ds-six", Source::Store(&manifests, &dns_args));
    let six = s.cluster_ips("six");
    assert_eq!(six.len(), 1, "{six:?}");
    assert!(six[0].contains(':'), "{six:?}");
    assert_eq!(
        s.must_fetch(&s.laptop, &url(NODE_IP6, 30020, "")),
        "Hello World!\n"
    );
    assert_eq!(
        s.must_fetch(&s.client, &url(&six[0], 80, "")),
        "Hello World!\n"
    );
    assert_eq!(
        curl(&s.t, &s.laptop, &url(NODE_IP, 30020, "")),
        None,
        "an IPv6-only service's NodePort is not served on IPv4"
    );
    // A pod with an IPv6 address alone (an IPv6-only cluster's pod): the agent
    // finds its interface by the IPv6 route to it, and it reaches the ClusterIP.
    let mut s = s;
    let only6 = s.t.netns("only6").unwrap();
    s.t.link(&only6, "eth0", &s.node, "lxc3").unwrap();
    dual::add_ip6(
        &s.t,
        &s.node,
        &only6,
        "lxc3",
        "fd00:10:244::4",
        dual::POD_GATEWAY6,
    )
    .unwrap();
    s.lb.apply(
        "apiVersion: v1
kind: Pod
metadata: {name: only6}
spec:
  nodeName: node1
  containers: [{name: c, image: c}]
status:
  podIP: 'fd00:10:244::4'
  podIPs: [{ip: 'fd00:10:244::4'}]
",
    )
    .unwrap();
    assert_eq!(
        s.must_fetch(&only6, &url(&six[0], 80, "/peer"))
            .split(' ')
            .nth(2)
            .and_then(|p| p.rsplit_once(':'))
            .map(|(a, _)| a.to_string()),
        Some("[fd00:10:244::4]".to_string()),
        "the IPv6-only pod reaches the ClusterIP with its own address"
    );
    // It asks the cluster DNS at its IPv6 address (the kube-dns service's IPv6
    // clusterIP, to the agent's listener on the node's IPv6 address): the names
    // answer, and the name server's own name has both addresses.
    let dig = |args: &[&str]| {
        let mut argv = vec!["dig", "+tries=3", "+time=1", "+short", "@fd00:10:96::a"];
        argv.extend_from_slice(args);
        let out = s.t.run(&only6, &argv).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        dig(&["AAAA", "six.default.svc.cluster.local"]),
        six[0],
        "the IPv6-only pod resolves over IPv6\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    assert_eq!(
        dig(&["AAAA", "ns.dns.cluster.local"]),
        "fd00:10:96::a",
        "the name server's IPv6 address"
    );
    let kube_dns =
        s.lb.ok(&["get", "svc", "kube-dns", "-n", "kube-system", "-o", "json"])
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&kube_dns).unwrap();
    assert_eq!(
        v["spec"]["clusterIPs"],
        json!(["10.96.0.10", "fd00:10:96::a"]),
        "the agent's kube-dns has a clusterIP per family"
    );
    let first = s.cluster_ips("six-first");
    assert!(
        first[0].contains(':') && !first[1].contains(':'),
        "{first:?}"
    );
    for addr in [NODE_IP6, NODE_IP] {
        assert_eq!(
            s.must_fetch(&s.laptop, &url(addr, 30021, "")),
            "Hello World!\n"
        );
    }
}

/// Two dual-stack nodes, the pod `n2p0` (TCP 8080) on node 2, a dual-stack NodePort
/// service `web` on 30030 selecting it, and an agent on each node.
fn remote_pod(tag: &str) -> (Topology, lb_tests::topology::multinode::Lan, Lb) {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let lan = multinode6::lan(&mut t, 2, 1).unwrap();
    let server = podserver_bin().display().to_string();
    t.spawn(
        &lan.pods[1][0],
        "n2p0",
        &[&server, "--text", "n2p0", "--tcp", "8080"],
        &[],
    )
    .unwrap();
    let lb = Lb::new(&mut t).unwrap();
    lb.ok(&["ranges", "--service-cidr", SERVICE_CIDRS]).unwrap();
    lb.apply(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30030}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: n2p0, labels: {{app: web}}}}
spec:
  nodeName: node2
  containers: [{{name: c, image: app}}]
status:
  podIP: {}
  podIPs: [{{ip: {}}}, {{ip: '{}'}}]
",
        pod_ip(1, 0),
        pod_ip(1, 0),
        pod_ip6(1, 0)
    ))
    .unwrap();
    for (n, node) in lan.nodes.clone().iter().enumerate() {
        lb.start_agent(&mut t, node, &format!("node{}", n + 1), &["eth0"])
            .unwrap();
    }
    (t, lan, lb)
}

/// Two nodes, one pod on node2: the laptop reaches it over IPv6 through either
/// node's NodePort. Through node1 the flow is SNATed to node1's IPv6 address (the
/// pod's answer must come back through node1, which translates it for the laptop)
/// and both directions leave by a FIB lookup; through node2 the pod is local and
/// sees the laptop's own address.
#[test]
fn an_ipv6_nodeport_reaches_a_pod_on_another_node() {
    let (t, lan, lb) = remote_pod("ds-multi");
    let peer = |node: usize| {
        Topology::wait_for(Duration::from_secs(10), || {
            curl(&t, &lan.laptop, &url(&node_ip6(node), 30030, "/peer"))
        })
        .unwrap_or_else(|| {
            panic!(
                "[{}]:30030 never answered\n{}\n{}",
                node_ip6(node),
                lb.diagnostics(&t, "node1"),
                lb.diagnostics(&t, "node2")
            )
        })
    };
    let via1 = peer(0);
    assert!(
        via1.starts_with(&format!("n2p0 [{}]:", node_ip6(0))),
        "through node1 the pod sees node1's address: {via1}"
    );
    let via2 = peer(1);
    assert!(
        via2.starts_with(&format!("n2p0 [{LAPTOP_IP6}]:")),
        "through node2 (local) the pod sees the laptop's: {via2}"
    );
    // Several new flows through node1, each answered.
    for _ in 0..5 {
        assert!(peer(0).starts_with("n2p0 "));
    }
    let forwarded = lb.verdict("node1", "fwd_tc_neigh");
    assert!(forwarded >= 4, "node1 forwarded {forwarded} packets by FIB");
}

/// As IPv4's `multinode::a_packet_too_big_for_the_way_to_a_remote_pod_gets_fragmentation_needed`,
/// over IPv6: the pod is on node 2; node 1's route to it holds 1,400 bytes, less
/// than the laptop's link. The laptop sends full-size segments one by one (no
/// segmentation offload). Node 1 answers them as a router does, ICMPv6 "packet too
/// big" with the MTU, from the address they were sent to: the laptop's TCP lowers
/// its segment size and 1 MiB each way goes through.
#[test]
fn a_packet_too_big_for_the_ipv6_way_to_a_remote_pod_gets_packet_too_big() {
    let (t, lan, lb) = remote_pod("ds-ptb");
    t.ip(
        &lan.nodes[0],
        &[
            "-6",
            "route",
            "replace",
            "fd00:10:244:1::/64",
            "via",
            &node_ip6(1),
            "dev",
            "eth0",
            "mtu",
            "lock",
            "1400",
        ],
    )
    .unwrap();
    t.sh(
        &lan.laptop,
        &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
    )
    .unwrap();
    let addr = format!("[{}]:30030", node_ip6(0));
    let answered = Topology::wait_for(Duration::from_secs(10), || {
        curl(&t, &lan.laptop, &url(&node_ip6(0), 30030, "")).filter(|a| a.starts_with("n2p0"))
    });
    assert!(
        answered.is_some(),
        "{addr} never answered\n{}",
        lb.diagnostics(&t, "node1")
    );
    assert_eq!(
        lbclient_in(&t, &lan.laptop, &["bulk", &addr, "3"]),
        vec!["n2p0"; 3],
        "{}",
        lb.diagnostics(&t, "node1")
    );
    // With GRO on node 1's uplink the segments arrive merged and are cut as the
    // kernel forwards them (see the IPv4 test).
    let gro = matches!(
        lb_tests::topology::Links::from_env(),
        lb_tests::topology::Links::GroOn | lb_tests::topology::Links::Tuned
    );
    if !gro {
        assert!(
            lb.verdict("node1", "reject_frag_needed") > 0,
            "node 1 answered packet too big\n{}",
            lb.diagnostics(&t, "node1")
        );
    }
}

/// Which of `lan`'s nodes carry `ip` on their uplink (announce it), with the
/// `ip addr` line that shows it.
fn announcers(
    t: &Topology,
    lan: &lb_tests::topology::multinode::Lan,
    ip: &str,
) -> Vec<(usize, String)> {
    let want = format!("inet6 {ip}/128");
    (0..lan.nodes.len())
        .filter_map(|n| {
            let out = t
                .sh(
                    &lan.nodes[n],
                    &["ip", "-6", "-o", "addr", "show", "dev", "eth0"],
                )
                .unwrap();
            out.lines()
                .find(|l| l.contains(&want))
                .map(|l| (n, l.to_string()))
        })
        .collect()
}

/// A dual-stack LoadBalancer on two nodes: from one IPv4 and one IPv6 pool the
/// service gets an address per family (`lb get svc` shows both, as kubectl does),
/// and the laptop reaches the pods on both nodes through each. The IPv6 address
/// is on one node's uplink, deprecated (so the node never sends from it) and
/// answered there: one Neighbor Advertisement per solicitation. When that node's
/// agent is killed (a crash: the address stays on its uplink and its kernel still
/// answers), the other node takes the address after the heartbeat timeout, its
/// unsolicited advertisement moves the laptop's neighbour entry, and the killed
/// node's answers are dropped once its hold ran out: only the new node answers.
#[test]
fn a_dual_stack_load_balancer_is_announced_in_both_families_and_moves_when_its_agent_dies() {
    require_root();
    let mut t = Topology::new("ds-lb").unwrap();
    let lan = multinode6::lan(&mut t, 2, 1).unwrap();
    let server = podserver_bin().display().to_string();
    let mut manifests = String::from(
        "apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
",
    );
    for n in 0..2 {
        let name = format!("n{}p0", n + 1);
        t.spawn(
            &lan.pods[n][0],
            &name,
            &[&server, "--text", &name, "--tcp", "8080"],
            &[],
        )
        .unwrap();
        manifests += &format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: node{}
  containers: [{{name: c, image: app}}]
status:
  podIP: {}
  podIPs: [{{ip: {}}}, {{ip: '{}'}}]
",
            n + 1,
            pod_ip(n, 0),
            pod_ip(n, 0),
            pod_ip6(n, 0)
        );
    }
    let lb = Lb::new(&mut t).unwrap();
    lb.ok(&["ranges", "--service-cidr", SERVICE_CIDRS]).unwrap();
    lb.apply(&manifests).unwrap();
    let pools = [
        "--lb-pool",
        "192.168.1.240/29",
        "--lb-pool",
        "fd00:192:168:1::f0/124",
    ];
    for (n, node) in lan.nodes.clone().iter().enumerate() {
        lb.start_agent_with(&mut t, node, &format!("node{}", n + 1), &["eth0"], &pools)
            .unwrap();
    }
    let (lb4, lb6) = ("192.168.1.241", "fd00:192:168:1::f1");
    let shown = Topology::wait_for(Duration::from_secs(10), || {
        let table = lb.ok(&["get", "svc", "front"]).ok()?;
        table.contains(lb6).then_some(table)
    })
    .unwrap_or_else(|| panic!("no IPv6 address assigned\n{}", lb.diagnostics(&t, "node1")));
    let row: Vec<&str> = shown.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[3], format!("{lb4},{lb6}"), "{shown}");

    let tally = |addr: &str| {
        let mut by = std::collections::BTreeMap::<String, usize>::new();
        for a in lbclient_in(&t, &lan.laptop, &["tcp", addr, "20"]) {
            *by.entry(a).or_default() += 1;
        }
        by
    };
    for ip in [lb4, lb6] {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 80).to_string();
        let by = Topology::wait_for(Duration::from_secs(10), || {
            let by = tally(&addr);
            (by.len() == 2 && by.keys().all(|k| k.starts_with('n'))).then_some(by)
        });
        assert!(
            by.is_some(),
            "{addr}: both pods answer, last {:?}\n{}",
            tally(&addr),
            lb.diagnostics(&t, "node1")
        );
    }
    // The node every agent picks for the address once both are up (until then the
    // first agent may hold it alone for a moment).
    let nodes = ["node1".to_string(), "node2".to_string()];
    let owner = lb_user::announce::owner(&nodes, lb6.parse().unwrap())
        .and_then(|n| nodes.iter().position(|m| m == n))
        .unwrap();
    let line = Topology::wait_for(Duration::from_secs(10), || {
        let a = announcers(&t, &lan, lb6);
        (a.len() == 1 && a[0].0 == owner).then(|| a[0].1.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "node {} alone announces {lb6}: {:?}\n{}",
            owner + 1,
            announcers(&t, &lan, lb6),
            lb.diagnostics(&t, "node1")
        )
    });
    assert!(
        line.contains("deprecated"),
        "never a source address: {line}"
    );
    let next = 1 - owner;
    let macs: Vec<String> = lan
        .nodes
        .iter()
        .map(|n| lb_tests::topology::mac_text(t.mac(n, "eth0").unwrap()))
        .collect();
    let solicit = format!("[{lb6}]:0");
    assert_eq!(
        lbclient_in(&t, &lan.laptop, &["arp", &solicit, "300"]),
        vec![format!("MAC {}", macs[owner]), "END 1".to_string()],
        "node {} alone answers for {lb6}",
        owner + 1
    );

    // The owner's agent dies: the other node takes the address, and the laptop
    // goes through it.
    t.kill(&format!("agent-node{}", owner + 1));
    let killed = std::time::Instant::now();
    let claimed = Topology::wait_for(Duration::from_secs(10), || {
        announcers(&t, &lan, lb6)
            .iter()
            .any(|(n, _)| *n == next)
            .then_some(())
    });
    assert!(
        claimed.is_some(),
        "node {} never took {lb6}\n{}",
        next + 1,
        lb.diagnostics(&t, &format!("node{}", next + 1))
    );
    let took = killed.elapsed();
    assert!(
        took < lb_user::announce::HEARTBEAT_TTL + Duration::from_secs(2),
        "taken {took:?} after the kill"
    );
    let addr = format!("[{lb6}]:80");
    let node = format!("node{}", next + 1);
    let through = Topology::wait_for(Duration::from_secs(10), || {
        let before = lb.verdict(&node, "nat_new_flow");
        let a = lbclient_in(&t, &lan.laptop, &["tcp", &addr, "5"]);
        (a.iter().all(|a| a.starts_with('n')) && lb.verdict(&node, "nat_new_flow") >= before + 5)
            .then_some(())
    });
    assert!(
        through.is_some(),
        "the laptop never got through node {}\n{}",
        next + 1,
        lb.diagnostics(&t, &node)
    );
    // The killed node still has the address, but only the new one answers for it.
    assert_eq!(
        lbclient_in(&t, &lan.laptop, &["arp", &solicit, "300"]),
        vec![format!("MAC {}", macs[next]), "END 1".to_string()],
        "node {} alone answers for {lb6} after the failover",
        next + 1
    );
    assert!(
        announcers(&t, &lan, lb6).iter().any(|(n, _)| *n == owner),
        "the killed node's address stays on its uplink (what the hold is for)"
    );
    assert!(lb.verdict(&format!("node{}", owner + 1), "drop_ndp_not_holder") > 0);
    eprintln!(
        "IPv6 LoadBalancer failover (SIGKILL): node {} -> node {}: address in {took:?}, traffic in {:?}",
        owner + 1,
        next + 1,
        killed.elapsed()
    );
}

/// The dual-stack kubelet's Node: a pod network and an address per family.
fn node_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node1"},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "InternalIP", "address": NODE_IP6},
        ]},
    })
}

/// The service `web` as a dual-stack API server stores it (RequireDualStack, both
/// clusterIPs allocated, IPv6 first: an IPv6-primary cluster), NodePort 30040.
fn api_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "ipFamilyPolicy": "RequireDualStack",
            "ipFamilies": ["IPv6", "IPv4"],
            "clusterIP": "fd00:10:96::40",
            "clusterIPs": ["fd00:10:96::40", "10.96.0.40"],
            "selector": {"app": "myapp"},
            "ports": [{"name": "http", "port": 80, "targetPort": 80, "nodePort": 30040, "protocol": "TCP"}],
        },
    })
}

/// The EndpointSlice the API's controller writes for `web` in `family`: the seeds'
/// pod, ready or not.
fn api_slice(family: &str, ready: bool) -> Value {
    let addr = if family == "IPv6" { POD_IP6 } else { POD_IP };
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("web-{}", family.to_lowercase()),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": family,
        "endpoints": [{
            "addresses": [addr],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": "node1",
        }],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    })
}

/// Kubernetes mode in a dual-stack cluster: the agent follows an API server's
/// dual-stack service (IPv6 primary) and its two EndpointSlices, one per family,
/// and serves the NodePort on the node's address of each family and both clusterIPs
/// from a pod; its DNS answers the name in both families. When the IPv6 slice's
/// endpoint turns not ready, IPv6 connections are refused while IPv4 goes on: each
/// family follows its own slice, as kube-proxy's.
#[test]
fn kubernetes_mode_serves_a_dual_stack_service_from_its_two_endpoint_slices() {
    let objects = [
        api_service(),
        api_slice("IPv4", true),
        api_slice("IPv6", true),
    ];
    let s = scenario_from("ds-kube", Source::Kube(&objects));
    for addr in [NODE_IP6, NODE_IP] {
        assert_eq!(
            s.must_fetch(&s.laptop, &url(addr, 30040, "")),
            "Hello World!\n"
        );
    }
    for ip in ["fd00:10:96::40", "10.96.0.40"] {
        assert_eq!(
            s.must_fetch(&s.client, &url(ip, 80, "")),
            "Hello World!\n",
            "{ip} from a pod"
        );
    }
    let dig = |ty: &str| {
        let argv = [
            "dig",
            "+tries=3",
            "+time=1",
            "+short",
            &format!("@{NODE_IP}"),
            ty,
        ];
        let mut argv: Vec<&str> = argv.to_vec();
        argv.push("web.default.svc.cluster.local");
        let out = s.t.run(&s.laptop, &argv).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("AAAA"), "fd00:10:96::40");
    assert_eq!(dig("A"), "10.96.0.40");

    let api = s.api.as_ref().expect("Kubernetes mode");
    api.put(api_slice("IPv6", false));
    let six = std::net::SocketAddr::new(NODE_IP6.parse().unwrap(), 30040).to_string();
    let refused = Topology::wait_for(Duration::from_secs(10), || {
        lbclient_in(&s.t, &s.laptop, &["connect", &six])
            .first()
            .filter(|a| a.contains("ConnectionRefused"))
            .cloned()
    });
    assert!(
        refused.is_some(),
        "{six} still served with no ready IPv6 endpoint\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    assert_eq!(
        s.must_fetch(&s.laptop, &url(NODE_IP, 30040, "")),
        "Hello World!\n",
        "IPv4 follows its own slice"
    );
    api.put(api_slice("IPv6", true));
    assert_eq!(
        s.must_fetch(&s.laptop, &url(NODE_IP6, 30040, "")),
        "Hello World!\n"
    );
}
