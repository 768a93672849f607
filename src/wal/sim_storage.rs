//! A fault-injecting, in-memory [`Storage`] for tests: a disk with a page cache.
//!
//! Every file has two copies of its bytes: `cached` (what reads see, the page cache) and
//! `durable` (what the device holds). Writes change `cached` and mark its 512-byte sectors
//! dirty; a sync copies the dirty sectors it covers to `durable`. Directory changes (create,
//! rename, remove) are likewise pending until the directory is synced.
//!
//! At a [`SimDisk::crash`]:
//! - each dirty sector independently reached the device or not ([`CrashMode::TearSectors`],
//!   chosen by the seed), or none did ([`CrashMode::DropUnsynced`]), or all did
//!   ([`CrashMode::KeepUnsynced`]: the process died but the kernel wrote its cache back);
//! - an unsynced length change (preallocation) persisted or not, by the same rule;
//! - a prefix of the pending directory changes persisted (a journaling file system commits
//!   metadata in order), its length chosen by the seed;
//! - the page cache is then dropped: reads see exactly the device.
//!
//! Faults: the n-th file sync fails with `EIO` (and, as Linux does, the dirty sectors it
//! covered are marked clean without reaching the device), the n-th preallocation fails with
//! `ENOSPC`, and [`SimDisk::flip_bit`] damages a byte anywhere. `crash_at_op` turns the
//! operation with that index, and every later one, into a failure of a process that is dying:
//! nothing it asks for happens. The simulation uses it to stop a workload at any boundary.
//!
//! Nothing here reads a clock, spawns a thread or uses global randomness: the same calls and
//! the same seed give the same disk, bit for bit.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::wal::WriterKind;
use crate::wal::storage::{NewFile, SegmentWriter, Storage, StorageError};

/// Granularity at which unsynced writes tear.
pub const SECTOR_BYTES: usize = 512;
/// The path the simulated directory reports (never touched on the real file system).
const SIM_DIR: &str = "/simulated/wal";

/// splitmix64: small, deterministic, good enough to choose faults and workloads.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::core::rng::splitmix_next(&mut self.0)
    }

    /// Uniform in `low..high_exclusive` (which must not be empty).
    pub fn range(&mut self, low: usize, high_exclusive: usize) -> usize {
        low + (self.next_u64() % (high_exclusive - low) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A fresh generator derived from this one and `salt`, without advancing this one.
    pub fn fork(&self, salt: u64) -> Self {
        let mut forked = Self(self.0 ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        forked.next_u64();
        forked
    }
}

/// What happens to unsynced data at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing unsynced reached the device.
    DropUnsynced,
    /// Everything unsynced reached the device (a process crash; the kernel survived).
    KeepUnsynced,
    /// Each unsynced sector (and length change, and a prefix of the directory changes) reached
    /// the device or not, chosen by this seed.
    TearSectors { seed: u64 },
    /// Only the process died: the kernel keeps its page cache, unsynced as it was (the next
    /// process reads it; a power loss later may still drop it).
    ProcessOnly,
}

/// Faults to inject; counts are 0-based over the whole life of the disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The file sync (segment `sync_range` or new-file `sync_all`) with this index fails (EIO).
    pub fail_file_sync: Option<u64>,
    /// The preallocation with this index fails (ENOSPC).
    pub fail_preallocate: Option<u64>,
    /// The mutating operation with this index and all later ones fail: the process is dying.
    pub crash_at_op: Option<u64>,
}

/// Kinds of mutating operations, recorded in [`SimDisk::trace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    Preallocate,
    Write,
    FileSync,
    Rename,
    Remove,
    DirSync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DirChange {
    Link {
        name: String,
        inode: u64,
    },
    Unlink {
        name: String,
    },
    /// Atomic, as rename(2) is.
    Rename {
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    cached: Vec<u8>,
    durable: Vec<u8>,
    dirty_sectors: BTreeSet<usize>,
}

impl SimFile {
    fn mark_dirty(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = offset / SECTOR_BYTES;
        let last = (offset + len - 1) / SECTOR_BYTES;
        self.dirty_sectors.extend(first..=last);
    }

    fn persist_sector(&mut self, sector: usize) {
        let start = sector * SECTOR_BYTES;
        let end = (start + SECTOR_BYTES).min(self.cached.len());
        if start >= end {
            return;
        }
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(&self.cached[start..end]);
    }

    /// Copies the dirty sectors overlapping `[offset, offset + len)` to the device.
    fn sync_range(&mut self, offset: usize, len: usize) {
        let first = offset / SECTOR_BYTES;
        let last = offset.saturating_add(len).div_ceil(SECTOR_BYTES);
        let sectors: Vec<usize> = self.dirty_sectors.range(first..last).copied().collect();
        for sector in sectors {
            self.persist_sector(sector);
            self.dirty_sectors.remove(&sector);
        }
        if self.durable.len() < self.cached.len() {
            // A data sync also makes the length needed to read the data back durable.
            self.durable.resize(self.cached.len(), 0);
        }
    }

    /// EIO: the kernel marks the pages clean although they never reached the device.
    fn lose_range(&mut self, offset: usize, len: usize) {
        let first = offset / SECTOR_BYTES;
        let last = offset.saturating_add(len).div_ceil(SECTOR_BYTES);
        let sectors: Vec<usize> = self.dirty_sectors.range(first..last).copied().collect();
        for sector in sectors {
            self.dirty_sectors.remove(&sector);
        }
    }

    fn crash(&mut self, mode: CrashMode, rng: &mut SimRng) {
        let reached = |rng: &mut SimRng| match mode {
            CrashMode::DropUnsynced => false,
            CrashMode::KeepUnsynced => true,
            CrashMode::TearSectors { .. } => rng.percent(50),
            CrashMode::ProcessOnly => unreachable!("the device is untouched"),
        };
        if self.cached.len() != self.durable.len() && reached(rng) {
            self.durable.resize(self.cached.len(), 0);
        }
        let durable_len = self.durable.len();
        for sector in std::mem::take(&mut self.dirty_sectors) {
            if reached(rng) && sector * SECTOR_BYTES < durable_len {
                self.persist_sector(sector);
                self.durable.truncate(durable_len);
            }
        }
        self.cached = self.durable.clone();
    }
}

/// The whole simulated device and page cache, plus fault settings and an operation trace.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    files: BTreeMap<u64, SimFile>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    pending_dir_changes: Vec<DirChange>,
    faults: Faults,
    crashed: bool,
    mutating_ops: u64,
    file_syncs: u64,
    preallocations: u64,
    reads: u64,
    trace: Vec<OpKind>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn dying() -> io::Error {
    io::Error::other("simulated crash: the process is dying")
}

fn name_of(path: &Path) -> io::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| errno(libc::EINVAL))
}

impl SimDisk {
    /// Installs the faults to inject from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Whether `crash_at_op` was reached.
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// Mutating operations performed so far (each a crash boundary).
    pub fn mutating_ops(&self) -> u64 {
        self.mutating_ops
    }

    /// Calls of any kind so far, reads included (bounds recovery work).
    pub fn calls(&self) -> u64 {
        self.mutating_ops + self.reads
    }

    /// Every mutating operation performed, in order.
    pub fn trace(&self) -> &[OpKind] {
        &self.trace
    }

    /// Names in the directory as the process sees them now.
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// The bytes of `name` as reads see them.
    pub fn contents(&self, name: &str) -> Option<&[u8]> {
        let inode = self.names.get(name)?;
        self.files.get(inode).map(|f| f.cached.as_slice())
    }

    /// Flips bit `bit` of byte `offset` of `name`, in the cache and on the device alike.
    /// Returns false if there is no such byte.
    pub fn flip_bit(&mut self, name: &str, offset: usize, bit: u8) -> bool {
        let Some(file) = self.names.get(name).and_then(|i| self.files.get_mut(i)) else {
            return false;
        };
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        for bytes in [&mut file.cached, &mut file.durable] {
            if let Some(byte) = bytes.get_mut(offset) {
                *byte ^= mask;
                flipped = true;
            }
        }
        flipped
    }

    /// The machine goes down: see the module doc. Clears faults and the crashed flag, so the
    /// disk can be recovered from.
    pub fn crash(&mut self, mode: CrashMode) {
        if mode == CrashMode::ProcessOnly {
            self.faults = Faults::default();
            self.crashed = false;
            return;
        }
        let mut rng = SimRng::new(match mode {
            CrashMode::TearSectors { seed } => seed,
            _ => 0,
        });
        let persisted = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::KeepUnsynced => self.pending_dir_changes.len(),
            CrashMode::TearSectors { .. } => rng.range(0, self.pending_dir_changes.len() + 1),
            CrashMode::ProcessOnly => unreachable!("returned above"),
        };
        for change in self.pending_dir_changes.drain(..persisted) {
            apply_change(&mut self.durable_names, change);
        }
        self.pending_dir_changes.clear();
        self.names = self.durable_names.clone();
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.files.retain(|inode, _| live.contains(inode));
        for file in self.files.values_mut() {
            file.crash(mode, &mut rng);
        }
        self.faults = Faults::default();
        self.crashed = false;
    }

    fn begin(&mut self, kind: OpKind) -> io::Result<()> {
        if self.crashed {
            return Err(dying());
        }
        if self.faults.crash_at_op == Some(self.mutating_ops) {
            self.crashed = true;
            return Err(dying());
        }
        self.mutating_ops += 1;
        self.trace.push(kind);
        Ok(())
    }

    fn read(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(dying());
        }
        self.reads += 1;
        Ok(())
    }

    fn change_dir(&mut self, change: DirChange) {
        apply_change(&mut self.names, change.clone());
        self.pending_dir_changes.push(change);
    }

    fn file_mut(&mut self, inode: u64) -> io::Result<&mut SimFile> {
        self.files.get_mut(&inode).ok_or_else(|| errno(libc::EBADF))
    }

    fn create(&mut self, name: String) -> io::Result<u64> {
        self.begin(OpKind::Create)?;
        if self.names.contains_key(&name) {
            return Err(errno(libc::EEXIST));
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.files.insert(inode, SimFile::default());
        self.change_dir(DirChange::Link { name, inode });
        Ok(inode)
    }

    fn preallocate(&mut self, inode: u64, len: usize) -> io::Result<()> {
        self.begin(OpKind::Preallocate)?;
        let index = self.preallocations;
        self.preallocations += 1;
        if self.faults.fail_preallocate == Some(index) {
            return Err(errno(libc::ENOSPC));
        }
        let file = self.file_mut(inode)?;
        if file.cached.len() < len {
            file.cached.resize(len, 0);
        }
        Ok(())
    }

    fn write(&mut self, inode: u64, offset: usize, bytes: &[u8]) -> io::Result<()> {
        self.begin(OpKind::Write)?;
        let file = self.file_mut(inode)?;
        let end = offset
            .checked_add(bytes.len())
            .ok_or_else(|| errno(libc::EFBIG))?;
        if end > file.cached.len() {
            file.cached.resize(end, 0);
        }
        file.cached[offset..end].copy_from_slice(bytes);
        file.mark_dirty(offset, bytes.len());
        Ok(())
    }

    fn file_sync(&mut self, inode: u64, range: Option<(usize, usize)>) -> io::Result<()> {
        self.begin(OpKind::FileSync)?;
        let index = self.file_syncs;
        self.file_syncs += 1;
        let fail = self.faults.fail_file_sync == Some(index);
        let file = self.file_mut(inode)?;
        let (offset, len) = range.unwrap_or((0, file.cached.len()));
        if fail {
            file.lose_range(offset, len);
            return Err(errno(libc::EIO));
        }
        file.sync_range(offset, len);
        if range.is_none() {
            file.durable.truncate(file.cached.len());
        }
        Ok(())
    }

    fn rename(&mut self, from: String, to: String) -> io::Result<()> {
        self.begin(OpKind::Rename)?;
        if self.names.contains_key(&to) {
            return Err(errno(libc::EEXIST));
        }
        if !self.names.contains_key(&from) {
            return Err(errno(libc::ENOENT));
        }
        self.change_dir(DirChange::Rename { from, to });
        Ok(())
    }

    fn remove(&mut self, name: String) -> io::Result<()> {
        self.begin(OpKind::Remove)?;
        if !self.names.contains_key(&name) {
            return Err(errno(libc::ENOENT));
        }
        self.change_dir(DirChange::Unlink { name });
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        self.begin(OpKind::DirSync)?;
        for change in std::mem::take(&mut self.pending_dir_changes) {
            apply_change(&mut self.durable_names, change);
        }
        Ok(())
    }
}

fn apply_change(names: &mut BTreeMap<String, u64>, change: DirChange) {
    match change {
        DirChange::Link { name, inode } => {
            names.insert(name, inode);
        }
        DirChange::Unlink { name } => {
            names.remove(&name);
        }
        DirChange::Rename { from, to } => {
            if let Some(inode) = names.remove(&from) {
                names.insert(to, inode);
            }
        }
    }
}

/// A handle on a shared [`SimDisk`]; clones see the same disk.
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    dir: PathBuf,
}

impl Default for SimStorage {
    fn default() -> Self {
        Self::from_disk(SimDisk::default())
    }
}

impl SimStorage {
    /// Storage over `disk` (e.g. a crashed copy of another storage's disk).
    pub fn from_disk(disk: SimDisk) -> Self {
        Self {
            disk: Arc::new(Mutex::new(disk)),
            dir: PathBuf::from(SIM_DIR),
        }
    }

    /// Runs `f` on the disk.
    pub fn with_disk<T>(&self, f: impl FnOnce(&mut SimDisk) -> T) -> T {
        f(&mut self.disk.lock())
    }

    /// A copy of the disk as it is now.
    pub fn snapshot(&self) -> SimDisk {
        self.disk.lock().clone()
    }

    fn run<T>(
        &self,
        operation: &'static str,
        path: &Path,
        f: impl FnOnce(&mut SimDisk) -> io::Result<T>,
    ) -> Result<T, StorageError> {
        f(&mut self.disk.lock()).map_err(|source| StorageError {
            operation,
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Storage for SimStorage {
    const WRITER: WriterKind = WriterKind::Simulated;
    type NewFile = SimFileHandle;
    type Segment = SimFileHandle;
    type Contents<'a> = Vec<u8>;

    fn dir_path(&self) -> &Path {
        &self.dir
    }

    fn list_names(&self) -> Result<Vec<String>, StorageError> {
        self.run("list directory", &self.dir, |disk| {
            disk.read()?;
            Ok(disk.names())
        })
    }

    fn create_new(&self, path: &Path) -> Result<SimFileHandle, StorageError> {
        let inode = self.run("create segment", path, |disk| disk.create(name_of(path)?))?;
        Ok(SimFileHandle {
            storage: self.clone(),
            inode,
            path: path.to_path_buf(),
            len_bytes: 0,
        })
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        self.run("rename new segment", to, |disk| {
            disk.rename(name_of(from)?, name_of(to)?)
        })
    }

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        self.run("remove stale temporary segment", path, |disk| {
            disk.remove(name_of(path)?)
        })
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.run("fsync directory", &self.dir, SimDisk::sync_dir)
    }

    fn read_segment(&self, path: &Path) -> Result<Vec<u8>, StorageError> {
        self.run("read segment", path, |disk| {
            disk.read()?;
            disk.contents(&name_of(path)?)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| errno(libc::ENOENT))
        })
    }

    fn open_segment(
        &self,
        path: &Path,
        expected_len_bytes: u64,
    ) -> Result<SimFileHandle, StorageError> {
        let inode = self.run("open segment for writing", path, |disk| {
            disk.read()?;
            let name = name_of(path)?;
            let inode = *disk.names.get(&name).ok_or_else(|| errno(libc::ENOENT))?;
            let len = disk.file_mut(inode)?.cached.len() as u64;
            if len != expected_len_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file is {len} bytes, expected {expected_len_bytes}"),
                ));
            }
            Ok(inode)
        })?;
        Ok(SimFileHandle {
            storage: self.clone(),
            inode,
            path: path.to_path_buf(),
            len_bytes: expected_len_bytes as usize,
        })
    }
}

/// An open simulated file: a new segment being created, or the tail being appended to.
#[derive(Debug)]
pub struct SimFileHandle {
    storage: SimStorage,
    inode: u64,
    path: PathBuf,
    len_bytes: usize,
}

impl NewFile for SimFileHandle {
    fn preallocate(&mut self, len_bytes: u64) -> Result<(), StorageError> {
        let inode = self.inode;
        self.storage.run(
            "fallocate (no sparse fallback) segment",
            &self.path,
            |disk| disk.preallocate(inode, len_bytes as usize),
        )?;
        self.len_bytes = self.len_bytes.max(len_bytes as usize);
        Ok(())
    }

    fn write_at(&mut self, offset_bytes: u64, bytes: &[u8]) -> Result<(), StorageError> {
        let inode = self.inode;
        self.storage
            .run("write segment header", &self.path, |disk| {
                disk.write(inode, offset_bytes as usize, bytes)
            })
    }

    fn sync_all(&mut self) -> Result<(), StorageError> {
        let inode = self.inode;
        self.storage.run("fsync segment", &self.path, |disk| {
            disk.file_sync(inode, None)
        })
    }
}

impl SegmentWriter for SimFileHandle {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    fn write_at(&mut self, offset_bytes: usize, bytes: &[u8]) -> Result<(), StorageError> {
        if offset_bytes.saturating_add(bytes.len()) > self.len_bytes {
            return Err(StorageError {
                operation: "write into segment",
                path: self.path.clone(),
                source: errno(libc::EINVAL),
            });
        }
        let inode = self.inode;
        self.storage.run("write into segment", &self.path, |disk| {
            disk.write(inode, offset_bytes, bytes)
        })
    }

    fn sync_range(&mut self, offset_bytes: usize, len_bytes: usize) -> Result<(), StorageError> {
        let inode = self.inode;
        self.storage.run("sync segment", &self.path, |disk| {
            disk.file_sync(inode, Some((offset_bytes, len_bytes)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(storage: &SimStorage, name: &str, len: usize) -> SimFileHandle {
        let path = storage.dir_path().join(name);
        let mut file = storage.create_new(&path).expect("create");
        file.preallocate(len as u64).expect("preallocate");
        NewFile::sync_all(&mut file).expect("sync");
        storage.sync_dir().expect("sync dir");
        storage.open_segment(&path, len as u64).expect("open")
    }

    #[test]
    fn synced_data_survives_every_crash_mode_and_unsynced_data_only_some() {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::TearSectors { seed: 7 },
            CrashMode::ProcessOnly,
        ] {
            let storage = SimStorage::default();
            let mut file = segment(&storage, "a.wal", 4 * SECTOR_BYTES);
            file.write_and_sync(0, &[1; 700]).expect("synced write");
            SegmentWriter::write_at(&mut file, 700, &[2; 1000]).expect("unsynced write");
            let mut disk = storage.snapshot();
            disk.crash(mode);
            let bytes = disk.contents("a.wal").expect("file survives");
            assert_eq!(bytes.len(), 4 * SECTOR_BYTES);
            assert!(bytes[..700].iter().all(|&b| b == 1), "{mode:?}");
            let survived = bytes[700..1700].iter().filter(|&&b| b == 2).count();
            match mode {
                CrashMode::DropUnsynced => assert_eq!(survived, 0),
                // Still in the page cache, where the next process reads it.
                CrashMode::KeepUnsynced | CrashMode::ProcessOnly => assert_eq!(survived, 1000),
                CrashMode::TearSectors { .. } => {
                    // Whole sectors only: the count is made of sector-sized pieces.
                    let pieces = [324usize, 512, 164];
                    assert!(
                        (0..8).any(|m: usize| {
                            (0..3)
                                .filter(|i| m & (1 << i) != 0)
                                .map(|i| pieces[i])
                                .sum::<usize>()
                                == survived
                        }),
                        "{survived} is not a union of sectors"
                    );
                }
            }
        }
    }

    #[test]
    fn unsynced_directory_changes_may_be_lost_and_synced_ones_are_not() {
        let storage = SimStorage::default();
        segment(&storage, "kept.wal", SECTOR_BYTES);
        let path = storage.dir_path().join("new.tmp");
        storage.create_new(&path).expect("create");
        let mut disk = storage.snapshot();
        disk.crash(CrashMode::DropUnsynced);
        assert_eq!(disk.names(), vec!["kept.wal".to_string()]);
        let mut disk = storage.snapshot();
        disk.crash(CrashMode::KeepUnsynced);
        assert_eq!(
            disk.names(),
            vec!["kept.wal".to_string(), "new.tmp".to_string()]
        );
    }

    #[test]
    fn injected_faults_fail_the_chosen_operation() {
        let storage = SimStorage::default();
        storage.with_disk(|d| {
            d.set_faults(Faults {
                fail_file_sync: Some(1),
                fail_preallocate: Some(1),
                crash_at_op: None,
            })
        });
        let mut file = segment(&storage, "a.wal", SECTOR_BYTES);
        SegmentWriter::write_at(&mut file, 0, b"abc").expect("write");
        let error = file.sync_range(0, 3).expect_err("second sync fails");
        assert_eq!(error.source.raw_os_error(), Some(libc::EIO));
        let mut other = storage
            .create_new(&storage.dir_path().join("b.tmp"))
            .expect("create");
        let error = other
            .preallocate(4096)
            .expect_err("second preallocation fails");
        assert_eq!(error.source.raw_os_error(), Some(libc::ENOSPC));
        // The failed sync lost its data: it never reaches the device.
        let mut disk = storage.snapshot();
        disk.crash(CrashMode::KeepUnsynced);
        assert_eq!(
            disk.contents("a.wal").map(|b| &b[..3]),
            Some(&[0u8, 0, 0][..])
        );
    }

    #[test]
    fn crash_at_op_stops_every_later_operation() {
        let storage = SimStorage::default();
        storage.with_disk(|d| {
            d.set_faults(Faults {
                crash_at_op: Some(2),
                ..Faults::default()
            })
        });
        let path = storage.dir_path().join("a.tmp");
        let mut file = storage.create_new(&path).expect("op 0");
        file.preallocate(SECTOR_BYTES as u64).expect("op 1");
        assert!(NewFile::write_at(&mut file, 0, b"x").is_err());
        assert!(storage.sync_dir().is_err());
        assert!(storage.with_disk(|d| d.crashed()));
        assert_eq!(storage.with_disk(|d| d.mutating_ops()), 2);
    }
}
