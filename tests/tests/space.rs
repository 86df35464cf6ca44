//! A full blob store is an answer, not a crash (issue 12, item 5). With `--max-bytes`, an
//! upload that would pass the cap is refused with `RESOURCE_EXHAUSTED` naming the bytes
//! used and allowed, before any of its bytes are stored; reads, refs and the ledger go
//! on; the count survives a restart; a larger cap lets uploads go on. The CLI exits 5
//! with the server's message.

use stagecache_proto::v1::{RecordRequest, StageStatus};
use stagecache_proto::Digest;
use stagecache_tests::{
    output_within, pseudo_random, scrape_metrics, test_timeout, workspace_bin, write_file,
    ServerProcess,
};

const MIB: usize = 1024 * 1024;

fn register_cli(server: &ServerProcess, dir: &std::path::Path, name: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(workspace_bin("stagecache"));
    cmd.args(["--server", &server.url(), "--namespace", "prod", "register"])
        .arg(dir)
        .args(["--ref", name]);
    output_within(&mut cmd, test_timeout(), "stagecache register")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_bytes_uploads_are_refused_and_everything_else_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--max-bytes", "3MiB", "--metrics-listen", "127.0.0.1:0"];
    let server = ServerProcess::start_on_with_args(data.path(), &args, &[]);
    let client = server.client("prod").await;

    // 2 MiB fit under the 3 MiB cap.
    let first = tempfile::tempdir().unwrap();
    let a = pseudo_random(1, 2 * MIB);
    write_file(first.path(), "a.bin", &a, false);
    let out = register_cli(&server, first.path(), "bar/1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another 2 MiB do not: exit 5, the message names used and allowed bytes, and none
    // of the bytes are stored.
    let second = tempfile::tempdir().unwrap();
    let b = pseudo_random(2, 2 * MIB);
    write_file(second.path(), "b.bin", &b, false);
    let out = register_cli(&server, second.path(), "bar/2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("RESOURCE_EXHAUSTED") && err.contains("3,145,728 bytes allowed"),
        "{err}"
    );
    let b_digest = Digest::of_bytes(&b);
    assert_eq!(
        client.find_missing(&[b_digest]).await.unwrap(),
        vec![b_digest]
    );
    // A batch of small blobs that would pass the cap is refused whole.
    let items: Vec<(Digest, bytes::Bytes)> = (0..2)
        .map(|n| {
            let d = bytes::Bytes::from(pseudo_random(10 + n, 800 * 1024));
            (Digest::of_bytes(&d), d)
        })
        .collect();
    let e = client.batch_upload(items.clone()).await.unwrap_err();
    assert!(e.to_string().contains("RESOURCE_EXHAUSTED"), "{e}");
    let asked: Vec<Digest> = items.iter().map(|(d, _)| *d).collect();
    assert_eq!(client.find_missing(&asked).await.unwrap().len(), 2);

    // Everything else goes on: fetch verifies, a ref moves to stored bytes, the ledger
    // records.
    let manifest = client.resolve_ref("bar/1").await.unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    client
        .fetch(manifest, out_dir.path(), &Default::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out_dir.path().join("a.bin")).unwrap(), a);
    client
        .set_ref("rc/1", manifest, Some(None), "promote")
        .await
        .unwrap();
    client
        .record(RecordRequest {
            subject: Some(manifest.to_proto()),
            stage: "Sign".into(),
            status: StageStatus::Succeeded as i32,
            build_id: "run-1".into(),
            actor: "pipeline".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = scrape_metrics(&server.metrics_url()).await;
    assert!(
        m[r#"stagecache_uploads_refused_total{reason="max_bytes"}"#] >= 2.0,
        "{m:?}"
    );
    assert!(
        m["stagecache_blob_stored_bytes"] >= (2 * MIB) as f64,
        "{m:?}"
    );
    assert_eq!(m["stagecache_blob_max_bytes"], (3 * MIB) as f64);
    server.stop().await;

    // The count is the index's: after a restart the cap still holds.
    let server = ServerProcess::start_on_with_args(data.path(), &args, &[]);
    let out = register_cli(&server, second.path(), "bar/2");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;

    // A larger cap: the same register goes through.
    let server = ServerProcess::start_on_with_args(data.path(), &["--max-bytes", "10MiB"], &[]);
    let out = register_cli(&server, second.path(), "bar/2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
