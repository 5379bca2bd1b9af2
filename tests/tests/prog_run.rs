//! BPF_PROG_RUN tests of lb's programs on crafted frames: rows of (what, program,
//! frame in, expected verdict reason, expected frame out). Output frames are compared
//! byte for byte with frames built from scratch, so every checksum is checked.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    DELIVER_MAGIC, DeliverMeta, IFACE_EXTERNAL, IFACE_F_PEER, IFACE_POD, PROG_TC_EGRESS,
    PROG_TC_INGRESS, SVC_F_INTERNAL, reason,
};
use lb_tests::{
    Topology,
    packet::{self, PROTO_ICMP, Pkt, TCP_ACK, TCP_PSH, TCP_SYN, verify_checksums},
    seeds,
    topology::InNetns,
};
use lb_user::{
    loader::{Dataplane, LoadConfig, ToPods},
    plan::frontend,
};

mod programmed;
use programmed::{port_plan, program};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC as the kernel reports it back (-1).
const TC_UNSPEC: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: &str = "192.168.1.10";
const NODE: &str = "192.168.1.2";
const POD: &str = "10.244.0.2";
const CLUSTER_IP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30008;
/// A UDP NodePort to the ClusterIP's UDP 53 backend (10.244.0.2:5353).
const UDP_NODE_PORT: u16 = 30010;
const HAIRPIN: &str = "169.254.42.1";
const TC_ACT_SHOT: u32 = 2;

#[derive(Clone, Copy, Debug)]
enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

/// A data plane with private (unpinned) maps holding: NodePort 30008/TCP and
/// ClusterIP 10.96.0.10:80/TCP -> 10.244.0.2:80; UDP 53 on the ClusterIP and
/// NodePort 30010/UDP -> 10.244.0.2:5353; NodePort 30009 (TCP and UDP) with no
/// endpoints.
fn dataplane() -> Dataplane {
    dataplane_with(&LoadConfig::default())
}

fn dataplane_with(cfg: &LoadConfig) -> Dataplane {
    lb_tests::require_root();
    let mut dp = Dataplane::load_with(None, cfg).expect("load lb's eBPF object");
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let plans = [
        port_plan(
            "tcp",
            6,
            vec![
                (frontend(ip(NODE), NODE_PORT, 6), 0),
                (frontend(ip(CLUSTER_IP), 80, 6), SVC_F_INTERNAL),
            ],
            vec![(ip(POD), 80)],
        ),
        port_plan(
            "udp",
            17,
            vec![
                (frontend(ip(CLUSTER_IP), 53, 17), SVC_F_INTERNAL),
                (frontend(ip(NODE), UDP_NODE_PORT, 17), 0),
            ],
            vec![(ip(POD), 5353)],
        ),
        port_plan(
            "empty",
            6,
            vec![
                (frontend(ip(NODE), 30009, 6), 0),
                (frontend(ip(NODE), 30009, 17), 0),
            ],
            Vec::new(),
        ),
    ];
    program(&mut dp.maps, &plans);
    dp
}

/// Runs one frame through a program; returns (return value, output frame, the one
/// verdict reason whose counter moved).
fn run(dp: &mut Dataplane, prog: Prog, frame: &[u8]) -> (u32, Vec<u8>, u32) {
    let before = dp.maps.verdicts().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let res = match prog {
        Prog::Xdp => dp.xdp().unwrap().test_run(opts),
        Prog::TcIngress => dp.tc(PROG_TC_INGRESS).unwrap().test_run(opts),
        Prog::TcEgress => dp.tc(PROG_TC_EGRESS).unwrap().test_run(opts),
    }
    .expect("BPF_PROG_RUN");
    out.truncate(res.data_size_out as usize);
    let after = dp.maps.verdicts().unwrap();
    let moved: Vec<u32> = (0..reason::COUNT)
        .filter(|i| after[*i as usize].packets != before[*i as usize].packets)
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one verdict counter moves per packet, moved: {moved:?}"
    );
    (res.return_value, out, moved[0])
}

struct Row {
    what: &'static str,
    prog: Prog,
    input: Vec<u8>,
    reason: u32,
    /// None: the frame must come out unchanged.
    output: Option<Vec<u8>>,
}

fn check(dp: &mut Dataplane, rows: Vec<Row>) {
    for row in rows {
        let (ret, out, moved) = run(dp, row.prog, &row.input);
        let want_ret = match (row.prog, row.reason) {
            (Prog::Xdp, _) => XDP_PASS,
            (_, reason::REJECT_NO_BACKEND) => TC_ACT_REDIRECT,
            _ => TC_UNSPEC,
        };
        assert_eq!(ret, want_ret, "{}: return value", row.what);
        assert_eq!(
            reason::NAMES[moved as usize],
            reason::NAMES[row.reason as usize],
            "{}: verdict reason",
            row.what
        );
        let want = row.output.unwrap_or_else(|| row.input.clone());
        assert_eq!(out, want, "{}: output frame", row.what);
    }
}

#[test]
fn nodeport_flow_both_directions() {
    let mut dp = dataplane();
    let syn = Pkt::tcp(CLIENT, 40000, NODE, NODE_PORT, TCP_SYN);
    let data = Pkt::tcp(CLIENT, 40000, NODE, NODE_PORT, TCP_ACK | TCP_PSH)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let reply = Pkt::tcp(POD, 80, CLIENT, 40000, TCP_SYN | TCP_ACK);
    let odd_syn = Pkt::tcp(CLIENT, NODE_PORT, NODE, NODE_PORT, TCP_SYN);
    let odd_reply = Pkt::tcp(POD, 80, CLIENT, NODE_PORT, TCP_SYN | TCP_ACK);
    check(
        &mut dp,
        vec![
            Row {
                what: "SYN to NodePort: new flow, DNAT to the pod",
                prog: Prog::Xdp,
                input: syn.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(syn.rewritten(CLIENT, 40000, POD, 80).build()),
            },
            Row {
                what: "data on the same flow: established, same pod",
                prog: Prog::Xdp,
                input: data.build(),
                reason: reason::NAT_ESTABLISHED,
                output: Some(data.rewritten(CLIENT, 40000, POD, 80).build()),
            },
            Row {
                what: "reply from the pod at ingress: to no frontend port, passed at once",
                prog: Prog::TcIngress,
                input: reply.build(),
                reason: reason::PASS_NO_SERVICE,
                output: None,
            },
            Row {
                what: "a client whose own port is a frontend port: new flow",
                prog: Prog::Xdp,
                input: odd_syn.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(odd_syn.rewritten(CLIENT, NODE_PORT, POD, 80).build()),
            },
            Row {
                what: "its reply at ingress passes the port filter, is found, left for egress",
                prog: Prog::TcIngress,
                input: odd_reply.build(),
                reason: reason::PASS_REPLY_INGRESS,
                output: None,
            },
            Row {
                what: "reply from the pod at egress: source back to NODE:30008",
                prog: Prog::TcEgress,
                input: reply.build(),
                reason: reason::NAT_REPLY,
                output: Some(reply.rewritten(NODE, NODE_PORT, CLIENT, 40000).build()),
            },
            Row {
                what: "translated original direction seen at egress: untouched",
                prog: Prog::TcEgress,
                input: syn.rewritten(CLIENT, 40000, POD, 80).build(),
                reason: reason::PASS_NO_SERVICE,
                output: None,
            },
        ],
    );
}

#[test]
fn what_is_not_service_traffic_passes_untouched() {
    let mut dp = dataplane();
    let mut arp = packet::eth(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let mut ipv6 = packet::eth(0x86dd);
    ipv6.extend_from_slice(&[0x60; 40]);
    let mut icmp = Pkt::tcp(CLIENT, 0, NODE, 0, 0);
    icmp.proto = PROTO_ICMP;
    let rows = vec![
        Row {
            what: "ARP",
            prog: Prog::Xdp,
            input: arp,
            reason: reason::PASS_NOT_IPV4,
            output: None,
        },
        Row {
            what: "IPv6",
            prog: Prog::Xdp,
            input: ipv6,
            reason: reason::PASS_NOT_IPV4,
            output: None,
        },
        Row {
            what: "ICMP",
            prog: Prog::Xdp,
            input: icmp.build(),
            reason: reason::PASS_NOT_L4,
            output: None,
        },
        Row {
            what: "TCP to a port no service has",
            prog: Prog::Xdp,
            input: Pkt::tcp(CLIENT, 40000, NODE, 22, TCP_SYN).build(),
            reason: reason::PASS_NO_SERVICE,
            output: None,
        },
        Row {
            what: "TCP between other hosts",
            prog: Prog::TcIngress,
            input: Pkt::tcp("10.244.0.3", 5555, "10.244.0.9", 80, TCP_SYN).build(),
            reason: reason::PASS_NO_SERVICE,
            output: None,
        },
        Row {
            what: "UDP to the NodePort number (the service is TCP only)",
            prog: Prog::Xdp,
            input: Pkt::udp(CLIENT, 40000, NODE, NODE_PORT).build(),
            reason: reason::PASS_NO_SERVICE,
            output: None,
        },
        Row {
            what: "ClusterIP from an external interface: not served",
            prog: Prog::Xdp,
            input: Pkt::tcp(CLIENT, 40000, CLUSTER_IP, 80, TCP_SYN).build(),
            reason: reason::PASS_INTERNAL_ONLY,
            output: None,
        },
        Row {
            what: "service without endpoints: left to the kernel",
            prog: Prog::Xdp,
            input: Pkt::tcp(CLIENT, 40000, NODE, 30009, TCP_SYN).build(),
            reason: reason::PASS_NO_BACKEND,
            output: None,
        },
    ];
    check(&mut dp, rows);
}

#[test]
fn malformed_and_truncated_frames_pass_untouched() {
    let mut dp = dataplane();
    let syn = Pkt::tcp(CLIENT, 40000, NODE, NODE_PORT, TCP_SYN).build();
    let mut only_eth = packet::eth(0x0800);
    only_eth.extend_from_slice(&[0x45, 0, 0]); // 3 bytes of IPv4 header
    let mut short_ihl = syn.clone();
    short_ihl[14] = 0x44; // IHL 4 (16 bytes): below the minimum
    let mut not_v4 = syn.clone();
    not_v4[14] = 0x65; // version 6 in an IPv4 frame
    let mut later_fragment = Pkt::tcp(CLIENT, 40000, NODE, NODE_PORT, TCP_ACK);
    later_fragment.frag = 185; // offset 1480
    later_fragment.id = 0x0bad;
    let mut huge_ihl = syn.clone();
    huge_ihl[14] = 0x4f; // 60-byte header: the TCP header would lie beyond the frame
    let rows = vec![
        Row {
            what: "IPv4 header cut short",
            prog: Prog::Xdp,
            input: only_eth,
            reason: reason::PASS_MALFORMED,
            output: None,
        },
        Row {
            what: "TCP header cut short",
            prog: Prog::Xdp,
            input: syn[..14 + 20 + 10].to_vec(),
            reason: reason::PASS_MALFORMED,
            output: None,
        },
        Row {
            what: "IHL below 5",
            prog: Prog::Xdp,
            input: short_ihl,
            reason: reason::PASS_MALFORMED,
            output: None,
        },
        Row {
            what: "IP version not 4",
            prog: Prog::Xdp,
            input: not_v4,
            reason: reason::PASS_MALFORMED,
            output: None,
        },
        Row {
            what: "IHL past the frame",
            prog: Prog::Xdp,
            input: huge_ihl,
            reason: reason::PASS_MALFORMED,
            output: None,
        },
        Row {
            what: "later fragment whose first was never seen",
            prog: Prog::Xdp,
            input: later_fragment.build(),
            reason: reason::PASS_FRAGMENT,
            output: None,
        },
        Row {
            what: "TCP header cut short at TC",
            prog: Prog::TcIngress,
            input: syn[..14 + 20 + 10].to_vec(),
            reason: reason::PASS_MALFORMED,
            output: None,
        },
    ];
    check(&mut dp, rows);
}

#[test]
fn ip_options_udp_checksums_and_clusterip_from_pods() {
    let mut dp = dataplane();
    let mut opts = Pkt::tcp(CLIENT, 40001, NODE, NODE_PORT, TCP_SYN);
    opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let udp = Pkt::udp("10.244.0.3", 5000, CLUSTER_IP, 53);
    let mut udp_none = Pkt::udp("10.244.0.3", 5001, CLUSTER_IP, 53);
    udp_none.udp_no_checksum = true;
    let tcp = Pkt::tcp("10.244.0.3", 41000, CLUSTER_IP, 80, TCP_SYN);
    // Pods live behind the interface BPF_PROG_RUN reports (loopback, ifindex 1).
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let rows = vec![
        Row {
            what: "IPv4 options: L4 found past them, translated",
            prog: Prog::Xdp,
            input: opts.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(opts.rewritten(CLIENT, 40001, POD, 80).build()),
        },
        Row {
            what: "UDP to a ClusterIP from a pod: translated, checksum updated",
            prog: Prog::TcIngress,
            input: udp.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(udp.rewritten("10.244.0.3", 5000, POD, 5353).build()),
        },
        Row {
            what: "UDP with checksum 0: translated, checksum stays 0",
            prog: Prog::TcIngress,
            input: udp_none.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(udp_none.rewritten("10.244.0.3", 5001, POD, 5353).build()),
        },
        Row {
            what: "UDP with checksum 0 through XDP: stays 0",
            prog: Prog::Xdp,
            input: udp_none.build(),
            reason: reason::NAT_ESTABLISHED,
            output: Some(udp_none.rewritten("10.244.0.3", 5001, POD, 5353).build()),
        },
        Row {
            what: "TCP to a ClusterIP from a pod interface",
            prog: Prog::TcIngress,
            input: tcp.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(tcp.rewritten("10.244.0.3", 41000, POD, 80).build()),
        },
        Row {
            what: "UDP reply at egress: source back to the ClusterIP",
            prog: Prog::TcEgress,
            input: Pkt::udp(POD, 5353, "10.244.0.3", 5000).build(),
            reason: reason::NAT_REPLY,
            output: Some(Pkt::udp(CLUSTER_IP, 53, "10.244.0.3", 5000).build()),
        },
    ];
    for r in &rows {
        if let Some(o) = &r.output {
            verify_checksums(o)
                .unwrap_or_else(|e| panic!("{}: the expected frame itself is wrong: {e}", r.what));
        }
    }
    check(&mut dp, rows);
}

#[test]
fn per_service_and_per_backend_counters_count_translated_packets() {
    let mut dp = dataplane();
    let before = (
        dp.maps.service_counters(1).unwrap(),
        dp.maps.backend_counters(1).unwrap(),
    );
    for port in 0..3u16 {
        let f = Pkt::tcp(CLIENT, 42000 + port, NODE, NODE_PORT, TCP_SYN).build();
        let (_, _, r) = run(&mut dp, Prog::Xdp, &f);
        assert_eq!(r, reason::NAT_NEW_FLOW);
    }
    let after = (
        dp.maps.service_counters(1).unwrap(),
        dp.maps.backend_counters(1).unwrap(),
    );
    assert_eq!(after.0.packets - before.0.packets, 3);
    assert_eq!(after.1.packets - before.1.packets, 3);
    assert_eq!(
        after.0.bytes - before.0.bytes,
        3 * 40,
        "IPv4 bytes of three bare SYNs"
    );
}

#[test]
fn a_service_without_endpoints_answers_port_unreachable_to_pods() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let syn = Pkt::tcp("10.244.0.3", 41000, NODE, 30009, TCP_SYN).build();
    let udp = Pkt::udp("10.244.0.3", 41000, NODE, 30009).build();
    let answer = packet::port_unreachable(&syn);
    assert_eq!(
        packet::checksum(&[&answer[14..34]]),
        0,
        "the expected answer itself is well formed"
    );
    check(
        &mut dp,
        vec![
            Row {
                what: "TCP SYN from a pod: ICMP port unreachable from the service address",
                prog: Prog::TcIngress,
                input: syn,
                reason: reason::REJECT_NO_BACKEND,
                output: Some(answer),
            },
            Row {
                what: "UDP from a pod: the same answer",
                prog: Prog::TcIngress,
                input: udp.clone(),
                reason: reason::REJECT_NO_BACKEND,
                output: Some(packet::port_unreachable(&udp)),
            },
        ],
    );
}

#[test]
fn fragments_follow_the_flow_of_their_first_fragment() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
    // A 1,208-byte UDP datagram to a NodePort, sent as 1,008 + 200 bytes.
    let mut to_np = Pkt::udp(CLIENT, 40100, NODE, UDP_NODE_PORT).payload(&payload);
    to_np.id = 0x1001;
    let [first, later] = to_np.fragments(1008);
    let [first_out, later_out] = to_np.rewritten(CLIENT, 40100, POD, 5353).fragments(1008);
    // The answer, fragmented too, back to the service address at egress.
    let mut reply = Pkt::udp(POD, 5353, CLIENT, 40100).payload(&payload);
    reply.id = 0x2002;
    let [r_first, r_later] = reply.fragments(504);
    let [r_first_out, r_later_out] = reply
        .rewritten(NODE, UDP_NODE_PORT, CLIENT, 40100)
        .fragments(504);
    // TCP from a pod to a ClusterIP (TC ingress), 20-byte header + 580 bytes.
    let mut tcp =
        Pkt::tcp("10.244.0.3", 41500, CLUSTER_IP, 80, TCP_ACK | TCP_PSH).payload(&payload[..580]);
    tcp.id = 0x3003;
    let [t_first, t_later] = tcp.fragments(200);
    let [t_first_out, t_later_out] = tcp.rewritten("10.244.0.3", 41500, POD, 80).fragments(200);
    // A datagram whose first fragment started no flow (no endpoints), one to no
    // service, and a later fragment whose first never came.
    let mut no_ep = Pkt::udp(CLIENT, 40200, NODE, 30009).payload(&payload);
    no_ep.id = 0x4004;
    let [ne_first, ne_later] = no_ep.fragments(1008);
    let mut other = Pkt::udp(CLIENT, 40300, NODE, 9999).payload(&payload);
    other.id = 0x5005;
    let [o_first, o_later] = other.fragments(1008);
    let mut orphan = Pkt::udp(CLIENT, 40100, NODE, UDP_NODE_PORT).payload(&payload);
    orphan.id = 0x6006;
    let [_, orphan_later] = orphan.fragments(1008);
    let rows = vec![
        Row {
            what: "first fragment to a NodePort: new flow, ports and L4 checksum rewritten",
            prog: Prog::Xdp,
            input: first,
            reason: reason::NAT_NEW_FLOW,
            output: Some(first_out),
        },
        Row {
            what: "its later fragment: the same flow, addresses rewritten",
            prog: Prog::Xdp,
            input: later,
            reason: reason::NAT_ESTABLISHED,
            output: Some(later_out),
        },
        Row {
            what: "first fragment of the reply at egress: back to the NodePort",
            prog: Prog::TcEgress,
            input: r_first,
            reason: reason::NAT_REPLY,
            output: Some(r_first_out),
        },
        Row {
            what: "later fragment of the reply at egress",
            prog: Prog::TcEgress,
            input: r_later,
            reason: reason::NAT_REPLY,
            output: Some(r_later_out),
        },
        Row {
            what: "TCP first fragment from a pod to a ClusterIP (TC)",
            prog: Prog::TcIngress,
            input: t_first,
            reason: reason::NAT_NEW_FLOW,
            output: Some(t_first_out),
        },
        Row {
            what: "TCP later fragment (TC): addresses only",
            prog: Prog::TcIngress,
            input: t_later,
            reason: reason::NAT_ESTABLISHED,
            output: Some(t_later_out),
        },
        Row {
            what: "first fragment to a service without endpoints: left to the kernel",
            prog: Prog::Xdp,
            input: ne_first,
            reason: reason::PASS_NO_BACKEND,
            output: None,
        },
        Row {
            what: "its later fragment never starts a flow",
            prog: Prog::Xdp,
            input: ne_later,
            reason: reason::PASS_FRAGMENT,
            output: None,
        },
        Row {
            what: "first fragment to no service",
            prog: Prog::Xdp,
            input: o_first,
            reason: reason::PASS_NO_SERVICE,
            output: None,
        },
        Row {
            what: "its later fragment: no service either",
            prog: Prog::Xdp,
            input: o_later,
            reason: reason::PASS_NO_SERVICE,
            output: None,
        },
        Row {
            what: "a later fragment before (or without) its first: passed unchanged",
            prog: Prog::Xdp,
            input: orphan_later,
            reason: reason::PASS_FRAGMENT,
            output: None,
        },
    ];
    // Expected frames are built from scratch: the first fragment's L4 checksum is
    // computed over the whole rewritten datagram, so an incremental update that
    // missed the ports or the pseudo-header would not match.
    check(&mut dp, rows);
}

#[test]
fn packets_lb_forwards_itself_lose_one_ttl() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    // The pod reaches itself through its ClusterIP: hairpin, sent straight back.
    let hairpin = Pkt::tcp(POD, 42000, CLUSTER_IP, 80, TCP_SYN);
    let (ret, out, moved) = run(&mut dp, Prog::TcIngress, &hairpin.build());
    let mut want = hairpin.rewritten(HAIRPIN, 42000, POD, 80);
    want.ttl = 63;
    let mut want = want.build();
    // Sent back where it came from: the frame's MACs swapped.
    let macs: Vec<u8> = want[6..12].iter().chain(&want[..6]).copied().collect();
    want[..12].copy_from_slice(&macs);
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_REDIRECT, "nat_new_flow")
    );
    assert_eq!(
        out, want,
        "hairpin: translated, TTL 64 -> 63, checksum updated"
    );
    verify_checksums(&out).unwrap();

    // With no hop left it is dropped, as a router would.
    let mut last_hop = Pkt::tcp(POD, 42001, CLUSTER_IP, 80, TCP_SYN);
    last_hop.ttl = 1;
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &last_hop.build());
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_SHOT, "drop_ttl_exceeded")
    );

    // A DNAT flow left to the kernel's stack keeps its TTL: the stack routes it
    // (and lowers the TTL, or answers "time exceeded" itself).
    let mut dnat = Pkt::tcp(CLIENT, 42002, NODE, NODE_PORT, TCP_SYN);
    dnat.ttl = 1;
    check(
        &mut dp,
        vec![Row {
            what: "NodePort at XDP with TTL 1: translated for the stack, TTL untouched",
            prog: Prog::Xdp,
            input: dnat.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(dnat.rewritten(CLIENT, 42002, POD, 80).build()),
        }],
    );
}

#[test]
fn xdp_hands_packets_for_a_local_pod_over_as_to_pods_says() {
    // A node namespace whose FIB knows the pod: a route and a neighbour entry on
    // lxc0, whose peer is the pod's eth0. The NodePort's SYN enters on eth0.
    lb_tests::require_root();
    let mut t = Topology::new("prdeliver").unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc0", POD).unwrap();
    let (pod_mac, lxc_mac) = (
        t.mac(&pod, "eth0").unwrap(),
        t.mac(&s.node, "lxc0").unwrap(),
    );
    t.neigh(&s.node, POD, pod_mac, "lxc0").unwrap();
    let (eth0, lxc0) = (
        t.ifindex(&s.node, "eth0").unwrap(),
        t.ifindex(&s.node, "lxc0").unwrap(),
    );
    let _in = InNetns::enter(&s.node).unwrap();

    let syn = Pkt::tcp(CLIENT, 42100, NODE, NODE_PORT, TCP_SYN);
    let for_stack = syn.rewritten(CLIENT, 42100, POD, 80).build();
    let mut hop = syn.rewritten(CLIENT, 42100, POD, 80);
    hop.ttl = 63;
    let hop = hop.build();
    let mut redirected = hop.clone();
    redirected[..6].copy_from_slice(&pod_mac);
    redirected[6..12].copy_from_slice(&lxc_mac);
    let mark = DeliverMeta {
        magic: DELIVER_MAGIC,
        ifindex: lxc0,
        dmac: pod_mac,
        smac: lxc_mac,
    };
    // SAFETY: plain repr(C) data without padding (20 bytes, checked in lb-common).
    let mark: [u8; 20] = unsafe { std::mem::transmute(mark) };
    let marked: Vec<u8> = mark.iter().chain(&hop).copied().collect();
    const XDP_REDIRECT: u32 = 4;
    let cases = [
        (
            "peer, a veth with its peer in the pod: translated, one hop less, marked for TC",
            ToPods::Peer,
            IFACE_POD | IFACE_F_PEER,
            XDP_PASS,
            marked,
            &[reason::NAT_NEW_FLOW][..],
        ),
        (
            "peer, a pod interface that is no such veth: left to the stack, unmarked",
            ToPods::Peer,
            IFACE_POD,
            XDP_PASS,
            for_stack.clone(),
            &[reason::NAT_NEW_FLOW][..],
        ),
        (
            "stack: left to the stack, unmarked",
            ToPods::Stack,
            IFACE_POD | IFACE_F_PEER,
            XDP_PASS,
            for_stack,
            &[reason::NAT_NEW_FLOW][..],
        ),
        (
            "xdp: redirected into the veth with the pod's MAC",
            ToPods::Xdp,
            IFACE_POD | IFACE_F_PEER,
            XDP_REDIRECT,
            redirected,
            &[reason::NAT_NEW_FLOW, reason::FWD_XDP_REDIRECT][..],
        ),
    ];
    for (what, to_pods, role, want_ret, want_out, want_reasons) in cases {
        let mut dp = dataplane_with(&LoadConfig {
            to_pods,
            ..LoadConfig::default()
        });
        dp.maps.set_iface(lxc0, role).unwrap();
        let before = dp.maps.verdicts().unwrap();
        let frame = syn.build();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; no metadata in.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&eth0.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let res = dp
            .xdp()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("BPF_PROG_RUN");
        // The kernel returns the metadata in front of the frame.
        out.truncate(res.data_size_out as usize);
        assert_eq!(res.return_value, want_ret, "{what}: return value");
        assert_eq!(out, want_out, "{what}: output (metadata, frame)");
        let after = dp.maps.verdicts().unwrap();
        let moved: Vec<&str> = (0..reason::COUNT as usize)
            .filter(|i| after[*i].packets != before[*i].packets)
            .map(|i| reason::NAMES[i])
            .collect();
        let want: Vec<&str> = want_reasons
            .iter()
            .map(|r| reason::NAMES[*r as usize])
            .collect();
        assert_eq!(moved, want, "{what}: counters");
    }
}

#[test]
fn only_a_local_pod_landing_on_itself_is_a_hairpin() {
    // A packet from outside the node (a pod of another node, through its NodePort)
    // whose source is the backend chosen: translated as any other client's, not
    // sent back where it came from from the hairpin address.
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_EXTERNAL).unwrap();
    let syn = Pkt::tcp(POD, 42010, NODE, NODE_PORT, TCP_SYN);
    check(
        &mut dp,
        vec![Row {
            what: "from an external interface, source = backend: plain DNAT",
            prog: Prog::TcIngress,
            input: syn.build(),
            reason: reason::NAT_NEW_FLOW,
            output: Some(syn.rewritten(POD, 42010, POD, 80).build()),
        }],
    );
}
