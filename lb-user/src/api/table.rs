//! `kubectl get`'s tables: the `Table` form of a list or an object (the client
//! asks for it in `Accept`), with the API server's columns and cells computed by
//! `crate::table`, the same cells `lb get` prints.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::{model::Kind, table};

/// Whether `accept` asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// What each row carries of its object (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn of(param: Option<&str>) -> Include {
        match param {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// The columns of a stored kind (None: the kind has no table of its own; a
/// name and an age are shown).
fn columns(kind: Option<Kind>) -> &'static [(&'static str, u8)] {
    match kind {
        Some(Kind::Service) => &table::SERVICE_COLUMNS,
        Some(Kind::Pod) => &table::POD_COLUMNS,
        Some(Kind::EndpointSlice) => &table::ENDPOINT_SLICE_COLUMNS,
        None => &[("Name", 0), ("Age", 0)],
    }
}

/// One object's cells.
fn cells(kind: Option<Kind>, object: &Value, now: Timestamp) -> Vec<String> {
    let typed = || -> Option<Vec<String>> {
        Some(match kind? {
            Kind::Service => {
                table::service_cells(&serde_json::from_value(object.clone()).ok()?, now)
            }
            Kind::Pod => table::pod_cells(&serde_json::from_value(object.clone()).ok()?, now),
            Kind::EndpointSlice => {
                table::endpoint_slice_cells(&serde_json::from_value(object.clone()).ok()?, now)
            }
        })
    };
    typed().unwrap_or_else(|| {
        let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(object["metadata"].clone()).unwrap_or_default();
        let age = meta
            .creation_timestamp
            .map(|t| table::human_duration(now.duration_since(t.0).as_secs()))
            .unwrap_or_else(|| "<unknown>".into());
        let mut row = vec![meta.name.unwrap_or_default(), age];
        row.resize(columns(kind).len(), "<none>".into());
        row
    })
}

/// A Table of `objects` at revision `rev` (`continue` when more follow).
pub fn of(
    kind: Option<Kind>,
    objects: &[Value],
    rev: u64,
    cont: Option<&str>,
    include: Include,
) -> Value {
    let now = Timestamp::now();
    let defs: Vec<Value> = columns(kind)
        .iter()
        .map(|(name, priority)| {
            json!({
                "name": name,
                "type": "string",
                "format": if *name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(kind, o, now)});
            match include {
                Include::None => {}
                Include::Object => row["object"] = o.clone(),
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
