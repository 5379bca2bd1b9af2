use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

use super::*;
use crate::model::cluster_ip;

fn svc(ty: &str, cluster_ip: Option<&str>, node_port: Option<i32>) -> Service {
    Service {
        spec: Some(ServiceSpec {
            type_: Some(ty.into()),
            cluster_ip: cluster_ip.map(Into::into),
            ports: Some(vec![ServicePort {
                port: 80,
                node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn small() -> Allocation {
    Allocation {
        service_cidrs: parse_service_cidrs("10.96.0.0/29").unwrap(),
        node_ports: 30000..=30002,
    }
}

fn field(e: AllocError) -> FieldError {
    match e {
        AllocError::Field(f) => f,
        AllocError::Exhausted { what, .. } => panic!("exhausted {what}, not a field error"),
    }
}

#[test]
fn a_range_is_used_up_without_repeats_then_refused() {
    // A /29 has 8 addresses: network, broadcast and the first host are never handed
    // out, so 5 services fit; 3 nodePorts.
    let (alloc, mut taken) = (small(), Taken::of(&State::default()));
    let mut ips = BTreeSet::new();
    for i in 0..3 {
        let mut s = svc(TYPE_NODE_PORT, None, None);
        allocate(&taken, &mut s, None, &alloc).unwrap_or_else(|_| panic!("service {i}"));
        assert!(ips.insert(cluster_ip(&s).unwrap()));
        taken.hold(&s);
    }
    let mut s = svc(TYPE_NODE_PORT, None, None);
    assert!(matches!(
        allocate(&taken, &mut s, None, &alloc),
        Err(AllocError::Exhausted {
            what: "nodePort",
            ..
        })
    ));
    for _ in 0..2 {
        let mut s = svc("ClusterIP", None, None);
        allocate(&taken, &mut s, None, &alloc).unwrap();
        assert!(ips.insert(cluster_ip(&s).unwrap()));
        taken.hold(&s);
    }
    let mut s = svc("ClusterIP", None, None);
    assert!(matches!(
        allocate(&taken, &mut s, None, &alloc),
        Err(AllocError::Exhausted {
            what: "ClusterIP",
            ..
        })
    ));
    let hosts: BTreeSet<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 96, 0, i)).collect();
    assert_eq!(ips, hosts);
}

#[test]
fn requested_values_are_checked_against_range_and_use() {
    let (alloc, mut taken) = (Allocation::default(), Taken::of(&State::default()));
    let mut a = svc(TYPE_NODE_PORT, Some("10.96.0.50"), Some(30080));
    allocate(&taken, &mut a, None, &alloc).unwrap();
    taken.hold(&a);
    let refused = |ip: &str, np: i32| {
        let mut s = svc(TYPE_NODE_PORT, Some(ip), Some(np));
        field(allocate(&taken, &mut s, None, &alloc).unwrap_err()).to_string()
    };
    assert!(refused("10.96.0.50", 30081).contains("provided IP is already allocated"));
    assert!(refused("8.8.8.8", 30081).contains("not in the valid range"));
    assert!(refused("10.96.0.51", 30080).contains("provided port is already allocated"));
    assert!(refused("10.96.0.51", 80).contains("The range of valid ports is 30000-32767"));
    // A re-apply keeps both; a changed clusterIP is refused.
    let mut again = svc(TYPE_NODE_PORT, None, None);
    taken.release(&a);
    allocate(&taken, &mut again, Some(&a), &alloc).unwrap();
    assert_eq!(cluster_ip(&again), cluster_ip(&a));
    assert_eq!(
        again.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        Some(30080)
    );
    let mut moved = svc(TYPE_NODE_PORT, Some("10.96.0.51"), None);
    let e = field(allocate(&taken, &mut moved, Some(&a), &alloc).unwrap_err());
    assert!(e.to_string().contains("may not change once set"), "{e}");
}

#[test]
fn load_balancer_addresses_come_from_the_pools_and_go_with_the_type() {
    let mut state = State::default();
    let key = |n: &str| ObjectKey::new("default", n);
    let mut lb = svc(TYPE_LOAD_BALANCER, Some("10.96.0.9"), Some(30001));
    state.services.insert(key("a"), Box::new(lb.clone()));
    lb.spec.as_mut().unwrap().load_balancer_ip = Some("192.168.1.242".into());
    state.services.insert(key("b"), Box::new(lb));
    let pools = [Cidr::parse("192.168.1.240/30").unwrap()];
    let assigned = assign_load_balancer_ips(&mut state, &pools);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // b asked for .242; a gets the first free usable address (.241).
    assert_eq!(
        assigned,
        vec![
            (key("a"), ip("192.168.1.241")),
            (key("b"), ip("192.168.1.242"))
        ]
    );
    assert!(assign_load_balancer_ips(&mut state, &pools).is_empty());
    // No longer a LoadBalancer: the address goes.
    state
        .services
        .get_mut(&key("a"))
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .type_ = Some("ClusterIP".into());
    assign_load_balancer_ips(&mut state, &pools);
    assert!(lb_ingress_ips(&state.services[&key("a")]).is_empty());
}

#[test]
fn a_load_balancer_without_node_ports_gets_none() {
    let (alloc, taken) = (Allocation::default(), Taken::of(&State::default()));
    let mut lb = svc(TYPE_LOAD_BALANCER, None, None);
    lb.spec.as_mut().unwrap().allocate_load_balancer_node_ports = Some(false);
    allocate(&taken, &mut lb, None, &alloc).unwrap();
    assert_eq!(
        lb.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        None
    );
    let mut lb = svc(TYPE_LOAD_BALANCER, None, None);
    allocate(&taken, &mut lb, None, &alloc).unwrap();
    assert!(
        lb.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .is_some()
    );
}

#[test]
fn random_cluster_ips_leave_the_low_band_to_addresses_asked_for() {
    // A /24: the low band is its first 16 addresses (KEP-3070's minimum); random
    // picks take the 239 above it first (the broadcast address never), then the band.
    let alloc = Allocation {
        service_cidrs: parse_service_cidrs("10.96.0.0/24").unwrap(),
        node_ports: 30000..=32767,
    };
    let mut taken = Taken::of(&State::default());
    let low = |ip: Ipv4Addr| ip.octets()[3] < 16;
    for i in 0..239 {
        let mut s = svc("ClusterIP", None, None);
        allocate(&taken, &mut s, None, &alloc).unwrap();
        let ip = cluster_ip(&s).unwrap();
        assert!(!low(ip), "pick {i}: {ip} is in the low band");
        taken.hold(&s);
    }
    let mut s = svc("ClusterIP", None, None);
    allocate(&taken, &mut s, None, &alloc).unwrap();
    assert!(low(cluster_ip(&s).unwrap()));
    // An address asked for in the band is given.
    let mut dns = svc("ClusterIP", Some("10.96.0.10"), None);
    allocate(&taken, &mut dns, None, &alloc).unwrap();
}

fn dual_stack() -> Allocation {
    Allocation {
        service_cidrs: parse_service_cidrs("10.96.0.0/24,fd00:10:96::/120").unwrap(),
        node_ports: 30000..=32767,
    }
}

fn with_families(policy: Option<&str>, families: &[&str], ips: &[&str]) -> Service {
    let mut s = svc("ClusterIP", None, None);
    let spec = s.spec.as_mut().unwrap();
    spec.ip_family_policy = policy.map(Into::into);
    spec.ip_families =
        (!families.is_empty()).then(|| families.iter().map(|f| f.to_string()).collect());
    if !ips.is_empty() {
        spec.cluster_ip = Some(ips[0].into());
        spec.cluster_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
    }
    s
}

fn families_and_ips(s: &Service) -> (Vec<String>, Vec<IpAddr>, String) {
    let spec = s.spec.as_ref().unwrap();
    (
        spec.ip_families.clone().unwrap(),
        cluster_ips(s),
        spec.ip_family_policy.clone().unwrap(),
    )
}

#[test]
fn a_dual_stack_cluster_gives_each_family_its_address_as_the_policy_asks() {
    let alloc = dual_stack();
    let taken = Taken::of(&State::default());
    let v4 = |ip: &IpAddr| alloc.service_cidrs[0].contains(*ip);
    let v6 = |ip: &IpAddr| alloc.service_cidrs[1].contains(*ip);
    // No policy: SingleStack, the primary family.
    let mut s = with_families(None, &[], &[]);
    allocate(&taken, &mut s, None, &alloc).unwrap();
    let (fams, ips, policy) = families_and_ips(&s);
    assert_eq!(
        (fams, policy.as_str()),
        (vec!["IPv4".to_string()], "SingleStack")
    );
    assert!(ips.len() == 1 && v4(&ips[0]), "{ips:?}");
    // PreferDualStack and RequireDualStack: both, the primary first.
    for policy in ["PreferDualStack", "RequireDualStack"] {
        let mut s = with_families(Some(policy), &[], &[]);
        allocate(&taken, &mut s, None, &alloc).unwrap();
        let (fams, ips, _) = families_and_ips(&s);
        assert_eq!(fams, ["IPv4", "IPv6"]);
        assert!(v4(&ips[0]) && v6(&ips[1]), "{ips:?}");
        assert_eq!(
            s.spec.as_ref().unwrap().cluster_ip,
            Some(ips[0].to_string())
        );
    }
    // IPv6 first, asked by family or by address.
    let mut s = with_families(Some("PreferDualStack"), &["IPv6"], &[]);
    allocate(&taken, &mut s, None, &alloc).unwrap();
    let (fams, ips, _) = families_and_ips(&s);
    assert_eq!(fams, ["IPv6", "IPv4"]);
    assert!(v6(&ips[0]) && v4(&ips[1]), "{ips:?}");
    let mut s = with_families(None, &[], &["fd00:10:96::10"]);
    allocate(&taken, &mut s, None, &alloc).unwrap();
    assert_eq!(families_and_ips(&s).0, ["IPv6"]);
    // An address outside its family's range is refused, naming the range.
    let mut s = with_families(None, &[], &["fd00:10:97::10"]);
    let e = field(allocate(&taken, &mut s, None, &alloc).unwrap_err());
    assert!(e.to_string().contains("fd00:10:96::/120"), "{e}");
}

#[test]
fn a_single_stack_cluster_refuses_the_family_it_does_not_serve() {
    let alloc = Allocation::default();
    let taken = Taken::of(&State::default());
    let refused =
        |s: &mut Service| field(allocate(&taken, s, None, &alloc).unwrap_err()).to_string();
    let e = refused(&mut with_families(Some("RequireDualStack"), &[], &[]));
    assert!(
        e.contains("spec.ipFamilyPolicy") && e.contains("not configured for dual-stack"),
        "{e}"
    );
    let e = refused(&mut with_families(None, &["IPv6"], &[]));
    assert!(e.contains("spec.ipFamilies[0]"), "{e}");
    let e = refused(&mut with_families(None, &[], &["2001::1"]));
    assert!(
        e.contains("spec.clusterIPs[0]") && e.contains("IPv6 is not configured"),
        "{e}"
    );
    // PreferDualStack takes what there is.
    let mut s = with_families(Some("PreferDualStack"), &[], &[]);
    allocate(&taken, &mut s, None, &alloc).unwrap();
    assert_eq!(families_and_ips(&s).0, ["IPv4"]);
}

#[test]
fn ipv6_cluster_ips_are_taken_through_the_index_and_a_range_is_used_up() {
    // fd00::/125: 8 addresses, of which 5 are given (not the network, the first
    // host or the last).
    let alloc = Allocation {
        service_cidrs: parse_service_cidrs("fd00::/125").unwrap(),
        node_ports: 30000..=32767,
    };
    let mut taken = Taken::from_rows([], &alloc);
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let mut s = svc("ClusterIP", None, None);
        allocate(&taken, &mut s, None, &alloc).unwrap();
        let ips = cluster_ips(&s);
        assert!(ips[0].is_ipv6() && seen.insert(ips[0]), "{ips:?}");
        // The store's index holds it as the next write reads it.
        taken = Taken::from_rows(
            seen.iter().flat_map(|ip| {
                let mut s = svc("ClusterIP", Some(&ip.to_string()), None);
                s.spec.as_mut().unwrap().cluster_ips = Some(vec![ip.to_string()]);
                Taken::rows_of(&s)
            }),
            &alloc,
        );
    }
    let mut s = svc("ClusterIP", None, None);
    assert!(matches!(
        allocate(&taken, &mut s, None, &alloc),
        Err(AllocError::Exhausted { .. })
    ));
}

#[test]
fn an_upgrade_adds_the_second_family_and_a_downgrade_releases_it() {
    let alloc = dual_stack();
    let mut taken = Taken::of(&State::default());
    let mut single = with_families(None, &[], &[]);
    allocate(&taken, &mut single, None, &alloc).unwrap();
    let primary = cluster_ips(&single)[0];
    // Upgrade: a manifest that names no clusterIP keeps the primary.
    let mut dual = with_families(Some("RequireDualStack"), &[], &[]);
    allocate(&taken, &mut dual, Some(&single), &alloc).unwrap();
    let ips = cluster_ips(&dual);
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0], primary);
    taken.hold(&dual);
    assert!(taken.ips.contains(&ips[1]));
    // Downgrade: SingleStack with the stored values keeps the primary alone.
    taken.release(&dual);
    let mut down = dual.clone();
    down.spec.as_mut().unwrap().ip_family_policy = Some("SingleStack".into());
    allocate(&taken, &mut down, Some(&dual), &alloc).unwrap();
    assert_eq!(cluster_ips(&down), [primary]);
    assert_eq!(families_and_ips(&down).0, ["IPv4"]);
    taken.hold(&down);
    assert!(!taken.ips.contains(&ips[1]));
    // Dropping the secondary without SingleStack is refused.
    let mut bad = dual.clone();
    bad.spec.as_mut().unwrap().cluster_ips = Some(vec![primary.to_string()]);
    let e = field(allocate(&taken, &mut bad, Some(&dual), &alloc).unwrap_err()).to_string();
    assert!(
        e.contains("must be 'SingleStack' to release the secondary cluster IP"),
        "{e}"
    );
}
