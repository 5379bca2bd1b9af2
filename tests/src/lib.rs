//! Test support shared by lb's integration tests and the `cargo xtask run` demo:
//! a guard that builds network namespaces, veth links, processes and a private
//! bpffs, and undoes all of it on drop (also when a test panics).
//!
//! Safety rules it enforces: addresses are only ever given inside namespaces it
//! created; links are created directly inside those namespaces (never in the root
//! namespace); only processes it started are signalled, by PID.

pub mod cluster;
pub mod dns;
pub mod kubectl;
pub mod lbctl;
pub mod packet;
pub mod scale;
pub mod topology;

pub use topology::{Netns, Topology, dual, seeds};

/// Whether this process may create namespaces and load eBPF (root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails loudly (never passes silently) when a test needs privileges it lacks.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, eBPF): run it through `cargo xtask test`, which runs as root in CI"
    );
}
