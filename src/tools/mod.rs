//! Operator tools: offline, read-only commands run next to the daemon (`voucherd wal ...`).
//!
//! Tools never change what they inspect. They write their findings to stdout (a human summary,
//! or JSON for machines) and their failures to stderr, and say what happened through the
//! process exit code, so scripts can act on it. See `docs/operations.md`.
//!
//! **Invariant:** tools define no serde types; JSON is built as `serde_json::Value`.

pub mod wal;

/// Exit codes of the tools (sysexits.h where one fits).
pub const EXIT_OK: i32 = 0;
/// `wal verify` only: the log is valid but ends in a torn tail that `serve` would erase.
pub const EXIT_TORN_TAIL: i32 = 1;
/// The log is corrupt, or a record cannot be replayed: `serve` refuses to start (`EX_DATAERR`).
pub const EXIT_CORRUPT: i32 = 65;
/// The directory is missing, unreadable, or holds no WAL segments (`EX_NOINPUT`).
pub const EXIT_NO_INPUT: i32 = 66;
/// A bug in voucherd itself (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;
/// Writing the output failed for a reason other than a reader that went away (`EX_IOERR`).
pub const EXIT_OUTPUT_FAILED: i32 = 74;
/// A running daemon has the log open; try again after stopping it (`EX_TEMPFAIL`).
pub const EXIT_LOCKED: i32 = 75;
