//! The DNS listener: UDP and TCP on the node's address, port 53 (the endpoint of
//! the cluster DNS service, so pods reach it through lb's own data plane at
//! `nameserver 10.96.0.10`), on a thread of its own. Names in the zone are answered
//! from what the agent keeps; others are forwarded to the upstream resolvers over
//! the transport they came on, or refused when there are none.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::{info, warn};

use super::{
    answer::{self, Outcome},
    zone::Zone,
};

/// How long an upstream has to answer one forwarded query before the next is tried.
const UPSTREAM_WAIT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries forwarded at once, and TCP connections served at once: past these, a
/// flood costs its own answers (SERVFAIL, or a connection closed), never the
/// agent's memory.
const MAX_FORWARDS: usize = 1024;
const MAX_TCP: usize = 256;

/// Where the listener answers and whom it asks about other names.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
}

/// Whose queries for other names are forwarded: the node's own processes
/// (loopback, its addresses), its pod networks and the pods the agent knows. The
/// zone's names answer anyone who reaches the listener (as CoreDNS's do); an open
/// resolver on the node's address, which the LAN reaches, would serve anyone's
/// recursion (and amplification).
#[derive(Debug, Clone, Default)]
pub struct Clients {
    pub node_addrs: Vec<IpAddr>,
    pub cidrs: Vec<crate::model::Cidr>,
    pub pods: Addrs,
}

/// A set of addresses kept by family: an IPv4 address takes 4 bytes of its set,
/// not an `IpAddr`'s 17 (1,000,000 endpoints: ~10 MB instead of ~38).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs {
    v4: HashSet<Ipv4Addr>,
    v6: HashSet<Ipv6Addr>,
}

impl Addrs {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
        }
    }
}

impl Extend<IpAddr> for Addrs {
    fn extend<I: IntoIterator<Item = IpAddr>>(&mut self, addrs: I) {
        for addr in addrs {
            match addr {
                IpAddr::V4(a) => drop(self.v4.insert(a)),
                IpAddr::V6(a) => drop(self.v6.insert(a)),
            }
        }
    }
}

impl<'a> Extend<&'a IpAddr> for Addrs {
    fn extend<I: IntoIterator<Item = &'a IpAddr>>(&mut self, addrs: I) {
        self.extend(addrs.into_iter().copied());
    }
}

impl FromIterator<IpAddr> for Addrs {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(addrs: I) -> Self {
        let mut set = Addrs::default();
        set.extend(addrs);
        set
    }
}

impl Clients {
    /// Whether names outside the zone are forwarded for `client`.
    pub fn may_recurse(&self, client: IpAddr) -> bool {
        client.is_loopback()
            || self.node_addrs.contains(&client)
            || self.cidrs.iter().any(|c| c.contains(client))
            || self.pods.contains(client)
    }
}

/// What the listener did, for `/metrics` (as CoreDNS's `coredns_dns_responses_total`).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Answers sent over UDP, by response code (the header's four bits).
    pub udp: [AtomicU64; 16],
    /// Answers sent over TCP, by response code.
    pub tcp: [AtomicU64; 16],
    /// UDP answers sent truncated (TC: the client asks again over TCP).
    pub truncated: AtomicU64,
    /// Queries forwarded upstream, and those no upstream answered.
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    /// Messages given no answer (shorter than a header, or themselves answers).
    pub dropped: AtomicU64,
    /// Names the zone holds.
    pub names: AtomicU64,
}

impl DnsStats {
    /// Counts the answer `out` sent over UDP or TCP.
    fn sent(&self, out: &[u8], udp: bool) {
        let Some(&flags) = out.get(3) else {
            return;
        };
        let by = if udp { &self.udp } else { &self.tcp };
        by[usize::from(flags & 0x0f)].fetch_add(1, Ordering::Relaxed);
        if udp && out[2] & 0x02 != 0 {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Shared {
    zone: Arc<RwLock<Zone>>,
    stats: Arc<DnsStats>,
    clients: Arc<RwLock<Clients>>,
    upstreams: Vec<SocketAddr>,
    forwards: Semaphore,
    connections: Arc<Semaphore>,
}

/// Binds the UDP and TCP sockets on `listen.addr` (an error if either is taken)
/// and serves them on a thread of their own, counting in `stats`.
pub fn serve(
    zone: Arc<RwLock<Zone>>,
    listen: Listen,
    stats: Arc<DnsStats>,
    clients: Arc<RwLock<Clients>>,
) -> Result<()> {
    let udp = std::net::UdpSocket::bind(listen.addr)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .with_context(|| format!("DNS on UDP {}", listen.addr))?;
    let tcp = std::net::TcpListener::bind(listen.addr)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .with_context(|| format!("DNS on TCP {}", listen.addr))?;
    let shared = Arc::new(Shared {
        zone,
        stats,
        clients,
        upstreams: listen.upstreams.clone(),
        forwards: Semaphore::new(MAX_FORWARDS),
        connections: Arc::new(Semaphore::new(MAX_TCP)),
    });
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "DNS not served"),
            };
            rt.block_on(async move {
                let (Ok(udp), Ok(tcp)) = (UdpSocket::from_std(udp), TcpListener::from_std(tcp))
                else {
                    return warn!("DNS not served: its sockets could not join the runtime");
                };
                let udp = Arc::new(udp);
                tokio::spawn(serve_tcp(tcp, Arc::clone(&shared)));
                serve_udp(udp, shared).await;
            });
        })
        .context("starting the DNS thread")?;
    info!(addr = %listen.addr, upstreams = ?listen.upstreams, "serving DNS");
    Ok(())
}

/// The zone's outcome for the query in `bytes`, with the room a UDP answer has;
/// None (counted as dropped) for what gets no answer at all.
fn outcome(shared: &Shared, bytes: &[u8]) -> Option<(Outcome, usize)> {
    let answered = {
        let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
        answer::answer(&zone, bytes, !shared.upstreams.is_empty())
    };
    if answered.is_none() {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    answered
}

/// What to send back to `client` for the query in `bytes` (None: nothing).
async fn respond(shared: &Shared, bytes: &[u8], udp: bool, client: IpAddr) -> Option<Vec<u8>> {
    let (outcome, room) = outcome(shared, bytes)?;
    Some(complete(shared, outcome, room, bytes, udp, client).await)
}

/// The answer to send for `outcome` of the query in `bytes` (`room`: what a UDP
/// answer may take); forwarding and chasing wait on the upstreams.
async fn complete(
    shared: &Shared,
    outcome: Outcome,
    room: usize,
    bytes: &[u8],
    udp: bool,
    client: IpAddr,
) -> Vec<u8> {
    let limit = if udp { room } else { usize::from(u16::MAX) };
    let recurse = !shared.upstreams.is_empty()
        && shared
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .may_recurse(client);
    let reply = match outcome {
        Outcome::Reply(reply) => reply,
        Outcome::Chase { reply, .. } if !recurse => reply,
        Outcome::Forward(query) => {
            if !recurse {
                answer::refused(&query)
            } else {
                match ask_upstream(shared, bytes, udp).await {
                    // The upstream's answer goes back as it came, with its own id
                    // (the client's, which it was asked with).
                    Some(raw) => return raw,
                    None => answer::server_failure(&query),
                }
            }
        }
        Outcome::Chase {
            mut reply,
            target,
            rtype,
        } => {
            let q = answer::query_for(target, rtype);
            if let Ok(out) = q.to_vec()
                && let Some(raw) = ask_upstream(shared, &out, true).await
                && let Ok(got) = Message::from_vec(&raw)
                && got.metadata.id == q.metadata.id
            {
                reply.add_answers(got.answers);
            }
            reply
        }
    };
    answer::encode(&reply, limit)
}

/// The first answer an upstream gives to `bytes`, over UDP or TCP as the client
/// asked; None when none answers in time (or too many are being asked already).
async fn ask_upstream(shared: &Shared, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let got = ask_upstreams(shared, bytes, udp).await;
    if got.is_none() {
        shared
            .stats
            .forward_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    got
}

async fn ask_upstreams(shared: &Shared, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    let _permit = shared.forwards.try_acquire().ok()?;
    let id = bytes.get(..2)?;
    for up in &shared.upstreams {
        let got = tokio::time::timeout(UPSTREAM_WAIT, async {
            if udp {
                let local: SocketAddr = if up.is_ipv4() {
                    "0.0.0.0:0".parse().expect("an address")
                } else {
                    "[::]:0".parse().expect("an address")
                };
                let s = UdpSocket::bind(local).await.ok()?;
                s.connect(up).await.ok()?;
                s.send(bytes).await.ok()?;
                let mut buf = vec![0u8; 65535];
                loop {
                    let n = s.recv(&mut buf).await.ok()?;
                    if buf.get(..2) == Some(id) {
                        buf.truncate(n);
                        return Some(buf);
                    }
                }
            } else {
                let mut s = TcpStream::connect(up).await.ok()?;
                let len = u16::try_from(bytes.len()).ok()?;
                s.write_all(&len.to_be_bytes()).await.ok()?;
                s.write_all(bytes).await.ok()?;
                let n = s.read_u16().await.ok()?;
                let mut buf = vec![0u8; usize::from(n)];
                s.read_exact(&mut buf).await.ok()?;
                Some(buf)
            }
        })
        .await;
        if let Ok(Some(raw)) = got {
            return Some(raw);
        }
    }
    None
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "DNS: receiving");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let bytes = &buf[..n];
        // Answers from the zone go out at once; what waits on an upstream waits in
        // a task of its own, with the outcome already made.
        match outcome(&shared, bytes) {
            Some((Outcome::Reply(reply), room)) => {
                let out = answer::encode(&reply, room);
                shared.stats.sent(&out, true);
                let _ = sock.send_to(&out, from).await;
            }
            Some((pending, room)) => {
                let (sock, shared, bytes) =
                    (Arc::clone(&sock), Arc::clone(&shared), bytes.to_vec());
                tokio::spawn(async move {
                    let out = complete(&shared, pending, room, &bytes, true, from.ip()).await;
                    shared.stats.sent(&out, true);
                    let _ = sock.send_to(&out, from).await;
                });
            }
            None => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&shared.connections).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, &shared, peer.ip()).await;
        });
    }
}

/// Queries on one TCP connection, each a two-byte length and a message, until the
/// client closes it or stays idle for [`TCP_IDLE`].
async fn serve_connection(mut s: TcpStream, shared: &Shared, peer: IpAddr) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return Ok(());
        };
        let mut buf = vec![0u8; usize::from(len?)];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let Some(out) = respond(shared, &buf, false, peer).await else {
            continue;
        };
        let Ok(n) = u16::try_from(out.len()) else {
            continue;
        };
        shared.stats.sent(&out, false);
        s.write_all(&[&n.to_be_bytes()[..], &out].concat()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_its_pod_networks_and_known_pods_get_recursion() {
        let clients = Clients {
            node_addrs: vec!["192.168.1.2".parse().unwrap()],
            cidrs: vec![crate::model::Cidr::parse("10.244.0.0/16").unwrap()],
            pods: [
                "10.1.2.3".parse().unwrap(),
                "fd00:10:244::3".parse().unwrap(),
            ]
            .into_iter()
            .collect(),
        };
        for yes in [
            "127.0.0.1",
            "192.168.1.2",
            "10.244.7.9",
            "10.1.2.3",
            "::1",
            "fd00:10:244::3",
        ] {
            assert!(clients.may_recurse(yes.parse().unwrap()), "{yes}");
        }
        for no in ["192.168.1.10", "10.245.0.1", "10.1.2.4", "fd00::1"] {
            assert!(!clients.may_recurse(no.parse().unwrap()), "{no}");
        }
    }
}
