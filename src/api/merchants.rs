//! Admin merchant routes: bulk import (CSV), get, suspend and resume, list
//! with filters and pagination, and counts by county × industry. The caller
//! has already checked the bearer token.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{HeaderMap, StatusCode};

use super::App;
use super::merchant_csv::{ParsedCsv, parse_merchant_csv};
use super::query::parse_query;
use super::respond::{Reply, json};
use super::wire::{
    CountyMerchantsBody, FieldError, ImportBody, ImportRejectedBody, IndustryCountBody,
    MerchantBody, MerchantCountsBody, MerchantListBody, MerchantOutcomeBody, OutcomeBody,
    RowErrorBody,
};
use crate::core::merchant::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TERM_BYTES, check_merchant_id, parse_county_code,
};
use crate::core::{CountyCode, MerchantFilter, MerchantStatus, RowErrors, StatusCounts};
use crate::dispenser::{
    Dispenser, Durability, ImportError, ImportSummary, MerchantError, MerchantListing,
};
use crate::telemetry::ImportOutcomeLabel;
use crate::wal::AppendError;

/// Largest import body: 100,000 rows of typical length take about 8 MB.
pub const MAX_IMPORT_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Imports running at once; a bound on the memory bodies and rows take.
pub const MAX_CONCURRENT_IMPORTS: usize = 1;

const LIST_PARAMETERS: &[&str] = &[
    "county",
    "industry",
    "platform",
    "status",
    "page_size",
    "page_token",
];

/// Whether a request's query asks for a dry run (`?dry_run=true`).
pub fn dry_run(query: Option<&str>) -> Result<bool, FieldError> {
    let params = parse_query(query, &["dry_run"])?;
    match params.first().map(|(_, v)| v.as_str()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(FieldError::new(
            "dry_run",
            format!("{other:?} is not true or false"),
        )),
    }
}

/// Refuses a body that is not declared as UTF-8 CSV (answer with 415).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), FieldError> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = value.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    let charset_ok = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if media.eq_ignore_ascii_case("text/csv") && charset_ok {
        return Ok(());
    }
    Err(FieldError::new(
        "content-type",
        format!("must be text/csv (UTF-8), got {value:?}"),
    ))
}

/// `POST /admin/v1/merchants:import`, once the body is read. Parsing and
/// checking 100,000 rows takes tens of milliseconds, so it runs on a
/// blocking thread, not on the async workers that answer claims.
pub async fn import(app: &App, body: Bytes, dry_run: bool) -> Reply {
    let Some(dispenser) = app.dispenser_arc() else {
        return super::unavailable(app);
    };
    let work = tokio::task::spawn_blocking(move || {
        let parsed = parse_merchant_csv(&body);
        let data_rows = parsed.data_rows;
        (run_import(&dispenser, parsed, dry_run), data_rows)
    });
    let (result, data_rows) = match work.await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "merchant import task failed");
            return super::unavailable(app);
        }
    };
    let outcome = match result {
        Ok((summary, durability)) => {
            if !durability.wait().await {
                return super::unavailable(app);
            }
            Ok(summary)
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(summary) => {
            let (label, text) = if dry_run {
                (ImportOutcomeLabel::Validated, "validated")
            } else {
                (ImportOutcomeLabel::Imported, "imported")
            };
            app.telemetry
                .merchant_import_finished(label, summary.created, summary.unchanged, 0);
            json(
                StatusCode::OK,
                &ImportBody {
                    outcome: text,
                    created: summary.created,
                    unchanged: summary.unchanged,
                    rows: summary.rows,
                },
            )
        }
        Err(ImportError::Rejected(errors)) => {
            app.telemetry
                .merchant_import_finished(ImportOutcomeLabel::Invalid, 0, 0, data_rows);
            rejected(&errors)
        }
        Err(ImportError::Unavailable(e)) => {
            app.telemetry.merchant_import_finished(
                ImportOutcomeLabel::Unavailable,
                0,
                0,
                data_rows,
            );
            append_refused(app, e)
        }
    }
}

/// Checks every row (the file's shape, then the core's rules); writes only a
/// file without a single error, and only when it is not a dry run.
fn run_import(
    dispenser: &Dispenser,
    parsed: ParsedCsv,
    dry_run: bool,
) -> Result<(ImportSummary, Durability), ImportError> {
    let ParsedCsv {
        rows,
        errors,
        header_ok,
        ..
    } = parsed;
    if !header_ok {
        return Err(ImportError::Rejected(errors));
    }
    if !errors.is_empty() {
        // Check the readable rows too, so one answer lists every error.
        let more = match dispenser.validate_merchants(rows) {
            Ok(_) => RowErrors::default(),
            Err(ImportError::Rejected(more)) => more,
            Err(e) => return Err(e),
        };
        return Err(ImportError::Rejected(errors.merge(more)));
    }
    if dry_run {
        dispenser.validate_merchants(rows)
    } else {
        dispenser.import_merchants(rows)
    }
}

fn rejected(errors: &RowErrors) -> Reply {
    let listed: Vec<RowErrorBody> = errors
        .listed()
        .iter()
        .map(RowErrorBody::from_error)
        .collect();
    json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &ImportRejectedBody {
            outcome: "invalid_csv",
            error: listed.first().cloned(),
            errors_truncated: listed.len() < errors.total(),
            error_count: errors.total(),
            errors: listed,
        },
    )
}

pub async fn get(app: &App, merchant_id: &str) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    if let Err(reason) = check_merchant_id(merchant_id) {
        return invalid(FieldError::new("merchant_id", reason));
    }
    let Some((merchant, durability)) = dispenser.merchant(merchant_id) else {
        return unknown_merchant();
    };
    if let Err(reply) = super::shown_once_durable(app, durability).await {
        return reply;
    }
    let name = dispenser.counties().name(merchant.county).unwrap_or("");
    json(
        StatusCode::OK,
        &MerchantOutcomeBody {
            outcome: "found",
            merchant: MerchantBody::new(&merchant, name),
        },
    )
}

/// `POST .../suspend` and `.../resume`; repeating one is a no-op (still 200).
pub async fn set_status(app: &App, merchant_id: &str, status: MerchantStatus) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    if let Err(reason) = check_merchant_id(merchant_id) {
        return invalid(FieldError::new("merchant_id", reason));
    }
    match dispenser.set_merchant_status(merchant_id, status, app.now()) {
        Ok((merchant, durability)) => {
            if !durability.wait().await {
                return super::unavailable(app);
            }
            let name = dispenser.counties().name(merchant.county).unwrap_or("");
            let outcome = match status {
                MerchantStatus::Active => "resumed",
                MerchantStatus::Suspended => "suspended",
            };
            json(
                StatusCode::OK,
                &MerchantOutcomeBody {
                    outcome,
                    merchant: MerchantBody::new(&merchant, name),
                },
            )
        }
        Err(MerchantError::UnknownMerchant) => unknown_merchant(),
        Err(MerchantError::Unavailable(e)) => append_refused(app, e),
    }
}

/// A listing request, checked.
struct ListRequest {
    county: Option<CountyCode>,
    industry: Option<String>,
    platform: Option<String>,
    status: Option<MerchantStatus>,
    page_size: usize,
    page_token: Option<String>,
}

fn list_request(query: Option<&str>) -> Result<ListRequest, FieldError> {
    let mut request = ListRequest {
        county: None,
        industry: None,
        platform: None,
        status: None,
        page_size: DEFAULT_PAGE_SIZE,
        page_token: None,
    };
    let term = |field: &str, value: String| {
        if value.is_empty() || value.len() > MAX_TERM_BYTES {
            Err(FieldError::new(
                field,
                format!("must be 1 to {MAX_TERM_BYTES} bytes"),
            ))
        } else {
            Ok(value)
        }
    };
    for (name, value) in parse_query(query, LIST_PARAMETERS)? {
        match name {
            "county" => {
                request.county = Some(parse_county_code(&value).ok_or_else(|| {
                    FieldError::new("county", format!("{value:?} is not a 6-digit county code"))
                })?)
            }
            "industry" => request.industry = Some(term(name, value)?),
            "platform" => request.platform = Some(term(name, value)?),
            "status" => {
                request.status = Some(MerchantStatus::parse(&value).ok_or_else(|| {
                    FieldError::new("status", format!("{value:?} is not active or suspended"))
                })?)
            }
            "page_size" => {
                request.page_size = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| {
                        FieldError::new("page_size", format!("must be 1 to {MAX_PAGE_SIZE}"))
                    })?
            }
            "page_token" => {
                check_merchant_id(&value).map_err(|_| {
                    FieldError::new(
                        "page_token",
                        "not a page token from an earlier answer's next_page_token",
                    )
                })?;
                request.page_token = Some(value);
            }
            _ => unreachable!("parse_query allows only LIST_PARAMETERS"),
        }
    }
    Ok(request)
}

pub async fn list(app: &App, query: Option<&str>) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let request = match list_request(query) {
        Ok(r) => r,
        Err(e) => return invalid(e),
    };
    let filter = MerchantFilter {
        county: request.county,
        industry: request.industry.as_deref(),
        platform: request.platform.as_deref(),
        status: request.status,
    };
    let listed =
        dispenser.list_merchants(&filter, request.page_token.as_deref(), request.page_size);
    let (listing, durability): (MerchantListing, Durability) = match listed {
        Ok(pair) => pair,
        Err(e) => return append_refused(app, e),
    };
    if !durability.wait().await {
        return super::unavailable(app);
    }
    let counties = dispenser.counties();
    json(
        StatusCode::OK,
        &MerchantListBody {
            outcome: "listed",
            merchants: listing
                .merchants
                .iter()
                .map(|m| MerchantBody::new(m, counties.name(m.county).unwrap_or("")))
                .collect(),
            next_page_token: listing.next_page_token,
        },
    )
}

/// Counts for every configured county and industry (zeros included), plus
/// any county or industry that merchants hold but the configuration no
/// longer lists.
pub async fn counts(app: &App) -> Reply {
    let Some(dispenser) = app.dispenser() else {
        return super::unavailable(app);
    };
    let (cells, totals, durability) = dispenser.merchant_counts();
    if let Err(reply) = super::shown_once_durable(app, durability).await {
        return reply;
    }
    let mut industries: Vec<String> = dispenser.merchant_rules().industries().to_vec();
    for (_, industry, _) in &cells {
        if !industries.contains(industry) {
            industries.push(industry.clone());
        }
    }
    let mut by_county: BTreeMap<CountyCode, BTreeMap<&str, StatusCounts>> = dispenser
        .counties()
        .codes()
        .map(|c| (c, BTreeMap::new()))
        .collect();
    for (county, industry, counts) in &cells {
        by_county
            .entry(*county)
            .or_default()
            .insert(industry.as_str(), *counts);
    }
    let counties = by_county
        .into_iter()
        .map(|(county, cells)| {
            let sum = cells
                .values()
                .fold(StatusCounts::default(), |a, c| StatusCounts {
                    active: a.active + c.active,
                    suspended: a.suspended + c.suspended,
                });
            CountyMerchantsBody {
                county: county.0.to_string(),
                name: dispenser.counties().name(county).unwrap_or("").to_owned(),
                total: sum.total(),
                active: sum.active,
                suspended: sum.suspended,
                industries: industries
                    .iter()
                    .map(|industry| {
                        let c = cells.get(industry.as_str()).copied().unwrap_or_default();
                        IndustryCountBody {
                            industry: industry.clone(),
                            active: c.active,
                            suspended: c.suspended,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    json(
        StatusCode::OK,
        &MerchantCountsBody {
            outcome: "counts",
            total: totals.total(),
            active: totals.active,
            suspended: totals.suspended,
            industries,
            counties,
        },
    )
}

fn invalid(error: FieldError) -> Reply {
    let mut body = OutcomeBody::outcome("invalid_request");
    body.error = Some(error);
    json(StatusCode::BAD_REQUEST, &body)
}

fn unknown_merchant() -> Reply {
    json(
        StatusCode::NOT_FOUND,
        &OutcomeBody::outcome("unknown_merchant"),
    )
}

fn append_refused(app: &App, error: AppendError) -> Reply {
    match error {
        AppendError::QueueFull { .. } => super::overloaded(),
        _ => super::unavailable(app),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_are_checked() {
        let ok = list_request(Some(
            "county=420502&industry=%E9%A4%90%E9%A5%AE&status=suspended&page_size=5&page_token=m-9",
        ))
        .expect("valid");
        assert_eq!(ok.county, Some(CountyCode(420502)));
        assert_eq!(ok.industry.as_deref(), Some("餐饮"));
        assert_eq!(ok.status, Some(MerchantStatus::Suspended));
        assert_eq!((ok.page_size, ok.page_token.as_deref()), (5, Some("m-9")));
        assert_eq!(
            list_request(None).expect("empty").page_size,
            DEFAULT_PAGE_SIZE
        );
        for (query, field) in [
            ("county=4205", "county"),
            ("status=closed", "status"),
            ("page_size=0", "page_size"),
            ("page_size=1001", "page_size"),
            ("page_token=a%20b", "page_token"),
            ("industry=", "industry"),
            ("sort=name", "sort"),
        ] {
            let error = list_request(Some(query)).err().expect(query);
            assert_eq!(error.field, field, "{query}");
        }
    }

    #[test]
    fn dry_run_and_content_type() {
        assert_eq!(dry_run(None), Ok(false));
        assert_eq!(dry_run(Some("dry_run=true")), Ok(true));
        assert_eq!(dry_run(Some("dry_run=false")), Ok(false));
        assert!(dry_run(Some("dry_run=yes")).is_err());
        assert!(dry_run(Some("dryrun=true")).is_err());
        let mut headers = HeaderMap::new();
        assert!(check_content_type(&headers).is_err());
        for (value, ok) in [
            ("text/csv", true),
            ("text/csv; charset=utf-8", true),
            ("TEXT/CSV;charset=\"UTF-8\"", true),
            ("text/csv; charset=gbk", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, value.parse().expect("header"));
            assert_eq!(check_content_type(&headers).is_ok(), ok, "{value}");
        }
    }
}
