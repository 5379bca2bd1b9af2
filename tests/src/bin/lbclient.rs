//! A test client, run inside a namespace. Every loop is bounded in count and time.
//!
//! lbclient tcp ADDR:PORT COUNT      COUNT new connections, one HTTP GET each; prints
//!                                   each answer's first body line, or `ERR <error>`
//! lbclient peer ADDR:PORT COUNT     as tcp, GET /peer: the answer names the address
//!                                   the server saw the connection come from
//! lbclient udp ADDR:PORT COUNT      COUNT datagrams from COUNT new sockets; prints each
//!                                   answer's first line, or `ERR <error>`
//! lbclient bigudp ADDR:PORT COUNT   as udp with 4,000-byte datagrams (IPv4 fragments
//!                                   on a 1,500-byte MTU, both ways); prints the
//!                                   answer's first line if the echo came back whole,
//!                                   else `ERR <what>`
//! lbclient sendto ADDR:PORT COUNT   as udp, from unconnected sockets (sendto/recvfrom);
//!                                   an answer from any other address prints `ERR from X`
//! lbclient stream ADDR:PORT SECS    one connection, GET /stream, prints every line it
//!                                   reads for SECS seconds followed by the milliseconds
//!                                   since the start, then `END <lines>` or `ERR`
//! lbclient bulk ADDR:PORT COUNT     COUNT connections, each sending 1 MiB and
//!                                   reading 1 MiB back (full-size segments both ways);
//!                                   prints `TEXT` if both arrived whole, else `ERR`
//! lbclient udpflow ADDR:PORT COUNT  COUNT datagrams 100 ms apart from one socket (one
//!                                   flow); prints each answer's first line or `ERR`
//! lbclient connect ADDR:PORT        one connect; prints `OK` or `ERR <kind> <ms>`
//!                                   (`ERR ConnectionRefused 3` for a RST after 3 ms)
//! lbclient arp ADDR:0 MS            one broadcast ARP request for ADDR on eth0 (an
//!                                   IPv6 ADDR, `[ADDR]:0`: a Neighbor Solicitation to
//!                                   its solicited-node group); prints `MAC <mac>` for
//!                                   every answer within MS milliseconds, then
//!                                   `END <answers>`

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The unspecified address of `addr`'s family, any port: where a client socket
/// for `addr` binds.
fn any(addr: SocketAddr) -> &'static str {
    if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr) = (args.first().map(String::as_str), args.get(1));
    let addr: SocketAddr = addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| usage());
    let n: u64 = args
        .get(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
        .min(100_000);
    match mode {
        Some("arp") => arp(addr.ip(), Duration::from_millis(n.min(5000))),
        Some("tcp") => (0..n).for_each(|_| {
            println!(
                "{}",
                http_get(addr, "/").unwrap_or_else(|e| format!("ERR {e}"))
            )
        }),
        Some("peer") => (0..n).for_each(|_| {
            println!(
                "{}",
                http_get(addr, "/peer").unwrap_or_else(|e| format!("ERR {e}"))
            )
        }),
        Some("udp") => {
            (0..n).for_each(|i| println!("{}", udp(addr, i).unwrap_or_else(|e| format!("ERR {e}"))))
        }
        Some("bigudp") => (0..n).for_each(|i| {
            println!(
                "{}",
                big_udp(addr, i).unwrap_or_else(|e| format!("ERR {e}"))
            )
        }),
        Some("sendto") => (0..n)
            .for_each(|i| println!("{}", sendto(addr, i).unwrap_or_else(|e| format!("ERR {e}")))),
        Some("stream") => stream(addr, Duration::from_secs(n.min(600))),
        Some("udpflow") => udp_flow(addr, n.min(6000)),
        Some("bulk") => (0..n.min(100))
            .for_each(|_| println!("{}", bulk(addr).unwrap_or_else(|e| format!("ERR {e}")))),
        Some("connect") => {
            let start = Instant::now();
            match TcpStream::connect_timeout(&addr, TIMEOUT) {
                Ok(_) => println!("OK"),
                Err(e) => println!("ERR {:?} {}", e.kind(), start.elapsed().as_millis()),
            }
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: lbclient tcp|peer|udp|sendto|stream|connect|arp ADDR:PORT [COUNT|SECS|MS]");
    std::process::exit(2)
}

/// Sent and expected back by `bulk`.
const BULK_BYTES: usize = 1 << 20;

fn bulk_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) >> 3) as u8
}

fn bulk(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let body: Vec<u8> = (0..BULK_BYTES).map(|i| (i % 251) as u8).collect();
    s.write_all(
        format!("GET /bulk HTTP/1.1\r\nHost: lb\r\nContent-Length: {BULK_BYTES}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    s.write_all(&body)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    let Some(start) = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok("ERR no answer head".into());
    };
    let answer = &got[start..];
    let Some(nl) = answer.iter().position(|b| *b == b'\n') else {
        return Ok("ERR no text line".into());
    };
    let line = String::from_utf8_lossy(&answer[..nl]).to_string();
    // "TEXT RECEIVED"; the pod's text may hold spaces ("Hello World!").
    let (text, received) = line.rsplit_once(' ').unwrap_or(("", ""));
    if received != BULK_BYTES.to_string() {
        return Ok(format!("ERR the server got not {BULK_BYTES} bytes: {line}"));
    }
    let text = text.to_string();
    let data = &answer[nl + 1..];
    if data.len() != BULK_BYTES || data.iter().enumerate().any(|(i, b)| *b != bulk_byte(i)) {
        return Ok(format!(
            "ERR {} bytes back, not the {BULK_BYTES} sent",
            data.len()
        ));
    }
    Ok(text)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let text = body.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn udp(addr: SocketAddr, i: u64) -> std::io::Result<String> {
    let s = UdpSocket::bind(any(addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    // Connected, as resolvers are: the kernel then reports ICMP errors to the socket.
    s.connect(addr)?;
    s.send(format!("ping {i}").as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

fn udp_flow(addr: SocketAddr, n: u64) {
    let s = match UdpSocket::bind(any(addr)).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.connect(addr)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return println!("ERR {e}"),
    };
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let answer = s
            .send(format!("ping {i}").as_bytes())
            .and_then(|_| s.recv(&mut buf));
        match answer {
            Ok(len) => println!(
                "{}",
                String::from_utf8_lossy(&buf[..len])
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            Err(e) => println!("ERR {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn big_udp(addr: SocketAddr, i: u64) -> std::io::Result<String> {
    let s = UdpSocket::bind(any(addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.connect(addr)?;
    let sent: Vec<u8> = (0..4000u64).map(|b| (b * 31 + i) as u8).collect();
    s.send(&sent)?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf)?;
    // The server answers "TEXT\n" followed by what it received.
    let got = &buf[..n];
    let Some(nl) = got.iter().position(|b| *b == b'\n') else {
        return Ok("ERR no text line".into());
    };
    if got[nl + 1..] != sent[..] {
        return Ok(format!(
            "ERR echo of {} bytes, not the 4000 sent",
            n - nl - 1
        ));
    }
    Ok(String::from_utf8_lossy(&got[..nl]).to_string())
}

fn sendto(addr: SocketAddr, i: u64) -> std::io::Result<String> {
    let s = UdpSocket::bind(any(addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(format!("ping {i}").as_bytes(), addr)?;
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf)?;
    if from != addr {
        return Ok(format!("ERR from {from}"));
    }
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

fn stream(addr: SocketAddr, secs: Duration) {
    let run = || -> std::io::Result<u64> {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut r = BufReader::new(s);
        let start = Instant::now();
        let mut lines = 0;
        let mut line = String::new();
        let mut in_body = false;
        while start.elapsed() < secs {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            if !in_body {
                in_body = line == "\r\n";
                continue;
            }
            println!("{} {}", line.trim_end(), start.elapsed().as_millis());
            lines += 1;
        }
        Ok(lines)
    };
    match run() {
        Ok(lines) => println!("END {lines}"),
        Err(e) => println!("ERR {e}"),
    }
}

/// Broadcasts one ARP request for `target` on `eth0` and prints the sender MAC of
/// every reply for it within `wait`, then `END <replies>`.
fn arp(target: std::net::IpAddr, wait: Duration) {
    match neighbour_answers(target, wait) {
        Ok(macs) => {
            for m in &macs {
                println!("MAC {m}");
            }
            println!("END {}", macs.len());
        }
        Err(e) => println!("ERR {e}"),
    }
}

/// eth0's MAC, IPv4 address and global IPv6 address.
type Eth0 = ([u8; 6], Option<[u8; 4]>, Option<[u8; 16]>);

fn eth0() -> std::io::Result<Eth0> {
    let (mut mac, mut ip, mut ip6) = (None, None, None);
    // SAFETY: getifaddrs' list is walked read-only and freed once.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = list;
        while !cur.is_null() {
            let a = &*cur;
            if std::ffi::CStr::from_ptr(a.ifa_name).to_bytes() == b"eth0" && !a.ifa_addr.is_null() {
                match i32::from((*a.ifa_addr).sa_family) {
                    libc::AF_PACKET => {
                        let ll = &*(a.ifa_addr as *const libc::sockaddr_ll);
                        let mut m = [0u8; 6];
                        m.copy_from_slice(&ll.sll_addr[..6]);
                        mac = Some(m);
                    }
                    libc::AF_INET => {
                        let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
                        ip = Some(u32::from_be(sin.sin_addr.s_addr).to_be_bytes());
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a.ifa_addr as *const libc::sockaddr_in6);
                        let a6 = sin6.sin6_addr.s6_addr;
                        if a6[..2] != [0xfe, 0x80] {
                            ip6 = Some(a6);
                        }
                    }
                    _ => {}
                }
            }
            cur = a.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    let mac = mac.ok_or_else(|| std::io::Error::other("eth0 has no MAC"))?;
    Ok((mac, ip, ip6))
}

/// A Neighbor Solicitation from `src` (at `mac`) for `target`, to its
/// solicited-node group, checksummed.
fn solicitation(mac: [u8; 6], src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut group = [0u8; 16];
    group[..2].copy_from_slice(&[0xff, 0x02]);
    group[11..13].copy_from_slice(&[0x01, 0xff]);
    group[13..].copy_from_slice(&target[13..]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend(target);
    icmp.extend([1, 1]);
    icmp.extend(mac);
    let pseudo = [(icmp.len() as u32).to_be_bytes(), [0, 0, 0, 58]].concat();
    let sum = lb_tests::packet::checksum(&[&src, &group, &pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = vec![0x33, 0x33, group[12], group[13], group[14], group[15]];
    frame.extend(mac);
    frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend((icmp.len() as u16).to_be_bytes());
    frame.extend([58, 255]);
    frame.extend(src);
    frame.extend(group);
    frame.extend(icmp);
    frame
}

/// The MACs that answer, within `wait`, an ARP request (IPv4) or a Neighbor
/// Solicitation (IPv6) for `target` sent from eth0: one per answer.
fn neighbour_answers(target: std::net::IpAddr, wait: Duration) -> std::io::Result<Vec<String>> {
    let (mac, ip, ip6) = eth0()?;
    let (protocol, frame, dst) = match target {
        std::net::IpAddr::V4(target) => {
            let ip = ip.ok_or_else(|| std::io::Error::other("eth0 has no IPv4 address"))?;
            let mut frame = Vec::with_capacity(42);
            frame.extend([0xff; 6]);
            frame.extend(mac);
            frame.extend([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
            frame.extend(mac);
            frame.extend(ip);
            frame.extend([0; 6]);
            frame.extend(target.octets());
            (0x0806u16, frame, [0xff; 6])
        }
        std::net::IpAddr::V6(target) => {
            let ip6 = ip6.ok_or_else(|| std::io::Error::other("eth0 has no IPv6 address"))?;
            let frame = solicitation(mac, ip6, target.octets());
            let dst: [u8; 6] = frame[..6].try_into().unwrap();
            (0x86dd, frame, dst)
        }
    };
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut replies = Vec::new();
    // SAFETY: a packet socket we own and close; buffers and address structures
    // are fully initialised and their sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be()));
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let bound = libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            len,
        );
        if bound != 0 || sent < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let end = Instant::now() + wait;
        let mut buf = [0u8; 256];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let tv = libc::timeval {
                tv_sec: left.as_secs() as i64,
                tv_usec: i64::from(left.subsec_micros().max(1)),
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                break;
            }
            let f = &buf[..n as usize];
            // An answer to this request: an ARP reply (operation 2) whose sender
            // address is the target and whose target is this host, or a solicited
            // Neighbor Advertisement about it (the Ethernet source is the MAC). A
            // node's own announcements (gratuitous ARP, unsolicited advertisements)
            // are not answers: a new holder's, sent just after the old holder
            // answered and let go, would read as two nodes answering at once.
            let answer = match target {
                std::net::IpAddr::V4(t) => {
                    f.len() >= 42
                        && f[12..14] == [0x08, 0x06]
                        && f[20..22] == [0, 2]
                        && f[28..32] == t.octets()
                        && Some(&f[38..42]) == ip.as_ref().map(|a| &a[..])
                }
                std::net::IpAddr::V6(t) => {
                    f.len() >= 78
                        && f[20] == 58
                        && f[54] == 136
                        && f[58] & 0x40 != 0
                        && f[62..78] == t.octets()
                }
            };
            if answer {
                let m = if target.is_ipv4() {
                    &f[22..28]
                } else {
                    &f[6..12]
                };
                replies.push(
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
        }
        libc::close(fd);
    }
    Ok(replies)
}
