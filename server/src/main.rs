//! `stagecache-server`: runs the service on its embedded defaults (RocksDB and a local
//! blob store under `./stagecache-data`, listening on 127.0.0.1:50051).

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use stagecache_server::auth::{AuthConfig, Authenticator};
use stagecache_server::config::{parse_duration, FileConfig, RetentionFile, ScrubFile, TlsFile};
use stagecache_server::store::space::parse_size;
use stagecache_server::{serve_listeners, Listeners, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Content-addressed artifact cache and stage ledger for split release pipelines.
#[derive(Parser, Debug)]
#[command(name = "stagecache-server", version)]
struct Args {
    /// A configuration file (TOML; see deploy/stagecache.example.toml) with any of these
    /// settings: a flag beats its environment variable, which beats the file.
    #[arg(long, env = "STAGECACHE_CONFIG", global = true)]
    config: Option<PathBuf>,
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
    /// Address of the metrics port: Prometheus text at /metrics, a JSON summary at
    /// /status (e.g. 127.0.0.1:9090; bind it where only your monitoring reaches). Off
    /// unless given.
    #[arg(long, env = "STAGECACHE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
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
    /// Let fetches download blobs straight from the blob store with short-lived signed
    /// URLs (Azure SAS, S3 presigned, GCS signed), keeping this server out of the byte
    /// path; every byte is still verified by the client. A local blob store cannot sign:
    /// fetches then stream through the server.
    #[arg(long, env = "STAGECACHE_DIRECT_DOWNLOADS")]
    direct_downloads: bool,
    /// How long a signed URL is valid: `1h`, `30m` or seconds. A download that outlives it
    /// goes on through the server.
    #[arg(long, env = "STAGECACHE_DIRECT_DOWNLOAD_TTL", default_value = "1h", value_parser = parse_ttl)]
    direct_download_ttl: i64,
    /// Refuse uploads (RESOURCE_EXHAUSTED) once the blobs stored would pass this size,
    /// e.g. `500GiB`, `2TB`. Reads, refs and the ledger go on. No cap unless given.
    #[arg(long, env = "STAGECACHE_MAX_BYTES", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Refuse uploads that would leave less than this free on the data dir's file system
    /// (and a local blob store's), keeping room for the index: e.g. `1GiB`, `0` for no
    /// minimum.
    #[arg(long, env = "STAGECACHE_MIN_FREE_SPACE", default_value = "1GiB", value_parser = parse_size)]
    min_free_space: u64,
    /// Collect garbage this often (`1h`, `30m`): expire refs past their namespace's
    /// `--ref-expiry`, then remove what nothing live reaches. Without it a collection runs
    /// when asked (`stagecache gc`) or when an upload is refused for room.
    #[arg(long, env = "STAGECACHE_GC_INTERVAL", value_parser = parse_duration)]
    gc_interval: Option<i64>,
    /// A collection keeps anything uploaded (or reported present to a register) this
    /// recently, whatever reaches it: longer than your longest register.
    #[arg(long, env = "STAGECACHE_GC_GRACE", default_value = "24h", value_parser = parse_duration)]
    gc_grace: i64,
    /// `PATTERN=DURATION`, repeatable: refs of the namespaces matching PATTERN (`test*`,
    /// `prod`, `*`) expire this long after their last change unless pinned
    /// (`stagecache pin`); first match wins; `never` keeps them. No expiry unless given.
    #[arg(long = "ref-expiry", value_parser = stagecache_server::store::gc::Retention::parse_expiry)]
    ref_expiry: Vec<(String, Option<i64>)>,
    /// Re-hash every stored blob this often (`7d`, `24h`), quarantining damaged ones and
    /// marking the manifests that name them, as `stagecache-server scrub` does offline.
    /// No periodic scrub unless given.
    #[arg(long, env = "STAGECACHE_SCRUB_INTERVAL", value_parser = parse_duration)]
    scrub_interval: Option<i64>,
    /// The most a periodic scrub reads a second (`50MiB`), beside the server's own reads.
    #[arg(long, env = "STAGECACHE_SCRUB_RATE", default_value = "50MiB", value_parser = parse_size)]
    scrub_rate: u64,
    /// A directory for a local read-through tier in front of a cloud --blob-store: blobs the
    /// store served (verified) are kept there, up to --local-tier-max-bytes, and read from
    /// there next time. The cloud store stays the system of record; the tier may be lost.
    #[arg(long, env = "STAGECACHE_LOCAL_TIER")]
    local_tier: Option<PathBuf>,
    /// The most the local tier holds (`100GiB`); the least recently read blobs leave first.
    #[arg(long, env = "STAGECACHE_LOCAL_TIER_MAX_BYTES", default_value = "100GiB", value_parser = parse_size)]
    local_tier_max_bytes: u64,
    /// The most the ledger heads cache holds (`64MiB`): each subject's heads lately read
    /// by status and plan, kept as stored so a hot subject skips RocksDB; 0 turns it off.
    #[arg(long, env = "STAGECACHE_LEDGER_CACHE", default_value = "64MiB", value_parser = parse_size)]
    ledger_cache: u64,
    /// Blobs of at least this size bypass the page cache of a local blob store: written
    /// and read with O_DIRECT, straight between the disk and the server's buffers
    /// [default: 8MiB with a local blob store; 0: none]. Smaller blobs, hot and
    /// many, stay in the page cache. Refused (unless 0) with a cloud blob store.
    #[arg(long, env = "STAGECACHE_DIRECT_IO", value_parser = parse_size)]
    direct_io: Option<u64>,
    /// Serve reads without hashing them: damaged bytes are served. Only for `bench/run`'s
    /// same-run measure of what verified reads cost; hidden from --help.
    #[arg(long, hide = true)]
    unverified_reads: bool,
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
    /// Check a configuration file, or print the configuration in effect.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Mint tokens with the key in --auth-config.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Check FILE: its keys and values, and that the auth configuration and TLS files it
    /// names can be read. Exit 0, or 2 with what is wrong.
    Check { file: PathBuf },
    /// Print the configuration the server would run with (flags, environment and
    /// --config merged) as TOML, cloud credentials redacted.
    Print,
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

/// Fills every setting that neither a flag nor its environment variable gave from the
/// configuration file.
fn apply_file(args: &mut Args, m: &clap::ArgMatches, f: &FileConfig) {
    use clap::parser::ValueSource;
    let unset = |id: &str| {
        !matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! take {
        ($field:ident) => {
            if unset(stringify!($field)) {
                if let Some(v) = f.$field.clone() {
                    args.$field = v;
                }
            }
        };
    }
    macro_rules! take_some {
        ($field:ident) => {
            if unset(stringify!($field)) {
                if let Some(v) = f.$field.clone() {
                    args.$field = Some(v);
                }
            }
        };
    }
    // A size key (`64MiB`), already validated when the file was parsed.
    macro_rules! take_size {
        ($field:ident) => {
            if unset(stringify!($field)) {
                if let Some(v) = f.$field.as_deref().and_then(|v| parse_size(v).ok()) {
                    args.$field = v.into();
                }
            }
        };
    }
    take!(data_dir);
    take!(listen);
    take!(log);
    take!(insecure_open);
    take!(take_over);
    take!(direct_downloads);
    take_size!(max_bytes);
    take_size!(min_free_space);
    if unset("direct_download_ttl") {
        if let Some(t) = &f.direct_download_ttl {
            if let Ok(s) = parse_ttl(t) {
                args.direct_download_ttl = s;
            }
        }
    }
    take_some!(local_tier);
    take_size!(local_tier_max_bytes);
    take_size!(direct_io);
    take_size!(ledger_cache);
    if let Some(sc) = &f.scrub {
        if unset("scrub_interval") {
            if let Some(v) = sc.interval.as_deref().and_then(|v| parse_duration(v).ok()) {
                args.scrub_interval = Some(v);
            }
        }
        if unset("scrub_rate") {
            if let Some(v) = sc.rate.as_deref().and_then(|v| parse_size(v).ok()) {
                args.scrub_rate = v;
            }
        }
    }
    if let Some(r) = &f.retention {
        if unset("gc_interval") {
            if let Some(v) = r
                .gc_interval
                .as_deref()
                .and_then(|v| parse_duration(v).ok())
            {
                args.gc_interval = Some(v);
            }
        }
        if unset("gc_grace") {
            if let Some(v) = r.grace.as_deref().and_then(|v| parse_duration(v).ok()) {
                args.gc_grace = v;
            }
        }
        if unset("ref_expiry") {
            args.ref_expiry = r
                .ref_expiry
                .iter()
                .filter_map(|e| stagecache_server::store::gc::Retention::parse_expiry(e).ok())
                .collect();
        }
    }
    take_some!(blob_store);
    take_some!(web_listen);
    take_some!(web_stage_files);
    take_some!(metrics_listen);
    take_some!(auth_config);
    if unset("log_format") {
        match f.log_format.as_deref() {
            Some("json") => args.log_format = LogFormat::Json,
            Some("text") => args.log_format = LogFormat::Text,
            _ => {}
        }
    }
    if let Some(tls) = &f.tls {
        for (id, from, to) in [
            ("tls_cert", &tls.cert, &mut args.tls_cert),
            ("tls_key", &tls.key, &mut args.tls_key),
            ("tls_client_ca", &tls.client_ca, &mut args.tls_client_ca),
        ] {
            if unset(id) && from.is_some() {
                *to = from.clone();
            }
        }
        if unset("tls_client_optional") {
            if let Some(b) = tls.client_optional {
                args.tls_client_optional = b;
            }
        }
    }
}

/// The configuration in effect, as the file would say it.
fn effective(args: &Args, file: &FileConfig) -> FileConfig {
    FileConfig {
        data_dir: Some(args.data_dir.clone()),
        listen: Some(args.listen),
        blob_store: args.blob_store.clone(),
        blob_store_options: file.blob_store_options.clone(),
        web_listen: args.web_listen,
        web_stage_files: args.web_stage_files.clone(),
        metrics_listen: args.metrics_listen,
        log: Some(args.log.clone()),
        log_format: Some(
            match args.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }
            .into(),
        ),
        auth_config: args.auth_config.clone(),
        insecure_open: Some(args.insecure_open),
        take_over: Some(args.take_over),
        direct_downloads: Some(args.direct_downloads),
        direct_download_ttl: Some(format!("{}s", args.direct_download_ttl)),
        max_bytes: args.max_bytes.map(|b| b.to_string()),
        min_free_space: Some(args.min_free_space.to_string()),
        retention: Some(RetentionFile {
            grace: Some(format!("{}s", args.gc_grace)),
            gc_interval: args.gc_interval.map(|s| format!("{s}s")),
            ref_expiry: args
                .ref_expiry
                .iter()
                .map(|(p, e)| match e {
                    Some(ms) => format!("{p}={}s", ms / 1000),
                    None => format!("{p}=never"),
                })
                .collect(),
        }),
        local_tier: args.local_tier.clone(),
        local_tier_max_bytes: Some(args.local_tier_max_bytes.to_string()),
        ledger_cache: Some(args.ledger_cache.to_string()),
        direct_io: args.direct_io.map(|v| v.to_string()),
        scrub: Some(ScrubFile {
            interval: args.scrub_interval.map(|s| format!("{s}s")),
            rate: Some(args.scrub_rate.to_string()),
        }),
        tls: args.tls_cert.as_ref().map(|_| TlsFile {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
            client_optional: Some(args.tls_client_optional),
        }),
    }
}

/// `config check FILE`: the file, and the files it names.
fn config_check(path: &std::path::Path) -> Result<(), String> {
    let f = FileConfig::load(path)?;
    let at = |key: &str, p: &std::path::Path| {
        format!("--config {}: {key} {}", path.display(), p.display())
    };
    if let Some(auth) = &f.auth_config {
        AuthConfig::load(auth)
            .and_then(|c| Authenticator::new(&c).map(|_| ()))
            .map_err(|e| format!("{}: {e}", at("auth_config", auth)))?;
    }
    if let Some(tls) = &f.tls {
        for (key, p) in [
            ("cert", &tls.cert),
            ("key", &tls.key),
            ("client_ca", &tls.client_ca),
        ] {
            if let Some(p) = p {
                std::fs::metadata(p)
                    .map_err(|e| format!("{}: {e}", at(&format!("[tls] {key}"), p)))?;
            }
        }
    }
    if let Some(url) = &f.blob_store {
        url::Url::parse(url)
            .map_err(|e| format!("--config {}: blob_store {url:?}: {e}", path.display()))?;
    }
    if f.insecure_open != Some(true) && f.auth_config.is_none() {
        for (key, addr) in [("listen", f.listen), ("web_listen", f.web_listen)] {
            if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                return Err(format!(
                    "--config {}: {key} {a} is not loopback: give auth_config (or insecure_open = true)",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

/// A signed URL's lifetime: S3 and GCS refuse more than 7 days.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let secs = parse_duration(s)?;
    if secs > 7 * 86_400 {
        return Err(format!(
            "{s:?}: at most 7d (S3 and GCS refuse signed URLs valid longer)"
        ));
    }
    Ok(secs)
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
    let lifetime = parse_duration(&expires).map_err(|e| format!("--expires {e}"))?;
    let claims = minter.claims(&subject, grants, now, lifetime);
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
fn open_store(
    args: &Args,
    blob_options: &[(String, String)],
    command: &str,
) -> Result<stagecache_server::store::Store, ExitCode> {
    let store = stagecache_server::store::Store::open_configured(
        &args.data_dir,
        args.blob_store.as_deref(),
        blob_options,
    );
    // Read as the server reads: a scrub of a large store leaves the page cache alone.
    store
        .and_then(|s| s.set_direct_io(args.direct_io).map(|()| s))
        .map_err(|e| {
            eprintln!("stagecache-server: {command}: {e}");
            ExitCode::from(1)
        })
}

/// `stagecache-server rebuild`.
async fn rebuild(args: &Args, blob_options: &[(String, String)]) -> ExitCode {
    let store = match open_store(args, blob_options, "rebuild") {
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
async fn scrub(args: &Args, blob_options: &[(String, String)]) -> ExitCode {
    let store = match open_store(args, blob_options, "scrub") {
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
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let file = match &args.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("stagecache-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => FileConfig::default(),
    };
    apply_file(&mut args, &matches, &file);
    let blob_options: Vec<(String, String)> = file
        .blob_store_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // object_store's cloud backends bring aws-lc-rs and ring into one binary; rustls then
    // needs one provider chosen explicitly, or its first TLS use panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let command = args.command.take();
    match &command {
        Some(Command::Config {
            action: ConfigAction::Check { file: path },
        }) => {
            return match config_check(path) {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stagecache-server: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Config {
            action: ConfigAction::Print,
        }) => {
            print!("{}", effective(&args, &file).to_redacted_toml());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
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
        return scrub(&args, &blob_options).await;
    }
    if let Some(Command::Rebuild) = command {
        return rebuild(&args, &blob_options).await;
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
    // One more line on stdout per extra port, after the gRPC one: its bound address.
    let mut extra = Vec::new();
    for (what, addr) in [("web", args.web_listen), ("metrics", args.metrics_listen)] {
        let Some(addr) = addr else {
            extra.push(None);
            continue;
        };
        let l = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("stagecache-server: cannot listen on {addr} ({what}): {e}");
                return ExitCode::from(2);
            }
        };
        match l.local_addr() {
            Ok(a) => println!("stagecache-server {what} on {a}"),
            Err(e) => {
                eprintln!("stagecache-server: cannot read the {what} address: {e}");
                return ExitCode::from(2);
            }
        }
        extra.push(Some(l));
    }
    let metrics = extra.pop().flatten();
    let web = extra.pop().flatten();
    let mut config = ServerConfig::new(args.data_dir);
    config.blob_store = args.blob_store;
    config.blob_store_options = blob_options;
    config.web_stage_files = args.web_stage_files.or_else(|| {
        let default = PathBuf::from("deploy/pipelines");
        default.is_dir().then_some(default)
    });
    config.auth = std::sync::Arc::new(auth);
    config.insecure_open = args.insecure_open;
    config.tls = tls;
    config.take_over = args.take_over;
    config.max_bytes = args.max_bytes;
    config.min_free_space = args.min_free_space;
    config.retention = stagecache_server::store::gc::Retention {
        grace_ms: args.gc_grace.saturating_mul(1000),
        ref_expiry: args.ref_expiry,
    };
    config.unverified_reads = args.unverified_reads;
    config.gc_interval = args
        .gc_interval
        .filter(|s| *s > 0)
        .map(|s| std::time::Duration::from_secs(s as u64));
    config.scrub_interval = args
        .scrub_interval
        .filter(|s| *s > 0)
        .map(|s| std::time::Duration::from_secs(s as u64));
    config.scrub_rate = args.scrub_rate;
    config.ledger_cache_bytes = args.ledger_cache;
    config.direct_io = args.direct_io;
    config.local_tier = args
        .local_tier
        .clone()
        .map(|dir| (dir, args.local_tier_max_bytes));
    config.direct_downloads = args
        .direct_downloads
        .then(|| std::time::Duration::from_secs(args.direct_download_ttl as u64));
    let listeners = Listeners {
        grpc: listener,
        web,
        metrics,
    };
    match serve_listeners(config, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagecache-server: {e}");
            ExitCode::from(1)
        }
    }
}
