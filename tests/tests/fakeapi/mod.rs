//! A fake Kubernetes API server for the Kubernetes-mode tests: the real list/watch
//! wire format for v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes
//! (JSON lists with a resourceVersion; watch streams of newline-delimited events
//! with bookmarks; `410 Gone` for a resourceVersion older than the compaction
//! point); coordination.k8s.io/v1 Leases with get / create / replace, where a
//! replace carrying an old resourceVersion gets `409 Conflict` and a create of an
//! existing one `409 AlreadyExists`, as the API server's compare-and-swap; Service
//! status written through the status subresource (JSON merge patch, conditional on
//! a resourceVersion it carries); and what a test needs to stage trouble: an outage
//! (every request gets 503, open watches are cut) and a compaction that sends
//! watchers back to relist.
//!
//! It listens on 127.0.0.1 of the namespace it is started in (the node's, where
//! the agent runs), or on an address of a LAN every node reaches, served by a
//! runtime on a thread of its own.

// Each test crate that includes it uses a part.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, patch},
};
use lb_tests::{Netns, topology::InNetns};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// The collections served: (path, kind of an item, apiVersion).
const KINDS: [(&str, &str, &str); 3] = [
    ("/api/v1/services", "Service", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    ("/api/v1/nodes", "Node", "v1"),
];

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: String,
    ty: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// (kind, namespace/name) -> object.
    objects: BTreeMap<(String, String), Value>,
    log: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// List requests served (any kind): a change that reaches a client with no new
    /// list came through a watch event.
    lists: u64,
    /// Writes clients made (lease and status writes).
    writes: u64,
    down: bool,
    /// Bumped to cut every open watch.
    epoch: u64,
}

type Shared = Arc<(Mutex<Inner>, broadcast::Sender<Event>)>;

pub struct FakeApi {
    shared: Shared,
    pub addr: SocketAddr,
    _rt: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("")
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    label_selector: Option<String>,
}

/// Whether `obj` lies in `namespace` (None: any) and has every `k=v` of `selector`.
fn selected(obj: &Value, namespace: Option<&str>, selector: Option<&str>) -> bool {
    let m = &obj["metadata"];
    namespace.is_none_or(|ns| m["namespace"].as_str() == Some(ns))
        && selector
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.is_empty())
            .all(|term| match term.split_once('=') {
                Some((k, v)) => m["labels"][k].as_str() == Some(v),
                None => !m["labels"][term].is_null(),
            })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

async fn collection(
    State((shared, kind, api_version)): State<(Shared, &'static str, &'static str)>,
    Query(p): Query<Params>,
) -> Response {
    list_or_watch(shared, kind, api_version, None, p).await
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(status(503, "ServiceUnavailable", "the API server is down")),
    )
        .into_response()
}

async fn list_or_watch(
    shared: Shared,
    kind: &'static str,
    api_version: &'static str,
    namespace: Option<String>,
    p: Params,
) -> Response {
    let (ns, sel) = (namespace.as_deref(), p.label_selector.as_deref());
    let watch = matches!(p.watch.as_deref(), Some("true" | "1"));
    let (inner, events) = &*shared;
    let mut rx = events.subscribe();
    let (rv, backlog, epoch) = {
        let mut g = inner.lock().unwrap();
        if g.down {
            return unavailable();
        }
        if !watch {
            g.lists += 1;
            let items: Vec<Value> = g
                .objects
                .iter()
                .filter(|((k, _), v)| k == kind && selected(v, ns, sel))
                .map(|(_, v)| v.clone())
                .collect();
            let list = json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": g.rv.to_string()}, "items": items});
            return axum::Json(list).into_response();
        }
        let from: u64 = p
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if from < g.compacted {
            // The API server answers a watch from a compacted version with an
            // ERROR event carrying 410, in a 200 stream.
            let line = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {from} ({})", g.compacted))});
            return stream_response(vec![line], None);
        }
        let backlog: Vec<Value> = g
            .log
            .iter()
            .filter(|e| e.rv > from && e.kind == kind && selected(&e.object, ns, sel))
            .map(|e| json!({"type": e.ty, "object": e.object}))
            .collect();
        (g.rv, backlog, g.epoch)
    };
    let _ = rv;
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (ns, sel) = (namespace, p.label_selector);
    let shared2 = shared.clone();
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(290).min(290));
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(line_bytes(&line))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) if e.kind == kind && selected(&e.object, ns.as_deref(), sel.as_deref()) => {
                        let line = json!({"type": e.ty, "object": e.object});
                        if tx.send(Ok(line_bytes(&line))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = bookmark.tick() => {
                    let (rv, cut) = {
                        let g = shared2.0.lock().unwrap();
                        (g.rv, g.epoch != epoch || g.down)
                    };
                    if cut { return; }
                    let line = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version,
                        "kind": kind, "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(Ok(line_bytes(&line))).await.is_err() { return; }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    stream_response(Vec::new(), Some(out))
}

fn line_bytes(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).expect("json");
    s.push(b'\n');
    Bytes::from(s)
}

fn stream_response(
    lines: Vec<Value>,
    rest: Option<mpsc::Receiver<Result<Bytes, Infallible>>>,
) -> Response {
    let head = futures::stream::iter(lines.into_iter().map(|l| Ok(line_bytes(&l))));
    let body = match rest {
        Some(rx) => Body::from_stream(futures::StreamExt::chain(
            head,
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }),
        )),
        None => Body::from_stream(head),
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in fields {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn failure(code: u16, reason: &str, message: String) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(status(code, reason, &message)),
    )
        .into_response()
}

/// How a write finds what it writes over.
enum Write {
    /// A new object: 409 AlreadyExists when there is one.
    Create,
    /// A whole object: 404 when there is none, 409 Conflict when its
    /// resourceVersion (if any) is not the current one.
    Replace,
    /// A merge patch of the status: the same checks; only `status` changes.
    Status,
}

/// Applies a write from a client under the store's lock, as the API server's
/// compare-and-swap does; the object written (with its new resourceVersion) or the
/// Status error.
fn client_write(shared: &Shared, kind: &str, key: String, body: Value, how: Write) -> Response {
    let (inner, events) = &**shared;
    let mut g = inner.lock().unwrap();
    if g.down {
        return unavailable();
    }
    let current = g.objects.get(&(kind.to_string(), key.clone())).cloned();
    let sent_rv = body["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let name = key.rsplit('/').next().unwrap_or("").to_string();
    let mut obj = match (&how, current) {
        (Write::Create, Some(_)) => {
            return failure(
                409,
                "AlreadyExists",
                format!("{kind}s \"{name}\" already exists"),
            );
        }
        (Write::Create, None) => body,
        (_, None) => return failure(404, "NotFound", format!("{kind}s \"{name}\" not found")),
        (_, Some(cur)) => {
            if sent_rv
                .as_deref()
                .is_some_and(|rv| Some(rv) != cur["metadata"]["resourceVersion"].as_str())
            {
                return failure(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {kind}s \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            match how {
                Write::Status => {
                    let mut next = cur.clone();
                    merge(
                        &mut next["status"],
                        body.get("status").unwrap_or(&Value::Null),
                    );
                    next
                }
                _ => body,
            }
        }
    };
    g.rv += 1;
    let rv = g.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let ty = if g
        .objects
        .insert((kind.to_string(), key), obj.clone())
        .is_some()
    {
        "MODIFIED"
    } else {
        "ADDED"
    };
    let e = Event {
        rv,
        kind: kind.to_string(),
        ty,
        object: obj.clone(),
    };
    g.log.push(e.clone());
    let _ = events.send(e);
    g.writes += 1;
    let code = if matches!(how, Write::Create) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, axum::Json(obj)).into_response()
}

fn bad_body(e: serde_json::Error) -> Response {
    failure(400, "BadRequest", format!("the body is not JSON: {e}"))
}

const LEASE: (&str, &str) = ("Lease", "coordination.k8s.io/v1");

/// A lease as its URL names it: its namespace (and name), kind and apiVersion.
fn as_lease(obj: &mut Value, ns: &str, name: Option<&str>) {
    obj["metadata"]["namespace"] = json!(ns);
    if let Some(name) = name {
        obj["metadata"]["name"] = json!(name);
    }
    obj["kind"] = json!(LEASE.0);
    obj["apiVersion"] = json!(LEASE.1);
}

async fn leases(
    State(shared): State<Shared>,
    Path(ns): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    list_or_watch(shared, LEASE.0, LEASE.1, Some(ns), p).await
}

async fn lease_create(
    State(shared): State<Shared>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let mut obj: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_body(e),
    };
    as_lease(&mut obj, &ns, None);
    let key = key_of(&obj);
    client_write(&shared, LEASE.0, key, obj, Write::Create)
}

async fn lease_get(
    State(shared): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let g = shared.0.lock().unwrap();
    if g.down {
        return unavailable();
    }
    match g
        .objects
        .get(&(LEASE.0.to_string(), format!("{ns}/{name}")))
    {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => failure(
            404,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn lease_replace(
    State(shared): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut obj: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_body(e),
    };
    as_lease(&mut obj, &ns, Some(&name));
    client_write(
        &shared,
        LEASE.0,
        format!("{ns}/{name}"),
        obj,
        Write::Replace,
    )
}

async fn service_status(
    State(shared): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice(&body) {
        Ok(patch) => client_write(
            &shared,
            "Service",
            format!("{ns}/{name}"),
            patch,
            Write::Status,
        ),
        Err(e) => bad_body(e),
    }
}

impl FakeApi {
    /// Starts serving on 127.0.0.1 (an ephemeral port) inside `ns`.
    pub fn start(ns: &Netns) -> Self {
        Self::start_on(ns, "127.0.0.1")
    }

    /// Starts serving on `ip` (an ephemeral port) inside `ns`.
    pub fn start_on(ns: &Netns, ip: &str) -> Self {
        let listener = {
            let _in = InNetns::enter(ns).expect("enter the API server's namespace");
            std::net::TcpListener::bind((ip, 0)).expect("bind the fake API server")
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(4096);
        let shared: Shared = Arc::new((Mutex::new(Inner::default()), events));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = shared.clone();
        let rt = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut app = Router::new();
                for (path, kind, api_version) in KINDS {
                    app = app.route(
                        path,
                        get(collection).with_state((s2.clone(), kind, api_version)),
                    );
                }
                app = app
                    .route(
                        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                        get(leases).post(lease_create).with_state(s2.clone()),
                    )
                    .route(
                        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                        get(lease_get).put(lease_replace).with_state(s2.clone()),
                    )
                    .route(
                        "/api/v1/namespaces/{ns}/services/{name}/status",
                        patch(service_status).with_state(s2.clone()),
                    );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        FakeApi {
            shared,
            addr,
            _rt: rt,
            stop: Some(stop_tx),
        }
    }

    /// A kubeconfig for this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test}}\ncurrent-context: fake\n",
            self.addr
        )
    }

    fn write(&self, obj: Value, delete: bool, announce: bool) {
        let (inner, events) = &*self.shared;
        let mut g = inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = obj["kind"]
            .as_str()
            .expect("an object with a kind")
            .to_string();
        let key = (kind.clone(), key_of(&obj));
        let ty = if delete {
            g.objects.remove(&key);
            "DELETED"
        } else if g.objects.insert(key, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if announce {
            let e = Event {
                rv,
                kind,
                ty,
                object: obj,
            };
            g.log.push(e.clone());
            let _ = events.send(e);
        }
    }

    /// Creates or replaces an object (an ADDED or MODIFIED event).
    pub fn put(&self, obj: Value) {
        self.write(obj, false, true);
    }

    /// Deletes an object (a DELETED event).
    pub fn delete(&self, obj: Value) {
        self.write(obj, true, true);
    }

    /// Changes an object without any watcher hearing of it (as if the events were
    /// compacted away): only a relist can find out.
    pub fn put_unannounced(&self, obj: Value) {
        self.write(obj, false, false);
    }

    pub fn delete_unannounced(&self, obj: Value) {
        self.write(obj, true, false);
    }

    /// Compacts history as etcd does: every watch is cut, and resuming from any
    /// version before the current one gets `410 Gone`, so watchers must relist; a
    /// watch from the version a fresh list returns is served.
    pub fn compact(&self) {
        let mut g = self.shared.0.lock().unwrap();
        g.compacted = g.rv;
        g.log.clear();
        g.epoch += 1;
    }

    /// The object of `kind` named `namespace/name` (`/name` for cluster-scoped ones).
    pub fn object(&self, kind: &str, key: &str) -> Option<Value> {
        let g = self.shared.0.lock().unwrap();
        g.objects.get(&(kind.to_string(), key.to_string())).cloned()
    }

    /// Writes clients made so far.
    pub fn writes(&self) -> u64 {
        self.shared.0.lock().unwrap().writes
    }

    /// List requests served so far.
    pub fn lists(&self) -> u64 {
        self.shared.0.lock().unwrap().lists
    }

    /// Down: every request gets 503 and open watches are cut. Up: served again.
    pub fn set_down(&self, down: bool) {
        let mut g = self.shared.0.lock().unwrap();
        g.down = down;
        g.epoch += 1;
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
