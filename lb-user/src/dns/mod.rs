//! The cluster's DNS for the objects the agent follows (the seeds' "stable IP and
//! DNS name"): `zone` keeps the names (from the tracked objects, one service at a
//! time), `answer` answers a query from them, `server` listens on the node's
//! address, `cluster_service` puts the `kube-dns` service the pods reach it through
//! into the embedded store, and `upstream` says where other names go.

pub mod answer;
pub mod cluster_service;
pub mod server;
pub mod upstream;
pub mod zone;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock, atomic::Ordering},
};

use tracing::{info, warn};

use crate::{model::ObjectKey, state::Tracked};
use zone::Zone;

/// What the agent's DNS serves, and where.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The zone, `cluster.local` (kubelet's --cluster-domain).
    pub domain: String,
    /// The cluster DNS service's addresses (kubelet's --cluster-dns), at most one per
    /// family, the primary first: the `kube-system/kube-dns` service the agent keeps
    /// in the embedded store.
    pub cluster_ips: Vec<IpAddr>,
    /// Where other names are forwarded (none: refused).
    pub upstreams: Vec<SocketAddr>,
}

/// The agent's DNS: the zone it keeps in step with the objects, and serves.
pub struct Names {
    zone: Arc<RwLock<Zone>>,
    /// The generation of the facts the zone was built from or last brought in line
    /// with ([`Tracked::generation`]).
    built: u64,
    stats: Arc<server::DnsStats>,
    clients: Arc<RwLock<server::Clients>>,
    pub opts: DnsOptions,
    /// Why the cluster DNS service was last refused by the store (logged once).
    pub refused: Option<String>,
}

impl Names {
    /// The zone of `tracked`, served on port 53 of each of `addrs` (the node's
    /// address of each family served; a port another process holds costs that
    /// listener, logged, never the agent), counting in `stats`. Names outside the
    /// zone are forwarded for `clients` only (and the pods
    /// [`follow`](Self::follow) adds).
    pub fn start(
        opts: DnsOptions,
        tracked: &Tracked,
        addrs: &[IpAddr],
        stats: Arc<server::DnsStats>,
        clients: server::Clients,
    ) -> Names {
        let zone = built_zone(&opts, tracked);
        stats.names.store(zone.len() as u64, Ordering::Relaxed);
        let zone = Arc::new(RwLock::new(zone));
        let clients = Arc::new(RwLock::new(clients));
        for addr in addrs {
            let listen = server::Listen {
                addr: SocketAddr::new(*addr, 53),
                upstreams: opts.upstreams.clone(),
            };
            let serving = server::serve(
                Arc::clone(&zone),
                listen,
                Arc::clone(&stats),
                Arc::clone(&clients),
            );
            if let Err(e) = serving {
                warn!(error = format!("{e:#}"), "DNS is not served");
            }
        }
        Names {
            zone,
            built: tracked.generation(),
            stats,
            clients,
            opts,
            refused: None,
        }
    }

    /// Whether a [`follow`](Self::follow) of `tracked` builds the zone whole (a
    /// `full` one of facts the zone is not of yet): [`build`](Self::build) can
    /// build it beforehand, on another thread.
    pub fn zone_due(&self, tracked: &Tracked, full: bool) -> bool {
        full && tracked.generation() != self.built
    }

    /// The zone of `tracked` built whole, and its pods' addresses, for
    /// [`follow`](Self::follow).
    pub fn build(&self, tracked: &Tracked) -> Built {
        Built {
            zone: built_zone(&self.opts, tracked),
            // Here, not in `follow` on the agent's own thread: 1,000,000 pods'
            // addresses take ~0.1 s of a core.
            pods: tracked.state.pod_addrs().collect(),
        }
    }

    /// Brings the names of `services` (every service when `full`) in line with
    /// `tracked`, in the round that programs them; `pods`: addresses of pods the
    /// round brought (every pod's when `full`), whose queries are forwarded;
    /// `built`: the zone of `tracked` when [`build`](Self::build) built it already.
    pub fn follow(
        &mut self,
        tracked: &Tracked,
        full: bool,
        services: &BTreeSet<ObjectKey>,
        pods: &[IpAddr],
        built: Option<Built>,
    ) {
        let (built, built_pods) = match built {
            Some(Built { zone, pods }) => (Some(zone), Some(pods)),
            None => (None, None),
        };
        {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            if full {
                clients.pods = built_pods.unwrap_or_else(|| tracked.state.pod_addrs().collect());
            } else {
                clients.pods.extend(pods);
            }
        }
        // The zone of the facts as they are: at start, the first round's full plan
        // finds the zone `start` built (at 100,000 services, ~0.6 s and ~75 MB of a
        // second zone beside the first, saved).
        if tracked.generation() == self.built {
            let mut zone = self.zone.write().unwrap_or_else(|e| e.into_inner());
            zone.set_serial(tracked.state.revision);
            return;
        }
        self.built = tracked.generation();
        if full {
            let fresh = built.unwrap_or_else(|| built_zone(&self.opts, tracked));
            self.stats
                .names
                .store(fresh.len() as u64, Ordering::Relaxed);
            *self.zone.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            return;
        }
        if services.is_empty() {
            return;
        }
        let mut zone = self.zone.write().unwrap_or_else(|e| e.into_inner());
        for key in services {
            zone.update(tracked, key);
        }
        zone.set_serial(tracked.state.revision);
        self.stats.names.store(zone.len() as u64, Ordering::Relaxed);
    }
}

/// What [`Names::build`] builds of the facts beforehand: the zone, and the
/// addresses of the pods whose queries are forwarded.
pub struct Built {
    zone: Zone,
    pods: server::Addrs,
}

/// The zone of `tracked`, built whole (logged: at 100,000 services it takes
/// about half a second).
fn built_zone(opts: &DnsOptions, tracked: &Tracked) -> Zone {
    let started = std::time::Instant::now();
    let zone = Zone::of(&opts.domain, &opts.cluster_ips, tracked);
    info!(
        names = zone.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "DNS zone built"
    );
    zone
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{port: 80}]\n---\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: [{name: c, image: i}]\nstatus:\n  podIP: 10.244.0.7\n---\n";

    fn zone_len(names: &Names) -> usize {
        names.zone.read().unwrap().len()
    }

    #[test]
    fn a_full_round_rebuilds_the_zone_only_when_the_facts_changed_since_it_was_built() {
        let mut tracked = Tracked::new(crate::store::apply::applied(&format!("{WEB}{POD}")).into());
        let opts = DnsOptions {
            domain: "cluster.local".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            upstreams: Vec::new(),
        };
        let clients = server::Clients {
            node_addrs: Vec::new(),
            cidrs: Vec::new(),
            pods: Default::default(),
        };
        let mut names = Names::start(opts, &tracked, &[], Arc::default(), clients);
        assert!(zone_len(&names) > 0, "the zone of web");
        // Marked: a rebuild would put web's names back.
        *names.zone.write().unwrap() = Zone::new("cluster.local", &[]);
        let none = BTreeSet::new();
        names.follow(&tracked, true, &none, &[], None);
        assert_eq!(zone_len(&names), 0, "the facts it was built from: kept");
        assert!(!names.zone_due(&tracked, true));
        tracked.take(Vec::<crate::state::FactChange>::new());
        names.follow(&tracked, true, &none, &[], None);
        assert!(zone_len(&names) > 0, "facts taken since: built again");
        // Built beforehand (the agent builds it while it works out its entries):
        // the same.
        *names.zone.write().unwrap() = Zone::new("cluster.local", &[]);
        tracked.take(Vec::<crate::state::FactChange>::new());
        assert!(names.zone_due(&tracked, true) && !names.zone_due(&tracked, false));
        let built = names.build(&tracked);
        names.clients.write().unwrap().pods = Default::default();
        names.follow(&tracked, true, &none, &[], Some(built));
        assert!(zone_len(&names) > 0, "the zone built beforehand");
        let pod = "10.244.0.7".parse().unwrap();
        assert!(
            names.clients.read().unwrap().pods.contains(pod),
            "with its pods"
        );
        assert!(!names.zone_due(&tracked, true), "of these facts now");
    }
}
