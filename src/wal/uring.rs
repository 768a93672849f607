//! The io_uring writer: the same directory, segment files and on-disk format as the mmap
//! writer, but a batch is written with an io_uring `WRITE` linked (`IOSQE_IO_LINK`) to an
//! `FSYNC(DATASYNC)`, submitted together with one `io_uring_enter`, and waited for together.
//!
//! Segment creation, listing and reading for replay are the mmap writer's (`WalDir`); only
//! the tail segment's writes and syncs differ. Because segments are preallocated and their
//! size is durable before they are renamed, `fdatasync` is a sufficient sync, as `msync` is.
//!
//! The ring is set up once per open log ([`setup_ring`]). Where the kernel refuses io_uring
//! (`EPERM` under a seccomp profile or `kernel.io_uring_disabled`, `ENOSYS` on old kernels),
//! `open` falls back to the mmap writer with one warning ([`choose_writer`]).
//!
//! Soundness: the kernel reads the batch from user memory after submission, so the bytes
//! must stay valid until the write's completion has been reaped. The writer copies each batch
//! into a staging buffer it owns, waits for both completions before returning, and if it ever
//! cannot be sure they completed, leaks that buffer (it is never freed or reused) and refuses
//! every later write. The caller treats any error here as fatal anyway.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};
use parking_lot::Mutex;

use crate::wal::segment::{PlainFile, ReadOnlySegment, WalDir};
use crate::wal::storage::{SegmentWriter, Storage, StorageError};
use crate::wal::{WalWriter, WriterKind};

/// Submission queue entries: one write and one sync at a time need two.
pub const RING_ENTRIES: u32 = 4;
/// `io_uring_enter` calls one submission may take (retries after `EINTR`/`EAGAIN`/`EBUSY`)
/// before the writer gives up and poisons itself.
const MAX_ENTER_ATTEMPTS: usize = 1_000;
const WRITE_USER_DATA: u64 = 1;
const SYNC_USER_DATA: u64 = 2;

/// Creates the ring the io_uring writer uses.
pub fn setup_ring() -> io::Result<IoUring> {
    IoUring::new(RING_ENTRIES)
}

/// The writer `open` will use: the mmap writer, or io_uring with its ring.
pub enum ChosenWriter {
    Mmap,
    IoUring(Box<IoUring>),
}

/// Resolves the configured writer. `setup` creates the ring (injectable for tests). If the
/// kernel refuses io_uring (`EPERM`, `ENOSYS`), logs one warning and chooses the mmap writer;
/// any other setup failure is an error.
pub fn choose_writer(
    requested: WalWriter,
    dir: &Path,
    setup: impl FnOnce() -> io::Result<IoUring>,
) -> Result<ChosenWriter, StorageError> {
    if requested == WalWriter::Mmap {
        return Ok(ChosenWriter::Mmap);
    }
    match setup() {
        Ok(ring) => Ok(ChosenWriter::IoUring(Box::new(ring))),
        Err(error) if matches!(error.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
            tracing::warn!(
                error = %error,
                requested = ?requested,
                "io_uring is unavailable ({error}); falling back to the mmap WAL writer"
            );
            Ok(ChosenWriter::Mmap)
        }
        Err(source) => Err(StorageError {
            operation: "set up io_uring for the WAL in",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The io_uring writer's storage: the mmap writer's directory, with io_uring tail segments.
pub struct UringStorage {
    dir: WalDir,
    ring: Arc<Mutex<Box<IoUring>>>,
}

impl UringStorage {
    pub fn new(dir: WalDir, ring: Box<IoUring>) -> Self {
        Self {
            dir,
            ring: Arc::new(Mutex::new(ring)),
        }
    }
}

impl Storage for UringStorage {
    const WRITER: WriterKind = WriterKind::IoUring;
    type NewFile = PlainFile;
    type Segment = UringSegment;
    type Contents<'a> = ReadOnlySegment<'a>;

    fn dir_path(&self) -> &Path {
        self.dir.dir_path()
    }

    fn list_names(&self) -> Result<Vec<String>, StorageError> {
        self.dir.list_names()
    }

    fn create_new(&self, path: &Path) -> Result<PlainFile, StorageError> {
        self.dir.create_new(path)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        self.dir.rename_no_replace(from, to)
    }

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        self.dir.remove(path)
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.dir.sync_dir()
    }

    fn read_segment(&self, path: &Path) -> Result<ReadOnlySegment<'_>, StorageError> {
        self.dir.read_segment(path)
    }

    fn open_segment(
        &self,
        path: &Path,
        expected_len_bytes: u64,
    ) -> Result<UringSegment, StorageError> {
        let file = WalDir::open_checked(path, expected_len_bytes)?;
        Ok(UringSegment {
            file,
            path: path.to_path_buf(),
            len_bytes: expected_len_bytes as usize,
            ring: Arc::clone(&self.ring),
            staging: Vec::new(),
            poisoned: false,
        })
    }
}

/// The tail segment, written through the shared ring.
pub struct UringSegment {
    file: File,
    path: PathBuf,
    len_bytes: usize,
    ring: Arc<Mutex<Box<IoUring>>>,
    /// The bytes of the write in flight; see the module doc.
    staging: Vec<u8>,
    /// Set once a submission's completion could not be confirmed.
    poisoned: bool,
}

/// What to submit.
#[derive(Clone, Copy)]
enum Submission {
    Write { offset_bytes: usize },
    Sync,
    WriteThenSync { offset_bytes: usize },
}

impl UringSegment {
    fn error(&self, operation: &'static str, source: io::Error) -> StorageError {
        StorageError {
            operation,
            path: self.path.clone(),
            source,
        }
    }

    fn check_range(&self, offset_bytes: usize, len_bytes: usize) -> Result<(), StorageError> {
        match offset_bytes.checked_add(len_bytes) {
            Some(end) if end <= self.len_bytes && u32::try_from(len_bytes).is_ok() => Ok(()),
            _ => Err(self.error(
                "write into segment",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "range {offset_bytes}+{len_bytes} outside the segment of {} bytes",
                        self.len_bytes
                    ),
                ),
            )),
        }
    }

    /// Submits the staged bytes as `submission` and waits for every completion.
    fn submit(&mut self, submission: Submission) -> Result<(), StorageError> {
        let operation = match submission {
            Submission::Write { .. } => "io_uring write of segment",
            Submission::Sync => "io_uring fdatasync of segment",
            Submission::WriteThenSync { .. } => "io_uring write+fdatasync of segment",
        };
        if self.poisoned {
            return Err(self.error(
                operation,
                io::Error::other("an earlier submission was not confirmed complete"),
            ));
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let write = |offset_bytes: usize, staging: &[u8]| {
            // The length was checked to fit u32 by `check_range`.
            opcode::Write::new(fd, staging.as_ptr(), staging.len() as u32)
                .offset(offset_bytes as u64)
                .build()
                .user_data(WRITE_USER_DATA)
        };
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(SYNC_USER_DATA);
        let entries = match submission {
            Submission::Write { offset_bytes } => vec![write(offset_bytes, &self.staging)],
            Submission::Sync => vec![sync],
            Submission::WriteThenSync { offset_bytes } => vec![
                write(offset_bytes, &self.staging).flags(squeue::Flags::IO_LINK),
                sync,
            ],
        };
        let results = {
            let mut ring = self.ring.lock();
            submit_and_reap(&mut ring, &entries)
        };
        let results = match results {
            Ok(results) => results,
            Err(Unconfirmed(source)) => {
                // The kernel may still read the staging buffer: never free or reuse it.
                std::mem::forget(std::mem::take(&mut self.staging));
                self.poisoned = true;
                return Err(self.error(operation, source));
            }
        };
        for (user_data, result) in results {
            if result < 0 {
                return Err(self.error(operation, io::Error::from_raw_os_error(-result)));
            }
            if user_data == WRITE_USER_DATA && result as usize != self.staging.len() {
                // A short write is a failure: nothing is retried (fail-stop).
                return Err(self.error(
                    operation,
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {result} of {} bytes", self.staging.len()),
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A submission whose completions could not all be reaped.
struct Unconfirmed(io::Error);

/// Pushes `entries`, submits them, and waits until one completion per entry was reaped.
/// Returns `(user_data, result)` in completion order.
fn submit_and_reap(
    ring: &mut IoUring,
    entries: &[squeue::Entry],
) -> Result<Vec<(u64, i32)>, Unconfirmed> {
    // Reap anything left over (nothing should be): the ring must be empty for the count below.
    ring.completion().for_each(drop);
    for entry in entries {
        // SAFETY: each entry refers to the segment's open file descriptor and, for a write, to
        // the segment's staging buffer. Both outlive the operation: this function does not
        // return `Ok` before every completion was reaped, and on `Unconfirmed` the caller
        // leaks the staging buffer so it is never freed or reused while the kernel might still
        // read it; the file is held by the kernel's own reference from submission on.
        let pushed = unsafe { ring.submission().push(entry) };
        if pushed.is_err() {
            return Err(Unconfirmed(io::Error::other(
                "io_uring submission queue full",
            )));
        }
    }
    let mut results = Vec::with_capacity(entries.len());
    let mut attempts = 0;
    while results.len() < entries.len() {
        attempts += 1;
        if attempts > MAX_ENTER_ATTEMPTS {
            return Err(Unconfirmed(io::Error::other(
                "io_uring completions not reaped after the maximum number of waits",
            )));
        }
        match ring.submit_and_wait(entries.len() - results.len()) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(error) => return Err(Unconfirmed(error)),
        }
        results.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    }
    Ok(results)
}

impl SegmentWriter for UringSegment {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    fn write_at(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError> {
        self.check_range(offset_bytes, bytes.len())?;
        self.staging.clear();
        self.staging.extend_from_slice(bytes);
        self.submit(Submission::Write { offset_bytes })
    }

    fn sync_range(&mut self, _offset_bytes: usize, _len_bytes: usize) -> Result<(), StorageError> {
        self.submit(Submission::Sync)
    }

    /// One `io_uring_enter` for a `WRITE` linked to an `FSYNC(DATASYNC)`: the sync starts only
    /// after the write completed, and is cancelled if the write failed.
    fn write_and_sync(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError> {
        self.check_range(offset_bytes, bytes.len())?;
        self.staging.clear();
        self.staging.extend_from_slice(bytes);
        self.submit(Submission::WriteThenSync { offset_bytes })
    }
}
