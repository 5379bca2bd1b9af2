//! Builds Ethernet/IPv4/TCP|UDP frames with checksums computed from scratch (not
//! incrementally), so a frame the data plane rewrote can be compared byte for byte
//! with the frame built directly with the rewritten addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone)]
pub struct Pkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags and fragment offset field (host order).
    pub frag: u16,
    /// UDP only: send checksum 0 ("none").
    pub udp_no_checksum: bool,
    pub ttl: u8,
    /// IPv4 identification.
    pub id: u16,
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Pkt {
            src: ip(src),
            dst: ip(dst),
            sport,
            dport,
            proto: PROTO_TCP,
            tcp_flags: flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            frag: 0x4000, // DF
            udp_no_checksum: false,
            ttl: 64,
            id: 0x1234,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Pkt {
            proto: PROTO_UDP,
            tcp_flags: 0,
            payload: b"ping".to_vec(),
            ..Pkt::tcp(src, sport, dst, dport, 0)
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    /// The same packet with other addresses and ports (what NAT should produce).
    pub fn rewritten(&self, src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Pkt {
            src: ip(src),
            dst: ip(dst),
            sport,
            dport,
            ..self.clone()
        }
    }

    fn l4(&self) -> Vec<u8> {
        self.l4_with(|len| pseudo_header(self.src, self.dst, self.proto, len))
    }

    /// The TCP or UDP segment, its checksum over `pseudo(its length)` and itself.
    fn l4_with(&self, pseudo: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            PROTO_TCP => {
                l4.extend_from_slice(&1000u32.to_be_bytes()); // seq
                l4.extend_from_slice(
                    &(if self.tcp_flags & TCP_ACK != 0 {
                        2000u32
                    } else {
                        0
                    })
                    .to_be_bytes(),
                );
                l4.push(5 << 4); // data offset
                l4.push(self.tcp_flags);
                l4.extend_from_slice(&64240u16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            }
            _ => {
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
        }
        l4.extend_from_slice(&self.payload);
        let sum = checksum(&[&pseudo(l4.len()), &l4]);
        let at = if self.proto == PROTO_TCP { 16 } else { 6 };
        let sum = if self.proto == PROTO_UDP && self.udp_no_checksum {
            0
        } else if self.proto == PROTO_UDP && sum == 0 {
            0xffff
        } else {
            sum
        };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        l4
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        self.frame(self.frag, &self.l4())
    }

    /// The datagram as two IPv4 fragments, the first carrying `first_len` bytes
    /// (a multiple of 8) of the L4 header and payload, the second the rest; the L4
    /// checksum covers the whole datagram, as a sender's stack computes it.
    pub fn fragments(&self, first_len: usize) -> [Vec<u8>; 2] {
        assert_eq!(first_len % 8, 0, "fragment offsets are in units of 8 bytes");
        let l4 = self.l4();
        assert!(
            first_len < l4.len(),
            "the datagram must be longer than the first fragment"
        );
        const MF: u16 = 0x2000;
        [
            self.frame(MF, &l4[..first_len]),
            self.frame((first_len / 8) as u16, &l4[first_len..]),
        ]
    }

    /// A frame of this packet's headers with flags/offset `frag` around `l4`.
    fn frame(&self, frag: u16, l4: &[u8]) -> Vec<u8> {
        let ihl = 5 + self.ip_options.len() / 4;
        let mut iph = vec![(4 << 4) | ihl as u8, 0];
        iph.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
        iph.extend_from_slice(&self.id.to_be_bytes());
        iph.extend_from_slice(&frag.to_be_bytes());
        iph.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        iph.extend_from_slice(&self.src.octets());
        iph.extend_from_slice(&self.dst.octets());
        iph.extend_from_slice(&self.ip_options);
        let sum = checksum(&[&iph]);
        iph[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = eth(0x0800);
        frame.extend_from_slice(&iph);
        frame.extend_from_slice(l4);
        frame
    }
}

/// An Ethernet/IPv6/TCP|UDP frame, checksums computed from scratch as for [`Pkt`]
/// (whose ports, flags and payload it takes).
#[derive(Debug, Clone)]
pub struct Pkt6 {
    pub l4: Pkt,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// A hop-by-hop options header (8 bytes of padding options) before the L4 one.
    pub hop_by_hop: bool,
    pub hop_limit: u8,
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

impl Pkt6 {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Pkt6 {
            l4: Pkt::tcp("0.0.0.0", sport, "0.0.0.0", dport, flags),
            src: ip6(src),
            dst: ip6(dst),
            hop_by_hop: false,
            hop_limit: 64,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Pkt6 {
            l4: Pkt::udp("0.0.0.0", sport, "0.0.0.0", dport),
            ..Pkt6::tcp(src, sport, dst, dport, 0)
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.l4.payload = p.to_vec();
        self
    }

    /// The same packet with other addresses and ports (what NAT should produce).
    pub fn rewritten(&self, src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        let mut p = self.clone();
        p.src = ip6(src);
        p.dst = ip6(dst);
        p.l4.sport = sport;
        p.l4.dport = dport;
        p
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let proto = self.l4.proto;
        let mut rest = Vec::new();
        if self.hop_by_hop {
            // Next header, length 0 (8 bytes), a PadN option of 4 bytes.
            rest.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
        }
        rest.extend_from_slice(&self.l4());
        let next = if self.hop_by_hop { 0 } else { proto };
        self.frame(next, &rest)
    }

    /// The datagram as two IPv6 fragments, each behind a Fragment header of
    /// identification `id`: the first carrying `first_len` bytes (a multiple of 8)
    /// of the L4 header and payload, the second the rest; the L4 checksum covers
    /// the whole datagram, as a sender's stack computes it.
    pub fn fragments(&self, first_len: usize, id: u32) -> [Vec<u8>; 2] {
        assert_eq!(first_len % 8, 0, "fragment offsets are in units of 8 bytes");
        assert!(
            !self.hop_by_hop,
            "fragments carry no hop-by-hop header here"
        );
        let l4 = self.l4();
        assert!(
            first_len < l4.len(),
            "the datagram must be longer than the first fragment"
        );
        [
            self.fragment(0, true, id, &l4[..first_len]),
            self.fragment(first_len, false, id, &l4[first_len..]),
        ]
    }

    /// The datagram whole behind a Fragment header of offset 0 and no more
    /// fragments: an atomic fragment (RFC 6946), a whole datagram to its receiver.
    pub fn atomic_fragment(&self, id: u32) -> Vec<u8> {
        self.fragment(0, false, id, &self.l4())
    }

    /// A frame of `part` (bytes from `offset` of the L4 datagram) behind a
    /// Fragment header.
    fn fragment(&self, offset: usize, more: bool, id: u32, part: &[u8]) -> Vec<u8> {
        let mut rest = vec![self.l4.proto, 0];
        rest.extend_from_slice(&((offset as u16) | more as u16).to_be_bytes());
        rest.extend_from_slice(&id.to_be_bytes());
        rest.extend_from_slice(part);
        self.frame(44, &rest)
    }

    /// The L4 header and payload, checksummed over the IPv6 pseudo header.
    fn l4(&self) -> Vec<u8> {
        let proto = self.l4.proto;
        self.l4.l4_with(|len| {
            let mut p = Vec::new();
            p.extend_from_slice(&self.src.octets());
            p.extend_from_slice(&self.dst.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            p
        })
    }

    /// An Ethernet frame of this packet's IPv6 header (next header `next`) and
    /// `rest` after it.
    fn frame(&self, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut frame = eth(0x86dd);
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[next, self.hop_limit]);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(rest);
        frame
    }
}

/// [`port_unreachable`] for an IPv6 frame: ICMPv6 "port unreachable" from the
/// original destination to the original source, MACs swapped, quoting the IPv6
/// header and 8 bytes of its payload.
pub fn port_unreachable6(frame: &[u8]) -> Vec<u8> {
    let dst: [u8; 16] = frame[22..38].try_into().unwrap();
    let src: [u8; 16] = frame[38..54].try_into().unwrap();
    let (src, dst) = (
        Ipv6Addr::from(src).to_string(),
        Ipv6Addr::from(dst).to_string(),
    );
    let mut quoted = frame[..14 + 48].to_vec();
    quoted.truncate(14 + 48);
    let mut out = icmp6_error(1, 4, 0, &src, &dst, &quoted);
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    out
}

/// An ICMPv6 error (`kind`: 1 unreachable, 2 packet too big, 3 time exceeded, 4
/// parameter problem; `word`: its 32 bits after the checksum, e.g. the MTU) from
/// `src` to `dst` quoting the IPv6 packet of `about` (an Ethernet frame) whole;
/// checksum computed from scratch, hop limit 64.
pub fn icmp6_error(kind: u8, code: u8, word: u32, src: &str, dst: &str, about: &[u8]) -> Vec<u8> {
    icmp6(kind, code, word, src, dst, &about[14..], 64)
}

/// An ICMPv6 message of `kind` and `code` from `src` to `dst`: its 32 bits after
/// the checksum (`word`), then `body`; checksum computed from scratch.
pub fn icmp6(
    kind: u8,
    code: u8,
    word: u32,
    src: &str,
    dst: &str,
    body: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let (src, dst) = (ip6(src), ip6(dst));
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&word.to_be_bytes());
    icmp.extend_from_slice(body);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = eth(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, hop_limit]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// An Ethernet header with the given EtherType.
pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// The Internet checksum of the concatenated parts.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `frame` (TCP or UDP) as a sender with checksum offload hands it over
/// (CHECKSUM_PARTIAL): the L4 checksum field holds only the pseudo-header sum, which
/// the NIC or the peer's kernel completes.
pub fn partial_checksum(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([f[16], f[17]]) as usize;
    let proto = f[23];
    let addr = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let pseudo = pseudo_header(addr(26), addr(30), proto, total - ihl);
    let at = 14 + ihl + if proto == PROTO_TCP { 16 } else { 6 };
    f[at..at + 2].copy_from_slice(&(!checksum(&[&pseudo])).to_be_bytes());
    f
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum of a frame; `Err` says which fails.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err("IPv4 header checksum".into());
    }
    if l4_checksum(frame) != Some(true) {
        return Err(format!("L4 (protocol {}) checksum", ip[9]));
    }
    Ok(())
}

/// Whether the TCP/UDP checksum of a whole datagram holds (a UDP datagram without
/// one passes); None for a frame too short for the headers it claims.
pub fn l4_checksum(frame: &[u8]) -> Option<bool> {
    let ip = frame.get(14..)?;
    let ihl = ((ip.first()? & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
    let l4 = ip.get(ihl..total)?;
    let proto = *ip.get(9)?;
    if proto == PROTO_UDP && l4.get(6..8)? == [0, 0] {
        return Some(true); // no checksum
    }
    let addr = |at: usize| {
        Some(Ipv4Addr::new(
            *ip.get(at)?,
            ip[at + 1],
            ip[at + 2],
            ip[at + 3],
        ))
    };
    let (src, dst) = (addr(12)?, addr(16)?);
    Some(checksum(&[&pseudo_header(src, dst, proto, l4.len()), l4]) == 0)
}

/// The ICMP port-unreachable answer to `frame` (as kube-proxy's REJECT sends it):
/// MACs swapped, from the original destination to the original source, quoting the
/// original IPv4 header and 8 bytes of its payload.
pub fn port_unreachable(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    let quote = &frame[14..14 + 28];
    let mut ip = vec![0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0];
    ip.extend_from_slice(&frame[14 + 16..14 + 20]);
    ip.extend_from_slice(&frame[14 + 12..14 + 16]);
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out
}
