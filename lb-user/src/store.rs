//! The embedded store: the objects lb serves, in one JSON file under a directory
//! (default `/var/lib/lb`), shared by every agent and CLI on the machine.
//!
//! Writers take an exclusive `flock` on `DIR/lock`, read, change a copy, write
//! `state.json.tmp`, fsync and rename it over `state.json`: a reader sees the old
//! state or the new one, never a mix, and two `lb apply` never hand out one value.
//! Allocation (clusterIP, nodePort) happens here, under that lock.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::Write as _,
    net::Ipv4Addr,
    ops::RangeInclusive,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        core::v1::{LoadBalancerIngress, LoadBalancerStatus, Pod, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::model::{
    CLUSTER_IP_NONE, Document, FieldError, Object, ObjectKey, TYPE_EXTERNAL_NAME,
    TYPE_LOAD_BALANCER, TYPE_NODE_PORT, cluster_ip, service_type,
};

pub const DEFAULT_STORE_DIR: &str = "/var/lib/lb";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {dir}: {action}: {error}")]
    Io {
        dir: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error("store {dir}: {file} is corrupt: {error}")]
    Corrupt {
        dir: PathBuf,
        file: &'static str,
        error: String,
    },
    #[error("{file} (document {index}): The {kind} \"{name}\" is invalid: {error}")]
    Invalid {
        file: String,
        index: usize,
        kind: &'static str,
        name: String,
        error: Box<FieldError>,
    },
    #[error("{kind} \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{file} (document {index}): {kind} \"{name}\" already exists")]
    AlreadyExists {
        file: String,
        index: usize,
        kind: &'static str,
        name: String,
    },
    #[error("no free {what} left in {range}")]
    Exhausted { what: &'static str, range: String },
}

/// What the API server would be configured with: where ClusterIPs and nodePorts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub service_cidr: (Ipv4Addr, u8),
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation {
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            node_ports: 30000..=32767,
        }
    }
}

impl Allocation {
    fn cidr_contains(&self, ip: Ipv4Addr) -> bool {
        let (net, len) = self.service_cidr;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(net) & mask
    }

    fn cidr_string(&self) -> String {
        format!("{}/{}", self.service_cidr.0, self.service_cidr.1)
    }
}

/// Everything the store holds. Keys are `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Bumped by every write; becomes the objects' resourceVersion.
    pub revision: u64,
    pub services: BTreeMap<String, Service>,
    pub pods: BTreeMap<String, Pod>,
    #[serde(default)]
    pub endpoint_slices: BTreeMap<String, EndpointSlice>,
    /// Every service takes its endpoints from its EndpointSlices, selector or not
    /// (Kubernetes mode: the cluster's EndpointSlice controller made them). The
    /// embedded store has no such controller: selectors select its pods.
    #[serde(skip)]
    pub endpoints_from_slices: bool,
}

/// What `apply` did to one object, in kubectl's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// How `apply` treats an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `lb apply`: create or update.
    Apply,
    /// `lb create`: an existing object is an error.
    Create,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |error| StoreError::Io {
            dir: self.dir.clone(),
            action,
            error,
        }
    }

    /// The current state (empty if nothing was ever written). Lock-free: the file is
    /// only ever replaced whole.
    pub fn load(&self) -> Result<State, StoreError> {
        match fs::read(self.state_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                dir: self.dir.clone(),
                file: STATE_FILE,
                error: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.io("reading state.json")(e)),
        }
    }

    /// Runs `change` on a copy of the state under the store's lock and writes the
    /// result if it succeeds and changed something. An error leaves the store as it was.
    pub fn update<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        fs::create_dir_all(&self.dir).map_err(self.io("creating the directory"))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))
            .map_err(self.io("opening the lock file"))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io("locking")(std::io::Error::last_os_error()).into());
        }
        let before = self.load()?;
        let mut state = before.clone();
        let out = change(&mut state)?;
        if state != before {
            state.revision = before.revision + 1;
            self.write(&state)?;
        }
        drop(lock);
        Ok(out)
    }

    fn write(&self, state: &State) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
            dir: self.dir.clone(),
            file: STATE_FILE,
            error: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(self.io("writing state.json.tmp"))?;
        f.write_all(&bytes)
            .map_err(self.io("writing state.json.tmp"))?;
        f.sync_all().map_err(self.io("syncing state.json.tmp"))?;
        fs::rename(&tmp, self.state_path()).map_err(self.io("renaming state.json.tmp"))?;
        Ok(())
    }

    /// Applies every document or none: the first object that cannot be stored (a taken
    /// nodePort, a clusterIP outside the range, ...) leaves the store untouched.
    pub fn apply(
        &self,
        docs: &[Document],
        alloc: &Allocation,
        mode: Mode,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.update(|state| {
            let now = Timestamp::now();
            let revision = state.revision + 1;
            // What is taken, kept up to date as each document is applied: scanning every
            // service for each document would make a 10,000-service apply quadratic.
            let mut taken = Taken::of(state);
            docs.iter()
                .map(|doc| apply_one(state, &mut taken, doc, alloc, mode, now, revision))
                .collect()
        })
    }

    /// Gives every LoadBalancer service without an address one from `pools`
    /// (`spec.loadBalancerIP` when it names a free address of a pool), written to
    /// `status.loadBalancer.ingress` as a cloud controller would; services no longer of
    /// that type lose theirs. Returns what was assigned (service, address).
    pub fn assign_load_balancer_ips(
        &self,
        pools: &[(Ipv4Addr, u8)],
    ) -> Result<Vec<(String, Ipv4Addr)>, StoreError> {
        self.update(|state| {
            let mut taken: BTreeSet<Ipv4Addr> = state
                .services
                .values()
                .flat_map(|s| lb_ingress_ips(s).into_iter().chain(external_ips(s)))
                .collect();
            let mut assigned = Vec::new();
            for (key, svc) in state.services.iter_mut() {
                let is_lb = service_type(svc) == TYPE_LOAD_BALANCER;
                let has = !lb_ingress_ips(svc).is_empty();
                if !is_lb && has {
                    svc.status = None;
                    continue;
                }
                if !is_lb || has || pools.is_empty() {
                    continue;
                }
                let requested = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.load_balancer_ip.as_deref())
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                let ip = match requested {
                    Some(ip) => (in_pools(pools, ip) && !taken.contains(&ip)).then_some(ip),
                    None => pool_addrs(pools).find(|ip| !taken.contains(ip)),
                };
                let Some(ip) = ip else {
                    continue; // stays <pending>
                };
                taken.insert(ip);
                svc.status = Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(vec![LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: Some("VIP".into()),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                });
                assigned.push((key.clone(), ip));
            }
            Ok(assigned)
        })
    }

    /// Deletes the named objects; all must exist (or none is deleted).
    pub fn delete(&self, targets: &[(&'static str, ObjectKey)]) -> Result<(), StoreError> {
        self.update(|state| {
            for (kind, key) in targets {
                let map_key = key.to_string();
                let removed = match *kind {
                    "Service" => state.services.remove(&map_key).is_some(),
                    "EndpointSlice" => state.endpoint_slices.remove(&map_key).is_some(),
                    _ => state.pods.remove(&map_key).is_some(),
                };
                if !removed {
                    return Err(StoreError::NotFound {
                        kind,
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    });
                }
            }
            Ok(())
        })
    }
}

fn apply_one(
    state: &mut State,
    taken: &mut Taken,
    doc: &Document,
    alloc: &Allocation,
    mode: Mode,
    now: Timestamp,
    revision: u64,
) -> Result<Outcome, StoreError> {
    let key = doc.object.key().to_string();
    let exists = match &doc.object {
        Object::Service(_) => state.services.contains_key(&key),
        Object::Pod(_) => state.pods.contains_key(&key),
        Object::EndpointSlice(_) => state.endpoint_slices.contains_key(&key),
    };
    if exists && mode == Mode::Create {
        return Err(StoreError::AlreadyExists {
            file: doc.file.clone(),
            index: doc.index,
            kind: doc.object.kind(),
            name: doc.object.key().name,
        });
    }
    match &doc.object {
        Object::Service(svc) => {
            let old = state.services.remove(&key);
            let mut svc = (**svc).clone();
            // Status is the cluster's to write (the agents assign LoadBalancer
            // addresses), never the manifest's: as with the API server's status
            // subresource, apply keeps what is there.
            svc.status = old.as_ref().and_then(|o| o.status.clone());
            let invalid = |error: FieldError| StoreError::Invalid {
                file: doc.file.clone(),
                index: doc.index,
                kind: "Service",
                name: doc.object.key().name,
                error: Box::new(error),
            };
            if let Some(old) = &old {
                taken.release(old);
            }
            let allocated = allocate(taken, &mut svc, old.as_ref(), alloc);
            if allocated.is_err()
                && let Some(old) = &old
            {
                taken.hold(old);
            }
            allocated.map_err(|e| match e {
                AllocError::Field(f) => invalid(f),
                AllocError::Store(s) => s,
            })?;
            taken.hold(&svc);
            let (svc, outcome) = stamp(svc, old, now, revision, |s| &mut s.metadata);
            state.services.insert(key, svc);
            Ok(outcome)
        }
        Object::Pod(pod) => {
            let old = state.pods.remove(&key);
            let (pod, outcome) = stamp((**pod).clone(), old, now, revision, |p| &mut p.metadata);
            state.pods.insert(key, pod);
            Ok(outcome)
        }
        Object::EndpointSlice(slice) => {
            let old = state.endpoint_slices.remove(&key);
            let (slice, outcome) =
                stamp((**slice).clone(), old, now, revision, |e| &mut e.metadata);
            state.endpoint_slices.insert(key, slice);
            Ok(outcome)
        }
    }
}

/// Sets uid, creationTimestamp and resourceVersion as the API server does, keeping
/// them from the stored object, and says whether anything changed.
fn stamp<T: Clone + PartialEq>(
    mut new: T,
    old: Option<T>,
    now: Timestamp,
    revision: u64,
    meta: impl Fn(&mut T) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (T, Outcome) {
    let Some(mut old) = old else {
        let m = meta(&mut new);
        m.uid = Some(new_uid());
        m.creation_timestamp = Some(Time(now));
        m.resource_version = Some(revision.to_string());
        return (new, Outcome::Created);
    };
    {
        let (o, n) = (meta(&mut old).clone(), meta(&mut new));
        n.uid = o.uid;
        n.creation_timestamp = o.creation_timestamp;
        n.resource_version = o.resource_version;
    }
    if new == old {
        return (old, Outcome::Unchanged);
    }
    meta(&mut new).resource_version = Some(revision.to_string());
    (new, Outcome::Configured)
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

enum AllocError {
    Field(FieldError),
    Store(StoreError),
}

impl From<FieldError> for AllocError {
    fn from(f: FieldError) -> Self {
        AllocError::Field(f)
    }
}

/// Gives the service its clusterIP and nodePorts: requested values if valid and free,
/// the stored object's values on re-apply, fresh random ones otherwise. `state` no
/// longer holds the service being applied.
fn allocate(
    taken: &Taken,
    svc: &mut Service,
    old: Option<&Service>,
    alloc: &Allocation,
) -> Result<(), AllocError> {
    let ty = service_type(svc).to_string();
    let old_spec = old.and_then(|o| o.spec.as_ref());
    let spec = svc.spec.get_or_insert_with(Default::default);

    // clusterIP: immutable once set.
    if ty != TYPE_EXTERNAL_NAME {
        let old_ip = old_spec.and_then(|s| s.cluster_ip.clone());
        let requested = spec.cluster_ip.clone().filter(|s| !s.is_empty());
        let ip = match (requested, old_ip) {
            (Some(req), Some(old)) if req != old => {
                return Err(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("[]string{{\"{req}\"}}"),
                    "may not change once set",
                )
                .into());
            }
            (Some(req), _) if req == CLUSTER_IP_NONE => req,
            (Some(req), Some(_)) => req,
            (Some(req), None) => {
                let ip: Ipv4Addr = req.parse().map_err(|_| {
                    FieldError::invalid("spec.clusterIPs[0]", &req, "must be a valid IP address")
                })?;
                if !alloc.cidr_contains(ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {}", alloc.cidr_string()),
                    )
                    .into());
                }
                if taken.ips.contains(&ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: provided IP is already allocated"),
                    )
                    .into());
                }
                req
            }
            (None, Some(old)) => old,
            (None, None) => random_cluster_ip(&taken.ips, alloc)
                .map_err(AllocError::Store)?
                .to_string(),
        };
        spec.cluster_ips = Some(vec![ip.clone()]);
        spec.cluster_ip = Some(ip);
    }

    // nodePorts: for NodePort and LoadBalancer services, each port has one.
    if ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER {
        let mut used = taken.node_ports.clone();
        let old_ports = old_spec.and_then(|s| s.ports.clone()).unwrap_or_default();
        let ports = spec.ports.get_or_insert_with(Vec::new);
        // Requested ones first, so a random pick never takes a value asked for later.
        for (i, p) in ports.iter().enumerate() {
            if let Some(np) = p.node_port {
                if !(alloc.node_ports.contains(&u16::try_from(np).unwrap_or(0))) {
                    return Err(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        np,
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            alloc.node_ports.start(),
                            alloc.node_ports.end()
                        ),
                    )
                    .into());
                }
                if used.contains(&(np as u16)) {
                    return Err(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        np,
                        "provided port is already allocated",
                    )
                    .into());
                }
            }
        }
        for p in ports.iter() {
            if let Some(np) = p.node_port {
                used.insert(np as u16);
            }
        }
        for p in ports.iter_mut().filter(|p| p.node_port.is_none()) {
            // Re-apply keeps the nodePort of the same port (by name, else number and protocol).
            let kept = old_ports
                .iter()
                .find(|o| match (&o.name, &p.name) {
                    (Some(a), Some(b)) => a == b,
                    _ => o.port == p.port && o.protocol == p.protocol,
                })
                .and_then(|o| o.node_port)
                .filter(|np| !used.contains(&(*np as u16)));
            let np = match kept {
                Some(np) => np as u16,
                None => random_free(&alloc.node_ports, &used).ok_or_else(|| {
                    AllocError::Store(StoreError::Exhausted {
                        what: "nodePort",
                        range: format!("{:?}", alloc.node_ports),
                    })
                })?,
            };
            used.insert(np);
            p.node_port = Some(np.into());
        }
    }
    Ok(())
}

/// `status.loadBalancer.ingress` addresses.
pub fn lb_ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|l| l.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn external_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.spec
        .iter()
        .flat_map(|s| s.external_ips.iter().flatten())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn in_pools(pools: &[(Ipv4Addr, u8)], ip: Ipv4Addr) -> bool {
    pool_addrs(pools).any(|a| a == ip)
}

/// Every usable address of the pools, in order (a pool's network and broadcast
/// addresses are skipped unless it is a /31 or /32).
fn pool_addrs(pools: &[(Ipv4Addr, u8)]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    pools.iter().flat_map(|(net, len)| {
        let host_bits = 32 - u32::from(*len).min(32);
        let size = 1u64 << host_bits;
        let base = u64::from(u32::from(*net) & !((size - 1) as u32));
        let (lo, hi) = if size <= 2 { (0, size) } else { (1, size - 1) };
        (lo..hi).map(move |i| Ipv4Addr::from((base + i) as u32))
    })
}

/// The clusterIPs and nodePorts services hold.
struct Taken {
    ips: BTreeSet<Ipv4Addr>,
    node_ports: BTreeSet<u16>,
}

impl Taken {
    fn of(state: &State) -> Self {
        let mut t = Taken {
            ips: BTreeSet::new(),
            node_ports: BTreeSet::new(),
        };
        state.services.values().for_each(|s| t.hold(s));
        t
    }

    fn node_ports_of(svc: &Service) -> impl Iterator<Item = u16> + '_ {
        svc.spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
    }

    fn hold(&mut self, svc: &Service) {
        self.ips.extend(cluster_ip(svc));
        self.node_ports.extend(Self::node_ports_of(svc));
    }

    fn release(&mut self, svc: &Service) {
        if let Some(ip) = cluster_ip(svc) {
            self.ips.remove(&ip);
        }
        for p in Self::node_ports_of(svc) {
            self.node_ports.remove(&p);
        }
    }
}

fn random_free(range: &RangeInclusive<u16>, used: &BTreeSet<u16>) -> Option<u16> {
    let size = (*range.end() as u32).checked_sub(*range.start() as u32)? + 1;
    if used.iter().filter(|p| range.contains(p)).count() as u32 >= size {
        return None;
    }
    let mut rng = rand::rng();
    loop {
        let p = rng.random_range(range.clone());
        if !used.contains(&p) {
            return Some(p);
        }
    }
}

/// A random free address of the service CIDR, never its network address, its
/// broadcast address or its first host (kept for the `kubernetes` service, as the API
/// server does).
fn random_cluster_ip(
    used: &BTreeSet<Ipv4Addr>,
    alloc: &Allocation,
) -> Result<Ipv4Addr, StoreError> {
    let (net, len) = alloc.service_cidr;
    let host_bits = 32 - len as u32;
    let size: u64 = 1u64 << host_bits;
    if size < 4 || used.len() as u64 >= size - 3 {
        return Err(StoreError::Exhausted {
            what: "ClusterIP",
            range: alloc.cidr_string(),
        });
    }
    let base = u32::from(net) & (u32::MAX.checked_shl(host_bits).unwrap_or(0));
    let mut rng = rand::rng();
    loop {
        let offset = rng.random_range(2..size - 1) as u32;
        let ip = Ipv4Addr::from(base + offset);
        if !used.contains(&ip) {
            return Ok(ip);
        }
    }
}

#[cfg(test)]
mod tests;
