//! Ledger calls: record results, ask status and plans, invalidate, claim, watch.
//! Requests are the `stagecache.v1` messages; the namespace and actor are filled in from
//! the client's configuration.

use crate::client::{retrying, Client};
use crate::error::{ClientError, Result};
use stagecache_proto::v1::ledger_client::LedgerClient;
use stagecache_proto::v1::{
    ClaimRequest, ClaimResponse, HistoryRequest, InvalidateRequest, PlanRequest, PlanResponse,
    RecordBatchRequest, RecordRequest, ReleaseClaimRequest, RenewClaimRequest, StageResult,
    StatusRequest, WatchEvent, WatchRequest,
};
use stagecache_proto::MAX_MESSAGE_BYTES;

fn status(call: &'static str) -> impl Fn(tonic::Status) -> ClientError {
    move |status| ClientError::Status { call, status }
}

impl Client {
    fn ledger(&self) -> LedgerClient<tonic::transport::Channel> {
        LedgerClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Records one attempt's status. An empty `actor` becomes the configured actor.
    pub async fn record(&self, mut req: RecordRequest) -> Result<StageResult> {
        req.namespace = self.ns();
        if req.actor.is_empty() {
            req.actor = self.config().actor.clone();
        }
        let resp = retrying!(self, self.ledger(), record, req, "Ledger.Record")?;
        resp.into_inner()
            .result
            .ok_or_else(|| ClientError::Verify("Ledger.Record answered no result".into()))
    }

    /// Records many results atomically (all or nothing).
    pub async fn record_batch(&self, mut items: Vec<RecordRequest>) -> Result<Vec<StageResult>> {
        for i in &mut items {
            if i.actor.is_empty() {
                i.actor = self.config().actor.clone();
            }
        }
        let req = RecordBatchRequest {
            namespace: self.ns(),
            items,
        };
        Ok(
            retrying!(self, self.ledger(), record_batch, req, "Ledger.RecordBatch")?
                .into_inner()
                .results,
        )
    }

    /// Effective results of a subject (optionally one stage and target).
    pub async fn stage_status(&self, mut req: StatusRequest) -> Result<Vec<StageResult>> {
        req.namespace = self.ns();
        Ok(
            retrying!(self, self.ledger(), status, req, "Ledger.Status")?
                .into_inner()
                .results,
        )
    }

    /// Every attempt and invalidation, newest first.
    pub async fn stage_history(&self, mut req: HistoryRequest) -> Result<Vec<StageResult>> {
        req.namespace = self.ns();
        Ok(
            retrying!(self, self.ledger(), history, req, "Ledger.History")?
                .into_inner()
                .results,
        )
    }

    pub async fn plan(&self, mut req: PlanRequest) -> Result<PlanResponse> {
        req.namespace = self.ns();
        Ok(retrying!(self, self.ledger(), plan, req, "Ledger.Plan")?.into_inner())
    }

    /// Makes a stage's result no longer count; `reason` is kept in the audit record.
    pub async fn invalidate(&self, mut req: InvalidateRequest) -> Result<StageResult> {
        req.namespace = self.ns();
        if req.actor.is_empty() {
            req.actor = self.config().actor.clone();
        }
        retrying!(self, self.ledger(), invalidate, req, "Ledger.Invalidate")?
            .into_inner()
            .invalidation
            .ok_or_else(|| ClientError::Verify("Ledger.Invalidate answered no record".into()))
    }

    pub async fn claim(&self, mut req: ClaimRequest) -> Result<ClaimResponse> {
        req.namespace = self.ns();
        Ok(retrying!(self, self.ledger(), claim, req, "Ledger.Claim")?.into_inner())
    }

    pub async fn renew_claim(&self, mut req: RenewClaimRequest) -> Result<ClaimResponse> {
        req.namespace = self.ns();
        Ok(retrying!(self, self.ledger(), renew_claim, req, "Ledger.RenewClaim")?.into_inner())
    }

    pub async fn release_claim(&self, mut req: ReleaseClaimRequest) -> Result<()> {
        req.namespace = self.ns();
        retrying!(
            self,
            self.ledger(),
            release_claim,
            req,
            "Ledger.ReleaseClaim"
        )?;
        Ok(())
    }

    /// What the server holds (blobs and manifests overall; refs, ledger records and live
    /// claims in this namespace).
    pub async fn stats(&self) -> Result<stagecache_proto::v1::StatsResponse> {
        let req = stagecache_proto::v1::StatsRequest {
            namespace: self.ns(),
        };
        Ok(retrying!(
            self,
            stagecache_proto::v1::info_client::InfoClient::new(self.channel()),
            stats,
            req,
            "Info.Stats"
        )?
        .into_inner())
    }

    /// Runs a garbage collection on the server, or (`dry_run`) asks what one would remove.
    pub async fn collect_garbage(
        &self,
        dry_run: bool,
    ) -> Result<stagecache_proto::v1::CollectGarbageResponse> {
        let req = stagecache_proto::v1::CollectGarbageRequest {
            namespace: self.ns(),
            dry_run,
        };
        Ok(retrying!(
            self,
            stagecache_proto::v1::admin_client::AdminClient::new(self.channel()),
            collect_garbage,
            req,
            "Admin.CollectGarbage"
        )?
        .into_inner())
    }

    /// Opens a watch; events describing the current state come first (`initial`).
    pub async fn watch(&self, mut req: WatchRequest) -> Result<tonic::Streaming<WatchEvent>> {
        req.namespace = self.ns();
        let mut c = self.ledger();
        Ok(c.watch(self.stream_request(req))
            .await
            .map_err(status("Ledger.Watch"))?
            .into_inner())
    }
}

impl Client {
    /// The forced re-sign override: invalidates the signing stage's result for `subject`
    /// (audited with this client's identity and `reason`), so that a plan forcing it
    /// runs it again. Returns the audit record, or `None` when signing has no result yet.
    pub async fn force_resign(
        &self,
        subject: stagecache_proto::Digest,
        signing_stage: &str,
        reason: &str,
    ) -> Result<Option<StageResult>> {
        let current = self
            .stage_status(StatusRequest {
                subject: Some(subject.to_proto()),
                stage: signing_stage.to_string(),
                ..Default::default()
            })
            .await?;
        if current.is_empty() {
            return Ok(None);
        }
        let audit = self
            .invalidate(InvalidateRequest {
                subject: Some(subject.to_proto()),
                stage: signing_stage.to_string(),
                reason: reason.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(Some(audit))
    }
}
