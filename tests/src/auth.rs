//! What the identity and access tests need, all made by the test: a key pair for tokens
//! the server mints, a local OIDC issuer (an RSA key set served as a JWKS over loopback
//! HTTP, tokens signed in the test), certificates for TLS and mutual TLS, and clients
//! that carry a token. Nothing here is a recorded token or a fixed key.

use crate::{workspace_bin, ServerProcess};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use stagecache_client::{Client, ClientConfig, Secret, TlsOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// rustls needs one crypto provider chosen before its first use in a process that links
/// more than one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Seconds since the epoch.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An RSA key that signs identity tokens, with its key id.
pub struct SigningKey {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
    encoding: EncodingKey,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let private_pem = pair.serialize_pem();
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA PEM");
        SigningKey {
            kid: kid.into(),
            public_pem: pair.public_key_pem(),
            private_pem,
            encoding,
        }
    }

    /// Its public half as a JWK (what an issuer publishes).
    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, Algorithm::RS256).expect("JWK");
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// An RS256 token with these claims, naming this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// A local OIDC issuer: its keys served as a JWKS at `jwks_url` (loopback HTTP), which a
/// test can change (key rotation), and a count of how often the JWKS was fetched.
pub struct LocalIssuer {
    pub issuer: String,
    pub jwks_url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    pub fetches: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl LocalIssuer {
    pub async fn start(issuer: &str, keys: &[&SigningKey]) -> Self {
        use axum::routing::get;
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (p, f) = (published.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            get(move || {
                let (p, f) = (p.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let set = JwkSet {
                        keys: p.lock().unwrap().clone(),
                    };
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        serde_json::to_string(&set).unwrap_or_default(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LocalIssuer {
            issuer: issuer.into(),
            jwks_url: format!("http://{addr}/jwks"),
            keys: published,
            fetches,
            _task: task,
        }
    }

    /// Publishes exactly these keys from now on.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }
}

/// Standard identity-token claims for `issuer`/`audience`, valid for an hour, plus
/// `extra` (e.g. `sub`, `repository`, `environment`).
pub fn identity_claims(
    issuer: &str,
    audience: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let now = now_s();
    let mut claims = serde_json::json!({
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": format!("{:x}", rand::random::<u64>()),
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    claims
}

/// A directory holding an auth configuration and its key files.
pub struct AuthDir {
    pub dir: tempfile::TempDir,
}

impl AuthDir {
    /// An Ed25519 key pair for minted tokens (`token-private.pem`, `token-public.pem`),
    /// and `auth.toml` = `rest` (top-level keys and tables) followed by the `[tokens]`
    /// section.
    pub fn new(rest: &str) -> Self {
        let dir = tempfile::tempdir().expect("auth dir");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        std::fs::write(dir.path().join("token-private.pem"), pair.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("token-public.pem"), pair.public_key_pem()).unwrap();
        let config = format!(
            "{rest}\n\n[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"token-private.pem\"\npublic_key_file = \"token-public.pem\"\n"
        );
        std::fs::write(dir.path().join("auth.toml"), config).unwrap();
        AuthDir { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("auth.toml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `stagecache-server token create` (the real binary) for `subject` with `grants`.
    pub fn mint(&self, subject: &str, grants: &[&str], expires: &str) -> String {
        let mut cmd = std::process::Command::new(workspace_bin("stagecache-server"));
        cmd.arg("--auth-config").arg(self.config()).args([
            "token",
            "create",
            "--subject",
            subject,
            "--expires",
            expires,
        ]);
        for g in grants {
            cmd.args(["--grant", g]);
        }
        let out = cmd.output().expect("run stagecache-server token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// A client of `server` in `namespace` sending `token` (if any).
pub async fn client_with_token(url: &str, namespace: &str, token: Option<&str>) -> Client {
    let mut config = ClientConfig::new(url, namespace).expect("client config");
    config.retry.attempts = 1;
    config.token = token.map(|t| Secret::new("token", t).expect("token"));
    Client::connect(config).await.expect("connect")
}

/// A raw gRPC channel to `server` and a function adding `token` to requests.
pub fn bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Starts the server binary with `--auth-config` and `extra` arguments.
pub fn start_with_auth(auth: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--auth-config".to_string(), auth.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start_fresh_with_args(&args)
}

/// A CA, and certificates it signs, for TLS tests.
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server_cert(&self) -> Issued {
        self.issue("localhost", &["localhost", "127.0.0.1"], false)
    }

    /// A client certificate with common name `cn`.
    pub fn client_cert(&self, cn: &str) -> Issued {
        self.issue(cn, &[], true)
    }

    fn issue(&self, cn: &str, sans: &[&str], client: bool) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).expect("sign cert");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// TLS options trusting `ca`, presenting `client` when given.
pub fn tls_options(ca: &TestCa, client: Option<&Issued>) -> TlsOptions {
    TlsOptions {
        ca_cert_pem: Some(ca.cert_pem.clone().into_bytes()),
        client_cert_pem: client.map(|c| c.cert_pem.clone().into_bytes()),
        client_key_pem: client.map(|c| Secret::from_pem(c.key_pem.clone())),
    }
}
