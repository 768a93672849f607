//! The replay `serve` runs at start-up, for every tool: a record that passed its checksums must
//! also decode and be one the core could have decided on the state before it, or `serve`
//! refuses the log (exit 65). `verify` stops at the first record refused; `dump` and `stats` print
//! what they can and then name that record, so a log `serve` refuses never looks clean in them.
//!
//! The state is rebuilt in memory as the daemon rebuilds it from the WAL alone, so a tool costs
//! what a daemon start without a snapshot costs: its memory (about 0.5 GB per million claims,
//! plus up to 192 MiB of indexes per big tranche; docs/operations.md) and a time of the same
//! order, on one thread. Once a record is refused the state is dropped: nothing past it means
//! anything, and the memory is given back while the tool goes on printing.

use std::panic::{self, AssertUnwindSafe};

use crate::core::{DigestKey, Event};
use crate::dispenser::{Recovered, decode_record};

/// The replayed state and the first record it refused.
pub(super) struct Replay {
    /// `None` once a record was refused (see the module docs).
    state: Option<Recovered>,
    /// The first refusal, as `verify` reports it: `cannot replay record SEQ (KIND): REASON`.
    refusal: Option<String>,
    /// The seq of the last record handed in, for a core invariant's panic.
    last_seq: u64,
}

impl Replay {
    pub(super) fn new() -> Replay {
        // The digest key only spreads identity hashes in memory; any key replays the same way.
        let digest_key = DigestKey::new(rand::random(), rand::random());
        Replay {
            // Presized as the daemon presizes by default: a big tranche's indexes are made
            // once, not grown claim by claim (which took twice as long here).
            state: Some(Recovered::new(digest_key)),
            refusal: None,
            last_seq: 0,
        }
    }

    /// Decodes record `seq`. A record that does not decode is refused (unless one before it
    /// was) and `None` is returned: the tool leaves it out and goes on.
    pub(super) fn decode(&mut self, seq: u64, kind: u8, payload: &[u8]) -> Option<Event> {
        self.last_seq = seq;
        match decode_record(seq, kind, payload) {
            Ok(event) => Some(event),
            Err(error) => {
                // A claim held back before it may be the first refusal: apply those first.
                self.flush();
                self.run(|_| Err(format!("cannot replay {error}")));
                None
            }
        }
    }

    /// Applies record `seq`, unless one before it was refused. Claims are applied in runs, as
    /// `serve` applies them ([`Recovered::apply_decoded_deferred`]), so a claim's refusal may
    /// show only after later records were handed in; it still names the claim's own seq.
    pub(super) fn apply(&mut self, seq: u64, kind: u8, event: Event) {
        self.last_seq = seq;
        self.run(|state| {
            state
                .apply_decoded_deferred(seq, kind, event)
                .map_err(|e| format!("cannot replay {e}"))
        });
    }

    /// Applies the claims held back; returns the first refusal so far. For a tool that stops
    /// before the end of the log (its reader went away): the records after it are not checked.
    pub(super) fn flush(&mut self) -> Option<&str> {
        self.run(|state| state.finish().map_err(|e| format!("cannot replay {e}")));
        self.refusal()
    }

    /// After the last record: applies the claims held back, then checks what `serve` checks
    /// once every record is applied (every campaign's money adds up). Returns the first refusal.
    pub(super) fn finish(&mut self) -> Option<&str> {
        self.run(|state| {
            state.finish().map_err(|e| format!("cannot replay {e}"))?;
            state
                .check_ledgers()
                .map_err(|e| format!("cannot replay: {e}"))
        });
        self.refusal()
    }

    /// The first record refused so far, if any.
    pub(super) fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// Runs `step` on the state, unless a record was refused before; a refusal drops the state.
    fn run(&mut self, step: impl FnOnce(&mut Recovered) -> Result<(), String>) {
        let Some(state) = &mut self.state else {
            return;
        };
        // The core asserts its money invariants while applying; a CRC-valid record that breaks
        // one is reported as a log `serve` cannot start on, after the panic message on stderr.
        let last_seq = self.last_seq;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| step(state))).unwrap_or_else(|_| {
            Err(format!(
                "cannot replay: a record up to {last_seq} broke a core invariant (see the panic \
                 above)"
            ))
        });
        if let Err(refusal) = outcome {
            self.refusal = Some(refusal);
            self.state = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{RefundPolicy, Rollover};
    use crate::core::{
        CampaignSpec, ClaimFields, CountyCode, Crs, Location, TrancheSpec, UnixMillis,
        VoucherClaimed,
    };
    use crate::journal;

    fn campaign() -> Event {
        Event::CampaignDefined(CampaignSpec {
            campaign_id: "c".into(),
            name: "c".into(),
            budget_fen: 1_000_000,
            refund_policy: RefundPolicy::RestoreIfValid,
            rollover: Rollover::None,
        })
    }

    fn claim(i: u64) -> Event {
        Event::VoucherClaimed(VoucherClaimed::new(ClaimFields {
            tranche_id: "t",
            voucher_random: i + 1,
            county: CountyCode(420502),
            claimed_at: UnixMillis(1),
            user_id: &format!("u{i}"),
            id_hash: None,
            phone_hash: None,
            device_id: None,
            request_id: &format!("r{i}"),
            request_fingerprint: u128::from(i),
            location: Location {
                lng: 111.0,
                lat: 30.0,
                crs: Crs::Gcj02,
            },
        }))
    }

    /// The campaign, tranche `t` (five vouchers) and `claims` claims, from seq 1.
    fn replayed(claims: u64) -> Replay {
        let tranche = Event::TrancheDefined {
            ordinal: 0,
            spec: TrancheSpec::for_tests("t"),
        };
        let mut replay = Replay::new();
        let events = [campaign(), tranche]
            .into_iter()
            .chain((0..claims).map(claim));
        for (seq, event) in (1..).zip(events) {
            let kind = journal::kind_of(&event);
            replay.apply(seq, kind, event);
        }
        replay
    }

    #[test]
    fn a_clean_log_has_no_refusal() {
        assert_eq!(replayed(5).finish(), None);
    }

    /// Claims are applied in runs: the over-issued sixth claim is named by its own seq, and
    /// records after it change nothing.
    #[test]
    fn the_first_refusal_is_kept_and_names_its_record() {
        let mut replay = replayed(6);
        assert_eq!(replay.decode(9, 200, b"junk"), None);
        let refusal = replay.finish().expect("over-issued").to_owned();
        assert!(
            refusal.starts_with("cannot replay record 8 (voucher_claimed): over-issue"),
            "{refusal}"
        );
        assert!(replay.state.is_none(), "the state is given back");
    }

    /// A record that does not decode is refused, after the claims held back before it.
    #[test]
    fn a_record_that_does_not_decode_is_refused() {
        let mut replay = replayed(1);
        assert_eq!(replay.decode(4, 200, b"junk"), None);
        assert_eq!(
            replay
                .flush()
                .map(|r| r.starts_with("cannot replay record 4: ")),
            Some(true)
        );
    }

    /// What `serve` checks once every record is applied: a campaign's budget.
    #[test]
    fn the_ledgers_are_checked_at_the_end() {
        let mut replay = Replay::new();
        let Event::CampaignDefined(spec) = campaign() else {
            unreachable!()
        };
        let poor = Event::CampaignDefined(CampaignSpec {
            budget_fen: 1,
            ..spec
        });
        let tranche = Event::TrancheDefined {
            ordinal: 0,
            spec: TrancheSpec::for_tests("t"),
        };
        for (seq, event) in (1..).zip([poor, tranche]) {
            replay.apply(seq, journal::kind_of(&event), event);
        }
        assert_eq!(replay.flush(), None, "each record fits");
        let refusal = replay.finish().expect("over budget");
        assert!(
            refusal.starts_with("cannot replay: rebuilt state:"),
            "{refusal}"
        );
    }
}
