//! Replay: scan and validate every segment, tell a torn tail from corruption, deliver records.
//!
//! Replay is one pass: each batch is validated (checksums, record envelopes, sequence
//! continuity) before any of its records is delivered, and the rules below are applied as the
//! walk goes. A record is therefore delivered only from a checksum-valid batch in its proper
//! place, but a log can still turn out to be corrupt FURTHER ON, after earlier records were
//! delivered. Callers build state from the records and must throw it away when replay returns
//! an error (the daemon exits; nothing has been served or acknowledged yet). A failing
//! callback, or corruption, leaves the files untouched: the torn tail is erased only after the
//! whole walk succeeded.
//!
//! (Replay used to walk the log twice, delivering only after a first pass had validated all
//! of it. That cost a second read and second checksum of every byte, about 0.35 s per million
//! records, for a guarantee no caller needed: every caller discards state on error.)
//!
//! # The crash-safety contract
//!
//! The writer guarantees three things, and every rule below follows from them:
//! - (W1) batches are appended back to back, in seq order, starting right after the segment
//!   header, and a batch is written only after the previous batch's sync returned. So at any
//!   moment at most ONE batch — the last one — may be partly on disk;
//! - (W2) a batch is never split across segments, and a new segment is created only after the
//!   previous one is fully synced. So only the LAST segment can hold a partial batch;
//! - (W3) segment files are preallocated with zeros and never reused. So every byte after the
//!   last batch ever written is zero unless that write was torn.
//!
//! Rules, applied to each segment in index order:
//! 1. Segment indices start at 1 and have no gaps; a missing file is `Corrupt`, because records
//!    between the neighbours' seqs would be silently lost.
//! 2. The segment header must be valid, name the same index as the file, match the file length,
//!    and its first seq must continue the previous segment's last seq (the log starts at
//!    seq 1). Headers are written and synced before the file gets its `.wal` name, so a bad
//!    header is never the result of a crash.
//! 3. Batches are read from the end of the header. A batch whose checksum is valid was written
//!    whole (a torn write cannot produce a matching CRC32C), so if its records fail validation,
//!    or its first seq does not continue the previous batch, that is `Corrupt`, never a tail.
//! 4. At the first offset P where no checksum-valid batch starts:
//!    a. if every byte from P to the end of the segment is zero, the segment ends cleanly (W3);
//!    b. otherwise, if the segment is not the last one, it is `Corrupt`: by W2 a sealed segment
//!    was fully synced and cannot hold a torn batch;
//!    c. otherwise, if a checksum-valid batch starts at any 8-aligned offset after P, it is
//!    `Corrupt`: by W1 only the last batch can be torn, so a valid batch after a damaged one
//!    means a batch that had been synced (and acknowledged) was damaged;
//!    d. otherwise the bytes from P on are the torn remains of the one unsynced batch (W1):
//!    their records were never acknowledged, so erasing them loses nothing that was
//!    promised. `open` zeroes P up to the last non-zero byte, syncs, logs a warning, and
//!    appends from P; `scan` only reports it.
//!
//! Rule 4c can in theory refuse a log whose torn batch carried, inside a payload, the bytes of
//! a complete valid batch. That errs on the side of refusing to start, which is the safe side
//! for public money: an operator decides, nothing is erased.

use std::path::PathBuf;

use crate::wal::crc_range::RangeCrc;
use crate::wal::error::{CorruptReason, OpenError};
use crate::wal::frame::{
    self, BATCH_CRC_COVERAGE_START, BATCH_HEADER_BYTES, FRAME_ALIGNMENT_BYTES, FrameError,
    RecordRef, SEGMENT_HEADER_BYTES, SegmentHeader,
};
use crate::wal::storage::{DirListing, Storage, segment_path};
use crate::wal::{FIRST_SEGMENT_INDEX, FIRST_SEQ, MAX_SEGMENT_FILES};

/// Chunk size for the all-zero test (large enough to vectorise, small enough to stop early).
const ZERO_SCAN_CHUNK_BYTES: usize = 4096;

/// What a replay found. Returned by `open` and `scan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records replayed (delivered to the callback).
    pub records: u64,
    /// Segment files found and replayed (0 for a fresh log).
    pub segments: u32,
    /// Seq of the last durable record, 0 if the log is empty.
    pub last_seq: u64,
    /// Bytes of a torn tail: erased by `open`, only reported by `scan`.
    pub truncated_tail_bytes: u64,
    /// Segment the next batch goes into.
    pub tail_segment: PathBuf,
    /// Offset in `tail_segment` where the next batch goes.
    pub tail_offset_bytes: u64,
}

/// A torn tail found by rule 4d: bytes `[start_bytes, end_bytes)` of the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub start_bytes: usize,
    pub end_bytes: usize,
}

/// Pass-1 result for one segment.
#[derive(Debug, Clone)]
pub struct SegmentSummary {
    pub index: u64,
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// End of the last valid batch: where the next batch would go.
    pub valid_end_bytes: usize,
    /// Where the last valid batch starts (`None`: the segment holds none).
    pub last_batch_start_bytes: Option<usize>,
    pub records: u64,
    pub torn_tail: Option<TornTail>,
}

/// Pass-1 result for the whole log.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub segments: Vec<SegmentSummary>,
    /// Seq the next record gets.
    pub next_seq: u64,
}

impl ReplayPlan {
    /// The report for this plan; with no segments yet, the tail is segment 1 after its header.
    pub fn report(&self, storage: &impl Storage) -> ReplayReport {
        let last = self.segments.last();
        ReplayReport {
            records: self.segments.iter().map(|s| s.records).sum(),
            segments: u32::try_from(self.segments.len()).unwrap_or(u32::MAX),
            last_seq: self.next_seq - 1,
            truncated_tail_bytes: last
                .and_then(|s| s.torn_tail)
                .map_or(0, |t| (t.end_bytes - t.start_bytes) as u64),
            tail_segment: last.map_or_else(
                || segment_path(storage, FIRST_SEGMENT_INDEX),
                |s| s.path.clone(),
            ),
            tail_offset_bytes: last
                .map_or(SEGMENT_HEADER_BYTES as u64, |s| s.valid_end_bytes as u64),
        }
    }
}

/// How a segment's sequence of batches ended.
enum SegmentEnd {
    Clean,
    Torn(TornTail),
}

struct Walk {
    valid_end_bytes: usize,
    last_batch_start_bytes: Option<usize>,
    records: u64,
    next_seq: u64,
    end: SegmentEnd,
}

enum WalkError<E> {
    Corrupt {
        offset_bytes: usize,
        reason: CorruptReason,
    },
    Callback(E),
}

fn corrupt<E>(path: &std::path::Path, offset_bytes: u64, reason: CorruptReason) -> OpenError<E> {
    OpenError::Corrupt {
        segment: path.to_path_buf(),
        offset_bytes,
        reason,
    }
}

fn lift<E>(path: &std::path::Path, error: WalkError<E>) -> OpenError<E> {
    match error {
        WalkError::Corrupt {
            offset_bytes,
            reason,
        } => corrupt(path, offset_bytes as u64, reason),
        WalkError::Callback(error) => OpenError::Callback(error),
    }
}

fn is_all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(ZERO_SCAN_CHUNK_BYTES)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Offset just past the last non-zero byte of `bytes` (0 if all zero).
fn nonzero_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// First 8-aligned offset after `start` where a checksum-valid batch begins (rule 4c).
///
/// Linear in the segment size, whatever the bytes: a candidate whose header passes is checked
/// with a range checksum from [`RangeCrc`] (built on the first such candidate), not by hashing
/// its body, so headers that each claim a long body cannot make the search quadratic. A match
/// is confirmed with [`frame::check_batch_envelope`].
fn find_valid_batch_after(bytes: &[u8], start: usize) -> Option<usize> {
    let mut ranges: Option<RangeCrc<'_>> = None;
    let mut offset = start.checked_add(FRAME_ALIGNMENT_BYTES)?;
    while offset.checked_add(BATCH_HEADER_BYTES)? <= bytes.len() {
        let candidate = bytes.get(offset..)?;
        if let Ok(header) = frame::check_batch_header(candidate)
            && header.encoded_bytes() <= candidate.len()
        {
            let ranges = ranges.get_or_insert_with(|| RangeCrc::new(bytes));
            let covered = ranges.crc(
                offset + BATCH_CRC_COVERAGE_START,
                offset + header.encoded_bytes(),
            );
            if covered == Some(header.stored_crc) && frame::check_batch_envelope(candidate).is_ok()
            {
                return Some(offset);
            }
        }
        offset += FRAME_ALIGNMENT_BYTES;
    }
    None
}

/// Rule 4: classifies the bytes from `position` (where no valid batch starts) to the end.
fn classify_end<E>(
    bytes: &[u8],
    position: usize,
    damage: FrameError,
    is_last_segment: bool,
) -> Result<SegmentEnd, WalkError<E>> {
    let rest = bytes.get(position..).unwrap_or_default();
    if is_all_zero(rest) {
        return Ok(SegmentEnd::Clean);
    }
    if !is_last_segment {
        return Err(WalkError::Corrupt {
            offset_bytes: position,
            reason: CorruptReason::DamagedSealedSegment(damage),
        });
    }
    if let Some(valid) = find_valid_batch_after(bytes, position) {
        return Err(WalkError::Corrupt {
            offset_bytes: position,
            reason: CorruptReason::ValidBatchAfterDamage {
                damage,
                valid_batch_offset_bytes: valid as u64,
            },
        });
    }
    Ok(SegmentEnd::Torn(TornTail {
        start_bytes: position,
        end_bytes: position + nonzero_end(rest),
    }))
}

/// Walks the batches of one segment (rules 3 and 4), calling `visit` for every record.
fn walk_segment<E>(
    bytes: &[u8],
    first_seq: u64,
    is_last_segment: bool,
    visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<Walk, WalkError<E>> {
    let mut position = SEGMENT_HEADER_BYTES;
    let mut last_batch_start_bytes = None;
    let mut next_seq = first_seq;
    let mut records = 0u64;
    loop {
        let rest = bytes.get(position..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(Walk {
                valid_end_bytes: position,
                last_batch_start_bytes,
                records,
                next_seq,
                end: SegmentEnd::Clean,
            });
        }
        let envelope = match frame::check_batch_envelope(rest) {
            Ok(envelope) => envelope,
            Err(damage) => {
                let end = classify_end(bytes, position, damage, is_last_segment)?;
                return Ok(Walk {
                    valid_end_bytes: position,
                    last_batch_start_bytes,
                    records,
                    next_seq,
                    end,
                });
            }
        };
        let corrupt_here = |reason| WalkError::Corrupt {
            offset_bytes: position,
            reason,
        };
        let batch = envelope
            .validate_records()
            .map_err(|e| corrupt_here(CorruptReason::RecordsUnderValidChecksum(e)))?;
        if batch.first_seq() != next_seq {
            return Err(corrupt_here(CorruptReason::BatchSeqGap {
                expected: next_seq,
                found: batch.first_seq(),
            }));
        }
        for record in batch.records() {
            let record =
                record.map_err(|e| corrupt_here(CorruptReason::RecordsUnderValidChecksum(e)))?;
            visit(record).map_err(WalkError::Callback)?;
        }
        // Cannot overflow: check_batch_envelope rejected first_seq + count > u64::MAX.
        next_seq = batch.first_seq() + batch.record_count() as u64;
        records += batch.record_count() as u64;
        last_batch_start_bytes = Some(position);
        position += batch.encoded_bytes();
    }
}

/// Walks every segment in order, applying rules 1–4, and delivers each record of a valid batch
/// to `on_record` as it goes. Never modifies files. On an error, records before the damage may
/// already have been delivered: see the module docs.
pub fn replay<E>(
    storage: &impl Storage,
    listing: &DirListing,
    on_record: &mut impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<ReplayPlan, OpenError<E>> {
    if listing.segments.len() > MAX_SEGMENT_FILES {
        return Err(OpenError::TooManySegments {
            dir: storage.dir_path().to_path_buf(),
            found: listing.segments.len(),
            limit: MAX_SEGMENT_FILES,
        });
    }
    let mut plan = ReplayPlan {
        segments: Vec::with_capacity(listing.segments.len()),
        next_seq: FIRST_SEQ,
    };
    let indexed = (FIRST_SEGMENT_INDEX..).zip(listing.segments.iter().enumerate());
    for (expected_index, (position, (index, path))) in indexed {
        // Rule 1.
        if *index != expected_index {
            return Err(corrupt(
                &segment_path(storage, expected_index),
                0,
                CorruptReason::MissingSegment {
                    next_present_index: *index,
                },
            ));
        }
        let is_last_segment = position + 1 == listing.segments.len();
        let segment = storage.read_segment(path)?;
        let bytes: &[u8] = &segment;
        // Rule 2.
        let header = frame::decode_segment_header(bytes).map_err(|e| corrupt(path, 0, e.into()))?;
        if header.segment_index != *index {
            return Err(corrupt(
                path,
                0,
                CorruptReason::IndexMismatch {
                    name_index: *index,
                    header_index: header.segment_index,
                },
            ));
        }
        if header.segment_size_bytes != bytes.len() as u64 {
            return Err(corrupt(
                path,
                0,
                CorruptReason::LengthMismatch {
                    file_bytes: bytes.len() as u64,
                    header_bytes: header.segment_size_bytes,
                },
            ));
        }
        if header.first_seq != plan.next_seq {
            return Err(corrupt(
                path,
                0,
                CorruptReason::SegmentSeqGap {
                    expected: plan.next_seq,
                    found: header.first_seq,
                },
            ));
        }
        // Rules 3 and 4.
        let walk = walk_segment(bytes, header.first_seq, is_last_segment, on_record)
            .map_err(|e| lift(path, e))?;
        plan.next_seq = walk.next_seq;
        plan.segments.push(SegmentSummary {
            index: *index,
            path: path.clone(),
            header,
            valid_end_bytes: walk.valid_end_bytes,
            last_batch_start_bytes: walk.last_batch_start_bytes,
            records: walk.records,
            torn_tail: match walk.end {
                SegmentEnd::Clean => None,
                SegmentEnd::Torn(tail) => Some(tail),
            },
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::BatchEncoder;

    /// The search as it was first written: hash each candidate's body.
    fn find_valid_batch_after_naive(bytes: &[u8], start: usize) -> Option<usize> {
        let mut offset = start + FRAME_ALIGNMENT_BYTES;
        while offset + BATCH_HEADER_BYTES <= bytes.len() {
            if frame::check_batch_envelope(&bytes[offset..]).is_ok() {
                return Some(offset);
            }
            offset += FRAME_ALIGNMENT_BYTES;
        }
        None
    }

    fn batch(first_seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![
            0u8;
            BATCH_HEADER_BYTES
                + frame::record_encoded_len(payload.len()).expect("small")
        ];
        let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("encoder");
        encoder.push(3, payload).expect("push");
        encoder.finish().expect("finish");
        buf
    }

    /// The linear search answers exactly what the naive one answers: on noise, on planted
    /// valid batches (also ending exactly at the end), and on plausible headers with bad sums.
    #[test]
    fn linear_search_agrees_with_the_naive_one() {
        let mut state = 0x5EED_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for round in 0..300 {
            let len = 8 * (4 + next() % 400);
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 {
                bytes.fill(0);
            }
            for _ in 0..next() % 6 {
                let at = 8 * (next() % (len / 8));
                let kind = next() % 3;
                let planted = match kind {
                    0 => batch(1 + next() as u64 % 9, &vec![next() as u8; next() % 40]),
                    _ => {
                        // A plausible header whose body reaches the end; wrong sum if kind 1.
                        let mut h = batch(1, &[]);
                        let body = (len.saturating_sub(at + BATCH_HEADER_BYTES)) / 8 * 8;
                        h.truncate(BATCH_HEADER_BYTES);
                        h[8..12].copy_from_slice(&(body as u32).to_le_bytes());
                        if kind == 2 && at + BATCH_HEADER_BYTES + body <= len {
                            let mut whole = bytes.clone();
                            whole[at..at + BATCH_HEADER_BYTES].copy_from_slice(&h);
                            let crc =
                                crc32c::crc32c(&whole[at + 8..at + BATCH_HEADER_BYTES + body]);
                            h[4..8].copy_from_slice(&crc.to_le_bytes());
                        }
                        h
                    }
                };
                if at + planted.len() <= len {
                    bytes[at..at + planted.len()].copy_from_slice(&planted);
                }
            }
            for start in [0, 8, 8 * (next() % (len / 8))] {
                assert_eq!(
                    find_valid_batch_after(&bytes, start),
                    find_valid_batch_after_naive(&bytes, start),
                    "round {round}, start {start}"
                );
            }
        }
    }
}
