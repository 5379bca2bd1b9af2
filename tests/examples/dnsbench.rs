//! The cluster DNS: queries per second from a pod with dnsperf (Debian's), against
//! the agent through the kube-dns ClusterIP (lb's data plane carries them), against
//! the agent at the node's address, and against dnsmasq (Debian's) serving the same
//! names from a hosts file on the same node, all in one run; and how long a name
//! takes to resolve after `lb apply` of its service (and to answer NXDOMAIN after
//! `lb delete`). Run as root: `cargo xtask bench` (`--quick` for a smoke run).

mod report;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    Netns, Topology,
    dns::{a_query, dnsmasq},
    lbctl::Lb,
    scale,
    seeds::{self, NODE_IP},
    topology::InNetns,
};

use crate::report::{Chart, Table};

const CLUSTER_DNS: &str = "10.96.0.10";
/// dnsmasq's port on the node (the agent holds 53).
const DNSMASQ_PORT: u16 = 5353;
const CLIENT_IP: &str = "10.244.0.100";

/// What dnsperf reports of one run.
struct Perf {
    qps: f64,
    lost: u64,
    sent: u64,
    avg_latency_ms: f64,
}

/// dnsperf from `ns` at `server:port` for `secs` seconds over the queries in
/// `data` (one "NAME A" per line), 100 queries outstanding.
fn dnsperf(
    t: &Topology,
    ns: &Netns,
    server: &str,
    port: u16,
    data: &str,
    secs: u32,
) -> Result<Perf> {
    let (secs, port) = (secs.to_string(), port.to_string());
    let out = t.run(
        ns,
        &[
            "dnsperf", "-s", server, "-p", &port, "-d", data, "-l", &secs, "-c", "1", "-T", "1",
            "-q", "100", "-t", "1",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (Some(qps), Some(sent), Some(lost), Some(lat)) = (
        num("Queries per second"),
        num("Queries sent"),
        num("Queries lost"),
        num("Average Latency (s)"),
    ) else {
        bail!(
            "dnsperf at {server}:{port} printed no figures:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(Perf {
        qps,
        lost: lost as u64,
        sent: sent as u64,
        avg_latency_ms: lat * 1000.0,
    })
}

/// The response code of the answer to an A query for `name` from `sock` (None: no
/// answer within 50 ms), and whether it held an answer record.
fn ask(sock: &UdpSocket, to: SocketAddr, id: u16, name: &str) -> Option<(u8, bool)> {
    sock.send_to(&a_query(id, name), to).ok()?;
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_millis(50);
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            let answers = u16::from_be_bytes([buf[6], buf[7]]);
            return Some((buf[3] & 0x0f, answers > 0));
        }
    }
    None
}

/// Polls `name` every millisecond from `ns` until `done` holds for its answer;
/// how long since `start` (at most 10 s).
fn until(
    ns: &Netns,
    name: &str,
    start: Instant,
    done: impl Fn(u8, bool) -> bool,
) -> Result<Duration> {
    let _in = InNetns::enter(ns)?;
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let to: SocketAddr = format!("{CLUSTER_DNS}:53").parse()?;
    let mut id = 1u16;
    while start.elapsed() < Duration::from_secs(10) {
        id = id.wrapping_add(1);
        if let Some((rcode, answered)) = ask(&sock, to, id, name)
            && done(rcode, answered)
        {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("{name}: not as wanted within 10 s")
}

/// The CPU time (user and system, seconds) process `pid` has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Run {
    rows: Vec<Vec<String>>,
    chart: Vec<(String, String, f64)>,
    after_apply: Duration,
    after_delete: Duration,
}

fn run(n: usize, secs: u32, latency_rounds: usize) -> Result<Run> {
    let mut t = Topology::new("dnsb")?;
    let s = seeds::lan(&mut t)?;
    let client = seeds::pod(&mut t, &s.node, "client", "lxcc", CLIENT_IP)?;
    let lb = Lb::new(&mut t)?;
    // The services' names, for dnsmasq's hosts file and dnsperf's queries.
    let names: Vec<(Ipv4Addr, String)> = (0..n)
        .map(|i| {
            (
                scale::cluster_ip(i),
                format!("s{i}.default.svc.cluster.local"),
            )
        })
        .collect();
    let hosts = t.dir().join("hosts");
    std::fs::write(
        &hosts,
        names
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect::<String>(),
    )?;
    let data = t.dir().join("queries");
    std::fs::write(
        &data,
        names
            .iter()
            .map(|(_, name)| format!("{name} A\n"))
            .collect::<String>(),
    )?;
    let hosts_arg = format!("--addn-hosts={}", hosts.display());
    dnsmasq(
        &mut t,
        &s.node,
        "dnsmasq",
        NODE_IP,
        DNSMASQ_PORT,
        &[&hosts_arg, "--cache-size=0"],
    )?;
    // The client is a pod of the store (the agent serves the interfaces of the
    // pods it knows).
    lb.apply(&format!(
        "{}apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec: {{nodeName: node1, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {CLIENT_IP}}}\n",
        scale::lb_manifests(n)
    ))?;
    lb.start_agent_with(
        &mut t,
        &s.node,
        "node1",
        &["eth0"],
        &["--dns-upstream", "none"],
    )?;
    // The agent answers through the ClusterIP before it is measured.
    let first = &names[0].1;
    let want = names[0].0.to_string();
    let up = Topology::wait_for(Duration::from_secs(20), || {
        let out = t
            .run(
                &client,
                &[
                    "dig",
                    "+short",
                    "+tries=1",
                    "+time=1",
                    &format!("@{CLUSTER_DNS}"),
                    first,
                ],
            )
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == want).then_some(())
    });
    if up.is_none() {
        bail!("the agent's DNS never answered:\n{}", t.log("agent-node1"));
    }
    let data = data.display().to_string();
    let mut rows = Vec::new();
    let mut chart = Vec::new();
    let contenders = [
        ("dnsmasq (hosts file, node address)", NODE_IP, DNSMASQ_PORT),
        ("lb agent (node address)", NODE_IP, 53),
        (
            "lb agent via kube-dns ClusterIP (lb's data plane)",
            CLUSTER_DNS,
            53,
        ),
    ];
    let mut base = None;
    for (label, server, port) in contenders {
        // The server's CPU over the run: near one core, the server (single-threaded
        // in both) and not dnsperf is what bounds the rate.
        let pid = if port == DNSMASQ_PORT {
            t.pid("dnsmasq")
        } else {
            t.pid("agent-node1")
        }
        .context("the server's pid")?;
        let (cpu0, wall0) = (cpu_seconds(pid)?, Instant::now());
        let p =
            dnsperf(&t, &client, server, port, &data, secs).with_context(|| label.to_string())?;
        let busy = (cpu_seconds(pid)? - cpu0) / wall0.elapsed().as_secs_f64();
        let b = *base.get_or_insert(p.qps);
        rows.push(vec![
            n.to_string(),
            label.to_string(),
            format!("{:.0}", p.qps),
            format!("{:.2}x", p.qps / b),
            format!("{:.3}", p.avg_latency_ms),
            format!("{} of {}", p.lost, p.sent),
            format!("{:.0}%", busy * 100.0),
        ]);
        chart.push((format!("{n} names"), label.to_string(), p.qps));
    }
    // A name after `lb apply`, and NXDOMAIN after `lb delete`: median of rounds.
    let (mut applied, mut deleted) = (Vec::new(), Vec::new());
    for k in 0..latency_rounds {
        let name = format!("fresh{k}");
        let fqdn = format!("{name}.default.svc.cluster.local");
        let start = Instant::now();
        lb.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n"
        ))?;
        applied.push(until(&client, &fqdn, start, |rcode, answered| {
            rcode == 0 && answered
        })?);
        let start = Instant::now();
        lb.ok(&["delete", "svc", &name])?;
        deleted.push(until(&client, &fqdn, start, |rcode, _| rcode == 3)?);
    }
    Ok(Run {
        rows,
        chart,
        after_apply: median(applied),
        after_delete: median(deleted),
    })
}

fn main() -> Result<()> {
    assert!(lb_tests::is_root(), "run as root (namespaces, eBPF)");
    let quick = std::env::args().any(|a| a == "--quick");
    let (sizes, secs, rounds): (&[usize], u32, usize) = if quick {
        (&[100], 1, 2)
    } else {
        (&[1_000, 100_000], 5, 9)
    };
    let mut table = Table::new(
        "Cluster DNS: A queries per second from a pod (dnsperf, 1 thread, 100 outstanding), one name per service in turn",
        &[
            "names",
            "server",
            "queries/s",
            "vs dnsmasq",
            "avg latency (ms)",
            "lost",
            "server CPU",
        ],
    );
    let mut latency = Table::new(
        "Cluster DNS: a service's name after `lb apply`, NXDOMAIN after `lb delete` (from the command's start until a pod's query gets it; median)",
        &[
            "names in the zone",
            "resolves after apply (ms)",
            "NXDOMAIN after delete (ms)",
        ],
    );
    let mut chart = Chart::new("Cluster DNS: queries per second", "q/s");
    for &n in sizes {
        let r = run(n, secs, rounds).with_context(|| format!("{n} names"))?;
        for row in r.rows {
            eprintln!("{}", row.join("  "));
            table.row(row);
        }
        for (g, s, v) in r.chart {
            chart.bar(&g, &s, v);
        }
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        latency.row(vec![n.to_string(), ms(r.after_apply), ms(r.after_delete)]);
    }
    let md = format!(
        "{}\n{}\ndnsperf, dnsmasq and the agent share the machine's two cores; \"server CPU\" is the server process's CPU time over the run's wall time (near 100%: the single-threaded server, not dnsperf, bounds the rate). dnsmasq answers from a hosts file with its cache off (`--cache-size=0`), the agent from its zone. The apply and delete times include the `lb` command itself (its process start and the store's commit).\n",
        table.markdown(),
        latency.markdown()
    );
    print!("{md}");
    report::save("dns", &md, &chart)
}
