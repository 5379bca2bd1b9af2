//! `cargo xtask run` with no arguments: the seeds' scenario, live. A laptop
//! (192.168.1.10) and a node (192.168.1.2) on one LAN, a pod (10.244.0.2) serving
//! `Hello World!` behind the node, lb's agent in the node, `examples/` applied. Runs
//! until Ctrl-C, then removes everything it made (also on error).

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
    seeds::{self, NODE_IP, POD_IP},
};

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
    let s = seeds::lan(&mut t)?;
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc1", POD_IP)?;
    let server = podserver_bin().display().to_string();
    t.spawn(&pod, "pod", &[&server, "--tcp", "80", "--udp", "80"], &[])?;
    let lb = Lb::new(&mut t)?;
    let examples = root.join("examples");
    println!("$ lb apply -f examples/");
    print!(
        "{}",
        lb.ok(&["apply", "-f", examples.to_str().context("path")?])?
    );
    lb.start_agent(&mut t, &s.node, "node1", &["eth0"])?;
    println!("\n$ lb get svc");
    print!("{}", lb.ok(&["get", "svc"])?);
    let url = format!("http://{NODE_IP}:30008");
    println!(
        "\n$ curl {url}        # from the laptop ({})",
        s.laptop.name
    );
    match Topology::wait_for(Duration::from_secs(10), || curl(&t, &s.laptop, &url)) {
        Some(body) => print!("{body}"),
        None => bail!(
            "the laptop got no answer from {url}; agent log:\n{}",
            t.log("agent-node1")
        ),
    }
    let store = lb.store.display();
    println!(
        "\nlb is serving. Try, in another shell:\n  \
         ip netns exec {laptop} curl {url}\n  \
         LB_STORE={store} {lb} get svc -o wide\n  \
         LB_STORE={store} {lb} describe svc node-port-service --bpffs {bpffs} --node-name node1\n\
         Agent log: {log}\nCtrl-C stops the demo and removes its namespaces.",
        laptop = s.laptop.name,
        lb = lb_tests::lbctl::lb_bin().display(),
        bpffs = lb.bpffs.display(),
        log = t.dir().join("agent-node1.log").display(),
    );
    while !STOP.load(Ordering::SeqCst) {
        if !t.running("agent-node1") {
            bail!("the agent stopped:\n{}", t.log("agent-node1"));
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping: removing namespaces, links, processes and the bpffs");
    Ok(())
}
