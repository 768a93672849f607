//! A growable list kept in fixed-size chunks: a push never moves what is already there.
//!
//! A tranche keeps one status per voucher, millions of them. A `Vec` presized for 1 M that
//! grows to 10 M doubles four times: each doubling copies the whole list into a new array
//! whose pages the kernel zeroes on first touch, on the thread that replays the WAL (or, in a
//! release, under the tranche's lock). Here each chunk is written once and nothing moves; only
//! the first chunk grows (up to [`CHUNK_ENTRIES`]), so a small tranche stays small.

use std::ops::{Index, IndexMut};

/// Entries per chunk (2.5 MiB of 40-byte voucher statuses).
pub const CHUNK_ENTRIES: usize = 1 << 16;

#[derive(Clone, Debug)]
pub struct ChunkedVec<T> {
    /// Every chunk but the last holds exactly [`CHUNK_ENTRIES`] entries.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    /// An empty list whose first chunk has room for `entries` (at most one chunk).
    pub fn with_capacity(entries: usize) -> ChunkedVec<T> {
        ChunkedVec {
            chunks: vec![Vec::with_capacity(entries.min(CHUNK_ENTRIES))],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_ENTRIES => chunk.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() {
                    0
                } else {
                    CHUNK_ENTRIES
                });
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.chunks
            .get(index / CHUNK_ENTRIES)?
            .get(index % CHUNK_ENTRIES)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(index / CHUNK_ENTRIES)?
            .get_mut(index % CHUNK_ENTRIES)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;

    /// Panics when `index` is out of bounds, like a `Vec`.
    fn index(&self, index: usize) -> &T {
        let len = self.len;
        self.get(index)
            .unwrap_or_else(|| panic!("index {index} out of bounds (len {len})"))
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        let len = self.len;
        self.get_mut(index)
            .unwrap_or_else(|| panic!("index {index} out of bounds (len {len})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_read_back_across_chunks_in_order() {
        for mut list in [ChunkedVec::default(), ChunkedVec::with_capacity(100)] {
            let n = CHUNK_ENTRIES * 2 + 3;
            for i in 0..n {
                assert_eq!(list.len(), i);
                list.push(i);
            }
            assert_eq!(list.len(), n);
            assert!(!list.is_empty());
            assert!((0..n).all(|i| list[i] == i && list.get(i) == Some(&i)));
            assert_eq!(list.get(n), None);
            assert!(list.iter().copied().eq(0..n));
            list[CHUNK_ENTRIES] = 7;
            *list.get_mut(1).expect("in bounds") = 9;
            list.iter_mut().skip(n - 1).for_each(|v| *v = 11);
            assert_eq!(
                (list[1], list[CHUNK_ENTRIES], list[n - 1], list[n - 2]),
                (9, 7, 11, n - 2)
            );
            assert!(list.chunks[..2].iter().all(|c| c.len() == CHUNK_ENTRIES));
        }
    }

    #[test]
    fn empty_lists_hold_nothing() {
        let list: ChunkedVec<u8> = ChunkedVec::with_capacity(5);
        assert!(list.is_empty());
        assert_eq!(list.get(0), None);
        assert_eq!(list.iter().count(), 0);
        assert_eq!(ChunkedVec::<u8>::default().get(0), None);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn indexing_past_the_end_panics() {
        let mut list = ChunkedVec::default();
        list.push(1u8);
        let _ = list[1];
    }
}
