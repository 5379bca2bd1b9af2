//! Every BPF map key and value type, map name and limit that lb's kernel side
//! (`lb-ebpf`) and user side (`lb-user`) share. Each type is `#[repr(C)]`, `Copy`,
//! has explicit padding and a size assertion, and names the byte order of its
//! fields (`_be`: network byte order, as the field sits in the packet).
#![no_std]

use core::mem::size_of;

/// IP protocol numbers lb balances.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

// ---- map names (the ELF symbol names; also the pin file names on bpffs) ----
pub const MAP_SERVICES: &str = "LB_SERVICES";
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// New flows, and any the assured table has no room for: a set-associative table
/// of [`CtSlot`]s (an array, [`CT_WAYS`] slots a set), so a new flow's entry is a
/// write to its set, no allocation and no lock, and a flood of new flows makes room
/// by overwriting the least recently seen entry of a set.
pub const MAP_CONNTRACK: &str = "LB_CT";
/// `LB_CT_SEED[0]`: the random key of the new-flow tables' hashes (which set a
/// tuple goes to, each slot's check), drawn by the agent that made the tables and
/// kept with them, so a restarted agent finds their flows where they are and a
/// sender cannot aim its tuples at another flow's set. The programs take it as a
/// global ([`GLOBAL_CT_SEED`]).
pub const MAP_CT_SEED: &str = "LB_CT_SEED";
/// Flows whose backend answered (as netfilter's "assured"): a plain hash nothing
/// evicts, so no flood of new flows takes a live one's entries; expired entries
/// leave when a packet finds them or the agent's sweep does.
pub const MAP_CT_ASSURED: &str = "LB_CT_ASSURED";
/// The IPv6 counterparts of `LB_SERVICES`, `LB_BACKENDS`, `LB_CT`, `LB_CT_ASSURED`
/// and `LB_AFFINITY` (as Cilium's `cilium_lb6_*` beside `cilium_lb4_*`): the same
/// types with 16-byte addresses ([`Addr6`]), sized as their IPv4 maps. Service-port
/// ids and backend ids are one space over both families (a dual-stack service port
/// has one id per family), so the counter arrays are shared.
pub const MAP_SERVICES6: &str = "LB6_SERVICES";
pub const MAP_BACKENDS6: &str = "LB6_BACKENDS";
pub const MAP_CONNTRACK6: &str = "LB6_CT";
pub const MAP_CT_ASSURED6: &str = "LB6_CT_ASSURED";
pub const MAP_AFFINITY6: &str = "LB6_AFFINITY";
pub const MAP_SOCK_REVNAT6: &str = "LB6_SOCK_REVNAT";
/// `LB_CLOCK[0]`: the kernel side's clock, written by `lb_clock` (run by the agent
/// with BPF_PROG_RUN to read it; never pinned).
pub const MAP_CLOCK: &str = "LB_CLOCK";
pub const MAP_IFACES: &str = "LB_IFACES";
pub const MAP_STATS: &str = "LB_STATS";
pub const MAP_SVC_STATS: &str = "LB_SVC_STATS";
pub const MAP_BACKEND_STATS: &str = "LB_BE_STATS";
pub const MAP_AFFINITY: &str = "LB_AFFINITY";
pub const MAP_SOCK_REVNAT: &str = "LB_SOCK_REVNAT";
pub const MAP_PORTS: &str = "LB_PORTS";
pub const MAP_FRAGS: &str = "LB_FRAGS";
pub const MAP_FRAGS6: &str = "LB6_FRAGS";
/// `LB_SCRATCH[0]` (per CPU): [`SCRATCH_LEN`] bytes a program copies packet bytes to
/// (checksum verification); never pinned, never read by the agent.
pub const MAP_SCRATCH: &str = "LB_SCRATCH";
pub const SCRATCH_LEN: usize = 512;
/// `LB_REJECT_RATE[0]`: the [`RateBucket`] of the ICMP errors lb sends; never pinned.
pub const MAP_REJECT_RATE: &str = "LB_REJECT_RATE";

/// ICMP errors lb sends per second, and how many at once after a quiet spell: the
/// kernel's `net.ipv4.icmp_msgs_per_sec` and `icmp_msgs_burst` defaults.
pub const REJECTS_PER_S: u64 = 1000;
pub const REJECT_BURST: u64 = 50;
/// `LB_REJECT_PEERS`: a [`RateBucket`] per client address (network order); LRU,
/// never pinned. As the kernel's per-destination limit (`net.ipv4.icmp_ratelimit`
/// 1 s, a burst of 6: `XRLIM_BURST_FACTOR`), one client gets at most 6 answers at
/// once, then one a second.
pub const MAP_REJECT_PEERS: &str = "LB_REJECT_PEERS";
pub const MAX_REJECT_PEERS: u32 = 16_384;
pub const REJECTS_PER_PEER_PER_S: u64 = 1;
pub const REJECT_PEER_BURST: u64 = 6;

/// A token bucket: tokens left, and the clock when it was last filled.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    pub credit: u64,
    pub last: u64,
}
const _: () = assert!(size_of::<RateBucket>() == 16);

/// `LB_ARP_HOLD`: LoadBalancer address (`u32`, network order) -> until when
/// (CLOCK_MONOTONIC nanoseconds, as `bpf_ktime_get_ns`) this node may send ARP
/// about it. The agent that announces an address keeps its time a little short of
/// its lease (or heartbeat) running out; past it, TC egress drops every ARP frame
/// whose sender address it is (the kernel's replies for the address still on the
/// uplink included), so a crashed or frozen agent's node falls silent before
/// another node takes the address over. Addresses not in the map are not lb's.
pub const MAP_ARP_HOLD: &str = "LB_ARP_HOLD";
pub const MAX_ARP_HOLD: u32 = 4096;

/// `LB_NDP_HOLD`: [`MAP_ARP_HOLD`] for IPv6 LoadBalancer addresses ([`Addr6`]):
/// past the time, TC egress drops the node's Neighbor Advertisements about it
/// (and Solicitations from it).
pub const MAP_NDP_HOLD: &str = "LB_NDP_HOLD";

/// Every map lb pins, so the agent can adopt or remove them as a set.
pub const ALL_MAPS: [&str; 22] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_CT_SEED,
    MAP_CT_ASSURED,
    MAP_IFACES,
    MAP_STATS,
    MAP_SVC_STATS,
    MAP_BACKEND_STATS,
    MAP_AFFINITY,
    MAP_SOCK_REVNAT,
    MAP_PORTS,
    MAP_FRAGS,
    MAP_ARP_HOLD,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_CONNTRACK6,
    MAP_CT_ASSURED6,
    MAP_AFFINITY6,
    MAP_SOCK_REVNAT6,
    MAP_NDP_HOLD,
    MAP_FRAGS6,
];

/// Settings of the benchmark-only programs, never pinned: `LB_BENCH[i]`.
pub const MAP_BENCH: &str = "LB_BENCH";
pub const BENCH_SETTINGS: u32 = 4;
/// `lb_bench_gen`: 1 gives every packet a new source port (a new flow).
pub const BENCH_NEW_FLOWS: u32 = 0;
/// `lb_bench_redirect`, `lb_bench_redirect_ct`, `lb_bench_redirect_peer`,
/// `lb_bench_nat_hop`: where frames go.
pub const BENCH_REDIRECT_IFINDEX: u32 = 1;
/// `lb_bench_gen`: 1 when its template is IPv6 (new flows then change the IPv6
/// source address and the UDP checksum, which IPv6 requires).
pub const BENCH_IPV6: u32 = 2;
/// `lb_bench_gen_tc`: the interface its clones leave by (the sender's uplink).
pub const BENCH_GEN_IFINDEX: u32 = 3;
/// `LB_BENCH_FRAME[i]`: frame templates (`BENCH_FRAME_*`), the first
/// `BENCH_HDR_LEN` bytes of a frame: Ethernet + IPv6 + UDP headers, or Ethernet +
/// IPv4 + UDP headers and 20 bytes of payload.
pub const MAP_BENCH_FRAME: &str = "LB_BENCH_FRAME";
pub const BENCH_HDR_LEN: usize = 62;
pub const BENCH_FRAMES: u32 = 2;
/// The generator's frame.
pub const BENCH_FRAME_GEN: u32 = 0;
/// The frame as `lb_bench_nat_hop` sends it on: its MACs, IPv4 addresses and UDP
/// destination port are written into every frame.
pub const BENCH_FRAME_HOP: u32 = 1;
/// `LB_BENCH_SINK[0]` (per CPU): frames the sink counted.
pub const MAP_BENCH_SINK: &str = "LB_BENCH_SINK";

// ---- program names (the ELF function names) ----
pub const PROG_XDP: &str = "lb_xdp";
/// Writes the kernel side's clock to `LB_CLOCK` (run by the agent, never attached).
pub const PROG_CLOCK: &str = "lb_clock";
/// Parse-and-pass only: the benchmarks' baseline, never attached.
pub const PROG_XDP_BASELINE: &str = "lb_xdp_baseline";
/// Benchmarks only: live-frames generator and plain redirect hop.
pub const PROG_BENCH_GEN: &str = "lb_bench_gen";
/// The generator where the kernel refuses live frames: a TC program run by
/// BPF_PROG_RUN on one socket buffer, sending a clone of it per run.
pub const PROG_BENCH_GEN_TC: &str = "lb_bench_gen_tc";
pub const PROG_BENCH_REDIRECT: &str = "lb_bench_redirect";
pub const PROG_BENCH_SINK: &str = "lb_bench_sink";
/// The plain redirect hop plus per-flow state: a flow lookup per packet and, for a
/// new flow, two `LB_CT` entries (the flow and its reply): the floor of new flows
/// for any hop that keeps NAT state in BPF LRU maps.
pub const PROG_BENCH_REDIRECT_CT: &str = "lb_bench_redirect_ct";
/// A plain NAT hop to another node (a fixed translation, redirected to
/// `BENCH_REDIRECT_IFINDEX`): the ceiling of forwarding NodePort traffic to a
/// remote pod.
pub const PROG_BENCH_NAT_HOP: &str = "lb_bench_nat_hop";
/// The sink at TC ingress, for packets handed to the pod by `bpf_redirect_peer`
/// (they arrive as socket buffers, past the pod's XDP hook).
pub const PROG_BENCH_SINK_TC: &str = "lb_bench_sink_tc";
/// A plain hand-over at TC ingress (`bpf_redirect_peer` to `BENCH_REDIRECT_IFINDEX`'s
/// peer): the least any path that delivers socket buffers to a pod costs.
pub const PROG_BENCH_REDIRECT_PEER: &str = "lb_bench_redirect_peer";
/// Benchmarks only: the baseline plus one conntrack lookup, the floor of any
/// established-flow path that keeps its flows in a BPF hash map.
pub const PROG_BENCH_CT_FLOOR: &str = "lb_bench_ct_floor";
pub const PROG_TC_INGRESS: &str = "lb_tc_ingress";
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";
/// Socket-level balancing for the node's own processes (cgroup/connect4, sendmsg4,
/// recvmsg4).
pub const PROG_CONNECT4: &str = "lb_connect4";
pub const PROG_SENDMSG4: &str = "lb_sendmsg4";
pub const PROG_RECVMSG4: &str = "lb_recvmsg4";
/// The same for IPv6 sockets (cgroup/connect6, sendmsg6, recvmsg6).
pub const PROG_CONNECT6: &str = "lb_connect6";
pub const PROG_SENDMSG6: &str = "lb_sendmsg6";
pub const PROG_RECVMSG6: &str = "lb_recvmsg6";
/// Global set at load time: the cookie of the network namespace the agent serves; the
/// socket programs leave sockets of every other namespace alone.
pub const GLOBAL_NETNS_COOKIE: &str = "NETNS_COOKIE";

// ---- sizes ----
// The agent sizes the maps below when it loads them (`lb agent --max-frontends`,
// `--max-backends`, `--ct-max`, `--affinity-max`, or from the node's memory): these
// are the object's placeholders and the least the agent gives them.
/// Frontends: (address, port, protocol) triples lb answers on; also the size of the
/// per-service-port counter array (service-port ids are below it).
pub const DEFAULT_FRONTENDS: u32 = 65_536;
/// (service id, slot) -> backend entries over all services; also the size of the
/// per-backend counter array (backend ids are below it).
pub const DEFAULT_BACKENDS: u32 = 524_288;
/// Conntrack entries (two per flow: original and reply direction).
pub const DEFAULT_CONNTRACK: u32 = 262_144;
/// Remembered (client, service port) -> backend choices for `sessionAffinity: ClientIP`.
pub const DEFAULT_AFFINITY: u32 = 262_144;
/// UDP sockets of the node's own processes talking to a service through a backend.
pub const MAX_SOCK_REVNAT: u32 = 65_536;
/// IPv4 datagrams in flight as fragments whose ports lb remembers.
pub const MAX_FRAGS: u32 = 16_384;
/// Interfaces lb is attached to.
pub const MAX_IFACES: u32 = 4_096;

/// The IPv6 maps' sizes (not yet sized by the agent's flags or the node's memory:
/// a node that serves no IPv6 service pays little for them).
pub const DEFAULT_FRONTENDS6: u32 = 4_096;
pub const DEFAULT_BACKENDS6: u32 = 32_768;
pub const DEFAULT_CONNTRACK6: u32 = 65_536;
pub const DEFAULT_AFFINITY6: u32 = 16_384;

/// Service ids and backend ids start at 1; 0 means "none".
pub const ID_NONE: u32 = 0;

// ---- services ----

/// An IPv6 address as it sits in the packet: four words, each in network order
/// (`u32::from_ne_bytes` of its four bytes), as `u32` holds an IPv4 address.
pub type Addr6 = [u32; 4];

/// Key of [`MAP_SERVICES`] (`A` = `u32`) and [`MAP_SERVICES6`] (`A` = [`Addr6`]): a
/// frontend lb answers on. A ClusterIP port, a NodePort on one node address, a
/// LoadBalancer address: each is one key.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyOf<A> {
    pub addr_be: A,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type ServiceKey = ServiceKeyOf<u32>;
pub type ServiceKey6 = ServiceKeyOf<Addr6>;
const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServiceKey6>() == 20);

/// The frontend is a ClusterIP: only served for traffic entering from a pod
/// interface (or the node itself), never from an external interface.
pub const SVC_F_INTERNAL: u32 = 1 << 0;
/// `sessionAffinity: ClientIP`: a client's new flows go to the backend its last flow
/// went to, while that was less than `affinity_timeout_s` ago.
pub const SVC_F_AFFINITY: u32 = 1 << 1;
/// `externalTrafficPolicy: Local` on an external frontend (NodePort, LoadBalancer):
/// only this node's endpoints are its backends, the client's address reaches them
/// unchanged, and with no local endpoint the packet is dropped (as kube-proxy and
/// Cilium do), so that an external load balancer's health check fails over.
pub const SVC_F_EXTERNAL_LOCAL: u32 = 1 << 2;

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Id of the service port; keys [`MAP_BACKENDS`] and [`MAP_SVC_STATS`].
    pub svc_id: u32,
    /// Backends live in slots `0..backend_count` of [`MAP_BACKENDS`].
    pub backend_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// With `SVC_F_AFFINITY`: `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

/// Key of [`MAP_BACKENDS`]: slot `slot` of service port `svc_id`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub svc_id: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<BackendKey>() == 8);

/// Value of [`MAP_BACKENDS`]: where a new flow to the service goes.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendOf<A> {
    pub addr_be: A,
    pub port_be: u16,
    /// `PROTO_*` of the service port (backend ids are per address, port and protocol).
    pub proto: u8,
    /// `BE_F_*` bits.
    pub flags: u8,
    /// Keys [`MAP_BACKEND_STATS`]; stable for the backend's life.
    pub backend_id: u32,
}
/// Value of [`MAP_BACKENDS`] and, with an IPv6 address, [`MAP_BACKENDS6`].
pub type Backend = BackendOf<u32>;
pub type Backend6 = BackendOf<Addr6>;
const _: () = assert!(size_of::<Backend>() == 12);
const _: () = assert!(size_of::<Backend6>() == 24);

/// The backend lives on another node: traffic from outside the cluster reaches it
/// with the node's own address as source (SNAT), so that its replies come back here.
pub const BE_F_REMOTE: u8 = 1 << 0;

// ---- session affinity ----

/// Key of [`MAP_AFFINITY`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKeyOf<A> {
    pub client_addr_be: A,
    pub svc_id: u32,
}
pub type AffinityKey = AffinityKeyOf<u32>;
/// Key of [`MAP_AFFINITY6`].
pub type AffinityKey6 = AffinityKeyOf<Addr6>;
const _: () = assert!(size_of::<AffinityKey>() == 8);
const _: () = assert!(size_of::<AffinityKey6>() == 20);

/// Value of [`MAP_AFFINITY`]: the slot and backend a client's last new flow went to.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The clock (`GLOBAL_CLOCK_HZ`) when the client last started a flow.
    pub last_used: u64,
    pub slot: u32,
    /// The slot still holds this backend, or the choice is void.
    pub backend_id: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

// ---- socket-level balancing ----

/// Key of [`MAP_SOCK_REVNAT`]: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockRevKey>() == 16);

/// Value of [`MAP_SOCK_REVNAT`]: the service address the socket asked for.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockRevValue>() == 8);

/// Key of [`MAP_SOCK_REVNAT6`]: [`SockRevKey`] with an IPv6 backend.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    pub cookie: u64,
    pub backend_addr_be: Addr6,
    pub backend_port_be: u16,
    pub _pad: u16,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<SockRevKey6>() == 32);

/// Value of [`MAP_SOCK_REVNAT6`]: the IPv6 service address the socket asked for.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue6 {
    pub addr_be: Addr6,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockRevValue6>() == 20);

// ---- fragments ----

/// Key of [`MAP_FRAGS`]: one fragmented IPv4 datagram (RFC 791: source,
/// destination, protocol and identification name it), as its fragments arrive.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// Key of [`MAP_FRAGS6`]: one fragmented IPv6 datagram (RFC 8200: source,
/// destination and the Fragment header's 32-bit identification name it; the
/// protocol too, as for IPv4).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub saddr_be: Addr6,
    pub daddr_be: Addr6,
    pub id_be: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey6>() == 40);

/// Value of [`MAP_FRAGS`] and [`MAP_FRAGS6`]: the datagram's ports, from its first fragment (the only
/// one that carries the L4 header), so later fragments find the flow too.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub sport_be: u16,
    pub dport_be: u16,
}
const _: () = assert!(size_of::<FragValue>() == 4);

// ---- conntrack ----

/// Key of [`MAP_CONNTRACK`]: a packet's 5-tuple as it arrives.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyOf<A> {
    pub saddr_be: A,
    pub daddr_be: A,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    // Padding as two scalars, not `[u8; 3]`: zeroing an array is a call to a
    // byte-by-byte memset in BPF code, once per key built.
    pub _pad: u8,
    pub _pad2: u16,
}
pub type FlowKey = FlowKeyOf<u32>;
/// Key of [`MAP_CONNTRACK6`] and [`MAP_CT_ASSURED6`].
pub type FlowKey6 = FlowKeyOf<Addr6>;
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FlowKey6>() == 40);

/// Value of `LB_ROUTES` / `LB6_ROUTES` (per CPU, kernel side only, never pinned):
/// the FIB's full answer for one translated tuple arriving on one interface, so
/// that a flow's packets ask the FIB once per [`ROUTE_TTL_MS`], not once each.
/// Slots are direct-mapped by a hash of the tuple; a slot holds the last tuple
/// asked there.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSlotOf<A> {
    /// When the FIB answered, in the kernel side's clock ticks; 0: empty.
    pub stamp: u64,
    /// The translated tuple asked about (every field the FIB lookup takes).
    pub key: FlowKeyOf<A>,
    /// Where the packet came in (the lookup's `ifindex`).
    pub in_ifindex: u32,
    /// The way out: its interface, the role the agent gave it (`IFACE_*`), MACs.
    pub ifindex: u32,
    pub role: u32,
    /// The longest IP length the route took (the FIB checks the MTU): a longer
    /// packet asks again.
    pub fits: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: u16,
    pub _pad2: u32,
}
pub type RouteSlot = RouteSlotOf<u32>;
pub type RouteSlot6 = RouteSlotOf<Addr6>;
const _: () = assert!(size_of::<RouteSlot>() == 56);
const _: () = assert!(size_of::<RouteSlot6>() == 80);
/// Slots of `LB_ROUTES` and `LB6_ROUTES`, per CPU (a power of two).
pub const ROUTE_SLOTS: u32 = 1024;
/// `LB_ROUTING[0]`, written by the agent each round: bits saying, per family,
/// that the node's routes depend on the destination alone (no rule by source or
/// port, no source-specific or multipath route: `netif::RoutedByDestination`).
/// Then `LB_ROUTES` keeps a FIB answer per destination and incoming interface,
/// shared by every flow to it (a new flow asks the FIB only for a destination not
/// asked within `ROUTE_TTL_MS`); else per translated tuple. 0 until the agent
/// has looked.
pub const MAP_ROUTING: &str = "LB_ROUTING";
pub const ROUTED_BY_DST4: u32 = 1 << 0;
pub const ROUTED_BY_DST6: u32 = 1 << 1;
/// How long a FIB answer is used, at most: a route, neighbour or interface role
/// changed meanwhile reaches the programs' forwarding within this time (the
/// kernel's own stack at once).
pub const ROUTE_TTL_MS: u64 = 100;

/// The entry is for the original direction (client -> service).
pub const CT_DIR_ORIGINAL: u8 = 0;
/// The entry is for the reply direction (backend -> client).
pub const CT_DIR_REPLY: u8 = 1;

/// The flow is a pod reaching itself through a service (hairpin): both directions
/// are translated at the pod's interface and sent straight back to it.
pub const CT_F_HAIRPIN: u8 = 1 << 0;
/// The source a hairpin flow's packets carry towards the pod, so that the pod does not
/// see (and drop) a packet from its own address. Link-local, never routed (as Cilium's
/// IPV4_LOOPBACK).
pub const HAIRPIN_SNAT_ADDR: [u8; 4] = [169, 254, 42, 1];
/// The IPv6 hairpin source: in fd6c:6200::/32, a unique-local prefix lb takes for
/// itself (never routed, no cluster's pod or service range).
pub const HAIRPIN_SNAT_ADDR6: [u8; 16] = [0xfd, 0x6c, 0x62, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The flow goes to a backend on another node with the node's address as source
/// (SNAT): its replies arrive addressed to the node itself, so they are translated at
/// ingress and sent on to the client by a FIB lookup and redirect.
pub const CT_F_SNAT: u8 = 1 << 1;
/// The source ports SNAT hands out: above the kernel's default ephemeral range
/// (32768-60999), so they never meet the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Globals the agent sets at load time: the address SNAT uses (network byte order);
/// whether XDP forwards by `bpf_fib_lookup` + redirect (1) or leaves forwarding to
/// the kernel's stack (0); and how XDP hands translated packets to local pods
/// (`TO_PODS_*`, `lb agent --to-pods`).
pub const GLOBAL_SNAT_ADDR: &str = "SNAT_ADDR";
/// The node's IPv6 address SNAT flows to remote IPv6 backends leave with (an
/// `Addr6`; zero: none, such flows keep the client's address).
pub const GLOBAL_SNAT_ADDR6: &str = "SNAT_ADDR6";
pub const GLOBAL_FIB_REDIRECT: &str = "FIB_REDIRECT";
pub const GLOBAL_TO_PODS: &str = "TO_PODS";
/// A random non-zero number per load, which XDP writes in the marks it leaves for TC
/// ([`DeliverMeta::key`]) and TC checks: a mark with any other key (another
/// program's metadata, an earlier load's) is not taken. It stands for the checks of
/// the interfaces' roles a mark would otherwise cost TC (two hash lookups a packet).
pub const GLOBAL_DELIVER_KEY: &str = "DELIVER_KEY";
/// 1 where the kernel lets XDP programs call `bpf_xdp_adjust_meta` (the agent
/// probes it before loading), 0 where it does not (kernels built without it): XDP
/// then never marks frames for TC, and leaves `TO_PODS_PEER` packets for local
/// pods untranslated to TC ingress, which translates them and hands them over. A
/// constant of the load, so the verifier drops the helper's call where it is 0 (a
/// program calling a helper its kernel lacks is refused whole).
pub const GLOBAL_XDP_META: &str = "XDP_META";

/// Packets to local pods go on through the kernel's stack (routing, netfilter, the
/// veth's transmit and the pod's backlog), as without lb.
pub const TO_PODS_STACK: u32 = 0;
/// XDP translates and marks the packet (XDP metadata, [`DeliverMeta`]); TC ingress on
/// the same interface, the first hook with a socket buffer, hands it straight to the
/// pod's end of the veth (`bpf_redirect_peer`), as Cilium's host routing does. Only
/// for veths whose peer is in another namespace (`IFACE_F_PEER`).
pub const TO_PODS_PEER: u32 = 1;
/// XDP redirects into the pod's veth: no socket buffer on the node at all, but the
/// pod's end must take XDP frames (an XDP program, or GRO on), or the kernel drops them.
pub const TO_PODS_XDP: u32 = 2;

/// XDP metadata in front of a frame XDP translated for a local pod under
/// `TO_PODS_PEER`: where TC ingress sends it and the MACs to write first.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeliverMeta {
    /// The key the agent gave this load of the programs ([`GLOBAL_DELIVER_KEY`]):
    /// metadata another program left is not taken for ours.
    pub key: u64,
    /// The pod's veth on the node (its peer is the pod's interface), which XDP found
    /// declared for hand-over (`IFACE_F_PEER`).
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}
const _: () = assert!(size_of::<DeliverMeta>() == 24);

/// TCP state bits kept in [`CtValue::tcp_flags`].
pub const CT_TCP_SEEN_FIN: u8 = 1 << 0;
pub const CT_TCP_SEEN_RST: u8 = 1 << 1;
/// The backend answered: the connection is established (before, the SYN_SENT
/// timeout holds it) and the flow moves to the assured table. Set for UDP too.
pub const CT_TCP_SEEN_REPLY: u8 = 1 << 2;
/// The bits that close a connection.
pub const CT_TCP_CLOSING: u8 = CT_TCP_SEEN_FIN | CT_TCP_SEEN_RST;

/// Value of [`MAP_CONNTRACK`]: the tuple a matching packet is rewritten to.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValueOf<A> {
    /// The clock (`GLOBAL_CLOCK_HZ`) at the last packet seen.
    pub last_seen: u64,
    pub nat_saddr_be: A,
    pub nat_daddr_be: A,
    pub nat_sport_be: u16,
    pub nat_dport_be: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    /// `CT_DIR_*`.
    pub direction: u8,
    /// `CT_TCP_*` bits.
    pub tcp_flags: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
}
pub type CtValue = CtValueOf<u32>;
/// Value of [`MAP_CONNTRACK6`] and [`MAP_CT_ASSURED6`].
pub type CtValue6 = CtValueOf<Addr6>;
const _: () = assert!(size_of::<CtValue>() == 32);
const _: () = assert!(size_of::<CtValue6>() == 56);

impl<A> CtValueOf<A> {
    /// Seconds the entry outlives its last packet (protocol `proto`).
    #[inline(always)]
    pub fn timeout_s(&self, proto: u8, t: &CtTimeouts) -> u64 {
        let s = if proto != PROTO_TCP {
            t.udp_s
        } else if self.tcp_flags & CT_TCP_CLOSING != 0 {
            t.tcp_fin_s
        } else if self.tcp_flags & CT_TCP_SEEN_REPLY == 0 {
            t.tcp_syn_s
        } else {
            t.tcp_s
        };
        s as u64
    }

    /// Whether the entry no longer holds a flow at `now` (clock ticks, `ticks_per_s`).
    #[inline(always)]
    pub fn expired(&self, proto: u8, now: u64, ticks_per_s: u64, t: &CtTimeouts) -> bool {
        now.wrapping_sub(self.last_seen) > self.timeout_s(proto, t) * ticks_per_s
    }
}

impl<A: Copy + PartialEq> CtValueOf<A> {
    /// Whether this is the reply entry of the flow `key` (client -> frontend) of
    /// service port `svc_id` started: its replies are rewritten to come from the
    /// frontend `key` addressed, to the client. How a later packet of a flow written
    /// with its reply entry alone finds it (the kernel side's `conntrack`, and
    /// `lb trace`).
    #[inline(always)]
    pub fn is_reply_of(&self, key: &FlowKeyOf<A>, svc_id: u32) -> bool {
        self.direction == CT_DIR_REPLY
            && self.svc_id == svc_id
            && self.nat_saddr_be == key.daddr_be
            && self.nat_sport_be == key.dport_be
            && self.nat_daddr_be == key.saddr_be
            && self.nat_dport_be == key.sport_be
    }
}

/// Idle timeouts (seconds) after which a conntrack entry no longer holds a flow: the
/// global [`GLOBAL_CT_TIMEOUTS`], set by the agent at load (`lb agent
/// --ct-timeout-tcp` and the others, as Cilium's `--bpf-ct-timeout-regular-*`) and
/// used by its sweep of the assured table.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CtTimeouts {
    /// An established TCP connection (the backend answered).
    pub tcp_s: u32,
    /// A TCP flow whose backend has not answered yet (netfilter's SYN_SENT is 120 s,
    /// Cilium's 60 s): a SYN flood's entries go within a minute.
    pub tcp_syn_s: u32,
    /// A TCP connection that saw a FIN or an RST (netfilter's CLOSE / TIME_WAIT,
    /// Cilium's 10 s).
    pub tcp_fin_s: u32,
    /// UDP flows (netfilter's 30 s unreplied / 120 s stream; Cilium's 60 s).
    pub udp_s: u32,
}
const _: () = assert!(size_of::<CtTimeouts>() == 16);

impl CtTimeouts {
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        tcp_s: 6 * 3600,
        tcp_syn_s: 60,
        tcp_fin_s: 10,
        udp_s: 60,
    };
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Global set at load time: the [`CtTimeouts`] the kernel side applies.
pub const GLOBAL_CT_TIMEOUTS: &str = "CT_TIMEOUTS";

// ---- the new-flow table ----

/// Slots of a set of `LB_CT` ([`MAP_CONNTRACK`], an array of
/// [`CtSetOf`]): a tuple's entry goes in one of the slots of the set its hash
/// names, so a set holds up to this many flows whose tuples hash alike before one
/// of them (the least recently seen) is overwritten.
pub const CT_WAYS: u32 = 4;

/// Globals set at load time: the sets of `LB_CT` (the array's entries), as the
/// agent sized it ([`ct_sets`]), and the table's seed (as [`MAP_CT_SEED`] keeps
/// it).
pub const GLOBAL_CT_SETS: &str = "CT_SETS";
pub const GLOBAL_CT_SEED: &str = "CT_SEED";

/// The sets of a new-flow table of `slots` slots (at least one): the entries of
/// its array.
#[inline(always)]
pub const fn ct_sets(slots: u32) -> u32 {
    let sets = slots / CT_WAYS;
    if sets == 0 { 1 } else { sets }
}

/// One slot of `LB_CT`: an entry keyed by `key`, valid while `check`
/// is [`ct_check`] of it (0: empty). Writers write the entry, then `check`;
/// readers read `check` first and take the entry only if it holds, so an entry
/// two writers tore, or one being written, reads as no entry. Only
/// `value.last_seen` and `value.tcp_flags` change in place (not in the check); an
/// emptied slot is last seen at 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtSlotOf<A> {
    pub key: FlowKeyOf<A>,
    pub value: CtValueOf<A>,
    pub check: u32,
    /// The slot's place in its set, written with every entry: the kernel side
    /// names a found slot by this value read from memory, which the verifier
    /// does not know, so the code after a lookup is walked once rather than once
    /// per slot of the set.
    pub way: u32,
}
pub type CtSlot = CtSlotOf<u32>;
const _: () = assert!(size_of::<CtSlot>() == 56);

/// One entry of `LB_CT`: a set's slots, read with one lookup.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtSetOf<A> {
    pub slots: [CtSlotOf<A>; CT_WAYS as usize],
}
pub type CtSet = CtSetOf<u32>;
const _: () = assert!(size_of::<CtSet>() == CT_WAYS as usize * 56);

/// An address the new-flow tables hash ([`ct_hash`]).
pub trait CtAddr: Copy + PartialEq {
    /// `h` with the address's words mixed in.
    fn mix_into(self, h: u64) -> u64;
}

impl CtAddr for u32 {
    #[inline(always)]
    fn mix_into(self, h: u64) -> u64 {
        ct_mix(h, self as u64)
    }
}

/// One step of the tables' hash: a word folded in, multiplied, its high bits
/// folded down.
#[inline(always)]
const fn ct_mix(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

/// The hash of a tuple under `seed` ([`MAP_CT_SEED`]): [`ct_set`] takes its set
/// from it, [`ct_check`] starts from it.
#[inline(always)]
pub fn ct_hash<A: CtAddr>(key: &FlowKeyOf<A>, seed: u64) -> u64 {
    let h = key.saddr_be.mix_into(seed);
    let h = key.daddr_be.mix_into(h);
    ct_mix(
        h,
        (key.sport_be as u64) << 24 | (key.dport_be as u64) << 8 | key.proto as u64,
    )
}

/// The set (of `sets`) of a tuple whose [`ct_hash`] is `hash`: uniform over the
/// sets (the high bits scaled, no division).
#[inline(always)]
pub const fn ct_set(hash: u64, sets: u32) -> u32 {
    (((hash >> 32) * sets as u64) >> 32) as u32
}

/// The check of a slot holding `value` under a key whose [`ct_hash`] is `hash`:
/// the key and every field of the entry that never changes in place, never 0.
#[inline(always)]
pub fn ct_check<A: CtAddr>(hash: u64, value: &CtValueOf<A>) -> u32 {
    let h = value.nat_saddr_be.mix_into(hash ^ 0x5bd1_e995_c3a5_c85c);
    let h = value.nat_daddr_be.mix_into(h);
    let h = ct_mix(
        h,
        (value.nat_sport_be as u64) << 48 | (value.nat_dport_be as u64) << 32 | value.svc_id as u64,
    );
    let h = ct_mix(
        h,
        (value.backend_id as u64) << 32 | (value.direction as u64) << 8 | value.flags as u64,
    );
    ((h >> 32) as u32 ^ h as u32) | 1
}

// ---- frontend ports ----

/// `LB_PORTS` is a bitmap of every port some frontend listens on (any address, any
/// protocol): word `port / 64`, bit `port % 64`. Ingress hooks look there first, so
/// traffic to no frontend port costs one array read instead of hash lookups.
pub const PORT_WORDS: u32 = 65_536 / 64;

/// The word of `LB_PORTS` and the bit within it for `port` (host byte order).
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1u64 << (port % 64))
}

// ---- backend choice ----

/// The slot (of `count`, > 0) a new flow's backend is taken from: a hash of the
/// flow's tuple, so every packet of a flow picks the same slot while the service's
/// slots stay as they are (`conntrack` writes a flow's original-direction entry
/// only from its second packet or first answer on, and finds the flow until then
/// by the reply entry this choice names). `addrs`: the family's fold of the source
/// and destination addresses (`fold4`, `fold6`); ports in network byte order, as
/// in the packet. Uniform over slots (the top bits of a mixed 64-bit word scaled
/// to `count`, no division), the same in the kernel and in `lb trace`.
#[inline(always)]
pub const fn flow_slot(addrs: u64, sport_be: u16, dport_be: u16, proto: u8, count: u32) -> u32 {
    let mut x = addrs
        ^ ((sport_be as u64) << 48 | (dport_be as u64) << 32 | (proto as u64) << 8).rotate_left(7);
    // MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (((x >> 32) * count as u64) >> 32) as u32
}

/// An IPv4 flow's address pair for [`flow_slot`] (addresses as in the packet).
#[inline(always)]
pub const fn fold4(saddr_be: u32, daddr_be: u32) -> u64 {
    (saddr_be as u64) << 32 | daddr_be as u64
}

/// An IPv6 flow's address pair for [`flow_slot`]: each address's words folded into
/// 32 bits, rotated apart so no word cancels another's.
#[inline(always)]
pub const fn fold6(saddr_be: &Addr6, daddr_be: &Addr6) -> u64 {
    const fn one(a: &Addr6) -> u32 {
        a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24)
    }
    fold4(one(saddr_be), one(daddr_be))
}

// ---- interfaces ----

/// An interface facing the outside (uplink): NodePort and LoadBalancer are served,
/// ClusterIPs are not.
pub const IFACE_EXTERNAL: u32 = 1;
/// An interface behind which pods live: every frontend is served.
pub const IFACE_POD: u32 = 2;
/// Set besides `IFACE_POD`: a veth (or netkit) whose peer is the pod's interface in
/// another namespace, so TC may hand packets to that peer (`TO_PODS_PEER`).
pub const IFACE_F_PEER: u32 = 4;
/// XDP may redirect frames out of this interface: it takes them. Set by the agent
/// on an external interface where XDP runs natively on a NIC (`--xdp auto`), or on
/// any where the user vouched for it (`--xdp native`: a veth takes redirected frames
/// only when its peer has NAPI, an XDP program or GRO on); on a pod's veth whose
/// peer runs a native-mode XDP program (under `TO_PODS_PEER`; under `TO_PODS_XDP`
/// every pod interface is redirected to). A frame for an interface without it is left to TC
/// or the stack.
pub const IFACE_F_XDP_XMIT: u32 = 8;

/// Value of [`MAP_IFACES`] (key: ifindex as `u32`).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceValue {
    /// `IFACE_EXTERNAL` or `IFACE_POD`, the latter maybe with `IFACE_F_PEER`; either
    /// maybe with `IFACE_F_XDP_XMIT`.
    pub role: u32,
}
const _: () = assert!(size_of::<IfaceValue>() == 4);

// ---- counters ----

/// Value of [`MAP_STATS`], [`MAP_SVC_STATS`] and [`MAP_BACKEND_STATS`] (per CPU).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counters>() == 16);

/// Why a packet got the verdict it got; indexes [`MAP_STATS`]. Every verdict of
/// every program is counted under exactly one reason.
pub mod reason {
    /// Neither IPv4 nor IPv6 (ARP, ...): passed.
    pub const PASS_NOT_IP: u32 = 0;
    /// XDP/TC: IPv4 but not TCP or UDP: passed.
    pub const PASS_NOT_L4: u32 = 1;
    /// A later fragment (no L4 header) of a datagram whose first fragment lb has not
    /// seen (lost, reordered, or not to a service) or whose flow has no conntrack
    /// entry: passed unchanged. Later fragments never start a flow.
    pub const PASS_FRAGMENT: u32 = 2;
    /// Headers shorter than they claim: passed to the kernel unchanged.
    pub const PASS_MALFORMED: u32 = 3;
    /// No conntrack entry and no service: not our traffic, passed.
    pub const PASS_NO_SERVICE: u32 = 4;
    /// A ClusterIP frontend reached from an external interface: not served.
    pub const PASS_INTERNAL_ONLY: u32 = 5;
    /// A service with no backends: passed (the kernel answers).
    pub const PASS_NO_BACKEND: u32 = 6;
    /// New flow: backend chosen, conntrack created, packet translated.
    pub const NAT_NEW_FLOW: u32 = 7;
    /// Established flow, original direction: translated.
    pub const NAT_ESTABLISHED: u32 = 8;
    /// Reply direction: translated back to the service address.
    pub const NAT_REPLY: u32 = 9;
    /// Conntrack insert failed: passed untranslated.
    pub const PASS_CT_FULL: u32 = 10;
    /// Backend slot missing (map being updated): passed.
    pub const PASS_NO_SLOT: u32 = 11;
    /// A reply seen at an ingress hook: left for the egress hook to translate.
    pub const PASS_REPLY_INGRESS: u32 = 12;
    /// An original-direction packet seen at the egress hook (already translated at
    /// ingress): left alone.
    pub const PASS_ORIGINAL_EGRESS: u32 = 13;
    /// A service with no endpoints, reached from a pod: answered with ICMP port
    /// unreachable from the service address (kube-proxy's REJECT).
    pub const REJECT_NO_BACKEND: u32 = 14;
    /// A node process's connect() or sendmsg() to a service, sent to a backend directly.
    pub const SOCK_TRANSLATED: u32 = 15;
    /// `externalTrafficPolicy: Local` and no endpoint on this node: dropped.
    pub const DROP_NO_LOCAL_BACKEND: u32 = 16;
    /// Every SNAT port tried for a new flow to a remote backend was taken: passed.
    pub const PASS_SNAT_EXHAUSTED: u32 = 17;
    /// Counted besides the verdict: a packet of an SNAT flow sent on by XDP after a
    /// `bpf_fib_lookup` (XDP_REDIRECT).
    pub const FWD_XDP_REDIRECT: u32 = 18;
    /// Counted besides the verdict: a packet of an SNAT flow sent on by TC with
    /// `bpf_redirect_neigh` (XDP had no full FIB answer, e.g. no neighbour entry yet,
    /// or XDP forwarding is off).
    pub const FWD_TC_NEIGH: u32 = 19;
    /// A packet of an SNAT flow the FIB has no route for: passed untranslated.
    pub const PASS_NO_ROUTE: u32 = 20;
    /// A packet lb would forward itself (redirect, hairpin) arrived with TTL 1 or 0:
    /// dropped, as a router drops it (XDP leaves such packets of plain DNAT flows to
    /// the kernel, which also sends ICMP time exceeded).
    pub const DROP_TTL_EXCEEDED: u32 = 21;
    /// Counted besides the verdict: a packet XDP translated for a local pod, handed by
    /// TC ingress straight to the pod's interface (`bpf_redirect_peer`, `TO_PODS_PEER`).
    pub const FWD_TC_PEER: u32 = 22;
    /// A packet of an SNAT flow too big for its way out, with don't-fragment set:
    /// answered with ICMP "fragmentation needed" and the MTU, as a router answers.
    pub const REJECT_FRAG_NEEDED: u32 = 23;
    /// A packet of an SNAT flow too big for its way out that may be fragmented:
    /// dropped (its rewritten tuple cannot go to the stack to be fragmented).
    pub const DROP_FRAG_NEEDED: u32 = 24;
    /// A TCP packet of no tracked flow that is not a SYN (a bare ACK, FIN, RST; or a
    /// SYN with ACK, FIN or RST): passed to the kernel; flows start with a SYN alone,
    /// as netfilter's and Cilium's.
    pub const PASS_TCP_NOT_SYN: u32 = 25;
    /// XDP: a packet of an SNAT flow with no way out XDP can take (no neighbour entry
    /// yet, an interface that takes no XDP frames): passed on untouched, for TC.
    pub const PASS_TO_TC: u32 = 26;
    /// An ICMP error about a tracked flow (RELATED): translated with the flow, its
    /// outer and quoted headers, and sent on as the flow's packets are.
    pub const NAT_RELATED: u32 = 27;
    /// A FIN or RST of a live flow, or a packet that would be answered "port
    /// unreachable", whose L4 checksum does not hold (corrupted on the way): dropped,
    /// the flow left as it was, no answer sent.
    pub const DROP_BAD_CHECKSUM: u32 = 28;
    /// A packet to a service without endpoints that would be answered "port
    /// unreachable" while the ICMP rate limit is spent: dropped unanswered, as the
    /// kernel drops what its REJECT may not answer.
    pub const DROP_REJECT_LIMITED: u32 = 29;
    /// TC egress: ARP about a LoadBalancer address this node no longer holds (its
    /// agent let its lease or heartbeat run out: crashed, frozen or cut off): dropped,
    /// so only the holder answers for it.
    pub const DROP_ARP_NOT_HOLDER: u32 = 30;
    /// TC egress: a Neighbor Advertisement about (or a Solicitation from) an IPv6
    /// LoadBalancer address this node no longer holds: dropped, as
    /// [`DROP_ARP_NOT_HOLDER`] for IPv4.
    pub const DROP_NDP_NOT_HOLDER: u32 = 31;
    pub const COUNT: u32 = 32;

    /// Names for people, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_not_l4",
        "pass_fragment",
        "pass_malformed",
        "pass_no_service",
        "pass_internal_only",
        "pass_no_backend",
        "nat_new_flow",
        "nat_established",
        "nat_reply",
        "pass_ct_full",
        "pass_no_slot",
        "pass_reply_ingress",
        "pass_original_egress",
        "reject_no_backend",
        "sock_translated",
        "drop_no_local_backend",
        "pass_snat_exhausted",
        "fwd_xdp_redirect",
        "fwd_tc_neigh",
        "pass_no_route",
        "drop_ttl_exceeded",
        "fwd_tc_peer",
        "reject_frag_needed",
        "drop_frag_needed",
        "pass_tcp_not_syn",
        "pass_to_tc",
        "nat_related",
        "drop_bad_checksum",
        "drop_reject_limited",
        "drop_arp_not_holder",
        "drop_ndp_not_holder",
    ];
}

/// The kernel side's clock: ticks per second of `bpf_jiffies64()` (the kernel's HZ,
/// measured by the agent), or 0 when unknown, and the kernel side then counts
/// nanoseconds of `bpf_ktime_get_coarse_ns()`. Jiffies cost nothing to read; the
/// coarse clock costs ~15 ns a packet.
pub const GLOBAL_CLOCK_HZ: &str = "CLOCK_HZ";

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], Copy, made only of integers, with explicit
    // padding, so any bit pattern is valid and no byte is uninitialised.
    // The generic ones for both address types (`u32`, `Addr6`), whose size
    // assertions show no implicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtValue6 {}
    unsafe impl aya::Pod for CtTimeouts {}
    unsafe impl aya::Pod for IfaceValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for SockRevKey6 {}
    unsafe impl aya::Pod for SockRevValue6 {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for FragValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{
        string::{String, ToString},
        vec::Vec,
    };

    use super::reason;

    /// Every `pub const NAME: u32 = N;` of `mod reason` (but COUNT), read from this
    /// file's own text, so a code added, renumbered or renamed without its name in
    /// `reason::NAMES` fails here.
    fn reason_codes() -> Vec<(String, u32)> {
        let text = include_str!("lib.rs");
        let start = text.find("pub mod reason {").expect("mod reason");
        let end = start + text[start..].find("\n}\n").expect("end of mod reason");
        text[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": u32 = ")?;
                Some((name.to_string(), rest.trim_end_matches(';').parse().ok()?))
            })
            .filter(|(name, _)| name != "COUNT")
            .collect()
    }

    #[test]
    fn reason_names_match_the_codes() {
        let codes = reason_codes();
        assert_eq!(codes.len(), reason::COUNT as usize, "{codes:?}");
        let mut seen = [false; reason::COUNT as usize];
        for (name, code) in &codes {
            assert!(*code < reason::COUNT, "{name} = {code} is not below COUNT");
            assert!(!seen[*code as usize], "{code} is used twice");
            seen[*code as usize] = true;
            assert_eq!(
                reason::NAMES[*code as usize],
                name.to_lowercase(),
                "reason::NAMES[{code}] is not {name}"
            );
        }
    }
}
