//! `voucherd wal stats DIR [--json]`: what the log holds, counted.
//!
//! Records and payload bytes per record type; per tranche its ordinal, definitions, controls
//! and claims; per county within a tranche its quota and claims. The quota is the one the
//! daemon holds and `GET /v1/tranches/{id}` reports: the latest definition's, plus every pool
//! draw after it (auditors compare claims with it, so a quota without the draws would show a
//! county that drew from the pool as over-issued).
//!
//! Every record is also replayed as `serve` replays it (`replay.rs`): counts of a log `serve`
//! refuses are no audit. The counts are printed all the same, with the first record refused
//! (`replay` in the table, `replay_refusal` in JSON; a record that does not decode is left
//! out of them), and the exit code is 65. The counts take memory bounded by tranches ×
//! counties; the replay takes what a daemon start takes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::core::Event;
use crate::tools::EXIT_CORRUPT;
use crate::tools::wal::replay::Replay;
use crate::tools::wal::{Failure, RecordType, Scanned, conclude, fail, scan, stdout};

const TOOL: &str = "stats";

/// Width of the table's type column: the longest record type name, `merchant_status_changed`
/// (a test checks every name fits, so the columns line up).
const TYPE_COLUMN: usize = 23;

/// How to print the statistics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    /// Aligned tables for people.
    Table,
    /// One JSON object on one line.
    Json,
}

#[derive(Debug, Default, Clone, Copy)]
struct TypeTally {
    records: u64,
    payload_bytes: u64,
}

#[derive(Debug, Default)]
struct CountyTally {
    /// Quota in the tranche's latest definition plus the pool draws after it (as the core's
    /// `apply_draw` adds them); `None` if a claim or draw names a county the definition lacks.
    quota: Option<u32>,
    claims: u64,
}

#[derive(Debug)]
struct TrancheTally {
    tranche_id: String,
    ordinal: Option<u32>,
    definitions: u64,
    controls: u64,
    claims: u64,
    /// Redemptions, refunds, settlements, revocations and pool draws.
    lifecycle: u64,
    counties: BTreeMap<u32, CountyTally>,
}

/// Everything counted while streaming the records.
#[derive(Debug, Default)]
struct Tally {
    first_seq: Option<u64>,
    types: [TypeTally; RecordType::ALL.len()],
    /// In order of first appearance, which is ordinal order in a valid log.
    tranches: Vec<TrancheTally>,
    tranche_positions: HashMap<String, usize>,
}

impl Tally {
    fn add(&mut self, seq: u64, payload_bytes: usize, event: &Event) {
        self.first_seq.get_or_insert(seq);
        let kind = &mut self.types[RecordType::of(event).index()];
        kind.records += 1;
        kind.payload_bytes += payload_bytes as u64;
        match event {
            Event::CampaignDefined(_) => {}
            Event::TrancheDefined { ordinal, spec } => {
                let tranche = self.tranche(&spec.tranche_id);
                tranche.ordinal = Some(*ordinal);
                tranche.definitions += 1;
                // A redefinition replaces the quotas, draws included, as the core's
                // `apply_redefine` does (it is only allowed before any claim or draw, but a
                // county with claims stays listed whatever the log says).
                tranche.counties.retain(|_, county| county.claims > 0);
                for county in tranche.counties.values_mut() {
                    county.quota = None;
                }
                for (county, quota) in &spec.quotas {
                    tranche.counties.entry(county.0).or_default().quota = Some(*quota);
                }
            }
            Event::TrancheControlled { tranche_id, .. } => self.tranche(tranche_id).controls += 1,
            Event::VoucherClaimed(claim) => {
                let tranche = self.tranche(claim.tranche_id());
                tranche.claims += 1;
                tranche.counties.entry(claim.county.0).or_default().claims += 1;
            }
            Event::PoolDrawn(draw) => {
                let tranche = self.tranche(&draw.tranche_id);
                tranche.lifecycle += 1;
                // A county may repeat within one draw: each entry adds. Saturating, because a
                // log `serve` refuses (a quota past u32::MAX) is still counted, then reported.
                for (county, added) in &draw.added {
                    let county = tranche.counties.entry(county.0).or_default();
                    county.quota = county.quota.map(|quota| quota.saturating_add(*added));
                }
            }
            other => {
                if let Some(id) = other.tranche_id() {
                    self.tranche(id).lifecycle += 1;
                }
            }
        }
    }

    fn tranche(&mut self, tranche_id: &str) -> &mut TrancheTally {
        let position = match self.tranche_positions.get(tranche_id) {
            Some(position) => *position,
            None => {
                self.tranches.push(TrancheTally {
                    tranche_id: tranche_id.to_owned(),
                    ordinal: None,
                    definitions: 0,
                    controls: 0,
                    claims: 0,
                    lifecycle: 0,
                    counties: BTreeMap::new(),
                });
                self.tranche_positions
                    .insert(tranche_id.to_owned(), self.tranches.len() - 1);
                self.tranches.len() - 1
            }
        };
        &mut self.tranches[position]
    }

    fn total(&self) -> TypeTally {
        self.types
            .iter()
            .fold(TypeTally::default(), |sum, t| TypeTally {
                records: sum.records + t.records,
                payload_bytes: sum.payload_bytes + t.payload_bytes,
            })
    }
}

/// Runs `voucherd wal stats`; returns the exit code.
pub fn run(dir: &Path, format: StatsFormat) -> i32 {
    let mut tally = Tally::default();
    let mut replay = Replay::new();
    let scanned = scan(dir, |record| {
        if let Some(event) = replay.decode(record.seq, record.kind, record.payload) {
            tally.add(record.seq, record.payload.len(), &event);
            replay.apply(record.seq, record.kind, event);
        }
        Ok(())
    });
    let scanned = match scanned {
        Ok(scanned) => scanned,
        Err(failure) => return fail(TOOL, &failure),
    };
    let refusal = replay.finish();
    let printed = scanned
        .segment_file_bytes()
        .and_then(|file_bytes| match format {
            StatsFormat::Table => print_table(&scanned, file_bytes, &tally, refusal),
            StatsFormat::Json => print_json(&scanned, file_bytes, &tally, refusal),
        });
    conclude(TOOL, printed, refusal)
}

fn seq_range(scanned: &Scanned, tally: &Tally) -> String {
    match tally.first_seq {
        Some(first) => format!("seq {first} ..= {}", scanned.report.last_seq),
        None => "an empty log".to_owned(),
    }
}

fn print_table(
    scanned: &Scanned,
    file_bytes: u64,
    tally: &Tally,
    refusal: Option<&str>,
) -> Result<(), Failure> {
    let report = &scanned.report;
    let mut out = stdout();
    writeln!(out, "WAL directory   {}", scanned.dir.display())?;
    writeln!(
        out,
        "segments        {} ({file_bytes} bytes of preallocated files)",
        report.segments
    )?;
    writeln!(
        out,
        "records         {} ({})",
        report.records,
        seq_range(scanned, tally)
    )?;
    writeln!(
        out,
        "torn tail       {} bytes (not counted; `voucherd serve` erases them)",
        report.truncated_tail_bytes
    )?;
    match refusal {
        None => writeln!(
            out,
            "replay          clean (as `voucherd serve` replays it)"
        )?,
        Some(refusal) => writeln!(
            out,
            "replay          REFUSED (exit {EXIT_CORRUPT}): {refusal}; `voucherd serve` refuses \
             to start on this log, so these counts are no audit"
        )?,
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<TYPE_COLUMN$} {:>10} {:>15}",
        "type", "records", "payload bytes"
    )?;
    for record_type in RecordType::ALL {
        let t = tally.types[record_type.index()];
        writeln!(
            out,
            "{:<TYPE_COLUMN$} {:>10} {:>15}",
            record_type.name(),
            t.records,
            t.payload_bytes
        )?;
    }
    let total = tally.total();
    writeln!(
        out,
        "{:<TYPE_COLUMN$} {:>10} {:>15}",
        "total", total.records, total.payload_bytes
    )?;
    for tranche in &tally.tranches {
        writeln!(out)?;
        let ordinal = tranche
            .ordinal
            .map_or_else(|| "no definition".to_owned(), |o| format!("ordinal {o}"));
        writeln!(
            out,
            "tranche {} ({ordinal}): claims {}, definitions {}, controls {}, lifecycle records {}",
            tranche.tranche_id,
            tranche.claims,
            tranche.definitions,
            tranche.controls,
            tranche.lifecycle
        )?;
        writeln!(out, "  {:<8} {:>10} {:>10}", "county", "quota", "claims")?;
        for (county, c) in &tranche.counties {
            let quota = c.quota.map_or_else(|| "-".to_owned(), |q| q.to_string());
            writeln!(out, "  {county:<8} {quota:>10} {:>10}", c.claims)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_json(
    scanned: &Scanned,
    file_bytes: u64,
    tally: &Tally,
    refusal: Option<&str>,
) -> Result<(), Failure> {
    let report = &scanned.report;
    let types: serde_json::Map<String, Value> = RecordType::ALL
        .iter()
        .map(|record_type| {
            let t = tally.types[record_type.index()];
            (
                record_type.name().to_owned(),
                json!({"records": t.records, "payload_bytes": t.payload_bytes}),
            )
        })
        .collect();
    let tranches: Vec<Value> = tally
        .tranches
        .iter()
        .map(|tranche| {
            let counties: Vec<Value> = tranche
                .counties
                .iter()
                .map(|(county, c)| {
                    json!({"county": county.to_string(), "quota": c.quota, "claims": c.claims})
                })
                .collect();
            json!({
                "tranche_id": tranche.tranche_id,
                "ordinal": tranche.ordinal,
                "definitions": tranche.definitions,
                "controls": tranche.controls,
                "claims": tranche.claims,
                "lifecycle": tranche.lifecycle,
                "counties": counties,
            })
        })
        .collect();
    let total = tally.total();
    let document = json!({
        "wal_dir": scanned.dir.display().to_string(),
        "segments": report.segments,
        "segment_file_bytes": file_bytes,
        "records": report.records,
        "payload_bytes": total.payload_bytes,
        "first_seq": tally.first_seq,
        "last_seq": tally.first_seq.map(|_| report.last_seq),
        "torn_tail_bytes": report.truncated_tail_bytes,
        "replay_refusal": refusal,
        "record_types": types,
        "tranches": tranches,
    });
    let mut out = stdout();
    serde_json::to_writer(&mut out, &document).map_err(std::io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{
        ClaimFields, CountyCode, Crs, Location, TrancheControl, TrancheSpec, UnixMillis,
        VoucherClaimed,
    };

    fn define(quotas: &[(u32, u32)]) -> Event {
        Event::TrancheDefined {
            ordinal: 0,
            spec: TrancheSpec {
                tranche_id: "t".into(),
                campaign_id: "c".into(),
                opens_at: UnixMillis(0),
                closes_at: UnixMillis(1),
                expires_at: UnixMillis(2),
                face_value_fen: 1,
                threshold_fen: 0,
                quotas: quotas.iter().map(|(c, q)| (CountyCode(*c), *q)).collect(),
                redeem_anywhere_in_city: false,
                industries: vec![],
            },
        }
    }

    fn draw(added: &[(u32, u32)]) -> Event {
        Event::PoolDrawn(crate::core::event::PoolDrawn {
            tranche_id: "t".into(),
            added: added.iter().map(|(c, n)| (CountyCode(*c), *n)).collect(),
            amount_fen: added.iter().map(|(_, n)| u64::from(*n)).sum(),
            rollover: false,
            at: UnixMillis(0),
        })
    }

    fn quotas_and_claims(tally: &Tally) -> Vec<(u32, Option<u32>, u64)> {
        tally.tranches[0]
            .counties
            .iter()
            .map(|(county, c)| (*county, c.quota, c.claims))
            .collect()
    }

    fn claim(county: u32) -> Event {
        Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
            tranche_id: "t",
            voucher_random: u64::from(county),
            county: CountyCode(county),
            claimed_at: UnixMillis(0),
            user_id: "u",
            id_hash: None,
            phone_hash: None,
            device_id: None,
            request_id: "r",
            request_fingerprint: 0,
            location: Location {
                lng: 0.0,
                lat: 0.0,
                crs: Crs::Gcj02,
            },
        }))
    }

    #[test]
    fn counts_per_type_tranche_and_county() {
        let mut tally = Tally::default();
        let events = [
            define(&[(1, 5), (2, 5)]),
            define(&[(2, 7), (3, 9)]),
            Event::TrancheControlled {
                tranche_id: "t".into(),
                control: TrancheControl::Pause,
                at: UnixMillis(0),
            },
            claim(2),
            claim(2),
            claim(3),
        ];
        for (seq, event) in (1..).zip(&events) {
            tally.add(seq, 10, event);
        }
        assert_eq!(tally.first_seq, Some(1));
        let records: Vec<u64> = tally.types.iter().map(|t| t.records).collect();
        assert_eq!(records, [0, 2, 1, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(tally.total().payload_bytes, 60);
        let [tranche] = tally.tranches.as_slice() else {
            panic!("one tranche: {:?}", tally.tranches)
        };
        assert_eq!(
            (
                tranche.ordinal,
                tranche.definitions,
                tranche.controls,
                tranche.claims
            ),
            (Some(0), 2, 1, 3)
        );
        let counties: Vec<(u32, Option<u32>, u64)> = tranche
            .counties
            .iter()
            .map(|(county, c)| (*county, c.quota, c.claims))
            .collect();
        assert_eq!(counties, [(2, Some(7), 2), (3, Some(9), 1)]);
    }

    #[test]
    fn every_record_type_name_fits_the_type_column() {
        for record_type in RecordType::ALL {
            assert!(record_type.name().len() <= TYPE_COLUMN, "{record_type:?}");
        }
    }

    /// Found by review: a pool draw raises a county's quota in the daemon (`GET
    /// /v1/tranches/{id}`), but stats reported the defined quota, so claims against drawn
    /// vouchers looked like over-issuance.
    #[test]
    fn quotas_include_pool_draws_with_repeated_counties() {
        let mut tally = Tally::default();
        let events = [
            define(&[(2, 1), (3, 4)]),
            draw(&[(2, 1), (2, 1)]),
            draw(&[(2, 1), (3, 5)]),
            claim(2),
            claim(2),
            claim(2),
            claim(2),
        ];
        for (seq, event) in (1..).zip(&events) {
            tally.add(seq, 10, event);
        }
        assert_eq!(
            quotas_and_claims(&tally),
            [(2, Some(4), 4), (3, Some(9), 0)]
        );
        assert_eq!(
            tally.tranches[0].lifecycle, 2,
            "draws are lifecycle records"
        );
    }

    /// A redefinition replaces the quotas; draws after it add to the new ones. (A draw before a
    /// redefinition makes a log `serve` refuses; stats then shows the redefinition's quotas, as
    /// the core's `apply_redefine` would.)
    #[test]
    fn quotas_are_the_latest_definition_plus_later_draws() {
        let mut tally = Tally::default();
        let events = [
            define(&[(1, 5), (2, 5)]),
            draw(&[(1, 3)]),
            define(&[(2, 7), (3, 9)]),
            draw(&[(2, 2), (3, 1)]),
            claim(3),
        ];
        for (seq, event) in (1..).zip(&events) {
            tally.add(seq, 10, event);
        }
        assert_eq!(
            quotas_and_claims(&tally),
            [(2, Some(9), 0), (3, Some(10), 1)]
        );
    }

    /// A draw naming a county the definition lacks (refused by replay) invents no quota, and
    /// quotas past `u32::MAX` saturate instead of panicking.
    #[test]
    fn bad_draws_neither_invent_quotas_nor_panic() {
        let mut tally = Tally::default();
        let events = [define(&[(2, 1)]), draw(&[(2, u32::MAX), (5, 1)])];
        for (seq, event) in (1..).zip(&events) {
            tally.add(seq, 10, event);
        }
        assert_eq!(
            quotas_and_claims(&tally),
            [(2, Some(u32::MAX), 0), (5, None, 0)]
        );
    }
}
