//! Maps filled through the agent's own pipeline, for BPF_PROG_RUN tests and the
//! hot-path bench (one way to the entries, no hand-made ids or bitmaps).

/// Writes `plans` into empty maps through the agent's own pipeline (ids, slots
/// and the port bitmap as `entries` gives them): service ids follow the plans'
/// order from 1, backend ids the endpoints' first appearance from 1.
pub fn program(maps: &mut lb_user::maps::Maps, plans: &[lb_user::plan::PortPlan]) {
    use lb_user::entries::{Limits, Programmed, Scope, Update};
    let [frontends, backends, frontends6, backends6] = maps.capacity().expect("map sizes");
    let mut programmed = Programmed::adopt(
        Default::default(),
        Limits {
            frontends,
            backends,
            frontends6,
            backends6,
        },
    );
    let Ok(Update::Writes(ops, left_out)) = programmed.update(Scope::All, plans) else {
        panic!("a full update of {} plans writes", plans.len())
    };
    assert!(
        left_out.is_empty(),
        "the maps hold every plan: {left_out:?}"
    );
    maps.write(&ops).expect("fill maps");
}

/// A plan for `program`: the service port's frontends (key, `SVC_F_*` flags) and
/// its endpoints.
pub fn port_plan(
    name: &str,
    proto: u8,
    frontends: Vec<(lb_user::sync::Frontend, u32)>,
    endpoints: Vec<(std::net::IpAddr, u16)>,
) -> lb_user::plan::PortPlan {
    lb_user::plan::PortPlan {
        service: lb_user::model::ObjectKey::new("default", name),
        port: "80".into(),
        proto,
        frontends,
        endpoints,
        remote: Default::default(),
        affinity_timeout_s: 0,
    }
}
