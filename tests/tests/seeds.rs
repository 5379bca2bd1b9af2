//! The seeds' scenario end to end, in veth namespaces: a laptop reaches a pod through
//! a node's NodePort, with lb's agent running inside the node.

use std::time::Duration;

use lb_common::{PROTO_TCP, reason};
use lb_tests::{
    Netns, Topology,
    lbctl::{Lb, curl, http, podserver_bin},
    require_root,
    seeds::{self, NODE_IP, POD_IP},
};
use lb_user::{maps::Maps, plan::frontend};

const SEEDS_SERVICE: &str = include_str!("../../examples/node-port-service.yaml");
const SEEDS_POD: &str = include_str!("../../examples/myapp-pod.yaml");

struct Scenario {
    t: Topology,
    laptop: Netns,
    node: Netns,
    pod: Netns,
    lb: Lb,
}

/// Laptop, node and one pod serving `Hello World!` on port 80; `manifests` applied;
/// the agent running in the node.
fn scenario(tag: &str, manifests: &str) -> Scenario {
    scenario_with(tag, manifests, &[], |_, _| {})
}

/// [`scenario`] with more `lb agent` arguments and the pod set up by `pod_setup`.
fn scenario_with(
    tag: &str,
    manifests: &str,
    agent_args: &[&str],
    pod_setup: impl FnOnce(&Topology, &Netns),
) -> Scenario {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc1", POD_IP).unwrap();
    pod_setup(&t, &pod);
    let server = podserver_bin().display().to_string();
    t.spawn(&pod, "pod", &[&server, "--tcp", "80"], &[])
        .unwrap();
    let lb = Lb::new(&mut t).unwrap();
    lb.apply(manifests).unwrap();
    lb.start_agent_with(&mut t, &s.node, "node1", &["eth0"], agent_args)
        .unwrap();
    Scenario {
        t,
        laptop: s.laptop,
        node: s.node,
        pod,
        lb,
    }
}

fn fetch(s: &Scenario, url: &str) -> String {
    Topology::wait_for(Duration::from_secs(10), || curl(&s.t, &s.laptop, url)).unwrap_or_else(
        || {
            // The node's neighbours and the pod's link counters: whether the
            // node could resolve the pod, and what reached the pod.
            let neigh = s.t.sh(&s.node, &["ip", "neigh", "show"]).unwrap_or_default();
            let links = s.t.sh(&s.pod, &["ip", "-s", "link"]).unwrap_or_default();
            panic!(
                "{url} never answered from the laptop\n{}\nnode's neighbours:\n{neigh}\npod's links:\n{links}",
                s.lb.diagnostics(&s.t, "node1")
            )
        },
    )
}

#[test]
fn laptop_curls_the_nodeport_and_gets_hello_world() {
    let s = scenario("seeds", &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"));
    let body = fetch(&s, &format!("http://{NODE_IP}:30008"));
    assert_eq!(body, "Hello World!\n");

    // The program's per-service and per-backend counters moved.
    let maps = Maps::open_pinned(&s.lb.pins("node1")).expect("the agent's pinned maps");
    let entries = maps.read_entries().unwrap();
    let fe = frontend(
        NODE_IP.parse::<std::net::IpAddr>().unwrap(),
        30008,
        PROTO_TCP,
    );
    let svc = entries
        .services
        .get(&fe)
        .expect("a frontend for 192.168.1.2:30008/TCP");
    let c = maps.service_counters(svc.svc_id).unwrap();
    assert!(
        c.packets >= 3 && c.bytes > 0,
        "service counters after one HTTP exchange: {c:?}"
    );
    let slot = entries
        .backends
        .get(&lb_common::BackendKey {
            svc_id: svc.svc_id,
            slot: 0,
        })
        .expect("one backend slot");
    assert_eq!(slot.addr().to_string(), POD_IP);
    assert_eq!(slot.port(), 80);
    let b = maps.backend_counters(slot.backend_id()).unwrap();
    assert!(b.packets >= 3, "backend counters: {b:?}");

    // The node's kernel did no NAT: no iptables or nftables rules exist. (nft first:
    // listing through iptables-nft creates empty built-in chains.)
    let nft = s.t.sh(&s.node, &["nft", "list", "ruleset"]).unwrap();
    assert!(
        nft.trim().is_empty(),
        "nftables ruleset in the node:\n{nft}"
    );
    let ipt = s.t.sh(&s.node, &["iptables", "-t", "nat", "-S"]).unwrap();
    let rules: Vec<&str> = ipt.lines().filter(|l| !l.starts_with("-P ")).collect();
    assert!(
        rules.is_empty(),
        "iptables nat rules in the node: {rules:?}"
    );

    // Traffic that is not for a service is untouched: the node still reaches the pod
    // directly, and the pod's address is not reachable from the laptop (no route).
    assert_eq!(
        curl(&s.t, &s.node, &format!("http://{POD_IP}")).as_deref(),
        Some("Hello World!\n")
    );
    assert_eq!(curl(&s.t, &s.laptop, &format!("http://{POD_IP}")), None);
}

/// Fetches the NodePort `fetches` times, then reads the verdict counters.
fn verdicts_after(s: &Scenario, fetches: usize) -> Vec<lb_common::Counters> {
    let url = format!("http://{NODE_IP}:30008");
    for _ in 0..fetches {
        assert_eq!(fetch(s, &url), "Hello World!\n");
    }
    let maps = Maps::open_pinned(&s.lb.pins("node1")).expect("the agent's pinned maps");
    maps.verdicts().unwrap()
}

#[test]
fn by_default_tc_hands_nodeport_packets_to_the_pods_end_of_its_veth() {
    // A pod as a CNI makes it: no XDP program and GRO off at its end of the veth,
    // which therefore would drop frames XDP redirected into it. TC ingress on the
    // uplink hands the packet over with bpf_redirect_peer: translated by XDP and
    // marked (`--xdp native`), or translated by TC itself (a veth uplink, `auto`).
    let s = scenario_with(
        "seedsp",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &[],
        |t, pod| {
            t.sh(pod, &["ethtool", "-K", "eth0", "gro", "off"]).unwrap();
        },
    );
    // The first packets find no neighbour entry for the pod yet and go through the
    // stack (which resolves it); later ones are handed over.
    let v = verdicts_after(&s, 5);
    let peer = v[reason::FWD_TC_PEER as usize];
    assert!(
        peer.packets >= 10,
        "packets to the local pod were handed over by TC: {peer:?}\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
    let redirected = v[reason::FWD_XDP_REDIRECT as usize];
    assert_eq!(redirected.packets, 0, "nothing redirected at XDP");
    let log = s.t.log("agent-node1");
    assert!(
        log.contains("veth_peer=true"),
        "the agent saw lxc1 as a veth with its peer in the pod:\n{log}"
    );
}

#[test]
fn by_default_a_pod_that_runs_xdp_is_reached_by_xdp_redirect_and_one_that_stops_by_tc() {
    // XDP on the uplink (`--xdp native`, the laptop filling in its checksums: the
    // fast path's tuned links), GRO off at the pod's end of its veth as a CNI makes
    // it, and an XDP program on that end (the bench's sink: it counts UDP and
    // passes everything else), which gives it NAPI: it takes redirected frames. The
    // agent chooses per pod: this one gets frames by XDP_REDIRECT. Once the program
    // is removed, the agent sees it (every second) and TC hands packets over again.
    let (mut pod_xdp, mut pod_ns) = (None, None);
    let s = scenario_with(
        "seedsa",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &["--xdp", "native"],
        |t, pod| {
            t.sh(pod, &["ethtool", "-K", "eth0", "gro", "off"]).unwrap();
            pod_xdp = Some(pod_sink(pod, aya::programs::XdpMode::Driver));
            pod_ns = Some(pod.clone());
        },
    );
    s.t.sh(&s.laptop, &["ethtool", "-K", "eth0", "tx", "off"])
        .unwrap();
    let v = verdicts_after(&s, 5);
    let count = |v: &[lb_common::Counters], r: u32| v[r as usize].packets;
    assert!(
        count(&v, reason::FWD_XDP_REDIRECT) >= 10,
        "packets to the pod that runs XDP were redirected at XDP: {:?}\n{}",
        v[reason::FWD_XDP_REDIRECT as usize],
        s.lb.diagnostics(&s.t, "node1")
    );
    assert_eq!(count(&v, reason::FWD_TC_PEER), 0, "none handed over by TC");
    let log = s.t.log("agent-node1");
    assert!(
        log.lines()
            .any(|l| l.contains("attached to pod interface") && l.contains("xdp_frames=true")),
        "the agent saw the pod's XDP program:\n{log}"
    );
    // The pod's program goes: within a tick the agent leaves the pod to TC.
    drop(pod_xdp);
    let changed = Topology::wait_for(Duration::from_secs(5), || {
        s.t.log("agent-node1")
            .contains("how XDP reaches the pod changed")
            .then_some(())
    });
    assert!(
        changed.is_some(),
        "the agent noticed the pod's XDP program was removed:\n{}",
        s.t.log("agent-node1")
    );
    let after = verdicts_after(&s, 5);
    assert!(
        count(&after, reason::FWD_TC_PEER) >= 10,
        "packets to the pod without XDP were handed over by TC: {:?}",
        after[reason::FWD_TC_PEER as usize]
    );
    // (At most the last close of the first round, still in flight when it was read.)
    assert!(
        count(&after, reason::FWD_XDP_REDIRECT) <= count(&v, reason::FWD_XDP_REDIRECT) + 4,
        "none redirected at XDP to a pod that no longer takes XDP frames: {:?} then {:?}",
        v[reason::FWD_XDP_REDIRECT as usize],
        after[reason::FWD_XDP_REDIRECT as usize]
    );
    // A generic (skb-mode) program gives the veth no NAPI: XDP frames would be
    // dropped, so the pod stays with TC through the agent's next checks.
    let generic = pod_sink(pod_ns.as_ref().unwrap(), aya::programs::XdpMode::Skb);
    std::thread::sleep(Duration::from_millis(2_500));
    let last = verdicts_after(&s, 5);
    assert!(
        count(&last, reason::FWD_TC_PEER) >= count(&after, reason::FWD_TC_PEER) + 10,
        "a pod with a generic XDP program is handed packets by TC: {:?}",
        last[reason::FWD_TC_PEER as usize]
    );
    assert!(
        count(&last, reason::FWD_XDP_REDIRECT) <= count(&after, reason::FWD_XDP_REDIRECT) + 4,
        "none redirected at XDP to a pod with a generic XDP program: {:?}",
        last[reason::FWD_XDP_REDIRECT as usize]
    );
    drop(generic);
}

/// The bench object's XDP sink (counts UDP, passes everything else) on the pod's
/// eth0 in `mode`, attached for as long as the returned object lives.
fn pod_sink(pod: &Netns, mode: aya::programs::XdpMode) -> aya::Ebpf {
    let mut bench = aya::Ebpf::load(lb_user::loader::BENCH_ELF).unwrap();
    let sink: &mut aya::programs::Xdp = bench
        .program_mut(lb_common::PROG_BENCH_SINK)
        .unwrap()
        .try_into()
        .unwrap();
    sink.load().unwrap();
    let _in = lb_tests::topology::InNetns::enter(pod).unwrap();
    sink.attach("eth0", mode).unwrap();
    bench
}

#[test]
fn with_to_pods_xdp_the_nodeport_reaches_the_pod_by_xdp_redirect() {
    // The fast path needs tuned links, and says so: XDP on the (virtual) uplink
    // (`--xdp native`), the laptop filling in its checksums (tx off: XDP cannot see
    // a partial one), and GRO on at the pod's end of its veth, which gives it NAPI:
    // it then takes frames XDP redirects into it (what `--to-pods xdp` requires of
    // every pod).
    let s = scenario_with(
        "seedsx",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &["--to-pods", "xdp", "--xdp", "native"],
        |t, pod| {
            t.sh(pod, &["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
        },
    );
    s.t.sh(&s.laptop, &["ethtool", "-K", "eth0", "tx", "off"])
        .unwrap();
    let redirected = verdicts_after(&s, 5)[reason::FWD_XDP_REDIRECT as usize];
    assert!(
        redirected.packets >= 10,
        "packets to the local pod were redirected at XDP: {redirected:?}\n{}",
        s.lb.diagnostics(&s.t, "node1")
    );
}

#[test]
fn with_to_pods_xdp_on_links_as_they_come_tc_serves_and_nothing_is_lost() {
    // The same service and flags on untuned links (unless the run tunes them all):
    // the agent leaves the veth uplink to TC (`--xdp auto`), and every request is
    // answered.
    let s = scenario_with(
        "seedsxd",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &["--to-pods", "xdp"],
        |_, _| {},
    );
    let v = verdicts_after(&s, 5);
    if lb_tests::lbctl::xdp_from_env().is_none() {
        assert_eq!(v[reason::FWD_XDP_REDIRECT as usize].packets, 0);
        let log = s.t.log("agent-node1");
        assert!(
            log.contains("XDP not used on a virtual interface"),
            "the agent says why XDP stays off:\n{log}"
        );
    }
}

#[test]
fn with_no_xdp_redirect_xdp_translates_and_the_stack_forwards() {
    // XDP on the uplink (tuned as above) but `--no-xdp-redirect`: XDP still
    // translates, and every translated packet goes on through the kernel's stack:
    // nothing redirected at XDP, nothing handed over by TC (both need XDP's FIB
    // lookup), and the laptop is answered.
    let s = scenario_with(
        "seedsnr",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &["--xdp", "native", "--no-xdp-redirect"],
        |t, pod| {
            t.sh(pod, &["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
        },
    );
    s.t.sh(&s.laptop, &["ethtool", "-K", "eth0", "tx", "off"])
        .unwrap();
    let v = verdicts_after(&s, 5);
    let count = |r: u32| v[r as usize].packets;
    assert_eq!(
        count(reason::FWD_XDP_REDIRECT),
        0,
        "nothing redirected at XDP"
    );
    assert_eq!(count(reason::FWD_TC_PEER), 0, "nothing handed over by TC");
    assert!(
        count(reason::NAT_NEW_FLOW) >= 5 && count(reason::NAT_ESTABLISHED) >= 10,
        "XDP translated every connection: {v:?}"
    );
    let log = s.t.log("agent-node1");
    assert!(
        log.lines()
            .any(|l| l.contains("attached to external interface") && l.contains("Native")),
        "XDP runs on the uplink:\n{log}"
    );
}

#[test]
fn with_to_pods_stack_the_kernel_delivers_to_the_pod() {
    let s = scenario_with(
        "seedss",
        &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"),
        &["--to-pods", "stack"],
        |_, _| {},
    );
    let v = verdicts_after(&s, 5);
    assert_eq!(
        v[reason::FWD_TC_PEER as usize].packets,
        0,
        "nothing handed over by TC"
    );
    assert_eq!(v[reason::FWD_XDP_REDIRECT as usize].packets, 0);
    assert!(v[reason::NAT_ESTABLISHED as usize].packets >= 10);
}

#[test]
fn unset_node_port_is_allocated_in_range_and_shown_by_get_svc() {
    let svc = SEEDS_SERVICE
        .replace("      nodePort: 30008\n", "")
        .replace("node-port-service", "auto-port");
    assert!(!svc.contains("nodePort:"));
    let s = scenario("autoport", &format!("{svc}---\n{SEEDS_POD}"));
    let table = s.lb.ok(&["get", "svc"]).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .expect("one service row")
        .split_whitespace()
        .collect();
    assert_eq!(row[0..2], ["auto-port", "NodePort"]);
    assert!(
        row[2].starts_with("10."),
        "cluster IP from 10.96.0.0/12: {}",
        row[2]
    );
    assert_eq!(row[3], "<none>");
    let port: u16 = row[4]
        .strip_prefix("80:")
        .and_then(|r| r.strip_suffix("/TCP"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("PORT(S) should read 80:3xxxx/TCP, got {}", row[4]));
    assert!((30000..=32767).contains(&port), "allocated nodePort {port}");
    // The allocated port serves, and re-applying keeps it.
    assert_eq!(
        fetch(&s, &format!("http://{NODE_IP}:{port}")),
        "Hello World!\n"
    );
    assert_eq!(
        s.lb.apply(&svc).unwrap().trim(),
        "service/auto-port unchanged"
    );
    assert!(
        s.lb.ok(&["get", "svc"])
            .unwrap()
            .contains(&format!("80:{port}/TCP"))
    );
}

#[test]
fn a_pod_added_after_the_agent_started_reaches_a_cluster_ip() {
    require_root();
    let mut t = Topology::new("newpod").unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let backend = seeds::pod(&mut t, &s.node, "web", "lxc1", POD_IP).unwrap();
    let server = podserver_bin().display().to_string();
    t.spawn(
        &backend,
        "web",
        &[&server, "--tcp", "8080", "--text", "from web"],
        &[],
    )
    .unwrap();
    let lb = Lb::new(&mut t).unwrap();
    lb.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.80\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  containers:\n  - name: c\n    image: app\nstatus:\n  podIP: 10.244.0.2\n",
    )
    .unwrap();
    lb.start_agent(&mut t, &s.node, "node1", &["eth0"]).unwrap();

    // A client pod appears after the agent: its veth gets lb's TC programs by itself.
    let client = seeds::pod(&mut t, &s.node, "client", "lxc2", "10.244.0.3").unwrap();
    lb.apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  containers:\n  - name: c\n    image: app\nstatus:\n  podIP: 10.244.0.3\n")
        .unwrap();
    let body = Topology::wait_for(Duration::from_secs(10), || {
        curl(&t, &client, "http://10.96.0.80")
    });
    assert_eq!(
        body.as_deref(),
        Some("from web\n"),
        "{}",
        lb.diagnostics(&t, "node1")
    );
    assert!(
        t.log("agent-node1")
            .contains("attached to pod interface iface=\"lxc2\""),
        "{}",
        t.log("agent-node1")
    );
    // A ClusterIP is not served to the outside: the laptop has no answer from it even
    // when it routes the address to the node.
    t.ip(&s.laptop, &["route", "add", "10.96.0.0/12", "via", NODE_IP])
        .unwrap();
    assert_eq!(curl(&t, &s.laptop, "http://10.96.0.80"), None);
}

/// The value of the sample `name` whose labels include `labels`, from a scrape read
/// by prometheus-parse (a text-format parser that is not lb's).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn metrics_and_health_are_served_as_kube_proxy_serves_them() {
    let s = scenario("metrics", &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"));
    let url = format!("http://{NODE_IP}:30008");
    for _ in 0..3 {
        assert_eq!(fetch(&s, &url), "Hello World!\n");
    }
    // kube-proxy's ports: metrics on 127.0.0.1:10249, health on :10256.
    let scrape_now = || {
        let text =
            s.t.sh(
                &s.node,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    "http://127.0.0.1:10249/metrics",
                ],
            )
            .unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{text}"));
        (text, scrape)
    };
    // A change after the agent started is timed from its commit to the maps (the
    // first load, committed before, is not): so far only the cluster DNS service the
    // agent itself wrote after its start.
    let (text, scrape) = scrape_now();
    assert_eq!(
        sample(
            &scrape,
            "lb_network_programming_duration_seconds_count",
            &[]
        ),
        Some(1.0),
        "{text}"
    );
    s.lb.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: extra\nspec:\n  selector: {app: myapp}\n  ports: [{port: 8080, targetPort: 80}]\n",
    )
    .unwrap();
    let (text, scrape) = Topology::wait_for(Duration::from_secs(10), || {
        let (text, scrape) = scrape_now();
        (sample(
            &scrape,
            "lb_network_programming_duration_seconds_count",
            &[],
        ) >= Some(2.0))
        .then_some((text, scrape))
    })
    .expect("the change applied after the start was never timed");
    let svc = [
        ("namespace", "default"),
        ("service", "node-port-service"),
        ("port", "80"),
    ];
    let packets = sample(&scrape, "lb_service_packets_total", &svc)
        .unwrap_or_else(|| panic!("no packets series for the seeds' service:\n{text}"));
    assert!(
        packets >= 9.0,
        "3 HTTP exchanges counted as {packets} packets"
    );
    assert!(sample(&scrape, "lb_service_bytes_total", &svc).unwrap_or(0.0) > 0.0);
    let pod_ep = format!("{POD_IP}:80");
    let ep = [("endpoint", pod_ep.as_str()), ("protocol", "TCP")];
    assert!(
        sample(&scrape, "lb_endpoint_packets_total", &ep).unwrap_or(0.0) >= 9.0,
        "the pod's endpoint series:\n{text}"
    );
    // Each verdict reason is a series; the 3 connections were new flows.
    let new_flows = sample(
        &scrape,
        "lb_verdict_packets_total",
        &[("reason", "nat_new_flow")],
    )
    .or_else(|| {
        sample(
            &scrape,
            "lb_verdict_packets_total",
            &[("reason", "fwd_tc_peer")],
        )
    })
    .unwrap_or(0.0);
    assert!(new_flows >= 3.0, "verdicts:\n{text}");
    for (name, labels) in [
        ("lb_map_entries", &[("map", "frontends")][..]),
        ("lb_map_max_entries", &[("map", "conntrack")][..]),
        ("lb_flow_entries", &[("map", "conntrack_assured")][..]),
        ("lb_sync_proxy_rules_duration_seconds_count", &[][..]),
        ("lb_network_programming_duration_seconds_count", &[][..]),
        ("lb_syncs_total", &[][..]),
    ] {
        let v = sample(&scrape, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"));
        assert!(v >= 1.0, "{name} {labels:?} = {v}");
    }
    assert_eq!(sample(&scrape, "lb_store_revision_lag", &[]), Some(0.0));
    // No service has ClientIP affinity: nothing remembered.
    assert_eq!(
        sample(&scrape, "lb_flow_entries", &[("map", "affinity")]),
        Some(0.0)
    );
    assert_eq!(sample(&scrape, "lb_refused_services", &[]), Some(0.0));
    // Prometheus' own checker takes the exposition as it is (its lint included).
    let promtool =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool");
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} ({e}): `cargo xtask setup` fetches it",
                promtool.display()
            )
        });
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The Grafana dashboard asks only for series lb serves, in valid PromQL (its
    // queries, with Grafana's variables given values, checked as recording rules).
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana-lb.json")).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lb_"))
        {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "the dashboard asks for {name}, which /metrics does not serve"
            );
        }
    }
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: lb:dashboard_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let rules_file = s.t.dir().join("dashboard-rules.yaml");
    std::fs::write(
        &rules_file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules (the dashboard's queries): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // OpenMetrics to a client that asks for it (as Prometheus does).
    let om =
        s.t.sh(
            &s.node,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                "Accept: application/openmetrics-text;version=1.0.0",
                "http://127.0.0.1:10249/metrics",
            ],
        )
        .unwrap();
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE lb_syncs counter\nlb_syncs_total "),
        "{om}"
    );

    // Health: 200 with kube-proxy's body while the loop runs, on both paths and
    // both listeners.
    for url in [
        "http://127.0.0.1:10256/healthz",
        "http://127.0.0.1:10256/livez",
        "http://127.0.0.1:10249/healthz",
    ] {
        let (code, body) = http(&s.t, &s.node, url, 10).expect(url);
        assert_eq!(code, 200, "{url}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["lastUpdated"].is_string() && v["currentTime"].is_string(),
            "{url}: {body}"
        );
    }
}

/// `lb trace SRC DST` with more arguments, run in the node (its routes say how
/// packets come and go).
fn lb_trace(s: &Scenario, src: &str, dst: &str, more: &[&str]) -> String {
    let lb = lb_tests::lbctl::lb_bin().display().to_string();
    let (store, bpffs) = (
        s.lb.store.display().to_string(),
        s.lb.bpffs.display().to_string(),
    );
    let mut argv = vec![
        lb.as_str(),
        "--store",
        &store,
        "trace",
        src,
        dst,
        "--node",
        "node1",
        "--bpffs",
        &bpffs,
    ];
    argv.extend(more);
    s.t.sh(&s.node, &argv).unwrap()
}

/// `lb trace ... tcp -o json`.
fn trace(s: &Scenario, src: &str, dst: &str) -> serde_json::Value {
    let out = lb_trace(s, src, dst, &["tcp", "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lb trace -o json ({e}): {out}"))
}

fn verdict_packets(s: &Scenario, reason: u32) -> u64 {
    let maps = Maps::open_pinned(&s.lb.pins("node1")).expect("the agent's pinned maps");
    maps.verdicts().unwrap()[reason as usize].packets
}

#[test]
fn lb_trace_tells_the_verdict_and_backend_the_packet_then_gets() {
    let s = scenario("trace", &format!("{SEEDS_SERVICE}---\n{SEEDS_POD}"));
    assert_eq!(
        fetch(&s, &format!("http://{NODE_IP}:30008")),
        "Hello World!\n"
    );
    let laptop = seeds::LAPTOP_IP;
    let (src, nodeport) = (format!("{laptop}:40123"), format!("{NODE_IP}:30008"));

    // A new flow: the one backend, certainly; translated to it; delivered by TC.
    let t = trace(&s, &src, &nodeport);
    assert_eq!(t["verdict"], "nat_new_flow", "{t:#}");
    assert_eq!(t["ingress_role"], "external", "{t:#}");
    assert_eq!(t["service"], "default/node-port-service:80", "{t:#}");
    assert_eq!(
        t["candidates"][0]["backend"],
        format!("{POD_IP}:80"),
        "{t:#}"
    );
    assert_eq!(t["candidates"][0]["probability"], 1.0, "{t:#}");
    assert_eq!(t["translated"], format!("{src} -> {POD_IP}:80"), "{t:#}");
    // The trace changed nothing: no flow for it yet.
    let key = lb_common::FlowKey {
        saddr_be: u32::from(laptop.parse::<std::net::Ipv4Addr>().unwrap()).to_be(),
        daddr_be: u32::from(NODE_IP.parse::<std::net::Ipv4Addr>().unwrap()).to_be(),
        sport_be: 40123u16.to_be(),
        dport_be: 30008u16.to_be(),
        proto: PROTO_TCP,
        _pad: 0,
        _pad2: 0,
    };
    let maps = Maps::open_pinned(&s.lb.pins("node1")).unwrap();
    assert_eq!(maps.conntrack_entry(&key).unwrap(), None);

    // Sent from that source port: one new flow, to the backend the trace named.
    let before = verdict_packets(&s, reason::NAT_NEW_FLOW);
    let body =
        s.t.sh(
            &s.laptop,
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "--local-port",
                "40123",
                &format!("http://{nodeport}"),
            ],
        )
        .unwrap();
    assert_eq!(body, "Hello World!\n");
    assert_eq!(verdict_packets(&s, reason::NAT_NEW_FLOW), before + 1);
    let ct = maps
        .conntrack_entry(&key)
        .unwrap()
        .expect("the flow the curl made");
    assert_eq!(
        format!(
            "{}:{}",
            std::net::Ipv4Addr::from(u32::from_be(ct.nat_daddr_be)),
            u16::from_be(ct.nat_dport_be)
        ),
        format!("{POD_IP}:80")
    );
    // Traced again, the packet belongs to that flow.
    let t = trace(&s, &src, &nodeport);
    assert_eq!(t["verdict"], "nat_established", "{t:#}");
    assert_eq!(t["flow"], "original", "{t:#}");
    assert_eq!(t["translated"], format!("{src} -> {POD_IP}:80"), "{t:#}");

    // A port no frontend has: passed untouched, and counted so when sent.
    let t = trace(&s, &format!("{laptop}:40124"), &format!("{NODE_IP}:22"));
    assert_eq!(t["verdict"], "pass_no_service", "{t:#}");
    assert!(t["frontend"].is_null(), "{t:#}");
    let before = verdict_packets(&s, reason::PASS_NO_SERVICE);
    let _ = s.t.run(
        &s.laptop,
        &[
            "curl",
            "-sS",
            "-m",
            "2",
            "--local-port",
            "40124",
            &format!("http://{NODE_IP}:22"),
        ],
    );
    assert!(verdict_packets(&s, reason::PASS_NO_SERVICE) > before);
    // The table for people says the same.
    let text = lb_trace(&s, &src, &nodeport, &[]);
    assert!(
        text.contains("Verdict:      nat_established") && text.contains(&format!("-> {POD_IP}:80")),
        "{text}"
    );
}
