//! Validation of single objects, with the API server's field paths and messages
//! (`spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive`).

use std::{collections::BTreeSet, fmt, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    CLUSTER_IP_NONE, TYPE_CLUSTER_IP, TYPE_EXTERNAL_NAME, TYPE_LOAD_BALANCER, TYPE_NODE_PORT,
};

/// One invalid field, worded as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid {
        value: String,
        detail: String,
    },
    NotSupported {
        value: String,
        supported: Vec<&'static str>,
    },
    Duplicate {
        value: String,
    },
    Forbidden {
        detail: String,
    },
    TooLong {
        max: usize,
    },
    TooMany {
        max: usize,
    },
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
        }
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value: value.to_string(),
                detail: detail.into(),
            },
        }
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: &str,
        supported: &[&'static str],
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported {
                value: value.to_string(),
                supported: supported.to_vec(),
            },
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Duplicate {
                value: value.to_string(),
            },
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden {
                detail: detail.into(),
            },
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = super::shown(&self.field, super::SHOWN_VALUE);
        let shown = |v: &str| super::shown(v, super::SHOWN_VALUE);
        match &self.kind {
            FieldErrorKind::Required => write!(f, "{field}: Required value"),
            FieldErrorKind::Invalid { value, detail } => {
                write!(f, "{field}: Invalid value: {}: {detail}", shown(value))
            }
            FieldErrorKind::NotSupported { value, supported } => {
                let value = shown(value);
                let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
                write!(
                    f,
                    "{field}: Unsupported value: \"{value}\": supported values: {}",
                    list.join(", ")
                )
            }
            FieldErrorKind::Duplicate { value } => {
                write!(f, "{field}: Duplicate value: {}", shown(value))
            }
            FieldErrorKind::Forbidden { detail } => write!(f, "{field}: Forbidden: {detail}"),
            FieldErrorKind::TooLong { max } => {
                write!(f, "{field}: Too long: may not be more than {max} bytes")
            }
            FieldErrorKind::TooMany { max } => {
                write!(f, "{field}: Too many: must have at most {max} items")
            }
        }
    }
}

const SERVICE_TYPES: &[&str] = &[
    TYPE_CLUSTER_IP,
    TYPE_EXTERNAL_NAME,
    TYPE_LOAD_BALANCER,
    TYPE_NODE_PORT,
];
/// SCTP is valid Kubernetes but lb's data plane does not balance it (and this kernel
/// has no SCTP): refused rather than silently not served.
const PROTOCOLS: &[&str] = &["TCP", "UDP"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];
/// What Kubernetes accepts as a port protocol (Pods and EndpointSlices keep SCTP;
/// a Service asking lb to balance it is refused, see `PROTOCOLS`).
const ALL_PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const RESTART_POLICIES: &[&str] = &["Always", "Never", "OnFailure"];
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const TRAFFIC_DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameNode", "PreferSameZone"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
/// The annotation cloud load balancers read before `spec.loadBalancerSourceRanges`.
pub const ANNOTATION_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
const ANNOTATION_TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// IANA service names, as container port names and named targetPorts must be.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_in_range(field: String, port: i32, errors: &mut Vec<FieldError>) {
    if !(1..=65535).contains(&port) {
        errors.push(FieldError::invalid(
            field,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn validate_meta_name(name: Option<&str>, dns1035: bool, errors: &mut Vec<FieldError>) {
    match name {
        None | Some("") => errors.push(FieldError::required("metadata.name")),
        Some(n) if dns1035 && !is_dns1035_label(n) => errors.push(FieldError::invalid(
            "metadata.name",
            format!("\"{n}\""),
            DNS1035_MSG,
        )),
        Some(n) if !dns1035 && !is_dns1123_subdomain(n) => errors.push(FieldError::invalid(
            "metadata.name",
            format!("\"{n}\""),
            DNS1123_SUBDOMAIN_MSG,
        )),
        _ => {}
    }
}

/// The API server's limit on an object's annotations, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// What is wrong with `key` as a label or annotation key (apimachinery's
/// `IsQualifiedName`): an optional DNS subdomain prefix and '/', then a name.
fn qualified_name_errors(key: &str) -> Vec<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return vec!["prefix part must be non-empty".into()];
            }
            if !is_dns1123_subdomain(prefix) {
                return vec![format!("prefix part {DNS1123_SUBDOMAIN_MSG}")];
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let mut out = Vec::new();
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    }
    if !name.is_empty() && !is_qualified_name_part(name) {
        out.push(format!(
            "name part {QUALIFIED_NAME_MSG} (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}')"
        ));
    }
    out
}

/// `value` at `field` as a qualified name (`IsQualifiedName`: label keys,
/// `loadBalancerClass`, `appProtocol`).
fn validate_qualified_name(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    for msg in qualified_name_errors(value) {
        errors.push(FieldError::invalid(field, format!("\"{value}\""), msg));
    }
}

/// What is wrong with `v` as a label value (empty, or a qualified name part of at
/// most 63 characters).
fn label_value_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        out.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '({QUALIFIED_NAME_FMT})?')"
        ));
    }
    out
}

/// Labels (or a selector) at `field`, as `ValidateLabels` checks them.
fn validate_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    field: &str,
    errors: &mut Vec<FieldError>,
) {
    for (k, v) in labels.into_iter().flatten() {
        validate_qualified_name(field, k, errors);
        for msg in label_value_errors(v) {
            errors.push(FieldError::invalid(field, format!("\"{v}\""), msg));
        }
    }
}

fn validate_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    errors: &mut Vec<FieldError>,
) {
    let mut total = 0;
    for (k, v) in annotations.into_iter().flatten() {
        for msg in qualified_name_errors(&k.to_lowercase()) {
            errors.push(FieldError::invalid(
                "metadata.annotations",
                format!("\"{k}\""),
                msg,
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        errors.push(FieldError {
            field: "metadata.annotations".into(),
            kind: FieldErrorKind::TooLong {
                max: MAX_ANNOTATIONS_BYTES,
            },
        });
    }
}

/// An object's metadata: its name (a DNS-1035 label for a Service, a DNS-1123
/// subdomain otherwise), namespace, labels and annotations.
fn validate_meta(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    dns1035: bool,
    errors: &mut Vec<FieldError>,
) {
    validate_meta_name(meta.name.as_deref(), dns1035, errors);
    if let Some(g) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // The API server checks a prefix as the name it will be, a trailing '-'
        // standing for the random suffix.
        let masked = match g.strip_suffix('-') {
            Some(head) if g.len() > 1 => format!("{}a", &head[..head.len().saturating_sub(1)]),
            _ => g.to_string(),
        };
        let ok = if dns1035 {
            is_dns1035_label(&masked)
        } else {
            is_dns1123_subdomain(&masked)
        };
        if !ok {
            errors.push(FieldError::invalid(
                "metadata.generateName",
                format!("\"{g}\""),
                if dns1035 {
                    DNS1035_MSG
                } else {
                    DNS1123_SUBDOMAIN_MSG
                },
            ));
        }
    }
    validate_namespace(meta.namespace.as_deref(), errors);
    validate_labels(meta.labels.as_ref(), "metadata.labels", errors);
    validate_annotations(meta.annotations.as_ref(), errors);
}

/// The fields only a LoadBalancer service may have, as `ValidateService` checks
/// them (its field paths and words, `spec.LoadBalancerSourceRanges` included).
fn validate_load_balancer_fields(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ty: &str,
    errors: &mut Vec<FieldError>,
) {
    const ONLY_LB: &str = "may only be used when `type` is 'LoadBalancer'";
    let lb = ty == TYPE_LOAD_BALANCER;
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() {
        let field = "spec.LoadBalancerSourceRanges";
        if !lb {
            errors.push(FieldError::forbidden(field, ONLY_LB));
        }
        if !ranges.iter().all(|r| is_cidr(r.trim())) {
            errors.push(FieldError::invalid(
                field,
                format!("[{}]", ranges.join(" ")),
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ",
            ));
        }
    }
    if let Some(class) = spec.load_balancer_class.as_deref() {
        if lb {
            validate_qualified_name("spec.loadBalancerClass", class, errors);
        } else {
            errors.push(FieldError::forbidden("spec.loadBalancerClass", ONLY_LB));
        }
    }
    if spec.allocate_load_balancer_node_ports.is_some() && !lb {
        errors.push(FieldError::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            ONLY_LB,
        ));
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0)
        && !(lb && local)
    {
        errors.push(FieldError::invalid(
            "spec.healthCheckNodePort",
            port,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if let Some(proto) = p.app_protocol.as_deref() {
            validate_qualified_name(&format!("spec.ports[{i}].appProtocol"), proto, errors);
        }
    }
}

/// `ADDRESS/PREFIX`, IPv4 or IPv6.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// `spec.clusterIP` and `spec.clusterIPs` (the v1 pair the API server reconciles:
/// the first of the list is `clusterIP`): at most two, `None` alone, each an IP
/// address, two of different families.
fn validate_cluster_ips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    errors: &mut Vec<FieldError>,
) {
    let single = spec
        .cluster_ip
        .iter()
        .filter(|ip| !ip.is_empty())
        .cloned()
        .collect::<Vec<_>>();
    let ips = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips,
        _ => single.as_slice(),
    };
    if let (Some(ip), Some(first)) = (spec.cluster_ip.as_deref(), ips.first())
        && !ip.is_empty()
        && ip != first
    {
        errors.push(FieldError::invalid(
            "spec.clusterIPs",
            format!("{ips:?}"),
            "element [0] must match clusterIP",
        ));
    }
    if ips.len() > 2 {
        errors.push(FieldError::invalid(
            "spec.clusterIPs",
            format!("{ips:?}"),
            "may only hold up to 2 values",
        ));
    }
    let mut families = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if ip == CLUSTER_IP_NONE {
            if ips.len() > 1 {
                errors.push(FieldError::invalid(
                    field,
                    format!("\"{ip}\""),
                    "must not be 'None' when more than one value is given",
                ));
            }
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(addr) => families.push(addr.is_ipv4()),
            Err(_) => errors.push(FieldError::invalid(
                field,
                format!("\"{ip}\""),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
        }
    }
    if let [a, b] = families.as_slice()
        && a == b
    {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[1]",
            format!("{ips:?}"),
            "may not have the same family as the first value",
        ));
    }
}

/// `spec.ipFamilyPolicy` and `spec.ipFamilies` as values (whether the cluster
/// serves them is the allocator's question).
fn validate_ip_families(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    errors: &mut Vec<FieldError>,
) {
    if let Some(p) = spec.ip_family_policy.as_deref()
        && !IP_FAMILY_POLICIES.contains(&p)
    {
        errors.push(FieldError::not_supported(
            "spec.ipFamilyPolicy",
            p,
            IP_FAMILY_POLICIES,
        ));
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, f) in families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if !IP_FAMILIES.contains(&f.as_str()) {
            errors.push(FieldError::not_supported(field, f, IP_FAMILIES));
        } else if !seen.insert(f.as_str()) {
            errors.push(FieldError::duplicate(field, format!("\"{f}\"")));
        }
    }
    if families.len() > 2 {
        errors.push(FieldError::invalid(
            "spec.ipFamilies",
            format!("{families:?}"),
            "may specify no more than one IP for each IP family, i.e 2 IPs",
        ));
    }
}

/// The service annotations the API server checks: the source-ranges annotation
/// (read when `spec.loadBalancerSourceRanges` is empty) and the two topology
/// annotations, which must agree.
fn validate_service_annotations(svc: &Service, errors: &mut Vec<FieldError>) {
    let annotations = svc.metadata.annotations.as_ref();
    let spec = svc.spec.as_ref();
    let ranges_set = spec
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .is_some_and(|r| !r.is_empty());
    if !ranges_set && let Some(val) = annotations.and_then(|a| a.get(ANNOTATION_SOURCE_RANGES)) {
        let field = format!("metadata.annotations[{ANNOTATION_SOURCE_RANGES}]");
        if spec.and_then(|s| s.type_.as_deref()) != Some(TYPE_LOAD_BALANCER) {
            errors.push(FieldError::forbidden(
                field.clone(),
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let val = val.trim();
        if !val.is_empty() {
            for cidr in val.split(',').map(str::trim) {
                if !is_cidr(cidr) {
                    errors.push(FieldError::invalid(
                        field.clone(),
                        format!("\"{cidr}\""),
                        "must be a comma separated list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ",
                    ));
                }
            }
        }
    }
    if let Some(hints) = annotations.and_then(|a| a.get(ANNOTATION_TOPOLOGY_HINTS))
        && let Some(mode) = annotations.and_then(|a| a.get(ANNOTATION_TOPOLOGY_MODE))
        && hints != mode
    {
        errors.push(FieldError::invalid(
            format!("metadata.annotations[{ANNOTATION_TOPOLOGY_HINTS}]"),
            format!("\"{hints}\""),
            format!("must match annotations[{ANNOTATION_TOPOLOGY_MODE}] when both are specified"),
        ));
    }
}

/// Why `ip` may not be used where traffic is sent to it (the API server's
/// `ValidateNonSpecialIP`), if it may not.
fn special_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("may not be unspecified (0.0.0.0)"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("may not be unspecified (::)"),
        ip if ip.is_loopback() => Some("may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => {
            Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
        }
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xff00 && v6.segments()[0] & 0xf == 2 => {
            Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
        }
        _ => None,
    }
}

/// An address traffic is sent to: an IP address, not a special one.
fn validate_non_special_ip(field: String, ip: &str, errors: &mut Vec<FieldError>) {
    match ip.parse::<IpAddr>() {
        Err(_) => validate_ip(field, ip, errors),
        Ok(addr) => {
            if let Some(why) = special_ip(addr) {
                errors.push(FieldError::invalid(field, format!("\"{ip}\""), why));
            }
        }
    }
}

/// An IP address field (`field`) when set.
fn validate_ip(field: String, ip: &str, errors: &mut Vec<FieldError>) {
    if ip.parse::<std::net::IpAddr>().is_err() {
        errors.push(FieldError::invalid(
            field,
            format!("\"{ip}\""),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

/// A node name field when set (a DNS-1123 subdomain).
fn validate_node_name(field: String, name: &str, errors: &mut Vec<FieldError>) {
    if !is_dns1123_subdomain(name) {
        errors.push(FieldError::invalid(
            field,
            format!("\"{name}\""),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
}

fn validate_namespace(ns: Option<&str>, errors: &mut Vec<FieldError>) {
    if let Some(ns) = ns
        && !is_dns1123_label(ns)
    {
        errors.push(FieldError::invalid(
            "metadata.namespace",
            format!("\"{ns}\""),
            DNS1123_LABEL_MSG,
        ));
    }
}

/// What a manifest can be refused for before it meets the stored object: all of
/// [`validate_service`] but the fields its type does not use, which an update
/// over a stored service clears when they repeat the stored value (the REST
/// strategy's `dropTypeDependentFields`); the store validates the object again as
/// it will be stored.
pub fn validate_service_manifest(svc: &Service) -> Vec<FieldError> {
    let mut svc = svc.clone();
    if let Some(spec) = svc.spec.as_mut() {
        let ty = spec.type_.clone().unwrap_or_default();
        let lb = ty == TYPE_LOAD_BALANCER;
        if ty == TYPE_EXTERNAL_NAME {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
            spec.ip_families = None;
            spec.ip_family_policy = None;
        }
        if ty != TYPE_NODE_PORT && !lb {
            spec.ports
                .iter_mut()
                .flatten()
                .for_each(|p| p.node_port = None);
        }
        if !(lb && spec.external_traffic_policy.as_deref() == Some("Local")) {
            spec.health_check_node_port = None;
        }
        if !lb {
            spec.allocate_load_balancer_node_ports = None;
            spec.load_balancer_class = None;
        }
        if !super::externally_accessible(spec) {
            spec.external_traffic_policy = None;
        }
    }
    validate_service(&svc)
}

/// Everything that can be checked on the service alone (after defaulting). The
/// nodePort range, the service CIDR and values taken by other services are checked by
/// the store, which knows them.
pub fn validate_service(svc: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_meta(&svc.metadata, true, &mut errors);
    let Some(spec) = &svc.spec else {
        errors.push(FieldError::required("spec"));
        return errors;
    };
    validate_labels(spec.selector.as_ref(), "spec.selector", &mut errors);
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        validate_non_special_ip(format!("spec.externalIPs[{i}]"), ip, &mut errors);
    }
    validate_service_annotations(svc, &mut errors);
    if let Some(td) = spec.traffic_distribution.as_deref()
        && !TRAFFIC_DISTRIBUTIONS.contains(&td)
    {
        errors.push(FieldError::not_supported(
            "spec.trafficDistribution",
            td,
            TRAFFIC_DISTRIBUTIONS,
        ));
    }
    validate_ip_families(spec, &mut errors);
    if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|ip| !ip.is_empty()) {
        validate_ip("spec.loadBalancerIP".into(), ip, &mut errors);
    }
    let ty = spec.type_.as_deref().unwrap_or(TYPE_CLUSTER_IP);
    validate_load_balancer_fields(spec, ty, &mut errors);
    if !SERVICE_TYPES.contains(&ty) {
        errors.push(FieldError::not_supported("spec.type", ty, SERVICE_TYPES));
    }
    let headless = spec.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE);
    validate_cluster_ips(spec, &mut errors);
    if ty == TYPE_EXTERNAL_NAME {
        if spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty())
        {
            errors.push(FieldError::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
        for (field, set) in [
            (
                "spec.ipFamilies",
                spec.ip_families.as_ref().is_some_and(|f| !f.is_empty()),
            ),
            ("spec.ipFamilyPolicy", spec.ip_family_policy.is_some()),
        ] {
            if set {
                errors.push(FieldError::forbidden(
                    field,
                    "may not be set for ExternalName services",
                ));
            }
        }
        // The CNAME may end in a dot (fully qualified).
        let name = spec.external_name.as_deref().unwrap_or_default();
        let cname = name.strip_suffix('.').unwrap_or(name);
        if cname.is_empty() {
            errors.push(FieldError::required("spec.externalName"));
        } else if !is_dns1123_subdomain(cname) {
            errors.push(FieldError::invalid(
                "spec.externalName",
                format!("\"{name}\""),
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
    }
    if headless && (ty == TYPE_NODE_PORT || ty == TYPE_LOAD_BALANCER) {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            "\"None\"",
            format!("may not be set to 'None' for {ty} services"),
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && ty != TYPE_EXTERNAL_NAME && !headless {
        errors.push(FieldError::required("spec.ports"));
    }
    let mut names = BTreeSet::new();
    let mut port_protos = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |field: &str| format!("spec.ports[{i}].{field}");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => errors.push(FieldError::required(f("name"))),
            None | Some("") => {}
            Some(name) => {
                if !is_dns1123_label(name) {
                    errors.push(FieldError::invalid(
                        f("name"),
                        format!("\"{name}\""),
                        DNS1123_LABEL_MSG,
                    ));
                }
                if !names.insert(name) {
                    errors.push(FieldError::duplicate(f("name"), format!("\"{name}\"")));
                }
            }
        }
        port_in_range(f("port"), p.port, &mut errors);
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            errors.push(FieldError::not_supported(f("protocol"), proto, PROTOCOLS));
        }
        if !port_protos.insert((p.port, proto)) {
            errors.push(FieldError::duplicate(
                format!("spec.ports[{i}]"),
                format!("{{\"port\":{},\"protocol\":\"{proto}\"}}", p.port),
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(n)) => port_in_range(f("targetPort"), *n, &mut errors),
            Some(IntOrString::String(s)) if !is_port_name(s) => errors.push(FieldError::invalid(
                f("targetPort"),
                format!("\"{s}\""),
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at least one letter, and at most 15 characters",
            )),
            _ => {}
        }
        if let Some(np) = p.node_port {
            if ty != TYPE_NODE_PORT && ty != TYPE_LOAD_BALANCER {
                errors.push(FieldError::forbidden(
                    f("nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !node_ports.insert((np, proto)) {
                errors.push(FieldError::duplicate(f("nodePort"), np));
            }
        }
    }
    if let Some(a) = spec.session_affinity.as_deref() {
        if !AFFINITIES.contains(&a) {
            errors.push(FieldError::not_supported(
                "spec.sessionAffinity",
                a,
                AFFINITIES,
            ));
        }
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        if let Some(t) = timeout {
            if a != "ClientIP" {
                errors.push(FieldError::invalid(
                    "spec.sessionAffinityConfig",
                    "{}",
                    "must not be set when session affinity is None",
                ));
            } else if !(1..=86_400).contains(&t) {
                errors.push(FieldError::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
    }
    for (field, value) in [
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(v) = value
            && !TRAFFIC_POLICIES.contains(&v)
        {
            errors.push(FieldError::not_supported(field, v, TRAFFIC_POLICIES));
        }
    }
    if spec.external_traffic_policy.is_some() && !super::externally_accessible(spec) {
        errors.push(FieldError::invalid(
            "spec.externalTrafficPolicy",
            format!(
                "\"{}\"",
                spec.external_traffic_policy.as_deref().unwrap_or_default()
            ),
            "may only be set for externally-accessible services",
        ));
    }
    errors
}

/// The addresses a pod declares, as the API server's `validatePodIPs` checks them:
/// each a valid IP (`podIP` too), at most one per family, none twice.
fn validate_pod_ips(status: &k8s_openapi::api::core::v1::PodStatus, errors: &mut Vec<FieldError>) {
    const MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
    if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
        && ip.parse::<IpAddr>().is_err()
    {
        errors.push(FieldError::invalid(
            "status.podIP",
            format!("\"{ip}\""),
            MSG,
        ));
    }
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    let mut parsed = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(a) => parsed.push(a),
            Err(_) => errors.push(FieldError::invalid(
                format!("status.podIPs[{i}]"),
                format!("\"{ip}\""),
                MSG,
            )),
        }
    }
    if ips.len() > 1
        && parsed.len() == ips.len()
        && (ips.len() > 2 || parsed[0].is_ipv4() == parsed[1].is_ipv4())
    {
        errors.push(FieldError::invalid(
            "status.podIPs",
            format!("{ips:?}"),
            "may specify no more than one IP for each IP family",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, ip) in ips.iter().enumerate() {
        if !seen.insert(*ip) {
            errors.push(FieldError::duplicate(
                format!("status.podIPs[{i}]"),
                format!("\"{ip}\""),
            ));
        }
    }
}

/// A Pod as the API server checks the fields lb reads or a manifest must have:
/// metadata, containers (name, image, ports), restartPolicy, dnsPolicy, nodeName and
/// the declared address.
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_meta(&pod.metadata, false, &mut errors);
    if let Some(status) = &pod.status {
        validate_pod_ips(status, &mut errors);
    }
    let Some(spec) = &pod.spec else {
        errors.push(FieldError::required("spec.containers"));
        return errors;
    };
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        validate_node_name("spec.nodeName".into(), name, &mut errors);
    }
    if let Some(p) = spec.restart_policy.as_deref()
        && !RESTART_POLICIES.contains(&p)
    {
        errors.push(FieldError::not_supported(
            "spec.restartPolicy",
            p,
            RESTART_POLICIES,
        ));
    }
    if let Some(p) = spec.dns_policy.as_deref()
        && !DNS_POLICIES.contains(&p)
    {
        errors.push(FieldError::not_supported("spec.dnsPolicy", p, DNS_POLICIES));
    }
    if spec.containers.is_empty() {
        errors.push(FieldError::required("spec.containers"));
    }
    let mut container_names = BTreeSet::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        let cf = |field: &str| format!("spec.containers[{ci}].{field}");
        if c.name.is_empty() {
            errors.push(FieldError::required(cf("name")));
        } else if !is_dns1123_label(&c.name) {
            errors.push(FieldError::invalid(
                cf("name"),
                format!("\"{}\"", c.name),
                DNS1123_LABEL_MSG,
            ));
        } else if !container_names.insert(c.name.as_str()) {
            errors.push(FieldError::duplicate(cf("name"), format!("\"{}\"", c.name)));
        }
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            errors.push(FieldError::required(cf("image")));
        }
        let mut names = BTreeSet::new();
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let f = |field: &str| format!("spec.containers[{ci}].ports[{pi}].{field}");
            port_in_range(f("containerPort"), p.container_port, &mut errors);
            if let Some(hp) = p.host_port.filter(|hp| *hp != 0) {
                port_in_range(f("hostPort"), hp, &mut errors);
            }
            if let Some(proto) = p.protocol.as_deref()
                && !ALL_PROTOCOLS.contains(&proto)
            {
                errors.push(FieldError::not_supported(
                    f("protocol"),
                    proto,
                    ALL_PROTOCOLS,
                ));
            }
            if let Some(name) = p.name.as_deref() {
                if !is_port_name(name) {
                    errors.push(FieldError::invalid(f("name"), format!("\"{name}\""), "must be an IANA_SVC_NAME (at most 15 characters, lower case alphanumeric and '-', at least one letter)"));
                } else if !names.insert(name) {
                    errors.push(FieldError::duplicate(f("name"), format!("\"{name}\"")));
                }
            }
        }
    }
    errors
}

/// An EndpointSlice as the API server checks it. lb balances `IPv4` slices; `IPv6`
/// and `FQDN` ones are valid and kept, but serve nothing here (as in an IPv4-only
/// cluster).
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_meta(&slice.metadata, false, &mut errors);
    let ty = slice.address_type.as_str();
    if ty.is_empty() {
        errors.push(FieldError::required("addressType"));
    } else if !["IPv4", "IPv6", "FQDN"].contains(&ty) {
        errors.push(FieldError::not_supported(
            "addressType",
            ty,
            &["FQDN", "IPv4", "IPv6"],
        ));
    }
    if slice.endpoints.len() > 1000 {
        errors.push(FieldError::invalid(
            "endpoints",
            slice.endpoints.len(),
            "must have at most 1000 items",
        ));
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let f = |field: &str| format!("endpoints[{i}].{field}");
        if let Some(name) = ep.node_name.as_deref() {
            validate_node_name(f("nodeName"), name, &mut errors);
        }
        if let Some(host) = ep.hostname.as_deref()
            && !is_dns1123_label(host)
        {
            errors.push(FieldError::invalid(
                f("hostname"),
                format!("\"{host}\""),
                DNS1123_LABEL_MSG,
            ));
        }
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            errors.push(FieldError::invalid(
                f("addresses"),
                ep.addresses.len(),
                "must have at least 1 and at most 100 addresses",
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            match ty {
                "IPv4" | "IPv6" => match a.parse::<IpAddr>() {
                    Ok(addr) if addr.is_ipv4() == (ty == "IPv4") => {
                        validate_non_special_ip(field, a, &mut errors);
                    }
                    _ => errors.push(FieldError::invalid(
                        field,
                        format!("\"{a}\""),
                        format!("must be a valid {ty} address"),
                    )),
                },
                "FQDN" => {
                    let name = a.strip_suffix('.').unwrap_or(a);
                    if !is_dns1123_subdomain(name) {
                        errors.push(FieldError::invalid(
                            field,
                            format!("\"{a}\""),
                            DNS1123_SUBDOMAIN_MSG,
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(zone) = ep.zone.as_deref() {
            for msg in label_value_errors(zone) {
                errors.push(FieldError::invalid(f("zone"), format!("\"{zone}\""), msg));
            }
        }
        if let Some(topology) = &ep.deprecated_topology {
            if topology.len() > 16 {
                errors.push(FieldError {
                    field: f("deprecatedTopology"),
                    kind: FieldErrorKind::TooMany { max: 16 },
                });
            }
            validate_labels(Some(topology), &f("deprecatedTopology"), &mut errors);
        }
        if let Some(hints) = &ep.hints {
            let zones = hints.for_zones.as_deref().unwrap_or_default();
            if zones.len() > 8 {
                errors.push(FieldError {
                    field: f("hints.forZones"),
                    kind: FieldErrorKind::TooMany { max: 8 },
                });
            }
            let mut seen = BTreeSet::new();
            for (z, zone) in zones.iter().enumerate() {
                let field = format!("endpoints[{i}].hints.forZones[{z}].name");
                for msg in label_value_errors(&zone.name) {
                    errors.push(FieldError::invalid(
                        field.clone(),
                        format!("\"{}\"", zone.name),
                        msg,
                    ));
                }
                if !seen.insert(zone.name.as_str()) {
                    errors.push(FieldError::duplicate(field, format!("\"{}\"", zone.name)));
                }
            }
        }
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    if ports.len() > 20_000 {
        errors.push(FieldError {
            field: "ports".into(),
            kind: FieldErrorKind::TooMany { max: 20_000 },
        });
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        if let Some(port) = p.port
            && !(0..=65535).contains(&port)
        {
            errors.push(FieldError::invalid(
                format!("ports[{i}].port"),
                port,
                "must be between 0 and 65535, inclusive",
            ));
        }
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_dns1123_label(name) {
            errors.push(FieldError::invalid(
                format!("ports[{i}].name"),
                format!("\"{name}\""),
                DNS1123_LABEL_MSG,
            ));
        }
        if !names.insert(name) {
            errors.push(FieldError::duplicate(
                format!("ports[{i}].name"),
                format!("\"{name}\""),
            ));
        }
        if let Some(proto) = p.protocol.as_deref()
            && !ALL_PROTOCOLS.contains(&proto)
        {
            errors.push(FieldError::not_supported(
                format!("ports[{i}].protocol"),
                proto,
                ALL_PROTOCOLS,
            ));
        }
        if let Some(proto) = p.app_protocol.as_deref() {
            validate_qualified_name(&format!("ports[{i}].appProtocol"), proto, &mut errors);
        }
    }
    errors
}

/// What an update may not change, beyond what the object alone must be (the API
/// server's `ValidateServiceUpdate`; clusterIP and nodePorts are the allocator's):
/// a LoadBalancer keeps its `loadBalancerClass`.
pub fn validate_service_update(new: &Service, old: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let (ns, os) = (
        new.spec.clone().unwrap_or_default(),
        old.spec.clone().unwrap_or_default(),
    );
    let lb = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
        s.type_.as_deref() == Some(TYPE_LOAD_BALANCER)
    };
    if lb(&ns) && lb(&os) && ns.load_balancer_class != os.load_balancer_class {
        errors.push(FieldError::invalid(
            "spec.loadBalancerClass",
            format!("{:?}", ns.load_balancer_class),
            "may not change once set",
        ));
    }
    let external = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
        s.type_.as_deref() == Some(TYPE_EXTERNAL_NAME)
    };
    let headless = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
        s.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE)
    };
    if !external(&ns) && !external(&os) {
        if !(headless(&ns) && headless(&os)) {
            let ips = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
                s.cluster_ips.clone().unwrap_or_default()
            };
            upgrade_or_downgrade(
                "clusterIPs",
                "clusterIP",
                &ips(&ns),
                &ips(&os),
                &ns,
                &mut errors,
            );
        }
        let families =
            |s: &k8s_openapi::api::core::v1::ServiceSpec| s.ip_families.clone().unwrap_or_default();
        // A headless service may change its families, and one becoming or ceasing
        // to be headless has new ones.
        if !headless(&ns) && !headless(&os) {
            upgrade_or_downgrade(
                "ipFamilies",
                "ipFamily",
                &families(&ns),
                &families(&os),
                &ns,
                &mut errors,
            );
        }
    }
    errors
}

/// The API server's rules for a service's `clusterIPs` or `ipFamilies` across an
/// update: the same count keeps every value; a second may be added or (under
/// `ipFamilyPolicy: SingleStack`) released; the first never changes.
fn upgrade_or_downgrade(
    field: &str,
    what: &str,
    new: &[String],
    old: &[String],
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    errors: &mut Vec<FieldError>,
) {
    let at = |i: usize| format!("spec.{field}[{i}]");
    let changed =
        |i: usize| FieldError::invalid(at(i), format!("{new:?}"), "may not change once set");
    if new.len() == old.len() {
        for (i, (n, o)) in new.iter().zip(old).enumerate() {
            if n != o {
                errors.push(changed(i));
            }
        }
    } else if new.len() < old.len() {
        if new.is_empty() {
            errors.push(FieldError::invalid(
                at(0),
                format!("{new:?}"),
                format!("primary {what} can not be unset"),
            ));
        } else if new[0] != old[0] {
            errors.push(changed(0));
        }
        if new.len() == 1 && spec.ip_family_policy.as_deref() != Some("SingleStack") {
            errors.push(FieldError::invalid(
                at(0),
                format!("{new:?}"),
                format!("`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary {what}"),
            ));
        }
    } else if !old.is_empty() && new[0] != old[0] {
        errors.push(changed(0));
    }
}

/// An EndpointSlice keeps its `addressType`.
pub fn validate_endpoint_slice_update(new: &EndpointSlice, old: &EndpointSlice) -> Vec<FieldError> {
    if new.address_type == old.address_type {
        return Vec::new();
    }
    vec![FieldError::invalid(
        "addressType",
        format!("\"{}\"", new.address_type),
        "field is immutable",
    )]
}
