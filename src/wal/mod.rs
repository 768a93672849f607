//! voucherd's write-ahead log: memory-mapped segments, group commit, and replay.
//!
//! Every state change of the daemon is appended here before it is acknowledged. A claim is
//! answered only after the completion passed to [`Wal::append`] (or [`Wal::barrier`]) fired,
//! which happens only after the record's batch was synced to disk.
//!
//! # Code map
//! - `frame.rs`: the byte layout of segment headers, batches and records, with CRC32C. Pure.
//!   **Invariant:** no I/O, no `unsafe`, no panics on any input.
//! - `storage.rs`: the storage traits ([`Storage`]: the directory; `SegmentWriter`: the tail
//!   segment) and the crash-safe protocols written once on top of them (segment creation).
//!   **Invariant:** the order of durable steps is decided here, the committer and replay,
//!   never in a storage implementation.
//! - `segment.rs`: the mmap writer's storage: directory lock, `fallocate`, mapping, `msync`.
//! - `uring.rs`: the io_uring writer's storage: the same directory and segment files, with
//!   each batch written by a `WRITE` linked to an `FSYNC(DATASYNC)` in one submission; ring
//!   setup, and the fallback to mmap where the kernel refuses io_uring.
//!   **Invariant:** `segment.rs` and `uring.rs` are the only files of voucherd with `unsafe`.
//! - `probe.rs`: durable-append probes of every sync path, for `benches/wal_commit.rs`.
//! - `committer.rs`: the bounded append queue, `LogWriter` (roll, encode, write, sync; no
//!   threads, no clock) and the single `wal-committer` thread around it.
//!   **Invariant:** at most one batch is unsynced at any time; completions fire only after sync.
//! - `replay.rs`: validation, torn-tail detection and delivery, with the crash-safety rules.
//!   **Invariant:** a corrupt log is never "repaired"; only a torn final batch is erased.
//! - `crc_range.rs`: CRC32C of any range of a segment without re-reading it, so that replay's
//!   search for a valid batch after damage stays linear.
//! - `error.rs`: the error enums.
//! - `sim_storage.rs`, `simulation.rs` (tests only): a fault-injecting in-memory disk, and the
//!   seeded simulation that crashes a voucher workload at every write and sync boundary.
//!
//! # Write path
//! 1. [`Wal::append`] assigns the next seq and queues the record under a short lock; no I/O.
//! 2. The committer takes a batch, rolls to a new segment if it does not fit, encodes it,
//!    writes it at the tail and syncs it (io_uring writer: `WRITE`→`FSYNC(DATASYNC)` linked in
//!    one submission; mmap writer: copy into the mapping, `msync(MS_SYNC)`).
//! 3. It publishes [`Wal::durable_seq`], then fires the batch's completions and due barriers.
//! 4. A failed write, sync or segment creation exits the process with [`WAL_FATAL_EXIT_CODE`]
//!    and fires no completion of the batch.
//!
//! # Startup
//! [`open`] locks the directory, walks every segment once, validating each batch before it
//! delivers the batch's records to the callback in seq order, erases a torn tail (the remains of the one batch that was being
//! written when the process died), and starts the committer. [`scan`] does the same checks
//! read-only, for operator tools.

mod committer;
mod crc_range;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod probe;
mod replay;
mod segment;
mod storage;
pub(crate) mod uring;

#[cfg(test)]
mod sim_storage;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::wal::error::{AppendError, CorruptReason, OpenError, OptionsError};
pub use crate::wal::frame::{
    FrameError, HeaderError, MAX_BATCH_BODY_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_ENCODED_BYTES,
    MAX_RECORD_PAYLOAD_BYTES, RecordRef,
};
pub use crate::wal::replay::ReplayReport;
pub use crate::wal::storage::{StorageError, segment_file_name};

use crate::wal::committer::{
    BatchLimits, Committer, FatalHandler, LogWriter, Shared, exit_on_fatal,
};
use crate::wal::frame::SEGMENT_HEADER_BYTES;
use crate::wal::segment::WalDir;
use crate::wal::storage::{SegmentWriter, Storage};
use crate::wal::uring::{ChosenWriter, UringStorage};

/// Process exit code after a failed sync or segment creation (`EX_IOERR`).
pub const WAL_FATAL_EXIT_CODE: i32 = 74;
/// Name of the group-commit thread.
pub const COMMITTER_THREAD_NAME: &str = "wal-committer";
/// Seq of the first record of a log.
pub const FIRST_SEQ: u64 = 1;
/// Index of the first segment of a log. Until voucherd has snapshots that let old segments be
/// deleted, a log must start with this segment, so a lost first segment is detected.
pub const FIRST_SEGMENT_INDEX: u64 = 1;
/// Smallest allowed `segment_size_bytes`.
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 1024 * 1024;
/// Largest allowed `segment_size_bytes`.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1024 * 1024 * 1024;
/// `segment_size_bytes` must be a multiple of this (the page size).
pub const SEGMENT_SIZE_ALIGNMENT_BYTES: u64 = 4096;
/// Smallest allowed `max_batch_bytes`: one record with the largest payload.
pub const MIN_BATCH_BYTES: usize = MAX_RECORD_ENCODED_BYTES;
/// Largest allowed `max_queue_records` (and bound on pending barriers).
pub const MAX_QUEUE_RECORDS: usize = 1 << 20;
/// Hard cap on the encoded bytes of queued-but-unwritten records, whatever the options say.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;
/// Largest allowed `batch_window`.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Most segment files replay accepts in one directory.
pub const MAX_SEGMENT_FILES: usize = 100_000;

/// Fires (with `()`) once the record or barrier is durable. If it is dropped unfired, the
/// receiver sees an error: the write was refused or the process is going down.
pub type Completion = tokio::sync::oneshot::Sender<()>;

/// Receives one event per synced batch (for metrics). Called on the committer thread after the
/// batch's completions fired, so it must be quick and must not block.
pub trait WalObserver: Send + Sync {
    /// A batch of `records` records and `bytes` encoded bytes was written and synced in
    /// `sync_duration` (the io_uring writer does both in one submission, so both are counted).
    fn batch_synced(&self, records: usize, bytes: usize, sync_duration: Duration);
}

/// An observer that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl WalObserver for NoopObserver {
    fn batch_synced(&self, _records: usize, _bytes: usize, _sync_duration: Duration) {}
}

/// Which writer appends batches (`storage.writer` in the daemon's config). Every writer
/// produces the same on-disk format; replay does not care which one wrote a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalWriter {
    /// Copy into a shared mapping of the segment, then `msync(MS_SYNC)`.
    Mmap,
    /// An io_uring `WRITE` linked to an `FSYNC(DATASYNC)`, one submission per batch. Falls
    /// back to `Mmap`, with one warning, where the kernel refuses io_uring.
    IoUring,
    /// The default: the faster safe writer on this platform, currently `IoUring` (see
    /// `BENCHMARKS.md`), with the same fallback.
    #[default]
    Auto,
}

/// The writer an open [`Wal`] actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterKind {
    Mmap,
    IoUring,
    /// The tests' fault-injecting in-memory storage.
    #[cfg(test)]
    Simulated,
}

/// Configuration of a [`Wal`]; checked by [`WalOptions::validate`] when the log is opened.
#[derive(Clone)]
pub struct WalOptions {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// Size of new segment files: at least [`MIN_SEGMENT_SIZE_BYTES`], a multiple of
    /// [`SEGMENT_SIZE_ALIGNMENT_BYTES`], at most [`MAX_SEGMENT_SIZE_BYTES`].
    pub segment_size_bytes: u64,
    /// Group-commit cap on records per batch: `1..=MAX_BATCH_RECORDS`.
    pub max_batch_records: usize,
    /// Group-commit cap on encoded record bytes per batch:
    /// `MIN_BATCH_BYTES..=MAX_BATCH_BODY_BYTES`, and a full batch must fit in an empty segment.
    pub max_batch_bytes: usize,
    /// 0: sync as soon as the committer is free. Otherwise, after the first record of a batch
    /// arrives, wait up to this long for the batch caps to fill. At most [`MAX_BATCH_WINDOW`].
    pub batch_window: Duration,
    /// Bound on queued-but-unwritten records: `1..=MAX_QUEUE_RECORDS`.
    pub max_queue_records: usize,
    /// Receives per-batch sync events.
    pub observer: Arc<dyn WalObserver>,
    /// Which writer appends batches.
    pub writer: WalWriter,
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("dir", &self.dir)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("batch_window", &self.batch_window)
            .field("max_queue_records", &self.max_queue_records)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl WalOptions {
    /// Options with production defaults: 64 MiB segments, batches of up to 4,096 records or
    /// 4 MiB, no batch window, 65,536 queued records, no observer, the default writer.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size_bytes: 64 * 1024 * 1024,
            max_batch_records: 4096,
            max_batch_bytes: 4 * 1024 * 1024,
            batch_window: Duration::ZERO,
            max_queue_records: 65_536,
            observer: Arc::new(NoopObserver),
            writer: WalWriter::default(),
        }
    }

    /// Checks every field and how they relate; returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<OptionsError>> {
        let mut problems = Vec::new();
        let segment = self.segment_size_bytes;
        if !(MIN_SEGMENT_SIZE_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&segment) {
            problems.push(OptionsError::SegmentSizeOutOfRange {
                value: segment,
                min: MIN_SEGMENT_SIZE_BYTES,
                max: MAX_SEGMENT_SIZE_BYTES,
            });
        }
        if !segment.is_multiple_of(SEGMENT_SIZE_ALIGNMENT_BYTES) {
            problems.push(OptionsError::SegmentSizeMisaligned {
                value: segment,
                alignment: SEGMENT_SIZE_ALIGNMENT_BYTES,
            });
        }
        if !(1..=MAX_BATCH_RECORDS).contains(&self.max_batch_records) {
            problems.push(OptionsError::MaxBatchRecordsOutOfRange {
                value: self.max_batch_records,
                max: MAX_BATCH_RECORDS,
            });
        }
        if !(MIN_BATCH_BYTES..=MAX_BATCH_BODY_BYTES).contains(&self.max_batch_bytes) {
            problems.push(OptionsError::MaxBatchBytesOutOfRange {
                value: self.max_batch_bytes,
                min: MIN_BATCH_BYTES,
                max: MAX_BATCH_BODY_BYTES,
            });
        }
        let full_batch_in_segment =
            (SEGMENT_HEADER_BYTES + frame::BATCH_HEADER_BYTES) as u64 + self.max_batch_bytes as u64;
        if full_batch_in_segment > segment {
            problems.push(OptionsError::BatchDoesNotFitSegment {
                max_batch_bytes: self.max_batch_bytes,
                segment_size_bytes: segment,
            });
        }
        if !(1..=MAX_QUEUE_RECORDS).contains(&self.max_queue_records) {
            problems.push(OptionsError::MaxQueueRecordsOutOfRange {
                value: self.max_queue_records,
                max: MAX_QUEUE_RECORDS,
            });
        }
        if self.batch_window > MAX_BATCH_WINDOW {
            problems.push(OptionsError::BatchWindowTooLong {
                value: self.batch_window,
                max: MAX_BATCH_WINDOW,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// An open write-ahead log. Dropping it behaves like [`Wal::shutdown`].
pub struct Wal {
    shared: Arc<Shared>,
    committer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    writer: WriterKind,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("durable_seq", &self.durable_seq())
            .field("next_seq", &self.next_seq())
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// Scans and validates all segments, calls `on_record` for every durable record in seq order,
/// erases a torn tail (zeroed and synced, with a `warn!` naming the file, offset and size),
/// then starts the committer thread.
///
/// Each record is delivered once its batch has validated, in one pass over the log, so a
/// `Corrupt` error can come after records were delivered: the caller must discard whatever
/// it built from them (see `replay.rs`). If `on_record` fails, no file has been modified.
pub fn open<E>(
    opts: WalOptions,
    on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(Wal, ReplayReport), OpenError<E>> {
    open_with_ring_setup(opts, uring::setup_ring, on_record)
}

/// [`open`], with the io_uring setup injectable (tests make it fail).
pub(crate) fn open_with_ring_setup<E>(
    opts: WalOptions,
    setup_ring: impl FnOnce() -> std::io::Result<io_uring::IoUring>,
    on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(Wal, ReplayReport), OpenError<E>> {
    opts.validate().map_err(OpenError::BadOptions)?;
    let dir = WalDir::open_exclusive(&opts.dir)?;
    let on_fatal: FatalHandler = Arc::new(exit_on_fatal);
    match uring::choose_writer(opts.writer, &opts.dir, setup_ring)? {
        ChosenWriter::Mmap => open_with_storage(dir, opts, on_fatal, on_record),
        ChosenWriter::IoUring(ring) => {
            open_with_storage(UringStorage::new(dir, ring), opts, on_fatal, on_record)
        }
    }
}

/// [`open`] on any [`Storage`], with the handler the committer calls on a fatal error
/// (production: [`exit_on_fatal`]). `opts.dir` is ignored: the storage is the directory.
pub(crate) fn open_with_storage<S: Storage, E>(
    storage: S,
    opts: WalOptions,
    on_fatal: FatalHandler,
    on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(Wal, ReplayReport), OpenError<E>> {
    opts.validate().map_err(OpenError::BadOptions)?;
    let writer = S::WRITER;
    let dir_path = storage.dir_path().to_path_buf();
    let (log, report) = recover(storage, opts.segment_size_bytes, on_record)?;
    let shared = Arc::new(Shared::new(report.last_seq, opts.max_queue_records));
    let committer = Committer {
        shared: Arc::clone(&shared),
        log,
        limits: BatchLimits {
            max_batch_records: opts.max_batch_records,
            max_batch_bytes: opts.max_batch_bytes,
            batch_window: opts.batch_window,
        },
        observer: opts.observer,
        on_fatal,
    };
    let handle = committer.spawn().map_err(|source| StorageError {
        operation: "spawn the wal-committer thread for",
        path: dir_path,
        source,
    })?;
    tracing::info!(
        records = report.records,
        segments = report.segments,
        last_seq = report.last_seq,
        tail_segment = %report.tail_segment.display(),
        tail_offset_bytes = report.tail_offset_bytes,
        writer = ?writer,
        "WAL opened"
    );
    Ok((
        Wal {
            shared,
            committer: parking_lot::Mutex::new(Some(handle)),
            writer,
        },
        report,
    ))
}

/// Everything [`open`] does before it starts the committer thread: removes stale temporary
/// files, validates and delivers in one pass, erases a torn tail (or creates the first segment), and returns
/// the writer positioned at the tail. The simulation drives the returned writer step by step.
pub(crate) fn recover<S: Storage, E>(
    storage: S,
    segment_size_bytes: u64,
    mut on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(LogWriter<S>, ReplayReport), OpenError<E>> {
    let listing = storage::list(&storage)?;
    if !listing.stale_temp_files.is_empty() {
        tracing::warn!(
            files = ?listing.stale_temp_files,
            "removing segment files whose creation was interrupted"
        );
        storage::remove_stale_temp_files(&storage, &listing.stale_temp_files)?;
    }
    let plan = replay::replay(&storage, &listing, &mut on_record)?;
    let report = plan.report(&storage);
    // The names this walk found may not be durable: a process that died between renaming a
    // new segment into place and syncing the directory leaves the name in the kernel's
    // cache only, and this process would then append acknowledged batches to a file a power
    // loss could unlink. Sync the directory before anything read here is answered.
    storage.sync_dir()?;
    let (segment, segment_index) = match plan.segments.last() {
        Some(last) => {
            let mut segment = storage.open_segment(&last.path, last.header.segment_size_bytes)?;
            // The last valid batch may never have been synced: the process that wrote it may
            // have died (killed, aborted, exit 74) before its sync returned, while the kernel
            // kept its pages, which is what this walk read. Every later answer and snapshot
            // treats it as durable, so make it so: write it again (after a failed sync the
            // kernel may have marked its pages clean without writing them) and sync it. Only
            // the last batch can be unsynced: each batch is written after the previous one's
            // sync returned. With a torn tail, the torn batch was the unsynced one.
            if let (None, Some(start)) = (last.torn_tail, last.last_batch_start_bytes) {
                let contents = storage.read_segment(&last.path)?;
                let batch = contents
                    .get(start..last.valid_end_bytes)
                    .map(<[u8]>::to_vec)
                    .expect("the walk found this batch in the segment");
                drop(contents);
                segment.write_and_sync(start, &batch)?;
            }
            if let Some(torn) = last.torn_tail {
                let zeros = vec![0u8; torn.end_bytes - torn.start_bytes];
                segment.write_and_sync(torn.start_bytes, &zeros)?;
                tracing::warn!(
                    segment = %last.path.display(),
                    offset_bytes = torn.start_bytes,
                    truncated_bytes = torn.end_bytes - torn.start_bytes,
                    "WAL torn tail erased: {} bytes at {} offset {} (an unsynced batch from a crash)",
                    torn.end_bytes - torn.start_bytes,
                    last.path.display(),
                    torn.start_bytes,
                );
            }
            (segment, last.index)
        }
        None => (
            storage::create_segment(&storage, FIRST_SEGMENT_INDEX, FIRST_SEQ, segment_size_bytes)?,
            FIRST_SEGMENT_INDEX,
        ),
    };
    let log = LogWriter::new(
        storage,
        segment,
        segment_index,
        report.tail_offset_bytes as usize,
        report.last_seq + 1,
        segment_size_bytes,
    );
    Ok((log, report))
}

/// Read-only scan for operator tools: the same validation and callback as [`open`], except
/// that the whole log is validated before the first record is delivered; and it never creates, modifies or removes anything. A torn tail is reported in
/// `truncated_tail_bytes` (what `open` would erase). Fails with `Locked` while a `Wal` has the
/// directory open, and with `Io` if the directory does not exist.
pub fn scan<E>(
    dir: &Path,
    on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<ReplayReport, OpenError<E>> {
    scan_storage(&WalDir::open_shared(dir)?, on_record)
}

/// [`scan`] on any [`Storage`].
pub(crate) fn scan_storage<E>(
    storage: &impl Storage,
    mut on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<ReplayReport, OpenError<E>> {
    let listing = storage::list(storage)?;
    // Operator tools promise never to print part of a log that turns out to be corrupt, so
    // the read-only scan validates everything before it delivers anything (two walks; the
    // shared lock keeps a daemon from writing in between). `open` needs no such promise.
    replay::replay(storage, &listing, &mut |_| Ok(()))?;
    let plan = replay::replay(storage, &listing, &mut on_record)?;
    Ok(plan.report(storage))
}

impl Wal {
    /// Queues one record. Never does I/O and never waits for a sync; it only takes a short
    /// internal lock, so callers may hold their own (shard) locks while calling it. Seqs are
    /// assigned in call order, contiguous from `last_seq + 1`, and records are written in
    /// exactly seq order. `on_durable` fires after the record's batch is synced.
    ///
    /// A refused record (`QueueFull`, `TooLarge`, `InvalidKind`, `ShuttingDown`) gets no seq
    /// and is never written; its completion is dropped unfired.
    pub fn append(
        &self,
        kind: u8,
        payload: Vec<u8>,
        on_durable: Completion,
    ) -> Result<u64, AppendError> {
        self.shared.append(kind, payload, on_durable)
    }

    /// Fires once every record appended before this call is durable (immediately, if it
    /// already is). Used when an answer depends on state whose record may not be synced yet.
    pub fn barrier(&self, on_durable: Completion) -> Result<(), AppendError> {
        self.shared.barrier(on_durable)
    }

    /// Highest seq known to be synced.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    /// Seq the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq()
    }

    /// The writer this log appends with (after any fallback).
    pub fn writer(&self) -> WriterKind {
        self.writer
    }

    /// Drains the queue (every accepted record is written and synced, every completion fired),
    /// then stops and joins the committer thread and releases the directory lock.
    /// Appends after this fail with `ShuttingDown`. Idempotent.
    pub fn shutdown(&self) {
        self.stop();
    }

    fn stop(&self) {
        let handle = self.committer.lock().take();
        if let Some(handle) = handle {
            self.shared.request_shutdown();
            if handle.join().is_err() {
                // Unreachable in practice: a committer panic exits the process (PanicGuard).
                tracing::error!("the WAL committer thread panicked");
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}
