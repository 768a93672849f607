//! Admin routes: campaigns, tranches, pause and resume. The caller has
//! already checked the bearer token.

use hyper::StatusCode;

use super::App;
use super::respond::{Reply, json};
use super::wire::{
    CampaignBody, CampaignBodyOut, FieldError, OutcomeBody, TrancheBody, TrancheBodyOut, parse_json,
};
use crate::core::catalog::{check_campaign_budget, check_campaign_name, check_object_id};
use crate::core::event::{RefundPolicy, Rollover};
use crate::core::{CampaignSpec, CountyCode, TrancheControl, TrancheSpec};
use crate::dispenser::{AdminError, Defined, Dispenser, Durability};
use crate::wire_time::parse_rfc3339;

pub async fn put_campaign(app: &App, campaign_id: &str, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let parsed = parse_json::<CampaignBody>(body).and_then(|b| {
        check_object_id(campaign_id).map_err(|r| FieldError::new("campaign_id", r))?;
        check_campaign_name(&b.name).map_err(|r| FieldError::new("name", r))?;
        check_campaign_budget(b.budget_fen).map_err(|r| FieldError::new("budget_fen", r))?;
        let refund_policy = match b.refund_policy.as_deref() {
            None | Some("restore_if_valid") => RefundPolicy::RestoreIfValid,
            Some("prorata") => RefundPolicy::Prorata,
            Some("no_restore") => RefundPolicy::NoRestore,
            Some(_) => {
                return Err(FieldError::new(
                    "refund_policy",
                    "must be restore_if_valid, prorata or no_restore",
                ));
            }
        };
        let rollover = match b.rollover.as_deref() {
            None | Some("none") => Rollover::None,
            Some("next_tranche") => Rollover::NextTranche,
            Some(_) => return Err(FieldError::new("rollover", "must be none or next_tranche")),
        };
        Ok(CampaignSpec {
            campaign_id: campaign_id.to_owned(),
            name: b.name,
            budget_fen: b.budget_fen,
            refund_policy,
            rollover,
        })
    });
    let spec = match parsed {
        Ok(spec) => spec,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, "invalid_request", vec![e]),
    };
    let out = CampaignBodyOut::from_spec(&spec);
    match dispenser.define_campaign(spec) {
        Ok((defined, durability)) => {
            let mut body = defined_body(defined);
            body.campaign = Some(out);
            finish(app, defined, durability, body).await
        }
        Err(e) => admin_error(app, e),
    }
}

pub async fn put_tranche(app: &App, tranche_id: &str, body: &[u8]) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let body = match parse_json::<TrancheBody>(body) {
        Ok(b) => b,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, "invalid_request", vec![e]),
    };
    let spec = match tranche_spec(dispenser, tranche_id, body) {
        Ok(spec) => spec,
        Err(errors) => return invalid(StatusCode::UNPROCESSABLE_ENTITY, "invalid_tranche", errors),
    };
    let now = app.now();
    match dispenser.define_tranche(spec, now) {
        Ok((defined, durability)) => {
            let mut body = defined_body(defined);
            // The view shows counts of claims that may have come after the definition and
            // not be durable yet: the answer waits for them too.
            if let Some((view, view_durability)) = dispenser.tranche_for_reader(tranche_id, now) {
                body.tranche = Some(TrancheBodyOut::from_view(&view, now));
                if let Err(reply) = super::shown_once_durable(app, view_durability).await {
                    return reply;
                }
            }
            finish(app, defined, durability, body).await
        }
        Err(e) => admin_error(app, e),
    }
}

pub async fn control(app: &App, tranche_id: &str, control: TrancheControl) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let now = app.now();
    match dispenser.control_tranche(tranche_id, control, now) {
        Ok((view, durability)) => {
            if !durability.wait().await {
                return super::unavailable(app);
            }
            let mut body = OutcomeBody::outcome(match control {
                TrancheControl::Pause => "paused",
                TrancheControl::Resume => "resumed",
            });
            body.tranche = Some(TrancheBodyOut::from_view(&view, now));
            json(StatusCode::OK, &body)
        }
        Err(e) => admin_error(app, e),
    }
}

fn tranche_spec(
    dispenser: &Dispenser,
    tranche_id: &str,
    body: TrancheBody,
) -> Result<TrancheSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(r) = check_object_id(tranche_id) {
        errors.push(FieldError::new("tranche_id", r));
    }
    if let Err(r) = check_object_id(&body.campaign_id) {
        errors.push(FieldError::new("campaign_id", r));
    }
    let mut time = |field: &str, text: &str| match parse_rfc3339(text) {
        Ok(t) => Some(t),
        Err(r) => {
            errors.push(FieldError::new(field, r));
            None
        }
    };
    let opens_at = time("opens_at", &body.opens_at);
    let closes_at = time("closes_at", &body.closes_at);
    let expires_at = time("expires_at", &body.expires_at);
    let mut quotas = Vec::new();
    for (code, quota) in &body.quotas {
        match code.parse::<u32>() {
            Ok(c) if dispenser.counties().name(CountyCode(c)).is_some() => {
                quotas.push((CountyCode(c), *quota))
            }
            _ => errors.push(FieldError::new(
                format!("quotas.{code}"),
                "not a configured county code",
            )),
        }
    }
    quotas.sort_by_key(|(c, _)| *c);
    let (Some(opens_at), Some(closes_at), Some(expires_at)) = (opens_at, closes_at, expires_at)
    else {
        return Err(errors);
    };
    let spec = TrancheSpec {
        tranche_id: tranche_id.to_owned(),
        campaign_id: body.campaign_id,
        opens_at,
        closes_at,
        expires_at,
        face_value_fen: body.face_value_fen,
        threshold_fen: body.threshold_fen,
        quotas,
        redeem_anywhere_in_city: body.redeem_anywhere_in_city,
        industries: crate::config::sorted_unique(body.industries),
    };
    if let Err(spec_errors) = spec.validate() {
        errors.extend(
            spec_errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.reason)),
        );
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

fn defined_body(defined: Defined) -> OutcomeBody {
    OutcomeBody::outcome(match defined {
        Defined::Created => "created",
        Defined::Replaced => "replaced",
        Defined::Unchanged => "unchanged",
    })
}

async fn finish(app: &App, defined: Defined, durability: Durability, body: OutcomeBody) -> Reply {
    if !durability.wait().await {
        return super::unavailable(app);
    }
    let status = if defined == Defined::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &body)
}

fn invalid(status: StatusCode, outcome: &'static str, errors: Vec<FieldError>) -> Reply {
    let mut body = OutcomeBody::outcome(outcome);
    body.error = errors.first().cloned();
    body.errors = Some(errors);
    json(status, &body)
}

pub(super) fn admin_error(app: &App, error: AdminError) -> Reply {
    let (status, outcome, field) = match error {
        AdminError::UnknownCampaign => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_tranche",
            Some((
                "campaign_id",
                "no such campaign; create it with PUT /admin/v1/campaigns/{id}",
            )),
        ),
        AdminError::UnknownTranche => (StatusCode::NOT_FOUND, "unknown_tranche", None),
        AdminError::TooManyCampaigns => (
            StatusCode::CONFLICT,
            "limit_reached",
            Some(("campaign_id", "the campaign limit is reached")),
        ),
        AdminError::TooManyTranches => (
            StatusCode::CONFLICT,
            "limit_reached",
            Some(("tranche_id", "the tranche limit is reached")),
        ),
        AdminError::AlreadyOpened => (StatusCode::CONFLICT, "already_opened", None),
        AdminError::RefundPolicyLocked => (
            StatusCode::CONFLICT,
            "refund_policy_locked",
            Some((
                "refund_policy",
                "cannot change once the campaign has tranches: refunds already made would be settled under another policy",
            )),
        ),
        AdminError::Closed => (StatusCode::CONFLICT, "closed", None),
        AdminError::BudgetExceeded {
            available_fen,
            needed_fen,
        } => {
            let mut body = OutcomeBody::outcome("budget_exceeded");
            body.error = Some(FieldError::new(
                "quotas",
                format!(
                    "the vouchers are worth {needed_fen} fen; the campaign has {available_fen} fen unreleased"
                ),
            ));
            return json(StatusCode::UNPROCESSABLE_ENTITY, &body);
        }
        AdminError::BudgetBelowReleased { released_fen } => {
            let mut body = OutcomeBody::outcome("invalid_campaign");
            body.error = Some(FieldError::new(
                "budget_fen",
                format!("must be at least the {released_fen} fen its tranches already released"),
            ));
            return json(StatusCode::UNPROCESSABLE_ENTITY, &body);
        }
        AdminError::PoolTooSmall {
            pool_fen,
            needed_fen,
        } => {
            let mut body = OutcomeBody::outcome("pool_too_small");
            body.error = Some(FieldError::new(
                "vouchers",
                format!("the draw needs {needed_fen} fen; the pool holds {pool_fen} fen"),
            ));
            return json(StatusCode::CONFLICT, &body);
        }
        AdminError::NothingToDraw => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_draw",
            Some(("vouchers", "the draw adds no vouchers")),
        ),
        AdminError::CountyNotInTranche => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some(("quotas", "a county the tranche has no quota for")),
        ),
        AdminError::DrewFromPool => (
            StatusCode::CONFLICT,
            "drew_from_pool",
            Some((
                "tranche_id",
                "vouchers were drawn from the pool into this tranche; a new definition would drop them, so it can no longer be replaced",
            )),
        ),
        AdminError::QuotaOverflow { county } => {
            let mut body = OutcomeBody::outcome("invalid_request");
            body.error = Some(FieldError::new(
                format!("quotas.{}", county.0),
                format!("the draw would take this county's quota past {}", u32::MAX),
            ));
            return json(StatusCode::UNPROCESSABLE_ENTITY, &body);
        }
        AdminError::Unavailable(crate::wal::AppendError::QueueFull { .. }) => {
            return super::overloaded();
        }
        AdminError::Unavailable(_) => return super::unavailable(app),
    };
    let mut body = OutcomeBody::outcome(outcome);
    body.error = field.map(|(f, r)| FieldError::new(f, r));
    json(status, &body)
}
