//! The benchmarks' own object, loaded only by `cargo xtask bench` (never by the
//! agent): the parse-and-pass baseline and the conntrack floor the hot path is
//! compared with, traffic generators for BPF_PROG_RUN (live frames, or clones of a
//! socket buffer where the kernel refuses live frames), a plain
//! redirect hop (the ceiling), a plain hand-over at TC (the floor of delivering
//! socket buffers), a plain NAT hop to another node and counting sinks for the pod (XDP and TC ingress).
#![no_std]
#![no_main]

mod bench;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use lb_ebpf::{conntrack, parse, stats};

/// Settings of the benchmark-only programs (`lb_common::BENCH_*` indices).
#[map]
pub static LB_BENCH: Array<u32> = Array::with_max_entries(lb_common::BENCH_SETTINGS, 0);

/// Ethernet + IPv4 + UDP header templates: the generator's, the NAT hop's.
#[map]
pub static LB_BENCH_FRAME: Array<[u8; lb_common::BENCH_HDR_LEN]> =
    Array::with_max_entries(lb_common::BENCH_FRAMES, 0);

/// Frames the benchmark sink received.
#[map]
pub static LB_BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The benchmarks' baseline: the same parsing and counting as `lb_xdp`, no lookups,
/// no rewrite. Never attached.
#[xdp]
pub fn lb_xdp_baseline(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) {
        Ok(p) => stats::verdict(lb_common::reason::PASS_NO_SERVICE, p.ip_len),
        Err(reason) => stats::verdict(reason, 0),
    }
    xdp_action::XDP_PASS
}

/// Benchmarks only: the baseline plus one conntrack lookup (read, not refreshed),
/// the floor of an established-flow packet: what lb does beyond it is the rewrite,
/// the refresh and the per-service counters.
#[xdp]
pub fn lb_bench_ct_floor(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) {
        Ok(p) => {
            let found = conntrack::peek(&p.key);
            stats::verdict(
                if found {
                    lb_common::reason::NAT_ESTABLISHED
                } else {
                    lb_common::reason::PASS_NO_SERVICE
                },
                p.ip_len,
            )
        }
        Err(reason) => stats::verdict(reason, 0),
    }
    xdp_action::XDP_PASS
}

/// Benchmarks only: the live-frames traffic generator (see `bench`).
#[xdp]
pub fn lb_bench_gen(ctx: XdpContext) -> u32 {
    bench::generate(&ctx)
}

/// Benchmarks only: the generator where live frames are refused (see `bench`).
#[classifier]
pub fn lb_bench_gen_tc(ctx: TcContext) -> i32 {
    bench::generate_tc(&ctx)
}

/// Benchmarks only: a plain redirect hop, the ceiling lb is compared with.
#[xdp]
pub fn lb_bench_redirect(_ctx: XdpContext) -> u32 {
    bench::redirect()
}

/// Benchmarks only: the plain redirect hop plus the flow state every stateful hop
/// keeps (one entry per new flow, in lb's flow table).
#[xdp]
pub fn lb_bench_redirect_ct(ctx: XdpContext) -> u32 {
    bench::redirect_ct(&ctx)
}

/// Benchmarks only: a plain NAT hop to another node, the ceiling of forwarding to a
/// remote pod.
#[xdp]
pub fn lb_bench_nat_hop(ctx: XdpContext) -> u32 {
    bench::nat_hop(&ctx)
}

/// Benchmarks only: the pod's counting sink.
#[xdp]
pub fn lb_bench_sink(ctx: XdpContext) -> u32 {
    bench::sink(&ctx)
}

/// Benchmarks only: a plain hand-over at TC, the floor of delivering socket buffers.
#[classifier]
pub fn lb_bench_redirect_peer(_ctx: TcContext) -> i32 {
    bench::redirect_peer()
}

/// Benchmarks only: the pod's counting sink for socket buffers.
#[classifier]
pub fn lb_bench_sink_tc(ctx: TcContext) -> i32 {
    bench::sink_tc(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
