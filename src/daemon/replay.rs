//! Start-up replay, for [`super::recover`]: the newest usable snapshot is verified and applied
//! while a `wal-scan` thread opens the WAL beside it, then the WAL's records after the
//! snapshot are applied; without a usable snapshot, the WAL alone.

use std::path::PathBuf;
use std::time::Instant;

use crate::dispenser::{Recovered, ReplayError, replay_on_two_threads};
use crate::snapshot;
use crate::wal::{self, WalOptions};

/// What a start rebuilt, and the WAL it opened for appends.
pub(super) struct Replayed {
    pub opened: Opened,
    /// The seq the applied snapshot covers; 0 without one.
    pub covered_seq: u64,
    /// WAL records applied after the snapshot (all of them without one).
    pub tail_records: u64,
    /// A torn tail erased by the scan beside a snapshot that was then skipped: the WAL opened
    /// after it has none left to erase.
    pub erased_before: u64,
}

/// Tries the `listed` snapshots, newest first (see [`replay_beside_snapshot`]), and falls
/// back to the WAL alone when none is usable. `Err` when a snapshot verifies but does not
/// apply: the start stops there.
pub(super) fn snapshot_and_wal(
    listed: &[(u64, PathBuf)],
    options: WalOptions,
    recovered: &mut Recovered,
    started: Instant,
) -> Result<Replayed, snapshot::SnapshotError> {
    let mut tail_records = 0u64;
    let mut erased_before = 0;
    for (named_seq, path) in listed {
        match replay_beside_snapshot(
            *named_seq,
            path,
            options.clone(),
            recovered,
            &mut tail_records,
            started,
        )? {
            Beside::Replayed(opened) => {
                return Ok(Replayed {
                    opened,
                    covered_seq: *named_seq,
                    tail_records,
                    erased_before,
                });
            }
            Beside::Skipped { erased_tail_bytes } => erased_before += erased_tail_bytes,
        }
    }
    let opened = replay_wal(options, recovered, &mut tail_records);
    Ok(Replayed {
        opened,
        covered_seq: 0,
        tail_records,
        erased_before,
    })
}

pub(super) type Opened = Result<(wal::Wal, wal::ReplayReport), wal::OpenError<ReplayError>>;

/// A start without a snapshot: the WAL is read, checked and decoded on this thread and
/// applied on a second one.
fn replay_wal(options: WalOptions, recovered: &mut Recovered, tail_records: &mut u64) -> Opened {
    let (opened, applied) = replay_on_two_threads(recovered, |feed| {
        wal::open(options, |record| {
            *tail_records += 1;
            feed.push(record.seq, record.kind, record.payload)
        })
    });
    match (opened, applied) {
        (_, Err(refused)) => Err(wal::OpenError::Callback(refused)),
        (opened, Ok(())) => opened,
    }
}

/// WAL records past a snapshot handed from the `wal-scan` thread at a time (copied out of
/// its mapping), at most: the records, or the payload bytes, whichever fills first.
const TAIL_BATCH_RECORDS: usize = 1_024;
const TAIL_BATCH_BYTES: usize = 1 << 20;
/// Tail batches queued while the snapshot is still being applied (bounds their memory).
const TAIL_QUEUE_BATCHES: usize = 4;

/// Raw WAL records past the snapshot, owned.
#[derive(Default)]
struct TailBatch {
    bytes: Vec<u8>,
    records: Vec<(u64, u8, std::ops::Range<usize>)>,
}

impl TailBatch {
    fn push(&mut self, record: wal::RecordRef<'_>) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(record.payload);
        self.records
            .push((record.seq, record.kind, at..self.bytes.len()));
    }

    fn is_full(&self) -> bool {
        self.records.len() >= TAIL_BATCH_RECORDS || self.bytes.len() >= TAIL_BATCH_BYTES
    }
}

/// A start from the snapshot `path`, named for the seq it covers: while this thread verifies
/// the file and then applies it (with its applying thread), a `wal-scan` thread opens the WAL,
/// which checks every record, the ones the snapshot covers too. The scan (1.1–1.3 s for a
/// 10 M-record WAL) then overlaps the verifying pass, when the second core has nothing else
/// to do. Records past the snapshot are queued (bounded: the scan waits when the queue is
/// full) and applied, in order, once the snapshot is.
///
/// [`Beside::Skipped`] when the file is skipped ([`snapshot::verify_listed`]): the scan is
/// stopped and nothing was applied, so the caller tries an older snapshot or the WAL alone. A
/// scan that had already opened the WAL has done what any open does (erased a torn tail,
/// among others), and that WAL is closed again. `Err` when it verifies but does not apply.
/// Otherwise what opening the WAL gave; a refused tail record is reported before a WAL error
/// found after it, as in [`replay_wal`].
/// How a start beside one snapshot went, short of an error.
enum Beside {
    Replayed(Opened),
    Skipped { erased_tail_bytes: u64 },
}

fn replay_beside_snapshot(
    named_seq: u64,
    path: &std::path::Path,
    options: WalOptions,
    recovered: &mut Recovered,
    tail_records: &mut u64,
    started: Instant,
) -> Result<Beside, snapshot::SnapshotError> {
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let stopped = &stopped;
    std::thread::scope(|scope| {
        let (tail, tail_batches) = std::sync::mpsc::sync_channel::<TailBatch>(TAIL_QUEUE_BATCHES);
        let scanner = std::thread::Builder::new()
            .name("wal-scan".into())
            .spawn_scoped(scope, move || {
                let mut batch = TailBatch::default();
                let opened = wal::open(options, |record| {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(ReplayError::Stopped);
                    }
                    if record.seq <= named_seq {
                        return Ok(());
                    }
                    batch.push(record);
                    if batch.is_full() {
                        // Gone only when this start has failed already.
                        tail.send(std::mem::take(&mut batch))
                            .map_err(|_| ReplayError::Stopped)?;
                    }
                    Ok(())
                });
                // After a failed scan too: the records before the failure are applied
                // and then thrown away with the rest, as in a start without a snapshot.
                if !batch.records.is_empty() {
                    let _ = tail.send(batch);
                }
                opened
            })
            .expect("spawn the wal-scan thread");
        // Stops the scan and waits for it (the queue is dropped first: the scan may be waiting
        // on it); a WAL it opened meanwhile is closed again. Returns the torn-tail bytes that
        // open erased.
        let stop_scanner = |tail_batches, scanner: std::thread::ScopedJoinHandle<'_, Opened>| {
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
            drop(tail_batches);
            join(scanner).map_or(0, |(_, report)| report.truncated_tail_bytes)
        };
        let verified = match snapshot::verify_listed(named_seq, path) {
            Ok(Some(verified)) => verified,
            Ok(None) => {
                let erased_tail_bytes = stop_scanner(tail_batches, scanner);
                return Ok(Beside::Skipped { erased_tail_bytes });
            }
            Err(e) => {
                stop_scanner(tail_batches, scanner);
                return Err(e);
            }
        };
        let loaded = match verified.apply(recovered) {
            Ok(loaded) => loaded,
            Err(e) => {
                stop_scanner(tail_batches, scanner);
                return Err(e);
            }
        };
        tracing::info!(path = %loaded.path.display(), covered_seq = loaded.covered_seq, records = loaded.records, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot loaded");
        let (fed, applied) = replay_on_two_threads(recovered, |feed| {
            for batch in &tail_batches {
                for (seq, kind, at) in batch.records {
                    *tail_records += 1;
                    feed.push(seq, kind, &batch.bytes[at])?;
                }
            }
            Ok(())
        });
        drop(tail_batches);
        let scanned = join(scanner);
        Ok(Beside::Replayed(match (applied, fed) {
            (Err(refused), _) | (Ok(()), Err(refused)) => Err(wal::OpenError::Callback(refused)),
            (Ok(()), Ok(())) => scanned,
        }))
    })
}

/// Joins a thread, resuming its panic here.
fn join<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
