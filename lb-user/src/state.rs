//! The objects lb serves as one value: [`State`] holds them whole (what a source
//! holds, what the CLI shows and the store checks writes against), [`Facts`] as
//! planning reads them (services whole, pods and EndpointSlices as their facts, a
//! tenth of their size). [`Change`]s move both; [`Index`] finds what a change must
//! find without scanning: each service's EndpointSlices, the pods by label, the
//! services by selector. [`Tracked`] keeps facts and their index in step and says
//! which services a batch of changes touches; the planner reads both.

use foldhash::HashMap;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

use crate::model::{Kind, Object, ObjectKey, PodFacts, SliceFacts, trim_service};

/// Everything a source (the store, or the cluster's API) holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Bumped by every write; becomes the objects' resourceVersion.
    pub revision: u64,
    pub services: BTreeMap<ObjectKey, Box<Service>>,
    pub pods: BTreeMap<ObjectKey, Box<Pod>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Box<EndpointSlice>>,
    /// Every service takes its endpoints from its EndpointSlices, selector or not
    /// (Kubernetes mode: the cluster's EndpointSlice controller made them). The
    /// embedded store has no such controller: selectors select its pods.
    pub endpoints_from_slices: bool,
}

/// An object written (Some) or deleted (None).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub key: ObjectKey,
    pub object: Option<Object>,
}

impl State {
    /// Whether an object of `kind` is stored under `key`.
    pub fn contains(&self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Service => self.services.contains_key(key),
            Kind::Pod => self.pods.contains_key(key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(key),
        }
    }

    /// Removes the object of `kind` under `key`; whether there was one.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Service => self.services.remove(key).is_some(),
            Kind::Pod => self.pods.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
        }
    }

    /// The object of `kind` under `key`, taken out.
    pub fn take(&mut self, kind: Kind, key: &ObjectKey) -> Option<Object> {
        match kind {
            Kind::Service => self.services.remove(key).map(Object::Service),
            Kind::Pod => self.pods.remove(key).map(Object::Pod),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).map(Object::EndpointSlice),
        }
    }

    /// Stores `object` under its key.
    pub fn insert(&mut self, object: Object) {
        let key = object.key();
        match object {
            Object::Service(o) => drop(self.services.insert(key, o)),
            Object::Pod(o) => drop(self.pods.insert(key, o)),
            Object::EndpointSlice(o) => drop(self.endpoint_slices.insert(key, o)),
        }
    }

    /// Writes or removes `change`'s object.
    pub fn apply_change(&mut self, change: Change) {
        match change.object {
            Some(object) => self.insert(object),
            None => drop(self.remove(change.kind, &change.key)),
        }
    }

    /// The objects that differ between `self` and `after`, as changes.
    pub fn changes_to(&self, after: State) -> Vec<Change> {
        let mut out = Vec::new();
        changed(&mut out, &self.services, after.services, |a, b| a == b);
        changed(&mut out, &self.pods, after.pods, |a, b| a == b);
        changed(
            &mut out,
            &self.endpoint_slices,
            after.endpoint_slices,
            |a, b| a == b,
        );
        out
    }
}

/// What planning reads of a source: its services whole, its pods and EndpointSlices
/// as their facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The source's revision these facts are at.
    pub revision: u64,
    pub services: BTreeMap<ObjectKey, Service>,
    pub pods: BTreeMap<ObjectKey, PodFacts>,
    pub endpoint_slices: BTreeMap<ObjectKey, SliceFacts>,
    /// As [`State::endpoints_from_slices`].
    pub endpoints_from_slices: bool,
}

/// The facts of a source read whole, gathered object by object (none deleted) and
/// made [`Facts`] at once, each map built from its entries: at 1,100,000 objects,
/// ~0.3 s less than inserting them one by one and compacting the maps after (see
/// [`Facts::compact`]), for the same peak.
#[derive(Default)]
pub struct WholeFacts {
    services: Vec<(ObjectKey, Service)>,
    pods: Vec<(ObjectKey, PodFacts)>,
    endpoint_slices: Vec<(ObjectKey, SliceFacts)>,
}

impl WholeFacts {
    pub fn add(&mut self, change: FactChange) {
        match change.fact {
            Some(Fact::Service(o)) => self.services.push((change.key, *o)),
            Some(Fact::Pod(o)) => self.pods.push((change.key, o)),
            Some(Fact::EndpointSlice(o)) => self.endpoint_slices.push((change.key, o)),
            None => {}
        }
    }

    /// The facts, at `revision` (each map sorted by `from_iter`). Past
    /// [`APART_PAST_PODS`] pods, the services' and EndpointSlices' maps are built
    /// on a thread of their own beside the pods' (at 100,000 services and
    /// 1,000,000 pods, ~70 ms and ~125 ms of a core).
    pub fn facts(self, revision: u64) -> Facts {
        let apart = self.pods.len() > APART_PAST_PODS;
        self.facts_apart(revision, apart)
    }

    /// [`WholeFacts::facts`], on two threads if `apart`.
    fn facts_apart(self, revision: u64, apart: bool) -> Facts {
        let WholeFacts {
            services,
            pods,
            endpoint_slices,
        } = self;
        let others = move || -> (BTreeMap<_, _>, BTreeMap<_, _>) {
            (
                services.into_iter().collect(),
                endpoint_slices.into_iter().collect(),
            )
        };
        let ((services, endpoint_slices), pods) = if apart {
            std::thread::scope(|threads| {
                let others = threads.spawn(others);
                let pods = pods.into_iter().collect();
                (others.join().expect("building the facts panicked"), pods)
            })
        } else {
            (others(), pods.into_iter().collect())
        };
        Facts {
            revision,
            services,
            pods,
            endpoint_slices,
            ..Facts::default()
        }
    }
}

impl From<State> for Facts {
    fn from(state: State) -> Self {
        Facts {
            revision: state.revision,
            services: state
                .services
                .into_iter()
                .map(|(k, mut s)| {
                    trim_service(&mut s);
                    (k, *s)
                })
                .collect(),
            pods: state
                .pods
                .iter()
                .map(|(k, p)| (k.clone(), PodFacts::of(p)))
                .collect(),
            endpoint_slices: state
                .endpoint_slices
                .iter()
                .map(|(k, s)| (k.clone(), SliceFacts::of(s)))
                .collect(),
            endpoints_from_slices: state.endpoints_from_slices,
        }
    }
}

/// A [`Change`] as [`Facts`] take it: a pod or an EndpointSlice already made its
/// facts (by whoever decoded it: the store does so on every core).
#[derive(Debug, Clone, PartialEq)]
pub struct FactChange {
    pub kind: Kind,
    pub key: ObjectKey,
    pub fact: Option<Fact>,
}

/// An object as planning reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Service(Box<Service>),
    Pod(PodFacts),
    EndpointSlice(SliceFacts),
}

impl From<Change> for FactChange {
    fn from(change: Change) -> Self {
        FactChange {
            kind: change.kind,
            key: change.key,
            fact: change.object.map(|o| match o {
                Object::Service(mut s) => {
                    trim_service(&mut s);
                    Fact::Service(s)
                }
                Object::Pod(p) => Fact::Pod(PodFacts::of(&p)),
                Object::EndpointSlice(s) => Fact::EndpointSlice(SliceFacts::of(&s)),
            }),
        }
    }
}

impl Facts {
    /// The addresses of every pod and EndpointSlice endpoint, both families.
    pub fn pod_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let slices = self.endpoint_slices.values();
        self.pods
            .values()
            .flat_map(PodFacts::addrs)
            .chain(slices.flat_map(SliceFacts::ip_addrs))
    }

    /// How many objects the facts hold.
    pub fn objects(&self) -> usize {
        self.services.len() + self.pods.len() + self.endpoint_slices.len()
    }

    /// Rebuilds the maps with full nodes. A map filled in key order (a bulk write
    /// taken change by change; a store read whole is built at once, see
    /// [`WholeFacts`]) is left with its nodes a little over half full: at
    /// 1,000,000 pods that is ~130 MB more than the same map built at once
    /// (measured with heaptrack).
    pub fn compact(&mut self) {
        self.services = std::mem::take(&mut self.services).into_iter().collect();
        self.pods = std::mem::take(&mut self.pods).into_iter().collect();
        self.endpoint_slices = std::mem::take(&mut self.endpoint_slices)
            .into_iter()
            .collect();
    }

    /// Writes or removes `change`'s object.
    pub fn apply(&mut self, change: FactChange) {
        let key = change.key;
        match change.fact {
            Some(Fact::Service(o)) => drop(self.services.insert(key, *o)),
            Some(Fact::Pod(o)) => drop(self.pods.insert(key, o)),
            Some(Fact::EndpointSlice(o)) => drop(self.endpoint_slices.insert(key, o)),
            None => match change.kind {
                Kind::Service => drop(self.services.remove(&key)),
                Kind::Pod => drop(self.pods.remove(&key)),
                Kind::EndpointSlice => drop(self.endpoint_slices.remove(&key)),
            },
        }
    }

    /// The objects of `after` whose facts differ from these, as changes (a pod
    /// whose facts did not change is no change to planning).
    pub fn changes_to(&self, after: State) -> Vec<Change> {
        let mut out = Vec::new();
        changed(&mut out, &self.services, after.services, |a, b| *a == **b);
        changed(&mut out, &self.pods, after.pods, |f, p| {
            *f == PodFacts::of(p)
        });
        changed(
            &mut out,
            &self.endpoint_slices,
            after.endpoint_slices,
            |f, s| *f == SliceFacts::of(s),
        );
        out
    }
}

/// How an object of one kind becomes an [`Object`].
trait Wrapped: Sized {
    const KIND: Kind;
    fn wrap(self) -> Object;
}

impl Wrapped for Box<Service> {
    const KIND: Kind = Kind::Service;
    fn wrap(self) -> Object {
        Object::Service(self)
    }
}

impl Wrapped for Box<Pod> {
    const KIND: Kind = Kind::Pod;
    fn wrap(self) -> Object {
        Object::Pod(self)
    }
}

impl Wrapped for Box<EndpointSlice> {
    const KIND: Kind = Kind::EndpointSlice;
    fn wrap(self) -> Object {
        Object::EndpointSlice(self)
    }
}

/// Pushes onto `out` the changes from `before` to `after` of one kind: the keys
/// gone, and the objects `same` does not find equal to what `before` holds.
fn changed<F, T: Wrapped>(
    out: &mut Vec<Change>,
    before: &BTreeMap<ObjectKey, F>,
    after: BTreeMap<ObjectKey, T>,
    same: impl Fn(&F, &T) -> bool,
) {
    for k in before.keys().filter(|k| !after.contains_key(*k)) {
        out.push(Change {
            kind: T::KIND,
            key: k.clone(),
            object: None,
        });
    }
    for (k, v) in after {
        if !before.get(&k).is_some_and(|b| same(b, &v)) {
            out.push(Change {
                kind: T::KIND,
                key: k,
                object: Some(v.wrap()),
            });
        }
    }
}

/// (namespace, label, value).
pub type LabelPair = (String, String, String);

/// What a change or a plan must find without scanning the state. Scanning instead
/// made one endpoint change at 10,000 services spend ~2 ms (their slices) to ~30 ms
/// (100,000 pods, for a pod turning unready) finding what it touched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    /// A service -> the keys of its EndpointSlices (their
    /// `kubernetes.io/service-name` label).
    slices: HashMap<ObjectKey, Keys>,
    /// Each label of a pod -> the keys of the pods with it.
    pods: HashMap<LabelPair, Keys>,
    /// The first pair of a service's selector -> the keys of the services with it
    /// (a selector selects only pods that have its first pair).
    selectors: HashMap<LabelPair, Keys>,
}

/// The first pair of `svc`'s selector, with its namespace (None: it selects nothing).
pub fn selector_pair(key: &ObjectKey, svc: &Service) -> Option<LabelPair> {
    let (k, v) = svc.spec.as_ref()?.selector.as_ref()?.iter().next()?;
    Some((key.namespace.clone(), k.clone(), v.clone()))
}

fn pod_pairs<'a>(key: &'a ObjectKey, pod: &'a PodFacts) -> impl Iterator<Item = LabelPair> + 'a {
    pod.labels()
        .map(move |(k, v)| (key.namespace.clone(), k.to_string(), v.to_string()))
}

/// The service an EndpointSlice under `key` belongs to.
fn slice_owner(key: &ObjectKey, slice: &SliceFacts) -> Option<ObjectKey> {
    Some(ObjectKey::new(&key.namespace, slice.service.as_deref()?))
}

/// A pod's label as [`Index::of`] sorts them: namespace, label, value, the pod.
type Labelled<'a> = (&'a str, &'a str, &'a str, &'a ObjectKey);

/// Past this many pods, [`Index::of`] and [`WholeFacts::facts`] are made on
/// several threads.
const APART_PAST_PODS: usize = 10_000;

/// The entries of the pods' label index for `labelled` (sorted: `same` labels
/// are next to each other).
fn pod_entries(
    labelled: &[Labelled<'_>],
    same: impl Fn(&Labelled<'_>, &Labelled<'_>) -> bool,
) -> Vec<(LabelPair, Keys)> {
    labelled
        .chunk_by(same)
        .map(|group| {
            let (namespace, k, v, _) = group[0];
            let keys = match group {
                [(.., one)] => Keys::One((*one).clone()),
                many => Keys::Many(many.iter().map(|(.., key)| (*key).clone()).collect()),
            };
            ((namespace.to_string(), k.to_string(), v.to_string()), keys)
        })
        .collect()
}

impl Index {
    /// The index of every object of `state`. Past [`APART_PAST_PODS`] pods, the
    /// services' and EndpointSlices' part is made on a thread of its own while
    /// this one collects and sorts the pods' labels, and the pods' entries on two
    /// (at 100,000 services selecting 1,000,000 pods, on one core, one after the
    /// other: ~80 ms, ~80 ms and ~150 ms; ~170 ms in all on two).
    pub fn of(state: &Facts) -> Self {
        Self::of_apart(state, state.pods.len() > APART_PAST_PODS)
    }

    /// [`Index::of`], on several threads if `apart`.
    fn of_apart(state: &Facts, apart: bool) -> Self {
        let mut labelled: Vec<Labelled<'_>> = Vec::new();
        std::thread::scope(|threads| {
            let services_and_slices = || {
                let mut index = Index::default();
                for key in state.services.keys() {
                    index.update(state, Kind::Service, key, true);
                }
                for key in state.endpoint_slices.keys() {
                    index.update(state, Kind::EndpointSlice, key, true);
                }
                index
            };
            let others = apart.then(|| threads.spawn(services_and_slices));
            // The pods' labels grouped by sorting them (borrowed), each entry made
            // once: a lookup per label, with its pair made first, took ~0.4 s more
            // of the agent's start at 1,000,000 pods. Stable: a label's pods stay
            // in key order.
            labelled.extend(state.pods.iter().flat_map(|(key, pod)| {
                pod.labels().map(move |(k, v)| (&*key.namespace, k, v, key))
            }));
            labelled.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
            let same = |a: &Labelled<'_>, b: &Labelled<'_>| (a.0, a.1, a.2) == (b.0, b.1, b.2);
            // Two halves, split where a label's group ends (the second empty when
            // not apart).
            let mut half = if apart {
                labelled.len() / 2
            } else {
                labelled.len()
            };
            while half > 0 && half < labelled.len() && same(&labelled[half - 1], &labelled[half]) {
                half += 1;
            }
            let (first, second) = labelled.split_at(half);
            let second =
                (!second.is_empty()).then(|| threads.spawn(move || pod_entries(second, same)));
            let mut pods = pod_entries(first, same);
            if let Some(second) = second {
                pods.extend(second.join().expect("indexing the pods panicked"));
            }
            let mut index = match others {
                Some(others) => others.join().expect("indexing the services panicked"),
                None => services_and_slices(),
            };
            index.pods = pods.into_iter().collect();
            index
        })
    }

    /// Adds (or removes) the object `kind`/`key` as `state` holds it.
    fn update(&mut self, state: &Facts, kind: Kind, key: &ObjectKey, add: bool) {
        fn set<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, Keys>,
            at: K,
            key: &ObjectKey,
            add: bool,
        ) {
            if add {
                match map.get_mut(&at) {
                    Some(keys) => keys.insert(key),
                    None => drop(map.insert(at, Keys::One(key.clone()))),
                }
            } else if let Some(keys) = map.get_mut(&at)
                && keys.remove(key)
            {
                map.remove(&at);
            }
        }
        match kind {
            Kind::EndpointSlice => {
                if let Some(owner) = state
                    .endpoint_slices
                    .get(key)
                    .and_then(|s| slice_owner(key, s))
                {
                    set(&mut self.slices, owner, key, add);
                }
            }
            Kind::Pod => {
                for pair in state
                    .pods
                    .get(key)
                    .into_iter()
                    .flat_map(|p| pod_pairs(key, p))
                {
                    set(&mut self.pods, pair, key, add);
                }
            }
            Kind::Service => {
                if let Some(pair) = state.services.get(key).and_then(|s| selector_pair(key, s)) {
                    set(&mut self.selectors, pair, key, add);
                }
            }
        }
    }

    /// The keys of `service`'s EndpointSlices.
    pub fn slices_of(&self, service: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.slices.get(service).into_iter().flat_map(Keys::iter)
    }

    /// The keys of the pods labelled with `pair`.
    pub fn pods_with(&self, pair: &LabelPair) -> impl Iterator<Item = &ObjectKey> {
        self.pods.get(pair).into_iter().flat_map(Keys::iter)
    }

    /// The keys of the services whose selector starts with `pair`.
    fn selecting(&self, pair: &LabelPair) -> impl Iterator<Item = &ObjectKey> {
        self.selectors.get(pair).into_iter().flat_map(Keys::iter)
    }
}

/// The keys an index holds under one entry, in order. Most entries hold one key
/// (a service's EndpointSlice, the services with a selector's first pair): one is
/// kept as it is, not in a B-tree node of eleven (~520 bytes more each: 50 MB at
/// 100,000 services).
#[derive(Debug, Clone, PartialEq)]
enum Keys {
    One(ObjectKey),
    /// Two or more (one left is kept as `One` again, so equal sets compare equal).
    Many(BTreeSet<ObjectKey>),
}

impl Keys {
    fn iter(&self) -> impl Iterator<Item = &ObjectKey> {
        let (one, many) = match self {
            Keys::One(k) => (Some(k), None),
            Keys::Many(keys) => (None, Some(keys.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn insert(&mut self, key: &ObjectKey) {
        match self {
            Keys::One(k) if k == key => {}
            Keys::One(k) => {
                let first = std::mem::replace(k, ObjectKey::new("", ""));
                *self = Keys::Many(BTreeSet::from([first, key.clone()]));
            }
            Keys::Many(keys) => {
                if !keys.contains(key) {
                    keys.insert(key.clone());
                }
            }
        }
    }

    /// Removes `key`; whether none is left (the entry goes).
    fn remove(&mut self, key: &ObjectKey) -> bool {
        match self {
            Keys::One(k) => k == key,
            Keys::Many(keys) => {
                keys.remove(key);
                if keys.len() == 1
                    && let Some(last) = keys.pop_first()
                {
                    *self = Keys::One(last);
                }
                false
            }
        }
    }
}

/// What a batch of changes brought: the pod addresses the pods and EndpointSlices
/// it wrote hold (the agent follows the routes to them), and the services it
/// touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub addrs: Vec<IpAddr>,
    pub services: BTreeSet<ObjectKey>,
}

impl Touched {
    /// Adds what `other` brought.
    pub fn extend(&mut self, other: Touched) {
        self.addrs.extend(other.addrs);
        self.services.extend(other.services);
    }
}

/// Facts and their index, kept in step as changes arrive.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    pub state: Facts,
    pub index: Index,
    /// See [`Tracked::generation`].
    generation: u64,
}

/// The last generation handed out (see [`Tracked::generation`]).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

impl Tracked {
    pub fn new(state: Facts) -> Self {
        let index = Index::of(&state);
        Tracked {
            state,
            index,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Which facts these are: another number for every `Tracked` made and after
    /// every [`take`](Self::take), the same for a clone. What was built from the
    /// facts of one generation (the DNS zone) needs no rebuilding while it lasts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes `changes` into the state and its index; returns what they named and the
    /// services whose entries they can change (affected before or after the changes).
    pub fn take<C: Into<FactChange>>(&mut self, changes: Vec<C>) -> Touched {
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        let changes: Vec<FactChange> = changes.into_iter().map(Into::into).collect();
        let named: Vec<(Kind, ObjectKey)> =
            changes.iter().map(|c| (c.kind, c.key.clone())).collect();
        let mut services = self.affected(&named);
        for (kind, key) in &named {
            self.index.update(&self.state, *kind, key, false);
        }
        for change in changes {
            self.state.apply(change);
        }
        for (kind, key) in &named {
            self.index.update(&self.state, *kind, key, true);
        }
        services.extend(self.affected(&named));
        let state = &self.state;
        let addrs = named
            .iter()
            .flat_map(|(kind, key)| {
                let pod = (*kind == Kind::Pod).then(|| state.pods.get(key)).flatten();
                let slice = (*kind == Kind::EndpointSlice)
                    .then(|| state.endpoint_slices.get(key))
                    .flatten();
                pod.into_iter()
                    .flat_map(PodFacts::addrs)
                    .chain(slice.into_iter().flat_map(SliceFacts::ip_addrs))
            })
            .collect();
        Touched { addrs, services }
    }

    /// The services whose entries `changes` can change as the state is now: a changed
    /// service; the service a changed EndpointSlice belongs to; the services whose
    /// selector selects a changed pod.
    fn affected(&self, changes: &[(Kind, ObjectKey)]) -> BTreeSet<ObjectKey> {
        let state = &self.state;
        let mut out = BTreeSet::new();
        for (kind, key) in changes {
            match kind {
                Kind::Service => drop(out.insert(key.clone())),
                Kind::EndpointSlice => {
                    out.extend(
                        state
                            .endpoint_slices
                            .get(key)
                            .and_then(|s| slice_owner(key, s)),
                    );
                }
                Kind::Pod => {
                    let Some(pod) = state.pods.get(key) else {
                        continue;
                    };
                    let candidates = pod_pairs(key, pod)
                        .flat_map(|pair| self.index.selecting(&pair).cloned().collect::<Vec<_>>());
                    for svc_key in candidates {
                        let Some(svc) = state.services.get(&svc_key) else {
                            continue;
                        };
                        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
                        if pod.selected_by(selector) {
                            out.insert(svc_key);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifest;

    fn state(yaml: &str) -> Facts {
        let mut s = State::default();
        for d in parse_manifest("t.yaml", yaml).unwrap() {
            s.insert(d.object);
        }
        s.into()
    }

    fn change(yaml: &str) -> Change {
        let object = parse_manifest("t.yaml", yaml).unwrap().remove(0).object;
        Change {
            kind: object.kind(),
            key: object.key(),
            object: Some(object),
        }
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web, tier: fe}\n  ports: [{port: 80}]\n";
    const DB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [{port: 5432}]\n";

    fn pod(labels: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {labels}}}\nspec: {{containers: [{{name: c, image: app}}]}}\nstatus: {{podIP: 10.244.0.2}}\n"
        )
    }

    /// `n` pods with `labels`, named `prefix` and 0..n, each document ended.
    fn pods_named(n: usize, prefix: &str, labels: &str) -> String {
        (0..n)
            .map(|i| pod(labels).replace("name: p,", &format!("name: {prefix}{i},")) + "---\n")
            .collect()
    }

    #[test]
    fn a_pod_change_touches_the_services_selecting_it_before_and_after() {
        let mut t = Tracked::new(state(&format!("{WEB}---\n{DB}---\n{}", pod("{app: db}"))));
        // Relabelled from db to web (both pairs): both services.
        let touched = t.take(vec![change(&pod("{app: web, tier: fe}"))]).services;
        let names: Vec<&str> = touched.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(
            t.index,
            Index::of(&t.state),
            "the kept index is the state's"
        );
        // Only web's first pair: web does not select it any more, and never did db.
        let touched = t.take(vec![change(&pod("{app: web}"))]).services;
        let names: Vec<&str> = touched.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["web"]);
        assert_eq!(t.index, Index::of(&t.state));
    }

    #[test]
    fn the_index_built_whole_is_the_index_built_object_by_object() {
        let mut yaml = format!("{WEB}---\n{DB}---\n");
        for i in 0..40 {
            let labels = match i % 4 {
                0 => "{app: web}".to_string(),
                1 => "{app: web, tier: fe}".to_string(),
                2 => format!("{{app: db, id: i{i}}}"),
                _ => "{}".to_string(),
            };
            let namespace = if i % 3 == 0 { " namespace: other," } else { "" };
            let name = format!("name: p{i},{namespace}");
            yaml.push_str(&pod(&labels).replace("name: p,", &name));
            yaml.push_str("---\n");
        }
        // The same pair on both sides of a namespace's end (other's last, prod's
        // first): two entries.
        yaml.push_str(&pod("{tier: fe}").replace("name: p,", "name: q, namespace: prod,"));
        yaml.push_str("---\n");
        let facts = state(&yaml);
        let mut one_by_one = Index::default();
        for kind in Kind::ALL {
            let keys: Vec<ObjectKey> = match kind {
                Kind::Service => facts.services.keys().cloned().collect(),
                Kind::Pod => facts.pods.keys().cloned().collect(),
                Kind::EndpointSlice => facts.endpoint_slices.keys().cloned().collect(),
            };
            for key in keys.iter().rev() {
                one_by_one.update(&facts, kind, key, true);
            }
        }
        let whole = Index::of(&facts);
        assert_eq!(whole, one_by_one);
        let web = ("default".to_string(), "app".to_string(), "web".to_string());
        assert_eq!(whole.pods_with(&web).count(), 13, "one entry, many keys");
        let one = ("other".to_string(), "id".to_string(), "i6".to_string());
        assert_eq!(whole.pods_with(&one).count(), 1);
        // Made on several threads: the pods' labels cut in two between groups;
        // inside one (five pods with app: web, then two with tier: fe: the cut
        // after the third label moves after the fifth); where no group ends (one
        // label only).
        assert_eq!(Index::of_apart(&facts, true), one_by_one);
        let mut yaml = pods_named(5, "p", "{app: web}");
        let one_label = state(&yaml);
        yaml.push_str(&pods_named(2, "q", "{tier: fe}"));
        let two_labels = state(&yaml);
        let fe = ("default".to_string(), "tier".to_string(), "fe".to_string());
        for facts in [one_label, two_labels] {
            let apart = Index::of_apart(&facts, true);
            assert_eq!(apart, Index::of_apart(&facts, false));
            assert_eq!(apart.pods_with(&web).count(), 5);
            let fe_pods = facts
                .pods
                .keys()
                .filter(|k| k.name.starts_with('q'))
                .count();
            assert_eq!(apart.pods_with(&fe).count(), fe_pods);
        }
    }

    #[test]
    fn facts_gathered_whole_are_the_facts_of_the_state_on_one_thread_or_two() {
        let mut yaml = format!("{WEB}---\n{DB}---\n{}", pods_named(5, "p", "{app: web}"));
        yaml.push_str("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.0.9]}]\n");
        let state = crate::store::apply::applied(&yaml);
        let want = Facts::from(state.clone());
        for apart in [false, true] {
            let mut whole = WholeFacts::default();
            for c in State::default().changes_to(state.clone()) {
                whole.add(c.into());
            }
            assert_eq!(
                whole.facts_apart(state.revision, apart),
                want,
                "apart: {apart}"
            );
        }
        assert_eq!(
            (
                want.services.len(),
                want.pods.len(),
                want.endpoint_slices.len()
            ),
            (2, 5, 1)
        );
    }

    #[test]
    fn an_index_entry_keeps_one_key_alone_and_equal_sets_equal() {
        let (a, b) = (
            ObjectKey::new("default", "a"),
            ObjectKey::new("default", "b"),
        );
        let mut keys = Keys::One(a.clone());
        keys.insert(&a);
        assert_eq!(keys, Keys::One(a.clone()));
        keys.insert(&b);
        assert_eq!(keys.iter().collect::<Vec<_>>(), [&a, &b]);
        assert!(!keys.remove(&a), "b is left");
        assert_eq!(keys, Keys::One(b.clone()), "one left is one again");
        assert!(!keys.remove(&a), "a was not there");
        assert!(keys.remove(&b), "none left");
    }

    #[test]
    fn compacted_facts_hold_every_object_and_take_changes_as_before() {
        let yaml = format!("{WEB}---\n{DB}---\n{}", pods_named(500, "p", "{app: web}"));
        let facts = state(&yaml);
        assert_eq!(facts.pods.len(), 500);
        let mut compacted = facts.clone();
        compacted.compact();
        assert_eq!(compacted, facts);
        // A change after the rebuild lands as it would have before it.
        let (mut a, mut b) = (Tracked::new(facts), Tracked::new(compacted));
        let relabelled = change(&pod("{app: db}").replace("name: p,", "name: p7,"));
        assert_eq!(a.take(vec![relabelled.clone()]), b.take(vec![relabelled]));
        assert_eq!(a.state, b.state);
        assert_eq!(b.index, Index::of(&b.state));
    }

    #[test]
    fn facts_change_only_with_what_planning_reads() {
        let mut source = State::default();
        for d in parse_manifest("t.yaml", &format!("{WEB}---\n{}", pod("{app: web}"))).unwrap() {
            source.insert(d.object);
        }
        let facts = Facts::from(source.clone());
        assert!(facts.changes_to(source.clone()).is_empty());
        let key = ObjectKey::new("default", "p");
        // An annotation and an image are not facts; a label, the address and
        // readiness are.
        let mut after = source.clone();
        let p = after.pods.get_mut(&key).unwrap();
        p.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        p.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert!(facts.changes_to(after.clone()).is_empty());
        let mut relabelled = after.clone();
        let p = relabelled.pods.get_mut(&key).unwrap();
        p.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let mut unready = after.clone();
        let p = unready.pods.get_mut(&key).unwrap();
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        for changed in [relabelled, unready] {
            let changes = facts.changes_to(changed);
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert_eq!((changes[0].kind, &changes[0].key), (Kind::Pod, &key));
        }
        let mut gone = after;
        gone.pods.clear();
        let changes = facts.changes_to(gone);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].object.is_none());
    }

    #[test]
    fn a_slice_touches_its_service_and_moves_with_its_label() {
        let slice = |svc: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s1, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: []\n"
            )
        };
        let mut t = Tracked::new(state(&format!("{WEB}---\n{DB}---\n{}", slice("web"))));
        let web = ObjectKey::new("default", "web");
        assert_eq!(t.index.slices_of(&web).count(), 1);
        let touched = t.take(vec![change(&slice("db"))]).services;
        assert_eq!(touched.len(), 2, "{touched:?}");
        assert_eq!(t.index.slices_of(&web).count(), 0);
        assert_eq!(t.index, Index::of(&t.state));
        let gone = Change {
            kind: Kind::EndpointSlice,
            key: ObjectKey::new("default", "s1"),
            object: None,
        };
        let touched = t.take(vec![gone]).services;
        assert_eq!(touched, BTreeSet::from([ObjectKey::new("default", "db")]));
        assert_eq!(t.index, Index::of(&t.state));
    }
}
