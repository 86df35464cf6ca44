//! The stagecache.v1 wire protocol and the rules that client and server must apply
//! identically: BLAKE3 digests, the canonical manifest encoding and its digest, path rules,
//! namespace and ref-name rules, and the hash-while-streaming verifier.
//!
//! This crate knows nothing of storage, RocksDB, networking or pipelines: it is plain
//! functions and types, so both sides (and their tests) call the very same code.

pub mod codec;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod names;
pub mod path;
pub mod quote;
pub mod time;
pub mod verify;

pub use digest::Digest;
pub use error::RuleError;
pub use manifest::{Manifest, ManifestEntry};
pub use names::{Namespace, RefName};
pub use quote::{cap_message, quote, thousands};
pub use verify::Verifier;

/// Generated gRPC types and services of package `stagecache.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("stagecache.v1");
}

impl v1::StageStatus {
    /// The word people read and the CLI's JSON carries: `started`, `succeeded`, ...
    pub fn word(self) -> &'static str {
        match self {
            v1::StageStatus::Unspecified => "unspecified",
            v1::StageStatus::Started => "started",
            v1::StageStatus::Succeeded => "succeeded",
            v1::StageStatus::Failed => "failed",
            v1::StageStatus::Cancelled => "cancelled",
            v1::StageStatus::Invalidated => "invalidated",
        }
    }
}

/// Records the server keeps in its index (package `stagecache.store`); not part of the API.
pub mod records {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("stagecache.store");
}

/// Encoded `FileDescriptorSet` of every `.proto` file, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stagecache_descriptor.bin"));

/// Largest gRPC message either side sends or accepts. Manifests of tens of thousands of
/// entries and batch calls fit well inside it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Size of the data chunks of streaming upload and download.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Most digests accepted by one FindMissing call.
pub const MAX_FIND_MISSING: usize = 100_000;

/// Blobs up to this size go through BatchUpload/BatchDownload rather than streams.
pub const BATCH_BLOB_MAX_BYTES: u64 = 1024 * 1024;

/// Most bytes of blob data in one batch call.
pub const BATCH_TOTAL_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Most items of one BatchUpload, BatchDownload, RecordBatch or BatchStatus call.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// Most entries of one manifest.
pub const MAX_MANIFEST_ENTRIES: usize = 1_000_000;
