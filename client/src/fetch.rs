//! `fetch`: materialise a manifest into a directory. Every file is verified before it is
//! renamed into place; files already present with the right digest are kept; an
//! interrupted download resumes from the bytes already on disk.

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::progress::bytes_bar;
use crate::tree::hash_file;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use stagecache_proto::{
    Digest, Manifest, ManifestEntry, Verifier, BATCH_BLOB_MAX_BYTES, BATCH_TOTAL_MAX_BYTES,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How to fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Stream every blob through the server even when it offers direct downloads.
    pub no_direct: bool,
}

/// What a fetch did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    #[serde(serialize_with = "crate::register::digest_str")]
    pub manifest: Digest,
    pub files: u64,
    pub bytes: u64,
    pub downloaded_files: u64,
    pub downloaded_bytes: u64,
    /// Files already present with the right digest.
    pub skipped_files: u64,
    /// Bytes not downloaded again because a partial download was resumed.
    pub resumed_bytes: u64,
    /// Bytes downloaded straight from the blob store with URLs the server signed
    /// (`--direct-downloads` servers), rather than through the server.
    pub direct_bytes: u64,
}

/// Where an entry goes, and where it is staged until verified.
#[derive(Clone)]
struct Target {
    entry: ManifestEntry,
    dest: PathBuf,
    partial: PathBuf,
}

/// Chunks received ahead of the writer of a large file (1 MiB each).
const WRITE_AHEAD_CHUNKS: usize = 8;

fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.stagecache-partial"))
}

#[cfg(unix)]
fn set_mode(path: &Path, executable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ClientError::io(path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _executable: bool) -> Result<()> {
    Ok(())
}

/// Whether `dest` already holds exactly this entry's bytes (its mode is fixed if not).
fn already_present(t: &Target) -> Result<bool> {
    let Ok(meta) = std::fs::symlink_metadata(&t.dest) else {
        return Ok(false);
    };
    if !meta.is_file() || meta.len() != t.entry.digest.size() {
        return Ok(false);
    }
    if hash_file(&t.dest, meta.len())? != t.entry.digest {
        return Ok(false);
    }
    set_mode(&t.dest, t.entry.executable)?;
    Ok(true)
}

/// Moves a verified staging file into place with the right mode.
fn publish(t: &Target) -> Result<()> {
    set_mode(&t.partial, t.entry.executable)?;
    if let Ok(meta) = std::fs::symlink_metadata(&t.dest) {
        if meta.is_dir() {
            return Err(ClientError::Invalid(format!(
                "{} is a directory; the manifest has a file there",
                t.dest.display()
            )));
        }
    }
    std::fs::rename(&t.partial, &t.dest).map_err(|e| ClientError::io(&t.dest, e))
}

impl Client {
    /// Downloads the manifest `digest` into `out`.
    pub async fn fetch(
        &self,
        digest: Digest,
        out: &Path,
        opts: &FetchOptions,
    ) -> Result<FetchReport> {
        let manifest = self.get_manifest(digest).await?;
        self.fetch_manifest(&manifest, out, opts).await
    }

    /// Materialises an already retrieved manifest into `out`.
    pub async fn fetch_manifest(
        &self,
        manifest: &Manifest,
        out: &Path,
        opts: &FetchOptions,
    ) -> Result<FetchReport> {
        std::fs::create_dir_all(out).map_err(|e| ClientError::io(out, e))?;
        let targets: Vec<Target> = manifest
            .entries()
            .iter()
            .cloned()
            .map(|entry| {
                // Entry paths passed the path rules: relative, no "..", so they stay in `out`.
                let dest = out.join(&entry.path);
                let partial = partial_path(&dest);
                Target {
                    entry,
                    dest,
                    partial,
                }
            })
            .collect();
        for t in &targets {
            if let Some(parent) = t.dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ClientError::io(parent, e))?;
            }
        }

        // Check what is already there, on all cores.
        let present: Vec<bool> = {
            let checks = targets.clone();
            tokio::task::spawn_blocking(move || {
                use rayon::prelude::*;
                checks
                    .par_iter()
                    .map(already_present)
                    .collect::<Result<Vec<bool>>>()
            })
            .await
            .map_err(|e| ClientError::Invalid(format!("checking task failed: {e}")))??
        };
        let files = targets.len() as u64;
        let needed: Vec<Target> = targets
            .into_iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(t, _)| t)
            .collect();
        let downloaded_files = needed.len() as u64;
        let downloaded_bytes: u64 = needed.iter().map(|t| t.entry.digest.size()).sum();
        let bar = bytes_bar(opts.progress, downloaded_bytes, "download");

        let (small, large): (Vec<Target>, Vec<Target>) = needed
            .into_iter()
            .partition(|t| t.entry.digest.size() <= BATCH_BLOB_MAX_BYTES);
        // Large blobs straight from the blob store, where the server signs URLs for them
        // (small ones come many to a call through the server either way).
        let mut urls: Vec<Option<url::Url>> = vec![None; large.len()];
        if !opts.no_direct && !large.is_empty() {
            let digests: Vec<Digest> = large.iter().map(|t| t.entry.digest).collect();
            for (n, chunk) in digests
                .chunks(stagecache_proto::MAX_BATCH_ITEMS)
                .enumerate()
            {
                let asked = match self.download_urls(chunk).await {
                    Ok(a) => a,
                    // A blob the server does not hold fails the fetch either way.
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "no direct downloads: the server could not give URLs; fetching through it");
                        None
                    }
                };
                match asked {
                    Some(got) => {
                        let at = n * stagecache_proto::MAX_BATCH_ITEMS;
                        for (i, u) in got.into_iter().enumerate() {
                            urls[at + i] = Some(u);
                        }
                    }
                    None => break,
                }
            }
        }
        let direct = Direct {
            http: urls.iter().any(Option::is_some).then(reqwest::Client::new),
            bytes: Default::default(),
        };
        let mut batches: Vec<Vec<Target>> = Vec::new();
        let mut current: Vec<Target> = Vec::new();
        let mut current_bytes = 0;
        for t in small {
            if !current.is_empty()
                && (current_bytes + t.entry.digest.size() > BATCH_TOTAL_MAX_BYTES / 2
                    || current.len() >= 1000)
            {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += t.entry.digest.size();
            current.push(t);
        }
        if !current.is_empty() {
            batches.push(current);
        }

        // Jobs own what they use, so `fetch` futures are `Send + 'static` friendly.
        // Jobs are built up front (futures are lazy) rather than in a stream closure:
        // that keeps this future `Send + 'static`, so callers can spawn it.
        let mut jobs: Vec<BoxFuture<'static, Result<u64>>> = Vec::new();
        jobs.extend(batches.into_iter().map(|batch| {
            let bar = bar.clone();
            let client = self.clone();
            async move {
                client.fetch_batch(&batch).await?;
                bar.inc(batch.iter().map(|t| t.entry.digest.size()).sum());
                Ok::<u64, ClientError>(0)
            }
            .boxed()
        }));
        jobs.extend(large.into_iter().zip(urls).map(|(t, url)| {
            let bar = bar.clone();
            let client = self.clone();
            let direct = direct.clone();
            async move { client.fetch_large(&t, &bar, url, &direct).await }.boxed()
        }));
        let resumed: Vec<u64> = stream::iter(jobs)
            .buffer_unordered(self.config().concurrency.max(1))
            .try_collect()
            .await?;
        bar.finish_and_clear();

        Ok(FetchReport {
            manifest: manifest.digest(),
            files,
            bytes: manifest.total_bytes(),
            downloaded_files,
            downloaded_bytes,
            skipped_files: files - downloaded_files,
            resumed_bytes: resumed.iter().sum(),
            direct_bytes: direct.bytes.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    async fn fetch_batch(&self, batch: &[Target]) -> Result<()> {
        let digests: Vec<Digest> = batch.iter().map(|t| t.entry.digest).collect();
        // Empty blobs need no round trip.
        let datas = if digests.iter().all(|d| d.size() == 0) {
            vec![bytes::Bytes::new(); digests.len()]
        } else {
            self.batch_download(&digests).await?
        };
        // File writes block: on a blocking thread, so the runtime keeps the network moving.
        let files: Vec<(Target, bytes::Bytes)> = batch.iter().cloned().zip(datas).collect();
        tokio::task::spawn_blocking(move || {
            for (t, data) in files {
                let mut f = std::fs::File::create(&t.partial)
                    .map_err(|e| ClientError::io(&t.partial, e))?;
                f.write_all(&data)
                    .map_err(|e| ClientError::io(&t.partial, e))?;
                drop(f);
                publish(&t)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ClientError::Invalid(format!("writing task failed: {e}")))?
    }

    /// Streams one large blob into its staging file, resuming from what is there, and
    /// publishes it once verified. Returns the bytes resumed rather than downloaded.
    ///
    /// The staging file survives an interrupted download (to resume from), never a failed
    /// one: after an integrity failure (bytes that do not hash to the digest, or the
    /// server's DATA_LOSS) no byte of it is left behind.
    async fn fetch_large(
        &self,
        t: &Target,
        bar: &ProgressBar,
        url: Option<url::Url>,
        direct: &Direct,
    ) -> Result<u64> {
        let source = Source { url, direct };
        let outcome = self.fetch_large_verified(t, bar, &source).await;
        if let Err(e @ ClientError::Verify(_)) = &outcome {
            match std::fs::remove_file(&t.partial) {
                Ok(()) => {
                    tracing::debug!(path = %t.partial.display(), error = %e, "integrity failure: partial file removed")
                }
                Err(re) if re.kind() == std::io::ErrorKind::NotFound => {}
                Err(re) => {
                    tracing::warn!(path = %t.partial.display(), error = %re, "cannot remove the partial file of a failed download")
                }
            }
        }
        outcome
    }

    async fn fetch_large_verified(
        &self,
        t: &Target,
        bar: &ProgressBar,
        source: &Source<'_>,
    ) -> Result<u64> {
        let first = match self.fetch_large_once(t, bar, true, source).await {
            Ok((resumed, Ok(()))) => return Ok(resumed),
            Ok((resumed, Err(m))) => (resumed, m.to_string()),
            // Bytes straight from the object store that came short or long: the server
            // has not seen them.
            Err(ClientError::Verify(m)) if source.url.is_some() => (0, m),
            Err(e) => return Err(e),
        };
        // Only the whole file's hash is known, so bad bytes in a resumed prefix show only
        // at the end; and bad bytes straight from the object store were never checked by
        // the server. Start over once from nothing, through the server: it verifies what
        // it sends and quarantines a damaged blob, so the next register stores it again.
        let (resumed, m) = first;
        if resumed == 0 && source.url.is_none() {
            return Err(ClientError::Verify(format!("{}: {m}", t.dest.display())));
        }
        tracing::warn!(path = %t.dest.display(), resumed, mismatch = %m, "download failed verification; downloading again from the start, through the server");
        bar.set_position(bar.position().saturating_sub(t.entry.digest.size()));
        let through_server = Source {
            url: None,
            direct: source.direct,
        };
        match self
            .fetch_large_once(t, bar, false, &through_server)
            .await?
        {
            (_, Ok(())) => Ok(0),
            (_, Err(m)) => Err(ClientError::Verify(format!("{}: {m}", t.dest.display()))),
        }
    }

    /// One attempt: resume (or not) and stream to the end. The verifier's verdict is
    /// returned rather than raised so the caller can retry from scratch.
    async fn fetch_large_once(
        &self,
        t: &Target,
        bar: &ProgressBar,
        resume: bool,
        source: &Source<'_>,
    ) -> Result<(u64, Result<(), stagecache_proto::verify::Mismatch>)> {
        let digest = t.entry.digest;
        let partial = t.partial.clone();
        // Hash what an earlier, interrupted fetch left, so the verifier covers every byte.
        let (verifier, mut file, resumed) = tokio::task::spawn_blocking(move || {
            let mut verifier = Verifier::new(digest);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&partial)
                .map_err(|e| ClientError::io(&partial, e))?;
            let len = file
                .metadata()
                .map_err(|e| ClientError::io(&partial, e))?
                .len();
            if !resume || len > digest.size() {
                file.set_len(0).map_err(|e| ClientError::io(&partial, e))?;
                return Ok::<_, ClientError>((verifier, file, 0));
            }
            let mut buf = vec![0u8; 1024 * 1024];
            let mut kept = 0u64;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| ClientError::io(&partial, e))?;
                if n == 0 {
                    break;
                }
                if verifier.update(&buf[..n]).is_err() {
                    break;
                }
                kept += n as u64;
            }
            file.set_len(kept)
                .map_err(|e| ClientError::io(&partial, e))?;
            Ok((verifier, file, kept))
        })
        .await
        .map_err(|e| ClientError::Invalid(format!("resume task failed: {e}")))??;
        bar.inc(resumed);
        if resumed > 0 {
            tracing::info!(path = %t.dest.display(), resumed, "resuming download");
        }
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(resumed))
            .map_err(|e| ClientError::io(&t.partial, e))?;
        // A writer on the blocking pool hashes and writes each chunk, in order, straight
        // from the received buffer, while the next chunks arrive: receiving overlaps
        // hashing and writing (tokio's `File` would also copy every chunk).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_AHEAD_CHUNKS);
        let partial = t.partial.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let (mut verifier, mut file) = (verifier, file);
            while let Some(data) = rx.blocking_recv() {
                verifier.update(&data).map_err(|m| m.to_string())?;
                file.write_all(&data)
                    .map_err(|e| format!("{}: {e}", partial.display()))?;
            }
            drop(file);
            Ok::<_, String>(verifier.finish().map(|_| ()))
        });

        let policy = self.config().retry;
        let mut retry = 0;
        let mut received = resumed;
        let mut writer_gone = false;
        // Straight from the blob store while its URL works; through the server after.
        let mut direct = source.url.as_ref().zip(source.direct.http.as_ref());
        while received < digest.size() && !writer_gone {
            let offset = received;
            let outcome: Result<(), tonic::Status> = if let Some((url, http)) = direct {
                let got = direct_range(
                    http,
                    url,
                    offset,
                    digest.size(),
                    self.config().stream_idle_timeout,
                    &tx,
                    |n| {
                        received += n;
                        bar.inc(n);
                        source
                            .direct
                            .bytes
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    },
                )
                .await;
                match got {
                    Ok(DirectEnd::Done) => Ok(()),
                    Ok(DirectEnd::WriterGone) => {
                        writer_gone = true;
                        Ok(())
                    }
                    Ok(DirectEnd::Refused(why)) => {
                        tracing::warn!(path = %t.dest.display(), at = received, reason = %why, "direct download refused; going on through the server");
                        direct = None;
                        continue;
                    }
                    Err(status) => Err(status),
                }
            } else {
                async {
                    let mut s = self.download_stream(digest, offset, 0).await?;
                    loop {
                        let msg =
                            tokio::time::timeout(self.config().stream_idle_timeout, s.message())
                                .await
                                .map_err(|_| tonic::Status::unavailable("download stalled"))??;
                        let Some(msg) = msg else { return Ok(()) };
                        if msg.offset != received {
                            return Err(tonic::Status::data_loss(format!(
                                "chunk at offset {} where {received} was expected",
                                msg.offset
                            )));
                        }
                        let n = msg.data.len() as u64;
                        if received + n > digest.size() {
                            return Err(tonic::Status::data_loss(format!(
                                "more than the blob's {} bytes",
                                digest.size()
                            )));
                        }
                        if tx.send(msg.data).await.is_err() {
                            // The writer stopped on an error; it is reported below.
                            writer_gone = true;
                            return Ok(());
                        }
                        received += n;
                        bar.inc(n);
                    }
                }
                .await
            };
            match outcome {
                Ok(()) if received < digest.size() && !writer_gone => {
                    return Err(ClientError::Verify(format!(
                        "blob {digest}: stream ended after {received} bytes"
                    )))
                }
                Ok(()) => {}
                Err(s) if crate::retry::retryable(&s) && retry + 1 < policy.attempts => {
                    tracing::warn!(path = %t.dest.display(), at = received, "download interrupted; resuming");
                    tokio::time::sleep(policy.backoff(retry)).await;
                    retry += 1;
                }
                // The object store kept breaking off: the rest through the server.
                Err(s) if crate::retry::retryable(&s) && direct.is_some() => {
                    tracing::warn!(path = %t.dest.display(), at = received, error = %s.message(), "direct download keeps failing; going on through the server");
                    direct = None;
                    retry = 0;
                }
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    return Err(ClientError::Verify(format!(
                        "blob {digest}: {}",
                        status.message()
                    )))
                }
                Err(status) => {
                    return Err(ClientError::Status {
                        call: "Download",
                        status,
                    })
                }
            }
        }
        drop(tx);
        let verdict = writer
            .await
            .map_err(|e| ClientError::Invalid(format!("writing task failed: {e}")))?
            .map_err(ClientError::Invalid)?;
        if let Err(m) = verdict {
            return Ok((resumed, Err(m)));
        }
        publish(t)?;
        Ok((resumed, Ok(())))
    }
}

/// What direct downloads of one fetch share: an HTTP client (when the server gave URLs)
/// and the count of bytes that came straight from the blob store.
#[derive(Clone)]
struct Direct {
    http: Option<reqwest::Client>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Where one large blob comes from: its signed URL, if any, else the server.
struct Source<'a> {
    url: Option<url::Url>,
    direct: &'a Direct,
}

/// How a direct download ended without an error to retry.
enum DirectEnd {
    /// The response ended (the caller checks that every byte came).
    Done,
    /// The writer stopped (its error is reported by the caller).
    WriterGone,
    /// The blob store refused the URL (expired, say) or could not be reached: go on
    /// through the server.
    Refused(String),
}

/// Bytes `[offset, size)` of a blob from its signed URL, regrouped into chunks of about
/// `CHUNK_BYTES` for the writer; `took(n)` is told of every chunk sent. A connection
/// broken in the middle of the body is `UNAVAILABLE` (retried from where it stopped, like
/// a Download); a store that cannot be reached or refuses the URL is
/// [`DirectEnd::Refused`] (the fetch goes on through the server).
async fn direct_range(
    http: &reqwest::Client,
    url: &url::Url,
    offset: u64,
    size: u64,
    idle: std::time::Duration,
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    mut took: impl FnMut(u64),
) -> std::result::Result<DirectEnd, tonic::Status> {
    let broken = |e: reqwest::Error| tonic::Status::unavailable(format!("direct download: {e}"));
    // No answer at all (an agent that cannot reach the object store, say): go on through
    // the server rather than fail the fetch. A body broken half-way is retried below.
    let resp = match tokio::time::timeout(
        idle,
        http.get(url.clone())
            .header(reqwest::header::RANGE, format!("bytes={offset}-"))
            .send(),
    )
    .await
    {
        Err(_) => return Ok(DirectEnd::Refused("the blob store did not answer".into())),
        Ok(Err(e)) => {
            return Ok(DirectEnd::Refused(format!(
                "cannot reach the blob store: {e}"
            )))
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    // A whole-object answer to a ranged request would start over: only from 0.
    if !(status == 206 || (status == 200 && offset == 0)) {
        return Ok(DirectEnd::Refused(format!("HTTP {status}")));
    }
    let mut body = resp.bytes_stream();
    let chunk = stagecache_proto::CHUNK_BYTES;
    let mut buf = bytes::BytesMut::with_capacity(chunk);
    let mut at = offset;
    loop {
        let next = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| tonic::Status::unavailable("direct download stalled"))?;
        let piece = match next {
            Some(p) => Some(p.map_err(broken)?),
            None => None,
        };
        if let Some(p) = &piece {
            if at + buf.len() as u64 + p.len() as u64 > size {
                return Err(tonic::Status::data_loss(format!(
                    "the blob store sent more than the blob's {size} bytes"
                )));
            }
            buf.extend_from_slice(p);
        }
        if buf.len() >= chunk || (piece.is_none() && !buf.is_empty()) {
            let out = buf.split().freeze();
            let n = out.len() as u64;
            if tx.send(out).await.is_err() {
                return Ok(DirectEnd::WriterGone);
            }
            at += n;
            took(n);
        }
        if piece.is_none() {
            return Ok(DirectEnd::Done);
        }
    }
}
