//! From the model to the map entries we want. Pure: no maps, no files, no clock.
//!
//! Two steps: [`plan`] turns services and pods into service ports with their
//! frontends and endpoints (Kubernetes semantics); [`entries`] turns those into
//! `LB_SERVICES` / `LB_BACKENDS` entries, keeping the ids and slots the maps already
//! hold so that a change touches only the entries it must.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use lb_common::{
    BE_F_REMOTE, Backend, BackendKey, ID_NONE, MAX_BACKEND_IDS, MAX_SERVICE_IDS, PROTO_TCP,
    PROTO_UDP, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_F_AFFINITY, SVC_F_EXTERNAL_LOCAL, SVC_F_INTERNAL,
    ServiceKey, ServiceValue, port_bit,
};

use crate::{
    model::{
        ObjectKey, TYPE_EXTERNAL_NAME, TYPE_LOAD_BALANCER, TYPE_NODE_PORT, cluster_ip, pod_ip,
        pod_ready, resolve_target_port, selects, service_type, slice_service,
    },
    store::{Change, KIND_ENDPOINT_SLICE, KIND_POD, KIND_SERVICE, State},
};

/// The node an agent serves: its name and the addresses NodePorts answer on.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
}

impl Node {
    /// Whether an endpoint on `node_name` is on this node. One that names no node is
    /// taken as local (a single-node store need not say where its pods run).
    pub fn hosts(&self, node_name: Option<&str>) -> bool {
        node_name.is_none_or(|n| n.is_empty() || n == self.name)
    }
}

/// One `spec.ports[]` entry of a service as lb balances it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    pub service: ObjectKey,
    /// The port's name, or its number when unnamed.
    pub port: String,
    pub proto: u8,
    /// Where the service answers: (frontend, `SVC_F_*` flags).
    pub frontends: Vec<(ServiceKey, u32)>,
    /// Ready endpoints (address, target port), sorted, without duplicates.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// Those of `endpoints`' addresses that live on another node.
    pub remote: BTreeSet<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 for no affinity.
    pub affinity_timeout_s: u32,
}

fn proto_number(protocol: &str) -> Option<u8> {
    match protocol {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

pub fn frontend(addr: Ipv4Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(addr).to_be(),
        port_be: port.to_be(),
        proto,
        _pad: 0,
    }
}

/// Pods by namespace and label pair, so a selector looks at candidates only.
struct PodIndex<'a> {
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Pod>>,
}

impl<'a> PodIndex<'a> {
    fn new(pods: impl Iterator<Item = &'a Pod>) -> Self {
        let mut by_label: HashMap<_, Vec<&Pod>> = HashMap::new();
        for pod in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            for (k, v) in pod.metadata.labels.iter().flatten() {
                by_label
                    .entry((ns, k.as_str(), v.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        PodIndex { by_label }
    }

    /// Ready pods of `ns` that the selector selects.
    fn selected(&self, ns: &str, selector: Option<&BTreeMap<String, String>>) -> Vec<&'a Pod> {
        let Some((k, v)) = selector.and_then(|s| s.iter().next()) else {
            return Vec::new();
        };
        self.by_label
            .get(&(ns, k.as_str(), v.as_str()))
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| selects(selector, p.metadata.labels.as_ref()) && pod_ready(p))
            .collect()
    }
}

/// EndpointSlices by the (namespace, service name) they belong to.
type SliceIndex<'a> = HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

fn slice_index<'a>(slices: impl Iterator<Item = &'a EndpointSlice>) -> SliceIndex<'a> {
    let mut index: SliceIndex<'a> = HashMap::new();
    for slice in slices {
        if let Some(svc) = slice_service(slice) {
            let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
            index.entry((ns, svc)).or_default().push(slice);
        }
    }
    index
}

/// The endpoints a service port without a selector takes from its EndpointSlices:
/// the IPv4 addresses of the slice port with the same name and protocol. Ready
/// endpoints serve; when none is ready, serving endpoints that are terminating do
/// (as kube-proxy does). Conditions left unset count as ready and serving.
fn slice_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: &str,
    node: &Node,
) -> BTreeMap<(Ipv4Addr, u16), bool> {
    let (mut ready, mut terminating) = (BTreeMap::new(), BTreeMap::new());
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let into = if is_ready && !is_terminating {
                &mut ready
            } else if serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            let local = node.hosts(ep.node_name.as_deref());
            into.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|a| ((a, port), local)),
            );
        }
    }
    if ready.is_empty() { terminating } else { ready }
}

/// Every service port lb balances on `node`, with its frontends and endpoints.
/// Headless and ExternalName services get none (they are DNS-only in Kubernetes).
pub fn plan(state: &State, node: &Node) -> Vec<PortPlan> {
    let pods = PodIndex::new(state.pods.values());
    let slices = slice_index(state.endpoint_slices.values());
    state
        .services
        .values()
        .flat_map(|svc| plan_service(svc, &pods, &slices, node, state.endpoints_from_slices))
        .collect()
}

/// [`plan`] for the services named in `only` (those gone plan to nothing), reading
/// only their EndpointSlices and the pods their selectors can select (`index` must
/// be that of `state`).
pub fn plan_services(
    state: &State,
    index: &Index,
    node: &Node,
    only: &BTreeSet<ObjectKey>,
) -> Vec<PortPlan> {
    let services: Vec<&Service> = only
        .iter()
        .filter_map(|k| state.services.get(&k.to_string()))
        .collect();
    // Every pod with a selector's first pair: those PodIndex::selected looks at.
    let candidates: BTreeSet<&String> = services
        .iter()
        .filter_map(|svc| selector_pair(svc))
        .filter_map(|pair| index.pods.get(&pair))
        .flatten()
        .collect();
    let pods = PodIndex::new(candidates.into_iter().filter_map(|k| state.pods.get(k)));
    let slices = slice_index(only.iter().flat_map(|k| index.slices_of(state, k)));
    services
        .into_iter()
        .flat_map(|svc| plan_service(svc, &pods, &slices, node, state.endpoints_from_slices))
        .collect()
}

/// (namespace, label, value).
type LabelPair = (String, String, String);

/// What a change must find without scanning the state: each service's
/// EndpointSlices, the pods by label, the services by their selector's first pair.
/// Kept beside a state as it changes ([`take_changes`]). Scanning instead made one
/// endpoint change at 10,000 services spend ~2 ms (their slices) to ~30 ms (100,000
/// pods, for a pod turning unready) finding what it touched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    /// (namespace, service name) -> the keys of its EndpointSlices (their
    /// `kubernetes.io/service-name` label).
    slices: HashMap<ObjectKey, BTreeSet<String>>,
    /// Each label of a pod -> the keys of the pods with it.
    pods: HashMap<LabelPair, BTreeSet<String>>,
    /// The first pair of a service's selector -> the keys of the services with it
    /// (a selector selects only pods that have its first pair).
    selectors: HashMap<LabelPair, BTreeSet<String>>,
}

/// The first pair of `svc`'s selector, with its namespace (None: it selects nothing).
fn selector_pair(svc: &Service) -> Option<LabelPair> {
    let (k, v) = svc.spec.as_ref()?.selector.as_ref()?.iter().next()?;
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    Some((ns.to_string(), k.clone(), v.clone()))
}

fn pod_pairs(pod: &Pod) -> impl Iterator<Item = LabelPair> + '_ {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    pod.metadata
        .labels
        .iter()
        .flatten()
        .map(move |(k, v)| (ns.to_string(), k.clone(), v.clone()))
}

fn slice_owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let svc = slice_service(slice)?;
    Some(ObjectKey::new(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        svc,
    ))
}

impl Index {
    /// The index of every object of `state`.
    pub fn of(state: &State) -> Self {
        let mut index = Index::default();
        for key in state.endpoint_slices.keys() {
            index.update(state, KIND_ENDPOINT_SLICE, key, true);
        }
        for key in state.pods.keys() {
            index.update(state, KIND_POD, key, true);
        }
        for key in state.services.keys() {
            index.update(state, KIND_SERVICE, key, true);
        }
        index
    }

    /// Adds (or removes) the object `kind`/`key` as `state` holds it.
    fn update(&mut self, state: &State, kind: &str, key: &str, add: bool) {
        fn set<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, BTreeSet<String>>,
            at: K,
            key: &str,
            add: bool,
        ) {
            if add {
                map.entry(at).or_default().insert(key.to_string());
            } else if let Some(keys) = map.get_mut(&at) {
                keys.remove(key);
                if keys.is_empty() {
                    map.remove(&at);
                }
            }
        }
        match kind {
            KIND_ENDPOINT_SLICE => {
                if let Some(owner) = state.endpoint_slices.get(key).and_then(slice_owner) {
                    set(&mut self.slices, owner, key, add);
                }
            }
            KIND_POD => {
                for pair in state.pods.get(key).into_iter().flat_map(pod_pairs) {
                    set(&mut self.pods, pair, key, add);
                }
            }
            KIND_SERVICE => {
                if let Some(pair) = state.services.get(key).and_then(selector_pair) {
                    set(&mut self.selectors, pair, key, add);
                }
            }
            _ => {}
        }
    }

    /// The slices of `service` in `state`.
    fn slices_of<'a>(
        &'a self,
        state: &'a State,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| state.endpoint_slices.get(k))
    }
}

/// Takes `changes` into `state` (and its `index`); returns what they named (kind,
/// key) and the services to re-plan for them (affected before or after).
pub fn take_changes(
    state: &mut State,
    index: &mut Index,
    changes: Vec<Change>,
) -> (Vec<(&'static str, String)>, BTreeSet<ObjectKey>) {
    let named: Vec<(&'static str, String)> =
        changes.iter().map(|c| (c.kind, c.key.clone())).collect();
    let mut services = affected(state, index, &named);
    for (kind, key) in &named {
        index.update(state, kind, key, false);
    }
    state.apply_changes(changes);
    for (kind, key) in &named {
        index.update(state, kind, key, true);
    }
    services.extend(affected(state, index, &named));
    (named, services)
}

/// The services whose entries `changes` can change, as `state` (and its `index`)
/// sees them: a changed service; the service a changed EndpointSlice belongs to;
/// the services whose selector selects a changed pod. Asked of the state before the
/// changes and after them, the union is what to re-plan.
pub fn affected(
    state: &State,
    index: &Index,
    changes: &[(&'static str, String)],
) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    for (kind, key) in changes {
        match *kind {
            KIND_SERVICE => {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                out.insert(ObjectKey::new(ns, name));
            }
            KIND_ENDPOINT_SLICE => {
                out.extend(state.endpoint_slices.get(key).and_then(slice_owner));
            }
            _ => {
                let Some(pod) = state.pods.get(key) else {
                    continue;
                };
                let candidates = pod_pairs(pod)
                    .filter_map(|pair| index.selectors.get(&pair))
                    .flatten()
                    .filter_map(|k| state.services.get(k));
                for svc in candidates {
                    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
                    if selects(selector, pod.metadata.labels.as_ref()) {
                        out.insert(ObjectKey::of(&svc.metadata));
                    }
                }
            }
        }
    }
    out
}

fn plan_service(
    svc: &Service,
    pods: &PodIndex<'_>,
    slices: &SliceIndex<'_>,
    node: &Node,
    endpoints_from_slices: bool,
) -> Vec<PortPlan> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ty = service_type(svc);
    let (Some(cluster_ip), false) = (cluster_ip(svc), ty == TYPE_EXTERNAL_NAME) else {
        return Vec::new();
    };
    let key = ObjectKey::of(&svc.metadata);
    let selected = pods.selected(&key.namespace, spec.selector.as_ref());
    let has_selector =
        !endpoints_from_slices && spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    let external = ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER;
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        timeout
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    } else {
        0
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    // LoadBalancer addresses and external IPs answer on the service port itself.
    let lb_addrs: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .cloned()
        .chain(
            svc.status
                .iter()
                .flat_map(|s| s.load_balancer.iter())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.ip.clone()),
        )
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut plans = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let (Some(proto), Ok(port)) = (proto_number(protocol), u16::try_from(p.port)) else {
            continue;
        };
        let ext_flags = if external_local {
            SVC_F_EXTERNAL_LOCAL
        } else {
            0
        };
        let mut ext_frontends: Vec<(ServiceKey, u32)> = lb_addrs
            .iter()
            .map(|a| (frontend(*a, port, proto), ext_flags))
            .collect();
        if external && let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
            ext_frontends.extend(
                node.addrs
                    .iter()
                    .map(|a| (frontend(*a, np, proto), ext_flags)),
            );
        }
        let target = p
            .target_port
            .clone()
            .unwrap_or(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port));
        // With a selector, the pods it selects; without, the service's EndpointSlices.
        // Each with whether it lives on this node.
        let endpoints: BTreeMap<(Ipv4Addr, u16), bool> = if has_selector {
            selected
                .iter()
                .filter_map(|pod| {
                    let local = node.hosts(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()));
                    Some((
                        (pod_ip(pod)?, resolve_target_port(pod, &target, protocol)?),
                        local,
                    ))
                })
                .collect()
        } else {
            let own = slices
                .get(&(key.namespace.as_str(), key.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            slice_endpoints(own, p.name.as_deref().unwrap_or(""), protocol, node)
        };
        let all: Vec<(Ipv4Addr, u16)> = endpoints.keys().copied().collect();
        let local: Vec<(Ipv4Addr, u16)> = endpoints
            .iter()
            .filter(|(_, local)| **local)
            .map(|(e, _)| *e)
            .collect();
        let remote: BTreeSet<Ipv4Addr> = endpoints
            .iter()
            .filter(|(_, local)| !**local)
            .map(|((a, _), _)| *a)
            .collect();
        let internal_eps = if internal_local {
            local.clone()
        } else {
            all.clone()
        };
        let external_eps = if external_local { local } else { all };
        let name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.port.to_string());
        let cluster = (frontend(cluster_ip, port, proto), SVC_F_INTERNAL);
        let make =
            |port: String, frontends: Vec<(ServiceKey, u32)>, eps: Vec<(Ipv4Addr, u16)>| PortPlan {
                service: key.clone(),
                port,
                proto,
                frontends,
                endpoints: eps,
                remote: remote.clone(),
                affinity_timeout_s,
            };
        // One set of backends serves every frontend unless a traffic policy makes the
        // external ones see other endpoints than the ClusterIP.
        if ext_frontends.is_empty() || internal_eps == external_eps {
            let mut frontends = vec![cluster];
            frontends.extend(ext_frontends);
            plans.push(make(name, frontends, internal_eps));
        } else {
            plans.push(make(name.clone(), vec![cluster], internal_eps));
            plans.push(make(
                format!("{name} (external)"),
                ext_frontends,
                external_eps,
            ));
        }
    }
    plans
}

/// The contents of `LB_SERVICES`, `LB_BACKENDS` and `LB_PORTS`: what we want, or
/// what the maps hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<BackendKey, Backend>,
    /// The non-zero words of the frontend-port bitmap (`lb_common::port_bit`).
    pub ports: BTreeMap<u32, u64>,
}

impl Entries {
    /// Sets `ports` from `services`: the bitmap always follows the frontends. The SNAT
    /// range is marked too (when any frontend exists), so the replies of SNAT flows
    /// pass the filter.
    pub fn index_ports(&mut self) {
        self.ports.clear();
        let snat = (!self.services.is_empty())
            .then_some(SNAT_PORT_MIN..=SNAT_PORT_MAX)
            .into_iter()
            .flatten();
        for port in self
            .services
            .keys()
            .map(|k| u16::from_be(k.port_be))
            .chain(snat)
        {
            let (word, bit) = port_bit(port);
            *self.ports.entry(word).or_insert(0) |= bit;
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    #[error("more than {limit} {what}: lb's maps hold no more (lb-common limits)")]
    TooMany { what: &'static str, limit: u32 },
}

/// The ids not in use, found without looking at the ones that are: every id from
/// `high` up, and the freed ones below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdPool {
    free: BTreeSet<u32>,
    high: u32,
    limit: u32,
    what: &'static str,
}

impl IdPool {
    pub(crate) fn new(limit: u32, what: &'static str) -> Self {
        IdPool {
            free: BTreeSet::new(),
            high: ID_NONE + 1,
            limit,
            what,
        }
    }

    /// A pool in which `used` are taken.
    pub(crate) fn with_used(
        used: impl IntoIterator<Item = u32>,
        limit: u32,
        what: &'static str,
    ) -> Self {
        let mut pool = IdPool::new(limit, what);
        used.into_iter().for_each(|id| pool.mark_used(id));
        pool
    }

    /// The lowest free id.
    pub(crate) fn take(&mut self) -> Result<u32, DesiredError> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.high >= self.limit {
            return Err(DesiredError::TooMany {
                what: self.what,
                limit: self.limit - 1,
            });
        }
        self.high += 1;
        Ok(self.high - 1)
    }

    pub(crate) fn mark_used(&mut self, id: u32) {
        if id >= self.high {
            self.free.extend(self.high..id);
            self.high = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    pub(crate) fn release(&mut self, id: u32) {
        if id < self.high {
            self.free.insert(id);
        }
        while self.high > ID_NONE + 1 && self.free.remove(&(self.high - 1)) {
            self.high -= 1;
        }
    }
}

/// Where new ids come from: the whole plan's own allocator, or the agent's ledger
/// when only some services are re-planned.
pub(crate) trait IdSource {
    /// The id of backend (address, port, protocol): its current one, or a new one.
    fn backend_id(&mut self, key: (u32, u16, u8)) -> Result<u32, DesiredError>;
    /// A service-port id no frontend uses.
    fn new_service_id(&mut self) -> Result<u32, DesiredError>;
}

struct PlanIds {
    backend_ids: HashMap<(u32, u16, u8), u32>,
    backends: IdPool,
    services: IdPool,
}

impl IdSource for PlanIds {
    fn backend_id(&mut self, key: (u32, u16, u8)) -> Result<u32, DesiredError> {
        if let Some(id) = self.backend_ids.get(&key) {
            return Ok(*id);
        }
        let id = self.backends.take()?;
        self.backend_ids.insert(key, id);
        Ok(id)
    }
    fn new_service_id(&mut self) -> Result<u32, DesiredError> {
        self.services.take()
    }
}

/// The entries for `plans`, reusing from `actual` each service port's id (found by
/// any of its frontends), each backend's id (by address, port and protocol) and each
/// backend's slot, so unchanged services produce identical entries.
pub fn entries(plans: &[PortPlan], actual: &Entries) -> Result<Entries, DesiredError> {
    let (kept, claimed) = kept_service_ids(plans, actual);
    let backend_ids: HashMap<(u32, u16, u8), u32> = actual
        .backends
        .values()
        .map(|b| ((b.addr_be, b.port_be, b.proto), b.backend_id))
        .collect();
    let mut ids = PlanIds {
        backends: IdPool::with_used(backend_ids.values().copied(), MAX_BACKEND_IDS, "backends"),
        backend_ids,
        services: IdPool::with_used(claimed, MAX_SERVICE_IDS, "service ports"),
    };
    let mut out = build(plans, &kept, actual, &mut ids)?;
    out.index_ports();
    Ok(out)
}

/// The id each plan keeps: the one a frontend of it already has in `actual`, once
/// per id; and every id so kept.
pub(crate) fn kept_service_ids(
    plans: &[PortPlan],
    actual: &Entries,
) -> (Vec<Option<u32>>, BTreeSet<u32>) {
    let mut claimed = BTreeSet::new();
    let kept = plans
        .iter()
        .map(|plan| {
            plan.frontends
                .iter()
                .filter_map(|(k, _)| actual.services.get(k).map(|v| v.svc_id))
                .find(|id| claimed.insert(*id))
        })
        .collect();
    (kept, claimed)
}

/// The frontends and slots of `plans` (no port bitmap): `kept` ids from
/// [`kept_service_ids`], slots from `actual`, new ids from `ids`.
pub(crate) fn build(
    plans: &[PortPlan],
    kept: &[Option<u32>],
    actual: &Entries,
    ids: &mut dyn IdSource,
) -> Result<Entries, DesiredError> {
    let mut out = Entries::default();
    for (plan, kept) in plans.iter().zip(kept) {
        let svc_id = match kept {
            Some(id) => *id,
            None => ids.new_service_id()?,
        };
        let mut backends = Vec::with_capacity(plan.endpoints.len());
        for (addr, port) in &plan.endpoints {
            let (addr_be, port_be) = (u32::from(*addr).to_be(), port.to_be());
            backends.push(Backend {
                addr_be,
                port_be,
                proto: plan.proto,
                flags: if plan.remote.contains(addr) {
                    BE_F_REMOTE
                } else {
                    0
                },
                backend_id: ids.backend_id((addr_be, port_be, plan.proto))?,
            });
        }
        for (slot, backend) in assign_slots(svc_id, backends, actual)
            .into_iter()
            .enumerate()
        {
            out.backends.insert(
                BackendKey {
                    svc_id,
                    slot: slot as u32,
                },
                backend,
            );
        }
        for (key, flags) in &plan.frontends {
            out.services.insert(
                *key,
                ServiceValue {
                    svc_id,
                    backend_count: plan.endpoints.len() as u32,
                    flags: *flags
                        | if plan.affinity_timeout_s > 0 {
                            SVC_F_AFFINITY
                        } else {
                            0
                        },
                    affinity_timeout_s: plan.affinity_timeout_s,
                },
            );
        }
    }
    Ok(out)
}

/// Orders `backends` into slots: a backend keeps the slot it has in `actual` when that
/// slot still exists; the others fill the remaining slots in order.
fn assign_slots(svc_id: u32, backends: Vec<Backend>, actual: &Entries) -> Vec<Backend> {
    let n = backends.len();
    let mut slots: Vec<Option<Backend>> = vec![None; n];
    let mut placed = vec![false; n];
    let range = BackendKey { svc_id, slot: 0 }..=BackendKey {
        svc_id,
        slot: u32::MAX,
    };
    for (k, old) in actual.backends.range(range) {
        let slot = k.slot as usize;
        if slot >= n {
            continue;
        }
        if let Some(i) = backends.iter().position(|b| b.backend_id == old.backend_id)
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
