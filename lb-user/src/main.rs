//! The `lb` binary: logging, the allocator, and the command line (`lb_user::cli`).

// The CLI and the agent build and drop hundreds of thousands of small objects per
// 10,000-service apply (parsed manifests, JSON rows, map entries); mimalloc's
// thread-local free lists make that markedly cheaper than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;

/// How long memory the agent freed stays committed before mimalloc gives it back
/// to the system, in milliseconds. Its default is 1,000: an agent planning 100,000
/// services frees and allocates hundreds of MB within that second, and the freed
/// pages stayed beside the new ones. An agent started on a store of 100,000
/// services selecting 1,000,000 pods peaked at 1,017-1,026 MiB with 1,000, 982-999
/// MiB with 100 and 964-970 MiB with 10 (paired runs), for ~40% more page faults
/// and a round ~4% longer. The CLI keeps the default: with 10 ms, a 1,000,000-pod
/// `lb apply` faulted 3,050,000 pages instead of 280,000 and took 25.7 s instead
/// of 20-21 s, for a peak of 370 MiB instead of 435. 10 ms is mimalloc 2's default.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

fn main() {
    let cli = lb_user::cli::Cli::parse();
    if matches!(cli.command, lb_user::cli::Command::Agent(_)) {
        // SAFETY: set before any other thread exists; an option, not memory.
        // `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
        unsafe {
            libmimalloc_sys::mi_option_set_default(
                lb_user::freed::MI_OPTION_PURGE_DELAY,
                PURGE_DELAY_MS,
            )
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = lb_user::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
