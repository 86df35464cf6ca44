//! Assembles the services into one tonic server with health, reflection, message limits
//! and graceful shutdown.

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, ServerError};
use crate::service::cas::CasService;
use crate::service::ledger::LedgerService;
use crate::service::manifests::ManifestsService;
use crate::service::refs::{InfoService, RefsService};
use crate::service::AppState;
use crate::store::Store;
use stagecache_proto::v1::cas_server::CasServer;
use stagecache_proto::v1::info_server::InfoServer;
use stagecache_proto::v1::ledger_server::LedgerServer;
use stagecache_proto::v1::manifests_server::ManifestsServer;
use stagecache_proto::v1::refs_server::RefsServer;
use stagecache_proto::{FILE_DESCRIPTOR_SET, MAX_MESSAGE_BYTES};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// How to run a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Holds `index/` (RocksDB) and, with the default blob store, `blobs/`.
    pub data_dir: PathBuf,
    /// Blob backend URL; `None` is the local filesystem under `data_dir`.
    pub blob_store: Option<String>,
    pub clock: Arc<dyn Clock>,
    /// Directory of `*.stages.yaml` files the web page offers for a build's graph.
    pub web_stage_files: Option<PathBuf>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            blob_store: None,
            clock: Arc::new(SystemClock),
            web_stage_files: None,
        }
    }
}

/// Serves on `listener` until `shutdown` resolves; in-flight calls then finish and the
/// index is flushed before this returns.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with_web(config, listener, None, shutdown).await
}

/// [`serve`], plus the read-only web page on `web` when given (its own HTTP listener).
pub async fn serve_with_web(
    config: ServerConfig,
    listener: TcpListener,
    web: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let blob_url = config.blob_store.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&data_dir, blob_url.as_deref())).await??;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("listener address: {e}")))?;
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        blob_store = store.blobs().description(),
        "stagecache-server listening"
    );
    let state = AppState {
        store: store.clone(),
        clock: config.clock.clone(),
        events: crate::events::Events::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let web_task = web.map(|web_listener| {
        let stage_files = config
            .web_stage_files
            .as_deref()
            .map(crate::web::load_stage_files)
            .unwrap_or_default();
        tracing::info!(
            addr = ?web_listener.local_addr().ok(),
            stage_files = stage_files.len(),
            "web page listening"
        );
        let web_state = crate::web::WebState {
            store: store.clone(),
            clock: config.clock.clone(),
            stage_files: Arc::new(stage_files),
        };
        let stop = state.shutdown.clone();
        tokio::spawn(crate::web::serve_web(web_state, web_listener, async move {
            stop.cancelled().await
        }))
    });
    let stopping = state.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CasServer<CasService>>().await;
    health_reporter
        .set_serving::<ManifestsServer<ManifestsService>>()
        .await;
    health_reporter
        .set_serving::<RefsServer<RefsService>>()
        .await;
    health_reporter
        .set_serving::<LedgerServer<LedgerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Internal(format!("reflection service: {e}")))?;

    let cas = CasServer::new(CasService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let manifests = ManifestsServer::new(ManifestsService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let refs = RefsServer::new(RefsService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let ledger = LedgerServer::new(LedgerService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // With our own listener, tonic's `tcp_nodelay` does not reach the accepted sockets: set
    // it here, or small responses wait out Nagle against delayed ACKs (~40 ms per call).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });

    tonic::transport::Server::builder()
        // Large windows keep a single stream's throughput near the link's on fat pipes.
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        // Frames that hold a whole 1 MiB blob chunk with its message framing: one DATA
        // frame per chunk, not 64 of the default 16 KiB.
        .max_frame_size(Some(stagecache_proto::CHUNK_BYTES as u32 + 64 * 1024))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(cas)
        .add_service(manifests)
        .add_service(refs)
        .add_service(ledger)
        .add_service(InfoServer::new(InfoService::new(state.clone())))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ServerError::Internal(format!("transport: {e}")))?;

    if let Some(task) = web_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "web page stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "web page task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("shutting down: flushing the index");
    store.with_index(|i| i.flush()).await?;
    tracing::info!("stopped");
    Ok(())
}
