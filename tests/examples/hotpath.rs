//! Hot-path cost under BPF_PROG_RUN: ns per packet for lb_xdp on an established
//! flow, a new flow's first packet... and on non-service traffic, beside the
//! parse-and-pass baseline measured in the same run, at 1, 1,000, 10,000 and 100,000 services
//! x 10 endpoints. Median of 5 runs of REPEAT packets each. A second table sets
//! IPv6 beside IPv4: single runs of established and new flows' first packets, at
//! the sizes IPv6's maps hold (4,096 frontends). Run as root:
//! `cargo xtask bench` (or `cargo run --release -p lb-tests --example hotpath`).

mod bench_object;
mod report;

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_common::{
    CT_DIR_ORIGINAL, CtValue, FlowKey, IFACE_EXTERNAL, IFACE_F_XDP_XMIT, PROG_BENCH_CT_FLOOR,
    PROG_XDP_BASELINE, PROTO_TCP, port_bit, reason,
};
use lb_tests::{
    Netns, Topology,
    packet::{Pkt, Pkt6, TCP_ACK, TCP_SYN},
    topology::InNetns,
};
use lb_user::{
    loader::{Dataplane, LoadConfig},
    plan::frontend,
    sizes::{MapSizes, Need},
    sync,
};

use crate::{
    bench_object::BenchObject,
    report::{Chart, Table},
};

#[path = "../tests/programmed/mod.rs"]
mod programmed;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;

/// The kernel's own ns per run of `frame`, repeated `repeat` times.
fn run_ns(prog: &Xdp, frame: &[u8], repeat: u32) -> f64 {
    let mut out = vec![0u8; frame.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    prog.test_run(opts)
        .expect("BPF_PROG_RUN")
        .duration
        .as_nanos() as f64
}

fn ns_per_packet(prog: &Xdp, frame: &[u8], repeat: u32) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS).map(|_| run_ns(prog, frame, repeat)).collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

/// Frontend `i`: 192.168.(1 + i / 30000).2, port 30000 + i % 30000 (NodePorts of
/// nodes with one address each).
fn frontend_of(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(192, 168, 1 + (i / 30_000) as u8, 2),
        30_000 + (i % 30_000) as u16,
    )
}

/// `n` NodePort services ([`frontend_of`]), 10 endpoints each.
fn fill(dp: &mut Dataplane, n: u32) {
    let plans: Vec<_> = (0..n)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 1)) + i);
            let (fa, fp) = frontend_of(i);
            programmed::port_plan(
                &format!("s{i}"),
                PROTO_TCP,
                vec![(frontend(fa, fp, PROTO_TCP), 0)],
                (0..10u16).map(|slot| (addr.into(), 8000 + slot)).collect(),
            )
        })
        .collect();
    programmed::program(&mut dp.maps, &plans);
}

/// Maps big enough for `n` services x 10 endpoints of either family (the agent's
/// defaults below).
fn config(n: u32, fib_redirect: bool) -> LoadConfig {
    LoadConfig {
        fib_redirect,
        // Either family's (the IPv6 table fills the IPv6 maps alone).
        sizes: MapSizes::holding(Need {
            frontends: u64::from(n),
            backends: u64::from(n) * 10,
            frontends6: u64::from(n),
            backends6: u64::from(n) * 10,
        }),
        ..LoadConfig::default()
    }
}

/// Median of the kernel's own duration of single runs (`repeat: 1`), one per frame.
fn ns_single(prog: &Xdp, frames: &[Vec<u8>]) -> f64 {
    let mut samples: Vec<f64> = frames.iter().map(|frame| run_ns(prog, frame, 1)).collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Under BPF_PROG_RUN every repeat runs on the frame the previous one left behind,
/// so after the first the frame is addressed to the backend. To keep every repeat
/// an established-flow packet, the flow's rewritten tuple gets an entry that
/// rewrites it back: repeats alternate between two established entries, each a
/// full lookup, refresh check, rewrite and count.
fn mirror_flow(dp: &mut Dataplane, client_port: u16, service_port: u16) {
    let entries = dp.maps.conntrack().expect("read conntrack");
    let (key, ct) = entries
        .into_iter()
        .find(|(k, v)| {
            k.sport_be == client_port.to_be()
                && k.dport_be == service_port.to_be()
                && v.direction == CT_DIR_ORIGINAL
        })
        .expect("the flow's original entry");
    let rewritten = FlowKey {
        saddr_be: ct.nat_saddr_be,
        daddr_be: ct.nat_daddr_be,
        sport_be: ct.nat_sport_be,
        dport_be: ct.nat_dport_be,
        ..key
    };
    let back = CtValue {
        nat_saddr_be: key.saddr_be,
        nat_daddr_be: key.daddr_be,
        nat_sport_be: key.sport_be,
        nat_dport_be: key.dport_be,
        ..ct
    };
    // Both in the assured table, where an answered flow's entries are.
    dp.maps.put_conntrack(&key, &ct).expect("assured entry");
    dp.maps
        .put_conntrack(&rewritten, &back)
        .expect("mirror entry");
    // The backend's port must pass the frontend-port filter, as a service port would.
    let (word, bit) = port_bit(u16::from_be(ct.nat_dport_be));
    let bits = dp
        .maps
        .read_entries()
        .expect("read maps")
        .ports
        .get(&word)
        .copied();
    dp.maps
        .write(&[sync::Op::PutPorts(word, bits.unwrap_or(0) | bit)])
        .expect("port bit");
}

const NEW_FLOWS: u16 = 5_000;

/// `n` NodePort services of one family on frontend `(node, 30000 + i)` with 10
/// endpoints each from `endpoint(i)`, through the agent's pipeline.
fn fill_family(dp: &mut Dataplane, n: u32, node: IpAddr, endpoint: impl Fn(u32) -> IpAddr) {
    let plans: Vec<_> = (0..n)
        .map(|i| {
            programmed::port_plan(
                &format!("s{i}"),
                PROTO_TCP,
                vec![(frontend(node, 30_000 + i as u16, PROTO_TCP), 0)],
                (0..10u16).map(|slot| (endpoint(i), 8000 + slot)).collect(),
            )
        })
        .collect();
    programmed::program(&mut dp.maps, &plans);
}

/// Single-run medians (ns) of a flow's first packet (SYNs of `flows` new flows) and
/// of an established packet of each (an ACK with 64 bytes), translation only
/// (`--no-xdp-redirect`), with the verdict counters checked: (new, established).
fn single_runs(dp: &mut Dataplane, syns: &[Vec<u8>], acks: &[Vec<u8>]) -> (f64, f64) {
    let count = |dp: &Dataplane, r: u32| dp.maps.verdicts().unwrap()[r as usize].packets;
    let (new0, est0) = (
        count(dp, reason::NAT_NEW_FLOW),
        count(dp, reason::NAT_ESTABLISHED),
    );
    let new = ns_single(dp.xdp().unwrap(), syns);
    let established = ns_single(dp.xdp().unwrap(), acks);
    let (new1, est1) = (
        count(dp, reason::NAT_NEW_FLOW),
        count(dp, reason::NAT_ESTABLISHED),
    );
    assert_eq!(new1 - new0, syns.len() as u64, "every SYN starts a flow");
    assert_eq!(est1 - est0, acks.len() as u64, "every ACK is established");
    (new, established)
}

/// IPv6 beside IPv4 at `n` services: single runs of both families' new and
/// established flows, each family alone in its maps.
fn family_row(n: u32, flows: u16) -> (f64, f64, f64, f64) {
    let node4: IpAddr = "192.168.1.2".parse().unwrap();
    let node6: IpAddr = "fd00:192:168:1::2".parse().unwrap();
    let port = 30_000 + (n - 1) as u16;
    let mut v4 = Dataplane::load_with(None, &config(n, false)).expect("load");
    fill_family(&mut v4, n, node4, |i| {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 1)) + i).into()
    });
    let mut v6 = Dataplane::load_with(None, &config(n, false)).expect("load");
    fill_family(&mut v6, n, node6, |i| {
        std::net::Ipv6Addr::from(0xfd00_0010_0244_0000_0000_0000_0000_0001u128 + u128::from(i))
            .into()
    });
    let frames4 = |flags: u8| -> Vec<Vec<u8>> {
        (0..flows)
            .map(|i| {
                Pkt::tcp("192.168.1.10", 50000 + i, "192.168.1.2", port, flags)
                    .payload(if flags == TCP_ACK { &[0u8; 64] } else { &[] })
                    .build()
            })
            .collect()
    };
    let frames6 = |flags: u8| -> Vec<Vec<u8>> {
        (0..flows)
            .map(|i| {
                Pkt6::tcp(
                    "fd00:192:168:1::10",
                    50000 + i,
                    "fd00:192:168:1::2",
                    port,
                    flags,
                )
                .payload(if flags == TCP_ACK { &[0u8; 64] } else { &[] })
                .build()
            })
            .collect()
    };
    let (new4, est4) = single_runs(&mut v4, &frames4(TCP_SYN), &frames4(TCP_ACK));
    let (new6, est6) = single_runs(&mut v6, &frames6(TCP_SYN), &frames6(TCP_ACK));
    (est4, est6, new4, new6)
}

/// A namespace whose routes answer lb's FIB lookups as a node's would: the backends
/// (10.244.0.1 and up, past 10.245 at 100,000 services: 10.0.0.0/8) and the
/// frontends and clients (192.168.0.0/16) through `up0`, to a neighbour with a fixed
/// MAC, forwarding on. (Where no route leads to the backend, the lookup ends early
/// and costs a third of a full answer.)
struct Routed {
    _t: Topology,
    node: Netns,
    /// `up0`'s ifindex.
    up: u32,
}

fn routed() -> Routed {
    let mut t = Topology::new("hotpath").expect("topology");
    let node = t.netns("node").expect("netns");
    let ip = |args: &[&str]| t.ip(&node, args).expect("ip");
    ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", "up0"]);
    ip(&["link", "set", "up0", "up"]);
    ip(&["link", "set", "up1", "up"]);
    ip(&["route", "add", "10.0.0.0/8", "via", "198.51.100.2"]);
    ip(&["route", "add", "192.168.0.0/16", "via", "198.51.100.2"]);
    t.neigh(&node, "198.51.100.2", [2, 0, 0, 0, 0, 2], "up0")
        .expect("neighbour");
    t.sh(&node, &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])
        .expect("forwarding");
    let up = t.ifindex(&node, "up0").expect("up0");
    Routed { _t: t, node, up }
}

/// Single-run medians (ns) with lb's own forwarding: the SYNs of new flows (each
/// a flow, a full FIB answer kept), and as many times the ACK of the one flow `syn`
/// starts (its FIB answer kept). Every frame must be translated and redirected by
/// XDP: (new, established).
fn forwarded_runs(dp: &mut Dataplane, syns: &[Vec<u8>], syn: &[u8], ack: &[u8]) -> (f64, f64) {
    let counts = |dp: &Dataplane| -> Vec<u64> {
        dp.maps
            .verdicts()
            .unwrap()
            .iter()
            .map(|v| v.packets)
            .collect()
    };
    let before = counts(dp);
    let new = ns_single(dp.xdp().unwrap(), syns);
    run_ns(dp.xdp().unwrap(), syn, 1);
    let acks = vec![ack.to_vec(); syns.len()];
    let established = ns_single(dp.xdp().unwrap(), &acks);
    let after = counts(dp);
    let counted: Vec<(usize, u64)> = (0..after.len())
        .map(|r| (r, after[r] - before[r]))
        .filter(|(_, n)| *n > 0)
        .collect();
    // Each counted under its verdict, and every one besides as sent on by XDP.
    let (flows, frames) = (syns.len() as u64, syns.len() as u64 * 2 + 1);
    let want = [
        (reason::NAT_NEW_FLOW, flows + 1),
        (reason::NAT_ESTABLISHED, flows),
        (reason::FWD_XDP_REDIRECT, frames),
    ];
    assert_eq!(
        counted,
        want.map(|(r, n)| (r as usize, n)),
        "every frame translated and redirected by XDP (reason, frames)"
    );
    (new, established)
}

/// ns per established-flow packet: the flow is created by one SYN, mirrored (see
/// [`mirror_flow`]), then `ack` repeated; every repeat must count as established.
fn established_ns(dp: &mut Dataplane, syn: &[u8], ack: &[u8], port: u16, repeat: u32) -> f64 {
    let mut out = vec![0u8; syn.len() + 64];
    // Twice: the first SYN writes the flow's reply entry, its retransmission the
    // original one (`conntrack`'s notes), which `mirror_flow` reads.
    for _ in 0..2 {
        dp.xdp()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(syn),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
    }
    mirror_flow(dp, 40000, port);
    let before = dp.maps.verdicts().unwrap()[reason::NAT_ESTABLISHED as usize].packets;
    let ns = ns_per_packet(dp.xdp().unwrap(), ack, repeat);
    let counted = dp.maps.verdicts().unwrap()[reason::NAT_ESTABLISHED as usize].packets;
    // Every repeat must have been an established-flow packet, or the figure
    // measures something else.
    assert!(
        counted - before >= u64::from(repeat) * RUNS as u64,
        "only {} of {} repeats were established-flow packets",
        counted - before,
        u64::from(repeat) * RUNS as u64
    );
    ns
}

fn main() {
    assert!(lb_tests::is_root(), "run as root (BPF_PROG_RUN)");
    let quick = std::env::args().any(|a| a == "--quick");
    let (sizes, repeat, new_flows): (&[u32], u32, u16) = if quick {
        (&[1, 100], 10_000, 200)
    } else {
        (&[1, 1_000, 10_000, 100_000], REPEAT, NEW_FLOWS)
    };
    let mut table = Table::new(
        "Hot path under BPF_PROG_RUN, ns per packet (median of 5 runs)",
        &[
            "services x 10 endpoints",
            "baseline parse+pass (ns)",
            "floor: baseline + one conntrack lookup (ns)",
            "floor / baseline",
            "lb non-service (ns)",
            "lb established, translation only (ns)",
            "translation only / baseline",
            "baseline, single runs (ns)",
            "lb established, forwarded by XDP, single runs (ns)",
            "forwarded / baseline (single runs)",
            "lb new flow, forwarded by XDP, single runs (ns)",
            "new flow / baseline (single runs)",
        ],
    );
    let mut chart = Chart::new("Hot path under BPF_PROG_RUN (ns per packet)", "ns");
    for &n in sizes {
        // lb as the agent runs it (XDP's own forwarding), where routes lead on.
        let routed = routed();
        let _in = InNetns::enter(&routed.node).expect("into the routed namespace");
        let mut dp = Dataplane::load_with(None, &config(n, true)).expect("load");
        dp.maps
            .set_iface(routed.up, IFACE_EXTERNAL | IFACE_F_XDP_XMIT)
            .expect("up0 takes XDP frames");
        // As the agent tells it each round: this namespace's routes go by
        // destination, so new flows to one backend share its FIB answer.
        let routing = lb_user::netif::RoutedByDestination::read().expect("read the routing");
        dp.set_routing(routing).expect("tell the programs");
        fill(&mut dp, n);
        // The last service inserted.
        let (addr, port) = frontend_of(n - 1);
        let node = addr.to_string();
        let syn = Pkt::tcp("192.168.1.10", 40000, &node, port, TCP_SYN).build();
        let ack = Pkt::tcp("192.168.1.10", 40000, &node, port, TCP_ACK)
            .payload(&[0u8; 64])
            .build();
        let other = Pkt::tcp("192.168.1.10", 40000, &node, 22, TCP_ACK)
            .payload(&[0u8; 64])
            .build();
        let syns: Vec<Vec<u8>> = (0..new_flows)
            .map(|i| Pkt::tcp("192.168.1.10", 50000 + i, &node, port, TCP_SYN).build())
            .collect();
        let mut bench = BenchObject::load().expect("load lb-bench");
        let baseline = ns_per_packet(bench.xdp(PROG_XDP_BASELINE).unwrap(), &ack, repeat);
        let baseline_single = ns_single(bench.xdp(PROG_XDP_BASELINE).unwrap(), &syns);
        let non_service = ns_per_packet(dp.xdp().unwrap(), &other, repeat);
        let (new_flow, forwarded) = forwarded_runs(&mut dp, &syns, &syn, &ack);
        // The same without XDP's own forwarding (`lb agent --no-xdp-redirect`):
        // translation alone, the packet then passed to the kernel.
        let mut plain = Dataplane::load_with(None, &config(n, false)).expect("load");
        fill(&mut plain, n);
        let translate_only = established_ns(&mut plain, &syn, &ack, port, repeat);
        // The floor of any conntrack kept in a BPF hash map: parse, one lookup that
        // finds the flow (checked by its counter), count, pass. The bench object has
        // its own conntrack: the flows lb made are copied into it.
        for (k, v) in plain.maps.conntrack().expect("read conntrack") {
            bench.put_conntrack(&k, &v).expect("copy a flow");
        }
        let before = bench.verdict_packets(reason::NAT_ESTABLISHED).unwrap();
        let floor = ns_per_packet(bench.xdp(PROG_BENCH_CT_FLOOR).unwrap(), &ack, repeat);
        let found = bench.verdict_packets(reason::NAT_ESTABLISHED).unwrap();
        assert!(
            found - before >= u64::from(repeat) * RUNS as u64,
            "the floor program must find the flow on every repeat"
        );
        table.row(vec![
            n.to_string(),
            format!("{baseline:.1}"),
            format!("{floor:.1}"),
            format!("{:.2}x", floor / baseline),
            format!("{non_service:.1}"),
            format!("{translate_only:.1}"),
            format!("{:.2}x", translate_only / baseline),
            format!("{baseline_single:.0}"),
            format!("{forwarded:.0}"),
            format!("{:.2}x", forwarded / baseline_single),
            format!("{new_flow:.0}"),
            format!("{:.2}x", new_flow / baseline_single),
        ]);
        let g = format!("{n} svc");
        chart.bar(&g, "baseline parse+pass", baseline);
        chart.bar(&g, "floor: + one conntrack lookup", floor);
        chart.bar(&g, "lb non-service", non_service);
        chart.bar(&g, "lb established, translation only", translate_only);
        chart.bar(&g, "baseline, single run", baseline_single);
        chart.bar(
            &g,
            "lb established, forwarded by XDP, single run",
            forwarded,
        );
        chart.bar(&g, "lb new flow, forwarded by XDP, single run", new_flow);
    }
    let mut md = table.markdown();
    // IPv6 beside IPv4, at the sizes IPv6's maps hold (4,096 frontends).
    let mut families = Table::new(
        "IPv6 beside IPv4 under BPF_PROG_RUN, single runs, translation only (ns, medians)",
        &[
            "services x 10 endpoints",
            "IPv4 established",
            "IPv6 established",
            "IPv6 / IPv4",
            "IPv4 new flow",
            "IPv6 new flow",
            "IPv6 / IPv4 (new)",
        ],
    );
    let family_sizes: &[u32] = if quick { &[1, 100] } else { &[1, 1_000, 4_000] };
    for &n in family_sizes {
        let (est4, est6, new4, new6) = family_row(n, new_flows);
        families.row(vec![
            n.to_string(),
            format!("{est4:.0}"),
            format!("{est6:.0}"),
            format!("{:.2}x", est6 / est4),
            format!("{new4:.0}"),
            format!("{new6:.0}"),
            format!("{:.2}x", new6 / new4),
        ]);
        let g = format!("{n} svc");
        chart.bar(&g, "IPv4 established, single run", est4);
        chart.bar(&g, "IPv6 established, single run", est6);
        chart.bar(&g, "IPv4 new flow, single run", new4);
        chart.bar(&g, "IPv6 new flow, single run", new6);
    }
    md.push('\n');
    md.push_str(&families.markdown());
    println!("{md}");
    report::save("hotpath", &md, &chart).expect("writing the report");
}
