//! The release-pipeline story, simulated against a real stagecache server with the real
//! `stagecache` CLI: Prepare-Artifacts signs and registers BAR 12345; Validate-Publish fails
//! in Publish Signed Assets; the re-run skips what succeeded; a forced re-sign re-runs
//! signing and everything after it; a run in the `test` namespace leaves `prod` untouched;
//! two concurrent re-runs publish once. Stage scripts live in `stages/`.
//!
//! `examples/release-pipeline/run [--scale SECONDS_PER_HOUR] [--report FILE]`

use serde_json::{json, Value};
use stagecache_client::stages::StageFile;
use stagecache_tests::{workspace_bin, ServerProcess};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const SIGNING: &str = "Signing Ring";
const PUBLISH: &str = "Publish Signed Assets";
const ACCOUNT: &str = "account-a";

#[derive(Clone)]
struct Sim {
    url: String,
    bin: PathBuf,
    here: PathBuf,
    work: PathBuf,
    scale: f64,
    steps: Vec<Value>,
}

/// Hours of a duration like `1h30m`, `50m`, `0`.
fn hours(d: &str) -> f64 {
    let mut total = 0.0;
    let mut num = String::new();
    for c in d.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'h' => total += num.parse::<f64>().unwrap_or(0.0),
            'm' => total += num.parse::<f64>().unwrap_or(0.0) / 60.0,
            's' => total += num.parse::<f64>().unwrap_or(0.0) / 3600.0,
            _ => {}
        }
        if c.is_alphabetic() {
            num.clear();
        }
    }
    total
}

/// Longest path through the graph counting only stages in `runs`: the wall time of a run.
fn critical_path(file: &StageFile, runs: &dyn Fn(&str) -> bool) -> f64 {
    let mut finish: HashMap<&str, f64> = HashMap::new();
    for s in &file.stages {
        let start = s
            .depends_on
            .iter()
            .map(|d| finish.get(d.as_str()).copied().unwrap_or(0.0))
            .fold(0.0, f64::max);
        let own = if runs(&s.name) {
            hours(s.duration.as_deref().unwrap_or("0"))
        } else {
            0.0
        };
        finish.insert(&s.name, start + own);
    }
    finish.values().copied().fold(0.0, f64::max)
}

impl Sim {
    fn cli(&self, ns: &str, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
        let o = Command::new(&self.bin)
            .args(["--server", &self.url, "--namespace", ns])
            .args(args)
            .env("STAGECACHE_ACTOR", "release-sim")
            .envs(envs.iter().copied())
            .output()
            .expect("run stagecache");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        )
    }

    fn ok(&self, ns: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
        let (code, out, err) = self.cli(ns, args, envs);
        assert_eq!(code, 0, "stagecache {args:?} failed: {err}");
        out
    }

    fn json(&self, ns: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(ns, &all, &[])).expect("json")
    }

    fn stages_file(&self, name: &str) -> (String, StageFile) {
        let p = self.here.join("../../deploy/pipelines").join(name);
        let f = StageFile::load(&p).expect("stage file");
        (p.to_string_lossy().into_owned(), f)
    }

    fn script(&self, name: &str) -> PathBuf {
        self.here.join("stages").join(name)
    }

    fn sh(&self, script: &str, args: &[&str], fail: Option<&str>) -> bool {
        Command::new(self.script(script))
            .args(args)
            .env("FAIL_STAGE", fail.unwrap_or(""))
            .status()
            .expect("run stage script")
            .success()
    }

    /// Publishes every asset of the ref not yet published to the account; fails half-way
    /// when asked to. Returns whether it finished.
    fn publish(&self, ns: &str, bar: &str, claim_token: &str, fail: bool) -> bool {
        let out = self
            .work
            .join(format!("fetch-{ns}-{}", bar.replace('/', "-")));
        self.ok(
            ns,
            &["fetch", "--ref", bar, "--out", out.to_str().unwrap()],
            &[],
        );
        let manifest = self.json(ns, &["show", "--ref", bar]);
        let entries = manifest["entries"].as_array().unwrap().clone();
        let account = self.work.join(format!("published-{ns}")).join(ACCOUNT);
        for (i, e) in entries.iter().enumerate() {
            if fail && i == entries.len() / 2 {
                println!(
                    "      publish interrupted after {i} of {} assets",
                    entries.len()
                );
                return false;
            }
            let digest = e["digest"].as_str().unwrap();
            let path = e["path"].as_str().unwrap();
            let st = self.json(
                ns,
                &[
                    "status",
                    "--subject",
                    digest,
                    "--stage",
                    PUBLISH,
                    "--target",
                    ACCOUNT,
                ],
            );
            if !st["results"].as_array().unwrap().is_empty() {
                continue; // published by an earlier attempt
            }
            let file = out.join(path);
            assert!(self.sh(
                "publish.sh",
                &[
                    file.to_str().unwrap(),
                    account.to_str().unwrap(),
                    path,
                    digest
                ],
                None
            ));
            self.ok(
                ns,
                &[
                    "record",
                    "--subject",
                    digest,
                    "--stage",
                    PUBLISH,
                    "--target",
                    ACCOUNT,
                    "--status",
                    "succeeded",
                ],
                &[("STAGECACHE_CLAIM_TOKEN", claim_token)],
            );
        }
        true
    }

    /// Runs a pipeline on `subject_ref` the way the templates do: plan, then each RUN stage
    /// records started, runs, records its result; the first failure stops the pipeline.
    fn pipeline(
        &mut self,
        title: &str,
        ns: &str,
        file_name: &str,
        subject_ref: &str,
        fail: Option<&str>,
        extra: &[&str],
    ) -> Value {
        let (path, file) = self.stages_file(file_name);
        let mut args = vec!["plan", "--ref", subject_ref, "--stages", &path];
        args.extend_from_slice(extra);
        let plan = self.json(ns, &args);
        let decisions: HashMap<String, String> = plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["decision"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        println!("\n== {title} [{ns}] {subject_ref}");
        let (mut ran, mut skipped, mut not_run) = (vec![], vec![], vec![]);
        let mut failed: Option<String> = None;
        let started = Instant::now();
        for s in &file.stages {
            let d = decisions[&s.name].as_str();
            if d == "skip" {
                println!("  SKIP  {}", s.name);
                skipped.push(s.name.clone());
                continue;
            }
            if d != "run" || failed.is_some() {
                println!("  ----  {}", s.name);
                not_run.push(s.name.clone());
                continue;
            }
            let record = |status: &str, token: &str, extra: &[&str]| {
                let mut a = vec![
                    "record",
                    "--ref",
                    subject_ref,
                    "--stage",
                    &s.name,
                    "--status",
                    status,
                    "--bar-build-id",
                    "12345",
                ];
                a.extend_from_slice(extra);
                self.ok(ns, &a, &[("STAGECACHE_CLAIM_TOKEN", token)]);
            };
            let secs = hours(s.duration.as_deref().unwrap_or("0")) * self.scale;
            let mut token = String::new();
            if s.name == PUBLISH {
                let holder = format!("{title} ({ns})");
                let (code, out, err) = self.cli(
                    ns,
                    &[
                        "claim",
                        "--ref",
                        subject_ref,
                        "--stage",
                        PUBLISH,
                        "--ttl",
                        "600",
                        "--holder",
                        &holder,
                    ],
                    &[],
                );
                match code {
                    0 => token = out,
                    7 => {
                        println!("  SKIP  {} (another run published it)", s.name);
                        skipped.push(s.name.clone());
                        continue;
                    }
                    _ => {
                        // Another run holds it: wait for its outcome instead of publishing too.
                        println!("  WAIT  {} ({err})", s.name);
                        let (code, _, _) = self.cli(
                            ns,
                            &[
                                "wait",
                                "--ref",
                                subject_ref,
                                "--stage",
                                PUBLISH,
                                "--timeout",
                                "120",
                            ],
                            &[],
                        );
                        if code == 0 {
                            skipped.push(s.name.clone());
                            continue;
                        }
                        failed = Some(s.name.clone());
                        continue;
                    }
                }
            }
            record("started", &token, &[]);
            let ok = match s.name.as_str() {
                SIGNING => {
                    let unsigned = self.work.join("unsigned");
                    let signed = self.work.join("signed");
                    let ok = self.sh(
                        "sign.sh",
                        &[unsigned.to_str().unwrap(), signed.to_str().unwrap()],
                        fail,
                    );
                    if ok {
                        let m = self.ok(
                            ns,
                            &["register", signed.to_str().unwrap(), "--ref", "bar/12345"],
                            &[],
                        );
                        record("succeeded", "", &["--outputs", &m]);
                        println!("  RUN   {} -> signed set {}", s.name, &m[..16]);
                        ran.push(s.name.clone());
                        continue;
                    }
                    false
                }
                PUBLISH => self.publish(ns, subject_ref, &token, fail == Some(PUBLISH)),
                _ => self.sh("stage.sh", &[&s.name, &format!("{secs:.3}")], fail),
            };
            if ok {
                record("succeeded", &token, &[]);
                println!("  RUN   {}", s.name);
                ran.push(s.name.clone());
            } else {
                record("failed", &token, &[]);
                println!("  FAIL  {}", s.name);
                failed = Some(s.name.clone());
            }
        }
        let full = critical_path(&file, &|_| true);
        let cached = critical_path(&file, &|n| {
            ran.iter().any(|r| r == n) || failed.as_deref() == Some(n)
        });
        println!(
            "  a full run takes {full:.2} h of stage time; this run needed {cached:.2} h ({:.1} s simulated)",
            started.elapsed().as_secs_f64()
        );
        let step = json!({"title": title, "namespace": ns, "ref": subject_ref, "ran": ran, "skipped": skipped,
            "not_run": not_run, "failed": failed, "full_hours": full, "cached_hours": cached});
        self.steps.push(step.clone());
        step
    }
}

#[tokio::main]
async fn main() {
    let mut scale = 0.05;
    let mut report: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => {
                scale = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--scale SECONDS_PER_HOUR")
            }
            "--report" => report = args.next().map(PathBuf::from),
            other => panic!("unknown argument {other}; use --scale N or --report FILE"),
        }
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/release-pipeline");
    let temp = tempfile::tempdir().expect("temp dir");
    let work = temp.path().to_path_buf();
    let server = ServerProcess::start_unbounded(&work.join("server-data"));
    server.client("prod").await;
    let mut sim = Sim {
        url: server.url(),
        bin: workspace_bin("stagecache"),
        here,
        work: work.clone(),
        scale,
        steps: vec![],
    };

    // Prepare-Artifacts: unsigned inputs of build 67890, signed and registered as bar/12345.
    for i in 0..8 {
        let p = work
            .join("unsigned")
            .join(format!("packages/Package.{i}.nupkg"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("package {i} contents\n").repeat(100)).unwrap();
    }
    let unsigned = work.join("unsigned");
    sim.ok(
        "prod",
        &[
            "register",
            unsigned.to_str().unwrap(),
            "--ref",
            "build/67890",
        ],
        &[],
    );
    sim.pipeline(
        "Prepare-Artifacts",
        "prod",
        "prepare-artifacts.stages.yaml",
        "build/67890",
        None,
        &[],
    );
    sim.pipeline(
        "Prepare-Artifacts re-run (signing reused)",
        "prod",
        "prepare-artifacts.stages.yaml",
        "build/67890",
        None,
        &[],
    );

    // Validate-Publish: fails in Publish Signed Assets, then the re-run.
    let vp = "validate-publish.stages.yaml";
    sim.pipeline(
        "Validate-Publish",
        "prod",
        vp,
        "bar/12345",
        Some(PUBLISH),
        &[],
    );
    sim.pipeline(
        "Validate-Publish re-run",
        "prod",
        vp,
        "bar/12345",
        None,
        &[],
    );

    // The same pipeline in the test namespace (its own registration of the same signed
    // bits: blobs are shared, refs and ledger are not) leaves prod untouched.
    let signed = work.join("signed");
    sim.ok(
        "test",
        &["register", signed.to_str().unwrap(), "--ref", "bar/12345"],
        &[],
    );
    let before = sim.json("prod", &["status", "--ref", "bar/12345"]);
    sim.pipeline(
        "Validate-Publish (test run)",
        "test",
        vp,
        "bar/12345",
        None,
        &[],
    );
    let after = sim.json("prod", &["status", "--ref", "bar/12345"]);
    assert_eq!(before, after, "the test namespace changed prod's ledger");
    println!("  prod's ledger for bar/12345 is unchanged");

    // Forced re-sign: signing and everything after it run again, on new bits.
    // Forcing a stage never forces its dependents silently: the SBOM of the new bits is
    // forced explicitly, as the template does.
    sim.pipeline(
        "Prepare-Artifacts --force-resign",
        "prod",
        "prepare-artifacts.stages.yaml",
        "build/67890",
        None,
        &[
            "--force-resign",
            "--reason",
            "simulated key rotation",
            "--force",
            "SBOM Generation",
            "--force",
            "SBOM Generation Override",
            "--force",
            "Kick Off Validate-Publish",
        ],
    );
    sim.pipeline(
        "Validate-Publish after re-sign",
        "prod",
        vp,
        "bar/12345",
        Some(PUBLISH),
        &[],
    );

    // Two concurrent re-runs of the failed pipeline: only one publishes.
    let mut handles = Vec::new();
    for n in 0..2 {
        let mut s = Sim {
            steps: vec![],
            ..sim.clone()
        };
        handles.push(std::thread::spawn(move || {
            s.pipeline(
                &format!("concurrent re-run {n}"),
                "prod",
                vp,
                "bar/12345",
                None,
                &[],
            );
            s.steps
        }));
    }
    for h in handles {
        sim.steps.extend(h.join().expect("concurrent run"));
    }
    let log = std::fs::read_to_string(
        work.join("published-prod")
            .join(ACCOUNT)
            .join("publish.log"),
    )
    .unwrap_or_default();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in log.lines() {
        *counts.entry(l).or_default() += 1;
    }
    println!(
        "\npublish log of {ACCOUNT}: {} lines, {} distinct (asset, bits) pairs",
        log.lines().count(),
        counts.len()
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "an asset was published twice:\n{log}"
    );
    let rerun = &sim.steps[3];
    println!(
        "\na full re-run of Validate-Publish takes {:.2} h; the cached re-run took {:.2} h",
        rerun["full_hours"].as_f64().unwrap(),
        rerun["cached_hours"].as_f64().unwrap()
    );
    if let Some(path) = report {
        let doc = json!({"steps": sim.steps, "publish_log": log.lines().collect::<Vec<_>>()});
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).expect("write report");
        println!("report written to {}", path.display());
    }
}
