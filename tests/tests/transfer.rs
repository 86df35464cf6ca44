//! Register and fetch through the client library against the `stagecache-server` binary.

use stagecache_client::{FetchOptions, RegisterOptions};
use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::DownloadRequest;
use stagecache_proto::Digest;
use stagecache_server::store::blobs::BlobStore;
use stagecache_tests::{
    assert_same_tree, pseudo_random, register_dir_and_fetch, write_file, ServerProcess,
};
use std::collections::HashSet;

fn small_tree(root: &std::path::Path, seed: u64) {
    write_file(
        root,
        "nested/deeper/still/a.nupkg",
        &pseudo_random(seed, 20_000),
        false,
    );
    write_file(
        root,
        "nested/b.zip",
        &pseudo_random(seed + 1, 1_300_000),
        false,
    );
    write_file(root, "empty.txt", b"", false);
    write_file(root, "tools/sign.sh", b"#!/bin/sh\necho signed\n", true);
    write_file(root, "dup/one.bin", b"same bytes", false);
    write_file(root, "dup/two.bin", b"same bytes", false);
}

/// `--direct-io` on a local blob store: blobs of at least that size go to the disk and
/// come back from it with O_DIRECT, byte for byte whatever their length, those below it
/// through the page cache (a cloud store refuses the flag: `tier.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_keeps_every_byte() {
    if std::env::var_os(stagecache_tests::backends::SUITE_BLOB_STORE).is_some() {
        eprintln!("skipped: direct I/O is for a local blob store");
        return;
    }
    let server = ServerProcess::start_fresh_with_args(&["--direct-io", "12MiB"]);
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path(), 3);
    // Past the 8 MiB single put (so streamed), below and above the 12 MiB, not a whole
    // number of 4 KiB blocks.
    for (i, len) in [
        9 * 1024 * 1024 + 1,
        16 * 1024 * 1024,
        20 * 1024 * 1024 - 4095,
    ]
    .into_iter()
    .enumerate()
    {
        write_file(
            src.path(),
            &format!("archives/{i}.zip"),
            &pseudo_random(i as u64 + 7, len),
            false,
        );
    }
    let reg = client
        .register(src.path(), "bar/direct", &RegisterOptions::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(reg.manifest, out.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    // And after a restart, from the disk itself.
    let mut server = server;
    server.signal_and_wait("TERM");
    server.restart();
    let client = server.client("prod").await;
    let again = tempfile::tempdir().unwrap();
    client
        .fetch(reg.manifest, again.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), again.path());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_of_a_tree_with_a_200_mib_file() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path(), 1);
    write_file(
        src.path(),
        "archives/big.tar.gz",
        &pseudo_random(99, 200 * 1024 * 1024),
        false,
    );

    let reg = client
        .register(src.path(), "bar/12345", &RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(reg.files, 7);
    // The duplicate and the 200 MiB file upload once each.
    assert_eq!(reg.uploaded_files, 6);
    assert_eq!(reg.ref_version, Some(1));

    let out = tempfile::tempdir().unwrap();
    let digest = client.resolve_ref("bar/12345").await.unwrap();
    assert_eq!(digest, reg.manifest);
    let got = client
        .fetch(digest, out.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(got.downloaded_files, 7);
    assert_same_tree(src.path(), out.path());

    // A second fetch into the same place downloads nothing.
    let again = client
        .fetch(digest, out.path(), &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((again.downloaded_files, again.skipped_files), (0, 7));

    // Registering the same tree again uploads nothing and keeps the manifest digest.
    let rereg = client
        .register(src.path(), "bar/12345", &RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(rereg.manifest, reg.manifest);
    assert_eq!(rereg.uploaded_files, 0);
    assert!(!rereg.ref_changed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_repairs_a_corrupted_file_and_its_mode() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path(), 2);
    let reg = client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(reg.manifest, out.path(), &Default::default())
        .await
        .unwrap();
    // Same size, different bytes: must be detected by hash, not by size.
    let victim = out.path().join("nested/b.zip");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    write_file(
        out.path(),
        "tools/sign.sh",
        b"#!/bin/sh\necho signed\n",
        false,
    );
    let r = client
        .fetch(reg.manifest, out.path(), &Default::default())
        .await
        .unwrap();
    assert_eq!(r.downloaded_files, 1);
    assert_same_tree(src.path(), out.path());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_resumes_from_an_offset() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let data = pseudo_random(7, 5 * 1024 * 1024 + 123);
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "big.bin", &data, false);
    let reg = client
        .register(src.path(), "bar/2", &Default::default())
        .await
        .unwrap();
    let d = Digest::of_bytes(&data);

    // The protocol: a range from an offset, with and without a limit.
    let mut cas = CasClient::new(server.channel().await);
    for (offset, limit) in [(3_000_000u64, 0u64), (1, 10), (data.len() as u64, 0)] {
        let mut s = cas
            .download(DownloadRequest {
                namespace: "prod".into(),
                digest: Some(d.to_proto()),
                offset,
                limit,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            assert_eq!(m.offset, offset + got.len() as u64);
            got.extend_from_slice(&m.data);
        }
        let end = if limit == 0 {
            data.len()
        } else {
            (offset + limit) as usize
        };
        assert_eq!(
            got,
            &data[offset as usize..end],
            "offset {offset} limit {limit}"
        );
    }
    let err = cas
        .download(DownloadRequest {
            namespace: "prod".into(),
            digest: Some(d.to_proto()),
            offset: data.len() as u64 + 1,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);

    // The client: a partial file left by an interrupted fetch is continued, not restarted.
    let out = tempfile::tempdir().unwrap();
    let partial = out.path().join(".big.bin.stagecache-partial");
    std::fs::write(&partial, &data[..2_000_000]).unwrap();
    let r = client
        .fetch(reg.manifest, out.path(), &Default::default())
        .await
        .unwrap();
    assert_eq!(r.resumed_bytes, 2_000_000);
    assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), data);
    assert!(!partial.exists());

    // A partial file with wrong bytes is never trusted: the whole-file check fails and the
    // file is downloaded again from the start.
    let out2 = tempfile::tempdir().unwrap();
    let partial2 = out2.path().join(".big.bin.stagecache-partial");
    let mut bad = data[..2_000_000].to_vec();
    bad[1_500_000] ^= 1;
    std::fs::write(&partial2, &bad).unwrap();
    let r = client
        .fetch(reg.manifest, out2.path(), &Default::default())
        .await
        .unwrap();
    assert_eq!(r.resumed_bytes, 0);
    assert_eq!(std::fs::read(out2.path().join("big.bin")).unwrap(), data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_survives_a_sigkill() {
    let mut server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path(), 3);
    write_file(
        src.path(),
        "large.bin",
        &pseudo_random(3, 12 * 1024 * 1024),
        false,
    );
    let reg = client
        .register(src.path(), "bar/3", &Default::default())
        .await
        .unwrap();
    drop(client);

    // Killed without a chance to flush anything, then started on the same data dir:
    // every acknowledged blob, the manifest and the ref are there.
    server.crash_and_restart();
    let client = server.client("prod").await;
    assert_eq!(client.resolve_ref("bar/3").await.unwrap(), reg.manifest);
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(reg.manifest, out.path(), &Default::default())
        .await
        .unwrap();
    assert_same_tree(src.path(), out.path());
    assert!(client
        .find_missing(&[Digest::of_bytes(b"same bytes")])
        .await
        .unwrap()
        .is_empty());
    server.stop().await;
}

/// Identical small files that fall in different upload batches, and a large file and its
/// copy, upload once each: the store holds one blob per distinct content and the
/// manifest, nothing else, and what comes back is the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_uploads_each_content_once_across_batches() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    // Ten distinct files of 1 MiB (the largest size sent in a batch) need two batches of
    // at most 8 MiB; z/n is a copy of a/n.
    let mut distinct = HashSet::new();
    for n in 0..10u64 {
        let data = pseudo_random(40 + n, 1024 * 1024);
        distinct.insert(Digest::of_bytes(&data));
        write_file(src.path(), &format!("a/{n}.nupkg"), &data, false);
        write_file(src.path(), &format!("z/{n}.nupkg"), &data, false);
    }
    let large = pseudo_random(60, 3 * 1024 * 1024 + 5);
    distinct.insert(Digest::of_bytes(&large));
    write_file(src.path(), "archives/big.zip", &large, false);
    write_file(src.path(), "archives/copy.zip", &large, false);

    let reg = register_dir_and_fetch(&client, src.path(), "bar/batches").await;
    assert_eq!(reg.files, 22);
    assert_eq!(reg.uploaded_files, 11);
    assert_eq!(reg.uploaded_bytes, 10 * 1024 * 1024 + large.len() as u64);
    let stored: HashSet<String> = server
        .blob_files()
        .into_iter()
        .filter(|f| f.starts_with("cas/"))
        .collect();
    let expected: HashSet<String> = distinct
        .iter()
        .chain([&reg.manifest])
        .map(BlobStore::location)
        .collect();
    assert_eq!(stored, expected);
    // Again: nothing uploaded, the same manifest.
    let again = register_dir_and_fetch(&client, src.path(), "bar/batches").await;
    assert_eq!((again.manifest, again.uploaded_files), (reg.manifest, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_registrations_of_overlapping_trees() {
    let server = ServerProcess::start_fresh();
    let shared = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    let mut all_digests = HashSet::new();
    for i in 0..8u64 {
        let root = shared.path().join(format!("tree{i}"));
        // Every tree shares the common files; each has two of its own, one of them large.
        for c in 0..20u64 {
            let data = pseudo_random(1000 + c, 10_000 + c as usize * 3000);
            all_digests.insert(Digest::of_bytes(&data));
            write_file(&root, &format!("common/{c}.nupkg"), &data, false);
        }
        let large_common = pseudo_random(5000, 9 * 1024 * 1024);
        all_digests.insert(Digest::of_bytes(&large_common));
        write_file(&root, "common/large.zip", &large_common, false);
        for (name, len) in [("own.bin", 50_000), ("own-large.bin", 9 * 1024 * 1024 + 1)] {
            let data = pseudo_random(100 + i * 7 + len as u64, len);
            all_digests.insert(Digest::of_bytes(&data));
            write_file(&root, name, &data, false);
        }
        roots.push(root);
    }
    let mut tasks = Vec::new();
    for (i, root) in roots.iter().cloned().enumerate() {
        let client = server.client("prod").await;
        tasks.push(tokio::spawn(async move {
            client
                .register(&root, &format!("bar/{i}"), &Default::default())
                .await
        }));
    }
    let mut manifests = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().expect("every registration succeeds");
        manifests.insert(r.manifest);
    }
    assert_eq!(manifests.len(), 8);
    // Each blob is stored exactly once: one file per distinct content, plus the manifests
    // (whose canonical bytes are blobs too), and nothing else (no staging files) beside the
    // journal: one entry per manifest and per ref moved.
    let (journal, files): (Vec<String>, Vec<String>) = server
        .blob_files()
        .into_iter()
        .partition(|f| f.starts_with("journal/"));
    assert_eq!(journal.len(), 8 + 8, "{journal:?}");
    let expected: HashSet<String> = all_digests
        .iter()
        .chain(manifests.iter())
        .map(BlobStore::location)
        .collect();
    let got: HashSet<String> = files.iter().cloned().collect();
    assert_eq!(files.len(), got.len());
    assert_eq!(got, expected);
    let client = server.client("prod").await;
    for (i, root) in roots.iter().enumerate() {
        let out = tempfile::tempdir().unwrap();
        let d = client.resolve_ref(&format!("bar/{i}")).await.unwrap();
        client
            .fetch(d, out.path(), &Default::default())
            .await
            .unwrap();
        assert_same_tree(root, out.path());
    }
    server.stop().await;
}
