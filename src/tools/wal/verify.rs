//! `voucherd wal verify DIR`: would `serve` start on this log, and what would it erase?
//!
//! The WAL's own validation checks every checksum, the seq continuity within and across
//! segments, and classifies the end of the log (clean, torn tail, or corruption). Then every
//! record is replayed through the code `serve` runs at start-up (`replay.rs`), so a record that
//! passed its checksums but does not decode, or does not fit the state before it, is found too.
//! The replayed state lives in memory as it would in the daemon.
//!
//! Exit codes: 0 clean, 1 torn tail (valid; `serve` erases it), 65 corrupt or not replayable,
//! 66 missing, unreadable or empty directory, 75 locked by a running daemon. The code is the
//! verdict even if stdout fails: a reader that goes away cannot turn a corrupt log into 0.

use std::io::{self, Write};
use std::path::Path;

use crate::tools::wal::replay::Replay;
use crate::tools::wal::{Failure, Scanned, Stop, fail, file_name, scan, stdout};
use crate::tools::{EXIT_CORRUPT, EXIT_OK, EXIT_TORN_TAIL};

const TOOL: &str = "verify";

/// Runs `voucherd wal verify`; returns the exit code.
pub fn run(dir: &Path) -> i32 {
    let mut first_seq = None;
    let mut replay = Replay::new();
    let scanned = scan(dir, |record| {
        first_seq.get_or_insert(record.seq);
        if let Some(event) = replay.decode(record.seq, record.kind, record.payload) {
            replay.apply(record.seq, record.kind, event);
        }
        match replay.refusal() {
            Some(refusal) => Err(Stop::Record(refusal.to_owned())),
            None => Ok(()),
        }
    })
    .and_then(|scanned| match replay.finish() {
        Some(refusal) => Err(Failure::Unreplayable(refusal.to_owned())),
        None => Ok(scanned),
    });
    let (verdict, written) = match scanned {
        Ok(scanned) => (verdict(&scanned), write_summary(&scanned, first_seq)),
        Err(Failure::Corrupt {
            segment,
            offset_bytes,
            reason,
        }) => (
            EXIT_CORRUPT,
            write_corruption(
                &super::resolve_wal_dir(dir),
                &segment,
                offset_bytes,
                &reason,
            ),
        ),
        Err(failure) => return fail(TOOL, &failure),
    };
    // The exit code is the verdict, whatever became of the output: a reader that went away
    // (`| head`) must not turn a corrupt log into exit 0.
    if let Err(error) = written
        && error.kind() != io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(
            io::stderr(),
            "voucherd wal {TOOL}: cannot write the output: {error}"
        );
    }
    verdict
}

fn verdict(scanned: &Scanned) -> i32 {
    if scanned.report.truncated_tail_bytes == 0 {
        EXIT_OK
    } else {
        EXIT_TORN_TAIL
    }
}

fn write_summary(scanned: &Scanned, first_seq: Option<u64>) -> io::Result<()> {
    let report = &scanned.report;
    let segments: Vec<String> = scanned.segment_paths().map(|p| file_name(&p)).collect();
    let mut out = stdout();
    writeln!(out, "WAL directory:  {}", scanned.dir.display())?;
    match segments.as_slice() {
        [first, .., last] => writeln!(
            out,
            "segments:       {} ({first} .. {last})",
            segments.len()
        )?,
        [only] => writeln!(out, "segments:       1 ({only})")?,
        [] => writeln!(out, "segments:       0")?,
    }
    match first_seq {
        Some(first) => writeln!(
            out,
            "records:        {}, seq {first} ..= {}",
            report.records, report.last_seq
        )?,
        None => writeln!(out, "records:        0 (an empty log)")?,
    }
    let size = std::fs::metadata(&report.tail_segment)
        .map(|m| format!(" of {}", m.len()))
        .unwrap_or_default();
    writeln!(
        out,
        "tail:           {} at byte offset {}{size}",
        file_name(&report.tail_segment),
        report.tail_offset_bytes
    )?;
    if report.truncated_tail_bytes == 0 {
        writeln!(out, "torn tail:      none")?;
        writeln!(out, "result:         clean")?;
    } else {
        writeln!(
            out,
            "torn tail:      {} bytes at {} byte offset {}",
            report.truncated_tail_bytes,
            file_name(&report.tail_segment),
            report.tail_offset_bytes
        )?;
        writeln!(
            out,
            "                by the WAL's crash-safety rules, the remains of the one batch being \
             written at a crash (never synced, so never acknowledged); `voucherd serve` erases \
             them when it starts"
        )?;
        writeln!(out, "result:         torn tail (exit {EXIT_TORN_TAIL})")?;
    }
    out.flush()
}

fn write_corruption(dir: &Path, segment: &Path, offset_bytes: u64, reason: &str) -> io::Result<()> {
    let mut out = stdout();
    writeln!(out, "WAL directory:  {}", dir.display())?;
    writeln!(
        out,
        "result:         CORRUPT (exit {EXIT_CORRUPT}): `voucherd serve` refuses to start on \
         this log"
    )?;
    writeln!(out, "file:           {}", segment.display())?;
    writeln!(out, "offset:         byte {offset_bytes}")?;
    writeln!(out, "reason:         {reason}")?;
    writeln!(
        out,
        "Keep a copy of the whole directory before any repair (see docs/operations.md)."
    )?;
    out.flush()
}
