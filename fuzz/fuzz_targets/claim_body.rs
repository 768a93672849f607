//! Fuzz target: `voucherd::api::parse_claim`, the validation of a `POST /v1/claims` body.
//!
//! It must never panic, whatever the bytes. When it accepts, the claim keeps the promises the
//! rest of the daemon relies on (see `src/api/claims.rs`): IDs within their length limits and
//! made of the allowed characters, hashes lowercase hex of 32 to 128 characters, coordinates
//! finite and in range. An accepted claim must also go through the journal (whose encoder
//! asserts its own field limits) and come back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use voucherd::api::{
    MAX_DEVICE_ID_BYTES, MAX_HASH_HEX_CHARS, MAX_REQUEST_ID_BYTES, MAX_USER_ID_BYTES,
    MIN_HASH_HEX_CHARS, parse_claim,
};
use voucherd::core::catalog::{MAX_OBJECT_ID_BYTES, check_object_id};
use voucherd::core::{ClaimFields, CountyCode, Event, UnixMillis, VoucherClaimed};
use voucherd::journal;

fuzz_target!(|data: &[u8]| {
    let Ok(claim) = parse_claim(data) else {
        return;
    };

    assert!(check_object_id(&claim.tranche_id).is_ok());
    assert!((1..=MAX_OBJECT_ID_BYTES).contains(&claim.tranche_id.len()));
    assert_token(&claim.user_id, MAX_USER_ID_BYTES);
    assert_token(&claim.request_id, MAX_REQUEST_ID_BYTES);
    if let Some(device) = &claim.device_id {
        assert_token(device, MAX_DEVICE_ID_BYTES);
    }
    for hash in [&claim.id_hash, &claim.phone_hash].into_iter().flatten() {
        assert!(
            (MIN_HASH_HEX_CHARS..=MAX_HASH_HEX_CHARS).contains(&hash.len()),
            "hash length {}",
            hash.len()
        );
        assert!(
            hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "hash is lowercase hex: {hash:?}"
        );
    }
    // Raw phone (11 digits from 1) and ID card numbers (17 digits then a digit or X) are refused.
    let user = claim.user_id.as_bytes();
    assert!(!(user.len() == 11 && user[0] == b'1' && user.iter().all(u8::is_ascii_digit)));
    assert!(
        !(user.len() == 18
            && user[..17].iter().all(u8::is_ascii_digit)
            && (user[17].is_ascii_digit() || user[17] == b'X' || user[17] == b'x'))
    );
    let location = claim.location;
    assert!(location.lng.is_finite() && (-180.0..=180.0).contains(&location.lng));
    assert!(location.lat.is_finite() && (-90.0..=90.0).contains(&location.lat));

    // What the dispenser would journal for this claim.
    let event = Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
        tranche_id: &claim.tranche_id,
        voucher_random: 0,
        county: CountyCode(420_500),
        claimed_at: UnixMillis(0),
        user_id: &claim.user_id,
        id_hash: claim.id_hash.as_deref(),
        phone_hash: claim.phone_hash.as_deref(),
        device_id: claim.device_id.as_deref(),
        request_id: &claim.request_id,
        request_fingerprint: 0,
        location,
    }));
    let bytes = journal::encode(&event);
    assert_eq!(
        journal::decode(journal::kind_of(&event), &bytes),
        Ok(event),
        "an accepted claim survives the journal"
    );
});

fn assert_token(value: &str, max: usize) {
    assert!(
        (1..=max).contains(&value.len()),
        "length {} not in 1..={max}",
        value.len()
    );
    assert!(
        value.bytes().all(|b| b.is_ascii_graphic()),
        "printable ASCII without spaces: {value:?}"
    );
}
