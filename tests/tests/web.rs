//! The web page of the real server binary (`--web-listen`), over HTTP: the seed story
//! (two builds, a failure and its re-run, a success reused from an earlier run, a forced
//! re-sign, a claim) read back from every page, names that look like markup escaped on
//! every page, and 404/400 pages that say what was wrong.

use stagecache_client::stages::StageFile;
use stagecache_client::Client;
use stagecache_proto::v1::{ClaimRequest, RecordRequest, StageStatus};
use stagecache_proto::Digest;
use stagecache_tests::{write_file, ServerProcess};
use std::path::Path;

const MARKUP_STAGE: &str = "<b>Sign & \"Ship\"</b>";
const MARKUP_PATH: &str = "odd/<i>&'x'\".txt";
const MARKUP_ACTOR: &str = "eve <e@x> & \"co\"";

fn pipelines() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pipelines")
}

/// The two pipelines' stage files plus one whose stage names look like markup.
fn stage_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "validate-publish.stages.yaml",
        "prepare-artifacts.stages.yaml",
    ] {
        std::fs::copy(pipelines().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("markup.stages.yaml"),
        "stages:\n  - name: '<b>Sign & \"Ship\"</b>'\n  - name: \"Publish 'it'\"\n    depends_on: ['<b>Sign & \"Ship\"</b>']\n",
    )
    .unwrap();
    dir
}

fn rec(subject: Digest, stage: &str, status: StageStatus, build: &str) -> RecordRequest {
    RecordRequest {
        subject: Some(subject.to_proto()),
        stage: stage.into(),
        status: status as i32,
        bar_build_id: "12345".into(),
        build_id: build.into(),
        run_url: format!("https://ci.example/{build}"),
        actor: "pipeline".into(),
        ..Default::default()
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Asserts a page names nothing that looks like markup unescaped.
fn assert_escaped(page: &str) {
    for raw in ["<b>Sign", "<i>&", "<e@x>", "& \"co\"", "'x'\""] {
        assert!(!page.contains(raw), "unescaped {raw:?} in:\n{page}");
    }
}

/// Rows of `<tr class="{class}" ...>` in a page.
fn rows<'a>(page: &'a str, class: &str) -> Vec<&'a str> {
    let open = format!("<tr class=\"{class}\"");
    page.match_indices(&open)
        .map(|(i, _)| {
            let end = page[i..].find("</tr>").map_or(page.len(), |e| i + e);
            &page[i..end]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_seed_story_escaped() {
    let stages = stage_dir();
    let server = ServerProcess::start_fresh_with_args(&[
        "--web-listen",
        "127.0.0.1:0",
        "--web-stage-files",
        stages.path().to_str().unwrap(),
    ]);
    let web = server.web_url();
    let client: Client = server.client("prod").await;

    // Two builds: bar/100 is set A; bar/101 was set A, then set B (signed again).
    let a = tempfile::tempdir().unwrap();
    write_file(a.path(), "pkg.nupkg", b"unsigned-ish bits", false);
    write_file(a.path(), "tool.sh", b"#!/bin/sh\n", false);
    write_file(a.path(), "gone.txt", b"bye", false);
    let b = tempfile::tempdir().unwrap();
    write_file(b.path(), "pkg.nupkg", b"signed bits, longer", false);
    write_file(b.path(), "tool.sh", b"#!/bin/sh\n", true);
    write_file(b.path(), "new.zip", b"fresh zip", false);
    write_file(b.path(), MARKUP_PATH, b"markup named", false);
    let opts = Default::default();
    let set_a = client
        .register(a.path(), "bar/100", &opts)
        .await
        .unwrap()
        .manifest;
    client.register(a.path(), "bar/101", &opts).await.unwrap();
    let set_b = client
        .register(b.path(), "bar/101", &opts)
        .await
        .unwrap()
        .manifest;

    // The story on set B: Required Validation succeeded in build 900 (reused later);
    // Validation failed in 900 and succeeded on the re-run in 901; Source Code Validation
    // is running; signing succeeded, then a forced re-sign invalidated it.
    use StageStatus::*;
    for (stage, status, build) in [
        ("Required Validation", Started, "900"),
        ("Required Validation", Succeeded, "900"),
        ("Validation", Started, "900"),
        ("Validation", Failed, "900"),
        ("Validation", Started, "901"),
        ("Validation", Succeeded, "901"),
        ("Source Code Validation", Started, "901"),
        ("Signing Ring", Succeeded, "800"),
    ] {
        client
            .record(rec(set_b, stage, status, build))
            .await
            .unwrap();
    }
    let mut markup = rec(set_b, MARKUP_STAGE, Succeeded, "901");
    markup.actor = MARKUP_ACTOR.into();
    client.record(markup).await.unwrap();
    let audit = client
        .force_resign(set_b, "Signing Ring", "cert rotated <urgent> & \"now\"")
        .await
        .unwrap();
    assert!(audit.is_some());
    client
        .claim(ClaimRequest {
            subject: Some(set_b.to_proto()),
            stage: "Publish Signed Assets".into(),
            holder: "publisher-1".into(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap();

    // Builds: newest first, with files.
    let (status, page) = get(&format!("{web}/ns/prod/builds?prefix=bar/")).await;
    assert_eq!(status, 200, "{page}");
    let builds = rows(&page, "build");
    assert_eq!(builds.len(), 2, "{page}");
    assert!(builds[0].contains("data-ref=\"bar/101\""), "{page}");
    assert!(builds[1].contains("data-ref=\"bar/100\""), "{page}");
    assert!(
        builds[0].contains("<td class=\"num\">4</td>"),
        "{}",
        builds[0]
    );
    assert!(page.contains(&format!("/manifest/{}/{}", set_b.hash_hex(), set_b.size())));

    // A build: graph nodes and edges, states, attempts, CI links, plan reasons, claims.
    let (status, page) = get(&format!("{web}/ns/prod/ref/bar/101")).await;
    assert_eq!(status, 200, "{page}");
    assert_escaped(&page);
    let file = StageFile::load(&pipelines().join("validate-publish.stages.yaml")).unwrap();
    let edges: usize = file.stages.iter().map(|s| s.depends_on.len()).sum();
    assert_eq!(page.matches("<g class=\"node").count(), file.stages.len());
    assert_eq!(page.matches("<path class=\"edge\"").count(), edges);
    assert!(page.contains("data-from=\"Validation\" data-to=\"Validation Override\""));
    let stage_row = |name: &str| {
        let rs: Vec<&str> = rows(&page, "stage")
            .into_iter()
            .filter(|r| r.contains(&format!("data-stage=\"{name}\"")))
            .collect();
        assert_eq!(rs.len(), 1, "{name}: {page}");
        rs[0].to_string()
    };
    let v = stage_row("Validation");
    assert!(v.contains("data-state=\"succeeded\""), "{v}");
    assert!(v.contains("<td class=\"num\">2</td>"), "attempt 2: {v}");
    assert!(v.contains("href=\"https://ci.example/901\""), "{v}");
    assert!(v.contains("SKIP"), "{v}");
    let r = stage_row("Required Validation");
    assert!(r.contains("data-state=\"skipped\""), "{r}");
    assert!(
        r.contains("build 900"),
        "the plan's reason names the run: {r}"
    );
    assert!(stage_row("Source Code Validation").contains("data-state=\"running\""));
    let o = stage_row("Validation Override");
    assert!(
        o.contains("data-state=\"notrun\"") && o.contains("RUN"),
        "{o}"
    );
    let s = stage_row("Staging Ring");
    assert!(
        s.contains("data-state=\"notrun\"") && s.contains("<td>RUN</td>"),
        "{s}"
    );
    assert!(page.contains("data-stage=\"Validation\" data-state=\"succeeded\""));
    let claims = rows(&page, "claim");
    assert_eq!(claims.len(), 1, "{page}");
    assert!(claims[0].contains("Publish Signed Assets") && claims[0].contains("publisher-1"));
    let history = rows(&page, "ref-change");
    assert_eq!(history.len(), 2, "{page}");
    assert!(history[0].contains("diff with previous"), "{}", history[0]);
    assert!(history[1].contains("created"), "{}", history[1]);

    // The other stage file: signing was invalidated by the forced re-sign.
    let (status, page) = get(&format!(
        "{web}/ns/prod/ref/bar/101?stages=prepare-artifacts"
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("data-stage=\"Signing Ring\" data-state=\"notrun\""),
        "{page}"
    );

    // Markup stage names are escaped in the graph, the table and the links.
    let (status, page) = get(&format!("{web}/ns/prod/ref/bar/101?stages=markup")).await;
    assert_eq!(status, 200, "{page}");
    assert_escaped(&page);
    assert!(page.contains("data-stage=\"&lt;b&gt;Sign &amp; &quot;Ship&quot;&lt;/b&gt;\" data-state=\"succeeded\""), "{page}");
    assert!(page.contains("data-to=\"Publish &#39;it&#39;\""), "{page}");
    assert!(
        page.contains("/~stage/%3Cb%3ESign%20%26%20%22Ship%22%3C%2Fb%3E"),
        "{page}"
    );

    // A stage: its full history; the markup stage's page escapes its actor.
    let (status, page) = get(&format!("{web}/ns/prod/ref/bar/101/~stage/Validation")).await;
    assert_eq!(status, 200, "{page}");
    let results = rows(&page, "result");
    assert!(results.len() >= 2, "{page}");
    assert!(
        results[0].contains("data-status=\"succeeded\""),
        "newest first: {page}"
    );
    assert!(results
        .iter()
        .any(|r| r.contains("data-status=\"failed\"") && r.contains("https://ci.example/900")));
    let (status, page) = get(&format!(
        "{web}/ns/prod/ref/bar/101/~stage/%3Cb%3ESign%20%26%20%22Ship%22%3C%2Fb%3E"
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_escaped(&page);
    assert!(
        page.contains("eve &lt;e@x&gt; &amp; &quot;co&quot;"),
        "{page}"
    );

    // The forced re-sign: the invalidation with identity and reason.
    let (status, page) = get(&format!("{web}/ns/prod/ref/bar/101/~stage/Signing%20Ring")).await;
    assert_eq!(status, 200, "{page}");
    let inv = rows(&page, "invalidation");
    assert_eq!(inv.len(), 1, "{page}");
    assert!(
        inv[0].contains("cert rotated &lt;urgent&gt; &amp; &quot;now&quot;"),
        "{}",
        inv[0]
    );
    assert!(
        !inv[0].contains("<td></td><td>cert"),
        "an actor is named: {}",
        inv[0]
    );

    // A manifest: files, filter, the markup path escaped, one file's download.
    let murl = format!("{web}/manifest/{}/{}", set_b.hash_hex(), set_b.size());
    let (status, page) = get(&murl).await;
    assert_eq!(status, 200, "{page}");
    assert_escaped(&page);
    assert_eq!(rows(&page, "file").len(), 4, "{page}");
    assert!(
        page.contains("odd/&lt;i&gt;&amp;&#39;x&#39;&quot;.txt"),
        "{page}"
    );
    let (_, page) = get(&format!("{murl}?q=NUPKG")).await;
    let files = rows(&page, "file");
    assert_eq!(files.len(), 1, "{page}");
    assert!(files[0].contains("pkg.nupkg") && files[0].contains("<td>no</td>"));
    let r = reqwest::get(format!("{murl}/file/pkg.nupkg"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.contains("filename=\"pkg.nupkg\""),
        "{disposition}"
    );
    assert_eq!(&r.bytes().await.unwrap()[..], b"signed bits, longer");
    let r = reqwest::get(format!("{murl}/file/odd/%3Ci%3E%26%27x%27%22.txt"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"markup named");

    // A diff of two refs, and of a digest against a ref.
    let (status, page) = get(&format!("{web}/diff?ns=prod&a=bar/100&b=bar/101")).await;
    assert_eq!(status, 200, "{page}");
    assert_escaped(&page);
    let diff_row = |change: &str, path: &str| {
        page.contains(&format!("data-change=\"{change}\" data-path=\"{path}\""))
    };
    assert!(diff_row("changed", "pkg.nupkg"), "{page}");
    assert!(diff_row("changed", "tool.sh"), "{page}");
    assert!(diff_row("removed", "gone.txt"), "{page}");
    assert!(diff_row("added", "new.zip"), "{page}");
    assert!(
        diff_row("added", "odd/&lt;i&gt;&amp;&#39;x&#39;&quot;.txt"),
        "{page}"
    );
    assert!(
        page.contains("2 added, 1 removed, 2 changed, 0 unchanged"),
        "{page}"
    );
    assert!(page.contains("no → yes"), "{page}");
    let (status, page) = get(&format!("{web}/diff?ns=prod&a={set_a}&b=bar/100")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"identical\""), "{page}");

    // Unknown things: 404 pages that say what was not found; bad input: 400 naming it.
    for (url, code, says) in [
        (
            "/ns/prod/ref/bar/404".to_string(),
            404,
            "ref bar/404 not found in namespace prod".to_string(),
        ),
        (
            "/ns/test/ref/bar/101".into(),
            404,
            "ref bar/101 not found in namespace test".into(),
        ),
        (
            format!("/manifest/{}/5", "0".repeat(64)),
            404,
            format!("manifest {}/5 not found", "0".repeat(64)),
        ),
        (
            format!(
                "/manifest/{}/{}/file/nope.txt",
                set_b.hash_hex(),
                set_b.size()
            ),
            404,
            "file &quot;nope.txt&quot; not found".into(),
        ),
        (
            "/manifest/xyz/5".into(),
            400,
            "manifest digest &quot;xyz/5&quot;".into(),
        ),
        (
            "/ns/prod/ref/bar/101?stages=nope".into(),
            404,
            "stage file &quot;nope&quot; not found".into(),
        ),
        (
            "/ns/prod/ref/bar/101/~stage/No%20Such%20Stage".into(),
            404,
            "stage &quot;No Such Stage&quot; has no results".into(),
        ),
        ("/ns/Bad!/builds".into(), 400, "namespace".into()),
        (
            "/diff?ns=prod&a=bar/100&b=bar/999".into(),
            404,
            "ref bar/999 not found".into(),
        ),
        (
            "/no/such/page".into(),
            404,
            "no page at /no/such/page".into(),
        ),
    ] {
        let (status, page) = get(&format!("{web}{url}")).await;
        assert_eq!(status, code, "{url}: {page}");
        assert!(page.contains(&says), "{url} should say {says:?}: {page}");
        assert!(page.contains("id=\"error\""), "{url}: {page}");
    }
}

/// The figure of issue 14: a build page with the 18-stage graph whose manifest has 10,000
/// files, rendered by the server binary. Ignored by default (it is a measurement):
/// `cargo nextest run --workspace --run-ignored only -E 'test(render_figure)' --no-capture`.
/// Server time is the page's `Server-Timing` header (the server's own render time); the
/// client-seen time adds the loopback round trip and reading the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on purpose"]
async fn render_figure() {
    let server = ServerProcess::start_fresh_with_args(&[
        "--web-listen",
        "127.0.0.1:0",
        "--web-stage-files",
        pipelines().to_str().unwrap(),
    ]);
    let web = server.web_url();
    let client: Client = server.client("prod").await;
    let mut entries = Vec::new();
    for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(1000) {
        let mut items = Vec::new();
        for &i in chunk {
            let data = bytes::Bytes::from(format!("file {i} of the release, some bytes"));
            let d = Digest::of_bytes(&data);
            entries.push(stagecache_proto::ManifestEntry {
                path: format!("pkgs/{:03}/Microsoft.Thing.{i:05}.nupkg", i / 100),
                digest: d,
                executable: false,
            });
            items.push((d, data));
        }
        client.batch_upload(items).await.unwrap();
    }
    let manifest = stagecache_proto::Manifest::from_entries(entries).unwrap();
    let digest = client.put_manifest(&manifest).await.unwrap();
    client
        .set_ref("bar/big", digest, None, "figure")
        .await
        .unwrap();
    let file = StageFile::load(&pipelines().join("validate-publish.stages.yaml")).unwrap();
    for (k, s) in file.stages.iter().enumerate() {
        let status = match k % 4 {
            0 | 1 => StageStatus::Succeeded,
            2 => StageStatus::Failed,
            _ => continue,
        };
        client
            .record(rec(digest, &s.name, status, &format!("{}", 900 + k % 2)))
            .await
            .unwrap();
    }
    let measure = |url: String| async move {
        let http = reqwest::Client::new();
        let (mut server, mut total) = (Vec::new(), Vec::new());
        let mut size = 0;
        for k in 0..53 {
            let t = std::time::Instant::now();
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            // `Server-Timing: page;dur=12.34`: the server's own time for the page.
            let timing = r.headers()["server-timing"].to_str().unwrap().to_string();
            let dur: f64 = timing.strip_prefix("page;dur=").unwrap().parse().unwrap();
            size = r.bytes().await.unwrap().len();
            if k >= 3 {
                server.push(dur);
                total.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        server.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (
            p(&server, 0.5),
            p(&server, 0.9),
            p(&total, 0.5),
            server[server.len() - 1],
            size,
        )
    };
    let build = measure(format!("{web}/ns/prod/ref/bar/big")).await;
    let files = measure(format!(
        "{web}/manifest/{}/{}",
        digest.hash_hex(),
        digest.size()
    ))
    .await;
    for (what, (p50, p90, client_p50, max, size)) in [
        (
            format!("build page ({} stages, 10,000 files)", file.stages.len()),
            build,
        ),
        (
            "manifest page (10,000 files, 5,000 rows shown)".into(),
            files,
        ),
    ] {
        println!(
            "figure: {what}: server p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms; client-seen p50 {client_p50:.1} ms (50 requests); HTML {size} bytes"
        );
        assert!(size < 2 * 1024 * 1024, "{what}: {size} bytes");
    }
}
