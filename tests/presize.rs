//! The presize budget (`storage.presize_budget_vouchers`) over loopback HTTP against the
//! real binary: tranches defined past it start small, answer exactly as presized ones do,
//! and keep doing so after a restart; the memory made at definition stays within it, live
//! and in replay.

mod support;

use support::*;

const COUNTY: u32 = 420502;
const QUOTA: u32 = 1_000_000;
/// One tranche of [`QUOTA`] in full, half of the next, none of the third.
const BUDGET_VOUCHERS: u64 = 1_500_000;
const MIB: u64 = 1 << 20;
/// Index bytes a tranche presized for a million vouchers writes at definition: 2^21 slots of
/// 16 bytes for voucher IDs and for request IDs, 2^23 for up to four identity keys each.
const FULL_TRANCHE_INDEX_BYTES: u64 = (32 + 32 + 128) * MIB;

/// Resident memory of a process, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

fn point() -> (f64, f64) {
    let (_, lng, lat) = county_points()
        .into_iter()
        .find(|(c, _, _)| *c == COUNTY)
        .expect("county");
    (lng, lat)
}

#[test]
fn tranches_past_the_presize_budget_start_small_and_answer_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig {
        presize_budget_vouchers: Some(BUDGET_VOUCHERS),
        ..TestConfig::default()
    };
    let daemon = start(dir.path(), &config);
    let before = rss_bytes(daemon.pid());
    for tranche in ["t1", "t2", "t3"] {
        daemon.create_tranche(tranche, &open_tranche_body(&[(COUNTY, QUOTA)]));
    }
    let grown = rss_bytes(daemon.pid()).saturating_sub(before);
    println!(
        "resident memory grew {} MiB for three tranches of {QUOTA} vouchers, budget {BUDGET_VOUCHERS}",
        grown / MIB
    );
    // 1.5 tranches' worth is made (288 MiB); without the budget it would be three (576 MiB).
    assert!(
        grown >= FULL_TRANCHE_INDEX_BYTES,
        "the first tranche was not presized: grew {grown} bytes"
    );
    assert!(
        grown < FULL_TRANCHE_INDEX_BYTES * 2,
        "tranches past the budget were presized: grew {grown} bytes"
    );
    let log = daemon.stderr_text();
    for (tranche, presized) in [("t2", 500_000), ("t3", 0)] {
        assert!(
            log.lines().any(|l| l.contains("presize budget")
                && l.contains(&format!("tranche={tranche}"))
                && l.contains(&format!("presized_vouchers={presized}"))),
            "no presize warning for {tranche} ({presized}) in:\n{log}"
        );
    }
    assert!(
        !log.contains("tranche=t1 "),
        "t1 fit the budget, yet was warned about:\n{log}"
    );

    let (lng, lat) = point();
    let mut client = daemon.client();
    let claimers = 300;
    for tranche in ["t1", "t2", "t3"] {
        for user in 0..claimers {
            let reply = client.claim(&claim_body(
                tranche,
                &format!("u{user}"),
                &format!("{tranche}-r{user}"),
                lng,
                lat,
            ));
            assert_eq!(reply.status, 201, "{tranche} u{user}: {}", reply.text());
        }
        let again = client.claim(&claim_body(tranche, "u7", "again", lng, lat));
        assert_eq!(again.status, 409, "{tranche}: {}", again.text());
        assert_eq!(again.json()["outcome"], "already_claimed");
    }
    assert_eq!(daemon.terminate().code(), Some(0), "clean stop");

    // A restart replays the definitions within the same budget, and the same answers.
    let daemon = start(dir.path(), &config);
    let after_restart = rss_bytes(daemon.pid()).saturating_sub(before);
    println!(
        "after the restart, resident memory is {} MiB above the first start's",
        after_restart / MIB
    );
    assert!(
        after_restart < FULL_TRANCHE_INDEX_BYTES * 2,
        "replay presized past the budget: {after_restart} bytes above the first start"
    );
    let mut client = daemon.client();
    for tranche in ["t1", "t2", "t3"] {
        let again = client.claim(&claim_body(tranche, "u123", "after-restart", lng, lat));
        assert_eq!(again.status, 409, "{tranche}: {}", again.text());
        let fresh = client.claim(&claim_body(tranche, "new", "fresh", lng, lat));
        assert_eq!(fresh.status, 201, "{tranche}: {}", fresh.text());
        let remaining = remaining(&daemon, tranche);
        assert_eq!(
            remaining.get(&COUNTY.to_string()).copied(),
            Some(u64::from(QUOTA) - claimers - 1),
            "{tranche}: {remaining:?}"
        );
    }
}
