//! Identity and access. One layer in front of the services ([`layer::AuthLayer`]) turns
//! each request's credentials into a [`Principal`] — a token this server minted, a CI
//! identity token (OIDC), or none (anonymous) — and puts it into the request; handlers ask
//! it ([`Principal::check`]) before they do anything. Without an auth configuration the
//! server is open (every caller may do everything), which it allows only on loopback
//! addresses unless told `--insecure-open`.

pub mod cert;
pub mod config;
pub mod layer;
pub mod oidc;
pub mod pattern;
pub mod principal;
pub mod token;

pub use config::AuthConfig;
pub use principal::{Authentication, Grant, Permission, Principal};

use base64::Engine;
use stagecache_proto::quote::quote;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::Status;

/// Verdicts kept at most; past it, expired ones go, then everything (re-verified on use).
const CACHE_MAX: usize = 10_000;

/// Resolves credentials to principals; one per server.
pub struct Authenticator {
    /// `None`: open server.
    configured: Option<Configured>,
}

struct Configured {
    anonymous: Arc<Principal>,
    minted: Option<token::TokenVerifier>,
    oidc: Vec<oidc::OidcIssuer>,
    certificates: Vec<config::CertificateRule>,
    /// Verified tokens (and client certificates) by BLAKE3 of the token, until they expire.
    cache: Mutex<HashMap<[u8; 32], Arc<Principal>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Authenticator {
    /// A server without auth configuration: every caller is [`Principal::open`].
    pub fn open() -> Self {
        Authenticator { configured: None }
    }

    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let minted = match &config.tokens {
            Some(_) => Some(token::TokenVerifier::new(config)?),
            None => None,
        };
        let oidc = config
            .oidc
            .iter()
            .map(|o| oidc::OidcIssuer::new(config, o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Authenticator {
            configured: Some(Configured {
                anonymous: Arc::new(Principal::anonymous(config.anonymous.grants.clone())),
                minted,
                oidc,
                certificates: config.certificates.clone(),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn is_open(&self) -> bool {
        self.configured.is_none()
    }

    /// The principal of a request with this `authorization` metadata value and this
    /// client certificate (DER, already verified by TLS), or UNAUTHENTICATED with the
    /// reason. A token wins over a certificate; neither: the anonymous grants.
    pub async fn resolve(
        &self,
        authorization: Option<&[u8]>,
        peer_cert: Option<&[u8]>,
    ) -> Result<Arc<Principal>, Status> {
        let Some(c) = &self.configured else {
            return Ok(Arc::new(Principal::open()));
        };
        if let Some(value) = authorization {
            let token = bearer_token(value)?;
            return c
                .cached(b"token", token.as_bytes(), || async {
                    c.verify(token).await.map_err(Status::unauthenticated)
                })
                .await;
        }
        if let Some(der) = peer_cert {
            return c
                .cached(b"cert", der, || async {
                    cert::principal(der, &c.certificates).map_err(Status::unauthenticated)
                })
                .await;
        }
        Ok(c.anonymous.clone())
    }
}

/// The token of an `authorization` value: `Bearer TOKEN`.
pub fn bearer_token(value: &[u8]) -> Result<&str, Status> {
    let v = std::str::from_utf8(value)
        .map_err(|_| Status::unauthenticated("authorization: not text"))?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim()
    } else {
        ""
    };
    if token.is_empty() {
        return Err(Status::unauthenticated(
            "authorization: expected \"Bearer TOKEN\"",
        ));
    }
    Ok(token)
}

impl Configured {
    /// The cached verdict for this credential, or `verify`'s (cached until it expires).
    async fn cached<F, Fut>(
        &self,
        kind: &[u8],
        credential: &[u8],
        verify: F,
    ) -> Result<Arc<Principal>, Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Principal, Status>>,
    {
        let mut h = blake3::Hasher::new();
        h.update(kind);
        h.update(b"\0");
        h.update(credential);
        let key = *h.finalize().as_bytes();
        let now = now_ms();
        if let Some(p) = self.cache.lock().ok().and_then(|m| m.get(&key).cloned()) {
            if p.expires_at_ms == 0 || p.expires_at_ms > now {
                return Ok(p);
            }
        }
        let principal = Arc::new(verify().await?);
        if let Ok(mut m) = self.cache.lock() {
            if m.len() >= CACHE_MAX {
                m.retain(|_, p| p.expires_at_ms > now);
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
            }
            m.insert(key, principal.clone());
        }
        Ok(principal)
    }
}

impl Configured {
    async fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("token: not a JWT this server accepts: {e}"))?;
        let iss = unverified_claim(token, "iss")
            .ok_or_else(|| "token: has no issuer (iss) claim".to_string())?;
        if let Some(m) = &self.minted {
            if m.issuer == iss {
                return m.verify(token).map_err(|e| format!("token: {e}"));
            }
        }
        for o in &self.oidc {
            if o.config.issuer == iss {
                return o
                    .verify(token, &header)
                    .await
                    .map_err(|e| format!("identity token: {e}"));
            }
        }
        Err(format!("token: unknown issuer {}", quote(&iss)))
    }
}

/// A claim of a token, read without verifying it: only to choose who verifies it.
fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match v.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Why a JWT was refused, in words: expired at ..., wrong audience, bad signature...
pub(crate) fn describe_jwt_error(
    e: &jsonwebtoken::errors::Error,
    token: &str,
    issuer: &str,
    validation: &jsonwebtoken::Validation,
) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    let at = |claim: &str| {
        unverified_claim(token, claim)
            .and_then(|s| s.parse::<i64>().ok())
            .map(|t| stagecache_proto::time::format_time(t.saturating_mul(1000)))
            .unwrap_or_else(|| "?".into())
    };
    match e.kind() {
        K::ExpiredSignature => format!("expired at {}", at("exp")),
        K::ImmatureSignature => format!("not valid before {}", at("nbf")),
        K::InvalidAudience => format!(
            "wrong audience {}; {issuer} tokens must be for {:?}",
            quote(&unverified_claim(token, "aud").unwrap_or_default()),
            validation.aud.iter().flatten().collect::<Vec<_>>()
        ),
        K::InvalidIssuer => format!("wrong issuer; expected {issuer}"),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => format!(
            "algorithm not accepted from {issuer} (accepted: {:?})",
            validation.algorithms
        ),
        K::MissingRequiredClaim(c) => format!("has no {c} claim"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "not a well-formed JWT".into(),
        other => format!("refused: {other:?}"),
    }
}
