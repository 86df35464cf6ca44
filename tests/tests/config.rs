//! The server's configuration file through the real binary: `config check` accepts a good
//! file and refuses an unknown key naming it and the file; `config print` shows flags
//! beating the environment beating the file, with credentials redacted; and a server
//! started with only `--config` listens, writes and serves metrics where the file says.

use stagecache_tests::{output_within, test_timeout, workspace_bin};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

fn server() -> Command {
    let mut c = Command::new(workspace_bin("stagecache-server"));
    // The caller's own settings must not leak into what is checked here.
    for (k, _) in std::env::vars() {
        if k.starts_with("STAGECACHE_") || k.starts_with("AZURE_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_good_file_and_names_an_unknown_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        "listen = \"127.0.0.1:50051\"\nmetrics_listen = \"127.0.0.1:9090\"\nlog_format = \"json\"\n",
    );
    let out = output_within(
        server().args(["config", "check"]).arg(&good),
        test_timeout(),
        "stagecache-server",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );

    let bad = write(
        dir.path(),
        "bad.toml",
        "listen = \"127.0.0.1:1\"\nmetric_listen = \"x\"\n",
    );
    let out = output_within(
        server().args(["config", "check"]).arg(&bad),
        test_timeout(),
        "stagecache-server",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metric_listen") && err.contains("bad.toml"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A bad value: one line naming the file, the line and the key.
    let bad_value = write(
        dir.path(),
        "value.toml",
        "log = \"info\"\nlisten = \"nowhere\"\n",
    );
    let out = output_within(
        server().args(["config", "check"]).arg(&bad_value),
        test_timeout(),
        "stagecache-server",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("value.toml: line 2: listen: ") && err.trim().lines().count() == 1,
        "{err}"
    );

    // A server is not started on a file it cannot read either.
    let out = output_within(
        server().arg("--config").arg(&bad),
        test_timeout(),
        "stagecache-server",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("metric_listen"));

    // Open on a non-loopback address without auth: refused by the check.
    let open = write(dir.path(), "open.toml", "listen = \"0.0.0.0:50051\"\n");
    let out = output_within(
        server().args(["config", "check"]).arg(&open),
        test_timeout(),
        "stagecache-server",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth_config"),
        "{out:?}"
    );
}

#[test]
fn print_merges_flags_over_environment_over_file_and_redacts_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "s.toml",
        concat!(
            "listen = \"127.0.0.1:7001\"\n",
            "log = \"warn\"\n",
            "log_format = \"json\"\n",
            "metrics_listen = \"127.0.0.1:7002\"\n",
            "[blob_store_options]\n",
            "azure_storage_account_name = \"contoso\"\n",
            "azure_storage_account_key = \"c2VjcmV0LWtleQ==\"\n",
        ),
    );
    let out = output_within(
        server()
            .arg("--config")
            .arg(&file)
            .env("STAGECACHE_LOG", "debug")
            .env("STAGECACHE_LISTEN", "127.0.0.1:7003")
            .args(["--log-format", "text", "config", "print"]),
        test_timeout(),
        "stagecache-server",
    );
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let v: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(
        v["log_format"].as_str(),
        Some("text"),
        "flag beats file: {printed}"
    );
    assert_eq!(
        v["log"].as_str(),
        Some("debug"),
        "environment beats file: {printed}"
    );
    assert_eq!(v["listen"].as_str(), Some("127.0.0.1:7003"), "{printed}");
    assert_eq!(
        v["metrics_listen"].as_str(),
        Some("127.0.0.1:7002"),
        "file beats default: {printed}"
    );
    assert_eq!(
        v["data_dir"].as_str(),
        Some("./stagecache-data"),
        "default: {printed}"
    );
    let opts = &v["blob_store_options"];
    assert_eq!(opts["azure_storage_account_name"].as_str(), Some("contoso"));
    assert_eq!(
        opts["azure_storage_account_key"].as_str(),
        Some("<redacted>")
    );
    assert!(!printed.contains("c2VjcmV0"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_from_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "s.toml",
        &format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nlog_format = \"json\"\n",
            data.to_str().unwrap()
        ),
    );
    let mut child = server()
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("a ready line")
    };
    let grpc = next();
    let metrics = next();
    let grpc = grpc
        .strip_prefix("stagecache-server listening on ")
        .unwrap_or_else(|| panic!("{grpc}"))
        .to_string();
    let metrics = metrics
        .strip_prefix("stagecache-server metrics on ")
        .unwrap_or_else(|| panic!("{metrics}"))
        .to_string();
    let ok = output_within(
        Command::new(workspace_bin("stagecache")).args([
            "--server",
            &format!("http://{grpc}"),
            "health",
            "--wait",
            "60",
        ]),
        test_timeout(),
        "stagecache-server",
    );
    assert!(ok.status.success(), "{ok:?}");
    let status: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("http://{metrics}/status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["data_dir"].as_str(), data.to_str(), "{status}");
    assert!(
        data.join("index").is_dir(),
        "the index is where the file says"
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "a TERM stops it gracefully: {exit}");
}
