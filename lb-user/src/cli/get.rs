//! `lb get`: kubectl's tables and formats.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;

use k8s_openapi::{Metadata, apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use serde::Serialize;

use super::parse_kind;
use crate::{
    model::{Kind, ObjectKey},
    status,
    store::Store,
    table,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(Args)]
pub struct GetArgs {
    #[arg(value_parser = parse_kind())]
    pub resource: Kind,
    /// Only this object.
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short = 'o', long)]
    pub output: Option<Output>,
}

/// The objects of `objects` that `g` names, as YAML or JSON or `table` of them, and
/// how many. As kubectl prints them: one named object alone, else a `List` at
/// the store's `revision`.
fn listed<T: Serialize + Metadata<Ty = ObjectMeta>>(
    objects: &BTreeMap<ObjectKey, Box<T>>,
    g: &GetArgs,
    revision: u64,
    table: impl FnOnce(&[&T]) -> String,
) -> Result<(String, usize)> {
    let items: Vec<&T> = objects
        .values()
        .map(|o| &**o)
        .filter(|o| {
            let key = ObjectKey::of(o.metadata());
            (g.all_namespaces || key.namespace == g.namespace)
                && g.name.as_ref().is_none_or(|n| *n == key.name)
        })
        .collect();
    let document = || -> Result<serde_json::Value> {
        Ok(match (&g.name, items.as_slice()) {
            (Some(_), [one]) => serde_json::to_value(one)?,
            _ => serde_json::json!({
                "apiVersion": "v1",
                "items": items,
                "kind": "List",
                "metadata": {"resourceVersion": revision.to_string()},
            }),
        })
    };
    let text = match g.output {
        Some(Output::Yaml) => serde_yaml_ng::to_string(&document()?)?,
        Some(Output::Json) => serde_json::to_string_pretty(&document()?)? + "\n",
        _ => table(&items),
    };
    Ok((text, items.len()))
}

pub fn run(store: &Store, g: &GetArgs) -> Result<()> {
    store.require()?;
    let state = store.load()?;
    let now = Timestamp::now();
    let wide = g.output == Some(Output::Wide);
    let (text, count) = match g.resource {
        Kind::Service => {
            let refused = status::refused_by_node(store.dir());
            listed(&state.services, g, state.revision, |items| {
                table::services(items, now, wide, g.all_namespaces, &refused)
            })?
        }
        Kind::Pod => listed(&state.pods, g, state.revision, |items| {
            table::pods(items, now, wide, g.all_namespaces)
        })?,
        Kind::EndpointSlice => listed(&state.endpoint_slices, g, state.revision, |items| {
            table::endpoint_slices(items, now, g.all_namespaces)
        })?,
    };
    if count == 0 {
        if let Some(name) = &g.name {
            bail!("{} \"{name}\" not found", g.resource.plural());
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
