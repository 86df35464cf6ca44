//! Where the CLI's credentials come from: a token given directly (`--token`,
//! `STAGECACHE_TOKEN`), read from a file (`--token-file`), or requested from the CI system
//! the step runs in (`--token-from github-actions|azure-pipelines`: the job's OIDC
//! identity token, which the server checks against the CI's published keys); and the PEM
//! files for TLS.

use crate::client::{Secret, TlsOptions};
use crate::error::{ClientError, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// The audience GitHub Actions tokens are requested for unless `--token-audience` says
/// otherwise; the server's `[[oidc]]` entry must list the same.
pub const DEFAULT_GITHUB_AUDIENCE: &str = "stagecache";

/// Where a CI identity token comes from.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` with `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (the workflow
    /// needs `permissions: id-token: write`).
    GithubActions,
    /// `SYSTEM_OIDCREQUESTURI` with `SYSTEM_ACCESSTOKEN` (map `$(System.AccessToken)` into
    /// the step's environment).
    AzurePipelines,
}

/// The CLI's credential and TLS options (global).
#[derive(Args, Debug, Clone, Default)]
pub struct CredentialArgs {
    /// Bearer token for a server that requires one (minted by `stagecache-server token
    /// create`, or a CI identity token).
    #[arg(long, global = true, env = "STAGECACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from FILE (surrounding white space is ignored).
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Ask the CI system for this job's identity token (OIDC) and send it.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "STAGECACHE_TOKEN_FROM",
        conflicts_with_all = ["token", "token_file"]
    )]
    pub token_from: Option<TokenSource>,
    /// Audience of a GitHub Actions identity token (the server's `[[oidc]]` audiences must
    /// include it). Azure Pipelines tokens always have `api://AzureADTokenExchange`.
    #[arg(long, global = true, env = "STAGECACHE_TOKEN_AUDIENCE", default_value = DEFAULT_GITHUB_AUDIENCE)]
    pub token_audience: String,
    /// CA certificate (PEM) that signed the server's certificate, for `https://` servers
    /// with a private CA (default: the system's roots).
    #[arg(long, global = true, env = "STAGECACHE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "STAGECACHE_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| ClientError::Invalid(format!("{flag} {}: cannot read: {e}", path.display())))
}

impl CredentialArgs {
    /// The TLS options these flags name (files read now, so a wrong path fails early).
    pub fn tls(&self) -> Result<TlsOptions> {
        let ca_cert_pem = match &self.ca_cert {
            Some(p) => Some(read_file("--ca-cert", p)?),
            None => None,
        };
        let client_cert_pem = match &self.client_cert {
            Some(p) => Some(read_file("--client-cert", p)?),
            None => None,
        };
        let client_key_pem = match &self.client_key {
            Some(p) => {
                let pem = read_file("--client-key", p)?;
                let text = String::from_utf8(pem).map_err(|_| {
                    ClientError::Invalid(format!("--client-key {}: not PEM text", p.display()))
                })?;
                Some(Secret::from_pem(text))
            }
            None => None,
        };
        Ok(TlsOptions {
            ca_cert_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// The bearer token these flags name, if any (for `--token-from`, requested now).
    pub async fn token(&self) -> Result<Option<Secret>> {
        if let Some(t) = &self.token {
            return Secret::new("--token", t).map(Some);
        }
        if let Some(p) = &self.token_file {
            let bytes = read_file("--token-file", p)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ClientError::Invalid(format!("--token-file {}: not text", p.display()))
            })?;
            return Secret::new(&format!("--token-file {}", p.display()), &text).map(Some);
        }
        match self.token_from {
            None => Ok(None),
            Some(source) => {
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                ci_identity_token(source, &self.token_audience, env)
                    .await
                    .map(Some)
            }
        }
    }
}

/// The request for a CI identity token: URL and the bearer credential that authorizes it,
/// from the job's environment (`env` looks a variable up). Separate from the HTTP call so
/// that what each CI needs is checked without one.
pub fn ci_token_request(
    source: TokenSource,
    audience: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, String)> {
    let need = |var: &str, hint: &str| {
        env(var).ok_or_else(|| {
            ClientError::Invalid(format!(
                "--token-from {}: {var} is not set; {hint}",
                source_name(source)
            ))
        })
    };
    match source {
        TokenSource::GithubActions => {
            let hint = "give the workflow `permissions: id-token: write`";
            let url = need("ACTIONS_ID_TOKEN_REQUEST_URL", hint)?;
            let bearer = need("ACTIONS_ID_TOKEN_REQUEST_TOKEN", hint)?;
            let sep = if url.contains('?') { '&' } else { '?' };
            let audience: String = url_encode(audience);
            Ok((format!("{url}{sep}audience={audience}"), bearer))
        }
        TokenSource::AzurePipelines => {
            let url = need(
                "SYSTEM_OIDCREQUESTURI",
                "it is set in Azure Pipelines jobs on agents that support OIDC",
            )?;
            let bearer = need(
                "SYSTEM_ACCESSTOKEN",
                "map it into the step: `env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)`",
            )?;
            let sep = if url.contains('?') { '&' } else { '?' };
            Ok((format!("{url}{sep}api-version=7.1-preview.1"), bearer))
        }
    }
}

fn source_name(source: TokenSource) -> &'static str {
    match source {
        TokenSource::GithubActions => "github-actions",
        TokenSource::AzurePipelines => "azure-pipelines",
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Requests this job's identity token from the CI system. GitHub answers a GET with
/// `{"value": TOKEN}`, Azure Pipelines a POST with `{"oidcToken": TOKEN}`.
pub async fn ci_identity_token(
    source: TokenSource,
    audience: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Secret> {
    let (url, bearer) = ci_token_request(source, audience, env)?;
    let name = source_name(source);
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| ClientError::Invalid(format!("--token-from {name}: HTTP client: {e}")))?;
    let request = match source {
        TokenSource::GithubActions => http.get(&url),
        TokenSource::AzurePipelines => http
            .post(&url)
            .header("content-type", "application/json")
            .body("{}"),
    };
    let response =
        request.bearer_auth(bearer).send().await.map_err(|e| {
            ClientError::Invalid(format!("--token-from {name}: request failed: {e}"))
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| ClientError::Invalid(format!("--token-from {name}: reading reply: {e}")))?;
    if !status.is_success() {
        let body: String = body.chars().take(300).collect();
        return Err(ClientError::Invalid(format!(
            "--token-from {name}: the CI answered {status}: {body}"
        )));
    }
    let field = match source {
        TokenSource::GithubActions => "value",
        TokenSource::AzurePipelines => "oidcToken",
    };
    let token = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get(field).and_then(|t| t.as_str()).map(str::to_string))
        .ok_or_else(|| {
            ClientError::Invalid(format!(
                "--token-from {name}: the reply has no \"{field}\" string"
            ))
        })?;
    Secret::new(&format!("--token-from {name}"), &token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn github_request_carries_the_audience() {
        let env = env_of(&[
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                "https://gh.example/token?api=1",
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "req-secret"),
        ]);
        let (url, bearer) =
            ci_token_request(TokenSource::GithubActions, "stage cache", env).unwrap();
        assert_eq!(url, "https://gh.example/token?api=1&audience=stage%20cache");
        assert_eq!(bearer, "req-secret");
    }

    #[test]
    fn missing_variables_name_the_fix() {
        let e = ci_token_request(TokenSource::GithubActions, "a", env_of(&[])).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("ACTIONS_ID_TOKEN_REQUEST_URL") && m.contains("id-token: write"),
            "{m}"
        );
        let e = ci_token_request(
            TokenSource::AzurePipelines,
            "a",
            env_of(&[("SYSTEM_OIDCREQUESTURI", "https://dev.azure.com/o/oidctoken")]),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("SYSTEM_ACCESSTOKEN") && m.contains("$(System.AccessToken)"),
            "{m}"
        );
    }

    #[test]
    fn azure_request_uses_the_oidc_uri() {
        let env = env_of(&[
            (
                "SYSTEM_OIDCREQUESTURI",
                "https://dev.azure.com/o/p/_apis/oidctoken",
            ),
            ("SYSTEM_ACCESSTOKEN", "build-token"),
        ]);
        let (url, bearer) = ci_token_request(TokenSource::AzurePipelines, "x", env).unwrap();
        assert_eq!(
            url,
            "https://dev.azure.com/o/p/_apis/oidctoken?api-version=7.1-preview.1"
        );
        assert_eq!(bearer, "build-token");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Secret::new("--token", " abc.def.ghi\n").unwrap();
        assert_eq!(s.expose(), "abc.def.ghi");
        assert!(!format!("{s:?}").contains("abc"));
        assert!(Secret::new("--token", "  ").is_err());
        assert!(Secret::new("--token", "a b").is_err());
    }
}
