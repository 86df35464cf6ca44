//! moto's server mode, an S3 emulator (PyPI `moto[server]` 5.2.5, installed by
//! `scripts/ci-deps` into a virtual environment under `~/.cache/stagecache/tools`),
//! started by a test on a port the kernel chooses, with a bucket made for it. The server
//! reaches it as it would reach S3: `AWS_ENDPOINT` and the usual `AWS_*` settings, with
//! `AWS_CONDITIONAL_PUT=etag` so that the lease is updated conditionally (`If-Match`).

use std::path::PathBuf;
use std::process::{Child, Command};

/// Where `moto_server` is: `STAGECACHE_MOTO`, else where `scripts/ci-deps` puts it.
pub fn moto_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAGECACHE_MOTO") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/stagecache/tools/moto-venv/bin/moto_server");
    p.exists().then_some(p)
}

/// A running moto server: started by a test (killed on drop), or already running
/// ([`Moto::at`]).
pub struct Moto {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Moto {
    /// Starts moto, or `None` when it is not installed — which fails the test under CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = moto_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed (scripts/ci-deps installs it); CI must run the S3 tests"
            );
            eprintln!("SKIPPED: moto is not installed; run scripts/ci-deps");
            return None;
        };
        // Werkzeug prints `* Running on http://127.0.0.1:PORT` on stderr.
        let (child, url) = crate::spawn_announcing(
            Command::new(&bin).args(["-H", "127.0.0.1", "-p", "0"]),
            "Running on ",
            true,
        );
        Some(Moto {
            child: Some(child),
            url,
        })
    }

    /// A moto someone else started and stops, at `url`.
    pub fn at(url: &str) -> Self {
        Moto {
            child: None,
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// The environment a server needs to use this emulator as S3.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_CONDITIONAL_PUT", "etag".into()),
        ]
    }

    /// Creates a bucket (moto accepts the unsigned call); one already there is fine (S3
    /// answers its owner's second create with 200 in us-east-1).
    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.url))
            .send()
            .await
            .expect("create bucket");
        assert!(
            r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT,
            "create bucket {name}: {}",
            r.status()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
