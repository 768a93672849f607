//! `loadtest`: release-day load for voucherd.
//!
//! - [`burst`]: N simulated people, each with an identity and a GPS point in a
//!   configured county, all pressing "claim" at the release instant t0 from
//!   keep-alive connections opened before t0; optionally a share of them act
//!   like grabbing scripts ([`burst::BotConfig`]).
//! - [`steady`]: open loop at a fixed rate (latency from each request's
//!   intended send time, so coordinated omission is corrected) and closed loop
//!   (saturation, for the side-by-side comparison).
//! - [`verify`]: after a run, the tranche's own view against what the tool saw:
//!   no over-issue, no identity twice, issued + remaining = quota per county.
//! - [`compare`]: the hello server, voucherd, a Redis peer and (when asked
//!   for) a PostgreSQL peer measured in one run with the same generator and
//!   settings.
//!
//! The client is raw tokio TCP with a minimal HTTP/1.1 writer and reader
//! ([`http`]), so the generator costs little CPU; every run reports it.

pub mod admin;
pub mod burst;
pub mod compare;
pub mod cpu;
pub mod http;
pub mod population;
pub mod record;
pub mod report;
pub mod steady;
pub mod verify;

/// A deterministic 64-bit generator (splitmix64): runs are reproducible from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
