//! One writer per blob store. A server holds `lease.json` in the blob store while it
//! runs, renewing it every few seconds; another server that finds a fresh lease refuses to
//! start, naming the holder, unless told `--take-over` (the operator knows the old one is
//! dead). A server that finds on renewal that its lease was taken stops acknowledging
//! writes ("fenced"): two servers never both extend the journal's history.
//!
//! Writes of the lease are conditional where the backend can (`PutMode::Update` on the
//! version read); the local file system cannot, and overwrites (two servers on one
//! machine starting in the same instant is the only window, and the journal's
//! create-only entries still stop the second writer at its first write).

use super::blobs::BlobStore;
use crate::error::{Result, ServerError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const LEASE: &str = "lease.json";
/// A lease not renewed for this long is the lease of a dead server.
pub const LEASE_TTL_MS: i64 = 30_000;
/// How often a holder renews.
pub const RENEW_EVERY_MS: u64 = 5_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LeaseBody {
    /// `host:pid:random`, unique per server start.
    pub holder: String,
    pub started_at_ms: i64,
    pub renewed_at_ms: i64,
}

/// The lease this server holds.
pub struct Lease {
    blobs: Arc<BlobStore>,
    body: std::sync::Mutex<LeaseBody>,
    /// The lease was taken by another server: refuse writes.
    fenced: AtomicBool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lease_bytes(body: &LeaseBody) -> Result<bytes::Bytes> {
    serde_json::to_vec(body)
        .map(bytes::Bytes::from)
        .map_err(|e| ServerError::Internal(format!("lease: {e}")))
}

fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[..8])
}

impl Lease {
    /// Takes the lease, or refuses naming the live holder (`take_over`: take it anyway).
    ///
    /// `data_dir_id` names the data dir (its index): a lease held under the same id is this
    /// data dir's previous server, which is dead for sure (the index is opened
    /// exclusively), so a restart after a crash takes it back without waiting.
    pub async fn acquire(
        blobs: Arc<BlobStore>,
        data_dir_id: &str,
        take_over: bool,
    ) -> Result<Arc<Self>> {
        let now = now_ms();
        let current = blobs.get_versioned(LEASE).await?;
        if let Some((bytes, _)) = &current {
            if let Ok(held) = serde_json::from_slice::<LeaseBody>(bytes) {
                let age = now - held.renewed_at_ms;
                let ours = held.holder.starts_with(&format!("{data_dir_id}@"));
                if age < LEASE_TTL_MS && !take_over && !ours {
                    return Err(ServerError::FailedPrecondition(format!(
                        "the blob store {} is held by another server, {} (lease renewed {:.1} s ago); \
                         stop it first, or start with --take-over if you know it is dead",
                        blobs.description(),
                        held.holder,
                        age as f64 / 1000.0
                    )));
                }
                if take_over || age >= LEASE_TTL_MS {
                    tracing::warn!(previous = %held.holder, age_s = age / 1000, take_over, "taking over the blob store's lease");
                }
            }
        }
        let body = LeaseBody {
            holder: format!("{data_dir_id}@{}", holder_id()),
            started_at_ms: now,
            renewed_at_ms: now,
        };
        let version = current.map(|(_, v)| v);
        let written = blobs
            .put_conditional(LEASE, lease_bytes(&body)?, version)
            .await?;
        if !written {
            return Err(ServerError::FailedPrecondition(format!(
                "the blob store {}: another server took the lease at the same moment; retry",
                blobs.description()
            )));
        }
        tracing::info!(holder = %body.holder, "holding the blob store's lease");
        Ok(Arc::new(Lease {
            blobs,
            body: std::sync::Mutex::new(body),
            fenced: AtomicBool::new(false),
        }))
    }

    pub fn holder(&self) -> String {
        self.body
            .lock()
            .map(|b| b.holder.clone())
            .unwrap_or_default()
    }

    /// Stops this server's writes (another server writes to the store).
    pub fn fence(&self) {
        if !self.fenced.swap(true, Ordering::SeqCst) {
            tracing::error!(holder = %self.holder(), "lost the blob store's lease: another server writes to it; no more writes are acknowledged here");
        }
    }

    /// `Err` once another server took the lease: no more acknowledged writes here.
    pub fn check(&self) -> Result<()> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(ServerError::Unavailable(format!(
                "this server no longer holds the blob store {} (another server took it over); it acknowledges no writes",
                self.blobs.description()
            )));
        }
        Ok(())
    }

    /// Renews once: fences this server if the lease is someone else's now.
    pub async fn renew(&self) -> Result<()> {
        let me = self.holder();
        let current = self.blobs.get_versioned(LEASE).await?;
        let held = current
            .as_ref()
            .and_then(|(b, _)| serde_json::from_slice::<LeaseBody>(b).ok());
        if held.as_ref().is_none_or(|h| h.holder != me) {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(ServerError::Unavailable(format!(
                "lost the blob store's lease to {}",
                held.map(|h| h.holder)
                    .unwrap_or_else(|| "nobody (deleted)".into())
            )));
        }
        let body = {
            let mut b = self
                .body
                .lock()
                .map_err(|_| ServerError::Internal("lease lock poisoned".into()))?;
            b.renewed_at_ms = now_ms();
            b.clone()
        };
        let written = self
            .blobs
            .put_conditional(LEASE, lease_bytes(&body)?, current.map(|(_, v)| v))
            .await?;
        if !written {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(ServerError::Unavailable(
                "lost the blob store's lease while renewing it".into(),
            ));
        }
        Ok(())
    }

    /// Renews until `stop`; logs (and fences) when the lease is lost.
    pub async fn keep(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(RENEW_EVERY_MS)) => {}
            }
            if let Err(e) = self.renew().await {
                tracing::error!(error = %e, "blob store lease");
                if self.fenced.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }

    /// Gives the lease up (clean shutdown), so the next server need not wait.
    pub async fn release(&self) {
        if self.fenced.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.blobs.delete_object(LEASE).await {
            tracing::warn!(error = %e, "could not release the blob store's lease");
        }
    }
}
