use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

use super::*;

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
        service_cidr: ("10.96.0.0".parse().unwrap(), 29),
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
    state.services.insert(key("a"), lb.clone());
    lb.spec.as_mut().unwrap().load_balancer_ip = Some("192.168.1.242".into());
    state.services.insert(key("b"), lb);
    let pools = [("192.168.1.240".parse().unwrap(), 30)];
    let assigned = assign_load_balancer_ips(&mut state, &pools);
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
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
        service_cidr: ("10.96.0.0".parse().unwrap(), 24),
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
