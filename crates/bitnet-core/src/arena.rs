//! A reusable buffer arena for activations.
//!
//! Decoding runs the same shapes every token: buffers taken from the arena are given
//! back and handed out again, so after the first token nothing is allocated.

use crate::aligned::{AlignedVec, Pod};
use std::collections::HashMap;

/// A pool of aligned buffers keyed by length.
pub struct Arena<T: Pod> {
    free: HashMap<usize, Vec<AlignedVec<T>>>,
    allocations: usize,
}

impl<T: Pod> Default for Arena<T> {
    fn default() -> Self {
        Arena { free: HashMap::new(), allocations: 0 }
    }
}

impl<T: Pod> Arena<T> {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer of `len` elements: a reused one if available (contents unspecified),
    /// otherwise a fresh zeroed allocation.
    pub fn take(&mut self, len: usize) -> AlignedVec<T> {
        if let Some(b) = self.free.get_mut(&len).and_then(Vec::pop) {
            return b;
        }
        self.allocations += 1;
        AlignedVec::zeros(len)
    }

    /// Returns a buffer for reuse.
    pub fn give(&mut self, buf: AlignedVec<T>) {
        self.free.entry(buf.len()).or_default().push(buf);
    }

    /// How many fresh allocations `take` has made so far.
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// Total elements held in free buffers.
    pub fn free_elems(&self) -> usize {
        self.free.iter().map(|(len, v)| len * v.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_takes_allocate_nothing() {
        let mut a = Arena::<f32>::new();
        for step in 0..10 {
            let x = a.take(2560);
            let y = a.take(6912);
            let z = a.take(2560);
            a.give(x);
            a.give(y);
            a.give(z);
            if step == 0 {
                assert_eq!(a.allocations(), 3);
            }
        }
        assert_eq!(a.allocations(), 3);
        assert_eq!(a.free_elems(), 2560 * 2 + 6912);
    }
}
