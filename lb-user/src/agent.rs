//! The agent: loads and attaches the data plane, then keeps the maps equal to what
//! the source says, in one direction: source -> state -> plan -> entries -> sync ->
//! maps. It also follows the routes to pods, attaching to each interface behind
//! which pods live as it appears. A service whose entries the maps refuse is
//! reported (log, `lb describe`) and retried every tick; the others stay programmed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use tokio::{signal::unix::SignalKind, sync::mpsc};
use tracing::{info, warn};

use crate::{
    announce::{self, Announcer},
    dns::{DnsOptions, Names, cluster_service},
    entries::{LeftOut, Programmed, Scope, Update},
    kube_lb::{self, KubeLb},
    kube_source::KubeSource,
    loader::{Dataplane, LoadConfig},
    model::{Family, ObjectKey},
    netif::{self, Routes},
    plan::{self, Node, PortPlan},
    sizes::{MapSizes, Need, NodeMemory, SizeFlags},
    state::{Change, Touched, Tracked},
    status::{self, NodeStatus},
    store::Store,
    svc_health::{self, ServiceHealth},
    telemetry::{Snapshot, Telemetry},
};

/// Default root of the bpffs lb pins its maps under (`ROOT/lb/NODE-NAME/`).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// How often the store is looked at without an event (and refused services tried
/// again); also how often routes are read when rtnetlink's notifications cannot be.
const RESYNC: Duration = Duration::from_secs(1);
/// How long the agent waits after a route, rule or link notification for the rest
/// of its burst (a CNI plugin adds a pod's veth, then its address and route).
const ROUTE_SETTLE: Duration = Duration::from_millis(20);
/// The shortest time between two reads of every route on notifications: a node
/// whose routes churn (a BGP feed) costs the agent at most a few reads a second.
const ROUTES_MIN_GAP: Duration = Duration::from_millis(200);
/// How often expired assured flows are swept.
const SWEEP: Duration = Duration::from_secs(10);
/// The fewest changes in one round taken as a bulk write (the store read whole, or
/// the facts' maps rebuilt full after them): below it either saves too little to
/// matter.
const BULK_CHANGES: usize = 10_000;

/// Kubernetes mode's Leases (LoadBalancer addresses and their announcement).
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub timing: crate::lease::Timing,
}

pub struct AgentOptions {
    pub ifaces: Vec<String>,
    pub node_ips: Vec<IpAddr>,
    pub node_name: String,
    pub store: PathBuf,
    pub bpffs: PathBuf,
    /// cgroup v2 directory for socket-level balancing (None: the cgroup2 root).
    pub cgroup: Option<PathBuf>,
    /// What the programs are told at load time (the SNAT address is the node's).
    pub load: LoadConfig,
    /// Address pools LoadBalancer services get their address from (network, prefix).
    pub lb_pools: Vec<crate::model::Cidr>,
    /// Kubernetes mode: the API server to follow (None: the embedded store).
    pub kube: Option<kube::Config>,
    /// Kubernetes mode: where and how LoadBalancer leases are held.
    pub leases: LeaseOptions,
    /// Pod networks: interfaces routing into them are pods' (`--cluster-cidr`).
    pub cluster_cidrs: Vec<crate::model::Cidr>,
    /// How big the maps are made (`--max-frontends`, ...).
    pub sizes: SizeFlags,
    /// Where `/metrics` is served (None: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Where `/healthz` and `/livez` are served (None: not served).
    pub healthz_addr: Option<SocketAddr>,
    /// The cluster DNS the agent serves (None: none).
    pub dns: Option<DnsOptions>,
    /// How often routes and rules are read whole besides their notifications.
    pub routes_resync: Duration,
}

/// When the EndpointSlice change `c` was made, as its controller recorded it.
fn trigger_time(c: &crate::state::Change) -> Option<SystemTime> {
    const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";
    let Some(crate::model::Object::EndpointSlice(slice)) = &c.object else {
        return None;
    };
    let at: jiff::Timestamp = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER)?
        .parse()
        .ok()?;
    Some(SystemTime::from(at))
}

/// Waits for notifications of route, rule or link changes (forever without a
/// subscription), lets the rest of their burst come ([`ROUTE_SETTLE`], and at
/// least until `not_before`) and takes every one waiting: Ok once some came or
/// were lost, so routes are to be read.
async fn routes_changed(
    events: Option<&tokio::io::unix::AsyncFd<crate::netif::RouteEvents>>,
    not_before: Instant,
) -> std::io::Result<()> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        let mut ready = events.readable().await?;
        let settled = Instant::now() + ROUTE_SETTLE;
        tokio::time::sleep_until(settled.max(not_before).into()).await;
        // Read until the socket said EAGAIN: its readiness is cleared (a
        // notification after that raises it again).
        let any = events.get_ref().drain()?;
        ready.clear_ready();
        if any {
            return Ok(());
        }
    }
}

/// Where the agent for `node_name` pins its maps.
pub fn pin_dir(bpffs: &Path, node_name: &str) -> PathBuf {
    bpffs.join("lb").join(node_name)
}

/// Mounts a bpffs at `dir` unless one is there.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpffs at {}", dir.display()))?;
    info!(dir = %dir.display(), "mounted bpffs");
    Ok(())
}

struct Agent {
    dp: Dataplane,
    store: Store,
    node: Node,
    /// What the maps hold (read at start, then kept in step with every write).
    programmed: Programmed,
    /// The store revision `tracked` is at (None: read it whole).
    seen: Option<u64>,
    /// The revision whose log the agent last copied into the store's database
    /// (`copy_store_log`), and the copy under way.
    log_copied: Option<u64>,
    log_copy: Option<tokio::task::JoinHandle<()>>,
    /// The source's objects as last read, with their indexes.
    tracked: Tracked,
    /// Every service's plans as made to size the maps, with the store revision
    /// they are of: the first full round takes them instead of planning again.
    start_plans: Option<(u64, Vec<PortPlan>)>,
    /// Plan every service next time (start, node addresses, refusals healed).
    plan_all: bool,
    /// Services whose entries the maps refused, with why.
    refused: BTreeMap<ObjectKey, String>,
    /// Those of `refused` left out for want of room (retried when room grows).
    left_for_room: BTreeSet<ObjectKey>,
    /// The maps' room (free frontends, free slots) when services were last left out.
    room_when_left: (usize, usize),
    /// When expired assured flows were last swept.
    swept: Instant,
    /// The last round could not read the rules and routes (said once).
    routing_unread: bool,
    /// How often routes and rules are read whole: every [`RESYNC`] without
    /// rtnetlink's notifications, else `--routes-resync-period` (a safety net).
    routes_resync: Duration,
    /// When routes and rules were last read whole.
    routes_read: Instant,
    /// What the status file says (None: not written yet by this agent).
    published: Option<BTreeMap<ObjectKey, String>>,
    store_dir: PathBuf,
    /// The routes pods were last followed with (the tick skips the walk over every
    /// endpoint while they stay the same).
    known_routes: Option<Routes>,
    /// Store mode's LoadBalancer announcements (heartbeats in the store).
    announcer: Announcer,
    /// Kubernetes mode's LoadBalancer addresses and announcements (Leases); None
    /// without `--lb-pool` (another controller's job then) or in store mode.
    kube_lb: Option<KubeLb>,
    lb_pools: Vec<crate::model::Cidr>,
    /// Ready endpoints on this node of each LoadBalancer service with
    /// `externalTrafficPolicy: Local` (it may announce only with some).
    local_ready: BTreeMap<ObjectKey, usize>,
    /// Kubernetes mode's source (None: the embedded store is the source).
    kube: Option<KubeSource>,
    cluster_cidrs: Vec<crate::model::Cidr>,
    /// The maps' sizes as loaded.
    sizes: MapSizes,
    telemetry: Arc<Telemetry>,
    /// healthCheckNodePort and local ready endpoints of each LoadBalancer service
    /// with `externalTrafficPolicy: Local`, as last planned.
    health_checks: BTreeMap<ObjectKey, (u16, usize)>,
    /// Their listeners (started when the first one is wanted).
    service_health: Option<ServiceHealth>,
    /// Kubernetes mode: when the EndpointSlice changes being programmed were made
    /// (their `endpoints.kubernetes.io/last-change-trigger-time`).
    triggered: Vec<SystemTime>,
    /// The cluster DNS it serves.
    names: Option<Names>,
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    // Everything the flags name is checked before anything is loaded or attached.
    if opts.ifaces.is_empty() {
        bail!(
            "--iface: at least one external interface is required (the node's uplink, e.g. eth0)"
        );
    }
    for iface in &opts.ifaces {
        crate::loader::ifindex(iface).with_context(|| format!("--iface {iface}"))?;
    }
    // Each family's addresses: those --node-ip gives of it, else the interfaces'.
    let mut addrs: Vec<Ipv4Addr> = opts
        .node_ips
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut addrs6: Vec<std::net::Ipv6Addr> = opts
        .node_ips
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    if addrs.is_empty() {
        for iface in &opts.ifaces {
            addrs.extend(netif::ipv4_addrs(iface));
        }
    }
    if addrs6.is_empty() {
        for iface in &opts.ifaces {
            addrs6.extend(netif::ipv6_addrs(iface));
        }
    }
    if addrs.is_empty() {
        bail!(
            "no node address: the interfaces {:?} have no IPv4 address and no --node-ip was given",
            opts.ifaces
        );
    }
    if let Some(dir) = &opts.cgroup
        && !dir.is_dir()
    {
        bail!("--cgroup {}: not a directory", dir.display());
    }
    Store::new(&opts.store).init()?;
    ensure_bpffs(&opts.bpffs)?;
    let pins = pin_dir(&opts.bpffs, &opts.node_name);
    let node = Node {
        name: opts.node_name.clone(),
        addrs: addrs.clone(),
        addrs6: addrs6.clone(),
    };
    // Store events (or, in Kubernetes mode, watch events) wake the loop at once;
    // the tick catches what events miss.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let kube = match opts.kube.clone() {
        Some(cfg) => Some(KubeSource::start(cfg, tx.clone()).await?),
        None => None,
    };
    // The source is read (the API's objects listed) before the maps are made, so
    // they are made big enough for it; in store mode, the plans made for that serve
    // the first round (in Kubernetes mode the API may have moved on meanwhile).
    let store = Store::new(&opts.store);
    let tracked = match &kube {
        Some(k) => Tracked::new(k.state().into()),
        None => Tracked::new(store.load_facts()?),
    };
    let start_plans = plan::plan_all(&tracked, &node);
    let need = need(&start_plans);
    let memory = NodeMemory::here();
    let (sizes, why) = MapSizes::choose(&opts.sizes, memory, need);
    info!(
        sizes = why.join(", "),
        bytes = sizes.bytes(memory.cpus),
        "map sizes"
    );
    let cfg = LoadConfig {
        snat_addr: addrs.first().copied(),
        snat_addr6: addrs6.first().copied(),
        sizes,
        ..opts.load
    };
    let mut dp = Dataplane::load_with(Some(&pins), &cfg)?;
    for iface in &opts.ifaces {
        dp.attach_external(iface)?;
    }
    let cgroup = opts.cgroup.clone().or_else(crate::loader::cgroup2_root);
    match &cgroup {
        Some(dir) => dp.attach_cgroup(dir)?,
        None => warn!("no cgroup v2 mount: the node's own processes will not reach ClusterIPs"),
    }
    let (telemetry, mut asked) =
        Telemetry::new(pins.clone(), kube.is_none().then(|| opts.store.clone()));
    // A port another process holds costs that listener, never the data plane.
    if let Err(e) = telemetry.serve(opts.metrics_addr, opts.healthz_addr) {
        warn!(
            error = format!("{e:#}"),
            "metrics and health are not served"
        );
    }
    // Addresses a killed agent of this node left on the uplink are not this one's
    // to answer for (yet).
    announce::clear_stale(&opts.ifaces[0], &opts.lb_pools);
    let lb_stats = Arc::new(kube_lb::KubeLbStats::default());
    let kube_lb = match (&kube, &opts.kube) {
        (Some(k), Some(cfg)) if !opts.lb_pools.is_empty() => {
            let (services, generation) = k.services();
            telemetry.count_lb(Arc::clone(&lb_stats));
            Some(KubeLb::start(
                cfg.clone(),
                services,
                generation,
                kube_lb::Options {
                    pins: pins.clone(),
                    namespace: opts.leases.namespace.clone(),
                    node: opts.node_name.clone(),
                    iface: opts.ifaces[0].clone(),
                    pools: opts.lb_pools.clone(),
                    timing: opts.leases.timing,
                },
                lb_stats,
            )?)
        }
        _ => None,
    };
    let actual = dp.maps.read_entries()?;
    info!(node = %opts.node_name, addrs = ?addrs, addrs6 = ?addrs6, pins = %pins.display(), adopted_frontends = actual.services.len(),
        adopted_slots = actual.backends.len(),
        clock = %crate::loader::kernel_hz().map_or("coarse ns".to_string(), |hz| format!("jiffies, HZ={hz}")),
        "agent started");
    // Subscribed before routes are first read, so that no change falls between.
    let subscribed = crate::netif::RouteEvents::subscribe().and_then(|events| {
        // SAFETY: `RouteEvents` owns its descriptor, which stays open and the same
        // until it is dropped with the AsyncFd.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)
    });
    let mut route_events = match subscribed {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(error = %e, "cannot follow rtnetlink's route notifications: routes read every second");
            None
        }
    };
    let mut agent = Agent {
        dp,
        store,
        node,
        programmed: Programmed::adopt(actual, sizes.into()),
        seen: kube.is_none().then_some(tracked.state.revision),
        log_copied: None,
        log_copy: None,
        start_plans: kube
            .is_none()
            .then_some((tracked.state.revision, start_plans)),
        tracked,
        plan_all: true,
        refused: BTreeMap::new(),
        left_for_room: BTreeSet::new(),
        room_when_left: (usize::MAX, usize::MAX),
        swept: Instant::now(),
        routing_unread: false,
        routes_resync: if route_events.is_some() {
            opts.routes_resync
        } else {
            RESYNC
        },
        routes_read: Instant::now(),
        published: None,
        store_dir: opts.store.clone(),
        known_routes: None,
        announcer: Announcer::new(&opts.store, &opts.node_name, &opts.ifaces[0], &pins),
        kube_lb,
        lb_pools: opts.lb_pools.clone(),
        local_ready: BTreeMap::new(),
        kube,
        cluster_cidrs: opts.cluster_cidrs.clone(),
        sizes,
        telemetry,
        health_checks: BTreeMap::new(),
        service_health: None,
        triggered: Vec::new(),
        names: None,
    };
    let _watcher = crate::store::on_commit(&opts.store, move || {
        let _ = tx.send(());
    })
    .with_context(|| format!("watching store {}", opts.store.display()))?;

    if let Some(dns) = opts.dns.clone() {
        let stats = Arc::default();
        agent.telemetry.count_dns(Arc::clone(&stats));
        let clients = crate::dns::server::Clients {
            node_addrs: [Family::V4, Family::V6]
                .into_iter()
                .flat_map(|f| agent.node.addrs_of(f))
                .collect(),
            cidrs: opts.cluster_cidrs.clone(),
            pods: Default::default(),
        };
        let listen: Vec<IpAddr> = dns_listeners(&agent.node, &dns.cluster_ips)
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        agent.names = Some(Names::start(dns, &agent.tracked, &listen, stats, clients));
        agent.keep_cluster_dns();
    }
    // What an earlier agent of this node could not program is not this one's news.
    agent.publish_refused();
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(RESYNC);
    agent.reconcile(true)?;
    agent.follow_routes();
    agent.telemetry.round();
    loop {
        let mut events_failed = None;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some(()) = rx.recv() => agent.reconcile(false)?,
            Some(ask) = asked.recv() => {
                let _ = ask.send(agent.snapshot());
            }
            changed = routes_changed(route_events.as_ref(), agent.routes_read + ROUTES_MIN_GAP) => match changed {
                Ok(()) => agent.follow_routes(),
                Err(e) => events_failed = Some(e),
            },
            _ = tick.tick() => {
                agent.reconcile(true)?;
                if agent.routes_due() {
                    agent.follow_routes();
                }
                agent.keep_cluster_dns();
                agent.refresh_pod_roles();
                agent.announce();
                agent.sweep_flows();
                agent.copy_store_log();
                agent.telemetry.round();
            }
        }
        if let Some(e) = events_failed {
            warn!(error = %e, "rtnetlink's route notifications failed: routes read every second");
            route_events = None;
            agent.routes_resync = RESYNC;
        }
    }
    match &mut agent.kube_lb {
        Some(k) => k.stop(),
        None if agent.kube.is_none() => agent.announcer.withdraw(),
        None => {}
    }
    info!(pins = %pins.display(), "agent stopping: programs stay attached and maps pinned, so forwarding goes on (`lb reset` removes them)");
    Ok(())
}

impl Agent {
    /// Brings the maps in line with the store. `retry`: services refused before are
    /// tried again even when the store did not change (the periodic round).
    fn reconcile(&mut self, retry: bool) -> Result<()> {
        self.sync_maps(retry)?;
        if !self.lb_pools.is_empty() && self.kube.is_none() && self.lb_addresses_due() {
            let assigned = self.store.assign_load_balancer_ips(&self.lb_pools)?;
            for (svc, ip) in &assigned {
                info!(service = %svc, %ip, "assigned LoadBalancer address");
            }
            if !assigned.is_empty() {
                self.sync_maps(false)?;
            }
        }
        Ok(())
    }

    /// Each LoadBalancer service with `externalTrafficPolicy: Local` among those
    /// just planned (every service when `full`): its healthCheckNodePort (if any)
    /// and how many of its ready endpoints are on this node, as `plans` has them.
    fn local_endpoints(
        &self,
        full: bool,
        services: &BTreeSet<ObjectKey>,
        plans: &[PortPlan],
    ) -> Vec<(ObjectKey, Option<u16>, usize)> {
        let state = &self.tracked.state;
        let planned: Box<dyn Iterator<Item = &ObjectKey>> = if full {
            Box::new(state.services.keys())
        } else {
            Box::new(services.iter())
        };
        let mut wanted: BTreeMap<&ObjectKey, (Option<u16>, BTreeSet<IpAddr>)> = BTreeMap::new();
        for key in planned {
            let Some(svc) = state.services.get(key) else {
                continue;
            };
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let port = spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            if crate::model::service_type(svc) == crate::model::TYPE_LOAD_BALANCER
                && spec.external_traffic_policy.as_deref() == Some("Local")
            {
                wanted.insert(key, (port, BTreeSet::new()));
            }
        }
        if !wanted.is_empty() {
            for p in plans {
                if let Some((_, local)) = wanted.get_mut(&p.service) {
                    let here = p.endpoints.iter().map(|(a, _)| *a);
                    local.extend(here.filter(|a| !p.remote.contains(a)));
                }
            }
        }
        wanted
            .into_iter()
            .map(|(key, (port, local))| {
                // A dual-stack pod is one endpoint with an address in each family:
                // the count is the larger family's, not both families' together.
                let v6 = local.iter().filter(|a| a.is_ipv6()).count();
                (key.clone(), port, v6.max(local.len() - v6))
            })
            .collect()
    }

    /// Brings the healthCheckNodePorts in line with the services just planned (every
    /// service when `full`): each LoadBalancer service with `externalTrafficPolicy:
    /// Local` and a healthCheckNodePort answers with its ready endpoints on this node
    /// (`local`, from [`Agent::local_endpoints`]).
    fn follow_health_checks(
        &mut self,
        full: bool,
        services: &BTreeSet<ObjectKey>,
        local: Vec<(ObjectKey, Option<u16>, usize)>,
    ) {
        let before = self.health_checks.clone();
        if full {
            self.health_checks.clear();
            self.local_ready.clear();
        } else {
            self.health_checks.retain(|k, _| !services.contains(k));
            self.local_ready.retain(|k, _| !services.contains(k));
        }
        for (key, port, n) in local {
            if let Some(port) = port {
                self.health_checks.insert(key.clone(), (port, n));
            }
            self.local_ready.insert(key, n);
        }
        if self.health_checks == before {
            return;
        }
        if self.service_health.is_none() {
            match ServiceHealth::start(Arc::clone(&self.telemetry)) {
                Ok(h) => self.service_health = Some(h),
                Err(e) => {
                    return warn!(
                        error = format!("{e:#}"),
                        "healthCheckNodePorts are not served"
                    );
                }
            }
        }
        let targets = self
            .health_checks
            .iter()
            .map(|(k, (port, n))| {
                (
                    *port,
                    svc_health::Target {
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                        local_endpoints: *n,
                    },
                )
            })
            .collect();
        if let Some(h) = &self.service_health {
            h.set(targets);
        }
    }

    /// What the metrics need that only the agent knows: which service each
    /// service-port id is, the endpoints' ids, the revision and sizes programmed.
    fn snapshot(&self) -> Snapshot {
        let entries = self.programmed.entries();
        let mut services = Vec::new();
        let mut seen = BTreeSet::new();
        for key in self.programmed.services() {
            let spec_ports = self
                .tracked
                .state
                .services
                .get(key)
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.ports.as_ref());
            for fk in self.programmed.owned_by(key) {
                let Some(v) = entries.services.get(fk) else {
                    continue;
                };
                if !seen.insert(v.svc_id) {
                    continue;
                }
                let number = fk.port();
                let port = spec_ports
                    .and_then(|ports| {
                        ports.iter().find(|p| {
                            p.port == i32::from(number) || p.node_port == Some(i32::from(number))
                        })
                    })
                    .map_or_else(|| number.to_string(), plan::port_id);
                services.push((v.svc_id, key.namespace.clone(), key.name.clone(), port));
            }
        }
        let mut endpoints = Vec::new();
        let mut seen = BTreeSet::new();
        for b in entries.backends.values() {
            if seen.insert(b.backend_id()) {
                endpoints.push((
                    b.backend_id(),
                    b.addr(),
                    b.port(),
                    plan::proto_name(b.proto()),
                ));
            }
        }
        Snapshot {
            revision: self.tracked.state.revision,
            services,
            endpoints,
            frontends: entries.services.len(),
            slots: entries.backends.len(),
            sizes: self.sizes,
            refused: self.refused.len(),
        }
    }

    /// When the change just programmed was written to the store (embedded store
    /// only; the store records it in the same transaction as the revision).
    fn committed_at(&self) -> Option<SystemTime> {
        if self.kube.is_some() {
            return None;
        }
        self.store
            .written_at(self.tracked.state.revision)
            .ok()
            .flatten()
    }

    /// With the embedded store, keeps the cluster DNS service and this node's
    /// EndpointSlice for it there (see [`cluster_service`]); a refusal (its address
    /// taken, outside the service range) is logged once per reason.
    fn keep_cluster_dns(&mut self) {
        let (Some(names), None) = (&mut self.names, &self.kube) else {
            return;
        };
        let dns = dns_listeners(&self.node, &names.opts.cluster_ips);
        if dns.is_empty() {
            // Written without a clusterIP, the service would get one the store picks.
            let why = "the node has no address of --cluster-dns's families".to_string();
            if names.refused.as_ref() != Some(&why) {
                warn!(error = %why, "the cluster DNS service could not be written: pods cannot reach DNS at --cluster-dns");
                names.refused = Some(why);
            }
            return;
        }
        let due = cluster_service::due(&self.tracked.state, &dns, &self.node.name);
        if due != cluster_service::Due::Write {
            names.refused = None;
            return;
        }
        let manifest = cluster_service::manifest(&dns, &self.node.name);
        let written = crate::model::parse_manifest("(the agent's kube-dns)", &manifest)
            .map_err(anyhow::Error::from)
            .and_then(|docs| {
                let ranges = crate::store::Ranges::default();
                Ok(self
                    .store
                    .apply(&docs, &ranges, crate::store::Mode::Apply)?)
            });
        match written {
            Ok(_) => {
                names.refused = None;
                info!(service = %format!("{}/{}", cluster_service::NAMESPACE, cluster_service::NAME), cluster_ips = ?dns.iter().map(|d| d.0).collect::<Vec<_>>(), endpoints = ?dns.iter().map(|d| d.1).collect::<Vec<_>>(), "cluster DNS service written");
            }
            Err(e) => {
                let why = format!("{e:#}");
                if names.refused.as_ref() != Some(&why) {
                    warn!(error = %why, "the cluster DNS service could not be written: pods cannot reach DNS at --cluster-dns");
                    names.refused = Some(why);
                }
            }
        }
    }

    /// Whether a LoadBalancer service waits for an address, or another kind holds one.
    fn lb_addresses_due(&self) -> bool {
        self.tracked.state.services.values().any(|s| {
            let is_lb = crate::model::service_type(s) == crate::model::TYPE_LOAD_BALANCER;
            let has_address = !crate::store::lb_ingress_ips(s).is_empty();
            is_lb != has_address
        })
    }

    /// Follows the node's routes and rules as they are now (on their
    /// notifications, and every `routes_resync`): interfaces routed to pods
    /// attached, and whether routes go by destination alone told to the data plane.
    fn follow_routes(&mut self) {
        self.routes_read = Instant::now();
        self.follow_known_pod_interfaces(false);
        self.follow_routing();
    }

    /// Whether routes and rules are due to be read whole (the periodic round).
    fn routes_due(&self) -> bool {
        self.routes_read.elapsed() >= self.routes_resync
    }

    /// Tells the data plane whether the node's routes depend on the destination
    /// alone (a rule or a multipath route may come or go); when they cannot be
    /// read, the programs key their FIB answers by the whole tuple.
    fn follow_routing(&mut self) {
        let read = crate::netif::RoutedByDestination::read();
        if let Err(e) = &read
            && !self.routing_unread
        {
            warn!(error = %e, "cannot read the routing rules and routes: FIB answers kept per flow");
        }
        self.routing_unread = read.is_err();
        let by_dst = read.unwrap_or_default();
        match self.dp.set_routing(by_dst) {
            Ok(true) => info!(
                by_destination_ipv4 = by_dst.v4,
                by_destination_ipv6 = by_dst.v6,
                "told the data plane whether routes go by destination alone (then a destination's flows share its FIB answers)"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot tell the data plane how routes are chosen"),
        }
    }

    /// Copies the store's log into its database once per revision the maps took
    /// (a bulk `lb apply` leaves that to the agents: done at once it would share the
    /// node with their reading of it), in a quiet second, on a thread of its own so
    /// that no round waits for it; a copy that finds nothing left is a few reads.
    fn copy_store_log(&mut self) {
        if self.kube.is_some() || self.log_copy.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        if self.seen.is_none() || self.log_copied == self.seen {
            return;
        }
        self.log_copied = self.seen;
        let store = Store::new(self.store.dir().to_path_buf());
        self.log_copy = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = store.checkpoint() {
                warn!(%error, "copying the store's log into its database (the next write does it)");
            }
        }));
    }

    /// Removes the assured flows that expired (nothing evicts them), every
    /// [`SWEEP`]; a failure is logged and tried again next time.
    fn sweep_flows(&mut self) {
        if self.swept.elapsed() < SWEEP {
            return;
        }
        self.swept = Instant::now();
        let ticks_per_s = crate::loader::kernel_hz().unwrap_or(1_000_000_000);
        let swept = self
            .dp
            .kernel_now()
            .map_err(anyhow::Error::from)
            .and_then(|now| {
                let timeouts = self.dp.ct_timeouts();
                Ok(self.dp.maps.sweep_assured(now, ticks_per_s, &timeouts)?)
            });
        match swept {
            Ok(0) => {}
            Ok(n) => info!(entries = n, "expired assured flows removed"),
            Err(e) => warn!(error = %e, "sweeping expired flows"),
        }
    }

    /// Heartbeat and LoadBalancer announcements: once per tick (never on store events,
    /// which heartbeats of other agents may cause). In Kubernetes mode: which of the
    /// addresses lb gave this node may announce, told to the lease task.
    fn announce(&mut self) {
        if let (Some(k), Some(source)) = (&self.kube_lb, &self.kube) {
            k.want(self.lb_wants(&source.node_names()));
            return;
        }
        if self.kube.is_some() {
            return;
        }
        let lb_ips = self
            .tracked
            .state
            .services
            .values()
            .flat_map(crate::store::lb_ingress_ips)
            .collect();
        self.announcer.sync(&lb_ips);
    }

    /// The pools' addresses of lb's LoadBalancer services this node may announce:
    /// all, except those of services with `externalTrafficPolicy: Local` and no
    /// ready endpoint here. Preferred for each: the first two of `nodes` in the
    /// address's ranking (none when a Local service uses it: any node with an
    /// endpoint will do).
    fn lb_wants(&self, nodes: &[String]) -> kube_lb::Wants {
        let mut by_ip: BTreeMap<IpAddr, (bool, bool)> = BTreeMap::new();
        for (key, svc) in &self.tracked.state.services {
            if !crate::lb_ipam::is_ours(svc) {
                continue;
            }
            let local = svc
                .spec
                .as_ref()
                .and_then(|s| s.external_traffic_policy.as_deref())
                == Some("Local");
            let here = !local || self.local_ready.get(key).is_some_and(|n| *n > 0);
            for ip in crate::lb_ipam::ingress_ips(svc) {
                if crate::lb_ipam::in_pools(&self.lb_pools, ip) {
                    let e = by_ip.entry(ip).or_insert((true, false));
                    e.0 &= here;
                    e.1 |= local;
                }
            }
        }
        by_ip
            .into_iter()
            .filter(|(_, (here, _))| *here)
            .map(|(ip, (_, local))| {
                let ranked = announce::ranking(nodes, ip);
                let preferred = (!local && ranked.contains(&self.node.name.as_str())).then(|| {
                    crate::lease::Preferred {
                        first: ranked[0].to_string(),
                        second: ranked.get(1).map(|s| s.to_string()),
                    }
                });
                (ip, preferred)
            })
            .collect()
    }

    fn sync_maps(&mut self, retry: bool) -> Result<()> {
        let started = Instant::now();
        if let Some(kube) = &self.kube {
            let Some(taken) = kube.changed() else {
                return Ok(());
            };
            for a in kube.node_addrs(&self.node.name) {
                let new = match a {
                    IpAddr::V4(a) if !self.node.addrs.contains(&a) => {
                        self.node.addrs.push(a);
                        true
                    }
                    IpAddr::V6(a) if !self.node.addrs6.contains(&a) => {
                        self.node.addrs6.push(a);
                        true
                    }
                    _ => false,
                };
                if new {
                    info!(addr = %a, "node address from the API");
                    self.plan_all = true;
                }
            }
            let changes = match taken {
                crate::kube_source::Taken::Whole(state) => {
                    self.tracked.state.revision = state.revision;
                    self.tracked.state.endpoints_from_slices = state.endpoints_from_slices;
                    self.tracked.state.changes_to(state)
                }
                crate::kube_source::Taken::Changes(changes) => changes,
            };
            self.triggered = changes.iter().filter_map(trigger_time).collect();
            return self.take_changes(changes, started);
        }
        let revision = self.store.revision()?;
        if self.seen == Some(revision) {
            if retry && (!self.refused.is_empty() || self.plan_all) {
                self.program(Vec::new(), BTreeSet::new(), started)?;
            }
            return Ok(());
        }
        let Some(seen) = self.seen else {
            return self.load_whole(started);
        };
        // A bulk write of at least as many objects as the agent holds is read as a
        // restart reads the store: whole, decoded on every core and indexed at once,
        // then planned in one full round. Taken change by change, 1,100,000 new
        // objects took the agent 1.3-1.6 times as long.
        let held = self.tracked.state.objects();
        let changed = self.store.changed_since(seen)? as usize;
        if changed >= BULK_CHANGES && changed >= held {
            info!(changed, held, "a bulk write: reading the store whole");
            return self.load_whole(started);
        }
        // Taken a batch at a time, so a bulk write is never held whole as objects.
        let mut touched = Touched::default();
        let tracked = &mut self.tracked;
        let mut taken = 0;
        let Some(read) = self.store.fact_changes_since(seen, |batch| {
            taken += batch.len();
            touched.extend(tracked.take(batch))
        })?
        else {
            info!(
                seen,
                revision, "deletions since our revision were pruned: reading the store whole"
            );
            return self.load_whole(started);
        };
        self.tracked.state.revision = read;
        self.seen = Some(read);
        // A bulk write (a quarter of the store or more) leaves the maps it filled
        // half empty: rebuilt full, before planning adds its own peak.
        if taken >= BULK_CHANGES && taken * 4 >= self.tracked.state.objects() {
            self.tracked.state.compact();
        }
        self.program(touched.addrs, touched.services, started)
    }

    /// Reads the store whole and plans every service (at start, or when the store
    /// no longer has the changes since what was last read).
    fn load_whole(&mut self, started: Instant) -> Result<()> {
        self.tracked = crate::freed::kept_while(|| self.store.load_facts().map(Tracked::new))?;
        self.seen = Some(self.tracked.state.revision);
        self.plan_all = true;
        self.program(Vec::new(), BTreeSet::new(), started)
    }

    /// Takes `changes` into the state and brings the maps in line with them.
    fn take_changes(&mut self, changes: Vec<Change>, started: Instant) -> Result<()> {
        let touched = self.tracked.take(changes);
        self.program(touched.addrs, touched.services, started)
    }

    /// Follows the routes to every pod of the state as last read: when the routes
    /// changed since the last time, or `force`d (the state changed whole).
    fn follow_known_pod_interfaces(&mut self, force: bool) {
        let routes = Routes::read().ok();
        if !force && routes.is_some() && routes == self.known_routes {
            return;
        }
        let addrs: Vec<IpAddr> = self.tracked.state.pod_addrs().collect();
        self.follow_pod_interfaces(addrs.into_iter());
        self.known_routes = routes;
    }

    /// Re-plans `services` and those refused before (every service when a full plan
    /// is due), writes the difference to the maps and ends flows to endpoints that
    /// are gone (`started`: when reading the source began). A write the maps refuse
    /// is retried service by service, so only the services it belongs to are left
    /// out (and reported).
    fn program(
        &mut self,
        addrs: Vec<IpAddr>,
        mut services: BTreeSet<ObjectKey>,
        started: Instant,
    ) -> Result<()> {
        let loaded = started.elapsed();
        // Names change in the round that reads the change, before the maps are
        // written. A zone built whole (a full round's) is built on a thread of its
        // own while this one works out the entries, once the plans are made (they
        // take every core; at 100,000 services the zone takes ~0.4 s of a core, the
        // entries ~0.6 s of another).
        let zone_due =
            (self.names.as_ref()).is_some_and(|n| n.zone_due(&self.tracked, self.plan_all));
        if !zone_due && let Some(names) = &mut self.names {
            names.follow(&self.tracked, self.plan_all, &services, &addrs, None);
        }
        if self.plan_all {
            self.follow_known_pod_interfaces(true);
        } else {
            self.follow_pod_interfaces(addrs.into_iter());
        }
        // Services left out for want of room are tried again once there is more
        // room than when they were left out; others refused (a write the maps
        // refused, a frontend another service holds) at every round.
        let room = self.programmed.room();
        let room_grew = room.0 > self.room_when_left.0 || room.1 > self.room_when_left.1;
        services.extend(
            self.refused
                .keys()
                .filter(|k| room_grew || !self.left_for_room.contains(*k))
                .cloned(),
        );
        let mut full = self.plan_all || !self.programmed.knows_owners();
        let start_plans = self.start_plans.take();
        let (tracked, node, programmed) = (&self.tracked, &self.node, &mut self.programmed);
        let (mut plans, mut update, zone) = std::thread::scope(|threads| {
            let plans = Self::plans(tracked, node, start_plans, full, &services);
            let zone = (self.names.as_ref())
                .filter(|_| zone_due)
                .map(|n| threads.spawn(move || n.build(tracked)));
            let update = programmed.update(scope(full, &services), &plans);
            let zone = zone.map(|z| z.join().expect("building the DNS zone panicked"));
            (plans, update, zone)
        });
        if let (Some(zone), Some(names)) = (zone, &mut self.names) {
            names.follow(&self.tracked, true, &services, &[], Some(zone));
        }
        if let Ok(Update::Collides) = update {
            full = true;
            plans = Self::plans(&self.tracked, &self.node, None, full, &services);
            update = self.programmed.update(Scope::All, &plans);
        }
        let planned = started.elapsed();
        let refused_before = self.refused.len();
        let local = self.local_endpoints(full, &services, &plans);
        let (writes, gone) = match update {
            Ok(Update::Writes(ops, left_out)) => {
                // The writes need the plans no more (at 100,000 services x 10
                // endpoints ~45 MB, held at the agent's peak), unless refused.
                drop(plans);
                match write_and_record(&mut self.dp.maps, &mut self.programmed, &ops) {
                    Ok(gone) => {
                        if full {
                            self.refused.clear();
                            self.left_for_room.clear();
                        } else {
                            self.refused.retain(|k, _| !services.contains(k));
                            self.left_for_room.retain(|k| !services.contains(k));
                        }
                        self.programmed.take_claims();
                        self.leave_out(left_out);
                        (ops.len(), gone)
                    }
                    Err(e) => {
                        self.telemetry.refused_write();
                        warn!(error = %e, "the maps refused a write: writing service by service");
                        let plans = Self::plans(&self.tracked, &self.node, None, full, &services);
                        self.one_by_one(full, &services, &plans)?
                    }
                }
            }
            // A full update claims every frontend, so no collision is left; an id
            // pool ran dry: the services it can serve are found one by one.
            other => {
                warn!(outcome = ?other, "planning the entries failed: planning service by service");
                self.one_by_one(full, &services, &plans)?
            }
        };
        self.publish_refused();
        self.follow_health_checks(full, &services, local);
        // A refusal healed: one full plan takes whatever the retries left behind.
        self.plan_all = refused_before > 0 && self.refused.is_empty() && !full;
        // UDP flows to endpoints that are gone end: their conntrack entries go, so
        // the client's next datagram is a new flow to a live endpoint (as kube-proxy
        // clears UDP conntrack entries). TCP flows to them are left to finish, as
        // kube-proxy and Cilium leave them: a pod taken out of a service (deleted,
        // not ready, terminating) finishes the connections it holds, and one that is
        // gone resets them itself or lets them time out.
        let flows_ended = if gone.is_empty() {
            0
        } else {
            self.dp.maps.end_udp_flows_to(&gone)?
        };
        let took = started.elapsed();
        let entries = self.programmed.entries();
        info!(
            revision = self.tracked.state.revision,
            services = self.tracked.state.services.len(),
            planned = if full {
                self.tracked.state.services.len()
            } else {
                services.len()
            },
            full,
            frontends = entries.services.len(),
            backends = entries.backends.len(),
            writes,
            refused = self.refused.len(),
            flows_ended,
            load_us = loaded.as_micros() as u64,
            plan_us = (planned - loaded).as_micros() as u64,
            took_us = took.as_micros() as u64,
            "reconciled"
        );
        // Recorded after the round: reading when the change was written is no part
        // of programming it.
        // A change the API timed (an EndpointSlice's trigger time) is programmed
        // once its round ends, whether or not it needed a write (an endpoint with
        // no port the service names changes no entry): kube-proxy observes every
        // change its sync took.
        let triggered = std::mem::take(&mut self.triggered);
        if writes > 0 || !triggered.is_empty() {
            let changed = self.committed_at().into_iter().chain(triggered);
            self.telemetry.synced(took, changed);
        }
        Ok(())
    }

    /// The plans of `services` (every service when `full`): `start`'s, the plans
    /// made at start, when they are of the facts as they are.
    fn plans(
        tracked: &Tracked,
        node: &Node,
        start: Option<(u64, Vec<PortPlan>)>,
        full: bool,
        services: &BTreeSet<ObjectKey>,
    ) -> Vec<PortPlan> {
        if let Some((revision, plans)) = start
            && full
            && revision == tracked.state.revision
        {
            return plans;
        }
        if full {
            plan::plan_all(tracked, node)
        } else {
            plan::plan(tracked, node, services)
        }
    }

    /// After a refused write: the maps are read again, then each service of the
    /// round is updated and written alone; those the maps refuse are recorded in
    /// `refused`. Returns the writes made and the backends gone.
    fn one_by_one(
        &mut self,
        full: bool,
        services: &BTreeSet<ObjectKey>,
        plans: &[PortPlan],
    ) -> Result<(usize, BTreeSet<u32>)> {
        self.programmed.resync(self.dp.maps.read_entries()?);
        for p in plans {
            self.programmed
                .claim(&p.service, p.frontends.iter().map(|(f, _)| *f));
        }
        let round: BTreeSet<ObjectKey> = if full {
            let state = &self.tracked.state;
            state
                .services
                .keys()
                .chain(self.programmed.services())
                .cloned()
                .collect()
        } else {
            services.clone()
        };
        let mut by_service: BTreeMap<&ObjectKey, Vec<PortPlan>> = BTreeMap::new();
        for p in plans {
            by_service.entry(&p.service).or_default().push(p.clone());
        }
        let (mut writes, mut gone) = (0, BTreeSet::new());
        for key in round {
            let mine = by_service.remove(&key).unwrap_or_default();
            let one = BTreeSet::from([key.clone()]);
            let error = match self.programmed.update(Scope::Services(&one), &mine) {
                Ok(Update::Writes(ops, left_out)) => match self.dp.maps.write(&ops) {
                    Ok(()) => {
                        writes += ops.len();
                        gone.extend(self.programmed.record(&ops));
                        self.refused.remove(&key);
                        self.left_for_room.remove(&key);
                        self.leave_out(left_out);
                        continue;
                    }
                    Err(e) => {
                        self.programmed.resync(self.dp.maps.read_entries()?);
                        e.to_string()
                    }
                },
                Ok(Update::Collides) => "a frontend of it is held by another service".to_string(),
                Err(e) => e.to_string(),
            };
            // Said once per service and reason, not at every retry.
            if self.refused.get(&key) != Some(&error) {
                warn!(service = %key, %error, "service not programmed; retried every second");
            }
            self.programmed.claim(
                &key,
                mine.iter()
                    .flat_map(|p| p.frontends.iter().map(|(f, _)| *f)),
            );
            self.left_for_room.remove(&key);
            self.refused.insert(key, error);
        }
        Ok((writes, gone))
    }

    /// Records the services an update left out for want of room: reported (one
    /// line for all of them), and retried once the maps have more room than now.
    fn leave_out(&mut self, left_out: LeftOut) {
        if left_out.is_empty() {
            return;
        }
        let new: Vec<&ObjectKey> = left_out
            .keys()
            .filter(|k| !self.refused.contains_key(*k))
            .collect();
        if let Some((first, why)) = left_out.iter().next()
            && !new.is_empty()
        {
            warn!(
                services = new.len(),
                left_out = left_out.len(),
                first = %first,
                why = %why,
                "services not programmed: the maps are full (`lb get svc` shows them); retried when room appears"
            );
        }
        self.room_when_left = self.programmed.room();
        for (k, why) in left_out {
            self.left_for_room.insert(k.clone());
            self.refused.insert(k, why);
        }
    }

    /// Writes the refused services where `lb describe` finds them, when they differ
    /// from what was written last.
    fn publish_refused(&mut self) {
        if self.published.as_ref() == Some(&self.refused) {
            return;
        }
        let status = NodeStatus {
            node: self.node.name.clone(),
            refused: self
                .refused
                .iter()
                .map(|(k, e)| (k.to_string(), e.clone()))
                .collect(),
        };
        match status::write(&self.store_dir, &status) {
            Ok(()) => self.published = Some(self.refused.clone()),
            Err(e) => warn!(error = %e, "cannot write the node's status file"),
        }
    }

    /// Follows how XDP may reach each pod (a pod attached or removed an XDP
    /// program on its end of the veth).
    fn refresh_pod_roles(&mut self) {
        if let Err(e) = self.dp.refresh_pod_roles() {
            warn!(error = %e, "cannot update the pod interfaces' roles");
        }
    }

    /// Attaches to every interface the kernel routes a pod address to (pods are
    /// found by their declared address), and forgets attached ones that are gone.
    fn follow_pod_interfaces(&mut self, addrs: impl Iterator<Item = IpAddr>) {
        let routes = match Routes::read() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read /proc/net/route");
                return;
            }
        };
        let gone: Vec<String> = self
            .dp
            .attached()
            .iter()
            .filter(|(name, a)| {
                nix::net::if_::if_nametoindex(name.as_str()).ok() != Some(a.ifindex)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Err(e) = self.dp.forget(&name) {
                warn!(iface = %name, error = %e, "forgetting interface");
            }
        }
        let mut cidrs = self.cluster_cidrs.clone();
        if let Some(k) = &self.kube {
            cidrs.extend(k.pod_cidrs(&self.node.name));
        }
        let wanted: BTreeSet<&str> = addrs
            .filter_map(|ip| routes.iface_for(ip))
            .chain(cidrs.iter().flat_map(|net| routes.ifaces_within(*net)))
            .collect();
        for iface in wanted {
            if iface == "lo" || self.dp.attached().contains_key(iface) {
                continue;
            }
            if let Err(e) = self.dp.attach_pod_iface(iface) {
                warn!(iface, error = %e, "cannot attach to pod interface");
            }
        }
    }
}

/// Where pods are: their addresses, and the endpoints of services without a selector.
/// The entries `plans` take.
fn need(plans: &[PortPlan]) -> Need {
    let v6 = || {
        plans
            .iter()
            .filter(|p| p.frontends.iter().any(|(f, _)| f.addr().is_ipv6()))
    };
    Need {
        frontends: plans.iter().map(|p| p.frontends.len() as u64).sum(),
        backends: plans.iter().map(|p| p.endpoints.len() as u64).sum(),
        frontends6: v6().map(|p| p.frontends.len() as u64).sum(),
        backends6: v6().map(|p| p.endpoints.len() as u64).sum(),
    }
}

/// A round writing at least this many entries records them while the maps take
/// them, on two cores: 1,100,000 writes are ~0.5 s of system calls beside ~0.5 s
/// of bookkeeping. A smaller one does each in turn (no thread to start).
const WRITES_BESIDE_RECORDING: usize = 10_000;

/// Writes `ops` to the maps and records them in `programmed` (its claims left to
/// [`Programmed::take_claims`]); the backend ids no slot holds any more. A large
/// round records them while the maps are written; should the maps refuse, the
/// caller reads them again ([`Programmed::resync`]), which also drops what was
/// recorded, or the agent ends.
fn write_and_record(
    maps: &mut crate::maps::Maps,
    programmed: &mut Programmed,
    ops: &[crate::sync::Op],
) -> Result<BTreeSet<u32>, crate::maps::MapsError> {
    if ops.len() < WRITES_BESIDE_RECORDING {
        maps.write(ops)?;
        return Ok(programmed.record_writes(ops));
    }
    std::thread::scope(|threads| {
        let writing = threads.spawn(|| maps.write(ops));
        let gone = programmed.record_writes(ops);
        writing.join().expect("writing the maps panicked")?;
        Ok(gone)
    })
}

/// The entries a round updates: every service's when `full`, else `services`'.
fn scope(full: bool, services: &BTreeSet<ObjectKey>) -> Scope<'_> {
    if full {
        Scope::All
    } else {
        Scope::Services(services)
    }
}

/// Each cluster DNS address (`--cluster-dns`, one per family) with the node's
/// address of its family the agent's DNS listens on; a family the node has no
/// address of is left out (its pods would reach no listener).
fn dns_listeners(node: &Node, cluster_ips: &[IpAddr]) -> Vec<(IpAddr, IpAddr)> {
    cluster_ips
        .iter()
        .filter_map(|ip| Some((*ip, *node.addrs_of(Family::of(*ip)).first()?)))
        .collect()
}
