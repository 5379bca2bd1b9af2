//! `lb conntrack`: the flows the data plane tracks, both directions of each.

use anyhow::Result;

use super::NodeArgs;
use crate::table;

pub fn run(a: &NodeArgs) -> Result<()> {
    let mut flows = a.maps()?.conntrack()?;
    flows.sort_by_key(|(k, v)| (v.svc_id, v.backend_id, k.sport_be, v.direction));
    print!("{}", table::conntrack(&flows));
    Ok(())
}
