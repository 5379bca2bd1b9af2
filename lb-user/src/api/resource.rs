//! The resources the API serves, in one table: discovery, the OpenAPI document,
//! routing and error messages all read it.

use crate::model::Kind;

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// The URL's plural (`services`).
    pub name: &'static str,
    pub singular: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// The store's kind (None: served read-only from elsewhere).
    pub stored: Option<Kind>,
    /// Serves a `status` subresource.
    pub status: bool,
}

const WRITE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub const RESOURCES: [Resource; 6] = [
    Resource {
        name: "namespaces",
        singular: "namespace",
        group: "",
        version: "v1",
        kind: "Namespace",
        namespaced: false,
        verbs: &["get", "list"],
        short_names: &["ns"],
        categories: &[],
        stored: None,
        status: false,
    },
    // lb's store keeps no Node objects: served (empty) so clients that watch
    // them (an agent in Kubernetes mode) start.
    Resource {
        name: "nodes",
        singular: "node",
        group: "",
        version: "v1",
        kind: "Node",
        namespaced: false,
        verbs: &["get", "list", "watch"],
        short_names: &["no"],
        categories: &[],
        stored: None,
        status: false,
    },
    Resource {
        name: "pods",
        singular: "pod",
        group: "",
        version: "v1",
        kind: "Pod",
        namespaced: true,
        verbs: WRITE_VERBS,
        short_names: &["po"],
        categories: &["all"],
        stored: Some(Kind::Pod),
        status: false,
    },
    Resource {
        name: "services",
        singular: "service",
        group: "",
        version: "v1",
        kind: "Service",
        namespaced: true,
        verbs: WRITE_VERBS,
        short_names: &["svc"],
        categories: &["all"],
        stored: Some(Kind::Service),
        status: true,
    },
    // Nothing makes events here; served (empty) so `kubectl describe` lists none.
    Resource {
        name: "events",
        singular: "event",
        group: "",
        version: "v1",
        kind: "Event",
        namespaced: true,
        verbs: &["list", "watch"],
        short_names: &["ev"],
        categories: &[],
        stored: None,
        status: false,
    },
    Resource {
        name: "endpointslices",
        singular: "endpointslice",
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        namespaced: true,
        verbs: WRITE_VERBS,
        short_names: &[],
        categories: &[],
        stored: Some(Kind::EndpointSlice),
        status: false,
    },
];

impl Resource {
    /// `v1`, `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource as the API server's messages name it (`services`,
    /// `endpointslices.discovery.k8s.io`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.name.to_string()
        } else {
            format!("{}.{}", self.name, self.group)
        }
    }

    /// The kind as the API server's messages name it (`Service`,
    /// `EndpointSlice.discovery.k8s.io`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The resource `name` of group `group`.
    pub fn find(group: &str, name: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.name == name)
    }
}
