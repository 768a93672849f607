//! The dispenser's side of a voucher's life after the claim: redemption,
//! refunds, revocation (追回), settlement at close and expiry, and pool draws.
//!
//! Lock order, everywhere: the order book (redemptions only), then the catalog,
//! then one tranche at a time. A shard lock is never held across a WAL sync.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{AdminError, Dispenser, Durability, Shard, TrancheView, assert_replayable};
use crate::core::event::{PoolDrawn, Rollover};
use crate::core::identity::IdentityKeyKind;
use crate::core::lifecycle::{
    Ledger, MAX_DRAW_VOUCHERS, MerchantFacts, RedeemCommand, RedeemRefusal, RefundDecision,
    RefundRecord, RefundRefusal, VoucherState, spread_by_quota,
};
use crate::core::orders::{OrderEntry, OrderLookup};
use crate::core::{
    CountyCode, Event, RedemptionId, ReplayConflict, TrancheBook, UnixMillis, VoucherId,
};
use crate::journal;
use crate::wal::AppendError;

/// Most vouchers one revocation request may name.
pub const MAX_REVOKE_TARGETS: usize = 10_000;

/// A redemption as answers show it.
#[derive(Clone, Debug)]
pub struct RedemptionView {
    pub id: RedemptionId,
    pub voucher_id: VoucherId,
    pub tranche_id: String,
    pub merchant_id: String,
    pub order_id: String,
    pub order_amount_fen: u64,
    pub discount_fen: u64,
    pub payable_fen: u64,
    pub redeemed_at: UnixMillis,
    pub refunded_fen: u64,
    pub returned_to_pool_fen: u64,
    pub refunds: Vec<RefundRecord>,
}

pub struct RedeemInput<'a> {
    pub voucher_id: VoucherId,
    /// The dynamic code's step, when the voucher was presented as a code.
    pub code_step: Option<u64>,
    pub merchant_id: &'a str,
    pub order_id: &'a str,
    pub order_amount_fen: u64,
    pub entropy: u64,
}

/// What a redemption request came to. A refusal carries a durability too: it
/// may cite state whose record is not yet synced (an earlier redemption of
/// the voucher or the order, a revocation, a suspension), so the answer waits
/// until the WAL is durable through everything appended before the decision.
#[derive(Debug)]
pub enum RedeemOutcome {
    Redeemed(RedemptionView, Durability),
    Replayed(RedemptionView, Durability),
    OrderIdReused(Durability),
    UnknownVoucher,
    UnknownMerchant,
    Refused(RedeemRefusal, Durability),
    Unavailable(AppendError),
}

/// What a refund request came to; a refusal waits like a redemption's.
#[derive(Debug)]
pub enum RefundOutcome {
    Refunded(RedemptionView, RefundRecord, Durability),
    Replayed(RedemptionView, RefundRecord, Durability),
    UnknownRedemption,
    Refused(RefundRefusal, Durability),
    Unavailable(AppendError),
}

/// Whom a revocation targets.
#[derive(Clone, Debug, Default)]
pub struct RevokeTargets {
    pub voucher_ids: Vec<VoucherId>,
    pub identity_keys: Vec<(IdentityKeyKind, String)>,
}

/// What a revocation did, for the case file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokeReport {
    /// Unredeemed vouchers revoked; their value went back to the pool.
    pub revoked_vouchers: u64,
    pub recovered_to_pool_fen: u64,
    /// Vouchers already redeemed: flagged with the case, their value moved to `revoked`.
    pub already_redeemed_vouchers: u64,
    pub already_redeemed_fen: u64,
    /// Matched but already expired, revoked or restored-and-refunded: nothing to do.
    pub untouched_vouchers: u64,
    /// Named voucher IDs that match no voucher.
    pub unknown_voucher_ids: u64,
}

impl Dispenser {
    /// Redeems a voucher at a merchant.
    ///
    /// The merchant registry's read lock is held from reading the merchant's facts until the
    /// redemption is appended, so a suspension (which appends under the write lock) is
    /// ordered against every redemption: one acknowledged before a redemption started
    /// refuses it, and a redemption already past its check is logged before it. (Lock
    /// order: merchants, order book, catalog, tranche.)
    pub fn redeem(&self, input: &RedeemInput<'_>, now: UnixMillis) -> RedeemOutcome {
        let merchants = self.merchants.read();
        let merchant = merchants
            .registry
            .get(input.merchant_id)
            .map(|m| MerchantFacts {
                active: m.is_active(),
                county: m.county,
                industry: &m.industry,
            });
        let mut orders = self.orders.lock();
        let Some(shard) = self.shard_by_ordinal(input.voucher_id.tranche_ordinal) else {
            return RedeemOutcome::UnknownVoucher;
        };
        let mut book = shard.lock();
        let Some(voucher_index) = book.voucher_index(input.voucher_id) else {
            return RedeemOutcome::UnknownVoucher;
        };
        match orders.lookup(
            input.merchant_id,
            input.order_id,
            book.ordinal(),
            input.voucher_id.random,
            input.order_amount_fen,
        ) {
            OrderLookup::Replay(entry) => {
                let view = redemption_view(&book, entry.redemption_index);
                let seq = self.newest_seq();
                drop(book);
                drop(orders);
                return match self.durability(seq) {
                    Ok(d) => RedeemOutcome::Replayed(view, d),
                    Err(e) => RedeemOutcome::Unavailable(e),
                };
            }
            OrderLookup::Reused => {
                let seq = self.newest_seq();
                drop(book);
                drop(orders);
                return match self.durability(seq) {
                    Ok(d) => RedeemOutcome::OrderIdReused(d),
                    Err(e) => RedeemOutcome::Unavailable(e),
                };
            }
            OrderLookup::New => {}
        }
        let Some(merchant) = merchant else {
            return RedeemOutcome::UnknownMerchant;
        };
        let command = RedeemCommand {
            voucher_index,
            merchant_id: input.merchant_id,
            merchant,
            order_id: input.order_id,
            order_amount_fen: input.order_amount_fen,
            code_step: input.code_step,
            entropy: input.entropy,
        };
        let event = match book.decide_redeem(&command, now) {
            Ok(e) => e,
            Err(refusal) => {
                let seq = self.newest_seq();
                drop(book);
                drop(orders);
                return match self.durability(seq) {
                    Ok(d) => RedeemOutcome::Refused(refusal, d),
                    Err(e) => RedeemOutcome::Unavailable(e),
                };
            }
        };
        let random = event.redemption_random;
        let event = Event::VoucherRedeemed(event);
        assert_replayable(&book, &event);
        let (seq, durability) = match self.append_event(&event) {
            Ok(pair) => pair,
            Err(e) => return RedeemOutcome::Unavailable(e),
        };
        book.apply_event(Arc::new(event), seq);
        let index = book.redemption_index(random).expect("just applied");
        orders.record(
            input.merchant_id,
            input.order_id,
            OrderEntry {
                tranche_ordinal: book.ordinal(),
                redemption_index: index,
                voucher_random: input.voucher_id.random,
                order_amount_fen: input.order_amount_fen,
            },
        );
        RedeemOutcome::Redeemed(redemption_view(&book, index), durability)
    }

    pub fn redemption(
        &self,
        id: RedemptionId,
    ) -> Option<(RedemptionView, Result<Durability, AppendError>)> {
        let shard = self.shard_by_ordinal(id.tranche_ordinal)?;
        let book = shard.lock();
        let index = book.redemption_index(id.random)?;
        let view = redemption_view(&book, index);
        let seq = self.newest_seq();
        drop(book);
        Some((view, self.durability(seq)))
    }

    /// Records a refund against a redemption under the campaign's refund policy.
    pub fn refund(
        &self,
        id: RedemptionId,
        refund_id: &str,
        amount_fen: u64,
        now: UnixMillis,
    ) -> RefundOutcome {
        let catalog = self.catalog.read();
        let Some(shard) = catalog.tranche_by_ordinal(id.tranche_ordinal).cloned() else {
            return RefundOutcome::UnknownRedemption;
        };
        let mut book = shard.lock();
        let Some(index) = book.redemption_index(id.random) else {
            return RefundOutcome::UnknownRedemption;
        };
        let policy = catalog
            .campaign(&book.spec().campaign_id)
            .expect("a tranche's campaign exists")
            .refund_policy;
        drop(catalog);
        match book.decide_refund(index, refund_id, amount_fen, policy, now) {
            Err(refusal) => {
                let seq = self.newest_seq();
                drop(book);
                match self.durability(seq) {
                    Ok(d) => RefundOutcome::Refused(refusal, d),
                    Err(e) => RefundOutcome::Unavailable(e),
                }
            }
            Ok(RefundDecision::Replay(record)) => {
                let view = redemption_view(&book, index);
                let seq = self.newest_seq();
                drop(book);
                match self.durability(seq) {
                    Ok(d) => RefundOutcome::Replayed(view, record, d),
                    Err(e) => RefundOutcome::Unavailable(e),
                }
            }
            Ok(RefundDecision::Apply(event)) => {
                let event = Event::RedemptionRefunded(event);
                assert_replayable(&book, &event);
                let (seq, durability) = match self.append_event(&event) {
                    Ok(pair) => pair,
                    Err(e) => return RefundOutcome::Unavailable(e),
                };
                book.apply_event(Arc::new(event), seq);
                let view = redemption_view(&book, index);
                let record = book
                    .redemption(index)
                    .refunds
                    .last()
                    .cloned()
                    .expect("just applied");
                RefundOutcome::Refunded(view, record, durability)
            }
        }
    }

    /// Revokes every unredeemed voucher matching `targets` in every tranche,
    /// flags those already redeemed, and reports both for the case file.
    pub fn revoke(
        &self,
        targets: &RevokeTargets,
        reason: &str,
        case_id: &str,
        now: UnixMillis,
    ) -> Result<(RevokeReport, Durability), AdminError> {
        let mut report = RevokeReport::default();
        let shards: Vec<Shard> = self.catalog.read().tranches().to_vec();
        // IDs whose tranche ordinal names no tranche are unknown too.
        report.unknown_voucher_ids += targets
            .voucher_ids
            .iter()
            .filter(|id| id.tranche_ordinal as usize >= shards.len())
            .count() as u64;
        for shard in shards {
            let mut book = shard.lock();
            let mut indexes: Vec<u32> = Vec::new();
            for id in targets
                .voucher_ids
                .iter()
                .filter(|id| id.tranche_ordinal == book.ordinal())
            {
                match book.voucher_index(*id) {
                    Some(i) => indexes.push(i),
                    None => report.unknown_voucher_ids += 1,
                }
            }
            for (kind, value) in &targets.identity_keys {
                let digest = self.digest_key.key_digest(*kind, value);
                indexes.extend(book.holder(digest));
            }
            indexes.sort_unstable();
            indexes.dedup();
            if indexes.is_empty() {
                continue;
            }
            let decided = book.decide_revoke(&indexes, reason, case_id, now);
            for chunk in decided.into_iter().flat_map(split_revocation) {
                let event = Event::VouchersRevoked(chunk);
                assert_replayable(&book, &event);
                let (seq, _) = self.append_event(&event).map_err(AdminError::Unavailable)?;
                book.apply_event(Arc::new(event), seq);
            }
            // What this case did to each named voucher, now or in an earlier attempt of the
            // same case (one cut short by a failed append or a crash between its records, then
            // retried): a retry reports what the whole case did, never "untouched".
            let face = book.spec().face_value_fen;
            for &i in &indexes {
                let status = book.voucher_status(i);
                let by_this_case = status
                    .revocation
                    .is_some_and(|case| book.revocation(case).case_id == case_id);
                match (by_this_case, status.state, status.redemption) {
                    (true, VoucherState::Revoked, _) => {
                        report.revoked_vouchers += 1;
                        report.recovered_to_pool_fen += face;
                    }
                    (true, VoucherState::Redeemed, Some(r)) => {
                        report.already_redeemed_vouchers += 1;
                        report.already_redeemed_fen += face - book.redemption(r).returned_fen;
                    }
                    _ => report.untouched_vouchers += 1,
                }
            }
        }
        // The report rests on every voucher it read, some changed by records of other
        // requests that may not be durable yet: wait for everything appended so far.
        let durability = self
            .durability(self.newest_seq())
            .map_err(AdminError::Unavailable)?;
        Ok((report, durability))
    }

    /// Settles every tranche whose window or validity has ended, and rolls the
    /// pool into tranches that opened in a rollover campaign. Driven by a timer.
    pub fn settle_due(&self, now: UnixMillis) -> Result<Vec<Durability>, AppendError> {
        let mut waits = Vec::new();
        let shards: Vec<Shard> = self.catalog.read().tranches().to_vec();
        for shard in &shards {
            let mut book = shard.lock();
            while let Some(settlement) = book.decide_settle(now) {
                let event = Event::TrancheSettled {
                    tranche_id: book.spec().tranche_id.clone(),
                    settlement,
                    at: now,
                };
                assert_replayable(&book, &event);
                let (seq, durability) = self.append_event(&event)?;
                book.apply_event(Arc::new(event), seq);
                waits.push(durability);
            }
        }
        for shard in &shards {
            let due = {
                let book = shard.lock();
                let id = book.spec().tranche_id.clone();
                (now >= book.spec().opens_at && !book.rollover_done() && book.can_draw(now))
                    .then_some(id)
            };
            if let Some(tranche_id) = due {
                match self.draw_pool(&tranche_id, PoolRequest::Rollover, now) {
                    Ok((_, d)) => waits.push(d),
                    Err(AdminError::Unavailable(e)) => return Err(e),
                    Err(AdminError::NothingToDraw | AdminError::Closed) => {}
                    Err(other) => tracing::warn!(
                        tranche = %tranche_id,
                        refusal = ?other,
                        "the campaign's rollover into this tranche was refused; the money stays in the pool"
                    ),
                }
            }
        }
        Ok(waits)
    }

    /// Adds vouchers to a tranche, paid from the campaign pool.
    pub fn draw_pool(
        &self,
        tranche_id: &str,
        request: PoolRequest,
        now: UnixMillis,
    ) -> Result<(TrancheView, Durability), AdminError> {
        // The catalog write lock makes draws exclusive: the pool can only grow
        // while it is held, so the balance read below stays available.
        let catalog = self.catalog.write();
        let shard = catalog
            .tranche(tranche_id)
            .cloned()
            .ok_or(AdminError::UnknownTranche)?;
        let (campaign_id, face, quotas, can_draw, rollover_done) = {
            let book = shard.lock();
            (
                book.spec().campaign_id.clone(),
                book.spec().face_value_fen,
                book.spec().quotas.clone(),
                book.can_draw(now),
                book.rollover_done(),
            )
        };
        let campaign = catalog
            .campaign(&campaign_id)
            .cloned()
            .expect("a tranche's campaign exists");
        if !can_draw {
            return Err(AdminError::Closed);
        }
        let ledger = Ledger::of(
            campaign.budget_fen,
            &self.campaign_money(&catalog, &campaign_id),
        );
        let (added, rollover) = match request {
            PoolRequest::Rollover => {
                if campaign.rollover != Rollover::NextTranche || rollover_done {
                    return Err(AdminError::NothingToDraw);
                }
                let vouchers = (ledger.pool_fen / face).min(MAX_DRAW_VOUCHERS);
                (spread_by_quota(&quotas, vouchers), true)
            }
            PoolRequest::Vouchers(n) => (spread_by_quota(&quotas, n), false),
            PoolRequest::PerCounty(list) => {
                if list
                    .iter()
                    .any(|(c, _)| !quotas.iter().any(|(q, _)| q == c))
                {
                    return Err(AdminError::CountyNotInTranche);
                }
                (list, false)
            }
        };
        let vouchers: u64 = added.iter().map(|(_, n)| u64::from(*n)).sum();
        if vouchers == 0 && !rollover {
            return Err(AdminError::NothingToDraw);
        }
        let needed_fen = vouchers.saturating_mul(face);
        if needed_fen > ledger.pool_fen {
            return Err(AdminError::PoolTooSmall {
                pool_fen: ledger.pool_fen,
                needed_fen,
            });
        }
        let event = Event::PoolDrawn(PoolDrawn {
            tranche_id: tranche_id.to_owned(),
            added,
            amount_fen: needed_fen,
            rollover,
            at: now,
        });
        // The tranche was unlocked while the ledger was read: its closing may have been
        // settled meanwhile (the settlement timer takes no catalog lock). Replay's own
        // check of the draw, on the tranche as it is now, decides.
        let mut book = shard.lock();
        match book.check_event_content(&event) {
            Ok(()) => {}
            Err(ReplayConflict::TrancheClosed) => return Err(AdminError::Closed),
            Err(ReplayConflict::QuotaOverflow(county)) => {
                return Err(AdminError::QuotaOverflow { county });
            }
            Err(other) => panic!("a pool draw replay would refuse ({other}); not appended"),
        }
        let (seq, durability) = self.append_event(&event).map_err(AdminError::Unavailable)?;
        book.apply_event(Arc::new(event), seq);
        Ok((self.tranche_view(&book, now), durability))
    }

    fn shard_by_ordinal(&self, ordinal: u32) -> Option<Shard> {
        self.catalog.read().tranche_by_ordinal(ordinal).cloned()
    }

    fn append_event(&self, event: &Event) -> Result<(u64, Durability), AppendError> {
        let (tx, rx) = oneshot::channel();
        let seq = self
            .wal
            .append(journal::kind_of(event), journal::encode(event), tx)?;
        Ok((seq, Durability::Wait(rx)))
    }

    /// The newest WAL position. Lifecycle records do not keep their own
    /// sequence numbers, so an answer about one waits for everything appended
    /// so far: always enough, and rarely more than one batch.
    fn newest_seq(&self) -> u64 {
        self.wal.next_seq() - 1
    }
}

/// How many vouchers a pool draw adds.
#[derive(Clone, Debug)]
pub enum PoolRequest {
    /// The campaign's rollover: the whole pool, spread over the counties by quota.
    Rollover,
    /// This many vouchers, spread over the counties by quota.
    Vouchers(u64),
    /// Exactly these per county.
    PerCounty(Vec<(CountyCode, u32)>),
}

fn redemption_view(book: &TrancheBook, index: u32) -> RedemptionView {
    let r = book.redemption(index);
    let e = &r.event;
    RedemptionView {
        id: RedemptionId {
            tranche_ordinal: book.ordinal(),
            random: e.redemption_random,
        },
        voucher_id: book.voucher(r.voucher_index).id(),
        tranche_id: e.tranche_id.clone(),
        merchant_id: e.merchant_id.clone(),
        order_id: e.order_id.clone(),
        order_amount_fen: e.order_amount_fen,
        discount_fen: e.discount_fen,
        payable_fen: e.order_amount_fen - e.discount_fen,
        redeemed_at: e.at,
        refunded_fen: r.refunded_fen,
        returned_to_pool_fen: r.returned_fen,
        refunds: r.refunds.clone(),
    }
}

/// Keeps each revocation record under the journal's per-record limit.
fn split_revocation(
    event: crate::core::event::VouchersRevoked,
) -> Vec<crate::core::event::VouchersRevoked> {
    let limit = journal::MAX_VOUCHERS_PER_REVOCATION_RECORD;
    if event.revoked.len() <= limit && event.flagged.len() <= limit {
        return vec![event];
    }
    let mut out = Vec::new();
    let revoked_chunks: Vec<_> = event.revoked.chunks(limit).map(<[u64]>::to_vec).collect();
    let flagged_chunks: Vec<_> = event.flagged.chunks(limit).map(<[u64]>::to_vec).collect();
    for i in 0..revoked_chunks.len().max(flagged_chunks.len()) {
        out.push(crate::core::event::VouchersRevoked {
            revoked: revoked_chunks.get(i).cloned().unwrap_or_default(),
            flagged: flagged_chunks.get(i).cloned().unwrap_or_default(),
            ..event.clone()
        });
    }
    out
}

impl VoucherState {
    /// Whether a voucher in this state can still be shown a redemption code.
    pub fn can_show_code(self) -> bool {
        self == VoucherState::Claimed
    }
}
