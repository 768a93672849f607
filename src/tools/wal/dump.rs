//! `voucherd wal dump DIR`: every record as one JSON object per line (JSON Lines), streamed.
//!
//! Each object has `seq`, `type` and the decoded fields of the record, named as in the journal
//! (`src/journal.rs`); nothing is derived except a claim's public `voucher_id`, which needs the
//! tranche's ordinal from its `tranche_defined` record, so ordinals are tracked while
//! streaming. Times are RFC 3339 in Beijing time, money is in fen, county codes are strings as
//! in the HTTP API, and the 64- and 128-bit values (`voucher_random`, `request_fingerprint`)
//! are lowercase hex strings, because many JSON readers round integers above 2^53.
//!
//! One record is decoded, printed and dropped at a time, but every record is also replayed as
//! `serve` replays it (`replay.rs`), which takes what a daemon start takes. A log `serve`
//! refuses is still dumped in full, for forensics (a record that does not decode is left out),
//! and then the first record refused is named on stderr with exit 65: a dump must not pass for
//! a clean log. A reader that goes away early (`| head`) ends the dump, and the replay, with
//! exit 0, unless a record read before that was refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::core::event::{RefundPolicy, Rollover, Settlement};
use crate::core::{Crs, Event, RedemptionId, TrancheControl, VoucherClaimed, VoucherId};
use crate::tools::wal::replay::Replay;
use crate::tools::wal::{Failure, RecordType, Stop, conclude, scan, stdout};
use crate::wire_time::format_beijing;

const TOOL: &str = "dump";

/// Which records to print. Empty `types` means every type.
#[derive(Debug, Clone, Default)]
pub struct DumpFilter {
    /// Only records that name this tranche (so never `campaign_defined`).
    pub tranche: Option<String>,
    pub types: Vec<RecordType>,
}

impl DumpFilter {
    fn accepts(&self, event: &Event) -> bool {
        let type_ok = self.types.is_empty() || self.types.contains(&RecordType::of(event));
        let tranche_ok = match &self.tranche {
            None => true,
            Some(wanted) => tranche_of(event) == Some(wanted.as_str()),
        };
        type_ok && tranche_ok
    }
}

fn tranche_of(event: &Event) -> Option<&str> {
    event.tranche_id()
}

/// Tranche ordinals seen so far, from `tranche_defined` records.
#[derive(Debug, Default)]
pub struct Ordinals(HashMap<String, u32>);

impl Ordinals {
    pub fn observe(&mut self, event: &Event) {
        if let Event::TrancheDefined { ordinal, spec } = event {
            self.0.insert(spec.tranche_id.clone(), *ordinal);
        }
    }

    pub fn get(&self, tranche_id: &str) -> Option<u32> {
        self.0.get(tranche_id).copied()
    }
}

/// Runs `voucherd wal dump`; returns the exit code.
pub fn run(dir: &Path, filter: &DumpFilter) -> i32 {
    let mut out = stdout();
    let mut ordinals = Ordinals::default();
    let mut replay = Replay::new();
    let scanned = scan(dir, |record| {
        let Some(event) = replay.decode(record.seq, record.kind, record.payload) else {
            return Ok(());
        };
        ordinals.observe(&event);
        if filter.accepts(&event) {
            let line = record_json(record.seq, &event, &ordinals);
            serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(Stop::Output)?;
        }
        replay.apply(record.seq, record.kind, event);
        Ok(())
    });
    let refusal = match &scanned {
        Ok(_) => replay.finish(),
        // The reader went away: the dump ends there, and the replay of what it did not read.
        Err(Failure::OutputClosed) => replay.flush(),
        Err(_) => None,
    };
    let finished = scanned.and_then(|scanned| {
        out.flush()?;
        let torn_bytes = scanned.report.truncated_tail_bytes;
        if torn_bytes > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "voucherd wal {TOOL}: note: the log ends in a torn tail of {torn_bytes} bytes \
                 (not records; `voucherd serve` erases it). `voucherd wal verify` says more"
            );
        }
        Ok(())
    });
    conclude(TOOL, finished, refusal)
}

/// The JSON object of one record. `ordinals` must include the record's own tranche definition.
pub fn record_json(seq: u64, event: &Event, ordinals: &Ordinals) -> Value {
    let mut object = match event {
        Event::CampaignDefined(campaign) => json!({
            "campaign_id": campaign.campaign_id,
            "name": campaign.name,
            "budget_fen": campaign.budget_fen,
            "refund_policy": match campaign.refund_policy {
                RefundPolicy::RestoreIfValid => "restore_if_valid",
                RefundPolicy::Prorata => "prorata",
                RefundPolicy::NoRestore => "no_restore",
            },
            "rollover": match campaign.rollover {
                Rollover::None => "none",
                Rollover::NextTranche => "next_tranche",
            },
        }),
        Event::TrancheDefined { ordinal, spec } => {
            let quotas: Map<String, Value> = spec
                .quotas
                .iter()
                .map(|(county, quota)| (county.0.to_string(), Value::from(*quota)))
                .collect();
            json!({
                "tranche_id": spec.tranche_id,
                "ordinal": ordinal,
                "campaign_id": spec.campaign_id,
                "opens_at": format_beijing(spec.opens_at),
                "closes_at": format_beijing(spec.closes_at),
                "expires_at": format_beijing(spec.expires_at),
                "face_value_fen": spec.face_value_fen,
                "threshold_fen": spec.threshold_fen,
                "quotas": quotas,
                "redeem_anywhere_in_city": spec.redeem_anywhere_in_city,
                "industries": spec.industries,
            })
        }
        Event::TrancheControlled {
            tranche_id,
            control,
            at,
        } => json!({
            "tranche_id": tranche_id,
            "control": match control {
                TrancheControl::Pause => "pause",
                TrancheControl::Resume => "resume",
            },
            "at": format_beijing(*at),
        }),
        Event::VoucherClaimed(claim) => claim_json(claim, ordinals.get(claim.tranche_id())),
        Event::VoucherRedeemed(r) => {
            let ordinal = ordinals.get(&r.tranche_id);
            json!({
                "tranche_id": r.tranche_id,
                "voucher_id": ordinal.map(|o| VoucherId { tranche_ordinal: o, random: r.voucher_random }.encode()),
                "redemption_id": ordinal.map(|o| RedemptionId { tranche_ordinal: o, random: r.redemption_random }.encode()),
                "merchant_id": r.merchant_id,
                "order_id": r.order_id,
                "order_amount_fen": r.order_amount_fen,
                "discount_fen": r.discount_fen,
                "code_step": r.code_step,
                "at": format_beijing(r.at),
            })
        }
        Event::RedemptionRefunded(r) => json!({
            "tranche_id": r.tranche_id,
            "redemption_id": ordinals.get(&r.tranche_id).map(|o| RedemptionId { tranche_ordinal: o, random: r.redemption_random }.encode()),
            "refund_id": r.refund_id,
            "amount_fen": r.amount_fen,
            "returned_to_pool_fen": r.returned_fen,
            "voucher_restored": r.restored,
            "at": format_beijing(r.at),
        }),
        Event::TrancheSettled {
            tranche_id,
            settlement,
            at,
        } => json!({
            "tranche_id": tranche_id,
            "settlement": match settlement {
                Settlement::Closed => "closed",
                Settlement::Expired => "expired",
            },
            "at": format_beijing(*at),
        }),
        Event::VouchersRevoked(r) => {
            let ids = |list: &[u64]| -> Vec<Value> {
                list.iter()
                    .map(|random| match ordinals.get(&r.tranche_id) {
                        Some(o) => Value::from(
                            VoucherId {
                                tranche_ordinal: o,
                                random: *random,
                            }
                            .encode(),
                        ),
                        None => Value::Null,
                    })
                    .collect()
            };
            json!({
                "tranche_id": r.tranche_id,
                "revoked_voucher_ids": ids(&r.revoked),
                "flagged_voucher_ids": ids(&r.flagged),
                "reason": r.reason,
                "case_id": r.case_id,
                "at": format_beijing(r.at),
            })
        }
        Event::MerchantsImported(part) => json!({
            "part": part.part,
            "parts": part.parts,
            "merchants": part.merchants.iter().map(|m| json!({
                "merchant_id": m.merchant_id,
                "name": m.name,
                "county": m.county.0.to_string(),
                "industry": m.industry,
                "platform": m.platform,
                "status": m.status.as_str(),
            })).collect::<Vec<_>>(),
        }),
        Event::MerchantStatusChanged(change) => json!({
            "merchant_id": change.merchant_id,
            "status": change.status.as_str(),
            "at": format_beijing(change.at),
        }),
        Event::PoolDrawn(p) => {
            let added: Map<String, Value> = p
                .added
                .iter()
                .map(|(county, n)| (county.0.to_string(), Value::from(*n)))
                .collect();
            json!({
                "tranche_id": p.tranche_id,
                "added": added,
                "amount_fen": p.amount_fen,
                "rollover": p.rollover,
                "at": format_beijing(p.at),
            })
        }
    };
    if let Value::Object(fields) = &mut object {
        fields.insert("seq".to_owned(), Value::from(seq));
        fields.insert("type".to_owned(), Value::from(RecordType::of(event).name()));
    }
    object
}

/// `voucher_id` is null only for a claim on a tranche with no definition before it, which
/// `voucherd wal verify` reports as a log that cannot be replayed.
fn claim_json(claim: &VoucherClaimed, tranche_ordinal: Option<u32>) -> Value {
    let voucher_id = tranche_ordinal.map(|ordinal| {
        VoucherId {
            tranche_ordinal: ordinal,
            random: claim.voucher_random,
        }
        .encode()
    });
    json!({
        "tranche_id": claim.tranche_id(),
        "voucher_id": voucher_id,
        "voucher_random": format!("{:016x}", claim.voucher_random),
        "county": claim.county.0.to_string(),
        "claimed_at": format_beijing(claim.claimed_at),
        "user_id": claim.user_id(),
        "id_hash": claim.id_hash(),
        "phone_hash": claim.phone_hash(),
        "device_id": claim.device_id(),
        "request_id": claim.request_id(),
        "request_fingerprint": format!("{:032x}", claim.request_fingerprint()),
        "location": {
            "lng": claim.location().lng,
            "lat": claim.location().lat,
            "crs": match claim.location().crs {
                Crs::Gcj02 => "gcj02",
                Crs::Wgs84 => "wgs84",
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CampaignSpec, ClaimFields, CountyCode, Location, TrancheSpec, UnixMillis};

    fn tranche(ordinal: u32) -> Event {
        Event::TrancheDefined {
            ordinal,
            spec: TrancheSpec {
                tranche_id: "t-1".into(),
                campaign_id: "yc".into(),
                opens_at: UnixMillis(1_764_554_400_000),
                closes_at: UnixMillis(1_764_558_000_000),
                expires_at: UnixMillis(1_767_150_000_000),
                face_value_fen: 2_000,
                threshold_fen: 10_000,
                quotas: vec![(CountyCode(420502), 10), (CountyCode(420503), 0)],
                redeem_anywhere_in_city: false,
                industries: vec![],
            },
        }
    }

    fn claim() -> Event {
        Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
            tranche_id: "t-1",
            voucher_random: u64::MAX - 1,
            county: CountyCode(420502),
            claimed_at: UnixMillis(1_764_554_400_123),
            user_id: "u1",
            id_hash: Some("ab"),
            phone_hash: None,
            device_id: None,
            request_id: "r1",
            request_fingerprint: 0xfe,
            location: Location {
                lng: 111.25,
                lat: 30.5,
                crs: Crs::Wgs84,
            },
        }))
    }

    /// One check per record type: the whole object, so a renamed or invented field shows.
    fn check(event: &Event, ordinals: &Ordinals, expected: Value) {
        assert_eq!(record_json(7, event, ordinals), expected);
    }

    #[test]
    fn every_record_type_as_json() {
        let mut ordinals = Ordinals::default();
        check(
            &Event::CampaignDefined(CampaignSpec {
                campaign_id: "yc".into(),
                name: "宜昌消费券".into(),
                budget_fen: 5_000,
                refund_policy: RefundPolicy::NoRestore,
                rollover: Rollover::NextTranche,
            }),
            &ordinals,
            json!({"seq": 7, "type": "campaign_defined", "campaign_id": "yc", "name": "宜昌消费券",
                   "budget_fen": 5_000, "refund_policy": "no_restore", "rollover": "next_tranche"}),
        );
        ordinals.observe(&tranche(3));
        check(
            &tranche(3),
            &ordinals,
            json!({
                "seq": 7, "type": "tranche_defined", "tranche_id": "t-1", "ordinal": 3,
                "campaign_id": "yc",
                "opens_at": "2025-12-01T10:00:00.000+08:00",
                "closes_at": "2025-12-01T11:00:00.000+08:00",
                "expires_at": "2025-12-31T11:00:00.000+08:00",
                "face_value_fen": 2000, "threshold_fen": 10000,
                "quotas": {"420502": 10, "420503": 0},
                "redeem_anywhere_in_city": false,
                "industries": [],
            }),
        );
        check(
            &Event::TrancheControlled {
                tranche_id: "t-1".into(),
                control: TrancheControl::Resume,
                at: UnixMillis(0),
            },
            &ordinals,
            json!({
                "seq": 7, "type": "tranche_controlled", "tranche_id": "t-1",
                "control": "resume", "at": "1970-01-01T08:00:00.000+08:00",
            }),
        );
        let expected_id = VoucherId {
            tranche_ordinal: 3,
            random: u64::MAX - 1,
        }
        .encode();
        check(
            &claim(),
            &ordinals,
            json!({
                "seq": 7, "type": "voucher_claimed", "tranche_id": "t-1",
                "voucher_id": expected_id, "voucher_random": "fffffffffffffffe",
                "county": "420502", "claimed_at": "2025-12-01T10:00:00.123+08:00",
                "user_id": "u1", "id_hash": "ab", "phone_hash": null, "device_id": null,
                "request_id": "r1",
                "request_fingerprint": "000000000000000000000000000000fe",
                "location": {"lng": 111.25, "lat": 30.5, "crs": "wgs84"},
            }),
        );
    }

    #[test]
    fn a_claim_without_a_tranche_definition_has_no_voucher_id() {
        let json = record_json(1, &claim(), &Ordinals::default());
        assert_eq!(json["voucher_id"], Value::Null);
    }

    #[test]
    fn filters_by_tranche_and_type() {
        let campaign = Event::CampaignDefined(CampaignSpec {
            campaign_id: "yc".into(),
            name: "n".into(),
            budget_fen: 1,
            refund_policy: RefundPolicy::RestoreIfValid,
            rollover: Rollover::None,
        });
        let cases: [(Option<&str>, Vec<RecordType>, [bool; 3]); 5] = [
            (None, vec![], [true, true, true]),
            (Some("t-1"), vec![], [false, true, true]),
            (Some("t-2"), vec![], [false, false, false]),
            (None, vec![RecordType::VoucherClaimed], [false, false, true]),
            (
                None,
                vec![RecordType::CampaignDefined, RecordType::TrancheDefined],
                [true, true, false],
            ),
        ];
        for (wanted, types, expected) in cases {
            let filter = DumpFilter {
                tranche: wanted.map(str::to_owned),
                types,
            };
            let got = [&campaign, &tranche(0), &claim()].map(|e| filter.accepts(e));
            assert_eq!(got, expected, "{filter:?}");
        }
    }
}
