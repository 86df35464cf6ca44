//! The `stagecache` command line, as data: the binary parses it, and tests check that the
//! pipeline templates call only commands and flags that exist. Each command's arguments
//! and its `run` live in `command/<name>.rs`; this file holds the global options, the
//! argument groups several commands share, and the list of commands.

use crate::command;
use crate::output::Format;
use crate::Digest;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "stagecache",
    version,
    about = "Content-addressed artifact cache and stage ledger for release pipelines"
)]
pub struct Cli {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Namespace of refs (e.g. prod, test).
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Print machine-readable JSON on stdout (the same as --format json).
    #[arg(long, global = true)]
    pub json: bool,
    /// Output format of register, fetch, plan, status and claim: human, json,
    /// azure-pipelines (##vso output variables) or github-actions (appends to $GITHUB_OUTPUT).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "STAGECACHE_FORMAT",
        default_value = "human"
    )]
    pub format: Format,
    /// Transfers in flight at once.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_CONCURRENCY",
        default_value_t = 8
    )]
    pub concurrency: usize,
    /// Deadline of each unary call, in seconds.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_RPC_TIMEOUT",
        default_value_t = 300
    )]
    pub rpc_timeout: u64,
    #[command(flatten)]
    pub credentials: crate::credentials::CredentialArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// What a command reads: a ref (its manifest) or a manifest digest.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// A ref name, e.g. bar/12345.
    #[arg(long = "ref")]
    pub ref_name: Option<String>,
    /// A manifest digest, HASH/SIZE.
    #[arg(long)]
    pub manifest: Option<Digest>,
}

/// The subject of a ledger command: a ref (its manifest) or a digest.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct SubjectArgs {
    /// A ref; its manifest is the subject.
    #[arg(long = "ref")]
    pub ref_name: Option<String>,
    /// A manifest or blob digest, HASH/SIZE.
    #[arg(long)]
    pub subject: Option<Digest>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Hash DIR, upload what the server lacks, store its manifest and point --ref at it.
    /// Prints the manifest digest.
    Register(command::register::RegisterArgs),
    /// Download an asset set into --out, verifying every file.
    Fetch(command::fetch::FetchArgs),
    /// List refs, optionally only those starting with PREFIX.
    Ls(command::ls::LsArgs),
    /// Show a ref (with its history) or a manifest's entries.
    Show(command::show::ShowArgs),
    /// Upload one file as a blob; prints its digest.
    Put(command::put::PutArgs),
    /// Download one blob (HASH/SIZE) to a file, verified.
    Get(command::get::GetArgs),
    /// Record a stage attempt's status for a subject.
    Record(command::record::RecordArgs),
    /// Effective result of each stage for a subject.
    Status(command::status::StatusArgs),
    /// Every attempt and invalidation for a subject, newest first.
    History(command::history::HistoryArgs),
    /// What to run, skip or block for a stage graph on a subject.
    Plan(command::plan::PlanArgs),
    /// Take an exclusive lease on a stage (exit 0 granted, 4 held by another, 7 already
    /// succeeded); `claim renew` and `claim release` manage it.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Claim(command::claim::ClaimCommand),
    /// Counts of what the server holds.
    Stats,
    /// Keep a ref (a released build) from expiring: retention never removes it, nor what
    /// it reaches. Needs the `ref` permission on the name; audited in the ref's history.
    Pin(command::pin::PinArgs),
    /// Let a pinned ref expire again (its namespace's expiry counts from now).
    Unpin(command::pin::PinArgs),
    /// Run garbage collection on the server (admin on every namespace), or --dry-run to
    /// see what it would remove: counts, bytes, oldest and newest, per namespace.
    Gc(command::gc::GcArgs),
    /// Recent refs (builds) with time, manifest, size and file count, newest first.
    Builds(command::builds::BuildsArgs),
    /// What changed between two asset sets, each a ref or a manifest digest: files added,
    /// removed and changed, with sizes. Exit 0 whether or not they differ.
    Diff(command::diff::DiffArgs),
    /// A Mermaid flowchart of a stage graph, each stage coloured by its state for a subject.
    Graph(command::graph::GraphArgs),
    /// Make a stage's result no longer count (audited with actor and reason).
    Invalidate(command::invalidate::InvalidateArgs),
    /// Wait until a ref is set (--ref) or a stage finishes (--stage with --ref or
    /// --subject). Exit 0 on success, 8 when the stage finished unsuccessfully, 9 on timeout.
    Wait(command::wait::WaitArgs),
    /// Ask whether the server is up and serving (grpc.health.v1); exit 0 when it is,
    /// 5 when it is not (after --wait seconds, if given).
    Health(command::health::HealthArgs),
}
