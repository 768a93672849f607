//! A concurrent release burst against the real binary over loopback:
//! 64 connections, 20,000 distinct identities, 1,000 vouchers across the 13
//! counties. Exactly the quota is issued, per county and in total, no identity
//! gets two vouchers and no voucher ID repeats. Then a retry wave: every
//! winner's retry replays its own voucher, and a new request from a winner is
//! `already_claimed`.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use support::*;

const CONNECTIONS: usize = 64;
const IDENTITIES: usize = 20_000;
const TOTAL_QUOTA: u32 = 1_000;

#[derive(Clone, Debug)]
struct Result {
    identity: usize,
    status: u16,
    voucher: Option<(String, String)>,
}

#[test]
fn burst_issues_exactly_the_quota() {
    let seed: u64 = env_or("VOUCHERD_TEST_SEED", 0x5eed_2026);
    println!("burst seed {seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), &TestConfig::default());
    let points = county_points();
    let per_county = TOTAL_QUOTA / points.len() as u32;
    let mut quotas: Vec<(u32, u32)> = points.iter().map(|(c, _, _)| (*c, per_county)).collect();
    quotas[0].1 += TOTAL_QUOTA - per_county * points.len() as u32;
    daemon.create_tranche("burst", &open_tranche_body(&quotas));
    let quota_of: HashMap<String, u32> = quotas.iter().map(|(c, q)| (c.to_string(), *q)).collect();

    // Identity i claims from a county chosen by a seeded hash.
    let county_count = points.len() as u64;
    let county_for =
        move |i: usize| -> usize { (splitmix(seed ^ i as u64) % county_count) as usize };
    let points = Arc::new(points);
    let addr = daemon.public;
    let results: Vec<Result> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|t| {
                let points = points.clone();
                scope.spawn(move || {
                    let mut client = Client::new(addr);
                    let mut out = Vec::new();
                    for i in (t..IDENTITIES).step_by(CONNECTIONS) {
                        let (_, lng, lat) = points[county_for(i)];
                        let reply = client.claim(&claim_body(
                            "burst",
                            &format!("user-{i}"),
                            &format!("req-{i}"),
                            lng,
                            lat,
                        ));
                        let voucher = (reply.status == 201).then(|| {
                            let v = &reply.json()["voucher"];
                            (
                                v["id"].as_str().expect("id").to_owned(),
                                v["county"].as_str().expect("county").to_owned(),
                            )
                        });
                        assert!(
                            matches!(reply.status, 201 | 410),
                            "unexpected {}: {}",
                            reply.status,
                            reply.text()
                        );
                        out.push(Result {
                            identity: i,
                            status: reply.status,
                            voucher,
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });

    assert_eq!(results.len(), IDENTITIES);
    let winners: Vec<&Result> = results.iter().filter(|r| r.status == 201).collect();
    let ids: HashSet<&str> = winners
        .iter()
        .map(|r| r.voucher.as_ref().expect("voucher").0.as_str())
        .collect();
    let identities: HashSet<usize> = winners.iter().map(|r| r.identity).collect();
    let mut per_county: HashMap<&str, u32> = HashMap::new();
    for w in &winners {
        *per_county
            .entry(w.voucher.as_ref().expect("voucher").1.as_str())
            .or_default() += 1;
    }
    println!(
        "burst: {} requests, {} vouchers issued, {} sold_out",
        results.len(),
        winners.len(),
        results.len() - winners.len()
    );
    assert_eq!(
        winners.len(),
        TOTAL_QUOTA as usize,
        "exactly the quota is issued"
    );
    assert_eq!(ids.len(), winners.len(), "voucher IDs are unique");
    assert_eq!(identities.len(), winners.len(), "no identity twice");
    for (county, issued) in &per_county {
        assert!(
            *issued <= quota_of[*county],
            "county {county} over quota: {issued}"
        );
    }
    let tranche = daemon.client().get("/v1/tranches/burst").json();
    assert_eq!(tranche["state"], "sold_out");
    for county in tranche["counties"].as_array().expect("counties") {
        let code = county["county"].as_str().expect("county");
        assert_eq!(county["remaining"], 0, "county {code}");
        assert_eq!(
            per_county.get(code).copied().unwrap_or(0),
            quota_of[code],
            "issued + remaining = quota for {code}"
        );
    }

    // Retry wave: replays and duplicates, concurrently.
    let winners: Vec<Result> = winners.into_iter().cloned().collect();
    std::thread::scope(|scope| {
        for chunk in winners.chunks(winners.len().div_ceil(CONNECTIONS)) {
            let points = points.clone();
            scope.spawn(move || {
                let mut client = Client::new(addr);
                for w in chunk {
                    let i = w.identity;
                    let (_, lng, lat) = points[county_for(i)];
                    let id = &w.voucher.as_ref().expect("voucher").0;
                    let replay = client.claim(&claim_body(
                        "burst",
                        &format!("user-{i}"),
                        &format!("req-{i}"),
                        lng,
                        lat,
                    ));
                    assert_eq!(replay.status, 200, "{}", replay.text());
                    assert_eq!(replay.json()["voucher"]["id"], id.as_str());
                    let dup = client.claim(&claim_body(
                        "burst",
                        &format!("user-{i}"),
                        &format!("again-{i}"),
                        lng,
                        lat,
                    ));
                    assert_eq!(dup.status, 409, "{}", dup.text());
                    assert_eq!(dup.json()["voucher"]["id"], id.as_str());
                }
            });
        }
    });
}

fn splitmix(x: u64) -> u64 {
    voucherd::core::rng::splitmix64(x)
}
