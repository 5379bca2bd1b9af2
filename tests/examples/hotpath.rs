//! Hot-path cost under BPF_PROG_RUN: ns per packet for lb_xdp on an established
//! flow, a new flow's first packet... and on non-service traffic, beside the
//! parse-and-pass baseline measured in the same run, at 1, 1,000 and 10,000 services
//! x 10 endpoints. Median of 5 runs of REPEAT packets each. Run as root:
//! `cargo xtask bench` (or `cargo run --release -p lb-tests --example hotpath`).

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_common::{Backend, BackendKey, PROTO_TCP, ServiceValue};
use lb_tests::packet::{Pkt, TCP_ACK, TCP_SYN};
use lb_user::{
    desired::{Entries, frontend},
    loader::Dataplane,
    sync,
};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;

fn ns_per_packet(prog: &Xdp, frame: &[u8]) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let mut out = vec![0u8; frame.len() + 64];
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: REPEAT,
                ..Default::default()
            };
            prog.test_run(opts)
                .expect("BPF_PROG_RUN")
                .duration
                .as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

/// `n` NodePort services on 192.168.1.2:30000+i, 10 endpoints each.
fn fill(dp: &mut Dataplane, n: u32) {
    let mut want = Entries::default();
    for i in 0..n {
        let id = i + 1;
        want.services.insert(
            frontend(Ipv4Addr::new(192, 168, 1, 2), 30000 + i as u16, PROTO_TCP),
            ServiceValue {
                svc_id: id,
                backend_count: 10,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        for slot in 0..10u32 {
            let addr = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 1);
            want.backends.insert(
                BackendKey { svc_id: id, slot },
                Backend {
                    addr_be: u32::from(addr).to_be(),
                    port_be: (8000 + slot as u16).to_be(),
                    proto: PROTO_TCP,
                    _pad: 0,
                    backend_id: id * 10 + slot,
                },
            );
        }
    }
    dp.maps
        .write(&sync::diff(&Entries::default(), &want))
        .expect("fill maps");
}

fn main() {
    assert!(lb_tests::is_root(), "run as root (BPF_PROG_RUN)");
    println!(
        "| services x 10 endpoints | baseline parse+pass (ns) | lb non-service (ns) | lb established flow (ns) | established / baseline |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1u32, 1_000, 10_000] {
        let mut dp = Dataplane::load(None).expect("load");
        fill(&mut dp, n);
        let port = 30000 + (n - 1) as u16; // the last service inserted
        let syn = Pkt::tcp("192.168.1.10", 40000, "192.168.1.2", port, TCP_SYN).build();
        let ack = Pkt::tcp("192.168.1.10", 40000, "192.168.1.2", port, TCP_ACK)
            .payload(&[0u8; 64])
            .build();
        let other = Pkt::tcp("192.168.1.10", 40000, "192.168.1.2", 22, TCP_ACK)
            .payload(&[0u8; 64])
            .build();
        let baseline = ns_per_packet(dp.xdp_baseline().unwrap(), &ack);
        let xdp = dp.xdp().unwrap();
        let non_service = ns_per_packet(xdp, &other);
        // Create the flow once; every repeat after that is an established packet.
        let mut out = vec![0u8; syn.len() + 64];
        xdp.test_run(TestRunOptions {
            data_in: Some(&syn),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap();
        let established = ns_per_packet(xdp, &ack);
        println!(
            "| {n} | {baseline:.1} | {non_service:.1} | {established:.1} | {:.2}x |",
            established / baseline
        );
    }
}
