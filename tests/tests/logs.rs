//! The server's log for collectors: `--log-format json` writes one JSON object per line on
//! stderr (timestamp, level, target, message and the event's fields), every line of it;
//! one access line per call with its request id, which the CLI prints with an error.

use stagecache_tests::{write_file, ServerProcess};

/// Registers one small file as `bar/1` in `prod`: a few calls of every kind of write.
async fn register_one(server: &ServerProcess) {
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.bin", b"logged", false);
    let client = server.client("prod").await;
    client
        .register(src.path(), "bar/1", &Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse() {
    let server = ServerProcess::start_fresh_with_args(&["--log-format", "json"]);
    register_one(&server).await;
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

/// One access line per call: method, namespace, caller, gRPC code, bytes in and out,
/// duration and the request id, which the client may send (`x-request-id`) and gets back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_line_per_call_with_the_request_id() {
    use stagecache_proto::v1::refs_client::RefsClient;
    use stagecache_proto::v1::GetRefRequest;
    let server = ServerProcess::start_fresh_with_args(&["--log-format", "json"]);
    let mut refs = RefsClient::new(server.channel().await);
    let mut req = tonic::Request::new(GetRefRequest {
        namespace: "prod".into(),
        name: "bar/missing".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "pipeline-step-42".parse().unwrap());
    let e = refs.get(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(
        e.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("pipeline-step-42")
    );
    register_one(&server).await;
    let lines: Vec<serde_json::Value> = server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "rpc")
        .collect();
    // Exactly one access line for the one call with this request id.
    let for_call: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["request_id"] == "pipeline-step-42")
        .collect();
    assert_eq!(for_call.len(), 1, "{for_call:?}");
    let missing = for_call[0];
    assert_eq!(missing["method"], "stagecache.v1.Refs/Get", "{missing}");
    assert_eq!(missing["code"], "NotFound", "{missing}");
    assert_eq!(missing["caller"], "anonymous", "{missing}");
    assert_eq!(missing["namespace"], "prod", "{missing}");
    let set = lines
        .iter()
        .find(|v| v["method"] == "stagecache.v1.Refs/Set")
        .unwrap_or_else(|| panic!("no access line for Refs/Set: {lines:?}"));
    assert_eq!(set["code"], "Ok", "{set}");
    assert!(set["bytes_out"].as_u64().unwrap() > 0, "{set}");
    assert!(set["bytes_in"].as_u64().unwrap() > 0, "{set}");
    assert_eq!(set["namespace"], "prod", "{set}");
    // A call that acts in no namespace says so.
    let health = lines
        .iter()
        .find(|v| v["method"] == "grpc.health.v1.Health/Check")
        .unwrap_or_else(|| panic!("no access line for the health check: {lines:?}"));
    assert_eq!(health["namespace"], "-", "{health}");
    assert!(set["request_id"].as_str().unwrap().len() >= 8, "{set}");

    // The CLI prints a failed call's request id; the server's line has the same one.
    let mut cmd = std::process::Command::new(stagecache_tests::workspace_bin("stagecache"));
    cmd.args(["--server", &server.url(), "--namespace", "prod"])
        .args(["show", "--ref", "bar/nowhere"]);
    let out =
        stagecache_tests::output_within(&mut cmd, std::time::Duration::from_secs(60), "stagecache");
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .split("(request id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no request id in: {err}"))
        .to_string();
    let logged = server.log_text().lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["request_id"] == id.as_str() && v["code"] == "NotFound")
    });
    assert!(logged, "no NotFound access line for request id {id}");
    server.stop().await;
}
