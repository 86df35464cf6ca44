//! The read-only web page on its own HTTP port (`--web-listen`): builds, a build's stage
//! graph and ledger, a stage's history, a manifest's files (and one file's download), and
//! the diff of two asset sets. Server-rendered HTML with the stage graph as inline SVG; no
//! scripts, fonts or styles from the network.
//!
//! Pages read through the [`Store`] and the ledger functions (the same plan as the `Plan`
//! call), never through gRPC; the views themselves (stage states, colours, the diff) come
//! from `stagecache-view`, as the CLI's do. URLs:
//!
//! - `/ns/{ns}/builds?prefix=` — refs, newest first
//! - `/ns/{ns}/ref/{name}?stages=` — a build: graph, stages, claims, the ref's history
//! - `/ns/{ns}/ref/{name}/~stage/{stage}` — one stage's full history (`~` cannot occur in
//!   a ref name, so the split is unambiguous)
//! - `/manifest/{hash}/{size}?q=` — a manifest's files; `.../file/{path}` downloads one
//! - `/diff?ns=&a=&b=` — each side a ref or a manifest digest

mod build;
mod builds;
mod diff;
pub mod html;
pub mod layout;
mod manifest;
mod stage;
pub mod svg;

use crate::auth::{Authenticator, Permission, Principal};
use crate::clock::Clock;
use crate::error::ServerError;
use crate::store::Store;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use html::{esc, link, page, url_part};
use stagecache_proto::{Digest, Namespace, RefName};
use stagecache_view::stages::StageFile;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A stage graph file the build page offers, named by its file name without
/// `.stages.yaml` (e.g. `validate-publish`).
#[derive(Debug, Clone)]
pub struct NamedStageFile {
    pub name: String,
    pub file: StageFile,
}

/// What every page handler shares.
#[derive(Clone)]
pub struct WebState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub stage_files: Arc<Vec<NamedStageFile>>,
    /// Who may read: the gRPC service's authenticator.
    pub auth: Arc<Authenticator>,
}

/// Reads every `*.stages.yaml` in `dir`, in name order. A file that does not parse is
/// logged and left out (the page must not fail because of one bad file).
pub fn load_stage_files(dir: &Path) -> Vec<NamedStageFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<NamedStageFile> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let name = file_name.strip_suffix(".stages.yaml")?.to_string();
            match StageFile::load(&e.path()) {
                Ok(file) => Some(NamedStageFile { name, file }),
                Err(err) => {
                    tracing::warn!(error = %err, "web: stage file left out");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The `authorization` a page request carries, as the gRPC layer takes it: `Bearer
/// TOKEN` as is, and `Basic` (what a browser sends after the 401 below) with the token as
/// the password (the user name is ignored).
fn bearer_of(headers: &HeaderMap) -> Result<Option<Vec<u8>>, PageError> {
    use base64::Engine;
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| PageError::unauthorized("authorization: not text"))?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(Some(v.as_bytes().to_vec()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| PageError::unauthorized("authorization: Basic value is not base64 text"))?;
    let token = decoded.split_once(':').map(|(_, p)| p).unwrap_or("");
    Ok(Some(format!("Bearer {token}").into_bytes()))
}

/// The namespace a page reads: `/ns/{ns}/...`, or `?ns=` (the diff); `None` for pages
/// that are not in one namespace (start page, manifests).
fn page_namespace(uri: &axum::http::Uri) -> Option<String> {
    if let Some(rest) = uri.path().strip_prefix("/ns/") {
        let segment = rest.split('/').next()?;
        return Some(
            percent_encoding::percent_decode_str(segment)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// THE access check of the web page: every request passes through here before any page
/// reads anything. The caller is resolved as for gRPC (token, or anonymous grants); a page
/// needs `read` in its namespace, and pages outside one namespace need `read` in some
/// namespace. No or bad credentials: 401 with a Basic challenge (the token is the
/// password); not allowed: 403 naming the identity and namespace.
pub async fn caller(
    auth: &Authenticator,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Arc<Principal>, PageError> {
    let authorization = bearer_of(headers)?;
    let principal = auth
        .resolve(authorization.as_deref(), None)
        .await
        .map_err(|s| PageError::unauthorized(s.message()))?;
    let allowed = match page_namespace(uri) {
        Some(ns) => match Namespace::parse("ns", &ns) {
            Ok(ns) => principal
                .check(Permission::Read, &ns)
                .map_err(|s| (s, ns.to_string())),
            // A bad namespace is the page's to report (400), not the gate's.
            Err(_) => Ok(()),
        },
        None if principal.reads_somewhere() => Ok(()),
        None => Err((principal.denied("read in any namespace"), "any".into())),
    };
    match allowed {
        Ok(()) => Ok(principal),
        Err((status, ns)) if status.code() == tonic::Code::Unauthenticated => {
            Err(PageError::unauthorized(format!(
                "sign in to read namespace {ns}: {}",
                status.message()
            )))
        }
        Err((_, ns)) => Err(PageError {
            status: StatusCode::FORBIDDEN,
            message: format!("{} may not read namespace {ns}", principal.identity),
        }),
    }
}

/// Runs in front of every page: asks [`caller`], then reports the time the page took
/// to render in a `Server-Timing` header (pages are rendered whole before they are sent;
/// a download's time is to its first byte).
async fn require_caller(State(state): State<WebState>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut response = match caller(&state.auth, req.headers(), req.uri()).await {
        Ok(c) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("page;dur={ms:.2}")) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// The router of every page.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/builds", get(builds::pick_namespace))
        .route("/ns/{ns}/builds", get(builds::page))
        .route("/ns/{ns}/ref/{*rest}", get(build::ref_or_stage))
        .route("/manifest/{hash}/{size}", get(manifest::page))
        .route(
            "/manifest/{hash}/{size}/file/{*path}",
            get(manifest::download),
        )
        .route("/diff", get(diff::page))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_caller,
        ))
        .with_state(state)
}

/// Serves the pages on `listener` until `shutdown` resolves.
pub async fn serve_web(
    state: WebState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServerError::Internal(format!("web server: {e}")))
}

/// A page that could not be shown: its status and a message saying what was wrong.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn not_found(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<ServerError> for PageError {
    fn from(e: ServerError) -> Self {
        let status = match &e {
            ServerError::Rule(_) | ServerError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "web page failed");
        }
        PageError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<stagecache_proto::RuleError> for PageError {
    fn from(e: stagecache_proto::RuleError) -> Self {
        PageError::bad_request(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            _ => "Error",
        };
        let body = format!(
            "<p class=\"error\" id=\"error\">{}</p><p>{}</p>",
            esc(&self.message),
            link("/", "Start page")
        );
        let mut response = (self.status, Html(page(title, None, &body))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Browsers ask for a user name and password; the token is the password.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Basic realm=\"stagecache (user: anything, password: your token)\", charset=\"UTF-8\"",
                ),
            );
        }
        response
    }
}

pub type PageResult = Result<Html<String>, PageError>;

async fn not_found(uri: axum::http::Uri) -> PageError {
    PageError::not_found(format!("no page at {}", uri.path()))
}

async fn index(State(state): State<WebState>) -> Html<String> {
    let mut body = String::from(
        "<form action=\"/builds\" method=\"get\"><label>Namespace <input name=\"ns\" value=\"default\"></label> <label>Ref prefix <input name=\"prefix\" placeholder=\"bar/\"></label> <button>Builds</button></form>",
    );
    body.push_str("<form action=\"/diff\" method=\"get\"><label>Namespace <input name=\"ns\" value=\"default\"></label> <label>Old <input name=\"a\" placeholder=\"ref or HASH/SIZE\"></label> <label>New <input name=\"b\" placeholder=\"ref or HASH/SIZE\"></label> <button>Diff</button></form>");
    body.push_str("<h2>Stage graphs offered</h2><ul>");
    for f in state.stage_files.iter() {
        body.push_str(&format!(
            "<li>{} ({} stages)</li>",
            esc(&f.name),
            f.file.stages.len()
        ));
    }
    body.push_str("</ul>");
    Html(page("stagecache", None, &body))
}

/// Parses the namespace of a URL.
fn namespace(value: &str) -> Result<Namespace, PageError> {
    Ok(Namespace::parse("namespace", value)?)
}

/// A query string's value for `key` (decoded), if given.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `/ns/{ns}/ref/{name}`.
fn ref_url(ns: &str, name: &str) -> String {
    format!("/ns/{}/ref/{}", url_part(ns), html::url_path(name))
}

/// `/manifest/{hash}/{size}`.
fn manifest_url(d: &Digest) -> String {
    format!("/manifest/{}/{}", d.hash_hex(), d.size())
}

/// The manifest a ref points at now, or a 404 naming the ref.
async fn resolve_ref(
    state: &WebState,
    ns: &Namespace,
    name: &str,
) -> Result<(RefName, stagecache_proto::records::RefRecord, Digest), PageError> {
    let name = RefName::parse("ref", name)?;
    let (n2, ns2) = (name.clone(), ns.clone());
    let rec = state
        .store
        .with_index(move |i| i.get_ref(&ns2, &n2))
        .await?
        .ok_or_else(|| PageError::not_found(format!("ref {name} not found in namespace {ns}")))?;
    let digest = crate::store::index::record_digest(&rec.target_hash, rec.target_size)?;
    Ok((name, rec, digest))
}

/// A side of a diff: a manifest digest if it parses as one, else a ref in `ns`.
async fn resolve_side(state: &WebState, ns: &Namespace, value: &str) -> Result<Digest, PageError> {
    match value.parse::<Digest>() {
        Ok(d) => Ok(d),
        Err(_) => Ok(resolve_ref(state, ns, value).await?.2),
    }
}

/// A stored manifest, or a 404 naming the digest.
async fn load_manifest(
    state: &WebState,
    d: Digest,
) -> Result<stagecache_proto::Manifest, PageError> {
    state
        .store
        .get_manifest(d)
        .await?
        .ok_or_else(|| PageError::not_found(format!("manifest {d} not found")))
}
