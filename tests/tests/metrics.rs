//! The metrics port of the real server binary (`--metrics-listen`): Prometheus text at
//! `/metrics` whose counters move with the calls made (blobs stored and refused, bytes in
//! and out, ledger records by status, plan decisions, claims, storage operations), a
//! `/status` JSON that describes the server, and one label for every unknown method.

use stagecache_client::stages::StageFile;
use stagecache_proto::v1::{ClaimRequest, Decision, PlanRequest, RecordRequest, StageStatus};
use stagecache_proto::Digest;
use stagecache_tests::{pipeline_file, register_and_fetch, scrape_metrics, ServerProcess};
use std::collections::HashMap;

async fn scrape(server: &ServerProcess) -> HashMap<String, f64> {
    scrape_metrics(&server.metrics_url()).await
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// How much `key` grew from `before` to `after`.
fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    value(after, key) - value(before, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_the_calls() {
    let server = ServerProcess::start_fresh_with_args(&["--metrics-listen", "127.0.0.1:0"]);
    let client = server.client("prod").await;
    let before = scrape(&server).await;

    // A register: three distinct blobs (one of them large enough to stream), a manifest
    // and a ref.
    let big = stagecache_tests::pseudo_random(7, 9 * 1024 * 1024);
    let manifest = register_and_fetch(
        &client,
        "bar/1",
        &[
            ("a.bin", b"metrics a"),
            ("b.bin", b"metrics b"),
            ("big.bin", &big),
        ],
    )
    .await;
    // An upload whose bytes are not what its digest says.
    let wrong = Digest::of_bytes(b"what was promised");
    let refused = client
        .batch_upload(vec![(
            wrong,
            bytes::Bytes::from_static(b"what was sent!!!!"),
        )])
        .await;
    assert!(refused.is_err(), "a wrong digest was accepted");
    // Ledger: a failure then a success of one stage, a plan, a claim granted and refused.
    let file = StageFile::load(std::path::Path::new(&pipeline_file(
        "validate-publish.stages.yaml",
    )))
    .unwrap();
    let first = file.stages[0].name.clone();
    for status in [StageStatus::Failed, StageStatus::Succeeded] {
        client
            .record(RecordRequest {
                subject: Some(manifest.to_proto()),
                stage: first.clone(),
                status: status as i32,
                build_id: "run-1".into(),
                actor: "pipeline".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let plan = client
        .plan(PlanRequest {
            subject: Some(manifest.to_proto()),
            graph: Some(file.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    let count = |d: Decision| {
        plan.stages
            .iter()
            .filter(|s| s.decision == d as i32)
            .count()
    };
    let (run, skip, blocked) = (
        count(Decision::Run),
        count(Decision::Skip),
        count(Decision::Blocked),
    );
    assert_eq!(skip, 1, "{plan:?}");
    let second = file.stages[1].name.clone();
    for holder in ["agent-1", "agent-2"] {
        client
            .claim(ClaimRequest {
                subject: Some(manifest.to_proto()),
                stage: second.clone(),
                holder: holder.into(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // A claim that expires, then another holder's: granted, and counted as an expiry.
    let third = file.stages[2].name.clone();
    for (holder, ttl) in [("agent-1", 1), ("agent-2", 60)] {
        let r = client
            .claim(ClaimRequest {
                subject: Some(manifest.to_proto()),
                stage: third.clone(),
                holder: holder.into(),
                ttl_seconds: ttl,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.granted, "{holder}: {r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    }

    let after = scrape(&server).await;
    let g = |key: &str| grew(&before, &after, key);
    assert_eq!(
        g("stagecache_blobs_uploaded_total"),
        4.0,
        "3 files + the manifest"
    );
    manifest_bytes(&after, &before, big.len());
    assert_eq!(g("stagecache_blobs_refused_total"), 1.0);
    assert!(
        g("stagecache_blobs_verified_total") >= 3.0,
        "every fetched blob verified"
    );
    assert_eq!(
        g(r#"stagecache_ledger_records_total{status="failed"}"#),
        1.0
    );
    assert_eq!(
        g(r#"stagecache_ledger_records_total{status="succeeded"}"#),
        1.0
    );
    assert_eq!(
        g(r#"stagecache_plan_decisions_total{decision="skip"}"#),
        skip as f64
    );
    assert_eq!(
        g(r#"stagecache_plan_decisions_total{decision="run"}"#),
        run as f64
    );
    assert_eq!(
        g(r#"stagecache_plan_decisions_total{decision="blocked"}"#),
        blocked as f64
    );
    assert_eq!(g(r#"stagecache_claims_total{outcome="granted"}"#), 3.0);
    assert_eq!(g(r#"stagecache_claims_total{outcome="expired"}"#), 1.0);
    assert_eq!(g(r#"stagecache_claims_total{outcome="refused_held"}"#), 1.0);
    // Per-RPC figures, from the layer in front of the services.
    let record_ok =
        r#"stagecache_rpc_requests_total{code="Ok",method="stagecache.v1.Ledger/Record"}"#;
    assert_eq!(g(record_ok), 2.0, "{after:#?}");
    // BatchUpload answers OK with a status per item: the refusal is the item's.
    let batch_ok =
        r#"stagecache_rpc_requests_total{code="Ok",method="stagecache.v1.Cas/BatchUpload"}"#;
    assert!(g(batch_ok) >= 1.0, "{after:#?}");
    let sent: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("stagecache_rpc_sent_bytes_total"))
        .map(|(_, v)| *v)
        .sum();
    let received: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("stagecache_rpc_received_bytes_total"))
        .map(|(_, v)| *v)
        .sum();
    assert!(received >= big.len() as f64, "received {received}");
    assert!(sent >= big.len() as f64, "sent {sent}");
    assert!(
        g(r#"stagecache_rpc_duration_seconds_count{method="stagecache.v1.Ledger/Record"}"#) == 2.0
    );
    // Storage operations, from the wrapper around the backend.
    assert!(
        g(r#"stagecache_storage_operations_total{backend="local",op="put",outcome="ok"}"#) >= 3.0
    );
    assert!(
        g(r#"stagecache_storage_operations_total{backend="local",op="upload",outcome="ok"}"#)
            >= 1.0,
        "the large blob streams through an upload"
    );
    assert!(g(r#"stagecache_journal_entries_total"#) >= 4.0);
    assert!(value(&after, "stagecache_data_dir_free_bytes") > 0.0);
    assert!(value(&after, "stagecache_start_time_seconds") > 1.7e9);
}

/// Asserts the uploaded bytes grew by the three files and a manifest (its canonical form
/// is stored as a blob too) of a plausible size.
fn manifest_bytes(after: &HashMap<String, f64>, before: &HashMap<String, f64>, big: usize) {
    let total = grew(before, after, "stagecache_blob_uploaded_bytes_total");
    let manifest = total - (9 + 9 + big) as f64;
    assert!(
        manifest > 0.0 && manifest < 4096.0,
        "uploaded bytes {total}: the files' {} and a manifest",
        9 + 9 + big
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_server_and_unknown_methods_share_a_label() {
    let server = ServerProcess::start_fresh_with_args(&["--metrics-listen", "127.0.0.1:0"]);
    let r = reqwest::get(format!("{}/status", server.metrics_url()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let status: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["backend"], "local");
    assert!(status["blob_store"]
        .as_str()
        .unwrap()
        .starts_with("file://"));
    assert_eq!(status["journal"]["writable"], true);
    assert!(status["journal"]["lease_holder"]
        .as_str()
        .unwrap()
        .contains('@'));
    assert!(status["data_dir_free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(status["damaged_blobs"], 0);

    // Calls to methods that do not exist, under made-up names.
    let channel = server.channel().await;
    for n in 0..3 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_maybe_shared(format!("/made.up.Service{n}/Call"))
            .unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let e = grpc
            .unary(tonic::Request::new(()), path, codec)
            .await
            .expect_err("an unknown method");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }
    let after = scrape(&server).await;
    assert!(after.keys().all(|k| !k.contains("made.up")), "{after:#?}");
    assert_eq!(
        value(
            &after,
            r#"stagecache_rpc_requests_total{code="Unimplemented",method="unknown"}"#
        ),
        3.0
    );
    // Not a metrics page: 404.
    let r = reqwest::get(format!("{}/nothing", server.metrics_url()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// With auth on: a verified caller without the grant is counted `denied`, a bad token
/// `unauthenticated`, a good one `verified`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_outcomes_are_counted() {
    use stagecache_tests::auth::{client_with_token, start_with_auth, AuthDir};
    let auth = AuthDir::new("");
    let server = start_with_auth(&auth.config(), &["--metrics-listen", "127.0.0.1:0"]);
    let reader = auth.mint("reader", &["prod:read"], "1h");
    let before = scrape(&server).await;
    let client = client_with_token(&server.url(), "prod", Some(&reader)).await;
    let e = client
        .record(RecordRequest {
            subject: Some(Digest::of_bytes(b"x").to_proto()),
            stage: "Sign".into(),
            status: StageStatus::Succeeded as i32,
            build_id: "run-1".into(),
            actor: "pipeline".into(),
            ..Default::default()
        })
        .await
        .expect_err("a reader may not record");
    assert!(
        e.to_string().contains("PERMISSION_DENIED") || e.to_string().contains("may not"),
        "{e}"
    );
    let stranger = client_with_token(&server.url(), "prod", Some("not.a.token")).await;
    stranger
        .get_ref("bar/1")
        .await
        .expect_err("a bad token is refused");
    // A bad token to made-up paths is refused before routing: still one label.
    let channel = server.channel().await;
    for n in 0..3 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_maybe_shared(format!("/made.up.Service/Call{n}"))
            .unwrap();
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer not.a.token".parse().unwrap());
        let e = grpc
            .unary(req, path, tonic_prost::ProstCodec::<(), ()>::default())
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let after = scrape(&server).await;
    assert!(after.keys().all(|k| !k.contains("made.up")), "{after:#?}");
    let g = |key: &str| grew(&before, &after, key);
    assert_eq!(
        g(r#"stagecache_auth_total{outcome="denied"}"#),
        1.0,
        "{after:#?}"
    );
    assert!(g(r#"stagecache_auth_total{outcome="unauthenticated"}"#) >= 1.0);
    assert!(g(r#"stagecache_auth_total{outcome="verified"}"#) >= 1.0);
    assert_eq!(
        g(r#"stagecache_ledger_records_total{status="succeeded"}"#),
        0.0
    );
}
