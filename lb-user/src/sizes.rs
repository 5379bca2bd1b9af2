//! How many entries lb's maps hold, chosen when the agent loads them (the eBPF
//! object's sizes are only placeholders): from the agent's flags, else from the
//! node's memory (as Cilium's `--bpf-map-dynamic-size-ratio`), never below
//! `lb_common`'s defaults, and never below what the store already holds.

use lb_common::{
    AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, BackendKey, Counters, CtSlot,
    CtValue, CtValue6, DEFAULT_AFFINITY, DEFAULT_AFFINITY6, DEFAULT_BACKENDS, DEFAULT_BACKENDS6,
    DEFAULT_CONNTRACK, DEFAULT_CONNTRACK6, DEFAULT_FRONTENDS, DEFAULT_FRONTENDS6, FlowKey,
    FlowKey6, MAP_AFFINITY, MAP_AFFINITY6, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_BACKENDS6,
    MAP_CONNTRACK, MAP_CONNTRACK6, MAP_CT_ASSURED, MAP_CT_ASSURED6, MAP_SERVICES, MAP_SERVICES6,
    MAP_SVC_STATS, ServiceKey, ServiceKey6, ServiceValue, ct_sets,
};

/// The largest size lb gives a map (2^26 entries; the kernel takes up to 2^31 for
/// some types, but a map this big already costs gigabytes).
pub const MAX_ENTRIES: u32 = 1 << 26;
/// Share of the node's memory the maps get unless `--map-memory-ratio` says
/// otherwise (Cilium's default for its dynamically sized maps).
pub const DEFAULT_MEMORY_RATIO: f64 = 0.0025;

/// Entries of each sized map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// `LB_SERVICES` (frontends) and `LB_SVC_STATS` (service-port ids < this).
    pub frontends: u32,
    /// `LB_BACKENDS` (slots) and `LB_BE_STATS` (backend ids < this).
    pub backends: u32,
    /// `LB_CT` (new flows) and `LB_CT_ASSURED` (answered flows), each (two entries
    /// per flow).
    pub conntrack: u32,
    /// `LB_AFFINITY`.
    pub affinity: u32,
    /// The IPv6 maps: `LB6_SERVICES`, `LB6_BACKENDS`, `LB6_CT` and
    /// `LB6_CT_ASSURED` (each), `LB6_AFFINITY`. Set by the same flags as IPv4's (as
    /// Cilium's `--bpf-lb-map-max` sizes both families), else small defaults (a node
    /// without IPv6 services pays little for them), never below what the source's
    /// IPv6 services need. Their ids are IPv4's (one space, the counters').
    pub frontends6: u32,
    pub backends6: u32,
    pub conntrack6: u32,
    pub affinity6: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            frontends: DEFAULT_FRONTENDS,
            backends: DEFAULT_BACKENDS,
            conntrack: DEFAULT_CONNTRACK,
            affinity: DEFAULT_AFFINITY,
            frontends6: DEFAULT_FRONTENDS6,
            backends6: DEFAULT_BACKENDS6,
            conntrack6: DEFAULT_CONNTRACK6,
            affinity6: DEFAULT_AFFINITY6,
        }
    }
}

/// What the agent was told (`None`: size from memory).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeFlags {
    pub frontends: Option<u32>,
    pub backends: Option<u32>,
    pub conntrack: Option<u32>,
    pub affinity: Option<u32>,
    /// Share of the node's memory the maps sized from memory may take, all together.
    pub memory_ratio: f64,
}

impl Default for SizeFlags {
    fn default() -> Self {
        SizeFlags {
            frontends: None,
            backends: None,
            conntrack: None,
            affinity: None,
            memory_ratio: DEFAULT_MEMORY_RATIO,
        }
    }
}

/// The node the maps are sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    pub total_bytes: u64,
    /// Possible CPUs (per-CPU maps hold one value for each).
    pub cpus: u32,
}

impl NodeMemory {
    /// This machine's (`/proc/meminfo`, possible CPUs).
    pub fn here() -> NodeMemory {
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
        NodeMemory {
            total_bytes: total_kib * 1024,
            cpus,
        }
    }
}

/// What the source (the store, or the API) holds now, in entries (the maps are never made smaller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// Frontends and endpoints of both families (the ids of both come from the
    /// IPv4 maps' sizes).
    pub frontends: u64,
    pub backends: u64,
    /// Those of the IPv6 family.
    pub frontends6: u64,
    pub backends6: u64,
}

/// A hash map entry: the element (list node, hash, LRU node) with its key and
/// value, and a bucket (an estimate of the kernel's preallocated layout).
fn hash_entry(key: usize, value: usize) -> u64 {
    (48 + key.next_multiple_of(8) + value.next_multiple_of(8) + 16) as u64
}

fn per_cpu(value: usize, cpus: u32) -> u64 {
    value.next_multiple_of(8) as u64 * u64::from(cpus)
}

/// Bytes one entry of each sized map costs, with the per-CPU counters behind it.
fn costs(cpus: u32) -> MapSizes64 {
    let counters = size_of::<Counters>();
    MapSizes64 {
        frontends: hash_entry(size_of::<ServiceKey>(), size_of::<ServiceValue>())
            + per_cpu(counters, cpus),
        backends: hash_entry(size_of::<BackendKey>(), size_of::<Backend>())
            + per_cpu(counters, cpus),
        // Two tables of this size: new flows (slots of an array) and assured ones.
        conntrack: size_of::<CtSlot>() as u64
            + hash_entry(size_of::<FlowKey>(), size_of::<CtValue>()),
        affinity: hash_entry(size_of::<AffinityKey>(), size_of::<AffinityValue>()),
    }
}

/// Bytes one entry of each IPv6 map costs (their counters are IPv4's).
fn costs6() -> MapSizes64 {
    MapSizes64 {
        frontends: hash_entry(size_of::<ServiceKey6>(), size_of::<ServiceValue>()),
        backends: hash_entry(size_of::<BackendKey>(), size_of::<Backend6>()),
        conntrack: 2 * hash_entry(size_of::<FlowKey6>(), size_of::<CtValue6>()),
        affinity: hash_entry(size_of::<AffinityKey6>(), size_of::<AffinityValue>()),
    }
}

struct MapSizes64 {
    frontends: u64,
    backends: u64,
    conntrack: u64,
    affinity: u64,
}

/// How the memory budget is shared: flows half, backends three tenths, frontends
/// and affinity a tenth each.
const SHARES: MapSizes64 = MapSizes64 {
    frontends: 10,
    backends: 30,
    conntrack: 50,
    affinity: 10,
};

fn pow2_floor(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

impl MapSizes {
    /// The sizes for `node` given `flags`, raised when `need` does not fit (to it
    /// and a quarter more, a power of two). Returns the sizes and, for the log, each size's
    /// reason.
    pub fn choose(flags: &SizeFlags, node: NodeMemory, need: Need) -> (MapSizes, Vec<String>) {
        let budget = (node.total_bytes as f64 * flags.memory_ratio.clamp(0.0, 1.0)) as u64;
        let cost = costs(node.cpus);
        let mut why = Vec::new();
        let mut one =
            |name: &str, flag: Option<u32>, floor: u32, share: u64, cost: u64, need: u64| {
                let from_memory = pow2_floor(budget / 100 * share / cost.max(1));
                let (mut n, mut how) = match flag {
                    Some(n) => (u64::from(n), "flag".to_string()),
                    None if from_memory > u64::from(floor) => (
                        from_memory,
                        format!(
                            "{:.2}% of memory",
                            flags.memory_ratio * 100.0 * share as f64 / 100.0
                        ),
                    ),
                    None => (u64::from(floor), "default".to_string()),
                };
                // A flag is taken as long as the store fits; a default leaves a quarter
                // more than the source holds for it to grow.
                let wanted = (need + need / 4).next_power_of_two();
                let short = match flag {
                    Some(_) => n < need,
                    None => n < wanted,
                };
                if need > 0 && short {
                    how = format!("raised from {n} ({how}): the source holds {need}");
                    n = wanted;
                }
                let n = n.clamp(1, u64::from(MAX_ENTRIES)) as u32;
                why.push(format!("{name}={n} ({how})"));
                n
            };
        let sizes = MapSizes {
            frontends: one(
                "frontends",
                flags.frontends,
                DEFAULT_FRONTENDS,
                SHARES.frontends,
                cost.frontends,
                need.frontends,
            ),
            backends: one(
                "backends",
                flags.backends,
                DEFAULT_BACKENDS,
                SHARES.backends,
                cost.backends,
                need.backends,
            ),
            conntrack: one(
                "conntrack",
                flags.conntrack,
                DEFAULT_CONNTRACK,
                SHARES.conntrack,
                cost.conntrack,
                0,
            ),
            affinity: one(
                "affinity",
                flags.affinity,
                DEFAULT_AFFINITY,
                SHARES.affinity,
                cost.affinity,
                0,
            ),
            // IPv6: no share of memory (the flags or the defaults, raised to the need).
            frontends6: one(
                "frontends6",
                flags.frontends,
                DEFAULT_FRONTENDS6,
                0,
                1,
                need.frontends6,
            ),
            backends6: one(
                "backends6",
                flags.backends,
                DEFAULT_BACKENDS6,
                0,
                1,
                need.backends6,
            ),
            conntrack6: one("conntrack6", flags.conntrack, DEFAULT_CONNTRACK6, 0, 1, 0),
            affinity6: one("affinity6", flags.affinity, DEFAULT_AFFINITY6, 0, 1, 0),
        };
        (sizes, why)
    }

    /// The default sizes, raised as the agent raises them for a store that holds
    /// `need` (benches that fill the maps past the defaults).
    pub fn holding(need: Need) -> MapSizes {
        let no_memory = NodeMemory {
            total_bytes: 0,
            cpus: 1,
        };
        MapSizes::choose(&SizeFlags::default(), no_memory, need).0
    }

    /// Each sized map with its entries.
    pub fn by_map(&self) -> [(&'static str, u32); 12] {
        [
            (MAP_SERVICES, self.frontends),
            (MAP_SVC_STATS, self.frontends),
            (MAP_BACKENDS, self.backends),
            (MAP_BACKEND_STATS, self.backends),
            // The IPv4 new-flow table's entries are sets of slots.
            (MAP_CONNTRACK, ct_sets(self.conntrack)),
            (MAP_CT_ASSURED, self.conntrack),
            (MAP_AFFINITY, self.affinity),
            (MAP_SERVICES6, self.frontends6),
            (MAP_BACKENDS6, self.backends6),
            (MAP_CONNTRACK6, self.conntrack6),
            (MAP_CT_ASSURED6, self.conntrack6),
            (MAP_AFFINITY6, self.affinity6),
        ]
    }

    /// Estimated bytes the sized maps take on a node with `cpus` CPUs.
    pub fn bytes(&self, cpus: u32) -> u64 {
        let c = costs(cpus);
        let c6 = costs6();
        u64::from(self.frontends) * c.frontends
            + u64::from(self.backends) * c.backends
            + u64::from(self.conntrack) * c.conntrack
            + u64::from(self.affinity) * c.affinity
            + u64::from(self.frontends6) * c6.frontends
            + u64::from(self.backends6) * c6.backends
            + u64::from(self.conntrack6) * c6.conntrack
            + u64::from(self.affinity6) * c6.affinity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(gib: u64, cpus: u32) -> NodeMemory {
        NodeMemory {
            total_bytes: gib * GIB,
            cpus,
        }
    }

    #[test]
    fn small_nodes_get_the_defaults_and_big_ones_more() {
        let flags = SizeFlags::default();
        let (small, _) = MapSizes::choose(&flags, node(2, 2), Need::default());
        assert_eq!(small, MapSizes::default());
        let (big, why) = MapSizes::choose(&flags, node(512, 64), Need::default());
        assert!(big.conntrack > DEFAULT_CONNTRACK, "{why:?}");
        // Whatever the node, the maps sized from memory stay within the ratio
        // (or at the defaults).
        assert!(
            big.bytes(64) <= (512 * GIB) / 400 + MapSizes::default().bytes(64),
            "{why:?}"
        );
        // A bigger ratio, bigger maps.
        let more = SizeFlags {
            memory_ratio: 0.05,
            ..flags
        };
        let (bigger, _) = MapSizes::choose(&more, node(24, 2), Need::default());
        assert!(bigger.backends > DEFAULT_BACKENDS && bigger.frontends > DEFAULT_FRONTENDS);
    }

    #[test]
    fn flags_win_but_never_below_what_the_store_holds() {
        let flags = SizeFlags {
            frontends: Some(1_000),
            backends: Some(2_000_000),
            conntrack: Some(4_096),
            ..SizeFlags::default()
        };
        let need = Need {
            frontends: 100_000,
            backends: 1_000_000,
            frontends6: 5_000,
            backends6: 0,
        };
        let (s, why) = MapSizes::choose(&flags, node(24, 2), need);
        // 100,000 frontends and a quarter more, to the next power of two.
        assert_eq!(s.frontends, 131_072, "{why:?}");
        assert!(
            why[0].contains("raised from 1000 (flag): the source holds 100000"),
            "{why:?}"
        );
        // A flag above the need stays as given, exactly.
        assert_eq!(s.backends, 2_000_000);
        assert_eq!(s.conntrack, 4_096);
        assert_eq!(s.affinity, DEFAULT_AFFINITY);
        // The IPv6 maps take the same flags, raised to IPv6's own need.
        assert_eq!(s.frontends6, 8_192, "{why:?}");
        assert_eq!(s.backends6, 2_000_000);
        assert_eq!(s.conntrack6, 4_096);
        // Without flags, their small defaults, whatever the memory.
        let (d, _) = MapSizes::choose(&SizeFlags::default(), node(24, 2), Need::default());
        assert_eq!(
            (d.frontends6, d.backends6, d.conntrack6, d.affinity6),
            (
                DEFAULT_FRONTENDS6,
                DEFAULT_BACKENDS6,
                DEFAULT_CONNTRACK6,
                DEFAULT_AFFINITY6
            )
        );
    }
}
