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
    /// The store's kind (None: not one lb plans).
    pub stored: Option<Kind>,
    /// Kept by the store for its clients, never planned (`store::kept`).
    pub kept: bool,
    /// Serves a `status` subresource.
    pub status: bool,
}

const WRITE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub const RESOURCES: [Resource; 7] = [
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
        kept: false,
        status: false,
    },
    // Nodes are registered as a kubelet would (kubectl apply); the agents
    // following the API read their addresses and pod networks, and rank them for
    // LoadBalancer announcements.
    Resource {
        name: "nodes",
        singular: "node",
        group: "",
        version: "v1",
        kind: "Node",
        namespaced: false,
        verbs: WRITE_VERBS,
        short_names: &["no"],
        categories: &[],
        stored: None,
        kept: true,
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
        kept: false,
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
        kept: false,
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
        kept: false,
        status: false,
    },
    // The agents' LoadBalancer elections, when they follow the store through
    // this API.
    Resource {
        name: "leases",
        singular: "lease",
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        namespaced: true,
        verbs: WRITE_VERBS,
        short_names: &[],
        categories: &[],
        stored: None,
        kept: true,
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
        kept: false,
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
