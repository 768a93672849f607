//! Burst mode: every simulated person presses "claim" at the release instant
//! t0. People share a pool of keep-alive connections opened before t0; the
//! people of one connection go one after another, so a person's latency is
//! measured from t0 (the instant they pressed), not from when their
//! connection got round to them.
//!
//! Bots (grabbing scripts) hold several connections each, fire `lead` before
//! t0 and retry at once on `not_open` and `overloaded`, with a new request ID
//! each time, until they win, are refused for good, or hit their attempt cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{self, Connection};
use crate::population::{Keys, Person, claim_body};
use crate::record::{Outcome, Sample, string_field};
use crate::verify::Win;

/// Connections opened at once while preparing (the server's accept backlog is finite).
const CONNECT_CONCURRENCY: usize = 256;

#[derive(Clone, Debug, Serialize)]
pub struct BotConfig {
    /// Share of identities that are bots, 0..=1.
    pub share: f64,
    /// How long before t0 bots start firing.
    pub lead_ms: u64,
    /// Keep-alive connections each bot holds and fires on in parallel.
    pub connections_per_bot: usize,
    /// Attempts per bot (across its connections) before it gives up.
    pub max_attempts: u32,
}

/// One burst, ready to fire.
pub struct Burst {
    pub public: SocketAddr,
    pub tranche_id: String,
    /// Keeps this run's identities apart from other runs'.
    pub run: String,
    pub keys: Keys,
    /// Adcode of each county index used by [`Person::county`].
    pub county_codes: Vec<u32>,
    pub people: Vec<Person>,
    /// Connections shared by the (human) people.
    pub connections: usize,
    pub bots: BotConfig,
    /// The release instant, Unix milliseconds.
    pub t0_unix_ms: i64,
}

/// What a burst saw.
pub struct BurstRun {
    pub human_samples: Vec<Sample>,
    pub bot_samples: Vec<Sample>,
    pub wins: Vec<(Win, u64)>,
    pub connect_ms: f64,
    pub connections_opened: usize,
    /// Requests that got no answer (transport errors).
    pub unanswered: u64,
    /// Identities of the bots.
    pub bot_identities: std::collections::HashSet<u32>,
}

/// An `Instant` for a Unix-millisecond wall-clock time.
pub fn instant_at(unix_ms: i64) -> Instant {
    let now_instant = Instant::now();
    let now_unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64;
    let delta_us = unix_ms * 1000 - now_unix_us;
    if delta_us >= 0 {
        now_instant + Duration::from_micros(delta_us as u64)
    } else {
        now_instant
            .checked_sub(Duration::from_micros((-delta_us) as u64))
            .unwrap_or(now_instant)
    }
}

impl Burst {
    pub async fn run(self) -> Result<BurstRun, String> {
        let t0 = instant_at(self.t0_unix_ms);
        let host = self.public.to_string();
        let humans: Vec<&Person> = self.people.iter().filter(|p| !p.bot).collect();
        let bots: Vec<&Person> = self.people.iter().filter(|p| p.bot).collect();
        let pool = self.connections.min(humans.len()).max(1);
        let bot_connections = bots.len() * self.bots.connections_per_bot;

        // Requests are formatted before t0, so firing costs only the write.
        let mut queues: Vec<Vec<(u32, usize, Vec<u8>)>> = vec![Vec::new(); pool];
        for (i, p) in humans.iter().enumerate() {
            let body = claim_body(&self.tranche_id, &self.run, p, 0, self.keys);
            queues[i % pool].push((
                p.index,
                p.county,
                http::request("POST", "/v1/claims", &host, None, &body),
            ));
        }

        let connect_started = std::time::Instant::now();
        let mut connections = connect_many(self.public, pool + bot_connections).await?;
        let connect_ms = connect_started.elapsed().as_secs_f64() * 1000.0;
        if Instant::now() >= t0 {
            return Err(format!(
                "opening {} connections took {connect_ms:.0} ms and ran past t0; give a longer --lead-ms",
                pool + bot_connections
            ));
        }
        let opened = connections.len();

        let codes = Arc::new(self.county_codes.clone());
        let mut tasks: JoinSet<TaskResult> = JoinSet::new();
        for queue in queues {
            let conn = connections.pop().expect("one connection per queue");
            let codes = codes.clone();
            let public = self.public;
            tasks.spawn(human_connection(public, conn, queue, t0, codes));
        }
        let bot_start = t0
            .checked_sub(Duration::from_millis(self.bots.lead_ms))
            .unwrap_or(t0);
        for bot in bots {
            let shared = Arc::new(BotState {
                done: AtomicBool::new(false),
                attempts: AtomicU32::new(0),
            });
            for _ in 0..self.bots.connections_per_bot {
                let conn = connections.pop().expect("connections for every bot");
                tasks.spawn(bot_connection(BotTask {
                    conn,
                    person: bot.clone(),
                    tranche_id: self.tranche_id.clone(),
                    run: self.run.clone(),
                    host: host.clone(),
                    keys: self.keys,
                    start: bot_start,
                    t0,
                    max_attempts: self.bots.max_attempts,
                    state: shared.clone(),
                    codes: codes.clone(),
                }));
            }
        }

        let mut out = BurstRun {
            human_samples: Vec::with_capacity(humans.len()),
            bot_samples: Vec::new(),
            wins: Vec::new(),
            connect_ms,
            connections_opened: opened,
            unanswered: 0,
            bot_identities: self
                .people
                .iter()
                .filter(|p| p.bot)
                .map(|p| p.index)
                .collect(),
        };
        while let Some(done) = tasks.join_next().await {
            let r = done.map_err(|e| format!("a connection task failed: {e}"))?;
            out.unanswered += r
                .samples
                .iter()
                .filter(|s| s.outcome == Outcome::TransportError)
                .count() as u64;
            if r.bot {
                out.bot_samples.extend(r.samples);
            } else {
                out.human_samples.extend(r.samples);
            }
            out.wins.extend(r.wins);
        }
        Ok(out)
    }
}

async fn connect_many(addr: SocketAddr, count: usize) -> Result<Vec<Connection>, String> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let wave = CONNECT_CONCURRENCY.min(count - out.len());
        let mut set = JoinSet::new();
        for _ in 0..wave {
            set.spawn(Connection::connect(addr));
        }
        while let Some(c) = set.join_next().await {
            out.push(
                c.map_err(|e| e.to_string())?
                    .map_err(|e| format!("connecting to {addr}: {e}"))?,
            );
        }
    }
    Ok(out)
}

struct TaskResult {
    bot: bool,
    samples: Vec<Sample>,
    /// Each win with its answer time (µs after t0).
    wins: Vec<(Win, u64)>,
}

fn since(t0: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(t0).as_micros() as u64
}

fn win(identity: u32, county: usize, codes: &[u32], body: &[u8]) -> Win {
    Win {
        identity,
        voucher_id: string_field(body, "id").unwrap_or("?").to_owned(),
        // The voucher names its county; fall back to the person's.
        county: string_field(body, "county")
            .map(str::to_owned)
            .unwrap_or_else(|| codes[county].to_string()),
    }
}

async fn human_connection(
    addr: SocketAddr,
    mut conn: Connection,
    queue: Vec<(u32, usize, Vec<u8>)>,
    t0: Instant,
    codes: Arc<Vec<u32>>,
) -> TaskResult {
    let mut out = TaskResult {
        bot: false,
        samples: Vec::with_capacity(queue.len()),
        wins: Vec::new(),
    };
    tokio::time::sleep_until(t0).await;
    let mut broken = false;
    for (identity, county, request) in queue {
        if broken {
            // One reconnect per failure; the person pressed at t0 all the same.
            match Connection::connect(addr).await {
                Ok(c) => {
                    conn = c;
                    broken = false;
                }
                Err(_) => {
                    out.samples.push(transport_error(t0, false));
                    continue;
                }
            }
        }
        match conn.exchange(&request).await {
            Ok(status) => {
                let at = since(t0, Instant::now());
                let outcome = Outcome::classify(status, conn.body());
                if outcome == Outcome::Claimed {
                    out.wins
                        .push((win(identity, county, &codes, conn.body()), at));
                }
                out.samples.push(Sample {
                    answered_at_us: at,
                    latency_us: at,
                    outcome,
                    bot: false,
                });
            }
            Err(_) => {
                broken = true;
                out.samples.push(transport_error(t0, false));
            }
        }
    }
    out
}

fn transport_error(t0: Instant, bot: bool) -> Sample {
    let at = since(t0, Instant::now());
    Sample {
        answered_at_us: at,
        latency_us: at,
        outcome: Outcome::TransportError,
        bot,
    }
}

struct BotState {
    done: AtomicBool,
    attempts: AtomicU32,
}

struct BotTask {
    conn: Connection,
    person: Person,
    tranche_id: String,
    run: String,
    host: String,
    keys: Keys,
    start: Instant,
    t0: Instant,
    max_attempts: u32,
    state: Arc<BotState>,
    codes: Arc<Vec<u32>>,
}

async fn bot_connection(mut task: BotTask) -> TaskResult {
    let mut out = TaskResult {
        bot: true,
        samples: Vec::new(),
        wins: Vec::new(),
    };
    tokio::time::sleep_until(task.start).await;
    while !task.state.done.load(Ordering::Relaxed) {
        let attempt = task.state.attempts.fetch_add(1, Ordering::Relaxed);
        if attempt >= task.max_attempts {
            break;
        }
        let body = claim_body(
            &task.tranche_id,
            &task.run,
            &task.person,
            attempt,
            task.keys,
        );
        let request = http::request("POST", "/v1/claims", &task.host, None, &body);
        let sent = Instant::now();
        let Ok(status) = task.conn.exchange(&request).await else {
            out.samples.push(transport_error(task.t0, true));
            break;
        };
        let now = Instant::now();
        let at = since(task.t0, now);
        let outcome = Outcome::classify(status, task.conn.body());
        out.samples.push(Sample {
            answered_at_us: at,
            latency_us: now.duration_since(sent).as_micros() as u64,
            outcome,
            bot: true,
        });
        match outcome {
            Outcome::NotOpen | Outcome::Overloaded => continue,
            Outcome::Claimed => {
                out.wins.push((
                    win(
                        task.person.index,
                        task.person.county,
                        &task.codes,
                        task.conn.body(),
                    ),
                    at,
                ));
                task.state.done.store(true, Ordering::Relaxed);
            }
            _ => task.state.done.store(true, Ordering::Relaxed),
        }
    }
    out
}
