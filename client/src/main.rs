//! `stagecache`: the command pipeline steps and people use to register, fetch and inspect
//! asset sets. Each command lives in `command/<name>.rs` of the library; errors are one
//! line on stderr and an exit code documented in the README.

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use stagecache_client::cli::Cli;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider, chosen explicitly: with more than one compiled in, rustls
    // refuses to pick and its first use panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGECACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match stagecache_client::command::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("stagecache: error: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}
