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

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::core::{
    CampaignSpec, Catalog, CatalogError, ClaimCommand, ClaimDecision, ControlDecision, CountyCode,
    DigestKey, Event, IdentityKeys, Location, RedemptionId, Refusal, TrancheBook, TrancheControl,
    TrancheSpec, TrancheState, UnixMillis, VoucherId,
};
use crate::geo::RegionIndex;
mod lifecycle;

pub use lifecycle::{
    MAX_REVOKE_TARGETS, PoolRequest, RedeemInput, RedeemOutcome, RedemptionView, RefundOutcome,
    RevokeReport, RevokeTargets,
};

use crate::core::lifecycle::{Ledger, TrancheMoney, VoucherState};
use crate::core::orders::{OrderBook, OrderEntry};
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
    /// A per-county draw names a county the tranche has no quota for.
    CountyNotInTranche,
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
}

/// State rebuilt from the WAL, before the WAL is open for appends.
pub struct Recovered {
    catalog: Catalog<Shard>,
    orders: OrderBook,
    digest_key: DigestKey,
    pub records: u64,
}

impl Recovered {
    pub fn new(digest_key: DigestKey) -> Recovered {
        Recovered {
            catalog: Catalog::default(),
            orders: OrderBook::new(digest_key),
            digest_key,
            records: 0,
        }
    }

    /// Applies one WAL record. Decided events are facts: they are applied, not re-decided.
    pub fn apply(&mut self, seq: u64, kind: u8, payload: &[u8]) -> Result<(), ReplayError> {
        let event =
            journal::decode(kind, payload).map_err(|source| ReplayError::Decode { seq, source })?;
        let inconsistent = |reason: String| ReplayError::Inconsistent { seq, reason };
        self.records += 1;
        match event {
            Event::CampaignDefined(spec) => self.catalog.apply_campaign(&spec),
            Event::TrancheDefined { ordinal, spec } => {
                spec.validate()
                    .map_err(|e| inconsistent(format!("invalid tranche spec: {e:?}")))?;
                let len = self.catalog.tranches().len() as u64;
                if u64::from(ordinal) == len {
                    let id = spec.tranche_id.clone();
                    let book = TrancheBook::new(ordinal, spec, self.digest_key, seq);
                    self.catalog
                        .apply_new_tranche(ordinal, &id, Arc::new(Mutex::new(book)));
                } else {
                    let shard = self.catalog.tranche_by_ordinal(ordinal).ok_or_else(|| {
                        inconsistent(format!("tranche ordinal {ordinal} skips ahead of {len}"))
                    })?;
                    let mut book = shard.lock();
                    if book.spec().tranche_id != spec.tranche_id || book.voucher_count() != 0 {
                        return Err(inconsistent(format!(
                            "redefinition of ordinal {ordinal} does not fit"
                        )));
                    }
                    book.apply_event(Arc::new(Event::TrancheDefined { ordinal, spec }), seq);
                }
            }
            Event::VoucherClaimed(claim) => {
                let shard = self
                    .catalog
                    .tranche(&claim.tranche_id)
                    .ok_or_else(|| inconsistent(format!("unknown tranche {}", claim.tranche_id)))?;
                // The core asserts quota, dedupe and ID uniqueness: a CRC-valid
                // record that breaks them is a bug, and the daemon must crash.
                shard.lock().replay_claim(claim, seq);
            }
            event => {
                let tranche_id = event.tranche_id().unwrap_or_default().to_owned();
                let shard = self
                    .catalog
                    .tranche(&tranche_id)
                    .ok_or_else(|| inconsistent(format!("unknown tranche {tranche_id}")))?;
                let mut book = shard.lock();
                let redeemed = match &event {
                    Event::VoucherRedeemed(r) => Some((
                        r.merchant_id.clone(),
                        r.order_id.clone(),
                        r.redemption_random,
                    )),
                    _ => None,
                };
                book.apply_event(Arc::new(event), seq);
                if let Some((merchant_id, order_id, random)) = redeemed {
                    let index = book.redemption_index(random).expect("just applied");
                    let r = book.redemption(index);
                    let entry = OrderEntry {
                        tranche_ordinal: book.ordinal(),
                        redemption_index: index,
                        voucher_random: r.event.voucher_random,
                        order_amount_fen: r.event.order_amount_fen,
                    };
                    self.orders.record(&merchant_id, &order_id, entry);
                }
            }
        }
        Ok(())
    }
}

pub struct Dispenser {
    catalog: RwLock<Catalog<Shard>>,
    /// Redemptions by (merchant, order), across tranches. Lock order: orders, then a tranche.
    orders: Mutex<OrderBook>,
    counties: CountyDirectory,
    regions: RegionIndex,
    wal: Wal,
    digest_key: DigestKey,
}

impl Dispenser {
    pub fn new(
        recovered: Recovered,
        counties: CountyDirectory,
        regions: RegionIndex,
        wal: Wal,
    ) -> Dispenser {
        for shard in recovered.catalog.tranches() {
            shard.lock().check_invariants();
        }
        Dispenser {
            catalog: RwLock::new(recovered.catalog),
            orders: Mutex::new(recovered.orders),
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
                let index = book.apply_claim(Arc::new(event), &digests, seq);
                ClaimOutcome::Claimed(self.voucher_view(&book, index, now), Durability::Wait(rx))
            }
            ClaimDecision::Replay { voucher_index } => {
                let view = self.voucher_view(&book, voucher_index, now);
                let seq = book.voucher(voucher_index).seq;
                drop(book);
                match self.durability(seq) {
                    Ok(d) => ClaimOutcome::Replayed(view, d),
                    Err(e) => ClaimOutcome::Unavailable(e),
                }
            }
            ClaimDecision::AlreadyClaimed { voucher_index } => {
                let view = self.voucher_view(&book, voucher_index, now);
                let seq = book.voucher(voucher_index).seq;
                drop(book);
                match self.durability(seq) {
                    Ok(d) => ClaimOutcome::AlreadyClaimed(view, d),
                    Err(e) => ClaimOutcome::Unavailable(e),
                }
            }
            ClaimDecision::Refused(refusal) => ClaimOutcome::Refused(refusal),
        }
    }

    pub fn voucher(&self, id: VoucherId, now: UnixMillis) -> Option<(VoucherView, Durability)> {
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
        // A voucher whose record is not yet durable does not exist for readers.
        let durability = self.durability(seq).ok()?;
        Some((view, durability))
    }

    pub fn tranche(&self, tranche_id: &str, now: UnixMillis) -> Option<TrancheView> {
        let shard = self.shard(tranche_id)?;
        let book = shard.lock();
        Some(self.tranche_view(&book, now))
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
        let released_fen = self
            .campaign_money(&catalog, &spec.campaign_id)
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
                .map_err(|_| AdminError::AlreadyOpened)?;
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
        catalog.apply_new_tranche(
            ordinal,
            &id,
            Arc::new(Mutex::new(TrancheBook::new(
                ordinal,
                spec,
                self.digest_key,
                seq,
            ))),
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
    pub fn ledger(&self, campaign_id: &str) -> Option<(CampaignSpec, Ledger)> {
        let catalog = self.catalog.read();
        let campaign = catalog.campaign(campaign_id)?.clone();
        let ledger = Ledger::of(
            campaign.budget_fen,
            &self.campaign_money(&catalog, campaign_id),
        );
        Some((campaign, ledger))
    }

    /// An answer that changes nothing still waits for everything before it,
    /// so it never shows state a crash could take back.
    fn settled_so_far(&self) -> Result<Durability, AdminError> {
        self.durability(self.wal.next_seq() - 1)
            .map_err(AdminError::Unavailable)
    }

    /// A consistent copy of the whole state, for a snapshot. Holds every lock
    /// for a moment (vouchers are shared, not copied); every WAL record up to
    /// `covered_seq` is in it and none after.
    pub fn checkpoint(&self) -> Checkpoint {
        let catalog = self.catalog.read();
        let books: Vec<_> = catalog
            .tranches()
            .iter()
            .map(|shard| shard.lock())
            .collect();
        // Every append happens under a tranche lock or the catalog write lock,
        // all held or excluded here, so nothing can be appended right now.
        let covered_seq = self.wal.next_seq() - 1;
        Checkpoint {
            covered_seq,
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
            id: voucher.id,
            tranche_id: spec.tranche_id.clone(),
            campaign_id: spec.campaign_id.clone(),
            county: voucher.county,
            county_name: self.counties.name(voucher.county).unwrap_or("").to_owned(),
            face_value_fen: spec.face_value_fen,
            threshold_fen: spec.threshold_fen,
            claimed_at: voucher.claimed_at,
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
