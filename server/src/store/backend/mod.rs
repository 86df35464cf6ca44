//! Where bytes live: one small trait over named objects, with one implementation for the
//! local file system ([`local::LocalBackend`]) and one for the cloud stores `object_store`
//! speaks to ([`cloud::CloudBackend`]: Azure Blob, S3, GCS, and memory for unit tests).
//!
//! Everything above this module (the content-addressed layout, the journal, the lease)
//! speaks only this trait, its [`StorageError`] and its [`Upload`]: no backend's own
//! types cross it. Behaviour that applies to any backend is a wrapper that implements the
//! trait around another one, as [`metered::Metered`] counts and times every operation and
//! [`tier::ReadThrough`] keeps a local copy of what a cloud store served.
//!
//! Names are `/`-separated paths made by the server (`cas/ab/<hex>`, `journal/<seq>`,
//! `lease.json`), never by a client.

pub mod cloud;
pub mod local;
pub mod metered;
pub mod tier;

use bytes::Bytes;
use futures::stream::BoxStream;
use std::time::{Duration, SystemTime};

/// A byte stream read from a backend.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// What a backend can fail with. Backends map their own errors to these.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("{backend}: {path} does not exist")]
    NotFound { backend: String, path: String },
    /// The object holds fewer bytes than were asked for (truncated on disk).
    #[error("{backend}: {path} holds fewer bytes than asked for ({got} of {wanted} from offset {offset})")]
    Short {
        backend: String,
        path: String,
        offset: u64,
        wanted: u64,
        got: u64,
    },
    /// The object's bytes failed a read's [`ReadCheck`] (they do not hash to their name).
    #[error("{backend}: {path}: {why}")]
    Damaged {
        backend: String,
        path: String,
        why: String,
    },
    /// Anything else: the backend is unreachable, refuses, or its disk failed.
    #[error("{backend}: {op} {path}: {message}")]
    Failed {
        backend: String,
        op: &'static str,
        path: String,
        message: String,
    },
}

impl StorageError {
    pub fn failed(
        backend: &str,
        op: &'static str,
        path: &str,
        message: impl std::fmt::Display,
    ) -> Self {
        StorageError::Failed {
            backend: backend.to_string(),
            op,
            path: path.to_string(),
            message: message.to_string(),
        }
    }
}

/// An object's version, for a conditional update: opaque, compared only by the backend
/// that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// Sees every byte a read delivers, in order, before it is delivered, on the thread that
/// read it where the backend reads on blocking threads: a verified read's hasher, so a
/// local read hashes bytes while they are still in the CPU's cache, with no hand-off of
/// its own. An error ends the read with [`StorageError::Damaged`] in place of the chunk.
pub trait ReadCheck: Send + 'static {
    fn check(&mut self, chunk: &[u8]) -> Result<(), String>;

    /// Whether the bytes seen so far were the whole object and matched it (a verified
    /// read's hash compared equal): what lets a cache keep them.
    fn verified_whole(&self) -> bool {
        false
    }
}

/// Runs `check` over a stream on blocking threads, one chunk at a time: for backends
/// whose reads arrive on the async runtime (hashing a megabyte there would stall it).
pub fn checked(
    s: ByteStream,
    check: Box<dyn ReadCheck>,
    backend: String,
    path: String,
) -> ByteStream {
    use futures::StreamExt;
    let state = (s, Some(check));
    futures::stream::unfold(state, move |(mut s, check)| {
        let (backend, path) = (backend.clone(), path.clone());
        async move {
            let mut check = check?;
            let chunk = match s.next().await? {
                Ok(c) => c,
                Err(e) => return Some((Err(e), (s, None))),
            };
            let hashed = chunk.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let r = check.check(&hashed);
                (check, r)
            })
            .await;
            match outcome {
                Ok((check, Ok(()))) => Some((Ok(chunk), (s, Some(check)))),
                Ok((_, Err(why))) => {
                    let e = StorageError::Damaged { backend, path, why };
                    Some((Err(e), (s, None)))
                }
                Err(e) => Some((
                    Err(StorageError::failed(&backend, "read", &path, e)),
                    (s, None),
                )),
            }
        }
    })
    .boxed()
}

/// How a put treats an object already there.
#[derive(Debug, Clone)]
pub enum PutMode {
    /// Replace it (content-addressed blobs: a racing put writes the same bytes).
    Overwrite,
    /// Only if nothing is there (journal entries).
    Create,
    /// Only if it is still at this version (the lease).
    Update(Version),
}

/// The outcome of a conditional put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// `Create` found an object, or `Update` found another version: nothing was written.
    Conflict,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// The storage operations the server needs, and nothing more.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// For logs and errors: `file:///srv/blobs`, `az://container/prefix`, ...
    fn describe(&self) -> &str;

    /// A short label for metrics: `local`, `azure`, `s3`, `gcs`, `memory`.
    fn kind(&self) -> &'static str;

    /// The local directory the objects live under, for a backend that has one.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// Removes what interrupted writes left behind; returns how many. Called at start.
    fn sweep_staging(&self) -> usize {
        0
    }

    /// Objects of at least `min_bytes` bypass the page cache (`--direct-io`; 0: none):
    /// they are written (put or streamed) and read with O_DIRECT.
    /// Returns whether this backend does that (only a local one, itself: never a tier's
    /// copies).
    fn set_direct_io(&self, _min_bytes: u64) -> bool {
        false
    }

    /// Writes a whole object, durably and atomically (all of it becomes visible, or none).
    async fn put(
        &self,
        path: &str,
        data: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<Written, StorageError>;

    /// Starts an object of `size` bytes written piece by piece; it becomes visible only
    /// on [`Upload::finish`]. The size chooses how it is written (a local store's direct
    /// I/O); the backend does not hold the writer to it.
    async fn upload(&self, path: &str, size: u64) -> Result<Box<dyn Upload>, StorageError>;

    /// Streams bytes `[offset, offset + len)` in chunks of about `chunk` bytes; a stream
    /// that cannot deliver `len` bytes ends with [`StorageError::Short`]. With a `check`,
    /// every chunk passes it before it is delivered (see [`ReadCheck`]); the first chunk
    /// may be read, and fail, before this returns.
    async fn read(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError>;

    /// [`Backend::read`] from the store of record itself, past any cache in front of it
    /// (and filling none): a scrub checks the bytes the store holds, not a copy.
    async fn read_origin(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        self.read(path, offset, len, chunk, check).await
    }

    /// A whole (small) object and its version; `None` when it does not exist.
    async fn get(&self, path: &str) -> Result<Option<(Bytes, Version)>, StorageError>;

    /// Removes an object; one already gone is not an error.
    async fn delete(&self, path: &str) -> Result<(), StorageError>;

    /// Removes many objects (a garbage collection's sweep); those already gone are not an
    /// error. Backends batch where they can: one blocking task for a local directory, the
    /// store's bulk delete for a cloud one.
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), StorageError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        stream::iter(paths)
            .map(|p| async move { self.delete(&p).await })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Moves an object; `Ok(false)` when there was nothing to move.
    async fn rename(&self, from: &str, to: &str) -> Result<bool, StorageError>;

    /// The objects under `prefix` (a directory-like name: `cas`, `journal`) whose names
    /// sort after `after`, in name order.
    async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Entry>, StorageError>;

    /// Whether anything lies under `prefix`, stopping at the first object.
    async fn has_any(&self, prefix: &str) -> Result<bool, StorageError>;

    /// URLs that let their bearer GET each object directly for `expires`, where the
    /// backend can sign them; `None` otherwise (the server streams the bytes itself).
    async fn signed_urls(
        &self,
        _paths: &[String],
        _expires: Duration,
    ) -> Result<Option<Vec<url::Url>>, StorageError> {
        Ok(None)
    }
}

/// An object being written; dropped without [`Upload::finish`], it publishes nothing.
#[async_trait::async_trait]
pub trait Upload: Send {
    /// Appends bytes; waits while the backend has too much in flight.
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError>;
    /// Publishes the object (atomically: all of it or nothing).
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;
    /// Discards what was written.
    async fn abort(self: Box<Self>);
}
