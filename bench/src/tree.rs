//! The release-like tree the transfer figures are measured on, and the hash baseline.
//!
//! Default shape (2 GiB): about 1,500 package-sized files of 20 KB-1.2 MB spread over 40
//! package folders, a few executable tools, and eight archives holding 56% of the bytes
//! (150 MB each at 2 GiB). Every size scales with `--size`; contents are pseudo-random
//! (incompressible) from a fixed seed, so two runs measure the same bytes.

use rayon::prelude::*;
use stagecache_proto::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Share of the tree's bytes held by the eight archives.
const ARCHIVE_SHARE: f64 = 0.56;
const ARCHIVES: u64 = 8;
const PACKAGE_MIN: u64 = 20_000;
const PACKAGE_MAX: u64 = 1_200_000;
/// Files at least this large are hashed by memory map on all cores (as `b3sum` does).
const MMAP_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// One file of a generated tree.
#[derive(Debug, Clone)]
pub struct TreeFile {
    pub rel: String,
    pub size: u64,
    pub seed: u64,
    pub executable: bool,
}

/// Deterministic xorshift64 stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The file list of a release-like tree of about `total` bytes.
pub fn plan(total: u64, seed: u64) -> Vec<TreeFile> {
    let mut rng = Rng::new(seed);
    let archive = ((total as f64 * ARCHIVE_SHARE) / ARCHIVES as f64) as u64;
    let mut files: Vec<TreeFile> = (0..ARCHIVES)
        .map(|i| TreeFile {
            rel: format!("archives/Product.Runtime.{i}.zip"),
            size: archive.max(1),
            seed: rng.next(),
            executable: false,
        })
        .collect();
    let mut remaining = total.saturating_sub(archive * ARCHIVES);
    let mut i = 0u64;
    while remaining > 0 {
        let size = rng.range(PACKAGE_MIN, PACKAGE_MAX).min(remaining);
        remaining -= size;
        let (rel, executable) = if i % 50 == 49 {
            (format!("tools/tool-{i}"), true)
        } else {
            (
                format!(
                    "packages/group-{:02}/Product.Package{i}.10.0.{i}.nupkg",
                    i % 40
                ),
                false,
            )
        };
        files.push(TreeFile {
            rel,
            size,
            seed: rng.next(),
            executable,
        });
        i += 1;
    }
    files
}

/// Writes one file's pseudo-random content in 1 MiB pieces (memory stays flat).
pub fn write_file(root: &Path, f: &TreeFile) -> std::io::Result<()> {
    let path = root.join(&f.rel);
    std::fs::create_dir_all(path.parent().expect("file has a parent"))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut rng = Rng::new(f.seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = f.size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if f.executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes every file of the plan under `root`, in parallel.
pub fn generate(root: &Path, files: &[TreeFile]) -> std::io::Result<()> {
    files.par_iter().try_for_each(|f| write_file(root, f))
}

/// A file found under a root: relative path, digest and executable bit.
pub type Listing = Vec<(String, Digest, bool)>;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, bool)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            walk(root, &p, out)?;
        } else {
            #[cfg(unix)]
            let exec = {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o111 != 0
            };
            #[cfg(not(unix))]
            let exec = false;
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, p, exec));
        }
    }
    Ok(())
}

/// Hashes one file the fastest way BLAKE3 offers: multi-threaded over a memory map when
/// large, a plain read when small.
fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    if std::fs::metadata(path)?.len() >= MMAP_MIN_BYTES {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(Digest::new(*hasher.finalize().as_bytes(), hasher.count()))
}

/// The hash baseline: every file of the tree under `root` hashed with BLAKE3 on all
/// cores. Returns the sorted listing, which also serves to compare two trees.
pub fn hash_tree(root: &Path) -> std::io::Result<Listing> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    let mut listing: Listing = files
        .into_par_iter()
        .map(|(rel, path, exec)| Ok((rel, hash_file(&path)?, exec)))
        .collect::<std::io::Result<_>>()?;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_the_release_shape_and_is_reproducible() {
        let total = 2 * 1024 * 1024 * 1024;
        let files = plan(total, 1);
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        assert_eq!(bytes, total);
        let archives: Vec<_> = files
            .iter()
            .filter(|f| f.rel.starts_with("archives/"))
            .collect();
        assert_eq!(archives.len(), 8);
        assert!(archives
            .iter()
            .all(|f| (150_000_000..151_000_000).contains(&f.size)));
        let packages = files.len() - 8;
        assert!(
            (1_400..1_700).contains(&packages),
            "{packages} package files"
        );
        assert!(files.iter().any(|f| f.executable));
        let again = plan(total, 1);
        assert!(files
            .iter()
            .zip(&again)
            .all(|(a, b)| a.rel == b.rel && a.seed == b.seed));
        assert_ne!(plan(total, 2)[0].seed, files[0].seed);
    }

    #[test]
    fn generated_files_hash_like_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = plan(3 * 1024 * 1024, 7);
        generate(dir.path(), &files).unwrap();
        let listing = hash_tree(dir.path()).unwrap();
        assert_eq!(listing.len(), files.len());
        for (rel, digest, _) in &listing {
            let bytes = std::fs::read(dir.path().join(rel)).unwrap();
            assert_eq!(*digest, Digest::of_bytes(&bytes), "{rel}");
        }
    }
}
