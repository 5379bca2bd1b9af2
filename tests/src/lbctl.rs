//! Running lb as a person would: the `lb` binary's CLI against a store, and its agent
//! inside a node namespace.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::topology::{Netns, Topology};

/// Where the release binaries are: `LB_BIN` (set by `cargo xtask test`) or
/// `target/release/lb` of this workspace.
pub fn lb_bin() -> PathBuf {
    let bin = std::env::var_os("LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/lb"));
    assert!(
        bin.exists(),
        "{} not found: run the tests through `cargo xtask test` (it builds it)",
        bin.display()
    );
    bin
}

/// The pod stand-in, built beside `lb`.
pub fn podserver_bin() -> PathBuf {
    lb_bin().with_file_name("podserver")
}

/// One lb installation: a store and a bpffs, inside a topology's scratch directory.
pub struct Lb {
    pub store: PathBuf,
    pub bpffs: PathBuf,
}

impl Lb {
    pub fn new(t: &mut Topology) -> Result<Self> {
        Ok(Lb {
            store: t.dir().join("store"),
            bpffs: t.bpffs()?,
        })
    }

    /// A store alone, in `dir` (for CLI tests; no bpffs, no agent).
    pub fn store_only(dir: PathBuf) -> Self {
        Lb {
            bpffs: dir.join("no-bpffs"),
            store: dir,
        }
    }

    /// `lb ARGS` against this store (the CLI needs no namespace).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(lb_bin())
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .output()
            .context("running lb")
    }

    /// `lb ARGS`, failing unless it succeeds; returns standard output.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "lb {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lb apply -f FILE` with `manifest` written to a file of its own.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.apply_peak(manifest).map(|(out, _)| out)
    }

    /// [`apply`](Self::apply), with the CLI's peak resident memory (bytes).
    pub fn apply_peak(&self, manifest: &str) -> Result<(String, u64)> {
        self.apply_peak_with(manifest, || ())
    }

    /// [`apply_peak`](Self::apply_peak), calling `started` once the manifest is
    /// written, just before `lb apply` starts (a bench times lb from there).
    pub fn apply_peak_with(&self, manifest: &str, started: impl FnOnce()) -> Result<(String, u64)> {
        // One file per call: tests of one process apply in parallel.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = self
            .store
            .with_file_name(format!("manifest-{}-{n}", std::process::id()));
        let [path, out_path, err_path] = ["yaml", "out", "err"].map(|ext| base.with_extension(ext));
        std::fs::write(&path, manifest)?;
        started();
        let result = (|| {
            let child = Command::new(lb_bin())
                .arg("--store")
                .arg(&self.store)
                .args(["apply", "-f", path.to_str().unwrap_or_default()])
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(&out_path)?)
                .stderr(std::fs::File::create(&err_path)?)
                .spawn()
                .context("running lb apply")?;
            let (status, peak) = wait_peak(child)?;
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            if status != 0 {
                bail!(
                    "lb apply failed ({status}): {}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            Ok((out, peak))
        })();
        for p in [path, out_path, err_path] {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    /// Starts `lb agent` in `node` (label `agent-NODE_NAME`) and waits until it has
    /// pinned its maps and reconciled once.
    pub fn start_agent(
        &self,
        t: &mut Topology,
        node: &Netns,
        node_name: &str,
        ifaces: &[&str],
    ) -> Result<()> {
        self.start_agent_with(t, node, node_name, ifaces, &[])
    }

    /// [`start_agent`](Self::start_agent) with more `lb agent` arguments.
    pub fn start_agent_with(
        &self,
        t: &mut Topology,
        node: &Netns,
        node_name: &str,
        ifaces: &[&str],
        extra: &[&str],
    ) -> Result<()> {
        let bin = lb_bin();
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "--store".into(),
            self.store.display().to_string(),
            "agent".into(),
            "--node-name".into(),
            node_name.into(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
        ];
        for i in ifaces {
            argv.extend(["--iface".to_string(), i.to_string()]);
        }
        argv.extend(extra.iter().map(|a| a.to_string()));
        // `LB_TEST_XDP=native`: XDP on the (tuned) veths too, unless the test chose.
        if let Some(x) = xdp_from_env()
            && !extra.contains(&"--xdp")
        {
            argv.extend(["--xdp".to_string(), x]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let label = format!("agent-{node_name}");
        t.spawn(node, &label, &argv, &[("LB_LOG", "info")])?;
        let up = Topology::wait_for(Duration::from_secs(20), || {
            t.log(&label).contains("reconciled").then_some(())
        });
        if up.is_none() {
            bail!("agent {node_name} did not come up:\n{}", t.log(&label));
        }
        Ok(())
    }

    /// What to print when a test fails: the agent's log and its verdict counters.
    pub fn diagnostics(&self, t: &Topology, node_name: &str) -> String {
        let stats = self
            .cli(&[
                "stats",
                "--bpffs",
                &self.bpffs.display().to_string(),
                "--node-name",
                node_name,
            ])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default();
        format!(
            "agent log:\n{}\nverdicts:\n{stats}",
            t.log(&format!("agent-{node_name}"))
        )
    }

    /// The packets node `node_name`'s data plane counted under `reason` (`lb stats`).
    pub fn verdict(&self, node_name: &str, reason: &str) -> u64 {
        let out = self
            .ok(&[
                "stats",
                "--bpffs",
                &self.bpffs.display().to_string(),
                "--node-name",
                node_name,
            ])
            .unwrap();
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(reason)).then(|| f.next().and_then(|n| n.parse().ok()))?
            })
            .unwrap_or_else(|| panic!("no {reason} in\n{out}"))
    }

    /// `lb conntrack` of node `node_name`'s data plane: the tracked flows, a row per
    /// direction.
    pub fn conntrack(&self, node_name: &str) -> String {
        self.ok(&[
            "conntrack",
            "--bpffs",
            &self.bpffs.display().to_string(),
            "--node-name",
            node_name,
        ])
        .unwrap()
    }

    /// Where the agent for `node_name` pins its maps.
    pub fn pins(&self, node_name: &str) -> PathBuf {
        self.bpffs.join("lb").join(node_name)
    }
}

/// `curl` from a namespace; Some(body) on success.
pub fn curl(t: &Topology, ns: &Netns, url: &str) -> Option<String> {
    let out = t.run(ns, &["curl", "-s", "-m", "2", url]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `curl` from a namespace for an HTTP status and body (any status; None when no
/// answer came within `secs`).
pub fn http(t: &Topology, ns: &Netns, url: &str, secs: u32) -> Option<(u16, String)> {
    let secs = secs.to_string();
    let out = t
        .run(
            ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                &secs,
                "-w",
                " %{http_code}",
                url,
            ],
        )
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once(' ')?;
    let code: u16 = code.parse().ok()?;
    (out.status.success() && code != 0).then(|| (code, body.to_string()))
}

/// The `--xdp` the end-to-end tests give agents (`LB_TEST_XDP`), if any.
pub fn xdp_from_env() -> Option<String> {
    std::env::var("LB_TEST_XDP").ok().filter(|x| !x.is_empty())
}

/// Waits for `child`; returns its wait status and peak resident memory (bytes).
fn wait_peak(child: std::process::Child) -> Result<(i32, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (`child` is forgotten below so
    // that nothing waits for it twice).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    std::mem::forget(child);
    if r != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss as u64 * 1024))
}

/// Peak resident memory (bytes) of process `pid` so far (`VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
