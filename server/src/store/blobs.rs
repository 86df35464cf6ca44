//! Blob bytes in a [`Backend`], laid out as `cas/<2 hex>/<64 hex>`, beside the journal
//! (`journal/`), the lease (`lease.json`) and damaged blobs moved aside (`quarantine/`).
//!
//! A blob is written so that it becomes visible only when complete: small blobs are
//! verified in memory and then put atomically; large ones stream into an upload whose
//! publication happens only after the hash checked out, and which is aborted otherwise.

use super::backend::cloud::CloudBackend;
use super::backend::local::LocalBackend;
use super::backend::metered::Metered;
use super::backend::{Backend, PutMode, ReadCheck, StorageError, Upload, Version, Written};
use crate::error::{Result, ServerError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use stagecache_proto::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Blobs up to this size are buffered, verified and put in one request.
pub const SINGLE_PUT_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The content-addressed layout over a [`Backend`].
pub struct BlobStore {
    backend: Arc<dyn Backend>,
}

impl BlobStore {
    /// Opens the backend named by `url`: `file:///abs/dir` (or no URL: `<data_dir>/blobs`),
    /// `memory://` (tests), or any URL `object_store` understands (`az://`, `s3://`,
    /// `gs://`, `https://<account>.blob.core.windows.net/<container>`), configured from
    /// the usual `AZURE_*`, `AWS_*` and `GOOGLE_*` environment variables.
    pub fn open(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        Self::open_configured(url, data_dir, &[])
    }

    /// [`BlobStore::open`] with options from the configuration file as well; an
    /// environment variable beats the file's option of the same name.
    pub fn open_configured(
        url: Option<&str>,
        data_dir: &Path,
        file_options: &[(String, String)],
    ) -> Result<Self> {
        let env = std::env::vars().filter_map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            (k.starts_with("azure_") || k.starts_with("aws_") || k.starts_with("google_"))
                .then_some((k, v))
        });
        let mut options: std::collections::BTreeMap<String, String> = file_options
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        options.extend(env);
        Self::open_with(url, data_dir, options)
    }

    /// [`BlobStore::open`] with the cloud options given (lower-case `azure_*`, `aws_*`,
    /// `google_*` keys) rather than read from the environment.
    pub fn open_with(
        url: Option<&str>,
        data_dir: &Path,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let local = |root: PathBuf| -> Result<Self> {
            Ok(Self::over(Arc::new(Metered::new(LocalBackend::open(
                root,
            )?))))
        };
        let Some(url) = url else {
            return local(data_dir.join("blobs"));
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            ServerError::InvalidArgument(format!("--blob-store {url:?} is not a URL: {e}"))
        })?;
        match parsed.scheme() {
            "file" => {
                let path = parsed.to_file_path().map_err(|_| {
                    ServerError::InvalidArgument(format!(
                        "--blob-store {url:?}: a file:// URL needs an absolute path"
                    ))
                })?;
                local(path)
            }
            "memory" => Ok(Self::over(Arc::new(Metered::new(CloudBackend::new(
                Arc::new(object_store::memory::InMemory::new()),
                "memory://".into(),
                "memory",
            ))))),
            _ => {
                let backend = CloudBackend::open(&parsed, options).map_err(|e| {
                    ServerError::InvalidArgument(format!("--blob-store {url:?}: {e}"))
                })?;
                Ok(Self::over(Arc::new(Metered::new(backend))))
            }
        }
    }

    /// The layout over `backend` (a wrapped one, say).
    pub fn over(backend: Arc<dyn Backend>) -> Self {
        BlobStore { backend }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn description(&self) -> &str {
        self.backend.describe()
    }

    /// The object that holds blob `d` in the blob store: `cas/<first two hex>/<hex>`.
    pub fn location(d: &Digest) -> String {
        let hex = d.hash_hex();
        format!("cas/{}/{}", &hex[..2], hex)
    }

    /// Publishes bytes already verified to hash to `d` (the chunks as they arrived: no
    /// copy into one buffer).
    ///
    /// A plain (overwriting) put: content addressing makes a racing put of the same blob
    /// write the same verified bytes, so a conditional create buys nothing.
    pub async fn put_verified(&self, d: &Digest, data: Vec<Bytes>) -> Result<()> {
        self.backend
            .put(&Self::location(d), data, PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// Starts an upload that publishes the blob only on [`Upload::finish`].
    pub async fn start_upload(&self, d: &Digest) -> Result<Box<dyn Upload>> {
        Ok(self.backend.upload(&Self::location(d), d.size()).await?)
    }

    /// Streams bytes `[offset, offset + len)` of a blob in chunks of about `chunk` bytes,
    /// each passed through `check` first when there is one. Not verified by itself: see
    /// [`super::Store::read_blob`].
    pub async fn read(
        &self,
        d: &Digest,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.read_via(d, offset, len, chunk, check, false).await
    }

    /// [`BlobStore::read`] of all of a blob from the store of record, past any cache in
    /// front of it.
    pub async fn read_origin(
        &self,
        d: &Digest,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.read_via(d, 0, d.size(), chunk, check, true).await
    }

    async fn read_via(
        &self,
        d: &Digest,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
        origin: bool,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let path = Self::location(d);
        let s = if origin {
            self.backend
                .read_origin(&path, offset, len, chunk, check)
                .await?
        } else {
            self.backend.read(&path, offset, len, chunk, check).await?
        };
        Ok(s.map(|r| r.map_err(ServerError::from)).boxed())
    }

    /// URLs from which each blob can be fetched directly for `expires`, when the backend
    /// signs URLs; `None` otherwise.
    pub async fn signed_urls(
        &self,
        digests: &[Digest],
        expires: std::time::Duration,
    ) -> Result<Option<Vec<url::Url>>> {
        let paths: Vec<String> = digests.iter().map(Self::location).collect();
        Ok(self.backend.signed_urls(&paths, expires).await?)
    }

    /// Writes a small object that must not exist yet (a create-only put): the journal's
    /// entries. `Ok(false)`: something is already there (another writer).
    pub async fn put_new(&self, path: &str, data: Bytes) -> Result<bool> {
        let w = self.backend.put(path, vec![data], PutMode::Create).await?;
        Ok(w == Written::Done)
    }

    /// A small object and its version (for a conditional update), if it exists.
    pub async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, Version)>> {
        Ok(self.backend.get(path).await?)
    }

    /// Writes a small object only if it is still at `version` (absent: only if it does not
    /// exist). `Ok(false)`: someone else wrote it in between.
    pub async fn put_conditional(
        &self,
        path: &str,
        data: Bytes,
        version: Option<Version>,
    ) -> Result<bool> {
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        Ok(self.backend.put(path, vec![data], mode).await? == Written::Done)
    }

    /// Deletes blobs' bytes (a garbage collection); absent is fine.
    pub async fn delete_blobs(&self, digests: &[Digest]) -> Result<()> {
        let paths = digests.iter().map(Self::location).collect();
        Ok(self.backend.delete_many(paths).await?)
    }

    /// Deletes a small object; absent is fine.
    pub async fn delete_object(&self, path: &str) -> Result<()> {
        Ok(self.backend.delete(path).await?)
    }

    /// The whole of a small blob (a manifest's canonical bytes), unverified.
    pub async fn get_blob(&self, d: &Digest) -> Result<Bytes> {
        self.get_object(&Self::location(d)).await
    }

    /// The whole of a small object.
    pub async fn get_object(&self, path: &str) -> Result<Bytes> {
        match self.backend.get(path).await? {
            Some((bytes, _)) => Ok(bytes),
            None => Err(StorageError::NotFound {
                backend: self.description().to_string(),
                path: path.to_string(),
            }
            .into()),
        }
    }

    /// Every object under `prefix`, in name order: (name, size).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.list_objects_after(prefix, None).await
    }

    /// The objects under `prefix` whose names sort after `after` (all: `None`), in name
    /// order.
    pub async fn list_objects_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<(String, u64)>> {
        Ok(self
            .backend
            .list(prefix, after)
            .await?
            .into_iter()
            .map(|e| (e.name, e.size))
            .collect())
    }

    /// Whether any object lies under `prefix`: the listing stops at the first.
    pub async fn has_objects(&self, prefix: &str) -> Result<bool> {
        Ok(self.backend.has_any(prefix).await?)
    }

    /// The digests of every stored blob (`cas/xx/<hex>`), from a listing of the backend.
    pub async fn list_blobs(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for (name, size) in self.list_objects("cas").await? {
            let Some(hex) = name.rsplit('/').next() else {
                continue;
            };
            if let Ok(hash) = Digest::parse_hash("blob", hex) {
                out.push(Digest::new(hash, size));
            }
        }
        Ok(out)
    }

    /// Moves a blob's bytes aside to `quarantine/<64 hex>`, beside `cas/`, for inspection:
    /// out of the content-addressed layout, so a new upload publishes good bytes in their
    /// place. Bytes already gone are not an error.
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        let to = format!("quarantine/{}", d.hash_hex());
        self.backend.rename(&Self::location(d), &to).await?;
        Ok(())
    }

    /// Removes staging files that a crash left behind (a local backend's).
    pub fn sweep_staging(&self) -> usize {
        self.backend.sweep_staging()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cloud backend's URL and options configure a store without touching the
    /// network (GCS has no emulator that installs from the registries here, so this is its
    /// test): the description names it, and a bad option value is an error that names it.
    #[test]
    fn cloud_urls_configure() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for (url, options) in [
            ("gs://release-bucket/stagecache", opts(&[])),
            (
                "s3://release-bucket/stagecache",
                opts(&[("aws_region", "eu-west-1"), ("aws_conditional_put", "etag")]),
            ),
            (
                "az://release/stagecache",
                opts(&[("azure_storage_account_name", "contoso")]),
            ),
        ] {
            let b = BlobStore::open_with(Some(url), dir.path(), options)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(b.description(), url);
            assert!(b.backend().local_root().is_none());
        }
        let e = BlobStore::open_with(
            Some("s3://release-bucket/x"),
            dir.path(),
            opts(&[("aws_conditional_put", "sometimes")]),
        )
        .err()
        .expect("a bad conditional-put mode");
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = BlobStore::open_with(Some("ftp://x/y"), dir.path(), opts(&[]))
            .err()
            .expect("an unknown scheme");
        assert!(!e.to_string().is_empty());
    }
}
