//! Connection to a server and the calls of each service, with retries and timeouts.

use crate::error::{ClientError, Result};
use crate::retry::RetryPolicy;
use futures::StreamExt;
use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::manifests_client::ManifestsClient;
use stagecache_proto::v1::refs_client::RefsClient;
use stagecache_proto::v1::{
    self, BatchDownloadRequest, BatchUploadItem, BatchUploadRequest, DownloadRequest,
    FindMissingRequest, GetManifestRequest, GetRefRequest, ListRefsRequest, PutManifestRequest,
    RefHistoryRequest, SetRefRequest, UploadRequest,
};
use stagecache_proto::{
    Digest, Manifest, Namespace, RefName, CHUNK_BYTES, MAX_FIND_MISSING, MAX_MESSAGE_BYTES,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// One unary call under the retry policy and the per-call deadline, its error named after
/// the call: `retrying!(self, self.manifests.clone(), put, req, "Manifests.Put")`.
macro_rules! retrying {
    ($this:expr, $client:expr, $method:ident, $req:expr, $call:literal) => {
        $this
            .unary(|| {
                let mut c = $client;
                let r = $this.request($req.clone());
                async move { c.$method(r).await }
            })
            .await
            .map_err(|status| $crate::error::ClientError::Status {
                call: $call,
                status,
            })
    };
}
pub(crate) use retrying;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://127.0.0.1:50051`.
    pub server: String,
    pub namespace: Namespace,
    /// Who is acting, recorded in ref history (e.g. a CI build's identity).
    pub actor: String,
    pub connect_timeout: Duration,
    /// Deadline of each unary call. Streams are bounded by `stream_idle_timeout` instead.
    pub request_timeout: Duration,
    /// Longest pause between two messages of a stream before it is abandoned.
    pub stream_idle_timeout: Duration,
    /// Transfers in flight at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Bearer token sent with every call (`authorization` metadata), when the server
    /// requires one.
    pub token: Option<Secret>,
    /// TLS settings for an `https://` server.
    pub tls: TlsOptions,
}

/// A credential: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Trims surrounding white space (a token file usually ends in a newline); refuses an
    /// empty value, and characters that cannot travel in gRPC metadata.
    pub fn new(what: &str, value: &str) -> Result<Self> {
        let v = value.trim();
        if v.is_empty() {
            return Err(ClientError::Invalid(format!("{what}: the token is empty")));
        }
        if !v.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ClientError::Invalid(format!(
                "{what}: the token holds spaces or characters outside printable ASCII"
            )));
        }
        Ok(Secret(v.to_string()))
    }

    /// A private key in PEM form (several lines), kept out of `Debug` output.
    pub fn from_pem(pem: String) -> Self {
        Secret(pem)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// PEM material for TLS: the CA that signed the server's certificate (default: the
/// system's roots) and, for mutual TLS, this client's certificate and key.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub ca_cert_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Secret>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_cert", &self.ca_cert_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .finish()
    }
}

impl TlsOptions {
    fn is_set(&self) -> bool {
        self.ca_cert_pem.is_some() || self.client_cert_pem.is_some()
    }

    /// The endpoint's TLS configuration for `server` (an `https://` URL).
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(cert, key.expose()));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Invalid(
                    "client certificate: give both --client-cert and --client-key".into(),
                ))
            }
        }
        Ok(tls)
    }
}

impl ClientConfig {
    /// Defaults for `server` and `namespace`; validates the namespace.
    pub fn new(server: impl Into<String>, namespace: &str) -> Result<Self> {
        Ok(ClientConfig {
            server: server.into(),
            namespace: Namespace::parse("namespace", namespace)?,
            actor: default_actor(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(120),
            concurrency: 8,
            retry: RetryPolicy::default(),
            token: None,
            tls: TlsOptions::default(),
        })
    }
}

/// The acting identity: `STAGECACHE_ACTOR`, else the CI's requester, else the user.
pub fn default_actor() -> String {
    for var in [
        "STAGECACHE_ACTOR",
        "BUILD_REQUESTEDFOREMAIL",
        "BUILD_REQUESTEDFOR",
        "GITHUB_ACTOR",
        "USER",
        "USERNAME",
    ] {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return v.trim().to_string();
            }
        }
    }
    "unknown".into()
}

/// A failed connection's reason, with what to do when the scheme looks wrong: an
/// `http://` URL whose server answered (so not "connection refused") but not in plain
/// HTTP/2 is most often a TLS server.
fn with_tls_hint(server: &str, reason: String) -> String {
    let refused = reason.to_lowercase().contains("connection refused");
    if server.starts_with("http://") && !refused {
        format!("{reason} (if the server uses TLS, give an https:// URL, with --ca-cert for a private CA)")
    } else if server.starts_with("https://") && reason.to_lowercase().contains("certificate") {
        format!("{reason} (give the CA that signed the server's certificate with --ca-cert)")
    } else {
        reason
    }
}

/// Eight hex digits, different in every process: the prefix of a client's request ids.
fn random_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher();
    format!("{:08x}", h.finish() as u32)
}

/// A connected client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    config: ClientConfig,
    /// `x-request-id` of each call: this client's prefix and a counter.
    request_ids: Arc<(String, std::sync::atomic::AtomicU64)>,
    channel: Channel,
    cas: CasClient<Channel>,
    manifests: ManifestsClient<Channel>,
    refs: RefsClient<Channel>,
}

fn status(call: &'static str) -> impl Fn(tonic::Status) -> ClientError {
    move |status| ClientError::Status { call, status }
}

impl Client {
    /// Connects (retrying while the server is unavailable, per the retry policy).
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(config.server.clone()).map_err(|e| {
            ClientError::Invalid(format!("server: {:?} is not a URL: {e}", config.server))
        })?;
        if config.server.starts_with("https://") {
            endpoint = endpoint
                .tls_config(config.tls.client_config()?)
                .map_err(|e| {
                    ClientError::Invalid(format!("TLS settings for {}: {e}", config.server))
                })?;
        } else if config.tls.is_set() {
            return Err(ClientError::Invalid(format!(
                "server: {:?}: --ca-cert and --client-cert need an https:// server URL",
                config.server
            )));
        }
        let endpoint = endpoint
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(false)
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024))
            // Frames that hold a whole 1 MiB blob chunk with its message framing: one DATA
            // frame per chunk, not 64 of the default 16 KiB.
            .max_frame_size(stagecache_proto::CHUNK_BYTES as u32 + 64 * 1024)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let mut last = String::new();
        let mut channel = None;
        for retry in 0..config.retry.attempts {
            match endpoint.connect().await {
                Ok(c) => {
                    channel = Some(c);
                    break;
                }
                Err(e) => {
                    // The whole chain: the TLS or HTTP/2 reason is at its end.
                    last = format!("{e}");
                    let mut src = std::error::Error::source(&e);
                    while let Some(cause) = src {
                        last = format!("{last}: {cause}");
                        src = cause.source();
                    }
                    if retry + 1 < config.retry.attempts {
                        tokio::time::sleep(config.retry.backoff(retry)).await;
                    }
                }
            }
        }
        let channel = channel.ok_or_else(|| ClientError::Connect {
            server: config.server.clone(),
            reason: with_tls_hint(&config.server, last),
        })?;
        Ok(Self::with_channel(config, channel))
    }

    /// Uses an existing channel.
    pub fn with_channel(config: ClientConfig, channel: Channel) -> Self {
        Client {
            cas: CasClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            manifests: ManifestsClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            refs: RefsClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            channel,
            config,
            request_ids: Arc::new((random_prefix(), std::sync::atomic::AtomicU64::new(1))),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn ns(&self) -> String {
        self.config.namespace.as_str().to_string()
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The connection (TLS and all), for calls this library does not wrap. Requests made
    /// on it directly carry no token.
    pub fn grpc_channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs a unary call under the retry policy.
    pub(crate) async fn unary<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.config
            .retry
            .run(call)
            .await
            .map_err(|s| self.explain_transport(s))
    }

    /// A plain-text client talking to a TLS port sees only "h2 protocol error": say what
    /// is most likely wrong.
    pub(crate) fn explain_transport(&self, status: tonic::Status) -> tonic::Status {
        let m = status.message();
        let mut chain = m.to_string();
        let mut src = std::error::Error::source(&status);
        while let Some(cause) = src {
            chain = format!("{chain}: {cause}");
            src = cause.source();
        }
        let garbled = [
            "h2 protocol error",
            "http2 error",
            "transport error",
            "operation was canceled",
            "connection closed",
            "connection reset",
        ]
        .iter()
        .any(|w| m.contains(w));
        if self.config.server.starts_with("http://")
            && garbled
            && !chain.to_lowercase().contains("refused")
        {
            let message = format!(
                "{m} (if the server uses TLS, give an https:// URL, with --ca-cert for a private CA)"
            );
            return tonic::Status::new(status.code(), message);
        }
        status
    }

    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = self.stream_request(msg);
        r.set_timeout(self.config.request_timeout);
        r
    }

    /// A request with the credentials but no deadline (streams are bounded by their idle
    /// timeout instead).
    pub(crate) fn stream_request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let (prefix, counter) = &*self.request_ids;
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut v) = format!("{prefix}-{n}").parse::<tonic::metadata::MetadataValue<_>>() {
            // A literal, outside the connection's HPACK table: each call's id is new, and
            // indexing it would only evict the headers that repeat.
            v.set_sensitive(true);
            r.metadata_mut().insert("x-request-id", v);
        }
        if let Some(token) = &self.config.token {
            // Secret::new admits only printable ASCII, which metadata always accepts.
            if let Ok(v) = format!("Bearer {}", token.expose()).parse() {
                r.metadata_mut().insert("authorization", v);
            }
        }
        r
    }

    /// Whether the server answers the standard health check (`grpc.health.v1`, whole
    /// server) with SERVING. One attempt, no retries: a health check reports what is.
    pub async fn health(&self) -> Result<bool> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let mut c = HealthClient::new(self.channel.clone());
        let resp = c
            .check(self.request(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .map_err(status("grpc.health.v1.Health.Check"))?;
        Ok(resp.into_inner().status == ServingStatus::Serving as i32)
    }

    /// The digests the server does not hold, asked in batches of 100,000.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(MAX_FIND_MISSING) {
            let req = FindMissingRequest {
                namespace: self.ns(),
                digests: chunk.iter().map(Digest::to_proto).collect(),
            };
            let resp = retrying!(self, self.cas.clone(), find_missing, req, "FindMissing")?;
            missing.extend(Digest::list_from_proto(
                "missing",
                &resp.into_inner().missing,
            )?);
        }
        Ok(missing)
    }

    /// Streams a file to the server as blob `digest`, in 1 MiB chunks; memory stays flat
    /// whatever the size. Returns whether the server already had it.
    pub async fn upload_file(
        &self,
        path: &Path,
        digest: Digest,
        progress: &indicatif::ProgressBar,
    ) -> Result<bool> {
        let read_error = std::sync::Arc::new(std::sync::Mutex::new(None::<std::io::Error>));
        let result = self
            .config
            .retry
            .run(|| self.upload_file_once(path, digest, progress, read_error.clone()))
            .await;
        if let Some(e) = read_error.lock().ok().and_then(|mut g| g.take()) {
            return Err(ClientError::io(path, e));
        }
        result.map_err(status("Upload"))
    }

    async fn upload_file_once(
        &self,
        path: &Path,
        digest: Digest,
        progress: &indicatif::ProgressBar,
        read_error: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>>,
    ) -> Result<bool, tonic::Status> {
        let open = path.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(open))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                let msg = e.to_string();
                if let Ok(mut g) = read_error.lock() {
                    *g = Some(e);
                }
                return Err(tonic::Status::cancelled(msg));
            }
        };
        let first = UploadRequest {
            namespace: self.ns(),
            digest: Some(digest.to_proto()),
            data: Default::default(),
        };
        let progress = progress.clone();
        // Reads stay one chunk ahead of the network, each chunk read on a blocking thread
        // straight into the buffer that is sent (no intermediate copy). A read error ends the
        // stream short (the server then refuses the upload) and is reported as the
        // file's error.
        let chunks = futures::stream::unfold(Some(file), move |file| {
            let progress = progress.clone();
            let read_error = read_error.clone();
            async move {
                let file = file?;
                let read = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut file = file;
                    let mut buf = Vec::with_capacity(CHUNK_BYTES);
                    let r = (&mut file).take(CHUNK_BYTES as u64).read_to_end(&mut buf);
                    (file, buf, r)
                })
                .await;
                let (file, buf) = match read {
                    Ok((file, buf, Ok(_))) => (file, buf),
                    Ok((_, _, Err(e))) => {
                        if let Ok(mut g) = read_error.lock() {
                            *g = Some(e);
                        }
                        return None;
                    }
                    Err(e) => {
                        if let Ok(mut g) = read_error.lock() {
                            *g = Some(std::io::Error::other(e.to_string()));
                        }
                        return None;
                    }
                };
                if buf.is_empty() {
                    return None;
                }
                progress.inc(buf.len() as u64);
                Some((
                    UploadRequest {
                        namespace: String::new(),
                        digest: None,
                        data: buf.into(),
                    },
                    Some(file),
                ))
            }
        });
        let stream = futures::stream::iter([first]).chain(chunks);
        let mut c = self.cas.clone();
        let resp = c.upload(self.stream_request(stream)).await?;
        Ok(resp.into_inner().already_present)
    }

    /// Uploads small blobs in one call; fails on the first item the server refused.
    pub async fn batch_upload(&self, items: Vec<(Digest, bytes::Bytes)>) -> Result<()> {
        let req = BatchUploadRequest {
            namespace: self.ns(),
            items: items
                .into_iter()
                .map(|(d, data)| BatchUploadItem {
                    digest: Some(d.to_proto()),
                    data,
                })
                .collect(),
        };
        let resp = retrying!(self, self.cas.clone(), batch_upload, req, "BatchUpload")?;
        for r in resp.into_inner().results {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let d = r
                    .digest
                    .map(|d| format!("{}/{}", d.hash, d.size_bytes))
                    .unwrap_or_default();
                return Err(ClientError::Status {
                    call: "BatchUpload",
                    status: tonic::Status::new(
                        tonic::Code::from(s.code),
                        format!("{d}: {}", s.message),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Signed URLs from which these blobs can be downloaded straight from the blob store,
    /// when the server gives them (`--direct-downloads` on a cloud store); `None` when it
    /// does not (or predates the call).
    pub async fn download_urls(&self, digests: &[Digest]) -> Result<Option<Vec<url::Url>>> {
        let req = stagecache_proto::v1::DownloadUrlsRequest {
            namespace: self.ns(),
            digests: digests.iter().map(Digest::to_proto).collect(),
        };
        let resp = match retrying!(self, self.cas.clone(), download_urls, req, "DownloadUrls") {
            Ok(r) => r.into_inner(),
            Err(ClientError::Status { status, .. })
                if status.code() == tonic::Code::Unimplemented =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if !resp.available {
            return Ok(None);
        }
        if resp.urls.len() != digests.len() {
            return Err(ClientError::Verify(format!(
                "DownloadUrls answered {} URLs for {} digests",
                resp.urls.len(),
                digests.len()
            )));
        }
        resp.urls
            .into_iter()
            .map(|u| {
                url::Url::parse(&u.url).map_err(|e| {
                    ClientError::Invalid(format!("DownloadUrls answered a bad URL: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Downloads small blobs in one call; each one is verified against its digest.
    pub async fn batch_download(&self, digests: &[Digest]) -> Result<Vec<bytes::Bytes>> {
        let req = BatchDownloadRequest {
            namespace: self.ns(),
            digests: digests.iter().map(Digest::to_proto).collect(),
        };
        let resp =
            retrying!(self, self.cas.clone(), batch_download, req, "BatchDownload")?.into_inner();
        if resp.results.len() != digests.len() {
            return Err(ClientError::Verify(format!(
                "BatchDownload answered {} results for {} digests",
                resp.results.len(),
                digests.len()
            )));
        }
        // Hashing megabytes is blocking work: off the runtime's workers.
        let digests = digests.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(digests.len());
            for (d, r) in digests.iter().zip(resp.results) {
                if let Some(s) = r.status.filter(|s| s.code != 0) {
                    return Err(ClientError::Status {
                        call: "BatchDownload",
                        status: tonic::Status::new(tonic::Code::from(s.code), s.message),
                    });
                }
                let actual = Digest::of_bytes(&r.data);
                if actual != *d {
                    return Err(ClientError::Verify(format!(
                        "blob {d}: received bytes hash to {actual}"
                    )));
                }
                out.push(r.data);
            }
            Ok(out)
        })
        .await
        .map_err(|e| ClientError::Invalid(format!("verifying task failed: {e}")))?
    }

    /// Opens a download stream of `[offset, offset + limit)` (limit 0: to the end).
    pub async fn download_stream(
        &self,
        digest: Digest,
        offset: u64,
        limit: u64,
    ) -> Result<tonic::Streaming<v1::DownloadResponse>, tonic::Status> {
        let mut c = self.cas.clone();
        let resp = c
            .download(self.stream_request(DownloadRequest {
                namespace: self.ns(),
                digest: Some(digest.to_proto()),
                offset,
                limit,
            }))
            .await?;
        Ok(resp.into_inner())
    }

    /// Stores a manifest; the server's digest must equal the one computed here.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<Digest> {
        let req = PutManifestRequest {
            namespace: self.ns(),
            manifest: Some(manifest.to_proto()),
        };
        let resp = retrying!(self, self.manifests.clone(), put, req, "Manifests.Put")?.into_inner();
        let server = Digest::from_required("digest", resp.digest.as_ref())?;
        let local = manifest.digest();
        if server != local {
            return Err(ClientError::Verify(format!(
                "server computed manifest digest {server}, this client computed {local}"
            )));
        }
        Ok(server)
    }

    /// Fetches a manifest and checks that it hashes to `digest`.
    pub async fn get_manifest(&self, digest: Digest) -> Result<Manifest> {
        let req = GetManifestRequest {
            namespace: self.ns(),
            digest: Some(digest.to_proto()),
        };
        let resp = retrying!(self, self.manifests.clone(), get, req, "Manifests.Get")?.into_inner();
        let wire = resp
            .manifest
            .ok_or_else(|| ClientError::Verify("Manifests.Get answered no manifest".into()))?;
        let m = Manifest::from_proto(&wire)?;
        if m.digest() != digest {
            return Err(ClientError::Verify(format!(
                "manifest {digest}: received entries hash to {}",
                m.digest()
            )));
        }
        Ok(m)
    }

    /// Points ref `name` at a manifest. `expected`: `Some(None)` requires the ref to be
    /// absent, `Some(Some(d))` requires it to point at `d`; a mismatch is ABORTED.
    pub async fn set_ref(
        &self,
        name: &str,
        target: Digest,
        expected: Option<Option<Digest>>,
        reason: &str,
    ) -> Result<v1::SetRefResponse> {
        let name = RefName::parse("ref", name)?;
        let req = SetRefRequest {
            namespace: self.ns(),
            name: name.to_string(),
            target: Some(target.to_proto()),
            expected: expected.flatten().map(|d| d.to_proto()),
            expect_absent: matches!(expected, Some(None)),
            actor: self.config.actor.clone(),
            reason: reason.to_string(),
        };
        Ok(retrying!(self, self.refs.clone(), set, req, "Refs.Set")?.into_inner())
    }

    pub async fn get_ref(&self, name: &str) -> Result<v1::Ref> {
        let name = RefName::parse("ref", name)?;
        let req = GetRefRequest {
            namespace: self.ns(),
            name: name.to_string(),
        };
        retrying!(self, self.refs.clone(), get, req, "Refs.Get")?
            .into_inner()
            .r#ref
            .ok_or_else(|| ClientError::Verify("Refs.Get answered no ref".into()))
    }

    /// The manifest digest a ref points at.
    pub async fn resolve_ref(&self, name: &str) -> Result<Digest> {
        let r = self.get_ref(name).await?;
        Ok(Digest::from_required("ref.target", r.target.as_ref())?)
    }

    /// Every ref whose name starts with `prefix`, following pages.
    pub async fn list_refs(&self, prefix: &str, limit: usize) -> Result<Vec<v1::Ref>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let req = ListRefsRequest {
                namespace: self.ns(),
                prefix: prefix.to_string(),
                limit: (limit - out.len()).min(10_000) as u32,
                page_token: token.clone(),
            };
            let resp = retrying!(self, self.refs.clone(), list, req, "Refs.List")?.into_inner();
            out.extend(resp.refs);
            if resp.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = resp.next_page_token;
        }
    }

    /// Pins a ref (retention never expires it) or, `pin` false, unpins it; `reason` is
    /// kept in its history.
    pub async fn pin_ref(&self, name: &str, pin: bool, reason: &str) -> Result<v1::PinRefResponse> {
        let name = RefName::parse("ref", name)?;
        let req = v1::PinRefRequest {
            namespace: self.ns(),
            name: name.to_string(),
            unpin: !pin,
            actor: self.config.actor.clone(),
            reason: reason.to_string(),
        };
        Ok(retrying!(self, self.refs.clone(), pin, req, "Refs.Pin")?.into_inner())
    }

    /// Changes of a ref, newest first.
    pub async fn ref_history(&self, name: &str, limit: u32) -> Result<Vec<v1::RefChange>> {
        let name = RefName::parse("ref", name)?;
        let req = RefHistoryRequest {
            namespace: self.ns(),
            name: name.to_string(),
            limit,
        };
        Ok(
            retrying!(self, self.refs.clone(), history, req, "Refs.History")?
                .into_inner()
                .changes,
        )
    }
}
