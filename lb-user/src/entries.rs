//! From plans to map entries: the ids and slots of `LB_SERVICES` / `LB_BACKENDS`
//! (and their IPv6 twins) and the words of the `LB_PORTS` bitmap, kept in [`Programmed`] beside what the
//! maps hold so that a change is written without touching any other service.
//!
//! One update serves every case: [`Programmed::update`] takes the plans of some
//! services (or of all of them), compares them with the entries those services hold,
//! and returns the writes ([`sync::diff`]). A full plan is the same update over every
//! service. Ids come from one allocator ([`IdPool`]); port bits from one count of the
//! frontends on each port.

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BE_F_REMOTE, BackendKey, ID_NONE, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_F_AFFINITY, ServiceValue,
    port_bit,
};

use crate::{
    model::ObjectKey,
    plan::PortPlan,
    sizes::MapSizes,
    sync::{self, Entries, Frontend, Op, Slot},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntriesError {
    #[error("more than {limit} {what}: lb's maps hold no more (`lb agent {flag}`)")]
    TooMany {
        what: &'static str,
        limit: u32,
        flag: &'static str,
    },
}

/// How much the maps hold, as the agent sized them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries of `LB_SERVICES`; service-port ids are below it (the counter array's
    /// size).
    pub frontends: u32,
    /// Entries of `LB_BACKENDS`; backend ids are below it.
    pub backends: u32,
    /// Entries of `LB6_SERVICES` (IPv6 service ports take their ids from the same
    /// space as IPv4's).
    pub frontends6: u32,
    /// Entries of `LB6_BACKENDS`.
    pub backends6: u32,
}

impl From<MapSizes> for Limits {
    fn from(s: MapSizes) -> Self {
        Limits {
            frontends: s.frontends,
            backends: s.backends,
            frontends6: s.frontends6,
            backends6: s.backends6,
        }
    }
}

impl Limits {
    /// Entries of the services map and of the backends map of a family (0 IPv4,
    /// 1 IPv6), with the maps' names.
    fn of(&self, family: usize) -> (u32, u32, &'static str, &'static str) {
        use lb_common::{MAP_BACKENDS, MAP_BACKENDS6, MAP_SERVICES, MAP_SERVICES6};
        if family == 0 {
            (self.frontends, self.backends, MAP_SERVICES, MAP_BACKENDS)
        } else {
            (
                self.frontends6,
                self.backends6,
                MAP_SERVICES6,
                MAP_BACKENDS6,
            )
        }
    }
}

/// Entries per family (index 0 IPv4, 1 IPv6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PerFamily {
    frontends: [usize; 2],
    slots: [usize; 2],
}

impl PerFamily {
    fn of(e: &Entries) -> Self {
        let mut n = PerFamily::default();
        for f in e.services.keys() {
            n.frontends[family_of_frontend(f)] += 1;
        }
        for s in e.backends.values() {
            n.slots[family_of_slot(s)] += 1;
        }
        n
    }
}

fn family_of_frontend(f: &Frontend) -> usize {
    usize::from(matches!(f, Frontend::V6(_)))
}

fn family_of_slot(s: &Slot) -> usize {
    usize::from(matches!(s, Slot::V6(_)))
}

/// Services an update leaves out because the maps have no room for them, with why
/// (those already programmed keep what they had).
pub type LeftOut = BTreeMap<ObjectKey, String>;

/// The ids not in use, found without looking at the ones that are: every id from
/// `high` up, and the freed ones below it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdPool {
    free: BTreeSet<u32>,
    high: u32,
    limit: u32,
    what: &'static str,
    flag: &'static str,
}

impl IdPool {
    fn new(limit: u32, what: &'static str, flag: &'static str) -> Self {
        IdPool {
            free: BTreeSet::new(),
            high: ID_NONE + 1,
            limit,
            what,
            flag,
        }
    }

    /// Ids in use.
    fn used(&self) -> usize {
        (self.high - ID_NONE - 1) as usize - self.free.len()
    }

    /// The most ids there can be.
    fn capacity(&self) -> usize {
        self.limit.saturating_sub(ID_NONE + 1) as usize
    }

    /// The lowest free id.
    fn take(&mut self) -> Result<u32, EntriesError> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.high >= self.limit {
            return Err(EntriesError::TooMany {
                what: self.what,
                limit: self.limit - 1,
                flag: self.flag,
            });
        }
        self.high += 1;
        Ok(self.high - 1)
    }

    fn mark_used(&mut self, id: u32) {
        if id >= self.high {
            self.free.extend(self.high..id);
            self.high = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    fn release(&mut self, id: u32) {
        if id < self.high {
            self.free.insert(id);
        }
        while self.high > ID_NONE + 1 && self.free.remove(&(self.high - 1)) {
            self.high -= 1;
        }
    }
}

/// A backend by (address, port, protocol).
type BackendAddr = (IpAddr, u16, u8);

fn backend_addr(s: &Slot) -> BackendAddr {
    (s.addr(), s.port(), s.proto())
}

/// Which services an update plans.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every service: the plans are all of them, and entries no plan claims go.
    All,
    /// These services: the plans are theirs (none for a service that is gone).
    Services(&'a BTreeSet<ObjectKey>),
}

/// What [`Programmed::update`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// The writes, in a safe order (empty: nothing to do), and the services left
    /// out for want of room.
    Writes(Vec<Op>, LeftOut),
    /// A plan claims a frontend another service holds: only a plan of every
    /// service can say who keeps it.
    Collides,
}

/// What the maps hold, with who owns each entry: the frontends each service's plans
/// claim, the id and users of each backend, the frontends on each port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    entries: Entries,
    /// The frontends each service's plans claim (known after the first full plan).
    owners: HashMap<ObjectKey, BTreeSet<Frontend>>,
    /// Backend id by (address, port, protocol), with how many slots hold it.
    backends: HashMap<BackendAddr, (u32, u32)>,
    /// How many frontends answer on each port.
    port_refs: HashMap<u16, u32>,
    /// How many frontends each service-port id has.
    service_refs: HashMap<u32, u32>,
    backend_ids: IdPool,
    service_ids: IdPool,
    limits: Limits,
    /// How many entries `entries` holds per family, kept as writes are recorded (a
    /// round of one service must not count 1,000,000 slots).
    used: PerFamily,
    /// What the last update's plans claim, taken into `owners` when its writes are
    /// recorded (a refused write leaves the claims as they were).
    pending: Option<Claims>,
}

/// What fits of an update ([`Programmed::admit`]).
struct Admission<'p> {
    plans: Vec<&'p PortPlan>,
    /// How many backends the plans add (addresses no slot holds yet).
    new_backends: usize,
    left_out: LeftOut,
    /// The entries services left out hold, kept as they are, and their frontends.
    kept: Entries,
    kept_claims: Vec<(ObjectKey, BTreeSet<Frontend>)>,
}

/// The frontends an update's services claim.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claims {
    /// Every service was planned: these claims replace all others.
    all: bool,
    /// How many backends the update adds (room made for them at once).
    new_backends: usize,
    services: Vec<ObjectKey>,
    owners: HashMap<ObjectKey, BTreeSet<Frontend>>,
}

impl Default for Programmed {
    fn default() -> Self {
        Programmed::adopt(Entries::default(), MapSizes::default().into())
    }
}

impl Programmed {
    /// What `entries` (read from maps of `limits`) hold; their owners are unknown
    /// until a full update.
    pub fn adopt(entries: Entries, limits: Limits) -> Self {
        let mut p = Programmed {
            entries: Entries::default(),
            owners: HashMap::new(),
            backends: HashMap::new(),
            port_refs: HashMap::new(),
            service_refs: HashMap::new(),
            backend_ids: IdPool::new(limits.backends, "backends", "--max-backends"),
            service_ids: IdPool::new(limits.frontends, "service ports", "--max-frontends"),
            limits,
            used: PerFamily::default(),
            pending: None,
        };
        let ops: Vec<Op> = entries
            .backends
            .iter()
            .map(|(k, v)| Op::PutBackend(*k, *v))
            .chain(entries.services.iter().map(|(k, v)| Op::PutService(*k, *v)))
            .collect();
        p.record(&ops);
        p.entries.ports = entries.ports;
        p
    }

    /// Takes `entries` (the maps as read again, after a write they refused part of)
    /// and keeps what each service claimed before it (the refused update's claims
    /// are dropped), so that its next update removes what it no longer wants.
    pub fn resync(&mut self, entries: Entries) {
        let owners = std::mem::take(&mut self.owners);
        *self = Programmed::adopt(entries, self.limits);
        self.owners = owners;
    }

    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// Whether every frontend's owner is known (an update of some services is
    /// possible).
    pub fn knows_owners(&self) -> bool {
        !self.owners.is_empty() || self.entries.services.is_empty()
    }

    /// The writes that bring the entries of `scope` to `plans`, and leave every other
    /// service's alone. Ids and slots the maps hold are kept (a backend keeps its id
    /// and slot, a service port the id of any frontend it keeps), so an unchanged
    /// service needs no write. Nothing is recorded until [`record`](Self::record).
    pub fn update(&mut self, scope: Scope<'_>, plans: &[PortPlan]) -> Result<Update, EntriesError> {
        let old = match scope {
            Scope::All => self.entries.clone(),
            Scope::Services(services) => {
                if !self.knows_owners() {
                    return Ok(Update::Collides);
                }
                let old = self.held_by(services);
                let claims_another = plans.iter().flat_map(|p| &p.frontends).any(|(f, _)| {
                    self.entries.services.contains_key(f) && !old.services.contains_key(f)
                });
                if claims_another {
                    return Ok(Update::Collides);
                }
                old
            }
        };
        let mut old = old;
        let admission = self.admit(plans, &old);
        let mut new = self.build(&admission, &old)?;
        let mut claims = owners(admission.plans.iter().copied());
        // A service left out keeps what it holds, as it is.
        for (key, frontends) in admission.kept_claims {
            claims.insert(key, frontends);
        }
        new.services.extend(admission.kept.services);
        new.backends.extend(admission.kept.backends);
        let words = self.touched_words(scope, &old, &new);
        self.bitmap(&words, &old, &mut new);
        old.ports = words
            .iter()
            .filter_map(|w| Some((*w, *self.entries.ports.get(w)?)))
            .collect();
        self.pending = Some(Claims {
            all: matches!(scope, Scope::All),
            new_backends: admission.new_backends,
            services: match scope {
                Scope::All => Vec::new(),
                Scope::Services(s) => s.iter().cloned().collect(),
            },
            owners: claims,
        });
        Ok(Update::Writes(sync::diff(&old, &new), admission.left_out))
    }

    /// Room left: free frontends and backend slots (what a refused service waits
    /// for; it is retried when either grows).
    pub fn room(&self) -> (usize, usize) {
        let used = self.used;
        let free = |family: usize| {
            let (f, b, ..) = self.limits.of(family);
            (
                (f as usize).saturating_sub(used.frontends[family]),
                (b as usize).saturating_sub(used.slots[family]),
            )
        };
        let ((f4, b4), (f6, b6)) = (free(0), free(1));
        (f4 + f6, b4 + b6)
    }

    /// The plans that fit in the maps once `old` is replaced: all at once when
    /// all fit ([`admit_all`](Self::admit_all)), else taken service by service
    /// ([`weigh`](Self::weigh)).
    fn admit<'p>(&self, plans: &'p [PortPlan], old: &Entries) -> Admission<'p> {
        self.admit_all(plans, old)
            .unwrap_or_else(|| self.weigh(plans, old))
    }

    /// The plans that fit, taken service by service: those that hold entries
    /// first (a new service never pushes out a programmed one), then the others,
    /// each group in name order. A service that does not fit is left out, and
    /// keeps what it holds.
    fn weigh<'p>(&self, plans: &'p [PortPlan], old: &Entries) -> Admission<'p> {
        let mut by_service: BTreeMap<&ObjectKey, Vec<&PortPlan>> = BTreeMap::new();
        for p in plans {
            by_service.entry(&p.service).or_default().push(p);
        }
        // Entries: what stays plus what comes (`sync::diff` removes what goes
        // first). Ids: those in use now (one that goes is free again only once the
        // writes are recorded) plus the new ones.
        let (all, gone) = (self.used, PerFamily::of(old));
        let mut used = PerFamily {
            frontends: [0, 1].map(|i| all.frontends[i] - gone.frontends[i]),
            slots: [0, 1].map(|i| all.slots[i] - gone.slots[i]),
        };
        let mut service_ids = self.service_ids.used();
        let mut backend_ids = self.backend_ids.used();
        let mut counted: HashSet<BackendAddr> = HashSet::new();
        let (held, fresh): (Vec<_>, Vec<_>) = by_service
            .into_iter()
            .partition(|(k, _)| self.owners.contains_key(*k));
        let mut out = Admission {
            plans: Vec::new(),
            new_backends: 0,
            left_out: LeftOut::new(),
            kept: Entries::default(),
            kept_claims: Vec::new(),
        };
        for (key, mine) in held.into_iter().chain(fresh) {
            let mut needs = PerFamily::default();
            for p in &mine {
                for (f, _) in &p.frontends {
                    needs.frontends[family_of_frontend(f)] += 1;
                }
                for (a, _) in &p.endpoints {
                    needs.slots[usize::from(a.is_ipv6())] += 1;
                }
            }
            let addrs: HashSet<BackendAddr> = mine
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|(a, port)| (*a, *port, p.proto)))
                .filter(|a| !counted.contains(a) && !self.backends.contains_key(a))
                .collect();
            let new_ids = mine
                .iter()
                .filter(|p| {
                    !p.frontends
                        .iter()
                        .any(|(f, _)| old.services.contains_key(f))
                })
                .count();
            let no_room = (0..2).find_map(|i| {
                let (f_max, s_max, f_map, s_map) = self.limits.of(i);
                let (f_used, f) = (used.frontends[i], needs.frontends[i]);
                let (s_used, s) = (used.slots[i], needs.slots[i]);
                if f > 0 && f_used + f > f_max as usize {
                    Some(format!(
                        "no room in {f_map}: {f_max} frontends, {f_used} in use, it needs {f} (`lb agent --max-frontends`)"
                    ))
                } else if s > 0 && s_used + s > s_max as usize {
                    Some(format!(
                        "no room in {s_map}: {s_max} slots, {s_used} in use, it needs {s} (`lb agent --max-backends`)"
                    ))
                } else {
                    None
                }
            });
            let no_room = if no_room.is_some() {
                no_room
            } else if service_ids + new_ids > self.service_ids.capacity() {
                Some(format!(
                    "no free service-port id: {} in use (`lb agent --max-frontends`)",
                    self.service_ids.capacity()
                ))
            } else if backend_ids + addrs.len() > self.backend_ids.capacity() {
                Some(format!(
                    "no free backend id: {} backends in use (`lb agent --max-backends`)",
                    self.backend_ids.capacity()
                ))
            } else {
                None
            };
            let Some(why) = no_room else {
                for i in 0..2 {
                    used.frontends[i] += needs.frontends[i];
                    used.slots[i] += needs.slots[i];
                }
                service_ids += new_ids;
                backend_ids += addrs.len();
                counted.extend(addrs);
                continue;
            };
            let held = self.held_by(&BTreeSet::from([key.clone()]));
            let kept = PerFamily::of(&held);
            for i in 0..2 {
                used.frontends[i] += kept.frontends[i];
                used.slots[i] += kept.slots[i];
            }
            if !held.services.is_empty() {
                out.kept_claims
                    .push((key.clone(), held.services.keys().copied().collect()));
            }
            out.kept.services.extend(held.services);
            out.kept.backends.extend(held.backends);
            out.left_out.insert(key.clone(), why);
        }
        out.new_backends = counted.len();
        // The admitted plans in the order given (ids are handed out in it).
        out.plans = plans
            .iter()
            .filter(|p| !out.left_out.contains_key(&p.service))
            .collect();
        out
    }

    /// Every plan, if all of them fit at once with each of their endpoints
    /// counted a new backend (as many as they can add: at least as many as
    /// [`admit`](Self::admit) counts); else None, and they are weighed service by
    /// service. Each service admitted in turn fits whenever all fit: a bulk
    /// round's 1,000,000 endpoints need no set of the addresses counted so far.
    fn admit_all<'p>(&self, plans: &'p [PortPlan], old: &Entries) -> Option<Admission<'p>> {
        let (all, gone) = (self.used, PerFamily::of(old));
        let mut used = PerFamily {
            frontends: [0, 1].map(|i| all.frontends[i] - gone.frontends[i]),
            slots: [0, 1].map(|i| all.slots[i] - gone.slots[i]),
        };
        let (mut new_ids, mut new_backends) = (0, 0);
        for p in plans {
            for (f, _) in &p.frontends {
                used.frontends[family_of_frontend(f)] += 1;
            }
            for (a, port) in &p.endpoints {
                used.slots[usize::from(a.is_ipv6())] += 1;
                new_backends += usize::from(!self.backends.contains_key(&(*a, *port, p.proto)));
            }
            new_ids += usize::from(
                !p.frontends
                    .iter()
                    .any(|(f, _)| old.services.contains_key(f)),
            );
        }
        let room = (0..2).all(|i| {
            let (f_max, s_max, ..) = self.limits.of(i);
            used.frontends[i] <= f_max as usize && used.slots[i] <= s_max as usize
        });
        let ids = self.service_ids.used() + new_ids <= self.service_ids.capacity()
            && self.backend_ids.used() + new_backends <= self.backend_ids.capacity();
        (room && ids).then(|| Admission {
            plans: plans.iter().collect(),
            new_backends,
            left_out: LeftOut::new(),
            kept: Entries::default(),
            kept_claims: Vec::new(),
        })
    }

    /// Makes `service` claim `frontends` too (its write failed: what the maps may
    /// still hold of them is its to remove next time).
    pub fn claim(&mut self, service: &ObjectKey, frontends: impl IntoIterator<Item = Frontend>) {
        self.owners
            .entry(service.clone())
            .or_default()
            .extend(frontends);
    }

    /// The services that claim frontends.
    pub fn services(&self) -> impl Iterator<Item = &ObjectKey> {
        self.owners.keys()
    }

    /// The frontends `service` claims.
    pub fn owned_by(&self, service: &ObjectKey) -> impl Iterator<Item = &Frontend> {
        self.owners.get(service).into_iter().flatten()
    }

    /// The entries `services` hold: their frontends and the slots behind them.
    fn held_by(&self, services: &BTreeSet<ObjectKey>) -> Entries {
        let mut old = Entries::default();
        for f in services.iter().flat_map(|k| self.owned_by(k)) {
            if let Some(v) = self.entries.services.get(f) {
                old.services.insert(*f, *v);
            }
        }
        let ids: BTreeSet<u32> = old.services.values().map(|v| v.svc_id).collect();
        for id in ids {
            old.backends
                .extend(self.entries.slots(id).map(|(k, v)| (*k, *v)));
        }
        old
    }

    /// The frontends and slots of the admitted plans (no port bitmap): each plan
    /// keeps the id a frontend of it has in `old` (once per id), each backend its id
    /// and slot.
    fn build(&mut self, admission: &Admission, old: &Entries) -> Result<Entries, EntriesError> {
        let plans = &admission.plans;
        let mut claimed = BTreeSet::new();
        let kept: Vec<Option<u32>> = plans
            .iter()
            .map(|plan| {
                plan.frontends
                    .iter()
                    .filter_map(|(k, _)| old.services.get(k).map(|v| v.svc_id))
                    .find(|id| claimed.insert(*id))
            })
            .collect();
        // Sized once (as `record` sizes `backends`): grown by doubling, the table of
        // a bulk round's 1,000,000 new backends held its last two sizes at once.
        let mut fresh: HashMap<BackendAddr, u32> = HashMap::with_capacity(admission.new_backends);
        let mut out = Entries::default();
        for (plan, kept) in plans.iter().zip(kept) {
            let svc_id = match kept {
                Some(id) => id,
                None => self.service_ids.take()?,
            };
            let mut backends = Vec::with_capacity(plan.endpoints.len());
            for (addr, port) in &plan.endpoints {
                let at = (*addr, *port, plan.proto);
                let backend_id = match self.backends.get(&at).map(|(id, _)| *id) {
                    Some(id) => id,
                    None => match fresh.get(&at) {
                        Some(id) => *id,
                        None => {
                            let id = self.backend_ids.take()?;
                            fresh.insert(at, id);
                            id
                        }
                    },
                };
                let flags = if plan.remote.contains(addr) {
                    BE_F_REMOTE
                } else {
                    0
                };
                backends.push(Slot::new(*addr, *port, plan.proto, flags, backend_id));
            }
            for (slot, backend) in assign_slots(svc_id, backends, old).into_iter().enumerate() {
                let key = BackendKey {
                    svc_id,
                    slot: slot as u32,
                };
                out.backends.insert(key, backend);
            }
            for (key, flags) in &plan.frontends {
                let affinity = if plan.affinity_timeout_s > 0 {
                    SVC_F_AFFINITY
                } else {
                    0
                };
                out.services.insert(
                    *key,
                    ServiceValue {
                        svc_id,
                        backend_count: plan.endpoints.len() as u32,
                        flags: *flags | affinity,
                        affinity_timeout_s: plan.affinity_timeout_s,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The bitmap words the update touches: those of ports whose frontends come or
    /// go, the SNAT range's when the first frontend comes or the last goes, and (a
    /// full update) every word the maps or the counts have, so a stale bitmap heals.
    fn touched_words(&self, scope: Scope<'_>, old: &Entries, new: &Entries) -> BTreeSet<u32> {
        let changed = old
            .services
            .keys()
            .filter(|f| !new.services.contains_key(f))
            .chain(
                new.services
                    .keys()
                    .filter(|f| !old.services.contains_key(f)),
            );
        let mut words: BTreeSet<u32> = changed.map(|f| port_bit(f.port()).0).collect();
        let after = self.frontends_after(old, new);
        let snat_words = port_bit(SNAT_PORT_MIN).0..=port_bit(SNAT_PORT_MAX).0;
        if self.entries.services.is_empty() != (after == 0) {
            words.extend(snat_words.clone());
        }
        if let Scope::All = scope {
            words.extend(self.entries.ports.keys());
            words.extend(self.port_refs.keys().map(|p| port_bit(*p).0));
            words.extend(new.services.keys().map(|f| port_bit(f.port()).0));
            if after > 0 {
                words.extend(snat_words);
            }
        }
        words
    }

    /// How many frontends the maps hold once `old` (entries they hold) is replaced
    /// by `new`.
    fn frontends_after(&self, old: &Entries, new: &Entries) -> usize {
        self.entries.services.len() - old.services.len() + new.services.len()
    }

    /// Sets `words` of `new.ports` as the counts of frontends per port will be once
    /// `old` is replaced by `new`. The SNAT range is marked while any frontend
    /// exists, so replies of SNAT flows pass the filter.
    fn bitmap(&self, words: &BTreeSet<u32>, old: &Entries, new: &mut Entries) {
        let mut delta: HashMap<u16, i64> = HashMap::new();
        for f in old.services.keys() {
            *delta.entry(f.port()).or_default() -= 1;
        }
        for f in new.services.keys() {
            *delta.entry(f.port()).or_default() += 1;
        }
        let after = self.frontends_after(old, new);
        for &w in words {
            let mut bits = 0u64;
            for port in (w * 64)..(w * 64 + 64) {
                let Ok(port) = u16::try_from(port) else { break };
                let refs = i64::from(self.port_refs.get(&port).copied().unwrap_or(0))
                    + delta.get(&port).copied().unwrap_or(0);
                let snat = after > 0 && (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port);
                if refs > 0 || snat {
                    bits |= port_bit(port).1;
                }
            }
            if bits != 0 {
                new.ports.insert(w, bits);
            }
        }
    }

    /// Records `ops` (written to the maps); returns the backend ids no slot holds any
    /// more (their flows should end).
    pub fn record(&mut self, ops: &[Op]) -> BTreeSet<u32> {
        let gone = self.record_writes(ops);
        self.take_claims();
        gone
    }

    /// [`Programmed::record`] but for the update's claims, which stay pending: the
    /// entries while the maps are still being written, as if they took them. Should
    /// they refuse, [`Programmed::resync`] reads the entries again and keeps the
    /// claims as they were.
    pub fn record_writes(&mut self, ops: &[Op]) -> BTreeSet<u32> {
        let mut gone = BTreeSet::new();
        if let Some(claims) = &self.pending {
            self.backends.reserve(claims.new_backends);
        }
        for op in ops {
            match op {
                Op::PutBackend(k, v) => {
                    if let Some(old) = self.entries.backends.get(k).copied() {
                        self.release_backend(&old, &mut gone);
                        self.used.slots[family_of_slot(&old)] -= 1;
                    }
                    self.used.slots[family_of_slot(v)] += 1;
                    let e = self
                        .backends
                        .entry(backend_addr(v))
                        .or_insert((v.backend_id(), 0));
                    e.1 += 1;
                    self.backend_ids.mark_used(v.backend_id());
                    gone.remove(&v.backend_id());
                }
                Op::DeleteBackend(k, _) => {
                    if let Some(old) = self.entries.backends.get(k).copied() {
                        self.release_backend(&old, &mut gone);
                        self.used.slots[family_of_slot(&old)] -= 1;
                    }
                }
                Op::PutService(k, v) => {
                    match self.entries.services.get(k).map(|o| o.svc_id) {
                        Some(id) => self.release_service(id),
                        None => {
                            *self.port_refs.entry(k.port()).or_default() += 1;
                            self.used.frontends[family_of_frontend(k)] += 1;
                        }
                    }
                    *self.service_refs.entry(v.svc_id).or_default() += 1;
                    self.service_ids.mark_used(v.svc_id);
                }
                Op::DeleteService(k) => {
                    if let Some(old) = self.entries.services.get(k).map(|o| o.svc_id) {
                        self.release_service(old);
                        self.used.frontends[family_of_frontend(k)] -= 1;
                        let port = k.port();
                        if let Some(n) = self.port_refs.get_mut(&port) {
                            *n -= 1;
                            if *n == 0 {
                                self.port_refs.remove(&port);
                            }
                        }
                    }
                }
                Op::PutPorts(..) => {}
            }
            sync::replay(&mut self.entries, std::slice::from_ref(op));
        }
        debug_assert_eq!(self.used, PerFamily::of(&self.entries));
        gone
    }

    /// Takes the last update's claims (once the maps took its writes).
    pub fn take_claims(&mut self) {
        if let Some(claims) = self.pending.take() {
            if claims.all {
                self.owners.clear();
            }
            for key in &claims.services {
                self.owners.remove(key);
            }
            self.owners.extend(claims.owners);
        }
    }

    fn release_backend(&mut self, b: &Slot, gone: &mut BTreeSet<u32>) {
        let addr = backend_addr(b);
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
}

fn owners<'p>(plans: impl Iterator<Item = &'p PortPlan>) -> HashMap<ObjectKey, BTreeSet<Frontend>> {
    let mut out: HashMap<ObjectKey, BTreeSet<Frontend>> = HashMap::new();
    for p in plans {
        out.entry(p.service.clone())
            .or_default()
            .extend(p.frontends.iter().map(|(f, _)| *f));
    }
    out
}

/// Orders `backends` into slots: a backend keeps the slot it has in `old` when that
/// slot still exists; the others fill the remaining slots in order.
fn assign_slots(svc_id: u32, backends: Vec<Slot>, old: &Entries) -> Vec<Slot> {
    let n = backends.len();
    let mut slots: Vec<Option<Slot>> = vec![None; n];
    let mut placed = vec![false; n];
    for (k, held) in old.slots(svc_id) {
        let slot = k.slot as usize;
        if slot >= n {
            continue;
        }
        if let Some(i) = backends
            .iter()
            .position(|b| b.backend_id() == held.backend_id())
            && !placed[i]
            && slots[slot].is_none()
        {
            slots[slot] = Some(backends[i]);
            placed[i] = true;
        }
    }
    let mut rest = backends
        .iter()
        .zip(&placed)
        .filter(|(_, p)| !**p)
        .map(|(b, _)| *b);
    slots
        .into_iter()
        .map(|s| {
            s.or_else(|| rest.next())
                .expect("as many slots as backends")
        })
        .collect()
}

#[cfg(test)]
mod tests;
