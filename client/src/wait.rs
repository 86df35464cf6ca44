//! Waiting on the other pipeline: until a ref is set, or until a stage finishes for a
//! subject. Both watch the server's change stream (no polling); the first events describe
//! the current state, so a condition that already holds returns at once.

use crate::client::Client;
use crate::error::{ClientError, Result};
use stagecache_proto::v1::watch_event::Event;
use stagecache_proto::v1::{RefChange, StageResult, StageStatus, WatchEvent, WatchRequest};
use stagecache_proto::Digest;

fn watch_error(status: tonic::Status) -> ClientError {
    ClientError::Status {
        call: "Ledger.Watch",
        status,
    }
}

fn ended() -> ClientError {
    watch_error(tonic::Status::unavailable("watch ended"))
}

async fn next(events: &mut tonic::Streaming<WatchEvent>) -> Result<Option<Event>> {
    Ok(events
        .message()
        .await
        .map_err(watch_error)?
        .and_then(|e| e.event))
}

impl Client {
    /// Waits until ref `name` points at a manifest (at once if it already does).
    pub async fn wait_for_ref(&self, name: &str) -> Result<RefChange> {
        let mut events = self
            .watch(WatchRequest {
                r#ref: name.to_string(),
                refs_only: true,
                ..Default::default()
            })
            .await?;
        loop {
            match next(&mut events).await? {
                // An expiry (retention removed the ref) does not set it: wait on.
                Some(Event::RefSet(c))
                    if c.kind != stagecache_proto::v1::RefChangeKind::Expire as i32 =>
                {
                    return Ok(c)
                }
                Some(_) => {}
                None => return Err(ended()),
            }
        }
    }

    /// Waits until ref `name` is set, then returns the manifest it points at.
    pub async fn wait_for_ref_target(&self, name: &str) -> Result<Digest> {
        let c = self.wait_for_ref(name).await?;
        let d = c
            .new_target
            .ok_or_else(|| ClientError::Invalid(format!("ref {name} has no target")))?;
        Ok(Digest::from_proto("ref.target", &d)?)
    }

    /// Waits until `stage` (at `target`, "" for the stage itself) reaches a final status
    /// for `subject`: succeeded, failed or cancelled. A result that is already final
    /// returns at once.
    pub async fn wait_for_stage(
        &self,
        subject: Digest,
        stage: &str,
        target: &str,
    ) -> Result<StageResult> {
        let mut events = self
            .watch(WatchRequest {
                subject: Some(subject.to_proto()),
                stage: stage.to_string(),
                results_only: true,
                ..Default::default()
            })
            .await?;
        loop {
            match next(&mut events).await? {
                Some(Event::StageRecorded(r)) if r.target == target => {
                    if matches!(
                        StageStatus::try_from(r.status).unwrap_or(StageStatus::Unspecified),
                        StageStatus::Succeeded | StageStatus::Failed | StageStatus::Cancelled
                    ) {
                        return Ok(r);
                    }
                }
                Some(_) => {}
                None => return Err(ended()),
            }
        }
    }
}
