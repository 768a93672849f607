//! The merchant registry through the real binary: CSV import (clean, bad
//! rows, dry run, retries), get, suspend and resume, filtered pagination,
//! counts, admin auth, and survival across kill -9 and snapshots.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use voucherd::snapshot;

const IMPORT: &str = "/admin/v1/merchants:import";
const HEADER: &str = "merchant_id,name,county,industry,platform\n";
const INDUSTRIES: [&str; 7] = ["餐饮", "零售", "商超", "家电", "汽车", "文旅", "其他"];
const PLATFORMS: [&str; 4] = ["alipay", "wechat", "unionpay", "meituan"];

/// Merchant `i`: spread over the counties, industries and platforms.
fn merchant_line(i: usize) -> String {
    format!(
        "m-{i:06},\"宜昌商户 {i}, 第{i}号\",{},{},{}\n",
        COUNTIES[i % COUNTIES.len()].0,
        INDUSTRIES[i % INDUSTRIES.len()],
        PLATFORMS[i % PLATFORMS.len()]
    )
}

fn csv_of(range: std::ops::Range<usize>) -> Vec<u8> {
    let mut text = String::from(HEADER);
    for i in range {
        text.push_str(&merchant_line(i));
    }
    text.into_bytes()
}

fn import(daemon: &Daemon, csv: &[u8]) -> Value {
    let reply = daemon.admin_client().post_csv(IMPORT, csv);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn counts(daemon: &Daemon) -> Value {
    let reply = daemon
        .admin_client()
        .get_admin("/admin/v1/merchants:counts");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn merchant(daemon: &Daemon, id: &str) -> Value {
    let reply = daemon
        .admin_client()
        .get_admin(&format!("/admin/v1/merchants/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["merchant"].clone()
}

/// Every merchant matching `query`, following `next_page_token`; also the page count.
fn walk(daemon: &Daemon, query: &str) -> (Vec<Value>, usize) {
    let mut client = daemon.admin_client();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/admin/v1/merchants?{query}");
        if let Some(t) = &token {
            path.push_str(&format!("&page_token={t}"));
        }
        let reply = client.get_admin(&path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let page = reply.json();
        pages += 1;
        out.extend(page["merchants"].as_array().expect("merchants").clone());
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return (out, pages),
        }
    }
}

/// (line, field) of every listed error.
fn error_places(body: &Value) -> Vec<(u64, String)> {
    body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().expect("line"),
                e["field"].as_str().expect("field").to_owned(),
            )
        })
        .collect()
}

#[test]
fn clean_import_then_get_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let body = import(&daemon, &csv_of(0..91));
    assert_eq!(body["outcome"], "imported");
    assert_eq!(
        (body["created"].as_u64(), body["rows"].as_u64()),
        (Some(91), Some(91))
    );
    assert_eq!(body["unchanged"], 0);

    let m = merchant(&daemon, "m-000014");
    assert_eq!(m["name"], "宜昌商户 14, 第14号", "quoted comma kept");
    assert_eq!(m["county"], COUNTIES[1].0.to_string());
    assert_eq!(m["county_name"], COUNTIES[1].1);
    assert_eq!(m["industry"], INDUSTRIES[0]);
    assert_eq!(m["platform"], PLATFORMS[2]);
    assert_eq!(m["status"], "active");
    let missing = daemon
        .admin_client()
        .get_admin("/admin/v1/merchants/m-999999");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["outcome"], "unknown_merchant");
    let bad = daemon
        .admin_client()
        .get_admin("/admin/v1/merchants/bad%20id");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "merchant_id");

    // 91 = 13 counties × 7 industries: i mod 13 and i mod 7 cover each cell once.
    let c = counts(&daemon);
    assert_eq!(
        (c["total"].as_u64(), c["active"].as_u64()),
        (Some(91), Some(91))
    );
    assert_eq!(c["industries"].as_array().expect("industries").len(), 7);
    let counties = c["counties"].as_array().expect("counties");
    assert_eq!(counties.len(), 13);
    for county in counties {
        assert_eq!(county["total"], 7, "{county}");
        assert!(!county["name"].as_str().expect("name").is_empty());
        let cells = county["industries"].as_array().expect("cells");
        assert_eq!(cells.len(), 7);
        assert!(
            cells
                .iter()
                .all(|cell| cell["active"] == 1 && cell["suspended"] == 0)
        );
    }

    let metrics = daemon.client().get("/metrics").text();
    assert!(
        metrics.contains("voucherd_merchants{status=\"active\"} 91"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voucherd_merchant_import_rows_total{result=\"created\"} 91"),
        "{metrics}"
    );
}

#[test]
fn bad_rows_import_nothing_and_each_error_has_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let mut csv = HEADER.as_bytes().to_vec();
    csv.extend_from_slice(merchant_line(1).as_bytes()); // line 2: fine
    csv.extend_from_slice("m-a,Shop A,420599,餐饮,alipay\n".as_bytes()); // 3: unknown county
    csv.extend_from_slice("m-b,Shop B,420502,饮食,alipay\n".as_bytes()); // 4: unknown industry
    csv.extend_from_slice("m-000001,Again,420502,餐饮,alipay\n".as_bytes()); // 5: duplicate of 2
    csv.extend_from_slice(b"m-c,Shop C,420502\n"); // 6: industry, platform missing
    csv.extend_from_slice(b"m-d,\xB2\xCD\xD2\xFB,420502,x,alipay\n"); // 7: GBK name
    csv.extend_from_slice("m-e,Shop E,420502,零售,paypal\n".as_bytes()); // 8: unknown platform
    csv.extend_from_slice(merchant_line(9).as_bytes()); // 9: fine
    let reply = daemon.admin_client().post_csv(IMPORT, &csv);
    assert_eq!(reply.status, 422, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["outcome"], "invalid_csv");
    assert_eq!(
        error_places(&body),
        vec![
            (3, "county".into()),
            (4, "industry".into()),
            (5, "merchant_id".into()),
            (6, "industry".into()),
            (6, "platform".into()),
            (7, "name".into()),
            (8, "platform".into()),
        ]
    );
    assert_eq!(body["error_count"], 7);
    assert_eq!(body["errors_truncated"], false);
    assert_eq!(body["error"]["line"], 3);
    let reasons: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["reason"].as_str().expect("reason"))
        .collect();
    assert!(reasons[2].contains("first on line 2"), "{}", reasons[2]);
    assert!(reasons[5].contains("UTF-8"), "{}", reasons[5]);
    assert_eq!(
        counts(&daemon)["total"],
        0,
        "a file with bad rows imports nothing"
    );
    let absent = daemon
        .admin_client()
        .get_admin("/admin/v1/merchants/m-000001");
    assert_eq!(absent.status, 404);

    // A wrong header is reported on line 1 and no row is read.
    let wrong = b"merchant_id,name,county,trade,platform\nm1,a,420502,x,alipay\n";
    let reply = daemon.admin_client().post_csv(IMPORT, wrong);
    assert_eq!(reply.status, 422);
    assert_eq!(
        error_places(&reply.json()),
        vec![(1, "header".into()), (1, "header".into())]
    );
    // Not CSV at all.
    let json = daemon.admin_client().request(
        "POST",
        IMPORT,
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        Some(b"{}"),
    );
    assert_eq!(json.status, 415, "{}", json.text());
    assert_eq!(counts(&daemon)["total"], 0);
}

#[test]
fn dry_run_validates_without_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let mut client = daemon.admin_client();
    let dry = client.post_csv(&format!("{IMPORT}?dry_run=true"), &csv_of(0..20));
    assert_eq!(dry.status, 200, "{}", dry.text());
    let body = dry.json();
    assert_eq!(body["outcome"], "validated");
    assert_eq!(
        (body["created"].as_u64(), body["rows"].as_u64()),
        (Some(20), Some(20))
    );
    assert_eq!(counts(&daemon)["total"], 0);
    import(&daemon, &csv_of(0..10));
    let dry = client.post_csv(&format!("{IMPORT}?dry_run=true"), &csv_of(0..20));
    let body = dry.json();
    assert_eq!(
        (body["created"].as_u64(), body["unchanged"].as_u64()),
        (Some(10), Some(10))
    );
    let mut bad = csv_of(0..3);
    bad.extend_from_slice(b"m-x,n,420502,nope,alipay\n");
    let dry = client.post_csv(&format!("{IMPORT}?dry_run=true"), &bad);
    assert_eq!(dry.status, 422);
    assert_eq!(error_places(&dry.json()), vec![(5, "industry".into())]);
    let odd = client.post_csv(&format!("{IMPORT}?dry_run=yes"), &bad);
    assert_eq!(odd.status, 400);
    assert_eq!(odd.json()["error"]["field"], "dry_run");
    assert_eq!(counts(&daemon)["total"], 10);
}

#[test]
fn reimport_is_idempotent_and_a_changed_row_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    import(&daemon, &csv_of(0..50));
    let again = import(&daemon, &csv_of(0..60));
    assert_eq!(
        (again["created"].as_u64(), again["unchanged"].as_u64()),
        (Some(10), Some(50))
    );
    let mut changed = csv_of(60..61);
    changed.extend_from_slice("m-000003,改名的店,420502,餐饮,alipay\n".as_bytes());
    let reply = daemon.admin_client().post_csv(IMPORT, &changed);
    assert_eq!(reply.status, 422);
    let body = reply.json();
    assert_eq!(error_places(&body), vec![(3, "merchant_id".into())]);
    let reason = body["errors"][0]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("exists with different fields"),
        "{reason}"
    );
    assert_eq!(counts(&daemon)["total"], 60);
}

#[test]
fn suspend_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    import(&daemon, &csv_of(0..5));
    let mut admin = daemon.admin_client();
    let reply = admin.post_admin("/admin/v1/merchants/m-000002/suspend");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["outcome"], "suspended");
    assert_eq!(reply.json()["merchant"]["status"], "suspended");
    let again = admin.post_admin("/admin/v1/merchants/m-000002/suspend");
    assert_eq!(
        (again.status, again.json()["outcome"].clone()),
        (200, "suspended".into())
    );
    assert_eq!(merchant(&daemon, "m-000002")["status"], "suspended");
    let c = counts(&daemon);
    assert_eq!(
        (c["active"].as_u64(), c["suspended"].as_u64()),
        (Some(4), Some(1))
    );
    // A retried import without a status column still matches the suspended merchant.
    assert_eq!(import(&daemon, &csv_of(0..5))["unchanged"], 5);
    let reply = admin.post_admin("/admin/v1/merchants/m-000002/resume");
    assert_eq!(reply.json()["outcome"], "resumed");
    assert_eq!(merchant(&daemon, "m-000002")["status"], "active");
    assert_eq!(
        admin.post_admin("/admin/v1/merchants/ghost/suspend").status,
        404
    );
    assert_eq!(
        admin
            .get_admin("/admin/v1/merchants/m-000002/suspend")
            .status,
        405
    );
}

#[test]
fn list_filters_and_walks_every_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let mut csv = String::from("status,merchant_id,name,county,industry,platform\n");
    for i in 0..300 {
        let status = if i % 3 == 0 { "suspended" } else { "" };
        let line = merchant_line(i);
        csv.push_str(&format!("{status},{line}"));
    }
    import(&daemon, csv.as_bytes());

    let (all, pages) = walk(&daemon, "page_size=7");
    assert_eq!(all.len(), 300);
    assert_eq!(pages, 43, "300 merchants in pages of 7");
    let ids: Vec<&str> = all
        .iter()
        .map(|m| m["merchant_id"].as_str().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "stable merchant_id order, no repeats"
    );

    let county = COUNTIES[4].0;
    let query = format!("county={county}&industry=%E9%A4%90%E9%A5%AE&status=suspended&page_size=2");
    let (some, _) = walk(&daemon, &query);
    let expected: Vec<String> = (0..300)
        .filter(|i| i % 13 == 4 && i % 7 == 0 && i % 3 == 0)
        .map(|i| format!("m-{i:06}"))
        .collect();
    let got: Vec<String> = some
        .iter()
        .map(|m| m["merchant_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got, expected);
    assert!(!expected.is_empty());
    let (wechat, _) = walk(&daemon, "platform=wechat&page_size=1000");
    assert_eq!(wechat.len(), 75);

    let mut admin = daemon.admin_client();
    for (query, field) in [
        ("county=42", "county"),
        ("status=open", "status"),
        ("page_size=5000", "page_size"),
        ("colour=red", "colour"),
    ] {
        let reply = admin.get_admin(&format!("/admin/v1/merchants?{query}"));
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.json()["error"]["field"], field, "{query}");
    }
}

#[test]
fn merchant_routes_need_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let mut admin = daemon.admin_client();
    let wrong = [("authorization", "Bearer not-the-token")];
    for (method, path) in [
        ("POST", IMPORT),
        ("GET", "/admin/v1/merchants"),
        ("GET", "/admin/v1/merchants:counts"),
        ("GET", "/admin/v1/merchants/m1"),
        ("POST", "/admin/v1/merchants/m1/suspend"),
        ("POST", "/admin/v1/merchants/m1/resume"),
    ] {
        let body = (method == "POST").then_some(HEADER.as_bytes());
        let reply = admin.request(method, path, &[], body);
        assert_eq!(reply.status, 401, "{method} {path}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert_eq!(admin.request(method, path, &wrong, body).status, 401);
        // Not on the public listener at all.
        assert_eq!(daemon.client().request(method, path, &[], body).status, 404);
    }
}

#[test]
fn import_body_limit_is_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    // Far over server.max_body_bytes (8 KiB) but within the import limit.
    let csv = csv_of(0..2_000);
    assert!(csv.len() > 64 * 1024);
    assert_eq!(import(&daemon, &csv)["created"], 2_000);
    // Over the import limit: refused from the declared length, body unread.
    let mut stream = TcpStream::connect(daemon.admin).expect("connect");
    stream.set_read_timeout(Some(IO_DEADLINE)).expect("timeout");
    let declared = voucherd::api::MAX_IMPORT_BODY_BYTES + 1;
    write!(
        stream,
        "POST {IMPORT} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: text/csv\r\ncontent-length: {declared}\r\n\r\n"
    )
    .expect("write");
    let reply = read_reply(&mut std::io::BufReader::new(stream)).expect("a reply");
    assert_eq!(reply.status, 413, "{}", reply.text());
}

#[test]
fn a_full_import_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig::default();
    let daemon = start(dir.path(), &config);
    let rows = voucherd::core::merchant::MAX_IMPORT_ROWS;
    let body = import(&daemon, &csv_of(0..rows));
    assert_eq!(body["created"].as_u64(), Some(rows as u64));
    for id in ["m-000007", "m-099998"] {
        let reply = daemon
            .admin_client()
            .post_admin(&format!("/admin/v1/merchants/{id}/suspend"));
        assert_eq!(reply.status, 200);
    }
    let before = counts(&daemon);
    daemon.kill();

    let daemon = start(dir.path(), &config);
    assert_eq!(counts(&daemon), before);
    assert_eq!(before["total"].as_u64(), Some(rows as u64));
    assert_eq!(before["suspended"], 2);
    assert_eq!(merchant(&daemon, "m-099998")["status"], "suspended");
    assert_eq!(
        merchant(&daemon, "m-050000")["county"],
        COUNTIES[50_000 % 13].0.to_string()
    );
    assert_eq!(import(&daemon, &csv_of(0..10))["unchanged"], 10);
}

fn newest_snapshot(dir: &Path) -> Option<u64> {
    snapshot::list(&snapshot::directory(&dir.join("data")))
        .expect("list snapshots")
        .first()
        .map(|(seq, _)| *seq)
}

#[test]
fn merchants_survive_a_snapshot_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig {
        checkpoint_every_records: 5,
        checkpoint_check_interval_ms: 10,
        ..TestConfig::default()
    };
    let daemon = start(dir.path(), &config);
    // 20,000 merchants: dozens of WAL records, so a snapshot is due.
    import(&daemon, &csv_of(0..20_000));
    let mut admin = daemon.admin_client();
    assert_eq!(
        admin
            .post_admin("/admin/v1/merchants/m-000100/suspend")
            .status,
        200
    );
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while newest_snapshot(dir.path()).is_none() {
        assert!(Instant::now() < deadline, "no snapshot was written");
        std::thread::sleep(Duration::from_millis(10));
    }
    // After the snapshot, more changes that only the WAL tail holds.
    assert_eq!(
        admin
            .post_admin("/admin/v1/merchants/m-000101/suspend")
            .status,
        200
    );
    import(&daemon, &csv_of(20_000..20_010));
    let before = counts(&daemon);
    daemon.kill();

    let daemon = start(dir.path(), &config);
    let log = daemon.stderr_text();
    assert!(log.contains("snapshot loaded"), "{log}");
    assert_eq!(counts(&daemon), before);
    assert_eq!(before["total"], 20_010);
    assert_eq!(before["suspended"], 2);
    assert_eq!(merchant(&daemon, "m-000100")["status"], "suspended");
    assert_eq!(merchant(&daemon, "m-000101")["status"], "suspended");
    assert_eq!(merchant(&daemon, "m-020009")["status"], "active");
}
