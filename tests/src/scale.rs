//! The same cluster at scale, written four ways for the benchmarks: lb manifests
//! (Services + EndpointSlices, or Services selecting Pods), the iptables rule set
//! kube-proxy's iptables mode writes for it, and the nftables rule set of
//! kube-proxy's nftables mode.
//!
//! Service `i` (0-based) is `default/s{i}`, UDP port 80, cluster IP
//! `10.96.0.0 + 10 + i`, 10 endpoints on port 8080. The last service is the one
//! traffic is sent to: a NodePort (`MEASURED_NODE_PORT`) whose endpoints are
//! `MEASURED_ENDPOINTS` (addresses of one pod, so every choice is delivered); every
//! other service is a ClusterIP with endpoints in 10.100.0.0/14 that no packet
//! reaches. Like Kubernetes (one nodePort range), only one service needs a nodePort.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

pub const ENDPOINTS_PER_SERVICE: usize = 10;
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const MEASURED_NODE_PORT: u16 = 30080;
/// The pod-side addresses behind the measured service (one pod holds them all).
pub fn measured_endpoints() -> Vec<Ipv4Addr> {
    (2..2 + ENDPOINTS_PER_SERVICE as u8)
        .map(|h| Ipv4Addr::new(10, 244, 0, h))
        .collect()
}

/// The ClusterIP of service `i`: above 10.96.0.255, the range's low band that
/// addresses asked for by name keep (the cluster DNS service's 10.96.0.10).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32)
}

/// Endpoint addresses of service `i` of `n`.
pub fn endpoints(i: usize, n: usize) -> Vec<Ipv4Addr> {
    if i + 1 == n {
        return measured_endpoints();
    }
    (0..ENDPOINTS_PER_SERVICE)
        .map(|j| {
            let e = (i * ENDPOINTS_PER_SERVICE + j + 1) as u32;
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + e)
        })
        .collect()
}

fn endpoint_slice(i: usize, addrs: &[Ipv4Addr], generation: u32) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}-1\n  labels: {{kubernetes.io/service-name: s{i}}}\n  annotations: {{lb.bench/generation: \"{generation}\"}}\naddressType: IPv4\nports:\n- {{name: web, port: {TARGET_PORT}, protocol: UDP}}\nendpoints:\n"
    );
    for a in addrs {
        let _ = writeln!(s, "- addresses: [{a}]");
    }
    s.push_str("---\n");
    s
}

/// Service `i` of `n` (`selector`: it selects its pods, `app: s{i}`).
fn service(i: usize, n: usize, selector: bool) -> String {
    let node_port = if i + 1 == n { "type: NodePort\n  " } else { "" };
    let np = if i + 1 == n {
        format!(", nodePort: {MEASURED_NODE_PORT}")
    } else {
        String::new()
    };
    let sel = if selector {
        format!("selector: {{app: s{i}}}\n  ")
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  {node_port}clusterIP: {}\n  {sel}ports:\n  - {{name: web, port: {SERVICE_PORT}, protocol: UDP, targetPort: {TARGET_PORT}{np}}}\n---\n",
        cluster_ip(i)
    )
}

/// The IPv6 twins of [`measured_endpoints`]: `fd00:10:244::2` (the dual-stack
/// pod's address) and on, all on one pod.
pub fn measured_endpoints6() -> Vec<Ipv6Addr> {
    (2..2 + ENDPOINTS_PER_SERVICE as u16)
        .map(|h| Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, h))
        .collect()
}

/// The measured NodePort service in IPv6 alone (`ipFamilies: [IPv6]`) with its
/// IPv6 EndpointSlice of [`measured_endpoints6`], for a dual-stack store.
pub fn lb_manifest6() -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s6\nspec:\n  type: NodePort\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  ports:\n  - {{name: web, port: {SERVICE_PORT}, protocol: UDP, targetPort: {TARGET_PORT}, nodePort: {MEASURED_NODE_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s6-1\n  labels: {{kubernetes.io/service-name: s6}}\naddressType: IPv6\nports:\n- {{name: web, port: {TARGET_PORT}, protocol: UDP}}\nendpoints:\n"
    );
    for a in measured_endpoints6() {
        let _ = writeln!(s, "- addresses: ['{a}']");
    }
    s.push_str("---\n");
    s
}

/// `n` services with their EndpointSlices, as `lb apply -f` reads them.
pub fn lb_manifests(n: usize) -> String {
    let mut s = String::with_capacity(n * 600);
    for i in 0..n {
        s.push_str(&service(i, n, false));
        s.push_str(&endpoint_slice(i, &endpoints(i, n), 0));
    }
    s
}

/// Pod `j` of service `i`: label `app: s{i}`, one address, on node1, ready (no
/// conditions reported).
fn pod(i: usize, j: usize, addr: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: s{i}-{j}\n  labels: {{app: s{i}}}\nspec:\n  nodeName: node1\n  containers: [{{name: c, image: app}}]\nstatus:\n  podIP: {addr}\n---\n"
    )
}

/// [`lb_manifests`] as lb without Kubernetes is mostly used: each service selects
/// its 10 pods (one per endpoint address) instead of listing EndpointSlices.
pub fn lb_pod_manifests(n: usize) -> String {
    let mut s = String::with_capacity(n * 2_000);
    for i in 0..n {
        s.push_str(&service(i, n, true));
        for (j, a) in endpoints(i, n).into_iter().enumerate() {
            s.push_str(&pod(i, j, a));
        }
    }
    s
}

/// One more service (the `n`th, a ClusterIP with 10 endpoints) for a store that
/// holds [`lb_manifests`]`(n)` (`selector`: as [`lb_pod_manifests`], with its pods).
pub fn lb_one_more(n: usize, selector: bool) -> String {
    // As one of the first n - 1 (service n + 1 is not the measured one).
    let mut s = service(n, n + 2, selector);
    let addrs = endpoints(n, n + 2);
    if selector {
        for (j, a) in addrs.into_iter().enumerate() {
            s.push_str(&pod(n, j, a));
        }
    } else {
        s.push_str(&endpoint_slice(n, &addrs, 0));
    }
    s
}

/// One endpoint change of [`lb_pod_manifests`]: service 0's first pod at another
/// address (as its replacement would be), a different one for each `k`.
pub fn lb_pod_change(k: usize) -> String {
    pod(0, 0, changed_endpoint(k))
}

/// One endpoint change of service 0: its first endpoint replaced by another address,
/// a different one for each `k`.
pub fn lb_endpoint_change(n: usize, k: usize) -> String {
    let mut addrs = endpoints(0, n);
    addrs[0] = changed_endpoint(k);
    endpoint_slice(0, &addrs, 2 + k as u32)
}

/// The endpoint the `k`th change puts in place of service 0's first one: another
/// address every time, so each change is a real one and applies after the last.
fn changed_endpoint(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 103, 255, 254 - (k % 200) as u8)
}

/// kube-proxy's chain-name hash (its real names are a base32 SHA-256 prefix; any
/// unique 16 characters behave the same for iptables).
fn chain_id(kind: char, i: usize, j: usize) -> String {
    format!("{kind}{i:09}X{j:06}")
}

fn iptables_service(s: &mut String, i: usize, addrs: &[Ipv4Addr]) {
    let svc = format!("KUBE-SVC-{}", chain_id('S', i, 0));
    let count = addrs.len();
    let _ = writeln!(
        s,
        "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p udp -m comment --comment \"default/s{i}:web cluster IP\" -m udp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ",
        cluster_ip(i)
    );
    for (j, a) in addrs.iter().enumerate() {
        let sep = format!("KUBE-SEP-{}", chain_id('E', i, j));
        if j + 1 < count {
            let _ = writeln!(
                s,
                "-A {svc} -m comment --comment \"default/s{i}:web -> {a}:{TARGET_PORT}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (count - j) as f64
            );
        } else {
            let _ = writeln!(
                s,
                "-A {svc} -m comment --comment \"default/s{i}:web -> {a}:{TARGET_PORT}\" -j {sep}"
            );
        }
        let _ = writeln!(
            s,
            "-A {sep} -s {a}/32 -m comment --comment \"default/s{i}:web\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            s,
            "-A {sep} -p udp -m comment --comment \"default/s{i}:web\" -m udp -j DNAT --to-destination {a}:{TARGET_PORT}"
        );
    }
}

/// The nat table kube-proxy's iptables mode writes for [`lb_manifests`]`(n)`, in
/// `iptables-restore` format (its layout: KUBE-SERVICES matches every cluster IP
/// in turn, then jumps to KUBE-NODEPORTS for local destinations; a KUBE-SVC chain
/// picks an endpoint with `statistic` rules; a KUBE-SEP chain DNATs).
pub fn iptables_rules(n: usize) -> String {
    let mut s = String::with_capacity(n * 2_500);
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for i in 0..n {
        let _ = writeln!(s, ":KUBE-SVC-{} - [0:0]", chain_id('S', i, 0));
        for j in 0..ENDPOINTS_PER_SERVICE {
            let _ = writeln!(s, ":KUBE-SEP-{} - [0:0]", chain_id('E', i, j));
        }
    }
    let m = n - 1;
    let _ = writeln!(s, ":KUBE-EXT-{} - [0:0]", chain_id('S', m, 0));
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p udp -m comment --comment \"default/s{i}:web cluster IP\" -m udp --dport {SERVICE_PORT} -j KUBE-SVC-{}",
            cluster_ip(i),
            chain_id('S', i, 0)
        );
    }
    s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    let ext = format!("KUBE-EXT-{}", chain_id('S', m, 0));
    let _ = writeln!(
        s,
        "-A KUBE-NODEPORTS -p udp -m comment --comment \"default/s{m}:web\" -m udp --dport {MEASURED_NODE_PORT} -j {ext}"
    );
    let _ = writeln!(
        s,
        "-A {ext} -m comment --comment \"masquerade traffic for default/s{m}:web external destinations\" -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(s, "-A {ext} -j KUBE-SVC-{}", chain_id('S', m, 0));
    for i in 0..n {
        iptables_service(&mut s, i, &endpoints(i, n));
    }
    s.push_str("COMMIT\n");
    s
}

/// What kube-proxy's iptables mode restores (`--noflush`) for the `k`th endpoint
/// change of service 0: that service's chains, rewritten.
pub fn iptables_endpoint_change(n: usize, k: usize) -> String {
    let mut addrs = endpoints(0, n);
    addrs[0] = changed_endpoint(k);
    let mut s = String::from("*nat\n");
    let _ = writeln!(s, ":KUBE-SVC-{} - [0:0]", chain_id('S', 0, 0));
    for j in 0..ENDPOINTS_PER_SERVICE {
        let _ = writeln!(s, ":KUBE-SEP-{} - [0:0]", chain_id('E', 0, j));
    }
    iptables_service(&mut s, 0, &addrs);
    s.push_str("COMMIT\n");
    s
}

fn nft_service(s: &mut String, i: usize, addrs: &[Ipv4Addr]) {
    let _ = writeln!(
        s,
        "add chain ip kube-proxy service-s{i}\nadd rule ip kube-proxy service-s{i} ip daddr {} udp dport {SERVICE_PORT} ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        cluster_ip(i)
    );
    let mut vmap = Vec::new();
    for (j, a) in addrs.iter().enumerate() {
        let ep = format!("endpoint-s{i}-{j}");
        let _ = writeln!(
            s,
            "add chain ip kube-proxy {ep}\nadd rule ip kube-proxy {ep} ip saddr {a} jump mark-for-masquerade\nadd rule ip kube-proxy {ep} meta l4proto udp dnat to {a}:{TARGET_PORT}"
        );
        vmap.push(format!("{j} : goto {ep}"));
    }
    let _ = writeln!(
        s,
        "add rule ip kube-proxy service-s{i} numgen random mod {} vmap {{ {} }}",
        addrs.len(),
        vmap.join(", ")
    );
}

/// The table kube-proxy's nftables mode writes for [`lb_manifests`]`(n)`, for
/// `nft -f` (its layout: verdict maps from address . protocol . port to a service
/// chain; `numgen random` picks an endpoint chain, which DNATs).
pub fn nft_rules(n: usize) -> String {
    let mut s = String::with_capacity(n * 2_000);
    s.push_str(
        "add table ip kube-proxy\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add chain ip kube-proxy masquerading { type nat hook postrouting priority srcnat ; }\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy services\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add rule ip kube-proxy nat-output jump services\n",
    );
    for i in 0..n {
        nft_service(&mut s, i, &endpoints(i, n));
    }
    let m = n - 1;
    let _ = writeln!(
        s,
        "add chain ip kube-proxy external-s{m}\nadd rule ip kube-proxy external-s{m} jump mark-for-masquerade\nadd rule ip kube-proxy external-s{m} goto service-s{m}"
    );
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let elems: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "{} . udp . {SERVICE_PORT} : goto service-s{i}",
                    cluster_ip(*i)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "add element ip kube-proxy service-ips {{ {} }}",
            elems.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "add element ip kube-proxy service-nodeports {{ udp . {MEASURED_NODE_PORT} : goto external-s{m} }}"
    );
    s.push_str(
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
    );
    s
}

/// What kube-proxy's nftables mode sends for the `k`th endpoint change of service
/// 0: the new endpoint's chain, the service chain's rules rewritten, and the chain
/// of the endpoint replaced (the first one, or the previous change's) deleted.
pub fn nft_endpoint_change(n: usize, k: usize) -> String {
    let addrs = endpoints(0, n);
    let a = changed_endpoint(k);
    let chain = format!("endpoint-s0-new{k}");
    let replaced = if k == 0 {
        "endpoint-s0-0".to_string()
    } else {
        format!("endpoint-s0-new{}", k - 1)
    };
    let mut s = String::from("flush chain ip kube-proxy service-s0\n");
    let _ = writeln!(
        s,
        "add chain ip kube-proxy {chain}\nadd rule ip kube-proxy {chain} ip saddr {a} jump mark-for-masquerade\nadd rule ip kube-proxy {chain} meta l4proto udp dnat to {a}:{TARGET_PORT}"
    );
    let _ = writeln!(
        s,
        "add rule ip kube-proxy service-s0 ip daddr {} udp dport {SERVICE_PORT} ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        cluster_ip(0)
    );
    let vmap: Vec<String> = (0..addrs.len())
        .map(|j| {
            if j == 0 {
                format!("0 : goto {chain}")
            } else {
                format!("{j} : goto endpoint-s0-{j}")
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "add rule ip kube-proxy service-s0 numgen random mod {} vmap {{ {} }}\ndelete chain ip kube-proxy {replaced}",
        addrs.len(),
        vmap.join(", ")
    );
    s
}
