//! The cluster DNS of the embedded store, end to end: pods use `nameserver
//! 10.96.0.10` (the `kube-system/kube-dns` service the agent keeps), lb's own data
//! plane carries their queries to the agent on the node, and the names follow the
//! store: the seeds' service by name (dig and the C library's resolver), curl by
//! name through the search path, headless services, SRV, PTR, TCP, names outside
//! the zone forwarded, ExternalName, deletion, and malformed queries.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    Netns, Topology,
    dns::{a_query, dnsmasq},
    lbctl::{Lb, podserver_bin},
    require_root,
    seeds::{self, POD_IP},
    topology::InNetns,
};

const SEEDS_SERVICE: &str = include_str!("../../examples/node-port-service.yaml");
const SEEDS_POD: &str = include_str!("../../examples/myapp-pod.yaml");
const CLUSTER_DNS: &str = "10.96.0.10";
const CLIENT_IP: &str = "10.244.0.100";
/// A pod's resolv.conf, as the kubelet writes it for `dnsPolicy: ClusterFirst`.
const RESOLV_CONF: &str = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";

/// More objects: a headless service over the seeds' pod and a second one, a
/// service with named ports, and ExternalNames out of and into the zone.
const MORE: &str = "apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, nodeName: node1, containers: [{name: c, image: pg}]}
status: {podIP: 10.244.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec: {nodeName: node1, containers: [{name: c, image: pg}]}
status: {podIP: 10.244.0.4}
---
apiVersion: v1
kind: Service
metadata: {name: named}
spec:
  selector: {app: myapp}
  ports: [{name: http, port: 8080, targetPort: 80}, {name: syslog, port: 514, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec: {type: ExternalName, externalName: node-port-service.default.svc.cluster.local}
";

struct Dns {
    t: Topology,
    laptop: Netns,
    node: Netns,
    client: Netns,
    lb: Lb,
}

/// The seeds' laptop, node and pod (Hello World! on port 80), a client pod whose
/// resolv.conf names the cluster DNS, and a dnsmasq on the node as the upstream
/// resolver (`www.example.test` at 192.0.2.7).
fn cluster(tag: &str) -> Dns {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc1", POD_IP).unwrap();
    let server = podserver_bin().display().to_string();
    t.spawn(&pod, "pod", &[&server, "--tcp", "80"], &[])
        .unwrap();
    let client = seeds::pod(&mut t, &s.node, "client", "lxcc", CLIENT_IP).unwrap();
    t.resolv_conf(&client, RESOLV_CONF).unwrap();
    dnsmasq(
        &mut t,
        &s.node,
        "dnsmasq",
        "127.0.0.1",
        5353,
        &["--host-record=www.example.test,192.0.2.7"],
    )
    .unwrap();
    // The upstream answers before anything is asked of it.
    let upstream = Topology::wait_for(Duration::from_secs(10), || {
        let out = t
            .run(
                &s.node,
                &[
                    "dig",
                    "+short",
                    "+tries=1",
                    "+time=1",
                    "@127.0.0.1",
                    "-p",
                    "5353",
                    "www.example.test",
                ],
            )
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == "192.0.2.7").then_some(())
    });
    assert!(
        upstream.is_some(),
        "dnsmasq never answered:\n{}",
        t.log("dnsmasq")
    );
    let lb = Lb::new(&mut t).unwrap();
    lb.apply(&format!(
        "{SEEDS_SERVICE}\n---\n{SEEDS_POD}\n---\n{MORE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec: {{nodeName: node1, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {CLIENT_IP}}}\n"
    ))
    .unwrap();
    lb.start_agent_with(
        &mut t,
        &s.node,
        "node1",
        &["eth0"],
        &["--dns-upstream", "127.0.0.1:5353"],
    )
    .unwrap();
    Dns {
        t,
        laptop: s.laptop,
        node: s.node,
        client,
        lb,
    }
}

/// `dig ARGS` in `ns` (one try, one second: an answer lost would show); its
/// output, whatever its status.
fn dig(c: &Dns, ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+tries=1", "+time=1"];
    argv.extend_from_slice(args);
    let out = c.t.run(ns, &argv).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The records `dig +short` prints for a query to the cluster DNS, sorted.
fn short(c: &Dns, ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["+short", "@10.96.0.10"];
    argv.extend_from_slice(args);
    let mut lines: Vec<String> = dig(c, ns, &argv).lines().map(String::from).collect();
    lines.sort();
    lines
}

/// The status dig reports (NOERROR, NXDOMAIN, ...).
fn status(c: &Dns, ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["@10.96.0.10", "+noall", "+comments"];
    argv.extend_from_slice(args);
    let out = dig(c, ns, &argv);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's answer:\n{out}"))
        .to_string()
}

/// The ClusterIP `lb get` shows for the service `namespace/name`.
fn cluster_ip_in(c: &Dns, namespace: &str, name: &str) -> String {
    let json =
        c.lb.ok(&["get", "svc", name, "-n", namespace, "-o", "json"])
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // One object, a List's items or a bare array: the first service.
    let v = match (&v["items"], &v[0]) {
        (serde_json::Value::Array(items), _) => items[0].clone(),
        (_, serde_json::Value::Object(_)) => v[0].clone(),
        _ => v,
    };
    v["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("no clusterIP in {json}"))
        .to_string()
}

fn cluster_ip(c: &Dns, name: &str) -> String {
    cluster_ip_in(c, "default", name)
}

/// Waits until the agent answers for the seeds' service (it comes up with the
/// store's names; this only lets its listener start).
fn wait_ready(c: &Dns) {
    let up = Topology::wait_for(Duration::from_secs(10), || {
        (!short(
            c,
            &c.client,
            &["node-port-service.default.svc.cluster.local"],
        )
        .is_empty())
        .then_some(())
    });
    assert!(
        up.is_some(),
        "no DNS answer\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}

#[test]
fn pods_reach_the_seeds_service_by_its_name() {
    let c = cluster("dns");
    wait_ready(&c);
    let ip = cluster_ip(&c, "node-port-service");
    let fqdn = "node-port-service.default.svc.cluster.local";
    // The kube-dns service the agent keeps, as a kubeadm cluster has it.
    assert_eq!(cluster_ip_in(&c, "kube-system", "kube-dns"), CLUSTER_DNS);
    let svc = c.lb.ok(&["get", "svc", "-n", "kube-system"]).unwrap();
    assert!(
        svc.contains("kube-dns") && svc.contains("53/UDP,53/TCP"),
        "{svc}"
    );
    // dig from the client pod, over UDP and TCP; from the node itself (its own
    // processes reach the ClusterIP at the socket).
    assert_eq!(short(&c, &c.client, &[fqdn]), vec![ip.clone()]);
    assert_eq!(short(&c, &c.client, &["+tcp", fqdn]), vec![ip.clone()]);
    assert_eq!(short(&c, &c.node, &[fqdn]), vec![ip.clone()]);
    // The C library's resolver, through the search path: the short name, the
    // namespaced one.
    for name in ["node-port-service", "node-port-service.default", fqdn] {
        let out =
            c.t.resolving(&c.client, &["getent", "hosts", name])
                .unwrap();
        assert_eq!(
            out.split_whitespace().next(),
            Some(ip.as_str()),
            "getent hosts {name}: {out}"
        );
    }
    // The seeds' promise whole: a pod reaches the service by its name.
    for url in [
        "http://node-port-service/",
        "http://node-port-service.default.svc.cluster.local/",
    ] {
        let body =
            c.t.resolving(&c.client, &["curl", "-sS", "--max-time", "5", url])
                .unwrap();
        assert_eq!(body.trim(), "Hello World!", "{url}");
    }
    // PTR back to the name; the apex's SOA.
    let rev = format!(
        "{}.in-addr.arpa",
        ip.split('.').rev().collect::<Vec<_>>().join(".")
    );
    assert_eq!(
        short(&c, &c.client, &["PTR", &rev]),
        vec![format!("{fqdn}.")]
    );
    assert_eq!(status(&c, &c.client, &["SOA", "cluster.local"]), "NOERROR");
    // Names that do not exist, and names that exist without the type asked.
    assert_eq!(
        status(&c, &c.client, &["nope.default.svc.cluster.local"]),
        "NXDOMAIN"
    );
    assert_eq!(status(&c, &c.client, &["AAAA", fqdn]), "NOERROR");
    assert!(short(&c, &c.client, &["AAAA", fqdn]).is_empty());
    assert_eq!(
        status(&c, &c.client, &["default.svc.cluster.local"]),
        "NOERROR"
    );
}

#[test]
fn headless_services_srv_external_names_and_names_outside_the_zone() {
    let c = cluster("dnsrec");
    wait_ready(&c);
    let db = "db.default.svc.cluster.local";
    assert_eq!(
        short(&c, &c.client, &[db]),
        vec!["10.244.0.3".to_string(), "10.244.0.4".to_string()]
    );
    assert_eq!(
        short(&c, &c.client, &[&format!("db-0.{db}")]),
        vec!["10.244.0.3".to_string()]
    );
    assert_eq!(
        short(&c, &c.client, &["SRV", &format!("_pg._tcp.{db}")]),
        vec![
            format!("0 50 5432 10-244-0-4.{db}."),
            format!("0 50 5432 db-0.{db}."),
        ]
    );
    assert_eq!(
        short(&c, &c.client, &["-x", "10.244.0.3"]),
        vec![format!("db-0.{db}.")]
    );
    let named = "named.default.svc.cluster.local";
    assert_eq!(
        short(&c, &c.client, &["SRV", &format!("_http._tcp.{named}")]),
        vec![format!("0 100 8080 {named}.")]
    );
    assert_eq!(
        short(&c, &c.client, &["SRV", &format!("_syslog._udp.{named}")]),
        vec![format!("0 100 514 {named}.")]
    );
    // A name outside the zone goes to the upstream (dnsmasq on the node).
    let forwarded = short(&c, &c.client, &["www.example.test"]);
    assert_eq!(
        forwarded,
        vec!["192.0.2.7".to_string()],
        "{}\ndnsmasq:\n{}\n{}",
        dig(&c, &c.client, &["@10.96.0.10", "www.example.test"]),
        c.t.log("dnsmasq"),
        c.lb.diagnostics(&c.t, "node1")
    );
    // The LAN reaches the listener on the node's address: the zone's names answer
    // it, but the node is no open resolver for it (REFUSED, nothing forwarded).
    let node = "@192.168.1.2";
    assert_eq!(
        dig(
            &c,
            &c.laptop,
            &["+short", node, "db-0.db.default.svc.cluster.local"]
        )
        .trim(),
        "10.244.0.3"
    );
    let refused = dig(
        &c,
        &c.laptop,
        &[node, "+noall", "+comments", "www.example.test"],
    );
    assert!(refused.contains("status: REFUSED"), "{refused}");
    // ExternalName: the alias, then what its target holds (out of the zone, asked
    // of the upstream; in it, answered here).
    assert_eq!(
        short(&c, &c.client, &["outside.default.svc.cluster.local"]),
        vec!["192.0.2.7".to_string(), "www.example.test.".to_string()]
    );
    let ip = cluster_ip(&c, "node-port-service");
    assert_eq!(
        short(&c, &c.client, &["alias.default.svc.cluster.local"]),
        vec![
            ip,
            "node-port-service.default.svc.cluster.local.".to_string()
        ]
    );
}

#[test]
fn names_follow_the_store_and_malformed_queries_do_no_harm() {
    let mut c = cluster("dnsfollow");
    wait_ready(&c);
    let fresh = "fresh.default.svc.cluster.local";
    assert_eq!(status(&c, &c.client, &[fresh]), "NXDOMAIN");
    c.lb.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh}\nspec:\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    let ip = cluster_ip(&c, "fresh");
    let seen = Topology::wait_for(Duration::from_secs(5), || {
        (short(&c, &c.client, &[fresh]) == vec![ip.clone()]).then_some(())
    });
    assert!(
        seen.is_some(),
        "{fresh} never resolved\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
    c.lb.ok(&["delete", "svc", "fresh"]).unwrap();
    let gone = Topology::wait_for(Duration::from_secs(5), || {
        (status(&c, &c.client, &[fresh]) == "NXDOMAIN").then_some(())
    });
    assert!(gone.is_some(), "{fresh} still resolves after its deletion");

    // Malformed queries from a pod, through the service: every one-bit corruption
    // of a query and random bytes, bounded in count and time. A query cut short
    // inside its question is answered FORMERR with its id.
    let query = a_query(0x4242, "node-port-service.default.svc.cluster.local.");
    let answered = {
        let _in = InNetns::enter(&c.client).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let to: SocketAddr = format!("{CLUSTER_DNS}:53").parse().unwrap();
        sock.send_to(&query[..query.len() - 3], to).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        let started = Instant::now();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut sent = 0;
        'fuzz: for i in 0..query.len() * 8 {
            let mut bad = query.clone();
            bad[i / 8] ^= 1 << (i % 8);
            for frame in [bad, random_bytes(&mut seed, i % 64)] {
                let _ = sock.send_to(&frame, to);
                sent += 1;
                if started.elapsed() > Duration::from_secs(5) {
                    break 'fuzz;
                }
            }
        }
        assert!(sent > 100, "only {sent} malformed queries sent");
        buf[..n].to_vec()
    };
    assert_eq!(
        &answered[..2],
        &[0x42, 0x42],
        "the FORMERR answer keeps the id"
    );
    assert_eq!(answered[3] & 0x0f, 1, "FORMERR");
    // The agent lives on and still answers.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        short(
            &c,
            &c.client,
            &["node-port-service.default.svc.cluster.local"]
        ),
        vec![cluster_ip(&c, "node-port-service")]
    );
    assert!(
        c.t.running("agent-node1"),
        "the agent died\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}

/// `n` pseudo-random bytes (xorshift; the same every run).
fn random_bytes(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}
