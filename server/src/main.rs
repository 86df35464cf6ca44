//! `stagecache-server`: runs the service on its embedded defaults (RocksDB and a local
//! blob store under `./stagecache-data`, listening on 127.0.0.1:50051).

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use stagecache_server::{serve_with_web, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Content-addressed artifact cache and stage ledger for split release pipelines.
#[derive(Parser, Debug)]
#[command(name = "stagecache-server", version)]
struct Args {
    /// Directory for the index (RocksDB) and, by default, the blobs.
    #[arg(long, env = "STAGECACHE_DATA_DIR", default_value = "./stagecache-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "STAGECACHE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Blob backend: file:///abs/dir (default: <data-dir>/blobs), az://container/prefix,
    /// s3://bucket/prefix, gs://bucket/prefix. Cloud credentials come from the usual
    /// AZURE_*, AWS_* and GOOGLE_* environment variables.
    #[arg(long, env = "STAGECACHE_BLOB_STORE")]
    blob_store: Option<String>,
    /// Address of the read-only web page (builds, stage graphs, ledger history, diffs),
    /// e.g. 127.0.0.1:8080. Off unless given.
    #[arg(long, env = "STAGECACHE_WEB_LISTEN")]
    web_listen: Option<SocketAddr>,
    /// Directory of `*.stages.yaml` stage graphs the web page offers for a build
    /// (default: deploy/pipelines when it exists).
    #[arg(long, env = "STAGECACHE_WEB_STAGE_FILES")]
    web_stage_files: Option<PathBuf>,
    /// Log filter, e.g. `info` or `stagecache_server=debug`.
    #[arg(long, env = "STAGECACHE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Re-hash every stored blob (with the server stopped: the index is opened
    /// exclusively), quarantine damaged ones, list the refs that lost a blob, print a
    /// JSON report. Exits 0 when nothing was damaged, 3 otherwise.
    Scrub,
}

/// `stagecache-server scrub`.
async fn scrub(args: &Args) -> ExitCode {
    let store =
        match stagecache_server::store::Store::open(&args.data_dir, args.blob_store.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("stagecache-server: scrub: {e}");
                return ExitCode::from(1);
            }
        };
    match store.scrub().await {
        Ok(r) => {
            let rate = stagecache_server::store::scrub::gib_per_second(&r);
            println!(
                "{}",
                serde_json::json!({"report": r, "gib_per_second": rate})
            );
            if r.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("stagecache-server: scrub: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received: finishing in-flight calls");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if let Some(Command::Scrub) = args.command {
        return scrub(&args).await;
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stagecache-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    // The one line on stdout (the log goes to stderr): the address actually bound, so
    // that `--listen 127.0.0.1:0` lets the kernel choose a free port and the starter
    // learns it. Bound is not yet serving: readiness is `grpc.health.v1` SERVING.
    match listener.local_addr() {
        Ok(addr) => println!("stagecache-server listening on {addr}"),
        Err(e) => {
            eprintln!("stagecache-server: cannot read the listening address: {e}");
            return ExitCode::from(2);
        }
    }
    let web = match args.web_listen {
        None => None,
        Some(addr) => {
            let web = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("stagecache-server: cannot listen on {addr} (web): {e}");
                    return ExitCode::from(2);
                }
            };
            // A second line on stdout, after the gRPC one: the web page's bound address.
            match web.local_addr() {
                Ok(a) => println!("stagecache-server web on {a}"),
                Err(e) => {
                    eprintln!("stagecache-server: cannot read the web address: {e}");
                    return ExitCode::from(2);
                }
            }
            Some(web)
        }
    };
    let mut config = ServerConfig::new(args.data_dir);
    config.blob_store = args.blob_store;
    config.web_stage_files = args.web_stage_files.or_else(|| {
        let default = PathBuf::from("deploy/pipelines");
        default.is_dir().then_some(default)
    });
    match serve_with_web(config, listener, web, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagecache-server: {e}");
            ExitCode::from(1)
        }
    }
}
