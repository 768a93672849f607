//! The pure core of voucherd: tranche rules, county inventory, identity dedupe,
//! request idempotency, the merchant registry and the events that record every
//! state change.
//!
//! Architecture invariant: nothing in here reads a clock, takes a lock, spawns,
//! awaits, touches a file or a socket, or knows about serde or HTTP. Time comes
//! in as a [`UnixMillis`] value and randomness as a `u64` argument, so every
//! decision is a deterministic function of its inputs and can be replayed from
//! the write-ahead log.
//!
//! Every state change follows the same two steps:
//! 1. `decide_*(&self, .., now)` looks at the state and returns either a
//!    refusal or an [`Event`] describing the change. It never mutates.
//! 2. `apply_*(&mut self, &event, seq)` performs the change. The daemon calls
//!    it after the event has been queued on the WAL, and replay calls the very
//!    same function, so live state and replayed state cannot drift apart.

pub mod append_log;
pub mod catalog;
pub mod chunked_vec;
pub mod code;
pub mod digest_index;
pub mod event;
pub mod identity;
pub mod lifecycle;
pub mod merchant;
pub mod orders;
pub mod replay;
pub mod rng;
pub mod time;
pub mod tranche;
pub mod voucher;

pub use catalog::{Campaign, Catalog, CatalogError};
pub use event::{
    CampaignSpec, ClaimFields, Crs, Event, Location, MerchantStatusChanged, MerchantsImported,
    TrancheControl, VoucherClaimed,
};
pub use identity::{DigestKey, IdentityKeys, KeyDigest};
pub use merchant::{
    ImportRow, Merchant, MerchantFilter, MerchantImport, MerchantRegistry, MerchantRules,
    MerchantShare, MerchantStatus, RowError, RowErrors, StatusCounts, UnknownMerchant,
};
pub use replay::{DigestedClaim, ReplayConflict};
pub use time::UnixMillis;
pub use tranche::{
    ClaimCommand, ClaimDecision, ControlDecision, CountyCode, CountyStock, ExpectedClaims,
    RedefineConflict, Refusal, SpecError, TrancheBook, TrancheSpec, TrancheState,
};
pub use voucher::{RedemptionId, Voucher, VoucherId};
