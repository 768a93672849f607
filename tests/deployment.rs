//! The deployment files against the real tools: `systemd/voucherd.service` passes
//! `systemd-analyze verify` and restarts exactly on the exit codes a restart can fix, and
//! every query of `grafana/voucherd.json` returns data from a real Prometheus scraping the
//! real binary over loopback.

mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The values of `key=` lines in a unit file (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

#[test]
fn the_systemd_unit_verifies_and_restarts_what_a_restart_can_fix() {
    let unit = std::fs::read_to_string(repo_file("systemd/voucherd.service")).expect("unit");
    // It runs `serve` on a config file, and restarts after any failure but the two that
    // need an operator: a bad config and damaged data.
    let exec = unit_value(&unit, "ExecStart").expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args.get(1..3), Some(&["serve", "--config"][..]), "{exec}");
    assert_eq!(unit_value(&unit, "Restart").as_deref(), Some("on-failure"));
    let prevented: BTreeSet<i32> = unit_value(&unit, "RestartPreventExitStatus")
        .expect("RestartPreventExitStatus")
        .split_whitespace()
        .map(|c| c.parse().expect("an exit code"))
        .collect();
    assert_eq!(
        prevented,
        BTreeSet::from([
            voucherd::config::EXIT_BAD_CONFIG,
            voucherd::daemon::EXIT_DATA_ERROR
        ]),
        "only a bad config and damaged data wait for an operator"
    );
    assert!(!prevented.contains(&voucherd::wal::WAL_FATAL_EXIT_CODE));
    // The binary exits with the code the unit expects for a bad config.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nmax_connections = 0\n").expect("write");
    let (code, _) = run_expecting_exit(&bad);
    assert_eq!(code, Some(voucherd::config::EXIT_BAD_CONFIG));

    // systemd's own check of every directive, on a copy that runs the binary just built.
    let copy = dir.path().join("voucherd.service");
    let binary = env!("CARGO_BIN_EXE_voucherd");
    std::fs::write(&copy, unit.replace(args[0], binary)).expect("write unit");
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze must be installed (Debian package systemd); .ci/run and scripts/test install it");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // It exits 0 on unknown keys and bad values too, and names the file for each.
    let findings: Vec<&str> = said.lines().filter(|l| l.contains("voucherd")).collect();
    assert!(
        verified.status.success() && findings.is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// A port nobody listens on right now, for Prometheus (which cannot report one it chose).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: voucherd\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus must be installed (Debian package prometheus); .ci/run and scripts/test install it");
    Prometheus { child, addr }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How many series `expr` returns now; `None` while Prometheus is not answering yet.
/// Asks for `count(...)`, so the answer stays small whatever the query.
fn series(prometheus: &Prometheus, expr: &str) -> Option<u64> {
    let path = format!(
        "/api/v1/query?query={}",
        percent_encode(&format!("count({expr})"))
    );
    let reply = Client::new(prometheus.addr).try_request("GET", &path, b"")?;
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    assert_eq!(body["status"], "success", "{expr}: {body}");
    match body["data"]["result"].as_array()?.first() {
        None => Some(0),
        Some(sample) => sample["value"][1].as_str()?.parse().ok(),
    }
}

/// Every query of every panel, with Grafana's variables as this test sets them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("grafana/voucherd.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "20s")
                .replace("$tranche", ".*");
            assert!(
                !expr.contains('$'),
                "a variable this test does not set: {expr}"
            );
            queries.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr));
        }
    }
    queries
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig {
        checkpoint_every_records: 1,
        checkpoint_check_interval_ms: 10,
        ..TestConfig::default()
    };
    let daemon = start(dir.path(), &config);
    let prometheus = start_prometheus(dir.path(), daemon.public);

    // Something of everything the dashboard shows: claims of several outcomes in two
    // tranches, a merchant import, a snapshot.
    daemon.create_tranche("t1", &open_tranche_body(&[(420502, 3), (420506, 5)]));
    daemon.create_tranche("t2", &open_tranche_body(&[(420502, 2)]));
    let (_, lng, lat) = county_points()
        .into_iter()
        .find(|(c, _, _)| *c == 420502)
        .expect("county");
    let mut client = daemon.client();
    for user in 0..5 {
        let reply = client.claim(&claim_body(
            "t1",
            &format!("u{user}"),
            &format!("r{user}"),
            lng,
            lat,
        ));
        assert!([201, 410].contains(&reply.status), "{}", reply.text());
    }
    let again = client.claim(&claim_body("t1", "u0", "again", lng, lat));
    assert_eq!(again.status, 409, "{}", again.text());
    let csv = "merchant_id,name,county,industry,platform\nm-1,西陵小吃,420502,餐饮,alipay\n";
    let imported = daemon
        .admin_client()
        .post_csv("/admin/v1/merchants:import", csv.as_bytes());
    assert_eq!(imported.status, 200, "{}", imported.text());

    // Each query returns at least one series once Prometheus has scraped a few times.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut waiting: Vec<(String, String)> = queries;
    let mut rounds = 0;
    while !waiting.is_empty() {
        rounds += 1;
        // Keep the counters moving, so rates over the window are not all zero-length.
        let reply = client.claim(&claim_body(
            "t2",
            &format!("w{rounds}"),
            &format!("w{rounds}"),
            lng,
            lat,
        ));
        assert!([201, 410].contains(&reply.status), "{}", reply.text());
        waiting.retain(|(_, expr)| series(&prometheus, expr).unwrap_or(0) == 0);
        if !waiting.is_empty() {
            assert!(
                Instant::now() < deadline,
                "queries without data after 60 s (prometheus log in {}):\n{}",
                dir.path().display(),
                waiting
                    .iter()
                    .map(|(title, expr)| format!("  {title}: {expr}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    println!("all dashboard queries returned data after {rounds} rounds");
}

/// A second daemon on a data directory in use exits 75, a code the unit restarts on (the
/// first may be about to stop), not 65, which waits for an operator: nothing is damaged.
#[test]
fn a_second_daemon_on_the_same_data_exits_for_a_restart_not_for_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let (code, stderr) = run_expecting_exit(&dir.path().join("voucherd.toml"));
    assert_eq!(
        code,
        Some(voucherd::daemon::EXIT_TEMPORARY_FAILURE),
        "{stderr}"
    );
    assert!(
        stderr.contains("another process has this WAL open"),
        "{stderr}"
    );
    drop(daemon);
}
