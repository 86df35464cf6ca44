//! Verified reads: no corrupt byte is served as good.
//!
//! A read that reaches the end of a blob hashes every byte of it as the bytes pass (a read
//! from an offset hashes the unsent prefix first) and holds the last chunk back until the
//! hash matched, so a client never receives a complete blob that does not hash to its
//! digest. Bytes that do not match, or that are missing or short in the blob store, make
//! the blob *damaged*: it is dropped from the index (durably, so FindMissing reports it
//! and the next upload publishes it again), its bytes are moved aside to
//! `quarantine/<hex>` for inspection, the event is logged at error level and counted, and
//! the read ends with `DATA_LOSS`.
//!
//! A read that ends before the blob's end cannot be checked against the digest (BLAKE3
//! verifies whole contents); only its length is checked, and the client verifies the
//! blob when it has all of it.

use super::backend::StorageError;
use super::Store;
use crate::error::{Result, ServerError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use stagecache_proto::verify::Mismatch;
use stagecache_proto::{Digest, Verifier};
use std::sync::atomic::Ordering;

/// State of a verified read stream.
struct Reading {
    store: Store,
    digest: Digest,
    inner: BoxStream<'static, Result<Bytes>>,
    /// `None` once the whole blob verified, or when the range cannot be verified.
    verifier: Option<Verifier>,
    /// Leading bytes read only to be hashed (a read from an offset), not sent.
    skip: u64,
    done: bool,
}

impl Store {
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
        let (from, skip) = if to_end { (0, offset) } else { (offset, 0) };
        let inner = match self.blobs.read(&d, from, len + skip, chunk).await {
            Ok(s) => s,
            Err(e) => return Err(self.damaged_on_failure(d, e).await),
        };
        let state = Reading {
            store: self.clone(),
            digest: d,
            inner,
            verifier: (to_end && self.verifies_reads()).then(|| Verifier::new(d)),
            skip,
            done: false,
        };
        Ok(futures::stream::unfold(state, next_verified).boxed())
    }

    /// Checks whole blobs read for a batch, on a blocking thread (hashing megabytes would
    /// stall the runtime); quarantines each that does not hash to its digest.
    pub async fn verify_whole(&self, blobs: Vec<(Digest, Bytes)>) -> Result<Vec<Result<Bytes>>> {
        if !self.verifies_reads() {
            return Ok(blobs.into_iter().map(|(_, data)| Ok(data)).collect());
        }
        let checked = tokio::task::spawn_blocking(move || {
            blobs
                .into_iter()
                .map(|(d, data)| {
                    let actual = Digest::of_bytes(&data);
                    (d, data, actual)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut out = Vec::with_capacity(checked.len());
        for (d, data, actual) in checked {
            if actual == d {
                if let Some(m) = crate::metrics::metrics() {
                    m.blobs_verified.inc();
                }
                out.push(Ok(data));
            } else {
                let why = format!("its bytes hash to {actual}");
                out.push(Err(self.quarantine_damaged(d, &why).await));
            }
        }
        Ok(out)
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
        let chunk = match st.inner.next().await {
            None => return None,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                st.done = true;
                let e = st.store.damaged_on_failure(st.digest, e).await;
                return Some((Err(e), st));
            }
        };
        if let Some(verifier) = st.verifier.take() {
            // Hash on a blocking thread; the last chunk is released only after the whole
            // blob's hash matched.
            let hashed = chunk.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let mut v = verifier;
                match v.update(&hashed) {
                    Err(m) => Err(m),
                    Ok(()) if v.seen() == v.expected().size() => v.finish().map(|_| {
                        if let Some(m) = crate::metrics::metrics() {
                            m.blobs_verified.inc();
                        }
                        None
                    }),
                    Ok(()) => Ok(Some(v)),
                }
            })
            .await;
            let failed: Option<String> = match outcome {
                Ok(Ok(next)) => {
                    st.verifier = next;
                    None
                }
                Ok(Err(m)) => Some(mismatch_words(&m)),
                Err(e) => {
                    st.done = true;
                    return Some((Err(e.into()), st));
                }
            };
            if let Some(why) = failed {
                st.done = true;
                let e = st.store.quarantine_damaged(st.digest, &why).await;
                return Some((Err(e), st));
            }
        }
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
