//! Configuration: bad files exit 64 naming the key; the demo config runs on a
//! fresh checkout and its printed curl command claims a voucher; the demo's
//! approximate county seats lie inside their own counties.

mod support;

use std::path::Path;

use support::*;
use voucherd::geo::{PolygonIndex, parse_feature_collection};

fn refused(dir: &Path, text: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).expect("write config");
    let (code, stderr) = run_expecting_exit(&path);
    assert_eq!(code, Some(64), "a bad config exits 64; stderr:\n{stderr}");
    assert!(
        stderr.contains("bad.toml"),
        "errors name the file:\n{stderr}"
    );
    stderr
}

#[test]
fn bad_configs_exit_64_naming_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TestConfig::default().to_toml(&dir.path().join("data"));

    let stderr = refused(dir.path(), &format!("{good}\n[surprise]\nkey = 1\n"));
    assert!(stderr.contains("surprise"), "{stderr}");

    let broken = good
        .replace("max_connections = 1000", "max_connections = 0")
        .replace(
            "public_listen = \"127.0.0.1:0\"",
            "public_listen = \"localhost-ish\"",
        )
        + r#"
[[tranches]]
id = "t1"
campaign_id = "nope"
opens_at = "now+1h"
closes_at = "now"
expires_at = "tomorrow"
face_value_fen = 0
quotas = { "420502" = 10, "999999" = 5 }
"#;
    let stderr = refused(dir.path(), &broken);
    for key in [
        "server.max_connections",
        "server.public_listen",
        "tranches[0].campaign_id",
        "tranches[0].expires_at",
        "tranches[0].quotas.999999",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }

    let ordering = good.clone()
        + r#"
[[tranches]]
id = "t1"
campaign_id = "c1"
opens_at = "now+1h"
closes_at = "now"
expires_at = "now"
face_value_fen = 2000
threshold_fen = 100
quotas = { "420502" = 10 }
"#;
    let stderr = refused(dir.path(), &ordering);
    for key in ["tranches[0].closes_at", "tranches[0].threshold_fen"] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }

    let stderr = refused(
        dir.path(),
        &good.replacen(
            "[regions]",
            "presize_budget_vouchers = 100000000000\n\n[regions]",
            1,
        ),
    );
    assert!(
        stderr.contains("storage.presize_budget_vouchers"),
        "{stderr}"
    );

    let stderr = refused(
        dir.path(),
        &good.replace("VOUCHERD_TEST_ADMIN_TOKEN", "VOUCHERD_UNSET_VARIABLE"),
    );
    assert!(
        stderr.contains("admin.token_env") && stderr.contains("VOUCHERD_UNSET_VARIABLE"),
        "{stderr}"
    );
    assert!(!stderr.contains(ADMIN_TOKEN), "the token is never printed");

    let stderr = refused(
        dir.path(),
        &good.replace(
            &geojson_path().display().to_string(),
            "/nonexistent/regions.geojson",
        ),
    );
    assert!(stderr.contains("regions.geojson_path"), "{stderr}");
}

/// A tranche section for campaign `c1` with the given times.
fn tranche_with_times(opens_at: &str, closes_at: &str, expires_at: &str) -> String {
    format!(
        r#"
[[tranches]]
id = "t1"
campaign_id = "c1"
opens_at = "{opens_at}"
closes_at = "{closes_at}"
expires_at = "{expires_at}"
face_value_fen = 2000
quotas = {{ "420502" = 10 }}
"#
    )
}

/// `now+5秒` panicked (the unit was split off as the last byte, inside 秒) and the daemon
/// aborted instead of exiting 64; `now+-5s` and `now++5s` were taken as signed numbers.
#[test]
fn malformed_relative_times_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TestConfig::default().to_toml(&dir.path().join("data"));
    let stderr = refused(
        dir.path(),
        &(good + &tranche_with_times("now+5秒", "now++5s", "now+-5s")),
    );
    for key in [
        "tranches[0].opens_at",
        "tranches[0].closes_at",
        "tranches[0].expires_at",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `9999-12-31T23:59:59Z` (year 10000 in Beijing time) was accepted and then written as
/// `+10000-…`, which is not RFC 3339; config times are held to the admin API's years.
#[test]
fn times_outside_the_accepted_years_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TestConfig::default().to_toml(&dir.path().join("data"));
    let stderr = refused(
        dir.path(),
        &(good + &tranche_with_times("1999-12-31T15:59:59Z", "now+1h", "9999-12-31T23:59:59Z")),
    );
    for key in ["tranches[0].opens_at", "tranches[0].expires_at"] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    assert!(stderr.contains("2000 to 2099"), "{stderr}");
    assert!(!stderr.contains("tranches[0].closes_at"), "{stderr}");
}

/// The admin API refuses a budget over 10¹² fen; the config took any `u64`.
#[test]
fn campaign_budget_over_the_api_limit_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TestConfig::default().to_toml(&dir.path().join("data"));
    assert!(good.contains("budget_fen = 100000000000\n"), "{good}");
    let stderr = refused(
        dir.path(),
        &good.replace(
            "budget_fen = 100000000000\n",
            "budget_fen = 1000000000001\n",
        ),
    );
    assert!(
        stderr.contains("campaigns[0].budget_fen") && stderr.contains("1000000000000"),
        "{stderr}"
    );
}

/// The demo, copied to a fresh directory with its tranche opening at once and
/// ports chosen by the kernel: the curl command it prints must claim a voucher.
#[test]
fn demo_config_runs_and_its_curl_command_claims() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = dir.path().join("examples");
    std::fs::create_dir_all(&examples).expect("mkdir");
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/yichang-demo.toml"),
    )
    .expect("read demo");
    assert!(
        demo.contains("opens_at = \"now+5s\""),
        "the demo opens a few seconds after start"
    );
    let copy = demo
        .replace("opens_at = \"now+5s\"", "opens_at = \"now\"")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    let path = examples.join("yichang-demo.toml");
    std::fs::write(&path, copy).expect("write demo copy");
    let mut daemon = start_with_config_file(dir.path(), &path);
    let _ = daemon.wait_for_line("try it");
    let curl = daemon.wait_for_line("  curl -s -X POST");
    let body = curl
        .split("-d '")
        .nth(1)
        .and_then(|b| b.strip_suffix('\''))
        .expect("a -d body");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL");
    assert!(
        url.contains(&daemon.public.to_string()) && url.ends_with("/v1/claims"),
        "{url}"
    );
    let body: serde_json::Value = serde_json::from_str(body).expect("the printed body is JSON");
    let reply = daemon.client().claim(&body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(
        dir.path().join("target/voucherd-demo/admin.token").exists(),
        "the admin token file is created"
    );
}

/// The demo's rounded seats must fall inside their own counties on the real map.
#[test]
fn demo_seats_lie_in_their_own_counties() {
    let demo: toml::Value = toml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/yichang-demo.toml"),
        )
        .expect("read"),
    )
    .expect("demo is TOML");
    let shapes = parse_feature_collection(&std::fs::read(geojson_path()).expect("boundaries"))
        .expect("parse");
    let index = PolygonIndex::build(&shapes).expect("index");
    let counties = demo["counties"].as_array().expect("counties");
    assert_eq!(counties.len(), 13);
    for county in counties {
        let code = county["adcode"].as_integer().expect("adcode") as u32;
        let seat = county["seat"].as_array().expect("seat");
        let (lng, lat) = (
            seat[0].as_float().expect("lng"),
            seat[1].as_float().expect("lat"),
        );
        assert_eq!(
            index.locate(lng, lat),
            Some(code),
            "seat of {code} at {lng},{lat}"
        );
    }
}

#[test]
fn merchant_lists_must_be_non_empty_unique_and_well_formed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TestConfig::default().to_toml(&dir.path().join("data"));
    let stderr = refused(
        dir.path(),
        &format!(
            "{good}\n[merchants]\nindustries = [\"餐饮\", \" 零售\", \"餐饮\"]\nplatforms = []\n"
        ),
    );
    for key in [
        "merchants.industries[1]",
        "merchants.industries[2]",
        "merchants.platforms",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    let stderr = refused(
        dir.path(),
        &format!("{good}\n[merchants]\nplatforms = [\"ali pay\"]\nbanks = []\n"),
    );
    assert!(stderr.contains("banks"), "{stderr}");
    let stderr = refused(
        dir.path(),
        &format!("{good}\n[merchants]\nplatforms = [\"ali pay\"]\n"),
    );
    assert!(stderr.contains("merchants.platforms[0]"), "{stderr}");
}

/// The config seeds what the records lack; it never overrides them. A campaign raised through
/// the admin API and then used keeps its recorded budget across a restart (found by review:
/// each start re-applied the configured budget, which was refused as below what was
/// released, so every start exited 65), and a configured campaign that differs is logged.
#[test]
fn the_records_not_the_config_hold_a_campaign_once_it_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default(); // [[campaigns]] c1, budget_fen = 100000000000
    let daemon = start(dir.path(), &config);
    let mut a = daemon.admin_client();
    let r = a.put_admin(
        "/admin/v1/campaigns/c1",
        &serde_json::json!({"name": "test campaign", "budget_fen": 200_000_000_000u64}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Use it: a tranche releasing 1.5e11 fen, more than the configured 1e11.
    let mut body = open_tranche_body(&[(420502, 1_500)]);
    body["face_value_fen"] = serde_json::json!(100_000_000u64);
    body["threshold_fen"] = serde_json::json!(0);
    daemon.create_tranche("t1", &body);
    daemon.kill();

    let daemon = start_with_config_file(dir.path(), &dir.path().join("voucherd.toml"));
    let r = daemon
        .admin_client()
        .get_admin("/admin/v1/campaigns/c1/ledger");
    assert_eq!(
        r.json()["ledger"]["budget_fen"],
        serde_json::json!(200_000_000_000u64),
        "{}",
        r.text()
    );
    let log = daemon.stderr_text();
    assert!(
        log.contains("configured campaign differs from the recorded one"),
        "{log}"
    );
}
