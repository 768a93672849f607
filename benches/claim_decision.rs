//! The in-memory claim decision: `decide_claim` + `apply_claim` on one
//! tranche, one core, no HTTP and no WAL. Reported as claims per second.
//!
//!     cargo bench --bench claim_decision -- --warm-up-time 1 --measurement-time 5

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use voucherd::core::{
    ClaimCommand, ClaimDecision, CountyCode, Crs, DigestKey, IdentityKeys, Location, TrancheBook,
    TrancheSpec, UnixMillis,
};

const CLAIMS_PER_ITERATION: usize = 100_000;
const COUNTIES: [u32; 4] = [420502, 420503, 420506, 420581];

struct Claim {
    user: String,
    device: String,
    request: String,
    county: CountyCode,
}

fn claims(prefix: &str) -> Vec<Claim> {
    (0..CLAIMS_PER_ITERATION)
        .map(|i| Claim {
            user: format!("{prefix}-user-{i:08}"),
            device: format!("{prefix}-device-{i:08}"),
            request: format!("{prefix}-request-{i:08}"),
            county: CountyCode(COUNTIES[i % COUNTIES.len()]),
        })
        .collect()
}

fn book(quota_per_county: u32) -> TrancheBook {
    TrancheBook::new(
        0,
        TrancheSpec {
            tranche_id: "bench".into(),
            campaign_id: "c".into(),
            opens_at: UnixMillis(0),
            closes_at: UnixMillis(i64::MAX / 2),
            expires_at: UnixMillis(i64::MAX / 2),
            face_value_fen: 2_000,
            threshold_fen: 10_000,
            quotas: COUNTIES
                .iter()
                .map(|c| (CountyCode(*c), quota_per_county))
                .collect(),
            redeem_anywhere_in_city: false,
            industries: Vec::new(),
        },
        DigestKey::new(0x1234, 0x5678),
        0,
    )
}

fn command<'a>(claim: &'a Claim, entropy: u64) -> ClaimCommand<'a> {
    ClaimCommand {
        identity: IdentityKeys {
            user_id: &claim.user,
            id_hash: None,
            phone_hash: None,
            device_id: Some(&claim.device),
        },
        request_id: &claim.request,
        request_fingerprint: u128::from(entropy),
        county: Some(claim.county),
        location: Location {
            lng: 111.3,
            lat: 30.7,
            crs: Crs::Gcj02,
        },
        entropy,
    }
}

/// Decides and applies every claim; returns how many were issued.
fn run(book: &mut TrancheBook, claims: &[Claim]) -> usize {
    let now = UnixMillis(1);
    let mut issued = 0;
    for (i, claim) in claims.iter().enumerate() {
        let entropy = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if let ClaimDecision::Issue { event, digests } =
            book.decide_claim(&command(claim, entropy), now)
        {
            book.apply_claim(event, &digests, i as u64 + 1);
            issued += 1;
        }
    }
    issued
}

fn bench(c: &mut Criterion) {
    let fresh = claims("a");
    let mut group = c.benchmark_group("claim_decision");
    group.throughput(Throughput::Elements(CLAIMS_PER_ITERATION as u64));
    group.sample_size(20);
    group.bench_function("issue_unique_identities", |b| {
        b.iter_batched(
            || book(1_000_000),
            |mut book| {
                assert_eq!(run(&mut book, &fresh), CLAIMS_PER_ITERATION);
                book
            },
            BatchSize::LargeInput,
        )
    });
    // Where an issuing claim's time goes: the decision alone (no apply: nothing is written to
    // the book, so each claim meets the same empty indexes), and the keyed digests alone.
    group.bench_function("decide_issue_only", |b| {
        b.iter_batched(
            || book(1_000_000),
            |book| {
                let now = UnixMillis(1);
                let mut issued = 0;
                for (i, claim) in fresh.iter().enumerate() {
                    let entropy = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let decision = book.decide_claim(&command(claim, entropy), now);
                    issued += usize::from(matches!(decision, ClaimDecision::Issue { .. }));
                }
                assert_eq!(issued, CLAIMS_PER_ITERATION);
                book
            },
            BatchSize::LargeInput,
        )
    });
    let digest_key = DigestKey::new(0x1234, 0x5678);
    group.bench_function("identity_and_request_digests", |b| {
        b.iter(|| {
            for claim in &fresh {
                let command = command(claim, 0);
                black_box(digest_key.identity_digests(&command.identity));
                black_box(digest_key.request_digest(command.request_id));
            }
        })
    });
    // After the release instant most presses are refusals: the county is empty.
    let mut sold_out = book(10);
    run(&mut sold_out, &claims("warm"));
    group.bench_function("refuse_sold_out", |b| {
        b.iter(|| black_box(run(&mut sold_out, &fresh)))
    });
    // And retries of the same people: already claimed.
    let mut held = book(1_000_000);
    run(&mut held, &fresh);
    let again: Vec<Claim> = fresh
        .iter()
        .map(|c| Claim {
            request: format!("{}-retry", c.request),
            user: c.user.clone(),
            device: c.device.clone(),
            county: c.county,
        })
        .collect();
    group.bench_function("refuse_already_claimed", |b| {
        b.iter(|| black_box(run(&mut held, &again)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
