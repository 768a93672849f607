//! The loadtest tool against the real `voucherd` binary on loopback, plus its
//! verification step fed with fabricated tranche views that break each money
//! invariant. Bounded (a few thousand requests, deadlines on every wait) and
//! seeded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loadtest::verify::{Win, verify};
use serde_json::{Value, json};

const TOKEN: &str = "loadtest-test-token-0123456789abcdef";
const TOKEN_ENV: &str = "LOADTEST_TEST_ADMIN_TOKEN";
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn geojson() -> PathBuf {
    std::env::var_os("VOUCHERD_YICHANG_GEOJSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data/yichang-420500.geojson"))
}

/// `target/<profile>/voucherd`, next to this test's own directory. `cargo test
/// --workspace` builds it (voucherd's own tests need it); when only this
/// package is tested and it is missing, it is built here.
fn voucherd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("voucherd");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "voucherd", "--bin", "voucherd"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building voucherd failed");
    }
    bin
}

struct Daemon {
    child: Child,
    public: String,
    admin: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_voucherd(dir: &Path) -> (Daemon, PathBuf) {
    let mut config = format!(
        r#"[server]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_connections = 2000
[admin]
token_env = "{TOKEN_ENV}"
[storage]
data_dir = "{}"
segment_size_bytes = 8388608
[regions]
source = "geojson"
geojson_path = "{}"
"#,
        dir.join("data").display(),
        geojson().display()
    );
    let bytes = std::fs::read(geojson()).expect("the Yichang boundary file is readable");
    for shape in voucherd::geo::parse_feature_collection(&bytes).expect("boundaries") {
        config.push_str(&format!(
            "\n[[counties]]\nadcode = {}\nname = \"{}\"\n",
            shape.adcode, shape.name
        ));
    }
    let path = dir.join("voucherd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(voucherd_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env(TOKEN_ENV, TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn voucherd");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut daemon = Daemon {
        child,
        public: String::new(),
        admin: String::new(),
    };
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("voucherd starts in time");
        if line.starts_with("voucherd listening") {
            for part in line.split_whitespace() {
                if let Some(a) = part.strip_prefix("public=") {
                    daemon.public = a.to_owned();
                }
                if let Some(a) = part.strip_prefix("admin=") {
                    daemon.admin = a.to_owned();
                }
            }
        }
        if line.starts_with("voucherd ready") {
            break;
        }
    }
    (daemon, path)
}

/// Runs the loadtest binary; returns its exit code and stdout.
fn loadtest(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env(TOKEN_ENV, TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadtest");
    let deadline = Instant::now() + RUN_DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadtest ran past {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    (output.status.code(), stdout)
}

fn only_file(dir: &Path, prefix: &str, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(ext)
        })
        .collect();
    assert_eq!(found.len(), 1, "one {prefix}*{ext} in {}", dir.display());
    found[0].clone()
}

#[test]
fn burst_with_bots_against_the_real_binary_verifies_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, config) = start_voucherd(dir.path());
    let out = dir.path().join("out");
    let (code, stdout) = loadtest(&[
        "burst",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--public",
        &daemon.public,
        "--admin",
        &daemon.admin,
        "--admin-token-env",
        TOKEN_ENV,
        "--people",
        "3000",
        "--quota",
        "1000",
        "--connections",
        "32",
        "--lead-ms",
        "1500",
        "--bot-share",
        "0.02",
        "--bot-connections",
        "3",
        "--bot-max-attempts",
        "50",
        "--seed",
        "7",
        "--deadline-ms",
        "60000",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(0), "burst failed:\n{stdout}");
    assert!(stdout.contains("verification OK"), "{stdout}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(only_file(&out, "burst-", ".json")).expect("read JSON"),
    )
    .expect("JSON result");
    assert_eq!(report["verification"]["ok"], true);
    assert_eq!(report["quota"], 1000);
    let claimed = report["outcomes_people"]["claimed"].as_u64().unwrap_or(0)
        + report["outcomes_bots"]["claimed"].as_u64().unwrap_or(0);
    assert_eq!(claimed, 1000, "3,000 people for 1,000 vouchers: all issued");
    assert!(report["sold_out_ms"].as_f64().is_some());
    assert!(report["bots"].as_u64().expect("bots") > 0);
    assert!(
        report["outcomes_bots"]["not_open"].as_u64().unwrap_or(0) > 0,
        "bots fire before t0 and are refused until it"
    );
    let svg = std::fs::read_to_string(only_file(&out, "burst-", ".svg")).expect("chart");
    assert!(svg.starts_with("<svg") && svg.contains("seconds after t0"));

    // The same server, open loop: every request answered, on schedule.
    let (code, stdout) = loadtest(&[
        "rate",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--public",
        &daemon.public,
        "--admin",
        &daemon.admin,
        "--admin-token-env",
        TOKEN_ENV,
        "--rate",
        "400",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0.2",
        "--connections",
        "16",
        "--quota-per-county",
        "5000",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(0), "rate failed:\n{stdout}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(only_file(&out, "rate-", ".json")).expect("read JSON"),
    )
    .expect("JSON result");
    let claimed = report["result"]["outcomes"]["claimed"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (300..=500).contains(&claimed),
        "about 400 claims in the measured second, got {claimed}"
    );
}

fn view(counties: &[(&str, u64, i64)]) -> Value {
    json!({
        "tranche_id": "t",
        "quota": counties.iter().map(|c| c.1).sum::<u64>(),
        "remaining": counties.iter().map(|c| c.2).sum::<i64>(),
        "counties": counties.iter().map(|(c, q, r)| json!({"county": c, "quota": q, "remaining": r})).collect::<Vec<_>>(),
    })
}

fn wins(list: &[(u32, &str, &str)]) -> Vec<Win> {
    list.iter()
        .map(|(identity, voucher, county)| Win {
            identity: *identity,
            voucher_id: (*voucher).to_owned(),
            county: (*county).to_owned(),
        })
        .collect()
}

/// (name, view, wins, defined quotas, unanswered, expected violation substring or None)
type Case = (
    &'static str,
    Value,
    Vec<Win>,
    Vec<(u32, u64)>,
    u64,
    Option<&'static str>,
);

#[test]
fn verification_detects_each_injected_violation() {
    let defined = vec![(420502, 2), (420503, 1)];
    let clean = wins(&[
        (1, "v1", "420502"),
        (2, "v2", "420502"),
        (3, "v3", "420503"),
    ]);
    let cases: Vec<Case> = vec![
        (
            "clean sell-out",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            clean.clone(),
            defined.clone(),
            0,
            None,
        ),
        (
            "over-issue: three 201s against a quota of two",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[
                (1, "v1", "420502"),
                (2, "v2", "420502"),
                (4, "v4", "420502"),
                (3, "v3", "420503"),
            ]),
            defined.clone(),
            0,
            Some("over-issue"),
        ),
        (
            "an identity answered 201 twice",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[
                (1, "v1", "420502"),
                (1, "v2", "420502"),
                (3, "v3", "420503"),
            ]),
            defined.clone(),
            0,
            Some("second 201"),
        ),
        (
            "one voucher ID given twice",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[
                (1, "v1", "420502"),
                (2, "v1", "420502"),
                (3, "v3", "420503"),
            ]),
            defined.clone(),
            0,
            Some("issued twice"),
        ),
        (
            "server counts an issue nobody was told about",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[(1, "v1", "420502"), (3, "v3", "420503")]),
            defined.clone(),
            0,
            Some("!= quota"),
        ),
        (
            "the same gap with unanswered requests is only a note",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[(1, "v1", "420502"), (3, "v3", "420503")]),
            defined.clone(),
            1,
            None,
        ),
        (
            "a remaining above quota",
            view(&[("420502", 2, 3), ("420503", 1, 1)]),
            Vec::new(),
            defined.clone(),
            0,
            Some("outside 0..="),
        ),
        (
            "a quota that differs from the definition",
            view(&[("420502", 5, 3), ("420503", 1, 0)]),
            wins(&[
                (1, "v1", "420502"),
                (2, "v2", "420502"),
                (3, "v3", "420503"),
            ]),
            defined.clone(),
            0,
            Some("defined"),
        ),
        (
            "a voucher in a county the tranche lacks",
            view(&[("420502", 2, 0), ("420503", 1, 0)]),
            wins(&[
                (1, "v1", "420502"),
                (2, "v2", "420502"),
                (3, "v3", "420503"),
                (5, "v5", "420999"),
            ]),
            defined.clone(),
            0,
            Some("does not have"),
        ),
    ];
    for (name, view, wins, defined, unanswered, expected) in cases {
        let v = verify(&view, &wins, Some(&defined), unanswered);
        match expected {
            None => assert!(v.ok, "{name}: unexpected violations {:?}", v.violations),
            Some(needle) => {
                assert!(!v.ok, "{name}: not detected");
                assert!(
                    v.violations.iter().any(|x| x.contains(needle)),
                    "{name}: expected a violation containing {needle:?}, got {:?}",
                    v.violations
                );
            }
        }
    }
}
