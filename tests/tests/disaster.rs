//! The blob store is the system of record: lose the server and its data dir, keep the
//! blob store, and a new server answers every read as the lost one did. Two builds are
//! registered and the ledger story played (a failure and its re-run, a forced re-sign,
//! a ref moved); then the server is killed (SIGKILL, no goodbye), its data dir deleted,
//! and a new server started on an empty data dir with the same blob store: `ls`, `show`,
//! `history` (ref and ledger), `status` and `plan` print the same JSON, and `fetch`
//! verifies every byte. `stagecache-server rebuild` restores the same offline and says
//! what it found.

use stagecache_tests::backends::Backend;
use stagecache_tests::{
    on_every_backend, output_within, pipeline_file, workspace_bin, write_file, ServerProcess,
};
use std::path::Path;
use std::time::Duration;

fn cli(server: &ServerProcess, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
    cmd.args(["--server", &server.url(), "--namespace", "prod"])
        .args(args)
        .env("STAGECACHE_ACTOR", "ci")
        .env_remove("STAGECACHE_FORMAT")
        .env_remove("GITHUB_OUTPUT");
    let out = output_within(&mut cmd, Duration::from_secs(120), "stagecache");
    assert!(
        out.status.success(),
        "stagecache {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tree(root: &Path, build: u8) {
    for i in 0..20u8 {
        let data: Vec<u8> = (0..(1000 + i as usize * 97))
            .map(|n| (n as u8) ^ i ^ build)
            .collect();
        write_file(
            root,
            &format!("pkg/{i}/asset-{build}.nupkg"),
            &data,
            i % 5 == 0,
        );
    }
    write_file(root, "shared/readme.txt", b"the same in every build", false);
}

/// Everything a person or a pipeline reads, as JSON.
fn reads(server: &ServerProcess) -> Vec<(String, String)> {
    let vp = pipeline_file("validate-publish.stages.yaml");
    let queries: Vec<Vec<&str>> = vec![
        vec!["--json", "ls"],
        vec!["--json", "show", "--ref", "bar/1"],
        vec!["--json", "show", "--ref", "bar/2"],
        vec!["--json", "show", "--ref", "rc/1"],
        vec!["--json", "history", "--ref", "bar/1"],
        vec!["--json", "history", "--ref", "bar/2"],
        vec!["--json", "status", "--ref", "bar/1"],
        vec!["--json", "status", "--ref", "bar/2"],
        vec!["--json", "plan", "--ref", "bar/1", "--stages", &vp],
        vec!["--json", "plan", "--ref", "bar/2", "--stages", &vp],
        vec!["--json", "stats"],
    ];
    queries
        .iter()
        .map(|q| (q.join(" "), cli(server, q)))
        .collect()
}

on_every_backend!(answers_as_the_lost_one);
on_every_backend!(acknowledged_writes_survive);
on_every_backend!(one_writer);

/// Lose the server and its data dir; a new server on the same blob store answers every
/// read as the lost one did.
async fn answers_as_the_lost_one(backend: &Backend) {
    let url = backend.url.clone();
    let mut first = backend.server(&[]);
    let src = tempfile::tempdir().unwrap();
    let (b1, b2) = (src.path().join("b1"), src.path().join("b2"));
    tree(&b1, 1);
    tree(&b2, 2);
    cli(
        &first,
        &["register", b1.to_str().unwrap(), "--ref", "bar/1"],
    );
    cli(
        &first,
        &["register", b2.to_str().unwrap(), "--ref", "bar/2"],
    );
    let record = |r: &str, stage: &str, status: &str| {
        cli(
            &first,
            &[
                "record",
                "--ref",
                r,
                "--stage",
                stage,
                "--status",
                status,
                "--bar-build-id",
                "12345",
            ],
        );
    };
    record("bar/1", "Required Validation", "failed");
    record("bar/1", "Required Validation", "succeeded");
    record("bar/2", "Required Validation", "succeeded");
    cli(
        &first,
        &[
            "invalidate",
            "--ref",
            "bar/1",
            "--stage",
            "Required Validation",
            "--reason",
            "forced re-run",
        ],
    );
    record("bar/1", "Required Validation", "succeeded");
    // A ref moved: rc/1 named build 1's set, then build 2's (two versions in its history).
    cli(&first, &["register", b1.to_str().unwrap(), "--ref", "rc/1"]);
    cli(&first, &["register", b2.to_str().unwrap(), "--ref", "rc/1"]);
    let before = reads(&first);
    assert!(before.iter().any(|(_, v)| v.contains("forced re-run")));

    // Lose the server: no goodbye, and its data dir gone.
    first.signal_and_wait("KILL");
    std::fs::remove_dir_all(&first.data_dir).unwrap();
    // The lost server's lease is fresh (it was killed a moment ago): the operator, who
    // knows it is dead, takes the store over.
    let second = backend.server(&["--take-over"]);
    assert!(
        second
            .log_text()
            .contains("rebuilt the index from the blob store"),
        "{}",
        second.log_text()
    );
    let after = reads(&second);
    for ((q, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{q} answers differently after the rebuild");
    }
    // The bytes are there and verify.
    let out = src.path().join("fetched");
    cli(
        &second,
        &["fetch", "--ref", "bar/2", "--out", out.to_str().unwrap()],
    );
    stagecache_tests::assert_same_tree(&b2, &out);

    // Writes go on after the rebuild, and are journaled too: a third server sees them.
    cli(
        &second,
        &[
            "record",
            "--ref",
            "bar/2",
            "--stage",
            "Publish Signed Assets",
            "--status",
            "succeeded",
        ],
    );
    let status = cli(&second, &["--json", "status", "--ref", "bar/2"]);
    // A clean stop gives the lease back: the next server starts without --take-over.
    second.stop().await;

    // Offline: `stagecache-server rebuild` into a new data dir, then serve it.
    let data = tempfile::tempdir().unwrap();
    let mut cmd = backend.command("stagecache-server");
    cmd.args([
        "--data-dir",
        data.path().to_str().unwrap(),
        "--blob-store",
        &url,
        "rebuild",
    ]);
    let out = output_within(
        &mut cmd,
        Duration::from_secs(120),
        "stagecache-server rebuild",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report["rebuild"];
    assert_eq!(r["manifests"], 2, "{report}");
    assert_eq!(r["ref_changes"], 4, "{report}");
    assert!(r["ledger_records"].as_u64().unwrap() >= 6, "{report}");
    assert!(r["blobs"].as_u64().unwrap() >= 40, "{report}");
    let third = backend.server_on(data.path());
    assert_eq!(cli(&third, &["--json", "status", "--ref", "bar/2"]), status);
}

/// One writer per blob store: a second server refuses to start while the first holds the
/// lease, naming it; `--take-over` takes it, and the first, finding its lease gone at its
/// next renewal, acknowledges no more writes. On Azure Blob and S3 the lease is written
/// conditionally (`If-Match` on its ETag).
async fn one_writer(backend: &Backend) {
    let url = backend.url.clone();
    let mut first = backend.server(&[]);
    let src = tempfile::tempdir().unwrap();
    tree(src.path(), 1);
    cli(
        &first,
        &["register", src.path().to_str().unwrap(), "--ref", "bar/1"],
    );

    let data = tempfile::tempdir().unwrap();
    let mut cmd = backend.command("stagecache-server");
    cmd.args(["--data-dir", data.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--blob-store", &url]);
    let out = output_within(
        &mut cmd,
        Duration::from_secs(60),
        "second stagecache-server",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("held by another server") && err.contains("--take-over"),
        "{err}"
    );

    let second = backend.server(&["--take-over"]);
    cli(
        &second,
        &["register", src.path().to_str().unwrap(), "--ref", "bar/2"],
    );
    // Within a renewal interval (5 s) the first server learns it lost the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
        cmd.args(["--server", &first.url(), "--namespace", "prod"])
            .args(["register", src.path().to_str().unwrap(), "--ref", "bar/3"]);
        let out = output_within(&mut cmd, Duration::from_secs(60), "stagecache");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no longer holds the blob store"), "{err}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first server still acknowledges writes after losing its lease"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        first.log_text().contains("lost the blob store's lease"),
        "{}",
        first.log_text()
    );

    // The second one stops (giving the lease back); the first, restarted on its own data
    // dir, catches up with what the second wrote.
    second.stop().await;
    first.signal_and_wait("TERM");
    first.restart();
    assert!(
        first.log_text().contains("caught up with the journal"),
        "{}",
        first.log_text()
    );
    let ls = cli(&first, &["--json", "ls"]);
    assert!(ls.contains("bar/1") && ls.contains("bar/2"), "{ls}");
    cli(
        &first,
        &["register", src.path().to_str().unwrap(), "--ref", "bar/4"],
    );
}

/// Nothing acknowledged is lost with the server: four writers record (single records and
/// batches) and move refs as fast as they can; the server is SIGKILLed under them; a new
/// server on an empty data dir and the same blob store holds every write that was
/// acknowledged.
async fn acknowledged_writes_survive(backend: &Backend) {
    use stagecache_proto::v1::{RecordRequest, StageStatus, StatusRequest};
    let mut first = backend.server(&[]);
    let src = tempfile::tempdir().unwrap();
    tree(src.path(), 1);
    cli(
        &first,
        &["register", src.path().to_str().unwrap(), "--ref", "bar/1"],
    );
    let client = first.client("prod").await;
    let subject = client.resolve_ref("bar/1").await.unwrap();
    let req = move |stage: String| RecordRequest {
        subject: Some(subject.to_proto()),
        stage,
        status: StageStatus::Succeeded as i32,
        ..Default::default()
    };
    // Acknowledged calls so far, across the writers: the kill comes in the middle of
    // the load, after enough of it whatever the machine's speed.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = first.client("prod").await;
        let calls = calls.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<String> = Vec::new();
            let mut refs: Vec<String> = Vec::new();
            for i in 0.. {
                let outcome = match i % 3 {
                    0 => client.record(req(format!("w{w} s{i}"))).await.map(|_| {
                        acked.push(format!("w{w} s{i}"));
                    }),
                    1 => client
                        .record_batch(vec![
                            req(format!("w{w} b{i} 1")),
                            req(format!("w{w} b{i} 2")),
                        ])
                        .await
                        .map(|_| {
                            acked.push(format!("w{w} b{i} 1"));
                            acked.push(format!("w{w} b{i} 2"));
                        }),
                    _ => client
                        .set_ref(&format!("w{w}/{i}"), subject, None, "")
                        .await
                        .map(|_| refs.push(format!("w{w}/{i}"))),
                };
                if outcome.is_err() {
                    break;
                }
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (acked, refs)
        }));
    }
    let started = std::time::Instant::now();
    while calls.load(std::sync::atomic::Ordering::SeqCst) < 60
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal_and_wait("KILL");
    let mut acked = Vec::new();
    let mut refs = Vec::new();
    for w in writers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        refs.extend(r);
    }
    assert!(
        acked.len() > 10,
        "too few writes before the kill: {}",
        acked.len()
    );
    std::fs::remove_dir_all(&first.data_dir).unwrap();
    let second = backend.server(&["--take-over"]);
    let client = second.client("prod").await;
    let results = client
        .stage_status(StatusRequest {
            subject: Some(subject.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    let present: std::collections::HashSet<&str> =
        results.iter().map(|r| r.stage.as_str()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|s| !present.contains(s.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    for r in &refs {
        assert_eq!(client.resolve_ref(r).await.unwrap(), subject, "ref {r}");
    }
    second.stop().await;
}
