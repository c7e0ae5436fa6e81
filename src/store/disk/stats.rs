//! The disk store's counters ([`DiskStats`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`DiskStore`](super::DiskStore) (all handles cloned from it share them).
///
/// Every field counts events in this process since the store was opened; the file's size is
/// read from the file system by [`DiskStats::file_size`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herdless::store::DiskStore;
/// use std::sync::atomic::Ordering;
/// let dir = std::env::temp_dir().join(format!("herdless-doc-stats-{}", std::process::id()));
/// let store = DiskStore::open(&dir)?;
/// assert_eq!(store.stats().writes.load(Ordering::Relaxed), 0);
/// assert!(store.stats().file_size() > 0);
/// # drop(store); std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Records read (hits and misses, every read transaction of a lookup).
    pub reads: AtomicU64,
    /// Records written (stored values, tombstones of invalidations).
    pub writes: AtomicU64,
    /// Waits for another process's (or another handle's) lock on a key.
    pub lock_waits: AtomicU64,
    /// Kernel wake-ups: a blocked lock request granted because the holder released or died.
    pub wakeups: AtomicU64,
    /// Live (unexpired) records removed to keep the file under its limits.
    pub evictions: AtomicU64,
    /// Expired records and old tombstones removed to make room.
    pub culls: AtomicU64,
    /// Writes that did not land because the key changed since their permit (fencing).
    pub fenced_writes: AtomicU64,
    /// Records that were not ours, truncated, or did not decode as the value type: misses.
    pub decode_errors: AtomicU64,
    /// Writes that failed (disk full, permissions, map full after culling): the value was
    /// returned but not stored (fail-open).
    pub write_errors: AtomicU64,
    /// LMDB reader slots left by processes that died (SIGKILL) while registered as readers,
    /// cleared when this process opened the file: a dead reader's slot could otherwise pin an
    /// old snapshot, so that freed pages are never reused and the file grows.
    pub stale_readers_cleared: AtomicU64,
    pub(super) path: std::path::PathBuf,
}

impl DiskStats {
    /// The size of the data file in bytes (0 if it cannot be read).
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(self.path.join("data.mdb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
