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
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;

use crate::model::{Cidr, Family, ObjectKey, TYPE_LOAD_BALANCER, cluster_ips, service_type};

/// The `loadBalancerClass` lb serves (besides services with none).
pub const CLASS: &str = "lb.io/l2";
/// Services with the same value of this annotation may share an address.
pub const SHARING_KEY: &str = "lb.io/sharing-key";

/// One change to a service's `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub service: ObjectKey,
    /// Its ingress addresses from now on (none: it has no status).
    pub ips: Vec<IpAddr>,
}

/// `status.loadBalancer.ingress` addresses.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
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

/// Whether `ip` is an address one of the pools gives out.
pub fn in_pools(pools: &[Cidr], ip: IpAddr) -> bool {
    pools.iter().any(|p| p.gives(ip))
}

/// The families a service has addresses in: `spec.ipFamilies`, else its clusterIPs'
/// (IPv4 when it has neither, as a single-stack cluster's services).
fn families(svc: &Service) -> Vec<Family> {
    let named: Vec<Family> = svc
        .spec
        .iter()
        .flat_map(|s| s.ip_families.iter().flatten())
        .filter_map(|f| Family::parse(f))
        .collect();
    if !named.is_empty() {
        return named;
    }
    let of_ips: Vec<Family> = cluster_ips(svc).into_iter().map(Family::of).collect();
    if of_ips.is_empty() {
        vec![Family::V4]
    } else {
        of_ips
    }
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

/// The changes that bring `services`' addresses in line with `pools`: a
/// LoadBalancer of lb's gets one address per family it has (`spec.ipFamilies`)
/// from the pools of that family, as Cilium's LB IPAM gives them; `loadBalancerIP`
/// asks for one address, and only its family is then given one.
pub fn plan<'a>(
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a Service)>,
    pools: &[Cidr],
) -> Vec<Assignment> {
    let services: Vec<(&ObjectKey, &Service)> = services.into_iter().collect();
    let mut out = Vec::new();
    // What is held: every service's ingress addresses and externalIPs, except the
    // pools' addresses of services about to lose them.
    let mut held: BTreeMap<IpAddr, Holders> = BTreeMap::new();
    // Services whose pool addresses of a family they no longer have go.
    let mut kept: BTreeMap<&ObjectKey, Vec<IpAddr>> = BTreeMap::new();
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
        // A service no longer a LoadBalancer gives its pool addresses back (its
        // externalIPs stay taken); one that no longer has a family gives back its
        // pool address of that family.
        let ips = ingress_ips(svc);
        if service_type(svc) != TYPE_LOAD_BALANCER {
            if ips.iter().any(|ip| in_pools(pools, *ip)) {
                out.push(Assignment {
                    service: (*key).clone(),
                    ips: Vec::new(),
                });
            }
            continue;
        }
        let fams = families(svc);
        let keep: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| fams.contains(&Family::of(*ip)) || !in_pools(pools, *ip))
            .collect();
        for ip in &keep {
            let h = held.entry(*ip).or_insert_with(|| Holders {
                key: sharing_key(svc).map(str::to_string),
                ports: BTreeSet::new(),
            });
            if h.key.as_deref() != sharing_key(svc) {
                h.key = None;
            }
            h.ports.extend(ports(svc));
        }
        if keep.len() != ips.len() {
            kept.insert(key, keep);
        }
    }
    if pools.is_empty() {
        return out;
    }
    // Per family, addresses before the next one are all held (held only grows).
    let mut free: BTreeMap<Family, Box<dyn Iterator<Item = IpAddr> + '_>> =
        [Family::V4, Family::V6]
            .into_iter()
            .map(|f| {
                let hosts = pools
                    .iter()
                    .filter(move |p| p.family() == f)
                    .flat_map(Cidr::hosts);
                (f, Box::new(hosts) as Box<dyn Iterator<Item = IpAddr>>)
            })
            .collect();
    for (key, svc) in services {
        if !is_ours(svc) {
            continue;
        }
        // Changed already when it gives a dropped family's address back.
        let (mut ips, changed) = match kept.remove(key) {
            Some(keep) => (keep, true),
            None => (ingress_ips(svc), false),
        };
        let requested: Option<IpAddr> = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok());
        let wanted = families(svc).into_iter().filter(|f| {
            requested.is_none_or(|r| Family::of(r) == *f)
                && !ips.iter().any(|ip| Family::of(*ip) == *f)
                && pools.iter().any(|p| p.family() == *f)
        });
        let mut given = Vec::new();
        for family in wanted.collect::<Vec<_>>() {
            let free_for = |ip: IpAddr, held: &BTreeMap<IpAddr, Holders>| {
                held.get(&ip).is_none_or(|h| h.admits(svc))
            };
            let ip = match requested {
                Some(r) => Some(r).filter(|ip| in_pools(pools, *ip) && free_for(*ip, &held)),
                // A sharing partner's address first, then the first free one.
                None => held
                    .iter()
                    .find(|(ip, h)| {
                        Family::of(**ip) == family && in_pools(pools, **ip) && h.admits(svc)
                    })
                    .map(|(ip, _)| *ip)
                    .or_else(|| free.get_mut(&family)?.find(|ip| !held.contains_key(ip))),
            };
            let Some(ip) = ip else {
                continue; // this family stays <pending>
            };
            let h = held.entry(ip).or_insert_with(|| Holders {
                key: sharing_key(svc).map(str::to_string),
                ports: BTreeSet::new(),
            });
            h.ports.extend(ports(svc));
            given.push(ip);
        }
        if given.is_empty() && !changed {
            continue;
        }
        ips.extend(given);
        out.push(Assignment {
            service: key.clone(),
            ips,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::applied;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool() -> [Cidr; 1] {
        [Cidr::parse("192.168.1.240/29").unwrap()]
    }

    fn services(yaml: &str) -> BTreeMap<ObjectKey, Service> {
        (applied(yaml).services.into_iter())
            .map(|(k, s)| (k, *s))
            .collect()
    }

    fn lb(name: &str, extra: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{extra}spec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports:\n  - {{port: {port}, targetPort: 8080}}\n---\n"
        )
    }

    fn given(out: &[Assignment]) -> Vec<(String, Option<IpAddr>)> {
        out.iter()
            .map(|a| {
                assert!(a.ips.len() <= 1, "{a:?}");
                (a.service.name.clone(), a.ips.first().copied())
            })
            .collect()
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
        let out = plan(&services(&yaml), &pool());
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
            given(&plan(&services(&yaml), &pool())),
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
            given(&plan(&services(&yaml), &pool())),
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
            given(&plan(&services(&yaml), &pool())),
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
        for a in plan(&svcs, &pool()) {
            crate::store::alloc::set_ingress(svcs.get_mut(&a.service).unwrap(), &a.ips);
        }
        assert!(plan(&svcs, &pool()).is_empty(), "nothing more to do");
        let a = ObjectKey::new("default", "a");
        svcs.get_mut(&a).unwrap().spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(given(&plan(&svcs, &pool())), vec![("a".into(), None)]);
        // An address of no pool (another controller's) is not taken away.
        let mut other = svcs[&a].clone();
        crate::store::alloc::set_ingress(&mut other, &[ip("203.0.113.7")]);
        svcs.insert(a, other);
        assert!(plan(&svcs, &pool()).is_empty());
    }

    /// `svcs` with `spec.ipFamilies` of `name` set to `families`.
    fn with_families(svcs: &mut BTreeMap<ObjectKey, Service>, name: &str, families: &[&str]) {
        let spec = svcs
            .get_mut(&ObjectKey::new("default", name))
            .unwrap()
            .spec
            .as_mut()
            .unwrap();
        spec.ip_families = Some(families.iter().map(|f| f.to_string()).collect());
    }

    fn apply(svcs: &mut BTreeMap<ObjectKey, Service>, pools: &[Cidr]) -> Vec<Assignment> {
        let out = plan(&*svcs, pools);
        for a in &out {
            crate::store::alloc::set_ingress(svcs.get_mut(&a.service).unwrap(), &a.ips);
        }
        out
    }

    #[test]
    fn a_service_gets_an_address_per_family_from_the_pools_of_that_family() {
        let v4 = Cidr::parse("192.168.1.240/29").unwrap();
        let v6 = Cidr::parse("fd00:192:168:1::f0/124").unwrap();
        let mut svcs = services(&(lb("dual", "", 80) + &lb("six", "", 80) + &lb("four", "", 80)));
        with_families(&mut svcs, "dual", &["IPv6", "IPv4"]);
        with_families(&mut svcs, "six", &["IPv6"]);
        // Only an IPv4 pool: the dual-stack service gets its IPv4 address, the
        // IPv6-only one stays pending.
        let ips = |svcs: &BTreeMap<ObjectKey, Service>, n: &str| -> Vec<String> {
            ingress_ips(&svcs[&ObjectKey::new("default", n)])
                .iter()
                .map(IpAddr::to_string)
                .collect()
        };
        apply(&mut svcs, &[v4]);
        assert_eq!(ips(&svcs, "dual"), ["192.168.1.241"]);
        assert_eq!(ips(&svcs, "four"), ["192.168.1.242"]);
        assert!(ips(&svcs, "six").is_empty());
        // An IPv6 pool added: the IPv6 addresses come, the IPv4 ones stay.
        apply(&mut svcs, &[v4, v6]);
        assert_eq!(ips(&svcs, "dual"), ["192.168.1.241", "fd00:192:168:1::f1"]);
        assert_eq!(ips(&svcs, "six"), ["fd00:192:168:1::f2"]);
        assert_eq!(ips(&svcs, "four"), ["192.168.1.242"]);
        assert!(plan(&svcs, &[v4, v6]).is_empty(), "nothing more to do");
        // The dual-stack service becomes IPv4-only: its IPv6 pool address goes.
        with_families(&mut svcs, "dual", &["IPv4"]);
        let out = apply(&mut svcs, &[v4, v6]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(ips(&svcs, "dual"), ["192.168.1.241"]);
        // The freed address is given again.
        let mut more = services(&lb("next", "", 80));
        with_families(&mut more, "next", &["IPv6"]);
        svcs.extend(more);
        apply(&mut svcs, &[v4, v6]);
        assert_eq!(ips(&svcs, "next"), ["fd00:192:168:1::f1"]);
    }

    #[test]
    fn load_balancer_ip_asks_for_one_address_in_its_own_family() {
        let pools = [
            Cidr::parse("192.168.1.240/29").unwrap(),
            Cidr::parse("fd00:192:168:1::f0/124").unwrap(),
        ];
        let yaml = lb("asks", "", 80).replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  loadBalancerIP: fd00:192:168:1::f7\n",
        );
        let mut svcs = services(&yaml);
        with_families(&mut svcs, "asks", &["IPv4", "IPv6"]);
        let out = plan(&svcs, &pools);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ips, vec![ip("fd00:192:168:1::f7")]);
    }
}
