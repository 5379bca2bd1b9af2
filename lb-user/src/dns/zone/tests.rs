use super::*;
use crate::{state::Tracked, store::apply::applied};

/// The objects of `yaml` as the store would hold them, with their indexes.
fn tracked(yaml: &str) -> Tracked {
    Tracked::new(applied(yaml).into())
}

fn pod(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: db}}\nspec:\n  {extra}containers:\n  - name: c\n    image: app\n    ports: [{{name: pg, containerPort: 5432}}]\nstatus:\n  podIP: {ip}\n---\n"
    )
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: plain\nspec:\n  clusterIP: 10.96.0.81\n  ports:\n  - {port: 8080}\n---\n";

fn answer(z: &Zone, name: &str, want: Want) -> Vec<(String, Data)> {
    match z.lookup(name, want) {
        Lookup::Answer(r) => r.into_iter().map(|(o, d)| (o.to_string(), d)).collect(),
        other => panic!("{name} {want:?}: {other:?}"),
    }
}

fn a(ip: &str) -> Data {
    Data::A(ip.parse().unwrap())
}

#[test]
fn a_cluster_ip_service_has_its_address_srv_per_named_port_and_a_ptr() {
    let t = tracked(WEB);
    let z = Zone::of("cluster.local", &[], &t);
    let base = "web.default.svc.cluster.local.";
    assert_eq!(
        answer(&z, base, Want::A),
        vec![(base.into(), a("10.96.0.80"))]
    );
    let srv = |port| Data::Srv {
        priority: 0,
        weight: 100,
        port,
        target: base.into(),
    };
    assert_eq!(
        answer(&z, &format!("_http._tcp.{base}"), Want::Srv),
        vec![(format!("_http._tcp.{base}"), srv(80))]
    );
    assert_eq!(
        answer(&z, &format!("_dns._udp.{base}"), Want::Srv),
        vec![(format!("_dns._udp.{base}"), srv(53))]
    );
    // No SRV for a named port under the wrong protocol, nor for an unnamed port.
    assert_eq!(
        z.lookup(&format!("_dns._tcp.{base}"), Want::Srv),
        Lookup::NxDomain
    );
    assert_eq!(
        z.lookup("plain.default.svc.cluster.local.", Want::Srv),
        Lookup::NoData
    );
    assert_eq!(
        answer(&z, "80.0.96.10.in-addr.arpa.", Want::Ptr),
        vec![("80.0.96.10.in-addr.arpa.".into(), Data::Ptr(base.into()))]
    );
    // The name exists: other types are NODATA, not NXDOMAIN; so are its parents.
    for (name, want) in [
        (base, Want::Aaaa),
        (base, Want::Txt),
        ("80.0.96.10.in-addr.arpa.", Want::A),
        ("default.svc.cluster.local.", Want::A),
        ("_tcp.web.default.svc.cluster.local.", Want::A),
        ("svc.cluster.local.", Want::A),
        ("cluster.local.", Want::A),
    ] {
        assert_eq!(z.lookup(name, want), Lookup::NoData, "{name} {want:?}");
    }
    for name in [
        "nope.default.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "other.svc.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "web.default.cluster.local.",
    ] {
        assert_eq!(z.lookup(name, Want::A), Lookup::NxDomain, "{name}");
    }
    for name in [
        "example.com.",
        "local.",
        "82.0.96.10.in-addr.arpa.",
        "1.2.3.in-addr.arpa.",
    ] {
        assert_eq!(z.lookup(name, Want::A), Lookup::Outside, "{name}");
    }
}

#[test]
fn the_apex_answers_soa_ns_and_the_schema_version() {
    let z = Zone::of(
        "Cluster.Local",
        &[
            "10.96.0.10".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
        ],
        &tracked(WEB),
    );
    assert_eq!(z.domain(), "cluster.local.");
    let apex = answer(&z, "cluster.local.", Want::Any);
    assert!(matches!(apex[0].1, Data::Soa(_)), "{apex:?}");
    assert_eq!(apex[1].1, Data::Ns("ns.dns.cluster.local.".into()));
    assert_eq!(
        answer(&z, "ns.dns.cluster.local.", Want::A),
        vec![("ns.dns.cluster.local.".into(), a("10.96.0.10"))]
    );
    // A dual-stack cluster DNS's name server answers in both families.
    assert_eq!(
        answer(&z, "ns.dns.cluster.local.", Want::Aaaa),
        vec![(
            "ns.dns.cluster.local.".into(),
            Data::Aaaa("fd00:10:96::a".parse().unwrap())
        )]
    );
    assert_eq!(
        answer(&z, "dns-version.cluster.local.", Want::Txt),
        vec![(
            "dns-version.cluster.local.".into(),
            Data::Txt("1.1.0".into())
        )]
    );
}

#[test]
fn a_headless_service_lists_its_ready_endpoints_with_their_own_names() {
    let t = tracked(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  selector: {{app: db}}\n  ports:\n  - {{name: pg, port: 5432, targetPort: pg}}\n---\n{}{}{}",
        pod("db-0", "10.244.0.2", "hostname: db-0\n  subdomain: db\n  "),
        pod("db-1", "10.244.0.3", ""),
        // Not ready: left out.
        pod("db-2", "10.244.0.4", "").replace(
            "status:\n",
            "status:\n  conditions: [{type: Ready, status: 'False'}]\n"
        ),
    ));
    let z = Zone::of("cluster.local", &[], &t);
    let base = "db.default.svc.cluster.local.";
    let mut addrs = answer(&z, base, Want::A);
    addrs.sort();
    assert_eq!(
        addrs,
        vec![
            (base.into(), a("10.244.0.2")),
            (base.into(), a("10.244.0.3"))
        ]
    );
    // The pod that names the service as its subdomain has its hostname; the other
    // is named by its address.
    assert_eq!(
        answer(&z, &format!("db-0.{base}"), Want::A),
        vec![(format!("db-0.{base}"), a("10.244.0.2"))]
    );
    assert_eq!(
        answer(&z, &format!("10-244-0-3.{base}"), Want::A),
        vec![(format!("10-244-0-3.{base}"), a("10.244.0.3"))]
    );
    let mut srv = answer(&z, &format!("_pg._tcp.{base}"), Want::Srv);
    srv.sort();
    let target = |t: &str| Data::Srv {
        priority: 0,
        weight: 50,
        port: 5432,
        target: format!("{t}.{base}").into(),
    };
    assert_eq!(
        srv.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
        vec![target("10-244-0-3"), target("db-0")]
    );
    assert_eq!(
        answer(&z, "2.0.244.10.in-addr.arpa.", Want::Ptr)[0].1,
        Data::Ptr(format!("db-0.{base}").into())
    );
    assert_eq!(
        z.lookup(&format!("10-244-0-4.{base}"), Want::A),
        Lookup::NxDomain
    );
}

#[test]
fn headless_endpoints_come_from_endpoint_slices_without_a_selector() {
    let t = tracked(concat!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  clusterIP: None\n  ports:\n  - {name: web, port: 80}\n---\n",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-1\n  labels: {kubernetes.io/service-name: ext}\naddressType: IPv4\n",
        "ports: [{name: web, port: 8080, protocol: TCP}]\nendpoints:\n",
        "- {addresses: [10.1.0.1], hostname: one}\n",
        "- {addresses: [10.1.0.2], conditions: {ready: false}}\n",
    ));
    let z = Zone::of("cluster.local", &[], &t);
    assert_eq!(
        answer(&z, "ext.default.svc.cluster.local.", Want::A),
        vec![("ext.default.svc.cluster.local.".into(), a("10.1.0.1"))]
    );
    assert_eq!(
        answer(&z, "_web._tcp.ext.default.svc.cluster.local.", Want::Srv)[0].1,
        Data::Srv {
            priority: 0,
            weight: 100,
            port: 8080,
            target: "one.ext.default.svc.cluster.local.".into()
        }
    );
}

#[test]
fn an_external_name_is_an_alias_followed_inside_the_zone() {
    let t = tracked(&format!(
        "{WEB}apiVersion: v1\nkind: Service\nmetadata:\n  name: out\nspec:\n  type: ExternalName\n  externalName: example.com\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: in\nspec:\n  type: ExternalName\n  externalName: web.default.svc.cluster.local\n"
    ));
    let z = Zone::of("cluster.local", &[], &t);
    assert_eq!(
        answer(&z, "out.default.svc.cluster.local.", Want::A),
        vec![(
            "out.default.svc.cluster.local.".into(),
            Data::Cname("example.com.".into())
        )]
    );
    assert_eq!(
        answer(&z, "in.default.svc.cluster.local.", Want::A),
        vec![
            (
                "in.default.svc.cluster.local.".into(),
                Data::Cname("web.default.svc.cluster.local.".into())
            ),
            ("web.default.svc.cluster.local.".into(), a("10.96.0.80")),
        ]
    );
}

#[test]
fn pod_names_answer_from_the_name_alone() {
    let z = Zone::of("cluster.local", &[], &tracked(WEB));
    assert_eq!(
        answer(&z, "10-244-0-9.default.pod.cluster.local.", Want::A),
        vec![(
            "10-244-0-9.default.pod.cluster.local.".into(),
            a("10.244.0.9")
        )]
    );
    assert_eq!(
        z.lookup("default.pod.cluster.local.", Want::A),
        Lookup::NoData
    );
    assert_eq!(
        z.lookup("10-244-0.default.pod.cluster.local.", Want::A),
        Lookup::NxDomain
    );
}

#[test]
fn a_change_replaces_a_services_records_and_a_deletion_removes_every_name() {
    let mut t = tracked(WEB);
    let mut z = Zone::of("cluster.local", &[], &t);
    let key = ObjectKey::new("default", "web");
    let names = z.len();
    assert!(names >= 3, "{names}");
    let mut changed = t.state.services[&key].clone();
    changed
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .remove(1);
    t.take(vec![crate::state::Change {
        kind: crate::model::Kind::Service,
        key: key.clone(),
        object: Some(crate::model::Object::Service(Box::new(changed))),
    }]);
    z.update(&t, &key);
    assert_eq!(
        z.lookup("_dns._udp.web.default.svc.cluster.local.", Want::Srv),
        Lookup::NxDomain
    );
    assert_eq!(z.len(), names - 1);
    t.take(vec![crate::state::Change {
        kind: crate::model::Kind::Service,
        key: key.clone(),
        object: None,
    }]);
    z.update(&t, &key);
    let plain = ObjectKey::new("default", "plain");
    t.take(vec![crate::state::Change {
        kind: crate::model::Kind::Service,
        key: plain.clone(),
        object: None,
    }]);
    z.update(&t, &plain);
    assert!(z.is_empty());
    assert!(z.parents.is_empty() && z.reverse.is_empty() && z.of_service.is_empty());
    for name in [
        "web.default.svc.cluster.local.",
        "default.svc.cluster.local.",
    ] {
        assert_eq!(z.lookup(name, Want::A), Lookup::NxDomain, "{name}");
    }
    assert_eq!(
        z.lookup("80.0.96.10.in-addr.arpa.", Want::Ptr),
        Lookup::Outside
    );
}

/// A dual-stack store's services: the ClusterIP service answers A with its IPv4
/// address and AAAA with its IPv6 one, each pointing back (`in-addr.arpa.`,
/// `ip6.arpa.`); a dual-stack headless service lists its pods' addresses of both
/// families, each pod named by its address in either form; pod names take IPv6
/// addresses as CoreDNS writes them.
#[test]
fn a_dual_stack_service_answers_a_and_aaaa_and_points_back_from_both() {
    let alloc = crate::store::alloc::Allocation {
        service_cidrs: crate::store::alloc::parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112")
            .unwrap(),
        ..Default::default()
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.96.0.80, 'fd00:10:96::80']\n  ports:\n  - {{name: http, port: 80}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  ipFamilyPolicy: RequireDualStack\n  selector: {{app: db}}\n  ports:\n  - {{name: pg, port: 5432, targetPort: pg}}\n---\n{}",
        pod("db-0", "10.244.0.2", "").replace(
            "  podIP: 10.244.0.2\n",
            "  podIP: 10.244.0.2\n  podIPs: [{ip: 10.244.0.2}, {ip: 'fd00:10:244::2'}]\n"
        ),
    );
    let t = Tracked::new(crate::store::apply::applied_in(&yaml, &alloc).into());
    let z = Zone::of("cluster.local", &[], &t);
    let web = "web.default.svc.cluster.local.";
    assert_eq!(
        answer(&z, web, Want::A),
        vec![(web.into(), a("10.96.0.80"))]
    );
    let six: std::net::Ipv6Addr = "fd00:10:96::80".parse().unwrap();
    assert_eq!(
        answer(&z, web, Want::Aaaa),
        vec![(web.into(), Data::Aaaa(six))]
    );
    assert_eq!(answer(&z, web, Want::Any).len(), 2);
    let nibbles: String = format!("{:032x}", u128::from(six))
        .chars()
        .rev()
        .map(|c| format!("{c}."))
        .collect();
    assert_eq!(
        answer(&z, &format!("{nibbles}ip6.arpa."), Want::Ptr),
        vec![(format!("{nibbles}ip6.arpa."), Data::Ptr(web.into()))]
    );
    assert_eq!(
        answer(&z, "80.0.96.10.in-addr.arpa.", Want::Ptr)[0].1,
        Data::Ptr(web.into())
    );
    // An address of the service range nobody holds is the upstream's.
    assert_eq!(
        z.lookup(
            &nibbles.replacen('0', "1", 1).replace("ip6", "x"),
            Want::Ptr
        ),
        Lookup::Outside
    );
    let db = "db.default.svc.cluster.local.";
    assert_eq!(answer(&z, db, Want::A), vec![(db.into(), a("10.244.0.2"))]);
    let pod6: std::net::Ipv6Addr = "fd00:10:244::2".parse().unwrap();
    assert_eq!(
        answer(&z, db, Want::Aaaa),
        vec![(db.into(), Data::Aaaa(pod6))]
    );
    let own = format!("fd00-10-244--2.{db}");
    assert_eq!(
        answer(&z, &own, Want::Aaaa),
        vec![(own.clone(), Data::Aaaa(pod6))]
    );
    let pod_name = "fd00-10-244--2.default.pod.cluster.local.";
    assert_eq!(
        answer(&z, pod_name, Want::Aaaa),
        vec![(pod_name.into(), Data::Aaaa(pod6))]
    );
    // A single-stack IPv4 service has no AAAA record: NODATA, not NXDOMAIN.
    let t4 = tracked(WEB);
    let z4 = Zone::of("cluster.local", &[], &t4);
    assert_eq!(z4.lookup(web, Want::Aaaa), Lookup::NoData);
}
