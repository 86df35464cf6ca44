//! `register`: hash a tree, upload only what the server lacks, store the manifest and
//! point a ref at it.

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::progress::bytes_bar;
use crate::tree::{manifest_of, HashedFile};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use stagecache_proto::{Digest, BATCH_BLOB_MAX_BYTES, BATCH_TOTAL_MAX_BYTES};
use std::collections::HashSet;
use std::path::Path;

/// How to register.
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// `Some(None)`: the ref must not exist yet; `Some(Some(d))`: it must point at `d`.
    pub expect: Option<Option<Digest>>,
    /// Why the ref changes, kept in its history.
    pub reason: String,
}

/// What a registration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegisterReport {
    #[serde(serialize_with = "crate::register::digest_str")]
    pub manifest: Digest,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub ref_name: Option<String>,
    pub ref_version: Option<u64>,
    pub ref_changed: bool,
}

/// A file whose bytes no longer match the digest it was registered under.
fn changed(path: &Path, detail: &str) -> ClientError {
    ClientError::Invalid(format!(
        "{} changed after it was hashed ({detail}); register again",
        path.display()
    ))
}

/// How often a register goes round again when the server collected what it relied on.
const MAX_ROUNDS: u32 = 3;

/// The server's answer when a manifest names blobs it does not hold, or a ref a manifest
/// it does not hold: FAILED_PRECONDITION saying "not stored".
fn missing_on_server(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. }
        if status.code() == tonic::Code::FailedPrecondition
            && status.message().contains("not stored"))
}

pub(crate) fn digest_str<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

impl Client {
    /// Registers the tree under `root`: returns the manifest digest. With `ref_name`
    /// empty, only the manifest is stored.
    pub async fn register(
        &self,
        root: &Path,
        ref_name: &str,
        opts: &RegisterOptions,
    ) -> Result<RegisterReport> {
        let root_buf = root.to_path_buf();
        let (manifest, hashed) = tokio::task::spawn_blocking(move || manifest_of(&root_buf))
            .await
            .map_err(|e| ClientError::Invalid(format!("hashing task failed: {e}")))??;

        // Unique blobs only: identical files upload once.
        let mut seen = HashSet::new();
        let unique: Vec<HashedFile> = hashed
            .iter()
            .filter(|h| seen.insert(h.digest))
            .cloned()
            .collect();
        // A garbage collection on the server may remove a blob between FindMissing and
        // the manifest put (only one it had not been asked for within its grace period),
        // or the manifest before the ref moves: the server then says what is missing, and
        // the register goes round again from FindMissing.
        let (mut round, mut files, mut bytes) = (0, 0, 0);
        let (digest, uploaded_files, uploaded_bytes, set) = loop {
            round += 1;
            let (f, b) = self.upload_missing(&unique, opts).await?;
            (files, bytes) = (files + f, bytes + b);
            let put = match self.put_manifest(&manifest).await {
                Err(e) if round < MAX_ROUNDS && missing_on_server(&e) => continue,
                r => r?,
            };
            if ref_name.is_empty() {
                break (put, files, bytes, None);
            }
            match self.set_ref(ref_name, put, opts.expect, &opts.reason).await {
                Err(e) if round < MAX_ROUNDS && missing_on_server(&e) => continue,
                r => break (put, files, bytes, Some(r?)),
            }
        };
        let mut report = RegisterReport {
            manifest: digest,
            files: manifest.entries().len() as u64,
            bytes: manifest.total_bytes(),
            uploaded_files,
            uploaded_bytes,
            ref_name: None,
            ref_version: None,
            ref_changed: false,
        };
        if let Some(set) = set {
            report.ref_name = Some(ref_name.to_string());
            report.ref_version = set.r#ref.map(|r| r.version);
            report.ref_changed = set.changed;
        }
        Ok(report)
    }

    /// Uploads what of `unique` the server lacks; returns the files and bytes uploaded.
    async fn upload_missing(
        &self,
        unique: &[HashedFile],
        opts: &RegisterOptions,
    ) -> Result<(u64, u64)> {
        let digests: Vec<Digest> = unique.iter().map(|h| h.digest).collect();
        let missing: HashSet<Digest> = self.find_missing(&digests).await?.into_iter().collect();
        let to_upload: Vec<HashedFile> = unique
            .iter()
            .filter(|h| missing.contains(&h.digest))
            .cloned()
            .collect();
        let uploaded_bytes: u64 = to_upload.iter().map(|h| h.digest.size()).sum();
        let bar = bytes_bar(opts.progress, uploaded_bytes, "upload");

        let uploaded_files = to_upload.len() as u64;
        let (small, large): (Vec<HashedFile>, Vec<HashedFile>) = to_upload
            .into_iter()
            .partition(|h| h.digest.size() <= BATCH_BLOB_MAX_BYTES);
        let mut batches: Vec<Vec<HashedFile>> = Vec::new();
        let mut current = Vec::new();
        let mut current_bytes = 0;
        for h in small {
            if !current.is_empty()
                && (current_bytes + h.digest.size() > BATCH_TOTAL_MAX_BYTES / 2
                    || current.len() >= 1000)
            {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += h.digest.size();
            current.push(h);
        }
        if !current.is_empty() {
            batches.push(current);
        }

        // Jobs own what they use, so `register` futures are `Send + 'static` friendly.
        // Jobs are built up front (futures are lazy) rather than in a stream closure:
        // that keeps this future `Send + 'static`, so callers can spawn it.
        let mut jobs: Vec<BoxFuture<'static, Result<()>>> = Vec::new();
        jobs.extend(batches.into_iter().map(|batch| {
            let bar = bar.clone();
            let client = self.clone();
            async move {
                // One blocking task reads the whole batch. The bytes are not hashed again
                // here: the server verifies every item, and a file that changed since it
                // was hashed comes back as that item's error, reported with its path.
                let files: Vec<(Digest, std::path::PathBuf)> = batch
                    .iter()
                    .map(|h| (h.digest, h.file.abs.clone()))
                    .collect();
                let items = tokio::task::spawn_blocking(move || {
                    files
                        .into_iter()
                        .map(|(d, path)| {
                            let data =
                                std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?;
                            if data.len() as u64 != d.size() {
                                return Err(changed(&path, "its size changed"));
                            }
                            Ok((d, bytes::Bytes::from(data)))
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .await
                .map_err(|e| ClientError::Invalid(format!("reading task failed: {e}")))??;
                let n: u64 = items.iter().map(|(d, _)| d.size()).sum();
                client.batch_upload(items).await.map_err(|e| match &e {
                    // The server's verdict on an item whose bytes do not hash to its
                    // digest: "<digest>: upload of <digest>: content is <actual>; ...".
                    ClientError::Status { status, .. }
                        if status.code() == tonic::Code::InvalidArgument
                            && status.message().contains(": content is ") =>
                    {
                        match batch
                            .iter()
                            .find(|h| status.message().starts_with(&h.digest.to_string()))
                        {
                            Some(h) => changed(&h.file.abs, "its content changed"),
                            None => e,
                        }
                    }
                    _ => e,
                })?;
                bar.inc(n);
                Ok::<(), ClientError>(())
            }
            .boxed()
        }));
        jobs.extend(large.into_iter().map(|h| {
            let bar = bar.clone();
            let client = self.clone();
            async move {
                client.upload_file(&h.file.abs, h.digest, &bar).await?;
                Ok(())
            }
            .boxed()
        }));
        stream::iter(jobs)
            .buffer_unordered(self.config().concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        bar.finish_and_clear();

        Ok((uploaded_files, uploaded_bytes))
    }
}
