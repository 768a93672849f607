//! WAL commit benchmarks.
//!
//! ```sh
//! cargo bench --bench wal_commit                   # everything, then the latency table
//! cargo bench --bench wal_commit -- sync_path      # only the raw sync paths
//! ```
//!
//! 1. `sync_path` (the baseline, measured first): one 256-byte append made durable, appended
//!    back to back into a fresh 64 MiB file, by every path the WAL could take — `pwrite` +
//!    `fdatasync`, `pwritev2(RWF_DSYNC)`, io_uring `WRITE`→`FSYNC(DATASYNC)`, mmap copy +
//!    `msync`, mmap copy + `fdatasync` — into a file preallocated with `fallocate` (unwritten
//!    extents, what the WAL does) and into a pre-zeroed one (written extents). The same probe
//!    also counts minor page faults per append of the mmap paths.
//! 2. `wal_commit`: the whole WAL (queue, group commit, write, sync, completion) with each
//!    writer, batch windows of 0, 100 µs and 1 ms, and 1, 16 and 128 appenders that each
//!    append a 200-byte record and wait for its completion before the next.
//!
//! Criterion reports time per append (and appends/s). Every append's own latency is also
//! recorded; at the end a markdown table gives throughput, p50 and p99 per case.
//! Files go under Cargo's target tmp dir (the project's disk, not a tmpfs).

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio::sync::oneshot;
use voucherd::wal::probe::{ProbeFile, ProbePath, SyncProbe};
use voucherd::wal::{NoopObserver, Wal, WalOptions, WalWriter, WriterKind, open};

const APPEND_BYTES: usize = 256;
const PROBE_FILE_BYTES: u64 = 16 * 1024 * 1024;
const PAYLOAD_BYTES: usize = 200;
const BENCH_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;
const CLIENT_COUNTS: [usize; 3] = [1, 16, 128];
const BATCH_WINDOWS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_micros(100),
    Duration::from_millis(1),
];
const WRITERS: [(&str, WalWriter); 2] =
    [("mmap", WalWriter::Mmap), ("io_uring", WalWriter::IoUring)];
const SYNC_PATHS: [(&str, ProbePath); 5] = [
    ("pwrite+fdatasync", ProbePath::PwriteFdatasync),
    ("pwritev2_dsync", ProbePath::PwriteDsync),
    ("io_uring_write→fdatasync", ProbePath::IoUringLinked),
    ("mmap+msync", ProbePath::MmapMsync),
    ("mmap+fdatasync", ProbePath::MmapFdatasync),
];
const PROBE_FILES: [(&str, ProbeFile); 2] = [
    ("fallocated", ProbeFile::Fallocated),
    ("prezeroed", ProbeFile::PreZeroed),
];
/// Appends per fault count.
const FAULT_PROBE_APPENDS: usize = 2_000;
/// Interleaved comparisons, for a shared and noisy disk: every sync path takes one append in
/// turn, round after round; the writers take turns of a few hundred appends. So all cases
/// share the disk's mood of the moment, and their distributions can be compared.
const INTERLEAVED_SYNC_ROUNDS: usize = 600;
const INTERLEAVED_WAL_ROUNDS: usize = 24;
const INTERLEAVED_WAL_APPENDS_PER_ROUND: u64 = 256;
const INTERLEAVED_CLIENT_COUNTS: [usize; 2] = [1, 16];

/// Latencies and throughput gathered while criterion runs, per case.
#[derive(Default)]
struct Recorded {
    latencies: Vec<Duration>,
    appends: u64,
    elapsed: Duration,
}

type Table = Mutex<BTreeMap<String, Recorded>>;

fn record(table: &Table, case: &str, latencies: Vec<Duration>, elapsed: Duration) {
    let mut table = table.lock().expect("table");
    let entry = table.entry(case.to_owned()).or_default();
    entry.appends += latencies.len() as u64;
    entry.elapsed += elapsed;
    entry.latencies.extend(latencies);
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench tempdir")
}

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

fn sync_path(c: &mut Criterion, table: &Table) {
    let mut group = c.benchmark_group("sync_path");
    group.throughput(Throughput::Elements(1));
    let bytes = vec![0x5A; APPEND_BYTES];
    for (file_name, file) in PROBE_FILES {
        for (path_name, path) in SYNC_PATHS {
            let dir = bench_dir();
            let Ok(mut probe) =
                SyncProbe::create(dir.path(), "probe", PROBE_FILE_BYTES, file, path)
            else {
                println!("sync_path {path_name}/{file_name}: unavailable here, skipped");
                continue;
            };
            let case = format!("sync_path/{path_name}/{file_name}");
            group.bench_function(BenchmarkId::new(path_name, file_name), |b| {
                b.iter_custom(|iters| {
                    let mut latencies = Vec::with_capacity(iters as usize);
                    let started = Instant::now();
                    for _ in 0..iters {
                        let t = Instant::now();
                        probe.append_durable(&bytes).expect("durable append");
                        latencies.push(t.elapsed());
                    }
                    let elapsed = started.elapsed();
                    record(table, &case, latencies, elapsed);
                    elapsed
                });
            });
        }
    }
    group.finish();
}

/// Minor faults per durable append on the mmap paths: each store into a page that the last
/// sync cleaned write-faults again (the kernel re-arms dirty tracking), through
/// `page_mkwrite`.
fn fault_probe() -> Vec<String> {
    let bytes = vec![0x5A; APPEND_BYTES];
    let mut lines = Vec::new();
    for (file_name, file) in PROBE_FILES {
        for (path_name, path) in [
            ("mmap+msync", ProbePath::MmapMsync),
            ("mmap+fdatasync", ProbePath::MmapFdatasync),
            ("pwrite+fdatasync", ProbePath::PwriteFdatasync),
        ] {
            let dir = bench_dir();
            let mut probe = SyncProbe::create(dir.path(), "faults", PROBE_FILE_BYTES, file, path)
                .expect("probe");
            let before = minor_faults();
            let started = Instant::now();
            for _ in 0..FAULT_PROBE_APPENDS {
                probe.append_durable(&bytes).expect("append");
            }
            let elapsed = started.elapsed();
            let faults = minor_faults().saturating_sub(before);
            lines.push(format!(
                "| {path_name} | {file_name} | {:.2} | {:.0} µs |",
                faults as f64 / FAULT_PROBE_APPENDS as f64,
                elapsed.as_secs_f64() * 1e6 / FAULT_PROBE_APPENDS as f64
            ));
        }
    }
    lines
}

/// Every sync path, one append each in turn (see `INTERLEAVED_SYNC_ROUNDS`).
fn interleaved_sync_paths(table: &Table) {
    let bytes = vec![0x5A; APPEND_BYTES];
    let mut probes = Vec::new();
    let mut dirs = Vec::new();
    for (file_name, file) in PROBE_FILES {
        for (path_name, path) in SYNC_PATHS {
            let dir = bench_dir();
            if let Ok(probe) = SyncProbe::create(dir.path(), "probe", PROBE_FILE_BYTES, file, path)
            {
                probes.push((format!("interleaved/{path_name}/{file_name}"), probe));
                dirs.push(dir);
            }
        }
    }
    for _ in 0..INTERLEAVED_SYNC_ROUNDS {
        for (case, probe) in &mut probes {
            let t = Instant::now();
            probe.append_durable(&bytes).expect("durable append");
            let elapsed = t.elapsed();
            record(table, case, vec![elapsed], elapsed);
        }
    }
}

/// Both writers in turn (see `INTERLEAVED_WAL_ROUNDS`), at window 0 and a few client counts.
fn interleaved_writers(table: &Table) {
    let mut wals = Vec::new();
    for (writer_name, writer) in WRITERS {
        let dir = bench_dir();
        let wal = open_wal(dir.path(), writer, Duration::ZERO);
        if writer == WalWriter::IoUring && wal.writer() != WriterKind::IoUring {
            wal.shutdown();
            continue;
        }
        wals.push((writer_name, wal, dir));
    }
    for _ in 0..INTERLEAVED_WAL_ROUNDS {
        for clients in INTERLEAVED_CLIENT_COUNTS {
            for (writer_name, wal, _) in &wals {
                let case = format!("interleaved/{writer_name}/window_0us/clients_{clients}");
                run_load(
                    wal,
                    clients,
                    INTERLEAVED_WAL_APPENDS_PER_ROUND,
                    table,
                    &case,
                );
            }
        }
    }
    for (_, wal, _) in wals {
        wal.shutdown();
    }
}

fn open_wal(dir: &std::path::Path, writer: WalWriter, window: Duration) -> Wal {
    let opts = WalOptions {
        dir: dir.to_path_buf(),
        segment_size_bytes: BENCH_SEGMENT_SIZE_BYTES,
        max_batch_records: 4096,
        max_batch_bytes: 4 * 1024 * 1024,
        batch_window: window,
        max_queue_records: 65_536,
        observer: Arc::new(NoopObserver),
        writer,
    };
    open::<std::convert::Infallible>(opts, |_| Ok(()))
        .expect("open wal")
        .0
}

/// `clients` threads each append and wait, until about `iters` appends are done in all.
/// Returns the wall time, scaled to exactly `iters` appends.
fn run_load(wal: &Wal, clients: usize, iters: u64, table: &Table, case: &str) -> Duration {
    let per_client = iters.div_ceil(clients as u64).max(1);
    let start = Barrier::new(clients + 1);
    let (elapsed, latencies) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(per_client as usize);
                    start.wait();
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let (tx, rx) = oneshot::channel();
                        wal.append(1, vec![0x42; PAYLOAD_BYTES], tx)
                            .expect("append");
                        rx.blocking_recv().expect("durable");
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        let latencies: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("appender"))
            .collect();
        (started.elapsed(), latencies)
    });
    let done = latencies.len() as u64;
    record(table, case, latencies, elapsed);
    elapsed.mul_f64(iters as f64 / done as f64)
}

fn wal_commit(c: &mut Criterion, table: &Table) {
    let mut group = c.benchmark_group("wal_commit");
    group.throughput(Throughput::Elements(1));
    for (writer_name, writer) in WRITERS {
        for window in BATCH_WINDOWS {
            for clients in CLIENT_COUNTS {
                let dir = bench_dir();
                let wal = open_wal(dir.path(), writer, window);
                if writer == WalWriter::IoUring && wal.writer() != WriterKind::IoUring {
                    println!("wal_commit io_uring: unavailable here (fell back), skipped");
                    wal.shutdown();
                    continue;
                }
                let id = format!(
                    "{writer_name}/window_{}us/clients_{clients}",
                    window.as_micros()
                );
                let case = format!("wal_commit/{id}");
                group.bench_function(&id, |b| {
                    b.iter_custom(|iters| run_load(&wal, clients, iters, table, &case));
                });
                wal.shutdown();
            }
        }
    }
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn print_table(table: &Table, faults: &[String]) {
    println!("\n| case | appends/s | p50 | p99 | samples |\n|---|---|---|---|---|");
    let mut table = table.lock().expect("table");
    for (case, recorded) in table.iter_mut() {
        recorded.latencies.sort_unstable();
        let throughput = recorded.appends as f64 / recorded.elapsed.as_secs_f64().max(1e-9);
        println!(
            "| {case} | {throughput:.0} | {:.0} µs | {:.0} µs | {} |",
            percentile(&recorded.latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&recorded.latencies, 0.99).as_secs_f64() * 1e6,
            recorded.appends
        );
    }
    if !faults.is_empty() {
        println!(
            "\n| path | file | minor faults per append | time per append |\n|---|---|---|---|"
        );
        for line in faults {
            println!("{line}");
        }
    }
}

/// `probe:<path>:<file>` (e.g. `probe:mmap+msync:fallocated`) as the filter runs only that
/// path for `FAULT_PROBE_APPENDS` appends and prints its cost, so it can be run under
/// `perf stat` to count kernel events per append.
fn single_probe(spec: &str) -> bool {
    let mut parts = spec.splitn(3, ':');
    let (Some("probe"), Some(path_name), Some(file_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let path = SYNC_PATHS
        .iter()
        .find(|(n, _)| *n == path_name)
        .map(|(_, p)| *p);
    let file = PROBE_FILES
        .iter()
        .find(|(n, _)| *n == file_name)
        .map(|(_, f)| *f);
    let (Some(path), Some(file)) = (path, file) else {
        println!("unknown probe {spec}");
        return true;
    };
    let dir = bench_dir();
    let mut probe =
        SyncProbe::create(dir.path(), "probe", PROBE_FILE_BYTES, file, path).expect("probe");
    let bytes = vec![0x5A; APPEND_BYTES];
    let faults = minor_faults();
    let started = Instant::now();
    for _ in 0..FAULT_PROBE_APPENDS {
        probe.append_durable(&bytes).expect("append");
    }
    println!(
        "{spec}: {FAULT_PROBE_APPENDS} appends, {:.0} µs and {:.2} minor faults per append",
        started.elapsed().as_secs_f64() * 1e6 / FAULT_PROBE_APPENDS as f64,
        minor_faults().saturating_sub(faults) as f64 / FAULT_PROBE_APPENDS as f64
    );
    true
}

fn main() {
    if let Some(spec) = std::env::args().skip(1).find(|a| a.starts_with("probe:")) {
        single_probe(&spec);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let table = Table::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As criterion decides: without `--bench` (e.g. under `cargo test`) each case runs once,
    // as a smoke test, and the extra probes and the table are skipped.
    let measuring = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let wants_sync_path = filter.is_none_or(|f| "sync_path".contains(f.as_str()));
    sync_path(&mut c, &table);
    let faults = if measuring && wants_sync_path {
        fault_probe()
    } else {
        Vec::new()
    };
    wal_commit(&mut c, &table);
    c.final_summary();
    if measuring && filter.is_none_or(|f| "interleaved".contains(f.as_str())) {
        interleaved_sync_paths(&table);
        interleaved_writers(&table);
    }
    if measuring {
        print_table(&table, &faults);
    }
}
