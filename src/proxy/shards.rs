//! Values kept once per worker thread, each on a cache line of its own.
//!
//! A counter every request writes would otherwise bounce between cores:
//! each write by one worker takes the line from the others, and that miss
//! costs more than the count itself. With a part per worker, a worker
//! writes only lines no other core writes; readers (a scrape, a drain, the
//! dashboard) add the parts up, which is rare and may be slow.
//!
//! Workers are numbered from 0 ([`worker_number`]): those of the
//! HTTP listener, then those of the HTTPS one. A number past the end wraps
//! around; sharing a part only costs speed, since every part is atomic.

use crossbeam_utils::CachePadded;

/// Parts for a proxy with `workers` workers per listener.
pub fn parts(workers: usize) -> usize {
    2 * workers
}

/// The number of a listener's worker `i` (of `workers`).
pub(crate) fn worker_number(workers: usize, https: bool, i: usize) -> usize {
    if https { workers + i } else { i }
}

/// One part per worker.
#[derive(Debug)]
/// Each part on cache lines of its own (128 bytes on x86-64: a line and
/// the one next to it, which its cores fetch in pairs).
pub(crate) struct Shards<T>(Box<[CachePadded<T>]>);

impl<T> Shards<T> {
    /// `parts` parts (at least one), each made by `make`.
    pub fn new(parts: usize, mut make: impl FnMut() -> T) -> Shards<T> {
        Shards(
            (0..parts.max(1))
                .map(|_| CachePadded::new(make()))
                .collect(),
        )
    }

    /// Worker `worker`'s part.
    pub fn get(&self, worker: usize) -> &T {
        &self.0[worker % self.0.len()]
    }

    /// Every part, to add up.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &**p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn each_worker_writes_its_own_line_and_numbers_wrap() {
        let s = Shards::new(3, AtomicU64::default);
        for worker in [0, 1, 2, 4] {
            s.get(worker).fetch_add(1, Ordering::Relaxed);
        }
        let parts: Vec<u64> = s.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        assert_eq!(parts, [1, 2, 1]);
        let a = std::ptr::from_ref(s.get(0)) as usize;
        let b = std::ptr::from_ref(s.get(1)) as usize;
        assert!(
            b - a >= 128 && a.is_multiple_of(128),
            "parts at {a:#x} and {b:#x}"
        );
        assert_eq!(Shards::new(0, AtomicU64::default).iter().count(), 1);
    }
}
