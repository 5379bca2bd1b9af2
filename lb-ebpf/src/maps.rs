//! Every map of the kernel side, in one place. Types, names and default sizes come
//! from `lb-common`; the agent sizes the big ones at load (`lb_user::sizes`) and pins
//! them by name so they outlive it.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr6, AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, BackendKey, Counters,
    CtSet, CtValue, CtValue6, DEFAULT_AFFINITY, DEFAULT_AFFINITY6, DEFAULT_BACKENDS,
    DEFAULT_BACKENDS6, DEFAULT_CONNTRACK, DEFAULT_CONNTRACK6, DEFAULT_FRONTENDS,
    DEFAULT_FRONTENDS6, FlowKey, FlowKey6, FragKey, FragKey6, FragValue, IfaceValue, MAX_ARP_HOLD,
    MAX_FRAGS, MAX_IFACES, MAX_REJECT_PEERS, MAX_SOCK_REVNAT, PORT_WORDS, ROUTE_SLOTS, RateBucket,
    RouteSlot, RouteSlot6, SCRATCH_LEN, ServiceKey, ServiceKey6, ServiceValue, SockRevKey,
    SockRevKey6, SockRevValue, SockRevValue6, ct_sets, reason,
};

#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_FRONTENDS, 0);

#[map]
pub static LB_BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(DEFAULT_BACKENDS, 0);

/// New flows (see `lb_common::MAP_CONNTRACK`, `ct_table`): mappable, so the agent
/// reads and carries them over as memory.
#[map]
pub static LB_CT: Array<CtSet> =
    Array::with_max_entries(ct_sets(DEFAULT_CONNTRACK), BPF_F_MMAPABLE);

/// The new-flow tables' seed (see `lb_common::MAP_CT_SEED`).
#[map]
pub static LB_CT_SEED: Array<u64> = Array::with_max_entries(1, 0);

/// Flows whose backend answered (see `lb_common::MAP_CT_ASSURED`).
#[map]
pub static LB_CT_ASSURED: HashMap<FlowKey, CtValue> =
    HashMap::with_max_entries(DEFAULT_CONNTRACK, 0);

/// The IPv6 maps: as their IPv4 counterparts (see `lb_common::MAP_SERVICES6`).
#[map]
pub static LB6_SERVICES: HashMap<ServiceKey6, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_FRONTENDS6, 0);

#[map]
pub static LB6_BACKENDS: HashMap<BackendKey, Backend6> =
    HashMap::with_max_entries(DEFAULT_BACKENDS6, 0);

#[map]
pub static LB6_CT: LruHashMap<FlowKey6, CtValue6> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK6, 0);

#[map]
pub static LB6_CT_ASSURED: HashMap<FlowKey6, CtValue6> =
    HashMap::with_max_entries(DEFAULT_CONNTRACK6, 0);

#[map]
pub static LB6_AFFINITY: LruHashMap<AffinityKey6, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY6, 0);

/// Per-CPU room for an IPv6 packet's parse and verdict (slot `WORK6_FLOW`, see
/// `flow::Work6`) or for an ICMP error's (slot `WORK6_ICMP`, see `icmp::Work`);
/// never pinned, never read by the agent.
#[map]
pub static LB6_WORK: PerCpuArray<[u64; WORK6_WORDS]> = PerCpuArray::with_max_entries(2, 0);
const WORK6_WORDS: usize = 24;
pub const WORK6_FLOW: u32 = 0;
pub const WORK6_ICMP: u32 = 1;
/// Bytes of `LB6_WORK`'s value (a `flow::Work6` and an `icmp::Work` fit, as
/// `flow` and `icmp` assert).
pub const WORK6_LEN: usize = WORK6_WORDS * 8;

/// Per-CPU caches of the FIB's answers for translated tuples (`fwd`); never pinned,
/// never read by the agent.
#[map]
pub static LB_ROUTES: PerCpuArray<RouteSlot> = PerCpuArray::with_max_entries(ROUTE_SLOTS, 0);
#[map]
pub static LB6_ROUTES: PerCpuArray<RouteSlot6> = PerCpuArray::with_max_entries(ROUTE_SLOTS, 0);

/// `lb_common::MAP_ROUTING`.
#[map]
pub static LB_ROUTING: Array<u32> = Array::with_max_entries(1, 0);
/// The clock, for the agent's sweep of expired assured flows.
#[map]
pub static LB_CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Until when this node may send ARP about each LoadBalancer address (see
/// `lb_common::MAP_ARP_HOLD`).
#[map]
pub static LB_ARP_HOLD: HashMap<u32, u64> = HashMap::with_max_entries(MAX_ARP_HOLD, 0);

/// Until when this node may send Neighbor Advertisements about each IPv6
/// LoadBalancer address, and Solicitations from it (see `lb_common::MAP_NDP_HOLD`).
#[map]
pub static LB_NDP_HOLD: HashMap<Addr6, u64> = HashMap::with_max_entries(MAX_ARP_HOLD, 0);

#[map]
pub static LB_IFACES: HashMap<u32, IfaceValue> = HashMap::with_max_entries(MAX_IFACES, 0);

#[map]
pub static LB_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(reason::COUNT, 0);

#[map]
pub static LB_SVC_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_FRONTENDS, 0);

#[map]
pub static LB_BE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_BACKENDS, 0);

#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY, 0);

#[map]
pub static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(MAX_SOCK_REVNAT, 0);

#[map]
pub static LB6_SOCK_REVNAT: LruHashMap<SockRevKey6, SockRevValue6> =
    LruHashMap::with_max_entries(MAX_SOCK_REVNAT, 0);

/// Ports of fragmented datagrams, from their first fragments (see `frag`).
#[map]
pub static LB_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(MAX_FRAGS, 0);
/// [`LB_FRAGS`] for IPv6 datagrams.
#[map]
pub static LB6_FRAGS: LruHashMap<FragKey6, FragValue> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

/// Bitmap of frontend ports (see `lb_common::PORT_WORDS`).
#[map]
pub static LB_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Per-CPU room for packet bytes a program reads whole (see `verify`).
#[map]
pub static LB_SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The ICMP errors' token bucket (see `ratelimit`).
#[map]
pub static LB_REJECT_RATE: Array<RateBucket> = Array::with_max_entries(1, 0);

/// A token bucket per client the ICMP errors go to (see `ratelimit`).
#[map]
pub static LB_REJECT_PEERS: LruHashMap<u32, RateBucket> =
    LruHashMap::with_max_entries(MAX_REJECT_PEERS, 0);
