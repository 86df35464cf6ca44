//! Room for blobs. A cap on the bytes of blobs stored (`--max-bytes`), and for a local
//! blob store a minimum of free space kept on its file system and the data dir's
//! (`--min-free-space`): past either, an upload is refused with `RESOURCE_EXHAUSTED`
//! naming what is used and what is allowed, before any byte of it is stored. An admitted
//! upload holds a [`Reservation`] until its blob is indexed (or not stored), so that
//! concurrent uploads cannot together pass a limit that each alone respects. Reads, refs
//! and the ledger go on, and RocksDB keeps room for its own writes. Manifests (a few
//! kilobytes of metadata over blobs already stored) are not refused.

use crate::error::{Result, ServerError};
use stagecache_proto::thousands;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Space {
    max_bytes: Option<u64>,
    min_free: u64,
    /// Directories whose file systems must keep `min_free` free, and whether an upload's
    /// bytes land there (a local blob store's root) or not (the data dir of a server on a
    /// cloud store, which only its index fills).
    dirs: Vec<(PathBuf, bool)>,
    /// Bytes of the blobs in the index.
    used: AtomicU64,
    /// Bytes of admitted uploads not indexed yet.
    reserved: AtomicU64,
}

/// Room set aside for an upload in flight, given back when dropped (once its blob is
/// indexed, or when it is not stored).
pub struct Reservation {
    space: Option<Arc<Space>>,
    bytes: u64,
}

impl Reservation {
    /// No room held (a store without limits).
    pub fn none() -> Self {
        Reservation {
            space: None,
            bytes: 0,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(s) = &self.space {
            s.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
        }
    }
}

impl Space {
    pub fn new(
        max_bytes: Option<u64>,
        min_free: u64,
        dirs: Vec<(PathBuf, bool)>,
        used: u64,
    ) -> Self {
        Space {
            max_bytes,
            min_free,
            dirs,
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    pub fn added(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn removed(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Sets `bytes` aside for an upload, or refuses with `RESOURCE_EXHAUSTED` saying why.
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation> {
        let pending = self.reserved.fetch_add(bytes, Ordering::SeqCst);
        // Given back on a refusal too, when this is dropped.
        let held = Reservation {
            space: Some(self.clone()),
            bytes,
        };
        self.check(bytes, pending, what)?;
        Ok(held)
    }

    /// `Ok` when `bytes` more fit beside `pending` bytes of other uploads in flight.
    fn check(&self, bytes: u64, pending: u64, what: &str) -> Result<()> {
        let used = self.used();
        if let Some(max) = self.max_bytes {
            if used.saturating_add(pending).saturating_add(bytes) > max {
                refused("max_bytes");
                return Err(ServerError::ResourceExhausted(format!(
                    "the blob store is full: {} of {} bytes allowed are used (--max-bytes){}, and {what} needs {} more; uploads are refused until space is freed (reads, refs and the ledger still work)",
                    thousands(used),
                    thousands(max),
                    if pending > 0 {
                        format!(", {} more are being uploaded", thousands(pending))
                    } else {
                        String::new()
                    },
                    thousands(bytes)
                )));
            }
        }
        if self.min_free > 0 {
            for (dir, holds_blobs) in &self.dirs {
                let Some(free) = crate::metrics::free_bytes(dir) else {
                    continue;
                };
                let landing = if *holds_blobs {
                    pending.saturating_add(bytes)
                } else {
                    0
                };
                if free < landing.saturating_add(self.min_free) {
                    refused("min_free_space");
                    return Err(ServerError::ResourceExhausted(format!(
                        "the file system of {} has {} bytes free and keeps at least {} free (--min-free-space); {what} needs {} more; uploads are refused until space is freed (reads, refs and the ledger still work)",
                        dir.display(),
                        thousands(free),
                        thousands(self.min_free),
                        thousands(bytes)
                    )));
                }
            }
        }
        Ok(())
    }
}

fn refused(reason: &str) {
    if let Some(m) = crate::metrics::metrics() {
        m.uploads_refused.with_label_values(&[reason]).inc();
    }
}

/// `500GiB`, `10G` (binary: K, M, G, T with or without `iB`), `10GB` (decimal) or bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 500GiB, 10GB or bytes"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("3MiB").unwrap(), 3 << 20);
        assert_eq!(parse_size("3M").unwrap(), 3 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size(" 1TiB ").unwrap(), 1 << 40);
        assert!(parse_size("12XB").unwrap_err().contains("XB"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
    }

    #[test]
    fn the_cap_refuses_what_would_pass_it_and_says_so() {
        let s = Arc::new(Space::new(Some(3_000), 0, Vec::new(), 2_000));
        drop(s.reserve(1_000, "this upload").unwrap());
        let e = s.reserve(1_001, "this upload").err().unwrap().to_string();
        assert!(
            e.contains("2,000 of 3,000 bytes") && e.contains("1,001"),
            "{e}"
        );
        s.removed(1_500);
        drop(s.reserve(1_001, "this upload").unwrap());
        s.removed(10_000);
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn uploads_in_flight_hold_their_room_until_done() {
        let s = Arc::new(Space::new(Some(3_000), 0, Vec::new(), 0));
        let a = s.reserve(2_000, "upload a").unwrap();
        let e = s.reserve(2_000, "upload b").err().unwrap().to_string();
        assert!(e.contains("2,000 more are being uploaded"), "{e}");
        // The refused one gave its room back; the admitted one holds it until dropped.
        drop(s.reserve(1_000, "upload c").unwrap());
        s.added(2_000);
        drop(a);
        assert!(s.reserve(1_001, "upload d").is_err());
        drop(s.reserve(1_000, "upload e").unwrap());
    }

    #[test]
    fn free_space_below_the_minimum_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let free = crate::metrics::free_bytes(dir.path()).unwrap();
        let s = Arc::new(Space::new(
            None,
            free,
            vec![(dir.path().to_path_buf(), true)],
            0,
        ));
        let e = s.reserve(free, "this upload").err().unwrap().to_string();
        assert!(e.contains("--min-free-space"), "{e}");
        let s = Arc::new(Space::new(
            None,
            1,
            vec![(dir.path().to_path_buf(), true)],
            0,
        ));
        drop(s.reserve(1, "this upload").unwrap());
        // A directory that only the index fills refuses only below the minimum itself.
        let s = Arc::new(Space::new(
            None,
            free / 2,
            vec![(dir.path().to_path_buf(), false)],
            0,
        ));
        drop(s.reserve(free, "this upload").unwrap());
    }
}
