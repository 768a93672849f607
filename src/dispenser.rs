//! The dispenser: the pure core's state behind locks, wired to the WAL.
//!
//! Each tranche is one shard: its [`TrancheBook`] (county inventories, identity
//! dedupe, request answers) sits behind its own mutex, so claims on different
//! tranches never contend. Inside a tranche the county inventories cannot be
//! locked apart from the identity set, because one identity may hold only one
//! voucher across all of the tranche's counties.
//!
//! The claim path, in order:
//! 1. resolve the county from the location (no lock held);
//! 2. lock the tranche, let the core decide;
//! 3. if a voucher is issued: queue the event on the WAL (this assigns its
//!    sequence number but does no I/O), apply it to the book, unlock;
//! 4. the caller awaits the WAL's completion and only then answers.
//!
//! A shard lock is never held while waiting for a sync. An answer that shows a
//! voucher issued by someone else's still-unsynced record (a retry, or an
//! `already_claimed`) also waits until the WAL is durable past that record, so
//! no answer ever reveals state that a crash could take back.
//!
//! The merchant registry sits behind its own `RwLock`, apart from the tranche
//! shards: lookups (redemption, reads) share it, imports and status changes
//! take it for writing only to append and apply. Lock order, where several are
//! held: merchants, then catalog, then tranche shards. Never wait for the
//! merchants lock while holding a tranche lock (a checkpoint holds the
//! merchants' read lock while it takes every tranche lock).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};
use tokio::sync::oneshot;

use crate::core::merchant::{Assembled, ImportAssembler, MerchantPage};
use crate::core::{
    CampaignSpec, Catalog, CatalogError, ClaimCommand, ClaimDecision, ControlDecision, CountyCode,
    DigestKey, DigestedClaim, Event, ExpectedClaims, IdentityKeys, ImportRow, Location, Merchant,
    MerchantFilter, MerchantRegistry, MerchantRules, MerchantStatus, RedefineConflict,
    RedemptionId, Refusal, RowErrors, StatusCounts, TrancheBook, TrancheControl, TrancheSpec,
    TrancheState, UnixMillis, UnknownMerchant, VoucherId,
};
use crate::geo::RegionIndex;
mod lifecycle;
mod replay_pipeline;
pub use replay_pipeline::{
    REPLAY_PIPELINE_BATCH_RECORDS, REPLAY_PIPELINE_QUEUE_BATCHES, ReplayFeed, replay_on_two_threads,
};

pub use lifecycle::{
    MAX_REVOKE_TARGETS, PoolRequest, RedeemInput, RedeemOutcome, RedemptionView, RefundOutcome,
    RevokeReport, RevokeTargets,
};

use crate::core::lifecycle::{Ledger, TrancheMoney, VoucherState};
use crate::core::orders::{OrderBook, OrderEntry, OrderLookup};
use crate::core::replay::{ReplayConflict, check_ledger};
use crate::journal;
use crate::snapshot::{Checkpoint, TrancheCapture};
use crate::wal::{AppendError, Wal};

type Shard = Arc<Mutex<TrancheBook>>;

/// Names of the configured counties, sorted by code.
#[derive(Clone, Debug, Default)]
pub struct CountyDirectory {
    entries: Vec<(CountyCode, String)>,
}

impl CountyDirectory {
    pub fn new(mut entries: Vec<(CountyCode, String)>) -> CountyDirectory {
        entries.sort_by_key(|(c, _)| *c);
        CountyDirectory { entries }
    }
    pub fn name(&self, code: CountyCode) -> Option<&str> {
        let i = self.entries.binary_search_by_key(&code, |(c, _)| *c).ok()?;
        Some(&self.entries[i].1)
    }
    /// Every configured county code, in order.
    pub fn codes(&self) -> impl Iterator<Item = CountyCode> + '_ {
        self.entries.iter().map(|(c, _)| *c)
    }
}

/// Whether an answer may go out now or must wait for the WAL.
#[derive(Debug)]
pub enum Durability {
    Ready,
    Wait(oneshot::Receiver<()>),
}

impl Durability {
    /// Waits until the state the answer depends on is durable. Returns false if
    /// the WAL stopped first (the daemon is exiting; do not acknowledge).
    pub async fn wait(self) -> bool {
        match self {
            Durability::Ready => true,
            Durability::Wait(rx) => rx.await.is_ok(),
        }
    }

    /// [`Self::wait`] for threads outside the async runtime (start-up).
    pub fn wait_blocking(self) -> bool {
        match self {
            Durability::Ready => true,
            Durability::Wait(rx) => rx.blocking_recv().is_ok(),
        }
    }
}

/// Everything an answer shows about a voucher.
#[derive(Clone, Debug)]
pub struct VoucherView {
    pub id: VoucherId,
    pub tranche_id: String,
    pub campaign_id: String,
    pub county: CountyCode,
    pub county_name: String,
    pub face_value_fen: u64,
    pub threshold_fen: u64,
    pub claimed_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// The state at the moment the view was taken.
    pub state: VoucherState,
    /// The redemption that uses it, while redeemed.
    pub redemption: Option<RedemptionId>,
    /// The revocation case that touched it: (reason, case_id).
    pub revocation: Option<(String, String)>,
}

/// One claim as the API layer parsed it.
#[derive(Clone, Copy, Debug)]
pub struct ClaimInput<'a> {
    pub tranche_id: &'a str,
    pub identity: IdentityKeys<'a>,
    pub request_id: &'a str,
    pub request_fingerprint: u128,
    pub location: Location,
    pub entropy: u64,
}

#[derive(Debug)]
pub enum ClaimOutcome {
    Claimed(VoucherView, Durability),
    Replayed(VoucherView, Durability),
    AlreadyClaimed(VoucherView, Durability),
    /// The request ID was used with another body: a refusal that rests on the claim that
    /// used it, so it is answered once that claim is durable.
    RequestIdReused(Durability),
    Refused(Refusal),
    UnknownTranche,
    /// The WAL refused to queue the record (full or shutting down); nothing changed.
    Unavailable(AppendError),
}

#[derive(Clone, Debug)]
pub struct CountyView {
    pub county: CountyCode,
    pub name: String,
    pub quota: u32,
    pub issued: u32,
}

#[derive(Clone, Debug)]
pub struct TrancheView {
    pub spec: TrancheSpec,
    pub state: TrancheState,
    pub paused: bool,
    pub counties: Vec<CountyView>,
}

#[derive(Debug)]
pub enum AdminError {
    UnknownCampaign,
    UnknownTranche,
    TooManyCampaigns,
    TooManyTranches,
    /// The tranche has opened (or issued vouchers) and can no longer be replaced.
    AlreadyOpened,
    /// The tranche has closed; pause/resume no longer apply.
    Closed,
    /// The campaign's unreleased budget cannot pay for the tranche's vouchers.
    BudgetExceeded {
        available_fen: u64,
        needed_fen: u64,
    },
    /// A campaign's budget cannot drop below what its tranches already released.
    BudgetBelowReleased {
        released_fen: u64,
    },
    /// The campaign pool holds less than the draw needs.
    PoolTooSmall {
        pool_fen: u64,
        needed_fen: u64,
    },
    /// A draw that would add no vouchers, or a rollover already done.
    NothingToDraw,
    /// A campaign's refund policy cannot change once it has tranches: refunds
    /// already made under one policy would be settled under another.
    RefundPolicyLocked,
    /// A per-county draw names a county the tranche has no quota for.
    CountyNotInTranche,
    /// Vouchers were drawn from the pool into this scheduled tranche; redefining it would
    /// drop them.
    DrewFromPool,
    /// A draw would take a county's quota past what a quota can count (`u32`).
    QuotaOverflow {
        county: CountyCode,
    },
    Unavailable(AppendError),
}

impl From<CatalogError> for AdminError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::UnknownCampaign => AdminError::UnknownCampaign,
            CatalogError::TooManyCampaigns => AdminError::TooManyCampaigns,
            CatalogError::TooManyTranches => AdminError::TooManyTranches,
        }
    }
}

/// Whether an admin definition created something new.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Defined {
    Created,
    Replaced,
    Unchanged,
}

/// Replay failed: a record decoded but does not fit the state built so far.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("record {seq}: {source}")]
    Decode {
        seq: u64,
        #[source]
        source: journal::DecodeError,
    },
    #[error("record {seq}: {reason}")]
    Inconsistent { seq: u64, reason: String },
    /// A record the core could not have decided on the state before it.
    #[error("record {seq} ({}): {conflict}", journal::kind_name(*kind))]
    Conflict {
        seq: u64,
        kind: u8,
        conflict: ReplayConflict,
    },
    /// The state as a whole does not add up (see [`Recovered::check_ledgers`]).
    #[error("rebuilt state: {0}")]
    State(ReplayConflict),
    /// [`ReplayFeed::push`] after the applying thread stopped on an error, which
    /// [`replay_on_two_threads`] returns.
    #[error("replay stopped: an earlier record was refused")]
    Stopped,
}

/// Decodes one WAL or snapshot record for [`Recovered::apply_decoded`].
pub fn decode_record(seq: u64, kind: u8, payload: &[u8]) -> Result<Event, ReplayError> {
    journal::decode(kind, payload).map_err(|source| ReplayError::Decode { seq, source })
}

/// What an import, or its dry run, amounts to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    pub created: usize,
    pub unchanged: usize,
    pub rows: usize,
}

impl ImportSummary {
    fn of(import: &crate::core::MerchantImport) -> ImportSummary {
        ImportSummary {
            created: import.created.len(),
            unchanged: import.unchanged,
            rows: import.rows,
        }
    }
}

#[derive(Debug)]
pub enum ImportError {
    /// Some rows are not acceptable; nothing was written.
    Rejected(RowErrors),
    /// The WAL refused a record; the import did not take effect.
    Unavailable(AppendError),
}

#[derive(Debug)]
pub enum MerchantError {
    UnknownMerchant,
    Unavailable(AppendError),
}

impl From<UnknownMerchant> for MerchantError {
    fn from(_: UnknownMerchant) -> Self {
        MerchantError::UnknownMerchant
    }
}

/// A page of merchants, copied out of the registry.
#[derive(Debug)]
pub struct MerchantListing {
    pub merchants: Vec<Merchant>,
    pub next_page_token: Option<String>,
}

/// The registry and the seq of the newest merchant record applied to it:
/// an answer showing merchants waits until the WAL is durable through it.
struct MerchantShard {
    registry: MerchantRegistry,
    last_seq: u64,
}

/// Asserts that replay would accept `event` on `book` as it stands: what the live path
/// calls, under the tranche's lock, between deciding an event and appending it.
///
/// Why: a record replay refuses stops every later start (exit 65) until someone edits the
/// WAL by hand. Each `decide_*` is meant to allow only what replay's checks accept; where
/// one does not (a bug), this stops the process *before* the record is appended, so the
/// supervisor's restart replays a WAL without it, instead of an `apply_*` assertion firing
/// after it was appended.
fn assert_replayable(book: &TrancheBook, event: &Event) {
    if let Err(conflict) = book.check_event_content(event) {
        panic!(
            "decided an event that replay would refuse ({conflict}); not appended: {}",
            journal::kind_name(journal::kind_of(event))
        );
    }
}

/// Merchant counts per (county, industry), the totals, and when they may be shown.
pub type MerchantCounts = (
    Vec<(CountyCode, String, StatusCounts)>,
    StatusCounts,
    Result<Durability, AppendError>,
);

/// State rebuilt from the WAL, before the WAL is open for appends.
pub struct Recovered {
    catalog: Catalog<Shard>,
    orders: OrderBook,
    digest_key: DigestKey,
    merchants: MerchantRegistry,
    merchant_parts: ImportAssembler,
    merchants_last_seq: u64,
    /// Parts of imports that never completed (dropped, as they were never answered).
    pub abandoned_import_parts: u64,
    pub records: u64,
    /// Claims decoded by [`Recovered::apply_deferred`] and not yet applied, in seq order;
    /// at most [`REPLAY_RUN_CLAIMS`].
    deferred_claims: Vec<(u64, DigestedClaim)>,
    /// Claims known to follow per tranche ordinal, from a snapshot
    /// ([`Recovered::expect_claims`]); taken when the tranche is defined.
    expected_claims: std::collections::BTreeMap<u32, ExpectedClaims>,
}

/// Claims replayed together as one run (see [`TrancheBook::replay_claims`]): enough for the
/// index lookups of a run to overlap their cache misses, few enough to stay in cache.
pub const REPLAY_RUN_CLAIMS: usize = 64;

impl Recovered {
    /// Empty state, its tranches presized within
    /// [`crate::core::catalog::DEFAULT_PRESIZE_BUDGET_VOUCHERS`].
    pub fn new(digest_key: DigestKey) -> Recovered {
        Recovered::with_presize_budget(
            digest_key,
            crate::core::catalog::DEFAULT_PRESIZE_BUDGET_VOUCHERS,
        )
    }

    /// Empty state; its tranches are presized for `presize_budget_vouchers` at most, together
    /// (`storage.presize_budget_vouchers`).
    pub fn with_presize_budget(digest_key: DigestKey, presize_budget_vouchers: u64) -> Recovered {
        Recovered {
            catalog: Catalog::with_presize_budget(presize_budget_vouchers),
            orders: OrderBook::new(digest_key),
            digest_key,
            merchants: MerchantRegistry::default(),
            merchant_parts: ImportAssembler::default(),
            merchants_last_seq: 0,
            abandoned_import_parts: 0,
            records: 0,
            deferred_claims: Vec::with_capacity(REPLAY_RUN_CLAIMS),
            expected_claims: std::collections::BTreeMap::new(),
        }
    }

    /// Sizes hints for tranches defined from here on: how many claims of each (by ordinal)
    /// the records about to be applied hold. A snapshot counts them while it is verified;
    /// see [`TrancheBook::with_sizes`]. Hints change sizes only, never an answer.
    pub fn expect_claims(
        &mut self,
        claims_by_ordinal: std::collections::BTreeMap<u32, ExpectedClaims>,
    ) {
        self.expected_claims = claims_by_ordinal;
    }

    /// Like [`Self::apply`], but a claim may be applied later, together with the claims
    /// that follow it (in order, before any other record): replay and snapshot loading of
    /// millions of claims run about twice as fast so. The price: a claim that does not
    /// replay is reported by a later call, or by [`Self::finish`], still with its own seq.
    /// Call `finish` after the last record; reading the state before that is a bug and
    /// panics.
    pub fn apply_deferred(
        &mut self,
        seq: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        self.apply_decoded_deferred(seq, kind, decode_record(seq, kind, payload)?)
    }

    /// [`Self::apply_deferred`] of a record already decoded (by [`decode_record`]).
    pub fn apply_decoded_deferred(
        &mut self,
        seq: u64,
        kind: u8,
        event: Event,
    ) -> Result<(), ReplayError> {
        let Event::VoucherClaimed(claim) = event else {
            self.finish()?;
            return self.apply_decoded(seq, kind, event);
        };
        self.apply_digested_deferred(seq, DigestedClaim::new(self.digest_key, claim))
    }

    /// [`Self::apply_deferred`] of a claim already decoded and digested (with this state's
    /// digest key: [`Self::digest_key`]).
    pub fn apply_digested_deferred(
        &mut self,
        seq: u64,
        claim: DigestedClaim,
    ) -> Result<(), ReplayError> {
        self.records += 1;
        self.deferred_claims.push((seq, claim));
        if self.deferred_claims.len() >= REPLAY_RUN_CLAIMS {
            self.finish()?;
        }
        Ok(())
    }

    /// Applies the claims [`Self::apply_deferred`] held back, in order.
    pub fn finish(&mut self) -> Result<(), ReplayError> {
        let mut run = std::mem::take(&mut self.deferred_claims);
        let result = self.apply_run(&mut run);
        run.clear();
        self.deferred_claims = run;
        result
    }

    /// The key identity digests are made with in this state.
    pub fn digest_key(&self) -> DigestKey {
        self.digest_key
    }

    fn apply_run(&mut self, run: &mut Vec<(u64, DigestedClaim)>) -> Result<(), ReplayError> {
        let conflict = |seq, conflict| ReplayError::Conflict {
            seq,
            kind: journal::KIND_VOUCHER_CLAIMED,
            conflict,
        };
        while let Some((seq, first)) = run.first() {
            let (seq, tranche_id) = (*seq, first.claim().tranche_id().to_owned());
            let same = run
                .iter()
                .position(|(_, c)| c.claim().tranche_id() != tranche_id)
                .unwrap_or(run.len());
            let shard = self.catalog.tranche(&tranche_id).ok_or_else(|| {
                conflict(seq, ReplayConflict::UnknownTranche(tranche_id.to_string()))
            })?;
            shard
                .lock()
                .replay_claims(run.drain(..same))
                .map_err(|(seq, reason)| conflict(seq, reason))?;
        }
        Ok(())
    }

    fn assert_nothing_deferred(&self) {
        assert!(
            self.deferred_claims.is_empty(),
            "replay state read with {} claims deferred: call Recovered::finish first",
            self.deferred_claims.len()
        );
    }

    /// The merchants rebuilt so far (an unfinished import is not among them).
    pub fn merchants(&self) -> &MerchantRegistry {
        self.assert_nothing_deferred();
        &self.merchants
    }

    fn apply_merchant_event(&mut self, seq: u64, event: Event) -> Result<(), ReplayError> {
        let inconsistent = |reason: String| ReplayError::Inconsistent { seq, reason };
        match event {
            Event::MerchantsImported(part) => {
                if part.part == 0 {
                    // A new import begins: one still unfinished was cut short.
                    self.abandoned_import_parts += u64::from(self.merchant_parts.abandon());
                }
                match self.merchant_parts.push(part).map_err(inconsistent)? {
                    Assembled::Pending => {}
                    Assembled::Complete(merchants) => {
                        self.merchants
                            .check_import(&merchants)
                            .map_err(inconsistent)?;
                        self.merchants.apply_import(merchants);
                        self.merchants_last_seq = seq;
                    }
                }
            }
            Event::MerchantStatusChanged(change) => {
                self.abandoned_import_parts += u64::from(self.merchant_parts.abandon());
                if self.merchants.get(&change.merchant_id).is_none() {
                    return Err(inconsistent(format!(
                        "status change for unknown merchant {}",
                        change.merchant_id
                    )));
                }
                self.merchants.apply_status(&change);
                self.merchants_last_seq = seq;
            }
            other => unreachable!("not a merchant event: {other:?}"),
        }
        Ok(())
    }

    /// Applies one WAL or snapshot record. Decided events are facts: they are
    /// applied, not re-decided; but the bytes come from disk, so each event is
    /// first checked to be one the core could have decided on the state so far
    /// (`core::replay`). One that is not is refused with
    /// [`ReplayError::Conflict`] and nothing of it is applied.
    pub fn apply(&mut self, seq: u64, kind: u8, payload: &[u8]) -> Result<(), ReplayError> {
        let event =
            journal::decode(kind, payload).map_err(|source| ReplayError::Decode { seq, source })?;
        self.apply_decoded(seq, kind, event)
    }

    /// [`Self::apply`] of a record already decoded (by [`decode_record`]).
    pub fn apply_decoded(&mut self, seq: u64, kind: u8, event: Event) -> Result<(), ReplayError> {
        self.assert_nothing_deferred();
        let conflict = |conflict: ReplayConflict| ReplayError::Conflict {
            seq,
            kind,
            conflict,
        };
        self.records += 1;
        match event {
            Event::CampaignDefined(spec) => {
                self.catalog
                    .decide_campaign(&spec)
                    .map_err(|_| conflict(ReplayConflict::TooManyCampaigns))?;
                self.catalog.apply_campaign(&spec);
            }
            Event::TrancheDefined { ordinal, spec } => {
                spec.validate()
                    .map_err(|e| conflict(ReplayConflict::InvalidSpec(format!("{e:?}"))))?;
                if self.catalog.check_campaign(&spec.campaign_id).is_err() {
                    return Err(conflict(ReplayConflict::UnknownCampaign(spec.campaign_id)));
                }
                let next = u32::try_from(self.catalog.tranches().len()).unwrap_or(u32::MAX);
                if ordinal == next {
                    if self.catalog.tranche(&spec.tranche_id).is_some() {
                        return Err(conflict(ReplayConflict::TrancheIdTaken(spec.tranche_id)));
                    }
                    self.catalog
                        .decide_new_tranche(&spec.campaign_id)
                        .map_err(|_| conflict(ReplayConflict::TooManyTranches))?;
                    let id = spec.tranche_id.clone();
                    let expected = self.expected_claims.remove(&ordinal).unwrap_or_default();
                    let presized = spec.presized_vouchers(self.catalog.presize_allowance());
                    let book = TrancheBook::with_sizes(
                        ordinal,
                        spec,
                        self.digest_key,
                        seq,
                        presized,
                        expected,
                    );
                    self.catalog.apply_new_tranche(
                        ordinal,
                        &id,
                        Arc::new(Mutex::new(book)),
                        presized,
                    );
                } else {
                    let shard = self.catalog.tranche_by_ordinal(ordinal).ok_or_else(|| {
                        conflict(ReplayConflict::OrdinalSkipsAhead { ordinal, next })
                    })?;
                    let mut book = shard.lock();
                    if book.spec().tranche_id != spec.tranche_id {
                        return Err(conflict(ReplayConflict::OrdinalOfAnotherTranche {
                            ordinal,
                        }));
                    }
                    let event = Event::TrancheDefined { ordinal, spec };
                    book.check_event(&event, seq).map_err(conflict)?;
                    book.apply_event(Arc::new(event), seq);
                }
            }
            Event::VoucherClaimed(claim) => {
                let shard = self.catalog.tranche(claim.tranche_id()).ok_or_else(|| {
                    conflict(ReplayConflict::UnknownTranche(
                        claim.tranche_id().to_owned(),
                    ))
                })?;
                shard.lock().replay_claim(claim, seq).map_err(conflict)?;
            }
            event @ (Event::MerchantsImported(_) | Event::MerchantStatusChanged(_)) => {
                self.apply_merchant_event(seq, event)?;
            }
            event => {
                let tranche_id = event.tranche_id().unwrap_or_default();
                let shard = self.catalog.tranche(tranche_id).ok_or_else(|| {
                    conflict(ReplayConflict::UnknownTranche(tranche_id.to_owned()))
                })?;
                let mut book = shard.lock();
                book.check_event(&event, seq).map_err(conflict)?;
                if let Event::VoucherRedeemed(r) = &event {
                    let earlier = self.orders.lookup(
                        &r.merchant_id,
                        &r.order_id,
                        book.ordinal(),
                        r.voucher_random,
                        r.order_amount_fen,
                    );
                    if earlier != OrderLookup::New {
                        return Err(conflict(ReplayConflict::OrderRedeemedTwice));
                    }
                }
                let event = Arc::new(event);
                book.apply_event(Arc::clone(&event), seq);
                if let Event::VoucherRedeemed(r) = &*event {
                    let index = book
                        .redemption_index(r.redemption_random)
                        .expect("just applied");
                    let entry = OrderEntry {
                        tranche_ordinal: book.ordinal(),
                        redemption_index: index,
                        voucher_random: r.voucher_random,
                        order_amount_fen: r.order_amount_fen,
                    };
                    self.orders.record(&r.merchant_id, &r.order_id, entry);
                }
            }
        }
        Ok(())
    }

    /// Checks what no single record can: every campaign's money adds up
    /// (its tranches released no more than its budget, and drew no more from
    /// its pool than was returned to it). Run once the state is complete:
    /// after a snapshot and after the WAL.
    pub fn check_ledgers(&self) -> Result<(), ReplayError> {
        self.assert_nothing_deferred();
        let mut money = self.money_by_campaign();
        for campaign in self.catalog.campaigns() {
            let tranches = money.remove(&campaign.campaign_id).unwrap_or_default();
            check_ledger(&campaign.campaign_id, campaign.budget_fen, &tranches)
                .map_err(ReplayError::State)?;
        }
        match money.into_keys().next() {
            Some(campaign_id) => Err(ReplayError::State(ReplayConflict::UnknownCampaign(
                campaign_id,
            ))),
            None => Ok(()),
        }
    }

    /// Asserts every invariant of the rebuilt state (as the daemon does
    /// before it serves). After records that passed their checks and
    /// [`Self::check_ledgers`], a failure here is a bug.
    pub fn check_invariants(&self) {
        self.assert_nothing_deferred();
        for shard in self.catalog.tranches() {
            shard.lock().check_invariants();
        }
        self.merchants.check_invariants();
        let money = self.money_by_campaign();
        for campaign in self.catalog.campaigns() {
            let tranches = money.get(&campaign.campaign_id);
            Ledger::of(campaign.budget_fen, tranches.into_iter().flatten());
        }
    }

    fn money_by_campaign(&self) -> HashMap<String, Vec<TrancheMoney>> {
        let mut money: HashMap<String, Vec<TrancheMoney>> = HashMap::new();
        for shard in self.catalog.tranches() {
            let book = shard.lock();
            money
                .entry(book.spec().campaign_id.clone())
                .or_default()
                .push(*book.money());
        }
        money
    }
}

pub struct Dispenser {
    catalog: RwLock<Catalog<Shard>>,
    /// Redemptions by (merchant, order), across tranches. Lock order: orders, then a tranche.
    orders: Mutex<OrderBook>,
    merchants: RwLock<MerchantShard>,
    merchant_rules: MerchantRules,
    counties: CountyDirectory,
    regions: RegionIndex,
    wal: Wal,
    digest_key: DigestKey,
}

impl Dispenser {
    pub fn new(
        mut recovered: Recovered,
        counties: CountyDirectory,
        merchant_rules: MerchantRules,
        regions: RegionIndex,
        wal: Wal,
    ) -> Dispenser {
        recovered.check_invariants();
        // An import whose last part is not in the log was never answered: drop it.
        recovered.abandoned_import_parts += u64::from(recovered.merchant_parts.abandon());
        if recovered.abandoned_import_parts > 0 {
            tracing::warn!(
                parts = recovered.abandoned_import_parts,
                "merchant import records without their final part were dropped (an import cut short by a crash or a refused append; it was never acknowledged)"
            );
        }
        Dispenser {
            catalog: RwLock::new(recovered.catalog),
            orders: Mutex::new(recovered.orders),
            merchants: RwLock::new(MerchantShard {
                registry: recovered.merchants,
                last_seq: recovered.merchants_last_seq,
            }),
            merchant_rules,
            counties,
            regions,
            wal,
            digest_key: recovered.digest_key,
        }
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn counties(&self) -> &CountyDirectory {
        &self.counties
    }

    pub fn into_wal(self) -> Wal {
        self.wal
    }

    pub fn claim(&self, input: &ClaimInput<'_>, now: UnixMillis) -> ClaimOutcome {
        let county = self
            .regions
            .locate_point(
                input.location.lng,
                input.location.lat,
                geo_crs(input.location.crs),
            )
            .map(CountyCode);
        let Some(shard) = self.shard(input.tranche_id) else {
            return ClaimOutcome::UnknownTranche;
        };
        let mut book = shard.lock();
        let command = ClaimCommand {
            identity: input.identity,
            request_id: input.request_id,
            request_fingerprint: input.request_fingerprint,
            county,
            location: input.location,
            entropy: input.entropy,
        };
        match book.decide_claim(&command, now) {
            ClaimDecision::Issue { event, digests } => {
                let (tx, rx) = oneshot::channel();
                let payload = journal::encode_claim(&event);
                let seq = match self.wal.append(journal::KIND_VOUCHER_CLAIMED, payload, tx) {
                    Ok(seq) => seq,
                    Err(e) => return ClaimOutcome::Unavailable(e),
                };
                let index = book.apply_claim(event, &digests, seq);
                ClaimOutcome::Claimed(self.voucher_view(&book, index, now), Durability::Wait(rx))
            }
            ClaimDecision::Replay { voucher_index } => {
                let view = self.voucher_view(&book, voucher_index, now);
                let seq = book.voucher_shown_through_seq(voucher_index);
                drop(book);
                match self.durability(seq) {
                    Ok(d) => ClaimOutcome::Replayed(view, d),
                    Err(e) => ClaimOutcome::Unavailable(e),
                }
            }
            ClaimDecision::AlreadyClaimed { voucher_index } => {
                let view = self.voucher_view(&book, voucher_index, now);
                let seq = book.voucher_shown_through_seq(voucher_index);
                drop(book);
                match self.durability(seq) {
                    Ok(d) => ClaimOutcome::AlreadyClaimed(view, d),
                    Err(e) => ClaimOutcome::Unavailable(e),
                }
            }
            ClaimDecision::Refused(Refusal::RequestIdReused) => {
                // The tranche's newest record is at or after the claim that used the ID.
                let seq = book.last_seq();
                drop(book);
                match self.durability(seq) {
                    Ok(d) => ClaimOutcome::RequestIdReused(d),
                    Err(e) => ClaimOutcome::Unavailable(e),
                }
            }
            ClaimDecision::Refused(refusal) => ClaimOutcome::Refused(refusal),
        }
    }

    pub fn voucher(
        &self,
        id: VoucherId,
        now: UnixMillis,
    ) -> Option<(VoucherView, Result<Durability, AppendError>)> {
        let shard = self
            .catalog
            .read()
            .tranche_by_ordinal(id.tranche_ordinal)
            .cloned()?;
        let book = shard.lock();
        let index = book.voucher_index(id)?;
        let view = self.voucher_view(&book, index, now);
        // Later lifecycle records may not be durable yet either: wait for all.
        let seq = self.wal.next_seq() - 1;
        drop(book);
        // A voucher whose record is not yet durable does not exist for readers: the answer
        // waits on the durability (an error: the WAL cannot take the wait now, a 503).
        Some((view, self.durability(seq)))
    }

    pub fn tranche(&self, tranche_id: &str, now: UnixMillis) -> Option<TrancheView> {
        let shard = self.shard(tranche_id)?;
        let book = shard.lock();
        Some(self.tranche_view(&book, now))
    }

    /// The tranche as a reader may see it: the answer must wait on the returned
    /// durability, as the counts in memory may include claims whose records are
    /// not yet synced, and a crash would take those back.
    pub fn tranche_for_reader(
        &self,
        tranche_id: &str,
        now: UnixMillis,
    ) -> Option<(TrancheView, Result<Durability, AppendError>)> {
        let shard = self.shard(tranche_id)?;
        let book = shard.lock();
        let view = self.tranche_view(&book, now);
        // Every record reflected in the view was appended before it was applied.
        let seq = self.wal.next_seq() - 1;
        drop(book);
        Some((view, self.durability(seq)))
    }

    /// Calls `f` with a view of every tranche (for metrics and listings).
    pub fn each_tranche(&self, now: UnixMillis, mut f: impl FnMut(&TrancheView)) {
        let shards: Vec<Shard> = self.catalog.read().tranches().to_vec();
        for shard in shards {
            let view = self.tranche_view(&shard.lock(), now);
            f(&view);
        }
    }

    pub fn define_campaign(&self, spec: CampaignSpec) -> Result<(Defined, Durability), AdminError> {
        let mut catalog = self.catalog.write();
        let existed = catalog.campaign(&spec.campaign_id).is_some();
        if !catalog.decide_campaign(&spec)? {
            return Ok((Defined::Unchanged, self.settled_so_far()?));
        }
        let money = self.campaign_money(&catalog, &spec.campaign_id);
        let policy_changed = catalog
            .campaign(&spec.campaign_id)
            .is_some_and(|c| c.refund_policy != spec.refund_policy);
        if policy_changed && !money.is_empty() {
            return Err(AdminError::RefundPolicyLocked);
        }
        let released_fen = money
            .iter()
            .map(|m| m.released_from_budget_fen)
            .sum::<u64>();
        if spec.budget_fen < released_fen {
            return Err(AdminError::BudgetBelowReleased { released_fen });
        }
        let (_, durability) = self.append(&Event::CampaignDefined(spec.clone()))?;
        catalog.apply_campaign(&spec);
        let defined = if existed {
            Defined::Replaced
        } else {
            Defined::Created
        };
        Ok((defined, durability))
    }

    /// Creates a tranche, or replaces one that has not opened. Its vouchers'
    /// value must fit in the campaign's unreleased budget.
    pub fn define_tranche(
        &self,
        spec: TrancheSpec,
        now: UnixMillis,
    ) -> Result<(Defined, Durability), AdminError> {
        assert!(spec.validate().is_ok(), "the API layer validates specs");
        let mut catalog = self.catalog.write();
        let campaign = catalog
            .campaign(&spec.campaign_id)
            .cloned()
            .ok_or(AdminError::UnknownCampaign)?;
        let ledger = Ledger::of(
            campaign.budget_fen,
            &self.campaign_money(&catalog, &campaign.campaign_id),
        );
        if let Some(shard) = catalog.tranche(&spec.tranche_id).cloned() {
            let mut book = shard.lock();
            if *book.spec() == spec {
                drop(book);
                return Ok((Defined::Unchanged, self.settled_so_far()?));
            }
            book.decide_redefine(now)
                .map_err(|conflict| match conflict {
                    RedefineConflict::AlreadyOpened => AdminError::AlreadyOpened,
                    RedefineConflict::DrewFromPool => AdminError::DrewFromPool,
                })?;
            // The old definition's release goes back before the new one is taken.
            let available_fen = ledger.unreleased_fen
                + if book.spec().campaign_id == spec.campaign_id {
                    book.money().released_from_budget_fen
                } else {
                    0
                };
            if spec.release_fen() > available_fen {
                return Err(AdminError::BudgetExceeded {
                    available_fen,
                    needed_fen: spec.release_fen(),
                });
            }
            let event = Event::TrancheDefined {
                ordinal: book.ordinal(),
                spec,
            };
            assert_replayable(&book, &event);
            let (seq, durability) = self.append(&event)?;
            book.apply_event(Arc::new(event), seq);
            return Ok((Defined::Replaced, durability));
        }
        if spec.release_fen() > ledger.unreleased_fen {
            return Err(AdminError::BudgetExceeded {
                available_fen: ledger.unreleased_fen,
                needed_fen: spec.release_fen(),
            });
        }
        let ordinal = catalog.decide_new_tranche(&spec.campaign_id)?;
        let (seq, durability) = self.append(&Event::TrancheDefined {
            ordinal,
            spec: spec.clone(),
        })?;
        let id = spec.tranche_id.clone();
        let presized = spec.presized_vouchers(catalog.presize_allowance());
        if presized < spec.presized_vouchers(u64::MAX) {
            tracing::warn!(
                tranche = %id,
                presized_vouchers = presized,
                quota = spec.total_quota(),
                budget_vouchers = catalog.presize_budget_vouchers(),
                "tranche presized for less than its quota: the presize budget over all tranches is used, so its indexes grow as its claims arrive"
            );
        }
        catalog.apply_new_tranche(
            ordinal,
            &id,
            Arc::new(Mutex::new(TrancheBook::with_sizes(
                ordinal,
                spec,
                self.digest_key,
                seq,
                presized,
                ExpectedClaims::default(),
            ))),
            presized,
        );
        Ok((Defined::Created, durability))
    }

    pub fn control_tranche(
        &self,
        tranche_id: &str,
        control: TrancheControl,
        now: UnixMillis,
    ) -> Result<(TrancheView, Durability), AdminError> {
        let shard = self.shard(tranche_id).ok_or(AdminError::UnknownTranche)?;
        let mut book = shard.lock();
        let durability = match book.decide_control(control, now) {
            ControlDecision::Closed => return Err(AdminError::Closed),
            ControlDecision::Unchanged => self.settled_so_far()?,
            ControlDecision::Apply => {
                let event = Event::TrancheControlled {
                    tranche_id: tranche_id.to_owned(),
                    control,
                    at: now,
                };
                assert_replayable(&book, &event);
                let (seq, durability) = self.append(&event)?;
                book.apply_event(Arc::new(event), seq);
                durability
            }
        };
        Ok((self.tranche_view(&book, now), durability))
    }

    /// Money of every tranche of a campaign. Takes each tranche's lock in turn.
    fn campaign_money(&self, catalog: &Catalog<Shard>, campaign_id: &str) -> Vec<TrancheMoney> {
        catalog
            .tranches()
            .iter()
            .filter_map(|shard| {
                let book = shard.lock();
                (book.spec().campaign_id == campaign_id).then(|| *book.money())
            })
            .collect()
    }

    /// The campaign's ledger: `budget = unreleased + pool + outstanding + redeemed + revoked`.
    /// The answer must wait on the returned durability: the ledger is read from
    /// memory, which may hold decisions whose records are not yet synced, and
    /// an answer must never show money a crash could take back.
    pub fn ledger(
        &self,
        campaign_id: &str,
    ) -> Result<Option<(CampaignSpec, Ledger, Durability)>, AppendError> {
        let catalog = self.catalog.read();
        let Some(campaign) = catalog.campaign(campaign_id).cloned() else {
            return Ok(None);
        };
        let ledger = Ledger::of(
            campaign.budget_fen,
            &self.campaign_money(&catalog, campaign_id),
        );
        // Every record reflected above was appended before it was applied, so
        // it is at or before the newest sequence number now.
        let seq = self.wal.next_seq() - 1;
        drop(catalog);
        Ok(Some((campaign, ledger, self.durability(seq)?)))
    }

    /// An answer that changes nothing still waits for everything before it,
    /// so it never shows state a crash could take back.
    fn settled_so_far(&self) -> Result<Durability, AdminError> {
        self.durability(self.wal.next_seq() - 1)
            .map_err(AdminError::Unavailable)
    }

    pub fn merchant_rules(&self) -> &MerchantRules {
        &self.merchant_rules
    }

    /// Checks an import without writing anything (a dry run).
    pub fn validate_merchants(
        &self,
        rows: Vec<ImportRow>,
    ) -> Result<(ImportSummary, Durability), ImportError> {
        let shard = self.merchants.read();
        let import = shard
            .registry
            .decide_import(rows, &self.merchant_rules)
            .map_err(ImportError::Rejected)?;
        let summary = ImportSummary::of(&import);
        let durability = self
            .durability(shard.last_seq)
            .map_err(ImportError::Unavailable)?;
        Ok((summary, durability))
    }

    /// Imports merchants: all rows or none. The rows are checked under an
    /// upgradable read lock, so lookups go on meanwhile; the write lock is held
    /// only to queue the records (no I/O) and apply them. Every part is queued
    /// before the answer, which waits for the last part's durability.
    pub fn import_merchants(
        &self,
        rows: Vec<ImportRow>,
    ) -> Result<(ImportSummary, Durability), ImportError> {
        let shard = self.merchants.upgradable_read();
        let import = shard
            .registry
            .decide_import(rows, &self.merchant_rules)
            .map_err(ImportError::Rejected)?;
        let summary = ImportSummary::of(&import);
        if import.created.is_empty() {
            let durability = self
                .durability(shard.last_seq)
                .map_err(ImportError::Unavailable)?;
            return Ok((summary, durability));
        }
        let payloads = journal::encode_merchant_import(&import.created);
        let mut shard = RwLockUpgradableReadGuard::upgrade(shard);
        let mut last = None;
        for payload in payloads {
            let (tx, rx) = oneshot::channel();
            // A refusal part-way leaves earlier parts in the log without their
            // last part; replay drops them, and nothing is applied here either.
            let seq = self
                .wal
                .append(journal::KIND_MERCHANTS_IMPORTED, payload, tx)
                .map_err(ImportError::Unavailable)?;
            last = Some((seq, rx));
        }
        let (seq, rx) = last.expect("a non-empty import has parts");
        shard.registry.apply_import(import.created);
        shard.last_seq = seq;
        Ok((summary, Durability::Wait(rx)))
    }

    /// Suspends or resumes a merchant; a no-op if it already has `status`.
    pub fn set_merchant_status(
        &self,
        merchant_id: &str,
        status: MerchantStatus,
        now: UnixMillis,
    ) -> Result<(Merchant, Durability), MerchantError> {
        let mut shard = self.merchants.write();
        let durability = match shard.registry.decide_status(merchant_id, status, now)? {
            None => self
                .durability(shard.last_seq)
                .map_err(MerchantError::Unavailable)?,
            Some(change) => {
                let event = Event::MerchantStatusChanged(change);
                let (tx, rx) = oneshot::channel();
                let seq = self
                    .wal
                    .append(journal::kind_of(&event), journal::encode(&event), tx)
                    .map_err(MerchantError::Unavailable)?;
                let Event::MerchantStatusChanged(change) = event else {
                    unreachable!()
                };
                shard.registry.apply_status(&change);
                shard.last_seq = seq;
                Durability::Wait(rx)
            }
        };
        let merchant = shard
            .registry
            .get(merchant_id)
            .cloned()
            .expect("decide_status found it");
        Ok((merchant, durability))
    }

    /// One merchant, once every merchant record it may depend on is durable.
    pub fn merchant(
        &self,
        merchant_id: &str,
    ) -> Option<(Merchant, Result<Durability, AppendError>)> {
        let shard = self.merchants.read();
        let merchant = shard.registry.get(merchant_id)?.clone();
        Some((merchant, self.durability(shard.last_seq)))
    }

    /// Reads the registry under its read lock (for redemption and listings).
    /// Keep `f` short: imports and status changes wait for it.
    pub fn read_merchants<R>(&self, f: impl FnOnce(&MerchantRegistry) -> R) -> R {
        f(&self.merchants.read().registry)
    }

    pub fn list_merchants(
        &self,
        filter: &MerchantFilter<'_>,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<(MerchantListing, Durability), AppendError> {
        let shard = self.merchants.read();
        let MerchantPage {
            merchants,
            next_page_token,
        } = shard.registry.list(filter, page_token, page_size);
        let listing = MerchantListing {
            merchants: merchants.into_iter().cloned().collect(),
            next_page_token,
        };
        Ok((listing, self.durability(shard.last_seq)?))
    }

    /// Counts by (county, industry) cell, and totals by status.
    /// Merchant counts per county and industry, and in all; the answer waits on the
    /// returned durability (an import or status change may not be synced yet).
    pub fn merchant_counts(&self) -> MerchantCounts {
        let shard = self.merchants.read();
        let cells = shard
            .registry
            .counts()
            .map(|(county, industry, counts)| (county, industry.to_owned(), counts))
            .collect();
        (
            cells,
            shard.registry.totals(),
            self.durability(shard.last_seq),
        )
    }

    /// A consistent copy of the whole state, for a snapshot. Holds every lock
    /// for a moment (vouchers are shared, not copied); every WAL record up to
    /// `covered_seq` is in it and none after.
    pub fn checkpoint(&self) -> Checkpoint {
        // Merchants first (the lock order): waiting here for an import's
        // write lock holds no tranche lock, so claims go on meanwhile.
        let merchants = self.merchants.read();
        let catalog = self.catalog.read();
        let books: Vec<_> = catalog
            .tranches()
            .iter()
            .map(|shard| shard.lock())
            .collect();
        // Every append happens under a tranche lock, the catalog write lock or
        // the merchants' write lock, all held or excluded here, so nothing can
        // be appended right now (and no import is half queued).
        let covered_seq = self.wal.next_seq() - 1;
        Checkpoint {
            covered_seq,
            merchants: merchants.registry.share(),
            campaigns: catalog.campaigns().cloned().collect(),
            tranches: books
                .iter()
                .map(|book| TrancheCapture {
                    log: book.share_log(),
                    vouchers: book.share_vouchers(),
                })
                .collect(),
        }
    }

    /// Blocks until the WAL is durable through `seq`; false if it stopped first.
    pub fn wait_durable_blocking(&self, seq: u64) -> bool {
        match self.durability(seq) {
            Ok(d) => d.wait_blocking(),
            Err(_) => false,
        }
    }

    /// The recorded definition of a tranche, if any.
    /// The campaign as recorded (the WAL and snapshot's latest definition).
    pub fn campaign_spec(&self, campaign_id: &str) -> Option<CampaignSpec> {
        self.catalog.read().campaign(campaign_id).cloned()
    }

    pub fn tranche_spec(&self, tranche_id: &str) -> Option<TrancheSpec> {
        Some(self.shard(tranche_id)?.lock().spec().clone())
    }

    fn shard(&self, tranche_id: &str) -> Option<Shard> {
        self.catalog.read().tranche(tranche_id).cloned()
    }

    fn append(&self, event: &Event) -> Result<(u64, Durability), AdminError> {
        let (tx, rx) = oneshot::channel();
        let seq = self
            .wal
            .append(journal::kind_of(event), journal::encode(event), tx)
            .map_err(AdminError::Unavailable)?;
        Ok((seq, Durability::Wait(rx)))
    }

    /// Ready if the WAL is durable through `seq`, else a barrier to wait on.
    fn durability(&self, seq: u64) -> Result<Durability, AppendError> {
        if seq <= self.wal.durable_seq() {
            return Ok(Durability::Ready);
        }
        let (tx, rx) = oneshot::channel();
        self.wal.barrier(tx)?;
        Ok(Durability::Wait(rx))
    }

    fn voucher_view(&self, book: &TrancheBook, index: u32, now: UnixMillis) -> VoucherView {
        let spec = book.spec();
        let voucher = book.voucher(index);
        let status = book.voucher_status(index);
        VoucherView {
            state: book.voucher_state(index, now),
            redemption: status.redemption.map(|r| RedemptionId {
                tranche_ordinal: book.ordinal(),
                random: book.redemption(r).event.redemption_random,
            }),
            revocation: status.revocation.map(|c| {
                let case = book.revocation(c);
                (case.reason.clone(), case.case_id.clone())
            }),
            id: voucher.id(),
            tranche_id: spec.tranche_id.clone(),
            campaign_id: spec.campaign_id.clone(),
            county: voucher.county(),
            county_name: self
                .counties
                .name(voucher.county())
                .unwrap_or("")
                .to_owned(),
            face_value_fen: spec.face_value_fen,
            threshold_fen: spec.threshold_fen,
            claimed_at: voucher.claimed_at(),
            expires_at: spec.expires_at,
        }
    }

    fn tranche_view(&self, book: &TrancheBook, now: UnixMillis) -> TrancheView {
        TrancheView {
            spec: book.spec().clone(),
            state: book.state(now),
            paused: book.is_paused(),
            counties: book
                .counties()
                .iter()
                .map(|c| CountyView {
                    county: c.county,
                    name: self.counties.name(c.county).unwrap_or("").to_owned(),
                    quota: c.quota,
                    issued: c.issued,
                })
                .collect(),
        }
    }
}

fn geo_crs(crs: crate::core::Crs) -> crate::geo::Crs {
    match crs {
        crate::core::Crs::Gcj02 => crate::geo::Crs::Gcj02,
        crate::core::Crs::Wgs84 => crate::geo::Crs::Wgs84,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MerchantStatusChanged;

    /// The live path's last check: an event replay would refuse stops the process before
    /// it is appended (here, an expiry settled before the closing).
    #[test]
    #[should_panic(expected = "replay would refuse")]
    fn an_event_replay_would_refuse_is_never_appended() {
        let book = TrancheBook::new(0, TrancheSpec::for_tests("t"), DigestKey::new(1, 2), 1);
        let settled_out_of_order = Event::TrancheSettled {
            tranche_id: "t".into(),
            settlement: crate::core::event::Settlement::Expired,
            at: UnixMillis(20),
        };
        assert_replayable(&book, &settled_out_of_order);
    }

    fn merchants(range: std::ops::Range<usize>) -> Vec<Merchant> {
        range
            .map(|i| Merchant {
                merchant_id: format!("m{i:06}"),
                name: format!("宜昌第{i}号店，老字号小吃与特产"),
                county: CountyCode(420502),
                industry: "餐饮".into(),
                platform: "alipay".into(),
                status: MerchantStatus::Active,
            })
            .collect()
    }

    fn apply_all(recovered: &mut Recovered, seq: &mut u64, kind: u8, payloads: &[Vec<u8>]) {
        for payload in payloads {
            *seq += 1;
            recovered.apply(*seq, kind, payload).expect("applies");
        }
    }

    #[test]
    fn replay_drops_an_import_cut_short_and_keeps_whole_ones() {
        let mut recovered = Recovered::new(DigestKey::new(1, 2));
        let mut seq = 0;
        let first = journal::encode_merchant_import(&merchants(0..2_000));
        assert!(first.len() >= 3, "several parts");
        apply_all(
            &mut recovered,
            &mut seq,
            journal::KIND_MERCHANTS_IMPORTED,
            &first,
        );
        assert_eq!(recovered.merchants().len(), 2_000);

        // An import whose last part never reached the log, then another import.
        let cut = journal::encode_merchant_import(&merchants(2_000..4_000));
        let kept = &cut[..cut.len() - 1];
        apply_all(
            &mut recovered,
            &mut seq,
            journal::KIND_MERCHANTS_IMPORTED,
            kept,
        );
        assert_eq!(
            recovered.merchants().len(),
            2_000,
            "not applied before its last part"
        );
        let next = journal::encode_merchant_import(&merchants(4_000..4_010));
        apply_all(
            &mut recovered,
            &mut seq,
            journal::KIND_MERCHANTS_IMPORTED,
            &next,
        );
        assert_eq!(recovered.merchants().len(), 2_010);
        assert!(recovered.merchants().get("m002000").is_none());
        assert_eq!(recovered.abandoned_import_parts, kept.len() as u64);

        // A status change also ends an unfinished import; a part out of order is refused.
        apply_all(
            &mut recovered,
            &mut seq,
            journal::KIND_MERCHANTS_IMPORTED,
            &cut[..1],
        );
        let change = Event::MerchantStatusChanged(MerchantStatusChanged {
            merchant_id: "m000001".into(),
            status: MerchantStatus::Suspended,
            at: UnixMillis(9),
        });
        seq += 1;
        recovered
            .apply(seq, journal::kind_of(&change), &journal::encode(&change))
            .expect("status applies");
        assert_eq!(recovered.abandoned_import_parts, kept.len() as u64 + 1);
        assert!(
            !recovered
                .merchants()
                .get("m000001")
                .expect("m1")
                .is_active()
        );
        seq += 1;
        let out_of_order = recovered.apply(seq, journal::KIND_MERCHANTS_IMPORTED, &cut[1]);
        assert!(matches!(
            out_of_order,
            Err(ReplayError::Inconsistent { .. })
        ));

        // Recording a merchant twice is refused, not applied.
        let mut fresh = Recovered::new(DigestKey::new(1, 2));
        let one = journal::encode_merchant_import(&merchants(0..1));
        fresh
            .apply(1, journal::KIND_MERCHANTS_IMPORTED, &one[0])
            .expect("first");
        let twice = fresh.apply(2, journal::KIND_MERCHANTS_IMPORTED, &one[0]);
        assert!(matches!(twice, Err(ReplayError::Inconsistent { .. })));
        recovered.merchants().check_invariants();
    }
}
