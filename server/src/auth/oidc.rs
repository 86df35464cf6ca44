//! CI identity tokens (OIDC) from trusted issuers — GitHub Actions, Azure Pipelines —
//! validated against the issuer's JWKS with the algorithms pinned by configuration, and
//! mapped to grants by claim patterns.
//!
//! Keys come from a file, or from a URL fetched on first use, used for
//! `jwks_cache_seconds`, and fetched again (at most once per `jwks_refetch_seconds`) when a
//! token names a key id the cache does not hold: that is how a rotated key is picked up.

use super::config::{AuthConfig, OidcAlgorithm, OidcConfig};
use super::pattern::matches;
use super::principal::{Authentication, Grant, Principal};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn algorithm(a: OidcAlgorithm) -> Algorithm {
    match a {
        OidcAlgorithm::RS256 => Algorithm::RS256,
        OidcAlgorithm::RS384 => Algorithm::RS384,
        OidcAlgorithm::RS512 => Algorithm::RS512,
        OidcAlgorithm::ES256 => Algorithm::ES256,
        OidcAlgorithm::ES384 => Algorithm::ES384,
        OidcAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

pub struct OidcIssuer {
    pub config: OidcConfig,
    validation: Validation,
    keys: Mutex<Keys>,
    /// Serialises fetches, so a burst of tokens with a new key id fetches once.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    jwks_path: Option<std::path::PathBuf>,
}

fn parse_jwks(text: &[u8], source: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("JWKS from {source}: {e}"))?;
    let mut out = HashMap::new();
    for k in &set.keys {
        let Some(kid) = k.common.key_id.clone() else {
            continue;
        };
        match DecodingKey::from_jwk(k) {
            Ok(key) => {
                out.insert(kid, key);
            }
            Err(e) => tracing::warn!(%kid, error = %e, source, "JWKS key skipped"),
        }
    }
    Ok(out)
}

impl OidcIssuer {
    pub fn new(auth: &AuthConfig, config: &OidcConfig) -> Result<Self, String> {
        let algs: Vec<Algorithm> = config.algorithms.iter().map(|a| algorithm(*a)).collect();
        let mut validation = Validation::new(algs[0]);
        validation.algorithms = algs;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = auth.leeway_seconds;
        let jwks_path = config.jwks_file.as_deref().map(|p| auth.path(p));
        let issuer = OidcIssuer {
            config: config.clone(),
            validation,
            keys: Mutex::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("oidc {}: HTTP client: {e}", config.name))?,
            jwks_path,
        };
        if let Some(path) = &issuer.jwks_path {
            // A file is read at start, so a bad one stops the server, not the first call.
            let text = std::fs::read(path)
                .map_err(|e| format!("oidc {}: jwks_file {}: {e}", config.name, path.display()))?;
            let keys = parse_jwks(&text, &path.display().to_string())?;
            let mut k = issuer.keys.lock().map_err(|_| "poisoned")?;
            k.by_kid = keys;
            k.fetched = Some(Instant::now());
        }
        Ok(issuer)
    }

    fn cached(&self, kid: &str) -> (Option<DecodingKey>, Option<Instant>) {
        match self.keys.lock() {
            Ok(k) => (k.by_kid.get(kid).cloned(), k.fetched),
            Err(_) => (None, None),
        }
    }

    /// Fetches the JWKS again unless another call just did.
    async fn refresh(&self, min_age: Duration) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        if let (_, Some(at)) = self.cached("") {
            if at.elapsed() < min_age {
                return Ok(());
            }
        }
        let (text, source) = match (&self.jwks_path, &self.config.jwks_url) {
            (Some(p), _) => (
                tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("jwks_file {}: {e}", p.display()))?,
                p.display().to_string(),
            ),
            (None, Some(url)) => {
                let resp = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("fetching JWKS {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("fetching JWKS {url}: HTTP {}", resp.status()));
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| format!("fetching JWKS {url}: {e}"))?;
                (body.to_vec(), url.clone())
            }
            (None, None) => return Err("no jwks_file or jwks_url".into()),
        };
        let keys = parse_jwks(&text, &source)?;
        tracing::info!(issuer = %self.config.issuer, keys = keys.len(), %source, "JWKS fetched");
        if let Ok(mut k) = self.keys.lock() {
            k.by_kid = keys;
            k.fetched = Some(Instant::now());
        }
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, String> {
        let (key, fetched) = self.cached(kid);
        let ttl = Duration::from_secs(self.config.jwks_cache_seconds);
        let stale = fetched.is_none_or(|at| at.elapsed() >= ttl);
        if let (Some(k), false) = (&key, stale) {
            return Ok(k.clone());
        }
        // Unknown key id (a rotation?) or stale keys: fetch, rate-limited.
        let min_age = if stale {
            Duration::ZERO
        } else {
            Duration::from_secs(self.config.jwks_refetch_seconds)
        };
        if let Err(e) = self.refresh(min_age).await {
            tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS fetch failed");
            if let Some(k) = key {
                return Ok(k); // keep serving with the keys we have
            }
            return Err(format!(
                "cannot get the signing keys of {}: {e}",
                self.config.issuer
            ));
        }
        self.cached(kid).0.ok_or_else(|| {
            format!(
                "unknown key id {kid:?} for issuer {} (not in its JWKS)",
                self.config.issuer
            )
        })
    }

    /// The principal an identity token stands for, or why it is refused.
    pub async fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Principal, String> {
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| format!("token from {} has no key id (kid)", self.config.issuer))?;
        // The algorithm is checked against the pinned list before any key is looked up.
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(format!(
                "algorithm {:?} is not accepted from {} (accepted: {:?})",
                header.alg, self.config.issuer, self.validation.algorithms
            ));
        }
        let key = self.key(kid).await?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &self.validation,
        )
        .map_err(|e| super::describe_jwt_error(&e, token, &self.config.issuer, &self.validation))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let mut grants: Vec<Grant> = Vec::new();
        for rule in &self.config.rules {
            let all = rule.claims.iter().all(|(name, pattern)| {
                claims
                    .get(name)
                    .and_then(claim_text)
                    .is_some_and(|v| matches(pattern, &v))
            });
            if all {
                grants.extend(rule.grants.iter().cloned());
            }
        }
        let exp = claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(Principal {
            identity: format!("{}:{sub}", self.config.name),
            grants,
            authentication: Authentication::Verified,
            expires_at_ms: exp.saturating_mul(1000),
        })
    }
}

/// A claim as text for pattern matching (strings as they are, numbers and booleans printed).
fn claim_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
