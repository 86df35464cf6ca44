//! The stage ledger against a real server: the seed re-run scenario, forced re-sign,
//! claims with an injected clock, namespaces, batches, watch, and bad input.

use stagecache_client::stages::StageFile;
use stagecache_client::Client;
use stagecache_proto::v1::{
    watch_event, ClaimRequest, Decision, HistoryRequest, InvalidateRequest, PlanRequest,
    RecordRequest, ReleaseClaimRequest, RenewClaimRequest, StageStatus, StatusRequest,
    WatchRequest,
};
use stagecache_proto::Digest;
use stagecache_server::clock::ManualClock;
use stagecache_server::ServerConfig;
use stagecache_tests::{write_file, ServerProcess, TestServer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

fn stage_file(name: &str) -> StageFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/pipelines")
        .join(name);
    StageFile::load(&path).unwrap()
}

/// Registers a one-file tree with `content` and returns its manifest digest.
async fn asset_set(client: &Client, ref_name: &str, content: &[u8]) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "assets/pkg.nupkg", content, false);
    client
        .register(dir.path(), ref_name, &Default::default())
        .await
        .unwrap()
        .manifest
}

fn rec(subject: Digest, stage: &str, status: StageStatus) -> RecordRequest {
    RecordRequest {
        subject: Some(subject.to_proto()),
        stage: stage.into(),
        status: status as i32,
        bar_build_id: "12345".into(),
        build_id: "900".into(),
        ..Default::default()
    }
}

async fn plan(
    client: &Client,
    subject: Digest,
    file: &StageFile,
    force: &[&str],
) -> HashMap<String, (Decision, String)> {
    let p = client
        .plan(PlanRequest {
            subject: Some(subject.to_proto()),
            graph: Some(file.to_proto()),
            force: force.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.stages.len(), file.stages.len());
    p.stages
        .into_iter()
        .map(|s| (s.name, (Decision::try_from(s.decision).unwrap(), s.reason)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_publish_failure_skips_what_succeeded() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let signed = asset_set(&client, "bar/12345", b"signed bits").await;
    let graph = stage_file("validate-publish.stages.yaml");

    // First run: everything up to publishing succeeds, Publish Signed Assets fails, and the
    // pipeline stops there.
    let succeeded = [
        "Validation",
        "Validation Override",
        "Source Code Validation",
        "Source Code Validation Override",
        "Required Validation",
        "Required Validation Override",
        "Publish Post-Signing Assets",
    ];
    for s in succeeded {
        client
            .record(rec(signed, s, StageStatus::Started))
            .await
            .unwrap();
        client
            .record(rec(signed, s, StageStatus::Succeeded))
            .await
            .unwrap();
    }
    client
        .record(rec(signed, "Publish Signed Assets", StageStatus::Started))
        .await
        .unwrap();
    client
        .record(rec(signed, "Publish Signed Assets", StageStatus::Failed))
        .await
        .unwrap();

    let p = plan(&client, signed, &graph, &[]).await;
    for s in succeeded {
        assert_eq!(p[s].0, Decision::Skip, "{s}: {}", p[s].1);
        assert!(
            p[s].1.contains("attempt 1") && p[s].1.contains("BAR build 12345"),
            "{s}: {}",
            p[s].1
        );
    }
    let downstream = [
        "Publish Signed Assets",
        "VS Insertion Ring",
        "VS Insertion Override",
        "Test Team Sign-off",
        "Staging Ring",
        "Staging Ring Override",
        "Sign-off For Finalizing",
        "Finalize Staging Ring",
        "Publish CTI Validated Assets",
        "Approve Publishing Internal",
        "Handoff Publishing Ring",
    ];
    for s in downstream {
        assert_eq!(p[s].0, Decision::Run, "{s}: {}", p[s].1);
    }
    assert!(
        p["Publish Signed Assets"].1.contains("last failed"),
        "{}",
        p["Publish Signed Assets"].1
    );
    assert_eq!(succeeded.len() + downstream.len(), graph.stages.len());

    // The re-run's attempt of the failed stage is attempt 2, and then it is skipped too.
    let r = client
        .record(rec(signed, "Publish Signed Assets", StageStatus::Started))
        .await
        .unwrap();
    assert_eq!(r.attempt, 2);
    client
        .record(rec(signed, "Publish Signed Assets", StageStatus::Succeeded))
        .await
        .unwrap();
    let p = plan(&client, signed, &graph, &[]).await;
    assert_eq!(p["Publish Signed Assets"].0, Decision::Skip);

    // A re-run that selects only the Staging Ring is blocked by the stages before it.
    let only = client
        .plan(PlanRequest {
            subject: Some(signed.to_proto()),
            graph: Some(graph.to_proto()),
            only: vec!["Staging Ring".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let staging = only
        .stages
        .iter()
        .find(|s| s.name == "Staging Ring")
        .unwrap();
    assert_eq!(staging.decision, Decision::Blocked as i32);
    assert_eq!(staging.blocked_by, ["Test Team Sign-off"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_is_reused_until_a_forced_resign() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let unsigned = asset_set(&client, "build/67890", b"unsigned bits").await;
    let signed = asset_set(&client, "bar/12345", b"signed bits").await;
    let graph = stage_file("prepare-artifacts.stages.yaml");
    for s in ["Prep Ring", "Prep Ring Override"] {
        client
            .record(rec(unsigned, s, StageStatus::Succeeded))
            .await
            .unwrap();
    }
    client
        .record(RecordRequest {
            outputs: Some(signed.to_proto()),
            ..rec(unsigned, "Signing Ring", StageStatus::Succeeded)
        })
        .await
        .unwrap();

    // A re-run finds the signed set by the unsigned set and does not sign again.
    let st = client
        .stage_status(StatusRequest {
            subject: Some(unsigned.to_proto()),
            stage: "Signing Ring".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        Digest::from_proto("o", st[0].outputs.as_ref().unwrap()).unwrap(),
        signed
    );
    assert_eq!(
        plan(&client, unsigned, &graph, &[]).await["Signing Ring"].0,
        Decision::Skip
    );

    // Forced re-sign: an audited invalidation, then the plan runs signing again and the old
    // signed set is no longer returned.
    let audit = client
        .invalidate(InvalidateRequest {
            subject: Some(unsigned.to_proto()),
            stage: "Signing Ring".into(),
            reason: "certificate rotated".into(),
            actor: "release-manager".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.status, StageStatus::Invalidated as i32);
    let p = plan(&client, unsigned, &graph, &["Signing Ring"]).await;
    assert_eq!(p["Signing Ring"].0, Decision::Run);
    assert!(
        p["Signing Ring"]
            .1
            .contains("invalidated by release-manager"),
        "{}",
        p["Signing Ring"].1
    );
    assert!(
        p["Signing Ring"].1.contains("certificate rotated"),
        "{}",
        p["Signing Ring"].1
    );
    assert_eq!(p["Prep Ring"].0, Decision::Skip);
    let st = client
        .stage_status(StatusRequest {
            subject: Some(unsigned.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(st.iter().all(|r| r.stage != "Signing Ring"), "{st:?}");
    let h = client
        .stage_history(HistoryRequest {
            subject: Some(unsigned.to_proto()),
            stage: "Signing Ring".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h[0].status, StageStatus::Invalidated as i32);
    assert_eq!(
        (h[0].actor.as_str(), h[0].reason.as_str()),
        ("release-manager", "certificate rotated")
    );
    assert_eq!(h[1].status, StageStatus::Succeeded as i32);

    // Invalidating again: there is no result left to invalidate.
    let e = client
        .invalidate(InvalidateRequest {
            subject: Some(unsigned.to_proto()),
            stage: "Signing Ring".into(),
            reason: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_and_expire() {
    let clock = ManualClock::new(1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.clock = Arc::new(clock.clone());
    let server = TestServer::start_with(config).await;
    let client = server.client("prod").await;
    let signed = asset_set(&client, "bar/1", b"bits").await;
    let claim = |holder: &str| ClaimRequest {
        subject: Some(signed.to_proto()),
        stage: "Publish Signed Assets".into(),
        holder: holder.into(),
        ttl_seconds: 600,
        ..Default::default()
    };

    // Two re-runs ask at once: exactly one is granted.
    let (a, b) = tokio::join!(client.claim(claim("run-a")), client.claim(claim("run-b")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.granted ^ b.granted, "exactly one claim is granted");
    let (winner, loser, loser_name) = if a.granted {
        (a, b, "run-b")
    } else {
        (b, a, "run-a")
    };
    let holder = winner.claim.as_ref().unwrap().holder.clone();
    assert_eq!(loser.claim.as_ref().unwrap().holder, holder);
    assert!(
        loser.claim.as_ref().unwrap().token.is_empty(),
        "the token stays with the holder"
    );
    let token = winner.claim.unwrap().token;

    // The loser cannot record, renew or release.
    let e = client
        .record(rec(signed, "Publish Signed Assets", StageStatus::Started))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains(&holder), "{e}");
    let e = client
        .renew_claim(RenewClaimRequest {
            subject: Some(signed.to_proto()),
            stage: "Publish Signed Assets".into(),
            token: "not-the-token".into(),
            ttl_seconds: 60,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    let release = |token: String| ReleaseClaimRequest {
        subject: Some(signed.to_proto()),
        stage: "Publish Signed Assets".into(),
        token,
        ..Default::default()
    };
    let e = client
        .release_claim(release("not-the-token".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    // The claim is still the winner's: the loser asking again is refused, naming it.
    let still = client.claim(claim(loser_name)).await.unwrap();
    assert!(!still.granted);
    assert_eq!(still.claim.unwrap().holder, holder);

    // After the TTL the other can claim; the winner's old token is then worthless.
    clock.advance_ms(601_000);
    let again = client.claim(claim(loser_name)).await.unwrap();
    assert!(again.granted);
    let e = client.release_claim(release(token)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));

    // The holder records with its token; the final record releases the claim, and the
    // next claim is answered "already succeeded".
    let t2 = again.claim.unwrap().token;
    client
        .record(RecordRequest {
            claim_token: t2.clone(),
            ..rec(signed, "Publish Signed Assets", StageStatus::Started)
        })
        .await
        .unwrap();
    client
        .record(RecordRequest {
            claim_token: t2,
            ..rec(signed, "Publish Signed Assets", StageStatus::Succeeded)
        })
        .await
        .unwrap();
    let after = client.claim(claim("run-c")).await.unwrap();
    assert!(!after.granted);
    assert_eq!(
        after.already_succeeded.unwrap().status,
        StageStatus::Succeeded as i32
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_namespace_never_marks_prod_done() {
    let server = ServerProcess::start_fresh();
    let prod = server.client("prod").await;
    let test = server.client("test").await;
    let signed = asset_set(&prod, "bar/5", b"bits").await;
    test.record(rec(signed, "Required Validation", StageStatus::Succeeded))
        .await
        .unwrap();
    let graph = stage_file("validate-publish.stages.yaml");
    assert_eq!(
        plan(&test, signed, &graph, &[]).await["Required Validation"].0,
        Decision::Skip
    );
    assert_eq!(
        plan(&prod, signed, &graph, &[]).await["Required Validation"].0,
        Decision::Run
    );
    let st = prod
        .stage_status(StatusRequest {
            subject: Some(signed.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(st.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_records_per_asset_and_batch_status() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        write_file(
            dir.path(),
            &format!("pkgs/{i}.nupkg"),
            format!("package {i}").as_bytes(),
            false,
        );
    }
    let reg = client
        .register(dir.path(), "bar/7", &Default::default())
        .await
        .unwrap();
    let manifest = client.get_manifest(reg.manifest).await.unwrap();
    let assets: Vec<Digest> = manifest.entries().iter().map(|e| e.digest).collect();

    // A half-finished publish: the first 1200 assets went to the account.
    let items: Vec<RecordRequest> = assets[..1200]
        .iter()
        .map(|d| RecordRequest {
            target: "account-a".into(),
            ..rec(*d, "Publish Signed Assets", StageStatus::Succeeded)
        })
        .collect();
    let done = client.record_batch(items).await.unwrap();
    assert_eq!(done.len(), 1200);

    // The re-run asks which assets are already published, in one call.
    let mut ledger = stagecache_proto::v1::ledger_client::LedgerClient::new(server.channel().await)
        .max_decoding_message_size(stagecache_proto::MAX_MESSAGE_BYTES);
    let st = ledger
        .batch_status(stagecache_proto::v1::BatchStatusRequest {
            namespace: "prod".into(),
            subjects: assets.iter().map(|d| d.to_proto()).collect(),
            stage: "Publish Signed Assets".into(),
            target: "account-a".into(),
            fingerprint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let published = st.subjects.iter().filter(|s| !s.results.is_empty()).count();
    assert_eq!(published, 1200);
    assert!(st.subjects[1500].results.is_empty());

    // All or nothing: one unknown subject refuses the whole batch.
    let mut items: Vec<RecordRequest> = assets[1200..]
        .iter()
        .map(|d| RecordRequest {
            target: "account-a".into(),
            ..rec(*d, "Publish Signed Assets", StageStatus::Succeeded)
        })
        .collect();
    items.push(rec(
        Digest::of_bytes(b"never stored"),
        "Publish Signed Assets",
        StageStatus::Succeeded,
    ));
    let e = client.record_batch(items).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("items[800].subject"), "{e}");
    let st = client
        .stage_status(StatusRequest {
            subject: Some(assets[1500].to_proto()),
            stage: "Publish Signed Assets".into(),
            target: "account-a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(st.is_empty(), "nothing of the refused batch was recorded");
    server.stop().await;
}

/// The next event that carries a change (skipping the `ready` marker), within 30 s.
async fn next_event(
    s: &mut tonic::Streaming<stagecache_proto::v1::WatchEvent>,
) -> stagecache_proto::v1::WatchEvent {
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), s.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("stream open");
        if e.event.is_some() {
            return e;
        }
        assert!(e.ready, "an event without a change is the ready marker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_refs_and_results_as_they_happen() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let mut refs = client
        .watch(WatchRequest {
            r#ref: "bar/8".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The subscription exists once the call returned: nothing after this is missed.
    let signed = asset_set(&client, "bar/8", b"watched").await;
    let e = next_event(&mut refs).await;
    match e.event {
        Some(watch_event::Event::RefSet(c)) => {
            assert_eq!(c.name, "bar/8");
            assert_eq!(
                Digest::from_proto("t", c.new_target.as_ref().unwrap()).unwrap(),
                signed
            );
        }
        other => panic!("unexpected event {other:?}"),
    }
    client
        .record(rec(signed, "Required Validation", StageStatus::Succeeded))
        .await
        .unwrap();
    // A watch opened afterwards first reports the current state.
    let mut results = client
        .watch(WatchRequest {
            subject: Some(signed.to_proto()),
            stage: "Required Validation".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = stagecache_tests::within(
        Duration::from_secs(30),
        "the initial state",
        results.message(),
    );
    let e = first.await.unwrap().expect("stream open");
    assert!(e.initial);
    // Another namespace's results do not reach it; this namespace's do.
    let test = server.client("test").await;
    test.record(rec(signed, "Required Validation", StageStatus::Failed))
        .await
        .unwrap();
    client
        .record(rec(signed, "Required Validation", StageStatus::Started))
        .await
        .unwrap();
    let e = next_event(&mut results).await;
    assert!(!e.initial);
    match e.event {
        Some(watch_event::Event::StageRecorded(r)) => {
            assert_eq!(r.status, StageStatus::Started as i32)
        }
        other => panic!("unexpected event {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ledger_input_is_refused_and_changes_nothing() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let signed = asset_set(&client, "bar/9", b"bits").await;
    let graph = stage_file("validate-publish.stages.yaml");

    let mut cyclic = graph.to_proto();
    // Required Validation (index 4) is upstream of the Handoff Publishing Ring.
    cyclic.stages[4].depends_on = vec!["Handoff Publishing Ring".into()];
    let unknown_dep = {
        let mut g = graph.to_proto();
        g.stages[1].depends_on = vec!["Validaton".into()];
        g
    };
    let cases = [
        (
            PlanRequest {
                graph: Some(cyclic),
                ..Default::default()
            },
            "dependency cycle",
        ),
        (
            PlanRequest {
                graph: Some(unknown_dep),
                ..Default::default()
            },
            "stage \"Validation Override\": depends_on \"Validaton\"",
        ),
        (
            PlanRequest {
                graph: Some(graph.to_proto()),
                only: vec!["Nope".into()],
                ..Default::default()
            },
            "only[0]: \"Nope\" is not a stage",
        ),
        (
            PlanRequest {
                graph: Some(graph.to_proto()),
                force: vec!["Nope".into()],
                ..Default::default()
            },
            "force[0]: \"Nope\"",
        ),
    ];
    for (mut req, want) in cases {
        req.subject = Some(signed.to_proto());
        let e = client.plan(req).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
        assert!(e.to_string().contains(want), "{e} lacks {want}");
    }

    // Invalid transition: a succeeded attempt cannot become started again.
    client
        .record(rec(signed, "Required Validation", StageStatus::Started))
        .await
        .unwrap();
    let ok = client
        .record(rec(signed, "Required Validation", StageStatus::Succeeded))
        .await
        .unwrap();
    let e = client
        .record(RecordRequest {
            attempt: ok.attempt,
            ..rec(signed, "Required Validation", StageStatus::Started)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(
        e.to_string()
            .contains("is already succeeded; it cannot become started"),
        "{e}"
    );
    let e = client
        .record(RecordRequest {
            attempt: ok.attempt,
            ..rec(signed, "Required Validation", StageStatus::Failed)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    // Recording the same final status again is an idempotent retry.
    let same = client
        .record(RecordRequest {
            attempt: ok.attempt,
            ..rec(signed, "Required Validation", StageStatus::Succeeded)
        })
        .await
        .unwrap();
    assert_eq!(same.seq, ok.seq);

    // Record against a missing subject; bad status; bad names.
    let e = client
        .record(rec(
            Digest::of_bytes(b"missing"),
            "Required Validation",
            StageStatus::Succeeded,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("subject:"), "{e}");
    let e = client
        .record(rec(signed, "Required Validation", StageStatus::Invalidated))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let e = client
        .record(rec(signed, "", StageStatus::Started))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    assert!(e.to_string().contains("stage: is empty"), "{e}");
    let e = client
        .claim(ClaimRequest {
            subject: Some(signed.to_proto()),
            stage: "X".into(),
            holder: "h".into(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let e = client
        .invalidate(InvalidateRequest {
            subject: Some(signed.to_proto()),
            stage: "Never Ran".into(),
            reason: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    let e = client
        .invalidate(InvalidateRequest {
            subject: Some(signed.to_proto()),
            stage: "Required Validation".into(),
            reason: " ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));

    // Nothing of the refused calls changed the ledger: one stage, two records.
    let h = client
        .stage_history(HistoryRequest {
            subject: Some(signed.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].status, StageStatus::Succeeded as i32);
    server.stop().await;
}

/// Status and plan read a subject's heads from a cache that every write empties: while
/// readers keep filling it, each acknowledged record must be what the very next status
/// and plan say, never the head it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_in_the_next_read_while_others_read() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let subject = asset_set(&client, "bar/cache", b"cached heads").await;
    let file = stage_file("validate-publish.stages.yaml");
    let stage = "Validation".to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let client = server.client("prod").await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .stage_status(StatusRequest {
                        subject: Some(subject.to_proto()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                reads += 1;
            }
            reads
        }));
    }
    for attempt in 1..=40u32 {
        for status in [StageStatus::Started, StageStatus::Failed] {
            let r = client.record(rec(subject, &stage, status)).await.unwrap();
            assert_eq!((r.attempt, r.status), (attempt, status as i32));
            let st = client
                .stage_status(StatusRequest {
                    subject: Some(subject.to_proto()),
                    ..Default::default()
                })
                .await
                .unwrap();
            let head = st
                .iter()
                .find(|h| h.stage == stage)
                .expect("the stage's line");
            assert_eq!(
                (head.attempt, head.status),
                (attempt, status as i32),
                "status after attempt {attempt} was recorded {status:?}"
            );
            let p = plan(&client, subject, &file, &[]).await;
            assert!(
                p[&stage].1.contains(&format!("in attempt {attempt} at")),
                "plan after attempt {attempt} was recorded {status:?}: {:?}",
                p[&stage]
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 80, "the readers raced only {reads} reads");
    server.stop().await;
}
