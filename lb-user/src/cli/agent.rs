//! `lb agent`: the flags, turned into the agent's options.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Result;
use clap::Args;
use lb_common::CtTimeouts;

use crate::{
    agent::{self, AgentOptions, DEFAULT_BPFFS, LeaseOptions},
    dns::DnsOptions,
    loader::{LoadConfig, ToPods, XdpUse},
    netif::parse_cidr,
    sizes::{DEFAULT_MEMORY_RATIO, MAX_ENTRIES, MapSizes, SizeFlags},
    telemetry::{DEFAULT_HEALTHZ_ADDR, DEFAULT_METRICS_ADDR},
};

#[derive(Args)]
pub struct AgentArgs {
    /// External interface(s) (the node's uplink); repeat for several.
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// Address(es) NodePorts answer on, either family, as kubelet's `--node-ip`
    /// (default: the interfaces' IPv4 addresses and global IPv6 ones).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<std::net::IpAddr>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// bpffs root; maps are pinned under ROOT/lb/NODE-NAME (mounted if needed).
    #[arg(long, env = "LB_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// cgroup v2 directory whose processes get socket-level balancing (default: the
    /// cgroup2 root, i.e. every process of this network namespace).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Forward translated packets through the kernel's stack instead of XDP's own
    /// FIB lookup and redirect (slower; for comparison and troubleshooting).
    #[arg(long)]
    pub no_xdp_redirect: bool,
    /// How NodePort and LoadBalancer packets XDP translated reach pods on this node:
    /// `peer` hands them from TC ingress to the pod's end of
    /// its veth, skipping the node's routing and netfilter (as Cilium's host
    /// routing); `xdp` redirects them from XDP into the veth, fastest, but only when
    /// every pod's end takes XDP frames (an XDP program, or GRO on: `ethtool -K eth0
    /// gro on` in the pod; otherwise the kernel drops them); `stack` leaves them to
    /// the kernel's stack, as without lb. Both `peer` and `xdp` need XDP's FIB
    /// lookup: with `--no-xdp-redirect` packets go through the stack.
    #[arg(long, default_value = "peer", value_parser = to_pods())]
    pub to_pods: ToPods,
    /// Where XDP serves external interfaces: `auto` on NICs with native XDP (frames
    /// off a wire have complete checksums; the NIC sends redirected frames), TC
    /// alone on virtual interfaces (veth, bridge) and drivers without native XDP;
    /// `native` on every external interface (only where senders fill in checksums,
    /// `ethtool -K eth0 tx off`, and veth peers take redirected frames, `gro on`);
    /// `off`: TC alone.
    #[arg(long, default_value = "auto", value_parser = xdp_use())]
    pub xdp: XdpUse,
    /// Addresses LoadBalancer services are given (CIDR, IPv4 or IPv6; repeat for
    /// several). A service gets one per family it has, from the pools of that
    /// family. One node answers ARP (IPv6: Neighbor Solicitations) for each address;
    /// another takes over when its agent stops.
    #[arg(long = "lb-pool", value_parser = parse_pool)]
    pub lb_pools: Vec<crate::model::Cidr>,
    /// Kubernetes mode: the namespace of the Leases that elect who assigns
    /// LoadBalancer addresses (`lb-ipam`) and who announces each (`lb-l2-A-B-C-D`,
    /// `lb-l2-` and an IPv6 address's eight groups).
    #[arg(long, default_value = "kube-system")]
    pub lease_namespace: String,
    /// Kubernetes mode: how long an unrenewed lease lasts (whole seconds; a
    /// crashed holder is replaced after about this plus two retry periods).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_duration_seconds: u64,
    /// Kubernetes mode: how often leases are renewed and looked at (milliseconds;
    /// less than the duration). Each held lease costs the API server a write per
    /// period.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub lease_retry_ms: u64,
    /// Kubernetes mode: follow this cluster's Services, EndpointSlices and Nodes
    /// (kube-rs watchers) instead of the embedded store. Without it, an agent
    /// running in a pod uses its service account; elsewhere, the embedded store.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The pods' network (CIDR; repeat for several), as kube-proxy's
    /// --cluster-cidr: every interface with a route into it is a pod's, so its pods
    /// reach ClusterIPs even when no object names them. In Kubernetes mode the
    /// node's spec.podCIDRs count too.
    #[arg(long = "cluster-cidr", value_parser = parse_cidr)]
    pub cluster_cidrs: Vec<crate::model::Cidr>,
    /// How often the node's routes and routing rules are read whole besides
    /// rtnetlink's notifications of their changes, which are followed as they come
    /// (a safety net for a lost one, as kube-proxy's --iptables-sync-period; a
    /// duration: 30s, 5m). Without notifications: every second.
    #[arg(long, default_value = "30s", value_parser = seconds)]
    pub routes_resync_period: u32,
    /// Frontends the maps hold (each ClusterIP port, NodePort per node address,
    /// LoadBalancer and external address is one), as Cilium's --bpf-lb-map-max.
    /// Default: from the node's memory, at least 65,536, and always at least what
    /// the source (the store, or the API in Kubernetes mode) holds at start with a
    /// quarter more.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENTRIES)))]
    pub max_frontends: Option<u32>,
    /// Backend slots the maps hold (one per endpoint of each service port).
    /// Default: from the node's memory, at least 524,288, and at least what the
    /// store holds at start with a quarter more.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENTRIES)))]
    pub max_backends: Option<u32>,
    /// Connection-tracking entries (two per flow), as Cilium's
    /// --bpf-ct-global-tcp-max. Default: from the node's memory, at least 262,144.
    /// When full, the least recently used flows make room.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENTRIES)))]
    pub ct_max: Option<u32>,
    /// sessionAffinity entries (client, service port). Default: from the node's
    /// memory, at least 262,144.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENTRIES)))]
    pub affinity_max: Option<u32>,
    /// Share of the node's memory the maps sized by default may take together, as
    /// Cilium's --bpf-map-dynamic-size-ratio (the agent logs the sizes it chose).
    #[arg(long, default_value_t = DEFAULT_MEMORY_RATIO, value_parser = ratio)]
    pub map_memory_ratio: f64,
    /// Idle timeout of an established TCP connection's flow, as Cilium's
    /// --bpf-ct-timeout-regular-tcp (a duration: 90s, 30m, 6h, 1h30m).
    #[arg(long, default_value = "6h", value_parser = seconds)]
    pub ct_timeout_tcp: u32,
    /// Idle timeout of a TCP flow whose backend has not answered its SYN yet
    /// (netfilter's SYN_SENT, Cilium's --bpf-ct-timeout-regular-tcp-syn).
    #[arg(long, default_value = "60s", value_parser = seconds)]
    pub ct_timeout_tcp_syn: u32,
    /// Idle timeout of a TCP flow that saw a FIN or an RST (Cilium's
    /// --bpf-ct-timeout-regular-tcp-fin).
    #[arg(long, default_value = "10s", value_parser = seconds)]
    pub ct_timeout_tcp_fin: u32,
    /// Idle timeout of a UDP flow (Cilium's --bpf-ct-timeout-regular-any).
    #[arg(long, default_value = "60s", value_parser = seconds)]
    pub ct_timeout_udp: u32,
    /// Where Prometheus metrics are served (`/metrics`), as kube-proxy's
    /// --metrics-bind-address; an empty value serves none.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR, value_parser = bind_address)]
    pub metrics_bind_address: Bind,
    /// Where health is served (`/healthz`, `/livez`: 200 while the agent's loop
    /// finishes rounds, 503 when it has not for 10 s), as kube-proxy's
    /// --healthz-bind-address; an empty value serves none.
    #[arg(long, default_value = DEFAULT_HEALTHZ_ADDR, value_parser = bind_address)]
    pub healthz_bind_address: Bind,
    /// Serve the cluster's DNS (the Kubernetes DNS specification) for the services
    /// lb follows, on port 53 of the node's address: `auto` serves it with the
    /// embedded store, which then holds the `kube-system/kube-dns` service at
    /// --cluster-dns (the pods' nameserver), and not in Kubernetes mode (CoreDNS
    /// serves it there); `on`; `off`.
    #[arg(long, value_enum, default_value_t = DnsUse::Auto)]
    pub dns: DnsUse,
    /// The cluster DNS service's addresses, as kubelet's --cluster-dns
    /// (comma-separated, one per family, the primary first:
    /// `10.96.0.10,fd00:10:96::a` for a dual-stack cluster, an IPv6 address alone
    /// for an IPv6-only one); the agent's DNS listens on the node's address of each
    /// family.
    #[arg(long, default_value = "10.96.0.10", value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain, as kubelet's --cluster-domain.
    #[arg(long, default_value = "cluster.local", value_parser = domain)]
    pub cluster_domain: String,
    /// Where the cluster DNS forwards names outside its domain: `auto` for the
    /// nameservers of the node's /etc/resolv.conf, `none` to refuse them, or
    /// addresses (IP or IP:PORT, comma-separated).
    #[arg(long, default_value = "auto")]
    pub dns_upstream: String,
}

/// Whether the agent serves the cluster DNS (`--dns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsUse {
    /// With the embedded store; not in Kubernetes mode.
    Auto,
    On,
    Off,
}

/// A DNS domain: labels of letters, digits and hyphens, 63 characters at most.
/// A LoadBalancer pool: `A.B.C.D/N` or `IPV6/N`.
fn parse_pool(s: &str) -> Result<crate::model::Cidr, String> {
    crate::model::Cidr::parse(s).ok_or_else(|| {
        format!("{s}: want a CIDR such as 192.168.1.240/28 or fd00:192:168:1::f0/124")
    })
}

fn domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.len() > 253 || !d.split('.').all(label_ok) {
        return Err(format!("{s:?} is no DNS domain (e.g. cluster.local)"));
    }
    Ok(d.to_ascii_lowercase())
}

/// A listener's address, or none (an empty flag value).
#[derive(Clone, Copy, Debug)]
pub struct Bind(pub Option<SocketAddr>);

fn bind_address(s: &str) -> Result<Bind, String> {
    if s.is_empty() {
        return Ok(Bind(None));
    }
    s.parse()
        .map(|a| Bind(Some(a)))
        .map_err(|_| format!("{s:?}: not an address:port (e.g. 127.0.0.1:10249), nor empty"))
}

/// A duration as `90s`, `30m`, `6h`, `1d` or a sum of them (`1h30m`); a bare number
/// is seconds. At least one second, at most a year.
fn seconds(s: &str) -> Result<u32, String> {
    let bad = || format!("{s}: want a duration such as 90s, 30m, 6h or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.saturating_add(digits.parse::<u64>().map_err(|_| bad())?);
    }
    match total {
        0 => Err(format!("{s}: want at least one second")),
        t if t > 366 * 86_400 => Err(format!("{s}: want at most a year")),
        t => Ok(t as u32),
    }
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!("{s}: want a number in (0, 1], e.g. 0.0025")),
    }
}

fn xdp_use() -> impl clap::builder::TypedValueParser<Value = XdpUse> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["auto", "native", "off"])
        .map(|w| w.parse::<XdpUse>().expect("one of the listed words"))
}

fn to_pods() -> impl clap::builder::TypedValueParser<Value = ToPods> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["peer", "xdp", "stack"])
        .map(|w| w.parse::<ToPods>().expect("one of the listed words"))
}

pub fn run(a: AgentArgs, store: PathBuf) -> Result<()> {
    if a.lease_retry_ms >= a.lease_duration_seconds * 1000 {
        anyhow::bail!(
            "--lease-retry-ms {} must be less than --lease-duration-seconds {} (in milliseconds)",
            a.lease_retry_ms,
            a.lease_duration_seconds
        );
    }
    let opts = AgentOptions {
        ifaces: a.ifaces,
        node_ips: a.node_ips,
        node_name: a.node_name.unwrap_or_else(super::hostname),
        store,
        bpffs: a.bpffs,
        cgroup: a.cgroup,
        load: LoadConfig {
            snat_addr: None,
            snat_addr6: None,
            fib_redirect: !a.no_xdp_redirect,
            to_pods: a.to_pods,
            xdp: a.xdp,
            sizes: MapSizes::default(),
            ct_timeouts: CtTimeouts {
                tcp_s: a.ct_timeout_tcp,
                tcp_syn_s: a.ct_timeout_tcp_syn,
                tcp_fin_s: a.ct_timeout_tcp_fin,
                udp_s: a.ct_timeout_udp,
            },
        },
        lb_pools: a.lb_pools,
        cluster_cidrs: a.cluster_cidrs,
        sizes: SizeFlags {
            frontends: a.max_frontends,
            backends: a.max_backends,
            conntrack: a.ct_max,
            affinity: a.affinity_max,
            memory_ratio: a.map_memory_ratio,
        },
        kube: None,
        leases: LeaseOptions {
            namespace: a.lease_namespace,
            timing: crate::lease::Timing {
                duration: Duration::from_secs(a.lease_duration_seconds),
                retry: Duration::from_millis(a.lease_retry_ms),
            },
        },
        metrics_addr: a.metrics_bind_address.0,
        healthz_addr: a.healthz_bind_address.0,
        dns: None,
        routes_resync: Duration::from_secs(a.routes_resync_period.into()),
    };
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if a.cluster_dns.is_empty()
        || a.cluster_dns.len() > 2
        || (a.cluster_dns.len() == 2 && a.cluster_dns[0].is_ipv4() == a.cluster_dns[1].is_ipv4())
    {
        anyhow::bail!(
            "--cluster-dns {:?}: one address, or two of different families",
            a.cluster_dns
        );
    }
    let own = a.cluster_dns.clone();
    let upstreams = crate::dns::upstream::upstreams(&a.dns_upstream, &resolv_conf, &own)
        .map_err(anyhow::Error::msg)?;
    let dns = DnsOptions {
        domain: a.cluster_domain,
        cluster_ips: a.cluster_dns,
        upstreams,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let kube = crate::kube_source::config(a.kubeconfig.as_deref()).await?;
            let serve_dns = match a.dns {
                DnsUse::On => true,
                DnsUse::Off => false,
                DnsUse::Auto => kube.is_none(),
            };
            let dns = serve_dns.then_some(dns);
            agent::run(AgentOptions { kube, dns, ..opts }).await
        })
}

#[cfg(test)]
mod tests {
    use super::seconds;

    /// The flags' defaults, written for people (`6h`), are the programs' own.
    #[test]
    fn timeout_flags_default_to_the_programs_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            agent: super::AgentArgs,
        }
        let a = Cli::try_parse_from(["lb", "--iface", "eth0"])
            .unwrap()
            .agent;
        let flags = lb_common::CtTimeouts {
            tcp_s: a.ct_timeout_tcp,
            tcp_syn_s: a.ct_timeout_tcp_syn,
            tcp_fin_s: a.ct_timeout_tcp_fin,
            udp_s: a.ct_timeout_udp,
        };
        assert_eq!(flags, lb_common::CtTimeouts::DEFAULT);
    }

    #[test]
    fn timeouts_read_as_durations() {
        assert_eq!(seconds("90"), Ok(90));
        assert_eq!(seconds("90s"), Ok(90));
        assert_eq!(seconds("30m"), Ok(1800));
        assert_eq!(seconds("6h"), Ok(21_600));
        assert_eq!(seconds("1h30m"), Ok(5400));
        assert_eq!(seconds("1d"), Ok(86_400));
        for bad in ["", "0s", "h", "5x", "-5s", "1.5h", "400d"] {
            assert!(seconds(bad).is_err(), "{bad:?} accepted");
        }
    }
}
