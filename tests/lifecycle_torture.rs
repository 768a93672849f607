//! Kill -9 torture of the whole voucher lifecycle: the real binary under
//! concurrent, mixed traffic (claims, redemptions at merchants imported from
//! CSV, full and partial refunds under each refund policy, admin revocations
//! by voucher ID and by identity), SIGKILLed after a seeded number of
//! acknowledged answers with requests in flight, restarted, and checked:
//!
//! 1. every acknowledged voucher, redemption (discount, payable, time), refund
//!    and revocation is still there with the same facts (read back through
//!    `GET /v1/vouchers/{id}` and `GET /v1/redemptions/{id}`), and a retry of
//!    the same idempotency key (`request_id`, `(merchant_id, order_id)`,
//!    `refund_id`) returns the original answer, not a second effect;
//! 2. no voucher is redeemed twice, no refund applied twice, a revoked voucher
//!    cannot be redeemed, a flagged redemption cannot be refunded;
//! 3. each campaign's ledger equals, to the fen, the ledger computed from the
//!    acknowledged answers, and `budget = unreleased + pool + outstanding +
//!    redeemed + revoked`; every county's `remaining = quota - issued`;
//! 4. the daemon is ready again within a bounded time;
//! 5. no ledger answer read during the load (an operator polling
//!    `GET /admin/v1/campaigns/{id}/ledger`) showed money the crash then took
//!    back: right after the restart, before any retry, the buckets that only
//!    move one way in this test are at least (pool, revoked) or at most
//!    (outstanding, without restores) what was shown.
//!
//! Requests in flight at the kill are resolved honestly after the restart:
//! the test first reads whether the effect landed (a GET), then retries the
//! same idempotency key and requires the retry to say so (`200 replayed` if it
//! landed, `201` if it did not; a revocation retried with its `case_id` reports
//! the case's effect either way). Only then
//! are the ledgers compared for exact equality.
//!
//! Each client owns the vouchers it claimed and sends one request at a time,
//! so the client-side ledger knows the order of every voucher's events; the
//! clients share the tranches, the WAL batches and the snapshots. Snapshots
//! are taken every 30 records, so kills also land mid-snapshot and restarts
//! replay lifecycle records from both a snapshot and the WAL tail.
//!
//! `VOUCHERD_LIFECYCLE_TORTURE_CYCLES` sets the number of cycles (default
//! 30); `VOUCHERD_TEST_SEED` replays a run. Prints one summary line.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const DEFAULT_CYCLES: usize = 30;
const WORKERS: usize = 4;
/// Cycles that share one generation of tranches before new ones are created.
const CYCLES_PER_GENERATION: usize = 4;
/// The counties claims come from (merchants are imported in each).
const LOAD_COUNTIES: [u32; 3] = [420502, 420503, 420506];
const QUOTA_PER_COUNTY: u32 = 10;
/// Most requests a client sends in one cycle (the kill normally comes first).
const MAX_OPS_PER_WORKER_PER_CYCLE: usize = 400;
/// The kill comes after 1..=this many acknowledged answers.
const MAX_ACKS_BEFORE_KILL: u64 = 110;
/// Vouchers, redemptions and idempotent retries checked after each restart
/// (everything after the last one).
const SAMPLE_CHECKS_PER_CYCLE: usize = 25;
/// A soak prints a progress line this often.
const PROGRESS_EVERY_CYCLES: usize = 100;
/// A restarted daemon must be ready within this.
const RESTART_BOUND: Duration = Duration::from_secs(30);
const BUDGET_FEN: u64 = 1_000_000_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Policy {
    RestoreIfValid,
    Prorata,
    NoRestore,
}

struct Campaign {
    id: &'static str,
    policy: Policy,
    face_fen: u64,
    threshold_fen: u64,
}

impl Campaign {
    fn minimum_order_fen(&self) -> u64 {
        self.threshold_fen.max(self.face_fen)
    }
}

/// One campaign per refund policy, with different face values and thresholds
/// (the prorata one has no threshold, so shares round).
const CAMPAIGNS: [Campaign; 3] = [
    Campaign {
        id: "lt-restore",
        policy: Policy::RestoreIfValid,
        face_fen: 2_000,
        threshold_fen: 10_000,
    },
    Campaign {
        id: "lt-prorata",
        policy: Policy::Prorata,
        face_fen: 1_500,
        threshold_fen: 0,
    },
    Campaign {
        id: "lt-norestore",
        policy: Policy::NoRestore,
        face_fen: 3_000,
        threshold_fen: 5_000,
    },
];

const POLICY_NAMES: [&str; 3] = ["restore_if_valid", "prorata", "no_restore"];

/// Two merchants in each load county (a voucher is redeemed in its own county).
fn merchants() -> Vec<(String, u32)> {
    LOAD_COUNTIES
        .iter()
        .flat_map(|c| [(format!("m-{c}-a"), *c), (format!("m-{c}-b"), *c)])
        .collect()
}

fn merchants_csv() -> String {
    let mut csv = String::from("merchant_id,name,county,industry,platform\n");
    for (i, (id, county)) in merchants().iter().enumerate() {
        let (industry, platform) = [("餐饮", "alipay"), ("零售", "wechat")][i % 2];
        csv.push_str(&format!(
            "{id},\"测试商户 {i}, 宜昌\",{county},{industry},{platform}\n"
        ));
    }
    csv
}

#[derive(Debug)]
struct TrancheModel {
    id: String,
    campaign: usize,
}

/// What the test knows about the server's catalog (changed between cycles only).
struct World {
    tranches: Vec<TrancheModel>,
    /// The tranches claims go to in the current generation.
    current: Vec<usize>,
    /// A point inside each load county.
    points: HashMap<u32, (f64, f64)>,
}

impl World {
    fn campaign_of(&self, tranche: usize) -> &'static Campaign {
        &CAMPAIGNS[self.tranches[tranche].campaign]
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum VState {
    Claimed,
    Redeemed,
    Revoked,
}

#[derive(Clone, Debug)]
struct VoucherModel {
    id: String,
    tranche: usize,
    county: u32,
    user: String,
    request: String,
    claimed_at: String,
    state: VState,
    /// The redemption the voucher's status points at (cleared by a restore).
    redemption: Option<usize>,
    /// (case_id, reason) of the revocation that touched it.
    revocation: Option<(String, String)>,
}

#[derive(Clone, Debug)]
struct RefundModel {
    refund_id: String,
    amount_fen: u64,
    returned_fen: u64,
    restored: bool,
    at: String,
}

#[derive(Clone, Debug)]
struct RedemptionModel {
    id: String,
    voucher: usize,
    merchant: String,
    order: String,
    amount_fen: u64,
    at: String,
    refunds: Vec<RefundModel>,
    refunded_fen: u64,
    returned_fen: u64,
    /// Uses the voucher's value: false once restored or fully returned.
    active: bool,
    restored: bool,
    flagged: bool,
}

impl RedemptionModel {
    fn refundable_fen(&self) -> u64 {
        self.amount_fen - self.refunded_fen
    }
}

/// A request whose answer the client has not yet seen.
#[derive(Clone, Debug)]
enum Op {
    Claim {
        tranche: usize,
        county: u32,
        user: String,
        request: String,
    },
    Redeem {
        voucher: usize,
        merchant: String,
        order: String,
        amount_fen: u64,
    },
    Refund {
        redemption: usize,
        refund_id: String,
        amount_fen: u64,
    },
    Revoke {
        /// (voucher, named by its user ID rather than its voucher ID)
        targets: Vec<(usize, bool)>,
        case_id: String,
        reason: String,
    },
    /// A request that must be refused or replayed and change nothing: never resolved.
    Check(Check),
}

#[derive(Clone, Debug)]
enum Check {
    ReplayClaim(usize),
    ReplayRedemption(usize),
    ReplayRefund(usize, usize),
    RedeemUnusable { voucher: usize, order: String },
    RefundFlagged(usize, String),
    RefundTooMuch(usize, String),
}

#[derive(Default, Debug, Clone)]
struct Stats {
    claims: u64,
    sold_out: u64,
    redemptions: u64,
    refunds_full: u64,
    refunds_partial: u64,
    restored: u64,
    refunds_by_policy: [u64; 3],
    revocations: u64,
    revoked_vouchers: u64,
    flagged_redemptions: u64,
    in_flight: u64,
    in_flight_landed: u64,
    in_flight_lost: u64,
    replays_verified: u64,
    refusals_verified: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.claims += o.claims;
        self.sold_out += o.sold_out;
        self.redemptions += o.redemptions;
        self.refunds_full += o.refunds_full;
        self.refunds_partial += o.refunds_partial;
        self.restored += o.restored;
        for i in 0..3 {
            self.refunds_by_policy[i] += o.refunds_by_policy[i];
        }
        self.revocations += o.revocations;
        self.revoked_vouchers += o.revoked_vouchers;
        self.flagged_redemptions += o.flagged_redemptions;
        self.in_flight += o.in_flight;
        self.in_flight_landed += o.in_flight_landed;
        self.in_flight_lost += o.in_flight_lost;
        self.replays_verified += o.replays_verified;
        self.refusals_verified += o.refusals_verified;
    }
}

/// One client's own vouchers and everything acknowledged about them.
#[derive(Default)]
struct Worker {
    index: usize,
    vouchers: Vec<VoucherModel>,
    redemptions: Vec<RedemptionModel>,
    in_flight: Option<Op>,
    /// Makes order, refund and case IDs unique.
    counter: u64,
    stats: Stats,
}

fn splitmix(state: &mut u64) -> u64 {
    voucherd::core::rng::splitmix_next(state)
}

fn pick<T>(rng: &mut u64, items: &[T]) -> Option<usize> {
    (!items.is_empty()).then(|| splitmix(rng) as usize % items.len())
}

fn auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// The money a refund moves, as the campaign's policy says (docs/api.md, "Money").
fn predict_refund(c: &Campaign, r: &RedemptionModel, amount_fen: u64) -> (u64, bool) {
    if !r.active {
        return (0, false);
    }
    let full = r.refunded_fen + amount_fen == r.amount_fen;
    match c.policy {
        Policy::RestoreIfValid => (0, full),
        Policy::Prorata => {
            let share_after = (u128::from(c.face_fen) * u128::from(r.refunded_fen + amount_fen)
                / u128::from(r.amount_fen)) as u64;
            (share_after - r.returned_fen, false)
        }
        Policy::NoRestore => (c.face_fen - r.returned_fen, false),
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RevokeEffect {
    Revoke,
    /// Flag a redemption; the fen still counted as redeemed move to `revoked`.
    Flag(u64),
    Untouched,
}

impl Worker {
    fn next_id(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}-w{}-{}", self.index, self.counter)
    }

    fn tranche_id<'w>(&self, world: &'w World, voucher: usize) -> &'w str {
        &world.tranches[self.vouchers[voucher].tranche].id
    }

    fn campaign(&self, world: &World, redemption: usize) -> &'static Campaign {
        world.campaign_of(self.vouchers[self.redemptions[redemption].voucher].tranche)
    }

    fn revoke_effect(&self, world: &World, voucher: usize) -> RevokeEffect {
        let v = &self.vouchers[voucher];
        match (v.state, v.redemption) {
            (VState::Claimed, _) => RevokeEffect::Revoke,
            (VState::Redeemed, Some(r))
                if self.redemptions[r].active && !self.redemptions[r].flagged =>
            {
                RevokeEffect::Flag(
                    world.campaign_of(v.tranche).face_fen - self.redemptions[r].returned_fen,
                )
            }
            _ => RevokeEffect::Untouched,
        }
    }

    /// Chooses the next request: mostly new effects, some idempotent retries
    /// and requests that must be refused.
    fn choose(&mut self, world: &World, rng: &mut u64) -> Op {
        let claimed: Vec<usize> = (0..self.vouchers.len())
            .filter(|&i| self.vouchers[i].state == VState::Claimed)
            .collect();
        let refundable: Vec<usize> = (0..self.redemptions.len())
            .filter(|&i| !self.redemptions[i].flagged && self.redemptions[i].refundable_fen() > 0)
            .collect();
        match splitmix(rng) % 16 {
            0..=3 => {}
            4..=7 => {
                if let Some(i) = pick(rng, &claimed) {
                    let voucher = claimed[i];
                    let county = self.vouchers[voucher].county;
                    let merchant =
                        format!("m-{county}-{}", ["a", "b"][(splitmix(rng) % 2) as usize]);
                    let c = world.campaign_of(self.vouchers[voucher].tranche);
                    let amount_fen = c.minimum_order_fen() + splitmix(rng) % 20_000;
                    return Op::Redeem {
                        voucher,
                        merchant,
                        order: self.next_id("o"),
                        amount_fen,
                    };
                }
            }
            8..=11 => {
                if let Some(i) = pick(rng, &refundable) {
                    let redemption = refundable[i];
                    let left = self.redemptions[redemption].refundable_fen();
                    let amount_fen = if left == 1 || splitmix(rng).is_multiple_of(3) {
                        left
                    } else {
                        1 + splitmix(rng) % (left - 1)
                    };
                    return Op::Refund {
                        redemption,
                        refund_id: self.next_id("rf"),
                        amount_fen,
                    };
                }
            }
            12 => {
                if !self.vouchers.is_empty() {
                    let n = 1 + (splitmix(rng) % 3) as usize;
                    let mut targets: Vec<(usize, bool)> = Vec::new();
                    for _ in 0..n {
                        let v = splitmix(rng) as usize % self.vouchers.len();
                        if !targets.iter().any(|(t, _)| *t == v) {
                            targets.push((v, splitmix(rng).is_multiple_of(2)));
                        }
                    }
                    return Op::Revoke {
                        targets,
                        case_id: self.next_id("case"),
                        reason: format!("外挂抢券 {}", self.counter),
                    };
                }
            }
            13 | 14 => {
                // An idempotent retry of something acknowledged.
                match splitmix(rng) % 3 {
                    0 if !self.vouchers.is_empty() => {
                        return Op::Check(Check::ReplayClaim(
                            splitmix(rng) as usize % self.vouchers.len(),
                        ));
                    }
                    1 if !self.redemptions.is_empty() => {
                        return Op::Check(Check::ReplayRedemption(
                            splitmix(rng) as usize % self.redemptions.len(),
                        ));
                    }
                    _ => {
                        let with: Vec<usize> = (0..self.redemptions.len())
                            .filter(|&i| !self.redemptions[i].refunds.is_empty())
                            .collect();
                        if let Some(i) = pick(rng, &with) {
                            let r = with[i];
                            let f = splitmix(rng) as usize % self.redemptions[r].refunds.len();
                            return Op::Check(Check::ReplayRefund(r, f));
                        }
                    }
                }
            }
            _ => {
                // A request that must be refused.
                let unusable: Vec<usize> = (0..self.vouchers.len())
                    .filter(|&i| self.vouchers[i].state != VState::Claimed)
                    .collect();
                let flagged: Vec<usize> = (0..self.redemptions.len())
                    .filter(|&i| self.redemptions[i].flagged)
                    .collect();
                match splitmix(rng) % 3 {
                    0 if !unusable.is_empty() => {
                        let voucher = unusable[pick(rng, &unusable).expect("some")];
                        return Op::Check(Check::RedeemUnusable {
                            voucher,
                            order: self.next_id("o-refused"),
                        });
                    }
                    1 if !flagged.is_empty() => {
                        let r = flagged[pick(rng, &flagged).expect("some")];
                        return Op::Check(Check::RefundFlagged(r, self.next_id("rf-refused")));
                    }
                    _ => {
                        if let Some(i) = pick(rng, &refundable) {
                            return Op::Check(Check::RefundTooMuch(
                                refundable[i],
                                self.next_id("rf-refused"),
                            ));
                        }
                    }
                }
            }
        }
        let tranche = world.current[splitmix(rng) as usize % world.current.len()];
        let county = LOAD_COUNTIES[splitmix(rng) as usize % LOAD_COUNTIES.len()];
        let user = self.next_id("u");
        Op::Claim {
            tranche,
            county,
            request: format!("rq-{user}"),
            user,
        }
    }

    fn claim_body(
        &self,
        world: &World,
        tranche: usize,
        county: u32,
        user: &str,
        request: &str,
    ) -> Value {
        let (lng, lat) = world.points[&county];
        claim_body(&world.tranches[tranche].id, user, request, lng, lat)
    }

    fn redeem_body(&self, voucher: usize, merchant: &str, order: &str, amount_fen: u64) -> Value {
        json!({"voucher_id": self.vouchers[voucher].id, "merchant_id": merchant,
               "order_id": order, "order_amount_fen": amount_fen})
    }

    fn refund_path(&self, redemption: usize) -> String {
        format!("/v1/redemptions/{}/refund", self.redemptions[redemption].id)
    }

    fn revoke_body(&self, targets: &[(usize, bool)], case_id: &str, reason: &str) -> Value {
        let ids: Vec<&str> = targets
            .iter()
            .filter(|(_, by_user)| !by_user)
            .map(|(v, _)| self.vouchers[*v].id.as_str())
            .collect();
        let users: Vec<&str> = targets
            .iter()
            .filter(|(_, by_user)| *by_user)
            .map(|(v, _)| self.vouchers[*v].user.as_str())
            .collect();
        json!({"voucher_ids": ids, "identity": {"user_ids": users}, "reason": reason, "case_id": case_id})
    }

    /// (admin listener?, method, path, body) of a request.
    fn request_of(&self, world: &World, op: &Op) -> (bool, &'static str, String, Value) {
        match op {
            Op::Claim {
                tranche,
                county,
                user,
                request,
            } => (
                false,
                "POST",
                "/v1/claims".into(),
                self.claim_body(world, *tranche, *county, user, request),
            ),
            Op::Redeem {
                voucher,
                merchant,
                order,
                amount_fen,
            } => (
                false,
                "POST",
                "/v1/redemptions".into(),
                self.redeem_body(*voucher, merchant, order, *amount_fen),
            ),
            Op::Refund {
                redemption,
                refund_id,
                amount_fen,
            } => (
                false,
                "POST",
                self.refund_path(*redemption),
                json!({"amount_fen": amount_fen, "refund_id": refund_id}),
            ),
            Op::Revoke {
                targets,
                case_id,
                reason,
            } => (
                true,
                "POST",
                "/admin/v1/vouchers:revoke".into(),
                self.revoke_body(targets, case_id, reason),
            ),
            Op::Check(check) => match check {
                Check::ReplayClaim(v) => {
                    let v = &self.vouchers[*v];
                    (
                        false,
                        "POST",
                        "/v1/claims".into(),
                        self.claim_body(world, v.tranche, v.county, &v.user, &v.request),
                    )
                }
                Check::ReplayRedemption(r) => {
                    let r = &self.redemptions[*r];
                    (
                        false,
                        "POST",
                        "/v1/redemptions".into(),
                        self.redeem_body(r.voucher, &r.merchant, &r.order, r.amount_fen),
                    )
                }
                Check::ReplayRefund(r, f) => {
                    let f = &self.redemptions[*r].refunds[*f];
                    (
                        false,
                        "POST",
                        self.refund_path(*r),
                        json!({"amount_fen": f.amount_fen, "refund_id": f.refund_id}),
                    )
                }
                Check::RedeemUnusable { voucher, order } => {
                    let county = self.vouchers[*voucher].county;
                    (
                        false,
                        "POST",
                        "/v1/redemptions".into(),
                        self.redeem_body(*voucher, &format!("m-{county}-a"), order, 50_000),
                    )
                }
                Check::RefundFlagged(r, refund_id) => (
                    false,
                    "POST",
                    self.refund_path(*r),
                    json!({"amount_fen": 1, "refund_id": refund_id}),
                ),
                Check::RefundTooMuch(r, refund_id) => (
                    false,
                    "POST",
                    self.refund_path(*r),
                    json!({"amount_fen": self.redemptions[*r].refundable_fen() + 1, "refund_id": refund_id}),
                ),
            },
        }
    }

    /// The redemption as the server must show it now.
    fn redemption_json(&self, world: &World, r: usize) -> Value {
        let m = &self.redemptions[r];
        let face = self.campaign(world, r).face_fen;
        json!({
            "id": m.id,
            "voucher_id": self.vouchers[m.voucher].id,
            "tranche_id": self.tranche_id(world, m.voucher),
            "merchant_id": m.merchant,
            "order_id": m.order,
            "order_amount_fen": m.amount_fen,
            "discount_fen": face,
            "payable_fen": m.amount_fen - face,
            "redeemed_at": m.at,
            "refunded_fen": m.refunded_fen,
            "returned_to_pool_fen": m.returned_fen,
            "refunds": m.refunds.iter().map(refund_json).collect::<Vec<_>>(),
        })
    }

    /// Records an answer. `landed` is `None` for an answer in live traffic and
    /// `Some(..)` when resolving a request that was in flight at the kill:
    /// whether its effect was found in place before the retry. Returns whether
    /// the answer acknowledged a new effect (for the killer's count).
    fn record(&mut self, world: &World, op: &Op, reply: &Reply, landed: Option<&[bool]>) -> bool {
        let body = reply.json();
        let what = || {
            format!(
                "worker {} {op:?}: {} {}",
                self.index,
                reply.status,
                reply.text()
            )
        };
        let resolving = landed.is_some();
        let landed_one = landed.is_some_and(|l| l[0]);
        match op {
            Op::Claim {
                tranche,
                county,
                user,
                request,
            } => match reply.status {
                201 | 200 => {
                    assert!(
                        reply.status == 201 || (resolving && body["replayed"] == true),
                        "{}",
                        what()
                    );
                    let v = &body["voucher"];
                    assert_eq!(
                        v["tranche_id"],
                        world.tranches[*tranche].id.as_str(),
                        "{}",
                        what()
                    );
                    assert_eq!(v["county"], county.to_string(), "{}", what());
                    assert_eq!(v["state"], "claimed", "{}", what());
                    assert_eq!(v["face_value_fen"], world.campaign_of(*tranche).face_fen);
                    self.vouchers.push(VoucherModel {
                        id: v["id"].as_str().expect("id").to_owned(),
                        tranche: *tranche,
                        county: *county,
                        user: user.clone(),
                        request: request.clone(),
                        claimed_at: v["claimed_at"].as_str().expect("claimed_at").to_owned(),
                        state: VState::Claimed,
                        redemption: None,
                        revocation: None,
                    });
                    if resolving {
                        if reply.status == 200 {
                            self.stats.in_flight_landed += 1;
                        } else {
                            self.stats.in_flight_lost += 1;
                        }
                    }
                    self.stats.claims += u64::from(reply.status == 201);
                    reply.status == 201
                }
                410 => {
                    assert_eq!(body["outcome"], "sold_out", "{}", what());
                    self.stats.sold_out += 1;
                    if resolving {
                        self.stats.in_flight_lost += 1;
                    }
                    false
                }
                _ => panic!("{}", what()),
            },
            Op::Redeem {
                voucher,
                merchant,
                order,
                amount_fen,
            } => {
                assert_eq!(self.vouchers[*voucher].state, VState::Claimed);
                let expected = if landed_one { 200 } else { 201 };
                assert_eq!(reply.status, expected, "{}", what());
                assert_eq!(body["replayed"] == true, landed_one, "{}", what());
                let red = &body["redemption"];
                let index = self.redemptions.len();
                self.redemptions.push(RedemptionModel {
                    id: red["id"].as_str().expect("id").to_owned(),
                    voucher: *voucher,
                    merchant: merchant.clone(),
                    order: order.clone(),
                    amount_fen: *amount_fen,
                    at: red["redeemed_at"].as_str().expect("redeemed_at").to_owned(),
                    refunds: Vec::new(),
                    refunded_fen: 0,
                    returned_fen: 0,
                    active: true,
                    restored: false,
                    flagged: false,
                });
                assert_eq!(*red, self.redemption_json(world, index), "{}", what());
                let v = &mut self.vouchers[*voucher];
                v.state = VState::Redeemed;
                v.redemption = Some(index);
                self.count_resolution(landed);
                self.stats.redemptions += u64::from(!landed_one);
                !landed_one
            }
            Op::Refund {
                redemption,
                refund_id,
                amount_fen,
            } => {
                let c = self.campaign(world, *redemption);
                let (returned_fen, restored) =
                    predict_refund(c, &self.redemptions[*redemption], *amount_fen);
                let expected = if landed_one { 200 } else { 201 };
                assert_eq!(reply.status, expected, "{}", what());
                assert_eq!(body["replayed"] == true, landed_one, "{}", what());
                let refund = RefundModel {
                    refund_id: refund_id.clone(),
                    amount_fen: *amount_fen,
                    returned_fen,
                    restored,
                    at: body["refund"]["refunded_at"]
                        .as_str()
                        .expect("refunded_at")
                        .to_owned(),
                };
                assert_eq!(body["refund"], refund_json(&refund), "{}", what());
                let face = c.face_fen;
                let r = &mut self.redemptions[*redemption];
                let full = r.refunded_fen + amount_fen == r.amount_fen;
                r.refunds.push(refund);
                r.refunded_fen += amount_fen;
                r.returned_fen += returned_fen;
                assert!(r.returned_fen <= face);
                let voucher = r.voucher;
                if restored {
                    r.active = false;
                    r.restored = true;
                    let v = &mut self.vouchers[voucher];
                    assert_eq!(v.state, VState::Redeemed);
                    v.state = VState::Claimed;
                    v.redemption = None;
                    self.stats.restored += 1;
                } else if r.returned_fen == face {
                    r.active = false;
                }
                assert_eq!(
                    body["redemption"],
                    self.redemption_json(world, *redemption),
                    "{}",
                    what()
                );
                self.count_resolution(landed);
                if !landed_one {
                    if full {
                        self.stats.refunds_full += 1;
                    } else {
                        self.stats.refunds_partial += 1;
                    }
                    self.stats.refunds_by_policy[c.policy as usize] += 1;
                }
                !landed_one
            }
            Op::Revoke {
                targets,
                case_id,
                reason,
            } => {
                assert_eq!(reply.status, 200, "{}", what());
                let effects: Vec<RevokeEffect> = targets
                    .iter()
                    .map(|(v, _)| self.revoke_effect(world, *v))
                    .collect();
                let mut expected = json!({"case_id": case_id, "revoked_vouchers": 0,
                    "recovered_to_pool_fen": 0, "already_redeemed_vouchers": 0,
                    "already_redeemed_fen": 0, "untouched_vouchers": 0, "unknown_voucher_ids": 0});
                let bump = |e: &mut Value, key: &str, by: u64| {
                    e[key] = json!(e[key].as_u64().expect("count") + by);
                };
                // A retry of the same case reports what the case did, whether its effect
                // landed before the kill or lands now.
                for (effect, (v, _)) in effects.iter().zip(targets) {
                    let face = world.campaign_of(self.vouchers[*v].tranche).face_fen;
                    match effect {
                        RevokeEffect::Revoke => {
                            bump(&mut expected, "revoked_vouchers", 1);
                            bump(&mut expected, "recovered_to_pool_fen", face);
                        }
                        RevokeEffect::Flag(fen) => {
                            bump(&mut expected, "already_redeemed_vouchers", 1);
                            bump(&mut expected, "already_redeemed_fen", *fen);
                        }
                        RevokeEffect::Untouched => bump(&mut expected, "untouched_vouchers", 1),
                    }
                }
                assert_eq!(body["revocation"], expected, "{}", what());
                for (effect, (v, _)) in effects.iter().zip(targets) {
                    match effect {
                        RevokeEffect::Revoke => {
                            let m = &mut self.vouchers[*v];
                            m.state = VState::Revoked;
                            m.revocation = Some((case_id.clone(), reason.clone()));
                            self.stats.revoked_vouchers += 1;
                        }
                        RevokeEffect::Flag(_) => {
                            let m = &mut self.vouchers[*v];
                            m.revocation = Some((case_id.clone(), reason.clone()));
                            let r = m.redemption.expect("redeemed");
                            self.redemptions[r].flagged = true;
                            self.stats.flagged_redemptions += 1;
                        }
                        RevokeEffect::Untouched => {}
                    }
                }
                if let Some(l) = landed {
                    if l.iter().any(|&x| x) {
                        self.stats.in_flight_landed += 1;
                    } else {
                        self.stats.in_flight_lost += 1;
                    }
                }
                self.stats.revocations += 1;
                true
            }
            Op::Check(check) => {
                self.verify_check(world, check, reply);
                false
            }
        }
    }

    fn count_resolution(&mut self, landed: Option<&[bool]>) {
        match landed {
            Some(l) if l[0] => self.stats.in_flight_landed += 1,
            Some(_) => self.stats.in_flight_lost += 1,
            None => {}
        }
    }

    /// An idempotent retry must return the original answer; a refused request must change nothing.
    fn verify_check(&mut self, world: &World, check: &Check, reply: &Reply) {
        let body = reply.json();
        let what = || {
            format!(
                "worker {} {check:?}: {} {}",
                self.index,
                reply.status,
                reply.text()
            )
        };
        match check {
            Check::ReplayClaim(v) => {
                assert_eq!(
                    (reply.status, &body["replayed"]),
                    (200, &json!(true)),
                    "{}",
                    what()
                );
                let m = &self.vouchers[*v];
                assert_eq!(body["voucher"]["id"], m.id.as_str(), "{}", what());
                assert_eq!(
                    body["voucher"]["claimed_at"],
                    m.claimed_at.as_str(),
                    "{}",
                    what()
                );
                self.stats.replays_verified += 1;
            }
            Check::ReplayRedemption(r) => {
                assert_eq!(
                    (reply.status, &body["replayed"]),
                    (200, &json!(true)),
                    "{}",
                    what()
                );
                assert_eq!(
                    body["redemption"],
                    self.redemption_json(world, *r),
                    "{}",
                    what()
                );
                self.stats.replays_verified += 1;
            }
            Check::ReplayRefund(r, f) => {
                assert_eq!(
                    (reply.status, &body["replayed"]),
                    (200, &json!(true)),
                    "{}",
                    what()
                );
                assert_eq!(
                    body["refund"],
                    refund_json(&self.redemptions[*r].refunds[*f]),
                    "{}",
                    what()
                );
                assert_eq!(
                    body["redemption"],
                    self.redemption_json(world, *r),
                    "{}",
                    what()
                );
                self.stats.replays_verified += 1;
            }
            Check::RedeemUnusable { voucher, .. } => {
                let expected = match self.vouchers[*voucher].state {
                    VState::Redeemed => (409, "already_redeemed"),
                    VState::Revoked => (410, "voucher_revoked"),
                    VState::Claimed => unreachable!("only unusable vouchers are probed"),
                };
                assert_eq!(
                    (reply.status, body["outcome"].as_str().unwrap_or("")),
                    expected,
                    "{}",
                    what()
                );
                self.stats.refusals_verified += 1;
            }
            Check::RefundFlagged(..) => {
                assert_eq!(
                    (reply.status, &body["outcome"]),
                    (409, &json!("under_investigation")),
                    "{}",
                    what()
                );
                self.stats.refusals_verified += 1;
            }
            Check::RefundTooMuch(r, _) => {
                assert_eq!(
                    (reply.status, &body["outcome"]),
                    (422, &json!("exceeds_order")),
                    "{}",
                    what()
                );
                assert_eq!(
                    body["refundable_fen"],
                    self.redemptions[*r].refundable_fen(),
                    "{}",
                    what()
                );
                self.stats.refusals_verified += 1;
            }
        }
    }

    /// Reads a voucher back and compares every fact the client knows.
    fn check_voucher(&self, world: &World, client: &mut Client, v: usize) {
        let m = &self.vouchers[v];
        let got = client.get(&format!("/v1/vouchers/{}", m.id));
        assert_eq!(
            got.status,
            200,
            "acknowledged voucher {} lost: {}",
            m.id,
            got.text()
        );
        let body = got.json()["voucher"].clone();
        let what = || format!("voucher {m:?}: {body}");
        assert_eq!(
            body["tranche_id"],
            world.tranches[m.tranche].id.as_str(),
            "{}",
            what()
        );
        assert_eq!(
            body["campaign_id"],
            world.campaign_of(m.tranche).id,
            "{}",
            what()
        );
        assert_eq!(body["county"], m.county.to_string(), "{}", what());
        assert_eq!(body["claimed_at"], m.claimed_at.as_str(), "{}", what());
        let state = match m.state {
            VState::Claimed => "claimed",
            VState::Redeemed => "redeemed",
            VState::Revoked => "revoked",
        };
        assert_eq!(body["state"], state, "{}", what());
        let redemption = m.redemption.map(|r| json!(self.redemptions[r].id));
        assert_eq!(body.get("redemption_id").cloned(), redemption, "{}", what());
        let revocation = m
            .revocation
            .as_ref()
            .map(|(case_id, reason)| json!({"case_id": case_id, "reason": reason}));
        assert_eq!(body.get("revocation").cloned(), revocation, "{}", what());
    }

    fn check_redemption(&self, world: &World, client: &mut Client, r: usize) {
        let id = &self.redemptions[r].id;
        let got = client.get(&format!("/v1/redemptions/{id}"));
        assert_eq!(
            got.status,
            200,
            "acknowledged redemption {id} lost: {}",
            got.text()
        );
        assert_eq!(
            got.json()["redemption"],
            self.redemption_json(world, r),
            "redemption {id} differs from what was acknowledged"
        );
    }

    /// Sends a request on the right listener and records the answer.
    fn send(
        &mut self,
        world: &World,
        public: &mut Client,
        admin: &mut Client,
        op: &Op,
        landed: Option<&[bool]>,
    ) -> Option<bool> {
        let (is_admin, method, path, body) = self.request_of(world, op);
        let body = body.to_string().into_bytes();
        let auth = auth();
        let headers: &[(&str, &str)] = if is_admin {
            &[("authorization", &auth)]
        } else {
            &[]
        };
        let client = if is_admin { admin } else { public };
        let mut overloaded = 0;
        loop {
            let reply = client.try_request_with(method, &path, headers, &body)?;
            if reply.status == 503 {
                // Overloaded: nothing was decided; the same key is sent again.
                overloaded += 1;
                assert!(
                    overloaded < 1_000,
                    "{op:?}: 503 for too long: {}",
                    reply.text()
                );
                std::thread::yield_now();
                continue;
            }
            return Some(self.record(world, op, &reply, landed));
        }
    }
}

fn refund_json(f: &RefundModel) -> Value {
    json!({"refund_id": f.refund_id, "amount_fen": f.amount_fen,
           "returned_to_pool_fen": f.returned_fen, "voucher_restored": f.restored,
           "refunded_at": f.at})
}

/// One cycle of load: the workers send mixed traffic until the killer has
/// seen `kill_after` acknowledged effects, then the daemon is SIGKILLed with
/// their requests in flight.
fn load_and_kill(
    daemon: Daemon,
    world: &World,
    workers: &mut [Worker],
    cycle: usize,
    seed: u64,
    kill_after: usize,
) -> Observed {
    let acked = AtomicUsize::new(0);
    let dead = AtomicBool::new(false);
    let (public, admin) = (daemon.public, daemon.admin);
    std::thread::scope(|scope| {
        // An operator reading the ledgers while the load runs.
        let observer = scope.spawn(|| {
            let mut client = Client::new(admin);
            let auth = auth();
            let mut seen = Observed::default();
            while !dead.load(Ordering::Acquire) {
                for (c, campaign) in CAMPAIGNS.iter().enumerate() {
                    let path = format!("/admin/v1/campaigns/{}/ledger", campaign.id);
                    let Some(r) =
                        client.try_request_with("GET", &path, &[("authorization", &auth)], b"")
                    else {
                        return seen;
                    };
                    assert_eq!(r.status, 200, "{}", r.text());
                    seen.see(c, &r.json()["ledger"]);
                }
            }
            seen
        });
        for worker in workers.iter_mut() {
            let acked = &acked;
            let dead = &dead;
            scope.spawn(move || {
                let mut rng = seed ^ ((cycle as u64) << 20) ^ ((worker.index as u64) << 8);
                let mut public = Client::new(public);
                let mut admin = Client::new(admin);
                for _ in 0..MAX_OPS_PER_WORKER_PER_CYCLE {
                    if dead.load(Ordering::Acquire) {
                        break;
                    }
                    let op = worker.choose(world, &mut rng);
                    worker.in_flight = Some(op.clone());
                    match worker.send(world, &mut public, &mut admin, &op, None) {
                        Some(new_effect) => {
                            worker.in_flight = None;
                            if new_effect {
                                acked.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        None => break,
                    }
                }
            });
        }
        // The killer waits for a seeded number of acknowledgements (an event,
        // not a clock), then SIGKILLs with the workers' requests in flight.
        let deadline = Instant::now() + IO_DEADLINE;
        while acked.load(Ordering::Acquire) < kill_after && Instant::now() < deadline {
            std::thread::yield_now();
        }
        daemon.kill();
        dead.store(true, Ordering::Release);
        observer.join().expect("observer")
    })
}

/// The extreme amounts ledger answers showed during a cycle, for the buckets
/// that move one way only in this test (there are no pool draws): `pool_fen`
/// and `revoked_fen` only grow; `outstanding_fen` only shrinks in a campaign
/// whose refunds never restore a voucher.
#[derive(Default, Debug)]
struct Observed {
    /// Per campaign, per [`Observed::KEYS`]: the most (growing) or least (shrinking) seen.
    fen: [[Option<u64>; 3]; 3],
    reads: u64,
}

impl Observed {
    const KEYS: [&str; 3] = ["pool_fen", "revoked_fen", "outstanding_fen"];

    fn monotone(c: usize, k: usize) -> Option<bool> {
        match k {
            0 | 1 => Some(true),
            _ => (CAMPAIGNS[c].policy != Policy::RestoreIfValid).then_some(false),
        }
    }

    fn see(&mut self, c: usize, ledger: &Value) {
        for (k, key) in Self::KEYS.iter().enumerate() {
            let fen = ledger[key].as_u64().expect(key);
            let seen = &mut self.fen[c][k];
            *seen = match (Self::monotone(c, k), *seen) {
                (None, _) => None,
                (Some(_), None) => Some(fen),
                (Some(true), Some(s)) => Some(s.max(fen)),
                (Some(false), Some(s)) => Some(s.min(fen)),
            };
        }
        self.reads += 1;
    }

    /// Right after the restart, before anything is retried: no answer may have
    /// shown money that the crash then took back.
    fn check(&self, daemon: &Daemon) {
        let mut admin = daemon.admin_client();
        for (c, campaign) in CAMPAIGNS.iter().enumerate() {
            let r = admin.get_admin(&format!("/admin/v1/campaigns/{}/ledger", campaign.id));
            assert_eq!(r.status, 200, "{}", r.text());
            let l = &r.json()["ledger"];
            for (k, key) in Self::KEYS.iter().enumerate() {
                let (Some(grows), Some(seen)) = (Self::monotone(c, k), self.fen[c][k]) else {
                    continue;
                };
                let after = l[key].as_u64().expect(key);
                assert!(
                    if grows { after >= seen } else { after <= seen },
                    "campaign {}: a ledger answer before the kill showed {key} {seen}, after the restart it is {after}: the answer showed money a crash took back",
                    campaign.id,
                );
            }
        }
    }
}

/// Kills land mid-snapshot: their temporary files must not pile up. After a
/// restart at most one is there (a snapshot being written right now), and no
/// more published snapshots than are kept (plus one being published).
fn check_disk(dir: &std::path::Path) {
    let snapshots = voucherd::snapshot::directory(&dir.join("data"));
    let names: Vec<String> = match std::fs::read_dir(&snapshots) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return,
    };
    let temporary = names.iter().filter(|n| n.ends_with(".snap.tmp")).count();
    let published = names.iter().filter(|n| n.ends_with(".snap")).count();
    assert!(
        temporary <= 1 && published <= voucherd::snapshot::SNAPSHOTS_KEPT + 1,
        "snapshot files pile up after crashes: {names:?}"
    );
}

/// `GET /v1/{kind}s/{id}` of something acknowledged: it must be there.
fn found(client: &mut Client, kind: &str, id: &str) -> Value {
    let got = client.get(&format!("/v1/{kind}s/{id}"));
    assert_eq!(
        got.status,
        200,
        "acknowledged {kind} {id} lost after the restart: {}",
        got.text()
    );
    got.json()[kind].clone()
}

/// After a restart: find out whether each in-flight request landed, retry it
/// with the same key and require the retry to agree.
fn resolve_in_flight(daemon: &Daemon, world: &World, workers: &mut [Worker]) {
    let mut public = daemon.client();
    let mut admin = daemon.admin_client();
    for w in workers.iter_mut() {
        let Some(op) = w.in_flight.take() else {
            continue;
        };
        w.stats.in_flight += 1;
        let landed: Vec<bool> = match &op {
            // A retried claim says itself whether it landed (201 or 200 replayed).
            Op::Claim { .. } => vec![false],
            Op::Redeem { voucher, .. } => {
                let v = found(&mut public, "voucher", &w.vouchers[*voucher].id);
                match v["state"].as_str() {
                    Some("redeemed") => {
                        assert!(v["redemption_id"].is_string(), "{v}");
                        vec![true]
                    }
                    Some("claimed") => vec![false],
                    _ => panic!("in-flight redemption left the voucher {v}"),
                }
            }
            Op::Refund {
                redemption,
                refund_id,
                ..
            } => {
                let r = found(&mut public, "redemption", &w.redemptions[*redemption].id);
                let found = r["refunds"]
                    .as_array()
                    .expect("refunds")
                    .iter()
                    .any(|f| f["refund_id"] == refund_id.as_str());
                vec![found]
            }
            Op::Revoke {
                targets, case_id, ..
            } => targets
                .iter()
                .map(|(v, _)| {
                    let got = found(&mut public, "voucher", &w.vouchers[*v].id);
                    got["revocation"]["case_id"] == case_id.as_str()
                })
                .collect(),
            Op::Check(_) => {
                // Retries and refusals change nothing; nothing to resolve.
                w.stats.in_flight -= 1;
                continue;
            }
        };
        let answered = w.send(world, &mut public, &mut admin, &op, Some(&landed));
        assert!(answered.is_some(), "the restarted daemon answers");
    }
}

/// The ledger each campaign must show, computed from acknowledged answers only.
fn expected_ledgers(world: &World, workers: &[Worker]) -> Vec<Value> {
    let quota_total = u64::from(QUOTA_PER_COUNTY) * LOAD_COUNTIES.len() as u64;
    let mut issued = vec![0u64; world.tranches.len()];
    let mut outstanding = [0u64; 3];
    let mut redeemed = [0u64; 3];
    let mut revoked = [0u64; 3];
    let mut pool = [0u64; 3];
    let mut released = [0u64; 3];
    for w in workers {
        for v in &w.vouchers {
            issued[v.tranche] += 1;
            let c = world.tranches[v.tranche].campaign;
            let face = CAMPAIGNS[c].face_fen;
            match v.state {
                VState::Claimed => outstanding[c] += face,
                VState::Revoked => pool[c] += face,
                VState::Redeemed => {}
            }
        }
        for r in &w.redemptions {
            let c = world.tranches[w.vouchers[r.voucher].tranche].campaign;
            let face = CAMPAIGNS[c].face_fen;
            pool[c] += r.returned_fen;
            if r.flagged {
                revoked[c] += face - r.returned_fen;
            } else if !r.restored {
                redeemed[c] += face - r.returned_fen;
            }
        }
    }
    for (t, tranche) in world.tranches.iter().enumerate() {
        let face = CAMPAIGNS[tranche.campaign].face_fen;
        released[tranche.campaign] += quota_total * face;
        outstanding[tranche.campaign] += (quota_total - issued[t]) * face;
    }
    (0..3)
        .map(|c| {
            json!({
                "campaign_id": CAMPAIGNS[c].id,
                "budget_fen": BUDGET_FEN,
                "unreleased_fen": BUDGET_FEN - released[c],
                "pool_fen": pool[c],
                "outstanding_fen": outstanding[c],
                "redeemed_fen": redeemed[c],
                "revoked_fen": revoked[c],
            })
        })
        .collect()
}

/// Checks everything after a restart (once in-flight requests are resolved).
fn check(daemon: &Daemon, world: &World, workers: &mut [Worker], rng: &mut u64, all: bool) {
    let mut public = daemon.client();
    let mut admin = daemon.admin_client();
    // IDs are never issued twice.
    let mut voucher_ids = HashSet::new();
    let mut redemption_ids = HashSet::new();
    for w in workers.iter() {
        for v in &w.vouchers {
            assert!(
                voucher_ids.insert(v.id.clone()),
                "voucher ID {} twice",
                v.id
            );
        }
        for r in &w.redemptions {
            assert!(
                redemption_ids.insert(r.id.clone()),
                "redemption ID {} twice",
                r.id
            );
        }
    }
    // 3. The ledgers, read now and compared below (after the item checks,
    // which name the lost or doubled effect if the ledgers disagree).
    let ledgers: Vec<(Value, Value)> = expected_ledgers(world, workers)
        .into_iter()
        .enumerate()
        .map(|(c, expected)| {
            let r = admin.get_admin(&format!("/admin/v1/campaigns/{}/ledger", CAMPAIGNS[c].id));
            assert_eq!(r.status, 200, "{}", r.text());
            let mut got = r.json()["ledger"].clone();
            got.as_object_mut().expect("ledger").remove("as_of");
            (got, expected)
        })
        .collect();
    let all = all || ledgers.iter().any(|(got, expected)| got != expected);
    // issued + remaining = quota in every county (of the current tranches and
    // a sample of older ones; all at the end). The ledgers above already count
    // every tranche's unclaimed stock to the fen.
    let tranches: Vec<usize> = if all {
        (0..world.tranches.len()).collect()
    } else {
        let mut t = world.current.clone();
        t.extend(
            (0..SAMPLE_CHECKS_PER_CYCLE.min(world.tranches.len()))
                .map(|_| splitmix(rng) as usize % world.tranches.len()),
        );
        t
    };
    let mut issued: HashMap<(usize, String), u32> = HashMap::new();
    for w in workers.iter() {
        for v in &w.vouchers {
            *issued.entry((v.tranche, v.county.to_string())).or_default() += 1;
        }
    }
    for t in tranches {
        let tranche = &world.tranches[t];
        let view = public.get(&format!("/v1/tranches/{}", tranche.id)).json();
        for county in view["counties"].as_array().expect("counties") {
            let code = county["county"].as_str().expect("county").to_owned();
            let remaining = county["remaining"].as_u64().expect("remaining") as u32;
            let known = issued.get(&(t, code.clone())).copied().unwrap_or(0);
            assert_eq!(
                known + remaining,
                QUOTA_PER_COUNTY,
                "tranche {} county {code}: issued {known} + remaining {remaining}",
                tranche.id
            );
        }
    }
    // 1 and 2. Facts read back, retries answered as before, refusals still refused.
    for w in workers.iter_mut() {
        let vouchers: Vec<usize> = if all {
            (0..w.vouchers.len()).collect()
        } else {
            (0..SAMPLE_CHECKS_PER_CYCLE.min(w.vouchers.len()))
                .map(|_| splitmix(rng) as usize % w.vouchers.len())
                .collect()
        };
        for v in vouchers {
            w.check_voucher(world, &mut public, v);
            let mut checks = vec![Check::ReplayClaim(v)];
            if w.vouchers[v].state != VState::Claimed {
                checks.push(Check::RedeemUnusable {
                    voucher: v,
                    order: w.next_id("o-refused"),
                });
            }
            for c in checks {
                w.send(world, &mut public, &mut admin, &Op::Check(c), None)
                    .expect("answer");
            }
        }
        let redemptions: Vec<usize> = if all {
            (0..w.redemptions.len()).collect()
        } else {
            (0..SAMPLE_CHECKS_PER_CYCLE.min(w.redemptions.len()))
                .map(|_| splitmix(rng) as usize % w.redemptions.len())
                .collect()
        };
        for r in redemptions {
            w.check_redemption(world, &mut public, r);
            let mut checks = vec![Check::ReplayRedemption(r)];
            checks.extend((0..w.redemptions[r].refunds.len()).map(|f| Check::ReplayRefund(r, f)));
            if w.redemptions[r].flagged {
                checks.push(Check::RefundFlagged(r, w.next_id("rf-refused")));
            } else if w.redemptions[r].refundable_fen() > 0 {
                checks.push(Check::RefundTooMuch(r, w.next_id("rf-refused")));
            }
            for c in checks {
                w.send(world, &mut public, &mut admin, &Op::Check(c), None)
                    .expect("answer");
            }
        }
    }
    for (got, expected) in &ledgers {
        assert_eq!(
            got, expected,
            "campaign {} ledger differs from the acknowledged effects",
            expected["campaign_id"]
        );
        let parts: u64 = [
            "unreleased_fen",
            "pool_fen",
            "outstanding_fen",
            "redeemed_fen",
            "revoked_fen",
        ]
        .iter()
        .map(|k| got[k].as_u64().expect(k))
        .sum();
        assert_eq!(parts, BUDGET_FEN, "the ledger adds up: {got}");
    }
}

fn setup(daemon: &Daemon) {
    let mut a = daemon.admin_client();
    let r = a.post_csv("/admin/v1/merchants:import", merchants_csv().as_bytes());
    assert_eq!(
        (r.status, r.json()["created"].clone()),
        (200, json!(merchants().len())),
        "{}",
        r.text()
    );
    for (c, name) in CAMPAIGNS.iter().zip(POLICY_NAMES) {
        let r = a.put_admin(
            &format!("/admin/v1/campaigns/{}", c.id),
            &json!({"name": c.id, "budget_fen": BUDGET_FEN, "refund_policy": name}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

/// Creates one tranche per campaign; they become the current generation.
fn new_generation(daemon: &Daemon, world: &mut World, generation: usize) {
    let now = chrono::Utc::now();
    let quotas: serde_json::Map<String, Value> = LOAD_COUNTIES
        .iter()
        .map(|c| (c.to_string(), json!(QUOTA_PER_COUNTY)))
        .collect();
    world.current.clear();
    for (i, c) in CAMPAIGNS.iter().enumerate() {
        let id = format!("g{generation}-{}", c.id);
        // Open for a day, valid for 30 more: no settlement during the run.
        daemon.create_tranche(
            &id,
            &json!({
                "campaign_id": c.id,
                "opens_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "closes_at": (now + chrono::Duration::days(1)).to_rfc3339(),
                "expires_at": (now + chrono::Duration::days(31)).to_rfc3339(),
                "face_value_fen": c.face_fen,
                "threshold_fen": c.threshold_fen,
                "quotas": quotas,
            }),
        );
        world.current.push(world.tranches.len());
        world.tranches.push(TrancheModel { id, campaign: i });
    }
}

#[test]
fn kill_9_lifecycle_torture() {
    let cycles: usize = env_or("VOUCHERD_LIFECYCLE_TORTURE_CYCLES", DEFAULT_CYCLES);
    let seed: u64 = env_or("VOUCHERD_TEST_SEED", 0x11fe_c7c1);
    println!("lifecycle torture seed {seed}, {cycles} cycles");
    let dir = tempfile::tempdir().expect("tempdir");
    // Frequent snapshots, so kills also land while one is being written.
    let config = TestConfig {
        checkpoint_every_records: 30,
        checkpoint_check_interval_ms: 10,
        ..TestConfig::default()
    };
    let mut world = World {
        tranches: Vec::new(),
        current: Vec::new(),
        points: county_points()
            .into_iter()
            .filter(|(c, _, _)| LOAD_COUNTIES.contains(c))
            .map(|(c, x, y)| (c, (x, y)))
            .collect(),
    };
    assert_eq!(world.points.len(), LOAD_COUNTIES.len());
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|index| Worker {
            index,
            ..Worker::default()
        })
        .collect();
    let mut rng = seed;
    let mut slowest_restart = Duration::ZERO;
    let mut observed = Observed::default();
    let mut ledger_reads = 0;
    for cycle in 0..cycles {
        let started = Instant::now();
        let daemon = start(dir.path(), &config);
        let restart = started.elapsed();
        assert!(
            restart < RESTART_BOUND,
            "cycle {cycle}: restart took {restart:?}"
        );
        slowest_restart = slowest_restart.max(restart);
        if cycle == 0 {
            setup(&daemon);
        }
        observed.check(&daemon);
        ledger_reads += observed.reads;
        check_disk(dir.path());
        resolve_in_flight(&daemon, &world, &mut workers);
        check(&daemon, &world, &mut workers, &mut rng, false);
        if cycle % CYCLES_PER_GENERATION == 0 {
            new_generation(&daemon, &mut world, cycle / CYCLES_PER_GENERATION);
        }
        let kill_after = 1 + (splitmix(&mut rng) % MAX_ACKS_BEFORE_KILL) as usize;
        observed = load_and_kill(daemon, &world, &mut workers, cycle, seed, kill_after);
        if (cycle + 1) % PROGRESS_EVERY_CYCLES == 0 {
            let acked: u64 = workers
                .iter()
                .map(|w| w.stats.claims + w.stats.redemptions + w.stats.revocations)
                .sum();
            println!(
                "lifecycle torture: {} cycles done, {acked} claims, redemptions and revocations acknowledged so far",
                cycle + 1
            );
        }
    }
    let started = Instant::now();
    let daemon = start(dir.path(), &config);
    slowest_restart = slowest_restart.max(started.elapsed());
    observed.check(&daemon);
    ledger_reads += observed.reads;
    resolve_in_flight(&daemon, &world, &mut workers);
    check(&daemon, &world, &mut workers, &mut rng, true);
    let mut s = Stats::default();
    for w in &workers {
        s.add(&w.stats);
    }
    println!(
        "lifecycle torture: cycles {cycles}, acknowledged: claims {}, redemptions {}, refunds {} ({} full, {} partial, {} restored; by policy restore/prorata/no_restore {:?}), revocations {} ({} vouchers revoked, {} redemptions flagged); in flight at a kill {} ({} had landed, {} had not); retries answered as before {}, refusals {}, ledger reads under load {ledger_reads} (none showed money taken back), lost 0, double effects 0, slowest restart {} ms, seed {seed}",
        s.claims,
        s.redemptions,
        s.refunds_full + s.refunds_partial,
        s.refunds_full,
        s.refunds_partial,
        s.restored,
        s.refunds_by_policy,
        s.revocations,
        s.revoked_vouchers,
        s.flagged_redemptions,
        s.in_flight,
        s.in_flight_landed,
        s.in_flight_lost,
        s.replays_verified,
        s.refusals_verified,
        slowest_restart.as_millis()
    );
    // The run must have exercised every kind of effect, or it proves nothing.
    assert!(s.claims > cycles as u64, "{s:?}");
    assert!(
        s.redemptions > 0 && s.revoked_vouchers > 0 && s.flagged_redemptions > 0,
        "{s:?}"
    );
    assert!(
        s.refunds_by_policy.iter().all(|&n| n > 0) && s.restored > 0,
        "{s:?}"
    );
    assert!(s.in_flight > 0, "{s:?}");
}
