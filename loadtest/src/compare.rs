//! `loadtest compare`: the HTTP ceiling, voucherd and the Redis and PostgreSQL
//! peers, measured on one machine in one run with the same generator and settings.
//!
//! Round by round, each server is started fresh, warmed up and driven closed
//! loop (every connection sends its next claim as soon as it has an answer)
//! with the same claim bodies: a new identity per request, points sampled in
//! every county, a quota that never sells out. Then, optionally, an open loop
//! at half of that server's saturated rate. The servers:
//! - `hello`: `examples/hello_server.rs`, hyper answering a fixed body;
//! - `voucherd`: `target/release/voucherd serve`, durable WAL (every `201`
//!   waits for its batch's msync), data under `target/loadtest-compare/`;
//! - `redis`: `loadtest/peers/redis_claim.rs`, hyper in front of redis-server
//!   with `appendfsync always` running a Lua claim script;
//! - `postgres` (only when asked for: each round creates a cluster with
//!   initdb): `loadtest/peers/postgres_claim.rs`, hyper in front of PostgreSQL
//!   with `synchronous_commit = on`, one transaction per claim (`INSERT ... ON
//!   CONFLICT DO NOTHING` into `claims`, then the county's hot-row `UPDATE ...
//!   WHERE remaining > 0`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::admin::{self, TrancheDefinition};
use crate::population::{self, Area, Keys};
use crate::record::Percentiles;
use crate::steady::{Mode, Steady, SteadyResult};
use crate::verify::Win;
use crate::{SplitMix, cpu, report};
use voucherd::core::UnixMillis;

const COMPARE_TOKEN: &str = "loadtest-compare-token-0123456789abcdef";
const TOKEN_ENV: &str = "VOUCHERD_COMPARE_TOKEN";
const READY_DEADLINE: Duration = Duration::from_secs(60);
const TRANCHE_ID: &str = "bench";
/// Marks open-loop identities apart from the closed loop's in one verification.
const OPEN_LOOP_IDENTITY_BIT: u32 = 1 << 31;
/// Distinct points the claims cycle through.
const LOCATIONS: usize = 4096;

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct CompareConfig {
    /// Rounds; figures are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured seconds per server per round (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Also run an open loop at half of each server's saturated rate.
    #[arg(long)]
    pub open_loop: bool,
    /// Which servers to run, in order: `hello`, `voucherd`, `redis`, `postgres`
    /// (not in the default: it creates a PostgreSQL cluster every round), and
    /// `voucherd@PATH` for another voucherd binary (a same-run before/after).
    #[arg(long, value_delimiter = ',', default_value = "hello,voucherd,redis")]
    pub servers: Vec<String>,
    #[arg(long, value_enum, default_value = "all")]
    pub keys: Keys,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value = "target/release/voucherd")]
    pub voucherd_bin: PathBuf,
    #[arg(long, default_value = "target/release/examples/hello_server")]
    pub hello_bin: PathBuf,
    #[arg(long, default_value = "target/release/redis_claim")]
    pub redis_peer_bin: PathBuf,
    #[arg(long, default_value = "target/release/postgres_claim")]
    pub postgres_peer_bin: PathBuf,
    #[arg(long, default_value = "../shared/data/yichang-420500.geojson")]
    pub geojson: PathBuf,
    /// Scratch space: configs, WAL, results.
    #[arg(long, default_value = "target/loadtest-compare")]
    pub work_dir: PathBuf,
    /// First of the loopback ports used (servers take base..base+7).
    #[arg(long, default_value_t = 18180)]
    pub port_base: u16,
    /// Vouchers per county (never sells out).
    #[arg(long, default_value_t = 10_000_000)]
    pub quota_per_county: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub server: String,
    pub round: usize,
    pub saturated: SteadyResult,
    pub generator_cpu_seconds: f64,
    pub server_cpu_seconds: f64,
    pub wall_seconds: f64,
    pub open_loop: Option<SteadyResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Median {
    pub server: String,
    pub answers_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Cores used by the generator and by the server (median over rounds).
    pub generator_cores: f64,
    pub server_cores: f64,
    pub open_loop_rate: Option<f64>,
    pub open_loop_p99_ms: Option<f64>,
}

struct Server {
    child: Child,
    public: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM so a peer stops its redis-server or PostgreSQL; then reap.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(cfg: CompareConfig) -> Result<bool, String> {
    for name in &cfg.servers {
        let bin = server_bin(&cfg, name)?;
        if !bin.exists() {
            return Err(format!(
                "{} is missing: cargo build --release -p voucherd --bin voucherd --example hello_server && cargo build --release -p loadtest",
                bin.display()
            ));
        }
    }
    if cfg.servers.iter().any(|s| s == "redis") {
        ensure_redis_server()?;
    }
    if cfg.servers.iter().any(|s| s == "postgres") {
        ensure_postgresql()?;
    }
    let geojson = std::fs::canonicalize(&cfg.geojson)
        .map_err(|e| format!("{}: {e}", cfg.geojson.display()))?;
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| e.to_string())?;
    let config_path = cfg.work_dir.join("voucherd.toml");
    write_voucherd_config(&cfg, &geojson, &config_path)?;
    let area = Area::from_config_with_env(&config_path, &|key| {
        (key == TOKEN_ENV).then(|| COMPARE_TOKEN.to_owned())
    })?;
    let weights = vec![1u64; area.counties.len()];
    let people = Arc::new(population::people(
        &area,
        &weights,
        LOCATIONS,
        0.0,
        &mut SplitMix(cfg.seed),
    )?);

    println!(
        "compare: {} rounds, {} connections, {:.1}+{:.1} s per server, keys {:?}, generator threads {}",
        cfg.rounds, cfg.connections, cfg.warmup_secs, cfg.duration_secs, cfg.keys, cfg.threads
    );
    println!(
        "{:<6} {:<9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "round", "server", "answers/s", "p50 ms", "p99 ms", "p999 ms", "gen cores", "srv cores"
    );
    let mut all = Vec::new();
    for round in 1..=cfg.rounds {
        for name in &cfg.servers {
            let m = measure(
                &cfg,
                name,
                round,
                &geojson,
                &config_path,
                &area,
                people.clone(),
            )
            .await?;
            let s = &m.saturated;
            println!(
                "{:<6} {:<9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2}{}",
                round,
                name,
                s.answers_per_second,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                m.generator_cpu_seconds / m.wall_seconds,
                m.server_cpu_seconds / m.wall_seconds,
                m.open_loop
                    .as_ref()
                    .map(|o| format!(
                        "  | open loop {:.0}/s: p99 {:.2} ms",
                        rate_of(o),
                        o.latency.p99_ms
                    ))
                    .unwrap_or_default()
            );
            all.push(m);
        }
    }
    let medians: Vec<Median> = cfg
        .servers
        .iter()
        .map(|name| median_of(name, &all))
        .collect();
    println!("medians over {} rounds:", cfg.rounds);
    for m in &medians {
        println!(
            "  {:<9} {:>10.0} answers/s  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms{}",
            m.server,
            m.answers_per_second,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.open_loop_p99_ms
                .map(|p| format!(
                    "  | open loop at {:.0}/s: p99 {p:.2} ms",
                    m.open_loop_rate.unwrap_or(0.0)
                ))
                .unwrap_or_default()
        );
    }
    let by_name: BTreeMap<&str, &Median> = medians.iter().map(|m| (m.server.as_str(), m)).collect();
    let mut ratios = BTreeMap::new();
    for v in medians.iter().filter(|m| m.server.starts_with("voucherd")) {
        for other in ["hello", "redis", "postgres", "voucherd"] {
            if let Some(o) = by_name.get(other)
                && o.server != v.server
            {
                let r = v.answers_per_second / o.answers_per_second;
                println!("  ratio {} / {other}: {r:.2}", v.server);
                ratios.insert(format!("{}/{other}", v.server), r);
            }
        }
    }
    let path = cfg.work_dir.join("compare.json");
    report::write_json(
        &path,
        &serde_json::json!({
            "kind": "compare",
            "settings": cfg,
            "medians": medians,
            "ratios": ratios,
            "rounds": all,
        }),
    )?;
    println!("  wrote {}", path.display());
    Ok(true)
}

/// The binary that serves `name` (one of the `--servers` names).
fn server_bin(cfg: &CompareConfig, name: &str) -> Result<PathBuf, String> {
    Ok(match name {
        "hello" => cfg.hello_bin.clone(),
        "redis" => cfg.redis_peer_bin.clone(),
        "postgres" => cfg.postgres_peer_bin.clone(),
        "voucherd" => cfg.voucherd_bin.clone(),
        other => match other.strip_prefix("voucherd@") {
            Some(path) => PathBuf::from(path),
            None => return Err(unknown_server(other)),
        },
    })
}

fn unknown_server(name: &str) -> String {
    format!("unknown server {name:?} (hello, voucherd, voucherd@PATH, redis, postgres)")
}

fn rate_of(r: &SteadyResult) -> f64 {
    match r.mode {
        Mode::Open { rate_per_second } => rate_per_second,
        Mode::Closed => r.answers_per_second,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_of(name: &str, all: &[Measurement]) -> Median {
    let runs: Vec<&Measurement> = all.iter().filter(|m| m.server == name).collect();
    let pick = |f: &dyn Fn(&Percentiles) -> f64| {
        median(runs.iter().map(|m| f(&m.saturated.latency)).collect())
    };
    let open: Vec<&SteadyResult> = runs.iter().filter_map(|m| m.open_loop.as_ref()).collect();
    Median {
        server: name.to_owned(),
        answers_per_second: median(
            runs.iter()
                .map(|m| m.saturated.answers_per_second)
                .collect(),
        ),
        p50_ms: pick(&|p| p.p50_ms),
        p99_ms: pick(&|p| p.p99_ms),
        p999_ms: pick(&|p| p.p999_ms),
        generator_cores: median(
            runs.iter()
                .map(|m| m.generator_cpu_seconds / m.wall_seconds)
                .collect(),
        ),
        server_cores: median(
            runs.iter()
                .map(|m| m.server_cpu_seconds / m.wall_seconds)
                .collect(),
        ),
        open_loop_rate: (!open.is_empty())
            .then(|| median(open.iter().map(|o| rate_of(o)).collect())),
        open_loop_p99_ms: (!open.is_empty())
            .then(|| median(open.iter().map(|o| o.latency.p99_ms).collect())),
    }
}

async fn measure(
    cfg: &CompareConfig,
    name: &str,
    round: usize,
    geojson: &Path,
    config_path: &Path,
    area: &Area,
    people: Arc<Vec<population::Person>>,
) -> Result<Measurement, String> {
    let server = start(cfg, name, geojson, config_path, area).await?;
    let run = format!("cmp{round}{name}");
    let steady = |mode: Mode, warmup: f64| Steady {
        public: server.public,
        tranche_id: TRANCHE_ID.to_owned(),
        run: format!("{run}{}", matches!(mode, Mode::Closed) as u8),
        keys: cfg.keys,
        people: people.clone(),
        connections: cfg.connections,
        mode,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(cfg.duration_secs),
    };
    let pid = server.child.id();
    let gen_before = cpu::self_cpu_seconds();
    let srv_before = cpu::tree_cpu_seconds(pid);
    let wall = std::time::Instant::now();
    let saturated = steady(Mode::Closed, cfg.warmup_secs).run().await?;
    let wall_seconds = wall.elapsed().as_secs_f64();
    let generator_cpu_seconds = cpu::self_cpu_seconds() - gen_before;
    let server_cpu_seconds = cpu::tree_cpu_seconds(pid) - srv_before;
    let open_loop = if cfg.open_loop {
        let rate = saturated.answers_per_second / 2.0;
        Some(
            steady(
                Mode::Open {
                    rate_per_second: rate,
                },
                cfg.warmup_secs,
            )
            .run()
            .await?,
        )
    } else {
        None
    };
    if name.starts_with("voucherd") {
        // The same checks as after a burst, on everything this server issued.
        let view = admin::tranche_view(server.public, TRANCHE_ID).await?;
        let mut wins = saturated.wins.clone();
        let mut unanswered = saturated.unanswered;
        if let Some(o) = &open_loop {
            // Its identities are a separate run tag; keep their numbers apart.
            wins.extend(o.wins.iter().map(|w| Win {
                identity: w.identity | OPEN_LOOP_IDENTITY_BIT,
                ..w.clone()
            }));
            unanswered += o.unanswered;
        }
        let quotas: Vec<(u32, u64)> = area
            .counties
            .iter()
            .map(|c| (c.code, cfg.quota_per_county))
            .collect();
        let v = crate::verify::verify(&view, &wins, Some(&quotas), unanswered);
        if !v.ok {
            return Err(format!(
                "{name} round {round}: verification failed: {:?}",
                v.violations
            ));
        }
    }
    let bad = saturated
        .outcomes
        .iter()
        .filter(|(k, _)| !matches!(**k, "claimed"))
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>();
    if name != "hello" && !bad.is_empty() {
        eprintln!(
            "  {name} round {round}: answers other than claimed: {}",
            bad.join(", ")
        );
    }
    drop(server);
    Ok(Measurement {
        server: name.to_owned(),
        round,
        saturated,
        generator_cpu_seconds,
        server_cpu_seconds,
        wall_seconds,
        open_loop,
    })
}

async fn start(
    cfg: &CompareConfig,
    name: &str,
    geojson: &Path,
    config_path: &Path,
    area: &Area,
) -> Result<Server, String> {
    let base = cfg.port_base;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::inherit());
    };
    let server = match name {
        "hello" => {
            let public = loopback(base + 2);
            let mut c = Command::new(&cfg.hello_bin);
            c.arg(public.to_string());
            quiet(&mut c);
            Server {
                child: c.spawn().map_err(|e| format!("hello_server: {e}"))?,
                public,
            }
        }
        voucherd if voucherd.starts_with("voucherd") => {
            let bin = server_bin(cfg, voucherd)?;
            let data = cfg.work_dir.join("data");
            let _ = std::fs::remove_dir_all(&data);
            let mut c = Command::new(&bin);
            c.arg("serve")
                .arg("--config")
                .arg(config_path)
                .env(TOKEN_ENV, COMPARE_TOKEN)
                .env("RUST_LOG", "warn");
            quiet(&mut c);
            Server {
                child: c.spawn().map_err(|e| format!("voucherd: {e}"))?,
                public: area.public_addr,
            }
        }
        "redis" => comparison_peer(
            &cfg.redis_peer_bin,
            "redis_claim",
            loopback(base + 3),
            ("--redis-port", base + 4),
            geojson,
            cfg.quota_per_county,
        )?,
        "postgres" => comparison_peer(
            &cfg.postgres_peer_bin,
            "postgres_claim",
            loopback(base + 5),
            ("--pg-port", base + 6),
            geojson,
            cfg.quota_per_county,
        )?,
        other => return Err(unknown_server(other)),
    };
    if name == "hello" {
        wait_connect(server.public).await?;
    } else {
        admin::wait_ready(server.public, READY_DEADLINE).await?;
    }
    if name.starts_with("voucherd") {
        let def = TrancheDefinition {
            campaign_id: TRANCHE_ID.to_owned(),
            tranche_id: TRANCHE_ID.to_owned(),
            opens_at: UnixMillis(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_millis() as i64
                    - 1000,
            ),
            face_value_fen: 2000,
            quotas: area
                .counties
                .iter()
                .map(|c| (c.code, cfg.quota_per_county))
                .collect(),
        };
        admin::define(area.admin_addr, COMPARE_TOKEN, &def).await?;
    }
    Ok(server)
}

/// Starts a comparison peer (`loadtest/peers/`): it listens on `public` and runs its own
/// backing store on `backend.1`, given with the flag `backend.0`.
fn comparison_peer(
    bin: &Path,
    name: &str,
    public: SocketAddr,
    backend: (&str, u16),
    geojson: &Path,
    quota_per_county: u64,
) -> Result<Server, String> {
    let mut c = Command::new(bin);
    c.arg("--listen")
        .arg(public.to_string())
        .arg(backend.0)
        .arg(backend.1.to_string())
        .arg("--geojson")
        .arg(geojson)
        .arg("--tranche")
        .arg(TRANCHE_ID)
        .arg("--quota-per-county")
        .arg(quota_per_county.to_string());
    c.stdout(Stdio::null()).stderr(Stdio::inherit());
    Ok(Server {
        child: c.spawn().map_err(|e| format!("{name}: {e}"))?,
        public,
    })
}

async fn wait_connect(addr: SocketAddr) -> Result<(), String> {
    let until = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(format!("nothing listening on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_voucherd_config(cfg: &CompareConfig, geojson: &Path, path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(geojson).map_err(|e| format!("{}: {e}", geojson.display()))?;
    let shapes = voucherd::geo::parse_feature_collection(&bytes).map_err(|e| e.to_string())?;
    let base = cfg.port_base;
    let mut text = format!(
        r#"# Written by `loadtest compare`.
[server]
public_listen = "127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"
max_connections = 10000
max_inflight_claims = 16384

[admin]
token_env = "{TOKEN_ENV}"

[storage]
data_dir = "data"

[regions]
source = "geojson"
geojson_path = "{}"
"#,
        base,
        base + 1,
        geojson.display()
    );
    for s in &shapes {
        text.push_str(&format!(
            "\n[[counties]]\nadcode = {}\nname = \"{}\"\n",
            s.adcode, s.name
        ));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Installs the `redis-server` package with apt when the Redis peer is asked for and
/// `redis-server` is not on the PATH.
fn ensure_redis_server() -> Result<(), String> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(());
    }
    println!("compare: redis-server not found; installing it with apt-get");
    apt_install("redis-server")
}

/// Installs the `postgresql` package with apt when the PostgreSQL peer is asked for
/// and no server binaries are found (see [`postgres_bin_dir`]).
fn ensure_postgresql() -> Result<(), String> {
    if postgres_bin_dir().is_some() {
        return Ok(());
    }
    println!("compare: PostgreSQL server binaries not found; installing postgresql with apt-get");
    apt_install("postgresql")?;
    postgres_bin_dir()
        .map(|_| ())
        .ok_or_else(|| "postgresql installed, yet no initdb and postgres found".to_owned())
}

/// Where PostgreSQL's `initdb` and `postgres` are: the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps them off the PATH), else a
/// PATH directory holding both.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            both(&bin).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    newest.or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| both(dir)))
}

/// `apt-get update`, then `apt-get install` of one package (with sudo unless
/// already root).
fn apt_install(package: &str) -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed: {status}", args.join(" ")))
        }
    };
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", package])
}
