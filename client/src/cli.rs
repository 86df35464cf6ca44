//! The `stagecache` command line, as data: the binary parses it, and tests check that the
//! pipeline templates call only commands and flags that exist.

use crate::output::Format;
use crate::Digest;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    #[command(subcommand)]
    pub command: Command,
}

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

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum StatusArg {
    Started,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Args, Debug)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub subject: Option<SubjectArgs>,
    #[arg(long)]
    pub stage: Option<String>,
    #[arg(long, default_value = "")]
    pub target: String,
    /// Lease length in seconds.
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Who claims (default: STAGECACHE_HOLDER, else the actor and the CI run id).
    #[arg(long, env = "STAGECACHE_HOLDER")]
    pub holder: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClaimAction {
    /// Extend a claim you hold.
    Renew {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        stage: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, env = "STAGECACHE_CLAIM_TOKEN")]
        token: String,
        #[arg(long)]
        ttl: u32,
    },
    /// Give up a claim you hold.
    Release {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        stage: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, env = "STAGECACHE_CLAIM_TOKEN")]
        token: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Record a stage attempt's status for a subject.
    Record {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        stage: String,
        #[arg(long, value_enum)]
        status: StatusArg,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value = "")]
        fingerprint: String,
        #[arg(long, env = "STAGECACHE_BAR_BUILD_ID", default_value = "")]
        bar_build_id: String,
        #[arg(long, env = "STAGECACHE_BUILD_ID", default_value = "")]
        build_id: String,
        /// Attempt number (default: a new attempt for started, else the running one).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        #[arg(long, env = "STAGECACHE_RUN_URL", default_value = "")]
        run_url: String,
        /// Outputs manifest, e.g. the signed set produced from this (unsigned) subject.
        #[arg(long)]
        outputs: Option<Digest>,
        /// Token of the claim held on this stage.
        #[arg(long, env = "STAGECACHE_CLAIM_TOKEN", default_value = "")]
        claim_token: String,
    },
    /// Effective result of each stage for a subject.
    Status {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long, default_value = "")]
        stage: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value = "")]
        fingerprint: String,
        /// Show every stage of this graph file as a table (state, attempt, build, duration).
        #[arg(long, conflicts_with = "stage")]
        stages: Option<PathBuf>,
    },
    /// Every attempt and invalidation for a subject, newest first.
    History {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long, default_value = "")]
        stage: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// What to run, skip or block for a stage graph on a subject.
    Plan {
        #[command(flatten)]
        subject: SubjectArgs,
        /// Stage graph YAML file.
        #[arg(long)]
        stages: PathBuf,
        /// Only these stages (comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "skip"])]
        only: Vec<String>,
        /// This stage and everything downstream of it.
        #[arg(long, conflicts_with = "skip")]
        from: Option<String>,
        /// All stages but these (comma-separated).
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        /// Run this stage even if it succeeded (repeatable). Its dependents are not forced.
        #[arg(long)]
        force: Vec<String>,
        /// Invalidate the signing stage named in the stage file (audited) and force it.
        #[arg(long)]
        force_resign: bool,
        /// Why, for --force-resign's audit record.
        #[arg(long, default_value = "forced re-sign requested")]
        reason: String,
    },
    /// Take an exclusive lease on a stage (exit 0 granted, 4 held by another, 7 already
    /// succeeded); `claim renew` and `claim release` manage it.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Claim {
        #[command(subcommand)]
        action: Option<ClaimAction>,
        #[command(flatten)]
        args: ClaimArgs,
    },
    /// Counts of what the server holds.
    Stats,
    /// Recent refs (builds) with time, manifest, size and file count, newest first.
    Builds {
        /// Only refs starting with this prefix, e.g. bar/.
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A Mermaid flowchart of a stage graph, each stage coloured by its state for a subject.
    Graph {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        stages: PathBuf,
    },
    /// Make a stage's result no longer count (audited with actor and reason).
    Invalidate {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        stage: String,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long)]
        reason: String,
    },
    /// Wait until a ref is set (--ref) or a stage finishes (--stage with --ref or
    /// --subject). Exit 0 on success, 8 when the stage finished unsuccessfully, 9 on timeout.
    Wait {
        #[arg(long = "ref")]
        ref_name: Option<String>,
        #[arg(long)]
        subject: Option<Digest>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long)]
        timeout: u64,
    },
}
