//! The store handle and its shared state (kept apart from `mod.rs`, which opens it, so that the
//! files implementing the store depend on this one and not on each other).

use super::cull::{Db, Limits, Meta};
use super::locks::Locks;
use super::record::HashKey;
use super::stats::DiskStats;
use crate::store::contract::NamespaceRegistry;
use heed::Env;
use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub(super) fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One open LMDB environment, shared by every handle of this process on the same directory
/// (LMDB must not be opened twice in one process; heed refuses it).
pub(super) struct SharedFile {
    pub(super) env: Env,
    pub(super) records: Db,
    pub(super) meta: Db,
    pub(super) hash_key: HashKey,
    /// Reader slots of dead processes that opening the file cleared.
    pub(super) stale_readers_cleared: u64,
}

pub(super) struct Inner {
    /// Keeps the environment open for as long as this handle lives.
    #[allow(dead_code)]
    pub(super) file: Arc<SharedFile>,
    pub(super) env: Env,
    pub(super) records: Db,
    pub(super) meta: Db,
    pub(super) hash_key: HashKey,
    pub(super) locks: Arc<Locks>,
    pub(super) stats: Arc<DiskStats>,
    pub(super) limits: Limits,
    pub(super) max_value_bytes: usize,
    pub(super) names: NamespaceRegistry,
    /// See [`wall_minus_engine`].
    pub(super) offset: i128,
    pub(super) warned_write: AtomicBool,
    pub(super) warned_decode: AtomicBool,
    /// This handle's presence byte (counted by other processes' `fleet_size`).
    pub(super) presence: Option<u64>,
    pub(super) fleet: Fleet,
    /// The per-thread tier's write versions, shared by the processes through the version file
    /// (`versions`); `None` if it could not be mapped: every hit then reads LMDB.
    pub(super) versions: Option<crate::hot::Versions>,
    /// Whether engines may serve from the per-thread tier (`DiskStoreBuilder::thread_tier`).
    pub(super) thread_tier: bool,
}

/// The number of open stores on the file (processes, in practice), counted from the presence
/// bytes at most once a second (256 `F_OFD_GETLK` calls, on the caller that finds it due).
#[derive(Debug, Default)]
pub(super) struct Fleet {
    /// Milliseconds since the Unix epoch of the last count, plus one (0 = never).
    pub(super) at: std::sync::atomic::AtomicU64,
    pub(super) count: std::sync::atomic::AtomicU64,
}

impl Fleet {
    pub(super) fn size(&self, locks: &Locks, me: bool) -> f64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now_ms = wall_now() / 1_000_000 + 1;
        let at = self.at.load(Relaxed);
        if now_ms.saturating_sub(at) >= 1000
            && self
                .at
                .compare_exchange(at, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            // GETLK does not report this handle's own byte.
            let n = locks.count_present() as u64 + u64::from(me);
            self.count.store(n.max(1), Relaxed);
        }
        self.count.load(Relaxed).max(1) as f64
    }
}

/// A store shared by the processes of one machine through one LMDB file (feature `disk`).
///
/// Like [`RedisStore`](crate::store::RedisStore) it is untyped: one store serves functions of
/// any `Hash` key and serde value types. Clones share everything; a second
/// [`DiskStore::open`] of the same directory in one process behaves like another process (its
/// locks exclude this one's).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herdless::{memoize_stampede, store::DiskStore};
/// use std::time::Duration;
/// let dir = std::env::temp_dir().join(format!("herdless-doc-disk-{}", std::process::id()));
/// let store = DiskStore::open(&dir)?;
/// let page = memoize_stampede(&store, Duration::from_secs(60))
///     .name("landing_page")
///     .build_blocking_infallible(|k: &String| format!("<html>{k}</html>"))?;
/// assert_eq!(page.get(&"home".to_string())?, "<html>home</html>");
/// # drop(page); drop(store); std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Clone)]
pub struct DiskStore {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.inner.stats.path)
            .field("max_bytes", &self.inner.limits.max_bytes)
            .field("max_entries", &self.inner.limits.max_entries)
            .finish()
    }
}

impl DiskStore {
    /// This store's counters.
    pub fn stats(&self) -> &DiskStats {
        &self.inner.stats
    }

    /// Records held (values and tombstones, all functions).
    pub fn len(&self) -> u64 {
        self.inner
            .env
            .read_txn()
            .and_then(|t| self.inner.records.len(&t))
            .unwrap_or(0)
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and records held, as counted for [`DiskStoreBuilder::max_bytes`](super::DiskStoreBuilder::max_bytes).
    pub fn bytes(&self) -> u64 {
        self.inner
            .env
            .read_txn()
            .and_then(|t| Meta::load(self.inner.meta, &t))
            .map(|m| m.bytes)
            .unwrap_or(0)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.inner.stats.path
    }
}
