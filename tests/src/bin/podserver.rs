//! A stand-in for a pod's container: answers HTTP on TCP ports with a fixed text
//! (`Hello World!` by default, as in the seeds) and UDP datagrams with the text
//! followed by what was received. Runs until killed.
//!
//! podserver [--text TEXT] [--tcp PORT]... [--udp PORT]...

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    thread,
};

fn main() {
    let mut text = "Hello World!".to_string();
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--text" => text = v,
            "--tcp" => tcp.push(v.parse::<u16>().expect("--tcp PORT")),
            "--udp" => udp.push(v.parse::<u16>().expect("--udp PORT")),
            _ => panic!("unknown argument {a}"),
        }
    }
    let mut threads = Vec::new();
    for port in tcp {
        let text = text.clone();
        // Both families: "::" takes IPv4 too (as IPv4-mapped addresses), unless the
        // namespace has no IPv6.
        let l = TcpListener::bind(("::", port))
            .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("tcp {port}: {e}"));
        threads.push(thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let text = text.clone();
                thread::spawn(move || serve_http(conn, &text));
            }
        }));
    }
    for port in udp {
        let text = text.clone();
        let s = UdpSocket::bind(("::", port))
            .or_else(|_| UdpSocket::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("udp {port}: {e}"));
        threads.push(thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let mut reply = format!("{text}\n").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, peer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// `/bulk`: reads the request's body (its Content-Length, at most 16 MiB), then
/// answers `TEXT RECEIVED` and `BULK_BYTES` bytes of `bulk_byte`: full-size segments
/// both ways.
fn bulk(conn: &mut std::net::TcpStream, text: &str, got: &[u8]) {
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let want = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(16 << 20);
    let mut received = got.len() - head_end;
    let mut buf = vec![0u8; 65536];
    while received < want {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    let line = format!("{text} {received}\n");
    let body: Vec<u8> = line.bytes().chain((0..BULK_BYTES).map(bulk_byte)).collect();
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let _ = conn.write_all(&body);
}

/// How many bytes `/bulk` sends after its line.
pub const BULK_BYTES: usize = 1 << 20;

/// Byte `i` of a `/bulk` body.
pub fn bulk_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) >> 3) as u8
}

/// Reads a request head (or whatever comes first) and answers with the text.
/// A request for `/stream` gets an endless body instead, one line at a time, so
/// tests can hold a connection open while things change around it; `/peer` adds the
/// client's address to the text.
fn serve_http(mut conn: std::net::TcpStream, text: &str) {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    if got.starts_with(b"GET /bulk") {
        bulk(&mut conn, text, &got);
        return;
    }
    if got.starts_with(b"GET /stream") {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        for i in 0u64.. {
            if conn.write_all(format!("{text} {i}\n").as_bytes()).is_err() {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // `/peer`: the text and the address the connection came from, so tests can see
    // whether a source was rewritten on the way.
    let body = match (got.starts_with(b"GET /peer"), conn.peer_addr()) {
        // An IPv4 client as itself, not as the IPv4-mapped address "::" gives.
        (true, Ok(peer)) => format!(
            "{text} {}\n",
            std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port())
        ),
        _ => format!("{text}\n"),
    };
    let _ = conn.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}", body.len())
            .as_bytes(),
    );
}
