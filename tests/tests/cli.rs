//! The CLI as a person uses it, against a store of its own: kubectl's words and
//! tables, expose, completions, and manifests applied all or nothing.

use lb_tests::lbctl::Lb;

/// A store in a fresh temporary directory, removed on drop.
struct Scratch(Lb);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(Lb::store_only(dir))
    }
    fn err(&self, args: &[&str]) -> String {
        let out = self.0.cli(args).unwrap();
        assert!(!out.status.success(), "lb {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.store);
    }
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\n  labels: {app: hello}\nspec:\n  containers:\n  - name: web\n    image: app\n    ports: [{containerPort: 80}]\nstatus:\n  podIP: 10.244.0.2\n";

#[test]
fn expose_makes_a_service_from_a_pods_labels() {
    let s = Scratch::new("expose");
    s.0.apply(POD).unwrap();
    let out =
        s.0.ok(&[
            "expose",
            "pod",
            "hello",
            "--name=hello-svc",
            "--port=8080",
            "--target-port=80",
            "--type=NodePort",
        ])
        .unwrap();
    assert_eq!(out, "service/hello-svc exposed\n");
    let table = s.0.ok(&["get", "svc"]).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..2], ["hello-svc", "NodePort"]);
    assert!(row[2].starts_with("10."), "{table}");
    assert_eq!(row[3], "<none>");
    let np: u16 = row[4]
        .strip_prefix("8080:")
        .and_then(|r| r.strip_suffix("/TCP"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("8080:NODEPORT/TCP expected: {table}"));
    assert!((30000..=32767).contains(&np));
    // The selector is the pod's labels, the target port the one asked for.
    let yaml = s.0.ok(&["get", "svc", "hello-svc", "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&yaml).unwrap();
    assert_eq!(v["spec"]["selector"]["app"], "hello");
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
    // Exposing again under the same name is refused, as kubectl does.
    let again = s.err(&["expose", "pod", "hello", "--name=hello-svc", "--port=8080"]);
    assert!(again.contains("already exists"), "{again}");
    // Without --port, the pod's container port.
    s.0.ok(&["expose", "pod", "hello", "--name=plain"]).unwrap();
    let plain = s.0.ok(&["get", "svc", "plain"]).unwrap();
    assert!(
        plain.contains("ClusterIP") && plain.contains("80/TCP"),
        "{plain}"
    );
    let missing = s.err(&["expose", "pod", "nobody", "--port=80"]);
    assert!(missing.contains("pods \"nobody\" not found"), "{missing}");
}

#[test]
fn completions_and_help_come_from_the_same_definition() {
    let s = Scratch::new("complete");
    for shell in ["bash", "zsh", "fish"] {
        let script = s.0.ok(&["completion", shell]).unwrap();
        assert!(
            script.contains("expose") && script.contains("conntrack"),
            "{shell} completion names the subcommands"
        );
        if shell != "fish" {
            assert!(script.contains("endpointslices"), "{shell}: resources too");
        }
    }
    let help = s.0.ok(&["expose", "--help"]).unwrap();
    assert!(
        help.contains("Examples:") && help.contains("--target-port"),
        "{help}"
    );
}

#[test]
fn a_bad_document_applies_nothing_and_names_file_document_object_field() {
    let s = Scratch::new("atomic");
    let good = "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\nspec:\n  type: NodePort\n  ports:\n  - {port: 80, nodePort: 30100}\n---\n";
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  type: NodePort\n  ports:\n  - {port: 80, nodePort: 40000}\n";
    let file = s.0.store.join("two.yaml");
    std::fs::write(&file, format!("{good}{bad}")).unwrap();
    let err = s.err(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("two.yaml (document 2): The Service \"bad\" is invalid: spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{err}"
    );
    let none = s.0.cli(&["get", "svc"]).unwrap();
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found"),
        "the good document was not applied either"
    );
    // A nodePort another service holds is refused, naming both.
    s.0.apply(good).unwrap();
    let taken = good.replace("name: good", "name: other");
    std::fs::write(&file, taken).unwrap();
    let err = s.err(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("The Service \"other\" is invalid: spec.ports[0].nodePort: Invalid value: 30100: provided port is already allocated"),
        "{err}"
    );
}

#[test]
fn a_manifest_larger_than_a_batch_is_stored_whole_or_not_at_all() {
    // lb apply stores a long manifest batch after batch (4,096 documents each) in one
    // transaction: a refusal in a later batch must undo the earlier ones.
    let s = Scratch::new("batches");
    let n = 5_000;
    let services: String = (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{port: 80}}]\n---\n",
                100 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    let file = s.0.store.join("many.yaml");
    let conflict = "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  clusterIP: 10.96.100.2\n  ports: [{port: 80}]\n";
    let syntax = "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n";
    for (last, says) in [
        (
            conflict,
            "many.yaml (document 5001): The Service \"late\" is invalid: spec.clusterIPs[0]: Invalid value: 10.96.100.2: failed to allocate IP 10.96.100.2: provided IP is already allocated",
        ),
        (
            syntax,
            "many.yaml: not valid YAML or JSON: line 35004 column 1",
        ),
    ] {
        std::fs::write(&file, format!("{services}{last}")).unwrap();
        let err = s.err(&["apply", "-f", file.to_str().unwrap()]);
        assert!(err.contains(says), "{err}");
        let none = s.0.cli(&["get", "svc"]).unwrap();
        assert!(
            String::from_utf8_lossy(&none.stderr).contains("No resources found"),
            "the first batch was undone: {}",
            String::from_utf8_lossy(&none.stdout)
        );
    }
    // Whole, every document is stored under one revision and reported in order.
    std::fs::write(&file, &services).unwrap();
    let out = s.0.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("service/s{i} created")).collect();
    assert_eq!(lines, expected);
    let listed = s.0.cli(&["get", "svc"]).unwrap();
    let rows = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert_eq!(rows, n + 1, "a header and every service");
    let list: serde_json::Value =
        serde_json::from_str(&s.0.ok(&["get", "svc", "-o", "json"]).unwrap()).unwrap();
    let versions: std::collections::BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["resourceVersion"].to_string())
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "one revision for the whole apply: {versions:?}"
    );
}

#[test]
fn describe_shows_ports_endpoints_and_what_the_node_could_not_program() {
    let s = Scratch::new("describe");
    s.0.apply(POD).unwrap();
    s.0.apply("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {tier: fe}\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports:\n  - {name: http, port: 8080, targetPort: 80, nodePort: 30080}\n")
        .unwrap();
    let bpffs = s.0.store.join("no-bpffs");
    let describe = |s: &Scratch| {
        s.0.ok(&[
            "describe",
            "svc",
            "web",
            "--node-name",
            "n1",
            "--bpffs",
            bpffs.to_str().unwrap(),
        ])
        .unwrap()
    };
    let out = describe(&s);
    for want in [
        "Name:                     web",
        "Labels:                   tier=fe",
        "Selector:                 app=hello",
        "Type:                     NodePort",
        "Port:                     http  8080/TCP",
        "TargetPort:               80/TCP",
        "NodePort:                 http  30080/TCP",
        "Endpoints:                10.244.0.2:80",
        "Traffic:                  <no agent maps for node n1",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("Not programmed"), "{out}");
    // What the node's agent reports it could not program is shown with the service.
    let status = s.0.store.join("status");
    std::fs::create_dir_all(&status).unwrap();
    std::fs::write(
        status.join("n1.json"),
        r#"{"node":"n1","refused":{"default/web":"map LB_SERVICES: inserting: full"}}"#,
    )
    .unwrap();
    let out = describe(&s);
    assert!(
        out.contains("Not programmed (node n1): map LB_SERVICES: inserting: full"),
        "{out}"
    );
    let missing = s.err(&["describe", "svc", "nope"]);
    assert!(missing.contains("services \"nope\" not found"), "{missing}");
}
