//! A wrapper that counts and times every operation of the backend it wraps, by backend
//! kind, operation and outcome (`stagecache_storage_operations_total`,
//! `stagecache_storage_operation_duration_seconds`). Reads are timed until their stream is
//! open; an upload from its start to its publication.

use super::{
    Backend, ByteStream, Entry, PutMode, ReadCheck, StorageError, Upload, Version, Written,
};
use crate::metrics::metrics;
use bytes::Bytes;
use std::time::{Duration, Instant};

pub struct Metered<B> {
    inner: B,
}

impl<B: Backend> Metered<B> {
    pub fn new(inner: B) -> Self {
        // The operations every server does exist from the start at 0 (an alert on the
        // error rate has data before the first error).
        if let Some(m) = metrics() {
            for op in ["put", "upload", "read", "get", "list"] {
                for outcome in ["ok", "error"] {
                    m.storage_ops
                        .with_label_values(&[inner.kind(), op, outcome]);
                }
            }
        }
        Metered { inner }
    }
}

fn outcome<T>(r: &Result<T, StorageError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StorageError::NotFound { .. }) => "not_found",
        Err(StorageError::Short { .. }) => "short",
        Err(StorageError::Damaged { .. }) => "damaged",
        Err(StorageError::Failed { .. }) => "error",
    }
}

fn observe<T>(kind: &'static str, op: &'static str, started: Instant, r: &Result<T, StorageError>) {
    let Some(m) = metrics() else {
        return;
    };
    m.storage_ops
        .with_label_values(&[kind, op, outcome(r)])
        .inc();
    m.storage_seconds
        .with_label_values(&[kind, op])
        .observe(started.elapsed().as_secs_f64());
}

impl<B: Backend> Metered<B> {
    /// Runs one operation of the backend, counting and timing it as `op`.
    async fn timed<T>(
        &self,
        op: &'static str,
        operation: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let started = Instant::now();
        let r = operation.await;
        observe(self.kind(), op, started, &r);
        r
    }
}

#[async_trait::async_trait]
impl<B: Backend> Backend for Metered<B> {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn local_root(&self) -> Option<&std::path::Path> {
        self.inner.local_root()
    }

    fn set_direct_io(&self, min_bytes: u64) -> bool {
        self.inner.set_direct_io(min_bytes)
    }

    fn sweep_staging(&self) -> usize {
        self.inner.sweep_staging()
    }

    async fn put(
        &self,
        path: &str,
        data: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<Written, StorageError> {
        let bytes: usize = data.iter().map(Bytes::len).sum();
        let r = self.timed("put", self.inner.put(path, data, mode)).await;
        if matches!(r, Ok(Written::Done)) {
            if let Some(m) = metrics() {
                m.storage_bytes_written
                    .with_label_values(&[self.kind()])
                    .inc_by(bytes as u64);
            }
        }
        r
    }

    async fn upload(&self, path: &str, size: u64) -> Result<Box<dyn Upload>, StorageError> {
        let started = Instant::now();
        let r = self.inner.upload(path, size).await;
        if r.is_err() {
            observe(self.kind(), "upload", started, &r);
        }
        Ok(Box::new(MeteredUpload {
            inner: r?,
            kind: self.kind(),
            started,
            bytes: 0,
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
        self.timed("read", self.inner.read(path, offset, len, chunk, check))
            .await
    }

    async fn read_origin(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        self.timed(
            "read",
            self.inner.read_origin(path, offset, len, chunk, check),
        )
        .await
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, Version)>, StorageError> {
        self.timed("get", self.inner.get(path)).await
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.timed("delete", self.inner.delete(path)).await
    }

    async fn delete_many(&self, paths: Vec<String>) -> Result<(), StorageError> {
        self.timed("delete_many", self.inner.delete_many(paths))
            .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<bool, StorageError> {
        self.timed("rename", self.inner.rename(from, to)).await
    }

    async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Entry>, StorageError> {
        self.timed("list", self.inner.list(prefix, after)).await
    }

    async fn has_any(&self, prefix: &str) -> Result<bool, StorageError> {
        self.timed("list", self.inner.has_any(prefix)).await
    }

    async fn signed_urls(
        &self,
        paths: &[String],
        expires: Duration,
    ) -> Result<Option<Vec<url::Url>>, StorageError> {
        self.timed("sign", self.inner.signed_urls(paths, expires))
            .await
    }
}

struct MeteredUpload {
    inner: Box<dyn Upload>,
    kind: &'static str,
    started: Instant,
    bytes: u64,
}

#[async_trait::async_trait]
impl Upload for MeteredUpload {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.bytes += data.len() as u64;
        let r = self.inner.write(data).await;
        if r.is_err() {
            observe(self.kind, "upload", self.started, &r);
        }
        r
    }

    async fn finish(self: Box<Self>) -> Result<(), StorageError> {
        let MeteredUpload {
            inner,
            kind,
            started,
            bytes,
        } = *self;
        let r = inner.finish().await;
        observe(kind, "upload", started, &r);
        if r.is_ok() {
            if let Some(m) = metrics() {
                m.storage_bytes_written
                    .with_label_values(&[kind])
                    .inc_by(bytes);
            }
        }
        r
    }

    async fn abort(self: Box<Self>) {
        let r: Result<(), StorageError> = Ok(());
        observe(self.kind, "abort", self.started, &r);
        self.inner.abort().await
    }
}
