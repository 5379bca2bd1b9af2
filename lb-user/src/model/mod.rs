//! The objects lb serves, as Kubernetes defines them (k8s-openapi types): reading
//! manifests, defaults and validation with the API server's field paths and words.

mod block_yaml;
pub mod cidr;
mod decode;
mod facts;
mod node;
mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::Value;

pub use cidr::Cidr;
pub use facts::{EndpointFacts, PodFacts, SliceFacts, trim_service};
pub use validate::{
    FieldError, FieldErrorKind, validate_endpoint_slice, validate_endpoint_slice_update,
    validate_pod, validate_service, validate_service_update,
};

/// What `lb apply` reads, for messages.
const KNOWN_KINDS: &str = "lb reads v1 Service, v1 Pod and discovery.k8s.io/v1 EndpointSlice";

/// Namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of object lb serves: the one name for a kind, from the manifest's
/// `kind` to the store's rows and the CLI's resource words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Pod,
    EndpointSlice,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::Pod, Kind::EndpointSlice];

    /// The API's kind (`Service`), as manifests and the store's rows write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// The kind an API kind name names.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// kubectl's resource word for one object (`service/NAME created`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Pod => "pod",
            Kind::EndpointSlice => "endpointslice.discovery.k8s.io",
        }
    }

    /// kubectl's resource word for several (`services "x" not found`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Pod => "pods",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
        }
    }

    /// kubectl's resource words for each kind (short names, singular, plural).
    pub const RESOURCE_WORDS: [(&str, Kind); 10] = [
        ("svc", Kind::Service),
        ("service", Kind::Service),
        ("services", Kind::Service),
        ("po", Kind::Pod),
        ("pod", Kind::Pod),
        ("pods", Kind::Pod),
        ("endpointslice", Kind::EndpointSlice),
        ("endpointslices", Kind::EndpointSlice),
        ("endpointslice.discovery.k8s.io", Kind::EndpointSlice),
        ("endpointslices.discovery.k8s.io", Kind::EndpointSlice),
    ];

    /// The kind a kubectl resource word names (`svc`, `pods`, `endpointslice`, ...).
    pub fn from_resource(word: &str) -> Option<Kind> {
        Kind::RESOURCE_WORDS
            .iter()
            .find(|(w, _)| *w == word)
            .map(|(_, k)| *k)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a kind lb serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    Pod(Box<Pod>),
    EndpointSlice(Box<EndpointSlice>),
}

/// The label that ties an EndpointSlice to its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

impl Object {
    /// Gives back the room decoding left in the object's lists (a list decoded from
    /// JSON grows by doubling: an EndpointSlice of 10 endpoints holds room for 16,
    /// each endpoint's one address room for 4): for objects kept whole (`lb get`
    /// reads the store whole), a fifth of what 100,000 slices take.
    pub fn compact(&mut self) {
        match self {
            Object::EndpointSlice(slice) => {
                for e in &mut slice.endpoints {
                    e.addresses.shrink_to_fit();
                }
                slice.endpoints.shrink_to_fit();
                if let Some(ports) = &mut slice.ports {
                    ports.shrink_to_fit();
                }
            }
            Object::Service(svc) => {
                if let Some(ports) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
                    ports.shrink_to_fit();
                }
            }
            Object::Pod(pod) => {
                if let Some(spec) = &mut pod.spec {
                    for c in &mut spec.containers {
                        if let Some(ports) = &mut c.ports {
                            ports.shrink_to_fit();
                        }
                    }
                    spec.containers.shrink_to_fit();
                }
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Pod(_) => Kind::Pod,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Service(s) => &s.metadata,
            Object::Pod(p) => &p.metadata,
            Object::EndpointSlice(e) => &e.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Service(s) => &mut s.metadata,
            Object::Pod(p) => &mut p.metadata,
            Object::EndpointSlice(e) => &mut e.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::of(self.meta())
    }

    /// An object of `kind` from its JSON.
    pub fn from_json(kind: Kind, value: serde_json::Value) -> serde_json::Result<Object> {
        Ok(match kind {
            Kind::Service => Object::Service(serde_json::from_value(value)?),
            Kind::Pod => Object::Pod(serde_json::from_value(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(serde_json::from_value(value)?),
        })
    }

    /// The object as the API serves it (apiVersion and kind set).
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Object::Service(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::EndpointSlice(o) => serde_json::to_value(o),
        }
    }
}

/// namespace/name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key a store row was written under (its `Display`: `namespace/name`).
    pub fn from_row(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        Some(ObjectKey::new(namespace, name))
    }

    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        let (namespace, name) = Self::parts(meta);
        ObjectKey::new(namespace, name)
    }

    /// The namespace and name `meta` is keyed by (no namespace: `default`), borrowed.
    pub fn parts(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> (&str, &str) {
        (
            meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One object read from a manifest, with where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    /// 1-based position in the source.
    pub index: usize,
    pub object: Object,
}

/// Why a manifest could not be read or an object is not valid. Every variant names
/// the file and the document; invalid objects also name the object and the fields.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: not valid YAML or JSON: {error}")]
    Syntax { file: String, error: String },
    #[error("{file} (document {index}): {error}")]
    Document {
        file: String,
        index: usize,
        error: String,
    },
    #[error(transparent)]
    Invalid(#[from] Box<Invalid>),
}

impl ManifestError {
    /// The same error, about document `index` of its file.
    fn numbered(mut self, index: usize) -> Self {
        match &mut self {
            ManifestError::Document { index: i, .. } => *i = index,
            ManifestError::Invalid(invalid) => invalid.index = index,
            ManifestError::Read { .. } | ManifestError::Syntax { .. } => {}
        }
        self
    }
}

/// `s` as lb prints user data: control characters escaped (an ANSI escape or a
/// newline in a label must not forge output), and cut after `max` characters with
/// how much was left out.
pub fn shown(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!(
                "...({} more bytes)",
                s.len() - s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
            ));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How much of a refused value a message shows.
pub const SHOWN_VALUE: usize = 256;

/// An object the API server would refuse, with why (`The Service "web" is
/// invalid: spec.ports[0].port: Required value`), and where it was read.
#[derive(Debug, thiserror::Error)]
#[error("{file} (document {index}): The {kind} \"{}\" is invalid: {}", shown(.name, SHOWN_VALUE), join(.errors))]
pub struct Invalid {
    pub file: String,
    pub index: usize,
    pub kind: Kind,
    pub name: String,
    pub errors: Vec<FieldError>,
}

/// Field errors as the API server lists them: one alone, several in brackets.
pub fn join(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

/// An object of a kind lb does not serve (a Deployment beside its Service), left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub index: usize,
    /// kubectl's word for its kind: `deployment.apps`, `configmap`.
    pub resource: String,
    pub name: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} skipped: lb serves Service, Pod, EndpointSlice",
            shown(&self.resource, SHOWN_VALUE),
            shown(&self.name, SHOWN_VALUE)
        )
    }
}

/// What a manifest holds: the objects lb serves, the others it leaves out, and
/// warnings about fields no type knows (`FieldValidation::Warn`).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub docs: Vec<Document>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

impl Manifest {
    /// Adds what `other` holds after what this one holds.
    pub fn extend(&mut self, other: Manifest) {
        self.docs.extend(other.docs);
        self.skipped.extend(other.skipped);
        self.warnings.extend(other.warnings);
    }
}

/// The API server's limit on one request: an object larger than this is refused.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;

/// What to do with a field the object's type does not know (a misspelt
/// `targetPortt`), as kubectl's `--validate` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refuse the manifest (kubectl's default).
    #[default]
    Strict,
    /// Apply it and print a warning for each.
    Warn,
    /// Apply it silently.
    Ignore,
}

/// [`read_manifest`], refusing objects of kinds lb does not serve.
pub fn parse_manifest(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let manifest = read_manifest(source, text)?;
    match manifest.skipped.into_iter().next() {
        Some(s) => Err(ManifestError::Document {
            file: s.file,
            index: s.index,
            error: format!("{}/{}: {KNOWN_KINDS}", s.resource, s.name),
        }),
        None => Ok(manifest.docs),
    }
}

/// [`read_manifest_with`] strict field validation (kubectl's default).
pub fn read_manifest(source: &str, text: &str) -> Result<Manifest, ManifestError> {
    read_manifest_with(source, text, FieldValidation::Strict)
}

/// Reads every object of a manifest text: multi-document YAML, a JSON object, or a
/// `kind: List` of either, keys unique and sizes bounded (`decode`). Fields the
/// object's type does not know are refused, warned about or ignored as `validation`
/// says. Objects get their defaults; each is validated alone (checks that need the
/// store, such as a taken nodePort, come when it is applied). Objects of other kinds
/// are listed as skipped. Documents are parsed on every core: a manifest of 10,000
/// services is ordinary.
pub fn read_manifest_with(
    source: &str,
    text: &str,
    validation: FieldValidation,
) -> Result<Manifest, ManifestError> {
    let mut all = Manifest::default();
    read_manifest_each(source, text, validation, |m| {
        all.extend(m);
        Ok::<_, ManifestError>(())
    })?;
    Ok(all)
}

/// [`read_manifest_with`], handing the objects to `each` a batch at a time (at most
/// [`VALUE_BATCH`] documents), in the manifest's order: a reader that stores them
/// as they come never holds a 1,000,000-object manifest as objects. An error stops
/// the reading; batches handed over before it stay the reader's to undo.
pub fn read_manifest_each<E: From<ManifestError>>(
    source: &str,
    text: &str,
    validation: FieldValidation,
    mut each: impl FnMut(Manifest) -> Result<(), E>,
) -> Result<(), E> {
    let syntax = |error: String| ManifestError::Syntax {
        file: source.to_string(),
        error,
    };
    let trimmed = text.trim_start();
    // Documents go from text to objects a batch at a time, so that the parsed
    // trees of a 100,000-object manifest are never all held at once.
    let mut objects = Objects {
        source,
        validation,
        next_index: 1,
    };
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut d = serde_json::Deserializer::from_str(text);
        let read = decode::value(&mut d, text.len())
            .and_then(|v| d.end().map(|()| v))
            .map_err(|e| syntax(e.to_string()))?;
        // Each item is no longer than the whole.
        let at_most = read.json_at_most;
        let values = match read.value {
            Value::Array(items) => items
                .into_iter()
                .map(|v| Taken::Value(v, at_most))
                .collect(),
            v => vec![Taken::Value(v, at_most)],
        };
        each(objects.take(values)?)?;
    } else {
        let mut docs = yaml_documents(text);
        loop {
            let batch: Vec<(usize, &str)> = docs.by_ref().take(VALUE_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            // Each document is made an object on the core that read it, while its
            // tree is fresh in that core's cache (numbered once the batch is in).
            let parsed = crate::par::in_parallel(runs(text, &batch), |(line, doc)| {
                let made = |(value, at_most)| Objects::make(source, validation, value, at_most);
                // The YAML manifests are mostly written in is read straight into
                // nodes, and typed from them where `parse_node` can (no
                // `serde_json::Value` made: ~1 s of CPU in 1,100,000 objects), else
                // made values; any other YAML (and any error) is read by libyaml,
                // in its words.
                if let Some(docs) = block_yaml::trees(doc) {
                    return Ok(docs
                        .into_iter()
                        .map(|t| {
                            match (t.json_at_most <= MAX_OBJECT_BYTES)
                                .then(|| parse_node(source, &t.node, validation))
                                .flatten()
                            {
                                Some(parsed) => Taken::Made(parsed),
                                None => made((t.node.into_value(), t.json_at_most)),
                            }
                        })
                        .collect());
                }
                let mut values = Vec::new();
                for d in serde_yaml_ng::Deserializer::from_str(doc) {
                    let read = decode::value(d, doc.len()).map_err(|e| yaml_error(e, line))?;
                    values.push(made((read.value, read.json_at_most)));
                }
                Ok::<_, String>(values)
            });
            let mut values = Vec::new();
            for p in parsed {
                values.extend(p.map_err(syntax)?);
            }
            each(objects.take(values)?)?;
        }
    }
    Ok(())
}

/// How many documents are parsed to trees before they are made objects.
const VALUE_BATCH: usize = 4_096;

/// The objects of a manifest as its documents are taken, batch after batch.
struct Objects<'a> {
    source: &'a str,
    validation: FieldValidation,
    /// The number the next document gets.
    next_index: usize,
}

/// A parsed document as [`Objects::take`] takes it: already made an object (or
/// refused) where it was parsed, numbered only once its place is known; or a
/// value for `take` to make one of (a `kind: List`, an empty document, one that
/// could be over the size limit, a JSON manifest's), with an upper bound of its
/// length as JSON.
enum Taken {
    Made(Result<Parsed, ManifestError>),
    Value(Value, usize),
}

impl Objects<'_> {
    /// `value` made an object where it was parsed, numbered 0 until
    /// [`Objects::take`] knows its place (a document's number only labels what is
    /// made of it); a value whose number is not its own (the items of a `kind:
    /// List`, or none at all) or that may be over the size limit is left to `take`.
    fn make(source: &str, validation: FieldValidation, value: Value, at_most: usize) -> Taken {
        if value.is_null() || is_list(&value) || at_most > MAX_OBJECT_BYTES {
            return Taken::Value(value, at_most);
        }
        Taken::Made(parse_object(source, 0, value, validation))
    }

    /// Takes parsed documents: a `kind: List` gives its items, each numbered in
    /// turn and made an object (on every core) unless it was made where parsed.
    fn take(&mut self, values: Vec<Taken>) -> Result<Manifest, ManifestError> {
        let (source, validation) = (self.source, self.validation);
        let next_index = &mut self.next_index;
        let mut manifest = Manifest::default();
        let mut items = Vec::new();
        for taken in values {
            let (value, at_most) = match taken {
                Taken::Made(made) => {
                    items.push(Taken::Made(made));
                    continue;
                }
                Taken::Value(value, at_most) => (value, at_most),
            };
            if value.is_null() {
                continue; // an empty document (a trailing `---`)
            }
            if is_list(&value) {
                // An item is no longer than its list.
                items.extend(
                    value
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|v| Taken::Value(v, at_most)),
                );
            } else {
                items.push(Taken::Value(value, at_most));
            }
        }
        let first = *next_index;
        *next_index += items.len();
        let to_make = items.iter().any(|t| matches!(t, Taken::Value(..)));
        let numbered: Vec<(usize, Taken)> = items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (first + i, v))
            .collect();
        let make = |(index, taken)| match taken {
            Taken::Made(made) => made
                .map(|p| p.numbered(index))
                .map_err(|e| e.numbered(index)),
            Taken::Value(value, at_most) => {
                // Measured only when it could be over the limit.
                if at_most > MAX_OBJECT_BYTES && json_longer_than(&value, MAX_OBJECT_BYTES) {
                    return Err(ManifestError::Document {
                        file: source.to_string(),
                        index,
                        error: format!("Request entity too large: limit is {MAX_OBJECT_BYTES}"),
                    });
                }
                parse_object(source, index, value, validation)
            }
        };
        let parsed: Vec<_> = if to_make {
            crate::par::in_parallel(numbered, make)
        } else {
            numbered.into_iter().map(make).collect()
        };
        for parsed in parsed {
            match parsed? {
                Parsed::Served(doc, warnings) => {
                    manifest.warnings.extend(
                        warnings
                            .into_iter()
                            .map(|w| format!("{} (document {}): {w}", doc.file, doc.index)),
                    );
                    manifest.docs.push(doc);
                }
                Parsed::Skipped(s) => manifest.skipped.push(s),
            }
        }
        Ok(manifest)
    }
}

/// Whether a parsed document is a `kind: List` (its items are the objects).
fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("List")
}

/// Whether `value` written as JSON is longer than `limit` bytes: counted as it
/// would be written, never built, and stopped at the limit (a manifest of 100,000
/// objects measures each of them).
fn json_longer_than(value: &Value, limit: usize) -> bool {
    struct Count {
        written: usize,
        limit: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.written += bytes.len();
            if self.written > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count { written: 0, limit };
    serde_json::to_writer(&mut count, value).is_err()
}

/// One document: an object lb serves (with warnings about it), or one it leaves out.
#[derive(Debug)]
enum Parsed {
    Served(Document, Vec<String>),
    Skipped(Skipped),
}

impl Parsed {
    /// The same, as document `index` of its source.
    fn numbered(mut self, index: usize) -> Self {
        match &mut self {
            Parsed::Served(doc, _) => doc.index = index,
            Parsed::Skipped(s) => s.index = index,
        }
        self
    }
}

/// The documents of a YAML stream with the line each starts on, split at the
/// document markers (`---` at the start of a line, which YAML forbids inside any
/// content), so that they can be parsed apart; found as they are taken (the first
/// batch is parsed while the markers of a 200 MB manifest are still to be found).
/// A stream with directives (`%YAML`) stays whole.
fn yaml_documents(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let is_marker = |l: &str| l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
    let whole = text.starts_with('%') || text.contains("\n%");
    // A marker's candidates: `---` first in the text or after a line break.
    let mut candidates = (!whole)
        .then(|| {
            (text.starts_with("---").then_some(0))
                .into_iter()
                .chain(text.match_indices("\n---").map(|(i, _)| i + 1))
        })
        .into_iter()
        .flatten();
    let (mut start, mut start_line) = (0, 1);
    // Lines are counted up to each marker only (`counted`: the offset counted to).
    let (mut counted, mut line) = (0, 1);
    let mut last_taken = false;
    std::iter::from_fn(move || {
        for at in candidates.by_ref() {
            let end = text[at..].find('\n').map_or(text.len(), |e| at + e);
            if at == start || !is_marker(text[at..end].trim_end_matches('\r')) {
                continue;
            }
            line += text.as_bytes()[counted..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            counted = at;
            let doc = (start_line, &text[start..at]);
            (start, start_line) = (at, line);
            return Some(doc);
        }
        (!std::mem::replace(&mut last_taken, true)).then(|| (start_line, &text[start..]))
    })
}

/// A batch's documents as runs of consecutive ones (each a slice of `text` a
/// parser reads through), as many as the batch's cores can share: one parser per
/// document spent more setting up than reading a small one.
fn runs<'t>(text: &'t str, docs: &[(usize, &'t str)]) -> Vec<(usize, &'t str)> {
    let per_run = (docs.len() / RUNS_PER_BATCH).clamp(1, DOCS_PER_RUN);
    docs.chunks(per_run)
        .map(|run| {
            let (line, first) = run[0];
            let last = run[run.len() - 1].1;
            let start = first.as_ptr() as usize - text.as_ptr() as usize;
            let end = last.as_ptr() as usize - text.as_ptr() as usize + last.len();
            (line, &text[start..end])
        })
        .collect()
}

/// At most this many documents read by one parser.
const DOCS_PER_RUN: usize = 32;
/// At least this many runs in a batch (when it has as many documents), for the cores
/// to share.
const RUNS_PER_BATCH: usize = 128;

/// A YAML error with its line in the whole file (`first_line`: where its parser
/// began, the first line of a run of documents).
fn yaml_error(e: serde_yaml_ng::Error, first_line: usize) -> String {
    match e.location() {
        Some(l) => {
            let text = e.to_string();
            // serde_yaml_ng ends its message with " at line L column C": say the file's
            // line, first, and in any mark left inside the message (libyaml's
            // problem mark), counted from where the parser began too.
            let text = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(head, _)| head);
            format!(
                "line {} column {}: {}",
                first_line + l.line() - 1,
                l.column(),
                file_lines(text, first_line)
            )
        }
        None => e.to_string(),
    }
}

/// `text` with every mark in it ("at line N column C") made a line of the file, for
/// a parser that began on `first_line`.
fn file_lines(text: &str, first_line: usize) -> String {
    const MARK: &str = "at line ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let (head, tail) = rest.split_at(at + MARK.len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match tail[..digits].parse::<usize>() {
            Ok(n) if n > 0 && tail[digits..].starts_with(" column ") => {
                out.push_str(&(first_line + n - 1).to_string());
            }
            _ => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// An error of document `index` of `source`, in `error`'s words.
fn document_error(source: &str, index: usize) -> impl Fn(String) -> ManifestError + '_ {
    move |error| ManifestError::Document {
        file: source.to_string(),
        index,
        error,
    }
}

fn parse_object(
    source: &str,
    index: usize,
    value: Value,
    validation: FieldValidation,
) -> Result<Parsed, ManifestError> {
    let doc_err = document_error(source, index);
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut unknown = Vec::new();
    let object = match (api_version, kind) {
        ("v1", "Service") => {
            // The API server's own words for a port without `port`, before serde says
            // "missing field".
            let mut missing = Vec::new();
            if let Some(ports) = value
                .get("spec")
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_array)
            {
                for (i, p) in ports.iter().enumerate() {
                    if p.get("port").is_none() {
                        missing.push(FieldError::required(format!("spec.ports[{i}].port")));
                    }
                }
            }
            if !missing.is_empty() {
                return Err(Box::new(Invalid {
                    file: source.into(),
                    index,
                    kind: Kind::Service,
                    name,
                    errors: missing,
                })
                .into());
            }
            let mut svc: Box<Service> = typed(&value, &mut unknown).map_err(doc_err)?;
            default_service(&mut svc);
            Object::Service(svc)
        }
        ("v1", "Pod") => {
            let mut pod: Box<Pod> = typed(&value, &mut unknown).map_err(doc_err)?;
            default_pod(&mut pod);
            Object::Pod(pod)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let mut slice: Box<EndpointSlice> = typed(&value, &mut unknown).map_err(doc_err)?;
            default_endpoint_slice(&mut slice);
            Object::EndpointSlice(slice)
        }
        ("", _) | (_, "") => {
            return Err(doc_err(format!(
                "apiVersion and kind are required ({KNOWN_KINDS})"
            )));
        }
        (v, k) if Kind::from_kind(k).is_some() => {
            return Err(doc_err(format!(
                "no kind \"{k}\" is registered for version \"{v}\" ({KNOWN_KINDS})"
            )));
        }
        (v, k) => {
            // kubectl's word: the kind in lower case, with its API group if any.
            let resource = match v.split_once('/') {
                Some((group, _)) => format!("{}.{group}", k.to_lowercase()),
                None => k.to_lowercase(),
            };
            return Ok(Parsed::Skipped(Skipped {
                file: source.to_string(),
                index,
                resource,
                name,
            }));
        }
    };
    finish(
        source,
        index,
        (api_version, kind, name),
        object,
        &unknown,
        validation,
    )
}

/// A document read here as [`parse_object`] reads its value, or None to leave it
/// to `parse_object`: typed straight from its nodes when it is a Service, a Pod or
/// an EndpointSlice of a shape decoded before with no field passed over (or that
/// is one now), never on an error (`parse_object` says it in its words).
fn parse_node(
    source: &str,
    node: &block_yaml::Node,
    validation: FieldValidation,
) -> Option<Result<Parsed, ManifestError>> {
    use block_yaml::Node;
    let api_version = node.get("apiVersion")?.as_str()?;
    let kind = node.get("kind")?.as_str()?;
    let name = node
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str)
        .unwrap_or("");
    let object = match (api_version, kind) {
        ("v1", "Service") => {
            // A port without `port` (typed as 0): `parse_object`'s words.
            if let Some(Node::Seq(ports)) = node.get("spec").and_then(|s| s.get("ports"))
                && ports.iter().any(|p| p.get("port").is_none())
            {
                return None;
            }
            let mut svc: Box<Service> = typed_node(node)?;
            default_service(&mut svc);
            Object::Service(svc)
        }
        ("v1", "Pod") => {
            let mut pod: Box<Pod> = typed_node(node)?;
            default_pod(&mut pod);
            Object::Pod(pod)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let mut slice: Box<EndpointSlice> = typed_node(node)?;
            default_endpoint_slice(&mut slice);
            Object::EndpointSlice(slice)
        }
        _ => return None,
    };
    Some(finish(
        source,
        0,
        (api_version, kind, name.to_string()),
        object,
        &[],
        validation,
    ))
}

/// `node` decoded as `T` with no field passed over; None when a field would be or
/// on any error.
fn typed_node<T: serde::de::DeserializeOwned>(node: &block_yaml::Node) -> Option<T> {
    let mut passed_over = false;
    let t = decode::Shape::of_node::<T>(node)
        .decode(node, |_| {
            passed_over = true;
            true
        })
        .ok()?;
    (!passed_over).then_some(t)
}

/// A typed object checked as the API server checks it: its unknown fields refused
/// or warned about (`validation`), then its values validated.
fn finish(
    source: &str,
    index: usize,
    (api_version, kind, name): (&str, &str, String),
    object: Object,
    unknown: &[String],
    validation: FieldValidation,
) -> Result<Parsed, ManifestError> {
    let doc_err = document_error(source, index);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{}\"", shown(f, SHOWN_VALUE)))
            .collect();
        match validation {
            FieldValidation::Strict => {
                return Err(doc_err(format!(
                    "{kind} in version \"{api_version}\" cannot be handled as a {kind}: strict decoding error: {}",
                    fields.join(", ")
                )));
            }
            FieldValidation::Warn => warnings = fields,
            FieldValidation::Ignore => {}
        }
    }
    let errors = match &object {
        Object::Service(s) => validate::validate_service_manifest(s),
        Object::Pod(p) => validate_pod(p),
        Object::EndpointSlice(e) => validate_endpoint_slice(e),
    };
    if !errors.is_empty() {
        return Err(Box::new(Invalid {
            file: source.into(),
            index,
            kind: object.kind(),
            name,
            errors,
        })
        .into());
    }
    Ok(Parsed::Served(
        Document {
            file: source.to_string(),
            index,
            object,
        },
        warnings,
    ))
}

/// Deserializes with the path of the field that failed (`spec.ports[0].port: ...`);
/// adds to `unknown` the fields of `value` the type does not know, named as they
/// are passed over.
fn typed<T: serde::de::DeserializeOwned>(
    value: &Value,
    unknown: &mut Vec<String>,
) -> Result<T, String> {
    let mut passed_over = Vec::new();
    let decoded = decode::Shape::of::<T>(value).decode(value, |path| {
        // (A null is no field: passed over, it does not count.)
        let field = decode::unknown_field(value, &path);
        let counts = field.is_some();
        passed_over.extend(field);
        counts
    });
    // Decoded without paths first; only a value that fails is decoded again,
    // tracking the path its error is at (a third of the cost of every good object).
    let t: T = match decoded {
        Ok(t) => t,
        Err(_) => serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?,
    };
    unknown.extend(passed_over);
    Ok(t)
}

pub const TYPE_CLUSTER_IP: &str = "ClusterIP";
pub const TYPE_NODE_PORT: &str = "NodePort";
pub const TYPE_LOAD_BALANCER: &str = "LoadBalancer";
pub const TYPE_EXTERNAL_NAME: &str = "ExternalName";
pub const CLUSTER_IP_NONE: &str = "None";

/// An unset or empty string field: both take the default, as the API server's
/// v1 defaulting does (`type: ""`, `protocol: ""` as Helm renders them).
fn default_str(field: &mut Option<String>, default: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(default.to_string());
    }
}

/// The object's namespace: unset or empty means `default`.
fn default_namespace(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    default_str(&mut meta.namespace, DEFAULT_NAMESPACE);
}

/// Whether traffic from outside the cluster reaches the service (the API server's
/// `ExternallyAccessible`): NodePort, LoadBalancer, or ClusterIP with externalIPs.
pub fn externally_accessible(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> bool {
    match spec.type_.as_deref().unwrap_or(TYPE_CLUSTER_IP) {
        TYPE_NODE_PORT | TYPE_LOAD_BALANCER => true,
        TYPE_CLUSTER_IP => spec
            .external_ips
            .as_ref()
            .is_some_and(|ips| !ips.is_empty()),
        _ => false,
    }
}

/// The API server's defaults: type ClusterIP, protocol TCP, targetPort = port,
/// sessionAffinity None (which drops sessionAffinityConfig), traffic policies
/// Cluster, allocateLoadBalancerNodePorts true for LoadBalancer, namespace default;
/// an empty string counts as unset.
pub fn default_service(svc: &mut Service) {
    default_namespace(&mut svc.metadata);
    let spec = svc.spec.get_or_insert_with(Default::default);
    default_str(&mut spec.type_, TYPE_CLUSTER_IP);
    let ty = spec.type_.clone().unwrap_or_default();
    default_str(&mut spec.session_affinity, "None");
    match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let cfg = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let client = cfg.client_ip.get_or_insert_with(Default::default);
            client.timeout_seconds.get_or_insert(10_800);
        }
        Some("None") => spec.session_affinity_config = None,
        _ => {}
    }
    if ty != TYPE_EXTERNAL_NAME {
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".to_string());
    }
    // v1's pair: clusterIP is the first of clusterIPs; either one given sets the
    // other (the families and their policy are the allocator's, which knows the
    // cluster's).
    let first = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .cloned();
    match (
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        first,
    ) {
        (Some(ip), None) => spec.cluster_ips = Some(vec![ip.to_string()]),
        (None, Some(first)) => spec.cluster_ip = Some(first),
        _ => {}
    }
    if externally_accessible(spec) {
        default_str(&mut spec.external_traffic_policy, "Cluster");
    }
    if ty == TYPE_LOAD_BALANCER {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    for port in spec.ports.iter_mut().flatten() {
        default_str(&mut port.protocol, "TCP");
        if port.target_port.is_none() {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
}

pub fn default_pod(pod: &mut Pod) {
    default_namespace(&mut pod.metadata);
    if let Some(spec) = pod.spec.as_mut() {
        for c in &mut spec.containers {
            for p in c.ports.iter_mut().flatten() {
                default_str(&mut p.protocol, "TCP");
            }
        }
    }
}

/// The API server's defaults for an EndpointSlice: namespace, port protocol TCP.
pub fn default_endpoint_slice(slice: &mut EndpointSlice) {
    default_namespace(&mut slice.metadata);
    for p in slice.ports.iter_mut().flatten() {
        default_str(&mut p.protocol, "TCP");
    }
}

/// The service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_SERVICE_NAME)
        .map(String::as_str)
}

/// The service's type after defaulting.
pub fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or(TYPE_CLUSTER_IP)
}

/// Whether the pod is an endpoint candidate: it has an address, is not finishing, and
/// (if it says) is Ready. lb runs no containers, so a pod that declares no conditions
/// counts as ready.
pub fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    candidate(
        pod_ips(pod).any(),
        status.phase.as_deref(),
        pod.metadata.deletion_timestamp.is_some(),
        status
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str()),
    )
}

/// [`pod_ready`] from what it reads of a pod that reports a status: whether it has
/// an address, its phase, whether it is being deleted, its Ready condition's status.
fn candidate(has_ip: bool, phase: Option<&str>, deleting: bool, ready: Option<&str>) -> bool {
    if !has_ip || matches!(phase, Some("Succeeded" | "Failed")) || deleting {
        return false;
    }
    ready.is_none_or(|r| r == "True")
}

/// The service's IPv4 ClusterIP, when it has one (none for headless or
/// ExternalName, or an IPv6-only service).
pub fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    cluster_ips(svc).into_iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

/// The service's ClusterIPs, the primary first (`spec.clusterIPs`, or
/// `spec.clusterIP` alone as older objects hold it); none for headless or
/// ExternalName.
pub fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec
            .cluster_ip
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect(),
    }
}

/// An IP family, as `spec.ipFamilies` and an EndpointSlice's `addressType` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn parse(name: &str) -> Option<Family> {
        match name {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A pod's addresses, one per family: `status.podIPs` (one per family, as the API
/// server validates them), else `status.podIP` alone as older objects hold it.
pub fn pod_ips(pod: &Pod) -> PodIps {
    let Some(status) = pod.status.as_ref() else {
        return PodIps::default();
    };
    ips_of(
        status.pod_ip.as_deref(),
        status.pod_ips.iter().flatten().map(|i| i.ip.as_str()),
    )
}

/// A pod's address of each family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl PodIps {
    pub fn any(&self) -> bool {
        self.v4.is_some() || self.v6.is_some()
    }
}

/// [`pod_ips`] from `status.podIP` and `status.podIPs[].ip`.
fn ips_of<'a>(pod_ip: Option<&'a str>, pod_ips: impl Iterator<Item = &'a str>) -> PodIps {
    let mut out = PodIps::default();
    for ip in pod_ip.into_iter().chain(pod_ips) {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => {
                out.v4.get_or_insert(a);
            }
            Ok(IpAddr::V6(a)) => {
                out.v6.get_or_insert(a);
            }
            Err(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
