//! Ledger commands of the `stagecache` binary against the real server binary, including a
//! SIGKILL of the server between an acknowledged record and the next read.

use stagecache_tests::{
    pipeline_file, pseudo_random, within, workspace_bin, write_file, ServerProcess,
};
use std::process::Output;
use std::time::Duration;

async fn cli(server: &ServerProcess, ns: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(workspace_bin("stagecache"));
    cmd.args(["--server", &server.url(), "--namespace", ns])
        .args(args)
        .env_remove("STAGECACHE_CLAIM_TOKEN")
        .env_remove("STAGECACHE_HOLDER")
        .env_remove("GITHUB_OUTPUT")
        .env_remove("STAGECACHE_FORMAT")
        .env("STAGECACHE_ACTOR", "ci-test");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // `wait` runs for as long as its --timeout; anything else returns in seconds.
    let run = cmd.kill_on_drop(true).output();
    within(Duration::from_secs(120), "stagecache", run)
        .await
        .expect("run stagecache")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&out(o)).unwrap_or_else(|e| panic!("{e}: {:?} / {:?}", out(o), err(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_plan_claim_wait_and_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data.path());
    server.client("prod").await; // wait until it serves
    let assets = tempfile::tempdir().unwrap();
    write_file(assets.path(), "a.nupkg", &pseudo_random(3, 50_000), false);
    let dir = assets.path().to_str().unwrap();
    let o = cli(
        &server,
        "prod",
        &["register", dir, "--ref", "bar/12345"],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let vp = pipeline_file("validate-publish.stages.yaml");

    // Nothing ran yet: the plan runs the roots, blocks nothing (all selected).
    let o = cli(
        &server,
        "prod",
        &["--json", "plan", "--ref", "bar/12345", "--stages", &vp],
        &[],
    )
    .await;
    let plan = json(&o);
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 18);
    assert_eq!(stages[0]["name"], "Validation");
    assert_eq!(stages[0]["decision"], "run");
    assert!(stages
        .iter()
        .all(|s| s["decision"] == "run" && s["reason"].is_string()));

    let o = cli(
        &server,
        "prod",
        &[
            "record",
            "--ref",
            "bar/12345",
            "--stage",
            "Required Validation",
            "--status",
            "succeeded",
            "--bar-build-id",
            "12345",
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));

    // The acknowledged record survives a SIGKILL of the server.
    server.crash_and_restart();
    server.client("prod").await;
    let o = cli(
        &server,
        "prod",
        &["--json", "status", "--ref", "bar/12345"],
        &[],
    )
    .await;
    let st = json(&o);
    assert_eq!(st["results"][0]["stage"], "Required Validation");
    assert_eq!(st["results"][0]["status"], "succeeded");
    assert_eq!(st["results"][0]["bar_build_id"], "12345");
    assert_eq!(st["results"][0]["actor"], "ci-test");

    // Claims: granted (token on stdout), refused naming the holder, released by the
    // holder's final record, then "already succeeded".
    let claim = [
        "claim",
        "--ref",
        "bar/12345",
        "--stage",
        "Publish Signed Assets",
        "--ttl",
        "600",
    ];
    let o = cli(
        &server,
        "prod",
        &[&claim[..], &["--holder", "run-a"]].concat(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let token = out(&o);
    assert_eq!(token.len(), 32);
    let o = cli(
        &server,
        "prod",
        &[&claim[..], &["--holder", "run-b"]].concat(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(4));
    assert!(err(&o).contains("claimed by run-a"), "{}", err(&o));
    // The holder renews (token from the environment, as a later pipeline step has it); a
    // wrong token renews nothing.
    let held = ["--ref", "bar/12345", "--stage", "Publish Signed Assets"];
    let o = cli(
        &server,
        "prod",
        &[&["--json", "claim", "renew"][..], &held, &["--ttl", "900"]].concat(),
        &[("STAGECACHE_CLAIM_TOKEN", &token)],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(json(&o)["holder"], "run-a");
    let o = cli(
        &server,
        "prod",
        &[
            &["claim", "renew"][..],
            &held,
            &["--ttl", "900", "--token", "not-the-token"],
        ]
        .concat(),
        &[],
    )
    .await;
    assert!(!o.status.success(), "a wrong token renewed the claim");
    // Release and take again, then keep going with the new holder's token.
    let o = cli(
        &server,
        "prod",
        &[
            &["--json", "claim", "release"][..],
            &held,
            &["--token", &token],
        ]
        .concat(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(json(&o)["released"], true);
    let o = cli(
        &server,
        "prod",
        &[&claim[..], &["--holder", "run-a"]].concat(),
        &[],
    )
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "released, so granted again: {}",
        err(&o)
    );
    let token = out(&o);
    let publish = [
        "record",
        "--ref",
        "bar/12345",
        "--stage",
        "Publish Signed Assets",
        "--status",
        "succeeded",
    ];
    let o = cli(&server, "prod", &publish, &[]).await;
    assert_eq!(
        o.status.code(),
        Some(4),
        "a non-holder cannot record: {}",
        err(&o)
    );
    let o = cli(
        &server,
        "prod",
        &publish,
        &[("STAGECACHE_CLAIM_TOKEN", &token)],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(
        &server,
        "prod",
        &[&claim[..], &["--holder", "run-b"]].concat(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));

    // wait: a finished stage returns at once; a ref that never comes times out.
    let o = cli(
        &server,
        "prod",
        &[
            "wait",
            "--stage",
            "Required Validation",
            "--ref",
            "bar/12345",
            "--timeout",
            "10",
        ],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = cli(
        &server,
        "prod",
        &["wait", "--ref", "bar/never", "--timeout", "1"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(9), "{}", err(&o));

    // The test namespace does not see prod's results.
    let shown = json(
        &cli(
            &server,
            "prod",
            &["--json", "show", "--ref", "bar/12345"],
            &[],
        )
        .await,
    );
    let manifest = shown["manifest"].as_str().unwrap().to_string();
    let o = cli(
        &server,
        "test",
        &["--json", "status", "--subject", &manifest],
        &[],
    )
    .await;
    assert_eq!(json(&o)["results"].as_array().unwrap().len(), 0);
    let o = cli(
        &server,
        "prod",
        &["--json", "status", "--subject", &manifest],
        &[],
    )
    .await;
    assert_eq!(json(&o)["results"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_resign_and_bad_stage_files() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path());
    server.client("prod").await;
    let unsigned = tempfile::tempdir().unwrap();
    write_file(unsigned.path(), "u.dll", b"unsigned", false);
    let signed = tempfile::tempdir().unwrap();
    write_file(signed.path(), "u.dll", b"signed", false);
    let u = out(&cli(
        &server,
        "prod",
        &[
            "register",
            unsigned.path().to_str().unwrap(),
            "--ref",
            "build/1",
        ],
        &[],
    )
    .await);
    let s = out(&cli(
        &server,
        "prod",
        &[
            "register",
            signed.path().to_str().unwrap(),
            "--ref",
            "bar/1",
        ],
        &[],
    )
    .await);
    let pa = pipeline_file("prepare-artifacts.stages.yaml");
    for stage in ["Prep Ring", "Prep Ring Override"] {
        let o = cli(
            &server,
            "prod",
            &[
                "record",
                "--subject",
                &u,
                "--stage",
                stage,
                "--status",
                "succeeded",
            ],
            &[],
        )
        .await;
        assert!(o.status.success(), "{}", err(&o));
    }
    let o = cli(
        &server,
        "prod",
        &[
            "record",
            "--subject",
            &u,
            "--stage",
            "Signing Ring",
            "--status",
            "succeeded",
            "--outputs",
            &s,
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(
        &server,
        "prod",
        &[
            "--json",
            "status",
            "--subject",
            &u,
            "--stage",
            "Signing Ring",
        ],
        &[],
    )
    .await;
    assert_eq!(json(&o)["results"][0]["outputs"], s.as_str());

    let o = cli(
        &server,
        "prod",
        &["--json", "plan", "--subject", &u, "--stages", &pa],
        &[],
    )
    .await;
    let decisions: Vec<String> = json(&o)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["decision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(decisions, ["skip", "skip", "skip", "run", "run", "run"]);

    let o = cli(
        &server,
        "prod",
        &[
            "--json",
            "plan",
            "--subject",
            &u,
            "--stages",
            &pa,
            "--force-resign",
            "--reason",
            "key rotation",
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("forced re-sign: invalidated Signing Ring"),
        "{}",
        err(&o)
    );
    let plan = json(&o);
    assert_eq!(plan["stages"][2]["name"], "Signing Ring");
    assert_eq!(plan["stages"][2]["decision"], "run");
    let o = cli(
        &server,
        "prod",
        &[
            "--json",
            "status",
            "--subject",
            &u,
            "--stage",
            "Signing Ring",
        ],
        &[],
    )
    .await;
    assert!(
        json(&o)["results"].as_array().unwrap().is_empty(),
        "the old signed set is no longer returned"
    );
    let o = cli(
        &server,
        "prod",
        &[
            "--json",
            "history",
            "--subject",
            &u,
            "--stage",
            "Signing Ring",
        ],
        &[],
    )
    .await;
    let h = json(&o);
    assert_eq!(h["results"][0]["status"], "invalidated");
    assert_eq!(h["results"][0]["reason"], "key rotation");
    assert_eq!(h["results"][0]["actor"], "ci-test");

    // Bad stage files: a cycle, an unknown dependency, an unknown key. One line, exit 2.
    let bad = tempfile::tempdir().unwrap();
    let cases = [
        (
            "stages:\n  - name: a\n    depends_on: [b]\n  - name: b\n    depends_on: [a]\n",
            "dependency cycle",
        ),
        (
            "stages:\n  - name: a\n    depends_on: [zz]\n",
            "depends_on \"zz\"",
        ),
        (
            "stages:\n  - name: a\n    needs: [b]\n",
            "unknown field `needs`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = bad.path().join(format!("{i}.yaml"));
        std::fs::write(&f, text).unwrap();
        let o = cli(
            &server,
            "prod",
            &["plan", "--subject", &u, "--stages", f.to_str().unwrap()],
            &[],
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{}", err(&o));
        assert!(err(&o).contains(want), "{}", err(&o));
        assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    }
    let o = cli(
        &server,
        "prod",
        &["plan", "--ref", "bar/none", "--stages", &pa],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_output_formats_are_exact() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path());
    server.client("prod").await;
    let assets = tempfile::tempdir().unwrap();
    write_file(assets.path(), "x.nupkg", b"x", false);
    let dir = assets.path().to_str().unwrap();

    // GitHub Actions: NAME=VALUE lines appended to $GITHUB_OUTPUT.
    let gh = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(gh.path(), "earlier=kept\n").unwrap();
    let gh_path = gh.path().to_str().unwrap();
    let o = cli(
        &server,
        "prod",
        &[
            "--format",
            "github-actions",
            "register",
            dir,
            "--ref",
            "bar/1",
        ],
        &[("GITHUB_OUTPUT", gh_path)],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let manifest = out(&o);
    let written = std::fs::read_to_string(gh.path()).unwrap();
    assert_eq!(
        written,
        format!("earlier=kept\nmanifest={manifest}\nfiles=1\nbytes=1\nuploaded_bytes=1\n")
    );

    // Azure Pipelines: one output variable per stage and the list to run.
    let o = cli(
        &server,
        "prod",
        &[
            "record",
            "--ref",
            "bar/1",
            "--stage",
            "Prep Ring",
            "--status",
            "succeeded",
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let pa = pipeline_file("prepare-artifacts.stages.yaml");
    let o = cli(
        &server,
        "prod",
        &[
            "--format",
            "azure-pipelines",
            "plan",
            "--ref",
            "bar/1",
            "--stages",
            &pa,
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let expected = [
        "##vso[task.setvariable variable=run_prep_ring;isOutput=true]false",
        "##vso[task.setvariable variable=run_prep_ring_override;isOutput=true]true",
        "##vso[task.setvariable variable=run_signing_ring;isOutput=true]true",
        "##vso[task.setvariable variable=run_sbom_generation;isOutput=true]true",
        "##vso[task.setvariable variable=run_sbom_generation_override;isOutput=true]true",
        "##vso[task.setvariable variable=run_kick_off_validate_publish;isOutput=true]true",
        "##vso[task.setvariable variable=stages_to_run;isOutput=true]Prep Ring Override,Signing Ring,SBOM Generation,SBOM Generation Override,Kick Off Validate-Publish",
    ];
    assert_eq!(out(&o).lines().collect::<Vec<_>>(), expected);
    let o = cli(
        &server,
        "prod",
        &["--format", "azure-pipelines", "status", "--ref", "bar/1"],
        &[],
    )
    .await;
    assert_eq!(
        out(&o),
        "##vso[task.setvariable variable=status_prep_ring;isOutput=true]succeeded"
    );

    // An unknown format is a usage error (exit 2); github-actions outside GitHub is exit 2.
    let o = cli(
        &server,
        "prod",
        &["--format", "yaml", "status", "--ref", "bar/1"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("invalid value 'yaml'"), "{}", err(&o));
    let o = cli(
        &server,
        "prod",
        &["--format", "github-actions", "status", "--ref", "bar/1"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("GITHUB_OUTPUT is not set"), "{}", err(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_stats_builds_and_graph() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path());
    server.client("prod").await;
    let assets = tempfile::tempdir().unwrap();
    write_file(assets.path(), "a.nupkg", b"aa", false);
    write_file(assets.path(), "b/c.zip", b"ccc", false);
    let dir = assets.path().to_str().unwrap();
    let manifest = out(&cli(
        &server,
        "prod",
        &["register", dir, "--ref", "bar/12345"],
        &[],
    )
    .await);
    let rec = |stage: &'static str, status: &'static str, build: &'static str| {
        [
            "record",
            "--ref",
            "bar/12345",
            "--stage",
            stage,
            "--status",
            status,
            "--build-id",
            build,
        ]
    };
    for args in [
        rec("Required Validation", "succeeded", "1"),
        rec("Validation", "failed", "2"),
        rec("Required Validation Override", "succeeded", "2"),
        rec("Publish Signed Assets", "started", "2"),
    ] {
        let o = cli(&server, "prod", &args, &[]).await;
        assert!(o.status.success(), "{}", err(&o));
    }

    let st = json(&cli(&server, "prod", &["--json", "stats"], &[]).await);
    assert_eq!(st["blobs"], 3, "two files and the manifest");
    assert_eq!(st["manifests"], 1);
    assert_eq!(st["refs"], 1);
    assert_eq!(st["ledger_records"], 4);
    let test_ns = json(&cli(&server, "test", &["--json", "stats"], &[]).await);
    assert_eq!(test_ns["ledger_records"], 0);

    let b = json(&cli(&server, "prod", &["--json", "builds", "bar/"], &[]).await);
    assert_eq!(b["builds"][0]["ref"], "bar/12345");
    assert_eq!(b["builds"][0]["manifest"], manifest.as_str());
    assert_eq!(
        (
            b["builds"][0]["files"].as_u64(),
            b["builds"][0]["bytes"].as_u64()
        ),
        (Some(2), Some(5))
    );

    let vp = pipeline_file("validate-publish.stages.yaml");
    let table = out(&cli(
        &server,
        "prod",
        &["status", "--ref", "bar/12345", "--stages", &vp],
        &[],
    )
    .await);
    let row = |stage: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{stage}  ")))
            .unwrap_or_else(|| panic!("no row {stage}:\n{table}"));
        line[stage.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(table.lines().count(), 19, "{table}");
    assert_eq!(
        row("Required Validation Override")[..3],
        ["succeeded", "1", "2"]
    );
    assert_eq!(row("Publish Signed Assets"), ["started", "1", "2", "-"]);
    assert_eq!(row("VS Insertion Ring"), ["not", "run"]);
    let g = out(&cli(
        &server,
        "prod",
        &["graph", "--ref", "bar/12345", "--stages", &vp],
        &[],
    )
    .await);
    assert!(g.starts_with("flowchart TD"), "{g}");
    for line in [
        "s0[\"Validation\"]:::failed",
        "s4[\"Required Validation\"]:::skipped",
        "s5[\"Required Validation Override\"]:::succeeded",
        "s7[\"Publish Signed Assets\"]:::running",
        "s8[\"VS Insertion Ring\"]:::notrun",
        "s5 --> s7",
        "s11 --> s12",
        "s3 --> s11",
    ] {
        assert!(
            g.lines().any(|l| l.trim() == line),
            "missing {line:?} in\n{g}"
        );
    }
}
