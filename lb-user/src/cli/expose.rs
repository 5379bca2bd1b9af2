//! `lb expose`: a Service selecting a pod's labels (or a service's selector),
//! written as a manifest and applied like any other, so defaults, validation and
//! allocation are the same.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::{AllocationArgs, parse_kind};
use crate::{
    model::{Kind, ObjectKey, parse_manifest},
    store::{Mode, Store},
};

#[derive(Args)]
pub struct ExposeArgs {
    /// pod or service.
    #[arg(value_parser = parse_kind())]
    pub resource: Kind,
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
    #[arg(short = 'n', long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(store: &Store, e: &ExposeArgs) -> Result<()> {
    store.require()?;
    let state = store.load()?;
    let key = ObjectKey::new(&e.namespace, &e.name);
    let (selector, default_port): (BTreeMap<String, String>, Option<i32>) = match e.resource {
        Kind::Pod => {
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
        Kind::Service => {
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
        Kind::EndpointSlice => bail!("cannot expose an EndpointSlice: expose a pod or a service"),
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
    let alloc = e.alloc.parse()?;
    store.apply(&docs, &alloc, Mode::Create)?;
    println!("service/{name} exposed");
    Ok(())
}
