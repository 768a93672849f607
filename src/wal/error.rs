//! Error types of the WAL's public API: one enum per concern, each variant specific.
//!
//! Every error an operator can see names the file and, for damage, the byte offset, so that
//! "the daemon refuses to start" always comes with where to look.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::wal::frame::{FrameError, HeaderError, MAX_RECORD_PAYLOAD_BYTES};
use crate::wal::storage::{DirError, StorageError};

/// Why [`crate::wal::Wal::append`] or [`crate::wal::Wal::barrier`] refused a request.
/// A refused request is never written and never consumes a seq.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AppendError {
    #[error("WAL queue is full ({queued_records} records, {queued_bytes} encoded bytes queued)")]
    QueueFull {
        queued_records: usize,
        queued_bytes: usize,
    },
    #[error(
        "WAL record payload of {payload_bytes} bytes exceeds the limit of {MAX_RECORD_PAYLOAD_BYTES}"
    )]
    TooLarge { payload_bytes: usize },
    #[error("WAL record kind 0 is invalid")]
    InvalidKind,
    #[error("WAL is shutting down")]
    ShuttingDown,
    #[error("WAL sequence numbers are exhausted")]
    SeqExhausted,
}

/// One problem with [`crate::wal::WalOptions`]; all problems are reported together.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    #[error("segment_size_bytes = {value} is outside {min}..={max}")]
    SegmentSizeOutOfRange { value: u64, min: u64, max: u64 },
    #[error("segment_size_bytes = {value} is not a multiple of {alignment}")]
    SegmentSizeMisaligned { value: u64, alignment: u64 },
    #[error("max_batch_records = {value} is outside 1..={max}")]
    MaxBatchRecordsOutOfRange { value: usize, max: usize },
    #[error("max_batch_bytes = {value} is outside {min}..={max} (it must hold one maximal record)")]
    MaxBatchBytesOutOfRange {
        value: usize,
        min: usize,
        max: usize,
    },
    #[error(
        "a batch of max_batch_bytes = {max_batch_bytes} does not fit in an empty segment of {segment_size_bytes} bytes"
    )]
    BatchDoesNotFitSegment {
        max_batch_bytes: usize,
        segment_size_bytes: u64,
    },
    #[error("max_queue_records = {value} is outside 1..={max}")]
    MaxQueueRecordsOutOfRange { value: usize, max: usize },
    #[error("batch_window = {value:?} exceeds {max:?}")]
    BatchWindowTooLong { value: Duration, max: Duration },
}

/// What exactly is wrong at a corrupt position. See the replay rules in `replay.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CorruptReason {
    #[error("bad segment header: {0}")]
    Header(#[from] HeaderError),
    #[error("damaged batch in a sealed (non-last) segment: {0}")]
    DamagedSealedSegment(FrameError),
    #[error("batch checksum is valid but its records are not (writer bug or deliberate edit): {0}")]
    RecordsUnderValidChecksum(FrameError),
    #[error(
        "damaged batch ({damage}) followed by a valid batch at byte offset {valid_batch_offset_bytes}: not a torn tail"
    )]
    ValidBatchAfterDamage {
        damage: FrameError,
        valid_batch_offset_bytes: u64,
    },
    #[error("batch starts at seq {found}, expected {expected}")]
    BatchSeqGap { expected: u64, found: u64 },
    #[error("segment header says first seq {found}, expected {expected}")]
    SegmentSeqGap { expected: u64, found: u64 },
    #[error("segment file is missing (next present segment is index {next_present_index})")]
    MissingSegment { next_present_index: u64 },
    #[error("segment header index {header_index} does not match the file name index {name_index}")]
    IndexMismatch { name_index: u64, header_index: u64 },
    #[error("segment file is {file_bytes} bytes but its header says {header_bytes}")]
    LengthMismatch { file_bytes: u64, header_bytes: u64 },
}

/// Why [`crate::wal::open`] or [`crate::wal::scan`] failed. `E` is the replay callback's error.
#[derive(Debug, Error)]
pub enum OpenError<E> {
    #[error("invalid WAL options: {}", join_problems(.0))]
    BadOptions(Vec<OptionsError>),
    #[error("WAL I/O error: {0}")]
    Io(#[from] StorageError),
    #[error("WAL directory {} is locked by another process (or another open Wal)", dir.display())]
    Locked { dir: PathBuf },
    #[error("WAL directory {} holds a .wal file with an unexpected name: {name}", dir.display())]
    UnexpectedSegmentName { dir: PathBuf, name: String },
    #[error("WAL directory {} holds {found} segments, more than the limit of {limit}", dir.display())]
    TooManySegments {
        dir: PathBuf,
        found: usize,
        limit: usize,
    },
    #[error("corrupt WAL: {} at byte offset {offset_bytes}: {reason}; refusing to start", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset_bytes: u64,
        reason: CorruptReason,
    },
    #[error("WAL replay callback failed: {0}")]
    Callback(E),
}

fn join_problems(problems: &[OptionsError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl<E> From<DirError> for OpenError<E> {
    fn from(error: DirError) -> Self {
        match error {
            DirError::Locked { dir } => Self::Locked { dir },
            DirError::Storage(error) => Self::Io(error),
            DirError::UnexpectedSegmentName { dir, name } => {
                Self::UnexpectedSegmentName { dir, name }
            }
        }
    }
}
