//! The JSON contract with partner platforms and operators. The only module
//! with serde types for HTTP bodies.
//!
//! Parsing is strict: unknown fields are refused (a misspelt `request_id`
//! would otherwise silently turn off idempotency), and every refusal names the
//! field and the reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::event::{RefundPolicy, Rollover};
use crate::core::lifecycle::{Ledger, RefundRecord};
use crate::core::{CampaignSpec, Merchant, RowError, UnixMillis};
use crate::dispenser::{CountyView, RedemptionView, RevokeReport, TrancheView, VoucherView};
use crate::wire_time::format_beijing;

/// A field that is missing, ill-typed or out of range, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses JSON into `T`, naming the offending field on failure.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FieldError> {
    // The common case, a valid body, skips the path tracking (a few % of a claim's CPU);
    // only a body that fails is parsed again to name the field.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde reports a missing or unknown field at its parent; name the field itself.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let field = match (named, path.as_str()) {
            (Some(name), "." | "") => name.to_owned(),
            // An unknown field's path already ends with its name.
            (Some(name), p) if p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
            (Some(name), parent) => format!("{parent}.{name}"),
            // "?" is serde_path_to_error's unknown position (e.g. the input ended early).
            (None, "." | "" | "?") => "body".to_owned(),
            (None, p) => p.to_owned(),
        };
        let reason = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("malformed JSON: {message}")
            }
            _ => message,
        };
        FieldError::new(field, reason)
    })?;
    de.end().map_err(|e| {
        FieldError::new("body", format!("malformed JSON: trailing characters ({e})"))
    })?;
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub tranche_id: String,
    pub user_id: String,
    #[serde(default)]
    pub identity: Option<IdentityBody>,
    pub location: LocationBody,
    pub request_id: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentityBody {
    pub id_hash: Option<String>,
    pub phone_hash: Option<String>,
    pub device_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationBody {
    pub lng: f64,
    pub lat: f64,
    pub crs: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrancheBody {
    pub campaign_id: String,
    pub opens_at: String,
    pub closes_at: String,
    pub expires_at: String,
    pub face_value_fen: u64,
    #[serde(default)]
    pub threshold_fen: u64,
    pub quotas: BTreeMap<String, u32>,
    #[serde(default)]
    pub redeem_anywhere_in_city: bool,
    #[serde(default)]
    pub industries: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    pub name: String,
    pub budget_fen: u64,
    #[serde(default)]
    pub refund_policy: Option<String>,
    #[serde(default)]
    pub rollover: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedemptionBody {
    pub voucher_id: Option<String>,
    pub code: Option<String>,
    pub merchant_id: String,
    pub order_id: String,
    pub order_amount_fen: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub amount_fen: u64,
    pub refund_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    pub voucher_ids: Vec<String>,
    #[serde(default)]
    pub identity: RevokeIdentityBody,
    pub reason: String,
    pub case_id: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeIdentityBody {
    #[serde(default)]
    pub user_ids: Vec<String>,
    #[serde(default)]
    pub id_hashes: Vec<String>,
    #[serde(default)]
    pub phone_hashes: Vec<String>,
    #[serde(default)]
    pub device_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrawBody {
    pub vouchers: Option<u64>,
    pub quotas: Option<BTreeMap<String, u32>>,
}

/// Every answer has `outcome`; the other fields appear when they apply.
#[derive(Serialize, Default)]
pub struct OutcomeBody {
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher: Option<VoucherBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub county: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tranche: Option<TrancheBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<CampaignBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redemption: Option<RedemptionBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevokeReportOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeBodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_order_fen: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refundable_fen: Option<u64>,
}

impl OutcomeBody {
    pub fn outcome(outcome: &'static str) -> OutcomeBody {
        OutcomeBody {
            outcome,
            ..OutcomeBody::default()
        }
    }
}

#[derive(Serialize)]
pub struct VoucherBody {
    pub id: String,
    pub tranche_id: String,
    pub campaign_id: String,
    pub county: String,
    pub county_name: String,
    pub face_value_fen: u64,
    pub threshold_fen: u64,
    pub claimed_at: String,
    pub expires_at: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redemption_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationOut>,
}

#[derive(Serialize)]
pub struct RevocationOut {
    pub reason: String,
    pub case_id: String,
}

impl VoucherBody {
    pub fn from_view(view: &VoucherView) -> VoucherBody {
        VoucherBody {
            redemption_id: view.redemption.map(|r| r.encode()),
            revocation: view
                .revocation
                .as_ref()
                .map(|(reason, case_id)| RevocationOut {
                    reason: reason.clone(),
                    case_id: case_id.clone(),
                }),
            id: view.id.encode(),
            tranche_id: view.tranche_id.clone(),
            campaign_id: view.campaign_id.clone(),
            county: view.county.0.to_string(),
            county_name: view.county_name.clone(),
            face_value_fen: view.face_value_fen,
            threshold_fen: view.threshold_fen,
            claimed_at: format_beijing(view.claimed_at),
            expires_at: format_beijing(view.expires_at),
            state: view.state.as_str(),
        }
    }
}

#[derive(Serialize)]
pub struct TrancheBodyOut {
    pub tranche_id: String,
    pub campaign_id: String,
    pub state: &'static str,
    pub paused: bool,
    pub opens_at: String,
    pub closes_at: String,
    pub expires_at: String,
    pub server_time: String,
    pub face_value_fen: u64,
    pub threshold_fen: u64,
    pub quota: u64,
    pub remaining: u64,
    pub counties: Vec<CountyBodyOut>,
}

#[derive(Serialize)]
pub struct CountyBodyOut {
    pub county: String,
    pub name: String,
    pub quota: u32,
    pub remaining: u32,
}

impl TrancheBodyOut {
    pub fn from_view(view: &TrancheView, now: UnixMillis) -> TrancheBodyOut {
        let counties: Vec<CountyBodyOut> = view.counties.iter().map(county_body).collect();
        TrancheBodyOut {
            tranche_id: view.spec.tranche_id.clone(),
            campaign_id: view.spec.campaign_id.clone(),
            state: view.state.as_str(),
            paused: view.paused,
            opens_at: format_beijing(view.spec.opens_at),
            closes_at: format_beijing(view.spec.closes_at),
            expires_at: format_beijing(view.spec.expires_at),
            server_time: format_beijing(now),
            face_value_fen: view.spec.face_value_fen,
            threshold_fen: view.spec.threshold_fen,
            quota: counties.iter().map(|c| u64::from(c.quota)).sum(),
            remaining: counties.iter().map(|c| u64::from(c.remaining)).sum(),
            counties,
        }
    }
}

fn county_body(c: &CountyView) -> CountyBodyOut {
    CountyBodyOut {
        county: c.county.0.to_string(),
        name: c.name.clone(),
        quota: c.quota,
        remaining: c.quota - c.issued,
    }
}

#[derive(Serialize)]
pub struct CampaignBodyOut {
    pub campaign_id: String,
    pub name: String,
    pub budget_fen: u64,
    pub refund_policy: &'static str,
    pub rollover: &'static str,
}

impl CampaignBodyOut {
    pub fn from_spec(spec: &CampaignSpec) -> CampaignBodyOut {
        CampaignBodyOut {
            campaign_id: spec.campaign_id.clone(),
            name: spec.name.clone(),
            budget_fen: spec.budget_fen,
            refund_policy: match spec.refund_policy {
                RefundPolicy::RestoreIfValid => "restore_if_valid",
                RefundPolicy::Prorata => "prorata",
                RefundPolicy::NoRestore => "no_restore",
            },
            rollover: match spec.rollover {
                Rollover::None => "none",
                Rollover::NextTranche => "next_tranche",
            },
        }
    }
}

#[derive(Serialize)]
pub struct RedemptionBodyOut {
    pub id: String,
    pub voucher_id: String,
    pub tranche_id: String,
    pub merchant_id: String,
    pub order_id: String,
    pub order_amount_fen: u64,
    pub discount_fen: u64,
    pub payable_fen: u64,
    pub redeemed_at: String,
    pub refunded_fen: u64,
    pub returned_to_pool_fen: u64,
    pub refunds: Vec<RefundBodyOut>,
}

#[derive(Serialize)]
pub struct RefundBodyOut {
    pub refund_id: String,
    pub amount_fen: u64,
    pub returned_to_pool_fen: u64,
    pub voucher_restored: bool,
    pub refunded_at: String,
}

impl RefundBodyOut {
    pub fn from_record(r: &RefundRecord) -> RefundBodyOut {
        RefundBodyOut {
            refund_id: r.refund_id.to_string(),
            amount_fen: r.amount_fen,
            returned_to_pool_fen: r.returned_fen,
            voucher_restored: r.restored,
            refunded_at: format_beijing(r.at),
        }
    }
}

impl RedemptionBodyOut {
    pub fn from_view(v: &RedemptionView) -> RedemptionBodyOut {
        RedemptionBodyOut {
            id: v.id.encode(),
            voucher_id: v.voucher_id.encode(),
            tranche_id: v.tranche_id.clone(),
            merchant_id: v.merchant_id.clone(),
            order_id: v.order_id.clone(),
            order_amount_fen: v.order_amount_fen,
            discount_fen: v.discount_fen,
            payable_fen: v.payable_fen,
            redeemed_at: format_beijing(v.redeemed_at),
            refunded_fen: v.refunded_fen,
            returned_to_pool_fen: v.returned_to_pool_fen,
            refunds: v.refunds.iter().map(RefundBodyOut::from_record).collect(),
        }
    }
}

/// `budget_fen = unreleased_fen + pool_fen + outstanding_fen + redeemed_fen + revoked_fen`.
#[derive(Serialize)]
pub struct LedgerBodyOut {
    pub campaign_id: String,
    pub budget_fen: u64,
    pub unreleased_fen: u64,
    pub pool_fen: u64,
    pub outstanding_fen: u64,
    pub redeemed_fen: u64,
    pub revoked_fen: u64,
    pub as_of: String,
}

impl LedgerBodyOut {
    pub fn from_ledger(campaign_id: &str, l: &Ledger, now: UnixMillis) -> LedgerBodyOut {
        LedgerBodyOut {
            campaign_id: campaign_id.to_owned(),
            budget_fen: l.budget_fen,
            unreleased_fen: l.unreleased_fen,
            pool_fen: l.pool_fen,
            outstanding_fen: l.outstanding_fen,
            redeemed_fen: l.redeemed_fen,
            revoked_fen: l.revoked_fen,
            as_of: format_beijing(now),
        }
    }
}

#[derive(Serialize)]
pub struct RevokeReportOut {
    pub case_id: String,
    pub revoked_vouchers: u64,
    pub recovered_to_pool_fen: u64,
    pub already_redeemed_vouchers: u64,
    pub already_redeemed_fen: u64,
    pub untouched_vouchers: u64,
    pub unknown_voucher_ids: u64,
}

impl RevokeReportOut {
    pub fn from_report(case_id: &str, r: &RevokeReport) -> RevokeReportOut {
        RevokeReportOut {
            case_id: case_id.to_owned(),
            revoked_vouchers: r.revoked_vouchers,
            recovered_to_pool_fen: r.recovered_to_pool_fen,
            already_redeemed_vouchers: r.already_redeemed_vouchers,
            already_redeemed_fen: r.already_redeemed_fen,
            untouched_vouchers: r.untouched_vouchers,
            unknown_voucher_ids: r.unknown_voucher_ids,
        }
    }
}

#[derive(Serialize)]
pub struct CodeBodyOut {
    pub code: String,
    pub voucher_id: String,
    pub expires_at: String,
}

/// One merchant as answers show it.
#[derive(Serialize)]
pub struct MerchantBody {
    pub merchant_id: String,
    pub name: String,
    pub county: String,
    pub county_name: String,
    pub industry: String,
    pub platform: String,
    pub status: &'static str,
}

impl MerchantBody {
    pub fn new(m: &Merchant, county_name: &str) -> MerchantBody {
        MerchantBody {
            merchant_id: m.merchant_id.clone(),
            name: m.name.clone(),
            county: m.county.0.to_string(),
            county_name: county_name.to_owned(),
            industry: m.industry.clone(),
            platform: m.platform.clone(),
            status: m.status.as_str(),
        }
    }
}

#[derive(Serialize)]
pub struct MerchantOutcomeBody {
    pub outcome: &'static str,
    pub merchant: MerchantBody,
}

/// `imported` or `validated` (a dry run).
#[derive(Serialize)]
pub struct ImportBody {
    pub outcome: &'static str,
    pub created: usize,
    pub unchanged: usize,
    pub rows: usize,
}

#[derive(Clone, Serialize)]
pub struct RowErrorBody {
    pub line: u64,
    pub field: String,
    pub reason: String,
}

impl RowErrorBody {
    pub fn from_error(e: &RowError) -> RowErrorBody {
        RowErrorBody {
            line: e.line,
            field: e.field.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// A refused import: the first errors in line order, and how many in all.
#[derive(Serialize)]
pub struct ImportRejectedBody {
    pub outcome: &'static str,
    pub error: Option<RowErrorBody>,
    pub errors: Vec<RowErrorBody>,
    pub error_count: usize,
    pub errors_truncated: bool,
}

#[derive(Serialize)]
pub struct MerchantListBody {
    pub outcome: &'static str,
    pub merchants: Vec<MerchantBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Serialize)]
pub struct MerchantCountsBody {
    pub outcome: &'static str,
    pub total: u64,
    pub active: u64,
    pub suspended: u64,
    /// Column order of every county's `industries`.
    pub industries: Vec<String>,
    pub counties: Vec<CountyMerchantsBody>,
}

#[derive(Serialize)]
pub struct CountyMerchantsBody {
    pub county: String,
    pub name: String,
    pub total: u64,
    pub active: u64,
    pub suspended: u64,
    pub industries: Vec<IndustryCountBody>,
}

#[derive(Serialize)]
pub struct IndustryCountBody {
    pub industry: String,
    pub active: u64,
    pub suspended: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse_json::<ClaimBody>(body.as_bytes()) {
            Ok(_) => "ok".into(),
            Err(e) => e.field,
        }
    }

    #[test]
    fn errors_name_the_field() {
        let good =
            r#"{"tranche_id":"t","user_id":"u","location":{"lng":1,"lat":2},"request_id":"r"}"#;
        assert_eq!(field_of(good), "ok");
        assert_eq!(
            field_of(r#"{"tranche_id":"t","location":{"lng":1,"lat":2},"request_id":"r"}"#),
            "user_id"
        );
        assert_eq!(
            field_of(r#"{"tranche_id":"t","user_id":"u","location":{"lng":1},"request_id":"r"}"#),
            "location.lat"
        );
        assert_eq!(
            field_of(
                r#"{"tranche_id":"t","user_id":5,"location":{"lng":1,"lat":2},"request_id":"r"}"#
            ),
            "user_id"
        );
        assert_eq!(
            field_of(
                r#"{"tranche_id":"t","user_id":"u","location":{"lng":"x","lat":2},"request_id":"r"}"#
            ),
            "location.lng"
        );
        assert_eq!(
            field_of(
                r#"{"tranche_id":"t","user_id":"u","location":{"lng":1,"lat":2},"request_id":"r","x":1}"#
            ),
            "x"
        );
        assert_eq!(
            field_of(
                r#"{"tranche_id":"t","user_id":"u","identity":{"idhash":"a"},"location":{"lng":1,"lat":2},"request_id":"r"}"#
            ),
            "identity.idhash"
        );
        assert_eq!(field_of(r#"{"tranche_id":"t""#), "body");
        assert_eq!(
            field_of(r#"{"tranche_id":"t","location":{"lng":1,"lat":}}"#),
            "location.lat"
        );
        assert_eq!(field_of("not json"), "body");
        assert_eq!(field_of(&format!("{good} x")), "body");
    }
}
