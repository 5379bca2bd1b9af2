//! The agent as a control plane, with real traffic: restarts that break nothing,
//! endpoint changes under live connections.

use std::time::Duration;

use lb_tests::{
    Netns, Topology,
    cluster::{CLIENT_IP, Cluster, cluster, cluster_with, lbclient, pod_yaml, ready, tally},
    lbctl::podserver_bin,
};

/// ClusterIP 10.96.0.80:80 and NodePort 30080 for the same `app: web` pods.
const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30080}\n---\n";

fn pods(n: usize) -> String {
    (0..n)
        .map(|i| {
            pod_yaml(
                &format!("web{i}"),
                &format!("10.244.0.{}", 2 + i),
                "web",
                &[],
            )
        })
        .collect()
}

/// Starts `lbclient stream ADDR SECS` in `ns` under `label`.
fn start_stream(c: &mut Cluster, ns: &Netns, label: &str, addr: &str, secs: u32) {
    let bin = podserver_bin()
        .with_file_name("lbclient")
        .display()
        .to_string();
    let ns = ns.clone();
    c.t.spawn(&ns, label, &[&bin, "stream", addr, &secs.to_string()], &[])
        .unwrap();
}

/// Waits for the stream under `label` to end; asserts it ended normally with every
/// line from one pod, numbered without a gap. Returns (pod, lines).
fn finished_stream(c: &mut Cluster, label: &str) -> (String, usize) {
    let log = Topology::wait_for(Duration::from_secs(30), || {
        let log = c.t.log(label);
        (log.contains("END") || log.contains("ERR")).then_some(log)
    })
    .unwrap_or_else(|| panic!("stream {label} never ended: {}", c.t.log(label)));
    c.t.stop(label);
    let lines: Vec<&str> = log.lines().collect();
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.starts_with("END"),
        "stream {label} broke: {last}\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    let data = &lines[..lines.len() - 1];
    assert!(!data.is_empty(), "stream {label} carried nothing");
    let pod = data[0].split_whitespace().next().unwrap().to_string();
    for (i, l) in data.iter().enumerate() {
        let mut w = l.split_whitespace();
        assert_eq!(
            w.next(),
            Some(pod.as_str()),
            "{label}: one pod for the whole flow"
        );
        assert_eq!(
            w.next().and_then(|n| n.parse::<usize>().ok()),
            Some(i),
            "{label}: no line lost or repeated"
        );
    }
    (pod, data.len())
}

#[test]
fn a_restarted_agent_breaks_no_stream() {
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut c = cluster("restart", &[tcp, tcp], &format!("{WEB}{}", pods(2)));
    ready(&c, &c.client, "tcp", "10.96.0.80:80");
    ready(&c, &c.laptop, "tcp", "192.168.1.2:30080");
    let (laptop, client) = (c.laptop.clone(), c.client.clone());
    start_stream(&mut c, &laptop, "via-nodeport", "192.168.1.2:30080", 8);
    start_stream(&mut c, &client, "via-clusterip", "10.96.0.80:80", 8);
    std::thread::sleep(Duration::from_secs(2));

    // Stop the agent: the pinned programs and maps go on forwarding without it,
    // for the streams and for new connections alike.
    c.t.stop("agent-node1");
    let stopped = c.t.log("agent-node1");
    assert!(stopped.contains("programs stay attached"), "{stopped}");
    let while_down = lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "10"]);
    assert_eq!(tally(&c, &while_down).values().sum::<usize>(), 10);
    let while_down = lbclient(&c, &c.laptop, &["tcp", "192.168.1.2:30080", "10"]);
    assert_eq!(tally(&c, &while_down).values().sum::<usize>(), 10);
    std::thread::sleep(Duration::from_secs(1));

    // A new agent adopts the pinned links and maps.
    let node = c.node.clone();
    c.lb.start_agent(&mut c.t, &node, "node1", &["eth0"])
        .unwrap();
    let log = c.t.log("agent-node1");
    assert!(
        log.lines()
            .any(|l| l.contains("attached to external interface") && l.contains("link=Adopted")),
        "the uplink's links adopted: {log}"
    );
    if lb_tests::lbctl::xdp_from_env().is_some() {
        assert!(log.contains("swapped into the pinned link"), "{log}");
    }
    assert!(
        log.contains("link=Adopted"),
        "pod interfaces adopted: {log}"
    );
    assert!(
        log.contains("adopted_frontends=") && !log.contains("adopted_frontends=0"),
        "the maps were adopted: {log}"
    );
    // Every reconcile of the new agent ended no flow (not just one of them).
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconciled"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("flows_ended=")))
        .collect();
    assert!(
        !ended.is_empty() && ended.iter().all(|w| *w == "flows_ended=0"),
        "no flow was ended: {ended:?}\n{log}"
    );

    let (_, n1) = finished_stream(&mut c, "via-nodeport");
    let (_, n2) = finished_stream(&mut c, "via-clusterip");
    // 8 s at one line per 50 ms: a stall of a second or more would show.
    assert!(
        n1 >= 120 && n2 >= 120,
        "streams kept flowing: {n1}, {n2} lines"
    );
    let after = lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "20"]);
    assert_eq!(tally(&c, &after).values().sum::<usize>(), 20);
}

#[test]
fn endpoints_change_under_a_live_stream() {
    let tcp: &[&str] = &["--tcp", "8080"];
    // Three pod namespaces; web2 is declared only later.
    let mut c = cluster("epchange", &[tcp, tcp, tcp], &format!("{WEB}{}", pods(2)));
    ready(&c, &c.client, "tcp", "10.96.0.80:80");
    let client = c.client.clone();
    // Two streams, so one of them lands on the pod that stays (web0 or web1);
    // retried until both pods carry one.
    let mut streams = Vec::new();
    for attempt in 0..20 {
        let label = format!("stream{attempt}");
        start_stream(&mut c, &client, &label, "10.96.0.80:80", 6);
        let pod = Topology::wait_for(Duration::from_secs(5), || {
            c.t.log(&label).split_whitespace().next().map(String::from)
        })
        .expect("stream started");
        if streams.iter().any(|(_, p): &(String, String)| *p == pod) {
            c.t.stop(&label);
            continue;
        }
        streams.push((label, pod));
        if streams.len() == 2 {
            break;
        }
    }
    assert_eq!(streams.len(), 2, "both pods carry a stream: {streams:?}");
    let (survivor, removed) = if streams[0].1 == "pod-0" {
        (streams[0].0.clone(), streams[1].0.clone())
    } else {
        (streams[1].0.clone(), streams[0].0.clone())
    };

    // web1 leaves, web2 arrives, in one apply.
    c.lb.ok(&["delete", "pod", "web1"]).unwrap();
    c.lb.apply(&pod_yaml("web2", "10.244.0.4", "web", &[]))
        .unwrap();
    let moved = Topology::wait_for(Duration::from_secs(10), || {
        let answers = lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "30"]);
        let by = tally(&c, &answers);
        (!by.contains_key("pod-1") && by.contains_key("pod-2")).then_some(by)
    })
    .unwrap_or_else(|| {
        panic!(
            "new connections never moved\n{}",
            c.lb.diagnostics(&c.t, "node1")
        )
    });
    assert_eq!(moved.values().sum::<usize>(), 30, "{moved:?}");

    // The flows to web1 are no longer tracked: nothing is translated to it.
    let ct =
        c.lb.ok(&[
            "conntrack",
            "--bpffs",
            &c.lb.bpffs.display().to_string(),
            "--node-name",
            "node1",
        ])
        .unwrap();
    assert!(
        !ct.contains("10.244.0.3:8080"),
        "flows to the removed pod remain:\n{ct}"
    );
    assert!(
        ct.contains(&format!("{CLIENT_IP}:")),
        "the client's flows are listed:\n{ct}"
    );
    assert!(
        c.t.log("agent-node1")
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("flows_ended=")))
            .any(|w| w != "flows_ended=0"),
        "the agent ended the removed pod's flows"
    );

    // The stream to the pod that stayed never noticed.
    let (pod, lines) = finished_stream(&mut c, &survivor);
    assert_eq!(pod, "pod-0");
    assert!(lines >= 90, "{lines} lines");
    c.t.stop(&removed);
}

/// A selectorless service and its EndpointSlice (as written by hand or by another
/// controller): ready endpoints serve; a not-ready one stops; when none is ready,
/// serving-and-terminating ones do.
#[test]
fn a_service_without_selector_follows_its_endpoint_slices() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  clusterIP: 10.96.0.90\n  ports:\n  - {name: web, port: 80}\n---\n";
    let slice = |conds: [&str; 2]| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-1\n  labels: {{kubernetes.io/service-name: ext}}\naddressType: IPv4\nports:\n- {{name: web, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [10.244.0.2]\n  conditions: {}\n- addresses: [10.244.0.3]\n  conditions: {}\n---\n",
            conds[0], conds[1]
        )
    };
    let up = "{ready: true}";
    let tcp: &[&str] = &["--tcp", "8080"];
    let c = cluster("slices", &[tcp, tcp], &format!("{svc}{}", slice([up, up])));
    ready(&c, &c.client, "tcp", "10.96.0.90:80");
    let by = tally(
        &c,
        &lbclient(&c, &c.client, &["tcp", "10.96.0.90:80", "60"]),
    );
    assert_eq!(by.len(), 2, "both endpoints serve: {by:?}");

    // pod-1 no longer ready: only pod-0 serves.
    c.lb.apply(&slice([up, "{ready: false, serving: false}"]))
        .unwrap();
    let only = Topology::wait_for(Duration::from_secs(10), || {
        let by = tally(
            &c,
            &lbclient(&c, &c.client, &["tcp", "10.96.0.90:80", "30"]),
        );
        (by.len() == 1).then_some(by)
    })
    .unwrap_or_else(|| {
        panic!(
            "the not-ready endpoint kept serving\n{}",
            c.lb.diagnostics(&c.t, "node1")
        )
    });
    assert_eq!(only.get("pod-0"), Some(&30), "{only:?}");

    // None ready, pod-1 still serving while it terminates: it takes the traffic.
    c.lb.apply(&slice([
        "{ready: false, serving: false}",
        "{ready: false, serving: true, terminating: true}",
    ]))
    .unwrap();
    let fallback = Topology::wait_for(Duration::from_secs(10), || {
        let by = tally(
            &c,
            &lbclient(&c, &c.client, &["tcp", "10.96.0.90:80", "30"]),
        );
        (by.get("pod-1") == Some(&30)).then_some(by)
    });
    assert!(
        fallback.is_some(),
        "terminating endpoints serve when none is ready\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    let table = c.lb.ok(&["get", "endpointslices"]).unwrap();
    assert!(
        table.starts_with("NAME    ADDRESSTYPE   PORTS   ENDPOINTS")
            && table.contains("ext-1   IPv4          8080    10.244.0.2,10.244.0.3"),
        "{table}"
    );
}

#[test]
fn maps_pinned_by_another_version_in_another_shape_are_created_anew() {
    use aya::maps::{MapInfo, MapType};
    use lb_common::{MAP_AFFINITY, MAP_SERVICES, MAP_STATS, reason};
    use lb_user::loader::Dataplane;

    lb_tests::require_root();
    let mut t = Topology::new("pinshape").unwrap();
    let fs = t.bpffs().unwrap();
    let (old, new) = (fs.join("old"), fs.join("new"));
    // An agent's maps, pinned under old/ and left there when it stops.
    drop(Dataplane::load(Some(&old)).unwrap());
    // Under new/: LB_SERVICES as this build makes it, and an LB_STATS of another
    // shape (LB_AFFINITY's: an LRU hash), as a version with other counters left it.
    std::fs::create_dir_all(&new).unwrap();
    std::fs::rename(old.join(MAP_SERVICES), new.join(MAP_SERVICES)).unwrap();
    std::fs::rename(old.join(MAP_AFFINITY), new.join(MAP_STATS)).unwrap();
    let services = MapInfo::from_pin(new.join(MAP_SERVICES)).unwrap().id();
    let stale = MapInfo::from_pin(new.join(MAP_STATS)).unwrap().id();

    let _dp = Dataplane::load(Some(&new)).expect("loads over a pin of another shape");
    let stats = MapInfo::from_pin(new.join(MAP_STATS)).unwrap();
    assert_ne!(stats.id(), stale, "LB_STATS was created anew");
    assert!(matches!(stats.map_type(), Ok(MapType::PerCpuArray)));
    assert_eq!(stats.max_entries(), reason::COUNT);
    assert_eq!(
        MapInfo::from_pin(new.join(MAP_SERVICES)).unwrap().id(),
        services,
        "LB_SERVICES, of this build's shape, was adopted with its entries"
    );
}

/// An agent restarted with other map sizes: the maps are made anew at the new
/// sizes and what the old ones held (frontends, slots, flows) is carried over, so
/// a live stream and the services go on; the log says what was carried.
#[test]
fn a_restart_with_other_map_sizes_carries_the_flows_over() {
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut c = cluster("resize", &[tcp, tcp], &format!("{WEB}{}", pods(2)));
    ready(&c, &c.laptop, "tcp", "192.168.1.2:30080");
    let laptop = c.laptop.clone();
    start_stream(&mut c, &laptop, "long", "192.168.1.2:30080", 8);
    std::thread::sleep(Duration::from_secs(2));
    c.t.stop("agent-node1");
    let node = c.node.clone();
    c.lb.start_agent_with(
        &mut c.t,
        &node,
        "node1",
        &["eth0"],
        &["--max-frontends", "131072", "--ct-max", "300000"],
    )
    .unwrap();
    let log = c.t.log("agent-node1");
    for map in ["LB_SERVICES", "LB_CT"] {
        assert!(
            log.lines()
                .any(|l| l.contains("resized map: every entry carried over") && l.contains(map)),
            "{map} carried over: {log}"
        );
    }
    assert!(
        log.contains("frontends=131072 (flag)") && log.contains("conntrack=300000 (flag)"),
        "{log}"
    );
    let (_, lines) = finished_stream(&mut c, "long");
    assert!(lines >= 120, "the stream kept flowing: {lines} lines");
    let after = lbclient(&c, &c.laptop, &["tcp", "192.168.1.2:30080", "20"]);
    assert_eq!(tally(&c, &after).values().sum::<usize>(), 20);
}

/// A flood of new flows far past the conntrack table's size (`--ct-max 512`: 2,000
/// connections, 4,000 entries) while a long-lived TCP stream runs: the table
/// evicts the least recently used flows, never the live stream's (katran#80:
/// long flows remapped after eviction), and every new connection is still served.
#[test]
fn a_flood_of_new_flows_past_the_conntrack_table_evicts_no_live_stream() {
    let tcp: &[&str] = &["--tcp", "8080"];
    let manifests = format!(
        "{WEB}{}{}",
        pods(2),
        pod_yaml("client", CLIENT_IP, "client", &[])
    );
    let mut c = cluster_with("ctflood", &[tcp, tcp], |_, _, lb| {
        lb.apply(&manifests).unwrap();
        vec!["--ct-max".into(), "512".into()]
    });
    let log = c.t.log("agent-node1");
    assert!(
        log.contains("conntrack=512 (flag)"),
        "the table is sized as asked: {log}"
    );
    ready(&c, &c.laptop, "tcp", "192.168.1.2:30080");
    let laptop = c.laptop.clone();
    start_stream(&mut c, &laptop, "long", "192.168.1.2:30080", 10);
    std::thread::sleep(Duration::from_secs(1));
    let flood = lbclient(&c, &c.laptop, &["tcp", "192.168.1.2:30080", "2000"]);
    assert_eq!(
        tally(&c, &flood).values().sum::<usize>(),
        2000,
        "every new connection served with the table full"
    );
    let (_, lines) = finished_stream(&mut c, "long");
    // 10 s at one line per 50 ms: a reset or a stall would show.
    assert!(lines >= 150, "the stream kept flowing: {lines} lines");
}
