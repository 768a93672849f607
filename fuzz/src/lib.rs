//! Helpers shared by the fuzz targets and the seed generator (`examples/gen_corpus.rs`):
//! the byte format of a `wal_replay` input, and a small batch encoder.

use std::path::Path;

use voucherd::wal::frame::{
    self, BATCH_HEADER_BYTES, BatchEncoder, SEGMENT_HEADER_BYTES, SegmentHeader,
};
use voucherd::wal::segment_file_name;

/// Separates the segment files of a `wal_replay` input.
pub const SEGMENT_DELIMITER: &[u8; 8] = b"\nNEXTSEG";
/// At most this many segment files per input.
pub const MAX_SEGMENTS: usize = 8;
/// Cap on one segment file, header and padding included.
pub const MAX_SEGMENT_FILE_BYTES: usize = 1024 * 1024;

/// Flag bit: the harness writes a valid segment header (right index, size and first seq) in
/// front of each piece. Without it, each piece is the whole file, header included.
pub const FLAG_FIX_HEADERS: u8 = 1 << 0;
/// Flag bit: pad each file with zeros to a multiple of 4096 bytes (like a preallocated segment).
pub const FLAG_PAD_PAGES: u8 = 1 << 1;
/// Flag bit: number the files 1, 3, 4, … (segment 2 missing).
pub const FLAG_GAP: u8 = 1 << 2;
/// Flag bit: also write a stale `.wal.tmp` and an unrelated file (both ignored by `scan`).
pub const FLAG_EXTRA_FILES: u8 = 1 << 3;
/// Flag bit: also write a `.wal` file whose name is not a segment number.
pub const FLAG_BAD_NAME: u8 = 1 << 4;
/// Flag bit: the replay callback fails at the record given by the flag byte's top bits.
pub const FLAG_FAIL_CALLBACK: u8 = 1 << 5;

/// A decoded `wal_replay` input: what files to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayInput {
    pub flags: u8,
    /// `(file name, contents)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Number of `NNNN.wal` segment files among `files`.
    pub segment_files: usize,
}

/// Seq after the last batch that decodes back to back from the end of the header: the first
/// seq the next segment must carry for the log to be continuous.
fn next_seq_after(contents: &[u8], first_seq: u64) -> u64 {
    let mut position = SEGMENT_HEADER_BYTES;
    let mut next = first_seq;
    while let Some(rest) = contents.get(position..) {
        let Ok(batch) = frame::decode_batch(rest) else {
            break;
        };
        next = batch
            .first_seq()
            .saturating_add(batch.record_count() as u64);
        position += batch.encoded_bytes();
    }
    next
}

fn round_up(len: usize, to: usize) -> usize {
    len.div_ceil(to) * to
}

impl ReplayInput {
    /// Interprets fuzzer bytes: a flag byte, then up to [`MAX_SEGMENTS`] pieces separated by
    /// [`SEGMENT_DELIMITER`].
    pub fn parse(data: &[u8]) -> Option<ReplayInput> {
        let (&flags, rest) = data.split_first()?;
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut rest = rest;
        while pieces.len() + 1 < MAX_SEGMENTS {
            match rest
                .windows(SEGMENT_DELIMITER.len())
                .position(|w| w == SEGMENT_DELIMITER)
            {
                Some(at) => {
                    pieces.push(&rest[..at]);
                    rest = &rest[at + SEGMENT_DELIMITER.len()..];
                }
                None => break,
            }
        }
        pieces.push(rest);

        let mut files = Vec::new();
        let mut next_seq = 1u64;
        for (i, piece) in pieces.iter().enumerate() {
            let index = if flags & FLAG_GAP != 0 && i > 0 {
                i as u64 + 2
            } else {
                i as u64 + 1
            };
            let mut contents = if flags & FLAG_FIX_HEADERS != 0 {
                let mut c = vec![0u8; SEGMENT_HEADER_BYTES];
                c.extend_from_slice(piece);
                c.resize(round_up(c.len(), 8), 0);
                c
            } else {
                piece.to_vec()
            };
            if flags & FLAG_PAD_PAGES != 0 {
                contents.resize(round_up(contents.len().max(1), 4096), 0);
            }
            contents.truncate(MAX_SEGMENT_FILE_BYTES);
            if flags & FLAG_FIX_HEADERS != 0 {
                let header = frame::encode_segment_header(&SegmentHeader {
                    segment_index: index,
                    first_seq: next_seq,
                    segment_size_bytes: contents.len() as u64,
                });
                contents[..SEGMENT_HEADER_BYTES].copy_from_slice(&header);
                next_seq = next_seq_after(&contents, next_seq);
            }
            files.push((segment_file_name(index), contents));
        }
        let segment_files = files.len();
        if flags & FLAG_EXTRA_FILES != 0 {
            files.push((
                "00000000000000000009.wal.tmp".to_string(),
                b"half-made".to_vec(),
            ));
            files.push(("LOCK".to_string(), Vec::new()));
        }
        if flags & FLAG_BAD_NAME != 0 {
            files.push(("not-a-number.wal".to_string(), Vec::new()));
        }
        Some(ReplayInput {
            flags,
            files,
            segment_files,
        })
    }

    /// The record at which a failing callback fails, if [`FLAG_FAIL_CALLBACK`] is set.
    pub fn fail_at_record(&self) -> Option<u64> {
        (self.flags & FLAG_FAIL_CALLBACK != 0).then_some(u64::from(self.flags >> 6))
    }

    /// Replaces the contents of `dir` with this input's files. `previous` names the files the
    /// last call wrote (the directory holds nothing else); files of the same name are
    /// overwritten rather than removed first, which saves system calls on every run.
    pub fn write_to(&self, dir: &Path, previous: &mut Vec<String>) -> std::io::Result<()> {
        for name in previous.iter() {
            if !self.files.iter().any(|(n, _)| n == name) {
                std::fs::remove_file(dir.join(name))?;
            }
        }
        previous.clear();
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents)?;
            previous.push(name.clone());
        }
        Ok(())
    }
}

/// The inverse of [`ReplayInput::parse`] for seeds: a flag byte then the pieces.
pub fn replay_input_bytes(flags: u8, pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![flags];
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEGMENT_DELIMITER);
        }
        out.extend_from_slice(piece);
    }
    out
}

/// Encodes one batch of `(kind, payload)` records starting at `first_seq`.
pub fn encode_batch(first_seq: u64, records: &[(u8, &[u8])]) -> Vec<u8> {
    let body: usize = records
        .iter()
        .map(|(_, p)| frame::record_encoded_len(p.len()).expect("small payload"))
        .sum();
    let mut buf = vec![0u8; BATCH_HEADER_BYTES + body];
    let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("batch encoder");
    for (kind, payload) in records {
        encoder.push(*kind, payload).expect("push record");
    }
    let len = encoder.finish().expect("finish batch");
    buf.truncate(len);
    buf
}

/// Flag bit of a `snapshot_load` input: the rest is a stream of records (`kind u8 | seq u64 |
/// payload length u32 | payload`, the snapshot body format; a length past the end is cut to
/// what remains) that the harness frames as a snapshot file with a valid header, record count,
/// body length and checksums, so the fuzzer explores the content past the checksums. Without
/// it, the rest is the whole file.
pub const SNAP_FLAG_RESEAL: u8 = 1 << 0;
/// With [`SNAP_FLAG_RESEAL`]: the first 8 bytes of the rest (little-endian) are the snapshot's
/// covered seq. Without it the covered seq is the largest record seq.
pub const SNAP_FLAG_COVERED_SEQ: u8 = 1 << 1;
/// Bytes of a snapshot record's head: kind, seq, payload length.
pub const SNAP_RECORD_HEAD_BYTES: usize = 13;

/// A decoded `snapshot_load` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInput {
    pub flags: u8,
    /// The snapshot file to load.
    pub file: Vec<u8>,
}

impl SnapshotInput {
    pub fn parse(data: &[u8]) -> Option<SnapshotInput> {
        let (&flags, rest) = data.split_first()?;
        if flags & SNAP_FLAG_RESEAL == 0 {
            return Some(SnapshotInput {
                flags,
                file: rest.to_vec(),
            });
        }
        let (covered, mut rest) = if flags & SNAP_FLAG_COVERED_SEQ != 0 {
            let (head, rest) = rest.split_at_checked(8)?;
            (Some(u64::from_le_bytes(head.try_into().ok()?)), rest)
        } else {
            (None, rest)
        };
        let mut records: Vec<(u8, u64, &[u8])> = Vec::new();
        while rest.len() >= SNAP_RECORD_HEAD_BYTES {
            let kind = rest[0];
            let seq = u64::from_le_bytes(rest[1..9].try_into().ok()?);
            let len = u32::from_le_bytes(rest[9..13].try_into().ok()?) as usize;
            let body = &rest[SNAP_RECORD_HEAD_BYTES..];
            let len = len.min(body.len());
            records.push((kind, seq, &body[..len]));
            rest = &body[len..];
        }
        let covered_seq = covered.unwrap_or_else(|| records.iter().map(|r| r.1).max().unwrap_or(0));
        let file =
            voucherd::snapshot::encode_records(covered_seq, voucherd::core::UnixMillis(0), records);
        Some(SnapshotInput { flags, file })
    }

    pub fn resealed(&self) -> bool {
        self.flags & SNAP_FLAG_RESEAL != 0
    }
}

/// The body of a snapshot file (between header and trailer), as a resealed input takes it.
pub fn snapshot_body(file: &[u8]) -> &[u8] {
    const HEADER_BYTES: usize = 64;
    const TRAILER_BYTES: usize = 12;
    &file[HEADER_BYTES..file.len() - TRAILER_BYTES]
}

/// Vouchers the tranche definitions among `records` presize their maps for, counting every
/// definition that passes validation (an over-estimate: a redefinition presizes nothing).
pub fn presized_vouchers<'a>(records: impl Iterator<Item = (u8, u64, &'a [u8])>) -> u64 {
    records
        .filter(|(kind, _, _)| *kind == voucherd::journal::KIND_TRANCHE_DEFINED)
        .filter_map(
            |(kind, _, payload)| match voucherd::journal::decode(kind, payload) {
                Ok(voucherd::core::Event::TrancheDefined { spec, .. })
                    if spec.validate().is_ok() =>
                {
                    Some(spec.total_quota())
                }
                _ => None,
            },
        )
        .sum()
}
