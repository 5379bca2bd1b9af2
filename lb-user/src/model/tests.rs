use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

const SEEDS: &str = "apiVersion: v1
kind: Service
metadata:
  name: node-port-service
spec:
  type: NodePort
  ports:
      # pod port
    - targetPort: 80
      # service port on pod-side
      port: 80
      # service
      nodePort: 30008
  selector:
    app: myapp
    type: front-end
";

fn one_service(yaml: &str) -> Service {
    let docs = parse_manifest("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    match &docs[0].object {
        Object::Service(s) => (**s).clone(),
        o => panic!("not a service: {o:?}"),
    }
}

/// The error a manifest gets: from reading it, or (for what depends on the type,
/// which an update may clear) from the full validation the store runs as it
/// creates the object.
fn error(yaml: &str) -> String {
    match parse_manifest("svc.yaml", yaml) {
        Err(e) => e.to_string(),
        Ok(docs) => {
            let errors: Vec<FieldError> = docs
                .iter()
                .flat_map(|d| match &d.object {
                    Object::Service(s) => validate_service(s),
                    _ => Vec::new(),
                })
                .collect();
            assert!(!errors.is_empty(), "should be invalid: {yaml}");
            join(&errors)
        }
    }
}

#[test]
fn the_seeds_manifest_reads_as_written() {
    let svc = one_service(SEEDS);
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    let p = &spec.ports.unwrap()[0];
    assert_eq!(
        (p.port, p.node_port, p.target_port.clone()),
        (80, Some(30008), Some(IntOrString::Int(80)))
    );
    assert_eq!(
        spec.selector.unwrap().get("type").map(String::as_str),
        Some("front-end")
    );
    assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn a_large_manifest_is_read_in_order_and_its_errors_name_the_file_line() {
    // Enough documents that parsers read runs of them (and the cores share runs),
    // with empty documents and a comment-only one among them.
    let doc = |i: usize| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  ports: [{{port: 80}}]\n"
        )
    };
    let mut text = String::new();
    for i in 0..1_000 {
        text.push_str(&doc(i));
        text.push_str(match i % 97 {
            5 => "---\n---\n",
            6 => "---\n# nothing here\n---\n",
            _ => "---\n",
        });
    }
    let docs = parse_manifest("big.yaml", &text).unwrap();
    let names: Vec<String> = docs.iter().map(|d| d.object.key().name).collect();
    assert_eq!(
        names,
        (0..1_000).map(|i| format!("s{i}")).collect::<Vec<_>>()
    );
    assert!(docs.windows(2).all(|w| w[0].index < w[1].index));
    // A syntax error deep in the file: its line in the whole file, whichever run
    // holds it.
    let bad = text.replacen("  name: s777\n", "  name: [s777\n", 1);
    let line = bad.lines().position(|l| l == "  name: [s777").unwrap() + 1;
    let err = parse_manifest("big.yaml", &bad).unwrap_err().to_string();
    let named = (line..line + 3).any(|l| err.contains(&format!("line {l} ")));
    assert!(named, "line {line}: {err}");
    // Every mark in the message is a line of the file, none counted from where its
    // parser began.
    let marks: Vec<usize> = err
        .split("line ")
        .skip(1)
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        !marks.is_empty() && marks.iter().all(|m| (line..line + 3).contains(m)),
        "line {line}: {err}"
    );
}

#[test]
fn port_is_the_only_required_port_field() {
    let svc = one_service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: backend}\nspec:\n  ports:\n  - port: 8080\n",
    );
    let spec = svc.spec.unwrap();
    assert_eq!(
        spec.type_.as_deref(),
        Some("ClusterIP"),
        "type defaults to ClusterIP"
    );
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    let p = &spec.ports.unwrap()[0];
    assert_eq!(p.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        p.target_port,
        Some(IntOrString::Int(8080)),
        "targetPort defaults to port"
    );
    assert_eq!(p.node_port, None);
}

#[test]
fn json_lists_and_multi_document_yaml() {
    let json = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"app":"a"}},"spec":{"containers":[{"name":"c","image":"app"}]},"status":{"podIP":"10.244.0.9"}}]}"#;
    let docs = parse_manifest("l.json", json).unwrap();
    assert_eq!(
        docs.iter().map(|d| d.object.kind()).collect::<Vec<_>>(),
        [Kind::Service, Kind::Pod]
    );
    let yaml = format!(
        "{SEEDS}---\n{}\n---\n",
        SEEDS.replace("node-port-service", "two")
    );
    let docs = parse_manifest("m.yaml", &yaml).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].index, 2);
}

#[test]
fn validation_errors_read_like_the_api_server() {
    let cases: &[(&str, &str)] = &[
        (
            "spec:\n  ports:\n  - targetPort: 80\n",
            "svc.yaml (document 1): The Service \"s\" is invalid: spec.ports[0].port: Required value",
        ),
        (
            "spec:\n  ports:\n  - port: 70000\n",
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "spec:\n  type: Fancy\n  ports:\n  - port: 80\n",
            "spec.type: Unsupported value: \"Fancy\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ),
        (
            "spec:\n  ports:\n  - port: 80\n    protocol: SCTP\n",
            "spec.ports[0].protocol: Unsupported value: \"SCTP\": supported values: \"TCP\", \"UDP\"",
        ),
        (
            "spec:\n  ports:\n  - port: 80\n  - port: 81\n",
            "spec.ports[1].name: Required value",
        ),
        (
            "spec:\n  ports:\n  - {name: web, port: 80}\n  - {name: web, port: 81}\n",
            "spec.ports[1].name: Duplicate value: \"web\"",
        ),
        (
            "spec:\n  ports:\n  - port: 80\n    nodePort: 30001\n",
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (
            "spec:\n  type: NodePort\n  ports:\n  - {name: a, port: 80, nodePort: 30001}\n  - {name: b, port: 81, nodePort: 30001}\n",
            "spec.ports[1].nodePort: Duplicate value: 30001",
        ),
        (
            "spec:\n  ports:\n  - port: 80\n  clusterIP: 10.96.0.300\n",
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address",
        ),
        (
            "spec:\n  ports:\n  - port: 80\n    targetPort: Not_A_Name\n",
            "spec.ports[0].targetPort: Invalid value: \"Not_A_Name\"",
        ),
        (
            "spec:\n  sessionAffinity: Sticky\n  ports:\n  - port: 80\n",
            "spec.sessionAffinity: Unsupported value: \"Sticky\"",
        ),
        ("spec:\n  ports: []\n", "spec.ports: Required value"),
    ];
    for (spec, want) in cases {
        let yaml = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n{spec}");
        let got = error(&yaml);
        assert!(
            got.contains(want),
            "for\n{spec}\nwant {want:?}\ngot  {got:?}"
        );
    }
    let bad_name = error(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: My_Svc\nspec:\n  ports:\n  - port: 80\n",
    );
    assert!(
        bad_name.contains("metadata.name: Invalid value: \"My_Svc\": a DNS-1035 label"),
        "{bad_name}"
    );
    let bad_kind = error("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n");
    assert!(
        bad_kind.contains("(document 1): deployment.apps/d: lb reads v1 Service"),
        "{bad_kind}"
    );
    let bad_version =
        error("apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata:\n  name: e\n");
    assert!(
        bad_version.contains(
            "no kind \"EndpointSlice\" is registered for version \"discovery.k8s.io/v1beta1\""
        ),
        "{bad_version}"
    );
    let bad_type = error(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: eighty\n",
    );
    assert!(
        bad_type.contains("spec.ports[0].port"),
        "the field path is named: {bad_type}"
    );
}

#[test]
fn selectors_readiness_and_named_ports() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}},
        "spec": {"containers": [{"name": "c", "image": "app", "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
        "status": {"podIP": "10.244.0.5"}
    }))
    .unwrap();
    let mut pod = pod;
    default_pod(&mut pod);
    let sel = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let facts = PodFacts::of(&pod);
    assert!(facts.selected_by(Some(&sel(&[("app", "web")]))));
    assert!(facts.selected_by(Some(&sel(&[("app", "web"), ("tier", "front")]))));
    assert!(!facts.selected_by(Some(&sel(&[("app", "web"), ("tier", "back")]))));
    assert!(!facts.selected_by(Some(&sel(&[("zone", "a")]))));
    assert!(
        !facts.selected_by(Some(&sel(&[]))),
        "an empty selector selects nothing"
    );
    assert!(!facts.selected_by(None));
    assert!(
        pod_ready(&pod),
        "a declared pod without conditions is ready"
    );
    assert_eq!(facts.ready_ip, Some(Ipv4Addr::new(10, 244, 0, 5)));
    let named = |n: &str| IntOrString::String(n.into());
    assert_eq!(facts.target_port(&named("http"), "TCP"), Some(8080));
    assert_eq!(facts.target_port(&named("dns"), "UDP"), Some(5353));
    assert_eq!(
        facts.target_port(&named("dns"), "TCP"),
        None,
        "protocol must match"
    );
    assert_eq!(facts.target_port(&named("nope"), "TCP"), None);
    assert_eq!(
        facts.target_port(&IntOrString::Int(9000), "TCP"),
        Some(9000)
    );

    let mut not_ready = pod.clone();
    not_ready.status.as_mut().unwrap().conditions =
        Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
    assert!(!pod_ready(&not_ready));
    let facts = PodFacts::of(&not_ready);
    assert_eq!(
        (facts.ready_ip, facts.ip),
        (None, Some(Ipv4Addr::new(10, 244, 0, 5))),
        "an unready pod keeps its address for routes, not as an endpoint"
    );
    let mut no_ip = pod.clone();
    no_ip.status.as_mut().unwrap().pod_ip = None;
    assert!(!pod_ready(&no_ip));
}

#[test]
fn endpoint_slices_are_read_and_validated_like_the_api_server() {
    let ok = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-1\n  labels: {kubernetes.io/service-name: ext}\naddressType: IPv4\nports:\n- {name: web, port: 8080}\nendpoints:\n- addresses: [10.244.0.2]\n";
    let docs = parse_manifest("eps.yaml", ok).unwrap();
    let Object::EndpointSlice(slice) = &docs[0].object else {
        panic!("not a slice")
    };
    assert_eq!(slice_service(slice), Some("ext"));
    assert_eq!(slice.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        slice.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP"),
        "protocol defaults to TCP"
    );
    let cases: &[(&str, &str)] = &[
        (
            "addressType: IPv5\nendpoints: []\n",
            "addressType: Unsupported value: \"IPv5\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        ),
        (
            "addressType: IPv4\nendpoints:\n- addresses: [10.244.0.300]\n",
            "endpoints[0].addresses[0]: Invalid value: \"10.244.0.300\": must be a valid IPv4 address",
        ),
        (
            "addressType: IPv4\nendpoints:\n- addresses: []\n",
            "endpoints[0].addresses: Invalid value: 0: must have at least 1 and at most 100 addresses",
        ),
        (
            "addressType: IPv4\nendpoints: []\nports:\n- {name: web, port: 70000}\n",
            "ports[0].port: Invalid value: 70000: must be between 0 and 65535, inclusive",
        ),
        (
            "addressType: IPv4\nendpoints: []\nports:\n- {name: web, port: 80}\n- {name: web, port: 81}\n",
            "ports[1].name: Duplicate value: \"web\"",
        ),
        (
            "addressType: IPv4\nendpoints: []\nports:\n- {name: web, port: 80, protocol: ICMP}\n",
            "ports[0].protocol: Unsupported value: \"ICMP\"",
        ),
    ];
    for (body, want) in cases {
        let yaml = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: e\n{body}"
        );
        let got = error(&yaml);
        assert!(
            got.contains(want) && got.contains("The EndpointSlice \"e\" is invalid"),
            "for\n{body}\nwant {want:?}\ngot  {got:?}"
        );
    }
}

#[test]
fn kinds_lb_does_not_serve_are_skipped_one_line_each() {
    let yaml = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {{}}\n---\n{SEEDS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{a: b}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: in}}\n"
    );
    let m = read_manifest("app.yaml", &yaml).unwrap();
    assert_eq!(m.docs.len(), 1, "the seeds' service");
    let lines: Vec<String> = m.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "deployment.apps/web skipped: lb serves Service, Pod, EndpointSlice",
            "configmap/cfg skipped: lb serves Service, Pod, EndpointSlice",
            "ingress.networking.k8s.io/in skipped: lb serves Service, Pod, EndpointSlice",
        ]
    );
    assert_eq!(
        m.skipped.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 3, 4]
    );
}

#[test]
fn empty_strings_take_the_defaults_as_helm_renders_them() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: \"\"}\nspec:\n  type: \"\"\n  sessionAffinity: \"\"\n  ports: [{port: 80, protocol: \"\"}]\n";
    let docs = parse_manifest("h.yaml", yaml).unwrap();
    let Object::Service(svc) = &docs[0].object else {
        panic!()
    };
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(
        spec.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );
    // sessionAffinityConfig with affinity None is dropped, not refused.
    let none = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  sessionAffinity: None\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80}]\n";
    let docs = parse_manifest("n.yaml", none).unwrap();
    let Object::Service(svc) = &docs[0].object else {
        panic!()
    };
    assert!(svc.spec.as_ref().unwrap().session_affinity_config.is_none());
    // externalTrafficPolicy on a ClusterIP service with externalIPs: accepted.
    let ext = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  externalIPs: [192.0.2.10]\n  externalTrafficPolicy: Cluster\n  ports: [{port: 80}]\n";
    parse_manifest("e.yaml", ext).unwrap();
    let no_ext = ext.replace("  externalIPs: [192.0.2.10]\n", "");
    let err = error(&no_ext);
    assert!(
        err.contains("spec.externalTrafficPolicy: Invalid value: \"Cluster\": may only be set for externally-accessible services"),
        "{err}"
    );
}

#[test]
fn printed_user_data_is_escaped_and_long_values_cut() {
    assert_eq!(
        shown("web\u{1b}[31m\nfake row", 100),
        "web\\u{1b}[31m\\nfake row"
    );
    let long = "x".repeat(1_000_000);
    let cut = shown(&long, SHOWN_VALUE);
    assert!(cut.len() < 300, "{} bytes", cut.len());
    assert!(
        cut.ends_with(&format!("...({} more bytes)", 1_000_000 - SHOWN_VALUE)),
        "{cut}"
    );
    // A refused manifest with a 1 MB name gives a short error.
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {long}\nspec:\n  ports: [{{port: 80}}]\n"
    );
    let err = parse_manifest("big.yaml", &yaml).unwrap_err().to_string();
    assert!(err.len() < 2_000, "{} bytes", err.len());
}

#[test]
fn unknown_and_duplicate_fields_are_refused_as_kubectl_validates() {
    let typo = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - {port: 80, targetPortt: 8080}\n";
    let err = parse_manifest("t.yaml", typo).unwrap_err().to_string();
    assert_eq!(
        err,
        "t.yaml (document 1): Service in version \"v1\" cannot be handled as a Service: strict decoding error: unknown field \"spec.ports[0].targetPortt\""
    );
    let warned = read_manifest_with("t.yaml", typo, FieldValidation::Warn).unwrap();
    assert_eq!(warned.docs.len(), 1);
    assert_eq!(
        warned.warnings,
        ["t.yaml (document 1): unknown field \"spec.ports[0].targetPortt\""]
    );
    let ignored = read_manifest_with("t.yaml", typo, FieldValidation::Ignore).unwrap();
    assert!(ignored.warnings.is_empty() && ignored.docs.len() == 1);
    // Every field of the seeds' manifests and of a full Pod is known.
    assert!(read_manifest("s.yaml", SEEDS).unwrap().warnings.is_empty());
    let dup = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: 80\n    port: 81\n";
    let err = parse_manifest("d.yaml", dup).unwrap_err().to_string();
    assert!(err.contains("duplicate field \"port\""), "{err}");
    assert!(err.contains("line "), "names the line: {err}");
}

#[test]
fn labels_selectors_annotations_and_addresses_as_the_api_server_checks_them() {
    let svc = |meta: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n{meta}spec:\n  ports: [{{port: 80}}]\n{spec}"
        )
    };
    let err = |yaml: &str| parse_manifest("v.yaml", yaml).unwrap_err().to_string();
    let e = err(&svc("  labels: {\"bad key\": x}\n", ""));
    assert!(e.contains("metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters"), "{e}");
    let e = err(&svc("  labels: {app: \"\\e[31mred\"}\n", ""));
    assert!(e.contains("metadata.labels: Invalid value: \"\\u{1b}[31mred\": a valid label must be an empty string"), "{e}");
    let e = err(&svc("", "  selector: {\"example.com/\": x}\n"));
    assert!(
        e.contains("spec.selector: Invalid value: \"example.com/\": name part must be non-empty"),
        "{e}"
    );
    let e = err(&svc("", "  externalIPs: [\"1.2.3.4\\n5\"]\n"));
    assert!(
        e.contains(
            "spec.externalIPs[0]: Invalid value: \"1.2.3.4\\n5\": must be a valid IP address"
        ),
        "{e}"
    );
    let e = err(&svc("", "  type: LoadBalancer\n  loadBalancerIP: nope\n"));
    assert!(
        e.contains("spec.loadBalancerIP: Invalid value: \"nope\""),
        "{e}"
    );
    let big = "x".repeat(300 * 1024);
    let e = err(&svc(&format!("  annotations: {{note: {big}}}\n"), ""));
    assert!(
        e.contains("metadata.annotations: Too long: may not be more than 262144 bytes"),
        "{e}"
    );
    parse_manifest("ok.yaml", &svc("  labels: {app.kubernetes.io/name: web, tier: \"\"}\n  annotations: {Example.com/Note: x}\n", "  selector: {app.kubernetes.io/name: web}\n")).unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: \"Node_1\", containers: [{name: c, image: app}]}\n";
    assert!(err(pod).contains("spec.nodeName: Invalid value: \"Node_1\""));
    // A whole object over the API server's request limit.
    let huge = format!(
        "{}---\n",
        svc(
            &format!("  annotations: {{a: {}}}\n", "y".repeat(4 << 20)),
            ""
        )
    );
    assert!(err(&huge).contains("Request entity too large: limit is 3145728"));
    // Measured as JSON, to the byte: `{"a":"xx"}` is 10 bytes.
    let v = serde_json::json!({"a": "xx"});
    assert!(!json_longer_than(&v, 10));
    assert!(json_longer_than(&v, 9));
}

#[test]
fn load_balancer_only_fields_as_the_api_server_checks_them() {
    let svc = |spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ports: [{{port: 80}}]\n{spec}"
        )
    };
    let err = |spec: &str| error(&svc(spec));
    let only = "may only be used when `type` is 'LoadBalancer'";
    let e = err("  type: NodePort\n  loadBalancerSourceRanges: [10.0.0.0/8]\n");
    assert!(
        e.contains(&format!("spec.LoadBalancerSourceRanges: Forbidden: {only}")),
        "{e}"
    );
    let e = err("  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, nope]\n");
    assert!(e.contains("spec.LoadBalancerSourceRanges: Invalid value: [10.0.0.0/8 nope]: must be a list of IP ranges"), "{e}");
    let e = err("  loadBalancerClass: example.com/lb\n");
    assert!(
        e.contains(&format!("spec.loadBalancerClass: Forbidden: {only}")),
        "{e}"
    );
    let e = err("  type: LoadBalancer\n  loadBalancerClass: \"bad class\"\n");
    assert!(
        e.contains("spec.loadBalancerClass: Invalid value: \"bad class\": name part must consist"),
        "{e}"
    );
    let e = err("  type: NodePort\n  allocateLoadBalancerNodePorts: false\n");
    assert!(
        e.contains(&format!(
            "spec.allocateLoadBalancerNodePorts: Forbidden: {only}"
        )),
        "{e}"
    );
    let e = err("  type: LoadBalancer\n  healthCheckNodePort: 31000\n");
    assert!(e.contains("spec.healthCheckNodePort: Invalid value: 31000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"), "{e}");
    let bad_proto = svc("").replace("[{port: 80}]", "[{port: 80, appProtocol: \"h t t p\"}]");
    let e = parse_manifest("lb.yaml", &bad_proto)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.ports[0].appProtocol: Invalid value: \"h t t p\""),
        "{e}"
    );
    // All of them where they belong.
    let ok = svc("  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 31000\n  loadBalancerClass: example.com/lb\n  loadBalancerSourceRanges: [\"10.0.0.0/8 \", \"fd00::/64\"]\n  allocateLoadBalancerNodePorts: false\n")
        .replace("ports: [{port: 80}]", "ports: [{port: 80, appProtocol: kubernetes.io/h2c}]");
    parse_manifest("ok.yaml", &ok).unwrap();
    let docs = parse_manifest("d.yaml", &svc("  type: LoadBalancer\n")).unwrap();
    let Object::Service(s) = &docs[0].object else {
        panic!()
    };
    assert_eq!(
        s.spec.as_ref().unwrap().allocate_load_balancer_node_ports,
        Some(true)
    );
}

#[test]
fn documents_are_numbered_across_batches_and_lists() {
    // More documents than one batch of parsed trees, a List among them, and a bad
    // object far in: its number counts every object before it.
    let svc = |i: usize| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  ports:\n  - port: 80\n---\n"
        )
    };
    let mut yaml: String = (0..5_000).map(svc).collect();
    yaml.push_str("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: l1}, spec: {ports: [{port: 80}]}}\n- {apiVersion: v1, kind: Service, metadata: {name: l2}, spec: {ports: [{port: 80}]}}\n---\n");
    let docs = parse_manifest("m.yaml", &yaml).unwrap();
    assert_eq!(docs.len(), 5_002);
    assert_eq!(docs[4_999].index, 5_000);
    assert_eq!(docs[5_001].index, 5_002);
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n",
    );
    let err = parse_manifest("m.yaml", &yaml).unwrap_err().to_string();
    assert!(err.starts_with("m.yaml (document 5003): "), "{err}");
}

#[test]
fn documents_of_one_shape_still_have_each_unknown_field_found() {
    // A document decoded with no field passed over lets others of its shape (its
    // keys and the kinds of its values) be decoded plainly; one whose shape differs
    // (here only by a null, which is no field, becoming a value) is checked again.
    let pod = |i: usize, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: {{app: a{i}}}\nspec:\n  nodeName: n1\n{extra}  containers: [{{name: c, image: i}}]\n---\n"
        )
    };
    let few: String = [
        pod(1, ""),
        pod(2, "  nodeNamee: null\n"),
        pod(3, "  nodeNamee: null\n"),
        pod(4, "  nodeNamee: n4\n"),
        pod(5, "  nodeNamee: n5\n"),
        pod(6, ""),
    ]
    .concat();
    // The warnings of the two documents with a value under the unknown key.
    let warned = |first: usize| {
        [first, first + 1]
            .map(|n| format!("m.yaml (document {n}): unknown field \"spec.nodeNamee\""))
    };
    let m = read_manifest_with("m.yaml", &few, FieldValidation::Warn).unwrap();
    assert_eq!(m.docs.len(), 6);
    assert_eq!(m.warnings, warned(4));
    // As many as several batches on every core: each document keeps its number,
    // in a warning, a refusal and a skipped kind alike.
    let mut many: String = (0..5_000).map(|i| pod(i, "")).collect();
    many.push_str(&few);
    let m = read_manifest_with("m.yaml", &many, FieldValidation::Warn).unwrap();
    assert_eq!(m.docs.len(), 5_006);
    assert_eq!(m.warnings, warned(5_004));
    let err = parse_manifest("m.yaml", &many).unwrap_err().to_string();
    assert!(
        err.starts_with("m.yaml (document 5004): Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.nodeNamee\""),
        "{err}"
    );
    many.push_str("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
    let m = read_manifest_with("m.yaml", &many, FieldValidation::Ignore).unwrap();
    assert_eq!((m.docs.len(), m.skipped[0].index), (5_006, 5_007));
}

#[test]
fn a_stored_pod_decoded_for_its_facts_has_the_facts_of_the_whole_pod() {
    let pods = [
        "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\n",
        "metadata: {name: p, labels: {app: web, tier: fe, a.b/c: d}, annotations: {x: y}}\nspec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}, {containerPort: 9}]}, {name: d, image: i, ports: [{name: m, containerPort: 9090}]}]}\nstatus: {podIP: 10.0.0.1}\n",
        "metadata: {name: p, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1, phase: Running, conditions: [{type: PodScheduled, status: \"True\"}, {type: Ready, status: \"False\"}]}\n",
        "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: \"True\"}]}\n",
        "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1, phase: Succeeded}\n",
        "metadata: {name: p, deletionTimestamp: \"2026-01-01T00:00:00Z\"}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1}\n",
        "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\nstatus: {conditions: [{type: Ready, status: \"True\"}]}\n",
        "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\nstatus: {phase: Pending}\n",
    ];
    for text in pods {
        let docs = parse_manifest("t.yaml", &format!("apiVersion: v1\nkind: Pod\n{text}"))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        let Object::Pod(pod) = &docs[0].object else {
            panic!("not a pod")
        };
        let stored = serde_json::to_string(pod).unwrap();
        assert_eq!(
            PodFacts::from_json(&stored).unwrap(),
            PodFacts::of(pod),
            "{stored}"
        );
    }
    // Ready and addressed, or not: the cases differ where they should.
    let facts = |text: &str| {
        let docs = parse_manifest("t.yaml", &format!("apiVersion: v1\nkind: Pod\n{text}")).unwrap();
        let Object::Pod(pod) = &docs[0].object else {
            panic!("not a pod")
        };
        PodFacts::from_json(&serde_json::to_string(pod).unwrap()).unwrap()
    };
    let ready: Vec<bool> = pods.iter().map(|p| facts(p).ready_ip.is_some()).collect();
    assert_eq!(
        ready,
        [false, true, false, true, false, false, false, false]
    );
    // Strings with JSON escapes are read unescaped, in every field the facts read.
    let escaped = PodFacts::from_json(
        r#"{"metadata":{"labels":{"a\u0070p":"w\u0065b","tier":"fe"}},"spec":{"nodeName":"n\u0031","hostname":"h\u0031","subdomain":"w\u0065b",
        "containers":[{"ports":[{"name":"htt\u0070","protocol":"UD\u0050","containerPort":53}]}]},
        "status":{"podIP":"10.0.0.\u0031","phase":"Runnin\u0067","conditions":[{"type":"R\u0065ady","status":"Fals\u0065"}]}}"#,
    )
    .unwrap();
    assert_eq!(
        escaped.labels().collect::<Vec<_>>(),
        [("app", "web"), ("tier", "fe")]
    );
    assert_eq!(escaped.node_name.as_deref(), Some("n1"));
    assert_eq!(escaped.ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(escaped.hostname_in("web"), Some("h1"));
    let http = IntOrString::String("http".into());
    assert_eq!(escaped.target_port(&http, "UDP"), Some(53));
    assert_eq!(escaped.ready_ip, None, "its Ready condition is False");
}

#[test]
fn a_service_as_the_agent_keeps_it_is_the_service_less_managed_fields_and_spare_room() {
    let stored = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default",
        "managedFields":[{"manager":"kubectl","operation":"Apply"}]},
        "spec":{"type":"LoadBalancer","ports":[{"name":"http","port":80,"targetPort":8080}],
        "clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10"],"ipFamilies":["IPv4"],
        "selector":{"app":"web"},"externalIPs":["192.0.2.9"]},
        "status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.1","ports":[{"port":80,"protocol":"TCP"}]}]}}}"#;
    let mut svc: Service = serde_json::from_str(stored).unwrap();
    let spec = svc.spec.as_ref().unwrap();
    // Decoding leaves room in its lists (what there is to take back).
    assert!(spec.ports.as_ref().unwrap().capacity() > 1);
    let mut want = svc.clone();
    want.metadata.managed_fields = None;
    trim_service(&mut svc);
    assert_eq!(svc, want);
    let spec = svc.spec.as_ref().unwrap();
    let ingress = &svc
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .ingress;
    let ingress = ingress.as_ref().unwrap();
    let room = [
        spec.ports.as_ref().unwrap().capacity(),
        spec.cluster_ips.as_ref().unwrap().capacity(),
        spec.ip_families.as_ref().unwrap().capacity(),
        spec.external_ips.as_ref().unwrap().capacity(),
        ingress.capacity(),
        ingress[0].ports.as_ref().unwrap().capacity(),
    ];
    assert_eq!(room, [1; 6]);
}

#[test]
fn documents_split_at_their_markers_with_their_first_lines() {
    // Line by line, as the split was first written: a marker line (`---` alone or
    // before a blank) starts a document, except as the text's very first.
    let by_line = |text: &str| -> Vec<(usize, String)> {
        let is_marker = |l: &str| l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        let mut docs = Vec::new();
        let (mut start, mut start_line, mut offset) = (0, 1, 0);
        for (n, line) in text.split_inclusive('\n').enumerate() {
            if is_marker(line.trim_end_matches(['\n', '\r'])) && offset > start {
                docs.push((start_line, text[start..offset].to_string()));
                (start, start_line) = (offset, n + 1);
            }
            offset += line.len();
        }
        docs.push((start_line, text[start..].to_string()));
        docs
    };
    for text in [
        "",
        "a: 1\n",
        "---\na: 1\n---\nb: 2\n",
        "a: 1\n---\n---\nb: 2\n---\n",
        "a: 1\r\n---\r\nb: 2\r\n--- # c\r\nc: 3",
        "a: 1\n----\nb: 2\n --- \nc: ---\n---x\n--- |\n  t\n---\tz\n---",
        "\n\n---\n\na\n---",
        "---",
    ] {
        let split: Vec<(usize, String)> = yaml_documents(text)
            .map(|(l, d)| (l, d.to_string()))
            .collect();
        assert_eq!(split, by_line(text), "{text:?}");
    }
    assert_eq!(yaml_documents("a: 1\n%YAML 1.2\n---\nb: 2\n").count(), 1);
}

/// `value` with every mapping's keys in reverse order (as YAML keeps them).
fn reversed(value: &Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Value::Object(map) => Yaml::Mapping(
            map.iter()
                .rev()
                .map(|(k, v)| (Yaml::String(k.clone()), reversed(v)))
                .collect(),
        ),
        Value::Array(items) => Yaml::Sequence(items.iter().map(reversed).collect()),
        scalar => serde_yaml_ng::to_value(scalar).expect("a scalar"),
    }
}

/// `yaml` (one document) read by `parse_node` under `validation` (None: left to
/// `parse_object`), after checking that what it reads is what `parse_object`
/// reads from the document's value: the object, its warnings or the error.
fn read_from_nodes(
    yaml: &str,
    validation: FieldValidation,
) -> Option<Result<Parsed, ManifestError>> {
    let trees = block_yaml::trees(yaml)?;
    let [tree] = &trees[..] else {
        panic!("one document: {yaml}");
    };
    let got = parse_node("t.yaml", &tree.node, validation)?;
    let want = parse_object("t.yaml", 0, tree.node.clone().into_value(), validation);
    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{yaml}");
    Some(got)
}

const VALIDATIONS: [FieldValidation; 3] = [
    FieldValidation::Strict,
    FieldValidation::Warn,
    FieldValidation::Ignore,
];

#[test]
fn documents_typed_from_their_nodes_are_what_their_values_are_typed_as() {
    // Every object of Kubernetes' validation tables (valid and not, all three
    // kinds), as YAML with its keys sorted and reversed, with an unknown field
    // and without, read under each field validation twice (the second time its
    // shape is known clean).
    let mut objects = crate::store::conformance::objects();
    let with_unknown: Vec<Value> = objects
        .iter()
        .filter_map(|o| {
            let mut o = o.clone();
            o.get_mut("spec")?
                .as_object_mut()?
                .insert("fancy".into(), Value::from(1));
            Some(o)
        })
        .collect();
    objects.extend(with_unknown);
    let (mut from_nodes, mut refused) = (0, 0);
    for object in &objects {
        for yaml in [
            serde_yaml_ng::to_string(object).unwrap(),
            serde_yaml_ng::to_string(&reversed(object)).unwrap(),
        ] {
            for validation in VALIDATIONS {
                for _ in 0..2 {
                    if let Some(got) = read_from_nodes(&yaml, validation) {
                        from_nodes += 1;
                        refused += usize::from(got.is_err());
                    }
                }
            }
        }
    }
    // Most are read straight from their nodes, those refused by validation too.
    assert!(
        from_nodes > 6 * objects.len() && refused > 1000,
        "{from_nodes} read from nodes ({refused} refused) of {} objects",
        objects.len()
    );
    // Edges the tables do not write: nulls for optional fields (read from the
    // nodes), a port without `port` (which types as 0), values of the wrong type,
    // flow collections, quoted keys and values.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: e\n  labels: {kubernetes.io/service-name: s}\naddressType: IPv4\n";
    let with_nulls = [
        format!(
            "{svc}  labels: null\nspec:\n  clusterIP: null\n  selector: null\n  ports:\n  - {{port: 80, name: null, targetPort: null}}\n"
        ),
        format!(
            "{svc}  annotations: ~\nspec:\n  type: NodePort\n  externalIPs:\n  ports:\n  - port: 80\n    nodePort: null\n"
        ),
        format!(
            "{pod}  labels: {{app: a}}\nspec:\n  nodeName: ~\n  containers:\n  - name: c\n    image: i\n    ports: null\nstatus:\n  podIP: null\n"
        ),
        format!(
            "{slice}endpoints:\n- addresses: [10.0.0.1]\n  conditions: {{ready: null}}\n  nodeName: null\nports: null\n"
        ),
    ];
    for yaml in &with_nulls {
        for validation in VALIDATIONS {
            let got = read_from_nodes(yaml, validation);
            assert!(
                got.is_some_and(|g| g.is_ok()),
                "not read from its nodes: {yaml}"
            );
        }
    }
    let others = [
        format!("{svc}spec:\n  ports:\n  - targetPort: 80\n"),
        format!("{svc}spec:\n  ports:\n  - {{name: a, port: 80}}\n  - name: b\n"),
        format!("{svc}spec:\n  ports:\n  - port: \"80\"\n"),
        format!("{svc}spec:\n  ports: {{port: 80}}\n"),
        format!("{svc}spec:\n  'type': \"NodePort\"\n  ports: [{{port: 80, 'nodePort': 30080}}]\n"),
        format!(
            "{pod}spec:\n  containers: [{{name: c, image: i, ports: [{{containerPort: 8080, protocol: ''}}]}}]\n"
        ),
        format!("{pod}spec:\n  containers: c\n"),
        format!(
            "{pod}status:\n  podIP: 10.0.0.1\n  conditions:\n  - {{type: Ready, status: 'True'}}\n"
        ),
        format!("{slice}endpoints:\n- addresses: 10.0.0.1\n"),
        format!("{slice}endpoints: []\nports:\n- {{port: 80, protocol: UDP, name: ''}}\n"),
    ];
    for yaml in others.iter().chain(&with_nulls) {
        for validation in VALIDATIONS {
            for _ in 0..2 {
                read_from_nodes(yaml, validation);
            }
        }
    }
}
