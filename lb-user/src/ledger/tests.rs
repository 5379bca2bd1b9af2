use super::*;
use crate::{
    model::parse_manifest,
    store::{Allocation, Mode, Store},
};

const NODE: &str = "192.168.1.2";

/// A store in a temporary directory, followed as the agent follows it: by its
/// changes, re-planning the services they touch.
struct Follower {
    dir: std::path::PathBuf,
    store: Store,
    state: State,
    index: Index,
    ledger: Ledger,
    node: Node,
}

impl Follower {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-ledger-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Follower {
            store: Store::new(&dir),
            dir,
            state: State::default(),
            index: Index::default(),
            ledger: Ledger::default(),
            node: Node {
                name: "n1".into(),
                addrs: vec![NODE.parse().unwrap()],
            },
        }
    }

    fn apply(&mut self, yaml: &str) -> (Plan, BTreeSet<u32>) {
        self.store
            .apply(
                &parse_manifest("t.yaml", yaml).unwrap(),
                &Allocation::default(),
                Mode::Apply,
            )
            .unwrap();
        self.follow()
    }

    fn delete(&mut self, kind: &'static str, name: &str) -> (Plan, BTreeSet<u32>) {
        self.store
            .delete(&[(kind, ObjectKey::new("default", name))])
            .unwrap();
        self.follow()
    }

    /// Reads the store's changes, plans them, "writes" them; checks that the result
    /// is what a full plan of the whole state wants and that the ledger's indexes are
    /// those of its entries. Returns the plan and the backends gone.
    fn follow(&mut self) -> (Plan, BTreeSet<u32>) {
        let read = self
            .store
            .changes_since(self.state.revision)
            .unwrap()
            .expect("no deletions pruned in these tests");
        let (_, services) = desired::take_changes(&mut self.state, &mut self.index, read.changes);
        self.state.revision = read.revision;
        assert_eq!(
            self.index,
            Index::of(&self.state),
            "the index kept by the changes differs from that of the state"
        );
        let plan = self
            .ledger
            .plan(&self.state, &self.index, &self.node, &services, false)
            .unwrap();
        let gone = self.ledger.apply(&plan.ops);
        let want = desired::entries(
            &desired::plan(&self.state, &self.node),
            &self.ledger.entries,
        )
        .unwrap();
        assert_eq!(
            self.ledger.entries, want,
            "incremental result differs from a full plan"
        );
        let fresh = Ledger::new(self.ledger.entries.clone());
        assert_eq!(self.ledger.backends, fresh.backends);
        assert_eq!(self.ledger.ports, fresh.ports);
        assert_eq!(self.ledger.service_refs, fresh.service_refs);
        assert_eq!(
            self.ledger.backend_ids, fresh.backend_ids,
            "free backend ids"
        );
        assert_eq!(
            self.ledger.service_ids, fresh.service_ids,
            "free service ids"
        );
        (plan, gone)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}---\n")
}

fn pod(name: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\nspec:\n  containers:\n  - name: c\n    ports: [{{name: web, containerPort: 8080}}]\nstatus:\n  podIP: {ip}\n---\n"
    )
}

fn slice(name: &str, service: &str, addrs: &[&str]) -> String {
    let eps: String = addrs
        .iter()
        .map(|a| format!("- addresses: [{a}]\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n- {{name: web, port: 8080, protocol: TCP}}\nendpoints:\n{eps}---\n"
    )
}

/// The service-port ids whose slots or frontends `ops` write.
fn touched_ids(ops: &[Op]) -> BTreeSet<u32> {
    ops.iter()
        .filter_map(|op| match op {
            Op::PutBackend(k, _) | Op::DeleteBackend(k) => Some(k.svc_id),
            Op::PutService(_, v) => Some(v.svc_id),
            _ => None,
        })
        .collect()
}

#[test]
fn changes_replan_only_the_services_they_touch_and_equal_a_full_plan() {
    let mut f = Follower::new("touch");
    let web = "  selector: {app: web}\n  ports:\n  - {name: web, port: 80, targetPort: web}\n";
    let db =
        "  type: NodePort\n  selector: {app: db}\n  ports:\n  - {port: 5432, targetPort: 8080}\n";
    let ext = "  ports:\n  - {name: web, port: 443, targetPort: 8080}\n";
    let (first, _) = f.apply(&format!(
        "{}{}{}{}{}{}{}",
        svc("web", web),
        svc("db", db),
        svc("ext", ext),
        pod("w1", "10.244.0.2", "web"),
        pod("w2", "10.244.0.3", "web"),
        pod("d1", "10.244.0.4", "db"),
        slice("ext-1", "ext", &["10.244.1.2", "10.244.1.3"]),
    ));
    assert!(
        !first.full,
        "the first change of an empty ledger is planned per service"
    );
    assert_eq!(
        f.ledger.entries.services.len(),
        4,
        "web, ext, db's ClusterIP and NodePort"
    );
    let id_of = |f: &Follower, name: &str| -> u32 {
        let ip = crate::model::cluster_ip(&f.state.services[&format!("default/{name}")]).unwrap();
        f.ledger
            .entries
            .services
            .iter()
            .find(|(k, _)| k.addr_be == u32::from(ip).to_be())
            .unwrap()
            .1
            .svc_id
    };

    // A pod joins web: web's slots only.
    let (p, _) = f.apply(&pod("w3", "10.244.0.5", "web"));
    assert_eq!(p.services, 1);
    assert_eq!(touched_ids(&p.ops), BTreeSet::from([id_of(&f, "web")]));

    // An EndpointSlice endpoint replaced: ext's slots only, and one backend is gone.
    let (p, gone) = f.apply(&slice("ext-1", "ext", &["10.244.1.2", "10.244.1.9"]));
    assert_eq!(touched_ids(&p.ops), BTreeSet::from([id_of(&f, "ext")]));
    assert_eq!(gone.len(), 1);

    // A pod relabelled from web to db moves between the two services.
    let (p, _) = f.apply(&pod("w1", "10.244.0.2", "db"));
    assert_eq!(p.services, 2);
    assert_eq!(
        touched_ids(&p.ops),
        BTreeSet::from([id_of(&f, "web"), id_of(&f, "db")])
    );

    // db's selector comes to select web's pods: a change of such a pod then
    // re-plans both services.
    f.apply(&svc(
        "db",
        "  type: NodePort\n  selector: {app: web}\n  ports:\n  - {port: 5432, targetPort: 8080}\n",
    ));
    let (p, _) = f.apply(&pod("w3", "10.244.0.6", "web"));
    assert_eq!(p.services, 2);
    assert_eq!(
        touched_ids(&p.ops),
        BTreeSet::from([id_of(&f, "web"), id_of(&f, "db")])
    );

    // A service's port changes: its frontends move, the port bitmap follows.
    let (p, _) = f.apply(&svc(
        "ext",
        "  ports:\n  - {name: web, port: 8443, targetPort: 8080}\n",
    ));
    assert!(
        p.ops.iter().any(|o| matches!(o, Op::PutPorts(..))),
        "{:?}",
        p.ops
    );

    // A service and a pod go; a new service comes with endpoints shared with another.
    f.delete("Service", "db");
    f.delete("Pod", "w2");
    f.apply(&format!(
        "{}{}",
        svc(
            "ext2",
            "  ports:\n  - {name: web, port: 80, targetPort: 8080}\n"
        ),
        slice("ext2-1", "ext2", &["10.244.1.2", "10.244.0.3"]),
    ));
    // A slice relabelled to another service takes its endpoints along.
    let (p, _) = f.apply(&slice("ext2-1", "ext", &["10.244.1.2", "10.244.0.3"]));
    assert_eq!(p.services, 2);
    assert_eq!(
        touched_ids(&p.ops),
        BTreeSet::from([id_of(&f, "ext"), id_of(&f, "ext2")])
    );
    f.delete("EndpointSlice", "ext-1");
    // Everything goes: nothing is left, not even the SNAT port bits.
    for s in ["web", "ext", "ext2"] {
        f.delete("Service", s);
    }
    assert_eq!(f.ledger.entries, Entries::default());
}

#[test]
fn the_gone_backends_are_those_no_slot_holds() {
    let mut f = Follower::new("gone");
    let ports = "  ports:\n  - {name: web, port: 80, targetPort: 8080}\n";
    f.apply(&format!(
        "{}{}{}{}",
        svc("a", ports),
        svc("b", ports),
        slice("a-1", "a", &["10.244.1.2", "10.244.1.3"]),
        slice("b-1", "b", &["10.244.1.3"]),
    ));
    let id = |f: &Follower, addr: &str| {
        let a: std::net::Ipv4Addr = addr.parse().unwrap();
        f.ledger.backends[&(u32::from(a).to_be(), 8080u16.to_be(), lb_common::PROTO_TCP)].0
    };
    let (two, three) = (id(&f, "10.244.1.2"), id(&f, "10.244.1.3"));
    // 10.244.1.3 leaves a but b still has it: only .2 is gone.
    let (_, gone) = f.apply(&slice("a-1", "a", &["10.244.1.9"]));
    assert_eq!(gone, BTreeSet::from([two]));
    assert_ne!(two, three);
}
