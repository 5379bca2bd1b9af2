//! `lb ranges`: the service CIDR and nodePort range the store allocates from, kept
//! in the store (as the API server's flags are the cluster's, not a client's).

use anyhow::Result;
use clap::Args;

use super::AllocationArgs;
use crate::store::Store;

#[derive(Args)]
pub struct RangesArgs {
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(store: &Store, a: &RangesArgs) -> Result<()> {
    let ranges = a.alloc.parse()?;
    let alloc = if ranges == Default::default() {
        store.require()?;
        store.ranges()?.unwrap_or_default()
    } else {
        store.set_ranges(&ranges)?
    };
    println!("service CIDR:     {}", alloc.cidr_string());
    println!("nodePort range:   {}", alloc.node_ports_string());
    Ok(())
}
