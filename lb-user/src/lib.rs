//! lb's user side: the agent and the CLI. Data moves one way: manifests (`model`) ->
//! the store (`store`) -> desired map entries (`desired`) -> ordered writes (`sync`)
//! -> the maps (`maps`, the only user of `aya::maps`), with `loader` attaching the
//! programs and `agent` driving the loop.

pub mod agent;
pub mod announce;
pub mod cli;
pub mod desired;
pub mod kube_source;
pub mod ledger;
pub mod loader;
pub mod maps;
pub mod model;
pub mod netif;
pub mod par;
pub mod store;
pub mod sync;
pub mod table;
