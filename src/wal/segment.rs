//! The production [`Storage`]: a `flock`ed directory of preallocated segment files, with the
//! segment being appended to mapped read-write and synced with `msync(MS_SYNC)`.
//!
//! This is the only file of the mmap writer that contains `unsafe`: the two calls that map a
//! file into memory. The order of durable steps (create, preallocate, header, fsync, rename,
//! directory fsync) is not decided here but in `storage.rs`, which the simulation also runs.
//!
//! Preallocation is `fallocate` with no sparse fallback: storing into an unbacked page of a
//! shared mapping on a full disk is a `SIGBUS`, not an error value. Syncing a batch is
//! `msync(MS_SYNC)` over the page-aligned range that holds it; because the file was
//! preallocated and its size is already durable, this data sync is sufficient.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use rustix::fs::{FallocateFlags, FlockOperation, RenameFlags};

use crate::wal::WriterKind;
use crate::wal::storage::{
    DirError, NewFile, SegmentWriter, Storage, StorageError, storage_error as storage,
};

/// Granularity used to align `msync` ranges (the kernel aligns further if its pages are larger).
const SYNC_ALIGNMENT_BYTES: usize = 4096;

/// The WAL directory, held open and `flock`ed for as long as this value lives.
///
/// The lock is what makes mapping the segments sound: only one `Wal` (exclusive lock) or any
/// number of read-only scans (shared lock) may use a directory at a time, so no cooperating
/// process truncates or rewrites a segment under another's mapping.
#[derive(Debug)]
pub struct WalDir {
    path: PathBuf,
    handle: File,
}

impl WalDir {
    /// Opens (creating it if missing) and exclusively locks the directory, for a writer.
    pub fn open_exclusive(path: &Path) -> Result<Self, DirError> {
        if !path.exists() {
            std::fs::create_dir_all(path).map_err(storage("create directory", path))?;
            // The new directory entry must itself be durable, or a crash could lose the whole
            // log directory after records were acknowledged.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir_path(parent)?;
            }
        }
        Self::open_locked(path, FlockOperation::NonBlockingLockExclusive)
    }

    /// Opens an existing directory with a shared lock, for read-only scans. Never creates it.
    pub fn open_shared(path: &Path) -> Result<Self, DirError> {
        Self::open_locked(path, FlockOperation::NonBlockingLockShared)
    }

    fn open_locked(path: &Path, operation: FlockOperation) -> Result<Self, DirError> {
        let handle = File::open(path).map_err(storage("open directory", path))?;
        match rustix::fs::flock(&handle, operation) {
            Ok(()) => Ok(Self {
                path: path.to_path_buf(),
                handle,
            }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(DirError::Locked {
                dir: path.to_path_buf(),
            }),
            Err(errno) => Err(storage("lock directory", path)(errno.into()).into()),
        }
    }

    /// Opens `path` read-write and checks its length.
    pub(crate) fn open_checked(path: &Path, expected_len_bytes: u64) -> Result<File, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(storage("open segment for writing", path))?;
        let len = file
            .metadata()
            .map_err(storage("stat segment", path))?
            .len();
        if len != expected_len_bytes {
            return Err(StorageError {
                operation: "check segment length",
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file is {len} bytes, expected {expected_len_bytes}"),
                ),
            });
        }
        Ok(file)
    }
}

fn sync_dir_path(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(storage("fsync directory", path))
}

fn file_name(path: &Path) -> Result<&std::ffi::OsStr, StorageError> {
    path.file_name().ok_or_else(|| StorageError {
        operation: "name a file in the WAL directory",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })
}

impl Storage for WalDir {
    const WRITER: WriterKind = WriterKind::Mmap;
    type NewFile = PlainFile;
    type Segment = WritableSegment;
    type Contents<'a> = ReadOnlySegment<'a>;

    fn dir_path(&self) -> &Path {
        &self.path
    }

    fn list_names(&self) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        let entries =
            std::fs::read_dir(&self.path).map_err(storage("list directory", &self.path))?;
        for entry in entries {
            let entry = entry.map_err(storage("list directory", &self.path))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> Result<PlainFile, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(storage("create segment", path))?;
        Ok(PlainFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        rustix::fs::renameat_with(
            &self.handle,
            file_name(from)?,
            &self.handle,
            file_name(to)?,
            RenameFlags::NOREPLACE,
        )
        .map_err(|errno| storage("rename new segment", to)(errno.into()))
    }

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        std::fs::remove_file(path).map_err(storage("remove stale temporary segment", path))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.handle
            .sync_all()
            .map_err(storage("fsync directory", &self.path))
    }

    fn read_segment(&self, path: &Path) -> Result<ReadOnlySegment<'_>, StorageError> {
        ReadOnlySegment::open(path)
    }

    fn open_segment(
        &self,
        path: &Path,
        expected_len_bytes: u64,
    ) -> Result<WritableSegment, StorageError> {
        let file = Self::open_checked(path, expected_len_bytes)?;
        WritableSegment::map(file, path.to_path_buf())
    }
}

/// A segment file being created: plain `fallocate`, `pwrite` and `fsync`.
#[derive(Debug)]
pub struct PlainFile {
    file: File,
    path: PathBuf,
}

impl NewFile for PlainFile {
    fn preallocate(&mut self, len_bytes: u64) -> Result<(), StorageError> {
        rustix::fs::fallocate(&self.file, FallocateFlags::empty(), 0, len_bytes).map_err(|errno| {
            storage("fallocate (no sparse fallback) segment", &self.path)(errno.into())
        })
    }

    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all_at(bytes, offset_bytes)
            .map_err(storage("write segment header", &self.path))
    }

    fn sync_all(&mut self) -> Result<(), StorageError> {
        self.file
            .sync_all()
            .map_err(storage("fsync segment", &self.path))
    }
}

/// A segment mapped read-only, for replay and scans. Borrows the [`WalDir`] whose lock keeps
/// the mapping sound.
#[derive(Debug)]
pub struct ReadOnlySegment<'dir> {
    map: Mmap,
    _lock: PhantomData<&'dir WalDir>,
}

impl ReadOnlySegment<'_> {
    /// Maps the whole file read-only.
    fn open(path: &Path) -> Result<Self, StorageError> {
        let file = File::open(path).map_err(storage("open segment", path))?;
        // SAFETY: the mapping is only sound if nobody truncates or writes the file while it is
        // mapped. It borrows the `WalDir` holding the directory's `flock` (shared for scans,
        // exclusive for a writer), and the only writer of segment files is a `Wal` holding the
        // exclusive lock, so no cooperating process modifies the file during this mapping's
        // lifetime. Segments are never truncated by voucherd at all.
        let map = unsafe { Mmap::map(&file) }.map_err(storage("map segment", path))?;
        Ok(Self {
            map,
            _lock: PhantomData,
        })
    }
}

impl Deref for ReadOnlySegment<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// A segment mapped read-write: the tail the committer appends to.
#[derive(Debug)]
pub struct WritableSegment {
    map: MmapMut,
    path: PathBuf,
    // Kept so the descriptor lives exactly as long as the mapping (clarity; mmap does not need it).
    _file: File,
}

impl WritableSegment {
    fn map(file: File, path: PathBuf) -> Result<Self, StorageError> {
        // SAFETY: the file is a fully preallocated segment (never sparse, so stores cannot
        // SIGBUS for lack of blocks) whose length the caller checked. This process holds the
        // directory's exclusive `flock`, and only the holder of that lock writes segments, so no
        // cooperating process writes or truncates the file while it is mapped; within this
        // process the single `WritableSegment` owns the mapping and is used by one thread, and
        // the committer drops it before the `WalDir` that holds the lock.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(storage("map segment", &path))?;
        Ok(Self {
            map,
            path,
            _file: file,
        })
    }

    fn out_of_bounds(&self, operation: &'static str, start: usize, len: usize) -> StorageError {
        StorageError {
            operation,
            path: self.path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {start}+{len} outside the segment of {} bytes",
                    self.map.len()
                ),
            ),
        }
    }
}

impl WritableSegment {
    /// `fdatasync` of the whole file through its descriptor (a measured alternative to
    /// `msync`; see `probe.rs`).
    pub fn fdatasync(&self) -> Result<(), StorageError> {
        self._file
            .sync_data()
            .map_err(storage("fdatasync segment", &self.path))
    }
}

impl SegmentWriter for WritableSegment {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> usize {
        self.map.len()
    }

    /// Copies into the mapping: the page cache, not yet durable.
    fn write_at(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError> {
        let range = offset_bytes
            .checked_add(bytes.len())
            .map(|end| offset_bytes..end);
        match range.and_then(|range| self.map.get_mut(range)) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(self.out_of_bounds("write into mapped segment", offset_bytes, bytes.len())),
        }
    }

    /// `msync(MS_SYNC)` of the page-aligned range covering `[start, start + len)`.
    fn sync_range(&mut self, offset_bytes: usize, len_bytes: usize) -> Result<(), StorageError> {
        let aligned_start = offset_bytes - offset_bytes % SYNC_ALIGNMENT_BYTES;
        let end = offset_bytes.saturating_add(len_bytes).min(self.map.len());
        if aligned_start > end {
            return Err(self.out_of_bounds("msync segment", offset_bytes, len_bytes));
        }
        self.map
            .flush_range(aligned_start, end - aligned_start)
            .map_err(storage("msync segment", &self.path))
    }
}
