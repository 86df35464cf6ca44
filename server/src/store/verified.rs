//! Verified reads: no corrupt byte is served as good.
//!
//! A read that reaches the end of a blob hashes every byte of it as the bytes pass (a read
//! from an offset hashes the unsent prefix first) and holds the last chunk back until the
//! hash matched, so a client never receives a complete blob that does not hash to its
//! digest. The hashing is the backend read's [`ReadCheck`]: a local read hashes each chunk
//! on the blocking thread that just read it, one chunk ahead of the one being sent. Bytes that do not match, or that are missing or short in the blob store, make
//! the blob *damaged*: it is dropped from the index (durably, so FindMissing reports it
//! and the next upload publishes it again), its bytes are moved aside to
//! `quarantine/<hex>` for inspection, the event is logged at error level and counted, and
//! the read ends with `DATA_LOSS`.
//!
//! A read that ends before the blob's end cannot be checked against the digest (BLAKE3
//! verifies whole contents); only its length is checked, and the client verifies the
//! blob when it has all of it.

use super::backend::{ReadCheck, StorageError};
use super::Store;
use crate::error::{Result, ServerError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use stagecache_proto::verify::Mismatch;
use stagecache_proto::{Digest, Verifier};
use std::sync::atomic::Ordering;

/// A verified read's check: hashes each chunk; the chunk that completes the blob passes
/// only when the whole blob hashed to its digest.
struct HashCheck {
    verifier: Verifier,
    verified: bool,
}

impl ReadCheck for HashCheck {
    fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
        let v = &mut self.verifier;
        v.update_here(chunk).map_err(|m| mismatch_words(&m))?;
        if v.seen() == v.expected().size() {
            v.check().map_err(|m| mismatch_words(&m))?;
            self.verified = true;
            if let Some(m) = crate::metrics::metrics() {
                m.blobs_verified.inc();
            }
        }
        Ok(())
    }

    fn verified_whole(&self) -> bool {
        self.verified
    }
}

/// State of a verified read stream.
struct Reading {
    store: Store,
    digest: Digest,
    inner: BoxStream<'static, Result<Bytes>>,
    /// Leading bytes read only to be hashed (a read from an offset), not sent.
    skip: u64,
    done: bool,
}

/// The check of a read of all of `d`, from its first byte: every byte hashed, and the
/// chunk that completes the blob passed only when the whole hashed to `d`.
pub(crate) fn verifying(d: Digest) -> Box<dyn ReadCheck> {
    Box::new(HashCheck {
        verifier: Verifier::new(d),
        verified: false,
    })
}

impl Store {
    /// The check a read of all of `d` passes through: `None` when reads are not verified.
    fn hash_check(&self, d: Digest) -> Option<Box<dyn ReadCheck>> {
        self.verifies_reads().then(|| verifying(d))
    }

    /// Streams bytes `[offset, offset + len)` of a stored blob in chunks of about `chunk`
    /// bytes, verified when the range reaches the blob's end (see the module doc). Ends
    /// with [`ServerError::DataLoss`] when the blob is damaged, after quarantining it.
    pub async fn read_blob(
        &self,
        d: Digest,
        offset: u64,
        len: u64,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let to_end = offset.checked_add(len) == Some(d.size());
        // A read to the end reads (and hashes) from the start; the rest is plain.
        let (from, skip, check) = if to_end {
            (0, offset, self.hash_check(d))
        } else {
            (offset, 0, None)
        };
        let inner = match self.blobs.read(&d, from, len + skip, chunk, check).await {
            Ok(s) => s,
            Err(e) => return Err(self.damaged_on_failure(d, e).await),
        };
        let state = Reading {
            store: self.clone(),
            digest: d,
            inner,
            skip,
            done: false,
        };
        Ok(futures::stream::unfold(state, next_verified).boxed())
    }

    /// Reads all of a stored blob from the store of record (past any local tier, filling
    /// none), verified whatever `--unverified-reads` says: a scrub's read. Ends with
    /// [`ServerError::DataLoss`] when the blob is damaged, after quarantining it.
    pub async fn read_blob_at_origin(&self, d: Digest) -> Result<()> {
        let read = async {
            let mut s = self
                .blobs
                .read_origin(&d, stagecache_proto::CHUNK_BYTES, Some(verifying(d)))
                .await?;
            while let Some(chunk) = s.next().await {
                chunk?;
            }
            Ok::<_, ServerError>(())
        };
        match read.await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.damaged_on_failure(d, e).await),
        }
    }

    /// A whole (small) blob in one buffer, verified: a damaged one is quarantined and
    /// answered with [`ServerError::DataLoss`].
    pub async fn read_whole_blob(&self, d: Digest) -> Result<Bytes> {
        let whole = async {
            let size = d.size().max(1) as usize;
            let check = self.hash_check(d);
            let mut s = self.blobs.read(&d, 0, d.size(), size, check).await?;
            // One chunk of the whole size: usually one buffer, handed over without a copy.
            let mut chunks = Vec::new();
            while let Some(chunk) = s.next().await {
                chunks.push(chunk?);
            }
            Ok::<_, ServerError>(match chunks.len() {
                0 => Bytes::new(),
                1 => chunks.pop().expect("one chunk"),
                _ => chunks.concat().into(),
            })
        };
        match whole.await {
            Ok(data) => Ok(data),
            Err(e) => Err(self.damaged_on_failure(d, e).await),
        }
    }

    /// A read of `d` failed: bytes missing or short in the blob store make the blob
    /// damaged (quarantined); other failures (an unreachable backend) are passed on.
    pub async fn damaged_on_failure(&self, d: Digest, e: ServerError) -> ServerError {
        match e {
            ServerError::Storage(StorageError::NotFound { .. }) => {
                // A garbage collection removed it while it was read: not damage.
                let entry = self
                    .with_index(move |i| i.blob_entries(&[d]))
                    .await
                    .ok()
                    .and_then(|e| e.into_iter().next().flatten());
                if entry.is_none_or(|e| e.deleting) {
                    return ServerError::NotFound(format!(
                        "blob {d} is not stored (garbage collection removed it)"
                    ));
                }
                self.quarantine_damaged(d, "its bytes are missing from the blob store")
                    .await
            }
            ServerError::Storage(StorageError::Short { .. }) => {
                let why = format!(
                    "the blob store's copy is shorter than its {} bytes",
                    d.size()
                );
                self.quarantine_damaged(d, &why).await
            }
            ServerError::Storage(StorageError::Damaged { why, .. }) => {
                self.quarantine_damaged(d, &why).await
            }
            ServerError::DataLoss(why) => self.quarantine_damaged(d, &why).await,
            other => other,
        }
    }

    /// Drops a damaged blob from the index, moves its bytes aside, logs and counts it.
    /// Returns the `DATA_LOSS` error that the reader gets.
    pub async fn quarantine_damaged(&self, d: Digest, why: &str) -> ServerError {
        self.damaged_blobs.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = crate::metrics::metrics() {
            m.blobs_damaged.inc();
        }
        tracing::error!(digest = %d, reason = why, "damaged blob: dropped from the index and quarantined");
        // Index first: a crash between the two leaves bytes that a new upload overwrites,
        // never an index entry for bytes that are gone.
        let dropped = self
            .with_index(move |i| i.remove_blobs(&[d]))
            .await
            .map(|bytes| {
                if let Some(s) = self.space.get() {
                    s.removed(bytes);
                }
            });
        let moved = match &dropped {
            Ok(()) => self.blobs.quarantine(&d).await,
            Err(_) => Ok(()),
        };
        if let Err(e) = dropped.and(moved) {
            tracing::error!(digest = %d, error = %e, "could not quarantine a damaged blob");
        }
        ServerError::DataLoss(format!(
            "blob {d} is damaged in the store ({why}); it was quarantined: upload it again"
        ))
    }

    /// Blobs found damaged and quarantined since the server started.
    pub fn damaged_blobs(&self) -> u64 {
        self.damaged_blobs.load(Ordering::Relaxed)
    }
}

/// One step of a verified read: the next chunk to send, or the end, or `DATA_LOSS`.
async fn next_verified(mut st: Reading) -> Option<(Result<Bytes>, Reading)> {
    loop {
        if st.done {
            return None;
        }
        let chunk = match st.inner.next().await? {
            Ok(c) => c,
            Err(e) => {
                st.done = true;
                let e = st.store.damaged_on_failure(st.digest, e).await;
                return Some((Err(e), st));
            }
        };
        let n = chunk.len() as u64;
        if st.skip >= n {
            st.skip -= n;
            continue;
        }
        let out = chunk.slice(st.skip as usize..);
        st.skip = 0;
        return Some((Ok(out), st));
    }
}

fn mismatch_words(m: &Mismatch) -> String {
    match m {
        Mismatch::Hash { actual, .. } => format!("its bytes hash to {actual}"),
        other => other.to_string(),
    }
}
