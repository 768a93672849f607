//! The append queue, the batch writer, and the group-commit thread.
//!
//! Callers push records into a bounded in-memory queue under one short `parking_lot` lock
//! ([`Shared::append`]); seqs are assigned there, in call order. A single thread,
//! `wal-committer`, runs this loop:
//! 1. wait on the condvar until the queue is non-empty (or shutdown is requested);
//! 2. if `batch_window` is non-zero, wait up to that long for the batch caps to fill;
//! 3. take up to `max_batch_records` / `max_batch_bytes` from the front of the queue;
//! 4. if the batch does not fit in the current segment, roll to a new one (the current one
//!    is already fully synced, so it is sealed as it is);
//! 5. encode the batch into a buffer and decode it back (paired check);
//! 6. write it at the tail of the segment and sync it ([`SegmentWriter::write_and_sync`]);
//! 7. publish `durable_seq`, fire the batch's completions, report to the observer, and fire
//!    every barrier whose target is now durable.
//!
//! Steps 4–6 are [`LogWriter`], which knows nothing of threads, clocks or the queue: the
//! committer thread calls it, and so does the deterministic simulation, one step at a time.
//!
//! Because the loop is single-threaded and step 6 of one batch returns only after the sync,
//! at most one batch is ever unsynced — the invariant replay relies on.
//!
//! A failed write, sync or segment creation is fatal ([`FatalError`]): after a failed sync the
//! kernel may have dropped the dirty pages and marked them clean, so retrying could report
//! success for data that is gone. The batch's completions are never fired, the committer never
//! writes again, and the handler — in production [`exit_on_fatal`] — ends the process.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::wal::error::AppendError;
use crate::wal::frame::{
    self, BATCH_HEADER_BYTES, BatchEncoder, MAX_RECORD_PAYLOAD_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::wal::storage::{SegmentWriter, Storage, StorageError, create_segment};
use crate::wal::{
    COMMITTER_THREAD_NAME, Completion, MAX_QUEUED_BYTES, WAL_FATAL_EXIT_CODE, WalObserver,
};

/// Why the committer stopped for good. Every variant but `Storage` is a bug.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("{what}: {error}")]
    Storage {
        what: &'static str,
        #[source]
        error: StorageError,
    },
    #[error("{what} (bug): {detail}")]
    Bug { what: &'static str, detail: String },
    /// The next segment would pass [`crate::wal::MAX_SEGMENT_FILES`], which a start refuses:
    /// stop now, while every segment still opens.
    #[error(
        "the WAL holds {limit} segment files, the most a start accepts; archive older segments (docs/operations.md) or use larger ones before starting again"
    )]
    TooManySegments { limit: usize },
}

fn bug(what: &'static str, detail: impl fmt::Display) -> FatalError {
    FatalError::Bug {
        what,
        detail: detail.to_string(),
    }
}

/// Called once when the committer hits a [`FatalError`]. Production passes [`exit_on_fatal`];
/// tests pass a recorder. Whether or not it returns, the committer never writes again.
pub type FatalHandler = Arc<dyn Fn(&FatalError) + Send + Sync>;

/// Logs `error` and exits the process with [`WAL_FATAL_EXIT_CODE`]. The one place the WAL dies.
pub fn exit_on_fatal(error: &FatalError) {
    tracing::error!(
        error = %error,
        exit_code = WAL_FATAL_EXIT_CODE,
        "fatal WAL failure: {error}; exiting without acknowledging the unsynced batch"
    );
    std::process::exit(WAL_FATAL_EXIT_CODE)
}

/// A record that has a seq but is not yet written.
pub struct Pending {
    seq: u64,
    kind: u8,
    payload: Vec<u8>,
    encoded_bytes: usize,
    on_durable: Completion,
}

/// State behind the queue lock.
struct Queue {
    pending: VecDeque<Pending>,
    /// Sum of `encoded_bytes` over `pending`.
    queued_bytes: usize,
    /// `(target seq, completion)` in non-decreasing target order.
    barriers: VecDeque<(u64, Completion)>,
    next_seq: u64,
    shutting_down: bool,
}

/// State shared by the `Wal` handle and the committer thread.
pub struct Shared {
    queue: Mutex<Queue>,
    work_ready: Condvar,
    durable_seq: CachePadded<AtomicU64>,
    max_queue_records: usize,
}

impl Shared {
    /// Shared state for a log whose last durable record is `last_seq`.
    pub fn new(last_seq: u64, max_queue_records: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                queued_bytes: 0,
                barriers: VecDeque::new(),
                next_seq: last_seq + 1,
                shutting_down: false,
            }),
            work_ready: Condvar::new(),
            durable_seq: CachePadded::new(AtomicU64::new(last_seq)),
            max_queue_records,
        }
    }

    /// Queues one record; see `Wal::append`.
    pub fn append(
        &self,
        kind: u8,
        payload: Vec<u8>,
        on_durable: Completion,
    ) -> Result<u64, AppendError> {
        if kind == 0 {
            return Err(AppendError::InvalidKind);
        }
        let too_large = AppendError::TooLarge {
            payload_bytes: payload.len(),
        };
        if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
            return Err(too_large);
        }
        let encoded_bytes = frame::record_encoded_len(payload.len()).ok_or(too_large)?;
        let mut queue = self.queue.lock();
        if queue.shutting_down {
            return Err(AppendError::ShuttingDown);
        }
        if queue.pending.len() >= self.max_queue_records
            || queue.queued_bytes + encoded_bytes > MAX_QUEUED_BYTES
        {
            return Err(AppendError::QueueFull {
                queued_records: queue.pending.len(),
                queued_bytes: queue.queued_bytes,
            });
        }
        let seq = queue.next_seq;
        queue.next_seq = seq.checked_add(1).ok_or(AppendError::SeqExhausted)?;
        queue.queued_bytes += encoded_bytes;
        queue.pending.push_back(Pending {
            seq,
            kind,
            payload,
            encoded_bytes,
            on_durable,
        });
        drop(queue);
        self.work_ready.notify_one();
        Ok(seq)
    }

    /// Registers a completion for "everything appended so far is durable"; see `Wal::barrier`.
    pub fn barrier(&self, on_durable: Completion) -> Result<(), AppendError> {
        let mut queue = self.queue.lock();
        if queue.shutting_down {
            return Err(AppendError::ShuttingDown);
        }
        let target = queue.next_seq - 1;
        // Checked under the queue lock: the committer publishes durable_seq before it takes
        // the lock to collect barriers, so either we see the new value here or it sees our
        // barrier there.
        if self.durable_seq.load(Ordering::Acquire) >= target {
            drop(queue);
            let _ = on_durable.send(());
            return Ok(());
        }
        if queue.barriers.len() >= self.max_queue_records {
            return Err(AppendError::QueueFull {
                queued_records: queue.pending.len(),
                queued_bytes: queue.queued_bytes,
            });
        }
        queue.barriers.push_back((target, on_durable));
        Ok(())
    }

    /// Highest seq known to be synced.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Seq the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.queue.lock().next_seq
    }

    /// Asks the committer to drain the queue and stop; later appends get `ShuttingDown`.
    pub fn request_shutdown(&self) {
        self.queue.lock().shutting_down = true;
        self.work_ready.notify_all();
    }

    /// Fail-stop after a fatal error: refuses every later append and drops every queued
    /// completion and barrier unfired, so their waiters learn nothing was acknowledged.
    pub fn halt(&self) {
        let (pending, barriers) = {
            let mut queue = self.queue.lock();
            queue.shutting_down = true;
            queue.queued_bytes = 0;
            (
                std::mem::take(&mut queue.pending),
                std::mem::take(&mut queue.barriers),
            )
        };
        drop(pending);
        drop(barriers);
        self.work_ready.notify_all();
    }

    /// Steps 1–3. Returns false once shutdown was requested and the queue is empty.
    fn wait_and_take(&self, limits: &BatchLimits, batch: &mut Vec<Pending>) -> bool {
        let mut queue = self.queue.lock();
        while queue.pending.is_empty() {
            if queue.shutting_down {
                return false;
            }
            self.work_ready.wait(&mut queue);
        }
        if !limits.batch_window.is_zero() {
            let deadline = Instant::now() + limits.batch_window;
            while !queue.shutting_down
                && queue.pending.len() < limits.max_batch_records
                && queue.queued_bytes < limits.max_batch_bytes
            {
                if self.work_ready.wait_until(&mut queue, deadline).timed_out() {
                    break;
                }
            }
        }
        take_from(&mut queue, limits, batch);
        true
    }

    /// Step 3 alone, never waiting: the simulation's way to form a batch.
    #[cfg(test)]
    pub fn take_ready(&self, limits: &BatchLimits, batch: &mut Vec<Pending>) {
        take_from(&mut self.queue.lock(), limits, batch);
    }

    /// Step 7, first half: publishes `last_seq` as durable and fires the batch's completions.
    pub fn complete(&self, batch: &mut Vec<Pending>, last_seq: u64) {
        self.durable_seq.store(last_seq, Ordering::Release);
        for pending in batch.drain(..) {
            // A dropped receiver only means the caller stopped waiting.
            let _ = pending.on_durable.send(());
        }
    }

    /// Step 7, second half: fires every barrier whose target is durable.
    pub fn fire_barriers(&self) {
        let durable = self.durable_seq();
        let mut ready = Vec::new();
        {
            let mut queue = self.queue.lock();
            while let Some((target, _)) = queue.barriers.front()
                && *target <= durable
            {
                if let Some((_, completion)) = queue.barriers.pop_front() {
                    ready.push(completion);
                }
            }
        }
        for completion in ready {
            let _ = completion.send(());
        }
    }
}

/// Moves up to the batch caps from the front of the queue into `batch`.
fn take_from(queue: &mut Queue, limits: &BatchLimits, batch: &mut Vec<Pending>) {
    let mut body_bytes = 0usize;
    while batch.len() < limits.max_batch_records {
        let Some(next) = queue.pending.front() else {
            break;
        };
        // The first record always goes in: max_batch_bytes holds a maximal record.
        if !batch.is_empty() && body_bytes + next.encoded_bytes > limits.max_batch_bytes {
            break;
        }
        let Some(next) = queue.pending.pop_front() else {
            break;
        };
        body_bytes += next.encoded_bytes;
        queue.queued_bytes -= next.encoded_bytes;
        batch.push(next);
    }
}

/// Batch limits, validated by `WalOptions::validate`.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub batch_window: Duration,
}

/// A batch encoded by [`LogWriter::prepare`], waiting for [`LogWriter::write_and_sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedBatch {
    pub segment_index: u64,
    pub offset_bytes: usize,
    pub len_bytes: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Steps 4–6: owns the storage and the tail segment; turns batches into synced bytes.
pub struct LogWriter<S: Storage> {
    // Declared before `storage` so the segment (a mapping) is dropped before the directory
    // lock that makes the mapping sound.
    segment: S::Segment,
    storage: S,
    segment_index: u64,
    write_offset_bytes: usize,
    next_seq: u64,
    segment_size_bytes: u64,
    buffer: Vec<u8>,
}

impl<S: Storage> LogWriter<S> {
    /// A writer appending to `segment` (number `segment_index`) at `write_offset_bytes`, whose
    /// next record gets `next_seq`; new segments get `segment_size_bytes`.
    pub fn new(
        storage: S,
        segment: S::Segment,
        segment_index: u64,
        write_offset_bytes: usize,
        next_seq: u64,
        segment_size_bytes: u64,
    ) -> Self {
        Self {
            segment,
            storage,
            segment_index,
            write_offset_bytes,
            next_seq,
            segment_size_bytes,
            buffer: Vec::new(),
        }
    }

    /// Steps 4–5: rolls to a new segment if the batch does not fit, then encodes it into the
    /// write buffer and decodes it back.
    pub fn prepare(&mut self, batch: &[Pending]) -> Result<PreparedBatch, FatalError> {
        let Some(first_seq) = batch.first().map(|p| p.seq) else {
            return Err(bug("empty batch", "no records"));
        };
        if first_seq != self.next_seq {
            return Err(bug(
                "batch does not continue the log",
                format!("first seq {first_seq}, expected {}", self.next_seq),
            ));
        }
        let batch_bytes = BATCH_HEADER_BYTES + batch.iter().map(|p| p.encoded_bytes).sum::<usize>();
        if self.write_offset_bytes + batch_bytes > self.segment.len_bytes() {
            self.roll(first_seq, batch_bytes)?;
        }
        self.encode(first_seq, batch, batch_bytes)?;
        Ok(PreparedBatch {
            segment_index: self.segment_index,
            offset_bytes: self.write_offset_bytes,
            len_bytes: batch_bytes,
            first_seq,
            last_seq: first_seq + batch.len() as u64 - 1,
        })
    }

    /// Step 6: writes the prepared batch at the tail and returns once it is synced.
    pub fn write_and_sync(&mut self, prepared: &PreparedBatch) -> Result<(), FatalError> {
        let bytes = self
            .buffer
            .get(..prepared.len_bytes)
            .ok_or_else(|| bug("prepared batch larger than its buffer", prepared.len_bytes))?;
        if prepared.offset_bytes != self.write_offset_bytes
            || prepared.segment_index != self.segment_index
        {
            return Err(bug("stale prepared batch", prepared.first_seq));
        }
        self.segment
            .write_and_sync(prepared.offset_bytes, bytes)
            .map_err(|error| FatalError::Storage {
                what: "write or sync of a WAL batch failed",
                error,
            })?;
        self.write_offset_bytes += prepared.len_bytes;
        self.next_seq = prepared.last_seq + 1;
        Ok(())
    }

    /// Step 4: seals the current segment (already synced) and starts the next one.
    fn roll(&mut self, first_seq: u64, batch_bytes: usize) -> Result<(), FatalError> {
        let index = self.segment_index + 1;
        if index > crate::wal::MAX_SEGMENT_FILES as u64 {
            return Err(FatalError::TooManySegments {
                limit: crate::wal::MAX_SEGMENT_FILES,
            });
        }
        let segment = create_segment(&self.storage, index, first_seq, self.segment_size_bytes)
            .map_err(|error| FatalError::Storage {
                what: "could not create the next WAL segment",
                error,
            })?;
        tracing::info!(
            segment = %segment.path().display(),
            first_seq,
            "WAL rolled to a new segment"
        );
        self.segment = segment;
        self.segment_index = index;
        self.write_offset_bytes = SEGMENT_HEADER_BYTES;
        if self.write_offset_bytes + batch_bytes > self.segment.len_bytes() {
            return Err(bug(
                "batch does not fit in an empty segment (options validation)",
                format!("{batch_bytes} bytes"),
            ));
        }
        Ok(())
    }

    /// Step 5: encodes into the buffer, then decodes it back.
    fn encode(
        &mut self,
        first_seq: u64,
        batch: &[Pending],
        batch_bytes: usize,
    ) -> Result<(), FatalError> {
        self.buffer.clear();
        self.buffer.resize(batch_bytes, 0);
        let encoded = BatchEncoder::new(&mut self.buffer, first_seq).and_then(|mut encoder| {
            for pending in batch {
                encoder.push(pending.kind, &pending.payload)?;
            }
            encoder.finish()
        });
        match encoded {
            Ok(len) if len == batch_bytes => {}
            Ok(len) => {
                return Err(bug(
                    "encoded batch length differs from the computed length",
                    format!("{len} != {batch_bytes}"),
                ));
            }
            Err(error) => return Err(bug("encoding a validated batch failed", error)),
        }
        match frame::decode_batch(&self.buffer) {
            Ok(decoded)
                if decoded.first_seq() == first_seq && decoded.record_count() == batch.len() =>
            {
                Ok(())
            }
            Ok(_) => Err(bug(
                "re-read batch does not match what was encoded",
                first_seq,
            )),
            Err(error) => Err(bug("re-reading the encoded batch failed", error)),
        }
    }
}

/// The committer thread's state: it alone owns the log writer.
pub struct Committer<S: Storage> {
    pub shared: Arc<Shared>,
    pub log: LogWriter<S>,
    pub limits: BatchLimits,
    pub observer: Arc<dyn WalObserver>,
    pub on_fatal: FatalHandler,
}

/// Turns a panic of the committer (a bug) into the same fatal exit as an I/O failure, so the
/// daemon can never keep accepting appends that nobody will ever sync.
struct PanicGuard;

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            exit_on_fatal(&bug(
                "the WAL committer thread panicked",
                "see the panic message above",
            ));
        }
    }
}

impl<S: Storage> Committer<S> {
    /// Starts the `wal-committer` thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(COMMITTER_THREAD_NAME.to_string())
            .spawn(move || {
                let guard = PanicGuard;
                self.run();
                drop(guard);
            })
    }

    fn run(mut self) {
        let mut batch = Vec::new();
        while self.shared.wait_and_take(&self.limits, &mut batch) {
            if let Err(error) = self.commit(&mut batch) {
                (self.on_fatal)(&error);
                // Only reached when the handler returns (tests): stop for good. The failed
                // batch's completions are dropped unfired with `batch`.
                self.shared.halt();
                return;
            }
        }
        // Drained and stopping: every record is durable, so every barrier can fire.
        self.shared.fire_barriers();
        tracing::debug!(
            durable_seq = self.shared.durable_seq(),
            "WAL committer stopped"
        );
    }

    /// Steps 4–7 for one non-empty batch.
    fn commit(&mut self, batch: &mut Vec<Pending>) -> Result<(), FatalError> {
        let prepared = self.log.prepare(batch)?;
        let started = Instant::now();
        self.log.write_and_sync(&prepared)?;
        let sync_duration = started.elapsed();
        let records = batch.len();
        self.shared.complete(batch, prepared.last_seq);
        self.observer
            .batch_synced(records, prepared.len_bytes, sync_duration);
        self.shared.fire_barriers();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::sim_storage::SimStorage;
    use crate::wal::storage::create_segment;

    /// A roll that would make more segment files than a start accepts stops the writer
    /// first, so the log it leaves still opens (and is not refused as `TooManySegments`).
    #[test]
    fn no_roll_past_the_segment_files_a_start_accepts() {
        const SEGMENT_BYTES: u64 = 1 << 20;
        let storage = SimStorage::default();
        let last = crate::wal::MAX_SEGMENT_FILES as u64;
        let segment = create_segment(&storage, last, 1, SEGMENT_BYTES).expect("segment");
        let full = segment.len_bytes();
        let mut writer = LogWriter::new(storage, segment, last, full, 1, SEGMENT_BYTES);
        let (on_durable, _) = tokio::sync::oneshot::channel();
        let record = Pending {
            seq: 1,
            kind: 1,
            payload: vec![0; 8],
            encoded_bytes: frame::record_encoded_len(8).expect("small"),
            on_durable,
        };
        match writer.prepare(&[record]) {
            Err(FatalError::TooManySegments { limit }) => {
                assert_eq!(limit, crate::wal::MAX_SEGMENT_FILES);
            }
            other => panic!("expected TooManySegments, got {other:?}"),
        }
    }
}
