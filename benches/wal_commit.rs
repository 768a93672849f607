//! WAL commit benchmarks: append + group-commit sync throughput for batches of 1, 16 and 256
//! records of 200-byte payloads, and the raw latency of syncing one 4 KiB write.
//!
//! Files go under Cargo's target tmp dir (on the project's disk, not a tmpfs). Each iteration
//! appends one batch worth of records and waits for the last completion, so it measures the
//! full path: queue, copy into the mapping, `msync`, completion.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::oneshot;
use voucherd::wal::{NoopObserver, Wal, WalOptions, open};

const PAYLOAD_BYTES: usize = 200;
const BATCH_SIZES_RECORDS: [usize; 3] = [1, 16, 256];
const SYNC_WRITE_BYTES: usize = 4096;
const BENCH_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Long enough for a whole batch to be queued before the committer syncs it.
const BENCH_BATCH_WINDOW: Duration = Duration::from_millis(20);

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench tempdir")
}

fn open_wal(dir: &std::path::Path, max_batch_records: usize) -> Wal {
    let opts = WalOptions {
        dir: dir.to_path_buf(),
        segment_size_bytes: BENCH_SEGMENT_SIZE_BYTES,
        max_batch_records,
        max_batch_bytes: 4 * 1024 * 1024,
        batch_window: if max_batch_records == 1 {
            Duration::ZERO
        } else {
            BENCH_BATCH_WINDOW
        },
        max_queue_records: 65_536,
        observer: Arc::new(NoopObserver),
    };
    open::<std::convert::Infallible>(opts, |_| Ok(()))
        .expect("open wal")
        .0
}

fn append_batch_and_wait(wal: &Wal, records: usize, payload_bytes: usize) {
    let mut last = None;
    for _ in 0..records {
        let (tx, rx) = oneshot::channel();
        wal.append(1, vec![0x42; payload_bytes], tx)
            .expect("append");
        last = Some(rx);
    }
    if let Some(rx) = last {
        rx.blocking_recv().expect("durable");
    }
}

fn append_sync_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_sync");
    for records in BATCH_SIZES_RECORDS {
        let dir = bench_dir();
        let wal = open_wal(dir.path(), records);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_with_input(
            BenchmarkId::new("batch_records", records),
            &records,
            |b, &n| {
                b.iter(|| append_batch_and_wait(&wal, n, PAYLOAD_BYTES));
            },
        );
        wal.shutdown();
    }
    group.finish();
}

fn sync_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_4k_latency");
    let dir = bench_dir();
    let wal = open_wal(dir.path(), 1);
    // One record whose batch is just under 4 KiB: one page copied and msync'd.
    group.bench_function("wal_msync_one_record", |b| {
        b.iter(|| append_batch_and_wait(&wal, 1, SYNC_WRITE_BYTES - 64));
    });
    wal.shutdown();

    let path = dir.path().join("raw.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw file");
    // Preallocated like a WAL segment, so both paths write into allocated, unwritten extents.
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        BENCH_SEGMENT_SIZE_BYTES,
    )
    .expect("fallocate raw file");
    file.sync_all().expect("sync raw file");
    let page = vec![0x5A; SYNC_WRITE_BYTES];
    let mut offset = 0u64;
    let mut next_offset = || {
        offset = (offset + SYNC_WRITE_BYTES as u64) % BENCH_SEGMENT_SIZE_BYTES;
        offset
    };
    group.bench_function("pwrite_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&page, next_offset()).expect("pwrite");
            file.sync_data().expect("fdatasync");
        });
    });
    group.bench_function("pwrite_fsync", |b| {
        b.iter(|| {
            file.write_all_at(&page, next_offset()).expect("pwrite");
            file.sync_all().expect("fsync");
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = append_sync_throughput, sync_latency
}
criterion_main!(benches);
