//! The auth configuration: a TOML file (`--auth-config FILE`). Unknown keys are refused,
//! naming the key. Key and JWKS files are relative to the configuration file.
//!
//! ```toml
//! # Callers without credentials (default: nothing).
//! [anonymous]
//! grants = [{ namespaces = "*", permissions = ["read"] }]
//!
//! # Tokens this server mints (`stagecache-server token create`) and accepts.
//! [tokens]
//! algorithm = "EdDSA"                   # EdDSA | RS256 (key pair) | HS256 (shared secret)
//! public_key_file = "token-public.pem"  # verify; a verify-only server holds just this
//! private_key_file = "token-private.pem" # mint
//! revoked_subjects = ["mallory"]
//! revoked_ids = ["0b6a..."]
//!
//! # Client certificates (mutual TLS with --tls-client-ca): common name or SAN to grants.
//! [[certificates]]
//! subject = "release-agent-*"
//! grants = [{ namespaces = "prod", permissions = ["read", "record"] }]
//!
//! # CI identity tokens (OIDC) from a trusted issuer, validated against its JWKS.
//! [[oidc]]
//! name = "github"
//! issuer = "https://token.actions.githubusercontent.com"
//! audiences = ["stagecache"]
//! algorithms = ["RS256"]
//! jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
//! [[oidc.rules]]
//! claims = { sub = "repo:dotnet/arcade:environment:release" }
//! grants = [{ namespaces = "prod", permissions = ["read", "write", "ref", "record"], refs = ["bar/"] }]
//! ```

use super::principal::Grant;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub anonymous: AnonymousConfig,
    pub tokens: Option<TokensConfig>,
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// Client certificates (mutual TLS, `--tls-client-ca`) to grants.
    #[serde(default)]
    pub certificates: Vec<CertificateRule>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// The directory relative paths are resolved against (the file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_leeway() -> u64 {
    60
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousConfig {
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// Signature algorithms of minted tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    EdDSA,
    RS256,
    HS256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(default = "default_name")]
    pub issuer: String,
    #[serde(default = "default_name")]
    pub audience: String,
    pub algorithm: TokenAlgorithm,
    pub public_key_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub revoked_subjects: Vec<String>,
    #[serde(default)]
    pub revoked_ids: Vec<String>,
}

fn default_name() -> String {
    "stagecache".into()
}

/// Algorithms an OIDC issuer's tokens may use; pinned here, never taken from a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OidcAlgorithm {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Prefix of the identities it yields: `github` -> `github:<sub>`.
    pub name: String,
    /// The exact `iss`. Azure Pipelines: `https://vstoken.dev.azure.com/<organization id>`
    /// (one entry per organization: the JWKS is shared by all of them).
    pub issuer: String,
    /// Accepted `aud` values (Azure Pipelines: `api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
    pub algorithms: Vec<OidcAlgorithm>,
    /// The issuer's keys: a file, or a URL fetched and cached.
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before fetching again.
    #[serde(default = "default_jwks_cache")]
    pub jwks_cache_seconds: u64,
    /// At most one fetch per this many seconds when a token names an unknown key id.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_refetch_seconds: u64,
    /// Claim patterns to grants; a token gets the grants of every rule it matches.
    #[serde(default)]
    pub rules: Vec<TrustRule>,
}

fn default_jwks_cache() -> u64 {
    3600
}

fn default_jwks_refetch() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    /// Claim name -> pattern (`*` wildcards); every one must match.
    pub claims: BTreeMap<String, String>,
    pub grants: Vec<Grant>,
}

/// A client certificate rule: a pattern (`*` wildcards) matched against the certificate's
/// common name and each DNS, URI and e-mail subject alternative name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRule {
    pub subject: String,
    pub grants: Vec<Grant>,
}

impl AuthConfig {
    /// Reads and checks a configuration file; errors name the file (and the key).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("auth config {}: {e}", path.display()))?;
        let mut config =
            Self::parse(&text).map_err(|e| format!("auth config {}: {e}", path.display()))?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: AuthConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(t) = &self.tokens {
            match t.algorithm {
                TokenAlgorithm::HS256 if t.secret_file.is_none() => {
                    return Err("tokens: algorithm HS256 needs secret_file".into())
                }
                TokenAlgorithm::EdDSA | TokenAlgorithm::RS256
                    if t.public_key_file.is_none() && t.private_key_file.is_none() =>
                {
                    return Err(format!(
                        "tokens: algorithm {:?} needs public_key_file (to verify) and/or private_key_file (to mint)",
                        t.algorithm
                    ))
                }
                _ => {}
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, o) in self.oidc.iter().enumerate() {
            if !names.insert(o.name.as_str()) {
                return Err(format!("oidc[{i}].name: {:?} is used twice", o.name));
            }
            if o.algorithms.is_empty() {
                return Err(format!(
                    "oidc[{i}].algorithms: give at least one (e.g. [\"RS256\"])"
                ));
            }
            if o.audiences.is_empty() {
                return Err(format!("oidc[{i}].audiences: give at least one"));
            }
            if o.jwks_file.is_some() == o.jwks_url.is_some() {
                return Err(format!(
                    "oidc[{i}]: give exactly one of jwks_file and jwks_url"
                ));
            }
            if Some(o.issuer.as_str()) == self.tokens.as_ref().map(|t| t.issuer.as_str()) {
                return Err(format!(
                    "oidc[{i}].issuer: {:?} is also the issuer of minted tokens",
                    o.issuer
                ));
            }
        }
        Ok(())
    }

    /// A path from the file, resolved against the file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example operators copy (`deploy/auth.example.toml`) is a configuration this
    /// server accepts, with the sections it documents.
    #[test]
    fn the_deploy_example_parses() {
        let text = include_str!("../../../deploy/auth.example.toml");
        let c = AuthConfig::parse(text).unwrap_or_else(|e| panic!("deploy/auth.example.toml: {e}"));
        assert!(c.tokens.is_some());
        let names: Vec<&str> = c.oidc.iter().map(|o| o.name.as_str()).collect();
        assert!(
            names.contains(&"github") && names.contains(&"azure"),
            "{names:?}"
        );
        assert!(c.oidc.iter().all(|o| !o.rules.is_empty()));
        assert!(!c.certificates.is_empty());
    }

    #[test]
    fn parses_the_documented_example_and_refuses_unknown_keys() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let c = AuthConfig::parse(&doc).unwrap();
        assert_eq!(c.oidc[0].rules[0].grants[0].refs, ["bar/"]);
        assert_eq!(c.anonymous.grants.len(), 1);
        let e = AuthConfig::parse("[tokens]\nalgorithm = \"EdDSA\"\npublic_key_fle = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("public_key_fle"), "{e}");
        let e = AuthConfig::parse("[tokens]\nalgorithm = \"HS256\"\n").unwrap_err();
        assert!(e.contains("secret_file"), "{e}");
        let e = AuthConfig::parse(
            "[anonymous]\ngrants = [{ namespaces = \"*\", permissions = [\"fly\"] }]\n",
        )
        .unwrap_err();
        assert!(e.contains("fly"), "{e}");
    }
}
