//! Control plane: from `lb apply` of N services x 10 endpoints until the agent's maps
//! hold them all, beside `iptables-restore` and `nft -f` of the rule sets kube-proxy
//! writes for the same services (each in a namespace of its own); and one endpoint
//! change (the median of 5) at each size for each. lb runs twice: endpoints from
//! EndpointSlices (what kube-proxy reads) and from pods its services select (lb
//! without Kubernetes). Run as root: `cargo xtask bench`
//! (`--quick` for a smoke run; `--sizes=10000 --lb-only` to measure lb alone,
//! `--endpoints=pods` or `=slices` for one of its two runs).

mod report;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    Netns, Topology,
    lbctl::{self, Lb},
    scale,
};
use lb_user::sizes::{MapSizes, Need};

use crate::report::{Chart, Table};

/// Lines of the agent's log that report a reconcile.
fn reconciles(t: &Topology) -> Vec<String> {
    t.log(AGENT)
        .lines()
        .filter(|l| l.contains("reconciled"))
        .map(String::from)
        .collect()
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Waits (at most 300 s) for a reconcile line after the first `seen` that satisfies
/// `ok`; an error naming the agent's last log line if it is gone or never does.
fn wait_reconcile(t: &Topology, seen: usize, ok: impl Fn(&str) -> bool) -> Result<String> {
    let start = Instant::now();
    let pid = t.pid(AGENT).context("no agent")?;
    loop {
        if let Some(l) = reconciles(t).into_iter().skip(seen).find(|l| ok(l)) {
            return Ok(l);
        }
        let log = t.log(AGENT);
        let last = log.lines().last().unwrap_or("(nothing)");
        if lbctl::peak_rss(pid).is_none() {
            bail!("the agent exited; its last log line: {last}");
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the agent did not reconcile in 300 s; its last log line: {last}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Applies `manifest` and waits for the reconcile line `ok` recognises: that line,
/// and the time from `lb apply` (its manifest written) until the agent logged it.
fn apply_timed(
    t: &Topology,
    lb: &Lb,
    manifest: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<(String, Duration)> {
    let seen = reconciles(t).len();
    let mut start = SystemTime::now();
    lb.apply_peak_with(manifest, || start = SystemTime::now())?;
    let line = wait_reconcile(t, seen, ok)?;
    eprintln!("agent: {line}");
    let took = since(logged_at(&line)?, start)?;
    Ok((line, took))
}

const AGENT: &str = "agent-node1";

struct LbTimes {
    apply: Duration,
    agent_reconcile_us: u64,
    change: Duration,
    change_reconcile_us: u64,
    /// From the store's commit of the change to the agent's report that the maps
    /// hold it.
    commit_to_maps: Duration,
    /// One more service applied into the store of n (from `lb apply` to the maps).
    one_more: Duration,
    /// Peak resident memory of the agent and of the CLI's bulk apply (bytes).
    agent_peak: u64,
    cli_peak: u64,
}

/// When the agent wrote `line` (its timestamp).
fn logged_at(line: &str) -> Result<SystemTime> {
    let ts = line.split_whitespace().next().unwrap_or_default();
    let t: jiff::Timestamp = ts
        .parse()
        .with_context(|| format!("no timestamp in {line}"))?;
    Ok(SystemTime::from(t))
}

/// How long after `start` the agent logged `logged`; an error (not a zero) if it
/// logged before: such a figure cannot be measured.
fn since(logged: SystemTime, start: SystemTime) -> Result<Duration> {
    logged.duration_since(start).with_context(|| {
        format!("the agent logged {logged:?}, before the measured step began ({start:?})")
    })
}

/// Where lb's services take their endpoints from.
#[derive(Clone, Copy, PartialEq)]
enum Endpoints {
    /// EndpointSlices, as kube-proxy reads them (one endpoint change: a slice).
    Slices,
    /// Selectors over pods, as lb alone is mostly used (one endpoint change: a pod
    /// moves to another address).
    Pods,
}

/// How the agent reads the store.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Directly (the store-mode agent: SQLite rows by revision).
    Store,
    /// Through `lb api-server`, with the Kubernetes-mode watchers (kube-rs).
    Api,
}

/// The agent in a namespace of its own (one veth to attach to); `n` services
/// applied, then one endpoint change.
fn lb(n: usize, from: Endpoints, via: Via) -> Result<LbTimes> {
    let mut t = Topology::new("cp")?;
    let node = t.netns("node")?;
    t.ip(
        &node,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    )?;
    t.ip(&node, &["addr", "add", "192.0.2.1/24", "dev", "d0"])?;
    t.ip(&node, &["link", "set", "d0", "up"])?;
    t.ip(&node, &["link", "set", "d1", "up"])?;
    let lb = Lb::new(&mut t)?;
    // Past the default sizes (65,536 frontends, 524,288 slots), the maps are sized
    // for the store to come, as an operator would (Cilium: --bpf-lb-map-max).
    let sized = MapSizes::holding(Need {
        frontends: (n + 2) as u64,
        backends: ((n + 2) * scale::ENDPOINTS_PER_SERVICE) as u64,
        ..Need::default()
    });
    let sizes = [
        "--max-frontends".to_string(),
        sized.frontends.to_string(),
        "--max-backends".to_string(),
        sized.backends.to_string(),
    ];
    let mut sizes: Vec<&str> = sizes.iter().map(String::as_str).collect();
    let kubeconfig = match via {
        Via::Store => None,
        Via::Api => Some(lb_tests::kubectl::serve_in(&mut t, &node, &lb)?),
    };
    let kubeconfig = kubeconfig.map(|p| p.display().to_string());
    if let Some(path) = &kubeconfig {
        sizes.extend(["--kubeconfig", path.as_str()]);
    }
    lb.start_agent_with(&mut t, &node, "node1", &["d0"], &sizes)?;
    let manifests = match from {
        Endpoints::Slices => scale::lb_manifests(n),
        Endpoints::Pods => scale::lb_pod_manifests(n),
    };
    let change_of = |k| match from {
        Endpoints::Slices => scale::lb_endpoint_change(n, k),
        Endpoints::Pods => scale::lb_pod_change(k),
    };
    let seen = reconciles(&t).len();
    // The services the store holds before (the cluster DNS service the agent keeps).
    let base = reconciles(&t)
        .last()
        .and_then(|l| field(l, "services"))
        .unwrap_or(0) as usize;
    // Until the agent logs that the maps hold it (its log line's timestamp), not
    // until this loop notices after `lb apply` has exited: the CLI's housekeeping
    // after the commit (a log checkpoint) delays no map.
    let mut start = SystemTime::now();
    let (_, cli_peak) = lb.apply_peak_with(&manifests, || start = SystemTime::now())?;
    drop(manifests);
    // Every service and every endpoint: through the API, services and their
    // slices arrive as separate watch events, over several reconciles.
    let want = format!("services={} ", base + n);
    let endpoints = (n * scale::ENDPOINTS_PER_SERVICE) as u64;
    let line = wait_reconcile(&t, seen, |l| {
        l.contains(&want)
            && field(l, "refused") == Some(0)
            && field(l, "backends").is_some_and(|b| b >= endpoints)
    })?;
    let apply = since(logged_at(&line)?, start)?;
    eprintln!("agent: {line}");
    let agent_reconcile_us = field(&line, "took_us").unwrap_or(0);
    // One endpoint change, CHANGES times (each another new endpoint): the medians.
    let (mut change, mut reconcile_us, mut commit_to_maps) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..CHANGES {
        let (line, took) = apply_timed(&t, &lb, &change_of(k), |l| {
            field(l, "writes").unwrap_or(0) > 0
        })?;
        change.push(took);
        reconcile_us.push(field(&line, "took_us").unwrap_or(0));
        // The store's commit marker: `REVISION UNIX_NS`, written as the commit returns.
        let marker = std::fs::read_to_string(lb.store.join("commit").join("revision"))?;
        let ns: u64 = marker
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("commit marker {marker:?}"))?;
        let committed = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
        commit_to_maps.push(since(logged_at(&line)?, committed)?);
        eprintln!(
            "  one change #{k}: {:?} from lb apply, {:?} from its commit",
            change.last().copied().unwrap_or_default(),
            commit_to_maps.last().copied().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // One more service into the store of n, CHANGES times (each another new one,
    // the store one bigger each time): the median.
    let mut one_more = Vec::new();
    for k in 0..CHANGES {
        let want = format!("services={} ", base + n + k + 1);
        let more = scale::lb_one_more(n + k, from == Endpoints::Pods);
        let (_, took) = apply_timed(&t, &lb, &more, |l| l.contains(&want))?;
        one_more.push(took);
        eprintln!(
            "  one more service #{k}: {:?} from lb apply",
            one_more.last().copied().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent_peak = t
        .pid(AGENT)
        .and_then(lbctl::peak_rss)
        .context("the agent's peak memory")?;
    Ok(LbTimes {
        one_more: median(one_more),
        agent_peak,
        cli_peak,
        apply,
        agent_reconcile_us,
        change: median(change),
        change_reconcile_us: median(reconcile_us),
        commit_to_maps: median(commit_to_maps),
    })
}

/// The largest store the agent is timed following through `lb api-server` (bench
/// time: every object goes through a watch event and kube-rs' cache).
const API_MAX: usize = 10_000;

/// How many times one endpoint change is measured (the median is reported).
const CHANGES: usize = 5;

fn median<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// `argv` run in `ns` with `file`, timed.
fn timed(t: &Topology, ns: &Netns, argv: &[&str], file: &str) -> Result<Duration> {
    let mut a: Vec<&str> = argv.to_vec();
    a.push(file);
    let start = Instant::now();
    t.sh(ns, &a)?;
    Ok(start.elapsed())
}

/// Full load of `rules`, then the change `change`, in a fresh namespace.
fn kernel_rules(
    argv_full: &[&str],
    argv_change: &[&str],
    rules: String,
    change: impl Fn(usize) -> String,
) -> Result<(Duration, Duration)> {
    let mut t = Topology::new("cpk")?;
    let ns = t.netns("node")?;
    let full = t.dir().join("full.rules");
    std::fs::write(&full, rules)?;
    let load = timed(&t, &ns, argv_full, full.to_str().unwrap_or_default())?;
    let mut changes = Vec::new();
    for k in 0..CHANGES {
        let one = t.dir().join(format!("change{k}.rules"));
        std::fs::write(&one, change(k))?;
        changes.push(timed(
            &t,
            &ns,
            argv_change,
            one.to_str().unwrap_or_default(),
        )?);
    }
    Ok((load, median(changes)))
}

/// A kernel rule-set contender: how to load its full rule set and one change.
struct KernelRules {
    short: &'static str,
    label: &'static str,
    full: &'static [&'static str],
    change: &'static [&'static str],
    rules: fn(usize) -> String,
    one: fn(usize, usize) -> String,
    /// Largest size run.
    max: usize,
    why_max: &'static str,
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    assert!(lb_tests::is_root(), "run as root (namespaces, eBPF)");
    let quick = std::env::args().any(|a| a == "--quick");
    // `--sizes=N,M`: only these sizes; `--lb-only`: no kernel contenders (for work on lb).
    let sizes: Vec<usize> =
        match std::env::args().find_map(|a| a.strip_prefix("--sizes=").map(String::from)) {
            Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
            None if quick => vec![100, 1_000],
            None => vec![1_000, 10_000, 30_000, 100_000],
        };
    let lb_only = std::env::args().any(|a| a == "--lb-only");
    // `--endpoints=slices` or `=pods`: lb's runs with endpoints from that source only.
    let endpoints = std::env::args().find_map(|a| a.strip_prefix("--endpoints=").map(String::from));
    let runs = |from: &str| endpoints.as_deref().is_none_or(|e| e == from);
    let kernel = [
        KernelRules {
            short: "iptables-restore",
            label: "iptables-restore (kube-proxy rules)",
            full: &["iptables-restore"],
            change: &["iptables-restore", "--noflush"],
            rules: scale::iptables_rules,
            one: scale::iptables_endpoint_change,
            max: 30_000,
            why_max: "bench time: lb's 100,000 rows are lb's own figures",
        },
        // nft -f of kube-proxy's table grows faster than linearly here (about 70 s
        // at 10,000 services on this kernel), so it stops at 10,000.
        KernelRules {
            short: "nft -f",
            label: "nft -f (kube-proxy nftables rules)",
            full: &["nft", "-f"],
            change: &["nft", "-f"],
            rules: scale::nft_rules,
            one: scale::nft_endpoint_change,
            max: 10_000,
            why_max: "superlinear: over a minute at 10,000",
        },
    ];
    let mut table = Table::new(
        "Control plane: N services x 10 endpoints until the data plane holds them (ms), and one endpoint change",
        &[
            "services",
            "contender",
            "full load (ms)",
            "one endpoint change (ms)",
            "full load: this / lb",
            "lb: agent's reconcile full / change; store commit -> maps (ms)",
            "lb: one more service, median of 5 (ms)",
            "lb: peak memory, agent / CLI (MiB)",
        ],
    );
    let mut chart = Chart::new("Control plane: full load (s)", "s");
    let lb_row = |n: usize, label: &str, t: &LbTimes, base: &LbTimes| {
        eprintln!(
            "{n:>6} services  {label}: apply->maps {:?} (agent {} us), one change {:?} (agent {} us, commit->maps {:?}), one more service {:?}, peak MiB agent {} CLI {}",
            t.apply,
            t.agent_reconcile_us,
            t.change,
            t.change_reconcile_us,
            t.commit_to_maps,
            t.one_more,
            t.agent_peak >> 20,
            t.cli_peak >> 20
        );
        vec![
            n.to_string(),
            label.to_string(),
            ms(t.apply),
            ms(t.change),
            format!("{:.2}x", t.apply.as_secs_f64() / base.apply.as_secs_f64()),
            format!(
                "{:.1} / {:.1}; {:.1}",
                t.agent_reconcile_us as f64 / 1e3,
                t.change_reconcile_us as f64 / 1e3,
                t.commit_to_maps.as_secs_f64() * 1e3
            ),
            ms(t.one_more),
            format!("{} / {}", t.agent_peak >> 20, t.cli_peak >> 20),
        ]
    };
    for &n in &sizes {
        let slices = runs("slices")
            .then(|| lb(n, Endpoints::Slices, Via::Store).with_context(|| format!("lb at {n}")))
            .transpose()?;
        if let Some(l) = &slices {
            table.row(lb_row(n, "lb (`lb apply` -> agent -> maps)", l, l));
            chart.bar(&format!("{n} svc"), "lb", l.apply.as_secs_f64());
        }
        if runs("pods") {
            let p = lb(n, Endpoints::Pods, Via::Store)
                .with_context(|| format!("lb with pods at {n}"))?;
            table.row(lb_row(
                n,
                "lb, endpoints from pods' selectors",
                &p,
                slices.as_ref().unwrap_or(&p),
            ));
            chart.bar(&format!("{n} svc"), "lb, pods", p.apply.as_secs_f64());
        }
        let Some(l) = slices else { continue };
        // The agent following the store through `lb api-server` instead (as an
        // agent on another machine would), up to API_MAX services.
        if n <= API_MAX {
            let a = lb(n, Endpoints::Slices, Via::Api)
                .with_context(|| format!("lb through lb api-server at {n}"))?;
            table.row(lb_row(
                n,
                "lb, agent following `lb api-server` (Kubernetes mode)",
                &a,
                &l,
            ));
            chart.bar(&format!("{n} svc"), "lb via API", a.apply.as_secs_f64());
        }
        for k in kernel.iter().filter(|_| !lb_only) {
            if n > k.max {
                table.row(vec![
                    n.to_string(),
                    k.label.into(),
                    format!("not run ({})", k.why_max),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
            let (load, change) = kernel_rules(k.full, k.change, (k.rules)(n), |c| (k.one)(n, c))
                .with_context(|| format!("{} at {n}", k.short))?;
            eprintln!(
                "{n:>6} services  {} {load:?}, one change {change:?}",
                k.short
            );
            table.row(vec![
                n.to_string(),
                k.label.into(),
                ms(load),
                ms(change),
                format!("{:.2}x", load.as_secs_f64() / l.apply.as_secs_f64()),
                String::new(),
                String::new(),
                String::new(),
            ]);
            chart.bar(&format!("{n} svc"), k.short, load.as_secs_f64());
        }
    }
    let md = table.markdown();
    println!("{md}");
    report::save("controlplane", &md, &chart)?;
    Ok(())
}
