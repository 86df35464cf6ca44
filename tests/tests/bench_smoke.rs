//! The benchmark must not rot: a smoke run of `stagecache-bench` on a tiny tree (every
//! phase, real server and CLI binaries). Speed itself is judged by `bench/run`, never
//! here; what is checked is that the JSON reports what really happened: the tree the run
//! generated and the copy the real CLI fetched (kept with `--keep`), the server's record
//! count, medians that are the true medians of the runs listed beside them, summary
//! ratios that follow from those medians, and a verdict on every ledger row.

use serde_json::Value;
use stagecache_tests::{assert_same_tree, output_within, test_timeout, workspace_bin};
use std::path::Path;

/// Files and bytes under `dir`.
fn count(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (f, b) = count(&e.path());
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += m.len();
        }
    }
    (files, bytes)
}

/// The true median, computed here from the runs the JSON lists.
fn median(runs: &[Value]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.as_f64().unwrap()).collect();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

#[test]
fn benchmark_smoke_run_on_a_tiny_tree() {
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("figures.json");
    let out = output_within(
        std::process::Command::new(workspace_bin("stagecache-bench")).args([
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
            // No 1-caller row: the latency targets must be judged anyway.
            "--callers",
            "2,4",
            "--gc-blobs",
            "2000",
            "--gc-builds",
            "10",
            "--rebuild-builds",
            "4",
            "--rebuild-attempts",
            "9000",
            "--rebuild-records",
            "40",
            "--keep",
            "--work-dir",
            work.path().join("bench").to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ]),
        test_timeout(),
        "stagecache-bench",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 0 also means the bench's own checks of every reply passed: cold registers
    // uploaded every byte, warm ones none, FindMissing found exactly the absent digests,
    // every Status line and Plan decision matched the pre-filled ledger.
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    // Transfer: the sizes are those of the tree on disk, and the real CLI's fetched copy
    // holds the same bytes.
    let t = &v["transfer"];
    let tree = work.path().join("bench/tree");
    let (files, bytes) = count(&tree);
    assert!(files > 8, "{files} files");
    assert_eq!(t["files"], files);
    assert_eq!(t["bytes"], bytes);
    assert_same_tree(&tree, &work.path().join("bench/out"));
    assert_eq!(t["find_missing_digests"], 100_000);
    // The tree's distinct digests, each present on the server.
    assert!(t["find_missing_present"].as_u64().unwrap() > 8);

    // Every figure's median is the true median of its runs; `cp` has an even count.
    for fig in [
        "cp",
        "cp_sync",
        "hash",
        "register_cold",
        "register_warm",
        "fetch_cold",
        "fetch_warm",
        "fetch_first",
        "find_missing",
    ] {
        let runs = t[fig]["runs_s"].as_array().unwrap();
        assert_eq!(
            runs.len(),
            match fig {
                "find_missing" => 5,
                // Measured twice: before the cold transfers and after them.
                "cp" | "cp_sync" => 2,
                _ => 1,
            },
            "{fig}"
        );
        assert!(runs.iter().all(|r| r.as_f64().unwrap() > 0.0), "{fig}");
        let m = t[fig]["median_s"].as_f64().unwrap();
        assert!((m - median(runs)).abs() < 1e-12, "{fig}: {m} vs {runs:?}");
    }
    let med = |fig: &str| t[fig]["median_s"].as_f64().unwrap();
    // The CLI runs report the CPU the CLI really used (`wait4`): a cold register or fetch
    // of 20 MiB hashes every byte. The server's side is read in clock ticks, too coarse
    // to be sure of one short run: it is checked summed over the ledger phase below.
    for fig in ["register_cold", "fetch_cold"] {
        assert!(t[fig]["client_cpu_s"].as_f64().unwrap() > 0.0, "{fig}");
        assert!(t[fig]["server_cpu_s"].as_f64().unwrap() >= 0.0, "{fig}");
    }

    // The summary's ratios follow from the JSON's medians.
    let last = stdout.lines().last().unwrap();
    let expected = format!(
        "register_cold={:.2}x_cp register_cold_durable={:.2}x_cp_sync fetch_cold={:.2}x_cp register_warm={:.2}x_hash",
        med("cp") / med("register_cold"),
        med("cp_sync") / med("register_cold"),
        med("cp") / med("fetch_cold"),
        med("register_warm") / med("hash"),
    );
    let rest = last
        .strip_prefix(&format!("summary: {expected} plan_p50="))
        .unwrap_or_else(|| panic!("summary {last:?} does not start with {expected:?}"));
    let plan2 = &v["ledger"]["figures"][1];
    assert_eq!(plan2["call"], "plan");
    let g = &v["gc"];
    let rb = &v["rebuild"];
    assert_eq!(
        rest,
        format!(
            "{:.3}ms gc_mark={:.2}s gc_sweep={:.2}s rebuild={:.1}s",
            plan2["p50_ms"].as_f64().unwrap(),
            g["mark_s"].as_f64().unwrap(),
            g["sweep_s"].as_f64().unwrap(),
            rb["rebuild_s"].as_f64().unwrap()
        )
    );

    // Rebuild: what `stagecache-server rebuild` found in the journal is what the phase
    // wrote (the bench checks the counts itself; these are what it reported): 4 builds
    // (a manifest and a ref each); 9,000 attempts on 3,000 lines, as 2 groups of 5
    // RecordBatch calls (15,000 records); 40 single Records.
    assert_eq!(rb["manifests"], 4);
    assert_eq!(rb["ref_changes"], 4);
    assert_eq!(rb["batch_records"], 15_000);
    assert_eq!(rb["single_records"], 40);
    assert_eq!(rb["ledger_records"], 15_040);
    assert_eq!(rb["journal_entries"], 4 + 4 + 10 + 40);
    assert!(rb["rebuild_s"].as_f64().unwrap() > 0.0, "{rb}");

    // Garbage collection: the refs of 5 of the 10 builds were past expiry, so their 200
    // blobs each, their manifests and their 18 ledger records each went (the bench checks
    // the counts itself; these are what it reported), and calls ran during it.
    assert_eq!(g["collected_blobs"], 1000);
    assert_eq!(g["collected_manifests"], 5);
    assert_eq!(g["expired_refs"], 5);
    assert_eq!(g["ledger_records"], 90);
    for f in ["fetch_idle", "fetch_during", "status_idle", "status_during"] {
        let l = &g[f];
        assert!(l["calls"].as_u64().unwrap() > 0, "{f}: {l}");
        assert!(
            l["p50_ms"].as_f64().unwrap() <= l["p99_ms"].as_f64().unwrap(),
            "{f}: {l}"
        );
    }
    assert!(
        stdout.contains("gc mark, 2,000 blobs in 10 builds"),
        "{stdout}"
    );

    // Ledger: the record count is the server's (Info.Stats after the fill): 300 subjects
    // x 20 stage lines x 5 records; every reply was checked at attempt 3 of each line.
    assert_eq!(v["ledger"]["records"], 30_000);
    assert_eq!(v["ledger"]["attempts"], 18_000);
    let ledger = v["ledger"]["figures"].as_array().unwrap();
    let shape: Vec<(&str, u64, &str)> = ledger
        .iter()
        .map(|f| {
            let variant = match (
                f["auth"].as_bool().unwrap(),
                f["metrics"].as_bool().unwrap(),
                f["again"].as_bool().unwrap(),
                f["cache_off"].as_bool().unwrap(),
            ) {
                (true, _, _, _) => "auth",
                (_, true, _, _) => "metrics",
                (_, _, true, _) => "again",
                (_, _, _, true) => "cache off",
                _ => "",
            };
            (
                f["call"].as_str().unwrap(),
                f["callers"].as_u64().unwrap(),
                variant,
            )
        })
        .collect();
    // The same calls again with auth on (a minted token on every call), then with a
    // metrics port (every call counted), then with the ledger heads cache off, then plain
    // again, at the fewest and the most callers; writes last.
    assert_eq!(
        shape,
        [
            ("status", 2, ""),
            ("plan", 2, ""),
            ("status", 4, ""),
            ("plan", 4, ""),
            ("status", 2, "auth"),
            ("plan", 2, "auth"),
            ("status", 4, "auth"),
            ("plan", 4, "auth"),
            ("status", 2, "metrics"),
            ("plan", 2, "metrics"),
            ("status", 4, "metrics"),
            ("plan", 4, "metrics"),
            ("status", 2, "cache off"),
            ("plan", 2, "cache off"),
            ("status", 4, "cache off"),
            ("plan", 4, "cache off"),
            ("status", 2, "again"),
            ("plan", 2, "again"),
            ("status", 4, "again"),
            ("plan", 4, "again"),
            ("record", 2, ""),
            ("record", 4, ""),
            ("record_batch", 1, ""),
        ]
    );
    let (mut server_cpu_s, mut load_cpu_s) = (0.0, 0.0);
    for f in ledger {
        let (p50, p99) = (f["p50_ms"].as_f64().unwrap(), f["p99_ms"].as_f64().unwrap());
        let calls = f["calls"].as_u64().unwrap();
        assert!(calls > 0);
        assert!(0.0 < p50 && p50 <= p99, "{f}");
        let per_call = f["server_cpu_us_per_call"].as_f64().unwrap();
        assert!(per_call >= 0.0, "{f}");
        server_cpu_s += per_call * calls as f64 / 1e6;
        let load_per_call = f["load_cpu_us_per_call"].as_f64().unwrap();
        assert!(load_per_call >= 0.0, "{f}");
        load_cpu_s += load_per_call * calls as f64 / 1e6;
    }
    // The server process really worked: its own /proc CPU counters moved over 1.2 s of
    // back-to-back calls; and so did the load generator (the bench's own rusage).
    assert!(server_cpu_s > 0.0, "{ledger:?}");
    assert!(load_cpu_s > 0.0, "{ledger:?}");

    // A verdict on every ledger row, whatever the caller counts, consistent with its
    // figures.
    let targets = v["targets"].as_array().unwrap();
    for f in ledger {
        let auth = f["auth"].as_bool().unwrap();
        match f["call"].as_str().unwrap() {
            "record" => {
                // Journaled writes: judged on p50 alone.
                let name = format!("record, {} callers", f["callers"]);
                let target = targets
                    .iter()
                    .find(|t| t["figure"] == name.as_str())
                    .unwrap_or_else(|| panic!("no target for {name}: {targets:?}"));
                assert_eq!(target["target"], "p50 < 2 ms", "{name}");
                assert_eq!(target["met"], f["p50_ms"].as_f64().unwrap() < 2.0, "{name}");
                continue;
            }
            "record_batch" => {
                // Reported, not judged; the table has its row.
                assert!(
                    stdout.contains("record batch of 2,000, 1 caller"),
                    "{stdout}"
                );
                continue;
            }
            _ => {}
        }
        if f["cache_off"].as_bool().unwrap() {
            // Reported beside the cached call, not judged.
            let name = format!(
                "{}, {} callers, cache off",
                f["call"].as_str().unwrap(),
                f["callers"]
            );
            assert!(
                !targets.iter().any(|t| t["figure"] == name.as_str()),
                "{name} was judged: {targets:?}"
            );
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&name))
                .unwrap_or_else(|| panic!("no row {name} in {stdout}"));
            assert!(row.contains("x cached"), "{row}");
            continue;
        }
        let metered = f["metrics"].as_bool().unwrap();
        let again = f["again"].as_bool().unwrap();
        let (suffix, without, min) = match (auth, metered) {
            (true, _) => (", auth on", "no auth", 0.90),
            (_, true) => (", metrics on", "no metrics", 0.95),
            _ if again => (", again", "", 0.0),
            _ => ("", "", 0.0),
        };
        let name = format!(
            "{}, {} callers{suffix}",
            f["call"].as_str().unwrap(),
            f["callers"],
        );
        let target = targets
            .iter()
            .find(|t| t["figure"] == name.as_str())
            .unwrap_or_else(|| panic!("no target for {name}: {targets:?}"));
        let mut met = f["p50_ms"].as_f64().unwrap() < 1.0 && f["p99_ms"].as_f64().unwrap() < 5.0;
        if auth || metered {
            // Judged also against the same call without the variant in the same run: the
            // mean of the plain figures before and after the variants.
            let plain: Vec<f64> = ledger
                .iter()
                .filter(|o| {
                    o["auth"] == false
                        && o["metrics"] == false
                        && o["cache_off"] == false
                        && o["call"] == f["call"]
                        && o["callers"] == f["callers"]
                })
                .map(|o| o["calls_per_s"].as_f64().unwrap())
                .collect();
            assert_eq!(plain.len(), 2, "{name}: before and after");
            let baseline = plain.iter().sum::<f64>() / 2.0;
            let x = f["calls_per_s"].as_f64().unwrap() / baseline;
            met &= x >= min;
            assert_eq!(
                target["target"],
                format!("p50 < 1 ms, p99 < 5 ms, >= {min:.2}x {without}").as_str(),
                "{name}"
            );
        } else {
            assert_eq!(target["target"], "p50 < 1 ms, p99 < 5 ms", "{name}");
        }
        assert_eq!(target["met"], met, "{name}");
        assert!(
            stdout.contains(&name),
            "table has no {name:?} row:\n{stdout}"
        );
    }

    // Memory: peaks read from the real processes' VmHWM; a process that really ran
    // holds at least a few MiB, and the CLI streamed the file rather than holding it.
    let m = &v["memory"];
    let big = work.path().join("bench/big-out");
    assert_eq!(count(&big).1, 48 * 1024 * 1024, "the fetched big file");
    assert_eq!(m["file_bytes"], 48 * 1024 * 1024);
    for k in ["server_peak_rss", "register_peak_rss", "fetch_peak_rss"] {
        assert!(m[k].as_u64().unwrap() > 1 << 20, "{k}: {}", m[k]);
    }
}
