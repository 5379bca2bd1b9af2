//! The embedded store: the objects lb serves, in one SQLite database under a
//! directory (default `/var/lib/lb`), shared by every agent and CLI on the machine.
//!
//! One row per object (`kind`, `namespace/name`) with its JSON and the revision that
//! last wrote it; a deleted object leaves a row without JSON (a tombstone), so that
//! "what changed after revision R" is one indexed query: the agent follows the store
//! with it instead of re-reading everything. Writers run in one immediate (write-
//! locked) transaction: they read what they need, change a copy, and commit every
//! changed row or none; two `lb apply` never hand out one value. Allocation
//! (clusterIP, nodePort) happens inside that transaction.
//!
//! Tombstones are kept for the last [`TOMBSTONE_REVISIONS`] revisions, then pruned
//! (`meta.pruned` says through which revision): a reader that last saw a revision
//! older than that gets no change list (`changes_since` is `None`) and reads the
//! store whole, as the agent does at start.

pub mod alloc;
pub mod apply;
mod bulk;
pub mod files;
pub mod kept;
pub mod rows;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

pub use self::{
    alloc::{Allocation, Ranges, lb_ingress_ips},
    apply::{ApplyError, Mode, Outcome},
    bulk::BulkApply,
    rows::{ListQuery, Page, Row as StoredRow},
};
use crate::{
    model::{Cidr, Document, Kind, Object, ObjectKey, PodFacts},
    state::{Change, Fact, FactChange, Facts, State, WholeFacts},
};

pub const DEFAULT_STORE_DIR: &str = "/var/lib/lb";
const DB_FILE: &str = "store.db";
/// Rewritten after every commit (`REVISION UNIX_NS`), for watchers.
const COMMIT_MARKER: &str = "revision";
/// The commit marker's directory, which holds nothing else: watchers are told of
/// its writes alone, not of the database's (a bulk write changes the log some
/// hundred thousand times before it commits).
const COMMIT_DIR: &str = "commit";
/// Deletions are remembered (as tombstones) for this many revisions.
pub const TOMBSTONE_REVISIONS: u64 = 10_000;
/// Writers prune tombstones every this many revisions.
const PRUNE_EVERY: u64 = 256;
/// Rows read and decoded at a time when the store is read whole.
const LOAD_BATCH: usize = 4096;
/// How long a writer waits for another one to commit.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);
/// A commit of more objects than this leaves copying its log into the database to
/// [`Store::checkpoint`] (the agent's next quiet second) or the next write's commit:
/// for 1,100,000 objects the copy takes ~1.2 s of a core and writes ~480 MB, which,
/// done at once, the agents' reads of the same commit would share the node with
/// (their round 4.6 s without it, 5.1-5.4 s with it, paired runs).
const LOG_LEFT_FOR_LATER: usize = 10_000;

/// The store's commit marker in `dir`.
fn marker_path(dir: &Path) -> PathBuf {
    dir.join(COMMIT_DIR).join(COMMIT_MARKER)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    rev  INTEGER NOT NULL,
    body TEXT,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_rev ON objects (rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS taken (
    what  INTEGER NOT NULL,
    value INTEGER NOT NULL,
    key   TEXT NOT NULL,
    PRIMARY KEY (what, value, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS taken_by_key ON taken (key);
CREATE TABLE IF NOT EXISTS kept (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    rev  INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {dir}: {action}: {error}")]
    Io {
        dir: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error("store {dir}: {action}: {error}")]
    Db {
        dir: PathBuf,
        action: &'static str,
        error: rusqlite::Error,
    },
    #[error("store {dir}: {kind} \"{key}\" is corrupt: {error}")]
    Corrupt {
        dir: PathBuf,
        kind: String,
        key: String,
        error: String,
    },
    #[error(
        "store {dir}: no lb store here (no {DB_FILE}): give the store's directory with --store or LB_STORE (an agent or `lb apply` creates one)"
    )]
    Missing { dir: PathBuf },
    #[error("store {dir}: {error}")]
    Ranges { dir: PathBuf, error: String },
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The latest revision committed to the store in `dir`, and when (from its commit
/// marker; None without one).
pub fn last_commit(dir: &Path) -> Option<(u64, std::time::SystemTime)> {
    let text = std::fs::read_to_string(marker_path(dir)).ok()?;
    let (rev, ns) = text.trim().split_once(' ')?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.parse().ok()?);
    Some((rev.parse().ok()?, at))
}

/// Whether `path` is a store's commit marker (a change to it means a new revision).
pub fn is_commit_marker(path: &Path) -> bool {
    path.file_name() == Some(std::ffi::OsStr::new(COMMIT_MARKER))
}

/// Calls `wake` each time a writer commits to the store in `dir` (its commit
/// marker changes; the database's own files change many times within a
/// transaction, before it is visible, and are not watched), for as long as the
/// returned watcher lives. The marker's directory is made if the store has none
/// yet.
pub fn on_commit(
    dir: &Path,
    wake: impl Fn() + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let commits = dir.join(COMMIT_DIR);
    files::refuse_symlink(&commits).map_err(notify::Error::io)?;
    if dir.is_dir() {
        files::private_dir(&commits).map_err(notify::Error::io)?;
    }
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|ev| ev.paths.iter().any(|p| is_commit_marker(p))) {
            wake();
        }
    })?;
    watcher.watch(&commits, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// What a write needs to read first: every service (allocation looks at them all),
/// and the objects it names.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub all_services: bool,
    pub objects: Vec<(Kind, ObjectKey)>,
}

pub struct Store {
    dir: PathBuf,
    /// The connection reads go through, kept open: a long-lived reader (the agent)
    /// also keeps SQLite from checkpointing and removing the log as each `lb apply`
    /// closes, which would make readers wait.
    reader: std::cell::RefCell<Option<Connection>>,
    tombstone_revisions: u64,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            reader: Default::default(),
            tombstone_revisions: TOMBSTONE_REVISIONS,
        }
    }

    /// The same store, remembering deletions for `revisions` revisions (tests).
    pub fn with_tombstone_revisions(mut self, revisions: u64) -> Self {
        self.tombstone_revisions = revisions;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |error| StoreError::Io {
            dir: self.dir.clone(),
            action,
            error,
        }
    }

    fn db(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        db_error(&self.dir, action)
    }

    /// The database, created with its schema if missing (the directory 0700, the
    /// files 0600). `None` when it does not exist and `create` is false (a store
    /// nothing was ever written to); a reader opens it read-only. A symbolic link in
    /// place of any of its files is refused.
    fn open(&self, create: bool) -> Result<Option<Connection>, StoreError> {
        for path in [
            self.dir.join(DB_FILE),
            self.dir.join("store.db-wal"),
            self.dir.join("store.db-shm"),
            self.dir.join(COMMIT_DIR),
            marker_path(&self.dir),
        ] {
            files::refuse_symlink(&path).map_err(self.io("checking its files"))?;
        }
        if !create && !self.db_path().exists() {
            return Ok(None);
        }
        let conn = if create {
            files::private_dir(&self.dir).map_err(self.io("creating the directory"))?;
            files::private_dir(&self.dir.join(COMMIT_DIR))
                .map_err(self.io("creating the directory"))?;
            files::create_private(&self.db_path()).map_err(self.io("creating store.db"))?;
            Connection::open(self.db_path())
        } else {
            Connection::open_with_flags(
                self.db_path(),
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }
        .map_err(self.db("opening store.db"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(self.db("setting the busy timeout"))?;
        if !create {
            // A reader never writes (not even the schema), so it never waits for a
            // writer; a database whose schema is not there yet is empty.
            let ready: bool = conn
                .query_row(
                    "SELECT count(*) = 2 FROM sqlite_master WHERE name IN ('objects', 'meta')",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.db("opening store.db"))?;
            return Ok(ready.then_some(conn));
        }
        // 16 KiB pages (a new database's; one made before keeps its own): a
        // bulk apply of 1,100,000 objects splits and logs a quarter as many pages
        // as with 4 KiB ones (`lb apply` 0.93x the time, the agent's read 0.9x).
        conn.pragma_update(None, "page_size", 16384)
            .map_err(self.db("setting the page size"))?;
        // WAL: readers (agents, `lb get`) never wait for a writer; FULL: a commit is
        // on disk when `lb apply` returns.
        enable_wal(&conn).map_err(self.db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(self.db("setting synchronous"))?;
        // A writer copies the log into the database itself, once its commit marker
        // has woken the agents ([`Store::committed`]): SQLite's own checkpoint runs
        // inside the commit, before the marker (~1 s after a bulk apply of
        // 1,100,000 objects, which the agents waited for).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(self.db("setting wal_autocheckpoint"))?;
        conn.execute_batch(SCHEMA)
            .map_err(self.db("creating the schema"))?;
        Ok(Some(conn))
    }

    /// Creates the store (directory and database) if it is not there yet.
    pub fn init(&self) -> Result<(), StoreError> {
        self.open(true).map(drop)
    }

    /// An error unless a store is there (read-only commands: a wrong path is not an
    /// empty store).
    pub fn require(&self) -> Result<(), StoreError> {
        if self.db_path().is_file() {
            Ok(())
        } else {
            Err(StoreError::Missing {
                dir: self.dir.clone(),
            })
        }
    }

    /// `read` in a read transaction on the reader connection (None: no store yet).
    fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut reader = self.reader.borrow_mut();
        if reader.is_none() {
            *reader = self.open(false)?;
        }
        let Some(conn) = reader.as_mut() else {
            return Ok(None);
        };
        let tx = conn.transaction().map_err(self.db("reading"))?;
        read(&tx).map(Some)
    }

    /// The current state (empty if nothing was ever written).
    pub fn load(&self) -> Result<State, StoreError> {
        let mut state = State::default();
        // The objects are kept whole: without the room decoding left in their lists.
        let compacted = |mut c: Change| {
            if let Some(o) = &mut c.object {
                o.compact();
            }
            c
        };
        state.revision = self.load_each(compacted, |batch| {
            batch.into_iter().for_each(|c| state.apply_change(c))
        })?;
        Ok(state)
    }

    /// The current objects as planning reads them, read a batch at a time (never
    /// the whole store as objects: 1,000,000 pods are ~10 GB as objects, ~0.3 GB as
    /// facts).
    pub fn load_facts(&self) -> Result<Facts, StoreError> {
        let mut whole = WholeFacts::default();
        let revision = self.load_each_as(&fact_change, |batch| {
            batch.into_iter().for_each(|c| whole.add(c))
        })?;
        Ok(whole.facts(revision))
    }

    /// Every stored service (no pod or EndpointSlice is read).
    pub fn services(
        &self,
    ) -> Result<BTreeMap<ObjectKey, Box<k8s_openapi::api::core::v1::Service>>, StoreError> {
        let read = self.read(|tx| {
            let mut rows = Batch::default();
            self.rows(
                tx,
                "SELECT kind, key, body FROM objects WHERE kind = ?1 AND body IS NOT NULL",
                [Kind::Service.as_str()],
                &mut rows,
            )?;
            Ok(self.state_of(tx, rows)?.services)
        })?;
        Ok(read.unwrap_or_default())
    }

    /// Every stored object, as changes made `T` by `convert` (on the cores that
    /// decode them) and handed to `each` a batch at a time; the store's revision (0
    /// if nothing was ever written). A reader that keeps less than the objects (the
    /// agent keeps facts) never holds the whole store's text or objects.
    pub fn load_each<T: Send>(
        &self,
        convert: impl Fn(Change) -> T + Sync,
        each: impl FnMut(Vec<T>),
    ) -> Result<u64, StoreError> {
        self.load_each_as(
            &|kind, key, body| object_change(kind, key, body).map(&convert),
            each,
        )
    }

    /// [`Store::load_each`], each row decoded by `decode` (kind, key, body).
    fn load_each_as<T: Send>(
        &self,
        decode: &(impl Fn(Kind, ObjectKey, Option<&str>) -> serde_json::Result<T> + Sync),
        each: impl FnMut(Vec<T>),
    ) -> Result<u64, StoreError> {
        let read = self.read(|tx| {
            let revision = revision(tx).map_err(self.db("reading the revision"))?;
            self.each_batch(
                tx,
                "SELECT kind, key, body FROM objects WHERE body IS NOT NULL",
                [],
                decode,
                each,
            )?;
            Ok(revision)
        })?;
        Ok(read.unwrap_or(0))
    }

    /// The rows `sql` selects (kind, key, body), decoded [`LOAD_BATCH`] at a time
    /// by `decode` and handed to `each`, in order. Reading the rows (and `each`) on
    /// this thread overlaps with decoding: a batch at a time on each of as many
    /// threads as there are cores, each taking the next batch read as it is done
    /// (no batch waits for another's slowest half), so both cores stay busy
    /// through a read of 1,000,000 rows.
    fn each_batch<T: Send>(
        &self,
        conn: &Connection,
        sql: &str,
        args: impl rusqlite::Params,
        decode: &(impl Fn(Kind, ObjectKey, Option<&str>) -> serde_json::Result<T> + Sync),
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(self.db("reading"))?;
        let mut rows = stmt.query(args).map_err(self.db("reading"))?;
        // Each batch after the first made as large as the one before: grown row by
        // row, a batch's text of ~1.4 MB copied itself a dozen times.
        let mut sized = (0, 0);
        // Up to a batch of rows, and whether they are the last.
        let mut read_batch = || -> Result<(Batch, bool), StoreError> {
            // (With an eighth more text: a batch's rows are not all as long.)
            let mut batch = Batch {
                text: String::with_capacity(sized.0 + sized.0 / 8),
                rows: Vec::with_capacity(sized.1),
            };
            while batch.rows.len() < LOAD_BATCH {
                let Some(r) = rows.next().map_err(self.db("reading"))? else {
                    return Ok((batch, true));
                };
                batch.push_row(r).map_err(self.db("reading"))?;
            }
            sized = (batch.text.len(), batch.rows.len());
            Ok((batch, false))
        };
        let dir = self.dir.as_path();
        let (mut batch, mut last) = read_batch()?;
        if last {
            // A read of one batch at most (a round's changes, mostly) is decoded
            // here: no decoding thread is started for it.
            if !batch.rows.is_empty() {
                each(batch.decode_all(dir, decode)?);
            }
            return Ok(());
        }
        let decoders = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Batches numbered as read; decoded ones come back in any order.
        let (raw, to_decode) = std::sync::mpsc::sync_channel::<(usize, Batch)>(decoders);
        let to_decode = std::sync::Mutex::new(to_decode);
        std::thread::scope(|scope| {
            let (decoded_tx, decoded) = std::sync::mpsc::channel();
            for _ in 0..decoders {
                let (to_decode, decoded_tx) = (&to_decode, decoded_tx.clone());
                scope.spawn(move || {
                    loop {
                        // (The lock is held only while waiting for the next batch.)
                        let next = to_decode.lock().map(|r| r.recv());
                        let Ok(Ok((n, batch))) = next else {
                            return; // no more batches
                        };
                        // Sized at once: collected from a fallible iterator, the
                        // vector grew by doubling.
                        let mut rows = Vec::with_capacity(batch.rows.len());
                        let rows: Result<Vec<T>, StoreError> = batch
                            .rows
                            .iter()
                            .try_for_each(|row| {
                                rows.push(batch.decode_row(row, dir, decode)?);
                                Ok(())
                            })
                            .map(|()| rows);
                        if decoded_tx.send((n, rows)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(decoded_tx);
            // Hands the batches decoded so far to `each` in their order (all of
            // them, once `wait`: every batch was sent).
            let mut early = BTreeMap::new();
            let mut next = 0;
            let mut take = |wait: bool, sent: usize| -> Result<(), StoreError> {
                loop {
                    while let Some(rows) = early.remove(&next) {
                        each(rows?);
                        next += 1;
                    }
                    if next == sent {
                        return Ok(());
                    }
                    let got = if wait {
                        decoded.recv().ok()
                    } else {
                        decoded.try_recv().ok()
                    };
                    match got {
                        Some((n, rows)) => {
                            early.insert(n, rows);
                        }
                        None if wait => panic!("a decoding thread ended early"),
                        None => return Ok(()),
                    }
                }
            };
            let mut sent = 0;
            loop {
                if !batch.rows.is_empty() {
                    let _ = raw.send((sent, batch));
                    sent += 1;
                    take(false, sent)?;
                }
                if last {
                    // The decoders end once `raw` is dropped.
                    drop(raw);
                    return take(true, sent);
                }
                (batch, last) = read_batch()?;
            }
        })
    }

    /// The state `rows` (read on `conn`) make, at the store's revision.
    fn state_of(&self, conn: &Connection, rows: Batch) -> Result<State, StoreError> {
        let mut state = State {
            revision: revision(conn).map_err(self.db("reading the revision"))?,
            ..Default::default()
        };
        for change in rows.decode_all(&self.dir, &object_change)? {
            state.apply_change(change);
        }
        Ok(state)
    }

    /// The revision of the last write (0: none).
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self
            .read(|tx| revision(tx).map_err(self.db("reading the revision")))?
            .unwrap_or(0))
    }

    /// How many objects were written or deleted after revision `after` (an index
    /// count: no row is read).
    pub fn changed_since(&self, after: u64) -> Result<u64, StoreError> {
        let read = self.read(|tx| {
            tx.query_row(
                "SELECT COUNT(*) FROM objects WHERE rev > ?1",
                [after as i64],
                |r| r.get::<_, i64>(0),
            )
            .map_err(self.db("counting the changes"))
        })?;
        Ok(read.unwrap_or(0) as u64)
    }

    /// When revision `rev` was written, if it is still the store's latest (a
    /// store written before this was recorded: None).
    pub fn written_at(&self, rev: u64) -> Result<Option<std::time::SystemTime>, StoreError> {
        let read = self.read(|tx| {
            let latest = revision(tx).map_err(self.db("reading the revision"))?;
            let at = meta_set(tx, REVISION_AT).map_err(self.db("reading the revision"))?;
            Ok((latest == rev)
                .then_some(at)
                .flatten()
                .map(|ns| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)))
        })?;
        Ok(read.flatten())
    }

    /// Every object written or deleted after revision `after`, as changes handed to
    /// `each` a batch at a time, and the revision they bring the store to; `None`
    /// when deletions after `after` may have been pruned already (the reader must
    /// `load` the store whole).
    pub fn changes_since<T: Send>(
        &self,
        after: u64,
        convert: impl Fn(Change) -> T + Sync,
        each: impl FnMut(Vec<T>),
    ) -> Result<Option<u64>, StoreError> {
        self.changes_since_as(
            after,
            &|kind, key, body| object_change(kind, key, body).map(&convert),
            each,
        )
    }

    /// [`Store::changes_since`] as the agent takes them: pods and EndpointSlices
    /// already made facts (a pod decoded only as far as its facts read it).
    pub fn fact_changes_since(
        &self,
        after: u64,
        each: impl FnMut(Vec<FactChange>),
    ) -> Result<Option<u64>, StoreError> {
        self.changes_since_as(after, &fact_change, each)
    }

    fn changes_since_as<T: Send>(
        &self,
        after: u64,
        decode: &(impl Fn(Kind, ObjectKey, Option<&str>) -> serde_json::Result<T> + Sync),
        each: impl FnMut(Vec<T>),
    ) -> Result<Option<u64>, StoreError> {
        let read = self.read(|tx| {
            if after < meta(tx, "pruned").map_err(self.db("reading the revision"))? {
                return Ok(None);
            }
            let revision = revision(tx).map_err(self.db("reading the revision"))?;
            self.each_batch(
                tx,
                "SELECT kind, key, body FROM objects WHERE rev > ?1",
                [after as i64],
                decode,
                each,
            )?;
            Ok(Some(revision))
        })?;
        Ok(read.unwrap_or(Some(0)))
    }

    /// The rows `sql` selects (kind, key, body), added to `into`.
    fn rows(
        &self,
        conn: &Connection,
        sql: &str,
        args: impl rusqlite::Params,
        into: &mut Batch,
    ) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(self.db("reading"))?;
        let mut rows = stmt.query(args).map_err(self.db("reading"))?;
        while let Some(r) = rows.next().map_err(self.db("reading"))? {
            into.push_row(r).map_err(self.db("reading"))?;
        }
        Ok(())
    }

    /// What `scope` names, read inside the writer's transaction.
    fn read_scope(&self, conn: &Connection, scope: &Scope) -> Result<State, StoreError> {
        let mut rows = Batch::default();
        if scope.all_services {
            self.rows(
                conn,
                "SELECT kind, key, body FROM objects WHERE kind = ?1 AND body IS NOT NULL",
                [Kind::Service.as_str()],
                &mut rows,
            )?;
        }
        for (kind, key) in &scope.objects {
            if scope.all_services && *kind == Kind::Service {
                continue;
            }
            self.rows(
                conn,
                "SELECT kind, key, body FROM objects WHERE kind = ?1 AND key = ?2 AND body IS NOT NULL",
                params![kind.as_str(), key.to_string()],
                &mut rows,
            )?;
        }
        self.state_of(conn, rows)
    }

    /// Runs `change` on what `scope` names, in one write transaction, and commits the
    /// objects it changed (under a new revision) if it succeeds. An error leaves the
    /// store as it was. `change` may only touch what `scope` names.
    pub fn update<T, E: From<StoreError>>(
        &self,
        scope: &Scope,
        change: impl FnOnce(&mut State, &Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.open(true)?.expect("created");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db("locking"))?;
        let before = self.read_scope(&tx, scope)?;
        let mut state = before.clone();
        let out = change(&mut state, &tx)?;
        let rev = before.revision + 1;
        let changes = before.changes_to(state);
        let changed = !changes.is_empty();
        if changed {
            self.write_changes(&tx, changes, rev)?;
            self.set_revision(&tx, rev)?;
        }
        // Settings (`meta`) may have changed without any object.
        tx.commit().map_err(self.db("committing"))?;
        self.committed(&conn, changed.then_some(rev), true);
        Ok(out)
    }

    /// Writes `changes` (objects stamped with `rev`, tombstones for deletions) and
    /// keeps the index of what services take in step.
    fn write_changes(
        &self,
        conn: &Connection,
        changes: Vec<Change>,
        rev: u64,
    ) -> Result<(), StoreError> {
        write_encoded(&self.dir, conn, &self.encode(changes, rev)?, rev)
    }

    /// `changes` as they are written (objects stamped with `rev`), encoded on
    /// every core, in the table's key order (kind, key as SQLite compares them): a
    /// batch of a manifest's objects lands on runs of neighbouring pages, not all
    /// over the table.
    fn encode(&self, changes: Vec<Change>, rev: u64) -> Result<Vec<Encoded>, StoreError> {
        let mut rows = crate::par::in_parallel(changes, |mut c| {
            // Every write gives the object the revision it was written under (a
            // status write too), as the API server's resourceVersion.
            if let Some(o) = &mut c.object {
                o.meta_mut().resource_version = Some(rev.to_string());
            }
            let body = match &c.object {
                None => Ok(None),
                Some(Object::Service(o)) => serde_json::to_string(o).map(Some),
                Some(Object::Pod(o)) => serde_json::to_string(o).map(Some),
                Some(Object::EndpointSlice(o)) => serde_json::to_string(o).map(Some),
            };
            let taken = match &c.object {
                Some(Object::Service(o)) => alloc::Taken::rows_of(o),
                _ => Vec::new(),
            };
            (c.kind, c.key.to_string(), body, taken)
        });
        rows.sort_unstable_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        rows.into_iter()
            .map(|(kind, key, body, taken)| match body {
                Ok(body) => Ok(Encoded {
                    kind,
                    key,
                    body,
                    taken,
                }),
                Err(e) => Err(StoreError::Corrupt {
                    dir: self.dir.clone(),
                    kind: kind.to_string(),
                    key,
                    error: e.to_string(),
                }),
            })
            .collect()
    }

    /// Records `rev` as the store's revision (and prunes old deletions every
    /// [`PRUNE_EVERY`] revisions), inside the writer's transaction.
    fn set_revision(&self, conn: &Connection, rev: u64) -> Result<(), StoreError> {
        set_meta(conn, "revision", rev).map_err(self.db("writing the revision"))?;
        // When the revision was written, for the agents' programming latency.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        set_meta(conn, REVISION_AT, at).map_err(self.db("writing the revision"))?;
        if rev.is_multiple_of(PRUNE_EVERY) && rev > self.tombstone_revisions {
            self.prune(conn, rev - self.tombstone_revisions)?;
        }
        Ok(())
    }

    /// After a commit on `conn`: wakes the agents watching the directory if it
    /// wrote revision `rev` (best effort: they also look every second), saying which
    /// revision committed when (Unix ns); then, if `copy_log`, copies the log into
    /// the database (a passive checkpoint: it waits for no reader, and what readers
    /// still use is copied by a later one). A bulk commit leaves the copy for later
    /// ([`LOG_LEFT_FOR_LATER`]): the next ordinary commit's copy or
    /// [`Store::checkpoint`] makes it, so the log holds at most the bulk commits
    /// since the last copy.
    fn committed(&self, conn: &Connection, rev: Option<u64>, copy_log: bool) {
        if let Some(rev) = rev {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let marker = format!("{rev} {at}\n");
            let _ = files::write_private(&marker_path(&self.dir), marker.as_bytes());
        }
        if copy_log {
            let _ = copy_log_into_database(conn);
        }
    }

    /// Copies what the log holds into the database, as a commit does (see
    /// [`Store::committed`]): for the agent, after a bulk commit left the copy for
    /// later. Nothing to do for a store never written to.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if !self.db_path().exists() {
            return Ok(());
        }
        let conn = self.open(true)?.expect("created");
        copy_log_into_database(&conn).map_err(self.db("copying the log into the database"))
    }

    /// What every service holds (clusterIPs, nodePorts), from the index kept beside
    /// the objects; built from the services the first time (a store written before
    /// the index existed).
    fn taken(&self, conn: &Connection, alloc: &Allocation) -> Result<alloc::Taken, StoreError> {
        if !taken_indexed(conn).map_err(self.db("reading the index"))? {
            let every_service = Scope {
                all_services: true,
                objects: Vec::new(),
            };
            for (key, svc) in &self.read_scope(conn, &every_service)?.services {
                set_taken(conn, &key.to_string(), &alloc::Taken::rows_of(svc))
                    .map_err(self.db("building the index"))?;
            }
            set_meta(conn, "taken_indexed", 1).map_err(self.db("building the index"))?;
        }
        let mut stmt = conn
            .prepare_cached("SELECT what, value FROM taken")
            .map_err(self.db("reading the index"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.db("reading the index"))?
            .collect::<Result<Vec<(i64, i64)>, _>>()
            .map_err(self.db("reading the index"))?;
        Ok(alloc::Taken::from_rows(rows, alloc))
    }

    /// Removes the tombstones of revisions up to `through`, inside the writer's
    /// transaction, and records that readers behind it must read the store whole.
    fn prune(&self, tx: &Connection, through: u64) -> Result<(), StoreError> {
        tx.execute(
            "DELETE FROM objects WHERE rev <= ?1 AND body IS NULL",
            [through as i64],
        )
        .map_err(self.db("pruning deletions"))?;
        set_meta(tx, "pruned", through).map_err(self.db("pruning deletions"))?;
        Ok(())
    }

    /// Applies every document or none: the first object that cannot be stored (a taken
    /// nodePort, a clusterIP outside the range, ...) leaves the store untouched.
    pub fn apply(
        &self,
        docs: &[Document],
        ranges: &Ranges,
        mode: Mode,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.apply_owned(docs.to_vec(), ranges, mode)
    }

    /// [`apply`](Self::apply), the documents' objects moved into the store's
    /// transaction instead of copied (a bulk apply holds each object once).
    pub fn apply_owned(
        &self,
        docs: Vec<Document>,
        ranges: &Ranges,
        mode: Mode,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut bulk = self.bulk_apply(ranges, mode)?;
        let outcomes = bulk.apply(docs)?;
        bulk.commit()?;
        Ok(outcomes)
    }

    /// The ranges the store allocates from (None: nothing was written yet).
    pub fn ranges(&self) -> Result<Option<Allocation>, StoreError> {
        Ok(self
            .read(|tx| stored_ranges(tx).map_err(self.db("reading the ranges")))?
            .flatten())
    }

    /// Changes the ranges the store allocates from, if every service's clusterIP and
    /// nodePorts are inside the new ones; returns the ranges in force.
    pub fn set_ranges(&self, ranges: &Ranges) -> Result<Allocation, StoreError> {
        let scope = Scope {
            all_services: true,
            objects: Vec::new(),
        };
        self.update(&scope, |state, conn| {
            let stored = stored_ranges(conn).map_err(self.db("reading the ranges"))?;
            let alloc = ranges.over(&stored.unwrap_or_default());
            if let Some(error) = alloc::misfit(state, &alloc) {
                return Err(StoreError::Ranges {
                    dir: self.dir.clone(),
                    error: format!("cannot change the ranges: {error}"),
                });
            }
            set_ranges(conn, &alloc).map_err(self.db("writing the ranges"))?;
            Ok(alloc)
        })
    }

    /// Gives LoadBalancer services their addresses from `pools` (see
    /// [`alloc::assign_load_balancer_ips`]); returns what was assigned.
    pub fn assign_load_balancer_ips(
        &self,
        pools: &[Cidr],
    ) -> Result<Vec<(ObjectKey, std::net::IpAddr)>, StoreError> {
        let scope = Scope {
            all_services: true,
            objects: Vec::new(),
        };
        self.update(&scope, |state: &mut State, _: &Connection| {
            Ok::<_, StoreError>(alloc::assign_load_balancer_ips(state, pools))
        })
    }

    /// Deletes the named objects; all must exist (or none is deleted).
    pub fn delete(&self, targets: &[(Kind, ObjectKey)]) -> Result<(), StoreError> {
        let scope = Scope {
            all_services: false,
            objects: targets.to_vec(),
        };
        self.update(&scope, |state, _| Ok(apply::delete(state, targets)?))
    }
}

/// A passive checkpoint on `conn`: what the log holds is copied into the database
/// as far as no reader still uses it; it waits for nobody.
fn copy_log_into_database(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Puts the database in WAL mode (kept in the file: once is enough). Switching
/// takes an exclusive lock, for which SQLite does not wait on the busy handler when
/// another connection is opening the new store at the same moment: that is retried
/// for up to the busy timeout.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(())) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The ranges in `meta` (None until the first write records them): the IPv4
/// service CIDR (`service_cidr_addr`, `_len`), the IPv6 one (`service_cidr6_hi`,
/// `_lo`, `_len`; the primary when `service_cidr6_first` is 1), the nodePorts.
fn stored_ranges(conn: &Connection) -> rusqlite::Result<Option<Allocation>> {
    let get = |name| meta_set(conn, name);
    let (Some(lo), Some(hi)) = (get("node_port_min")?, get("node_port_max")?) else {
        return Ok(None);
    };
    let mut cidrs = Vec::new();
    if let (Some(addr), Some(len)) = (get("service_cidr_addr")?, get("service_cidr_len")?) {
        cidrs.push(Cidr {
            addr: Ipv4Addr::from(addr as u32).into(),
            len: len as u8,
        });
    }
    if let (Some(high), Some(low), Some(len)) = (
        get("service_cidr6_hi")?,
        get("service_cidr6_lo")?,
        get("service_cidr6_len")?,
    ) {
        let addr = std::net::Ipv6Addr::from((u128::from(high) << 64) | u128::from(low));
        let v6 = Cidr {
            addr: addr.into(),
            len: len as u8,
        };
        if get("service_cidr6_first")? == Some(1) {
            cidrs.insert(0, v6);
        } else {
            cidrs.push(v6);
        }
    }
    if cidrs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Allocation {
        service_cidrs: cidrs,
        node_ports: lo as u16..=hi as u16,
    }))
}

fn set_ranges(conn: &Connection, a: &Allocation) -> rusqlite::Result<()> {
    let names = [
        "service_cidr_addr",
        "service_cidr_len",
        "service_cidr6_hi",
        "service_cidr6_lo",
        "service_cidr6_len",
        "service_cidr6_first",
    ];
    for name in names {
        conn.execute("DELETE FROM meta WHERE name = ?1", [name])?;
    }
    for (i, c) in a.service_cidrs.iter().enumerate() {
        match c.addr {
            std::net::IpAddr::V4(v4) => {
                set_meta(conn, "service_cidr_addr", u64::from(u32::from(v4)))?;
                set_meta(conn, "service_cidr_len", u64::from(c.len))?;
            }
            std::net::IpAddr::V6(v6) => {
                let n = u128::from(v6);
                set_meta(conn, "service_cidr6_hi", (n >> 64) as u64)?;
                set_meta(conn, "service_cidr6_lo", n as u64)?;
                set_meta(conn, "service_cidr6_len", u64::from(c.len))?;
                set_meta(conn, "service_cidr6_first", u64::from(i == 0))?;
            }
        }
    }
    set_meta(conn, "node_port_min", u64::from(*a.node_ports.start()))?;
    set_meta(conn, "node_port_max", u64::from(*a.node_ports.end()))
}

/// A database error of `action` on the store in `dir` ([`Store::db`], for code
/// that holds no `Store`: the bulk apply's writer thread).
fn db_error<'d>(
    dir: &'d Path,
    action: &'static str,
) -> impl Fn(rusqlite::Error) -> StoreError + 'd {
    move |error| StoreError::Db {
        dir: dir.to_path_buf(),
        action,
        error,
    }
}

/// A change as the store writes it: the object's kind and key, its JSON (None:
/// a deletion's tombstone) and what it takes (a service's clusterIPs and
/// nodePorts).
struct Encoded {
    kind: Kind,
    key: String,
    body: Option<String>,
    taken: Vec<(i64, i64)>,
}

/// Writes `rows` under `rev` in the transaction of `conn` (on the store in
/// `dir`), and keeps the index of what services take in step.
fn write_encoded(
    dir: &Path,
    conn: &Connection,
    rows: &[Encoded],
    rev: u64,
) -> Result<(), StoreError> {
    let db = |action| db_error(dir, action);
    let mut put = conn
        .prepare_cached(
            "INSERT INTO objects (kind, key, rev, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, key) DO UPDATE SET rev = ?3, body = ?4",
        )
        .map_err(db("writing"))?;
    for row in rows {
        put.execute(params![row.kind.as_str(), row.key, rev as i64, row.body])
            .map_err(db("writing"))?;
    }
    if taken_indexed(conn).map_err(db("reading the index"))? {
        for row in rows.iter().filter(|r| r.kind == Kind::Service) {
            set_taken(conn, &row.key, &row.taken).map_err(db("writing the index"))?;
        }
    }
    Ok(())
}

/// Whether the index of taken values is kept (built at the first apply that needs it).
fn taken_indexed(conn: &Connection) -> rusqlite::Result<bool> {
    meta(conn, "taken_indexed").map(|v| v == 1)
}

/// Makes the index hold `rows` for service `key` (none: it is gone).
fn set_taken(conn: &Connection, key: &str, rows: &[(i64, i64)]) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM taken WHERE key = ?1")?
        .execute([key])?;
    let mut put =
        conn.prepare_cached("INSERT OR IGNORE INTO taken (what, value, key) VALUES (?1, ?2, ?3)")?;
    for (what, value) in rows {
        put.execute(params![what, value, key])?;
    }
    Ok(())
}

/// The store's revision (0 before the first write).
/// The `meta` row of when the latest revision was written (Unix ns).
const REVISION_AT: &str = "revision_at_ns";

fn revision(conn: &Connection) -> rusqlite::Result<u64> {
    meta(conn, "revision")
}

/// Sets a `meta` value.
fn set_meta(conn: &Connection, name: &str, value: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = ?2",
        params![name, value as i64],
    )
    .map(|_| ())
}

/// A `meta` value (0 when unset).
fn meta(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    meta_set(conn, name).map(Option::unwrap_or_default)
}

/// A `meta` value, if set.
fn meta_set(conn: &Connection, name: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.map(|v| v as u64))
}

/// Rows read at a time, their kinds, keys and bodies (None: a deletion's
/// tombstone) in one text (a row holds their places in it): reading 1,100,000
/// rows makes a few allocations per batch, not three per row.
#[derive(Default)]
struct Batch {
    text: String,
    rows: Vec<RowAt>,
}

/// Where a row's kind, key and body are in its batch's text.
type RowAt = (Range<usize>, Range<usize>, Option<Range<usize>>);

impl Batch {
    /// Adds SQLite's row `r` (kind, key, body), borrowed from it: copied once,
    /// into the text.
    fn push_row(&mut self, r: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        let text = |i| r.get_ref(i);
        let (kind, key, body) = (
            text(0)?.as_str()?,
            text(1)?.as_str()?,
            text(2)?.as_str_or_null()?,
        );
        let mut put = |s: &str| {
            let at = self.text.len();
            self.text.push_str(s);
            at..self.text.len()
        };
        let row = (put(kind), put(key), body.map(&mut put));
        self.rows.push(row);
        Ok(())
    }

    /// Every row decoded by `decode`, on every core (past a few rows).
    fn decode_all<T: Send>(
        mut self,
        dir: &Path,
        decode: &(impl Fn(Kind, ObjectKey, Option<&str>) -> serde_json::Result<T> + Sync),
    ) -> Result<Vec<T>, StoreError> {
        let rows = std::mem::take(&mut self.rows);
        crate::par::in_parallel(rows, |row| self.decode_row(&row, dir, decode))
            .into_iter()
            .collect()
    }

    /// One row decoded by `decode` (a row of the store in `dir`, for an error).
    fn decode_row<T>(
        &self,
        (kind, key, body): &RowAt,
        dir: &Path,
        decode: &impl Fn(Kind, ObjectKey, Option<&str>) -> serde_json::Result<T>,
    ) -> Result<T, StoreError> {
        let at = |r: &Range<usize>| &self.text[r.clone()];
        let (kind, key, body) = (at(kind), at(key), body.as_ref().map(at));
        let corrupt = |error: String| StoreError::Corrupt {
            dir: dir.to_path_buf(),
            kind: kind.to_string(),
            key: key.to_string(),
            error,
        };
        let Some(known) = Kind::from_kind(kind) else {
            return Err(corrupt(format!("unknown kind {kind}")));
        };
        let Some(object_key) = ObjectKey::from_row(key) else {
            return Err(corrupt("a key that is not namespace/name".into()));
        };
        decode(known, object_key, body).map_err(|e| corrupt(e.to_string()))
    }
}

/// A stored row as the change of its whole object (None: a deletion's tombstone).
fn object_change(kind: Kind, key: ObjectKey, body: Option<&str>) -> serde_json::Result<Change> {
    let object = match body {
        None => None,
        Some(b) => Some(match kind {
            Kind::Service => serde_json::from_str(b).map(Object::Service)?,
            Kind::Pod => serde_json::from_str(b).map(Object::Pod)?,
            Kind::EndpointSlice => serde_json::from_str(b).map(Object::EndpointSlice)?,
        }),
    };
    Ok(Change { kind, key, object })
}

/// A stored row as the agent keeps it: a pod decoded only as far as its facts.
fn fact_change(kind: Kind, key: ObjectKey, body: Option<&str>) -> serde_json::Result<FactChange> {
    match (kind, body) {
        (Kind::Pod, Some(b)) => Ok(FactChange {
            kind,
            key,
            fact: Some(Fact::Pod(PodFacts::from_json(b)?)),
        }),
        _ => object_change(kind, key, body).map(FactChange::from),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod conformance;
