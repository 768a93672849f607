//! Metrics from typed events.
//!
//! Code elsewhere never names a metric: it calls one of the methods here, one
//! per event. Label values come from closed sets (claim outcomes, tranche IDs,
//! county codes, merchant statuses), never from users, vouchers or merchants. Hot counters are
//! looked up once and kept as handles.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::StatusCounts;
use crate::dispenser::TrancheView;

/// Claim outcomes, the only values of the `outcome` label.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcomeLabel {
    Claimed,
    Replayed,
    AlreadyClaimed,
    SoldOut,
    NotOpen,
    Closed,
    Paused,
    OutsideArea,
    UnknownTranche,
    RequestIdReused,
    InvalidRequest,
    BodyTooLarge,
    Overloaded,
    Unavailable,
}

impl ClaimOutcomeLabel {
    pub const ALL: [ClaimOutcomeLabel; 14] = [
        ClaimOutcomeLabel::Claimed,
        ClaimOutcomeLabel::Replayed,
        ClaimOutcomeLabel::AlreadyClaimed,
        ClaimOutcomeLabel::SoldOut,
        ClaimOutcomeLabel::NotOpen,
        ClaimOutcomeLabel::Closed,
        ClaimOutcomeLabel::Paused,
        ClaimOutcomeLabel::OutsideArea,
        ClaimOutcomeLabel::UnknownTranche,
        ClaimOutcomeLabel::RequestIdReused,
        ClaimOutcomeLabel::InvalidRequest,
        ClaimOutcomeLabel::BodyTooLarge,
        ClaimOutcomeLabel::Overloaded,
        ClaimOutcomeLabel::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOutcomeLabel::Claimed => "claimed",
            ClaimOutcomeLabel::Replayed => "replayed",
            ClaimOutcomeLabel::AlreadyClaimed => "already_claimed",
            ClaimOutcomeLabel::SoldOut => "sold_out",
            ClaimOutcomeLabel::NotOpen => "not_open",
            ClaimOutcomeLabel::Closed => "closed",
            ClaimOutcomeLabel::Paused => "paused",
            ClaimOutcomeLabel::OutsideArea => "outside_area",
            ClaimOutcomeLabel::UnknownTranche => "unknown_tranche",
            ClaimOutcomeLabel::RequestIdReused => "request_id_reused",
            ClaimOutcomeLabel::InvalidRequest => "invalid_request",
            ClaimOutcomeLabel::BodyTooLarge => "body_too_large",
            ClaimOutcomeLabel::Overloaded => "overloaded",
            ClaimOutcomeLabel::Unavailable => "unavailable",
        }
    }
}

/// How a merchant import ended, the only values of its `outcome` label.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ImportOutcomeLabel {
    Imported,
    Validated,
    Invalid,
    Unavailable,
}

impl ImportOutcomeLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportOutcomeLabel::Imported => "imported",
            ImportOutcomeLabel::Validated => "validated",
            ImportOutcomeLabel::Invalid => "invalid",
            ImportOutcomeLabel::Unavailable => "unavailable",
        }
    }
}

/// Claim latency buckets in seconds: 50 µs to 5 s.
const CLAIM_SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// WAL sync latency buckets in seconds: 50 µs to 1 s.
const SYNC_SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
    0.256, 0.512, 1.0,
];
/// Records per WAL batch.
const BATCH_RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

pub struct Telemetry {
    handle: PrometheusHandle,
    claims: Vec<Counter>,
    claim_seconds: Histogram,
    connections_open: Gauge,
    connections_rejected: Counter,
}

impl Telemetry {
    /// Installs the process-wide recorder. Call once.
    pub fn install() -> Result<Telemetry, String> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("voucherd_claim_duration_seconds".into()),
                CLAIM_SECONDS_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("voucherd_wal_sync_duration_seconds".into()),
                    SYNC_SECONDS_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("voucherd_wal_batch_records".into()),
                    BATCH_RECORDS_BUCKETS,
                )
            })
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| e.to_string())?;
        describe();
        metrics::gauge!("voucherd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Telemetry {
            handle,
            claims: ClaimOutcomeLabel::ALL
                .iter()
                .map(|o| metrics::counter!("voucherd_claims_total", "outcome" => o.as_str()))
                .collect(),
            claim_seconds: metrics::histogram!("voucherd_claim_duration_seconds"),
            connections_open: metrics::gauge!("voucherd_http_connections_open"),
            connections_rejected: metrics::counter!("voucherd_http_connections_rejected_total"),
        })
    }

    pub fn claim_finished(&self, outcome: ClaimOutcomeLabel, elapsed: Duration) {
        let index = ClaimOutcomeLabel::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is listed");
        self.claims[index].increment(1);
        self.claim_seconds.record(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.connections_open.increment(1.0);
    }
    pub fn connection_closed(&self) {
        self.connections_open.decrement(1.0);
    }
    pub fn connection_rejected(&self) {
        self.connections_rejected.increment(1);
    }

    /// An import request ended. `rejected_rows` are the data rows of a file
    /// that was refused (a refused file imports none of its rows).
    pub fn merchant_import_finished(
        &self,
        outcome: ImportOutcomeLabel,
        created: usize,
        unchanged: usize,
        rejected_rows: usize,
    ) {
        metrics::counter!("voucherd_merchant_imports_total", "outcome" => outcome.as_str())
            .increment(1);
        if outcome == ImportOutcomeLabel::Validated {
            return;
        }
        for (result, rows) in [
            ("created", created),
            ("unchanged", unchanged),
            ("rejected", rejected_rows),
        ] {
            metrics::counter!("voucherd_merchant_import_rows_total", "result" => result)
                .increment(rows as u64);
        }
    }

    /// Refreshes the merchant gauges just before a scrape.
    pub fn merchants_observed(totals: StatusCounts) {
        metrics::gauge!("voucherd_merchants", "status" => "active").set(totals.active as f64);
        metrics::gauge!("voucherd_merchants", "status" => "suspended").set(totals.suspended as f64);
    }

    pub fn replay_finished(records: u64, truncated_tail_bytes: u64, elapsed: Duration) {
        metrics::gauge!("voucherd_wal_replayed_records").set(records as f64);
        metrics::gauge!("voucherd_wal_replay_duration_seconds").set(elapsed.as_secs_f64());
        metrics::counter!("voucherd_wal_truncated_tail_bytes_total")
            .increment(truncated_tail_bytes);
    }

    pub fn checkpoint_written(covered_seq: u64, elapsed: Duration) {
        metrics::counter!("voucherd_checkpoints_total", "result" => "written").increment(1);
        metrics::gauge!("voucherd_checkpoint_covered_seq").set(covered_seq as f64);
        metrics::gauge!("voucherd_checkpoint_duration_seconds").set(elapsed.as_secs_f64());
    }

    pub fn checkpoint_failed() {
        metrics::counter!("voucherd_checkpoints_total", "result" => "failed").increment(1);
    }

    pub fn ready_changed(ready: bool) {
        metrics::gauge!("voucherd_ready").set(if ready { 1.0 } else { 0.0 });
    }

    /// Refreshes per-tranche gauges just before a scrape.
    pub fn tranche_observed(view: &TrancheView) {
        for county in &view.counties {
            metrics::gauge!(
                "voucherd_tranche_remaining_vouchers",
                "tranche" => view.spec.tranche_id.clone(),
                "county" => county.county.0.to_string()
            )
            .set(f64::from(county.quota - county.issued));
            metrics::gauge!(
                "voucherd_tranche_quota_vouchers",
                "tranche" => view.spec.tranche_id.clone(),
                "county" => county.county.0.to_string()
            )
            .set(f64::from(county.quota));
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Observer the WAL committer reports batches to.
pub struct WalTelemetry {
    batch_records: Histogram,
    batch_bytes: Counter,
    records: Counter,
    sync_seconds: Histogram,
}

impl WalTelemetry {
    pub fn new() -> WalTelemetry {
        WalTelemetry {
            batch_records: metrics::histogram!("voucherd_wal_batch_records"),
            batch_bytes: metrics::counter!("voucherd_wal_written_bytes_total"),
            records: metrics::counter!("voucherd_wal_records_total"),
            sync_seconds: metrics::histogram!("voucherd_wal_sync_duration_seconds"),
        }
    }
}

impl Default for WalTelemetry {
    fn default() -> Self {
        WalTelemetry::new()
    }
}

impl crate::wal::WalObserver for WalTelemetry {
    fn batch_synced(&self, records: usize, bytes: usize, sync_duration: Duration) {
        self.batch_records.record(records as f64);
        self.batch_bytes.increment(bytes as u64);
        self.records.increment(records as u64);
        self.sync_seconds.record(sync_duration.as_secs_f64());
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "voucherd_claims_total",
        "Claim requests answered, by outcome."
    );
    describe_histogram!(
        "voucherd_claim_duration_seconds",
        Unit::Seconds,
        "Time from a claim's parsed body to its answer, including the WAL sync."
    );
    describe_histogram!(
        "voucherd_wal_batch_records",
        "Records written per WAL group commit."
    );
    describe_histogram!(
        "voucherd_wal_sync_duration_seconds",
        Unit::Seconds,
        "Duration of one WAL sync (msync)."
    );
    describe_counter!(
        "voucherd_wal_written_bytes_total",
        Unit::Bytes,
        "Bytes written to the WAL."
    );
    describe_counter!(
        "voucherd_wal_records_total",
        "Records made durable in the WAL."
    );
    describe_gauge!(
        "voucherd_wal_replayed_records",
        "Records replayed from the WAL at start-up."
    );
    describe_gauge!(
        "voucherd_wal_replay_duration_seconds",
        Unit::Seconds,
        "Time the start-up replay took."
    );
    describe_counter!(
        "voucherd_wal_truncated_tail_bytes_total",
        Unit::Bytes,
        "Bytes of torn WAL tail truncated at start-up."
    );
    describe_gauge!(
        "voucherd_tranche_remaining_vouchers",
        "Vouchers left, per tranche and county."
    );
    describe_gauge!(
        "voucherd_tranche_quota_vouchers",
        "Voucher quota, per tranche and county."
    );
    describe_gauge!(
        "voucherd_http_connections_open",
        "Open HTTP connections on both listeners."
    );
    describe_counter!(
        "voucherd_http_connections_rejected_total",
        "Connections refused because the connection limit was reached."
    );
    describe_gauge!(
        "voucherd_ready",
        "1 once WAL replay has finished and the daemon accepts claims."
    );
    describe_gauge!(
        "voucherd_merchants",
        "Merchants in the registry, by status."
    );
    describe_counter!(
        "voucherd_merchant_imports_total",
        "Merchant import requests, by outcome (imported, validated by a dry run, invalid, unavailable)."
    );
    describe_counter!(
        "voucherd_merchant_import_rows_total",
        "Rows of merchant imports: created, unchanged (already recorded), or rejected with their file."
    );
    describe_gauge!(
        "voucherd_build_info",
        "Always 1; labels carry the build version."
    );
}
