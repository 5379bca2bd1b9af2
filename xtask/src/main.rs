//! `cargo xtask`: the project's commands. Each installs what it needs first.
//!
//! - `setup`: toolchain and packages only.
//! - `build`: release build; the binary lands at `target/release/lb`.
//! - `run`: with no arguments, the seeds' demo in network namespaces; with
//!   `-- ARGS`, runs `lb ARGS`.
//! - `test`: unit, BPF_PROG_RUN and veth-namespace tests.
//! - `lint`: rustfmt check and clippy (warnings denied) on the user side, and on the
//!   eBPF crate for its own target with the nightly toolchain.

mod demo;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::setup::run;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test lb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Build lb in release mode (target/release/lb).
    Build,
    /// Run the seeds' NodePort demo (no arguments), or `lb ARGS` (after `--`).
    Run {
        /// Arguments for the lb binary; none runs the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks, each against baselines measured in the same run: the XDP hot
    /// path under BPF_PROG_RUN, live packets through veth namespaces (vs a plain
    /// redirect hop, iptables and nftables), and the control plane (vs
    /// iptables-restore and nft -f). Tables and SVG charts land in target/bench/;
    /// a full run also copies the tables into the README.
    Bench {
        /// A short smoke run (small sizes, short windows); the README is left alone.
        #[arg(long)]
        quick: bool,
    },
    /// Run every test: unit, BPF_PROG_RUN and veth-namespace integration tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// The BPF_PROG_RUN fuzz test (mutated and structured frames through every
    /// program), longer than in `test` and with a new seed each run unless one is
    /// given; a failure prints the seed that reproduces it.
    Fuzz {
        /// Frames, each run through XDP, TC ingress and TC egress (about 1,500 a
        /// second).
        #[arg(long, default_value_t = 300_000)]
        frames: u32,
        /// The generator's seed (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// rustfmt check, and clippy with warnings denied: the workspace, then lb-ebpf
    /// on its own (bpfel-unknown-none, nightly, build-std=core).
    Lint,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::setup(&workspace_root()).context("xtask setup")?;
    match cli.command {
        Cmd::Setup => Ok(()),
        Cmd::Build => build().map(|_| ()),
        Cmd::Run { args } => {
            let lb = build()?;
            if args.is_empty() {
                // SAFETY: set before any thread is started.
                unsafe { std::env::set_var("LB_BIN", &lb) };
                demo::run(&workspace_root())
            } else {
                run(Command::new(lb).args(args))
            }
        }
        Cmd::Test { filter } => test(filter),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Fuzz { frames, seed } => fuzz(frames, seed),
        Cmd::Lint => lint(),
    }
}

fn fuzz(frames: u32, seed: Option<u64>) -> Result<()> {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "fuzz: {frames} frames, seed {seed} (again: cargo xtask fuzz --frames {frames} --seed {seed})"
    );
    let lb = build()?;
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "--release", "-p", "lb-tests", "--test", "prog_run"])
        .args(["fuzzed_", "--", "--nocapture"])
        .env("LB_BIN", &lb)
        .env("LB_FUZZ_FRAMES", frames.to_string())
        .env("LB_FUZZ_SEED", seed.to_string()))
}

fn lint() -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("rustup").current_dir(&root).args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--release",
        "-p",
        "lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

const BENCHES: [&str; 4] = ["hotpath", "livebench", "cpbench", "dnsbench"];

fn bench(quick: bool) -> Result<()> {
    let root = workspace_root();
    let lb = build()?;
    for name in BENCHES {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "lb-tests",
                "--example",
                name,
            ])
            .env("LB_BIN", &lb);
        if quick {
            cmd.args(["--", "--quick"]);
        }
        run(&mut cmd)?;
    }
    if !quick {
        readme_performance(&root)?;
    }
    Ok(())
}

/// Replaces the README's measured tables (between the bench markers) with this
/// run's, headed by the date and the machine.
fn readme_performance(root: &std::path::Path) -> Result<()> {
    const START: &str = "<!-- bench:start -->";
    const END: &str = "<!-- bench:end -->";
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme).context("reading README.md")?;
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        anyhow::bail!("README.md has no {START} ... {END} section");
    };
    let out = |argv: &[&str]| -> String {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let mut body = format!(
        "{START}
Measured {} on {} CPUs ({cpu}), kernel {}, by `cargo xtask bench`.

",
        out(&["date", "-u", "+%Y-%m-%d"]),
        out(&["nproc"]),
        out(&["uname", "-r"]),
    );
    for name in ["hotpath", "live", "controlplane", "dns"] {
        let md = std::fs::read_to_string(root.join(format!("target/bench/{name}.md")))
            .with_context(|| format!("reading target/bench/{name}.md"))?;
        body.push_str(&md);
        body.push('\n');
    }
    let new = format!("{}{body}{}", &text[..a], &text[b..]);
    std::fs::write(&readme, new).context("writing README.md")?;
    println!("README.md performance section updated");
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds every binary in release mode and returns the path of `lb`.
fn build() -> Result<PathBuf> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--bins"]))?;
    Ok(root.join("target/release/lb"))
}

fn test(filter: Option<String>) -> Result<()> {
    let root = workspace_root();
    let lb = build()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--release", "--workspace", "--exclude", "lb-ebpf"])
        .env("LB_BIN", &lb);
    let smoke = filter.is_none();
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run(&mut cmd)?;
    if smoke {
        // The end-to-end tests again on the other link settings (the run above had
        // links as they come): checksum offload off, GRO on, and both with lb's XDP
        // on the veth uplinks (`--xdp native`, the fast path tuned links allow).
        for (links, xdp) in [("offloads-off", ""), ("gro-on", ""), ("tuned", "native")] {
            println!("== end-to-end tests on links: {links}, --xdp {xdp:?}");
            run(Command::new("cargo")
                .current_dir(&root)
                .args(["test", "--release", "-p", "lb-tests"])
                .args(MATRIX_TESTS.iter().flat_map(|t| ["--test", t]))
                .env("LB_BIN", &lb)
                .env("LB_TEST_LINKS", links)
                .env("LB_TEST_XDP", xdp))?;
        }
        // The benchmarks must keep working too: a short run, no timing asserted.
        bench(true)?;
    }
    Ok(())
}

/// The end-to-end tests run on every link setting (`LB_TEST_LINKS`).
const MATRIX_TESTS: &[&str] = &["seeds", "dataplane", "multinode", "agent", "dns"];
