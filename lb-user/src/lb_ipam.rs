//! LoadBalancer addresses from pools, as MetalLB's and Cilium's LB IPAM give them:
//! which services get which address of `--lb-pool`, and which lose theirs. Pure: it
//! reads services and returns the changes; the embedded store writes them into its
//! objects, Kubernetes mode through the status subresource.
//!
//! - A service is lb's when it is of type LoadBalancer and its `loadBalancerClass`
//!   is unset or [`CLASS`]; services of another class are another controller's and
//!   are neither given nor stripped of anything.
//! - `spec.loadBalancerIP` asks for one address: given when it is in a pool and free
//!   (or shareable), else the service stays pending, as MetalLB does.
//! - Services with the same [`SHARING_KEY`] annotation share one address when no two
//!   of them use the same port and protocol (MetalLB's `allow-shared-ip`, Cilium's
//!   `sharing-key`); others never share.
//! - A service that is no longer a LoadBalancer loses an address of the pools.
//! - Services are served in key order, so every agent plans the same.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::Service;

use crate::model::{ObjectKey, TYPE_LOAD_BALANCER, service_type};

/// The `loadBalancerClass` lb serves (besides services with none).
pub const CLASS: &str = "lb.io/l2";
/// Services with the same value of this annotation may share an address.
pub const SHARING_KEY: &str = "lb.io/sharing-key";

/// One change to a service's `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub service: ObjectKey,
    /// The address it gets; None: it loses the one it has.
    pub ip: Option<Ipv4Addr>,
}

/// `status.loadBalancer.ingress` addresses.
pub fn ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|l| l.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// Whether lb gives `svc` an address: a LoadBalancer of no class or of [`CLASS`].
pub fn is_ours(svc: &Service) -> bool {
    service_type(svc) == TYPE_LOAD_BALANCER
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none_or(|c| c == CLASS)
}

/// Every usable address of the pools, in order (a pool's network and broadcast
/// addresses are skipped unless it is a /31 or /32).
pub fn pool_addrs(pools: &[(Ipv4Addr, u8)]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    pools.iter().flat_map(|(net, len)| {
        let host_bits = 32 - u32::from(*len).min(32);
        let size = 1u64 << host_bits;
        let base = u64::from(u32::from(*net) & !((size - 1) as u32));
        let (lo, hi) = if size <= 2 { (0, size) } else { (1, size - 1) };
        (lo..hi).map(move |i| Ipv4Addr::from((base + i) as u32))
    })
}

/// Whether `ip` is a usable address of one of the pools.
pub fn in_pools(pools: &[(Ipv4Addr, u8)], ip: Ipv4Addr) -> bool {
    pools.iter().any(|(net, len)| {
        let host_bits = 32 - u32::from(*len).min(32);
        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
        let (ip, base) = (u32::from(ip), u32::from(*net) & mask);
        let edge = host_bits >= 2 && (ip == base || ip == base | !mask);
        ip & mask == base && !edge
    })
}

fn sharing_key(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(SHARING_KEY)
        .map(String::as_str)
        .filter(|k| !k.is_empty())
}

/// (port, protocol) pairs a service listens on.
fn ports(svc: &Service) -> BTreeSet<(i32, String)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
        .collect()
}

/// Who holds an address: the services, their sharing key (None: not shareable)
/// and the ports they use together.
struct Holders {
    key: Option<String>,
    ports: BTreeSet<(i32, String)>,
}

impl Holders {
    fn admits(&self, svc: &Service) -> bool {
        let theirs = ports(svc);
        self.key.is_some()
            && self.key.as_deref() == sharing_key(svc)
            && self.ports.is_disjoint(&theirs)
    }
}

/// The changes that bring `services`' addresses in line with `pools`.
pub fn plan<'a>(
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a Service)>,
    pools: &[(Ipv4Addr, u8)],
) -> Vec<Assignment> {
    let services: Vec<(&ObjectKey, &Service)> = services.into_iter().collect();
    let mut out = Vec::new();
    // What is held: every service's ingress addresses and externalIPs, except the
    // pools' addresses of services about to lose them.
    let mut held: BTreeMap<Ipv4Addr, Holders> = BTreeMap::new();
    for (key, svc) in &services {
        let externals = svc
            .spec
            .iter()
            .flat_map(|s| s.external_ips.iter().flatten())
            .filter_map(|ip| ip.parse().ok());
        for ip in externals {
            held.insert(
                ip,
                Holders {
                    key: None,
                    ports: BTreeSet::new(),
                },
            );
        }
        // A service no longer a LoadBalancer gives its pool address back (its
        // externalIPs stay taken).
        let ips = ingress_ips(svc);
        if service_type(svc) != TYPE_LOAD_BALANCER && ips.iter().any(|ip| in_pools(pools, *ip)) {
            out.push(Assignment {
                service: (*key).clone(),
                ip: None,
            });
            continue;
        }
        for ip in ips {
            let h = held.entry(ip).or_insert_with(|| Holders {
                key: sharing_key(svc).map(str::to_string),
                ports: BTreeSet::new(),
            });
            if h.key.as_deref() != sharing_key(svc) {
                h.key = None;
            }
            h.ports.extend(ports(svc));
        }
    }
    if pools.is_empty() {
        return out;
    }
    // Addresses before this one are all held (held only grows below).
    let mut free = pool_addrs(pools);
    for (key, svc) in services {
        if !is_ours(svc) || !ingress_ips(svc).is_empty() {
            continue;
        }
        let requested = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|s| !s.is_empty());
        let free_for = |ip: Ipv4Addr, held: &BTreeMap<Ipv4Addr, Holders>| {
            held.get(&ip).is_none_or(|h| h.admits(svc))
        };
        let ip = match requested {
            Some(r) => r
                .parse()
                .ok()
                .filter(|ip| in_pools(pools, *ip) && free_for(*ip, &held)),
            // A sharing partner's address first, then the first free one.
            None => held
                .iter()
                .find(|(ip, h)| in_pools(pools, **ip) && h.admits(svc))
                .map(|(ip, _)| *ip)
                .or_else(|| free.find(|ip| !held.contains_key(ip))),
        };
        let Some(ip) = ip else {
            continue; // stays <pending>
        };
        let h = held.entry(ip).or_insert_with(|| Holders {
            key: sharing_key(svc).map(str::to_string),
            ports: BTreeSet::new(),
        });
        h.ports.extend(ports(svc));
        out.push(Assignment {
            service: key.clone(),
            ip: Some(ip),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::applied;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    const POOL: [(Ipv4Addr, u8); 1] = [(Ipv4Addr::new(192, 168, 1, 240), 29)];

    fn services(yaml: &str) -> BTreeMap<ObjectKey, Service> {
        applied(yaml).services
    }

    fn lb(name: &str, extra: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{extra}spec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports:\n  - {{port: {port}, targetPort: 8080}}\n---\n"
        )
    }

    fn given(out: &[Assignment]) -> Vec<(String, Option<Ipv4Addr>)> {
        out.iter().map(|a| (a.service.name.clone(), a.ip)).collect()
    }

    #[test]
    fn requested_first_free_then_pending_when_the_pool_is_used_up() {
        let mut yaml = lb("a", "", 80);
        yaml += &lb("b", "", 80).replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  loadBalancerIP: 192.168.1.243\n",
        );
        // Outside the pool: pending.
        yaml += &lb("c", "", 80).replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  loadBalancerIP: 192.168.2.1\n",
        );
        for n in 0..6 {
            yaml += &lb(&format!("d{n}"), "", 80);
        }
        let out = plan(&services(&yaml), &POOL);
        // A /29 has 6 usable addresses: .241-.246.
        assert_eq!(
            given(&out),
            vec![
                ("a".into(), Some(ip("192.168.1.241"))),
                ("b".into(), Some(ip("192.168.1.243"))),
                ("d0".into(), Some(ip("192.168.1.242"))),
                ("d1".into(), Some(ip("192.168.1.244"))),
                ("d2".into(), Some(ip("192.168.1.245"))),
                ("d3".into(), Some(ip("192.168.1.246"))),
            ]
        );
    }

    #[test]
    fn an_external_ip_is_never_given_out() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  externalIPs: [192.168.1.241]\n  selector: {app: web}\n  ports:\n  - {port: 80}\n---\n".to_string()
            + &lb("a", "", 80);
        assert_eq!(
            given(&plan(&services(&yaml), &POOL)),
            vec![("a".into(), Some(ip("192.168.1.242")))]
        );
    }

    #[test]
    fn other_classes_are_left_alone_and_ours_is_served() {
        let yaml = lb("mine", "", 80).replace(
            "  type: LoadBalancer\n",
            &format!("  type: LoadBalancer\n  loadBalancerClass: {CLASS}\n"),
        ) + &lb("theirs", "", 80).replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  loadBalancerClass: example.com/lb\n",
        );
        assert_eq!(
            given(&plan(&services(&yaml), &POOL)),
            vec![("mine".into(), Some(ip("192.168.1.241")))]
        );
    }

    #[test]
    fn a_sharing_key_shares_an_address_unless_ports_clash() {
        let shared = format!("  annotations: {{{SHARING_KEY}: web}}\n");
        let yaml = lb("http", &shared, 80)
            + &lb("https", &shared, 443)
            + &lb("clash", &shared, 443)
            + &lb("alone", "", 443);
        assert_eq!(
            given(&plan(&services(&yaml), &POOL)),
            vec![
                ("alone".into(), Some(ip("192.168.1.241"))),
                ("clash".into(), Some(ip("192.168.1.242"))),
                ("http".into(), Some(ip("192.168.1.242"))),
                ("https".into(), Some(ip("192.168.1.243"))),
            ]
        );
    }

    #[test]
    fn an_address_held_is_kept_and_goes_with_the_type() {
        let mut svcs = services(&(lb("a", "", 80) + &lb("b", "", 80)));
        for a in plan(&svcs, &POOL) {
            crate::store::alloc::set_ingress(svcs.get_mut(&a.service).unwrap(), a.ip);
        }
        assert!(plan(&svcs, &POOL).is_empty(), "nothing more to do");
        let a = ObjectKey::new("default", "a");
        svcs.get_mut(&a).unwrap().spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(given(&plan(&svcs, &POOL)), vec![("a".into(), None)]);
        // An address of no pool (another controller's) is not taken away.
        let mut other = svcs[&a].clone();
        crate::store::alloc::set_ingress(&mut other, Some(ip("203.0.113.7")));
        svcs.insert(a, other);
        assert!(plan(&svcs, &POOL).is_empty());
    }
}
