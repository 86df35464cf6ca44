//! Walking and hashing a directory tree in parallel: large files through multi-threaded
//! BLAKE3 over a memory map (one window at a time), many small files on a bounded pool of
//! threads (rayon's, one per core).

use crate::error::{ClientError, Result};
use rayon::prelude::*;
use stagecache_proto::path::validate_path;
use stagecache_proto::{Digest, Manifest, ManifestEntry};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Files at least this large are hashed by memory map on all cores.
const MMAP_MIN_BYTES: u64 = 4 * 1024 * 1024;
/// Window of a large file mapped at once (a multiple of the page size and of BLAKE3's
/// 1 KiB chunks): bounds the resident memory hashing adds, whatever the file's size.
const MMAP_WINDOW_BYTES: u64 = 32 * 1024 * 1024;

/// A regular file found under a root.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path relative to the root, '/'-separated.
    pub path: String,
    pub abs: PathBuf,
    pub size: u64,
    pub executable: bool,
}

/// A file with its digest.
#[derive(Debug, Clone)]
pub struct HashedFile {
    pub file: LocalFile,
    pub digest: Digest,
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Lists the regular files under `root`. Symlinks and special files are refused: an
/// asset set is plain files, and a link's target is not part of the set.
pub fn scan(root: &Path) -> Result<Vec<LocalFile>> {
    let meta = std::fs::metadata(root).map_err(|e| ClientError::io(root, e))?;
    if !meta.is_dir() {
        return Err(ClientError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            ClientError::io(path, e.into())
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        let abs = entry.path().to_path_buf();
        if ft.is_symlink() {
            return Err(ClientError::Invalid(format!(
                "{} is a symbolic link; asset sets hold regular files only",
                abs.display()
            )));
        }
        if !ft.is_file() {
            return Err(ClientError::Invalid(format!(
                "{} is not a regular file",
                abs.display()
            )));
        }
        let rel = abs.strip_prefix(root).map_err(|_| {
            ClientError::Invalid(format!("{} is outside {}", abs.display(), root.display()))
        })?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| {
                c.as_os_str().to_str().ok_or_else(|| {
                    ClientError::Invalid(format!("{}: path is not valid UTF-8", abs.display()))
                })
            })
            .collect::<Result<_>>()?;
        let path = parts.join("/");
        validate_path("file", &path)?;
        let meta = entry
            .metadata()
            .map_err(|e| ClientError::io(&abs, e.into()))?;
        files.push(LocalFile {
            path,
            size: meta.len(),
            executable: is_executable(&meta),
            abs,
        });
    }
    Ok(files)
}

/// Hashes one file: by memory map on all cores when large, by reading when small.
pub fn hash_file(path: &Path, size_hint: u64) -> Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    if size_hint >= MMAP_MIN_BYTES {
        // Mapped a window at a time: a whole-file map of a 4 GiB archive would count
        // every page of it in this process's resident memory.
        let f = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
        let len = f.metadata().map_err(|e| ClientError::io(path, e))?.len();
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(MMAP_WINDOW_BYTES);
            // SAFETY: the map is read-only and dropped before the next one. A file
            // rewritten meanwhile yields a digest the server refuses; one truncated while
            // mapped faults (SIGBUS), as with any memory map of a file.
            let map = unsafe {
                memmap2::MmapOptions::new()
                    .offset(offset)
                    .len(n as usize)
                    .map(&f)
            }
            .map_err(|e| ClientError::io(path, e))?;
            hasher.update_rayon(&map);
            offset += n;
        }
    } else {
        let mut f = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| ClientError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let size = hasher.count();
    Ok(Digest::new(*hasher.finalize().as_bytes(), size))
}

/// Hashes every file in parallel. Blocking: call from a blocking thread.
pub fn hash_files(files: Vec<LocalFile>) -> Result<Vec<HashedFile>> {
    files
        .into_par_iter()
        .map(|file| {
            let digest = hash_file(&file.abs, file.size)?;
            if digest.size() != file.size {
                return Err(ClientError::Invalid(format!(
                    "{} changed size while it was hashed ({} then {} bytes)",
                    file.abs.display(),
                    file.size,
                    digest.size()
                )));
            }
            Ok(HashedFile { file, digest })
        })
        .collect()
}

/// Scans and hashes a tree and builds its manifest. Blocking.
pub fn manifest_of(root: &Path) -> Result<(Manifest, Vec<HashedFile>)> {
    let hashed = hash_files(scan(root)?)?;
    let entries = hashed
        .iter()
        .map(|h| ManifestEntry {
            path: h.file.path.clone(),
            digest: h.digest,
            executable: h.file.executable,
        })
        .collect();
    Ok((Manifest::from_entries(entries)?, hashed))
}
