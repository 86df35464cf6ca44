//! `stagecache.v1.Refs`: named pointers to manifests, per namespace, with history.

use super::{caller, namespace, AppState, Permission};
use crate::error::ServerError;
use crate::store::index::{record_digest, RefExpectation, RefWrite};
use stagecache_proto::records::{RefChangeRecord, RefRecord};
use stagecache_proto::v1::refs_server::Refs;
use stagecache_proto::v1::{
    GetRefRequest, GetRefResponse, ListRefsRequest, ListRefsResponse, Ref, RefChange,
    RefHistoryRequest, RefHistoryResponse, SetRefRequest, SetRefResponse,
};
use stagecache_proto::{Digest, RefName};
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
}

fn ref_to_proto(name: &str, r: &RefRecord) -> Result<Ref, ServerError> {
    Ok(Ref {
        name: name.to_string(),
        target: Some(record_digest(&r.target_hash, r.target_size)?.to_proto()),
        version: r.version,
        updated_at_ms: r.updated_at_ms,
        actor: r.actor.clone(),
        identity: r.identity.clone(),
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
    })
}

fn bounded_text(field: &str, value: &str, max: usize) -> Result<(), ServerError> {
    Ok(stagecache_proto::names::validate_text(field, value, max)?)
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
        bounded_text("actor", &req.actor, MAX_ACTOR_BYTES)?;
        bounded_text("reason", &req.reason, MAX_REASON_BYTES)?;
        let actor = if req.actor.is_empty() {
            "unknown".to_string()
        } else {
            req.actor
        };
        let store = &self.state.store;
        if store.get_manifest(target).await?.is_none() {
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
        if let Some(change) = &update.change {
            // Durable in the blob store before the answer: the system of record.
            store
                .journal_ref(&ns, &name, &update.record, change)
                .await?;
            self.state.events.publish(
                &ns,
                crate::events::Change::RefSet(change_to_proto(name.as_str(), change)?),
            );
            tracing::info!(namespace = %ns, r#ref = %name, %target, version = update.record.version, "ref set");
        }
        Ok(Response::new(SetRefResponse {
            r#ref: Some(ref_to_proto(name.as_str(), &update.record)?),
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
                r#ref: Some(ref_to_proto(name.as_str(), &r)?),
            })),
            None => Err(Status::not_found(format!(
                "ref {name} does not exist in namespace {ns}"
            ))),
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
            .map(|(n, r)| ref_to_proto(n, r))
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
