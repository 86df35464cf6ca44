//! Retention and garbage collection (issue 12): refs expire unless pinned, a collection
//! removes what nothing live reaches (blobs, manifests, the ledger lines of collected
//! subjects) and never what a live ref, a live result's outputs or a recent upload needs;
//! it is safe against registers running at once, against SIGKILL in the middle, and it
//! makes room when the store is full.

use stagecache_client::Client;
use stagecache_proto::v1::ledger_client::LedgerClient;
use stagecache_proto::v1::{
    Decision, PlanRequest, RecordRequest, StageDef, StageGraph, StageResult, StageStatus,
    StatusRequest,
};
use stagecache_proto::Digest;
use stagecache_server::clock::ManualClock;
use stagecache_server::store::gc::Retention;
use stagecache_server::ServerConfig;
use stagecache_tests::backends::Backend;
use stagecache_tests::{
    assert_same_tree, on_every_backend, output_within, pseudo_random, test_timeout, workspace_bin,
    write_file, ServerProcess, TestServer,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const DAY: i64 = 86_400_000;

/// Fetches `manifest` into a new directory and checks it holds what `src` holds; `what`
/// says which fetch a failure was.
async fn assert_fetches(client: &Client, manifest: Digest, src: &Path, what: &str) {
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(manifest, out.path(), &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: fetch {manifest}: {e}"));
    assert_same_tree(src, out.path());
}

/// An in-process server with its clock at 2026-01-01 (moved by the test), a grace period
/// of a day and these ref expiries.
async fn start_at_new_year(
    ref_expiry: Vec<(String, Option<i64>)>,
) -> (TestServer, ManualClock, tempfile::TempDir) {
    let clock = ManualClock::new(1_767_225_600_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.clock = Arc::new(clock.clone());
    config.retention = Retention {
        grace_ms: DAY,
        ref_expiry,
    };
    (TestServer::start_with(config).await, clock, dir)
}

fn rec(subject: Digest, stage: &str, outputs: Option<Digest>) -> RecordRequest {
    RecordRequest {
        subject: Some(subject.to_proto()),
        stage: stage.into(),
        status: StageStatus::Succeeded as i32,
        bar_build_id: "12345".into(),
        build_id: "900".into(),
        outputs: outputs.map(|d| d.to_proto()),
        ..Default::default()
    }
}

/// The effective results of `subject` in `ns`, and when retention collected it (0: not).
async fn status(url: &str, ns: &str, subject: Digest) -> (Vec<StageResult>, i64) {
    let mut c = LedgerClient::connect(url.to_string()).await.unwrap();
    let r = c
        .status(StatusRequest {
            namespace: ns.into(),
            subject: Some(subject.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.results, r.expired_at_ms)
}

/// The tree of build `day`: a runtime every build shares, a file three builds in a row
/// share, and the build's own package. `signed` changes every file, as signing does.
fn build_tree(root: &Path, day: u64, signed: bool) {
    let mark = if signed {
        b"signed".as_slice()
    } else {
        b"".as_slice()
    };
    let with = |mut v: Vec<u8>| {
        v.extend_from_slice(mark);
        v
    };
    write_file(
        root,
        "shared/runtime.dll",
        &with(pseudo_random(7, 40_000)),
        false,
    );
    write_file(
        root,
        "shared/common.txt",
        &with(pseudo_random(1000 + day / 3, 3_000)),
        false,
    );
    write_file(
        root,
        &format!("pkg/build-{day}.nupkg"),
        &with(pseudo_random(5000 + day, 20_000)),
        false,
    );
}

struct Build {
    day: u64,
    unsigned: Digest,
    signed: Digest,
    own_blob: Digest,
    pinned: bool,
    src: tempfile::TempDir,
    unsigned_status: Vec<StageResult>,
    signed_status: Vec<StageResult>,
    test_status: Vec<StageResult>,
}

fn graph() -> StageGraph {
    let stage = |n: &str, deps: &[&str]| StageDef {
        name: n.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        fingerprint: String::new(),
    };
    StageGraph {
        stages: vec![stage("Validate", &[]), stage("Publish", &["Validate"])],
    }
}

/// Thirty simulated days: a build a day, registered (unsigned under `bar/N`, the signed
/// set as the signing result's outputs) and played through the ledger in `prod` and
/// `test`; every tenth build pinned as released; a collection after each day. Refs in
/// `prod` expire after 7 days, in `test` after 2. After every collection: every live
/// build fetches and its status is unchanged; every expired build's ref, manifests,
/// own blob and ledger records are gone, and status and plan say when; pinned builds stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_days_of_builds_keep_what_is_live_and_only_that() {
    let (server, clock, _dir) = start_at_new_year(vec![
        ("prod".into(), Some(7 * DAY)),
        ("test".into(), Some(2 * DAY)),
    ])
    .await;
    let url = server.url();
    let prod = server.client("prod").await;
    let test = server.client("test").await;
    let mut builds: Vec<Build> = Vec::new();
    let mut collected_bytes = 0u64;

    for day in 0..30u64 {
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path(), day, false);
        let signed_src = tempfile::tempdir().unwrap();
        build_tree(signed_src.path(), day, true);
        let unsigned = prod
            .register(src.path(), &format!("bar/{day}"), &Default::default())
            .await
            .unwrap()
            .manifest;
        let signed = prod
            .register(signed_src.path(), "", &Default::default())
            .await
            .unwrap()
            .manifest;
        prod.record(rec(unsigned, "Sign", Some(signed)))
            .await
            .unwrap();
        prod.record(rec(signed, "Validate", None)).await.unwrap();
        prod.record(rec(signed, "Publish", None)).await.unwrap();
        // A test run of the pipeline: its own ref and results, in its own namespace.
        test.set_ref(&format!("try/{day}"), unsigned, None, "")
            .await
            .unwrap();
        test.record(rec(signed, "Validate", None)).await.unwrap();
        let pinned = day.is_multiple_of(10);
        if pinned {
            let p = prod
                .pin_ref(&format!("bar/{day}"), true, "released")
                .await
                .unwrap();
            assert!(p.changed && p.r#ref.unwrap().pinned);
        }
        let own = std::fs::read(src.path().join(format!("pkg/build-{day}.nupkg"))).unwrap();
        builds.push(Build {
            day,
            unsigned,
            signed,
            own_blob: Digest::of_bytes(&own),
            pinned,
            unsigned_status: status(&url, "prod", unsigned).await.0,
            signed_status: status(&url, "prod", signed).await.0,
            test_status: status(&url, "test", signed).await.0,
            src,
        });

        clock.advance_ms(DAY);
        let report = prod.collect_garbage(false).await.unwrap();
        collected_bytes += report.blobs.as_ref().map_or(0, |b| b.bytes);

        for b in &builds {
            let age = day - b.day + 1;
            let live = b.pinned || age < 7;
            let name = format!("bar/{}", b.day);
            if live {
                let r = prod.get_ref(&name).await.unwrap();
                assert_eq!(r.pinned, b.pinned);
                assert_fetches(
                    &prod,
                    b.unsigned,
                    b.src.path(),
                    &format!("day {day}: {name}"),
                )
                .await;
                // The signed set stays as the signing result's outputs.
                prod.get_manifest(b.signed).await.unwrap();
                assert_eq!(status(&url, "prod", b.unsigned).await.0, b.unsigned_status);
                assert_eq!(status(&url, "prod", b.signed).await.0, b.signed_status);
                // The test ref expired after two days, but the bytes live on through
                // prod's ref, and so do test's results for them.
                assert_eq!(status(&url, "test", b.signed).await.0, b.test_status);
                let plan = prod
                    .plan(PlanRequest {
                        subject: Some(b.signed.to_proto()),
                        graph: Some(graph()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(plan
                    .stages
                    .iter()
                    .all(|s| s.decision == Decision::Skip as i32));
            } else {
                let e = prod.get_ref(&name).await.unwrap_err();
                assert_eq!(e.code(), Some(Code::NotFound), "{e}");
                assert!(e.to_string().contains("retention removed it"), "{e}");
                let history = prod.ref_history(&name, 10).await.unwrap();
                assert_eq!(history[0].kind, 3, "the expiry is in the history");
                for m in [b.unsigned, b.signed] {
                    let e = prod.get_manifest(m).await.unwrap_err();
                    assert_eq!(e.code(), Some(Code::NotFound), "day {day}: {e}");
                }
                assert_eq!(
                    prod.find_missing(&[b.own_blob]).await.unwrap(),
                    vec![b.own_blob]
                );
                for (ns, subject) in [("prod", b.unsigned), ("prod", b.signed), ("test", b.signed)]
                {
                    let (results, expired_at) = status(&url, ns, subject).await;
                    assert!(results.is_empty(), "day {day}: {ns} keeps results");
                    assert!(expired_at > 0, "day {day}: {ns} does not say it expired");
                }
                let plan = prod
                    .plan(PlanRequest {
                        subject: Some(b.signed.to_proto()),
                        graph: Some(graph()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(plan.expired_at_ms > 0);
                assert!(plan.stages[0].reason.contains("expired"), "{plan:?}");
            }
            if age > 2 {
                let e = test.get_ref(&format!("try/{}", b.day)).await.unwrap_err();
                assert_eq!(e.code(), Some(Code::NotFound), "{e}");
            }
        }
        // Index and blob store agree: every indexed blob has its bytes, and no bytes
        // outlive their entry.
        let stats = prod.stats().await.unwrap();
        let files = server
            .blob_files()
            .into_iter()
            .filter(|f| f.starts_with("cas/"))
            .count() as u64;
        assert_eq!(
            stats.blobs, files,
            "day {day}: index and blob store disagree"
        );
    }
    // Builds 0, 10 and 20 (pinned) and 24..29 (younger than 7 days) live.
    let refs = prod.list_refs("bar/", 100).await.unwrap();
    assert_eq!(refs.len(), 9, "{refs:?}");
    assert!(collected_bytes > 0);
    // Unpinning lets a build expire again, counted from the unpin.
    prod.pin_ref("bar/0", false, "superseded").await.unwrap();
    clock.advance_ms(8 * DAY);
    prod.collect_garbage(false).await.unwrap();
    assert_eq!(
        prod.get_ref("bar/0").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    prod.get_ref("bar/10").await.unwrap();
    server.stop().await;
}

/// What a dry run reports is what the collection then removes, and a dry run removes
/// nothing. Refs past expiry are reported per namespace with their times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_what_would_go_and_changes_nothing() {
    let (server, clock, _dir) = start_at_new_year(vec![("*".into(), Some(3 * DAY))]).await;
    let prod = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path(), 1, false);
    let m = prod
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap()
        .manifest;
    prod.record(rec(m, "Validate", None)).await.unwrap();
    clock.advance_ms(4 * DAY);
    let dry = prod.collect_garbage(true).await.unwrap();
    assert!(dry.dry_run);
    let blobs = dry.blobs.unwrap();
    assert_eq!(blobs.count, 3, "{dry:?}");
    assert_eq!(blobs.bytes, 40_000 + 3_000 + 20_000);
    assert_eq!(dry.manifests.as_ref().unwrap().count, 1);
    let ns = &dry.namespaces[0];
    assert_eq!(ns.namespace, "prod");
    assert_eq!(ns.refs.as_ref().unwrap().count, 1);
    assert_eq!(ns.subjects.as_ref().unwrap().count, 1);
    assert_eq!(ns.ledger_records, 1);
    // Nothing changed.
    prod.get_ref("bar/1").await.unwrap();
    assert_fetches(&prod, m, src.path(), "bar/1 after the dry run").await;

    let real = prod.collect_garbage(false).await.unwrap();
    assert_eq!(real.blobs, dry.blobs);
    assert_eq!(real.manifests, dry.manifests);
    assert_eq!(real.namespaces, dry.namespaces);
    assert_eq!(prod.stats().await.unwrap().blobs, 0);
    server.stop().await;
}

/// Collections racing four registers of overlapping trees (sharing blobs that only an
/// expired build reached, so each is a candidate until a register asks for it): however
/// each race goes (the register protects a blob first, or finds it marked and uploads it
/// again, waiting for its deletion), no register fails, and every ref a register
/// acknowledged fetches, verified, afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_registers_lose_nothing_acknowledged() {
    let (server, clock, _dir) = start_at_new_year(vec![("old".into(), Some(DAY))]).await;
    let old = server.client("old").await;
    let shared: Vec<Vec<u8>> = (0..150)
        .map(|i| pseudo_random(i, 2_000 + i as usize))
        .collect();
    for round in 0..3u64 {
        // The shared blobs become garbage: only an expired build reached them.
        let base = tempfile::tempdir().unwrap();
        for (i, data) in shared.iter().enumerate() {
            write_file(base.path(), &format!("f{i}"), data, false);
        }
        // And one blob no writer uses: the collections must take it.
        write_file(
            base.path(),
            "only-here.bin",
            &pseudo_random(900 + round, 1_000),
            false,
        );
        old.register(base.path(), &format!("base/{round}"), &Default::default())
            .await
            .unwrap();
        clock.advance_ms(3 * DAY);

        let gc_client = server.client("prod").await;
        let collector = tokio::spawn(async move {
            let mut collected = 0;
            for _ in 0..6 {
                match gc_client.collect_garbage(false).await {
                    Ok(r) => collected += r.blobs.unwrap_or_default().count,
                    Err(e) if e.code() == Some(Code::Aborted) => {}
                    Err(e) => panic!("collection failed: {e}"),
                }
            }
            collected
        });
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let client = server.client("prod").await;
            let shared = shared.clone();
            writers.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..3u64 {
                    let src = tempfile::tempdir().unwrap();
                    // Overlapping: every writer takes a different half of the shared files.
                    for (n, data) in shared.iter().enumerate() {
                        if (n as u64 + w + i).is_multiple_of(2) {
                            write_file(src.path(), &format!("s{n}"), data, false);
                        }
                    }
                    write_file(
                        src.path(),
                        "own.bin",
                        &pseudo_random(100_000 + round * 100 + w * 10 + i, 5_000),
                        false,
                    );
                    let name = format!("new/{round}/{w}/{i}");
                    let r = client
                        .register(src.path(), &name, &Default::default())
                        .await
                        .unwrap_or_else(|e| panic!("register {name} during a collection: {e}"));
                    done.push((name, r.manifest, src));
                }
                done
            }));
        }
        let mut acknowledged = Vec::new();
        for w in writers {
            acknowledged.extend(w.await.unwrap());
        }
        // The collections ran alongside the registers and removed what only the expired
        // build reached (at least the blob no writer uses).
        assert!(
            collector.await.unwrap() > 0,
            "no collection removed anything"
        );
        // One more collection after everything settled, then every acknowledged ref.
        let prod = server.client("prod").await;
        prod.collect_garbage(false).await.unwrap();
        for (name, manifest, src) in &acknowledged {
            assert_eq!(prod.resolve_ref(name).await.unwrap(), *manifest);
            assert_fetches(&prod, *manifest, src.path(), name).await;
        }
    }
    server.stop().await;
}

fn cli(server: &ServerProcess, ns: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
    cmd.args(["--server", &server.url(), "--namespace", ns])
        .args(args);
    output_within(&mut cmd, test_timeout(), "stagecache")
}

/// Registers `files` files of a tree seeded `seed` (the first `shared_with_prod` of them
/// the same in every tree) under `name`.
async fn register_tree(
    client: &Client,
    name: &str,
    seed: u64,
    files: usize,
) -> (Digest, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    for i in 0..files {
        let data = if i < files / 2 {
            pseudo_random(i as u64, 300)
        } else {
            pseudo_random(seed * 10_000 + i as u64, 300)
        };
        write_file(src.path(), &format!("d{}/f{i}", i % 16), &data, false);
    }
    let r = client
        .register(src.path(), name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    (r.manifest, src)
}

/// SIGKILL at points inside a collection (at each phase the server logs: refs expiring,
/// blobs marked deleting, the collection journaled, bytes being deleted), restart, go on:
/// the store stays consistent (index and blob store agree, nothing live lost), a register
/// of blobs the killed collection was deleting succeeds, and the next collection finishes
/// the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_a_collection_loses_nothing_live_and_the_next_finishes() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--gc-grace", "1s", "--ref-expiry", "old=1s"];
    // The server waits 0.7 s after each step of a collection, so that the kill lands there.
    let env = [("STAGECACHE_TEST_GC_PAUSE_MS", "700")];
    let mut server = ServerProcess::start_on_with_args(data.path(), &args, &env);
    let prod = server.client("prod").await;
    let mut live = vec![register_tree(&prod, "keep/0", 1, 400).await];
    // Each kill lands right after the step the line names, before the next: an expiry
    // journaled but not applied; refs expired, nothing marked; candidates marked
    // deleting, those in use not yet restored; the collection journaled, not applied; a
    // chunk's bytes deleted, its entries not dropped.
    let phases = [
        "ref expiry journaled",
        "collection: marking",
        "collection: candidates marked",
        "garbage collection journaled",
        "collection: bytes deleted",
    ];
    let mut interrupted = 0;
    for (round, phase) in phases.into_iter().enumerate() {
        // Something to collect: builds whose refs expire in a second, sharing half their
        // blobs with every other tree.
        let old = server.client("old").await;
        for b in 0..3u64 {
            register_tree(
                &old,
                &format!("build/{round}/{b}"),
                1000 + round as u64 * 10 + b,
                500,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let count = |log: &str, what: &str| log.matches(what).count();
        let before = server.log_text();
        let url = server.url();
        let gc = tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(workspace_bin("stagecache"));
            cmd.args(["--server", &url, "--namespace", "prod", "gc"]);
            cmd.output().await
        });
        let deadline = std::time::Instant::now() + test_timeout();
        loop {
            let log = server.log_text();
            if count(&log, phase) > count(&before, phase)
                || count(&log, "garbage collection done")
                    > count(&before, "garbage collection done")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the collection never reached {phase:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.signal_and_wait("KILL");
        let log = server.log_text();
        if count(&log, "garbage collection done") == count(&before, "garbage collection done") {
            interrupted += 1;
        }
        server.restart();
        let _ = gc.await;
        let prod = server.client("prod").await;
        // Everything live fetches, verified.
        for (i, (m, src)) in live.iter().enumerate() {
            assert_eq!(prod.resolve_ref(&format!("keep/{i}")).await.unwrap(), *m);
            assert_fetches(
                &prod,
                *m,
                src.path(),
                &format!("after a kill at {phase:?}: keep/{i}"),
            )
            .await;
        }
        // A new build shares half its blobs with the old ones (some of them marked
        // deleting when the server died): its register goes through.
        let i = live.len();
        live.push(register_tree(&prod, &format!("keep/{i}"), 1000 + round as u64 * 10, 500).await);
    }
    assert_eq!(
        interrupted,
        phases.len(),
        "a kill landed after its collection ended"
    );
    // Now a collection runs to the end (the pauses make it slower, not different).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let out = cli(&server, "prod", &["--format", "json", "gc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prod = server.client("prod").await;
    let old = server.client("old").await;
    assert!(old.list_refs("", 100).await.unwrap().is_empty());
    for (i, (m, src)) in live.iter().enumerate() {
        assert_fetches(&prod, *m, src.path(), &format!("keep/{i}")).await;
    }
    let stats = prod.stats().await.unwrap();
    let files: Vec<String> = server
        .blob_files()
        .into_iter()
        .filter(|f| f.starts_with("cas/"))
        .collect();
    assert_eq!(
        stats.blobs,
        files.len() as u64,
        "index and blob store disagree"
    );
    // What stays is exactly what the live builds reach: their files and manifests.
    let mut reached = std::collections::HashSet::new();
    for (m, _) in &live {
        reached.insert(*m);
        for e in prod.get_manifest(*m).await.unwrap().entries() {
            reached.insert(e.digest);
        }
    }
    assert_eq!(stats.blobs, reached.len() as u64);
    assert_eq!(stats.manifests, live.len() as u64);
    let refs = prod.list_refs("", 100).await.unwrap();
    server.stop().await;

    // A server rebuilt from the blob store alone agrees: the same blobs, manifests and
    // refs, and no expired ref back.
    let blobs = format!("file://{}", data.path().join("blobs").display());
    let rebuilt = ServerProcess::start_fresh_with_args(&["--blob-store", &blobs]);
    let prod = rebuilt.client("prod").await;
    let again = prod.stats().await.unwrap();
    assert_eq!(
        (again.blobs, again.manifests),
        (stats.blobs, stats.manifests)
    );
    assert_eq!(prod.list_refs("", 100).await.unwrap(), refs);
    let old = rebuilt.client("old").await;
    assert!(old.list_refs("", 100).await.unwrap().is_empty());
    for (m, src) in &live {
        assert_fetches(&prod, *m, src.path(), "on the rebuilt server").await;
    }
    rebuilt.stop().await;
}

/// A full store makes room: past `--max-bytes` an upload is refused, the refusal starts
/// a collection, and once the expired build is gone the same register goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_collects_and_the_retry_goes_through() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--max-bytes",
        "3MiB",
        "--gc-grace",
        "1s",
        "--ref-expiry",
        "prod=1s",
    ];
    let server = ServerProcess::start_on_with_args(data.path(), &args, &[]);
    let client = server.client("prod").await;
    let first = tempfile::tempdir().unwrap();
    let a = pseudo_random(1, 2 << 20);
    write_file(first.path(), "a.bin", &a, false);
    let out = cli(
        &server,
        "prod",
        &["register", first.path().to_str().unwrap(), "--ref", "bar/1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let second = tempfile::tempdir().unwrap();
    write_file(second.path(), "b.bin", &pseudo_random(2, 2 << 20), false);
    let register = || {
        cli(
            &server,
            "prod",
            &[
                "register",
                second.path().to_str().unwrap(),
                "--ref",
                "bar/2",
            ],
        )
    };
    let out = register();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refusal woke a collection: bar/1 expired and its bytes go. (Watched through
    // Stats: a writer's FindMissing would protect the blob it asks about.)
    let a_digest = Digest::of_bytes(&a);
    let deadline = std::time::Instant::now() + test_timeout();
    while client.stats().await.unwrap().blob_bytes >= a_digest.size() {
        assert!(
            std::time::Instant::now() < deadline,
            "no collection made room"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = register();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = client.resolve_ref("bar/2").await.unwrap();
    assert_fetches(&client, m, second.path(), "bar/2").await;
    assert!(server
        .log_text()
        .contains("refused for room: collecting garbage"));
    server.stop().await;
}

/// `--gc-interval`: the server collects on its own, and each run's summary is in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_collection_runs_by_itself() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--gc-interval",
        "1s",
        "--gc-grace",
        "1s",
        "--ref-expiry",
        "test*=1s",
    ];
    let server = ServerProcess::start_on_with_args(data.path(), &args, &[]);
    let test = server.client("test-pr").await;
    let prod = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path(), 4, false);
    let m = test
        .register(src.path(), "try/4", &Default::default())
        .await
        .unwrap()
        .manifest;
    let kept = tempfile::tempdir().unwrap();
    build_tree(kept.path(), 5, false);
    let k = prod
        .register(kept.path(), "bar/5", &Default::default())
        .await
        .unwrap()
        .manifest;
    let deadline = std::time::Instant::now() + test_timeout();
    while test.get_ref("try/4").await.is_ok() || prod.get_manifest(m).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled collection removed try/4"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_fetches(&prod, k, kept.path(), "bar/5").await;
    assert!(server.log_text().contains("garbage collection done"));
    // Waiting for a ref retention removed waits for it to be set again (its last change
    // in the history is the expiry, which does not count as set).
    let waiter = {
        let test = test.clone();
        tokio::spawn(async move { test.wait_for_ref_target("try/4").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "wait returned for an expired ref");
    let again = tempfile::tempdir().unwrap();
    build_tree(again.path(), 6, false);
    let set_again = test
        .register(again.path(), "try/4", &Default::default())
        .await
        .unwrap()
        .manifest;
    assert_eq!(waiter.await.unwrap().unwrap(), set_again);
    server.stop().await;
}

/// A pin is kept in the ref's history with the caller's identity and reason, pinning twice
/// changes nothing, and a pin of a ref that does not exist is NOT_FOUND. (Who may pin and
/// collect: `auth_access.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_audited_and_idempotent() {
    let server = TestServer::start().await;
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path(), 3, false);
    client
        .register(src.path(), "bar/3", &Default::default())
        .await
        .unwrap();
    let pinned = client
        .pin_ref("bar/3", true, "released as 9.0.1")
        .await
        .unwrap();
    let r = pinned.r#ref.unwrap();
    assert!(r.pinned && r.pin_reason == "released as 9.0.1" && r.pinned_by == "anonymous");
    assert_eq!(r.expires_at_ms, 0);
    // Again: nothing changes, nothing more in the history.
    assert!(!client.pin_ref("bar/3", true, "").await.unwrap().changed);
    let h = client.ref_history("bar/3", 10).await.unwrap();
    assert_eq!(h.iter().map(|c| c.kind).collect::<Vec<_>>(), vec![1, 0]);
    let e = client.pin_ref("bar/404", true, "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    server.stop().await;
}

on_every_backend!(collected_bytes_leave_the_blob_store_and_a_rebuild_agrees);

/// On every backend (local disk, Azurite, S3): a collection deletes the bytes through the
/// storage trait, and a replacement server rebuilt from the blob store alone (its journal
/// and a listing) holds exactly what the first one kept: the expired refs, manifests,
/// blobs and ledger records stay gone, and what is live fetches.
async fn collected_bytes_leave_the_blob_store_and_a_rebuild_agrees(backend: &Backend) {
    let server = backend.server(&["--gc-grace", "1s", "--ref-expiry", "old=1s"]);
    let prod = server.client("prod").await;
    let old = server.client("old").await;
    let keep = tempfile::tempdir().unwrap();
    build_tree(keep.path(), 1, false);
    let kept = prod
        .register(keep.path(), "bar/1", &Default::default())
        .await
        .unwrap()
        .manifest;
    prod.record(rec(kept, "Validate", None)).await.unwrap();
    let gone = tempfile::tempdir().unwrap();
    build_tree(gone.path(), 2, false);
    let expired = old
        .register(gone.path(), "bar/2", &Default::default())
        .await
        .unwrap()
        .manifest;
    old.record(rec(expired, "Validate", None)).await.unwrap();
    let own = Digest::of_bytes(&std::fs::read(gone.path().join("pkg/build-2.nupkg")).unwrap());
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let report = prod.collect_garbage(false).await.unwrap();
    // The expired build's own package and manifest; the runtime and the common file are
    // shared with the live build.
    assert_eq!(report.blobs.unwrap().count, 1, "{report:?}");
    assert_eq!(report.manifests.unwrap().count, 1, "{report:?}");
    assert_eq!(prod.find_missing(&[own]).await.unwrap(), vec![own]);
    let stats = prod.stats().await.unwrap();
    server.stop().await;

    // A replacement server on an empty data dir rebuilds from the blob store.
    let replacement = backend.server(&[]);
    let prod = replacement.client("prod").await;
    let old = replacement.client("old").await;
    let rebuilt = prod.stats().await.unwrap();
    assert_eq!(
        (rebuilt.blobs, rebuilt.blob_bytes, rebuilt.manifests),
        (stats.blobs, stats.blob_bytes, stats.manifests),
        "bytes the collection deleted are still in the blob store, or the journal disagrees"
    );
    let e = old.get_ref("bar/2").await.unwrap_err();
    assert!(e.to_string().contains("retention removed it"), "{e}");
    let (results, expired_at) = status(&replacement.url(), "old", expired).await;
    assert!(results.is_empty() && expired_at > 0);
    assert_eq!(
        prod.get_manifest(expired).await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    assert_fetches(&prod, kept, keep.path(), "bar/1 on the replacement").await;
    assert_eq!(status(&replacement.url(), "prod", kept).await.0.len(), 1);
    replacement.stop().await;
}
