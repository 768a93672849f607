//! An insert-only index from a uniformly distributed key (a keyed identity digest, a
//! CSPRNG voucher random) to a `u32` position, built for the claim path and for replay.
//!
//! Why not `HashMap`: a tranche's indexes only ever grow (nothing is removed from the
//! holders, requests or voucher-ID sets), their keys are already uniform, and the two hot
//! loops want things a general map does not give:
//! - **one flat slot array** of 16-byte slots, written sequentially when it is allocated
//!   (so the release burst takes no first-touch page faults on it, and setting it up is a
//!   memory fill, not millions of throwaway inserts);
//! - **[`DigestIndex::touch`]**: replay computes the slots of a whole run of claims first
//!   and loads each one, so the cache misses of a run overlap instead of being paid one
//!   after another (a big tranche's index is far larger than the CPU caches).
//!
//! Linear probing at a load factor of about one half: a lookup that misses, the common
//! case on a fresh claim, reads about 2.5 consecutive slots, nearly always in one or two
//! cache lines. The slot array doubles when it would pass half full. In the daemon, a big
//! (mapped) array gets its doubled array faulted in on a helper thread first
//! ([`PendingMemory`]) and takes inserts up to [`HARD_LOAD_QUARTERS`] quarters full while it
//! waits.
//!
//! Invariant: at most three quarters of the slots are used, so every probe ends.
//!
//! A slot keeps 96 bits of a key: all of a 64-bit key, and the low 96 bits of a 128-bit
//! digest. Memory is what a restart pays for (every slot is written when the index is
//! built), and 16-byte slots are a third smaller than 24-byte ones. Two different identity
//! keys whose keyed digests agree on 96 bits would be taken for one another; among 10^8 keys
//! the chance that any pair does is about 10^8² / 2^97 ≈ 10^-13, and the digest key is secret,
//! so nobody can aim for it.

/// A key the index can hold: 64 or 128 bits of already uniform data.
pub trait IndexKey: Copy + Eq + std::fmt::Debug {
    /// The bits of the key a slot keeps (see the module docs): 64 + 32.
    fn stored(self) -> (u64, u32);
}

impl IndexKey for u64 {
    fn stored(self) -> (u64, u32) {
        (self, 0)
    }
}

impl IndexKey for super::identity::KeyDigest {
    fn stored(self) -> (u64, u32) {
        (self.0 as u64, (self.0 >> 64) as u32)
    }
}

/// Marks an empty slot. Values are positions in a tranche's voucher log, which is bounded
/// far below this (`MAX_QUOTA_PER_COUNTY` × `MAX_COUNTIES_PER_TRANCHE` plus pool draws).
const EMPTY: u32 = u32::MAX;
/// The smallest slot array (a power of two).
const MIN_SLOTS: usize = 16;
/// Fibonacci hashing multiplier: spreads any bits of the key over the high bits.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Slot {
    key_low: u64,
    key_high: u32,
    value: u32,
}

#[cfg(test)]
const EMPTY_SLOT: Slot = Slot {
    key_low: 0,
    key_high: 0,
    value: EMPTY,
};

impl Slot {
    /// In memory a value is stored plus one, so that [`EMPTY`] is stored as zero and an
    /// array of zero bytes (fresh anonymous memory) is an array of empty slots.
    fn from_bytes(bytes: &[u8; SLOT_BYTES]) -> Slot {
        let [
            k0,
            k1,
            k2,
            k3,
            k4,
            k5,
            k6,
            k7,
            h0,
            h1,
            h2,
            h3,
            v0,
            v1,
            v2,
            v3,
        ] = *bytes;
        Slot {
            key_low: u64::from_ne_bytes([k0, k1, k2, k3, k4, k5, k6, k7]),
            key_high: u32::from_ne_bytes([h0, h1, h2, h3]),
            value: u32::from_ne_bytes([v0, v1, v2, v3]).wrapping_sub(1),
        }
    }

    fn to_bytes(self) -> [u8; SLOT_BYTES] {
        let mut out = [0; SLOT_BYTES];
        out[..8].copy_from_slice(&self.key_low.to_ne_bytes());
        out[8..12].copy_from_slice(&self.key_high.to_ne_bytes());
        out[SLOT_VALUE_OFFSET..].copy_from_slice(&self.value.wrapping_add(1).to_ne_bytes());
        out
    }

    fn holds(&self, (low, high): (u64, u32)) -> bool {
        self.key_low == low && self.key_high == high
    }
}

/// Slots of an array that holds `entries` at most half full.
fn slots_for(entries: usize) -> usize {
    entries
        .saturating_mul(2)
        .max(MIN_SLOTS)
        .checked_next_power_of_two()
        .expect("index capacity fits usize")
}

/// The home slot of a stored key in an array of `2^bits` slots.
fn home_of((low, high): (u64, u32), bits: u32) -> usize {
    ((low ^ u64::from(high).rotate_left(32)).wrapping_mul(SPREAD) >> (u64::BITS - bits)) as usize
}

/// The slot of `slots` (`2^bits` of them, at least one empty) holding `stored`, or the empty
/// slot where it would go.
fn find_in(slots: &SlotArray, bits: u32, stored: (u64, u32)) -> usize {
    let mask = slots.len() - 1;
    let mut i = home_of(stored, bits);
    loop {
        let slot = slots.get(i);
        if slot.value == EMPTY || slot.holds(stored) {
            return i;
        }
        i = (i + 1) & mask;
    }
}

#[derive(Debug)]
pub struct DigestIndex<K: IndexKey> {
    slots: SlotArray,
    /// `log2(slots.len())`.
    bits: u32,
    /// Distinct keys held (in `slots`, or still only in `retiring`).
    len: usize,
    /// While the index grows: the previous, half-size slot array, whose entries are moved
    /// into `slots` a few at a time by each insert instead of all at once.
    retiring: Option<Box<Retiring>>,
    /// The bigger array this index moves into next, being faulted in elsewhere: the doubled
    /// one past half full (mapped arrays only), or one sized for later.
    next: Option<Provisioning>,
    _key: std::marker::PhantomData<K>,
}

impl<K: IndexKey> Clone for DigestIndex<K> {
    /// A copy holds the same keys; an array still being provisioned is not copied (the copy
    /// starts its own when it next inserts).
    fn clone(&self) -> Self {
        DigestIndex {
            slots: self.slots.clone(),
            bits: self.bits,
            len: self.len,
            retiring: self.retiring.clone(),
            next: None,
            _key: std::marker::PhantomData,
        }
    }
}

/// At most this many quarters of a slot array are used. A mapped array that passes half full
/// keeps taking inserts while its doubled array is faulted in on a helper thread, and an
/// insert waits for that array only here. Linear probing at 3/4 reads about 8.5 slots on a
/// miss (2.5 at 1/2), in two or three adjacent cache lines, and only for that while.
const HARD_LOAD_QUARTERS: usize = 3;

/// Memory for a big slot array being written (faulted in) somewhere else: the daemon's
/// [`Provisioner`] writes it on a helper thread (`crate::prefault`).
///
/// Why: the first write to a fresh page is the costly part of growing a big index. On this VM
/// a fresh 2 GiB mapping takes 5–6 s to write on one thread and 2.9 s on two, against 0.23 s
/// when its pages are already backed, and in a 10 M-claim replay those page faults on the
/// applying thread were 38 % of all samples. Faulting the array in elsewhere takes that off
/// the thread that holds the tranche (the applying thread, or the claim path under the
/// tranche's lock). The memory is all zero, that is all empty, whenever it arrives, so when
/// the index switches to it changes no answer.
pub trait PendingMemory: Send + std::fmt::Debug {
    /// Whether [`Self::wait`] would return at once.
    fn is_ready(&self) -> bool;
    /// The mapping, made by [`faulted_in_mapping`]; blocks until it is.
    fn wait(self: Box<Self>) -> memmap2::MmapMut;
}

/// Starts making a [`faulted_in_mapping`] of the given bytes elsewhere; `None` when it cannot
/// (the index then grows at once, its pages faulted in as inserts reach them).
pub type Provisioner = fn(bytes: usize) -> Option<Box<dyn PendingMemory>>;

static PROVISIONER: std::sync::OnceLock<Provisioner> = std::sync::OnceLock::new();

/// Installs the process's [`Provisioner`], like a global allocator: the daemon does at start.
/// Without one (the tests, the benches, the tools), a doubled array is made when it is
/// needed, on the inserting thread. Returns `false` if one was installed already.
pub fn install_provisioner(provisioner: Provisioner) -> bool {
    PROVISIONER.set(provisioner).is_ok()
}

/// A fresh anonymous mapping of `bytes` (a multiple of the slot size, at least
/// [`HUGE_PAGE_ARRAY_MIN_BYTES`]) with every page written, which faults it in: what a
/// [`Provisioner`] hands back.
pub fn faulted_in_mapping(bytes: usize) -> memmap2::MmapMut {
    let mut map = zero_page_mapping(bytes);
    map.fill(0);
    map
}

/// A fresh anonymous mapping of `bytes`, not yet faulted in: its pages read as zero until
/// written. Asks for transparent huge pages.
fn zero_page_mapping(bytes: usize) -> memmap2::MmapMut {
    match memmap2::MmapOptions::new().len(bytes).map_anon() {
        Ok(map) => {
            // Advice only: without THP (or on an old kernel) it is 4 KiB pages.
            let _ = map.advise(memmap2::Advice::HugePage);
            map
        }
        // Out of address space or memory: the same failure the heap would report.
        Err(e) => panic!("cannot map a {bytes}-byte index: {e}"),
    }
}

/// A bigger slot array on its way (see [`PendingMemory`]): the doubled one, or the one a
/// restart sized for the claims it knows follow ([`DigestIndex::with_capacity_eventually`]).
#[derive(Debug)]
struct Provisioning {
    len: usize,
    memory: Box<dyn PendingMemory>,
}

impl Provisioning {
    /// `None` without a provisioner, or when it cannot start.
    fn start(len: usize) -> Option<Provisioning> {
        let provisioner = PROVISIONER.get()?;
        let memory = provisioner(len.checked_mul(SLOT_BYTES)?)?;
        Some(Provisioning { len, memory })
    }

    fn is_ready(&self) -> bool {
        self.memory.is_ready()
    }

    fn finish(self) -> SlotArray {
        let map = self.memory.wait();
        assert_eq!(map.len(), self.len * SLOT_BYTES, "provisioned array size");
        SlotArray {
            memory: SlotMemory::Mapped(map),
            len: self.len,
        }
    }
}

/// The slot array an index is growing out of.
///
/// Growing in one step held the tranche's lock while millions of keys were rehashed (a
/// ~0.4 s stall in the middle of a release for a tranche past its presized size); now each
/// insert moves [`MIGRATE_SLOTS_PER_INSERT`] slots. Invariant: every key is in the new array
/// or in `slots[cursor..]` here (a moved key stays here too, behind the cursor), so a lookup
/// that misses in the new array looks here; a key absent from both is absent.
#[derive(Clone, Debug)]
struct Retiring {
    slots: SlotArray,
    bits: u32,
    /// Slots before this one have been moved.
    cursor: usize,
}

/// Old slots moved per insert while growing (1 KiB read in order, at most 48 keys placed).
/// Growth starts when the index holds at most three quarters as many keys as the old array
/// has slots (at most 3/8 of the new one, at least twice as big), so the move ends after
/// `old slots / 64` inserts, long before the new array passes half full. While it lasts, a
/// lookup that misses probes both arrays, so a short move is a cheap one.
const MIGRATE_SLOTS_PER_INSERT: usize = 64;

impl<K: IndexKey> Default for DigestIndex<K> {
    fn default() -> Self {
        DigestIndex::with_capacity(0)
    }
}

impl<K: IndexKey> DigestIndex<K> {
    /// An index that holds `entries` without growing. The slot array is written in full
    /// here (every slot is initialised to empty), which also faults its pages in.
    pub fn with_capacity(entries: usize) -> DigestIndex<K> {
        let slots = slots_for(entries);
        DigestIndex {
            slots: SlotArray::empty(slots, Prefault::Now),
            bits: slots.trailing_zeros(),
            len: 0,
            retiring: None,
            next: None,
            _key: std::marker::PhantomData,
        }
    }

    /// An index that holds `entries` now and is about to hold `eventually` (a restart that
    /// knows how many claims follow). With a [`Provisioner`], the array for `eventually` is
    /// faulted in off this thread while inserts go into the array for `entries`, and the
    /// index moves into it once it is ready, as it does when it grows; without one, it is
    /// made here. Either way no array in between is made.
    pub fn with_capacity_eventually(entries: usize, eventually: usize) -> DigestIndex<K> {
        let slots = slots_for(eventually);
        if slots <= slots_for(entries) {
            return DigestIndex::with_capacity(entries);
        }
        // A heap-sized array is cheap to make here; a helper is for big mappings only.
        let next = SlotArray::is_mapped(slots)
            .then(|| Provisioning::start(slots))
            .flatten();
        match next {
            Some(next) => {
                let mut index = DigestIndex::with_capacity(entries);
                index.next = Some(next);
                index
            }
            None => DigestIndex::with_capacity(eventually),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries it holds before it starts to grow (half its slots).
    pub fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// Entries it holds before it grows, counting an array on its way.
    #[cfg(test)]
    pub fn eventual_capacity(&self) -> usize {
        self.next
            .as_ref()
            .map_or(0, |next| next.len / 2)
            .max(self.capacity())
    }

    /// Entries it can hold at most before the slot array doubles: see [`HARD_LOAD_QUARTERS`].
    fn max_len(&self) -> usize {
        self.slots.len() / 4 * HARD_LOAD_QUARTERS
    }

    fn home(&self, key: K) -> usize {
        home_of(key.stored(), self.bits)
    }

    fn find_stored(&self, stored: (u64, u32)) -> usize {
        find_in(&self.slots, self.bits, stored)
    }

    pub fn get(&self, key: K) -> Option<u32> {
        self.get_stored(key.stored())
    }

    fn get_stored(&self, stored: (u64, u32)) -> Option<u32> {
        let slot = self.slots.get(self.find_stored(stored));
        if slot.value != EMPTY {
            return Some(slot.value);
        }
        self.get_retiring(stored)
    }

    /// A key still only in the retiring array (none when not growing).
    fn get_retiring(&self, stored: (u64, u32)) -> Option<u32> {
        let retiring = self.retiring.as_deref()?;
        let slot = retiring
            .slots
            .get(find_in(&retiring.slots, retiring.bits, stored));
        (slot.value != EMPTY).then_some(slot.value)
    }

    pub fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `key → value` if `key` is absent; returns the value already there otherwise
    /// (and changes nothing), like `HashMap::insert` without the overwrite.
    pub fn insert(&mut self, key: K, value: u32) -> Option<u32> {
        assert!(value != EMPTY, "index value {value} is reserved");
        let stored = key.stored();
        // One probe finds the key or the empty slot it goes into; it is used for the write
        // unless the array changes first.
        let mut at = self.find_stored(stored);
        let slot = self.slots.get(at);
        if slot.value != EMPTY {
            return Some(slot.value);
        }
        if let Some(found) = self.get_retiring(stored) {
            return Some(found);
        }
        if self.retiring.is_none()
            && (self.next.is_some() || self.len + 1 > self.capacity())
            && self.grow_when_ready()
        {
            at = self.find_stored(stored);
        }
        self.put_stored(at, stored, value);
        self.len += 1;
        self.migrate(MIGRATE_SLOTS_PER_INSERT);
        assert!(
            self.len <= self.max_len(),
            "index over its load limit while growing"
        );
        None
    }

    /// Called past half full, or while a bigger array is on its way: starts growing into
    /// the bigger array if it is ready (a heap-sized doubled one always is; a mapped one once
    /// it has been faulted in, see [`PendingMemory`]), or waits for it at
    /// [`HARD_LOAD_QUARTERS`]. Returns whether the index started growing.
    fn grow_when_ready(&mut self) -> bool {
        let next = match self.next.take() {
            Some(next) => next,
            None if self.len < self.capacity() => return false,
            None => {
                let doubled = self.slots.len() * 2;
                let pending = SlotArray::is_mapped(doubled)
                    .then(|| Provisioning::start(doubled))
                    .flatten();
                match pending {
                    Some(next) => next,
                    None => {
                        self.start_growing(SlotArray::empty(doubled, Prefault::OnFirstTouch));
                        return true;
                    }
                }
            }
        };
        if next.is_ready() || self.len + 1 > self.max_len() {
            self.start_growing(next.finish());
            true
        } else {
            self.next = Some(next);
            false
        }
    }

    fn put_stored(&mut self, at: usize, (key_low, key_high): (u64, u32), value: u32) {
        self.slots.set(
            at,
            Slot {
                key_low,
                key_high,
                value,
            },
        );
    }

    /// Starts moving to `bigger` (empty, a larger power of two of slots); the moving is done
    /// by later inserts.
    fn start_growing(&mut self, bigger: SlotArray) {
        assert!(
            bigger.len().is_power_of_two() && bigger.len() > self.slots.len(),
            "an index grows into a larger power of two of slots"
        );
        let bits = bigger.len().trailing_zeros();
        let old = std::mem::replace(&mut self.slots, bigger);
        let old_bits = self.bits;
        self.bits = bits;
        self.retiring = Some(Box::new(Retiring {
            slots: old,
            bits: old_bits,
            cursor: 0,
        }));
    }

    /// Moves up to `slots` slots of the retiring array into the current one.
    fn migrate(&mut self, slots: usize) {
        let Some(mut retiring) = self.retiring.take() else {
            return;
        };
        let end = (retiring.cursor + slots).min(retiring.slots.len());
        for i in retiring.cursor..end {
            let slot = retiring.slots.get(i);
            if slot.value == EMPTY {
                continue;
            }
            let stored = (slot.key_low, slot.key_high);
            let at = self.find_stored(stored);
            // Only `insert` adds keys, and it adds none the retiring array holds.
            assert!(
                self.slots.get(at).value == EMPTY,
                "a key in both arrays of a growing index"
            );
            self.put_stored(at, stored, slot.value);
        }
        retiring.cursor = end;
        if end < retiring.slots.len() {
            self.retiring = Some(retiring);
        }
    }

    /// Loads the home slot of each key and returns a value derived from them, to be
    /// passed to `std::hint::black_box`. The loads are independent, so the CPU keeps many
    /// cache misses in flight at once; the lookups that follow then hit the cache. This is
    /// a prefetch in safe code.
    pub fn touch(&self, keys: impl IntoIterator<Item = K>) -> u32 {
        let retiring = self.retiring.as_deref();
        keys.into_iter().fold(0, |acc, key| {
            let old = retiring.map_or(0, |r| r.slots.get(home_of(key.stored(), r.bits)).value);
            acc ^ self.slots.get(self.home(key)).value ^ old
        })
    }

    /// The largest value held, `None` when empty. Reads only the slots' value bytes in one
    /// pass: a tranche checks its holders with it at every start, and at 10 M claims that
    /// index is 1 GiB (through [`Self::values`] the pass took 0.31 s).
    pub fn max_value(&self) -> Option<u32> {
        let unmoved = self
            .retiring
            .as_deref()
            .map_or(&[][..], |r| &r.slots.bytes()[r.cursor * SLOT_BYTES..]);
        let max_stored = [self.slots.bytes(), unmoved]
            .into_iter()
            .flat_map(|bytes| bytes.chunks_exact(SLOT_BYTES))
            .map(|slot| {
                let value: [u8; 4] = slot[SLOT_VALUE_OFFSET..]
                    .try_into()
                    .expect("the value is a slot's last 4 bytes");
                u32::from_ne_bytes(value)
            })
            .max()
            .unwrap_or(0);
        // Stored plus one (see `Slot::from_bytes`): zero is an empty slot.
        max_stored.checked_sub(1)
    }

    /// Every value, once each: the current array's, then those not yet moved out of the
    /// retiring one. The tests compare it with a model; the daemon needs only
    /// [`Self::max_value`].
    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        let unmoved = self
            .retiring
            .as_deref()
            .into_iter()
            .flat_map(|r| r.slots.iter().skip(r.cursor));
        self.slots
            .iter()
            .chain(unmoved)
            .filter(|s| s.value != EMPTY)
            .map(|s| s.value)
    }
}

/// Size of one slot in memory.
const SLOT_BYTES: usize = 16;
/// Where a slot's value (stored plus one) starts: after the 8 + 4 bytes of key.
const SLOT_VALUE_OFFSET: usize = 12;
/// Slot arrays at least this big live in their own anonymous mapping that asks the kernel
/// for transparent huge pages (`MADV_HUGEPAGE`). A big tranche's index is hundreds of times
/// larger than what the TLB covers with 4 KiB pages, so every probe of the release burst
/// would otherwise also pay a page walk; on this VM the walks are nested (guest and host).
/// Measured on `cargo bench --bench claim_decision` (issue path): 1.11 → 1.36 M claims/s.
/// Smaller arrays stay on the heap, where a mapping of their own would waste most of a page.
const HUGE_PAGE_ARRAY_MIN_BYTES: usize = 2 << 20;

/// When a new slot array's pages are faulted in.
///
/// `Now`, every page written: for the array sized when the tranche is defined (an admin call,
/// before the release), so the burst takes no first-touch faults on it, and for a doubled
/// array written on a helper thread ([`PendingMemory`]). Writing a doubled array on the
/// tranche's own thread was a stall under its lock (a fresh 128 MiB array took 270–370 ms to
/// fill on this VM's cold memory), so `OnFirstTouch`, pages left zero (empty) until inserts
/// reach them, is for heap-sized arrays and for growing when no helper can be started. Both are huge pages when big
/// enough: with small pages a 10 M-claim replay took twice as long (TLB misses on every probe).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Prefault {
    Now,
    OnFirstTouch,
}

/// The memory of a slot array: `len` slots of [`SLOT_BYTES`] each, read and written as
/// bytes so this stays safe code whatever backs it.
#[derive(Debug)]
enum SlotMemory {
    Heap(Box<[u8]>),
    Mapped(memmap2::MmapMut),
}

#[derive(Debug)]
struct SlotArray {
    memory: SlotMemory,
    len: usize,
}

impl SlotArray {
    /// `len` empty slots (all bytes zero: see [`Slot::from_bytes`]).
    ///
    /// With [`Prefault::Now`] every page is written now, which faults it in; with
    /// `OnFirstTouch` pages stay zero until first touched.
    fn empty(len: usize, prefault: Prefault) -> SlotArray {
        let bytes = len.checked_mul(SLOT_BYTES).expect("slot array fits usize");
        let memory = if SlotArray::is_mapped(len) {
            SlotMemory::Mapped(match prefault {
                Prefault::Now => faulted_in_mapping(bytes),
                Prefault::OnFirstTouch => zero_page_mapping(bytes),
            })
        } else {
            SlotMemory::Heap(vec![0; bytes].into_boxed_slice())
        };
        SlotArray { memory, len }
    }

    /// Whether an array of `len` slots gets a mapping of its own.
    fn is_mapped(len: usize) -> bool {
        len.saturating_mul(SLOT_BYTES) >= HUGE_PAGE_ARRAY_MIN_BYTES
    }

    fn bytes(&self) -> &[u8] {
        match &self.memory {
            SlotMemory::Heap(b) => b,
            SlotMemory::Mapped(m) => m,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.memory {
            SlotMemory::Heap(b) => b,
            SlotMemory::Mapped(m) => m,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Slot {
        let at = i * SLOT_BYTES;
        let bytes: &[u8; SLOT_BYTES] = self.bytes()[at..at + SLOT_BYTES]
            .try_into()
            .expect("slot is 16 bytes");
        Slot::from_bytes(bytes)
    }

    fn set(&mut self, i: usize, slot: Slot) {
        let at = i * SLOT_BYTES;
        self.bytes_mut()[at..at + SLOT_BYTES].copy_from_slice(&slot.to_bytes());
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.bytes()
            .chunks_exact(SLOT_BYTES)
            .map(|b| Slot::from_bytes(b.try_into().expect("chunks are 16 bytes")))
    }
}

impl Clone for SlotArray {
    fn clone(&self) -> SlotArray {
        let prefault = match self.memory {
            SlotMemory::Heap(_) => Prefault::OnFirstTouch,
            SlotMemory::Mapped(_) => Prefault::Now,
        };
        let mut copy = SlotArray::empty(self.len, prefault);
        copy.bytes_mut().copy_from_slice(self.bytes());
        copy
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::core::identity::KeyDigest;

    proptest! {
        /// Any sequence of inserts and lookups answers exactly what a `HashMap` answers,
        /// including keys that collide in their low bits and growth from the smallest size.
        #[test]
        fn agrees_with_a_hash_map(
            ops in proptest::collection::vec((any::<bool>(), 0u64..512, any::<u64>()), 0..2_000),
            presize in 0usize..64,
        ) {
            let mut index: DigestIndex<KeyDigest> = DigestIndex::with_capacity(presize);
            let mut model: HashMap<KeyDigest, u32> = HashMap::new();
            for (n, (is_insert, low, high)) in ops.into_iter().enumerate() {
                // Few distinct low words and arbitrary high words: collisions of the home
                // slot are common, equal keys recur.
                // (Bits above 96 are not kept: vary only the kept ones.)
                let key = KeyDigest(u128::from(low) | (u128::from(high % 4) << 64));
                if is_insert {
                    let value = n as u32;
                    let expected = model.get(&key).copied();
                    if expected.is_none() {
                        model.insert(key, value);
                    }
                    prop_assert_eq!(index.insert(key, value), expected);
                } else {
                    prop_assert_eq!(index.get(key), model.get(&key).copied());
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert!(index.len() <= index.capacity());
            }
            prop_assert_eq!(index.max_value(), model.values().max().copied());
            let mut entries: Vec<_> = index.values().collect();
            let mut expected: Vec<_> = model.values().copied().collect();
            entries.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(entries, expected);
        }
    }

    #[test]
    fn u64_keys_round_trip_and_grow() {
        let mut index: DigestIndex<u64> = DigestIndex::default();
        for i in 0..10_000u64 {
            assert_eq!(index.insert(i.wrapping_mul(SPREAD), i as u32), None);
        }
        assert_eq!(index.len(), 10_000);
        for i in 0..10_000u64 {
            assert_eq!(index.get(i.wrapping_mul(SPREAD)), Some(i as u32));
        }
        assert_eq!(index.get(12345), None);
        assert_eq!(index.insert(0, 7), Some(0), "the first value stays");
    }

    #[test]
    fn slots_are_16_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), SLOT_BYTES);
    }

    #[test]
    fn digests_equal_in_their_low_96_bits_are_one_key() {
        let mut index: DigestIndex<KeyDigest> = DigestIndex::default();
        assert_eq!(index.insert(KeyDigest(7 | (1 << 100)), 1), None);
        assert_eq!(index.get(KeyDigest(7)), Some(1));
        assert_eq!(index.get(KeyDigest(7 | (1 << 95))), None);
    }

    #[test]
    fn a_mapped_index_works_like_a_heap_one_and_clones() {
        let entries = HUGE_PAGE_ARRAY_MIN_BYTES / SLOT_BYTES;
        let mut index: DigestIndex<u64> = DigestIndex::with_capacity(entries);
        assert!(matches!(index.slots.memory, SlotMemory::Mapped(_)));
        for i in 0..entries as u64 {
            assert_eq!(index.insert(i.wrapping_mul(SPREAD), i as u32), None);
        }
        let copy = index.clone();
        assert!(matches!(copy.slots.memory, SlotMemory::Mapped(_)));
        for i in 0..entries as u64 {
            assert_eq!(copy.get(i.wrapping_mul(SPREAD)), Some(i as u32));
        }
        assert_eq!(copy.get(1), None);
        assert_eq!(index.values().count(), entries);
    }

    #[test]
    fn an_empty_slot_is_zero_bytes() {
        assert_eq!(EMPTY_SLOT.to_bytes(), [0; SLOT_BYTES]);
        assert_eq!(Slot::from_bytes(&[0; SLOT_BYTES]), EMPTY_SLOT);
    }

    /// Past a presized, mapped array: growth moves slots a few per insert; at every step
    /// (checked at a sample of them) each key is found once, in whichever array holds it,
    /// a clone taken mid-move agrees, and the move ends before the next doubling.
    #[test]
    fn growing_moves_keys_a_few_per_insert_and_loses_none() {
        let presized = HUGE_PAGE_ARRAY_MIN_BYTES / SLOT_BYTES / 2;
        let mut index: DigestIndex<u64> = DigestIndex::with_capacity(presized);
        let key = |i: u64| (i + 1).wrapping_mul(SPREAD);
        let total = presized as u64 * 3;
        let mut saw_moving = false;
        for i in 0..total {
            assert_eq!(index.insert(key(i), i as u32), None);
            assert_eq!(
                index.insert(key(i), 0),
                Some(i as u32),
                "a key is held once"
            );
            if let Some(retiring) = index.retiring.as_deref() {
                assert!(retiring.cursor < retiring.slots.len());
                if !saw_moving && retiring.cursor > 0 {
                    saw_moving = true;
                    let copy = index.clone();
                    for j in (0..=i).step_by(97) {
                        assert_eq!(copy.get(key(j)), Some(j as u32), "clone mid-move, key {j}");
                    }
                    assert_eq!(copy.values().count(), i as usize + 1);
                    assert_eq!(copy.max_value(), Some(i as u32), "max mid-move");
                }
            }
            if i % 4099 == 0 {
                for j in (0..=i).step_by(13) {
                    assert_eq!(index.get(key(j)), Some(j as u32), "key {j} after {i}");
                }
            }
        }
        assert!(saw_moving, "the test grew the index");
        assert_eq!(index.len(), total as usize);
        assert_eq!(index.values().count(), total as usize);
        assert_eq!(index.max_value(), Some(total as u32 - 1));
        for i in 0..total {
            assert_eq!(index.get(key(i)), Some(i as u32));
        }
        assert_eq!(index.get(key(total)), None);
    }

    /// A provisioner whose memory is never ready before it is waited for: the index then
    /// grows exactly at its hard limit, whatever the machine's speed.
    #[derive(Debug)]
    struct MadeWhenWaitedFor(usize);

    impl PendingMemory for MadeWhenWaitedFor {
        fn is_ready(&self) -> bool {
            false
        }
        fn wait(self: Box<Self>) -> memmap2::MmapMut {
            faulted_in_mapping(self.0)
        }
    }

    fn made_when_waited_for(bytes: usize) -> Option<Box<dyn PendingMemory>> {
        Some(Box::new(MadeWhenWaitedFor(bytes)))
    }

    /// Installs [`made_when_waited_for`] for this test process, once; only these tests do.
    fn install_test_provisioner() {
        let _ = install_provisioner(made_when_waited_for);
        assert!(PROVISIONER.get().is_some());
    }

    /// With a provisioner, a mapped array past half full keeps taking inserts while its
    /// doubled array is on its way and switches to it at three quarters full at the latest
    /// (here exactly then); every key is found before, during and after the move.
    #[test]
    fn a_mapped_index_grows_into_a_provisioned_array_by_its_hard_limit() {
        install_test_provisioner();
        let presized = HUGE_PAGE_ARRAY_MIN_BYTES / SLOT_BYTES / 2;
        let mut index: DigestIndex<u64> = DigestIndex::with_capacity(presized);
        let first_slots = index.slots.len();
        let key = |i: u64| (i + 7).wrapping_mul(SPREAD);
        let mut i = 0u64;
        while index.slots.len() == first_slots {
            assert_eq!(index.insert(key(i), i as u32), None);
            i += 1;
            if index.slots.len() == first_slots && index.len() > index.capacity() {
                assert!(index.next.is_some(), "past half full, provisioning");
            }
            assert!(index.len() <= index.max_len());
            if i.is_multiple_of(1021) {
                for j in (0..i).step_by(7) {
                    assert_eq!(index.get(key(j)), Some(j as u32), "key {j} after {i}");
                }
            }
        }
        assert_eq!(
            index.len(),
            first_slots / 4 * HARD_LOAD_QUARTERS + 1,
            "grew at three quarters full"
        );
        assert!(index.next.is_none(), "the provisioned array is in use");
        // A copy taken mid-move holds every key too.
        let copy = index.clone();
        for j in 0..i {
            assert_eq!(index.get(key(j)), Some(j as u32));
            assert_eq!(copy.get(key(j)), Some(j as u32));
        }
        assert_eq!(index.get(key(i)), None);
        assert_eq!(index.max_value(), Some(i as u32 - 1));
        // The move ends after a 64th as many inserts as the old array has slots, long before
        // the new array is half full; nothing is lost by it.
        let total = i + (first_slots / MIGRATE_SLOTS_PER_INSERT) as u64;
        while i < total {
            assert_eq!(index.insert(key(i), i as u32), None);
            i += 1;
        }
        assert!(index.retiring.is_none(), "the move ended");
        assert_eq!(index.values().count(), total as usize);
        for j in 0..total {
            assert_eq!(index.get(key(j)), Some(j as u32));
        }
    }

    /// An index made for more entries later moves into the array for them (made at once
    /// without a provisioner, or when it arrives, at the hard limit at the latest) and makes
    /// no array in between; every key is found on the way.
    #[test]
    fn an_index_sized_for_later_moves_into_that_size_only() {
        let now = HUGE_PAGE_ARRAY_MIN_BYTES / SLOT_BYTES / 2;
        let later = now * 5;
        let mut index: DigestIndex<u64> = DigestIndex::with_capacity_eventually(now, later);
        assert!(index.eventual_capacity() >= later);
        let key = |i: u64| (i + 3).wrapping_mul(SPREAD);
        let mut sizes = vec![index.slots.len()];
        for i in 0..later as u64 {
            assert_eq!(index.insert(key(i), i as u32), None);
            if sizes.last() != Some(&index.slots.len()) {
                sizes.push(index.slots.len());
            }
            if i.is_multiple_of(40_009) {
                for j in (0..=i).step_by(11) {
                    assert_eq!(index.get(key(j)), Some(j as u32), "key {j} after {i}");
                }
            }
        }
        assert_eq!(*sizes.last().expect("a size"), slots_for(later));
        assert!(sizes.len() <= 2, "no array in between: {sizes:?}");
        assert_eq!(index.max_value(), Some(later as u32 - 1));
        assert_eq!(index.values().count(), later);
    }

    #[test]
    fn a_small_index_sized_for_later_is_made_at_that_size_at_once() {
        // A provisioner is for mapped arrays only.
        install_test_provisioner();
        let index: DigestIndex<u64> = DigestIndex::with_capacity_eventually(16, 1_000);
        assert!(index.next.is_none());
        assert_eq!(index.slots.len(), slots_for(1_000));
        let big = HUGE_PAGE_ARRAY_MIN_BYTES / SLOT_BYTES;
        let index: DigestIndex<u64> = DigestIndex::with_capacity_eventually(16, big);
        assert_eq!(index.next.as_ref().map(|n| n.len), Some(slots_for(big)));
        assert_eq!(index.slots.len(), slots_for(16));
    }

    #[test]
    fn presized_index_does_not_grow() {
        let mut index: DigestIndex<u64> = DigestIndex::with_capacity(1_000);
        let slots = index.slots.len();
        for i in 0..1_000u64 {
            index.insert(i, 1);
        }
        assert_eq!(index.slots.len(), slots);
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn the_empty_marker_is_not_a_value() {
        DigestIndex::<u64>::default().insert(1, EMPTY);
    }
}
