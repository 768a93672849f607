//! Checkpoints: the full state written to one checksummed file, so a restart
//! loads it and replays only the WAL records after it.
//!
//! A snapshot is a compacted journal: the campaigns' current definitions,
//! every merchant (as single-import records with their current status), then
//! each tranche's own event log (definition, pauses, claims, redemptions,
//! refunds, settlements, revocations, pool draws) in order, encoded with the
//! same codec as WAL records and applied through the same `Recovered::apply`
//! on load. Nothing new can drift between "state from a snapshot" and "state
//! from the WAL".
//!
//! File: `<data_dir>/snapshots/<covered_seq:020>.snap`
//! - header, 64 bytes: magic `VCHRSNAP`, version u32, 4 zero bytes,
//!   covered_seq u64 (every WAL record up to it is included), created_at_ms
//!   i64, record count u64, body length u64, CRC32C of bytes 0..48, zeros;
//! - body: records `kind u8 | seq u64 | payload length u32 | payload`;
//! - trailer: CRC32C of the body u32, then `SNAPEND\0`.
//!
//! Writing (numbered steps, each a precondition of the next):
//! 1. capture the state under the locks (cheap: vouchers and merchants are
//!    shared chunks);
//! 2. encode it into `<name>.snap.tmp` and fsync the file;
//! 3. wait until the WAL is durable through `covered_seq`, so a snapshot
//!    never holds a decision that a crash could still take back;
//! 4. rename to `<name>.snap` and fsync the directory;
//! 5. delete snapshots older than the newest [`SNAPSHOTS_KEPT`].
//!
//! WAL segments are never deleted here: they stay until an archiver has
//! shipped them (a later feature), so a damaged snapshot can always be
//! rebuilt from the log.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::core::append_log::SharedLog;
use crate::core::catalog::MAX_TRANCHES;
use crate::core::tranche::LogEntry;
use crate::core::{CampaignSpec, Event, ExpectedClaims, MerchantShare, UnixMillis, Voucher};
use crate::dispenser::{Recovered, ReplayError, replay_on_two_threads};
use crate::journal;

const MAGIC: &[u8; 8] = b"VCHRSNAP";
const TRAILER_MAGIC: &[u8; 8] = b"SNAPEND\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const HEADER_CRC_OFFSET: usize = 48;
const TRAILER_BYTES: usize = 12;
const RECORD_HEAD_BYTES: usize = 13;
/// Snapshots kept on disk; older ones are removed after a new one is in place.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Largest snapshot file loaded; a bigger one is skipped as damaged (it is read in
/// pieces, so this bounds start-up time, not memory).
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;
/// Bytes buffered while writing a snapshot.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// How often a snapshot being written looks at its filesystem's free space
/// ([`KeepFree`]): at most this much can be written into the reserve between two looks.
pub const FREE_SPACE_CHECK_BYTES: u64 = 16 << 20;

/// A consistent copy of the whole state at one WAL sequence number.
pub struct Checkpoint {
    pub covered_seq: u64,
    pub campaigns: Vec<CampaignSpec>,
    pub merchants: MerchantShare,
    pub tranches: Vec<TrancheCapture>,
}

/// One tranche's own event log and vouchers, shared from the live book.
pub struct TrancheCapture {
    pub log: SharedLog<LogEntry>,
    pub vouchers: SharedLog<Voucher>,
}

impl Checkpoint {
    pub fn voucher_count(&self) -> usize {
        self.tranches.iter().map(|t| t.vouchers.len()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The snapshot verified, but record number `record` (from 0; the record
    /// count when the state as a whole does not add up) cannot be applied.
    #[error("{path}: snapshot record {record}: {source}")]
    Apply {
        path: PathBuf,
        record: u64,
        #[source]
        source: ReplayError,
    },
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io {
        operation,
        path,
        source,
    }
}

pub fn directory(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

fn file_name(covered_seq: u64) -> String {
    format!("{covered_seq:020}.snap")
}

/// Steps 2, 4 and 5 of the write path. `wait_durable` is step 3: it must
/// return only once the WAL is durable through `covered_seq` (false: give up).
///
/// While it writes, the snapshot leaves at least `keep_free_bytes` free on its filesystem
/// (looked at every [`FREE_SPACE_CHECK_BYTES`]); it gives up, removing its temporary file,
/// rather than take them. The daemon keeps room there for the WAL's next segments: a
/// snapshot that filled a nearly full disk for a moment made the WAL's next segment fail
/// to preallocate, which stops the daemon (exit 74).
pub fn write(
    dir: &Path,
    checkpoint: &Checkpoint,
    created_at: UnixMillis,
    keep_free_bytes: u64,
    wait_durable: impl FnOnce(u64) -> bool,
) -> Result<Option<PathBuf>, SnapshotError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(file_name(checkpoint.covered_seq));
    let tmp = dir.join(temporary_name(checkpoint.covered_seq));
    let free_bytes = || {
        let stat = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    };
    if let Err(e) = write_temporary(&tmp, checkpoint, created_at, keep_free_bytes, free_bytes) {
        // A partial temporary file is never read: do not leave it (and its
        // disk space, on a full disk) behind until the next start.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if !wait_durable(checkpoint.covered_seq) {
        let _ = fs::remove_file(&tmp);
        return Ok(None);
    }
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))?;
    remove_old(dir)?;
    Ok(Some(path))
}

fn temporary_name(covered_seq: u64) -> String {
    format!("{}.tmp", file_name(covered_seq))
}

/// Step 2: the whole snapshot into `tmp`, fsynced, leaving `keep_free_bytes` free.
fn write_temporary(
    tmp: &Path,
    checkpoint: &Checkpoint,
    created_at: UnixMillis,
    keep_free_bytes: u64,
    free_bytes: impl FnMut() -> std::io::Result<u64>,
) -> Result<(), SnapshotError> {
    let file = File::create(tmp).map_err(io("create", tmp))?;
    let guarded = KeepFree::new(file, keep_free_bytes, free_bytes);
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, guarded);
    let (records, body_bytes, body_crc) =
        write_body(&mut out, checkpoint).map_err(io("write", tmp))?;
    // The header goes last: it holds the counts. Seek back by rewriting the file head.
    let mut file = out
        .into_inner()
        .map_err(|e| SnapshotError::Io {
            operation: "flush",
            path: tmp.to_owned(),
            source: e.into_error(),
        })?
        .file;
    let mut trailer = Vec::with_capacity(TRAILER_BYTES);
    trailer.extend_from_slice(&body_crc.to_le_bytes());
    trailer.extend_from_slice(TRAILER_MAGIC);
    file.write_all(&trailer).map_err(io("write", tmp))?;
    let header = header(checkpoint.covered_seq, created_at, records, body_bytes);
    write_at_start(&mut file, &header).map_err(io("write", tmp))?;
    file.sync_all().map_err(io("fsync", tmp))?;
    Ok(())
}

/// A writer that refuses to go on once its filesystem has less than `keep_free_bytes` free
/// (`ErrorKind::StorageFull`), looking before its first write and then every
/// [`FREE_SPACE_CHECK_BYTES`] written.
struct KeepFree<W, F> {
    file: W,
    keep_free_bytes: u64,
    free_bytes: F,
    /// Bytes written since the last look; `None` before the first.
    since_check: Option<u64>,
}

impl<W: Write, F: FnMut() -> std::io::Result<u64>> KeepFree<W, F> {
    fn new(file: W, keep_free_bytes: u64, free_bytes: F) -> Self {
        KeepFree {
            file,
            keep_free_bytes,
            free_bytes,
            since_check: None,
        }
    }
}

impl<W: Write, F: FnMut() -> std::io::Result<u64>> Write for KeepFree<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let due = self
            .since_check
            .is_none_or(|written| written >= FREE_SPACE_CHECK_BYTES);
        if due {
            let free = (self.free_bytes)()?;
            if free < self.keep_free_bytes {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{free} bytes free, and a snapshot leaves at least {} free for the WAL",
                        self.keep_free_bytes
                    ),
                ));
            }
            self.since_check = Some(0);
        }
        let n = self.file.write(buf)?;
        self.since_check = self.since_check.map(|w| w + n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Removes the temporary files of snapshots that were being written when
/// the process died (a snapshot is published only by renaming its temporary
/// file, so one left over is never read). Call it only while holding the
/// data directory (the WAL's exclusive lock), so no live writer owns them.
/// Returns how many files and bytes were removed.
pub fn remove_temporary(dir: &Path) -> Result<(u64, u64), SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let is_temporary = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snap.tmp"))
            .is_some_and(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()));
        if !is_temporary {
            continue;
        }
        let path = entry.path();
        let len = entry.metadata().map_or(0, |m| m.len());
        fs::remove_file(&path).map_err(io("remove", &path))?;
        files += 1;
        bytes += len;
    }
    if files > 0 {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
    }
    Ok((files, bytes))
}

fn write_at_start(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, 0)
}

/// Writes a placeholder header, then every record. Returns (records, body bytes, body CRC).
fn write_body(out: &mut impl Write, checkpoint: &Checkpoint) -> std::io::Result<(u64, u64, u32)> {
    out.write_all(&[0u8; HEADER_BYTES])?;
    let mut state = BodyWriter {
        out,
        records: 0,
        bytes: 0,
        crc: 0,
    };
    for campaign in &checkpoint.campaigns {
        state.event(
            checkpoint.covered_seq,
            &Event::CampaignDefined(campaign.clone()),
        )?;
    }
    for chunk in checkpoint.merchants.chunks() {
        for payload in journal::encode_merchant_import(chunk) {
            state.record(
                journal::KIND_MERCHANTS_IMPORTED,
                checkpoint.covered_seq,
                &payload,
            )?;
        }
    }
    // Each tranche's log starts with its definition, so writing tranches in
    // ordinal order keeps ordinals dense on load.
    for tranche in &checkpoint.tranches {
        for entry in tranche.log.iter() {
            match entry {
                LogEntry::Claims { first, count } => {
                    for index in *first..first + count {
                        let voucher = tranche
                            .vouchers
                            .get(index as usize)
                            .expect("logged voucher exists");
                        state.record(
                            journal::KIND_VOUCHER_CLAIMED,
                            voucher.seq,
                            &journal::encode_claim(&voucher.claim),
                        )?;
                    }
                }
                LogEntry::Event { seq, event } => state.event(*seq, event)?,
            }
        }
    }
    Ok((state.records, state.bytes, state.crc))
}

struct BodyWriter<'a, W: Write> {
    out: &'a mut W,
    records: u64,
    bytes: u64,
    crc: u32,
}

impl<W: Write> BodyWriter<'_, W> {
    fn event(&mut self, seq: u64, event: &Event) -> std::io::Result<()> {
        self.record(journal::kind_of(event), seq, &journal::encode(event))
    }

    fn record(&mut self, kind: u8, seq: u64, payload: &[u8]) -> std::io::Result<()> {
        let len =
            u32::try_from(payload.len()).map_err(|_| std::io::Error::other("record too large"))?;
        let mut head = [0u8; RECORD_HEAD_BYTES];
        head[0] = kind;
        head[1..9].copy_from_slice(&seq.to_le_bytes());
        head[9..13].copy_from_slice(&len.to_le_bytes());
        self.crc = crc32c::crc32c_append(self.crc, &head);
        self.crc = crc32c::crc32c_append(self.crc, payload);
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.records += 1;
        self.bytes += (RECORD_HEAD_BYTES + payload.len()) as u64;
        Ok(())
    }
}

/// A whole snapshot file, in memory, holding `records` (kind, seq, payload)
/// as they are: no check that they decode or apply. For tests and the fuzz
/// harness, which need files with valid framing around arbitrary content.
pub fn encode_records<'a>(
    covered_seq: u64,
    created_at: UnixMillis,
    records: impl IntoIterator<Item = (u8, u64, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    let mut body = BodyWriter {
        out: &mut out,
        records: 0,
        bytes: 0,
        crc: 0,
    };
    for (kind, seq, payload) in records {
        body.record(kind, seq, payload)
            .expect("a record fits in memory and in u32");
    }
    let (records, body_bytes, body_crc) = (body.records, body.bytes, body.crc);
    out.extend_from_slice(&body_crc.to_le_bytes());
    out.extend_from_slice(TRAILER_MAGIC);
    out[..HEADER_BYTES].copy_from_slice(&header(covered_seq, created_at, records, body_bytes));
    out
}

fn header(
    covered_seq: u64,
    created_at: UnixMillis,
    records: u64,
    body_bytes: u64,
) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&covered_seq.to_le_bytes());
    h[24..32].copy_from_slice(&created_at.0.to_le_bytes());
    h[32..40].copy_from_slice(&records.to_le_bytes());
    h[40..48].copy_from_slice(&body_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[..HEADER_CRC_OFFSET]);
    h[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a loaded snapshot covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub path: PathBuf,
    pub covered_seq: u64,
    pub records: u64,
}

/// A snapshot file whose bytes check out, ready to apply.
pub struct Verified {
    pub path: PathBuf,
    pub covered_seq: u64,
    pub records: u64,
    /// Claims and their identity keys per tranche ordinal, counted on the verifying pass: the
    /// sizes hint [`Recovered::expect_claims`] gets, so a big tranche's indexes are made once.
    pub claims_by_ordinal: BTreeMap<u32, ExpectedClaims>,
    body: Body,
}

/// Counts a snapshot's claims per tranche while it is verified. A tranche's records follow
/// its definition (see the module docs), so a claim is counted for the ordinal of the
/// definition before it. Only a sizes hint: a miscounted file changes no answer, and the
/// count is bounded by the records in the file and [`MAX_TRANCHES`] ordinals.
///
/// Claims are not decoded here (that is the applying pass's work); their identity keys are
/// counted from the front of each ([`journal::claim_identity_keys`]), and one whose front is
/// not a claim's counts nothing. Nor does a record too short to be a claim of that tranche: a counted claim takes at least
/// [`journal::CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS`] plus the tranche ID's bytes of the file,
/// and sizes about 128–256 bytes of indexes. So a damaged or forged file's hint asks for
/// at most about four times its own size, where a genuine snapshot's state is about two and
/// a half times its size (BENCHMARKS.md, "Restart"); without this, 13-byte records that do not
/// decode bought 10–20 times their size before the first of them was refused.
#[derive(Default)]
struct ClaimCounter {
    ordinal: Option<u32>,
    /// The smallest payload a claim of the current tranche has.
    min_claim_bytes: usize,
    claims_by_ordinal: BTreeMap<u32, ExpectedClaims>,
}

impl ClaimCounter {
    fn see(&mut self, kind: u8, payload: &[u8]) {
        match kind {
            journal::KIND_TRANCHE_DEFINED => {
                // Few records: decoded with the journal's own decoder; one that does not decode
                // counts nothing (applying it will refuse the file).
                (self.ordinal, self.min_claim_bytes) = match journal::decode(kind, payload) {
                    Ok(Event::TrancheDefined { ordinal, spec }) => (
                        Some(ordinal).filter(|o| (*o as usize) < MAX_TRANCHES),
                        journal::CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + spec.tranche_id.len(),
                    ),
                    _ => (None, 0),
                };
            }
            journal::KIND_VOUCHER_CLAIMED => {
                if let Some(ordinal) = self.ordinal
                    && payload.len() >= self.min_claim_bytes
                    && let Some(keys) = journal::claim_identity_keys(payload)
                {
                    let expected = self.claims_by_ordinal.entry(ordinal).or_default();
                    expected.claims += 1;
                    expected.identity_keys += keys;
                }
            }
            _ => {}
        }
    }
}

/// Where a verified snapshot's records are read from.
enum Body {
    /// The whole file, in memory (tests and fuzzing hand bytes to [`verify`]).
    Memory(Vec<u8>),
    /// The file itself, read again in [`READ_BUFFER_BYTES`] pieces ([`verify_file`]): a
    /// 10 M-claim snapshot is about 1.9 GB, and reading it whole into fresh memory cost a
    /// restart seconds of page zeroing before the first record was applied.
    File { body_bytes: u64, body_crc: u32 },
}

/// The read buffer when a snapshot is streamed from its file.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// The header fields a snapshot's first [`HEADER_BYTES`] give.
struct Header {
    covered_seq: u64,
    records: u64,
    body_bytes: u64,
}

/// Checks the header alone: magic, checksum, padding, version.
fn parse_header(h: &[u8]) -> Result<Header, String> {
    if &h[0..8] != MAGIC {
        return Err("not a voucherd snapshot (bad magic)".into());
    }
    let stored = u32::from_le_bytes(le4(&h[HEADER_CRC_OFFSET..]));
    if crc32c::crc32c(&h[..HEADER_CRC_OFFSET]) != stored {
        return Err("header checksum mismatch".into());
    }
    if h[HEADER_CRC_OFFSET + 4..HEADER_BYTES]
        .iter()
        .any(|&b| b != 0)
    {
        return Err("header padding is not zero".into());
    }
    let version = u32::from_le_bytes(le4(&h[8..]));
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, expected {FORMAT_VERSION}"
        ));
    }
    Ok(Header {
        covered_seq: u64::from_le_bytes(le8(&h[16..])),
        records: u64::from_le_bytes(le8(&h[32..])),
        body_bytes: u64::from_le_bytes(le8(&h[40..])),
    })
}

/// Checks that a file of `len` bytes is as long as the header says; returns where the
/// body ends.
fn check_length(header: &Header, len: u64) -> Result<u64, String> {
    let expected_len = (HEADER_BYTES as u64)
        .checked_add(header.body_bytes)
        .and_then(|n| n.checked_add(TRAILER_BYTES as u64));
    if expected_len != Some(len) {
        return Err(format!(
            "file is {len} bytes, header says body is {}",
            header.body_bytes
        ));
    }
    Ok(HEADER_BYTES as u64 + header.body_bytes)
}

/// Checks the trailer's magic; returns the body checksum it stores.
fn parse_trailer(trailer: &[u8]) -> Result<u32, String> {
    if &trailer[4..12] != TRAILER_MAGIC {
        return Err("bad trailer (a write was interrupted?)".into());
    }
    Ok(u32::from_le_bytes(le4(trailer)))
}

/// Checks a snapshot's framing and checksums without applying anything.
/// Never panics on arbitrary bytes (fuzzed).
pub fn verify(path: &Path, bytes: Vec<u8>) -> Result<Verified, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(invalid(format!(
            "{} bytes is shorter than a header and trailer",
            bytes.len()
        )));
    }
    let header = parse_header(&bytes[..HEADER_BYTES]).map_err(invalid)?;
    let body_end = check_length(&header, bytes.len() as u64).map_err(invalid)? as usize;
    let body_crc = parse_trailer(&bytes[body_end..]).map_err(invalid)?;
    if crc32c::crc32c(&bytes[HEADER_BYTES..body_end]) != body_crc {
        return Err(invalid("body checksum mismatch".into()));
    }
    let mut claims = ClaimCounter::default();
    let counted = walk(&bytes[HEADER_BYTES..body_end], |kind, _, payload| {
        claims.see(kind, payload);
        Ok(())
    })
    .map_err(&invalid)?;
    verified(path, &header, counted, claims, Body::Memory(bytes))
}

/// The end of both verifications: the body holds as many records as the header says.
fn verified(
    path: &Path,
    header: &Header,
    counted: u64,
    claims: ClaimCounter,
    body: Body,
) -> Result<Verified, SnapshotError> {
    if counted != header.records {
        return Err(SnapshotError::Invalid {
            path: path.to_owned(),
            reason: format!("header says {} records, body has {counted}", header.records),
        });
    }
    Ok(Verified {
        path: path.to_owned(),
        covered_seq: header.covered_seq,
        records: header.records,
        claims_by_ordinal: claims.claims_by_ordinal,
        body,
    })
}

/// [`verify`] of a file, read in pieces instead of whole: the framing and both checksums
/// are checked on one pass over the file, and [`Verified::apply`] reads it again (from the
/// page cache, as a rule). Memory stays at one read buffer and the largest record.
pub fn verify_file(path: &Path) -> Result<Verified, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len < (HEADER_BYTES + TRAILER_BYTES) as u64 {
        return Err(invalid(format!(
            "{len} bytes is shorter than a header and trailer"
        )));
    }
    let mut head = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut head, 0).map_err(io("read", path))?;
    let header = parse_header(&head).map_err(invalid)?;
    let body_end = check_length(&header, len).map_err(invalid)?;
    let mut trailer = [0u8; TRAILER_BYTES];
    file.read_exact_at(&mut trailer, body_end)
        .map_err(io("read", path))?;
    let body_crc = parse_trailer(&trailer).map_err(invalid)?;
    let body = Body::File {
        body_bytes: header.body_bytes,
        body_crc,
    };
    let mut claims = ClaimCounter::default();
    let counted = match walk_file(path, &body, |kind, _, payload| {
        claims.see(kind, payload);
        Ok::<(), Walked>(())
    }) {
        Ok(counted) => counted,
        Err(Walked::Invalid(reason)) => return Err(invalid(reason)),
        Err(Walked::Io(e)) => return Err(e),
        Err(Walked::Refused(..)) => unreachable!("verifying applies nothing"),
    };
    verified(path, &header, counted, claims, body)
}

/// Calls `f(kind, seq, payload)` for each record of a snapshot file's body, reading it in
/// pieces, and checks the body checksum at the end (also on the second read: a file changed
/// in between is refused, never half-trusted). Returns the count.
fn walk_file<E: From<String> + From<SnapshotError>>(
    path: &Path,
    body: &Body,
    f: impl FnMut(u8, u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    walk_file_with(path, body, READ_BUFFER_BYTES, f)
}

/// [`walk_file`] with a read buffer of `buffer_bytes` (tests use tiny ones, so records
/// straddle and outgrow the buffer).
fn walk_file_with<E: From<String> + From<SnapshotError>>(
    path: &Path,
    body: &Body,
    buffer_bytes: usize,
    mut f: impl FnMut(u8, u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let Body::File {
        body_bytes,
        body_crc,
    } = *body
    else {
        unreachable!("walk_file reads file bodies")
    };
    let file = File::open(path).map_err(io("open", path))?;
    let mut reader = BodyReader {
        file,
        path,
        offset: HEADER_BYTES as u64,
        unread: body_bytes,
        buffer: vec![0; buffer_bytes],
        start: 0,
        end: 0,
        crc: 0,
    };
    let mut count = 0u64;
    while reader.left() > 0 {
        if reader.left() < RECORD_HEAD_BYTES as u64 {
            return Err(format!("record {count} is cut short").into());
        }
        let head = reader.take(RECORD_HEAD_BYTES)?;
        let kind = head[0];
        let seq = u64::from_le_bytes(le8(&head[1..]));
        let len = u32::from_le_bytes(le4(&head[9..])) as usize;
        reader.consume(RECORD_HEAD_BYTES);
        if reader.left() < len as u64 {
            let left = reader.left();
            return Err(format!("record {count} claims {len} bytes, {left} remain").into());
        }
        f(kind, seq, reader.take(len)?)?;
        reader.consume(len);
        count += 1;
    }
    if reader.crc != body_crc {
        return Err("body checksum mismatch".to_string().into());
    }
    Ok(count)
}

/// Reads a snapshot body from its file in [`READ_BUFFER_BYTES`] pieces and checksums each
/// piece as it arrives (CRC32C over large pieces runs at memory speed; over each small record
/// it was a serial cost before anything could be applied). A record that straddles two pieces
/// is moved to the front of the buffer first; one larger than the buffer grows it, which the
/// caller has bounded by the bytes left in the file.
struct BodyReader<'a> {
    file: File,
    path: &'a Path,
    /// File offset of the next byte to read.
    offset: u64,
    /// Body bytes not yet read from the file.
    unread: u64,
    buffer: Vec<u8>,
    /// `buffer[start..end]` is read and not yet consumed.
    start: usize,
    end: usize,
    /// CRC32C of every body byte read so far.
    crc: u32,
}

impl BodyReader<'_> {
    /// Body bytes not yet consumed.
    fn left(&self) -> u64 {
        self.unread + (self.end - self.start) as u64
    }

    /// The next `n` bytes, without consuming them. The caller checked `n <= self.left()`.
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotError> {
        if self.end - self.start < n {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buffer.len() < n {
                self.buffer.resize(n, 0);
            }
            while self.end < n {
                let want = (self.buffer.len() - self.end)
                    .min(usize::try_from(self.unread).unwrap_or(usize::MAX));
                assert!(want > 0, "read past the body: callers check the bytes left");
                let piece = &mut self.buffer[self.end..self.end + want];
                self.file
                    .read_exact_at(piece, self.offset)
                    .map_err(io("read", self.path))?;
                self.crc = crc32c::crc32c_append(self.crc, piece);
                self.offset += want as u64;
                self.unread -= want as u64;
                self.end += want;
            }
        }
        Ok(&self.buffer[self.start..self.start + n])
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }
}

impl Verified {
    /// Calls `f(kind, seq, payload)` for each record as stored, in order; nothing is decoded.
    pub fn for_each_record<E: From<String> + From<SnapshotError>>(
        &self,
        f: impl FnMut(u8, u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        match &self.body {
            Body::Memory(bytes) => walk(&bytes[HEADER_BYTES..bytes.len() - TRAILER_BYTES], f),
            Body::File { .. } => walk_file(&self.path, &self.body, f),
        }
    }

    /// Every record as stored: (kind, seq, payload), in order (for tests and tools; a big
    /// snapshot's records take as much memory as its file).
    pub fn records(&self) -> Result<Vec<(u8, u64, Vec<u8>)>, SnapshotError> {
        let mut out = Vec::new();
        self.for_each_record(|kind, seq, payload| {
            out.push((kind, seq, payload.to_vec()));
            Ok::<(), Walked>(())
        })
        .map_err(|walked| walked.into_error(&self.path))?;
        Ok(out)
    }

    /// Applies every record to `recovered`, then checks that the state adds
    /// up as a whole. A record that does not decode, that names a seq past
    /// `covered_seq`, or that the core could not have decided on the state
    /// before it is refused with its position (`recovered` then holds part of
    /// the snapshot and must be dropped).
    pub fn apply(mut self, recovered: &mut Recovered) -> Result<Loaded, SnapshotError> {
        let covered_seq = self.covered_seq;
        recovered.expect_claims(std::mem::take(&mut self.claims_by_ordinal));
        // As the WAL at start: this thread reads and decodes, a second applies.
        let (walked, applied) = replay_on_two_threads(recovered, |feed| {
            let mut index = 0u64;
            self.for_each_record(|kind, seq, payload| {
                if seq > covered_seq {
                    return Err(Walked::Invalid(format!(
                        "record {index} has seq {seq}, past the covered seq {covered_seq}"
                    )));
                }
                feed.push(seq, kind, payload)
                    .map_err(|e| Walked::Refused(index, e))?;
                index += 1;
                Ok(())
            })
        });
        // Hints for tranches the snapshot did not define would size tranches of the WAL tail.
        recovered.expect_claims(BTreeMap::new());
        // The applying side's refusal is about the earliest record: report it first.
        let failure = match (walked, applied) {
            (_, Err(refused)) => Some(Walked::Refused(
                self.position_of(&refused).unwrap_or(self.records),
                refused,
            )),
            (Err(failure), Ok(())) => Some(failure),
            (Ok(_), Ok(())) => None,
        };
        if let Some(failure) = failure {
            return Err(failure.into_error(&self.path));
        }
        if let Err(source) = recovered.check_ledgers() {
            return Err(SnapshotError::Apply {
                path: self.path,
                record: self.records,
                source,
            });
        }
        Ok(Loaded {
            path: self.path,
            covered_seq: self.covered_seq,
            records: self.records,
        })
    }

    /// The position (from 0) of the record a refusal names: the first with its kind and
    /// seq. Only on the failure path, so a second walk is fine.
    fn position_of(&self, refused: &ReplayError) -> Option<u64> {
        let ReplayError::Conflict { seq, kind, .. } = refused else {
            return None;
        };
        let mut index = 0u64;
        let mut found = None;
        let _ = self.for_each_record(|k, s, _| {
            if found.is_none() && k == *kind && s == *seq {
                found = Some(index);
            }
            index += 1;
            Ok::<(), Walked>(())
        });
        found
    }
}

/// Why walking a snapshot's records stopped.
enum Walked {
    /// The framing or a seq is wrong.
    Invalid(String),
    /// Record number `.0` (from 0) was refused by recovery.
    Refused(u64, ReplayError),
    /// Reading the file failed.
    Io(SnapshotError),
}

impl From<String> for Walked {
    fn from(reason: String) -> Walked {
        Walked::Invalid(reason)
    }
}

impl From<SnapshotError> for Walked {
    fn from(e: SnapshotError) -> Walked {
        Walked::Io(e)
    }
}

impl Walked {
    fn into_error(self, path: &Path) -> SnapshotError {
        match self {
            Walked::Invalid(reason) => SnapshotError::Invalid {
                path: path.to_owned(),
                reason,
            },
            Walked::Refused(record, source) => SnapshotError::Apply {
                path: path.to_owned(),
                record,
                source,
            },
            Walked::Io(e) => e,
        }
    }
}

/// Calls `f(kind, seq, payload)` for each record; returns the count.
fn walk<E: From<String>>(
    mut body: &[u8],
    mut f: impl FnMut(u8, u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut count = 0u64;
    while !body.is_empty() {
        if body.len() < RECORD_HEAD_BYTES {
            return Err(format!("record {count} is cut short").into());
        }
        let kind = body[0];
        let seq = u64::from_le_bytes(le8(&body[1..]));
        let len = u32::from_le_bytes(le4(&body[9..])) as usize;
        let rest = &body[RECORD_HEAD_BYTES..];
        if rest.len() < len {
            return Err(format!("record {count} claims {len} bytes, {} remain", rest.len()).into());
        }
        f(kind, seq, &rest[..len])?;
        body = &rest[len..];
        count += 1;
    }
    Ok(count)
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// Snapshot files in `dir`, newest first. Temporary files are ignored.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    Ok(out)
}

/// Loads the newest snapshot that verifies into `recovered`. A snapshot that
/// fails verification is skipped with a warning (the next older one, or the
/// full WAL, still has the data); one that verifies but does not apply is an
/// error, because `recovered` may already hold part of it.
pub fn load_latest(dir: &Path, recovered: &mut Recovered) -> Result<Option<Loaded>, SnapshotError> {
    match verify_latest(dir)? {
        Some(verified) => verified.apply(recovered).map(Some),
        None => Ok(None),
    }
}

/// The newest snapshot that verifies, ready to apply; older ones and ones that fail
/// verification are skipped as [`load_latest`] describes.
pub fn verify_latest(dir: &Path) -> Result<Option<Verified>, SnapshotError> {
    for (covered_seq, path) in list(dir)? {
        if let Some(verified) = verify_listed(covered_seq, &path)? {
            return Ok(Some(verified));
        }
    }
    Ok(None)
}

/// Verifies one snapshot file that [`list`] gave with the seq its name says it covers. `None`,
/// with a warning, when it is to be skipped: bigger than [`MAX_SNAPSHOT_BYTES`], failing
/// verification, or covering another seq than its name says (the daemon names each file by
/// what it covers; the start scans the WAL for the records after that while the file is read).
pub fn verify_listed(named_seq: u64, path: &Path) -> Result<Option<Verified>, SnapshotError> {
    const SKIPPING: &str =
        "skipping a snapshot that does not verify; falling back to an older one or the full WAL";
    let len = fs::metadata(path).map_err(io("stat", path))?.len();
    if len > MAX_SNAPSHOT_BYTES {
        tracing::warn!(path = %path.display(), len, "snapshot larger than MAX_SNAPSHOT_BYTES; skipping it");
        return Ok(None);
    }
    let started = std::time::Instant::now();
    match verify_file(path) {
        Ok(verified) if verified.covered_seq != named_seq => {
            tracing::warn!(
                path = %path.display(),
                header_covered_seq = verified.covered_seq,
                "{SKIPPING}: its name says it covers seq {named_seq}, its header another"
            );
            Ok(None)
        }
        Ok(verified) => {
            tracing::info!(
                path = %path.display(),
                len,
                records = verified.records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot verified"
            );
            Ok(Some(verified))
        }
        Err(e) => {
            tracing::warn!(error = %e, "{SKIPPING}");
            Ok(None)
        }
    }
}

/// At start: removes published snapshots beyond the newest [`SNAPSHOTS_KEPT`] that are
/// older than the one recovery loaded (`loaded_covered_seq`), which is never removed.
/// Returns how many were removed.
pub fn remove_older_than_kept(dir: &Path, loaded_covered_seq: u64) -> Result<u64, SnapshotError> {
    let mut removed = 0;
    for (seq, path) in list(dir)?.into_iter().skip(SNAPSHOTS_KEPT) {
        if seq < loaded_covered_seq {
            fs::remove_file(&path).map_err(io("remove", &path))?;
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
    }
    Ok(removed)
}

fn remove_old(dir: &Path) -> Result<(), SnapshotError> {
    for (_, path) in list(dir)?.into_iter().skip(SNAPSHOTS_KEPT) {
        fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot stops writing once its filesystem has less than the reserve free, at most
    /// one look's worth of bytes into it, and says why.
    #[test]
    fn a_snapshot_leaves_the_reserve_free() {
        const MIB: u64 = 1 << 20;
        let free = std::cell::Cell::new(200 * MIB);
        let keep = 128 * MIB;
        let mut out = KeepFree::new(std::io::sink(), keep, || Ok(free.get()));
        let chunk = vec![0u8; MIB as usize];
        let error = loop {
            match out.write_all(&chunk) {
                Ok(()) => free.set(free.get() - MIB),
                Err(e) => break e,
            }
            assert!(free.get() > 0, "never stopped");
        };
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
        assert!(
            free.get() < keep,
            "stopped before the reserve: {}",
            free.get()
        );
        assert!(
            free.get() + FREE_SPACE_CHECK_BYTES >= keep,
            "wrote {} bytes into the reserve",
            keep - free.get()
        );
    }

    /// On a real filesystem: a snapshot that cannot leave its reserve free is not written,
    /// and leaves no temporary file behind.
    #[test]
    fn a_snapshot_without_room_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint = Checkpoint {
            covered_seq: 1,
            campaigns: Vec::new(),
            merchants: crate::core::MerchantRegistry::default().share(),
            tranches: Vec::new(),
        };
        let refused = write(dir.path(), &checkpoint, UnixMillis(0), u64::MAX, |_| true);
        assert!(
            matches!(&refused, Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull),
            "{refused:?}"
        );
        let left: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "{left:?}");
        let written = write(dir.path(), &checkpoint, UnixMillis(0), 0, |_| true);
        assert!(matches!(written, Ok(Some(_))), "{written:?}");
    }

    /// Verifying counts each tranche's claims (by the ordinal of the definition before them),
    /// from memory and from the file alike; claims before any definition, or after one with
    /// an ordinal past `MAX_TRANCHES` or one that does not decode, are not counted.
    #[test]
    fn verifying_counts_claims_per_tranche() {
        let defined = |ordinal: u32| {
            journal::encode(&Event::TrancheDefined {
                ordinal,
                spec: crate::core::TrancheSpec::for_tests(&format!("t{ordinal}")),
            })
        };
        // Claims are measured and their keys counted, not decoded: "t0" and "t7" take two
        // bytes, and each claim here carries a user ID and a device ID.
        let claim = |byte: u8| {
            let mut payload = vec![byte; journal::CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + 2];
            // The front: tranche ID "t0", the 20 fixed bytes, an empty user ID, no ID hash, no
            // phone hash, and a device ID of one byte (the bytes after it are left as they are).
            let front = [
                &[2, 0][..],
                b"t0",
                &[0; 20],
                &[0, 0],
                &[0, 0, 1, 1, 0, byte],
            ]
            .concat();
            payload[..front.len()].copy_from_slice(&front);
            (journal::KIND_VOUCHER_CLAIMED, payload)
        };
        let too_short = (
            journal::KIND_VOUCHER_CLAIMED,
            claim(0).1[..journal::CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + 1].to_vec(),
        );
        let not_a_claim = (
            journal::KIND_VOUCHER_CLAIMED,
            vec![0xff; journal::CLAIM_PAYLOAD_BYTES_BESIDES_STRINGS + 2],
        );
        let records: Vec<(u8, Vec<u8>)> = vec![
            claim(1),
            (journal::KIND_CAMPAIGN_DEFINED, vec![2]),
            (journal::KIND_TRANCHE_DEFINED, defined(0)),
            claim(3),
            claim(4),
            too_short.clone(),
            (journal::KIND_VOUCHER_REDEEMED, vec![5]),
            claim(6),
            (journal::KIND_TRANCHE_DEFINED, defined(7)),
            claim(7),
            too_short,
            not_a_claim,
            (journal::KIND_TRANCHE_DEFINED, defined(MAX_TRANCHES as u32)),
            claim(8),
            (journal::KIND_TRANCHE_DEFINED, vec![9]),
            claim(10),
        ];
        let bytes = encode_records(
            records.len() as u64,
            UnixMillis(0),
            records
                .iter()
                .enumerate()
                .map(|(i, (kind, payload))| (*kind, i as u64 + 1, &payload[..])),
        );
        let counted = |claims: u64| ExpectedClaims {
            claims,
            identity_keys: 2 * claims,
        };
        let expected = BTreeMap::from([(0, counted(3)), (7, counted(1))]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.snap");
        fs::write(&path, &bytes).expect("write");
        assert_eq!(
            verify(&path, bytes).expect("verifies").claims_by_ordinal,
            expected
        );
        assert_eq!(
            verify_file(&path).expect("verifies").claims_by_ordinal,
            expected
        );
    }

    /// Records of many sizes, read from the file with buffers smaller than a record head,
    /// than most records, and bigger than the body: the same records as in memory.
    #[test]
    fn reading_in_pieces_gives_the_records_read_whole() {
        let payloads: Vec<Vec<u8>> = (0..200usize)
            .map(|i| (0..(i * 7) % 97).map(|b| (b * 31 + i) as u8).collect())
            .collect();
        let records: Vec<(u8, u64, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| ((i % 11) as u8, i as u64 + 1, &p[..]))
            .collect();
        let bytes = encode_records(200, UnixMillis(0), records.iter().copied());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.snap");
        fs::write(&path, &bytes).expect("write");
        let whole = verify(&path, bytes.clone()).expect("verifies");
        let expected = whole.records().expect("records");
        let from_file = verify_file(&path).expect("verifies from the file");
        assert_eq!(from_file.records().expect("records"), expected);
        for buffer_bytes in [1, 5, 13, 14, 64, 100, 4096, 1 << 20] {
            let mut seen = Vec::new();
            let count = walk_file_with(&path, &from_file.body, buffer_bytes, |k, s, p| {
                seen.push((k, s, p.to_vec()));
                Ok::<(), Walked>(())
            });
            assert!(matches!(count, Ok(200)), "buffer {buffer_bytes}");
            assert_eq!(seen, expected, "buffer {buffer_bytes}");
        }
    }
}
