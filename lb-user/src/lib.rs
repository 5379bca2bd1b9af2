//! lb's user side: the agent and the CLI. Data moves one way: manifests (`model`)
//! -> the store (`store`: persistence, allocation, apply semantics) -> the objects
//! and their indexes (`state`) -> what each service port needs (`plan`) -> map
//! entries with their ids and slots (`entries`) -> ordered writes (`sync`) -> the
//! maps (`maps`, the only user of `aya::maps`), with `loader` attaching the programs
//! and `agent` driving the loop, which `telemetry` shows to monitoring systems and
//! `svc_health` to external load balancers (healthCheckNodePorts). LoadBalancer
//! addresses come from `lb_ipam` (pools) and are announced by `announce`, elected
//! through heartbeats in the store or, in Kubernetes mode, through Leases (`lease`,
//! `kube_lb`).
//! `cli` is the command line over all of it.

pub mod agent;
pub mod announce;
pub mod api;
pub mod cli;
pub mod ct_table;
pub mod dns;
pub mod entries;
pub mod freed;
pub mod kube_lb;
pub mod kube_source;
pub mod lb_ipam;
pub mod lease;
pub mod loader;
pub mod maps;
pub mod model;
pub mod netif;
pub mod par;
pub mod plan;
pub mod sizes;
pub mod slice_controller;
pub mod state;
pub mod status;
pub mod store;
pub mod svc_health;
pub mod sync;
pub mod table;
pub mod telemetry;
pub mod trace;
