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

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{LoadBalancerIngress, LoadBalancerStatus, Pod, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use rand::Rng as _;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::model::{
    CLUSTER_IP_NONE, Document, FieldError, Object, ObjectKey, TYPE_EXTERNAL_NAME,
    TYPE_LOAD_BALANCER, TYPE_NODE_PORT, cluster_ip, service_type,
};

pub const DEFAULT_STORE_DIR: &str = "/var/lib/lb";
const DB_FILE: &str = "store.db";
/// Rewritten after every commit (`REVISION UNIX_NS`), for watchers.
const COMMIT_MARKER: &str = "revision";
/// Deletions are remembered (as tombstones) for this many revisions.
pub const TOMBSTONE_REVISIONS: u64 = 10_000;
/// Writers prune tombstones every this many revisions.
const PRUNE_EVERY: u64 = 256;
/// How long a writer waits for another one to commit.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);
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
";
pub const KIND_SERVICE: &str = "Service";
pub const KIND_POD: &str = "Pod";
pub const KIND_ENDPOINT_SLICE: &str = "EndpointSlice";

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
    #[error("{file} (document {index}): The {kind} \"{name}\" is invalid: {error}")]
    Invalid {
        file: String,
        index: usize,
        kind: &'static str,
        name: String,
        error: Box<FieldError>,
    },
    #[error("{kind} \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{file} (document {index}): {kind} \"{name}\" already exists")]
    AlreadyExists {
        file: String,
        index: usize,
        kind: &'static str,
        name: String,
    },
    #[error("no free {what} left in {range}")]
    Exhausted { what: &'static str, range: String },
}

/// Whether `path` is a store's commit marker (a change to it means a new revision).
pub fn is_commit_marker(path: &Path) -> bool {
    path.file_name() == Some(std::ffi::OsStr::new(COMMIT_MARKER))
}

/// What the API server would be configured with: where ClusterIPs and nodePorts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub service_cidr: (Ipv4Addr, u8),
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation {
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            node_ports: 30000..=32767,
        }
    }
}

impl Allocation {
    fn cidr_contains(&self, ip: Ipv4Addr) -> bool {
        let (net, len) = self.service_cidr;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(net) & mask
    }

    fn cidr_string(&self) -> String {
        format!("{}/{}", self.service_cidr.0, self.service_cidr.1)
    }
}

/// Everything the store holds. Keys are `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Bumped by every write; becomes the objects' resourceVersion.
    pub revision: u64,
    pub services: BTreeMap<String, Service>,
    pub pods: BTreeMap<String, Pod>,
    #[serde(default)]
    pub endpoint_slices: BTreeMap<String, EndpointSlice>,
    /// Every service takes its endpoints from its EndpointSlices, selector or not
    /// (Kubernetes mode: the cluster's EndpointSlice controller made them). The
    /// embedded store has no such controller: selectors select its pods.
    #[serde(skip)]
    pub endpoints_from_slices: bool,
}

/// One object as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Service(Box<Service>),
    Pod(Box<Pod>),
    EndpointSlice(Box<EndpointSlice>),
}

/// An object written (Some) or deleted (None) after a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: &'static str,
    pub key: String,
    pub object: Option<Stored>,
}

/// What changed after a revision, up to `revision`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub revision: u64,
    pub changes: Vec<Change>,
}

impl State {
    /// Writes or removes `change`'s object.
    pub fn apply_change(&mut self, change: Change) {
        let key = change.key;
        match (change.object, change.kind) {
            (Some(Stored::Service(o)), _) => drop(self.services.insert(key, *o)),
            (Some(Stored::Pod(o)), _) => drop(self.pods.insert(key, *o)),
            (Some(Stored::EndpointSlice(o)), _) => drop(self.endpoint_slices.insert(key, *o)),
            (None, KIND_SERVICE) => drop(self.services.remove(&key)),
            (None, KIND_POD) => drop(self.pods.remove(&key)),
            (None, _) => drop(self.endpoint_slices.remove(&key)),
        }
    }

    /// Applies `changes`, returning what each named (kind, key).
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Vec<(&'static str, String)> {
        changes
            .into_iter()
            .map(|c| {
                let named = (c.kind, c.key.clone());
                self.apply_change(c);
                named
            })
            .collect()
    }

    /// The objects that differ between `self` and `after`, as changes.
    pub fn changes_to(&self, after: State) -> Vec<Change> {
        fn kind<T: PartialEq>(
            out: &mut Vec<Change>,
            kind: &'static str,
            before: &BTreeMap<String, T>,
            after: BTreeMap<String, T>,
            wrap: fn(Box<T>) -> Stored,
        ) {
            for k in before.keys().filter(|k| !after.contains_key(*k)) {
                out.push(Change {
                    kind,
                    key: k.clone(),
                    object: None,
                });
            }
            for (k, v) in after {
                if before.get(&k) != Some(&v) {
                    out.push(Change {
                        kind,
                        key: k,
                        object: Some(wrap(Box::new(v))),
                    });
                }
            }
        }
        let mut out = Vec::new();
        kind(
            &mut out,
            KIND_SERVICE,
            &self.services,
            after.services,
            Stored::Service,
        );
        kind(&mut out, KIND_POD, &self.pods, after.pods, Stored::Pod);
        kind(
            &mut out,
            KIND_ENDPOINT_SLICE,
            &self.endpoint_slices,
            after.endpoint_slices,
            Stored::EndpointSlice,
        );
        out
    }
}

/// What a write needs to read first: every service (allocation looks at them all),
/// and the objects it names.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub all_services: bool,
    pub objects: Vec<(&'static str, String)>,
}

/// What `apply` did to one object, in kubectl's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// How `apply` treats an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `lb apply`: create or update.
    Apply,
    /// `lb create`: an existing object is an error.
    Create,
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
        move |error| StoreError::Db {
            dir: self.dir.clone(),
            action,
            error,
        }
    }

    /// The database, created with its schema if missing. `None` when it does not
    /// exist and `create` is false (a store nothing was ever written to).
    fn open(&self, create: bool) -> Result<Option<Connection>, StoreError> {
        if !create && !self.db_path().exists() {
            return Ok(None);
        }
        fs::create_dir_all(&self.dir).map_err(self.io("creating the directory"))?;
        let conn = Connection::open(self.db_path()).map_err(self.db("opening store.db"))?;
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
        // WAL: readers (agents, `lb get`) never wait for a writer; FULL: a commit is
        // on disk when `lb apply` returns.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(self.db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(self.db("setting synchronous"))?;
        conn.execute_batch(SCHEMA)
            .map_err(self.db("creating the schema"))?;
        Ok(Some(conn))
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
        Ok(self.read(|tx| self.load_in(tx))?.unwrap_or_default())
    }

    fn load_in(&self, tx: &Connection) -> Result<State, StoreError> {
        let rows = self.rows(
            tx,
            "SELECT kind, key, body FROM objects WHERE body IS NOT NULL",
            [],
        )?;
        self.state_of(tx, rows)
    }

    /// The state `rows` (read on `conn`) make, at the store's revision.
    fn state_of(
        &self,
        conn: &Connection,
        rows: Vec<(String, String, Option<String>)>,
    ) -> Result<State, StoreError> {
        let mut state = State {
            revision: revision(conn).map_err(self.db("reading the revision"))?,
            ..Default::default()
        };
        state.apply_changes(self.decode(rows)?);
        Ok(state)
    }

    /// The revision of the last write (0: none).
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self
            .read(|tx| revision(tx).map_err(self.db("reading the revision")))?
            .unwrap_or(0))
    }

    /// Every object written or deleted after revision `after`, and the revision
    /// they bring the store to; `None` when deletions after `after` may have been
    /// pruned already (the reader must `load` the store whole).
    pub fn changes_since(&self, after: u64) -> Result<Option<Changes>, StoreError> {
        let read = self.read(|tx| {
            if after < meta(tx, "pruned").map_err(self.db("reading the revision"))? {
                return Ok(None);
            }
            let revision = revision(tx).map_err(self.db("reading the revision"))?;
            let rows = self.rows(
                tx,
                "SELECT kind, key, body FROM objects WHERE rev > ?1",
                [after as i64],
            )?;
            Ok(Some((revision, rows)))
        })?;
        let Some(read) = read else {
            return Ok(Some(Changes::default()));
        };
        let Some((revision, rows)) = read else {
            return Ok(None);
        };
        Ok(Some(Changes {
            revision,
            changes: self.decode(rows)?,
        }))
    }

    fn rows(
        &self,
        conn: &Connection,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(self.db("reading"))?;
        let rows = stmt
            .query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.db("reading"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.db("reading"))?;
        Ok(rows)
    }

    /// Rows to changes, the JSON parsed on every core.
    fn decode(
        &self,
        rows: Vec<(String, String, Option<String>)>,
    ) -> Result<Vec<Change>, StoreError> {
        let dir = &self.dir;
        crate::par::in_parallel(rows, |(kind, key, body)| {
            let corrupt = |error: String| StoreError::Corrupt {
                dir: dir.clone(),
                kind: kind.clone(),
                key: key.clone(),
                error,
            };
            let kind: &'static str = match kind.as_str() {
                KIND_SERVICE => KIND_SERVICE,
                KIND_POD => KIND_POD,
                KIND_ENDPOINT_SLICE => KIND_ENDPOINT_SLICE,
                other => return Err(corrupt(format!("unknown kind {other}"))),
            };
            let object = match body {
                None => None,
                Some(b) => Some(
                    match kind {
                        KIND_SERVICE => serde_json::from_str(&b).map(Stored::Service),
                        KIND_POD => serde_json::from_str(&b).map(Stored::Pod),
                        _ => serde_json::from_str(&b).map(Stored::EndpointSlice),
                    }
                    .map_err(|e| corrupt(e.to_string()))?,
                ),
            };
            Ok(Change { kind, key, object })
        })
        .into_iter()
        .collect()
    }

    /// What `scope` names, read inside the writer's transaction.
    fn read_scope(&self, conn: &Connection, scope: &Scope) -> Result<State, StoreError> {
        let mut rows = Vec::new();
        if scope.all_services {
            rows.extend(self.rows(
                conn,
                "SELECT kind, key, body FROM objects WHERE kind = ?1 AND body IS NOT NULL",
                [KIND_SERVICE],
            )?);
        }
        for (kind, key) in &scope.objects {
            if scope.all_services && *kind == KIND_SERVICE {
                continue;
            }
            rows.extend(self.rows(
                conn,
                "SELECT kind, key, body FROM objects WHERE kind = ?1 AND key = ?2 AND body IS NOT NULL",
                params![kind, key],
            )?);
        }
        self.state_of(conn, rows)
    }

    /// Runs `change` on what `scope` names, in one write transaction, and commits the
    /// objects it changed (under a new revision) if it succeeds. An error leaves the
    /// store as it was. `change` may only touch what `scope` names.
    pub fn update<T, E: From<StoreError>>(
        &self,
        scope: &Scope,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.open(true)?.expect("created");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db("locking"))?;
        let before = self.read_scope(&tx, scope)?;
        let mut state = before.clone();
        let out = change(&mut state)?;
        let changes = before.changes_to(state);
        if !changes.is_empty() {
            let rev = before.revision + 1;
            let bodies = crate::par::in_parallel(changes, |c| {
                let body = match &c.object {
                    None => Ok(None),
                    Some(Stored::Service(o)) => serde_json::to_string(o).map(Some),
                    Some(Stored::Pod(o)) => serde_json::to_string(o).map(Some),
                    Some(Stored::EndpointSlice(o)) => serde_json::to_string(o).map(Some),
                };
                (c.kind, c.key, body)
            });
            {
                let mut put = tx
                    .prepare_cached(
                        "INSERT INTO objects (kind, key, rev, body) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (kind, key) DO UPDATE SET rev = ?3, body = ?4",
                    )
                    .map_err(self.db("writing"))?;
                for (kind, key, body) in bodies {
                    let body = body.map_err(|e| StoreError::Corrupt {
                        dir: self.dir.clone(),
                        kind: kind.to_string(),
                        key: key.clone(),
                        error: e.to_string(),
                    })?;
                    put.execute(params![kind, key, rev as i64, body])
                        .map_err(self.db("writing"))?;
                }
                set_meta(&tx, "revision", rev).map_err(self.db("writing the revision"))?;
                if rev.is_multiple_of(PRUNE_EVERY) && rev > self.tombstone_revisions {
                    self.prune(&tx, rev - self.tombstone_revisions)?;
                }
            }
            tx.commit().map_err(self.db("committing"))?;
            // Wakes the agents watching the directory (best effort: they also look
            // every second). Says which revision committed when (Unix ns).
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let _ = fs::write(self.dir.join(COMMIT_MARKER), format!("{rev} {at}\n"));
        }
        Ok(out)
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
        alloc: &Allocation,
        mode: Mode,
    ) -> Result<Vec<Outcome>, StoreError> {
        let scope = Scope {
            all_services: docs.iter().any(|d| matches!(d.object, Object::Service(_))),
            objects: docs
                .iter()
                .map(|d| (d.object.kind(), d.object.key().to_string()))
                .collect(),
        };
        self.update(&scope, |state| {
            let now = Timestamp::now();
            let revision = state.revision + 1;
            // What is taken, kept up to date as each document is applied: scanning every
            // service for each document would make a 10,000-service apply quadratic.
            let mut taken = Taken::of(state);
            docs.iter()
                .map(|doc| apply_one(state, &mut taken, doc, alloc, mode, now, revision))
                .collect()
        })
    }

    /// Gives every LoadBalancer service without an address one from `pools`
    /// (`spec.loadBalancerIP` when it names a free address of a pool), written to
    /// `status.loadBalancer.ingress` as a cloud controller would; services no longer of
    /// that type lose theirs. Returns what was assigned (service, address).
    pub fn assign_load_balancer_ips(
        &self,
        pools: &[(Ipv4Addr, u8)],
    ) -> Result<Vec<(String, Ipv4Addr)>, StoreError> {
        let scope = Scope {
            all_services: true,
            objects: Vec::new(),
        };
        self.update(&scope, |state| {
            let mut taken: BTreeSet<Ipv4Addr> = state
                .services
                .values()
                .flat_map(|s| lb_ingress_ips(s).into_iter().chain(external_ips(s)))
                .collect();
            let mut assigned = Vec::new();
            for (key, svc) in state.services.iter_mut() {
                let is_lb = service_type(svc) == TYPE_LOAD_BALANCER;
                let has = !lb_ingress_ips(svc).is_empty();
                if !is_lb && has {
                    svc.status = None;
                    continue;
                }
                if !is_lb || has || pools.is_empty() {
                    continue;
                }
                let requested = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.load_balancer_ip.as_deref())
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                let ip = match requested {
                    Some(ip) => (in_pools(pools, ip) && !taken.contains(&ip)).then_some(ip),
                    None => pool_addrs(pools).find(|ip| !taken.contains(ip)),
                };
                let Some(ip) = ip else {
                    continue; // stays <pending>
                };
                taken.insert(ip);
                svc.status = Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(vec![LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: Some("VIP".into()),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                });
                assigned.push((key.clone(), ip));
            }
            Ok(assigned)
        })
    }

    /// Deletes the named objects; all must exist (or none is deleted).
    pub fn delete(&self, targets: &[(&'static str, ObjectKey)]) -> Result<(), StoreError> {
        let scope = Scope {
            all_services: false,
            objects: targets
                .iter()
                .map(|(k, key)| (*k, key.to_string()))
                .collect(),
        };
        self.update(&scope, |state| {
            for (kind, key) in targets {
                let map_key = key.to_string();
                let removed = match *kind {
                    "Service" => state.services.remove(&map_key).is_some(),
                    "EndpointSlice" => state.endpoint_slices.remove(&map_key).is_some(),
                    _ => state.pods.remove(&map_key).is_some(),
                };
                if !removed {
                    return Err(StoreError::NotFound {
                        kind,
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    });
                }
            }
            Ok(())
        })
    }
}

/// The store's revision (0 before the first write).
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
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.unwrap_or(0) as u64)
}

fn apply_one(
    state: &mut State,
    taken: &mut Taken,
    doc: &Document,
    alloc: &Allocation,
    mode: Mode,
    now: Timestamp,
    revision: u64,
) -> Result<Outcome, StoreError> {
    let key = doc.object.key().to_string();
    let exists = match &doc.object {
        Object::Service(_) => state.services.contains_key(&key),
        Object::Pod(_) => state.pods.contains_key(&key),
        Object::EndpointSlice(_) => state.endpoint_slices.contains_key(&key),
    };
    if exists && mode == Mode::Create {
        return Err(StoreError::AlreadyExists {
            file: doc.file.clone(),
            index: doc.index,
            kind: doc.object.kind(),
            name: doc.object.key().name,
        });
    }
    match &doc.object {
        Object::Service(svc) => {
            let old = state.services.remove(&key);
            let mut svc = (**svc).clone();
            // Status is the cluster's to write (the agents assign LoadBalancer
            // addresses), never the manifest's: as with the API server's status
            // subresource, apply keeps what is there.
            svc.status = old.as_ref().and_then(|o| o.status.clone());
            let invalid = |error: FieldError| StoreError::Invalid {
                file: doc.file.clone(),
                index: doc.index,
                kind: "Service",
                name: doc.object.key().name,
                error: Box::new(error),
            };
            if let Some(old) = &old {
                taken.release(old);
            }
            let allocated = allocate(taken, &mut svc, old.as_ref(), alloc);
            if allocated.is_err()
                && let Some(old) = &old
            {
                taken.hold(old);
            }
            allocated.map_err(|e| match e {
                AllocError::Field(f) => invalid(f),
                AllocError::Store(s) => s,
            })?;
            taken.hold(&svc);
            let (svc, outcome) = stamp(svc, old, now, revision, |s| &mut s.metadata);
            state.services.insert(key, svc);
            Ok(outcome)
        }
        Object::Pod(pod) => {
            let old = state.pods.remove(&key);
            let (pod, outcome) = stamp((**pod).clone(), old, now, revision, |p| &mut p.metadata);
            state.pods.insert(key, pod);
            Ok(outcome)
        }
        Object::EndpointSlice(slice) => {
            let old = state.endpoint_slices.remove(&key);
            let (slice, outcome) =
                stamp((**slice).clone(), old, now, revision, |e| &mut e.metadata);
            state.endpoint_slices.insert(key, slice);
            Ok(outcome)
        }
    }
}

/// Sets uid, creationTimestamp and resourceVersion as the API server does, keeping
/// them from the stored object, and says whether anything changed.
fn stamp<T: Clone + PartialEq>(
    mut new: T,
    old: Option<T>,
    now: Timestamp,
    revision: u64,
    meta: impl Fn(&mut T) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (T, Outcome) {
    let Some(mut old) = old else {
        let m = meta(&mut new);
        m.uid = Some(new_uid());
        m.creation_timestamp = Some(Time(now));
        m.resource_version = Some(revision.to_string());
        return (new, Outcome::Created);
    };
    {
        let (o, n) = (meta(&mut old).clone(), meta(&mut new));
        n.uid = o.uid;
        n.creation_timestamp = o.creation_timestamp;
        n.resource_version = o.resource_version;
    }
    if new == old {
        return (old, Outcome::Unchanged);
    }
    meta(&mut new).resource_version = Some(revision.to_string());
    (new, Outcome::Configured)
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

enum AllocError {
    Field(FieldError),
    Store(StoreError),
}

impl From<FieldError> for AllocError {
    fn from(f: FieldError) -> Self {
        AllocError::Field(f)
    }
}

/// Gives the service its clusterIP and nodePorts: requested values if valid and free,
/// the stored object's values on re-apply, fresh random ones otherwise. `state` no
/// longer holds the service being applied.
fn allocate(
    taken: &Taken,
    svc: &mut Service,
    old: Option<&Service>,
    alloc: &Allocation,
) -> Result<(), AllocError> {
    let ty = service_type(svc).to_string();
    let old_spec = old.and_then(|o| o.spec.as_ref());
    let spec = svc.spec.get_or_insert_with(Default::default);

    // clusterIP: immutable once set.
    if ty != TYPE_EXTERNAL_NAME {
        let old_ip = old_spec.and_then(|s| s.cluster_ip.clone());
        let requested = spec.cluster_ip.clone().filter(|s| !s.is_empty());
        let ip = match (requested, old_ip) {
            (Some(req), Some(old)) if req != old => {
                return Err(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("[]string{{\"{req}\"}}"),
                    "may not change once set",
                )
                .into());
            }
            (Some(req), _) if req == CLUSTER_IP_NONE => req,
            (Some(req), Some(_)) => req,
            (Some(req), None) => {
                let ip: Ipv4Addr = req.parse().map_err(|_| {
                    FieldError::invalid("spec.clusterIPs[0]", &req, "must be a valid IP address")
                })?;
                if !alloc.cidr_contains(ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {}", alloc.cidr_string()),
                    )
                    .into());
                }
                if taken.ips.contains(&ip) {
                    return Err(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &req,
                        format!("failed to allocate IP {req}: provided IP is already allocated"),
                    )
                    .into());
                }
                req
            }
            (None, Some(old)) => old,
            (None, None) => random_cluster_ip(&taken.ips, alloc)
                .map_err(AllocError::Store)?
                .to_string(),
        };
        spec.cluster_ips = Some(vec![ip.clone()]);
        spec.cluster_ip = Some(ip);
    }

    // nodePorts: for NodePort and LoadBalancer services, each port has one.
    if ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER {
        let mut used = taken.node_ports.clone();
        let old_ports = old_spec.and_then(|s| s.ports.clone()).unwrap_or_default();
        let ports = spec.ports.get_or_insert_with(Vec::new);
        // Requested ones first, so a random pick never takes a value asked for later.
        for (i, p) in ports.iter().enumerate() {
            if let Some(np) = p.node_port {
                if !(alloc.node_ports.contains(&u16::try_from(np).unwrap_or(0))) {
                    return Err(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        np,
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            alloc.node_ports.start(),
                            alloc.node_ports.end()
                        ),
                    )
                    .into());
                }
                if used.contains(&(np as u16)) {
                    return Err(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        np,
                        "provided port is already allocated",
                    )
                    .into());
                }
            }
        }
        for p in ports.iter() {
            if let Some(np) = p.node_port {
                used.insert(np as u16);
            }
        }
        for p in ports.iter_mut().filter(|p| p.node_port.is_none()) {
            // Re-apply keeps the nodePort of the same port (by name, else number and protocol).
            let kept = old_ports
                .iter()
                .find(|o| match (&o.name, &p.name) {
                    (Some(a), Some(b)) => a == b,
                    _ => o.port == p.port && o.protocol == p.protocol,
                })
                .and_then(|o| o.node_port)
                .filter(|np| !used.contains(&(*np as u16)));
            let np = match kept {
                Some(np) => np as u16,
                None => random_free(&alloc.node_ports, &used).ok_or_else(|| {
                    AllocError::Store(StoreError::Exhausted {
                        what: "nodePort",
                        range: format!("{:?}", alloc.node_ports),
                    })
                })?,
            };
            used.insert(np);
            p.node_port = Some(np.into());
        }
    }
    Ok(())
}

/// `status.loadBalancer.ingress` addresses.
pub fn lb_ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|l| l.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn external_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.spec
        .iter()
        .flat_map(|s| s.external_ips.iter().flatten())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn in_pools(pools: &[(Ipv4Addr, u8)], ip: Ipv4Addr) -> bool {
    pool_addrs(pools).any(|a| a == ip)
}

/// Every usable address of the pools, in order (a pool's network and broadcast
/// addresses are skipped unless it is a /31 or /32).
fn pool_addrs(pools: &[(Ipv4Addr, u8)]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    pools.iter().flat_map(|(net, len)| {
        let host_bits = 32 - u32::from(*len).min(32);
        let size = 1u64 << host_bits;
        let base = u64::from(u32::from(*net) & !((size - 1) as u32));
        let (lo, hi) = if size <= 2 { (0, size) } else { (1, size - 1) };
        (lo..hi).map(move |i| Ipv4Addr::from((base + i) as u32))
    })
}

/// The clusterIPs and nodePorts services hold.
struct Taken {
    ips: BTreeSet<Ipv4Addr>,
    node_ports: BTreeSet<u16>,
}

impl Taken {
    fn of(state: &State) -> Self {
        let mut t = Taken {
            ips: BTreeSet::new(),
            node_ports: BTreeSet::new(),
        };
        state.services.values().for_each(|s| t.hold(s));
        t
    }

    fn node_ports_of(svc: &Service) -> impl Iterator<Item = u16> + '_ {
        svc.spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
    }

    fn hold(&mut self, svc: &Service) {
        self.ips.extend(cluster_ip(svc));
        self.node_ports.extend(Self::node_ports_of(svc));
    }

    fn release(&mut self, svc: &Service) {
        if let Some(ip) = cluster_ip(svc) {
            self.ips.remove(&ip);
        }
        for p in Self::node_ports_of(svc) {
            self.node_ports.remove(&p);
        }
    }
}

fn random_free(range: &RangeInclusive<u16>, used: &BTreeSet<u16>) -> Option<u16> {
    let size = (*range.end() as u32).checked_sub(*range.start() as u32)? + 1;
    if used.iter().filter(|p| range.contains(p)).count() as u32 >= size {
        return None;
    }
    let mut rng = rand::rng();
    loop {
        let p = rng.random_range(range.clone());
        if !used.contains(&p) {
            return Some(p);
        }
    }
}

/// A random free address of the service CIDR, never its network address, its
/// broadcast address or its first host (kept for the `kubernetes` service, as the API
/// server does).
fn random_cluster_ip(
    used: &BTreeSet<Ipv4Addr>,
    alloc: &Allocation,
) -> Result<Ipv4Addr, StoreError> {
    let (net, len) = alloc.service_cidr;
    let host_bits = 32 - len as u32;
    let size: u64 = 1u64 << host_bits;
    if size < 4 || used.len() as u64 >= size - 3 {
        return Err(StoreError::Exhausted {
            what: "ClusterIP",
            range: alloc.cidr_string(),
        });
    }
    let base = u32::from(net) & (u32::MAX.checked_shl(host_bits).unwrap_or(0));
    let mut rng = rand::rng();
    loop {
        let offset = rng.random_range(2..size - 1) as u32;
        let ip = Ipv4Addr::from(base + offset);
        if !used.contains(&ip) {
            return Ok(ip);
        }
    }
}

#[cfg(test)]
mod tests;
