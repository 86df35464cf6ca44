//! Manifest validation, refs with compare-and-swap and history, namespace isolation.

use stagecache_proto::v1::manifests_client::ManifestsClient;
use stagecache_proto::v1::refs_client::RefsClient;
use stagecache_proto::v1::{
    GetRefRequest, ListRefsRequest, Manifest as WireManifest, ManifestEntry as WireEntry,
    PutManifestRequest, SetRefRequest,
};
use stagecache_proto::Digest;
use stagecache_tests::{write_file, ServerProcess};
use tonic::Code;

fn entry(path: &str, d: Digest) -> WireEntry {
    WireEntry {
        path: path.into(),
        digest: Some(d.to_proto()),
        executable: false,
    }
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_entry() {
    let server = ServerProcess::start_fresh();
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a", b"present", false);
    client
        .register(src.path(), "", &Default::default())
        .await
        .unwrap();
    let present = Digest::of_bytes(b"present");
    let absent = Digest::of_bytes(b"never uploaded");
    let mut manifests = ManifestsClient::new(server.channel().await);
    let absent_str = absent.to_string();

    let cases: Vec<(Vec<WireEntry>, Code, &str)> = vec![
        (
            vec![entry("ok", present), entry("../x", present)],
            Code::InvalidArgument,
            "manifest.entries[1].path: path \"../x\" leaves the asset root",
        ),
        (
            vec![entry("/abs", present)],
            Code::InvalidArgument,
            "manifest.entries[0].path: path \"/abs\" is absolute",
        ),
        (
            vec![entry("a//b", present)],
            Code::InvalidArgument,
            "manifest.entries[0].path: path \"a//b\" has an empty segment",
        ),
        (
            vec![entry("a", present), entry("a", present)],
            Code::InvalidArgument,
            "manifest.entries[1].path: path \"a\" is a duplicate of entries[0]",
        ),
        (
            vec![entry("b", present), entry("a", present)],
            Code::InvalidArgument,
            "manifest.entries[1].path: path \"a\" sorts before entries[0]",
        ),
        (
            vec![entry("a", present), entry("z", absent)],
            Code::FailedPrecondition,
            &absent_str,
        ),
    ];
    for (entries, code, want) in cases {
        let e = manifests
            .put(PutManifestRequest {
                namespace: "prod".into(),
                manifest: Some(WireManifest { entries }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} lacks {want:?}",
            e.message()
        );
    }
    // A valid manifest of present blobs is accepted.
    let ok = manifests
        .put(PutManifestRequest {
            namespace: "prod".into(),
            manifest: Some(WireManifest {
                entries: vec![entry("a", present)],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.file_count, 1);
    server.stop().await;
}

#[tokio::test]
async fn refs_compare_and_swap_history_and_namespaces() {
    let server = ServerProcess::start_fresh();
    let prod = server.client("prod").await;
    let test = server.client("test").await;
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "f", b"one", false);
    let first = prod
        .register(src.path(), "bar/100", &Default::default())
        .await
        .unwrap()
        .manifest;
    write_file(src.path(), "f", b"two", false);
    let second = prod
        .register(src.path(), "", &Default::default())
        .await
        .unwrap()
        .manifest;

    // Expecting the wrong current value is ABORTED and changes nothing.
    let e = prod
        .set_ref("bar/100", second, Some(Some(second)), "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Aborted), "{e}");
    let e = prod
        .set_ref("bar/100", second, Some(None), "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Aborted), "{e}");
    assert_eq!(prod.resolve_ref("bar/100").await.unwrap(), first);

    let set = prod
        .set_ref("bar/100", second, Some(Some(first)), "re-signed")
        .await
        .unwrap();
    assert!(set.changed);
    assert_eq!(set.r#ref.unwrap().version, 2);
    let history = prod.ref_history("bar/100", 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].reason, "re-signed");
    assert_eq!(
        Digest::from_proto("h", history[0].old_target.as_ref().unwrap()).unwrap(),
        first
    );
    assert!(history[1].old_target.is_none());
    assert!(history[0].changed_at_ms > 0 && !history[0].actor.is_empty());

    // Refs live in their namespace; blobs and manifests are shared.
    let e = test.get_ref("bar/100").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    test.set_ref("bar/100", first, Some(None), "")
        .await
        .unwrap();
    assert_eq!(test.resolve_ref("bar/100").await.unwrap(), first);
    assert_eq!(prod.resolve_ref("bar/100").await.unwrap(), second);

    // Listing by prefix.
    for i in 0..25 {
        prod.set_ref(&format!("build/{i:03}"), first, None, "")
            .await
            .unwrap();
    }
    let all = prod.list_refs("build/", 1000).await.unwrap();
    assert_eq!(all.len(), 25);
    let few = prod.list_refs("build/", 10).await.unwrap();
    assert_eq!(few.len(), 10);
    assert_eq!(prod.list_refs("", 1000).await.unwrap().len(), 26);

    // Page by page: 25 refs in pages of 10 come back as 10, 10 and 5, in name order, each
    // once, and only the last page has no next token.
    let mut refs = RefsClient::new(server.channel().await);
    let (mut names, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = refs
            .list(ListRefsRequest {
                namespace: "prod".into(),
                prefix: "build/".into(),
                limit: 10,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.refs.len());
        names.extend(page.refs.into_iter().map(|r| r.name));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(sizes.len() < 5, "paging does not end: {sizes:?}");
        token = page.next_page_token;
    }
    assert_eq!(sizes, [10, 10, 5]);
    let expected: Vec<String> = (0..25).map(|i| format!("build/{i:03}")).collect();
    assert_eq!(names, expected);

    // A ref may only point at a stored manifest; names are validated.
    let e = refs
        .set(SetRefRequest {
            namespace: "prod".into(),
            name: "bar/101".into(),
            target: Some(Digest::of_bytes(b"no such manifest").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = refs
        .get(GetRefRequest {
            namespace: "prod".into(),
            name: "bar//1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("name: \"bar//1\""),
        "{}",
        e.message()
    );
    server.stop().await;
}
