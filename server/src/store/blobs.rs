//! Blob bytes in an `object_store` backend, laid out as `cas/<2 hex>/<64 hex>`.
//!
//! A blob is written so that it becomes visible only when complete: small blobs are
//! verified in memory and then put atomically; large ones stream into a multipart upload
//! whose completion (the atomic publish) happens only after the hash checked out, and
//! which is aborted otherwise. The local filesystem backend fsyncs what it publishes.

use crate::error::{Result, ServerError};
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use stagecache_proto::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Blobs up to this size are buffered, verified and put in one request.
pub const SINGLE_PUT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Part size of multipart uploads of larger blobs.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload; bounds the memory of one upload to about 3 parts.
const PARTS_IN_FLIGHT: usize = 2;

/// Where blob bytes live.
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Root directory when the backend is the local filesystem.
    local_root: Option<PathBuf>,
    description: String,
}

impl BlobStore {
    /// Opens the backend named by `url`: `file:///abs/dir` (or no URL: `<data_dir>/blobs`),
    /// `memory://` (tests), or any URL `object_store` understands (`az://`, `s3://`,
    /// `gs://`, `https://<account>.blob.core.windows.net/<container>`), configured from
    /// the usual `AZURE_*`, `AWS_*` and `GOOGLE_*` environment variables.
    pub fn open(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        let options = std::env::vars().filter_map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            (k.starts_with("azure_") || k.starts_with("aws_") || k.starts_with("google_"))
                .then_some((k, v))
        });
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
            std::fs::create_dir_all(&root).map_err(|e| {
                ServerError::Internal(format!(
                    "cannot create blob directory {}: {e}",
                    root.display()
                ))
            })?;
            let fs = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
            Ok(BlobStore {
                store: Arc::new(fs),
                description: format!("file://{}", root.display()),
                local_root: Some(root),
            })
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
            "memory" => Ok(BlobStore {
                store: Arc::new(object_store::memory::InMemory::new()),
                local_root: None,
                description: "memory://".into(),
            }),
            _ => {
                let (store, prefix) = object_store::parse_url_opts(&parsed, options)?;
                let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                    Arc::from(store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                };
                Ok(BlobStore {
                    store,
                    local_root: None,
                    description: url.to_string(),
                })
            }
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    fn location(d: &Digest) -> ObjectPath {
        let hex = d.hash_hex();
        ObjectPath::from(format!("cas/{}/{}", &hex[..2], hex))
    }

    /// Publishes bytes already verified to hash to `d` (one buffer or the chunks as they
    /// arrived: no copy into one buffer).
    ///
    /// A plain (overwriting) put: content addressing makes a racing put of the same blob
    /// write the same verified bytes, so a conditional create buys nothing, and backends
    /// need no conditional-put support. Locally the staging file is renamed into place
    /// (one directory change) rather than hard-linked and then unlinked (two).
    pub async fn put_verified(&self, d: &Digest, data: PutPayload) -> Result<()> {
        self.store.put(&Self::location(d), data).await?;
        Ok(())
    }

    /// Starts a multipart upload that publishes the blob only on [`WriteMultipart::finish`].
    pub async fn start_multipart(&self, d: &Digest) -> Result<WriteMultipart> {
        let upload = self.store.put_multipart(&Self::location(d)).await?;
        Ok(WriteMultipart::new_with_chunk_size(upload, PART_BYTES))
    }

    /// Waits until the multipart upload has room for another part.
    pub async fn wait_for_capacity(w: &mut WriteMultipart) -> Result<()> {
        Ok(w.wait_for_capacity(PARTS_IN_FLIGHT).await?)
    }

    /// Streams bytes `[offset, offset + len)` of a blob in chunks of about `chunk` bytes.
    pub async fn read(
        &self,
        d: &Digest,
        offset: u64,
        len: u64,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        if let Some(root) = &self.local_root {
            // Local files: read on a blocking thread straight into each chunk's buffer,
            // rather than through object_store's 8 KiB pieces or tokio's copying `File`.
            let path = root.join(Self::location(d).as_ref());
            return read_local(path, *d, offset, len, chunk).await;
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + len)),
            ..Default::default()
        };
        let result = self.store.get_opts(&Self::location(d), opts).await?;
        match result.payload {
            GetResultPayload::Stream(s) => Ok(rechunk(s, chunk)),
            GetResultPayload::File(_, path) => {
                read_local(path, *d, result.range.start, len, chunk).await
            }
        }
    }

    /// Writes a small object that must not exist yet (`PutMode::Create`): the journal's
    /// entries. `Ok(false)`: something is already there (another writer).
    pub async fn put_new(&self, path: &str, data: Bytes) -> Result<bool> {
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjectPath::from(path), data.into(), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A small object and its version (for a conditional update), if it exists.
    pub async fn get_versioned(
        &self,
        path: &str,
    ) -> Result<Option<(Bytes, object_store::UpdateVersion)>> {
        match self.store.get(&ObjectPath::from(path)).await {
            Ok(r) => {
                let version = object_store::UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                Ok(Some((r.bytes().await?, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a small object only if it is still at `version` (absent: only if it does not
    /// exist). `Ok(false)`: someone else wrote it in between. Backends without
    /// conditional updates (the local file system) overwrite.
    pub async fn put_conditional(
        &self,
        path: &str,
        data: Bytes,
        version: Option<object_store::UpdateVersion>,
    ) -> Result<bool> {
        let location = ObjectPath::from(path);
        let mode = match version {
            None => object_store::PutMode::Create,
            Some(v) => object_store::PutMode::Update(v),
        };
        let opts = object_store::PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&location, data.clone().into(), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&location, data.into()).await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a small object; absent is fine.
    pub async fn delete_object(&self, path: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole of a small blob (a manifest's canonical bytes), unverified.
    pub async fn get_blob(&self, d: &Digest) -> Result<Bytes> {
        Ok(self.store.get(&Self::location(d)).await?.bytes().await?)
    }

    /// The whole of a small object.
    pub async fn get_object(&self, path: &str) -> Result<Bytes> {
        Ok(self
            .store
            .get(&ObjectPath::from(path))
            .await?
            .bytes()
            .await?)
    }

    /// Every object under `prefix`, in name order: (name, size).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.list_objects_after(prefix, None).await
    }

    /// The objects under `prefix` whose names sort after `after` (all: `None`), in name
    /// order. Backends list from the offset (S3's start-after), not from the beginning.
    pub async fn list_objects_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(prefix);
        let listing = match after {
            Some(a) => self
                .store
                .list_with_offset(Some(&prefix), &ObjectPath::from(a)),
            None => self.store.list(Some(&prefix)),
        };
        let mut out: Vec<(String, u64)> = listing
            .map(|m| m.map(|m| (m.location.to_string(), m.size)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()?;
        out.sort();
        Ok(out)
    }

    /// Whether any object lies under `prefix`: the listing stops at the first.
    pub async fn has_objects(&self, prefix: &str) -> Result<bool> {
        match self
            .store
            .list(Some(&ObjectPath::from(prefix)))
            .next()
            .await
        {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
            None => Ok(false),
        }
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
        let to = ObjectPath::from(format!("quarantine/{}", d.hash_hex()));
        match self.store.rename(&Self::location(d), &to).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes staging files that a crash left behind in the local backend.
    pub fn sweep_local_staging(&self) -> usize {
        let Some(root) = &self.local_root else {
            return 0;
        };
        let mut removed = 0;
        let Ok(prefixes) = std::fs::read_dir(root.join("cas")) else {
            return 0;
        };
        for dir in prefixes.flatten() {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                // object_store stages uploads as `<name>#<n>` beside the target.
                if f.file_name().to_string_lossy().contains('#')
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Reads `[offset, offset + len)` of a local blob file: one blocking task per chunk reads
/// into a buffer that becomes the chunk (no further copy). A missing file is object_store's
/// `NotFound`, as from any other backend.
async fn read_local(
    path: PathBuf,
    d: Digest,
    offset: u64,
    len: u64,
    chunk: usize,
) -> Result<BoxStream<'static, Result<Bytes>>> {
    use std::io::{Read, Seek};
    let internal = move |e: std::io::Error| ServerError::Internal(format!("read blob {d}: {e}"));
    let open_path = path.clone();
    let file = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&open_path)?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| ServerError::Internal(format!("read blob {d}: {e}")))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ServerError::Blobs(object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        }),
        _ => internal(e),
    })?;
    let chunk = chunk.max(1) as u64;
    Ok(
        futures::stream::try_unfold((file, len), move |(file, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(chunk);
            let (file, buf) = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let mut buf = Vec::with_capacity(want as usize);
                (&mut file).take(want).read_to_end(&mut buf)?;
                Ok::<_, std::io::Error>((file, buf))
            })
            .await
            .map_err(|e| ServerError::Internal(format!("read blob {d}: {e}")))?
            .map_err(internal)?;
            if buf.len() as u64 != want {
                return Err(ServerError::DataLoss(format!(
                    "blob {d} is shorter in the blob store than its size says"
                )));
            }
            Ok(Some((Bytes::from(buf), (file, left - want))))
        })
        .boxed(),
    )
}

/// Regroups a byte stream into chunks of about `chunk` bytes.
fn rechunk(
    s: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(
        (s, BytesMut::new(), false),
        move |(mut s, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if buf.len() >= chunk {
                    let out = buf.split_to(chunk).freeze();
                    return Some((Ok(out), (s, buf, false)));
                }
                match s.next().await {
                    Some(Ok(b)) if buf.is_empty() && b.len() >= chunk => {
                        return Some((Ok(b), (s, buf, false)))
                    }
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(e.into()), (s, buf, true))),
                    None if buf.is_empty() => return None,
                    None => {
                        let out = buf.split().freeze();
                        return Some((Ok(out), (s, buf, true)));
                    }
                }
            }
        },
    )
    .boxed()
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
            assert!(b.local_root.is_none());
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
