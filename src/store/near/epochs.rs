//! Per-key-shard announcement counters (a read racing an announcement is not kept) and the
//! tier's counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters of one [`NearStore`](super::NearStore). Near hits are the memoized function's own
/// `hits` ([`StatsSnapshot`](crate::StatsSnapshot)): a hit from the near tier is the engine's
/// hit path, counted there without a shared cache line.
#[derive(Debug, Default)]
pub struct NearStats {
    /// Reads that went to Redis and found a value (then kept near).
    pub shared_hits: AtomicU64,
    /// Reads that went to Redis and found nothing.
    pub shared_misses: AtomicU64,
    /// Announcements received that dropped near copies (writes, releases, invalidations of one
    /// key; new generations of a function).
    pub invalidations_received: AtomicU64,
    /// Near entries not served because the channel was down and they were older than
    /// `max_stale` (re-validated against Redis instead): the staleness-bound fallback.
    pub stale_revalidations: AtomicU64,
    /// Times the whole tier was dropped because the subscription came back (messages may have
    /// been lost while it was down).
    pub resyncs: AtomicU64,
}

impl NearStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

const SHARDS: usize = 256;

/// Per-key-shard announcement counters, a counter for whole-tier drops, the function names this
/// tier serves, and whether the channel is healthy.
pub(crate) struct Epochs {
    shards: Box<[AtomicU64]>,
    all: AtomicU64,
    hasher: std::hash::RandomState,
    names: Mutex<HashMap<String, u32>>,
    /// The shared store's subscription state word (`changes << 1 | live`), raised with
    /// `fetch_max` so that a change that raced the tier's construction, or an older
    /// announcement handled late, never overwrites a newer state.
    state: AtomicU64,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Epochs {
            shards: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            all: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
            names: Mutex::new(HashMap::new()),
            state: AtomicU64::new(0),
        }
    }
    fn shard<K: Hash>(&self, ns: u32, key: &K) -> &AtomicU64 {
        &self.shards[self.hasher.hash_one((ns, key)) as usize % SHARDS]
    }
    /// The epoch a read of (ns, key) starts under.
    pub(crate) fn get<K: Hash>(&self, ns: u32, key: &K) -> u64 {
        self.shard(ns, key)
            .load(Ordering::Acquire)
            .wrapping_add(self.all.load(Ordering::Acquire))
    }
    pub(crate) fn bump<K: Hash>(&self, ns: u32, key: &K) {
        self.shard(ns, key).fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
    /// The whole-tier epoch: a near entry is served only under the one it was read under, so
    /// a whole-tier drop takes effect for every reader at once, before the entries are gone.
    #[inline]
    pub(crate) fn all(&self) -> u64 {
        self.all.load(Ordering::Acquire)
    }
    pub(crate) fn register(&self, name: &str, id: u32) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.insert(name.to_string(), id);
    }
    pub(crate) fn id(&self, name: &str) -> Option<u32> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.get(name).copied()
    }
    /// Takes the store's subscription state word if it is newer than the one held.
    pub(crate) fn observe(&self, state: u64) {
        self.state.fetch_max(state, Ordering::AcqRel);
    }
}
