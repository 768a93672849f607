//! Kill -9 torture: drive the real binary with concurrent claims, SIGKILL it
//! at a random moment (after a seeded number of acknowledged claims, with
//! requests in flight), restart it, and check after every restart:
//! 1. every voucher acknowledged with 201 exists, with the same county and identity;
//! 2. no voucher ID and no identity appears twice in a tranche;
//! 3. issued + remaining = quota for every county;
//! 4. the server answers again within a bounded time.
//!
//! Snapshots are taken every 30 records, so restarts exercise snapshot +
//! WAL-tail recovery and kills land mid-snapshot too.
//!
//! `VOUCHERD_TORTURE_CYCLES` sets the number of cycles (default 30);
//! `VOUCHERD_TEST_SEED` replays a run. Prints one summary line.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use support::*;

const DEFAULT_CYCLES: usize = 30;
const CLIENTS: usize = 4;
/// Cycles that share one tranche before a fresh one is created, so runs
/// exercise both issuing and selling out.
const CYCLES_PER_TRANCHE: usize = 4;
const QUOTA_PER_COUNTY: u32 = 40;
/// Most claims a client sends in one cycle (the kill normally comes first).
const MAX_CLAIMS_PER_CLIENT_PER_CYCLE: usize = 400;
/// Known vouchers re-checked in full after each restart (all of them at the end).
const SAMPLE_CHECKS_PER_CYCLE: usize = 40;
/// A restarted daemon must answer within this.
const RESTART_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Claim {
    tranche: String,
    user: String,
    request: String,
    lng: f64,
    lat: f64,
}

impl Claim {
    fn body(&self) -> Vec<u8> {
        claim_body(&self.tranche, &self.user, &self.request, self.lng, self.lat)
            .to_string()
            .into_bytes()
    }
}

#[derive(Clone, Debug)]
struct Known {
    claim: Claim,
    voucher_id: String,
    county: String,
}

/// What the clients have learnt, shared between client threads.
#[derive(Default)]
struct Ledger {
    /// user → the voucher the server bound to them (from a 201, 200 or 409).
    vouchers: HashMap<String, Known>,
    /// Sent but unanswered when the daemon died: resolved after the restart.
    in_flight: Vec<Claim>,
    /// Users whose claim was refused as sold out (they hold nothing).
    sold_out: HashSet<String>,
    acknowledged: usize,
}

fn splitmix(state: &mut u64) -> u64 {
    voucherd::core::rng::splitmix_next(state)
}

fn voucher_of(reply: &Reply) -> (String, String) {
    let v = &reply.json()["voucher"];
    (
        v["id"].as_str().expect("id").to_owned(),
        v["county"].as_str().expect("county").to_owned(),
    )
}

/// Records an answer in the ledger, checking it against what is already known.
fn record(ledger: &Mutex<Ledger>, claim: &Claim, reply: &Reply) {
    let mut l = ledger.lock();
    match reply.status {
        201 | 200 => {
            let (id, county) = voucher_of(reply);
            if reply.status == 201 {
                l.acknowledged += 1;
            }
            if let Some(previous) = l.vouchers.get(&claim.user) {
                assert_eq!(
                    previous.voucher_id, id,
                    "identity {} holds two vouchers",
                    claim.user
                );
            }
            l.vouchers.insert(
                claim.user.clone(),
                Known {
                    claim: claim.clone(),
                    voucher_id: id,
                    county,
                },
            );
        }
        409 => {
            let (id, _) = voucher_of(reply);
            let known = l
                .vouchers
                .get(&claim.user)
                .unwrap_or_else(|| panic!("409 for {} who holds nothing we know of", claim.user));
            assert_eq!(
                known.voucher_id, id,
                "409 shows another voucher for {}",
                claim.user
            );
        }
        410 => {
            assert_eq!(reply.json()["outcome"], "sold_out", "{}", reply.text());
            l.sold_out.insert(claim.user.clone());
        }
        other => panic!("unexpected {other}: {}", reply.text()),
    }
}

/// One cycle of load: clients claim until the killer has seen `kill_after` acknowledgements.
fn load_and_kill(
    daemon: Daemon,
    ledger: &Mutex<Ledger>,
    tranche: &str,
    cycle: usize,
    seed: u64,
    kill_after: usize,
) {
    let points = county_points();
    let acked = AtomicUsize::new(0);
    let dead = AtomicBool::new(false);
    let addr = daemon.public;
    std::thread::scope(|scope| {
        for t in 0..CLIENTS {
            let points = &points;
            let acked = &acked;
            let dead = &dead;
            scope.spawn(move || {
                let mut rng = seed ^ ((cycle as u64) << 20) ^ t as u64;
                let mut client = Client::new(addr);
                for n in 0..MAX_CLAIMS_PER_CLIENT_PER_CYCLE {
                    if dead.load(Ordering::Acquire) {
                        break;
                    }
                    // One in ten presses comes from someone who already holds a voucher.
                    let holder = splitmix(&mut rng)
                        .is_multiple_of(10)
                        .then(|| {
                            let l = ledger.lock();
                            let pick = splitmix(&mut rng) as usize % l.vouchers.len().max(1);
                            l.vouchers
                                .values()
                                .nth(pick)
                                .filter(|k| k.claim.tranche == tranche)
                                .cloned()
                        })
                        .flatten();
                    let claim = match holder {
                        Some(k) => Claim {
                            request: format!("{}-again-{cycle}-{n}", k.claim.request),
                            ..k.claim
                        },
                        None => {
                            let (_, lng, lat) = points[splitmix(&mut rng) as usize % points.len()];
                            Claim {
                                tranche: tranche.to_owned(),
                                user: format!("c{cycle}-t{t}-n{n}"),
                                request: format!("r{cycle}-t{t}-n{n}"),
                                lng,
                                lat,
                            }
                        }
                    };
                    match client.try_request("POST", "/v1/claims", &claim.body()) {
                        Some(reply) => {
                            record(ledger, &claim, &reply);
                            if reply.status == 201 {
                                acked.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        None => {
                            ledger.lock().in_flight.push(claim);
                            break;
                        }
                    }
                }
            });
        }
        // The killer: waits for a seeded number of acknowledgements (an event,
        // not a clock), then SIGKILLs with the clients' requests in flight.
        let deadline = Instant::now() + IO_DEADLINE;
        while acked.load(Ordering::Acquire) < kill_after && Instant::now() < deadline {
            let sold_out = ledger.lock().sold_out.len();
            if sold_out > CLIENTS * 4 {
                break;
            }
            std::thread::yield_now();
        }
        daemon.kill();
        dead.store(true, Ordering::Release);
    });
}

/// After a restart: settle every in-flight claim by retrying it, then check the invariants.
fn recover_and_check(
    daemon: &Daemon,
    ledger: &Mutex<Ledger>,
    quotas: &HashMap<String, u32>,
    seed: u64,
    all: bool,
) {
    let mut client = daemon.client();
    let in_flight = std::mem::take(&mut ledger.lock().in_flight);
    for claim in in_flight {
        let reply = client
            .try_request("POST", "/v1/claims", &claim.body())
            .expect("restarted daemon answers");
        record(ledger, &claim, &reply);
    }
    let l = ledger.lock();
    // 2. IDs are unique across every identity we know.
    let ids: HashSet<&str> = l.vouchers.values().map(|k| k.voucher_id.as_str()).collect();
    assert_eq!(ids.len(), l.vouchers.len(), "a voucher ID was issued twice");
    // 3. issued + remaining = quota, per tranche and county, with issued = the vouchers we know.
    let mut issued: HashMap<(String, String), u32> = HashMap::new();
    for k in l.vouchers.values() {
        *issued
            .entry((k.claim.tranche.clone(), k.county.clone()))
            .or_default() += 1;
    }
    let tranches: HashSet<&str> = l
        .vouchers
        .values()
        .map(|k| k.claim.tranche.as_str())
        .collect();
    for tranche in tranches {
        let view: Value = client.get(&format!("/v1/tranches/{tranche}")).json();
        for county in view["counties"].as_array().expect("counties") {
            let code = county["county"].as_str().expect("county").to_owned();
            let remaining = county["remaining"].as_u64().expect("remaining") as u32;
            let known = issued
                .get(&(tranche.to_owned(), code.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                known + remaining,
                quotas[&code],
                "tranche {tranche} county {code}: issued {known} + remaining {remaining} != quota"
            );
        }
    }
    // 1. Acknowledged vouchers exist, with the same county and identity.
    let mut rng = seed;
    let known: Vec<&Known> = l.vouchers.values().collect();
    let checks = if all {
        known.len()
    } else {
        SAMPLE_CHECKS_PER_CYCLE.min(known.len())
    };
    for i in 0..checks {
        let k = if all {
            known[i]
        } else {
            known[splitmix(&mut rng) as usize % known.len()]
        };
        let got = client.get(&format!("/v1/vouchers/{}", k.voucher_id));
        assert_eq!(
            got.status, 200,
            "acknowledged voucher {} lost",
            k.voucher_id
        );
        assert_eq!(got.json()["voucher"]["county"], k.county.as_str());
        let replay = client
            .try_request("POST", "/v1/claims", &k.claim.body())
            .expect("answer");
        assert!(matches!(replay.status, 200 | 409), "{}", replay.text());
        assert_eq!(
            voucher_of(&replay).0,
            k.voucher_id,
            "identity {} is bound to another voucher",
            k.claim.user
        );
    }
}

#[test]
fn kill_9_torture() {
    let cycles: usize = env_or("VOUCHERD_TORTURE_CYCLES", DEFAULT_CYCLES);
    let seed: u64 = env_or("VOUCHERD_TEST_SEED", 0x7077_0e57);
    println!("torture seed {seed}, {cycles} cycles");
    let dir = tempfile::tempdir().expect("tempdir");
    // Frequent snapshots, so kills also land while one is being written.
    let config = TestConfig {
        checkpoint_every_records: 30,
        checkpoint_check_interval_ms: 10,
        ..TestConfig::default()
    };
    let quotas: HashMap<String, u32> = COUNTIES
        .iter()
        .map(|(c, _)| (c.to_string(), QUOTA_PER_COUNTY))
        .collect();
    let quota_list: Vec<(u32, u32)> = COUNTIES
        .iter()
        .map(|(c, _)| (*c, QUOTA_PER_COUNTY))
        .collect();
    let ledger = Mutex::new(Ledger::default());
    let mut rng = seed;
    let mut slowest_restart = Duration::ZERO;
    for cycle in 0..cycles {
        let started = Instant::now();
        let daemon = start(dir.path(), &config);
        let restart = started.elapsed();
        assert!(
            restart < RESTART_BOUND,
            "cycle {cycle}: restart took {restart:?}"
        );
        slowest_restart = slowest_restart.max(restart);
        recover_and_check(&daemon, &ledger, &quotas, splitmix(&mut rng), false);
        let tranche = format!("t{}", cycle / CYCLES_PER_TRANCHE);
        if cycle % CYCLES_PER_TRANCHE == 0 {
            daemon.create_tranche(&tranche, &open_tranche_body(&quota_list));
        }
        let kill_after = 1 + splitmix(&mut rng) as usize % 120;
        load_and_kill(daemon, &ledger, &tranche, cycle, seed, kill_after);
    }
    let daemon = start(dir.path(), &config);
    recover_and_check(&daemon, &ledger, &quotas, seed, true);
    let l = ledger.lock();
    println!(
        "torture: cycles {cycles}, claims acknowledged {}, vouchers verified {}, lost 0, duplicates 0, slowest restart {} ms",
        l.acknowledged,
        l.vouchers.len(),
        slowest_restart.as_millis()
    );
    assert!(
        l.acknowledged > cycles,
        "the load must actually claim vouchers"
    );
}
