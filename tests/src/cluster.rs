//! A one-node cluster for end-to-end tests: the seeds' laptop and node, backend pods
//! running `podserver`, a client pod, manifests applied and the agent started; and
//! the client-side helpers the tests share.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    Netns, Topology,
    lbctl::{Lb, podserver_bin},
    require_root, seeds,
};

pub const CLIENT_IP: &str = "10.244.0.100";

pub struct Cluster {
    pub t: Topology,
    pub laptop: Netns,
    pub node: Netns,
    pub client: Netns,
    pub lb: Lb,
}

/// A pod manifest: labels `app=APP`, container ports (name, number, protocol).
pub fn pod_yaml(name: &str, ip: &str, app: &str, ports: &[(&str, u16, &str)]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\nspec:\n  containers:\n  - name: c\n    image: app\n    ports: [{}]\nstatus:\n  podIP: {ip}\n---\n",
        ports.join(", ")
    )
}

/// Laptop, node, the client pod and `backends` pods 10.244.0.(2+i) each running
/// `podserver ARGS --text pod-i`; `manifests` applied; the agent started.
pub fn cluster(tag: &str, backends: &[&[&str]], manifests: &str) -> Cluster {
    cluster_with(tag, backends, |_, _, lb| {
        lb.apply(&format!(
            "{manifests}{}",
            pod_yaml("client", CLIENT_IP, "client", &[])
        ))
        .unwrap();
        Vec::new()
    })
}

/// [`cluster`] where `source` tells the agent about the cluster: it gets the
/// topology, the node and the lb installation, and returns more `lb agent`
/// arguments (e.g. `--kubeconfig` for an API server it started).
pub fn cluster_with(
    tag: &str,
    backends: &[&[&str]],
    source: impl FnOnce(&mut Topology, &Netns, &Lb) -> Vec<String>,
) -> Cluster {
    require_root();
    let mut t = Topology::new(tag).unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let server = podserver_bin().display().to_string();
    for (i, args) in backends.iter().enumerate() {
        let ip = format!("10.244.0.{}", 2 + i);
        let pod = seeds::pod(&mut t, &s.node, &format!("pod{i}"), &format!("lxc{i}"), &ip).unwrap();
        let text = format!("pod-{i}");
        let mut argv = vec![server.as_str(), "--text", &text];
        argv.extend_from_slice(args);
        t.spawn(&pod, &format!("pod{i}"), &argv, &[]).unwrap();
    }
    let client = seeds::pod(&mut t, &s.node, "client", "lxcc", CLIENT_IP).unwrap();
    let lb = Lb::new(&mut t).unwrap();
    let args = source(&mut t, &s.node, &lb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lb.start_agent_with(&mut t, &s.node, "node1", &["eth0"], &args)
        .unwrap();
    Cluster {
        t,
        laptop: s.laptop,
        node: s.node,
        client,
        lb,
    }
}

/// `n` pods `{name}0`, `{name}1`, ... labelled `app: {app}`, at 10.244.0.2, .3, ...
/// (the pod namespaces `cluster` makes, in order).
pub fn pods(name: &str, app: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            pod_yaml(
                &format!("{name}{i}"),
                &format!("10.244.0.{}", 2 + i),
                app,
                &[],
            )
        })
        .collect()
}

pub fn lbclient(c: &Cluster, ns: &Netns, args: &[&str]) -> Vec<String> {
    lbclient_in(&c.t, ns, args)
}

/// `lbclient ARGS` in `ns` of any topology; its output lines.
pub fn lbclient_in(t: &Topology, ns: &Netns, args: &[&str]) -> Vec<String> {
    let bin = podserver_bin()
        .with_file_name("lbclient")
        .display()
        .to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let out = t.run(ns, &argv).unwrap();
    assert!(
        out.status.success(),
        "lbclient {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    // The modes that answer once per request print exactly one line each: a
    // shorter answer list would let a loop over the answers prove nothing.
    if let (Some(mode), Some(count)) = (
        args.first(),
        args.get(2).and_then(|c| c.parse::<usize>().ok()),
    ) && ["tcp", "peer", "udp", "bigudp", "sendto", "bulk"].contains(mode)
    {
        let want = if *mode == "bulk" {
            count.min(100)
        } else {
            count
        };
        assert_eq!(
            lines.len(),
            want,
            "lbclient {args:?}: one answer per request: {lines:?}"
        );
    }
    lines
}

/// Answers counted by text; panics with diagnostics if any failed.
pub fn tally(c: &Cluster, answers: &[String]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for a in answers {
        assert!(
            !a.starts_with("ERR"),
            "a request failed: {a}\n{}",
            c.lb.diagnostics(&c.t, "node1")
        );
        *by.entry(a.split_whitespace().next().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    by
}

/// Waits until a first request through `addr` succeeds (the agent has caught up).
pub fn ready(c: &Cluster, ns: &Netns, mode: &str, addr: &str) {
    let ok = Topology::wait_for(Duration::from_secs(10), || {
        lbclient(c, ns, &[mode, addr, "1"])
            .first()
            .filter(|a| !a.starts_with("ERR"))
            .cloned()
    });
    assert!(
        ok.is_some(),
        "{addr} never answered\n{}",
        c.lb.diagnostics(&c.t, "node1")
    );
}
