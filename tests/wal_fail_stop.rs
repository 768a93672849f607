//! Fail-stop through the real binary: the daemon runs under a file-size limit
//! (`prlimit --fsize`, with SIGXFSZ ignored so the kernel answers EFBIG instead of
//! killing it), so preallocating its next WAL segment fails. It must exit with
//! code 74, every claim it answered `201` must survive a restart, and the claims
//! of the failing batch must never have been acknowledged.
//!
//! Segment 1 is created by a first run without the limit (1 MiB segments); the
//! limited run is configured with 2 MiB segments, so it can keep appending into
//! segment 1 (inside the limit) and fails exactly when it rolls.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::*;
use voucherd::wal;

const FIRST_SEGMENT_BYTES: u64 = 1 << 20;
/// The limited run's segments: larger than the file-size limit, so rolling fails.
const LIMITED_SEGMENT_BYTES: u64 = 2 << 20;
const FILE_SIZE_LIMIT_BYTES: u64 = FIRST_SEGMENT_BYTES;
const CLIENT_THREADS: usize = 8;
/// A claim record is about 300 bytes, so ~3,500 claims fill a 1 MiB segment; a
/// thread that gets this many answers means the daemon never failed.
const MAX_CLAIMS_PER_THREAD: usize = 2_000;
/// Long device IDs make each record larger, so the segment fills sooner.
const DEVICE_ID_BYTES: usize = 110;
const WAL_FATAL_EXIT_CODE: i32 = 74;

fn quotas() -> Vec<(u32, u32)> {
    county_points()
        .iter()
        .take(3)
        .map(|(c, _, _)| (*c, 100_000))
        .collect()
}

fn body(thread: usize, i: usize, point: (f64, f64)) -> Value {
    let mut b = claim_body(
        "t1",
        &format!("fs-user-{thread}-{i}"),
        &format!("fs-req-{thread}-{i}"),
        point.0,
        point.1,
    );
    let device = format!("{thread:03}-{i:06}-{}", "d".repeat(DEVICE_ID_BYTES));
    b["identity"] = json!({ "device_id": device });
    b
}

/// What became of one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The connection was refused: the daemon was already gone.
    NotDelivered,
    /// The request was sent and the connection closed without an answer.
    Unanswered,
    Answered,
}

/// One claim on a fresh connection.
fn try_claim(addr: std::net::SocketAddr, body: &Value) -> (Fate, Option<Reply>) {
    use std::io::Write;
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return (Fate::NotDelivered, None);
    };
    stream
        .set_read_timeout(Some(IO_DEADLINE))
        .expect("read timeout");
    let text = body.to_string();
    let request = format!(
        "POST /v1/claims HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    if (&stream).write_all(request.as_bytes()).is_err() {
        return (Fate::NotDelivered, None);
    }
    match read_reply(&mut std::io::BufReader::new(stream)) {
        Some(reply) => (Fate::Answered, Some(reply)),
        None => (Fate::Unanswered, None),
    }
}

#[derive(Debug)]
struct Outcome {
    body: Value,
    /// `(voucher id, county)` if the answer was 201.
    acked: Option<(String, String)>,
    fate: Fate,
}

/// Each thread claims until the daemon stops answering; returns every claim sent.
fn claim_until_the_daemon_dies(daemon: &Daemon) -> Vec<Outcome> {
    let points = county_points();
    let addr = daemon.public;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENT_THREADS)
            .map(|t| {
                let points = points.clone();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..MAX_CLAIMS_PER_THREAD {
                        let (_, lng, lat) = points[(t + i) % 3];
                        let body = body(t, i, (lng, lat));
                        let (fate, reply) = try_claim(addr, &body);
                        let dead = fate != Fate::Answered;
                        let acked = reply.as_ref().filter(|r| r.status == 201).map(|r| {
                            let v = r.json()["voucher"].clone();
                            (
                                v["id"].as_str().expect("id").to_owned(),
                                v["county"].as_str().expect("county").to_owned(),
                            )
                        });
                        if let Some(r) = &reply {
                            assert!(
                                r.status == 201 || r.status == 503,
                                "unexpected answer {}: {}",
                                r.status,
                                r.text()
                            );
                        }
                        out.push(Outcome { body, acked, fate });
                        if dead {
                            return out;
                        }
                    }
                    panic!("thread {t}: the daemon answered {MAX_CLAIMS_PER_THREAD} claims and never failed");
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    })
}

fn limited_command(config: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize={FILE_SIZE_LIMIT_BYTES} -- \"$0\" serve --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_voucherd"))
        .arg(config);
    command
}

#[test]
fn mmap_writer_fails_stop_when_the_segment_roll_fails() {
    check_fail_stop_at_roll("mmap");
}

#[test]
fn io_uring_writer_fails_stop_when_the_segment_roll_fails() {
    check_fail_stop_at_roll("io_uring");
}

fn check_fail_stop_at_roll(writer: &'static str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TestConfig {
        segment_size_bytes: FIRST_SEGMENT_BYTES,
        wal_writer: Some(writer),
        ..TestConfig::default()
    };
    let daemon = start(dir.path(), &config);
    daemon.create_tranche("t1", &open_tranche_body(&quotas()));
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");

    config.segment_size_bytes = LIMITED_SEGMENT_BYTES;
    let config_path = write_config(dir.path(), &config);
    let daemon = start_with_command(dir.path(), limited_command(&config_path));
    let outcomes = claim_until_the_daemon_dies(&daemon);
    let (status, stderr) = daemon.wait_for_exit();
    assert_eq!(status.code(), Some(WAL_FATAL_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("could not create the next WAL segment"),
        "{stderr}"
    );
    let expected_writer = match writer {
        "io_uring" if io_uring::IoUring::new(4).is_ok() => "writer=IoUring",
        _ => "writer=Mmap",
    };
    assert!(stderr.contains(expected_writer), "{stderr}");

    let acked: Vec<&Outcome> = outcomes.iter().filter(|o| o.acked.is_some()).collect();
    let unanswered: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.fate != Fate::Answered)
        .collect();
    assert!(
        acked.len() > 1_000,
        "only {} claims acknowledged",
        acked.len()
    );
    assert!(
        outcomes.iter().any(|o| o.fate == Fate::Unanswered),
        "the failing batch had claims in flight"
    );

    // The log: still one segment (the roll failed before the rename), nothing torn.
    let wal_dir = dir.path().join("data/wal");
    assert!(!wal_dir.join(wal::segment_file_name(2)).exists());
    let mut claims_in_log = 0u64;
    let report = wal::scan(&wal_dir, |r| {
        if r.kind == voucherd::journal::KIND_VOUCHER_CLAIMED {
            claims_in_log += 1;
        }
        Ok::<(), ()>(())
    })
    .expect("the log is intact");
    assert_eq!(report.segments, 1);
    assert!(
        claims_in_log >= acked.len() as u64
            && claims_in_log <= (acked.len() + unanswered.len()) as u64,
        "{claims_in_log} claims in the log, {} acknowledged, {} unanswered",
        acked.len(),
        unanswered.len()
    );

    // Restart without the limit: everything acknowledged is there.
    let daemon = start(dir.path(), &config);
    let mut client = daemon.client();
    for o in &acked {
        let (id, county) = o.acked.as_ref().expect("acked");
        let got = client.get(&format!("/v1/vouchers/{id}"));
        assert_eq!(got.status, 200, "voucher {id} lost: {}", got.text());
        assert_eq!(got.json()["voucher"]["county"], county.as_str());
    }
    // The unanswered claims were never acknowledged. Those of the failing batch were never
    // written either, so their retry issues a new voucher (201); a claim whose batch synced
    // just before the exit, with its answer lost, gets its voucher back (200).
    let mut reissued = 0;
    let mut in_flight_reissued = 0;
    for o in &unanswered {
        let retry = client.claim(&o.body);
        assert!(
            retry.status == 201 || retry.status == 200,
            "{}: {}",
            retry.status,
            retry.text()
        );
        if retry.status == 201 {
            reissued += 1;
            if o.fate == Fate::Unanswered {
                in_flight_reissued += 1;
            }
        }
    }
    assert!(
        in_flight_reissued >= 1,
        "the claims of the failing batch were in flight and are not in the log"
    );
    println!(
        "fail-stop ({writer}): exit 74 after {} acknowledged claims; {} claims unanswered ({} in flight, \
         {in_flight_reissued} of them reissued on retry); {claims_in_log} claims in the log",
        acked.len(),
        unanswered.len(),
        outcomes
            .iter()
            .filter(|o| o.fate == Fate::Unanswered)
            .count(),
    );
    assert_eq!(
        claims_in_log + reissued,
        (acked.len() + unanswered.len()) as u64,
        "every claim sent is now in the log exactly once"
    );
}
