//! `cargo xtask`: the project's commands. Each installs what it needs first.
//!
//! - `setup`: toolchain and packages only.
//! - `build`: release build; the binary lands at `target/release/lb`.
//! - `run`: with no arguments, the seeds' demo in network namespaces; with
//!   `-- ARGS`, runs `lb ARGS`.
//! - `test`: unit, BPF_PROG_RUN and veth-namespace tests.

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
    /// Benchmarks (so far: the XDP hot path under BPF_PROG_RUN, against a
    /// parse-and-pass baseline measured in the same run).
    Bench,
    /// Run every test: unit, BPF_PROG_RUN and veth-namespace integration tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::setup().context("xtask setup")?;
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
        Cmd::Bench => run(Command::new("cargo").current_dir(workspace_root()).args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "lb-tests",
            "--example",
            "hotpath",
        ])),
    }
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
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run(&mut cmd)
}
