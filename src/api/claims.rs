//! `POST /v1/claims`: validate the body, let the dispenser decide, wait for the
//! WAL when a voucher is involved, answer.

use std::time::Instant;

use hyper::StatusCode;
use xxhash_rust::xxh3::Xxh3;

use super::App;
use super::respond::{Reply, json};
use super::wire::{ClaimBody, FieldError, OutcomeBody, VoucherBody, parse_json};
use crate::core::catalog::check_object_id;
use crate::core::{Crs, IdentityKeys, Location, Refusal};
use crate::dispenser::{ClaimInput, ClaimOutcome};
use crate::telemetry::ClaimOutcomeLabel as Label;
use crate::wal::AppendError;
use crate::wire_time::format_beijing;

pub const MAX_USER_ID_BYTES: usize = 64;
pub const MAX_DEVICE_ID_BYTES: usize = 128;
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Hashes are hex digests: MD5 (32) up to SHA-512 (128).
pub const MIN_HASH_HEX_CHARS: usize = 32;
pub const MAX_HASH_HEX_CHARS: usize = 128;

/// A claim body that passed validation, with hashes normalised to lowercase.
pub struct ValidClaim {
    pub tranche_id: String,
    pub user_id: String,
    pub id_hash: Option<String>,
    pub phone_hash: Option<String>,
    pub device_id: Option<String>,
    pub request_id: String,
    pub location: Location,
}

pub async fn handle(app: &App, body: &[u8]) -> Reply {
    let started = Instant::now();
    let (label, reply) = decide(app, body).await;
    app.telemetry.claim_finished(label, started.elapsed());
    reply
}

async fn decide(app: &App, body: &[u8]) -> (Label, Reply) {
    let claim = match parse_claim(body) {
        Ok(c) => c,
        Err(error) => return (Label::InvalidRequest, invalid(error)),
    };
    let Some(dispenser) = app.dispenser() else {
        return (Label::Unavailable, super::unavailable(app));
    };
    let Ok(_permit) = app.claim_permits.try_acquire() else {
        return (Label::Overloaded, super::overloaded());
    };
    let input = ClaimInput {
        tranche_id: &claim.tranche_id,
        identity: IdentityKeys {
            user_id: &claim.user_id,
            id_hash: claim.id_hash.as_deref(),
            phone_hash: claim.phone_hash.as_deref(),
            device_id: claim.device_id.as_deref(),
        },
        request_id: &claim.request_id,
        request_fingerprint: fingerprint(&claim),
        location: claim.location,
        entropy: rand::random(),
    };
    let now = app.now();
    let (label, status, view, durability) = match dispenser.claim(&input, now) {
        ClaimOutcome::Claimed(view, d) => (Label::Claimed, StatusCode::CREATED, view, d),
        ClaimOutcome::Replayed(view, d) => (Label::Replayed, StatusCode::OK, view, d),
        ClaimOutcome::AlreadyClaimed(view, d) => {
            (Label::AlreadyClaimed, StatusCode::CONFLICT, view, d)
        }
        ClaimOutcome::RequestIdReused(durability) => {
            if !durability.wait().await {
                return (Label::Unavailable, super::unavailable(app));
            }
            return refused(Refusal::RequestIdReused, now);
        }
        ClaimOutcome::Refused(refusal) => return refused(refusal, now),
        ClaimOutcome::UnknownTranche => {
            return (
                Label::UnknownTranche,
                json(
                    StatusCode::NOT_FOUND,
                    &OutcomeBody::outcome("unknown_tranche"),
                ),
            );
        }
        ClaimOutcome::Unavailable(AppendError::QueueFull { .. }) => {
            return (Label::Overloaded, super::overloaded());
        }
        ClaimOutcome::Unavailable(_) => return (Label::Unavailable, super::unavailable(app)),
    };
    if !durability.wait().await {
        // The WAL stopped before this answer became durable: acknowledge nothing.
        return (Label::Unavailable, super::unavailable(app));
    }
    let mut out = OutcomeBody::outcome(match label {
        Label::AlreadyClaimed => "already_claimed",
        _ => "claimed",
    });
    out.voucher = Some(VoucherBody::from_view(&view));
    if label == Label::Replayed {
        out.replayed = Some(true);
    }
    (label, json(status, &out))
}

fn refused(refusal: Refusal, now: crate::core::UnixMillis) -> (Label, Reply) {
    let (label, status, mut body) = match refusal {
        Refusal::RequestIdReused => (
            Label::RequestIdReused,
            StatusCode::UNPROCESSABLE_ENTITY,
            OutcomeBody::outcome("request_id_reused"),
        ),
        Refusal::NotOpen { opens_at } => {
            let mut body = OutcomeBody::outcome("not_open");
            body.opens_at = Some(format_beijing(opens_at));
            body.server_time = Some(format_beijing(now));
            (Label::NotOpen, StatusCode::TOO_EARLY, body)
        }
        Refusal::Closed => (
            Label::Closed,
            StatusCode::GONE,
            OutcomeBody::outcome("closed"),
        ),
        Refusal::Paused => (
            Label::Paused,
            StatusCode::LOCKED,
            OutcomeBody::outcome("paused"),
        ),
        Refusal::OutsideArea => (
            Label::OutsideArea,
            StatusCode::UNPROCESSABLE_ENTITY,
            OutcomeBody::outcome("outside_area"),
        ),
        Refusal::CountyNotInTranche { county } => {
            let mut body = OutcomeBody::outcome("outside_area");
            body.county = Some(county.0.to_string());
            body.message =
                Some("this tranche has no vouchers for the county at this location".into());
            (Label::OutsideArea, StatusCode::UNPROCESSABLE_ENTITY, body)
        }
        Refusal::SoldOut => (
            Label::SoldOut,
            StatusCode::GONE,
            OutcomeBody::outcome("sold_out"),
        ),
    };
    if body.server_time.is_none() && label == Label::Closed {
        body.server_time = Some(format_beijing(now));
    }
    (label, json(status, &body))
}

fn invalid(error: FieldError) -> Reply {
    let mut body = OutcomeBody::outcome("invalid_request");
    body.error = Some(error);
    json(StatusCode::BAD_REQUEST, &body)
}

/// Parses and validates a claim body. Public for the fuzz target.
pub fn parse_claim(body: &[u8]) -> Result<ValidClaim, FieldError> {
    parse_json::<ClaimBody>(body).and_then(validate)
}

fn validate(body: ClaimBody) -> Result<ValidClaim, FieldError> {
    check_object_id(&body.tranche_id).map_err(|r| FieldError::new("tranche_id", r))?;
    check_token("user_id", &body.user_id, MAX_USER_ID_BYTES)?;
    check_not_raw_personal_number("user_id", &body.user_id)?;
    check_token("request_id", &body.request_id, MAX_REQUEST_ID_BYTES)?;
    let identity = body.identity.unwrap_or_default();
    let id_hash = identity
        .id_hash
        .map(|h| check_hash("identity.id_hash", h))
        .transpose()?;
    let phone_hash = identity
        .phone_hash
        .map(|h| check_hash("identity.phone_hash", h))
        .transpose()?;
    if let Some(device) = &identity.device_id {
        check_token("identity.device_id", device, MAX_DEVICE_ID_BYTES)?;
    }
    let location = &body.location;
    if !location.lng.is_finite() || !(-180.0..=180.0).contains(&location.lng) {
        return Err(FieldError::new(
            "location.lng",
            "must be a longitude between -180 and 180",
        ));
    }
    if !location.lat.is_finite() || !(-90.0..=90.0).contains(&location.lat) {
        return Err(FieldError::new(
            "location.lat",
            "must be a latitude between -90 and 90",
        ));
    }
    let crs = match location.crs.as_deref() {
        None | Some("gcj02") => Crs::Gcj02,
        Some("wgs84") => Crs::Wgs84,
        Some(_) => {
            return Err(FieldError::new(
                "location.crs",
                "must be \"gcj02\" or \"wgs84\"",
            ));
        }
    };
    Ok(ValidClaim {
        location: Location {
            lng: location.lng,
            lat: location.lat,
            crs,
        },
        tranche_id: body.tranche_id,
        user_id: body.user_id,
        id_hash,
        phone_hash,
        device_id: identity.device_id,
        request_id: body.request_id,
    })
}

/// Printable ASCII without spaces, 1 to `max` bytes.
fn check_token(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Raw ID card and phone numbers must never be sent or stored; only hashes.
fn check_not_raw_personal_number(field: &str, value: &str) -> Result<(), FieldError> {
    let b = value.as_bytes();
    let mainland_mobile = b.len() == 11 && b[0] == b'1' && b.iter().all(u8::is_ascii_digit);
    let resident_id = b.len() == 18
        && b[..17].iter().all(u8::is_ascii_digit)
        && (b[17].is_ascii_digit() || b[17] == b'X' || b[17] == b'x');
    if mainland_mobile || resident_id {
        return Err(FieldError::new(
            field,
            "looks like a raw phone or ID card number; send a platform user ID and put hashes in identity",
        ));
    }
    Ok(())
}

/// A hex digest, normalised to lowercase so that case never splits one person in two.
fn check_hash(field: &str, mut value: String) -> Result<String, FieldError> {
    if value.len() < MIN_HASH_HEX_CHARS
        || value.len() > MAX_HASH_HEX_CHARS
        || !value.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(FieldError::new(
            field,
            format!(
                "must be a hex digest of {MIN_HASH_HEX_CHARS} to {MAX_HASH_HEX_CHARS} characters (e.g. SHA-256 or SM3); raw numbers are refused"
            ),
        ));
    }
    value.make_ascii_lowercase();
    Ok(value)
}

/// A stable 128-bit hash of everything a claim says. A retry must repeat it exactly.
fn fingerprint(claim: &ValidClaim) -> u128 {
    let mut h = Xxh3::new();
    for part in [
        Some(claim.tranche_id.as_str()),
        Some(claim.user_id.as_str()),
        claim.id_hash.as_deref(),
        claim.phone_hash.as_deref(),
        claim.device_id.as_deref(),
    ] {
        match part {
            None => h.update(&[0]),
            Some(s) => {
                h.update(&[1]);
                h.update(&(s.len() as u32).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    h.update(&claim.location.lng.to_bits().to_le_bytes());
    h.update(&claim.location.lat.to_bits().to_le_bytes());
    h.update(&[match claim.location.crs {
        Crs::Gcj02 => 1,
        Crs::Wgs84 => 2,
    }]);
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_numbers_are_refused() {
        assert!(check_not_raw_personal_number("user_id", "13800138000").is_err());
        assert!(check_not_raw_personal_number("user_id", "42050219900101123X").is_err());
        assert!(
            check_not_raw_personal_number("user_id", "2088102122524333").is_ok(),
            "Alipay IDs are 16 digits"
        );
        assert!(check_hash("h", "13800138000".into()).is_err());
        assert_eq!(
            check_hash("h", "AB".repeat(16)).as_deref(),
            Ok("ab".repeat(16).as_str())
        );
    }
}
