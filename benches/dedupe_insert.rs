//! Identity dedupe on its own: the keyed digests of a claim's identity keys
//! and their check-and-insert into a tranche's holder map, as `decide_claim`
//! and `apply_claim` do it (same digest key type, same hasher, same presizing).
//! Reported per claim (2 keys: user ID and device ID; or 3 with a phone hash).
//! The `_touched` case inserts into a map whose memory was written once
//! before, which shows how much of a fresh map's cost is first-touch page faults.
//!
//!     cargo bench --bench dedupe_insert -- --warm-up-time 1 --measurement-time 5

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use voucherd::core::identity::{DigestHasherBuilder, IdentityDigests};
use voucherd::core::{DigestKey, IdentityKeys, KeyDigest};

const CLAIMS_PER_ITERATION: usize = 100_000;
/// Maps are presized like a tranche of a million vouchers (see `TrancheBook::new`).
const PRESIZED_KEYS: usize = 2 << 20;

struct Claim {
    user: String,
    device: String,
    phone: String,
}

fn claims(prefix: &str) -> Vec<Claim> {
    (0..CLAIMS_PER_ITERATION)
        .map(|i| Claim {
            user: format!("{prefix}-user-{i:08}"),
            device: format!("{prefix}-device-{i:08}"),
            phone: format!(
                "{:064x}",
                (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            ),
        })
        .collect()
}

fn keys(claim: &Claim, with_phone: bool) -> IdentityKeys<'_> {
    IdentityKeys {
        user_id: &claim.user,
        id_hash: None,
        phone_hash: with_phone.then_some(claim.phone.as_str()),
        device_id: Some(&claim.device),
    }
}

type Holders = HashMap<KeyDigest, u32, DigestHasherBuilder>;

fn holders() -> Holders {
    HashMap::with_capacity_and_hasher(PRESIZED_KEYS, DigestHasherBuilder)
}

/// A presized map whose memory has been touched once (filled, then cleared):
/// what the inserts cost without first-touch page faults.
fn holders_touched() -> Holders {
    let mut map = holders();
    let mut x = 0u64;
    for _ in 0..PRESIZED_KEYS {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        map.insert(
            KeyDigest(u128::from(x.wrapping_mul(0xbf58_476d_1ce4_e5b9))),
            0,
        );
    }
    map.clear();
    map
}

/// Check every key, then insert them all: the dedupe part of one claim.
fn check_and_insert(map: &mut Holders, digests: &IdentityDigests, index: u32) -> bool {
    if digests.as_slice().iter().any(|d| map.contains_key(d)) {
        return false;
    }
    for d in digests.as_slice() {
        map.insert(*d, index);
    }
    true
}

fn bench(c: &mut Criterion) {
    let key = DigestKey::new(0x1234, 0x5678);
    let fresh = claims("a");
    let mut group = c.benchmark_group("dedupe");
    group.throughput(Throughput::Elements(CLAIMS_PER_ITERATION as u64));
    group.sample_size(20);

    group.bench_function("digests_user_device", |b| {
        b.iter(|| {
            for claim in &fresh {
                black_box(key.identity_digests(&keys(claim, false)));
            }
        })
    });
    let digests: Vec<IdentityDigests> = fresh
        .iter()
        .map(|c| key.identity_digests(&keys(c, false)))
        .collect();
    group.bench_function("check_and_insert_2_keys_presized", |b| {
        b.iter_batched(
            holders,
            |mut map| {
                for (i, d) in digests.iter().enumerate() {
                    assert!(check_and_insert(&mut map, d, i as u32));
                }
                map
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("check_and_insert_2_keys_presized_touched", |b| {
        b.iter_batched(
            holders_touched,
            |mut map| {
                for (i, d) in digests.iter().enumerate() {
                    assert!(check_and_insert(&mut map, d, i as u32));
                }
                map
            },
            BatchSize::LargeInput,
        )
    });
    let mut full = holders();
    for (i, d) in digests.iter().enumerate() {
        check_and_insert(&mut full, d, i as u32);
    }
    group.bench_function("check_hit_already_claimed", |b| {
        b.iter(|| {
            for d in &digests {
                black_box(check_and_insert(&mut full, d, 0));
            }
        })
    });
    group.bench_function("digest_check_insert_3_keys", |b| {
        b.iter_batched(
            holders,
            |mut map| {
                for (i, claim) in fresh.iter().enumerate() {
                    let d = key.identity_digests(&keys(claim, true));
                    assert!(check_and_insert(&mut map, &d, i as u32));
                }
                map
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
