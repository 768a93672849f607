//! One tranche (批次): its rules, its per-county inventory, the identities that
//! already hold a voucher in it, and the answers given to each request ID.
//!
//! Invariants, asserted on every change:
//! - for every county, `issued <= quota` and `issued` equals the number of
//!   vouchers held for that county;
//! - every identity key maps to at most one voucher;
//! - voucher IDs are unique.

use std::sync::Arc;

use super::append_log::{AppendLog, SharedLog};
use super::rng::splitmix64;

use super::chunked_vec::ChunkedVec;
use super::digest_index::DigestIndex;
use super::event::{ClaimFields, Event, Location, TrancheControl, VoucherClaimed};
use super::identity::{DigestKey, IdentityDigests, IdentityKeys, KeyDigest, MAX_KEYS_PER_IDENTITY};
use super::lifecycle::{Redemption, TrancheMoney, VoucherState, VoucherStatus};
use super::time::UnixMillis;
use super::voucher::{Voucher, VoucherId};

/// A county-level division code (GB/T 2260), e.g. 420502 for 西陵区.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountyCode(pub u32);

/// Limits on a tranche definition.
pub const MAX_COUNTIES_PER_TRANCHE: usize = 64;
pub const MAX_QUOTA_PER_COUNTY: u32 = 10_000_000;
pub const MAX_FACE_VALUE_FEN: u64 = 100_000_000;
pub const MAX_THRESHOLD_FEN: u64 = 1_000_000_000;
pub const MAX_INDUSTRIES_PER_TRANCHE: usize = 32;
pub const MAX_INDUSTRY_BYTES: usize = 64;
/// A tranche's indexes are sized for its whole quota (up to this many vouchers)
/// when it is defined, so neither the release burst nor a replay pays for
/// growing them. At the cap the three indexes take 192 MiB (16-byte slots, at
/// most half full); a bigger tranche grows them by doubling past it, spread
/// over the inserts that follow (`DigestIndex`, "Retiring"). All tranches together
/// presize at most the catalog's budget ([`super::catalog::DEFAULT_PRESIZE_BUDGET_VOUCHERS`]).
pub const PRESIZED_VOUCHERS_MAX: u64 = 1 << 20;
/// Identity keys presized per voucher: every key a claim may carry
/// ([`MAX_KEYS_PER_IDENTITY`]). With two (user ID plus one more), platforms that
/// send all four keys grew the holders index at half the presized vouchers, in
/// the middle of a release: a ~0.4 s stall under the lock, measured as the open
/// loop's p99.
const PRESIZED_KEYS_PER_VOUCHER: usize = MAX_KEYS_PER_IDENTITY;
/// Bounded attempts to find an unused voucher random; a collision of 64-bit
/// CSPRNG values is already astronomically unlikely.
const MAX_VOUCHER_ID_ATTEMPTS: u32 = 64;

/// What a restart knows of the claims that follow a tranche's definition (a snapshot counts
/// them while it is verified): a sizes hint for [`TrancheBook::with_sizes`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedClaims {
    pub claims: u64,
    /// Identity keys over all those claims: what the holders index will hold.
    pub identity_keys: u64,
}

/// What an operator defines for a tranche.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrancheSpec {
    pub tranche_id: String,
    pub campaign_id: String,
    pub opens_at: UnixMillis,
    pub closes_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub face_value_fen: u64,
    pub threshold_fen: u64,
    /// One entry per county, sorted by code, codes unique.
    pub quotas: Vec<(CountyCode, u32)>,
    /// Whether a voucher may be redeemed at a merchant in any county of the
    /// city, not only the county it was claimed in.
    pub redeem_anywhere_in_city: bool,
    /// Industries where vouchers may be redeemed, sorted; empty means all.
    pub industries: Vec<String>,
}

/// A field of a [`TrancheSpec`] that is not acceptable, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl TrancheSpec {
    /// A small valid tranche for unit tests: five vouchers of 100 fen in 西陵区, open from
    /// time 0 to 10, campaign "c".
    #[cfg(test)]
    pub(crate) fn for_tests(tranche_id: &str) -> TrancheSpec {
        TrancheSpec {
            tranche_id: tranche_id.into(),
            campaign_id: "c".into(),
            opens_at: UnixMillis(0),
            closes_at: UnixMillis(10),
            expires_at: UnixMillis(10),
            face_value_fen: 100,
            threshold_fen: 0,
            quotas: vec![(CountyCode(420502), 5)],
            redeem_anywhere_in_city: false,
            industries: Vec::new(),
        }
    }

    /// Checks the relations between fields. Returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut fail =
            |field: &'static str, reason: String| errors.push(SpecError { field, reason });
        if self.closes_at <= self.opens_at {
            fail("closes_at", "must be after opens_at".into());
        }
        if self.expires_at < self.closes_at {
            fail("expires_at", "must not be before closes_at".into());
        }
        if self.face_value_fen == 0 || self.face_value_fen > MAX_FACE_VALUE_FEN {
            fail(
                "face_value_fen",
                format!("must be between 1 and {MAX_FACE_VALUE_FEN}"),
            );
        }
        if self.threshold_fen > MAX_THRESHOLD_FEN {
            fail(
                "threshold_fen",
                format!("must be at most {MAX_THRESHOLD_FEN}"),
            );
        } else if self.threshold_fen != 0 && self.threshold_fen < self.face_value_fen {
            fail(
                "threshold_fen",
                "must be 0 (no threshold) or at least face_value_fen (满X减Y needs X >= Y)".into(),
            );
        }
        if self.quotas.is_empty() {
            fail("quotas", "must name at least one county".into());
        }
        if self.quotas.len() > MAX_COUNTIES_PER_TRANCHE {
            fail(
                "quotas",
                format!("at most {MAX_COUNTIES_PER_TRANCHE} counties"),
            );
        }
        if !self.quotas.windows(2).all(|w| w[0].0 < w[1].0) {
            fail("quotas", "county codes must be unique".into());
        }
        if let Some((county, quota)) = self.quotas.iter().find(|(_, q)| *q > MAX_QUOTA_PER_COUNTY) {
            fail(
                "quotas",
                format!(
                    "quota {quota} for {} exceeds {MAX_QUOTA_PER_COUNTY}",
                    county.0
                ),
            );
        }
        if self.industries.len() > MAX_INDUSTRIES_PER_TRANCHE {
            fail(
                "industries",
                format!("at most {MAX_INDUSTRIES_PER_TRANCHE} industries"),
            );
        }
        if !self.industries.windows(2).all(|w| w[0] < w[1]) {
            fail("industries", "must be sorted and unique".into());
        }
        if self
            .industries
            .iter()
            .any(|i| i.is_empty() || i.len() > MAX_INDUSTRY_BYTES)
        {
            fail(
                "industries",
                format!("each industry is 1 to {MAX_INDUSTRY_BYTES} bytes"),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The money this definition releases from the campaign budget.
    pub fn release_fen(&self) -> u64 {
        self.total_quota() * self.face_value_fen
    }

    /// The smallest order a voucher can be used on: its threshold, and never
    /// less than its face value (a voucher's value is always used in full).
    pub fn minimum_order_fen(&self) -> u64 {
        self.threshold_fen.max(self.face_value_fen)
    }

    pub fn total_quota(&self) -> u64 {
        self.quotas.iter().map(|(_, q)| u64::from(*q)).sum()
    }

    /// Vouchers a new tranche of this spec makes its arrays for when it is defined: its whole
    /// quota, up to [`PRESIZED_VOUCHERS_MAX`] and up to `allowance` (what is left of the
    /// catalog's presize budget, [`super::catalog::Catalog::presize_allowance`]). Sizes only,
    /// never answers.
    pub fn presized_vouchers(&self, allowance: u64) -> u64 {
        self.total_quota().min(PRESIZED_VOUCHERS_MAX).min(allowance)
    }
}

/// The inventory of one county within one tranche.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CountyStock {
    pub county: CountyCode,
    pub quota: u32,
    pub issued: u32,
}

impl CountyStock {
    pub fn remaining(&self) -> u32 {
        self.quota - self.issued
    }
}

/// A tranche's state as seen at one instant.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TrancheState {
    Scheduled,
    Open,
    Paused,
    SoldOut,
    Closed,
}

impl TrancheState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrancheState::Scheduled => "scheduled",
            TrancheState::Open => "open",
            TrancheState::Paused => "paused",
            TrancheState::SoldOut => "sold_out",
            TrancheState::Closed => "closed",
        }
    }
}

/// One claim, after the API layer has parsed it and resolved the county.
#[derive(Copy, Clone, Debug)]
pub struct ClaimCommand<'a> {
    pub identity: IdentityKeys<'a>,
    pub request_id: &'a str,
    pub request_fingerprint: u128,
    /// `None` when the location is outside every county.
    pub county: Option<CountyCode>,
    pub location: Location,
    /// Fresh randomness for the voucher ID, from a CSPRNG.
    pub entropy: u64,
}

/// Why a claim gets no voucher. None of these write to the WAL.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    RequestIdReused,
    NotOpen {
        opens_at: UnixMillis,
    },
    Closed,
    Paused,
    OutsideArea,
    /// The location is in a county, but this tranche has no quota there.
    CountyNotInTranche {
        county: CountyCode,
    },
    SoldOut,
}

/// What to do with a claim.
// Returned once per claim and consumed at once: moving ~250 bytes is cheaper
// than boxing the event, which would add an allocation on the claim path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum ClaimDecision {
    /// Issue a voucher: queue the event on the WAL, then [`TrancheBook::apply_claim`].
    Issue {
        event: VoucherClaimed,
        digests: ClaimDigests,
    },
    /// The same request was answered before: show that voucher again.
    Replay {
        voucher_index: u32,
    },
    /// One of the identity's keys already holds this voucher.
    AlreadyClaimed {
        voucher_index: u32,
    },
    Refused(Refusal),
}

/// Digests computed while deciding, reused when applying.
#[derive(Copy, Clone, Debug)]
pub struct ClaimDigests {
    pub(super) identity: IdentityDigests,
    pub(super) request: KeyDigest,
}

/// Outcome of a pause/resume request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ControlDecision {
    /// Already in the requested state; nothing to record.
    Unchanged,
    Apply,
    /// Refused: the tranche has closed.
    Closed,
}

/// Why a tranche cannot be redefined.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RedefineConflict {
    /// It has opened, issued vouchers or been settled.
    AlreadyOpened,
    /// Vouchers were added to it from the campaign pool: a new spec would drop them.
    DrewFromPool,
}

/// The complete state of one tranche.
#[derive(Clone, Debug)]
pub struct TrancheBook {
    pub(super) ordinal: u32,
    pub(super) spec: TrancheSpec,
    pub(super) paused: bool,
    pub(super) counties: Vec<CountyStock>,
    pub(super) vouchers: AppendLog<Voucher>,
    pub(super) voucher_by_random: DigestIndex<u64>,
    pub(super) holders: DigestIndex<KeyDigest>,
    /// Request ID digest → the voucher it was answered with (whose claim holds the
    /// request's fingerprint).
    requests: DigestIndex<KeyDigest>,
    pub(super) digest_key: DigestKey,
    /// Lifecycle of each voucher, parallel to `vouchers`.
    pub(super) status: ChunkedVec<VoucherStatus>,
    pub(super) redemptions: Vec<Redemption>,
    pub(super) redemption_by_random: DigestIndex<u64>,
    pub(super) revocations: Vec<Arc<super::event::VouchersRevoked>>,
    /// Vouchers currently in state `Claimed`.
    pub(super) claimed_live: u64,
    pub(super) money: TrancheMoney,
    pub(super) closed_settled: bool,
    pub(super) expired_settled: bool,
    pub(super) rollover_done: bool,
    /// Every event applied to this tranche, in order: what a snapshot writes.
    pub(super) log: AppendLog<LogEntry>,
    /// Seq of the newest event other than a claim applied to this tranche (its definition
    /// at first): everything a voucher's state can depend on besides its own claim.
    last_event_seq: u64,
}

/// One entry of a tranche's own event log.
#[derive(Clone, Debug)]
pub enum LogEntry {
    /// Claims of `count` vouchers issued one after another, from `first` on: each claim
    /// event is kept with its voucher. A run of claims with no other event between them
    /// is one entry, not one per claim (a restart rebuilds this log).
    Claims {
        first: u32,
        count: u32,
    },
    Event {
        seq: u64,
        event: Arc<Event>,
    },
}

impl TrancheBook {
    /// A new tranche from a spec that passed [`TrancheSpec::validate`],
    /// defined by the WAL record `seq`.
    /// Its arrays are made for its whole quota up to [`PRESIZED_VOUCHERS_MAX`], outside any
    /// catalog's budget: for tests, benches and the simulation.
    pub fn new(ordinal: u32, spec: TrancheSpec, digest_key: DigestKey, seq: u64) -> TrancheBook {
        let presized = spec.presized_vouchers(u64::MAX);
        TrancheBook::with_sizes(
            ordinal,
            spec,
            digest_key,
            seq,
            presized,
            ExpectedClaims::default(),
        )
    }

    /// A new tranche whose arrays are made for `presized_vouchers` now (what
    /// [`TrancheSpec::presized_vouchers`] gave for the catalog's budget left; at most the
    /// quota), and, for a restart that knows the claims of this tranche that follow, and
    /// their identity keys (a snapshot counts them while it is verified): each index is made
    /// at the size those claims need, once, instead of doubling its way there from the
    /// presized size (the holders index for the keys counted, so claims with one key, or with
    /// all four, make it no bigger than they need and do not double it either). At
    /// 10 M claims that doubling wrote about 1.9 GB of arrays that were then thrown away, and
    /// re-placed every key at each step. A hint changes sizes only, never an answer.
    pub fn with_sizes(
        ordinal: u32,
        spec: TrancheSpec,
        digest_key: DigestKey,
        seq: u64,
        presized_vouchers: u64,
        expected: ExpectedClaims,
    ) -> TrancheBook {
        assert!(
            spec.validate().is_ok(),
            "tranche spec must be validated before use"
        );
        assert!(
            presized_vouchers <= spec.presized_vouchers(u64::MAX),
            "a tranche is presized for at most its quota, up to PRESIZED_VOUCHERS_MAX"
        );
        let counties = stock_for(&spec);
        let presized = presized_vouchers as usize;
        // A hint comes from a file, so it is not believed past twice the quota (pool draws can
        // add to a county's stock, rarely that much); past it, the index grows as it would
        // without a hint. The quota comes from the same file, so this alone does not bound a
        // forged count: the counter only counts records big enough to be claims of this
        // tranche, which bounds the memory a hint asks for by the file's size (see
        // `snapshot::ClaimCounter`).
        let known = expected
            .claims
            .min(spec.total_quota().saturating_mul(2))
            .min(u64::from(u32::MAX / 2)) as usize;
        let known_keys = expected
            .identity_keys
            .min((known * MAX_KEYS_PER_IDENTITY) as u64) as usize;
        let expected = presized.max(known);
        let presized_keys = presized * PRESIZED_KEYS_PER_VOUCHER;
        let expected_keys = presized_keys.max(known_keys);
        let release = spec.release_fen();
        let mut log = AppendLog::default();
        log.push(LogEntry::Event {
            seq,
            event: Arc::new(Event::TrancheDefined {
                ordinal,
                spec: spec.clone(),
            }),
        });
        let book = TrancheBook {
            ordinal,
            spec,
            paused: false,
            counties,
            vouchers: AppendLog::default(),
            voucher_by_random: DigestIndex::with_capacity_eventually(presized, expected),
            holders: DigestIndex::with_capacity_eventually(presized_keys, expected_keys),
            requests: DigestIndex::with_capacity_eventually(presized, expected),
            digest_key,
            status: ChunkedVec::with_capacity(expected),
            redemptions: Vec::new(),
            redemption_by_random: DigestIndex::default(),
            revocations: Vec::new(),
            claimed_live: 0,
            money: TrancheMoney::released(release),
            closed_settled: false,
            expired_settled: false,
            rollover_done: false,
            log,
            last_event_seq: seq,
        };
        book.check_money();
        book
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }
    pub fn spec(&self) -> &TrancheSpec {
        &self.spec
    }
    pub fn is_paused(&self) -> bool {
        self.paused
    }
    pub fn counties(&self) -> &[CountyStock] {
        &self.counties
    }
    pub fn vouchers(&self) -> impl Iterator<Item = &Voucher> {
        self.vouchers.iter()
    }
    pub fn voucher_count(&self) -> usize {
        self.vouchers.len()
    }
    pub fn voucher(&self, index: u32) -> &Voucher {
        self.vouchers
            .get(index as usize)
            .expect("voucher index from this book")
    }
    /// A consistent copy of the vouchers for a checkpoint (cheap: see [`AppendLog::share`]).
    pub fn share_vouchers(&self) -> SharedLog<Voucher> {
        self.vouchers.share()
    }
    /// A consistent copy of this tranche's event log, for a checkpoint.
    pub fn share_log(&self) -> SharedLog<LogEntry> {
        self.log.share()
    }
    pub fn money(&self) -> &TrancheMoney {
        &self.money
    }

    pub fn find_voucher(&self, id: VoucherId) -> Option<&Voucher> {
        if id.tranche_ordinal != self.ordinal {
            return None;
        }
        let index = self.voucher_by_random.get(id.random)?;
        self.vouchers.get(index as usize)
    }

    pub fn remaining_total(&self) -> u64 {
        self.counties.iter().map(|c| u64::from(c.remaining())).sum()
    }

    /// Whether the tranche has closed: its closing time has passed, or its closing was
    /// already settled (a wall clock stepped back after that must not reopen it: the
    /// unclaimed stock has gone back to the campaign pool).
    pub fn is_closed(&self, now: UnixMillis) -> bool {
        now >= self.spec.closes_at || self.closed_settled
    }

    pub fn state(&self, now: UnixMillis) -> TrancheState {
        if self.is_closed(now) {
            TrancheState::Closed
        } else if now < self.spec.opens_at {
            TrancheState::Scheduled
        } else if self.paused {
            TrancheState::Paused
        } else if self.remaining_total() == 0 {
            TrancheState::SoldOut
        } else {
            TrancheState::Open
        }
    }

    /// Decides a claim. Never mutates; see the module docs for the order of checks.
    pub fn decide_claim(&self, claim: &ClaimCommand<'_>, now: UnixMillis) -> ClaimDecision {
        let request = self.digest_key.request_digest(claim.request_id);
        let identity = self.digest_key.identity_digests(&claim.identity);
        // Load every index slot this claim may look at before looking at any of them: in a
        // big tranche each is a cache miss, and issued one after another they were most of
        // the decision's time. Independent loads are in flight together (see
        // `DigestIndex::touch`). The voucher-ID slot is only needed when there is stock.
        let may_issue = claim
            .county
            .and_then(|county| self.county_slot(county))
            .is_some_and(|slot| self.counties[slot].remaining() > 0);
        let touched = self.requests.touch([request])
            ^ self.holders.touch(identity.as_slice().iter().copied())
            ^ if may_issue {
                self.voucher_by_random.touch([claim.entropy])
            } else {
                0
            };
        std::hint::black_box(touched);
        // A retry is answered as before, whatever has changed since.
        if let Some(voucher_index) = self.requests.get(request) {
            return if self.voucher(voucher_index).claim.request_fingerprint()
                == claim.request_fingerprint
            {
                ClaimDecision::Replay { voucher_index }
            } else {
                ClaimDecision::Refused(Refusal::RequestIdReused)
            };
        }
        if now < self.spec.opens_at {
            return ClaimDecision::Refused(Refusal::NotOpen {
                opens_at: self.spec.opens_at,
            });
        }
        if self.is_closed(now) {
            return ClaimDecision::Refused(Refusal::Closed);
        }
        if self.paused {
            return ClaimDecision::Refused(Refusal::Paused);
        }
        let Some(county) = claim.county else {
            return ClaimDecision::Refused(Refusal::OutsideArea);
        };
        let Some(slot) = self.county_slot(county) else {
            return ClaimDecision::Refused(Refusal::CountyNotInTranche { county });
        };
        if let Some(voucher_index) = identity
            .as_slice()
            .iter()
            .find_map(|d| self.holders.get(*d))
        {
            return ClaimDecision::AlreadyClaimed { voucher_index };
        }
        if self.counties[slot].remaining() == 0 {
            return ClaimDecision::Refused(Refusal::SoldOut);
        }
        let voucher_random = self.unused_random(claim.entropy);
        ClaimDecision::Issue {
            event: VoucherClaimed::new(ClaimFields {
                tranche_id: &self.spec.tranche_id,
                voucher_random,
                county,
                claimed_at: now,
                user_id: claim.identity.user_id,
                id_hash: claim.identity.id_hash,
                phone_hash: claim.identity.phone_hash,
                device_id: claim.identity.device_id,
                request_id: claim.request_id,
                request_fingerprint: claim.request_fingerprint,
                location: claim.location,
            }),
            digests: ClaimDigests { identity, request },
        }
    }

    /// Applies a claim decided by [`Self::decide_claim`] in this process.
    pub fn apply_claim(&mut self, event: VoucherClaimed, digests: &ClaimDigests, seq: u64) -> u32 {
        assert_eq!(event.tranche_id(), self.spec.tranche_id);
        let slot = self
            .county_slot(event.county)
            .expect("claimed county must be in the tranche");
        let stock = &mut self.counties[slot];
        assert!(
            stock.issued < stock.quota,
            "over-issue in {} county {}",
            self.spec.tranche_id,
            event.county.0
        );
        stock.issued += 1;

        let index = u32::try_from(self.vouchers.len()).expect("voucher count fits u32");
        for digest in digests.identity.as_slice() {
            let previous = self.holders.insert(*digest, index);
            assert!(
                previous.is_none(),
                "identity issued twice in {}",
                self.spec.tranche_id
            );
        }
        let previous = self.requests.insert(digests.request, index);
        assert!(previous.is_none(), "request answered twice");
        let previous = self.voucher_by_random.insert(event.voucher_random, index);
        assert!(previous.is_none(), "voucher ID issued twice");
        self.vouchers.push(Voucher::new(self.ordinal, event, seq));
        self.status.push(VoucherStatus::claimed());
        self.claimed_live += 1;
        match self.log.last_open_mut() {
            Some(LogEntry::Claims { first, count }) if *first + *count == index => *count += 1,
            _ => self.log.push(LogEntry::Claims {
                first: index,
                count: 1,
            }),
        }
        self.check_money();
        index
    }

    /// Whether a request with this digest was answered with a voucher.
    pub(super) fn request_answered(&self, request: &KeyDigest) -> bool {
        self.requests.contains(*request)
    }

    /// See [`DigestIndex::touch`].
    pub(super) fn requests_touch(&self, requests: impl Iterator<Item = KeyDigest>) -> u32 {
        self.requests.touch(requests)
    }

    pub fn decide_control(&self, control: TrancheControl, now: UnixMillis) -> ControlDecision {
        if self.is_closed(now) {
            return ControlDecision::Closed;
        }
        let want_paused = control == TrancheControl::Pause;
        if self.paused == want_paused {
            ControlDecision::Unchanged
        } else {
            ControlDecision::Apply
        }
    }

    /// A tranche may be replaced only while it is still scheduled, empty, unsettled and
    /// without pool draws: what replay accepts (`check_redefine`), and before it opens.
    pub fn decide_redefine(&self, now: UnixMillis) -> Result<(), RedefineConflict> {
        if now >= self.spec.opens_at
            || !self.vouchers.is_empty()
            || self.closed_settled
            || self.expired_settled
        {
            Err(RedefineConflict::AlreadyOpened)
        } else if self.money.drawn_from_pool_fen != 0 {
            Err(RedefineConflict::DrewFromPool)
        } else {
            Ok(())
        }
    }

    /// Applies any tranche event other than a claim (claims take the fast
    /// path, [`Self::apply_claim`]). Live operation and replay both call this.
    pub fn apply_event(&mut self, event: Arc<Event>, seq: u64) {
        assert_eq!(
            event.tranche_id(),
            Some(self.spec.tranche_id.as_str()),
            "event for another tranche"
        );
        match &*event {
            Event::TrancheDefined { ordinal, spec } => {
                assert_eq!(*ordinal, self.ordinal);
                self.apply_redefine(spec.clone());
            }
            Event::TrancheControlled { control, .. } => {
                self.paused = *control == TrancheControl::Pause;
            }
            Event::VoucherRedeemed(e) => self.apply_redeem(e.clone()),
            Event::RedemptionRefunded(e) => self.apply_refund(e),
            Event::TrancheSettled { settlement, .. } => self.apply_settle(*settlement),
            Event::VouchersRevoked(e) => self.apply_revoke(e),
            Event::PoolDrawn(e) => self.apply_draw(e),
            Event::CampaignDefined(_)
            | Event::VoucherClaimed(_)
            | Event::MerchantsImported(_)
            | Event::MerchantStatusChanged(_) => {
                panic!("not a tranche lifecycle event: {event:?}")
            }
        }
        self.log.push(LogEntry::Event { seq, event });
        self.last_event_seq = seq;
        self.check_money();
    }

    /// The WAL seq through which an answer showing voucher `index` must be durable: its
    /// claim, and every later event of this tranche (a redemption, refund, revocation or
    /// settlement that changed its state may be among them). During a release, when a
    /// tranche has only claims, that is the claim itself.
    pub fn voucher_shown_through_seq(&self, index: u32) -> u64 {
        self.voucher(index).seq.max(self.last_event_seq)
    }

    fn apply_redefine(&mut self, spec: TrancheSpec) {
        assert!(
            self.vouchers.is_empty(),
            "redefining a tranche that issued vouchers"
        );
        assert!(
            spec.validate().is_ok(),
            "tranche spec must be validated before use"
        );
        assert!(
            self.money.drawn_from_pool_fen == 0,
            "redefining a tranche that drew from the pool"
        );
        self.counties = stock_for(&spec);
        self.money = TrancheMoney::released(spec.release_fen());
        self.spec = spec;
    }

    pub(super) fn county_slot(&self, county: CountyCode) -> Option<usize> {
        // At most MAX_COUNTIES_PER_TRANCHE entries, sorted: a short linear
        // scan beats hashing at this size.
        self.counties.iter().position(|c| c.county == county)
    }

    fn unused_random(&self, entropy: u64) -> u64 {
        unused_key(entropy, |k| self.voucher_by_random.contains(k))
    }

    /// The voucher's position in this tranche, if it belongs here.
    pub fn voucher_index(&self, id: VoucherId) -> Option<u32> {
        if id.tranche_ordinal != self.ordinal {
            return None;
        }
        self.voucher_by_random.get(id.random)
    }

    /// The voucher an identity key holds in this tranche, if any.
    pub fn holder(&self, digest: KeyDigest) -> Option<u32> {
        self.holders.get(digest)
    }

    pub fn voucher_status(&self, index: u32) -> &VoucherStatus {
        &self.status[index as usize]
    }

    /// Money identity of the tranche, asserted after every change: everything
    /// released is outstanding, redeemed, revoked or returned; and outstanding
    /// is exactly the unclaimed stock (until closing) plus live vouchers.
    pub(super) fn check_money(&self) {
        self.money.check();
        let face = self.spec.face_value_fen;
        let unclaimed = if self.closed_settled {
            0
        } else {
            self.remaining_total() * face
        };
        assert_eq!(
            self.money.outstanding_fen,
            unclaimed + self.claimed_live * face,
            "outstanding money drifted in {}",
            self.spec.tranche_id
        );
    }

    /// Re-checks every invariant from scratch. Used by tests and after replay.
    pub fn check_invariants(&self) {
        // Counted by the county's position in `counties` (a tranche has a few dozen at most);
        // no map needed. The pass is bound by reading the vouchers (about 180 ms at 10 M).
        let mut per_county = vec![0u32; self.counties.len()];
        for voucher in self.vouchers.iter() {
            let county = voucher.county();
            let at = self.counties.iter().position(|s| s.county == county);
            let at =
                at.unwrap_or_else(|| panic!("voucher for county {} outside the tranche", county.0));
            per_county[at] += 1;
        }
        for (stock, counted) in self.counties.iter().zip(per_county) {
            assert!(
                stock.issued <= stock.quota,
                "over-issue in county {}",
                stock.county.0
            );
            assert_eq!(counted, stock.issued, "issued count drifted");
        }
        assert_eq!(
            self.voucher_by_random.len(),
            self.vouchers.len(),
            "duplicate voucher ID"
        );
        assert!(
            self.holders
                .max_value()
                .is_none_or(|i| (i as usize) < self.vouchers.len()),
            "an identity holds a voucher that does not exist"
        );
        assert_eq!(self.status.len(), self.vouchers.len());
        let live = self
            .status
            .iter()
            .filter(|s| s.state == VoucherState::Claimed)
            .count() as u64;
        assert_eq!(live, self.claimed_live, "live voucher count drifted");
        self.check_money();
    }
}

/// A key for which `taken` is false, starting from `entropy` (CSPRNG output).
pub(super) fn unused_key(entropy: u64, taken: impl Fn(u64) -> bool) -> u64 {
    let mut candidate = entropy;
    for _ in 0..MAX_VOUCHER_ID_ATTEMPTS {
        if !taken(candidate) {
            return candidate;
        }
        candidate = splitmix64(candidate);
    }
    panic!("no unused ID after {MAX_VOUCHER_ID_ATTEMPTS} attempts: entropy source is broken");
}

fn stock_for(spec: &TrancheSpec) -> Vec<CountyStock> {
    spec.quotas
        .iter()
        .map(|&(county, quota)| CountyStock {
            county,
            quota,
            issued: 0,
        })
        .collect()
}
