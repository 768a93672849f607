//! The storage seam of the WAL: what the log needs from a file system, as two traits, plus the
//! crash-safe protocols written once on top of them (segment creation, listing, clean-up).
//!
//! [`Storage`] is a WAL directory; [`SegmentWriter`] is the segment being appended to;
//! [`NewFile`] is a segment file while it is being created. The production implementation is
//! `segment.rs` (mmap + `msync`); the fault-injecting one used by the tests and the
//! deterministic simulation is `sim_storage.rs`. Everything that decides the *order* of
//! durable steps lives here or in the committer and replay, never in an implementation, so the
//! simulation checks the same ordering the daemon runs.
//!
//! Creating a segment ([`create_segment`]):
//! 1. create `NNNNNNNNNNNNNNNNNNNN.wal.tmp` exclusively;
//! 2. preallocate the full segment size. A sparse file would turn a full disk into a failed
//!    store (for a mapping: `SIGBUS`) on the first write into an unbacked page, so a failed
//!    preallocation is an error and there is no fallback;
//! 3. write the segment header, then sync the file (data and size);
//! 4. rename it to `NNNNNNNNNNNNNNNNNNNN.wal` (never replacing), then sync the directory. A
//!    `.wal` name therefore always denotes a complete, preallocated file with a durable header;
//!    a crash before the rename leaves only a `.tmp` file, which `open` removes;
//! 5. open it for appending.

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::wal::WriterKind;
use crate::wal::frame::{self, SegmentHeader};

/// File name extension of a segment.
pub const SEGMENT_FILE_EXTENSION: &str = "wal";
/// Suffix of a segment that is still being created.
pub const SEGMENT_TEMP_SUFFIX: &str = ".wal.tmp";
/// Digits in a segment file name; 20 holds any u64, so lexical order equals numeric order.
const SEGMENT_NAME_DIGITS: usize = 20;

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

/// Builds the `map_err` closure for an I/O failure of `operation` on `path`.
pub fn storage_error(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError {
        operation,
        path,
        source,
    }
}

/// Why the WAL directory could not be opened or listed.
#[derive(Debug, Error)]
pub enum DirError {
    #[error("WAL directory {} is locked by another process (or another Wal in this one)", dir.display())]
    Locked { dir: PathBuf },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("WAL directory {} holds a segment-like file with an unexpected name: {}", dir.display(), name)]
    UnexpectedSegmentName { dir: PathBuf, name: String },
}

/// A WAL directory. Implementations hold whatever lock makes them the only writer (or one of
/// many readers) for as long as the value lives.
pub trait Storage: Send + 'static {
    /// Which writer this storage is, for logs and [`crate::wal::Wal::writer`].
    const WRITER: WriterKind;
    /// A segment file being created (before its rename).
    type NewFile: NewFile;
    /// The segment the committer appends to.
    type Segment: SegmentWriter;
    /// A whole segment's bytes, for replay.
    type Contents<'a>: Deref<Target = [u8]>
    where
        Self: 'a;

    /// The directory path (segment paths are this joined with a file name).
    fn dir_path(&self) -> &Path;
    /// Names of every entry in the directory, in no particular order. Names that are not UTF-8
    /// are left out (no segment ever has one).
    fn list_names(&self) -> Result<Vec<String>, StorageError>;
    /// Creates `path` exclusively, empty.
    fn create_new(&self, path: &Path) -> Result<Self::NewFile, StorageError>;
    /// Renames `from` to `to` in this directory, failing if `to` exists. Durable only after
    /// [`Storage::sync_dir`].
    fn rename_no_replace(&self, from: &Path, to: &Path) -> Result<(), StorageError>;
    /// Removes `path`. Durable only after [`Storage::sync_dir`].
    fn remove(&self, path: &Path) -> Result<(), StorageError>;
    /// Makes created, renamed and removed entries durable (`fsync` of the directory).
    fn sync_dir(&self) -> Result<(), StorageError>;
    /// The bytes of segment `path`, as they are now.
    fn read_segment(&self, path: &Path) -> Result<Self::Contents<'_>, StorageError>;
    /// Opens segment `path` for appending; fails unless it is exactly `expected_len_bytes` long.
    fn open_segment(
        &self,
        path: &Path,
        expected_len_bytes: u64,
    ) -> Result<Self::Segment, StorageError>;
}

/// A segment file between its creation and its rename.
pub trait NewFile {
    /// Allocates `len_bytes` of zeros on the device (never sparse) and sets the file length.
    fn preallocate(&mut self, len_bytes: u64) -> Result<(), StorageError>;
    /// Writes `bytes` at `offset_bytes`.
    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> Result<(), StorageError>;
    /// Makes the file's data and length durable (`fsync`).
    fn sync_all(&mut self) -> Result<(), StorageError>;
}

/// The segment the committer appends to. Its length never changes.
pub trait SegmentWriter: Send {
    /// The segment path.
    fn path(&self) -> &Path;
    /// Segment length in bytes.
    fn len_bytes(&self) -> usize;
    /// Writes `bytes` at `offset_bytes` (not yet durable). Fails if it does not fit.
    fn write_at(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError>;
    /// Makes `[offset_bytes, offset_bytes + len_bytes)` durable.
    fn sync_range(&mut self, offset_bytes: usize, len_bytes: usize) -> Result<(), StorageError>;
    /// Writes `bytes` at `offset_bytes` and makes them durable; returns only once they are.
    /// An implementation may do both in one submission (io_uring links a write to a sync).
    fn write_and_sync(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError> {
        self.write_at(offset_bytes, bytes)?;
        self.sync_range(offset_bytes, bytes.len())
    }
}

/// File name of segment `index`, e.g. `00000000000000000001.wal`.
pub fn segment_file_name(index: u64) -> String {
    format!(
        "{index:0width$}.{SEGMENT_FILE_EXTENSION}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn temp_file_name(index: u64) -> String {
    format!(
        "{index:0width$}{SEGMENT_TEMP_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_index(stem: &str) -> Option<u64> {
    if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Path of segment `index` in `storage`'s directory.
pub fn segment_path(storage: &impl Storage, index: u64) -> PathBuf {
    storage.dir_path().join(segment_file_name(index))
}

/// The segment files found in a directory.
#[derive(Debug, Default)]
pub struct DirListing {
    /// `(index, path)` sorted by index.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of segment creations that crashed before their rename.
    pub stale_temp_files: Vec<PathBuf>,
}

/// Lists segment files (sorted) and stale temporary files. Other file names are ignored.
pub fn list(storage: &impl Storage) -> Result<DirListing, DirError> {
    let dir = storage.dir_path();
    let mut listing = DirListing::default();
    for name in storage.list_names()? {
        if name.ends_with(SEGMENT_TEMP_SUFFIX) {
            listing.stale_temp_files.push(dir.join(&name));
        } else if let Some(stem) = name.strip_suffix(".wal") {
            let index =
                parse_segment_index(stem).ok_or_else(|| DirError::UnexpectedSegmentName {
                    dir: dir.to_path_buf(),
                    name: name.clone(),
                })?;
            listing.segments.push((index, dir.join(&name)));
        }
    }
    listing.segments.sort_unstable_by_key(|(index, _)| *index);
    listing.stale_temp_files.sort_unstable();
    Ok(listing)
}

/// Removes leftover temporary files, then syncs the directory.
pub fn remove_stale_temp_files(
    storage: &impl Storage,
    paths: &[PathBuf],
) -> Result<(), StorageError> {
    for path in paths {
        storage.remove(path)?;
    }
    if !paths.is_empty() {
        storage.sync_dir()?;
    }
    Ok(())
}

/// Creates, preallocates, syncs and opens a new segment (the numbered steps in the module doc).
pub fn create_segment<S: Storage>(
    storage: &S,
    segment_index: u64,
    first_seq: u64,
    segment_size_bytes: u64,
) -> Result<S::Segment, StorageError> {
    let final_path = segment_path(storage, segment_index);
    let temp_path = storage.dir_path().join(temp_file_name(segment_index));
    let mut file = storage.create_new(&temp_path)?;
    file.preallocate(segment_size_bytes)?;
    let header = frame::encode_segment_header(&SegmentHeader {
        segment_index,
        first_seq,
        segment_size_bytes,
    });
    file.write_at(0, &header)?;
    file.sync_all()?;
    drop(file);
    storage.rename_no_replace(&temp_path, &final_path)?;
    storage.sync_dir()?;
    storage.open_segment(&final_path, segment_size_bytes)
}
