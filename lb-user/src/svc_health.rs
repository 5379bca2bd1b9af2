//! healthCheckNodePort: for every LoadBalancer service with `externalTrafficPolicy:
//! Local`, an HTTP listener on the node's `healthCheckNodePort` answering as
//! kube-proxy's service health server does: 200 with the number of the service's
//! ready endpoints on this node, 503 with none (or while the agent is not healthy),
//! so an external load balancer sends the service's traffic only to nodes that
//! serve it locally. Any path is answered. The listeners run on a thread of their
//! own; the agent says which ports should answer what after each round
//! ([`ServiceHealth::set`]).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse};
use tokio::{sync::watch, task::AbortHandle};
use tracing::{info, warn};

use crate::telemetry::Telemetry;

/// What one healthCheckNodePort answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// Port -> what it answers for.
pub type Targets = BTreeMap<u16, Target>;

pub struct ServiceHealth {
    wanted: watch::Sender<Targets>,
}

impl ServiceHealth {
    /// Starts the listeners' thread (no port yet); `telemetry` says whether the
    /// agent itself is healthy.
    pub fn start(telemetry: Arc<Telemetry>) -> Result<Self> {
        let (wanted, rx) = watch::channel(Targets::new());
        std::thread::Builder::new()
            .name("svc-health".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(follow(rx, telemetry)),
                    Err(e) => warn!(error = %e, "healthCheckNodePorts are not served"),
                }
            })
            .context("starting the healthCheckNodePort thread")?;
        Ok(ServiceHealth { wanted })
    }

    /// The ports that answer now, and what for.
    pub fn set(&self, targets: Targets) {
        self.wanted.send_if_modified(|now| {
            let changed = *now != targets;
            *now = targets;
            changed
        });
    }
}

type Shared = Arc<RwLock<Targets>>;

/// Listens on every wanted port and on no other, as the wanted set changes.
async fn follow(mut rx: watch::Receiver<Targets>, telemetry: Arc<Telemetry>) {
    let shared: Shared = Arc::default();
    let mut listening: BTreeMap<u16, AbortHandle> = BTreeMap::new();
    loop {
        let wanted = rx.borrow_and_update().clone();
        if let Ok(mut s) = shared.write() {
            s.clone_from(&wanted);
        }
        listening.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
                info!(port, "healthCheckNodePort closed");
            }
            keep
        });
        for (port, target) in &wanted {
            if listening.contains_key(port) {
                continue;
            }
            match listen(*port) {
                Ok(l) => {
                    info!(port, service = %format!("{}/{}", target.namespace, target.name), "healthCheckNodePort open");
                    let app = Router::new().fallback(answer).with_state((
                        *port,
                        Arc::clone(&shared),
                        Arc::clone(&telemetry),
                    ));
                    let task = tokio::spawn(async move {
                        if let Err(e) = axum::serve(l, app).await {
                            warn!(error = %e, "healthCheckNodePort listener stopped");
                        }
                    });
                    listening.insert(*port, task.abort_handle());
                }
                // Tried again at the next change of the wanted set.
                Err(e) => warn!(
                    port,
                    error = format!("{e:#}"),
                    "healthCheckNodePort not served"
                ),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn listen(port: u16) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

/// kube-proxy's answer: the service, its local endpoints and whether the proxy is
/// healthy; 200 only with both.
async fn answer(
    State((port, shared, telemetry)): State<(u16, Shared, Arc<Telemetry>)>,
) -> impl IntoResponse {
    let target = shared.read().ok().and_then(|s| s.get(&port).cloned());
    let healthy = telemetry.healthy();
    let (code, body) = match target {
        Some(t) => (
            if t.local_endpoints > 0 && healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "service": {"namespace": t.namespace, "name": t.name},
                "localEndpoints": t.local_endpoints,
                "serviceProxyHealthy": healthy,
            }),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"localEndpoints": 0, "serviceProxyHealthy": healthy}),
        ),
    };
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
