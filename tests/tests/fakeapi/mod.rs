//! A fake Kubernetes API server for the Kubernetes-mode tests: the real list/watch
//! wire format for v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes
//! (JSON lists with a resourceVersion; watch streams of newline-delimited events
//! with bookmarks; `410 Gone` for a resourceVersion older than the compaction
//! point), plus what a test needs to stage trouble: an outage (every request gets
//! 503, open watches are cut) and a compaction that sends watchers back to relist.
//!
//! It listens on 127.0.0.1 of the namespace it is started in (the node's, where
//! the agent runs), served by a runtime on a thread of its own.

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
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
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
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

async fn collection(
    State((shared, kind, api_version)): State<(Shared, &'static str, &'static str)>,
    Query(p): Query<Params>,
) -> Response {
    let watch = matches!(p.watch.as_deref(), Some("true" | "1"));
    let (inner, events) = &*shared;
    let mut rx = events.subscribe();
    let (rv, backlog, epoch) = {
        let mut g = inner.lock().unwrap();
        if g.down {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(status(503, "ServiceUnavailable", "the API server is down")),
            )
                .into_response();
        }
        if !watch {
            g.lists += 1;
            let items: Vec<Value> = g
                .objects
                .iter()
                .filter(|((k, _), _)| k == kind)
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
            .filter(|e| e.rv > from && e.kind == kind)
            .map(|e| json!({"type": e.ty, "object": e.object}))
            .collect();
        (g.rv, backlog, g.epoch)
    };
    let _ = rv;
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(64);
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
                    Ok(e) if e.kind == kind => {
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

impl FakeApi {
    /// Starts serving on 127.0.0.1 (an ephemeral port) inside `ns`.
    pub fn start(ns: &Netns) -> Self {
        let listener = {
            let _in = InNetns::enter(ns).expect("enter the node namespace");
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake API server")
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
