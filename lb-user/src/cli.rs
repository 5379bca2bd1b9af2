//! The `lb` command line: kubectl's verbs and flags for the objects lb serves, and
//! the agent.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{agent::DEFAULT_BPFFS, loader::ToPods, store::DEFAULT_STORE_DIR};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "An eBPF/XDP load balancer for Kubernetes Services",
    after_help = "Examples:\n  lb agent --iface eth0                 # serve this node\n  lb apply -f svc.yaml                  # create or update objects\n  lb get svc                            # list services like kubectl\n  lb describe svc node-port-service     # ports, endpoints, live counters"
)]
pub struct Cli {
    /// The embedded store's directory, shared by the agent and the CLI.
    #[arg(long, global = true, env = "LB_STORE", default_value = DEFAULT_STORE_DIR)]
    pub store: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the data plane and keep it in step with the store.
    #[command(after_help = "Example:\n  lb agent --iface eth0 --node-ip 192.168.1.2")]
    Agent(AgentArgs),
    /// Create or update objects from manifests (all or nothing per invocation).
    #[command(after_help = "Examples:\n  lb apply -f svc.yaml\n  cat pod.yaml | lb apply -f -")]
    Apply(ApplyArgs),
    /// Create objects from manifests; an existing object is an error.
    Create(ApplyArgs),
    /// List objects.
    #[command(
        after_help = "Examples:\n  lb get svc\n  lb get pods -A -o wide\n  lb get svc my-svc -o yaml"
    )]
    Get(GetArgs),
    /// Show one service in detail, with live counters from the agent's maps.
    Describe(DescribeArgs),
    /// Show the data plane's verdict counters (every packet, by reason) for a node.
    Stats(StatsArgs),
    /// Delete objects by name or by the manifests that made them.
    #[command(after_help = "Examples:\n  lb delete svc my-svc\n  lb delete -f svc.yaml")]
    Delete(DeleteArgs),
    /// Make a service for a pod (its labels become the selector) or for a service's
    /// selector, as `kubectl expose` does.
    #[command(
        after_help = "Examples:\n  lb expose pod hello --name=hello-svc --port=8080 --target-port=80 --type=NodePort\n  lb expose svc web --name=web-np --type=NodePort"
    )]
    Expose(ExposeArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(lb completion bash)\n  lb completion zsh > \"${fpath[1]}/_lb\""
    )]
    Completion { shell: clap_complete::Shell },
    /// List the flows the data plane tracks (both directions of each), as
    /// `conntrack -L` does.
    Conntrack(StatsArgs),
    /// Remove a node's data plane: detach every program and drop its maps (conntrack
    /// included). A stopped agent leaves the data plane forwarding; this ends it.
    #[command(after_help = "Example:\n  lb reset --node-name node1")]
    Reset(StatsArgs),
}

#[derive(Args)]
pub struct AgentArgs {
    /// External interface(s) (the node's uplink); repeat for several.
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// Address(es) NodePorts answer on (default: the IPv4 addresses of the interfaces).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<Ipv4Addr>,
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
    /// `peer` hands them from TC ingress to the pod's end of its veth, skipping the
    /// node's routing and netfilter (as Cilium's host routing); `xdp` redirects them
    /// from XDP into the veth, fastest, but only when every pod's end takes XDP
    /// frames (an XDP program, or GRO on: `ethtool -K eth0 gro on` in the pod;
    /// otherwise the kernel drops them); `stack` leaves them to the kernel's stack,
    /// as without lb. Both `peer` and `xdp` need XDP's FIB lookup: with
    /// `--no-xdp-redirect` packets go through the stack.
    #[arg(long, value_enum, default_value_t = ToPods::Peer)]
    pub to_pods: ToPods,
    /// Addresses LoadBalancer services are given (CIDR; repeat for several). One node
    /// answers ARP for each address; another takes over when its agent stops.
    #[arg(long = "lb-pool", value_parser = parse_cidr)]
    pub lb_pools: Vec<(Ipv4Addr, u8)>,
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
    pub cluster_cidrs: Vec<(Ipv4Addr, u8)>,
}

/// `A.B.C.D/N`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    s.split_once('/')
        .and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 32)?)))
        .ok_or_else(|| format!("{s}: want an IPv4 CIDR such as 192.168.1.240/28"))
}

#[derive(Args)]
pub struct Allocation {
    /// The range ClusterIPs are allocated from.
    #[arg(long, env = "LB_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// The range nodePorts are allocated from.
    #[arg(long, env = "LB_NODE_PORT_RANGE", default_value = "30000-32767")]
    pub node_port_range: String,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest file(s) or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub alloc: Allocation,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    #[value(alias = "services", alias = "service")]
    Svc,
    #[value(alias = "pod", alias = "po")]
    Pods,
    #[value(alias = "endpointslice", alias = "endpointslice.discovery.k8s.io")]
    Endpointslices,
}

#[derive(Args)]
pub struct GetArgs {
    pub resource: Resource,
    /// Only this object.
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short = 'o', long)]
    pub output: Option<Output>,
}

#[derive(Args)]
pub struct DescribeArgs {
    pub resource: Resource,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// bpffs root the agent pins under (for live counters).
    #[arg(long, env = "LB_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The node whose agent's counters to show (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// bpffs root the agent pins under.
    #[arg(long, env = "LB_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The node whose agent's counters to show (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Manifests whose objects to delete.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    pub resource: Option<Resource>,
    pub names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExposeResource {
    #[value(alias = "pods", alias = "po")]
    Pod,
    #[value(alias = "svc", alias = "services")]
    Service,
}

#[derive(Args)]
pub struct ExposeArgs {
    pub resource: ExposeResource,
    /// The pod or service to expose.
    pub name: String,
    /// The new service's name (default: the exposed object's name).
    #[arg(long = "name")]
    pub service_name: Option<String>,
    /// The service port (default: the pod's first container port, or the service's
    /// first port).
    #[arg(long)]
    pub port: Option<u16>,
    /// The port (number or name) on the pods (default: the service port).
    #[arg(long)]
    pub target_port: Option<String>,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// ClusterIP, NodePort or LoadBalancer.
    #[arg(long = "type")]
    pub service_type: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub alloc: Allocation,
}
