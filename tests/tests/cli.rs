//! The `stagecache` binary against the `stagecache-server` binary: output, errors and
//! every documented exit code.

use stagecache_tests::{
    assert_same_tree, pseudo_random, within, workspace_bin, write_file, ServerProcess,
};
use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

/// The longest a CLI run may take here: its own calls time out sooner (`--rpc-timeout`).
const CLI_LIMIT: Duration = Duration::from_secs(120);

async fn cli(server: &ServerProcess, args: &[&str]) -> Output {
    let bin = workspace_bin("stagecache");
    let url = server.url();
    let mut all = vec!["--server", url.as_str(), "--namespace", "prod"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    let run = tokio::process::Command::new(bin)
        .args(all)
        .env_remove("STAGECACHE_NAMESPACE")
        .env_remove("STAGECACHE_SERVER")
        .env_remove("STAGECACHE_CLAIM_TOKEN")
        .kill_on_drop(true)
        .output();
    within(CLI_LIMIT, "stagecache", run)
        .await
        .expect("run stagecache")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_fetch_show_put_get_through_the_cli() {
    let server = ServerProcess::start_fresh();
    let src = tempfile::tempdir().unwrap();
    write_file(
        src.path(),
        "pkgs/a.nupkg",
        &pseudo_random(1, 300_000),
        false,
    );
    write_file(src.path(), "bin/tool", b"#!/bin/sh\n", true);
    write_file(
        src.path(),
        "big/archive.zip",
        &pseudo_random(2, 3 * 1024 * 1024),
        false,
    );
    let dir = src.path().to_str().unwrap();

    let o = cli(&server, &["register", dir, "--ref", "bar/12345"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = stdout(&o);
    assert!(
        manifest.parse::<stagecache_proto::Digest>().is_ok(),
        "{manifest}"
    );

    let out = tempfile::tempdir().unwrap();
    let o = cli(
        &server,
        &[
            "fetch",
            "--ref",
            "bar/12345",
            "--out",
            out.path().to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(src.path(), out.path());
    let out2 = tempfile::tempdir().unwrap();
    let o = cli(
        &server,
        &[
            "--json",
            "fetch",
            "--manifest",
            &manifest,
            "--out",
            out2.path().to_str().unwrap(),
        ],
    )
    .await;
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["downloaded_files"], 3);
    assert_eq!(j["manifest"], manifest.as_str());

    let o = cli(&server, &["--json", "ls", "bar/"]).await;
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["refs"][0]["name"], "bar/12345");
    assert_eq!(j["refs"][0]["manifest"], manifest.as_str());

    let o = cli(&server, &["--json", "show", "--ref", "bar/12345"]).await;
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["files"], 3);
    assert_eq!(j["entries"][0]["path"], "big/archive.zip");
    assert_eq!(j["entries"][1]["executable"], true);
    assert_eq!(j["history"][0]["version"], 1);

    let one = src.path().join("pkgs/a.nupkg");
    let o = cli(&server, &["put", one.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let digest = stdout(&o);
    let got = out.path().join("copy.nupkg");
    let o = cli(&server, &["get", &digest, "--out", got.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(got).unwrap(), std::fs::read(one).unwrap());
    server.stop().await;
}

/// Every exit code of the README's table, each from the real CLI against the real server
/// (5 against none), with its one-line error where the code is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_exit_code() {
    let server = ServerProcess::start_fresh();
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "f", b"x", false);
    let dir = src.path().to_str().unwrap();
    let m = stdout(&cli(&server, &["register", dir, "--ref", "bar/1"]).await);
    let scratch = tempfile::tempdir().unwrap();
    let rotten_out = scratch.path().join("rotten");
    let rotten_out = rotten_out.to_str().unwrap();

    // 6: a blob whose stored bytes rotted (same size, other bytes) is refused by the
    // client's verification, and nothing is written where it was asked to go.
    let rotten = pseudo_random(6, 5000);
    let rotten_path = scratch.path().join("rotten.bin");
    std::fs::write(&rotten_path, &rotten).unwrap();
    let o = cli(&server, &["put", rotten_path.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let rotten_digest = stdout(&o);
    let stored = stagecache_server::store::blobs::BlobStore::location(
        &rotten_digest.parse().expect("put prints HASH/SIZE"),
    );
    assert_eq!(server.read_object(&stored), rotten, "{stored}");
    server.overwrite_object(&stored, pseudo_random(7, 5000));

    // 7 and 8: a stage that succeeded (claim: nothing to do), one that failed (wait).
    for (stage, status) in [("Publish", "succeeded"), ("Validation", "failed")] {
        let args = ["record", "--ref", "bar/1", "--stage", stage, "--status"];
        let o = cli(&server, &[&args[..], &[status]].concat()).await;
        assert!(o.status.success(), "{}", stderr(&o));
    }

    let expect_m = format!("--expect={m}");
    let wait_failed = [
        "wait",
        "--ref",
        "bar/1",
        "--stage",
        "Validation",
        "--timeout",
        "30",
    ];
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["register", dir, "--ref", "bar/1", &expect_m], 0, ""),
        (
            vec!["register", "/nonexistent/dir", "--ref", "bar/2"],
            1,
            "/nonexistent/dir",
        ),
        (
            vec!["fetch", "--ref", "bad name", "--out", "/tmp/x"],
            2,
            "ref: \"bad name\" contains ' '",
        ),
        (vec!["get", "abc/1", "--out", "/tmp/x"], 2, ""),
        (
            vec!["fetch", "--ref", "bar/404", "--out", "/tmp/x"],
            3,
            "ref bar/404 does not exist in namespace prod",
        ),
        (
            vec!["register", dir, "--ref", "bar/1", "--expect-absent"],
            4,
            "already exists",
        ),
        (vec!["get", &rotten_digest, "--out", rotten_out], 6, "hash"),
        (
            vec![
                "claim", "--ref", "bar/1", "--stage", "Publish", "--ttl", "60",
            ],
            7,
            "",
        ),
        (wait_failed.to_vec(), 8, ""),
        (vec!["wait", "--ref", "bar/never", "--timeout", "1"], 9, ""),
    ];
    let mut seen = BTreeSet::new();
    for (args, code, want) in cases {
        let o = cli(&server, &args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        seen.insert(code);
        let err = stderr(&o);
        if !want.is_empty() {
            assert!(err.contains(want), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("stagecache: error: "), "{err}");
        }
    }
    assert!(
        !std::path::Path::new(rotten_out).exists(),
        "unverified bytes were put in place"
    );
    let o = cli(&server, &[&["--json"][..], &wait_failed].concat()).await;
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["done"], false, "{j}");

    // 5: no server.
    let bin = workspace_bin("stagecache");
    let run = tokio::process::Command::new(bin)
        .args(["--server", "http://127.0.0.1:1", "--rpc-timeout", "2", "ls"])
        .kill_on_drop(true)
        .output();
    let o = within(CLI_LIMIT, "stagecache ls", run).await.unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot connect to http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    seen.insert(5);
    assert_eq!(
        seen,
        (0..=9).collect(),
        "the README documents exit codes 0-9"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_binary_serves_then_shuts_down_gracefully_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path());
    let client = server.client("prod").await;
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.bin", &pseudo_random(5, 100_000), false);
    let reg = client
        .register(src.path(), "bar/9", &Default::default())
        .await
        .unwrap();

    // A second server on the same data dir is refused with a clear message.
    let other = std::process::Command::new(workspace_bin("stagecache-server"))
        .args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("lock"), "{stderr}");

    // SIGTERM: a clean exit, after the index was flushed (the log says "stopped").
    server.stop().await;

    // Restarted on the same data dir, it serves what was registered.
    let server = ServerProcess::start(data.path());
    let client = server.client("prod").await;
    assert_eq!(client.resolve_ref("bar/9").await.unwrap(), reg.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_of_refs_and_digests_as_table_and_json() {
    let server = ServerProcess::start_fresh();
    let a = tempfile::tempdir().unwrap();
    write_file(a.path(), "same.txt", b"same", false);
    write_file(a.path(), "pkg.nupkg", b"old bits", false);
    write_file(a.path(), "gone.txt", b"bye", false);
    write_file(a.path(), "run.sh", b"#!/bin/sh\n", false);
    let b = tempfile::tempdir().unwrap();
    write_file(b.path(), "same.txt", b"same", false);
    write_file(b.path(), "pkg.nupkg", b"new signed bits", false);
    write_file(b.path(), "new.zip", b"fresh", false);
    write_file(b.path(), "run.sh", b"#!/bin/sh\n", true);
    let o = cli(
        &server,
        &["register", a.path().to_str().unwrap(), "--ref", "bar/1"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(
        &server,
        &["register", b.path().to_str().unwrap(), "--ref", "bar/2"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let new_digest = stdout(&o);

    // A ref against a digest: a value that parses as a digest is one.
    let o = cli(&server, &["diff", "bar/1", &new_digest]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    let row = |change: &str, old: &str, new: &str, path: &str| {
        table.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 4 && w[0] == change && w[1] == old && w[2] == new && w[3] == path
        })
    };
    assert!(row("changed", "8", "15", "pkg.nupkg"), "{table}");
    assert!(row("removed", "3", "-", "gone.txt"), "{table}");
    assert!(row("added", "-", "5", "new.zip"), "{table}");
    assert!(table.contains("run.sh  (executable no -> yes)"), "{table}");
    assert!(!table.contains("same.txt"), "{table}");
    assert!(
        table.contains("1 added, 1 removed, 2 changed, 1 unchanged; 4 -> 4 files"),
        "{table}"
    );

    let o = cli(&server, &["--json", "diff", "bar/1", "bar/2"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["new"], new_digest.as_str());
    assert_eq!(v["old_name"], "bar/1");
    assert_eq!(
        (v["added"].as_u64(), v["removed"].as_u64()),
        (Some(1), Some(1))
    );
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["gone.txt", "new.zip", "pkg.nupkg", "run.sh"]);

    // Identical sets: no rows, still exit 0.
    let o = cli(&server, &["--json", "diff", "bar/2", &new_digest]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["identical"], true);

    // An unknown ref is "not found", exit 3, as in other commands.
    let o = cli(&server, &["diff", "bar/1", "bar/404"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("bar/404"), "{}", stderr(&o));
}
