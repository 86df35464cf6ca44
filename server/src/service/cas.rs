//! `stagecache.v1.Cas`: blob upload, download, existence.

use super::{caller, check_batch_len, namespace, AppState, Permission};
use crate::error::ServerError;
use futures::stream::{BoxStream, StreamExt};
use stagecache_proto::v1::cas_server::Cas;
use stagecache_proto::v1::{
    BatchDownloadRequest, BatchDownloadResponse, BatchDownloadResult, BatchUploadRequest,
    BatchUploadResponse, BatchUploadResult, DownloadRequest, DownloadResponse, DownloadUrl,
    DownloadUrlsRequest, DownloadUrlsResponse, FindMissingRequest, FindMissingResponse, ItemStatus,
    UploadRequest, UploadResponse,
};
use stagecache_proto::{
    quote, thousands, Digest, BATCH_TOTAL_MAX_BYTES, CHUNK_BYTES, MAX_BATCH_ITEMS, MAX_FIND_MISSING,
};
use tonic::{Code, Request, Response, Status, Streaming};

/// Blobs of one BatchDownload read at once: enough to keep a cloud store's round trips
/// overlapping and both of a small machine's cores busy on a local one.
const BATCH_READS_AT_ONCE: usize = 8;

pub struct CasService {
    state: AppState,
}

impl CasService {
    pub fn new(state: AppState) -> Self {
        CasService { state }
    }
}

fn ok_status() -> Option<ItemStatus> {
    Some(ItemStatus {
        code: Code::Ok as i32,
        message: String::new(),
    })
}

/// Refuses a batch whose bytes exceed [`BATCH_TOTAL_MAX_BYTES`] (`None`: the sum overflowed).
fn check_batch_bytes(field: &str, what: &str, total: Option<u64>) -> Result<(), Status> {
    match total {
        Some(t) if t <= BATCH_TOTAL_MAX_BYTES => Ok(()),
        Some(t) => Err(Status::invalid_argument(format!(
            "{field}: {} {what} in one batch, at most {}",
            thousands(t),
            thousands(BATCH_TOTAL_MAX_BYTES)
        ))),
        None => Err(Status::invalid_argument(format!(
            "{field}: {what} add up to more than 2^64 - 1 in one batch, at most {}",
            thousands(BATCH_TOTAL_MAX_BYTES)
        ))),
    }
}

fn item_status(s: Status) -> Option<ItemStatus> {
    Some(ItemStatus {
        code: s.code() as i32,
        message: s.message().to_string(),
    })
}

#[tonic::async_trait]
impl Cas for CasService {
    async fn find_missing(
        &self,
        request: Request<FindMissingRequest>,
    ) -> Result<Response<FindMissingResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let ns = namespace(&req.namespace)?;
        caller.check(Permission::Read, &ns)?;
        check_batch_len("digests", req.digests.len(), MAX_FIND_MISSING)?;
        let digests =
            Digest::list_from_proto("digests", &req.digests).map_err(ServerError::from)?;
        // A caller that may upload is about to name what is present in a manifest:
        // protect it from a collection for the grace period. A reader's question keeps
        // nothing alive.
        let missing = if caller.allows(Permission::Write, &ns) {
            self.state.store.protect_blobs(digests).await?
        } else {
            self.state.store.missing_blobs(digests).await?
        };
        Ok(Response::new(FindMissingResponse {
            missing: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "upload stream is empty; the first message must carry namespace and digest",
            )
        })?;
        caller.check(Permission::Write, &namespace(&first.namespace)?)?;
        let first_namespace = first.namespace.clone();
        let expected =
            Digest::from_required("digest", first.digest.as_ref()).map_err(ServerError::from)?;
        let store = &self.state.store;
        if store.has_blob(expected).await? {
            // Answer at once; the client stops sending.
            return Ok(Response::new(UploadResponse {
                digest: Some(expected.to_proto()),
                already_present: true,
            }));
        }
        let mut writer = store.begin_blob(expected).await?;
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        writer.abort().await;
                        return Err(e);
                    }
                },
            };
            if !msg.namespace.is_empty() && msg.namespace != first_namespace {
                writer.abort().await;
                return Err(Status::invalid_argument(format!(
                    "namespace: {} in a later message of the upload of {expected}, after {}; the first message fixes the namespace of the stream (later ones leave it empty or repeat it); nothing was stored",
                    quote(&msg.namespace),
                    quote(&first_namespace)
                )));
            }
            if msg
                .digest
                .as_ref()
                .is_some_and(|d| d.hash != expected.hash_hex() || d.size_bytes != expected.size())
            {
                writer.abort().await;
                return Err(Status::invalid_argument(format!(
                    "digest: changed in the middle of the upload of {expected}"
                )));
            }
            if let Err(e) = writer.write(msg.data).await {
                writer.abort().await;
                return Err(e.into());
            }
        }
        tracing::debug!(digest = %expected, bytes = writer.received(), "upload complete");
        writer.commit().await?;
        Ok(Response::new(UploadResponse {
            digest: Some(expected.to_proto()),
            already_present: false,
        }))
    }

    type DownloadStream = BoxStream<'static, Result<DownloadResponse, Status>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Read, &namespace(&req.namespace)?)?;
        let d = Digest::from_required("digest", req.digest.as_ref()).map_err(ServerError::from)?;
        if !self.state.store.has_blob(d).await? {
            return Err(Status::not_found(format!("blob {d} is not stored")));
        }
        if req.offset > d.size() {
            return Err(Status::out_of_range(format!(
                "offset: {} is beyond the end of blob {d} ({} bytes)",
                req.offset,
                d.size()
            )));
        }
        let available = d.size() - req.offset;
        let len = if req.limit == 0 {
            available
        } else {
            req.limit.min(available)
        };
        // Verified: a damaged blob ends the stream with DATA_LOSS before its last chunk.
        let bytes = self
            .state
            .store
            .read_blob(d, req.offset, len, CHUNK_BYTES)
            .await?;
        let start = req.offset;
        let out = bytes
            .scan(start, |offset, chunk| {
                let item = chunk.map(|data| {
                    let at = *offset;
                    *offset += data.len() as u64;
                    DownloadResponse { offset: at, data }
                });
                futures::future::ready(Some(item.map_err(Status::from)))
            })
            .boxed();
        Ok(Response::new(out))
    }

    async fn batch_upload(
        &self,
        request: Request<BatchUploadRequest>,
    ) -> Result<Response<BatchUploadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Write, &namespace(&req.namespace)?)?;
        check_batch_len("items", req.items.len(), MAX_BATCH_ITEMS)?;
        let total = req
            .items
            .iter()
            .try_fold(0u64, |sum, i| sum.checked_add(i.data.len() as u64));
        check_batch_bytes("items", "bytes of data", total)?;
        let mut results = Vec::with_capacity(req.items.len());
        let mut valid = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.into_iter().enumerate() {
            match Digest::from_required_in(|| format!("items[{i}].digest"), item.digest.as_ref()) {
                Ok(d) => valid.push((i, d, item.data)),
                Err(e) => results.push((i, item.digest, item_status(Status::from(e)))),
            }
        }
        let stored = self
            .state
            .store
            .put_blobs(valid.iter().map(|(_, d, b)| (*d, b.clone())).collect())
            .await?;
        for ((i, d, _), outcome) in valid.into_iter().zip(stored) {
            let status = match outcome {
                Ok(()) => ok_status(),
                Err(e) => item_status(e.into()),
            };
            results.push((i, Some(d.to_proto()), status));
        }
        results.sort_by_key(|r| r.0);
        let results = results
            .into_iter()
            .map(|(_, digest, status)| BatchUploadResult { digest, status })
            .collect();
        Ok(Response::new(BatchUploadResponse { results }))
    }

    async fn download_urls(
        &self,
        request: Request<DownloadUrlsRequest>,
    ) -> Result<Response<DownloadUrlsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Read, &namespace(&req.namespace)?)?;
        check_batch_len("digests", req.digests.len(), MAX_BATCH_ITEMS)?;
        let digests =
            Digest::list_from_proto("digests", &req.digests).map_err(ServerError::from)?;
        let unavailable = || {
            Ok(Response::new(DownloadUrlsResponse {
                available: false,
                urls: Vec::new(),
            }))
        };
        let Some(ttl) = self.state.direct_downloads else {
            return unavailable();
        };
        let store = &self.state.store;
        let missing = store.missing_blobs(digests.clone()).await?;
        if let Some(d) = missing.first() {
            return Err(ServerError::NotFound(format!(
                "blob {d} is not stored{}",
                if missing.len() > 1 {
                    format!(
                        " (nor {} more of the {} asked for)",
                        missing.len() - 1,
                        digests.len()
                    )
                } else {
                    String::new()
                }
            ))
            .into());
        }
        let urls = match store.blobs().signed_urls(&digests, ttl).await {
            Ok(Some(urls)) => urls,
            Ok(None) => return unavailable(),
            // The store cannot sign with these credentials (an Azure SAS, a GCS account
            // without a key): the client streams through this server instead.
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign download URLs; answering unavailable");
                return unavailable();
            }
        };
        let expires_at_ms = self.state.clock.now_ms() + ttl.as_millis() as i64;
        Ok(Response::new(DownloadUrlsResponse {
            available: true,
            urls: digests
                .iter()
                .zip(urls)
                .map(|(d, url)| DownloadUrl {
                    digest: Some(d.to_proto()),
                    url: url.to_string(),
                    expires_at_ms,
                })
                .collect(),
        }))
    }

    async fn batch_download(
        &self,
        request: Request<BatchDownloadRequest>,
    ) -> Result<Response<BatchDownloadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Read, &namespace(&req.namespace)?)?;
        check_batch_len("digests", req.digests.len(), MAX_BATCH_ITEMS)?;
        let digests =
            Digest::list_from_proto("digests", &req.digests).map_err(ServerError::from)?;
        // Checked: sizes are client input, and a wrapping sum would let any size through.
        let total = digests
            .iter()
            .try_fold(0u64, |sum, d| sum.checked_add(d.size()));
        check_batch_bytes("digests", "bytes requested", total).map_err(|s| {
            Status::invalid_argument(format!(
                "{}; download large blobs with Download",
                s.message()
            ))
        })?;
        let store = &self.state.store;
        let missing = store.missing_blobs(digests.clone()).await?;
        // Each stored blob read whole and verified as it is read (a few at a time); each
        // damaged one gets its own DATA_LOSS (and is quarantined).
        let wanted: Vec<(Digest, bool)> =
            digests.iter().map(|d| (*d, !missing.contains(d))).collect();
        let outcomes: Vec<Result<bytes::Bytes, ServerError>> = futures::stream::iter(wanted)
            .map(|(d, stored)| {
                let store = store.clone();
                async move {
                    if stored {
                        store.read_whole_blob(d).await
                    } else {
                        Err(ServerError::NotFound(format!("blob {d} is not stored")))
                    }
                }
            })
            .buffered(BATCH_READS_AT_ONCE)
            .collect()
            .await;
        let results = digests
            .iter()
            .zip(outcomes)
            .map(|(d, outcome)| match outcome {
                Ok(data) => BatchDownloadResult {
                    digest: Some(d.to_proto()),
                    status: ok_status(),
                    data,
                },
                Err(e) => BatchDownloadResult {
                    digest: Some(d.to_proto()),
                    status: item_status(e.into()),
                    data: Default::default(),
                },
            })
            .collect();
        Ok(Response::new(BatchDownloadResponse { results }))
    }
}
