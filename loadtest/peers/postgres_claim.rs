//! COMPARISON PEER, not part of voucherd: hyper in front of PostgreSQL.
//!
//! The usual relational design for a flash sale, built as well as it is
//! commonly built, so that `loadtest compare` can quote voucherd against it on
//! the same machine: a hyper 1.x server (the HTTP side is `claim_api.rs`,
//! shared with `redis_claim`: same claim bodies, same answers and status codes)
//! in front of a throwaway PostgreSQL cluster that this peer creates (`initdb`)
//! in a temporary directory and runs on a loopback port, with its unix socket
//! in that directory, `fsync = on` and `synchronous_commit = on`: a `201` is
//! sent only after the commit's WAL record was flushed to disk.
//!
//! Per claim, one transaction on one connection of a fixed pool
//! (deadpool-postgres over tokio-postgres, prepared statements):
//!
//! 1. `INSERT INTO claims (...) VALUES (...) ON CONFLICT DO NOTHING RETURNING id`:
//!    identity dedupe. `claims` has a unique index per identity key (user ID,
//!    ID-number hash, phone hash, device) within a tranche, so a claim sharing
//!    any key with a holder inserts nothing: `ROLLBACK`, `409 already_claimed`,
//!    and no stock was touched.
//! 2. `UPDATE stock SET remaining = remaining - 1 WHERE tranche_id = $1 AND
//!    county = $2 AND remaining > 0`: the county's hot row. No row updated
//!    means sold out: `ROLLBACK` (the claim row of step 1 goes with it),
//!    `410 sold_out`.
//! 3. `COMMIT` (waits for the WAL flush), `201 claimed` with `claims.id` as the
//!    voucher ID.
//!
//! The insert comes first so that the county's row lock, which serialises
//! every claim of that county, is held only from the `UPDATE` to the end of
//! the commit's flush.
//!
//! PostgreSQL refuses to run as root: when this peer runs as root it creates
//! the cluster and runs `initdb` and `postgres` as the `postgres` user (the
//! same as `runuser -u postgres --`, done through `setuid` in the child so that
//! the postmaster stays this process's direct child: it is signalled and
//! reaped here, and `loadtest compare` counts its CPU with the peer's). On
//! SIGTERM, Ctrl-C or any exit the cluster is stopped (immediate shutdown: it
//! is thrown away) and its directory removed. `initdb` runs with `--no-sync`:
//! only the creation of the empty cluster skips fsync, never a claim.
//!
//!     postgres_claim --listen 127.0.0.1:18196 --pg-port 18432 \
//!         --geojson ../shared/data/yichang-420500.geojson --tranche bench \
//!         --quota-per-county 10000000

mod claim_api;

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::TypedValueParser;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_postgres::NoTls;
use voucherd::geo::PolygonIndex;

use claim_api::{Answer, Claim};

/// Connections in the pool unless `--pool-size` says otherwise.
const DEFAULT_POOL_SIZE: usize = 32;
/// Largest pool accepted: every connection is a PostgreSQL backend process,
/// and `loadtest compare` walks at most 64 processes of a server's tree.
const MAX_POOL_SIZE: usize = 48;
/// `max_connections` above the pool: the set-up connection and superusers' reserve.
const SPARE_CONNECTIONS: usize = 8;
/// Longest wait for `initdb` and then for the server to accept connections.
const PG_START_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for one connection attempt, start-up handshake included (a
/// foreign listener on the port must not hang the peer).
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the postmaster to exit after an immediate shutdown request.
const PG_STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How often the immediate-shutdown signal is repeated while waiting.
const SHUTDOWN_RESEND: Duration = Duration::from_millis(250);
/// Store errors printed in full; the rest are only counted.
const ERRORS_PRINTED: u64 = 10;
/// Last bytes of a PostgreSQL log shown when it fails to start.
const LOG_TAIL_BYTES: usize = 2000;
/// The OS user PostgreSQL runs as when this peer runs as root.
const POSTGRES_USER: &str = "postgres";

const SCHEMA: &str = "
CREATE TABLE stock (
    tranche_id text NOT NULL,
    county integer NOT NULL,
    remaining bigint NOT NULL CHECK (remaining >= 0),
    PRIMARY KEY (tranche_id, county)
);
CREATE TABLE claims (
    id bigserial PRIMARY KEY,
    tranche_id text NOT NULL,
    county integer NOT NULL,
    user_id text NOT NULL,
    id_hash text,
    phone_hash text,
    device_id text,
    request_id text NOT NULL,
    lng double precision NOT NULL,
    lat double precision NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX claims_user ON claims (tranche_id, user_id);
CREATE UNIQUE INDEX claims_id_hash ON claims (tranche_id, id_hash);
CREATE UNIQUE INDEX claims_phone_hash ON claims (tranche_id, phone_hash);
CREATE UNIQUE INDEX claims_device ON claims (tranche_id, device_id);
";

const INSERT_CLAIM: &str = "INSERT INTO claims \
    (tranche_id, county, user_id, id_hash, phone_hash, device_id, request_id, lng, lat) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING id";

const TAKE_STOCK: &str = "UPDATE stock SET remaining = remaining - 1 \
    WHERE tranche_id = $1 AND county = $2 AND remaining > 0";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18196")]
    listen: SocketAddr,
    /// Loopback port for the PostgreSQL server this peer starts.
    #[arg(long, default_value_t = 18432)]
    pg_port: u16,
    /// Directory with `initdb` and `postgres`; default: the newest
    /// `/usr/lib/postgresql/<version>/bin`, else the PATH.
    #[arg(long)]
    pg_bin_dir: Option<PathBuf>,
    /// Connections from this peer to PostgreSQL (each claim holds one for its transaction).
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u16).range(1..=MAX_POOL_SIZE as i64).map(usize::from))]
    pool_size: usize,
    #[command(flatten)]
    tranche: claim_api::TrancheArgs,
}

struct Peer {
    index: PolygonIndex,
    tranche: String,
    pool: Pool,
    errors: AtomicU64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postgres_claim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let (index, counties) = claim_api::load_counties(&args.tranche.geojson)?;
    let bin_dir = match &args.pg_bin_dir {
        Some(dir) => dir.clone(),
        None => loadtest::compare::postgres_bin_dir().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin \
                 or on the PATH: apt-get install postgresql",
            )
        })?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // From here on SIGTERM and Ctrl-C are handled, not fatal: a stop asked
        // for during start-up still stops the cluster and removes its directory.
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let dir = std::env::temp_dir().join(format!("postgres-claim-{}", std::process::id()));
        let mut cluster = Cluster::start(&bin_dir, &dir, args.pg_port, args.pool_size)?;
        let result = tokio::select! {
            served = serve(&args, index, &counties, &mut cluster) => served,
            _ = terminate.recv() => Ok(()),
            _ = interrupt.recv() => Ok(()),
        };
        drop(cluster);
        result
    })
}

/// A throwaway cluster: its postmaster (a direct child) and its directory.
struct Cluster {
    postmaster: Child,
    dir: PathBuf,
    port: u16,
}

/// `(uid, gid)` to run PostgreSQL as: the `postgres` user when this process is root.
fn run_as() -> io::Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> io::Result<u32> {
        let out = Command::new("id").args([flag, POSTGRES_USER]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|_| out.status.success())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "running as root, PostgreSQL must run as the '{POSTGRES_USER}' user, \
                         which does not exist (Debian's postgresql-common creates it)"
                    ),
                )
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

impl Cluster {
    fn start(bin_dir: &Path, dir: &Path, port: u16, pool_size: usize) -> io::Result<Cluster> {
        let owner = run_as()?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let command = |program: &str, log: &Path| -> io::Result<Command> {
            let log = File::create(log)?;
            let mut c = Command::new(bin_dir.join(program));
            // initdb needs a working directory it may read.
            c.current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log));
            if let Some((uid, gid)) = owner {
                c.uid(uid).gid(gid);
            }
            Ok(c)
        };
        let data = dir.join("data");
        let initdb_log = dir.join("initdb.log");
        let status = command("initdb", &initdb_log)?
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .status()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{}: {e}", bin_dir.join("initdb").display()),
                )
            })?;
        if !status.success() {
            let tail = log_tail(&initdb_log);
            let _ = std::fs::remove_dir_all(dir);
            return Err(io::Error::other(format!(
                "initdb failed ({status}):\n{tail}"
            )));
        }
        let postgres_log = dir.join("postgres.log");
        let settings = [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            format!("unix_socket_directories={}", dir.display()),
            format!("max_connections={}", pool_size + SPARE_CONNECTIONS),
            "fsync=on".to_owned(),
            "synchronous_commit=on".to_owned(),
            "full_page_writes=on".to_owned(),
            "logging_collector=off".to_owned(),
        ];
        let mut postgres = command("postgres", &postgres_log)?;
        postgres.arg("-D").arg(&data);
        for s in &settings {
            postgres.arg("-c").arg(s);
        }
        let postmaster = match postgres.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", bin_dir.join("postgres").display()),
                ));
            }
        };
        Ok(Cluster {
            postmaster,
            dir: dir.to_owned(),
            port,
        })
    }

    /// The claims' connections: TCP on loopback, like the Redis peer's.
    fn tcp_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("postgres_claim")
            .connect_timeout(CONNECT_ATTEMPT_TIMEOUT);
        config
    }

    /// Waits until this cluster accepts a connection on its unix socket, which
    /// only this postmaster can have created (in this peer's directory): a
    /// foreign server on the TCP port is never mistaken for it. Fails early if
    /// the postmaster exited (e.g. the TCP port was taken: listening on
    /// 127.0.0.1 is then impossible, and that is fatal for PostgreSQL).
    async fn connect(&mut self) -> io::Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("postgres_claim setup");
        let deadline = Instant::now() + PG_START_DEADLINE;
        loop {
            if let Some(status) = self.postmaster.try_wait()? {
                return Err(io::Error::other(format!(
                    "postgres exited at start ({status}):\n{}",
                    log_tail(&self.dir.join("postgres.log"))
                )));
            }
            let attempt =
                tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, config.connect(NoTls)).await;
            match attempt {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(connection);
                    return Ok(client);
                }
                _ if Instant::now() >= deadline => {
                    return Err(io::Error::other(format!(
                        "postgres did not accept connections within {PG_START_DEADLINE:?}:\n{}",
                        log_tail(&self.dir.join("postgres.log"))
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate shutdown: the cluster is thrown away, so no checkpoint.
        // Sent again every SHUTDOWN_RESEND: a postmaster started moments ago
        // may not have installed its handler yet, and if this peer was started
        // with SIGQUIT ignored (a shell's background job), the postmaster
        // inherited that and discards a SIGQUIT that comes too early.
        let pid = rustix::process::Pid::from_child(&self.postmaster);
        let deadline = Instant::now() + PG_STOP_DEADLINE;
        let mut next_signal = Instant::now();
        while matches!(self.postmaster.try_wait(), Ok(None)) {
            let now = Instant::now();
            if now >= deadline {
                let _ = self.postmaster.kill();
                let _ = self.postmaster.wait();
                break;
            }
            if now >= next_signal {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
                next_signal = now + SHUTDOWN_RESEND;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn store_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("postgres: {e}"))
}

async fn serve(
    args: &Args,
    index: PolygonIndex,
    counties: &[u32],
    cluster: &mut Cluster,
) -> io::Result<()> {
    let setup = cluster.connect().await?;
    let version: String = setup
        .query_one("SHOW server_version", &[])
        .await
        .map_err(store_error)?
        .get(0);
    setup.batch_execute(SCHEMA).await.map_err(store_error)?;
    let quota = i64::try_from(args.tranche.quota_per_county)
        .map_err(|_| store_error("--quota-per-county is above bigint"))?;
    for &county in counties {
        let county = i32::try_from(county).map_err(|_| store_error("adcode above integer"))?;
        setup
            .execute(
                "INSERT INTO stock (tranche_id, county, remaining) VALUES ($1, $2, $3)",
                &[&args.tranche.tranche, &county, &quota],
            )
            .await
            .map_err(store_error)?;
    }
    drop(setup);

    let manager = Manager::from_config(
        cluster.tcp_config(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(args.pool_size)
        .build()
        .map_err(store_error)?;
    // Open every connection and prepare both statements on it now, not during
    // the first claims.
    let mut warm = Vec::with_capacity(args.pool_size);
    for _ in 0..args.pool_size {
        let client = pool.get().await.map_err(store_error)?;
        client
            .prepare_cached(INSERT_CLAIM)
            .await
            .map_err(store_error)?;
        client
            .prepare_cached(TAKE_STOCK)
            .await
            .map_err(store_error)?;
        warm.push(client);
    }
    drop(warm);

    let peer = Arc::new(Peer {
        index,
        tranche: args.tranche.tranche.clone(),
        pool,
        errors: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "postgres_claim listening {} (PostgreSQL {version} on 127.0.0.1:{}, synchronous_commit on, pool {})",
        listener.local_addr()?,
        cluster.port,
        args.pool_size
    );
    let result = claim_api::serve_until_signal(listener, || {
        let peer = peer.clone();
        service_fn(move |request| {
            let peer = peer.clone();
            async move {
                Ok::<_, Infallible>(
                    match claim_api::read_claim(&peer.index, &peer.tranche, request).await {
                        Ok(claim) => decide(&peer, claim).await,
                        Err(answer) => answer,
                    },
                )
            }
        })
    })
    .await;
    let errors = peer.errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("postgres_claim: {errors} claims failed in the store (answered 503)");
    }
    peer.pool.close();
    result
}

enum Decision {
    Claimed(i64),
    AlreadyClaimed,
    SoldOut,
}

async fn decide(peer: &Peer, claim: Claim) -> Answer {
    // The `county` column is an integer; adcodes are six digits.
    let Ok(county) = i32::try_from(claim.county) else {
        return claim_api::internal();
    };
    match record(peer, county, &claim).await {
        Ok(Decision::Claimed(id)) => {
            claim_api::claimed(&id.to_string(), &peer.tranche, claim.county)
        }
        Ok(Decision::AlreadyClaimed) => claim_api::already_claimed(),
        Ok(Decision::SoldOut) => claim_api::sold_out(),
        Err(e) => {
            if peer.errors.fetch_add(1, Ordering::Relaxed) < ERRORS_PRINTED {
                eprintln!("postgres_claim: {e}");
            }
            claim_api::unavailable()
        }
    }
}

/// One claim, one transaction; see the module comment for the order.
async fn record(peer: &Peer, county: i32, claim: &Claim) -> Result<Decision, String> {
    let mut client = peer.pool.get().await.map_err(|e| e.to_string())?;
    let insert = client
        .prepare_cached(INSERT_CLAIM)
        .await
        .map_err(|e| e.to_string())?;
    let take = client
        .prepare_cached(TAKE_STOCK)
        .await
        .map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let inserted = tx
        .query_opt(
            &insert,
            &[
                &peer.tranche,
                &county,
                &claim.user_id,
                &claim.id_hash,
                &claim.phone_hash,
                &claim.device_id,
                &claim.request_id,
                &claim.lng,
                &claim.lat,
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = inserted else {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return Ok(Decision::AlreadyClaimed);
    };
    let voucher: i64 = row.get(0);
    let taken = tx
        .execute(&take, &[&peer.tranche, &county])
        .await
        .map_err(|e| e.to_string())?;
    if taken == 0 {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return Ok(Decision::SoldOut);
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Decision::Claimed(voucher))
}
