//! Socket-level balancing for the node's own processes, whose packets never pass
//! an ingress hook: at connect() (TCP, connected UDP) and sendmsg() (unconnected UDP)
//! the destination a socket asks for is replaced by a backend, so its packets go to
//! the pod directly and need no per-packet NAT; recvmsg() shows an unconnected UDP
//! socket the service address again. Both families (connect4/6, sendmsg4/6,
//! recvmsg4/6). Only sockets of the agent's own network
//! namespace are touched.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
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
    // A socket's flow has no source port yet: each call draws one for the choice
    // (`lb::select` hashes the tuple), so sockets spread as random choices do. The
    // source address stays the unspecified one, ClientIP affinity's key for the
    // node's own sockets.
    // SAFETY: a helper with no preconditions.
    let draw = unsafe { bpf_get_prandom_u32() } as u16;
    let key = FlowKeyOf {
        saddr_be: A::default(),
        daddr_be: addr_be,
        sport_be: draw,
        dport_be: port_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    match lb::select(&key, Origin::Host, clock::now(), true) {
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

/// What differs between the families at the socket: where the address sits in the
/// kernel's `bpf_sock_addr` (`user_ip4`, or `user_ip6` word by word) and which map
/// remembers an unconnected UDP socket's service address.
pub trait SockFamily: Family {
    /// The address and port (network order) the call names.
    ///
    /// # Safety
    /// `sa` is the program's context, whose address fields are readable.
    unsafe fn read(sa: *const bpf_sock_addr) -> (Self, u16);
    /// Writes the address and port the call goes to (or, recvmsg, reports).
    ///
    /// # Safety
    /// `sa` is the context of a program that may write them.
    unsafe fn write(sa: *mut bpf_sock_addr, addr: Self, port_be: u16);
    /// Remembers that socket `cookie` sent to `front` through `backend`.
    fn remember(cookie: u64, backend: (Self, u16), front: (Self, u16));
    /// The service address socket `cookie` sent to through `backend`.
    fn recall(cookie: u64, backend: (Self, u16)) -> Option<(Self, u16)>;
}

impl SockFamily for u32 {
    #[inline(always)]
    unsafe fn read(sa: *const bpf_sock_addr) -> (u32, u16) {
        // SAFETY: the caller's.
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16) }
    }

    #[inline(always)]
    unsafe fn write(sa: *mut bpf_sock_addr, addr: u32, port_be: u16) {
        // SAFETY: the caller's.
        unsafe {
            (*sa).user_ip4 = addr;
            (*sa).user_port = port_be as u32;
        }
    }

    #[inline(always)]
    fn remember(cookie: u64, backend: (u32, u16), front: (u32, u16)) {
        let key = SockRevKey {
            cookie,
            backend_addr_be: backend.0,
            backend_port_be: backend.1,
            _pad: 0,
        };
        let value = SockRevValue {
            addr_be: front.0,
            port_be: front.1,
            _pad: 0,
        };
        let _ = LB_SOCK_REVNAT.insert(key, value, 0);
    }

    #[inline(always)]
    fn recall(cookie: u64, backend: (u32, u16)) -> Option<(u32, u16)> {
        let key = SockRevKey {
            cookie,
            backend_addr_be: backend.0,
            backend_port_be: backend.1,
            _pad: 0,
        };
        // SAFETY: values are replaced whole; a copy is taken.
        unsafe { LB_SOCK_REVNAT.get(key) }.map(|v| (v.addr_be, v.port_be))
    }
}

impl SockFamily for Addr6 {
    #[inline(always)]
    unsafe fn read(sa: *const bpf_sock_addr) -> (Addr6, u16) {
        // SAFETY: the caller's; user_ip6 is read a word at a time, as the kernel
        // allows.
        unsafe {
            (
                [
                    (*sa).user_ip6[0],
                    (*sa).user_ip6[1],
                    (*sa).user_ip6[2],
                    (*sa).user_ip6[3],
                ],
                (*sa).user_port as u16,
            )
        }
    }

    #[inline(always)]
    unsafe fn write(sa: *mut bpf_sock_addr, addr: Addr6, port_be: u16) {
        // SAFETY: the caller's; written a word at a time.
        unsafe {
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
            (*sa).user_port = port_be as u32;
        }
    }

    #[inline(always)]
    fn remember(cookie: u64, backend: (Addr6, u16), front: (Addr6, u16)) {
        let key = SockRevKey6 {
            cookie,
            backend_addr_be: backend.0,
            backend_port_be: backend.1,
            _pad: 0,
            _pad2: 0,
        };
        let value = SockRevValue6 {
            addr_be: front.0,
            port_be: front.1,
            _pad: 0,
        };
        let _ = LB6_SOCK_REVNAT.insert(key, value, 0);
    }

    #[inline(always)]
    fn recall(cookie: u64, backend: (Addr6, u16)) -> Option<(Addr6, u16)> {
        let key = SockRevKey6 {
            cookie,
            backend_addr_be: backend.0,
            backend_port_be: backend.1,
            _pad: 0,
            _pad2: 0,
        };
        // SAFETY: values are replaced whole; a copy is taken.
        unsafe { LB6_SOCK_REVNAT.get(key) }.map(|v| (v.addr_be, v.port_be))
    }
}

/// connect4/6 / sendmsg4/6: send the socket to a backend of the service it names.
/// Returns the program's verdict: 1 lets the call go on, 0 fails it.
#[inline(always)]
pub fn translate<A: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's bpf_sock_addr for this call; these fields are readable.
    let ((addr_be, port_be), proto) = unsafe { (A::read(sa), (*sa).protocol as u8) };
    let (svc_id, backend) = match choose(addr_be, port_be, proto) {
        Choice::Leave => return 1,
        Choice::Refuse => return 0,
        Choice::Backend(svc_id, backend) => (svc_id, backend),
    };
    if proto == PROTO_UDP {
        // SAFETY: the helper takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        A::remember(
            cookie,
            (backend.addr_be, backend.port_be),
            (addr_be, port_be),
        );
    }
    // SAFETY: connect and sendmsg programs may write the destination.
    unsafe { A::write(sa, backend.addr_be, backend.port_be) };
    stats::verdict(reason::SOCK_TRANSLATED, 0);
    stats::service(svc_id, backend.backend_id, 0);
    1
}

/// recvmsg4/6: an unconnected UDP socket sees the service address it sent to.
#[inline(always)]
pub fn restore<A: SockFamily>(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the helper takes the program's context; the fields are readable.
    let (cookie, backend) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), A::read(sa)) };
    if let Some((addr, port)) = A::recall(cookie, backend) {
        // SAFETY: recvmsg programs may write the source address they report.
        unsafe { A::write(sa, addr, port) };
    }
}
