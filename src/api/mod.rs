//! The HTTP layer: two hyper 1.x listeners (public and admin), routing, body
//! limits, connection limits and graceful draining.
//!
//! Architecture invariant: this layer (with `config`) is the only place with
//! serde types. It turns bytes into validated values, asks the dispenser, and
//! turns the answer back into bytes; it makes no decisions of its own.

mod admin;
mod claims;
mod lifecycle;
pub use claims::{
    MAX_DEVICE_ID_BYTES, MAX_HASH_HEX_CHARS, MAX_REQUEST_ID_BYTES, MAX_USER_ID_BYTES,
    MIN_HASH_HEX_CHARS, ValidClaim, parse_claim,
};
mod merchant_csv;
pub use merchant_csv::{ParsedCsv, parse_merchant_csv};
mod merchants;
pub use merchants::{MAX_CONCURRENT_IMPORTS, MAX_IMPORT_BODY_BYTES};
mod public;
mod query;
mod respond;
pub mod wire;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::{AdminToken, CodeSecret, ServerConfig};
use crate::core::{MerchantStatus, TrancheControl, UnixMillis};
use crate::dispenser::Dispenser;
use crate::telemetry::{ClaimOutcomeLabel, Telemetry};
use respond::{Reply, json, with_retry_after};
use wire::{FieldError, OutcomeBody};

/// Connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (e.g. EMFILE) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Bound on writing the refusal to a connection over the limit.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// `Retry-After` seconds on 503 answers.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Where the daemon is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Replaying the WAL; only health and metrics answer.
    Starting = 0,
    Ready = 1,
    /// Shutting down: finishing in-flight work, refusing new claims.
    Draining = 2,
}

/// Everything the handlers share.
pub struct App {
    dispenser: OnceLock<Arc<Dispenser>>,
    phase: AtomicU8,
    claim_permits: Semaphore,
    import_permits: Semaphore,
    public_connections: Arc<Semaphore>,
    admin_connections: Arc<Semaphore>,
    pub telemetry: Telemetry,
    admin_token: AdminToken,
    code_secret: CodeSecret,
    limits: ServerConfig,
    clock: fn() -> UnixMillis,
}

impl App {
    pub fn new(
        limits: ServerConfig,
        admin_token: AdminToken,
        code_secret: CodeSecret,
        telemetry: Telemetry,
        clock: fn() -> UnixMillis,
    ) -> App {
        App {
            dispenser: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            claim_permits: Semaphore::new(limits.max_inflight_claims),
            import_permits: Semaphore::new(MAX_CONCURRENT_IMPORTS),
            public_connections: Arc::new(Semaphore::new(limits.max_connections)),
            admin_connections: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            telemetry,
            admin_token,
            code_secret,
            limits,
            clock,
        }
    }

    /// Called once replay has finished.
    pub fn set_ready(&self, dispenser: Arc<Dispenser>) {
        assert!(
            self.dispenser.set(dispenser).is_ok(),
            "set_ready called twice"
        );
        self.phase.store(Phase::Ready as u8, Ordering::Release);
        Telemetry::ready_changed(true);
    }

    pub fn start_draining(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::Release);
        Telemetry::ready_changed(false);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The dispenser, only while ready.
    fn dispenser(&self) -> Option<&Dispenser> {
        if self.phase() != Phase::Ready {
            return None;
        }
        self.dispenser.get().map(|d| d.as_ref())
    }

    /// The dispenser behind its `Arc`, only while ready (to move onto a blocking thread).
    fn dispenser_arc(&self) -> Option<Arc<Dispenser>> {
        self.dispenser()?;
        self.dispenser.get().cloned()
    }

    fn now(&self) -> UnixMillis {
        (self.clock)()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Accepts connections until `shutdown` flips, then drains open ones.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    which: Listener,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let limit = match which {
        Listener::Public => app.public_connections.clone(),
        Listener::Admin => app.admin_connections.clone(),
    };
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            app.telemetry.connection_rejected();
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service_app = app.clone();
        let service = service_fn(move |request| {
            let app = service_app.clone();
            async move { Ok::<_, Infallible>(route(&app, which, request).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(app.limits.header_read_timeout)
            .keep_alive(true);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let connection_app = app.clone();
        tokio::spawn(async move {
            connection_app.telemetry.connection_opened();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            connection_app.telemetry.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(app.limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = ?which, "connections still open after the drain timeout; closing them");
    }
}

/// Over the connection limit: answer 503 without reading the request, then close.
async fn refuse_connection(mut stream: TcpStream) {
    let body = br#"{"outcome":"overloaded"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
}

async fn route(app: &App, which: Listener, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    match which {
        Listener::Public => route_public(app, &method, &segments, request).await,
        Listener::Admin => {
            if !authorized(app, &request) {
                let mut reply = json(
                    StatusCode::UNAUTHORIZED,
                    &OutcomeBody::outcome("unauthorized"),
                );
                reply
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return reply;
            }
            route_admin(app, &method, &segments, request).await
        }
    }
}

async fn route_public(
    app: &App,
    method: &Method,
    segments: &[&str],
    request: Request<Incoming>,
) -> Reply {
    match (method, segments) {
        (&Method::POST, ["v1", "claims"]) => match read_body(app, request).await {
            Ok(body) => claims::handle(app, &body).await,
            Err(reply) => {
                let label = if reply.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ClaimOutcomeLabel::BodyTooLarge
                } else {
                    ClaimOutcomeLabel::InvalidRequest
                };
                app.telemetry.claim_finished(label, Duration::ZERO);
                reply
            }
        },
        (&Method::GET, ["v1", "tranches", id]) => public::tranche(app, id).await,
        (&Method::GET, ["v1", "vouchers", id]) => public::voucher(app, id).await,
        (&Method::GET, ["v1", "vouchers", id, "code"]) => lifecycle::code(app, id).await,
        (&Method::POST, ["v1", "redemptions"]) => match read_body(app, request).await {
            Ok(body) => lifecycle::redeem(app, &body).await,
            Err(reply) => reply,
        },
        (&Method::GET, ["v1", "redemptions", id]) => lifecycle::redemption(app, id).await,
        (&Method::POST, ["v1", "redemptions", id, "refund"]) => {
            let id = id.to_string();
            match read_body(app, request).await {
                Ok(body) => lifecycle::refund(app, &id, &body).await,
                Err(reply) => reply,
            }
        }
        (&Method::GET, ["metrics"]) => public::metrics(app),
        (&Method::GET, ["livez"]) => public::livez(),
        (&Method::GET, ["readyz"]) => public::readyz(app),
        (
            _,
            ["v1", "claims"]
            | ["v1", "tranches", _]
            | ["v1", "vouchers", _]
            | ["v1", "vouchers", _, "code"]
            | ["v1", "redemptions", ..]
            | ["metrics"]
            | ["livez"]
            | ["readyz"],
        ) => method_not_allowed(),
        _ => not_found(),
    }
}

async fn route_admin(
    app: &App,
    method: &Method,
    segments: &[&str],
    request: Request<Incoming>,
) -> Reply {
    match (method, segments) {
        (&Method::PUT, ["admin", "v1", "campaigns", id]) => {
            let id = id.to_string();
            match read_body(app, request).await {
                Ok(body) => admin::put_campaign(app, &id, &body).await,
                Err(reply) => reply,
            }
        }
        (&Method::PUT, ["admin", "v1", "tranches", id]) => {
            let id = id.to_string();
            match read_body(app, request).await {
                Ok(body) => admin::put_tranche(app, &id, &body).await,
                Err(reply) => reply,
            }
        }
        (&Method::GET, ["admin", "v1", "tranches", id]) => public::tranche(app, id).await,
        (&Method::POST, ["admin", "v1", "tranches", id, "pause"]) => {
            admin::control(app, id, TrancheControl::Pause).await
        }
        (&Method::POST, ["admin", "v1", "tranches", id, "resume"]) => {
            admin::control(app, id, TrancheControl::Resume).await
        }
        (&Method::POST, ["admin", "v1", "tranches", id, "draw"]) => {
            let id = id.to_string();
            match read_body(app, request).await {
                Ok(body) => lifecycle::draw(app, &id, &body).await,
                Err(reply) => reply,
            }
        }
        (&Method::GET, ["admin", "v1", "campaigns", id, "ledger"]) => {
            lifecycle::ledger(app, id).await
        }
        (&Method::POST, ["admin", "v1", "vouchers:revoke"]) => {
            match read_body(app, request).await {
                Ok(body) => lifecycle::revoke(app, &body).await,
                Err(reply) => reply,
            }
        }
        (&Method::POST, ["admin", "v1", "merchants:import"]) => {
            import_merchants(app, request).await
        }
        (&Method::GET, ["admin", "v1", "merchants"]) => {
            merchants::list(app, request.uri().query()).await
        }
        (&Method::GET, ["admin", "v1", "merchants:counts"]) => merchants::counts(app).await,
        (&Method::GET, ["admin", "v1", "merchants", id]) => merchants::get(app, id).await,
        (&Method::POST, ["admin", "v1", "merchants", id, "suspend"]) => {
            merchants::set_status(app, id, MerchantStatus::Suspended).await
        }
        (&Method::POST, ["admin", "v1", "merchants", id, "resume"]) => {
            merchants::set_status(app, id, MerchantStatus::Active).await
        }
        (
            _,
            ["admin", "v1", "campaigns", ..]
            | ["admin", "v1", "tranches", ..]
            | ["admin", "v1", "vouchers:revoke"]
            | [
                "admin",
                "v1",
                "merchants" | "merchants:import" | "merchants:counts",
                ..,
            ],
        ) => method_not_allowed(),
        _ => not_found(),
    }
}

/// `POST /admin/v1/merchants:import`: checks the query and content type, takes
/// the import permit, then reads the body under the import route's own limit.
async fn import_merchants(app: &App, request: Request<Incoming>) -> Reply {
    if app.dispenser().is_none() {
        return unavailable(app);
    }
    let dry_run = match merchants::dry_run(request.uri().query()) {
        Ok(d) => d,
        Err(e) => {
            let mut body = OutcomeBody::outcome("invalid_request");
            body.error = Some(e);
            return json(StatusCode::BAD_REQUEST, &body);
        }
    };
    if let Err(e) = merchants::check_content_type(request.headers()) {
        let mut body = OutcomeBody::outcome("unsupported_media_type");
        body.error = Some(e);
        return json(StatusCode::UNSUPPORTED_MEDIA_TYPE, &body);
    }
    let Ok(_permit) = app.import_permits.try_acquire() else {
        return overloaded();
    };
    let deadline = import_body_deadline(app.limits.body_read_timeout, request.headers());
    match read_body_limited(request, MAX_IMPORT_BODY_BYTES, deadline).await {
        Ok(body) => merchants::import(app, body, dry_run).await,
        Err(reply) => reply,
    }
}

/// The slowest upload an import body is allowed on top of `server.body_read_timeout_ms`:
/// 256 KiB/s, so a full 32 MiB file has 128 s more. A claim's deadline suits bodies of a few
/// hundred bytes; a back-office upload of a large CSV over a VPN needs its size's worth.
const IMPORT_BODY_MIN_BYTES_PER_SECOND: u64 = 256 * 1024;

/// How long an import's body may take: the configured deadline, plus its declared size (the
/// largest allowed when none is declared) at [`IMPORT_BODY_MIN_BYTES_PER_SECOND`].
fn import_body_deadline(
    body_read_timeout: std::time::Duration,
    headers: &hyper::HeaderMap,
) -> std::time::Duration {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(MAX_IMPORT_BODY_BYTES as u64)
        .min(MAX_IMPORT_BODY_BYTES as u64);
    body_read_timeout
        + std::time::Duration::from_secs(declared.div_ceil(IMPORT_BODY_MIN_BYTES_PER_SECOND))
}

fn authorized(app: &App, request: &Request<Incoming>) -> bool {
    let Some(value) = request.headers().get(AUTHORIZATION) else {
        return false;
    };
    let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    app.admin_token.matches(token)
}

/// Reads a body up to the configured limit; 413 beyond it, 400 if the body breaks off.
async fn read_body(app: &App, request: Request<Incoming>) -> Result<Bytes, Reply> {
    read_body_limited(
        request,
        app.limits.max_body_bytes,
        app.limits.body_read_timeout,
    )
    .await
}

/// Reads a body of at most `limit` bytes; 413 beyond it, 400 if the body breaks off, 408
/// (and the connection closed) if it has not fully arrived within `timeout`.
async fn read_body_limited(
    request: Request<Incoming>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Reply> {
    let too_large = || {
        let mut body = OutcomeBody::outcome("body_too_large");
        body.error = Some(FieldError::new(
            "body",
            format!("must be at most {limit} bytes"),
        ));
        json(StatusCode::PAYLOAD_TOO_LARGE, &body)
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut collect = std::pin::pin!(Limited::new(request.into_body(), limit).collect());
    // A claim's few hundred bytes nearly always arrive with its headers: take them without
    // arming a timer (an insert into and removal from tokio's timer wheel per request cost
    // about 5 % of claims/s in a same-run comparison). Only a body still on its way gets one.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(collect.as_mut().poll(cx))).await;
    let collected = match first {
        std::task::Poll::Ready(collected) => Ok(collected),
        std::task::Poll::Pending => tokio::time::timeout(timeout, collect).await,
    };
    let Ok(collected) = collected else {
        let mut body = OutcomeBody::outcome("body_timeout");
        body.error = Some(FieldError::new(
            "body",
            format!(
                "did not fully arrive within {} ms of the headers",
                timeout.as_millis()
            ),
        ));
        let mut reply = json(StatusCode::REQUEST_TIMEOUT, &body);
        reply
            .headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        return Err(reply);
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => {
            let mut body = OutcomeBody::outcome("invalid_request");
            body.error = Some(FieldError::new(
                "body",
                format!("could not read the body: {e}"),
            ));
            Err(json(StatusCode::BAD_REQUEST, &body))
        }
    }
}

fn not_found() -> Reply {
    json(StatusCode::NOT_FOUND, &OutcomeBody::outcome("not_found"))
}

fn method_not_allowed() -> Reply {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        &OutcomeBody::outcome("method_not_allowed"),
    )
}

/// Waits until what an answer shows is durable: `Err` with the reply to send instead when
/// the WAL could not take the wait (full: 503 overloaded) or stopped (503 unavailable).
async fn shown_once_durable(
    app: &App,
    durability: Result<crate::dispenser::Durability, crate::wal::AppendError>,
) -> Result<(), Reply> {
    match durability {
        Ok(d) => {
            if d.wait().await {
                Ok(())
            } else {
                Err(unavailable(app))
            }
        }
        Err(crate::wal::AppendError::QueueFull { .. }) => Err(overloaded()),
        Err(_) => Err(unavailable(app)),
    }
}

fn overloaded() -> Reply {
    with_retry_after(
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &OutcomeBody::outcome("overloaded"),
        ),
        RETRY_AFTER_SECONDS,
    )
}

/// 503 while starting or draining.
fn unavailable(app: &App) -> Reply {
    let outcome = match app.phase() {
        Phase::Starting => "starting",
        Phase::Ready => "unavailable",
        Phase::Draining => "draining",
    };
    with_retry_after(
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &OutcomeBody::outcome(outcome),
        ),
        RETRY_AFTER_SECONDS,
    )
}
