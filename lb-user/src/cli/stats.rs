//! `lb stats`: the data plane's verdict counters, every packet by reason.

use anyhow::Result;

use super::NodeArgs;
use crate::table;

pub fn run(a: &NodeArgs) -> Result<()> {
    print!("{}", table::verdicts(&a.maps()?.verdicts()?));
    Ok(())
}
