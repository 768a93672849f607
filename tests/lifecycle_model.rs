//! Model test of the voucher lifecycle and the money ledger: random sequences
//! of claims, redemptions (valid and invalid), refunds under each policy,
//! closing, expiry, revocations and pool draws, against a reference model that
//! tracks each voucher and redemption with plain rules. After every step the
//! core's own invariants hold, the ledger adds up to the budget, and every
//! money bucket equals the model's independent sum.

use std::sync::Arc;

use proptest::prelude::*;
use voucherd::core::event::{PoolDrawn, RefundPolicy, Settlement};
use voucherd::core::lifecycle::{
    Ledger, MerchantFacts, RedeemCommand, RedeemRefusal, RefundDecision, RefundRefusal,
    VoucherState,
};
use voucherd::core::{
    ClaimCommand, ClaimDecision, CountyCode, Crs, DigestKey, Event, IdentityKeys, Location,
    TrancheBook, TrancheSpec, UnixMillis,
};

const FACE: u64 = 2_000;
const THRESHOLD: u64 = 10_000;
const OPENS: i64 = 1_000;
const CLOSES: i64 = 2_000;
const EXPIRES: i64 = 3_000;
const BUDGET: u64 = 1_000_000;
const A: CountyCode = CountyCode(420502);
const B: CountyCode = CountyCode(420503);

#[derive(Clone, Debug)]
enum Op {
    Claim {
        county_b: bool,
        time: i64,
    },
    Redeem {
        voucher: u8,
        merchant_b: bool,
        active: bool,
        industry_ok: bool,
        amount: u64,
        time: i64,
    },
    Refund {
        redemption: u8,
        refund_id: u8,
        amount: u64,
        time: i64,
    },
    Settle {
        time: i64,
    },
    Revoke {
        vouchers: Vec<u8>,
        time: i64,
    },
    Draw {
        vouchers: u8,
        time: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let time = prop_oneof![3 => OPENS..CLOSES, 1 => CLOSES..EXPIRES, 1 => EXPIRES..4_000];
    prop_oneof![
        6 => (any::<bool>(), OPENS..CLOSES).prop_map(|(county_b, time)| Op::Claim { county_b, time }),
        6 => (any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.9), prop::bool::weighted(0.9), prop_oneof![1 => 0u64..10_000, 6 => 10_000u64..30_000], time.clone())
            .prop_map(|(voucher, merchant_b, active, industry_ok, amount, time)| Op::Redeem { voucher, merchant_b, active, industry_ok, amount, time }),
        4 => (any::<u8>(), 0u8..3, 1u64..30_000, time.clone()).prop_map(|(redemption, refund_id, amount, time)| Op::Refund { redemption, refund_id, amount, time }),
        1 => time.clone().prop_map(|time| Op::Settle { time }),
        1 => (prop::collection::vec(any::<u8>(), 1..4), time.clone()).prop_map(|(vouchers, time)| Op::Revoke { vouchers, time }),
        1 => (1u8..5, OPENS..CLOSES).prop_map(|(vouchers, time)| Op::Draw { vouchers, time }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum MState {
    Claimed,
    Redeemed(usize),
    Expired,
    Revoked,
}

#[derive(Clone, Debug)]
struct MRedemption {
    order: u64,
    refunded: u64,
    returned: u64,
    refund_ids: Vec<(u8, u64)>,
    restored: bool,
    flagged: bool,
    done: bool,
}

struct Model {
    policy: RefundPolicy,
    quota: [u32; 2],
    issued: [u32; 2],
    vouchers: Vec<(CountyCode, MState)>,
    redemptions: Vec<MRedemption>,
    closed: bool,
    expired: bool,
    drawn: u64,
    released: u64,
    now: i64,
}

impl Model {
    fn outstanding(&self) -> u64 {
        let live = self
            .vouchers
            .iter()
            .filter(|v| v.1 == MState::Claimed)
            .count() as u64;
        let unclaimed = if self.closed {
            0
        } else {
            u64::from(self.quota[0] - self.issued[0] + self.quota[1] - self.issued[1])
        };
        (live + unclaimed) * FACE
    }
    fn redeemed(&self) -> u64 {
        self.redemptions
            .iter()
            .filter(|r| !r.restored && !r.flagged)
            .map(|r| FACE - r.returned)
            .sum()
    }
    fn revoked(&self) -> u64 {
        self.redemptions
            .iter()
            .filter(|r| r.flagged)
            .map(|r| FACE - r.returned)
            .sum()
    }
}

fn spec() -> TrancheSpec {
    TrancheSpec {
        tranche_id: "t".into(),
        campaign_id: "c".into(),
        opens_at: UnixMillis(OPENS),
        closes_at: UnixMillis(CLOSES),
        expires_at: UnixMillis(EXPIRES),
        face_value_fen: FACE,
        threshold_fen: THRESHOLD,
        quotas: vec![(A, 6), (B, 4)],
        redeem_anywhere_in_city: false,
        industries: vec!["零售".into(), "餐饮".into()],
    }
}

fn run(policy: RefundPolicy, ops: Vec<Op>) {
    let mut book = TrancheBook::new(0, spec(), DigestKey::new(5, 6), 1);
    let mut m = Model {
        policy,
        quota: [6, 4],
        issued: [0, 0],
        vouchers: Vec::new(),
        redemptions: Vec::new(),
        closed: false,
        expired: false,
        drawn: 0,
        released: 10 * FACE,
        now: OPENS,
    };
    let mut seq = 1u64;
    let mut entropy = 77u64;
    for (step, op) in ops.into_iter().enumerate() {
        seq += 1;
        entropy = entropy
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        match op {
            Op::Claim { county_b, time } => {
                // Time only moves forward, as on a real clock.
                let time = time.max(m.now);
                m.now = time;
                let county = if county_b { B } else { A };
                let user = format!("u{step}");
                let cmd = ClaimCommand {
                    identity: IdentityKeys {
                        user_id: &user,
                        id_hash: None,
                        phone_hash: None,
                        device_id: None,
                    },
                    request_id: &user,
                    request_fingerprint: step as u128,
                    county: Some(county),
                    location: Location {
                        lng: 111.3,
                        lat: 30.7,
                        crs: Crs::Gcj02,
                    },
                    entropy,
                };
                let i = usize::from(county_b);
                let want = time < CLOSES && m.issued[i] < m.quota[i];
                match book.decide_claim(&cmd, UnixMillis(time)) {
                    ClaimDecision::Issue { event, digests } => {
                        assert!(want, "step {step}: issued past quota or window");
                        book.apply_claim(event, &digests, seq);
                        m.issued[i] += 1;
                        m.vouchers.push((county, MState::Claimed));
                    }
                    ClaimDecision::Refused(_) => {
                        assert!(!want, "step {step}: refused a valid claim")
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Op::Redeem {
                voucher,
                merchant_b,
                active,
                industry_ok,
                amount,
                time,
            } => {
                if m.vouchers.is_empty() {
                    continue;
                }
                let time = time.max(m.now);
                m.now = time;
                let v = usize::from(voucher) % m.vouchers.len();
                let merchant_county = if merchant_b { B } else { A };
                let industry = if industry_ok { "餐饮" } else { "汽车" };
                let cmd = RedeemCommand {
                    voucher_index: v as u32,
                    merchant_id: "m",
                    merchant: MerchantFacts {
                        active,
                        county: merchant_county,
                        industry,
                    },
                    order_id: "o",
                    order_amount_fen: amount,
                    code_step: None,
                    entropy,
                };
                let expected = match &m.vouchers[v].1 {
                    MState::Redeemed(_) => Err(RedeemRefusal::AlreadyRedeemed),
                    MState::Revoked => Err(RedeemRefusal::VoucherRevoked),
                    MState::Expired => Err(RedeemRefusal::VoucherExpired),
                    MState::Claimed if time >= EXPIRES => Err(RedeemRefusal::VoucherExpired),
                    MState::Claimed if !active => Err(RedeemRefusal::MerchantSuspended),
                    MState::Claimed if merchant_county != m.vouchers[v].0 => {
                        Err(RedeemRefusal::CountyMismatch)
                    }
                    MState::Claimed if !industry_ok => Err(RedeemRefusal::IndustryNotAllowed),
                    MState::Claimed if amount < THRESHOLD => Err(RedeemRefusal::BelowThreshold {
                        minimum_order_fen: THRESHOLD,
                    }),
                    MState::Claimed => Ok(()),
                };
                match (book.decide_redeem(&cmd, UnixMillis(time)), expected) {
                    (Ok(event), Ok(())) => {
                        assert_eq!(event.discount_fen, FACE);
                        book.apply_event(Arc::new(Event::VoucherRedeemed(event)), seq);
                        m.redemptions.push(MRedemption {
                            order: amount,
                            refunded: 0,
                            returned: 0,
                            refund_ids: Vec::new(),
                            restored: false,
                            flagged: false,
                            done: false,
                        });
                        m.vouchers[v].1 = MState::Redeemed(m.redemptions.len() - 1);
                    }
                    (Err(got), Err(want)) => assert_eq!(got, want, "step {step}"),
                    (got, want) => panic!("step {step}: got {got:?}, model says {want:?}"),
                }
            }
            Op::Refund {
                redemption,
                refund_id,
                amount,
                time,
            } => {
                if m.redemptions.is_empty() {
                    continue;
                }
                let time = time.max(m.now);
                m.now = time;
                let r = usize::from(redemption) % m.redemptions.len();
                let decision = book.decide_refund(
                    r as u32,
                    &format!("f{refund_id}"),
                    amount,
                    m.policy,
                    UnixMillis(time),
                );
                let mr = m.redemptions[r].clone();
                if let Some(&(_, prev)) = mr.refund_ids.iter().find(|(id, _)| *id == refund_id) {
                    if prev == amount {
                        assert!(
                            matches!(decision, Ok(RefundDecision::Replay(_))),
                            "step {step}: {decision:?}"
                        );
                    } else {
                        assert_eq!(decision, Err(RefundRefusal::RefundIdReused), "step {step}");
                    }
                    continue;
                }
                if mr.flagged {
                    assert_eq!(decision, Err(RefundRefusal::UnderInvestigation));
                    continue;
                }
                if amount > mr.order - mr.refunded {
                    assert_eq!(
                        decision,
                        Err(RefundRefusal::ExceedsOrder {
                            refundable_fen: mr.order - mr.refunded
                        })
                    );
                    continue;
                }
                let full = mr.refunded + amount == mr.order;
                let (want_returned, want_restored) = if mr.done {
                    (0, false)
                } else {
                    match m.policy {
                        RefundPolicy::RestoreIfValid if full && time < EXPIRES && !m.expired => {
                            (0, true)
                        }
                        RefundPolicy::RestoreIfValid if full => (FACE - mr.returned, false),
                        RefundPolicy::RestoreIfValid => (0, false),
                        RefundPolicy::Prorata => (
                            (FACE * (mr.refunded + amount)) / mr.order - mr.returned,
                            false,
                        ),
                        RefundPolicy::NoRestore => (FACE - mr.returned, false),
                    }
                };
                let Ok(RefundDecision::Apply(event)) = decision else {
                    panic!("step {step}: {decision:?}")
                };
                assert_eq!(
                    (event.returned_fen, event.restored),
                    (want_returned, want_restored),
                    "step {step}"
                );
                book.apply_event(Arc::new(Event::RedemptionRefunded(event)), seq);
                let mr = &mut m.redemptions[r];
                mr.refunded += amount;
                mr.returned += want_returned;
                mr.refund_ids.push((refund_id, amount));
                if want_restored {
                    mr.restored = true;
                    mr.done = true;
                    let v = m
                        .vouchers
                        .iter()
                        .position(|v| v.1 == MState::Redeemed(r))
                        .expect("voucher of redemption");
                    m.vouchers[v].1 = MState::Claimed;
                } else if mr.returned == FACE {
                    mr.done = true;
                }
            }
            Op::Settle { time } => {
                let time = time.max(m.now);
                m.now = time;
                while let Some(s) = book.decide_settle(UnixMillis(time)) {
                    match s {
                        Settlement::Closed => {
                            assert!(time >= CLOSES && !m.closed);
                            m.closed = true;
                        }
                        Settlement::Expired => {
                            assert!(time >= EXPIRES && m.closed && !m.expired);
                            m.expired = true;
                            for v in &mut m.vouchers {
                                if v.1 == MState::Claimed {
                                    v.1 = MState::Expired;
                                }
                            }
                        }
                    }
                    book.apply_event(
                        Arc::new(Event::TrancheSettled {
                            tranche_id: "t".into(),
                            settlement: s,
                            at: UnixMillis(time),
                        }),
                        seq,
                    );
                }
                assert_eq!(m.closed, time >= CLOSES);
                assert_eq!(m.expired, time >= EXPIRES);
            }
            Op::Revoke { vouchers, time } => {
                if m.vouchers.is_empty() {
                    continue;
                }
                let time = time.max(m.now);
                m.now = time;
                let idx: Vec<u32> = vouchers
                    .iter()
                    .map(|v| (usize::from(*v) % m.vouchers.len()) as u32)
                    .collect();
                if let Some(event) = book.decide_revoke(&idx, "fraud", "case-1", UnixMillis(time)) {
                    book.apply_event(Arc::new(Event::VouchersRevoked(event)), seq);
                }
                let mut seen = idx.clone();
                seen.sort_unstable();
                seen.dedup();
                for i in seen {
                    match m.vouchers[i as usize].1.clone() {
                        MState::Claimed => m.vouchers[i as usize].1 = MState::Revoked,
                        MState::Redeemed(r)
                            if !m.redemptions[r].done && !m.redemptions[r].flagged =>
                        {
                            m.redemptions[r].flagged = true
                        }
                        _ => {}
                    }
                }
            }
            Op::Draw { vouchers, time } => {
                let time = time.max(m.now);
                m.now = time;
                let pool = book.money().returned_fen - book.money().drawn_from_pool_fen;
                let amount = u64::from(vouchers) * FACE;
                if !book.can_draw(UnixMillis(time)) || amount > pool {
                    continue;
                }
                book.apply_event(
                    Arc::new(Event::PoolDrawn(PoolDrawn {
                        tranche_id: "t".into(),
                        added: vec![(A, u32::from(vouchers))],
                        amount_fen: amount,
                        rollover: false,
                        at: UnixMillis(time),
                    })),
                    seq,
                );
                m.quota[0] += u32::from(vouchers);
                m.drawn += amount;
            }
        }
        // After every step: the core's invariants, the ledger, and the model's sums.
        book.check_invariants();
        let money = *book.money();
        assert_eq!(
            money.outstanding_fen,
            m.outstanding(),
            "step {step}: outstanding"
        );
        assert_eq!(money.redeemed_fen, m.redeemed(), "step {step}: redeemed");
        assert_eq!(money.revoked_fen, m.revoked(), "step {step}: revoked");
        assert_eq!(money.drawn_from_pool_fen, m.drawn);
        assert_eq!(money.released_from_budget_fen, m.released);
        let ledger = Ledger::of(BUDGET, [&money]);
        assert_eq!(
            ledger.unreleased_fen
                + ledger.pool_fen
                + ledger.outstanding_fen
                + ledger.redeemed_fen
                + ledger.revoked_fen,
            BUDGET
        );
        for (i, v) in m.vouchers.iter().enumerate() {
            let want = match v.1 {
                MState::Claimed if m.now >= EXPIRES => VoucherState::Expired,
                MState::Claimed => VoucherState::Claimed,
                MState::Redeemed(_) => VoucherState::Redeemed,
                MState::Expired => VoucherState::Expired,
                MState::Revoked => VoucherState::Revoked,
            };
            assert_eq!(
                book.voucher_state(i as u32, UnixMillis(m.now)),
                want,
                "step {step}: voucher {i}"
            );
        }
    }
}

fn policy() -> impl Strategy<Value = RefundPolicy> {
    prop_oneof![
        Just(RefundPolicy::RestoreIfValid),
        Just(RefundPolicy::Prorata),
        Just(RefundPolicy::NoRestore)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_and_ledger_match_the_model(policy in policy(), ops in prop::collection::vec(op(), 1..120)) {
        run(policy, ops);
    }
}

/// A wall clock stepped back after the closing was settled must not reopen the tranche:
/// its unclaimed stock is already in the campaign pool, so a claim would be paid twice
/// (and the core's money check would stop the daemon). Claims are refused as closed.
#[test]
fn a_clock_stepped_back_after_closing_does_not_reopen_the_tranche() {
    use voucherd::core::{Refusal, TrancheState};
    let mut book = TrancheBook::new(0, spec(), DigestKey::new(5, 6), 1);
    let settled = book.decide_settle(UnixMillis(CLOSES));
    assert_eq!(settled, Some(Settlement::Closed));
    book.apply_event(
        Arc::new(Event::TrancheSettled {
            tranche_id: "t".into(),
            settlement: Settlement::Closed,
            at: UnixMillis(CLOSES),
        }),
        2,
    );
    let earlier = UnixMillis(CLOSES - 500);
    assert_eq!(book.state(earlier), TrancheState::Closed);
    let cmd = ClaimCommand {
        identity: IdentityKeys {
            user_id: "late",
            id_hash: None,
            phone_hash: None,
            device_id: None,
        },
        request_id: "late",
        request_fingerprint: 1,
        county: Some(A),
        location: Location {
            lng: 111.3,
            lat: 30.7,
            crs: Crs::Gcj02,
        },
        entropy: 7,
    };
    assert!(matches!(
        book.decide_claim(&cmd, earlier),
        ClaimDecision::Refused(Refusal::Closed)
    ));
}
