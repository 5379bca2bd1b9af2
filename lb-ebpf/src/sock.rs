//! Socket-level balancing for the node's own processes, whose packets never pass
//! an ingress hook: at connect() (TCP, connected UDP) and sendmsg() (unconnected UDP)
//! the destination a socket asks for is replaced by a backend, so its packets go to
//! the pod directly and need no per-packet NAT; recvmsg() shows an unconnected UDP
//! socket the service address again. Both families (connect4/6, sendmsg4/6,
//! recvmsg4/6). Only sockets of the agent's own network
//! namespace are touched.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Addr6, BackendOf, FlowKeyOf, PROTO_TCP, PROTO_UDP, SockRevKey, SockRevKey6, SockRevValue,
    SockRevValue6, reason,
};

use crate::{
    clock,
    family::Family,
    lb::{self, Origin, Select},
    maps::{LB_SOCK_REVNAT, LB6_SOCK_REVNAT},
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

/// What connect() / sendmsg() does with a destination.
enum Choice<A> {
    /// Not a service for the node's processes: the socket goes where it asked.
    Leave,
    /// A service without endpoints: the call fails.
    Refuse,
    /// A backend of service port `svc_id`.
    Backend(u32, BackendOf<A>),
}

/// The backend a socket asking for `addr_be`:`port_be` (protocol `proto`) goes to,
/// either family.
#[inline(always)]
fn choose<A: Family>(addr_be: A, port_be: u16, proto: u8) -> Choice<A> {
    if proto != PROTO_TCP && proto != PROTO_UDP || !lb::frontend_port(port_be) {
        return Choice::Leave;
    }
    let key = FlowKeyOf {
        saddr_be: A::default(),
        daddr_be: addr_be,
        sport_be: 0,
        dport_be: port_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    match lb::select(&key, Origin::Host, clock::now()) {
        Select::Backend { svc_id, backend } => Choice::Backend(svc_id, backend),
        Select::NoBackend => {
            stats::verdict(reason::REJECT_NO_BACKEND, 0);
            // SAFETY: cgroup programs may set the error the syscall returns.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            Choice::Refuse
        }
        Select::NotServed(_) | Select::NoLocalBackend => Choice::Leave,
    }
}

/// Counts a translated socket.
#[inline(always)]
fn translated(svc_id: u32, backend_id: u32) -> i32 {
    stats::verdict(reason::SOCK_TRANSLATED, 0);
    stats::service(svc_id, backend_id, 0);
    1
}

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
    let (svc_id, backend) = match choose(addr_be, port_be, proto) {
        Choice::Leave => return 1,
        Choice::Refuse => return 0,
        Choice::Backend(svc_id, backend) => (svc_id, backend),
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
        let front = SockRevValue {
            addr_be,
            port_be,
            _pad: 0,
        };
        let _ = LB_SOCK_REVNAT.insert(rev, front, 0);
    }
    // SAFETY: connect4 and sendmsg4 may write the destination.
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = backend.port_be as u32;
    }
    translated(svc_id, backend.backend_id)
}

/// connect6 / sendmsg6: [`translate`] for IPv6 sockets.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's bpf_sock_addr for this call; these fields are readable
    // (user_ip6 word by word).
    let (addr_be, port_be, proto): (Addr6, u16, u8) = unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port as u16,
            (*sa).protocol as u8,
        )
    };
    let (svc_id, backend) = match choose(addr_be, port_be, proto) {
        Choice::Leave => return 1,
        Choice::Refuse => return 0,
        Choice::Backend(svc_id, backend) => (svc_id, backend),
    };
    if proto == PROTO_UDP {
        // SAFETY: the helper takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let rev = SockRevKey6 {
            cookie,
            backend_addr_be: backend.addr_be,
            backend_port_be: backend.port_be,
            _pad: 0,
            _pad2: 0,
        };
        let front = SockRevValue6 {
            addr_be,
            port_be,
            _pad: 0,
        };
        let _ = LB6_SOCK_REVNAT.insert(rev, front, 0);
    }
    // SAFETY: connect6 and sendmsg6 may write the destination, word by word.
    unsafe {
        (*sa).user_ip6[0] = backend.addr_be[0];
        (*sa).user_ip6[1] = backend.addr_be[1];
        (*sa).user_ip6[2] = backend.addr_be[2];
        (*sa).user_ip6[3] = backend.addr_be[3];
        (*sa).user_port = backend.port_be as u32;
    }
    translated(svc_id, backend.backend_id)
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

/// recvmsg6: [`restore`] for IPv6 sockets.
#[inline(always)]
pub fn restore6(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the helper takes the program's context; the fields are readable.
    let key = unsafe {
        SockRevKey6 {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            backend_addr_be: [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            backend_port_be: (*sa).user_port as u16,
            _pad: 0,
            _pad2: 0,
        }
    };
    // SAFETY: values are replaced whole; a copy is taken.
    if let Some(front) = unsafe { LB6_SOCK_REVNAT.get(key) }.copied() {
        // SAFETY: recvmsg6 may write the source address it reports, word by word.
        unsafe {
            (*sa).user_ip6[0] = front.addr_be[0];
            (*sa).user_ip6[1] = front.addr_be[1];
            (*sa).user_ip6[2] = front.addr_be[2];
            (*sa).user_ip6[3] = front.addr_be[3];
            (*sa).user_port = front.port_be as u32;
        }
    }
}
