//! Durability through the real binary: kill -9 and replay, a torn WAL tail,
//! corruption before the tail, and an orderly SIGTERM (also one that comes right after ready).

mod support;

use std::io::{Seek, SeekFrom, Write};

use serde_json::json;
use support::*;
use voucherd::wal;

fn tranche_quotas() -> Vec<(u32, u32)> {
    county_points()
        .iter()
        .take(3)
        .map(|(c, _, _)| (*c, 60))
        .collect()
}

#[test]
fn kill_9_then_replay_keeps_every_acknowledged_voucher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    daemon.create_tranche("t1", &open_tranche_body(&tranche_quotas()));
    let acked = claim_concurrently(&daemon, "t1", "a", 150);
    assert_eq!(acked.len(), 150);
    let before = remaining(&daemon, "t1");
    daemon.kill();

    let daemon = start(dir.path(), &config);
    assert_eq!(
        remaining(&daemon, "t1"),
        before,
        "remaining stock is unchanged by replay"
    );
    check_all_present(&daemon, "t1", &acked);
    // Claiming goes on from where it stopped, up to the quota and no further.
    let more = claim_concurrently(&daemon, "t1", "b", 100);
    assert_eq!(more.len(), 30, "180 vouchers in all, 150 before the crash");
    let mut ids: Vec<&str> = acked.iter().chain(&more).map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 180, "voucher IDs stay unique across restarts");
    assert!(remaining(&daemon, "t1").values().all(|r| *r == 0));
}

#[test]
fn torn_tail_is_truncated_and_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    daemon.create_tranche("t1", &open_tranche_body(&tranche_quotas()));
    let acked = claim_concurrently(&daemon, "t1", "a", 40);
    let before = remaining(&daemon, "t1");
    daemon.kill();

    // A crash during the next, unsynced batch: a batch header and half a body.
    let wal_dir = dir.path().join("data/wal");
    let report = wal::scan(&wal_dir, |_| Ok::<(), ()>(())).expect("scan");
    assert_eq!(report.truncated_tail_bytes, 0);
    let mut torn = b"VBAT".to_vec();
    torn.extend((0..700u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&report.tail_segment)
        .expect("open segment");
    file.seek(SeekFrom::Start(report.tail_offset_bytes))
        .expect("seek");
    file.write_all(&torn).expect("write torn tail");
    file.sync_all().expect("sync");
    drop(file);
    let rescan = wal::scan(&wal_dir, |_| Ok::<(), ()>(())).expect("a torn tail is not corruption");
    assert!(rescan.truncated_tail_bytes > 0);

    let daemon = start(dir.path(), &config);
    assert!(
        daemon.stderr_text().contains("WAL torn tail erased"),
        "{}",
        daemon.stderr_text()
    );
    assert_eq!(remaining(&daemon, "t1"), before);
    check_all_present(&daemon, "t1", &acked);
    let more = claim_concurrently(&daemon, "t1", "b", 20);
    assert_eq!(more.len(), 20);
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let after = wal::scan(&wal_dir, |_| Ok::<(), ()>(())).expect("clean after truncation");
    assert_eq!(after.truncated_tail_bytes, 0);
    let daemon = start(dir.path(), &config);
    check_all_present(&daemon, "t1", &more);
}

#[test]
fn corruption_before_the_tail_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    daemon.create_tranche("t1", &open_tranche_body(&tranche_quotas()));
    // One connection, so every claim is its own batch: many batches follow the flipped byte.
    let mut c = daemon.client();
    let (_, lng, lat) = county_points()[0];
    for i in 0..30 {
        assert_eq!(
            c.claim(&claim_body(
                "t1",
                &format!("u{i}"),
                &format!("r{i}"),
                lng,
                lat
            ))
            .status,
            201
        );
    }
    daemon.kill();

    let wal_dir = dir.path().join("data/wal");
    let report = wal::scan(&wal_dir, |_| Ok::<(), ()>(())).expect("scan");
    let offset = report.tail_offset_bytes / 3;
    let mut bytes = std::fs::read(&report.tail_segment).expect("read segment");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(&report.tail_segment, &bytes).expect("write segment");

    let (code, stderr) = run_expecting_exit(&dir.path().join("voucherd.toml"));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("corrupt WAL"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert_eq!(
        std::fs::read(&report.tail_segment).expect("read"),
        bytes,
        "the damaged log is left as it is"
    );
}

#[test]
fn sigterm_drains_and_restarts_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    daemon.create_tranche("t1", &open_tranche_body(&tranche_quotas()));
    let mut admin = daemon.admin_client();
    assert_eq!(admin.post_admin("/admin/v1/tranches/t1/pause").status, 200);
    assert_eq!(admin.post_admin("/admin/v1/tranches/t1/resume").status, 200);
    assert_eq!(admin.post_admin("/admin/v1/tranches/t1/pause").status, 200);
    assert_eq!(
        admin
            .put_admin(
                "/admin/v1/campaigns/c9",
                &json!({"name": "九", "budget_fen": 1000000})
            )
            .status,
        201
    );
    let acked = {
        assert_eq!(admin.post_admin("/admin/v1/tranches/t1/resume").status, 200);
        let a = claim_concurrently(&daemon, "t1", "a", 30);
        assert_eq!(admin.post_admin("/admin/v1/tranches/t1/pause").status, 200);
        a
    };
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");

    let daemon = start(dir.path(), &config);
    let view = daemon.client().get("/v1/tranches/t1").json();
    assert_eq!(view["state"], "paused", "pause survives a restart");
    assert_eq!(view["remaining"], 180 - 30);
    let mut admin = daemon.admin_client();
    assert_eq!(admin.post_admin("/admin/v1/tranches/t1/resume").status, 200);
    check_all_present(&daemon, "t1", &acked);
    let r = admin.put_admin(
        "/admin/v1/campaigns/c9",
        &json!({"name": "九", "budget_fen": 1000000}),
    );
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (200, json!("unchanged")),
        "campaign survives a restart"
    );
}

#[test]
fn sigterm_right_after_ready_still_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

/// `GET /v1/tranches/{id}` shows only durable claims: a claim still waiting for its
/// WAL sync (held back by a 100 ms group-commit window) is not counted, so a kill -9
/// right after the answer cannot raise the remaining stock it showed.
#[test]
fn a_tranche_answer_never_shows_a_claim_a_crash_takes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &TestConfig::default());
    let toml = std::fs::read_to_string(&path).expect("config");
    let toml = toml.replacen("[regions]", "batch_window_us = 100000\n\n[regions]", 1);
    std::fs::write(&path, toml).expect("write config");
    let daemon = start_with_config_file(dir.path(), &path);
    daemon.create_tranche("t1", &open_tranche_body(&tranche_quotas()));
    let (county, lng, lat) = county_points()[0];
    let remaining = |d: &Daemon| -> u64 {
        let r = d.client().get("/v1/tranches/t1");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["counties"]
            .as_array()
            .expect("counties")
            .iter()
            .find(|c| c["county"].as_str() == Some(county.to_string().as_str()))
            .and_then(|c| c["remaining"].as_u64())
            .expect("remaining")
    };
    let before = remaining(&daemon);

    let public = daemon.public;
    // Not acknowledged before the kill (or racing it): may or may not survive.
    let claimer = std::thread::spawn(move || {
        let body = claim_body("t1", "alice", "req-alice", lng, lat);
        Client::new(public).try_request("POST", "/v1/claims", body.to_string().as_bytes())
    });
    let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
    let shown = loop {
        let now_remaining = remaining(&daemon);
        if now_remaining != before {
            break now_remaining;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the claim never showed"
        );
    };
    daemon.kill();
    let _ = claimer.join().expect("claimer");
    let daemon = start(dir.path(), &TestConfig::default());
    assert_eq!(
        remaining(&daemon),
        shown,
        "a tranche answer showed {shown} remaining, yet after kill -9 it is different"
    );
}

/// A record whose checksums are valid but whose content the core could not have decided (here
/// a claim in a county whose quota is used up, appended through the WAL's own writer) is
/// refused with the record and the reason: the daemon exits 65 instead of panicking on the
/// core's over-issue assertion, and `voucherd wal verify` says the same.
#[test]
fn a_crc_valid_record_with_impossible_content_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    let (county, lng, lat) = county_points()[0];
    daemon.create_tranche("t1", &open_tranche_body(&[(county, 1)]));
    let mut c = daemon.client();
    assert_eq!(c.claim(&claim_body("t1", "u1", "r1", lng, lat)).status, 201);
    daemon.kill();

    let wal_dir = dir.path().join("data/wal");
    let mut options = wal::WalOptions::new(&wal_dir);
    options.segment_size_bytes = config.segment_size_bytes;
    options.max_batch_bytes = 1 << 20;
    let (log, report) = wal::open(options, |_| Ok::<(), ()>(())).expect("open the WAL");
    let intruder = voucherd::core::VoucherClaimed::new(voucherd::core::ClaimFields {
        tranche_id: "t1",
        voucher_random: 0x77,
        county: voucherd::core::CountyCode(county),
        claimed_at: voucherd::core::UnixMillis(1),
        user_id: "intruder",
        id_hash: None,
        phone_hash: None,
        device_id: None,
        request_id: "r-intruder",
        request_fingerprint: 1,
        location: voucherd::core::Location {
            lng,
            lat,
            crs: voucherd::core::Crs::Gcj02,
        },
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let seq = log
        .append(
            voucherd::journal::KIND_VOUCHER_CLAIMED,
            voucherd::journal::encode_claim(&intruder),
            tx,
        )
        .expect("append");
    assert_eq!(seq, report.last_seq + 1);
    rx.blocking_recv().expect("durable");
    log.shutdown();
    drop(log);

    let (code, stderr) = run_expecting_exit(&dir.path().join("voucherd.toml"));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    let reason = format!("record {seq} (voucher_claimed): over-issue in county {county} (quota 1)");
    assert!(stderr.contains(&reason), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_voucherd"))
        .args(["wal", "verify"])
        .arg(&wal_dir)
        .output()
        .expect("run wal verify");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(verify.status.code(), Some(65), "{out}");
    assert!(out.contains(&reason), "{out}");
}
