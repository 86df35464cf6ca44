//! Claims: an exclusive, expiring lease on a ledger line, so that two concurrent re-runs
//! never both publish. Granted to one holder at a time; refused with "already succeeded"
//! when the stage succeeded; released by the holder's final record; expires on its TTL.

use super::{effective_success, format_time};
use crate::error::{Result, ServerError};
use crate::store::ledger::{LedgerTxn, StageKey};
use stagecache_proto::records::{ClaimRecord, StageResultRecord};

/// Longest lease, in seconds (a week).
pub const MAX_TTL_SECONDS: u32 = 7 * 24 * 3600;

pub fn validate_ttl(ttl_seconds: u32) -> Result<()> {
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(ServerError::InvalidArgument(format!(
            "ttl_seconds: {ttl_seconds} is outside 1..={MAX_TTL_SECONDS}"
        )));
    }
    Ok(())
}

/// Outcome of a claim request.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// `expired`: it replaced another holder's claim that had expired (counted).
    Granted {
        claim: ClaimRecord,
        expired: bool,
    },
    /// Someone else holds a live claim.
    Held(ClaimRecord),
    AlreadySucceeded(Box<StageResultRecord>),
}

pub fn claim(
    txn: &mut LedgerTxn,
    key: &StageKey,
    holder: &str,
    identity: &str,
    ttl_seconds: u32,
    now_ms: i64,
) -> Result<ClaimOutcome> {
    validate_ttl(ttl_seconds)?;
    if holder.is_empty() {
        return Err(ServerError::InvalidArgument(
            "holder: is empty; say who claims (e.g. the CI run id)".into(),
        ));
    }
    if let Some(head) = txn.head(key)? {
        if effective_success(&head, "") {
            return Ok(ClaimOutcome::AlreadySucceeded(Box::new(head)));
        }
    }
    let expires_at_ms = now_ms + i64::from(ttl_seconds) * 1000;
    let previous = txn.claim(key)?;
    let expired = previous
        .as_ref()
        .is_some_and(|c| c.expires_at_ms <= now_ms && c.holder != holder);
    let record = match previous {
        Some(c) if c.expires_at_ms > now_ms && c.holder != holder => {
            return Ok(ClaimOutcome::Held(c));
        }
        // The same holder asking again renews its lease.
        Some(c) if c.expires_at_ms > now_ms => ClaimRecord { expires_at_ms, ..c },
        _ => ClaimRecord {
            holder: holder.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            acquired_at_ms: now_ms,
            expires_at_ms,
            identity: identity.to_string(),
        },
    };
    txn.put_claim(key, record.clone())?;
    Ok(ClaimOutcome::Granted {
        claim: record,
        expired,
    })
}

fn held_by_token(txn: &LedgerTxn, key: &StageKey, token: &str, now_ms: i64) -> Result<ClaimRecord> {
    match txn.claim(key)? {
        None => Err(ServerError::FailedPrecondition(format!(
            "stage {:?} on {} has no claim",
            key.stage, key.subject
        ))),
        Some(c) if c.token != token => Err(ServerError::FailedPrecondition(format!(
            "stage {:?} on {} is claimed by {} (until {}); the token given is not that claim's",
            key.stage,
            key.subject,
            stagecache_proto::quote(&c.holder),
            format_time(c.expires_at_ms)
        ))),
        Some(c) if c.expires_at_ms <= now_ms => Err(ServerError::FailedPrecondition(format!(
            "the claim of {} on stage {:?} expired at {}; claim again",
            stagecache_proto::quote(&c.holder),
            key.stage,
            format_time(c.expires_at_ms)
        ))),
        Some(c) => Ok(c),
    }
}

pub fn renew(
    txn: &mut LedgerTxn,
    key: &StageKey,
    token: &str,
    ttl_seconds: u32,
    now_ms: i64,
) -> Result<ClaimRecord> {
    validate_ttl(ttl_seconds)?;
    let c = held_by_token(txn, key, token, now_ms)?;
    let renewed = ClaimRecord {
        expires_at_ms: now_ms + i64::from(ttl_seconds) * 1000,
        ..c
    };
    txn.put_claim(key, renewed.clone())?;
    Ok(renewed)
}

pub fn release(txn: &mut LedgerTxn, key: &StageKey, token: &str, now_ms: i64) -> Result<()> {
    held_by_token(txn, key, token, now_ms)?;
    txn.delete_claim(key)
}
