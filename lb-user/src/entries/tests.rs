use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::jiff::Timestamp;
use lb_common::{PROTO_TCP, SVC_F_INTERNAL};

use super::*;
use crate::{
    model::{Kind, parse_manifest},
    plan::{self, Node, frontend},
    state::{State, Tracked},
    store::{Allocation, Mode, apply},
};

const NODE: &str = "192.168.1.2";

/// A state followed as the agent follows its source: by its changes, re-planning
/// the services they touch. No disk: each write is applied to a copy and the
/// difference taken as the changes.
struct Follower {
    /// The source's objects whole.
    source: State,
    tracked: Tracked,
    programmed: Programmed,
    node: Node,
}

/// What one round did.
struct Round {
    ops: Vec<Op>,
    services: usize,
    gone: BTreeSet<u32>,
}

impl Follower {
    fn new() -> Self {
        Follower {
            source: State::default(),
            tracked: Tracked::default(),
            programmed: Programmed::default(),
            node: Node {
                name: "n1".into(),
                addrs: vec![NODE.parse().unwrap()],
                addrs6: Vec::new(),
            },
        }
    }

    fn apply(&mut self, yaml: &str) -> Round {
        let mut after = self.source.clone();
        let docs = parse_manifest("t.yaml", yaml).unwrap();
        let rev = after.revision + 1;
        apply::apply(
            &mut after,
            &docs,
            &Allocation::default(),
            Mode::Apply,
            Timestamp::now(),
            rev,
        )
        .unwrap();
        after.revision = rev;
        self.follow(after)
    }

    fn delete(&mut self, kind: Kind, name: &str) -> Round {
        let mut after = self.source.clone();
        apply::delete(&mut after, &[(kind, ObjectKey::new("default", name))]).unwrap();
        self.follow(after)
    }

    /// Takes the changes to `after`, plans the services they touch and "writes"
    /// them; checks that a full update over every service then wants no write, and
    /// that the kept references are those of the entries.
    fn follow(&mut self, after: State) -> Round {
        self.source = after.clone();
        let changes = self.tracked.state.changes_to(after);
        let touched = self.tracked.take(changes);
        let plans = plan::plan(&self.tracked, &self.node, &touched.services);
        let Ok(Update::Writes(ops, _)) = self
            .programmed
            .update(Scope::Services(&touched.services), &plans)
        else {
            panic!("an update of the touched services writes")
        };
        let gone = self.programmed.record(&ops);
        let mut full = self.programmed.clone();
        let all = plan::plan_all(&self.tracked, &self.node);
        assert_eq!(
            full.update(Scope::All, &all),
            Ok(Update::Writes(Vec::new(), LeftOut::new())),
            "incremental result differs from a full plan"
        );
        let fresh = Programmed::adopt(self.programmed.entries.clone(), self.programmed.limits);
        assert_eq!(self.programmed.backends, fresh.backends);
        assert_eq!(self.programmed.port_refs, fresh.port_refs);
        assert_eq!(self.programmed.service_refs, fresh.service_refs);
        assert_eq!(
            self.programmed.backend_ids, fresh.backend_ids,
            "free backend ids"
        );
        assert_eq!(
            self.programmed.service_ids, fresh.service_ids,
            "free service ids"
        );
        Round {
            ops,
            services: touched.services.len(),
            gone,
        }
    }
}

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}---\n")
}

fn pod(name: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\nspec:\n  containers:\n  - name: c\n    image: app\n    ports: [{{name: web, containerPort: 8080}}]\nstatus:\n  podIP: {ip}\n---\n"
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
            Op::PutBackend(k, _) | Op::DeleteBackend(k, _) => Some(k.svc_id),
            Op::PutService(_, v) => Some(v.svc_id),
            _ => None,
        })
        .collect()
}

#[test]
fn changes_replan_only_the_services_they_touch_and_equal_a_full_plan() {
    let mut f = Follower::new();
    let web = "  selector: {app: web}\n  ports:\n  - {name: web, port: 80, targetPort: web}\n";
    let db =
        "  type: NodePort\n  selector: {app: db}\n  ports:\n  - {port: 5432, targetPort: 8080}\n";
    let ext = "  ports:\n  - {name: web, port: 443, targetPort: 8080}\n";
    let first = f.apply(&format!(
        "{}{}{}{}{}{}{}",
        svc("web", web),
        svc("db", db),
        svc("ext", ext),
        pod("w1", "10.244.0.2", "web"),
        pod("w2", "10.244.0.3", "web"),
        pod("d1", "10.244.0.4", "db"),
        slice("ext-1", "ext", &["10.244.1.2", "10.244.1.3"]),
    ));
    assert_eq!(first.services, 3, "the first change is planned per service");
    assert_eq!(
        f.programmed.entries.services.len(),
        4,
        "web, ext, db's ClusterIP and NodePort"
    );
    let id_of = |f: &Follower, name: &str| -> u32 {
        let key = ObjectKey::new("default", name);
        let ip = crate::model::cluster_ip(&f.tracked.state.services[&key]).unwrap();
        f.programmed
            .entries
            .services
            .iter()
            .find(|(k, _)| k.addr() == ip)
            .unwrap()
            .1
            .svc_id
    };

    // A pod joins web: web's slots only.
    let p = f.apply(&pod("w3", "10.244.0.5", "web"));
    assert_eq!(p.services, 1);
    assert_eq!(touched_ids(&p.ops), BTreeSet::from([id_of(&f, "web")]));

    // An EndpointSlice endpoint replaced: ext's slots only, and one backend is gone.
    let p = f.apply(&slice("ext-1", "ext", &["10.244.1.2", "10.244.1.9"]));
    assert_eq!(touched_ids(&p.ops), BTreeSet::from([id_of(&f, "ext")]));
    assert_eq!(p.gone.len(), 1);

    // A pod relabelled from web to db moves between the two services.
    let p = f.apply(&pod("w1", "10.244.0.2", "db"));
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
    let p = f.apply(&pod("w3", "10.244.0.6", "web"));
    assert_eq!(p.services, 2);
    assert_eq!(
        touched_ids(&p.ops),
        BTreeSet::from([id_of(&f, "web"), id_of(&f, "db")])
    );

    // A service's port changes: its frontends move, the port bitmap follows.
    let p = f.apply(&svc(
        "ext",
        "  ports:\n  - {name: web, port: 8443, targetPort: 8080}\n",
    ));
    assert!(
        p.ops.iter().any(|o| matches!(o, Op::PutPorts(..))),
        "{:?}",
        p.ops
    );

    // A service and a pod go; a new service comes with endpoints shared with another.
    f.delete(Kind::Service, "db");
    f.delete(Kind::Pod, "w2");
    f.apply(&format!(
        "{}{}",
        svc(
            "ext2",
            "  ports:\n  - {name: web, port: 80, targetPort: 8080}\n"
        ),
        slice("ext2-1", "ext2", &["10.244.1.2", "10.244.0.3"]),
    ));
    // A slice relabelled to another service takes its endpoints along.
    let p = f.apply(&slice("ext2-1", "ext", &["10.244.1.2", "10.244.0.3"]));
    assert_eq!(p.services, 2);
    assert_eq!(
        touched_ids(&p.ops),
        BTreeSet::from([id_of(&f, "ext"), id_of(&f, "ext2")])
    );
    f.delete(Kind::EndpointSlice, "ext-1");
    // Everything goes: nothing is left, not even the SNAT port bits.
    for s in ["web", "ext", "ext2"] {
        f.delete(Kind::Service, s);
    }
    assert_eq!(f.programmed.entries, Entries::default());
}

#[test]
fn the_gone_backends_are_those_no_slot_holds() {
    let mut f = Follower::new();
    let ports = "  ports:\n  - {name: web, port: 80, targetPort: 8080}\n";
    f.apply(&format!(
        "{}{}{}{}",
        svc("a", ports),
        svc("b", ports),
        slice("a-1", "a", &["10.244.1.2", "10.244.1.3"]),
        slice("b-1", "b", &["10.244.1.3"]),
    ));
    let id = |f: &Follower, addr: &str| {
        let a: std::net::IpAddr = addr.parse().unwrap();
        f.programmed.backends[&(a, 8080, lb_common::PROTO_TCP)].0
    };
    let (two, three) = (id(&f, "10.244.1.2"), id(&f, "10.244.1.3"));
    // 10.244.1.3 leaves a but b still has it: only .2 is gone.
    let p = f.apply(&slice("a-1", "a", &["10.244.1.9"]));
    assert_eq!(p.gone, BTreeSet::from([two]));
    assert_ne!(two, three);
}

fn plan_with(endpoints: &[(u8, u16)]) -> PortPlan {
    PortPlan {
        service: ObjectKey::new("default", "s"),
        port: "80".into(),
        proto: PROTO_TCP,
        frontends: vec![(
            frontend(
                "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
                80,
                PROTO_TCP,
            ),
            SVC_F_INTERNAL,
        )],
        endpoints: endpoints
            .iter()
            .map(|(last, port)| (Ipv4Addr::new(10, 244, 0, *last).into(), *port))
            .collect(),
        remote: BTreeSet::new(),
        affinity_timeout_s: 0,
    }
}

/// `plan` answering on cluster IP `ip`, port 80, instead.
fn on(mut plan: PortPlan, ip: &str) -> PortPlan {
    plan.frontends = vec![(
        frontend(ip.parse::<std::net::IpAddr>().unwrap(), 80, PROTO_TCP),
        SVC_F_INTERNAL,
    )];
    plan
}

/// The entries a full update of `plans` leaves in `p`.
fn full(p: &mut Programmed, plans: &[PortPlan]) -> Entries {
    let Ok(Update::Writes(ops, _)) = p.update(Scope::All, plans) else {
        panic!("a full update writes")
    };
    p.record(&ops);
    p.entries().clone()
}

#[test]
fn ids_and_slots_stay_put_so_a_change_touches_only_what_it_must() {
    let mut p = Programmed::default();
    let first = full(&mut p, &[plan_with(&[(2, 80), (3, 80), (4, 80)])]);
    assert_eq!(first.services.values().next().unwrap().backend_count, 3);
    // Same input again: no writes.
    assert_eq!(
        p.update(Scope::All, &[plan_with(&[(2, 80), (3, 80), (4, 80)])]),
        Ok(Update::Writes(Vec::new(), LeftOut::new()))
    );
    // Remove the middle endpoint: slot 0 keeps .2, the last one moves into the hole
    // only if needed; ids of survivors are unchanged.
    let Ok(Update::Writes(ops, _)) = p.update(Scope::All, &[plan_with(&[(2, 80), (4, 80)])]) else {
        panic!()
    };
    assert!(
        ops.len() <= 3,
        "one count, at most one moved slot, one removed slot: {ops:?}"
    );
    p.record(&ops);
    let second = p.entries().clone();
    let ids = |e: &Entries| {
        e.backends
            .values()
            .map(|b| (b.addr(), b.backend_id()))
            .collect::<BTreeMap<_, _>>()
    };
    for (addr, id) in ids(&second) {
        assert_eq!(ids(&first)[&addr], id, "a surviving backend keeps its id");
    }
    assert_eq!(
        second.backends[&BackendKey { svc_id: 1, slot: 0 }],
        first.backends[&BackendKey { svc_id: 1, slot: 0 }]
    );
    // Add one back: a new id, not one in use.
    let third = full(&mut p, &[plan_with(&[(2, 80), (4, 80), (9, 80)])]);
    let new_id = third
        .backends
        .values()
        .find(|b| b.addr() == Ipv4Addr::new(10, 244, 0, 9))
        .unwrap()
        .backend_id();
    assert!(!ids(&second).values().any(|id| *id == new_id));
}

#[test]
fn a_new_service_does_not_take_an_existing_services_id() {
    let a = plan_with(&[(2, 80)]);
    let mut b = on(plan_with(&[(3, 80)]), "10.96.0.11");
    b.service = ObjectKey::new("default", "b");
    let mut p = Programmed::default();
    let only_b = full(&mut p, std::slice::from_ref(&b));
    let both = full(&mut p, &[a, b.clone()]);
    let id_of = |e: &Entries, p: &PortPlan| e.services[&p.frontends[0].0].svc_id;
    assert_eq!(
        id_of(&both, &b),
        id_of(&only_b, &b),
        "b keeps its id when a appears before it"
    );
}

#[test]
fn a_frontend_another_service_holds_needs_a_full_plan() {
    let a = plan_with(&[(2, 80)]);
    let mut p = Programmed::default();
    full(&mut p, std::slice::from_ref(&a));
    // b claims a's frontend: an update of b alone cannot say who keeps it.
    let mut b = a.clone();
    b.service = ObjectKey::new("default", "b");
    let only_b = BTreeSet::from([b.service.clone()]);
    assert_eq!(
        p.update(Scope::Services(&only_b), &[b]),
        Ok(Update::Collides)
    );
}

#[test]
fn a_refused_write_keeps_the_claims_so_the_retry_removes_what_is_left() {
    let a = plan_with(&[(2, 80)]);
    let key = a.service.clone();
    let mut p = Programmed::default();
    let held = full(&mut p, std::slice::from_ref(&a));
    // The service moves to another address; the write is refused, and the maps are
    // read again (they still hold the old frontend).
    let moved = on(a.clone(), "10.96.0.12");
    let one = BTreeSet::from([key.clone()]);
    assert!(matches!(
        p.update(Scope::Services(&one), std::slice::from_ref(&moved)),
        Ok(Update::Writes(..))
    ));
    p.resync(held.clone());
    p.claim(&key, moved.frontends.iter().map(|(f, _)| *f));
    // The retry removes the old frontend and writes the new one.
    let Ok(Update::Writes(ops, _)) = p.update(Scope::Services(&one), std::slice::from_ref(&moved))
    else {
        panic!()
    };
    p.record(&ops);
    let fronts: Vec<crate::sync::Frontend> = p.entries().services.keys().copied().collect();
    assert_eq!(fronts, vec![moved.frontends[0].0]);
}

#[test]
fn writes_recorded_while_the_maps_refuse_them_leave_nothing_after_the_resync() {
    // A large round records its writes while the maps take them: when the maps
    // refuse, the entries read again replace what was recorded, and the update's
    // claims were never taken; the retry plans as if nothing had been recorded.
    let a = plan_with(&[(2, 80), (3, 80)]);
    let one = BTreeSet::from([a.service.clone()]);
    let moved = on(plan_with(&[(4, 80)]), "10.96.0.12");
    let (mut p, mut untouched) = (Programmed::default(), Programmed::default());
    let held = full(&mut p, std::slice::from_ref(&a));
    full(&mut untouched, std::slice::from_ref(&a));
    let Ok(Update::Writes(ops, _)) = p.update(Scope::Services(&one), std::slice::from_ref(&moved))
    else {
        panic!("the move writes")
    };
    p.record_writes(&ops);
    assert_ne!(p.entries(), &held, "recorded as if the maps took them");
    p.resync(held.clone());
    assert_eq!(p.entries(), &held);
    let retry = p.update(Scope::Services(&one), std::slice::from_ref(&moved));
    assert_eq!(
        retry,
        untouched.update(Scope::Services(&one), std::slice::from_ref(&moved))
    );
    let Ok(Update::Writes(ops, _)) = retry else {
        panic!("the retry writes")
    };
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::DeleteService(f) if *f == a.frontends[0].0)),
        "the retry removes the old frontend: {ops:?}"
    );
}

/// Service `name` on cluster IP 10.96.0.`ip` with endpoints 10.244.0.`e` for e in `endpoints`.
fn named(name: &str, ip: u8, endpoints: &[u8]) -> PortPlan {
    let mut p = plan_with(&endpoints.iter().map(|e| (*e, 80)).collect::<Vec<_>>());
    p.service = ObjectKey::new("default", name);
    p.frontends = vec![(
        frontend(Ipv4Addr::new(10, 96, 0, ip), 80, PROTO_TCP),
        SVC_F_INTERNAL,
    )];
    p
}

#[test]
fn full_maps_leave_new_services_out_and_never_take_from_programmed_ones() {
    // Maps of 3 frontends and 6 slots (ids below them: 2 service ports, 5 backends).
    let limits = Limits {
        frontends: 3,
        backends: 6,
        frontends6: 3,
        backends6: 6,
    };
    let mut p = Programmed::adopt(Entries::default(), limits);
    let a = named("a", 10, &[1, 2, 3]);
    let b = named("b", 11, &[4]);
    full(&mut p, &[a.clone(), b.clone()]);
    assert_eq!(p.entries().services.len(), 2);
    // A third service needs a third service-port id: no room. It is left out (said
    // why), and a and b keep theirs, in a full update as in one of some services.
    let c = named("c", 12, &[5]);
    let Ok(Update::Writes(ops, left)) = p.update(Scope::All, &[c.clone(), a.clone(), b.clone()])
    else {
        panic!()
    };
    assert!(ops.is_empty(), "{ops:?}");
    let why = &left[&c.service];
    assert!(
        why.contains("no free service-port id") && why.contains("--max-frontends"),
        "{why}"
    );
    let only_c = BTreeSet::from([c.service.clone()]);
    let Ok(Update::Writes(ops, left)) =
        p.update(Scope::Services(&only_c), std::slice::from_ref(&c))
    else {
        panic!()
    };
    assert!(ops.is_empty() && left.contains_key(&c.service));
    // b grows past the slots (4 + 3 > 6): it keeps what it has, as it is.
    let grown = named("b", 11, &[4, 6, 7, 8]);
    let only_b = BTreeSet::from([b.service.clone()]);
    let before = p.entries().clone();
    let Ok(Update::Writes(ops, left)) =
        p.update(Scope::Services(&only_b), std::slice::from_ref(&grown))
    else {
        panic!()
    };
    p.record(&ops);
    assert!(
        left[&b.service].contains("no room in LB_BACKENDS"),
        "{left:?}"
    );
    assert_eq!(p.entries(), &before, "b's entries stay as they were");
    // a goes: its entries go first, its id is free once that is written; then
    // there is more room, and the retry takes c.
    let room = p.room();
    let Ok(Update::Writes(ops, left)) = p.update(Scope::All, &[b.clone(), c.clone()]) else {
        panic!()
    };
    p.record(&ops);
    assert!(left.contains_key(&c.service), "{left:?}");
    assert!(p.room().0 > room.0 && p.room().1 > room.1);
    let Ok(Update::Writes(ops, left)) =
        p.update(Scope::Services(&only_c), std::slice::from_ref(&c))
    else {
        panic!()
    };
    p.record(&ops);
    assert!(left.is_empty(), "{left:?}");
    let held: BTreeSet<u32> = p.entries().services.values().map(|v| v.svc_id).collect();
    assert_eq!(held.len(), 2);
}

/// When every plan fits with each endpoint counted a new backend, all are admitted
/// at once, as weighing them service by service admits them; when only the count
/// of distinct backends fits, they are weighed (and still all admitted).
#[test]
fn plans_that_all_fit_are_admitted_at_once_as_weighing_them_would() {
    // Maps of 3 frontends and 6 slots (ids below them: 2 service ports, 5 backends).
    let limits = Limits {
        frontends: 3,
        backends: 6,
        frontends6: 3,
        backends6: 6,
    };
    let p = Programmed::adopt(Entries::default(), limits);
    let old = Entries::default();
    let names = |a: &Admission<'_>| -> Vec<ObjectKey> {
        a.plans.iter().map(|p| p.service.clone()).collect()
    };
    // 5 endpoints, 4 addresses: within 5 backend ids either way.
    let (a, b) = (named("a", 10, &[1, 2, 3]), named("b", 11, &[3, 4]));
    let plans = [a, b];
    let all = p.admit_all(&plans, &old).expect("all fit");
    let weighed = p.weigh(&plans, &old);
    assert_eq!(names(&all), names(&weighed));
    assert!(all.left_out.is_empty() && weighed.left_out.is_empty());
    assert_eq!((all.new_backends, weighed.new_backends), (5, 4));
    // 6 endpoints, 3 addresses: the count is over 5 ids, the addresses are not.
    let plans = [named("a", 10, &[1, 2, 3]), named("b", 11, &[1, 2, 3])];
    assert!(p.admit_all(&plans, &old).is_none());
    let weighed = p.admit(&plans, &old);
    assert_eq!(weighed.plans.len(), 2, "{:?}", weighed.left_out);
    assert_eq!(weighed.new_backends, 3);
    // A third service: no third service-port id, weighed and left out.
    let plans = [
        named("a", 10, &[1]),
        named("b", 11, &[2]),
        named("c", 12, &[3]),
    ];
    assert!(p.admit_all(&plans, &old).is_none());
    assert_eq!(p.admit(&plans, &old).left_out.len(), 1);
}
