//! Records whose checksums are valid but whose content the core could never
//! have decided (over-issue, an identity twice, a redemption of an unknown
//! voucher, money that does not add up, ...) are refused with a typed error
//! when they are replayed from the WAL or loaded from a snapshot, instead of
//! tripping an assertion of the core. The record before the bad one stays
//! applied and nothing of the bad one is: a valid record still applies after it.
//! Inputs found by the `snapshot_load` fuzz target are at the end.

use voucherd::core::event::{
    PoolDrawn, RedemptionRefunded, RefundPolicy, Rollover, Settlement, VoucherRedeemed,
    VouchersRevoked,
};
use voucherd::core::{
    CampaignSpec, ClaimFields, CountyCode, Crs, DigestKey, Event, Location, ReplayConflict,
    TrancheControl, TrancheSpec, UnixMillis, VoucherClaimed,
};
use voucherd::dispenser::{Recovered, ReplayError};
use voucherd::journal;
use voucherd::snapshot::{self, SnapshotError};

const A: CountyCode = CountyCode(420_502);
const B: CountyCode = CountyCode(420_503);
const FACE_FEN: u64 = 500;

fn campaign(id: &str, budget_fen: u64) -> Event {
    Event::CampaignDefined(CampaignSpec {
        campaign_id: id.into(),
        name: id.into(),
        budget_fen,
        refund_policy: RefundPolicy::RestoreIfValid,
        rollover: Rollover::None,
    })
}

fn tranche(ordinal: u32, id: &str, campaign: &str, quotas: &[(CountyCode, u32)]) -> Event {
    Event::TrancheDefined {
        ordinal,
        spec: TrancheSpec {
            tranche_id: id.into(),
            campaign_id: campaign.into(),
            opens_at: UnixMillis(1_000),
            closes_at: UnixMillis(2_000),
            expires_at: UnixMillis(3_000),
            face_value_fen: FACE_FEN,
            threshold_fen: 1_000,
            quotas: quotas.to_vec(),
            redeem_anywhere_in_city: true,
            industries: Vec::new(),
        },
    }
}

fn claim(tranche: &str, user: &str, county: CountyCode, random: u64) -> VoucherClaimed {
    VoucherClaimed::new(ClaimFields {
        tranche_id: tranche,
        voucher_random: random,
        county,
        claimed_at: UnixMillis(1_500),
        user_id: user,
        id_hash: None,
        phone_hash: None,
        device_id: None,
        request_id: &format!("req-{user}"),
        request_fingerprint: u128::from(random),
        location: Location {
            lng: 111.29,
            lat: 30.69,
            crs: Crs::Gcj02,
        },
    })
}

fn redeem(voucher: u64, redemption: u64, order: &str) -> VoucherRedeemed {
    VoucherRedeemed {
        tranche_id: "t1".into(),
        voucher_random: voucher,
        redemption_random: redemption,
        merchant_id: "m1".into(),
        order_id: order.into(),
        order_amount_fen: 2_000,
        discount_fen: FACE_FEN,
        code_step: None,
        at: UnixMillis(1_600),
    }
}

fn refund(redemption: u64, id: &str, amount_fen: u64, returned_fen: u64) -> RedemptionRefunded {
    RedemptionRefunded {
        tranche_id: "t1".into(),
        redemption_random: redemption,
        refund_id: id.into(),
        amount_fen,
        returned_fen,
        restored: false,
        at: UnixMillis(1_700),
    }
}

fn settle(settlement: Settlement) -> Event {
    Event::TrancheSettled {
        tranche_id: "t1".into(),
        settlement,
        at: UnixMillis(2_000),
    }
}

fn revoke(revoked: Vec<u64>, flagged: Vec<u64>) -> VouchersRevoked {
    VouchersRevoked {
        tranche_id: "t1".into(),
        revoked,
        flagged,
        reason: "fraud".into(),
        case_id: "case-1".into(),
        at: UnixMillis(1_800),
    }
}

fn draw(added: Vec<(CountyCode, u32)>, amount_fen: u64) -> Event {
    Event::PoolDrawn(PoolDrawn {
        tranche_id: "t1".into(),
        added,
        amount_fen,
        rollover: false,
        at: UnixMillis(1_900),
    })
}

/// A valid history: campaign c1, tranche t1 (A: 2, B: 1), claims of u1 (A,
/// random 11) and u2 (B, random 12), u1's voucher redeemed (redemption 21, order o-1).
fn history() -> Vec<Event> {
    vec![
        campaign("c1", 10_000_000),
        tranche(0, "t1", "c1", &[(A, 2), (B, 1)]),
        Event::VoucherClaimed(claim("t1", "u1", A, 11)),
        Event::VoucherClaimed(claim("t1", "u2", B, 12)),
        Event::VoucherRedeemed(redeem(11, 21, "o-1")),
    ]
}

fn replayed(events: &[Event], deferred: bool) -> Recovered {
    let mut recovered = Recovered::new(DigestKey::new(5, 6));
    for (i, event) in events.iter().enumerate() {
        let (seq, kind, payload) = (
            i as u64 + 1,
            journal::kind_of(event),
            journal::encode(event),
        );
        if deferred {
            recovered.apply_deferred(seq, kind, &payload)
        } else {
            recovered.apply(seq, kind, &payload)
        }
        .unwrap_or_else(|e| panic!("record {} applies: {e}", i + 1));
    }
    recovered.finish().expect("the history applies");
    recovered
}

/// Applies `bad` after the history as the next WAL record; it must be refused
/// with `expected`, and a valid record must still apply after it. Both ways of
/// applying: one record at a time, and in runs (`apply_deferred`, where a
/// refused claim surfaces at `finish`, still naming its own seq).
fn refused(bad: Event, expected: ReplayConflict) {
    for deferred in [false, true] {
        refused_when(&bad, &expected, deferred);
    }
}

fn refused_when(bad: &Event, expected: &ReplayConflict, deferred: bool) {
    let events = history();
    let mut recovered = replayed(&events, deferred);
    let seq = events.len() as u64 + 1;
    let (kind, payload) = (journal::kind_of(bad), journal::encode(bad));
    let error = if deferred {
        recovered
            .apply_deferred(seq, kind, &payload)
            .and_then(|()| recovered.finish())
    } else {
        recovered.apply(seq, kind, &payload)
    }
    .expect_err("refused");
    match &error {
        ReplayError::Conflict {
            seq: at, conflict, ..
        } => {
            assert_eq!(*at, seq, "deferred: {deferred}");
            assert_eq!(conflict, expected, "{error} (deferred: {deferred})");
        }
        other => panic!("expected a conflict, got {other:?} (deferred: {deferred})"),
    }
    let message = error.to_string();
    assert!(message.contains(&format!("record {seq}")), "{message}");
    assert!(message.contains(journal::kind_name(kind)), "{message}");
    // Nothing of the refused record was applied: u3 still gets county A's last voucher.
    let next = Event::VoucherClaimed(claim("t1", "u3", A, 13));
    recovered
        .apply(seq + 1, journal::kind_of(&next), &journal::encode(&next))
        .expect("a valid record applies after a refused one");
    recovered.check_ledgers().expect("the ledger adds up");
    recovered.check_invariants();
}

/// A claim that does not replay, in the middle of a run of claims: the claims before it
/// are applied, it is refused with its own seq, and the state still checks out.
#[test]
fn a_refused_claim_inside_a_run_names_its_own_seq() {
    let mut events = history();
    for i in 0..10 {
        let mut c = claim("t1", &format!("r{i}"), A, 100 + i);
        if i == 6 {
            // u1 already holds a voucher
            c = VoucherClaimed::new(ClaimFields {
                user_id: "u1",
                ..c.fields()
            });
        }
        events.push(Event::VoucherClaimed(c));
    }
    // Quota A is 2 and u1 holds one of them: give the run room by topping up the tranche.
    events[1] = tranche(0, "t1", "c1", &[(A, 20), (B, 1)]);
    let mut recovered = Recovered::new(DigestKey::new(5, 6));
    let mut first_error = None;
    for (i, event) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        if let Err(e) =
            recovered.apply_deferred(seq, journal::kind_of(event), &journal::encode(event))
        {
            first_error = Some(e);
            break;
        }
    }
    let error = match first_error {
        Some(e) => e,
        None => recovered.finish().expect_err("the duplicate is refused"),
    };
    match error {
        ReplayError::Conflict { seq, conflict, .. } => {
            assert_eq!(seq, history().len() as u64 + 7);
            assert_eq!(conflict, ReplayConflict::IdentityHoldsVoucher);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    recovered.check_invariants();
    recovered.check_ledgers().expect("the ledger adds up");
}

#[test]
fn claims_the_core_would_not_have_issued_are_refused() {
    let claimed = |c: VoucherClaimed| Event::VoucherClaimed(c);
    refused(
        claimed(claim("t9", "u3", A, 13)),
        ReplayConflict::UnknownTranche("t9".into()),
    );
    refused(
        claimed(claim("t1", "u3", CountyCode(420_581), 13)),
        ReplayConflict::CountyNotInTranche(CountyCode(420_581)),
    );
    refused(
        claimed(claim("t1", "u3", B, 13)),
        ReplayConflict::OverIssue {
            county: B,
            quota: 1,
        },
    );
    refused(
        claimed(claim("t1", "u1", A, 13)),
        ReplayConflict::IdentityHoldsVoucher,
    );
    let u3 = claim("t1", "u3", A, 13);
    let same_request = VoucherClaimed::new(ClaimFields {
        request_id: "req-u2",
        ..u3.fields()
    });
    refused(claimed(same_request), ReplayConflict::RequestAnswered);
    refused(
        claimed(claim("t1", "u3", A, 12)),
        ReplayConflict::VoucherIdTaken(12),
    );
}

#[test]
fn lifecycle_events_that_do_not_fit_are_refused() {
    let redeemed = |r: VoucherRedeemed| Event::VoucherRedeemed(r);
    refused(
        redeemed(redeem(99, 22, "o-2")),
        ReplayConflict::UnknownVoucher(99),
    );
    refused(
        redeemed(redeem(11, 22, "o-2")),
        ReplayConflict::VoucherNotClaimed {
            voucher: 11,
            state: voucherd::core::lifecycle::VoucherState::Redeemed,
        },
    );
    refused(
        redeemed(redeem(12, 21, "o-2")),
        ReplayConflict::RedemptionIdTaken(21),
    );
    refused(
        redeemed(redeem(12, 22, "o-1")),
        ReplayConflict::OrderRedeemedTwice,
    );
    let mut discount = redeem(12, 22, "o-2");
    discount.discount_fen = FACE_FEN * 2;
    refused(
        redeemed(discount),
        ReplayConflict::DiscountNotFaceValue {
            discount_fen: FACE_FEN * 2,
            face_value_fen: FACE_FEN,
        },
    );
    let mut small = redeem(12, 22, "o-2");
    small.order_amount_fen = 100;
    refused(
        redeemed(small),
        ReplayConflict::BelowMinimumOrder {
            order_fen: 100,
            minimum_fen: 1_000,
        },
    );

    let refunded = |r: RedemptionRefunded| Event::RedemptionRefunded(r);
    refused(
        refunded(refund(99, "f-1", 100, 0)),
        ReplayConflict::UnknownRedemption(99),
    );
    refused(
        refunded(refund(21, "f-1", 2_001, 0)),
        ReplayConflict::RefundExceedsOrder {
            amount_fen: 2_001,
            refundable_fen: 2_000,
        },
    );
    refused(
        refunded(refund(21, "f-1", 100, FACE_FEN + 1)),
        ReplayConflict::RefundMoney("returns more than the voucher was worth"),
    );
    let mut restores_partly = refund(21, "f-1", 100, 0);
    restores_partly.restored = true;
    refused(
        refunded(restores_partly),
        ReplayConflict::RefundMoney("restores on a partial refund"),
    );

    refused(
        settle(Settlement::Expired),
        ReplayConflict::SettledOutOfOrder(Settlement::Expired),
    );
    let revoked = |r: VouchersRevoked| Event::VouchersRevoked(r);
    refused(
        revoked(revoke(vec![12, 12], vec![])),
        ReplayConflict::RevocationNotSorted,
    );
    refused(
        revoked(revoke(vec![11], vec![])),
        ReplayConflict::VoucherNotClaimed {
            voucher: 11,
            state: voucherd::core::lifecycle::VoucherState::Redeemed,
        },
    );
    refused(
        revoked(revoke(vec![], vec![12])),
        ReplayConflict::NotFlaggable(12),
    );
    refused(
        draw(vec![(CountyCode(420_581), 1)], FACE_FEN),
        ReplayConflict::CountyNotInTranche(CountyCode(420_581)),
    );
    refused(
        draw(vec![(A, 1)], FACE_FEN + 1),
        ReplayConflict::DrawAmount {
            amount_fen: FACE_FEN + 1,
            vouchers: 1,
        },
    );
    refused(
        draw(vec![(A, u32::MAX)], u64::from(u32::MAX) * FACE_FEN),
        ReplayConflict::QuotaOverflow(A),
    );
}

#[test]
fn definitions_that_do_not_fit_are_refused() {
    refused(
        tranche(1, "t2", "c9", &[(A, 1)]),
        ReplayConflict::UnknownCampaign("c9".into()),
    );
    refused(
        tranche(1, "t1", "c1", &[(A, 1)]),
        ReplayConflict::TrancheIdTaken("t1".into()),
    );
    refused(
        tranche(5, "t2", "c1", &[(A, 1)]),
        ReplayConflict::OrdinalSkipsAhead {
            ordinal: 5,
            next: 1,
        },
    );
    refused(
        tranche(0, "t2", "c1", &[(A, 1)]),
        ReplayConflict::OrdinalOfAnotherTranche { ordinal: 0 },
    );
    refused(
        tranche(0, "t1", "c1", &[(A, 5)]),
        ReplayConflict::RedefinedAfter("vouchers were issued"),
    );
}

#[test]
fn events_of_a_tranche_out_of_seq_order_are_refused() {
    let events = history();
    let mut recovered = replayed(&events, false);
    let late = Event::TrancheControlled {
        tranche_id: "t1".into(),
        control: TrancheControl::Pause,
        at: UnixMillis(1_550),
    };
    let error = recovered
        .apply(4, journal::kind_of(&late), &journal::encode(&late))
        .expect_err("refused");
    assert!(
        matches!(
            error,
            ReplayError::Conflict {
                conflict: ReplayConflict::OutOfOrder {
                    seq: 4,
                    after_seq: 5
                },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_campaign_whose_money_does_not_add_up_is_refused_once_replayed() {
    // Each record fits, but the tranche releases more than the campaign's budget.
    let recovered = replayed(
        &[
            campaign("c1", 1_000),
            tranche(0, "t1", "c1", &[(A, 2), (B, 1)]),
        ],
        false,
    );
    let error = recovered.check_ledgers().expect_err("over budget");
    assert!(
        matches!(
            &error,
            ReplayError::State(ReplayConflict::Ledger { campaign_id, .. }) if campaign_id == "c1"
        ),
        "{error}"
    );
    assert!(error.to_string().contains("budget"), "{error}");
}

/// The records of `events`, numbered from seq 1, as (kind, seq, payload).
fn encoded(events: &[Event]) -> Vec<(u8, u64, Vec<u8>)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| (journal::kind_of(e), i as u64 + 1, journal::encode(e)))
        .collect()
}

fn snapshot_file(covered_seq: u64, records: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
    snapshot::encode_records(
        covered_seq,
        UnixMillis(0),
        records.iter().map(|(k, s, p)| (*k, *s, p.as_slice())),
    )
}

fn load(bytes: Vec<u8>) -> Result<snapshot::Loaded, SnapshotError> {
    let path = std::path::Path::new("test.snap");
    let verified = snapshot::verify(path, bytes).expect("checksums and framing are valid");
    verified.apply(&mut Recovered::new(DigestKey::new(7, 8)))
}

#[test]
fn a_snapshot_with_valid_checksums_and_impossible_content_is_refused() {
    let mut events = history();
    let good = encoded(&events);
    let loaded = load(snapshot_file(5, &good)).expect("the valid history loads");
    assert_eq!(loaded.records, 5);

    // An over-issue: a second claim in county B, whose quota is 1.
    events.push(Event::VoucherClaimed(claim("t1", "u3", B, 13)));
    let error = load(snapshot_file(6, &encoded(&events))).expect_err("refused");
    match &error {
        SnapshotError::Apply {
            record,
            source:
                ReplayError::Conflict {
                    seq: 6,
                    conflict: ReplayConflict::OverIssue { county, quota: 1 },
                    ..
                },
            ..
        } => {
            assert_eq!(*record, 5);
            assert_eq!(*county, B);
        }
        other => panic!("expected an over-issue at record 5, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("test.snap: snapshot record 5: record 6 (voucher_claimed): over-issue"),
        "{message}"
    );

    // A redemption of a voucher the snapshot never issued.
    let mut events = history();
    events.push(Event::VoucherRedeemed(redeem(77, 22, "o-2")));
    let error = load(snapshot_file(6, &encoded(&events))).expect_err("refused");
    assert!(
        matches!(
            error,
            SnapshotError::Apply {
                record: 5,
                source: ReplayError::Conflict {
                    conflict: ReplayConflict::UnknownVoucher(77),
                    ..
                },
                ..
            }
        ),
        "{error}"
    );

    // The whole state must add up too: here a budget below what the tranche released.
    let mut events = history();
    events[0] = campaign("c1", 1_000);
    let error = load(snapshot_file(5, &encoded(&events))).expect_err("refused");
    assert!(
        matches!(
            error,
            SnapshotError::Apply {
                record: 5,
                source: ReplayError::State(ReplayConflict::Ledger { .. }),
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_snapshot_record_past_the_covered_seq_is_refused() {
    let error = load(snapshot_file(4, &encoded(&history()))).expect_err("refused");
    match error {
        SnapshotError::Invalid { reason, .. } => {
            assert!(
                reason.contains("record 4 has seq 5, past the covered seq 4"),
                "{reason}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// A `snapshot_load` fuzz input (`fuzz/src/lib.rs`, `SnapshotInput`) framed as the harness
/// frames it: flag bit 0 set, the rest a record stream (a length past the end is cut to what
/// remains); flag bit 1: the covered seq comes first, else it is the largest record seq.
fn framed_fuzz_input(data: &[u8]) -> Vec<u8> {
    let (&flags, mut rest) = data.split_first().expect("a flag byte");
    assert_eq!(flags & 1, 1, "a resealed input");
    let mut covered = None;
    if flags & 2 != 0 {
        covered = Some(u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")));
        rest = &rest[8..];
    }
    let mut records = Vec::new();
    while rest.len() >= 13 {
        let kind = rest[0];
        let seq = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[9..13].try_into().expect("4 bytes")) as usize;
        let body = &rest[13..];
        let len = len.min(body.len());
        records.push((kind, seq, body[..len].to_vec()));
        rest = &body[len..];
    }
    let covered_seq = covered.unwrap_or_else(|| records.iter().map(|r| r.1).max().unwrap_or(0));
    snapshot_file(covered_seq, &records)
}

/// Inputs the `snapshot_load` fuzz target found within 100 s (from the seed corpus) when the
/// replay checks were switched off: each made the core panic on one of its assertions (named
/// by the file). Each is now refused with a typed error naming the record and the reason.
#[test]
fn inputs_found_by_fuzzing_are_refused_without_a_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/snapshot_load");
    let cases = [
        (
            "campaign-over-budget-a",
            "tranches released 10500 fen of a budget of 3 fen",
        ),
        (
            "campaign-over-budget-b",
            "tranches released 1048778288 fen of a budget",
        ),
        (
            "claim-county-not-in-tranche",
            "record 7 (voucher_claimed): county 420502 is not in",
        ),
        ("discount-not-face-value", "is not the face value 500 fen"),
        (
            "draw-county-not-in-tranche",
            "(pool_drawn): county 65942 is not in the tranche",
        ),
        (
            "draw-not-whole-vouchers",
            "pool draw of 500 fen for 1795162113 vouchers",
        ),
        (
            "flag-unknown-voucher",
            "(vouchers_revoked): unknown voucher random",
        ),
        ("identity-twice", "an identity key already holds a voucher"),
        (
            "redeem-unknown-voucher",
            "(voucher_redeemed): unknown voucher random",
        ),
        (
            "refund-exceeds-order",
            "refund of 14417925 fen, 1500 fen refundable",
        ),
        (
            "refund-returns-more-than-face",
            "returns more than the voucher was worth",
        ),
        (
            "refund-unknown-redemption",
            "(redemption_refunded): unknown redemption",
        ),
        ("request-twice", "the request ID was already answered"),
        (
            "revoke-unknown-voucher",
            "(vouchers_revoked): unknown voucher random",
        ),
    ];
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the inputs")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .collect();
    files.sort();
    let mut named: Vec<String> = cases.iter().map(|(f, _)| (*f).to_owned()).collect();
    named.sort();
    assert_eq!(files, named, "every input has a case");
    for (file, expected) in cases {
        let data = std::fs::read(dir.join(file)).expect("read input");
        let error = load(framed_fuzz_input(&data)).expect_err(file);
        assert!(
            matches!(error, SnapshotError::Apply { .. }),
            "{file}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(expected), "{file}: {message}");
    }
}

/// A campaign's refund policy may change between two refunds of one redemption: a pro-rata
/// refund returns part of the voucher's value, then under `restore_if_valid` the full refund
/// restores it. The live core decides that, so replay applies it; what replay refuses is only a
/// refund whose money the tranche does not have (where the core's bucket would go negative).
#[test]
fn a_restore_after_a_partial_return_replays_and_overdrafts_are_refused() {
    let mut events = history();
    events.push(Event::VoucherRedeemed(redeem(12, 22, "o-2")));
    events.push(Event::RedemptionRefunded(refund(21, "f-1", 1_000, 100)));
    let mut restore = refund(21, "f-2", 1_000, 0);
    restore.restored = true;
    events.push(Event::RedemptionRefunded(restore));
    let mut recovered = replayed(&events, false);
    recovered.check_ledgers().expect("adds up");
    recovered.check_invariants();

    // Redeemed now holds 400 fen (1,000 - 100 returned - 500 restored); returning u2's whole
    // 500 fen would take it below zero.
    let overdraft = Event::RedemptionRefunded(refund(22, "f-3", 2_000, FACE_FEN));
    let seq = events.len() as u64 + 1;
    let error = recovered
        .apply(
            seq,
            journal::kind_of(&overdraft),
            &journal::encode(&overdraft),
        )
        .expect_err("refused");
    assert!(
        matches!(
            error,
            ReplayError::Conflict {
                conflict: ReplayConflict::RefundMoney("returns more than the tranche has redeemed"),
                ..
            }
        ),
        "{error}"
    );
    recovered.check_invariants();
}

/// The daemon's two-thread replay: the applying thread's refusal of a record deep in the
/// feed (several batches in) is reported with that record's seq, the feed is told to stop,
/// and a clean feed of the same records builds the same state as `apply`.
#[test]
fn replay_on_two_threads_reports_the_refused_record() {
    let claims = 3 * voucherd::dispenser::REPLAY_PIPELINE_BATCH_RECORDS as u64;
    let refused_at = claims / 2 + 7;
    let mut events = vec![
        campaign("c1", 10_000_000_000),
        tranche(0, "t1", "c1", &[(A, claims as u32), (B, 1)]),
    ];
    for i in 0..claims {
        let seq = events.len() as u64 + 1;
        let user = if seq == refused_at {
            "user-0".to_string() // already holds a voucher
        } else {
            format!("user-{i}")
        };
        events.push(Event::VoucherClaimed(claim("t1", &user, A, 1_000 + i)));
    }
    let records = encoded(&events);
    let mut recovered = Recovered::new(DigestKey::new(1, 2));
    let (fed, applied) = voucherd::dispenser::replay_on_two_threads(&mut recovered, |feed| {
        records
            .iter()
            .try_for_each(|(kind, seq, payload)| feed.push(*seq, *kind, payload))
    });
    match applied {
        Err(ReplayError::Conflict { seq, conflict, .. }) => {
            assert_eq!(seq, refused_at);
            assert_eq!(conflict, ReplayConflict::IdentityHoldsVoucher);
        }
        other => panic!("expected the duplicate to be refused, got {other:?}"),
    }
    assert!(matches!(fed, Ok(()) | Err(ReplayError::Stopped)), "{fed:?}");

    // Without the duplicate, every record is applied (the last, partial batch too) and the
    // state passes its invariants, as with `apply` one record at a time.
    let clean: Vec<_> = records
        .iter()
        .filter(|(_, seq, _)| *seq != refused_at)
        .collect();
    let mut piped = Recovered::new(DigestKey::new(1, 2));
    let (fed, applied) = voucherd::dispenser::replay_on_two_threads(&mut piped, |feed| {
        clean
            .iter()
            .try_for_each(|(kind, seq, payload)| feed.push(*seq, *kind, payload))
    });
    fed.expect("fed");
    applied.expect("applied");
    let mut one_by_one = Recovered::new(DigestKey::new(1, 2));
    for (kind, seq, payload) in &clean {
        one_by_one.apply(*seq, *kind, payload).expect("applies");
    }
    piped.check_invariants();
    one_by_one.check_invariants();
    assert_eq!(piped.records, one_by_one.records);
    assert_eq!(piped.records, claims + 1);
}
