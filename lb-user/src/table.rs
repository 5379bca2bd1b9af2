//! kubectl-style output: the same columns, words and spacing as `kubectl get`.

use std::collections::BTreeMap;

use comfy_table::{CellAlignment, ColumnConstraint, Table, presets::NOTHING};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};

use crate::model::{ObjectKey, TYPE_LOAD_BALANCER, TYPE_NODE_PORT, pod_ready, service_type, shown};

/// Columns separated by three spaces, left-aligned, no borders (kubectl's tabwriter).
/// User data in the cells has its control characters escaped (`model::shown`), so
/// a label cannot forge a row.
pub fn render(header: Vec<String>, rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header);
    t.add_rows(rows.into_iter().map(|r| {
        r.into_iter()
            .map(|c| shown(&c, usize::MAX))
            .collect::<Vec<_>>()
    }));
    let n = t.column_count();
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i + 1 == n { 0 } else { 3 }));
        col.set_cell_alignment(CellAlignment::Left);
        col.set_constraint(ColumnConstraint::ContentWidth);
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's `HumanDuration`: 45s, 5m30s, 12m, 3h, 2d5h, 400d, 2y30d.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        let (y, dd) = (d / 365, d % 365);
        if y < 8 && dd != 0 {
            format!("{y}y{dd}d")
        } else {
            format!("{y}y")
        }
    }
}

fn age(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    now: Timestamp,
) -> String {
    match &meta.creation_timestamp {
        Some(t) => human_duration(now.duration_since(t.0).as_secs()),
        None => "<unknown>".into(),
    }
}

/// PORT(S): `80/TCP`, `80:30008/TCP`, comma-separated.
pub fn ports_column(svc: &Service) -> String {
    let ports: Vec<String> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn external_ip(svc: &Service) -> String {
    let spec = svc.spec.as_ref();
    let mut ips: Vec<String> = spec
        .and_then(|s| s.external_ips.clone())
        .unwrap_or_default();
    if service_type(svc) == TYPE_LOAD_BALANCER {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        ips.extend(ingress.into_iter().flatten().filter_map(|i| i.ip.clone()));
        if ips.is_empty() {
            return "<pending>".into();
        }
    }
    if ips.is_empty() {
        "<none>".into()
    } else {
        ips.join(",")
    }
}

fn selector(svc: &Service) -> String {
    key_values(svc.spec.as_ref().and_then(|s| s.selector.as_ref()))
}

/// Labels or a selector as kubectl prints them: `k=v,k2=v2`, or `<none>`.
fn key_values(m: Option<&std::collections::BTreeMap<String, String>>) -> String {
    match m.filter(|m| !m.is_empty()) {
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        None => "<none>".into(),
    }
}

/// The API server's columns of a Service (name, priority: 1 shows with `-o wide`).
pub const SERVICE_COLUMNS: [(&str, u8); 7] = [
    ("Name", 0),
    ("Type", 0),
    ("Cluster-IP", 0),
    ("External-IP", 0),
    ("Port(s)", 0),
    ("Age", 0),
    ("Selector", 1),
];

/// A Service's row, every column of [`SERVICE_COLUMNS`].
pub fn service_cells(svc: &Service, now: Timestamp) -> Vec<String> {
    vec![
        svc.metadata.name.clone().unwrap_or_default(),
        service_type(svc).to_string(),
        svc.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .unwrap_or_else(|| "<none>".into()),
        external_ip(svc),
        ports_column(svc),
        age(&svc.metadata, now),
        selector(svc),
    ]
}

/// `kubectl get svc` (`wide` adds SELECTOR; `all_namespaces` adds NAMESPACE first),
/// and lb's PROGRAMMED column (whether every node's maps hold the service; `refused`:
/// `namespace/name` -> the nodes that left it out) when `wide` or when a listed
/// service is not programmed somewhere.
pub fn services(
    svcs: &[&Service],
    now: Timestamp,
    wide: bool,
    all_namespaces: bool,
    refused: &BTreeMap<String, Vec<String>>,
) -> String {
    let refused_on = |svc: &Service| refused.get(&ObjectKey::of(&svc.metadata).to_string());
    let programmed = wide || svcs.iter().any(|s| refused_on(s).is_some());
    let mut header = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if wide {
        header.push("SELECTOR");
    }
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows = svcs
        .iter()
        .map(|svc| {
            let mut row = service_cells(svc, now);
            if !wide {
                row.truncate(SERVICE_COLUMNS.len() - 1);
            }
            if programmed {
                row.push(match refused_on(svc) {
                    Some(nodes) => format!("No ({})", nodes.join(",")),
                    None => "Yes".into(),
                });
            }
            if all_namespaces {
                row.insert(0, svc.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    if programmed {
        header.push("PROGRAMMED");
    }
    render(header.into_iter().map(String::from).collect(), rows)
}

/// `kubectl get pods` (lb runs no containers: READY is 1/1 for a ready pod).
pub fn pods(pods: &[&Pod], now: Timestamp, wide: bool, all_namespaces: bool) -> String {
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        header.extend(["IP", "NODE"]);
    }
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows = pods
        .iter()
        .map(|pod| {
            let mut row = pod_cells(pod, now);
            row.truncate(if wide { 7 } else { 5 });
            if all_namespaces {
                row.insert(0, pod.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    render(header.into_iter().map(String::from).collect(), rows)
}

/// The API server's columns of a Pod.
pub const POD_COLUMNS: [(&str, u8); 9] = [
    ("Name", 0),
    ("Ready", 0),
    ("Status", 0),
    ("Restarts", 0),
    ("Age", 0),
    ("IP", 1),
    ("Node", 1),
    ("Nominated Node", 1),
    ("Readiness Gates", 1),
];

/// A Pod's row, every column of [`POD_COLUMNS`] (lb runs no containers: READY
/// is 1/1 for a ready pod).
pub fn pod_cells(pod: &Pod, now: Timestamp) -> Vec<String> {
    let status = pod.status.as_ref();
    vec![
        pod.metadata.name.clone().unwrap_or_default(),
        if pod_ready(pod) { "1/1" } else { "0/1" }.into(),
        status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Running".into()),
        "0".into(),
        age(&pod.metadata, now),
        status
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_else(|| "<none>".into()),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "<none>".into()),
        "<none>".into(),
        "<none>".into(),
    ]
}

/// kubectl's EndpointSlice table: `NAME ADDRESSTYPE PORTS ENDPOINTS AGE`, with at
/// most three endpoints shown (`a,b,c + 2 more...`).
pub fn endpoint_slices(slices: &[&EndpointSlice], now: Timestamp, all_namespaces: bool) -> String {
    let mut header = vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows = slices
        .iter()
        .map(|s| {
            let mut row = endpoint_slice_cells(s, now);
            if all_namespaces {
                row.insert(0, s.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    render(header.into_iter().map(String::from).collect(), rows)
}

/// The API server's columns of an EndpointSlice.
pub const ENDPOINT_SLICE_COLUMNS: [(&str, u8); 5] = [
    ("Name", 0),
    ("AddressType", 0),
    ("Ports", 0),
    ("Endpoints", 0),
    ("Age", 0),
];

/// An EndpointSlice's row, every column of [`ENDPOINT_SLICE_COLUMNS`], with at
/// most three endpoints shown (`a,b,c + 2 more...`).
pub fn endpoint_slice_cells(s: &EndpointSlice, now: Timestamp) -> Vec<String> {
    let ports: Vec<String> = s
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.map_or("<unset>".into(), |p| p.to_string()))
        .collect();
    let addrs: Vec<&str> = s
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect();
    let endpoints = match addrs.len() {
        0 => "<none>".to_string(),
        1..=3 => addrs.join(","),
        n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
    };
    vec![
        s.metadata.name.clone().unwrap_or_default(),
        s.address_type.clone(),
        if ports.is_empty() {
            "<unset>".into()
        } else {
            ports.join(",")
        },
        endpoints,
        age(&s.metadata, now),
    ]
}

/// Whether a service is reachable from outside the cluster through node ports.
pub fn has_node_ports(svc: &Service) -> bool {
    matches!(service_type(svc), TYPE_NODE_PORT | TYPE_LOAD_BALANCER)
}

/// One `spec.ports[]` entry of a described service: its endpoints as planned, and
/// (when the node's maps are there) the live counters of its service port and of
/// each slot.
pub struct PortDetail {
    /// Of every family the service has, the primary's first.
    pub endpoints: Vec<(std::net::IpAddr, u16)>,
    /// One per family programmed.
    pub traffic: Vec<(lb_common::Counters, Vec<SlotTraffic>)>,
}

pub struct SlotTraffic {
    pub slot: u32,
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub counters: lb_common::Counters,
}

/// `lb describe svc`: kubectl's fields, each port with its endpoints and traffic;
/// `no_maps` says why there are no counters, `refused` why the node's agent could
/// not program the service.
pub fn describe_service(
    svc: &Service,
    ports: &[PortDetail],
    node: &str,
    no_maps: Option<&str>,
    refused: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| {
        let _ = writeln!(
            out,
            "{:<26}{}",
            format!("{label}:"),
            shown(&value, usize::MAX)
        );
    };
    line(
        &mut out,
        "Name",
        svc.metadata.name.clone().unwrap_or_default(),
    );
    line(
        &mut out,
        "Namespace",
        svc.metadata.namespace.clone().unwrap_or_default(),
    );
    line(&mut out, "Labels", key_values(svc.metadata.labels.as_ref()));
    line(&mut out, "Selector", key_values(spec.selector.as_ref()));
    line(&mut out, "Type", service_type(svc).to_string());
    if let Some(policy) = &spec.ip_family_policy {
        line(&mut out, "IP Family Policy", policy.clone());
    }
    if let Some(families) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        line(&mut out, "IP Families", families.join(","));
    }
    line(
        &mut out,
        "IP",
        spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
    );
    if let Some(ips) = spec.cluster_ips.as_ref().filter(|ips| !ips.is_empty()) {
        line(&mut out, "IPs", ips.join(","));
    }
    for (p, detail) in spec.ports.iter().flatten().zip(ports) {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let label = p.name.clone().unwrap_or_else(|| "<unset>".into());
        line(&mut out, "Port", format!("{label}  {}/{proto}", p.port));
        let target = match &p.target_port {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => p.port.to_string(),
        };
        line(&mut out, "TargetPort", format!("{target}/{proto}"));
        if let Some(np) = p.node_port {
            line(&mut out, "NodePort", format!("{label}  {np}/{proto}"));
        }
        let eps: Vec<String> = detail
            .endpoints
            .iter()
            .map(|(a, p)| std::net::SocketAddr::from((*a, *p)).to_string())
            .collect();
        line(
            &mut out,
            "Endpoints",
            if eps.is_empty() {
                "<none>".into()
            } else {
                eps.join(",")
            },
        );
        for (c, slots) in &detail.traffic {
            line(
                &mut out,
                &format!("Traffic (node {node})"),
                format!("{} packets, {} bytes", c.packets, c.bytes),
            );
            for s in slots {
                let at = std::net::SocketAddr::from((s.addr, s.port)).to_string();
                let _ = writeln!(
                    out,
                    "  slot {:<3} {at:<21} {} packets, {} bytes",
                    s.slot, s.counters.packets, s.counters.bytes
                );
            }
        }
    }
    line(
        &mut out,
        "Session Affinity",
        spec.session_affinity
            .clone()
            .unwrap_or_else(|| "None".into()),
    );
    if let Some(p) = &spec.external_traffic_policy {
        line(&mut out, "External Traffic Policy", p.clone());
    }
    if let Some(why) = no_maps {
        line(&mut out, "Traffic", format!("<{why}>"));
    }
    if let Some(error) = refused {
        line(
            &mut out,
            &format!("Not programmed (node {node})"),
            error.to_string(),
        );
    }
    out
}

/// `lb stats`: every verdict reason with its packets and bytes.
pub fn verdicts(counters: &[lb_common::Counters]) -> String {
    let rows = counters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                lb_common::reason::NAMES[i].to_string(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    render(
        vec!["REASON".into(), "PACKETS".into(), "BYTES".into()],
        rows,
    )
}

/// `lb conntrack`: one row per direction of each flow, as `conntrack -L` lists them,
/// IPv4 flows then IPv6 ones (`[ADDR]:PORT`).
pub fn conntrack(
    v4: &[(lb_common::FlowKey, lb_common::CtValue)],
    v6: &[(lb_common::FlowKey6, lb_common::CtValue6)],
) -> String {
    let to4 = |a: u32| std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(a)));
    let to6 = |a: lb_common::Addr6| std::net::IpAddr::V6(crate::sync::ipv6(a));
    let rows = v4
        .iter()
        .map(|(k, v)| flow_row(k, v, to4))
        .chain(v6.iter().map(|(k, v)| flow_row(k, v, to6)))
        .collect();
    render(
        [
            "PROTO",
            "DIR",
            "SOURCE",
            "DESTINATION",
            "NEW-SOURCE",
            "NEW-DESTINATION",
            "SVC-ID",
            "BACKEND-ID",
            "STATE",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    )
}

/// One conntrack entry as a row of [`conntrack`]; `ip`: its family's addresses.
fn flow_row<A: Copy>(
    k: &lb_common::FlowKeyOf<A>,
    v: &lb_common::CtValueOf<A>,
    ip: impl Fn(A) -> std::net::IpAddr,
) -> Vec<String> {
    use lb_common::{
        CT_DIR_REPLY, CT_F_HAIRPIN, CT_TCP_CLOSING, CT_TCP_SEEN_FIN, CT_TCP_SEEN_REPLY,
        CT_TCP_SEEN_RST, PROTO_TCP,
    };
    let ep =
        |addr: A, port: u16| std::net::SocketAddr::new(ip(addr), u16::from_be(port)).to_string();
    let tcp_open = k.proto == PROTO_TCP && v.tcp_flags & CT_TCP_CLOSING == 0;
    let state: Vec<&str> = [
        (tcp_open && v.tcp_flags & CT_TCP_SEEN_REPLY == 0, "SYN_SENT"),
        (
            tcp_open && v.tcp_flags & CT_TCP_SEEN_REPLY != 0,
            "ESTABLISHED",
        ),
        (v.tcp_flags & CT_TCP_SEEN_FIN != 0, "FIN"),
        (v.tcp_flags & CT_TCP_SEEN_RST != 0, "RST"),
        (v.flags & CT_F_HAIRPIN != 0, "HAIRPIN"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    vec![
        if k.proto == PROTO_TCP { "tcp" } else { "udp" }.to_string(),
        if v.direction == CT_DIR_REPLY {
            "reply"
        } else {
            "original"
        }
        .to_string(),
        ep(k.saddr_be, k.sport_be),
        ep(k.daddr_be, k.dport_be),
        ep(v.nat_saddr_be, v.nat_sport_be),
        ep(v.nat_daddr_be, v.nat_dport_be),
        v.svc_id.to_string(),
        v.backend_id.to_string(),
        if state.is_empty() {
            "-".into()
        } else {
            state.join(",")
        },
    ]
}

/// `lb trace`'s answer, as `kubectl describe` lays out fields.
pub fn trace(p: &crate::trace::Probe, t: &crate::trace::Trace) -> String {
    let proto = crate::plan::proto_name(p.proto);
    let mut out = format!("Packet:       {proto} {} -> {}\n", p.src, p.dst);
    out += &format!(
        "Comes in on:  {} ({})\n",
        t.ingress
            .as_deref()
            .unwrap_or("no route back to the source"),
        t.ingress_role
    );
    let frontend = match (&t.frontend, t.svc_id) {
        (Some(f), Some(id)) => format!(
            "{f}, service port id {id}{}",
            t.service
                .as_deref()
                .map(|s| format!(" ({})", shown(s, 200)))
                .unwrap_or_default()
        ),
        _ => "none".into(),
    };
    out += &format!("Frontend:     {frontend}\n");
    let flow = match t.flow {
        Some(dir) => format!(
            "existing, {dir} direction{}",
            if t.assured { ", answered" } else { "" }
        ),
        None if t.frontend.is_some() => "none: the packet starts one".into(),
        None => "none".into(),
    };
    out += &format!("Flow:         {flow}\n");
    if !t.candidates.is_empty() {
        out += "Backends:\n";
        for c in &t.candidates {
            out += &format!(
                "  {:<22} {:>6.1}%{}\n",
                c.backend,
                c.probability * 100.0,
                if c.remote { "  (another node)" } else { "" }
            );
        }
    }
    if let Some(a) = &t.affinity {
        out += &format!("Affinity:     this client's last flow went to {a}\n");
    }
    if let Some(x) = &t.translated {
        out += &format!("Translated:   {x} (source rewrite: {})\n", t.snat);
    }
    out += &format!("Verdict:      {}\n", t.verdict);
    out += &format!("Leaves by:    {}\n", t.forward);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, want) in [
            (12, "12s"),
            (119, "119s"),
            (330, "5m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (30 * 3600, "30h"),
            (12 * 86_400, "12d"),
            (3 * 86_400 + 5 * 3600, "3d5h"),
            (800 * 86_400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }
}
