//! The release-pipeline story end to end: the simulation drives the real CLI binary against
//! a real server process; this test checks, step by step, what ran and what was skipped.

use serde_json::Value;
use stagecache_tests::{output_within, test_timeout, workspace_bin};
use std::collections::HashSet;

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

const VALIDATIONS: [&str; 7] = [
    "Validation",
    "Validation Override",
    "Source Code Validation",
    "Source Code Validation Override",
    "Required Validation",
    "Required Validation Override",
    "Publish Post-Signing Assets",
];

#[test]
fn the_story_runs_only_what_it_must() {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = output_within(
        std::process::Command::new(workspace_bin("examples/release-pipeline")).args([
            "--scale",
            "0.002",
            "--report",
            report.path().to_str().unwrap(),
        ]),
        test_timeout(),
        "the release-pipeline simulation",
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 9);
    let prep = [
        "Prep Ring",
        "Prep Ring Override",
        "Signing Ring",
        "SBOM Generation",
        "SBOM Generation Override",
        "Kick Off Validate-Publish",
    ];

    // Prepare-Artifacts runs everything once; its re-run reuses everything, signing included.
    assert_eq!(names(&steps[0]["ran"]), prep);
    assert_eq!(names(&steps[1]["skipped"]), prep);
    assert!(names(&steps[1]["ran"]).is_empty());

    // Validate-Publish fails in Publish Signed Assets after the validations.
    assert_eq!(names(&steps[2]["ran"]), VALIDATIONS);
    assert_eq!(steps[2]["failed"], "Publish Signed Assets");
    assert_eq!(names(&steps[2]["not_run"]).len(), 10);

    // The re-run skips what succeeded and runs the failed stage and everything after it.
    assert_eq!(names(&steps[3]["skipped"]), VALIDATIONS);
    let rerun = names(&steps[3]["ran"]);
    assert_eq!(rerun.len(), 11);
    assert_eq!(rerun[0], "Publish Signed Assets");
    assert!(steps[3]["failed"].is_null());
    assert!(steps[3]["cached_hours"].as_f64().unwrap() < steps[3]["full_hours"].as_f64().unwrap());

    // The test namespace runs everything (nothing of prod counts there).
    assert_eq!(steps[4]["namespace"], "test");
    assert_eq!(names(&steps[4]["ran"]).len(), 18);

    // Forced re-sign: signing and what was forced after it run; prep is reused.
    assert_eq!(
        names(&steps[5]["skipped"]),
        ["Prep Ring", "Prep Ring Override"]
    );
    assert_eq!(names(&steps[5]["ran"]), prep[2..]);
    // New bits: Validate-Publish has nothing to skip any more.
    assert_eq!(names(&steps[6]["ran"]), VALIDATIONS);
    assert!(names(&steps[6]["skipped"]).is_empty());
    assert_eq!(steps[6]["failed"], "Publish Signed Assets");

    // Two concurrent re-runs: exactly one publishes.
    let published: Vec<bool> = steps[7..9]
        .iter()
        .map(|s| names(&s["ran"]).contains(&"Publish Signed Assets".to_string()))
        .collect();
    assert_eq!(published.iter().filter(|p| **p).count(), 1, "{published:?}");
    for s in &steps[7..9] {
        assert_eq!(names(&s["skipped"])[..7], VALIDATIONS);
    }

    // Each asset is published exactly once per set of bits: 8 assets, signed twice.
    let log = names(&doc["publish_log"]);
    let distinct: HashSet<&String> = log.iter().collect();
    assert_eq!(log.len(), 16, "{log:?}");
    assert_eq!(distinct.len(), 16, "an asset was published twice: {log:?}");
}
