//! Public read routes: tranches, vouchers, health and metrics.

use hyper::StatusCode;

use super::App;
use super::respond::{Reply, json, text};
use super::wire::{OutcomeBody, TrancheBodyOut, VoucherBody};
use crate::core::VoucherId;
use crate::telemetry::Telemetry;

pub async fn tranche(app: &App, tranche_id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let now = app.now();
    let Some((view, durability)) = dispenser.tranche_for_reader(tranche_id, now) else {
        return json(
            StatusCode::NOT_FOUND,
            &OutcomeBody::outcome("unknown_tranche"),
        );
    };
    // Counts that include a claim not yet durable are not shown.
    let durable = match durability {
        Ok(durability) => durability.wait().await,
        Err(crate::wal::AppendError::QueueFull { .. }) => return super::overloaded(),
        Err(_) => false,
    };
    if !durable {
        return super::unavailable(app);
    }
    let mut body = TrancheBodyOut::from_view(&view, now);
    // The partner-facing shape is flat: {tranche_id, state, ..., counties}.
    body.server_time = crate::wire_time::format_beijing(now);
    json(StatusCode::OK, &body)
}

pub async fn voucher(app: &App, id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            &OutcomeBody::outcome("unknown_voucher"),
        )
    };
    let Some(id) = VoucherId::parse(id) else {
        return not_found();
    };
    let Some((view, durability)) = dispenser.voucher(id, app.now()) else {
        return not_found();
    };
    if let Err(reply) = super::shown_once_durable(app, durability).await {
        return reply;
    }
    let mut body = OutcomeBody::outcome("found");
    body.voucher = Some(VoucherBody::from_view(&view));
    json(StatusCode::OK, &body)
}

pub fn metrics(app: &App) -> Reply {
    if let Some(dispenser) = app.dispenser() {
        dispenser.each_tranche(app.now(), Telemetry::tranche_observed);
        Telemetry::merchants_observed(dispenser.read_merchants(|r| r.totals()));
    }
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        app.telemetry.render(),
    )
}

pub fn livez() -> Reply {
    json(StatusCode::OK, &OutcomeBody::outcome("live"))
}

pub fn readyz(app: &App) -> Reply {
    match app.phase() {
        super::Phase::Ready => json(StatusCode::OK, &OutcomeBody::outcome("ready")),
        _ => super::unavailable(app),
    }
}
