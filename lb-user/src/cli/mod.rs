//! The `lb` command line: kubectl's verbs and flags for the objects lb serves, and
//! the agent. One file per verb, each with its arguments and what it does; clap
//! lives here only, and output people read is rendered by `table`.

mod agent;
mod api_server;
mod apply;
mod conntrack;
mod delete;
mod describe;
mod expose;
mod get;
mod ranges;
mod reset;
mod stats;
mod trace;

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{DEFAULT_BPFFS, pin_dir},
    maps::Maps,
    model::Kind,
    store::{DEFAULT_STORE_DIR, Ranges, Store},
};

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
    Agent(Box<agent::AgentArgs>),
    /// Create or update objects from manifests (all or nothing per invocation).
    #[command(after_help = "Examples:\n  lb apply -f svc.yaml\n  cat pod.yaml | lb apply -f -")]
    Apply(apply::ApplyArgs),
    /// Create objects from manifests; an existing object is an error.
    Create(apply::ApplyArgs),
    /// List objects.
    #[command(
        after_help = "Examples:\n  lb get svc\n  lb get pods -A -o wide\n  lb get svc my-svc -o yaml"
    )]
    Get(get::GetArgs),
    /// Show one service in detail, with live counters from the agent's maps.
    Describe(describe::DescribeArgs),
    /// Show the data plane's verdict counters (every packet, by reason) for a node.
    Stats(NodeArgs),
    /// Delete objects by name or by the manifests that made them.
    #[command(after_help = "Examples:\n  lb delete svc my-svc\n  lb delete -f svc.yaml")]
    Delete(delete::DeleteArgs),
    /// Make a service for a pod (its labels become the selector) or for a service's
    /// selector, as `kubectl expose` does.
    #[command(
        after_help = "Examples:\n  lb expose pod hello --name=hello-svc --port=8080 --target-port=80 --type=NodePort\n  lb expose svc web --name=web-np --type=NodePort"
    )]
    Expose(expose::ExposeArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(lb completion bash)\n  lb completion zsh > \"${fpath[1]}/_lb\""
    )]
    Completion { shell: clap_complete::Shell },
    /// List the flows the data plane tracks (both directions of each), as
    /// `conntrack -L` does.
    Conntrack(NodeArgs),
    /// Show the ranges the store allocates ClusterIPs and nodePorts from, or change
    /// them (every service's values must fit the new ones).
    #[command(
        after_help = "Examples:\n  lb ranges\n  lb ranges --node-port-range 30000-32767 --service-cidr 10.96.0.0/12"
    )]
    Ranges(ranges::RangesArgs),
    /// What this node's data plane would do with one packet, read from the live maps
    /// without changing them: frontend, flow or the backends a new flow would get,
    /// translation, verdict, way out.
    #[command(
        after_help = "Examples:\n  lb trace 192.168.1.10:40000 192.168.1.2:30008\n  lb trace 10.244.0.5:5353 10.96.0.10:53 udp -o json"
    )]
    Trace(trace::TraceArgs),
    /// Remove a node's data plane: detach every program and drop its maps (conntrack
    /// included). A stopped agent leaves the data plane forwarding; this ends it.
    #[command(after_help = "Example:\n  lb reset --node-name node1")]
    Reset(NodeArgs),
    /// Serve the store over the Kubernetes API (HTTPS, token), for kubectl and
    /// Kubernetes clients.
    #[command(
        after_help = "Examples:\n  lb api-server &\n  lb kubeconfig > ~/.kube/lb && KUBECONFIG=~/.kube/lb kubectl get svc"
    )]
    ApiServer(api_server::ApiServerArgs),
    /// Print a kubeconfig for `lb api-server` (its CA and token).
    Kubeconfig(api_server::KubeconfigArgs),
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    let store = Store::new(&cli.store);
    match cli.command {
        Command::Agent(a) => agent::run(*a, cli.store),
        Command::Apply(a) => apply::run(&store, &a, crate::store::Mode::Apply),
        Command::Create(a) => apply::run(&store, &a, crate::store::Mode::Create),
        Command::Get(g) => get::run(&store, &g),
        Command::Describe(d) => describe::run(&store, &d),
        Command::Delete(d) => delete::run(&store, &d),
        Command::Stats(a) => stats::run(&a),
        Command::Reset(a) => reset::run(&a),
        Command::Ranges(a) => ranges::run(&store, &a),
        Command::Conntrack(a) => conntrack::run(&a),
        Command::Trace(t) => trace::run(&store, &t),
        Command::Expose(e) => expose::run(&store, &e),
        Command::ApiServer(a) => api_server::run(&a, &cli.store),
        Command::Kubeconfig(k) => api_server::kubeconfig(&k, &cli.store),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// A kubectl resource word (`svc`, `pods`, `endpointslices`, ...), the words listed
/// in help and completions.
fn parse_kind() -> impl clap::builder::TypedValueParser<Value = Kind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Kind::RESOURCE_WORDS.map(|(w, _)| w))
        .map(|w| Kind::from_resource(&w).expect("one of RESOURCE_WORDS"))
}

/// Where ClusterIPs and nodePorts come from. The store keeps the ranges it was
/// created with: a write that names others is refused (`lb ranges` changes them).
#[derive(Args)]
pub struct AllocationArgs {
    /// The ranges ClusterIPs are allocated from, one per family, the primary first
    /// (a new store: default 10.96.0.0/12; dual-stack: 10.96.0.0/12,fd00:10:96::/112).
    #[arg(long, env = "LB_SERVICE_CIDR")]
    pub service_cidr: Option<String>,
    /// The range nodePorts are allocated from (a new store: default 30000-32767).
    #[arg(long, env = "LB_NODE_PORT_RANGE")]
    pub node_port_range: Option<String>,
}

impl AllocationArgs {
    fn parse(&self) -> Result<Ranges> {
        let service_cidrs = self
            .service_cidr
            .as_deref()
            .map(|c| {
                crate::store::alloc::parse_service_cidrs(c)
                    .map_err(|e| anyhow!("--service-cidr {e}"))
            })
            .transpose()?;
        let node_ports = self
            .node_port_range
            .as_deref()
            .map(|r| {
                r.split_once('-')
                    .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
                    .filter(|(l, h)| l <= h && *l > 0)
                    .map(|(l, h)| l..=h)
                    .ok_or_else(|| {
                        anyhow!("--node-port-range {r}: want LOW-HIGH such as 30000-32767")
                    })
            })
            .transpose()?;
        Ok(Ranges {
            service_cidrs,
            node_ports,
        })
    }
}

/// Which node's data plane a command reads.
#[derive(Args)]
pub struct NodeArgs {
    /// bpffs root the agent pins under.
    #[arg(long, env = "LB_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The node whose agent's maps to read (default: the host name).
    #[arg(long, visible_alias = "node")]
    pub node_name: Option<String>,
}

impl NodeArgs {
    fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(hostname)
    }

    fn pins(&self) -> PathBuf {
        pin_dir(&self.bpffs, &self.node())
    }

    /// The maps the node's agent pinned.
    fn maps(&self) -> Result<Maps> {
        let dir = self.pins();
        Maps::open_pinned(&dir).with_context(|| {
            format!(
                "no agent maps for node {} under {}",
                self.node(),
                dir.display()
            )
        })
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into())
}
