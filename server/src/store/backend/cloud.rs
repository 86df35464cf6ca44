//! The cloud stores `object_store` speaks to (Azure Blob, S3, GCS; memory for unit tests)
//! as a backend. `object_store`'s types and errors stop here.

use super::{
    checked, Backend, ByteStream, Entry, PutMode, ReadCheck, StorageError, Upload, Version, Written,
};
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Part size of multipart uploads.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload; bounds the memory of one upload to about 3 parts.
const PARTS_IN_FLIGHT: usize = 2;

pub struct CloudBackend {
    store: Arc<dyn ObjectStore>,
    /// The same store as a URL signer, where it is one (Azure, S3, GCS), and the prefix
    /// its object names are under (the store itself is wrapped in a `PrefixStore`).
    signer: Option<(Arc<dyn Signer>, String)>,
    describe: String,
    kind: &'static str,
    /// Set once a conditional update was answered "not implemented" (and logged).
    warned_unconditional: AtomicBool,
}

impl CloudBackend {
    pub fn new(store: Arc<dyn ObjectStore>, describe: String, kind: &'static str) -> Self {
        CloudBackend {
            store,
            signer: None,
            describe,
            kind,
            warned_unconditional: AtomicBool::new(false),
        }
    }

    /// Opens the cloud store `url` names (`az://`, `s3://`, `gs://`, or their https forms)
    /// with `options` (`azure_*`, `aws_*`, `google_*`; keys a store does not know are
    /// ignored, bad values refused), keeping it as a URL signer too.
    pub fn open(
        url: &url::Url,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        use object_store::ObjectStoreScheme as S;
        let (scheme, prefix) = S::parse(url).map_err(|e| e.to_string())?;
        let prefix = ObjectPath::parse(prefix).map_err(|e| e.to_string())?;
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        macro_rules! build {
            ($builder:ty) => {{
                let b = options.iter().fold(
                    <$builder>::new().with_url(url.to_string()),
                    |b, (k, v)| match k.parse() {
                        Ok(key) => b.with_config(key, v.clone()),
                        Err(_) => b,
                    },
                );
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }};
        }
        let (store, signer, kind): (Arc<dyn ObjectStore>, Arc<dyn Signer>, &'static str) =
            match scheme {
                S::AmazonS3 => {
                    let s = build!(object_store::aws::AmazonS3Builder);
                    (s.clone(), s, "s3")
                }
                S::MicrosoftAzure => {
                    let s = build!(object_store::azure::MicrosoftAzureBuilder);
                    (s.clone(), s, "azure")
                }
                S::GoogleCloudStorage => {
                    let s = build!(object_store::gcp::GoogleCloudStorageBuilder);
                    (s.clone(), s, "gcs")
                }
                other => return Err(format!("{other:?} is not a cloud blob store")),
            };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                prefix.clone(),
            ))
        };
        let mut backend = CloudBackend::new(store, url.to_string(), kind);
        backend.signer = Some((signer, prefix.to_string()));
        Ok(backend)
    }

    fn error(&self, op: &'static str, path: &str, e: object_store::Error) -> StorageError {
        map_error(&self.describe, op, path, e)
    }
}

fn map_error(backend: &str, op: &'static str, path: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound {
            backend: backend.to_string(),
            path: path.to_string(),
        },
        other => StorageError::failed(backend, op, path, other),
    }
}

#[async_trait::async_trait]
impl Backend for CloudBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn put(
        &self,
        path: &str,
        data: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<Written, StorageError> {
        let location = ObjectPath::from(path);
        let payload: PutPayload = data.into_iter().collect();
        let conditional = !matches!(mode, PutMode::Overwrite);
        // Only an update may degrade to a plain put on a store without conditional
        // updates (the lease); a create-only put (a journal entry) must never overwrite.
        let may_degrade = matches!(mode, PutMode::Update(_));
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
            PutMode::Update(v) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.store.put_opts(&location, payload.clone(), opts).await {
            Ok(_) => Ok(Written::Done),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
                if conditional =>
            {
                Ok(Written::Conflict)
            }
            Err(object_store::Error::NotImplemented { .. }) if may_degrade => {
                // An S3 without `aws_conditional_put`: the lease degrades to a plain put.
                if !self.warned_unconditional.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        backend = %self.describe,
                        "the blob store does not do conditional puts (for S3 set AWS_CONDITIONAL_PUT=etag): two servers on it could both write"
                    );
                }
                self.store
                    .put(&location, payload)
                    .await
                    .map_err(|e| self.error("put", path, e))?;
                Ok(Written::Done)
            }
            Err(e) => Err(self.error("put", path, e)),
        }
    }

    async fn upload(&self, path: &str, _size: u64) -> Result<Box<dyn Upload>, StorageError> {
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(path))
            .await
            .map_err(|e| self.error("upload", path, e))?;
        Ok(Box::new(CloudUpload {
            backend: self.describe.clone(),
            path: path.to_string(),
            writer: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
        }))
    }

    async fn read(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + len)),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&ObjectPath::from(path), opts)
            .await
            .map_err(|e| self.error("read", path, e))?;
        let (backend, name) = (self.describe.clone(), path.to_string());
        let stream = result
            .into_stream()
            .map(move |r| r.map_err(|e| map_error(&backend, "read", &name, e)))
            .boxed();
        let (backend, name) = (self.describe.clone(), path.to_string());
        let short = move |got| StorageError::Short {
            backend: backend.clone(),
            path: name.clone(),
            offset,
            wanted: len,
            got,
        };
        let s = rechunk(stream, chunk.max(1), len, short);
        Ok(match check {
            Some(c) => checked(s, c, self.describe.clone(), path.to_string()),
            None => s,
        })
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, Version)>, StorageError> {
        match self.store.get(&ObjectPath::from(path)).await {
            Ok(r) => {
                let version = Version {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r.bytes().await.map_err(|e| self.error("get", path, e))?;
                Ok(Some((bytes, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("get", path, e)),
        }
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    /// The store's bulk delete (S3 DeleteObjects of up to 1,000 keys; others one request
    /// per object, concurrently).
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), StorageError> {
        let first = paths.first().cloned().unwrap_or_default();
        let locations = futures::stream::iter(paths.into_iter().map(|p| Ok(ObjectPath::from(p))));
        let mut deleted = self.store.delete_stream(locations.boxed());
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("delete", &first, e)),
            }
        }
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<bool, StorageError> {
        match self
            .store
            .rename(&ObjectPath::from(from), &ObjectPath::from(to))
            .await
        {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("rename", from, e)),
        }
    }

    async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Entry>, StorageError> {
        let p = ObjectPath::from(prefix);
        let listing = match after {
            // Backends list from the offset (S3's start-after), not from the beginning.
            Some(a) => self.store.list_with_offset(Some(&p), &ObjectPath::from(a)),
            None => self.store.list(Some(&p)),
        };
        let metas: Vec<object_store::ObjectMeta> = listing
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| self.error("list", prefix, e))?;
        let mut out: Vec<Entry> = metas
            .into_iter()
            .map(|m| Entry {
                name: m.location.to_string(),
                size: m.size,
                modified: m.last_modified.into(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn signed_urls(
        &self,
        paths: &[String],
        expires: std::time::Duration,
    ) -> Result<Option<Vec<url::Url>>, StorageError> {
        let Some((signer, prefix)) = &self.signer else {
            return Ok(None);
        };
        let full: Vec<ObjectPath> = paths
            .iter()
            .map(|p| {
                if prefix.is_empty() {
                    ObjectPath::from(p.as_str())
                } else {
                    ObjectPath::from(format!("{prefix}/{p}"))
                }
            })
            .collect();
        let urls = signer
            .signed_urls(object_store::signer::Method::GET, &full, expires)
            .await
            .map_err(|e| self.error("sign", paths.first().map_or("", |p| p.as_str()), e))?;
        Ok(Some(urls))
    }

    async fn has_any(&self, prefix: &str) -> Result<bool, StorageError> {
        match self
            .store
            .list(Some(&ObjectPath::from(prefix)))
            .next()
            .await
        {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.error("list", prefix, e)),
            None => Ok(false),
        }
    }
}

struct CloudUpload {
    backend: String,
    path: String,
    writer: WriteMultipart,
}

#[async_trait::async_trait]
impl Upload for CloudUpload {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| map_error(&self.backend, "upload", &self.path, e))?;
        self.writer.put(data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), StorageError> {
        let CloudUpload {
            backend,
            path,
            writer,
        } = *self;
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| map_error(&backend, "upload", &path, e))
    }

    async fn abort(self: Box<Self>) {
        let _ = self.writer.abort().await;
    }
}

/// Regroups a byte stream into chunks of about `chunk` bytes; a stream that ends before
/// `len` bytes ends with the error `short(bytes delivered)`.
fn rechunk(
    s: BoxStream<'static, Result<Bytes, StorageError>>,
    chunk: usize,
    len: u64,
    short: impl Fn(u64) -> StorageError + Send + 'static,
) -> ByteStream {
    struct State<F> {
        inner: BoxStream<'static, Result<Bytes, StorageError>>,
        buf: BytesMut,
        delivered: u64,
        done: bool,
        short: F,
    }
    let state = State {
        inner: s,
        buf: BytesMut::new(),
        delivered: 0,
        done: false,
        short,
    };
    futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.buf.len() >= chunk {
                let out = st.buf.split_to(chunk).freeze();
                st.delivered += out.len() as u64;
                return Some((Ok(out), st));
            }
            match st.inner.next().await {
                Some(Ok(b)) if st.buf.is_empty() && b.len() >= chunk => {
                    st.delivered += b.len() as u64;
                    return Some((Ok(b), st));
                }
                Some(Ok(b)) => st.buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None if !st.buf.is_empty() => {
                    let out = st.buf.split().freeze();
                    st.delivered += out.len() as u64;
                    return Some((Ok(out), st));
                }
                None => {
                    st.done = true;
                    if st.delivered < len {
                        let e = (st.short)(st.delivered);
                        return Some((Err(e), st));
                    }
                    return None;
                }
            }
        }
    })
    .boxed()
}
