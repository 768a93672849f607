//! The journal codec: core [`Event`]s to and from WAL record payloads.
//!
//! The WAL frames, checksums and orders opaque payloads; this module gives them
//! meaning. The encoding is explicit little-endian binary with length-prefixed
//! strings, so the format is stable and owes nothing to a serialization
//! library. Decoding never panics: every read is bounds-checked and every
//! length is limited, because the bytes come from disk.

use crate::core::event::MAX_CLAIM_TEXT_BYTES;
use crate::core::event::{
    PoolDrawn, RedemptionRefunded, RefundPolicy, Rollover, Settlement, VoucherRedeemed,
    VouchersRevoked,
};
use crate::core::{
    CampaignSpec, ClaimFields, CountyCode, Crs, Event, Location, Merchant, MerchantStatus,
    MerchantStatusChanged, MerchantsImported, TrancheControl, TrancheSpec, UnixMillis,
    VoucherClaimed,
};

/// WAL record kinds. 0 is reserved as invalid by the WAL.
pub const KIND_CAMPAIGN_DEFINED: u8 = 1;
pub const KIND_TRANCHE_DEFINED: u8 = 2;
pub const KIND_TRANCHE_CONTROLLED: u8 = 3;
pub const KIND_VOUCHER_CLAIMED: u8 = 4;
// Kinds 5 and 6 belong to the merchant registry.
pub const KIND_VOUCHER_REDEEMED: u8 = 7;
pub const KIND_REDEMPTION_REFUNDED: u8 = 8;
pub const KIND_TRANCHE_SETTLED: u8 = 9;
pub const KIND_VOUCHERS_REVOKED: u8 = 10;
pub const KIND_POOL_DRAWN: u8 = 11;
/// Most vouchers one revocation record names.
pub const MAX_VOUCHERS_PER_REVOCATION_RECORD: usize = 2_048;
/// Most industries in one tranche record.
pub const MAX_INDUSTRIES_PER_RECORD: usize = 64;
pub const KIND_MERCHANTS_IMPORTED: u8 = 5;
pub const KIND_MERCHANT_STATUS_CHANGED: u8 = 6;
// Kinds 7 and up are reserved for redemption records.

/// Longest string field in any record.
pub const MAX_FIELD_BYTES: usize = 1_024;
/// The bytes of a claim record's payload besides its strings: the lengths of the three
/// required ones (tranche, user, request), the presence bytes of the three optional keys, the
/// voucher random, county, time, request fingerprint, coordinates and CRS. A claim's payload
/// is this plus its strings' bytes (see `write_claim`).
pub const CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS: usize = 2 + 8 + 4 + 8 + 2 + 3 + 2 + 16 + 8 + 8 + 1;
/// Most county quotas in one tranche record.
pub const MAX_QUOTAS_PER_RECORD: usize = 1_024;
/// Payload size an import part is filled to, at most: well under the WAL's
/// 64 KiB record limit, so one merchant of the largest size always fits.
pub const MERCHANT_PART_TARGET_BYTES: usize = 48 * 1024;
/// Most merchants one import part may hold when read back.
pub const MAX_MERCHANTS_PER_RECORD: usize = 8_192;
/// Bytes before the merchants in an import part: part, parts, count.
const MERCHANT_PART_HEAD_BYTES: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record ends early while reading {0}")]
    Truncated(&'static str),
    #[error("field {0} is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong(&'static str),
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("field {0} has invalid value {1}")]
    BadValue(&'static str, u64),
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
}

/// The name of a record kind, as the operator tools print it.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_CAMPAIGN_DEFINED => "campaign_defined",
        KIND_TRANCHE_DEFINED => "tranche_defined",
        KIND_TRANCHE_CONTROLLED => "tranche_controlled",
        KIND_VOUCHER_CLAIMED => "voucher_claimed",
        KIND_MERCHANTS_IMPORTED => "merchants_imported",
        KIND_MERCHANT_STATUS_CHANGED => "merchant_status_changed",
        KIND_VOUCHER_REDEEMED => "voucher_redeemed",
        KIND_REDEMPTION_REFUNDED => "redemption_refunded",
        KIND_TRANCHE_SETTLED => "tranche_settled",
        KIND_VOUCHERS_REVOKED => "vouchers_revoked",
        KIND_POOL_DRAWN => "pool_drawn",
        _ => "unknown kind",
    }
}

/// The record kind for an event.
pub fn kind_of(event: &Event) -> u8 {
    match event {
        Event::CampaignDefined(_) => KIND_CAMPAIGN_DEFINED,
        Event::TrancheDefined { .. } => KIND_TRANCHE_DEFINED,
        Event::TrancheControlled { .. } => KIND_TRANCHE_CONTROLLED,
        Event::VoucherClaimed(_) => KIND_VOUCHER_CLAIMED,
        Event::VoucherRedeemed(_) => KIND_VOUCHER_REDEEMED,
        Event::RedemptionRefunded(_) => KIND_REDEMPTION_REFUNDED,
        Event::TrancheSettled { .. } => KIND_TRANCHE_SETTLED,
        Event::VouchersRevoked(_) => KIND_VOUCHERS_REVOKED,
        Event::PoolDrawn(_) => KIND_POOL_DRAWN,
        Event::MerchantsImported(_) => KIND_MERCHANTS_IMPORTED,
        Event::MerchantStatusChanged(_) => KIND_MERCHANT_STATUS_CHANGED,
    }
}

pub fn encode(event: &Event) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    match event {
        Event::CampaignDefined(c) => {
            w.str(&c.campaign_id);
            w.str(&c.name);
            w.u64(c.budget_fen);
            w.u8(match c.refund_policy {
                RefundPolicy::RestoreIfValid => 1,
                RefundPolicy::Prorata => 2,
                RefundPolicy::NoRestore => 3,
            });
            w.u8(match c.rollover {
                Rollover::None => 1,
                Rollover::NextTranche => 2,
            });
        }
        Event::TrancheDefined { ordinal, spec } => {
            w.u32(*ordinal);
            w.str(&spec.tranche_id);
            w.str(&spec.campaign_id);
            w.i64(spec.opens_at.0);
            w.i64(spec.closes_at.0);
            w.i64(spec.expires_at.0);
            w.u64(spec.face_value_fen);
            w.u64(spec.threshold_fen);
            w.u32(u32::try_from(spec.quotas.len()).expect("validated quota count"));
            for (county, quota) in &spec.quotas {
                w.u32(county.0);
                w.u32(*quota);
            }
            w.u8(u8::from(spec.redeem_anywhere_in_city));
            w.u32(u32::try_from(spec.industries.len()).expect("validated industry count"));
            for industry in &spec.industries {
                w.str(industry);
            }
        }
        Event::TrancheControlled {
            tranche_id,
            control,
            at,
        } => {
            w.str(tranche_id);
            w.u8(match control {
                TrancheControl::Pause => 1,
                TrancheControl::Resume => 2,
            });
            w.i64(at.0);
        }
        Event::VoucherClaimed(v) => write_claim(&mut w, v),
        Event::VoucherRedeemed(r) => {
            w.str(&r.tranche_id);
            w.u64(r.voucher_random);
            w.u64(r.redemption_random);
            w.str(&r.merchant_id);
            w.str(&r.order_id);
            w.u64(r.order_amount_fen);
            w.u64(r.discount_fen);
            match r.code_step {
                None => w.u8(0),
                Some(step) => {
                    w.u8(1);
                    w.u64(step);
                }
            }
            w.i64(r.at.0);
        }
        Event::RedemptionRefunded(r) => {
            w.str(&r.tranche_id);
            w.u64(r.redemption_random);
            w.str(&r.refund_id);
            w.u64(r.amount_fen);
            w.u64(r.returned_fen);
            w.u8(u8::from(r.restored));
            w.i64(r.at.0);
        }
        Event::TrancheSettled {
            tranche_id,
            settlement,
            at,
        } => {
            w.str(tranche_id);
            w.u8(match settlement {
                Settlement::Closed => 1,
                Settlement::Expired => 2,
            });
            w.i64(at.0);
        }
        Event::VouchersRevoked(r) => {
            w.str(&r.tranche_id);
            for list in [&r.revoked, &r.flagged] {
                w.u32(u32::try_from(list.len()).expect("bounded revocation"));
                for random in list {
                    w.u64(*random);
                }
            }
            w.str(&r.reason);
            w.str(&r.case_id);
            w.i64(r.at.0);
        }
        Event::PoolDrawn(p) => {
            w.str(&p.tranche_id);
            w.u32(u32::try_from(p.added.len()).expect("bounded counties"));
            for (county, n) in &p.added {
                w.u32(county.0);
                w.u32(*n);
            }
            w.u64(p.amount_fen);
            w.u8(u8::from(p.rollover));
            w.i64(p.at.0);
        }
        Event::MerchantsImported(part) => {
            write_part_head(&mut w, part.part, part.parts, part.merchants.len());
            for m in &part.merchants {
                write_merchant(&mut w, m);
            }
        }
        Event::MerchantStatusChanged(change) => {
            w.str(&change.merchant_id);
            w.u8(status_code(change.status));
            w.i64(change.at.0);
        }
    }
    w.0
}

/// The payloads of one import's [`KIND_MERCHANTS_IMPORTED`] records: the
/// merchants in order, split into parts of at most
/// [`MERCHANT_PART_TARGET_BYTES`]. No merchants, no records.
pub fn encode_merchant_import(merchants: &[Merchant]) -> Vec<Vec<u8>> {
    let mut groups: Vec<&[Merchant]> = Vec::new();
    let mut start = 0;
    let mut bytes = MERCHANT_PART_HEAD_BYTES;
    for (i, m) in merchants.iter().enumerate() {
        let size = merchant_encoded_len(m);
        if i > start
            && (bytes + size > MERCHANT_PART_TARGET_BYTES || i - start == MAX_MERCHANTS_PER_RECORD)
        {
            groups.push(&merchants[start..i]);
            start = i;
            bytes = MERCHANT_PART_HEAD_BYTES;
        }
        bytes += size;
    }
    if start < merchants.len() {
        groups.push(&merchants[start..]);
    }
    let parts = u32::try_from(groups.len()).expect("an import has fewer than 2^32 parts");
    groups
        .iter()
        .enumerate()
        .map(|(part, group)| {
            let mut w = Writer(Vec::with_capacity(MERCHANT_PART_TARGET_BYTES));
            write_part_head(&mut w, part as u32, parts, group.len());
            for m in *group {
                write_merchant(&mut w, m);
            }
            w.0
        })
        .collect()
}

fn write_part_head(w: &mut Writer, part: u32, parts: u32, count: usize) {
    w.u32(part);
    w.u32(parts);
    w.u32(u32::try_from(count).expect("part sizes are bounded"));
}

fn merchant_encoded_len(m: &Merchant) -> usize {
    2 + m.merchant_id.len() + 2 + m.name.len() + 4 + 2 + m.industry.len() + 2 + m.platform.len() + 1
}

fn write_merchant(w: &mut Writer, m: &Merchant) {
    w.str(&m.merchant_id);
    w.str(&m.name);
    w.u32(m.county.0);
    w.str(&m.industry);
    w.str(&m.platform);
    w.u8(status_code(m.status));
}

fn status_code(status: MerchantStatus) -> u8 {
    match status {
        MerchantStatus::Active => 1,
        MerchantStatus::Suspended => 2,
    }
}

fn read_status(r: &mut Reader<'_>) -> Result<MerchantStatus, DecodeError> {
    match r.u8("status")? {
        1 => Ok(MerchantStatus::Active),
        2 => Ok(MerchantStatus::Suspended),
        other => Err(DecodeError::BadValue("status", u64::from(other))),
    }
}

fn decode_merchant_part(r: &mut Reader<'_>) -> Result<MerchantsImported, DecodeError> {
    let part = r.u32("part")?;
    let parts = r.u32("parts")?;
    let count = r.u32("merchant_count")? as usize;
    if count > MAX_MERCHANTS_PER_RECORD {
        return Err(DecodeError::BadValue("merchant_count", count as u64));
    }
    let mut merchants = Vec::with_capacity(count);
    for _ in 0..count {
        merchants.push(Merchant {
            merchant_id: r.str("merchant_id")?,
            name: r.str("name")?,
            county: CountyCode(r.u32("county")?),
            industry: r.str("industry")?,
            platform: r.str("platform")?,
            status: read_status(r)?,
        });
    }
    Ok(MerchantsImported {
        part,
        parts,
        merchants,
    })
}

/// The payload of a [`KIND_VOUCHER_CLAIMED`] record, without wrapping the claim in an [`Event`].
pub fn encode_claim(v: &VoucherClaimed) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    write_claim(&mut w, v);
    w.0
}

fn write_claim(w: &mut Writer, v: &VoucherClaimed) {
    w.str(v.tranche_id());
    w.u64(v.voucher_random);
    w.u32(v.county.0);
    w.i64(v.claimed_at.0);
    w.str(v.user_id());
    w.opt_str(v.id_hash());
    w.opt_str(v.phone_hash());
    w.opt_str(v.device_id());
    w.str(v.request_id());
    w.u128(v.request_fingerprint());
    w.u64(v.location().lng.to_bits());
    w.u64(v.location().lat.to_bits());
    w.u8(match v.location().crs {
        Crs::Gcj02 => 1,
        Crs::Wgs84 => 2,
    });
}

/// How many identity keys a claim record's payload carries (its user ID and each optional key
/// present), read from the front of it without decoding the rest; `None` if that front is
/// not one of a claim. For a restart's sizes hint: a snapshot counts each tranche's keys on its
/// verifying pass, which reads every record but decodes only tranche definitions.
pub fn claim_identity_keys(payload: &[u8]) -> Option<u64> {
    let mut r = Reader(payload);
    r.skip_str("tranche_id").ok()?;
    r.take(8 + 4 + 8, "voucher_random, county, claimed_at")
        .ok()?;
    r.skip_str("user_id").ok()?;
    let mut keys = 1;
    for field in ["id_hash", "phone_hash", "device_id"] {
        match r.u8(field).ok()? {
            0 => {}
            1 => {
                r.skip_str(field).ok()?;
                keys += 1;
            }
            _ => return None,
        }
    }
    Some(keys)
}

pub fn decode(kind: u8, payload: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader(payload);
    let event = match kind {
        KIND_CAMPAIGN_DEFINED => Event::CampaignDefined(CampaignSpec {
            campaign_id: r.str("campaign_id")?,
            name: r.str("name")?,
            budget_fen: r.u64("budget_fen")?,
            refund_policy: match r.u8("refund_policy")? {
                1 => RefundPolicy::RestoreIfValid,
                2 => RefundPolicy::Prorata,
                3 => RefundPolicy::NoRestore,
                other => return Err(DecodeError::BadValue("refund_policy", u64::from(other))),
            },
            rollover: match r.u8("rollover")? {
                1 => Rollover::None,
                2 => Rollover::NextTranche,
                other => return Err(DecodeError::BadValue("rollover", u64::from(other))),
            },
        }),
        KIND_TRANCHE_DEFINED => {
            let ordinal = r.u32("ordinal")?;
            let tranche_id = r.str("tranche_id")?;
            let campaign_id = r.str("campaign_id")?;
            let opens_at = UnixMillis(r.i64("opens_at")?);
            let closes_at = UnixMillis(r.i64("closes_at")?);
            let expires_at = UnixMillis(r.i64("expires_at")?);
            let face_value_fen = r.u64("face_value_fen")?;
            let threshold_fen = r.u64("threshold_fen")?;
            let count = r.u32("quota_count")? as usize;
            if count > MAX_QUOTAS_PER_RECORD {
                return Err(DecodeError::BadValue("quota_count", count as u64));
            }
            let mut quotas = Vec::with_capacity(count);
            for _ in 0..count {
                quotas.push((CountyCode(r.u32("county")?), r.u32("quota")?));
            }
            let redeem_anywhere_in_city = r.bool("redeem_anywhere_in_city")?;
            let industry_count = r.u32("industry_count")? as usize;
            if industry_count > MAX_INDUSTRIES_PER_RECORD {
                return Err(DecodeError::BadValue(
                    "industry_count",
                    industry_count as u64,
                ));
            }
            let mut industries = Vec::with_capacity(industry_count);
            for _ in 0..industry_count {
                industries.push(r.str("industry")?);
            }
            Event::TrancheDefined {
                ordinal,
                spec: TrancheSpec {
                    tranche_id,
                    campaign_id,
                    opens_at,
                    closes_at,
                    expires_at,
                    face_value_fen,
                    threshold_fen,
                    quotas,
                    redeem_anywhere_in_city,
                    industries,
                },
            }
        }
        KIND_TRANCHE_CONTROLLED => {
            let tranche_id = r.str("tranche_id")?;
            let control = match r.u8("control")? {
                1 => TrancheControl::Pause,
                2 => TrancheControl::Resume,
                other => return Err(DecodeError::BadValue("control", u64::from(other))),
            };
            Event::TrancheControlled {
                tranche_id,
                control,
                at: UnixMillis(r.i64("at")?),
            }
        }
        KIND_VOUCHER_CLAIMED => Event::VoucherClaimed(decode_claim(&mut r)?),
        KIND_VOUCHER_REDEEMED => Event::VoucherRedeemed(VoucherRedeemed {
            tranche_id: r.str("tranche_id")?,
            voucher_random: r.u64("voucher_random")?,
            redemption_random: r.u64("redemption_random")?,
            merchant_id: r.str("merchant_id")?,
            order_id: r.str("order_id")?,
            order_amount_fen: r.u64("order_amount_fen")?,
            discount_fen: r.u64("discount_fen")?,
            code_step: match r.u8("code_step")? {
                0 => None,
                1 => Some(r.u64("code_step")?),
                other => return Err(DecodeError::BadValue("code_step", u64::from(other))),
            },
            at: UnixMillis(r.i64("at")?),
        }),
        KIND_REDEMPTION_REFUNDED => Event::RedemptionRefunded(RedemptionRefunded {
            tranche_id: r.str("tranche_id")?,
            redemption_random: r.u64("redemption_random")?,
            refund_id: r.str("refund_id")?,
            amount_fen: r.u64("amount_fen")?,
            returned_fen: r.u64("returned_fen")?,
            restored: r.bool("restored")?,
            at: UnixMillis(r.i64("at")?),
        }),
        KIND_TRANCHE_SETTLED => Event::TrancheSettled {
            tranche_id: r.str("tranche_id")?,
            settlement: match r.u8("settlement")? {
                1 => Settlement::Closed,
                2 => Settlement::Expired,
                other => return Err(DecodeError::BadValue("settlement", u64::from(other))),
            },
            at: UnixMillis(r.i64("at")?),
        },
        KIND_VOUCHERS_REVOKED => {
            let tranche_id = r.str("tranche_id")?;
            let revoked = r.u64_list("revoked", MAX_VOUCHERS_PER_REVOCATION_RECORD)?;
            let flagged = r.u64_list("flagged", MAX_VOUCHERS_PER_REVOCATION_RECORD)?;
            Event::VouchersRevoked(VouchersRevoked {
                tranche_id,
                revoked,
                flagged,
                reason: r.str("reason")?,
                case_id: r.str("case_id")?,
                at: UnixMillis(r.i64("at")?),
            })
        }
        KIND_POOL_DRAWN => {
            let tranche_id = r.str("tranche_id")?;
            let count = r.u32("county_count")? as usize;
            if count > MAX_QUOTAS_PER_RECORD {
                return Err(DecodeError::BadValue("county_count", count as u64));
            }
            let mut added = Vec::with_capacity(count);
            for _ in 0..count {
                added.push((CountyCode(r.u32("county")?), r.u32("added")?));
            }
            Event::PoolDrawn(PoolDrawn {
                tranche_id,
                added,
                amount_fen: r.u64("amount_fen")?,
                rollover: r.bool("rollover")?,
                at: UnixMillis(r.i64("at")?),
            })
        }
        KIND_MERCHANTS_IMPORTED => Event::MerchantsImported(decode_merchant_part(&mut r)?),
        KIND_MERCHANT_STATUS_CHANGED => Event::MerchantStatusChanged(MerchantStatusChanged {
            merchant_id: r.str("merchant_id")?,
            status: read_status(&mut r)?,
            at: UnixMillis(r.i64("at")?),
        }),
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes(r.0.len()));
    }
    Ok(event)
}

// A claim's six strings, each at most `MAX_FIELD_BYTES`, always fit the packed claim.
const _: () = assert!(6 * MAX_FIELD_BYTES <= MAX_CLAIM_TEXT_BYTES);

/// Decodes a claim straight into its packed form: the strings are borrowed from the
/// payload and copied once, into the claim's one allocation.
fn decode_claim(r: &mut Reader<'_>) -> Result<VoucherClaimed, DecodeError> {
    Ok(VoucherClaimed::new(ClaimFields {
        tranche_id: r.str_ref("tranche_id")?,
        voucher_random: r.u64("voucher_random")?,
        county: CountyCode(r.u32("county")?),
        claimed_at: UnixMillis(r.i64("claimed_at")?),
        user_id: r.str_ref("user_id")?,
        id_hash: r.opt_str_ref("id_hash")?,
        phone_hash: r.opt_str_ref("phone_hash")?,
        device_id: r.opt_str_ref("device_id")?,
        request_id: r.str_ref("request_id")?,
        request_fingerprint: r.u128("request_fingerprint")?,
        location: Location {
            lng: f64::from_bits(r.u64("lng")?),
            lat: f64::from_bits(r.u64("lat")?),
            crs: match r.u8("crs")? {
                1 => Crs::Gcj02,
                2 => Crs::Wgs84,
                other => return Err(DecodeError::BadValue("crs", u64::from(other))),
            },
        },
    }))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        assert!(
            s.len() <= MAX_FIELD_BYTES,
            "string field over {MAX_FIELD_BYTES} bytes reached the journal"
        );
        self.0.extend_from_slice(&(s.len() as u16).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
    fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.str_ref(field).map(str::to_owned)
    }
    fn str_ref(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = u16::from_le_bytes(self.array(field)?) as usize;
        if len > MAX_FIELD_BYTES {
            return Err(DecodeError::FieldTooLong(field));
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8(field))
    }
    /// A string field's bytes, skipped unchecked for UTF-8.
    fn skip_str(&mut self, field: &'static str) -> Result<(), DecodeError> {
        let len = u16::from_le_bytes(self.array(field)?) as usize;
        if len > MAX_FIELD_BYTES {
            return Err(DecodeError::FieldTooLong(field));
        }
        self.take(len, field).map(drop)
    }
    fn opt_str_ref(&mut self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.str_ref(field).map(Some),
            other => Err(DecodeError::BadValue(field, u64::from(other))),
        }
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadValue(field, u64::from(other))),
        }
    }
    fn u64_list(&mut self, field: &'static str, max: usize) -> Result<Vec<u64>, DecodeError> {
        let count = self.u32(field)? as usize;
        if count > max {
            return Err(DecodeError::BadValue(field, count as u64));
        }
        (0..count).map(|_| self.u64(field)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_payload_is_its_strings_and_the_fixed_bytes() {
        let with = |tranche_id: &str, id_hash: Option<&str>| {
            encode_claim(&VoucherClaimed::new(ClaimFields {
                tranche_id,
                voucher_random: 1,
                county: CountyCode(420502),
                claimed_at: UnixMillis(0),
                user_id: "",
                id_hash,
                phone_hash: None,
                device_id: None,
                request_id: "",
                request_fingerprint: 0,
                location: Location {
                    lng: 0.0,
                    lat: 0.0,
                    crs: Crs::Gcj02,
                },
            }))
            .len()
        };
        assert_eq!(with("", None), CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS);
        assert_eq!(with("t-1", None), CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + 3);
        // An optional key adds its length's two bytes as well as its own.
        assert_eq!(
            with("", Some("ab")),
            CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + 4
        );
    }

    #[test]
    fn a_claims_identity_keys_are_counted_from_its_front() {
        for event in samples() {
            if let Event::VoucherClaimed(claim) = &event {
                let payload = encode_claim(claim);
                let keys = 1 + [claim.id_hash(), claim.phone_hash(), claim.device_id()]
                    .iter()
                    .filter(|k| k.is_some())
                    .count() as u64;
                assert_eq!(claim_identity_keys(&payload), Some(keys));
                // A front cut short, or a presence byte that is neither 0 nor 1, is no claim.
                let front = 2 + claim.tranche_id().len() + 20 + 2 + claim.user_id().len();
                assert_eq!(claim_identity_keys(&payload[..front]), None);
                let mut bad = payload.clone();
                bad[front] = 2;
                assert_eq!(claim_identity_keys(&bad), None);
            }
        }
    }

    fn samples() -> Vec<Event> {
        vec![
            Event::CampaignDefined(CampaignSpec {
                campaign_id: "yc-2026".into(),
                name: "宜昌消费券".into(),
                budget_fen: 100_000_000,
                refund_policy: RefundPolicy::Prorata,
                rollover: Rollover::NextTranche,
            }),
            Event::TrancheDefined {
                ordinal: 3,
                spec: TrancheSpec {
                    tranche_id: "t-1".into(),
                    campaign_id: "yc-2026".into(),
                    opens_at: UnixMillis(1),
                    closes_at: UnixMillis(2),
                    expires_at: UnixMillis(3),
                    face_value_fen: 2_000,
                    threshold_fen: 10_000,
                    quotas: vec![(CountyCode(420502), 10), (CountyCode(420503), 0)],
                    redeem_anywhere_in_city: true,
                    industries: vec!["零售".into(), "餐饮".into()],
                },
            },
            Event::TrancheControlled {
                tranche_id: "t-1".into(),
                control: TrancheControl::Pause,
                at: UnixMillis(-5),
            },
            Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
                tranche_id: "t-1",
                voucher_random: u64::MAX,
                county: CountyCode(420502),
                claimed_at: UnixMillis(1_700_000_000_000),
                user_id: "u1",
                id_hash: Some(&"ab".repeat(32)),
                phone_hash: None,
                device_id: Some("dev"),
                request_id: "r1",
                request_fingerprint: u128::MAX - 7,
                location: Location {
                    lng: 111.3,
                    lat: 30.7,
                    crs: Crs::Wgs84,
                },
            })),
            Event::VoucherRedeemed(VoucherRedeemed {
                tranche_id: "t-1".into(),
                voucher_random: 7,
                redemption_random: 9,
                merchant_id: "m-1".into(),
                order_id: "o-1".into(),
                order_amount_fen: 12_000,
                discount_fen: 2_000,
                code_step: Some(60_000_001),
                at: UnixMillis(5),
            }),
            Event::RedemptionRefunded(RedemptionRefunded {
                tranche_id: "t-1".into(),
                redemption_random: 9,
                refund_id: "f-1".into(),
                amount_fen: 6_000,
                returned_fen: 1_000,
                restored: false,
                at: UnixMillis(6),
            }),
            Event::TrancheSettled {
                tranche_id: "t-1".into(),
                settlement: Settlement::Expired,
                at: UnixMillis(7),
            },
            Event::VouchersRevoked(VouchersRevoked {
                tranche_id: "t-1".into(),
                revoked: vec![1, 2, 3],
                flagged: vec![u64::MAX],
                reason: "外挂抢券".into(),
                case_id: "case-2026-001".into(),
                at: UnixMillis(8),
            }),
            Event::PoolDrawn(PoolDrawn {
                tranche_id: "t-1".into(),
                added: vec![(CountyCode(420502), 3)],
                amount_fen: 6_000,
                rollover: true,
                at: UnixMillis(9),
            }),
            Event::MerchantsImported(MerchantsImported {
                part: 1,
                parts: 3,
                merchants: vec![merchant(0), merchant(1)],
            }),
            Event::MerchantsImported(MerchantsImported {
                part: 0,
                parts: 1,
                merchants: vec![],
            }),
            Event::MerchantStatusChanged(MerchantStatusChanged {
                merchant_id: "m-1".into(),
                status: MerchantStatus::Suspended,
                at: UnixMillis(1_700_000_000_123),
            }),
        ]
    }

    fn merchant(i: usize) -> Merchant {
        Merchant {
            merchant_id: format!("m-{i}"),
            name: format!("宜昌第{i}号小吃店"),
            county: CountyCode(420502),
            industry: "餐饮".into(),
            platform: "alipay".into(),
            status: if i.is_multiple_of(2) {
                MerchantStatus::Active
            } else {
                MerchantStatus::Suspended
            },
        }
    }

    #[test]
    fn an_import_splits_into_parts_under_the_record_limit() {
        assert!(encode_merchant_import(&[]).is_empty());
        let mut merchants: Vec<Merchant> = (0..5_000).map(merchant).collect();
        // The largest merchant the rules allow still fits a part.
        merchants[17].merchant_id = "x".repeat(64);
        merchants[17].name = "名".repeat(66);
        let payloads = encode_merchant_import(&merchants);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            assert!(payload.len() <= MERCHANT_PART_TARGET_BYTES);
            assert!(payload.len() < crate::wal::MAX_RECORD_PAYLOAD_BYTES);
            match decode(KIND_MERCHANTS_IMPORTED, payload) {
                Ok(Event::MerchantsImported(part)) => {
                    assert_eq!(
                        (part.part as usize, part.parts as usize),
                        (i, payloads.len())
                    );
                    back.extend(part.merchants);
                }
                other => panic!("part {i}: {other:?}"),
            }
        }
        assert_eq!(back, merchants);
    }

    #[test]
    fn round_trip_every_kind() {
        for event in samples() {
            let bytes = encode(&event);
            assert_eq!(decode(kind_of(&event), &bytes), Ok(event));
        }
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        for event in samples() {
            let bytes = encode(&event);
            for cut in 0..bytes.len() {
                assert!(
                    decode(kind_of(&event), &bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                decode(kind_of(&event), &longer),
                Err(DecodeError::TrailingBytes(1))
            );
        }
        assert_eq!(decode(99, &[]), Err(DecodeError::UnknownKind(99)));
    }
}
