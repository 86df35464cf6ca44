//! Errors that a grpc-core client receives (issue 16): Python's `grpcio` (installed by
//! `scripts/ci-deps` into a virtual environment) sends values far over the bounds — a
//! 20,000-byte ref name, a 1 MB namespace and digest hash, a 1,000-stage cycle, 100,000
//! stages, 100,001 digests — and must receive the server's `INVALID_ARGUMENT` with its
//! message, not grpc-core's own `RESOURCE_EXHAUSTED` for a status too large to read.

use stagecache_tests::{output_within, test_timeout, ServerProcess};
use std::path::PathBuf;

/// The Python with `grpcio`: `STAGECACHE_GRPC_PYTHON`, else where `scripts/ci-deps` puts it.
fn grpc_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAGECACHE_GRPC_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/stagecache/tools/grpc-venv/bin/python");
    p.exists().then_some(p)
}

#[test]
fn a_grpc_core_client_receives_every_refusal() {
    let Some(python) = grpc_python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcio is not installed (scripts/ci-deps installs it); CI must run this test"
        );
        eprintln!("SKIPPED: grpcio is not installed; run scripts/ci-deps");
        return;
    };
    let server = ServerProcess::start_fresh();
    let addr = server.url().trim_start_matches("http://").to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc_core/bad_input.py");
    let out = output_within(
        std::process::Command::new(&python).arg(&script).arg(&addr),
        test_timeout(),
        "python bad_input.py",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let outcomes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 6, "{outcomes:?}\n{stderr}");
    for o in &outcomes {
        let details = o["details"].as_str().unwrap();
        assert_eq!(o["code"], "INVALID_ARGUMENT", "{o}");
        assert!(
            !details.is_empty() && details.len() < 4096,
            "{}: {} bytes",
            o["case"],
            details.len()
        );
    }
    let said = |case: &str| {
        outcomes
            .iter()
            .find(|o| o["case"].as_str().unwrap().starts_with(case))
            .map(|o| o["details"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        said("refs get: 20,000").contains("20,000 bytes"),
        "{}",
        said("refs get: 20,000")
    );
    assert!(
        said("ledger plan: a 1,000").contains("cycle"),
        "{}",
        said("ledger plan: a 1,000")
    );
    assert!(
        said("cas find missing").contains("100,001"),
        "{}",
        said("cas find missing")
    );
}
