//! Assembles the services into one tonic server with health, reflection, message limits
//! and graceful shutdown.

use crate::auth::layer::AuthLayer;
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, ServerError};
use crate::service::cas::CasService;
use crate::service::ledger::LedgerService;
use crate::service::manifests::ManifestsService;
use crate::service::refs::{AdminService, InfoService, RefsService};
use crate::service::AppState;
use crate::store::Store;
use stagecache_proto::v1::admin_server::AdminServer;
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

/// `--min-free-space` by default: room for RocksDB's own writes and compactions.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 1 << 30;

/// How to run a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Holds `index/` (RocksDB) and, with the default blob store, `blobs/`.
    pub data_dir: PathBuf,
    /// Blob backend URL; `None` is the local filesystem under `data_dir`.
    pub blob_store: Option<String>,
    /// Cloud options from the configuration file (`azure_*`, `aws_*`, `google_*`); the
    /// environment's win.
    pub blob_store_options: Vec<(String, String)>,
    pub clock: Arc<dyn Clock>,
    /// Directory of `*.stages.yaml` files the web page offers for a build's graph.
    pub web_stage_files: Option<PathBuf>,
    /// Who may do what; [`Authenticator::open`] when there is no auth configuration.
    pub auth: Arc<Authenticator>,
    /// Allow an open server on a non-loopback address.
    pub insecure_open: bool,
    /// TLS on the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<TlsSettings>,
    /// Take the blob store's lease even from a server that looks alive.
    pub take_over: bool,
    /// Answer `Cas.DownloadUrls` with URLs valid this long (`--direct-downloads`), where
    /// the blob store signs URLs.
    pub direct_downloads: Option<std::time::Duration>,
    /// Refuse uploads past this many bytes of blobs (`--max-bytes`).
    pub max_bytes: Option<u64>,
    /// Refuse uploads that would leave less free on the data dir's (and a local blob
    /// store's) file system (`--min-free-space`).
    pub min_free_space: u64,
    /// What retention keeps: the grace period and ref expiry per namespace.
    pub retention: crate::store::gc::Retention,
    /// Collect garbage this often (`--gc-interval`); `None`: only when asked, or when an
    /// upload is refused for room.
    pub gc_interval: Option<std::time::Duration>,
    /// Scrub every stored blob this often (`--scrub-interval`), reading at most
    /// `scrub_rate` bytes a second; `None`: only `stagecache-server scrub`.
    pub scrub_interval: Option<std::time::Duration>,
    pub scrub_rate: u64,
    /// A local read-through tier in front of a cloud blob store (`--local-tier DIR`,
    /// `--local-tier-max-bytes`): directory and bound.
    pub local_tier: Option<(PathBuf, u64)>,
    /// The most the ledger heads cache holds (`--ledger-cache`); 0 turns it off.
    pub ledger_cache_bytes: u64,
    /// Blobs of at least this size bypass the page cache on a local blob store
    /// (`--direct-io`; 0: none); `None`: [`crate::store::DEFAULT_DIRECT_IO_MIN`] on a
    /// local store, nothing on a cloud one.
    pub direct_io: Option<u64>,
    /// Serve reads without hashing them (`--unverified-reads`): only for the benchmark's
    /// measure of what verified reads cost. Damaged bytes are then served.
    pub unverified_reads: bool,
}

/// The server's certificate and key (PEM) and, for mutual TLS, the CA that signs client
/// certificates.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    /// With a client CA: also accept clients without a certificate (they authenticate
    /// with a token, or are anonymous).
    pub client_cert_optional: bool,
}

impl TlsSettings {
    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(self.client_cert_optional);
        }
        tls
    }
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            blob_store: None,
            blob_store_options: Vec::new(),
            clock: Arc::new(SystemClock),
            web_stage_files: None,
            auth: Arc::new(Authenticator::open()),
            insecure_open: false,
            tls: None,
            take_over: false,
            direct_downloads: None,
            max_bytes: None,
            min_free_space: DEFAULT_MIN_FREE_SPACE,
            retention: Default::default(),
            gc_interval: None,
            scrub_interval: None,
            scrub_rate: DEFAULT_SCRUB_RATE,
            local_tier: None,
            ledger_cache_bytes: crate::store::index::DEFAULT_LEDGER_CACHE_BYTES,
            direct_io: None,
            unverified_reads: false,
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
    let listeners = Listeners {
        grpc: listener,
        web,
        metrics: None,
    };
    serve_listeners(config, listeners, shutdown).await
}

/// The ports a server answers on.
pub struct Listeners {
    pub grpc: TcpListener,
    /// The read-only web page.
    pub web: Option<TcpListener>,
    /// `/metrics` and `/status`.
    pub metrics: Option<TcpListener>,
}

/// Serves gRPC, and the web page and the metrics port when given, until `shutdown`
/// resolves; in-flight calls then finish and the index is flushed before this returns.
pub async fn serve_listeners(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Listeners {
        grpc: listener,
        web,
        metrics,
    } = listeners;
    if metrics.is_some() {
        // Before the store opens: its backend's series start at 0.
        crate::metrics::enable();
    }
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("listener address: {e}")))?;
    let web_addr = match &web {
        Some(w) => Some(
            w.local_addr()
                .map_err(|e| ServerError::Internal(format!("web listener address: {e}")))?,
        ),
        None => None,
    };
    if config.auth.is_open() {
        for a in std::iter::once(addr).chain(web_addr) {
            if !a.ip().is_loopback() && !config.insecure_open {
                return Err(ServerError::InvalidArgument(format!(
                    "refusing to serve {a} open: without --auth-config FILE anyone who reaches it may record results, move refs and force a re-sign; give --auth-config FILE, or --insecure-open to accept that"
                )));
            }
        }
        tracing::warn!(%addr, "no auth configuration: every caller may do everything (give --auth-config FILE to require tokens)");
    }
    let data_dir = config.data_dir.clone();
    let blob_url = config.blob_store.clone();
    let blob_options = config.blob_store_options.clone();
    let local_tier = config.local_tier.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = Store::open_configured(&data_dir, blob_url.as_deref(), &blob_options)?;
        match local_tier {
            Some((dir, max_bytes)) => store.with_local_tier(&dir, max_bytes),
            None => Ok(store),
        }
    })
    .await??
    .with_clock(config.clock.clone());
    store.set_retention(config.retention.clone());
    store
        .index()
        .set_ledger_cache_bytes(config.ledger_cache_bytes);
    store.set_direct_io(config.direct_io)?;
    if config.unverified_reads {
        store.set_verify_reads(false);
        tracing::warn!("--unverified-reads: reads are not hashed, and damaged bytes are served (a benchmark setting)");
    }
    // The blob store is the system of record: rebuild an empty index from its journal,
    // then journal every change from here on.
    let (_, lease) = store.start_journal(config.take_over).await?;
    store
        .limit_space(config.max_bytes, config.min_free_space, &config.data_dir)
        .await?;
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
        direct_downloads: config.direct_downloads,
    };
    if config.direct_downloads.is_some() {
        // Whether this backend signs URLs: ask for none and see.
        match store.blobs().signed_urls(&[], std::time::Duration::from_secs(60)).await {
            Ok(Some(_)) => tracing::info!(
                ttl_s = config.direct_downloads.map(|d| d.as_secs()),
                "direct downloads: fetches get signed URLs to the blob store"
            ),
            Ok(None) => tracing::warn!(
                blob_store = store.blobs().description(),
                "direct downloads asked for, but this blob store cannot sign URLs: fetches stream through the server"
            ),
            Err(e) => tracing::warn!(error = %e, "direct downloads: cannot sign URLs; fetches will stream through the server"),
        }
    }
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
            auth: config.auth.clone(),
        };
        let stop = state.shutdown.clone();
        tokio::spawn(crate::web::serve_web(web_state, web_listener, async move {
            stop.cancelled().await
        }))
    });
    let metrics_task = metrics.map(|metrics_listener| {
        tracing::info!(
            addr = ?metrics_listener.local_addr().ok(),
            "metrics listening (/metrics, /status)"
        );
        let stop = state.shutdown.clone();
        tokio::spawn(crate::metrics::serve_metrics(
            store.clone(),
            config.data_dir.clone(),
            metrics_listener,
            async move { stop.cancelled().await },
        ))
    });
    let lease_task = tokio::spawn(lease.clone().keep(state.shutdown.clone()));
    let gc_task = tokio::spawn(collect_garbage(
        store.clone(),
        config.gc_interval,
        state.shutdown.clone(),
    ));
    let scrub_task = config.scrub_interval.map(|every| {
        tokio::spawn(scrub_periodically(
            store.clone(),
            every,
            config.scrub_rate,
            state.shutdown.clone(),
        ))
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
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
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
    // Each connection holds its small writes until HTTP/2 flushes: a unary answer then
    // leaves in one write instead of two (`conn`).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.map(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            crate::conn::Coalesced::new(s)
        })
    });

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server_config())
            .map_err(|e| ServerError::InvalidArgument(format!("TLS settings: {e}")))?;
    }
    builder
        // Large windows keep a single stream's throughput near the link's on fat pipes.
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        // Frames that hold a whole 1 MiB blob chunk with its message framing: one DATA
        // frame per chunk, not 64 of the default 16 KiB.
        .max_frame_size(Some(stagecache_proto::CHUNK_BYTES as u32 + 64 * 1024))
        .tcp_nodelay(true)
        // One access-log line per call (outermost: it sees the caller and the code).
        .layer(crate::access::AccessLogLayer)
        // Resolves the caller of every request once; the services ask it.
        .layer(AuthLayer::new(config.auth.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(cas)
        .add_service(manifests)
        .add_service(refs)
        .add_service(ledger)
        .add_service(InfoServer::new(InfoService::new(state.clone())))
        .add_service(AdminServer::new(AdminService::new(state.clone())))
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
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics port stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "metrics task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = scrub_task {
        let _ = task.await;
    }
    tracing::info!("shutting down: flushing the index");
    store.with_index(|i| i.flush()).await?;
    let _ = lease_task.await;
    let _ = gc_task.await;
    lease.release().await;
    tracing::info!("stopped");
    Ok(())
}

/// Bytes a second a periodic scrub reads by default: a fraction of a disk's or a cloud
/// store's bandwidth, so the server's own reads hardly notice.
pub const DEFAULT_SCRUB_RATE: u64 = 50 * 1024 * 1024;

/// Scrubs the whole store every `every`, at most `rate` bytes a second, on the schedule
/// the index keeps ([`Store::scrub_schedule`]: an interrupted run goes on at once where
/// it stopped); stops where it is at shutdown.
async fn scrub_periodically(
    store: Store,
    every: std::time::Duration,
    rate: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut wait = match store.scrub_schedule(every).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the scrub schedule; scrubbing after one interval");
            every
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        let run = tokio::select! {
            _ = stop.cancelled() => return,
            r = store.scrub_at(Some(rate), true) => r,
        };
        match run {
            Ok(r) => tracing::info!(
                blobs = r.blobs,
                bytes = r.bytes,
                seconds = r.seconds,
                resumed = r.resumed,
                damaged = r.damaged.len(),
                damaged_refs = ?r.damaged_refs,
                unreadable = r.unreadable.len(),
                "scrub done"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "scrub failed; the next one goes on where it stopped")
            }
        }
    }
}

/// Collects garbage every `interval` (if any), and when an upload was refused for room (at
/// most once a minute), until `stop`.
async fn collect_garbage(
    store: Store,
    interval: Option<std::time::Duration>,
    stop: tokio_util::sync::CancellationToken,
) {
    const WOKEN_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    let mut last_woken: Option<std::time::Instant> = None;
    loop {
        let tick = async {
            match interval {
                Some(i) => tokio::time::sleep(i).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick => {}
            _ = store.gc.woken() => {
                if last_woken.is_some_and(|t| t.elapsed() < WOKEN_AT_MOST_EVERY) {
                    continue;
                }
                last_woken = Some(std::time::Instant::now());
                tracing::info!("an upload was refused for room: collecting garbage");
            }
        }
        let run = tokio::select! {
            _ = stop.cancelled() => return,
            r = crate::store::gc::collect_here(&store, false) => r,
        };
        if let Err(e) = run {
            tracing::warn!(error = %e, "garbage collection failed; the next one finishes its work");
        }
    }
}
