//! The near cache: a bounded in-process tier in front of a [`RedisStore`], so a fleet of
//! processes serves hits at memory speed and still behaves like one process.
//!
//! ```no_run
//! use herdless::{memoize_stampede, store::{NearStore, RedisStore}};
//! use std::time::Duration;
//! let shared = RedisStore::new("redis://127.0.0.1:6379/").unwrap();
//! let near = NearStore::builder(&shared).capacity(10_000).build::<String, String>().unwrap();
//! let page = memoize_stampede(&near, Duration::from_secs(1))
//!     .name("landing_page")
//!     .build_blocking_infallible(|k: &String| format!("<html>{k}</html>"))
//!     .unwrap();
//! println!("{}", page.get(&"home".to_string()).unwrap());
//! ```
//!
//! # How it works
//! - **Hits** are one probe of a typed `quick_cache` (the crate `MemoryStore` uses), answered on
//!   the caller's stack by [`Store::get_now`]: no I/O, no encoding, no clock read while the
//!   invalidation channel is healthy. A near entry carries the shared entry's expiry (rebuilt
//!   from Redis's remaining TTL, so hosts' clocks never meet) and δ, so the XFetch draw happens
//!   on near hits; its trigger tries the *fleet-wide* Redis lock without waiting, so one process
//!   refreshes per cycle for the whole fleet.
//! - **Misses** (nothing near, or an entry dropped by an announcement) read Redis once and keep
//!   what they read. Locks, tickets and writes go to Redis unchanged: single-flight and version
//!   fencing are the shared store's.
//! - **Coherence** rides on the messages the Redis store publishes anyway: every write, release
//!   and invalidation publishes on the entry's channel, `invalidate_all` on the function's. On
//!   such a message each process drops its near copy and re-reads the key once, on its next
//!   call. Announcing beats pushing the value: a message is a few dozen bytes whatever the value
//!   size, and only processes that call the key again pay one read.
//!
//! # How stale can a near hit be?
//! Each bound below is checked by a test on a real redis-server (`tests/near_cache.rs`,
//! `tests/coherence_faults.rs`).
//! - **Subscription healthy:** a near hit may be older than the shared value by one message
//!   delay (the time from the write's or invalidation's return in one process to the message's
//!   arrival in another: under a few milliseconds on one host; `benches/redis_path.rs`
//!   `near_invalidate_propagation` measures it). A read racing an announcement is not kept: every
//!   entry carries the epochs it was read under (its key's and the whole tier's), and an
//!   announcement marks stale first (generation copy, then epochs), then drops, and the next call
//!   re-reads. This process's own `invalidate`, `insert` and `invalidate_all` mark stale before
//!   and again after the shared operation.
//! - **Subscription down** (the subscriber's connection killed, Redis restarting, an ACL that
//!   refuses this process channels): a near entry is served only until
//!   [`NearStoreBuilder::max_stale`] (default 1 s) after it was read from Redis; after that each
//!   call re-validates it against Redis. Messages lost meanwhile cannot matter beyond that bound.
//! - **Subscription silently dead** (a paused server, a middlebox that drops the connection
//!   without a FIN): the store PINGs its subscription every quarter of `max_stale` (at most every
//!   second). An answered PING vouches that every announcement published before it was sent has
//!   been handled; a near entry older than `max_stale` is served only while such a PING is
//!   younger than `max_stale`, so `max_stale` holds from the moment the channel goes silent, not
//!   from when the silence is noticed. Without an answer within a second the subscription is
//!   given up and re-made; a message backlog older than 1 s counts as a failure too (resync).
//! - **A writer refused channels** (its ACL, or a `PUBLISH` that fails): the refusal raises a
//!   shared marker key that every store polls every half of its near tiers' `max_stale` (at
//!   most every second); on a change each near tier drops what it holds, so `max_stale` holds
//!   for such a write too (checked by the coherence checker's ACL case).
//! - **After the subscription comes back** the whole near tier is dropped, because messages may
//!   have been lost while it was down.
//! - **Redis down:** near entries serve until their own expiry (fail-open, as with any store),
//!   then calls compute locally, single-flight in the process.

mod coherence;
mod epochs;
mod tier;

use crate::entry::Entry;
use crate::error::ConfigError;
use crate::store::contract::{
    LockOutcome, Lookup, Namespace, RefreshOutcome, Seen, Store, StoreError, Written,
};
use crate::store::redis::{HeldLock, RedisStore};
use crate::wait::WaitMode;
use epochs::Epochs;
pub use epochs::NearStats;
use quick_cache::sync::Cache;
use serde::{de::DeserializeOwned, Serialize};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tier::{Inner, NearEntry, NearKey, NearKeyRef};

/// Configures a [`NearStore`]; see [`NearStore::builder`].
///
/// ```
/// use herdless::store::{NearStore, RedisStore};
/// use std::time::Duration;
/// let shared = RedisStore::new("redis://127.0.0.1:6379/").unwrap(); // lazy: no I/O yet
/// let near = NearStore::builder(&shared)
///     .capacity(1000)
///     .max_stale(Duration::from_millis(500))
///     .build::<String, u64>()
///     .unwrap();
/// assert!(near.is_empty());
/// assert_eq!(
///     NearStore::builder(&shared).capacity(0).build::<String, u64>().unwrap_err().field(),
///     "capacity"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct NearStoreBuilder {
    shared: RedisStore,
    capacity: usize,
    max_stale: Duration,
}

impl NearStoreBuilder {
    /// How many entries the near tier keeps (default 10 000; least useful ones evicted).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }
    /// How long a near entry may be served after it was read from Redis while the invalidation
    /// channel is down (default 1 s). While it is healthy, entries serve until their expiry.
    pub fn max_stale(mut self, d: Duration) -> Self {
        self.max_stale = d;
        self
    }
    /// Builds the tier (no I/O); invalid settings are rejected, naming the field.
    pub fn build<K, V>(self) -> Result<NearStore<K, V>, ConfigError>
    where
        K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        if self.max_stale.is_zero() {
            return Err(ConfigError::new(
                "max_stale",
                "must be positive (a zero bound would re-read Redis on every call while the \
                 channel is down; use the RedisStore directly for that)",
            ));
        }
        let inner = Arc::new(Inner {
            shared: self.shared.clone(),
            local: Cache::new(self.capacity),
            epochs: Epochs::new(),
            max_stale: self.max_stale,
            max_stale_ns: crate::clock::saturating_nanos(self.max_stale),
            stats: Arc::default(),
            tap: std::sync::OnceLock::new(),
        });
        coherence::subscribe(&inner);
        Ok(NearStore { inner })
    }
}

/// A bounded in-process tier over a [`RedisStore`]: see the [module docs](self) for how it
/// stays coherent and how stale a near hit can be.
///
/// Why a typed tier over the shared store, not an option of `RedisStore`: a `RedisStore` is
/// untyped (one store serves functions of any key and value types), while a near hit must be
/// one typed probe, with no encoding and no boxing. A `NearStore<K, V>` gives that, and several
/// near tiers of different types share one Redis connection and subscription.
pub struct NearStore<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for NearStore<K, V> {
    fn clone(&self) -> Self {
        NearStore {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for NearStore<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearStore")
            .field("shared", &self.inner.shared)
            .field("entries", &self.inner.local.len())
            .field("max_stale", &self.inner.max_stale)
            .finish()
    }
}

impl NearStore<(), ()> {
    /// A builder for a near tier over `shared`.
    pub fn builder(shared: &RedisStore) -> NearStoreBuilder {
        NearStoreBuilder {
            shared: shared.clone(),
            capacity: 10_000,
            max_stale: Duration::from_secs(1),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> NearStore<K, V> {
    /// This tier's counters.
    pub fn stats(&self) -> &NearStats {
        &self.inner.stats
    }
    /// The shared store behind this tier.
    pub fn shared(&self) -> &RedisStore {
        &self.inner.shared
    }
    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.local.len()
    }
    /// True when the tier holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.local.is_empty()
    }
}

impl<K, V> NearStore<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Keeps what was read from Redis, unless an announcement for the key arrived since
    /// `epoch` was taken (the read may predate it).
    /// `read_at` is when the read was *sent*: what it returned is at least that fresh (stamping
    /// the reply's arrival would let a slow read's older value count as newer than it is).
    fn keep(&self, ns: &Namespace, key: &K, epoch: (u64, u64), read_at: u64, entry: &Entry<V>) {
        let (epoch, all) = epoch;
        if self.inner.epochs.get(ns.id, key) == epoch && self.inner.epochs.all() == all {
            self.inner.local.insert(
                NearKey {
                    ns: ns.id,
                    key: key.clone(),
                },
                NearEntry {
                    entry: entry.clone(),
                    read_at,
                    all,
                },
            );
            // An announcement between the check and the insert: undo.
            if self.inner.epochs.get(ns.id, key) != epoch {
                self.forget(ns.id, key);
            }
        }
    }

    fn forget(&self, ns: u32, key: &K) {
        self.inner.local.remove(&NearKeyRef { ns, key });
    }

    /// The epochs a read of (ns, key) starts under: the key's and the whole tier's.
    fn epoch(&self, ns: u32, key: &K) -> (u64, u64) {
        (self.inner.epochs.get(ns, key), self.inner.epochs.all())
    }

    /// Marks (ns, key) stale, then drops it: a read already under way is not kept.
    fn stale(&self, ns: u32, key: &K) {
        self.inner.epochs.bump(ns, key);
        self.forget(ns, key);
    }

    /// Marks the whole tier stale, then drops function `ns`'s entries.
    fn stale_all(&self, ns: u32) {
        self.inner.epochs.bump_all();
        self.inner.local.retain(|k, _| k.ns != ns);
    }
}

impl<K, V> Store<K, V> for NearStore<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Lock = HeldLock;

    fn namespace(&self, name: &str) -> Namespace {
        let ns = Store::<K, V>::namespace(&self.inner.shared, name);
        self.inner.epochs.register(name, ns.id);
        ns
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn fleet_size(&self) -> f64 {
        Store::<K, V>::fleet_size(&self.inner.shared)
    }

    #[inline]
    fn get_now<Q>(&self, ns: &Namespace, key: &Q) -> Lookup<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.inner.local.get(&NearKeyRef { ns: ns.id, key }) {
            Some(near) => {
                if near.all != self.inner.epochs.all() {
                    // Read before a whole-tier drop that has not reached this entry yet.
                    return Lookup::NotLocal;
                }
                // The coarse horizon is an upper bound of the time (u64::MAX while untrusted),
                // so ages come out at least as large as they are: one load, no clock read.
                let now = crate::clock::coarse().horizon();
                let max = self.inner.max_stale_ns;
                if now.saturating_sub(near.read_at) > max
                    && self.inner.shared.verified_age(now) > max
                {
                    // Neither the read nor the channel vouches for the last `max_stale`: the
                    // channel is down or silent. Re-validate against Redis.
                    NearStats::inc(&self.inner.stats.stale_revalidations);
                    return Lookup::NotLocal;
                }
                Lookup::Found(near.entry)
            }
            None => Lookup::NotLocal,
        }
    }

    async fn get(&self, ns: &Namespace, key: &K, now: u64) -> Result<Option<Entry<V>>, StoreError> {
        let epoch = self.epoch(ns.id, key);
        let sent = crate::clock::coarse().now();
        let got = self.inner.shared.get(ns, key, now).await;
        match &got {
            Ok(Some(e)) => {
                NearStats::inc(&self.inner.stats.shared_hits);
                self.keep(ns, key, epoch, sent, e);
            }
            Ok(None) => NearStats::inc(&self.inner.stats.shared_misses),
            Err(_) => {
                // Redis is failing: a near entry (even one past the staleness bound) serves
                // until its own expiry, as the engine would serve it from any store.
                if let Some(near) = self.inner.local.get(&NearKeyRef { ns: ns.id, key }) {
                    if near.entry.expires_at > now {
                        return Ok(Some(near.entry));
                    }
                }
            }
        }
        got
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        ttl: Duration,
        lock: Option<HeldLock>,
    ) -> Result<Written, StoreError> {
        // Not kept near: the write's own announcement drops every near copy, this process's
        // included, and the next call re-reads it once. Marked stale again once the write
        // is done: a read of this process that overlapped it is not kept either.
        self.stale(ns.id, key);
        let out = self.inner.shared.set(ns, key, entry, ttl, lock).await;
        self.stale(ns.id, key);
        out
    }

    async fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<LockOutcome<V, HeldLock>, StoreError> {
        let epoch = self.epoch(ns.id, key);
        let sent = crate::clock::coarse().now();
        let out = self
            .inner
            .shared
            .lock_or_get(ns, key, lease, max_hold, now)
            .await?;
        if let LockOutcome::Found(e) = &out {
            self.keep(ns, key, epoch, sent, e);
        }
        Ok(out)
    }

    async fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        seen: Seen,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<RefreshOutcome<HeldLock>, StoreError> {
        Store::<K, V>::try_lock_refresh(&self.inner.shared, ns, key, seen, lease, max_hold, now)
            .await
    }

    async fn write_ticket(&self, ns: &Namespace, key: &K) -> Result<Option<HeldLock>, StoreError> {
        Store::<K, V>::write_ticket(&self.inner.shared, ns, key).await
    }

    async fn invalidate(&self, ns: &Namespace, key: &K) -> Result<(), StoreError> {
        // Mark stale and drop before (no new near hit of the old value) and again after the
        // shared operation (a read of this process that overlapped it is not kept).
        self.stale(ns.id, key);
        let out = Store::<K, V>::invalidate(&self.inner.shared, ns, key).await;
        self.stale(ns.id, key);
        out
    }

    async fn invalidate_all(&self, ns: &Namespace) -> Result<(), StoreError> {
        self.stale_all(ns.id);
        let out = Store::<K, V>::invalidate_all(&self.inner.shared, ns).await;
        self.stale_all(ns.id);
        out
    }

    async fn wait_for_value(
        &self,
        ns: &Namespace,
        key: &K,
        max: Duration,
        mode: WaitMode,
    ) -> Result<(), StoreError> {
        Store::<K, V>::wait_for_value(&self.inner.shared, ns, key, max, mode).await
    }
}
