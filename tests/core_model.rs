//! Model test of the claim core: random interleavings of claims (duplicate
//! identities, retries, reused request IDs, quota edges, pause/resume, times
//! before/inside/after the window) run against a deliberately simple reference
//! model. Outcomes must be identical and quotas never exceeded. Replaying the
//! resulting events into a fresh book must give the same state.

use std::collections::HashMap;

use proptest::prelude::*;
use voucherd::core::{
    ClaimCommand, ClaimDecision, CountyCode, Crs, DigestKey, IdentityKeys, Location, Refusal,
    TrancheBook, TrancheControl, TrancheSpec, UnixMillis,
};

const OPENS_AT: i64 = 1_000;
const CLOSES_AT: i64 = 2_000;
const COUNTIES: [u32; 3] = [420502, 420503, 420506];
const COUNTY_NOT_IN_TRANCHE: u32 = 420581;

#[derive(Clone, Debug)]
struct Claim {
    user: u8,
    id_hash: Option<u8>,
    phone_hash: Option<u8>,
    device: Option<u8>,
    /// 0..3 index into COUNTIES, 3 = a county without quota, 4 = outside.
    county: u8,
    request: u8,
    time: i64,
}

#[derive(Clone, Debug)]
enum Op {
    Claim(Claim),
    Control(TrancheControl),
}

fn claim_strategy() -> impl Strategy<Value = Claim> {
    (
        0u8..10,
        proptest::option::of(0u8..6),
        proptest::option::of(0u8..6),
        proptest::option::of(0u8..6),
        prop_oneof![8 => 0u8..3, 1 => Just(3u8), 1 => Just(4u8)],
        0u8..24,
        prop_oneof![1 => 0i64..OPENS_AT, 8 => OPENS_AT..CLOSES_AT, 1 => CLOSES_AT..3_000],
    )
        .prop_map(
            |(user, id_hash, phone_hash, device, county, request, time)| Claim {
                user,
                id_hash,
                phone_hash,
                device,
                county,
                request,
                time,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => claim_strategy().prop_map(Op::Claim),
        1 => Just(Op::Control(TrancheControl::Pause)),
        1 => Just(Op::Control(TrancheControl::Resume)),
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Issued { voucher: usize, county: u32 },
    Replay { voucher: usize },
    AlreadyClaimed { voucher: usize },
    Refused(Refusal),
}

fn county_of(claim: &Claim) -> Option<u32> {
    match claim.county {
        i @ 0..=2 => Some(COUNTIES[i as usize]),
        3 => Some(COUNTY_NOT_IN_TRANCHE),
        _ => None,
    }
}

fn fingerprint(claim: &Claim) -> u128 {
    // Distinct claims bodies give distinct fingerprints; time is not part of a body.
    let parts = [
        claim.user as u128,
        claim.id_hash.map_or(255, u128::from),
        claim.phone_hash.map_or(255, u128::from),
        claim.device.map_or(255, u128::from),
        claim.county as u128,
    ];
    parts.iter().fold(0u128, |acc, p| acc * 256 + p)
}

/// The reference model: plain maps and obvious rules.
struct Model {
    quotas: HashMap<u32, u32>,
    issued: HashMap<u32, u32>,
    holders: HashMap<String, usize>,
    requests: HashMap<u8, (u128, usize)>,
    vouchers: usize,
    paused: bool,
}

impl Model {
    fn claim(&mut self, c: &Claim) -> Outcome {
        if let Some(&(fp, voucher)) = self.requests.get(&c.request) {
            return if fp == fingerprint(c) {
                Outcome::Replay { voucher }
            } else {
                Outcome::Refused(Refusal::RequestIdReused)
            };
        }
        if c.time < OPENS_AT {
            return Outcome::Refused(Refusal::NotOpen {
                opens_at: UnixMillis(OPENS_AT),
            });
        }
        if c.time >= CLOSES_AT {
            return Outcome::Refused(Refusal::Closed);
        }
        if self.paused {
            return Outcome::Refused(Refusal::Paused);
        }
        let Some(county) = county_of(c) else {
            return Outcome::Refused(Refusal::OutsideArea);
        };
        let Some(&quota) = self.quotas.get(&county) else {
            return Outcome::Refused(Refusal::CountyNotInTranche {
                county: CountyCode(county),
            });
        };
        let keys = model_keys(c);
        if let Some(&voucher) = keys.iter().find_map(|k| self.holders.get(k)) {
            return Outcome::AlreadyClaimed { voucher };
        }
        let issued = self.issued.entry(county).or_default();
        if *issued >= quota {
            return Outcome::Refused(Refusal::SoldOut);
        }
        *issued += 1;
        let voucher = self.vouchers;
        self.vouchers += 1;
        for key in keys {
            self.holders.insert(key, voucher);
        }
        self.requests.insert(c.request, (fingerprint(c), voucher));
        Outcome::Issued { voucher, county }
    }
}

fn model_keys(c: &Claim) -> Vec<String> {
    let mut keys = vec![format!("u{}", c.user)];
    keys.extend(c.id_hash.map(|v| format!("i{v}")));
    keys.extend(c.phone_hash.map(|v| format!("p{v}")));
    keys.extend(c.device.map(|v| format!("d{v}")));
    keys
}

fn spec(quotas: &[u32; 3]) -> TrancheSpec {
    TrancheSpec {
        tranche_id: "t1".into(),
        campaign_id: "c1".into(),
        opens_at: UnixMillis(OPENS_AT),
        closes_at: UnixMillis(CLOSES_AT),
        expires_at: UnixMillis(10_000),
        face_value_fen: 2_000,
        threshold_fen: 10_000,
        quotas: COUNTIES
            .iter()
            .copied()
            .map(CountyCode)
            .zip(quotas.iter().copied())
            .collect(),
        redeem_anywhere_in_city: false,
        industries: Vec::new(),
    }
}

fn run(quotas: [u32; 3], ops: Vec<Op>, entropy_seed: u64) {
    let key = DigestKey::new(11, 22);
    let mut book = TrancheBook::new(0, spec(&quotas), key, 0);
    let mut model = Model {
        quotas: COUNTIES
            .iter()
            .copied()
            .zip(quotas.iter().copied())
            .collect(),
        issued: HashMap::new(),
        holders: HashMap::new(),
        requests: HashMap::new(),
        vouchers: 0,
        paused: false,
    };
    let mut log = Vec::new();
    let mut entropy = entropy_seed;
    for (seq, op) in ops.iter().enumerate() {
        let seq = seq as u64 + 1;
        match op {
            Op::Control(control) => {
                book.apply_event(
                    std::sync::Arc::new(voucherd::core::Event::TrancheControlled {
                        tranche_id: "t1".into(),
                        control: *control,
                        at: UnixMillis(0),
                    }),
                    seq,
                );
                model.paused = *control == TrancheControl::Pause;
                log.push(Op::Control(*control));
            }
            Op::Claim(c) => {
                let user = format!("user-{}", c.user);
                let id_hash = c.id_hash.map(|v| format!("{v:064x}"));
                let phone_hash = c.phone_hash.map(|v| format!("{:064x}", 1000 + v as u32));
                let device = c.device.map(|v| format!("dev-{v}"));
                let request = format!("req-{}", c.request);
                // Low-entropy source on purpose: exercises the voucher ID collision path.
                entropy = entropy.wrapping_mul(6364136223846793005).wrapping_add(1) % 7;
                let command = ClaimCommand {
                    identity: IdentityKeys {
                        user_id: &user,
                        id_hash: id_hash.as_deref(),
                        phone_hash: phone_hash.as_deref(),
                        device_id: device.as_deref(),
                    },
                    request_id: &request,
                    request_fingerprint: fingerprint(c),
                    county: county_of(c).map(CountyCode),
                    location: Location {
                        lng: 111.3,
                        lat: 30.7,
                        crs: Crs::Gcj02,
                    },
                    entropy,
                };
                let got = match book.decide_claim(&command, UnixMillis(c.time)) {
                    ClaimDecision::Issue { event, digests } => {
                        let county = event.county.0;
                        let index = book.apply_claim(event, &digests, seq);
                        log.push(Op::Claim(c.clone()));
                        Outcome::Issued {
                            voucher: index as usize,
                            county,
                        }
                    }
                    ClaimDecision::Replay { voucher_index } => Outcome::Replay {
                        voucher: voucher_index as usize,
                    },
                    ClaimDecision::AlreadyClaimed { voucher_index } => Outcome::AlreadyClaimed {
                        voucher: voucher_index as usize,
                    },
                    ClaimDecision::Refused(r) => Outcome::Refused(r),
                };
                let want = model.claim(c);
                assert_eq!(got, want, "op {seq}: {c:?}");
            }
        }
        book.check_invariants();
        for stock in book.counties() {
            assert!(stock.issued <= stock.quota);
            assert_eq!(
                stock.issued,
                *model.issued.get(&stock.county.0).unwrap_or(&0)
            );
        }
    }
    assert_eq!(book.voucher_count(), model.vouchers);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn claims_match_the_reference_model(
        quotas in [0u32..4, 0u32..4, 0u32..6],
        ops in proptest::collection::vec(op_strategy(), 1..200),
        entropy_seed in any::<u64>(),
    ) {
        run(quotas, ops, entropy_seed);
    }
}

/// Events replayed into a fresh book rebuild exactly the same state.
#[test]
fn replay_rebuilds_identical_state() {
    let key = DigestKey::new(1, 2);
    let mut live = TrancheBook::new(0, spec(&[5, 5, 5]), key, 0);
    let mut events = Vec::new();
    for i in 0..40u32 {
        let user = format!("u{}", i % 25);
        let request = format!("r{i}");
        let command = ClaimCommand {
            identity: IdentityKeys {
                user_id: &user,
                id_hash: None,
                phone_hash: None,
                device_id: None,
            },
            request_id: &request,
            request_fingerprint: u128::from(i),
            county: Some(CountyCode(COUNTIES[(i % 3) as usize])),
            location: Location {
                lng: 111.3,
                lat: 30.7,
                crs: Crs::Wgs84,
            },
            entropy: u64::from(i) * 7919,
        };
        if let ClaimDecision::Issue { event, digests } =
            live.decide_claim(&command, UnixMillis(1_500))
        {
            // The definition is seq 0; each claim record comes after it.
            let seq = u64::from(i) + 1;
            events.push((seq, event.clone()));
            live.apply_claim(event, &digests, seq);
        }
    }
    assert_eq!(events.len(), 15, "three counties of five");
    // A different process has a different digest key; state must not depend on it.
    let mut replayed = TrancheBook::new(0, spec(&[5, 5, 5]), DigestKey::new(9, 9), 0);
    for (seq, event) in events {
        replayed.replay_claim(event, seq).expect("replays");
    }
    replayed.check_invariants();
    assert!(replayed.vouchers().eq(live.vouchers()));
    assert_eq!(replayed.counties(), live.counties());
}
