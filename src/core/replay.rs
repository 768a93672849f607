//! Checks on events read back from disk, before they are applied.
//!
//! Live operation applies only what `decide_*` produced, and the `apply_*`
//! functions assert the invariants that guarantees (no over-issue, one
//! identity one voucher, money never created or lost): a violation there is a
//! bug in the daemon and crashes it. An event read back from the WAL or a
//! snapshot is different: its checksums may be valid while its content is not
//! one the core would ever have decided (a bug in an older version, a
//! hand-edited or mixed-up file). Such a record is refused here with a
//! [`ReplayConflict`], and the daemon refuses to start, instead of tripping an
//! assertion half-way through building its state.
//!
//! Each check looks only at what the matching `apply_*` relies on, in O(1)
//! per record (a revocation: O(1) per voucher it names; a pool draw: per
//! county it names), and allocates nothing unless it fails. A check that
//! passes guarantees that applying the event keeps every asserted invariant.
//! Campaign-wide money (a campaign's budget and pool) is checked once the
//! whole state is rebuilt ([`check_ledger`]): a snapshot groups events by
//! tranche, so the order in which they were decided across tranches is not
//! on disk, and a per-record budget check would refuse valid snapshots.

use std::fmt;

use super::event::VoucherClaimed;
use super::event::{
    Event, PoolDrawn, RedemptionRefunded, Settlement, VoucherRedeemed, VouchersRevoked,
};
use super::identity::{DigestKey, IdentityKeys};
use super::lifecycle::{Ledger, MAX_REFUNDS_PER_REDEMPTION, TrancheMoney, VoucherState};
use super::tranche::{ClaimDigests, CountyCode, LogEntry, MAX_COUNTIES_PER_TRANCHE, TrancheBook};

/// A claim read back from disk with its identity and request digests, ready for
/// [`TrancheBook::replay_claims`].
#[derive(Clone, Debug)]
pub struct DigestedClaim {
    claim: VoucherClaimed,
    digests: ClaimDigests,
    /// The key the digests were made with; the tranche checks it is its own.
    key: DigestKey,
}

impl DigestedClaim {
    pub fn new(key: DigestKey, claim: VoucherClaimed) -> DigestedClaim {
        let digests = claim_digests(&key, &claim);
        DigestedClaim {
            claim,
            digests,
            key,
        }
    }

    pub fn claim(&self) -> &VoucherClaimed {
        &self.claim
    }
}

fn claim_digests(key: &DigestKey, event: &VoucherClaimed) -> ClaimDigests {
    let identity = key.identity_digests(&IdentityKeys {
        user_id: event.user_id(),
        id_hash: event.id_hash(),
        phone_hash: event.phone_hash(),
        device_id: event.device_id(),
    });
    let request = key.request_digest(event.request_id());
    ClaimDigests { identity, request }
}

/// Why an event read back from disk cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayConflict {
    /// Sequence numbers of one tranche's events must increase.
    OutOfOrder {
        seq: u64,
        after_seq: u64,
    },
    UnknownCampaign(String),
    TooManyCampaigns,
    TooManyTranches,
    UnknownTranche(String),
    /// A definition as new tranche under an ID that already has a tranche.
    TrancheIdTaken(String),
    /// Tranche ordinals are dense: a new tranche takes the next one.
    OrdinalSkipsAhead {
        ordinal: u32,
        next: u32,
    },
    /// A redefinition names an ordinal that belongs to another tranche ID.
    OrdinalOfAnotherTranche {
        ordinal: u32,
    },
    /// A tranche may be redefined only before anything happened to it.
    RedefinedAfter(&'static str),
    InvalidSpec(String),
    /// Claims and pool draws need a tranche that has not been settled at closing.
    TrancheClosed,
    CountyNotInTranche(CountyCode),
    OverIssue {
        county: CountyCode,
        quota: u32,
    },
    IdentityHoldsVoucher,
    RequestAnswered,
    VoucherIdTaken(u64),
    UnknownVoucher(u64),
    VoucherNotClaimed {
        voucher: u64,
        state: VoucherState,
    },
    DiscountNotFaceValue {
        discount_fen: u64,
        face_value_fen: u64,
    },
    BelowMinimumOrder {
        order_fen: u64,
        minimum_fen: u64,
    },
    RedemptionIdTaken(u64),
    /// A (merchant, order) pair redeems at most once.
    OrderRedeemedTwice,
    UnknownRedemption(u64),
    RefundUnderInvestigation,
    RefundIdTaken,
    TooManyRefunds,
    RefundExceedsOrder {
        amount_fen: u64,
        refundable_fen: u64,
    },
    /// The money a refund moves is impossible for its redemption.
    RefundMoney(&'static str),
    SettledOutOfOrder(Settlement),
    /// A revocation's voucher lists are sorted and free of duplicates.
    RevocationNotSorted,
    /// A flagged voucher must be redeemed by an active redemption not flagged before.
    NotFlaggable(u64),
    /// A draw's amount is not its vouchers at face value, or overflows the counts.
    DrawAmount {
        amount_fen: u64,
        vouchers: u64,
    },
    QuotaOverflow(CountyCode),
    /// The campaign's money does not add up once everything is applied.
    Ledger {
        campaign_id: String,
        reason: String,
    },
}

impl fmt::Display for ReplayConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ReplayConflict::*;
        match self {
            OutOfOrder { seq, after_seq } => {
                write!(
                    f,
                    "seq {seq} comes after seq {after_seq} of the same tranche"
                )
            }
            UnknownCampaign(id) => write!(f, "unknown campaign {id}"),
            TooManyCampaigns => write!(f, "more campaigns than the catalog allows"),
            TooManyTranches => write!(f, "more tranches than the catalog allows"),
            UnknownTranche(id) => write!(f, "unknown tranche {id}"),
            TrancheIdTaken(id) => write!(f, "tranche {id} defined as new twice"),
            OrdinalSkipsAhead { ordinal, next } => {
                write!(f, "tranche ordinal {ordinal} skips ahead of {next}")
            }
            OrdinalOfAnotherTranche { ordinal } => {
                write!(f, "redefinition of ordinal {ordinal} names another tranche")
            }
            RedefinedAfter(what) => write!(f, "tranche redefined after {what}"),
            InvalidSpec(reason) => write!(f, "invalid tranche spec: {reason}"),
            TrancheClosed => write!(f, "the tranche was already settled at closing"),
            CountyNotInTranche(c) => write!(f, "county {} is not in the tranche", c.0),
            OverIssue { county, quota } => {
                write!(f, "over-issue in county {} (quota {quota})", county.0)
            }
            IdentityHoldsVoucher => write!(f, "an identity key already holds a voucher"),
            RequestAnswered => write!(f, "the request ID was already answered"),
            VoucherIdTaken(r) => write!(f, "voucher random {r:#x} issued twice"),
            UnknownVoucher(r) => write!(f, "unknown voucher random {r:#x}"),
            VoucherNotClaimed { voucher, state } => write!(
                f,
                "voucher random {voucher:#x} is {}, not claimed",
                state.as_str()
            ),
            DiscountNotFaceValue {
                discount_fen,
                face_value_fen,
            } => write!(
                f,
                "discount {discount_fen} fen is not the face value {face_value_fen} fen"
            ),
            BelowMinimumOrder {
                order_fen,
                minimum_fen,
            } => write!(
                f,
                "order of {order_fen} fen is below the minimum of {minimum_fen} fen"
            ),
            RedemptionIdTaken(r) => write!(f, "redemption random {r:#x} used twice"),
            OrderRedeemedTwice => write!(f, "the merchant's order was already redeemed"),
            UnknownRedemption(r) => write!(f, "unknown redemption random {r:#x}"),
            RefundUnderInvestigation => write!(f, "refund of a redemption under investigation"),
            RefundIdTaken => write!(f, "refund ID already recorded for the redemption"),
            TooManyRefunds => write!(
                f,
                "more than {MAX_REFUNDS_PER_REDEMPTION} refunds for one redemption"
            ),
            RefundExceedsOrder {
                amount_fen,
                refundable_fen,
            } => write!(
                f,
                "refund of {amount_fen} fen, {refundable_fen} fen refundable"
            ),
            RefundMoney(reason) => write!(f, "refund money: {reason}"),
            SettledOutOfOrder(s) => write!(f, "settlement {s:?} out of order"),
            RevocationNotSorted => write!(f, "revocation lists not sorted and unique"),
            NotFlaggable(r) => write!(f, "voucher random {r:#x} cannot be flagged"),
            DrawAmount {
                amount_fen,
                vouchers,
            } => write!(
                f,
                "pool draw of {amount_fen} fen for {vouchers} vouchers does not fit"
            ),
            QuotaOverflow(c) => write!(f, "quota of county {} overflows", c.0),
            Ledger {
                campaign_id,
                reason,
            } => write!(f, "campaign {campaign_id}: {reason}"),
        }
    }
}

impl TrancheBook {
    /// Seq of the newest event applied to this tranche.
    pub fn last_seq(&self) -> u64 {
        match self.log.last() {
            Some(LogEntry::Event { seq, .. }) => *seq,
            Some(LogEntry::Claims { first, count }) => self.voucher(first + count - 1).seq,
            None => 0,
        }
    }

    fn check_order(&self, seq: u64) -> Result<(), ReplayConflict> {
        let after_seq = self.last_seq();
        if seq <= after_seq {
            return Err(ReplayConflict::OutOfOrder { seq, after_seq });
        }
        Ok(())
    }

    /// Applies a claim read back from disk, if it is one the core could have
    /// decided here; otherwise changes nothing and says why.
    pub fn replay_claim(&mut self, event: VoucherClaimed, seq: u64) -> Result<u32, ReplayConflict> {
        let digests = claim_digests(&self.digest_key, &event);
        self.replay_claim_with(event, &digests, seq)
    }

    /// [`Self::replay_claim`] for a run of claims of this tranche, in seq order.
    ///
    /// First every claim's digests are computed and the index slots they hash to are
    /// loaded ([`DigestIndex::touch`](super::digest_index::DigestIndex::touch)), so the
    /// cache misses of the whole run are in flight together; then each claim is checked
    /// and applied in order, exactly as `replay_claim` would. Stops at the first claim
    /// that does not replay and returns its seq with the reason; the claims before it
    /// are applied, the ones after it are not.
    ///
    /// The claims come with their digests ([`DigestedClaim`]), computed by whoever decoded
    /// them: at start-up that is the reading thread, so the hashing overlaps with the index
    /// work here. Digests made with another key than this tranche's are a bug: asserted.
    pub fn replay_claims(
        &mut self,
        run: impl IntoIterator<Item = (u64, DigestedClaim)>,
    ) -> Result<(), (u64, ReplayConflict)> {
        let run: Vec<(u64, VoucherClaimed, ClaimDigests)> = run
            .into_iter()
            .map(|(seq, digested)| {
                assert!(
                    digested.key == self.digest_key,
                    "claim digested with another key than its tranche's"
                );
                (seq, digested.claim, digested.digests)
            })
            .collect();
        let touched = self.holders.touch(
            run.iter()
                .flat_map(|(_, _, d)| d.identity.as_slice().iter().copied()),
        ) ^ self.requests_touch(run.iter().map(|(_, _, d)| d.request))
            ^ self
                .voucher_by_random
                .touch(run.iter().map(|(_, e, _)| e.voucher_random));
        std::hint::black_box(touched);
        for (seq, event, digests) in run {
            self.replay_claim_with(event, &digests, seq)
                .map_err(|conflict| (seq, conflict))?;
        }
        Ok(())
    }

    fn replay_claim_with(
        &mut self,
        event: VoucherClaimed,
        digests: &ClaimDigests,
        seq: u64,
    ) -> Result<u32, ReplayConflict> {
        self.check_order(seq)?;
        self.check_claim(&event, digests)?;
        Ok(self.apply_claim(event, digests, seq))
    }

    fn check_claim(
        &self,
        event: &VoucherClaimed,
        digests: &ClaimDigests,
    ) -> Result<(), ReplayConflict> {
        if event.tranche_id() != self.spec.tranche_id {
            return Err(ReplayConflict::UnknownTranche(
                event.tranche_id().to_owned(),
            ));
        }
        if self.closed_settled {
            return Err(ReplayConflict::TrancheClosed);
        }
        let slot = self
            .county_slot(event.county)
            .ok_or(ReplayConflict::CountyNotInTranche(event.county))?;
        let stock = &self.counties[slot];
        if stock.issued >= stock.quota {
            return Err(ReplayConflict::OverIssue {
                county: event.county,
                quota: stock.quota,
            });
        }
        if digests
            .identity
            .as_slice()
            .iter()
            .any(|d| self.holders.contains(*d))
        {
            return Err(ReplayConflict::IdentityHoldsVoucher);
        }
        if self.request_answered(&digests.request) {
            return Err(ReplayConflict::RequestAnswered);
        }
        if self.voucher_by_random.contains(event.voucher_random) {
            return Err(ReplayConflict::VoucherIdTaken(event.voucher_random));
        }
        Ok(())
    }

    /// Whether `event` (any tranche event but a claim, a definition of a new
    /// tranche, or a redefinition: see [`Self::check_redefine`]) may be
    /// applied to this tranche by [`Self::apply_event`] as record `seq`.
    pub fn check_event(&self, event: &Event, seq: u64) -> Result<(), ReplayConflict> {
        if event.tranche_id() != Some(self.spec.tranche_id.as_str()) {
            return Err(ReplayConflict::UnknownTranche(
                event.tranche_id().unwrap_or_default().to_owned(),
            ));
        }
        self.check_order(seq)?;
        self.check_event_content(event)
    }

    /// [`Self::check_event`] but for the order of seqs: what the live path asks before it
    /// appends a decided event, so that nothing a restart would refuse ever reaches the WAL
    /// (see `Dispenser::assert_replayable`).
    pub fn check_event_content(&self, event: &Event) -> Result<(), ReplayConflict> {
        if event.tranche_id() != Some(self.spec.tranche_id.as_str()) {
            return Err(ReplayConflict::UnknownTranche(
                event.tranche_id().unwrap_or_default().to_owned(),
            ));
        }
        match event {
            Event::TrancheDefined { ordinal, spec } => {
                if *ordinal != self.ordinal {
                    return Err(ReplayConflict::OrdinalOfAnotherTranche { ordinal: *ordinal });
                }
                if let Err(errors) = spec.validate() {
                    return Err(ReplayConflict::InvalidSpec(format!("{errors:?}")));
                }
                self.check_redefine()
            }
            Event::TrancheControlled { .. } => Ok(()),
            Event::VoucherRedeemed(e) => self.check_redeem(e),
            Event::RedemptionRefunded(e) => self.check_refund(e),
            Event::TrancheSettled { settlement, .. } => self.check_settle(*settlement),
            Event::VouchersRevoked(e) => self.check_revoke(e),
            Event::PoolDrawn(e) => self.check_draw(e),
            Event::CampaignDefined(_)
            | Event::VoucherClaimed(_)
            | Event::MerchantsImported(_)
            | Event::MerchantStatusChanged(_) => {
                Err(ReplayConflict::UnknownTranche(self.spec.tranche_id.clone()))
            }
        }
    }

    /// A redefinition replaces the spec and resets the money: only before
    /// any voucher, draw or settlement.
    fn check_redefine(&self) -> Result<(), ReplayConflict> {
        if !self.vouchers.is_empty() {
            return Err(ReplayConflict::RedefinedAfter("vouchers were issued"));
        }
        if self.money.drawn_from_pool_fen != 0 {
            return Err(ReplayConflict::RedefinedAfter("a pool draw"));
        }
        if self.closed_settled || self.expired_settled {
            return Err(ReplayConflict::RedefinedAfter("settlement"));
        }
        Ok(())
    }

    fn check_redeem(&self, e: &VoucherRedeemed) -> Result<(), ReplayConflict> {
        let index = self
            .voucher_by_random
            .get(e.voucher_random)
            .ok_or(ReplayConflict::UnknownVoucher(e.voucher_random))?;
        let state = self.status[index as usize].state;
        if state != VoucherState::Claimed {
            return Err(ReplayConflict::VoucherNotClaimed {
                voucher: e.voucher_random,
                state,
            });
        }
        if e.discount_fen != self.spec.face_value_fen {
            return Err(ReplayConflict::DiscountNotFaceValue {
                discount_fen: e.discount_fen,
                face_value_fen: self.spec.face_value_fen,
            });
        }
        let minimum_fen = self.spec.minimum_order_fen();
        if e.order_amount_fen < minimum_fen {
            return Err(ReplayConflict::BelowMinimumOrder {
                order_fen: e.order_amount_fen,
                minimum_fen,
            });
        }
        if self.redemption_by_random.contains(e.redemption_random) {
            return Err(ReplayConflict::RedemptionIdTaken(e.redemption_random));
        }
        Ok(())
    }

    fn check_refund(&self, e: &RedemptionRefunded) -> Result<(), ReplayConflict> {
        let index = self
            .redemption_by_random
            .get(e.redemption_random)
            .ok_or(ReplayConflict::UnknownRedemption(e.redemption_random))?;
        let r = &self.redemptions[index as usize];
        if r.refunds.iter().any(|f| *f.refund_id == *e.refund_id) {
            return Err(ReplayConflict::RefundIdTaken);
        }
        if r.flagged {
            return Err(ReplayConflict::RefundUnderInvestigation);
        }
        let order = r.event.order_amount_fen;
        let refundable_fen = order - r.refunded_fen;
        if e.amount_fen == 0 || e.amount_fen > refundable_fen {
            return Err(ReplayConflict::RefundExceedsOrder {
                amount_fen: e.amount_fen,
                refundable_fen,
            });
        }
        if r.refunds.len() >= MAX_REFUNDS_PER_REDEMPTION {
            return Err(ReplayConflict::TooManyRefunds);
        }
        let face = r.event.discount_fen;
        if e.restored && e.returned_fen > 0 {
            return Err(ReplayConflict::RefundMoney("it both restores and returns"));
        }
        if !r.active && (e.restored || e.returned_fen > 0) {
            return Err(ReplayConflict::RefundMoney(
                "the redemption no longer uses the voucher",
            ));
        }
        if e.returned_fen > face - r.returned_fen {
            return Err(ReplayConflict::RefundMoney(
                "returns more than the voucher was worth",
            ));
        }
        // The tranche's redeemed money pays what the refund returns (it can
        // fall short of the redemptions' own sums after a policy change: see below).
        if e.returned_fen > self.money.redeemed_fen {
            return Err(ReplayConflict::RefundMoney(
                "returns more than the tranche has redeemed",
            ));
        }
        if e.restored {
            if e.amount_fen != refundable_fen {
                return Err(ReplayConflict::RefundMoney("restores on a partial refund"));
            }
            // A restore moves the whole face value back to outstanding. The
            // live core can restore after an earlier pro-rata refund returned
            // part of it (the campaign's policy changed in between), so only
            // what applying needs is required: that much is redeemed.
            if self.money.redeemed_fen < face {
                return Err(ReplayConflict::RefundMoney(
                    "restores more than the tranche has redeemed",
                ));
            }
            if self.expired_settled {
                return Err(ReplayConflict::RefundMoney("restores after expiry"));
            }
        }
        Ok(())
    }

    fn check_settle(&self, settlement: Settlement) -> Result<(), ReplayConflict> {
        let in_order = match settlement {
            Settlement::Closed => !self.closed_settled,
            Settlement::Expired => self.closed_settled && !self.expired_settled,
        };
        if in_order {
            Ok(())
        } else {
            Err(ReplayConflict::SettledOutOfOrder(settlement))
        }
    }

    fn check_revoke(&self, e: &VouchersRevoked) -> Result<(), ReplayConflict> {
        let ascending = |list: &[u64]| list.windows(2).all(|w| w[0] < w[1]);
        if !ascending(&e.revoked) || !ascending(&e.flagged) {
            return Err(ReplayConflict::RevocationNotSorted);
        }
        for random in &e.revoked {
            let index = self
                .voucher_by_random
                .get(*random)
                .ok_or(ReplayConflict::UnknownVoucher(*random))?;
            let state = self.status[index as usize].state;
            if state != VoucherState::Claimed {
                return Err(ReplayConflict::VoucherNotClaimed {
                    voucher: *random,
                    state,
                });
            }
        }
        let face = self.spec.face_value_fen;
        let mut still_redeemed_fen = 0u64;
        for random in &e.flagged {
            let index = self
                .voucher_by_random
                .get(*random)
                .ok_or(ReplayConflict::UnknownVoucher(*random))?;
            let redemption = self.status[index as usize]
                .redemption
                .map(|r| &self.redemptions[r as usize])
                .filter(|r| r.active && !r.flagged)
                .ok_or(ReplayConflict::NotFlaggable(*random))?;
            // Flagging moves what is still redeemed of it to `revoked`.
            still_redeemed_fen = still_redeemed_fen.saturating_add(face - redemption.returned_fen);
        }
        if still_redeemed_fen > self.money.redeemed_fen {
            return Err(ReplayConflict::NotFlaggable(e.flagged[0]));
        }
        Ok(())
    }

    fn check_draw(&self, e: &PoolDrawn) -> Result<(), ReplayConflict> {
        if self.closed_settled {
            return Err(ReplayConflict::TrancheClosed);
        }
        // Counties may repeat in a draw: add up per county slot.
        let mut added_per_slot = [0u64; MAX_COUNTIES_PER_TRANCHE];
        let mut vouchers = 0u64;
        for (county, added) in &e.added {
            let slot = self
                .county_slot(*county)
                .ok_or(ReplayConflict::CountyNotInTranche(*county))?;
            added_per_slot[slot] += u64::from(*added);
            let quota = u64::from(self.counties[slot].quota) + added_per_slot[slot];
            if quota > u64::from(u32::MAX) {
                return Err(ReplayConflict::QuotaOverflow(*county));
            }
            vouchers += u64::from(*added);
        }
        let bad_amount = ReplayConflict::DrawAmount {
            amount_fen: e.amount_fen,
            vouchers,
        };
        if vouchers.checked_mul(self.spec.face_value_fen) != Some(e.amount_fen) {
            return Err(bad_amount);
        }
        // Everything released must stay countable in fen.
        let released = self
            .money
            .released_from_budget_fen
            .checked_add(self.money.drawn_from_pool_fen)
            .and_then(|r| r.checked_add(e.amount_fen));
        if released.is_none() {
            return Err(bad_amount);
        }
        Ok(())
    }
}

/// A campaign's ledger from its budget and its tranches' money, or why it
/// does not add up (released more than the budget, drawn more than was
/// returned to the pool). Never panics, whatever the amounts.
pub fn check_ledger<'a>(
    campaign_id: &str,
    budget_fen: u64,
    tranches: impl IntoIterator<Item = &'a TrancheMoney>,
) -> Result<Ledger, ReplayConflict> {
    let fail = |reason: String| ReplayConflict::Ledger {
        campaign_id: campaign_id.to_owned(),
        reason,
    };
    let (mut released, mut returned, mut drawn) = (0u128, 0u128, 0u128);
    let (mut outstanding, mut redeemed, mut revoked) = (0u128, 0u128, 0u128);
    for t in tranches {
        let parts = u128::from(t.outstanding_fen)
            + u128::from(t.redeemed_fen)
            + u128::from(t.revoked_fen)
            + u128::from(t.returned_fen);
        if u128::from(t.released_from_budget_fen) + u128::from(t.drawn_from_pool_fen) != parts {
            return Err(fail(format!("tranche money does not add up: {t:?}")));
        }
        released += u128::from(t.released_from_budget_fen);
        returned += u128::from(t.returned_fen);
        drawn += u128::from(t.drawn_from_pool_fen);
        outstanding += u128::from(t.outstanding_fen);
        redeemed += u128::from(t.redeemed_fen);
        revoked += u128::from(t.revoked_fen);
    }
    if released > u128::from(budget_fen) {
        return Err(fail(format!(
            "tranches released {released} fen of a budget of {budget_fen} fen"
        )));
    }
    if drawn > returned {
        return Err(fail(format!(
            "drew {drawn} fen from a pool that was given {returned} fen"
        )));
    }
    // The daemon adds these up in u64 (`Ledger::of`): they must fit.
    if returned > u128::from(u64::MAX) {
        return Err(fail(format!(
            "returned {returned} fen to the pool in all, more than fen can count"
        )));
    }
    let fen = |v: u128| u64::try_from(v).map_err(|_| fail("amount overflows".into()));
    let ledger = Ledger {
        budget_fen,
        unreleased_fen: fen(u128::from(budget_fen) - released)?,
        pool_fen: fen(returned - drawn)?,
        outstanding_fen: fen(outstanding)?,
        redeemed_fen: fen(redeemed)?,
        revoked_fen: fen(revoked)?,
    };
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{ClaimFields, Crs, Location};
    use crate::core::time::UnixMillis;
    use crate::core::tranche::{ExpectedClaims, TrancheSpec};

    fn book(key: DigestKey) -> TrancheBook {
        TrancheBook::new(0, TrancheSpec::for_tests("t"), key, 1)
    }

    /// A tranche presized as [`TrancheBook::new`] makes it, told that `expected` follows.
    fn hinted_book(spec: &TrancheSpec, key: DigestKey, expected: ExpectedClaims) -> TrancheBook {
        let presized = spec.presized_vouchers(u64::MAX);
        TrancheBook::with_sizes(0, spec.clone(), key, 1, presized, expected)
    }

    fn claim(user: &str) -> VoucherClaimed {
        VoucherClaimed::new(ClaimFields {
            tranche_id: "t",
            voucher_random: user.len() as u64,
            county: CountyCode(420502),
            claimed_at: UnixMillis(1),
            user_id: user,
            id_hash: None,
            phone_hash: None,
            device_id: None,
            request_id: user,
            request_fingerprint: 0,
            location: Location {
                lng: 111.3,
                lat: 30.7,
                crs: Crs::Gcj02,
            },
        })
    }

    #[test]
    fn digested_claims_replay_and_dedupe_like_single_ones() {
        let key = DigestKey::new(1, 2);
        let mut book = book(key);
        let run =
            [(2, claim("a")), (3, claim("bb"))].map(|(seq, c)| (seq, DigestedClaim::new(key, c)));
        book.replay_claims(run).expect("replays");
        assert_eq!(book.voucher_count(), 2);
        assert_eq!(
            book.replay_claims([(4, DigestedClaim::new(key, claim("a")))]),
            Err((4, ReplayConflict::IdentityHoldsVoucher))
        );
    }

    /// A restart's sizes hint gives the same answers as no hint; its indexes are made for
    /// the claims it announced (no doubling on the way there), but never for more than twice
    /// the quota.
    #[test]
    fn a_sizes_hint_changes_sizes_not_answers() {
        let key = DigestKey::new(1, 2);
        let mut spec = book(key).spec().clone();
        spec.quotas = vec![(CountyCode(420502), 300_000)];
        let mut plain = TrancheBook::new(0, spec.clone(), key, 1);
        let hint = |claims: u64| ExpectedClaims {
            claims,
            identity_keys: claims,
        };
        let mut hinted = hinted_book(&spec, key, hint(600_000));
        for book in [&mut plain, &mut hinted] {
            let run = [(2, claim("a")), (3, claim("bb")), (4, claim("ccc"))]
                .map(|(seq, c)| (seq, DigestedClaim::new(key, c)));
            book.replay_claims(run).expect("replays");
            assert_eq!(
                book.replay_claims([(5, DigestedClaim::new(key, claim("bb")))]),
                Err((5, ReplayConflict::IdentityHoldsVoucher))
            );
            assert_eq!(book.voucher_count(), 3);
        }
        plain.check_invariants();
        hinted.check_invariants();
        for i in 0..3 {
            assert_eq!(plain.voucher(i).claim, hinted.voucher(i).claim);
        }
        // Presized for the quota, 300,000 (2^20 slots hold 524,288); the hint, 600,000,
        // needs 2^21, made once its array has arrived.
        assert!(plain.voucher_by_random.eventual_capacity() < 600_000);
        assert!(hinted.voucher_by_random.eventual_capacity() >= 600_000);
        // A count past twice the quota is not believed.
        let doubted = hinted_book(&spec, key, hint(50_000_000));
        assert_eq!(
            doubted.voucher_by_random.eventual_capacity(),
            hinted.voucher_by_random.eventual_capacity()
        );
        // The holders index is made for the keys counted (presized for 4 keys per voucher of
        // the quota, 1.2 M), and never for more than 4 per believed claim.
        let keys = |claims: u64, identity_keys: u64| {
            hinted_book(
                &spec,
                key,
                ExpectedClaims {
                    claims,
                    identity_keys,
                },
            )
            .holders
            .eventual_capacity()
        };
        assert!(keys(600_000, 600_000) < 2_400_000);
        assert!(keys(600_000, 2_400_000) >= 2_400_000);
        assert_eq!(keys(600_000, 50_000_000), keys(600_000, 2_400_000));
    }

    #[test]
    #[should_panic(expected = "another key")]
    fn digests_made_with_another_key_are_a_bug() {
        let mut book = book(DigestKey::new(1, 2));
        let _ = book.replay_claims([(2, DigestedClaim::new(DigestKey::new(3, 4), claim("a")))]);
    }
}
