//! What the COMPARISON PEERS (`redis_claim`, `postgres_claim`) share, so that
//! they read the same claim bodies and give the same answers: the body, the
//! routes, the GPS lookup to a county, the answer shapes and status codes, and
//! the HTTP/1 accept loop (hyper, built like voucherd's listener) that stops on
//! SIGTERM or Ctrl-C. Not part of voucherd.
//!
//! Answers: `201 claimed` (with a voucher), `409 already_claimed`,
//! `410 sold_out`, `422 outside_area`, `404 unknown_tranche`,
//! `400 invalid_request`, `503 unavailable` (the store failed). Unlike
//! voucherd the peers keep no request-ID idempotency and show no voucher on a
//! 409, which saves them work.

use std::io;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use voucherd::geo::{PolygonIndex, parse_feature_collection};

/// Largest claim body read.
const MAX_BODY_BYTES: usize = 8192;

pub type Answer = Response<Full<Bytes>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    tranche_id: String,
    user_id: String,
    #[serde(default)]
    identity: Option<IdentityBody>,
    location: LocationBody,
    request_id: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IdentityBody {
    id_hash: Option<String>,
    phone_hash: Option<String>,
    device_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationBody {
    lng: f64,
    lat: f64,
    #[serde(default)]
    crs: Option<String>,
}

/// A claim that parsed, names the peer's tranche and lies in a county.
pub struct Claim {
    pub county: u32,
    pub user_id: String,
    /// Lower-cased, like voucherd compares them.
    pub id_hash: Option<String>,
    /// Lower-cased, like voucherd compares them.
    pub phone_hash: Option<String>,
    pub device_id: Option<String>,
    pub request_id: String,
    /// GCJ-02.
    pub lng: f64,
    pub lat: f64,
}

/// The command-line arguments every comparison peer takes: which counties, which tranche,
/// how much stock.
#[derive(clap::Args)]
pub struct TrancheArgs {
    /// County boundaries (the same file voucherd uses).
    #[arg(long)]
    pub geojson: std::path::PathBuf,
    #[arg(long, default_value = "bench")]
    pub tranche: String,
    #[arg(long, default_value_t = 10_000_000)]
    pub quota_per_county: u64,
}

/// The county boundaries (the same file voucherd uses) and their adcodes.
pub fn load_counties(geojson: &Path) -> io::Result<(PolygonIndex, Vec<u32>)> {
    let bytes = std::fs::read(geojson)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", geojson.display())))?;
    let shapes = parse_feature_collection(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let index = PolygonIndex::build(&shapes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let counties = shapes.iter().map(|s| s.adcode).collect();
    Ok((index, counties))
}

/// Routes a request: `Ok` is a claim for the store to decide; `Err` is the
/// answer already (readiness, a bad body, another tranche, outside the area).
pub async fn read_claim(
    index: &PolygonIndex,
    tranche: &str,
    request: Request<Incoming>,
) -> Result<Claim, Answer> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/readyz") => return Err(outcome(StatusCode::OK, "ready")),
        (&Method::POST, "/v1/claims") => {}
        _ => return Err(outcome(StatusCode::NOT_FOUND, "not_found")),
    }
    let invalid = || outcome(StatusCode::BAD_REQUEST, "invalid_request");
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(invalid()),
    };
    let Ok(claim) = serde_json::from_slice::<ClaimBody>(&body) else {
        return Err(invalid());
    };
    if claim.tranche_id != tranche {
        return Err(outcome(StatusCode::NOT_FOUND, "unknown_tranche"));
    }
    let (lng, lat) = match claim.location.crs.as_deref() {
        None | Some("gcj02") => (claim.location.lng, claim.location.lat),
        Some("wgs84") => {
            voucherd::geo::gcj02::wgs84_to_gcj02(claim.location.lng, claim.location.lat)
        }
        Some(_) => return Err(invalid()),
    };
    let Some(county) = index.locate(lng, lat) else {
        return Err(outside_area());
    };
    let identity = claim.identity.unwrap_or_default();
    Ok(Claim {
        county,
        user_id: claim.user_id,
        id_hash: identity.id_hash.map(|h| h.to_ascii_lowercase()),
        phone_hash: identity.phone_hash.map(|h| h.to_ascii_lowercase()),
        device_id: identity.device_id,
        request_id: claim.request_id,
        lng,
        lat,
    })
}

fn reply(status: StatusCode, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn outcome(status: StatusCode, outcome: &str) -> Answer {
    reply(status, format!(r#"{{"outcome":"{outcome}"}}"#))
}

/// `201`: the voucher the store recorded.
pub fn claimed(voucher_id: &str, tranche: &str, county: u32) -> Answer {
    reply(
        StatusCode::CREATED,
        format!(
            r#"{{"outcome":"claimed","voucher":{{"id":"{voucher_id}","tranche_id":"{tranche}","county":"{county}","state":"claimed"}}}}"#
        ),
    )
}

pub fn already_claimed() -> Answer {
    outcome(StatusCode::CONFLICT, "already_claimed")
}

pub fn sold_out() -> Answer {
    outcome(StatusCode::GONE, "sold_out")
}

pub fn outside_area() -> Answer {
    outcome(StatusCode::UNPROCESSABLE_ENTITY, "outside_area")
}

/// The store did not answer (connection lost, query failed).
pub fn unavailable() -> Answer {
    outcome(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

/// The store answered something the peer does not understand.
pub fn internal() -> Answer {
    outcome(StatusCode::INTERNAL_SERVER_ERROR, "internal")
}

/// Accepts connections until SIGTERM or Ctrl-C; each gets `make_service()`'s
/// service on a keep-alive HTTP/1 connection with nodelay.
pub async fn serve_until_signal<S, F>(listener: TcpListener, mut make_service: F) -> io::Result<()>
where
    F: FnMut() -> S,
    S: Service<Request<Incoming>, Response = Answer> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        spawn_connection(stream, make_service());
    }
}

fn spawn_connection<S>(stream: TcpStream, service: S)
where
    S: Service<Request<Incoming>, Response = Answer> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).keep_alive(true);
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}
