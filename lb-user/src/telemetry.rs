//! What the agent shows a monitoring system, as kube-proxy does: Prometheus metrics
//! on `--metrics-bind-address` (kube-proxy's 127.0.0.1:10249) and health on
//! `--healthz-bind-address` (kube-proxy's 0.0.0.0:10256: `/healthz`, `/livez`).
//! The listeners run on a thread of their own, so a scrape or a health check is
//! answered while the agent reconciles. Counters are read from the pinned maps at
//! scrape time; what only the agent knows (which service a service-port id is, the
//! revision it programmed) it answers when asked ([`Snapshot`]), between rounds.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use lb_common::reason;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{dns::server::DnsStats, kube_lb::KubeLbStats, maps::Maps, sizes::MapSizes, store};

/// A DNS response code's name (RFC 1035, 2136), as CoreDNS labels its series.
fn rcode_name(code: usize) -> String {
    const NAMES: [&str; 11] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE",
    ];
    NAMES
        .get(code)
        .map_or_else(|| code.to_string(), |n| n.to_string())
}

/// A counter standing at `n`'s value.
fn counter_of(n: &AtomicU64) -> Counter {
    let c = Counter::<u64>::default();
    c.inc_by(n.load(Ordering::Relaxed));
    c
}

/// A gauge standing at `n`'s value.
fn gauge_of(n: &AtomicU64) -> Gauge {
    let g = Gauge::<i64>::default();
    g.set(n.load(Ordering::Relaxed) as i64);
    g
}

/// The cluster DNS listener's series: answers by protocol and response code (each
/// code seen), truncations, forwards and their failures, dropped messages, names.
fn register_dns(r: &mut Registry, dns: &DnsStats) {
    let responses = Family::<DnsLabels, Counter>::default();
    for (protocol, by) in [("udp", &dns.udp), ("tcp", &dns.tcp)] {
        for (code, n) in by.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 || (code == 0 && protocol == "udp") {
                let l = DnsLabels {
                    protocol: protocol.into(),
                    rcode: rcode_name(code),
                };
                responses.get_or_create(&l).inc_by(n);
            }
        }
    }
    r.register(
        "dns_responses",
        "Answers the cluster DNS sent, by protocol and response code (CoreDNS's coredns_dns_responses_total)",
        responses,
    );
    r.register(
        "dns_truncated",
        "UDP answers sent truncated (the client asks again over TCP)",
        counter_of(&dns.truncated),
    );
    let forwards = Family::<OutcomeLabels, Counter>::default();
    let failed = dns.forward_failures.load(Ordering::Relaxed);
    let all = dns.forwarded.load(Ordering::Relaxed);
    for (outcome, n) in [("answered", all.saturating_sub(failed)), ("failed", failed)] {
        forwards
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc_by(n);
    }
    r.register(
        "dns_forwards",
        "Queries for names outside the zone forwarded to the upstream resolvers, by whether one answered",
        forwards,
    );
    r.register(
        "dns_dropped",
        "Messages the cluster DNS gave no answer (shorter than a header, or themselves answers)",
        counter_of(&dns.dropped),
    );
    r.register(
        "dns_names",
        "Names the cluster DNS zone holds",
        gauge_of(&dns.names),
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// Kubernetes mode's LoadBalancer series: addresses answered, leases held and what
/// happened to them, status writes.
fn register_lb(r: &mut Registry, lb: &KubeLbStats) {
    r.register(
        "loadbalancer_addresses_announced",
        "LoadBalancer addresses this node answers ARP for (it holds their Leases)",
        gauge_of(&lb.announced),
    );
    let l = &lb.leases;
    r.register("leases_held", "Leases this agent holds", gauge_of(&l.held));
    let events = Family::<EventLabels, Counter>::default();
    for (event, n) in [
        ("taken", &l.taken),
        ("released", &l.released),
        ("lost", &l.lost),
    ] {
        events
            .get_or_create(&EventLabels {
                event: event.into(),
            })
            .inc_by(n.load(Ordering::Relaxed));
    }
    r.register(
        "lease_transitions",
        "Leases this agent took, released, or lost (not renewed in time, or another holder's write came first)",
        events,
    );
    r.register(
        "lease_write_failures",
        "Lease writes that failed or timed out (conflicts excepted)",
        counter_of(&l.failed_writes),
    );
    let writes = Family::<OutcomeLabels, Counter>::default();
    let failed = lb.status_failures.load(Ordering::Relaxed);
    for (outcome, n) in [
        ("written", lb.status_writes.load(Ordering::Relaxed)),
        ("failed", failed),
    ] {
        writes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc_by(n);
    }
    r.register(
        "loadbalancer_status_writes",
        "LoadBalancer addresses written to or taken from services' status (by the lb-ipam lease holder), by outcome",
        writes,
    );
}

/// kube-proxy's defaults.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";
/// Healthy while the agent's loop finished a round this recently (the loop runs at
/// least every second; kube-proxy's timeout is twice its sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many services' and endpoints' series, the busiest by packets (a
/// scrape of 100,000 services would be megabytes); how many were left out is its
/// own series.
pub const MAX_SERVICE_SERIES: usize = 1000;
pub const MAX_ENDPOINT_SERIES: usize = 1000;
/// How long a scrape waits for the agent's answer (it answers between rounds).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

/// What the agent knows that the maps do not say, as of its last round.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The source revision the maps hold.
    pub revision: u64,
    /// Service-port id -> (namespace, name, port name or number).
    pub services: Vec<(u32, String, String, String)>,
    /// Backend id -> endpoint address, port and protocol name (formatted only for
    /// the series shown).
    pub endpoints: Vec<(u32, std::net::IpAddr, u16, &'static str)>,
    /// Frontends and backend slots programmed.
    pub frontends: usize,
    pub slots: usize,
    pub sizes: MapSizes,
    /// Services whose entries the maps refused, now.
    pub refused: usize,
}

/// A request for the agent's [`Snapshot`].
pub type SnapshotRequest = oneshot::Sender<Snapshot>;

/// Shared between the agent (which records rounds) and the listeners.
pub struct Telemetry {
    started: Instant,
    /// The same, as wall-clock time (changes committed before it are not timed).
    started_at: SystemTime,
    /// Milliseconds after `started` when the loop last finished a round (0: never).
    last_round_ms: AtomicU64,
    /// Unix time (ns) of the last round that wrote to the maps.
    last_sync_ns: AtomicU64,
    sync_duration: Histogram,
    programming: Histogram,
    syncs: Counter,
    refused_writes: Counter,
    pins: PathBuf,
    /// Store mode: the store, whose commit marker gives its revision.
    store: Option<PathBuf>,
    ask: mpsc::UnboundedSender<SnapshotRequest>,
    /// The cluster DNS listener's counters, when the agent serves DNS.
    dns: std::sync::OnceLock<Arc<DnsStats>>,
    /// Kubernetes mode's LoadBalancer counters, with `--lb-pool`.
    lb: std::sync::OnceLock<Arc<KubeLbStats>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    service: String,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    protocol: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    series: String,
}

impl Telemetry {
    /// For the agent pinning its maps in `pins`; `store`: the embedded store's
    /// directory (None in Kubernetes mode). Returns the receiver of snapshot requests,
    /// which the agent's loop answers.
    pub fn new(
        pins: PathBuf,
        store: Option<PathBuf>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<SnapshotRequest>) {
        let (ask, asked) = mpsc::unbounded_channel();
        // 1 ms to ~33 s: a one-change round to a 100,000-service load.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let t = Telemetry {
            started: Instant::now(),
            started_at: SystemTime::now(),
            last_round_ms: AtomicU64::new(0),
            last_sync_ns: AtomicU64::new(0),
            sync_duration: buckets(),
            programming: buckets(),
            syncs: Counter::default(),
            refused_writes: Counter::default(),
            pins,
            store,
            ask,
            dns: std::sync::OnceLock::new(),
            lb: std::sync::OnceLock::new(),
        };
        (Arc::new(t), asked)
    }

    /// The loop finished a round (whether or not anything changed).
    pub fn round(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_round_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// A round wrote to the maps in `took` (reading the source to the maps holding
    /// it); `changed`: when each change it programmed was made (committed to the
    /// store; in Kubernetes mode, an EndpointSlice's last-change-trigger-time). A
    /// change made before the agent started is not timed (its latency would be the
    /// agent's downtime, not its programming), as kube-proxy skips those.
    pub fn synced(&self, took: Duration, changed: impl IntoIterator<Item = SystemTime>) {
        self.sync_duration.observe(took.as_secs_f64());
        let now = SystemTime::now();
        for at in changed {
            if at >= self.started_at
                && let Ok(p) = now.duration_since(at)
            {
                self.programming.observe(p.as_secs_f64());
            }
        }
        self.syncs.inc();
        self.last_sync_ns
            .store(unix_ns(SystemTime::now()), Ordering::Relaxed);
    }

    /// The maps refused a write (the round then goes service by service).
    /// Serves the cluster DNS listener's counters.
    pub fn count_dns(&self, stats: Arc<DnsStats>) {
        let _ = self.dns.set(stats);
    }

    /// Serves Kubernetes mode's LoadBalancer counters.
    pub fn count_lb(&self, stats: Arc<KubeLbStats>) {
        let _ = self.lb.set(stats);
    }

    pub fn refused_write(&self) {
        self.refused_writes.inc();
    }

    /// Whether the agent is healthy (its loop finished a round within
    /// [`HEALTH_TIMEOUT`]).
    pub fn healthy(&self) -> bool {
        self.health().0
    }

    /// Whether the loop finished a round within [`HEALTH_TIMEOUT`], and how long ago.
    fn health(&self) -> (bool, Option<Duration>) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        health_at(self.last_round_ms.load(Ordering::Relaxed), now_ms)
    }

    /// Starts the listeners (each `None`: off) on a thread of their own. A listener
    /// that cannot bind (a port in use) is logged and left out; the other serves.
    pub fn serve(
        self: &Arc<Self>,
        metrics: Option<SocketAddr>,
        healthz: Option<SocketAddr>,
    ) -> Result<()> {
        let bind = |addr: Option<SocketAddr>, flag: &str| {
            let addr = addr?;
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| warn!(error = %e, "{flag} {addr}: not served"))
                .ok()?;
            Some(l)
        };
        let metrics = bind(metrics, "--metrics-bind-address");
        let healthz = bind(healthz, "--healthz-bind-address");
        if metrics.is_none() && healthz.is_none() {
            return Ok(());
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return warn!(error = %e, "telemetry listeners not started"),
                };
                rt.block_on(async move {
                    let health = Router::new()
                        .route("/healthz", get(healthz_page))
                        .route("/livez", get(healthz_page));
                    let mut tasks = Vec::new();
                    if let Some(l) = metrics {
                        let app = Router::new()
                            .route("/metrics", get(metrics_page))
                            .merge(health.clone())
                            .with_state(Arc::clone(&me));
                        tasks.push(tokio::spawn(listen(l, app)));
                    }
                    if let Some(l) = healthz {
                        tasks.push(tokio::spawn(listen(l, health.with_state(me))));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .context("starting the telemetry thread")?;
        Ok(())
    }

    /// The agent's snapshot, if it answers in time.
    async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.ask.send(tx).ok()?;
        tokio::time::timeout(SNAPSHOT_WAIT, rx).await.ok()?.ok()
    }

    /// The exposition: what the agent recorded, the snapshot's and the maps' figures.
    fn exposition(&self, snap: Option<&Snapshot>, maps: Option<&Maps>) -> String {
        let mut r = Registry::with_prefix("lb");
        r.register_with_unit(
            "sync_proxy_rules_duration",
            "Rounds that wrote to the maps: from reading the source to the maps holding it (kube-proxy's sync_proxy_rules_duration_seconds)",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        r.register_with_unit(
            "network_programming_duration",
            "From a change (its commit to the store; in Kubernetes mode an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time) to the maps holding it (kube-proxy's network_programming_duration_seconds)",
            Unit::Seconds,
            self.programming.clone(),
        );
        r.register("syncs", "Rounds that wrote to the maps", self.syncs.clone());
        r.register(
            "map_write_refusals",
            "Writes the maps refused (the round then went service by service)",
            self.refused_writes.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        last_sync.set(self.last_sync_ns.load(Ordering::Relaxed) as f64 / 1e9);
        r.register_with_unit(
            "sync_proxy_rules_last_timestamp",
            "When a round last wrote to the maps (Unix time)",
            Unit::Seconds,
            last_sync,
        );
        if let Some(maps) = maps {
            self.register_maps(&mut r, snap, maps);
        }
        if let Some(s) = snap {
            register_snapshot(&mut r, s, self.store.as_deref());
        }
        if let Some(dns) = self.dns.get() {
            register_dns(&mut r, dns);
        }
        if let Some(lb) = self.lb.get() {
            register_lb(&mut r, lb);
        }
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }

    /// Verdicts, per-service and per-endpoint traffic, and the flow tables' fill.
    fn register_maps(&self, r: &mut Registry, snap: Option<&Snapshot>, maps: &Maps) {
        if let Ok(verdicts) = maps.verdicts() {
            let packets = Family::<ReasonLabels, Counter>::default();
            let bytes = Family::<ReasonLabels, Counter>::default();
            for (i, c) in verdicts.iter().enumerate() {
                let l = ReasonLabels {
                    reason: reason::NAMES[i].to_string(),
                };
                packets.get_or_create(&l).inc_by(c.packets);
                bytes.get_or_create(&l).inc_by(c.bytes);
            }
            r.register(
                "verdict_packets",
                "Packets the data plane's programs handled, by the reason of their verdict (each program counts a packet under one verdict; fwd_* reasons are counted besides it: how a translated packet was sent on)",
                packets,
            );
            r.register_with_unit(
                "verdict",
                "Bytes (IP) the data plane's programs handled, by the reason of their verdict",
                Unit::Bytes,
                bytes,
            );
        }
        let omitted = Family::<SeriesLabels, Gauge>::default();
        if let Some(s) = snap {
            let services = s
                .services
                .iter()
                .filter_map(|svc| Some((maps.service_counters(svc.0).ok()?, svc)));
            let [packets, bytes] = busiest_series(
                services,
                MAX_SERVICE_SERIES,
                &omitted,
                "service",
                |(_, ns, name, port)| ServiceLabels {
                    namespace: ns.clone(),
                    service: name.clone(),
                    port: port.clone(),
                },
            );
            r.register(
                "service_packets",
                "Packets of new and established flows to a service port (the busiest ports)",
                packets,
            );
            r.register_with_unit(
                "service",
                "Bytes of new and established flows to a service port",
                Unit::Bytes,
                bytes,
            );
            let endpoints = s
                .endpoints
                .iter()
                .filter_map(|ep| Some((maps.backend_counters(ep.0).ok()?, ep)));
            let [packets, bytes] = busiest_series(
                endpoints,
                MAX_ENDPOINT_SERIES,
                &omitted,
                "endpoint",
                |(_, addr, port, proto)| EndpointLabels {
                    // `[fd00::2]:80` for an IPv6 endpoint, as Go's JoinHostPort.
                    endpoint: std::net::SocketAddr::new(*addr, *port).to_string(),
                    protocol: proto.to_string(),
                },
            );
            r.register(
                "endpoint_packets",
                "Packets sent to an endpoint (address:port), whichever services it serves (the busiest endpoints)",
                packets,
            );
            r.register_with_unit("endpoint", "Bytes sent to an endpoint", Unit::Bytes, bytes);
        }
        r.register(
            "metrics_series_omitted",
            "Services' or endpoints' series left out of this scrape (only the busiest are shown)",
            omitted,
        );
        if let Ok((new, assured, affinity)) = maps.flow_entries() {
            let fill = Family::<MapLabels, Gauge>::default();
            for (map, n) in [
                ("conntrack", new),
                ("conntrack_assured", assured),
                ("affinity", affinity),
            ] {
                fill.get_or_create(&MapLabels { map: map.into() })
                    .set(n as i64);
            }
            r.register(
                "flow_entries",
                "Entries of the flow tables (two per flow: the flow and its reply) and of the ClientIP affinity table",
                fill,
            );
        }
    }
}

/// Packets and bytes series of the `max` busiest of `items` (their counters, and
/// what `label` makes their labels of: only for those shown; labels met twice add
/// up), and in `omitted{series}` how many more there were.
fn busiest_series<T, L>(
    items: impl Iterator<Item = (lb_common::Counters, T)>,
    max: usize,
    omitted: &Family<SeriesLabels, Gauge>,
    series: &str,
    label: impl Fn(T) -> L,
) -> [Family<L, Counter>; 2]
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let mut items: Vec<_> = items.collect();
    omitted
        .get_or_create(&SeriesLabels {
            series: series.into(),
        })
        .set(items.len().saturating_sub(max) as i64);
    busiest(&mut items, max, |(c, _)| c.packets);
    let (packets, bytes) = (
        Family::<L, Counter>::default(),
        Family::<L, Counter>::default(),
    );
    for (c, t) in items {
        let l = label(t);
        packets.get_or_create(&l).inc_by(c.packets);
        bytes.get_or_create(&l).inc_by(c.bytes);
    }
    [packets, bytes]
}

/// Keeps the `n` items with the most packets, busiest first (a selection, not a
/// sort of all: a million endpoints cost one pass).
fn busiest<T>(items: &mut Vec<T>, n: usize, packets: impl Fn(&T) -> u64) {
    let key = |t: &T| std::cmp::Reverse(packets(t));
    if items.len() > n {
        items.select_nth_unstable_by_key(n, key);
        items.truncate(n);
    }
    items.sort_by_key(key);
}

/// What the snapshot says: map fill against size, revisions, refused services.
fn register_snapshot(r: &mut Registry, s: &Snapshot, store: Option<&std::path::Path>) {
    let entries = Family::<MapLabels, Gauge>::default();
    let max = Family::<MapLabels, Gauge>::default();
    for (map, n, size) in [
        ("frontends", s.frontends, s.sizes.frontends),
        ("backends", s.slots, s.sizes.backends),
    ] {
        let l = MapLabels { map: map.into() };
        entries.get_or_create(&l).set(n as i64);
        max.get_or_create(&l).set(i64::from(size));
    }
    for (map, size) in [
        ("conntrack", s.sizes.conntrack),
        ("conntrack_assured", s.sizes.conntrack),
        ("affinity", s.sizes.affinity),
    ] {
        max.get_or_create(&MapLabels { map: map.into() })
            .set(i64::from(size));
    }
    r.register(
        "map_entries",
        "Entries programmed in the service maps (frontends; backend slots)",
        entries,
    );
    r.register(
        "map_max_entries",
        "Entries each map holds at most, as loaded",
        max,
    );
    let refused = Gauge::<i64>::default();
    refused.set(s.refused as i64);
    r.register(
        "refused_services",
        "Services whose entries the maps refused (see `lb describe`, `lb get svc`)",
        refused,
    );
    let programmed = Gauge::<i64>::default();
    programmed.set(s.revision as i64);
    r.register(
        "programmed_revision",
        "The source revision the maps hold",
        programmed,
    );
    if let Some((rev, _)) = store.and_then(store::last_commit) {
        let head = Gauge::<i64>::default();
        head.set(rev as i64);
        r.register(
            "store_revision",
            "The embedded store's latest committed revision",
            head,
        );
        let lag = Gauge::<i64>::default();
        lag.set(rev.saturating_sub(s.revision) as i64);
        r.register(
            "store_revision_lag",
            "Revisions committed to the store that the maps do not hold yet",
            lag,
        );
    }
}

async fn listen(l: std::net::TcpListener, app: Router) {
    match tokio::net::TcpListener::from_std(l) {
        Ok(l) => {
            if let Err(e) = axum::serve(l, app).await {
                warn!(error = %e, "telemetry listener stopped");
            }
        }
        Err(e) => warn!(error = %e, "telemetry listener not started"),
    }
}

/// OpenMetrics to a client that asks for it (Prometheus does), else the classic
/// text format (curl, promtool, older scrapers), as Prometheus' Go client
/// negotiates.
async fn metrics_page(
    State(t): State<Arc<Telemetry>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let snap = t.snapshot().await;
    let body = tokio::task::spawn_blocking(move || {
        let maps = Maps::open_pinned(&t.pins).ok();
        t.exposition(snap.as_ref(), maps.as_ref())
    })
    .await
    .unwrap_or_default();
    if openmetrics {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic_text(&body),
        )
    }
}

/// The classic text format (0.0.4) of an OpenMetrics exposition: a counter family
/// is named as its samples are (`x_total`), and the `# UNIT` and `# EOF` lines,
/// which the classic format does not have, are left out. Samples, label values and
/// help texts are written alike in both.
fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), kind),
                "unknown" => (name.to_string(), "untyped"),
                _ => (name.to_string(), kind),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// kube-proxy's answer: 200 when healthy, 503 when not, with when it last
/// finished a round and the current time.
async fn healthz_page(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    let (healthy, ago) = t.health();
    let now = SystemTime::now();
    let last = ago.and_then(|a| now.checked_sub(a));
    let ts = |at: SystemTime| {
        jiff::Timestamp::try_from(at)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let body = serde_json::json!({
        "lastUpdated": last.map(ts),
        "currentTime": ts(now),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Health at `now_ms` for a last round at `last_ms` (both after the start; 0: no
/// round yet): healthy within [`HEALTH_TIMEOUT`], with the round's age.
fn health_at(last_ms: u64, now_ms: u64) -> (bool, Option<Duration>) {
    if last_ms == 0 {
        return (false, None);
    }
    let ago = Duration::from_millis(now_ms.saturating_sub(last_ms));
    (ago < HEALTH_TIMEOUT, Some(ago))
}

fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_as_their_samples_and_has_no_unit_or_eof() {
        let om = "# HELP lb_syncs Rounds.\n# TYPE lb_syncs counter\nlb_syncs_total 3\n\
                  # HELP lb_d Time.\n# TYPE lb_d_seconds histogram\n# UNIT lb_d_seconds seconds\n\
                  lb_d_seconds_sum 0.5\nlb_d_seconds_count 1\n\
                  # HELP lb_g A gauge.\n# TYPE lb_g gauge\nlb_g{map=\"a\"} 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP lb_syncs_total Rounds.\n# TYPE lb_syncs_total counter\nlb_syncs_total 3\n\
             # HELP lb_d_seconds Time.\n# TYPE lb_d_seconds histogram\n\
             lb_d_seconds_sum 0.5\nlb_d_seconds_count 1\n\
             # HELP lb_g A gauge.\n# TYPE lb_g gauge\nlb_g{map=\"a\"} 1\n"
        );
    }

    #[test]
    fn only_the_busiest_series_are_kept_busiest_first() {
        let mut v: Vec<u64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        busiest(&mut v, 3, |p| *p);
        assert_eq!(v, [999, 998, 997]);
        let mut few = vec![1u64, 5, 3];
        busiest(&mut few, 10, |p| *p);
        assert_eq!(few, [5, 3, 1]);
    }

    /// One listener's port in use leaves the other serving (on loopback).
    #[test]
    fn a_port_in_use_costs_only_its_own_listener() {
        use std::io::{Read as _, Write as _};
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free_addr = free.local_addr().unwrap();
        drop(free);
        let (t, _asked) = Telemetry::new(PathBuf::from("/nonexistent"), None);
        t.serve(Some(taken.local_addr().unwrap()), Some(free_addr))
            .unwrap();
        let mut answer = String::new();
        for _ in 0..50 {
            if let Ok(mut c) = std::net::TcpStream::connect(free_addr) {
                c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                c.read_to_string(&mut answer).unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // No round yet: unhealthy, as kube-proxy before its first sync.
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        t.round();
        let mut c = std::net::TcpStream::connect(free_addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"lastUpdated\""), "{answer}");
    }

    #[test]
    fn health_needs_a_round_within_the_timeout() {
        let (t, _asked) = Telemetry::new(PathBuf::from("/nonexistent"), None);
        assert!(!t.health().0, "no round yet");
        t.round();
        assert!(t.health().0, "a round just now");
        // The loop stuck since a round 10 s or more ago: unhealthy, with its age.
        assert_eq!(health_at(0, 5_000), (false, None));
        assert_eq!(
            health_at(1_000, 10_999),
            (true, Some(Duration::from_millis(9_999)))
        );
        assert_eq!(
            health_at(1_000, 11_000),
            (false, Some(Duration::from_secs(10)))
        );
    }
}
