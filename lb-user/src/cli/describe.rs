//! `lb describe svc`: a service's ports and endpoints as planned, with live counters
//! from the node's maps and what its agent could not program.

use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::{NodeArgs, parse_kind};
use crate::{
    model::{self, Kind, ObjectKey},
    plan::{self, Node},
    state::Tracked,
    status,
    store::Store,
};

#[derive(Args)]
pub struct DescribeArgs {
    #[arg(value_parser = parse_kind())]
    pub resource: Kind,
    pub name: String,
    #[arg(short = 'n', long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn run(store: &Store, d: &DescribeArgs) -> Result<()> {
    if d.resource != Kind::Service {
        bail!("describe: only services (svc) can be described");
    }
    let tracked = Tracked::new(store.load()?);
    let key = ObjectKey::new(&d.namespace, &d.name);
    let svc = tracked.state.services.get(&key).ok_or_else(|| {
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
    let node = d.node.node();
    let maps = d.node.maps().ok();
    let entries = maps.as_ref().and_then(|m| m.read_entries().ok());
    let plans = plan::plan(
        &tracked,
        &Node {
            name: node.clone(),
            addrs: Vec::new(),
        },
        [&key],
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
        let port_id = plan::port_id(p);
        let plan = plans.iter().find(|pl| pl.port == port_id);
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
                for (k, b) in entries.slots(id) {
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
            d.node.bpffs.display()
        );
    }
    if let Some(error) =
        status::read(store.dir(), &node).and_then(|s| s.refused.get(&key.to_string()).cloned())
    {
        println!("Not programmed (node {node}): {error}");
    }
    Ok(())
}
