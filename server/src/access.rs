//! One access-log line per RPC, from one layer in front of every service: method,
//! namespace (noted by the permission check), caller, gRPC code, bytes received and sent, duration and the request id; and the same figures
//! as the per-RPC metrics (`stagecache_rpc_*`). The id is the client's
//! `x-request-id` (the CLI sends one and prints it with an error) or one made here; it goes
//! back in the response's `x-request-id` so a failed pipeline step can be matched to the
//! server's line. The code of a call is known only when its response ends (in the
//! trailers, or the headers of a trailers-only error), so the line is written then.

use crate::auth::Principal;
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the services tell the access line about a call: the namespace it acts in, noted
/// by the permission check ([`crate::auth::layer::Caller`]). One per request.
#[derive(Default)]
pub struct CallNote {
    namespace: std::sync::OnceLock<String>,
}

impl CallNote {
    /// Notes the call's namespace (the first one checked).
    pub fn set_namespace(&self, ns: &str) {
        let _ = self.namespace.set(ns.to_string());
    }
}

/// Request ids longer than this, or with other than printable ASCII, are replaced.
const MAX_REQUEST_ID: usize = 128;

#[derive(Clone, Default)]
pub struct AccessLogLayer;

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
}

/// What the line says, gathered as the call goes.
struct Line {
    method: String,
    request_id: String,
    started: Instant,
    caller: Option<Arc<Principal>>,
    note: Arc<CallNote>,
    /// Counted by the request body as the service reads it.
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    logged: bool,
}

impl Line {
    fn write(&mut self, code: &str) {
        if self.logged {
            return;
        }
        self.logged = true;
        let caller = self
            .caller
            .as_ref()
            .map(|p| p.identity.as_str())
            .unwrap_or("-");
        let seconds = self.started.elapsed().as_secs_f64();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let namespace = self.note.namespace.get().map(String::as_str).unwrap_or("-");
        tracing::info!(
            target: "stagecache_server::access",
            method = %self.method,
            namespace,
            caller,
            code,
            bytes_in,
            bytes_out = self.bytes_out,
            ms = seconds * 1000.0,
            request_id = %self.request_id,
            "rpc"
        );
        // A path the server does not serve (answered UNIMPLEMENTED, or UNAUTHENTICATED
        // before routing) is counted under one label, so no caller can grow the metrics.
        let method = if known_method(&self.method) {
            self.method.as_str()
        } else {
            "unknown"
        };
        let Some(m) = crate::metrics::metrics() else {
            return;
        };
        m.rpc_requests.with_label_values(&[method, code]).inc();
        m.rpc_seconds.with_label_values(&[method]).observe(seconds);
        m.rpc_received_bytes
            .with_label_values(&[method])
            .inc_by(bytes_in);
        m.rpc_sent_bytes
            .with_label_values(&[method])
            .inc_by(self.bytes_out);
    }
}

/// Whether `method` (`package.Service/Method`) is one the server serves: the protocol's
/// services, health and reflection, from their descriptors.
fn known_method(method: &str) -> bool {
    static KNOWN: std::sync::LazyLock<std::collections::HashSet<String>> =
        std::sync::LazyLock::new(|| {
            use prost::Message;
            let mut set = std::collections::HashSet::new();
            for bytes in [
                stagecache_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ] {
                let Ok(fds) = prost_types::FileDescriptorSet::decode(bytes) else {
                    continue;
                };
                for f in fds.file {
                    for s in &f.service {
                        for m in &s.method {
                            set.insert(format!("{}.{}/{}", f.package(), s.name(), m.name()));
                        }
                    }
                }
            }
            set.insert("grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
            set
        });
    KNOWN.contains(method)
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// The gRPC code named by a `grpc-status` value, as people read it.
fn code_name(status: Option<&http::HeaderValue>) -> String {
    match status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(c) => format!("{:?}", tonic::Code::from_i32(c)),
        None => "Unknown".into(),
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for AccessLog<S>
where
    S: tower::Service<http::Request<CountedBody<B>>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    R: Body + Send + 'static,
{
    type Response = http::Response<LoggedBody<R>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_REQUEST_ID
                    && v.bytes().all(|b| (0x21..0x7f).contains(&b))
            })
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let bytes_in = Arc::new(AtomicU64::new(0));
        let (parts, body) = req.into_parts();
        let mut req = http::Request::from_parts(
            parts,
            CountedBody {
                inner: body,
                bytes: bytes_in.clone(),
            },
        );
        // One header for the service to read and the answer to carry back. The answer
        // sends it as a literal, never added to the connection's HPACK table: every
        // call's id is new, and indexing each one filled the table with ids, each
        // answer's id compared against all of them first.
        let id_header = http::HeaderValue::from_str(&request_id).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        if let Some(v) = &id_header {
            req.headers_mut().insert("x-request-id", v.clone());
        }
        let note = Arc::new(CallNote::default());
        req.extensions_mut().insert(note.clone());
        let method = req.uri().path().trim_start_matches('/').to_string();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(req).await?;
            let (mut parts, body) = response.into_parts();
            let mut line = Line {
                method,
                request_id,
                started,
                caller: parts.extensions.get::<Arc<Principal>>().cloned(),
                note,
                bytes_in,
                bytes_out: 0,
                logged: false,
            };
            if let Some(v) = id_header {
                parts.headers.insert("x-request-id", v);
            }
            // A trailers-only response (an error before any message) has its code here.
            if let Some(status) = parts.headers.get("grpc-status") {
                line.write(&code_name(Some(status)));
            }
            Ok(http::Response::from_parts(
                parts,
                LoggedBody {
                    inner: body,
                    line: Some(line),
                },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts the bytes the service reads from it.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        bytes: Arc<AtomicU64>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(data) = f.data_ref() {
                this.bytes
                    .fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and writes the access line at its end.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        line: Option<Line>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A stream the client abandoned, or the server ended early.
            if let Some(line) = this.project().line.as_mut() {
                line.write("Cancelled");
            }
        }
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(frame), Some(line)) = (&polled, this.line.as_mut()) {
            match frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        line.bytes_out += data.remaining() as u64;
                    }
                    if let Some(trailers) = f.trailers_ref() {
                        line.write(&code_name(trailers.get("grpc-status")));
                    }
                }
                Some(Err(_)) => line.write("Internal"),
                None => line.write("Ok"),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn served_methods_are_known_and_nothing_else() {
        for m in [
            "stagecache.v1.Cas/Upload",
            "stagecache.v1.Ledger/Plan",
            "stagecache.v1.Refs/Set",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(super::known_method(m), "{m}");
        }
        for m in ["stagecache.v1.Cas/x1", "a1", "", "stagecache.v1.Cas"] {
            assert!(!super::known_method(m), "{m}");
        }
    }
}
