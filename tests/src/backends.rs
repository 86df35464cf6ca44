//! The blob stores the end-to-end tests run against: a local directory, Azurite (Azure
//! Blob) and moto (S3), and [`on_every_backend!`](crate::on_every_backend), which makes one
//! test per backend of a story.

use crate::azurite::Azurite;
use crate::moto::Moto;
use crate::{workspace_bin, ServerProcess};
use std::path::Path;

/// Where the blobs and the journal live: a local directory, a container in Azurite or a
/// bucket in moto.
pub struct Backend {
    pub url: String,
    pub env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
    _azurite: Option<Azurite>,
    _moto: Option<Moto>,
}

impl Backend {
    pub fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            url: format!("file://{}", dir.path().join("blobs").display()),
            env: Vec::new(),
            _dir: dir,
            _azurite: None,
            _moto: None,
        }
    }

    /// `None` when Azurite is not installed (outside CI).
    pub async fn azurite() -> Option<Self> {
        let azurite = Azurite::start()?;
        azurite.create_container("stagecache").await;
        Some(Backend {
            url: "az://stagecache/release".into(),
            env: azurite.env(),
            _dir: tempfile::tempdir().unwrap(),
            _azurite: Some(azurite),
            _moto: None,
        })
    }

    /// `None` when moto is not installed (outside CI).
    pub async fn s3() -> Option<Self> {
        let moto = Moto::start()?;
        moto.create_bucket("stagecache").await;
        Some(Backend {
            url: "s3://stagecache/release".into(),
            env: moto.env(),
            _dir: tempfile::tempdir().unwrap(),
            _azurite: None,
            _moto: Some(moto),
        })
    }

    /// A server on a fresh data dir over this backend, with `extra` arguments.
    pub fn server(&self, extra: &[&str]) -> ServerProcess {
        let mut args = vec!["--blob-store", self.url.as_str()];
        args.extend_from_slice(extra);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ServerProcess::start_fresh_with_env(&args, &env)
    }

    pub fn server_on(&self, data: &Path) -> ServerProcess {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ServerProcess::start_on_with_args(data, &["--blob-store", &self.url], &env)
    }

    /// Whether the backend signs URLs for direct downloads (the cloud ones do).
    pub fn signs_urls(&self) -> bool {
        self._azurite.is_some() || self._moto.is_some()
    }

    /// Overwrites a stored object (`cas/ab/<hex>`) with `data`, behind the server's back.
    pub async fn overwrite(&self, name: &str, data: Vec<u8>) {
        use stagecache_server::store::backend::PutMode;
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let store = crate::open_blob_store(Some(&self.url), self._dir.path(), &env)
            .expect("open the blob store");
        store
            .backend()
            .put(name, vec![data.into()], PutMode::Overwrite)
            .await
            .expect("overwrite");
    }

    pub fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(workspace_bin(program));
        cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd
    }
}

/// The variable that puts the end-to-end suite's servers on an emulator: see
/// [`suite_blob_store`].
pub const SUITE_BLOB_STORE: &str = "STAGECACHE_TEST_BLOB_STORE";

/// The blob store a server the harness starts runs on when its test names none, from
/// [`SUITE_BLOB_STORE`]: unset or `local`, a directory in its data dir (the server's
/// default); `azurite=http://HOST:PORT` or `s3=http://HOST:PORT`, an emulator already
/// running there (`scripts/test-on-emulators` starts them and runs the suite's matrix
/// over each). Every data dir gets a prefix of its own (from its path) in the emulator's
/// `stagecache` container or bucket, so a server restarted on it finds its blobs and
/// journal again. Returns the `--blob-store` URL and the environment that reaches the
/// emulator.
pub fn suite_blob_store(data_dir: &Path) -> Option<(String, Vec<(String, String)>)> {
    let setting = std::env::var(SUITE_BLOB_STORE).ok()?;
    if setting.is_empty() || setting == "local" {
        return None;
    }
    let (kind, endpoint) = setting.split_once('=').unwrap_or_else(|| {
        panic!("{SUITE_BLOB_STORE}={setting:?}: expected local, azurite=URL or s3=URL")
    });
    let prefix = format!(
        "t{}",
        &stagecache_proto::Digest::of_bytes(data_dir.as_os_str().as_encoded_bytes()).hash_hex()
            [..16]
    );
    let (scheme, env) = match kind {
        "azurite" => ("az", Azurite::at(endpoint).env()),
        "s3" => ("s3", Moto::at(endpoint).env()),
        other => panic!("{SUITE_BLOB_STORE}: unknown emulator {other:?} (azurite or s3)"),
    };
    // The container or bucket, made once per test process.
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let (kind, endpoint) = (kind.to_string(), endpoint.to_string());
        crate::on_a_thread_of_its_own(async move {
            if kind == "azurite" {
                Azurite::at(&endpoint).ensure_container("stagecache").await;
            } else {
                Moto::at(&endpoint).create_bucket("stagecache").await;
            }
        });
    });
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Some((format!("{scheme}://stagecache/{prefix}"), env))
}

/// One test per backend for a story: local disk, Azurite and S3 (moto). The emulator
/// tests skip loudly when the emulator is not installed, except under CI.
#[macro_export]
macro_rules! on_every_backend {
    ($story:ident) => {
        mod $story {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local_disk() {
                super::$story(&$crate::backends::Backend::local()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn azurite() {
                if let Some(b) = $crate::backends::Backend::azurite().await {
                    super::$story(&b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                if let Some(b) = $crate::backends::Backend::s3().await {
                    super::$story(&b).await;
                }
            }
        }
    };
}
