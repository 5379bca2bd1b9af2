//! Kubernetes mode: the cluster's own API as the source of truth. kube-runtime
//! watchers keep reflector caches of v1 Services, discovery.k8s.io/v1
//! EndpointSlices and v1 Nodes; every change wakes the agent, which turns the caches
//! into the same [`State`] the embedded store gives and runs it through the same
//! plan -> diff -> map-writes pipeline.
//!
//! Resilience comes from the watchers: after an API error they back off and retry,
//! after `410 Gone` they relist; the caches (and so the maps) keep the last known
//! state meanwhile, and a relist replaces a cache whole, so the next reconcile
//! removes whatever disappeared while the watch was down.

use std::{
    fmt::Debug,
    hash::Hash,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
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

use crate::{model::ObjectKey, netif::parse_cidr, state::State};

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
    /// Set by every watch event; taken by [`changed`](Self::changed).
    dirty: Arc<AtomicBool>,
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

fn follow<K>(
    api: Api<K>,
    kind: &'static str,
    dirty: Arc<AtomicBool>,
    generation: Option<Arc<AtomicU64>>,
    wake: UnboundedSender<()>,
) -> reflector::Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
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
                    dirty.store(true, Ordering::SeqCst);
                    let _ = wake.send(());
                }
                Ok(_) => {
                    dirty.store(true, Ordering::SeqCst);
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

impl KubeSource {
    /// Starts the watchers and waits until each has listed once, so the first
    /// reconcile sees the whole cluster (never an empty cache that would wipe the
    /// maps).
    pub async fn start(config: Config, wake: UnboundedSender<()>) -> Result<Self> {
        info!(server = %config.cluster_url, "Kubernetes mode: watching Services, EndpointSlices and Nodes");
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        let dirty = Arc::new(AtomicBool::new(true));
        let services_generation = Arc::new(AtomicU64::new(0));
        let services = follow(
            Api::<Service>::all(client.clone()),
            "Service",
            dirty.clone(),
            Some(services_generation.clone()),
            wake.clone(),
        );
        let slices = follow(
            Api::<EndpointSlice>::all(client.clone()),
            "EndpointSlice",
            dirty.clone(),
            None,
            wake.clone(),
        );
        let nodes = follow(
            Api::<KubeNode>::all(client.clone()),
            "Node",
            dirty.clone(),
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
            dirty,
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

    /// The cluster as a [`State`], if anything changed since the last call.
    pub fn changed(&self) -> Option<State> {
        self.dirty
            .swap(false, Ordering::SeqCst)
            .then(|| self.state())
    }

    /// Makes the next [`changed`](Self::changed) return the state again.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// The caches as a [`State`]: services labelled for another proxy left out;
    /// every service takes its endpoints from its EndpointSlices (the cluster's
    /// EndpointSlice controller has already turned selectors into them).
    pub fn state(&self) -> State {
        let services = self
            .services
            .state()
            .into_iter()
            .filter(|s| {
                !s.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
            })
            .map(|s| (ObjectKey::of(&s.metadata), Service::clone(&s)))
            .collect();
        let endpoint_slices = self
            .slices
            .state()
            .into_iter()
            .map(|s| (ObjectKey::of(&s.metadata), EndpointSlice::clone(&s)))
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

    /// This node's pod networks (spec.podCIDRs, else spec.podCIDR), IPv4 ones.
    pub fn pod_cidrs(&self, name: &str) -> Vec<(Ipv4Addr, u8)> {
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

    /// This node's addresses as the API reports them (InternalIP, ExternalIP).
    pub fn node_addrs(&self, name: &str) -> Vec<Ipv4Addr> {
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
