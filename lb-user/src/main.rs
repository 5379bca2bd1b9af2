use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

// The CLI and the agent build and drop hundreds of thousands of small objects per
// 10,000-service apply (parsed manifests, JSON rows, map entries); mimalloc's
// thread-local free lists make that markedly cheaper than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser as _;
use k8s_openapi::jiff::Timestamp;
use lb_user::{
    agent::{self, AgentOptions},
    cli::{self, Cli, Command, Output, Resource},
    desired::{self, Node},
    maps::Maps,
    model::{self, Document, ObjectKey, parse_manifest},
    store::{Allocation, Mode, Store},
    table,
};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let store = Store::new(&cli.store);
    match cli.command {
        Command::Agent(a) => {
            let opts = AgentOptions {
                ifaces: a.ifaces,
                node_ips: a.node_ips,
                node_name: a.node_name.unwrap_or_else(hostname),
                store: cli.store,
                bpffs: a.bpffs,
                cgroup: a.cgroup,
                fib_redirect: !a.no_xdp_redirect,
                to_pods: a.to_pods,
                lb_pools: a.lb_pools,
                cluster_cidrs: a.cluster_cidrs,
                kube: None,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let kube = lb_user::kube_source::config(a.kubeconfig.as_deref()).await?;
                    agent::run(AgentOptions { kube, ..opts }).await
                })
        }
        Command::Apply(a) => apply(&store, &a, Mode::Apply),
        Command::Create(a) => apply(&store, &a, Mode::Create),
        Command::Get(g) => get(&store, &g),
        Command::Describe(d) => describe(&store, &d),
        Command::Delete(d) => delete(&store, &d),
        Command::Stats(a) => stats(&a),
        Command::Reset(a) => reset(&a),
        Command::Conntrack(a) => conntrack(&a),
        Command::Expose(e) => expose(&store, &e),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// `kubectl expose`: a Service selecting the pod's labels (or the service's selector),
/// written as a manifest and applied like any other, so defaults, validation and
/// allocation are the same.
fn expose(store: &Store, e: &cli::ExposeArgs) -> Result<()> {
    use std::collections::BTreeMap;
    let state = store.load()?;
    let key = ObjectKey::new(&e.namespace, &e.name).to_string();
    let (selector, default_port): (BTreeMap<String, String>, Option<i32>) = match e.resource {
        cli::ExposeResource::Pod => {
            let pod = state
                .pods
                .get(&key)
                .ok_or_else(|| anyhow!("pods \"{}\" not found", e.name))?;
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if labels.is_empty() {
                bail!(
                    "couldn't retrieve selectors via --selector flag or introspection: the pod has no labels"
                );
            }
            let port = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .map(|p| p.container_port)
                .next();
            (labels, port)
        }
        cli::ExposeResource::Service => {
            let svc = state
                .services
                .get(&key)
                .ok_or_else(|| anyhow!("services \"{}\" not found", e.name))?;
            let spec = svc.spec.as_ref();
            let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
            if selector.is_empty() {
                bail!(
                    "couldn't retrieve selectors via --selector flag or introspection: service {} has no selector",
                    e.name
                );
            }
            let port = spec
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.first())
                .map(|p| p.port);
            (selector, port)
        }
    };
    let port = e
        .port
        .map(i32::from)
        .or(default_port)
        .ok_or_else(|| anyhow!("couldn't find port via --port flag or introspection"))?;
    let target_port = match &e.target_port {
        Some(t) => match t.parse::<i32>() {
            Ok(n) => serde_json::json!(n),
            Err(_) => serde_json::json!(t),
        },
        None => serde_json::json!(port),
    };
    let name = e.service_name.clone().unwrap_or_else(|| e.name.clone());
    let mut spec = serde_json::json!({
        "selector": selector,
        "ports": [{"port": port, "targetPort": target_port, "protocol": e.protocol}],
    });
    if let Some(ty) = &e.service_type {
        spec["type"] = serde_json::json!(ty);
    }
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": e.namespace},
        "spec": spec,
    });
    let docs = parse_manifest("lb expose", &manifest.to_string())?;
    let alloc = parse_allocation(&e.alloc)?;
    store.apply(&docs, &alloc, Mode::Create)?;
    println!("service/{name} exposed");
    Ok(())
}

fn conntrack(a: &cli::StatsArgs) -> Result<()> {
    use lb_common::{CT_DIR_REPLY, CT_F_HAIRPIN, CT_TCP_SEEN_FIN, CT_TCP_SEEN_RST, PROTO_TCP};
    let maps = node_maps(a)?;
    let ep = |addr: u32, port: u16| {
        format!(
            "{}:{}",
            std::net::Ipv4Addr::from(u32::from_be(addr)),
            u16::from_be(port)
        )
    };
    let mut flows = maps.conntrack()?;
    flows.sort_by_key(|(k, v)| (v.svc_id, v.backend_id, k.sport_be, v.direction));
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|(k, v)| {
            let mut state = Vec::new();
            if v.tcp_flags & CT_TCP_SEEN_FIN != 0 {
                state.push("FIN");
            }
            if v.tcp_flags & CT_TCP_SEEN_RST != 0 {
                state.push("RST");
            }
            if v.flags & CT_F_HAIRPIN != 0 {
                state.push("HAIRPIN");
            }
            vec![
                if k.proto == PROTO_TCP { "tcp" } else { "udp" }.to_string(),
                if v.direction == CT_DIR_REPLY {
                    "reply"
                } else {
                    "original"
                }
                .to_string(),
                ep(k.saddr_be, k.sport_be),
                ep(k.daddr_be, k.dport_be),
                ep(v.nat_saddr_be, v.nat_sport_be),
                ep(v.nat_daddr_be, v.nat_dport_be),
                v.svc_id.to_string(),
                v.backend_id.to_string(),
                if state.is_empty() {
                    "-".into()
                } else {
                    state.join(",")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            [
                "PROTO",
                "DIR",
                "SOURCE",
                "DESTINATION",
                "NEW-SOURCE",
                "NEW-DESTINATION",
                "SVC-ID",
                "BACKEND-ID",
                "STATE",
            ]
            .map(String::from)
            .to_vec(),
            rows
        )
    );
    Ok(())
}

/// The maps the agent of `--node-name` (default: this host) pinned under `--bpffs`.
fn node_maps(a: &cli::StatsArgs) -> Result<Maps> {
    let node = a.node_name.clone().unwrap_or_else(hostname);
    let dir = agent::pin_dir(&a.bpffs, &node);
    Maps::open_pinned(&dir)
        .with_context(|| format!("no agent maps for node {node} under {}", dir.display()))
}

fn reset(a: &cli::StatsArgs) -> Result<()> {
    let node = a.node_name.clone().unwrap_or_else(hostname);
    let dir = agent::pin_dir(&a.bpffs, &node);
    if !dir.exists() {
        println!(
            "no data plane pinned for node {node} under {}",
            dir.display()
        );
        return Ok(());
    }
    // Links and maps live as long as their pins (no agent holds them once stopped).
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("data plane of node {node} removed ({})", dir.display());
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into())
}

fn parse_allocation(a: &cli::Allocation) -> Result<Allocation> {
    let (net, len) = a
        .service_cidr
        .split_once('/')
        .and_then(|(n, l)| Some((n.parse().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 30)?)))
        .ok_or_else(|| {
            anyhow!(
                "--service-cidr {}: want an IPv4 CIDR such as 10.96.0.0/12",
                a.service_cidr
            )
        })?;
    let (lo, hi) = a
        .node_port_range
        .split_once('-')
        .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
        .filter(|(l, h)| l <= h && *l > 0)
        .ok_or_else(|| {
            anyhow!(
                "--node-port-range {}: want LOW-HIGH such as 30000-32767",
                a.node_port_range
            )
        })?;
    Ok(Allocation {
        service_cidr: (net, len),
        node_ports: lo..=hi,
    })
}

/// Every document of every file (directories: their .yaml, .yml and .json files, sorted).
fn read_manifests(files: &[String]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            docs.extend(parse_manifest("<stdin>", &text)?);
            continue;
        }
        let path = Path::new(f);
        let paths: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{f}: reading directory"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(&p).map_err(|error| model::ManifestError::Read {
                file: name.clone(),
                error,
            })?;
            docs.extend(parse_manifest(&name, &text)?);
        }
    }
    Ok(docs)
}

fn apply(store: &Store, a: &cli::ApplyArgs, mode: Mode) -> Result<()> {
    let alloc = parse_allocation(&a.alloc)?;
    let docs = read_manifests(&a.files)?;
    if docs.is_empty() {
        bail!(
            "no objects passed to {}",
            if mode == Mode::Apply {
                "apply"
            } else {
                "create"
            }
        );
    }
    let outcomes = store.apply(&docs, &alloc, mode)?;
    for (doc, outcome) in docs.iter().zip(outcomes) {
        println!(
            "{}/{} {}",
            doc.object.resource(),
            doc.object.key().name,
            outcome.as_str()
        );
    }
    Ok(())
}

fn get(store: &Store, g: &cli::GetArgs) -> Result<()> {
    let state = store.load()?;
    let in_scope = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let key = ObjectKey::of(meta);
        (g.all_namespaces || key.namespace == g.namespace)
            && g.name.as_ref().is_none_or(|n| *n == key.name)
    };
    let now = Timestamp::now();
    let wide = g.output == Some(Output::Wide);
    let (text, count, kind) = match g.resource {
        Resource::Svc => {
            let items: Vec<_> = state
                .services
                .values()
                .filter(|s| in_scope(&s.metadata))
                .collect();
            let text = match g.output {
                Some(Output::Yaml) => serde_yaml_ng::to_string(&items)?,
                Some(Output::Json) => serde_json::to_string_pretty(&items)? + "\n",
                _ => table::services(&items, now, wide, g.all_namespaces),
            };
            (text, items.len(), "services")
        }
        Resource::Pods => {
            let items: Vec<_> = state
                .pods
                .values()
                .filter(|p| in_scope(&p.metadata))
                .collect();
            let text = match g.output {
                Some(Output::Yaml) => serde_yaml_ng::to_string(&items)?,
                Some(Output::Json) => serde_json::to_string_pretty(&items)? + "\n",
                _ => table::pods(&items, now, wide, g.all_namespaces),
            };
            (text, items.len(), "pods")
        }
        Resource::Endpointslices => {
            let items: Vec<_> = state
                .endpoint_slices
                .values()
                .filter(|e| in_scope(&e.metadata))
                .collect();
            let text = match g.output {
                Some(Output::Yaml) => serde_yaml_ng::to_string(&items)?,
                Some(Output::Json) => serde_json::to_string_pretty(&items)? + "\n",
                _ => table::endpoint_slices(&items, now, g.all_namespaces),
            };
            (text, items.len(), "endpointslices.discovery.k8s.io")
        }
    };
    if count == 0 {
        if let Some(name) = &g.name {
            bail!("{kind} \"{name}\" not found");
        }
        if g.all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", g.namespace);
        }
        return Ok(());
    }
    print!("{text}");
    Ok(())
}

fn describe(store: &Store, d: &cli::DescribeArgs) -> Result<()> {
    if d.resource != Resource::Svc {
        bail!("describe: only services (svc) can be described");
    }
    let state = store.load()?;
    let key = ObjectKey::new(&d.namespace, &d.name);
    let svc = state.services.get(&key.to_string()).ok_or_else(|| {
        anyhow!(
            "services \"{}\" not found in namespace \"{}\"",
            d.name,
            d.namespace
        )
    })?;
    let spec = svc.spec.clone().unwrap_or_default();
    let kv = |m: Option<&std::collections::BTreeMap<String, String>>| match m
        .filter(|m| !m.is_empty())
    {
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        None => "<none>".into(),
    };
    println!("Name:                     {}", d.name);
    println!("Namespace:                {}", d.namespace);
    println!(
        "Labels:                   {}",
        kv(svc.metadata.labels.as_ref())
    );
    println!("Selector:                 {}", kv(spec.selector.as_ref()));
    println!("Type:                     {}", model::service_type(svc));
    println!(
        "IP:                       {}",
        spec.cluster_ip.as_deref().unwrap_or("<none>")
    );
    let node = d.node_name.clone().unwrap_or_else(hostname);
    let maps = Maps::open_pinned(&agent::pin_dir(&d.bpffs, &node)).ok();
    let entries = maps.as_ref().and_then(|m| m.read_entries().ok());
    let plans = desired::plan(
        &state,
        &Node {
            name: node.clone(),
            addrs: Vec::new(),
        },
    );
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let label = p.name.clone().unwrap_or_else(|| "<unset>".into());
        println!("Port:                     {label}  {}/{proto}", p.port);
        let target = match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                n.to_string()
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s.clone(),
            None => p.port.to_string(),
        };
        println!("TargetPort:               {target}/{proto}");
        if let Some(np) = p.node_port {
            println!("NodePort:                 {label}  {np}/{proto}");
        }
        let port_id = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.port.to_string());
        let plan = plans
            .iter()
            .find(|pl| pl.service == key && pl.port == port_id);
        let eps: Vec<String> = plan
            .map(|pl| {
                pl.endpoints
                    .iter()
                    .map(|(a, p)| format!("{a}:{p}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "Endpoints:                {}",
            if eps.is_empty() {
                "<none>".into()
            } else {
                eps.join(",")
            }
        );
        if let (Some(maps), Some(entries), Some(plan)) = (&maps, &entries, plan) {
            let svc_id = plan
                .frontends
                .iter()
                .find_map(|(k, _)| entries.services.get(k))
                .map(|v| v.svc_id);
            if let Some(id) = svc_id {
                let c = maps.service_counters(id)?;
                println!(
                    "Traffic (node {node}):      {} packets, {} bytes",
                    c.packets, c.bytes
                );
                for (k, b) in entries.backends.range(
                    lb_common::BackendKey {
                        svc_id: id,
                        slot: 0,
                    }..=lb_common::BackendKey {
                        svc_id: id,
                        slot: u32::MAX,
                    },
                ) {
                    let c = maps.backend_counters(b.backend_id)?;
                    let addr = std::net::Ipv4Addr::from(u32::from_be(b.addr_be));
                    println!(
                        "  slot {:<3} {addr}:{:<6} {} packets, {} bytes",
                        k.slot,
                        u16::from_be(b.port_be),
                        c.packets,
                        c.bytes
                    );
                }
            }
        }
    }
    println!(
        "Session Affinity:         {}",
        spec.session_affinity.as_deref().unwrap_or("None")
    );
    if let Some(p) = spec.external_traffic_policy.as_deref() {
        println!("External Traffic Policy:  {p}");
    }
    if maps.is_none() {
        println!(
            "Traffic:                  <no agent maps for node {node} under {}>",
            d.bpffs.display()
        );
    }
    Ok(())
}

fn stats(a: &cli::StatsArgs) -> Result<()> {
    let maps = node_maps(a)?;
    let rows: Vec<Vec<String>> = maps
        .verdicts()?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                lb_common::reason::NAMES[i].to_string(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            vec!["REASON".into(), "PACKETS".into(), "BYTES".into()],
            rows
        )
    );
    Ok(())
}

fn delete(store: &Store, d: &cli::DeleteArgs) -> Result<()> {
    let mut targets: Vec<(&'static str, ObjectKey, &'static str)> = Vec::new();
    if !d.files.is_empty() {
        for doc in read_manifests(&d.files)? {
            targets.push((doc.object.kind(), doc.object.key(), doc.object.resource()));
        }
    } else {
        let resource = d
            .resource
            .ok_or_else(|| anyhow!("delete: give -f FILE, or a resource (svc, pods) and names"))?;
        if d.names.is_empty() {
            bail!("delete: resource(s) were provided, but no name was specified");
        }
        for name in &d.names {
            let (kind, word) = match resource {
                Resource::Svc => ("Service", "service"),
                Resource::Pods => ("Pod", "pod"),
                Resource::Endpointslices => ("EndpointSlice", "endpointslice.discovery.k8s.io"),
            };
            targets.push((kind, ObjectKey::new(&d.namespace, name), word));
        }
    }
    let keys: Vec<(&'static str, ObjectKey)> = targets
        .iter()
        .map(|(k, key, _)| (*k, key.clone()))
        .collect();
    store.delete(&keys)?;
    for (_, key, word) in targets {
        println!("{word} \"{}\" deleted", key.name);
    }
    Ok(())
}
