//! Fuzz target: the journal codec (`voucherd::journal`), WAL payload bytes to core events.
//!
//! Input: the first byte is the record kind, the rest the payload. `decode` and
//! `claim_identity_keys` must never panic, and for a claim the second agrees with the first.
//! When it accepts, the encoding is canonical: `encode` of the event gives back exactly the
//! payload, its kind is the input kind, and decoding that again gives the same event. (Events
//! are compared through their bytes as well as with `==`, because a location may hold a NaN,
//! which `==` never equates; the bytes keep every bit of the `f64`s.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use voucherd::core::Event;
use voucherd::journal;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    // Counting a claim's identity keys from the front of any payload never panics.
    let front_keys = journal::claim_identity_keys(payload);
    let Ok(event) = journal::decode(kind, payload) else {
        return;
    };
    // For a claim, the count from the front is the decoded claim's.
    if let Event::VoucherClaimed(claim) = &event {
        let keys = [claim.id_hash(), claim.phone_hash(), claim.device_id()]
            .iter()
            .filter(|key| key.is_some())
            .count() as u64;
        assert_eq!(front_keys, Some(1 + keys));
    }
    assert_eq!(journal::kind_of(&event), kind);
    let encoded = journal::encode(&event);
    assert_eq!(
        encoded, payload,
        "decode then encode gives back the payload"
    );
    let again = journal::decode(kind, &encoded).expect("an encoded event decodes");
    assert_eq!(journal::encode(&again), encoded);
    if !has_nan(&event) {
        assert_eq!(again, event);
    }
});

fn has_nan(event: &Event) -> bool {
    match event {
        Event::VoucherClaimed(v) => v.location().lng.is_nan() || v.location().lat.is_nan(),
        _ => false,
    }
}
