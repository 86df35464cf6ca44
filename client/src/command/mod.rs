//! The `stagecache` commands, one module each: its arguments and its `run`. Heavy logic
//! lives in the library beside them (`register`, `fetch`, `wait`, `view`), so that a
//! command only turns arguments into library calls and a result into output.

pub mod builds;
pub mod claim;
pub mod diff;
pub mod fetch;
pub mod gc;
pub mod get;
pub mod graph;
pub mod health;
pub mod history;
pub mod invalidate;
pub mod ls;
pub mod pin;
pub mod plan;
pub mod put;
pub mod record;
pub mod register;
pub mod show;
pub mod stats;
pub mod status;
pub mod wait;

use crate::cli::{Cli, Command, Source, SubjectArgs};
use crate::output::Format;
use crate::{Client, ClientConfig, ClientError, Digest, Result};
use std::path::PathBuf;

/// Exit codes that are outcomes rather than errors (the README lists them all).
pub const EXIT_CLAIM_HELD: u8 = 4;
pub const EXIT_UNAVAILABLE: u8 = 5;
pub const EXIT_ALREADY_SUCCEEDED: u8 = 7;
pub const EXIT_STAGE_UNSUCCESSFUL: u8 = 8;
pub const EXIT_TIMEOUT: u8 = 9;

/// What every command gets: a connected client and how to report.
pub struct Context {
    pub client: Client,
    pub format: Format,
    pub namespace: String,
    /// `$GITHUB_OUTPUT`, for `--format github-actions`.
    pub github_output: Option<PathBuf>,
}

impl Context {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Progress bars only for people (and only when stderr is a terminal).
    pub fn progress(&self) -> bool {
        self.format == Format::Human
    }

    /// The manifest a `--ref`/`--manifest` pair names.
    pub async fn resolve(&self, source: &Source) -> Result<Digest> {
        match (&source.ref_name, source.manifest) {
            (Some(r), _) => self.client.resolve_ref(r).await,
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ClientError::Invalid(
                "give --ref NAME or --manifest DIGEST".into(),
            )),
        }
    }

    /// The subject a `--ref`/`--subject` pair names.
    pub async fn subject(&self, s: &SubjectArgs) -> Result<Digest> {
        match (&s.ref_name, s.subject) {
            (Some(r), _) => self.client.resolve_ref(r).await,
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ClientError::Invalid(
                "give --ref NAME or --subject DIGEST".into(),
            )),
        }
    }
}

/// The client configuration the global options describe.
pub async fn client_config(cli: &Cli) -> Result<ClientConfig> {
    let mut config = ClientConfig::new(cli.server.clone(), &cli.namespace)?;
    config.concurrency = cli.concurrency.max(1);
    config.request_timeout = std::time::Duration::from_secs(cli.rpc_timeout.max(1));
    config.tls = cli.credentials.tls()?;
    config.token = cli.credentials.token().await?;
    Ok(config)
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let config = client_config(&cli).await?;
    let format = if cli.json { Format::Json } else { cli.format };
    let namespace = cli.namespace.clone();
    let connect = || async {
        Ok::<_, ClientError>(Context {
            client: Client::connect(config.clone()).await?,
            format,
            namespace: namespace.clone(),
            github_output: std::env::var_os("GITHUB_OUTPUT").map(PathBuf::from),
        })
    };
    match cli.command {
        // Health connects on its own terms: it reports a server that is down rather
        // than retrying against it.
        Command::Health(a) => health::run(config.clone(), format, a).await,
        Command::Register(a) => register::run(&connect().await?, a).await,
        Command::Fetch(a) => fetch::run(&connect().await?, a).await,
        Command::Ls(a) => ls::run(&connect().await?, a).await,
        Command::Show(a) => show::run(&connect().await?, a).await,
        Command::Put(a) => put::run(&connect().await?, a).await,
        Command::Get(a) => get::run(&connect().await?, a).await,
        Command::Record(a) => record::run(&connect().await?, a).await,
        Command::Status(a) => status::run(&connect().await?, a).await,
        Command::History(a) => history::run(&connect().await?, a).await,
        Command::Plan(a) => plan::run(&connect().await?, a).await,
        Command::Claim(a) => claim::run(&connect().await?, a).await,
        Command::Stats => stats::run(&connect().await?).await,
        Command::Pin(a) => pin::run(&connect().await?, a, true).await,
        Command::Unpin(a) => pin::run(&connect().await?, a, false).await,
        Command::Gc(a) => gc::run(&connect().await?, a).await,
        Command::Builds(a) => builds::run(&connect().await?, a).await,
        Command::Diff(a) => diff::run(&connect().await?, a).await,
        Command::Graph(a) => graph::run(&connect().await?, a).await,
        Command::Invalidate(a) => invalidate::run(&connect().await?, a).await,
        Command::Wait(a) => wait::run(&connect().await?, a).await,
    }
}
