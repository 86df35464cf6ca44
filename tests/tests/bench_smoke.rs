//! The benchmark must not rot: a smoke run of `stagecache-bench` on a tiny tree (every
//! phase, real server and CLI binaries), checking that each figure was measured and the
//! output keeps its documented shape. Speed itself is judged by `bench/run`, never here.

use serde_json::Value;
use stagecache_tests::workspace_bin;

#[test]
fn benchmark_smoke_run_on_a_tiny_tree() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new(workspace_bin("stagecache-bench"))
        .args([
            "--size",
            "20MiB",
            "--big-file",
            "48MiB",
            "--runs",
            "1",
            "--ledger-attempts",
            "18000",
            "--ledger-seconds",
            "0.3",
            "--callers",
            "1,4",
            "--json",
            json.path().to_str().unwrap(),
        ])
        .output()
        .expect("run stagecache-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // Last line: the summary, with every figure the issue names.
    let last = stdout.lines().last().unwrap();
    let fields: Vec<&str> = last
        .strip_prefix("summary: ")
        .unwrap_or_else(|| panic!("last line is not the summary: {last}"))
        .split(' ')
        .collect();
    let keys: Vec<&str> = fields
        .iter()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["register_cold", "fetch_cold", "register_warm", "plan_p50"]
    );
    for (f, unit) in fields.iter().zip(["x_cp", "x_cp", "x_hash", "ms"]) {
        let value = f.split('=').nth(1).unwrap();
        let n: f64 = value
            .strip_suffix(unit)
            .unwrap_or_else(|| panic!("{f} does not end in {unit}"))
            .parse()
            .unwrap();
        assert!(n > 0.0, "{f}");
    }
    for row in [
        "cp -r",
        "register, cold",
        "fetch, warm",
        "FindMissing",
        "plan, 4 callers",
        "peak RSS, server",
    ] {
        assert!(stdout.contains(row), "table has no {row:?} row:\n{stdout}");
    }

    // The JSON file holds the same figures.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    let t = &v["transfer"];
    assert_eq!(t["bytes"], 20 * 1024 * 1024);
    assert!(t["files"].as_u64().unwrap() > 8);
    for fig in [
        "cp",
        "cp_sync",
        "hash",
        "register_cold",
        "register_warm",
        "fetch_cold",
        "fetch_warm",
        "find_missing",
    ] {
        let median = t[fig]["median_s"].as_f64().unwrap();
        assert!(median > 0.0, "{fig}: {median}");
        assert_eq!(
            t[fig]["runs_s"].as_array().unwrap().len(),
            match fig {
                "find_missing" => 5,
                // Measured twice: before the cold transfers and after them.
                "cp" | "cp_sync" => 2,
                _ => 1,
            }
        );
    }
    assert_eq!(t["find_missing_digests"], 100_000);
    assert_eq!(t["find_missing_present"], t["files"]);
    let ledger = v["ledger"]["figures"].as_array().unwrap();
    let shape: Vec<(String, u64)> = ledger
        .iter()
        .map(|f| {
            (
                f["call"].as_str().unwrap().to_string(),
                f["callers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("status".into(), 1),
            ("plan".into(), 1),
            ("status".into(), 4),
            ("plan".into(), 4)
        ]
    );
    assert!(ledger.iter().all(|f| f["calls"].as_u64().unwrap() > 0));
    assert!(ledger
        .iter()
        .all(|f| f["server_cpu_us_per_call"].as_f64().unwrap() >= 0.0));
    // 300 subjects x 20 stage lines x 3 attempts, in 5 records a line.
    assert_eq!(v["ledger"]["attempts"], 18_000);
    assert_eq!(v["ledger"]["records"], 30_000);
    let m = &v["memory"];
    assert_eq!(m["file_bytes"], 48 * 1024 * 1024);
    for k in ["server_peak_rss", "register_peak_rss", "fetch_peak_rss"] {
        // A process that really ran holds at least a few MiB.
        assert!(m[k].as_u64().unwrap() > 1 << 20, "{k}: {}", m[k]);
    }
    assert!(!v["targets"].as_array().unwrap().is_empty());
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
}
