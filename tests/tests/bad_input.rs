//! A catalog of hostile input for every RPC: oversized values, wrapping sizes, over-long
//! batches, a namespace changed mid-stream, a claim on bytes that are not stored. Each
//! gets the precise code, a message under 4 KiB (so grpc-core clients receive it) that
//! names the field, and changes nothing.

use bytes::Bytes;
use stagecache_proto::v1::admin_client::AdminClient;
use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::info_client::InfoClient;
use stagecache_proto::v1::ledger_client::LedgerClient;
use stagecache_proto::v1::manifests_client::ManifestsClient;
use stagecache_proto::v1::refs_client::RefsClient;
use stagecache_proto::v1::*;
use stagecache_proto::{Digest as D, MAX_MESSAGE_BYTES};
use stagecache_tests::{pseudo_random, TestServer};
use tonic::transport::Channel;
use tonic::Code;

/// Asserts the outcome of one bad call: its code, a message under 4 KiB naming `field`.
fn refused<T: std::fmt::Debug>(case: &str, r: Result<T, tonic::Status>, code: Code, field: &str) {
    let e = r.expect_err(case);
    assert_eq!(e.code(), code, "{case}: {e:?}");
    let m = e.message();
    assert!(m.len() < 4096, "{case}: message of {} bytes", m.len());
    assert!(m.contains(field), "{case}: {m:?} does not name {field:?}");
}

fn huge(len: usize) -> String {
    "a".repeat(len)
}

struct Clients {
    cas: CasClient<Channel>,
    manifests: ManifestsClient<Channel>,
    refs: RefsClient<Channel>,
    info: InfoClient<Channel>,
    ledger: LedgerClient<Channel>,
}

async fn clients(server: &TestServer) -> Clients {
    let ch = server.channel().await;
    let m = MAX_MESSAGE_BYTES;
    Clients {
        cas: CasClient::new(ch.clone())
            .max_decoding_message_size(m)
            .max_encoding_message_size(m),
        manifests: ManifestsClient::new(ch.clone())
            .max_decoding_message_size(m)
            .max_encoding_message_size(m),
        refs: RefsClient::new(ch.clone())
            .max_decoding_message_size(m)
            .max_encoding_message_size(m),
        info: InfoClient::new(ch.clone())
            .max_decoding_message_size(m)
            .max_encoding_message_size(m),
        ledger: LedgerClient::new(ch)
            .max_decoding_message_size(m)
            .max_encoding_message_size(m),
    }
}

/// What the server holds, to show that refused calls changed nothing.
async fn state(c: &mut Clients, server: &TestServer) -> (StatsResponse, Vec<String>) {
    let stats = c
        .info
        .stats(StatsRequest {
            namespace: "prod".into(),
        })
        .await
        .unwrap()
        .into_inner();
    (stats, server.blob_files())
}

fn stage_req(ns: &str, subject: D, stage: &str) -> RecordRequest {
    RecordRequest {
        namespace: ns.into(),
        subject: Some(subject.to_proto()),
        stage: stage.into(),
        status: StageStatus::Started as i32,
        ..Default::default()
    }
}

fn graph(stages: Vec<(String, Vec<String>)>) -> Option<StageGraph> {
    Some(StageGraph {
        stages: stages
            .into_iter()
            .map(|(name, depends_on)| StageDef {
                name,
                depends_on,
                fingerprint: String::new(),
            })
            .collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_bad_input_precisely_and_changes_nothing() {
    let server = TestServer::start().await;
    let client = server.client("prod").await;
    // One stored blob and manifest, so that calls get past "not found".
    let src = tempfile::tempdir().unwrap();
    stagecache_tests::write_file(src.path(), "a.bin", &pseudo_random(1, 1000), false);
    let reg = client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let stored = reg.manifest;
    let mut c = clients(&server).await;
    let before = state(&mut c, &server).await;

    // A 1 MB namespace, on every RPC.
    let ns = huge(1_000_000);
    let ns = ns.as_str();
    let subject = Some(stored.to_proto());
    let ia = Code::InvalidArgument;
    refused(
        "FindMissing",
        c.cas
            .find_missing(FindMissingRequest {
                namespace: ns.into(),
                digests: vec![],
            })
            .await,
        ia,
        "namespace",
    );
    let up = vec![UploadRequest {
        namespace: ns.into(),
        digest: Some(D::of_bytes(b"x").to_proto()),
        data: Bytes::from_static(b"x"),
    }];
    refused(
        "Upload",
        c.cas.upload(tokio_stream::iter(up)).await,
        ia,
        "namespace",
    );
    refused(
        "Download",
        c.cas
            .download(DownloadRequest {
                namespace: ns.into(),
                digest: subject.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "BatchUpload",
        c.cas
            .batch_upload(BatchUploadRequest {
                namespace: ns.into(),
                items: vec![],
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "BatchDownload",
        c.cas
            .batch_download(BatchDownloadRequest {
                namespace: ns.into(),
                digests: vec![],
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Manifests.Put",
        c.manifests
            .put(PutManifestRequest {
                namespace: ns.into(),
                manifest: Some(Manifest::default()),
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Manifests.Get",
        c.manifests
            .get(GetManifestRequest {
                namespace: ns.into(),
                digest: subject.clone(),
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Refs.Set",
        c.refs
            .set(SetRefRequest {
                namespace: ns.into(),
                name: "bar/2".into(),
                target: subject.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Refs.Get",
        c.refs
            .get(GetRefRequest {
                namespace: ns.into(),
                name: "bar/1".into(),
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Refs.List",
        c.refs
            .list(ListRefsRequest {
                namespace: ns.into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Refs.History",
        c.refs
            .history(RefHistoryRequest {
                namespace: ns.into(),
                name: "bar/1".into(),
                limit: 0,
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Info.Stats",
        c.info
            .stats(StatsRequest {
                namespace: ns.into(),
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Refs.Pin",
        c.refs
            .pin(PinRefRequest {
                namespace: ns.into(),
                name: "bar/1".into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Admin.CollectGarbage",
        AdminClient::new(server.channel().await)
            .collect_garbage(CollectGarbageRequest {
                namespace: ns.into(),
                dry_run: false,
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Record",
        c.ledger.record(stage_req(ns, stored, "Validation")).await,
        ia,
        "namespace",
    );
    refused(
        "RecordBatch",
        c.ledger
            .record_batch(RecordBatchRequest {
                namespace: ns.into(),
                items: vec![],
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Status",
        c.ledger
            .status(StatusRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "BatchStatus",
        c.ledger
            .batch_status(BatchStatusRequest {
                namespace: ns.into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "History",
        c.ledger
            .history(HistoryRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Plan",
        c.ledger
            .plan(PlanRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                graph: graph(vec![("a".into(), vec![])]),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Invalidate",
        c.ledger
            .invalidate(InvalidateRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                stage: "a".into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Claim",
        c.ledger
            .claim(ClaimRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                stage: "a".into(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "RenewClaim",
        c.ledger
            .renew_claim(RenewClaimRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                stage: "a".into(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "ReleaseClaim",
        c.ledger
            .release_claim(ReleaseClaimRequest {
                namespace: ns.into(),
                subject: subject.clone(),
                stage: "a".into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );
    refused(
        "Watch",
        c.ledger
            .watch(WatchRequest {
                namespace: ns.into(),
                ..Default::default()
            })
            .await,
        ia,
        "namespace",
    );

    // Other oversized values: a hash, a ref name, a path, a stage name, texts.
    let big = huge(1_000_000);
    refused(
        "1 MB hash",
        c.cas
            .find_missing(FindMissingRequest {
                namespace: "prod".into(),
                digests: vec![Digest {
                    hash: big.clone(),
                    size_bytes: 1,
                }],
            })
            .await,
        ia,
        "digests[0].hash",
    );
    for name in [huge(20_000), big.clone()] {
        refused(
            "long ref name",
            c.refs
                .set(SetRefRequest {
                    namespace: "prod".into(),
                    name: name.clone(),
                    target: subject.clone(),
                    ..Default::default()
                })
                .await,
            ia,
            "name",
        );
        refused(
            "long ref name (Get)",
            c.refs
                .get(GetRefRequest {
                    namespace: "prod".into(),
                    name,
                })
                .await,
            ia,
            "name",
        );
    }
    for (field, actor, reason) in [
        ("actor", big.clone(), String::new()),
        ("reason", String::new(), big.clone()),
    ] {
        refused(
            "long pin actor/reason",
            c.refs
                .pin(PinRefRequest {
                    namespace: "prod".into(),
                    name: "bar/1".into(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                    ..Default::default()
                })
                .await,
            ia,
            field,
        );
        refused(
            "long ref actor/reason",
            c.refs
                .set(SetRefRequest {
                    namespace: "prod".into(),
                    name: "bar/2".into(),
                    target: subject.clone(),
                    actor,
                    reason,
                    ..Default::default()
                })
                .await,
            ia,
            field,
        );
    }
    refused(
        "long prefix",
        c.refs
            .list(ListRefsRequest {
                namespace: "prod".into(),
                prefix: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "prefix",
    );
    refused(
        "long page token",
        c.refs
            .list(ListRefsRequest {
                namespace: "prod".into(),
                page_token: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "page_token",
    );
    refused(
        "1 MB path",
        c.manifests
            .put(PutManifestRequest {
                namespace: "prod".into(),
                manifest: Some(Manifest {
                    entries: vec![ManifestEntry {
                        path: big.clone(),
                        digest: Some(D::of_bytes(b"").to_proto()),
                        executable: false,
                    }],
                }),
            })
            .await,
        ia,
        "entries[0].path",
    );
    refused(
        "1 MB stage name",
        c.ledger.record(stage_req("prod", stored, &big)).await,
        ia,
        "stage",
    );
    let mut r = stage_req("prod", stored, "a");
    r.run_url = big.clone();
    refused("1 MB run URL", c.ledger.record(r).await, ia, "run_url");
    refused(
        "1 MB fingerprint",
        c.ledger
            .status(StatusRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                fingerprint: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "fingerprint",
    );
    refused(
        "1 MB holder",
        c.ledger
            .claim(ClaimRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                stage: "a".into(),
                holder: big.clone(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await,
        ia,
        "holder",
    );
    refused(
        "1 MB token",
        c.ledger
            .release_claim(ReleaseClaimRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                stage: "a".into(),
                token: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "token",
    );
    refused(
        "1 MB invalidation reason",
        c.ledger
            .invalidate(InvalidateRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                stage: "a".into(),
                reason: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "reason",
    );
    refused(
        "1 MB watched ref",
        c.ledger
            .watch(WatchRequest {
                namespace: "prod".into(),
                r#ref: big.clone(),
                ..Default::default()
            })
            .await,
        ia,
        "ref",
    );
    // A cycle through 10,000 stages with long names: a few named, and its length.
    let n = 10_000;
    let name = |i: usize| format!("stage {i} {}", "x".repeat(150));
    let cycle = (0..n).map(|i| (name(i), vec![name((i + 1) % n)])).collect();
    refused(
        "10,000-stage cycle",
        c.ledger
            .plan(PlanRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                graph: graph(cycle),
                ..Default::default()
            })
            .await,
        ia,
        "dependency cycle of 10,000 stage(s)",
    );
    refused(
        "unknown stage in only",
        c.ledger
            .plan(PlanRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                graph: graph(vec![("a".into(), vec![])]),
                only: vec![big.clone()],
                ..Default::default()
            })
            .await,
        ia,
        "only",
    );

    // Sizes that would wrap a u64 sum.
    let nine = 9 * 1024 * 1024u64;
    let mut digests: Vec<Digest> = (0..6u8).map(|i| D::new([i; 32], nine).to_proto()).collect();
    digests.push(D::new([9; 32], u64::MAX - 6 * nine + 1).to_proto());
    refused(
        "wrapping BatchDownload sizes",
        c.cas
            .batch_download(BatchDownloadRequest {
                namespace: "prod".into(),
                digests,
            })
            .await,
        ia,
        "digests",
    );
    let entries = ["a", "b"]
        .iter()
        .map(|p| ManifestEntry {
            path: p.to_string(),
            digest: Some(D::new([1; 32], u64::MAX / 2 + 1).to_proto()),
            executable: false,
        })
        .collect();
    refused(
        "wrapping manifest sizes",
        c.manifests
            .put(PutManifestRequest {
                namespace: "prod".into(),
                manifest: Some(Manifest { entries }),
            })
            .await,
        ia,
        "entries",
    );

    // Over-long batches.
    let d = D::of_bytes(b"x");
    refused(
        "FindMissing of 100,001",
        c.cas
            .find_missing(FindMissingRequest {
                namespace: "prod".into(),
                digests: vec![d.to_proto(); 100_001],
            })
            .await,
        ia,
        "digests: 100,001 items, at most 100,000",
    );
    refused(
        "BatchUpload of 10,001",
        c.cas
            .batch_upload(BatchUploadRequest {
                namespace: "prod".into(),
                items: vec![
                    BatchUploadItem {
                        digest: Some(d.to_proto()),
                        data: Bytes::from_static(b"x"),
                    };
                    10_001
                ],
            })
            .await,
        ia,
        "items: 10,001 items, at most 10,000",
    );
    refused(
        "BatchDownload of 100,001",
        c.cas
            .batch_download(BatchDownloadRequest {
                namespace: "prod".into(),
                digests: vec![D::of_bytes(b"").to_proto(); 100_001],
            })
            .await,
        ia,
        "digests: 100,001 items, at most 10,000",
    );
    refused(
        "RecordBatch of 10,001",
        c.ledger
            .record_batch(RecordBatchRequest {
                namespace: "prod".into(),
                items: vec![stage_req("", stored, "a"); 10_001],
            })
            .await,
        ia,
        "items: 10,001 items",
    );
    refused(
        "BatchStatus of 10,001",
        c.ledger
            .batch_status(BatchStatusRequest {
                namespace: "prod".into(),
                subjects: vec![stored.to_proto(); 10_001],
                ..Default::default()
            })
            .await,
        ia,
        "subjects: 10,001 items",
    );
    let stages = (0..10_001).map(|i| (format!("s{i}"), vec![])).collect();
    refused(
        "Plan of 10,001 stages",
        c.ledger
            .plan(PlanRequest {
                namespace: "prod".into(),
                subject: subject.clone(),
                graph: graph(stages),
                ..Default::default()
            })
            .await,
        ia,
        "graph.stages: 10,001 items",
    );

    // The namespace of an upload stream is fixed by its first message.
    let data = pseudo_random(5, 3 * 1024 * 1024);
    let dd = D::of_bytes(&data);
    for later in ["test", "Not A Namespace!"] {
        let msgs: Vec<UploadRequest> = data
            .chunks(1024 * 1024)
            .enumerate()
            .map(|(i, chunk)| UploadRequest {
                namespace: match i {
                    0 => "prod".into(),
                    1 => "prod".into(),
                    _ => later.into(),
                },
                digest: (i == 0).then(|| dd.to_proto()),
                data: Bytes::copy_from_slice(chunk),
            })
            .collect();
        refused(
            "namespace changed mid-stream",
            c.cas.upload(tokio_stream::iter(msgs)).await,
            ia,
            "namespace",
        );
    }

    // A claim needs a stored subject, as a record does.
    let unstored = Some(D::of_bytes(b"never uploaded").to_proto());
    let claim = c
        .ledger
        .claim(ClaimRequest {
            namespace: "prod".into(),
            subject: unstored.clone(),
            stage: "Publish".into(),
            ttl_seconds: 60,
            ..Default::default()
        })
        .await;
    refused(
        "Claim of an unstored subject",
        claim,
        Code::FailedPrecondition,
        "subject",
    );
    let record = c
        .ledger
        .record(RecordRequest {
            subject: unstored,
            ..stage_req("prod", stored, "Publish")
        })
        .await
        .unwrap_err();
    assert_eq!(record.code(), Code::FailedPrecondition);

    // Nothing changed: same counts, same blob files, the uploads left nothing.
    let after = state(&mut c, &server).await;
    assert_eq!(before, after);
    let missing = c
        .cas
        .find_missing(FindMissingRequest {
            namespace: "prod".into(),
            digests: vec![dd.to_proto(), d.to_proto()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing.len(), 2);
    server.stop().await;
}
