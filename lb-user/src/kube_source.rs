//! Kubernetes mode: the cluster's own API as the source of truth. kube-runtime
//! watchers keep reflector caches of v1 Services, discovery.k8s.io/v1
//! EndpointSlices and v1 Nodes; every change wakes the agent. The objects a watch
//! event named are handed over as [`Change`]s (as the embedded store hands over
//! rows by revision), so one endpoint change re-plans one service, not the
//! cluster; after a (re)list the caches are handed over whole as a [`State`].
//! Both go through the same plan -> diff -> map-writes pipeline.
//!
//! Resilience comes from the watchers: after an API error they back off and retry,
//! after `410 Gone` they relist; the caches (and so the maps) keep the last known
//! state meanwhile, and a relist replaces a cache whole, so the next reconcile
//! removes whatever disappeared while the watch was down.

use std::{
    fmt::Debug,
    hash::Hash,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node as KubeNode, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::{
    model::{Kind, Object, ObjectKey},
    netif::parse_cidr,
    state::{Change, State},
};

/// What the watches brought since the agent last took it.
#[derive(Debug, Default)]
struct Pending {
    /// Something changed (a node, a relist, an object).
    dirty: bool,
    /// A watch (re)listed: the caches are taken whole.
    whole: bool,
    /// The objects watch events named.
    keys: std::collections::BTreeSet<(Kind, ObjectKey)>,
}

/// What the agent takes from the caches.
pub enum Taken {
    /// The caches whole (after a list).
    Whole(State),
    /// The objects that changed (written, or deleted: None).
    Changes(Vec<Change>),
}

/// Services labelled with this name another proxy (kube-proxy's rule).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// Where the agent's objects come from in Kubernetes mode.
pub struct KubeSource {
    client: Client,
    services: reflector::Store<Service>,
    /// Counts Service watch events (what LoadBalancer address assignment follows).
    services_generation: Arc<AtomicU64>,
    slices: reflector::Store<EndpointSlice>,
    nodes: reflector::Store<KubeNode>,
    /// Filled by the watch events; taken by [`changed`](Self::changed).
    pending: Arc<std::sync::Mutex<Pending>>,
}

/// The client configuration: `kubeconfig` if given, else the in-cluster service
/// account. None when neither exists (the agent then uses the embedded store).
pub async fn config(kubeconfig: Option<&Path>) -> Result<Option<Config>> {
    if let Some(path) = kubeconfig {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("--kubeconfig {}: not a usable kubeconfig", path.display()))?;
        return Ok(Some(cfg));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(Some(
            Config::incluster().context("in-cluster configuration (service account)")?,
        ));
    }
    Ok(None)
}

/// Watches `api` into a cache; each event is noted in `pending` (the object's
/// key under `stored`, the store's kind; a node only makes the state dirty).
fn follow<K>(
    api: Api<K>,
    kind: &'static str,
    stored: Option<Kind>,
    pending: Arc<std::sync::Mutex<Pending>>,
    generation: Option<Arc<AtomicU64>>,
    wake: UnboundedSender<()>,
) -> reflector::Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let note = move |whole: bool, object: Option<&K>| {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        p.dirty = true;
        p.whole |= whole;
        if let (Some(kind), Some(o)) = (stored, object) {
            let meta = o.meta();
            p.keys.insert((
                kind,
                ObjectKey::new(
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                ),
            ));
        }
    };
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let (Some(g), Ok(_)) = (&generation, &ev) {
                g.fetch_add(1, Ordering::SeqCst);
            }
            match ev {
                // A relist is applied to the cache whole, at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    info!(kind, "listed");
                    note(true, None);
                    let _ = wake.send(());
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    note(false, Some(&o));
                    let _ = wake.send(());
                }
                Err(e) => {
                    warn!(kind, error = %e, "watch failed; retrying with backoff (the maps keep the last known state)")
                }
            }
        }
    });
    reader
}

/// Whether lb serves `svc` (not one labelled for another proxy).
fn served_here(svc: &Service) -> bool {
    !svc.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
}

impl KubeSource {
    /// Starts the watchers and waits until each has listed once, so the first
    /// reconcile sees the whole cluster (never an empty cache that would wipe the
    /// maps).
    pub async fn start(config: Config, wake: UnboundedSender<()>) -> Result<Self> {
        info!(server = %config.cluster_url, "Kubernetes mode: watching Services, EndpointSlices and Nodes");
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        let pending = Arc::new(std::sync::Mutex::new(Pending {
            dirty: true,
            whole: true,
            ..Default::default()
        }));
        let services_generation = Arc::new(AtomicU64::new(0));
        let services = follow(
            Api::<Service>::all(client.clone()),
            "Service",
            Some(Kind::Service),
            pending.clone(),
            Some(services_generation.clone()),
            wake.clone(),
        );
        let slices = follow(
            Api::<EndpointSlice>::all(client.clone()),
            "EndpointSlice",
            Some(Kind::EndpointSlice),
            pending.clone(),
            None,
            wake.clone(),
        );
        let nodes = follow(
            Api::<KubeNode>::all(client.clone()),
            "Node",
            None,
            pending.clone(),
            None,
            wake,
        );
        services.wait_until_ready().await.context("Services")?;
        slices.wait_until_ready().await.context("EndpointSlices")?;
        nodes.wait_until_ready().await.context("Nodes")?;
        Ok(KubeSource {
            client,
            services,
            services_generation,
            slices,
            nodes,
            pending,
        })
    }

    /// The client, for what the agent writes (LoadBalancer status, Leases).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The Service cache and the count of its changes.
    pub fn services(&self) -> (reflector::Store<Service>, Arc<AtomicU64>) {
        (self.services.clone(), self.services_generation.clone())
    }

    /// The names of the cluster's nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect()
    }

    /// What changed since the last call (None: nothing): the caches whole after a
    /// list, else the objects the watch events named, as they are now.
    pub fn changed(&self) -> Option<Taken> {
        let p = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !p.dirty {
                return None;
            }
            std::mem::take(&mut *p)
        };
        if p.whole {
            return Some(Taken::Whole(self.state()));
        }
        let changes = p
            .keys
            .into_iter()
            .map(|(kind, key)| {
                let object = match kind {
                    Kind::Service => self
                        .services
                        .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
                        .filter(|s| served_here(s))
                        .map(|s| Object::Service(Box::new(Service::clone(&s)))),
                    Kind::EndpointSlice => self
                        .slices
                        .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
                        .map(|s| Object::EndpointSlice(Box::new(EndpointSlice::clone(&s)))),
                    Kind::Pod => None,
                };
                Change { kind, key, object }
            })
            .collect();
        Some(Taken::Changes(changes))
    }

    /// Makes the next [`changed`](Self::changed) return the state again, whole.
    pub fn mark_dirty(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.dirty = true;
        p.whole = true;
    }

    /// The caches as a [`State`]: services labelled for another proxy left out;
    /// every service takes its endpoints from its EndpointSlices (the cluster's
    /// EndpointSlice controller has already turned selectors into them).
    pub fn state(&self) -> State {
        let services = self
            .services
            .state()
            .into_iter()
            .filter(|s| served_here(s))
            .map(|s| (ObjectKey::of(&s.metadata), Box::new(Service::clone(&s))))
            .collect();
        let endpoint_slices = self
            .slices
            .state()
            .into_iter()
            .map(|s| {
                (
                    ObjectKey::of(&s.metadata),
                    Box::new(EndpointSlice::clone(&s)),
                )
            })
            .collect();
        State {
            revision: 0,
            services,
            pods: Default::default(),
            endpoint_slices,
            endpoints_from_slices: true,
        }
    }

    /// The Node object named `name`, if the API has it.
    fn node(&self, name: &str) -> Option<Arc<KubeNode>> {
        self.nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }

    /// This node's pod networks (spec.podCIDRs, else spec.podCIDR), both families.
    pub fn pod_cidrs(&self, name: &str) -> Vec<crate::model::Cidr> {
        self.node(name)
            .into_iter()
            .filter_map(|n| n.spec.clone())
            .flat_map(|s| {
                s.pod_cidrs
                    .unwrap_or_default()
                    .into_iter()
                    .chain(s.pod_cidr)
            })
            .filter_map(|c| parse_cidr(&c).ok())
            .collect()
    }

    /// This node's addresses as the API reports them (InternalIP, ExternalIP), both
    /// families.
    pub fn node_addrs(&self, name: &str) -> Vec<std::net::IpAddr> {
        self.node(name)
            .into_iter()
            .flat_map(|n| {
                n.status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .filter_map(|a| a.address.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
