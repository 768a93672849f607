//! `voucherd serve`: load the config, bind the listeners, replay the WAL, seed
//! configured campaigns and tranches, serve until SIGTERM/SIGINT, then drain.
//!
//! This is the outermost edge: the clock, signals, stdout and exit codes live here.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, App, Listener};
use crate::config::{self, Config, RegionSource};
use crate::core::{DigestKey, TrancheSpec, UnixMillis};
use crate::dispenser::{CountyDirectory, Defined, Dispenser, Recovered};
use crate::geo::{self, RegionIndex};
use crate::telemetry::{Telemetry, WalTelemetry};
use crate::wal::{self, WalOptions};
use crate::wire_time::format_beijing;

/// Exit codes (sysexits.h).
pub const EXIT_OK: i32 = 0;
pub const EXIT_DATA_ERROR: i32 = 65;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_SOFTWARE: i32 = 70;
/// WAL records queued beyond the claim limit, for admin and start-up writes.
const WAL_QUEUE_HEADROOM_RECORDS: usize = 1_024;
/// Bytes per group-commit batch, at most; a batch must also fit in a fresh segment.
const WAL_MAX_BATCH_BYTES: usize = 4 << 20;
const WAL_SEGMENTS_PER_MAX_BATCH: u64 = 4;

/// The wall clock, read only here.
pub fn system_now() -> UnixMillis {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// Runs the daemon; returns the process exit code.
pub fn serve(config_path: &Path) -> i32 {
    let config = match config::load(config_path, system_now(), &|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("voucherd: refusing to start, the configuration has errors:\n{errors}");
            return config::EXIT_BAD_CONFIG;
        }
    };
    let regions = match build_regions(&config) {
        Ok(r) => r,
        Err(reason) => {
            eprintln!(
                "voucherd: refusing to start: {}: regions: {reason}",
                config.source_path.display()
            );
            return config::EXIT_BAD_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("voucherd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("voucherd: cannot start the async runtime: {e}");
            return EXIT_SOFTWARE;
        }
    };
    runtime.block_on(run(config, regions))
}

async fn run(config: Config, regions: RegionIndex) -> i32 {
    let telemetry = match Telemetry::install() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder");
            return EXIT_SOFTWARE;
        }
    };
    let (public, admin) = match bind(&config).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind the listeners");
            return EXIT_UNAVAILABLE;
        }
    };
    let public_addr = public
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    announce(&format!(
        "voucherd listening public={public_addr} admin={admin_addr}"
    ));

    let app = Arc::new(App::new(
        config.server.clone(),
        config.admin_token.clone(),
        telemetry,
        system_now,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let servers = [
        tokio::spawn(api::serve(
            app.clone(),
            public,
            Listener::Public,
            shutdown_rx.clone(),
        )),
        tokio::spawn(api::serve(app.clone(), admin, Listener::Admin, shutdown_rx)),
    ];

    let recover_config = config.clone();
    let dispenser =
        match tokio::task::spawn_blocking(move || recover(&recover_config, regions)).await {
            Ok(Ok(d)) => Arc::new(d),
            Ok(Err(code)) => return code,
            Err(e) => {
                tracing::error!(error = %e, "recovery task failed");
                return EXIT_SOFTWARE;
            }
        };
    app.set_ready(dispenser.clone());
    announce(&format!(
        "voucherd ready at {}",
        format_beijing(system_now())
    ));
    print_try_it(&config, &public_addr);

    wait_for_signal().await;
    tracing::info!("draining: refusing new claims, finishing in-flight ones");
    app.start_draining();
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    dispenser.wal().shutdown();
    tracing::info!("stopped cleanly");
    EXIT_OK
}

async fn bind(config: &Config) -> std::io::Result<(TcpListener, TcpListener)> {
    let public = TcpListener::bind(config.server.public_listen).await?;
    let admin = TcpListener::bind(config.server.admin_listen).await?;
    Ok((public, admin))
}

/// Replays the WAL into fresh state, opens it for appends, seeds the config.
fn recover(config: &Config, regions: RegionIndex) -> Result<Dispenser, i32> {
    let started = Instant::now();
    let digest_key = DigestKey::new(rand::random(), rand::random());
    let mut recovered = Recovered::new(digest_key);
    let options = WalOptions {
        dir: config.storage.data_dir.join("wal"),
        segment_size_bytes: config.storage.segment_size_bytes,
        max_batch_records: config.storage.max_batch_records,
        max_batch_bytes: WAL_MAX_BATCH_BYTES
            .min((config.storage.segment_size_bytes / WAL_SEGMENTS_PER_MAX_BATCH) as usize),
        batch_window: config.storage.batch_window,
        max_queue_records: config.server.max_inflight_claims + WAL_QUEUE_HEADROOM_RECORDS,
        observer: Arc::new(WalTelemetry::new()),
        writer: config.storage.writer,
    };
    let opened = wal::open(options, |record| {
        recovered.apply(record.seq, record.kind, record.payload)
    });
    let (wal, report) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "cannot recover the WAL; refusing to start. Run `voucherd wal verify` on the data directory and keep a copy before any repair");
            return Err(EXIT_DATA_ERROR);
        }
    };
    Telemetry::replay_finished(
        report.records,
        report.truncated_tail_bytes,
        started.elapsed(),
    );
    tracing::info!(
        records = report.records,
        segments = report.segments,
        truncated_tail_bytes = report.truncated_tail_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "WAL replayed"
    );
    let counties = CountyDirectory::new(
        config
            .counties
            .iter()
            .map(|c| (c.code, c.name.clone()))
            .collect(),
    );
    let dispenser = Dispenser::new(recovered, counties, regions, wal);
    seed(config, &dispenser)?;
    Ok(dispenser)
}

/// Writes configured campaigns and tranches that the WAL does not have yet.
/// Once written, the recorded definition is authoritative.
fn seed(config: &Config, dispenser: &Dispenser) -> Result<(), i32> {
    let now = system_now();
    for campaign in &config.campaigns {
        match dispenser.define_campaign(campaign.clone()) {
            Ok((_, durability)) => wait(durability)?,
            Err(e) => {
                tracing::error!(campaign = %campaign.campaign_id, error = ?e, "cannot create configured campaign");
                return Err(EXIT_DATA_ERROR);
            }
        }
    }
    for spec in &config.tranches {
        match dispenser.tranche_spec(&spec.tranche_id) {
            Some(recorded) if recorded == *spec => {}
            Some(recorded) => seed_changed_tranche(dispenser, &recorded, spec, now)?,
            None => match dispenser.define_tranche(spec.clone(), now) {
                Ok((_, durability)) => wait(durability)?,
                Err(e) => {
                    tracing::error!(tranche = %spec.tranche_id, error = ?e, "cannot create configured tranche");
                    return Err(EXIT_DATA_ERROR);
                }
            },
        }
    }
    Ok(())
}

fn seed_changed_tranche(
    dispenser: &Dispenser,
    recorded: &TrancheSpec,
    spec: &TrancheSpec,
    now: UnixMillis,
) -> Result<(), i32> {
    match dispenser.define_tranche(spec.clone(), now) {
        Ok((Defined::Replaced, durability)) => {
            tracing::info!(tranche = %spec.tranche_id, "configured tranche changed before opening; replaced");
            wait(durability)
        }
        Ok((_, durability)) => wait(durability),
        Err(_) => {
            tracing::warn!(
                tranche = %spec.tranche_id,
                recorded_opens_at = %format_beijing(recorded.opens_at),
                configured_opens_at = %format_beijing(spec.opens_at),
                "configured tranche differs from the recorded one, which has already opened; the recorded definition stands"
            );
            Ok(())
        }
    }
}

fn wait(durability: crate::dispenser::Durability) -> Result<(), i32> {
    if durability.wait_blocking() {
        Ok(())
    } else {
        tracing::error!("the WAL stopped during start-up");
        Err(EXIT_SOFTWARE)
    }
}

fn build_regions(config: &Config) -> Result<RegionIndex, String> {
    match &config.regions {
        RegionSource::GeoJson { path } => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let shapes = geo::geojson::parse_feature_collection(&bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for county in &config.counties {
                if !shapes.iter().any(|s| s.adcode == county.code.0) {
                    return Err(format!(
                        "county {} ({}) is not in {}",
                        county.code.0,
                        county.name,
                        path.display()
                    ));
                }
            }
            let configured: Vec<_> = shapes
                .into_iter()
                .filter(|s| config.counties.iter().any(|c| c.code.0 == s.adcode))
                .collect();
            let index =
                geo::polygon::PolygonIndex::build(&configured).map_err(|e| e.to_string())?;
            Ok(RegionIndex::Polygons(index))
        }
        RegionSource::NearestSeat { max_distance_m } => {
            let seats = config
                .counties
                .iter()
                .filter_map(|c| c.seat.map(|seat| (c.code.0, seat)))
                .collect();
            let index =
                geo::seat::SeatIndex::new(seats, *max_distance_m).map_err(|e| e.to_string())?;
            tracing::warn!(
                "regions: nearest-county-seat mode is approximate; point regions at the official boundary GeoJSON in production"
            );
            Ok(RegionIndex::Seats(index))
        }
    }
}

/// The first thing a newcomer wants: a claim that works.
fn print_try_it(config: &Config, public_addr: &str) {
    let Some(tranche) = config.tranches.first() else {
        return;
    };
    let Some((county, seat)) = tranche.quotas.iter().find_map(|(code, _)| {
        let county = config.counties.iter().find(|c| c.code == *code)?;
        Some((county, county.seat?))
    }) else {
        return;
    };
    announce(&format!(
        "try it (tranche {} opens at {}; the county is {} {}):\n  curl -s -X POST http://{public_addr}/v1/claims -H 'content-type: application/json' -d '{{\"tranche_id\":\"{}\",\"user_id\":\"demo-user-1\",\"location\":{{\"lng\":{},\"lat\":{}}},\"request_id\":\"demo-req-1\"}}'\n  curl -s http://{public_addr}/v1/tranches/{}",
        tranche.tranche_id,
        format_beijing(tranche.opens_at),
        county.code.0,
        county.name,
        tranche.tranche_id,
        seat[0],
        seat[1],
        tranche.tranche_id,
    ));
}

fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; serving until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
