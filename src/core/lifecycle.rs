//! A voucher's life after it is claimed, and the money that moves with it:
//! redemption (核销) at a merchant, refunds under the campaign's policy,
//! expiry, the return of unclaimed stock when a tranche closes, revocation for
//! fraud (追回), and extra vouchers drawn from the campaign pool.
//!
//! Money is tracked per tranche in [`TrancheMoney`] and per campaign in
//! [`Ledger`], always in integer fen. Every decision returns an event that
//! states the exact money it moves, so replay never recomputes an amount.
//!
//! Money buckets (all face values, since a voucher's value is always used in
//! full: orders must be at least `max(threshold, face value)`):
//! - `outstanding`: unclaimed stock of tranches not yet closed, plus claimed
//!   vouchers not yet redeemed, expired or revoked;
//! - `redeemed`: the value of vouchers used at merchants, net of refunds;
//! - `revoked`: the value of redeemed vouchers later found fraudulent (to be
//!   recovered from the merchant or the user off-system, 追回);
//! - `returned`: money a tranche gave back to the campaign pool.

use std::sync::Arc;

use super::event::{
    PoolDrawn, RedemptionRefunded, RefundPolicy, Settlement, VoucherRedeemed, VouchersRevoked,
};
use super::time::UnixMillis;
use super::tranche::{CountyCode, TrancheBook, unused_key};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VoucherState {
    Claimed,
    Redeemed,
    Expired,
    Revoked,
}

impl VoucherState {
    pub fn as_str(self) -> &'static str {
        match self {
            VoucherState::Claimed => "claimed",
            VoucherState::Redeemed => "redeemed",
            VoucherState::Expired => "expired",
            VoucherState::Revoked => "revoked",
        }
    }
}

/// The mutable part of a voucher.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct VoucherStatus {
    pub state: VoucherState,
    /// Index of the redemption that currently uses it, while redeemed.
    pub redemption: Option<u32>,
    /// Highest dynamic-code time step used to redeem it: older codes are replays.
    pub last_code_step: Option<u64>,
    /// Index of the revocation (case) that touched it.
    pub revocation: Option<u32>,
}

impl VoucherStatus {
    pub fn claimed() -> VoucherStatus {
        VoucherStatus {
            state: VoucherState::Claimed,
            redemption: None,
            last_code_step: None,
            revocation: None,
        }
    }
}

/// One refund recorded against a redemption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    pub refund_id: Box<str>,
    pub amount_fen: u64,
    pub returned_fen: u64,
    pub restored: bool,
    pub at: UnixMillis,
}

/// Refunds per redemption, at most.
pub const MAX_REFUNDS_PER_REDEMPTION: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redemption {
    pub event: Arc<VoucherRedeemed>,
    pub voucher_index: u32,
    pub refunds: Vec<RefundRecord>,
    pub refunded_fen: u64,
    /// Part of the voucher's value already returned to the pool by refunds.
    pub returned_fen: u64,
    /// False once a refund restored the voucher: it no longer uses it.
    pub active: bool,
    /// Flagged by a revocation after it was redeemed.
    pub flagged: bool,
}

/// Money of one tranche, in fen.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TrancheMoney {
    pub released_from_budget_fen: u64,
    pub drawn_from_pool_fen: u64,
    pub outstanding_fen: u64,
    pub redeemed_fen: u64,
    pub revoked_fen: u64,
    pub returned_fen: u64,
}

impl TrancheMoney {
    pub fn released(from_budget_fen: u64) -> TrancheMoney {
        TrancheMoney {
            released_from_budget_fen: from_budget_fen,
            outstanding_fen: from_budget_fen,
            ..TrancheMoney::default()
        }
    }

    /// released = outstanding + redeemed + revoked + returned.
    pub fn check(&self) {
        let released = self.released_from_budget_fen + self.drawn_from_pool_fen;
        let settled =
            self.outstanding_fen + self.redeemed_fen + self.revoked_fen + self.returned_fen;
        assert_eq!(released, settled, "tranche money does not add up: {self:?}");
    }

    fn outstanding_to_redeemed(&mut self, fen: u64) {
        self.outstanding_fen = checked_sub(self.outstanding_fen, fen);
        self.redeemed_fen += fen;
    }
    fn redeemed_to_outstanding(&mut self, fen: u64) {
        self.redeemed_fen = checked_sub(self.redeemed_fen, fen);
        self.outstanding_fen += fen;
    }
    fn redeemed_to_returned(&mut self, fen: u64) {
        self.redeemed_fen = checked_sub(self.redeemed_fen, fen);
        self.returned_fen += fen;
    }
    fn outstanding_to_returned(&mut self, fen: u64) {
        self.outstanding_fen = checked_sub(self.outstanding_fen, fen);
        self.returned_fen += fen;
    }
    fn redeemed_to_revoked(&mut self, fen: u64) {
        self.redeemed_fen = checked_sub(self.redeemed_fen, fen);
        self.revoked_fen += fen;
    }
}

fn checked_sub(from: u64, fen: u64) -> u64 {
    from.checked_sub(fen)
        .unwrap_or_else(|| panic!("money bucket would go negative: {from} - {fen}"))
}

/// A campaign's money: `budget = unreleased + pool + outstanding + redeemed + revoked`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub budget_fen: u64,
    pub unreleased_fen: u64,
    pub pool_fen: u64,
    pub outstanding_fen: u64,
    pub redeemed_fen: u64,
    pub revoked_fen: u64,
}

impl Ledger {
    /// The ledger of a campaign from its budget and its tranches' money.
    /// Panics if the parts do not add up (a broken invariant).
    pub fn of<'a>(budget_fen: u64, tranches: impl IntoIterator<Item = &'a TrancheMoney>) -> Ledger {
        let mut released = 0u64;
        let mut returned = 0u64;
        let mut drawn = 0u64;
        let mut ledger = Ledger {
            budget_fen,
            ..Ledger::default()
        };
        for t in tranches {
            t.check();
            released += t.released_from_budget_fen;
            returned += t.returned_fen;
            drawn += t.drawn_from_pool_fen;
            ledger.outstanding_fen += t.outstanding_fen;
            ledger.redeemed_fen += t.redeemed_fen;
            ledger.revoked_fen += t.revoked_fen;
        }
        ledger.unreleased_fen = checked_sub(budget_fen, released);
        ledger.pool_fen = checked_sub(returned, drawn);
        ledger.check();
        ledger
    }

    pub fn check(&self) {
        let parts = self.unreleased_fen
            + self.pool_fen
            + self.outstanding_fen
            + self.redeemed_fen
            + self.revoked_fen;
        assert_eq!(
            self.budget_fen, parts,
            "campaign ledger does not add up: {self:?}"
        );
    }
}

/// What the merchant registry says about the merchant presenting a voucher.
#[derive(Copy, Clone, Debug)]
pub struct MerchantFacts<'a> {
    pub active: bool,
    pub county: CountyCode,
    pub industry: &'a str,
}

pub struct RedeemCommand<'a> {
    pub voucher_index: u32,
    pub merchant_id: &'a str,
    pub merchant: MerchantFacts<'a>,
    pub order_id: &'a str,
    pub order_amount_fen: u64,
    pub code_step: Option<u64>,
    pub entropy: u64,
}

/// Why a redemption is refused, in the order the checks run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RedeemRefusal {
    AlreadyRedeemed,
    VoucherRevoked,
    VoucherExpired,
    CodeReplayed,
    MerchantSuspended,
    CountyMismatch,
    IndustryNotAllowed,
    BelowThreshold { minimum_order_fen: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundDecision {
    /// Record this refund (its money movement is inside).
    Apply(RedemptionRefunded),
    /// The same refund ID with the same amount was recorded before.
    Replay(RefundRecord),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RefundRefusal {
    RefundIdReused,
    ExceedsOrder { refundable_fen: u64 },
    UnderInvestigation,
    TooManyRefunds,
}

impl TrancheBook {
    pub fn redemption(&self, index: u32) -> &Redemption {
        &self.redemptions[index as usize]
    }

    pub fn redemption_index(&self, redemption_random: u64) -> Option<u32> {
        self.redemption_by_random.get(redemption_random)
    }

    /// The state a voucher is in at `now` (expiry shows before it is settled).
    pub fn voucher_state(&self, index: u32, now: UnixMillis) -> VoucherState {
        let state = self.status[index as usize].state;
        if state == VoucherState::Claimed && now >= self.spec.expires_at {
            VoucherState::Expired
        } else {
            state
        }
    }

    pub fn decide_redeem(
        &self,
        cmd: &RedeemCommand<'_>,
        now: UnixMillis,
    ) -> Result<VoucherRedeemed, RedeemRefusal> {
        let status = &self.status[cmd.voucher_index as usize];
        match status.state {
            VoucherState::Redeemed => return Err(RedeemRefusal::AlreadyRedeemed),
            VoucherState::Revoked => return Err(RedeemRefusal::VoucherRevoked),
            VoucherState::Expired => return Err(RedeemRefusal::VoucherExpired),
            VoucherState::Claimed if now >= self.spec.expires_at => {
                return Err(RedeemRefusal::VoucherExpired);
            }
            VoucherState::Claimed => {}
        }
        if let (Some(step), Some(last)) = (cmd.code_step, status.last_code_step)
            && step <= last
        {
            return Err(RedeemRefusal::CodeReplayed);
        }
        if !cmd.merchant.active {
            return Err(RedeemRefusal::MerchantSuspended);
        }
        let voucher = self.voucher(cmd.voucher_index);
        if !self.spec.redeem_anywhere_in_city && cmd.merchant.county != voucher.county() {
            return Err(RedeemRefusal::CountyMismatch);
        }
        if !self.spec.industries.is_empty()
            && self
                .spec
                .industries
                .binary_search_by(|i| i.as_str().cmp(cmd.merchant.industry))
                .is_err()
        {
            return Err(RedeemRefusal::IndustryNotAllowed);
        }
        let minimum_order_fen = self.spec.minimum_order_fen();
        if cmd.order_amount_fen < minimum_order_fen {
            return Err(RedeemRefusal::BelowThreshold { minimum_order_fen });
        }
        Ok(VoucherRedeemed {
            tranche_id: self.spec.tranche_id.clone(),
            voucher_random: voucher.id().random,
            redemption_random: unused_key(cmd.entropy, |k| self.redemption_by_random.contains(k)),
            merchant_id: cmd.merchant_id.to_owned(),
            order_id: cmd.order_id.to_owned(),
            order_amount_fen: cmd.order_amount_fen,
            discount_fen: self.spec.face_value_fen,
            code_step: cmd.code_step,
            at: now,
        })
    }

    pub(super) fn apply_redeem(&mut self, event: VoucherRedeemed) {
        let voucher_index = self
            .voucher_by_random
            .get(event.voucher_random)
            .expect("redeemed voucher exists");
        let status = &mut self.status[voucher_index as usize];
        assert_eq!(
            status.state,
            VoucherState::Claimed,
            "redeeming a voucher that is not claimed"
        );
        assert_eq!(event.discount_fen, self.spec.face_value_fen);
        let index = u32::try_from(self.redemptions.len()).expect("redemption count fits u32");
        status.state = VoucherState::Redeemed;
        status.redemption = Some(index);
        status.last_code_step = status.last_code_step.max(event.code_step);
        let previous = self
            .redemption_by_random
            .insert(event.redemption_random, index);
        assert!(previous.is_none(), "redemption ID issued twice");
        self.claimed_live -= 1;
        self.money.outstanding_to_redeemed(event.discount_fen);
        self.redemptions.push(Redemption {
            event: Arc::new(event),
            voucher_index,
            refunds: Vec::new(),
            refunded_fen: 0,
            returned_fen: 0,
            active: true,
            flagged: false,
        });
    }

    pub fn decide_refund(
        &self,
        redemption_index: u32,
        refund_id: &str,
        amount_fen: u64,
        policy: RefundPolicy,
        now: UnixMillis,
    ) -> Result<RefundDecision, RefundRefusal> {
        let r = &self.redemptions[redemption_index as usize];
        if let Some(previous) = r.refunds.iter().find(|f| &*f.refund_id == refund_id) {
            return if previous.amount_fen == amount_fen {
                Ok(RefundDecision::Replay(previous.clone()))
            } else {
                Err(RefundRefusal::RefundIdReused)
            };
        }
        if r.flagged {
            return Err(RefundRefusal::UnderInvestigation);
        }
        let order = r.event.order_amount_fen;
        let refundable_fen = order - r.refunded_fen;
        if amount_fen == 0 || amount_fen > refundable_fen {
            return Err(RefundRefusal::ExceedsOrder { refundable_fen });
        }
        if r.refunds.len() >= MAX_REFUNDS_PER_REDEMPTION {
            return Err(RefundRefusal::TooManyRefunds);
        }
        let face = r.event.discount_fen;
        let refunded_after = r.refunded_fen + amount_fen;
        let full = refunded_after == order;
        let (returned_fen, restored) = if !r.active {
            (0, false)
        } else {
            match policy {
                RefundPolicy::RestoreIfValid
                    if full && now < self.spec.expires_at && !self.expired_settled =>
                {
                    (0, true)
                }
                RefundPolicy::RestoreIfValid if full => (face - r.returned_fen, false),
                RefundPolicy::RestoreIfValid => (0, false),
                RefundPolicy::Prorata => {
                    // Cumulative share, rounded down; a full refund returns the full value.
                    let share_after =
                        (u128::from(face) * u128::from(refunded_after) / u128::from(order)) as u64;
                    // Never below what earlier refunds returned (a replayed
                    // state is only checked to return at most the face value).
                    (share_after.saturating_sub(r.returned_fen), false)
                }
                RefundPolicy::NoRestore => (face - r.returned_fen, false),
            }
        };
        Ok(RefundDecision::Apply(RedemptionRefunded {
            tranche_id: self.spec.tranche_id.clone(),
            redemption_random: r.event.redemption_random,
            refund_id: refund_id.to_owned(),
            amount_fen,
            returned_fen,
            restored,
            at: now,
        }))
    }

    pub(super) fn apply_refund(&mut self, event: &RedemptionRefunded) {
        let index = self
            .redemption_by_random
            .get(event.redemption_random)
            .expect("refunded redemption exists");
        let face = self.spec.face_value_fen;
        let r = &mut self.redemptions[index as usize];
        assert!(
            r.refunded_fen + event.amount_fen <= r.event.order_amount_fen,
            "refund exceeds the order"
        );
        assert!(
            !(event.restored && event.returned_fen > 0),
            "a refund restores or returns, not both"
        );
        r.refunded_fen += event.amount_fen;
        r.returned_fen += event.returned_fen;
        assert!(
            r.returned_fen <= face,
            "returned more than the voucher was worth"
        );
        r.refunds.push(RefundRecord {
            refund_id: event.refund_id.as_str().into(),
            amount_fen: event.amount_fen,
            returned_fen: event.returned_fen,
            restored: event.restored,
            at: event.at,
        });
        let voucher_index = r.voucher_index;
        let fully_returned = r.returned_fen == face;
        self.money.redeemed_to_returned(event.returned_fen);
        if event.restored {
            r.active = false;
            let status = &mut self.status[voucher_index as usize];
            assert_eq!(status.state, VoucherState::Redeemed);
            status.state = VoucherState::Claimed;
            status.redemption = None;
            self.claimed_live += 1;
            self.money.redeemed_to_outstanding(face);
        } else if fully_returned
            && self.status[voucher_index as usize].state == VoucherState::Redeemed
        {
            // Its value is back in the pool: the voucher stays used (no_restore,
            // prorata) or, refunded after expiry, counts as expired.
            r.active = false;
        }
    }

    /// The settlement due at `now`, if any: closing first, then expiry.
    pub fn decide_settle(&self, now: UnixMillis) -> Option<Settlement> {
        if !self.closed_settled && now >= self.spec.closes_at {
            Some(Settlement::Closed)
        } else if self.closed_settled && !self.expired_settled && now >= self.spec.expires_at {
            Some(Settlement::Expired)
        } else {
            None
        }
    }

    pub(super) fn apply_settle(&mut self, settlement: Settlement) {
        let face = self.spec.face_value_fen;
        match settlement {
            Settlement::Closed => {
                assert!(!self.closed_settled, "closed twice");
                let unclaimed = self.remaining_total() * face;
                self.money.outstanding_to_returned(unclaimed);
                self.closed_settled = true;
            }
            Settlement::Expired => {
                assert!(
                    self.closed_settled && !self.expired_settled,
                    "expired out of order"
                );
                let mut expired = 0u64;
                for status in self
                    .status
                    .iter_mut()
                    .filter(|s| s.state == VoucherState::Claimed)
                {
                    status.state = VoucherState::Expired;
                    expired += 1;
                }
                self.claimed_live -= expired;
                self.money.outstanding_to_returned(expired * face);
                self.expired_settled = true;
            }
        }
    }

    /// Splits vouchers into those to revoke (still claimed) and those to flag
    /// (already redeemed, not restored); the rest are left alone.
    pub fn decide_revoke(
        &self,
        voucher_indexes: &[u32],
        reason: &str,
        case_id: &str,
        now: UnixMillis,
    ) -> Option<VouchersRevoked> {
        let mut revoked = Vec::new();
        let mut flagged = Vec::new();
        for &i in voucher_indexes {
            let status = &self.status[i as usize];
            let random = self.voucher(i).id().random;
            match (status.state, status.redemption) {
                (VoucherState::Claimed, _) => revoked.push(random),
                (VoucherState::Redeemed, Some(r))
                    if self.redemptions[r as usize].active
                        && !self.redemptions[r as usize].flagged =>
                {
                    flagged.push(random)
                }
                _ => {}
            }
        }
        revoked.sort_unstable();
        revoked.dedup();
        flagged.sort_unstable();
        flagged.dedup();
        if revoked.is_empty() && flagged.is_empty() {
            return None;
        }
        Some(VouchersRevoked {
            tranche_id: self.spec.tranche_id.clone(),
            revoked,
            flagged,
            reason: reason.to_owned(),
            case_id: case_id.to_owned(),
            at: now,
        })
    }

    pub(super) fn apply_revoke(&mut self, event: &VouchersRevoked) {
        let face = self.spec.face_value_fen;
        let case = u32::try_from(self.revocations.len()).expect("revocation count fits u32");
        for random in &event.revoked {
            let i = self
                .voucher_by_random
                .get(*random)
                .expect("revoked voucher exists");
            let status = &mut self.status[i as usize];
            assert_eq!(
                status.state,
                VoucherState::Claimed,
                "revoking a voucher that is not claimed"
            );
            status.state = VoucherState::Revoked;
            status.revocation = Some(case);
            self.claimed_live -= 1;
            self.money.outstanding_to_returned(face);
        }
        for random in &event.flagged {
            let i = self
                .voucher_by_random
                .get(*random)
                .expect("flagged voucher exists");
            let status = &mut self.status[i as usize];
            let r = status.redemption.expect("flagged voucher is redeemed");
            status.revocation = Some(case);
            let redemption = &mut self.redemptions[r as usize];
            assert!(redemption.active && !redemption.flagged, "flagging twice");
            redemption.flagged = true;
            let still_redeemed = face - redemption.returned_fen;
            self.money.redeemed_to_revoked(still_redeemed);
        }
        self.revocations.push(Arc::new(event.clone()));
    }

    pub fn revocation(&self, index: u32) -> &VouchersRevoked {
        &self.revocations[index as usize]
    }

    /// Whether extra vouchers may still be added (the tranche has not closed).
    pub fn can_draw(&self, now: UnixMillis) -> bool {
        !self.closed_settled && now < self.spec.closes_at
    }

    pub fn rollover_done(&self) -> bool {
        self.rollover_done
    }

    pub(super) fn apply_draw(&mut self, event: &PoolDrawn) {
        assert!(!self.closed_settled, "drawing into a closed tranche");
        let face = self.spec.face_value_fen;
        let mut vouchers = 0u64;
        for (county, added) in &event.added {
            let slot = self
                .county_slot(*county)
                .expect("drawn county is in the tranche");
            self.counties[slot].quota += *added;
            vouchers += u64::from(*added);
        }
        assert_eq!(
            vouchers * face,
            event.amount_fen,
            "drawn amount is not whole vouchers"
        );
        self.money.drawn_from_pool_fen += event.amount_fen;
        self.money.outstanding_fen += event.amount_fen;
        self.rollover_done |= event.rollover;
    }
}

/// Most vouchers one pool draw may add: an admin's draw, or a campaign's rollover (which
/// leaves any more in the pool). Bounds the draw's value in fen far below what `u64` counts.
pub const MAX_DRAW_VOUCHERS: u64 = 10_000_000;

/// Spreads `vouchers` over the counties in proportion to their quotas
/// (largest remainder, ties to the lower code). Pure and exact.
pub fn spread_by_quota(quotas: &[(CountyCode, u32)], vouchers: u64) -> Vec<(CountyCode, u32)> {
    let total: u64 = quotas.iter().map(|(_, q)| u64::from(*q)).sum();
    if total == 0 || vouchers == 0 {
        return Vec::new();
    }
    let mut shares: Vec<(CountyCode, u64, u64)> = quotas
        .iter()
        .map(|(c, q)| {
            let exact = u128::from(vouchers) * u128::from(*q);
            (
                *c,
                (exact / u128::from(total)) as u64,
                (exact % u128::from(total)) as u64,
            )
        })
        .collect();
    let mut left = vouchers - shares.iter().map(|s| s.1).sum::<u64>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        shares[b]
            .2
            .cmp(&shares[a].2)
            .then(shares[a].0.cmp(&shares[b].0))
    });
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .filter(|s| s.1 > 0)
        .map(|(c, n, _)| (c, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_exact_and_proportional() {
        let q = [
            (CountyCode(1), 100),
            (CountyCode(2), 50),
            (CountyCode(3), 50),
        ];
        assert_eq!(
            spread_by_quota(&q, 4),
            vec![(CountyCode(1), 2), (CountyCode(2), 1), (CountyCode(3), 1)]
        );
        let s = spread_by_quota(&q, 7);
        assert_eq!(s.iter().map(|(_, n)| u64::from(*n)).sum::<u64>(), 7);
        assert!(spread_by_quota(&q, 0).is_empty());
        assert_eq!(spread_by_quota(&q, 1), vec![(CountyCode(1), 1)]);
    }

    #[test]
    fn ledger_adds_up() {
        let mut t = TrancheMoney::released(1_000);
        t.outstanding_to_redeemed(200);
        t.redeemed_to_returned(50);
        t.outstanding_to_returned(100);
        let l = Ledger::of(5_000, [&t]);
        assert_eq!(l.unreleased_fen, 4_000);
        assert_eq!(l.pool_fen, 150);
        assert_eq!(l.redeemed_fen, 150);
        assert_eq!(l.outstanding_fen, 700);
    }
}
