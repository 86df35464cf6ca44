//! The server's log for collectors: `--log-format json` writes one JSON object per line on
//! stderr (timestamp, level, target, message and the event's fields), every line of it.

use stagecache_tests::{write_file, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse() {
    let server = ServerProcess::start_fresh_with_args(&["--log-format", "json"]);
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.bin", b"logged", false);
    let client = server.client("prod").await;
    client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    // The ref move's line carries its fields as JSON values.
    let log = server.log_text();
    let set = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "ref set")
        .unwrap_or_else(|| panic!("no JSON 'ref set' line in:\n{log}"));
    assert_eq!(set["ref"], "bar/1", "{set}");
    assert_eq!(set["namespace"], "prod", "{set}");
    assert_eq!(set["level"], "INFO", "{set}");
    server.stop().await;
}

#[test]
fn json_log_of_a_stopped_server() {
    let mut server = ServerProcess::start_fresh_with_args(&["--log-format", "json"]);
    server.signal_and_wait("TERM");
    let log = server.log_text();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "stagecache-server listening")
            && messages.iter().any(|m| m == "stopped"),
        "{messages:?}"
    );
}
