//! Flow tracking: each translated flow has two entries, one keyed by the original
//! tuple (client -> service) and one by the reply tuple (backend -> client), each
//! holding the tuple its packets are rewritten to.
//!
//! A new flow whose source stays (no SNAT port) is written with its reply entry
//! alone: its backend is a hash of its tuple (`lb::select`), so a later packet of
//! it picks the same backend and finds the flow by that reply entry. Its original
//! entry is written then (a second packet before any answer: from there on the
//! flow keeps its backend whatever the service's slots become) or at its first
//! answer, derived from the reply entry (which holds everything it says). A new
//! flow costs one map write instead of two, and a flood of one-packet flows
//! (scans, SYN floods) fills the table half as fast. SNAT flows, whose reply tuple
//! carries a port chosen at random, are written with both entries at once.
//!
//! A new flow's entries go to `LB_CT` (LRU: a flood of new flows evicts the least
//! recently used of them); once the backend answers, both move to `LB_CT_ASSURED`,
//! which nothing evicts, so a flood never takes a live connection's entries (as
//! netfilter's early drop spares assured connections). Lookups try the assured
//! table first: an established flow costs one lookup.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{
    BackendOf, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_HAIRPIN, CT_F_SNAT, CT_TCP_CLOSING,
    CT_TCP_SEEN_FIN, CT_TCP_SEEN_REPLY, CT_TCP_SEEN_RST, CtTimeouts, CtValueOf, FlowKeyOf,
    PROTO_TCP, SNAT_PORT_MAX, SNAT_PORT_MIN, reason,
};

use crate::{
    clock,
    ct_table::{self, NewFlows},
    family::Family,
    parse::{TCP_FIN, TCP_RST, opens_connection},
};

/// Set by the agent at load time (`lb_common::GLOBAL_CT_TIMEOUTS`, `lb agent
/// --ct-timeout-*`).
#[unsafe(no_mangle)]
static CT_TIMEOUTS: CtTimeouts = CtTimeouts::DEFAULT;

/// How often (at most, seconds) a hit refreshes `last_seen`, to keep writes off the
/// hot path.
const REFRESH_S: u64 = 1;

/// The tuple a packet of the flow is rewritten to.
#[inline(always)]
pub fn nat_tuple<A: Family>(ct: &CtValueOf<A>, proto: u8) -> FlowKeyOf<A> {
    FlowKeyOf {
        saddr_be: ct.nat_saddr_be,
        daddr_be: ct.nat_daddr_be,
        sport_be: ct.nat_sport_be,
        dport_be: ct.nat_dport_be,
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// The key of the entry for the other direction of a flow whose packets are
/// rewritten to `nat`: the tuple reversed.
#[inline(always)]
pub fn peer_key<A: Family>(nat: &FlowKeyOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf {
        saddr_be: nat.daddr_be,
        daddr_be: nat.saddr_be,
        sport_be: nat.dport_be,
        dport_be: nat.sport_be,
        proto: nat.proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// The `CT_TCP_SEEN_*` closing bits a packet of protocol `proto` with `tcp_flags`
/// carries (none but for TCP).
#[inline(always)]
fn closing_bits(proto: u8, tcp_flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return 0;
    }
    let mut bits = 0;
    if tcp_flags & TCP_FIN != 0 {
        bits |= CT_TCP_SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= CT_TCP_SEEN_RST;
    }
    bits
}

/// Whether a packet with `tcp_flags` starts a new connection on the tuple of a
/// closing one (a bare SYN while the entry, `entry_flags`, is closing).
#[inline(always)]
fn reopens(proto: u8, tcp_flags: u8, entry_flags: u8) -> bool {
    proto == PROTO_TCP && opens_connection(tcp_flags) && entry_flags & CT_TCP_CLOSING != 0
}

#[inline(always)]
fn expired<A: Family>(ct: &CtValueOf<A>, proto: u8, now: u64) -> bool {
    // SAFETY: a plain read of a global the loader set.
    let timeouts = unsafe { core::ptr::read_volatile(&CT_TIMEOUTS) };
    ct.expired(proto, now, clock::ticks_per_s(), &timeouts)
}

/// The entry for `key`: the assured one if there is a live one, else the new-flow
/// one. An expired assured entry found on the way is removed with its peer, so it
/// never shadows a newer flow of the same tuple. (pointer, whether assured)
#[inline(always)]
fn find<A: Family>(key: &FlowKeyOf<A>, now: u64) -> Option<(*mut CtValueOf<A>, bool)> {
    if let Some(ct) = A::assured().get_ptr_mut(key) {
        // SAFETY: the pointer came from a successful lookup; entries are plain data.
        let entry = unsafe { *ct };
        if !expired(&entry, key.proto, now) {
            return Some((ct, true));
        }
        retire(key, &entry);
    }
    A::conntrack().get_ptr_mut(key).map(|ct| (ct, false))
}

/// Removes an assured flow (this entry and its peer).
#[inline(always)]
fn retire<A: Family>(key: &FlowKeyOf<A>, entry: &CtValueOf<A>) {
    let _ = A::assured().remove(key);
    let _ = A::assured().remove(peer_key(&nat_tuple(entry, key.proto)));
}

/// The original-direction entry of the flow whose reply entry is `entry` under
/// `key`: the reply tuple reversed is what originals are rewritten to.
#[inline(always)]
fn original_of<A: Family>(key: &FlowKeyOf<A>, entry: &CtValueOf<A>) -> CtValueOf<A> {
    CtValueOf {
        nat_saddr_be: key.daddr_be,
        nat_daddr_be: key.saddr_be,
        nat_sport_be: key.dport_be,
        nat_dport_be: key.sport_be,
        direction: CT_DIR_ORIGINAL,
        ..*entry
    }
}

/// Moves a flow whose backend just answered (`key` is its reply entry, `entry` as
/// now written) to the assured table, its original entry with it (derived from the
/// reply entry when the flow had none yet). With no room there it stays where it
/// is, its original entry written if it had none (the client's next packets need
/// it), and is tried again at its next refresh.
#[inline(always)]
fn assure<A: Family>(key: &FlowKeyOf<A>, entry: &CtValueOf<A>) {
    let peer = peer_key(&nat_tuple(entry, key.proto));
    // SAFETY: the value is copied at once.
    let (original, kept) = match unsafe { A::conntrack().get(peer) } {
        Some(o) => (*o, true),
        None => (original_of(key, entry), false),
    };
    if A::assured().insert(peer, original, 0).is_err() {
        if !kept {
            let _ = A::conntrack().insert(peer, original, 0);
        }
        return;
    }
    if A::assured().insert(key, *entry, 0).is_err() {
        let _ = A::assured().remove(peer);
        if !kept {
            let _ = A::conntrack().insert(peer, original, 0);
        }
        return;
    }
    let _ = A::conntrack().remove(key);
    if kept {
        let _ = A::conntrack().remove(peer);
    }
}

/// What conntrack knows of a packet's tuple (as Cilium's `ct_status`).
pub enum CtState<A> {
    /// No live flow: none, expired, or a new TCP connection (a bare SYN) reusing the
    /// tuple of a closing one.
    New,
    /// The original direction (client -> service) of a flow.
    Established(CtValueOf<A>),
    /// The reply direction (backend -> client) of a flow.
    Reply(CtValueOf<A>),
    /// A FIN or RST that would close a live flow, whose checksum does not hold: the
    /// flow is left as it was.
    Corrupt,
}

/// The state of this packet's tuple; a live entry is refreshed (and marked closing
/// in both directions when the packet carries FIN or RST and `closing_valid()`
/// says its checksum holds; asked only then).
#[inline(always)]
pub fn lookup<A: Family>(
    key: &FlowKeyOf<A>,
    tcp_flags: u8,
    now: u64,
    closing_valid: impl FnOnce() -> bool,
) -> CtState<A> {
    match live(key, tcp_flags, now, closing_valid) {
        Live::None => CtState::New,
        Live::Corrupt => CtState::Corrupt,
        Live::Flow(ct) if ct.direction == CT_DIR_REPLY => CtState::Reply(ct),
        Live::Flow(ct) => CtState::Established(ct),
    }
}

enum Live<A> {
    None,
    Corrupt,
    Flow(CtValueOf<A>),
}

#[inline(always)]
fn live<A: Family>(
    key: &FlowKeyOf<A>,
    tcp_flags: u8,
    now: u64,
    closing_valid: impl FnOnce() -> bool,
) -> Live<A> {
    let Some((ct, assured)) = find(key, now) else {
        return Live::None;
    };
    // SAFETY: the pointer came from a successful lookup; entries are plain data and a
    // torn read at worst refreshes an entry one second early or late.
    let entry = unsafe { &mut *ct };
    if expired(entry, key.proto, now) {
        return Live::None;
    }
    if reopens(key.proto, tcp_flags, entry.tcp_flags) {
        // A new connection on a closing one's tuple: the old one's entries go.
        if assured {
            retire(key, entry);
        }
        return Live::None;
    }
    let mut bits = closing_bits(key.proto, tcp_flags);
    if bits & !entry.tcp_flags != 0 && !closing_valid() {
        return Live::Corrupt;
    }
    // The backend's first answer establishes the flow (both entries, once).
    let reply = entry.direction == CT_DIR_REPLY;
    if reply && entry.tcp_flags & CT_TCP_SEEN_REPLY == 0 {
        bits |= CT_TCP_SEEN_REPLY;
    }
    let refresh = now.wrapping_sub(entry.last_seen) >= clock::secs(REFRESH_S);
    if bits & !entry.tcp_flags != 0 {
        entry.tcp_flags |= bits;
        entry.last_seen = now;
        // The other direction closes (or is established) with this one.
        let peer = peer_key(&nat_tuple(entry, key.proto));
        if let Some((other, _)) = find(&peer, now) {
            // SAFETY: as above.
            unsafe {
                (*other).tcp_flags |= bits;
                (*other).last_seen = now;
            }
        }
    } else if refresh {
        entry.last_seen = now;
    }
    let seen = *entry;
    // An answered flow not yet assured: at its first answer, then at each refresh
    // (the assured table may have had no room).
    if !assured && reply && (bits & CT_TCP_SEEN_REPLY != 0 || refresh) {
        assure(key, &seen);
    }
    Live::Flow(seen)
}

/// The state of `key`'s flow for an ICMP error about it: as [`lookup`], but nothing
/// is refreshed or closed (an error is no packet of the flow).
#[inline(always)]
pub fn related<A: Family>(key: &FlowKeyOf<A>, now: u64) -> CtState<A> {
    // SAFETY: the values are copied at once. An expired assured entry does not
    // hide a new flow of the same tuple.
    let assured = unsafe { A::assured().get(key) }
        .copied()
        .filter(|ct| !expired(ct, key.proto, now));
    // SAFETY: as above.
    let found = assured.or_else(|| unsafe { A::conntrack().get(key) }.copied());
    match found {
        Some(ct) if !expired(&ct, key.proto, now) => {
            if ct.direction == CT_DIR_REPLY {
                CtState::Reply(ct)
            } else {
                CtState::Established(ct)
            }
        }
        _ => CtState::New,
    }
}

/// Removes a flow that was just created for a packet that is not sent on after
/// all (dropped, passed, no way out): no entry outlives a packet that was not
/// translated, and its SNAT port is free again. `nat`: the tuple it was given. (A
/// new flow's entries are in `LB_CT`.)
#[inline(always)]
pub fn forget<A: Family>(key: &FlowKeyOf<A>, nat: &FlowKeyOf<A>) {
    let _ = A::conntrack().remove(key);
    let _ = A::conntrack().remove(peer_key(nat));
}

/// [`forget`] for IPv6, a subprogram of its own (see `flow::Work6`).
#[inline(never)]
pub fn forget6(key: &FlowKeyOf<lb_common::Addr6>, nat: &FlowKeyOf<lb_common::Addr6>) {
    forget(key, nat);
}

/// Whether the tuple has an entry (no expiry check, no refresh): the benchmarks'
/// conntrack floor.
#[inline(always)]
pub fn peek<A: Family>(key: &FlowKeyOf<A>) -> bool {
    // SAFETY: only whether the lookup found something is used.
    unsafe { A::conntrack().get(key).is_some() }
}

/// How a new flow's source is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    /// The client's own address (pods and local backends see the real client).
    None,
    /// A local pod that lands on itself: its packets come from the hairpin address
    /// (a packet from its own address to itself would never leave it).
    Hairpin,
    /// To this node's address (`create`'s `node_addr`; a value every variant has, so
    /// no register is ever left undefined) and a free port of
    /// `SNAT_PORT_MIN..=SNAT_PORT_MAX`: the backend is on another node and must
    /// answer through this one.
    Node,
}

/// How [`create`] may record a flow.
#[derive(Clone, Copy)]
pub struct Start<A> {
    pub snat: Snat,
    /// The address of `Snat::Node`.
    pub node_addr: A,
    /// None when the packet may start a flow; otherwise the reason it may not
    /// (`PASS_FRAGMENT`, `PASS_TCP_NOT_SYN`): it may only continue one.
    pub refused: Option<u32>,
}

/// How many SNAT ports a new flow tries before giving up.
const SNAT_TRIES: u32 = 8;

/// How [`create`] recorded a packet's flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new flow: its entries were written for this packet.
    New,
    /// A later packet of a flow no answer has established yet, found by its reply
    /// entry: its original entry was written now.
    Continued,
    /// A FIN or RST that would close such a flow, whose checksum does not hold:
    /// nothing was written (as `CtState::Corrupt`).
    Corrupt,
}

/// Records the flow from `key` (client -> frontend) to `backend` (both directions
/// for a SNAT flow, the reply entry alone otherwise: see the module's notes) and
/// returns the tuple the packet is rewritten to, the flow's `CT_F_*` flags and
/// `Created::New`; or, for a later packet of a flow written with its reply entry
/// alone, writes its original entry from that one and returns `Created::Continued`
/// (or `Created::Corrupt`: `closing_valid` as for [`lookup`]). `Err(reason)` when
/// it can do neither (`how.refused`'s reason: a packet that may not start a flow
/// and continues none).
#[inline(always)]
pub fn create<A: Family>(
    key: &FlowKeyOf<A>,
    svc_id: u32,
    backend: &BackendOf<A>,
    tcp_flags: u8,
    now: u64,
    how: Start<A>,
    closing_valid: impl FnOnce() -> bool,
) -> Result<(FlowKeyOf<A>, u8, Created), u32> {
    let Start {
        snat,
        node_addr,
        refused,
    } = how;
    let closing = closing_bits(key.proto, tcp_flags);
    let (nat_saddr_be, nat_sport_be, flags) = match snat {
        Snat::Hairpin => (A::HAIRPIN, key.sport_be, CT_F_HAIRPIN),
        Snat::None => (key.saddr_be, key.sport_be, 0),
        Snat::Node if let Some(reason) = refused => return Err(reason),
        Snat::Node => (
            node_addr,
            free_snat_port(node_addr, backend, key.proto)?,
            CT_F_SNAT,
        ),
    };
    let nat = FlowKeyOf {
        saddr_be: nat_saddr_be,
        daddr_be: backend.addr_be,
        sport_be: nat_sport_be,
        dport_be: backend.port_be,
        proto: key.proto,
        _pad: 0,
        _pad2: 0,
    };
    let reply_key = peer_key(&nat);
    let reply = CtValueOf {
        last_seen: now,
        nat_saddr_be: key.daddr_be,
        nat_daddr_be: key.saddr_be,
        nat_sport_be: key.dport_be,
        nat_dport_be: key.sport_be,
        svc_id,
        backend_id: backend.backend_id,
        direction: CT_DIR_REPLY,
        tcp_flags: closing,
        flags,
        _pad: 0,
    };
    let full = |_| reason::PASS_CT_FULL;
    // The original entry, only where it is written: built from the reply entry, so
    // the two never sit on the stack at once (IPv6's verifier stack is tight).
    if snat == Snat::Node {
        A::conntrack().insert(reply_key, reply, 0).map_err(full)?;
        let original = original_of(&reply_key, &reply);
        A::conntrack().insert(key, original, 0).map_err(full)?;
        return Ok((nat, flags, Created::New));
    }
    // A new flow's one write, which also says whether the reply entry is there
    // already (no lookup before it: a lookup misses the cache as the write does).
    // When it is (a later packet), the failed write may have cost the table its
    // least recently used entry (the kernel takes a free node before it looks):
    // once per flow, at its second packet.
    if refused.is_none() {
        match A::conntrack().insert(reply_key, reply, BPF_NOEXIST as u64) {
            Ok(()) => return Ok((nat, flags, Created::New)),
            Err(e) if e != ct_table::EEXIST => return Err(reason::PASS_CT_FULL),
            Err(_) => {}
        }
    }
    if let Some(created) = continued(&reply_key, key, svc_id, tcp_flags, now, closing_valid)? {
        return Ok((nat, flags, created));
    }
    if let Some(reason) = refused {
        return Err(reason);
    }
    // Another flow's reply entry, or a dead one's: this flow's takes its place.
    A::conntrack().insert(reply_key, reply, 0).map_err(full)?;
    Ok((nat, flags, Created::New))
}

/// If `reply_key` holds the live reply entry of the flow `key` (client ->
/// frontend) of service port `svc_id` started, a flow written with its reply entry
/// alone: its original entry written now, from that one (the flow's state, not
/// this packet's), and the packet's FIN or RST marks both as [`lookup`] would
/// (`Created::Corrupt` when its checksum does not hold: nothing written). None
/// when there is no such flow; a bare SYN on a closing flow's tuple starts a new
/// one, as in [`lookup`].
#[inline(always)]
fn continued<A: Family>(
    reply_key: &FlowKeyOf<A>,
    key: &FlowKeyOf<A>,
    svc_id: u32,
    tcp_flags: u8,
    now: u64,
    closing_valid: impl FnOnce() -> bool,
) -> Result<Option<Created>, u32> {
    let Some(r) = A::conntrack().get_ptr_mut(reply_key) else {
        return Ok(None);
    };
    // SAFETY: the pointer came from a successful lookup; the entry is read and
    // marked in place (no copy on the stack); a torn read at worst takes a flow
    // for new.
    let r = unsafe { &mut *r };
    let ours = r.is_reply_of(key, svc_id)
        && !reopens(key.proto, tcp_flags, r.tcp_flags)
        && !expired(r, key.proto, now);
    if !ours {
        return Ok(None);
    }
    let bits = closing_bits(key.proto, tcp_flags);
    if bits & !r.tcp_flags != 0 {
        if !closing_valid() {
            return Ok(Some(Created::Corrupt));
        }
        r.tcp_flags |= bits;
        r.last_seen = now;
    }
    A::conntrack()
        .insert(key, original_of(reply_key, r), 0)
        .map_err(|_| reason::PASS_CT_FULL)?;
    Ok(Some(Created::Continued))
}

/// A source port (network byte order) no live flow from `addr` to `backend` uses:
/// random tries in the SNAT range, each checked against the reply entry it would
/// need.
#[inline(always)]
fn free_snat_port<A: Family>(addr: A, backend: &BackendOf<A>, proto: u8) -> Result<u16, u32> {
    const RANGE: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    // SAFETY: a helper with no preconditions.
    let start = unsafe { bpf_get_prandom_u32() };
    for i in 0..SNAT_TRIES {
        let port = SNAT_PORT_MIN + (start.wrapping_add(i.wrapping_mul(7919)) % RANGE) as u16;
        let reply_key = FlowKeyOf {
            saddr_be: backend.addr_be,
            daddr_be: addr,
            sport_be: backend.port_be,
            dport_be: port.to_be(),
            proto,
            _pad: 0,
            _pad2: 0,
        };
        // SAFETY: only the presence of an entry is read.
        if unsafe {
            A::conntrack().get(reply_key).is_none() && A::assured().get(reply_key).is_none()
        } {
            return Ok(port.to_be());
        }
    }
    Err(reason::PASS_SNAT_EXHAUSTED)
}
