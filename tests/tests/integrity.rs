//! A blob becomes visible only after its bytes hashed to its digest.

use bytes::Bytes;
use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::{
    BatchUploadItem, BatchUploadRequest, DownloadRequest, FindMissingRequest, UploadRequest,
};
use stagecache_proto::Digest;
use stagecache_server::store::blobs::BlobStore;
use stagecache_tests::{blob_missing, pseudo_random, ServerProcess};
use tonic::Code;

fn chunks(ns: &str, d: Digest, data: &[u8]) -> Vec<UploadRequest> {
    let mut msgs = vec![UploadRequest {
        namespace: ns.into(),
        digest: Some(d.to_proto()),
        data: Bytes::new(),
    }];
    for c in data.chunks(1024 * 1024) {
        msgs.push(UploadRequest {
            namespace: String::new(),
            digest: None,
            data: Bytes::copy_from_slice(c),
        });
    }
    msgs
}

async fn upload(
    cas: &mut CasClient<tonic::transport::Channel>,
    msgs: Vec<UploadRequest>,
) -> Result<bool, tonic::Status> {
    cas.upload(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().already_present)
}

/// Only finished blobs may be in the store: `cas/<2 hex>/<64 hex>`, nothing staged
/// (beside the journal's entries, `journal/<20 digits>`).
fn assert_no_temporaries(server: &ServerProcess) {
    for f in server.blob_files() {
        let name = f.rsplit('/').next().unwrap();
        if let Some(seq) = f.strip_prefix("journal/") {
            assert!(
                seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()),
                "{f}"
            );
            continue;
        }
        assert!(
            f.starts_with("cas/")
                && name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "unexpected file left in the blob store: {f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_are_refused_and_leave_nothing() {
    // Blobs of 16 MiB and more are written with O_DIRECT (on a local store).
    let server = ServerProcess::start_fresh_with_args(&["--direct-io", "16MiB"]);
    let mut cas = CasClient::new(server.channel().await);
    // Small blobs go through the buffered path, larger ones through streamed (multipart)
    // uploads: through the page cache, then around it.
    for len in [100_000usize, 10 * 1024 * 1024 + 1, 20 * 1024 * 1024] {
        let data = pseudo_random(len as u64, len);
        let good = Digest::of_bytes(&data);
        let other = Digest::of_bytes(&pseudo_random(1, len));

        // Wrong digest: right size, other hash.
        let wrong_hash = Digest::new(*other.hash(), len as u64);
        let e = upload(&mut cas, chunks("prod", wrong_hash, &data))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("hash mismatch"), "{}", e.message());
        assert!(
            e.message().contains(&wrong_hash.hash_hex()) && e.message().contains(&good.hash_hex()),
            "names expected and actual: {}",
            e.message()
        );
        assert!(blob_missing(&mut cas, wrong_hash).await);

        // Wrong size: more bytes than declared.
        let short = Digest::new(*good.hash(), len as u64 - 1);
        let e = upload(&mut cas, chunks("prod", short, &data))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("more than the expected"),
            "{}",
            e.message()
        );
        assert!(blob_missing(&mut cas, short).await);

        // Truncated stream: fewer bytes than declared.
        let e = upload(&mut cas, chunks("prod", good, &data[..len / 2]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains(&format!("expected {len} bytes, received {}", len / 2)),
            "{}",
            e.message()
        );
        assert!(blob_missing(&mut cas, good).await);
        assert_no_temporaries(&server);

        // Nothing readable either.
        let e = cas
            .download(DownloadRequest {
                namespace: "prod".into(),
                digest: Some(good.to_proto()),
                offset: 0,
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        // The right bytes are then accepted, and a second upload returns at once.
        assert!(!upload(&mut cas, chunks("prod", good, &data)).await.unwrap());
        assert!(!blob_missing(&mut cas, good).await);
        assert!(upload(&mut cas, chunks("prod", good, &data[..1]))
            .await
            .unwrap());
    }
    // Batch items are verified one by one.
    let r = cas
        .batch_upload(BatchUploadRequest {
            namespace: "prod".into(),
            items: vec![
                BatchUploadItem {
                    digest: Some(Digest::of_bytes(b"ok").to_proto()),
                    data: Bytes::from_static(b"ok"),
                },
                BatchUploadItem {
                    digest: Some(Digest::of_bytes(b"x").to_proto()),
                    data: Bytes::from_static(b"y"),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].status.as_ref().unwrap().code, 0);
    assert_eq!(
        r.results[1].status.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    assert!(!blob_missing(&mut cas, Digest::of_bytes(b"ok")).await);
    assert!(blob_missing(&mut cas, Digest::of_bytes(b"x")).await);
    assert_no_temporaries(&server);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_one_blob_both_succeed() {
    let server = ServerProcess::start_fresh();
    let data = pseudo_random(42, 17 * 1024 * 1024);
    let d = Digest::of_bytes(&data);
    let mut handles = Vec::new();
    for _ in 0..4 {
        let mut cas = CasClient::new(server.channel().await);
        let msgs = chunks("prod", d, &data);
        handles.push(tokio::spawn(async move { upload(&mut cas, msgs).await }));
    }
    for h in handles {
        h.await.unwrap().expect("every concurrent upload succeeds");
    }
    let files = server.blob_files();
    assert_eq!(files, vec![BlobStore::location(&d)]);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_precise_statuses() {
    let server = ServerProcess::start_fresh();
    let mut cas = CasClient::new(server.channel().await)
        .max_decoding_message_size(stagecache_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stagecache_proto::MAX_MESSAGE_BYTES);
    let d = Digest::of_bytes(b"abc");
    let bad_ns = cas
        .find_missing(FindMissingRequest {
            namespace: "Prod!".into(),
            digests: vec![d.to_proto()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_ns.code(), Code::InvalidArgument);
    assert!(
        bad_ns.message().starts_with("namespace: \"Prod!\""),
        "{}",
        bad_ns.message()
    );

    let mut bad = d.to_proto();
    bad.hash = bad.hash.to_uppercase();
    let e = cas
        .find_missing(FindMissingRequest {
            namespace: "prod".into(),
            digests: vec![d.to_proto(), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("digests[1].hash:"),
        "{}",
        e.message()
    );

    let too_many = vec![d.to_proto(); 100_001];
    let e = cas
        .find_missing(FindMissingRequest {
            namespace: "prod".into(),
            digests: too_many,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 100,000"), "{}", e.message());

    let e = upload(&mut cas, vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = upload(
        &mut cas,
        vec![UploadRequest {
            namespace: "prod".into(),
            digest: None,
            data: Bytes::new(),
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("digest is required"),
        "{}",
        e.message()
    );

    // 100,000 digests is allowed and answered from the index.
    let many: Vec<_> = (0..100_000u32)
        .map(|i| Digest::of_bytes(&i.to_le_bytes()).to_proto())
        .collect();
    let r = cas
        .find_missing(FindMissingRequest {
            namespace: "prod".into(),
            digests: many,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing.len(), 100_000);

    // Health is served.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "stagecache.v1.Cas".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}
