//! `lb api-server`: the embedded store served over the Kubernetes API, so that
//! kubectl, Helm's output piped to kubectl, client-go and kube-rs programs manage
//! lb's objects as they would a cluster's: discovery, OpenAPI v3, get / list
//! (label and field selectors, pages) / watch / create / update / patch (JSON,
//! merge, strategic merge) / delete, `dryRun=All`, Table responses, and the API
//! server's Status errors. Writes go through `store::apply` as `lb apply`'s do.
//!
//! Safe by default: HTTPS only (a CA made in the store directory, see
//! [`credentials`]), every request but health checks needs the bearer token, and
//! it listens on 127.0.0.1 unless told otherwise.

pub mod credentials;
mod discovery;
mod handlers;
mod kept;
mod patch;
mod resource;
mod selector;
mod status;
mod table;
mod watch;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use self::{
    handlers::{Params, Reply},
    resource::Resource,
    status::ApiError,
    table::Include,
};
use crate::{
    model::MAX_OBJECT_BYTES,
    store::{Ranges, Store},
};

/// Where the API server listens unless told otherwise (the API server's port, on
/// loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";

pub struct ApiOptions {
    pub store: PathBuf,
    pub listen: SocketAddr,
    pub ranges: Ranges,
}

struct Shared {
    store: PathBuf,
    /// Bumped at each commit to the store (watches wait on it).
    commits: tokio::sync::watch::Receiver<u64>,
    /// The kept objects' writes (Leases, Nodes), for their watches.
    history: Arc<kept::History>,
    ranges: Ranges,
    token: String,
}

/// Serves the store until SIGTERM or SIGINT.
pub fn run(opts: ApiOptions) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(opts))
}

async fn serve(opts: ApiOptions) -> Result<()> {
    let store = Store::new(&opts.store);
    store.init()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let creds = credentials::server(&opts.store, addr)?;
    let tls = tls_config(&creds)?;
    credentials::set_address(&opts.store, addr)?;
    let (commit, commits) = tokio::sync::watch::channel(0u64);
    let _watcher = crate::store::on_commit(&opts.store, move || commit.send_modify(|n| *n += 1))
        .with_context(|| format!("watching store {}", opts.store.display()))?;
    let history = Arc::new(kept::History::new(store.kept_revision()?));
    let shared = Arc::new(Shared {
        commits,
        history,
        store: opts.store.clone(),
        ranges: opts.ranges.clone(),
        token: creds.token,
    });
    let app = Router::new().fallback(dispatch).with_state(shared);
    // The EndpointSlice controller, on a thread of its own (it blocks on the
    // store); it ends with the process.
    let dir = opts.store.clone();
    std::thread::Builder::new()
        .name("slice-controller".into())
        .spawn(move || {
            let stop = std::sync::atomic::AtomicBool::new(false);
            if let Err(e) = crate::slice_controller::run(&dir, &stop) {
                tracing::error!(error = %e, "the EndpointSlice controller stopped");
            }
        })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    println!(
        "lb api-server: serving the store {} at https://{addr} (kubeconfig: lb kubeconfig --store {})",
        opts.store.display(),
        opts.store.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn tls_config(creds: &credentials::ServerCredentials) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).context("the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a path names.
enum Route {
    Health,
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    OpenApiIndex,
    OpenApi(String),
    OpenApiV2,
    /// A resource's collection, one object, or its status.
    Objects {
        res: &'static Resource,
        namespace: Option<String>,
        name: Option<String>,
        status: bool,
    },
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Some(Route::Health),
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["openapi", "v2"] => return Some(Route::OpenApiV2),
        ["openapi", "v3"] => return Some(Route::OpenApiIndex),
        ["openapi", "v3", rest @ ..] => return Some(Route::OpenApi(rest.join("/"))),
        ["api", v] => return Some(Route::Resources(String::new(), v.to_string())),
        ["apis", g, v] => return Some(Route::Resources(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |name: &str| Resource::find(group, name).filter(|r| r.version == version);
    let objects = |res, namespace: Option<&str>, name: Option<&str>, status| Route::Objects {
        res,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        status,
    };
    Some(match rest {
        ["namespaces", ns, r] => objects(find(r).filter(|r| r.namespaced)?, Some(ns), None, false),
        ["namespaces", ns, r, name] => objects(
            find(r).filter(|r| r.namespaced)?,
            Some(ns),
            Some(name),
            false,
        ),
        ["namespaces", ns, r, name, "status"] => objects(
            find(r).filter(|r| r.namespaced && r.status)?,
            Some(ns),
            Some(name),
            true,
        ),
        [r] => objects(find(r)?, None, None, false),
        [r, name] if !find(r)?.namespaced => objects(find(r)?, None, Some(name), false),
        _ => return None,
    })
}

/// A request on a kept resource (Leases, Nodes).
#[allow(clippy::too_many_arguments)]
fn kept_request(
    store: &Store,
    history: &kept::History,
    res: &'static Resource,
    ns: Option<&str>,
    name: Option<&str>,
    method: Method,
    content_type: &str,
    body: &[u8],
    params: &Params,
    as_table: Option<Include>,
) -> Result<Reply, ApiError> {
    let json = || -> Result<Value, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not a JSON object: {e}"))
        })
    };
    let write = |name: &str, w: kept::Write<'_>, dry: bool| {
        kept::write(store, history, res, ns, name, w, dry)
    };
    match (method, name) {
        (Method::GET, None) => {
            handlers::list_reply(res, kept::list(store, res, ns, params)?, as_table)
        }
        (Method::GET, Some(n)) => kept::get(store, res, ns, n, as_table),
        (Method::POST, None) => {
            let v = json()?;
            let n = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            write(&n, kept::Write::Create(v), handlers::dry_run(params)?)
        }
        (Method::PUT, Some(n)) => {
            write(n, kept::Write::Update(json()?), handlers::dry_run(params)?)
        }
        (Method::PATCH, Some(n)) => {
            let (ty, p) = handlers::patch_body(content_type, body)?;
            write(n, kept::Write::Patch(ty, &p), handlers::dry_run(params)?)
        }
        (Method::DELETE, Some(n)) => write(
            n,
            kept::Write::Delete,
            handlers::delete_dry_run(body, params)?,
        ),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not served on {}",
            res.qualified()
        ))),
    }
}

fn json_reply(reply: Reply) -> Response {
    let mut r = Response::new(Body::from(reply.body));
    *r.status_mut() =
        axum::http::StatusCode::from_u16(reply.code).unwrap_or(axum::http::StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in reply.warnings {
        // The API server's form: `299 - "text"`.
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

fn value_reply(v: Value) -> Response {
    json_reply(Reply {
        code: 200,
        body: v.to_string(),
        warnings: Vec::new(),
    })
}

/// Whether the request carries the token (compared in constant time).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match serve_request(shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_request(shared: Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let route = route(parts.uri.path()).ok_or_else(ApiError::no_route)?;
    if matches!(route, Route::Health) {
        return Ok("ok".into_response());
    }
    if !authorized(&parts.headers, &shared.token) {
        return Err(ApiError::unauthorized());
    }
    let params: Params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let get_only = |v: Option<Value>| -> Result<Response, ApiError> {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_allowed("only GET is served here"));
        }
        v.map(value_reply).ok_or_else(ApiError::no_route)
    };
    let (res, namespace, name, status) = match route {
        Route::Health => unreachable!("answered above"),
        Route::Version => return get_only(Some(discovery::version())),
        Route::CoreVersions => return get_only(Some(discovery::core_versions())),
        Route::Groups => return get_only(Some(discovery::group_list())),
        Route::Group(g) => return get_only(discovery::group(&g)),
        Route::Resources(g, v) => return get_only(discovery::resource_list(&g, &v)),
        Route::OpenApiIndex => return get_only(Some(discovery::openapi_index())),
        Route::OpenApi(path) => return get_only(discovery::openapi_document(&path)),
        Route::OpenApiV2 => {
            let mut r = Response::new(Body::from(discovery::openapi_v2()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(discovery::OPENAPI_V2_PROTOBUF),
            );
            return Ok(r);
        }
        Route::Objects {
            res,
            namespace,
            name,
            status,
        } => (res, namespace, name, status),
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table =
        table::wanted(accept).then(|| Include::of(params.get("includeObject").map(String::as_str)));
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if parts.method == Method::GET && name.is_none() && watching {
        let (tx, rx) = futures::channel::mpsc::channel(64);
        tokio::spawn(watch::run(
            watch::Watch {
                store: shared.store.clone(),
                commits: shared.commits.clone(),
                history: shared.history.clone(),
                res,
                namespace,
                params,
                as_table,
            },
            tx,
        ));
        let mut r = Response::new(Body::from_stream(rx));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(body, MAX_OBJECT_BYTES + 1)
        .await
        .map_err(|_| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            )
        })?;
    let method = parts.method.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let store = Store::new(&shared.store);
        let ranges = &shared.ranges;
        let ns = namespace.as_deref().unwrap_or_default();
        if res.kept {
            return kept_request(
                &store,
                &shared.history,
                res,
                namespace.as_deref(),
                name.as_deref(),
                method,
                &content_type,
                &body,
                &params,
                as_table,
            );
        }
        match (method, name.as_deref(), status) {
            (Method::GET, None, _) => {
                let listed = handlers::list(&store, res, namespace.as_deref(), &params)?;
                handlers::list_reply(res, listed, as_table)
            }
            (Method::GET, Some(n), _) => {
                handlers::get(&store, res, namespace.as_deref(), n, as_table)
            }
            (Method::POST, None, _) => handlers::create(&store, ranges, res, ns, &body, &params),
            (Method::PUT, Some(n), false) => {
                handlers::update(&store, ranges, res, ns, n, &body, &params)
            }
            (Method::PATCH, Some(n), false) => {
                handlers::patch(&store, ranges, res, ns, n, &content_type, &body, &params)
            }
            (Method::DELETE, Some(n), false) => {
                handlers::delete(&store, res, ns, n, &body, &params)
            }
            (Method::PUT, Some(n), true) => {
                handlers::write_status(&store, res, ns, n, None, &body, &params)
            }
            (Method::PATCH, Some(n), true) => {
                handlers::write_status(&store, res, ns, n, Some(&content_type), &body, &params)
            }
            (m, _, _) => Err(ApiError::method_not_allowed(format!(
                "{m} is not served on {}",
                res.qualified()
            ))),
        }
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(json_reply(reply))
}
