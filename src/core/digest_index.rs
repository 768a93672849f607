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
//! Linear probing at a load factor of at most one half: a lookup that misses, the common
//! case on a fresh claim, reads about 2.5 consecutive slots, nearly always in one or two
//! cache lines. The slot array doubles when it would pass the load factor.
//!
//! Invariant: at least one slot is always empty (load ≤ 1/2), so every probe ends.
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

const EMPTY_SLOT: Slot = Slot {
    key_low: 0,
    key_high: 0,
    value: EMPTY,
};

impl Slot {
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
            value: u32::from_ne_bytes([v0, v1, v2, v3]),
        }
    }

    fn to_bytes(self) -> [u8; SLOT_BYTES] {
        let mut out = [0; SLOT_BYTES];
        out[..8].copy_from_slice(&self.key_low.to_ne_bytes());
        out[8..12].copy_from_slice(&self.key_high.to_ne_bytes());
        out[12..].copy_from_slice(&self.value.to_ne_bytes());
        out
    }

    fn holds(&self, (low, high): (u64, u32)) -> bool {
        self.key_low == low && self.key_high == high
    }
}

/// The home slot of a stored key in an array of `2^bits` slots.
fn home_of((low, high): (u64, u32), bits: u32) -> usize {
    ((low ^ u64::from(high).rotate_left(32)).wrapping_mul(SPREAD) >> (u64::BITS - bits)) as usize
}

#[derive(Clone, Debug)]
pub struct DigestIndex<K: IndexKey> {
    slots: SlotArray,
    /// `log2(slots.len())`.
    bits: u32,
    len: usize,
    _key: std::marker::PhantomData<K>,
}

impl<K: IndexKey> Default for DigestIndex<K> {
    fn default() -> Self {
        DigestIndex::with_capacity(0)
    }
}

impl<K: IndexKey> DigestIndex<K> {
    /// An index that holds `entries` without growing. The slot array is written in full
    /// here (every slot is initialised to empty), which also faults its pages in.
    pub fn with_capacity(entries: usize) -> DigestIndex<K> {
        let slots = entries
            .saturating_mul(2)
            .max(MIN_SLOTS)
            .checked_next_power_of_two()
            .expect("index capacity fits usize");
        DigestIndex {
            slots: SlotArray::empty(slots, PageSize::Huge),
            bits: slots.trailing_zeros(),
            len: 0,
            _key: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries it can hold before the slot array doubles.
    pub fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    fn home(&self, key: K) -> usize {
        home_of(key.stored(), self.bits)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: K) -> usize {
        self.find_stored(key.stored())
    }

    fn find_stored(&self, stored: (u64, u32)) -> usize {
        let mask = self.mask();
        let mut i = home_of(stored, self.bits);
        loop {
            let slot = self.slots.get(i);
            if slot.value == EMPTY || slot.holds(stored) {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    pub fn get(&self, key: K) -> Option<u32> {
        let slot = self.slots.get(self.find(key));
        (slot.value != EMPTY).then_some(slot.value)
    }

    pub fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `key → value` if `key` is absent; returns the value already there otherwise
    /// (and changes nothing), like `HashMap::insert` without the overwrite.
    pub fn insert(&mut self, key: K, value: u32) -> Option<u32> {
        assert!(value != EMPTY, "index value {value} is reserved");
        let at = self.find(key);
        let found = self.slots.get(at).value;
        if found != EMPTY {
            return Some(found);
        }
        if self.len + 1 > self.capacity() {
            self.grow();
            let at = self.find(key);
            self.put(at, key, value);
        } else {
            self.put(at, key, value);
        }
        None
    }

    fn put(&mut self, at: usize, key: K, value: u32) {
        self.put_stored(at, key.stored(), value);
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
        self.len += 1;
    }

    fn grow(&mut self) {
        let doubled = SlotArray::empty(self.slots.len() * 2, PageSize::Small);
        let old = std::mem::replace(&mut self.slots, doubled);
        self.bits += 1;
        self.len = 0;
        for slot in old.iter().filter(|s| s.value != EMPTY) {
            let stored = (slot.key_low, slot.key_high);
            let at = self.find_stored(stored);
            self.put_stored(at, stored, slot.value);
        }
    }

    /// Loads the home slot of each key and returns a value derived from them, to be
    /// passed to `std::hint::black_box`. The loads are independent, so the CPU keeps many
    /// cache misses in flight at once; the lookups that follow then hit the cache. This is
    /// a prefetch in safe code.
    pub fn touch(&self, keys: impl IntoIterator<Item = K>) -> u32 {
        keys.into_iter()
            .fold(0, |acc, key| acc ^ self.slots.get(self.home(key)).value)
    }

    /// Every value, in slot order.
    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.value != EMPTY)
            .map(|s| s.value)
    }
}

/// Size of one slot in memory.
const SLOT_BYTES: usize = 16;
/// Slot arrays at least this big live in their own anonymous mapping that asks the kernel
/// for transparent huge pages (`MADV_HUGEPAGE`). A big tranche's index is hundreds of times
/// larger than what the TLB covers with 4 KiB pages, so every probe of the release burst
/// would otherwise also pay a page walk; on this VM the walks are nested (guest and host).
/// Measured on `cargo bench --bench claim_decision` (issue path): 1.11 → 1.36 M claims/s.
/// Smaller arrays stay on the heap, where a mapping of their own would waste most of a page.
const HUGE_PAGE_ARRAY_MIN_BYTES: usize = 2 << 20;

/// Which pages a slot array asks for.
///
/// Huge pages only for the array sized when the tranche is defined (an admin call, before
/// the release): on this VM a fresh huge page is often memory the host has to hand back
/// first, and a doubling during the release burst (a tranche past its presized size) took
/// ~370 ms under the tranche lock with them against well under 100 ms without. A grown
/// array is small pages, as every array was before.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PageSize {
    Huge,
    Small,
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
    /// `len` empty slots, every byte written now (which also faults every page in, so the
    /// release burst takes no first-touch faults on it).
    fn empty(len: usize, pages: PageSize) -> SlotArray {
        let mut array = SlotArray::uninitialised(len, pages);
        let empty = EMPTY_SLOT.to_bytes();
        for slot in array.bytes_mut().chunks_exact_mut(SLOT_BYTES) {
            slot.copy_from_slice(&empty);
        }
        array
    }

    /// `len` slots whose contents are zero (not yet valid: the caller writes every one).
    fn uninitialised(len: usize, pages: PageSize) -> SlotArray {
        let bytes = len.checked_mul(SLOT_BYTES).expect("slot array fits usize");
        let memory = if pages == PageSize::Huge && bytes >= HUGE_PAGE_ARRAY_MIN_BYTES {
            match memmap2::MmapOptions::new().len(bytes).map_anon() {
                Ok(map) => {
                    // Advice only: without THP (or on an old kernel) it is 4 KiB pages as before.
                    let _ = map.advise(memmap2::Advice::HugePage);
                    SlotMemory::Mapped(map)
                }
                // Out of address space or memory: the same failure the heap would report.
                Err(e) => panic!("cannot map a {bytes}-byte index: {e}"),
            }
        } else {
            SlotMemory::Heap(vec![0; bytes].into_boxed_slice())
        };
        SlotArray { memory, len }
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

    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.bytes()
            .chunks_exact(SLOT_BYTES)
            .map(|b| Slot::from_bytes(b.try_into().expect("chunks are 16 bytes")))
    }
}

impl Clone for SlotArray {
    fn clone(&self) -> SlotArray {
        let pages = match self.memory {
            SlotMemory::Heap(_) => PageSize::Small,
            SlotMemory::Mapped(_) => PageSize::Huge,
        };
        let mut copy = SlotArray::uninitialised(self.len, pages);
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
