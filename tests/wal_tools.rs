//! The operator tools through the real binary: `voucherd wal verify | dump | stats` on logs
//! written by a real daemon (clean, torn, corrupt, locked) and on logs written directly through
//! `voucherd::wal::open` where exact contents or volume matter (filters, pipes, segments).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use support::*;
use voucherd::core::{
    CampaignSpec, ClaimFields, CountyCode, Crs, Event, Location, TrancheSpec, UnixMillis,
    VoucherClaimed, VoucherId,
};
use voucherd::{journal, wal};

/// What one run of a tool produced.
#[derive(Debug)]
struct ToolRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl ToolRun {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The `seq` of every record `dump` printed, in order.
    fn dumped_seqs(&self) -> Vec<u64> {
        self.json_lines()
            .iter()
            .map(|l| l["seq"].as_u64().expect("seq"))
            .collect()
    }
}

fn spawn_tool(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_voucherd"))
        .arg("wal")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voucherd wal")
}

/// Reads all of `stream` on a thread, so a full pipe never blocks the tool.
fn read_all(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        BufReader::new(stream)
            .read_to_string(&mut text)
            .expect("tool output is UTF-8");
        text
    })
}

/// Waits for the tool to exit, at most [`STARTUP_DEADLINE`].
fn wait_bounded(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("voucherd wal did not finish in {STARTUP_DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs `voucherd wal ARGS...` to completion.
fn tool(args: &[&str]) -> ToolRun {
    let mut child = spawn_tool(args);
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let code = wait_bounded(&mut child);
    ToolRun {
        code,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs `voucherd wal ARGS... DIR` with a stdout whose reader is already gone, so every write
/// fails with `EPIPE`; returns the exit code and stderr.
fn tool_on_closed_stdout(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_voucherd"))
        .arg("wal")
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voucherd wal");
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let code = wait_bounded(&mut child);
    (code, stderr.join().expect("stderr reader"))
}

fn tool_on(args: &[&str], dir: &Path) -> ToolRun {
    let dir = dir.to_str().expect("UTF-8 temp path");
    let mut all: Vec<&str> = args.to_vec();
    all.insert(1, dir);
    tool(&all)
}

/// The value after `label` on the line that starts with it, e.g. `records:`.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
        .trim()
}

// ---------------------------------------------------------------- logs from a real daemon

#[derive(Debug, Clone)]
struct Acked {
    tranche: String,
    user: String,
    id: String,
    county: String,
}

/// Claims `count` vouchers one after another, cycling through the first three counties.
fn claim_serially(daemon: &Daemon, tranche: &str, count: usize) -> Vec<Acked> {
    let points = county_points();
    let mut client = daemon.client();
    (0..count)
        .map(|i| {
            let (_, lng, lat) = points[i % 3];
            let user = format!("{tranche}-user-{i}");
            let reply = client.claim(&claim_body(
                tranche,
                &user,
                &format!("{tranche}-req-{i}"),
                lng,
                lat,
            ));
            assert_eq!(reply.status, 201, "{}", reply.text());
            let voucher = &reply.json()["voucher"];
            Acked {
                tranche: tranche.to_owned(),
                user,
                id: voucher["id"].as_str().expect("id").to_owned(),
                county: voucher["county"].as_str().expect("county").to_owned(),
            }
        })
        .collect()
}

fn three_county_quotas(quota: u32) -> Vec<(u32, u32)> {
    county_points()
        .iter()
        .take(3)
        .map(|(code, _, _)| (*code, quota))
        .collect()
}

/// A daemon that defined campaign `c1` (from its config) and tranche `t1`, then issued
/// `claims` vouchers; it is still running.
fn daemon_with_claims(dir: &Path, claims: usize) -> (Daemon, Vec<Acked>) {
    let daemon = start(dir, &TestConfig::default());
    daemon.create_tranche("t1", &open_tranche_body(&three_county_quotas(50)));
    let acked = claim_serially(&daemon, "t1", claims);
    (daemon, acked)
}

fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("data").join(voucherd::daemon::WAL_DIR_NAME)
}

#[test]
fn verify_dump_and_stats_agree_with_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut acked) = daemon_with_claims(dir.path(), 30);
    daemon.create_tranche("t2", &open_tranche_body(&three_county_quotas(10)));
    let mut admin = daemon.admin_client();
    assert_eq!(admin.post_admin("/admin/v1/tranches/t2/pause").status, 200);
    assert_eq!(admin.post_admin("/admin/v1/tranches/t2/resume").status, 200);
    acked.extend(claim_serially(&daemon, "t2", 7));
    daemon.kill();
    // campaign c1, tranche t1, 30 claims, tranche t2, pause, resume, 7 claims.
    let records = 1 + 1 + 30 + 1 + 2 + 7;

    // verify: the WAL directory and the data directory name the same log.
    for arg in [wal_dir(dir.path()), dir.path().join("data")] {
        let run = tool_on(&["verify"], &arg);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(
            field(&run.stdout, "WAL directory:"),
            wal_dir(dir.path()).display().to_string()
        );
        assert_eq!(
            field(&run.stdout, "records:"),
            format!("{records}, seq 1 ..= {records}")
        );
        assert_eq!(
            field(&run.stdout, "segments:"),
            "1 (00000000000000000001.wal)"
        );
        assert_eq!(field(&run.stdout, "torn tail:"), "none");
        assert_eq!(field(&run.stdout, "result:"), "clean");
    }

    // dump: every acknowledged voucher, once, with its county, identity and public ID.
    let dump = tool_on(&["dump"], &wal_dir(dir.path()));
    assert_eq!(dump.code, Some(0), "{}", dump.stderr);
    let lines = dump.json_lines();
    assert_eq!(lines.len(), records);
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=records as u64).collect::<Vec<_>>());
    let ordinals: HashMap<&str, u64> = lines
        .iter()
        .filter(|l| l["type"] == "tranche_defined")
        .map(|l| {
            (
                l["tranche_id"].as_str().expect("tranche_id"),
                l["ordinal"].as_u64().expect("ordinal"),
            )
        })
        .collect();
    let claims: HashMap<&str, &Value> = lines
        .iter()
        .filter(|l| l["type"] == "voucher_claimed")
        .map(|l| (l["voucher_id"].as_str().expect("voucher_id"), l))
        .collect();
    assert_eq!(claims.len(), acked.len(), "one claim record per voucher");
    for a in &acked {
        let claim = claims
            .get(a.id.as_str())
            .unwrap_or_else(|| panic!("acknowledged voucher {} missing from the dump", a.id));
        assert_eq!(claim["tranche_id"], a.tranche.as_str());
        assert_eq!(claim["user_id"], a.user.as_str());
        assert_eq!(claim["county"], a.county.as_str());
        let id = VoucherId::parse(&a.id).expect("a voucher ID");
        let random = claim["voucher_random"].as_str().expect("hex");
        assert_eq!(u64::from_str_radix(random, 16), Ok(id.random));
        assert_eq!(u64::from(id.tranche_ordinal), ordinals[a.tranche.as_str()]);
        let fingerprint = claim["request_fingerprint"].as_str().expect("hex");
        assert_eq!(fingerprint.len(), 32);
        assert!(
            u128::from_str_radix(fingerprint, 16).is_ok(),
            "{fingerprint}"
        );
        assert!(
            claim["claimed_at"]
                .as_str()
                .expect("time")
                .ends_with("+08:00")
        );
    }
    let defined = lines
        .iter()
        .find(|l| l["type"] == "tranche_defined")
        .expect("t1 defined");
    assert_eq!(defined["face_value_fen"], 2000);
    assert_eq!(defined["threshold_fen"], 10000);

    // dump filters.
    let t2 = tool_on(&["dump", "--tranche", "t2"], &wal_dir(dir.path())).json_lines();
    let t2_types: Vec<&str> = t2
        .iter()
        .map(|l| l["type"].as_str().expect("type"))
        .collect();
    let mut expected = vec![
        "tranche_defined",
        "tranche_controlled",
        "tranche_controlled",
    ];
    expected.extend(["voucher_claimed"; 7]);
    assert_eq!(t2_types, expected);
    assert!(t2.iter().all(|l| l["tranche_id"] == "t2"));
    let controls = tool_on(
        &[
            "dump",
            "--type",
            "tranche_controlled",
            "--type",
            "campaign_defined",
        ],
        &wal_dir(dir.path()),
    )
    .json_lines();
    let controls: Vec<(&str, &str)> = controls
        .iter()
        .map(|l| {
            let detail = l["control"].as_str().or(l["campaign_id"].as_str());
            (l["type"].as_str().expect("type"), detail.expect("detail"))
        })
        .collect();
    assert_eq!(
        controls,
        [
            ("campaign_defined", "c1"),
            ("tranche_controlled", "pause"),
            ("tranche_controlled", "resume")
        ]
    );
    let both = tool_on(
        &["dump", "--tranche", "t1", "--type", "voucher_claimed"],
        &wal_dir(dir.path()),
    );
    assert_eq!(both.json_lines().len(), 30);

    // stats: claims per tranche and per county, as acknowledged.
    let stats = tool_on(&["stats", "--json"], &dir.path().join("data"));
    assert_eq!(stats.code, Some(0), "{}", stats.stderr);
    let stats: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    assert_eq!(stats["records"], records);
    assert_eq!(stats["segments"], 1);
    assert_eq!(stats["first_seq"], 1);
    assert_eq!(stats["last_seq"], records);
    assert_eq!(stats["torn_tail_bytes"], 0);
    assert_eq!(
        stats["segment_file_bytes"],
        TestConfig::default().segment_size_bytes
    );
    let types = &stats["record_types"];
    assert_eq!(types["campaign_defined"]["records"], 1);
    assert_eq!(types["tranche_defined"]["records"], 2);
    assert_eq!(types["tranche_controlled"]["records"], 2);
    assert_eq!(types["voucher_claimed"]["records"], 37);
    let mut expected_counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for a in &acked {
        *expected_counts
            .entry((a.tranche.clone(), a.county.clone()))
            .or_default() += 1;
    }
    let mut counted = BTreeMap::new();
    for tranche in stats["tranches"].as_array().expect("tranches") {
        let id = tranche["tranche_id"].as_str().expect("id").to_owned();
        let mut sum = 0;
        for county in tranche["counties"].as_array().expect("counties") {
            let claims = county["claims"].as_u64().expect("claims");
            sum += claims;
            if claims > 0 {
                counted.insert(
                    (
                        id.clone(),
                        county["county"].as_str().expect("county").to_owned(),
                    ),
                    claims,
                );
            }
        }
        assert_eq!(tranche["claims"], sum, "{tranche}");
    }
    assert_eq!(counted, expected_counts);
    let table = tool_on(&["stats"], &wal_dir(dir.path()));
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains("tranche t1 (ordinal 0): claims 30, definitions 1, controls 0"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("tranche t2 (ordinal 1): claims 7, definitions 1, controls 2"),
        "{}",
        table.stdout
    );
}

/// Draws `body` (`{"vouchers": N}` or `{"quotas": {...}}`) from campaign c1's pool into
/// `tranche`, waiting (bounded) for the settlement timer to fill the pool first.
fn draw_from_pool(daemon: &Daemon, tranche: &str, body: &Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut admin = daemon.admin_client();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let reply = admin.request(
            "POST",
            &format!("/admin/v1/tranches/{tranche}/draw"),
            &[("authorization", &auth)],
            Some(body.to_string().as_bytes()),
        );
        if reply.status == 200 {
            return;
        }
        assert_eq!(
            (reply.status, reply.json()["outcome"].as_str()),
            (409, Some("pool_too_small")),
            "{}",
            reply.text()
        );
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Found by review: `stats` reported each county's quota as defined, without the pool draws
/// the daemon adds to it, so claims of drawn vouchers looked like over-issuance to an auditor
/// comparing them with `GET /v1/tranches/{id}`, as docs/operations.md says to.
#[test]
fn stats_quotas_include_pool_draws_as_the_daemon_reports_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    // Already over: its 10 unclaimed vouchers go to the pool at settlement.
    daemon.create_tranche(
        "over",
        &tranche_body(now - hour * 2, now - hour, &[(COUNTY, 10)]),
    );
    let quotas = three_county_quotas(2);
    assert_eq!(quotas[0].0, COUNTY, "the first county is {COUNTY}");
    daemon.create_tranche("live", &open_tranche_body(&quotas));
    draw_from_pool(
        &daemon,
        "live",
        &serde_json::json!({"quotas": {COUNTY.to_string(): 3}}),
    );
    draw_from_pool(&daemon, "live", &serde_json::json!({"vouchers": 2}));
    // Every county sold out, the first past its defined quota of 2.
    let mut client = daemon.client();
    let mut claimed = BTreeMap::new();
    for (code, lng, lat) in county_points().into_iter().take(3) {
        let mut count = 0u64;
        for i in 0.. {
            let (user, request) = (format!("{code}-user-{i}"), format!("{code}-req-{i}"));
            let reply = client.claim(&claim_body("live", &user, &request, lng, lat));
            if reply.status != 201 {
                break;
            }
            count += 1;
            assert!(count <= 20, "more vouchers than were defined and drawn");
        }
        claimed.insert(code.to_string(), count);
    }
    assert_eq!(claimed.values().sum::<u64>(), 3 * 2 + 3 + 2, "{claimed:?}");
    assert!(claimed[&COUNTY.to_string()] >= 5, "{claimed:?}");
    let view = daemon.client().get("/v1/tranches/live").json();
    let reported: BTreeMap<String, (u64, u64)> = view["counties"]
        .as_array()
        .expect("counties")
        .iter()
        .map(|c| {
            let county = c["county"].as_str().expect("county").to_owned();
            let quota = c["quota"].as_u64().expect("quota");
            assert_eq!(c["remaining"], 0, "sold out: {view}");
            assert_eq!(quota, claimed[&county], "{view}");
            (county, (quota, quota))
        })
        .collect();
    daemon.kill();

    assert_eq!(tool_on(&["verify"], &wal_dir(dir.path())).code, Some(0));
    let run = tool_on(&["stats", "--json"], &wal_dir(dir.path()));
    assert_eq!(run.code, Some(0), "{run:?}");
    let stats: Value = serde_json::from_str(&run.stdout).expect("stats JSON");
    let live = stats["tranches"]
        .as_array()
        .expect("tranches")
        .iter()
        .find(|t| t["tranche_id"] == "live")
        .expect("tranche live");
    let counted: BTreeMap<String, (u64, u64)> = live["counties"]
        .as_array()
        .expect("counties")
        .iter()
        .map(|c| {
            (
                c["county"].as_str().expect("county").to_owned(),
                (
                    c["quota"].as_u64().expect("quota"),
                    c["claims"].as_u64().expect("claims"),
                ),
            )
        })
        .collect();
    assert_eq!(counted, reported, "stats and GET /v1/tranches/live agree");
    let table = tool_on(&["stats"], &wal_dir(dir.path()));
    let (quota, claims) = reported[&COUNTY.to_string()];
    assert!(
        table
            .stdout
            .contains(&format!("  {COUNTY:<8} {quota:>10} {claims:>10}")),
        "{}",
        table.stdout
    );
}

#[test]
fn a_running_daemon_locks_the_tools_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _) = daemon_with_claims(dir.path(), 3);
    for args in [&["verify"][..], &["dump"], &["stats", "--json"]] {
        let run = tool_on(args, &wal_dir(dir.path()));
        assert_eq!(run.code, Some(75), "{args:?}: {run:?}");
        assert!(run.stderr.contains("locked"), "{}", run.stderr);
        assert!(run.stderr.contains("Stop the daemon"), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let run = tool_on(&["verify"], &wal_dir(dir.path()));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(field(&run.stdout, "records:"), "5, seq 1 ..= 5");
}

#[test]
fn verify_reports_a_torn_tail_that_serve_then_erases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, acked) = daemon_with_claims(dir.path(), 10);
    daemon.kill();
    let report = wal::scan(&wal_dir(dir.path()), |_| Ok::<(), ()>(())).expect("scan");
    // The remains of a batch that was being written: a header and part of a body.
    let mut torn = b"VBAT".to_vec();
    torn.extend((1..=300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 | 1));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&report.tail_segment)
        .expect("open segment");
    file.seek(SeekFrom::Start(report.tail_offset_bytes))
        .expect("seek");
    file.write_all(&torn).expect("write torn tail");
    file.sync_all().expect("sync");
    drop(file);

    let run = tool_on(&["verify"], &wal_dir(dir.path()));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        field(&run.stdout, "torn tail:"),
        format!(
            "{} bytes at 00000000000000000001.wal byte offset {}",
            torn.len(),
            report.tail_offset_bytes
        )
    );
    assert_eq!(field(&run.stdout, "records:"), "12, seq 1 ..= 12");
    assert_eq!(field(&run.stdout, "result:"), "torn tail (exit 1)");
    let (code, stderr) = tool_on_closed_stdout(&["verify"], &wal_dir(dir.path()));
    assert_eq!(code, Some(1), "the verdict, not the closed pipe: {stderr}");
    // dump and stats still work, and say that the tail was left out.
    let dump = tool_on(&["dump", "--type", "voucher_claimed"], &wal_dir(dir.path()));
    assert_eq!(dump.code, Some(0), "{}", dump.stderr);
    assert_eq!(dump.json_lines().len(), acked.len());
    assert!(dump.stderr.contains("torn tail"), "{}", dump.stderr);
    let stats = tool_on(&["stats", "--json"], &wal_dir(dir.path()));
    let stats: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    assert_eq!(stats["torn_tail_bytes"], torn.len());

    // `serve` erases exactly what verify announced; afterwards the log is clean.
    let daemon = start(dir.path(), &TestConfig::default());
    let erased = format!("WAL torn tail erased: {} bytes", torn.len());
    assert!(
        daemon.stderr_text().contains(&erased),
        "{}",
        daemon.stderr_text()
    );
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let run = tool_on(&["verify"], &wal_dir(dir.path()));
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn verify_names_the_file_and_offset_of_a_flipped_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Serial claims: one batch each, so many valid batches follow the damaged one.
    let (daemon, _) = daemon_with_claims(dir.path(), 20);
    daemon.kill();
    let report = wal::scan(&wal_dir(dir.path()), |_| Ok::<(), ()>(())).expect("scan");
    let flipped_at = report.tail_offset_bytes / 3;
    let mut bytes = std::fs::read(&report.tail_segment).expect("read segment");
    bytes[flipped_at as usize] ^= 0x10;
    std::fs::write(&report.tail_segment, &bytes).expect("write segment");

    let run = tool_on(&["verify"], &wal_dir(dir.path()));
    assert_eq!(run.code, Some(65), "{run:?}");
    assert!(
        field(&run.stdout, "result:").starts_with("CORRUPT"),
        "{}",
        run.stdout
    );
    assert_eq!(
        field(&run.stdout, "file:"),
        report.tail_segment.display().to_string()
    );
    let offset: u64 = field(&run.stdout, "offset:")
        .strip_prefix("byte ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("offset line in {}", run.stdout));
    // The offset is that of the damaged batch, which holds the flipped byte (one small claim).
    assert!(
        offset <= flipped_at && flipped_at - offset < 1024,
        "reported {offset}, flipped {flipped_at}"
    );
    assert!(
        field(&run.stdout, "reason:").contains("followed by a valid batch"),
        "{}",
        run.stdout
    );
    // A reader that went away does not change the verdict.
    let (code, stderr) = tool_on_closed_stdout(&["verify"], &wal_dir(dir.path()));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The other tools refuse too, before printing a single record.
    for args in [&["dump"][..], &["stats"]] {
        let refused = tool_on(args, &wal_dir(dir.path()));
        assert_eq!(refused.code, Some(65), "{args:?}: {refused:?}");
        assert!(refused.stdout.is_empty(), "{}", refused.stdout);
        assert!(
            refused.stderr.contains(&format!("byte offset {offset}")),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(
        std::fs::read(&report.tail_segment).expect("read"),
        bytes,
        "the tools change nothing"
    );
    // `serve` refuses, and names the command that was just run.
    let (code, stderr) = run_expecting_exit(&dir.path().join("voucherd.toml"));
    assert_eq!(code, Some(65), "{stderr}");
    let advice = format!("voucherd wal verify {}", wal_dir(dir.path()).display());
    assert!(stderr.contains(&advice), "{stderr}");
}

#[test]
fn missing_and_empty_directories_exit_66() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for target in [&missing, &empty] {
        for args in [&["verify"][..], &["dump"], &["stats"]] {
            let run = tool_on(args, target);
            assert_eq!(run.code, Some(66), "{args:?} {}: {run:?}", target.display());
            assert!(run.stdout.is_empty(), "{}", run.stdout);
            assert!(run.stderr.contains("<data_dir>/wal"), "{}", run.stderr);
        }
    }
    assert!(!missing.exists(), "the tools never create the directory");
}

// ---------------------------------------------------------------- logs written directly

const COUNTY: u32 = 420502;

fn define_tranche(tranche_id: &str, ordinal: u32, quota: u32) -> Event {
    Event::TrancheDefined {
        ordinal,
        spec: TrancheSpec {
            tranche_id: tranche_id.to_owned(),
            campaign_id: "c1".to_owned(),
            opens_at: UnixMillis(1_764_554_400_000),
            closes_at: UnixMillis(1_764_558_000_000),
            expires_at: UnixMillis(1_767_150_000_000),
            face_value_fen: 2_000,
            threshold_fen: 10_000,
            quotas: vec![(CountyCode(COUNTY), quota)],
            redeem_anywhere_in_city: false,
            industries: vec![],
        },
    }
}

fn claim(tranche_id: &str, i: u64) -> Event {
    Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
        tranche_id,
        voucher_random: 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i + 1),
        county: CountyCode(COUNTY),
        claimed_at: UnixMillis(1_764_554_400_000 + i as i64),
        // Long keys make bulky records, so a few thousand fill a segment or a pipe.
        user_id: &format!("user-{i:0>200}"),
        id_hash: Some(&format!("{i:064x}")),
        phone_hash: None,
        device_id: Some(&format!("device-{i}")),
        request_id: &format!("request-{i}"),
        request_fingerprint: u128::from(i) << 64 | 0xabc,
        location: Location {
            lng: 111.28,
            lat: 30.69,
            crs: Crs::Gcj02,
        },
    }))
}

/// A campaign, tranche `t` (ordinal 0) with `claims` claims.
fn events(claims: u64) -> Vec<Event> {
    let mut events = vec![
        Event::CampaignDefined(CampaignSpec {
            campaign_id: "c1".to_owned(),
            name: "test".to_owned(),
            budget_fen: u64::MAX / 2,
            refund_policy: voucherd::core::event::RefundPolicy::RestoreIfValid,
            rollover: voucherd::core::event::Rollover::None,
        }),
        define_tranche("t", 0, 1_000_000),
    ];
    events.extend((0..claims).map(|i| claim("t", i)));
    events
}

/// Writes `events` as WAL records through the WAL itself, then closes it cleanly.
fn write_log(dir: &Path, segment_size_bytes: u64, events: &[Event]) {
    let records = events
        .iter()
        .map(|event| (journal::kind_of(event), journal::encode(event)));
    write_records(dir, segment_size_bytes, records);
}

/// Writes `(kind, payload)` records through the WAL itself, then closes it cleanly.
fn write_records(
    dir: &Path,
    segment_size_bytes: u64,
    records: impl IntoIterator<Item = (u8, Vec<u8>)>,
) {
    let mut options = wal::WalOptions::new(dir);
    options.segment_size_bytes = segment_size_bytes;
    options.max_batch_bytes = wal::MIN_BATCH_BYTES;
    let (log, _) = wal::open(options, |_| Ok::<(), ()>(())).expect("open a new log");
    for (kind, payload) in records {
        let (durable, _) = tokio::sync::oneshot::channel();
        log.append(kind, payload, durable).expect("append");
    }
    log.shutdown();
}

#[test]
fn a_reader_that_goes_away_ends_the_dump_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // About 1.5 MB of JSON: far more than a pipe buffer holds, so writes must fail.
    write_log(dir.path(), 4 << 20, &events(3_000));
    let mut child = spawn_tool(&["dump", dir.path().to_str().expect("UTF-8")]);
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let first: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(first["type"], "campaign_defined");
    drop(stdout); // like `| head -n 1`
    let code = wait_bounded(&mut child);
    let stderr = stderr.join().expect("stderr reader");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "nothing to report: {stderr}");
    // Also when not a single line could be written; stats likewise.
    for args in [&["dump"][..], &["stats"], &["stats", "--json"]] {
        let (code, stderr) = tool_on_closed_stdout(args, dir.path());
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn verify_and_dump_span_segments_and_refuse_a_damaged_sealed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let claims = 5_000;
    write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, &events(claims));
    let run = tool_on(&["verify"], dir.path());
    assert_eq!(run.code, Some(0), "{run:?}");
    let records = claims + 2;
    assert_eq!(
        field(&run.stdout, "records:"),
        format!("{records}, seq 1 ..= {records}")
    );
    let segments = field(&run.stdout, "segments:");
    let count: u64 = segments
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("segment count");
    assert!(count >= 2, "{segments}");
    assert!(
        segments.ends_with(&format!(
            "{} .. {})",
            wal::segment_file_name(1),
            wal::segment_file_name(count)
        )),
        "{segments}"
    );

    let dump = tool_on(&["dump", "--type", "voucher_claimed"], dir.path());
    assert_eq!(dump.code, Some(0), "{}", dump.stderr);
    let lines = dump.json_lines();
    assert_eq!(lines.len() as u64, claims);
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| l["voucher_id"].as_str().expect("voucher_id"))
        .collect();
    assert_eq!(ids.len() as u64, claims, "every voucher ID once");
    for (i, line) in (0..).zip(&lines) {
        let Event::VoucherClaimed(expected) = claim("t", i) else {
            unreachable!()
        };
        let id = VoucherId {
            tranche_ordinal: 0,
            random: expected.voucher_random,
        };
        assert_eq!(line["voucher_id"], id.encode());
        assert_eq!(line["seq"], i + 3);
        assert_eq!(line["request_id"], expected.request_id());
    }

    let first = dir.path().join(wal::segment_file_name(1));
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[100_000] ^= 0x01;
    std::fs::write(&first, &bytes).expect("write");
    let run = tool_on(&["verify"], dir.path());
    assert_eq!(run.code, Some(65), "{run:?}");
    assert_eq!(field(&run.stdout, "file:"), first.display().to_string());
    assert!(
        field(&run.stdout, "reason:").contains("sealed"),
        "{}",
        run.stdout
    );
}

/// Logs that pass every checksum but that `serve` could not replay, each with its name and the
/// refusal the tools name on stderr.
fn unreplayable_logs() -> [(&'static str, Vec<Event>, &'static str); 4] {
    let campaign = events(0)[0].clone();
    [
        (
            "claim on an undefined tranche",
            vec![claim("nowhere", 0)],
            "cannot replay record 1 (voucher_claimed): unknown tranche nowhere",
        ),
        (
            "tranche of an undefined campaign",
            vec![define_tranche("t", 0, 1)],
            "cannot replay record 1 (tranche_defined): unknown campaign c1",
        ),
        (
            "over-issue",
            vec![
                campaign.clone(),
                define_tranche("t", 0, 1),
                claim("t", 0),
                claim("t", 1),
            ],
            "cannot replay record 4 (voucher_claimed): over-issue in county",
        ),
        (
            // Every record fits, but the tranche releases more than the budget.
            "over budget",
            vec![
                Event::CampaignDefined(CampaignSpec {
                    budget_fen: 1,
                    ..match campaign {
                        Event::CampaignDefined(spec) => spec,
                        _ => unreachable!(),
                    }
                }),
                define_tranche("t", 0, 1),
            ],
            "cannot replay: rebuilt state: campaign c1: tranches released 2000 fen of a budget of 1 fen",
        ),
    ]
}

#[test]
fn verify_replays_records_as_serve_would() {
    for (name, events, expected) in unreplayable_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, &events);
        let run = tool_on(&["verify"], dir.path());
        assert_eq!(run.code, Some(65), "{name}: {run:?}");
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{name}: {}", run.stdout);
    }
}

/// Found by review: docs/operations.md gives `dump` and `stats` exit 65 for a record that
/// cannot be replayed, but they only decoded, so an over-issued county was counted as fact with
/// exit 0. They print what they can (a dump of a refused log is what forensics needs), then
/// name the refusal as `verify` does, with exit 65, also when their reader went away.
#[test]
fn dump_and_stats_print_what_they_can_and_exit_65_on_a_log_serve_refuses() {
    for (name, events, expected) in unreplayable_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, &events);

        let dump = tool_on(&["dump"], dir.path());
        assert_eq!(dump.code, Some(65), "{name}: {dump:?}");
        assert!(dump.stderr.contains(expected), "{name}: {}", dump.stderr);
        assert!(
            dump.stderr.contains("`voucherd serve` refuses to start"),
            "{name}: {}",
            dump.stderr
        );
        let seqs = dump.dumped_seqs();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );

        let stats = tool_on(&["stats", "--json"], dir.path());
        assert_eq!(stats.code, Some(65), "{name}: {stats:?}");
        assert!(stats.stderr.contains(expected), "{name}: {}", stats.stderr);
        let json: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
        assert_eq!(json["records"], events.len(), "{name}");
        let refusal = json["replay_refusal"].as_str().expect("a refusal");
        assert!(refusal.contains(expected), "{name}: {refusal}");

        let table = tool_on(&["stats"], dir.path());
        assert_eq!(table.code, Some(65), "{name}: {table:?}");
        assert!(
            field(&table.stdout, "replay").starts_with("REFUSED (exit 65): "),
            "{name}: {}",
            table.stdout
        );
        // The verdict stands when nothing could be printed.
        let (code, stderr) = tool_on_closed_stdout(&["stats"], dir.path());
        assert_eq!(code, Some(65), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }

    // The over-issue as an auditor sees it: quota 1, claims 2, and the refusal.
    let (_, over_issued, _) = &unreplayable_logs()[2];
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, over_issued);
    let stats = tool_on(&["stats", "--json"], dir.path());
    let json: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    let county = &json["tranches"][0]["counties"][0];
    assert_eq!(
        (&county["quota"], &county["claims"]),
        (&1.into(), &2.into())
    );

    // A clean log says so, in both forms.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, &events(3));
    let json = tool_on(&["stats", "--json"], dir.path());
    assert_eq!(json.code, Some(0), "{json:?}");
    let json: Value = serde_json::from_str(&json.stdout).expect("stats JSON");
    assert_eq!(json["replay_refusal"], Value::Null);
    let table = tool_on(&["stats"], dir.path());
    assert_eq!(
        field(&table.stdout, "replay"),
        "clean (as `voucherd serve` replays it)"
    );
}

/// The type table's columns line up for every record type (`merchant_status_changed` is
/// longer than the others).
#[test]
fn stats_table_columns_line_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, &events(1));
    let run = tool_on(&["stats"], dir.path());
    assert_eq!(run.code, Some(0), "{run:?}");
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("type "))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(
        rows.len(),
        1 + 11 + 1,
        "header, types, total: {}",
        run.stdout
    );
    assert!(
        rows.iter().all(|row| row.len() == rows[0].len()),
        "{}",
        run.stdout
    );
}

/// A record that passes its checksums but does not decode: `dump` and `stats` leave it out and
/// go on, then name it with exit 65.
#[test]
fn dump_and_stats_leave_out_a_record_that_does_not_decode_and_exit_65() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = events(2);
    let encoded = |e: &Event| (journal::kind_of(e), journal::encode(e));
    let undecodable = (journal::kind_of(&good[3]), vec![0xff; 7]);
    let records = good[..3]
        .iter()
        .map(encoded)
        .chain([undecodable])
        .chain(good[3..].iter().map(encoded));
    write_records(dir.path(), wal::MIN_SEGMENT_SIZE_BYTES, records);

    let dump = tool_on(&["dump"], dir.path());
    assert_eq!(dump.code, Some(65), "{dump:?}");
    assert!(
        dump.stderr.contains("cannot replay record 4: "),
        "{}",
        dump.stderr
    );
    let seqs = dump.dumped_seqs();
    assert_eq!(seqs, [1, 2, 3, 5]);
    let stats = tool_on(&["stats", "--json"], dir.path());
    assert_eq!(stats.code, Some(65), "{stats:?}");
    let json: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    assert_eq!(json["record_types"]["voucher_claimed"]["records"], 2);
    assert!(
        json["replay_refusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("cannot replay record 4: ")),
        "{json}"
    );
    assert_eq!(tool_on(&["verify"], dir.path()).code, Some(65));
}
