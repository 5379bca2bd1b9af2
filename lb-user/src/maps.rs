//! The only user of `aya::maps`: typed reads and writes of lb's maps, whether the
//! agent loaded them or a CLI command opened them from their pins.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    Backend, BackendKey, Counters, CtValue, FlowKey, IfaceValue, MAP_BACKEND_STATS, MAP_BACKENDS,
    MAP_CONNTRACK, MAP_IFACES, MAP_PORTS, MAP_SERVICES, MAP_STATS, MAP_SVC_STATS, PORT_WORDS,
    ServiceKey, ServiceValue, reason,
};

use crate::{desired::Entries, sync::Op};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {map}: not in the eBPF object")]
    Missing { map: &'static str },
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

pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    ifaces: HashMap<MapData, u32, IfaceValue>,
    conntrack: HashMap<MapData, FlowKey, CtValue>,
    ports: Array<MapData, u64>,
    stats: PerCpuArray<MapData, Counters>,
    svc_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
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
        Ok(Maps {
            services: typed(&mut get, MAP_SERVICES)?,
            backends: typed(&mut get, MAP_BACKENDS)?,
            ifaces: typed(&mut get, MAP_IFACES)?,
            conntrack: typed(&mut get, MAP_CONNTRACK)?,
            ports: typed(&mut get, MAP_PORTS)?,
            stats: typed(&mut get, MAP_STATS)?,
            svc_stats: typed(&mut get, MAP_SVC_STATS)?,
            backend_stats: typed(&mut get, MAP_BACKEND_STATS)?,
        })
    }

    /// Everything `LB_SERVICES`, `LB_BACKENDS` and `LB_PORTS` hold.
    pub fn read_entries(&self) -> Result<Entries, MapsError> {
        let mut e = Entries::default();
        for item in self.services.iter() {
            let (k, v) = item.map_err(aya_err(MAP_SERVICES, "reading"))?;
            e.services.insert(k, v);
        }
        for item in self.backends.iter() {
            let (k, v) = item.map_err(aya_err(MAP_BACKENDS, "reading"))?;
            e.backends.insert(k, v);
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
    pub fn write(&mut self, ops: &[Op]) -> Result<(), MapsError> {
        for op in ops {
            match op {
                Op::PutBackend(k, v) => self
                    .backends
                    .insert(k, v, 0)
                    .map_err(aya_err(MAP_BACKENDS, "inserting"))?,
                Op::PutService(k, v) => self
                    .services
                    .insert(k, v, 0)
                    .map_err(aya_err(MAP_SERVICES, "inserting"))?,
                Op::DeleteService(k) => ignore_missing(self.services.remove(k))
                    .map_err(aya_err(MAP_SERVICES, "removing"))?,
                Op::DeleteBackend(k) => ignore_missing(self.backends.remove(k))
                    .map_err(aya_err(MAP_BACKENDS, "removing"))?,
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
        // An LRU entry may go between finding its key and reading it: skip it.
        self.conntrack
            .iter()
            .filter(|i| !matches!(i, Err(aya::maps::MapError::KeyNotFound)))
            .map(|i| i.map_err(aya_err(MAP_CONNTRACK, "reading")))
            .collect()
    }

    pub fn put_conntrack(&mut self, key: &FlowKey, value: &CtValue) -> Result<(), MapsError> {
        self.conntrack
            .insert(key, value, 0)
            .map_err(aya_err(MAP_CONNTRACK, "inserting"))
    }

    /// Removes every conntrack entry (both directions) of flows to these backends;
    /// returns how many entries went.
    pub fn end_flows_to(
        &mut self,
        backend_ids: &std::collections::BTreeSet<u32>,
    ) -> Result<usize, MapsError> {
        let doomed: Vec<FlowKey> = self
            .conntrack()?
            .into_iter()
            .filter(|(_, v)| backend_ids.contains(&v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            self.remove_conntrack(k)?;
        }
        Ok(doomed.len())
    }

    pub fn remove_conntrack(&mut self, key: &FlowKey) -> Result<(), MapsError> {
        ignore_missing(self.conntrack.remove(key)).map_err(aya_err(MAP_CONNTRACK, "removing"))
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

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}
