//! Watches: the changes to a resource after a resourceVersion, as a stream of
//! JSON events (ADDED, MODIFIED, DELETED, BOOKMARK), read from the store's rows by
//! revision. The store's commit marker is looked at every [`POLL`]; a watch from
//! a revision whose deletions were pruned ends with the API server's 410 error
//! event, and the client lists again.
//!
//! The store keeps no creation revision: an object is ADDED the first time this
//! watch sees it (or it starts matching the selector), MODIFIED after. A deleted
//! object's last state is not kept either: DELETED carries its name, namespace
//! and the revision of the deletion. A watch from a version (an informer's,
//! after its list) reports every deletion after that version whether or not the
//! object is still matched at its start (it may have been deleted between the
//! client's list and its watch; its labels are gone with it): a client drops a
//! key it does not hold, a cache never keeps a deleted object.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use axum::body::Bytes;
use futures::{SinkExt as _, channel::mpsc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    handlers::{Params, Selectors},
    resource::Resource,
    status::ApiError,
    table::{self, Include},
};
use crate::{
    model::ObjectKey,
    store::{self, ListQuery, Store},
};

/// How often a watch looks for a new revision when no commit woke it (a missed
/// notification), and whether its client is still there.
const POLL: Duration = Duration::from_secs(1);
/// How often a watch that asked for them gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// A watch that names no timeout ends after this long (the API server picks
/// 30-60 minutes); clients watch again from where it ended.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct Watch {
    pub store: PathBuf,
    /// Bumped at each commit to the store.
    pub commits: tokio::sync::watch::Receiver<u64>,
    /// The kept objects' writes.
    pub history: std::sync::Arc<super::kept::History>,
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub params: Params,
    pub as_table: Option<Include>,
}

type Tx = mpsc::Sender<Result<Bytes, std::convert::Infallible>>;

/// Runs `w`, sending its events on `tx` until the client goes or it times out.
pub async fn run(mut w: Watch, mut tx: Tx) {
    if let Err(e) = events(&mut w, &mut tx).await {
        let _ = send(&mut tx, "ERROR", e.to_json()).await;
    }
}

async fn send(tx: &mut Tx, ty: &str, object: Value) -> Result<(), ()> {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    tx.send(Ok(Bytes::from(line))).await.map_err(drop)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// Between two looks at what changed: a bookmark at `rev` when they are asked
/// for (`last`: when the one before was sent) and due, then a wait for the next
/// change (`changed`), at most a look's period. False: the client is gone.
async fn pause(
    tx: &mut Tx,
    res: &Resource,
    rev: u64,
    last: Option<&mut Instant>,
    changed: &mut tokio::sync::watch::Receiver<u64>,
) -> bool {
    let wait = if last.is_some() { BOOKMARK_EVERY } else { POLL };
    if let Some(last) = last.filter(|l| l.elapsed() >= BOOKMARK_EVERY) {
        *last = Instant::now();
        let mark = json!({
            "kind": res.kind,
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
        });
        if send(tx, "BOOKMARK", mark).await.is_err() {
            return false;
        }
    }
    if tx.is_closed() {
        return false;
    }
    let _ = tokio::time::timeout(wait, changed.changed()).await;
    true
}

/// The version a watch starts after (None: none given, or "0": the current
/// objects first).
fn from_version(params: &Params) -> Result<Option<u64>, ApiError> {
    match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("resourceVersion {rv} is not valid"))),
    }
}

/// Ok at the end of the watch (client gone, timeout); Err: the error event.
async fn events(w: &mut Watch, tx: &mut Tx) -> Result<(), ApiError> {
    let res = w.res;
    let selectors = std::sync::Arc::new(Selectors::of(res, &w.params)?);
    let timeout = w
        .params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let bookmarks = w
        .params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    if res.kept {
        return kept_events(w, tx, &selectors, deadline, bookmarks).await;
    }
    let Some(kind) = res.stored else {
        // Nothing the store keeps (events): nothing ever changes.
        while Instant::now() < deadline && !tx.is_closed() {
            tokio::time::sleep(POLL.min(BOOKMARK_EVERY)).await;
        }
        return Ok(());
    };
    let from = from_version(&w.params)?;
    // What matches now: the objects a later deletion is reported for.
    let (dir, ns, sel) = (w.store.clone(), w.namespace.clone(), selectors.clone());
    let page = blocking(move || {
        let query = ListQuery {
            namespace: ns,
            ..Default::default()
        };
        Store::new(dir)
            .list_rows(kind, &query, |b| sel.matches_text(b))
            .map_err(ApiError::internal)
    })
    .await?;
    let mut known: HashSet<ObjectKey> = page.rows.iter().map(|r| r.key.clone()).collect();
    let event = |object: Value| match w.as_table {
        Some(include) => {
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            table::of(res.stored, &[object], rv, None, include)
        }
        None => object,
    };
    let mut rev = match from {
        Some(rv) => rv,
        None => {
            // No version: the current objects first, as ADDED.
            for row in &page.rows {
                let object: Value = serde_json::from_str(row.body.as_deref().unwrap_or("{}"))
                    .map_err(ApiError::internal)?;
                if send(tx, "ADDED", event(object)).await.is_err() {
                    return Ok(());
                }
            }
            page.revision
        }
    };
    let mut last_bookmark = Instant::now();
    while Instant::now() < deadline {
        let newer = store::last_commit(&w.store).is_none_or(|(r, _)| r > rev);
        if newer {
            let dir = w.store.clone();
            let since = blocking(move || {
                Store::new(dir)
                    .rows_since(kind, rev)
                    .map_err(ApiError::internal)
            })
            .await?;
            let Some((now, rows)) = since else {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rev} (the store keeps deletions of the last {} revisions)",
                    store::TOMBSTONE_REVISIONS
                )));
            };
            for row in rows {
                if w.namespace
                    .as_ref()
                    .is_some_and(|ns| *ns != row.key.namespace)
                {
                    continue;
                }
                let (ty, object) = match &row.body {
                    Some(body) => {
                        let object: Value =
                            serde_json::from_str(body).map_err(ApiError::internal)?;
                        if selectors.matches(&object) {
                            let ty = if known.insert(row.key.clone()) {
                                "ADDED"
                            } else {
                                "MODIFIED"
                            };
                            (ty, object)
                        } else if known.remove(&row.key) {
                            ("DELETED", object)
                        } else {
                            continue;
                        }
                    }
                    None => {
                        if !known.remove(&row.key) && from.is_none() {
                            continue;
                        }
                        let gone = json!({
                            "kind": res.kind,
                            "apiVersion": res.api_version(),
                            "metadata": {
                                "name": row.key.name,
                                "namespace": row.key.namespace,
                                "resourceVersion": row.rev.to_string(),
                            },
                        });
                        ("DELETED", gone)
                    }
                };
                if send(tx, ty, event(object)).await.is_err() {
                    return Ok(());
                }
            }
            rev = rev.max(now);
        }
        if !pause(
            tx,
            res,
            rev,
            bookmarks.then_some(&mut last_bookmark),
            &mut w.commits,
        )
        .await
        {
            return Ok(());
        }
    }
    Ok(())
}

/// A watch on a kept resource (Leases, Nodes): the writes this server made after
/// the version asked for, from its history.
async fn kept_events(
    w: &mut Watch,
    tx: &mut Tx,
    selectors: &Selectors,
    deadline: Instant,
    bookmarks: bool,
) -> Result<(), ApiError> {
    let res = w.res;
    let ns = w.namespace.clone().filter(|_| res.namespaced);
    let mut changed = w.history.changed.subscribe();
    let from = from_version(&w.params)?;
    let (dir, list_ns) = (w.store.clone(), ns.clone());
    let (now, current) = blocking(move || {
        Store::new(dir)
            .kept_list(res.kind, list_ns.as_deref())
            .map_err(ApiError::internal)
    })
    .await?;
    let mut rev = match from {
        Some(rv) => rv,
        None => {
            for k in current.iter().filter(|k| selectors.matches_text(&k.body)) {
                let object: Value = serde_json::from_str(&k.body).map_err(ApiError::internal)?;
                if send(tx, "ADDED", object).await.is_err() {
                    return Ok(());
                }
            }
            now
        }
    };
    let prefix = ns.map(|n| format!("{n}/"));
    let mut last_bookmark = Instant::now();
    while Instant::now() < deadline {
        let events = w
            .history
            .since(res.kind, rev)
            .ok_or_else(|| ApiError::gone(format!("too old resource version: {rev}")))?;
        for e in events {
            rev = rev.max(e.rev);
            if prefix
                .as_ref()
                .is_some_and(|p| !e.key.starts_with(p.as_str()))
            {
                continue;
            }
            if !selectors.matches(&e.object) {
                continue;
            }
            if send(tx, e.ty, e.object).await.is_err() {
                return Ok(());
            }
        }
        if !pause(
            tx,
            res,
            rev,
            bookmarks.then_some(&mut last_bookmark),
            &mut changed,
        )
        .await
        {
            return Ok(());
        }
    }
    Ok(())
}
