//! What a write means, as the API server's REST strategies say: `create` refuses
//! an object that exists, `apply` creates or updates it (status kept, uid, creation
//! time and resourceVersion the server's), `delete` needs every named object; every
//! document or none. Pure: it changes a [`State`] the caller read (and then
//! commits), so it is tested without a disk.

use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use rand::Rng as _;

use super::alloc::{AllocError, Allocation, Taken, allocate};
use crate::{
    model::{
        Document, Invalid, Kind, Object, ObjectKey, SHOWN_VALUE, TYPE_EXTERNAL_NAME,
        TYPE_LOAD_BALANCER, TYPE_NODE_PORT, externally_accessible, shown,
        validate_endpoint_slice_update, validate_service, validate_service_update,
    },
    state::State,
};

/// Why a write was refused; nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(Box<Invalid>),
    // The API server's words (`services "web" not found`), as `lb get` and kubectl
    // say it; the namespace is the one the command named.
    #[error("{} \"{}\" not found", .kind.plural(), shown(.name, SHOWN_VALUE))]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    #[error("{file} (document {index}): {} \"{}\" already exists", .kind.plural(), shown(.name, SHOWN_VALUE))]
    AlreadyExists {
        file: String,
        index: usize,
        kind: Kind,
        name: String,
    },
    #[error("no free {what} left in {range}")]
    Exhausted { what: &'static str, range: String },
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

/// Applies every document to `state` (which holds every service and the objects the
/// documents name), stamping them with `revision`; the first refused leaves an
/// error, and the caller commits nothing.
pub fn apply(
    state: &mut State,
    docs: &[Document],
    alloc: &Allocation,
    mode: Mode,
    now: Timestamp,
    revision: u64,
) -> Result<Vec<Outcome>, ApplyError> {
    let mut taken = Taken::of(state);
    apply_taking(state, &mut taken, docs.to_vec(), alloc, mode, now, revision)
}

/// [`apply`] where `taken` (what every service holds, the store's index) stands for
/// the services `state` does not hold: `state` need only hold the named objects.
/// The documents' objects move into `state` (a bulk apply holds each object once).
pub fn apply_taking(
    state: &mut State,
    taken: &mut Taken,
    docs: Vec<Document>,
    alloc: &Allocation,
    mode: Mode,
    now: Timestamp,
    revision: u64,
) -> Result<Vec<Outcome>, ApplyError> {
    // What is taken, kept up to date as each document is applied: scanning every
    // service for each document would make a 10,000-service apply quadratic.
    docs.into_iter()
        .map(|doc| apply_one(state, taken, doc, alloc, mode, now, revision))
        .collect()
}

/// The objects of `yaml` as the store would hold them (defaults, allocation in
/// the default ranges), without a disk: the tests' way to a [`State`].
#[cfg(test)]
pub fn applied(yaml: &str) -> State {
    applied_in(yaml, &super::Allocation::default())
}

/// [`applied`] with the ranges `alloc` (a dual-stack cluster's, say).
#[cfg(test)]
pub fn applied_in(yaml: &str, alloc: &Allocation) -> State {
    let mut state = State::default();
    let docs = crate::model::parse_manifest("t.yaml", yaml).expect("the test's manifest parses");
    apply(&mut state, &docs, alloc, Mode::Apply, Timestamp::now(), 1)
        .expect("the test's manifest applies");
    state
}

/// Removes the named objects; all must exist.
pub fn delete(state: &mut State, targets: &[(Kind, ObjectKey)]) -> Result<(), ApplyError> {
    for (kind, key) in targets {
        if !state.remove(*kind, key) {
            return Err(ApplyError::NotFound {
                kind: *kind,
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            });
        }
    }
    Ok(())
}

fn apply_one(
    state: &mut State,
    taken: &mut Taken,
    doc: Document,
    alloc: &Allocation,
    mode: Mode,
    now: Timestamp,
    revision: u64,
) -> Result<Outcome, ApplyError> {
    let key = doc.object.key();
    if mode == Mode::Create && state.contains(doc.object.kind(), &key) {
        return Err(ApplyError::AlreadyExists {
            file: doc.file.clone(),
            index: doc.index,
            kind: doc.object.kind(),
            name: key.name,
        });
    }
    let (object, outcome) = match doc.object {
        Object::Service(svc) => {
            let old = state.services.remove(&key);
            let mut svc = svc;
            // Status is the cluster's to write (the agents assign LoadBalancer
            // addresses), never the manifest's: as with the API server's status
            // subresource, apply keeps what is there.
            svc.status = old.as_ref().and_then(|o| o.status.clone());
            if let Some(old) = &old {
                taken.release(old);
                drop_type_dependent_fields(&mut svc, old);
            }
            // The service as it will be stored (merged with the stored one and
            // allocated) is validated again: a value carried over from the stored
            // object (a headless clusterIP under a new type) must be valid too.
            let invalid = |errors| {
                ApplyError::Invalid(Box::new(Invalid {
                    file: doc.file.clone(),
                    index: doc.index,
                    kind: Kind::Service,
                    name: key.name.clone(),
                    errors,
                }))
            };
            let refusal = match allocate(taken, &mut svc, old.as_deref(), alloc) {
                Err(AllocError::Field(error)) => Some(invalid(vec![error])),
                Err(AllocError::Exhausted { what, range }) => {
                    Some(ApplyError::Exhausted { what, range })
                }
                Ok(()) => {
                    let mut errors = validate_service(&svc);
                    if let Some(old) = &old {
                        errors.extend(validate_service_update(&svc, old));
                    }
                    Some(errors).filter(|e| !e.is_empty()).map(invalid)
                }
            };
            if let Some(refusal) = refusal {
                if let Some(old) = old {
                    taken.hold(&old);
                    state.services.insert(key.clone(), old);
                }
                return Err(refusal);
            }
            taken.hold(&svc);
            let (svc, outcome) = stamp(svc, old, now, revision, |s| &mut s.metadata);
            (Object::Service(svc), outcome)
        }
        Object::Pod(pod) => {
            let old = state.pods.remove(&key);
            let (pod, outcome) = stamp(pod, old, now, revision, |p| &mut p.metadata);
            (Object::Pod(pod), outcome)
        }
        Object::EndpointSlice(slice) => {
            if let Some(old) = state.endpoint_slices.get(&key) {
                let errors = validate_endpoint_slice_update(&slice, old);
                if !errors.is_empty() {
                    return Err(ApplyError::Invalid(Box::new(Invalid {
                        file: doc.file.clone(),
                        index: doc.index,
                        kind: Kind::EndpointSlice,
                        name: key.name,
                        errors,
                    })));
                }
            }
            let old = state.endpoint_slices.remove(&key);
            let (slice, outcome) = stamp(slice, old, now, revision, |e| &mut e.metadata);
            (Object::EndpointSlice(slice), outcome)
        }
    };
    state.insert(object);
    Ok(outcome)
}

/// What the API server's update strategy clears when a service changes to a type
/// that no longer uses a field and the manifest kept the stored value (a manifest
/// switched from NodePort to ClusterIP may keep its nodePorts; an ExternalName
/// drops the clusterIP it was given): clusterIPs, families and their policy;
/// nodePorts; healthCheckNodePort; allocateLoadBalancerNodePorts;
/// loadBalancerClass; externalTrafficPolicy.
fn drop_type_dependent_fields(new: &mut Service, old: &Service) {
    let (Some(ns), Some(os)) = (new.spec.as_mut(), old.spec.as_ref()) else {
        return;
    };
    let ty = |t: &Option<String>| t.clone().unwrap_or_default();
    let (nt, ot) = (ty(&ns.type_), ty(&os.type_));
    let needs_cluster_ip = |t: &str| t != TYPE_EXTERNAL_NAME;
    if needs_cluster_ip(&ot) && !needs_cluster_ip(&nt) {
        let ips = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
            (
                s.cluster_ip.clone().filter(|i| !i.is_empty()),
                s.cluster_ips.clone().filter(|i| !i.is_empty()),
            )
        };
        let (nip, nips) = ips(ns);
        let (oip, oips) = ips(os);
        if (nip.is_none() || nip == oip) && (nips.is_none() || nips == oips) {
            ns.cluster_ip = None;
            ns.cluster_ips = None;
        }
        if ns.ip_families == os.ip_families {
            ns.ip_families = None;
        }
        if ns.ip_family_policy == os.ip_family_policy {
            ns.ip_family_policy = None;
        }
    }
    let needs_node_port = |t: &str| t == TYPE_NODE_PORT || t == TYPE_LOAD_BALANCER;
    if needs_node_port(&ot) && !needs_node_port(&nt) {
        let node_ports = |s: &k8s_openapi::api::core::v1::ServiceSpec| -> Vec<Option<i32>> {
            s.ports.iter().flatten().map(|p| p.node_port).collect()
        };
        let (nn, on) = (node_ports(ns), node_ports(os));
        // The same values, or none given: nothing the user asked to keep.
        if nn.iter().all(Option::is_none) || nn == on {
            for p in ns.ports.iter_mut().flatten() {
                p.node_port = None;
            }
        }
    }
    let needs_hc = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
        s.type_.as_deref() == Some(TYPE_LOAD_BALANCER)
            && s.external_traffic_policy.as_deref() == Some("Local")
    };
    if needs_hc(os)
        && !needs_hc(ns)
        && (ns.health_check_node_port.is_none_or(|p| p == 0)
            || ns.health_check_node_port == os.health_check_node_port)
    {
        ns.health_check_node_port = None;
    }
    if ot == TYPE_LOAD_BALANCER && nt != TYPE_LOAD_BALANCER {
        if ns.allocate_load_balancer_node_ports.is_some()
            && ns.allocate_load_balancer_node_ports == os.allocate_load_balancer_node_ports
        {
            ns.allocate_load_balancer_node_ports = None;
        }
        if ns.load_balancer_class == os.load_balancer_class {
            ns.load_balancer_class = None;
        }
    }
    if externally_accessible(os)
        && !externally_accessible(ns)
        && ns.external_traffic_policy == os.external_traffic_policy
    {
        ns.external_traffic_policy = None;
    }
}

/// Sets uid, creationTimestamp and resourceVersion as the API server does, keeping
/// them from the stored object, and says whether anything changed.
fn stamp<T: Clone + PartialEq>(
    mut new: T,
    old: Option<T>,
    now: Timestamp,
    revision: u64,
    meta: impl Fn(&mut T) -> &mut ObjectMeta,
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

/// A random (version 4) UUID, as the API server gives a new object.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    // Version 4, variant 10 (RFC 9562).
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests;
