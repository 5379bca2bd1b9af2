//! A bulk apply: the documents of a manifest of any size, batch after batch, in
//! one write transaction of the store, every object stored or none.

use rusqlite::Connection;

use super::{
    Allocation, Encoded, LOG_LEFT_FOR_LATER, Mode, Outcome, Ranges, Scope, Store, StoreError,
    alloc, apply, revision, set_ranges, stored_ranges, write_encoded,
};
use crate::{
    model::{Document, Kind, ObjectKey},
    state::State,
};

/// A bulk write that has named this many objects, into a store that held some,
/// reads which objects the store holds (if at most [`KEYS_READ_AT_MOST`]) and
/// from then on looks up only those and the ones it named before: 1,100,000
/// objects applied into a store holding a few (an agent's cluster DNS service)
/// were looked up one by one, each in vain (~0.8 s of the store's thread); the
/// keys of 75,000 rows read in ~10 ms.
pub(super) const KEYS_READ_PAST: usize = 10_000;
/// See [`KEYS_READ_PAST`]: a store holding more is looked up object by object.
const KEYS_READ_AT_MOST: usize = 65_536;

/// A bulk apply ([`Store::bulk_apply`]): each batch of documents is checked and
/// written inside one write transaction as it comes, so a manifest of 1,000,000
/// objects is never held whole; [`commit`](Self::commit) stores every batch under
/// one revision, dropping it (an error in any batch) stores none.
pub struct BulkApply<'s> {
    store: &'s Store,
    /// The transaction's connection, when not the writer's (None while it is).
    conn: Option<Connection>,
    /// Writes the batches after the first (while the next ones are checked and
    /// encoded), until [`BulkApply::conn`] takes the connection back.
    writer: Option<Writer>,
    /// The transaction is still open (rolled back on drop).
    in_transaction: bool,
    alloc: Allocation,
    mode: Mode,
    /// What every service holds, read from the index once a batch holds a service,
    /// then kept up to date by every document applied.
    taken: Option<alloc::Taken>,
    /// The revision the batches are written under.
    rev: u64,
    now: k8s_openapi::jiff::Timestamp,
    /// Some batch wrote an object.
    changed: bool,
    /// How many objects the batches wrote.
    written: usize,
    /// Once known (the store held no object at the start, or its keys were read
    /// past [`KEYS_READ_PAST`]): a hash of the kind and key of each object the
    /// store held then and each one this apply named since, which alone may be
    /// there to read (a first apply of 1,100,000 objects looked each up in vain:
    /// ~0.6 s). Hashed with foldhash: with std's SipHash, hashing and inserting
    /// took ~0.5 s of the store's thread for 1,100,000 objects.
    pub(super) named: Option<foldhash::HashSet<u64>>,
    /// How many objects the batches named (each counted each time).
    named_count: usize,
}

/// The thread that writes a bulk apply's batches into its transaction.
struct Writer {
    batches: std::sync::mpsc::SyncSender<Vec<Encoded>>,
    /// Gives the connection back, with the first error of a write (the batches
    /// after it are not written).
    thread: std::thread::JoinHandle<(Connection, Result<(), StoreError>)>,
}

impl BulkApply<'_> {
    /// Applies one batch of documents (after those of the batches before it): the
    /// outcome of each, or the first refusal (a write of an earlier batch that
    /// failed comes first).
    pub fn apply(&mut self, docs: Vec<Document>) -> Result<Vec<Outcome>, StoreError> {
        let applied = self.apply_batch(docs);
        if applied.is_err() {
            self.conn()?;
        }
        applied
    }

    fn apply_batch(&mut self, docs: Vec<Document>) -> Result<Vec<Outcome>, StoreError> {
        let store = self.store;
        let named_before = self.named_count;
        self.named_count += docs.len();
        // Once, in the batch that takes the count past KEYS_READ_PAST.
        if self.named.is_none()
            && named_before < KEYS_READ_PAST
            && self.named_count >= KEYS_READ_PAST
        {
            // The rows this apply wrote so far are read with the others.
            let most = KEYS_READ_AT_MOST + self.written;
            self.named = store.key_hashes(self.conn()?, most)?;
        }
        // The named objects only: what every other service holds comes from the
        // index of taken values, so one more service in a store of 100,000 reads
        // 100,000 integers, not 100,000 services.
        let objects: Vec<(Kind, ObjectKey)> = docs
            .iter()
            .filter(|d| {
                let Some(named) = &mut self.named else {
                    return true;
                };
                // Stored, named before, or a hash shared with one that is: read.
                let (namespace, name) = ObjectKey::parts(d.object.meta());
                !named.insert(key_hash(named, d.object.kind().as_str(), namespace, name))
            })
            .map(|d| (d.object.kind(), d.object.key()))
            .collect();
        let scope = Scope {
            all_services: false,
            objects,
        };
        // Only services allocate (and hold) clusterIPs and nodePorts.
        if self.taken.is_none() && docs.iter().any(|d| d.object.kind() == Kind::Service) {
            let alloc = self.alloc.clone();
            self.taken = Some(store.taken(self.conn()?, &alloc)?);
        }
        // Nothing to read (objects neither stored nor named before): the writer
        // writes on.
        let before = if scope.objects.is_empty() {
            State {
                revision: self.rev - 1,
                ..State::default()
            }
        } else {
            self.read_scope(&scope)?
        };
        let mut nothing = alloc::Taken::from_rows([], &self.alloc);
        let taken = self.taken.as_mut().unwrap_or(&mut nothing);
        let mut state = before.clone();
        let outcomes = apply::apply_taking(
            &mut state,
            taken,
            docs,
            &self.alloc,
            self.mode,
            self.now,
            self.rev,
        )?;
        let changes = before.changes_to(state);
        if !changes.is_empty() {
            self.written += changes.len();
            let rows = store.encode(changes, self.rev)?;
            self.write(rows)?;
            self.changed = true;
        }
        Ok(outcomes)
    }

    /// What `scope` names, as this apply left it so far.
    pub(super) fn read_scope(&mut self, scope: &Scope) -> Result<State, StoreError> {
        let store = self.store;
        store.read_scope(self.conn()?, scope)
    }

    /// Writes `rows`: the first batch here (an apply of one batch starts no
    /// thread), the ones after it on the writer's thread, which writes one batch
    /// while the next is checked and encoded (SQLite's inserts were ~2 s of one
    /// core's time for 1,100,000 objects, during which the store's thread made
    /// nothing else).
    fn write(&mut self, rows: Vec<Encoded>) -> Result<(), StoreError> {
        let (store, rev) = (self.store, self.rev);
        if !self.changed {
            return write_encoded(&store.dir, self.conn()?, &rows, rev);
        }
        if self.writer.is_none() {
            let dir = store.dir.clone();
            let conn = self
                .conn
                .take()
                .expect("the connection is here without a writer");
            // One batch waits while one is written.
            let (batches, to_write) = std::sync::mpsc::sync_channel::<Vec<Encoded>>(1);
            let thread = std::thread::Builder::new()
                .name("store writer".into())
                .spawn(move || {
                    let written = to_write
                        .iter()
                        .try_for_each(|rows| write_encoded(&dir, &conn, &rows, rev));
                    (conn, written)
                })
                .map_err(store.io("starting the writer"))?;
            self.writer = Some(Writer { batches, thread });
        }
        let writer = self.writer.as_ref().expect("started");
        if writer.batches.send(rows).is_err() {
            // It stopped at an error: that one.
            self.conn()?;
        }
        Ok(())
    }

    /// The transaction's connection, once the writer wrote every batch handed to
    /// it (its error, if a write failed: the connection is back all the same).
    pub(super) fn conn(&mut self) -> Result<&Connection, StoreError> {
        if let Some(Writer { batches, thread }) = self.writer.take() {
            drop(batches);
            let (conn, written) = match thread.join() {
                Ok(joined) => joined,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            self.conn = Some(conn);
            written?;
        }
        Ok(self.conn.as_ref().expect("the connection is back"))
    }

    /// Commits every batch under one new revision (none if nothing changed).
    pub fn commit(mut self) -> Result<(), StoreError> {
        let store = self.store;
        let (changed, rev) = (self.changed, self.rev);
        let copy_log = self.written <= LOG_LEFT_FOR_LATER;
        let conn = self.conn()?;
        if changed {
            store.set_revision(conn, rev)?;
        }
        conn.execute_batch("COMMIT")
            .map_err(store.db("committing"))?;
        store.committed(conn, changed.then_some(rev), copy_log);
        self.in_transaction = false;
        Ok(())
    }
}

impl Drop for BulkApply<'_> {
    fn drop(&mut self) {
        if self.in_transaction {
            // The writer's error (if any) was the apply's.
            let _ = self.conn();
            if let Some(conn) = &self.conn {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
}

impl Store {
    /// Starts a bulk apply: documents applied batch after batch in one write
    /// transaction, all stored by [`BulkApply::commit`] or none.
    pub fn bulk_apply(&self, ranges: &Ranges, mode: Mode) -> Result<BulkApply<'_>, StoreError> {
        let conn = self.open(true)?.expect("created");
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(self.db("locking"))?;
        // From here on, dropping `bulk` rolls the transaction back.
        let mut bulk = BulkApply {
            store: self,
            conn: Some(conn),
            writer: None,
            in_transaction: true,
            alloc: Allocation::default(),
            mode,
            taken: None,
            rev: 0,
            now: k8s_openapi::jiff::Timestamp::now(),
            changed: false,
            written: 0,
            named: None,
            named_count: 0,
        };
        let conn = bulk.conn.as_ref().expect("no writer yet");
        let stored = stored_ranges(conn).map_err(self.db("reading the ranges"))?;
        let alloc = ranges
            .resolve(stored.as_ref())
            .map_err(|error| StoreError::Ranges {
                dir: self.dir.clone(),
                error,
            })?;
        if stored.is_none() {
            set_ranges(conn, &alloc).map_err(self.db("writing the ranges"))?;
        }
        let rev = revision(conn).map_err(self.db("reading the revision"))? + 1;
        let empty: bool = conn
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM objects WHERE body IS NOT NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(self.db("reading the objects"))?;
        bulk.alloc = alloc;
        bulk.rev = rev;
        bulk.named = empty.then(foldhash::HashSet::default);
        Ok(bulk)
    }

    /// A hash ([`key_hash`]) of each stored object's kind and key, if the store
    /// holds at most `most` objects.
    pub(super) fn key_hashes(
        &self,
        conn: &Connection,
        most: usize,
    ) -> Result<Option<foldhash::HashSet<u64>>, StoreError> {
        let mut stmt = conn
            .prepare("SELECT kind, key FROM objects WHERE body IS NOT NULL LIMIT ?1")
            .map_err(self.db("reading the keys"))?;
        let mut rows = stmt
            .query([most as i64 + 1])
            .map_err(self.db("reading the keys"))?;
        let mut hashes = foldhash::HashSet::default();
        let mut held = 0;
        while let Some(row) = rows.next().map_err(self.db("reading the keys"))? {
            held += 1;
            if held > most {
                return Ok(None);
            }
            let text = |i| -> rusqlite::Result<&str> { Ok(row.get_ref(i)?.as_str()?) };
            let (kind, key) = text(0)
                .and_then(|kind| Ok((kind, text(1)?)))
                .map_err(self.db("reading the keys"))?;
            // A stored key is `namespace/name`; a namespace holds no `/`.
            let (namespace, name) = key.split_once('/').unwrap_or((key, ""));
            hashes.insert(key_hash(&hashes, kind, namespace, name));
        }
        Ok(Some(hashes))
    }
}

/// The hash `named` keeps of an object (its kind, namespace and name).
fn key_hash(named: &foldhash::HashSet<u64>, kind: &str, namespace: &str, name: &str) -> u64 {
    use std::hash::BuildHasher as _;
    named.hasher().hash_one((kind, namespace, name))
}
