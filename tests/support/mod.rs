//! Test harness: runs the real `voucherd` binary on loopback and talks to it
//! over plain HTTP/1.1 with keep-alive. Every wait is for an event (a line on
//! stdout, a reply, a closed socket) and is bounded by a deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Longest a daemon may take to print a line we wait for.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Longest any single HTTP exchange may take.
pub const IO_DEADLINE: Duration = Duration::from_secs(30);

pub fn geojson_path() -> PathBuf {
    std::env::var_os("VOUCHERD_YICHANG_GEOJSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/yichang-420500.geojson")
        })
}

/// The 13 divisions of Yichang (public facts: codes and names).
pub const COUNTIES: [(u32, &str); 13] = [
    (420502, "西陵区"),
    (420503, "伍家岗区"),
    (420504, "点军区"),
    (420505, "猇亭区"),
    (420506, "夷陵区"),
    (420525, "远安县"),
    (420526, "兴山县"),
    (420527, "秭归县"),
    (420528, "长阳土家族自治县"),
    (420529, "五峰土家族自治县"),
    (420581, "宜都市"),
    (420582, "当阳市"),
    (420583, "枝江市"),
];

/// A point inside each county, read at run time from the boundary file's
/// `center` property (the seat of government).
pub fn county_points() -> Vec<(u32, f64, f64)> {
    let text =
        std::fs::read_to_string(geojson_path()).expect("the Yichang boundary file is readable");
    let doc: Value = serde_json::from_str(&text).expect("boundary file is JSON");
    doc["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| {
            let p = &f["properties"];
            let center = p["center"].as_array().expect("center");
            (
                p["adcode"].as_u64().expect("adcode") as u32,
                center[0].as_f64().expect("lng"),
                center[1].as_f64().expect("lat"),
            )
        })
        .collect()
}

/// Options for a test daemon's config.
#[derive(Clone)]
pub struct TestConfig {
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub max_connections: usize,
    pub max_inflight_claims: usize,
    pub segment_size_bytes: u64,
    pub checkpoint_every_records: u64,
    pub checkpoint_check_interval_ms: u64,
    /// `storage.writer`; `None` leaves the daemon's default.
    pub wal_writer: Option<&'static str>,
    /// `storage.presize_budget_vouchers`; `None` leaves the daemon's default.
    pub presize_budget_vouchers: Option<u64>,
    pub extra: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            max_connections: 1_000,
            max_inflight_claims: 16_384,
            segment_size_bytes: 4 << 20,
            checkpoint_every_records: 1_000_000,
            checkpoint_check_interval_ms: 5_000,
            wal_writer: None,
            presize_budget_vouchers: None,
            extra: String::new(),
        }
    }
}

impl TestConfig {
    pub fn to_toml(&self, data_dir: &Path) -> String {
        let mut s = format!(
            r#"
[server]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_connections = {}
header_read_timeout_ms = {}
body_read_timeout_ms = {}
max_inflight_claims = {}
drain_timeout_ms = 5000

[admin]
token_env = "VOUCHERD_TEST_ADMIN_TOKEN"

[storage]
data_dir = "{}"
segment_size_bytes = {}
checkpoint_every_records = {}
checkpoint_check_interval_ms = {}

[regions]
source = "geojson"
geojson_path = "{}"

[[campaigns]]
id = "c1"
name = "test campaign"
budget_fen = 100000000000
"#,
            self.max_connections,
            self.header_read_timeout_ms,
            self.body_read_timeout_ms,
            self.max_inflight_claims,
            data_dir.display(),
            self.segment_size_bytes,
            self.checkpoint_every_records,
            self.checkpoint_check_interval_ms,
            geojson_path().display(),
        );
        if let Some(writer) = self.wal_writer {
            s = s.replacen(
                "[regions]",
                &format!("writer = \"{writer}\"\n\n[regions]"),
                1,
            );
        }
        if let Some(budget) = self.presize_budget_vouchers {
            s = s.replacen(
                "[regions]",
                &format!("presize_budget_vouchers = {budget}\n\n[regions]"),
                1,
            );
        }
        for (code, name) in COUNTIES {
            s.push_str(&format!(
                "\n[[counties]]\nadcode = {code}\nname = \"{name}\"\n"
            ));
        }
        s.push_str(&self.extra);
        s
    }
}

pub struct Daemon {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts `voucherd serve` on `config_path`; returns once it is ready.
pub fn start_with_config_file(dir: &Path, config_path: &Path) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_voucherd"));
    command.args(["serve", "--config"]).arg(config_path);
    start_with_command(dir, command)
}

/// Starts the daemon with `command` (which must end up exec'ing `voucherd serve`, e.g.
/// through `sh` and `prlimit`); returns once it is ready.
pub fn start_with_command(dir: &Path, mut command: Command) -> Daemon {
    let mut child = command
        .env("VOUCHERD_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voucherd");
    let (tx, rx) = mpsc::channel();
    let (stdout, _) = capture(child.stdout.take().expect("stdout"), Some(tx));
    let (stderr, stderr_reader) = capture(child.stderr.take().expect("stderr"), None);
    let mut daemon = Daemon {
        child,
        public: "127.0.0.1:1".parse().expect("addr"),
        admin: "127.0.0.1:1".parse().expect("addr"),
        dir: dir.to_owned(),
        stdout,
        stderr,
        lines: rx,
        stderr_reader: Some(stderr_reader),
    };
    let listening = daemon.wait_for_line("voucherd listening");
    for part in listening.split_whitespace() {
        if let Some(a) = part.strip_prefix("public=") {
            daemon.public = a.parse().expect("public addr");
        }
        if let Some(a) = part.strip_prefix("admin=") {
            daemon.admin = a.parse().expect("admin addr");
        }
    }
    daemon.wait_for_line("voucherd ready");
    daemon.wait_for_stderr(RECOVERED_LOG_LINE);
    daemon
}

/// What the daemon logs (stderr) once recovery is done and it serves. Stdout and stderr are
/// read by different threads, so "voucherd ready" on stdout can be seen before the recovery
/// log lines on stderr; tests that read those lines wait for this one first.
const RECOVERED_LOG_LINE: &str = "recovered and serving";

/// Writes `config` into `dir/voucherd.toml` and starts the daemon on it.
pub fn start(dir: &Path, config: &TestConfig) -> Daemon {
    let path = write_config(dir, config);
    start_with_config_file(dir, &path)
}

pub fn write_config(dir: &Path, config: &TestConfig) -> PathBuf {
    let path = dir.join("voucherd.toml");
    std::fs::write(&path, config.to_toml(&dir.join("data"))).expect("write config");
    path
}

/// Runs the daemon on a config it must refuse; returns (exit code, stderr).
pub fn run_expecting_exit(config_path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_voucherd"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env("VOUCHERD_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voucherd");
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            return (status.code(), err);
        }
        assert!(
            Instant::now() < deadline,
            "voucherd did not exit on a config it should refuse"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn capture(
    stream: impl Read + Send + 'static,
    tx: Option<mpsc::Sender<String>>,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            sink.lock().push(line);
        }
    });
    (lines, reader)
}

impl Daemon {
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no line starting with {prefix:?} (exit status {status:?}); stderr:\n{}",
                        self.stderr.lock().join("\n")
                    );
                }
            }
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.public)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin)
    }

    /// SIGKILL: the crash case.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM: the orderly case. Returns the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "voucherd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a daemon that is known to be exiting (its listener already refused us);
    /// returns its status and everything it wrote to stderr.
    pub fn wait_for_exit(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        // The reader ends at EOF, which the exit brings.
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        (status, self.stderr_text())
    }

    /// Waits (bounded by [`STARTUP_DEADLINE`]) until stderr has a line containing `needle`.
    pub fn wait_for_stderr(&self, needle: &str) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !self.stderr.lock().iter().any(|l| l.contains(needle)) {
            if Instant::now() >= deadline {
                panic!(
                    "no stderr line containing {needle:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().join("\n")
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().join("\n")
    }

    /// Creates a tranche through the admin API; panics unless it was created.
    pub fn create_tranche(&self, tranche_id: &str, body: &Value) -> Value {
        let reply = self
            .admin_client()
            .put_admin(&format!("/admin/v1/tranches/{tranche_id}"), body);
        assert_eq!(reply.status, 201, "create tranche: {}", reply.text());
        reply.json()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A tranche body that is open now (opened a minute ago) and closes in an hour.
pub fn open_tranche_body(quotas: &[(u32, u32)]) -> Value {
    let now = chrono::Utc::now();
    tranche_body(
        now - chrono::Duration::minutes(1),
        now + chrono::Duration::hours(1),
        quotas,
    )
}

pub fn tranche_body(
    opens: chrono::DateTime<chrono::Utc>,
    closes: chrono::DateTime<chrono::Utc>,
    quotas: &[(u32, u32)],
) -> Value {
    let q: serde_json::Map<String, Value> = quotas
        .iter()
        .map(|(c, n)| (c.to_string(), Value::from(*n)))
        .collect();
    serde_json::json!({
        "campaign_id": "c1",
        "opens_at": opens.to_rfc3339(),
        "closes_at": closes.to_rfc3339(),
        "expires_at": (closes + chrono::Duration::days(30)).to_rfc3339(),
        "face_value_fen": 2000,
        "threshold_fen": 10000,
        "quotas": q,
    })
}

pub fn claim_body(tranche: &str, user: &str, request: &str, lng: f64, lat: f64) -> Value {
    serde_json::json!({
        "tranche_id": tranche,
        "user_id": user,
        "location": {"lng": lng, "lat": lat},
        "request_id": request,
    })
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 keep-alive client. Reconnects if the server closed.
pub struct Client {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None }
    }

    fn connection(&mut self) -> &mut BufReader<TcpStream> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).expect("connect");
            stream.set_read_timeout(Some(IO_DEADLINE)).expect("timeout");
            stream.set_nodelay(true).expect("nodelay");
            self.stream = Some(BufReader::new(stream));
        }
        self.stream.as_mut().expect("connected")
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                head.push_str("content-type: application/json\r\n");
            }
            head.push_str(&format!("content-length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        // One retry on a fresh connection if a kept-alive one was closed under us.
        for attempt in 0..2 {
            let conn = self.connection();
            if conn.get_mut().write_all(&bytes).is_ok()
                && let Some(reply) = read_reply(conn)
            {
                if reply.header("connection") == Some("close") {
                    self.stream = None;
                }
                return reply;
            }
            self.stream = None;
            assert!(attempt == 0, "{method} {path}: no reply");
        }
        unreachable!()
    }

    /// One attempt, no retry, no panic: `None` if the server is gone or the
    /// connection broke before a full reply (the torture test's "in flight").
    pub fn try_request(&mut self, method: &str, path: &str, body: &[u8]) -> Option<Reply> {
        self.try_request_with(method, path, &[], body)
    }

    /// [`Client::try_request`] with extra headers (e.g. the admin bearer token).
    pub fn try_request_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Reply> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).ok()?;
            stream.set_read_timeout(Some(IO_DEADLINE)).ok()?;
            stream.set_nodelay(true).ok()?;
            self.stream = Some(BufReader::new(stream));
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let conn = self.stream.as_mut()?;
        let reply = conn
            .get_mut()
            .write_all(&bytes)
            .ok()
            .and_then(|_| read_reply(conn));
        if reply.is_none() {
            self.stream = None;
        }
        reply
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, &[], Some(body.to_string().as_bytes()))
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    pub fn put_admin(&mut self, path: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request(
            "PUT",
            path,
            &[("authorization", &auth)],
            Some(body.to_string().as_bytes()),
        )
    }

    pub fn post_admin(&mut self, path: &str) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request("POST", path, &[("authorization", &auth)], Some(b""))
    }

    pub fn get_admin(&mut self, path: &str) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request("GET", path, &[("authorization", &auth)], None)
    }

    /// Posts a CSV file to `path` (e.g. `/admin/v1/merchants:import?dry_run=true`).
    pub fn post_csv(&mut self, path: &str, csv: &[u8]) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request(
            "POST",
            path,
            &[("authorization", &auth), ("content-type", "text/csv")],
            Some(csv),
        )
    }

    pub fn claim(&mut self, body: &Value) -> Reply {
        self.post("/v1/claims", body)
    }
}

/// Reads one response; `None` if the connection closed before a full reply.
pub fn read_reply(conn: &mut BufReader<TcpStream>) -> Option<Reply> {
    let mut line = String::new();
    if conn.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(Reply {
        status,
        headers,
        body,
    })
}

#[derive(Clone, Debug)]
pub struct Acked {
    pub user: String,
    pub request: String,
    pub id: String,
    pub county: String,
    pub lng: f64,
    pub lat: f64,
}

/// Claims `count` vouchers from 8 connections at once; returns what was acknowledged.
pub fn claim_concurrently(
    daemon: &Daemon,
    tranche: &str,
    prefix: &str,
    count: usize,
) -> Vec<Acked> {
    let points = county_points();
    let addr = daemon.public;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let points = points.clone();
                scope.spawn(move || {
                    let mut client = Client::new(addr);
                    let mut out = Vec::new();
                    for i in (t..count).step_by(8) {
                        let (_, lng, lat) = points[i % 3];
                        let user = format!("{prefix}-user-{i}");
                        let request = format!("{prefix}-req-{i}");
                        let reply = client.claim(&claim_body(tranche, &user, &request, lng, lat));
                        if reply.status == 201 {
                            let v = reply.json()["voucher"].clone();
                            out.push(Acked {
                                user,
                                request,
                                id: v["id"].as_str().expect("id").to_owned(),
                                county: v["county"].as_str().expect("county").to_owned(),
                                lng,
                                lat,
                            });
                        } else {
                            assert_eq!(reply.status, 410, "{}", reply.text());
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    })
}

pub fn remaining(daemon: &Daemon, tranche: &str) -> HashMap<String, u64> {
    let view = daemon
        .client()
        .get(&format!("/v1/tranches/{tranche}"))
        .json();
    view["counties"]
        .as_array()
        .expect("counties")
        .iter()
        .map(|c| {
            (
                c["county"].as_str().expect("county").to_owned(),
                c["remaining"].as_u64().expect("remaining"),
            )
        })
        .collect()
}

/// Every acknowledged voucher is there, bound to the same county and identity.
pub fn check_all_present(daemon: &Daemon, tranche: &str, acked: &[Acked]) {
    let mut c = daemon.client();
    for a in acked {
        let got = c.get(&format!("/v1/vouchers/{}", a.id));
        assert_eq!(got.status, 200, "voucher {} lost: {}", a.id, got.text());
        assert_eq!(got.json()["voucher"]["county"], a.county.as_str());
        let replay = c.claim(&claim_body(tranche, &a.user, &a.request, a.lng, a.lat));
        assert_eq!(replay.status, 200, "{}", replay.text());
        assert_eq!(replay.json()["voucher"]["id"], a.id.as_str());
        let dup = c.claim(&claim_body(
            tranche,
            &a.user,
            &format!("{}-again", a.request),
            a.lng,
            a.lat,
        ));
        assert_eq!(dup.status, 409, "{}", dup.text());
        assert_eq!(dup.json()["voucher"]["id"], a.id.as_str());
    }
}

/// A number from the environment (seeds, soak sizes), or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
