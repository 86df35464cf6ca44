//! Credentials, against the real server binary: the tokens it must refuse (expired, not
//! yet valid, wrong issuer or audience, unknown key id, `alg: none`, an HS256 token keyed
//! with the RS256 public key, another Azure DevOps organization), key rotation at the
//! issuer, revocation, `stagecache-server token create`, the configuration's refusals, the
//! open server's refusal of a non-loopback address, and the CLI's `--token`,
//! `--token-file` and `--token-from github-actions` (against a local stand-in for the
//! Actions token endpoint). Keys, issuers and tokens are all made by the test.

use base64::Engine;
use stagecache_proto::v1::info_client::InfoClient;
use stagecache_proto::v1::StatsRequest;
use stagecache_tests::auth::{
    bearer, identity_claims, now_s, start_with_auth, AuthDir, LocalIssuer, SigningKey,
};
use stagecache_tests::{output_within, workspace_bin, ServerProcess};
use std::time::Duration;
use tonic::Code;

const GITHUB_ISS: &str = "https://token.actions.example";
const AZURE_ORG: &str = "3f1c0a5e-0000-4000-8000-00000000abcd";

/// Stats in `prod` as `token`: the cheapest call that needs `read`.
async fn stats(server: &ServerProcess, token: Option<&str>) -> Result<(), tonic::Status> {
    InfoClient::new(server.channel().await)
        .stats(bearer(
            StatsRequest {
                namespace: "prod".into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

fn refused(case: &str, r: Result<(), tonic::Status>, code: Code, words: &[&str]) {
    let e = r.expect_err(case);
    assert_eq!(e.code(), code, "{case}: {e:?}");
    for w in words {
        assert!(
            e.message().contains(w),
            "{case}: {:?} does not say {w:?}",
            e.message()
        );
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// An auth configuration trusting a GitHub-like issuer (JWKS over loopback HTTP, short
/// refetch interval) and one Azure DevOps organization (JWKS file), both granting read on
/// prod to any subject of theirs.
fn oidc_config(github: &LocalIssuer, azure_jwks: &std::path::Path, refetch: u64) -> String {
    format!(
        r#"
[[oidc]]
name = "github"
issuer = "{gh}"
audiences = ["stagecache"]
algorithms = ["RS256"]
jwks_url = "{jwks}"
jwks_refetch_seconds = {refetch}
[[oidc.rules]]
claims = {{ sub = "repo:dotnet/*" }}
grants = [{{ namespaces = "prod", permissions = ["read"] }}]

[[oidc]]
name = "azure"
issuer = "https://vstoken.dev.azure.com/{AZURE_ORG}"
audiences = ["api://AzureADTokenExchange"]
algorithms = ["RS256"]
jwks_file = "{azure}"
[[oidc.rules]]
claims = {{ sub = "p://dnceng/internal/*" }}
grants = [{{ namespaces = "prod", permissions = ["read"] }}]
"#,
        gh = github.issuer,
        jwks = github.jwks_url,
        azure = azure_jwks.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_that_must_be_refused_and_a_rotated_key() {
    stagecache_tests::auth::install_crypto_provider();
    let k1 = SigningKey::rsa("k1");
    let k2 = SigningKey::rsa("k2");
    let azure_key = SigningKey::rsa("az-1");
    let github = LocalIssuer::start(GITHUB_ISS, &[&k1]).await;
    let dir = tempfile::tempdir().unwrap();
    let azure_jwks = dir.path().join("azure-jwks.json");
    std::fs::write(
        &azure_jwks,
        serde_json::json!({"keys": [azure_key.jwk()]}).to_string(),
    )
    .unwrap();
    let auth = AuthDir::new(&oidc_config(&github, &azure_jwks, 1));
    let server = start_with_auth(&auth.config(), &[]);
    let gh = |extra: serde_json::Value| identity_claims(GITHUB_ISS, "stagecache", extra);
    let main = serde_json::json!({"sub": "repo:dotnet/arcade:ref:refs/heads/main"});

    // A good token works (and is cached: the JWKS was fetched once).
    stats(&server, Some(&k1.sign(&gh(main.clone()))))
        .await
        .unwrap();
    let fetched = github.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 1);

    let mut expired = gh(main.clone());
    expired["exp"] = serde_json::json!(now_s() - 3600);
    expired["iat"] = serde_json::json!(now_s() - 7200);
    expired["nbf"] = serde_json::json!(now_s() - 7200);
    refused(
        "expired",
        stats(&server, Some(&k1.sign(&expired))).await,
        Code::Unauthenticated,
        &["expired at"],
    );

    let mut early = gh(main.clone());
    early["nbf"] = serde_json::json!(now_s() + 3600);
    refused(
        "not yet valid",
        stats(&server, Some(&k1.sign(&early))).await,
        Code::Unauthenticated,
        &["not valid before"],
    );

    let wrong_iss = identity_claims("https://evil.example", "stagecache", main.clone());
    refused(
        "wrong issuer",
        stats(&server, Some(&k1.sign(&wrong_iss))).await,
        Code::Unauthenticated,
        &["unknown issuer", "evil.example"],
    );

    let wrong_aud = identity_claims(GITHUB_ISS, "someone-else", main.clone());
    refused(
        "wrong audience",
        stats(&server, Some(&k1.sign(&wrong_aud))).await,
        Code::Unauthenticated,
        &["audience", "someone-else"],
    );

    let mut no_exp = gh(main.clone());
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(
        "no exp",
        stats(&server, Some(&k1.sign(&no_exp))).await,
        Code::Unauthenticated,
        &["exp"],
    );

    // A key the issuer never published: refetched once (rate-limited), still unknown.
    let stranger = SigningKey::rsa("k-unknown");
    refused(
        "unknown kid",
        stats(&server, Some(&stranger.sign(&gh(main.clone())))).await,
        Code::Unauthenticated,
        &["k-unknown"],
    );

    // Signed by k1 but naming k2 (which the issuer does not publish yet): bad signature
    // once k2 is known, unknown key before.
    let header_none = b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}));
    let alg_none = format!("{header_none}.{}.", b64(&gh(main.clone())));
    refused(
        "alg none",
        stats(&server, Some(&alg_none)).await,
        Code::Unauthenticated,
        &[],
    );

    // HS256 keyed with the issuer's RS256 public key (the classic confusion attack).
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &gh(main.clone()),
        &jsonwebtoken::EncodingKey::from_secret(k1.public_pem.as_bytes()),
    )
    .unwrap();
    refused(
        "HS256 with the RS256 public key",
        stats(&server, Some(&confused)).await,
        Code::Unauthenticated,
        &["HS256"],
    );

    // A tampered payload (a better subject pasted in): bad signature.
    let good = k1.sign(&gh(main.clone()));
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(&gh(
        serde_json::json!({"sub": "repo:dotnet/arcade:environment:release"}),
    ));
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    refused(
        "tampered",
        stats(&server, Some(&forged)).await,
        Code::Unauthenticated,
        &["bad signature"],
    );

    // Azure Pipelines: this organization's token works; another organization's is from
    // an issuer nobody configured, even signed by the same (shared) key.
    let az = |org: &str| {
        azure_key.sign(&identity_claims(
            &format!("https://vstoken.dev.azure.com/{org}"),
            "api://AzureADTokenExchange",
            serde_json::json!({"sub": "p://dnceng/internal/validate-publish"}),
        ))
    };
    stats(&server, Some(&az(AZURE_ORG))).await.unwrap();
    refused(
        "other Azure organization",
        stats(&server, Some(&az("00000000-1111-4222-8333-444444444444"))).await,
        Code::Unauthenticated,
        &["unknown issuer"],
    );

    // Rotation: the issuer starts signing with k2 and publishes it; the server fetches
    // the new key set on the unknown kid (after the 1 s refetch interval) and accepts.
    github.publish(&[&k1, &k2]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stats(&server, Some(&k2.sign(&gh(main.clone()))))
        .await
        .expect("rotated key accepted");
    // Garbage in the header is an answer, not a crash.
    refused(
        "not a JWT",
        stats(&server, Some("abc")).await,
        Code::Unauthenticated,
        &[],
    );
    let e = InfoClient::new(server.channel().await)
        .stats({
            let mut r = tonic::Request::new(StatsRequest {
                namespace: "prod".into(),
            });
            r.metadata_mut()
                .insert("authorization", "Token abc".parse().unwrap());
            r
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{e:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_expiry_revocation_and_the_cli() {
    let auth = AuthDir::new("");
    // Revocation by subject and by token id are configuration: mint first, then revoke.
    let alice = auth.mint("alice", &["prod:read"], "1h");
    let bob = auth.mint("bob", &["prod:read"], "1h");
    let carol = auth.mint("carol", &["prod:read"], "1h");
    let carol_id = {
        let payload = carol.split('.').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["sub"], "carol");
        v["jti"].as_str().expect("a token id").to_string()
    };
    let short = auth.mint("dave", &["prod:read"], "1");
    let text = std::fs::read_to_string(auth.config()).unwrap().replace(
        "public_key_file = \"token-public.pem\"",
        &format!("public_key_file = \"token-public.pem\"\nrevoked_subjects = [\"bob\"]\nrevoked_ids = [\"{carol_id}\"]"),
    );
    std::fs::write(auth.config(), text).unwrap();
    let server = start_with_auth(&auth.config(), &[]);
    stats(&server, Some(&alice)).await.unwrap();
    refused(
        "revoked subject",
        stats(&server, Some(&bob)).await,
        Code::Unauthenticated,
        &["revoked"],
    );
    refused(
        "revoked id",
        stats(&server, Some(&carol)).await,
        Code::Unauthenticated,
        &["revoked"],
    );
    // Leeway is 60 s by default: a token that expired a second ago is still inside it
    // (the refusal of an expired minted token is shown with leeway 0 below).
    stats(&server, Some(&short))
        .await
        .expect("inside the leeway");

    // The CLI: no token -> exit 2 with UNAUTHENTICATED named; --token, STAGECACHE_TOKEN
    // and --token-file work.
    let cli = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
        cmd.args(["--server", &server.url(), "--namespace", "prod"])
            .args(args)
            .env_remove("STAGECACHE_TOKEN")
            .envs(envs.iter().copied());
        output_within(&mut cmd, Duration::from_secs(60), "stagecache")
    };
    let out = cli(&["stats"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no credentials") && err.contains("--token"),
        "{err}"
    );
    let out = cli(&["--token", &alice, "stats"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["stats"], &[("STAGECACHE_TOKEN", &alice)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = auth.path("alice.token");
    std::fs::write(&token_file, format!("{alice}\n")).unwrap();
    let out = cli(
        &["--token-file", token_file.to_str().unwrap(), "stats"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["--token", &bob, "stats"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("revoked"), "{err}");
    server.stop().await;

    // Expired minted token, with no leeway.
    let strict = AuthDir::new("leeway_seconds = 0\n");
    let token = strict.mint("erin", &["prod:read"], "1");
    std::thread::sleep(Duration::from_millis(2100));
    let server = start_with_auth(&strict.config(), &[]);
    refused(
        "expired minted",
        stats(&server, Some(&token)).await,
        Code::Unauthenticated,
        &["expired at"],
    );
    // A token minted by another server's key: bad signature.
    let other = AuthDir::new("").mint("erin", &["prod:read"], "1h");
    refused(
        "other key",
        stats(&server, Some(&other)).await,
        Code::Unauthenticated,
        &["bad signature"],
    );
    server.stop().await;
}

#[test]
fn token_create_dump_claims_and_configuration_refusals() {
    let auth = AuthDir::new("");
    let out = std::process::Command::new(workspace_bin("stagecache-server"))
        .arg("--auth-config")
        .arg(auth.config())
        .args([
            "token",
            "create",
            "--subject",
            "prep",
            "--grant",
            "prod:write,ref:bar/",
            "--expires",
            "90d",
            "--dump-claims",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], "prep");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 90 * 86_400);
    assert_eq!(claims["grants"][0]["namespaces"], "prod");
    assert_eq!(claims["grants"][0]["refs"][0], "bar/");

    let server_with = |config: &str, extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = std::process::Command::new(workspace_bin("stagecache-server"));
        cmd.arg("--auth-config")
            .arg(&path)
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        let out = output_within(&mut cmd, Duration::from_secs(60), "stagecache-server");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = server_with(
        "[tokens]\nalgorithm = \"EdDSA\"\npublic_key_file = \"k.pem\"\nsurprise = 1\n",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("surprise") && err.contains("auth.toml"),
        "{err}"
    );
    let (code, err) = server_with("[[oidc]]\nname = \"gh\"\nissuer = \"https://x\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\njwks_file = \"j.json\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("none"), "{err}");
    let (code, err) = server_with(
        "[tokens]\nalgorithm = \"EdDSA\"\npublic_key_file = \"missing.pem\"\n",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.pem"), "{err}");

    // No auth configuration: a non-loopback address is refused, naming both ways out.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(workspace_bin("stagecache-server"));
    cmd.args([
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    let out = output_within(&mut cmd, Duration::from_secs(60), "stagecache-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--auth-config FILE") && err.contains("--insecure-open"),
        "{err}"
    );
}

/// `--token-from github-actions` asks the job's token endpoint (here a local stand-in
/// answering as GitHub does, and checking the request's bearer and audience) for an
/// identity token, and the server accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_github_actions() {
    use axum::routing::get;
    let key = SigningKey::rsa("gh-1");
    let issuer = LocalIssuer::start(GITHUB_ISS, &[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let azure_jwks = dir.path().join("azure.json");
    std::fs::write(&azure_jwks, r#"{"keys": []}"#).unwrap();
    let auth = AuthDir::new(&oidc_config(&issuer, &azure_jwks, 60));
    let server = start_with_auth(&auth.config(), &[]);
    let token = key.sign(&identity_claims(
        GITHUB_ISS,
        "stagecache",
        serde_json::json!({"sub": "repo:dotnet/arcade:environment:release"}),
    ));
    let app = axum::Router::new().route(
        "/token",
        get(
            move |headers: axum::http::HeaderMap, query: axum::extract::RawQuery| {
                let token = token.clone();
                async move {
                    let authorized = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer request-secret");
                    let audience = query.0.unwrap_or_default().contains("audience=stagecache");
                    if !(authorized && audience) {
                        return (axum::http::StatusCode::FORBIDDEN, "bad request".to_string());
                    }
                    (
                        axum::http::StatusCode::OK,
                        serde_json::json!({ "value": token }).to_string(),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = server.url();
    let run = move |secret: &'static str| {
        let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
        cmd.args([
            "--server",
            &url,
            "--namespace",
            "prod",
            "--token-from",
            "github-actions",
            "stats",
        ])
        .env(
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            format!("http://{addr}/token"),
        )
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", secret);
        cmd
    };
    let out = tokio::task::spawn_blocking(move || {
        let good = output_within(
            &mut run("request-secret"),
            Duration::from_secs(60),
            "stagecache",
        );
        let bad = output_within(&mut run("wrong"), Duration::from_secs(60), "stagecache");
        (good, bad)
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    let err = String::from_utf8_lossy(&out.1.stderr);
    assert!(!out.1.status.success() && err.contains("403"), "{err}");
    // Without the variables the CLI says what the workflow lacks.
    let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
    cmd.args([
        "--server",
        &server.url(),
        "--token-from",
        "github-actions",
        "stats",
    ])
    .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
    .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN");
    let out = output_within(&mut cmd, Duration::from_secs(60), "stagecache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("id-token: write"), "{err}");
    server.stop().await;
}
