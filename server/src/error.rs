//! The server's one error type and its single mapping to gRPC statuses.

use stagecache_proto::RuleError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request broke a protocol rule (bad digest, path, name...).
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-swap expectation did not hold.
    #[error("{0}")]
    Aborted(String),
    /// Stored data disagrees with itself (e.g. a blob indexed but absent from the store).
    #[error("{0}")]
    DataLoss(String),
    #[error("index (RocksDB): {0}")]
    Index(#[from] rocksdb::Error),
    #[error("blob store {0}")]
    Storage(#[from] crate::store::backend::StorageError),
    /// No room: the blob store is at its limit (`--max-bytes`, `--min-free-space`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server cannot take writes now (e.g. it lost the blob store's lease).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        // Last resort: a message must reach grpc-core clients (16 KiB limit), whatever
        // input a message builder forgot to quote.
        let msg = stagecache_proto::cap_message(e.to_string());
        match e {
            ServerError::Rule(_) | ServerError::InvalidArgument(_) => Status::invalid_argument(msg),
            ServerError::NotFound(_) => Status::not_found(msg),
            ServerError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ServerError::Aborted(_) => Status::aborted(msg),
            ServerError::DataLoss(_) => Status::data_loss(msg),
            ServerError::Unavailable(_) => Status::unavailable(msg),
            ServerError::ResourceExhausted(_) => {
                tracing::warn!(error = %msg, "upload refused for room");
                Status::resource_exhausted(msg)
            }
            ServerError::Index(_) | ServerError::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
            ServerError::Storage(ref inner) => {
                use crate::store::backend::StorageError;
                tracing::error!(error = %msg, "blob store error");
                match inner {
                    StorageError::NotFound { .. } => Status::not_found(msg),
                    StorageError::Short { .. } | StorageError::Damaged { .. } => {
                        Status::data_loss(msg)
                    }
                    StorageError::Failed { .. } => Status::unavailable(msg),
                }
            }
        }
    }
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServerError::Internal(format!("background task failed: {e}"))
    }
}
