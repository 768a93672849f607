//! Steady load on a tranche that never sells out.
//!
//! - Open loop ([`Mode::Open`]): request i is due at `start + i / rate`,
//!   whether or not earlier ones were answered. A pool of keep-alive
//!   connections takes due requests in order; if all are busy, a request
//!   goes out late and its latency still counts from its intended send time,
//!   so a stalled server cannot hide its stall (coordinated omission is
//!   corrected). The service time (from the actual send) and the generator's
//!   own lateness are reported too.
//! - Closed loop ([`Mode::Closed`]): every connection sends its next request
//!   as soon as it has an answer (like wrk): the saturated throughput.
//!
//! Every request carries a new identity and request ID.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{self, Connection};
use crate::population::{Keys, Person, claim_body};
use crate::record::{self, Outcome, Percentiles, Sample, Summary, string_field};
use crate::verify::Win;

/// Lets connections settle before t0 of the measurement.
const START_DELAY: Duration = Duration::from_millis(200);

#[derive(Copy, Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Open { rate_per_second: f64 },
    Closed,
}

pub struct Steady {
    pub public: SocketAddr,
    pub tranche_id: String,
    pub run: String,
    pub keys: Keys,
    /// Locations to cycle through; identities are fresh per request.
    pub people: Arc<Vec<Person>>,
    pub connections: usize,
    pub mode: Mode,
    /// Answers in the first `warmup` are left out of the figures.
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct SteadyResult {
    pub mode: Mode,
    pub connections: usize,
    pub measured_seconds: f64,
    /// Answers per second in the measured window.
    pub answers_per_second: f64,
    pub claims_per_second: f64,
    /// Open loop: from intended send time; closed loop: from send.
    pub latency: Percentiles,
    /// From the actual send (open loop only; equals `latency` in closed loop).
    pub service_time: Percentiles,
    /// How late the generator sent requests after their intended time.
    pub send_lag: Percentiles,
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    pub timeline: Vec<record::Bucket>,
    /// Every `201` (warm-up included), for the verification.
    #[serde(skip)]
    pub wins: Vec<Win>,
    /// Requests that got no answer.
    pub unanswered: u64,
}

struct ConnectionResult {
    samples: Vec<Sample>,
    wins: Vec<Win>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
}

impl Steady {
    pub async fn run(self) -> Result<SteadyResult, String> {
        let mut conns = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            conns.push(
                Connection::connect(self.public)
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", self.public))?,
            );
        }
        let start = Instant::now() + START_DELAY;
        let end = start + self.warmup + self.duration;
        let next = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            host: self.public.to_string(),
            tranche_id: self.tranche_id.clone(),
            run: self.run.clone(),
            keys: self.keys,
            people: self.people.clone(),
        });
        let mut tasks = JoinSet::new();
        for conn in conns {
            let shared = shared.clone();
            let next = next.clone();
            let mode = self.mode;
            tasks.spawn(async move { drive(conn, shared, next, mode, start, end).await });
        }
        let measure_from_us = self.warmup.as_micros() as u64;
        let mut samples = Vec::new();
        let mut service = record::histogram();
        let mut lag = record::histogram();
        let mut wins = Vec::new();
        let mut unanswered = 0;
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(|e| format!("a connection task failed: {e}"))?;
            wins.extend(r.wins);
            unanswered += r.samples.iter().filter(|s| !s.outcome.answered()).count() as u64;
            samples.extend(
                r.samples
                    .into_iter()
                    .filter(|s| s.answered_at_us >= measure_from_us),
            );
            service.add(&r.service).expect("same bounds");
            lag.add(&r.lag).expect("same bounds");
        }
        let summary = Summary::of(&samples);
        let measured = self.duration.as_secs_f64();
        let answered = samples.iter().filter(|s| s.outcome.answered()).count() as f64;
        let claims = summary.count(Outcome::Claimed) as f64;
        let latency = summary.latency.clone();
        Ok(SteadyResult {
            mode: self.mode,
            connections: self.connections,
            measured_seconds: measured,
            answers_per_second: answered / measured,
            claims_per_second: claims / measured,
            service_time: match self.mode {
                Mode::Open { .. } => Percentiles::of(&service),
                Mode::Closed => latency.clone(),
            },
            latency,
            send_lag: Percentiles::of(&lag),
            outcomes: summary.outcomes,
            timeline: summary.timeline,
            wins,
            unanswered,
        })
    }
}

struct Shared {
    host: String,
    tranche_id: String,
    run: String,
    keys: Keys,
    people: Arc<Vec<Person>>,
}

async fn drive(
    mut conn: Connection,
    shared: Arc<Shared>,
    next: Arc<AtomicU64>,
    mode: Mode,
    start: Instant,
    end: Instant,
) -> ConnectionResult {
    let mut out = ConnectionResult {
        samples: Vec::new(),
        wins: Vec::new(),
        service: record::histogram(),
        lag: record::histogram(),
    };
    tokio::time::sleep_until(start).await;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let intended = match mode {
            Mode::Open { rate_per_second } => {
                let due = start + Duration::from_secs_f64(i as f64 / rate_per_second);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            Mode::Closed => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let template = &shared.people[i as usize % shared.people.len()];
        let person = Person {
            index: i as u32,
            ..template.clone()
        };
        let body = claim_body(&shared.tranche_id, &shared.run, &person, 0, shared.keys);
        let request = http::request("POST", "/v1/claims", &shared.host, None, &body);
        let sent = Instant::now();
        let result = conn.exchange(&request).await;
        let answered = Instant::now();
        let outcome = match result {
            Ok(status) => Outcome::classify(status, conn.body()),
            Err(_) => Outcome::TransportError,
        };
        if outcome == Outcome::Claimed {
            let body = conn.body();
            out.wins.push(Win {
                identity: i as u32,
                voucher_id: string_field(body, "id").unwrap_or("?").to_owned(),
                county: string_field(body, "county").unwrap_or("?").to_owned(),
            });
        }
        record::record(
            &mut out.service,
            answered.duration_since(sent).as_micros() as u64,
        );
        record::record(
            &mut out.lag,
            sent.duration_since(intended).as_micros() as u64,
        );
        out.samples.push(Sample {
            answered_at_us: answered.saturating_duration_since(start).as_micros() as u64,
            latency_us: answered.duration_since(intended).as_micros() as u64,
            outcome,
            bot: false,
        });
        if outcome == Outcome::TransportError {
            break;
        }
    }
    out
}
