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
    // Every line so far (start-up, the lease, the calls) is one JSON object.
    let log = server.log_text();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    // The ref move's line carries its fields as JSON values.
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

/// A TERM as soon as the server answers stops it gracefully (the handler is installed
/// before the port is bound), and the JSON log says so.
#[test]
fn a_term_right_after_start_stops_gracefully() {
    let mut server = ServerProcess::start_fresh_with_args(&["--log-format", "json"]);
    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status}");
    let messages: Vec<String> = server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("signal received"))
            && messages.iter().any(|m| m == "stopped"),
        "{messages:?}"
    );
}
