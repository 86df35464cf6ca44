//! Harness for the end-to-end tests in `tests/`: a real server (in-process, on a free
//! loopback port, with real RocksDB and a real local blob store in a temp dir) and helpers
//! to generate trees and inspect what the server stored. No mocks.

use stagecache_client::{Client, ClientConfig};
use stagecache_server::{serve, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server over a data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on a fresh temp data dir.
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start_on(temp.path().to_path_buf()).await;
        s._temp = Some(temp);
        s
    }

    /// Starts a server on an existing data dir (e.g. after a restart).
    pub async fn start_on(data_dir: PathBuf) -> Self {
        Self::start_with(ServerConfig::new(&data_dir)).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(async move {
            serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            addr,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
            _temp: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self, namespace: &str) -> Client {
        Client::connect(ClientConfig::new(self.url(), namespace).expect("namespace"))
            .await
            .expect("connect")
    }

    /// A raw tonic channel, for calls the client library would refuse to make.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// Stops gracefully and waits until the index is flushed and closed. Keeps the temp
    /// dir alive: returns it so the caller can restart on it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self._temp.take()
    }

    /// Every file under the blob store, relative to it.
    pub fn blob_files(&self) -> Vec<String> {
        let root = self.data_dir.join("blobs");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so trees are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs the `stagecache` CLI binary against `url` in `namespace`, with no
/// `STAGECACHE_SERVER`/`STAGECACHE_NAMESPACE` from the environment.
pub async fn run_cli(url: &str, namespace: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(workspace_bin("stagecache"))
        .args(["--server", url, "--namespace", namespace])
        .args(args)
        .env_remove("STAGECACHE_NAMESPACE")
        .env_remove("STAGECACHE_SERVER")
        .output()
        .await
        .expect("run stagecache")
}

/// Whether FindMissing (namespace `prod`) reports the blob missing.
pub async fn blob_missing(
    cas: &mut stagecache_proto::v1::cas_client::CasClient<tonic::transport::Channel>,
    d: stagecache_proto::Digest,
) -> bool {
    let r = cas
        .find_missing(stagecache_proto::v1::FindMissingRequest {
            namespace: "prod".into(),
            digests: vec![d.to_proto()],
        })
        .await
        .expect("FindMissing")
        .into_inner();
    r.missing.len() == 1
}

/// Writes a file, creating parents.
pub fn write_file(root: &Path, rel: &str, data: &[u8], executable: bool) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Path of a binary of this workspace, built next to the test executables.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// Asserts two trees hold the same files with the same bytes and executable bits.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    walk(a, a, &mut fa);
    walk(b, b, &mut fb);
    fa.sort();
    fb.sort();
    assert_eq!(fa, fb, "file lists differ");
    for rel in fa {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (da, db) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        assert!(da == db, "{rel}: contents differ");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ma = std::fs::metadata(&pa).unwrap().permissions().mode() & 0o111;
            let mb = std::fs::metadata(&pb).unwrap().permissions().mode() & 0o111;
            assert_eq!(ma != 0, mb != 0, "{rel}: executable bit differs");
        }
    }
}

/// A `stagecache-server` process (the real binary) on a free loopback port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub listen: String,
    pub data_dir: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` and a free port.
    pub fn start(data_dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(data_dir, format!("127.0.0.1:{port}"))
    }

    /// Starts the binary on `data_dir` listening on `listen`.
    pub fn start_on(data_dir: &Path, listen: String) -> Self {
        let child = std::process::Command::new(workspace_bin("stagecache-server"))
            .args([
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--listen",
                &listen,
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start stagecache-server");
        ServerProcess {
            child,
            listen,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Connects (the client retries while the process starts).
    pub async fn client(&self, namespace: &str) -> Client {
        Client::connect(ClientConfig::new(self.url(), namespace).expect("namespace"))
            .await
            .expect("server process comes up")
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process to end.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
        self.child.wait().expect("wait for server")
    }

    /// Kills (SIGKILL) and starts again on the same data dir and port.
    pub fn crash_and_restart(&mut self) {
        self.signal_and_wait("KILL");
        *self = Self::start_on(&self.data_dir.clone(), self.listen.clone());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
