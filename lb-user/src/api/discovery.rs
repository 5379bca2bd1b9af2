//! What clients read before anything else: the version, the API groups and their
//! resources (the legacy discovery documents; kubectl falls back to them when the
//! aggregated form is not offered), and an OpenAPI v3 document per group version
//! whose PATCH operations declare the `fieldValidation` parameter: kubectl then
//! leaves validation to the server (lb's own, as `lb apply`'s) instead of
//! validating against a schema it would have to download.

use serde_json::{Value, json};

use super::resource::{RESOURCES, Resource};

/// The Kubernetes release whose API (and validation) lb follows.
pub const KUBERNETES_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+lb-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

/// The named groups (every resource outside the core group).
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = RESOURCES
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group, r.version))
        .collect();
    groups.dedup();
    groups
}

/// `/apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn group(group: &str) -> Option<Value> {
    groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
               "versions": [gv.clone()], "preferredVersion": gv})
        })
}

/// `/api/v1`, `/apis/GROUP/VERSION`: the resources of one group version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        resources.push(json!({
            "name": r.name,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// The path of a group version's OpenAPI document (`api/v1`,
/// `apis/discovery.k8s.io/v1`).
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is. The hash is the
/// server's version (the documents change only with it).
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        let path = openapi_path(g, v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", openapi_hash())}),
        );
    }
    json!({"paths": paths})
}

fn openapi_hash() -> String {
    format!("lb{}", env!("CARGO_PKG_VERSION").replace('.', ""))
}

/// `/openapi/v3/PATH`: the group version's kinds and operations. The schemas
/// name their kinds (`x-kubernetes-group-version-kind`) and leave the fields to
/// the server's validation.
pub fn openapi_document(path: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| openapi_path(r.group, r.version) == path)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
    // The kinds' schemas (k8s-openapi's, with the API's field descriptions:
    // `kubectl explain` reads them) and every schema they refer to.
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut roots = Vec::new();
    for r in &served {
        roots.push((r, schema_of(&mut generator, r.kind)));
    }
    let mut schemas = generator.take_definitions(true);
    let refs: std::collections::BTreeMap<&str, Value> = roots
        .iter()
        .map(|(r, reference)| (r.kind, reference.clone()))
        .collect();
    for (r, reference) in roots {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let name = reference
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_string);
        if let Some(schema) = name.and_then(|n| schemas.get_mut(&n)) {
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        }
    }
    for r in served {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let reference = refs[r.kind].clone();
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let mut item = json!({
            "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get", "responses": ok},
        });
        if r.verbs.contains(&"patch") {
            item["patch"] = json!({
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "patch",
                "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation"), query("force")],
                "requestBody": {"content": {
                    "application/json-patch+json": {"schema": {"type": "object"}},
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                }},
                "responses": ok,
            });
            item["put"] = json!({
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "put",
                "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                "requestBody": {"content": {"application/json": {"schema": reference}}},
                "responses": ok,
            });
        }
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let item_path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.name)
        } else {
            format!("{base}/{}/{{name}}", r.name)
        };
        paths.insert(item_path, item);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "lb", "version": format!("v1.{KUBERNETES_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The schema of `kind` (a reference into the generator's definitions).
fn schema_of(g: &mut schemars::SchemaGenerator, kind: &str) -> Value {
    use k8s_openapi::api::{coordination::v1::Lease, core::v1, discovery::v1::EndpointSlice};
    let schema = match kind {
        "Service" => g.subschema_for::<v1::Service>(),
        "Pod" => g.subschema_for::<v1::Pod>(),
        "Node" => g.subschema_for::<v1::Node>(),
        "Namespace" => g.subschema_for::<v1::Namespace>(),
        "Event" => g.subschema_for::<v1::Event>(),
        "EndpointSlice" => g.subschema_for::<EndpointSlice>(),
        "Lease" => g.subschema_for::<Lease>(),
        _ => return json!({"type": "object"}),
    };
    schema.to_value()
}

/// `/openapi/v2`, which kubectl reads (as protobuf) to validate a `kind: List`
/// on its side: a document of no definitions, so that kubectl validates
/// nothing itself and sends the items, which the server validates one by one
/// (`fieldValidation`). Written by hand: gnostic's `Document` with `swagger`
/// (field 1) and `info` (field 2: `title` 1, `version` 2).
pub fn openapi_v2() -> Vec<u8> {
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![
            (number << 3) | 2,
            u8::try_from(bytes.len()).expect("short fields"),
        ];
        out.extend_from_slice(bytes);
        out
    }
    let version = format!("v1.{KUBERNETES_MINOR}.0");
    let info = [field(1, b"lb"), field(2, version.as_bytes())].concat();
    [field(1, b"2.0"), field(2, &info)].concat()
}

/// The media type of [`openapi_v2`].
pub const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
