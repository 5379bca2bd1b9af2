//! What an agent could not program, for people: one JSON file per node in the
//! store's directory (`status/NODE.json`), written by the agent when the set of
//! refused services changes, read by `lb describe` and `lb get svc`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::store::files;

/// The services whose entries this node's maps refused, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// `namespace/name` -> the error.
    pub refused: BTreeMap<String, String>,
}

pub fn path(store: &Path, node: &str) -> PathBuf {
    store.join("status").join(format!("{node}.json"))
}

/// Writes `status` whole (a reader never sees half of it; 0600, no link followed).
pub fn write(store: &Path, status: &NodeStatus) -> std::io::Result<()> {
    let path = path(store, &status.node);
    if let Some(dir) = path.parent() {
        files::private_dir(dir)?;
    }
    let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    files::replace_private(&path, &body)
}

/// The status the agent of `node` last wrote (None: none, or unreadable).
pub fn read(store: &Path, node: &str) -> Option<NodeStatus> {
    serde_json::from_slice(&std::fs::read(path(store, node)).ok()?).ok()
}

/// The services some node refused: `namespace/name` -> those nodes, from every
/// node's status file.
pub fn refused_by_node(store: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(store.join("status")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(status) = std::fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeStatus>(&b).ok())
        else {
            continue;
        };
        for key in status.refused.into_keys() {
            out.entry(key).or_default().push(status.node.clone());
        }
    }
    out
}
