//! Fuzz target: `voucherd::wal::scan` over a WAL directory built from the input.
//!
//! The input format is `voucherd_fuzz::ReplayInput`: a flag byte, then up to 8 segment files
//! separated by `"\nNEXTSEG"`, each given whole or (flag bit 0) behind a valid header that the
//! harness writes, so the fuzzer spends its time on batches rather than on the header CRC.
//! Files are at most 1 MiB. The directory lives in `$VOUCHERD_FUZZ_SCRATCH` if set, else in
//! `/dev/shm` when it exists; it is left behind when the process exits.
//!
//! `scan` must return `Ok` or a typed error, never panic or hang (run with `-timeout`), and must
//! not modify the directory. On `Ok`, records arrive contiguous from seq 1 and the report
//! agrees with what was delivered and with the file sizes.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use voucherd::wal::{self, OpenError};
use voucherd_fuzz::ReplayInput;

/// The scratch directory, emptied when first used, and the names of the files in it.
fn scratch_dir() -> &'static (PathBuf, Mutex<Vec<String>>) {
    static DIR: OnceLock<(PathBuf, Mutex<Vec<String>>)> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("VOUCHERD_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("voucherd-fuzz-wal-replay-{}", std::process::id()));
        // A leftover from a crashed run with the same pid is emptied and reused.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        (dir, Mutex::new(Vec::new()))
    })
}

#[derive(Debug)]
struct Stop;

fuzz_target!(|data: &[u8]| {
    let Some(input) = ReplayInput::parse(data) else {
        return;
    };
    let (dir, written) = scratch_dir();
    let dir = dir.as_path();
    input
        .write_to(dir, &mut written.lock().expect("one fuzz thread"))
        .expect("write segment files");
    let fail_at = input.fail_at_record();

    let mut delivered = 0u64;
    let result = wal::scan(dir, |record| {
        assert_eq!(
            record.seq,
            delivered + 1,
            "records arrive contiguous from 1"
        );
        assert_ne!(record.kind, 0);
        if fail_at == Some(delivered) {
            return Err(Stop);
        }
        delivered += 1;
        Ok(())
    });

    match result {
        Ok(report) => {
            assert!(input.flags & voucherd_fuzz::FLAG_BAD_NAME == 0);
            assert_eq!(report.records, delivered);
            assert_eq!(report.last_seq, delivered);
            assert_eq!(report.segments as usize, input.segment_files);
            let tail = input
                .files
                .iter()
                .find(|(name, _)| report.tail_segment.ends_with(name))
                .map(|(_, contents)| contents.len() as u64);
            let tail_bytes = match tail {
                Some(bytes) => bytes,
                // No segment at all: the report names segment 1, which does not exist yet.
                None => {
                    assert_eq!(input.segment_files, 0);
                    return;
                }
            };
            assert!(report.tail_offset_bytes >= 64);
            assert_eq!(report.tail_offset_bytes % 8, 0);
            assert!(report.tail_offset_bytes + report.truncated_tail_bytes <= tail_bytes);
        }
        Err(OpenError::Callback(Stop)) => assert_eq!(fail_at, Some(delivered)),
        // Damage is refused with the file and offset; a stray `.wal` name is refused too.
        Err(OpenError::Corrupt { .. } | OpenError::UnexpectedSegmentName { .. }) => {}
        // Nothing here is an I/O problem, a lock or an option: any of them is a bug.
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }

    // `scan` is read-only. Checked on a quarter of the inputs (chosen by length, so a
    // reproducer checks the same way): reading every file back is a third of a run's cost.
    if !data.len().is_multiple_of(4) {
        return;
    }
    for (name, contents) in &input.files {
        let now = std::fs::read(dir.join(name)).expect("file still there");
        assert!(now == *contents, "scan modified {name}");
    }
});
