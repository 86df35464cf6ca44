//! Damaged bytes in the blob store are never served as good: Download and BatchDownload
//! answer DATA_LOSS before a client could complete the blob, the blob is quarantined
//! (out of the index, bytes moved to `quarantine/`), the CLI leaves no byte of it behind,
//! and the next `register` heals it.

use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::{
    BatchDownloadRequest, Decision, DownloadRequest, PlanRequest, RecordRequest, StageDef,
    StageGraph, StageStatus,
};
use stagecache_proto::Digest;
use stagecache_server::store::blobs::BlobStore;
use stagecache_tests::{
    assert_same_tree, blob_missing, pseudo_random, run_cli, write_file, TestServer,
};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;
use tonic::Code;

const SMALL: usize = 100_000;
/// The largest blob that goes through BatchDownload.
const BATCH: usize = 1024 * 1024;
/// Past the 8 MiB single-put size: a multipart upload, downloaded in many chunks.
const BIG: usize = 20 * 1024 * 1024 + 7;

fn cas_path(server: &TestServer, d: Digest) -> PathBuf {
    cas_path_in(&server.data_dir, d)
}

/// Where a blob's bytes lie under a (possibly stopped) server's data dir.
fn cas_path_in(data_dir: &Path, d: Digest) -> PathBuf {
    data_dir.join("blobs").join(BlobStore::location(&d))
}

fn quarantine_path(server: &TestServer, d: Digest) -> PathBuf {
    server.data_dir.join("blobs/quarantine").join(d.hash_hex())
}

/// Flips one byte of a stored blob file, as a rotting disk would.
fn flip(server: &TestServer, d: Digest, at: usize) {
    flip_in(&server.data_dir, d, at);
}

/// [`flip`], under a (possibly stopped) server's data dir.
fn flip_in(data_dir: &Path, d: Digest, at: usize) {
    let p = cas_path_in(data_dir, d);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[at] ^= 0x55;
    std::fs::write(&p, bytes).unwrap();
}

/// Everything a Download stream sent before it ended, and how it ended.
async fn download(
    cas: &mut CasClient<Channel>,
    d: Digest,
    offset: u64,
) -> (Vec<u8>, Result<(), tonic::Status>) {
    let mut got = Vec::new();
    let mut s = match cas
        .download(DownloadRequest {
            namespace: "prod".into(),
            digest: Some(d.to_proto()),
            offset,
            limit: 0,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return (got, Err(e)),
    };
    loop {
        match s.message().await {
            Ok(Some(m)) => got.extend_from_slice(&m.data),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// The blob is out of the index and its bytes are in `quarantine/`, not `cas/`.
async fn assert_quarantined(server: &TestServer, cas: &mut CasClient<Channel>, d: Digest) {
    assert!(blob_missing(cas, d).await, "{d} is still indexed");
    assert!(!cas_path(server, d).exists(), "{d} is still in cas/");
    assert!(
        quarantine_path(server, d).exists(),
        "{d} is not in quarantine/"
    );
}

struct Tree {
    dir: tempfile::TempDir,
    small: Digest,
    batch: Digest,
    big: Digest,
    good: Digest,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("small.bin", pseudo_random(1, SMALL)),
        ("batch.bin", pseudo_random(2, BATCH)),
        ("big.bin", pseudo_random(3, BIG)),
        ("good.txt", b"untouched".to_vec()),
    ];
    for (name, data) in &files {
        write_file(dir.path(), name, data, false);
    }
    let d = |i: usize| Digest::of_bytes(&files[i].1);
    Tree {
        small: d(0),
        batch: d(1),
        big: d(2),
        good: d(3),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_blobs_end_in_data_loss_are_quarantined_and_heal_on_register() {
    let server = TestServer::start().await;
    let client = server.client("prod").await;
    let t = tree();
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let mut cas = CasClient::new(server.channel().await)
        .max_decoding_message_size(stagecache_proto::MAX_MESSAGE_BYTES);

    // Download: the stream ends with DATA_LOSS before the blob is complete, wherever
    // the damaged byte is (in the last chunk, or the first).
    for (d, at) in [
        (t.small, SMALL - 1),
        (t.batch, 0),
        (t.big, BIG - 3),
        (t.big, 10),
    ] {
        flip(&server, d, at);
        let (got, end) = download(&mut cas, d, 0).await;
        let e = end.expect_err("a damaged blob is not served");
        assert_eq!(e.code(), Code::DataLoss, "{e:?}");
        assert!(
            e.message().contains(&d.to_string()) && e.message().contains("quarantined"),
            "{}",
            e.message()
        );
        assert!(
            (got.len() as u64) < d.size(),
            "{d}: the client received all {} bytes",
            got.len()
        );
        assert_quarantined(&server, &mut cas, d).await;
        // Quarantined: not served at all any more, until uploaded again.
        let (_, end) = download(&mut cas, d, 0).await;
        assert_eq!(end.unwrap_err().code(), Code::NotFound);

        // register uploads it again: served whole and verified.
        client
            .register(t.dir.path(), "bar/1", &Default::default())
            .await
            .unwrap();
        let (got, end) = download(&mut cas, d, 0).await;
        end.unwrap();
        assert_eq!(Digest::of_bytes(&got), d);
    }

    // A read from an offset (a resumed download) hashes the prefix it does not send.
    flip(&server, t.big, 5);
    let (got, end) = download(&mut cas, t.big, 15 * 1024 * 1024).await;
    assert_eq!(end.unwrap_err().code(), Code::DataLoss);
    assert!((got.len() as u64) < t.big.size() - 15 * 1024 * 1024);
    assert_quarantined(&server, &mut cas, t.big).await;

    // BatchDownload: each damaged item gets its own DATA_LOSS; the others are served.
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    flip(&server, t.small, 7);
    flip(&server, t.batch, BATCH / 2);
    let r = cas
        .batch_download(BatchDownloadRequest {
            namespace: "prod".into(),
            digests: vec![t.small.to_proto(), t.good.to_proto(), t.batch.to_proto()],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = r
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    let loss = Code::DataLoss as i32;
    assert_eq!(codes, vec![loss, 0, loss]);
    assert!(r.results[0].data.is_empty() && r.results[2].data.is_empty());
    assert_eq!(&r.results[1].data[..], b"untouched");
    assert_quarantined(&server, &mut cas, t.small).await;
    assert_quarantined(&server, &mut cas, t.batch).await;
    assert!(!blob_missing(&mut cas, t.good).await);

    // A blob whose bytes vanished from the store is dropped from the index too.
    std::fs::remove_file(cas_path(&server, t.big)).unwrap();
    let (_, end) = download(&mut cas, t.big, 0).await;
    assert_eq!(end.unwrap_err().code(), Code::DataLoss);
    assert!(blob_missing(&mut cas, t.big).await);

    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    client
        .fetch(
            client.resolve_ref("bar/1").await.unwrap(),
            out.path(),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_same_tree(t.dir.path(), out.path());
    server.stop().await;
}

async fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    run_cli(&server.url(), "prod", args).await
}

/// `stagecache get` of a damaged blob: exit 6, and no byte of it left in the directory.
async fn get_leaves_nothing(server: &TestServer, d: Digest) {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.bin");
    let o = cli(
        server,
        &["get", &d.to_string(), "--out", dest.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert_eq!(files_under(out.path()), Vec::<String>::new());
}

/// Every file under `dir`, hidden partial files included.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_leaves_no_damaged_byte_behind() {
    let server = TestServer::start().await;
    let client = server.client("prod").await;
    let t = tree();
    let reg = client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let manifest = reg.manifest.to_string();

    // `get` of a large blob damaged early in its bytes: exit 6, no file, no partial.
    flip(&server, t.big, 100);
    get_leaves_nothing(&server, t.big).await;

    // `fetch` of small and batch-sized blobs, damaged: exit 6, nothing written.
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    flip(&server, t.small, 0);
    flip(&server, t.batch, 99);
    let out = tempfile::tempdir().unwrap();
    let o = cli(
        &server,
        &[
            "fetch",
            "--manifest",
            &manifest,
            "--out",
            out.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let left = files_under(out.path());
    assert!(
        !left
            .iter()
            .any(|f| f.contains("small.bin") || f.contains("batch.bin")),
        "{left:?}"
    );

    // `fetch` of the large one alone, damaged in its last chunk.
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    flip(&server, t.big, BIG - 1);
    get_leaves_nothing(&server, t.big).await;

    // Healed by register; the CLI fetches the whole tree, verified.
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = cli(
        &server,
        &[
            "fetch",
            "--ref",
            "bar/1",
            "--out",
            out.path().to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_same_tree(t.dir.path(), out.path());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_finds_every_damaged_blob_in_a_store_of_thousands() {
    let server = TestServer::start().await;
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for i in 0..2_000u64 {
        let data = pseudo_random(i + 100, 200 + i as usize);
        digests.push(Digest::of_bytes(&data));
        write_file(src.path(), &format!("d{}/f{i}", i % 20), &data, false);
    }
    // And one large enough to be read around the page cache (--direct-io, 8 MiB).
    let big = pseudo_random(7, BIG);
    let big_digest = Digest::of_bytes(&big);
    write_file(src.path(), "archives/big.zip", &big, false);
    client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let manifest = client.resolve_ref("bar/1").await.unwrap();
    client
        .record(RecordRequest {
            subject: Some(manifest.to_proto()),
            stage: "Validate".into(),
            status: StageStatus::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut flipped: Vec<Digest> = digests.iter().step_by(300).copied().collect();
    flipped.push(big_digest);
    for d in &flipped {
        flip(&server, *d, 17);
    }
    let data_dir = server.data_dir.clone();
    let temp = server.stop().await;

    // As `stagecache-server scrub` opens it: large blobs read with O_DIRECT.
    let store = stagecache_server::store::Store::open(&data_dir, None).unwrap();
    store.set_direct_io(None).unwrap();
    let report = store.scrub().await.unwrap();
    assert!(report.blobs > 2_000, "{report:?}");
    let mut found = report.damaged.clone();
    found.sort();
    let mut want: Vec<String> = flipped.iter().map(|d| d.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
    assert_eq!(report.damaged_refs.len(), 1, "{report:?}");
    assert!(report.damaged_refs[0].starts_with("prod/bar/1 -> "));
    assert_eq!(store.damaged_blobs(), flipped.len() as u64);
    drop(store);

    // Quarantined: reported missing, and a new register heals them. Meanwhile a plan that
    // reuses a result for those bytes says they are damaged.
    let server = TestServer::start_on(data_dir).await;
    let subject = client_manifest(&server).await;
    let reason = validate_plan_reason(&server, subject).await;
    assert!(reason.contains("bytes are damaged"), "{reason}");
    let mut cas = CasClient::new(server.channel().await);
    for d in &flipped {
        assert!(blob_missing(&mut cas, *d).await);
        assert!(quarantine_path(&server, *d).exists());
    }
    let client = server.client("prod").await;
    client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    for d in &flipped {
        assert!(!blob_missing(&mut cas, *d).await);
    }
    let reason = validate_plan_reason(&server, subject).await;
    assert!(!reason.contains("damaged"), "{reason}");
    server.stop().await;
    drop(temp);
}

/// The reason of the plan's decision for a one-stage graph (`Validate`), which must skip.
async fn validate_plan_reason(server: &TestServer, subject: Digest) -> String {
    let p = server
        .client("prod")
        .await
        .plan(PlanRequest {
            subject: Some(subject.to_proto()),
            graph: Some(StageGraph {
                stages: vec![StageDef {
                    name: "Validate".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.stages[0].decision, Decision::Skip as i32, "{p:?}");
    p.stages[0].reason.clone()
}

/// The manifest `bar/1` points at.
async fn client_manifest(server: &TestServer) -> Digest {
    server
        .client("prod")
        .await
        .resolve_ref("bar/1")
        .await
        .unwrap()
}

/// The web page's file download is a verified read too: a damaged small file is refused
/// before any byte is sent, a damaged large one ends short of its size (the connection
/// cut before its last chunk), and both are quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_page_never_serves_a_damaged_file_whole() {
    let server =
        stagecache_tests::ServerProcess::start_fresh_with_args(&["--web-listen", "127.0.0.1:0"]);
    let client = server.client("prod").await;
    let t = tree();
    let reg = client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let m = reg.manifest;
    let file_url = |name: &str| {
        format!(
            "{}/manifest/{}/{}/file/{name}",
            server.web_url(),
            m.hash_hex(),
            m.size()
        )
    };
    // Undamaged first: the whole file, exactly.
    let r = reqwest::get(file_url("big.bin")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), BIG);

    for (name, d, size, at) in [
        ("small.bin", t.small, SMALL, 7),
        ("big.bin", t.big, BIG, BIG - 1),
    ] {
        let object = BlobStore::location(&d);
        let mut bytes = server.read_object(&object);
        bytes[at] ^= 0x55;
        server.overwrite_object(&object, bytes);
        let r = reqwest::get(file_url(name)).await.unwrap();
        let status = r.status().as_u16();
        match r.bytes().await {
            Ok(body) => assert!(
                status != 200 || body.len() < size,
                "{name}: {status} with {} of {size} bytes",
                body.len()
            ),
            // The body broke off: what a damaged large file looks like.
            Err(e) => assert_eq!(status, 200, "{name}: {e}"),
        }
        let mut cas = CasClient::new(server.channel().await);
        assert!(blob_missing(&mut cas, d).await, "{name} is still indexed");
        assert!(
            server
                .blob_files()
                .contains(&format!("quarantine/{}", d.hash_hex())),
            "{name} is not in quarantine/"
        );
    }
    // The untouched file still downloads.
    let r = reqwest::get(file_url("good.txt")).await.unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], b"untouched");
}

/// A server started with `--scrub-interval` finds a blob that rots while it runs, with
/// nobody reading it: quarantined, logged with the ref it breaks, and a register heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_periodic_scrub_finds_rot_nobody_reads() {
    let server = stagecache_tests::ServerProcess::start_fresh_with_args(&[
        "--scrub-interval",
        "1s",
        "--scrub-rate",
        "100MiB",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let client = server.client("prod").await;
    let t = tree();
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let object = BlobStore::location(&t.batch);
    let mut bytes = server.read_object(&object);
    bytes[12_345] ^= 0x55;
    server.overwrite_object(&object, bytes);

    let mut cas = CasClient::new(server.channel().await);
    stagecache_tests::within(
        std::time::Duration::from_secs(60),
        "a periodic scrub quarantining the damaged blob",
        async {
            while !blob_missing(&mut cas, t.batch).await {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(!blob_missing(&mut cas, t.small).await);
    assert!(server
        .blob_files()
        .contains(&format!("quarantine/{}", t.batch.hash_hex())));
    // The run that found it says so, naming the ref it breaks.
    stagecache_tests::within(
        std::time::Duration::from_secs(60),
        "the scrub's summary in the log",
        async {
            while !server.log_text().contains("damaged_refs=[\"prod/bar/1") {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    let metrics = stagecache_tests::scrape_metrics(&server.metrics_url()).await;
    assert!(metrics["stagecache_scrub_runs_total"] >= 1.0, "{metrics:?}");
    assert!(metrics["stagecache_scrub_bytes_total"] > 0.0, "{metrics:?}");
    // Healed by the next register; the tree fetches whole.
    client
        .register(t.dir.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    assert!(!blob_missing(&mut cas, t.batch).await);
}

/// `stagecache-server scrub`, the offline command, on a stopped server's data dir: exit 0
/// and a report of every blob while nothing is damaged; exit 3 naming the damaged blob
/// (one read with O_DIRECT, past `--direct-io`) and the ref that lost it once a byte of
/// it rotted; and a `--direct-io` given with a cloud blob store refused before anything
/// is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_scrub_command_reports_and_exits_3_on_damage() {
    let server = TestServer::start().await;
    let t = tree();
    server
        .client("prod")
        .await
        .register(t.dir.path(), "bar/scrub", &Default::default())
        .await
        .unwrap();
    let data_dir = server.data_dir.clone();
    let data = data_dir.to_str().unwrap().to_string();
    let scrub = |extra: &[&str]| {
        let out = std::process::Command::new(stagecache_tests::workspace_bin("stagecache-server"))
            .args(["--data-dir", &data])
            .args(extra)
            .arg("scrub")
            .output()
            .unwrap();
        let report = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
        (
            out.status.code(),
            report,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let big = t.big;
    // Kept until the end: the data dir lives in it.
    let _kept = server.stop().await;
    let (code, report, stderr) = scrub(&["--direct-io", "8MiB"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = report.unwrap();
    assert!(report["report"]["blobs"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(
        report["report"]["damaged"],
        serde_json::json!([]),
        "{report}"
    );

    flip_in(&data_dir, big, BIG / 2);
    let (code, report, stderr) = scrub(&[]);
    assert_eq!(code, Some(3), "{stderr}");
    let report = report.unwrap();
    assert_eq!(
        report["report"]["damaged"],
        serde_json::json!([big.to_string()]),
        "{report}"
    );
    assert!(
        report["report"]["damaged_refs"][0]
            .as_str()
            .unwrap()
            .starts_with("prod/bar/scrub -> "),
        "{report}"
    );

    let (code, _, stderr) = scrub(&["--blob-store", "memory://", "--direct-io", "8MiB"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--direct-io") && stderr.contains("not on local disk"),
        "{stderr}"
    );
}
