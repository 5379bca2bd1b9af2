//! The only user of `aya::maps`: typed reads and writes of lb's maps, whether the
//! agent loaded them or a CLI command opened them from their pins.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::Path,
};

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, BackendKey, Counters, CtAddr,
    CtTimeouts, CtValue, CtValue6, CtValueOf, FlowKey, FlowKey6, FlowKeyOf, IfaceValue,
    MAP_AFFINITY, MAP_AFFINITY6, MAP_ARP_HOLD, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_BACKENDS6,
    MAP_CLOCK, MAP_CONNTRACK, MAP_CONNTRACK6, MAP_CT_ASSURED, MAP_CT_ASSURED6, MAP_CT_SEED,
    MAP_IFACES, MAP_NDP_HOLD, MAP_PORTS, MAP_ROUTING, MAP_SERVICES, MAP_SERVICES6, MAP_STATS,
    MAP_SVC_STATS, PORT_WORDS, PROTO_UDP, ServiceKey, ServiceKey6, ServiceValue, reason,
};
use tracing::{info, warn};

use crate::{
    ct_table::CtTable,
    sizes::MapSizes,
    sync::{Entries, Frontend, Op, Slot},
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {map}: not in the eBPF object")]
    Missing { map: &'static str },
    #[error("map {map}: duplicating its descriptor: {error}")]
    Descriptor {
        map: &'static str,
        error: std::io::Error,
    },
    #[error("map {map}: not a hash map")]
    NotHash { map: &'static str },
    #[error("map {map}: not an array")]
    NotArray { map: &'static str },
    #[error("map {map}: {action}: {error}")]
    Aya {
        map: &'static str,
        action: &'static str,
        error: aya::maps::MapError,
    },
}

fn aya_err(
    map: &'static str,
    action: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |error| MapsError::Aya { map, action, error }
}

/// `LB_ARP_HOLD` and `LB_NDP_HOLD`, opened from their pins by whoever announces
/// LoadBalancer addresses: until when this node may answer for each (see
/// `lb_common::MAP_ARP_HOLD`).
pub struct NeighHolds {
    arp: HashMap<MapData, u32, u64>,
    /// None: pins an agent of an earlier version left, without it.
    ndp: Option<HashMap<MapData, lb_common::Addr6, u64>>,
}

impl NeighHolds {
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(aya_err(name, "opening the pin"))
        };
        Ok(NeighHolds {
            arp: HashMap::try_from(open(MAP_ARP_HOLD)?).map_err(aya_err(MAP_ARP_HOLD, "typing"))?,
            ndp: open(MAP_NDP_HOLD)
                .and_then(|m| HashMap::try_from(m).map_err(aya_err(MAP_NDP_HOLD, "typing")))
                .ok(),
        })
    }

    /// This node may answer for `ip` until `until` from now (zero: no longer).
    pub fn hold(
        &mut self,
        ip: std::net::IpAddr,
        until: std::time::Duration,
    ) -> Result<(), MapsError> {
        let deadline = if until.is_zero() {
            0
        } else {
            monotonic_ns() + until.as_nanos() as u64
        };
        match ip {
            std::net::IpAddr::V4(ip) => self
                .arp
                .insert(u32::from_ne_bytes(ip.octets()), deadline, 0)
                .map_err(aya_err(MAP_ARP_HOLD, "writing")),
            std::net::IpAddr::V6(ip) => self
                .ndp
                .as_mut()
                .ok_or(MapsError::Missing { map: MAP_NDP_HOLD })?
                .insert(crate::sync::addr6(ip), deadline, 0)
                .map_err(aya_err(MAP_NDP_HOLD, "writing")),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the kernel side's `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the structure it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    /// The same maps' descriptors, for batched writes (aya 0.14 has no batch API).
    services_fd: OwnedFd,
    backends_fd: OwnedFd,
    ifaces: HashMap<MapData, u32, IfaceValue>,
    /// New flows (a set-associative array, mapped) and answered ones (never
    /// evicted).
    conntrack: NewFlows<u32>,
    /// `LB_CT_SEED`, held open (the programs were loaded against its descriptor).
    _ct_seed: Map,
    assured: HashMap<MapData, FlowKey, CtValue>,
    ports: Array<MapData, u64>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    stats: PerCpuArray<MapData, Counters>,
    /// `LB_ARP_HOLD` and `LB_NDP_HOLD` (written by whoever announces LoadBalancer
    /// addresses).
    pub neigh_holds: NeighHolds,
    svc_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    /// The IPv6 maps (None: pins an agent of an earlier version left, without them).
    v6: Option<Maps6>,
}

/// `LB6_SERVICES`, `LB6_BACKENDS` and IPv6 conntrack.
struct Maps6 {
    services: HashMap<MapData, ServiceKey6, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend6>,
    services_fd: OwnedFd,
    backends_fd: OwnedFd,
    conntrack: HashMap<MapData, FlowKey6, CtValue6>,
    assured: HashMap<MapData, FlowKey6, CtValue6>,
}

/// Removes the expired entries of an assured-flows map (either family); returns
/// how many.
fn sweep<A>(
    map: &mut HashMap<MapData, FlowKeyOf<A>, CtValueOf<A>>,
    name: &'static str,
    now: u64,
    ticks_per_s: u64,
    timeouts: &CtTimeouts,
) -> Result<usize, MapsError>
where
    FlowKeyOf<A>: Pod,
    CtValueOf<A>: Pod,
{
    let expired: Vec<FlowKeyOf<A>> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| v.expired(k.proto, now, ticks_per_s, timeouts))
        .map(|(k, _)| k)
        .collect();
    for k in &expired {
        ignore_missing(map.remove(k)).map_err(aya_err(name, "removing"))?;
    }
    Ok(expired.len())
}

/// A lookup's value, `None` for a key the map does not hold.
fn found<V>(r: Result<V, aya::maps::MapError>, map: &'static str) -> Result<Option<V>, MapsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(aya_err(map, "reading")(e)),
    }
}

/// A pinned map of an earlier agent whose size differs from the one loaded now.
pub struct Resized {
    pub name: &'static str,
    pub old: MapData,
}

/// Whether a resized map's entries are carried over (the entries of the frontends,
/// their slots, flows and affinities; counters start again at zero).
pub fn carries_over(name: &str) -> bool {
    [
        MAP_SERVICES,
        MAP_BACKENDS,
        MAP_CONNTRACK,
        MAP_CT_ASSURED,
        MAP_AFFINITY,
        MAP_SERVICES6,
        MAP_BACKENDS6,
        MAP_CONNTRACK6,
        MAP_CT_ASSURED6,
        MAP_AFFINITY6,
    ]
    .contains(&name)
}

/// Copies the entries of `r.old` into the map of that name in `ebpf` (freshly
/// loaded with `sizes`), as far as they fit: ids beyond the new sizes and entries
/// past a smaller map's end are dropped, and said so. Returns (copied, dropped).
pub fn carry_over(
    ebpf: &mut aya::Ebpf,
    r: Resized,
    sizes: &MapSizes,
) -> Result<(usize, usize), MapsError> {
    let name = r.name;
    let (copied, dropped) = match name {
        MAP_SERVICES => {
            copy_entries::<ServiceKey, ServiceValue>(ebpf, r, |_, v| v.svc_id < sizes.frontends)?
        }
        MAP_BACKENDS => copy_entries::<BackendKey, Backend>(ebpf, r, |k, v| {
            k.svc_id < sizes.frontends && v.backend_id < sizes.backends
        })?,
        MAP_CONNTRACK => copy_flows::<u32>(ebpf, r)?,
        MAP_CT_ASSURED => copy_entries::<FlowKey, CtValue>(ebpf, r, |_, _| true)?,
        MAP_AFFINITY => copy_entries::<AffinityKey, AffinityValue>(ebpf, r, |_, _| true)?,
        MAP_SERVICES6 => {
            copy_entries::<ServiceKey6, ServiceValue>(ebpf, r, |_, v| v.svc_id < sizes.frontends)?
        }
        MAP_BACKENDS6 => copy_entries::<BackendKey, Backend6>(ebpf, r, |k, v| {
            k.svc_id < sizes.frontends && v.backend_id < sizes.backends
        })?,
        MAP_CONNTRACK6 | MAP_CT_ASSURED6 => {
            copy_entries::<FlowKey6, CtValue6>(ebpf, r, |_, _| true)?
        }
        MAP_AFFINITY6 => copy_entries::<AffinityKey6, AffinityValue>(ebpf, r, |_, _| true)?,
        _ => (0, 0),
    };
    if dropped > 0 {
        warn!(
            map = name,
            copied, dropped, "resized map: entries that do not fit its new size are dropped"
        );
    } else {
        info!(map = name, copied, "resized map: every entry carried over");
    }
    Ok((copied, dropped))
}

/// Copies `r.old`'s entries that `keep` into `r.name`; an LRU map smaller than the
/// old one keeps the most recently written (the kernel evicts the others), so the
/// drop count is what the new map does not hold at the end.
fn copy_entries<K: Pod + Eq + std::hash::Hash, V: Pod>(
    ebpf: &mut aya::Ebpf,
    r: Resized,
    keep: impl Fn(&K, &V) -> bool,
) -> Result<(usize, usize), MapsError> {
    let name = r.name;
    let old: HashMap<MapData, K, V> = Map::from_map_data(r.old)
        .and_then(HashMap::try_from)
        .map_err(aya_err(name, "opening the old map"))?;
    let map = ebpf.map_mut(name).ok_or(MapsError::Missing { map: name })?;
    let mut new: HashMap<&mut MapData, K, V> =
        HashMap::try_from(map).map_err(aya_err(name, "typing"))?;
    let mut seen = 0;
    for item in old.iter() {
        let (k, v) = item.map_err(aya_err(name, "reading the old map"))?;
        seen += 1;
        if keep(&k, &v) {
            // A full hash map refuses the rest (E2BIG): they are counted below.
            let _ = new.insert(k, v, 0);
        }
    }
    let held = new.keys().filter(Result::is_ok).count();
    Ok((held, seen - held.min(seen)))
}

/// Copies the valid entries of an old new-flow table (`r.old`) into the new one of
/// that name, each to its set in the new size (sets that overflow keep their most
/// recently seen entries): (copied, dropped).
fn copy_flows<A: CtAddr>(ebpf: &mut aya::Ebpf, r: Resized) -> Result<(usize, usize), MapsError> {
    let name = r.name;
    let new = new_flow_table::<A>(ebpf, name)?;
    let old = mapped_table::<A>(&r.old, name, new.seed())?;
    let mut flows = old.entries();
    // The least recently seen first, so a full set keeps the latest.
    flows.sort_by_key(|(_, v)| v.last_seen);
    for (k, v) in &flows {
        new.insert(k, v);
    }
    let held = new.len();
    Ok((held, flows.len() - held.min(flows.len())))
}

/// The new-flow tables' seed (`LB_CT_SEED[0]`; 0 until an agent drew one).
fn read_ct_seed(map: &Map) -> Result<u64, MapsError> {
    let seed: Array<&MapData, u64> =
        Array::try_from(map).map_err(aya_err(MAP_CT_SEED, "typing"))?;
    seed.get(&0, 0).map_err(aya_err(MAP_CT_SEED, "reading"))
}

/// The seed an earlier agent left pinned in `dir` with its new-flow tables (None:
/// none there, or none drawn).
pub fn pinned_ct_seed(dir: &Path) -> Option<u64> {
    let map = MapData::from_pin(dir.join(MAP_CT_SEED))
        .and_then(Map::from_map_data)
        .ok()?;
    read_ct_seed(&map).ok().filter(|&s| s != 0)
}

/// The seed for a load: the pinned one if there is one (its tables' flows were
/// placed by it), else a new random one.
pub fn ct_seed_for(pins: Option<&Path>) -> u64 {
    pins.and_then(pinned_ct_seed)
        .unwrap_or_else(|| rand::random::<u64>() | 1)
}

/// Keeps the seed the programs were loaded with (`GLOBAL_CT_SEED`) in the loaded
/// object's `LB_CT_SEED`, for whatever reads the tables and for the next agent.
/// Before anything reads or carries over the tables.
pub fn keep_ct_seed(ebpf: &mut aya::Ebpf, seed: u64) -> Result<(), MapsError> {
    write_first(ebpf, MAP_CT_SEED, seed)
}

/// Writes entry 0 of the array `name` of a loaded object.
fn write_first<V: Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    value: V,
) -> Result<(), MapsError> {
    let map = ebpf.map_mut(name).ok_or(MapsError::Missing { map: name })?;
    let mut a: Array<&mut MapData, V> = Array::try_from(map).map_err(aya_err(name, "typing"))?;
    a.set(0, value, 0).map_err(aya_err(name, "writing"))
}

/// A new-flow table, mapped (see `ct_table`).
fn mapped_table<A: CtAddr>(
    data: &MapData,
    name: &'static str,
    seed: u64,
) -> Result<CtTable<A>, MapsError> {
    let sets = data
        .info()
        .map_err(aya_err(name, "reading its size"))?
        .max_entries();
    CtTable::map(data.fd().as_fd(), sets, seed)
        .map_err(|error| MapsError::Descriptor { map: name, error })
}

/// The new-flow table `name` (`LB_CT`) of a loaded object, mapped, under
/// its `LB_CT_SEED` (for the benchmarks' own object, which holds them too).
pub fn new_flow_table<A: CtAddr>(
    ebpf: &aya::Ebpf,
    name: &'static str,
) -> Result<CtTable<A>, MapsError> {
    let seed = read_ct_seed(
        ebpf.map(MAP_CT_SEED)
            .ok_or(MapsError::Missing { map: MAP_CT_SEED })?,
    )?;
    match ebpf.map(name).ok_or(MapsError::Missing { map: name })? {
        Map::Array(d) => mapped_table(d, name, seed),
        _ => Err(MapsError::NotArray { map: name }),
    }
}

/// A new-flow table, mapped, and its map (whose descriptor the programs were
/// loaded against: it stays open as long as the table).
struct NewFlows<A> {
    table: CtTable<A>,
    _map: Map,
}

impl<A> std::ops::Deref for NewFlows<A> {
    type Target = CtTable<A>;
    fn deref(&self) -> &CtTable<A> {
        &self.table
    }
}

/// A new-flow table from `map`, mapped.
fn mapped_ct<A: CtAddr>(map: Map, name: &'static str, seed: u64) -> Result<NewFlows<A>, MapsError> {
    let table = match &map {
        Map::Array(d) => mapped_table(d, name, seed)?,
        _ => return Err(MapsError::NotArray { map: name }),
    };
    Ok(NewFlows { table, _map: map })
}

/// A counter summed over CPUs.
pub fn sum(values: &[Counters]) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

impl Maps {
    /// Takes lb's maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::from_maps(|name| ebpf.take_map(name).ok_or(MapsError::Missing { map: name }))
    }

    /// Opens lb's maps from their pins in `dir` (as the agent left them).
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        Self::from_maps(|name| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(aya_err(name, "opening the pin"))
        })
    }

    /// Each map from `get(name)`, typed.
    fn from_maps(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            get: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
            name: &'static str,
        ) -> Result<T, MapsError> {
            T::try_from(get(name)?).map_err(aya_err(name, "typing"))
        }
        /// A hash map, typed, and a duplicate of its descriptor.
        fn with_fd<T: TryFrom<Map, Error = aya::maps::MapError>>(
            get: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
            name: &'static str,
        ) -> Result<(T, OwnedFd), MapsError> {
            let map = get(name)?;
            let fd = match &map {
                Map::HashMap(d) => d
                    .fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|error| MapsError::Descriptor { map: name, error })?,
                _ => return Err(MapsError::NotHash { map: name }),
            };
            Ok((T::try_from(map).map_err(aya_err(name, "typing"))?, fd))
        }
        let (services, services_fd) = with_fd(&mut get, MAP_SERVICES)?;
        let (backends, backends_fd) = with_fd(&mut get, MAP_BACKENDS)?;
        let ct_seed = get(MAP_CT_SEED)?;
        let seed = read_ct_seed(&ct_seed)?;
        Ok(Maps {
            _ct_seed: ct_seed,
            services,
            backends,
            services_fd,
            backends_fd,
            ifaces: typed(&mut get, MAP_IFACES)?,
            conntrack: mapped_ct(get(MAP_CONNTRACK)?, MAP_CONNTRACK, seed)?,
            assured: typed(&mut get, MAP_CT_ASSURED)?,
            ports: typed(&mut get, MAP_PORTS)?,
            affinity: typed(&mut get, MAP_AFFINITY)?,
            stats: typed(&mut get, MAP_STATS)?,
            neigh_holds: NeighHolds {
                arp: typed(&mut get, MAP_ARP_HOLD)?,
                ndp: typed(&mut get, MAP_NDP_HOLD).ok(),
            },
            svc_stats: typed(&mut get, MAP_SVC_STATS)?,
            backend_stats: typed(&mut get, MAP_BACKEND_STATS)?,
            v6: (|| {
                let (services, services_fd) = with_fd(&mut get, MAP_SERVICES6)?;
                let (backends, backends_fd) = with_fd(&mut get, MAP_BACKENDS6)?;
                Ok::<_, MapsError>(Maps6 {
                    services,
                    backends,
                    services_fd,
                    backends_fd,
                    conntrack: typed(&mut get, MAP_CONNTRACK6)?,
                    assured: typed(&mut get, MAP_CT_ASSURED6)?,
                })
            })()
            .ok(),
        })
    }

    fn v6(&mut self) -> Result<&mut Maps6, MapsError> {
        self.v6
            .as_mut()
            .ok_or(MapsError::Missing { map: MAP_SERVICES6 })
    }

    /// Every IPv6 conntrack entry (assured ones first).
    pub fn conntrack6(&self) -> Result<Vec<(FlowKey6, CtValue6)>, MapsError> {
        let Some(v6) = &self.v6 else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (map, name) in [
            (&v6.assured, MAP_CT_ASSURED6),
            (&v6.conntrack, MAP_CONNTRACK6),
        ] {
            for item in map.iter() {
                out.push(item.map_err(aya_err(name, "reading"))?);
            }
        }
        Ok(out)
    }

    /// The IPv6 conntrack entry of `key` (the assured table first), if any.
    pub fn conntrack6_entry(&self, key: &FlowKey6) -> Result<Option<CtValue6>, MapsError> {
        let Some(v6) = &self.v6 else {
            return Ok(None);
        };
        for (map, name) in [
            (&v6.assured, MAP_CT_ASSURED6),
            (&v6.conntrack, MAP_CONNTRACK6),
        ] {
            if let Some(v) = found(map.get(key, 0), name)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// How many entries `LB_SERVICES`, `LB_BACKENDS`, `LB6_SERVICES` and
    /// `LB6_BACKENDS` hold at most, as loaded (the IPv6 ones 0 when pins left by an
    /// earlier version have none).
    pub fn capacity(&self) -> Result<[u32; 4], MapsError> {
        let entries = |fd: &OwnedFd, map: &'static str| {
            let fd = fd
                .try_clone()
                .map_err(|error| MapsError::Descriptor { map, error })?;
            MapData::from_fd(fd)
                .and_then(|m| m.info())
                .map(|i| i.max_entries())
                .map_err(aya_err(map, "reading its size"))
        };
        let (services6, backends6) = match &self.v6 {
            Some(v6) => (
                entries(&v6.services_fd, MAP_SERVICES6)?,
                entries(&v6.backends_fd, MAP_BACKENDS6)?,
            ),
            None => (0, 0),
        };
        Ok([
            entries(&self.services_fd, MAP_SERVICES)?,
            entries(&self.backends_fd, MAP_BACKENDS)?,
            services6,
            backends6,
        ])
    }

    /// Everything the service maps of both families and `LB_PORTS` hold.
    pub fn read_entries(&self) -> Result<Entries, MapsError> {
        let mut e = Entries::default();
        for item in self.services.iter() {
            let (k, v) = item.map_err(aya_err(MAP_SERVICES, "reading"))?;
            e.services.insert(Frontend::V4(k), v);
        }
        for item in self.backends.iter() {
            let (k, v) = item.map_err(aya_err(MAP_BACKENDS, "reading"))?;
            e.backends.insert(k, Slot::V4(v));
        }
        if let Some(v6) = &self.v6 {
            for item in v6.services.iter() {
                let (k, v) = item.map_err(aya_err(MAP_SERVICES6, "reading"))?;
                e.services.insert(Frontend::V6(k), v);
            }
            for item in v6.backends.iter() {
                let (k, v) = item.map_err(aya_err(MAP_BACKENDS6, "reading"))?;
                e.backends.insert(k, Slot::V6(v));
            }
        }
        for w in 0..PORT_WORDS {
            let bits = self
                .ports
                .get(&w, 0)
                .map_err(aya_err(MAP_PORTS, "reading"))?;
            if bits != 0 {
                e.ports.insert(w, bits);
            }
        }
        Ok(e)
    }

    /// Carries out `ops` in order. A delete of an entry already gone is not an error.
    /// Runs of puts to one map go in one `BPF_MAP_UPDATE_BATCH` (the kernel writes
    /// them in order, as single updates would be), which takes a 10,000-service load
    /// from ~110,000 system calls to a handful.
    pub fn write(&mut self, ops: &[Op]) -> Result<(), MapsError> {
        let mut rest = ops;
        while let Some(first) = rest.first() {
            let same = |o: &&Op| {
                std::mem::discriminant(*o) == std::mem::discriminant(first)
                    && o.map() == first.map()
            };
            let run = rest.iter().take_while(same).count();
            let (now, later) = rest.split_at(run);
            rest = later;
            let done = match first {
                Op::PutBackend(_, Slot::V4(_)) => update_batch(
                    self.backends_fd.as_fd(),
                    now.iter().filter_map(|o| match o {
                        Op::PutBackend(k, Slot::V4(v)) => Some((*k, *v)),
                        _ => None,
                    }),
                ),
                Op::PutService(Frontend::V4(_), _) => update_batch(
                    self.services_fd.as_fd(),
                    now.iter().filter_map(|o| match o {
                        Op::PutService(Frontend::V4(k), v) => Some((*k, *v)),
                        _ => None,
                    }),
                ),
                Op::PutBackend(_, Slot::V6(_)) => update_batch(
                    self.v6()?.backends_fd.as_fd(),
                    now.iter().filter_map(|o| match o {
                        Op::PutBackend(k, Slot::V6(v)) => Some((*k, *v)),
                        _ => None,
                    }),
                ),
                Op::PutService(Frontend::V6(_), _) => update_batch(
                    self.v6()?.services_fd.as_fd(),
                    now.iter().filter_map(|o| match o {
                        Op::PutService(Frontend::V6(k), v) => Some((*k, *v)),
                        _ => None,
                    }),
                ),
                _ => 0,
            };
            // What the batch did not write (none for other ops; the rest of a batch
            // the kernel refused, so a bad entry is named) goes one by one.
            self.write_each(&now[done..])?;
        }
        Ok(())
    }

    fn write_each(&mut self, ops: &[Op]) -> Result<(), MapsError> {
        for op in ops {
            let map = op.map();
            match op {
                Op::PutBackend(k, Slot::V4(v)) => self
                    .backends
                    .insert(k, v, 0)
                    .map_err(aya_err(map, "inserting"))?,
                Op::PutBackend(k, Slot::V6(v)) => self
                    .v6()?
                    .backends
                    .insert(k, v, 0)
                    .map_err(aya_err(map, "inserting"))?,
                Op::PutService(Frontend::V4(k), v) => self
                    .services
                    .insert(k, v, 0)
                    .map_err(aya_err(map, "inserting"))?,
                Op::PutService(Frontend::V6(k), v) => self
                    .v6()?
                    .services
                    .insert(k, v, 0)
                    .map_err(aya_err(map, "inserting"))?,
                Op::DeleteService(Frontend::V4(k)) => {
                    ignore_missing(self.services.remove(k)).map_err(aya_err(map, "removing"))?
                }
                Op::DeleteService(Frontend::V6(k)) => ignore_missing(self.v6()?.services.remove(k))
                    .map_err(aya_err(map, "removing"))?,
                Op::DeleteBackend(k, MAP_BACKENDS) => {
                    ignore_missing(self.backends.remove(k)).map_err(aya_err(map, "removing"))?
                }
                Op::DeleteBackend(k, _) => ignore_missing(self.v6()?.backends.remove(k))
                    .map_err(aya_err(map, "removing"))?,
                Op::PutPorts(w, bits) => self
                    .ports
                    .set(*w, bits, 0)
                    .map_err(aya_err(MAP_PORTS, "writing"))?,
            }
        }
        Ok(())
    }

    pub fn set_iface(&mut self, ifindex: u32, role: u32) -> Result<(), MapsError> {
        self.ifaces
            .insert(ifindex, IfaceValue { role }, 0)
            .map_err(aya_err(MAP_IFACES, "inserting"))
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), MapsError> {
        ignore_missing(self.ifaces.remove(&ifindex)).map_err(aya_err(MAP_IFACES, "removing"))
    }

    /// Every conntrack entry (both directions of each flow).
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, CtValue)>, MapsError> {
        // An LRU entry may go between finding its key and reading it, and a flow may
        // move to the assured table meanwhile: skip what went, and list a flow's
        // entry once (the assured one, which lookups find first).
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for item in self.assured.iter() {
            match item {
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(aya_err(MAP_CT_ASSURED, "reading")(e)),
                Ok((k, v)) if seen.insert(k) => out.push((k, v)),
                Ok(_) => {}
            }
        }
        out.extend(
            self.conntrack
                .entries()
                .into_iter()
                .filter(|(k, _)| seen.insert(*k)),
        );
        Ok(out)
    }

    /// The frontend `key`, if programmed.
    pub fn frontend(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapsError> {
        found(self.services.get(key, 0), MAP_SERVICES)
    }

    /// Slot `slot` of service port `svc_id`, if programmed.
    pub fn slot(&self, svc_id: u32, slot: u32) -> Result<Option<Backend>, MapsError> {
        found(
            self.backends.get(&BackendKey { svc_id, slot }, 0),
            MAP_BACKENDS,
        )
    }

    /// Whether some frontend answers on `port` (the programs' first test).
    pub fn port_served(&self, port: u16) -> Result<bool, MapsError> {
        let (word, bit) = lb_common::port_bit(port);
        let w = self
            .ports
            .get(&word, 0)
            .map_err(aya_err(MAP_PORTS, "reading"))?;
        Ok(w & bit != 0)
    }

    /// The role and flags the agent gave interface `ifindex`, if it attached to it.
    pub fn iface(&self, ifindex: u32) -> Result<Option<IfaceValue>, MapsError> {
        found(self.ifaces.get(&ifindex, 0), MAP_IFACES)
    }

    /// The backend a client's last new flow to service port `svc_id` went to, if
    /// remembered (ClientIP affinity).
    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>, MapsError> {
        found(self.affinity.get(key, 0), MAP_AFFINITY)
    }

    /// The conntrack entry for one tuple, if there is one (the assured one first,
    /// as lookups do).
    pub fn conntrack_entry(&self, key: &FlowKey) -> Result<Option<CtValue>, MapsError> {
        self.conntrack_entry_where(key).map(|e| e.map(|(v, _)| v))
    }

    /// The set of `LB_CT` an entry for `key` goes to (of `CT_WAYS` slots: a full
    /// set gives way to its least recently seen entry).
    pub fn new_flow_set(&self, key: &FlowKey) -> u32 {
        self.conntrack.set_of(key)
    }

    /// The same, with whether it is in the assured table.
    pub fn conntrack_entry_where(
        &self,
        key: &FlowKey,
    ) -> Result<Option<(CtValue, bool)>, MapsError> {
        if let Some(v) = found(self.assured.get(key, 0), MAP_CT_ASSURED)? {
            return Ok(Some((v, true)));
        }
        Ok(self.conntrack.get(key).map(|v| (v, false)))
    }

    /// Writes an answered flow's entry (the assured table), for benches and tests.
    pub fn put_conntrack(&mut self, key: &FlowKey, value: &CtValue) -> Result<(), MapsError> {
        self.assured
            .insert(key, value, 0)
            .map_err(aya_err(MAP_CT_ASSURED, "inserting"))
    }

    /// Removes the conntrack entries (both directions) of UDP flows to these
    /// backends; returns how many entries went. TCP flows are left to finish (see
    /// the agent's reconcile).
    pub fn end_udp_flows_to(
        &mut self,
        backend_ids: &std::collections::BTreeSet<u32>,
    ) -> Result<usize, MapsError> {
        let doomed: Vec<FlowKey> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, v)| k.proto == PROTO_UDP && backend_ids.contains(&v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            self.remove_conntrack(k)?;
        }
        Ok(doomed.len())
    }

    /// Removes a tuple's entries from both tables.
    pub fn remove_conntrack(&mut self, key: &FlowKey) -> Result<(), MapsError> {
        ignore_missing(self.assured.remove(key)).map_err(aya_err(MAP_CT_ASSURED, "removing"))?;
        self.conntrack.remove(key);
        Ok(())
    }

    /// Removes the assured entries that expired by `now` (the kernel side's clock,
    /// `ticks_per_s`) under `timeouts`: nothing evicts them, and a tuple no packet
    /// uses again is never found expired by the kernel side. Returns how many went.
    pub fn sweep_assured(
        &mut self,
        now: u64,
        ticks_per_s: u64,
        timeouts: &CtTimeouts,
    ) -> Result<usize, MapsError> {
        let mut swept = sweep(
            &mut self.assured,
            MAP_CT_ASSURED,
            now,
            ticks_per_s,
            timeouts,
        )?;
        if let Some(v6) = &mut self.v6 {
            swept += sweep(&mut v6.assured, MAP_CT_ASSURED6, now, ticks_per_s, timeouts)?;
        }
        Ok(swept)
    }

    /// How many entries the flow tables (new flows, assured flows) and the affinity
    /// table hold: a walk over their keys (the new flows' slots).
    pub fn flow_entries(&self) -> Result<(usize, usize, usize), MapsError> {
        fn count<K: Pod, V: Pod>(
            map: &HashMap<MapData, K, V>,
            name: &'static str,
        ) -> Result<usize, MapsError> {
            let mut n = 0;
            for k in map.keys() {
                k.map_err(aya_err(name, "reading"))?;
                n += 1;
            }
            Ok(n)
        }
        Ok((
            self.conntrack.len(),
            count(&self.assured, MAP_CT_ASSURED)?,
            count(&self.affinity, MAP_AFFINITY)?,
        ))
    }

    /// Verdict counters, indexed by `lb_common::reason`.
    pub fn verdicts(&self) -> Result<Vec<Counters>, MapsError> {
        (0..reason::COUNT)
            .map(|i| {
                self.stats
                    .get(&i, 0)
                    .map(|v| sum(&v))
                    .map_err(aya_err(MAP_STATS, "reading"))
            })
            .collect()
    }

    pub fn service_counters(&self, svc_id: u32) -> Result<Counters, MapsError> {
        self.svc_stats
            .get(&svc_id, 0)
            .map(|v| sum(&v))
            .map_err(aya_err(MAP_SVC_STATS, "reading"))
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<Counters, MapsError> {
        self.backend_stats
            .get(&backend_id, 0)
            .map(|v| sum(&v))
            .map_err(aya_err(MAP_BACKEND_STATS, "reading"))
    }
}

/// `BPF_MAP_UPDATE_BATCH` of the `(key, value)` entries (flags 0: create or
/// replace); returns how many the kernel wrote, all of them unless it refused one
/// (or has no batch operations, before Linux 5.6), which the caller then writes singly.
fn update_batch<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    entries: impl Iterator<Item = (K, V)>,
) -> usize {
    let (keys, values): (Vec<K>, Vec<V>) = entries.unzip();
    /// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
    #[repr(C, align(8))]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` points at `count` keys and values that outlive the call; the
    // kernel reads them and writes back only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        keys.len()
    } else {
        // On failure `count` says how many went in before the one refused (for a
        // kernel without batches it is left as passed: write them all singly).
        let n = attr.count as usize;
        if n >= keys.len() { 0 } else { n }
    }
}

/// A delete of an entry that is not there (aya reports the kernel's ENOENT as a
/// failed syscall) is no error.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// The kernel side's clock as `lb_clock` last wrote it to `LB_CLOCK`.
pub fn read_clock(ebpf: &aya::Ebpf) -> Result<u64, MapsError> {
    let map = ebpf
        .map(MAP_CLOCK)
        .ok_or(MapsError::Missing { map: MAP_CLOCK })?;
    let clock: Array<&MapData, u64> = Array::try_from(map).map_err(aya_err(MAP_CLOCK, "typing"))?;
    clock.get(&0, 0).map_err(aya_err(MAP_CLOCK, "reading"))
}

/// Writes `LB_ROUTING[0]`: whether the node's routes depend on the destination
/// alone, per family (`netif::RoutedByDestination::bits`).
pub fn write_routing(ebpf: &mut aya::Ebpf, bits: u32) -> Result<(), MapsError> {
    write_first(ebpf, MAP_ROUTING, bits)
}
