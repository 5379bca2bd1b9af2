use super::*;
use std::{fs, net::Ipv4Addr, os::unix::fs::PermissionsExt as _};

use crate::model::parse_manifest;

/// A store in a temporary directory of its own, removed when the test ends (also
/// when it fails).
struct TmpStore(Store);

impl std::ops::Deref for TmpStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0
    }
}

impl Drop for TmpStore {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0.dir());
    }
}

fn tmp_store_keeping(tag: &str, tombstone_revisions: u64) -> TmpStore {
    let dir = std::env::temp_dir().join(format!("lb-store-test-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    TmpStore(Store::new(dir).with_tombstone_revisions(tombstone_revisions))
}

fn tmp_store(tag: &str) -> TmpStore {
    tmp_store_keeping(tag, TOMBSTONE_REVISIONS)
}

fn docs(yaml: &str) -> Vec<Document> {
    parse_manifest("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn svc(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n{extra}---\n"
    )
}

/// A pod named `name` (`meta`: more metadata lines, indented as `name` is).
fn pod(name: &str, meta: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{meta}spec:\n  containers: [{{name: c, image: app}}]\n---\n"
    )
}

fn node_ports(state: &State) -> Vec<i32> {
    state
        .services
        .values()
        .flat_map(|s| s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()))
        .filter_map(|p| p.node_port)
        .collect()
}

#[test]
fn allocates_in_range_and_keeps_values_across_reapply() {
    let store = tmp_store("alloc");
    let alloc = Ranges::default();
    let out = store
        .apply(&docs(&svc("a", "")), &alloc, Mode::Apply)
        .unwrap();
    assert_eq!(out, vec![Outcome::Created]);
    let first = store.load().unwrap();
    let a = &first.services[&ObjectKey::new("default", "a")];
    let ip = crate::model::cluster_ip(a).unwrap();
    assert!(
        (u32::from(ip) >> 20) == (u32::from(Ipv4Addr::new(10, 96, 0, 0)) >> 20)
            && ip != Ipv4Addr::new(10, 96, 0, 1),
        "{ip}"
    );
    let np = node_ports(&first)[0];
    assert!((30000..=32767).contains(&np));
    assert!(a.metadata.creation_timestamp.is_some() && a.metadata.uid.is_some());

    // Re-applying the same manifest changes nothing, even the allocations.
    let out = store
        .apply(&docs(&svc("a", "")), &alloc, Mode::Apply)
        .unwrap();
    assert_eq!(out, vec![Outcome::Unchanged]);
    assert_eq!(store.load().unwrap(), first);
    // A changed manifest keeps the clusterIP and the nodePort.
    let out = store
        .apply(
            &docs(&svc("a", "  selector:\n    app: x\n")),
            &alloc,
            Mode::Apply,
        )
        .unwrap();
    assert_eq!(out, vec![Outcome::Configured]);
    let second = store.load().unwrap();
    assert_eq!(
        second.services[&ObjectKey::new("default", "a")]
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip,
        a.spec.as_ref().unwrap().cluster_ip
    );
    assert_eq!(node_ports(&second), vec![np]);
    assert_eq!(second.revision, first.revision + 1);
}

#[test]
fn never_hands_out_a_value_twice() {
    let store = tmp_store("unique");
    // A range of 5 ports: 5 services fit, the 6th does not.
    let alloc: Ranges = Allocation {
        node_ports: 30000..=30004,
        ..Allocation::default()
    }
    .into();
    let all: String = (0..5).map(|i| svc(&format!("s{i}"), "")).collect();
    store.apply(&docs(&all), &alloc, Mode::Apply).unwrap();
    let mut ports = node_ports(&store.load().unwrap());
    ports.sort();
    assert_eq!(ports, vec![30000, 30001, 30002, 30003, 30004]);
    let err = store
        .apply(&docs(&svc("s5", "")), &alloc, Mode::Apply)
        .unwrap_err();
    assert!(err.to_string().contains("no free nodePort"), "{err}");
}

#[test]
fn requested_values_are_honoured_or_refused_and_a_bad_object_applies_nothing() {
    let store = tmp_store("requested");
    let alloc = Ranges::default();
    store
        .apply(
            &docs(&svc("a", "    nodePort: 30008\n  clusterIP: 10.96.0.50\n")),
            &alloc,
            Mode::Apply,
        )
        .unwrap();
    let before = store.load().unwrap();
    assert_eq!(node_ports(&before), vec![30008]);

    let cases = [
        (
            svc("b", "    nodePort: 30008\n"),
            "spec.ports[0].nodePort: Invalid value: 30008: provided port is already allocated",
        ),
        (
            svc("b", "    nodePort: 40000\n"),
            "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767",
        ),
        (
            svc("b", "  clusterIP: 10.96.0.50\n"),
            "spec.clusterIPs[0]: Invalid value: 10.96.0.50: failed to allocate IP 10.96.0.50: provided IP is already allocated",
        ),
        (
            svc("b", "  clusterIP: 192.168.5.5\n"),
            "is not in the valid range. The range of valid IPs is 10.96.0.0/12",
        ),
        (
            svc("a", "  clusterIP: 10.96.0.51\n"),
            "may not change once set",
        ),
    ];
    for (yaml, want) in cases {
        // The bad object comes second: the good first one must not be applied either.
        let batch = format!("{}{yaml}", svc("good", ""));
        let err = store
            .apply(&docs(&batch), &alloc, Mode::Apply)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want {want:?}\ngot  {err:?}");
        assert!(
            err.starts_with("t.yaml (document 2): The Service"),
            "names file, document and object: {err}"
        );
        assert_eq!(
            store.load().unwrap(),
            before,
            "nothing applied after: {want}"
        );
    }
    let err = store
        .apply(&docs(&svc("a", "")), &alloc, Mode::Create)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "t.yaml (document 1): services \"a\" already exists");
}

#[test]
fn concurrent_writers_never_allocate_the_same_port() {
    let tmp = tmp_store("concurrent");
    let store_dir = tmp.dir().to_path_buf();
    let alloc: Ranges = Allocation {
        node_ports: 30000..=30039,
        ..Allocation::default()
    }
    .into();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let dir = store_dir.clone();
            let alloc = alloc.clone();
            std::thread::spawn(move || {
                let store = Store::new(dir);
                for i in 0..5 {
                    store
                        .apply(&docs(&svc(&format!("t{t}-{i}"), "")), &alloc, Mode::Apply)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let state = Store::new(store_dir).load().unwrap();
    let mut ports = node_ports(&state);
    assert_eq!(ports.len(), 40);
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 40, "every port distinct");
}

#[test]
fn delete_removes_and_names_what_is_missing() {
    let store = tmp_store("delete");
    store
        .apply(&docs(&svc("a", "")), &Ranges::default(), Mode::Apply)
        .unwrap();
    let err = store
        .delete(&[
            (Kind::Service, ObjectKey::new("default", "a")),
            (Kind::Service, ObjectKey::new("default", "zz")),
        ])
        .unwrap_err();
    assert_eq!(err.to_string(), "services \"zz\" not found");
    assert_eq!(store.load().unwrap().services.len(), 1, "all or nothing");
    store
        .delete(&[(Kind::Service, ObjectKey::new("default", "a"))])
        .unwrap();
    assert!(store.load().unwrap().services.is_empty());
}

#[test]
fn deletions_are_pruned_after_a_window_and_old_readers_must_reload() {
    let store = tmp_store_keeping("prune", 100);
    let alloc = Ranges::default();
    store
        .apply(&docs(&svc("keep", "")), &alloc, Mode::Apply)
        .unwrap();
    store
        .apply(&docs(&svc("gone", "")), &alloc, Mode::Apply)
        .unwrap();
    let before_delete = store.revision().unwrap();
    store
        .delete(&[(Kind::Service, ObjectKey::new("default", "gone"))])
        .unwrap();
    // A reader close behind sees the deletion as a change without an object.
    let mut changes = Vec::new();
    let revision = store
        .changes_since(before_delete, |c| c, |batch| changes.extend(batch))
        .unwrap();
    assert_eq!(revision, Some(before_delete + 1));
    assert!(
        changes
            .iter()
            .any(|c| c.key == ObjectKey::new("default", "gone") && c.object.is_none()),
        "the deletion is in the change list"
    );
    let tombstones = |s: &Store| {
        s.read(|tx| {
            tx.query_row("SELECT COUNT(*) FROM objects WHERE body IS NULL", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(s.db("counting"))
        })
        .unwrap()
        .unwrap()
    };
    assert_eq!(tombstones(&store), 1);
    // Writes until a prune has passed the deletion's revision (window 100, every 256).
    let mut i = 0;
    while store.revision().unwrap() < 2 * PRUNE_EVERY {
        let label = format!("  labels: {{n: \"{i}\"}}\n");
        let doc = svc("keep", "").replace("  name: keep\n", &format!("  name: keep\n{label}"));
        store.apply(&docs(&doc), &alloc, Mode::Apply).unwrap();
        i += 1;
    }
    assert_eq!(tombstones(&store), 0, "the tombstone is pruned");
    assert!(
        store
            .changes_since(before_delete, |c| c, drop)
            .unwrap()
            .is_none(),
        "a reader from before the prune must read the store whole"
    );
    let now = store.revision().unwrap();
    assert!(
        store
            .changes_since(now - 10, |c| c, drop)
            .unwrap()
            .is_some(),
        "a recent reader still follows changes"
    );
    let state = store.load().unwrap();
    assert_eq!(
        state.services.len(),
        1,
        "the whole read has only what exists"
    );
}

#[test]
fn a_store_is_private_refuses_links_and_a_missing_one_is_an_error() {
    let store = tmp_store("private");
    let err = store.require().unwrap_err().to_string();
    assert!(err.contains("no lb store here"), "{err}");
    store
        .apply(&docs(&svc("a", "")), &Ranges::default(), Mode::Apply)
        .unwrap();
    store.require().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&store.dir().join("commit")), 0o700);
    for f in ["store.db", "commit/revision"] {
        assert_eq!(mode(&store.dir().join(f)), 0o600, "{f}");
    }
    // Another program's file linked in as the database: refused, left as it was.
    let other = tmp_store("private-other");
    fs::create_dir_all(other.dir()).unwrap();
    let victim = other.dir().join("victim.db");
    fs::write(&victim, b"not lb's").unwrap();
    // A store beside it whose `file` is a link to `target`: writing to it is refused.
    let with_link = |name: &str, file: &str, target: &Path| {
        let store = Store::new(other.dir().join(name));
        fs::create_dir_all(store.dir()).unwrap();
        std::os::unix::fs::symlink(target, store.dir().join(file)).unwrap();
        let err = store
            .apply(&docs(&svc("a", "")), &Ranges::default(), Mode::Apply)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symbolic link"), "{file}: {err}");
        store
    };
    let linked = with_link("linked", "store.db", &victim);
    assert!(linked.load().is_err(), "readers refuse it too");
    assert_eq!(fs::read(&victim).unwrap(), b"not lb's");
    // Another directory linked in as the commit marker's: refused, nothing written
    // into it.
    let elsewhere = other.dir().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let marked = with_link("marked", "commit", &elsewhere);
    assert!(
        on_commit(marked.dir(), || {}).is_err(),
        "watchers refuse it too"
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn the_ranges_are_the_stores_set_once_and_changed_only_when_every_service_fits() {
    let store = tmp_store("ranges");
    let small: Ranges = Allocation {
        node_ports: 31000..=31009,
        ..Allocation::default()
    }
    .into();
    store
        .apply(&docs(&svc("a", "")), &small, Mode::Apply)
        .unwrap();
    // Later writes allocate from the store's ranges, whatever the caller's defaults.
    store
        .apply(&docs(&svc("b", "")), &Ranges::default(), Mode::Apply)
        .unwrap();
    let ports = node_ports(&store.load().unwrap());
    assert!(
        ports.iter().all(|p| (31000..=31009).contains(p)),
        "{ports:?}"
    );
    // A write naming other ranges is refused (LB_NODE_PORT_RANGE=1-65535 lb apply).
    let wide = Ranges {
        node_ports: Some(1..=65535),
        ..Ranges::default()
    };
    let err = store
        .apply(&docs(&svc("c", "")), &wide, Mode::Apply)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "the store allocates from service CIDR 10.96.0.0/12 and nodePort range 31000-31009"
        ),
        "{err}"
    );
    // Changing them: refused while a service's nodePort would be outside.
    let other = Ranges {
        node_ports: Some(32000..=32100),
        ..Ranges::default()
    };
    let err = store.set_ranges(&other).unwrap_err().to_string();
    assert!(err.contains("has nodePort 310"), "{err}");
    let wider = Ranges {
        node_ports: Some(30000..=32767),
        ..Ranges::default()
    };
    assert_eq!(store.set_ranges(&wider).unwrap().node_ports, 30000..=32767);
    assert_eq!(store.ranges().unwrap().unwrap().node_ports, 30000..=32767);
    store
        .apply(&docs(&svc("c", "")), &wider, Mode::Apply)
        .unwrap();
}

#[test]
fn what_is_taken_is_indexed_through_every_write_and_built_for_an_older_store() {
    let store = tmp_store("taken");
    let alloc = Ranges::default();
    let apply = |yaml: &str| store.apply(&docs(yaml), &alloc, Mode::Apply);
    apply(&svc("a", "    nodePort: 30100\n  clusterIP: 10.96.0.50\n")).unwrap();
    // Another service asking for a's values is refused, as the index says.
    let err = apply(&svc("b", "    nodePort: 30100\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("30100") && err.contains("already allocated"),
        "{err}"
    );
    let err = apply(&svc("b", "  clusterIP: 10.96.0.50\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.96.0.50") && err.contains("already allocated"),
        "{err}"
    );
    // a moves to another nodePort (an update): the old one is free, the new taken.
    apply(&svc("a", "    nodePort: 30101\n  clusterIP: 10.96.0.50\n")).unwrap();
    apply(&svc("b", "    nodePort: 30100\n")).unwrap();
    let err = apply(&svc("c", "    nodePort: 30101\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already allocated"), "{err}");
    // a is deleted: its values are free.
    store
        .delete(&[(Kind::Service, ObjectKey::new("default", "a"))])
        .unwrap();
    apply(&svc("c", "    nodePort: 30101\n  clusterIP: 10.96.0.50\n")).unwrap();
    // A store written before the index existed: built from the services at the
    // next apply.
    {
        let conn = Connection::open(store.dir().join(DB_FILE)).unwrap();
        conn.execute_batch("DELETE FROM taken; DELETE FROM meta WHERE name = 'taken_indexed';")
            .unwrap();
    }
    let err = apply(&svc("d", "    nodePort: 30101\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already allocated"), "{err}");
    let err = apply(&svc("d", "    nodePort: 30100\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already allocated"), "{err}");
    apply(&svc("d", "")).unwrap();
}

#[test]
fn a_store_read_whole_or_followed_comes_in_batches_that_add_up_to_it() {
    let store = tmp_store("batches");
    // Several batches, decoded on as many threads as there are cores.
    let n = 3 * LOAD_BATCH + 3;
    let slices: String = (0..n)
        .map(|i| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.244.0.2]}}]\n---\n"
            )
        })
        .collect();
    store
        .apply(&docs(&slices), &Ranges::default(), Mode::Apply)
        .unwrap();
    let (mut sizes, mut keys) = (Vec::new(), Vec::new());
    let revision = store
        .load_each(
            |c| c,
            |batch| {
                sizes.push(batch.len());
                keys.extend(batch.into_iter().map(|c| c.key));
            },
        )
        .unwrap();
    assert_eq!(
        sizes,
        [LOAD_BATCH, LOAD_BATCH, LOAD_BATCH, 3],
        "never more than a batch at a time"
    );
    // Handed over in the order read (the store's key order), whichever thread
    // decoded each batch first.
    assert!(keys.is_sorted(), "batches out of order");
    assert_eq!(revision, store.revision().unwrap());
    let mut seen = std::collections::BTreeSet::new();
    let followed = store
        .changes_since(
            0,
            |c| c,
            |batch: Vec<Change>| {
                assert!(batch.len() <= LOAD_BATCH);
                seen.extend(batch.into_iter().map(|c| c.key));
            },
        )
        .unwrap();
    assert_eq!((followed, seen.len()), (Some(revision), n));
    assert_eq!(store.load().unwrap().endpoint_slices.len(), n);
    // Read whole as facts (the agent's way): the facts of the objects read whole.
    let pods: String = (0..3)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: web}}}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.244.1.{i}}}\n---\n"))
        .chain([svc("web", "  selector: {app: web}\n")])
        .collect();
    store
        .apply(&docs(&pods), &Ranges::default(), Mode::Apply)
        .unwrap();
    let facts = store.load_facts().unwrap();
    assert_eq!(facts, Facts::from(store.load().unwrap()));
    let counts = (
        facts.services.len(),
        facts.pods.len(),
        facts.endpoint_slices.len(),
    );
    assert_eq!((counts, facts.revision), ((1, 3, n), revision + 1));
}

/// A stored row that does not decode fails the read, named, whether the read is
/// one batch (decoded where it is read) or several (on the decoding threads).
#[test]
fn a_row_that_does_not_decode_fails_the_read_naming_it() {
    let store = tmp_store("corrupt");
    store
        .apply(&docs(&svc("web", "")), &Ranges::default(), Mode::Apply)
        .unwrap();
    let raw = rusqlite::Connection::open(store.dir().join("store.db")).unwrap();
    let put = |kind: &str, key: &str, body: &str| {
        raw.execute(
            "INSERT OR REPLACE INTO objects (kind, key, rev, body) VALUES (?1, ?2, 1, ?3)",
            [kind, key, body],
        )
        .unwrap();
    };
    let named = |e: StoreError| match e {
        StoreError::Corrupt {
            kind, key, error, ..
        } => (kind, key, error),
        other => panic!("{other}"),
    };
    put("Pod", "default/broken", "{");
    let (kind, key, _) = named(store.load_facts().unwrap_err());
    assert_eq!((kind.as_str(), key.as_str()), ("Pod", "default/broken"));
    // Past one batch: the broken pod is in the second (rows are read in kind and
    // key order, the slices first).
    let slices: String = (0..LOAD_BATCH)
        .map(|i| format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}}}\naddressType: IPv4\nendpoints: []\n---\n"))
        .collect();
    raw.execute("DELETE FROM objects WHERE kind = 'Pod'", [])
        .unwrap();
    store
        .apply(&docs(&slices), &Ranges::default(), Mode::Apply)
        .unwrap();
    put("Pod", "default/broken", "{");
    let (kind, key, _) = named(store.load_facts().unwrap_err());
    assert_eq!((kind.as_str(), key.as_str()), ("Pod", "default/broken"));
    raw.execute("DELETE FROM objects WHERE kind = 'Pod'", [])
        .unwrap();
    put("Gadget", "default/g", "{}");
    let (kind, key, error) = named(store.load().unwrap_err());
    assert_eq!((kind.as_str(), key.as_str()), ("Gadget", "default/g"));
    assert!(error.contains("unknown kind Gadget"), "{error}");
}

#[test]
fn a_bulk_apply_sees_its_own_batches_and_stores_nothing_unless_committed() {
    let store = tmp_store("bulk");
    let alloc = Ranges::default();
    let mut bulk = store.bulk_apply(&alloc, Mode::Apply).unwrap();
    assert_eq!(bulk.apply(docs(&svc("a", ""))).unwrap(), [Outcome::Created]);
    drop(bulk);
    assert!(store.load().unwrap().services.is_empty(), "rolled back");
    let mut bulk = store.bulk_apply(&alloc, Mode::Apply).unwrap();
    bulk.apply(docs(&svc("a", ""))).unwrap();
    // A later batch finds the earlier one's object, and what it took.
    assert_eq!(
        bulk.apply(docs(&svc("a", ""))).unwrap(),
        [Outcome::Unchanged]
    );
    let state_ip = |s: &Store| {
        let state = s.load().unwrap();
        crate::model::cluster_ip(&state.services[&ObjectKey::new("default", "a")])
    };
    bulk.commit().unwrap();
    let ip = state_ip(&store).unwrap();
    let mut bulk = store.bulk_apply(&alloc, Mode::Create).unwrap();
    let clash = svc("b", "").replace("spec:\n", &format!("spec:\n  clusterIP: {ip}\n"));
    assert!(bulk.apply(docs(&clash)).is_err(), "the taken IP is refused");
    drop(bulk);
    assert_eq!(
        store.revision().unwrap(),
        1,
        "one revision, for the committed apply"
    );
}

/// The batches after a bulk apply's first are written on a thread of their own:
/// a later batch still reads what an earlier one wrote (and what it took), and a
/// write that fails there fails the apply, which then stores nothing.
#[test]
fn batches_written_on_the_writers_thread_are_read_back_and_their_errors_fail_the_apply() {
    let store = tmp_store("writer");
    let ranges = Ranges::default();
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&svc("a", ""))).unwrap();
    // Handed to the writer, then named again: read back once written.
    let second = format!("{}{}", svc("b", ""), pod("p", ""));
    assert_eq!(
        bulk.apply(docs(&second)).unwrap(),
        [Outcome::Created, Outcome::Created]
    );
    assert_eq!(
        bulk.apply(docs(&format!("{}{}", pod("p", ""), svc("b", ""))))
            .unwrap(),
        [Outcome::Unchanged, Outcome::Unchanged]
    );
    let node_port = |name: &str, state: &State| {
        node_ports(&State {
            services: state
                .services
                .iter()
                .filter(|(k, _)| k.name == name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..State::default()
        })
    };
    let held = bulk.read_scope(&super::Scope {
        all_services: false,
        objects: vec![(Kind::Service, ObjectKey::new("default", "b"))],
    });
    let b_port = node_port("b", &held.unwrap());
    // What b took is taken: c gets another nodePort.
    bulk.apply(docs(&svc("c", ""))).unwrap();
    bulk.commit().unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.services.len(), 3);
    assert_eq!(state.pods.len(), 1);
    assert_eq!(node_port("b", &state), b_port);
    assert_ne!(node_port("c", &state), b_port);
    // The store refuses one row (a trigger): the batch that holds it is written
    // on the writer's thread, and its error ends the apply.
    rusqlite::Connection::open(store.dir().join("store.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON objects WHEN NEW.key = 'default/bad'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    let applied = (move || {
        bulk.apply(docs(&pod("first", "")))?;
        bulk.apply(docs(&format!("{}{}", pod("ok", ""), pod("bad", ""))))?;
        bulk.apply(docs(&pod("after", "")))?;
        bulk.commit()
    })();
    let error = applied
        .expect_err("the refused row fails the apply")
        .to_string();
    assert!(error.contains("refused by the test"), "{error}");
    let after = store.load().unwrap();
    assert_eq!(
        after.pods.len(),
        1,
        "nothing of the refused apply is stored"
    );
    assert_eq!(store.revision().unwrap(), 1);
}

#[test]
fn writers_copy_the_log_into_the_database_while_a_reader_stays_open() {
    let store = tmp_store("checkpoint");
    let reader = Store::new(store.dir());
    let ranges = Ranges::default();
    // A reader that keeps its connection open (as an agent does), between reads.
    store
        .apply(&docs(&svc("first", "")), &ranges, Mode::Apply)
        .unwrap();
    assert_eq!(reader.revision().unwrap(), 1);
    for i in 0..200 {
        store
            .apply(&docs(&svc(&format!("s{i}"), "")), &ranges, Mode::Apply)
            .unwrap();
        assert!(reader.revision().unwrap() > 1);
    }
    // Each commit is copied into the database after it, so the log starts over
    // instead of growing by every commit's pages (200 commits of a few 16 KiB pages
    // each: megabytes).
    let wal = || {
        fs::metadata(store.dir().join("store.db-wal"))
            .unwrap()
            .len()
    };
    assert!(wal() < 512 * 1024, "the log holds {} bytes", wal());
    assert_eq!(reader.services().unwrap().len(), 201);
    // So do writes of the objects the store keeps for the API server alone (a
    // node's Lease, renewed every few seconds, all day).
    for i in 0..200 {
        store
            .kept_write::<StoreError>("Lease", "kube-node-lease/n1", |_, _| {
                Ok(Some(format!("{{\"renew\":{i}}}")))
            })
            .unwrap();
        assert!(reader.revision().unwrap() > 1);
    }
    assert!(wal() < 512 * 1024, "the log holds {} bytes", wal());
}

/// A bulk commit leaves copying its log into the database for later (the agents
/// read it meanwhile): `Store::checkpoint` (the agent's quiet second) or the next
/// commit copies it, so the log holds at most the bulk commits since the last copy.
#[test]
fn a_bulk_commit_leaves_its_log_to_the_next_copy() {
    let store = tmp_store("bulklog");
    let ranges = Ranges::default();
    let size = |file: &str| fs::metadata(store.dir().join(file)).unwrap().len();
    let pods: String = (0..=super::LOG_LEFT_FOR_LATER)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: {{app: a}}\nspec:\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: 10.1.{}.{}\n---\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    // A reader that keeps its connection open, as an agent does (the last
    // connection to close copies the log itself).
    store
        .apply(&docs(&svc("first", "")), &ranges, Mode::Apply)
        .unwrap();
    let reader = Store::new(store.dir());
    assert_eq!(reader.revision().unwrap(), 1);
    let before = size("store.db");
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&pods)).unwrap();
    bulk.commit().unwrap();
    let db = size("store.db");
    assert!(
        size("store.db-wal") > 1024 * 1024 && db == before,
        "the commit's pages stay in the log: log {} bytes, database {before} -> {db}",
        size("store.db-wal")
    );
    assert_eq!(reader.load().unwrap().pods.len(), pods_len(&pods));
    store.checkpoint().unwrap();
    assert!(
        size("store.db") > 1024 * 1024,
        "copied: database {} bytes",
        size("store.db")
    );
    // Without an agent, the next write's commit copies it.
    let again = tmp_store("bulklog2");
    again
        .apply(&docs(&svc("first", "")), &ranges, Mode::Apply)
        .unwrap();
    let reader = Store::new(again.dir());
    assert_eq!(reader.revision().unwrap(), 1);
    let mut bulk = again.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&pods)).unwrap();
    bulk.commit().unwrap();
    again
        .apply(&docs(&svc("one", "")), &ranges, Mode::Apply)
        .unwrap();
    let copied = fs::metadata(again.dir().join("store.db")).unwrap().len();
    assert!(copied > 1024 * 1024, "copied: database {copied} bytes");
}

#[test]
fn a_bulk_write_keeps_the_change_feed_index_and_lists_its_rows_there() {
    let store = tmp_store("revindex");
    let ranges = Ranges::default();
    let pods = |prefix: &str, n: usize| -> String {
        (0..n).map(|i| pod(&format!("{prefix}{i}"), "")).collect()
    };
    let has_index = |conn: &rusqlite::Connection| -> bool {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'objects_by_rev'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    let outside = || rusqlite::Connection::open(store.dir().join("store.db")).unwrap();
    store
        .apply(&docs(&svc("first", "")), &ranges, Mode::Apply)
        .unwrap();
    // 10,000 objects into a store of one, in two batches: the index is kept as
    // the rows are written, and the change feed lists each of them once.
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&pods("p", 5_000))).unwrap();
    bulk.apply(docs(&pods("q", 5_000))).unwrap();
    assert!(has_index(bulk.conn().unwrap()) && has_index(&outside()));
    bulk.commit().unwrap();
    assert!(has_index(&outside()));
    let mut changed = Vec::new();
    store
        .fact_changes_since(1, |batch| changed.extend(batch.into_iter().map(|c| c.key)))
        .unwrap();
    assert_eq!(changed.len(), 10_000);
    assert_eq!(
        changed
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        10_000
    );
    assert_eq!(store.changed_since(1).unwrap(), 10_000);
    // A bulk write refused after some batches leaves the store as it was.
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&pods("r", 2_000))).unwrap();
    assert!(
        bulk.apply(docs(&svc("bad", "  clusterIP: 10.0.0.1\n")))
            .is_err()
    );
    drop(bulk);
    assert!(has_index(&outside()));
    assert_eq!(store.revision().unwrap(), 2);
    assert_eq!(store.changed_since(2).unwrap(), 0);
}

fn pods_len(yaml: &str) -> usize {
    yaml.matches("kind: Pod").count()
}

/// Past `KEYS_READ_PAST` objects, a bulk write into a store that holds a few reads
/// their keys and looks up only those and what it named itself: each of them is
/// still found (applied again, unchanged; created again, refused).
#[test]
fn a_bulk_apply_past_the_keys_read_finds_every_stored_object_and_its_own() {
    let store = tmp_store("keysread");
    let ranges = Ranges::default();
    let in_ns1 = |name: &str| pod(name, "  namespace: ns1\n");
    let before = format!("{}---\n{}", svc("kept", ""), in_ns1("old"));
    store.apply(&docs(&before), &ranges, Mode::Apply).unwrap();
    let new: String = (0..super::bulk::KEYS_READ_PAST)
        .map(|i| in_ns1(&format!("p{i}")))
        .collect();
    let again = format!(
        "{}---\n{}{}{}",
        svc("kept", ""),
        in_ns1("old"),
        in_ns1("p7"),
        in_ns1("fresh")
    );
    let mut bulk = store.bulk_apply(&ranges, Mode::Apply).unwrap();
    bulk.apply(docs(&new)).unwrap();
    assert!(bulk.named.is_some(), "the store's keys were read");
    assert_eq!(
        bulk.apply(docs(&again)).unwrap(),
        [
            Outcome::Unchanged,
            Outcome::Unchanged,
            Outcome::Unchanged,
            Outcome::Created
        ]
    );
    bulk.commit().unwrap();
    assert_eq!(
        store.load().unwrap().pods.len(),
        super::bulk::KEYS_READ_PAST + 2
    );
    let mut bulk = store.bulk_apply(&ranges, Mode::Create).unwrap();
    bulk.apply(docs(&new.replace("name: p", "name: q")))
        .unwrap();
    assert!(bulk.named.is_some());
    assert!(
        matches!(
            bulk.apply(docs(&svc("kept", ""))),
            Err(StoreError::Apply(ApplyError::AlreadyExists { .. }))
        ),
        "created again"
    );
    // A store holding more than asked for is not read.
    let conn = bulk.conn().unwrap();
    assert_eq!(store.key_hashes(conn, 1).unwrap(), None);
    assert_eq!(
        store.key_hashes(conn, 100_000).unwrap().map(|h| h.len()),
        Some(2 * super::bulk::KEYS_READ_PAST + 3)
    );
}
