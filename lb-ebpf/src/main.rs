//! lb's programs: entry points only, each handing its context to the pipeline of
//! its hook (`lb_ebpf::xdp`, `lb_ebpf::tc`, `lb_ebpf::sock`).
//!
//! - `lb_xdp` (XDP, external interfaces): starts and continues flows to NodePort and
//!   LoadBalancer frontends arriving from outside the node.
//! - `lb_tc_ingress` (TC ingress, pod interfaces): the same for traffic from pods
//!   (ClusterIP). On external interfaces it hands frames XDP translated to local
//!   pods and finishes SNAT flows XDP could not forward.
//! - `lb_tc_egress` (TC egress, every lb interface): translates replies back to the
//!   service address after the kernel has routed them, so a rewritten source that is
//!   the node's own address never meets the ingress martian-source check.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4` (cgroup): the node's own processes,
//!   whose packets pass no ingress hook, are sent to a backend at the socket.
//! - `lb_clock` (XDP, never attached): the agent reads the kernel side's clock
//!   through it.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_ebpf::{flow::Hook, sock, tc, xdp};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// Writes the clock to `LB_CLOCK` (the agent runs it with BPF_PROG_RUN to read the
/// kernel side's time); never attached.
#[xdp]
pub fn lb_clock(_ctx: XdpContext) -> u32 {
    lb_ebpf::clock::publish();
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Ingress)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    tc::run(&ctx, Hook::Egress)
}

/// The node's own processes: socket-level balancing (see `sock`).
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate::<u32>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate::<u32>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    sock::translate::<lb_common::Addr6>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::translate::<lb_common::Addr6>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::restore::<lb_common::Addr6>(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore::<u32>(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
