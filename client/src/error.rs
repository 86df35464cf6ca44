//! The client's one error type. Each variant maps to a documented CLI exit code.

use stagecache_proto::RuleError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered a call with an error status.
    #[error("{call}: {}: {}{}", code_name(.status.code()), .status.message(), request_id(.status))]
    Status {
        call: &'static str,
        status: tonic::Status,
    },
    /// The server could not be reached.
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Input broke a protocol rule (bad digest, path or name).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Bytes received did not hash to the digest asked for.
    #[error("{0}")]
    Verify(String),
    /// Other invalid input from the caller.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<stagecache_view::stages::StageFileError> for ClientError {
    fn from(e: stagecache_view::stages::StageFileError) -> Self {
        match e {
            stagecache_view::stages::StageFileError::Io { path, source } => {
                ClientError::Io { path, source }
            }
            stagecache_view::stages::StageFileError::Invalid(m) => ClientError::Invalid(m),
        }
    }
}

impl ClientError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }

    /// The gRPC code, when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The CLI's exit code for this error (documented in the README):
    /// 2 invalid input, 3 not found, 4 conflict or precondition, 5 server unavailable or
    /// its blob store full, 6 integrity failure, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        use tonic::Code;
        match self {
            ClientError::Rule(_) | ClientError::Invalid(_) => 2,
            ClientError::Connect { .. } => 5,
            ClientError::Verify(_) => 6,
            ClientError::Io { .. } => 1,
            ClientError::Status { status, .. } => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => 2,
                Code::NotFound => 3,
                Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists => 4,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 5,
                Code::DataLoss => 6,
                _ => 1,
            },
        }
    }
}

/// ` (request id X)` when the server named the call's id: the key to its access-log line.
fn request_id(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|id| format!(" (request id {id})"))
        .unwrap_or_default()
}
