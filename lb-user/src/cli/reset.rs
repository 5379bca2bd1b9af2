//! `lb reset`: a node's data plane removed (links and maps live as long as their pins).

use anyhow::{Context as _, Result};

use super::NodeArgs;

pub fn run(a: &NodeArgs) -> Result<()> {
    let (node, dir) = (a.node(), a.pins());
    if !dir.exists() {
        println!(
            "no data plane pinned for node {node} under {}",
            dir.display()
        );
        return Ok(());
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("data plane of node {node} removed ({})", dir.display());
    Ok(())
}
