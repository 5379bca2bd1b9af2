//! lb's kernel side as a library, one concern per module; the objects are the
//! binaries: `lb` (src/main.rs, what the agent loads) and `lb-bench` (the
//! benchmarks' generator, hops and sinks, loaded only by `cargo xtask bench`).
#![no_std]

pub mod clock;
pub mod conntrack;
pub mod csum;
pub mod ct_table;
pub mod deliver;
pub mod family;
pub mod flow;
pub mod frag;
pub mod fwd;
pub mod icmp;
pub mod lb;
pub mod maps;
pub mod nat;
pub mod neigh;
pub mod parse;
pub mod ratelimit;
pub mod reject;
pub mod sock;
pub mod stats;
pub mod tc;
pub mod verify;
pub mod xdp;
