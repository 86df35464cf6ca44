//! The web page in a real browser: headless Chromium (Debian package `chromium`) loads the
//! pages from the server binary holding a seed story (a failure and its re-run, a reused
//! success, a forced re-sign) and the test asserts the rendered DOM; screenshots are saved
//! under `<target dir>/web-screenshots/` as artifacts.
//!
//! Without `/usr/bin/chromium` the test says so loudly and passes, unless `CI` is set:
//! under CI it must run (`scripts/ci-deps` installs the browser).

use stagecache_client::Client;
use stagecache_proto::v1::{RecordRequest, StageStatus};
use stagecache_proto::Digest;
use stagecache_tests::{output_within, write_file, ServerProcess};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("STAGECACHE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing and CI is set: the browser test must run under CI (scripts/ci-deps installs it)", path.display());
    }
    eprintln!("\n*** SKIPPED: {} is not installed, so the web page was NOT tested in a browser (apt-get install chromium; under CI this fails) ***\n", path.display());
    None
}

/// `<target dir>/web-screenshots`.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with a fresh profile and no network extras.
fn chromium(bin: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args);
    let out = output_within(&mut cmd, Duration::from_secs(120), "chromium");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rec(subject: Digest, stage: &str, status: StageStatus, build: &str) -> RecordRequest {
    RecordRequest {
        subject: Some(subject.to_proto()),
        stage: stage.into(),
        status: status as i32,
        build_id: build.into(),
        run_url: format!("https://ci.example/{build}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_in_headless_chromium() {
    let Some(bin) = browser() else { return };
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pipelines");
    let server = ServerProcess::start_fresh_with_args(&[
        "--web-listen",
        "127.0.0.1:0",
        "--web-stage-files",
        pipelines.to_str().unwrap(),
    ]);
    let web = server.web_url();
    let client: Client = server.client("prod").await;
    let a = tempfile::tempdir().unwrap();
    write_file(a.path(), "pkg.nupkg", b"first", false);
    let b = tempfile::tempdir().unwrap();
    write_file(b.path(), "pkg.nupkg", b"second, signed", false);
    write_file(b.path(), "<odd> & \"name\".txt", b"x", false);
    client
        .register(a.path(), "bar/1", &Default::default())
        .await
        .unwrap();
    let set = client
        .register(b.path(), "bar/2", &Default::default())
        .await
        .unwrap()
        .manifest;
    use StageStatus::*;
    for (stage, status, build) in [
        ("Required Validation", Succeeded, "900"),
        ("Validation", Failed, "900"),
        ("Validation", Succeeded, "901"),
        ("Signing Ring", Succeeded, "800"),
    ] {
        client.record(rec(set, stage, status, build)).await.unwrap();
    }
    client
        .force_resign(set, "Signing Ring", "certificate rotated")
        .await
        .unwrap();

    let shots = artifacts();
    let pages = [
        ("build", format!("{web}/ns/prod/ref/bar/2")),
        (
            "stage",
            format!("{web}/ns/prod/ref/bar/2/~stage/Signing%20Ring"),
        ),
        ("diff", format!("{web}/diff?ns=prod&a=bar/1&b=bar/2")),
        ("builds", format!("{web}/ns/prod/builds")),
        ("not-found", format!("{web}/ns/prod/ref/bar/404")),
    ];
    let mut doms = std::collections::HashMap::new();
    for (name, url) in &pages {
        let dom = chromium(&bin, &["--dump-dom".into(), url.clone()]);
        let shot = shots.join(format!("{name}.png"));
        chromium(
            &bin,
            &[
                format!("--screenshot={}", shot.display()),
                "--window-size=1400,1000".into(),
                url.clone(),
            ],
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5000,
            "{name}: screenshot"
        );
        doms.insert(*name, dom);
    }

    // The rendered build page: the SVG's nodes with their states, edges, the table.
    let dom = &doms["build"];
    assert!(dom.contains("<svg"), "{dom}");
    let file =
        stagecache_client::stages::StageFile::load(&pipelines.join("validate-publish.stages.yaml"))
            .unwrap();
    let edges: usize = file.stages.iter().map(|s| s.depends_on.len()).sum();
    assert_eq!(
        dom.matches("<g class=\"node").count(),
        file.stages.len(),
        "{dom}"
    );
    assert_eq!(dom.matches("<path class=\"edge\"").count(), edges, "{dom}");
    for (stage, state) in [
        ("Validation", "succeeded"),
        ("Required Validation", "skipped"),
        ("Validation Override", "notrun"),
    ] {
        assert!(
            dom.contains(&format!("data-stage=\"{stage}\" data-state=\"{state}\"")),
            "{stage} {state}: {dom}"
        );
    }
    assert!(dom.contains("href=\"https://ci.example/901\""), "{dom}");
    assert_eq!(dom.matches("<tr class=\"ref-change\"").count(), 1, "{dom}");
    // The stage page: the forced re-sign's invalidation.
    let dom = &doms["stage"];
    assert!(
        dom.contains("<tr class=\"invalidation\"") && dom.contains("certificate rotated"),
        "{dom}"
    );
    // The diff: rows, and a markup-like path rendered as text, not as an element.
    let dom = &doms["diff"];
    assert!(
        dom.contains("data-change=\"changed\" data-path=\"pkg.nupkg\""),
        "{dom}"
    );
    assert!(dom.contains("&lt;odd&gt; &amp; \"name\".txt"), "{dom}");
    assert!(!dom.contains("<odd>"), "{dom}");
    assert!(doms["builds"].contains("data-ref=\"bar/2\""));
    assert!(doms["not-found"].contains("ref bar/404 not found in namespace prod"));
    eprintln!("screenshots in {}", shots.display());
}
