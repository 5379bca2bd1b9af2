//! `lb describe svc`: a service's ports and endpoints as planned, with live counters
//! from the node's maps and what its agent could not program.

use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::{NodeArgs, parse_kind};

use crate::{
    model::{Kind, ObjectKey},
    plan::{self, Node},
    state::Tracked,
    status,
    store::Store,
    table::{self, PortDetail, SlotTraffic},
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
    store.require()?;
    let tracked = Tracked::new(store.load_facts()?);
    let key = ObjectKey::new(&d.namespace, &d.name);
    let svc = tracked
        .state
        .services
        .get(&key)
        .ok_or_else(|| anyhow!("services \"{}\" not found", d.name))?;
    let node = d.node.node();
    let maps = d.node.maps().ok();
    let entries = maps.as_ref().and_then(|m| m.read_entries().ok());
    let plans = plan::plan(
        &tracked,
        &Node {
            name: node.clone(),
            ..Node::default()
        },
        [&key],
    );
    let mut ports = Vec::new();
    for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        // The port's plan in each family (the second family's named " (IPv6)").
        let id = plan::port_id(p);
        let mine: Vec<_> = plans
            .iter()
            .filter(|pl| pl.port == id || pl.port == format!("{id} (IPv6)"))
            .collect();
        let mut traffic = Vec::new();
        for plan in &mine {
            if let (Some(maps), Some(entries)) = (&maps, &entries)
                && let Some(id) = plan
                    .frontends
                    .iter()
                    .find_map(|(k, _)| entries.services.get(k))
                    .map(|v| v.svc_id)
            {
                let mut slots = Vec::new();
                for (k, b) in entries.slots(id) {
                    slots.push(SlotTraffic {
                        slot: k.slot,
                        addr: b.addr(),
                        port: b.port(),
                        counters: maps.backend_counters(b.backend_id())?,
                    });
                }
                traffic.push((maps.service_counters(id)?, slots));
            }
        }
        ports.push(PortDetail {
            endpoints: mine.iter().flat_map(|pl| pl.endpoints.clone()).collect(),
            traffic,
        });
    }
    let refused =
        status::read(store.dir(), &node).and_then(|s| s.refused.get(&key.to_string()).cloned());
    let no_maps = maps.is_none().then(|| {
        format!(
            "no agent maps for node {node} under {}",
            d.node.bpffs.display()
        )
    });
    print!(
        "{}",
        table::describe_service(svc, &ports, &node, no_maps.as_deref(), refused.as_deref())
    );
    Ok(())
}
