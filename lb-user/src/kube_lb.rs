//! Kubernetes mode's LoadBalancer, on a task of its own, one round per lease retry
//! period (see `lease`):
//!
//! - **addresses**: the holder of the `lb-ipam` lease gives LoadBalancer services
//!   addresses of `--lb-pool` (`lb_ipam`'s plan) and takes them from services that
//!   are no longer LoadBalancers, through the status subresource, each write
//!   conditional on the resourceVersion it planned from (a conflict is planned again
//!   next round); a deleted service's address is free with it;
//! - **announcements**: for each address lb gave, the holder of lease
//!   `lb-l2-A-B-C-D` (IPv6: its eight groups, `lb-l2-fd00-0-...`) answers ARP, or
//!   Neighbor Solicitations, for it (the address on the uplink) and says so with
//!   gratuitous ARP, or an unsolicited Neighbor Advertisement, on taking it; only nodes the agent finds eligible contend
//!   (with `externalTrafficPolicy: Local`, nodes with a ready endpoint of the
//!   service), and the node `announce::owner` prefers among the cluster's nodes
//!   contends at once, the others a lease duration later, so addresses spread.
//!
//! The data plane sends ARP (Neighbor Advertisements) about an address only until
//! the lease would run out (`LB_ARP_HOLD`, `LB_NDP_HOLD`, renewed with it): a crashed or frozen agent's node, whose kernel
//! still has the address, falls silent before another node takes it.
//!
//! On a clean stop the addresses are let go first, then the leases released, so
//! another node takes over at its next round.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::reflector,
};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::{
    announce,
    lb_ipam::{self, Assignment},
    lease::{Elector, LeaseStats, Preferred, Timing},
    maps::NeighHolds,
    model::{Cidr, ObjectKey},
};

/// The lease whose holder assigns addresses.
pub const IPAM_LEASE: &str = "lb-ipam";

/// The lease for announcing `ip`: `lb-l2-192-168-1-240`, and for IPv6 its eight
/// groups in hex (`lb-l2-fd00-0-0-0-0-0-0-f0`: a valid name, one per address).
pub fn lease_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("lb-l2-{}", ip.to_string().replace('.', "-")),
        IpAddr::V6(ip) => {
            let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:x}")).collect();
            format!("lb-l2-{}", groups.join("-"))
        }
    }
}

pub struct Options {
    /// Where the agent pinned its maps (`LB_ARP_HOLD` is written here).
    pub pins: std::path::PathBuf,
    pub namespace: String,
    pub node: String,
    pub iface: String,
    pub pools: Vec<Cidr>,
    pub timing: Timing,
}

/// Addresses this node may announce -> the nodes preferred for them (None: no
/// preference, every eligible node contends at once).
pub type Wants = BTreeMap<IpAddr, Option<Preferred>>;

/// What the task did, for metrics.
#[derive(Debug, Default)]
pub struct KubeLbStats {
    pub leases: Arc<LeaseStats>,
    /// Addresses this node answers ARP (or Neighbor Solicitations) for now.
    pub announced: AtomicU64,
    /// Status writes (addresses given or taken back), and those that failed.
    pub status_writes: AtomicU64,
    pub status_failures: AtomicU64,
}

pub struct KubeLb {
    wants: watch::Sender<Wants>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeLb {
    /// Starts it on a thread of its own, with its own runtime and API client, so a
    /// long round of the agent never delays a lease renewal. `services` is the
    /// agent's Service cache, `generation` counts its changes.
    pub fn start(
        config: kube::Config,
        services: reflector::Store<Service>,
        generation: Arc<AtomicU64>,
        opts: Options,
        stats: Arc<KubeLbStats>,
    ) -> anyhow::Result<Self> {
        let (wants, wants_rx) = watch::channel(Wants::new());
        let (stop, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("lb-leases".into())
            .spawn(move || {
                rt.block_on(async move {
                    match Client::try_from(config) {
                        Ok(client) => {
                            let sources = Sources {
                                services,
                                generation,
                                wants: wants_rx,
                            };
                            run(client, sources, opts, stats, stop_rx).await
                        }
                        Err(e) => warn!(error = %e, "no API client for LoadBalancer leases"),
                    }
                })
            })?;
        Ok(KubeLb {
            wants,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What this node may announce, from the agent's latest round.
    pub fn want(&self, wants: Wants) {
        self.wants.send_if_modified(|w| {
            let changed = *w != wants;
            *w = wants;
            changed
        });
    }

    /// Lets go of every address and releases every lease; returns when done.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the task follows: the Service cache and its change count, and what the
/// agent says this node may announce.
struct Sources {
    services: reflector::Store<Service>,
    generation: Arc<AtomicU64>,
    wants: watch::Receiver<Wants>,
}

async fn run(
    client: Client,
    sources: Sources,
    opts: Options,
    stats: Arc<KubeLbStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let Sources {
        services,
        generation,
        wants,
    } = sources;
    info!(namespace = %opts.namespace, lease_duration = ?opts.timing.duration, retry = ?opts.timing.retry,
        "LoadBalancer addresses and announcements through Leases");
    let mut holds = match NeighHolds::open_pinned(&opts.pins) {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "answers about LoadBalancer addresses will not be cut off when a lease runs out");
            None
        }
    };
    let mut elector = Elector::start(
        client.clone(),
        &opts.namespace,
        &opts.node,
        opts.timing,
        stats.leases.clone(),
    );
    let mut tick = tokio::time::interval(opts.timing.retry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced: BTreeSet<IpAddr> = BTreeSet::new();
    // The services generation last planned from (None: plan next time).
    let mut planned: Option<u64> = None;
    loop {
        let deadline = elector.first_deadline();
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
            // A held lease running out is acted on at once, not at the next tick.
            _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {}
        }
        let want = wants.borrow().clone();
        // An address this node may no longer announce (its endpoint moved, the
        // service went) is let go before its lease is released in the round below:
        // the other way round, the next holder could answer ARP while this node
        // still does.
        let unwanted: Vec<IpAddr> = announced
            .iter()
            .filter(|ip| !want.contains_key(ip))
            .copied()
            .collect();
        for ip in unwanted {
            announce::let_go(&opts.iface, ip);
            hold(&mut holds, ip, Duration::ZERO);
            announced.remove(&ip);
        }
        let mut leases: BTreeMap<String, Option<Preferred>> = want
            .iter()
            .map(|(ip, pref)| (lease_name(*ip), pref.clone()))
            .collect();
        if !opts.pools.is_empty() {
            leases.insert(IPAM_LEASE.to_string(), None);
        }
        let held = elector.round(&leases).await;
        let mine: BTreeSet<IpAddr> = want
            .keys()
            .copied()
            .filter(|ip| held.contains(&lease_name(*ip)))
            .collect();
        for ip in announced.difference(&mine) {
            announce::let_go(&opts.iface, *ip);
            hold(&mut holds, *ip, Duration::ZERO);
        }
        // The data plane lets this node's ARP about an address out until its lease
        // would run out (set before the gratuitous ARP that claims it).
        let now = Instant::now();
        for ip in &mine {
            if let Some(until) = elector.deadline(&lease_name(*ip)) {
                hold(&mut holds, *ip, until.saturating_duration_since(now));
            }
        }
        for ip in mine.difference(&announced) {
            announce::claim(&opts.iface, *ip);
        }
        announced = mine;
        stats
            .announced
            .store(announced.len() as u64, Ordering::Relaxed);
        if held.contains(IPAM_LEASE) {
            let generation = generation.load(Ordering::SeqCst);
            if planned != Some(generation) {
                planned = assign(&client, &services, &opts.pools, &stats)
                    .await
                    .then_some(generation);
            }
        } else {
            planned = None;
        }
    }
    for ip in std::mem::take(&mut announced) {
        announce::let_go(&opts.iface, ip);
        hold(&mut holds, ip, Duration::ZERO);
    }
    stats.announced.store(0, Ordering::Relaxed);
    elector.release_all().await;
}

fn hold(holds: &mut Option<NeighHolds>, ip: IpAddr, until: Duration) {
    if let Some(h) = holds
        && let Err(e) = h.hold(ip, until)
    {
        warn!(%ip, error = %e, "writing the neighbour answer hold");
    }
}

/// Plans the pools' addresses over the cached services and writes the changes to
/// their status. True when every write went through.
async fn assign(
    client: &Client,
    services: &reflector::Store<Service>,
    pools: &[Cidr],
    stats: &KubeLbStats,
) -> bool {
    let cached: BTreeMap<ObjectKey, Arc<Service>> = services
        .state()
        .into_iter()
        .map(|s| (ObjectKey::of(&s.metadata), s))
        .collect();
    let changes = lb_ipam::plan(cached.iter().map(|(k, s)| (k, s.as_ref())), pools);
    let mut all = true;
    for Assignment { service, ips } in changes {
        let rv = cached[&service].metadata.resource_version.clone();
        let ingress = (!ips.is_empty()).then(|| {
            ips.iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect::<Vec<_>>()
        });
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "status": {"loadBalancer": {"ingress": ingress}},
        });
        let api: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
        match api
            .patch_status(
                &service.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                stats.status_writes.fetch_add(1, Ordering::Relaxed);
                if ips.is_empty() {
                    info!(service = %service, "LoadBalancer addresses taken back");
                } else {
                    info!(service = %service, ips = ?ips, "assigned LoadBalancer addresses");
                }
            }
            Err(e) => {
                all = false;
                stats.status_failures.fetch_add(1, Ordering::Relaxed);
                warn!(service = %service, error = %e, "writing the LoadBalancer status; planned again next round");
            }
        }
    }
    all
}
