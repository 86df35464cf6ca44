//! The figures: JSON shape, the readable table and the summary line, each target of
//! issue 5 next to where the run stands.

use crate::ledger::{Call, LoadFigure};
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// Targets: cold transfers at least this fraction of `cp -r`'s throughput.
pub const COLD_MIN_X_CP: f64 = 0.5;
/// Warm transfers at most this multiple of the tree's hash time.
pub const WARM_MAX_X_HASH: f64 = 3.0;
pub const FIND_MISSING_MAX_MS: f64 = 250.0;
pub const LEDGER_P50_MAX_MS: f64 = 1.0;
pub const LEDGER_P99_MAX_MS: f64 = 5.0;
pub const LEDGER_MIN_CALLS_PER_S: f64 = 20_000.0;
/// Ledger throughput with auth on, as a share of the same call without auth in the same
/// run (issue 10: at most 10% slower).
pub const AUTH_MIN_RATIO: f64 = 0.90;
/// Ledger throughput with a metrics port (every call counted), as a share of the same call
/// without, in the same run (issue 13: within 5%).
pub const METRICS_MIN_RATIO: f64 = 0.95;
/// A journaled `Ledger.Record` on local disk (issue 11).
pub const RECORD_P50_MAX_MS: f64 = 2.0;
pub const LEDGER_THROUGHPUT_CALLERS: usize = 64;
pub const PEAK_RSS_MAX: u64 = 256 * 1024 * 1024;

/// Human size, binary units.
/// Verified reads may make a cold fetch at most this much slower (issue 16).
const VERIFIED_MAX_X: f64 = 1.10;

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    const K: f64 = 1024.0;
    if n >= K * K * K {
        format!("{:.2} GiB", n / (K * K * K))
    } else if n >= K * K {
        format!("{:.1} MiB", n / (K * K))
    } else if n >= K {
        format!("{:.1} KiB", n / K)
    } else {
        format!("{n} B")
    }
}

fn rate(bytes_: u64, secs: f64) -> String {
    format!("{}/s", bytes((bytes_ as f64 / secs) as u64))
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub size: u64,
    pub big_file: u64,
    pub runs: u32,
    pub seed: u64,
    pub ledger_attempts: usize,
    pub ledger_seconds: f64,
    /// `--blob-store`, when the servers did not keep blobs on local disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_store: Option<String>,
    /// `--pin`: server and CLI each on a core of its own.
    pub pinned: bool,
    /// `--server-arg`: flags every server was started with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
    pub cpu: String,
    pub kernel: String,
    /// Transparent huge pages (`always`, `madvise` or `never`); empty when unknown.
    pub thp: String,
    /// A virtio balloon that reports free pages to the host: memory freed here goes back
    /// to the host after a few seconds, and touching it again faults in the host as well,
    /// so every figure that writes new pages (`cp -r` too) varies with what ran before.
    pub free_page_reporting: bool,
}

impl Machine {
    fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let memory_bytes =
            crate::process::proc_bytes(&read("/proc/meminfo"), "MemTotal").unwrap_or(0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            thp: thp_mode(&read("/sys/kernel/mm/transparent_hugepage/enabled")),
            free_page_reporting: std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon")
                .into_iter()
                .flatten()
                .flatten()
                .any(|d| balloon_reports(&read(&format!("{}/features", d.path().display())))),
        }
    }
}

/// The chosen mode in `/sys/kernel/mm/transparent_hugepage/enabled` (`always [madvise]
/// never` -> `madvise`).
fn thp_mode(enabled: &str) -> String {
    enabled
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(mode, _)| mode.to_string())
        .unwrap_or_default()
}

/// Whether a virtio device's negotiated `features` (one `0`/`1` per bit, bit 0 first)
/// include the balloon's free page reporting (`VIRTIO_BALLOON_F_REPORTING`, bit 5).
fn balloon_reports(features: &str) -> bool {
    features.trim().as_bytes().get(5) == Some(&b'1')
}

/// One measured run: wall time and, for CLI runs, the CPU seconds of CLI and server.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub elapsed: Duration,
    pub cpu: Option<(f64, f64)>,
}

impl Sample {
    pub fn time(elapsed: Duration) -> Self {
        Sample { elapsed, cpu: None }
    }
}

/// The true median: the middle value of an odd count, the mean of the two middle values
/// of an even one (taking the upper one flatters every ratio to an even-count baseline).
/// The cost of B against A from paired runs in both orders, free of an order effect: on
/// this machine the second run of a pair is often slower (by up to a fifth), whichever it
/// is. With a multiplicative effect `k`, pairs with B first measure `x / k` and pairs with
/// B second `x * k`, so `x` is the geometric mean of the two orders' medians. With pairs
/// in one order only, that order's median.
pub fn order_balanced(b_first: &[f64], b_second: &[f64]) -> f64 {
    match (b_first.is_empty(), b_second.is_empty()) {
        (true, true) => f64::NAN,
        (false, true) => median_of(b_first.to_vec()),
        (true, false) => median_of(b_second.to_vec()),
        (false, false) => (median_of(b_first.to_vec()) * median_of(b_second.to_vec())).sqrt(),
    }
}

pub fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// One timed figure: every measured run and their median, in seconds; for CLI runs also
/// the median CPU seconds of the CLI and of the server (both share the machine's cores).
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub median_s: f64,
    pub runs_s: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
}

impl Figure {
    pub fn new(runs: &[Sample]) -> Self {
        let runs_s: Vec<f64> = runs.iter().map(|r| r.elapsed.as_secs_f64()).collect();
        let cpu: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.cpu).collect();
        let (client_cpu_s, server_cpu_s) = if cpu.is_empty() {
            (None, None)
        } else {
            (
                Some(median_of(cpu.iter().map(|c| c.0).collect())),
                Some(median_of(cpu.iter().map(|c| c.1).collect())),
            )
        };
        Figure {
            median_s: median_of(runs_s.clone()),
            runs_s,
            client_cpu_s,
            server_cpu_s,
        }
    }

    /// `CPU 1.2 + 3.4 s` (CLI + server), when measured.
    /// `cpu 1.2 + 3.4 s (0.6 + 1.7 s/GiB)`: CLI + server, and per GiB of the `bytes` the
    /// run moved (or would have moved, for a warm one: what it costs per GiB of tree).
    fn cpu(&self, bytes: u64) -> String {
        match (self.client_cpu_s, self.server_cpu_s) {
            (Some(c), Some(s)) => {
                let gib = bytes as f64 / (1u64 << 30) as f64;
                format!(
                    "cpu {c:.2} + {s:.2} s ({:.2} + {:.2} s/GiB)",
                    c / gib.max(1e-9),
                    s / gib.max(1e-9)
                )
            }
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub files: usize,
    pub bytes: u64,
    pub runs: u32,
    /// Multi-threaded BLAKE3 of every file of the tree (the hash limit).
    pub hash: Figure,
    /// `cp -r` of the tree (the copy limit).
    pub cp: Figure,
    /// `cp -r` then `sync`: the copy made durable (for reference; no target).
    pub cp_sync: Figure,
    pub register_cold: Figure,
    pub register_warm: Figure,
    pub fetch_cold: Figure,
    pub fetch_warm: Figure,
    /// The first fetch after each cold register, into an empty directory: what
    /// Validate-Publish does with what Prepare-Artifacts just registered. Unlike the
    /// later cold fetches, it reads only what the register left in the page cache (the
    /// blobs below the server's `--direct-io`; the larger ones come from the disk).
    pub fetch_first: Figure,
    /// Cold fetches from a server started with `--unverified-reads`, each paired with one
    /// from a server that verifies (`fetch_cold_verified`), in alternating order.
    pub fetch_cold_unverified: Figure,
    pub fetch_cold_verified: Figure,
    /// What verified reads cost a cold fetch: the pairs' time ratios (verified / not
    /// verified), order-balanced ([`order_balanced`]).
    pub verified_cold_x: f64,
    /// The pairs' ratios: `[verified first, verified second]`.
    pub verified_cold_ratios: [Vec<f64>; 2],
    /// Warm fetches from the server started with `--unverified-reads`.
    pub fetch_warm_unverified: Figure,
    pub find_missing_digests: usize,
    pub find_missing_present: usize,
    pub find_missing: Figure,
    /// A peer on the same tree (`--peers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::peers::Peer>,
}

impl Transfer {
    /// Throughput of a cold transfer as a fraction of `cp -r`'s.
    pub fn x_cp(&self, f: &Figure) -> f64 {
        self.cp.median_s / f.median_s
    }
    /// Throughput of a cold register as a fraction of the durable copy's (`cp -r` +
    /// `sync`): the server makes every blob durable before it acknowledges it, so this is
    /// the copy to compare a register with on the same disk.
    pub fn x_durable(&self, f: &Figure) -> f64 {
        self.cp_sync.median_s / f.median_s
    }
    /// Time of a warm transfer as a multiple of the hash time.
    pub fn x_hash(&self, f: &Figure) -> f64 {
        f.median_s / self.hash.median_s
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ledger {
    pub attempts: usize,
    pub records: usize,
    pub fill_s: f64,
    pub figures: Vec<LoadFigure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub file_bytes: u64,
    pub server_peak_rss: u64,
    pub register_peak_rss: u64,
    pub fetch_peak_rss: u64,
    pub register_s: f64,
    pub fetch_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub config: Config,
    pub transfer: Option<Transfer>,
    pub ledger: Option<Ledger>,
    pub memory: Option<Memory>,
    pub gc: Option<crate::gc::Gc>,
    pub rebuild: Option<crate::rebuild::Rebuild>,
    /// Each target with the measured value and whether it is met.
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

struct Row {
    figure: String,
    time: String,
    rate: String,
    ratio: String,
    target: String,
    met: Option<bool>,
    /// CPU seconds of CLI and server, for CLI runs.
    cpu: String,
}

impl Results {
    pub fn new(config: &Config) -> Self {
        Results {
            machine: Machine::detect(),
            config: config.clone(),
            transfer: None,
            ledger: None,
            memory: None,
            gc: None,
            rebuild: None,
            targets: Vec::new(),
        }
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(t) = &self.transfer {
            // A figure of the tree's transfer: its median time, the rate that makes, and
            // the CPU it took (when measured); reported unless the caller judges it.
            let row = |figure: String, f: &Figure| Row {
                figure,
                time: format!("{:.3} s", f.median_s),
                rate: rate(t.bytes, f.median_s),
                ratio: String::new(),
                target: "reported".into(),
                met: None,
                cpu: f.cpu(t.bytes),
            };
            let base = |figure: &str, f: &Figure| Row {
                ratio: "baseline".into(),
                target: String::new(),
                ..row(figure.into(), f)
            };
            rows.push(base("cp -r (copy limit)", &t.cp));
            rows.push(Row {
                ratio: format!("{:.2}x cp", t.x_cp(&t.cp_sync)),
                ..base("cp -r + sync (durable copy)", &t.cp_sync)
            });
            rows.push(base("BLAKE3, all cores (hash limit)", &t.hash));
            // (name, figure, cold, durable: acknowledged only once on the disk)
            for (name, f, cold, durable) in [
                ("register, cold", &t.register_cold, true, true),
                ("fetch, cold", &t.fetch_cold, true, false),
                ("register, warm", &t.register_warm, false, false),
                ("fetch, warm", &t.fetch_warm, false, false),
            ] {
                let (ratio, target, met) = if cold {
                    let x = t.x_cp(f);
                    // A register acknowledges only what is on the disk: beside `cp -r`,
                    // its ratio to the durable copy.
                    let durable = if durable {
                        format!(", {:.2}x cp+sync", t.x_durable(f))
                    } else {
                        String::new()
                    };
                    (
                        format!("{x:.2}x cp{durable}"),
                        format!(">= {COLD_MIN_X_CP}x cp"),
                        x >= COLD_MIN_X_CP,
                    )
                } else {
                    let x = t.x_hash(f);
                    (
                        format!("{x:.2}x hash"),
                        format!("<= {WARM_MAX_X_HASH}x hash"),
                        x <= WARM_MAX_X_HASH,
                    )
                };
                rows.push(Row {
                    ratio,
                    target,
                    met: Some(met),
                    ..row(name.into(), f)
                });
            }
            rows.push(Row {
                ratio: format!("{:.2}x cp", t.x_cp(&t.fetch_first)),
                target: "reported".into(),
                ..row("fetch, first after register".into(), &t.fetch_first)
            });
            // Verified reads are judged by the time they add to a cold fetch, measured in
            // pairs (see `Transfer::verified_cold_x`).
            let x = t.verified_cold_x;
            rows.push(Row {
                ratio: format!("verified {x:.2}x"),
                target: format!("verified <= {VERIFIED_MAX_X}x"),
                met: Some(x <= VERIFIED_MAX_X),
                ..row(
                    "fetch, cold, reads not verified".into(),
                    &t.fetch_cold_unverified,
                )
            });
            rows.push(row(
                "fetch, cold, verified (paired)".into(),
                &t.fetch_cold_verified,
            ));
            let x = t.fetch_warm.median_s / t.fetch_warm_unverified.median_s;
            rows.push(Row {
                ratio: format!("verified {x:.2}x"),
                ..row(
                    "fetch, warm, reads not verified".into(),
                    &t.fetch_warm_unverified,
                )
            });
            if let Some(p) = &t.peer {
                for (what, f, ours, our_name) in [
                    ("upload-dir", &p.upload, &t.register_cold, "register"),
                    ("download-dir", &p.download, &t.fetch_cold, "fetch"),
                ] {
                    rows.push(Row {
                        ratio: format!("{:.2}x {our_name}", f.median_s / ours.median_s),
                        target: "reported (its time / ours)".into(),
                        ..row(format!("peer: {} {what}, cold", p.name), f)
                    });
                }
            }
            let ms = t.find_missing.median_s * 1e3;
            rows.push(Row {
                figure: format!(
                    "FindMissing, {} digests",
                    thousands(t.find_missing_digests as f64)
                ),
                time: format!("{ms:.1} ms"),
                rate: String::new(),
                ratio: String::new(),
                target: format!("< {FIND_MISSING_MAX_MS} ms"),
                met: Some(ms < FIND_MISSING_MAX_MS),
                cpu: String::new(),
            });
        }
        if let Some(l) = &self.ledger {
            for f in &l.figures {
                // Latency is judged at every caller count; throughput where it is the
                // target (64 callers). A row states every target it is judged against.
                let mut target =
                    format!("p50 < {LEDGER_P50_MAX_MS} ms, p99 < {LEDGER_P99_MAX_MS} ms");
                let mut met = f.p50_ms < LEDGER_P50_MAX_MS && f.p99_ms < LEDGER_P99_MAX_MS;
                if f.call == Call::Record {
                    // A write answers after its journal entry is in the blob store.
                    target = format!("p50 < {RECORD_P50_MAX_MS} ms");
                    met = f.p50_ms < RECORD_P50_MAX_MS;
                }
                // The cache-off variant is a comparison, not a configuration anyone runs.
                let judged = f.call != Call::RecordBatch && !f.cache_off;
                if f.cache_off {
                    target = "reported (its throughput / the cached call's)".into();
                } else if f.call == Call::RecordBatch {
                    target = "reported (one journal object per batch)".into();
                } else if f.callers == LEDGER_THROUGHPUT_CALLERS && !f.call.writes() {
                    target.push_str(&format!(
                        ", >= {} calls/s",
                        thousands(LEDGER_MIN_CALLS_PER_S)
                    ));
                    met &= f.calls_per_s >= LEDGER_MIN_CALLS_PER_S;
                }
                let mut ratio = String::new();
                // A variant (auth on, metrics on) is judged against the same call without
                // it, in the same run: the mean of the plain figures measured before and
                // after the variants.
                let variant = if f.auth {
                    Some(("no auth", Some(AUTH_MIN_RATIO)))
                } else if f.metrics {
                    Some(("no metrics", Some(METRICS_MIN_RATIO)))
                } else if f.cache_off {
                    // Reported, not judged: the plain figure's target covers the cache.
                    Some(("cached", None))
                } else {
                    None
                };
                if let Some((without, min)) = variant {
                    // The plain figures of the same call, before and after the variants.
                    let plain: Vec<f64> = l
                        .figures
                        .iter()
                        .filter(|o| {
                            !o.auth
                                && !o.metrics
                                && !o.cache_off
                                && o.call == f.call
                                && o.callers == f.callers
                        })
                        .map(|o| o.calls_per_s)
                        .collect();
                    if !plain.is_empty() {
                        let baseline = plain.iter().sum::<f64>() / plain.len() as f64;
                        let x = f.calls_per_s / baseline;
                        ratio = format!("{x:.2}x {without}");
                        if let Some(min) = min {
                            target.push_str(&format!(", >= {min:.2}x {without}"));
                            met &= x >= min;
                        }
                    }
                }
                rows.push(Row {
                    figure: format!(
                        "{}, {} caller{}{}",
                        f.call.name(),
                        f.callers,
                        if f.callers == 1 { "" } else { "s" },
                        if f.auth {
                            ", auth on"
                        } else if f.metrics {
                            ", metrics on"
                        } else if f.cache_off {
                            ", cache off"
                        } else if f.again {
                            ", again"
                        } else {
                            ""
                        }
                    ),
                    time: format!("p50 {:.3} / p99 {:.3} ms", f.p50_ms, f.p99_ms),
                    rate: format!("{} calls/s", thousands(f.calls_per_s)),
                    ratio,
                    target,
                    met: judged.then_some(met),
                    cpu: format!(
                        "server {:.0} us/call, {:.2} cores; load {:.0} us/call",
                        f.server_cpu_us_per_call, f.server_cores, f.load_cpu_us_per_call
                    ),
                });
            }
        }
        if let Some(m) = &self.memory {
            for (name, rss, secs) in [
                ("peak RSS, server", m.server_peak_rss, None),
                (
                    "peak RSS, register (CLI)",
                    m.register_peak_rss,
                    Some(m.register_s),
                ),
                ("peak RSS, fetch (CLI)", m.fetch_peak_rss, Some(m.fetch_s)),
            ] {
                rows.push(Row {
                    figure: format!("{name}, {} file", bytes(m.file_bytes)),
                    time: secs.map(|s| format!("{s:.3} s")).unwrap_or_default(),
                    rate: secs.map(|s| rate(m.file_bytes, s)).unwrap_or_default(),
                    ratio: bytes(rss),
                    target: format!("< {}", bytes(PEAK_RSS_MAX)),
                    met: Some(rss < PEAK_RSS_MAX),
                    cpu: String::new(),
                });
            }
        }
        if let Some(g) = &self.gc {
            let reported = |figure: String, time: String, ratio: String| Row {
                figure,
                time,
                rate: String::new(),
                ratio,
                target: "reported".into(),
                met: None,
                cpu: String::new(),
            };
            rows.push(reported(
                format!(
                    "gc mark, {} blobs in {} builds",
                    thousands(g.blobs as f64),
                    g.builds
                ),
                format!("{:.2} s", g.mark_s),
                String::new(),
            ));
            rows.push(reported(
                format!(
                    "gc sweep, {} blobs and {} manifests removed",
                    thousands(g.collected_blobs as f64),
                    g.collected_manifests
                ),
                format!("{:.2} s", g.sweep_s),
                String::new(),
            ));
            for (what, idle, during) in [
                ("fetch of a live build", g.fetch_idle, g.fetch_during),
                ("Status", g.status_idle, g.status_during),
            ] {
                rows.push(reported(
                    format!("{what} during gc (idle)"),
                    format!(
                        "p50 {:.2} ms, p99 {:.2} ms ({:.2}, {:.2})",
                        during.p50_ms, during.p99_ms, idle.p50_ms, idle.p99_ms
                    ),
                    format!("{:.2}x idle p50", during.p50_ms / idle.p50_ms.max(1e-9)),
                ));
            }
        }
        if let Some(r) = &self.rebuild {
            let entries_per_s = r.journal_entries as f64 / r.rebuild_s.max(1e-9);
            rows.push(Row {
                figure: format!(
                    "rebuild, {} builds, {} attempts ({})",
                    r.builds,
                    thousands(r.attempts as f64),
                    r.blob_store
                ),
                time: format!("{:.2} s", r.rebuild_s),
                rate: format!("{} entries/s", thousands(entries_per_s.round())),
                ratio: format!(
                    "{} entries, {} records",
                    thousands(r.journal_entries as f64),
                    thousands(r.ledger_records as f64)
                ),
                target: "reported".into(),
                met: None,
                cpu: String::new(),
            });
        }
        rows
    }

    /// Fills `targets` from the figures (called before the JSON is written).
    pub fn judge(&mut self) {
        self.targets = self
            .rows()
            .into_iter()
            .filter_map(|r| {
                r.met.map(|met| Target {
                    measured: [r.time, r.rate, r.ratio, r.cpu]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", "),
                    figure: r.figure,
                    target: r.target,
                    met,
                })
            })
            .collect();
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} cores, {} memory, {}, Linux {}",
            m.cores,
            bytes(m.memory_bytes),
            if m.cpu.is_empty() {
                "cpu unknown"
            } else {
                &m.cpu
            },
            m.kernel
        );
        if !m.thp.is_empty() || m.free_page_reporting {
            let _ = writeln!(
                out,
                "memory: transparent huge pages {}{}",
                if m.thp.is_empty() { "unknown" } else { &m.thp },
                if m.free_page_reporting {
                    "; the VM reports free pages to its host, so new memory (page cache \
                     included) costs a host fault and figures vary with what ran before"
                } else {
                    ""
                }
            );
        }
        if let Some(b) = &self.config.blob_store {
            let _ = writeln!(out, "blob store: {b} (transfer, ledger and rebuild phases)");
        }
        if !self.config.server_args.is_empty() {
            let _ = writeln!(
                out,
                "servers started with: {}",
                self.config.server_args.join(" ")
            );
        }
        if self.config.pinned {
            let _ = writeln!(
                out,
                "pinned: the server on CPU 0, the CLI on CPU 1 (as on two machines)"
            );
        }
        if let Some(t) = &self.transfer {
            let _ = writeln!(
                out,
                "tree: {} files, {}; transfer figures are medians of {} runs after a warm-up",
                thousands(t.files as f64),
                bytes(t.bytes),
                t.runs
            );
        }
        if let Some(l) = &self.ledger {
            let _ = writeln!(
                out,
                "ledger: {} attempts in {} records (filled in {:.1} s)",
                thousands(l.attempts as f64),
                thousands(l.records as f64),
                l.fill_s
            );
        }
        let head = Row {
            figure: "figure".into(),
            time: "time".into(),
            rate: "throughput".into(),
            ratio: "vs limit".into(),
            target: "target".into(),
            met: None,
            cpu: "cpu (CLI + server, or server per call)".into(),
        };
        let rows = self.rows();
        let w = |f: fn(&Row) -> &String| {
            rows.iter()
                .chain([&head])
                .map(|r| f(r).len())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2, w3, w4, w5) = (
            w(|r| &r.figure),
            w(|r| &r.time),
            w(|r| &r.rate),
            w(|r| &r.ratio),
            w(|r| &r.target),
            w(|r| &r.cpu),
        );
        for r in std::iter::once(&head).chain(&rows) {
            let verdict = match r.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            let line = format!(
                "{:w0$}  {:w1$}  {:>w2$}  {:>w3$}  {:w4$}  {:6}  {:w5$}",
                r.figure, r.time, r.rate, r.ratio, r.target, verdict, r.cpu
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }

    /// `summary: register_cold=..x_cp register_cold_durable=..x_cp_sync fetch_cold=..x_cp
    /// register_warm=..x_hash plan_p50=..ms status_64=../s plan_64=../s ...` (the ledger's
    /// throughput at 64 callers) (the figures a run did not measure are left out).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.transfer {
            parts.push(format!(
                "register_cold={:.2}x_cp register_cold_durable={:.2}x_cp_sync",
                t.x_cp(&t.register_cold),
                t.x_durable(&t.register_cold)
            ));
            parts.push(format!("fetch_cold={:.2}x_cp", t.x_cp(&t.fetch_cold)));
            parts.push(format!(
                "register_warm={:.2}x_hash",
                t.x_hash(&t.register_warm)
            ));
            if let Some(p) = &t.peer {
                parts.push(format!(
                    "peer_upload={:.2}x_register peer_download={:.2}x_fetch",
                    p.upload.median_s / t.register_cold.median_s,
                    p.download.median_s / t.fetch_cold.median_s
                ));
            }
        }
        if let Some(l) = &self.ledger {
            if let Some(f) = l
                .figures
                .iter()
                .find(|f| f.call == Call::Plan && f.callers == 1)
                .or_else(|| l.figures.iter().find(|f| f.call == Call::Plan))
            {
                parts.push(format!("plan_p50={:.3}ms", f.p50_ms));
            }
            // Throughput where it is the target: the first plain figure at 64 callers.
            for call in [Call::Status, Call::Plan] {
                if let Some(f) = l.figures.iter().find(|f| {
                    f.call == call
                        && f.callers == LEDGER_THROUGHPUT_CALLERS
                        && !(f.auth || f.metrics || f.cache_off || f.again)
                }) {
                    parts.push(format!("{}_64={:.0}/s", call.name(), f.calls_per_s));
                }
            }
        }
        if let Some(g) = &self.gc {
            parts.push(format!(
                "gc_mark={:.2}s gc_sweep={:.2}s",
                g.mark_s, g.sweep_s
            ));
        }
        if let Some(r) = &self.rebuild {
            parts.push(format!("rebuild={:.1}s", r.rebuild_s));
        }
        format!("summary: {}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_memory_facts_are_read_from_sysfs_text() {
        assert_eq!(thp_mode("[always] madvise never\n"), "always");
        assert_eq!(thp_mode("always [madvise] never"), "madvise");
        assert_eq!(thp_mode(""), "");
        // The balloon of the benchmark machine: stats, deflate on OOM, reporting.
        assert!(balloon_reports("0110010100000000\n"));
        assert!(!balloon_reports("0110000100000000"));
        assert!(!balloon_reports("0110"));
    }

    #[test]
    fn an_order_effect_cancels_out() {
        // True cost 1.2, the second run of each pair 15% slower.
        let (x, k) = (1.2f64, 1.15f64);
        let first = [x / k, x / k * 1.01, x / k * 0.99];
        let second = [x * k, x * k * 1.02, x * k * 0.98];
        assert!((order_balanced(&first, &second) - x).abs() < 1e-9);
        assert!((order_balanced(&first, &[]) - x / k).abs() < 1e-9);
        assert!(order_balanced(&[], &[]).is_nan());
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
        assert_eq!(bytes(2 << 30), "2.00 GiB");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn median_is_the_middle_or_the_mean_of_the_two_middle_values() {
        assert_eq!(median_of(vec![3.0]), 3.0);
        assert_eq!(median_of(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median_of(vec![4.0, 1.0]), 2.5);
        assert_eq!(median_of(vec![0.4, 0.1, 0.3, 0.2]), 0.25);
        let s = |x: f64| Sample::time(Duration::from_secs_f64(x));
        let f = Figure::new(&[s(0.30), s(0.28), s(0.20), s(0.31)]);
        assert!((f.median_s - 0.29).abs() < 1e-9, "{}", f.median_s);
    }

    fn load(call: Call, callers: usize, p50_ms: f64, p99_ms: f64, calls_per_s: f64) -> LoadFigure {
        LoadFigure {
            call,
            callers,
            auth: false,
            metrics: false,
            again: false,
            cache_off: false,
            calls: 100,
            p50_ms,
            p99_ms,
            calls_per_s,
            server_cpu_us_per_call: 150.0,
            server_cores: 0.45,
            load_cpu_us_per_call: 40.0,
        }
    }

    /// Results of a run that measured only the ledger.
    fn ledger_only_results() -> Results {
        Results::new(&Config {
            size: 0,
            big_file: 0,
            runs: 1,
            seed: 1,
            ledger_attempts: 0,
            ledger_seconds: 1.0,
            blob_store: None,
            pinned: false,
            server_args: Vec::new(),
        })
    }

    /// Results holding only a ledger phase with these figures.
    fn with_figures(figures: Vec<LoadFigure>) -> Results {
        let mut r = ledger_only_results();
        r.ledger = Some(Ledger {
            attempts: 60,
            records: 100,
            fill_s: 0.1,
            figures,
        });
        r
    }

    #[test]
    fn latency_is_judged_at_every_caller_count() {
        // No 1-caller figure: the targets must not vanish.
        let mut r = with_figures(vec![
            load(Call::Status, 16, 0.8, 4.0, 5_000.0),
            load(Call::Plan, 16, 0.9, 7.0, 5_000.0),
            load(Call::Status, 64, 0.5, 3.0, 30_000.0),
            load(Call::Plan, 64, 0.5, 3.0, 10_000.0),
        ]);
        r.judge();
        let judged: Vec<(&str, &str, bool)> = r
            .targets
            .iter()
            .map(|t| (t.figure.as_str(), t.target.as_str(), t.met))
            .collect();
        assert_eq!(
            judged,
            [
                ("status, 16 callers", "p50 < 1 ms, p99 < 5 ms", true),
                ("plan, 16 callers", "p50 < 1 ms, p99 < 5 ms", false),
                (
                    "status, 64 callers",
                    "p50 < 1 ms, p99 < 5 ms, >= 20,000 calls/s",
                    true
                ),
                (
                    "plan, 64 callers",
                    "p50 < 1 ms, p99 < 5 ms, >= 20,000 calls/s",
                    false
                ),
            ]
        );
    }

    #[test]
    fn auth_on_and_metrics_on_are_judged_against_the_same_call_without() {
        let mut r = ledger_only_results();
        let auth = |call, calls_per_s| LoadFigure {
            auth: true,
            ..load(call, 1, 0.5, 0.9, calls_per_s)
        };
        let metered = |call, calls_per_s| LoadFigure {
            metrics: true,
            ..load(call, 1, 0.5, 0.9, calls_per_s)
        };
        r.ledger = Some(Ledger {
            attempts: 60,
            records: 100,
            fill_s: 0.1,
            figures: vec![
                load(Call::Status, 1, 0.5, 0.9, 2_000.0),
                load(Call::Plan, 1, 0.5, 0.9, 2_000.0),
                auth(Call::Status, 1_900.0),
                auth(Call::Plan, 1_700.0),
                metered(Call::Status, 1_950.0),
                metered(Call::Plan, 1_850.0),
            ],
        });
        r.judge();
        let judged: Vec<(&str, bool)> = r
            .targets
            .iter()
            .map(|t| (t.figure.as_str(), t.met))
            .collect();
        assert_eq!(
            judged,
            [
                ("status, 1 caller", true),
                ("plan, 1 caller", true),
                ("status, 1 caller, auth on", true),
                ("plan, 1 caller, auth on", false),
                ("status, 1 caller, metrics on", true),
                ("plan, 1 caller, metrics on", false),
            ]
        );
        assert!(r.targets[3].target.contains(">= 0.90x no auth"));
        assert!(r.targets[5].target.contains(">= 0.95x no metrics"));
    }

    #[test]
    fn the_cache_off_variant_is_reported_beside_the_cached_call_not_judged() {
        let mut r = with_figures(vec![
            load(Call::Status, 64, 0.5, 0.9, 30_000.0),
            LoadFigure {
                cache_off: true,
                ..load(Call::Status, 64, 5.0, 9.0, 15_000.0)
            },
        ]);
        r.judge();
        let judged: Vec<&str> = r.targets.iter().map(|t| t.figure.as_str()).collect();
        assert_eq!(judged, ["status, 64 callers"]);
        let table = r.table();
        let row = table
            .lines()
            .find(|l| l.starts_with("status, 64 callers, cache off"))
            .unwrap_or_else(|| panic!("no cache-off row in\n{table}"));
        assert!(row.contains("0.50x cached"), "{row}");
        assert!(!row.contains("MISSED"), "{row}");
    }

    #[test]
    fn the_summary_gives_ledger_throughput_at_64_callers_from_the_plain_figures() {
        let r = with_figures(vec![
            load(Call::Status, 1, 0.2, 0.3, 4_000.0),
            load(Call::Status, 64, 3.0, 7.0, 21_000.0),
            load(Call::Plan, 64, 4.0, 9.0, 13_500.0),
            LoadFigure {
                cache_off: true,
                ..load(Call::Status, 64, 4.0, 9.0, 1.0)
            },
            LoadFigure {
                again: true,
                ..load(Call::Plan, 64, 4.0, 9.0, 2.0)
            },
        ]);
        assert!(
            r.summary().ends_with(" status_64=21000/s plan_64=13500/s"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn ratios_and_summary() {
        let fig = |s: f64| Figure::new(&[Sample::time(Duration::from_secs_f64(s))]);
        let t = Transfer {
            files: 10,
            bytes: 1 << 30,
            runs: 1,
            hash: fig(0.5),
            cp: fig(2.0),
            cp_sync: fig(3.0),
            register_cold: fig(4.0),
            register_warm: fig(1.0),
            fetch_cold: fig(2.5),
            fetch_warm: fig(2.0),
            fetch_cold_unverified: fig(2.4),
            fetch_cold_verified: fig(2.5),
            verified_cold_x: 1.04,
            verified_cold_ratios: [vec![1.0], vec![1.08]],
            peer: None,
            fetch_warm_unverified: fig(2.0),
            fetch_first: fig(2.6),
            find_missing_digests: 100_000,
            find_missing_present: 10,
            find_missing: fig(0.04),
        };
        let mut r = Results::new(&Config {
            size: 1 << 30,
            big_file: 0,
            runs: 1,
            seed: 1,
            ledger_attempts: 0,
            ledger_seconds: 1.0,
            blob_store: None,
            pinned: false,
            server_args: Vec::new(),
        });
        r.transfer = Some(t);
        r.ledger = Some(Ledger {
            attempts: 60,
            records: 100,
            fill_s: 0.1,
            figures: vec![load(Call::Plan, 1, 0.3, 0.5, 3000.0)],
        });
        r.judge();
        assert_eq!(
            r.summary(),
            "summary: register_cold=0.50x_cp register_cold_durable=0.75x_cp_sync fetch_cold=0.80x_cp register_warm=2.00x_hash plan_p50=0.300ms"
        );
        let met: Vec<(&str, bool)> = r
            .targets
            .iter()
            .map(|t| (t.figure.as_str(), t.met))
            .collect();
        assert!(met.contains(&("register, cold", true)));
        assert!(met.contains(&("fetch, warm", false)), "{met:?}");
        assert!(met.contains(&("plan, 1 caller", true)));
        let table = r.table();
        assert!(table.contains("MISSED"));
        let register = table
            .lines()
            .find(|l| l.starts_with("register, cold"))
            .expect("a register row");
        assert!(register.contains("0.50x cp, 0.75x cp+sync"), "{register}");
        let fetch = table
            .lines()
            .find(|l| l.starts_with("fetch, cold"))
            .unwrap();
        assert!(!fetch.contains("cp+sync"), "{fetch}");
    }
}
