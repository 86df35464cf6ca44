//! `stagecache claim --ref NAME --stage S --ttl SECONDS`: an exclusive lease on a stage, so
//! that two concurrent re-runs never both publish; `claim renew` and `claim release`.

use super::{Context, EXIT_ALREADY_SUCCEEDED, EXIT_CLAIM_HELD};
use crate::cli::SubjectArgs;
use crate::output::Report;
use crate::view::{result_json, result_line};
use crate::{ClientError, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use stagecache_proto::time::format_time;
use stagecache_proto::v1::{ClaimRequest, ReleaseClaimRequest, RenewClaimRequest};

#[derive(Args, Debug)]
pub struct ClaimCommand {
    #[command(subcommand)]
    pub action: Option<ClaimAction>,
    #[command(flatten)]
    pub args: ClaimArgs,
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

/// The claim `renew` and `release` act on: its line and the token its holder got.
#[derive(Args, Debug)]
pub struct HeldClaim {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long)]
    pub stage: String,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long, env = "STAGECACHE_CLAIM_TOKEN")]
    pub token: String,
}

#[derive(Subcommand, Debug)]
pub enum ClaimAction {
    /// Extend a claim you hold.
    Renew {
        #[command(flatten)]
        claim: HeldClaim,
        #[arg(long)]
        ttl: u32,
    },
    /// Give up a claim you hold.
    Release {
        #[command(flatten)]
        claim: HeldClaim,
    },
}

/// Who holds a claim by default: the actor and the CI run (or this process).
pub fn default_holder(actor: &str) -> String {
    for var in ["BUILD_BUILDID", "GITHUB_RUN_ID"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return format!("{actor} (run {v})");
            }
        }
    }
    format!("{actor} (pid {})", std::process::id())
}

pub async fn run(ctx: &Context, c: ClaimCommand) -> Result<u8> {
    match c.action {
        None => take(ctx, c.args).await,
        Some(ClaimAction::Renew { claim, ttl }) => {
            let subject = ctx.subject(&claim.subject).await?;
            let r = ctx
                .client
                .renew_claim(RenewClaimRequest {
                    subject: Some(subject.to_proto()),
                    stage: claim.stage,
                    target: claim.target,
                    token: claim.token,
                    ttl_seconds: ttl,
                    ..Default::default()
                })
                .await?;
            let c = r.claim.unwrap_or_default();
            if ctx.json() {
                println!(
                    "{}",
                    json!({"holder": c.holder, "expires_at": format_time(c.expires_at_ms)})
                );
            } else {
                println!("renewed until {}", format_time(c.expires_at_ms));
            }
            Ok(0)
        }
        Some(ClaimAction::Release { claim }) => {
            let subject = ctx.subject(&claim.subject).await?;
            ctx.client
                .release_claim(ReleaseClaimRequest {
                    subject: Some(subject.to_proto()),
                    stage: claim.stage,
                    target: claim.target,
                    token: claim.token,
                    ..Default::default()
                })
                .await?;
            if ctx.json() {
                println!("{}", json!({"released": true}));
            }
            Ok(0)
        }
    }
}

async fn take(ctx: &Context, args: ClaimArgs) -> Result<u8> {
    let subject_args = args
        .subject
        .ok_or_else(|| ClientError::Invalid("claim: give --ref NAME or --subject DIGEST".into()))?;
    let stage = args
        .stage
        .ok_or_else(|| ClientError::Invalid("claim: --stage is required".into()))?;
    let ttl = args
        .ttl
        .ok_or_else(|| ClientError::Invalid("claim: --ttl SECONDS is required".into()))?;
    let subject = ctx.subject(&subject_args).await?;
    let holder = args
        .holder
        .unwrap_or_else(|| default_holder(&ctx.client.config().actor));
    let r = ctx
        .client
        .claim(ClaimRequest {
            subject: Some(subject.to_proto()),
            stage: stage.clone(),
            target: args.target,
            holder,
            ttl_seconds: ttl,
            ..Default::default()
        })
        .await?;
    let claim = r.claim.unwrap_or_default();
    let mut report = Report {
        json: json!({
            "granted": r.granted,
            "holder": claim.holder,
            "token": claim.token,
            "expires_at": (claim.expires_at_ms > 0).then(|| format_time(claim.expires_at_ms)),
            "already_succeeded": r.already_succeeded.as_ref().map(result_json),
        }),
        human: if r.granted {
            claim.token.clone()
        } else {
            String::new()
        },
        vars: Vec::new(),
    };
    report.var("claim_granted", r.granted.to_string());
    report.var("claim_token", claim.token.clone());
    report.var("claim_holder", claim.holder.clone());
    report.var(
        "already_succeeded",
        r.already_succeeded.is_some().to_string(),
    );
    report.emit(ctx.format, ctx.github_output.as_deref())?;
    if r.granted {
        eprintln!(
            "claimed {stage:?} until {}",
            format_time(claim.expires_at_ms)
        );
        return Ok(0);
    }
    if let Some(done) = r.already_succeeded {
        eprintln!(
            "stagecache: {stage:?} already succeeded: {}",
            result_line(&done)
        );
        return Ok(EXIT_ALREADY_SUCCEEDED);
    }
    eprintln!(
        "stagecache: {stage:?} is claimed by {} until {}",
        claim.holder,
        format_time(claim.expires_at_ms)
    );
    Ok(EXIT_CLAIM_HELD)
}
