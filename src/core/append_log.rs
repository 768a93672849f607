//! An append-only list that can be shared cheaply.
//!
//! Vouchers are only ever appended. Storing them in fixed-size chunks, with
//! every full chunk frozen behind an `Arc`, lets a checkpoint take a consistent
//! copy of millions of vouchers in microseconds (a clone of the chunk
//! pointers plus the short open tail) and serialize it later without holding
//! the tranche's lock.

use std::sync::Arc;

/// Entries per chunk. A share copies at most this many entries.
pub const CHUNK_ENTRIES: usize = 4_096;

#[derive(Clone, Debug)]
pub struct AppendLog<T> {
    frozen: Vec<Arc<Vec<T>>>,
    tail: Vec<T>,
}

impl<T> Default for AppendLog<T> {
    fn default() -> Self {
        AppendLog {
            frozen: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<T: Clone> AppendLog<T> {
    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK_ENTRIES + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, value: T) {
        if self.tail.len() == CHUNK_ENTRIES {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK_ENTRIES));
            // `Arc::new`, not `Arc::from` into a slice: that would copy the whole chunk.
            self.frozen.push(Arc::new(full));
        }
        self.tail.push(value);
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        let chunk = index / CHUNK_ENTRIES;
        match self.frozen.get(chunk) {
            Some(c) => c.get(index % CHUNK_ENTRIES),
            None => self.tail.get(index - self.frozen.len() * CHUNK_ENTRIES),
        }
    }

    /// The last entry, if it is still open to change: `None` when the list is empty or
    /// its last entry was frozen (shared chunks never change).
    pub fn last_open_mut(&mut self) -> Option<&mut T> {
        self.tail.last_mut()
    }

    pub fn last(&self) -> Option<&T> {
        self.tail
            .last()
            .or_else(|| self.frozen.last().and_then(|c| c.last()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.frozen
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
    }

    /// A frozen copy of the current contents: shares every full chunk, copies the tail.
    pub fn share(&self) -> SharedLog<T> {
        SharedLog {
            frozen: self.frozen.clone(),
            tail: self.tail.clone(),
        }
    }
}

/// An immutable copy of an [`AppendLog`] at one moment.
#[derive(Clone, Debug)]
pub struct SharedLog<T> {
    frozen: Vec<Arc<Vec<T>>>,
    tail: Vec<T>,
}

impl<T> SharedLog<T> {
    pub fn get(&self, index: usize) -> Option<&T> {
        let chunk = index / CHUNK_ENTRIES;
        match self.frozen.get(chunk) {
            Some(c) => c.get(index % CHUNK_ENTRIES),
            None => self.tail.get(index - self.frozen.len() * CHUNK_ENTRIES),
        }
    }

    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK_ENTRIES + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.frozen
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_share_across_chunks() {
        let mut log = AppendLog::default();
        let n = CHUNK_ENTRIES * 2 + 7;
        for i in 0..n {
            log.push(i);
        }
        assert_eq!(log.len(), n);
        assert!((0..n).all(|i| log.get(i) == Some(&i)));
        assert_eq!(log.get(n), None);
        assert_eq!(log.last(), Some(&(n - 1)));
        let shared = log.share();
        log.push(n);
        assert_eq!(shared.len(), n, "a share does not see later pushes");
        assert!(shared.iter().copied().eq(0..n));
        assert!(log.iter().copied().eq(0..=n));
    }

    #[test]
    fn only_the_open_tail_changes() {
        let mut log = AppendLog::default();
        assert!(log.last_open_mut().is_none());
        assert_eq!(log.last(), None);
        for i in 0..CHUNK_ENTRIES {
            log.push(i);
        }
        *log.last_open_mut().expect("tail") = 7;
        let shared = log.share();
        log.push(1);
        // Pushing froze the full chunk: its last entry is shared now, the new one is open.
        *log.last_open_mut().expect("tail") = 9;
        assert_eq!(log.last(), Some(&9));
        assert_eq!(log.get(CHUNK_ENTRIES - 1), Some(&7));
        assert_eq!(shared.get(CHUNK_ENTRIES - 1), Some(&7));
        assert_eq!(shared.len(), CHUNK_ENTRIES);
    }
}
