//! On-disk framing of the WAL: segment headers, batches and records, with CRC32C.
//!
//! Everything here is a pure function over byte slices. Nothing does I/O, nothing allocates
//! on the decode path, and no input — however truncated or hostile — makes a function panic:
//! every length is checked before it is used, and every failure is a typed [`FrameError`] or
//! [`HeaderError`]. This module is the fuzzing target for the log format.
//!
//! # Byte layout (all integers little-endian)
//!
//! Segment header, [`SEGMENT_HEADER_BYTES`] = 64 bytes at offset 0 of every segment file:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `b"VCHRWAL\0"` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | segment index (equals the number in the file name) |
//! | 24 | 8 | first seq that this segment holds |
//! | 32 | 8 | segment size in bytes (equals the file length) |
//! | 40 | 4 | CRC32C of bytes 0..40 |
//! | 44 | 20 | reserved, zero |
//!
//! Batch, starting at an 8-aligned offset, [`BATCH_HEADER_BYTES`] = 24 bytes of header then the body:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `b"VBAT"` |
//! | 4 | 4 | CRC32C of bytes 8..(24 + body length): the rest of the header and the whole body |
//! | 8 | 4 | body length in bytes (multiple of 8) |
//! | 12 | 4 | record count (at least 1) |
//! | 16 | 8 | seq of the first record |
//! | 24 | body length | records, back to back |
//!
//! Record, [`RECORD_HEADER_BYTES`] = 24 bytes of header, then the payload, then zero padding to 8:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | payload length in bytes |
//! | 4 | 4 | CRC32C of kind (1 byte), seq (8 bytes LE) and payload |
//! | 8 | 1 | kind (never 0) |
//! | 9 | 7 | zero padding |
//! | 16 | 8 | seq |
//! | 24 | payload length | payload, then zeros up to the next multiple of 8 |
//!
//! The batch CRC alone would detect any damage; the per-record CRC, the seq inside each record
//! and the zero-padding checks are the second half of a paired assertion (check before writing,
//! check again after reading back), so a writer bug is caught as corruption rather than replayed.

use thiserror::Error;

/// Magic bytes at offset 0 of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"VCHRWAL\0";
/// On-disk format version written into every segment header.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first batch starts right after it.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Magic at the start of every batch (`b"VBAT"` read as a little-endian u32).
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"VBAT");
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Size of a record header (everything before the payload).
pub const RECORD_HEADER_BYTES: usize = 24;
/// Batches and records start at multiples of this.
pub const FRAME_ALIGNMENT_BYTES: usize = 8;
/// Largest payload one record may carry.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 64 * 1024;
/// Encoded size of a record with the largest allowed payload.
pub const MAX_RECORD_ENCODED_BYTES: usize = RECORD_HEADER_BYTES + MAX_RECORD_PAYLOAD_BYTES;
/// Largest batch body the decoder accepts (and the encoder produces).
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most records one batch may hold.
pub const MAX_BATCH_RECORDS: usize = 65_536;

/// The batch checksum covers the batch from this offset (after the magic and the checksum).
pub const BATCH_CRC_COVERAGE_START: usize = 8;

const SEGMENT_HEADER_CRC_OFFSET: usize = 40;
const RECORD_KIND_OFFSET: usize = 8;
const RECORD_PAD_START: usize = 9;
const RECORD_SEQ_OFFSET: usize = 16;

/// The decoded fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Index of the segment; segment files are numbered 1, 2, 3, … with no gaps.
    pub segment_index: u64,
    /// Seq of the first record this segment holds (or will hold, if it is still empty).
    pub first_seq: u64,
    /// Length of the segment file in bytes.
    pub segment_size_bytes: u64,
}

/// Why a segment header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("segment header truncated: {available_bytes} of {SEGMENT_HEADER_BYTES} bytes present")]
    Truncated { available_bytes: usize },
    #[error("bad segment magic {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error(
        "unsupported segment format version {found} (this build reads {SEGMENT_FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u32 },
    #[error("segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("segment header reserved bytes are not zero")]
    NonZeroReserved,
    #[error("segment header first seq is 0 (seqs start at 1)")]
    ZeroFirstSeq,
    #[error(
        "segment header size {segment_size_bytes} bytes is not a multiple of {FRAME_ALIGNMENT_BYTES} or smaller than the header"
    )]
    BadSegmentSize { segment_size_bytes: u64 },
}

/// Why bytes could not be decoded as a batch (or a record inside one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("batch truncated: needs {needed_bytes} bytes, {available_bytes} present")]
    BatchTruncated {
        needed_bytes: usize,
        available_bytes: usize,
    },
    #[error("bad batch magic {found:#010x}")]
    BadBatchMagic { found: u32 },
    #[error("batch body length {body_bytes} bytes exceeds the limit of {MAX_BATCH_BODY_BYTES}")]
    BatchBodyTooLarge { body_bytes: usize },
    #[error("batch body length {body_bytes} bytes is not a multiple of {FRAME_ALIGNMENT_BYTES}")]
    BatchBodyMisaligned { body_bytes: usize },
    #[error("batch has no records")]
    EmptyBatch,
    #[error("batch claims {records} records, the limit is {MAX_BATCH_RECORDS}")]
    TooManyRecords { records: usize },
    #[error("batch first seq is 0 (seqs start at 1)")]
    ZeroFirstSeq,
    #[error("batch seq range starting at {first_seq} with {records} records overflows u64")]
    SeqOverflow { first_seq: u64, records: usize },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BatchChecksumMismatch { stored: u32, computed: u32 },
    #[error("record {index} of the batch is truncated at body offset {body_offset_bytes}")]
    RecordTruncated {
        index: usize,
        body_offset_bytes: usize,
    },
    #[error(
        "record {index} payload length {payload_bytes} bytes exceeds the limit of {MAX_RECORD_PAYLOAD_BYTES}"
    )]
    RecordTooLarge { index: usize, payload_bytes: usize },
    #[error("record {index} has kind 0, which is never written")]
    RecordKindZero { index: usize },
    #[error("record {index} has non-zero padding")]
    RecordNonZeroPadding { index: usize },
    #[error("record {index} has seq {found}, expected {expected}")]
    RecordSeqMismatch {
        index: usize,
        expected: u64,
        found: u64,
    },
    #[error(
        "record {index} (seq {seq}) checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    RecordChecksumMismatch {
        index: usize,
        seq: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "batch body is {body_bytes} bytes but its {records} records end at {records_end_bytes}"
    )]
    BodyLengthMismatch {
        body_bytes: usize,
        records: usize,
        records_end_bytes: usize,
    },
}

/// Why a batch could not be encoded. Every variant is a caller bug or a limit the caller
/// should have checked first; the WAL validates before encoding so these never reach disk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("destination buffer too small: needs {needed_bytes} bytes, has {available_bytes}")]
    BufferTooSmall {
        needed_bytes: usize,
        available_bytes: usize,
    },
    #[error("payload of {payload_bytes} bytes exceeds the limit of {MAX_RECORD_PAYLOAD_BYTES}")]
    PayloadTooLarge { payload_bytes: usize },
    #[error("record kind 0 is reserved as invalid")]
    KindZero,
    #[error("batch would exceed {MAX_BATCH_RECORDS} records")]
    TooManyRecords,
    #[error("batch body would exceed {MAX_BATCH_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("first seq 0 is invalid (seqs start at 1)")]
    ZeroFirstSeq,
    #[error("seq overflow")]
    SeqOverflow,
    #[error("a batch must hold at least one record")]
    EmptyBatch,
}

/// One record as stored in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Position in the log: contiguous from 1, assigned in append order.
    pub seq: u64,
    /// Caller-defined record type; 0 is never valid.
    pub kind: u8,
    /// Caller-defined bytes.
    pub payload: &'a [u8],
}

/// A batch whose header and checksum are valid; its records are not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct BatchEnvelope<'a> {
    /// Seq of the first record.
    pub first_seq: u64,
    /// Number of records the header claims.
    pub record_count: usize,
    /// Header plus body: how far the next batch starts from this one.
    pub encoded_bytes: usize,
    body: &'a [u8],
}

/// A fully validated batch: checksum, every record checksum, seqs and padding.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    envelope: BatchEnvelope<'a>,
}

/// Rounds `len` up to the next multiple of [`FRAME_ALIGNMENT_BYTES`], or `None` on overflow.
pub fn aligned_len(len: usize) -> Option<usize> {
    let rem = len % FRAME_ALIGNMENT_BYTES;
    if rem == 0 {
        Some(len)
    } else {
        len.checked_add(FRAME_ALIGNMENT_BYTES - rem)
    }
}

/// Encoded size of one record with a payload of `payload_bytes` (header + payload + padding).
///
/// Returns `None` only for absurd sizes that overflow `usize`.
pub fn record_encoded_len(payload_bytes: usize) -> Option<usize> {
    aligned_len(payload_bytes)?.checked_add(RECORD_HEADER_BYTES)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = buf.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn record_crc(kind: u8, seq: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&[kind]);
    let crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Encodes a segment header.
pub fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&header.segment_index.to_le_bytes());
    out[24..32].copy_from_slice(&header.first_seq.to_le_bytes());
    out[32..40].copy_from_slice(&header.segment_size_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&out[..SEGMENT_HEADER_CRC_OFFSET]);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and validates the segment header at the start of `buf`.
pub fn decode_segment_header(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let truncated = HeaderError::Truncated {
        available_bytes: buf.len(),
    };
    let header = buf.get(..SEGMENT_HEADER_BYTES).ok_or(truncated.clone())?;
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[0..8]);
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    let stored = read_u32(header, SEGMENT_HEADER_CRC_OFFSET).ok_or(truncated.clone())?;
    let computed = crc32c::crc32c(&header[..SEGMENT_HEADER_CRC_OFFSET]);
    if stored != computed {
        return Err(HeaderError::ChecksumMismatch { stored, computed });
    }
    let version = read_u32(header, 8).ok_or(truncated.clone())?;
    if version != SEGMENT_FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    if !all_zero(&header[12..16]) || !all_zero(&header[44..]) {
        return Err(HeaderError::NonZeroReserved);
    }
    let segment_index = read_u64(header, 16).ok_or(truncated.clone())?;
    let first_seq = read_u64(header, 24).ok_or(truncated.clone())?;
    let segment_size_bytes = read_u64(header, 32).ok_or(truncated)?;
    if first_seq == 0 {
        return Err(HeaderError::ZeroFirstSeq);
    }
    if !segment_size_bytes.is_multiple_of(FRAME_ALIGNMENT_BYTES as u64)
        || segment_size_bytes < SEGMENT_HEADER_BYTES as u64
    {
        return Err(HeaderError::BadSegmentSize { segment_size_bytes });
    }
    Ok(SegmentHeader {
        segment_index,
        first_seq,
        segment_size_bytes,
    })
}

/// Writes one batch directly into a destination buffer (for the WAL, the mapped segment).
///
/// Usage: [`BatchEncoder::new`], then [`BatchEncoder::push`] per record, then
/// [`BatchEncoder::finish`], which writes the header and checksum and returns the batch length.
#[derive(Debug)]
pub struct BatchEncoder<'a> {
    dst: &'a mut [u8],
    first_seq: u64,
    records: usize,
    body_bytes: usize,
}

impl<'a> BatchEncoder<'a> {
    /// Starts a batch whose first record will get `first_seq`.
    pub fn new(dst: &'a mut [u8], first_seq: u64) -> Result<Self, EncodeError> {
        if first_seq == 0 {
            return Err(EncodeError::ZeroFirstSeq);
        }
        if dst.len() < BATCH_HEADER_BYTES {
            return Err(EncodeError::BufferTooSmall {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: dst.len(),
            });
        }
        Ok(Self {
            dst,
            first_seq,
            records: 0,
            body_bytes: 0,
        })
    }

    /// Seq the next pushed record will get.
    pub fn next_seq(&self) -> Option<u64> {
        self.first_seq.checked_add(self.records as u64)
    }

    /// Appends one record; its seq is `first_seq + records pushed so far`.
    ///
    /// The seq after the record must still be a `u64` (so seq `u64::MAX` is never written),
    /// the same rule [`check_batch_envelope`] and `Wal::append` apply: a batch the encoder
    /// finishes always decodes.
    pub fn push(&mut self, kind: u8, payload: &[u8]) -> Result<u64, EncodeError> {
        if kind == 0 {
            return Err(EncodeError::KindZero);
        }
        if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
            return Err(EncodeError::PayloadTooLarge {
                payload_bytes: payload.len(),
            });
        }
        if self.records >= MAX_BATCH_RECORDS {
            return Err(EncodeError::TooManyRecords);
        }
        let seq = self
            .next_seq()
            .filter(|seq| seq.checked_add(1).is_some())
            .ok_or(EncodeError::SeqOverflow)?;
        let record_bytes = record_encoded_len(payload.len()).ok_or(EncodeError::BodyTooLarge)?;
        let new_body_bytes = self
            .body_bytes
            .checked_add(record_bytes)
            .filter(|&b| b <= MAX_BATCH_BODY_BYTES)
            .ok_or(EncodeError::BodyTooLarge)?;
        let start = BATCH_HEADER_BYTES + self.body_bytes;
        let end = BATCH_HEADER_BYTES + new_body_bytes;
        let available_bytes = self.dst.len();
        let record = self
            .dst
            .get_mut(start..end)
            .ok_or(EncodeError::BufferTooSmall {
                needed_bytes: end,
                available_bytes,
            })?;
        let payload_len =
            u32::try_from(payload.len()).map_err(|_| EncodeError::PayloadTooLarge {
                payload_bytes: payload.len(),
            })?;
        record[0..4].copy_from_slice(&payload_len.to_le_bytes());
        record[4..8].copy_from_slice(&record_crc(kind, seq, payload).to_le_bytes());
        record[RECORD_KIND_OFFSET] = kind;
        record[RECORD_PAD_START..RECORD_SEQ_OFFSET].fill(0);
        record[RECORD_SEQ_OFFSET..RECORD_HEADER_BYTES].copy_from_slice(&seq.to_le_bytes());
        let payload_end = RECORD_HEADER_BYTES + payload.len();
        record[RECORD_HEADER_BYTES..payload_end].copy_from_slice(payload);
        record[payload_end..].fill(0);
        self.records += 1;
        self.body_bytes = new_body_bytes;
        Ok(seq)
    }

    /// Writes the batch header and checksum; returns the batch's total length in bytes.
    pub fn finish(self) -> Result<usize, EncodeError> {
        if self.records == 0 {
            return Err(EncodeError::EmptyBatch);
        }
        let body_len = u32::try_from(self.body_bytes).map_err(|_| EncodeError::BodyTooLarge)?;
        let count = u32::try_from(self.records).map_err(|_| EncodeError::TooManyRecords)?;
        let total = BATCH_HEADER_BYTES + self.body_bytes;
        let batch = &mut self.dst[..total];
        batch[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        batch[8..12].copy_from_slice(&body_len.to_le_bytes());
        batch[12..16].copy_from_slice(&count.to_le_bytes());
        batch[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32c::crc32c(&batch[BATCH_CRC_COVERAGE_START..]);
        batch[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(total)
    }
}

/// The fields of a batch header that passed every check except the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// The checksum the header claims for bytes `BATCH_CRC_COVERAGE_START..encoded_bytes`.
    pub stored_crc: u32,
    /// Body length in bytes.
    pub body_bytes: usize,
    /// Number of records the header claims.
    pub record_count: usize,
    /// Seq of the first record.
    pub first_seq: u64,
}

impl BatchHeader {
    /// Header plus body.
    pub fn encoded_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.body_bytes
    }
}

/// Checks the batch header at the start of `buf`: every check of [`check_batch_envelope`]
/// except the ones that need the body (its presence and the checksum).
pub fn check_batch_header(buf: &[u8]) -> Result<BatchHeader, FrameError> {
    let header_truncated = FrameError::BatchTruncated {
        needed_bytes: BATCH_HEADER_BYTES,
        available_bytes: buf.len(),
    };
    let header = buf
        .get(..BATCH_HEADER_BYTES)
        .ok_or(header_truncated.clone())?;
    let magic = read_u32(header, 0).ok_or(header_truncated.clone())?;
    if magic != BATCH_MAGIC {
        return Err(FrameError::BadBatchMagic { found: magic });
    }
    let stored_crc = read_u32(header, 4).ok_or(header_truncated.clone())?;
    let body_bytes = read_u32(header, 8).ok_or(header_truncated.clone())? as usize;
    let record_count = read_u32(header, 12).ok_or(header_truncated.clone())? as usize;
    let first_seq = read_u64(header, 16).ok_or(header_truncated)?;
    if body_bytes > MAX_BATCH_BODY_BYTES {
        return Err(FrameError::BatchBodyTooLarge { body_bytes });
    }
    if !body_bytes.is_multiple_of(FRAME_ALIGNMENT_BYTES) {
        return Err(FrameError::BatchBodyMisaligned { body_bytes });
    }
    if record_count == 0 {
        return Err(FrameError::EmptyBatch);
    }
    if record_count > MAX_BATCH_RECORDS {
        return Err(FrameError::TooManyRecords {
            records: record_count,
        });
    }
    if first_seq == 0 {
        return Err(FrameError::ZeroFirstSeq);
    }
    if first_seq.checked_add(record_count as u64).is_none() {
        return Err(FrameError::SeqOverflow {
            first_seq,
            records: record_count,
        });
    }
    Ok(BatchHeader {
        stored_crc,
        body_bytes,
        record_count,
        first_seq,
    })
}

/// Checks the batch header and the batch checksum at the start of `buf`.
///
/// Success means these exact bytes were produced by [`BatchEncoder::finish`] (up to a CRC32C
/// collision): a torn or partial write cannot pass. Record-level checks are left to
/// [`decode_batch`]; replay treats a failure here as "no batch starts here" and a failure there
/// as corruption.
pub fn check_batch_envelope(buf: &[u8]) -> Result<BatchEnvelope<'_>, FrameError> {
    let BatchHeader {
        stored_crc: stored,
        body_bytes,
        record_count,
        first_seq,
    } = check_batch_header(buf)?;
    let encoded_bytes = BATCH_HEADER_BYTES + body_bytes;
    let batch = buf.get(..encoded_bytes).ok_or(FrameError::BatchTruncated {
        needed_bytes: encoded_bytes,
        available_bytes: buf.len(),
    })?;
    let computed = crc32c::crc32c(&batch[BATCH_CRC_COVERAGE_START..]);
    if stored != computed {
        return Err(FrameError::BatchChecksumMismatch { stored, computed });
    }
    Ok(BatchEnvelope {
        first_seq,
        record_count,
        encoded_bytes,
        body: &batch[BATCH_HEADER_BYTES..],
    })
}

/// Decodes one record at `offset` of a batch body; returns it and the offset of the next one.
fn decode_record(
    body: &[u8],
    offset: usize,
    index: usize,
    expected_seq: u64,
) -> Result<(RecordRef<'_>, usize), FrameError> {
    let truncated = FrameError::RecordTruncated {
        index,
        body_offset_bytes: offset,
    };
    let header_end = offset
        .checked_add(RECORD_HEADER_BYTES)
        .ok_or(truncated.clone())?;
    let header = body.get(offset..header_end).ok_or(truncated.clone())?;
    let payload_bytes = read_u32(header, 0).ok_or(truncated.clone())? as usize;
    if payload_bytes > MAX_RECORD_PAYLOAD_BYTES {
        return Err(FrameError::RecordTooLarge {
            index,
            payload_bytes,
        });
    }
    let stored = read_u32(header, 4).ok_or(truncated.clone())?;
    let kind = header[RECORD_KIND_OFFSET];
    if kind == 0 {
        return Err(FrameError::RecordKindZero { index });
    }
    if !all_zero(&header[RECORD_PAD_START..RECORD_SEQ_OFFSET]) {
        return Err(FrameError::RecordNonZeroPadding { index });
    }
    let seq = read_u64(header, RECORD_SEQ_OFFSET).ok_or(truncated.clone())?;
    if seq != expected_seq {
        return Err(FrameError::RecordSeqMismatch {
            index,
            expected: expected_seq,
            found: seq,
        });
    }
    let record_bytes = record_encoded_len(payload_bytes).ok_or(truncated.clone())?;
    let record_end = offset.checked_add(record_bytes).ok_or(truncated.clone())?;
    let payload_end = header_end + payload_bytes;
    let payload = body.get(header_end..payload_end).ok_or(truncated.clone())?;
    let padding = body.get(payload_end..record_end).ok_or(truncated)?;
    if !all_zero(padding) {
        return Err(FrameError::RecordNonZeroPadding { index });
    }
    let computed = record_crc(kind, seq, payload);
    if stored != computed {
        return Err(FrameError::RecordChecksumMismatch {
            index,
            seq,
            stored,
            computed,
        });
    }
    Ok((RecordRef { seq, kind, payload }, record_end))
}

impl<'a> BatchEnvelope<'a> {
    /// Validates every record of the batch.
    pub fn validate_records(self) -> Result<Batch<'a>, FrameError> {
        let mut offset = 0;
        for index in 0..self.record_count {
            let expected_seq = self.first_seq + index as u64;
            let (_, next) = decode_record(self.body, offset, index, expected_seq)?;
            offset = next;
        }
        if offset != self.body.len() {
            return Err(FrameError::BodyLengthMismatch {
                body_bytes: self.body.len(),
                records: self.record_count,
                records_end_bytes: offset,
            });
        }
        Ok(Batch { envelope: self })
    }
}

/// Decodes and fully validates the batch at the start of `buf`.
pub fn decode_batch(buf: &[u8]) -> Result<Batch<'_>, FrameError> {
    check_batch_envelope(buf)?.validate_records()
}

impl<'a> Batch<'a> {
    /// Seq of the first record.
    pub fn first_seq(&self) -> u64 {
        self.envelope.first_seq
    }

    /// Number of records.
    pub fn record_count(&self) -> usize {
        self.envelope.record_count
    }

    /// Header plus body: the offset of the next batch relative to this one.
    pub fn encoded_bytes(&self) -> usize {
        self.envelope.encoded_bytes
    }

    /// Iterates the records in seq order. Items are `Result`s so that no path needs an
    /// `unwrap`, although a validated batch never yields an error.
    pub fn records(&self) -> Records<'a> {
        Records {
            body: self.envelope.body,
            offset: 0,
            index: 0,
            record_count: self.envelope.record_count,
            first_seq: self.envelope.first_seq,
        }
    }
}

/// Iterator over the records of a [`Batch`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    body: &'a [u8],
    offset: usize,
    index: usize,
    record_count: usize,
    first_seq: u64,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordRef<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.record_count {
            return None;
        }
        let expected_seq = self.first_seq.wrapping_add(self.index as u64);
        match decode_record(self.body, self.offset, self.index, expected_seq) {
            Ok((record, next)) => {
                self.offset = next;
                self.index += 1;
                Some(Ok(record))
            }
            Err(error) => {
                // Stop after the first error so a caller that keeps iterating cannot loop.
                self.index = self.record_count;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic PRNG (splitmix64) so failures replay from a printed seed.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            crate::core::rng::splitmix_next(&mut self.0)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next_u64() % bound.max(1) as u64) as usize
        }
    }

    fn seed() -> u64 {
        let seed = std::env::var("WAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            });
        println!("frame test seed: WAL_TEST_SEED={seed}");
        seed
    }

    fn encode(first_seq: u64, records: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let body: usize = records
            .iter()
            .map(|(_, p)| record_encoded_len(p.len()).expect("small"))
            .sum();
        let mut buf = vec![0xAA; BATCH_HEADER_BYTES + body];
        let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("encoder");
        for (kind, payload) in records {
            encoder.push(*kind, payload).expect("push");
        }
        let len = encoder.finish().expect("finish");
        assert_eq!(len, buf.len());
        buf
    }

    fn collect(batch: &Batch<'_>) -> Vec<(u64, u8, Vec<u8>)> {
        batch
            .records()
            .map(|r| r.map(|r| (r.seq, r.kind, r.payload.to_vec())))
            .collect::<Result<_, _>>()
            .expect("validated batch yields records")
    }

    #[test]
    fn segment_header_round_trip_and_rejects_damage() {
        let header = SegmentHeader {
            segment_index: 7,
            first_seq: 1234,
            segment_size_bytes: 1 << 20,
        };
        let bytes = encode_segment_header(&header);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        for i in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[i] ^= 0x01;
            assert!(decode_segment_header(&damaged).is_err(), "flip at {i}");
        }
        for len in 0..SEGMENT_HEADER_BYTES {
            assert_eq!(
                decode_segment_header(&bytes[..len]),
                Err(HeaderError::Truncated {
                    available_bytes: len
                })
            );
        }
    }

    #[test]
    fn batch_round_trip_preserves_every_record() {
        let records: Vec<(u8, Vec<u8>)> = (0..40u8)
            .map(|i| (i % 5 + 1, (0..i as usize * 3).map(|b| b as u8).collect()))
            .collect();
        let buf = encode(100, &records);
        let batch = decode_batch(&buf).expect("decode");
        assert_eq!(batch.first_seq(), 100);
        assert_eq!(batch.record_count(), records.len());
        assert_eq!(batch.encoded_bytes(), buf.len());
        let decoded = collect(&batch);
        for (i, (seq, kind, payload)) in decoded.iter().enumerate() {
            assert_eq!(*seq, 100 + i as u64);
            assert_eq!(*kind, records[i].0);
            assert_eq!(payload, &records[i].1);
        }
        assert_eq!(buf.len() % FRAME_ALIGNMENT_BYTES, 0);
    }

    #[test]
    fn record_round_trip_at_size_limits() {
        for len in [
            0,
            1,
            7,
            8,
            9,
            MAX_RECORD_PAYLOAD_BYTES - 1,
            MAX_RECORD_PAYLOAD_BYTES,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let buf = encode(u64::MAX - 1, &[(255, payload.clone())]);
            let batch = decode_batch(&buf).expect("decode");
            assert_eq!(collect(&batch), vec![(u64::MAX - 1, 255, payload)]);
        }
    }

    #[test]
    fn encoder_rejects_invalid_input() {
        let mut buf = vec![0u8; 1 << 20];
        let mut encoder = BatchEncoder::new(&mut buf, 1).expect("encoder");
        assert_eq!(encoder.push(0, b"x"), Err(EncodeError::KindZero));
        let big = vec![0u8; MAX_RECORD_PAYLOAD_BYTES + 1];
        assert_eq!(
            encoder.push(1, &big),
            Err(EncodeError::PayloadTooLarge {
                payload_bytes: MAX_RECORD_PAYLOAD_BYTES + 1
            })
        );
        assert_eq!(encoder.finish(), Err(EncodeError::EmptyBatch));
        assert_eq!(
            BatchEncoder::new(&mut buf, 0).map(|_| ()),
            Err(EncodeError::ZeroFirstSeq)
        );
        let mut small = vec![0u8; BATCH_HEADER_BYTES + RECORD_HEADER_BYTES];
        let mut encoder = BatchEncoder::new(&mut small, 1).expect("encoder");
        assert!(matches!(
            encoder.push(1, b"123456789"),
            Err(EncodeError::BufferTooSmall { .. })
        ));
        encoder.push(1, b"").expect("empty payload fits");
        let mut tail = vec![0u8; 64];
        let mut encoder = BatchEncoder::new(&mut tail, u64::MAX - 1).expect("encoder");
        encoder.push(1, b"").expect("last seq");
        assert_eq!(encoder.push(1, b""), Err(EncodeError::SeqOverflow));
    }

    /// Regression (fuzz target `wal_frame_decode`): the encoder wrote a record with seq
    /// `u64::MAX`, whose batch the decoder refuses (the seq after it overflows). A writer and
    /// a reader that disagree would make replay treat a synced batch as a torn tail.
    #[test]
    fn every_finished_batch_decodes_even_at_the_top_of_the_seq_range() {
        for first_seq in [u64::MAX, u64::MAX - 1, u64::MAX - 2] {
            let mut buf = vec![0u8; 1024];
            let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("encoder");
            let mut pushed = 0u64;
            while encoder.push(7, b"x").is_ok() {
                pushed += 1;
            }
            assert_eq!(pushed, u64::MAX - first_seq, "first seq {first_seq}");
            if pushed == 0 {
                assert_eq!(encoder.finish(), Err(EncodeError::EmptyBatch));
                continue;
            }
            let len = encoder.finish().expect("finish");
            let batch = decode_batch(&buf[..len]).expect("a finished batch decodes");
            assert_eq!(batch.first_seq(), first_seq);
            assert_eq!(batch.record_count() as u64, pushed);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = encode(5, &[(1, b"hello".to_vec()), (2, vec![9; 100])]);
        for len in 0..buf.len() {
            assert!(decode_batch(&buf[..len]).is_err(), "prefix of {len} bytes");
        }
        assert!(decode_batch(&buf).is_ok());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = encode(5, &[(1, b"hello".to_vec()), (2, vec![9; 100])]);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_batch(&damaged).is_err(),
                    "flip byte {byte} bit {bit}"
                );
            }
        }
    }

    /// A batch whose checksum is valid but whose records are wrong (a writer bug) is caught by
    /// the record-level checks, with a specific error.
    #[test]
    fn record_level_damage_under_a_valid_batch_checksum_is_reported() {
        let mut buf = encode(10, &[(1, b"abc".to_vec()), (2, b"defg".to_vec())]);
        let second_record = BATCH_HEADER_BYTES + record_encoded_len(3).expect("small");
        buf[second_record + RECORD_SEQ_OFFSET] = 99;
        let crc = crc32c::crc32c(&buf[BATCH_CRC_COVERAGE_START..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let envelope = check_batch_envelope(&buf).expect("batch checksum is valid");
        assert_eq!(
            envelope.validate_records().map(|_| ()),
            Err(FrameError::RecordSeqMismatch {
                index: 1,
                expected: 11,
                found: 99
            })
        );
    }

    /// Seeded random mutations: decoding must return (never panic), and whatever decodes must
    /// be internally consistent.
    #[test]
    fn random_mutations_never_panic() {
        let mut rng = Rng(seed());
        for round in 0..3_000 {
            let count = 1 + rng.below(6);
            let records: Vec<(u8, Vec<u8>)> = (0..count)
                .map(|_| {
                    let len = rng.below(300);
                    (
                        1 + rng.below(255) as u8,
                        (0..len).map(|_| rng.next_u64() as u8).collect(),
                    )
                })
                .collect();
            let mut buf = encode(1 + rng.below(1000) as u64, &records);
            match rng.below(4) {
                0 => {
                    let flips = 1 + rng.below(8);
                    for _ in 0..flips {
                        let at = rng.below(buf.len());
                        buf[at] = rng.next_u64() as u8;
                    }
                }
                1 => buf.truncate(rng.below(buf.len())),
                2 => {
                    let len = rng.below(600);
                    buf = (0..len).map(|_| rng.next_u64() as u8).collect();
                    if len >= 4 && rng.below(2) == 0 {
                        buf[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
                    }
                }
                _ => {
                    // Valid header fields with a random (possibly huge) length and count.
                    let body = rng.next_u64() as u32;
                    buf[8..12].copy_from_slice(&body.to_le_bytes());
                    let count = rng.next_u64() as u32 % 8;
                    buf[12..16].copy_from_slice(&count.to_le_bytes());
                }
            }
            let _ = decode_segment_header(&buf);
            if let Ok(batch) = decode_batch(&buf) {
                let decoded: Result<Vec<_>, _> = batch.records().collect();
                let decoded = decoded.unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(decoded.len(), batch.record_count(), "round {round}");
            }
        }
    }
}
