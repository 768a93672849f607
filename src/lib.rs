//! voucherd: the consumer-voucher dispenser daemon.
//!
//! See `ARCHITECTURE.md` for the code map and the invariants.

pub mod api;
pub mod config;
pub mod core;
pub mod daemon;
pub mod dispenser;
pub mod geo;
pub mod journal;
pub mod prefault;
pub mod snapshot;
pub mod telemetry;
pub mod tools;
pub mod wal;
pub mod wire_time;
