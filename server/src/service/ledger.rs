//! `stagecache.v1.Ledger`: decodes and validates requests, runs the ledger rules in one
//! durable transaction, publishes change events, maps errors to statuses.

use super::{caller, check_batch_len, namespace, AppState, Permission};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::events::{Change, Event};
use crate::ledger::claims::{self, ClaimOutcome};
use crate::ledger::plan::{self, validate_stage_name, Graph, Selection};
use crate::ledger::{self, into_proto, status_of, to_proto, validate_text, RecordInput};
use crate::store::ledger::StageKey;
use futures::stream::BoxStream;
use futures::StreamExt;
use stagecache_proto::records::StageResultRecord;
use stagecache_proto::v1::ledger_server::Ledger;
use stagecache_proto::v1::{
    self, watch_event, BatchStatusRequest, BatchStatusResponse, Claim, ClaimRequest, ClaimResponse,
    HistoryRequest, HistoryResponse, InvalidateRequest, InvalidateResponse, PlanRequest,
    PlanResponse, RecordBatchRequest, RecordBatchResponse, RecordRequest, RecordResponse,
    ReleaseClaimRequest, ReleaseClaimResponse, RenewClaimRequest, StageStatus, StatusRequest,
    StatusResponse, SubjectStatus, WatchEvent, WatchRequest,
};
use stagecache_proto::{Digest, Namespace, RefName};
use std::collections::HashSet;
use tonic::{Request, Response, Status};

/// Most items of one RecordBatch or subjects of one BatchStatus.
pub const MAX_BATCH: usize = stagecache_proto::MAX_BATCH_ITEMS;

pub struct LedgerService {
    state: AppState,
}

impl LedgerService {
    pub fn new(state: AppState) -> Self {
        LedgerService { state }
    }

    fn now(&self) -> i64 {
        self.state.clock.now_ms()
    }

    /// Which of these digests are neither a stored manifest nor a stored blob. Those
    /// stored are protected from a collection running now (the record about to be written
    /// would otherwise be collected with its subject).
    async fn unknown_subjects(&self, subjects: Vec<Digest>) -> Result<Vec<Digest>, ServerError> {
        self.state.store.protect_subjects(subjects).await
    }

    /// Refuses a subject that is neither a stored manifest nor a stored blob
    /// (FAILED_PRECONDITION): Record and Claim apply the same rule.
    async fn require_stored_subject(&self, subject: Digest) -> Result<(), ServerError> {
        if self.unknown_subjects(vec![subject]).await?.is_empty() {
            return Ok(());
        }
        Err(ServerError::FailedPrecondition(format!(
            "subject: {subject} is neither a stored manifest nor a stored blob"
        )))
    }

    /// The outputs that are not stored manifests; those stored are protected from a
    /// collection running now.
    async fn missing_manifests(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, ServerError> {
        let mut missing = Vec::new();
        for d in digests {
            if !self.state.store.protect_manifest(d).await? {
                missing.push(d);
            }
        }
        Ok(missing)
    }

    fn publish(&self, ns: &Namespace, r: &StageResultRecord) {
        if let Ok(p) = to_proto(r) {
            self.state.events.publish(ns, Change::StageRecorded(p));
        }
    }
}

/// When retention collected `subject` in `ns` (0: never), looked up only where the
/// subject has no lines (`lineless`): collection removes them all, so a subject with
/// lines has either never been collected or been recorded on since.
fn expired_at(
    index: &crate::store::index::Index,
    ns: &Namespace,
    subject: &Digest,
    lineless: bool,
) -> Result<i64, ServerError> {
    if !lineless {
        return Ok(0);
    }
    Ok(index
        .collected_subject(ns, subject)?
        .map_or(0, |c| c.collected_at_ms))
}

fn stage_key(
    ns: &Namespace,
    field: &str,
    subject: Option<&v1::Digest>,
    stage: &str,
    target: &str,
) -> Result<StageKey, ServerError> {
    let subject = Digest::from_required(&format!("{field}subject"), subject)?;
    validate_stage_name(&format!("{field}stage"), stage, false)?;
    validate_stage_name(&format!("{field}target"), target, true)?;
    Ok(StageKey {
        namespace: ns.clone(),
        subject,
        stage: stage.to_string(),
        target: target.to_string(),
    })
}

fn record_input(
    ns: &Namespace,
    field: &str,
    r: &RecordRequest,
    caller: &Principal,
) -> Result<RecordInput, ServerError> {
    let key = stage_key(ns, field, r.subject.as_ref(), &r.stage, &r.target)?;
    let status = StageStatus::try_from(r.status).map_err(|_| {
        ServerError::InvalidArgument(format!("{field}status: {} is not a stage status", r.status))
    })?;
    for (name, value) in [
        ("fingerprint", &r.fingerprint),
        ("bar_build_id", &r.bar_build_id),
        ("build_id", &r.build_id),
        ("run_url", &r.run_url),
        ("actor", &r.actor),
        ("claim_token", &r.claim_token),
    ] {
        validate_text(&format!("{field}{name}"), value)?;
    }
    let outputs = r
        .outputs
        .as_ref()
        .map(|d| Digest::from_proto_in(|| format!("{field}outputs"), d))
        .transpose()?;
    Ok(RecordInput {
        key,
        fingerprint: r.fingerprint.clone(),
        status,
        bar_build_id: r.bar_build_id.clone(),
        build_id: r.build_id.clone(),
        attempt: r.attempt,
        run_url: r.run_url.clone(),
        actor: if r.actor.is_empty() {
            "unknown".into()
        } else {
            r.actor.clone()
        },
        identity: caller.audit_identity().to_string(),
        outputs,
        claim_token: r.claim_token.clone(),
    })
}

/// The lines of `heads` a status asks about (all, or one stage and target, optionally
/// one fingerprint), without invalidated ones, as answered.
fn effective(
    heads: Vec<StageResultRecord>,
    stage: &str,
    target: &str,
    fingerprint: &str,
) -> Result<Vec<v1::StageResult>, ServerError> {
    heads
        .into_iter()
        .filter(|h| {
            status_of(h) != StageStatus::Invalidated
                && (stage.is_empty() || (h.stage == stage && h.target == target))
                && (fingerprint.is_empty() || h.fingerprint == fingerprint)
        })
        .map(into_proto)
        .collect()
}

fn protos(records: &[StageResultRecord]) -> Result<Vec<v1::StageResult>, ServerError> {
    records.iter().map(to_proto).collect()
}

fn claim_proto(c: &stagecache_proto::records::ClaimRecord, with_token: bool) -> Claim {
    Claim {
        holder: c.holder.clone(),
        token: if with_token {
            c.token.clone()
        } else {
            String::new()
        },
        acquired_at_ms: c.acquired_at_ms,
        expires_at_ms: c.expires_at_ms,
        identity: c.identity.clone(),
    }
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn record(
        &self,
        request: Request<RecordRequest>,
    ) -> Result<Response<RecordResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Record, &ns)?;
        let input = record_input(&ns, "", &req, &caller)?;
        self.require_stored_subject(input.key.subject).await?;
        if let Some(out) = input.outputs {
            if !self.missing_manifests(vec![out]).await?.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "outputs: manifest {out} is not stored"
                )));
            }
        }
        let now = self.now();
        let result = self
            .state
            .store
            .ledger(move |t| ledger::record(t, &input, now))
            .await?;
        self.publish(&ns, &result);
        Ok(Response::new(RecordResponse {
            result: Some(to_proto(&result)?),
        }))
    }

    async fn record_batch(
        &self,
        request: Request<RecordBatchRequest>,
    ) -> Result<Response<RecordBatchResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Record, &ns)?;
        check_batch_len("items", req.items.len(), MAX_BATCH)?;
        let inputs = req
            .items
            .iter()
            .enumerate()
            .map(|(i, r)| record_input(&ns, &format!("items[{i}]."), r, &caller))
            .collect::<Result<Vec<_>, _>>()?;
        let subjects: Vec<Digest> = inputs
            .iter()
            .map(|i| i.key.subject)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let unknown = self.unknown_subjects(subjects).await?;
        if let Some(d) = unknown.first() {
            let i = inputs.iter().position(|i| i.key.subject == *d).unwrap_or(0);
            return Err(Status::failed_precondition(format!(
                "items[{i}].subject: {d} is neither a stored manifest nor a stored blob ({} unknown subjects in all); nothing was recorded",
                unknown.len()
            )));
        }
        let outputs: Vec<Digest> = inputs.iter().filter_map(|i| i.outputs).collect();
        if let Some(d) = self.missing_manifests(outputs).await?.first() {
            return Err(Status::failed_precondition(format!(
                "outputs: manifest {d} is not stored; nothing was recorded"
            )));
        }
        let now = self.now();
        let results = self
            .state
            .store
            .ledger(move |t| {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(n, input)| {
                        ledger::record(t, input, now).map_err(|e| match e {
                            ServerError::FailedPrecondition(m) => ServerError::FailedPrecondition(
                                format!("items[{n}]: {m}; nothing was recorded"),
                            ),
                            ServerError::InvalidArgument(m) => ServerError::InvalidArgument(
                                format!("items[{n}]: {m}; nothing was recorded"),
                            ),
                            other => other,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        for r in &results {
            self.publish(&ns, r);
        }
        Ok(Response::new(RecordBatchResponse {
            results: protos(&results)?,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let subject =
            Digest::from_required("subject", req.subject.as_ref()).map_err(ServerError::from)?;
        validate_stage_name("stage", &req.stage, true)?;
        validate_stage_name("target", &req.target, true)?;
        validate_text("fingerprint", &req.fingerprint)?;
        // Point reads of short prefixes: cheap enough to serve on the async workers.
        let index = self.state.store.index();
        let heads = index.ledger_heads(&ns, &subject)?;
        let expired_at_ms = expired_at(index, &ns, &subject, heads.is_empty())?;
        Ok(Response::new(StatusResponse {
            results: effective(heads, &req.stage, &req.target, &req.fingerprint)?,
            expired_at_ms,
        }))
    }

    async fn batch_status(
        &self,
        request: Request<BatchStatusRequest>,
    ) -> Result<Response<BatchStatusResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        check_batch_len("subjects", req.subjects.len(), MAX_BATCH)?;
        let subjects =
            Digest::list_from_proto("subjects", &req.subjects).map_err(ServerError::from)?;
        validate_stage_name("stage", &req.stage, true)?;
        validate_stage_name("target", &req.target, true)?;
        validate_text("fingerprint", &req.fingerprint)?;
        let (stage, target, fingerprint) = (req.stage, req.target, req.fingerprint);
        let out = self
            .state
            .store
            .with_index(move |i| {
                subjects
                    .iter()
                    .map(|s| {
                        let heads = i.ledger_heads(&ns, s)?;
                        let expired_at_ms = expired_at(i, &ns, s, heads.is_empty())?;
                        Ok(SubjectStatus {
                            subject: Some(s.to_proto()),
                            results: effective(heads, &stage, &target, &fingerprint)?,
                            expired_at_ms,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()
            })
            .await?;
        Ok(Response::new(BatchStatusResponse { subjects: out }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let subject =
            Digest::from_required("subject", req.subject.as_ref()).map_err(ServerError::from)?;
        validate_stage_name("stage", &req.stage, true)?;
        validate_stage_name("target", &req.target, true)?;
        let limit = match req.limit {
            0 => 100,
            n => (n as usize).min(MAX_BATCH),
        };
        let (stage, target) = (req.stage, req.target);
        let records = self
            .state
            .store
            .with_index(move |i| {
                let stage = (!stage.is_empty()).then_some(stage.as_str());
                // With a stage, target "" means the stage-level line, not "any target".
                let target = stage.map(|_| target.as_str());
                i.ledger_history(&ns, &subject, stage, target, limit)
            })
            .await?;
        Ok(Response::new(HistoryResponse {
            results: protos(&records)?,
        }))
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let subject =
            Digest::from_required("subject", req.subject.as_ref()).map_err(ServerError::from)?;
        let graph = req
            .graph
            .ok_or_else(|| Status::invalid_argument("graph is required"))?;
        let defs: Vec<(String, Vec<String>, String)> = graph
            .stages
            .into_iter()
            .map(|s| (s.name, s.depends_on, s.fingerprint))
            .collect();
        let graph = Graph::new(defs)?;
        for (field, names) in [
            ("only", &req.only),
            ("skip", &req.skip),
            ("force", &req.force),
        ] {
            check_batch_len(field, names.len(), plan::MAX_GRAPH_STAGES)?;
        }
        let index = self.state.store.index();
        let heads = index.ledger_heads(&ns, &subject)?;
        let expired_at_ms = expired_at(index, &ns, &subject, heads.is_empty())?;
        let selection = Selection {
            only: req.only,
            from: req.from,
            skip: req.skip,
        };
        let decided = plan::plan_from_heads(&graph, &selection, &req.force, heads)?;
        // A skip reuses a result for these exact bytes; say when some of them are damaged.
        let damaged = if decided.iter().any(|p| p.decision == plan::Decision::Skip) {
            index.damaged(&subject)?
        } else {
            None
        };
        if let Some(m) = crate::metrics::metrics() {
            // One counter update per decision kind, not per stage: a plan of 18 stages
            // would otherwise pay 18 label lookups.
            let mut counts = [0u64; 3];
            for p in &decided {
                counts[match p.decision {
                    plan::Decision::Run => 0,
                    plan::Decision::Skip => 1,
                    plan::Decision::Blocked => 2,
                }] += 1;
            }
            for (label, n) in ["run", "skip", "blocked"].into_iter().zip(counts) {
                if n > 0 {
                    m.plan_decisions.with_label_values(&[label]).inc_by(n);
                }
            }
        }
        let stages = decided
            .into_iter()
            .map(|p| {
                Ok(v1::StagePlan {
                    name: p.name,
                    decision: match p.decision {
                        plan::Decision::Run => v1::Decision::Run,
                        plan::Decision::Skip => v1::Decision::Skip,
                        plan::Decision::Blocked => v1::Decision::Blocked,
                    } as i32,
                    reason: if let (Some((blob, at)), plan::Decision::Skip) = (damaged, p.decision)
                    {
                        format!(
                            "{}; but this subject's bytes are damaged: blob {blob} was found damaged and quarantined at {}; register the set again to heal it",
                            p.reason,
                            stagecache_proto::time::format_time(at)
                        )
                    } else if expired_at_ms != 0 && p.decision == plan::Decision::Run {
                        format!(
                            "{}; earlier results for this subject expired: retention collected it at {}",
                            p.reason,
                            stagecache_proto::time::format_time(expired_at_ms)
                        )
                    } else {
                        p.reason
                    },
                    succeeded: p.succeeded.map(into_proto).transpose()?,
                    blocked_by: p.blocked_by,
                })
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        Ok(Response::new(PlanResponse {
            stages,
            expired_at_ms,
        }))
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Invalidate, &ns)?;
        let key = stage_key(&ns, "", req.subject.as_ref(), &req.stage, &req.target)?;
        validate_text("actor", &req.actor)?;
        validate_text("reason", &req.reason)?;
        if req.actor.trim().is_empty() {
            return Err(Status::invalid_argument(
                "actor: is empty; an invalidation is audited: say who",
            ));
        }
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: is empty; an invalidation is audited: say why",
            ));
        }
        // A stored subject is protected from a collection running now, which would take
        // this audit record with it; one not stored has nothing left to skip anyway.
        self.state.store.protect_blobs(vec![key.subject]).await?;
        let now = self.now();
        let (actor, reason) = (req.actor, req.reason);
        let identity = caller.audit_identity().to_string();
        let audit = self
            .state
            .store
            .ledger(move |t| ledger::invalidate(t, &key, &actor, &identity, &reason, now))
            .await?;
        tracing::info!(namespace = %ns, stage = %audit.stage, actor = %audit.actor, reason = %audit.reason, "stage result invalidated");
        self.publish(&ns, &audit);
        Ok(Response::new(InvalidateResponse {
            invalidation: Some(to_proto(&audit)?),
        }))
    }

    async fn claim(
        &self,
        request: Request<ClaimRequest>,
    ) -> Result<Response<ClaimResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Record, &ns)?;
        let key = stage_key(&ns, "", req.subject.as_ref(), &req.stage, &req.target)?;
        validate_text("holder", &req.holder)?;
        // As Record: a claim on bytes that are not stored could never be recorded.
        self.require_stored_subject(key.subject).await?;
        let now = self.now();
        let (holder, ttl) = (req.holder, req.ttl_seconds);
        let identity = caller.audit_identity().to_string();
        let outcome = self
            .state
            .store
            .ledger(move |t| claims::claim(t, &key, &holder, &identity, ttl, now))
            .await?;
        if let Some(m) = crate::metrics::metrics() {
            m.claims
                .with_label_values(&[match outcome {
                    ClaimOutcome::Granted { .. } => "granted",
                    ClaimOutcome::Held(_) => "refused_held",
                    ClaimOutcome::AlreadySucceeded(_) => "refused_succeeded",
                }])
                .inc();
            if let ClaimOutcome::Granted { expired: true, .. } = outcome {
                m.claims.with_label_values(&["expired"]).inc();
            }
        }
        Ok(Response::new(match outcome {
            ClaimOutcome::Granted { claim: c, .. } => ClaimResponse {
                granted: true,
                claim: Some(claim_proto(&c, true)),
                already_succeeded: None,
            },
            ClaimOutcome::Held(c) => ClaimResponse {
                granted: false,
                claim: Some(claim_proto(&c, false)),
                already_succeeded: None,
            },
            ClaimOutcome::AlreadySucceeded(r) => ClaimResponse {
                granted: false,
                claim: None,
                already_succeeded: Some(to_proto(&r)?),
            },
        }))
    }

    async fn renew_claim(
        &self,
        request: Request<RenewClaimRequest>,
    ) -> Result<Response<ClaimResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Record, &ns)?;
        let key = stage_key(&ns, "", req.subject.as_ref(), &req.stage, &req.target)?;
        validate_text("token", &req.token)?;
        let now = self.now();
        let (token, ttl) = (req.token, req.ttl_seconds);
        let c = self
            .state
            .store
            .ledger(move |t| claims::renew(t, &key, &token, ttl, now))
            .await?;
        if let Some(m) = crate::metrics::metrics() {
            m.claims.with_label_values(&["renewed"]).inc();
        }
        Ok(Response::new(ClaimResponse {
            granted: true,
            claim: Some(claim_proto(&c, true)),
            already_succeeded: None,
        }))
    }

    async fn release_claim(
        &self,
        request: Request<ReleaseClaimRequest>,
    ) -> Result<Response<ReleaseClaimResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Record, &ns)?;
        let key = stage_key(&ns, "", req.subject.as_ref(), &req.stage, &req.target)?;
        validate_text("token", &req.token)?;
        let now = self.now();
        let token = req.token;
        self.state
            .store
            .ledger(move |t| claims::release(t, &key, &token, now))
            .await?;
        if let Some(m) = crate::metrics::metrics() {
            m.claims.with_label_values(&["released"]).inc();
        }
        Ok(Response::new(ReleaseClaimResponse {}))
    }

    type WatchStream = BoxStream<'static, Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let ref_name = if req.r#ref.is_empty() {
            None
        } else {
            Some(RefName::parse("ref", &req.r#ref).map_err(ServerError::from)?)
        };
        let subject = req
            .subject
            .as_ref()
            .map(|d| Digest::from_proto("subject", d))
            .transpose()
            .map_err(ServerError::from)?;
        validate_stage_name("stage", &req.stage, true)?;
        if req.refs_only && req.results_only {
            return Err(Status::invalid_argument(
                "refs_only and results_only: give at most one",
            ));
        }
        let want_refs = !req.results_only && subject.is_none() && req.stage.is_empty();
        let want_results = !req.refs_only && ref_name.is_none();
        let stage = req.stage;
        // Subscribe before reading the current state, so nothing falls in between.
        let rx = self.state.events.subscribe();

        let mut initial = Vec::new();
        let store = self.state.store.clone();
        if want_refs {
            if let Some(name) = &ref_name {
                let (ns2, name2) = (ns.clone(), name.clone());
                let expiry = stagecache_proto::records::RefChangeKind::Expire as i32;
                // A ref retention removed is not set: a watcher waits for its next move.
                if let Some(change) = store
                    .with_index(move |i| Ok(i.ref_history(&ns2, &name2, 1)?.into_iter().next()))
                    .await?
                    .filter(|c| c.kind != expiry)
                {
                    let c = super::refs::change_to_proto(name.as_str(), &change)?;
                    initial.push(WatchEvent {
                        event: Some(watch_event::Event::RefSet(c)),
                        initial: true,
                        ready: false,
                    });
                }
            }
        }
        if want_results {
            if let Some(s) = subject {
                // Every target of the stage (or every line): converted only once chosen.
                let heads = store
                    .index()
                    .ledger_heads(&ns, &s)?
                    .into_iter()
                    .filter(|h| stage.is_empty() || h.stage == stage)
                    .collect();
                for h in effective(heads, "", "", "")? {
                    initial.push(WatchEvent {
                        event: Some(watch_event::Event::StageRecorded(h)),
                        initial: true,
                        ready: false,
                    });
                }
            }
        }

        let matches = move |e: &Event| -> bool {
            if e.namespace != ns {
                return false;
            }
            match &e.change {
                Change::RefSet(c) => {
                    want_refs && ref_name.as_ref().is_none_or(|n| n.as_str() == c.name)
                }
                Change::StageRecorded(r) => {
                    want_results
                        && (stage.is_empty() || r.stage == stage)
                        && subject.is_none_or(|s| {
                            r.subject
                                .as_ref()
                                .is_some_and(|d| d.hash == s.hash_hex() && d.size_bytes == s.size())
                        })
                }
            }
        };
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
            let out = match item {
                Ok(e) if matches(&e) => Some(Ok(WatchEvent {
                    event: Some(match e.change {
                        Change::RefSet(c) => watch_event::Event::RefSet(c),
                        Change::StageRecorded(r) => watch_event::Event::StageRecorded(r),
                    }),
                    initial: false,
                    ready: false,
                })),
                Ok(_) => None,
                Err(_) => Some(Err(Status::resource_exhausted(
                    "watcher fell behind the event stream; watch again",
                ))),
            };
            futures::future::ready(out)
        });
        let stopping = self.state.shutdown.clone();
        let closing = futures::stream::once(async {
            Err(Status::unavailable("server is shutting down; watch again"))
        });
        Ok(Response::new(
            futures::stream::iter(initial.into_iter().map(Ok))
                .chain(live)
                .take_until(stopping.cancelled_owned())
                .chain(closing)
                .boxed(),
        ))
    }
}
