//! `stagecache.v1.Refs`: named pointers to manifests, per namespace, with history.

use super::{caller, namespace, AppState, Permission};
use crate::error::ServerError;
use crate::store::gc::Retention;
use crate::store::index::{record_digest, RefExpectation, RefWrite};
use stagecache_proto::records::{RefChangeKind, RefChangeRecord, RefRecord};
use stagecache_proto::v1::refs_server::Refs;
use stagecache_proto::v1::{
    GetRefRequest, GetRefResponse, ListRefsRequest, ListRefsResponse, PinRefRequest,
    PinRefResponse, Ref, RefChange, RefHistoryRequest, RefHistoryResponse, SetRefRequest,
    SetRefResponse,
};
use stagecache_proto::{Digest, Namespace, RefName};
use tonic::{Request, Response, Status};

const DEFAULT_LIST: usize = 1000;
const MAX_LIST: usize = 10_000;
const DEFAULT_HISTORY: usize = 100;
const MAX_ACTOR_BYTES: usize = 256;
const MAX_REASON_BYTES: usize = 4096;

pub struct RefsService {
    state: AppState,
}

impl RefsService {
    pub fn new(state: AppState) -> Self {
        RefsService { state }
    }

    /// Journals a ref change (durable in the blob store before the answer: the system of
    /// record) and tells watchers; returns the ref as the answer carries it.
    async fn answer_change(
        &self,
        ns: &Namespace,
        name: &RefName,
        update: &crate::store::index::RefUpdate,
    ) -> Result<Ref, ServerError> {
        let store = &self.state.store;
        if let Some(change) = &update.change {
            store.journal_ref(ns, name, &update.record, change).await?;
            self.state.events.publish(
                ns,
                crate::events::Change::RefSet(change_to_proto(name.as_str(), change)?),
            );
        }
        ref_to_proto(store.retention(), ns, name.as_str(), &update.record)
    }

    /// NOT_FOUND for a ref that does not exist, saying when retention removed it if it
    /// did.
    async fn not_found(&self, ns: &Namespace, name: &RefName) -> Status {
        let (ns2, name2) = (ns.clone(), name.clone());
        let last = self
            .state
            .store
            .with_index(move |i| i.ref_history(&ns2, &name2, 1))
            .await
            .ok()
            .and_then(|h| h.into_iter().next());
        match last {
            Some(c) if c.kind == RefChangeKind::Expire as i32 => Status::not_found(format!(
                "ref {name} does not exist in namespace {ns}: retention removed it at {} ({}); its history is kept",
                stagecache_proto::time::format_time(c.changed_at_ms),
                c.reason
            )),
            _ => Status::not_found(format!("ref {name} does not exist in namespace {ns}")),
        }
    }
}

fn ref_to_proto(
    retention: &Retention,
    ns: &Namespace,
    name: &str,
    r: &RefRecord,
) -> Result<Ref, ServerError> {
    Ok(Ref {
        name: name.to_string(),
        target: Some(record_digest(&r.target_hash, r.target_size)?.to_proto()),
        version: r.version,
        updated_at_ms: r.updated_at_ms,
        actor: r.actor.clone(),
        identity: r.identity.clone(),
        pinned: r.pinned,
        pinned_at_ms: r.pinned_at_ms,
        pinned_by: r.pinned_by.clone(),
        pin_reason: r.pin_reason.clone(),
        expires_at_ms: retention.expires_at_ms(ns.as_str(), r.pinned, r.updated_at_ms),
    })
}

pub(crate) fn change_to_proto(name: &str, c: &RefChangeRecord) -> Result<RefChange, ServerError> {
    Ok(RefChange {
        name: name.to_string(),
        version: c.version,
        old_target: if c.had_old {
            Some(record_digest(&c.old_hash, c.old_size)?.to_proto())
        } else {
            None
        },
        new_target: Some(record_digest(&c.new_hash, c.new_size)?.to_proto()),
        changed_at_ms: c.changed_at_ms,
        actor: c.actor.clone(),
        reason: c.reason.clone(),
        identity: c.identity.clone(),
        kind: c.kind,
    })
}

fn bounded_text(field: &str, value: &str, max: usize) -> Result<(), ServerError> {
    Ok(stagecache_proto::names::validate_text(field, value, max)?)
}

/// Checks a ref change's actor and reason; the actor history records (`unknown` when the
/// client named none).
fn actor_of(actor: &str, reason: &str) -> Result<String, ServerError> {
    bounded_text("actor", actor, MAX_ACTOR_BYTES)?;
    bounded_text("reason", reason, MAX_REASON_BYTES)?;
    Ok(if actor.is_empty() {
        "unknown".to_string()
    } else {
        actor.to_string()
    })
}

#[tonic::async_trait]
impl Refs for RefsService {
    async fn set(
        &self,
        request: Request<SetRefRequest>,
    ) -> Result<Response<SetRefResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        let name = RefName::parse("name", &req.name).map_err(ServerError::from)?;
        caller.check_ref(&ns, name.as_str())?;
        let target =
            Digest::from_required("target", req.target.as_ref()).map_err(ServerError::from)?;
        let expect = match (&req.expected, req.expect_absent) {
            (Some(_), true) => {
                return Err(Status::invalid_argument(
                    "expected and expect_absent: give at most one",
                ))
            }
            (Some(d), false) => RefExpectation::Target(
                Digest::from_proto("expected", d).map_err(ServerError::from)?,
            ),
            (None, true) => RefExpectation::Absent,
            (None, false) => RefExpectation::Any,
        };
        let actor = actor_of(&req.actor, &req.reason)?;
        let store = &self.state.store;
        // Protected: a collection running now keeps it (or it is reported missing here).
        if !store.protect_manifest(target).await? {
            return Err(Status::failed_precondition(format!(
                "target: manifest {target} is not stored; put the manifest before pointing a ref at it"
            )));
        }
        let now = self.state.clock.now_ms();
        let (ns2, name2, reason) = (ns.clone(), name.clone(), req.reason);
        let identity = caller.audit_identity().to_string();
        store.check_writable()?;
        let update = store
            .with_index(move |i| {
                let write = RefWrite {
                    target,
                    expect,
                    actor: &actor,
                    identity: &identity,
                    reason: &reason,
                    now_ms: now,
                };
                i.set_ref(&ns2, &name2, &write)
            })
            .await?;
        let r#ref = self.answer_change(&ns, &name, &update).await?;
        if update.change.is_some() {
            tracing::info!(namespace = %ns, r#ref = %name, %target, version = update.record.version, "ref set");
        }
        Ok(Response::new(SetRefResponse {
            r#ref: Some(r#ref),
            changed: update.change.is_some(),
        }))
    }

    async fn get(
        &self,
        request: Request<GetRefRequest>,
    ) -> Result<Response<GetRefResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let name = RefName::parse("name", &req.name).map_err(ServerError::from)?;
        let (ns2, name2) = (ns.clone(), name.clone());
        let rec = self
            .state
            .store
            .with_index(move |i| i.get_ref(&ns2, &name2))
            .await?;
        match rec {
            Some(r) => Ok(Response::new(GetRefResponse {
                r#ref: Some(ref_to_proto(
                    self.state.store.retention(),
                    &ns,
                    name.as_str(),
                    &r,
                )?),
            })),
            None => Err(self.not_found(&ns, &name).await),
        }
    }

    async fn list(
        &self,
        request: Request<ListRefsRequest>,
    ) -> Result<Response<ListRefsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        bounded_text(
            "prefix",
            &req.prefix,
            stagecache_proto::names::MAX_REF_BYTES,
        )?;
        let limit = match req.limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        bounded_text(
            "page_token",
            &req.page_token,
            stagecache_proto::names::MAX_REF_BYTES,
        )?;
        let (prefix, token) = (req.prefix, req.page_token);
        let ns2 = ns.clone();
        // One extra row tells whether another page exists.
        let rows = self
            .state
            .store
            .with_index(move |i| {
                i.list_refs(
                    &ns,
                    &prefix,
                    (!token.is_empty()).then_some(token.as_str()),
                    limit + 1,
                )
            })
            .await?;
        let more = rows.len() > limit;
        let refs = rows
            .iter()
            .take(limit)
            .map(|(n, r)| ref_to_proto(self.state.store.retention(), &ns2, n, r))
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if more {
            refs.last().map(|r| r.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListRefsResponse {
            refs,
            next_page_token,
        }))
    }

    async fn pin(
        &self,
        request: Request<PinRefRequest>,
    ) -> Result<Response<PinRefResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        let name = RefName::parse("name", &req.name).map_err(ServerError::from)?;
        caller.check_ref(&ns, name.as_str())?;
        let actor = actor_of(&req.actor, &req.reason)?;
        let store = &self.state.store;
        store.check_writable()?;
        let now = self.state.clock.now_ms();
        let identity = caller.audit_identity().to_string();
        let (ns2, name2, reason, pin) = (ns.clone(), name.clone(), req.reason, !req.unpin);
        let update = store
            .with_index(move |i| {
                let write = RefWrite {
                    // Unused by a pin: the target stays.
                    target: Digest::of_bytes(b""),
                    expect: RefExpectation::Any,
                    actor: &actor,
                    identity: &identity,
                    reason: &reason,
                    now_ms: now,
                };
                i.pin_ref(&ns2, &name2, pin, &write)
            })
            .await?;
        let Some(update) = update else {
            return Err(self.not_found(&ns, &name).await);
        };
        let r#ref = self.answer_change(&ns, &name, &update).await?;
        if update.change.is_some() {
            tracing::info!(namespace = %ns, r#ref = %name, pinned = pin, identity = caller.audit_identity(), "ref pin changed");
        }
        Ok(Response::new(PinRefResponse {
            r#ref: Some(r#ref),
            changed: update.change.is_some(),
        }))
    }

    async fn history(
        &self,
        request: Request<RefHistoryRequest>,
    ) -> Result<Response<RefHistoryResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        let name = RefName::parse("name", &req.name).map_err(ServerError::from)?;
        let limit = match req.limit as usize {
            0 => DEFAULT_HISTORY,
            n => n.min(MAX_LIST),
        };
        let name2 = name.clone();
        let changes = self
            .state
            .store
            .with_index(move |i| i.ref_history(&ns, &name2, limit))
            .await?;
        let changes = changes
            .iter()
            .map(|c| change_to_proto(name.as_str(), c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(RefHistoryResponse { changes }))
    }
}

/// `stagecache.v1.Info`: what the server holds.
pub struct InfoService {
    state: AppState,
}

impl InfoService {
    pub fn new(state: AppState) -> Self {
        InfoService { state }
    }
}

#[tonic::async_trait]
impl stagecache_proto::v1::info_server::Info for InfoService {
    async fn stats(
        &self,
        request: Request<stagecache_proto::v1::StatsRequest>,
    ) -> Result<Response<stagecache_proto::v1::StatsResponse>, Status> {
        let caller = caller(&request)?;
        let ns = namespace(&request.into_inner().namespace)?;
        caller.check(Permission::Read, &ns)?;
        let now = self.state.clock.now_ms();
        let [blobs, blob_bytes, manifests, refs, ledger_records, active_claims] = self
            .state
            .store
            .with_index(move |i| i.stats(&ns, now))
            .await?;
        Ok(Response::new(stagecache_proto::v1::StatsResponse {
            blobs,
            blob_bytes,
            manifests,
            refs,
            ledger_records,
            active_claims,
        }))
    }
}

/// `stagecache.v1.Admin`: garbage collection.
pub struct AdminService {
    state: AppState,
}

impl AdminService {
    pub fn new(state: AppState) -> Self {
        AdminService { state }
    }
}

fn tally(t: &crate::store::gc::Tally) -> stagecache_proto::v1::Collected {
    stagecache_proto::v1::Collected {
        count: t.count,
        bytes: t.bytes,
        oldest_ms: t.oldest_ms,
        newest_ms: t.newest_ms,
    }
}

/// A collection's report as the wire has it.
pub fn report_to_proto(
    r: &crate::store::gc::GcReport,
) -> stagecache_proto::v1::CollectGarbageResponse {
    stagecache_proto::v1::CollectGarbageResponse {
        dry_run: r.dry_run,
        started_at_ms: r.started_at_ms,
        grace_cutoff_ms: r.grace_cutoff_ms,
        blobs: Some(tally(&r.blobs)),
        manifests: Some(tally(&r.manifests)),
        namespaces: r
            .namespaces
            .iter()
            .map(|(ns, t)| stagecache_proto::v1::NamespaceCollected {
                namespace: ns.clone(),
                refs: Some(tally(&t.refs)),
                subjects: Some(tally(&t.subjects)),
                ledger_records: t.ledger_records,
            })
            .collect(),
        live_blobs: r.live_blobs,
        live_bytes: r.live_bytes,
        mark_seconds: r.mark_seconds,
        sweep_seconds: r.sweep_seconds,
    }
}

#[tonic::async_trait]
impl stagecache_proto::v1::admin_server::Admin for AdminService {
    async fn collect_garbage(
        &self,
        request: Request<stagecache_proto::v1::CollectGarbageRequest>,
    ) -> Result<Response<stagecache_proto::v1::CollectGarbageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        if req.dry_run {
            // It reports on every namespace.
            caller.check_everywhere(Permission::Read, &ns)?;
        } else {
            caller.check_everywhere(Permission::Admin, &ns)?;
        }
        let report = crate::store::gc::collect(&self.state.store, req.dry_run).await?;
        if !req.dry_run {
            tracing::info!(
                identity = caller.audit_identity(),
                "garbage collection asked for"
            );
        }
        Ok(Response::new(report_to_proto(&report)))
    }
}
