//! The PostgreSQL comparison peer (`postgres_claim`) against a real PostgreSQL
//! that it creates itself, on loopback: the answers of every outcome, no stock
//! taken by a duplicate, no claim recorded by a sold-out county, concurrent
//! claims on one county's hot row never over-issuing, the tables agreeing with
//! the answers, and a SIGTERM that stops PostgreSQL and removes its directory.
//! Bounded: about a hundred claims, a deadline on every wait. Needs the
//! PostgreSQL server binaries (Debian package `postgresql`; `.ci/run` and
//! `scripts/test` install it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loadtest::http;
use serde_json::Value;
use voucherd::geo::{PolygonIndex, parse_feature_collection};

/// initdb and the first connection on a busy machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(90);
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const QUOTA: u64 = 2;
/// Distinct people pressing at once on one county's hot row.
const RACERS: usize = 40;
/// Claims at once that share one device.
const TWINS: usize = 20;
const GRID_STEPS: usize = 200;

fn geojson() -> PathBuf {
    std::env::var_os("VOUCHERD_YICHANG_GEOJSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/yichang-420500.geojson")
        })
}

/// One GCJ-02 point inside each county, from a grid over the boundaries' box.
fn points() -> BTreeMap<u32, (f64, f64)> {
    let bytes = std::fs::read(geojson()).expect("the Yichang boundary file is readable");
    let index =
        PolygonIndex::build(&parse_feature_collection(&bytes).expect("boundaries")).expect("index");
    let [x0, y0, x1, y1] = index.bbox();
    let mut found = BTreeMap::new();
    for i in 1..GRID_STEPS {
        for j in 1..GRID_STEPS {
            let lng = x0 + (x1 - x0) * i as f64 / GRID_STEPS as f64;
            let lat = y0 + (y1 - y0) * j as f64 / GRID_STEPS as f64;
            if let Some(county) = index.locate(lng, lat) {
                found.entry(county).or_insert((lng, lat));
            }
        }
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The peer process; stopped with SIGTERM (so it stops PostgreSQL) if a check fails.
struct PeerProcess {
    child: Child,
}

impl PeerProcess {
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_peer(pg_port: u16) -> (PeerProcess, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postgres_claim"))
        .args(["--listen", "127.0.0.1:0", "--pg-port"])
        .arg(pg_port.to_string())
        .arg("--geojson")
        .arg(geojson())
        .args(["--tranche", "t1", "--pool-size", "8", "--quota-per-county"])
        .arg(QUOTA.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn postgres_claim");
    let stdout = child.stdout.take().expect("stdout");
    let peer = PeerProcess { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("postgres_claim starts in time (see its stderr)");
        if let Some(rest) = line.strip_prefix("postgres_claim listening ") {
            let addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("listening address");
            return (peer, addr);
        }
    }
}

fn body(
    user: &str,
    device: Option<&str>,
    phone: Option<&str>,
    at: (f64, f64),
    tranche: &str,
) -> String {
    let mut identity = Vec::new();
    if let Some(d) = device {
        identity.push(format!(r#""device_id":"{d}""#));
    }
    if let Some(p) = phone {
        identity.push(format!(r#""phone_hash":"{p}""#));
    }
    format!(
        r#"{{"tranche_id":"{tranche}","user_id":"{user}","identity":{{{}}},"location":{{"lng":{},"lat":{}}},"request_id":"{user}-r"}}"#,
        identity.join(","),
        at.0,
        at.1
    )
}

async fn post(addr: SocketAddr, body: String) -> (u16, Value) {
    let request = http::request(
        "POST",
        "/v1/claims",
        &addr.to_string(),
        None,
        body.as_bytes(),
    );
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(30), http::once(addr, &request))
            .await
            .expect("an answer within 30 s")
            .expect("an HTTP answer");
    (
        status,
        serde_json::from_slice(&answer).expect("a JSON answer"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_peer_answers_every_outcome_never_over_issues_and_cleans_up() {
    let points = points();
    assert!(
        points.len() >= 4,
        "points found in {} counties",
        points.len()
    );
    let mut counties = points.iter();
    let (&a, &at_a) = counties.next().unwrap();
    let (&b, &at_b) = counties.next().unwrap();
    let (&c, &at_c) = counties.next().unwrap();
    let (&d, &at_d) = counties.next().unwrap();

    let pg_port = free_port();
    let (mut peer, addr) = start_peer(pg_port);
    let peer_pid = peer.child.id();

    let ready = http::request("GET", "/readyz", &addr.to_string(), None, b"");
    assert_eq!(http::once(addr, &ready).await.unwrap().0, 200);

    // County A: one voucher, then duplicates by each key, then the second
    // voucher (the duplicates took no stock), then sold out.
    let (status, first) = post(addr, body("u1", Some("dev1"), Some("ABCDEF"), at_a, "t1")).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["outcome"], "claimed");
    assert_eq!(first["voucher"]["county"], a.to_string());
    assert_eq!(first["voucher"]["tranche_id"], "t1");
    assert!(
        first["voucher"]["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    for dup in [
        body("u1", None, None, at_a, "t1"),
        body("u2", Some("dev1"), None, at_a, "t1"),
        body("u3", None, Some("abcdef"), at_b, "t1"), // hashes compare lower-cased
    ] {
        let (status, answer) = post(addr, dup).await;
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (409, Some("already_claimed"))
        );
    }
    let (status, _) = post(addr, body("u4", None, None, at_a, "t1")).await;
    assert_eq!(status, 201, "the duplicates took no stock");
    let (status, answer) = post(addr, body("u5", None, None, at_a, "t1")).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (410, Some("sold_out"))
    );
    // The sold-out attempt recorded no claim: u5 is still free to claim in B.
    let (status, _) = post(addr, body("u5", None, None, at_b, "t1")).await;
    assert_eq!(status, 201, "a sold-out claim left no identity behind");

    let (status, answer) = post(addr, body("u6", None, None, (0.0, 0.0), "t1")).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (422, Some("outside_area"))
    );
    let (status, answer) = post(addr, body("u6", None, None, at_b, "other")).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (404, Some("unknown_tranche"))
    );
    let (status, answer) = post(addr, r#"{"tranche_id":"t1"}"#.to_owned()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (400, Some("invalid_request"))
    );

    // County C's hot row: RACERS different people at once, QUOTA vouchers.
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            tokio::spawn(post(
                addr,
                body(&format!("racer{i}"), None, None, at_c, "t1"),
            ))
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for r in racers {
        *statuses.entry(r.await.unwrap().0).or_insert(0usize) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([(201, QUOTA as usize), (410, RACERS - QUOTA as usize)]),
        "racers on one county"
    );
    // County D: TWINS claims at once sharing one device: one voucher.
    let twins: Vec<_> = (0..TWINS)
        .map(|i| {
            tokio::spawn(post(
                addr,
                body(&format!("twin{i}"), Some("shared"), None, at_d, "t1"),
            ))
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in twins {
        *statuses.entry(t.await.unwrap().0).or_insert(0usize) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([(201, 1), (409, TWINS - 1)]),
        "claims sharing a device"
    );

    // The tables agree: per county, claims recorded = vouchers answered, and
    // remaining + claims = quota.
    let (db, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg_port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the peer's PostgreSQL");
    tokio::spawn(connection);
    let rows = db
        .query(
            "SELECT s.county, s.remaining, count(c.id) FROM stock s \
             LEFT JOIN claims c ON c.tranche_id = s.tranche_id AND c.county = s.county \
             WHERE s.tranche_id = 't1' GROUP BY s.county, s.remaining",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), points.len(), "one stock row per county");
    let expected_claims = BTreeMap::from([(a, 2i64), (b, 1), (c, QUOTA as i64), (d, 1)]);
    for row in rows {
        let county = u32::try_from(row.get::<_, i32>(0)).unwrap();
        let remaining: i64 = row.get(1);
        let claims: i64 = row.get(2);
        assert_eq!(remaining + claims, QUOTA as i64, "county {county}");
        assert_eq!(
            claims,
            expected_claims.get(&county).copied().unwrap_or(0),
            "claims recorded in county {county}"
        );
    }
    let settings = db
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (settings.get::<_, String>(0), settings.get::<_, String>(1)),
        ("on".to_owned(), "on".to_owned())
    );
    drop(db);

    // SIGTERM: the peer exits cleanly, PostgreSQL is gone, its directory removed.
    let status = peer.terminate().expect("the peer exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
        "PostgreSQL still listens on {pg_port}"
    );
    let dir = std::env::temp_dir().join(format!("postgres-claim-{peer_pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}
