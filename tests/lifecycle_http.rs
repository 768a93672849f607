//! The voucher lifecycle over HTTP against the real binary: budgets, the
//! ledger, settlement at closing driven by the timer, pool draws, revocation
//! (追回) by voucher ID and by identity key, dynamic codes, and the ledger
//! surviving kill -9.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const FACE: u64 = 2_000;

fn lifecycle_config() -> TestConfig {
    TestConfig {
        extra: "\n[lifecycle]\nsettle_check_interval_ms = 10\ncode_secret_env = \"VOUCHERD_TEST_ADMIN_TOKEN\"\n".into(),
        ..TestConfig::default()
    }
}

fn ledger(daemon: &Daemon, campaign: &str) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = daemon.admin_client().request(
        "GET",
        &format!("/admin/v1/campaigns/{campaign}/ledger"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let l = r.json()["ledger"].clone();
    let sum: u64 = [
        "unreleased_fen",
        "pool_fen",
        "outstanding_fen",
        "redeemed_fen",
        "revoked_fen",
    ]
    .iter()
    .map(|k| l[k].as_u64().expect(k))
    .sum();
    assert_eq!(
        sum,
        l["budget_fen"].as_u64().expect("budget"),
        "the ledger adds up: {l}"
    );
    l
}

/// Waits (bounded) for the settlement timer to move money into the pool.
fn wait_for_pool(daemon: &Daemon, campaign: &str, pool_fen: u64) -> Value {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let l = ledger(daemon, campaign);
        if l["pool_fen"].as_u64() == Some(pool_fen) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "pool never reached {pool_fen}: {l}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn budget_limits_what_tranches_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    let mut a = daemon.admin_client();
    let r = a.put_admin(
        "/admin/v1/campaigns/small",
        &json!({"name": "small", "budget_fen": 10_000}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mut body = open_tranche_body(&[(420502, 6)]);
    body["campaign_id"] = json!("small");
    let r = a.put_admin("/admin/v1/tranches/too-big", &body);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("budget_exceeded")),
        "{}",
        r.text()
    );
    body["quotas"] = json!({"420502": 5});
    assert_eq!(a.put_admin("/admin/v1/tranches/fits", &body).status, 201);
    let l = ledger(&daemon, "small");
    assert_eq!(
        (l["unreleased_fen"].as_u64(), l["outstanding_fen"].as_u64()),
        (Some(0), Some(10_000))
    );
    let r = a.put_admin(
        "/admin/v1/campaigns/small",
        &json!({"name": "small", "budget_fen": 9_999}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (422, json!("budget_fen"))
    );
    let r = a.put_admin(
        "/admin/v1/campaigns/small",
        &json!({"name": "small", "budget_fen": 10_000, "refund_policy": "sometimes"}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("refund_policy"))
    );
}

#[test]
fn closing_returns_unclaimed_stock_and_the_pool_can_be_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    // Already over: its 10 vouchers were never claimed and return to the pool.
    daemon.create_tranche(
        "over",
        &tranche_body(now - hour * 2, now - hour, &[(420502, 10)]),
    );
    let l = wait_for_pool(&daemon, "c1", 10 * FACE);
    assert_eq!(
        l["outstanding_fen"], 0,
        "nothing of the closed tranche is outstanding: {l}"
    );

    daemon.create_tranche("live", &open_tranche_body(&[(420502, 2), (420506, 2)]));
    let mut a = daemon.admin_client();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let draw = |a: &mut Client, body: Value| {
        a.request(
            "POST",
            "/admin/v1/tranches/live/draw",
            &[("authorization", &auth)],
            Some(body.to_string().as_bytes()),
        )
    };
    let r = draw(&mut a, json!({"vouchers": 11}));
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("pool_too_small")),
        "{}",
        r.text()
    );
    let r = draw(&mut a, json!({"vouchers": 4}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tranche"]["quota"], 8, "2 + 2 + 4 drawn");
    let r = draw(&mut a, json!({"quotas": {"420506": 6}}));
    assert_eq!(r.status, 200, "{}", r.text());
    let l = ledger(&daemon, "c1");
    assert_eq!(l["pool_fen"], 0, "{l}");
    let r = draw(&mut a, json!({"quotas": {"420581": 1}}));
    assert_eq!(r.status, 422, "{}", r.text());
    let r = draw(&mut a, json!({"vouchers": 1, "quotas": {"420502": 1}}));
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("vouchers"))
    );
    // The extra vouchers can be claimed at once. 420506 had 2, got 2 of the
    // 4 spread by quota, then 6 more: 10.
    let (lng, lat) = county_points()
        .into_iter()
        .find(|(c, _, _)| *c == 420506)
        .map(|(_, x, y)| (x, y))
        .expect("point");
    let mut c = daemon.client();
    let claimed = (0..12)
        .filter(|i| {
            c.claim(&claim_body(
                "live",
                &format!("u{i}"),
                &format!("r{i}"),
                lng,
                lat,
            ))
            .status
                == 201
        })
        .count();
    assert_eq!(claimed, 10);
}

#[test]
fn revocation_by_voucher_and_identity_recovers_to_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
    let (_, lng, lat) = county_points()
        .into_iter()
        .find(|(c, _, _)| *c == 420502)
        .expect("point");
    let mut c = daemon.client();
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut body = claim_body("t1", &format!("bot-{i}"), &format!("r{i}"), lng, lat);
        body["identity"] = json!({"device_id": format!("farm-device-{i}")});
        let r = c.claim(&body);
        assert_eq!(r.status, 201);
        ids.push(r.json()["voucher"]["id"].as_str().expect("id").to_owned());
    }
    let code = c.get(&format!("/v1/vouchers/{}/code", ids[0]));
    assert_eq!(code.status, 200, "{}", code.text());
    let code_text = code.json()["code"]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    assert_eq!(code_text.len(), 29);
    assert!(
        code_text.starts_with('c') && code_text[1..21] == ids[0][1..],
        "{code_text}"
    );

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = json!({
        "voucher_ids": [ids[3]],
        "identity": {"device_ids": ["farm-device-0", "FARM-DEVICE-1"], "user_ids": ["bot-2", "nobody"]},
        "reason": "外挂抢券",
        "case_id": "YC-GA-2026-0117",
    });
    let r = daemon.admin_client().request(
        "POST",
        "/admin/v1/vouchers:revoke",
        &[("authorization", &auth)],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json()["revocation"].clone();
    // Voucher 3 by ID, 0 by device, 2 by user ID; device IDs are case-sensitive,
    // so FARM-DEVICE-1 matches nothing and voucher 1 stays.
    assert_eq!(report["revoked_vouchers"], 3, "{report}");
    assert_eq!(report["recovered_to_pool_fen"], 3 * FACE);
    assert_eq!(report["already_redeemed_vouchers"], 0);
    let l = ledger(&daemon, "c1");
    assert_eq!(l["pool_fen"], 3 * FACE);
    let v = c.get(&format!("/v1/vouchers/{}", ids[0])).json()["voucher"].clone();
    assert_eq!(v["state"], "revoked");
    assert_eq!(v["revocation"]["case_id"], "YC-GA-2026-0117");
    assert_eq!(
        c.get(&format!("/v1/vouchers/{}", ids[1])).json()["voucher"]["state"],
        "claimed"
    );
    let r = c.get(&format!("/v1/vouchers/{}/code", ids[0]));
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("voucher_revoked"))
    );
    // A revoked identity still holds its (revoked) voucher: no second claim.
    let again = c.claim(&claim_body("t1", "bot-0", "r-again", lng, lat));
    assert_eq!(again.status, 409);
    // Revoking again changes nothing and says so.
    let r = daemon.admin_client().request(
        "POST",
        "/admin/v1/vouchers:revoke",
        &[("authorization", &auth)],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(r.json()["revocation"]["revoked_vouchers"], 0);
    assert_eq!(r.json()["revocation"]["untouched_vouchers"], 3);
    let bad = json!({"voucher_ids": ["x"], "reason": "r", "case_id": "c"});
    let r = daemon.admin_client().request(
        "POST",
        "/admin/v1/vouchers:revoke",
        &[("authorization", &auth)],
        Some(bad.to_string().as_bytes()),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("voucher_ids[0]"))
    );

    // The ledger and the revocations survive kill -9 and replay.
    let before = ledger(&daemon, "c1");
    daemon.kill();
    let daemon = start(dir.path(), &lifecycle_config());
    assert_eq!(ledger(&daemon, "c1")["pool_fen"], before["pool_fen"]);
    assert_eq!(
        daemon
            .client()
            .get(&format!("/v1/vouchers/{}", ids[2]))
            .json()["voucher"]["state"],
        "revoked"
    );
}
