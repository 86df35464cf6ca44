//! Prometheus metrics, served as text at `/metrics` beside a small `/status` JSON on their
//! own HTTP port (`--metrics-listen`).
//!
//! One registry for the process ([`metrics`]), and only when the server has a metrics
//! port ([`enable`]): without one, nothing is counted. What is counted is counted in one place
//! each: per-RPC figures in the access layer in front of every service (`access.rs`),
//! storage operations in the [`Metered`](crate::store::backend::metered::Metered) wrapper
//! around the storage backend, and the domain counters (blobs, ledger records, plan
//! decisions, claims, auth) where the decision is made. Gauges that describe the state
//! (RocksDB's size, the data dir's free space) are read when scraped.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::OnceLock;

/// Latency buckets (seconds) from 0.5 ms to 5 min: ledger calls take about a millisecond,
/// a fetch of a large blob minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// Calls by method and gRPC code.
    pub rpc_requests: IntCounterVec,
    pub rpc_seconds: HistogramVec,
    pub rpc_received_bytes: IntCounterVec,
    pub rpc_sent_bytes: IntCounterVec,
    /// Blob-store operations by backend, operation and outcome (ok, not_found, error).
    pub storage_ops: IntCounterVec,
    pub storage_seconds: HistogramVec,
    pub storage_bytes_written: IntCounterVec,
    /// Blobs stored after their bytes hashed to their digest.
    pub blobs_uploaded: IntCounter,
    pub blob_bytes_uploaded: IntCounter,
    /// Uploads refused because the bytes did not hash to the digest (or size).
    pub blobs_refused: IntCounter,
    /// Whole blobs read and verified on the way out.
    pub blobs_verified: IntCounter,
    /// Blobs found damaged in the store (quarantined).
    pub blobs_damaged: IntCounter,
    /// Ledger records appended, by status.
    pub ledger_records: IntCounterVec,
    /// Plan decisions by RUN / SKIP / BLOCKED.
    pub plan_decisions: IntCounterVec,
    /// Claims by outcome: granted, refused_held, refused_succeeded, renewed, released;
    /// expired (a grant that replaced another holder's expired claim).
    pub claims: IntCounterVec,
    /// How callers were resolved (open, anonymous, verified, unauthenticated), and
    /// permission checks denied (denied).
    pub auth: IntCounterVec,
    /// Journal entries written to the blob store.
    pub journal_entries: IntCounter,
    /// Garbage collections run (not dry), and the blobs (manifests included) and bytes
    /// they removed.
    pub gc_runs: IntCounter,
    pub scrub_runs: IntCounter,
    /// The local read-through tier: hit, miss, filled, evicted, dropped.
    pub read_tier: IntCounterVec,
    /// Status and plan reads of a subject's ledger heads: served from the cache or not.
    pub ledger_cache_hits: IntCounter,
    pub ledger_cache_misses: IntCounter,
    pub scrubbed_bytes: IntCounter,
    pub gc_blobs: IntCounter,
    pub gc_bytes: IntCounter,
    /// Uploads refused for room, by the limit that refused them.
    pub uploads_refused: IntCounterVec,
    /// Bytes of the blobs stored, and the cap (0: none); read when scraped.
    pub blob_bytes_stored: IntGauge,
    pub blob_bytes_max: IntGauge,
    /// Read when scraped.
    pub index_live_bytes: IntGauge,
    pub index_pending_compaction_bytes: IntGauge,
    pub data_dir_free_bytes: IntGauge,
    /// 1 while this server holds the blob store's lease and may write, 0 once fenced.
    pub journal_writable: IntGauge,
    /// The sequence number of the next journal entry.
    pub journal_next_entry: IntGauge,
    pub up_since_seconds: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter1(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new_custom(Some("stagecache".into()), None).expect("valid registry");
        #[cfg(target_os = "linux")]
        {
            // CPU seconds, resident memory, open files of this process.
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let ledger_cache = counter(
            &r,
            "ledger_cache_total",
            "Reads of a subject's ledger heads (status, plan): served from the heads cache (hit) or from RocksDB (miss)",
            &["event"],
        );
        let m = Metrics {
            rpc_requests: counter(
                &r,
                "rpc_requests_total",
                "gRPC calls by method and status code",
                &["method", "code"],
            ),
            rpc_seconds: histogram(
                &r,
                "rpc_duration_seconds",
                "gRPC call duration, from the request to the end of the response",
                &["method"],
            ),
            rpc_received_bytes: counter(
                &r,
                "rpc_received_bytes_total",
                "Request bytes received (gRPC framing included), by method",
                &["method"],
            ),
            rpc_sent_bytes: counter(
                &r,
                "rpc_sent_bytes_total",
                "Response bytes sent (gRPC framing included), by method",
                &["method"],
            ),
            storage_ops: counter(
                &r,
                "storage_operations_total",
                "Blob-store operations by backend, operation and outcome",
                &["backend", "op", "outcome"],
            ),
            storage_seconds: histogram(
                &r,
                "storage_operation_duration_seconds",
                "Blob-store operation duration (a read: until its stream is open)",
                &["backend", "op"],
            ),
            storage_bytes_written: counter(
                &r,
                "storage_written_bytes_total",
                "Bytes written to the blob store, by backend",
                &["backend"],
            ),
            blobs_uploaded: counter1(
                &r,
                "blobs_uploaded_total",
                "Blobs stored after their bytes hashed to their digest",
            ),
            blob_bytes_uploaded: counter1(
                &r,
                "blob_uploaded_bytes_total",
                "Bytes of the blobs stored",
            ),
            gc_runs: counter1(&r, "gc_runs_total", "Garbage collections run"),
            scrub_runs: counter1(&r, "scrub_runs_total", "Scrubs finished (every blob re-hashed)"),
            read_tier: counter(
                &r,
                "read_tier_total",
                "Reads of blobs through the local read-through tier (hit, miss) and its copies (filled, evicted, dropped: damaged or lost)",
                &["event"],
            ),
            ledger_cache_hits: ledger_cache.with_label_values(&["hit"]),
            ledger_cache_misses: ledger_cache.with_label_values(&["miss"]),
            scrubbed_bytes: counter1(
                &r,
                "scrub_bytes_total",
                "Bytes re-hashed by scrubs, periodic and offline",
            ),
            gc_blobs: counter1(
                &r,
                "gc_collected_blobs_total",
                "Blobs (manifests included) removed by garbage collection",
            ),
            gc_bytes: counter1(
                &r,
                "gc_collected_bytes_total",
                "Bytes of the blobs removed by garbage collection",
            ),
            blobs_refused: counter1(
                &r,
                "blobs_refused_total",
                "Uploads refused because the bytes did not match the digest",
            ),
            blobs_verified: counter1(
                &r,
                "blobs_verified_total",
                "Whole blobs hashed on their way out and found intact",
            ),
            blobs_damaged: counter1(
                &r,
                "blobs_damaged_total",
                "Blobs found damaged in the store (missing, short or wrong bytes) and quarantined",
            ),
            ledger_records: counter(
                &r,
                "ledger_records_total",
                "Stage results recorded, by status",
                &["status"],
            ),
            plan_decisions: counter(
                &r,
                "plan_decisions_total",
                "Plan answers per stage: RUN, SKIP or BLOCKED",
                &["decision"],
            ),
            claims: counter(
                &r,
                "claims_total",
                "Claims by outcome: granted, refused_held, refused_succeeded, renewed, released; expired: a grant that replaced another holder's expired claim",
                &["outcome"],
            ),
            auth: counter(
                &r,
                "auth_total",
                "Calls by how the caller was resolved (open, anonymous, verified, unauthenticated), and permission checks denied (denied)",
                &["outcome"],
            ),
            journal_entries: counter1(
                &r,
                "journal_entries_total",
                "Journal entries written to the blob store",
            ),
            uploads_refused: counter(
                &r,
                "uploads_refused_total",
                "Uploads refused for room, by limit: max_bytes or min_free_space",
                &["reason"],
            ),
            blob_bytes_stored: gauge(
                &r,
                "blob_stored_bytes",
                "Bytes of the blobs in the index",
            ),
            blob_bytes_max: gauge(
                &r,
                "blob_max_bytes",
                "The cap on blob bytes (--max-bytes); 0 for none",
            ),
            index_live_bytes: gauge(
                &r,
                "index_live_data_bytes",
                "RocksDB's estimate of the index's live data",
            ),
            index_pending_compaction_bytes: gauge(
                &r,
                "index_pending_compaction_bytes",
                "RocksDB's estimate of bytes compaction still has to rewrite",
            ),
            data_dir_free_bytes: gauge(
                &r,
                "data_dir_free_bytes",
                "Free bytes on the data dir's file system (for the server's user)",
            ),
            journal_writable: gauge(
                &r,
                "journal_writable",
                "1 while this server holds the blob store's lease and may write; 0 once another server took it over",
            ),
            journal_next_entry: gauge(
                &r,
                "journal_next_entry",
                "Sequence number of the next journal entry this server writes",
            ),
            up_since_seconds: gauge(
                &r,
                "start_time_seconds",
                "When the server started, in seconds since the Unix epoch",
            ),
            registry: r,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        m.up_since_seconds.set(now);
        // Series with a known, small set of labels exist from the start at 0, so a rate
        // or an alert over them has data before the first event.
        for s in ["started", "succeeded", "failed", "cancelled", "invalidated"] {
            m.ledger_records.with_label_values(&[s]);
        }
        for d in ["run", "skip", "blocked"] {
            m.plan_decisions.with_label_values(&[d]);
        }
        for o in [
            "granted",
            "refused_held",
            "refused_succeeded",
            "renewed",
            "released",
            "expired",
        ] {
            m.claims.with_label_values(&[o]);
        }
        for o in ["open", "anonymous", "verified", "unauthenticated", "denied"] {
            m.auth.with_label_values(&[o]);
        }
        for r in ["max_bytes", "min_free_space"] {
            m.uploads_refused.with_label_values(&[r]);
        }
        m
    }

    /// The registry in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (a server with a metrics port does, before it opens
/// its store). Without it nothing is counted: nobody could read it.
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The process's metrics, if they are on.
pub fn metrics() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Free bytes (for an unprivileged user) on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Serves `/metrics` (Prometheus text) and `/status` (JSON) on `listener` until `shutdown`.
pub async fn serve_metrics(
    store: crate::store::Store,
    data_dir: std::path::PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let started = std::time::Instant::now();
    let state = std::sync::Arc::new(StatusSource {
        store,
        data_dir,
        started,
    });
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/status", get(status))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

struct StatusSource {
    store: crate::store::Store,
    data_dir: std::path::PathBuf,
    started: std::time::Instant,
}

type Source = axum::extract::State<std::sync::Arc<StatusSource>>;

/// Reads the gauges that describe the state (off the async workers: RocksDB and statvfs
/// may block).
async fn refresh(src: &std::sync::Arc<StatusSource>) -> (u64, u64, Option<u64>) {
    let s = src.clone();
    let read = tokio::task::spawn_blocking(move || {
        let sizes = s.store.index().size_estimates().unwrap_or_default();
        (sizes.0, sizes.1, free_bytes(&s.data_dir))
    })
    .await
    .unwrap_or_default();
    let m = enable();
    m.index_live_bytes.set(read.0 as i64);
    m.index_pending_compaction_bytes.set(read.1 as i64);
    if let Some(free) = read.2 {
        m.data_dir_free_bytes.set(free as i64);
    }
    if let Some(s) = src.store.space() {
        m.blob_bytes_stored.set(s.used() as i64);
        m.blob_bytes_max.set(s.max_bytes().unwrap_or(0) as i64);
    }
    if let Some(j) = src.store.journal_state() {
        m.journal_writable.set(j.writable as i64);
        m.journal_next_entry.set(j.next_entry as i64);
    }
    read
}

async fn scrape(axum::extract::State(src): Source) -> impl axum::response::IntoResponse {
    refresh(&src).await;
    (
        [(
            http::header::CONTENT_TYPE,
            prometheus::TEXT_FORMAT.to_string(),
        )],
        enable().render(),
    )
}

/// What `/status` answers.
#[derive(serde::Serialize)]
struct Status {
    version: &'static str,
    uptime_seconds: u64,
    blob_store: String,
    backend: &'static str,
    data_dir: String,
    data_dir_free_bytes: Option<u64>,
    index_live_data_bytes: u64,
    index_pending_compaction_bytes: u64,
    journal: Option<crate::store::JournalState>,
    damaged_blobs: u64,
    blob_stored_bytes: Option<u64>,
    blob_max_bytes: Option<u64>,
}

async fn status(axum::extract::State(src): Source) -> impl axum::response::IntoResponse {
    let (live, pending, free) = refresh(&src).await;
    let blobs = src.store.blobs();
    let body = Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: src.started.elapsed().as_secs(),
        blob_store: blobs.description().to_string(),
        backend: blobs.backend().kind(),
        data_dir: src.data_dir.display().to_string(),
        data_dir_free_bytes: free,
        index_live_data_bytes: live,
        index_pending_compaction_bytes: pending,
        journal: src.store.journal_state(),
        damaged_blobs: src.store.damaged_blobs(),
        blob_stored_bytes: src.store.space().map(|s| s.used()),
        blob_max_bytes: src.store.space().and_then(|s| s.max_bytes()),
    };
    (
        [(http::header::CONTENT_TYPE, "application/json".to_string())],
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )
}
