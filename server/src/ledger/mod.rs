//! The stage ledger's rules: status transitions, invalidation, claims (this file and
//! `claims.rs`) and plans (`plan.rs`). Plain functions over a ledger transaction, so tests
//! call them without a server; the gRPC layer only decodes and maps errors.

pub mod claims;
pub mod plan;

use crate::error::{Result, ServerError};
use crate::store::index::record_digest;
use crate::store::ledger::{LedgerTxn, StageKey};
use stagecache_proto::records::StageResultRecord;
use stagecache_proto::v1::{StageResult, StageStatus};
use stagecache_proto::Digest;

/// Longest free-text field (build ids, URLs, actors, fingerprints), in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;

/// Checks a free-text field of the ledger: bounded, no control characters.
pub fn validate_text(field: &str, value: &str) -> Result<()> {
    Ok(stagecache_proto::names::validate_text(
        field,
        value,
        MAX_TEXT_BYTES,
    )?)
}

pub fn status_of(r: &StageResultRecord) -> StageStatus {
    StageStatus::try_from(r.status).unwrap_or(StageStatus::Unspecified)
}

pub fn is_final(s: StageStatus) -> bool {
    matches!(
        s,
        StageStatus::Succeeded | StageStatus::Failed | StageStatus::Cancelled
    )
}

fn status_word(s: StageStatus) -> &'static str {
    s.word()
}

/// Whether a head counts as this stage's effective success (for `fingerprint`, when
/// one is given).
pub fn effective_success(head: &StageResultRecord, fingerprint: &str) -> bool {
    status_of(head) == StageStatus::Succeeded
        && (fingerprint.is_empty() || head.fingerprint == fingerprint)
}

/// "in attempt 2 at 2026-01-01T00:00:00Z (BAR build 12345, build 678)".
pub fn describe(r: &StageResultRecord) -> String {
    let at = if r.finished_at_ms > 0 {
        r.finished_at_ms
    } else {
        r.started_at_ms
    };
    // One buffer, no format!: a plan describes every stage of the graph on every call.
    let mut s = String::with_capacity(64 + r.bar_build_id.len() + r.build_id.len());
    {
        use std::fmt::Write;
        let _ = write!(s, "in attempt {} at ", r.attempt);
    }
    stagecache_proto::time::push_time(&mut s, at);
    match (r.bar_build_id.is_empty(), r.build_id.is_empty()) {
        (true, true) => {}
        (false, true) => {
            s.push_str(" (BAR build ");
            s.push_str(&r.bar_build_id);
            s.push(')');
        }
        (true, false) => {
            s.push_str(" (build ");
            s.push_str(&r.build_id);
            s.push(')');
        }
        (false, false) => {
            s.push_str(" (BAR build ");
            s.push_str(&r.bar_build_id);
            s.push_str(", build ");
            s.push_str(&r.build_id);
            s.push(')');
        }
    }
    s
}

/// What a non-success head means, in a few words.
pub fn describe_other(r: &StageResultRecord, fingerprint: &str) -> String {
    let st = status_of(r);
    if st == StageStatus::Succeeded {
        return format!(
            "succeeded {} under fingerprint {}, not {}",
            describe(r),
            stagecache_proto::quote(&r.fingerprint),
            stagecache_proto::quote(fingerprint)
        );
    }
    if st == StageStatus::Invalidated {
        return format!(
            "its result was invalidated by {} at {}: {}",
            r.actor,
            format_time(r.finished_at_ms),
            r.reason
        );
    }
    format!("last {} {}", status_word(st), describe(r))
}

pub use stagecache_proto::time::format_time;

pub fn to_proto(r: &StageResultRecord) -> Result<StageResult> {
    into_proto(r.clone())
}

/// [`to_proto`] of a record no longer needed: its strings move into the answer instead of
/// being copied (Status and Plan answer a subject's every line from records read for the
/// call).
pub fn into_proto(r: StageResultRecord) -> Result<StageResult> {
    Ok(StageResult {
        subject: Some(record_digest(&r.subject_hash, r.subject_size)?.to_proto()),
        stage: r.stage,
        target: r.target,
        fingerprint: r.fingerprint,
        status: r.status,
        bar_build_id: r.bar_build_id,
        build_id: r.build_id,
        attempt: r.attempt,
        run_url: r.run_url,
        actor: r.actor,
        outputs: if r.outputs_hash.is_empty() {
            None
        } else {
            Some(record_digest(&r.outputs_hash, r.outputs_size)?.to_proto())
        },
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        seq: r.seq,
        reason: r.reason,
        identity: r.identity,
    })
}

/// A validated request to record one attempt's status.
#[derive(Debug, Clone)]
pub struct RecordInput {
    pub key: StageKey,
    pub fingerprint: String,
    pub status: StageStatus,
    pub bar_build_id: String,
    pub build_id: String,
    pub attempt: u32,
    pub run_url: String,
    /// Who the client says acted ("on behalf of").
    pub actor: String,
    /// The authenticated identity recording it.
    pub identity: String,
    pub outputs: Option<Digest>,
    pub claim_token: String,
}

fn line(key: &StageKey) -> String {
    let mut s = format!("stage {:?}", key.stage);
    if !key.target.is_empty() {
        s.push_str(&format!(" (target {:?})", key.target));
    }
    s.push_str(&format!(
        " on {} in namespace {}",
        key.subject, key.namespace
    ));
    s
}

/// Applies one record: checks the attempt and transition, the claim, and appends.
pub fn record(txn: &mut LedgerTxn, input: &RecordInput, now_ms: i64) -> Result<StageResultRecord> {
    let key = &input.key;
    if !matches!(
        input.status,
        StageStatus::Started
            | StageStatus::Succeeded
            | StageStatus::Failed
            | StageStatus::Cancelled
    ) {
        return Err(ServerError::InvalidArgument(format!(
            "status: {:?} cannot be recorded; use started, succeeded, failed or cancelled",
            status_word(input.status)
        )));
    }
    let head = txn.head(key)?;
    let last_attempt = head.as_ref().map_or(0, |h| h.attempt);
    let head_running = head
        .as_ref()
        .is_some_and(|h| status_of(h) == StageStatus::Started);
    let attempt = match input.attempt {
        0 if input.status == StageStatus::Started || !head_running => last_attempt + 1,
        0 => last_attempt,
        n => n,
    };
    let mut started_at_ms = now_ms;
    if let Some(h) = &head {
        if attempt < h.attempt {
            return Err(ServerError::FailedPrecondition(format!(
                "attempt: {attempt} of {} is older than its latest attempt {}",
                line(key),
                h.attempt
            )));
        }
        if attempt == h.attempt {
            let from = status_of(h);
            if from == input.status && is_final(from) {
                // The same final result again (a retried call): nothing changes.
                return Ok(h.clone());
            }
            if from != StageStatus::Started || input.status == StageStatus::Started {
                return Err(ServerError::FailedPrecondition(format!(
                    "status: attempt {attempt} of {} is already {}; it cannot become {}",
                    line(key),
                    status_word(from),
                    status_word(input.status)
                )));
            }
            started_at_ms = h.started_at_ms;
        }
    }
    if let Some(c) = txn.claim(key)? {
        let live = c.expires_at_ms > now_ms;
        if live && c.token != input.claim_token {
            return Err(ServerError::FailedPrecondition(format!(
                "{} is claimed by {} until {}; record with that claim's token",
                line(key),
                stagecache_proto::quote(&c.holder),
                format_time(c.expires_at_ms)
            )));
        }
        if is_final(input.status) && (c.token == input.claim_token || !live) {
            txn.delete_claim(key)?;
        }
    }
    let record = StageResultRecord {
        subject_hash: key.subject.hash().to_vec(),
        subject_size: key.subject.size(),
        stage: key.stage.clone(),
        target: key.target.clone(),
        fingerprint: input.fingerprint.clone(),
        status: input.status as i32,
        bar_build_id: input.bar_build_id.clone(),
        build_id: input.build_id.clone(),
        attempt,
        run_url: input.run_url.clone(),
        actor: input.actor.clone(),
        outputs_hash: input.outputs.map(|d| d.hash().to_vec()).unwrap_or_default(),
        outputs_size: input.outputs.map_or(0, |d| d.size()),
        started_at_ms,
        finished_at_ms: if is_final(input.status) { now_ms } else { 0 },
        seq: 0,
        reason: String::new(),
        identity: input.identity.clone(),
    };
    txn.append(key, record)
}

/// Makes a line's result no longer count, keeping an audit record of who and why.
pub fn invalidate(
    txn: &mut LedgerTxn,
    key: &StageKey,
    actor: &str,
    identity: &str,
    reason: &str,
    now_ms: i64,
) -> Result<StageResultRecord> {
    let head = match txn.head(key)? {
        Some(h) if status_of(&h) != StageStatus::Invalidated => h,
        _ => {
            return Err(ServerError::FailedPrecondition(format!(
                "{} has no result to invalidate",
                line(key)
            )))
        }
    };
    let audit = StageResultRecord {
        status: StageStatus::Invalidated as i32,
        actor: actor.to_string(),
        identity: identity.to_string(),
        reason: reason.to_string(),
        finished_at_ms: now_ms,
        ..head
    };
    txn.append(key, audit)
}
