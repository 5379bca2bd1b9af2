//! `cargo xtask run` with no arguments: the seeds' scenario, live, on two nodes. A
//! laptop (192.168.1.10) and nodes 192.168.1.2 and 192.168.1.3 on one LAN (a
//! bridge), a pod serving `Hello World!` behind each node (10.244.0.2 on node1, the
//! seeds' pod; 10.244.1.2 on node2), lb's agent in each node, `examples/` applied:
//! the seeds' NodePort service and a LoadBalancer service. Runs until Ctrl-C, then
//! removes everything it made (also on error).

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    Topology,
    lbctl::{Lb, curl, podserver_bin},
    topology::multinode::{self, node_ip},
};

const LB_POOL: &str = "192.168.1.240/29";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(root: &Path) -> Result<()> {
    if !lb_tests::is_root() {
        bail!("the demo builds network namespaces and loads eBPF: run it as root");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut t = Topology::new("demo")?;
    let lan = multinode::lan(&mut t, 2, 1)?;
    let server = podserver_bin().display().to_string();
    for (n, pods) in lan.pods.iter().enumerate() {
        let label = format!("pod-node{}", n + 1);
        t.spawn(
            &pods[0],
            &label,
            &[&server, "--tcp", "80", "--udp", "80"],
            &[],
        )?;
    }
    let lb = Lb::new(&mut t)?;
    let examples = root.join("examples");
    println!("$ lb apply -f examples/");
    print!(
        "{}",
        lb.ok(&["apply", "-f", examples.to_str().context("path")?])?
    );
    for (n, node) in lan.nodes.iter().enumerate() {
        lb.start_agent_with(
            &mut t,
            node,
            &format!("node{}", n + 1),
            &["eth0"],
            &["--lb-pool", LB_POOL],
        )?;
    }
    // The agents give the LoadBalancer service its address within a tick.
    let lb_ip = Topology::wait_for(Duration::from_secs(10), || {
        let json = lb
            .ok(&["get", "svc", "load-balancer-service", "-o", "json"])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
        v["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(String::from)
    })
    .context("the LoadBalancer service got no address")?;
    println!("\n$ lb get svc");
    print!("{}", lb.ok(&["get", "svc"])?);
    let urls = [
        format!("http://{}:30008", node_ip(0)),
        format!("http://{}:30008", node_ip(1)),
        format!("http://{lb_ip}"),
    ];
    for url in &urls {
        println!(
            "\n$ curl {url}        # from the laptop ({})",
            lan.laptop.name
        );
        match Topology::wait_for(Duration::from_secs(10), || curl(&t, &lan.laptop, url)) {
            Some(body) => print!("{body}"),
            None => bail!(
                "the laptop got no answer from {url}; agent logs:\n{}\n{}",
                t.log("agent-node1"),
                t.log("agent-node2")
            ),
        }
    }
    // The seeds' other promise: the service's DNS name, from the seeds' pod through
    // the kube-dns service the agents keep (lb's data plane carries the query).
    let name = "node-port-service.default.svc.cluster.local";
    let pod = &lan.pods[0][0];
    println!(
        "\n$ dig +short @10.96.0.10 {name}        # from the seeds' pod ({})",
        pod.name
    );
    let dig = || {
        let out = t
            .run(
                pod,
                &["dig", "+short", "+tries=1", "+time=1", "@10.96.0.10", name],
            )
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        text.parse::<std::net::Ipv4Addr>().ok().map(|_| text)
    };
    match Topology::wait_for(Duration::from_secs(10), dig) {
        Some(ip) => println!("{ip}"),
        None => bail!(
            "the seeds' pod got no DNS answer for {name}; agent log:\n{}",
            t.log("agent-node1")
        ),
    }
    let store = lb.store.display();
    println!(
        "\nlb is serving (NodePort 30008 on both nodes, LoadBalancer {lb_ip}). Try, in another shell:\n  \
         ip netns exec {laptop} curl {url}\n  \
         ip netns exec {pod} dig @10.96.0.10 {name}\n  \
         LB_STORE={store} {lb} get svc -o wide\n  \
         LB_STORE={store} {lb} describe svc node-port-service --bpffs {bpffs} --node-name node1\n  \
         {lb} conntrack --bpffs {bpffs} --node-name node1\n\
         Agent logs: {log}\nCtrl-C stops the demo and removes its namespaces.",
        laptop = lan.laptop.name,
        pod = pod.name,
        url = urls[1],
        lb = lb_tests::lbctl::lb_bin().display(),
        bpffs = lb.bpffs.display(),
        log = t.dir().join("agent-node1.log").display(),
    );
    while !STOP.load(Ordering::SeqCst) {
        for agent in ["agent-node1", "agent-node2"] {
            if !t.running(agent) {
                bail!("{agent} stopped:\n{}", t.log(agent));
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping: removing namespaces, links, processes and the bpffs");
    Ok(())
}
