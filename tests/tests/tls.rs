//! TLS and mutual TLS on the gRPC port of the real server binary, with a CA and
//! certificates made by the test: the library and the CLI connect over `https://` with
//! `--ca-cert`; a plain-text client and a client that does not trust the server's CA get
//! a clear error; with `--tls-client-ca` a client certificate is an identity whose names
//! map to grants (`[[certificates]]`), a client without one or with one from another CA
//! cannot connect, and a certificate no rule names is refused by name.

use stagecache_client::{Client, ClientConfig, TlsOptions};
use stagecache_proto::v1::info_client::InfoClient;
use stagecache_proto::v1::ledger_client::LedgerClient;
use stagecache_proto::v1::{RecordRequest, StageStatus, StatsRequest};
use stagecache_tests::auth::{install_crypto_provider, tls_options, AuthDir, TestCa};
use stagecache_tests::{output_within, workspace_bin, ServerProcess};
use std::path::Path;
use std::time::Duration;

/// Writes `text` to `dir/name` and returns the path as a string.
fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn client(url: &str, tls: TlsOptions) -> Result<Client, stagecache_client::ClientError> {
    let mut config = ClientConfig::new(url, "prod").unwrap();
    config.retry.attempts = 1;
    config.tls = tls;
    Client::connect(config).await
}

fn cli(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
    cmd.args(args)
        .env_remove("STAGECACHE_TOKEN")
        .env_remove("STAGECACHE_CA_CERT");
    output_within(&mut cmd, Duration::from_secs(60), "stagecache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_for_the_library_and_the_cli_and_clear_errors_without_it() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("stagecache test CA");
    let server_cert = ca.server_cert();
    let ca_path = file(dir.path(), "ca.pem", &ca.cert_pem);
    let cert = file(dir.path(), "server.pem", &server_cert.cert_pem);
    let key = file(dir.path(), "server.key", &server_cert.key_pem);
    let server = ServerProcess::start_fresh_with_env(
        &["--tls-cert", &cert, "--tls-key", &key],
        &[("STAGECACHE_CA_CERT", &ca_path)],
    );
    assert!(server.url().starts_with("https://"));

    // The library, trusting the test CA: a round trip.
    let c = client(&server.url(), tls_options(&ca, None)).await.unwrap();
    let d = stagecache_proto::Digest::of_bytes(b"over TLS");
    c.batch_upload(vec![(d, bytes::Bytes::from_static(b"over TLS"))])
        .await
        .unwrap();
    assert_eq!(
        c.batch_download(&[d]).await.unwrap()[0].as_ref(),
        b"over TLS"
    );

    // The CLI with --ca-cert.
    let out = cli(&[
        "--server",
        &server.url(),
        "--ca-cert",
        &ca_path,
        "stats",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not trusting the CA (system roots only): refused, saying why.
    let err = client(&server.url(), TlsOptions::default())
        .await
        .err()
        .expect("untrusted CA");
    let m = err.to_string();
    assert!(m.to_lowercase().contains("certificate"), "{m}");

    // Plain text against the TLS port: a clear error, from the library and the CLI.
    let plain = format!("http://{}", server.listen);
    let err = match client(&plain, TlsOptions::default()).await {
        Err(e) => e,
        Ok(c) => c.list_refs("", 1).await.expect_err("plain text refused"),
    };
    assert!(err.to_string().contains("https://"), "{err}");
    let out = cli(&["--server", &plain, "stats"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("https://"),
        "{stderr}"
    );

    // TLS options with an http:// URL are a mistake, named.
    let err = client(&plain, tls_options(&ca, None)).await.err().unwrap();
    assert!(err.to_string().contains("https://"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_certificates_are_identities() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("stagecache clients CA");
    let server_cert = ca.server_cert();
    let agent = ca.client_cert("release-agent-7");
    let laptop = ca.client_cert("laptop");
    let stranger_ca = TestCa::new("someone else's CA");
    let stranger = stranger_ca.client_cert("release-agent-9");
    let ca_path = file(dir.path(), "ca.pem", &ca.cert_pem);
    let cert = file(dir.path(), "server.pem", &server_cert.cert_pem);
    let key = file(dir.path(), "server.key", &server_cert.key_pem);
    let agent_cert = file(dir.path(), "agent.pem", &agent.cert_pem);
    let agent_key = file(dir.path(), "agent.key", &agent.key_pem);
    let auth = AuthDir::new(
        r#"
[[certificates]]
subject = "release-agent-*"
grants = [{ namespaces = "prod", permissions = ["read", "record"] }]
"#,
    );
    let auth_config = auth.config().display().to_string();
    let args = [
        "--auth-config",
        &auth_config,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_path,
    ];
    let server = ServerProcess::start_fresh_with_env(
        &args,
        &[
            ("STAGECACHE_CA_CERT", &ca_path),
            ("STAGECACHE_CLIENT_CERT", &agent_cert),
            ("STAGECACHE_CLIENT_KEY", &agent_key),
        ],
    );

    // The agent's certificate: read allowed, record allowed, and the record names it.
    let c = client(&server.url(), tls_options(&ca, Some(&agent)))
        .await
        .unwrap();
    let stats = InfoClient::new(c_channel(&c))
        .stats(StatsRequest {
            namespace: "prod".into(),
        })
        .await;
    assert!(stats.is_ok(), "{stats:?}");
    let d = stagecache_proto::Digest::of_bytes(b"signed bits");
    let upload = c
        .batch_upload(vec![(d, bytes::Bytes::from_static(b"signed bits"))])
        .await;
    // write was not granted: the upload is refused by name
    let e = upload.expect_err("no write grant");
    assert!(e.to_string().contains("cert:release-agent-7"), "{e}");
    let record = LedgerClient::new(c_channel(&c))
        .record(RecordRequest {
            namespace: "prod".into(),
            subject: Some(stagecache_proto::Digest::of_bytes(b"x").to_proto()),
            stage: "Sign".into(),
            status: StageStatus::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    // Allowed to record; refused only because the subject is not stored.
    assert_eq!(record.code(), tonic::Code::FailedPrecondition, "{record:?}");

    // A certificate no rule names: connected, but allowed nothing, named.
    let c = client(&server.url(), tls_options(&ca, Some(&laptop)))
        .await
        .unwrap();
    let e = InfoClient::new(c_channel(&c))
        .stats(StatsRequest {
            namespace: "prod".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("cert:laptop"), "{e:?}");

    // No certificate, or one from another CA: the handshake fails.
    for (case, tls) in [
        ("no client certificate", tls_options(&ca, None)),
        (
            "another CA's certificate",
            tls_options(&ca, Some(&stranger)),
        ),
    ] {
        let outcome = match client(&server.url(), tls).await {
            Err(e) => Err(e.to_string()),
            Ok(c) => InfoClient::new(c_channel(&c))
                .stats(StatsRequest {
                    namespace: "prod".into(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        assert!(outcome.is_err(), "{case}: connected");
    }

    // The CLI with --client-cert/--client-key.
    let out = cli(&[
        "--server",
        &server.url(),
        "--ca-cert",
        &ca_path,
        "--client-cert",
        &agent_cert,
        "--client-key",
        &agent_key,
        "--namespace",
        "prod",
        "stats",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

fn c_channel(c: &Client) -> tonic::transport::Channel {
    c.grpc_channel()
}
