//! Tests of the WAL as the daemon uses it: real files in a temporary directory, real threads,
//! real syncs. Damage is injected by writing the segment files with `std::fs` while no `Wal`
//! has them open. Random choices come from a seed printed by each test (`WAL_TEST_SEED=…`
//! replays it); nothing waits on a timer to decide an outcome.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::wal::committer::{FatalError, FatalHandler};
use crate::wal::frame::{self, BATCH_HEADER_BYTES, BatchEncoder, SEGMENT_HEADER_BYTES};
use crate::wal::sim_storage::{CrashMode, Faults, OpKind, SimStorage};
use crate::wal::{
    AppendError, CorruptReason, MAX_RECORD_PAYLOAD_BYTES, NoopObserver, OpenError, OptionsError,
    ReplayReport, Wal, WalObserver, WalOptions, WalWriter, WriterKind, open, open_with_ring_setup,
    open_with_storage, recover, scan, segment_file_name,
};

type Replayed = Vec<(u64, u8, Vec<u8>)>;

/// splitmix64: small, deterministic, good enough to pick sizes and offsets.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("WAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        println!("{test}: WAL_TEST_SEED={seed}");
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        crate::core::rng::splitmix_next(&mut self.0)
    }

    fn range(&mut self, low: usize, high_exclusive: usize) -> usize {
        low + (self.next_u64() % (high_exclusive - low) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

fn options(dir: &Path) -> WalOptions {
    WalOptions {
        dir: dir.to_path_buf(),
        segment_size_bytes: 1024 * 1024,
        max_batch_records: 256,
        max_batch_bytes: 256 * 1024,
        batch_window: Duration::ZERO,
        max_queue_records: 100_000,
        observer: Arc::new(NoopObserver),
        writer: WalWriter::Auto,
    }
}

/// Payload that can be recomputed from the seq alone (used where the writer is another process).
fn payload_for_seq(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2_654_435_761) % 3_000) as usize;
    (0..len).map(|i| (seq as usize + i * 7) as u8).collect()
}

/// `killed_writer_loses_no_acknowledged_record` starts child processes while other tests run
/// in this process. Between fork and exec a child holds a copy of every open descriptor, among
/// them another test's WAL directory lock (`flock`), so that test, reopening its WAL right after
/// closing it, could find the directory still locked (seen once in CI, under load). A test
/// opens a WAL directory holding this for reading; a child is started holding it for writing,
/// and `spawn` returns only after the child's exec has closed the copies.
static CHILD_SPAWN: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

fn open_collect(opts: WalOptions) -> (Wal, ReplayReport, Replayed) {
    let _no_child_starting = CHILD_SPAWN.read();
    let mut records = Vec::new();
    let (wal, report) = open::<std::convert::Infallible>(opts, |r| {
        records.push((r.seq, r.kind, r.payload.to_vec()));
        Ok(())
    })
    .expect("open");
    assert_eq!(wal.durable_seq(), report.last_seq);
    assert_eq!(wal.next_seq(), report.last_seq + 1);
    assert_eq!(report.records as usize, records.len());
    (wal, report, records)
}

fn reopen(dir: &Path) -> (ReplayReport, Replayed) {
    let (wal, report, records) = open_collect(options(dir));
    wal.shutdown();
    (report, records)
}

fn open_error(dir: &Path) -> OpenError<std::convert::Infallible> {
    let _no_child_starting = CHILD_SPAWN.read();
    match open::<std::convert::Infallible>(options(dir), |_| Ok(())) {
        Ok(_) => panic!("open unexpectedly succeeded"),
        Err(error) => error,
    }
}

fn scan_error(dir: &Path) -> OpenError<std::convert::Infallible> {
    match scan::<std::convert::Infallible>(dir, |_| Ok(())) {
        Ok(report) => panic!("scan unexpectedly succeeded: {report:?}"),
        Err(error) => error,
    }
}

/// Appends one record and waits until it is durable.
fn append_durable(wal: &Wal, kind: u8, payload: Vec<u8>) -> u64 {
    let (tx, rx) = oneshot::channel();
    let seq = wal.append(kind, payload, tx).expect("append");
    rx.blocking_recv().expect("completion fired");
    assert!(wal.durable_seq() >= seq);
    seq
}

/// Appends without waiting; returns the receivers.
fn append_many(wal: &Wal, payloads: &[Vec<u8>]) -> Vec<(u64, oneshot::Receiver<()>)> {
    payloads
        .iter()
        .map(|p| {
            let (tx, rx) = oneshot::channel();
            (wal.append(3, p.clone(), tx).expect("append"), rx)
        })
        .collect()
}

fn wait_all(receivers: Vec<(u64, oneshot::Receiver<()>)>) {
    for (seq, rx) in receivers {
        rx.blocking_recv()
            .unwrap_or_else(|_| panic!("completion of seq {seq} dropped"));
    }
}

/// Every file in `dir` with its contents, to prove an operation modified nothing.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    file.write_all_at(bytes, offset).expect("write damage");
    file.sync_all().expect("sync damage");
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, offset).expect("read byte");
    file.write_all_at(&[byte[0] ^ 0x5A], offset)
        .expect("write byte");
    file.sync_all().expect("sync flip");
}

/// A complete, valid encoded batch.
fn encoded_batch(first_seq: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = payloads
        .iter()
        .map(|p| frame::record_encoded_len(p.len()).expect("small"))
        .sum();
    let mut buf = vec![0u8; BATCH_HEADER_BYTES + body];
    let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("encoder");
    for payload in payloads {
        encoder.push(9, payload).expect("push");
    }
    encoder.finish().expect("finish");
    buf
}

/// Offsets and lengths of the valid batches of a segment file.
fn batch_offsets(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut offsets = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while let Ok(batch) = frame::decode_batch(&bytes[at..]) {
        offsets.push((at, batch.encoded_bytes()));
        at += batch.encoded_bytes();
    }
    offsets
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(segment_file_name(index))
}

/// Writes `count` records with seq-derived payloads, each its own batch. Returns the payloads.
fn write_single_record_batches(dir: &Path, count: usize) -> Replayed {
    let (wal, _, _) = open_collect(options(dir));
    let mut written = Vec::new();
    for _ in 0..count {
        let seq = wal.next_seq();
        let payload = payload_for_seq(seq);
        assert_eq!(append_durable(&wal, 5, payload.clone()), seq);
        written.push((seq, 5, payload));
    }
    wal.shutdown();
    written
}

/// Writes enough records into 1 MiB segments to fill at least `segments` of them.
fn write_multi_segment_log(dir: &Path, segments: u64) -> Replayed {
    let (wal, _, _) = open_collect(options(dir));
    let mut written = Vec::new();
    while !segment_path(dir, segments + 1).exists() {
        let payloads: Vec<Vec<u8>> = (0..64)
            .map(|i| vec![(written.len() + i) as u8; 8_000])
            .collect();
        let receivers = append_many(&wal, &payloads);
        for ((seq, _), payload) in receivers.iter().zip(&payloads) {
            written.push((*seq, 3, payload.clone()));
        }
        wait_all(receivers);
    }
    wal.shutdown();
    written
}

// ---------------------------------------------------------------------------------------------
// Normal operation
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_directory_is_created_as_a_fresh_log_at_seq_1() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("nested").join("wal");
    let (wal, report, records) = open_collect(options(&dir));
    assert!(records.is_empty());
    assert_eq!(report.records, 0);
    assert_eq!(report.segments, 0);
    assert_eq!(report.last_seq, 0);
    assert_eq!(report.truncated_tail_bytes, 0);
    assert_eq!(report.tail_segment, segment_path(&dir, 1));
    assert_eq!(report.tail_offset_bytes, SEGMENT_HEADER_BYTES as u64);
    assert_eq!(wal.next_seq(), 1);
    let size = std::fs::metadata(segment_path(&dir, 1))
        .expect("segment 1")
        .len();
    assert_eq!(size, 1024 * 1024);
    assert_eq!(append_durable(&wal, 1, b"first".to_vec()), 1);
    wal.shutdown();
    let (report, records) = reopen(&dir);
    assert_eq!(records, vec![(1, 1, b"first".to_vec())]);
    assert_eq!(report.segments, 1);
}

#[test]
fn concurrent_appends_are_contiguous_durable_and_replayed_in_order() {
    const THREADS: usize = 8;
    const RECORDS_PER_THREAD: usize = 5_000;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let (wal, _, _) = open_collect(options(dir));
    let per_thread: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let wal = &wal;
                scope.spawn(move || {
                    let mut sent = Vec::with_capacity(RECORDS_PER_THREAD);
                    let mut receivers = Vec::with_capacity(RECORDS_PER_THREAD);
                    for i in 0..RECORDS_PER_THREAD {
                        let payload = format!("thread {thread} record {i} {}", "x".repeat(i % 150))
                            .into_bytes();
                        let (tx, rx) = oneshot::channel();
                        let seq = wal
                            .append(1 + thread as u8, payload.clone(), tx)
                            .expect("append");
                        sent.push((seq, payload));
                        receivers.push(rx);
                    }
                    for rx in receivers {
                        rx.blocking_recv().expect("completion fired");
                    }
                    sent
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("appender thread"))
            .collect()
    });
    let total = (THREADS * RECORDS_PER_THREAD) as u64;
    assert_eq!(wal.durable_seq(), total);
    let mut expected = BTreeMap::new();
    for (thread, sent) in per_thread.iter().enumerate() {
        // Seqs follow call order, so one thread's seqs strictly increase.
        assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "thread {thread}");
        for (seq, payload) in sent {
            let previous = expected.insert(*seq, (1 + thread as u8, payload.clone()));
            assert!(previous.is_none(), "seq {seq} assigned twice");
        }
    }
    let seqs: Vec<u64> = expected.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "seqs must be 1..=total"
    );
    wal.shutdown();

    let (report, records) = reopen(dir);
    assert_eq!(report.last_seq, total);
    assert_eq!(records.len() as u64, total);
    for (seq, kind, payload) in records {
        let (expected_kind, expected_payload) = &expected[&seq];
        assert_eq!(
            (kind, &payload),
            (*expected_kind, expected_payload),
            "seq {seq}"
        );
    }
}

#[test]
fn log_rolls_across_segments_and_replays_everything() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let written = write_multi_segment_log(dir, 4);
    let (report, records) = reopen(dir);
    assert!(report.segments >= 5, "{report:?}");
    assert_eq!(records, written);
    assert_eq!(
        report.tail_segment,
        segment_path(dir, u64::from(report.segments))
    );
    for index in 1..=u64::from(report.segments) {
        let path = segment_path(dir, index);
        assert_eq!(
            std::fs::metadata(&path).expect("segment").len(),
            1024 * 1024
        );
        assert!(
            !batch_offsets(&path).is_empty(),
            "segment {index} holds batches"
        );
    }
    // Appending after a reopen continues in the tail segment, and that survives too.
    let (wal, _, _) = open_collect(options(dir));
    let seq = append_durable(&wal, 2, b"after reopen".to_vec());
    assert_eq!(seq, written.len() as u64 + 1);
    wal.shutdown();
    let (_, records) = reopen(dir);
    assert_eq!(records.last(), Some(&(seq, 2, b"after reopen".to_vec())));
}

#[test]
fn segment_size_change_between_runs_keeps_old_segments_valid() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let written = write_multi_segment_log(dir, 1);
    let mut bigger = options(dir);
    bigger.segment_size_bytes = 2 * 1024 * 1024;
    let (wal, _, records) = open_collect(bigger);
    assert_eq!(records, written);
    wal.shutdown();
}

#[test]
fn group_commit_respects_batch_caps() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let observer = Arc::new(GatedObserver::default());
    let mut opts = options(dir);
    opts.max_batch_records = 16;
    opts.observer = observer.clone();
    let (wal, _, _) = open_collect(opts);
    observer.close();
    let first = append_many(&wal, &[b"hold".to_vec()]);
    assert_eq!(observer.next_event(), (1, BATCH_HEADER_BYTES + 24 + 8));
    // The committer is now parked inside the observer; queue 40 records behind it.
    let queued = append_many(&wal, &vec![b"x".to_vec(); 40]);
    observer.open();
    wait_all(first);
    wait_all(queued);
    let sizes: Vec<usize> = (0..3).map(|_| observer.next_event().0).collect();
    assert_eq!(sizes, vec![16, 16, 8]);
    wal.shutdown();
}

#[test]
fn batch_window_waits_for_the_batch_to_fill() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let observer = Arc::new(GatedObserver::default());
    let mut opts = options(dir);
    opts.max_batch_records = 8;
    // Long enough that the 8 appends below always land inside it; the batch closes as soon as
    // it is full, so the test does not wait for the window to expire.
    opts.batch_window = Duration::from_millis(100);
    opts.observer = observer.clone();
    let (wal, _, _) = open_collect(opts);
    let receivers = append_many(&wal, &vec![b"y".to_vec(); 8]);
    wait_all(receivers);
    assert_eq!(observer.next_event().0, 8);
    wal.shutdown();
}

#[test]
fn barrier_fires_only_after_earlier_records_are_durable() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let observer = Arc::new(GatedObserver::default());
    let mut opts = options(dir);
    opts.observer = observer.clone();
    let (wal, _, _) = open_collect(opts);

    // Nothing pending: the barrier fires at once.
    let (tx, mut rx) = oneshot::channel();
    wal.barrier(tx).expect("barrier");
    assert_eq!(rx.try_recv(), Ok(()));

    observer.close();
    let held = append_many(&wal, &[b"a".to_vec()]);
    observer.next_event();
    // Record 1 is durable, the committer is parked; records 2..=11 are queued, not written.
    let queued = append_many(&wal, &vec![b"b".to_vec(); 10]);
    let last_seq = queued.last().map(|(seq, _)| *seq).expect("records");
    let (tx, mut rx) = oneshot::channel();
    wal.barrier(tx).expect("barrier");
    assert_eq!(
        rx.try_recv(),
        Err(oneshot::error::TryRecvError::Empty),
        "barrier must wait for queued records"
    );
    assert!(wal.durable_seq() < last_seq);
    // Records appended after the barrier are not its concern.
    let later = append_many(&wal, &[b"c".to_vec()]);
    observer.open();
    rx.blocking_recv().expect("barrier fired");
    assert!(
        wal.durable_seq() >= last_seq,
        "barrier fired before its records were durable"
    );
    wait_all(held);
    wait_all(queued);
    wait_all(later);
    wal.shutdown();
}

#[test]
fn queue_full_too_large_and_invalid_kind_write_nothing() {
    const QUEUE_RECORDS: usize = 5;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let observer = Arc::new(GatedObserver::default());
    let mut opts = options(dir);
    opts.max_queue_records = QUEUE_RECORDS;
    opts.observer = observer.clone();
    let (wal, _, _) = open_collect(opts);

    let (tx, mut too_large_rx) = oneshot::channel();
    assert_eq!(
        wal.append(1, vec![0; MAX_RECORD_PAYLOAD_BYTES + 1], tx),
        Err(AppendError::TooLarge {
            payload_bytes: MAX_RECORD_PAYLOAD_BYTES + 1
        })
    );
    assert!(too_large_rx.try_recv().is_err());
    let (tx, _rx) = oneshot::channel();
    assert_eq!(
        wal.append(0, b"kind zero".to_vec(), tx),
        Err(AppendError::InvalidKind)
    );
    assert_eq!(wal.next_seq(), 1, "refused records consume no seq");

    observer.close();
    let held = append_many(&wal, &[b"held".to_vec()]);
    observer.next_event();
    let queued = append_many(&wal, &vec![b"q".to_vec(); QUEUE_RECORDS]);
    let (tx, mut full_rx) = oneshot::channel();
    assert_eq!(
        wal.append(1, b"one too many".to_vec(), tx),
        Err(AppendError::QueueFull {
            queued_records: QUEUE_RECORDS,
            queued_bytes: QUEUE_RECORDS * 32
        })
    );
    assert_eq!(wal.next_seq(), 2 + QUEUE_RECORDS as u64);
    observer.open();
    wait_all(held);
    wait_all(queued);
    assert!(
        full_rx.try_recv().is_err(),
        "refused record's completion never fires"
    );
    // A max-size payload is accepted.
    append_durable(&wal, 1, vec![7; MAX_RECORD_PAYLOAD_BYTES]);
    wal.shutdown();

    let (report, records) = reopen(dir);
    assert_eq!(report.last_seq, 2 + QUEUE_RECORDS as u64);
    assert_eq!(records.len(), 2 + QUEUE_RECORDS);
    assert!(records.iter().all(|(_, _, p)| p != b"one too many"));
    assert_eq!(
        records.last().map(|r| r.2.len()),
        Some(MAX_RECORD_PAYLOAD_BYTES)
    );
}

#[test]
fn shutdown_drains_queued_records() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let (wal, _, _) = open_collect(options(dir));
    let payloads: Vec<Vec<u8>> = (0..2_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let receivers = append_many(&wal, &payloads);
    wal.shutdown();
    wait_all(receivers);
    let (report, records) = reopen(dir);
    assert_eq!(report.last_seq, 2_000);
    let replayed: Vec<Vec<u8>> = records.into_iter().map(|r| r.2).collect();
    assert_eq!(replayed, payloads);
}

#[test]
fn directory_is_locked_while_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let (wal, _, _) = open_collect(options(dir));
    assert!(matches!(open_error(dir), OpenError::Locked { .. }));
    assert!(matches!(scan_error(dir), OpenError::Locked { .. }));
    wal.shutdown();
    let report = scan::<std::convert::Infallible>(dir, |_| Ok(())).expect("scan after shutdown");
    assert_eq!(report.last_seq, 0);
}

#[test]
fn bad_options_report_every_problem() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut opts = options(root.path());
    opts.segment_size_bytes = 1024 * 1024 + 1;
    opts.max_batch_records = 0;
    opts.max_batch_bytes = 10;
    opts.max_queue_records = 0;
    opts.batch_window = Duration::from_secs(5);
    let problems = opts.validate().expect_err("invalid");
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert!(problems.contains(&OptionsError::SegmentSizeMisaligned {
        value: 1024 * 1024 + 1,
        alignment: 4096
    }));
    let mut opts = options(root.path());
    opts.segment_size_bytes = 1024 * 1024;
    opts.max_batch_bytes = 1024 * 1024;
    assert!(matches!(
        opts.validate().err().as_deref(),
        Some([OptionsError::BatchDoesNotFitSegment { .. }])
    ));
    assert!(matches!(
        open::<()>(opts, |_| Ok(())),
        Err(OpenError::BadOptions(_))
    ));
    assert!(
        std::fs::read_dir(root.path())
            .expect("dir")
            .next()
            .is_none(),
        "bad options create nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Torn tails: erased, never refused
// ---------------------------------------------------------------------------------------------

/// Writes `damage` at the tail of a log of `count` records, checks that `scan` reports it
/// without modifying anything, that `open` erases exactly it, and that the log goes on.
fn check_torn_tail_is_erased(test: &str, count: usize, damage: impl FnOnce(&Path, u64, u64)) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let written = write_single_record_batches(dir, count);
    let before = scan::<()>(dir, |_| Ok(())).expect("scan clean log");
    assert_eq!(before.truncated_tail_bytes, 0);
    damage(
        &before.tail_segment,
        before.tail_offset_bytes,
        before.last_seq,
    );

    let untouched = snapshot(dir);
    let mut scanned = 0;
    let scanned_report = scan::<()>(dir, |_| {
        scanned += 1;
        Ok(())
    })
    .expect("scan torn log");
    assert_eq!(
        snapshot(dir),
        untouched,
        "{test}: scan must not modify files"
    );
    assert!(
        scanned_report.truncated_tail_bytes > 0,
        "{test}: {scanned_report:?}"
    );
    assert_eq!(scanned, count);

    let (wal, report, records) = open_collect(options(dir));
    assert_eq!(
        report.truncated_tail_bytes, scanned_report.truncated_tail_bytes,
        "{test}"
    );
    assert_eq!(report.tail_offset_bytes, before.tail_offset_bytes, "{test}");
    assert_eq!(records, written, "{test}: every durable record survives");
    let bytes = std::fs::read(&report.tail_segment).expect("read tail");
    assert!(
        bytes[report.tail_offset_bytes as usize..]
            .iter()
            .all(|&b| b == 0),
        "{test}: torn bytes are zeroed"
    );
    let new_seq = append_durable(&wal, 4, b"after the crash".to_vec());
    assert_eq!(new_seq, count as u64 + 1);
    wal.shutdown();

    let (report, records) = reopen(dir);
    assert_eq!(report.truncated_tail_bytes, 0, "{test}");
    assert_eq!(records.len(), count + 1);
    assert_eq!(records[..count], written[..]);
    assert_eq!(records[count], (new_seq, 4, b"after the crash".to_vec()));
}

#[test]
fn torn_partial_batch_is_erased() {
    let mut rng = Rng::seeded("torn_partial_batch_is_erased");
    for _ in 0..8 {
        let keep = rng.range(1, 20_000);
        check_torn_tail_is_erased("partial batch", 20, |segment, offset, last_seq| {
            let payloads = vec![vec![0xEE; 4_000], vec![0xDD; 4_000], vec![0xCC; 4_000]];
            let batch = encoded_batch(last_seq + 1, &payloads);
            let keep = keep.min(batch.len() - 1);
            write_at(segment, offset, &batch[..keep]);
        });
    }
}

#[test]
fn torn_random_garbage_is_erased() {
    let mut rng = Rng::seeded("torn_random_garbage_is_erased");
    for _ in 0..8 {
        let len = rng.range(1, 10_000);
        let mut garbage = rng.bytes(len);
        garbage[0] |= 1;
        check_torn_tail_is_erased("random garbage", 10, |segment, offset, _| {
            write_at(segment, offset, &garbage);
        });
    }
}

/// Pages of the last batch reached the disk out of order: the start of the batch is missing
/// (zeros) or a middle page is, while later parts are intact batch bytes. Still a torn tail.
#[test]
fn torn_batch_with_intact_later_part_is_erased() {
    for missing_page in [0usize, 1, 2] {
        check_torn_tail_is_erased("later part intact", 3, |segment, offset, last_seq| {
            let payloads: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 5_000]).collect();
            let mut batch = encoded_batch(last_seq + 1, &payloads);
            let page_start = |n: u64| ((offset / 4096 + n) * 4096).saturating_sub(offset) as usize;
            let lost = page_start(missing_page as u64)..page_start(missing_page as u64 + 1);
            let len = batch.len();
            assert!(lost.start < len, "the lost page is inside the batch");
            batch[lost.start..lost.end.min(len)].fill(0);
            write_at(segment, offset, &batch);
        });
    }
}

#[test]
fn callback_error_leaves_the_torn_tail_in_place() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 5);
    let report = scan::<()>(dir, |_| Ok(())).expect("scan");
    write_at(
        &report.tail_segment,
        report.tail_offset_bytes,
        b"torn bytes",
    );
    let untouched = snapshot(dir);
    let no_child_starting = CHILD_SPAWN.read();
    let result = open(options(dir), |record| {
        if record.seq == 3 {
            Err("rejected seq 3")
        } else {
            Ok(())
        }
    });
    drop(no_child_starting);
    assert!(matches!(result, Err(OpenError::Callback("rejected seq 3"))));
    assert_eq!(snapshot(dir), untouched);
}

// ---------------------------------------------------------------------------------------------
// Corruption: refused, never modified
// ---------------------------------------------------------------------------------------------

/// Asserts that both `open` and `scan` refuse the log at `segment`/`offset_bytes`, that the
/// message names both, and that neither modified a file.
fn assert_refused(dir: &Path, segment: &Path, offset_bytes: u64) -> CorruptReason {
    let untouched = snapshot(dir);
    let from_scan = scan_error(dir);
    let from_open = open_error(dir);
    assert_eq!(snapshot(dir), untouched, "refusing must not modify files");
    let message = from_open.to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("byte offset {offset_bytes}")),
        "{message}"
    );
    assert_eq!(message, from_scan.to_string());
    match from_open {
        OpenError::Corrupt {
            segment: found_segment,
            offset_bytes: found_offset,
            reason,
        } => {
            assert_eq!(found_segment, segment);
            assert_eq!(found_offset, offset_bytes);
            reason
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn flipped_byte_in_an_early_batch_is_corrupt() {
    let mut rng = Rng::seeded("flipped_byte_in_an_early_batch_is_corrupt");
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 10);
    let segment = segment_path(dir, 1);
    let batches = batch_offsets(&segment);
    assert_eq!(batches.len(), 10);
    let (victim_offset, victim_len) = batches[rng.range(0, 9)];
    flip_byte(&segment, (victim_offset + rng.range(0, victim_len)) as u64);
    let reason = assert_refused(dir, &segment, victim_offset as u64);
    assert!(
        matches!(reason, CorruptReason::ValidBatchAfterDamage { .. }),
        "{reason}"
    );
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_corrupt() {
    let mut rng = Rng::seeded("flipped_byte_in_a_sealed_segment_is_corrupt");
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_multi_segment_log(dir, 2);
    let segment = segment_path(dir, 1);
    // The last batch of segment 1 has no batch after it in its segment: only "not the last
    // segment" tells it from a torn tail.
    let (victim_offset, victim_len) = *batch_offsets(&segment).last().expect("batches");
    flip_byte(&segment, (victim_offset + rng.range(0, victim_len)) as u64);
    let reason = assert_refused(dir, &segment, victim_offset as u64);
    assert!(
        matches!(reason, CorruptReason::DamagedSealedSegment(_)),
        "{reason}"
    );
}

#[test]
fn garbage_after_a_sealed_segments_last_batch_is_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_multi_segment_log(dir, 2);
    let segment = segment_path(dir, 1);
    let (offset, len) = *batch_offsets(&segment).last().expect("batches");
    let end = (offset + len) as u64;
    // 8,000-byte payloads make a sealed segment end at least 8 bytes before its size.
    write_at(&segment, end, b"stray");
    let reason = assert_refused(dir, &segment, end);
    assert!(
        matches!(reason, CorruptReason::DamagedSealedSegment(_)),
        "{reason}"
    );
}

#[test]
fn valid_batch_after_damage_in_the_last_segment_is_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 4);
    let report = scan::<()>(dir, |_| Ok(())).expect("scan");
    let tail = report.tail_offset_bytes;
    write_at(&report.tail_segment, tail, &[0xAB; 100]);
    let later = tail + 4096;
    write_at(
        &report.tail_segment,
        later,
        &encoded_batch(report.last_seq + 1, &[b"synced earlier?".to_vec()]),
    );
    let reason = assert_refused(dir, &report.tail_segment, tail);
    assert_eq!(
        reason,
        CorruptReason::ValidBatchAfterDamage {
            damage: frame::FrameError::BadBatchMagic { found: 0xABAB_ABAB },
            valid_batch_offset_bytes: later
        }
    );
}

/// Regression (fuzz target `wal_replay`): a torn tail made of plausible batch headers, one every
/// 24 bytes, each claiming a body that reaches the end of the segment, made the rule-4c search
/// for a later valid batch hash O(n²) bytes: 13 s of CPU for this 1 MiB segment, hours for a
/// 64 MiB one. The search is linear now; the log is still a torn tail, and a valid batch
/// planted among the headers is still found.
#[test]
fn torn_tail_of_plausible_batch_headers_is_searched_in_linear_time() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 4);
    let report = scan::<()>(dir, |_| Ok(())).expect("scan");
    let segment = report.tail_segment.clone();
    let size = std::fs::metadata(&segment).expect("stat").len();
    let tail = report.tail_offset_bytes;
    let mut garbage = vec![0u8; (size - tail) as usize];
    garbage[..8].fill(0xFF);
    let mut at = 8;
    while at + BATCH_HEADER_BYTES <= garbage.len() {
        let body = (garbage.len() - at - BATCH_HEADER_BYTES) / 8 * 8;
        let header = &mut garbage[at..at + BATCH_HEADER_BYTES];
        header[0..4].copy_from_slice(&frame::BATCH_MAGIC.to_le_bytes());
        header[8..12].copy_from_slice(&(body as u32).to_le_bytes());
        header[12..16].copy_from_slice(&1u32.to_le_bytes());
        header[16..24].copy_from_slice(&1u64.to_le_bytes());
        at += BATCH_HEADER_BYTES;
    }
    write_at(&segment, tail, &garbage);
    let scanned = scan::<()>(dir, |_| Ok(())).expect("a torn tail, not corruption");
    assert_eq!(scanned.records, report.records);
    assert_eq!(scanned.tail_offset_bytes, tail);
    let nonzero = garbage.iter().rposition(|&b| b != 0).expect("garbage") + 1;
    assert_eq!(scanned.truncated_tail_bytes, nonzero as u64);

    let planted = size - 4096;
    write_at(
        &segment,
        planted,
        &encoded_batch(report.last_seq + 1, &[b"synced earlier?".to_vec()]),
    );
    let reason = assert_refused(dir, &segment, tail);
    assert!(
        matches!(
            reason,
            CorruptReason::ValidBatchAfterDamage { valid_batch_offset_bytes, .. }
                if valid_batch_offset_bytes == planted
        ),
        "{reason}"
    );
}

#[test]
fn valid_batch_with_a_seq_gap_is_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 4);
    let report = scan::<()>(dir, |_| Ok(())).expect("scan");
    write_at(
        &report.tail_segment,
        report.tail_offset_bytes,
        &encoded_batch(report.last_seq + 3, &[b"skips two seqs".to_vec()]),
    );
    let reason = assert_refused(dir, &report.tail_segment, report.tail_offset_bytes);
    assert_eq!(
        reason,
        CorruptReason::BatchSeqGap {
            expected: 5,
            found: 7
        }
    );
}

#[test]
fn missing_middle_segment_is_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_multi_segment_log(dir, 2);
    std::fs::remove_file(segment_path(dir, 2)).expect("remove segment 2");
    let reason = assert_refused(dir, &segment_path(dir, 2), 0);
    assert_eq!(
        reason,
        CorruptReason::MissingSegment {
            next_present_index: 3
        }
    );
}

#[test]
fn missing_first_segment_is_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_multi_segment_log(dir, 1);
    std::fs::remove_file(segment_path(dir, 1)).expect("remove segment 1");
    let reason = assert_refused(dir, &segment_path(dir, 1), 0);
    assert_eq!(
        reason,
        CorruptReason::MissingSegment {
            next_present_index: 2
        }
    );
}

#[test]
fn damaged_segment_headers_are_corrupt() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 2);
    let first = segment_path(dir, 1);
    let second = segment_path(dir, 2);
    flip_byte(&first, 20);
    let reason = assert_refused(dir, &first, 0);
    assert!(matches!(reason, CorruptReason::Header(_)), "{reason}");
    flip_byte(&first, 20);
    reopen(dir);

    // A copy of segment 1 under segment 2's name: its header names another index.
    std::fs::copy(&first, &second).expect("copy");
    let reason = assert_refused(dir, &second, 0);
    assert_eq!(
        reason,
        CorruptReason::IndexMismatch {
            name_index: 2,
            header_index: 1
        }
    );

    // An empty segment file.
    std::fs::write(&second, []).expect("empty segment 2");
    let reason = assert_refused(dir, &second, 0);
    assert_eq!(
        reason,
        CorruptReason::Header(frame::HeaderError::Truncated { available_bytes: 0 })
    );

    // A segment file cut short of its header's size.
    std::fs::remove_file(&second).expect("remove segment 2");
    let file = OpenOptions::new().write(true).open(&first).expect("open");
    file.set_len(512 * 1024).expect("truncate");
    let reason = assert_refused(dir, &first, 0);
    assert!(
        matches!(reason, CorruptReason::LengthMismatch { .. }),
        "{reason}"
    );
}

#[test]
fn stale_temporary_segment_is_removed_on_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    write_single_record_batches(dir, 3);
    let stale = dir.join(format!("{}.tmp", segment_file_name(2)));
    std::fs::write(&stale, b"interrupted creation").expect("stale");
    let report = scan::<()>(dir, |_| Ok(())).expect("scan ignores temporaries");
    assert_eq!(report.last_seq, 3);
    assert!(stale.exists(), "scan modifies nothing");
    let (report, _) = reopen(dir);
    assert_eq!(report.last_seq, 3);
    assert!(!stale.exists(), "open removes the leftover");
}

// ---------------------------------------------------------------------------------------------
// Crash recovery with a real killed process
// ---------------------------------------------------------------------------------------------

const CRASH_CHILD_DIR_ENV: &str = "VOUCHERD_WAL_CRASH_CHILD_DIR";
const CRASH_CHILD_TEST_NAME: &str = "wal::tests::crash_child_process_entry";
/// The child stops by itself after this many records, in case its parent is gone.
const CRASH_CHILD_MAX_RECORDS: u64 = 200_000;
const CRASH_CHILD_RECORDS_PER_ROUND: usize = 32;

/// Not a test on its own: when the crash test re-runs this binary with the environment
/// variable set, this appends forever and prints `ACKED <seq>` after each durable round.
#[test]
fn crash_child_process_entry() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR_ENV) else {
        return;
    };
    let (wal, report) =
        open::<std::convert::Infallible>(options(Path::new(&dir)), |_| Ok(())).expect("open");
    let mut stdout = std::io::stdout();
    let mut appended = 0;
    while appended < CRASH_CHILD_MAX_RECORDS {
        let mut receivers = Vec::with_capacity(CRASH_CHILD_RECORDS_PER_ROUND);
        for _ in 0..CRASH_CHILD_RECORDS_PER_ROUND {
            // Single appender: the seq is the one predicted, so the payload can depend on it.
            let seq = wal.next_seq();
            let (tx, rx) = oneshot::channel();
            assert_eq!(wal.append(6, payload_for_seq(seq), tx), Ok(seq));
            receivers.push((seq, rx));
        }
        let last = receivers
            .last()
            .map(|(seq, _)| *seq)
            .unwrap_or(report.last_seq);
        wait_all(receivers);
        appended += CRASH_CHILD_RECORDS_PER_ROUND as u64;
        use std::io::Write as _;
        writeln!(stdout, "ACKED {last}").expect("stdout");
        stdout.flush().expect("flush");
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// sled-style: a child process appends, the parent SIGKILLs it at a seeded moment, reopens, and
/// checks that every acknowledged record is there, in order, with its payload. A kill during
/// the copy into the mapping leaves a real torn tail in the page cache.
#[test]
fn killed_writer_loses_no_acknowledged_record() {
    const ROUNDS: usize = 5;
    let mut rng = Rng::seeded("killed_writer_loses_no_acknowledged_record");
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let exe = std::env::current_exe().expect("test binary");
    let mut acked_total = 0u64;
    let mut torn_tails = 0;
    for round in 0..ROUNDS {
        let target = acked_total + rng.range(1, 1_500) as u64;
        let starting = CHILD_SPAWN.write();
        let child = Command::new(&exe)
            .args([
                CRASH_CHILD_TEST_NAME,
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DIR_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        drop(starting);
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("child stdout");
        let mut acked = acked_total;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if let Some(seq) = line.strip_prefix("ACKED ") {
                acked = seq.parse().expect("seq");
                if acked >= target {
                    break;
                }
            }
        }
        assert!(
            acked >= target,
            "round {round}: child stopped early at {acked}"
        );
        drop(child); // SIGKILL while it keeps appending
        let (report, records) = reopen(dir);
        if report.truncated_tail_bytes > 0 {
            torn_tails += 1;
        }
        assert!(
            report.last_seq >= acked,
            "round {round}: acked {acked}, replayed {report:?}"
        );
        for (i, (seq, kind, payload)) in records.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "round {round}");
            assert_eq!(*kind, 6);
            assert_eq!(*payload, payload_for_seq(*seq), "round {round} seq {seq}");
        }
        acked_total = report.last_seq;
    }
    println!("crash rounds: {ROUNDS}, torn tails erased: {torn_tails}, records: {acked_total}");
}

// ---------------------------------------------------------------------------------------------
// Test observer
// ---------------------------------------------------------------------------------------------

/// Reports each batch to the test and, while closed, parks the committer inside the callback,
/// which lets a test hold the committer still without sleeping.
#[derive(Default)]
struct GatedObserver {
    events: Mutex<Option<mpsc::Sender<(usize, usize)>>>,
    receiver: Mutex<Option<mpsc::Receiver<(usize, usize)>>>,
    closed: Mutex<bool>,
    changed: Condvar,
}

impl GatedObserver {
    fn ensure_channel(&self) {
        let mut events = self.events.lock();
        if events.is_none() {
            let (tx, rx) = mpsc::channel();
            *events = Some(tx);
            *self.receiver.lock() = Some(rx);
        }
    }

    fn close(&self) {
        *self.closed.lock() = true;
    }

    fn open(&self) {
        *self.closed.lock() = false;
        self.changed.notify_all();
    }

    /// Blocks until the committer reports its next batch: `(records, bytes)`.
    fn next_event(&self) -> (usize, usize) {
        self.ensure_channel();
        let receiver = self.receiver.lock();
        receiver
            .as_ref()
            .expect("channel")
            .recv()
            .expect("committer reports batches")
    }
}

impl WalObserver for GatedObserver {
    fn batch_synced(&self, records: usize, bytes: usize, _sync_duration: Duration) {
        self.ensure_channel();
        if let Some(events) = self.events.lock().as_ref() {
            let _ = events.send((records, bytes));
        }
        let mut closed = self.closed.lock();
        while *closed {
            self.changed.wait(&mut closed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fail-stop, through the fault-injecting storage and the real committer thread
// ---------------------------------------------------------------------------------------------

/// Longest a test waits for the committer to report its fatal error (a hang guard only).
const FATAL_REPORT_DEADLINE: Duration = Duration::from_secs(60);

/// What the injected fatal handler saw: the `what` of the error and its errno.
type FatalReport = (String, Option<i32>);

/// Opens a `Wal` on `storage` whose fatal handler reports instead of exiting.
fn open_failing(storage: &SimStorage) -> (Wal, mpsc::Receiver<FatalReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler: FatalHandler = Arc::new(move |error: &FatalError| {
        let report = match error {
            FatalError::Storage { what, error } => (what.to_string(), error.source.raw_os_error()),
            FatalError::Bug { what, .. } => (what.to_string(), None),
            FatalError::TooManySegments { .. } => (error.to_string(), None),
        };
        let _ = tx.lock().send(report);
    });
    let (wal, _) = open_with_storage::<_, std::convert::Infallible>(
        storage.clone(),
        options(Path::new("/simulated/wal")),
        handler,
        |_| Ok(()),
    )
    .expect("open on simulated storage");
    (wal, rx)
}

/// Crashes a copy of `storage`'s disk (keeping every unsynced byte that the kernel still
/// had) and returns the records a recovery replays.
fn recovered_records(storage: &SimStorage) -> Replayed {
    let mut disk = storage.snapshot();
    disk.crash(CrashMode::KeepUnsynced);
    let mut records = Vec::new();
    let recovered =
        recover::<_, std::convert::Infallible>(SimStorage::from_disk(disk), 1024 * 1024, |r| {
            records.push((r.seq, r.kind, r.payload.to_vec()));
            Ok(())
        });
    assert!(recovered.is_ok(), "recovery after the failure");
    records
}

fn mutating_ops_since(storage: &SimStorage, start: usize) -> Vec<OpKind> {
    storage.with_disk(|d| d.trace()[start..].to_vec())
}

#[test]
fn failed_sync_fires_no_completion_and_nothing_is_written_after_it() {
    let storage = SimStorage::default();
    // File sync 0 is segment 1's creation; 1 and 2 are the first two batches; 3 fails.
    storage.with_disk(|d| {
        d.set_faults(Faults {
            fail_file_sync: Some(3),
            ..Faults::default()
        })
    });
    let (wal, fatal) = open_failing(&storage);
    assert_eq!(append_durable(&wal, 1, b"one".to_vec()), 1);
    assert_eq!(append_durable(&wal, 1, b"two".to_vec()), 2);
    let ops_before = storage.with_disk(|d| d.trace().len());

    let (tx, rx) = oneshot::channel();
    assert_eq!(wal.append(1, b"three".to_vec(), tx), Ok(3));
    assert!(
        rx.blocking_recv().is_err(),
        "the completion of a batch whose sync failed must never fire"
    );
    let (what, errno) = fatal
        .recv_timeout(FATAL_REPORT_DEADLINE)
        .expect("the fatal handler was called");
    assert_eq!(what, "write or sync of a WAL batch failed");
    assert_eq!(errno, Some(libc::EIO));
    assert!(fatal.try_recv().is_err(), "the handler is called once");

    // Fail-stop: nothing is appended, acknowledged or written after the failure.
    let (tx, rx) = oneshot::channel();
    assert_eq!(
        wal.append(1, b"four".to_vec(), tx),
        Err(AppendError::ShuttingDown)
    );
    assert!(rx.blocking_recv().is_err());
    let (tx, _rx) = oneshot::channel();
    assert_eq!(wal.barrier(tx), Err(AppendError::ShuttingDown));
    assert_eq!(wal.durable_seq(), 2);
    assert_eq!(
        mutating_ops_since(&storage, ops_before),
        vec![OpKind::Write, OpKind::FileSync],
        "the failed batch's write and sync, then nothing"
    );
    wal.shutdown();
    assert_eq!(
        mutating_ops_since(&storage, ops_before).len(),
        2,
        "shutdown after a failure writes nothing"
    );
    let records = recovered_records(&storage);
    assert_eq!(
        records,
        vec![(1, 1, b"one".to_vec()), (2, 1, b"two".to_vec())]
    );
}

#[test]
fn enospc_when_rolling_fires_no_completion_and_nothing_is_written_after_it() {
    const PAYLOAD_BYTES: usize = 60_000;
    /// Records that fit in one 1 MiB segment, plus margin: the roll must come before this.
    const MAX_RECORDS_BEFORE_ROLL: usize = 40;
    let storage = SimStorage::default();
    // Preallocation 0 is segment 1's creation at open; 1 is the roll to segment 2.
    storage.with_disk(|d| {
        d.set_faults(Faults {
            fail_preallocate: Some(1),
            ..Faults::default()
        })
    });
    let (wal, fatal) = open_failing(&storage);
    let mut acked = Vec::new();
    let mut failed_seq = None;
    for i in 0..MAX_RECORDS_BEFORE_ROLL {
        let payload = vec![i as u8; PAYLOAD_BYTES];
        let ops_before = storage.with_disk(|d| d.trace().len());
        let (tx, rx) = oneshot::channel();
        let seq = wal.append(2, payload.clone(), tx).expect("append");
        if rx.blocking_recv().is_ok() {
            acked.push((seq, 2, payload));
            continue;
        }
        failed_seq = Some(seq);
        let (what, errno) = fatal
            .recv_timeout(FATAL_REPORT_DEADLINE)
            .expect("the fatal handler was called");
        assert_eq!(what, "could not create the next WAL segment");
        assert_eq!(errno, Some(libc::ENOSPC));
        assert_eq!(
            mutating_ops_since(&storage, ops_before),
            vec![OpKind::Create, OpKind::Preallocate],
            "the roll stopped at the failed preallocation and the batch was never written"
        );
        break;
    }
    let failed_seq = failed_seq.expect("the log rolled");
    assert_eq!(failed_seq, acked.len() as u64 + 1);
    assert_eq!(wal.durable_seq(), acked.len() as u64);
    let ops_after = storage.with_disk(|d| d.trace().len());
    let (tx, _rx) = oneshot::channel();
    assert_eq!(
        wal.append(2, b"later".to_vec(), tx),
        Err(AppendError::ShuttingDown)
    );
    wal.shutdown();
    assert_eq!(storage.with_disk(|d| d.trace().len()), ops_after);
    assert_eq!(recovered_records(&storage), acked);
}

// ---------------------------------------------------------------------------------------------
// Writers: io_uring and mmap write the same format; io_uring falls back when refused
// ---------------------------------------------------------------------------------------------

/// Whether this process may set up an io_uring (Docker's default seccomp profile refuses).
fn io_uring_available() -> bool {
    crate::wal::uring::setup_ring().is_ok()
}

#[test]
fn both_writers_write_the_same_log_and_each_replays_the_other() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let expected_uring = if io_uring_available() {
        WriterKind::IoUring
    } else {
        WriterKind::Mmap
    };
    let mut written = Vec::new();
    // Alternate writers; 8 KB records roll the 1 MiB segments several times.
    for (round, writer) in [
        WalWriter::Mmap,
        WalWriter::IoUring,
        WalWriter::Mmap,
        WalWriter::Auto,
    ]
    .into_iter()
    .enumerate()
    {
        let mut opts = options(dir);
        opts.writer = writer;
        let (wal, report, records) = open_collect(opts);
        assert_eq!(
            records, written,
            "round {round}: {writer:?} replays everything"
        );
        let expected = if writer == WalWriter::Mmap {
            WriterKind::Mmap
        } else {
            expected_uring
        };
        assert_eq!(wal.writer(), expected);
        let payloads: Vec<Vec<u8>> = (0..200)
            .map(|i| payload_for_seq(report.last_seq + 1 + i).repeat(3))
            .collect();
        let receivers = append_many(&wal, &payloads);
        for ((seq, _), payload) in receivers.iter().zip(&payloads) {
            written.push((*seq, 3, payload.clone()));
        }
        wait_all(receivers);
        wal.shutdown();
    }
    let (report, records) = reopen(dir);
    assert_eq!(records, written);
    assert!(report.segments >= 2, "{report:?}");
}

/// Runs `f` with a subscriber that captures every log line; returns the lines.
fn capture_logs(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock()).into_owned();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn refused_io_uring_falls_back_to_mmap_with_one_log_line() {
    for (writer, errno) in [
        (WalWriter::IoUring, libc::EPERM),
        (WalWriter::IoUring, libc::ENOSYS),
        (WalWriter::Auto, libc::EPERM),
        (WalWriter::Auto, libc::ENOSYS),
    ] {
        let root = tempfile::tempdir().expect("tempdir");
        let mut opts = options(root.path());
        opts.writer = writer;
        let mut opened = None;
        let lines = capture_logs(|| {
            opened = Some(
                open_with_ring_setup::<std::convert::Infallible>(
                    opts,
                    || Err(std::io::Error::from_raw_os_error(errno)),
                    |_| Ok(()),
                )
                .expect("open falls back"),
            );
        });
        let (wal, _) = opened.expect("opened");
        assert_eq!(wal.writer(), WriterKind::Mmap, "{writer:?} {errno}");
        let fallback: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("falling back to the mmap WAL writer"))
            .collect();
        assert_eq!(fallback.len(), 1, "{writer:?} {errno}: {lines:#?}");
        assert!(fallback[0].contains("WARN"), "{}", fallback[0]);
        assert_eq!(append_durable(&wal, 1, b"on the fallback".to_vec()), 1);
        wal.shutdown();
        let (_, records) = reopen(root.path());
        assert_eq!(records, vec![(1, 1, b"on the fallback".to_vec())]);
    }
}

#[test]
fn other_io_uring_setup_failures_are_errors_and_mmap_never_sets_up_a_ring() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut opts = options(root.path());
    opts.writer = WalWriter::IoUring;
    let result = open_with_ring_setup::<std::convert::Infallible>(
        opts,
        || Err(std::io::Error::from_raw_os_error(libc::ENOMEM)),
        |_| Ok(()),
    );
    match result {
        Err(OpenError::Io(error)) => assert_eq!(error.source.raw_os_error(), Some(libc::ENOMEM)),
        Err(other) => panic!("expected an I/O error, got {other}"),
        Ok(_) => panic!("ENOMEM is not a reason to fall back"),
    }
    let mut opts = options(root.path());
    opts.writer = WalWriter::Mmap;
    let (wal, _) = open_with_ring_setup::<std::convert::Infallible>(
        opts,
        || panic!("the mmap writer must not set up a ring"),
        |_| Ok(()),
    )
    .expect("open");
    assert_eq!(wal.writer(), WriterKind::Mmap);
    wal.shutdown();
}

/// A batch a killed writer left in the page cache (written, never synced) is replayed at the
/// next open and, from then on, answered as durable: so the open syncs it first. Found by
/// review: it was published as durable with no sync, and a power loss then took it back.
#[test]
fn a_batch_a_killed_writer_left_unsynced_is_synced_at_the_next_open() {
    use crate::wal::storage::{SegmentWriter, Storage};
    let storage = SimStorage::default();
    let (wal, _fatal) = open_failing(&storage);
    assert_eq!(append_durable(&wal, 1, b"one".to_vec()), 1);
    wal.shutdown();
    drop(wal);
    // The previous process wrote batch 2 at the tail and was killed before its sync.
    let (writer, report) =
        recover::<_, std::convert::Infallible>(storage.clone(), 1024 * 1024, |_| Ok(()))
            .expect("recover");
    drop(writer);
    let mut segment = storage
        .open_segment(&report.tail_segment, 1024 * 1024)
        .expect("open tail");
    segment
        .write_at(
            report.tail_offset_bytes as usize,
            &encoded_batch(2, &[b"two".to_vec()]),
        )
        .expect("write, no sync");
    drop(segment);

    // The restart (same kernel, same page cache) replays it and calls it durable...
    let (wal, _fatal) = open_failing(&storage);
    assert_eq!(wal.durable_seq(), 2);
    wal.shutdown();
    drop(wal);

    // ... so a power loss now must not take it back.
    let mut disk = storage.snapshot();
    disk.crash(CrashMode::DropUnsynced);
    let mut seqs = Vec::new();
    recover::<_, std::convert::Infallible>(SimStorage::from_disk(disk), 1024 * 1024, |r| {
        seqs.push(r.seq);
        Ok(())
    })
    .expect("recover after power loss");
    assert_eq!(seqs, vec![1, 2], "seq 2 was answered as durable, then lost");
}
