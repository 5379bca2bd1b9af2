//! What the maps hold, indexed so that a change to a few services is planned and
//! written without looking at the others: the frontends each service owns, the id
//! and users of each backend, the frontends on each port.
//!
//! The agent keeps one [`Ledger`] beside the maps. A full reconcile plans every
//! service ([`desired::entries`]); an incremental one ([`Ledger::update`]) plans
//! only the affected services and compares only their entries. Both yield writes
//! ([`sync::diff`]) that [`Ledger::apply`] records after the maps took them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    MAX_BACKEND_IDS, MAX_SERVICE_IDS, SNAT_PORT_MAX, SNAT_PORT_MIN, ServiceKey, port_bit,
};

use crate::{
    desired::{self, DesiredError, Entries, IdPool, IdSource, Index, Node, PortPlan},
    model::ObjectKey,
    store::State,
    sync::Op,
};

type BackendAddr = (u32, u16, u8);

/// What [`Ledger::plan`] decided.
#[derive(Debug)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Every service was planned.
    pub full: bool,
    /// How many services were planned.
    pub services: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub entries: Entries,
    /// The frontends each service's plans own (known after the first full plan).
    owners: HashMap<ObjectKey, Vec<ServiceKey>>,
    /// Backend id by (address, port, protocol), with how many slots hold it.
    backends: HashMap<BackendAddr, (u32, u32)>,
    /// How many frontends answer on each port.
    ports: HashMap<u16, u32>,
    /// How many frontends each service-port id has.
    service_refs: HashMap<u32, u32>,
    backend_ids: IdPool,
    service_ids: IdPool,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            entries: Entries::default(),
            owners: HashMap::new(),
            backends: HashMap::new(),
            ports: HashMap::new(),
            service_refs: HashMap::new(),
            backend_ids: IdPool::new(MAX_BACKEND_IDS, "backends"),
            service_ids: IdPool::new(MAX_SERVICE_IDS, "service ports"),
        }
    }
}

impl Ledger {
    /// The ledger of entries read from the maps (owners unknown until a full plan).
    pub fn new(entries: Entries) -> Self {
        let mut l = Ledger::default();
        l.apply(
            &entries
                .backends
                .iter()
                .map(|(k, v)| Op::PutBackend(*k, *v))
                .chain(entries.services.iter().map(|(k, v)| Op::PutService(*k, *v)))
                .collect::<Vec<_>>(),
        );
        l.entries.ports = entries.ports;
        l
    }

    /// Whether every frontend's owner is known (an incremental update is possible).
    pub fn knows_owners(&self) -> bool {
        !self.owners.is_empty() || self.entries.services.is_empty()
    }

    /// The writes that bring the maps to `state` on `node`, planning only `services`
    /// (the services changes touched; `index`: that of `state`)
    /// unless `all` or the ledger cannot tell.
    pub fn plan(
        &mut self,
        state: &State,
        index: &Index,
        node: &Node,
        services: &BTreeSet<ObjectKey>,
        all: bool,
    ) -> Result<Plan, DesiredError> {
        if !all {
            let plans = desired::plan_services(state, index, node, services);
            if let Some(ops) = self.update(services, &plans)? {
                return Ok(Plan {
                    ops,
                    full: false,
                    services: services.len(),
                });
            }
        }
        Ok(Plan {
            ops: self.full(&desired::plan(state, node))?,
            full: true,
            services: state.services.len(),
        })
    }

    /// The writes for a full plan, with the owners it gives.
    fn full(&mut self, plans: &[PortPlan]) -> Result<Vec<Op>, DesiredError> {
        let want = desired::entries(plans, &self.entries)?;
        self.owners = owners(plans);
        Ok(crate::sync::diff(&self.entries, &want))
    }

    /// The writes that bring the entries of `services` to `plans` (their plans, all of
    /// them) and leave every other service's alone; `None` when the change reaches
    /// beyond them (a frontend another service owns) and needs a full plan.
    fn update(
        &mut self,
        services: &BTreeSet<ObjectKey>,
        plans: &[PortPlan],
    ) -> Result<Option<Vec<Op>>, DesiredError> {
        if !self.knows_owners() {
            return Ok(None);
        }
        // What these services hold now.
        let mut old = Entries::default();
        for key in services {
            for f in self.owners.get(key).into_iter().flatten() {
                if let Some(v) = self.entries.services.get(f) {
                    old.services.insert(*f, *v);
                }
            }
        }
        let svc_ids: BTreeSet<u32> = old.services.values().map(|v| v.svc_id).collect();
        for id in &svc_ids {
            let range = lb_common::BackendKey {
                svc_id: *id,
                slot: 0,
            }..=lb_common::BackendKey {
                svc_id: *id,
                slot: u32::MAX,
            };
            old.backends
                .extend(self.entries.backends.range(range).map(|(k, v)| (*k, *v)));
        }
        // A frontend of theirs that another service holds: not theirs alone to write.
        if plans
            .iter()
            .flat_map(|p| &p.frontends)
            .any(|(f, _)| self.entries.services.contains_key(f) && !old.services.contains_key(f))
        {
            return Ok(None);
        }
        let (kept, _) = desired::kept_service_ids(plans, &old);
        let mut ids = LedgerIds {
            backends: &self.backends,
            fresh: HashMap::new(),
            backend_ids: &mut self.backend_ids,
            service_ids: &mut self.service_ids,
        };
        let mut new = desired::build(plans, &kept, &old, &mut ids)?;
        // The bitmap words whose ports these frontends add or remove.
        let mut delta: BTreeMap<u16, i64> = BTreeMap::new();
        for f in old
            .services
            .keys()
            .filter(|f| !new.services.contains_key(f))
        {
            *delta.entry(u16::from_be(f.port_be)).or_default() -= 1;
        }
        for f in new
            .services
            .keys()
            .filter(|f| !old.services.contains_key(f))
        {
            *delta.entry(u16::from_be(f.port_be)).or_default() += 1;
        }
        let total = self.entries.services.len() as i64 - old.services.len() as i64
            + new.services.len() as i64;
        let (snat_before, snat_after) = (!self.entries.services.is_empty(), total > 0);
        let mut words: BTreeSet<u32> = delta.keys().map(|p| port_bit(*p).0).collect();
        if snat_before != snat_after {
            words.extend(port_bit(SNAT_PORT_MIN).0..=port_bit(SNAT_PORT_MAX).0);
        }
        for w in words {
            if let Some(bits) = self.entries.ports.get(&w) {
                old.ports.insert(w, *bits);
            }
            let mut bits = 0u64;
            for port in (w * 64)..(w * 64 + 64) {
                let Ok(port) = u16::try_from(port) else { break };
                let refs = i64::from(self.ports.get(&port).copied().unwrap_or(0))
                    + delta.get(&port).copied().unwrap_or(0);
                let snat = snat_after && (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port);
                if refs > 0 || snat {
                    bits |= port_bit(port).1;
                }
            }
            if bits != 0 {
                new.ports.insert(w, bits);
            }
        }
        for key in services {
            self.owners.remove(key);
        }
        self.owners.extend(owners(plans));
        Ok(Some(crate::sync::diff(&old, &new)))
    }

    /// Records `ops` (written to the maps); returns the backend ids no slot holds any
    /// more (their flows should end).
    pub fn apply(&mut self, ops: &[Op]) -> BTreeSet<u32> {
        let mut gone = BTreeSet::new();
        for op in ops {
            match op {
                Op::PutBackend(k, v) => {
                    if let Some(old) = self.entries.backends.get(k).copied() {
                        self.release_backend(&old, &mut gone);
                    }
                    let e = self
                        .backends
                        .entry((v.addr_be, v.port_be, v.proto))
                        .or_insert((v.backend_id, 0));
                    e.1 += 1;
                    self.backend_ids.mark_used(v.backend_id);
                    gone.remove(&v.backend_id);
                }
                Op::DeleteBackend(k) => {
                    if let Some(old) = self.entries.backends.get(k).copied() {
                        self.release_backend(&old, &mut gone);
                    }
                }
                Op::PutService(k, v) => {
                    match self.entries.services.get(k).map(|o| o.svc_id) {
                        Some(id) => self.release_service(id),
                        None => *self.ports.entry(u16::from_be(k.port_be)).or_default() += 1,
                    }
                    *self.service_refs.entry(v.svc_id).or_default() += 1;
                    self.service_ids.mark_used(v.svc_id);
                }
                Op::DeleteService(k) => {
                    if let Some(old) = self.entries.services.get(k).map(|o| o.svc_id) {
                        self.release_service(old);
                        let port = u16::from_be(k.port_be);
                        if let Some(n) = self.ports.get_mut(&port) {
                            *n -= 1;
                            if *n == 0 {
                                self.ports.remove(&port);
                            }
                        }
                    }
                }
                Op::PutPorts(..) => {}
            }
            crate::sync::apply(&mut self.entries, std::slice::from_ref(op));
        }
        gone
    }

    fn release_backend(&mut self, b: &lb_common::Backend, gone: &mut BTreeSet<u32>) {
        let addr = (b.addr_be, b.port_be, b.proto);
        if let Some((id, refs)) = self.backends.get_mut(&addr) {
            *refs -= 1;
            if *refs == 0 {
                gone.insert(*id);
                self.backend_ids.release(*id);
                self.backends.remove(&addr);
            }
        }
    }

    fn release_service(&mut self, id: u32) {
        if let Some(n) = self.service_refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.service_refs.remove(&id);
                self.service_ids.release(id);
            }
        }
    }

    /// Forgets what it knew and takes `entries` (after a failed write: the maps are
    /// read again and the next reconcile plans everything).
    pub fn reset(&mut self, entries: Entries) {
        *self = Ledger::new(entries);
    }
}

fn owners(plans: &[PortPlan]) -> HashMap<ObjectKey, Vec<ServiceKey>> {
    let mut out: HashMap<ObjectKey, Vec<ServiceKey>> = HashMap::new();
    for p in plans {
        out.entry(p.service.clone())
            .or_default()
            .extend(p.frontends.iter().map(|(f, _)| *f));
    }
    out
}

/// Ids for an update: a backend's by its address as the ledger knows it, new ones
/// from the ledger's pools.
struct LedgerIds<'a> {
    backends: &'a HashMap<BackendAddr, (u32, u32)>,
    fresh: HashMap<BackendAddr, u32>,
    backend_ids: &'a mut IdPool,
    service_ids: &'a mut IdPool,
}

impl IdSource for LedgerIds<'_> {
    fn backend_id(&mut self, key: BackendAddr) -> Result<u32, DesiredError> {
        if let Some((id, _)) = self.backends.get(&key) {
            return Ok(*id);
        }
        if let Some(id) = self.fresh.get(&key) {
            return Ok(*id);
        }
        let id = self.backend_ids.take()?;
        self.fresh.insert(key, id);
        Ok(id)
    }

    fn new_service_id(&mut self) -> Result<u32, DesiredError> {
        self.service_ids.take()
    }
}

#[cfg(test)]
mod tests;
