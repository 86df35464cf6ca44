//! `stagecache-server`: runs the service on its embedded defaults (RocksDB and a local
//! blob store under `./stagecache-data`, listening on 127.0.0.1:50051).

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use stagecache_server::auth::{AuthConfig, Authenticator};
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
    /// Log lines on stderr as text for people, or one JSON object per line for log
    /// collectors.
    #[arg(
        long,
        env = "STAGECACHE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Who may do what: tokens this server mints, CI identity issuers (OIDC) and their
    /// trust rules (TOML; see deploy/auth.example.toml). Without it the server is open,
    /// which it allows only on a loopback address.
    #[arg(long, env = "STAGECACHE_AUTH_CONFIG", global = true)]
    auth_config: Option<PathBuf>,
    /// Serve without an auth configuration on a non-loopback address: anyone who reaches
    /// the port may record results, move refs and force a re-sign.
    #[arg(long)]
    insecure_open: bool,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "STAGECACHE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "STAGECACHE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. The
    /// `[[certificates]]` rules of --auth-config map their names to grants.
    #[arg(long, env = "STAGECACHE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca, also accept clients without a certificate (tokens or
    /// anonymous grants then decide).
    #[arg(long, requires = "tls_client_ca")]
    tls_client_optional: bool,
    /// Take the blob store over from another server that still holds its lease (only when
    /// you know that server is dead: two writers would fork the history).
    #[arg(long)]
    take_over: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-hash every stored blob (with the server stopped: the index is opened
    /// exclusively), quarantine damaged ones, list the refs that lost a blob, print a
    /// JSON report. Exits 0 when nothing was damaged, 3 otherwise.
    Scrub,
    /// Rebuild the index from the blob store (its blobs and journal), with the server
    /// stopped: after the data dir was lost, or to check what the journal holds. Prints
    /// progress on stderr and a JSON summary on stdout.
    Rebuild,
    /// Mint tokens with the key in --auth-config.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Print a new token for SUBJECT with the given grants.
    Create {
        /// Who the token stands for; audit records name it `token:SUBJECT`.
        #[arg(long)]
        subject: String,
        /// NAMESPACES:PERMISSIONS[:REF-PREFIXES], repeatable, e.g. `prod:read,record` or
        /// `prod:write,ref:bar/,build/`. Permissions: read, write, ref, record,
        /// invalidate, admin.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Lifetime: `90d`, `12h`, `30m` or seconds.
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Print the claims (unsigned JSON) instead of the token.
        #[arg(long)]
        dump_claims: bool,
    },
}

/// `90d`, `12h`, `30m`, `45s` or plain seconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("--expires {s:?}: expected e.g. 90d, 12h, 30m or seconds"))?;
    let unit = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(format!("--expires {s:?}: unit must be d, h, m or s")),
    };
    if n <= 0 {
        return Err(format!("--expires {s:?}: must be positive"));
    }
    n.checked_mul(unit)
        .ok_or_else(|| format!("--expires {s:?}: too long"))
}

fn token_command(auth_config: Option<&std::path::Path>, action: TokenAction) -> Result<(), String> {
    let TokenAction::Create {
        subject,
        grants,
        expires,
        dump_claims,
    } = action;
    let path =
        auth_config.ok_or("token create: give --auth-config FILE (it holds the signing key)")?;
    let config = AuthConfig::load(path)?;
    let grants = grants
        .iter()
        .map(|g| stagecache_server::auth::Grant::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    if subject.trim().is_empty() || subject.chars().any(char::is_control) {
        return Err(format!(
            "--subject {subject:?}: give a name without control characters"
        ));
    }
    let minter = stagecache_server::auth::token::Minter::new(&config)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = minter.claims(&subject, grants, now, parse_duration(&expires)?);
    if dump_claims {
        println!(
            "{}",
            serde_json::to_string_pretty(&claims).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", minter.sign(&claims)?);
    }
    Ok(())
}

/// The TLS settings the flags name, the files read now so a wrong path fails at start.
fn tls_settings(args: &Args) -> Result<Option<stagecache_server::TlsSettings>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
    };
    Ok(Some(stagecache_server::TlsSettings {
        cert_pem: read("--tls-cert", cert)?,
        key_pem: read("--tls-key", key)?,
        client_ca_pem: match &args.tls_client_ca {
            Some(p) => Some(read("--tls-client-ca", p)?),
            None => None,
        },
        client_cert_optional: args.tls_client_optional,
    }))
}

/// The store of an offline command (`scrub`, `rebuild`), or its exit code.
fn open_store(args: &Args, command: &str) -> Result<stagecache_server::store::Store, ExitCode> {
    stagecache_server::store::Store::open(&args.data_dir, args.blob_store.as_deref()).map_err(|e| {
        eprintln!("stagecache-server: {command}: {e}");
        ExitCode::from(1)
    })
}

/// `stagecache-server rebuild`.
async fn rebuild(args: &Args) -> ExitCode {
    let store = match open_store(args, "rebuild") {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.rebuild(|p| eprintln!("rebuild: {p}")).await {
        Ok(r) => {
            println!("{}", serde_json::json!({ "rebuild": r }));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stagecache-server: rebuild: {e}");
            ExitCode::from(1)
        }
    }
}

/// `stagecache-server scrub`.
async fn scrub(args: &Args) -> ExitCode {
    let store = match open_store(args, "scrub") {
        Ok(s) => s,
        Err(code) => return code,
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

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, when called (at start,
/// before the port is bound), not when the future is first polled: a signal that comes as
/// soon as the server answers must stop it gracefully, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }
            (int, term) => {
                let e = int
                    .err()
                    .or(term.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(error = %e, "cannot listen for SIGINT and SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received: finishing in-flight calls");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    // object_store's cloud backends bring aws-lc-rs and ring into one binary; rustls then
    // needs one provider chosen explicitly, or its first TLS use panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let command = args.command.take();
    if let Some(Command::Token { action }) = command {
        return match token_command(args.auth_config.as_deref(), action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stagecache-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    let auth = match &args.auth_config {
        None => Authenticator::open(),
        Some(path) => match AuthConfig::load(path).and_then(|c| Authenticator::new(&c)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("stagecache-server: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let tls = match tls_settings(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stagecache-server: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line, for log collectors: timestamp, level, target, message
        // and the event's fields.
        LogFormat::Json => log.json().flatten_event(true).init(),
    }

    if let Some(Command::Scrub) = command {
        return scrub(&args).await;
    }
    if let Some(Command::Rebuild) = command {
        return rebuild(&args).await;
    }
    if auth.is_open() && !args.insecure_open {
        for (what, addr) in std::iter::once(("", Some(args.listen)))
            .chain(std::iter::once((" (web)", args.web_listen)))
        {
            if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                eprintln!(
                    "stagecache-server: refusing to serve {addr}{what} open: give --auth-config FILE, or --insecure-open to let anyone who reaches it record results, move refs and force a re-sign"
                );
                return ExitCode::from(2);
            }
        }
    }
    // Before the port is bound: a TERM from now on stops the server gracefully.
    let shutdown = shutdown_signal();
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
    config.auth = std::sync::Arc::new(auth);
    config.insecure_open = args.insecure_open;
    config.tls = tls;
    config.take_over = args.take_over;
    match serve_with_web(config, listener, web, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagecache-server: {e}");
            ExitCode::from(1)
        }
    }
}
