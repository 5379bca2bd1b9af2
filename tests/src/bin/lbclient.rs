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

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

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
    eprintln!("usage: lbclient tcp|peer|udp|sendto|stream|connect ADDR:PORT [COUNT|SECS]");
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
    let mut words = line.split_whitespace();
    let text = words.next().unwrap_or("").to_string();
    if words.next() != Some(&BULK_BYTES.to_string()) {
        return Ok(format!("ERR the server got not {BULK_BYTES} bytes: {line}"));
    }
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
    let s = UdpSocket::bind("0.0.0.0:0")?;
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
    let s = match UdpSocket::bind("0.0.0.0:0").and_then(|s| {
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
    let s = UdpSocket::bind("0.0.0.0:0")?;
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
    let s = UdpSocket::bind("0.0.0.0:0")?;
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
