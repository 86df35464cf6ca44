//! The `stagecache` binary against a real server: output, errors and exit codes.

use stagecache_tests::{
    assert_same_tree, pseudo_random, run_cli, workspace_bin, write_file, ServerProcess, TestServer,
};
use std::process::Output;

async fn cli(server: &TestServer, args: &[&str]) -> Output {
    run_cli(&server.url(), "prod", args).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_fetch_show_put_get_through_the_cli() {
    let server = TestServer::start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_documented_exit_codes() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "f", b"x", false);
    let dir = src.path().to_str().unwrap();
    let m = stdout(&cli(&server, &["register", dir, "--ref", "bar/1"]).await);

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["fetch", "--ref", "bar/404", "--out", "/tmp/x"],
            3,
            "ref bar/404 does not exist in namespace prod",
        ),
        (
            vec!["fetch", "--ref", "bad name", "--out", "/tmp/x"],
            2,
            "ref: \"bad name\" contains ' '",
        ),
        (vec!["get", "abc/1", "--out", "/tmp/x"], 2, ""),
        (
            vec!["register", dir, "--ref", "bar/1", "--expect-absent"],
            4,
            "already exists",
        ),
        (
            vec!["register", "/nonexistent/dir", "--ref", "bar/2"],
            1,
            "/nonexistent/dir",
        ),
    ];
    for (args, code, want) in cases {
        let o = cli(&server, &args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        if !want.is_empty() {
            assert!(err.contains(want), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("stagecache: error: "), "{err}");
        }
    }
    let o = cli(
        &server,
        &["register", dir, "--ref", "bar/1", "--expect", &m],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));

    // No server: exit 5.
    let bin = workspace_bin("stagecache");
    let o = tokio::process::Command::new(bin)
        .args(["--server", "http://127.0.0.1:1", "--rpc-timeout", "2", "ls"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot connect to http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_binary_serves_then_shuts_down_gracefully_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data.path());
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

    let exit = server.signal_and_wait("TERM");
    assert!(exit.success(), "server exited with {exit:?}");

    // Restarted on the same data dir, it serves what was registered.
    let server = ServerProcess::start(data.path());
    let client = server.client("prod").await;
    assert_eq!(client.resolve_ref("bar/9").await.unwrap(), reg.manifest);
}
