//! `lb conntrack`: the flows the data plane tracks, both directions of each, both
//! families.

use anyhow::Result;

use super::NodeArgs;
use crate::table;

pub fn run(a: &NodeArgs) -> Result<()> {
    let maps = a.maps()?;
    let mut v4 = maps.conntrack()?;
    v4.sort_by_key(|(k, v)| (v.svc_id, v.backend_id, k.sport_be, v.direction));
    let mut v6 = maps.conntrack6()?;
    v6.sort_by_key(|(k, v)| (v.svc_id, v.backend_id, k.sport_be, v.direction));
    print!("{}", table::conntrack(&v4, &v6));
    Ok(())
}
