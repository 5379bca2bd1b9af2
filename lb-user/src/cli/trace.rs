//! `lb trace SRC:PORT DST:PORT [tcp|udp]`: what this node's data plane would do
//! with that packet, from the live maps, unchanged (see `crate::trace`). Run on the
//! node (in its network namespace): the packet's way in and out is the node's
//! routes.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use clap::Args;
use lb_common::{PROTO_TCP, PROTO_UDP};

use super::NodeArgs;
use crate::{
    model::ObjectKey,
    netif::Routes,
    store::{Store, lb_ingress_ips},
    table,
    trace::{self, Probe},
};

#[derive(Args)]
pub struct TraceArgs {
    /// The packet's source, ADDRESS:PORT.
    pub src: SocketAddrV4,
    /// Its destination, ADDRESS:PORT.
    pub dst: SocketAddrV4,
    /// Its protocol.
    #[arg(default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub protocol: String,
    /// Output format: a table for people (default) or json.
    #[arg(short = 'o', long, value_parser = ["json"])]
    pub output: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn run(store: &Store, a: &TraceArgs) -> Result<()> {
    let maps = a.node.maps()?;
    let proto = if a.protocol == "udp" {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    let probe = Probe {
        src: a.src,
        dst: a.dst,
        proto,
    };
    let routes = Routes::read().ok();
    let route = |addr: Ipv4Addr| {
        let name = routes.as_ref()?.iface_for(addr.into())?.to_string();
        let ifindex = crate::loader::ifindex(&name).ok()?;
        Some((name, ifindex))
    };
    let mut t = trace::trace(&maps, &probe, route)?;
    if t.frontend.is_some() {
        t.service = service_port(store, &probe);
    }
    match a.output.as_deref() {
        Some(_) => println!("{}", serde_json::to_string_pretty(&t)?),
        None => print!("{}", table::trace(&probe, &t)),
    }
    Ok(())
}

/// The stored service port answering at the probe's destination (`ns/name:port`),
/// if the store knows one: by clusterIP, external or LoadBalancer address and
/// port, or by nodePort.
fn service_port(store: &Store, p: &Probe) -> Option<String> {
    let services = store.services().ok()?;
    let (dst, port) = (std::net::IpAddr::V4(*p.dst.ip()), i32::from(p.dst.port()));
    let protocol = crate::plan::proto_name(p.proto);
    services.iter().find_map(|(key, svc): (&ObjectKey, _)| {
        let spec = svc.spec.as_ref()?;
        let addrs: Vec<std::net::IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.external_ips.iter().flatten())
            .filter_map(|a| a.parse().ok())
            .chain(lb_ingress_ips(svc))
            .collect();
        spec.ports.iter().flatten().find_map(|sp| {
            let same_protocol = sp.protocol.as_deref().unwrap_or("TCP") == protocol;
            let hit = (sp.port == port && addrs.contains(&dst)) || sp.node_port == Some(port);
            (same_protocol && hit).then(|| format!("{key}:{}", crate::plan::port_id(sp)))
        })
    })
}
