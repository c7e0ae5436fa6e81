//! Where entries live: the [`Store`] trait and its implementations.
//!
//! A store keeps [`Entry`] records under a namespace (one per memoized function) and, if it is
//! shared between processes, also coordinates who computes a key ([`LockOutcome`]). The in-process
//! [`MemoryStore`] answers synchronously and leaves coordination to the engine's in-process
//! single-flight; a remote store (Redis) adds a distributed lock on top.

pub mod memory;
pub mod redis;

use crate::entry::Entry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{HeldLock, RedisGuard, RedisLock, RedisStore, RedisStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};

/// A memoized function's private part of a store, resolved once at build time.
///
/// ```
/// use herdless::{MemoryStore, Store};
/// let store = MemoryStore::<String, u32>::new(10).unwrap();
/// let a = Store::<String, u32>::namespace(&store, "a");
/// assert_eq!(a.name(), "a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub(crate) id: u32,
    pub(crate) name: Arc<str>,
}

impl Namespace {
    /// Builds a namespace; stores call this from [`Store::namespace`].
    pub fn new(id: u32, name: &str) -> Self {
        Namespace {
            id,
            name: name.into(),
        }
    }
    /// The function name this namespace belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// A store-assigned number, unique per name within one store.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A store operation failed (I/O, timeout, open circuit). The engine fails open: it counts the
/// error and computes locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store error: {}", self.0)
    }
}
impl std::error::Error for StoreError {}

/// What a hard-miss leader learns when it asks the store for the key's lock.
#[derive(Debug)]
pub enum LockOutcome<V, L> {
    /// This caller holds the (distributed) lock and must compute, then write with the lock.
    Acquired(L),
    /// A value was found after all (written since the first read): no computation needed.
    Found(Entry<V>),
    /// Another process holds the lock: wait for its value.
    Busy,
    /// The store does not coordinate across processes; in-process single-flight is enough.
    Local,
}

/// What a background refresh learns when it tries the lock without waiting.
#[derive(Debug)]
pub enum RefreshOutcome<L> {
    /// This process refreshes, holding the distributed lock.
    Acquired(L),
    /// No distributed lock exists; the in-process refresh slot already made this caller unique.
    Local,
    /// Someone else refreshes (or already did): keep serving the current value.
    Skip,
}

/// Whether a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The entry is stored.
    Stored,
    /// The lock was lost before the write: the store kept the newer value (fencing).
    Fenced,
}

/// A place to keep entries, shared by any number of memoized functions.
///
/// Methods return futures so that remote stores fit; [`Store::get_now`] lets an in-memory store
/// answer on the caller's stack, which is what keeps a hit at a few tens of nanoseconds.
///
/// ```
/// use herdless::{Entry, MemoryStore, Store};
/// let store = MemoryStore::<u32, &'static str>::new(10).unwrap();
/// let ns = store.namespace("greeting");
/// let e = Entry { value: "hi", delta_us: 1, expires_at: u64::MAX };
/// futures::executor::block_on(store.set(&ns, &1, e.clone(), std::time::Duration::from_secs(1), None)).unwrap();
/// assert_eq!(store.get_now(&ns, &1), Some(Some(e)));
/// ```
pub trait Store<K, V>: Clone + Send + Sync + 'static {
    /// A held distributed lock (dropping it releases the lock in the background).
    type Lock: Send + Sync + 'static;

    /// The namespace for a function name; the same name always gives the same namespace.
    fn namespace(&self, name: &str) -> Namespace;

    /// True when other processes share this store (their callers then also trigger XFetch
    /// refreshes of the same keys, which automatic β takes into account).
    fn is_shared(&self) -> bool {
        false
    }

    /// A lookup that needs no I/O: `None` if this store cannot answer synchronously.
    fn get_now(&self, ns: &Namespace, key: &K) -> Option<Option<Entry<V>>> {
        let _ = (ns, key);
        None
    }

    /// Reads an entry; `now` is the engine clock, used to rebuild `expires_at`.
    fn get(
        &self,
        ns: &Namespace,
        key: &K,
        now: u64,
    ) -> impl Future<Output = Result<Option<Entry<V>>, StoreError>> + Send;

    /// Writes an entry that lives for `ttl`. With `lock`, the write happens only if the lock is
    /// still held, and releases it and wakes waiters in the same step.
    fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        ttl: Duration,
        lock: Option<Self::Lock>,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// For a hard-miss leader: take the key's lock, or find the value that just landed. A lock
    /// is taken for `lease` and renewed while held, for at most `max_hold` in all.
    fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<LockOutcome<V, Self::Lock>, StoreError>> + Send;

    /// For an early refresh: take the lock without waiting, unless someone replaced the entry
    /// that expired at `seen_expires_at` or holds the lock.
    fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        seen_expires_at: u64,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<RefreshOutcome<Self::Lock>, StoreError>> + Send;

    /// Waits up to `max` for another process's lock holder to publish the key (or for a hint
    /// that it is worth asking again). The engine then asks [`Store::lock_or_get`] again.
    fn wait_for_value(
        &self,
        ns: &Namespace,
        key: &K,
        max: Duration,
        mode: crate::lock::WaitMode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (ns, key, max, mode);
        async { Ok(()) }
    }
}
