//! TestValidateServiceCreate, TestValidateServiceExternalTrafficPolicy and
//! TestValidateServiceUpdate (pkg/apis/core/validation/validation_test.go), row by
//! row in the upstream order, as v1 manifests (see the module's translations).

use serde_json::{Value, json};

use super::{
    Row,
    Want::{self, Accept, Refuse, Skip},
};

const CREATE: &str = "ServiceCreate";
const ETP: &str = "ServiceExternalTrafficPolicy";
const UPDATE: &str = "ServiceUpdate";
const DUAL_OLD: Want =
    Skip("the old object is dual-stack, refused at create by a single-stack cluster");

/// makeValidService, as v1.
fn base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "valid", "namespace": "valid", "labels": {}, "annotations": {}},
        "spec": {
            "selector": {"key": "val"},
            "sessionAffinity": "None",
            "type": "ClusterIP",
            "ports": [{"name": "p", "protocol": "TCP", "port": 8675, "targetPort": 8675}],
            "internalTrafficPolicy": "Cluster"
        }
    })
}

fn svc(tweak: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    tweak(&mut v);
    v
}

fn lb(s: &mut Value) {
    s["spec"]["type"] = json!("LoadBalancer");
    s["spec"]["externalTrafficPolicy"] = json!("Cluster");
    s["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
}

fn node_port(s: &mut Value) {
    s["spec"]["type"] = json!("NodePort");
    s["spec"]["externalTrafficPolicy"] = json!("Cluster");
}

fn push_port(s: &mut Value, port: Value) {
    s["spec"]["ports"].as_array_mut().unwrap().push(port);
}

fn port(name: &str, port: u16, protocol: &str, node_port: Option<u16>, target: u16) -> Value {
    let mut p = json!({"name": name, "port": port, "protocol": protocol, "targetPort": target});
    if let Some(np) = node_port {
        p["nodePort"] = json!(np);
    }
    p
}

fn ips(s: &mut Value, list: &[&str]) {
    s["spec"]["clusterIP"] = json!(list.first().copied().unwrap_or(""));
    s["spec"]["clusterIPs"] = json!(list);
}

fn families(s: &mut Value, policy: Option<&str>, fams: &[&str]) {
    if let Some(p) = policy {
        s["spec"]["ipFamilyPolicy"] = json!(p);
    }
    if !fams.is_empty() {
        s["spec"]["ipFamilies"] = json!(fams);
    }
}

fn ann(s: &mut Value, key: &str, value: &str) {
    s["metadata"]["annotations"][key] = json!(value);
}

const RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
const REQ: Option<&str> = Some("RequireDualStack");
const PREFER: Option<&str> = Some("PreferDualStack");
const SINGLE: Option<&str> = Some("SingleStack");

pub fn rows() -> Vec<Row> {
    let c =
        |name: &str, tweak: fn(&mut Value), want: Want| Row::create(CREATE, name, svc(tweak), want);
    let mut rows = vec![
        c(
            "missing namespace",
            |s| s["metadata"]["namespace"] = json!(""),
            Accept,
        ), // kubectl/v1: "" is the default namespace
        c(
            "invalid namespace",
            |s| s["metadata"]["namespace"] = json!("-123"),
            Refuse("metadata.namespace"),
        ),
        c(
            "missing name",
            |s| s["metadata"]["name"] = json!(""),
            Refuse("metadata.name"),
        ),
        c(
            "invalid name",
            |s| s["metadata"]["name"] = json!("-123"),
            Refuse("metadata.name"),
        ),
        c(
            "too long name",
            |s| s["metadata"]["name"] = json!("a".repeat(64)),
            Refuse("metadata.name"),
        ),
        c(
            "invalid generateName",
            |s| s["metadata"]["generateName"] = json!("-123"),
            Refuse("metadata.generateName"),
        ),
        c(
            "too long generateName",
            |s| s["metadata"]["generateName"] = json!("a".repeat(64)),
            Refuse("metadata.generateName"),
        ),
        c(
            "invalid label",
            |s| s["metadata"]["labels"]["NoUppercaseOrSpecialCharsLike=Equals"] = json!("bar"),
            Refuse("metadata.labels"),
        ),
        c(
            "invalid annotation",
            |s| s["metadata"]["annotations"]["NoSpecialCharsLike=Equals"] = json!("bar"),
            Refuse("metadata.annotations"),
        ),
        c(
            "nil selector",
            |s| s["spec"]["selector"] = Value::Null,
            Accept,
        ),
        c(
            "invalid selector",
            |s| s["spec"]["selector"]["NoSpecialCharsLike=Equals"] = json!("bar"),
            Refuse("spec.selector"),
        ),
        c(
            "missing session affinity",
            |s| s["spec"]["sessionAffinity"] = json!(""),
            Accept,
        ), // v1 default None
        c("missing type", |s| s["spec"]["type"] = json!(""), Accept), // v1 default ClusterIP
        c(
            "missing ports",
            |s| s["spec"]["ports"] = Value::Null,
            Refuse("spec.ports"),
        ),
        c(
            "missing ports but headless",
            |s| {
                s["spec"]["ports"] = Value::Null;
                ips(s, &["None"])
            },
            Accept,
        ),
        c(
            "empty port[0] name",
            |s| s["spec"]["ports"][0]["name"] = json!(""),
            Accept,
        ),
        c(
            "empty port[1] name",
            |s| push_port(s, port("", 12345, "TCP", None, 12345)),
            Refuse("spec.ports[1].name"),
        ),
        c(
            "empty multi-port port[0] name",
            |s| {
                s["spec"]["ports"][0]["name"] = json!("");
                push_port(s, port("p", 12345, "TCP", None, 12345))
            },
            Refuse("spec.ports[0].name"),
        ),
        c(
            "invalid port name",
            |s| s["spec"]["ports"][0]["name"] = json!("INVALID"),
            Refuse("spec.ports[0].name"),
        ),
        c(
            "missing protocol",
            |s| s["spec"]["ports"][0]["protocol"] = json!(""),
            Accept,
        ), // v1 default TCP
        c(
            "invalid protocol",
            |s| s["spec"]["ports"][0]["protocol"] = json!("INVALID"),
            Refuse("spec.ports[0].protocol"),
        ),
        c(
            "invalid cluster ip",
            |s| ips(s, &["invalid"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "missing port",
            |s| s["spec"]["ports"][0]["port"] = json!(0),
            Refuse("spec.ports[0].port"),
        ),
        c(
            "invalid port",
            |s| s["spec"]["ports"][0]["port"] = json!(65536),
            Refuse("spec.ports[0].port"),
        ),
        c(
            "invalid TargetPort int",
            |s| s["spec"]["ports"][0]["targetPort"] = json!(65536),
            Refuse("spec.ports[0].targetPort"),
        ),
        c(
            "valid port headless",
            |s| {
                s["spec"]["ports"][0]["port"] = json!(11722);
                s["spec"]["ports"][0]["targetPort"] = json!(11722);
                ips(s, &["None"])
            },
            Accept,
        ),
        c(
            "invalid port headless 1",
            |s| {
                s["spec"]["ports"][0]["port"] = json!(11722);
                s["spec"]["ports"][0]["targetPort"] = json!(11721);
                ips(s, &["None"])
            },
            Accept,
        ),
        c(
            "invalid port headless 2",
            |s| {
                s["spec"]["ports"][0]["port"] = json!(11722);
                s["spec"]["ports"][0]["targetPort"] = json!("target");
                ips(s, &["None"])
            },
            Accept,
        ),
        c(
            "invalid publicIPs localhost",
            |s| {
                s["spec"]["externalTrafficPolicy"] = json!("Cluster");
                s["spec"]["externalIPs"] = json!(["127.0.0.1"])
            },
            Refuse("spec.externalIPs[0]"),
        ),
        c(
            "invalid publicIPs unspecified",
            |s| {
                s["spec"]["externalTrafficPolicy"] = json!("Cluster");
                s["spec"]["externalIPs"] = json!(["0.0.0.0"])
            },
            Refuse("spec.externalIPs[0]"),
        ),
        c(
            "invalid publicIPs loopback",
            |s| {
                s["spec"]["externalTrafficPolicy"] = json!("Cluster");
                s["spec"]["externalIPs"] = json!(["127.0.0.1"])
            },
            Refuse("spec.externalIPs[0]"),
        ),
        c(
            "invalid publicIPs host",
            |s| {
                s["spec"]["externalTrafficPolicy"] = json!("Cluster");
                s["spec"]["externalIPs"] = json!(["myhost.mydomain"])
            },
            Refuse("spec.externalIPs[0]"),
        ),
        c(
            "valid publicIPs",
            |s| {
                s["spec"]["externalTrafficPolicy"] = json!("Cluster");
                s["spec"]["externalIPs"] = json!(["1.2.3.4"])
            },
            Accept,
        ),
        c(
            "dup port name",
            |s| {
                s["spec"]["ports"][0]["name"] = json!("p");
                push_port(s, port("p", 12345, "TCP", None, 12345))
            },
            Refuse("spec.ports[1].name"),
        ),
        c(
            "valid load balancer protocol UDP 1",
            |s| {
                lb(s);
                s["spec"]["ports"][0]["protocol"] = json!("UDP")
            },
            Accept,
        ),
        c(
            "valid load balancer protocol UDP 2",
            |s| {
                lb(s);
                s["spec"]["ports"][0] = port("q", 12345, "UDP", None, 12345)
            },
            Accept,
        ),
        c(
            "load balancer with mix protocol",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "UDP", None, 12345))
            },
            Accept,
        ),
        c("valid 1", |_| {}, Accept),
        c(
            "valid 2",
            |s| {
                s["spec"]["ports"][0]["protocol"] = json!("UDP");
                s["spec"]["ports"][0]["targetPort"] = json!(12345)
            },
            Accept,
        ),
        c(
            "valid 3",
            |s| s["spec"]["ports"][0]["targetPort"] = json!("http"),
            Accept,
        ),
        c("valid cluster ip - none ", |s| ips(s, &["None"]), Accept),
        c(
            "valid cluster ip - empty",
            |s| s["spec"]["ports"][0]["targetPort"] = json!("http"),
            Accept,
        ),
        c(
            "valid type - clusterIP",
            |s| s["spec"]["type"] = json!("ClusterIP"),
            Accept,
        ),
        c("valid type - loadbalancer", lb, Accept),
        c(
            "valid type - loadbalancer with allocateLoadBalancerNodePorts=false",
            |s| {
                lb(s);
                s["spec"]["allocateLoadBalancerNodePorts"] = json!(false)
            },
            Accept,
        ),
        // v1 defaults allocateLoadBalancerNodePorts to true.
        c(
            "invalid type - missing AllocateLoadBalancerNodePorts for loadbalancer type",
            |s| {
                lb(s);
                s["spec"]["allocateLoadBalancerNodePorts"] = Value::Null
            },
            Accept,
        ),
        c(
            "valid type loadbalancer 2 ports",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "valid external load balancer 2 ports",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "duplicate nodeports",
            |s| {
                node_port(s);
                push_port(s, port("q", 1, "TCP", Some(30001), 1));
                push_port(s, port("r", 2, "TCP", Some(30001), 2))
            },
            Refuse("spec.ports[2].nodePort"),
        ),
        // Validation alone passes; the allocator refuses one nodePort for two service ports.
        c(
            "duplicate nodeports (different protocols)",
            |s| {
                node_port(s);
                push_port(s, port("q", 1, "TCP", Some(30001), 1));
                push_port(s, port("r", 2, "UDP", Some(30001), 2));
                push_port(s, port("s", 3, "SCTP", Some(30001), 3))
            },
            Refuse("spec.ports["),
        ),
        c(
            "invalid duplicate ports (with same protocol)",
            |s| {
                push_port(s, port("q", 12345, "TCP", None, 8080));
                push_port(s, port("r", 12345, "TCP", None, 80))
            },
            Refuse("spec.ports[2]"),
        ),
        c(
            "valid duplicate ports (with different protocols)",
            |s| {
                push_port(s, port("q", 12345, "TCP", None, 8080));
                push_port(s, port("r", 12345, "UDP", None, 80));
                push_port(s, port("s", 12345, "SCTP", None, 8088))
            },
            Accept,
        ),
        c(
            "valid type - cluster",
            |s| s["spec"]["type"] = json!("ClusterIP"),
            Accept,
        ),
        c("valid type - nodeport", node_port, Accept),
        c(
            "valid type - loadbalancer with allocateLoadBalancerNodePorts=true",
            lb,
            Accept,
        ),
        c(
            "valid type loadbalancer 2 ports (2)",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "valid type loadbalancer with NodePort",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "TCP", Some(31234), 12345))
            },
            Accept,
        ),
        c(
            "valid type=NodePort service with NodePort",
            |s| {
                node_port(s);
                push_port(s, port("q", 12345, "TCP", Some(31234), 12345))
            },
            Accept,
        ),
        c(
            "valid type=NodePort service without NodePort",
            |s| {
                node_port(s);
                push_port(s, port("q", 12345, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "valid cluster service without NodePort",
            |s| push_port(s, port("q", 12345, "TCP", None, 12345)),
            Accept,
        ),
        c(
            "invalid cluster service with NodePort",
            |s| push_port(s, port("q", 12345, "TCP", Some(31234), 12345)),
            Refuse("spec.ports[1].nodePort"),
        ),
        c(
            "invalid public service with duplicate NodePort",
            |s| {
                node_port(s);
                push_port(s, port("p1", 1, "TCP", Some(30001), 1));
                push_port(s, port("p2", 2, "TCP", Some(30001), 2))
            },
            Refuse("spec.ports[2].nodePort"),
        ),
        c(
            "valid type=LoadBalancer",
            |s| {
                lb(s);
                push_port(s, port("q", 12345, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "valid port type=LoadBalancer",
            |s| {
                lb(s);
                push_port(s, port("kubelet", 10250, "TCP", None, 12345))
            },
            Accept,
        ),
        c(
            "valid LoadBalancer source range annotation",
            |s| {
                lb(s);
                ann(s, RANGES, "1.2.3.0/24,  5.6.0.0/16")
            },
            Accept,
        ),
        c(
            "valid empty LoadBalancer source range annotation",
            |s| {
                lb(s);
                ann(s, RANGES, "")
            },
            Accept,
        ),
        c(
            "valid whitespace-only LoadBalancer source range annotation",
            |s| {
                lb(s);
                ann(s, RANGES, "  ")
            },
            Accept,
        ),
        c(
            "invalid LoadBalancer source range annotation (hostname)",
            |s| {
                lb(s);
                ann(s, RANGES, "foo.bar")
            },
            Refuse("metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
        ),
        c(
            "invalid LoadBalancer source range annotation (invalid CIDR)",
            |s| {
                lb(s);
                ann(s, RANGES, "1.2.3.4/33")
            },
            Refuse("metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
        ),
        c(
            "invalid LoadBalancer source range annotation for non LoadBalancer type service",
            |s| ann(s, RANGES, "1.2.3.0/24"),
            Refuse("metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
        ),
        c(
            "invalid empty-but-set LoadBalancer source range annotation for non LoadBalancer type service",
            |s| ann(s, RANGES, ""),
            Refuse("metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
        ),
        c(
            "valid LoadBalancer source range",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["1.2.3.0/24", "5.6.0.0/16"])
            },
            Accept,
        ),
        c(
            "valid LoadBalancer source range with whitespace",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["1.2.3.0/24  ", " 5.6.0.0/16"])
            },
            Accept,
        ),
        c(
            "invalid empty LoadBalancer source range",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["   "])
            },
            Refuse("spec.LoadBalancerSourceRanges"),
        ),
        c(
            "invalid LoadBalancer source range (hostname)",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["foo.bar"])
            },
            Refuse("spec.LoadBalancerSourceRanges"),
        ),
        c(
            "invalid LoadBalancer source range (invalid CIDR)",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["1.2.3.4/33"])
            },
            Refuse("spec.LoadBalancerSourceRanges"),
        ),
        c(
            "invalid source range for non LoadBalancer type service",
            |s| s["spec"]["loadBalancerSourceRanges"] = json!(["1.2.3.0/24", "5.6.0.0/16"]),
            Refuse("spec.LoadBalancerSourceRanges"),
        ),
        c(
            "invalid source range annotation ignored with valid source range field",
            |s| {
                lb(s);
                ann(s, RANGES, "foo.bar");
                s["spec"]["loadBalancerSourceRanges"] = json!(["1.2.3.0/24", "5.6.0.0/16"])
            },
            Accept,
        ),
        c(
            "valid ExternalName",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["externalName"] = json!("foo.bar.example.com")
            },
            Accept,
        ),
        c(
            "valid ExternalName (trailing dot)",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["externalName"] = json!("foo.bar.example.com.")
            },
            Accept,
        ),
        c(
            "invalid ExternalName clusterIP (valid IP)",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                ips(s, &["10.96.0.4"]);
                s["spec"]["externalName"] = json!("foo.bar.example.com")
            },
            Refuse("spec.clusterIPs"),
        ),
        c(
            "invalid ExternalName clusterIP (None)",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                ips(s, &["None"]);
                s["spec"]["externalName"] = json!("foo.bar.example.com")
            },
            Refuse("spec.clusterIPs"),
        ),
        c(
            "invalid ExternalName (not a DNS name)",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["externalName"] = json!("-123")
            },
            Refuse("spec.externalName"),
        ),
        c(
            "LoadBalancer type cannot have None ClusterIP",
            |s| {
                ips(s, &["None"]);
                lb(s)
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid node port with clusterIP None",
            |s| {
                node_port(s);
                push_port(s, port("q", 1, "TCP", Some(30001), 1));
                ips(s, &["None"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid externalTraffic field",
            |s| {
                lb(s);
                s["spec"]["externalTrafficPolicy"] = json!("invalid")
            },
            Refuse("spec.externalTrafficPolicy"),
        ),
        c(
            "nil internalTraffic field when feature gate is on",
            |s| s["spec"]["internalTrafficPolicy"] = Value::Null,
            Accept,
        ), // v1 default Cluster
        c(
            "internalTrafficPolicy field nil when type is ExternalName",
            |s| {
                s["spec"]["internalTrafficPolicy"] = Value::Null;
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["externalName"] = json!("foo.bar.com")
            },
            Accept,
        ),
        c(
            "internalTrafficPolicy field is set when type is ExternalName",
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["externalName"] = json!("foo.bar.com")
            },
            Accept,
        ),
        c(
            "invalid internalTraffic field",
            |s| s["spec"]["internalTrafficPolicy"] = json!("invalid"),
            Refuse("spec.internalTrafficPolicy"),
        ),
        c(
            "internalTrafficPolicy field set to Cluster",
            |s| s["spec"]["internalTrafficPolicy"] = json!("Cluster"),
            Accept,
        ),
        c(
            "internalTrafficPolicy field set to Local",
            |s| s["spec"]["internalTrafficPolicy"] = json!("Local"),
            Accept,
        ),
        c(
            "negative healthCheckNodePort field",
            |s| {
                lb(s);
                s["spec"]["externalTrafficPolicy"] = json!("Local");
                s["spec"]["healthCheckNodePort"] = json!(-1)
            },
            Refuse("spec.healthCheckNodePort"),
        ),
        c(
            "negative healthCheckNodePort field (valid 31100)",
            |s| {
                lb(s);
                s["spec"]["externalTrafficPolicy"] = json!("Local");
                s["spec"]["healthCheckNodePort"] = json!(31100)
            },
            Accept,
        ),
        c(
            "invalid timeoutSeconds field",
            |s| {
                s["spec"]["sessionAffinity"] = json!("ClientIP");
                s["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": -1}})
            },
            Refuse("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        ),
        // v1 defaulting drops sessionAffinityConfig when sessionAffinity is None.
        c(
            "sessionAffinityConfig can't be set when session affinity is None",
            |s| {
                lb(s);
                s["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 90}})
            },
            Accept,
        ),
        c(
            "invalid, service with invalid ipFamilies",
            |s| families(s, None, &["not-a-valid-ip-family"]),
            Refuse("spec.ipFamilies[0]"),
        ),
        c(
            "invalid, service with invalid ipFamilies (2nd)",
            |s| families(s, REQ, &["IPv4", "not-a-valid-ip-family"]),
            Refuse("spec.ipFamilies[1]"),
        ),
        // The allocator of a single-stack cluster refuses IPv6 (`not configured on
        // this cluster`); a dual-stack one takes what validation takes.
        c(
            "IPFamilyPolicy(singleStack) is set for two families",
            |s| families(s, SINGLE, &["IPv4", "IPv6"]),
            Refuse("spec.ipFamilyPolicy"),
        ),
        c(
            "valid, IPFamilyPolicy(preferDualStack) is set for two families (note: alloc sets families)",
            |s| families(s, PREFER, &["IPv4", "IPv6"]),
            Refuse("spec.ipFamilies[1]"),
        )
        .dual(Accept),
        c(
            "invalid, service with 2+ ipFamilies",
            |s| families(s, REQ, &["IPv4", "IPv6", "IPv4"]),
            Refuse("spec.ipFamilies"),
        ),
        c(
            "invalid, service with same ip families",
            |s| families(s, REQ, &["IPv6", "IPv6"]),
            Refuse("spec.ipFamilies[1]"),
        ),
        c("valid, nil service ipFamilies", |_| {}, Accept),
        c(
            "valid, service with valid ipFamilies (v4)",
            |s| families(s, None, &["IPv4"]),
            Accept,
        ),
        c(
            "valid, service with valid ipFamilies (v6)",
            |s| families(s, None, &["IPv6"]),
            Refuse("spec.ipFamilies[0]"),
        )
        .dual(Accept),
        c(
            "valid, service with valid ipFamilies(v4,v6)",
            |s| families(s, REQ, &["IPv4", "IPv6"]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, service with valid ipFamilies(v6,v4)",
            |s| families(s, REQ, &["IPv6", "IPv4"]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, service preferred dual stack with single family",
            |s| families(s, PREFER, &["IPv6"]),
            Refuse("spec.ipFamilies[0]"),
        )
        .dual(Accept),
        c(
            "invalid, garbage single ip",
            |s| ips(s, &["garbage-ip"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, garbage ips",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["garbage-ip", "garbage-second-ip"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, garbage first ip",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["garbage-ip", "2001::1"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, garbage second ip",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["2001::1", "garbage-ip"])
            },
            Refuse("spec.clusterIPs[1]"),
        ),
        c(
            "invalid, NONE + IP",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["None", "2001::1"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, IP + NONE",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["2001::1", "None"])
            },
            Refuse("spec.clusterIPs[1]"),
        ),
        c(
            "invalid, EMPTY STRING + IP",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["", "2001::1"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, IP + EMPTY STRING",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["2001::1", ""])
            },
            Refuse("spec.clusterIPs[1]"),
        ),
        c(
            "invalid, same ip family (v6)",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["2001::1", "2001::4"])
            },
            Refuse("spec.clusterIPs[1]"),
        ),
        c(
            "invalid, same ip family (v4)",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["10.96.0.1", "10.96.0.10"])
            },
            Refuse("spec.clusterIPs[1]"),
        ),
        c(
            "invalid, more than two ips",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["10.96.0.1", "2001::1", "10.96.0.10"])
            },
            Refuse("spec.clusterIPs"),
        ),
        c(
            " multi ip, dualstack not set (request for downgrade)",
            |s| {
                families(s, SINGLE, &["IPv4", "IPv6"]);
                ips(s, &["10.96.0.1", "2001::1"])
            },
            Refuse("spec.ipFamilyPolicy"),
        ),
        // A headless service without a selector allocates nothing: any family.
        c(
            "valid, headless-no-selector + multi family + gate off",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["None"]);
                s["spec"]["selector"] = Value::Null
            },
            Accept,
        ),
        c(
            "valid, multi ip, single ipfamilies preferDualStack",
            |s| {
                families(s, PREFER, &["IPv4"]);
                ips(s, &["10.96.0.1", "2001::1"])
            },
            Refuse("spec.clusterIPs[1]"),
        )
        .dual(Accept),
        c(
            "valid, multi ip, single ipfamilies (must match when provided) + requireDualStack",
            |s| {
                families(s, REQ, &["IPv4"]);
                ips(s, &["10.96.0.1", "2001::1"])
            },
            Refuse("spec.clusterIPs[1]"),
        )
        .dual(Accept),
        c(
            "invalid, families don't match (v4=>v6)",
            |s| {
                ips(s, &["10.96.0.1"]);
                families(s, None, &["IPv6"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c(
            "invalid, families don't match (v6=>v4)",
            |s| {
                ips(s, &["2001::1"]);
                families(s, None, &["IPv4"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        c("valid. no field set", |_| {}, Accept),
        c(
            "valid, single ip",
            |s| {
                families(s, SINGLE, &[]);
                ips(s, &["10.96.0.1"])
            },
            Accept,
        ),
        c(
            "valid, single family",
            |s| families(s, SINGLE, &["IPv6"]),
            Refuse("spec.ipFamilies[0]"),
        )
        .dual(Accept),
        c(
            "valid, single ip + single family",
            |s| {
                families(s, SINGLE, &["IPv6"]);
                ips(s, &["2001::1"])
            },
            Refuse("spec.ipFamilies[0]"),
        )
        .dual(Accept),
        c(
            "valid, single ip + single family (dual stack requested)",
            |s| {
                families(s, PREFER, &["IPv6"]);
                ips(s, &["2001::1"])
            },
            Refuse("spec.ipFamilies[0]"),
        )
        .dual(Accept),
        c(
            "valid, single ip, multi ipfamilies",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["10.96.0.1"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, multi ips, multi ipfamilies (4,6)",
            |s| {
                families(s, REQ, &["IPv4", "IPv6"]);
                ips(s, &["10.96.0.1", "2001::1"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, ips, multi ipfamilies (6,4)",
            |s| {
                families(s, REQ, &["IPv6", "IPv4"]);
                ips(s, &["2001::1", "10.96.0.1"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, multi ips (6,4)",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["2001::1", "10.96.0.1"])
            },
            Refuse("spec.clusterIPs[0]"),
        )
        .dual(Accept),
        c(
            "valid, multi ipfamilies (6,4)",
            |s| families(s, REQ, &["IPv6", "IPv4"]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, multi ips (4,6)",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["10.96.0.1", "2001::1"])
            },
            Refuse("spec.clusterIPs[1]"),
        )
        .dual(Accept),
        c(
            "valid,  multi ipfamilies (4,6)",
            |s| families(s, REQ, &["IPv4", "IPv6"]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid, dual stack",
            |s| families(s, REQ, &[]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        c(
            "valid appProtocol",
            |s| s["spec"]["ports"] = json!([{"port": 12345, "targetPort": 12345, "protocol": "TCP", "appProtocol": "HTTP"}]),
            Accept,
        ),
        c(
            "valid custom appProtocol",
            |s| s["spec"]["ports"] = json!([{"port": 12345, "targetPort": 12345, "protocol": "TCP", "appProtocol": "example.com/protocol"}]),
            Accept,
        ),
        c(
            "invalid appProtocol",
            |s| s["spec"]["ports"] = json!([{"port": 12345, "targetPort": 12345, "protocol": "TCP", "appProtocol": "example.com/protocol_with{invalid}[characters]"}]),
            Refuse("spec.ports[0].appProtocol"),
        ),
        c(
            "invalid cluster ip != clusterIP in multi ip service",
            |s| {
                families(s, REQ, &[]);
                ips(s, &["10.96.0.1", "2001::1"]);
                s["spec"]["clusterIP"] = json!("10.96.0.10")
            },
            Refuse("spec.clusterIPs"),
        ),
        c(
            "invalid cluster ip != clusterIP in single ip service",
            |s| {
                ips(s, &["10.96.0.1"]);
                s["spec"]["clusterIP"] = json!("10.96.0.10")
            },
            Refuse("spec.clusterIPs"),
        ),
        c(
            "Use AllocateLoadBalancerNodePorts when type is not LoadBalancer",
            |s| s["spec"]["allocateLoadBalancerNodePorts"] = json!(true),
            Refuse("spec.allocateLoadBalancerNodePorts"),
        ),
        c(
            "valid LoadBalancerClass when type is LoadBalancer",
            |s| {
                lb(s);
                s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")
            },
            Accept,
        ),
        c(
            "invalid LoadBalancerClass",
            |s| {
                lb(s);
                s["spec"]["loadBalancerClass"] = json!("Bad/LoadBalancerClass")
            },
            Refuse("spec.loadBalancerClass"),
        ),
        c(
            "invalid: set LoadBalancerClass when type is not LoadBalancer",
            |s| s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class"),
            Refuse("spec.loadBalancerClass"),
        ),
        c(
            "topology annotations are mismatched",
            |s| {
                ann(s, "service.kubernetes.io/topology-aware-hints", "original");
                ann(s, "service.kubernetes.io/topology-mode", "different")
            },
            Refuse("metadata.annotations[service.kubernetes.io/topology-aware-hints]"),
        ),
        c(
            "valid: trafficDistribution field set to PreferClose",
            |s| s["spec"]["trafficDistribution"] = json!("PreferClose"),
            Accept,
        ),
        c(
            "invalid: trafficDistribution field set to Random",
            |s| s["spec"]["trafficDistribution"] = json!("Random"),
            Refuse("spec.trafficDistribution"),
        ),
    ];

    let e =
        |name: &str, tweak: fn(&mut Value), want: Want| Row::create(ETP, name, svc(tweak), want);
    rows.extend([
        e("valid loadBalancer service with externalTrafficPolicy and healthCheckNodePort set", |s| { lb(s); s["spec"]["externalTrafficPolicy"] = json!("Local"); s["spec"]["healthCheckNodePort"] = json!(32567) }, Accept),
        e("valid nodePort service with externalTrafficPolicy set", |s| { node_port(s); s["spec"]["externalTrafficPolicy"] = json!("Local") }, Accept),
        e("valid clusterIP service with none of externalTrafficPolicy and healthCheckNodePort set", |_| {}, Accept),
        e("cannot set healthCheckNodePort field on loadBalancer service with externalTrafficPolicy!=Local", |s| { lb(s); s["spec"]["healthCheckNodePort"] = json!(32567) }, Refuse("spec.healthCheckNodePort")),
        e("cannot set healthCheckNodePort field on nodePort service", |s| { node_port(s); s["spec"]["externalTrafficPolicy"] = json!("Local"); s["spec"]["healthCheckNodePort"] = json!(32567) }, Refuse("spec.healthCheckNodePort")),
        e("cannot set externalTrafficPolicy or healthCheckNodePort fields on clusterIP service", |s| { s["spec"]["externalTrafficPolicy"] = json!("Local"); s["spec"]["healthCheckNodePort"] = json!(32567) }, Refuse("spec.externalTrafficPolicy")),
        e("cannot set externalTrafficPolicy field on ExternalName service", |s| { s["spec"]["type"] = json!("ExternalName"); s["spec"]["externalName"] = json!("foo.bar.com"); s["spec"]["externalTrafficPolicy"] = json!("Local") }, Refuse("spec.externalTrafficPolicy")),
        // v1 defaults externalTrafficPolicy to Cluster where it applies.
        e("externalTrafficPolicy is required on NodePort service", |s| s["spec"]["type"] = json!("NodePort"), Accept),
        e("externalTrafficPolicy is required on LoadBalancer service", |s| s["spec"]["type"] = json!("LoadBalancer"), Accept),
        e("externalTrafficPolicy is required on ClusterIP service with externalIPs", |s| s["spec"]["externalIPs"] = json!(["1.2.3,4"]), Refuse("spec.externalIPs[0]")),
    ]);

    rows.extend(update_rows());
    rows
}

fn update_rows() -> Vec<Row> {
    let u = |name: &str, old: fn(&mut Value), new: fn(&mut Value), want: Want| {
        Row::update(UPDATE, name, svc(old), svc(new), want)
    };
    let none = |_: &mut Value| {};
    fn en(s: &mut Value) {
        s["spec"]["type"] = json!("ExternalName");
        s["spec"]["externalName"] = json!("foo.example.com");
    }
    let lb_class = |s: &mut Value, class: &str| {
        lb(s);
        s["spec"]["loadBalancerClass"] = json!(class);
    };
    vec![
        u("no change", none, none, Accept),
        Row::update(
            UPDATE,
            "change name",
            base(),
            base(),
            Skip("a manifest with another name is another object, not an update"),
        ),
        Row::update(
            UPDATE,
            "change namespace",
            base(),
            base(),
            Skip("a manifest in another namespace is another object, not an update"),
        ),
        u(
            "change label valid",
            none,
            |s| s["metadata"]["labels"]["key"] = json!("other-value"),
            Accept,
        ),
        u(
            "add label",
            none,
            |s| s["metadata"]["labels"]["key2"] = json!("value2"),
            Accept,
        ),
        u(
            "change cluster IP",
            |s| ips(s, &["10.96.0.4"]),
            |s| ips(s, &["10.96.7.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        // The REST update keeps an allocated clusterIP the manifest leaves out.
        u(
            "remove cluster IP",
            |s| ips(s, &["10.96.0.4"]),
            |s| ips(s, &[]),
            Accept,
        ),
        u(
            "change affinity",
            none,
            |s| {
                s["spec"]["sessionAffinity"] = json!("ClientIP");
                s["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 90}})
            },
            Accept,
        ),
        u(
            "remove affinity",
            none,
            |s| s["spec"]["sessionAffinity"] = json!(""),
            Accept,
        ),
        u("change type", none, lb, Accept),
        u(
            "remove type",
            none,
            |s| s["spec"]["type"] = json!(""),
            Accept,
        ),
        u("change type -> nodeport", none, node_port, Accept),
        u(
            "add loadBalancerSourceRanges",
            lb,
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["10.0.0.0/8"])
            },
            Accept,
        ),
        u(
            "update loadBalancerSourceRanges",
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["10.0.0.0/8"])
            },
            |s| {
                lb(s);
                s["spec"]["loadBalancerSourceRanges"] = json!(["10.100.0.0/16"])
            },
            Accept,
        ),
        u(
            "LoadBalancer type cannot have None ClusterIP",
            none,
            |s| {
                ips(s, &["None"]);
                lb(s)
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "`None` ClusterIP can NOT be changed",
            |s| ips(s, &["None"]),
            |s| ips(s, &["10.96.0.4"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "`None` ClusterIP can NOT be removed",
            |s| ips(s, &["None"]),
            |s| ips(s, &[]),
            Accept,
        ),
        u(
            "ClusterIP can NOT be changed to None",
            |s| ips(s, &["10.96.0.4"]),
            |s| ips(s, &["None"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ClusterIP type cannot change its set ClusterIP",
            |s| ips(s, &["10.96.0.4"]),
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        // An old object "with an empty clusterIP" holds an allocated one: changing it is refused.
        u(
            "Service with ClusterIP type can change its empty ClusterIP",
            none,
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ClusterIP type cannot change its set ClusterIP when changing type to NodePort",
            |s| ips(s, &["10.96.0.4"]),
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ClusterIP type can change its empty ClusterIP when changing type to NodePort",
            none,
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ClusterIP type cannot change its ClusterIP when changing type to LoadBalancer",
            |s| ips(s, &["10.96.0.4"]),
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ClusterIP type can change its empty ClusterIP when changing type to LoadBalancer",
            none,
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type can change its AllocateLoadBalancerNodePorts from true to false",
            lb,
            |s| {
                lb(s);
                s["spec"]["allocateLoadBalancerNodePorts"] = json!(false)
            },
            Accept,
        ),
        u(
            "Service with LoadBalancer type can change its AllocateLoadBalancerNodePorts from false to true",
            |s| {
                lb(s);
                s["spec"]["allocateLoadBalancerNodePorts"] = json!(false)
            },
            lb,
            Accept,
        ),
        u(
            "Service with NodePort type cannot change its set ClusterIP",
            |s| {
                node_port(s);
                ips(s, &["10.96.0.4"])
            },
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with NodePort type can change its empty ClusterIP",
            node_port,
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with NodePort type cannot change its set ClusterIP when changing type to ClusterIP",
            |s| {
                node_port(s);
                ips(s, &["10.96.0.4"])
            },
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with NodePort type can change its empty ClusterIP when changing type to ClusterIP",
            node_port,
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with NodePort type cannot change its set ClusterIP when changing type to LoadBalancer",
            |s| {
                node_port(s);
                ips(s, &["10.96.0.4"])
            },
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with NodePort type can change its empty ClusterIP when changing type to LoadBalancer",
            node_port,
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type cannot change its set ClusterIP",
            |s| {
                lb(s);
                ips(s, &["10.96.0.4"])
            },
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type can change its empty ClusterIP",
            lb,
            |s| {
                lb(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type cannot change its set ClusterIP when changing type to ClusterIP",
            |s| {
                lb(s);
                ips(s, &["10.96.0.4"])
            },
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type can change its empty ClusterIP when changing type to ClusterIP",
            lb,
            |s| ips(s, &["10.96.0.5"]),
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type cannot change its set ClusterIP when changing type to NodePort",
            |s| {
                lb(s);
                ips(s, &["10.96.0.4"])
            },
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with LoadBalancer type can change its empty ClusterIP when changing type to NodePort",
            lb,
            |s| {
                node_port(s);
                ips(s, &["10.96.0.5"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "Service with ExternalName type can change its empty ClusterIP when changing type to ClusterIP",
            en,
            |s| ips(s, &["10.96.0.5"]),
            Accept,
        ),
        Row::update(
            UPDATE,
            "Service with ExternalName type can change its set ClusterIP when changing type to ClusterIP",
            base(),
            base(),
            Skip("the old object (an ExternalName service with a clusterIP) is refused at create"),
        ),
        u(
            "invalid node port with clusterIP None",
            |s| {
                node_port(s);
                push_port(s, port("q", 1, "TCP", Some(30001), 1))
            },
            |s| {
                node_port(s);
                push_port(s, port("q", 1, "TCP", Some(30001), 1));
                ips(s, &["None"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u("convert from ExternalName", en, none, Accept),
        // The update strategy clears what the new type does not use when the manifest kept the stored value.
        u(
            "invalid: convert to ExternalName",
            |s| {
                ips(s, &["10.96.0.10"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                en(s);
                s["spec"]["externalName"] = json!("foo");
                ips(s, &["10.96.0.10"]);
                families(s, SINGLE, &["IPv4"])
            },
            Accept,
        ),
        u(
            "valid: convert to ExternalName",
            |s| {
                ips(s, &["10.96.0.10"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                en(s);
                s["spec"]["externalName"] = json!("foo")
            },
            Accept,
        ),
        u(
            "same ServiceIPFamily",
            |s| families(s, None, &["IPv4"]),
            |s| families(s, None, &["IPv4"]),
            Accept,
        ),
        u(
            "same ServiceIPFamily, change IPFamilyPolicy to singleStack",
            |s| families(s, None, &["IPv4"]),
            |s| families(s, SINGLE, &["IPv4"]),
            Accept,
        ),
        u(
            "same ServiceIPFamily, change IPFamilyPolicy singleStack => requireDualStack",
            |s| families(s, SINGLE, &["IPv4"]),
            |s| families(s, REQ, &["IPv4"]),
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        u(
            "add a new ServiceIPFamily",
            |s| families(s, REQ, &["IPv4"]),
            |s| families(s, REQ, &["IPv4", "IPv6"]),
            DUAL_OLD,
        )
        .dual(Accept),
        u(
            "ExternalName while changing Service IPFamily",
            en,
            en,
            Accept,
        ),
        u(
            "setting ipfamily from nil to v4",
            none,
            |s| {
                s["spec"]["externalName"] = json!("somename");
                families(s, None, &["IPv4"])
            },
            Accept,
        ),
        // The old object got an IPv4 clusterIP, which the update keeps: IPv6 does
        // not match it, on either cluster.
        u(
            "setting ipfamily from nil to v6",
            none,
            |s| {
                s["spec"]["externalName"] = json!("somename");
                families(s, None, &["IPv6"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "change primary ServiceIPFamily",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, None, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, None, &["IPv6"])
            },
            Refuse("spec.clusterIPs[0]"),
        ),
        u(
            "valid: upgrade to dual stack with requiredDualStack",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, REQ, &["IPv4"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        u(
            "valid: upgrade to dual stack with preferDualStack",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, PREFER, &["IPv4"])
            },
            Accept,
        ),
        u(
            "valid: upgrade to dual stack, no specific secondary ip",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        u(
            "valid: upgrade to dual stack, with specific secondary ip",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        u(
            "valid: downgrade from dual to single",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Accept),
        u(
            "valid: change families for a headless service",
            |s| {
                ips(s, &["None"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["None"]);
                families(s, REQ, &["IPv6", "IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Accept),
        u(
            "valid: upgrade a headless service",
            |s| {
                ips(s, &["None"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["None"]);
                families(s, REQ, &["IPv6", "IPv4"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Accept),
        u(
            "valid: downgrade a headless service",
            |s| {
                ips(s, &["None"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["None"]);
                families(s, SINGLE, &["IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Accept),
        u(
            "invalid flip families",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["2001::1", "10.96.0.5"]);
                families(s, REQ, &["IPv6", "IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Refuse("spec.clusterIPs[0]")),
        u(
            "invalid change first ip, in dualstack service",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.5", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            DUAL_OLD,
        )
        .dual(Refuse("spec.clusterIPs[0]")),
        u(
            "invalid, change second ip in dualstack service",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.4", "2001::2"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            DUAL_OLD,
        )
        .dual(Refuse("spec.clusterIPs[1]")),
        u(
            "downgrade keeping the families",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4", "IPv6"])
            },
            DUAL_OLD,
        )
        .dual(Accept),
        u(
            "invalid, downgrade without changing to singleStack",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, REQ, &["IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Refuse("spec.ipFamilyPolicy")),
        u(
            "invalid, downgrade and change primary ip",
            |s| {
                ips(s, &["10.96.0.4", "2001::1"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            |s| {
                ips(s, &["10.96.0.5"]);
                families(s, SINGLE, &["IPv4"])
            },
            DUAL_OLD,
        )
        .dual(Refuse("spec.clusterIPs[0]")),
        u(
            "invalid: upgrade to dual stack and change primary",
            |s| {
                ips(s, &["10.96.0.4"]);
                families(s, SINGLE, &["IPv4"])
            },
            |s| {
                ips(s, &["10.96.0.5"]);
                families(s, REQ, &["IPv4", "IPv6"])
            },
            Refuse("spec.ipFamilyPolicy"),
        )
        .dual(Refuse("spec.clusterIPs[0]")),
        u(
            "update to valid app protocol",
            |s| {
                s["spec"]["ports"] =
                    json!([{"name": "a", "port": 443, "targetPort": 3000, "protocol": "TCP"}])
            },
            |s| s["spec"]["ports"] = json!([{"name": "a", "port": 443, "targetPort": 3000, "protocol": "TCP", "appProtocol": "https"}]),
            Accept,
        ),
        u(
            "update to invalid app protocol",
            |s| {
                s["spec"]["ports"] =
                    json!([{"name": "a", "port": 443, "targetPort": 3000, "protocol": "TCP"}])
            },
            |s| s["spec"]["ports"] = json!([{"name": "a", "port": 443, "targetPort": 3000, "protocol": "TCP", "appProtocol": "~https"}]),
            Refuse("spec.ports[0].appProtocol"),
        ),
        u(
            "Set AllocateLoadBalancerNodePorts when type is not LoadBalancer",
            none,
            |s| s["spec"]["allocateLoadBalancerNodePorts"] = json!(true),
            Refuse("spec.allocateLoadBalancerNodePorts"),
        ),
        Row::update(
            UPDATE,
            "update LoadBalancer type of service without change LoadBalancerClass",
            svc(|s| lb_class(s, "test.com/test-old")),
            svc(|s| lb_class(s, "test.com/test-old")),
            Accept,
        ),
        Row::update(
            UPDATE,
            "invalid: change LoadBalancerClass when update service",
            svc(|s| lb_class(s, "test.com/test-old")),
            svc(|s| lb_class(s, "test.com/test-new")),
            Refuse("spec.loadBalancerClass"),
        ),
        Row::update(
            UPDATE,
            "invalid: unset LoadBalancerClass when update service",
            svc(|s| lb_class(s, "test.com/test-old")),
            svc(lb),
            Refuse("spec.loadBalancerClass"),
        ),
        Row::update(
            UPDATE,
            "invalid: set LoadBalancerClass when update service",
            svc(lb),
            svc(|s| lb_class(s, "test.com/test-new")),
            Refuse("spec.loadBalancerClass"),
        ),
        Row::update(
            UPDATE,
            "update to LoadBalancer type of service with valid LoadBalancerClass",
            base(),
            svc(|s| lb_class(s, "test.com/test-load-balancer-class")),
            Accept,
        ),
        u(
            "update to LoadBalancer type of service without LoadBalancerClass",
            none,
            lb,
            Accept,
        ),
        Row::update(
            UPDATE,
            "invalid: set invalid LoadBalancerClass when update service to LoadBalancer",
            base(),
            svc(|s| lb_class(s, "Bad/LoadBalancerclass")),
            Refuse("spec.loadBalancerClass"),
        ),
        u(
            "invalid: set LoadBalancerClass when update service to non LoadBalancer type of service (ClusterIP)",
            none,
            |s| s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class"),
            Refuse("spec.loadBalancerClass"),
        ),
        u(
            "invalid: set LoadBalancerClass when update service to non LoadBalancer type of service (ExternalName)",
            en,
            |s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")
            },
            Refuse("spec."),
        ),
        u(
            "invalid: set LoadBalancerClass when update service to non LoadBalancer type of service (NodePort)",
            node_port,
            |s| {
                node_port(s);
                s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")
            },
            Refuse("spec.loadBalancerClass"),
        ),
        // Leaving LoadBalancer with the stored class unchanged: the strategy clears it.
        Row::update(
            UPDATE,
            "invalid: set LoadBalancerClass when update from LoadBalancer service to non LoadBalancer type of service (ClusterIP)",
            svc(|s| lb_class(s, "test.com/test-load-balancer-class")),
            svc(|s| s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")),
            Accept,
        ),
        Row::update(
            UPDATE,
            "invalid: set LoadBalancerClass when update from LoadBalancer service to non LoadBalancer type of service (ExternalName)",
            svc(|s| lb_class(s, "test.com/test-load-balancer-class")),
            svc(|s| {
                s["spec"]["type"] = json!("ExternalName");
                s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")
            }),
            Refuse("spec.externalName"),
        ),
        Row::update(
            UPDATE,
            "invalid: set LoadBalancerClass when update from LoadBalancer service to non LoadBalancer type of service (NodePort)",
            svc(|s| lb_class(s, "test.com/test-load-balancer-class")),
            svc(|s| {
                node_port(s);
                s["spec"]["loadBalancerClass"] = json!("test.com/test-load-balancer-class")
            }),
            Accept,
        ),
        u(
            "update internalTrafficPolicy from Cluster to Local",
            none,
            |s| s["spec"]["internalTrafficPolicy"] = json!("Local"),
            Accept,
        ),
        u(
            "update internalTrafficPolicy from Local to Cluster",
            |s| s["spec"]["internalTrafficPolicy"] = json!("Local"),
            none,
            Accept,
        ),
        u(
            "topology annotations are mismatched",
            none,
            |s| {
                ann(s, "service.kubernetes.io/topology-aware-hints", "original");
                ann(s, "service.kubernetes.io/topology-mode", "different")
            },
            Refuse("metadata.annotations[service.kubernetes.io/topology-aware-hints]"),
        ),
    ]
}
