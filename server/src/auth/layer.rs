//! The layer in front of every service: resolves the caller once per request and puts the
//! [`Principal`] into the request's extensions, or answers UNAUTHENTICATED. Handlers read
//! it with [`caller`].

use super::{Authenticator, Principal};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is the one that was made ready: take it, leave a fresh one behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            // A header value clone shares its bytes (no copy on every call).
            let header = req.headers().get(http::header::AUTHORIZATION).cloned();
            let cert = peer_cert(req.extensions());
            match auth
                .resolve(
                    header.as_ref().map(|v| v.as_bytes()),
                    cert.as_ref().map(|c| c.as_ref()),
                )
                .await
            {
                Ok(principal) => {
                    use super::principal::Authentication;
                    let outcome = match principal.authentication {
                        Authentication::Open => "open",
                        Authentication::Anonymous => "anonymous",
                        Authentication::Verified => "verified",
                    };
                    if let Some(m) = crate::metrics::metrics() {
                        m.auth.with_label_values(&[outcome]).inc();
                    }
                    req.extensions_mut().insert(principal.clone());
                    let mut response = inner.call(req).await?;
                    // For the access log, outside this layer.
                    response.extensions_mut().insert(principal);
                    Ok(response)
                }
                Err(status) => {
                    if let Some(m) = crate::metrics::metrics() {
                        m.auth.with_label_values(&["unauthenticated"]).inc();
                    }
                    tracing::info!(path = %req.uri().path(), reason = status.message(), "unauthenticated call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The leaf certificate the client presented in the TLS handshake (verified against
/// `--tls-client-ca` by then), if any.
pub fn peer_cert(
    extensions: &http::Extensions,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?
        .first()
        .cloned()
}

/// The caller of a request, as the layer resolved it. A request that did not pass the
/// layer has no caller and is refused (fail closed).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    let principal = req
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller was resolved for this request"))?;
    Ok(Caller {
        principal,
        note: req
            .extensions()
            .get::<Arc<crate::access::CallNote>>()
            .cloned(),
    })
}

/// The caller of one request: its [`Principal`], and the request's note for the access
/// log, where the permission checks write the namespace the call acts in.
pub struct Caller {
    pub principal: Arc<Principal>,
    note: Option<Arc<crate::access::CallNote>>,
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl Caller {
    fn note(&self, ns: &stagecache_proto::Namespace) {
        if let Some(n) = &self.note {
            n.set_namespace(ns.as_str());
        }
    }

    /// [`Principal::check`], noting the namespace for the access log.
    pub fn check(
        &self,
        perm: super::Permission,
        ns: &stagecache_proto::Namespace,
    ) -> Result<(), Status> {
        self.note(ns);
        self.principal.check(perm, ns)
    }

    /// [`Principal::check_ref`], noting the namespace for the access log.
    pub fn check_ref(&self, ns: &stagecache_proto::Namespace, name: &str) -> Result<(), Status> {
        self.note(ns);
        self.principal.check_ref(ns, name)
    }
}
