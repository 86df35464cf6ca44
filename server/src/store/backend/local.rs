//! The local file system as a backend: objects are files under a root directory.
//!
//! Every write is staged in a file beside its target (`<name>#<random>`), synced, and
//! published by one rename (a create-only put: a hard link, which fails when the target
//! exists), after which the directory is synced too: an acknowledged object survives a
//! power cut, and a half-written one is never visible. Staging files a crash left behind
//! are swept at start ([`LocalBackend::sweep_staging`]).
//!
//! Conditional updates (the lease) hold an advisory lock on `<name>.lock` while they
//! compare and replace, so two servers sharing a data directory's file system honour
//! each other's lease as they would on a cloud store. An object's version is the BLAKE3
//! of its bytes.
//!
//! Reads and writes run on blocking threads straight between the file and the buffers
//! that travel on (no copy through an async file's own buffer).

use super::{
    Backend, ByteStream, Entry, PutMode, ReadCheck, StorageError, Upload, Version, Written,
};
use bytes::Bytes;
use futures::StreamExt;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Bytes gathered before one write to the file; one such write is in flight while the
/// next buffer fills.
const WRITE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// O_DIRECT's alignment, of memory, file offsets and lengths (the largest logical block
/// size of common disks).
const DIRECT_ALIGN: usize = 4096;

/// Whether an I/O error is the kernel refusing O_DIRECT for this file, memory or
/// alignment (a file system that took the flag but not the request).
fn refused_direct(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Writes `data` at the file's position: with O_DIRECT while `*direct`, and through the
/// page cache from the first direct write the file refuses, or completes only in part
/// off a block boundary (the next one would start misaligned); `*direct` then turns
/// false and stays so for the file.
fn write_out(file: &mut std::fs::File, mut data: &[u8], direct: &mut bool) -> std::io::Result<()> {
    while !data.is_empty() {
        if !*direct {
            return file.write_all(data);
        }
        match file.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                if !n.is_multiple_of(DIRECT_ALIGN) {
                    clear_direct(file)?;
                    *direct = false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if refused_direct(&e) => {
                clear_direct(file)?;
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A buffer whose bytes start on a [`DIRECT_ALIGN`] boundary, as O_DIRECT wants of memory;
/// made by over-allocating a `Vec` and starting at the first aligned byte. It writes to
/// a file opened with O_DIRECT in whole blocks, keeping the partial last one, and goes
/// on through the page cache if the file refuses a direct write.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    /// Still writing with O_DIRECT.
    direct: bool,
}

impl AlignedBuf {
    fn with_capacity(cap: usize) -> Self {
        let cap = cap.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let raw = vec![0u8; cap + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf {
            raw,
            start,
            len: 0,
            direct: true,
        }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - DIRECT_ALIGN
    }

    fn push(&mut self, data: &[u8]) {
        if self.len + data.len() > self.capacity() {
            let mut bigger = AlignedBuf::with_capacity(self.len + data.len());
            bigger.direct = self.direct;
            bigger.push(&self.raw[self.start..self.start + self.len]);
            *self = bigger;
        }
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Writes the whole blocks held and keeps the partial last one (everything, once the
    /// file refused a direct write).
    fn write_blocks(&mut self, file: &mut std::fs::File) -> std::io::Result<()> {
        let whole = match self.direct {
            true => self.len / DIRECT_ALIGN * DIRECT_ALIGN,
            false => self.len,
        };
        if whole > 0 {
            write_out(
                file,
                &self.raw[self.start..self.start + whole],
                &mut self.direct,
            )?;
            self.raw
                .copy_within(self.start + whole..self.start + self.len, self.start);
            self.len -= whole;
        }
        if !self.direct && self.len > 0 {
            // Refused on the way: the partial block goes out through the page cache too.
            return self.write_blocks(file);
        }
        Ok(())
    }

    /// Writes what is left, padded with zeros to a whole block while direct; the caller
    /// then cuts the file to its true length.
    fn write_rest(&mut self, file: &mut std::fs::File) -> std::io::Result<()> {
        if self.len > 0 {
            let padded = match self.direct {
                true => self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN,
                false => self.len,
            };
            self.raw[self.start + self.len..self.start + padded].fill(0);
            write_out(
                file,
                &self.raw[self.start..self.start + padded],
                &mut self.direct,
            )?;
            self.len = 0;
        }
        Ok(())
    }
}

/// Turns O_DIRECT on for an open file; `false` when its file system refuses it (the file
/// then goes through the page cache as before).
fn set_direct(file: &std::fs::File) -> std::io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    match rustix::fs::fcntl_setfl(file, flags | rustix::fs::OFlags::DIRECT) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Turns O_DIRECT off again (a read the file system refused to do directly).
fn clear_direct(file: &std::fs::File) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags.difference(rustix::fs::OFlags::DIRECT))?;
    Ok(())
}

/// Creates a staging file, with O_DIRECT when asked and the file system allows it.
/// Returns the file and whether it is direct.
fn create_staging(path: &Path, direct: bool) -> std::io::Result<(std::fs::File, bool)> {
    let file = std::fs::File::create_new(path)?;
    // Turned on after the create, not in it: Linux creates the file before it checks
    // O_DIRECT, so a refused open would leave the file behind.
    let direct = direct && set_direct(&file)?;
    Ok((file, direct))
}

/// Reads `want` bytes at `at` from a file opened with O_DIRECT: the whole blocks around
/// them, into aligned memory, handed out as a slice of it (no copy). Fewer than `want`
/// bytes come back only at the end of the file.
fn read_direct(file: &std::fs::File, at: u64, want: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let align = DIRECT_ALIGN as u64;
    let start = at / align * align;
    let skip = (at - start) as usize;
    let span = (skip + want).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut raw = vec![0u8; span + DIRECT_ALIGN];
    let base = raw.as_ptr().align_offset(DIRECT_ALIGN);
    let mut got = 0;
    while got < span {
        match file.read_at(&mut raw[base + got..base + span], start + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                // Only the end of the file stops a direct read short of a block; the
                // next read would start off the alignment.
                if !n.is_multiple_of(DIRECT_ALIGN) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let have = got.saturating_sub(skip).min(want);
    Ok(Bytes::from(raw).slice(base + skip..base + skip + have))
}

pub struct LocalBackend {
    root: PathBuf,
    describe: String,
    /// Objects of at least this many bytes are written (put or streamed) and read with
    /// O_DIRECT (`--direct-io`); 0: none.
    direct_min: std::sync::atomic::AtomicU64,
}

impl LocalBackend {
    /// Objects under `root`, created if missing.
    pub fn open(root: PathBuf) -> Result<Self, StorageError> {
        let describe = format!("file://{}", root.display());
        std::fs::create_dir_all(&root).map_err(|e| {
            StorageError::failed(
                &describe,
                "create directory",
                &root.display().to_string(),
                e,
            )
        })?;
        Ok(LocalBackend {
            root,
            describe,
            direct_min: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn io(&self, op: &'static str, name: &str, e: std::io::Error) -> StorageError {
        io_error(&self.describe, op, name, e)
    }

    /// The least size read and written with O_DIRECT; `u64::MAX` when none is.
    fn direct_min(&self) -> u64 {
        match self.direct_min.load(std::sync::atomic::Ordering::Relaxed) {
            0 => u64::MAX,
            n => n,
        }
    }

    /// Whether an object of `size` bytes goes around the page cache.
    fn direct_for(&self, size: u64) -> bool {
        size >= self.direct_min()
    }

    fn sweep(&self) -> usize {
        walkdir::WalkDir::new(&self.root)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file() && is_staging(e.path()))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r.map_err(|e| self.io(op, name, e)),
            Err(e) => Err(StorageError::failed(&self.describe, op, name, e)),
        }
    }
}

/// A file read chunk by chunk on blocking threads, each chunk passed through the read's
/// check on the thread that read it.
struct ChunkReader {
    /// Opened by the first chunk's read.
    file: Option<std::fs::File>,
    /// Files of at least this size are read with O_DIRECT (`u64::MAX`: none).
    direct_min: u64,
    /// The file was opened with O_DIRECT.
    direct: bool,
    /// The file's size when it was opened (only looked up for a direct read).
    size: u64,
    path: PathBuf,
    check: Option<Box<dyn ReadCheck>>,
    backend: String,
    name: String,
    offset: u64,
    len: u64,
    done: u64,
    chunk: u64,
}

type PendingChunk =
    futures::future::BoxFuture<'static, Result<(Option<ChunkReader>, Bytes), StorageError>>;

impl ChunkReader {
    /// Starts reading the next chunk on a blocking thread now (read-ahead), to be awaited
    /// later: the chunk, and the reader while more remains. A stream dropped meanwhile
    /// lets the one chunk finish and drops it.
    fn spawn(self) -> PendingChunk {
        let (backend, name) = (self.backend.clone(), self.name.clone());
        let task = tokio::task::spawn_blocking(move || self.read_chunk());
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(StorageError::failed(&backend, "read", &name, e)),
            }
        })
    }

    fn read_chunk(mut self) -> Result<(Option<ChunkReader>, Bytes), StorageError> {
        let opened = self.file.take();
        let io = |e| io_error(&self.backend, "read", &self.name, e);
        let mut file = match opened {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(&self.path).map_err(io)?;
                // A large object is read around the page cache, as it was written: the
                // disk's DMA fills this process's buffer, and no page-cache page is
                // filled (the costly part of a buffered read) nor kept.
                if self.direct_min != u64::MAX {
                    self.size = f.metadata().map_err(io)?.len();
                    self.direct = self.size >= self.direct_min && set_direct(&f).map_err(io)?;
                }
                f
            }
        };
        let want = (self.len - self.done).min(self.chunk);
        let at = self.offset + self.done;
        let buf = match self.direct {
            true => match read_direct(&file, at, want as usize) {
                // Short of the file's end (a network file system may do that): this read
                // goes on through the page cache.
                Ok(b) if (b.len() as u64) < want && at + (b.len() as u64) < self.size => None,
                Ok(b) => Some(b),
                // The file system took O_DIRECT but not this alignment: the same.
                Err(e) if refused_direct(&e) => None,
                Err(e) => return Err(io(e)),
            },
            false => None,
        };
        if self.direct && buf.is_none() {
            // And so do the later ones.
            clear_direct(&file).map_err(io)?;
            self.direct = false;
        }
        let buf = match buf {
            Some(b) => b,
            None => {
                // Positioned each time: a direct read before this one did not move it.
                file.seek(std::io::SeekFrom::Start(at)).map_err(io)?;
                let mut buf = Vec::with_capacity(want as usize);
                (&mut file).take(want).read_to_end(&mut buf).map_err(io)?;
                Bytes::from(buf)
            }
        };
        if buf.len() as u64 != want {
            return Err(StorageError::Short {
                backend: self.backend,
                path: self.name,
                offset: self.offset,
                wanted: self.len,
                got: self.done + buf.len() as u64,
            });
        }
        if let Some(check) = &mut self.check {
            check.check(&buf).map_err(|why| StorageError::Damaged {
                backend: self.backend.clone(),
                path: self.name.clone(),
                why,
            })?;
        }
        self.done += want;
        self.file = Some(file);
        let more = (self.done < self.len).then_some(self);
        Ok((more, buf))
    }
}

/// Threads a batch of deletions runs on.
const DELETE_THREADS: usize = 8;

fn io_error(backend: &str, op: &'static str, name: &str, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound {
            backend: backend.to_string(),
            path: name.to_string(),
        }
    } else {
        StorageError::failed(backend, op, name, e)
    }
}

/// A staging file (ours, or object_store's from before this backend): `<name>#<nonce>`.
fn is_staging(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().contains('#'))
        .unwrap_or(false)
}

/// Not an object: a staging file, or the lock file of a conditional update (which is
/// never swept: another server may hold its lock).
fn is_hidden(p: &Path) -> bool {
    is_staging(p)
        || p.file_name()
            .map(|n| n.to_string_lossy().ends_with(".lock"))
            .unwrap_or(false)
}

fn staging_path(target: &Path) -> PathBuf {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!("#{}", &nonce[..12]));
    target.with_file_name(name)
}

/// Syncs a directory, so that a rename or link into it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, syncing each parent a directory was created in:
/// an object published in a new directory (`cas/ab/`, `journal/`) survives a power cut
/// with the directory that holds it.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let up = parent(dir);
    create_dirs(up)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(up),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

/// Writes `data` to a new staging file beside `target`, synced; returns its path. With
/// O_DIRECT when `direct` (a put of a blob at least `--direct-io` large) and the file
/// system allows it.
fn stage(target: &Path, data: &[Bytes], direct: bool) -> std::io::Result<PathBuf> {
    create_dirs(parent(target))?;
    let staged = staging_path(target);
    let write = || -> std::io::Result<()> {
        let (mut f, direct) = create_staging(&staged, direct)?;
        if direct {
            let length: usize = data.iter().map(Bytes::len).sum();
            let mut buf = AlignedBuf::with_capacity(length);
            for d in data {
                buf.push(d);
            }
            // All of it in one write, the last block padded; then cut to its length.
            buf.write_rest(&mut f)?;
            f.set_len(length as u64)?;
        } else {
            for d in data {
                f.write_all(d)?;
            }
        }
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    Ok(staged)
}

fn publish_rename(staged: &Path, target: &Path) -> std::io::Result<()> {
    if let Err(e) = std::fs::rename(staged, target) {
        let _ = std::fs::remove_file(staged);
        return Err(e);
    }
    sync_dir(parent(target))
}

fn version_of(bytes: &[u8]) -> Version {
    Version {
        e_tag: Some(blake3::hash(bytes).to_hex().to_string()),
        version: None,
    }
}

fn read_optional(p: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn sweep_staging(&self) -> usize {
        self.sweep()
    }

    fn set_direct_io(&self, min_bytes: u64) -> bool {
        self.direct_min
            .store(min_bytes, std::sync::atomic::Ordering::Relaxed);
        true
    }

    async fn put(
        &self,
        name: &str,
        data: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<Written, StorageError> {
        let target = self.file(name);
        let direct = self.direct_for(data.iter().map(|d| d.len() as u64).sum());
        self.blocking("put", name, move || match mode {
            PutMode::Overwrite => {
                let staged = stage(&target, &data, direct)?;
                publish_rename(&staged, &target)?;
                Ok(Written::Done)
            }
            PutMode::Create => {
                let staged = stage(&target, &data, direct)?;
                let linked = std::fs::hard_link(&staged, &target);
                let _ = std::fs::remove_file(&staged);
                match linked {
                    Ok(()) => {
                        sync_dir(parent(&target))?;
                        Ok(Written::Done)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Ok(Written::Conflict)
                    }
                    Err(e) => Err(e),
                }
            }
            PutMode::Update(expected) => {
                create_dirs(parent(&target))?;
                let mut lock_name = target.file_name().unwrap_or_default().to_os_string();
                lock_name.push(".lock");
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(target.with_file_name(lock_name))?;
                lock.lock()?;
                let current = read_optional(&target)?;
                if current.as_deref().map(version_of) != Some(expected) {
                    return Ok(Written::Conflict);
                }
                let staged = stage(&target, &data, direct)?;
                publish_rename(&staged, &target)?;
                Ok(Written::Done)
            }
        })
        .await
    }

    async fn upload(&self, name: &str, size: u64) -> Result<Box<dyn Upload>, StorageError> {
        let target = self.file(name);
        let staged = staging_path(&target);
        let open = (target.clone(), staged.clone());
        let direct = self.direct_for(size);
        let (file, direct) = self
            .blocking("upload", name, move || {
                create_dirs(parent(&open.0))?;
                create_staging(&open.1, direct)
            })
            .await?;
        Ok(Box::new(LocalUpload {
            aligned: direct.then(|| AlignedBuf::with_capacity(WRITE_BATCH_BYTES + (1 << 20))),
            length: 0,
            backend: self.describe.clone(),
            name: name.to_string(),
            target,
            staged,
            file: Some(file),
            in_flight: None,
            pending: Vec::new(),
            pending_bytes: 0,
            published: false,
        }))
    }

    async fn read(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let path = self.file(name);
        let reader = ChunkReader {
            file: None,
            direct_min: self.direct_min(),
            direct: false,
            size: 0,
            path,
            check,
            backend: self.describe.clone(),
            name: name.to_string(),
            offset,
            len,
            done: 0,
            chunk: chunk.max(1) as u64,
        };
        // The file is opened, and its first chunk read, before this returns (so a missing
        // or damaged object fails the call itself); each later chunk is read, and checked,
        // on a blocking thread while the one before it travels on.
        let (reader, first) = reader.spawn().await?;
        let ahead = reader.map(ChunkReader::spawn);
        Ok(futures::stream::once(futures::future::ready(Ok(first)))
            .chain(futures::stream::try_unfold(ahead, |ahead| async move {
                let Some(pending) = ahead else {
                    return Ok(None);
                };
                let (reader, bytes) = pending.await?;
                Ok(Some((bytes, reader.map(ChunkReader::spawn))))
            }))
            .boxed())
    }

    async fn get(&self, name: &str) -> Result<Option<(Bytes, Version)>, StorageError> {
        let path = self.file(name);
        let bytes = self
            .blocking("get", name, move || read_optional(&path))
            .await?;
        Ok(bytes.map(|b| {
            let v = version_of(&b);
            (Bytes::from(b), v)
        }))
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.file(name);
        self.blocking("delete", name, move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }

    /// The whole list on [`DELETE_THREADS`] threads: unlinks on one thread ran at a third
    /// of the rate of many (the file system works on several at once), and a thread
    /// hand-off per file costs more than its unlink. The directories are not synced: a
    /// crash of the machine (not the process) may bring a file back, which then only holds
    /// space (its index entry is gone; a rebuild would list it again).
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), StorageError> {
        let Some(first) = paths.first().cloned() else {
            return Ok(());
        };
        let files: Vec<PathBuf> = paths.iter().map(|p| self.file(p)).collect();
        self.blocking("delete", &first, move || {
            let per_thread = files.len().div_ceil(DELETE_THREADS);
            std::thread::scope(|scope| {
                let workers: Vec<_> = files
                    .chunks(per_thread.max(1))
                    .map(|part| {
                        scope.spawn(move || {
                            for f in part {
                                match std::fs::remove_file(f) {
                                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                        return Err(std::io::Error::new(
                                            e.kind(),
                                            format!("{}: {e}", f.display()),
                                        ))
                                    }
                                    _ => {}
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(std::io::Error::other("delete thread panicked"))
                        })
                    })
                    .collect::<std::io::Result<Vec<()>>>()
                    .map(|_| ())
            })
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<bool, StorageError> {
        let (from, to) = (self.file(from), self.file(to));
        self.blocking("rename", &from.display().to_string(), move || {
            if !from.exists() {
                return Ok(false);
            }
            create_dirs(parent(&to))?;
            match std::fs::rename(&from, &to) {
                Ok(()) => sync_dir(parent(&to)).map(|_| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Entry>, StorageError> {
        let root = self.root.clone();
        let dir = self.file(prefix);
        let after = after.map(str::to_string);
        self.blocking("list", prefix, move || {
            let mut out = Vec::new();
            for e in walkdir::WalkDir::new(&dir) {
                let e = match e {
                    Ok(e) => e,
                    // The prefix itself missing: nothing stored under it yet.
                    Err(e)
                        if e.depth() == 0
                            && e.io_error().map(|e| e.kind())
                                == Some(std::io::ErrorKind::NotFound) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                };
                if !e.file_type().is_file() || is_hidden(e.path()) {
                    continue;
                }
                let Ok(rel) = e.path().strip_prefix(&root) else {
                    continue;
                };
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if after.as_deref().is_some_and(|a| name.as_str() <= a) {
                    continue;
                }
                // A file removed while the listing walks (a quarantine, a delete) is not
                // an error: it is simply not listed.
                let meta = match e.metadata() {
                    Ok(m) => m,
                    Err(err)
                        if err.io_error().map(|e| e.kind())
                            == Some(std::io::ErrorKind::NotFound) =>
                    {
                        continue
                    }
                    Err(err) => return Err(err.into()),
                };
                out.push(Entry {
                    name,
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn has_any(&self, prefix: &str) -> Result<bool, StorageError> {
        let dir = self.file(prefix);
        self.blocking("list", prefix, move || {
            Ok(walkdir::WalkDir::new(&dir)
                .into_iter()
                .flatten()
                .any(|e| e.file_type().is_file() && !is_hidden(e.path())))
        })
        .await
    }
}

type Pending = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Option<AlignedBuf>)>>;

/// A file being written: buffers up to [`WRITE_BATCH_BYTES`] and writes them on a
/// blocking thread while the next buffer fills; renamed into place by `finish`.
struct LocalUpload {
    backend: String,
    name: String,
    target: PathBuf,
    staged: PathBuf,
    /// The file, when no write is in flight.
    file: Option<std::fs::File>,
    in_flight: Option<Pending>,
    pending: Vec<Bytes>,
    pending_bytes: usize,
    published: bool,
    /// For a file opened with O_DIRECT: the bytes not yet written (less than one block
    /// between writes), travelling with the file to each write.
    aligned: Option<AlignedBuf>,
    /// Bytes received, the file's true length.
    length: u64,
}

impl LocalUpload {
    fn io(&self, e: std::io::Error) -> StorageError {
        io_error(&self.backend, "upload", &self.name, e)
    }

    /// Waits for the write in flight, taking the file back.
    async fn settle(&mut self) -> Result<(), StorageError> {
        if let Some(h) = self.in_flight.take() {
            let (file, aligned) = h
                .await
                .map_err(|e| StorageError::failed(&self.backend, "upload", &self.name, e))?
                .map_err(|e| self.io(e))?;
            self.file = Some(file);
            self.aligned = aligned;
        }
        Ok(())
    }

    /// Starts writing the buffered bytes (after the previous write completed).
    async fn flush(&mut self) -> Result<(), StorageError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(mut file) = self.file.take() else {
            return Err(StorageError::failed(
                &self.backend,
                "upload",
                &self.name,
                "write after a failed write",
            ));
        };
        let data = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut aligned = self.aligned.take();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            match &mut aligned {
                // O_DIRECT: whole blocks from aligned memory; the partial last one waits.
                Some(buf) => {
                    for d in &data {
                        buf.push(d);
                    }
                    buf.write_blocks(&mut file)?;
                }
                None => {
                    for d in &data {
                        file.write_all(d)?;
                    }
                }
            }
            Ok((file, aligned))
        }));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.length += data.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push(data);
        if self.pending_bytes >= WRITE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        self.flush().await?;
        self.settle().await?;
        let Some(file) = self.file.take() else {
            return Err(self.io(std::io::Error::other("no file to publish")));
        };
        let (staged, target) = (self.staged.clone(), self.target.clone());
        let (aligned, length) = (self.aligned.take(), self.length);
        let published = tokio::task::spawn_blocking(move || {
            let mut file = file;
            if let Some(mut buf) = aligned {
                // The last block went out padded with zeros: cut them off.
                buf.write_rest(&mut file)?;
                file.set_len(length)?;
            }
            file.sync_all()?;
            drop(file);
            publish_rename(&staged, &target)
        })
        .await
        .map_err(|e| StorageError::failed(&self.backend, "upload", &self.name, e))?;
        published.map_err(|e| self.io(e))?;
        self.published = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        let _ = self.settle().await;
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.published {
            // A write may still be in flight: it fails or finishes on an unlinked file.
            let _ = std::fs::remove_file(&self.staged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("blobs")).unwrap();
        (dir, b)
    }

    /// Says whether this file system does O_DIRECT (ext4, xfs; not tmpfs before Linux
    /// 6.6): where it does, the direct paths are taken; where not, their fallbacks.
    fn report_direct(dir: &Path) {
        let (_, direct) = create_staging(&dir.join("probe"), true).unwrap();
        eprintln!("O_DIRECT on this file system: {direct}");
    }

    async fn read_all(b: &LocalBackend, name: &str, offset: u64, len: u64) -> Vec<u8> {
        read_chunks(b, name, offset, len, 3).await
    }

    /// [`read_all`] in chunks of about `chunk` bytes.
    async fn read_chunks(
        b: &LocalBackend,
        name: &str,
        offset: u64,
        len: u64,
        chunk: usize,
    ) -> Vec<u8> {
        let mut s = b.read(name, offset, len, chunk, None).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn put_modes_and_versions() {
        let (_d, b) = backend();
        let one = vec![Bytes::from_static(b"one")];
        let two = vec![Bytes::from_static(b"t"), Bytes::from_static(b"wo")];
        assert_eq!(
            b.put("j/1", one.clone(), PutMode::Create).await.unwrap(),
            Written::Done
        );
        assert_eq!(
            b.put("j/1", two.clone(), PutMode::Create).await.unwrap(),
            Written::Conflict
        );
        let (bytes, v1) = b.get("j/1").await.unwrap().unwrap();
        assert_eq!(&bytes[..], b"one");
        assert_eq!(
            b.put("j/1", two.clone(), PutMode::Update(v1.clone()))
                .await
                .unwrap(),
            Written::Done
        );
        // The old version no longer matches.
        assert_eq!(
            b.put("j/1", one.clone(), PutMode::Update(v1))
                .await
                .unwrap(),
            Written::Conflict
        );
        assert_eq!(&b.get("j/1").await.unwrap().unwrap().0[..], b"two");
        assert_eq!(
            b.put("j/1", one, PutMode::Overwrite).await.unwrap(),
            Written::Done
        );
        assert_eq!(read_all(&b, "j/1", 1, 2).await, b"ne");
        assert!(b.get("j/none").await.unwrap().is_none());
    }

    #[test]
    fn an_aligned_buffer_writes_whole_blocks_and_pads_only_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut buf = AlignedBuf::with_capacity(DIRECT_ALIGN);
        assert_eq!(buf.raw[buf.start..].as_ptr() as usize % DIRECT_ALIGN, 0);
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        buf.push(&data[..10]);
        buf.write_blocks(&mut file).unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            0,
            "a partial block was written"
        );
        // Past its capacity: it grows, keeping what it held, still aligned.
        buf.push(&data[10..]);
        assert_eq!(buf.raw[buf.start..].as_ptr() as usize % DIRECT_ALIGN, 0);
        buf.write_blocks(&mut file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 3 * DIRECT_ALIGN as u64);
        assert_eq!(buf.len, 17);
        buf.write_rest(&mut file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4 * DIRECT_ALIGN as u64);
        file.set_len(data.len() as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn direct_uploads_store_every_byte_whatever_the_pieces() {
        let (d, b) = backend();
        report_direct(d.path());
        assert!(b.set_direct_io(1));
        let piece = |n: usize, seed: u8| -> Bytes {
            Bytes::from(
                (0..n)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect::<Vec<u8>>(),
            )
        };
        for (name, sizes) in [
            ("one-byte", vec![1]),
            ("one-block", vec![DIRECT_ALIGN]),
            ("block-and-one", vec![DIRECT_ALIGN - 1, 2]),
            (
                "uneven",
                vec![1 << 20, 3, WRITE_BATCH_BYTES + 1, 4095, 1 << 20],
            ),
        ] {
            let total = sizes.iter().sum::<usize>() as u64;
            let mut u = b.upload(&format!("cas/{name}"), total).await.unwrap();
            let mut want = Vec::new();
            for (i, n) in sizes.into_iter().enumerate() {
                let p = piece(n, i as u8);
                want.extend_from_slice(&p);
                u.write(p).await.unwrap();
            }
            u.finish().await.unwrap();
            let got = std::fs::read(d.path().join("blobs/cas").join(name)).unwrap();
            assert_eq!(got.len(), want.len(), "{name}: length");
            assert!(got == want, "{name}: bytes differ");
        }
    }

    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (mut file, direct) = create_staging(&path, true).unwrap();
        eprintln!("O_DIRECT on this file system: {direct}");
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN + 5 + 1)
            .map(|i| (i % 249) as u8)
            .collect();
        // Memory one byte off the alignment: a direct write of it is refused (EINVAL).
        let misaligned = if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            &data[1..]
        } else {
            &data[..data.len() - 1]
        };
        let mut still_direct = direct;
        write_out(&mut file, misaligned, &mut still_direct).unwrap();
        assert!(
            !still_direct || !direct,
            "the refused write did not turn direct off"
        );
        file.sync_all().unwrap();
        assert!(std::fs::read(&path).unwrap() == misaligned);
        // The file itself no longer has O_DIRECT: a later plain write works.
        file.write_all(b"tail").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            misaligned.len() as u64 + 4
        );
    }

    #[tokio::test]
    async fn direct_puts_store_every_byte() {
        let (d, b) = backend();
        assert!(b.set_direct_io(DIRECT_ALIGN as u64));
        for len in [DIRECT_ALIGN, DIRECT_ALIGN + 1, 5 * DIRECT_ALIGN - 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            let pieces = vec![
                Bytes::copy_from_slice(&data[..7]),
                Bytes::copy_from_slice(&data[7..]),
            ];
            let name = format!("cas/p{len}");
            b.put(&name, pieces, PutMode::Overwrite).await.unwrap();
            assert!(std::fs::read(d.path().join("blobs").join(&name)).unwrap() == data);
            assert!(read_all(&b, &name, 0, len as u64).await == data);
        }
    }

    #[tokio::test]
    async fn direct_reads_return_every_range_and_find_a_short_file_short() {
        let (d, b) = backend();
        report_direct(d.path());
        let len = 3 * DIRECT_ALIGN + 1000;
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        b.put("cas/f", vec![Bytes::from(data.clone())], PutMode::Overwrite)
            .await
            .unwrap();
        assert!(b.set_direct_io(DIRECT_ALIGN as u64));
        let read = |offset: usize, n: usize, chunk: usize| {
            read_chunks(&b, "cas/f", offset as u64, n as u64, chunk)
        };
        // Aligned and not, within a block and across several, to the end and short of it,
        // in chunks of any size.
        for (offset, n, chunk) in [
            (0, len, 1 << 20),
            (0, len, DIRECT_ALIGN),
            (1, len - 1, 1000),
            (DIRECT_ALIGN - 1, 2, 7),
            (DIRECT_ALIGN + 5, 2 * DIRECT_ALIGN, 3 * DIRECT_ALIGN),
            (len - 1, 1, 1 << 20),
            (3 * DIRECT_ALIGN, 1000, 999),
        ] {
            assert!(
                read(offset, n, chunk).await == data[offset..offset + n],
                "offset {offset}, {n} bytes, chunks of {chunk}"
            );
        }
        // Past the end: the stream ends with Short, never with bytes that are not there.
        let mut s = b
            .read("cas/f", 2 * DIRECT_ALIGN as u64, len as u64, 1 << 20, None)
            .await;
        let failed = match &mut s {
            Err(e) => e.to_string(),
            Ok(s) => loop {
                match s.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => panic!("a read past the end ended without an error"),
                }
            },
        };
        assert!(failed.contains("fewer bytes than asked for"), "{failed}");
        // Below the size: read through the page cache as before.
        assert!(b.set_direct_io(len as u64 + 1));
        assert!(read(7, 100, 3).await == data[7..107]);
    }

    #[tokio::test]
    async fn uploads_publish_only_on_finish() {
        let (_d, b) = backend();
        let big = Bytes::from(vec![7u8; WRITE_BATCH_BYTES + 5]);
        let mut u = b
            .upload("cas/ab/x", WRITE_BATCH_BYTES as u64 + 9)
            .await
            .unwrap();
        u.write(big.clone()).await.unwrap();
        u.write(Bytes::from_static(b"tail")).await.unwrap();
        assert!(
            b.list("cas", None).await.unwrap().is_empty(),
            "visible before finish"
        );
        u.finish().await.unwrap();
        let listed = b.list("cas", None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "cas/ab/x");
        assert_eq!(listed[0].size, big.len() as u64 + 4);
        let mut u = b
            .upload("cas/ab/y", WRITE_BATCH_BYTES as u64 + 5)
            .await
            .unwrap();
        u.write(big).await.unwrap();
        drop(u);
        let mut u = b.upload("cas/ab/z", 2).await.unwrap();
        u.write(Bytes::from_static(b"zz")).await.unwrap();
        u.abort().await;
        assert_eq!(b.list("cas", None).await.unwrap().len(), 1);
        assert_eq!(
            b.sweep_staging(),
            0,
            "dropped and aborted uploads leave nothing"
        );
    }

    #[tokio::test]
    async fn lists_in_order_from_an_offset_and_reads_short_files_as_short() {
        let (_d, b) = backend();
        assert!(b.list("journal", None).await.unwrap().is_empty());
        assert!(!b.has_any("journal").await.unwrap());
        for n in ["journal/3", "journal/1", "journal/2", "lease.json"] {
            b.put(n, vec![Bytes::from_static(b"abc")], PutMode::Overwrite)
                .await
                .unwrap();
        }
        assert!(b.has_any("journal").await.unwrap());
        let names = |v: Vec<Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(
            names(b.list("journal", None).await.unwrap()),
            ["journal/1", "journal/2", "journal/3"]
        );
        assert_eq!(
            names(b.list("journal", Some("journal/1")).await.unwrap()),
            ["journal/2", "journal/3"]
        );
        let mut s = b.read("journal/1", 1, 5, 2, None).await.unwrap();
        let mut got = 0;
        let mut short = None;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => got += c.len(),
                Err(e) => short = Some(e),
            }
        }
        assert_eq!(got, 2);
        assert!(
            matches!(short, Some(StorageError::Short { got: 2, .. })),
            "{short:?}"
        );
        assert!(matches!(
            b.read("journal/9", 0, 1, 1, None).await.err(),
            Some(StorageError::NotFound { .. })
        ));
        assert!(b.rename("journal/3", "quarantine/3").await.unwrap());
        assert!(!b.rename("journal/3", "quarantine/3").await.unwrap());
        b.delete("journal/2").await.unwrap();
        b.delete("journal/2").await.unwrap();
        assert_eq!(names(b.list("journal", None).await.unwrap()), ["journal/1"]);
    }

    /// Refuses the chunk that holds a given byte; records every chunk it saw.
    struct RefuseAt {
        at: usize,
        seen: usize,
        chunks: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl super::ReadCheck for RefuseAt {
        fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
            self.chunks.lock().unwrap().push(chunk.to_vec());
            let range = self.seen..self.seen + chunk.len();
            self.seen = range.end;
            if range.contains(&self.at) {
                return Err(format!("byte {} is wrong", self.at));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_check_sees_every_chunk_in_order_and_a_refused_one_is_never_delivered() {
        let (_d, b) = backend();
        let data: Vec<u8> = (0..10u8).collect();
        b.put("cas/x", vec![Bytes::from(data.clone())], PutMode::Overwrite)
            .await
            .unwrap();
        let read = |at: usize| {
            let chunks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let check = RefuseAt {
                at,
                seen: 0,
                chunks: chunks.clone(),
            };
            let b = &b;
            async move {
                let mut delivered = Vec::new();
                let mut failed = None;
                match b.read("cas/x", 0, 10, 4, Some(Box::new(check))).await {
                    Ok(mut s) => {
                        while let Some(c) = s.next().await {
                            match c {
                                Ok(c) => delivered.push(c.to_vec()),
                                Err(e) => failed = Some(e),
                            }
                        }
                    }
                    Err(e) => failed = Some(e),
                }
                let seen = chunks.lock().unwrap().clone();
                (delivered, failed, seen)
            }
        };
        // Nothing refused: every chunk checked, in order, and delivered.
        let (delivered, failed, seen) = read(usize::MAX).await;
        assert!(failed.is_none(), "{failed:?}");
        assert_eq!(delivered.concat(), data);
        assert_eq!(seen, delivered);
        // The first chunk refused: the read itself fails, nothing is delivered.
        let (delivered, failed, _) = read(1).await;
        assert!(delivered.is_empty());
        assert!(
            matches!(&failed, Some(StorageError::Damaged { why, .. }) if why == "byte 1 is wrong"),
            "{failed:?}"
        );
        // The last chunk refused: the chunks before it arrive, then the error in its
        // place; the read-ahead did not run past the end.
        let (delivered, failed, seen) = read(9).await;
        assert_eq!(delivered, [data[0..4].to_vec(), data[4..8].to_vec()]);
        assert!(
            matches!(failed, Some(StorageError::Damaged { .. })),
            "{failed:?}"
        );
        assert_eq!(seen.len(), 3);
    }
}
