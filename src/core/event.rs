//! Events: the facts that change state. Each one is a WAL record.
//!
//! Events are decided by the core, written to the WAL, then applied. Replay
//! applies the same events in the same order. Every field needed to rebuild
//! the state is inside the event; nothing is recomputed from the clock.

use super::merchant::{Merchant, MerchantStatus};
use super::time::UnixMillis;
use super::tranche::{CountyCode, TrancheSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSpec {
    pub campaign_id: String,
    pub name: String,
}

/// The coordinate reference system a location was given in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Crs {
    Gcj02,
    Wgs84,
}

/// Where a claim was made, as the claimant's phone reported it.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Location {
    pub lng: f64,
    pub lat: f64,
    pub crs: Crs,
}

/// Pause or resume.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TrancheControl {
    Pause,
    Resume,
}

/// One voucher issued to one identity. Holds the raw keys (never raw ID or
/// phone numbers: those arrive hashed) so replay can rebuild the dedupe sets.
#[derive(Clone, Debug, PartialEq)]
pub struct VoucherClaimed {
    pub tranche_id: String,
    pub voucher_random: u64,
    pub county: CountyCode,
    pub claimed_at: UnixMillis,
    pub user_id: String,
    pub id_hash: Option<String>,
    pub phone_hash: Option<String>,
    pub device_id: Option<String>,
    pub request_id: String,
    /// Stable hash of the claim body; a retry with the same `request_id` but a
    /// different fingerprint is refused as `request_id_reused`.
    pub request_fingerprint: u128,
    pub location: Location,
}

/// One part of a merchant import. An import is written as `parts` records
/// (numbered from 0) so each stays well under the WAL's record size limit; it
/// takes effect only as a whole (see `merchant::ImportAssembler`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerchantsImported {
    pub part: u32,
    pub parts: u32,
    pub merchants: Vec<Merchant>,
}

/// A merchant suspended or resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerchantStatusChanged {
    pub merchant_id: String,
    pub status: MerchantStatus,
    pub at: UnixMillis,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    CampaignDefined(CampaignSpec),
    /// Creates a tranche, or replaces one that has not opened yet.
    TrancheDefined {
        ordinal: u32,
        spec: TrancheSpec,
    },
    TrancheControlled {
        tranche_id: String,
        control: TrancheControl,
        at: UnixMillis,
    },
    VoucherClaimed(VoucherClaimed),
    MerchantsImported(MerchantsImported),
    MerchantStatusChanged(MerchantStatusChanged),
}
