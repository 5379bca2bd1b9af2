//! The verbs on the store's objects (get, list, create, update, patch, delete,
//! and the status subresource), each a blocking call on one [`Store`]: request
//! parameters in, a reply or the API server's refusal out. Writes decode bodies
//! with the manifest reader `lb apply` uses and store them with the same
//! `store::apply` (defaults, validation, allocation: one code path).

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    patch::{self, PatchType},
    resource::Resource,
    selector::{FieldSelector, LabelSelector},
    status::ApiError,
    table::{self, Include},
};
use crate::{
    model::{
        Document, FieldValidation, Kind, MAX_OBJECT_BYTES, Object, ObjectKey, read_manifest_with,
    },
    store::{ListQuery, Mode, Outcome, Ranges, Store, StoreError},
};

/// A request's query parameters.
pub type Params = HashMap<String, String>;

/// A reply: the HTTP code, the body (JSON), and warnings for the `Warning` header.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub body: String,
    pub warnings: Vec<String>,
}

impl Reply {
    fn ok(body: String) -> Reply {
        Reply {
            code: 200,
            body,
            warnings: Vec::new(),
        }
    }
}

/// Namespaces that always exist (the API server's).
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];

/// The fields a kind may be selected on, beyond metadata.name and namespace.
fn selectable(kind: Option<Kind>) -> &'static [&'static str] {
    match kind {
        Some(Kind::Pod) => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "status.phase",
            "status.podIP",
        ],
        Some(Kind::Service) => &["spec.clusterIP", "spec.type"],
        _ => &[],
    }
}

/// The selectors of a list or watch.
pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    pub fn of(res: &Resource, q: &Params) -> Result<Selectors, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            q.get("fieldSelector").map_or("", String::as_str),
            selectable(res.stored),
        )
        .map_err(ApiError::bad_request)?;
        Ok(Selectors { labels, fields })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels
            .matches(object["metadata"]["labels"].as_object())
            && self.fields.matches(object)
    }

    /// Whether a stored body matches (parsed only when something is selected).
    pub fn matches_text(&self, body: &str) -> bool {
        self.is_empty() || serde_json::from_str(body).is_ok_and(|v| self.matches(&v))
    }
}

/// `dryRun=All`.
pub fn dry_run(q: &Params) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dry run value: {other}: supported values: \"All\""
        ))),
    }
}

/// `fieldValidation` (the API server's default is Warn; kubectl sends Strict).
fn field_validation(q: &Params) -> Result<FieldValidation, ApiError> {
    match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation {other} is invalid: supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// A list page's continue token: the revision and the last key served.
fn continue_token(rev: u64, last: &ObjectKey) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{rev}:{last}"))
}

fn after_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (_, key) = text.split_once(':').ok_or_else(bad)?;
    Ok(key.to_string())
}

/// What a list serves: objects as JSON text, the revision, the continue token.
pub struct Listed {
    pub rev: u64,
    pub items: Vec<String>,
    pub cont: Option<String>,
}

pub fn list(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    q: &Params,
) -> Result<Listed, ApiError> {
    let selectors = Selectors::of(res, q)?;
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(ApiError::bad_request("limit must be a number")),
    };
    let Some(kind) = res.stored else {
        return unstored_list(store, res, &selectors);
    };
    let after = q
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|c| after_token(c))
        .transpose()?;
    let query = ListQuery {
        namespace: ns.map(str::to_string),
        after,
        limit,
    };
    let page = store
        .list_rows(kind, &query, |body| selectors.matches_text(body))
        .map_err(ApiError::internal)?;
    let cont = page
        .more
        .then(|| {
            page.rows
                .last()
                .map(|r| continue_token(page.revision, &r.key))
        })
        .flatten();
    Ok(Listed {
        rev: page.revision,
        items: page.rows.into_iter().filter_map(|r| r.body).collect(),
        cont,
    })
}

/// Namespaces (those of the stored objects and the system's), events (none).
fn unstored_list(store: &Store, res: &Resource, selectors: &Selectors) -> Result<Listed, ApiError> {
    let rev = store.revision().map_err(ApiError::internal)?;
    let items = match res.name {
        "namespaces" => namespaces(store)?
            .into_iter()
            .map(|n| namespace(&n, rev))
            .filter(|n| selectors.matches(n))
            .map(|n| n.to_string())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Listed {
        rev,
        items,
        cont: None,
    })
}

fn namespaces(store: &Store) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = store.namespaces().map_err(ApiError::internal)?;
    names.extend(SYSTEM_NAMESPACES.iter().map(|s| s.to_string()));
    names.sort();
    names.dedup();
    Ok(names)
}

fn namespace(name: &str, rev: u64) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": rev.to_string(),
                     "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A list as JSON (`ServiceList`) or as a Table.
pub fn list_reply(
    res: &Resource,
    listed: Listed,
    as_table: Option<Include>,
) -> Result<Reply, ApiError> {
    if let Some(include) = as_table {
        let objects: Vec<Value> = listed
            .items
            .iter()
            .filter_map(|i| serde_json::from_str(i).ok())
            .collect();
        let t = table::of(
            res.stored,
            &objects,
            listed.rev,
            listed.cont.as_deref(),
            include,
        );
        return Ok(Reply::ok(t.to_string()));
    }
    let mut meta = json!({"resourceVersion": listed.rev.to_string()});
    if let Some(c) = &listed.cont {
        meta["continue"] = json!(c);
    }
    // The stored bodies go out as they are, never parsed.
    let mut body = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        res.kind,
        res.api_version(),
        meta
    );
    for (i, item) in listed.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}");
    Ok(Reply::ok(body))
}

/// One object, as JSON or as a Table of one.
pub fn get(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    as_table: Option<Include>,
) -> Result<Reply, ApiError> {
    let (body, rev) = match res.stored {
        Some(kind) => {
            let key = ObjectKey::new(ns.unwrap_or_default(), name);
            let row = store
                .row(kind, &key)
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::not_found(res, name))?;
            (row.body.unwrap_or_default(), row.rev)
        }
        None if res.name == "namespaces" => {
            if !namespaces(store)?.iter().any(|n| n == name) {
                return Err(ApiError::not_found(res, name));
            }
            let rev = store.revision().map_err(ApiError::internal)?;
            (namespace(name, rev).to_string(), rev)
        }
        None => return Err(ApiError::not_found(res, name)),
    };
    one_reply(res, body, rev, as_table)
}

/// One object (`body`, written at `rev`) as JSON or as a Table of one.
pub fn one_reply(
    res: &Resource,
    body: String,
    rev: u64,
    as_table: Option<Include>,
) -> Result<Reply, ApiError> {
    match as_table {
        Some(include) => {
            let object: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
            Ok(Reply::ok(
                table::of(res.stored, &[object], rev, None, include).to_string(),
            ))
        }
        None => Ok(Reply::ok(body)),
    }
}

/// Why a write inside the store's transaction stopped.
pub enum WriteError {
    Api(ApiError),
    Store(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

impl From<ApiError> for WriteError {
    fn from(e: ApiError) -> Self {
        WriteError::Api(e)
    }
}

impl WriteError {
    pub fn api(self, res: &Resource) -> ApiError {
        match self {
            WriteError::Api(e) => e,
            WriteError::Store(e) => ApiError::of_store(res, e),
        }
    }
}

/// A request body as one object of `res` in namespace `ns`, read as `lb apply`
/// reads a manifest (defaults, validation of the object alone); warnings for
/// unknown fields under `Warn`.
fn decode(
    res: &Resource,
    ns: &str,
    body: &[u8],
    validation: FieldValidation,
) -> Result<(Document, Vec<String>), ApiError> {
    if body.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    // The object's namespace, set from the URL when the body names none (before
    // decoding, which would default it).
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a JSON object: {e}"))
    })?;
    let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request(
            "metadata: Required value: the object has no metadata",
        ));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(ns));
        }
        Some(given) if given != ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Some(_) => {}
    }
    let want = (res.api_version(), res.kind);
    let got = (
        value["apiVersion"].as_str().unwrap_or_default().to_string(),
        value["kind"].as_str().unwrap_or_default(),
    );
    if got.0 != want.0 || got.1 != want.1 {
        return Err(ApiError::bad_request(format!(
            "the object's apiVersion and kind ({} {}) are not those of {} ({} {})",
            got.0,
            got.1,
            res.qualified(),
            want.0,
            want.1
        )));
    }
    let manifest = read_manifest_with("request", &value.to_string(), validation)
        .map_err(|e| ApiError::of_manifest(res, e))?;
    let mut docs = manifest.docs.into_iter();
    let (Some(doc), None) = (docs.next(), docs.next()) else {
        return Err(ApiError::bad_request(
            "the request body holds no single object",
        ));
    };
    Ok((doc, manifest.warnings))
}

fn object_reply(code: u16, object: &Object, warnings: Vec<String>) -> Result<Reply, ApiError> {
    Ok(Reply {
        code,
        body: object.to_json().map_err(ApiError::internal)?.to_string(),
        warnings,
    })
}

pub fn create(
    store: &Store,
    ranges: &Ranges,
    res: &Resource,
    ns: &str,
    body: &[u8],
    q: &Params,
) -> Result<Reply, ApiError> {
    let kind = res.stored.ok_or_else(|| {
        ApiError::method_not_allowed(format!("{} are not created through lb's API", res.name))
    })?;
    let (doc, warnings) = decode(res, ns, body, field_validation(q)?)?;
    let key = doc.object.key();
    if key.name.is_empty() {
        return Err(ApiError::invalid_fields(
            res,
            "",
            &[crate::model::FieldError::required("metadata.name")],
        ));
    }
    let (_, object) = store
        .write_one(kind, &key, ranges, Mode::Create, dry_run(q)?, |_| {
            Ok::<_, WriteError>(doc)
        })
        .map_err(|e| e.api(res))?;
    object_reply(201, &object, warnings)
}

/// The name in the body must be the URL's.
fn same_name(doc: &Document, name: &str) -> Result<(), ApiError> {
    let given = doc.object.key().name;
    if given != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

pub fn update(
    store: &Store,
    ranges: &Ranges,
    res: &Resource,
    ns: &str,
    name: &str,
    body: &[u8],
    q: &Params,
) -> Result<Reply, ApiError> {
    let kind = res
        .stored
        .ok_or_else(|| ApiError::method_not_allowed("not updatable"))?;
    let (doc, warnings) = decode(res, ns, body, field_validation(q)?)?;
    same_name(&doc, name)?;
    let key = ObjectKey::new(ns, name);
    let wanted = doc
        .object
        .meta()
        .resource_version
        .clone()
        .filter(|v| !v.is_empty());
    let (outcome, object) = store
        .write_one(kind, &key, ranges, Mode::Apply, dry_run(q)?, |current| {
            let current = current.ok_or_else(|| ApiError::not_found(res, name))?;
            if wanted.is_some() && wanted != current.meta().resource_version {
                return Err(ApiError::conflict(res, name).into());
            }
            Ok::<_, WriteError>(doc)
        })
        .map_err(|e| e.api(res))?;
    object_reply(
        if outcome == Outcome::Created {
            201
        } else {
            200
        },
        &object,
        warnings,
    )
}

/// Parses a PATCH body of `content_type`.
pub fn patch_body(content_type: &str, body: &[u8]) -> Result<(PatchType, Value), ApiError> {
    let ty = PatchType::of(content_type).ok_or_else(|| {
        let message = if content_type.starts_with("application/apply-patch") {
            "server-side apply is not served by lb: use client-side apply (kubectl apply without --server-side)".to_string()
        } else {
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type})")
        };
        ApiError::new(415, "UnsupportedMediaType", message)
    })?;
    let patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
    Ok((ty, patch))
}

/// `current` patched; a patch may not change the resourceVersion it was made
/// from (a precondition) or the name.
fn patched(
    res: &Resource,
    current: &Object,
    ty: PatchType,
    patch: &Value,
    name: &str,
) -> Result<Value, ApiError> {
    patch_json(
        res,
        current.to_json().map_err(ApiError::internal)?,
        ty,
        patch,
        name,
    )
}

/// `current` (an object's JSON) patched; a patch may not change the
/// resourceVersion it was made from (a precondition): the result keeps it.
pub fn patch_json(
    res: &Resource,
    mut v: Value,
    ty: PatchType,
    patch: &Value,
    name: &str,
) -> Result<Value, ApiError> {
    let before = v["metadata"]["resourceVersion"].clone();
    patch::apply(&mut v, patch, ty, res.kind).map_err(|m| ApiError::new(422, "Invalid", m))?;
    if v["metadata"]["resourceVersion"] != before && !v["metadata"]["resourceVersion"].is_null() {
        return Err(ApiError::conflict(res, name));
    }
    v["metadata"]["resourceVersion"] = before;
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
pub fn patch(
    store: &Store,
    ranges: &Ranges,
    res: &Resource,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    q: &Params,
) -> Result<Reply, ApiError> {
    let kind = res
        .stored
        .ok_or_else(|| ApiError::method_not_allowed("not patchable"))?;
    let (ty, patch) = patch_body(content_type, body)?;
    let validation = field_validation(q)?;
    let key = ObjectKey::new(ns, name);
    let mut warnings = Vec::new();
    let (_, object) = store
        .write_one(kind, &key, ranges, Mode::Apply, dry_run(q)?, |current| {
            let current = current.ok_or_else(|| ApiError::not_found(res, name))?;
            let v = patched(res, current, ty, &patch, name)?;
            let (doc, w) = decode(res, ns, v.to_string().as_bytes(), validation)?;
            same_name(&doc, name)?;
            warnings = w;
            Ok::<_, WriteError>(doc)
        })
        .map_err(|e| e.api(res))?;
    object_reply(200, &object, warnings)
}

/// DeleteOptions as kubectl sends them (in the body): `dryRun`, preconditions.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    #[serde(default)]
    dry_run: Vec<String>,
    #[serde(default)]
    preconditions: Option<Preconditions>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

/// The DeleteOptions of a DELETE's body (none: the defaults).
fn delete_options(body: &[u8]) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions are not valid: {e}")))
}

/// Whether a DELETE is a dry run (its query or its DeleteOptions say so).
pub fn delete_dry_run(body: &[u8], q: &Params) -> Result<bool, ApiError> {
    Ok(dry_run(q)? || delete_options(body)?.dry_run.iter().any(|d| d == "All"))
}

pub fn delete(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    body: &[u8],
    q: &Params,
) -> Result<Reply, ApiError> {
    let kind = res
        .stored
        .ok_or_else(|| ApiError::method_not_allowed("not deletable"))?;
    let options = delete_options(body)?;
    let dry = dry_run(q)? || options.dry_run.iter().any(|d| d == "All");
    let key = ObjectKey::new(ns, name);
    let row = store
        .row(kind, &key)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(res, name))?;
    let object: Value = row
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    if let Some(p) = &options.preconditions {
        let meta = &object["metadata"];
        let stale = |want: &Option<String>, field: &str| {
            want.as_ref()
                .is_some_and(|w| meta[field].as_str() != Some(w.as_str()))
        };
        if stale(&p.uid, "uid") || stale(&p.resource_version, "resourceVersion") {
            return Err(ApiError::conflict(res, name));
        }
    }
    if !dry {
        store
            .delete(&[(kind, key)])
            .map_err(|e| ApiError::of_store(res, e))?;
    }
    // As the API server answers a delete that completes at once: the object.
    Ok(Reply::ok(object.to_string()))
}

/// PUT or PATCH of the status subresource: only `status` changes.
#[allow(clippy::too_many_arguments)]
pub fn write_status(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
    q: &Params,
) -> Result<Reply, ApiError> {
    let kind = res
        .stored
        .filter(|_| res.status)
        .ok_or_else(ApiError::no_route)?;
    let key = ObjectKey::new(ns, name);
    let object = store
        .write_status(kind, &key, dry_run(q)?, |object| {
            let next = match content_type {
                Some(ct) => {
                    let (ty, patch) = patch_body(ct, body)?;
                    patched(res, object, ty, &patch, name)?
                }
                None => {
                    let v: Value = serde_json::from_slice(body).map_err(|e| {
                        ApiError::bad_request(format!("the request body is not JSON: {e}"))
                    })?;
                    let wanted = v["metadata"]["resourceVersion"]
                        .as_str()
                        .filter(|s| !s.is_empty());
                    if wanted.is_some() && wanted != object.meta().resource_version.as_deref() {
                        return Err(ApiError::conflict(res, name).into());
                    }
                    v
                }
            };
            let mut v = object.to_json().map_err(ApiError::internal)?;
            v["status"] = next["status"].clone();
            *object = Object::from_json(kind, v)
                .map_err(|e| ApiError::new(422, "Invalid", format!("status: {e}")))?;
            Ok::<_, WriteError>(())
        })
        .map_err(|e| e.api(res))?
        .ok_or_else(|| ApiError::not_found(res, name))?;
    object_reply(200, &object, Vec::new())
}
