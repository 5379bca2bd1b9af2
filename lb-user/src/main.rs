//! The `lb` binary: logging, the allocator, and the command line (`lb_user::cli`).

// The CLI and the agent build and drop hundreds of thousands of small objects per
// 10,000-service apply (parsed manifests, JSON rows, map entries); mimalloc's
// thread-local free lists make that markedly cheaper than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = lb_user::cli::run(lb_user::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
