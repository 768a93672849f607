//! Routes for a voucher's life after the claim: redemption (核销), dynamic
//! codes, refunds, redemption lookups (public); the ledger, revocation and
//! pool draws (admin).

use hyper::StatusCode;

use super::App;
use super::respond::{Reply, json};
use super::wire::{
    CampaignBodyOut, CodeBodyOut, DrawBody, FieldError, LedgerBodyOut, OutcomeBody, RedemptionBody,
    RedemptionBodyOut, RefundBody, RefundBodyOut, RevokeBody, RevokeReportOut, TrancheBodyOut,
    parse_json,
};
use crate::core::catalog::check_object_id;
use crate::core::code;
use crate::core::identity::IdentityKeyKind;
use crate::core::lifecycle::{RedeemRefusal, RefundRefusal, VoucherState};
use crate::core::{CountyCode, RedemptionId, VoucherId};
use crate::dispenser::{
    MAX_REVOKE_TARGETS, PoolRequest, RedeemInput, RedeemOutcome, RefundOutcome, RevokeTargets,
};
use crate::wire_time::format_beijing;

/// Longest refund ID, order ID, reason or case ID accepted.
pub const MAX_REFERENCE_BYTES: usize = 64;
pub const MAX_REASON_BYTES: usize = 500;
/// Largest order amount accepted: one million yuan.
pub const MAX_ORDER_AMOUNT_FEN: u64 = 100_000_000;
pub use crate::core::lifecycle::MAX_DRAW_VOUCHERS;

fn invalid(error: FieldError) -> Reply {
    let mut body = OutcomeBody::outcome("invalid_request");
    body.error = Some(error);
    json(StatusCode::BAD_REQUEST, &body)
}

fn outcome(status: StatusCode, outcome: &'static str) -> Reply {
    json(status, &OutcomeBody::outcome(outcome))
}

/// Printable ASCII without spaces, 1 to `max` bytes (IDs that travel in URLs and logs).
pub fn check_reference(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// `GET /v1/vouchers/{id}/code`: a code valid for 30 to 60 seconds.
pub async fn code(app: &App, id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let now = app.now();
    let Some(id) = VoucherId::parse(id) else {
        return outcome(StatusCode::NOT_FOUND, "unknown_voucher");
    };
    let Some((view, durability)) = dispenser.voucher(id, now) else {
        return outcome(StatusCode::NOT_FOUND, "unknown_voucher");
    };
    if let Err(reply) = super::shown_once_durable(app, durability).await {
        return reply;
    }
    if !view.state.can_show_code() {
        let mut body = OutcomeBody::outcome(match view.state {
            VoucherState::Redeemed => "already_redeemed",
            VoucherState::Revoked => "voucher_revoked",
            _ => "voucher_expired",
        });
        body.voucher = Some(super::wire::VoucherBody::from_view(&view));
        return json(StatusCode::CONFLICT, &body);
    }
    let (code, expires_at) = code::issue(app.code_secret.bytes(), id, now);
    let mut body = OutcomeBody::outcome("code");
    body.code = Some(CodeBodyOut {
        code,
        voucher_id: id.encode(),
        expires_at: format_beijing(expires_at.min(view.expires_at)),
    });
    json(StatusCode::OK, &body)
}

/// `GET /v1/redemptions/{id}`.
pub async fn redemption(app: &App, id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let Some((view, durability)) = RedemptionId::parse(id).and_then(|id| dispenser.redemption(id))
    else {
        return outcome(StatusCode::NOT_FOUND, "unknown_redemption");
    };
    if let Err(reply) = super::shown_once_durable(app, durability).await {
        return reply;
    }
    let mut body = OutcomeBody::outcome("found");
    body.redemption = Some(RedemptionBodyOut::from_view(&view));
    json(StatusCode::OK, &body)
}

/// `POST /v1/redemptions/{id}/refund`.
pub async fn refund(app: &App, id: &str, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let parsed = parse_json::<RefundBody>(body).and_then(|b| {
        check_reference("refund_id", &b.refund_id, MAX_REFERENCE_BYTES)?;
        if b.amount_fen == 0 || b.amount_fen > MAX_ORDER_AMOUNT_FEN {
            return Err(FieldError::new(
                "amount_fen",
                format!("must be between 1 and {MAX_ORDER_AMOUNT_FEN}"),
            ));
        }
        Ok(b)
    });
    let b = match parsed {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    let Some(id) = RedemptionId::parse(id) else {
        return outcome(StatusCode::NOT_FOUND, "unknown_redemption");
    };
    let (status, word, view, record, durability) =
        match dispenser.refund(id, &b.refund_id, b.amount_fen, app.now()) {
            RefundOutcome::Refunded(v, r, d) => (StatusCode::CREATED, "refunded", v, r, d),
            RefundOutcome::Replayed(v, r, d) => (StatusCode::OK, "refunded", v, r, d),
            RefundOutcome::UnknownRedemption => {
                return outcome(StatusCode::NOT_FOUND, "unknown_redemption");
            }
            RefundOutcome::Refused(refusal, durability) => {
                // The refusal may cite refunds or a flag not yet synced.
                if !durability.wait().await {
                    return super::unavailable(app);
                }
                return refund_refused(refusal);
            }
            RefundOutcome::Unavailable(crate::wal::AppendError::QueueFull { .. }) => {
                return super::overloaded();
            }
            RefundOutcome::Unavailable(_) => return super::unavailable(app),
        };
    if !durability.wait().await {
        return super::unavailable(app);
    }
    let mut body = OutcomeBody::outcome(word);
    if status == StatusCode::OK {
        body.replayed = Some(true);
    }
    body.refund = Some(RefundBodyOut::from_record(&record));
    body.redemption = Some(RedemptionBodyOut::from_view(&view));
    json(status, &body)
}

fn refund_refused(refusal: RefundRefusal) -> Reply {
    match refusal {
        RefundRefusal::RefundIdReused => {
            outcome(StatusCode::UNPROCESSABLE_ENTITY, "refund_id_reused")
        }
        RefundRefusal::UnderInvestigation => outcome(StatusCode::CONFLICT, "under_investigation"),
        RefundRefusal::TooManyRefunds => outcome(StatusCode::CONFLICT, "too_many_refunds"),
        RefundRefusal::ExceedsOrder { refundable_fen } => {
            let mut body = OutcomeBody::outcome("exceeds_order");
            body.refundable_fen = Some(refundable_fen);
            body.error = Some(FieldError::new(
                "amount_fen",
                format!("at most {refundable_fen} fen of the order is left to refund"),
            ));
            json(StatusCode::UNPROCESSABLE_ENTITY, &body)
        }
    }
}

/// `GET /admin/v1/campaigns/{id}/ledger`.
pub async fn ledger(app: &App, campaign_id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let (campaign, ledger, durability) = match dispenser.ledger(campaign_id) {
        Ok(Some(found)) => found,
        Ok(None) => return outcome(StatusCode::NOT_FOUND, "unknown_campaign"),
        Err(crate::wal::AppendError::QueueFull { .. }) => return super::overloaded(),
        Err(_) => return super::unavailable(app),
    };
    // Only money that is durable is shown.
    if !durability.wait().await {
        return super::unavailable(app);
    }
    let mut body = OutcomeBody::outcome("ledger");
    body.ledger = Some(LedgerBodyOut::from_ledger(campaign_id, &ledger, app.now()));
    body.campaign = Some(CampaignBodyOut::from_spec(&campaign));
    json(StatusCode::OK, &body)
}

/// `POST /admin/v1/vouchers:revoke`.
pub async fn revoke(app: &App, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let b = match parse_json::<RevokeBody>(body).and_then(revoke_targets) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    let (targets, reason, case_id) = b;
    match dispenser.revoke(&targets, &reason, &case_id, app.now()) {
        Ok((report, durability)) => {
            if !durability.wait().await {
                return super::unavailable(app);
            }
            let mut body = OutcomeBody::outcome("revoked");
            body.revocation = Some(RevokeReportOut::from_report(&case_id, &report));
            json(StatusCode::OK, &body)
        }
        Err(e) => super::admin::admin_error(app, e),
    }
}

fn revoke_targets(b: RevokeBody) -> Result<(RevokeTargets, String, String), FieldError> {
    check_reference("case_id", &b.case_id, MAX_REFERENCE_BYTES)?;
    if b.reason.trim().is_empty()
        || b.reason.len() > MAX_REASON_BYTES
        || b.reason.chars().any(char::is_control)
    {
        return Err(FieldError::new(
            "reason",
            format!("must be 1 to {MAX_REASON_BYTES} bytes of text"),
        ));
    }
    let mut targets = RevokeTargets::default();
    for (i, text) in b.voucher_ids.iter().enumerate() {
        let id = VoucherId::parse(text)
            .ok_or_else(|| FieldError::new(format!("voucher_ids[{i}]"), "not a voucher ID"))?;
        targets.voucher_ids.push(id);
    }
    let identity = b.identity;
    for (field, kind, values) in [
        (
            "identity.user_ids",
            IdentityKeyKind::UserId,
            identity.user_ids,
        ),
        (
            "identity.id_hashes",
            IdentityKeyKind::IdHash,
            identity.id_hashes,
        ),
        (
            "identity.phone_hashes",
            IdentityKeyKind::PhoneHash,
            identity.phone_hashes,
        ),
        (
            "identity.device_ids",
            IdentityKeyKind::DeviceId,
            identity.device_ids,
        ),
    ] {
        for (i, mut value) in values.into_iter().enumerate() {
            check_reference(
                &format!("{field}[{i}]"),
                &value,
                super::claims::MAX_HASH_HEX_CHARS.max(super::claims::MAX_DEVICE_ID_BYTES),
            )?;
            if matches!(kind, IdentityKeyKind::IdHash | IdentityKeyKind::PhoneHash) {
                // Claims store hashes in lowercase; match them the same way.
                value.make_ascii_lowercase();
            }
            targets.identity_keys.push((kind, value));
        }
    }
    let count = targets.voucher_ids.len() + targets.identity_keys.len();
    if count == 0 {
        return Err(FieldError::new(
            "voucher_ids",
            "name at least one voucher ID or identity key",
        ));
    }
    if count > MAX_REVOKE_TARGETS {
        return Err(FieldError::new(
            "voucher_ids",
            format!("at most {MAX_REVOKE_TARGETS} vouchers and keys per request"),
        ));
    }
    Ok((targets, b.reason, b.case_id))
}

/// `POST /admin/v1/tranches/{id}/draw`: extra vouchers paid from the campaign pool.
pub async fn draw(app: &App, tranche_id: &str, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let parsed = parse_json::<DrawBody>(body).and_then(|b| match (b.vouchers, b.quotas) {
        (Some(n), None) if n > 0 && n <= MAX_DRAW_VOUCHERS => Ok(PoolRequest::Vouchers(n)),
        (Some(_), None) => Err(FieldError::new(
            "vouchers",
            format!("must be between 1 and {MAX_DRAW_VOUCHERS}"),
        )),
        (None, Some(q)) => {
            let mut list: Vec<(CountyCode, u32)> = Vec::new();
            let mut total = 0u64;
            for (code, n) in q {
                let field = || format!("quotas.{code}");
                let c = code
                    .parse::<u32>()
                    .map_err(|_| FieldError::new(field(), "not a county code"))?;
                if list.iter().any(|(seen, _)| seen.0 == c) {
                    return Err(FieldError::new(field(), "names a county already listed"));
                }
                total += u64::from(n);
                if total > MAX_DRAW_VOUCHERS {
                    return Err(FieldError::new(
                        field(),
                        format!("a draw adds at most {MAX_DRAW_VOUCHERS} vouchers in all"),
                    ));
                }
                list.push((CountyCode(c), n));
            }
            Ok(PoolRequest::PerCounty(list))
        }
        _ => Err(FieldError::new(
            "vouchers",
            "give exactly one of vouchers or quotas",
        )),
    });
    let request = match parsed {
        Ok(r) => r,
        Err(e) => return invalid(e),
    };
    if let Err(reason) = check_object_id(tranche_id) {
        return invalid(FieldError::new("tranche_id", reason));
    }
    let now = app.now();
    match dispenser.draw_pool(tranche_id, request, now) {
        Ok((view, durability)) => {
            if !durability.wait().await {
                return super::unavailable(app);
            }
            let mut body = OutcomeBody::outcome("drawn");
            body.tranche = Some(TrancheBodyOut::from_view(&view, now));
            json(StatusCode::OK, &body)
        }
        Err(e) => super::admin::admin_error(app, e),
    }
}

/// `POST /v1/redemptions`: use a voucher at a merchant (核销).
pub async fn redeem(app: &App, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let b = match parse_json::<RedemptionBody>(body) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    if let Err(e) = check_reference("merchant_id", &b.merchant_id, MAX_REFERENCE_BYTES)
        .and_then(|()| check_reference("order_id", &b.order_id, MAX_REFERENCE_BYTES))
    {
        return invalid(e);
    }
    if b.order_amount_fen == 0 || b.order_amount_fen > MAX_ORDER_AMOUNT_FEN {
        return invalid(FieldError::new(
            "order_amount_fen",
            format!("must be between 1 and {MAX_ORDER_AMOUNT_FEN}"),
        ));
    }
    let now = app.now();
    let (voucher_id, code_step) = match (b.voucher_id.as_deref(), b.code.as_deref()) {
        (Some(id), None) => match VoucherId::parse(id) {
            Some(id) => (id, None),
            None => return outcome(StatusCode::NOT_FOUND, "unknown_voucher"),
        },
        (None, Some(text)) => match code::verify(app.code_secret.bytes(), text, now) {
            Ok((id, step)) => (id, Some(step)),
            Err(code::CodeError::Malformed) => {
                return invalid(FieldError::new("code", "not a redemption code"));
            }
            Err(code::CodeError::InvalidOrExpired) => {
                return outcome(StatusCode::UNPROCESSABLE_ENTITY, "invalid_code");
            }
        },
        _ => {
            return invalid(FieldError::new(
                "voucher_id",
                "give exactly one of voucher_id or code",
            ));
        }
    };
    let input = RedeemInput {
        voucher_id,
        code_step,
        merchant_id: &b.merchant_id,
        order_id: &b.order_id,
        order_amount_fen: b.order_amount_fen,
        entropy: rand::random(),
    };
    let (status, view, durability) = match dispenser.redeem(&input, now) {
        RedeemOutcome::Redeemed(v, d) => (StatusCode::CREATED, v, d),
        RedeemOutcome::Replayed(v, d) => (StatusCode::OK, v, d),
        RedeemOutcome::OrderIdReused(durability) => {
            // The earlier redemption of this order may not be synced yet.
            if !durability.wait().await {
                return super::unavailable(app);
            }
            return outcome(StatusCode::UNPROCESSABLE_ENTITY, "order_id_reused");
        }
        RedeemOutcome::UnknownVoucher => return outcome(StatusCode::NOT_FOUND, "unknown_voucher"),
        RedeemOutcome::UnknownMerchant => {
            return outcome(StatusCode::NOT_FOUND, "unknown_merchant");
        }
        RedeemOutcome::Refused(refusal, durability) => {
            // E.g. already_redeemed: the redemption it cites may not be synced yet.
            if !durability.wait().await {
                return super::unavailable(app);
            }
            return redeem_refused(refusal);
        }
        RedeemOutcome::Unavailable(crate::wal::AppendError::QueueFull { .. }) => {
            return super::overloaded();
        }
        RedeemOutcome::Unavailable(_) => return super::unavailable(app),
    };
    if !durability.wait().await {
        return super::unavailable(app);
    }
    let mut body = OutcomeBody::outcome("redeemed");
    if status == StatusCode::OK {
        body.replayed = Some(true);
    }
    body.redemption = Some(RedemptionBodyOut::from_view(&view));
    json(status, &body)
}

fn redeem_refused(refusal: RedeemRefusal) -> Reply {
    let (status, word) = match refusal {
        RedeemRefusal::AlreadyRedeemed => (StatusCode::CONFLICT, "already_redeemed"),
        RedeemRefusal::VoucherRevoked => (StatusCode::GONE, "voucher_revoked"),
        RedeemRefusal::VoucherExpired => (StatusCode::GONE, "voucher_expired"),
        RedeemRefusal::CodeReplayed => (StatusCode::CONFLICT, "code_replayed"),
        RedeemRefusal::MerchantSuspended => (StatusCode::FORBIDDEN, "merchant_suspended"),
        RedeemRefusal::CountyMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "county_mismatch"),
        RedeemRefusal::IndustryNotAllowed => {
            (StatusCode::UNPROCESSABLE_ENTITY, "industry_not_allowed")
        }
        RedeemRefusal::BelowThreshold { minimum_order_fen } => {
            let mut body = OutcomeBody::outcome("below_threshold");
            body.minimum_order_fen = Some(minimum_order_fen);
            return json(StatusCode::UNPROCESSABLE_ENTITY, &body);
        }
    };
    outcome(status, word)
}
