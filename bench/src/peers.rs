//! A peer in the same run (`--peers`): BuildGrid (PyPI `buildgrid`, a REAPI CAS server
//! with its own client, installed by `bench/run --peers` into a virtual environment) on
//! the same tree, on the same machine, in the same run: `bgd cas upload-dir` into a fresh
//! CAS on disk storage, and `bgd cas download-dir` of it into an empty directory, each
//! timed like `register` and `fetch` cold, and reported as ratios to them.

use crate::process::{sync_disks, Result};
use crate::report::{Figure, Sample};
use serde::Serialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    /// `BuildGrid 0.4.4`
    pub name: String,
    pub upload: Figure,
    pub download: Figure,
}

/// A `bgd server` with one CAS (and ByteStream) on disk storage, killed on drop.
struct BuildGrid {
    child: Child,
    url: String,
}

impl BuildGrid {
    fn start(bgd: &Path, dir: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cas = dir.join("cas");
        std::fs::create_dir_all(&cas)?;
        let config = dir.join("buildgrid.yml");
        std::fs::write(
            &config,
            format!(
                "server:\n  - !channel\n    address: \"127.0.0.1:{port}\"\n    insecure-mode: true\n\
                 authorization:\n  method: none\n\
                 storages:\n  - !disk-storage &cas\n    path: {}\n\
                 instances:\n  - name: \"\"\n    services:\n      - !cas\n        storage: *cas\n      - !bytestream\n        storage: *cas\n",
                cas.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("buildgrid.log"))?;
        let child = Command::new(bgd)
            .args(["server", "start"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bgd.display()))?;
        let mut server = BuildGrid {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!(
                    "bgd server exited ({status}); see {}",
                    dir.join("buildgrid.log").display()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err("bgd server did not listen within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// Runs `bgd cas --remote URL ARGS`, timed from spawn to exit; its stdout and stderr.
    fn cas(&self, bgd: &Path, args: &[&str]) -> Result<(Duration, String)> {
        let t = Instant::now();
        let out = Command::new(bgd)
            .args(["cas", "--remote", &self.url])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        let elapsed = t.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("bgd cas {args:?} failed: {text}").into());
        }
        Ok((elapsed, text))
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bgd`'s version, from its virtual environment's `pip` metadata (`bgd` has no
/// `--version`).
fn version(bgd: &Path) -> String {
    let python = bgd.with_file_name("python");
    Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('buildgrid'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// The root directory's digest in `bgd cas upload-dir TREE`'s output:
/// `Success: Pushed path=[TREE] with digest=[HASH/SIZE]` (one line per directory).
fn root_digest(output: &str, tree: &str) -> Option<String> {
    let marker = format!("path=[{tree}] with digest=[");
    output
        .lines()
        .find_map(|l| l.split(&marker).nth(1))
        .and_then(|rest| rest.split(']').next())
        .map(str::to_string)
}

/// Upload and download of `tree` through BuildGrid, `runs` times after a warm-up, each
/// into a fresh CAS and a fresh directory. `clear` empties a directory the way the
/// transfer phase does (see `Bench::discard`); `check` compares a downloaded tree with
/// the source.
pub fn buildgrid(
    bgd: &Path,
    tree: &Path,
    work: &Path,
    runs: u32,
    clear: impl Fn(&Path) -> Result<()>,
    check: impl Fn(&Path) -> Result<()>,
) -> Result<Peer> {
    let tree_arg = tree.to_str().ok_or("tree path is not UTF-8")?;
    let dir = work.join("buildgrid");
    let out = work.join("buildgrid-out");
    let (mut uploads, mut downloads) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        clear(&dir)?;
        clear(&out)?;
        sync_disks();
        let server = BuildGrid::start(bgd, &dir)?;
        let (up, text) = server.cas(bgd, &["upload-dir", tree_arg])?;
        let digest = root_digest(&text, tree_arg)
            .ok_or_else(|| format!("bgd upload-dir printed no root digest: {text}"))?;
        sync_disks();
        let out_arg = out.to_str().ok_or("work dir is not UTF-8")?;
        let (down, _) = server.cas(bgd, &["download-dir", &digest, out_arg])?;
        if i == 0 {
            check(&out)?;
        } else {
            uploads.push(Sample::time(up));
            downloads.push(Sample::time(down));
        }
    }
    clear(&dir)?;
    clear(&out)?;
    Ok(Peer {
        name: format!("BuildGrid {}", version(bgd)),
        upload: Figure::new(&uploads),
        download: Figure::new(&downloads),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_digest_is_the_tree_s_own_line() {
        let out = "Success: Pushed path=[/w/tree/sub] with digest=[ed04/79]\n\
                   Success: Pushed path=[/w/tree/a.bin] with digest=[5a0d/3000000]\n\
                   Success: Pushed path=[/w/tree] with digest=[3363/326]\n";
        assert_eq!(
            super::root_digest(out, "/w/tree").as_deref(),
            Some("3363/326")
        );
        assert_eq!(super::root_digest(out, "/w/other"), None);
    }
}
