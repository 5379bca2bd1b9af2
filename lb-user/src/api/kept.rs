//! The verbs on the objects the store keeps for its clients (Leases, Nodes; see
//! `store::kept`): get, list, create, update (compare-and-swap on the
//! resourceVersion, as the agents' elections need), patch, delete, and their
//! watch events, held in memory since this server started ([`History`]: kept
//! writes go through this process only).

use std::{collections::VecDeque, sync::Mutex};

use serde_json::{Value, json};

use super::{
    handlers::{self, Listed, Params, Reply, Selectors, WriteError},
    patch::PatchType,
    resource::Resource,
    status::ApiError,
    table::Include,
};
use crate::store::{Store, kept::Kept};

/// Events a watch can resume from.
const HISTORY: usize = 4096;

/// One write, as a watch event.
#[derive(Debug, Clone)]
pub struct Event {
    pub rev: u64,
    pub kind: &'static str,
    pub key: String,
    pub ty: &'static str,
    pub object: Value,
}

/// The kept objects' recent writes, and a signal for the watches.
pub struct History {
    inner: Mutex<(u64, VecDeque<Event>)>,
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl History {
    /// Starting at the kept revision `base` (a watch from before it is too old).
    pub fn new(base: u64) -> Self {
        History {
            inner: Mutex::new((base, VecDeque::new())),
            changed: tokio::sync::watch::channel(base).0,
        }
    }

    fn push(&self, event: Event) {
        let rev = event.rev;
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.1.push_back(event);
            while inner.1.len() > HISTORY {
                if let Some(old) = inner.1.pop_front() {
                    inner.0 = old.rev;
                }
            }
        }
        self.changed.send_replace(rev);
    }

    /// The events of `kind` after `rev`; None when `rev` is older than what is
    /// held.
    pub fn since(&self, kind: &str, rev: u64) -> Option<Vec<Event>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if rev < inner.0 {
            return None;
        }
        Some(
            inner
                .1
                .iter()
                .filter(|e| e.rev > rev && e.kind == kind)
                .cloned()
                .collect(),
        )
    }
}

/// The kept key of `name` (in `ns` for a namespaced resource).
pub fn key(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or_default())
}

fn parsed(k: &Kept) -> Result<Value, ApiError> {
    serde_json::from_str(&k.body).map_err(ApiError::internal)
}

pub fn list(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    q: &Params,
) -> Result<Listed, ApiError> {
    let selectors = Selectors::of(res, q)?;
    let ns = if res.namespaced { ns } else { None };
    let (rev, rows) = store.kept_list(res.kind, ns).map_err(ApiError::internal)?;
    Ok(Listed {
        rev,
        items: rows
            .into_iter()
            .filter(|k| selectors.matches_text(&k.body))
            .map(|k| k.body)
            .collect(),
        cont: None,
    })
}

pub fn get(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    as_table: Option<Include>,
) -> Result<Reply, ApiError> {
    let k = store
        .kept_get(res.kind, &key(ns, name))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(res, name))?;
    handlers::one_reply(res, k.body, k.rev, as_table)
}

/// `value` checked as an object of `res` named `name` (in `ns`): its type's
/// fields (decoded as k8s-openapi's type), its apiVersion and kind, its name.
fn checked(
    res: &Resource,
    ns: Option<&str>,
    name: Option<&str>,
    mut value: Value,
) -> Result<Value, ApiError> {
    if value["apiVersion"] != res.api_version() || value["kind"] != res.kind {
        return Err(ApiError::bad_request(format!(
            "the object is not a {} ({})",
            res.kind,
            res.api_version()
        )));
    }
    let given = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if given.is_empty() {
        return Err(ApiError::invalid_fields(
            res,
            "",
            &[crate::model::FieldError::required("metadata.name")],
        ));
    }
    if let Some(name) = name.filter(|n| *n != given) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    if res.namespaced {
        let ns = ns.unwrap_or("default");
        match value["metadata"]["namespace"].as_str() {
            None | Some("") => value["metadata"]["namespace"] = json!(ns),
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    }
    let fits = match res.kind {
        "Lease" => {
            serde_json::from_value::<k8s_openapi::api::coordination::v1::Lease>(value.clone())
                .map(drop)
        }
        "Node" => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Node>(value.clone()).map(drop)
        }
        _ => Ok(()),
    };
    fits.map_err(|e| {
        ApiError::bad_request(format!(
            "{} cannot be handled as a {}: {e}",
            res.kind, res.kind
        ))
    })?;
    Ok(value)
}

/// `new` stamped as the API server stamps a write: uid and creation time kept
/// from `old` (or made), the resourceVersion `rev`.
fn stamp(mut new: Value, old: Option<&Value>, rev: u64) -> Value {
    let meta = &mut new["metadata"];
    match old {
        Some(o) => {
            meta["uid"] = o["metadata"]["uid"].clone();
            meta["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
        }
        None => {
            meta["uid"] = json!(crate::store::apply::new_uid());
            meta["creationTimestamp"] = json!(
                k8s_openapi::jiff::Timestamp::now()
                    .round(k8s_openapi::jiff::Unit::Second)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            );
        }
    }
    meta["resourceVersion"] = json!(rev.to_string());
    new
}

/// How a write changes the stored object.
pub enum Write<'a> {
    Create(Value),
    /// PUT: compare-and-swap when the body carries a resourceVersion.
    Update(Value),
    Patch(PatchType, &'a Value),
    Delete,
}

/// What `write` makes of the kept object (`current`) at revision `rev`: the
/// reply's code, the watch event's type, the object.
fn next(
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    current: Option<&Kept>,
    rev: u64,
    write: Write<'_>,
) -> Result<(u16, &'static str, Value), ApiError> {
    let old = current.map(parsed).transpose()?;
    Ok(match write {
        Write::Create(v) => {
            if old.is_some() {
                return Err(ApiError::already_exists(res, name));
            }
            (201, "ADDED", stamp(checked(res, ns, None, v)?, None, rev))
        }
        Write::Update(v) => {
            let old = old.as_ref().ok_or_else(|| ApiError::not_found(res, name))?;
            let wanted = v["metadata"]["resourceVersion"]
                .as_str()
                .filter(|s| !s.is_empty());
            if wanted.is_some_and(|w| Some(w) != old["metadata"]["resourceVersion"].as_str()) {
                return Err(ApiError::conflict(res, name));
            }
            (
                200,
                "MODIFIED",
                stamp(checked(res, ns, Some(name), v)?, Some(old), rev),
            )
        }
        Write::Patch(ty, p) => {
            let old = old.as_ref().ok_or_else(|| ApiError::not_found(res, name))?;
            let v = handlers::patch_json(res, old.clone(), ty, p, name)?;
            (
                200,
                "MODIFIED",
                stamp(checked(res, ns, Some(name), v)?, Some(old), rev),
            )
        }
        Write::Delete => {
            let old = old.ok_or_else(|| ApiError::not_found(res, name))?;
            (200, "DELETED", stamp(old.clone(), Some(&old), rev))
        }
    })
}

/// Runs `write` on the kept object `name` of `res`; the reply and, unless a dry
/// run (checked against what is stored, nothing written), the watch event.
pub fn write(
    store: &Store,
    history: &History,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    write: Write<'_>,
    dry_run: bool,
) -> Result<Reply, ApiError> {
    let ns = if res.namespaced {
        Some(ns.unwrap_or("default"))
    } else {
        None
    };
    let key = key(ns, name);
    if dry_run {
        let current = store.kept_get(res.kind, &key).map_err(ApiError::internal)?;
        let rev = current.as_ref().map_or(0, |c| c.rev);
        let (code, _, mut object) = next(res, ns, name, current.as_ref(), rev, write)?;
        if current.is_none() {
            object["metadata"]["resourceVersion"] = Value::Null;
        }
        return Ok(Reply {
            code,
            body: object.to_string(),
            warnings: Vec::new(),
        });
    }
    let mut outcome = None;
    store
        .kept_write::<WriteError>(res.kind, &key, |current, rev| {
            let (code, ty, object) = next(res, ns, name, current, rev, write)?;
            let body = (ty != "DELETED").then(|| object.to_string());
            outcome = Some((code, ty, object, rev));
            Ok(body)
        })
        .map_err(|e| e.api(res))?;
    let (code, ty, object, rev) = outcome.expect("a write that succeeded had an outcome");
    history.push(Event {
        rev,
        kind: res.kind,
        key,
        ty,
        object: object.clone(),
    });
    Ok(Reply {
        code,
        body: object.to_string(),
        warnings: Vec::new(),
    })
}
