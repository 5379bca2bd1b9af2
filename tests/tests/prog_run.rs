//! BPF_PROG_RUN tests of lb's programs on crafted frames: rows of (what, program,
//! frame in, expected verdict reason, expected frame out). Output frames are compared
//! byte for byte with frames built from scratch, so every checksum is checked.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    CtTimeouts, CtValue, DeliverMeta, FlowKey, IFACE_EXTERNAL, IFACE_F_PEER, IFACE_POD,
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, PROTO_TCP, ROUTE_TTL_MS, SVC_F_EXTERNAL_LOCAL,
    SVC_F_INTERNAL, reason,
};
use lb_tests::{
    Topology,
    packet::{
        self, PROTO_ICMP, Pkt, Pkt6, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, partial_checksum,
        verify_checksums,
    },
    seeds,
    topology::InNetns,
};
use lb_user::{
    loader::{Dataplane, LoadConfig, ToPods},
    plan::frontend,
};

mod programmed;
use programmed::{port_plan, program};

const XDP_DROP: u32 = 1;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

/// A data plane with private (unpinned) maps holding: NodePort 30008/TCP and
/// ClusterIP 10.96.0.10:80/TCP -> 10.244.0.2:80; UDP 53 on the ClusterIP and
/// NodePort 30010/UDP -> 10.244.0.2:5353; NodePort 30009 (TCP and UDP) with no
/// endpoints.
///
/// The test's thread moves first to a network namespace of its own (only `lo`): the
/// programs' FIB lookups then find no route whatever the host's routing table says,
/// so every row means the same on every machine.
fn dataplane() -> Dataplane {
    own_netns();
    dataplane_with(&LoadConfig::default())
}

/// Moves this thread (a test's own) into a new, empty network namespace; later
/// calls keep it there.
fn own_netns() {
    thread_local!(static MOVED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if MOVED.with(|m| m.replace(true)) {
        return;
    }
    lb_tests::require_root();
    // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

fn dataplane_with(cfg: &LoadConfig) -> Dataplane {
    lb_tests::require_root();
    let mut dp = Dataplane::load_with(None, cfg).expect("load lb's eBPF object");
    let ip = |s: &str| IpAddr::V4(s.parse().unwrap());
    let ip6 = |s: &str| IpAddr::V6(s.parse().unwrap());
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
        // IPv6 twins on the same ports: NodePort [NODE6]:30008/TCP and
        // [CLUSTER_IP6]:80/TCP -> [POD6]:80; [CLUSTER_IP6]:53/UDP and NodePort
        // [NODE6]:30010/UDP -> [POD6]:5353.
        port_plan(
            "tcp6",
            6,
            vec![
                (frontend(ip6(NODE6), NODE_PORT, 6), 0),
                (frontend(ip6(CLUSTER_IP6), 80, 6), SVC_F_INTERNAL),
            ],
            vec![(ip6(POD6), 80)],
        ),
        port_plan(
            "udp6",
            17,
            vec![
                (frontend(ip6(CLUSTER_IP6), 53, 17), SVC_F_INTERNAL),
                (frontend(ip6(NODE6), UDP_NODE_PORT, 17), 0),
            ],
            vec![(ip6(POD6), 5353)],
        ),
        // NodePort [NODE6]:30009 (TCP and UDP) with no endpoints.
        port_plan(
            "empty6",
            6,
            vec![
                (frontend(ip6(NODE6), 30009, 6), 0),
                (frontend(ip6(NODE6), 30009, 17), 0),
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
    let (ret, out, moved) = run_counted(dp, prog, frame, None);
    assert_eq!(
        moved.len(),
        1,
        "exactly one verdict counter moves per packet, moved: {moved:?}"
    );
    let code = reason::NAMES.iter().position(|n| *n == moved[0]).unwrap();
    (ret, out, code as u32)
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

/// The kernel walks at most 1,000,000 instructions to verify a program; the TC
/// ingress program once stood at 992,992 (its ICMP path inlined), so that any
/// change to it, or a kernel whose verifier prunes less, would have failed to load
/// the agent. Each program keeps a fifth of the limit free.
#[test]
fn every_program_leaves_the_verifier_a_fifth_of_its_limit() {
    own_netns();
    let dp = dataplane();
    let counts = dp.verified_insns();
    eprintln!("verified instructions: {counts:?}");
    for name in [PROG_XDP, PROG_TC_INGRESS, PROG_TC_EGRESS] {
        assert!(
            counts.iter().any(|(n, _)| n == name),
            "no verifier count for {name}: {counts:?}"
        );
    }
    for (name, n) in &counts {
        assert!(
            *n <= 800_000,
            "{name}: the verifier walked {n} instructions, past 80% of its 1,000,000 limit"
        );
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
            reason: reason::PASS_NOT_IP,
            output: None,
        },
        Row {
            what: "IPv6 whose payload length runs past the frame",
            prog: Prog::Xdp,
            input: ipv6,
            reason: reason::PASS_MALFORMED,
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

/// As IPv4's (below), over IPv6: ICMPv6 "port unreachable" from the service
/// address, as ip6tables' REJECT answers for kube-proxy.
#[test]
fn an_ipv6_service_without_endpoints_answers_icmpv6_port_unreachable_to_pods() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let syn = Pkt6::tcp(POD6_CLIENT, 41000, NODE6, 30009, TCP_SYN).build();
    let udp = Pkt6::udp(POD6_CLIENT, 41000, NODE6, 30009)
        .payload(&[1; 64])
        .build();
    let answer = packet::port_unreachable6(&syn);
    let mut multicast = Pkt6::udp("ff02::1", 41000, NODE6, 30009).build();
    multicast[0] = 0x33; // a multicast destination MAC too
    check(
        &mut dp,
        vec![
            Row {
                what: "TCP SYN from a pod: ICMPv6 port unreachable from the service address",
                prog: Prog::TcIngress,
                input: syn,
                reason: reason::REJECT_NO_BACKEND,
                output: Some(answer),
            },
            Row {
                what: "UDP from a pod (longer than the answer: cut): the same answer",
                prog: Prog::TcIngress,
                input: udp.clone(),
                reason: reason::REJECT_NO_BACKEND,
                output: Some(packet::port_unreachable6(&udp)),
            },
            Row {
                what: "from a multicast source: no answer, passed",
                prog: Prog::TcIngress,
                input: multicast,
                reason: reason::PASS_NO_BACKEND,
                output: None,
            },
        ],
    );
    // As netfilter's REJECT: no answer to a packet whose checksum is wrong.
    let mut bad = udp;
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &bad);
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_SHOT, "drop_bad_checksum"),
        "UDP whose checksum is wrong"
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
    let mut tcp = Pkt::tcp("10.244.0.3", 41500, CLUSTER_IP, 80, TCP_SYN).payload(&payload[..580]);
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
    xdp_hand_over(false);
}

/// As IPv4's: an IPv6 NodePort packet for a local pod is marked for TC (peer,
/// where the kernel keeps XDP metadata), left to the stack, or redirected into the
/// veth (xdp), one hop less when sent on by lb.
#[test]
fn xdp_hands_ipv6_packets_for_a_local_pod_over_as_to_pods_says() {
    xdp_hand_over(true);
}

/// XDP's return value and what it leaves (any metadata in front of the frame) for
/// `frame` arriving on interface `ingress` (of the namespace the thread is in).
fn xdp_from(dp: &mut Dataplane, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex; no metadata in.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let res = dp
        .xdp()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_RUN");
    // The kernel returns the metadata in front of the frame.
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// The hand-over cases of `--to-pods` for a NodePort SYN of the family (`ipv6`).
fn xdp_hand_over(ipv6: bool) {
    // A node namespace whose FIB knows the pod: a route and a neighbour entry on
    // lxc0, whose peer is the pod's eth0. The NodePort's SYN enters on eth0.
    lb_tests::require_root();
    let mut t = Topology::new(if ipv6 { "prdeliver6" } else { "prdeliver" }).unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc0", POD).unwrap();
    let (pod_mac, lxc_mac) = (
        t.mac(&pod, "eth0").unwrap(),
        t.mac(&s.node, "lxc0").unwrap(),
    );
    t.neigh(&s.node, POD, pod_mac, "lxc0").unwrap();
    if ipv6 {
        // IPv6 routes through the node only where it forwards IPv6 (the FIB lookup
        // says "forwarding disabled" otherwise).
        t.sysctl(&s.node, "net.ipv6.conf.all.forwarding", "1")
            .unwrap();
        t.sh(&s.node, &["ip", "-6", "route", "add", POD6, "dev", "lxc0"])
            .unwrap();
        t.neigh(&s.node, POD6, pod_mac, "lxc0").unwrap();
    }
    let (eth0, lxc0) = (
        t.ifindex(&s.node, "eth0").unwrap(),
        t.ifindex(&s.node, "lxc0").unwrap(),
    );
    let _in = InNetns::enter(&s.node).unwrap();

    // The SYN as sent, as translated for the stack, as sent on by lb (one hop less).
    let (syn, for_stack, hop) = if ipv6 {
        let syn = Pkt6::tcp(CLIENT6, 42100, NODE6, NODE_PORT, TCP_SYN);
        let mut hop = syn.rewritten(CLIENT6, 42100, POD6, 80);
        hop.hop_limit = 63;
        (
            syn.build(),
            syn.rewritten(CLIENT6, 42100, POD6, 80).build(),
            hop.build(),
        )
    } else {
        let syn = Pkt::tcp(CLIENT, 42100, NODE, NODE_PORT, TCP_SYN);
        let mut hop = syn.rewritten(CLIENT, 42100, POD, 80);
        hop.ttl = 63;
        (
            syn.build(),
            syn.rewritten(CLIENT, 42100, POD, 80).build(),
            hop.build(),
        )
    };
    let mut redirected = hop.clone();
    redirected[..6].copy_from_slice(&pod_mac);
    redirected[6..12].copy_from_slice(&lxc_mac);
    // The mark in front of the frame, with the key of the load that wrote it.
    let marked = |key: u64| -> Vec<u8> {
        let mark = DeliverMeta {
            key,
            ifindex: lxc0,
            dmac: pod_mac,
            smac: lxc_mac,
        };
        // SAFETY: plain repr(C) data without padding (24 bytes, checked in lb-common).
        let mark: [u8; 24] = unsafe { std::mem::transmute(mark) };
        mark.iter().chain(&hop).copied().collect()
    };
    const XDP_REDIRECT: u32 = 4;
    // A kernel built without bpf_xdp_adjust_meta for XDP keeps no mark: the frame
    // goes on untouched (its flow forgotten), for TC ingress to translate and hand over.
    let peer = if lb_user::loader::xdp_metadata() {
        (
            "peer, a veth with its peer in the pod: translated, one hop less, marked for TC",
            None,
            reason::NAT_NEW_FLOW,
        )
    } else {
        (
            "peer, a veth with its peer in the pod, on a kernel without XDP metadata: \
             untouched, for TC",
            Some(syn.clone()),
            reason::PASS_TO_TC,
        )
    };
    let peer_reasons = [peer.2];
    // The output wanted: None for the frame marked for TC.
    let cases = [
        (
            peer.0,
            ToPods::Peer,
            IFACE_POD | IFACE_F_PEER,
            XDP_PASS,
            peer.1,
            &peer_reasons[..],
        ),
        (
            "peer, a pod interface that is no such veth: left to the stack, unmarked",
            ToPods::Peer,
            IFACE_POD,
            XDP_PASS,
            Some(for_stack.clone()),
            &[reason::NAT_NEW_FLOW][..],
        ),
        (
            "stack: left to the stack, unmarked",
            ToPods::Stack,
            IFACE_POD | IFACE_F_PEER,
            XDP_PASS,
            Some(for_stack),
            &[reason::NAT_NEW_FLOW][..],
        ),
        (
            "xdp: redirected into the veth with the pod's MAC",
            ToPods::Xdp,
            IFACE_POD | IFACE_F_PEER,
            XDP_REDIRECT,
            Some(redirected),
            &[reason::NAT_NEW_FLOW, reason::FWD_XDP_REDIRECT][..],
        ),
    ];
    for (what, to_pods, role, want_ret, want_out, want_reasons) in cases {
        let what = format!("{what} (IPv6: {ipv6})");
        let mut dp = dataplane_with(&LoadConfig {
            to_pods,
            ..LoadConfig::default()
        });
        dp.maps.set_iface(lxc0, role).unwrap();
        let before = dp.maps.verdicts().unwrap();
        let (ret, out) = xdp_from(&mut dp, &syn, eth0);
        assert_eq!(ret, want_ret, "{what}: return value");
        let want_out = want_out.unwrap_or_else(|| marked(dp.deliver_key()));
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
        if !ipv6 {
            assert_eq!(
                !dp.maps.conntrack().unwrap().is_empty(),
                want_reasons != [reason::PASS_TO_TC],
                "{what}: a flow only where XDP translated (TC starts the others anew)"
            );
        }
    }
}

/// XDP keeps the FIB's answer for a flow's translated tuple (per CPU, `LB_ROUTES`)
/// for at most `ROUTE_TTL_MS`, and only for frames no longer than one the route
/// took: a neighbour that moves to another MAC is written into the flow's frames
/// once that time is past, and a frame longer than the way out's MTU is never
/// redirected on a kept answer (the FIB's MTU check is asked again: it goes to the
/// stack, which answers or fragments as a router does).
#[test]
fn xdp_asks_the_fib_again_after_its_answer_ages_or_for_a_longer_frame() {
    lb_tests::require_root();
    let mut t = Topology::new("prroutes").unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc0", POD).unwrap();
    let (pod_mac, lxc_mac) = (
        t.mac(&pod, "eth0").unwrap(),
        t.mac(&s.node, "lxc0").unwrap(),
    );
    t.neigh(&s.node, POD, pod_mac, "lxc0").unwrap();
    t.sh(&s.node, &["ip", "link", "set", "lxc0", "mtu", "1000"])
        .unwrap();
    let (eth0, lxc0) = (
        t.ifindex(&s.node, "eth0").unwrap(),
        t.ifindex(&s.node, "lxc0").unwrap(),
    );
    let mut dp = {
        let _in = InNetns::enter(&s.node).unwrap();
        dataplane_with(&LoadConfig {
            to_pods: ToPods::Xdp,
            ..LoadConfig::default()
        })
    };
    dp.maps.set_iface(lxc0, IFACE_POD | IFACE_F_PEER).unwrap();
    // (return value, frame out) of XDP on the node's eth0.
    let xdp = |dp: &mut Dataplane, frame: &[u8]| -> (u32, Vec<u8>) {
        let _in = InNetns::enter(&s.node).unwrap();
        xdp_from(dp, frame, eth0)
    };
    const XDP_REDIRECT: u32 = 4;
    let syn = Pkt::tcp(CLIENT, 42200, NODE, NODE_PORT, TCP_SYN).build();
    let ack = Pkt::tcp(CLIENT, 42200, NODE, NODE_PORT, TCP_ACK).build();
    let (ret, out) = xdp(&mut dp, &syn);
    assert_eq!(
        ret, XDP_REDIRECT,
        "the SYN is redirected into the pod's veth"
    );
    assert_eq!(out[..6], pod_mac, "to the pod's MAC");
    assert_eq!(out[6..12], lxc_mac, "from the veth's");
    let asked = std::time::Instant::now();

    // A frame longer than lxc0's MTU (1,000): the kept answer took 40 bytes only.
    let long = Pkt::tcp(CLIENT, 42200, NODE, NODE_PORT, TCP_ACK)
        .payload(&[7u8; 1200])
        .build();
    let (ret, out) = xdp(&mut dp, &long);
    assert_eq!(
        ret, XDP_PASS,
        "a frame too big for the way out goes to the stack, translated"
    );
    assert_eq!(out[30..34], POD.parse::<Ipv4Addr>().unwrap().octets());

    // The pod's neighbour entry moves to another MAC.
    let moved = [0x02, 0, 0, 0, 0, 0x99];
    t.neigh(&s.node, POD, moved, "lxc0").unwrap();
    let (ret, out) = xdp(&mut dp, &ack);
    assert_eq!(ret, XDP_REDIRECT);
    // Within half the time the answer is kept, the kept one is used (when the
    // machine was too slow to get here by then, nothing is said about this frame).
    if asked.elapsed() < Duration::from_millis(ROUTE_TTL_MS / 2) {
        assert_eq!(out[..6], pod_mac, "within its time, the kept answer");
    }
    std::thread::sleep(Duration::from_millis(ROUTE_TTL_MS + 20));
    let (ret, out) = xdp(&mut dp, &ack);
    assert_eq!(ret, XDP_REDIRECT);
    assert_eq!(
        out[..6],
        moved,
        "past {ROUTE_TTL_MS} ms, the FIB's answer of now: the neighbour's new MAC"
    );
}

/// XDP keeps one FIB answer per destination for every flow to it only while the
/// node's routes depend on the destination alone (`LB_ROUTING`, as the agent
/// reads the rules and routes each round). A rule that routes one client's
/// traffic to the pod another way makes the agent's reading false, and then each
/// new flow asks the FIB for its own tuple: the second client's SYN leaves by its
/// own route, not by the answer kept for the first one's. Told (wrongly) that
/// routes go by destination, it takes the first one's kept answer: the sharing
/// the reading guards.
#[test]
fn xdp_shares_a_fib_answer_between_flows_only_while_routes_go_by_destination() {
    use lb_user::netif::RoutedByDestination;
    lb_tests::require_root();
    let mut t = Topology::new("prbydst").unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let pod = seeds::pod(&mut t, &s.node, "pod", "lxc0", POD).unwrap();
    seeds::pod(&mut t, &s.node, "pod2", "lxc1", "10.244.0.3").unwrap();
    let pod_mac = t.mac(&pod, "eth0").unwrap();
    t.neigh(&s.node, POD, pod_mac, "lxc0").unwrap();
    let (eth0, lxc0, lxc1) = (
        t.ifindex(&s.node, "eth0").unwrap(),
        t.ifindex(&s.node, "lxc0").unwrap(),
        t.ifindex(&s.node, "lxc1").unwrap(),
    );
    let read = || {
        let _in = InNetns::enter(&s.node).unwrap();
        RoutedByDestination::read().expect("rtnetlink dumps of rules and routes")
    };
    assert_eq!(
        read(),
        RoutedByDestination { v4: true, v6: true },
        "a node with the default rules and single-path routes routes by destination"
    );
    // A second way to the pod's address, for one client alone.
    const OTHER: &str = "192.168.1.77";
    let other_mac = [0x02, 0, 0, 0, 0, 0x77];
    for argv in [
        &["ip", "route", "add", POD, "dev", "lxc1", "table", "100"][..],
        &["ip", "rule", "add", "from", OTHER, "table", "100"][..],
        &[
            "ip",
            "neigh",
            "replace",
            POD,
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "lxc1",
        ][..],
    ] {
        t.sh(&s.node, argv).unwrap();
    }
    let by_rule = read();
    assert_eq!(
        by_rule,
        RoutedByDestination {
            v4: false,
            v6: true
        },
        "a rule by source: IPv4 routes depend on more than the destination"
    );
    const XDP_REDIRECT: u32 = 4;
    let syn = |client: &str, port: u16| Pkt::tcp(client, port, NODE, NODE_PORT, TCP_SYN).build();
    for (told, second_mac, what) in [
        (by_rule, other_mac, "as read: its own route, by the rule"),
        (
            RoutedByDestination { v4: true, v6: true },
            pod_mac,
            "told routes go by destination: the first client's kept answer",
        ),
    ] {
        let mut dp = {
            let _in = InNetns::enter(&s.node).unwrap();
            dataplane_with(&LoadConfig {
                to_pods: ToPods::Xdp,
                ..LoadConfig::default()
            })
        };
        for ifindex in [lxc0, lxc1] {
            dp.maps
                .set_iface(ifindex, IFACE_POD | IFACE_F_PEER)
                .unwrap();
        }
        dp.set_routing(told).unwrap();
        let xdp = |dp: &mut Dataplane, frame: &[u8]| -> (u32, Vec<u8>) {
            let _in = InNetns::enter(&s.node).unwrap();
            xdp_from(dp, frame, eth0)
        };
        let (ret, out) = xdp(&mut dp, &syn(CLIENT, 42300));
        let asked = std::time::Instant::now();
        assert_eq!(
            ret, XDP_REDIRECT,
            "{what}: the first client's SYN is redirected"
        );
        assert_eq!(
            out[..6],
            pod_mac,
            "{what}: the first client's SYN, by the main table"
        );
        let (ret, out) = xdp(&mut dp, &syn(OTHER, 42301));
        assert_eq!(
            ret, XDP_REDIRECT,
            "{what}: the second client's SYN is redirected"
        );
        // A kept answer lasts ROUTE_TTL_MS: when the machine was too slow to get
        // here within half of it, nothing is said about the shared one.
        if second_mac == other_mac || asked.elapsed() < Duration::from_millis(ROUTE_TTL_MS / 2) {
            assert_eq!(out[..6], second_mac, "{what}: the second client's SYN");
        }
    }
    t.sh(
        &s.node,
        &["ip", "rule", "del", "from", OTHER, "table", "100"],
    )
    .unwrap();
    assert_eq!(
        read(),
        RoutedByDestination { v4: true, v6: true },
        "the rule gone"
    );
    t.sh(
        &s.node,
        &[
            "ip",
            "route",
            "add",
            "10.250.0.0/24",
            "nexthop",
            "dev",
            "lxc0",
            "nexthop",
            "dev",
            "lxc1",
        ],
    )
    .unwrap();
    assert_eq!(
        read(),
        RoutedByDestination {
            v4: false,
            v6: true
        },
        "a multipath route: the kernel picks its next hop by a hash of the source"
    );
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

/// The 5-tuple a frame claims, read from its bytes as they are (IHL taken as given),
/// if it is long enough to hold one.
fn claimed_key(frame: &[u8]) -> Option<FlowKey> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let l4 = 14 + ihl;
    let port = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    Some(FlowKey {
        saddr_be: u32::from_ne_bytes(frame[26..30].try_into().ok()?),
        daddr_be: u32::from_ne_bytes(frame[30..34].try_into().ok()?),
        sport_be: port(l4)?,
        dport_be: port(l4 + 2)?,
        proto: frame[23],
        _pad: 0,
        _pad2: 0,
    })
}

fn flow_of(dp: &Dataplane, frame: &[u8]) -> Option<CtValue> {
    claimed_key(frame).and_then(|k| dp.maps.conntrack_entry(&k).unwrap())
}

#[test]
fn inconsistent_headers_are_passed_untouched_and_start_no_flow() {
    let mut dp = dataplane();
    let syn = Pkt::tcp(CLIENT, 40400, NODE, NODE_PORT, TCP_SYN).build();
    let udp = Pkt::udp(CLIENT, 40401, NODE, UDP_NODE_PORT)
        .payload(b"ping")
        .build();
    let set_total = |f: &[u8], total: u16| {
        let mut f = f.to_vec();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f
    };
    let mut doff_short = syn.clone();
    doff_short[14 + 20 + 12] = 4 << 4; // 16-byte TCP header
    let mut doff_long = syn.clone();
    doff_long[14 + 20 + 12] = 15 << 4; // 60 bytes: past the segment
    let mut udp_short = udp.clone();
    udp_short[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
    let mut udp_long = udp.clone();
    udp_long[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&100u16.to_be_bytes());
    // RFC 1858: a first fragment with 8 bytes of TCP header, padded on the wire to
    // hold the rest (which would otherwise be read from the padding).
    let mut tiny =
        Pkt::tcp(CLIENT, 40402, NODE, NODE_PORT, TCP_SYN).build()[..14 + 20 + 8].to_vec();
    tiny[16..18].copy_from_slice(&28u16.to_be_bytes());
    tiny[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    tiny.resize(14 + 20 + 20, 0);
    tiny[14 + 20 + 12] = 5 << 4;
    tiny[14 + 20 + 13] = TCP_SYN;
    let rows: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 total length past the frame", set_total(&syn, 60)),
        (
            "IPv4 total length shorter than the TCP header",
            set_total(&syn, 30),
        ),
        ("TCP data offset below 5", doff_short),
        ("TCP data offset past the segment", doff_long),
        ("UDP length below 8", udp_short),
        ("UDP length past the datagram", udp_long),
        ("a first fragment too small for the TCP header", tiny),
    ];
    for (what, frame) in rows {
        for prog in [Prog::Xdp, Prog::TcIngress] {
            let (_, out, moved) = run(&mut dp, prog, &frame);
            assert_eq!(
                reason::NAMES[moved as usize],
                "pass_malformed",
                "{what} ({prog:?})"
            );
            assert_eq!(out, frame, "{what}: passed untouched");
            assert!(flow_of(&dp, &frame).is_none(), "{what}: no flow");
        }
    }
}

#[test]
fn tcp_flows_start_with_a_syn_and_packets_not_sent_on_leave_no_flow() {
    let mut dp = dataplane();
    for (what, flags) in [
        ("bare ACK", TCP_ACK),
        ("FIN", TCP_FIN | TCP_ACK),
        ("RST", TCP_RST),
        ("SYN-ACK", TCP_SYN | TCP_ACK),
        ("SYN-FIN", TCP_SYN | TCP_FIN),
        ("SYN-RST", TCP_SYN | TCP_RST),
    ] {
        let f = Pkt::tcp(CLIENT, 40500, NODE, NODE_PORT, flags).build();
        let (_, out, moved) = run(&mut dp, Prog::Xdp, &f);
        assert_eq!(reason::NAMES[moved as usize], "pass_tcp_not_syn", "{what}");
        assert_eq!(out, f, "{what}: untouched");
        assert!(flow_of(&dp, &f).is_none(), "{what}: no flow");
    }
    // A SYN starts a flow held as SYN_SENT (60 s) until the backend's answer, seen at
    // egress, establishes both directions.
    let syn = Pkt::tcp(CLIENT, 40501, NODE, NODE_PORT, TCP_SYN).build();
    let (_, _, moved) = run(&mut dp, Prog::Xdp, &syn);
    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
    let established = |dp: &Dataplane| -> Vec<bool> {
        dp.maps
            .conntrack()
            .unwrap()
            .iter()
            .map(|(_, v)| v.tcp_flags & lb_common::CT_TCP_SEEN_REPLY != 0)
            .collect()
    };
    assert_eq!(
        established(&dp),
        [false],
        "SYN_SENT, the reply entry alone (the original comes with the answer)"
    );
    let reply = Pkt::tcp(POD, 80, CLIENT, 40501, TCP_SYN | TCP_ACK).build();
    let (_, _, moved) = run(&mut dp, Prog::TcEgress, &reply);
    assert_eq!(reason::NAMES[moved as usize], "nat_reply");
    assert_eq!(established(&dp), [true, true], "established both ways");
    dp = dataplane();
    // A hairpin SYN on its last hop is dropped, and leaves no flow behind.
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let mut last = Pkt::tcp(POD, 42100, CLUSTER_IP, 80, TCP_SYN);
    last.ttl = 1;
    let f = last.build();
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &f);
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_SHOT, "drop_ttl_exceeded")
    );
    assert!(flow_of(&dp, &f).is_none(), "no flow for a dropped packet");
    assert!(
        dp.maps.conntrack().unwrap().is_empty(),
        "not its reply entry either: {:?}",
        dp.maps.conntrack().unwrap()
    );
}

#[test]
fn rejects_answer_only_unicast_frames_from_hosts() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let good = Pkt::udp("10.244.0.3", 40600, NODE, 30009)
        .payload(b"x")
        .build();
    let mut broadcast = good.clone();
    broadcast[..6].copy_from_slice(&[0xff; 6]);
    let mut multicast = good.clone();
    multicast[0] = 0x01;
    let from_nowhere = Pkt::udp("0.0.0.0", 40600, NODE, 30009)
        .payload(b"x")
        .build();
    let from_loopback = Pkt::udp("127.0.0.1", 40600, NODE, 30009)
        .payload(b"x")
        .build();
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &good);
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_REDIRECT, "reject_no_backend")
    );
    for (what, f) in [
        ("broadcast MAC", broadcast),
        ("multicast MAC", multicast),
        ("source 0.0.0.0", from_nowhere),
        ("loopback source", from_loopback),
    ] {
        let (ret, out, moved) = run(&mut dp, Prog::TcIngress, &f);
        assert_eq!(
            (ret, reason::NAMES[moved as usize]),
            (TC_UNSPEC, "pass_no_backend"),
            "{what}"
        );
        assert_eq!(out, f, "{what}: not answered, untouched");
    }
}

/// Whether a whole (unfragmented) frame's IPv4 and L4 checksums are right; false
/// for anything that is not such a frame.
fn checksums_right(frame: &[u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let whole = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff == 0;
    if ihl < 20 || total < ihl + 8 || 14 + total > frame.len() || !whole {
        return false;
    }
    if frame[23] == PROTO_ICMP {
        // No pseudo-header; the quoted IPv4 header has its own checksum.
        let icmp = &frame[14 + ihl..14 + total];
        let quoted_ok = icmp.len() < 28 || packet::checksum(&[&icmp[8..28]]) == 0;
        return packet::checksum(&[&frame[14..14 + ihl]]) == 0
            && packet::checksum(&[icmp]) == 0
            && quoted_ok;
    }
    std::panic::catch_unwind(|| verify_checksums(frame).is_ok()).unwrap_or(false)
}

/// A small xorshift generator: the fuzz test's frames are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Frames and seed of the fuzz test: `LB_FUZZ_FRAMES` and `LB_FUZZ_SEED` (set by
/// `cargo xtask fuzz` for longer runs), else 30,000 frames of a fixed seed.
/// Mutates a fuzzed frame one way of five, drawn from `rng`: as built; up to four
/// bits flipped in its first `flip_within` bytes; truncated to no fewer than
/// `min_len`; a header field set at random (`set_field`, the family's fields); or
/// trailing bytes added. Both families' fuzzers mutate this way.
fn mutate(
    rng: &mut Rng,
    f: &mut Vec<u8>,
    flip_within: usize,
    min_len: usize,
    set_field: impl FnOnce(&mut Rng, &mut Vec<u8>),
) {
    match rng.below(5) {
        0 => {} // as built
        1 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len().min(flip_within));
                f[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let keep = min_len + rng.below(f.len() - (min_len - 1));
            f.truncate(keep);
        }
        3 => set_field(rng, f),
        _ => f.extend((0..rng.below(40)).map(|_| rng.next() as u8)), // trailing bytes
    }
}

/// One fuzzed frame `f` (#`i`) through `prog`: exactly one verdict counter moves
/// (`run` asserts it); a translated frame whose checksums held (`checksums_ok`)
/// still holds them (`checksums_right`); a passed one is untouched; a frame not
/// translated starts no flow (`has_flow`). Returns the verdict's name and whether
/// the frame was translated. Both families' fuzzers check each frame this way.
fn fuzz_verdict(
    dp: &mut Dataplane,
    prog: Prog,
    i: u32,
    f: &[u8],
    checksums_ok: bool,
    checksums_right: fn(&[u8]) -> bool,
    has_flow: &dyn Fn(&Dataplane) -> bool,
) -> (&'static str, bool) {
    let had_flow = has_flow(dp);
    let (_, out, moved) = run(dp, prog, f);
    let name = reason::NAMES[moved as usize];
    if name.starts_with("nat_") {
        if checksums_ok {
            assert!(
                checksums_right(&out),
                "#{i} {prog:?} {name}: checksums after the rewrite\n{f:02x?}\n{out:02x?}"
            );
        }
        return (name, true);
    }
    if name.starts_with("pass_") {
        assert_eq!(out, f, "#{i} {prog:?} {name}: passed untouched");
    }
    if !had_flow {
        assert!(
            !has_flow(dp),
            "#{i} {prog:?} {name}: a flow from a frame not translated\n{f:02x?}"
        );
    }
    (name, false)
}

fn fuzz_settings() -> (u32, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    (
        env("LB_FUZZ_FRAMES").map_or(30_000, |n| n as u32),
        env("LB_FUZZ_SEED").unwrap_or(0x5eed_1b0b_cafe_f00d),
    )
}

#[test]
fn fuzzed_frames_are_counted_once_and_never_leave_a_flow_untranslated() {
    // Valid frames of every kind, each with a fresh tuple, then mutated: random bytes
    // of the headers, truncations, and structured edits of IHL, lengths, fragment
    // fields, TCP data offset and flags, UDP length, TTL. Every program, every frame:
    // one verdict counter moves; a frame passed or dropped comes out untouched (or
    // not at all) and leaves no flow; a translated one has right checksums when its
    // own were; a FIN or RST whose checksum is wrong never closes its flow.
    let (frames, seed) = fuzz_settings();
    let mut dp = dataplane();
    let mut rng = Rng(seed | 1);
    let started = std::time::Instant::now();
    let (mut translated, mut passed) = (0u64, 0u64);
    for i in 0..frames {
        if i % 5_000 == 0 {
            dp = dataplane(); // a fresh conntrack now and then
        }
        let role = if rng.below(2) == 0 {
            IFACE_POD
        } else {
            IFACE_EXTERNAL
        };
        dp.maps.set_iface(1, role).unwrap();
        let sport = 1024 + rng.below(60_000) as u16;
        let client = format!("192.168.{}.{}", 1 + rng.below(200), 1 + rng.below(250));
        let closing = rng.below(7) == 6;
        let base = match rng.below(6) {
            // The end of a live flow: its SYN goes first (not a fuzzed frame).
            _ if closing => {
                let syn = Pkt::tcp(&client, sport, NODE, NODE_PORT, TCP_SYN).build();
                run(&mut dp, Prog::Xdp, &syn);
                let flags = [TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK][rng.below(3)];
                let body: Vec<u8> = (0..rng.below(1400)).map(|_| rng.next() as u8).collect();
                Pkt::tcp(&client, sport, NODE, NODE_PORT, flags).payload(&body)
            }
            0 => Pkt::tcp(&client, sport, NODE, NODE_PORT, TCP_SYN),
            1 => Pkt::tcp(&client, sport, CLUSTER_IP, 80, TCP_SYN).payload(b"hello"),
            2 => Pkt::udp(&client, sport, NODE, UDP_NODE_PORT).payload(b"ping"),
            3 => Pkt::udp(&client, sport, CLUSTER_IP, 53).payload(&[7u8; 40]),
            4 => Pkt::tcp(POD, 80, &client, sport, TCP_SYN | TCP_ACK),
            _ => Pkt::tcp(&client, sport, NODE, 30009, TCP_SYN),
        };
        // Now and then an ICMP error quoting the frame (translated when its flow is
        // tracked): built from the base before any mutation.
        let icmp = rng.below(10) == 0;
        let mut f = if !closing && rng.below(8) == 0 {
            let payload: Vec<u8> = (0..600).map(|b| b as u8).collect();
            let mut p = base.payload(&payload);
            p.id = rng.next() as u16;
            let [first, later] = p.fragments(8 * (1 + rng.below(40)));
            if rng.below(2) == 0 { first } else { later }
        } else {
            base.build()
        };
        if icmp {
            f = packet::port_unreachable(&f);
        }
        let original_ok = checksums_right(&f);
        // BPF_PROG_RUN takes no IPv4 frame shorter than its Ethernet and IPv4
        // headers at TC (shorter ones are rows of their own).
        mutate(&mut rng, &mut f, 64, 34, |rng, f| {
            let field = rng.below(7);
            let v = rng.next();
            match field {
                0 => f[14] = 0x40 | (v as u8 & 0x0f), // IHL
                1 => f[16..18].copy_from_slice(&(v as u16).to_be_bytes()), // total length
                2 => f[20..22].copy_from_slice(&(v as u16).to_be_bytes()), // flags/offset
                3 => f[22] = v as u8,                 // TTL
                4 if f.len() > 14 + 20 + 13 => f[14 + 20 + 12] = v as u8, // TCP offset
                5 if f.len() > 14 + 20 + 13 => f[14 + 20 + 13] = v as u8, // TCP flags
                _ if f.len() > 14 + 20 + 6 => {
                    f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&(v as u16).to_be_bytes())
                } // UDP length
                _ => {}
            }
        });
        let checksums_ok = original_ok && checksums_right(&f);
        for prog in [Prog::Xdp, Prog::TcIngress, Prog::TcEgress] {
            let has_flow = |dp: &Dataplane| flow_of(dp, &f).is_some();
            let (name, nat) = fuzz_verdict(
                &mut dp,
                prog,
                i,
                &f,
                checksums_ok,
                checksums_right,
                &has_flow,
            );
            if nat {
                translated += 1;
            } else {
                passed += 1;
            }
            // A whole datagram's checksum covers it: one that does not hold never
            // closes a flow (a fragment's cannot be checked, and is not).
            let whole = f.len() >= 22 && f[20] & 0x3f == 0 && f[21] == 0;
            if closing && whole && packet::l4_checksum(&f) == Some(false) {
                let closed = flow_of(&dp, &f)
                    .is_some_and(|ct| ct.tcp_flags & lb_common::CT_TCP_CLOSING != 0);
                assert!(
                    !closed,
                    "#{i} {prog:?} {name}: closed by a bad checksum\n{f:02x?}"
                );
            }
        }
    }
    eprintln!(
        "fuzz (seed {seed:#x}): {frames} frames x 3 programs in {:?}: {translated} translated, {passed} passed, dropped or answered",
        started.elapsed()
    );
    assert!(
        translated > 1_000 && passed > 1_000,
        "both kinds were exercised"
    );
}

/// The IPv6 tuple a frame claims (Ethernet, IPv6 header, L4 ports right after
/// it, or after one extension header when `ext`), if it is long enough.
fn claimed_key6(frame: &[u8], ext: bool) -> Option<lb_common::FlowKey6> {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    let l4 = if ext { 62 } else { 54 };
    let word = |at: usize| u32::from_ne_bytes(frame[at..at + 4].try_into().unwrap());
    let port = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let proto = if ext { *frame.get(54)? } else { frame[20] };
    Some(lb_common::FlowKey6 {
        saddr_be: [word(22), word(26), word(30), word(34)],
        daddr_be: [word(38), word(42), word(46), word(50)],
        sport_be: port(l4)?,
        dport_be: port(l4 + 2)?,
        proto,
        _pad: 0,
        _pad2: 0,
    })
}

/// Whether a whole IPv6 TCP/UDP datagram's checksum holds (L4 header right after
/// the IPv6 one); false for anything else.
fn checksums_right6(frame: &[u8]) -> bool {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return false;
    }
    let plen = u16::from_be_bytes([frame[18], frame[19]]) as usize;
    let next = frame[20];
    if (next != PROTO_TCP && next != lb_common::PROTO_UDP) || plen < 8 || 54 + plen > frame.len() {
        return false;
    }
    let mut pseudo = frame[22..54].to_vec();
    pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    packet::checksum(&[&pseudo, &frame[54..54 + plen]]) == 0
}

/// The IPv4 fuzzer's rules for IPv6 frames (`LB_FUZZ_FRAMES` / 10 of them, same
/// seed): NodePort and ClusterIP flows, replies, a service without endpoints, with
/// a hop-by-hop header or as fragments (first, later, atomic), then mutated (bits
/// flipped in the headers, truncated, a header field set at random: payload
/// length, next header, hop limit, the Fragment header's offset and flags, TCP
/// offset and flags; or trailing bytes). Through XDP, TC ingress and TC egress each
/// is counted under exactly one reason; what is passed is untouched and starts no
/// flow; a translated whole datagram whose checksum held still holds it.
#[test]
fn fuzzed_ipv6_frames_are_counted_once_and_start_no_flow_untranslated() {
    let (frames, seed) = fuzz_settings();
    let frames = (frames / 10).max(100);
    let mut dp = dataplane();
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let (mut translated, mut passed, mut summed) = (0u64, 0u64, 0u64);
    for i in 0..frames {
        if i % 500 == 0 {
            dp = dataplane();
        }
        let role = if rng.below(2) == 0 {
            IFACE_POD
        } else {
            IFACE_EXTERNAL
        };
        dp.maps.set_iface(1, role).unwrap();
        let sport = 1024 + rng.below(60_000) as u16;
        let client = format!("fd00:1::{:x}", 0x100 + rng.below(4000));
        let mut base = match rng.below(5) {
            0 => Pkt6::tcp(&client, sport, NODE6, NODE_PORT, TCP_SYN),
            1 => Pkt6::udp(&client, sport, CLUSTER_IP6, 53).payload(&[7u8; 40]),
            2 => Pkt6::udp(&client, sport, NODE6, UDP_NODE_PORT).payload(b"ping"),
            3 => Pkt6::tcp(POD6, 80, &client, sport, TCP_SYN | TCP_ACK),
            _ => Pkt6::tcp(&client, sport, NODE6, 30009, TCP_SYN),
        };
        let ext = rng.below(8) == 0;
        let mut f = match rng.below(8) {
            0 => {
                let payload: Vec<u8> = (0..600).map(|b| b as u8).collect();
                let p = base.payload(&payload);
                let id = rng.next() as u32;
                let [first, later] = p.fragments(8 * (1 + rng.below(40)), id);
                if rng.below(2) == 0 { first } else { later }
            }
            1 => base.atomic_fragment(rng.next() as u32),
            _ => {
                base.hop_by_hop = ext;
                base.build()
            }
        };
        let fragment = f[20] == 44;
        let original_ok = checksums_right6(&f);
        mutate(&mut rng, &mut f, 80, 54, |rng, f| {
            let v = rng.next();
            match rng.below(6) {
                0 => f[18..20].copy_from_slice(&(v as u16).to_be_bytes()), // payload length
                1 => f[20] = [0, 6, 17, 43, 44, 58, 60, v as u8][rng.below(8)], // next header
                2 => f[21] = v as u8,                                      // hop limit
                3 if f.len() > 58 => f[56..58].copy_from_slice(&(v as u16).to_be_bytes()), // fragment offset/flags
                4 if f.len() > 67 => f[54 + 12] = v as u8, // TCP offset
                _ if f.len() > 67 => f[54 + 13] = v as u8, // TCP flags
                _ => {}
            }
        });
        let checksums_ok = original_ok && checksums_right6(&f);
        let claimed = claimed_key6(&f, ext || fragment);
        for prog in [Prog::Xdp, Prog::TcIngress, Prog::TcEgress] {
            let has_flow = |dp: &Dataplane| {
                claimed.is_some_and(|k| dp.maps.conntrack6_entry(&k).unwrap().is_some())
            };
            let (_, nat) = fuzz_verdict(
                &mut dp,
                prog,
                i,
                &f,
                checksums_ok,
                checksums_right6,
                &has_flow,
            );
            if nat {
                translated += 1;
                summed += u64::from(checksums_ok);
            } else {
                passed += 1;
            }
        }
    }
    eprintln!(
        "IPv6 fuzz (seed {seed:#x}): {frames} frames x 3 programs: {translated} translated ({summed} with their checksum checked after), {passed} passed, dropped or answered"
    );
    assert!(
        translated > 100 && passed > 100 && summed > 100,
        "both kinds were exercised, rewrites checked"
    );
}

#[test]
fn icmp_errors_about_a_flow_are_translated_with_it() {
    let mut dp = dataplane();
    // A NodePort flow: the client's SYN went to the pod.
    let syn = Pkt::tcp(CLIENT, 40700, NODE, NODE_PORT, TCP_SYN);
    let (_, _, moved) = run(&mut dp, Prog::Xdp, &syn.build());
    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
    // The pod's "port unreachable" about what it received (client -> pod) leaves
    // the node as the service's about what the client sent (client -> NODE:30008).
    let from_pod = packet::port_unreachable(&syn.rewritten(CLIENT, 40700, POD, 80).build());
    let want = packet::port_unreachable(&syn.build());
    let udp = Pkt::udp(CLIENT, 40701, NODE, UDP_NODE_PORT).payload(b"ping");
    let (_, _, moved) = run(&mut dp, Prog::Xdp, &udp.build());
    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
    let udp_from_pod = packet::port_unreachable(&udp.rewritten(CLIENT, 40701, POD, 5353).build());
    let udp_want = packet::port_unreachable(&udp.build());
    let unrelated = packet::port_unreachable(&Pkt::tcp(CLIENT, 40799, POD, 80, TCP_SYN).build());
    check(
        &mut dp,
        vec![
            Row {
                what: "a pod's port unreachable (TCP) at egress: about the service address",
                prog: Prog::TcEgress,
                input: from_pod.clone(),
                reason: reason::NAT_RELATED,
                output: Some(want),
            },
            Row {
                what: "the same at ingress: left for egress",
                prog: Prog::TcIngress,
                input: from_pod,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
            Row {
                what: "a pod's port unreachable (UDP, quoted checksum updated)",
                prog: Prog::TcEgress,
                input: udp_from_pod,
                reason: reason::NAT_RELATED,
                output: Some(udp_want),
            },
            Row {
                what: "an error about no tracked flow: untouched",
                prog: Prog::TcEgress,
                input: unrelated,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
        ],
    );
}

/// A new flow costs one map write: its reply entry alone, its backend a hash of its
/// tuple, so its second packet picks the same backend, finds the flow by that entry
/// and writes the original one; from there the flow keeps its backend whatever the
/// service's slots become. Before it, a flow whose slot changed starts again where
/// the hash now points (nothing had answered it). The choice spreads flows evenly
/// and is the slot `lb_common::flow_slot` names (as `lb trace` says).
#[test]
fn a_new_flow_writes_its_reply_entry_alone_and_keeps_its_backend_from_its_second_packet() {
    own_netns();
    let mut dp = Dataplane::load_with(None, &LoadConfig::default()).expect("load lb's eBPF object");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    const PORT: u16 = 30200;
    let plan = |n: u8| {
        port_plan(
            "spread",
            lb_common::PROTO_UDP,
            vec![(frontend(ip(NODE), PORT, lb_common::PROTO_UDP), 0)],
            (0..n)
                .map(|i| (ip(&format!("10.244.7.{}", i + 2)), 8080))
                .collect(),
        )
    };
    program(&mut dp.maps, &[plan(4)]);
    let first = |sport: u16| Pkt::udp(CLIENT, sport, NODE, PORT).payload(b"one").build();
    let second = |sport: u16| Pkt::udp(CLIENT, sport, NODE, PORT).payload(b"two").build();
    let dst =
        |out: &[u8]| -> std::net::Ipv4Addr { <[u8; 4]>::try_from(&out[30..34]).unwrap().into() };
    // 400 one-packet flows: 400 entries, every one a reply entry; 100 a backend, give
    // or take what a uniform choice gives.
    let mut chosen = std::collections::BTreeMap::new();
    let mut per_backend = std::collections::BTreeMap::<_, u32>::new();
    let key = claimed_key(&first(20000)).unwrap();
    for sport in 20000..20400 {
        let (_, out, moved) = run(&mut dp, Prog::Xdp, &first(sport));
        assert_eq!(
            reason::NAMES[moved as usize],
            "nat_new_flow",
            "port {sport}"
        );
        chosen.insert(sport, dst(&out));
        *per_backend.entry(dst(&out)).or_default() += 1;
        // The slot `lb trace` names for the tuple (the same function), service 1.
        let slot = lb_common::flow_slot(
            lb_common::fold4(key.saddr_be, key.daddr_be),
            sport.to_be(),
            key.dport_be,
            key.proto,
            4,
        );
        let b = dp.maps.slot(1, slot).unwrap().expect("the slot");
        assert_eq!(
            dst(&out),
            Ipv4Addr::from(u32::from_be(b.addr_be)),
            "port {sport}: the slot its tuple hashes to"
        );
    }
    let entries = dp.maps.conntrack().unwrap();
    assert_eq!(entries.len(), 400, "one entry per new flow");
    assert!(
        entries
            .iter()
            .all(|(_, v)| v.direction == lb_common::CT_DIR_REPLY),
        "each the flow's reply entry"
    );
    assert_eq!(
        per_backend.len(),
        4,
        "every backend chosen: {per_backend:?}"
    );
    assert!(
        per_backend.values().all(|n| (70..=130).contains(n)),
        "an even spread: {per_backend:?}"
    );
    // A later packet of the first ten flows: established on the backend it started
    // with, its original entry there.
    let later_on_its_backend = |dp: &mut Dataplane| {
        for sport in 20000..20010 {
            let (_, out, moved) = run(dp, Prog::Xdp, &second(sport));
            assert_eq!(
                reason::NAMES[moved as usize],
                "nat_established",
                "port {sport}"
            );
            assert_eq!(dst(&out), chosen[&sport], "port {sport}: the same backend");
            assert!(
                flow_of(dp, &second(sport)).is_some(),
                "port {sport}: its original entry"
            );
        }
    };
    // Their second packets write their original entries.
    later_on_its_backend(&mut dp);
    assert_eq!(dp.maps.conntrack().unwrap().len(), 410);
    // A fifth backend: the slot is the hash scaled to the slot count, so many choices
    // move (about half, 4 -> 5 slots). Flows past their second packet keep theirs; a
    // one-packet flow whose choice moved starts anew there.
    program(&mut dp.maps, &[plan(5)]);
    later_on_its_backend(&mut dp);
    let (mut kept, mut moved_on) = (0, 0);
    for sport in 20010..20400 {
        let (_, out, moved) = run(&mut dp, Prog::Xdp, &second(sport));
        if dst(&out) == chosen[&sport] {
            assert_eq!(
                reason::NAMES[moved as usize],
                "nat_established",
                "port {sport}"
            );
            kept += 1;
        } else {
            assert_eq!(
                reason::NAMES[moved as usize],
                "nat_new_flow",
                "port {sport}"
            );
            moved_on += 1;
        }
    }
    // Half the hash range lands in another slot (0-1/5, 1/4-2/5, ... stay).
    assert!(
        (130..=260).contains(&moved_on),
        "about half moved: kept {kept}, moved {moved_on}"
    );
}

/// The new-flow table is a set-associative array (`lb_common::CT_WAYS` slots a set):
/// a new flow whose set is full takes the slot of the set's least recently seen
/// entry, whose flow then starts anew at its next packet (on the backend its hash
/// names); the set's other flows keep theirs, and nothing outside the set moves.
#[test]
fn a_full_set_of_the_new_flow_table_gives_way_to_its_least_recently_seen_flow() {
    own_netns();
    let mut dp = Dataplane::load_with(None, &LoadConfig::default()).expect("load lb's eBPF object");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    const PORT: u16 = 30300;
    program(
        &mut dp.maps,
        &[port_plan(
            "sets",
            lb_common::PROTO_UDP,
            vec![(frontend(ip(NODE), PORT, lb_common::PROTO_UDP), 0)],
            vec![(ip(POD), 8080)],
        )],
    );
    // Flows from many clients (an address and a port each), as a set's flows are.
    type Flow = (std::net::Ipv4Addr, u16);
    let packet = |(client, sport): Flow| {
        Pkt::udp(&client.to_string(), sport, NODE, PORT)
            .payload(b"x")
            .build()
    };
    let pod: std::net::Ipv4Addr = POD.parse().unwrap();
    let reply_key = |(client, sport): Flow| FlowKey {
        saddr_be: u32::from(pod).to_be(),
        daddr_be: u32::from(client).to_be(),
        sport_be: 8080u16.to_be(),
        dport_be: sport.to_be(),
        proto: lb_common::PROTO_UDP,
        _pad: 0,
        _pad2: 0,
    };
    // One more flow than a set holds, all of whose reply entries (the one entry a
    // new flow writes) go to one set.
    let ways = lb_common::CT_WAYS as usize;
    let mut by_set = std::collections::HashMap::<u32, Vec<Flow>>::new();
    let flows = (0..u32::MAX)
        .map(|i| {
            let client =
                std::net::Ipv4Addr::new(192, 168, 2 + (i / 250 % 250) as u8, 1 + (i % 250) as u8);
            (client, 10_000 + (i / 62_500) as u16)
        })
        .find_map(|f| {
            let same = by_set
                .entry(dp.maps.new_flow_set(&reply_key(f)))
                .or_default();
            same.push(f);
            (same.len() == ways + 1).then(|| same.clone())
        })
        .expect("a set's worth of flows");
    let elsewhere = (std::net::Ipv4Addr::new(192, 168, 1, 10), 9_999);
    assert_ne!(
        dp.maps.new_flow_set(&reply_key(elsewhere)),
        dp.maps.new_flow_set(&reply_key(flows[0]))
    );
    let (_, _, r) = run(&mut dp, Prog::Xdp, &packet(elsewhere));
    assert_eq!(r, reason::NAT_NEW_FLOW);
    // The first `ways` flows fill the set, each seen later than the one before (the
    // kernel side's clock moves by jiffies).
    for &f in &flows[..ways] {
        std::thread::sleep(Duration::from_millis(20));
        let (_, _, r) = run(&mut dp, Prog::Xdp, &packet(f));
        assert_eq!(r, reason::NAT_NEW_FLOW, "{f:?}");
    }
    for &f in &flows[..ways] {
        assert!(
            dp.maps.conntrack_entry(&reply_key(f)).unwrap().is_some(),
            "{f:?}"
        );
    }
    // One more: the least recently seen (the first) gives way.
    std::thread::sleep(Duration::from_millis(20));
    let (_, _, r) = run(&mut dp, Prog::Xdp, &packet(flows[ways]));
    assert_eq!(r, reason::NAT_NEW_FLOW);
    assert!(
        dp.maps
            .conntrack_entry(&reply_key(flows[0]))
            .unwrap()
            .is_none(),
        "the least recently seen flow gave way"
    );
    for &f in &flows[1..] {
        assert!(
            dp.maps.conntrack_entry(&reply_key(f)).unwrap().is_some(),
            "{f:?} kept"
        );
    }
    assert!(
        dp.maps
            .conntrack_entry(&reply_key(elsewhere))
            .unwrap()
            .is_some(),
        "another set's flow kept"
    );
    assert_eq!(dp.maps.conntrack().unwrap().len(), ways + 1);
    // The set's other flows go on as established (their second packet writes their
    // original entry); the one that gave way starts anew, on the same backend.
    for &f in &flows[1..] {
        let (_, out, r) = run(&mut dp, Prog::Xdp, &packet(f));
        assert_eq!(r, reason::NAT_ESTABLISHED, "{f:?}");
        assert_eq!(out[30..34], pod.octets());
    }
    let (_, out, r) = run(&mut dp, Prog::Xdp, &packet(flows[0]));
    assert_eq!(r, reason::NAT_NEW_FLOW);
    assert_eq!(out[30..34], pod.octets());
}

/// A flow the backend answered moves to the assured table; the agent's sweep
/// removes assured entries whose timeout passed (nothing evicts them) and keeps the
/// live ones.
#[test]
fn answered_flows_are_assured_and_swept_once_expired() {
    let mut dp = dataplane();
    let syn = Pkt::tcp(CLIENT, 43000, NODE, NODE_PORT, TCP_SYN).build();
    let (_, _, r) = run(&mut dp, Prog::Xdp, &syn);
    assert_eq!(r, reason::NAT_NEW_FLOW);
    // Its retransmission writes the original entry (the first wrote the reply's).
    let (_, _, r) = run(&mut dp, Prog::Xdp, &syn);
    assert_eq!(r, reason::NAT_ESTABLISHED);
    let key = claimed_key(&syn).unwrap();
    let ct = dp.maps.conntrack_entry(&key).unwrap().expect("the flow");
    let now = dp.kernel_now().unwrap();
    let hz = lb_user::loader::kernel_hz().unwrap_or(1_000_000_000);
    // Unanswered: a new flow, not in the assured table (the sweep sees nothing).
    let timeouts = dp.ct_timeouts();
    assert_eq!(
        dp.maps
            .sweep_assured(now + 3600 * hz, hz, &timeouts)
            .unwrap(),
        0
    );
    // Two assured flows: one idle past any timeout, one just seen.
    let stale_key = FlowKey {
        sport_be: 43001u16.to_be(),
        ..key
    };
    let stale = CtValue {
        last_seen: now.wrapping_sub(7 * 3600 * hz),
        tcp_flags: lb_common::CT_TCP_SEEN_REPLY,
        ..ct
    };
    let live = CtValue {
        last_seen: now,
        tcp_flags: lb_common::CT_TCP_SEEN_REPLY,
        ..ct
    };
    dp.maps.put_conntrack(&stale_key, &stale).unwrap();
    dp.maps.put_conntrack(&key, &live).unwrap();
    assert_eq!(dp.maps.sweep_assured(now, hz, &timeouts).unwrap(), 1);
    assert!(dp.maps.conntrack_entry(&stale_key).unwrap().is_none());
    assert_eq!(dp.maps.conntrack_entry(&key).unwrap(), Some(live));
    // The kernel side's clock moves on as the agent reads it.
    assert!(dp.kernel_now().unwrap() >= now);
}

/// Conntrack timeouts are the agent's (`lb agent --ct-timeout-*`): an answered UDP
/// flow idle for 6 s is gone under a 5 s timeout, in the agent's sweep and for the
/// programs (its next packet starts a new flow), and live under the default 60 s.
#[test]
fn conntrack_timeouts_are_set_at_load() {
    own_netns();
    let short = CtTimeouts {
        udp_s: 5,
        ..CtTimeouts::DEFAULT
    };
    for (timeouts, swept, next) in [
        (CtTimeouts::DEFAULT, 0, "nat_established"),
        (short, 1, "nat_new_flow"),
    ] {
        let mut dp = dataplane_with(&LoadConfig {
            ct_timeouts: timeouts,
            ..LoadConfig::default()
        });
        assert_eq!(dp.ct_timeouts(), timeouts);
        let ping = Pkt::udp(CLIENT, 43100, NODE, UDP_NODE_PORT)
            .payload(b"ping")
            .build();
        let (_, _, r) = run(&mut dp, Prog::Xdp, &ping);
        assert_eq!(reason::NAMES[r as usize], "nat_new_flow");
        let pong = Pkt::udp(POD, 5353, CLIENT, 43100).payload(b"pong").build();
        let (_, _, r) = run(&mut dp, Prog::TcEgress, &pong);
        assert_eq!(reason::NAMES[r as usize], "nat_reply");
        // The client's direction last seen 6 s ago (the reply's just now).
        let key = claimed_key(&ping).unwrap();
        let ct = dp.maps.conntrack_entry(&key).unwrap().expect("the flow");
        let now = dp.kernel_now().unwrap();
        let hz = lb_user::loader::kernel_hz().unwrap_or(1_000_000_000);
        let idle = CtValue {
            last_seen: now.wrapping_sub(6 * hz),
            ..ct
        };
        dp.maps.put_conntrack(&key, &idle).unwrap();
        assert_eq!(
            dp.maps.sweep_assured(now, hz, &timeouts).unwrap(),
            swept,
            "{timeouts:?}"
        );
        let (_, _, r) = run(&mut dp, Prog::Xdp, &ping);
        assert_eq!(reason::NAMES[r as usize], next, "{timeouts:?}");
    }
}

/// One closing segment on a fresh flow (`open`: the SYN at `prog`, the answer at
/// egress): `bad` (its checksum wrong) is dropped and leaves the flow as it was,
/// `sent` closes it, and `bad` then passes (nothing left to change). `closing`
/// reads the flow's state.
fn closes_only_when_valid(
    dp: &mut Dataplane,
    prog: Prog,
    what: &str,
    open: [&[u8]; 2],
    bad: &[u8],
    sent: &[u8],
    closing: impl Fn(&Dataplane) -> bool,
) {
    let (_, _, r) = run(dp, prog, open[0]);
    assert_eq!(reason::NAMES[r as usize], "nat_new_flow", "{prog:?} {what}");
    let (_, _, r) = run(dp, Prog::TcEgress, open[1]);
    assert_eq!(reason::NAMES[r as usize], "nat_reply", "{prog:?} {what}");
    let (ret, _, r) = run(dp, prog, bad);
    assert_eq!(
        reason::NAMES[r as usize],
        "drop_bad_checksum",
        "{prog:?} {what}: corrupted"
    );
    let dropped = if matches!(prog, Prog::Xdp) {
        1
    } else {
        TC_ACT_SHOT
    };
    assert_eq!(ret, dropped, "{prog:?} {what}: dropped");
    assert!(!closing(dp), "{prog:?} {what}: the flow stays");
    let (_, _, r) = run(dp, prog, sent);
    assert_eq!(
        reason::NAMES[r as usize],
        "nat_established",
        "{prog:?} {what}"
    );
    assert!(closing(dp), "{prog:?} {what}: closing");
    let (_, _, r) = run(dp, prog, bad);
    assert_eq!(
        reason::NAMES[r as usize],
        "nat_established",
        "{prog:?} {what}: a retransmission once closing"
    );
}

/// A FIN or RST closes a live flow only when its checksum holds (summed over the
/// whole segment, in chunks; or a partial checksum's pseudo-header sum from a local
/// sender): a corrupted one is dropped (`drop_bad_checksum`) and the flow stays
/// established, at XDP and at TC.
#[test]
fn only_fins_and_rsts_whose_checksum_holds_close_a_flow() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let closing = |dp: &Dataplane, f: &[u8]| {
        flow_of(dp, f).expect("the flow").tcp_flags & lb_common::CT_TCP_CLOSING != 0
    };
    // (hook, client, port, frontend, service port, backend port)
    for (prog, client, dst, dport) in [
        (Prog::Xdp, CLIENT, NODE, NODE_PORT),
        (Prog::TcIngress, "10.244.0.3", CLUSTER_IP, 80),
    ] {
        for (n, (what, flags, payload)) in [
            ("RST", TCP_RST, 0usize),
            ("FIN with 1,000 bytes (two chunks)", TCP_FIN | TCP_ACK, 1000),
            ("FIN with 61 bytes (odd length)", TCP_FIN | TCP_ACK, 61),
        ]
        .into_iter()
        .enumerate()
        {
            let sport = 43300 + n as u16 + if matches!(prog, Prog::Xdp) { 0 } else { 10 };
            let syn = Pkt::tcp(client, sport, dst, dport, TCP_SYN).build();
            let answer = Pkt::tcp(POD, 80, client, sport, TCP_SYN | TCP_ACK).build();
            let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
            let good = Pkt::tcp(client, sport, dst, dport, flags)
                .payload(&body)
                .build();
            // Corrupted in the last byte (the last, partial chunk), or in the
            // checksum field itself for the RST.
            let mut bad = good.clone();
            let at = if payload == 0 {
                14 + 20 + 17
            } else {
                good.len() - 1
            };
            bad[at] ^= 0x5a;
            // A local sender's partial checksum (TC) or the whole one: acted on.
            let sent = if matches!(prog, Prog::Xdp) {
                good.clone()
            } else {
                partial_checksum(&good)
            };
            let open = [syn.as_slice(), answer.as_slice()];
            closes_only_when_valid(&mut dp, prog, what, open, &bad, &sent, |dp| {
                closing(dp, &good)
            });
        }
    }
}

/// "Port unreachable" is rate-limited as the kernel's ICMP errors: for the node,
/// 1,000 a second after a burst of 50 (`net.ipv4.icmp_msgs_per_sec` /
/// `icmp_msgs_burst`), and per client one a second after a burst of 6
/// (`net.ipv4.icmp_ratelimit`, `XRLIM_BURST_FACTOR`); the rest are dropped
/// unanswered (`drop_reject_limited`).
#[test]
fn port_unreachable_answers_are_rate_limited_as_the_kernels() {
    // (answered, limited, elapsed ms) for `frames` frames from `client(i)`.
    fn flood(client: impl Fn(u64) -> String, frames: u64) -> (u64, u64, u64) {
        let mut dp = dataplane();
        dp.maps.set_iface(1, IFACE_POD).unwrap();
        let before = dp.maps.verdicts().unwrap();
        let start = std::time::Instant::now();
        for i in 0..frames {
            let f = Pkt::udp(&client(i), 40700, NODE, 30009)
                .payload(b"x")
                .build();
            let mut out = vec![0u8; f.len() + 256];
            let opts = TestRunOptions {
                data_in: Some(&f),
                data_out: Some(&mut out),
                ..Default::default()
            };
            dp.tc(PROG_TC_INGRESS).unwrap().test_run(opts).unwrap();
        }
        let ms = start.elapsed().as_millis() as u64;
        let after = dp.maps.verdicts().unwrap();
        let moved = |r: u32| after[r as usize].packets - before[r as usize].packets;
        let (answered, limited) = (
            moved(reason::REJECT_NO_BACKEND),
            moved(reason::DROP_REJECT_LIMITED),
        );
        assert_eq!(answered + limited, frames, "one verdict each");
        (answered, limited, ms)
    }
    // The node's bucket: 2,000 clients, one frame each.
    let (answered, limited, ms) = flood(|i| format!("10.244.{}.{}", i / 200, 1 + i % 200), 2000);
    eprintln!("2,000 clients: {answered} answered, {limited} dropped unanswered, in {ms} ms");
    assert!(answered >= 50, "{answered} answered: the burst is 50");
    assert!(
        answered <= 50 + ms + 10,
        "{answered} answered in {ms} ms: at most 50 + 1 a millisecond"
    );
    assert!(limited > 0, "2,000 frames in {ms} ms, none limited");
    // One client's bucket: 200 frames from one address.
    let (answered, limited, ms) = flood(|_| "10.244.0.3".to_string(), 200);
    eprintln!("one client: {answered} answered, {limited} dropped unanswered, in {ms} ms");
    assert!(answered >= 6, "{answered} answered: the burst is 6");
    assert!(
        answered <= 6 + ms / 1000 + 1,
        "{answered} answered in {ms} ms: at most 6 + 1 a second"
    );
}

/// Runs `frame` through `prog` with `ctx` (None: the program's default context);
/// returns (return value, output frame, every counter that moved, by name).
const CLIENT6: &str = "fd00:1::10";
const NODE6: &str = "fd00:1::2";
const POD6: &str = "fd00:244::2";
const CLUSTER_IP6: &str = "fd00:96::10";
const POD6_CLIENT: &str = "fd00:244::3";

/// The IPv6 pipeline on crafted frames, as the IPv4 rows: a NodePort flow through
/// XDP and its reply at TC egress, ClusterIP flows from a pod at TC ingress (TCP,
/// UDP), extension headers skipped, and what is not translated (another port,
/// ICMPv6, a fragment, a truncated frame) passed under its reason. Output frames
/// are built from scratch, so every checksum (the pseudo header's 16-byte
/// addresses included) is compared byte for byte.
#[test]
fn ipv6_flows_are_translated_as_ipv4_ones() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let syn = Pkt6::tcp(CLIENT6, 40000, NODE6, NODE_PORT, TCP_SYN);
    let data = Pkt6::tcp(CLIENT6, 40000, NODE6, NODE_PORT, TCP_ACK | TCP_PSH)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let reply = Pkt6::tcp(POD6, 80, CLIENT6, 40000, TCP_SYN | TCP_ACK);
    let mut ext = Pkt6::tcp(CLIENT6, 40001, NODE6, NODE_PORT, TCP_SYN);
    ext.hop_by_hop = true;
    let from_pod = Pkt6::tcp(POD6_CLIENT, 41000, CLUSTER_IP6, 80, TCP_SYN);
    let udp = Pkt6::udp(POD6_CLIENT, 5000, CLUSTER_IP6, 53);
    let udp_reply = Pkt6::udp(POD6, 5353, POD6_CLIENT, 5000);
    let other = Pkt6::tcp(CLIENT6, 40002, NODE6, 22, TCP_SYN);
    let mut icmp6 = packet::eth(0x86dd);
    icmp6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 64]);
    icmp6.extend_from_slice(&[0u8; 32]);
    icmp6.extend_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]);
    // A later fragment whose first never came (see
    // `ipv6_fragments_follow_the_flow_of_their_first_fragment` for the others).
    let [_, frag] = syn.fragments(16, 7);
    let mut truncated = syn.build();
    truncated.truncate(60);
    check(
        &mut dp,
        vec![
            Row {
                what: "IPv6 SYN to a NodePort: new flow, DNAT to the pod",
                prog: Prog::Xdp,
                input: syn.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(syn.rewritten(CLIENT6, 40000, POD6, 80).build()),
            },
            Row {
                what: "IPv6 data on the same flow: established",
                prog: Prog::Xdp,
                input: data.build(),
                reason: reason::NAT_ESTABLISHED,
                output: Some(data.rewritten(CLIENT6, 40000, POD6, 80).build()),
            },
            Row {
                what: "IPv6 reply from the pod at egress: source back to [NODE6]:30008",
                prog: Prog::TcEgress,
                input: reply.build(),
                reason: reason::NAT_REPLY,
                output: Some(reply.rewritten(NODE6, NODE_PORT, CLIENT6, 40000).build()),
            },
            Row {
                what: "a hop-by-hop options header before TCP: skipped, translated",
                prog: Prog::Xdp,
                input: ext.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(ext.rewritten(CLIENT6, 40001, POD6, 80).build()),
            },
            Row {
                what: "TCP to an IPv6 ClusterIP from a pod: translated at TC ingress",
                prog: Prog::TcIngress,
                input: from_pod.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(from_pod.rewritten(POD6_CLIENT, 41000, POD6, 80).build()),
            },
            Row {
                what: "UDP to an IPv6 ClusterIP from a pod: translated, checksum updated",
                prog: Prog::TcIngress,
                input: udp.build(),
                reason: reason::NAT_NEW_FLOW,
                output: Some(udp.rewritten(POD6_CLIENT, 5000, POD6, 5353).build()),
            },
            Row {
                what: "its reply at egress: from the ClusterIP's port 53",
                prog: Prog::TcEgress,
                input: udp_reply.build(),
                reason: reason::NAT_REPLY,
                output: Some(
                    udp_reply
                        .rewritten(CLUSTER_IP6, 53, POD6_CLIENT, 5000)
                        .build(),
                ),
            },
            Row {
                what: "IPv6 to a port no frontend has: passed",
                prog: Prog::Xdp,
                input: other.build(),
                reason: reason::PASS_NO_SERVICE,
                output: None,
            },
            Row {
                what: "ICMPv6 (an echo request): not TCP or UDP, passed",
                prog: Prog::Xdp,
                input: icmp6,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
            Row {
                what: "a later IPv6 fragment whose first never came: passed",
                prog: Prog::Xdp,
                input: frag,
                reason: reason::PASS_FRAGMENT,
                output: None,
            },
            Row {
                what: "an IPv6 frame shorter than its payload length: passed",
                prog: Prog::TcIngress,
                input: truncated,
                reason: reason::PASS_MALFORMED,
                output: None,
            },
        ],
    );
    // Each translated flow is tracked in the IPv6 tables by its reply entry; a
    // second packet or an answer writes its original one: both entries for the
    // NodePort flow and the UDP one, which were answered, one for the other two.
    let flows = dp.maps.conntrack6().unwrap();
    assert_eq!(flows.len(), 6, "2 flows x 2 entries + 2 x 1: {flows:?}");
    for p in [&syn, &ext, &from_pod, &udp] {
        let built = p.build();
        let found = flows.iter().any(|(k, v)| {
            v.nat_daddr_be == lb_user::sync::addr6(p.src)
                && k.dport_be == v.nat_dport_be
                && v.nat_dport_be == p.l4.sport.to_be()
                && v.nat_sport_be == p.l4.dport.to_be()
                && v.direction == lb_common::CT_DIR_REPLY
        });
        assert!(found, "no entry for {p:?} ({} bytes)", built.len());
    }
    for (k, v) in &flows {
        for w in [k.saddr_be, k.daddr_be, v.nat_saddr_be, v.nat_daddr_be] {
            assert_ne!(w, [0; 4], "an address was left zero: {k:?} {v:?}");
        }
    }
}

/// IPv6 fragments as IPv4's (`fragments_follow_the_flow_of_their_first_fragment`):
/// the first fragment (its Fragment header at offset 0 with more to come) carries
/// the ports and starts or finds the flow; a later one finds the ports its first
/// left under (addresses, protocol, the Fragment header's 32-bit identification)
/// and gets its addresses alone rewritten, at XDP, TC ingress and egress; an
/// atomic fragment (offset 0, no more) is a whole datagram. Frames are built from
/// scratch, so a first fragment's L4 checksum is checked over the whole rewritten
/// datagram.
#[test]
fn ipv6_fragments_follow_the_flow_of_their_first_fragment() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
    // A 1,208-byte UDP datagram to an IPv6 NodePort, sent as 1,008 + 200 bytes.
    let to_np = Pkt6::udp(CLIENT6, 40100, NODE6, UDP_NODE_PORT).payload(&payload);
    let [first, later] = to_np.fragments(1008, 0x1001_0001);
    let [first_out, later_out] = to_np
        .rewritten(CLIENT6, 40100, POD6, 5353)
        .fragments(1008, 0x1001_0001);
    // The answer, fragmented too, back to the service address at egress.
    let reply = Pkt6::udp(POD6, 5353, CLIENT6, 40100).payload(&payload);
    let [r_first, r_later] = reply.fragments(504, 0x2002_0002);
    let [r_first_out, r_later_out] = reply
        .rewritten(NODE6, UDP_NODE_PORT, CLIENT6, 40100)
        .fragments(504, 0x2002_0002);
    // TCP from a pod to an IPv6 ClusterIP (TC ingress), 20-byte header + 580 bytes.
    let tcp = Pkt6::tcp(POD6_CLIENT, 41500, CLUSTER_IP6, 80, TCP_SYN).payload(&payload[..580]);
    let [t_first, t_later] = tcp.fragments(200, 0x3003_0003);
    let [t_first_out, t_later_out] = tcp
        .rewritten(POD6_CLIENT, 41500, POD6, 80)
        .fragments(200, 0x3003_0003);
    // A datagram whose first fragment started no flow (no endpoints), a later
    // fragment whose first never came, and one with the identification of a known
    // datagram's but its low 16 bits alone (IPv6's identification is 32 bits).
    let no_ep = Pkt6::udp(CLIENT6, 40200, NODE6, 30009).payload(&payload);
    let [ne_first, ne_later] = no_ep.fragments(1008, 0x4004_0004);
    let [_, orphan_later] = to_np.fragments(1008, 0x6006_0006);
    let [_, short_id] = to_np.fragments(1008, 0x0001);
    // An atomic fragment: a whole datagram behind a Fragment header.
    let atomic = Pkt6::udp(CLIENT6, 40300, NODE6, UDP_NODE_PORT).payload(&payload[..100]);
    let atomic_out = atomic
        .rewritten(CLIENT6, 40300, POD6, 5353)
        .atomic_fragment(0x7007_0007);
    let rows = vec![
        Row {
            what: "first IPv6 fragment to a NodePort: new flow, port and L4 checksum rewritten",
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
            what: "TCP first fragment from a pod to an IPv6 ClusterIP (TC)",
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
            what: "a later fragment before (or without) its first: passed unchanged",
            prog: Prog::Xdp,
            input: orphan_later,
            reason: reason::PASS_FRAGMENT,
            output: None,
        },
        Row {
            what: "a later fragment matching a datagram's identification in 16 bits only",
            prog: Prog::Xdp,
            input: short_id,
            reason: reason::PASS_FRAGMENT,
            output: None,
        },
        Row {
            what: "an atomic fragment: a whole datagram, translated",
            prog: Prog::Xdp,
            input: atomic.atomic_fragment(0x7007_0007),
            reason: reason::NAT_NEW_FLOW,
            output: Some(atomic_out),
        },
    ];
    check(&mut dp, rows);
}

/// ICMPv6 errors about IPv6 flows are translated with them, as IPv4's ICMP errors
/// (`icmp_errors_about_a_flow_are_translated_with_it`): a pod's "port unreachable"
/// leaves about the service address, and a "packet too big" a router on the
/// client's path sends about a reply (which left from the NodePort) reaches the pod
/// about the reply it sent: IPv6 has no other way to learn a path's MTU.
#[test]
fn icmpv6_errors_about_a_flow_are_translated_with_it() {
    const ROUTER6: &str = "fd00:1::1";
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let syn = Pkt6::tcp(CLIENT6, 40700, NODE6, NODE_PORT, TCP_SYN);
    let (_, _, moved) = run(&mut dp, Prog::Xdp, &syn.build());
    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
    // The pod's "port unreachable" about what it received (client -> pod).
    let at_pod = syn.rewritten(CLIENT6, 40700, POD6, 80).build();
    let from_pod = packet::icmp6_error(1, 4, 0, POD6, CLIENT6, &at_pod);
    let want = packet::icmp6_error(1, 4, 0, NODE6, CLIENT6, &syn.build());
    // A large reply of the pod as it left the node (from the NodePort), and the
    // router's "packet too big" about it: for the pod, about what the pod sent.
    let reply = Pkt6::tcp(POD6, 80, CLIENT6, 40700, TCP_ACK | TCP_PSH).payload(&[7; 200]);
    let left = reply.rewritten(NODE6, NODE_PORT, CLIENT6, 40700).build();
    let too_big = packet::icmp6_error(2, 0, 1280, ROUTER6, NODE6, &left);
    let too_big_want = packet::icmp6_error(2, 0, 1280, ROUTER6, POD6, &reply.build());
    // The reply passes lb on its way out (as every reply the router can have seen).
    let (_, out, moved) = run(&mut dp, Prog::TcEgress, &reply.build());
    assert_eq!(reason::NAMES[moved as usize], "nat_reply");
    assert_eq!(out, left, "the reply as it left");
    // A UDP flow from a pod to the ClusterIP, and its backend's "port unreachable".
    let udp = Pkt6::udp(POD6_CLIENT, 5000, CLUSTER_IP6, 53).payload(b"query");
    let (_, _, moved) = run(&mut dp, Prog::TcIngress, &udp.build());
    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
    let udp_at_pod = udp.rewritten(POD6_CLIENT, 5000, POD6, 5353).build();
    let udp_from_pod = packet::icmp6_error(1, 4, 0, POD6, POD6_CLIENT, &udp_at_pod);
    let udp_want = packet::icmp6_error(1, 4, 0, CLUSTER_IP6, POD6_CLIENT, &udp.build());
    let unrelated = packet::icmp6_error(
        1,
        4,
        0,
        POD6,
        CLIENT6,
        &Pkt6::tcp(CLIENT6, 40799, POD6, 80, TCP_SYN).build(),
    );
    // Quoting fewer than the 8 bytes that hold the ports: not looked at.
    let mut short = packet::icmp6_error(1, 4, 0, POD6, CLIENT6, &at_pod);
    short.truncate(14 + 40 + 8 + 40 + 4);
    short[18..20].copy_from_slice(&(8u16 + 40 + 4).to_be_bytes());
    check(
        &mut dp,
        vec![
            Row {
                what: "a pod's port unreachable (TCP) at egress: about the service address",
                prog: Prog::TcEgress,
                input: from_pod.clone(),
                reason: reason::NAT_RELATED,
                output: Some(want),
            },
            Row {
                what: "the same at ingress: left for egress",
                prog: Prog::TcIngress,
                input: from_pod,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
            Row {
                what: "packet too big about the reply, at XDP: to the pod, about its own reply",
                prog: Prog::Xdp,
                input: too_big.clone(),
                reason: reason::NAT_RELATED,
                output: Some(too_big_want.clone()),
            },
            Row {
                what: "the same at TC ingress (a link without XDP)",
                prog: Prog::TcIngress,
                input: too_big,
                reason: reason::NAT_RELATED,
                output: Some(too_big_want),
            },
            Row {
                what: "a pod's port unreachable (UDP, quoted checksum updated)",
                prog: Prog::TcEgress,
                input: udp_from_pod,
                reason: reason::NAT_RELATED,
                output: Some(udp_want),
            },
            Row {
                what: "an error about no tracked flow: untouched",
                prog: Prog::TcEgress,
                input: unrelated,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
            Row {
                what: "an error quoting 4 bytes of TCP: untouched",
                prog: Prog::TcEgress,
                input: short,
                reason: reason::PASS_NOT_L4,
                output: None,
            },
        ],
    );
}

/// A pod reaching itself through its IPv6 ClusterIP (hairpin), as IPv4's
/// (`packets_lb_forwards_itself_lose_one_ttl`): the SYN goes straight back to the
/// pod from the IPv6 hairpin address (fd6c:6200::1), one hop less; the pod's answer
/// to that address comes back from the ClusterIP; with no hop left it is dropped.
#[test]
fn an_ipv6_pod_reaching_itself_through_its_cluster_ip_is_answered_from_the_hairpin_address() {
    const HAIRPIN6: &str = "fd6c:6200::1";
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let swap_macs = |mut f: Vec<u8>| {
        let macs: Vec<u8> = f[6..12].iter().chain(&f[..6]).copied().collect();
        f[..12].copy_from_slice(&macs);
        f
    };
    let syn = Pkt6::tcp(POD6, 42000, CLUSTER_IP6, 80, TCP_SYN);
    let mut want = syn.rewritten(HAIRPIN6, 42000, POD6, 80);
    want.hop_limit = 63;
    let (ret, out, moved) = run(&mut dp, Prog::TcIngress, &syn.build());
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_REDIRECT, "nat_new_flow")
    );
    assert_eq!(out, swap_macs(want.build()), "hairpin SYN, hop limit 63");
    let answer = Pkt6::tcp(POD6, 80, HAIRPIN6, 42000, TCP_SYN | TCP_ACK);
    let mut want = answer.rewritten(CLUSTER_IP6, 80, POD6, 42000);
    want.hop_limit = 63;
    let (ret, out, moved) = run(&mut dp, Prog::TcIngress, &answer.build());
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_REDIRECT, "nat_reply")
    );
    assert_eq!(
        out,
        swap_macs(want.build()),
        "its answer, from the ClusterIP"
    );
    let mut last_hop = Pkt6::tcp(POD6, 42001, CLUSTER_IP6, 80, TCP_SYN);
    last_hop.hop_limit = 1;
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &last_hop.build());
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_SHOT, "drop_ttl_exceeded")
    );
}

/// ClientIP affinity over IPv6, through the agent's own pipeline: with
/// `affinity_timeout_s` set, every new flow of one client lands on the backend its
/// first one got (20 flows, 4 backends); without it, the same 20 flows spread.
#[test]
fn ipv6_client_ip_affinity_keeps_a_client_on_one_backend() {
    own_netns();
    let mut dp = Dataplane::load_with(None, &LoadConfig::default()).expect("load lb's eBPF object");
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let ip6 = |s: &str| IpAddr::V6(s.parse().unwrap());
    let backends: Vec<(IpAddr, u16)> = (2..6)
        .map(|i| (ip6(&format!("fd00:244::{i}")), 80))
        .collect();
    let mut sticky = port_plan(
        "sticky6",
        6,
        vec![(frontend(ip6(CLUSTER_IP6), 80, 6), SVC_F_INTERNAL)],
        backends.clone(),
    );
    sticky.affinity_timeout_s = 10800;
    let plain = port_plan(
        "plain6",
        6,
        vec![(frontend(ip6(CLUSTER_IP6), 81, 6), SVC_F_INTERNAL)],
        backends,
    );
    program(&mut dp.maps, &[sticky, plain]);
    let chosen =
        |dp: &mut Dataplane, port: u16| -> std::collections::BTreeSet<std::net::Ipv6Addr> {
            (0..20)
                .map(|i| {
                    let syn = Pkt6::tcp(POD6_CLIENT, 43000 + i, CLUSTER_IP6, port, TCP_SYN);
                    let (_, out, moved) = run(dp, Prog::TcIngress, &syn.build());
                    assert_eq!(reason::NAMES[moved as usize], "nat_new_flow");
                    let dst: [u8; 16] = out[38..54].try_into().unwrap();
                    std::net::Ipv6Addr::from(dst)
                })
                .collect()
        };
    let sticky = chosen(&mut dp, 80);
    assert_eq!(sticky.len(), 1, "one client, one backend: {sticky:?}");
    let spread = chosen(&mut dp, 81);
    assert!(
        spread.len() > 1,
        "without affinity the flows spread: {spread:?}"
    );
}

/// `externalTrafficPolicy: Local` in both families, as the planner leaves it (see
/// `plan::tests::traffic_policies_hold_in_ipv6`): a NodePort whose plan has the
/// node's own pod alone sends every new flow there with the client's address kept
/// (no SNAT: the pod sees the client); one with no pod on this node drops (as
/// kube-proxy does), never answering as a service without endpoints would.
#[test]
fn external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_pod_in_both_families() {
    own_netns();
    let mut dp = Dataplane::load_with(None, &LoadConfig::default()).expect("load lb's eBPF object");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let plans = [
        port_plan(
            "local4",
            PROTO_TCP,
            vec![(
                frontend(ip(NODE), NODE_PORT, PROTO_TCP),
                SVC_F_EXTERNAL_LOCAL,
            )],
            vec![(ip(POD), 80)],
        ),
        port_plan(
            "local6",
            PROTO_TCP,
            vec![(
                frontend(ip(NODE6), NODE_PORT, PROTO_TCP),
                SVC_F_EXTERNAL_LOCAL,
            )],
            vec![(ip(POD6), 80)],
        ),
        port_plan(
            "none4",
            PROTO_TCP,
            vec![(
                frontend(ip(NODE), NODE_PORT + 1, PROTO_TCP),
                SVC_F_EXTERNAL_LOCAL,
            )],
            vec![],
        ),
        port_plan(
            "none6",
            PROTO_TCP,
            vec![(
                frontend(ip(NODE6), NODE_PORT + 1, PROTO_TCP),
                SVC_F_EXTERNAL_LOCAL,
            )],
            vec![],
        ),
    ];
    program(&mut dp.maps, &plans);
    for (prog, ports) in [(Prog::Xdp, 41000), (Prog::TcIngress, 43000)] {
        for i in 0..10 {
            let syn = Pkt::tcp(CLIENT, ports + i, NODE, NODE_PORT, TCP_SYN);
            let (_, out, moved) = run(&mut dp, prog, &syn.build());
            assert_eq!(
                reason::NAMES[moved as usize],
                "nat_new_flow",
                "{prog:?} IPv4"
            );
            assert_eq!(
                &out[26..30],
                &ip4_octets(CLIENT),
                "{prog:?}: the client's address kept"
            );
            assert_eq!(&out[30..34], &ip4_octets(POD), "{prog:?}: to the local pod");
            let syn6 = Pkt6::tcp(CLIENT6, ports + i, NODE6, NODE_PORT, TCP_SYN);
            let (_, out, moved) = run(&mut dp, prog, &syn6.build());
            assert_eq!(
                reason::NAMES[moved as usize],
                "nat_new_flow",
                "{prog:?} IPv6"
            );
            assert_eq!(
                &out[22..38],
                &ip6_octets(CLIENT6),
                "{prog:?}: the client's address kept"
            );
            assert_eq!(
                &out[38..54],
                &ip6_octets(POD6),
                "{prog:?}: to the local pod"
            );
        }
        let (ret, _, moved) = run(
            &mut dp,
            prog,
            &Pkt::tcp(CLIENT, 42000, NODE, NODE_PORT + 1, TCP_SYN).build(),
        );
        let dropped = if prog == Prog::Xdp {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        };
        assert_eq!(
            (ret, reason::NAMES[moved as usize]),
            (dropped, "drop_no_local_backend"),
            "{prog:?} IPv4 without a local pod"
        );
        let (ret, _, moved) = run(
            &mut dp,
            prog,
            &Pkt6::tcp(CLIENT6, 42000, NODE6, NODE_PORT + 1, TCP_SYN).build(),
        );
        assert_eq!(
            (ret, reason::NAMES[moved as usize]),
            (dropped, "drop_no_local_backend"),
            "{prog:?} IPv6 without a local pod"
        );
    }
}

fn ip4_octets(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

fn ip6_octets(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// As `only_fins_and_rsts_whose_checksum_holds_close_a_flow`, over IPv6: a RST or a
/// FIN whose checksum is wrong is dropped and leaves its flow as it was; a right
/// one closes it; once closing, anything goes. IPv6 sums closing segments of up to
/// 512 bytes, TCP header included (longer ones count as valid, see
/// `Family::VERIFY_CHUNKS`).
#[test]
fn ipv6_fins_and_rsts_close_a_flow_only_when_their_checksum_holds() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let closing = |dp: &Dataplane, client: &str, sport: u16| {
        dp.maps
            .conntrack6()
            .unwrap()
            .iter()
            .find(|(k, _)| {
                k.saddr_be == lb_user::sync::addr6(client.parse().unwrap())
                    && k.sport_be == sport.to_be()
            })
            .expect("the flow")
            .1
            .tcp_flags
            & lb_common::CT_TCP_CLOSING
            != 0
    };
    for (prog, client, dst, dport) in [
        (Prog::Xdp, CLIENT6, NODE6, NODE_PORT),
        (Prog::TcIngress, POD6_CLIENT, CLUSTER_IP6, 80),
    ] {
        for (n, (what, flags, payload)) in [
            ("RST", TCP_RST, 0usize),
            ("FIN with 61 bytes (odd length)", TCP_FIN | TCP_ACK, 61),
            (
                "FIN with 480 bytes (a 500-byte segment)",
                TCP_FIN | TCP_ACK,
                480,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let sport = 43400 + n as u16 + if matches!(prog, Prog::Xdp) { 0 } else { 10 };
            let syn = Pkt6::tcp(client, sport, dst, dport, TCP_SYN).build();
            let answer = Pkt6::tcp(POD6, 80, client, sport, TCP_SYN | TCP_ACK).build();
            let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
            let good = Pkt6::tcp(client, sport, dst, dport, flags)
                .payload(&body)
                .build();
            // Corrupted in the last byte, or in the checksum field for the RST.
            let mut bad = good.clone();
            let at = if payload == 0 {
                14 + 40 + 17
            } else {
                good.len() - 1
            };
            bad[at] ^= 0x5a;
            let open = [syn.as_slice(), answer.as_slice()];
            closes_only_when_valid(&mut dp, prog, what, open, &bad, &good, |dp| {
                closing(dp, client, sport)
            });
        }
    }
}

fn run_counted(
    dp: &mut Dataplane,
    prog: Prog,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> (u32, Vec<u8>, Vec<&'static str>) {
    let before = dp.maps.verdicts().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
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
    let moved = (0..reason::COUNT as usize)
        .filter(|i| after[*i].packets != before[*i].packets)
        .map(|i| reason::NAMES[i])
        .collect();
    (res.return_value, out, moved)
}

/// SNAT flows (a NodePort whose backend lives on another node), in a node
/// namespace with known routes: the pods of node 2 (10.244.1.0/24) via 192.168.1.3
/// on eth0, whose neighbours are known. A new flow leaves from the node's address
/// and a port of the SNAT range (61000-65535) towards the remote pod, one hop
/// less, redirected by TC where the FIB says (`bpf_redirect_neigh`) or by XDP
/// (eth0 marked as taking XDP frames, MACs from the FIB); the pod's answer comes
/// back to the client from the NodePort. Without a route nothing is translated and
/// no flow stays.
#[test]
fn snat_flows_leave_from_the_node_and_their_answers_return_to_the_client() {
    const REMOTE: &str = "10.244.1.2";
    const NODE2: &str = "192.168.1.3";
    const XDP_REDIRECT: u32 = 4;
    lb_tests::require_root();
    let mut t = Topology::new("prsnat").unwrap();
    let s = seeds::lan(&mut t).unwrap();
    let (node2_mac, laptop_mac, eth0_mac) = (
        [0x02, 0, 0, 0, 0x01, 0x03],
        t.mac(&s.laptop, "eth0").unwrap(),
        t.mac(&s.node, "eth0").unwrap(),
    );
    t.neigh(&s.node, NODE2, node2_mac, "eth0").unwrap();
    t.neigh(&s.node, CLIENT, laptop_mac, "eth0").unwrap();
    t.sh(
        &s.node,
        &["ip", "route", "add", "10.244.1.0/24", "via", NODE2],
    )
    .unwrap();
    let eth0 = t.ifindex(&s.node, "eth0").unwrap();
    let _in = InNetns::enter(&s.node).unwrap();

    let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
    let mut dp = Dataplane::load_with(
        None,
        &LoadConfig {
            snat_addr: Some(ip(NODE)),
            ..LoadConfig::default()
        },
    )
    .expect("load lb's eBPF object");
    let mut plan = port_plan(
        "remote",
        6,
        vec![(frontend(ip(NODE), 30011, 6), 0)],
        vec![(ip(REMOTE).into(), 80)],
    );
    plan.remote = [ip(REMOTE).into()].into();
    program(&mut dp.maps, &[plan]);
    let snat_port = |out: &[u8]| u16::from_be_bytes([out[34], out[35]]);
    let one_hop = |p: &Pkt| {
        let mut p = p.clone();
        p.ttl -= 1;
        p
    };

    // TC: the SYN leaves from the node's address and an SNAT port, to node 2.
    let syn = Pkt::tcp(CLIENT, 42200, NODE, 30011, TCP_SYN);
    let (ret, out, moved) = run_counted(&mut dp, Prog::TcIngress, &syn.build(), None);
    assert_eq!(ret, TC_ACT_REDIRECT, "TC SYN: redirected");
    assert_eq!(moved, ["nat_new_flow", "fwd_tc_neigh"], "TC SYN: counters");
    let port = snat_port(&out);
    assert!((61_000..=65_535).contains(&port), "SNAT port {port}");
    assert_eq!(
        out,
        one_hop(&syn.rewritten(NODE, port, REMOTE, 80)).build(),
        "TC SYN: rewritten, one hop less"
    );
    // The pod's answer, to the node's SNAT port, returns to the client from the
    // NodePort.
    let answer = Pkt::tcp(REMOTE, 80, NODE, port, TCP_SYN | TCP_ACK);
    let (ret, out, moved) = run_counted(&mut dp, Prog::TcIngress, &answer.build(), None);
    assert_eq!(ret, TC_ACT_REDIRECT, "TC answer: redirected");
    assert_eq!(moved, ["nat_reply", "fwd_tc_neigh"], "TC answer: counters");
    assert_eq!(
        out,
        one_hop(&answer.rewritten(NODE, 30011, CLIENT, 42200)).build(),
        "TC answer: back to the client from the NodePort"
    );

    // XDP on eth0 (an interface that takes XDP frames): redirected at once, with the
    // MACs the FIB gave (node 2's neighbour entry, eth0's own).
    dp.maps
        .set_iface(eth0, IFACE_EXTERNAL | lb_common::IFACE_F_XDP_XMIT)
        .unwrap();
    let syn = Pkt::tcp(CLIENT, 42201, NODE, 30011, TCP_SYN);
    let frame = syn.build();
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&eth0.to_ne_bytes());
    let (ret, out, moved) = run_counted(&mut dp, Prog::Xdp, &frame, Some(&ctx));
    assert_eq!(ret, XDP_REDIRECT, "XDP SYN: redirected");
    assert_eq!(
        moved,
        ["nat_new_flow", "fwd_xdp_redirect"],
        "XDP SYN: counters"
    );
    let port = snat_port(&out);
    assert!((61_000..=65_535).contains(&port), "SNAT port {port}");
    let mut want = one_hop(&syn.rewritten(NODE, port, REMOTE, 80)).build();
    want[..6].copy_from_slice(&node2_mac);
    want[6..12].copy_from_slice(&eth0_mac);
    assert_eq!(out, want, "XDP SYN: rewritten, MACs from the FIB");

    // No route to node 2's pods: nothing translated, no flow left, no port taken.
    t.sh(&s.node, &["ip", "route", "del", "10.244.1.0/24"])
        .unwrap();
    let syn = Pkt::tcp(CLIENT, 42202, NODE, 30011, TCP_SYN).build();
    let (ret, out, moved) = run_counted(&mut dp, Prog::TcIngress, &syn, None);
    assert_eq!(
        (ret, moved),
        (TC_UNSPEC, vec!["pass_no_route"]),
        "no route: passed"
    );
    assert_eq!(out, syn, "no route: untouched");
    assert!(flow_of(&dp, &syn).is_none(), "no route: no flow");
    assert_eq!(
        dp.maps.conntrack().unwrap().len(),
        4,
        "only the two flows above (two entries each)"
    );
}

/// As netfilter's REJECT: a packet to a service without endpoints whose checksum is
/// wrong gets no answer; it is dropped (`drop_bad_checksum`). A UDP datagram without
/// a checksum is answered.
#[test]
fn rejects_answer_no_packet_whose_checksum_is_wrong() {
    let mut dp = dataplane();
    dp.maps.set_iface(1, IFACE_POD).unwrap();
    let udp = Pkt::udp("10.244.0.3", 40900, NODE, 30009)
        .payload(b"x")
        .build();
    let syn = Pkt::tcp("10.244.0.3", 40901, NODE, 30009, TCP_SYN).build();
    let mut no_sum = Pkt::udp("10.244.0.3", 40902, NODE, 30009).payload(b"x");
    no_sum.udp_no_checksum = true;
    for (what, good) in [("UDP", udp), ("TCP SYN", syn)] {
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &bad);
        assert_eq!(
            (ret, reason::NAMES[moved as usize]),
            (TC_ACT_SHOT, "drop_bad_checksum"),
            "{what}, corrupted"
        );
        let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &good);
        assert_eq!(
            (ret, reason::NAMES[moved as usize]),
            (TC_ACT_REDIRECT, "reject_no_backend"),
            "{what}"
        );
    }
    let (ret, _, moved) = run(&mut dp, Prog::TcIngress, &no_sum.build());
    assert_eq!(
        (ret, reason::NAMES[moved as usize]),
        (TC_ACT_REDIRECT, "reject_no_backend"),
        "UDP without a checksum"
    );
}

/// An ARP frame from this node's uplink: operation (1 request, 2 reply) and the
/// sender's address (a gratuitous request has it as the target too).
fn arp_frame(op: u8, sender: &str, target: &str) -> Vec<u8> {
    let mut f = packet::eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&sender.parse::<Ipv4Addr>().unwrap().octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.parse::<Ipv4Addr>().unwrap().octets());
    f
}

#[test]
fn arp_about_a_load_balancer_address_leaves_only_while_this_node_holds_it() {
    let mut dp = dataplane();
    let (held, lapsed) = ("192.168.1.241", "192.168.1.242");
    dp.maps
        .neigh_holds
        .hold(held.parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    dp.maps
        .neigh_holds
        .hold(lapsed.parse().unwrap(), Duration::from_nanos(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1));
    let pass = reason::PASS_NOT_IP;
    let drop = reason::DROP_ARP_NOT_HOLDER;
    let rows = [
        (
            "reply about a held address",
            Prog::TcEgress,
            arp_frame(2, held, CLIENT),
            pass,
        ),
        (
            "gratuitous ARP about a held address",
            Prog::TcEgress,
            arp_frame(1, held, held),
            pass,
        ),
        (
            "reply about an address whose hold ran out",
            Prog::TcEgress,
            arp_frame(2, lapsed, CLIENT),
            drop,
        ),
        (
            "gratuitous ARP about it",
            Prog::TcEgress,
            arp_frame(1, lapsed, lapsed),
            drop,
        ),
        (
            "a request from it",
            Prog::TcEgress,
            arp_frame(1, lapsed, CLIENT),
            drop,
        ),
        (
            "reply about the node's own address (not lb's)",
            Prog::TcEgress,
            arp_frame(2, NODE, CLIENT),
            pass,
        ),
        (
            "ARP coming in about the lapsed address: not ours to stop",
            Prog::TcIngress,
            arp_frame(2, lapsed, CLIENT),
            pass,
        ),
        (
            "XDP: ARP passes",
            Prog::Xdp,
            arp_frame(2, lapsed, CLIENT),
            pass,
        ),
    ];
    check_held(&mut dp, &rows, drop);
    // Held again (the agent renewed it): it leaves again.
    dp.maps
        .neigh_holds
        .hold(lapsed.parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    let (ret, _, moved) = run(&mut dp, Prog::TcEgress, &arp_frame(2, lapsed, CLIENT));
    assert_eq!((ret, moved), (TC_UNSPEC, reason::PASS_NOT_IP));
}

/// Runs the rows of the two tests above (what, program, frame, reason wanted): a
/// frame is never changed; under `drop` it is dropped at TC, else passed on.
fn check_held(dp: &mut Dataplane, rows: &[(&str, Prog, Vec<u8>, u32)], drop: u32) {
    for (what, prog, frame, want) in rows {
        let (ret, out, moved) = run(dp, *prog, frame);
        let want_ret = match prog {
            Prog::Xdp => XDP_PASS,
            _ if *want == drop => TC_ACT_SHOT,
            _ => TC_UNSPEC,
        };
        assert_eq!(ret, want_ret, "{what}: return value");
        assert_eq!(
            reason::NAMES[moved as usize],
            reason::NAMES[*want as usize],
            "{what}: reason"
        );
        assert_eq!(&out, frame, "{what}: the frame is never changed");
    }
}

/// A Neighbor Advertisement from this node's uplink about `target` (to `dst`:
/// solicited, unicast; or unsolicited, to all nodes), with the target link-layer
/// address option.
fn na_frame(target: &str, dst: &str) -> Vec<u8> {
    let solicited = if dst == "ff02::1" { 0 } else { 0x4000_0000 };
    let mut body = target
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    body.extend_from_slice(&[2, 1, 0x02, 0, 0, 0, 0, 0x02]);
    packet::icmp6(136, 0, 0x2000_0000 | solicited, target, dst, &body, 255)
}

/// A Neighbor Solicitation from `src` for `target`'s address, to its
/// solicited-node group, with the source link-layer address option.
fn ns_frame(src: &str, target: &str) -> Vec<u8> {
    let t = target.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let group = format!("ff02::1:ff{:02x}:{:02x}{:02x}", t[13], t[14], t[15]);
    let mut body = t.to_vec();
    body.extend_from_slice(&[1, 1, 0x02, 0, 0, 0, 0, 0x02]);
    packet::icmp6(135, 0, 0, src, &group, &body, 255)
}

/// IPv6's half of the test above: the node's Neighbor Advertisements about an
/// IPv6 LoadBalancer address (its kernel's answers to solicitations, the agent's
/// unsolicited one) and its solicitations from that address leave only while this
/// node holds it (`LB_NDP_HOLD`); every other IPv6 packet goes on as before.
#[test]
fn neighbor_discovery_about_an_ipv6_load_balancer_address_leaves_only_while_this_node_holds_it() {
    let mut dp = dataplane();
    let (held, lapsed) = ("fd00:1::f1", "fd00:1::f2");
    let holds = &mut dp.maps.neigh_holds;
    holds
        .hold(held.parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    holds
        .hold(lapsed.parse().unwrap(), Duration::from_nanos(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1));
    let drop = reason::DROP_NDP_NOT_HOLDER;
    let other = reason::PASS_NOT_L4;
    let rows = [
        (
            "answer about a held address",
            Prog::TcEgress,
            na_frame(held, CLIENT6),
            other,
        ),
        (
            "unsolicited NA about a held address",
            Prog::TcEgress,
            na_frame(held, "ff02::1"),
            other,
        ),
        (
            "answer about an address whose hold ran out",
            Prog::TcEgress,
            na_frame(lapsed, CLIENT6),
            drop,
        ),
        (
            "unsolicited NA about it",
            Prog::TcEgress,
            na_frame(lapsed, "ff02::1"),
            drop,
        ),
        (
            "a solicitation from it",
            Prog::TcEgress,
            ns_frame(lapsed, CLIENT6),
            drop,
        ),
        (
            "a solicitation for it, from the node's own address",
            Prog::TcEgress,
            ns_frame(NODE6, lapsed),
            other,
        ),
        (
            "answer about the node's own address (not lb's)",
            Prog::TcEgress,
            na_frame(NODE6, CLIENT6),
            other,
        ),
        (
            "NA coming in about the lapsed address: not ours to stop",
            Prog::TcIngress,
            na_frame(lapsed, CLIENT6),
            other,
        ),
    ];
    check_held(&mut dp, &rows, drop);
    // Renewed: it leaves again. An IPv4 hold of the same bits is another address.
    dp.maps
        .neigh_holds
        .hold(lapsed.parse().unwrap(), Duration::from_secs(60))
        .unwrap();
    let (ret, _, moved) = run(&mut dp, Prog::TcEgress, &na_frame(lapsed, CLIENT6));
    assert_eq!((ret, moved), (TC_UNSPEC, other));
}

/// The benchmarks' and tests' counting sink (`lb_bench_sink`, on a pod's end of its
/// veth) takes UDP only, whatever bytes sit where an IPv4 header keeps its
/// protocol: an ARP request whose sender MAC has 17 as its second byte (once
/// dropped as "UDP", so the node never resolved the pod: seeds'
/// `by_default_a_pod_that_runs_xdp...` failed with the pod's neighbour INCOMPLETE)
/// and an IPv6 packet whose source address has 17 there pass to the pod's stack.
#[test]
fn the_bench_sink_takes_udp_and_passes_arp_whatever_its_bytes() {
    const XDP_DROP: u32 = 1;
    own_netns();
    let mut bench = aya::Ebpf::load(lb_user::loader::BENCH_ELF).unwrap();
    let sink: &mut aya::programs::Xdp = bench
        .program_mut(lb_common::PROG_BENCH_SINK)
        .unwrap()
        .try_into()
        .unwrap();
    sink.load().unwrap();
    let mut arp = arp_frame(1, NODE, POD);
    arp[23] = 17; // the sender MAC's second byte: byte 9 of the ARP packet
    let mut tcp6 = Pkt6::tcp("fd11::2", 40000, POD6, 80, TCP_SYN).build();
    assert_eq!(
        tcp6[23], 0x11,
        "the IPv6 source's second byte sits at byte 9"
    );
    tcp6[23] = 17;
    let rows = [
        ("ARP request, sender MAC 02:11:..", arp, XDP_PASS),
        ("IPv6 TCP from fd11::2", tcp6, XDP_PASS),
        (
            "IPv4 TCP",
            Pkt::tcp(CLIENT, 40000, POD, 80, TCP_SYN).build(),
            XDP_PASS,
        ),
        (
            "IPv4 UDP",
            Pkt::udp(CLIENT, 40000, POD, 53).build(),
            XDP_DROP,
        ),
        (
            "IPv6 UDP",
            Pkt6::udp(CLIENT6, 40000, POD6, 53).build(),
            XDP_DROP,
        ),
    ];
    for (what, frame, want) in rows {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let got = sink.test_run(opts).unwrap().return_value;
        assert_eq!(got, want, "{what}");
    }
}
