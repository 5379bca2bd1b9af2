//! The address families: what differs between IPv4 and IPv6 for the parts of the
//! pipeline that are written once for both (`conntrack`, `lb`, `flow`, `verify`):
//! the maps of the family and its special addresses. `u32` is an IPv4 address,
//! [`Addr6`] an IPv6 one, both as they sit in the packet.

use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuArray};
use lb_common::{
    Addr6, AffinityKeyOf, AffinityValue, BackendKey, BackendOf, CtValue6, CtValueOf, FlowKey6,
    FlowKeyOf, FragKey, FragKey6, FragValue, HAIRPIN_SNAT_ADDR, HAIRPIN_SNAT_ADDR6, ROUTED_BY_DST4,
    ROUTED_BY_DST6, RouteSlotOf, ServiceKeyOf, ServiceValue,
};

use crate::csum::Csum;
use crate::ct_table::{CtTable, NewFlows};
use crate::maps::{
    LB_AFFINITY, LB_BACKENDS, LB_CT_ASSURED, LB_FRAGS, LB_ROUTES, LB_SERVICES, LB6_AFFINITY,
    LB6_BACKENDS, LB6_CT, LB6_CT_ASSURED, LB6_FRAGS, LB6_ROUTES, LB6_SERVICES,
};

/// Set by the agent at load time (`lb_common::GLOBAL_SNAT_ADDR`): the node address
/// flows to remote backends leave with.
#[unsafe(no_mangle)]
static SNAT_ADDR: u32 = 0;

/// Set by the agent at load time (`lb_common::GLOBAL_SNAT_ADDR6`): the node's IPv6
/// address flows to remote IPv6 backends leave with.
#[unsafe(no_mangle)]
static SNAT_ADDR6: Addr6 = [0; 4];

/// An address family, implemented by its address type.
pub trait Family: Copy + Default + PartialEq + 'static {
    /// The address a pod that reaches itself through a service sees as the source
    /// (a packet from its own address to itself would never leave it).
    const HAIRPIN: Self;
    /// This family's bit of `LB_ROUTING` (`lb_common::MAP_ROUTING`).
    const ROUTED_BY_DST: u32;
    /// The family's ICMP protocol number (1, or 58 for ICMPv6).
    const PROTO_ICMP: u8;
    /// How many 512-byte chunks of a segment `verify` sums, at most (longer
    /// segments count as valid).
    const VERIFY_CHUNKS: usize;

    fn services() -> &'static HashMap<ServiceKeyOf<Self>, ServiceValue>;
    fn backends() -> &'static HashMap<BackendKey, BackendOf<Self>>;
    type NewFlows: NewFlows<Self>;
    fn conntrack() -> Self::NewFlows;
    fn assured() -> &'static HashMap<FlowKeyOf<Self>, CtValueOf<Self>>;
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue>;
    /// The key naming a fragmented datagram (`frag`): its addresses, protocol and
    /// identification (`id_be`, as `parse::Packet::frag_id_be`).
    type FragKey;
    fn frag_key(key: &FlowKeyOf<Self>, id_be: u32) -> Self::FragKey;
    fn frags() -> &'static LruHashMap<Self::FragKey, FragValue>;
    /// The per-CPU cache of the FIB's answers (`fwd`).
    fn routes() -> &'static PerCpuArray<RouteSlotOf<Self>>;

    /// The node address SNAT flows leave with (the default address: none).
    fn snat_addr() -> Self;

    /// The one's-complement sum of the address's 16-bit words, unfolded (its part of
    /// a pseudo-header checksum).
    fn word_sum(self) -> u64;

    /// A flow's source and destination for `lb_common::flow_slot`.
    fn fold(saddr: Self, daddr: Self) -> u64;

    /// Replaces this address by `new` in a checksum being updated (a no-op when
    /// equal).
    fn replace_in(self, new: Self, c: &mut Csum);
}

impl Family for u32 {
    type NewFlows = CtTable;
    const HAIRPIN: u32 = u32::from_ne_bytes(HAIRPIN_SNAT_ADDR);
    const ROUTED_BY_DST: u32 = ROUTED_BY_DST4;
    const PROTO_ICMP: u8 = 1;
    /// 32: segments of up to 16 KiB (only GSO/GRO aggregates, which the kernel
    /// vouches for, are longer).
    const VERIFY_CHUNKS: usize = 32;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<u32>, ServiceValue> {
        &LB_SERVICES
    }

    #[inline(always)]
    fn backends() -> &'static HashMap<BackendKey, BackendOf<u32>> {
        &LB_BACKENDS
    }

    #[inline(always)]
    fn conntrack() -> CtTable {
        CtTable
    }

    #[inline(always)]
    fn assured() -> &'static HashMap<FlowKeyOf<u32>, CtValueOf<u32>> {
        &LB_CT_ASSURED
    }

    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<u32>, AffinityValue> {
        &LB_AFFINITY
    }

    type FragKey = FragKey;

    #[inline(always)]
    fn frag_key(key: &FlowKeyOf<u32>, id_be: u32) -> FragKey {
        FragKey {
            saddr_be: key.saddr_be,
            daddr_be: key.daddr_be,
            id_be: id_be as u16,
            proto: key.proto,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey, FragValue> {
        &LB_FRAGS
    }

    #[inline(always)]
    fn routes() -> &'static PerCpuArray<RouteSlotOf<u32>> {
        &LB_ROUTES
    }

    #[inline(always)]
    fn snat_addr() -> u32 {
        // SAFETY: a plain read of a global the loader set.
        unsafe { core::ptr::read_volatile(&SNAT_ADDR) }
    }

    #[inline(always)]
    fn word_sum(self) -> u64 {
        (self & 0xffff) as u64 + (self >> 16) as u64
    }

    #[inline(always)]
    fn fold(saddr: u32, daddr: u32) -> u64 {
        lb_common::fold4(saddr, daddr)
    }

    #[inline(always)]
    fn replace_in(self, new: u32, c: &mut Csum) {
        c.replace32(self, new);
    }
}

impl Family for Addr6 {
    type NewFlows = &'static LruHashMap<FlowKey6, CtValue6>;
    const HAIRPIN: Addr6 = addr6(HAIRPIN_SNAT_ADDR6);
    const ROUTED_BY_DST: u32 = ROUTED_BY_DST6;
    const PROTO_ICMP: u8 = 58;
    /// One: IPv6 verifies closing segments (TCP header included) of up to 512 bytes (a FIN or RST rarely
    /// carries more), as a longer loop next to IPv6's lookups would take the
    /// program past the verifier's limit of instructions processed.
    const VERIFY_CHUNKS: usize = 1;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<Addr6>, ServiceValue> {
        &LB6_SERVICES
    }

    #[inline(always)]
    fn backends() -> &'static HashMap<BackendKey, BackendOf<Addr6>> {
        &LB6_BACKENDS
    }

    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKey6, CtValue6> {
        &LB6_CT
    }

    #[inline(always)]
    fn assured() -> &'static HashMap<FlowKeyOf<Addr6>, CtValueOf<Addr6>> {
        &LB6_CT_ASSURED
    }

    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Addr6>, AffinityValue> {
        &LB6_AFFINITY
    }

    type FragKey = FragKey6;

    #[inline(always)]
    fn frag_key(key: &FlowKeyOf<Addr6>, id_be: u32) -> FragKey6 {
        FragKey6 {
            saddr_be: key.saddr_be,
            daddr_be: key.daddr_be,
            id_be,
            proto: key.proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragValue> {
        &LB6_FRAGS
    }

    #[inline(always)]
    fn routes() -> &'static PerCpuArray<RouteSlotOf<Addr6>> {
        &LB6_ROUTES
    }

    #[inline(always)]
    fn snat_addr() -> Addr6 {
        // SAFETY: a plain read of a global the loader set.
        unsafe { core::ptr::read_volatile(&SNAT_ADDR6) }
    }

    #[inline(always)]
    fn word_sum(self) -> u64 {
        self[0].word_sum() + self[1].word_sum() + self[2].word_sum() + self[3].word_sum()
    }

    #[inline(always)]
    fn fold(saddr: Addr6, daddr: Addr6) -> u64 {
        lb_common::fold6(&saddr, &daddr)
    }

    #[inline(always)]
    fn replace_in(self, new: Addr6, c: &mut Csum) {
        for i in 0..4 {
            c.replace32(self[i], new[i]);
        }
    }
}

/// An IPv6 address's 16 bytes as [`Addr6`] words.
pub const fn addr6(b: [u8; 16]) -> Addr6 {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}
