//! Tokens the server mints: JWTs signed with a key from the auth configuration (EdDSA or
//! RS256 key pair, so a verify-only server holds just the public key; or an HS256
//! secret), carrying the grants themselves. `stagecache-server token create` prints one.

use super::config::{AuthConfig, TokenAlgorithm, TokensConfig};
use super::principal::{Authentication, Grant, Principal};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The claims of a minted token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// Token id, for revocation.
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub grants: Vec<Grant>,
}

fn algorithm(a: TokenAlgorithm) -> Algorithm {
    match a {
        TokenAlgorithm::EdDSA => Algorithm::EdDSA,
        TokenAlgorithm::RS256 => Algorithm::RS256,
        TokenAlgorithm::HS256 => Algorithm::HS256,
    }
}

fn read(config: &AuthConfig, p: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let path = config.path(p);
    std::fs::read(&path).map_err(|e| format!("tokens.{what} {}: {e}", path.display()))
}

/// Signs new tokens (needs the private key or the secret).
pub struct Minter {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
}

impl Minter {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let t = tokens(config)?;
        let key = match t.algorithm {
            TokenAlgorithm::HS256 => EncodingKey::from_secret(&hs256_secret(config, t)?),
            alg => {
                let file = t.private_key_file.as_deref().ok_or_else(|| {
                    "tokens.private_key_file is not set: this server can verify tokens but not mint them".to_string()
                })?;
                let pem = read(config, file, "private_key_file")?;
                match alg {
                    TokenAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| format!("tokens.private_key_file: not a {alg:?} private key: {e}"))?
            }
        };
        Ok(Minter {
            key,
            header: Header::new(algorithm(t.algorithm)),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
        })
    }

    /// The claims of a new token for `subject`, valid from `now` for `ttl_seconds`.
    pub fn claims(
        &self,
        subject: &str,
        grants: Vec<Grant>,
        now_s: i64,
        ttl_seconds: i64,
    ) -> TokenClaims {
        TokenClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now_s,
            nbf: now_s,
            exp: now_s.saturating_add(ttl_seconds),
            grants,
        }
    }

    pub fn sign(&self, claims: &TokenClaims) -> Result<String, String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(|e| format!("signing: {e}"))
    }
}

fn tokens(config: &AuthConfig) -> Result<&TokensConfig, String> {
    config
        .tokens
        .as_ref()
        .ok_or_else(|| "the auth configuration has no [tokens] section".to_string())
}

/// The HS256 secret of `[tokens]`, shared by minting and verifying.
fn hs256_secret(config: &AuthConfig, t: &TokensConfig) -> Result<Vec<u8>, String> {
    let file = t
        .secret_file
        .as_deref()
        .ok_or("tokens: algorithm HS256 needs secret_file")?;
    Ok(trimmed(&read(config, file, "secret_file")?).to_vec())
}

/// HS256 secrets are read from files that usually end in a newline.
fn trimmed(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Verifies minted tokens.
pub struct TokenVerifier {
    pub issuer: String,
    key: DecodingKey,
    validation: Validation,
    revoked_subjects: HashSet<String>,
    revoked_ids: HashSet<String>,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let t = tokens(config)?;
        let key = match t.algorithm {
            TokenAlgorithm::HS256 => DecodingKey::from_secret(&hs256_secret(config, t)?),
            alg => {
                // config.check() saw a key file; verifying needs the public one.
                let file = t.public_key_file.as_deref().ok_or(
                    "tokens.public_key_file is not set: a verifying server needs the public key",
                )?;
                let pem = read(config, file, "public_key_file")?;
                let what = "public_key_file";
                let key = match alg {
                    TokenAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                key.map_err(|e| format!("tokens.{what}: not a {alg:?} public key: {e}"))?
            }
        };
        let mut validation = Validation::new(algorithm(t.algorithm));
        validation.algorithms = vec![algorithm(t.algorithm)];
        validation.set_issuer(&[&t.issuer]);
        validation.set_audience(&[&t.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_seconds;
        Ok(TokenVerifier {
            issuer: t.issuer.clone(),
            key,
            validation,
            revoked_subjects: t.revoked_subjects.iter().cloned().collect(),
            revoked_ids: t.revoked_ids.iter().cloned().collect(),
        })
    }

    /// The principal a minted token stands for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation)
            .map_err(|e| super::describe_jwt_error(&e, token, &self.issuer, &self.validation))?;
        let c = data.claims;
        if self.revoked_subjects.contains(&c.sub) {
            return Err(format!("subject {:?} is revoked", c.sub));
        }
        if self.revoked_ids.contains(&c.jti) {
            return Err(format!("token id {} is revoked", c.jti));
        }
        Ok(Principal {
            identity: format!("token:{}", c.sub),
            grants: c.grants,
            authentication: Authentication::Verified,
            expires_at_ms: c.exp.saturating_mul(1000),
        })
    }
}
