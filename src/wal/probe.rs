//! Sync-path probes for `benches/wal_commit.rs`: append small records to a fresh segment file
//! and make each durable, by every path the WAL could take, using the writers' own segment
//! types. Not used by the daemon; public (and hidden) only because benches are another crate.
//!
//! The file is either preallocated with `fallocate` (what the WAL does: the extents are
//! *unwritten*, so the first write into each block must also commit an extent conversion) or
//! pre-zeroed (zeros written and synced, so the extents are already written).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::io::ReadWriteFlags;

use crate::wal::segment::{WalDir, WritableSegment};
use crate::wal::storage::{NewFile, SegmentWriter, Storage, StorageError};
use crate::wal::uring::{UringSegment, UringStorage, setup_ring};

/// Bytes written per call when pre-zeroing a probe file.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// How each append is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePath {
    /// The mmap writer: copy into the shared mapping, `msync(MS_SYNC)` the range.
    MmapMsync,
    /// Copy into the shared mapping, `fdatasync` on the descriptor.
    MmapFdatasync,
    /// `pwrite`, then `fdatasync`.
    PwriteFdatasync,
    /// `pwritev2(RWF_DSYNC)`: one system call.
    PwriteDsync,
    /// The io_uring writer: `WRITE` linked to `FSYNC(DATASYNC)`, one submission.
    IoUringLinked,
}

/// How the file was prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFile {
    /// `fallocate`: unwritten extents (what the WAL does).
    Fallocated,
    /// Zeros written and synced: written extents.
    PreZeroed,
}

enum Target {
    Mapped(WritableSegment),
    Plain(File),
    Uring(UringSegment),
}

/// Keeps the directory lock for as long as the probe's mapping or descriptor lives.
enum DirHolder {
    Mmap { _lock: WalDir },
    Uring { _lock: UringStorage },
}

/// A file receiving durable appends.
pub struct SyncProbe {
    // Declared first so the mapping is dropped before the lock.
    target: Target,
    _dir: DirHolder,
    path_kind: ProbePath,
    len_bytes: usize,
    offset_bytes: usize,
}

fn io(error: StorageError) -> io::Error {
    io::Error::new(error.source.kind(), error.to_string())
}

impl SyncProbe {
    /// Creates `name` in `dir` (a directory no `Wal` uses), `len_bytes` long, prepared as
    /// `file`, to be appended to by `path`.
    pub fn create(
        dir: &Path,
        name: &str,
        len_bytes: u64,
        file: ProbeFile,
        path: ProbePath,
    ) -> io::Result<Self> {
        let wal_dir = WalDir::open_exclusive(dir).map_err(|e| io::Error::other(e.to_string()))?;
        let file_path: PathBuf = dir.join(name);
        let mut new = wal_dir.create_new(&file_path).map_err(io)?;
        match file {
            ProbeFile::Fallocated => new.preallocate(len_bytes).map_err(io)?,
            ProbeFile::PreZeroed => {
                let zeros = vec![0u8; ZERO_CHUNK_BYTES];
                let mut at = 0u64;
                while at < len_bytes {
                    let n = (len_bytes - at).min(ZERO_CHUNK_BYTES as u64) as usize;
                    new.write_at(at, &zeros[..n]).map_err(io)?;
                    at += n as u64;
                }
            }
        }
        new.sync_all().map_err(io)?;
        drop(new);
        wal_dir.sync_dir().map_err(io)?;
        let (target, holder) = match path {
            ProbePath::MmapMsync | ProbePath::MmapFdatasync => (
                Target::Mapped(wal_dir.open_segment(&file_path, len_bytes).map_err(io)?),
                DirHolder::Mmap { _lock: wal_dir },
            ),
            ProbePath::PwriteFdatasync | ProbePath::PwriteDsync => (
                Target::Plain(OpenOptions::new().write(true).open(&file_path)?),
                DirHolder::Mmap { _lock: wal_dir },
            ),
            ProbePath::IoUringLinked => {
                let storage = UringStorage::new(wal_dir, Box::new(setup_ring()?));
                let segment = storage.open_segment(&file_path, len_bytes).map_err(io)?;
                (Target::Uring(segment), DirHolder::Uring { _lock: storage })
            }
        };
        Ok(Self {
            target,
            _dir: holder,
            path_kind: path,
            len_bytes: len_bytes as usize,
            offset_bytes: 0,
        })
    }

    /// Appends `bytes` after the previous append (wrapping to the start at the end of the
    /// file) and returns once they are durable.
    pub fn append_durable(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.offset_bytes + bytes.len() > self.len_bytes {
            self.offset_bytes = 0;
        }
        let offset = self.offset_bytes;
        self.offset_bytes += bytes.len();
        match (&mut self.target, self.path_kind) {
            (Target::Mapped(segment), ProbePath::MmapMsync) => {
                segment.write_and_sync(offset, bytes).map_err(io)
            }
            (Target::Mapped(segment), _) => {
                segment.write_at(offset, bytes).map_err(io)?;
                segment.fdatasync().map_err(io)
            }
            (Target::Plain(file), ProbePath::PwriteDsync) => {
                let written = rustix::io::pwritev2(
                    &*file,
                    &[IoSlice::new(bytes)],
                    offset as u64,
                    ReadWriteFlags::DSYNC,
                )?;
                if written == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::WriteZero, "short pwritev2"))
                }
            }
            (Target::Plain(file), _) => {
                file.write_all_at(bytes, offset as u64)?;
                file.sync_data()
            }
            (Target::Uring(segment), _) => segment.write_and_sync(offset, bytes).map_err(io),
        }
    }
}
