//! Time as a value: milliseconds since the Unix epoch.
//!
//! The core never reads a clock. Callers pass the current instant in, which is
//! what makes decisions reproducible in tests and during WAL replay.

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// This instant shifted by `delta_ms` (saturating; never wraps).
    pub fn plus_ms(self, delta_ms: i64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(delta_ms))
    }
}
