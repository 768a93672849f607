//! Restart cost after many claims: WAL replay rate, snapshot write/load, and
//! the real binary's time from start to `/readyz`, with and without a snapshot.
//!
//!     cargo bench --bench restart                              # 1,000,000 claims
//!     VOUCHERD_BENCH_CLAIMS=10000000 cargo bench --bench restart
//!
//! Builds a data directory under target/bench-restart with a campaign, one
//! tranche over 13 counties, and N claim records written through the real
//! WAL, then measures. Prints one line per measurement. Runs on mimalloc, like the daemon.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use voucherd::core::{
    CampaignSpec, ClaimFields, CountyCode, Crs, DigestKey, Event, Location, MerchantRules,
    TrancheSpec, UnixMillis, VoucherClaimed,
};
use voucherd::dispenser::{CountyDirectory, Dispenser, Recovered, replay_on_two_threads};
use voucherd::geo::{RegionIndex, SeatIndex};
use voucherd::{journal, snapshot, wal};

/// The daemon's allocator, so the in-process rows measure what `voucherd serve` runs.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COUNTIES: [u32; 13] = [
    420502, 420503, 420504, 420505, 420506, 420525, 420526, 420527, 420528, 420529, 420581, 420582,
    420583,
];
const DEFAULT_CLAIMS: u64 = 1_000_000;
/// Claims in the smoke run under `cargo test --all-targets`.
const SMOKE_CLAIMS: u64 = 2_000;
const APPEND_CHUNK_RECORDS: u64 = 4_096;
/// In-process WAL replays: the first on memory the host hands out, the rest on memory
/// the round before freed.
const DEFAULT_REPLAY_ROUNDS: usize = 3;
const READY_DEADLINE: Duration = Duration::from_secs(600);

fn options(dir: &Path) -> wal::WalOptions {
    let mut o = wal::WalOptions::new(dir.join("wal"));
    o.max_queue_records = 1 << 16;
    o
}

fn claim(i: u64) -> VoucherClaimed {
    VoucherClaimed::new(ClaimFields {
        tranche_id: "bench",
        voucher_random: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555,
        county: CountyCode(COUNTIES[(i % 13) as usize]),
        claimed_at: UnixMillis(1_800_000_000_000 + i as i64),
        user_id: &format!("2088{i:012}"),
        id_hash: Some(&format!("{:064x}", u128::from(i) * 0x1234_5678_9abc_def1)),
        phone_hash: None,
        device_id: Some(&format!("device-{i:010}")),
        request_id: &format!("req-{i:012}"),
        request_fingerprint: u128::from(i),
        location: Location {
            lng: 111.3,
            lat: 30.7,
            crs: Crs::Gcj02,
        },
    })
}

fn build(dir: &Path, claims: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (wal, _) = wal::open(options(dir), |_| Ok::<(), ()>(())).expect("open a fresh WAL");
    let quota = (claims / 13 + 1) as u32;
    let setup = [
        Event::CampaignDefined(CampaignSpec {
            campaign_id: "bench".into(),
            name: "bench".into(),
            budget_fen: u64::MAX / 4,
            refund_policy: voucherd::core::event::RefundPolicy::RestoreIfValid,
            rollover: voucherd::core::event::Rollover::None,
        }),
        Event::TrancheDefined {
            ordinal: 0,
            spec: TrancheSpec {
                tranche_id: "bench".into(),
                campaign_id: "bench".into(),
                opens_at: UnixMillis(0),
                closes_at: UnixMillis(4_000_000_000_000),
                expires_at: UnixMillis(4_000_000_000_000),
                face_value_fen: 2_000,
                threshold_fen: 10_000,
                quotas: COUNTIES.iter().map(|c| (CountyCode(*c), quota)).collect(),
                redeem_anywhere_in_city: false,
                industries: Vec::new(),
            },
        },
    ];
    let mut last = None;
    for event in &setup {
        let (tx, rx) = oneshot::channel();
        wal.append(journal::kind_of(event), journal::encode(event), tx)
            .expect("append");
        last = Some(rx);
    }
    let mut i = 0;
    while i < claims {
        let end = (i + APPEND_CHUNK_RECORDS).min(claims);
        for n in i..end {
            let (tx, rx) = oneshot::channel();
            wal.append(
                journal::KIND_VOUCHER_CLAIMED,
                journal::encode_claim(&claim(n)),
                tx,
            )
            .expect("append");
            last = Some(rx);
        }
        if let Some(rx) = last.take() {
            rx.blocking_recv().expect("durable");
        }
        i = end;
    }
    wal.shutdown();
}

fn replay(dir: &Path) -> (Recovered, wal::Wal, u64, Duration) {
    let started = Instant::now();
    let mut recovered = Recovered::new(DigestKey::new(1, 2));
    // As `voucherd serve` does it: decode on this thread, apply on a second one.
    let (opened, applied) = replay_on_two_threads(&mut recovered, |feed| {
        wal::open(options(dir), |r| feed.push(r.seq, r.kind, r.payload))
    });
    applied.expect("every record applies");
    let (wal, report) = opened.expect("replay");
    (recovered, wal, report.records, started.elapsed())
}

fn seconds_to_ready(binary: &Path, dir: &Path) -> f64 {
    let config = dir.join("voucherd.toml");
    let mut text = format!(
        "[server]\npublic_listen = \"127.0.0.1:18280\"\nadmin_listen = \"127.0.0.1:18281\"\n[admin]\ntoken_env = \"VOUCHERD_BENCH_TOKEN\"\n[storage]\ndata_dir = \"{}\"\ncheckpoint_every_records = 0\n[regions]\nsource = \"nearest_seat\"\n",
        dir.display()
    );
    for c in COUNTIES {
        text.push_str(&format!(
            "[[counties]]\nadcode = {c}\nname = \"c{c}\"\nseat = [111.3, 30.7]\n"
        ));
    }
    std::fs::write(&config, text).expect("config");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env("VOUCHERD_BENCH_TOKEN", "bench-token-0123456789abcdef")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn voucherd");
    let seconds = loop {
        if ready("127.0.0.1:18280") {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < READY_DEADLINE,
            "voucherd never became ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    seconds
}

fn ready(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // as a smoke test of every step at a small size (the full size took minutes in debug).
    let measuring = std::env::args().any(|a| a == "--bench");
    let claims: u64 = if measuring {
        std::env::var("VOUCHERD_BENCH_CLAIMS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_CLAIMS)
    } else {
        SMOKE_CLAIMS
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-restart");
    let started = Instant::now();
    build(&dir, claims);
    let wal_bytes: u64 = std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    println!(
        "built {claims} claims in {:.1} s ({} MiB of WAL segments)",
        started.elapsed().as_secs_f64(),
        wal_bytes >> 20
    );

    let scan_started = Instant::now();
    let report = wal::scan(&dir.join("wal"), |_| Ok::<(), ()>(())).expect("scan");
    let scan = scan_started.elapsed();
    println!(
        "wal scan (validate only): {} records in {:.2} s = {:.2} M records/s",
        report.records,
        scan.as_secs_f64(),
        report.records as f64 / scan.as_secs_f64() / 1e6
    );

    // The first replay pays for memory the host has to hand out; later ones reuse what
    // the previous round freed, as a daemon restarted on a warm machine does.
    let rounds: usize = std::env::var("VOUCHERD_BENCH_REPLAY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_REPLAY_ROUNDS);
    for round in 1..rounds {
        let (recovered, wal, records, elapsed) = replay(&dir);
        println!(
            "wal replay into state, round {round}: {records} records in {:.2} s = {:.2} M records/s",
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64() / 1e6
        );
        wal.shutdown();
        drop(recovered);
    }
    let (recovered, wal, records, elapsed) = replay(&dir);
    println!(
        "wal replay into state, round {rounds}: {records} records in {:.2} s = {:.2} M records/s",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64() / 1e6
    );

    let seats = COUNTIES.iter().map(|c| (*c, [111.3, 30.7])).collect();
    let regions = RegionIndex::Seats(SeatIndex::new(seats, 1e6).expect("seats"));
    let counties = CountyDirectory::new(
        COUNTIES
            .iter()
            .map(|c| (CountyCode(*c), format!("c{c}")))
            .collect(),
    );
    let rules = MerchantRules::new(
        COUNTIES.iter().map(|c| CountyCode(*c)).collect(),
        vec!["餐饮".into()],
        vec!["alipay".into()],
    );
    let dispenser = Arc::new(Dispenser::new(recovered, counties, rules, regions, wal));
    let t = Instant::now();
    let checkpoint = dispenser.checkpoint();
    let capture = t.elapsed();
    let snapshots = snapshot::directory(&dir);
    let t = Instant::now();
    let path = snapshot::write(&snapshots, &checkpoint, UnixMillis(0), 0, |s| {
        dispenser.wait_durable_blocking(s)
    })
    .expect("write")
    .expect("published");
    let write = t.elapsed();
    let size = std::fs::metadata(&path).expect("meta").len();
    println!(
        "snapshot: capture {} µs (under the locks), write {:.2} s, {} MiB",
        capture.as_micros(),
        write.as_secs_f64(),
        size >> 20
    );
    drop(checkpoint);
    dispenser.wal().shutdown();
    drop(dispenser);
    let t = Instant::now();
    let mut fresh = Recovered::new(DigestKey::new(3, 4));
    let loaded = snapshot::load_latest(&snapshots, &mut fresh)
        .expect("load")
        .expect("a snapshot");
    let load = t.elapsed();
    println!(
        "snapshot load: {} records in {:.2} s = {:.2} M records/s",
        loaded.records,
        load.as_secs_f64(),
        loaded.records as f64 / load.as_secs_f64() / 1e6
    );
    drop(fresh);

    let binary = PathBuf::from(env!("CARGO_BIN_EXE_voucherd"));
    println!(
        "voucherd start to /readyz with a snapshot: {:.2} s",
        seconds_to_ready(&binary, &dir)
    );
    std::fs::remove_dir_all(&snapshots).expect("remove snapshots");
    println!(
        "voucherd start to /readyz from the WAL alone: {:.2} s",
        seconds_to_ready(&binary, &dir)
    );
}
