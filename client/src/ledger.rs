//! Ledger calls: record results, ask status and plans, invalidate, claim, watch.
//! Requests are the `stagecache.v1` messages; the namespace and actor are filled in from
//! the client's configuration.

use crate::client::Client;
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
        let resp = self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.record(r).await }
            })
            .await
            .map_err(status("Ledger.Record"))?;
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
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.record_batch(r).await }
            })
            .await
            .map_err(status("Ledger.RecordBatch"))?
            .into_inner()
            .results)
    }

    /// Effective results of a subject (optionally one stage and target).
    pub async fn stage_status(&self, mut req: StatusRequest) -> Result<Vec<StageResult>> {
        req.namespace = self.ns();
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.status(r).await }
            })
            .await
            .map_err(status("Ledger.Status"))?
            .into_inner()
            .results)
    }

    /// Every attempt and invalidation, newest first.
    pub async fn stage_history(&self, mut req: HistoryRequest) -> Result<Vec<StageResult>> {
        req.namespace = self.ns();
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.history(r).await }
            })
            .await
            .map_err(status("Ledger.History"))?
            .into_inner()
            .results)
    }

    pub async fn plan(&self, mut req: PlanRequest) -> Result<PlanResponse> {
        req.namespace = self.ns();
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.plan(r).await }
            })
            .await
            .map_err(status("Ledger.Plan"))?
            .into_inner())
    }

    /// Makes a stage's result no longer count; `reason` is kept in the audit record.
    pub async fn invalidate(&self, mut req: InvalidateRequest) -> Result<StageResult> {
        req.namespace = self.ns();
        if req.actor.is_empty() {
            req.actor = self.config().actor.clone();
        }
        self.unary(|| {
            let mut c = self.ledger();
            let r = self.request(req.clone());
            async move { c.invalidate(r).await }
        })
        .await
        .map_err(status("Ledger.Invalidate"))?
        .into_inner()
        .invalidation
        .ok_or_else(|| ClientError::Verify("Ledger.Invalidate answered no record".into()))
    }

    pub async fn claim(&self, mut req: ClaimRequest) -> Result<ClaimResponse> {
        req.namespace = self.ns();
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.claim(r).await }
            })
            .await
            .map_err(status("Ledger.Claim"))?
            .into_inner())
    }

    pub async fn renew_claim(&self, mut req: RenewClaimRequest) -> Result<ClaimResponse> {
        req.namespace = self.ns();
        Ok(self
            .unary(|| {
                let mut c = self.ledger();
                let r = self.request(req.clone());
                async move { c.renew_claim(r).await }
            })
            .await
            .map_err(status("Ledger.RenewClaim"))?
            .into_inner())
    }

    pub async fn release_claim(&self, mut req: ReleaseClaimRequest) -> Result<()> {
        req.namespace = self.ns();
        self.unary(|| {
            let mut c = self.ledger();
            let r = self.request(req.clone());
            async move { c.release_claim(r).await }
        })
        .await
        .map_err(status("Ledger.ReleaseClaim"))?;
        Ok(())
    }

    /// What the server holds (blobs and manifests overall; refs, ledger records and live
    /// claims in this namespace).
    pub async fn stats(&self) -> Result<stagecache_proto::v1::StatsResponse> {
        let req = stagecache_proto::v1::StatsRequest {
            namespace: self.ns(),
        };
        Ok(self
            .unary(|| {
                let mut c = stagecache_proto::v1::info_client::InfoClient::new(self.channel());
                let r = self.request(req.clone());
                async move { c.stats(r).await }
            })
            .await
            .map_err(status("Info.Stats"))?
            .into_inner())
    }

    /// Opens a watch; events describing the current state come first (`initial`).
    pub async fn watch(&self, mut req: WatchRequest) -> Result<tonic::Streaming<WatchEvent>> {
        req.namespace = self.ns();
        let mut c = self.ledger();
        Ok(c.watch(tonic::Request::new(req))
            .await
            .map_err(status("Ledger.Watch"))?
            .into_inner())
    }
}
