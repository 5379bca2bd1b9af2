//! Reading a manifest's text into values as the API server's strict decoding does,
//! and within bounds: a key twice in one mapping is an error (not the last one
//! winning), and a document may hold at most as many values as it has bytes (at
//! least [`MAX_NODES`]) nested at most [`MAX_DEPTH`] deep, counted as they are read,
//! so YAML aliases that expand a small text into a huge tree, or deeply nested
//! sequences, are refused after a bounded amount of work instead of exhausting
//! memory.
//!
//! While a value is read, an upper bound of its length as compact JSON is counted
//! ([`Read::json_at_most`]): only a document that could be over the API server's
//! request limit is then measured exactly.
//!
//! While a value is typed, [`unknown_field`] names each field the type does not
//! know (`spec.ports[0].targetPortt`): kubectl's strict field validation.

use std::{cell::Cell, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::block_yaml::Node;

/// Values a document may hold at least (a larger one: as many as it has bytes, which
/// only aliases can exceed).
pub const MAX_NODES: usize = 1_000_000;
/// How deep values may nest (a Pod needs about 10).
pub const MAX_DEPTH: usize = 64;

/// A value as read, with an upper bound of its length written as compact JSON.
#[derive(Debug)]
pub struct Read {
    pub value: Value,
    pub json_at_most: usize,
}

/// Reads one value of a `len`-byte text from `d` within the bounds, refusing
/// duplicate keys.
pub fn value<'de, D: Deserializer<'de>>(d: D, len: usize) -> Result<Read, D::Error> {
    let budget = Cell::new(MAX_NODES.max(len));
    let json = Cell::new(0);
    let value = Seed {
        budget: &budget,
        json: &json,
        depth: 0,
    }
    .deserialize(d)?;
    Ok(Read {
        value,
        json_at_most: json.get(),
    })
}

/// The most bytes a string of `len` bytes takes in JSON: its quotes and every byte
/// escaped as `\u00XX`.
pub(super) fn json_string_at_most(len: usize) -> usize {
    len.saturating_mul(6).saturating_add(2)
}

/// The most bytes a number, a boolean or null takes in JSON
/// (`-1.7976931348623157e308` is 23).
pub(super) const SCALAR_JSON_AT_MOST: usize = 24;

#[derive(Clone, Copy)]
struct Seed<'a> {
    budget: &'a Cell<usize>,
    /// The JSON length bound counted so far.
    json: &'a Cell<usize>,
    depth: usize,
}

impl Seed<'_> {
    /// One more value, which takes at most `json` bytes as JSON (with the comma or
    /// colon after it).
    fn spend<E: de::Error>(&self, json: usize) -> Result<(), E> {
        let left = self.budget.get();
        if left == 0 {
            return Err(E::custom(
                "more values than the document has bytes (YAML aliases expanded): refused",
            ));
        }
        self.budget.set(left - 1);
        self.json
            .set(self.json.get().saturating_add(json).saturating_add(1));
        Ok(())
    }

    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "values nested more than {MAX_DEPTH} deep: refused"
            )));
        }
        Ok(Seed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(SCALAR_JSON_AT_MOST)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(SCALAR_JSON_AT_MOST)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(SCALAR_JSON_AT_MOST)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(SCALAR_JSON_AT_MOST)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(json_string_at_most(v.len()))?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend(json_string_at_most(v.len()))?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(SCALAR_JSON_AT_MOST)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(2)?;
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(2)?;
        let inner = self.deeper()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The key and its colon (the comma after the value is the value's).
            self.json.set(
                self.json
                    .get()
                    .saturating_add(json_string_at_most(key.len()))
                    .saturating_add(1),
            );
            let v = map.next_value_seed(inner)?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate field \"{}\"",
                    super::shown(&key, super::SHOWN_VALUE)
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The field `input` holds at `path`, which a type's decoding passed over
/// (`serde_ignored`), named as kubectl names it (`spec.ports[0].targetPortt`); None
/// when its value is null (a null is no field).
pub fn unknown_field(input: &Value, path: &serde_ignored::Path) -> Option<String> {
    let mut steps = Vec::new();
    let mut at = path;
    loop {
        match at {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                steps.push(Step::Index(*index));
                at = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                steps.push(Step::Key(key));
                at = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => at = parent,
        }
    }
    let (mut name, mut value) = (String::new(), Some(input));
    for step in steps.iter().rev() {
        match step {
            Step::Key(key) => {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(key);
                value = value.and_then(|v| v.get(key));
            }
            Step::Index(n) => {
                name.push_str(&format!("[{n}]"));
                value = value.and_then(|v| v.get(n));
            }
        }
    }
    (!value.is_some_and(Value::is_null)).then_some(name)
}

/// One step of a field's path from the document's root.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// How many shapes each thread remembers as decoding with no field passed over.
const CLEAN_SHAPES: usize = 64;
/// A document whose shape is longer than this is never remembered.
const SHAPE_AT_MOST: usize = 4096;

thread_local! {
    static CLEAN: std::cell::RefCell<std::collections::HashSet<Box<[u8]>>> =
        Default::default();
}

/// What decides which fields of a document a type passes over: the type, and the
/// document's keys at every depth with the kind of each value (object, array,
/// null or another scalar); never the other values. A type's decoding picks its
/// fields by name alone, so two documents of one shape pass over the same fields
/// (a null is no field, so nulls have a shape of their own). Manifests at scale
/// come from templates: 1,000,000 pods have a handful of shapes, and a shape
/// decoded once with no field passed over ([`Shape::remember_clean`]) needs no
/// tracking again ([`Shape::known_clean`]) on this thread.
pub struct Shape(Option<Vec<u8>>);

impl Shape {
    /// The shape of `value` decoded as `T` (none when too long to remember).
    pub fn of<T>(value: &Value) -> Shape {
        Self::written::<T>(|bytes| write_shape(value, bytes))
    }

    /// The shape of `node` decoded as `T`: its keys in the order written, so the
    /// same bytes as [`Shape::of`] its value only when that order is sorted (and
    /// then the same shape).
    pub fn of_node<T>(node: &Node) -> Shape {
        Self::written::<T>(|bytes| write_node_shape(node, bytes))
    }

    fn written<T>(write: impl FnOnce(&mut Vec<u8>)) -> Shape {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(std::any::type_name::<T>().as_bytes());
        bytes.push(0);
        write(&mut bytes);
        Shape((bytes.len() <= SHAPE_AT_MOST).then_some(bytes))
    }

    /// `T` decoded from `d` (a document's value or its nodes, of this shape):
    /// plainly when the shape is known clean, else telling `passed_over` each
    /// field the type passes over (it says whether that one counts) and
    /// remembering the shape clean when none counted. Tracking every field's path
    /// costs half as much again as decoding.
    pub fn decode<'de, T, D>(
        self,
        d: D,
        mut passed_over: impl FnMut(serde_ignored::Path<'_>) -> bool,
    ) -> Result<T, D::Error>
    where
        T: de::Deserialize<'de>,
        D: Deserializer<'de> + Copy,
    {
        if self.known_clean()
            && let Ok(t) = T::deserialize(d)
        {
            return Ok(t);
        }
        let mut clean = true;
        let t = serde_ignored::deserialize(d, |path| clean &= !passed_over(path))?;
        if clean {
            self.remember_clean();
        }
        Ok(t)
    }

    /// A document of this shape was decoded on this thread with no field passed over.
    pub fn known_clean(&self) -> bool {
        self.0
            .as_deref()
            .is_some_and(|b| CLEAN.with(|c| c.borrow().contains(b)))
    }

    /// Remembers that a document of this shape passed over no field.
    pub fn remember_clean(self) {
        let Some(bytes) = self.0 else { return };
        CLEAN.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() < CLEAN_SHAPES {
                c.insert(bytes.into_boxed_slice());
            }
        });
    }
}

/// Writes the shape of `value`: each key with its length (so no two shapes read the
/// same), `{`..`}` around an object's keys, `[`..`]` around an array's items, `n`
/// for a null and `.` for any other scalar.
fn write_shape(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(b'n'),
        Value::Object(map) => {
            out.push(b'{');
            for (k, v) in map {
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k.as_bytes());
                write_shape(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for v in items {
                write_shape(v, out);
            }
            out.push(b']');
        }
        _ => out.push(b'.'),
    }
}

/// [`write_shape`] of a [`Node`], its keys in the order written.
fn write_node_shape(node: &Node, out: &mut Vec<u8>) {
    match node {
        Node::Scalar(Value::Null) => out.push(b'n'),
        Node::Map(entries) => {
            out.push(b'{');
            for (k, v) in entries {
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k.as_bytes());
                write_node_shape(v, out);
            }
            out.push(b'}');
        }
        Node::Seq(items) => {
            out.push(b'[');
            for v in items {
                write_node_shape(v, out);
            }
            out.push(b']');
        }
        Node::Str(_) | Node::Scalar(_) => out.push(b'.'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Value, String> {
        value(serde_yaml_ng::Deserializer::from_str(text), text.len())
            .map(|r| r.value)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn duplicate_keys_are_refused_in_yaml_and_json() {
        let err = yaml("spec:\n  ports:\n  - port: 80\n    port: 81\n").unwrap_err();
        assert!(err.contains("duplicate field \"port\""), "{err}");
        let err = value(
            &mut serde_json::Deserializer::from_str(r#"{"a":1,"a":2}"#),
            13,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("duplicate field \"a\""), "{err}");
        assert_eq!(
            yaml("a: [1, {b: x}]\n").unwrap(),
            serde_json::json!({"a": [1, {"b": "x"}]})
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_quickly() {
        let refused = |text: &str| {
            let started = std::time::Instant::now();
            let err = yaml(text).unwrap_err();
            assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
            err
        };
        // Ten levels of ten aliases each: 10^10 values once expanded (the YAML
        // parser's own repetition limit, or ours, stops it).
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = refused(&bomb);
        assert!(
            err.contains("more values than the document has bytes")
                || err.contains("repetition limit"),
            "{err}"
        );
        // One large anchor and many aliases to it: ~64 KB of text, 40M values.
        let big: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        let aliases = vec!["*big"; 2_000].join(", ");
        let wide = format!("big: &big [{}]\nall: [{aliases}]\n", big.join(", "));
        let err = refused(&wide);
        assert!(
            err.contains("more values than the document has bytes")
                || err.contains("repetition limit"),
            "{err}"
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = refused(&deep);
        assert!(err.contains("nested") || err.contains("recursion"), "{err}");
    }

    #[test]
    fn the_json_bound_is_never_below_the_json_written() {
        let texts = [
            "a: [1, {b: x}]\n",
            "s: \"\\x01\\x02\\u2028\\t\"\nn: -1.7976931348623157e308\nk: ~\nl: []\nm: {}\n",
            "- - - [true, false, null]\n  - \"\\\"\\\\\"\n",
            "big: &a [aaaa, bbbb]\nall: [*a, *a, *a]\n",
            "\"\\x7f\": \"\\0\"\n",
        ];
        for text in texts {
            let read = value(serde_yaml_ng::Deserializer::from_str(text), text.len()).unwrap();
            let json = serde_json::to_string(&read.value).unwrap();
            assert!(
                read.json_at_most >= json.len(),
                "{text:?}: {} < {json}",
                read.json_at_most
            );
            assert!(
                read.json_at_most <= json.len() * 12 + 64,
                "{text:?}: {}",
                read.json_at_most
            );
        }
    }

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Port {
            port: u16,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Spec {
            ports: Vec<Port>,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Object {
            spec: Option<Spec>,
        }
        let input = serde_json::json!({
            "spec": {"ports": [{"port": 80}, {"port": 81, "targetPortt": 8080}], "typo": 1, "type": null}
        });
        let mut unknown = Vec::new();
        let _: Object = serde_ignored::deserialize(&input, |path| {
            unknown.extend(unknown_field(&input, &path));
        })
        .unwrap();
        assert_eq!(unknown, ["spec.ports[1].targetPortt", "spec.typo"]);
    }
}
