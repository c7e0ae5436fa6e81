//! Invalidation fences of one function, in process: what keeps a computation that started
//! before an `invalidate` (or `insert`, `invalidate_all`) from storing its older result after it.
//!
//! Per key shard a generation is bumped by `invalidate` / `insert`, and one for
//! `invalidate_all`. A computation snapshots them before it runs and stores its result only if
//! neither moved. For a store that answers at once (in memory) the check and the write happen
//! under the shard's lock, and so do the bump and the removal of an invalidation: either the
//! write comes first (and the invalidation removes it) or the check sees the bump (and nothing is
//! written), so no reader ever sees the older value after the invalidation returned. A store that
//! needs I/O (Redis) fences its writes itself with versioned records; for any other store a
//! write that raced with an invalidation is undone right after. A bump on a shard fences the
//! other keys of that shard too: at worst an extra recomputation, never a stale value.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

pub(crate) struct Fences {
    shards: Box<[AtomicU64]>,
    locks: Box<[Mutex<()>]>,
    all: AtomicU64,
    hasher: std::hash::RandomState,
}

/// The fence generations a computation started under.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct FenceSnapshot(u64, u64);

impl Fences {
    pub(crate) fn new() -> Self {
        Fences {
            shards: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            all: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }
    fn index<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }
    pub(crate) fn snapshot<Q: Hash + ?Sized>(&self, key: &Q) -> FenceSnapshot {
        FenceSnapshot(
            self.shards[self.index(key)].load(Ordering::Acquire),
            self.all.load(Ordering::Acquire),
        )
    }
    pub(crate) fn bump<Q: Hash + ?Sized>(&self, key: &Q) {
        self.shards[self.index(key)].fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
    /// The lock under which a key's fence check and write (or bump and removal) happen
    /// together. Held only around synchronous store calls: never across an await.
    pub(crate) fn guard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, ()> {
        self.locks[self.index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
    /// Every shard's lock (`invalidate_all`), in index order (the only order anyone takes
    /// several in, so no deadlock).
    pub(crate) fn guard_all(&self) -> Vec<MutexGuard<'_, ()>> {
        self.locks
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}
