//! Kubernetes mode's LoadBalancer across nodes: addresses of `--lb-pool` written to
//! the services' status by one agent, each address announced by the holder of its
//! Lease, failover when a holder stops or dies, and never two nodes answering ARP
//! for an address when the API server goes away or one node loses it. The API
//! server (`fakeapi`, with Leases and the status subresource) sits on the LAN the
//! nodes share, as a real one is another machine; who answers ARP is asked from the
//! laptop, as its neighbours would.

mod fakeapi;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use fakeapi::FakeApi;
use lb_tests::{
    Netns, Topology,
    lbctl::{Lb, podserver_bin},
    require_root,
    topology::{
        mac_text,
        multinode::{self, Lan, node_ip, pod_ip},
    },
};
use serde_json::{Value, json};

/// The API server's address on the LAN's bridge (outside the pool).
const API_IP: &str = "192.168.1.250";
const POOL: &str = "192.168.1.240/29";
/// The pool's first usable address.
const LB_IP: &str = "192.168.1.241";

/// The API server the agents follow.
enum Api {
    Fake(FakeApi),
    /// `lb api-server` serving a store, reached with this kubeconfig.
    Lb(std::path::PathBuf),
}

struct Cluster {
    t: Topology,
    lan: Lan,
    lb: Lb,
    api: Api,
    /// Each node's uplink MAC.
    macs: Vec<String>,
}

/// A LoadBalancer service as the API server holds it (ClusterIP and nodePort
/// allocated), port 80 to the pods' 8080; `spec` fields merged over it.
fn service(name: &str, n: u8, spec: Value) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": format!("10.96.0.{}", 80 + n),
            "clusterIPs": [format!("10.96.0.{}", 80 + n)],
            "selector": {"app": "web"},
            "externalTrafficPolicy": "Cluster",
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP",
                "nodePort": 30080 + u32::from(n)}],
        },
    });
    for (k, v) in spec.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    s
}

/// `svc`'s EndpointSlice: the first pod of each node in `nodes`, ready.
fn slice(svc: &str, nodes: &[usize]) -> Value {
    let endpoints: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({"addresses": [pod_ip(*n, 0)], "nodeName": format!("node{}", n + 1),
                "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

/// `nodes` nodes with one pod each (answering `nNp0` on TCP 8080), the API server
/// on the LAN holding their Node objects and `objects`, an agent on every node
/// following it with `--lb-pool POOL` and `args`.
fn cluster(tag: &str, nodes: usize, objects: &[Value], args: &[&str]) -> Cluster {
    cluster_on(tag, nodes, objects, args, false)
}

/// [`cluster`], the API server the fake or (`lb_api`) `lb api-server` on a store,
/// the objects applied to it with kubectl as a person would.
fn cluster_on(tag: &str, nodes: usize, objects: &[Value], args: &[&str], lb_api: bool) -> Cluster {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let lan = multinode::lan(&mut t, nodes, 1).unwrap();
    t.ip(
        &lan.lan,
        &["addr", "add", &format!("{API_IP}/24"), "dev", "br0"],
    )
    .unwrap();
    let lb = Lb::new(&mut t).unwrap();
    let api = if lb_api {
        let config =
            lb_tests::kubectl::serve_on(&mut t, &lan.lan, &lb, &format!("{API_IP}:6443")).unwrap();
        Api::Lb(config)
    } else {
        Api::Fake(FakeApi::start_on(&lan.lan, API_IP))
    };
    let mut all = Vec::new();
    let server = podserver_bin().display().to_string();
    let mut macs = Vec::new();
    for (n, node) in lan.nodes.iter().enumerate() {
        let text = format!("n{}p0", n + 1);
        t.spawn(
            &lan.pods[n][0],
            &text.clone(),
            &[&server, "--text", &text, "--tcp", "8080"],
            &[],
        )
        .unwrap();
        all.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node{}", n + 1)},
            "spec": {"podCIDR": format!("10.244.{n}.0/24"), "podCIDRs": [format!("10.244.{n}.0/24")]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(n)}]},
        }));
        macs.push(mac_text(t.mac(node, "eth0").unwrap()));
    }
    all.extend(objects.iter().cloned());
    let kubeconfig = match &api {
        Api::Fake(fake) => {
            for o in all {
                fake.put(o);
            }
            let path = t.dir().join("kubeconfig");
            std::fs::write(&path, fake.kubeconfig()).unwrap();
            path
        }
        Api::Lb(config) => {
            let list = t.dir().join("objects.json");
            std::fs::write(
                &list,
                json!({"apiVersion": "v1", "kind": "List", "items": all}).to_string(),
            )
            .unwrap();
            let out = lb_tests::kubectl::kubectl_in_ns(
                &t,
                &lan.lan,
                config,
                &["apply", "-f", &list.display().to_string()],
            );
            assert!(
                out.status.success(),
                "kubectl apply: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            config.clone()
        }
    };
    let kubeconfig = kubeconfig.display().to_string();
    let mut argv = vec!["--kubeconfig", &kubeconfig, "--lb-pool", POOL];
    argv.extend_from_slice(args);
    for (n, node) in lan.nodes.clone().iter().enumerate() {
        lb.start_agent_with(&mut t, node, &format!("node{}", n + 1), &["eth0"], &argv)
            .unwrap();
    }
    Cluster {
        t,
        lan,
        lb,
        api,
        macs,
    }
}

impl Cluster {
    /// The object of `kind` under `key` (`namespace/name`) as the API server has it.
    fn object(&self, kind: &str, key: &str) -> Option<Value> {
        match &self.api {
            Api::Fake(fake) => fake.object(kind, key),
            Api::Lb(config) => {
                let (ns, name) = key.split_once('/')?;
                let resource = match kind {
                    "Lease" => "leases.coordination.k8s.io",
                    "Service" => "services",
                    other => panic!("no resource for {other}"),
                };
                let out = lb_tests::kubectl::kubectl_in_ns(
                    &self.t,
                    &self.lan.lan,
                    config,
                    &["get", resource, "-n", ns, name, "-o", "json"],
                );
                out.status
                    .success()
                    .then(|| serde_json::from_slice(&out.stdout).ok())?
            }
        }
    }

    /// The fake API server (the tests that cut it off or write behind its back).
    fn fake(&self) -> &FakeApi {
        match &self.api {
            Api::Fake(fake) => fake,
            Api::Lb(_) => panic!("this test runs against the fake API server"),
        }
    }
}

fn diagnostics(c: &Cluster) -> String {
    (1..=c.lan.nodes.len())
        .map(|n| c.lb.diagnostics(&c.t, &format!("node{n}")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the series `name` (exactly, labels included) in node `n`'s metrics.
fn metric(c: &Cluster, n: usize, name: &str) -> Option<f64> {
    let text = lb_tests::lbctl::curl(&c.t, &c.lan.nodes[n], "http://127.0.0.1:10249/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn lbclient(c: &Cluster, ns: &Netns, args: &[&str]) -> Vec<String> {
    lb_tests::cluster::lbclient_in(&c.t, ns, args)
}

/// The nodes (indexes) that answer a broadcast ARP request for `ip` from the
/// laptop within 80 ms (each once: a node taking the address meanwhile also sends
/// a gratuitous reply).
fn answering(c: &Cluster, ip: &str) -> Vec<usize> {
    let out = lbclient(c, &c.lan.laptop, &["arp", &format!("{ip}:0"), "80"]);
    assert!(
        out.last().is_some_and(|l| l.starts_with("END")),
        "arp: {out:?}"
    );
    out.iter()
        .filter_map(|l| l.strip_prefix("MAC "))
        .map(|m| {
            c.macs
                .iter()
                .position(|x| x == m)
                .unwrap_or_else(|| panic!("{m} is no node's MAC: {out:?}"))
        })
        .collect::<BTreeSet<usize>>()
        .into_iter()
        .collect()
}

/// The holder of the lease for `ip`, as the API server has it.
fn holder(c: &Cluster, ip: &str) -> Option<String> {
    let name = format!("kube-system/lb-l2-{}", ip.replace('.', "-"));
    let lease = c.object("Lease", &name)?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// `status.loadBalancer.ingress[0].ip` of service `name`.
fn ingress(c: &Cluster, name: &str) -> Option<String> {
    let svc = c.object("Service", &format!("default/{name}"))?;
    svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

/// Waits until exactly one node answers ARP for `ip` and holds its lease (and it is
/// not one of `not`); every sample on the way must show at most one answering.
fn one_holder(c: &Cluster, ip: &str, not: &[usize], within: Duration) -> usize {
    let found = Topology::wait_for(within, || {
        let a = answering(c, ip);
        assert!(
            a.len() <= 1,
            "two nodes answer ARP for {ip}: {a:?}\n{}",
            diagnostics(c)
        );
        let n = *a.first()?;
        (!not.contains(&n) && holder(c, ip).as_deref() == Some(&format!("node{}", n + 1)))
            .then_some(n)
    });
    found.unwrap_or_else(|| {
        panic!(
            "no single node (other than {not:?}) answers ARP for {ip} and holds its lease (holder {:?})\n{}",
            holder(c, ip),
            diagnostics(c)
        )
    })
}

/// The pods that answered 10 requests from the laptop to `addr`, failing on any error.
fn served_by(c: &Cluster, addr: &str) -> BTreeSet<String> {
    lbclient(c, &c.lan.laptop, &["tcp", addr, "10"])
        .into_iter()
        .map(|a| {
            assert!(!a.starts_with("ERR"), "{addr}: {a}\n{}", diagnostics(c));
            a.split_whitespace().next().unwrap_or("").to_string()
        })
        .collect()
}

/// Samples who answers ARP for `ip` every 100 ms for `secs`, asserting never two.
fn never_two(c: &Cluster, ip: &str, d: Duration) -> Vec<(Duration, Vec<usize>)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < d {
        let a = answering(c, ip);
        assert!(
            a.len() <= 1,
            "two nodes answer ARP for {ip}: {a:?}\n{}",
            diagnostics(c)
        );
        seen.push((start.elapsed(), a));
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

#[test]
fn addresses_come_from_the_pool_through_the_status_subresource() {
    let objects = [
        service("front", 0, json!({})),
        slice("front", &[0, 1]),
        service("asks", 1, json!({"loadBalancerIP": "192.168.1.244"})),
        slice("asks", &[0]),
        service("theirs", 2, json!({"loadBalancerClass": "example.com/lb"})),
    ];
    let c = cluster("klbipam", 2, &objects, &[]);
    let assigned = Topology::wait_for(Duration::from_secs(10), || {
        Some((ingress(&c, "front")?, ingress(&c, "asks")?))
    })
    .unwrap_or_else(|| panic!("no addresses written\n{}", diagnostics(&c)));
    assert_eq!(assigned, (LB_IP.to_string(), "192.168.1.244".to_string()));
    let ipam = c
        .object("Lease", "kube-system/lb-ipam")
        .expect("the lb-ipam lease");
    assert!(
        ipam["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| h.starts_with("node")),
        "{ipam}"
    );
    assert_eq!(
        ingress(&c, "theirs"),
        None,
        "another class's service is not lb's"
    );
    // The holder of lb-ipam counts the two writes.
    let writer: usize = ipam["spec"]["holderIdentity"].as_str().unwrap()[4..]
        .parse::<usize>()
        .unwrap()
        - 1;
    let written = metric(
        &c,
        writer,
        "lb_loadbalancer_status_writes_total{outcome=\"written\"}",
    );
    assert!(
        written.is_some_and(|n| n >= 2.0),
        "status writes counted: {written:?}"
    );

    // Through the address, from the laptop: both nodes' pods answer.
    let addr = format!("{LB_IP}:80");
    one_holder(&c, LB_IP, &[], Duration::from_secs(10));
    let by = Topology::wait_for(Duration::from_secs(10), || {
        let by = served_by(&c, &addr);
        (by.len() == 2).then_some(by)
    });
    assert!(by.is_some(), "not served by both pods\n{}", diagnostics(&c));

    // No longer a LoadBalancer: its address is taken back (the user's write keeps
    // the status, as a write of the main resource does), and no node announces it.
    let mut asks = c.object("Service", "default/asks").unwrap();
    asks["spec"]["type"] = json!("ClusterIP");
    asks["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    c.fake().put(asks);
    let gone = Topology::wait_for(Duration::from_secs(10), || {
        (ingress(&c, "asks").is_none() && answering(&c, "192.168.1.244").is_empty()).then_some(())
    });
    assert!(gone.is_some(), "192.168.1.244 kept\n{}", diagnostics(&c));
}

#[test]
fn the_lease_holder_announces_and_another_node_takes_over_when_it_stops_or_dies() {
    failover(false);
}

/// The same, with the agents on the three nodes following `lb api-server` on the
/// LAN (store mode across machines): the store's Leases elect the holder.
#[test]
fn the_same_failover_with_agents_following_lb_api_server() {
    failover(true);
}

fn failover(lb_api: bool) {
    let objects = [service("front", 0, json!({})), slice("front", &[0, 1, 2])];
    let tag = if lb_api { "klbfaillb" } else { "klbfail" };
    let mut c = cluster_on(tag, 3, &objects, &[], lb_api);
    Topology::wait_for(Duration::from_secs(10), || ingress(&c, "front"))
        .unwrap_or_else(|| panic!("no address written\n{}", diagnostics(&c)));
    let first = one_holder(&c, LB_IP, &[], Duration::from_secs(10));
    let addr = format!("{LB_IP}:80");
    assert!(
        Topology::wait_for(Duration::from_secs(10), || (served_by(&c, &addr).len()
            == 3)
            .then_some(()))
        .is_some(),
        "pods on every node answer through the address\n{}",
        diagnostics(&c)
    );

    // SIGTERM: the holder lets the address go and releases its lease; another node
    // takes it at its next round.
    c.t.stop(&format!("agent-node{}", first + 1));
    let stopped = Instant::now();
    let second = one_holder(&c, LB_IP, &[first], Duration::from_secs(5));
    let took = stopped.elapsed();
    eprintln!(
        "LoadBalancer failover through a Lease{} (SIGTERM): node {} -> node {} in {took:?}",
        if lb_api { " (lb api-server)" } else { "" },
        first + 1,
        second + 1
    );
    assert!(
        took < Duration::from_secs(2),
        "failover after a clean stop took {took:?}"
    );

    // SIGKILL, as a crash: no release; the lease runs out (1 s) and the last node
    // takes it. The laptop is checked every 100 ms until its requests reach the new
    // node (its counters take the new connections).
    let last = (0..3).find(|n| *n != first && *n != second).unwrap();
    c.t.kill(&format!("agent-node{}", second + 1));
    let killed = Instant::now();
    let mut through = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if holder(&c, LB_IP).as_deref() == Some(&format!("node{}", last + 1)) {
            let before = verdict(&c, last, "nat_new_flow");
            let ok = lbclient(&c, &c.lan.laptop, &["tcp", &addr, "1"]);
            if ok.iter().all(|a| !a.starts_with("ERR"))
                && verdict(&c, last, "nat_new_flow") > before
            {
                through = Some(killed.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = through.unwrap_or_else(|| {
        panic!(
            "node {} never took over from the killed node {}\n{}",
            last + 1,
            second + 1,
            diagnostics(&c)
        )
    });
    eprintln!(
        "LoadBalancer failover through a Lease{} (SIGKILL): node {} -> node {}: traffic through it after {took:?}",
        if lb_api { " (lb api-server)" } else { "" },
        second + 1,
        last + 1
    );
    assert!(
        took < Duration::from_secs(3),
        "failover after a crash took {took:?} (goal 2 s)"
    );
    // The new holder says so in its metrics.
    let shown = Topology::wait_for(Duration::from_secs(5), || {
        let announced = metric(&c, last, "lb_loadbalancer_addresses_announced")?;
        let taken = metric(&c, last, "lb_lease_transitions_total{event=\"taken\"}")?;
        (announced == 1.0 && taken >= 1.0).then_some(())
    });
    assert!(
        shown.is_some(),
        "node {}'s metrics do not show the address\n{}",
        last + 1,
        diagnostics(&c)
    );
    // The killed node's kernel still has the address, but its data plane lets no ARP
    // about it out once the hold ran out: only the new holder answers.
    assert_eq!(
        one_holder(&c, LB_IP, &[second], Duration::from_secs(2)),
        last
    );
    assert!(
        verdict(&c, second, "drop_arp_not_holder") > 0,
        "the killed node's ARP replies were not the ones cut off\n{}",
        diagnostics(&c)
    );
}

fn verdict(c: &Cluster, node: usize, reason: &str) -> u64 {
    c.lb.verdict(&format!("node{}", node + 1), reason)
}

#[test]
fn never_two_holders_when_the_api_server_goes_away_or_leaves_one_node() {
    let objects = [service("front", 0, json!({})), slice("front", &[0, 1, 2])];
    let c = cluster("klbsplit", 3, &objects, &[]);
    Topology::wait_for(Duration::from_secs(10), || ingress(&c, "front"))
        .unwrap_or_else(|| panic!("no address written\n{}", diagnostics(&c)));
    let first = one_holder(&c, LB_IP, &[], Duration::from_secs(10));

    // The API server down for everyone: the holder keeps announcing until its lease
    // would run out, then steps down; nobody can take it meanwhile.
    c.fake().set_down(true);
    let down = Instant::now();
    let seen = never_two(&c, LB_IP, Duration::from_secs(3));
    let last_answer = seen
        .iter()
        .rev()
        .find(|(_, a)| !a.is_empty())
        .map(|(t, _)| *t);
    eprintln!(
        "API outage: node {} answered until {last_answer:?}",
        first + 1
    );
    assert!(
        seen.iter().all(|(_, a)| a.is_empty() || a == &[first]),
        "{seen:?}"
    );
    assert!(
        seen.iter().rev().take(5).all(|(_, a)| a.is_empty()),
        "still announced 3 s into the outage (the lease lasts 1 s): {seen:?}"
    );
    assert!(down.elapsed() >= Duration::from_secs(3));
    c.fake().set_down(false);
    let back = one_holder(&c, LB_IP, &[], Duration::from_secs(10));

    // One node cut from the API server (its packets to it dropped): it steps down
    // when its lease would run out; another takes over once it has; the two never
    // answer at once, and when the cut heals the new holder keeps the address.
    c.t.ip(
        &c.lan.nodes[back],
        &["route", "add", "blackhole", &format!("{API_IP}/32")],
    )
    .unwrap();
    let cut = Instant::now();
    let other = one_holder(&c, LB_IP, &[back], Duration::from_secs(10));
    eprintln!(
        "node {} cut from the API: node {} answers after {:?}",
        back + 1,
        other + 1,
        cut.elapsed()
    );
    c.t.ip(
        &c.lan.nodes[back],
        &["route", "del", "blackhole", &format!("{API_IP}/32")],
    )
    .unwrap();
    let seen = never_two(&c, LB_IP, Duration::from_secs(3));
    assert!(
        seen.iter().all(|(_, a)| a == &[other]),
        "after the cut healed: {seen:?}"
    );
    assert_eq!(holder(&c, LB_IP), Some(format!("node{}", other + 1)));

    // The holder's agent frozen (SIGSTOP: alive, its address on the uplink, no
    // renewals): its data plane stops its ARP when the hold runs out, another node
    // takes over; thawed, it finds its lease gone and lets the address go.
    let pid = c.t.pid(&format!("agent-node{}", other + 1)).unwrap() as i32;
    // SAFETY: signals to a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    let next = one_holder(&c, LB_IP, &[other], Duration::from_secs(10));
    eprintln!(
        "node {} frozen: node {} answers after {:?}",
        other + 1,
        next + 1,
        frozen.elapsed()
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let seen = never_two(&c, LB_IP, Duration::from_secs(2));
    assert!(
        seen.iter().all(|(_, a)| a == &[next]),
        "after the thaw: {seen:?}"
    );
}

#[test]
fn with_external_traffic_policy_local_only_a_node_with_a_ready_endpoint_holds_the_address() {
    let objects = [
        service(
            "front",
            0,
            json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32100}),
        ),
        slice("front", &[2]),
    ];
    let c = cluster("klblocal", 3, &objects, &[]);
    Topology::wait_for(Duration::from_secs(10), || ingress(&c, "front"))
        .unwrap_or_else(|| panic!("no address written\n{}", diagnostics(&c)));
    assert_eq!(one_holder(&c, LB_IP, &[0, 1], Duration::from_secs(10)), 2);
    let addr = format!("{LB_IP}:80");
    assert_eq!(served_by(&c, &addr), BTreeSet::from(["n3p0".to_string()]));
    // The endpoint moves to node 2: so does the address.
    c.fake().put(slice("front", &[1]));
    assert_eq!(one_holder(&c, LB_IP, &[0, 2], Duration::from_secs(10)), 1);
    let served = Topology::wait_for(Duration::from_secs(10), || {
        let by = served_by(&c, &addr);
        (by == BTreeSet::from(["n2p0".to_string()])).then_some(())
    });
    assert!(
        served.is_some(),
        "not served by node 2's pod\n{}",
        diagnostics(&c)
    );
}
