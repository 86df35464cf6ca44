//! `stagecache`: the command pipeline steps and people use to register, fetch and inspect
//! asset sets. Errors are one line on stderr and an exit code documented in the README.

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use stagecache_client::{Client, ClientConfig, ClientError, Digest, FetchOptions, RegisterOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "stagecache",
    version,
    about = "Content-addressed artifact cache and stage ledger for release pipelines"
)]
struct Cli {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Namespace of refs (e.g. prod, test).
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Transfers in flight at once.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_CONCURRENCY",
        default_value_t = 8
    )]
    concurrency: usize,
    /// Deadline of each unary call, in seconds.
    #[arg(long, global = true, env = "STAGECACHE_TIMEOUT", default_value_t = 300)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Source {
    /// A ref name, e.g. bar/12345.
    #[arg(long = "ref")]
    ref_name: Option<String>,
    /// A manifest digest, HASH/SIZE.
    #[arg(long)]
    manifest: Option<Digest>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hash DIR, upload what the server lacks, store its manifest and point --ref at it.
    /// Prints the manifest digest.
    Register {
        dir: PathBuf,
        #[arg(long = "ref")]
        ref_name: String,
        /// Fail (exit 4) unless the ref does not exist yet.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        /// Fail (exit 4) unless the ref currently points at this manifest digest.
        #[arg(long)]
        expect: Option<Digest>,
        /// Why, kept in the ref's history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Download an asset set into --out, verifying every file.
    Fetch {
        #[command(flatten)]
        source: Source,
        #[arg(long)]
        out: PathBuf,
    },
    /// List refs, optionally only those starting with PREFIX.
    Ls {
        prefix: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show a ref (with its history) or a manifest's entries.
    Show {
        #[command(flatten)]
        source: Source,
    },
    /// Upload one file as a blob; prints its digest.
    Put { file: PathBuf },
    /// Download one blob (HASH/SIZE) to a file, verified.
    Get {
        digest: Digest,
        #[arg(long)]
        out: PathBuf,
    },
}

fn fmt_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn digest_of(d: &Option<stagecache_proto::v1::Digest>) -> String {
    d.as_ref()
        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_else(|| "-".into())
}

async fn resolve(client: &Client, source: &Source) -> Result<Digest, ClientError> {
    match (&source.ref_name, source.manifest) {
        (Some(r), _) => client.resolve_ref(r).await,
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ClientError::Invalid(
            "give --ref NAME or --manifest DIGEST".into(),
        )),
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let mut config = ClientConfig::new(cli.server.clone(), &cli.namespace)?;
    config.concurrency = cli.concurrency.max(1);
    config.request_timeout = std::time::Duration::from_secs(cli.timeout.max(1));
    let client = Client::connect(config).await?;
    let progress = !cli.json;
    match cli.command {
        Command::Register {
            dir,
            ref_name,
            expect_absent,
            expect,
            reason,
        } => {
            let opts = RegisterOptions {
                progress,
                expect: if expect_absent {
                    Some(None)
                } else {
                    expect.map(Some)
                },
                reason,
            };
            let r = client.register(&dir, &ref_name, &opts).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                eprintln!(
                    "registered {} files ({} bytes; uploaded {} files, {} bytes) as {} in namespace {}",
                    r.files, r.bytes, r.uploaded_files, r.uploaded_bytes, ref_name, cli.namespace
                );
                println!("{}", r.manifest);
            }
        }
        Command::Fetch { source, out } => {
            let digest = resolve(&client, &source).await?;
            let r = client
                .fetch(digest, &out, &FetchOptions { progress })
                .await?;
            if cli.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "fetched {} files ({} bytes) into {}: {} downloaded ({} bytes), {} already present",
                    r.files,
                    r.bytes,
                    out.display(),
                    r.downloaded_files,
                    r.downloaded_bytes,
                    r.skipped_files
                );
            }
        }
        Command::Ls { prefix, limit } => {
            let refs = client
                .list_refs(prefix.as_deref().unwrap_or(""), limit)
                .await?;
            if cli.json {
                let rows: Vec<_> = refs
                    .iter()
                    .map(|r| json!({"name": r.name, "manifest": digest_of(&r.target), "version": r.version, "updated_at": fmt_time(r.updated_at_ms), "actor": r.actor}))
                    .collect();
                println!("{}", json!({ "refs": rows }));
            } else {
                for r in refs {
                    println!(
                        "{}\t{}\t{}\t{}",
                        r.name,
                        digest_of(&r.target),
                        fmt_time(r.updated_at_ms),
                        r.actor
                    );
                }
            }
        }
        Command::Show { source } => {
            let digest = resolve(&client, &source).await?;
            let manifest = client.get_manifest(digest).await?;
            let history = match &source.ref_name {
                Some(r) => client.ref_history(r, 20).await?,
                None => Vec::new(),
            };
            if cli.json {
                let entries: Vec<_> = manifest
                    .entries()
                    .iter()
                    .map(|e| json!({"path": e.path, "digest": e.digest.to_string(), "size": e.digest.size(), "executable": e.executable}))
                    .collect();
                let changes: Vec<_> = history
                    .iter()
                    .map(|c| json!({"version": c.version, "from": c.old_target.as_ref().map(|_| digest_of(&c.old_target)), "to": digest_of(&c.new_target), "at": fmt_time(c.changed_at_ms), "actor": c.actor, "reason": c.reason}))
                    .collect();
                println!(
                    "{}",
                    json!({"manifest": digest.to_string(), "files": manifest.entries().len(), "bytes": manifest.total_bytes(), "entries": entries, "ref": source.ref_name, "history": changes})
                );
            } else {
                if let Some(r) = &source.ref_name {
                    println!("ref {r} -> {digest}");
                    for c in &history {
                        println!(
                            "  v{} {} by {}{}{}",
                            c.version,
                            fmt_time(c.changed_at_ms),
                            c.actor,
                            if c.reason.is_empty() { "" } else { ": " },
                            c.reason
                        );
                    }
                }
                println!(
                    "manifest {digest}: {} files, {} bytes",
                    manifest.entries().len(),
                    manifest.total_bytes()
                );
                for e in manifest.entries() {
                    println!(
                        "{}\t{:>12}\t{}\t{}",
                        if e.executable { "x" } else { "-" },
                        e.digest.size(),
                        e.digest.hash_hex(),
                        e.path
                    );
                }
            }
        }
        Command::Put { file } => {
            let f = file.clone();
            let digest = tokio::task::spawn_blocking(move || {
                let size = std::fs::metadata(&f)
                    .map_err(|e| ClientError::Io {
                        path: f.clone(),
                        source: e,
                    })?
                    .len();
                stagecache_client::tree::hash_file(&f, size)
            })
            .await
            .map_err(|e| ClientError::Invalid(format!("hashing task failed: {e}")))??;
            let bar = stagecache_client::progress::bytes_bar(progress, digest.size(), "upload");
            let already = client.upload_file(&file, digest, &bar).await?;
            bar.finish_and_clear();
            if cli.json {
                println!(
                    "{}",
                    json!({"digest": digest.to_string(), "already_present": already})
                );
            } else {
                println!("{digest}");
            }
        }
        Command::Get { digest, out } => {
            let entry = stagecache_client::ManifestEntry {
                path: out
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        ClientError::Invalid(format!("--out {}: not a file path", out.display()))
                    })?,
                digest,
                executable: false,
            };
            let dir = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let manifest = stagecache_client::Manifest::from_entries(vec![entry])?;
            let r = client
                .fetch_manifest(&manifest, &dir, &FetchOptions { progress })
                .await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"digest": digest.to_string(), "out": out, "downloaded": r.downloaded_files == 1})
                );
            } else {
                println!("{} -> {}", digest, out.display());
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGECACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("stagecache: error: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}
