//! The append queue and the group-commit thread.
//!
//! Callers push records into a bounded in-memory queue under one short `parking_lot` lock
//! ([`Shared::append`]); seqs are assigned there, in call order. A single thread,
//! `wal-committer`, runs this loop:
//! 1. wait on the condvar until the queue is non-empty (or shutdown is requested);
//! 2. if `batch_window` is non-zero, wait up to that long for the batch caps to fill;
//! 3. take up to `max_batch_records` / `max_batch_bytes` from the front of the queue;
//! 4. if the batch does not fit in the current segment, roll to a new one (the current one
//!    is already fully synced, so it is sealed as it is);
//! 5. encode the batch straight into the mapped segment and decode it back (paired check);
//! 6. `msync(MS_SYNC)` the batch's pages;
//! 7. publish `durable_seq`, fire the batch's completions, report to the observer, and fire
//!    every barrier whose target is now durable.
//!
//! Because the loop is single-threaded and step 5 of one batch only follows step 6 of the
//! previous one, at most one batch is ever unsynced — the invariant replay relies on.
//!
//! A failed sync or a failed segment creation is fatal ([`fatal`]): after a failed `msync` the
//! kernel may have dropped the dirty pages and marked them clean, so retrying could report
//! success for data that is gone. The batch's completions are never fired.

use std::collections::VecDeque;
use std::fmt::Display;
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
use crate::wal::segment::{WalDir, WritableSegment};
use crate::wal::{
    COMMITTER_THREAD_NAME, Completion, MAX_QUEUED_BYTES, WAL_FATAL_EXIT_CODE, WalObserver,
};

/// Logs `error` and exits the process with [`WAL_FATAL_EXIT_CODE`]. The one place the WAL dies.
pub fn fatal(what: &str, error: &dyn Display) -> ! {
    tracing::error!(
        error = %error,
        exit_code = WAL_FATAL_EXIT_CODE,
        "fatal WAL failure: {what}; exiting without acknowledging the unsynced batch"
    );
    std::process::exit(WAL_FATAL_EXIT_CODE)
}

/// A record that has a seq but is not yet written.
struct Pending {
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
}

/// Batch limits, validated by `WalOptions::validate`.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub batch_window: Duration,
    pub segment_size_bytes: u64,
}

/// The committer thread's state: it alone owns the writable segment.
pub struct Committer {
    pub shared: Arc<Shared>,
    pub dir: WalDir,
    pub segment: WritableSegment,
    pub segment_index: u64,
    pub write_offset_bytes: usize,
    pub limits: BatchLimits,
    pub observer: Arc<dyn WalObserver>,
}

/// Turns a panic of the committer (a bug) into the same fatal exit as an I/O failure, so the
/// daemon can never keep accepting appends that nobody will ever sync.
struct PanicGuard;

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fatal(
                "the WAL committer thread panicked",
                &"see the panic message above",
            );
        }
    }
}

impl Committer {
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
        while self.take_batch(&mut batch) {
            self.commit(&mut batch);
        }
        // Drained and stopping: every record is durable, so every barrier can fire.
        self.fire_barriers();
        tracing::debug!(
            durable_seq = self.shared.durable_seq(),
            "WAL committer stopped"
        );
    }

    /// Steps 1–3. Returns false once shutdown was requested and the queue is empty.
    fn take_batch(&self, batch: &mut Vec<Pending>) -> bool {
        let limits = &self.limits;
        let mut queue = self.shared.queue.lock();
        while queue.pending.is_empty() {
            if queue.shutting_down {
                return false;
            }
            self.shared.work_ready.wait(&mut queue);
        }
        if !limits.batch_window.is_zero() {
            let deadline = Instant::now() + limits.batch_window;
            while !queue.shutting_down
                && queue.pending.len() < limits.max_batch_records
                && queue.queued_bytes < limits.max_batch_bytes
            {
                if self
                    .shared
                    .work_ready
                    .wait_until(&mut queue, deadline)
                    .timed_out()
                {
                    break;
                }
            }
        }
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
        true
    }

    /// Steps 4–7 for one non-empty batch.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        let Some(first_seq) = batch.first().map(|p| p.seq) else {
            return;
        };
        let durable = self.shared.durable_seq();
        if first_seq != durable + 1 {
            fatal(
                "batch does not continue the durable seq (bug)",
                &format!("first seq {first_seq}, durable seq {durable}"),
            );
        }
        let batch_bytes = BATCH_HEADER_BYTES + batch.iter().map(|p| p.encoded_bytes).sum::<usize>();
        if self.write_offset_bytes + batch_bytes > self.segment.len_bytes() {
            self.roll(first_seq, batch_bytes);
        }
        let last_seq = self.write(first_seq, batch, batch_bytes);
        let started = Instant::now();
        if let Err(error) = self
            .segment
            .sync_range(self.write_offset_bytes, batch_bytes)
        {
            fatal("msync of a WAL batch failed", &error);
        }
        let sync_duration = started.elapsed();
        self.write_offset_bytes += batch_bytes;
        self.shared.durable_seq.store(last_seq, Ordering::Release);
        let records = batch.len();
        for pending in batch.drain(..) {
            // A dropped receiver only means the caller stopped waiting.
            let _ = pending.on_durable.send(());
        }
        self.observer
            .batch_synced(records, batch_bytes, sync_duration);
        self.fire_barriers();
    }

    /// Step 4: seals the current segment (already synced) and starts the next one.
    fn roll(&mut self, first_seq: u64, batch_bytes: usize) {
        let index = self.segment_index + 1;
        match self
            .dir
            .create_segment(index, first_seq, self.limits.segment_size_bytes)
        {
            Ok(segment) => {
                tracing::info!(
                    segment = %segment.path().display(),
                    first_seq,
                    "WAL rolled to a new segment"
                );
                self.segment = segment;
                self.segment_index = index;
                self.write_offset_bytes = SEGMENT_HEADER_BYTES;
            }
            Err(error) => fatal("could not create the next WAL segment", &error),
        }
        if self.write_offset_bytes + batch_bytes > self.segment.len_bytes() {
            fatal(
                "batch does not fit in an empty segment (options validation bug)",
                &format!("{batch_bytes} bytes"),
            );
        }
    }

    /// Step 5: encodes into the mapping, then decodes it back. Returns the batch's last seq.
    fn write(&mut self, first_seq: u64, batch: &[Pending], batch_bytes: usize) -> u64 {
        let offset = self.write_offset_bytes;
        let Some(dst) = self.segment.bytes_mut(offset, batch_bytes) else {
            fatal("batch range outside the segment (bug)", &offset);
        };
        let encoded = BatchEncoder::new(dst, first_seq).and_then(|mut encoder| {
            for pending in batch {
                encoder.push(pending.kind, &pending.payload)?;
            }
            encoder.finish()
        });
        match encoded {
            Ok(len) if len == batch_bytes => {}
            Ok(len) => fatal(
                "encoded batch length differs from the computed length (bug)",
                &format!("{len} != {batch_bytes}"),
            ),
            Err(error) => fatal("encoding a validated batch failed (bug)", &error),
        }
        let written = self.segment.bytes().get(offset..offset + batch_bytes);
        match written.map(frame::decode_batch) {
            Some(Ok(decoded))
                if decoded.first_seq() == first_seq && decoded.record_count() == batch.len() => {}
            Some(Err(error)) => fatal("re-reading the encoded batch failed (bug)", &error),
            _ => fatal(
                "re-read batch does not match what was encoded (bug)",
                &first_seq,
            ),
        }
        first_seq + batch.len() as u64 - 1
    }

    /// Step 7 (barriers): fires every barrier whose target is durable.
    fn fire_barriers(&self) {
        let durable = self.shared.durable_seq();
        let mut ready = Vec::new();
        {
            let mut queue = self.shared.queue.lock();
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
