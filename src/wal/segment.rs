//! Segment files and the WAL directory: creation, preallocation, locking, mapping and syncing.
//!
//! This is the only file of the WAL (and of voucherd) that contains `unsafe`: the two calls
//! that map a file into memory. Everything that touches the file system for the log lives here,
//! so the crash-safety steps below can be read in one place.
//!
//! Creating a segment (see [`WalDir::create_segment`]):
//! 1. create `NNNNNNNNNNNNNNNNNNNN.wal.tmp` exclusively;
//! 2. `fallocate` the full segment size. A sparse file would turn a full disk into a `SIGBUS`
//!    on the first store into an unbacked page, so a failed `fallocate` is an error and there
//!    is no fallback;
//! 3. write the segment header with `pwrite`, then `fsync` the file;
//! 4. rename it to `NNNNNNNNNNNNNNNNNNNN.wal` with `RENAME_NOREPLACE`, then `fsync` the
//!    directory. A `.wal` name therefore always denotes a complete, preallocated file with a
//!    durable header; a crash before the rename leaves only a `.tmp` file, which `open` removes;
//! 5. map it read-write.
//!
//! Syncing a batch is `msync(MS_SYNC)` over the page-aligned range that holds it. Because the
//! file was preallocated and its size is already durable, this data sync is sufficient.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use rustix::fs::{FallocateFlags, FlockOperation, RenameFlags};
use thiserror::Error;

use crate::wal::frame::{self, SegmentHeader};

/// File name extension of a segment.
pub const SEGMENT_FILE_EXTENSION: &str = "wal";
/// Suffix of a segment that is still being created.
const SEGMENT_TEMP_SUFFIX: &str = ".wal.tmp";
/// Digits in a segment file name; 20 holds any u64, so lexical order equals numeric order.
const SEGMENT_NAME_DIGITS: usize = 20;
/// Granularity used to align `msync` ranges (the kernel aligns further if its pages are larger).
const SYNC_ALIGNMENT_BYTES: usize = 4096;

/// An I/O failure, with the operation and the path it concerned.
#[derive(Debug, Error)]
#[error("{operation} {}: {source}", path.display())]
pub struct StorageError {
    /// What was being done, e.g. `"fallocate"`.
    pub operation: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// Why the WAL directory could not be opened.
#[derive(Debug, Error)]
pub enum DirError {
    #[error("WAL directory {} is locked by another process (or another Wal in this one)", dir.display())]
    Locked { dir: PathBuf },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("WAL directory {} holds a segment-like file with an unexpected name: {}", dir.display(), name)]
    UnexpectedSegmentName { dir: PathBuf, name: String },
}

fn storage(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError {
        operation,
        path,
        source,
    }
}

/// File name of segment `index`, e.g. `00000000000000000001.wal`.
pub fn segment_file_name(index: u64) -> String {
    format!(
        "{index:0width$}.{SEGMENT_FILE_EXTENSION}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_index(stem: &str) -> Option<u64> {
    if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The segment files found in a directory.
#[derive(Debug, Default)]
pub struct DirListing {
    /// `(index, path)` sorted by index.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of segment creations that crashed before their rename.
    pub stale_temp_files: Vec<PathBuf>,
}

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

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of segment `index` in this directory.
    pub fn segment_path(&self, index: u64) -> PathBuf {
        self.path.join(segment_file_name(index))
    }

    /// `fsync`s the directory so that created, renamed or removed entries are durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.handle
            .sync_all()
            .map_err(storage("fsync directory", &self.path))
    }

    /// Lists segment files (sorted) and stale temporary files. Other file names are ignored.
    pub fn list(&self) -> Result<DirListing, DirError> {
        let mut listing = DirListing::default();
        let entries =
            std::fs::read_dir(&self.path).map_err(storage("list directory", &self.path))?;
        for entry in entries {
            let entry = entry.map_err(storage("list directory", &self.path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.ends_with(SEGMENT_TEMP_SUFFIX) {
                listing.stale_temp_files.push(entry.path());
            } else if let Some(stem) = name.strip_suffix(".wal") {
                let index =
                    parse_segment_index(stem).ok_or_else(|| DirError::UnexpectedSegmentName {
                        dir: self.path.clone(),
                        name: name.to_string(),
                    })?;
                listing.segments.push((index, entry.path()));
            }
        }
        listing.segments.sort_unstable_by_key(|(index, _)| *index);
        Ok(listing)
    }

    /// Removes leftover temporary files, then syncs the directory.
    pub fn remove_stale_temp_files(&self, paths: &[PathBuf]) -> Result<(), StorageError> {
        for path in paths {
            std::fs::remove_file(path).map_err(storage("remove stale temporary segment", path))?;
        }
        if !paths.is_empty() {
            self.sync()?;
        }
        Ok(())
    }

    /// Creates, preallocates, syncs and maps a new segment (the numbered steps in the module doc).
    pub fn create_segment(
        &self,
        segment_index: u64,
        first_seq: u64,
        segment_size_bytes: u64,
    ) -> Result<WritableSegment, StorageError> {
        let final_path = self.segment_path(segment_index);
        let temp_name = format!(
            "{:0width$}{SEGMENT_TEMP_SUFFIX}",
            segment_index,
            width = SEGMENT_NAME_DIGITS
        );
        let temp_path = self.path.join(&temp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(storage("create segment", &temp_path))?;
        rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, segment_size_bytes).map_err(
            |errno| storage("fallocate (no sparse fallback) segment", &temp_path)(errno.into()),
        )?;
        let header = frame::encode_segment_header(&SegmentHeader {
            segment_index,
            first_seq,
            segment_size_bytes,
        });
        file.write_all_at(&header, 0)
            .map_err(storage("write segment header", &temp_path))?;
        file.sync_all()
            .map_err(storage("fsync segment", &temp_path))?;
        rustix::fs::renameat_with(
            &self.handle,
            temp_name.as_str(),
            &self.handle,
            segment_file_name(segment_index).as_str(),
            RenameFlags::NOREPLACE,
        )
        .map_err(|errno| storage("rename new segment", &final_path)(errno.into()))?;
        self.sync()?;
        WritableSegment::map(file, final_path, segment_size_bytes)
    }
}

fn sync_dir_path(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(storage("fsync directory", path))
}

/// A segment mapped read-only, for replay and scans.
#[derive(Debug)]
pub struct ReadOnlySegment {
    map: Mmap,
}

impl ReadOnlySegment {
    /// Maps the whole file read-only.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let file = File::open(path).map_err(storage("open segment", path))?;
        // SAFETY: the mapping is only sound if nobody truncates or writes the file while it is
        // mapped. The caller holds the directory's `flock` (shared for scans, exclusive for a
        // writer), and the only writer of segment files is a `Wal` holding the exclusive lock,
        // so no cooperating process modifies the file during this mapping's lifetime. Segments
        // are never truncated by voucherd at all.
        let map = unsafe { Mmap::map(&file) }.map_err(storage("map segment", path))?;
        Ok(Self { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
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
    /// Maps an existing segment read-write (the tail found by replay).
    pub fn open_existing(path: &Path, segment_size_bytes: u64) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(storage("open segment for writing", path))?;
        Self::map(file, path.to_path_buf(), segment_size_bytes)
    }

    fn map(file: File, path: PathBuf, segment_size_bytes: u64) -> Result<Self, StorageError> {
        let len = file
            .metadata()
            .map_err(storage("stat segment", &path))?
            .len();
        if len != segment_size_bytes {
            return Err(StorageError {
                operation: "check segment length",
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file is {len} bytes, expected {segment_size_bytes}"),
                ),
            });
        }
        // SAFETY: the file is a fully preallocated segment (never sparse, so stores cannot
        // SIGBUS for lack of blocks) whose length was checked just above. This process holds the
        // directory's exclusive `flock`, and only the holder of that lock writes segments, so no
        // cooperating process writes or truncates the file while it is mapped; within this
        // process the single `WritableSegment` owns the mapping and is used by one thread.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(storage("map segment", &path))?;
        Ok(Self {
            map,
            path,
            _file: file,
        })
    }

    /// The segment path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Segment length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.map.len()
    }

    /// Mutable view of `range` of the mapped file; `None` if it is out of bounds.
    pub fn bytes_mut(&mut self, start: usize, len: usize) -> Option<&mut [u8]> {
        let end = start.checked_add(len)?;
        self.map.get_mut(start..end)
    }

    /// Read-only view of the whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// `msync(MS_SYNC)` of the page-aligned range covering `[start, start + len)`.
    pub fn sync_range(&self, start: usize, len: usize) -> Result<(), StorageError> {
        let aligned_start = start - start % SYNC_ALIGNMENT_BYTES;
        let end = start.saturating_add(len).min(self.map.len());
        self.map
            .flush_range(aligned_start, end.saturating_sub(aligned_start))
            .map_err(storage("msync segment", &self.path))
    }

    /// Zeroes `[start, end)` and syncs it (used to erase a torn tail).
    pub fn zero_and_sync(&mut self, start: usize, end: usize) -> Result<(), StorageError> {
        let Some(region) = self.map.get_mut(start..end) else {
            return Err(StorageError {
                operation: "zero torn tail",
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("range {start}..{end} outside the segment"),
                ),
            });
        };
        region.fill(0);
        self.sync_range(start, end - start)
    }
}
