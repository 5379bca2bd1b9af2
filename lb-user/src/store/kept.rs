//! Objects the store keeps for its API clients but lb's planning never reads:
//! coordination.k8s.io Leases (the agents' elections when they follow the store
//! through `lb api-server`) and v1 Nodes (registered as a kubelet would). Each is
//! its JSON under a revision counter of their own (`meta.kept_revision`), so a
//! lease renewed five times a second never wakes the agents that follow the
//! store's objects. Writes are compare-and-swap inside one write transaction.

use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::{Store, StoreError, meta, set_meta};

const REVISION: &str = "kept_revision";

/// One kept object: its key (`namespace/name`, `/name` for a cluster-scoped
/// one), the revision that wrote it, its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub key: String,
    pub rev: u64,
    pub body: String,
}

impl Store {
    /// The kept objects of `kind` (in `namespace`, or all) and the kept revision.
    pub fn kept_list(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(u64, Vec<Kept>), StoreError> {
        let read = self.read(|tx| {
            let rev = meta(tx, REVISION).map_err(self.db("reading the revision"))?;
            let (low, high) = super::rows::key_range(namespace);
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, rev, body FROM kept WHERE kind = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
                )
                .map_err(self.db("reading"))?;
            let rows = stmt
                .query_map(params![kind, low, high], |r| {
                    Ok(Kept {
                        key: r.get(0)?,
                        rev: r.get::<_, i64>(1)? as u64,
                        body: r.get(2)?,
                    })
                })
                .map_err(self.db("reading"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.db("reading"))?;
            Ok((rev, rows))
        })?;
        Ok(read.unwrap_or_default())
    }

    /// The kept objects' revision (0: none was ever written).
    pub fn kept_revision(&self) -> Result<u64, StoreError> {
        let read = self.read(|tx| meta(tx, REVISION).map_err(self.db("reading the revision")))?;
        Ok(read.unwrap_or(0))
    }

    /// The kept object of `kind` under `key`.
    pub fn kept_get(&self, kind: &str, key: &str) -> Result<Option<Kept>, StoreError> {
        let read = self.read(|tx| kept_row(tx, kind, key).map_err(self.db("reading")))?;
        Ok(read.flatten())
    }

    /// Writes (or with `write` giving None, deletes) the kept object of `kind`
    /// under `key`: `write` gets what is stored and the revision the write will
    /// have, and gives the new JSON or refuses; nothing is written when it
    /// refuses. Returns the object written (or deleted) and its revision.
    pub fn kept_write<E: From<StoreError>>(
        &self,
        kind: &str,
        key: &str,
        write: impl FnOnce(Option<&Kept>, u64) -> Result<Option<String>, E>,
    ) -> Result<Option<Kept>, E> {
        let mut conn = self.open(true)?.expect("created");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db("locking"))?;
        let current = kept_row(&tx, kind, key).map_err(self.db("reading"))?;
        let rev = meta(&tx, REVISION).map_err(self.db("reading the revision"))? + 1;
        let written = match write(current.as_ref(), rev)? {
            Some(body) => {
                tx.execute(
                    "INSERT INTO kept (kind, key, rev, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, key) DO UPDATE SET rev = ?3, body = ?4",
                    params![kind, key, rev as i64, body],
                )
                .map_err(self.db("writing"))?;
                Some(Kept {
                    key: key.to_string(),
                    rev,
                    body,
                })
            }
            None => {
                let Some(gone) = current else {
                    return Ok(None);
                };
                tx.execute(
                    "DELETE FROM kept WHERE kind = ?1 AND key = ?2",
                    params![kind, key],
                )
                .map_err(self.db("writing"))?;
                Some(Kept { rev, ..gone })
            }
        };
        set_meta(&tx, REVISION, rev).map_err(self.db("writing the revision"))?;
        tx.commit().map_err(self.db("committing"))?;
        // (No agent follows these objects: nothing to wake, the log to copy.)
        self.committed(&conn, None, true);
        Ok(written)
    }
}

/// The kept object of `kind` under `key`, read on `conn`.
fn kept_row(conn: &rusqlite::Connection, kind: &str, key: &str) -> rusqlite::Result<Option<Kept>> {
    conn.query_row(
        "SELECT rev, body FROM kept WHERE kind = ?1 AND key = ?2",
        params![kind, key],
        |r| {
            Ok(Kept {
                key: key.to_string(),
                rev: r.get::<_, i64>(0)? as u64,
                body: r.get(1)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_objects_are_written_by_compare_and_swap_under_their_own_revision() {
        let dir = std::env::temp_dir().join(format!("lb-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        store.init().unwrap();
        #[derive(Debug)]
        enum E {
            Stale,
            Store,
        }
        impl From<StoreError> for E {
            fn from(_: StoreError) -> Self {
                E::Store
            }
        }
        let put = |body: &'static str, expect: Option<u64>| {
            store.kept_write::<E>("Lease", "ns/a", |cur, _| {
                if cur.map(|c| c.rev) != expect {
                    return Err(E::Stale);
                }
                Ok(Some(body.to_string()))
            })
        };
        let first = put("{\"v\":1}", None).unwrap().unwrap();
        assert_eq!(first.rev, 1);
        let second = put("{\"v\":2}", Some(1)).unwrap().unwrap();
        assert_eq!(second.rev, 2);
        // A write from a stale view is refused and writes nothing.
        assert!(matches!(put("{\"v\":3}", Some(1)), Err(E::Stale)));
        assert_eq!(
            store.kept_get("Lease", "ns/a").unwrap().unwrap().body,
            "{\"v\":2}"
        );
        let (rev, all) = store.kept_list("Lease", Some("ns")).unwrap();
        assert_eq!((rev, all.len()), (2, 1));
        assert_eq!(store.kept_list("Lease", Some("other")).unwrap().1.len(), 0);
        // The store's own revision did not move: the agents are not woken.
        assert_eq!(store.revision().unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
