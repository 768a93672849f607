//! Fuzz target: loading a snapshot file, `voucherd::snapshot::verify` then `Verified::apply`
//! into a fresh `Recovered`, as `snapshot::load_latest` does at start-up.
//!
//! The input format is `voucherd_fuzz::SnapshotInput`: a flag byte, then either the whole file
//! or (flag bit 0) a stream of records that the harness frames with a valid header, record
//! count, body length and checksums (`snapshot::encode_records`), so the fuzzer spends its
//! time on the records' content rather than on CRCs.
//!
//! Properties: never a panic, a hang (run with `-timeout`) or unbounded memory (run with
//! `-rss_limit_mb`); `verify` returns `Ok` or `SnapshotError::Invalid`, and a resealed file
//! always verifies; `apply` returns `Ok` or `SnapshotError::Invalid` / `Apply`; on `Ok`, every
//! record was applied and the rebuilt state passes every invariant the daemon asserts before
//! it serves (`Recovered::check_invariants`).
//!
//! Harness bound: a tranche definition presizes its maps for its whole quota (up to 2^20
//! vouchers, about 250 MB, by design: the release burst must not rehash). Inputs whose
//! definitions would presize more than `MAX_PRESIZED_VOUCHERS` in all are skipped after
//! `verify`, so one run does not spend seconds and gigabytes on a few records.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use voucherd::core::DigestKey;
use voucherd::dispenser::Recovered;
use voucherd::snapshot::{self, SnapshotError};
use voucherd_fuzz::{SnapshotInput, presized_vouchers};

/// Vouchers, summed over an input's tranche definitions, beyond which it is skipped.
const MAX_PRESIZED_VOUCHERS: u64 = 4_096;

fuzz_target!(|data: &[u8]| {
    let Some(input) = SnapshotInput::parse(data) else {
        return;
    };
    let resealed = input.resealed();
    let path = Path::new("fuzz.snap");
    let verified = match snapshot::verify(path, input.file) {
        Ok(v) => v,
        Err(SnapshotError::Invalid { reason, .. }) => {
            assert!(!resealed, "a resealed snapshot does not verify: {reason}");
            return;
        }
        Err(other) => panic!("verify returned an unexpected error kind: {other:?}"),
    };
    let stored = verified.records().expect("in-memory records read");
    let stored = stored
        .iter()
        .map(|(kind, seq, payload)| (*kind, *seq, &payload[..]));
    if presized_vouchers(stored) > MAX_PRESIZED_VOUCHERS {
        return;
    }
    let records = verified.records;
    let mut recovered = Recovered::new(DigestKey::new(0x5eed, 0xf00d));
    match verified.apply(&mut recovered) {
        Ok(loaded) => {
            assert_eq!(loaded.records, records);
            assert_eq!(recovered.records, records, "every record was applied");
            recovered.check_invariants();
        }
        Err(SnapshotError::Invalid { .. } | SnapshotError::Apply { .. }) => {}
        Err(other) => panic!("apply returned an unexpected error kind: {other:?}"),
    }
});
