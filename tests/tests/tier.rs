//! The local read-through tier (`--local-tier DIR`) in front of a cloud blob store: the
//! first fetch of a build reads the cloud store and fills the tier; later fetches, and a
//! restarted server's, read the tier and not the cloud; the bytes are verified all the
//! way; on local disk the flag is refused, naming it.

use stagecache_client::FetchOptions;
use stagecache_tests::backends::Backend;
use stagecache_tests::{
    assert_same_tree, on_every_backend, pseudo_random, scrape_metrics, write_file,
};

on_every_backend!(fetches_read_the_cloud_once);

/// The cloud store's reads so far (`Cas.Download`'s and `BatchDownload`'s bytes come from
/// these), and the tier's hits.
async fn reads(server: &stagecache_tests::ServerProcess, kind: &str) -> (f64, f64) {
    let m = scrape_metrics(&server.metrics_url()).await;
    let cloud = m
        .get(&format!(
            r#"stagecache_storage_operations_total{{backend="{kind}",op="read",outcome="ok"}}"#
        ))
        .copied()
        .unwrap_or(0.0);
    let hits = m
        .get(r#"stagecache_read_tier_total{event="hit"}"#)
        .copied()
        .unwrap_or(0.0);
    (cloud, hits)
}

async fn fetches_read_the_cloud_once(backend: &Backend) {
    let tier = tempfile::tempdir().unwrap();
    let tier_arg = tier.path().to_str().unwrap();
    if !backend.signs_urls() {
        // Local disk: nothing to put a tier in front of.
        let out = backend
            .command("stagecache-server")
            .args(["--data-dir", tier_arg, "--listen", "127.0.0.1:0"])
            .args(["--blob-store", &backend.url, "--local-tier", tier_arg])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--local-tier"), "{stderr}");
        assert!(stderr.contains("already on local disk"), "{stderr}");
        return;
    }
    // Direct I/O is for a local blob store: with a cloud one a size is refused (the
    // default, and 0, are not: every other test here starts without it).
    let out = backend
        .command("stagecache-server")
        .args(["--data-dir", tier_arg, "--listen", "127.0.0.1:0"])
        .args(["--blob-store", &backend.url, "--direct-io", "64MiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--direct-io") && stderr.contains("not on local disk"),
        "{stderr}"
    );
    let kind = if backend.url.starts_with("az://") {
        "azure"
    } else {
        "s3"
    };
    let mut server = backend.server(&["--local-tier", tier_arg, "--metrics-listen", "127.0.0.1:0"]);
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    // Past the 8 MiB single put: a multipart upload, read back in many chunks.
    write_file(
        src.path(),
        "big.bin",
        &pseudo_random(1, 9 * 1024 * 1024 + 5),
        false,
    );
    write_file(
        src.path(),
        "mid.bin",
        &pseudo_random(2, 2 * 1024 * 1024),
        false,
    );
    for i in 0..5 {
        write_file(
            src.path(),
            &format!("small/{i}.txt"),
            format!("small file {i}").as_bytes(),
            false,
        );
    }
    let report = client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let fetch = |client: stagecache_client::Client| {
        let src = src.path().to_path_buf();
        async move {
            let out = tempfile::tempdir().unwrap();
            client
                .fetch(report.manifest, out.path(), &FetchOptions::default())
                .await
                .unwrap();
            assert_same_tree(&src, out.path());
        }
    };

    // The first fetch reads the large blob from the cloud store (the small ones were
    // copied into the tier as they were put).
    let (cloud_before, _) = reads(&server, kind).await;
    fetch(client.clone()).await;
    let (cloud_first, _) = reads(&server, kind).await;
    assert!(
        cloud_first > cloud_before,
        "the first fetch read no cloud blob"
    );
    let big = stagecache_proto::Digest::of_bytes(&pseudo_random(1, 9 * 1024 * 1024 + 5));
    assert!(
        tier.path()
            .join(stagecache_server::store::blobs::BlobStore::location(&big))
            .exists(),
        "the large blob is not in the tier"
    );

    // Every later fetch reads the tier only.
    fetch(client.clone()).await;
    fetch(client).await;
    let (cloud_later, hits) = reads(&server, kind).await;
    assert_eq!(
        cloud_later, cloud_first,
        "a later fetch read the cloud store"
    );
    assert!(hits >= 2.0, "{hits} tier hits");

    // So does a restarted server's: the tier outlives it.
    server.signal_and_wait("TERM");
    server.restart();
    let client = server.client("prod").await;
    fetch(client).await;
    let (cloud_restarted, hits) = reads(&server, kind).await;
    assert_eq!(
        cloud_restarted, 0.0,
        "the restarted server read the cloud store"
    );
    assert!(hits >= 1.0, "{hits} tier hits after the restart");
}
