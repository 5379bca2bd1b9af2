//! Live packets through veth namespaces: packets per second delivered to a pod for
//! (a) a plain XDP_REDIRECT hop into a pod that runs XDP, the ceiling on this
//! machine, and a plain bpf_redirect_peer hop at TC into a pod that does not, the
//! floor of any path delivering socket buffers; (b) lb NodePort as by default, which
//! chooses per pod: XDP redirects into the veth of a pod that runs XDP, and for a
//! pod that does not XDP translates and TC ingress hands the packet to the pod's end
//! of its veth; each against the plain hop of its kind, and its new flows against
//! the XDP hop with the flow state any stateful NAT hop keeps (a lookup per packet,
//! one entry per new flow, the one its replies need, as lb writes, in lb's own
//! IPv4 flow table sized as the agent sizes it); and with
//! `--to-pods stack` (the kernel's stack delivers); (c) kube-proxy's iptables DNAT
//! rules; (d) kube-proxy's nftables rules; for one established flow and for new flows (every
//! packet a new source address and port), at 1, 1,000 and 10,000 services x 10
//! endpoints. And, across two nodes, lb forwarding NodePort traffic to a remote pod
//! by XDP_REDIRECT and by TC (a veth uplink without `--xdp native`), against a plain
//! NAT hop to the other node (fixed translation, XDP_REDIRECT).
//!
//! The traffic is made by BPF_PROG_RUN in live-frames mode (`lb_bench_gen`, run in
//! the laptop namespace: it sends each frame out of the laptop's eth0), or, where
//! the kernel refuses live frames, by BPF_PROG_RUN of a TC program that sends a
//! clone of one socket buffer per run out of the same eth0 (`lb_bench_gen_tc`;
//! the report says which); the pod
//! counts what arrives with an XDP sink (`lb_bench_sink`) and, for packets handed
//! over as socket buffers, which pass no XDP hook, a TC ingress sink. The first row
//! is the generator's own rate (frames dropped by XDP on the node's uplink): a row
//! within 1.4x of it is marked generator-bound. Every window is bounded in time.
//! Run as root: `cargo xtask bench` (`--quick` for a smoke run; `--sizes=1
//! --lb-only` for lb beside the plain hops alone).

mod bench_object;
mod report;

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
use lb_common::{
    BENCH_FRAME_GEN, BENCH_FRAME_HOP, BENCH_GEN_IFINDEX, BENCH_IPV6, BENCH_NEW_FLOWS,
    BENCH_REDIRECT_IFINDEX, PROG_BENCH_GEN, PROG_BENCH_GEN_TC, PROG_BENCH_NAT_HOP,
    PROG_BENCH_REDIRECT, PROG_BENCH_REDIRECT_CT, PROG_BENCH_REDIRECT_PEER, PROG_BENCH_SINK,
    PROG_BENCH_SINK_TC, reason,
};
use lb_tests::{
    Netns, Topology,
    lbctl::Lb,
    packet::{Pkt, Pkt6},
    scale::{self, MEASURED_NODE_PORT},
    seeds,
    topology::{InNetns, mac_text},
    topology::{dual, multinode},
};
use lb_user::maps::Maps;

use crate::{
    bench_object::BenchObject,
    report::{Chart, Table},
};

#[derive(Clone, Copy)]
struct Window {
    /// Generator-side frames per `BPF_PROG_RUN` call.
    chunk: u32,
    /// How long frames are sent for in one measurement.
    duration: Duration,
}

/// The generator (in `laptop`) and the sink (on `pod`'s eth0).
struct Traffic {
    bench: BenchObject,
    laptop: Netns,
    laptop_ifindex: u32,
    /// The template frame (the TC generator's socket buffer starts as it).
    frame: Vec<u8>,
    /// How frames are made: live frames, or clones of a socket buffer.
    generator: Generator,
}

/// How the generator makes frames. BPF_PROG_RUN's live-frames mode (an XDP program
/// whose frames leave by XDP_TX) where the kernel allows it; some kernels refuse it
/// (EPERM, seen on this project's CI machine on 2026-12-05): there a TC program run
/// by BPF_PROG_RUN sends a clone of one socket buffer per run (`bpf_clone_redirect`
/// out of the laptop's eth0). Either is measured as the first row: every figure is
/// read against the generator the run had.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Generator {
    LiveFrames,
    Clones,
}

/// The generator this run's kernel allowed (the first `Traffic` finds out).
static GENERATOR: std::sync::OnceLock<Generator> = std::sync::OnceLock::new();

/// The report's line on how frames were made.
fn made_by() -> String {
    format!(
        "Frames made by {}.\n",
        GENERATOR.get().map_or("-", |g| g.describe())
    )
}

impl Generator {
    fn describe(self) -> &'static str {
        match self {
            Generator::LiveFrames => "BPF_PROG_RUN live frames (XDP_TX)",
            Generator::Clones => {
                "BPF_PROG_RUN of a TC program sending a clone of one socket buffer per run (this kernel refuses live frames). \
                 Such frames reach the node as socket buffers whose head a veth running XDP copies into a page first: \
                 the XDP rows (the generator's own among them) pay that copy, the TC rows do not, \
                 so read XDP against XDP and TC against TC"
            }
        }
    }
}

impl Traffic {
    /// Loads the bench programs; the sinks go on the pod's eth0 (`pod_xdp`: the
    /// XDP one too, so the pod takes XDP frames; else only TC's, as a pod whose
    /// end of its veth runs no XDP), the header template is a UDP frame from the
    /// laptop to `dst`:NodePort via `dst_mac` (IPv6 when `dst` is: from the
    /// laptop's IPv6 address, with its UDP checksum, which IPv6 requires).
    fn new(
        t: &Topology,
        laptop: &Netns,
        pod: &Netns,
        pod_xdp: bool,
        dst: &str,
        dst_mac: [u8; 6],
    ) -> Result<Self> {
        let mut bench = BenchObject::load()?;
        {
            let _in = InNetns::enter(pod)?;
            if pod_xdp {
                bench.attach_xdp(PROG_BENCH_SINK, "eth0")?;
            }
            bench.attach_tc(PROG_BENCH_SINK_TC, "eth0")?;
        }
        let ipv6 = dst.contains(':');
        // 64-byte frames: headers and a payload to fill them.
        let mut frame = if ipv6 {
            Pkt6::udp(dual::LAPTOP_IP6, 40000, dst, MEASURED_NODE_PORT)
                .payload(&[0u8; 2])
                .build()
        } else {
            let mut p = Pkt::udp(seeds::LAPTOP_IP, 40000, dst, MEASURED_NODE_PORT)
                .payload(&[0u8; 20])
                .clone();
            p.udp_no_checksum = true;
            p.build()
        };
        bench.set(BENCH_IPV6, u32::from(ipv6))?;
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&t.mac(laptop, "eth0")?);
        bench.set_frame(BENCH_FRAME_GEN, &frame)?;
        bench.xdp(PROG_BENCH_GEN)?;
        let laptop_ifindex = t.ifindex(laptop, "eth0")?;
        bench.set(BENCH_GEN_IFINDEX, laptop_ifindex)?;
        let mut traffic = Traffic {
            bench,
            laptop: laptop.clone(),
            laptop_ifindex,
            frame,
            generator: Generator::LiveFrames,
        };
        // One frame tells whether the kernel takes live frames (asked once a run).
        if let Some(g) = GENERATOR.get() {
            traffic.generator = *g;
        } else if let Err(e) = traffic.send(1, 1) {
            eprintln!("live frames refused ({e:#}): frames are sent as clones of a socket buffer");
            traffic.generator = Generator::Clones;
            traffic.send(1, 1)?;
        }
        GENERATOR.get_or_init(|| traffic.generator);
        Ok(traffic)
    }

    fn send(&mut self, frames: u32, chunk: u32) -> Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let live = [0u8; 64]; // headers come from the template; 64-byte frames
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(live.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.laptop_ifindex.to_ne_bytes());
        let _in = InNetns::enter(&self.laptop)?;
        let Traffic {
            bench,
            frame,
            generator,
            ..
        } = self;
        let mut left = frames;
        while left > 0 {
            let n = left.min(chunk);
            match generator {
                Generator::LiveFrames => {
                    bench
                        .xdp(PROG_BENCH_GEN)?
                        .test_run(TestRunOptions {
                            data_in: Some(&live),
                            ctx_in: Some(&ctx),
                            repeat: n,
                            attrs: TestRunAttrs::new().xdp_live_frames(64),
                            ..Default::default()
                        })
                        .context("BPF_PROG_RUN live frames")?;
                }
                Generator::Clones => {
                    bench
                        .tc(PROG_BENCH_GEN_TC)?
                        .test_run(TestRunOptions {
                            data_in: Some(frame),
                            repeat: n,
                            ..Default::default()
                        })
                        .context("BPF_PROG_RUN of the TC generator")?;
                }
            }
            left -= n;
        }
        Ok(())
    }

    /// Sends for `w.duration`; returns (frames sent per second, frames the pod got
    /// per second).
    fn measure(&mut self, new_flows: bool, w: Window) -> Result<(f64, f64)> {
        self.bench.set(BENCH_NEW_FLOWS, u32::from(new_flows))?;
        // Warm up: the first packets resolve whatever is lazy (flows, neighbours).
        self.send(w.chunk, w.chunk)?;
        thread::sleep(Duration::from_millis(100));
        // Not loaded, the path must carry (nearly) every frame: 256 frames at about
        // 4,000 a second, below every contender's rate. One that loses more than 5%
        // of them is broken, not slow, and its figure would mean nothing.
        let before = self.bench.sink_count()?;
        for _ in 0..32 {
            self.send(8, 8)?;
            thread::sleep(Duration::from_millis(2));
        }
        thread::sleep(Duration::from_millis(100));
        let paced = self.bench.sink_count()? - before;
        if paced < 243 {
            bail!(
                "the pod's sink counted {paced} of 256 frames sent at 4,000 a second ({}): the path loses frames unloaded",
                if new_flows {
                    "new flows"
                } else {
                    "one established flow"
                }
            );
        }
        let before = self.bench.sink_count()?;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < w.duration {
            self.send(w.chunk, w.chunk)?;
            sent += u64::from(w.chunk);
        }
        let secs = start.elapsed().as_secs_f64();
        thread::sleep(Duration::from_millis(100)); // what is still in flight
        let got = self.bench.sink_count()? - before;
        // A contender that delivers nothing measured nothing: a figure of 0 pps
        // would read as a (bad) result instead of a broken run.
        if got == 0 {
            bail!(
                "the pod's sink counted no frame of {sent} sent in {secs:.1} s ({}): nothing was delivered",
                if new_flows {
                    "new flows"
                } else {
                    "one established flow"
                }
            );
        }
        Ok((sent as f64 / secs, got as f64 / secs))
    }
}

/// The measurement is only worth reporting if lb took the path it is labelled
/// with: the agent's verdict counter for it covers (nearly) every delivered packet.
fn expect_path(t: &Topology, node: &str, path: &[u32], delivered: u64) -> Result<()> {
    let pins = t.dir().join("bpffs/lb").join(node);
    let verdicts = Maps::open_pinned(&pins)?.verdicts()?;
    let taken: u64 = path.iter().map(|r| verdicts[*r as usize].packets).sum();
    if (taken as f64) < 0.95 * delivered as f64 {
        let names: Vec<&str> = path.iter().map(|r| reason::NAMES[*r as usize]).collect();
        bail!(
            "{names:?} counted {taken} packets, the pod got {delivered}: lb did not take the path measured"
        );
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    /// The generator's own rate: frames counted and dropped by XDP on the node's
    /// uplink, no hop at all. Every other row is bound by it.
    Generator,
    Ceiling,
    /// The ceiling plus the flow state any stateful NAT hop keeps (a lookup per
    /// packet, one entry per new flow in lb's flow table): the floor of new flows.
    CeilingCt,
    PeerFloor,
    /// lb as by default, the pod running XDP on its end: XDP redirects into it.
    Lb,
    /// lb as by default, the pod running no XDP: TC hands packets over.
    LbTcPod,
    LbStack,
    Iptables,
    Nftables,
}

impl Contender {
    const ALL: [Contender; 9] = [
        Contender::Generator,
        Contender::Ceiling,
        Contender::CeilingCt,
        Contender::PeerFloor,
        Contender::Lb,
        Contender::LbTcPod,
        Contender::LbStack,
        Contender::Iptables,
        Contender::Nftables,
    ];

    fn label(self) -> &'static str {
        match self {
            Contender::Generator => "generator (XDP drop on the node's uplink)",
            Contender::Ceiling => "XDP_REDIRECT hop (ceiling; pod runs XDP)",
            Contender::CeilingCt => "XDP_REDIRECT hop + flow state (1 entry per new flow)",
            Contender::PeerFloor => "TC bpf_redirect_peer hop (pod without XDP)",
            Contender::Lb => "lb NodePort (pod runs XDP)",
            Contender::LbTcPod => "lb NodePort (pod without XDP)",
            Contender::LbStack => "lb NodePort, --to-pods stack",
            Contender::Iptables => "iptables (kube-proxy)",
            Contender::Nftables => "nftables (kube-proxy)",
        }
    }
}

/// Laptop, node and one pod holding the measured service's 10 endpoint addresses;
/// the contender installed on the node for `services` services. Returns the pps
/// (sent, delivered) for established and new flows. `ipv6`: the traffic is IPv6
/// (a dual-stack LAN and pod, the measured service IPv6 alone, its 10 endpoints
/// IPv6 addresses of the pod; `services` must be 1).
fn one_node(c: Contender, services: usize, w: Window, ipv6: bool) -> Result<[(f64, f64); 2]> {
    let mut t = Topology::new(if ipv6 { "bench6" } else { "bench" })?;
    let (s, pod) = if ipv6 {
        let s = dual::lan(&mut t)?;
        let pod = dual::pod(&mut t, &s.node, "pod", "lxc0", seeds::POD_IP, dual::POD_IP6)?;
        (s, pod)
    } else {
        let s = seeds::lan(&mut t)?;
        let pod = seeds::pod(&mut t, &s.node, "pod", "lxc0", seeds::POD_IP)?;
        (s, pod)
    };
    let pod_mac = t.mac(&pod, "eth0")?;
    if ipv6 {
        for a in scale::measured_endpoints6() {
            let a = a.to_string();
            if a != dual::POD_IP6 {
                t.ip(
                    &pod,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{a}/128"),
                        "dev",
                        "eth0",
                        "nodad",
                    ],
                )?;
                t.ip(
                    &s.node,
                    &["-6", "route", "add", &format!("{a}/128"), "dev", "lxc0"],
                )?;
            }
            t.neigh(&s.node, &a, pod_mac, "lxc0")?;
        }
    }
    for a in scale::measured_endpoints() {
        let a = a.to_string();
        if a != seeds::POD_IP {
            t.ip(&pod, &["addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
            t.ip(
                &s.node,
                &["route", "add", &format!("{a}/32"), "dev", "lxc0"],
            )?;
        }
        t.neigh(&s.node, &a, pod_mac, "lxc0")?;
    }
    // NAPI on the node's eth0 even with no XDP program on it (the kernel-stack
    // contenders), so frames the laptop's XDP sends are taken in.
    t.sh(&s.node, &["ethtool", "-K", "eth0", "gro", "on"])?;
    // The TC contenders' pod runs no XDP program (as a CNI makes it); the others'
    // counts at XDP, which also lets it take XDP frames.
    let pod_xdp = !matches!(c, Contender::PeerFloor | Contender::LbTcPod);
    let mut traffic = Traffic::new(
        &t,
        &s.laptop,
        &pod,
        pod_xdp,
        if ipv6 { dual::NODE_IP6 } else { seeds::NODE_IP },
        t.mac(&s.node, "eth0")?,
    )?;
    let dir = t.dir().to_path_buf();
    match c {
        Contender::Generator => {
            let _in = InNetns::enter(&s.node)?;
            traffic.bench.attach_xdp(PROG_BENCH_SINK, "eth0")?;
        }
        Contender::Ceiling | Contender::CeilingCt => {
            let lxc0 = t.ifindex(&s.node, "lxc0")?;
            traffic.bench.set(BENCH_REDIRECT_IFINDEX, lxc0)?;
            let _in = InNetns::enter(&s.node)?;
            let prog = if c == Contender::Ceiling {
                PROG_BENCH_REDIRECT
            } else {
                PROG_BENCH_REDIRECT_CT
            };
            traffic.bench.attach_xdp(prog, "eth0")?;
        }
        Contender::PeerFloor => {
            let lxc0 = t.ifindex(&s.node, "lxc0")?;
            traffic.bench.set(BENCH_REDIRECT_IFINDEX, lxc0)?;
            let _in = InNetns::enter(&s.node)?;
            traffic.bench.attach_tc(PROG_BENCH_REDIRECT_PEER, "eth0")?;
        }
        Contender::Lb | Contender::LbTcPod | Contender::LbStack => {
            let lb = Lb::new(&mut t)?;
            // The pod is declared, so the agent knows lxc0 as a pod's interface.
            let manifests = if ipv6 {
                lb.ok(&["ranges", "--service-cidr", dual::SERVICE_CIDRS])?;
                scale::lb_manifest6()
            } else {
                scale::lb_manifests(services)
            };
            lb.apply(&format!(
                "{manifests}apiVersion: v1\nkind: Pod\nmetadata:\n  name: sink\nspec:\n  nodeName: node1\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {}\n  podIPs: [{{ip: {}}}, {{ip: '{}'}}]\n",
                seeds::POD_IP,
                seeds::POD_IP,
                dual::POD_IP6
            ))?;
            // XDP on the node's veth uplink: the link is tuned for it (the generator
            // writes complete checksums; GRO gives eth0 NAPI), so the fast path is
            // what is measured.
            let extra: &[&str] = match c {
                Contender::LbStack => &["--to-pods", "stack", "--xdp", "native"],
                _ => &["--xdp", "native"],
            };
            lb.start_agent_with(&mut t, &s.node, "node1", &["eth0"], extra)?;
            // Its own cluster DNS service besides: at least `services`.
            let up = Topology::wait_for(Duration::from_secs(60), || {
                t.log("agent-node1")
                    .lines()
                    .filter(|l| l.contains("reconciled"))
                    .filter_map(|l| l.split("services=").nth(1)?.split(' ').next()?.parse().ok())
                    .any(|n: usize| n >= services)
                    .then_some(())
            });
            if up.is_none() {
                let log = t.log("agent-node1");
                bail!(
                    "the agent did not reconcile {services} services in 60 s; its last log line: {}",
                    log.lines().last().unwrap_or("(nothing)")
                );
            }
        }
        Contender::Iptables => {
            let f = dir.join("rules.ipt");
            std::fs::write(&f, scale::iptables_rules(services))?;
            t.sh(
                &s.node,
                &["iptables-restore", f.to_str().unwrap_or_default()],
            )?;
        }
        Contender::Nftables => {
            let f = dir.join("rules.nft");
            std::fs::write(&f, scale::nft_rules(services))?;
            t.sh(&s.node, &["nft", "-f", f.to_str().unwrap_or_default()])?;
        }
    }
    let established = traffic.measure(false, w)?;
    let new = traffic.measure(true, w)?;
    let delivered = traffic.bench.sink_count()?;
    match c {
        // XDP translates and redirects into the veth of the pod that runs XDP.
        Contender::Lb => expect_path(&t, "node1", &[reason::FWD_XDP_REDIRECT], delivered)?,
        // XDP translates, TC ingress hands the packet to the pod without XDP.
        Contender::LbTcPod => expect_path(&t, "node1", &[reason::FWD_TC_PEER], delivered)?,
        // XDP translates, the kernel routes to the pod's veth.
        Contender::LbStack => expect_path(
            &t,
            "node1",
            &[reason::NAT_NEW_FLOW, reason::NAT_ESTABLISHED],
            delivered,
        )?,
        _ => {}
    }
    drop(traffic);
    Ok([established, new])
}

/// What node 1 runs in the remote-pod rows.
#[derive(Clone, Copy)]
enum RemoteHop {
    /// The plain NAT hop (`lb_bench_nat_hop`): translation from a template, redirected
    /// back out of the uplink.
    Plain,
    /// The agent with these arguments, expected to forward under this verdict.
    Lb(&'static [&'static str], u32),
}

/// Two nodes and the laptop on a bridge; the service's one endpoint is a pod on
/// node 2; traffic goes to node 1's NodePort, node 1 runs `hop`; node 2 delivers to
/// its pod through its kernel stack (no agent there) in every row.
/// Returns (sent, delivered) pps for one established flow.
fn remote(hop: RemoteHop, w: Window) -> Result<(f64, f64)> {
    let mut t = Topology::new("benchr")?;
    let lan = multinode::lan(&mut t, 2, 1)?;
    let (node1, node2) = (lan.nodes[0].clone(), lan.nodes[1].clone());
    let lan_ns = lan.lan.clone();
    // Tuned for XDP: NAPI on the bridge's ports, so they take the frames XDP sends
    // (the generator writes complete checksums).
    for port in ["p-laptop", "p-node1", "p-node2"] {
        t.sh(&lan_ns, &["ethtool", "-K", port, "gro", "on"])?;
    }
    // The bridge knows where the nodes are (nothing has spoken yet) and every
    // neighbour is known, so the path is steady from the first frame.
    for (n, node) in [&node1, &node2].into_iter().enumerate() {
        let m = mac_text(t.mac(node, "eth0")?);
        t.sh(
            &lan_ns,
            &[
                "bridge",
                "fdb",
                "replace",
                &m,
                "dev",
                &format!("p-node{}", n + 1),
                "master",
                "static",
            ],
        )?;
    }
    t.neigh(
        &node1,
        &multinode::node_ip(1),
        t.mac(&node2, "eth0")?,
        "eth0",
    )?;
    let pod = lan.pods[1][0].clone();
    t.neigh(
        &node2,
        &multinode::pod_ip(1, 0),
        t.mac(&pod, "eth0")?,
        "lxc0",
    )?;
    let mut traffic = Traffic::new(
        &t,
        &lan.laptop,
        &pod,
        true,
        &multinode::node_ip(0),
        t.mac(&node1, "eth0")?,
    )?;
    let (agent_args, path) = match hop {
        RemoteHop::Lb(args, path) => (args, path),
        RemoteHop::Plain => {
            // The frame as lb's NodePort translation sends it on to node 2: to the
            // pod's address and target port, from node 1's address (the source is
            // masqueraded, as for any eTP Cluster NodePort to a remote pod).
            let mut out = Pkt::udp(
                &multinode::node_ip(0),
                40000,
                &multinode::pod_ip(1, 0),
                8080,
            )
            .payload(&[0u8; 20])
            .build();
            out[0..6].copy_from_slice(&t.mac(&node2, "eth0")?);
            out[6..12].copy_from_slice(&t.mac(&node1, "eth0")?);
            traffic.bench.set_frame(BENCH_FRAME_HOP, &out)?;
            let eth0 = t.ifindex(&node1, "eth0")?;
            traffic.bench.set(BENCH_REDIRECT_IFINDEX, eth0)?;
            {
                let _in = InNetns::enter(&node1)?;
                traffic.bench.attach_xdp(PROG_BENCH_NAT_HOP, "eth0")?;
            }
            let r = traffic.measure(false, w)?;
            drop(traffic);
            return Ok(r);
        }
    };
    let lb = Lb::new(&mut t)?;
    lb.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports:\n  - {{port: 80, protocol: UDP, targetPort: 8080, nodePort: {MEASURED_NODE_PORT}}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: n2p0\n  labels: {{app: web}}\nspec:\n  nodeName: node2\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {}\n",
        multinode::pod_ip(1, 0)
    ))?;
    lb.start_agent_with(&mut t, &node1, "node1", &["eth0"], agent_args)?;
    let r = traffic.measure(false, w)?;
    let delivered = traffic.bench.sink_count()?;
    expect_path(&t, "node1", &[path], delivered)?;
    drop(traffic);
    Ok(r)
}

/// How far below the generator's own rate a row is (established, new flows); a row
/// within 1.4x of it measures the generator, not the hop: said in the row.
fn headroom(c: Contender, r: &[(f64, f64); 2], generator: &[(f64, f64); 2]) -> String {
    if c == Contender::Generator {
        return "-".to_string();
    }
    let x = |i: usize| {
        let x = generator[i].1 / r[i].1;
        if x < 1.4 {
            format!("{x:.2}x (generator-bound)")
        } else {
            format!("{x:.2}x")
        }
    };
    format!("{}, {}", x(0), x(1))
}

/// [`one_node`], its figures printed as they come.
fn measured(c: Contender, n: usize, w: Window, ipv6: bool) -> Result<[(f64, f64); 2]> {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let r = one_node(c, n, w, ipv6).with_context(|| format!("{c:?} at {n} services, {family}"))?;
    eprintln!(
        "{n:>6} services {family}  {:<28} established {:>10.0} pps (sent {:>10.0})  new {:>10.0} pps (sent {:>10.0})",
        c.label(),
        r[0].1,
        r[0].0,
        r[1].1,
        r[1].0
    );
    Ok(r)
}

/// The IPv6 rows: one IPv6 NodePort service (10 endpoints), lb as by default for
/// both kinds of pod against the plain hop of its kind, and the generator's own
/// rate, under the IPv4 rows' rules (a row within 1.4x of the generator is marked
/// generator-bound).
fn ipv6_rows(w: Window, chart: &mut Chart) -> Result<Table> {
    let mut table = Table::new(
        "Live packets over IPv6: UDP through a node to a pod, 64-byte frames, delivered packets per second",
        &[
            "services x 10 endpoints",
            "contender",
            "established flow (pps)",
            "new flows (pps)",
            "generator / this (established, new)",
            "lb: this / the plain hop of its kind (established, new)",
        ],
    );
    let contenders = [
        Contender::Generator,
        Contender::Ceiling,
        Contender::PeerFloor,
        Contender::Lb,
        Contender::LbTcPod,
    ];
    let mut results = Vec::new();
    for c in contenders {
        results.push((c, measured(c, 1, w, true)?));
    }
    let of = |want: Contender| results.iter().find(|(c, _)| *c == want).map(|(_, r)| *r);
    let (Some(generator), Some(ceiling), Some(peer_floor)) = (
        of(Contender::Generator),
        of(Contender::Ceiling),
        of(Contender::PeerFloor),
    ) else {
        bail!("an IPv6 baseline is missing");
    };
    for (c, r) in &results {
        let hop = match c {
            Contender::Lb => Some(ceiling),
            Contender::LbTcPod => Some(peer_floor),
            _ => None,
        };
        table.row(vec![
            "1".to_string(),
            c.label().to_string(),
            format!("{:.0}", r[0].1),
            format!("{:.0}", r[1].1),
            headroom(*c, r, &generator),
            hop.map(|h| format!("{:.2}x, {:.2}x", r[0].1 / h[0].1, r[1].1 / h[1].1))
                .unwrap_or_else(|| "-".to_string()),
        ]);
        chart.bar(
            "IPv6, 1 svc",
            &format!("{}, established", c.label()),
            r[0].1 / 1e6,
        );
        chart.bar(
            "IPv6, 1 svc",
            &format!("{}, new flows", c.label()),
            r[1].1 / 1e6,
        );
    }
    Ok(table)
}

/// The value of the command-line argument `PREFIX=VALUE` (`prefix` with its `=`).
fn arg_value(prefix: &str) -> Option<String> {
    std::env::args().find_map(|a| a.strip_prefix(prefix).map(String::from))
}

fn main() -> Result<()> {
    assert!(lb_tests::is_root(), "run as root (namespaces, eBPF)");

    let quick = std::env::args().any(|a| a == "--quick");
    let (mut sizes, w): (Vec<usize>, Window) = if quick {
        (
            vec![1, 100],
            Window {
                chunk: 10_000,
                duration: Duration::from_millis(200),
            },
        )
    } else {
        (
            vec![1, 1_000, 10_000],
            Window {
                chunk: 50_000,
                duration: Duration::from_secs(2),
            },
        )
    };
    // For work on lb (e.g. under `perf record`): `--sizes=N,M` only these sizes;
    // `--lb-only`: the two plain hops and lb as by default (both kinds of pod), no
    // other contender, no remote pod; `--remote-only`: the remote-pod rows alone.
    if let Some(list) = arg_value("--sizes=") {
        sizes = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
    }
    let lb_only = std::env::args().any(|a| a == "--lb-only");
    let remote_only = std::env::args().any(|a| a == "--remote-only");
    // `--only=Lb,PeerFloor`: these contenders alone (their figures printed, no
    // table), `--secs=N` windows of N seconds: to look at one path under `perf`.
    let w = match arg_value("--secs=") {
        Some(s) => Window {
            duration: Duration::from_secs(s.parse()?),
            ..w
        },
        None => w,
    };
    if let Some(list) = arg_value("--only=") {
        for name in list.split(',') {
            let c = Contender::ALL
                .into_iter()
                .find(|c| format!("{c:?}") == name)
                .with_context(|| format!("no contender {name}: {:?}", Contender::ALL))?;
            for &n in &sizes {
                measured(c, n, w, false)?;
            }
        }
        return Ok(());
    }
    if remote_only {
        sizes.clear();
    }
    let contenders: &[Contender] = if lb_only {
        // The generator, the plain hops and lb as by default (the first six).
        &Contender::ALL[..6]
    } else {
        &Contender::ALL
    };
    let mut table = Table::new(
        "Live packets: UDP through a node to a pod, 64-byte frames, delivered packets per second",
        &[
            "services x 10 endpoints",
            "contender",
            "established flow (pps)",
            "new flows (pps)",
            "established: this / ceiling",
            "new flows: this / ceiling",
            "established: lb / this",
            "new flows: lb / this",
            "established: ns/packet above ceiling",
            "new flows: ns/packet above ceiling",
            "generator / this (established, new)",
            "lb: this / the plain hop of its kind (established, new)",
            "lb new flows: this / the XDP hop with flow state",
        ],
    );
    let mut chart = Chart::new("Live packets, delivered (Mpps)", "Mpps");
    for &n in &sizes {
        let mut results = Vec::new();
        for &c in contenders {
            results.push((c, measured(c, n, w, false)?));
        }
        let result = |want: Contender| {
            results
                .iter()
                .find(|(c, _)| *c == want)
                .map(|(_, r)| *r)
                .with_context(|| format!("no result for {}", want.label()))
        };
        let lb = result(Contender::Lb)?;
        let ceiling = result(Contender::Ceiling)?;
        let generator = result(Contender::Generator)?;
        let peer_floor = result(Contender::PeerFloor)?;
        let stateful = result(Contender::CeilingCt)?;
        // lb by default against the plain hop that delivers the same way: the XDP
        // hop for a pod that runs XDP, the TC hop for one that does not.
        let own_kind = |c: Contender, r: &[(f64, f64); 2]| {
            let hop = match c {
                Contender::Lb => ceiling,
                Contender::LbTcPod => peer_floor,
                _ => return "-".to_string(),
            };
            format!("{:.2}x, {:.2}x", r[0].1 / hop[0].1, r[1].1 / hop[1].1)
        };
        // Every packet's path includes the generator, two veth hops and the sink;
        // what a contender adds is its time per packet minus the ceiling's.
        let above = |pps: f64, ceil: f64| 1e9 / pps - 1e9 / ceil;
        for (c, r) in &results {
            table.row(vec![
                n.to_string(),
                c.label().to_string(),
                format!("{:.0}", r[0].1),
                format!("{:.0}", r[1].1),
                format!("{:.2}x", r[0].1 / ceiling[0].1),
                format!("{:.2}x", r[1].1 / ceiling[1].1),
                format!("{:.2}x", lb[0].1 / r[0].1),
                format!("{:.2}x", lb[1].1 / r[1].1),
                format!("{:.0}", above(r[0].1, ceiling[0].1)),
                format!("{:.0}", above(r[1].1, ceiling[1].1)),
                headroom(*c, r, &generator),
                own_kind(*c, r),
                if matches!(c, Contender::Lb | Contender::LbTcPod) {
                    format!("{:.2}x", r[1].1 / stateful[1].1)
                } else {
                    "-".to_string()
                },
            ]);
            chart.bar(
                &format!("{n} svc"),
                &format!("{}, established", c.label()),
                r[0].1 / 1e6,
            );
            chart.bar(
                &format!("{n} svc"),
                &format!("{}, new flows", c.label()),
                r[1].1 / 1e6,
            );
        }
    }
    let table6 = if remote_only {
        None
    } else {
        Some(ipv6_rows(w, &mut chart)?)
    };
    if lb_only {
        println!("{}", made_by());
        println!("{}", table.markdown());
        if let Some(t6) = &table6 {
            println!("{}", t6.markdown());
        }
        return Ok(());
    }
    let mut rtable = Table::new(
        "Remote pod: NodePort on node 1, the endpoint on node 2, one established flow",
        &[
            "node 1 forwards by",
            "delivered (pps)",
            "sent (pps)",
            "this / the plain NAT hop",
            "lb XDP_REDIRECT / this",
        ],
    );
    let plain = remote(RemoteHop::Plain, w).context("remote, plain NAT hop")?;
    let xdp = remote(
        RemoteHop::Lb(&["--xdp", "native"], reason::FWD_XDP_REDIRECT),
        w,
    )
    .context("remote, XDP_REDIRECT")?;
    let stack = remote(RemoteHop::Lb(&[], reason::FWD_TC_NEIGH), w).context("remote, TC")?;
    for (label, r) in [
        (
            "plain NAT hop: fixed translation + XDP_REDIRECT, no lookup (the ceiling)",
            plain,
        ),
        (
            "lb: bpf_fib_lookup + XDP_REDIRECT (--xdp native, tuned link)",
            xdp,
        ),
        (
            "lb: TC, bpf_fib_lookup + bpf_redirect_neigh (--xdp auto on a veth uplink)",
            stack,
        ),
    ] {
        rtable.row(vec![
            label.to_string(),
            format!("{:.0}", r.1),
            format!("{:.0}", r.0),
            format!("{:.2}x", r.1 / plain.1),
            format!("{:.2}x", xdp.1 / r.1),
        ]);
        chart.bar("remote pod", label, r.1 / 1e6);
    }
    if remote_only {
        println!("{}", made_by());
        println!("{}", rtable.markdown());
        return Ok(());
    }
    let md = format!(
        "{}\n{}\n{}\n{}",
        made_by(),
        table.markdown(),
        table6.map(|t| t.markdown()).unwrap_or_default(),
        rtable.markdown()
    );
    println!("{md}");
    report::save("live", &md, &chart)?;
    Ok(())
}
