//! The daemon's index [`Provisioner`]: a tranche index's doubled slot array is faulted in
//! on a helper thread, off the thread that holds the tranche (see
//! [`crate::core::digest_index::PendingMemory`] for why, with the measurements). The core only
//! asks for memory and asks whether it has arrived; the thread lives here, at the edge.

use std::thread::JoinHandle;

use memmap2::MmapMut;

use crate::core::digest_index::{PendingMemory, Provisioner, faulted_in_mapping};

/// What the daemon installs at start.
pub const PROVISIONER: Provisioner = on_a_helper_thread;

/// A mapping being faulted in on an `index-prefault` thread.
#[derive(Debug)]
struct OnAHelperThread(JoinHandle<MmapMut>);

impl PendingMemory for OnAHelperThread {
    fn is_ready(&self) -> bool {
        self.0.is_finished()
    }

    /// A panic of the helper (out of memory) is the waiting thread's.
    fn wait(self: Box<Self>) -> MmapMut {
        self.0
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Starts faulting in `bytes` of fresh memory on a new thread; `None` if no thread can be
/// started (the index then grows on the inserting thread, as without a provisioner). One
/// thread per doubling of one index: a few dozen over a tranche's life.
fn on_a_helper_thread(bytes: usize) -> Option<Box<dyn PendingMemory>> {
    std::thread::Builder::new()
        .name("index-prefault".into())
        .spawn(move || faulted_in_mapping(bytes))
        .ok()
        .map(|handle| Box::new(OnAHelperThread(handle)) as Box<dyn PendingMemory>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_thread_hands_back_zeroed_memory_of_the_size_asked() {
        let bytes = 4 << 20;
        let pending = on_a_helper_thread(bytes).expect("a thread starts");
        let map = pending.wait();
        assert_eq!(map.len(), bytes);
        assert!(map.iter().all(|b| *b == 0));
        let pending = on_a_helper_thread(bytes).expect("a thread starts");
        while !pending.is_ready() {
            std::thread::yield_now();
        }
        assert_eq!(pending.wait().len(), bytes);
    }
}
