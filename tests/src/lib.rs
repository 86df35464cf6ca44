//! Harness for the end-to-end tests in `tests/`: the real `stagecache-server` binary
//! ([`ServerProcess`]: a port the kernel chose, ready when `grpc.health.v1` says SERVING,
//! its log kept and printed when a test fails) or, where a test needs an injected clock,
//! an in-process server ([`TestServer`]); both with real RocksDB and a real local blob
//! store in a temp dir. No mocks. Every test that starts a server is bounded in time
//! ([`Watchdog`], [`test_timeout`]), and so is every await on an event ([`within`]) and
//! every long process ([`output_within`]).

pub mod auth;
pub mod azurite;
pub mod backends;
pub mod moto;

/// Spawns `cmd` (an emulator) and reads the address it announces after `marker` on its
/// stdout (`on_stderr`: its stderr) within 60 s; the other stream goes nowhere.
pub(crate) fn spawn_announcing(
    cmd: &mut std::process::Command,
    marker: &'static str,
    on_stderr: bool,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::Stdio;
    let (out, err) = if on_stderr {
        (Stdio::null(), Stdio::piped())
    } else {
        (Stdio::piped(), Stdio::null())
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let stream: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().expect("piped"))
    } else {
        Box::new(child.stdout.take().expect("piped"))
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.split(marker).nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{cmd:?} announced no address within 60 s"));
    (child, url)
}

use stagecache_client::{Client, ClientConfig};
use stagecache_server::{serve, ServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server over a data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _temp: Option<tempfile::TempDir>,
    _watchdog: Watchdog,
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
            _watchdog: Watchdog::start("test with an in-process server"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self, namespace: &str) -> Client {
        client(&self.url(), namespace).await
    }

    /// A raw tonic channel, for calls the client library would refuse to make.
    pub async fn channel(&self) -> tonic::transport::Channel {
        channel(&self.url()).await
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
        blob_files(&self.data_dir)
    }
}

async fn client(url: &str, namespace: &str) -> Client {
    Client::connect(ClientConfig::new(url, namespace).expect("namespace"))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A stage graph file shipped in `deploy/pipelines/`, e.g.
/// `pipeline_file("validate-publish.stages.yaml")`.
pub fn pipeline_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/pipelines")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Every file of the local blob store, relative to it, but the lease (`lease.json`, the
/// running server's liveness marker, and `lease.json.lock`, the lock file each renewal of
/// it takes): `cas/` blobs and `journal/` entries.
fn blob_files(data_dir: &Path) -> Vec<String> {
    let root = data_dir.join("blobs");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.retain(|f| f != "lease.json" && f != "lease.json.lock");
    out.sort();
    out
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

/// Opens the blob store at `url` (`None`: the local one in `data_dir`) as a server with
/// the environment `env` would, from the test process: Azurite is reached as an Azure
/// account at an endpoint of its own (a server takes the emulator's address from its
/// environment, which a test cannot change for its own process); other settings become
/// object_store options.
pub fn open_blob_store(
    url: Option<&str>,
    data_dir: &Path,
    env: &[(String, String)],
) -> stagecache_server::error::Result<stagecache_server::store::blobs::BlobStore> {
    let options: Vec<(String, String)> =
        match env.iter().find(|(k, _)| k == "AZURITE_BLOB_STORAGE_URL") {
            Some((_, azurite)) => azurite::Azurite::at(azurite).store_options(),
            None => env
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        };
    stagecache_server::store::blobs::BlobStore::open_with(url, data_dir, options)
}

/// Runs `fut` to completion on a runtime of its own on a new thread: for the harness's
/// synchronous helpers, which are often called from inside a test's runtime.
pub(crate) fn on_a_thread_of_its_own<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
    .join()
    .expect("the helper thread")
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

/// How long a test may run before its [`Watchdog`] stops it: `STAGECACHE_TEST_TIMEOUT`
/// seconds, default 180 (the bound `.config/nextest.toml` sets for nextest runs, so that
/// `cargo test` runs are bounded the same way).
pub fn test_timeout() -> Duration {
    let secs = std::env::var("STAGECACHE_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// Server processes alive in this test process, with their logs: what a watchdog kills
/// and prints when a test runs out of time (Drop does not run on `abort`).
static LIVE_SERVERS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// Aborts the test process, after killing its server processes and printing their logs,
/// if it is still alive [`test_timeout`] after it was started. Every server the harness
/// starts holds one; tests that run other long processes start their own.
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn start(what: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        let limit = test_timeout();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let _ = writeln!(
                    std::io::stderr(),
                    "{what}: still running after {limit:?} (STAGECACHE_TEST_TIMEOUT): aborting"
                );
                let servers = LIVE_SERVERS.lock().map(|l| l.clone()).unwrap_or_default();
                for (pid, log) in servers {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    print_log(&log);
                }
                std::process::abort();
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

fn print_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let _ = writeln!(
        std::io::stderr(),
        "---- {} ----\n{text}---- end of server log ----",
        log.display()
    );
}

/// Runs `fut` for at most `limit`, panicking with `what` if it did not finish: for every
/// await that waits on an event (a stream message, a process, a notification), so that a
/// missing event fails the test instead of hanging it.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// Runs a command to its end, as `Command::output` does, but kills it and fails the test
/// if it is still running after `limit`, showing what it printed so far.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            panic!(
                "{what}: still running after {limit:?}, killed\n{}\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// How long a started server may take to say it serves (`grpc.health.v1`): generous,
/// because a busy 2-core CI machine can take seconds to open RocksDB.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A `stagecache-server` process (the real binary), listening on a loopback port the
/// kernel chose. It is ready when `start` returns: the harness reads the address from
/// the server's one stdout line and then waits until `grpc.health.v1` answers SERVING.
/// Its log (stderr) goes to a file, printed when the test fails or times out.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub listen: String,
    /// The web page's address (`--web-listen`), read from the second ready line.
    pub web: Option<String>,
    /// `ADDR` of `/metrics` and `/status`, when started with `--metrics-listen`.
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    /// Arguments added after the harness's own (kept for a restart).
    extra_args: Vec<String>,
    /// Environment of the server and of the harness's own `stagecache health` calls (TLS
    /// files, a cloud emulator's address).
    client_env: Vec<(String, String)>,
    log_dir: Arc<tempfile::TempDir>,
    _data: Option<Arc<tempfile::TempDir>>,
    _watchdog: Option<Arc<Watchdog>>,
}

impl ServerProcess {
    /// Starts the binary on a fresh temp data dir (kept as long as the server).
    pub fn start_fresh() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start(data.path());
        s._data = Some(Arc::new(data));
        s
    }

    /// Starts the binary on a fresh temp data dir with extra arguments, e.g.
    /// `["--web-listen", "127.0.0.1:0"]` (then [`ServerProcess::web_url`] is known).
    pub fn start_fresh_with_args(args: &[&str]) -> Self {
        Self::start_fresh_with_env(args, &[])
    }

    /// As [`ServerProcess::start_fresh_with_args`]; `client_env` is added to the
    /// environment of the server and of the harness's readiness check (`stagecache
    /// health`), e.g. `STAGECACHE_CA_CERT` for a server started with `--tls-cert` (whose
    /// [`url`] is then `https://`), or a cloud emulator's settings.
    ///
    /// [`url`]: ServerProcess::url
    pub fn start_fresh_with_env(args: &[&str], client_env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let watchdog = Watchdog::start("test with a stagecache-server process");
        let log_dir = Arc::new(tempfile::tempdir().expect("log dir"));
        let extra = args.iter().map(|a| a.to_string()).collect();
        let path = data.path().to_path_buf();
        let env = client_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(
            &path,
            log_dir,
            Some(Arc::new(data)),
            Some(Arc::new(watchdog)),
            extra,
            env,
        )
    }

    /// `http://ADDR` of the web page; panics when the server was started without one.
    pub fn web_url(&self) -> String {
        format!(
            "http://{}",
            self.web
                .as_deref()
                .unwrap_or_else(|| self.fail("was started without --web-listen"))
        )
    }

    /// `http://ADDR` of the metrics port; panics when the server was started without one.
    pub fn metrics_url(&self) -> String {
        format!(
            "http://{}",
            self.metrics
                .as_deref()
                .unwrap_or_else(|| self.fail("was started without --metrics-listen"))
        )
    }

    /// Starts the binary on `data_dir` and a port the kernel chooses, for a test: the
    /// test is stopped if it runs longer than [`test_timeout`].
    pub fn start(data_dir: &Path) -> Self {
        let watchdog = Watchdog::start("test with a stagecache-server process");
        Self::start_with(data_dir, Some(Arc::new(watchdog)))
    }

    /// Starts the binary on an existing `data_dir` with extra arguments (e.g. the
    /// `--blob-store` a previous server used) and environment (as
    /// [`ServerProcess::start_fresh_with_env`]).
    pub fn start_on_with_args(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let watchdog = Watchdog::start("test with a stagecache-server process");
        let log_dir = Arc::new(tempfile::tempdir().expect("log dir"));
        let extra = args.iter().map(|a| a.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(
            data_dir,
            log_dir,
            None,
            Some(Arc::new(watchdog)),
            extra,
            env,
        )
    }

    /// Starts the binary without a test's time limit (for the release-pipeline example,
    /// which runs as long as its `--scale` asks).
    pub fn start_unbounded(data_dir: &Path) -> Self {
        Self::start_with(data_dir, None)
    }

    fn start_with(data_dir: &Path, watchdog: Option<Arc<Watchdog>>) -> Self {
        let log_dir = Arc::new(tempfile::tempdir().expect("log dir"));
        Self::spawn(data_dir, log_dir, None, watchdog, Vec::new(), Vec::new())
    }

    fn log(log_dir: &tempfile::TempDir) -> PathBuf {
        log_dir.path().join("stagecache-server.log")
    }

    fn spawn(
        data_dir: &Path,
        log_dir: Arc<tempfile::TempDir>,
        data: Option<Arc<tempfile::TempDir>>,
        watchdog: Option<Arc<Watchdog>>,
        extra_args: Vec<String>,
        client_env: Vec<(String, String)>,
    ) -> Self {
        use std::io::BufRead;
        let (mut extra_args, mut client_env) = (extra_args, client_env);
        if !extra_args
            .iter()
            .any(|a| a == "--blob-store" || a.starts_with("--blob-store="))
        {
            if let Some((url, env)) = backends::suite_blob_store(data_dir) {
                extra_args.extend(["--blob-store".to_string(), url]);
                client_env.extend(env);
            }
        }
        let with_web = extra_args.iter().any(|a| a == "--web-listen");
        let with_metrics = extra_args.iter().any(|a| a == "--metrics-listen");
        let log_path = Self::log(&log_dir);
        // Appended to: a restarted server's log follows the previous one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log file");
        let mut child = std::process::Command::new(workspace_bin("stagecache-server"))
            .args([
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(&extra_args)
            .envs(client_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start stagecache-server");
        LIVE_SERVERS
            .lock()
            .unwrap()
            .push((child.id(), log_path.clone()));
        // The ready line, read on a thread so that a server that never prints it is
        // noticed at the deadline; the thread then drains stdout until the server exits.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            // The gRPC ready line, then (with --web-listen) the web page's.
            for _ in 0..1 + with_web as usize + with_metrics as usize {
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
            }
            for _ in lines {}
        });
        let mut server = ServerProcess {
            child,
            listen: String::new(),
            web: None,
            metrics: None,
            data_dir: data_dir.to_path_buf(),
            extra_args,
            client_env,
            log_dir,
            _data: data,
            _watchdog: watchdog,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        let line = rx
            .recv_timeout(READY_DEADLINE)
            .unwrap_or_else(|_| server.fail("printed no ready line"));
        server.listen = line
            .strip_prefix("stagecache-server listening on ")
            .unwrap_or_else(|| server.fail(&format!("printed {line:?}, not the ready line")))
            .to_string();
        if with_web {
            let line = rx
                .recv_timeout(READY_DEADLINE)
                .unwrap_or_else(|_| server.fail("printed no web ready line"));
            server.web = Some(
                line.strip_prefix("stagecache-server web on ")
                    .unwrap_or_else(|| server.fail(&format!("printed {line:?}, not the web line")))
                    .to_string(),
            );
        }
        if with_metrics {
            let line = rx
                .recv_timeout(READY_DEADLINE)
                .unwrap_or_else(|_| server.fail("printed no metrics ready line"));
            server.metrics = Some(
                line.strip_prefix("stagecache-server metrics on ")
                    .unwrap_or_else(|| {
                        server.fail(&format!("printed {line:?}, not the metrics line"))
                    })
                    .to_string(),
            );
        }
        server.wait_until_serving(deadline);
        server
    }

    /// Waits until the server answers `grpc.health.v1` with SERVING, as a user's script
    /// would (`stagecache health`), failing early if the process exits.
    fn wait_until_serving(&mut self, deadline: Instant) {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("exited ({status}) before serving"));
            }
            let ok = std::process::Command::new(workspace_bin("stagecache"))
                .args(["--server", &self.url(), "health", "--wait", "1"])
                .envs(self.client_env.iter().map(|(k, v)| (k, v)))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run stagecache health")
                .success();
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("not serving after {READY_DEADLINE:?}"));
            }
        }
    }

    /// Panics with the server's log.
    fn fail(&self, what: &str) -> ! {
        print_log(&Self::log(&self.log_dir));
        panic!("stagecache-server on {}: {what}", self.data_dir.display())
    }

    /// What the server has logged so far (stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(Self::log(&self.log_dir)).unwrap_or_default()
    }

    /// `http://ADDR`, or `https://ADDR` for a server started with `--tls-cert`.
    pub fn url(&self) -> String {
        let tls = self.extra_args.iter().any(|a| a == "--tls-cert");
        format!("{}://{}", if tls { "https" } else { "http" }, self.listen)
    }

    pub async fn client(&self, namespace: &str) -> Client {
        client(&self.url(), namespace).await
    }

    /// A raw tonic channel, for calls the client library would refuse to make.
    pub async fn channel(&self) -> tonic::transport::Channel {
        channel(&self.url()).await
    }

    /// The `--blob-store` this server runs on; `None`: the local directory in its data dir.
    fn blob_store_url(&self) -> Option<&str> {
        self.extra_args
            .windows(2)
            .find(|w| w[0] == "--blob-store")
            .map(|w| w[1].as_str())
            .filter(|u| !u.starts_with("file://"))
    }

    /// The blob store this server runs on, opened as the server opens it (its
    /// `--blob-store` and environment): for a test that looks behind the server's back.
    pub fn blob_store(&self) -> stagecache_server::store::blobs::BlobStore {
        open_blob_store(self.blob_store_url(), &self.data_dir, &self.client_env)
            .unwrap_or_else(|e| self.fail(&format!("cannot open its blob store: {e}")))
    }

    /// Every object in the blob store but the lease, relative to it, in name order: files
    /// (staging files included) in a local one, a listing of a cloud one.
    pub fn blob_files(&self) -> Vec<String> {
        if self.blob_store_url().is_none() {
            return blob_files(&self.data_dir);
        }
        let store = self.blob_store();
        let listed = on_a_thread_of_its_own(async move { store.backend().list("", None).await });
        let mut out: Vec<String> = listed
            .unwrap_or_else(|e| self.fail(&format!("cannot list its blob store: {e}")))
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "lease.json")
            .collect();
        out.sort();
        out
    }

    /// A stored object's bytes (`cas/ab/<hex>`), read behind the server's back.
    pub fn read_object(&self, name: &str) -> Vec<u8> {
        let store = self.blob_store();
        let path = name.to_string();
        let got = on_a_thread_of_its_own(async move { store.backend().get(&path).await });
        match got {
            Ok(Some((bytes, _))) => bytes.to_vec(),
            Ok(None) => self.fail(&format!("its blob store has no {name}")),
            Err(e) => self.fail(&format!("cannot read {name}: {e}")),
        }
    }

    /// Replaces a stored object's bytes behind the server's back (to damage it).
    pub fn overwrite_object(&self, name: &str, data: Vec<u8>) {
        use stagecache_server::store::backend::PutMode;
        let store = self.blob_store();
        let path = name.to_string();
        on_a_thread_of_its_own(async move {
            store
                .backend()
                .put(&path, vec![data.into()], PutMode::Overwrite)
                .await
        })
        .unwrap_or_else(|e| self.fail(&format!("cannot overwrite {name}: {e}")));
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process to end.
    /// Blocks: with `TERM`, only when no client of this test keeps a connection open (or
    /// on a multi-threaded runtime); [`ServerProcess::stop`] has no such limit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        let status = self.child.wait().expect("wait for server");
        self.forget_pid();
        status
    }

    /// Stops gracefully (SIGTERM) and asserts a clean exit and a flushed index. Async:
    /// the server waits for open connections to close, and this test's own clients must
    /// keep running meanwhile (on a single-threaded runtime a blocking wait deadlocks).
    pub async fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + READY_DEADLINE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => self.fail(&format!("still running {READY_DEADLINE:?} after SIGTERM")),
                Err(e) => self.fail(&format!("cannot wait for it: {e}")),
            }
        };
        self.forget_pid();
        if !status.success() || !self.log_text().contains("stopped") {
            self.fail(&format!("did not stop cleanly ({status})"));
        }
    }

    fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    fn forget_pid(&self) {
        let pid = self.child.id();
        if let Ok(mut l) = LIVE_SERVERS.lock() {
            l.retain(|(p, _)| *p != pid);
        }
    }

    /// Kills (SIGKILL) and starts again on the same data dir, on a port the kernel
    /// chooses (never the old one: another test may have it by then). Clients made
    /// before must be made again (`client`, `url`).
    pub fn crash_and_restart(&mut self) {
        self.signal_and_wait("KILL");
        self.restart();
    }

    /// Starts again on the same data dir after the process ended.
    pub fn restart(&mut self) {
        *self = Self::spawn(
            &self.data_dir.clone(),
            self.log_dir.clone(),
            self._data.clone(),
            self._watchdog.clone(),
            self.extra_args.clone(),
            self.client_env.clone(),
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget_pid();
        // A failing test shows what the server said; a passing one stays quiet.
        if std::thread::panicking() {
            print_log(&Self::log(&self.log_dir));
        }
    }
}

/// Writes `files` (path, bytes) to a temp dir, registers them as `ref_name` and fetches
/// them back, checking the fetched tree is the same; returns the manifest digest.
pub async fn register_and_fetch(
    client: &Client,
    ref_name: &str,
    files: &[(&str, &[u8])],
) -> stagecache_proto::Digest {
    let src = tempfile::tempdir().expect("temp dir");
    for (path, data) in files {
        write_file(src.path(), path, data, false);
    }
    register_dir_and_fetch(client, src.path(), ref_name)
        .await
        .manifest
}

/// Registers the tree under `src` as `ref_name` and fetches it back into a temp dir,
/// checking the fetched tree is the same; returns what the register reported.
pub async fn register_dir_and_fetch(
    client: &Client,
    src: &Path,
    ref_name: &str,
) -> stagecache_client::RegisterReport {
    let report = client
        .register(src, ref_name, &Default::default())
        .await
        .expect("register");
    let out = tempfile::tempdir().expect("temp dir");
    client
        .fetch(report.manifest, out.path(), &Default::default())
        .await
        .expect("fetch");
    assert_same_tree(src, out.path());
    report
}

/// The samples of a server's `/metrics` page (`http://ADDR`): `name{labels}` -> value.
pub async fn scrape_metrics(metrics_url: &str) -> std::collections::HashMap<String, f64> {
    let r = reqwest::get(format!("{metrics_url}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    r.text()
        .await
        .expect("metrics page")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}
