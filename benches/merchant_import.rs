//! Merchant import in memory: 100,000 CSV rows parsed, checked and applied,
//! one core, no HTTP and no WAL I/O. Reported as rows per second.
//!
//!     cargo bench --bench merchant_import -- --warm-up-time 1 --measurement-time 5
//!
//! The full HTTP import against the release binary is `benches/merchant_import_http.sh`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use voucherd::api::parse_merchant_csv;
use voucherd::core::{CountyCode, MerchantRegistry, MerchantRules};
use voucherd::journal;

const ROWS: usize = 100_000;
const COUNTIES: [u32; 13] = [
    420502, 420503, 420504, 420505, 420506, 420525, 420526, 420527, 420528, 420529, 420581, 420582,
    420583,
];
const INDUSTRIES: [&str; 7] = ["餐饮", "零售", "商超", "家电", "汽车", "文旅", "其他"];
const PLATFORMS: [&str; 4] = ["alipay", "wechat", "unionpay", "meituan"];

/// A file of `ROWS` merchants of typical length (about 75 bytes a line).
fn csv(prefix: &str) -> Vec<u8> {
    let mut text = String::from("merchant_id,name,county,industry,platform\n");
    for i in 0..ROWS {
        text.push_str(&format!(
            "{prefix}-{i:07},宜昌市第{i}号商户（{}）,{},{},{}\n",
            INDUSTRIES[i % 7],
            COUNTIES[i % 13],
            INDUSTRIES[i % 7],
            PLATFORMS[i % 4]
        ));
    }
    text.into_bytes()
}

fn rules() -> MerchantRules {
    MerchantRules::new(
        COUNTIES.iter().map(|c| CountyCode(*c)).collect(),
        INDUSTRIES.map(String::from).to_vec(),
        PLATFORMS.map(String::from).to_vec(),
    )
}

/// Everything the daemon does in memory for one import: parse, decide,
/// encode the WAL parts, apply. Returns the merchants created.
fn import(registry: &mut MerchantRegistry, bytes: &[u8], rules: &MerchantRules) -> usize {
    let parsed = parse_merchant_csv(bytes);
    assert!(parsed.errors.is_empty());
    let import = registry
        .decide_import(parsed.rows, rules)
        .expect("valid file");
    let parts = journal::encode_merchant_import(&import.created);
    black_box(parts);
    let created = import.created.len();
    registry.apply_import(import.created);
    created
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let file = csv("m");
    let rows = parse_merchant_csv(&file).rows;
    let created = MerchantRegistry::default()
        .decide_import(rows.clone(), &rules)
        .expect("ok")
        .created;
    println!(
        "file: {ROWS} rows, {} bytes, {} WAL parts",
        file.len(),
        journal::encode_merchant_import(&created).len()
    );
    let mut group = c.benchmark_group("merchant_import_100k");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);

    group.bench_function("parse+decide+encode+apply, new merchants", |b| {
        b.iter_batched(
            MerchantRegistry::default,
            |mut registry| {
                assert_eq!(import(&mut registry, &file, &rules), ROWS);
                registry
            },
            BatchSize::PerIteration,
        )
    });

    // The same work timed by this thread's CPU clock: what the code costs,
    // apart from how busy the (shared, noisy) machine is.
    group.bench_function(
        "parse+decide+encode+apply, new merchants, thread CPU time",
        |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let mut registry = MerchantRegistry::default();
                    let started = thread_cpu_time();
                    assert_eq!(import(&mut registry, &file, &rules), ROWS);
                    spent += thread_cpu_time() - started;
                    drop(registry);
                }
                spent
            })
        },
    );

    group.bench_function("parse CSV only", |b| {
        b.iter(|| black_box(parse_merchant_csv(&file).rows.len()))
    });

    group.bench_function("decide only, new merchants", |b| {
        let empty = MerchantRegistry::default();
        b.iter_batched(
            || rows.clone(),
            |rows| black_box(empty.decide_import(rows, &rules).expect("ok").created.len()),
            BatchSize::PerIteration,
        )
    });

    // The part held under the registry's write lock: applying the merchants.
    group.bench_function("apply only (write lock), new merchants", |b| {
        b.iter_batched(
            || (MerchantRegistry::default(), created.clone()),
            |(mut registry, created)| {
                registry.apply_import(created);
                registry
            },
            BatchSize::PerIteration,
        )
    });

    // A retry of the same file: every row is compared with its merchant.
    group.bench_function("parse+decide, retry (all unchanged)", |b| {
        let mut full = MerchantRegistry::default();
        import(&mut full, &file, &rules);
        b.iter(|| {
            let parsed = parse_merchant_csv(&file);
            let import = full.decide_import(parsed.rows, &rules).expect("ok");
            assert_eq!(import.unchanged, ROWS);
        })
    });
    group.finish();

    // Lookups and checkpoint capture with 1,100,000 merchants, built only
    // when one of these cases runs.
    let million = std::cell::LazyCell::new(|| {
        let mut million = MerchantRegistry::default();
        for round in 0..10 {
            import(&mut million, &csv(&format!("r{round}")), &rules);
        }
        // One more import, timed once: the write-lock hold at this size.
        let late = csv("late");
        let decided = million
            .decide_import(parse_merchant_csv(&late).rows, &rules)
            .expect("ok");
        let started = std::time::Instant::now();
        million.apply_import(decided.created);
        println!(
            "apply 100,000 new merchants to a registry of 1,000,000 (write-lock hold): {:?}",
            started.elapsed()
        );
        million
    });
    let ids: Vec<String> = (0..1_000)
        .map(|i| format!("r{}-{:07}", i % 10, (i * 97) % ROWS))
        .collect();
    let mut group = c.benchmark_group("merchant_registry_1_1m");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("get by id", |b| {
        b.iter(|| {
            ids.iter()
                .filter(|id| million.get(id).is_some_and(|m| m.is_active()))
                .count()
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("share for a checkpoint", |b| {
        b.iter(|| black_box(million.share()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
