//! The embedded default store: a bounded, concurrent in-process cache built on `quick_cache`.
//!
//! Why quick_cache: a hit is one sharded hash probe with no global lock and no background
//! maintenance, several times cheaper than moka's `get` (`cargo bench --bench hit_path`
//! measures both side by side; the README has the figures). Its CLOCK-Pro-like policy keeps hot keys
//! under scans, and it can bound by weight. Expiry is not delegated to the cache: the engine
//! decides with XFetch, and an expired entry stays readable so that a "serve stale" policy has
//! something to serve until the entry is evicted or replaced.
//!
//! Memory cost: per entry, the key, the value, 24 bytes of `delta`/`expiry`/`write_id`, a 4-byte namespace
//! id and quick_cache's own overhead (about 2 words per slot).

use super::contract::{
    LockOutcome, Lookup, Namespace, NamespaceRegistry, RefreshOutcome, Seen, Store, StoreError,
    Written,
};
use super::data_arc::DataArc;
use crate::entry::Entry;
use crate::error::ConfigError;
use crate::hot::Versions;
use quick_cache::{sync::Cache, Equivalent, Weighter};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// A key of one function. It hashes as the bare key: the namespace takes part in equality
/// only, so a hit costs no more hashing than quick_cache's own `get`. Equal keys of several
/// functions on one store share a hash and a probe sequence, which costs a lookup of such a key
/// one namespace comparison per other function holding it.
#[derive(Clone, PartialEq, Eq)]
struct MemKey<K> {
    ns: u32,
    key: K,
}

#[inline(always)]
fn hash_ns_key<Q: Hash + ?Sized, H: std::hash::Hasher>(_ns: u32, key: &Q, state: &mut H) {
    key.hash(state);
}

impl<K: Hash> Hash for MemKey<K> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_ns_key(self.ns, &self.key, state);
    }
}

/// A borrowed key for lookups, in any borrowed form `Q` of `K`: hashes exactly like [`MemKey`]
/// (`Borrow` promises `Q` hashes like `K`).
struct MemKeyRef<'a, Q: ?Sized> {
    ns: u32,
    key: &'a Q,
}

impl<Q: Hash + ?Sized> Hash for MemKeyRef<'_, Q> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_ns_key(self.ns, self.key, state);
    }
}

impl<K: Borrow<Q>, Q: Eq + ?Sized> Equivalent<MemKey<K>> for MemKeyRef<'_, Q> {
    #[inline]
    fn equivalent(&self, other: &MemKey<K>) -> bool {
        self.ns == other.ns && self.key == other.key.borrow()
    }
}

type WeightFn<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

struct MemWeighter<K, V>(Option<WeightFn<K, V>>);

impl<K, V> Clone for MemWeighter<K, V> {
    fn clone(&self) -> Self {
        MemWeighter(self.0.clone())
    }
}

impl<K, V> Weighter<MemKey<K>, Entry<V>> for MemWeighter<K, V> {
    fn weight(&self, key: &MemKey<K>, val: &Entry<V>) -> u64 {
        match &self.0 {
            Some(f) => f(&key.key, &val.value),
            None => 1,
        }
    }
}

struct Inner<K, V> {
    cache: Cache<MemKey<K>, Entry<V>, MemWeighter<K, V>>,
    names: NamespaceRegistry,
    /// Bumped after every write (see `hot`): the per-thread tiers of this store's functions
    /// check them on each hit.
    versions: Versions,
}

/// The embedded in-memory store, bounded by entry count or by weight.
///
/// Cloning is cheap and shares the cache. Several memoized functions may share one store: each
/// gets its own namespace, so equal keys of different functions never meet. Every function on one
/// `MemoryStore<K, V>` uses the same key and value types: the store is a typed quick_cache
/// (no boxing, no downcast on the hit path, which is what keeps a hit at one probe). Use one
/// store per type pair, or an enum value, when they differ. A `RedisStore` is not typed: one
/// store serves functions of any key and value types.
///
/// ```
/// use herdless::MemoryStore;
/// let by_count = MemoryStore::<String, String>::new(10_000).unwrap();
/// let by_bytes = MemoryStore::<String, String>::builder()
///     .weight_capacity(64 << 20)
///     .weigher(|k: &String, v: &String| (k.len() + v.len()) as u64)
///     .build()
///     .unwrap();
/// assert!(MemoryStore::<String, String>::new(0).is_err());
/// # drop((by_count, by_bytes));
/// ```
pub struct MemoryStore<K, V> {
    /// Points at the data, not at the counts: one instruction less per hit (see `DataArc`).
    inner: DataArc<Inner<K, V>>,
}

impl<K, V> Clone for MemoryStore<K, V> {
    fn clone(&self) -> Self {
        MemoryStore {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for MemoryStore<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.inner.cache.len())
            .finish()
    }
}

/// Configures a [`MemoryStore`]; see [`MemoryStore::builder`].
pub struct MemoryStoreBuilder<K, V> {
    capacity: Option<u64>,
    weight_capacity: Option<u64>,
    weigher: Option<WeightFn<K, V>>,
}

impl<K, V> std::fmt::Debug for MemoryStoreBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("capacity", &self.capacity)
            .field("weight_capacity", &self.weight_capacity)
            .field("weigher", &self.weigher.is_some())
            .finish()
    }
}

impl<K, V> MemoryStoreBuilder<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Bound by number of entries.
    pub fn capacity(mut self, entries: u64) -> Self {
        self.capacity = Some(entries);
        self
    }
    /// Bound by total weight (requires [`MemoryStoreBuilder::weigher`]).
    pub fn weight_capacity(mut self, weight: u64) -> Self {
        self.weight_capacity = Some(weight);
        self
    }
    /// The weight of one entry, for example its size in bytes.
    pub fn weigher(mut self, f: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(f));
        self
    }
    /// Builds the store, rejecting a zero capacity or a weight capacity without a weigher.
    pub fn build(self) -> Result<MemoryStore<K, V>, ConfigError> {
        let (items, weight, weigher) = match (self.capacity, self.weight_capacity, self.weigher) {
            (_, Some(_), None) => {
                return Err(ConfigError::new(
                    "weigher",
                    "a weight capacity needs a weigher",
                ))
            }
            (_, None, Some(_)) => {
                return Err(ConfigError::new(
                    "weight_capacity",
                    "a weigher needs a weight capacity",
                ))
            }
            (None, None, None) => {
                return Err(ConfigError::new("capacity", "set a capacity in entries"))
            }
            (Some(0), _, _) => {
                return Err(ConfigError::new("capacity", "must be at least 1 entry"))
            }
            (_, Some(0), _) => {
                return Err(ConfigError::new("weight_capacity", "must be at least 1"))
            }
            (Some(c), None, None) => (c, c, None),
            (items, Some(w), Some(f)) => (items.unwrap_or((w / 64).clamp(16, 1 << 20)), w, Some(f)),
        };
        Ok(MemoryStore {
            inner: DataArc::new(Inner {
                cache: Cache::with_weighter(items as usize, weight, MemWeighter(weigher)),
                names: NamespaceRegistry::default(),
                versions: Versions::default(),
            }),
        })
    }
}

impl<K, V> MemoryStore<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A store holding at most `capacity` entries.
    pub fn new(capacity: u64) -> Result<Self, ConfigError> {
        Self::builder().capacity(capacity).build()
    }
    /// A builder for weight-bounded stores.
    pub fn builder() -> MemoryStoreBuilder<K, V> {
        MemoryStoreBuilder {
            capacity: None,
            weight_capacity: None,
            weigher: None,
        }
    }
    /// Number of entries held (all namespaces, expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.inner.cache.len()
    }
    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.cache.len() == 0
    }
    /// Removes one key of one function.
    pub fn remove(&self, ns: &Namespace, key: &K) {
        self.inner.cache.remove(&MemKeyRef { ns: ns.id, key });
        self.inner.versions.bump(key);
    }
    #[inline(always)]
    fn lookup<Q>(&self, ns: &Namespace, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.cache.get(&MemKeyRef { ns: ns.id, key })
    }
}

impl<K, V> Store<K, V> for MemoryStore<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Lock = std::convert::Infallible;

    fn namespace(&self, name: &str) -> Namespace {
        self.inner.names.namespace(name)
    }

    #[inline(always)]
    fn versions(&self) -> Option<&Versions> {
        Some(&self.inner.versions)
    }

    #[inline(always)]
    fn get_now<Q>(&self, ns: &Namespace, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.lookup(ns, key) {
            Some(e) => Lookup::Found(e),
            None => Lookup::Missing,
        }
    }

    fn get(
        &self,
        ns: &Namespace,
        key: &K,
        _now: u64,
    ) -> impl std::future::Future<Output = Result<Option<Entry<V>>, StoreError>> + Send {
        std::future::ready(Ok(self.lookup(ns, key)))
    }

    fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        _ttl: Duration,
        _lock: Option<Self::Lock>,
    ) -> impl std::future::Future<Output = Result<Written, StoreError>> + Send {
        self.inner.cache.insert(
            MemKey {
                ns: ns.id,
                key: key.clone(),
            },
            entry,
        );
        self.inner.versions.bump(key);
        std::future::ready(Ok(Written::Stored))
    }

    fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        _lease: Duration,
        _max_hold: Duration,
        now: u64,
    ) -> impl std::future::Future<Output = Result<LockOutcome<V, Self::Lock>, StoreError>> + Send
    {
        let out = match self.lookup(ns, key) {
            Some(e) if e.expires_at > now => LockOutcome::Found(e),
            _ => LockOutcome::Local,
        };
        std::future::ready(Ok(out))
    }

    fn invalidate(
        &self,
        ns: &Namespace,
        key: &K,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.remove(ns, key);
        std::future::ready(Ok(()))
    }

    fn invalidate_all(
        &self,
        ns: &Namespace,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        // A scan of the cache, under its shard locks: invalidating a whole function is rare.
        let id = ns.id;
        self.inner.cache.retain(|k, _| k.ns != id);
        self.inner.versions.bump_all();
        std::future::ready(Ok(()))
    }

    fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        seen: Seen,
        _lease: Duration,
        _max_hold: Duration,
        _now: u64,
    ) -> impl std::future::Future<Output = Result<RefreshOutcome<Self::Lock>, StoreError>> + Send
    {
        // A newer entry means another refresh (or a hard miss) already replaced the one whose
        // XFetch draw fired: refreshing again would be a second run in the same cycle.
        let out = match self.lookup(ns, key) {
            // One process, one clock: the expiry the reader saw identifies the entry exactly.
            Some(e) if e.expires_at != seen.expires_at => RefreshOutcome::Skip,
            _ => RefreshOutcome::Local,
        };
        std::future::ready(Ok(out))
    }
}
