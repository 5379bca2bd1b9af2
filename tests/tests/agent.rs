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
    lb_tests::cluster::pods("web", "web", n)
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
/// line from one pod, numbered without a gap. Returns (pod, lines). The largest
/// gap between two lines' arrival is in [`largest_gap`].
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

/// The longest time (ms) between two lines of a finished stream's log (each line
/// ends with its arrival time).
fn largest_gap(c: &Cluster, label: &str) -> u64 {
    let times: Vec<u64> =
        c.t.log(label)
            .lines()
            .filter(|l| !l.starts_with("END"))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(u64::MAX)
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
    // 8 s at one line per 50 ms, through the stop and the restart: no line lost
    // (checked above), and no stall: no two lines more than a second apart.
    assert!(
        n1 >= 120 && n2 >= 120,
        "streams kept flowing: {n1}, {n2} lines"
    );
    for label in ["via-nodeport", "via-clusterip"] {
        let gap = largest_gap(&c, label);
        assert!(gap < 1000, "{label} stalled for {gap} ms");
        eprintln!("{label}: largest gap between lines {gap} ms");
    }
    let after = lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "20"]);
    assert_eq!(tally(&c, &after).values().sum::<usize>(), 20);
}

/// `n` more ClusterIP services (`bulk-I`, 10.97.x.y:80) selecting the same
/// `app: web` pods.
fn bulk_services(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: bulk-{i}\nspec:\n  clusterIP: 10.97.{}.{}\n  selector: {{app: web}}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n---\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect()
}

#[test]
fn a_bulk_write_is_read_whole_and_breaks_no_stream() {
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut c = cluster("bulk", &[tcp, tcp], &format!("{WEB}{}", pods(2)));
    ready(&c, &c.client, "tcp", "10.96.0.80:80");
    let client = c.client.clone();
    start_stream(&mut c, &client, "stream", "10.96.0.80:80", 6);
    std::thread::sleep(Duration::from_secs(1));
    // 10,001 services at once, more than the agent holds: read as a restart reads
    // the store, in one full round, while the stream runs. (Past 10,000 objects
    // `lb apply` leaves copying its log into the database to the agent.)
    let n = 10_001;
    let db = c.lb.store.join("store.db");
    let db_size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let db_before = db_size();
    c.lb.apply(&bulk_services(n)).unwrap();
    assert_eq!(
        db_size(),
        db_before,
        "the bulk apply left its log uncopied (the agent reads it meanwhile)"
    );
    // With web and the cluster DNS service.
    let want = format!("services={} ", n + 2);
    let line = Topology::wait_for(Duration::from_secs(60), || {
        let log = c.t.log("agent-node1");
        let line = log
            .lines()
            .find(|l| l.contains("reconciled") && l.contains(&want))?
            .to_string();
        Some((log, line))
    });
    let (log, line) = line.unwrap_or_else(|| {
        panic!(
            "the bulk write never reached the maps\n{}",
            c.lb.diagnostics(&c.t, "node1")
        )
    });
    assert!(
        log.lines()
            .any(|l| l.contains("a bulk write: reading the store whole")
                && l.contains(&format!("changed={n} "))),
        "{log}"
    );
    assert!(
        line.contains("full=true") && line.contains("flows_ended=0"),
        "{line}"
    );
    // The agent copies the log into the database in a quiet second after its round
    // (nothing else writes the store meanwhile).
    let copied = Topology::wait_for(Duration::from_secs(5), || {
        (db_size() > db_before + 1024 * 1024).then_some(())
    });
    assert!(
        copied.is_some(),
        "the agent copied the store's log into its database: {db_before} -> {} bytes",
        db_size()
    );
    // The last of them answers from the pods; the stream lost nothing.
    let last = format!("10.97.{}.{}:80", (n - 1) / 250, (n - 1) % 250 + 1);
    let answers = lbclient(&c, &c.client, &["tcp", &last, "10"]);
    assert_eq!(tally(&c, &answers).values().sum::<usize>(), 10);
    let (_, lines) = finished_stream(&mut c, "stream");
    assert!(lines >= 80, "the stream kept flowing: {lines} lines");
    let gap = largest_gap(&c, "stream");
    assert!(gap < 1000, "the stream stalled for {gap} ms");
    // A change after it is taken as a change again: one service, not a full round.
    c.lb.ok(&["delete", "svc", "bulk-0"]).unwrap();
    let want = format!("services={} ", n + 1);
    let line = Topology::wait_for(Duration::from_secs(10), || {
        c.t.log("agent-node1")
            .lines()
            .find(|l| l.contains("reconciled") && l.contains(&want))
            .map(String::from)
    })
    .expect("the deletion reached the maps");
    assert!(
        line.contains("full=false") && line.contains("planned=1 "),
        "{line}"
    );
}

/// ClusterIP 10.96.0.80 with TCP 80 and UDP 53 for the `app: web` pods.
const WEB_TCP_UDP: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n---\n";

/// Starts `lbclient ARGS...` in `ns` under `label`, retried (stopped and started
/// anew) until its first line names `pod`; returns whether it did within 20 tries.
fn start_on(c: &mut Cluster, ns: &Netns, label: &str, args: &[&str], pod: &str) -> bool {
    let bin = podserver_bin()
        .with_file_name("lbclient")
        .display()
        .to_string();
    for _ in 0..20 {
        let mut argv = vec![bin.as_str()];
        argv.extend_from_slice(args);
        c.t.spawn(ns, label, &argv, &[]).unwrap();
        let first = Topology::wait_for(Duration::from_secs(5), || {
            c.t.log(label).split_whitespace().next().map(String::from)
        });
        if first.as_deref() == Some(pod) {
            return true;
        }
        c.t.stop(label);
    }
    false
}

/// An endpoint leaves a service under live flows, as kube-proxy handles it: new
/// connections go only to the endpoints left; a TCP connection the removed pod holds
/// is left to finish (graceful, as kube-proxy and Cilium leave it); a UDP flow to it
/// ends (its conntrack entries go, as kube-proxy clears UDP entries), so the client's
/// next datagram reaches a live pod; flows to the pod that stays are never touched.
#[test]
fn endpoints_change_under_a_live_stream() {
    let args: &[&str] = &["--tcp", "8080", "--udp", "5353"];
    // Three pod namespaces; web2 is declared only later.
    let mut c = cluster(
        "epchange",
        &[args, args, args],
        &format!("{WEB_TCP_UDP}{}", pods(2)),
    );
    ready(&c, &c.client, "tcp", "10.96.0.80:80");
    let client = c.client.clone();
    // A stream on each pod, and a UDP flow (one socket, a datagram every 100 ms for
    // 10 s) on the pod that will leave.
    let (stay, leave) = ("stream-stay", "stream-leave");
    for (label, pod) in [(stay, "pod-0"), (leave, "pod-1")] {
        assert!(
            start_on(
                &mut c,
                &client,
                label,
                &["stream", "10.96.0.80:80", "6"],
                pod
            ),
            "no stream landed on {pod}"
        );
    }
    assert!(
        start_on(
            &mut c,
            &client,
            "udpflow",
            &["udpflow", "10.96.0.80:53", "100"],
            "pod-1"
        ),
        "no UDP flow landed on pod-1"
    );

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

    // The UDP flow moved on to a live pod: every answer after its last from pod-1
    // comes from pod-0 or pod-2, at most one datagram lost on the way.
    let udp = Topology::wait_for(Duration::from_secs(20), || {
        let log = c.t.log("udpflow");
        (log.lines().count() >= 100).then_some(log)
    })
    .expect("the UDP flow sent its 100 datagrams");
    let answers: Vec<&str> = udp
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let last_old = answers.iter().rposition(|a| *a == "pod-1").unwrap();
    let after = &answers[last_old + 1..];
    let live = after
        .iter()
        .filter(|a| matches!(**a, "pod-0" | "pod-2"))
        .count();
    assert!(
        !after.is_empty() && live + 1 >= after.len() && after.last().is_some_and(|a| *a != "ERR"),
        "the UDP flow did not move on to a live pod: {answers:?}"
    );
    assert!(
        c.t.log("agent-node1")
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("flows_ended=")))
            .any(|w| w != "flows_ended=0"),
        "the agent ended the UDP flow to the removed pod"
    );
    // What conntrack holds of the removed pod: its TCP connection, no UDP flow.
    let ct = c.lb.conntrack("node1");
    assert!(
        ct.lines()
            .any(|l| l.starts_with("tcp") && l.contains("10.244.0.3:8080")),
        "the removed pod's TCP connection is still tracked:\n{ct}"
    );
    assert!(
        !ct.lines().any(|l| l.contains("10.244.0.3:5353")),
        "a UDP flow to the removed pod remains:\n{ct}"
    );

    // Both streams ran to their end, each on its pod, no line lost: the removed
    // pod's too.
    for (label, pod) in [(stay, "pod-0"), (leave, "pod-1")] {
        let (on, lines) = finished_stream(&mut c, label);
        assert_eq!(on, pod, "{label}");
        assert!(lines >= 90, "{label}: {lines} lines");
    }
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
    for map in ["LB_SERVICES", "LB_CT", "LB6_SERVICES", "LB6_CT"] {
        assert!(
            log.lines()
                .any(|l| l.contains("resized map: every entry carried over") && l.contains(map)),
            "{map} carried over: {log}"
        );
    }
    assert!(
        log.contains("frontends=131072 (flag)")
            && log.contains("conntrack=300000 (flag)")
            // The IPv6 maps take the same flags.
            && log.contains("frontends6=131072 (flag)")
            && log.contains("conntrack6=300000 (flag)"),
        "{log}"
    );
    let (_, lines) = finished_stream(&mut c, "long");
    assert!(lines >= 120, "the stream kept flowing: {lines} lines");
    let gap = largest_gap(&c, "long");
    assert!(
        gap < 1000,
        "the stream stalled for {gap} ms across the resize"
    );
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
    let gap = largest_gap(&c, "long");
    assert!(
        gap < 1000,
        "the stream stalled for {gap} ms under the flood"
    );
}

/// `lb reset` ends a node's data plane: a stopped agent leaves it forwarding; reset
/// detaches every program and drops the maps, so the NodePort stops answering and
/// nothing of lb stays pinned, and a new agent starts from nothing.
#[test]
fn lb_reset_removes_what_a_stopped_agent_left() {
    let tcp: &[&str] = &["--tcp", "8080"];
    let mut c = cluster("reset", &[tcp], &format!("{WEB}{}", pods(1)));
    ready(&c, &c.laptop, "tcp", "192.168.1.2:30080");
    c.t.stop("agent-node1");
    let pins = c.lb.bpffs.join("lb").join("node1");
    assert!(
        pins.join("LB_SERVICES").exists(),
        "pinned maps under {pins:?}"
    );
    let left = lbclient(&c, &c.laptop, &["tcp", "192.168.1.2:30080", "10"]);
    assert_eq!(
        tally(&c, &left).values().sum::<usize>(),
        10,
        "the stopped agent's data plane still forwards"
    );

    let bpffs = c.lb.bpffs.display().to_string();
    c.lb.ok(&["reset", "--bpffs", &bpffs, "--node-name", "node1"])
        .unwrap();
    let pinned: Vec<String> = std::fs::read_dir(&pins)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(pinned.is_empty(), "still pinned after reset: {pinned:?}");
    // Nothing translates the NodePort any more: the node's kernel, which has no
    // socket on it, refuses the connection.
    // (The kernel releases an unpinned link a moment later.)
    let reset = std::time::Instant::now();
    let refused = Topology::wait_for(Duration::from_secs(5), || {
        let r = lbclient(&c, &c.laptop, &["connect", "192.168.1.2:30080"]);
        r[0].starts_with("ERR ConnectionRefused").then_some(r)
    });
    assert!(
        refused.is_some(),
        "the NodePort still answers 5 s after reset\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    eprintln!("NodePort refused {:?} after reset", reset.elapsed());

    // A new agent starts from nothing, and serves again.
    let node = c.node.clone();
    c.lb.start_agent(&mut c.t, &node, "node1", &["eth0"])
        .unwrap();
    let log = c.t.log("agent-node1");
    assert!(log.contains("adopted_frontends=0"), "{log}");
    ready(&c, &c.laptop, "tcp", "192.168.1.2:30080");
}

/// A pod whose interface comes up after the agent started is served once the
/// kernel announces its route (rtnetlink's notification), and a rule by source
/// address is followed the same way (the data plane stops sharing FIB answers
/// between a destination's flows): the agent runs with an hour between its own
/// reads of every route, so nothing but the notifications can tell it.
#[test]
fn a_new_pod_interface_and_a_rule_are_followed_as_the_kernel_announces_them() {
    let tcp: &[&str] = &["--tcp", "8080"];
    // Both pods declared from the start; only pod0's namespace exists yet.
    let mut c = cluster_with("rtnl", &[tcp], |_, _, lb| {
        lb.apply(&format!(
            "{WEB}{}{}",
            pods(2),
            pod_yaml("client", CLIENT_IP, "client", &[])
        ))
        .unwrap();
        vec!["--routes-resync-period".into(), "1h".into()]
    });
    let log = |c: &Cluster| c.t.log("agent-node1");
    let attached = |c: &Cluster, iface: &str| {
        log(c)
            .lines()
            .any(|l| l.contains("attached to pod interface") && l.contains(iface))
    };
    assert!(
        Topology::wait_for(Duration::from_secs(10), || attached(&c, "lxc0")
            .then_some(()))
        .is_some(),
        "the agent attached to the pods there at start\n{}",
        log(&c)
    );
    assert!(!attached(&c, "lxc1"), "{}", log(&c));

    // pod1 comes up: its veth, address and route, as a CNI plugin adds them.
    let node = c.node.clone();
    let pod1 = lb_tests::seeds::pod(&mut c.t, &node, "pod1", "lxc1", "10.244.0.3").unwrap();
    let server = podserver_bin().display().to_string();
    c.t.spawn(
        &pod1,
        "pod1",
        &[&server, "--text", "pod-1", "--tcp", "8080"],
        &[],
    )
    .unwrap();
    assert!(
        Topology::wait_for(Duration::from_secs(10), || attached(&c, "lxc1")
            .then_some(()))
        .is_some(),
        "the new pod's interface was not attached on its route's notification\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    // Its answers are translated back (its interface's programs are attached):
    // both pods serve the ClusterIP, every request answered.
    let both = Topology::wait_for(Duration::from_secs(10), || {
        let by = tally(
            &c,
            &lbclient(&c, &c.client, &["tcp", "10.96.0.80:80", "40"]),
        );
        (by.len() == 2).then_some(by)
    });
    assert!(
        both.is_some(),
        "both pods serve\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );

    // A rule by source address: IPv4 routes no longer go by destination alone.
    let told = |c: &Cluster, v4: bool| {
        log(c)
            .lines()
            .filter(|l| {
                l.contains("routes go by destination alone") && l.contains(&format!("ipv4={v4}"))
            })
            .count()
    };
    assert_eq!(told(&c, true), 1, "told once at start\n{}", log(&c));
    let rule = ["rule", "add", "from", "192.168.1.77", "table", "100"];
    c.t.ip(&node, &rule).unwrap();
    assert!(
        Topology::wait_for(Duration::from_secs(10), || (told(&c, false) == 1)
            .then_some(()))
        .is_some(),
        "the rule was not followed on its notification\n{}",
        log(&c)
    );
    c.t.ip(
        &node,
        &["rule", "del", "from", "192.168.1.77", "table", "100"],
    )
    .unwrap();
    assert!(
        Topology::wait_for(Duration::from_secs(10), || (told(&c, true) == 2)
            .then_some(()))
        .is_some(),
        "the rule's removal was not followed on its notification\n{}",
        log(&c)
    );
}
