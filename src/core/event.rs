//! Events: the facts that change state. Each one is a WAL record.
//!
//! Events are decided by the core, written to the WAL, then applied. Replay
//! applies the same events in the same order. Every field needed to rebuild
//! the state is inside the event; nothing is recomputed from the clock.

use super::merchant::{Merchant, MerchantStatus};
use super::time::UnixMillis;
use super::tranche::{CountyCode, TrancheSpec};

/// What happens to the money when a redeemed order is refunded. Set per campaign.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RefundPolicy {
    /// A full refund while the voucher is valid restores the voucher; a full
    /// refund after expiry returns its value to the pool. Partial refunds move no money.
    RestoreIfValid,
    /// Each refund returns the voucher's pro-rata share of the refunded amount
    /// to the pool; the voucher is not restored.
    Prorata,
    /// Hubei 2025: the voucher stays used and its whole value returns to the pool.
    NoRestore,
}

/// Whether money returned to the campaign pool flows into later tranches by itself.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Rollover {
    /// Only an explicit admin action releases pool money.
    None,
    /// When a tranche opens, the whole pool is added to it as extra vouchers.
    NextTranche,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSpec {
    pub campaign_id: String,
    pub name: String,
    /// Everything the campaign may ever pay out, in fen.
    pub budget_fen: u64,
    pub refund_policy: RefundPolicy,
    pub rollover: Rollover,
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

/// A voucher used at a merchant (核销).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherRedeemed {
    pub tranche_id: String,
    pub voucher_random: u64,
    /// Random part of the redemption ID (unique within the tranche).
    pub redemption_random: u64,
    pub merchant_id: String,
    pub order_id: String,
    pub order_amount_fen: u64,
    pub discount_fen: u64,
    /// The dynamic code's time step, when the voucher was presented as a code.
    pub code_step: Option<u64>,
    pub at: UnixMillis,
}

/// A refund against a redemption, with the money movement it caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedemptionRefunded {
    pub tranche_id: String,
    pub redemption_random: u64,
    pub refund_id: String,
    pub amount_fen: u64,
    /// Fen moved from `redeemed` back to the pool by this refund.
    pub returned_fen: u64,
    /// Whether the voucher was restored to `claimed` (its value back in `outstanding`).
    pub restored: bool,
    pub at: UnixMillis,
}

/// Money settled when a tranche's window or validity ends.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// At `closes_at`: unclaimed stock returns to the pool.
    Closed,
    /// At `expires_at`: unredeemed vouchers expire and their value returns to the pool.
    Expired,
}

/// Vouchers revoked for fraud (追回), within one tranche.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VouchersRevoked {
    pub tranche_id: String,
    /// Unredeemed vouchers: revoked, value back to the pool.
    pub revoked: Vec<u64>,
    /// Already redeemed: flagged with the case, value moved from `redeemed` to `revoked`.
    pub flagged: Vec<u64>,
    pub reason: String,
    pub case_id: String,
    pub at: UnixMillis,
}

/// Pool money added to a tranche as extra vouchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDrawn {
    pub tranche_id: String,
    /// Extra vouchers per county, sorted by code.
    pub added: Vec<(CountyCode, u32)>,
    pub amount_fen: u64,
    pub rollover: bool,
    pub at: UnixMillis,
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
    VoucherRedeemed(VoucherRedeemed),
    RedemptionRefunded(RedemptionRefunded),
    TrancheSettled {
        tranche_id: String,
        settlement: Settlement,
        at: UnixMillis,
    },
    VouchersRevoked(VouchersRevoked),
    PoolDrawn(PoolDrawn),
    MerchantsImported(MerchantsImported),
    MerchantStatusChanged(MerchantStatusChanged),
}

impl Event {
    /// The tranche an event belongs to, if it belongs to one.
    pub fn tranche_id(&self) -> Option<&str> {
        match self {
            Event::CampaignDefined(_) => None,
            Event::TrancheDefined { spec, .. } => Some(&spec.tranche_id),
            Event::TrancheControlled { tranche_id, .. }
            | Event::TrancheSettled { tranche_id, .. } => Some(tranche_id),
            Event::VoucherClaimed(e) => Some(&e.tranche_id),
            Event::VoucherRedeemed(e) => Some(&e.tranche_id),
            Event::RedemptionRefunded(e) => Some(&e.tranche_id),
            Event::VouchersRevoked(e) => Some(&e.tranche_id),
            Event::PoolDrawn(e) => Some(&e.tranche_id),
            Event::MerchantsImported(_) | Event::MerchantStatusChanged(_) => None,
        }
    }
}
