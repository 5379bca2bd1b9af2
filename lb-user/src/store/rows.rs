//! The store as the Kubernetes API serves it (`crate::api`): stored rows as JSON
//! text, never decoded (a list of 100,000 services is copied, not parsed); the
//! rows changed after a revision, deletions included, for watches; and one
//! object's read-modify-write inside the writer's transaction, for update and
//! patch. Writes go through [`apply`](super::apply) as `lb apply`'s do.

use rusqlite::params;

use super::{Mode, Outcome, Ranges, Scope, Store, StoreError, meta, revision};
use crate::model::{Document, Kind, Object, ObjectKey};

/// One stored row: an object's JSON (None: its deletion), and the revision that
/// wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: Kind,
    pub key: ObjectKey,
    pub rev: u64,
    pub body: Option<String>,
}

/// A page of a list: its rows, and whether more follow the last.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The store's revision when the page was read.
    pub revision: u64,
    pub rows: Vec<Row>,
    pub more: bool,
}

/// What a list reads: a kind, in one namespace or all, after a key (the page
/// before ended there), at most `limit` rows.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub namespace: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// The keys of one namespace (or all): keys are `namespace/name`, so one
/// namespace is the keys from `namespace/` up to `namespace0` ('0' follows '/').
pub(super) fn key_range(namespace: Option<&str>) -> (String, String) {
    match namespace {
        Some(ns) => (format!("{ns}/"), format!("{ns}0")),
        None => (String::new(), "\u{10ffff}".to_string()),
    }
}

/// Rows fetched at a time while a page filters them (a label selector).
const PAGE_READ: usize = 4096;

impl Store {
    /// The objects of `kind` in key order (namespace, then name) that `query`
    /// names and `keep` keeps, at most `query.limit`.
    pub fn list_rows(
        &self,
        kind: Kind,
        query: &ListQuery,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<Page, StoreError> {
        let read = self.read(|tx| {
            let mut page = Page {
                revision: revision(tx).map_err(self.db("reading the revision"))?,
                ..Default::default()
            };
            let (low, high) = key_range(query.namespace.as_deref());
            let mut from = match &query.after {
                Some(after) if *after >= low => after.clone(),
                _ => low.clone(),
            };
            let mut first = query.after.is_none();
            let limit = query.limit.unwrap_or(usize::MAX);
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, rev, body FROM objects WHERE kind = ?1 AND body IS NOT NULL
                     AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
                )
                .map_err(self.db("reading"))?;
            loop {
                let batch: Vec<(String, i64, String)> = stmt
                    .query_map(
                        params![kind.as_str(), from, high, PAGE_READ as i64 + 1],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(self.db("reading"))?
                    .collect::<Result<_, _>>()
                    .map_err(self.db("reading"))?;
                let full = batch.len() > PAGE_READ;
                for (key, rev, body) in batch.into_iter().take(PAGE_READ) {
                    // `from` itself was the last key of the page before.
                    if !first && key == from {
                        continue;
                    }
                    first = false;
                    from.clone_from(&key);
                    if !keep(&body) {
                        continue;
                    }
                    if page.rows.len() == limit {
                        page.more = true;
                        return Ok(page);
                    }
                    let Some(key) = ObjectKey::from_row(&key) else {
                        continue;
                    };
                    page.rows.push(Row {
                        kind,
                        key,
                        rev: rev as u64,
                        body: Some(body),
                    });
                }
                if !full {
                    return Ok(page);
                }
            }
        })?;
        Ok(read.unwrap_or_default())
    }

    /// The namespaces some stored object is in.
    pub fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let read = self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT DISTINCT substr(key, 1, instr(key, '/') - 1) FROM objects WHERE body IS NOT NULL",
                )
                .map_err(self.db("reading"))?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(self.db("reading"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.db("reading"))?;
            Ok(names)
        })?;
        Ok(read.unwrap_or_default())
    }

    /// The stored object of `kind` under `key`.
    pub fn row(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Row>, StoreError> {
        let read = self.read(|tx| {
            tx.query_row(
                "SELECT rev, body FROM objects WHERE kind = ?1 AND key = ?2 AND body IS NOT NULL",
                params![kind.as_str(), key.to_string()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .map(|(rev, body)| {
                Some(Row {
                    kind,
                    key: key.clone(),
                    rev: rev as u64,
                    body: Some(body),
                })
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(self.db("reading"))
        })?;
        Ok(read.flatten())
    }

    /// Every row of `kind` written or deleted after revision `after`, in the order
    /// they were written, and the store's revision; `None` when deletions after
    /// `after` may have been pruned (a watch from there is too old: 410 Gone).
    pub fn rows_since(
        &self,
        kind: Kind,
        after: u64,
    ) -> Result<Option<(u64, Vec<Row>)>, StoreError> {
        let read = self.read(|tx| {
            if after < meta(tx, "pruned").map_err(self.db("reading the revision"))? {
                return Ok(None);
            }
            let rev = revision(tx).map_err(self.db("reading the revision"))?;
            let mut stmt = tx
                .prepare_cached(
                    // By the revision index: the kind's primary-key range would
                    // read every object of the kind (10,000 services: ~8 ms).
                    "SELECT key, rev, body FROM objects INDEXED BY objects_by_rev
                     WHERE rev > ?2 AND kind = ?1 ORDER BY rev, key",
                )
                .map_err(self.db("reading"))?;
            let rows = stmt
                .query_map(params![kind.as_str(), after as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .map_err(self.db("reading"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.db("reading"))?;
            let rows = rows
                .into_iter()
                .filter_map(|(key, rev, body)| {
                    Some(Row {
                        kind,
                        key: ObjectKey::from_row(&key)?,
                        rev: rev as u64,
                        body,
                    })
                })
                .collect();
            Ok(Some((rev, rows)))
        })?;
        Ok(read.unwrap_or(Some((0, Vec::new()))))
    }

    /// One object written as the API writes it (create, update, patch): `make`
    /// gets the stored object (None: there is none), read inside the write
    /// transaction, and gives the document to store or refuses; the document is
    /// then applied as `lb apply` applies it (defaults, validation, allocation).
    /// `dry_run` does all of that and stores nothing. The object as stored (or as
    /// it would be) comes back.
    pub fn write_one<E: From<StoreError>>(
        &self,
        kind: Kind,
        key: &ObjectKey,
        ranges: &Ranges,
        mode: Mode,
        dry_run: bool,
        make: impl FnOnce(Option<&Object>) -> Result<Document, E>,
    ) -> Result<(Outcome, Object), E> {
        let mut bulk = self.bulk_apply(ranges, mode)?;
        let scope = Scope {
            all_services: false,
            objects: vec![(kind, key.clone())],
        };
        let current = bulk.read_scope(&scope)?.take(kind, key);
        let doc = make(current.as_ref())?;
        let outcome = bulk.apply(vec![doc])?.remove(0);
        let mut stored = bulk.read_scope(&scope)?;
        let mut object = stored
            .take(kind, key)
            .expect("the object just applied is stored");
        if dry_run {
            // Nothing was written: the resourceVersion is the stored one (none
            // for an object that would be created), as the API server's dry run.
            object.meta_mut().resource_version =
                current.and_then(|c| c.meta().resource_version.clone());
        } else {
            bulk.commit()?;
        }
        Ok((outcome, object))
    }

    /// Changes one stored object in place (the status subresource): `change` gets
    /// it and may refuse; nothing else of it is checked. The object as stored.
    pub fn write_status<E: From<StoreError>>(
        &self,
        kind: Kind,
        key: &ObjectKey,
        dry_run: bool,
        change: impl FnOnce(&mut Object) -> Result<(), E>,
    ) -> Result<Option<Object>, E> {
        let scope = Scope {
            all_services: false,
            objects: vec![(kind, key.clone())],
        };
        if dry_run {
            let mut conn = self.open(true)?.expect("created");
            let tx = conn.transaction().map_err(self.db("reading"))?;
            let Some(mut object) = self.read_scope(&tx, &scope)?.take(kind, key) else {
                return Ok(None);
            };
            change(&mut object)?;
            return Ok(Some(object));
        }
        let found = self.update(&scope, |state, _| -> Result<bool, E> {
            let Some(mut object) = state.take(kind, key) else {
                return Ok(false);
            };
            change(&mut object)?;
            state.insert(object);
            Ok(true)
        })?;
        if !found {
            return Ok(None);
        }
        // As stored: with the revision the write gave it.
        let row = self.row(kind, key)?;
        let object = row
            .and_then(|r| r.body)
            .map(|body| super::object_change(kind, key.clone(), Some(&body)))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                dir: self.dir.clone(),
                kind: kind.to_string(),
                key: key.to_string(),
                error: e.to_string(),
            })?;
        Ok(object.and_then(|c| c.object))
    }
}
