//! The real binaries: a `stagecache-server` process per data dir, and `stagecache` CLI runs
//! timed from spawn to exit with their peak resident memory (from `wait4`).

use stagecache_client::{Client, ClientConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the server and CLI binaries are.
#[derive(Clone)]
pub struct Bins {
    pub server: PathBuf,
    pub cli: PathBuf,
    /// Where the servers keep blobs and journal (`--blob-store`): `None`, in their data
    /// dir.
    pub store: Option<Arc<BlobStoreTarget>>,
    /// `--pin`: servers on [`SERVER_CPU`], CLI runs on [`CLI_CPU`].
    pub pin: bool,
    /// `--server-arg`: given to every server the bench starts.
    pub server_args: Vec<String>,
}

pub const SERVER_CPU: usize = 0;
pub const CLI_CPU: usize = 1;

/// Runs the command's process on `cpu` only.
fn pin_to(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only sched_setaffinity(2) runs, on a set built on
    // this stack: async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A blob store the bench's servers run on instead of their data dir's (`--blob-store`):
/// Azurite or moto started by the bench, or a URL whose credentials come from the
/// environment. Every fresh data dir gets a prefix of its own in it, so a cold run starts
/// from an empty store; a server restarted on a data dir finds its prefix again.
pub struct BlobStoreTarget {
    /// The emulator's container or bucket (`az://stagecache/release`, ...), or the URL
    /// given.
    base: String,
    env: Vec<(String, String)>,
    prefixes: Mutex<HashMap<PathBuf, String>>,
    next: AtomicU32,
    /// The emulator, started as the tests start it (stopped on drop); `None` for a URL.
    emulator: Option<stagecache_tests::backends::Backend>,
}

impl BlobStoreTarget {
    /// `azurite` or `s3` (an emulator, started here from where `scripts/ci-deps` puts
    /// it), or a blob-store URL.
    pub async fn open(arg: &str) -> Result<Self> {
        use stagecache_tests::backends::Backend;
        let emulator = match arg {
            "azurite" => Some(
                Backend::azurite()
                    .await
                    .ok_or("Azurite is not installed: run scripts/ci-deps")?,
            ),
            "s3" => Some(
                Backend::s3()
                    .await
                    .ok_or("moto is not installed: run scripts/ci-deps")?,
            ),
            _ => None,
        };
        let (base, env) = match &emulator {
            Some(b) => (
                b.url.clone(),
                b.env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            None => (arg.trim_end_matches('/').to_string(), Vec::new()),
        };
        Ok(BlobStoreTarget {
            base,
            env,
            prefixes: Mutex::new(HashMap::new()),
            next: AtomicU32::new(0),
            emulator,
        })
    }

    /// What the report calls it: the emulator, or the URL.
    pub fn describe(&self) -> String {
        match &self.emulator {
            Some(_) if self.base.starts_with("az://") => "azurite (emulator, npm)".into(),
            Some(_) => "s3 (moto server, PyPI)".into(),
            None => self.base.clone(),
        }
    }

    /// The `--blob-store` of a server on `data_dir`: a new prefix when the data dir is
    /// new or empty, else the one it had.
    fn url(&self, data_dir: &Path) -> String {
        let fresh = std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        let mut prefixes = self.prefixes.lock().expect("prefixes");
        if fresh || !prefixes.contains_key(data_dir) {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("bench-{}-{n}", std::process::id());
            prefixes.insert(data_dir.to_path_buf(), prefix);
        }
        format!("{}/{}", self.base, prefixes[data_dir])
    }

    /// Puts a server on `to` (an empty data dir: a rebuild) on the store `from` uses.
    pub fn share(&self, from: &Path, to: &Path) {
        let mut prefixes = self.prefixes.lock().expect("prefixes");
        if let Some(p) = prefixes.get(from).cloned() {
            prefixes.insert(to.to_path_buf(), p);
        }
    }

    /// The arguments and environment of a command on `data_dir`'s store that opens it
    /// (`stagecache-server rebuild`), as a server start would get them.
    pub fn command_on(&self, cmd: &mut Command, data_dir: &Path) {
        let url = self
            .prefixes
            .lock()
            .expect("prefixes")
            .get(data_dir)
            .cloned();
        if let Some(prefix) = url {
            cmd.args(["--blob-store", &format!("{}/{prefix}", self.base)]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
    }
}

impl Bins {
    /// In `dir`, or next to this executable (cargo puts a workspace's binaries together).
    pub fn locate(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()?
                .parent()
                .ok_or("executable has no parent directory")?
                .to_path_buf(),
        };
        let bins = Bins {
            server: dir.join(format!("stagecache-server{}", std::env::consts::EXE_SUFFIX)),
            cli: dir.join(format!("stagecache{}", std::env::consts::EXE_SUFFIX)),
            store: None,
            pin: false,
            server_args: Vec::new(),
        };
        for b in [&bins.server, &bins.cli] {
            if !b.exists() {
                return Err(format!(
                    "{} not found: build the workspace (`cargo build --release --workspace`) or pass --bin-dir",
                    b.display()
                )
                .into());
            }
        }
        Ok(bins)
    }
}

/// CPU (user + system) this process, the bench, has used so far, in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value; getrusage
    // fills the struct it is given and RUSAGE_SELF has no preconditions.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// A `stagecache-server` process on a loopback port the kernel chose.
pub struct Server {
    child: Child,
    pub url: String,
    /// Sent with every call of [`Server::client`] (a server started with auth).
    token: Option<String>,
    /// Started with a metrics port (so counting every call).
    metrics: bool,
    /// Started with `--ledger-cache 0` (every status and plan reads the index).
    cache_off: bool,
}

impl Server {
    /// Starts the server on `data_dir` (its log goes to `log`) on a port the kernel
    /// chooses (read from its ready line: no port picked here that another process could
    /// take first), and waits until it answers.
    pub async fn start(bins: &Bins, data_dir: &Path, log: &Path) -> Result<Self> {
        Self::start_with(bins, data_dir, log, &[], None).await
    }

    /// [`Server::start`] with extra arguments (e.g. `--auth-config FILE`) and the token
    /// its clients send.
    pub async fn start_with(
        bins: &Bins,
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
        token: Option<String>,
    ) -> Result<Self> {
        let mut cmd = Command::new(&bins.server);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(&bins.server_args)
            .args(extra);
        if bins.pin {
            pin_to(&mut cmd, SERVER_CPU);
        }
        if let Some(store) = &bins.store {
            let url = store.url(data_dir);
            cmd.args(["--blob-store", &url]);
            cmd.envs(store.env.iter().map(|(k, v)| (k, v)));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            // Appended: a phase restarts its server per run and keeps every run's log.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            )
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bins.server.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        // The ready line, then whatever else (nothing, today) until the server exits.
        let first = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next();
            std::thread::spawn(move || lines.for_each(drop));
            first
        });
        // Killed on drop, whatever goes wrong from here.
        let mut server = Server {
            child,
            url: String::new(),
            token,
            metrics: extra.contains(&"--metrics-listen"),
            cache_off: extra.windows(2).any(|w| w == ["--ledger-cache", "0"]),
        };
        let line = match tokio::time::timeout(Duration::from_secs(60), first).await {
            Ok(Ok(Some(Ok(line)))) => line,
            _ => {
                return Err(format!(
                    "stagecache-server printed no ready line; see {}",
                    log.display()
                )
                .into())
            }
        };
        let listen = line
            .strip_prefix("stagecache-server listening on ")
            .ok_or_else(|| format!("stagecache-server printed {line:?}, not its ready line"))?;
        server.url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!(
                    "stagecache-server exited ({status}) during start-up; see {}",
                    log.display()
                )
                .into());
            }
            if let Ok(client) = server.client().await {
                if client.find_missing(&[]).await.is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "stagecache-server did not answer within 60 s; see {}",
                    log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> Result<Client> {
        let mut config = ClientConfig::new(&self.url, crate::NAMESPACE)?;
        if let Some(t) = &self.token {
            config.token = Some(stagecache_client::Secret::new("token", t)?);
        }
        Ok(Client::connect(config).await?)
    }

    /// The token its callers send, if it was started with auth.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn has_metrics(&self) -> bool {
        self.metrics
    }

    pub fn has_cache_off(&self) -> bool {
        self.cache_off
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are the 14th and
        // 15th fields of the whole line, in clock ticks.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok((ticks(11) + ticks(12)) / hz)
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        vm_hwm(self.pid()).ok_or_else(|| "no VmHWM in /proc/PID/status".into())
    }

    /// Stops gracefully (SIGTERM) and waits for the exit.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        // A graceful stop flushes RocksDB; a server that has not exited after a minute is
        // killed (by Drop) and reported.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                return Err("stagecache-server did not exit within 60 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(format!("stagecache-server exited with {status} on SIGTERM").into());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's peak resident memory (`VmHWM` of its address space), in bytes; `None` once
/// it has exited.
fn vm_hwm(pid: u32) -> Option<u64> {
    proc_bytes(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM",
    )
}

/// A `Key:   1234 kB` line of a `/proc` file (`status`, `meminfo`), in bytes.
pub fn proc_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// One CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub elapsed: Duration,
    /// Peak resident memory of the process (`VmHWM`, sampled every 5 ms), bytes.
    pub peak_rss: u64,
    /// CPU time of the process (user + system), seconds.
    pub cpu_s: f64,
    /// CPU time the server used meanwhile, seconds.
    pub server_cpu_s: f64,
    pub stdout: String,
}

impl CliRun {
    /// The run as one measurement: wall time, CLI and server CPU.
    pub fn sample(&self) -> crate::report::Sample {
        crate::report::Sample {
            elapsed: self.elapsed,
            cpu: Some((self.cpu_s, self.server_cpu_s)),
        }
    }
}

/// Runs `stagecache --server URL --namespace bench --format json ARGS`, timed from spawn
/// to exit, with its CPU time and peak memory. Fails with the CLI's stderr when it does
/// not exit 0.
pub fn cli(bins: &Bins, server: &Server, args: &[&str], scratch: &Path) -> Result<CliRun> {
    let out_path = scratch.join("cli.stdout");
    let err_path = scratch.join("cli.stderr");
    let server_cpu = server.cpu_seconds()?;
    let start = Instant::now();
    let mut cmd = Command::new(&bins.cli);
    if bins.pin {
        pin_to(&mut cmd, CLI_CPU);
    }
    let child = cmd
        .args([
            "--server",
            &server.url,
            "--namespace",
            crate::NAMESPACE,
            "--format",
            "json",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bins.cli.display()))?;
    // Peak memory comes from the child's own address space, sampled while it runs:
    // `ru_maxrss` would not do, as Linux carries the parent's high-water mark into a
    // child across fork and exec (this benchmark's own RSS would show up as the CLI's).
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(v) = vm_hwm(pid) {
                    peak = peak.max(v);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let waited = wait4(pid);
    let elapsed = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_rss = watcher.join().map_err(|_| "memory watcher panicked")?;
    let (status, rusage) = waited?;
    let stdout = std::fs::read_to_string(&out_path)?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!(
            "stagecache {} failed (wait status {status}): {}",
            args.join(" "),
            std::fs::read_to_string(&err_path)?.trim()
        )
        .into());
    }
    Ok(CliRun {
        elapsed,
        peak_rss,
        cpu_s: secs(rusage.ru_utime) + secs(rusage.ru_stime),
        server_cpu_s: server.cpu_seconds()? - server_cpu,
        stdout,
    })
}

fn secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Waits for a child and returns its wait status and resource usage (CPU time), which
/// `std::process::Child::wait` does not report.
fn wait4(pid: u32) -> Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4({pid}): {err}").into());
        }
    }
}

/// Flushes dirty pages so one measurement does not pay for the previous one's writes.
pub fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

#[cfg(test)]
mod tests {
    use super::proc_bytes;

    #[test]
    fn proc_lines_in_bytes() {
        let text = "Name:\tx\nVmHWMx:\t1 kB\nVmHWM:\t   10 kB\nMemTotal:       24684084 kB\n";
        assert_eq!(proc_bytes(text, "VmHWM"), Some(10 * 1024));
        assert_eq!(proc_bytes(text, "MemTotal"), Some(24_684_084 * 1024));
        assert_eq!(proc_bytes(text, "VmRSS"), None);
    }
}
