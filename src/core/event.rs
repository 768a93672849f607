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
///
/// A claim is what the state holds millions of, and what a restart rebuilds millions of
/// times, so its six strings live packed in one allocation (`keys`) rather than in six
/// `String`s: one allocation per claim instead of six, and about half the memory. The
/// fields are read through accessors and written once, through [`VoucherClaimed::new`].
#[derive(Clone, PartialEq)]
pub struct VoucherClaimed {
    /// `tranche_id`, `user_id`, `id_hash`, `phone_hash`, `device_id`, `request_id`,
    /// one after another (an absent optional key takes no bytes).
    keys: Box<str>,
    /// Where each of the first five ends in `keys`; the last ends where `keys` does.
    ends: [u16; CLAIM_TEXT_FIELDS - 1],
    /// Bit `i` (0–2) set: optional key `i` (`id_hash`, `phone_hash`, `device_id`) is
    /// present. [`FLAG_WGS84`]: the location is WGS-84 rather than GCJ-02.
    flags: u8,
    pub voucher_random: u64,
    pub county: CountyCode,
    pub claimed_at: UnixMillis,
    /// Stable hash of the claim body (read through [`Self::request_fingerprint`]), low half
    /// first: a `u128` field would align every claim, and every voucher holding one, to
    /// 16 bytes.
    fingerprint: [u64; 2],
    /// The location's coordinates (read through [`Self::location`]); its CRS is a flag.
    lng: f64,
    lat: f64,
}

/// [`VoucherClaimed::flags`]: the claim's location is in WGS-84.
const FLAG_WGS84: u8 = 1 << 3;

/// The string fields of a claim, packed in [`VoucherClaimed::keys`].
const CLAIM_TEXT_FIELDS: usize = 6;
/// The packed strings of one claim fit this (each field is bounded far below it: the
/// journal's `MAX_FIELD_BYTES`, the API's identity limits).
pub const MAX_CLAIM_TEXT_BYTES: usize = u16::MAX as usize;

/// The fields of a [`VoucherClaimed`], borrowed: what builds one and what reads one whole.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ClaimFields<'a> {
    pub tranche_id: &'a str,
    pub voucher_random: u64,
    pub county: CountyCode,
    pub claimed_at: UnixMillis,
    pub user_id: &'a str,
    pub id_hash: Option<&'a str>,
    pub phone_hash: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub request_id: &'a str,
    pub request_fingerprint: u128,
    pub location: Location,
}

impl VoucherClaimed {
    /// Packs the fields. Panics if the strings together exceed [`MAX_CLAIM_TEXT_BYTES`]:
    /// every caller has bounded each field well below that.
    pub fn new(f: ClaimFields<'_>) -> VoucherClaimed {
        let texts = [
            Some(f.tranche_id),
            Some(f.user_id),
            f.id_hash,
            f.phone_hash,
            f.device_id,
            Some(f.request_id),
        ];
        let total: usize = texts.iter().flatten().map(|t| t.len()).sum();
        assert!(
            total <= MAX_CLAIM_TEXT_BYTES,
            "claim strings of {total} bytes exceed {MAX_CLAIM_TEXT_BYTES}"
        );
        let mut keys = String::with_capacity(total);
        let mut ends = [0u16; CLAIM_TEXT_FIELDS - 1];
        let mut flags = match f.location.crs {
            Crs::Gcj02 => 0,
            Crs::Wgs84 => FLAG_WGS84,
        };
        for (i, text) in texts.iter().enumerate() {
            if let Some(text) = text {
                keys.push_str(text);
                if (2..5).contains(&i) {
                    flags |= 1 << (i - 2);
                }
            }
            if let Some(end) = ends.get_mut(i) {
                *end = keys.len() as u16;
            }
        }
        VoucherClaimed {
            keys: keys.into_boxed_str(),
            ends,
            flags,
            voucher_random: f.voucher_random,
            county: f.county,
            claimed_at: f.claimed_at,
            fingerprint: [
                f.request_fingerprint as u64,
                (f.request_fingerprint >> 64) as u64,
            ],
            lng: f.location.lng,
            lat: f.location.lat,
        }
    }

    fn text(&self, field: usize) -> &str {
        let start = match field {
            0 => 0,
            _ => usize::from(self.ends[field - 1]),
        };
        let end = self
            .ends
            .get(field)
            .map_or(self.keys.len(), |e| usize::from(*e));
        &self.keys[start..end]
    }

    fn optional(&self, field: usize) -> Option<&str> {
        (self.flags & (1 << (field - 2)) != 0).then(|| self.text(field))
    }

    /// Stable hash of the claim body; a retry with the same `request_id` but a
    /// different fingerprint is refused as `request_id_reused`.
    pub fn request_fingerprint(&self) -> u128 {
        u128::from(self.fingerprint[0]) | (u128::from(self.fingerprint[1]) << 64)
    }

    /// Where the claim was made, as the claimant's phone reported it.
    pub fn location(&self) -> Location {
        Location {
            lng: self.lng,
            lat: self.lat,
            crs: if self.flags & FLAG_WGS84 != 0 {
                Crs::Wgs84
            } else {
                Crs::Gcj02
            },
        }
    }

    pub fn tranche_id(&self) -> &str {
        self.text(0)
    }
    pub fn user_id(&self) -> &str {
        self.text(1)
    }
    pub fn id_hash(&self) -> Option<&str> {
        self.optional(2)
    }
    pub fn phone_hash(&self) -> Option<&str> {
        self.optional(3)
    }
    pub fn device_id(&self) -> Option<&str> {
        self.optional(4)
    }
    pub fn request_id(&self) -> &str {
        self.text(5)
    }

    /// Every field, borrowed; with struct update syntax this also builds a changed copy.
    pub fn fields(&self) -> ClaimFields<'_> {
        ClaimFields {
            tranche_id: self.tranche_id(),
            voucher_random: self.voucher_random,
            county: self.county,
            claimed_at: self.claimed_at,
            user_id: self.user_id(),
            id_hash: self.id_hash(),
            phone_hash: self.phone_hash(),
            device_id: self.device_id(),
            request_id: self.request_id(),
            request_fingerprint: self.request_fingerprint(),
            location: self.location(),
        }
    }
}

impl std::fmt::Debug for VoucherClaimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The packed form is not worth showing: show the fields it holds.
        f.debug_tuple("VoucherClaimed")
            .field(&self.fields())
            .finish()
    }
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
            Event::VoucherClaimed(e) => Some(e.tranche_id()),
            Event::VoucherRedeemed(e) => Some(&e.tranche_id),
            Event::RedemptionRefunded(e) => Some(&e.tranche_id),
            Event::VouchersRevoked(e) => Some(&e.tranche_id),
            Event::PoolDrawn(e) => Some(&e.tranche_id),
            Event::MerchantsImported(_) | Event::MerchantStatusChanged(_) => None,
        }
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    fn fields<'a>(id_hash: Option<&'a str>, device_id: Option<&'a str>) -> ClaimFields<'a> {
        ClaimFields {
            tranche_id: "t-2026-12",
            voucher_random: 7,
            county: CountyCode(420502),
            claimed_at: UnixMillis(1_700_000_000_000),
            user_id: "alipay:2088",
            id_hash,
            phone_hash: None,
            device_id,
            request_id: "req-1",
            request_fingerprint: 99,
            location: Location {
                lng: 111.3,
                lat: 30.7,
                crs: Crs::Gcj02,
            },
        }
    }

    #[test]
    fn packed_fields_read_back_as_given() {
        for (id_hash, device_id) in [
            (None, None),
            (Some("ab"), None),
            (None, Some("dev")),
            (Some(""), Some("")),
        ] {
            let given = fields(id_hash, device_id);
            let claim = VoucherClaimed::new(given);
            assert_eq!(claim.fields(), given);
        }
    }

    #[test]
    fn an_empty_optional_key_is_not_an_absent_one() {
        let absent = VoucherClaimed::new(fields(None, None));
        let empty = VoucherClaimed::new(fields(Some(""), None));
        assert_ne!(absent, empty);
        assert_eq!(empty.id_hash(), Some(""));
    }

    #[test]
    fn a_changed_copy_differs_only_where_changed() {
        let claim = VoucherClaimed::new(fields(Some("h"), Some("d")));
        let other = VoucherClaimed::new(ClaimFields {
            request_id: "req-2",
            ..claim.fields()
        });
        assert_eq!(other.request_id(), "req-2");
        assert_eq!(other.device_id(), Some("d"));
        assert_ne!(claim, other);
    }
}
