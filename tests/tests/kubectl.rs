//! The real kubectl (1.37, from `cargo xtask test`'s setup) against `lb
//! api-server` serving a store: what a person types, checked against what the
//! store holds as lb's own CLI reads it.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{kubectl::ApiServer, lbctl::Lb};
use serde_json::Value;

/// The repository's examples (the seeds' manifests).
fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

/// A store of its own in a scratch directory, removed on drop.
struct Scratch {
    dir: std::path::PathBuf,
    lb: Lb,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lb-kubectl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lb = Lb::store_only(dir.join("store"));
        Scratch { dir, lb }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// How many objects of `kind` `lb get` lists.
    fn count(&self, kind: &str) -> usize {
        let out = self.lb.ok(&["get", kind, "-o", "json"]).unwrap();
        if out.trim().is_empty() {
            return 0;
        }
        serde_json::from_str::<Value>(&out).unwrap()["items"]
            .as_array()
            .unwrap()
            .len()
    }

    /// `lb get KIND NAME -o json`.
    fn stored(&self, kind: &str, name: &str) -> Value {
        let out = self.lb.ok(&["get", kind, name, "-o", "json"]).unwrap();
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first `n` columns of each line of a table.
fn columns(table: &str, n: usize) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().take(n).map(str::to_string).collect())
        .collect()
}

#[test]
fn kubectl_applies_the_seeds_manifests_and_lists_them_as_lb_get_does() {
    let s = Scratch::new("apply");
    let api = ApiServer::start(&s.lb).unwrap();
    let examples = examples().display().to_string();
    let applied = api.ok(&["apply", "-f", &examples]);
    for line in [
        "service/node-port-service created",
        "service/load-balancer-service created",
        "pod/myapp-pod created",
        "pod/myapp-pod-2 created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }
    // Applied again: nothing changes.
    let again = api.ok(&["apply", "-f", &examples]);
    assert_eq!(again.matches("unchanged").count(), 4, "{again}");

    // kubectl's table (the server's Table) and lb's agree on every column but AGE.
    let kubectl = api.ok(&["get", "svc"]);
    let lb = s.lb.ok(&["get", "svc"]).unwrap();
    assert_eq!(
        columns(&kubectl, 5),
        columns(&lb, 5),
        "kubectl:\n{kubectl}\nlb:\n{lb}"
    );
    let wide = api.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("IP") && wide.contains("10.244.0.2"),
        "{wide}"
    );

    // -o yaml / json: a List of the stored objects, as lb holds them.
    let list: Value = serde_json::from_str(&api.ok(&["get", "svc", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "List");
    let np = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "node-port-service")
        .unwrap();
    let stored = s.stored("svc", "node-port-service");
    assert_eq!(np["spec"]["clusterIP"], stored["spec"]["clusterIP"]);
    assert_eq!(np["metadata"]["uid"], stored["metadata"]["uid"]);
    assert!(
        api.ok(&["get", "svc", "-o", "yaml"])
            .starts_with("apiVersion: v1\nitems:")
    );
    assert_eq!(
        api.ok(&[
            "get",
            "svc",
            "node-port-service",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}"
        ]),
        "30008"
    );
    assert_eq!(
        api.ok(&["get", "svc", "-o", "name"]),
        "service/load-balancer-service\nservice/node-port-service\n"
    );
    let cols = api.ok(&[
        "get",
        "pods",
        "-o",
        "custom-columns=NAME:.metadata.name,IP:.status.podIP",
        "--no-headers",
    ]);
    assert_eq!(
        cols.split_whitespace().collect::<Vec<_>>(),
        ["myapp-pod", "10.244.0.2", "myapp-pod-2", "10.244.1.2"]
    );
    // `get all` reads the `all` category; aliases come from discovery.
    let all = api.ok(&["get", "all"]);
    assert!(
        all.contains("service/node-port-service") && all.contains("pod/myapp-pod"),
        "{all}"
    );
    // Selectors (label, field) are the server's.
    assert_eq!(
        api.ok(&["get", "po", "-l", "app=myapp", "-o", "name"])
            .lines()
            .count(),
        2
    );
    assert_eq!(api.ok(&["get", "po", "-l", "app!=myapp", "-o", "name"]), "");
    assert_eq!(
        api.ok(&[
            "get",
            "po",
            "--field-selector",
            "metadata.name=myapp-pod",
            "-o",
            "name"
        ]),
        "pod/myapp-pod\n"
    );
    // The OpenAPI documents carry the kinds' schemas: kubectl explain reads them.
    let explain = api.ok(&["explain", "svc.spec.ports.nodePort"]);
    assert!(explain.contains("FIELD: nodePort <integer>"), "{explain}");
    // Pages: kubectl lists in chunks (limit / continue) and sees every object.
    assert_eq!(
        api.ok(&["get", "po,svc", "--chunk-size=1", "-o", "name"])
            .lines()
            .count(),
        4
    );
    // kubectl delete.
    assert!(
        api.ok(&["delete", "-f", &examples])
            .contains("service \"node-port-service\" deleted")
    );
    assert_eq!(s.count("svc"), 0);
}

#[test]
fn label_annotate_patch_and_a_changed_apply_reach_the_store() {
    let s = Scratch::new("patch");
    let api = ApiServer::start(&s.lb).unwrap();
    let svc = std::fs::read_to_string(examples().join("node-port-service.yaml")).unwrap();
    let path = s.file("svc.yaml", &svc);
    api.ok(&["apply", "-f", &path]);
    let before = s.stored("svc", "node-port-service");

    api.ok(&["label", "svc", "node-port-service", "tier=web"]);
    api.ok(&["annotate", "svc", "node-port-service", "note=hi"]);
    let shown = api.ok(&[
        "get",
        "svc",
        "-l",
        "tier=web",
        "--show-labels",
        "--no-headers",
    ]);
    assert!(shown.contains("tier=web"), "{shown}");
    // Merge and JSON patches.
    api.ok(&[
        "patch",
        "svc",
        "node-port-service",
        "--type=merge",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    api.ok(&[
        "patch",
        "svc",
        "node-port-service",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/sessionAffinity","value":"ClientIP"}]"#,
    ]);
    // A patch the store's validation refuses changes nothing.
    let refused = api.kubectl(&[
        "patch",
        "svc",
        "node-port-service",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/ports/-","value":{"port":81}}]"#,
    ]);
    let (_, err) = text(&refused);
    assert!(err.contains("spec.ports[0].name: Required value"), "{err}");
    // A changed manifest applied: kubectl sends a strategic merge patch from its
    // last-applied annotation; ports merge by port, the label and the annotation
    // kubectl did not apply stay.
    let changed = svc.replace("port: 80\n", "port: 8080\n");
    assert_ne!(changed, svc);
    let path = s.file("svc2.yaml", &changed);
    let diff = api.kubectl(&["diff", "-f", &path]);
    let (out, _) = text(&diff);
    assert_eq!(diff.status.code(), Some(1), "kubectl diff: {out}");
    assert!(out.contains("+    port: 8080"), "{out}");
    assert!(
        !out.contains("resourceVersion"),
        "a dry run does not move the version: {out}"
    );
    assert!(api.ok(&["apply", "-f", &path]).contains("configured"));
    let after = s.stored("svc", "node-port-service");
    assert_eq!(after["metadata"]["labels"]["tier"], "web");
    assert_eq!(after["metadata"]["annotations"]["note"], "hi");
    assert_eq!(after["spec"]["sessionAffinity"], "ClientIP");
    assert_eq!(after["spec"]["externalTrafficPolicy"], "Local");
    // The clusterIP and the nodePort the service holds are kept.
    assert_eq!(after["spec"]["clusterIP"], before["spec"]["clusterIP"]);
    let ports: Vec<(i64, i64)> = after["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["nodePort"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert!(ports.contains(&(8080, 30008)), "{ports:?}");
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[test]
fn server_dry_runs_change_nothing() {
    let s = Scratch::new("dryrun");
    let api = ApiServer::start(&s.lb).unwrap();
    let pod = examples().join("myapp-pod.yaml").display().to_string();
    let out = api.ok(&["create", "-f", &pod, "--dry-run=server"]);
    assert!(out.contains("(server dry run)"), "{out}");
    assert_eq!(s.count("pods"), 0);
    api.ok(&["create", "-f", &pod]);
    let out = api.ok(&["delete", "pod", "myapp-pod", "--dry-run=server"]);
    assert!(out.contains("(server dry run)"), "{out}");
    assert_eq!(
        s.stored("pod", "myapp-pod")["metadata"]["name"],
        "myapp-pod"
    );
    api.ok(&["label", "pod", "myapp-pod", "x=y", "--dry-run=server"]);
    assert!(
        s.stored("pod", "myapp-pod")["metadata"]["labels"]
            .get("x")
            .is_none()
    );
}

/// The field errors of a refusal, one per line, however they are laid out.
fn field_errors(message: &str) -> Vec<String> {
    let mut errors: Vec<String> = message
        .split(['\n', '[', ']'])
        .flat_map(|l| l.split(", spec."))
        .map(|l| l.trim().trim_start_matches("* ").to_string())
        .filter(|l| {
            l.contains(": Invalid value")
                || l.contains(": Required value")
                || l.contains(": Unsupported value")
        })
        .map(|l| {
            let l = l.rsplit("is invalid: ").next().unwrap_or(&l).to_string();
            if l.starts_with("spec.") || l.starts_with("metadata.") {
                l
            } else {
                format!("spec.{l}")
            }
        })
        .collect();
    errors.sort();
    errors
}

#[test]
fn an_invalid_manifest_is_refused_with_the_field_errors_lb_apply_gives() {
    let s = Scratch::new("invalid");
    let api = ApiServer::start(&s.lb).unwrap();
    let bad = s.file(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  type: NodePort\n  sessionAffinity: Sometimes\n  ports:\n  - port: 0\n    targetPort: 80\n  selector:\n    app: x\n",
    );
    let out = api.kubectl(&["apply", "-f", &bad]);
    let (_, kerr) = text(&out);
    assert!(!out.status.success());
    assert!(kerr.contains("The Service \"bad\" is invalid"), "{kerr}");
    let lb = s.lb.cli(&["apply", "-f", &bad]).unwrap();
    let lerr = String::from_utf8_lossy(&lb.stderr).into_owned();
    let want = field_errors(&lerr);
    assert_eq!(want.len(), 2, "{lerr}");
    assert_eq!(field_errors(&kerr), want, "kubectl:\n{kerr}\nlb:\n{lerr}");
    // A misspelt field: strict validation, the same words.
    let typo = s.file(
        "typo.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: typo\nspec:\n  ports:\n  - port: 80\n    targetPortt: 8080\n",
    );
    let (_, kerr) = text(&api.kubectl(&["apply", "-f", &typo]));
    let lerr =
        String::from_utf8_lossy(&s.lb.cli(&["apply", "-f", &typo]).unwrap().stderr).into_owned();
    let words = "strict decoding error: unknown field \"spec.ports[0].targetPortt\"";
    assert!(
        kerr.contains(words) && lerr.contains(words),
        "kubectl: {kerr}\nlb: {lerr}"
    );
    // Nothing was stored.
    assert_eq!(s.count("svc"), 0);
    // Not found: the API server's words, as lb get's.
    let (_, kerr) = text(&api.kubectl(&["get", "svc", "nope"]));
    assert_eq!(
        kerr.trim(),
        "Error from server (NotFound): services \"nope\" not found"
    );
    let lerr =
        String::from_utf8_lossy(&s.lb.cli(&["get", "svc", "nope"]).unwrap().stderr).into_owned();
    assert!(lerr.contains("services \"nope\" not found"), "{lerr}");
}

#[test]
fn kubectl_get_watch_shows_a_change_as_it_happens() {
    let s = Scratch::new("watch");
    let api = ApiServer::start(&s.lb).unwrap();
    let pod = examples().join("myapp-pod.yaml").display().to_string();
    api.ok(&["apply", "-f", &pod]);
    let mut watch =
        api.kubectl_spawn(&["get", "pods", "-w", "--request-timeout=20s", "--no-headers"]);
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |want: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("kubectl get -w never printed a line with {want:?}");
    };
    next("myapp-pod");
    // A pod that stops being ready, changed through lb's own CLI.
    let unready = std::fs::read_to_string(&pod).unwrap().replace(
        "  podIP: 10.244.0.2\n",
        "  podIP: 10.244.0.2\n  conditions:\n  - {type: Ready, status: \"False\"}\n",
    );
    assert!(
        unready.contains("\"False\""),
        "the example pod has its podIP last"
    );
    s.lb.apply(&unready).unwrap();
    let line = next("0/1");
    assert!(line.starts_with("myapp-pod"), "{line}");
    api.ok(&["delete", "pod", "myapp-pod"]);
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn describe_shows_the_endpoints_the_slice_controller_made_from_the_pods() {
    let s = Scratch::new("describe");
    let api = ApiServer::start(&s.lb).unwrap();
    api.ok(&["apply", "-f", &examples().display().to_string()]);
    let got = lb_tests::Topology::wait_for(Duration::from_secs(10), || {
        let out = api.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=node-port-service",
        ]);
        out.contains("10.244.0.2,10.244.1.2").then_some(out)
    });
    assert!(
        got.is_some(),
        "no EndpointSlice with both pods: {}",
        api.ok(&["get", "endpointslices"])
    );
    let describe = api.ok(&["describe", "svc", "node-port-service"]);
    assert!(
        describe.contains("10.244.0.2:80,10.244.1.2:80"),
        "{describe}"
    );
    // A pod deleted: its endpoint goes.
    api.ok(&["delete", "pod", "myapp-pod-2"]);
    let gone = lb_tests::Topology::wait_for(Duration::from_secs(10), || {
        let out = api.ok(&["describe", "svc", "node-port-service"]);
        (out.contains("10.244.0.2:80") && !out.contains("10.244.1.2")).then_some(())
    });
    assert!(
        gone.is_some(),
        "{}",
        api.ok(&["describe", "svc", "node-port-service"])
    );
    // The service deleted: the controller's slices go with it.
    api.ok(&["delete", "svc", "node-port-service"]);
    let gone = lb_tests::Topology::wait_for(Duration::from_secs(10), || {
        api.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=node-port-service",
            "-o",
            "name",
        ])
        .is_empty()
        .then_some(())
    });
    assert!(gone.is_some());
}

#[test]
fn without_the_token_nothing_is_served() {
    let s = Scratch::new("auth");
    let api = ApiServer::start(&s.lb).unwrap();
    let config = std::fs::read_to_string(&api.kubeconfig).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_string();
    let wrong = config.replace(&token, &"x".repeat(token.len()));
    let path = s.file("wrong.kubeconfig", &wrong);
    let out = std::process::Command::new(lb_tests::kubectl::kubectl_bin())
        .env("KUBECONFIG", &path)
        .env("HOME", &s.dir)
        .args(["get", "svc"])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("You must be logged in to the server"), "{err}");
    // Plain HTTP is not served, and the files that let one in are the owner's.
    let http = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{}/api/v1/services", api.addr))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&http.stdout), "200");
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["token", "ca.key"] {
        let mode = std::fs::metadata(s.lb.store.join("api").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn a_watch_from_a_lists_version_sees_a_deletion_made_before_it_started() {
    // An informer lists, then watches from the list's version; an object deleted
    // in between must come as DELETED, or the informer's cache keeps it.
    let s = Scratch::new("gap");
    let api = ApiServer::start(&s.lb).unwrap();
    let pod = examples().join("myapp-pod.yaml").display().to_string();
    api.ok(&["apply", "-f", &pod]);
    // The list's version (the store's revision; kubectl's own output wraps
    // lists in a List of its own).
    let list: Value =
        serde_json::from_str(&s.lb.ok(&["get", "pods", "-o", "json"]).unwrap()).unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        rv.parse::<u64>().is_ok_and(|r| r > 0),
        "a list's resourceVersion: {rv:?}"
    );
    s.lb.ok(&["delete", "pod", "myapp-pod"]).unwrap();
    let dir = s.lb.store.join("api");
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg(format!(
            "https://{}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=2",
            api.addr
        ))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    let deleted: Vec<Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "DELETED")
        .collect();
    assert_eq!(
        deleted.len(),
        1,
        "{events}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deleted[0]["object"]["metadata"]["name"], "myapp-pod");
}
