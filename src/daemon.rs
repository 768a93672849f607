//! `voucherd serve`: load the config, bind the listeners, replay the WAL, seed
//! configured campaigns and tranches, serve until SIGTERM/SIGINT, then drain.
//!
//! This is the outermost edge: the clock, signals, stdout and exit codes live here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::api::{self, App, Listener};
use crate::config::{self, Config, RegionSource};
use crate::core::{DigestKey, MerchantRules, UnixMillis};
use crate::dispenser::{CountyDirectory, Dispenser, Recovered};
use crate::geo::{self, RegionIndex};
use crate::snapshot;
use crate::telemetry::{Telemetry, WalTelemetry};
use crate::wal::{self, WalOptions};
use crate::wire_time::format_beijing;

mod replay;
use replay::Replayed;

/// Exit codes (sysexits.h).
pub const EXIT_OK: i32 = 0;
pub const EXIT_DATA_ERROR: i32 = 65;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_SOFTWARE: i32 = 70;
/// Another process holds the WAL directory's lock (sysexits `EX_TEMPFAIL`).
pub const EXIT_TEMPORARY_FAILURE: i32 = 75;
/// The WAL lives in this directory under `storage.data_dir`.
pub const WAL_DIR_NAME: &str = "wal";
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

/// Makes any panic in this process end it, once the panic is printed: a failed assertion is
/// a broken invariant, and the state it left must not go on serving.
///
/// Without this, a panic in a request's task (under a tranche's lock, say, after part of a
/// claim was applied) ends only that task: tokio keeps running, the lock is released on the
/// way out, and the daemon would go on answering from state it never recorded in the WAL. A
/// panic on the WAL committer's thread would leave every waiting claim unanswered. Aborting
/// instead leaves the WAL as the truth: the supervisor restarts the daemon, which replays it.
pub fn stop_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        eprintln!(
            "voucherd: stopping on a panic (a bug or a broken invariant); the WAL holds every \
             acknowledged decision, and a restart replays it"
        );
        std::process::abort();
    }));
}

/// Runs the daemon; returns the process exit code.
pub fn serve(config_path: &Path) -> i32 {
    stop_on_panic();
    crate::core::digest_index::install_provisioner(crate::prefault::PROVISIONER);
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
    // Before anything is announced: a SIGTERM that arrives right after "ready" must drain,
    // not kill the process with the default disposition.
    let signals = ShutdownSignals::install();
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
        config.lifecycle.code_secret.clone(),
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
    let (dispenser, covered_seq) =
        match tokio::task::spawn_blocking(move || recover(&recover_config, regions)).await {
            Ok(Ok((d, covered_seq))) => (Arc::new(d), covered_seq),
            Ok(Err(code)) => return code,
            Err(e) => {
                tracing::error!(error = %e, "recovery task failed");
                return EXIT_SOFTWARE;
            }
        };
    app.set_ready(dispenser.clone());
    // The last log line of start-up: everything recovery logged comes before it.
    tracing::info!("recovered and serving");
    announce(&format!(
        "voucherd ready at {}",
        format_beijing(system_now())
    ));
    print_try_it(&config, &public_addr);

    let snapshots = snapshot::directory(&config.storage.data_dir);
    let keep_free_bytes = snapshot_keep_free_bytes(config.storage.segment_size_bytes);
    let checkpointer = tokio::spawn(checkpoints(
        dispenser.clone(),
        snapshots.clone(),
        config.storage.checkpoint_every_records,
        config.storage.checkpoint_check_interval,
        keep_free_bytes,
        covered_seq,
        shutdown_tx.subscribe(),
    ));

    let settler = tokio::spawn(settlements(
        dispenser.clone(),
        config.lifecycle.settle_check_interval,
        shutdown_tx.subscribe(),
    ));

    signals.wait().await;
    tracing::info!("draining: refusing new claims, finishing in-flight ones");
    app.start_draining();
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    let _ = settler.await;
    let last_covered = checkpointer.await.unwrap_or(covered_seq);
    if dispenser.wal().durable_seq() > last_covered {
        let final_dispenser = dispenser.clone();
        let _ = tokio::task::spawn_blocking(move || {
            write_checkpoint(&final_dispenser, &snapshots, keep_free_bytes)
        })
        .await;
    }
    dispenser.wal().shutdown();
    tracing::info!("stopped cleanly");
    EXIT_OK
}

/// Free space a snapshot leaves for the WAL while it is written: room for the WAL to roll
/// to its next two segments.
fn snapshot_keep_free_bytes(segment_size_bytes: u64) -> u64 {
    segment_size_bytes.saturating_mul(2)
}

/// After a failed snapshot, the next attempt waits this many check intervals, doubling
/// with each failure in a row up to [`MAX_SNAPSHOT_RETRY_WAIT`]: a disk too full for one
/// is not written to the brim again every few seconds.
const MAX_SNAPSHOT_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Writes a snapshot whenever `every_records` WAL records have followed the
/// last one. Returns the sequence number the newest snapshot covers.
async fn checkpoints(
    dispenser: Arc<Dispenser>,
    dir: PathBuf,
    every_records: u64,
    check_interval: Duration,
    keep_free_bytes: u64,
    mut covered_seq: u64,
    mut shutdown: watch::Receiver<bool>,
) -> u64 {
    let mut tick = tokio::time::interval(check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures_in_a_row = 0u32;
    let mut next_attempt = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return covered_seq,
        }
        let due = every_records > 0
            && dispenser.wal().durable_seq() >= covered_seq.saturating_add(every_records);
        if !due || tokio::time::Instant::now() < next_attempt {
            continue;
        }
        let writer = dispenser.clone();
        let target = dir.clone();
        match tokio::task::spawn_blocking(move || {
            write_checkpoint(&writer, &target, keep_free_bytes)
        })
        .await
        {
            Ok(Some(seq)) => {
                covered_seq = seq;
                failures_in_a_row = 0;
            }
            _ => {
                failures_in_a_row = failures_in_a_row.saturating_add(1);
                let wait = check_interval
                    .saturating_mul(1 << failures_in_a_row.min(16))
                    .min(MAX_SNAPSHOT_RETRY_WAIT);
                next_attempt = tokio::time::Instant::now() + wait;
            }
        }
    }
}

/// Settles tranches whose window or validity ended, and rolls pools into
/// tranches that opened, on a timer. Time enters the core here, as a value.
async fn settlements(
    dispenser: Arc<Dispenser>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let worker = dispenser.clone();
        match tokio::task::spawn_blocking(move || worker.settle_due(system_now())).await {
            Ok(Ok(settled)) if !settled.is_empty() => {
                tracing::info!(
                    events = settled.len(),
                    "tranches settled (closing, expiry or rollover)"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "settlement deferred: the WAL refused the record; retrying next tick")
            }
            Err(e) => tracing::error!(error = %e, "settlement task failed"),
        }
    }
}

/// Captures and writes one snapshot. A failure is logged and counted, never
/// fatal: the WAL still holds every record, and the next attempt retries.
fn write_checkpoint(dispenser: &Dispenser, dir: &Path, keep_free_bytes: u64) -> Option<u64> {
    let started = Instant::now();
    let checkpoint = dispenser.checkpoint();
    let captured = started.elapsed();
    let covered_seq = checkpoint.covered_seq;
    let vouchers = checkpoint.voucher_count();
    let merchants = checkpoint.merchants.len();
    match snapshot::write(dir, &checkpoint, system_now(), keep_free_bytes, |seq| {
        dispenser.wait_durable_blocking(seq)
    }) {
        Ok(Some(path)) => {
            Telemetry::checkpoint_written(covered_seq, started.elapsed());
            tracing::info!(
                path = %path.display(),
                covered_seq,
                vouchers,
                merchants,
                capture_us = captured.as_micros() as u64,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot written"
            );
            Some(covered_seq)
        }
        Ok(None) => None,
        Err(e) => {
            Telemetry::checkpoint_failed();
            tracing::error!(error = %e, "snapshot failed; the WAL still has every record, will retry");
            None
        }
    }
}

async fn bind(config: &Config) -> std::io::Result<(TcpListener, TcpListener)> {
    let public = TcpListener::bind(config.server.public_listen).await?;
    let admin = TcpListener::bind(config.server.admin_listen).await?;
    Ok((public, admin))
}

/// Replays the WAL into fresh state, opens it for appends, seeds the config.
fn recover(config: &Config, regions: RegionIndex) -> Result<(Dispenser, u64), i32> {
    let started = Instant::now();
    let digest_key = DigestKey::new(rand::random(), rand::random());
    let mut recovered =
        Recovered::with_presize_budget(digest_key, config.storage.presize_budget_vouchers);
    let snapshots = snapshot::directory(&config.storage.data_dir);
    let listed = match snapshot::list(&snapshots) {
        Ok(listed) => listed,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the snapshots; refusing to start");
            return Err(EXIT_DATA_ERROR);
        }
    };
    let wal_dir = config.storage.data_dir.join(WAL_DIR_NAME);
    let options = WalOptions {
        dir: wal_dir.clone(),
        segment_size_bytes: config.storage.segment_size_bytes,
        max_batch_records: config.storage.max_batch_records,
        max_batch_bytes: WAL_MAX_BATCH_BYTES
            .min((config.storage.segment_size_bytes / WAL_SEGMENTS_PER_MAX_BATCH) as usize),
        batch_window: config.storage.batch_window,
        max_queue_records: config.server.max_inflight_claims + WAL_QUEUE_HEADROOM_RECORDS,
        observer: Arc::new(WalTelemetry::new()),
        writer: config.storage.writer,
    };
    let Replayed {
        opened,
        covered_seq,
        tail_records,
        erased_before,
    } = match replay::snapshot_and_wal(&listed, options, &mut recovered, started) {
        Ok(replayed) => replayed,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the snapshot; refusing to start. Move the snapshot aside to recover from the full WAL");
            return Err(EXIT_DATA_ERROR);
        }
    };
    let (wal, report) = match opened {
        Ok(pair) => pair,
        // Not damage: say so, and exit with a code a supervisor restarts on.
        Err(e @ wal::OpenError::Io(_)) => {
            tracing::error!(
                error = %e,
                "cannot open the WAL: an I/O error (a full or failing disk?); nothing \
                 recorded is known to be damaged. Free space or fix the device, then start again"
            );
            return Err(wal::WAL_FATAL_EXIT_CODE);
        }
        Err(e @ wal::OpenError::Locked { .. }) => {
            tracing::error!(error = %e, "another process has this WAL open; start again once it has stopped");
            return Err(EXIT_TEMPORARY_FAILURE);
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot recover the WAL; refusing to start. Run `voucherd wal verify {}` for \
                 details, and keep a copy of that directory before any repair",
                wal_dir.display()
            );
            return Err(EXIT_DATA_ERROR);
        }
    };
    // The WAL's exclusive lock is held now: no other process writes snapshots here.
    match snapshot::remove_temporary(&snapshots) {
        Ok((0, _)) => {}
        Ok((files, bytes)) => tracing::warn!(
            files,
            bytes,
            "removed temporary snapshot files left by a crash while a snapshot was written"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot remove temporary snapshot files"),
    }
    if report.last_seq < covered_seq {
        tracing::error!(
            covered_seq,
            wal_last_seq = report.last_seq,
            "the snapshot covers records the WAL does not have; refusing to start (was the WAL directory replaced?)"
        );
        return Err(EXIT_DATA_ERROR);
    }
    if let Err(e) = recovered.check_ledgers() {
        tracing::error!(error = %e, "the recovered state does not add up; refusing to start");
        return Err(EXIT_DATA_ERROR);
    }
    // A kill between publishing a snapshot and removing the oldest leaves one too many;
    // each such crash would add one. Only snapshots older than the one loaded go.
    if covered_seq > 0 {
        match snapshot::remove_older_than_kept(&snapshots, covered_seq) {
            Ok(0) => {}
            Ok(files) => tracing::warn!(
                files,
                "removed old snapshots a crash left behind (beyond the newest {})",
                snapshot::SNAPSHOTS_KEPT
            ),
            Err(e) => tracing::warn!(error = %e, "cannot remove old snapshots"),
        }
    }
    let truncated_tail_bytes = erased_before + report.truncated_tail_bytes;
    Telemetry::replay_finished(tail_records, truncated_tail_bytes, started.elapsed());
    tracing::info!(
        wal_records = report.records,
        applied_after_snapshot = tail_records,
        segments = report.segments,
        truncated_tail_bytes,
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
    let merchant_rules = MerchantRules::new(
        config.counties.iter().map(|c| c.code).collect(),
        config.merchants.industries.clone(),
        config.merchants.platforms.clone(),
    );
    let dispenser = Dispenser::new(recovered, counties, merchant_rules, regions, wal);
    seed(config, &dispenser)?;
    Ok((dispenser, covered_seq))
}

/// Writes configured campaigns and tranches that the records (snapshot and WAL) do not hold
/// yet. Once written, the recorded definition is authoritative: an admin may have changed it
/// since (`PUT /admin/v1/campaigns/{id}`, `PUT /admin/v1/tranches/{id}`), and a restart must
/// neither undo a change that was acknowledged nor refuse to start over a difference between
/// the config and the records. A configured definition that differs from the recorded one is
/// logged, and the recorded one stands; change a live definition through the admin API.
/// One the records do not hold and that cannot be created (the campaign's budget cannot pay
/// for the tranche, a limit is reached) stops the start with exit 64: the config must change.
fn seed(config: &Config, dispenser: &Dispenser) -> Result<(), i32> {
    let now = system_now();
    let mut campaigns_kept = Vec::new();
    for campaign in &config.campaigns {
        match dispenser.campaign_spec(&campaign.campaign_id) {
            Some(recorded) if recorded == *campaign => {}
            Some(recorded) => {
                campaigns_kept.push(campaign.campaign_id.clone());
                tracing::warn!(
                campaign = %campaign.campaign_id,
                recorded = ?recorded,
                configured = ?campaign,
                "configured campaign differs from the recorded one; the recorded definition stands (change it with PUT /admin/v1/campaigns/{{id}})"
                );
            }
            None => match dispenser.define_campaign(campaign.clone()) {
                Ok((_, durability)) => wait(durability)?,
                Err(e) => return Err(seed_refused("campaign", &campaign.campaign_id, &e, &[])),
            },
        }
    }
    for spec in &config.tranches {
        match dispenser.tranche_spec(&spec.tranche_id) {
            Some(recorded) if recorded == *spec => {}
            Some(recorded) => tracing::warn!(
                tranche = %spec.tranche_id,
                recorded_opens_at = %format_beijing(recorded.opens_at),
                configured_opens_at = %format_beijing(spec.opens_at),
                "configured tranche differs from the recorded one; the recorded definition stands (change it with PUT /admin/v1/tranches/{{id}} before it opens)"
            ),
            None => match dispenser.define_tranche(spec.clone(), now) {
                Ok((_, durability)) => wait(durability)?,
                Err(e) => {
                    return Err(seed_refused(
                        "tranche",
                        &spec.tranche_id,
                        &e,
                        &campaigns_kept,
                    ));
                }
            },
        }
    }
    Ok(())
}

/// Logs why a configured campaign or tranche the records lack could not be created, and
/// returns the exit code: 64 (the config must change) unless the WAL refused the record.
fn seed_refused(
    what: &str,
    id: &str,
    error: &crate::dispenser::AdminError,
    campaigns_kept: &[String],
) -> i32 {
    if let crate::dispenser::AdminError::Unavailable(e) = error {
        tracing::error!(kind = what, id, error = %e, "the WAL refused a configured definition during start-up");
        return EXIT_SOFTWARE;
    }
    tracing::error!(
        kind = what,
        id,
        error = ?error,
        recorded_campaigns_kept_over_the_config = ?campaigns_kept,
        "cannot create a configured definition; fix the config (nothing recorded is damaged). A campaign the records hold keeps its recorded definition over the config's: change it with PUT /admin/v1/campaigns/{{id}}"
    );
    config::EXIT_BAD_CONFIG
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

/// SIGTERM and SIGINT, caught from the moment [`ShutdownSignals::install`] returns.
struct ShutdownSignals(Option<(Signal, Signal)>);

impl ShutdownSignals {
    fn install() -> ShutdownSignals {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => ShutdownSignals(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; serving until killed");
                ShutdownSignals(None)
            }
        }
    }

    /// Returns once SIGTERM or SIGINT arrived (at once if one arrived before this call).
    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else {
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
