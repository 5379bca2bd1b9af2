//! PATCH bodies applied to a stored object's JSON: JSON patch (RFC 6902) and JSON
//! merge patch (RFC 7386) by the `json-patch` crate, and the strategic merge patch
//! kubectl apply, edit, label and annotate send: a merge patch whose lists of
//! keyed items (a Service's ports by `port`, a Pod's containers by `name`, ...)
//! merge item by item, with the directives kubectl writes (`$patch`,
//! `$setElementOrder/`, `$deleteFromPrimitiveList/`, `$retainKeys`).

use serde_json::{Map, Value};

/// The patch types of the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn of(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// `patch` applied to `target`; the error is the API server's message.
pub fn apply(target: &mut Value, patch: &Value, ty: PatchType, kind: &str) -> Result<(), String> {
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("the JSON patch is not valid: {e}"))?;
            json_patch::patch(target, &p).map_err(|e| e.to_string())
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("the merge patch is not a JSON object".into());
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err("the strategic merge patch is not a JSON object".into());
            };
            merge_map(target, p, kind, "")
        }
    }
}

/// The merge key of the list at `path` (fields joined by '.') of `kind`, as the
/// API types' `patchMergeKey` tags say; None: the list is replaced whole.
fn merge_key(kind: &str, path: &str) -> Option<&'static str> {
    match (kind, path) {
        (_, "metadata.ownerReferences") => Some("uid"),
        ("Service", "spec.ports") => Some("port"),
        ("Service", "status.conditions") => Some("type"),
        ("Pod", "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers") => {
            Some("name")
        }
        ("Pod", "spec.volumes" | "spec.imagePullSecrets") => Some("name"),
        ("Pod", "spec.containers.ports" | "spec.initContainers.ports") => Some("containerPort"),
        ("Pod", "spec.containers.env" | "spec.initContainers.env") => Some("name"),
        ("Pod", "spec.containers.volumeMounts" | "spec.initContainers.volumeMounts") => {
            Some("mountPath")
        }
        ("Pod", "status.conditions") => Some("type"),
        _ => None,
    }
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    kind: &str,
    path: &str,
) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("an object");
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, value) in patch {
        if let Some(list_field) = field.strip_prefix("$deleteFromPrimitiveList/") {
            let gone: Vec<&Value> = value
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(items)) = t.get_mut(list_field) {
                items.retain(|v| !gone.contains(&v));
            }
            continue;
        }
        // `$setElementOrder/` is applied below, once the lists merged; `$patch`
        // and `$retainKeys` were above.
        if field.starts_with('$') {
            continue;
        }
        let here = child(path, field);
        match value {
            Value::Null => {
                t.remove(field);
            }
            Value::Object(p) => {
                let slot = t.entry(field.clone()).or_insert(Value::Null);
                merge_map(slot, p, kind, &here)?;
                if slot.is_null() {
                    t.remove(field);
                }
            }
            Value::Array(items) => match merge_key(kind, &here) {
                Some(key) => {
                    let slot = t.entry(field.clone()).or_insert(Value::Array(Vec::new()));
                    merge_list(slot, items, key, kind, &here)?;
                }
                None => {
                    t.insert(field.clone(), Value::Array(strip_directives(items)));
                }
            },
            v => {
                t.insert(field.clone(), v.clone());
            }
        }
    }
    for (field, order) in patch {
        if let (Some(list_field), Value::Array(order)) =
            (field.strip_prefix("$setElementOrder/"), order)
        {
            let key = merge_key(kind, &child(path, list_field));
            if let Some(Value::Array(items)) = t.get_mut(list_field) {
                reorder(items, order, key);
            }
        }
    }
    Ok(())
}

/// Merges `patch`'s items into the list `target` by `key`: an item with a key the
/// list has merges into it, a new one is added, `$patch: delete` removes it.
fn merge_list(
    target: &mut Value,
    patch: &[Value],
    key: &str,
    kind: &str,
    path: &str,
) -> Result<(), String> {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let list = target.as_array_mut().expect("an array");
    // `[{"$patch": "replace"}, items...]`: the list is the patch's items.
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *list = strip_directives(
            &patch
                .iter()
                .filter(|p| p.get("$patch").is_none())
                .cloned()
                .collect::<Vec<_>>(),
        );
        return Ok(());
    }
    for item in patch {
        let Value::Object(p) = item else {
            list.push(item.clone());
            continue;
        };
        let id = p.get(key);
        let at = id.and_then(|id| list.iter().position(|t| t.get(key) == Some(id)));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = at {
                list.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => merge_map(&mut list[i], p, kind, path)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                merge_map(&mut fresh, p, kind, path)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

/// Items of a replaced list without the directives a patch may carry.
fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|v| match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            v => v.clone(),
        })
        .collect()
}

/// Puts `items` in the order `order` gives (by `key`, or by value for a list of
/// scalars); items it does not name keep their order after those it does.
fn reorder(items: &mut [Value], order: &[Value], key: Option<&str>) {
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let rank = |v: &Value| {
        id(v)
            .and_then(|i| order.iter().position(|o| id(o) == Some(i.clone())))
            .unwrap_or(usize::MAX)
    };
    items.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn smp(kind: &str, mut target: Value, patch: Value) -> Value {
        apply(&mut target, &patch, PatchType::Strategic, kind).unwrap();
        target
    }

    #[test]
    fn a_service_s_ports_merge_by_port_and_other_fields_as_a_merge_patch() {
        let svc = json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30008},
                               {"port": 443, "targetPort": 8443}]}});
        let out = smp(
            "Service",
            svc,
            json!({
                "metadata": {"labels": {"a": null, "c": "3"}},
                "spec": {"ports": [{"port": 80, "targetPort": 9090}]},
            }),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090, "nodePort": 30008}, {"port": 443, "targetPort": 8443}])
        );
        assert_eq!(out["spec"]["selector"], json!({"app": "web"}));
    }

    #[test]
    fn kubectl_apply_s_directives_delete_reorder_and_replace() {
        let svc = json!({"spec": {"ports": [{"port": 80}, {"port": 443}, {"port": 53}]}});
        let out = smp(
            "Service",
            svc.clone(),
            json!({"spec": {
                "$setElementOrder/ports": [{"port": 53}, {"port": 80}],
                "ports": [{"port": 443, "$patch": "delete"}],
            }}),
        );
        assert_eq!(out["spec"]["ports"], json!([{"port": 53}, {"port": 80}]));
        let out = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 8}]}}),
        );
        assert_eq!(out["spec"]["ports"], json!([{"port": 8}]));
        let out = smp(
            "Pod",
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$retainKeys": ["b"], "b": 3}}),
        );
        assert_eq!(out["spec"], json!({"b": 3}));
        let out = smp(
            "Pod",
            json!({"metadata": {"finalizers": ["x", "y"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_and_containers_merge_by_name() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}],
                                   "tolerations": [{"key": "k"}]}});
        let out = smp(
            "Pod",
            pod,
            json!({"spec": {
                "containers": [{"name": "a", "ports": [{"containerPort": 81}]}, {"name": "b", "image": "y"}],
                "tolerations": [{"key": "j"}],
            }}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "x");
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 81}])
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "j"}]));
    }

    #[test]
    fn json_and_merge_patches_follow_their_rfcs() {
        let mut v = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        apply(
            &mut v,
            &json!([{"op": "replace", "path": "/spec/type", "value": "NodePort"}]),
            PatchType::Json,
            "Service",
        )
        .unwrap();
        assert_eq!(v["spec"]["type"], "NodePort");
        apply(
            &mut v,
            &json!({"spec": {"ports": [{"port": 81}]}}),
            PatchType::Merge,
            "Service",
        )
        .unwrap();
        assert_eq!(v["spec"]["ports"], json!([{"port": 81}]));
        assert!(
            apply(
                &mut v,
                &json!([{"op": "test", "path": "/spec/type", "value": "x"}]),
                PatchType::Json,
                "Service"
            )
            .is_err()
        );
    }
}
