//! What an agent could not program, for people: one JSON file per node in the
//! store's directory (`status/NODE.json`), written by the agent when the set of
//! refused services changes, read by `lb describe`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

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

/// Writes `status` whole (a reader never sees half of it).
pub fn write(store: &Path, status: &NodeStatus) -> std::io::Result<()> {
    let path = path(store, &status.node);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// The status the agent of `node` last wrote (None: none, or unreadable).
pub fn read(store: &Path, node: &str) -> Option<NodeStatus> {
    serde_json::from_slice(&std::fs::read(path(store, node)).ok()?).ok()
}
