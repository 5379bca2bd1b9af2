//! `lb get`: kubectl's tables and formats.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use serde::Serialize;

use super::parse_kind;
use crate::{
    model::{Kind, ObjectKey},
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

/// The objects as YAML or JSON, or `table` of them.
fn render<T: Serialize>(
    items: &[&T],
    output: Option<Output>,
    table: impl FnOnce() -> String,
) -> Result<String> {
    Ok(match output {
        Some(Output::Yaml) => serde_yaml_ng::to_string(items)?,
        Some(Output::Json) => serde_json::to_string_pretty(items)? + "\n",
        _ => table(),
    })
}

pub fn run(store: &Store, g: &GetArgs) -> Result<()> {
    store.require()?;
    let state = store.load()?;
    let in_scope = |meta: &ObjectMeta| {
        let key = ObjectKey::of(meta);
        (g.all_namespaces || key.namespace == g.namespace)
            && g.name.as_ref().is_none_or(|n| *n == key.name)
    };
    let now = Timestamp::now();
    let wide = g.output == Some(Output::Wide);
    let (text, count) = match g.resource {
        Kind::Service => {
            let items: Vec<_> = state
                .services
                .values()
                .filter(|s| in_scope(&s.metadata))
                .collect();
            let text = render(&items, g.output, || {
                table::services(&items, now, wide, g.all_namespaces)
            })?;
            (text, items.len())
        }
        Kind::Pod => {
            let items: Vec<_> = state
                .pods
                .values()
                .filter(|p| in_scope(&p.metadata))
                .collect();
            let text = render(&items, g.output, || {
                table::pods(&items, now, wide, g.all_namespaces)
            })?;
            (text, items.len())
        }
        Kind::EndpointSlice => {
            let items: Vec<_> = state
                .endpoint_slices
                .values()
                .filter(|e| in_scope(&e.metadata))
                .collect();
            let text = render(&items, g.output, || {
                table::endpoint_slices(&items, now, g.all_namespaces)
            })?;
            (text, items.len())
        }
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
