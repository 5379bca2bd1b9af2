//! Socket-level balancing for the node's own processes, whose packets never pass
//! an ingress hook: at connect() (TCP, connected UDP) and sendmsg() (unconnected UDP)
//! the destination a socket asks for is replaced by a backend, so its packets go to
//! the pod directly and need no per-packet NAT; recvmsg() shows an unconnected UDP
//! socket the service address again. Only sockets of the agent's own network
//! namespace are touched.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, SockRevKey, SockRevValue, reason};

use crate::{
    clock,
    lb::{self, Origin, Select},
    maps::LB_SOCK_REVNAT,
    stats,
};

/// Set by the agent at load time (`lb_common::GLOBAL_NETNS_COOKIE`).
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    // SAFETY: reads a global the loader set; the helper takes the program's context.
    let (want, have) = unsafe {
        (
            core::ptr::read_volatile(&NETNS_COOKIE),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    want != 0 && want == have
}

/// What connect() / sendmsg() answers for a service with no endpoints: refused at
/// once, as a TCP peer's RST or kube-proxy's REJECT rule would make it.
const ECONNREFUSED: i32 = 111;

/// connect4 / sendmsg4: send the socket to a backend of the service it names.
/// Returns the program's verdict: 1 lets the call go on, 0 fails it.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's bpf_sock_addr for this call; these fields are readable.
    let (addr_be, port_be, proto) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != PROTO_TCP && proto != PROTO_UDP || !lb::frontend_port(port_be) {
        return 1;
    }
    let key = FlowKey {
        saddr_be: 0,
        daddr_be: addr_be,
        sport_be: 0,
        dport_be: port_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let now = clock::now();
    let (svc_id, backend) = match lb::select(&key, Origin::Host, now) {
        Select::Backend { svc_id, backend } => (svc_id, backend),
        Select::NoBackend => {
            stats::verdict(reason::REJECT_NO_BACKEND, 0);
            // SAFETY: cgroup programs may set the error the syscall returns.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return 0;
        }
        // Not a service for the node's processes: the socket goes where it asked.
        Select::NotServed(_) | Select::NoLocalBackend => return 1,
    };
    if proto == PROTO_UDP {
        // SAFETY: the helper takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let rev = SockRevKey {
            cookie,
            backend_addr_be: backend.addr_be,
            backend_port_be: backend.port_be,
            _pad: 0,
        };
        let _ = LB_SOCK_REVNAT.insert(
            rev,
            SockRevValue {
                addr_be,
                port_be,
                _pad: 0,
            },
            0,
        );
    }
    // SAFETY: connect4 and sendmsg4 may write the destination.
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = backend.port_be as u32;
    }
    stats::verdict(reason::SOCK_TRANSLATED, 0);
    stats::service(svc_id, backend.backend_id, 0);
    1
}

/// recvmsg4: an unconnected UDP socket sees the service address it sent to.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the helper takes the program's context; the fields are readable.
    let key = unsafe {
        SockRevKey {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            backend_addr_be: (*sa).user_ip4,
            backend_port_be: (*sa).user_port as u16,
            _pad: 0,
        }
    };
    // SAFETY: values are replaced whole; a copy is taken.
    if let Some(front) = unsafe { LB_SOCK_REVNAT.get(key) }.copied() {
        // SAFETY: recvmsg4 may write the source address it reports.
        unsafe {
            (*sa).user_ip4 = front.addr_be;
            (*sa).user_port = front.port_be as u32;
        }
    }
}
