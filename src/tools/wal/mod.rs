//! `voucherd wal verify | dump | stats`: read-only views of a write-ahead log.
//!
//! Every tool goes through [`crate::wal::scan`], which takes a shared `flock` on the directory
//! (so it refuses while a daemon has the log open), validates the whole log's framing exactly
//! as `serve` would (segments, checksums, seq continuity, the tail), and only then delivers the
//! records in seq order. A tool therefore never prints half a dump of a log that turns out to
//! be corrupt, and never modifies a byte.
//!
//! `DIR` is the WAL directory (`<data_dir>/wal`). The data directory is accepted too: if
//! `DIR/wal` is a directory, that is the log that is read.
//!
//! Every tool also replays every record through the code `serve` runs at start-up
//! (`replay.rs`): a log `serve` refuses exits 65 from each of them, naming the first record
//! refused. `dump` and `stats` print what they can first; `verify` stops there.
//!
//! - `verify.rs`: checksums, seq continuity and tail state, plus the replay.
//! - `dump.rs`: one JSON object per record, streamed.
//! - `stats.rs`: counts per record type, per tranche and per county.

mod dump;
mod replay;
mod stats;
mod verify;

use std::io::{self, BufWriter, StdoutLock, Write};
use std::path::{Path, PathBuf};

use crate::core::Event;
use crate::tools::{
    EXIT_CORRUPT, EXIT_LOCKED, EXIT_NO_INPUT, EXIT_OK, EXIT_OUTPUT_FAILED, EXIT_SOFTWARE,
};
use crate::wal::{self, OpenError, RecordRef, ReplayReport};

pub use dump::{DumpFilter, record_json};
pub use stats::StatsFormat;

pub use crate::daemon::WAL_DIR_NAME;

/// The `voucherd wal` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum WalCommand {
    /// Check checksums, seq continuity and the tail, and replay every record as `serve` would.
    ///
    /// Exit 0 clean, 1 torn tail (valid; `serve` erases it), 65 corrupt, 66 missing, unreadable
    /// or empty directory, 75 locked by a running daemon.
    Verify {
        /// The WAL directory (`<data_dir>/wal`), or the data directory that contains `wal/`.
        dir: PathBuf,
    },
    /// Print every record as one JSON object per line, replaying each as `serve` would.
    ///
    /// Exit 0 (also when the reader closes the pipe early, unless a record read before that
    /// cannot be replayed), 65 corrupt or a record cannot be replayed (after printing the
    /// records), 66 missing, unreadable or empty directory, 74 output failed, 75 locked by a
    /// running daemon.
    Dump {
        /// The WAL directory (`<data_dir>/wal`), or the data directory that contains `wal/`.
        dir: PathBuf,
        /// Only records about this tranche (campaign records have no tranche and are left out).
        #[arg(long, value_name = "ID")]
        tranche: Option<String>,
        /// Only records of this type; repeat to allow several.
        #[arg(long = "type", value_name = "TYPE", value_enum)]
        types: Vec<RecordType>,
    },
    /// Count records per type, and claims per tranche and per county, replaying each record as
    /// `serve` would.
    ///
    /// Exit 0, 65 corrupt or a record cannot be replayed (after printing the counts), 66
    /// missing, unreadable or empty directory, 74 output failed, 75 locked by a running daemon.
    Stats {
        /// The WAL directory (`<data_dir>/wal`), or the data directory that contains `wal/`.
        dir: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `voucherd wal` subcommand; returns the process exit code.
pub fn run(command: WalCommand) -> i32 {
    match command {
        WalCommand::Verify { dir } => verify::run(&dir),
        WalCommand::Dump {
            dir,
            tranche,
            types,
        } => dump::run(&dir, &DumpFilter { tranche, types }),
        WalCommand::Stats { dir, json } => {
            let format = if json {
                StatsFormat::Json
            } else {
                StatsFormat::Table
            };
            stats::run(&dir, format)
        }
    }
}

/// The type of a journal record, as named in dumps, filters and stats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RecordType {
    CampaignDefined,
    TrancheDefined,
    TrancheControlled,
    VoucherClaimed,
    VoucherRedeemed,
    RedemptionRefunded,
    TrancheSettled,
    VouchersRevoked,
    PoolDrawn,
    MerchantsImported,
    MerchantStatusChanged,
}

impl RecordType {
    /// Every type, in journal kind order.
    pub const ALL: [RecordType; 11] = [
        RecordType::CampaignDefined,
        RecordType::TrancheDefined,
        RecordType::TrancheControlled,
        RecordType::VoucherClaimed,
        RecordType::VoucherRedeemed,
        RecordType::RedemptionRefunded,
        RecordType::TrancheSettled,
        RecordType::VouchersRevoked,
        RecordType::PoolDrawn,
        RecordType::MerchantsImported,
        RecordType::MerchantStatusChanged,
    ];

    pub fn of(event: &Event) -> RecordType {
        match event {
            Event::CampaignDefined(_) => RecordType::CampaignDefined,
            Event::TrancheDefined { .. } => RecordType::TrancheDefined,
            Event::TrancheControlled { .. } => RecordType::TrancheControlled,
            Event::VoucherClaimed(_) => RecordType::VoucherClaimed,
            Event::VoucherRedeemed(_) => RecordType::VoucherRedeemed,
            Event::RedemptionRefunded(_) => RecordType::RedemptionRefunded,
            Event::TrancheSettled { .. } => RecordType::TrancheSettled,
            Event::VouchersRevoked(_) => RecordType::VouchersRevoked,
            Event::PoolDrawn(_) => RecordType::PoolDrawn,
            Event::MerchantsImported(_) => RecordType::MerchantsImported,
            Event::MerchantStatusChanged(_) => RecordType::MerchantStatusChanged,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordType::CampaignDefined => "campaign_defined",
            RecordType::TrancheDefined => "tranche_defined",
            RecordType::TrancheControlled => "tranche_controlled",
            RecordType::VoucherClaimed => "voucher_claimed",
            RecordType::VoucherRedeemed => "voucher_redeemed",
            RecordType::RedemptionRefunded => "redemption_refunded",
            RecordType::TrancheSettled => "tranche_settled",
            RecordType::VouchersRevoked => "vouchers_revoked",
            RecordType::PoolDrawn => "pool_drawn",
            RecordType::MerchantsImported => "merchants_imported",
            RecordType::MerchantStatusChanged => "merchant_status_changed",
        }
    }

    /// Position in [`RecordType::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// The WAL directory for a `DIR` argument: `DIR/wal` if that is a directory (so `DIR` is the
/// data directory), else `DIR` itself.
pub fn resolve_wal_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(WAL_DIR_NAME);
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Why a tool's record callback stopped the scan.
#[derive(Debug, thiserror::Error)]
enum Stop {
    /// A record does not decode, or does not fit the state replayed before it.
    #[error("{0}")]
    Record(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// Why a tool could not finish; each maps to one exit code.
enum Failure {
    Locked {
        dir: PathBuf,
    },
    Unreadable(String),
    NoSegments {
        dir: PathBuf,
    },
    Corrupt {
        segment: PathBuf,
        offset_bytes: u64,
        reason: String,
    },
    /// The directory holds something `serve` refuses (a stray segment name, too many files).
    RefusedDirectory(String),
    /// A record that passed its checksums cannot be replayed.
    Unreplayable(String),
    /// The reader of stdout went away (`| head`): not an error.
    OutputClosed,
    Output(io::Error),
    Bug(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Locked { .. } => EXIT_LOCKED,
            Failure::Unreadable(_) | Failure::NoSegments { .. } => EXIT_NO_INPUT,
            Failure::Corrupt { .. } | Failure::RefusedDirectory(_) | Failure::Unreplayable(_) => {
                EXIT_CORRUPT
            }
            Failure::OutputClosed => EXIT_OK,
            Failure::Output(_) => EXIT_OUTPUT_FAILED,
            Failure::Bug(_) => EXIT_SOFTWARE,
        }
    }

    /// One line for stderr; `None` when there is nothing to say.
    fn describe(&self) -> Option<String> {
        Some(match self {
            Failure::Locked { dir } => format!(
                "the WAL in {} is locked: a running voucherd has it open. Stop the daemon \
                 (SIGTERM drains cleanly) and run this again",
                dir.display()
            ),
            Failure::Unreadable(message) => format!(
                "{message} (DIR must be the WAL directory <data_dir>/{WAL_DIR_NAME}, or the data \
                 directory that contains it)"
            ),
            Failure::NoSegments { dir } => format!(
                "{} holds no WAL segment files (*.wal); DIR must be the WAL directory \
                 <data_dir>/{WAL_DIR_NAME}, or the data directory that contains it",
                dir.display()
            ),
            Failure::Corrupt {
                segment,
                offset_bytes,
                reason,
            } => format!(
                "corrupt WAL: {} at byte offset {offset_bytes}: {reason}; `voucherd serve` \
                 refuses to start on this log. Keep a copy of the directory before any repair",
                segment.display()
            ),
            Failure::RefusedDirectory(message) => {
                format!("{message}; `voucherd serve` refuses to start on this directory")
            }
            Failure::Unreplayable(message) => format!(
                "{message}; `voucherd serve` refuses to start on this log. Keep a copy of the \
                 directory before any repair"
            ),
            Failure::OutputClosed => return None,
            Failure::Output(error) => format!("cannot write the output: {error}"),
            Failure::Bug(message) => format!("internal error: {message}"),
        })
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Output(error)
        }
    }
}

impl From<OpenError<Stop>> for Failure {
    fn from(error: OpenError<Stop>) -> Self {
        match error {
            OpenError::Locked { dir } => Failure::Locked { dir },
            OpenError::Io(error) => Failure::Unreadable(error.to_string()),
            OpenError::Corrupt {
                segment,
                offset_bytes,
                reason,
            } => Failure::Corrupt {
                segment,
                offset_bytes,
                reason: reason.to_string(),
            },
            error @ (OpenError::UnexpectedSegmentName { .. }
            | OpenError::TooManySegments { .. }) => Failure::RefusedDirectory(error.to_string()),
            OpenError::Callback(Stop::Record(message)) => Failure::Unreplayable(message),
            OpenError::Callback(Stop::Output(error)) => Failure::from(error),
            OpenError::BadOptions(_) => Failure::Bug("scan reported bad options".to_owned()),
        }
    }
}

/// A log read to its end.
struct Scanned {
    /// The directory that was read (after [`resolve_wal_dir`]).
    dir: PathBuf,
    report: ReplayReport,
}

impl Scanned {
    /// Paths of the segment files, in index order.
    fn segment_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (wal::FIRST_SEGMENT_INDEX..)
            .take(self.report.segments as usize)
            .map(|index| self.dir.join(wal::segment_file_name(index)))
    }

    /// Sum of the segment file sizes (they are preallocated, so mostly zeros at the tail).
    fn segment_file_bytes(&self) -> Result<u64, Failure> {
        self.segment_paths().try_fold(0u64, |sum, path| {
            let metadata = std::fs::metadata(&path)
                .map_err(|e| Failure::Unreadable(format!("stat {}: {e}", path.display())))?;
            Ok(sum + metadata.len())
        })
    }
}

/// Scans the log named by `dir` (see [`resolve_wal_dir`]), calling `on_record` for every
/// record after the whole log validated. An empty directory is a failure: `serve` creates the
/// first segment as it starts, so a WAL directory without segments is the wrong directory.
fn scan(
    dir: &Path,
    on_record: impl FnMut(RecordRef<'_>) -> Result<(), Stop>,
) -> Result<Scanned, Failure> {
    let dir = resolve_wal_dir(dir);
    let report = wal::scan(&dir, on_record)?;
    if report.segments == 0 {
        return Err(Failure::NoSegments { dir });
    }
    Ok(Scanned { dir, report })
}

/// Buffered stdout for a tool's findings.
fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::new(io::stdout().lock())
}

/// Reports `failure` on stderr, prefixed by the tool's name; returns its exit code.
fn fail(tool: &str, failure: &Failure) -> i32 {
    if let Some(line) = failure.describe() {
        // Nothing more can be done if stderr itself is closed.
        let _ = writeln!(io::stderr(), "voucherd wal {tool}: {line}");
    }
    failure.exit_code()
}

/// Ends `dump` or `stats`, which print what they can: if the replay refused a record, exit 65
/// naming it, whatever became of the output (as `verify`'s verdict: a reader that went away
/// cannot turn a log `serve` refuses into exit 0); else the exit code of `printed`.
fn conclude(tool: &str, printed: Result<(), Failure>, refusal: Option<&str>) -> i32 {
    let Some(refusal) = refusal else {
        return printed.map_or_else(|failure| fail(tool, &failure), |()| EXIT_OK);
    };
    if let Err(failure) = printed {
        // Said on stderr; the exit code is the refusal's.
        fail(tool, &failure);
    }
    fail(tool, &Failure::Unreplayable(refusal.to_owned()))
}

/// File name of `path`, for compact summaries (the directory is printed once).
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_type_names_match_the_cli_values() {
        use clap::ValueEnum;
        for (position, record_type) in RecordType::ALL.iter().enumerate() {
            let value = record_type.to_possible_value().expect("visible");
            assert_eq!(value.get_name(), record_type.name());
            assert_eq!(record_type.index(), position);
        }
    }

    #[test]
    fn a_closed_reader_is_not_an_error() {
        let closed = Failure::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(closed.exit_code(), EXIT_OK);
        assert!(closed.describe().is_none());
        let full = Failure::from(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(full.exit_code(), EXIT_OUTPUT_FAILED);
    }
}
