//! Fan-out without the server in the byte path (`--direct-downloads`): on a blob store
//! that signs URLs (Azurite, S3), a fetch downloads its large blobs straight from the store
//! (the server sends none of their bytes), still verifies every byte, and fails on
//! damaged bytes leaving nothing behind, after which the server has quarantined the blob
//! so the next register heals it; on local disk, for a client that opts out, and for one
//! that cannot reach the store, the bytes stream through the server.

use stagecache_client::{ClientError, FetchOptions};
use stagecache_proto::Digest;
use stagecache_server::store::blobs::BlobStore;
use stagecache_tests::backends::Backend;
use stagecache_tests::{
    assert_same_tree, on_every_backend, pseudo_random, scrape_metrics, write_file,
};

on_every_backend!(large_blobs_come_straight_from_the_blob_store);

/// What the server sent for `Cas.Download` calls, from its metrics.
async fn streamed_by_server(server: &stagecache_tests::ServerProcess) -> f64 {
    scrape_metrics(&server.metrics_url())
        .await
        .get(r#"stagecache_rpc_sent_bytes_total{method="stagecache.v1.Cas/Download"}"#)
        .copied()
        .unwrap_or(0.0)
}

async fn large_blobs_come_straight_from_the_blob_store(backend: &Backend) {
    let server = backend.server(&["--direct-downloads", "--metrics-listen", "127.0.0.1:0"]);
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    let big = pseudo_random(1, 3 * 1024 * 1024 + 17);
    let other = pseudo_random(2, 2 * 1024 * 1024);
    write_file(src.path(), "big.bin", &big, false);
    write_file(src.path(), "dir/other.bin", &other, true);
    write_file(
        src.path(),
        "small.txt",
        b"small files come in batches",
        false,
    );
    let report = client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let large = (big.len() + other.len()) as u64;

    let out = tempfile::tempdir().unwrap();
    let r = client
        .fetch(report.manifest, out.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    let streamed = streamed_by_server(&server).await;
    if backend.signs_urls() {
        assert_eq!(r.direct_bytes, large, "{r:?}");
        assert_eq!(streamed, 0.0, "the server sent blob bytes");
    } else {
        assert_eq!(r.direct_bytes, 0, "{r:?}");
        assert!(streamed >= large as f64, "streamed {streamed}");
    }

    // A client that opts out streams through the server.
    let out = tempfile::tempdir().unwrap();
    let opt_out = FetchOptions {
        no_direct: true,
        ..Default::default()
    };
    let r = client
        .fetch(report.manifest, out.path(), &opt_out)
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    assert_eq!(r.direct_bytes, 0);
    assert!(streamed_by_server(&server).await >= streamed + large as f64);

    // An agent that cannot reach the object store (here: its HTTP goes to a proxy that
    // is not there) fetches through the server instead, with the CLI.
    let out = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(stagecache_tests::workspace_bin("stagecache"));
    cmd.args([
        "--server",
        &server.url(),
        "--namespace",
        "prod",
        "--json",
        "fetch",
    ])
    .args(["--ref", "bar/1", "--out"])
    .arg(out.path())
    .env("HTTP_PROXY", "http://127.0.0.1:9")
    .env("http_proxy", "http://127.0.0.1:9")
    .env_remove("NO_PROXY")
    .env_remove("no_proxy");
    let before = streamed_by_server(&server).await;
    let done = stagecache_tests::output_within(
        &mut cmd,
        stagecache_tests::test_timeout(),
        "stagecache fetch",
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(printed["direct_bytes"], 0, "{printed}");
    assert_same_tree(src.path(), out.path());
    assert!(streamed_by_server(&server).await >= before + large as f64);

    // Bytes damaged in the store behind the server's back: the fetch fails verification
    // and leaves neither the file nor a partial one.
    let d = Digest::of_bytes(&big);
    let mut damaged = big.clone();
    damaged[4096] ^= 0x40;
    backend.overwrite(&BlobStore::location(&d), damaged).await;
    let out = tempfile::tempdir().unwrap();
    let e = client
        .fetch(report.manifest, out.path(), &FetchOptions::default())
        .await
        .expect_err("damaged bytes were accepted");
    assert!(matches!(e, ClientError::Verify(_)), "{e}");
    let left: Vec<String> = walk(out.path());
    assert!(
        !left.iter().any(|p| p.contains("big.bin")),
        "left behind: {left:?}"
    );
    // The client tried once more through the server, which verified, found the damage
    // and quarantined the blob: it is missing now, and the next register heals it.
    assert_eq!(client.find_missing(&[d]).await.unwrap(), vec![d]);
    client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(report.manifest, out.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    server.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
