//! DNS helpers of the tests and the bench: a dnsmasq (Debian's) in a namespace, and
//! an A query encoded by hand (not by lb's library, so the tests check lb's wire
//! format against another encoder).

use anyhow::Result;

use crate::{Netns, Topology};

/// Starts dnsmasq in `ns` as `label`, answering on `addr:port` from `extra`
/// (`--host-record=...`, `--addn-hosts=...`), with no upstream, no /etc/hosts and
/// no pid file (nothing of the test outside its namespaces); stopped with the
/// topology.
pub fn dnsmasq(
    t: &mut Topology,
    ns: &Netns,
    label: &str,
    addr: &str,
    port: u16,
    extra: &[&str],
) -> Result<u32> {
    let (listen, port) = (format!("--listen-address={addr}"), format!("--port={port}"));
    let mut argv = vec![
        "dnsmasq",
        "--keep-in-foreground",
        "--pid-file=",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &listen,
        &port,
        "--log-facility=-",
    ];
    argv.extend_from_slice(extra);
    t.spawn(ns, label, &argv, &[])
}

/// An A query for `name` with id `id` (recursion desired), as the wire has it.
pub fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
