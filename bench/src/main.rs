//! `stagecache-bench`: transfer and ledger speed measured against the machine's own limits,
//! in one run. See `bench/README.md` for what each figure means and `bench/RESULTS.md` for
//! figures taken so far.
//!
//! It starts the real `stagecache-server` binary on temp data dirs and drives the real
//! `stagecache` CLI (both found next to this executable), on a generated release-like tree:
//!
//! 1. baselines: `cp -r` of the tree and multi-threaded BLAKE3 of the tree;
//! 2. register cold (empty server) and warm (everything present);
//! 3. fetch cold (empty output dir) and warm (every file present and correct);
//! 4. FindMissing of 100,000 digests;
//! 5. ledger Status and Plan with 1, 16 and 64 callers on 1,000,000 attempts;
//! 6. peak RSS of server and CLI moving one 4 GiB file;
//! 7. a garbage collection over 1,000,000 blobs in 100 builds, and fetch and Status
//!    latency during it against the same calls idle.
//!
//! Transfer figures are medians of `--runs` runs after one warm-up run.

mod caller;
mod gc;
mod ledger;
mod peers;
mod process;
mod rebuild;
mod report;
mod tree;

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, ValueEnum};
use process::{cli, sync_disks, Bins, Result, Server};
use report::{Figure, Memory, Results, Sample, Transfer};
use stagecache_proto::Digest;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Namespace every run uses (refs and ledger); the server is private to the run anyway.
pub const NAMESPACE: &str = "bench";
const REF: &str = "bench/tree";
const FIND_MISSING_DIGESTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Baselines, register, fetch, FindMissing.
    Transfer,
    /// Status and Plan on a pre-filled ledger.
    Ledger,
    /// Peak RSS moving one big file.
    Memory,
    /// A garbage collection over --gc-blobs blobs, and calls' latency during it.
    Gc,
    /// The index rebuilt from the blob store after --rebuild-builds builds and
    /// --rebuild-attempts ledger attempts.
    Rebuild,
}

#[derive(Parser, Debug)]
#[command(
    name = "stagecache-bench",
    about = "Measures stagecache's transfer and ledger speed against cp -r and BLAKE3 in the same run"
)]
struct Args {
    /// Size of the release-like tree (e.g. 2GiB, 500MB, 20MiB).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    size: u64,
    /// Size of the single file the memory figures move; 0 skips them (small disks).
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    big_file: u64,
    /// Measured runs per transfer figure (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Pairs of cold fetches (verified, not verified) that measure what verified reads
    /// cost, after one warm-up pair, in alternating order (see `Transfer::verified_cold_x`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
    /// Attempts the ledger is pre-filled with (3 attempts, 5 records, per stage line).
    #[arg(long, default_value_t = 1_000_000)]
    ledger_attempts: usize,
    /// Concurrent ledger callers to measure, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    callers: Vec<usize>,
    /// Measuring window per ledger figure, seconds (plus a fifth of it as warm-up).
    #[arg(long, default_value_t = 3.0)]
    ledger_seconds: f64,
    /// Blobs the garbage-collection phase stores (half of them collected).
    #[arg(long, default_value_t = 1_000_000)]
    gc_blobs: usize,
    /// Builds (manifests with a ref) those blobs are in.
    #[arg(long, default_value_t = 100)]
    gc_builds: usize,
    /// Builds (blobs, a manifest and a ref each) the rebuild phase writes.
    #[arg(long, default_value_t = 100)]
    rebuild_builds: usize,
    /// Ledger attempts the rebuild phase writes through RecordBatch (5 records per 3
    /// attempts).
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_attempts: usize,
    /// Single Records (one journal entry each) the rebuild phase writes besides.
    #[arg(long, default_value_t = 10_000)]
    rebuild_records: usize,
    /// Where the servers of the transfer, ledger and rebuild phases keep blobs and journal:
    /// `azurite` or `s3` (the emulator, started by the bench from where scripts/ci-deps
    /// installs it), or a blob-store URL (credentials from the environment). Default: the
    /// data dir's local directory. The memory and gc phases always run on local disk.
    #[arg(long)]
    blob_store: Option<String>,
    /// Also measures a peer on the same tree in the transfer phase: BuildGrid's CAS
    /// (`bgd cas upload-dir` / `download-dir`), from `--bgd` or where `bench/run --peers`
    /// installs it.
    #[arg(long)]
    peers: bool,
    /// BuildGrid's `bgd` (default: `~/.cache/stagecache/tools/buildgrid-venv/bin/bgd`).
    #[arg(long, env = "STAGECACHE_BGD")]
    bgd: Option<PathBuf>,
    /// Runs each server on CPU 0 and each CLI on CPU 1 (sched_setaffinity), as on two
    /// machines: what client and server each cost, without the other on its core.
    #[arg(long)]
    pin: bool,
    /// A flag given to every server the bench starts, e.g. `--server-arg=--direct-io=0`
    /// (repeat for several): to measure a server setting against a run without it.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Seed of the tree's contents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these phases (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Phase>,
    /// Where trees and data dirs go (default: a new temp dir, removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work dir afterwards: trees, data dirs, server logs, the CLI's last output.
    #[arg(long)]
    keep: bool,
    /// Where the figures go as JSON.
    #[arg(long, default_value = "stagecache-bench.json")]
    json: PathBuf,
    /// Directory holding `stagecache-server` and `stagecache` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Parses `2GiB`, `20MiB`, `500MB`, `1.5GiB`, `4096`.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 500MB, 20MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// One warm-up run, then `runs` measured ones; `prepare` runs untimed before each.
fn measure(
    runs: u32,
    mut prepare: impl FnMut() -> Result<()>,
    mut run: impl FnMut(bool) -> Result<Sample>,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for i in 0..=runs {
        prepare()?;
        let d = run(i == 0)?;
        if i > 0 {
            out.push(d);
        }
    }
    Ok(out)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display()).into()),
    }
}

fn json_field(stdout: &str, field: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("CLI printed no JSON ({e}): {stdout:?}"))?;
    v[field]
        .as_u64()
        .ok_or_else(|| format!("CLI JSON has no {field}: {stdout}").into())
}

/// Runs the CLI and checks that one counter of its JSON report has the value the run must
/// produce (everything uploaded cold, nothing warm, ...): a figure is only kept for a run
/// that did the work it claims to measure.
fn cli_expecting(
    bench: &Bench,
    server: &Server,
    args: &[&str],
    field: &str,
    expected: u64,
    what: &str,
) -> Result<process::CliRun> {
    let r = cli(&bench.bins, server, args, &bench.work)?;
    let n = json_field(&r.stdout, field)?;
    if n != expected {
        return Err(format!("{what}: {field} was {n}, expected {expected}").into());
    }
    Ok(r)
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs fills a plain struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

struct Bench {
    args: Args,
    bins: Bins,
    work: PathBuf,
    discarded: std::cell::Cell<u32>,
}

impl Bench {
    fn wants(&self, p: Phase) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&p)
    }

    /// Clears `path` for the next run without deleting files: each is truncated (its
    /// blocks freed) and the directory moved under `trash/`, removed at the end of the
    /// run. Deleting would make the next run pay for it: ext4 without a journal (the
    /// machine of bench/RESULTS.md; its profiles show `ext4_fsync_nojournal`) skips inodes
    /// deleted in the last minute when it allocates new ones, so every file a run creates
    /// would scan past the previous run's 1,500 deleted inodes (`recently_deleted` was a
    /// quarter of a cold fetch's CPU). That made cold runs and `cp -r` alike slower and
    /// far noisier, and is not what a fresh agent workspace sees.
    fn discard(&self, path: &Path) -> Result<()> {
        fn truncate_all(dir: &Path) -> std::io::Result<()> {
            for e in std::fs::read_dir(dir)? {
                let e = e?;
                let t = e.file_type()?;
                if t.is_dir() {
                    truncate_all(&e.path())?;
                } else if t.is_file() {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(e.path())?
                        .set_len(0)?;
                }
            }
            Ok(())
        }
        if !path.exists() {
            return Ok(());
        }
        truncate_all(path).map_err(|e| format!("clearing {}: {e}", path.display()))?;
        let trash = self.work.join("trash");
        std::fs::create_dir_all(&trash)?;
        // Unique across runs sharing a --work-dir (a kept or failed run leaves its trash).
        let n = self.discarded.get();
        self.discarded.set(n + 1);
        std::fs::rename(path, trash.join(format!("{}-{n}", std::process::id())))
            .map_err(|e| format!("moving {} to {}: {e}", path.display(), trash.display()))?;
        Ok(())
    }

    /// BuildGrid's `bgd` when `--peers` asks for it: `--bgd`, or where `bench/run --peers`
    /// installs it.
    fn bgd(&self) -> Result<Option<PathBuf>> {
        if !self.args.peers {
            return Ok(None);
        }
        let bgd = match &self.args.bgd {
            Some(b) => b.clone(),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?)
                .join(".cache/stagecache/tools/buildgrid-venv/bin/bgd"),
        };
        if !bgd.exists() {
            return Err(format!(
                "--peers: {} not found (bench/run --peers installs BuildGrid; or pass --bgd)",
                bgd.display()
            )
            .into());
        }
        Ok(Some(bgd))
    }

    /// Removes what a phase left behind, unless `--keep` asks to keep it.
    fn clean_up(&self, path: &Path) -> Result<()> {
        if self.args.keep {
            return Ok(());
        }
        remove(path)
    }

    /// `cp -r` of the tree: one warm-up and `--runs` measured copies, each from a clean
    /// page-cache state (previous copy removed, disks synced). Also times `cp -r` then
    /// `sync` (the copy made durable, as the server makes every blob it acknowledges)
    /// into `durable`, for reference.
    fn copy_baseline(&self, tree_dir: &Path, durable: &mut Vec<Sample>) -> Result<Vec<Sample>> {
        let copy = self.work.join("copy");
        let out = measure(
            self.args.runs,
            || {
                self.discard(&copy)?;
                sync_disks();
                Ok(())
            },
            |warm_up| {
                let t = Instant::now();
                let st = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(tree_dir)
                    .arg(&copy)
                    .status()?;
                let d = t.elapsed();
                if !st.success() {
                    return Err(format!("cp -r failed: {st}").into());
                }
                sync_disks();
                if !warm_up {
                    durable.push(Sample::time(t.elapsed()));
                }
                Ok(Sample::time(d))
            },
        )?;
        self.discard(&copy)?;
        Ok(out)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    async fn transfer(&self) -> Result<Transfer> {
        let runs = self.args.runs;
        let tree_dir = self.work.join("tree");
        let files = tree::plan(self.args.size, self.args.seed);
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        eprintln!(
            "generating {} files, {} ...",
            files.len(),
            report::bytes(bytes)
        );
        tree::generate(&tree_dir, &files)?;

        eprintln!("baseline: BLAKE3 of the tree ...");
        let mut listing = Vec::new();
        let hash = measure(
            runs,
            || Ok(()),
            |_| {
                let t = Instant::now();
                listing = tree::hash_tree(&tree_dir)?;
                Ok(Sample::time(t.elapsed()))
            },
        )?;

        eprintln!("baseline: cp -r ...");
        let mut cp_sync = Vec::new();
        let mut cp = self.copy_baseline(&tree_dir, &mut cp_sync)?;

        eprintln!("register, cold (each followed by a first fetch) ...");
        let data = self.work.join("data");
        let tree_arg = tree_dir.to_str().ok_or("work dir is not UTF-8")?;
        let out = self.work.join("out");
        let out_arg = out.to_str().ok_or("work dir is not UTF-8")?.to_string();
        let fetch_args = ["fetch", "--ref", REF, "--out", &out_arg];
        let mut server: Option<Server> = None;
        let mut fetch_first = Vec::new();
        let register_cold = {
            let mut runs_out = Vec::new();
            for i in 0..=runs {
                if let Some(s) = server.take() {
                    s.stop()?;
                }
                self.discard(&data)?;
                sync_disks();
                let s = Server::start(&self.bins, &data, &self.log("server-transfer")).await?;
                let r = cli_expecting(
                    self,
                    &s,
                    &["register", tree_arg, "--ref", REF],
                    "uploaded_bytes",
                    bytes,
                    "cold register",
                )?;
                // What Validate-Publish does next: fetch what was just registered.
                self.discard(&out)?;
                sync_disks();
                let n = files.len() as u64;
                let f = cli_expecting(self, &s, &fetch_args, "downloaded_files", n, "first fetch")?;
                server = Some(s);
                if i > 0 {
                    runs_out.push(r.sample());
                    fetch_first.push(f.sample());
                }
            }
            runs_out
        };
        let server = server.expect("at least one run");

        eprintln!("register, warm ...");
        let register_warm = measure(
            runs,
            || Ok(()),
            |_| {
                let args = ["register", tree_arg, "--ref", REF];
                let r = cli_expecting(self, &server, &args, "uploaded_bytes", 0, "warm register")?;
                Ok(r.sample())
            },
        )?;

        eprintln!("fetch, cold ...");
        let cold_fetches = |server: &Server, what: &str| {
            measure(
                runs,
                || {
                    self.discard(&out)?;
                    sync_disks();
                    Ok(())
                },
                |_| {
                    let n = files.len() as u64;
                    let r = cli_expecting(self, server, &fetch_args, "downloaded_files", n, what)?;
                    Ok(r.sample())
                },
            )
        };
        let warm_fetches = |server: &Server, what: &str| {
            measure(
                runs,
                || Ok(()),
                |_| {
                    let r = cli_expecting(self, server, &fetch_args, "downloaded_files", 0, what)?;
                    Ok(r.sample())
                },
            )
        };
        let fetch_cold = cold_fetches(&server, "cold fetch")?;
        if tree::hash_tree(&out)? != listing {
            return Err("the fetched tree differs from the registered one".into());
        }
        // The copy baseline again, so it spans the same stretch of (shared, noisy) machine
        // time as the cold transfers it is compared with; the median is over both sets.
        eprintln!("baseline: cp -r, again ...");
        cp.extend(self.copy_baseline(&tree_dir, &mut cp_sync)?);

        eprintln!("fetch, warm ...");
        let fetch_warm = warm_fetches(&server, "warm fetch")?;

        // What verified reads cost, in pairs: each pair is a cold fetch from a server that
        // verifies and one from a server started with `--unverified-reads`, on the same
        // data dir, their order alternating from pair to pair, so that drift on the shared
        // machine falls on both alike. Judged by the order-balanced ratio (see
        // `report::order_balanced`).
        server.stop()?;
        eprintln!("fetch, cold, verified and not, in pairs ...");
        let mut paired = [Vec::new(), Vec::new()];
        // Ratios of the pairs whose verified fetch ran first, and of those where it ran
        // second.
        let mut ratios = [Vec::new(), Vec::new()];
        for i in 0..=self.args.pairs {
            let mut pair = [Duration::ZERO; 2];
            let order = if i % 2 == 0 { [1, 0] } else { [0, 1] };
            for verified in order {
                let flags: &[&str] = if verified == 1 {
                    &[]
                } else {
                    &["--unverified-reads"]
                };
                let log = self.log("server-transfer");
                let s = Server::start_with(&self.bins, &data, &log, flags, None).await?;
                self.discard(&out)?;
                sync_disks();
                let n = files.len() as u64;
                let what = ["cold fetch, reads not verified", "cold fetch, verified"][verified];
                let r = cli_expecting(self, &s, &fetch_args, "downloaded_files", n, what)?;
                s.stop()?;
                pair[verified] = r.elapsed;
                if i > 0 {
                    paired[verified].push(r.sample());
                }
            }
            if i > 0 {
                ratios[i as usize % 2].push(pair[1].as_secs_f64() / pair[0].as_secs_f64());
            }
        }
        let [fetch_cold_unverified, fetch_cold_verified] = paired;
        let server = Server::start_with(
            &self.bins,
            &data,
            &self.log("server-transfer"),
            &["--unverified-reads"],
            None,
        )
        .await?;
        eprintln!("fetch, warm, reads not verified ...");
        let fetch_warm_unverified = warm_fetches(&server, "warm fetch, reads not verified")?;

        eprintln!("FindMissing of {FIND_MISSING_DIGESTS} digests ...");
        let present: Vec<Digest> = {
            let mut seen = HashSet::new();
            listing
                .iter()
                .map(|(_, d, _)| *d)
                .filter(|d| seen.insert(*d))
                .collect()
        };
        let mut digests = present.clone();
        let mut i = 0u64;
        while digests.len() < FIND_MISSING_DIGESTS {
            digests.push(Digest::of_bytes(format!("absent {i}").as_bytes()));
            i += 1;
        }
        let client = server.client().await?;
        let mut fm = Vec::new();
        for i in 0..=runs.max(5) {
            let t = Instant::now();
            let missing = client.find_missing(&digests).await?;
            let d = t.elapsed();
            if missing.len() != digests.len() - present.len() {
                return Err(format!(
                    "FindMissing said {} of {} digests are missing; {} are",
                    missing.len(),
                    digests.len(),
                    digests.len() - present.len()
                )
                .into());
            }
            if i > 0 {
                fm.push(Sample::time(d));
            }
        }
        server.stop()?;

        let peer = match self.bgd()? {
            Some(bgd) => {
                eprintln!("peer: BuildGrid upload-dir and download-dir, cold ...");
                Some(peers::buildgrid(
                    &bgd,
                    &tree_dir,
                    &self.work,
                    runs,
                    |p| self.discard(p),
                    |p| {
                        if tree::hash_tree(p)? != listing {
                            return Err("BuildGrid's download differs from the tree".into());
                        }
                        Ok(())
                    },
                )?)
            }
            None => None,
        };
        self.clean_up(&data)?;
        self.clean_up(&out)?;
        self.clean_up(&tree_dir)?;

        Ok(Transfer {
            files: files.len(),
            bytes,
            runs,
            hash: Figure::new(&hash),
            cp: Figure::new(&cp),
            cp_sync: Figure::new(&cp_sync),
            register_cold: Figure::new(&register_cold),
            register_warm: Figure::new(&register_warm),
            fetch_cold: Figure::new(&fetch_cold),
            fetch_first: Figure::new(&fetch_first),
            fetch_warm: Figure::new(&fetch_warm),
            fetch_cold_unverified: Figure::new(&fetch_cold_unverified),
            fetch_cold_verified: Figure::new(&fetch_cold_verified),
            verified_cold_x: report::order_balanced(&ratios[0], &ratios[1]),
            verified_cold_ratios: ratios,
            fetch_warm_unverified: Figure::new(&fetch_warm_unverified),
            find_missing_digests: digests.len(),
            find_missing_present: present.len(),
            find_missing: Figure::new(&fm),
            peer,
        })
    }

    /// Status and plan at each of `callers` against the ledger in `dir`, served by a
    /// server started with `args` (and `token` on every call): a variant of the plain
    /// figures, logged to `server-ledger-{log}`.
    async fn ledger_variant(
        &self,
        dir: &Path,
        log: &str,
        args: &[&str],
        token: Option<String>,
        (label, callers, subjects, window): (&str, &[usize], usize, Duration),
    ) -> Result<Vec<ledger::LoadFigure>> {
        let server = Server::start_with(
            &self.bins,
            dir,
            &self.log(&format!("server-ledger-{log}")),
            args,
            token,
        )
        .await?;
        ledger::prime(&server, subjects).await?;
        let mut figures = Vec::new();
        for &n in callers {
            for call in [ledger::Call::Status, ledger::Call::Plan] {
                eprintln!("ledger: {} with {n} callers, {label} ...", call.name());
                figures.push(ledger::load(&server, call, n, subjects, window, None).await?);
            }
        }
        server.stop()?;
        Ok(figures)
    }

    async fn ledger(&self) -> Result<report::Ledger> {
        let dir = self.work.join("ledger");
        remove(&dir)?;
        eprintln!("ledger: filling {} attempts ...", self.args.ledger_attempts);
        let t = Instant::now();
        let d2 = dir.clone();
        let attempts = self.args.ledger_attempts;
        let subjects = tokio::task::spawn_blocking(move || ledger::fill(&d2, attempts))
            .await
            .map_err(|e| format!("fill task: {e}"))??;
        let fill = t.elapsed();
        let server = Server::start(&self.bins, &dir, &self.log("server-ledger")).await?;
        // The record count reported is the server's, not the fill's arithmetic.
        let records = server.client().await?.stats().await?.ledger_records as usize;
        if records != subjects * ledger::RECORDS_PER_SUBJECT {
            return Err(format!(
                "the server holds {records} ledger records; the fill wrote {}",
                subjects * ledger::RECORDS_PER_SUBJECT
            )
            .into());
        }
        let primed = ledger::prime(&server, subjects).await?;
        eprintln!(
            "ledger: every subject read once in {:.1} s (the heads cache filled)",
            primed.as_secs_f64()
        );
        let window = Duration::from_secs_f64(self.args.ledger_seconds);
        let mut figures = Vec::new();
        for &callers in &self.args.callers {
            for call in [ledger::Call::Status, ledger::Call::Plan] {
                eprintln!("ledger: {} with {callers} callers ...", call.name());
                figures.push(ledger::load(&server, call, callers, subjects, window, None).await?);
            }
        }
        server.stop()?;
        let extremes: Vec<usize> = [
            *self.args.callers.iter().min().unwrap_or(&1),
            *self.args.callers.iter().max().unwrap_or(&64),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
        let reads = |label: &'static str| (label, extremes.as_slice(), subjects, window);
        // The same calls against the same ledger with auth on: a token minted by the
        // server, verified once and then answered from the verdict cache.
        let (auth_args, token) = self.auth_config(&dir)?;
        let args: Vec<&str> = auth_args.iter().map(String::as_str).collect();
        figures.extend(
            self.ledger_variant(&dir, "auth", &args, Some(token), reads("auth on"))
                .await?,
        );
        // And with a metrics port: every call counted (per-RPC layer, ledger and plan
        // counters), judged against the same calls without.
        let args = ["--metrics-listen", "127.0.0.1:0"];
        figures.extend(
            self.ledger_variant(&dir, "metrics", &args, None, reads("metrics on"))
                .await?,
        );
        // And with the ledger heads cache off: every status and plan reads the index, as
        // before the cache; reported beside the same call with it.
        let args = ["--ledger-cache", "0"];
        figures.extend(
            self.ledger_variant(&dir, "cache-off", &args, None, reads("cache off"))
                .await?,
        );
        // Writes last, on the plain server again: the reads above, with and without auth,
        // metrics and the cache, all see the ledger as the fill left it (no flush or compaction of
        // the writes' records running under them).
        let server = Server::start(&self.bins, &dir, &self.log("server-ledger")).await?;
        ledger::prime(&server, subjects).await?;
        for &callers in &extremes {
            for call in [ledger::Call::Status, ledger::Call::Plan] {
                eprintln!("ledger: {} with {callers} callers, again ...", call.name());
                let mut f = ledger::load(&server, call, callers, subjects, window, None).await?;
                f.again = true;
                figures.push(f);
            }
        }
        // Writes, journaled to the blob store before they answer: one success per call on
        // a stored subject, at the fewest and the most callers, and a release's worth of
        // assets in one RecordBatch.
        let stored = {
            let client = server.client().await?;
            let data = bytes::Bytes::from_static(b"a subject the server stores");
            let d = stagecache_proto::Digest::of_bytes(&data);
            client.batch_upload(vec![(d, data)]).await?;
            d
        };
        let fewest = *self.args.callers.iter().min().unwrap_or(&1);
        let most = *self.args.callers.iter().max().unwrap_or(&64);
        for callers in [fewest, most]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
        {
            eprintln!("ledger: record with {callers} callers ...");
            figures.push(
                ledger::load(
                    &server,
                    ledger::Call::Record,
                    callers,
                    subjects,
                    window,
                    Some(stored),
                )
                .await?,
            );
        }
        eprintln!("ledger: record batch of {} ...", ledger::BATCH_ITEMS);
        figures.push(
            ledger::load(
                &server,
                ledger::Call::RecordBatch,
                1,
                subjects,
                window,
                Some(stored),
            )
            .await?,
        );
        server.stop()?;
        self.clean_up(&dir)?;
        Ok(report::Ledger {
            attempts: subjects * ledger::ATTEMPTS_PER_SUBJECT,
            records,
            fill_s: fill.as_secs_f64(),
            figures,
        })
    }

    /// An auth configuration in `dir` (minted tokens, HS256 with a random secret) and a
    /// token with `read` in the bench's namespace, minted by the server binary:
    /// (the server's extra arguments, the token).
    fn auth_config(&self, dir: &Path) -> Result<(Vec<String>, String)> {
        // Random enough for a bench's throw-away key: std's per-process hash keys.
        let secret: String = (0..4)
            .map(|_| {
                use std::hash::{BuildHasher, Hasher};
                let h = std::collections::hash_map::RandomState::new().build_hasher();
                format!("{:016x}", h.finish())
            })
            .collect();
        std::fs::write(dir.join("bench-secret"), secret)?;
        let config = dir.join("bench-auth.toml");
        std::fs::write(
            &config,
            "[tokens]\nalgorithm = \"HS256\"\nsecret_file = \"bench-secret\"\n",
        )?;
        let config = config.to_str().ok_or("work dir is not UTF-8")?.to_string();
        let out = std::process::Command::new(&self.bins.server)
            .args([
                "--auth-config",
                &config,
                "token",
                "create",
                "--subject",
                "bench",
            ])
            .args(["--grant", &format!("{NAMESPACE}:read"), "--expires", "1d"])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "token create: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((vec!["--auth-config".into(), config], token))
    }

    async fn memory(&self) -> Result<Memory> {
        let size = self.args.big_file;
        let src = self.work.join("big");
        let out = self.work.join("big-out");
        let data = self.work.join("big-data");
        for d in [&src, &out, &data] {
            remove(d)?;
        }
        eprintln!("memory: generating one {} file ...", report::bytes(size));
        tree::generate(
            &src,
            &[tree::TreeFile {
                rel: "big.bin".into(),
                size,
                seed: self.args.seed ^ 0xB16,
                executable: false,
            }],
        )?;
        // On local disk whatever --blob-store says: the figure is the server's own memory.
        let local = Bins {
            store: None,
            ..self.bins.clone()
        };
        let server = Server::start(&local, &data, &self.log("server-memory")).await?;
        let src_arg = src.to_str().ok_or("work dir is not UTF-8")?;
        let out_arg = out.to_str().ok_or("work dir is not UTF-8")?;
        sync_disks();
        eprintln!("memory: register ...");
        let reg = cli(
            &self.bins,
            &server,
            &["register", src_arg, "--ref", "bench/big"],
            &self.work,
        )?;
        sync_disks();
        eprintln!("memory: fetch ...");
        let fetch = cli(
            &self.bins,
            &server,
            &["fetch", "--ref", "bench/big", "--out", out_arg],
            &self.work,
        )?;
        let server_rss = server.peak_rss()?;
        if reg.peak_rss == 0 || fetch.peak_rss == 0 {
            return Err("the CLI exited before its memory could be sampled".into());
        }
        server.stop()?;
        if tree::hash_tree(&out)? != tree::hash_tree(&src)? {
            return Err("the fetched big file differs from the registered one".into());
        }
        for d in [&src, &out, &data] {
            self.clean_up(d)?;
        }
        Ok(Memory {
            file_bytes: size,
            server_peak_rss: server_rss,
            register_peak_rss: reg.peak_rss,
            fetch_peak_rss: fetch.peak_rss,
            register_s: reg.elapsed.as_secs_f64(),
            fetch_s: fetch.elapsed.as_secs_f64(),
        })
    }
}

async fn run(args: Args) -> Result<()> {
    let mut bins = Bins::locate(args.bin_dir.as_deref())?;
    bins.pin = args.pin;
    bins.server_args = args.server_args.clone();
    if let Some(store) = &args.blob_store {
        eprintln!("blob store: {store} ...");
        bins.store = Some(std::sync::Arc::new(
            process::BlobStoreTarget::open(store).await?,
        ));
    }
    // The phases whose servers stay on local disk whatever --blob-store says.
    let local_bins = Bins {
        store: None,
        ..bins.clone()
    };
    let mut temp = None;
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("stagecache-bench")
                .tempdir()?;
            let p = t.path().to_path_buf();
            temp = Some(t);
            p
        }
    };
    let bench = Bench {
        args,
        bins,
        work,
        discarded: std::cell::Cell::new(0),
    };
    let a = &bench.args;
    let big = if bench.wants(Phase::Memory) {
        a.big_file
    } else {
        0
    };
    let transfer = if bench.wants(Phase::Transfer) {
        a.size
    } else {
        0
    };
    // The transfer phase holds up to four copies of the tree at once (tree, server blobs,
    // fetched copy, and the second `cp -r` baseline); the memory phase three of the big
    // file (source, server blob, fetched copy). With --keep the phases' files add up.
    // The gc phase's blobs are small files: a 4 KiB block each, and their index.
    let gc = if bench.wants(Phase::Gc) {
        a.gc_blobs as u64 * 5 * 1024
    } else {
        0
    };
    let needed = if bench.args.keep {
        transfer * 4 + big * 3 + gc
    } else {
        (transfer * 4).max(big * 3).max(gc)
    } + 256 * 1024 * 1024;
    let free = free_bytes(&bench.work)?;
    if free < needed {
        return Err(format!(
            "{} has {} free; this run needs about {} (lower --size, pass --big-file 0, or choose --work-dir)",
            bench.work.display(),
            report::bytes(free),
            report::bytes(needed)
        )
        .into());
    }

    let mut results = Results::new(&bench.args.json_config());
    if bench.wants(Phase::Transfer) {
        results.transfer = Some(bench.transfer().await?);
    }
    if bench.wants(Phase::Ledger) {
        results.ledger = Some(bench.ledger().await?);
    }
    if bench.wants(Phase::Memory) && big > 0 {
        results.memory = Some(bench.memory().await?);
    }
    if bench.wants(Phase::Gc) && bench.args.gc_blobs > 0 {
        eprintln!(
            "gc: writing {} blobs in {} builds ...",
            bench.args.gc_blobs, bench.args.gc_builds
        );
        results.gc = Some(
            gc::run(
                &local_bins,
                &bench.work,
                bench.args.gc_blobs,
                bench.args.gc_builds,
                Duration::from_secs_f64(bench.args.ledger_seconds),
            )
            .await?,
        );
        bench.clean_up(&bench.work.join("data-gc"))?;
    }
    if bench.wants(Phase::Rebuild) && bench.args.rebuild_builds > 0 {
        eprintln!(
            "rebuild: writing {} builds, {} attempts and {} single records ...",
            bench.args.rebuild_builds, bench.args.rebuild_attempts, bench.args.rebuild_records
        );
        results.rebuild = Some(
            rebuild::run(
                &bench.bins,
                &bench.work,
                bench.args.rebuild_builds,
                bench.args.rebuild_attempts,
                bench.args.rebuild_records,
            )
            .await?,
        );
    }
    // Deleting the cleared directories frees thousands of inodes: done last, so that no
    // measurement of this run allocates files among them (see `Bench::discard`).
    bench.clean_up(&bench.work.join("trash"))?;
    if bench.args.keep {
        if let Some(t) = temp {
            let _ = t.keep();
        }
        eprintln!("work dir kept: {}", bench.work.display());
    }
    results.judge();
    std::fs::write(&bench.args.json, serde_json::to_string_pretty(&results)?)
        .map_err(|e| format!("cannot write {}: {e}", bench.args.json.display()))?;
    print!("{}", results.table());
    println!("figures as JSON: {}", bench.args.json.display());
    println!("{}", results.summary());
    Ok(())
}

impl Args {
    fn json_config(&self) -> report::Config {
        report::Config {
            size: self.size,
            big_file: self.big_file,
            runs: self.runs,
            seed: self.seed,
            ledger_attempts: self.ledger_attempts,
            ledger_seconds: self.ledger_seconds,
            blob_store: self.blob_store.clone(),
            pinned: self.pin,
            server_args: self.server_args.clone(),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("stagecache-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
    }
}
