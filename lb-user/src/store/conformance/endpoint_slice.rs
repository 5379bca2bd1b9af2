//! TestValidateEndpointSlice, TestValidateEndpointSliceCreate and
//! TestValidateEndpointSliceUpdate (pkg/apis/discovery/validation), as
//! discovery.k8s.io/v1 manifests, with rows of the newer upstream table (nodeName,
//! zone, hints) and the immutable addressType.

use serde_json::{Value, json};

use super::{
    Row,
    Want::{self, Accept, Refuse, Skip},
};

const SLICE: &str = "EndpointSlice";
const CREATE: &str = "EndpointSliceCreate";
const UPDATE: &str = "EndpointSliceUpdate";

fn base() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hello", "namespace": "world"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.1.2.0"], "hostname": "valid-123"}]
    })
}

fn slice(tweak: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    tweak(&mut v);
    v
}

fn addresses(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| format!("10.1.2.{}", i % 255))
            .collect::<Vec<_>>()
    )
}

fn ports(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| json!({"name": format!("http-{i}"), "protocol": "TCP"}))
            .collect::<Vec<_>>()
    )
}

fn endpoints(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| json!({"addresses": [format!("10.1.2.{}", i % 255)]}))
            .collect::<Vec<_>>()
    )
}

fn topology(n: usize) -> Value {
    let map: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("topology-{i}"), json!("example")))
        .collect();
    Value::Object(map)
}

pub fn rows() -> Vec<Row> {
    let r = |name: &str, tweak: fn(&mut Value), want: Want| {
        Row::create(SLICE, name, slice(tweak), want)
    };
    let mut rows = vec![
        r("good-slice", |_| {}, Accept),
        r(
            "good-ipv6",
            |s| {
                s["addressType"] = json!("IPv6");
                s["endpoints"][0]["addresses"] = json!(["a00:100::4"])
            },
            Accept,
        ),
        r(
            "good-fqdns",
            |s| {
                s["addressType"] = json!("FQDN");
                s["endpoints"][0]["addresses"] = json!([
                    "foo.example.com",
                    "example.com",
                    "example.com.",
                    "hyphens-are-good.example.com"
                ])
            },
            Accept,
        ),
        r(
            "all-protocols",
            |s| s["ports"] = json!([{"name": "tcp", "protocol": "TCP"}, {"name": "udp", "protocol": "UDP"}, {"name": "sctp", "protocol": "SCTP"}]),
            Accept,
        ),
        // The table allows the deprecated type `IP`; a create through the API does not.
        r(
            "app-protocols",
            |s| {
                s["addressType"] = json!("IP");
                s["ports"] = json!([{"name": "one", "protocol": "TCP", "appProtocol": "HTTP"}, {"name": "two", "protocol": "TCP", "appProtocol": "https"}, {"name": "three", "protocol": "TCP", "appProtocol": "my-protocol"}, {"name": "four", "protocol": "TCP", "appProtocol": "example.com/custom-protocol"}])
            },
            Refuse("addressType"),
        ),
        r(
            "app-protocols (IPv4)",
            |s| s["ports"] = json!([{"name": "one", "protocol": "TCP", "appProtocol": "HTTP"}, {"name": "two", "protocol": "TCP", "appProtocol": "https"}, {"name": "three", "protocol": "TCP", "appProtocol": "my-protocol"}, {"name": "four", "protocol": "TCP", "appProtocol": "example.com/custom-protocol"}]),
            Accept,
        ),
        r(
            "empty-port-name",
            |s| {
                s["ports"] =
                    json!([{"name": "", "protocol": "TCP"}, {"name": "http", "protocol": "TCP"}]);
                s["endpoints"] = json!([{"addresses": ["10.1.2.0"]}])
            },
            Accept,
        ),
        r(
            "long-port-name",
            |s| {
                s["ports"] = json!([{"name": "a".repeat(63), "protocol": "TCP"}]);
                s["endpoints"] = json!([{"addresses": ["10.1.2.0"]}])
            },
            Accept,
        ),
        r(
            "empty-ports-and-endpoints",
            |s| {
                s["ports"] = json!([]);
                s["endpoints"] = json!([])
            },
            Accept,
        ),
        r(
            "max-endpoints",
            |s| {
                s["ports"] = ports(1);
                s["endpoints"] = endpoints(1000)
            },
            Accept,
        ),
        r(
            "max-ports",
            |s| {
                s["ports"] = ports(20_000);
                s["endpoints"] = json!([])
            },
            Accept,
        ),
        r(
            "max-addresses",
            |s| s["endpoints"] = json!([{"addresses": addresses(100)}]),
            Accept,
        ),
        r(
            "max-topology-keys",
            |s| {
                s["endpoints"] =
                    json!([{"addresses": addresses(1), "deprecatedTopology": topology(16)}])
            },
            Accept,
        ),
        r(
            "duplicate-port-name",
            |s| {
                s["ports"] =
                    json!([{"name": "", "protocol": "TCP"}, {"name": "", "protocol": "TCP"}]);
                s["endpoints"] = json!([])
            },
            Refuse("ports[1].name"),
        ),
        r(
            "bad-port-name-caps",
            |s| {
                s["ports"] = json!([{"name": "aCapital", "protocol": "TCP"}]);
                s["endpoints"] = json!([])
            },
            Refuse("ports[0].name"),
        ),
        r(
            "bad-port-name-chars",
            |s| {
                s["ports"] = json!([{"name": "almost_valid", "protocol": "TCP"}]);
                s["endpoints"] = json!([])
            },
            Refuse("ports[0].name"),
        ),
        r(
            "bad-port-name-length",
            |s| {
                s["ports"] = json!([{"name": "a".repeat(64), "protocol": "TCP"}]);
                s["endpoints"] = json!([])
            },
            Refuse("ports[0].name"),
        ),
        r(
            "invalid-port-protocol",
            |s| {
                s["ports"] = json!([{"name": "http", "protocol": "foo"}]);
                s["endpoints"] = json!([])
            },
            Refuse("ports[0].protocol"),
        ),
        r(
            "too-many-ports",
            |s| {
                s["ports"] = ports(20_001);
                s["endpoints"] = json!([])
            },
            Refuse("ports"),
        ),
        r(
            "too-many-endpoints",
            |s| {
                s["ports"] = ports(1);
                s["endpoints"] = endpoints(1001)
            },
            Refuse("endpoints"),
        ),
        r(
            "no-endpoint-addresses",
            |s| s["endpoints"] = json!([{"addresses": []}]),
            Refuse("endpoints[0].addresses"),
        ),
        r(
            "too-many-addresses",
            |s| s["endpoints"] = json!([{"addresses": addresses(101)}]),
            Refuse("endpoints[0].addresses"),
        ),
        r(
            "bad-topology-key",
            |s| s["endpoints"] = json!([{"addresses": addresses(1), "deprecatedTopology": {"--INVALID": "example"}}]),
            Refuse("endpoints[0].deprecatedTopology"),
        ),
        r(
            "too-many-topology-keys",
            |s| {
                s["endpoints"] =
                    json!([{"addresses": addresses(1), "deprecatedTopology": topology(17)}])
            },
            Refuse("endpoints[0].deprecatedTopology"),
        ),
        r(
            "bad-hostname",
            |s| s["endpoints"][0]["hostname"] = json!("--INVALID"),
            Refuse("endpoints[0].hostname"),
        ),
        r(
            "bad-meta",
            |s| s["metadata"] = json!({"name": "*&^", "namespace": "foo"}),
            Refuse("metadata.name"),
        ),
        r(
            "bad-ip",
            |s| {
                s["addressType"] = json!("IP");
                s["endpoints"][0]["addresses"] = json!(["123.456.789.012"])
            },
            Refuse("addressType"),
        ),
        r(
            "bad-ipv4",
            |s| s["endpoints"][0]["addresses"] = json!(["123.456.789.012", "2001:4860:4860::8888"]),
            Refuse("endpoints[0].addresses[0]"),
        ),
        r(
            "bad-ipv6",
            |s| {
                s["addressType"] = json!("IPv6");
                s["endpoints"][0]["addresses"] = json!(["123.456.789.012", "2001:4860:4860:defg"])
            },
            Refuse("endpoints[0].addresses[0]"),
        ),
        r(
            "bad-fqdns",
            |s| {
                s["addressType"] = json!("FQDN");
                s["endpoints"][0]["addresses"] = json!([
                    "foo.*",
                    "FOO.example.com",
                    "underscores_are_bad.example.com",
                    "*.example.com"
                ])
            },
            Refuse("endpoints[0].addresses[0]"),
        ),
        r(
            "bad-app-protocol",
            |s| s["ports"] = json!([{"name": "http", "protocol": "TCP", "appProtocol": "--"}]),
            Refuse("ports[0].appProtocol"),
        ),
        r(
            "empty-everything",
            |s| *s = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {}, "addressType": "", "endpoints": []}),
            Refuse("metadata.name"),
        ),
        r(
            "special-ipv4",
            |s| s["endpoints"][0]["addresses"] = json!(["127.0.0.1"]),
            Refuse("endpoints[0].addresses[0]"),
        ),
        r(
            "special-ipv6",
            |s| {
                s["addressType"] = json!("IPv6");
                s["endpoints"][0]["addresses"] = json!(["fe80::9656:d028:8652:66b6"])
            },
            Refuse("endpoints[0].addresses[0]"),
        ),
        // Newer upstream rows.
        r(
            "bad-node-name",
            |s| s["endpoints"][0]["nodeName"] = json!("INVALID_NODE"),
            Refuse("endpoints[0].nodeName"),
        ),
        r(
            "good-hints",
            |s| {
                s["endpoints"][0]["zone"] = json!("zone-a");
                s["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]})
            },
            Accept,
        ),
        r(
            "bad-zone",
            |s| s["endpoints"][0]["zone"] = json!("-not-a-label-"),
            Refuse("endpoints[0].zone"),
        ),
        r(
            "too-many-hint-zones",
            |s| s["endpoints"][0]["hints"] = json!({"forZones": (0..9).map(|i| json!({"name": format!("zone-{i}")})).collect::<Vec<_>>()}),
            Refuse("endpoints[0].hints.forZones"),
        ),
        r(
            "duplicate-hint-zones",
            |s| {
                s["endpoints"][0]["hints"] =
                    json!({"forZones": [{"name": "zone-a"}, {"name": "zone-a"}]})
            },
            Refuse("endpoints[0].hints.forZones[1].name"),
        ),
    ];
    let c = |name: &str, tweak: fn(&mut Value), want: Want| {
        Row::create(CREATE, name, slice(tweak), want)
    };
    rows.extend([
        c("good-slice", |_| {}, Accept),
        c(
            "deprecated-address-type",
            |s| s["addressType"] = json!("IP"),
            Refuse("addressType"),
        ),
        c(
            "bad-address-type",
            |s| s["addressType"] = json!("other"),
            Refuse("addressType"),
        ),
    ]);
    let no_endpoints = |ty: &str| {
        slice(|s| {
            s["addressType"] = json!(ty);
            s["endpoints"] = json!([]);
            s["ports"] = json!([])
        })
    };
    rows.extend([
        Row::update(
            UPDATE,
            "valid and identical slices",
            no_endpoints("IPv6"),
            no_endpoints("IPv6"),
            Accept,
        ),
        Row::update(
            UPDATE,
            "deprecated address type",
            base(),
            base(),
            Skip("the old object (addressType IP) is refused at create"),
        ),
        Row::update(
            UPDATE,
            "valid and identical slices with different address types",
            base(),
            base(),
            Skip("the old object (addressType other) is refused at create"),
        ),
        Row::update(
            UPDATE,
            "invalid slices with valid address types",
            base(),
            base(),
            Skip("the old object (addressType IP) is refused at create"),
        ),
        Row::update(
            UPDATE,
            "address type is immutable",
            no_endpoints("IPv4"),
            no_endpoints("IPv6"),
            Refuse("addressType"),
        ),
    ]);
    rows
}
