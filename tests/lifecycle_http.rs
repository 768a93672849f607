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
    let r = draw(&mut a, json!({"quotas": {"420506": 0}}));
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("nothing_to_draw")),
        "{}",
        r.text()
    );
    // A budget below what the campaign's tranches already released is refused.
    let r = a.put_admin(
        "/admin/v1/campaigns/c1",
        &json!({"name": "test campaign", "budget_fen": FACE}),
    );
    assert_eq!(
        (
            r.status,
            r.json()["outcome"].clone(),
            r.json()["error"]["field"].clone()
        ),
        (422, json!("invalid_campaign"), json!("budget_fen")),
        "{}",
        r.text()
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

/// Draws and redefinitions that replay would refuse are refused when asked, with a typed
/// answer, and never reach the WAL: found by review, each of these used to append its record
/// and then stop the daemon on an assertion, and every restart after it exited 65.
#[test]
fn what_replay_would_refuse_is_refused_before_it_is_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    // Already over: 50 unclaimed vouchers of 1,000,000 yuan put 5 * 10^9 fen in the pool.
    let mut over = tranche_body(now - hour * 2, now - hour, &[(420502, 50)]);
    over["face_value_fen"] = json!(100_000_000u64);
    over["threshold_fen"] = json!(0);
    daemon.create_tranche("over", &over);
    wait_for_pool(&daemon, "c1", 5_000_000_000);

    let mut a = daemon.admin_client();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let draw = |a: &mut Client, tranche: &str, body: Value| {
        a.request(
            "POST",
            &format!("/admin/v1/tranches/{tranche}/draw"),
            &[("authorization", &auth)],
            Some(body.to_string().as_bytes()),
        )
    };

    // A scheduled tranche that drew from the pool can no longer be redefined.
    let later = tranche_body(now + hour, now + hour * 2, &[(420502, 5)]);
    daemon.create_tranche("later", &later);
    let r = draw(&mut a, "later", json!({"vouchers": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut fixed = later.clone();
    fixed["quotas"] = json!({"420502": 6});
    let r = a.put_admin("/admin/v1/tranches/later", &fixed);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("drew_from_pool")),
        "{}",
        r.text()
    );

    // A per-county draw names each county once, and adds at most 10,000,000 vouchers.
    let mut tiny = open_tranche_body(&[(420502, 10)]);
    tiny["face_value_fen"] = json!(1);
    tiny["threshold_fen"] = json!(0);
    daemon.create_tranche("tiny", &tiny);
    for (body, field) in [
        (
            json!({"quotas": {"420502": 1, "0420502": 1}}),
            "quotas.420502",
        ),
        (json!({"quotas": {"420502": u32::MAX}}), "quotas.420502"),
    ] {
        let r = draw(&mut a, "tiny", body.clone());
        assert_eq!(
            (r.status, r.json()["error"]["field"].clone()),
            (400, json!(field)),
            "{body}: {}",
            r.text()
        );
    }
    // Draws of the most allowed, until one would take the county's quota past u32::MAX.
    let mut quota = 10u64;
    loop {
        let r = draw(&mut a, "tiny", json!({"quotas": {"420502": 10_000_000}}));
        if quota + 10_000_000 > u64::from(u32::MAX) {
            assert_eq!(
                (r.status, r.json()["error"]["field"].clone()),
                (422, json!("quotas.420502")),
                "{}",
                r.text()
            );
            break;
        }
        assert_eq!(r.status, 200, "quota {quota}: {}", r.text());
        quota += 10_000_000;
        assert_eq!(r.json()["tranche"]["quota"], quota);
    }
    let without_time = |mut l: Value| {
        l.as_object_mut().expect("ledger").remove("as_of");
        l
    };
    let before = without_time(ledger(&daemon, "c1"));
    assert_eq!(daemon.terminate().code(), Some(0), "clean stop");

    // Everything logged replays.
    let daemon = start(dir.path(), &lifecycle_config());
    assert_eq!(without_time(ledger(&daemon, "c1")), before);
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
    // The same case again (a retry) changes nothing and reports what the case did; another
    // case finds them untouched. An ID naming no tranche is unknown.
    let revoke = |body: &Value| {
        daemon.admin_client().request(
            "POST",
            "/admin/v1/vouchers:revoke",
            &[("authorization", &auth)],
            Some(body.to_string().as_bytes()),
        )
    };
    let r = revoke(&body);
    assert_eq!(r.json()["revocation"], report, "a retry reports the same");
    assert_eq!(ledger(&daemon, "c1")["pool_fen"], 3 * FACE);
    let mut other_case = body.clone();
    other_case["case_id"] = json!("YC-GA-2026-0999");
    let mut no_such_tranche = ids[1].clone();
    no_such_tranche.replace_range(1..9, "0000ffff");
    other_case["voucher_ids"] = json!([ids[3], no_such_tranche]);
    let r = revoke(&other_case);
    assert_eq!(
        r.json()["revocation"]["revoked_vouchers"],
        0,
        "{}",
        r.text()
    );
    assert_eq!(r.json()["revocation"]["untouched_vouchers"], 3);
    assert_eq!(r.json()["revocation"]["unknown_voucher_ids"], 1);
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

const MERCHANTS_CSV: &str = "merchant_id,name,county,industry,platform\n\
m-xl-food,西陵小吃,420502,餐饮,alipay\n\
m-xl-car,西陵汽车城,420502,汽车,wechat\n\
m-yl-food,夷陵饭店,420506,餐饮,meituan\n\
m-xl-shut,西陵关门店,420502,餐饮,unionpay\n";

/// Imports the test merchants and suspends one.
fn merchants(daemon: &Daemon) {
    let mut a = daemon.admin_client();
    let r = a.post_csv("/admin/v1/merchants:import", MERCHANTS_CSV.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.post_admin("/admin/v1/merchants/m-xl-shut/suspend").status,
        200
    );
}

fn point(code: u32) -> (f64, f64) {
    county_points()
        .into_iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, x, y)| (x, y))
        .expect("point")
}

fn claim_one(daemon: &Daemon, tranche: &str, user: &str) -> String {
    let (lng, lat) = point(420502);
    let r = daemon
        .client()
        .claim(&claim_body(tranche, user, &format!("req-{user}"), lng, lat));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["voucher"]["id"].as_str().expect("id").to_owned()
}

fn redeem(c: &mut Client, by: (&str, &str), merchant: &str, order: &str, amount: u64) -> Reply {
    c.post("/v1/redemptions", &json!({by.0: by.1, "merchant_id": merchant, "order_id": order, "order_amount_fen": amount}))
}

#[test]
fn redemption_checks_every_rule_in_order_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    merchants(&daemon);
    let mut body = open_tranche_body(&[(420502, 10), (420506, 10)]);
    body["industries"] = json!(["餐饮", "零售"]);
    daemon.create_tranche("t1", &body);
    let v1 = claim_one(&daemon, "t1", "alice");
    let v2 = claim_one(&daemon, "t1", "bob");
    let mut c = daemon.client();

    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-food", "o-1", 9_999);
    assert_eq!(
        (
            r.status,
            r.json()["outcome"].clone(),
            r.json()["minimum_order_fen"].clone()
        ),
        (422, json!("below_threshold"), json!(10_000))
    );
    let r = redeem(&mut c, ("voucher_id", &v1), "m-yl-food", "o-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("county_mismatch"))
    );
    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-car", "o-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("industry_not_allowed"))
    );
    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-shut", "o-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (403, json!("merchant_suspended"))
    );
    let r = redeem(&mut c, ("voucher_id", &v1), "m-nobody", "o-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (404, json!("unknown_merchant"))
    );
    let r = redeem(
        &mut c,
        ("voucher_id", "v00000000000000000000"),
        "m-xl-food",
        "o-1",
        12_000,
    );
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (404, json!("unknown_voucher"))
    );

    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-food", "o-1", 12_000);
    assert_eq!(r.status, 201, "{}", r.text());
    let red = r.json()["redemption"].clone();
    assert_eq!(
        (red["discount_fen"].clone(), red["payable_fen"].clone()),
        (json!(FACE), json!(12_000 - FACE))
    );
    let redemption_id = red["id"].as_str().expect("id").to_owned();
    // Retry: same answer. Same order, other voucher: refused. Voucher again: already redeemed.
    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-food", "o-1", 12_000);
    assert_eq!(
        (
            r.status,
            r.json()["redemption"]["id"].clone(),
            r.json()["replayed"].clone()
        ),
        (200, json!(redemption_id), json!(true))
    );
    let r = redeem(&mut c, ("voucher_id", &v2), "m-xl-food", "o-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("order_id_reused"))
    );
    let r = redeem(&mut c, ("voucher_id", &v1), "m-xl-food", "o-2", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("already_redeemed"))
    );
    assert_eq!(
        c.get(&format!("/v1/vouchers/{v1}")).json()["voucher"]["state"],
        "redeemed"
    );
    assert_eq!(
        c.get(&format!("/v1/redemptions/{redemption_id}")).json()["redemption"]["order_id"],
        "o-1"
    );
    let l = ledger(&daemon, "c1");
    assert_eq!(l["redeemed_fen"], FACE);

    // By dynamic code: works once; a forged code is refused.
    let code = c.get(&format!("/v1/vouchers/{v2}/code")).json()["code"]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let mut forged = code.clone();
    forged.replace_range(28..29, if code.ends_with('0') { "1" } else { "0" });
    let r = redeem(&mut c, ("code", &forged), "m-xl-food", "o-3", 20_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("invalid_code"))
    );
    let r = redeem(&mut c, ("code", &code), "m-xl-food", "o-3", 20_000);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.post(
        &format!(
            "/v1/redemptions/{}/refund",
            r.json()["redemption"]["id"].as_str().expect("id")
        ),
        &json!({"amount_fen": 20_000, "refund_id": "rf-1"}),
    );
    assert_eq!(
        (r.status, r.json()["refund"]["voucher_restored"].clone()),
        (201, json!(true)),
        "{}",
        r.text()
    );
    // The voucher is usable again, but not with the code already used.
    let r = redeem(&mut c, ("code", &code), "m-xl-food", "o-4", 20_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("code_replayed"))
    );
    let r = redeem(&mut c, ("voucher_id", &v2), "m-xl-food", "o-4", 20_000);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.post("/v1/redemptions", &json!({"voucher_id": v1, "code": code, "merchant_id": "m", "order_id": "o", "order_amount_fen": 1}));
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("voucher_id"))
    );
}

/// Refund policies move exactly the documented money, and everything survives kill -9.
#[test]
fn refunds_follow_the_campaign_policy_and_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    merchants(&daemon);
    let mut a = daemon.admin_client();
    for (id, policy) in [("pro", "prorata"), ("nores", "no_restore")] {
        let r = a.put_admin(
            &format!("/admin/v1/campaigns/{id}"),
            &json!({"name": id, "budget_fen": 1_000_000, "refund_policy": policy}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let mut body = open_tranche_body(&[(420502, 10)]);
        body["campaign_id"] = json!(id);
        daemon.create_tranche(&format!("t-{id}"), &body);
    }
    let mut c = daemon.client();
    let refund = |c: &mut Client, rid: &str, id: &str, amount: u64| {
        c.post(
            &format!("/v1/redemptions/{rid}/refund"),
            &json!({"amount_fen": amount, "refund_id": id}),
        )
    };

    // prorata: ¥20 voucher on a ¥120 order; refund ¥60 returns ¥10, then the rest returns ¥10 more.
    let v = claim_one(&daemon, "t-pro", "p1");
    let rid = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "p-o1", 12_000).json()["redemption"]
        ["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = refund(&mut c, &rid, "rf-a", 6_000);
    assert_eq!(
        (r.status, r.json()["refund"]["returned_to_pool_fen"].clone()),
        (201, json!(1_000)),
        "{}",
        r.text()
    );
    let r = refund(&mut c, &rid, "rf-a", 6_000);
    assert_eq!((r.status, r.json()["replayed"].clone()), (200, json!(true)));
    let r = refund(&mut c, &rid, "rf-a", 5_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (422, json!("refund_id_reused"))
    );
    let r = refund(&mut c, &rid, "rf-b", 7_000);
    assert_eq!(
        (r.status, r.json()["refundable_fen"].clone()),
        (422, json!(6_000))
    );
    let r = refund(&mut c, &rid, "rf-b", 6_000);
    assert_eq!(r.json()["refund"]["returned_to_pool_fen"], 1_000);
    let l = ledger(&daemon, "pro");
    assert_eq!(
        (l["redeemed_fen"].clone(), l["pool_fen"].clone()),
        (json!(0), json!(FACE))
    );

    // no_restore: the first refund returns the whole value; the voucher stays used.
    let v = claim_one(&daemon, "t-nores", "n1");
    let rid = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "n-o1", 12_000).json()["redemption"]
        ["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = refund(&mut c, &rid, "rf-1", 1_000);
    assert_eq!(
        (
            r.json()["refund"]["returned_to_pool_fen"].clone(),
            r.json()["refund"]["voucher_restored"].clone()
        ),
        (json!(FACE), json!(false))
    );
    assert_eq!(
        c.get(&format!("/v1/vouchers/{v}")).json()["voucher"]["state"],
        "redeemed"
    );
    let r = refund(&mut c, &rid, "rf-2", 11_000);
    assert_eq!(r.json()["refund"]["returned_to_pool_fen"], 0);

    // A redeemed voucher found fraudulent: flagged, its value moves to `revoked`; no refunds after.
    let v = claim_one(&daemon, "t-nores", "n2");
    let rid = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "n-o2", 12_000).json()["redemption"]
        ["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = json!({"voucher_ids": [v], "reason": "套现", "case_id": "YC-2026-0002"});
    let r = a.request(
        "POST",
        "/admin/v1/vouchers:revoke",
        &[("authorization", &auth)],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(
        (
            r.json()["revocation"]["already_redeemed_vouchers"].clone(),
            r.json()["revocation"]["already_redeemed_fen"].clone()
        ),
        (json!(1), json!(FACE))
    );
    let l = ledger(&daemon, "nores");
    assert_eq!(
        (l["revoked_fen"].clone(), l["redeemed_fen"].clone()),
        (json!(FACE), json!(0))
    );
    let r = refund(&mut c, &rid, "rf-1", 1_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("under_investigation"))
    );

    let before: Vec<Value> = ["c1", "pro", "nores"]
        .iter()
        .map(|c| ledger(&daemon, c))
        .collect();
    daemon.kill();
    let daemon = start(dir.path(), &lifecycle_config());
    let after: Vec<Value> = ["c1", "pro", "nores"]
        .iter()
        .map(|c| ledger(&daemon, c))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        for key in [
            "budget_fen",
            "unreleased_fen",
            "pool_fen",
            "outstanding_fen",
            "redeemed_fen",
            "revoked_fen",
        ] {
            assert_eq!(b[key], a[key], "{key} after kill -9");
        }
    }
    let mut c = daemon.client();
    let r = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "n-o2", 12_000);
    assert_eq!(
        r.status,
        200,
        "the redemption's idempotency survives replay: {}",
        r.text()
    );
    assert_eq!(
        c.get(&format!("/v1/vouchers/{v}")).json()["voucher"]["revocation"]["case_id"],
        "YC-2026-0002"
    );
}

/// The outcomes the other tests do not reach: a refund of an unknown redemption (a
/// well-formed ID nobody issued, and a malformed one), the ledger of an unknown campaign,
/// more refunds of one redemption than the limit, and a voucher that expired. The tranche
/// of the last one closes 1 s after it is created and expires 0.5 s later; the settlement
/// timer is driven by the daemon's clock, so the test polls for the outcome, bounded.
#[test]
fn expiry_refund_limit_and_unknown_ids_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    merchants(&daemon);
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
    let mut c = daemon.client();

    let v = claim_one(&daemon, "t1", "u1");
    let r = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "o1", 12_000);
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["redemption"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Unknown redemptions: the issued ID with its last character changed, and garbage.
    let last = rid.chars().last().expect("non-empty");
    let other = if last == '0' { '1' } else { '0' };
    let forged = format!("{}{other}", &rid[..rid.len() - 1]);
    for id in [forged.as_str(), "r-not-an-id"] {
        let r = c.post(
            &format!("/v1/redemptions/{id}/refund"),
            &json!({"amount_fen": 1, "refund_id": "rf-x"}),
        );
        assert_eq!(
            (r.status, r.json()["outcome"].clone()),
            (404, json!("unknown_redemption")),
            "{id}: {}",
            r.text()
        );
    }

    // The ledger of a campaign that does not exist.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = daemon.admin_client().request(
        "GET",
        "/admin/v1/campaigns/no-such-campaign/ledger",
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (404, json!("unknown_campaign"))
    );

    // At most MAX_REFUNDS_PER_REDEMPTION (64) refunds of one redemption; 1 fen each.
    for i in 0..64 {
        let r = c.post(
            &format!("/v1/redemptions/{rid}/refund"),
            &json!({"amount_fen": 1, "refund_id": format!("rf-{i}")}),
        );
        assert_eq!(r.status, 201, "refund {i}: {}", r.text());
    }
    let r = c.post(
        &format!("/v1/redemptions/{rid}/refund"),
        &json!({"amount_fen": 1, "refund_id": "rf-64"}),
    );
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("too_many_refunds")),
        "{}",
        r.text()
    );
    // A retry of an accepted refund still replays.
    let r = c.post(
        &format!("/v1/redemptions/{rid}/refund"),
        &json!({"amount_fen": 1, "refund_id": "rf-0"}),
    );
    assert_eq!((r.status, r.json()["replayed"].clone()), (200, json!(true)));

    // Expiry: a voucher past expires_at is refused as voucher_expired.
    let now = chrono::Utc::now();
    let mut body = tranche_body(
        now - chrono::Duration::minutes(1),
        now + chrono::Duration::seconds(1),
        &[(420502, 10)],
    );
    body["expires_at"] = json!((now + chrono::Duration::milliseconds(1_500)).to_rfc3339());
    daemon.create_tranche("t-short", &body);
    let v = claim_one(&daemon, "t-short", "u-short");
    // Wait (bounded) until the voucher shows as expired, without touching it.
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let r = c.get(&format!("/v1/vouchers/{v}"));
        assert_eq!(r.status, 200, "{}", r.text());
        if r.json()["voucher"]["state"] == json!("expired") {
            break;
        }
        assert_eq!(
            r.json()["voucher"]["state"],
            json!("claimed"),
            "{}",
            r.text()
        );
        assert!(Instant::now() < deadline, "never expired: {}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "late-1", 12_000);
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (410, json!("voucher_expired")),
        "{}",
        r.text()
    );
}

/// A daemon whose group commit waits 100 ms for a batch to fill: a record
/// stays unsynced that long, so a test can act in between.
/// Sends a request from another thread, where its answer may never come (the test kills
/// the daemon first): what it asked for may or may not survive, and is never relied on.
fn send_unacknowledged(
    daemon: &Daemon,
    path: &'static str,
    body: Value,
) -> std::thread::JoinHandle<Option<Reply>> {
    let public = daemon.public;
    std::thread::spawn(move || {
        Client::new(public).try_request("POST", path, body.to_string().as_bytes())
    })
}

/// A redemption of `voucher` at m-xl-food for order o-1 (12,000 fen), unacknowledged.
fn redeem_unacknowledged(daemon: &Daemon, voucher: &str) -> std::thread::JoinHandle<Option<Reply>> {
    let body = json!({"voucher_id": voucher, "merchant_id": "m-xl-food", "order_id": "o-1", "order_amount_fen": 12_000});
    send_unacknowledged(daemon, "/v1/redemptions", body)
}

fn start_with_slow_commits(dir: &std::path::Path) -> Daemon {
    let path = write_config(dir, &lifecycle_config());
    let toml = std::fs::read_to_string(&path).expect("config");
    let toml = toml.replacen("[regions]", "batch_window_us = 100000\n\n[regions]", 1);
    std::fs::write(&path, toml).expect("write config");
    start_with_config_file(dir, &path)
}

/// A ledger answer shows only money that is durable: a redemption still
/// waiting for its WAL sync (held back here by a 100 ms group-commit window)
/// is not in it, so a kill -9 right after the answer cannot take back what it
/// showed. (The ledger used to be read from memory without waiting.)
#[test]
fn a_ledger_answer_never_shows_money_a_crash_takes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start_with_slow_commits(dir.path());
    merchants(&daemon);
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
    let v = claim_one(&daemon, "t1", "alice");
    assert_eq!(ledger(&daemon, "c1")["redeemed_fen"], 0);

    // Not acknowledged (the kill comes first, or its answer races the kill): may or may not survive.
    let redeemer = redeem_unacknowledged(&daemon, &v);
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let shown = loop {
        let l = ledger(&daemon, "c1");
        if l["redeemed_fen"] != 0 {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the redemption never showed: {l}"
        );
    };
    daemon.kill();
    let _ = redeemer.join().expect("redeemer");
    let daemon = start(dir.path(), &lifecycle_config());
    let after = ledger(&daemon, "c1");
    assert_eq!(
        after["redeemed_fen"], shown["redeemed_fen"],
        "a ledger answer showed {shown}, yet after kill -9 the ledger is {after}"
    );
}

/// A refusal that cites another request's redemption (409 already_redeemed)
/// is sent only once that redemption is durable, so a kill -9 right after it
/// cannot make the voucher unused again. (Refusals used to be answered from
/// memory at once.)
#[test]
fn already_redeemed_is_answered_only_once_the_redemption_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start_with_slow_commits(dir.path());
    merchants(&daemon);
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
    let v = claim_one(&daemon, "t1", "alice");

    let redeemer = redeem_unacknowledged(&daemon, &v);
    // Below the threshold: refused as such until the first redemption is
    // applied, then as already_redeemed (the state check comes first).
    let mut c = daemon.client();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let r = redeem(&mut c, ("voucher_id", &v), "m-xl-food", "o-2", 1);
        match (r.status, r.json()["outcome"].as_str()) {
            (409, Some("already_redeemed")) => break,
            (422, Some("below_threshold")) => {}
            _ => panic!("{}", r.text()),
        }
        assert!(
            Instant::now() < deadline,
            "the first redemption never showed"
        );
    }
    daemon.kill();
    let _ = redeemer.join().expect("redeemer");
    let daemon = start(dir.path(), &lifecycle_config());
    let got = daemon.client().get(&format!("/v1/vouchers/{v}"));
    assert_eq!(
        got.json()["voucher"]["state"],
        "redeemed",
        "409 already_redeemed was answered, yet after kill -9 the voucher is {}",
        got.text()
    );
}

/// A claim answered from an earlier claim (a retry with the same request ID, 200 replayed;
/// or another request of the same person, 409 already_claimed) shows the voucher as it is:
/// such an answer waits until the WAL is durable through every record its state rests on,
/// not only the claim. Found by review: a redemption waiting for its sync showed as
/// "redeemed" in such an answer, and a kill -9 then took it back.
#[test]
fn a_claim_answer_never_shows_a_redemption_a_crash_takes_back() {
    for (request_id, status) in [("req-alice", 200), ("another-request", 409)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = start_with_slow_commits(dir.path());
        merchants(&daemon);
        daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
        let v = claim_one(&daemon, "t1", "alice");
        let (lng, lat) = point(420502);
        let again = claim_body("t1", "alice", request_id, lng, lat);

        let redeemer = redeem_unacknowledged(&daemon, &v);
        let mut c = daemon.client();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let shown = loop {
            let r = c.claim(&again);
            assert_eq!(r.status, status, "{}", r.text());
            if r.json()["voucher"]["state"] == "redeemed" {
                break r.json();
            }
            assert!(Instant::now() < deadline, "the redemption never showed");
        };
        daemon.kill();
        let _ = redeemer.join().expect("redeemer");
        let daemon = start(dir.path(), &lifecycle_config());
        let got = daemon.client().get(&format!("/v1/vouchers/{v}"));
        assert_eq!(
            got.json()["voucher"]["state"],
            shown["voucher"]["state"],
            "a claim answered {status} with {shown}, yet after kill -9 the voucher is {}",
            got.text()
        );
    }
}

/// `request_id_reused` rests on the claim that used the ID first, so it is answered once that
/// claim is durable (found by review: it was answered from memory, and a kill -9 could then
/// free the ID, so the same request later succeeded).
#[test]
fn request_id_reused_is_answered_only_once_the_first_claim_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start_with_slow_commits(dir.path());
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 10)]));
    let (lng, lat) = point(420502);
    // Not acknowledged (the kill comes first, or its answer races it): may or may not survive.
    let first = send_unacknowledged(
        &daemon,
        "/v1/claims",
        claim_body("t1", "alice", "shared-request", lng, lat),
    );
    // Wait until the first claim is applied in memory (the gauge is read from memory).
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut c = daemon.client();
    while !c
        .get("/metrics")
        .text()
        .contains("voucherd_tranche_remaining_vouchers{tranche=\"t1\",county=\"420502\"} 9")
    {
        assert!(Instant::now() < deadline, "the first claim never applied");
        std::thread::sleep(Duration::from_millis(1));
    }
    let reused = claim_body("t1", "bob", "shared-request", lng, lat);
    let r = c.claim(&reused);
    assert_eq!(r.json()["outcome"], "request_id_reused", "{}", r.text());
    daemon.kill();
    let _ = first.join().expect("first");
    let daemon = start(dir.path(), &lifecycle_config());
    let again = daemon.client().claim(&reused);
    assert_eq!(
        again.json()["outcome"],
        "request_id_reused",
        "request_id_reused was answered, yet after kill -9 the ID was free: {}",
        again.text()
    );
}

/// A campaign's refund policy is fixed once it has a tranche; before that it may change.
#[test]
fn refund_policy_cannot_change_once_the_campaign_has_tranches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &lifecycle_config());
    let mut a = daemon.admin_client();
    let put = |a: &mut Client, policy: &str| {
        a.put_admin(
            "/admin/v1/campaigns/pol",
            &json!({"name": "pol", "budget_fen": 1_000_000, "refund_policy": policy}),
        )
    };
    assert_eq!(put(&mut a, "prorata").status, 201);
    assert_eq!(put(&mut a, "no_restore").status, 200, "no tranche yet");
    let mut body = open_tranche_body(&[(420502, 10)]);
    body["campaign_id"] = json!("pol");
    daemon.create_tranche("t-pol", &body);
    let r = put(&mut a, "restore_if_valid");
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (409, json!("refund_policy_locked")),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["error"]["field"], "refund_policy");
    // Other fields may still change.
    let r = a.put_admin(
        "/admin/v1/campaigns/pol",
        &json!({"name": "pol renamed", "budget_fen": 2_000_000, "refund_policy": "no_restore"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ledger(&daemon, "pol")["budget_fen"], 2_000_000);
}
