//! gRPC services: each decodes and validates a request, calls the store and maps errors
//! to statuses (in `error.rs`). The rules themselves live in `stagecache-proto` and in the
//! store.

pub mod cas;
pub mod ledger;
pub mod manifests;
pub mod refs;

pub use crate::auth::layer::caller;
pub use crate::auth::Permission;
use crate::clock::Clock;
use crate::error::ServerError;
use crate::events::Events;
use crate::store::Store;
use stagecache_proto::Namespace;
use std::sync::Arc;

/// What every service shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub events: Events,
    /// Cancelled when the server begins shutting down; ends endless streams (Watch) so
    /// that graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// How long the URLs of `Cas.DownloadUrls` are valid; `None`: direct downloads off.
    pub direct_downloads: Option<std::time::Duration>,
}

/// Validates the `namespace` field every request carries.
pub(crate) fn namespace(value: &str) -> Result<Namespace, ServerError> {
    Ok(Namespace::parse("namespace", value)?)
}

/// Refuses a repeated field longer than `max`: `digests: 100,001 items, at most 100,000 per call`.
pub(crate) fn check_batch_len(field: &str, len: usize, max: usize) -> Result<(), ServerError> {
    Ok(stagecache_proto::names::check_items(field, len, max)?)
}
