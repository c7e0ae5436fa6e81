//! The blocking facade: memoized functions and barriers for plain threads, no runtime needed.
//!
//! It is thin on purpose. A hit runs the same synchronous fast path as the async facade; anything
//! else polls the shared engine's slow path to completion on the calling thread
//! (a small nesting-safe `block_on`), where waiting parks the thread instead of awaiting a timer.

use crate::engine::{owned_or_same, Engine, Probe};
use crate::error::Error;
use crate::layer::BlockingLayer;
use crate::miss;
use crate::ops;
use crate::stats::StatsSnapshot;
use crate::store::contract::{Lookup, Store, StoreError};
use crate::wait::{block_on, Contention};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// A memoized synchronous function. Cheap to clone; clones share everything.
///
/// ```
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<String, String>::new(1000).unwrap();
/// let page = memoize_stampede(&store, Duration::from_secs(1))
///     .name("landing_page")
///     .build_blocking_infallible(|k: &String| format!("<html>{k}</html>"))
///     .unwrap();
/// let threads: Vec<_> = (0..4)
///     .map(|_| {
///         let page = page.clone();
///         std::thread::spawn(move || page.get(&"home".to_string()).unwrap())
///     })
///     .collect();
/// for t in threads {
///     assert_eq!(t.join().unwrap(), "<html>home</html>");
/// }
/// assert_eq!(page.stats().computations, 1);
/// ```
pub struct BlockingMemoized<K, V, E, S> {
    engine: Arc<Engine<K, V, E, S>>,
}

impl<K, V, E, S> std::fmt::Debug for BlockingMemoized<K, V, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.engine.describe(f, "BlockingMemoized")
    }
}

impl<K, V, E, S> BlockingMemoized<K, V, E, S> {
    /// The engine this facade calls (shared with the batch facade built on it).
    pub(crate) fn engine(&self) -> &Arc<Engine<K, V, E, S>> {
        &self.engine
    }
}

impl<K, V, E, S> Clone for BlockingMemoized<K, V, E, S> {
    fn clone(&self) -> Self {
        BlockingMemoized {
            engine: self.engine.clone(),
        }
    }
}

impl<K, V, E, S> BlockingMemoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(engine: Arc<Engine<K, V, E, S>>) -> Self {
        BlockingMemoized { engine }
    }

    /// The value for `key`, under the function's contention policy.
    ///
    /// `key` may be any borrowed form of `K` (`&str` for `String`, `&[u8]` for `Vec<u8>`): a hit
    /// looks it up as it is, without building a `K`; a miss makes one owned copy.
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<String, usize>::new(100).unwrap();
    /// let len = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_blocking_infallible(|k: &String| k.len())
    ///     .unwrap();
    /// assert_eq!(len.get("bob").unwrap(), 3); // &str for a String key
    /// assert_eq!(len.get(&"bob".to_string()).unwrap(), 3); // the same entry
    /// assert_eq!(len.stats().computations, 1);
    /// ```
    #[inline(always)]
    pub fn get<Q>(&self, key: &Q) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        self.get_under(key, None)
    }

    /// Runs `f` on the value for `key` without cloning it, with the same miss, refresh and
    /// contention behaviour as [`BlockingMemoized::get`].
    ///
    /// Why: a hit served from the calling thread's tier writes nothing another core reads,
    /// but `get` then clones the value, and cloning an `Arc<T>` writes its shared count: on one
    /// hot key every core writes that line. `read` borrows instead, so an `Arc` value scales
    /// like a `u64` (`cargo bench --bench hit_threads`; the README has the figures). On a
    /// store probe (a hit that is not in the tier, a miss) the value is the store's copy.
    ///
    /// `f` must not call this function again on this thread with another key and keep
    /// expecting the tier: it may (the tier is simply not refilled meanwhile).
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let store = MemoryStore::<String, Arc<String>>::new(100).unwrap();
    /// let page = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_blocking_infallible(|k: &String| Arc::new(format!("<html>{k}</html>")))
    ///     .unwrap();
    /// assert_eq!(page.read("home", |html| html.len()).unwrap(), 17);
    /// assert_eq!(page.read("home", |html| html.starts_with("<html>")).unwrap(), true);
    /// assert_eq!(page.stats().computations, 1);
    /// ```
    #[inline(always)]
    pub fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Result<R, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        let engine: &Engine<K, V, E, S> = &self.engine;
        let mut f = Some(f);
        // `f` is taken only on a tier hit, so it is still here on every other path.
        if let Some(Some(out)) = engine.hot_read(key, |v| f.take().map(|f| f(v))) {
            return Ok(out);
        }
        let value = match engine.try_lean(key) {
            Ok(value) => Ok(value),
            Err(lookup) => Self::cold(engine, key, lookup, None),
        }?;
        match f.take() {
            Some(f) => Ok(f(&value)),
            None => unreachable!("f ran only on a tier hit"),
        }
    }

    /// The value for `key`, with this call's own contention policy.
    #[inline(always)]
    pub fn get_with<Q>(&self, key: &Q, contention: Contention) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        self.get_under(key, Some(&contention))
    }

    /// [`BlockingMemoized::get`] under `contention` (`None`: the function's own policy).
    #[inline(always)]
    fn get_under<Q>(&self, key: &Q, contention: Option<&Contention>) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        // The cold path gets the engine, not `self`: one register fewer kept across the probe.
        let engine: &Engine<K, V, E, S> = &self.engine;
        match engine.try_lean(key) {
            Ok(value) => Ok(value),
            Err(lookup) => Self::cold(engine, key, lookup, contention),
        }
    }

    /// Everything the lean hit path did not answer: the general path, a hand-off window (yield
    /// after the hit), the slow path.
    #[cold]
    #[inline(never)]
    fn cold<Q>(
        engine: &Engine<K, V, E, S>,
        key: &Q,
        lookup: Lookup<V>,
        contention: Option<&Contention>,
    ) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        match engine.after_lean(key, lookup) {
            Ok((value, horizon)) => {
                if engine.handing_off(horizon) {
                    std::thread::yield_now();
                }
                Ok(value)
            }
            Err(seen) => Self::slow(engine, key, seen, contention),
        }
    }

    /// Everything but a plain hit, out of line so the hit path stays small.
    #[inline(never)]
    fn slow<Q>(
        engine: &Engine<K, V, E, S>,
        key: &Q,
        seen: Probe<V>,
        contention: Option<&Contention>,
    ) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        let contention = contention.copied().unwrap_or(engine.cfg.contention);
        let key = owned_or_same(key);
        let out = block_on(miss::slow(engine, &key, seen, contention));
        engine.yield_if_handing_off();
        out
    }

    /// Invalidates `key`; see [`Memoized::invalidate`](crate::Memoized::invalidate).
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_blocking_infallible(|k: &u32| k + 1)
    ///     .unwrap();
    /// f.get(&1).unwrap();
    /// f.invalidate(&1).unwrap();
    /// assert_eq!(f.peek(&1), None);
    /// f.insert(&1, 42).unwrap();
    /// assert_eq!(f.get(&1).unwrap(), 42);
    /// assert_eq!(f.refresh(&1).unwrap(), 2);
    /// f.invalidate_all().unwrap();
    /// assert_eq!(f.peek(&1), None);
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::invalidate(&self.engine, key))
    }

    /// Invalidates every key of this function; see
    /// [`Memoized::invalidate_all`](crate::Memoized::invalidate_all).
    pub fn invalidate_all(&self) -> Result<(), StoreError> {
        block_on(ops::invalidate_all(&self.engine))
    }

    /// Stores a value computed elsewhere (δ unknown: no early refresh until the first real
    /// computation); see [`Memoized::insert`](crate::Memoized::insert).
    pub fn insert<Q>(&self, key: &Q, value: V) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::insert(&self.engine, key, value, None, None))
    }

    /// Stores a value computed elsewhere, with its computation time.
    pub fn insert_with_delta<Q>(&self, key: &Q, value: V, delta: Duration) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::insert(&self.engine, key, value, Some(delta), None))
    }

    /// Stores a value computed elsewhere that lives for `ttl`; see
    /// [`Memoized::insert_with_ttl`](crate::Memoized::insert_with_ttl).
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(16).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_blocking_infallible(|k: &u32| *k)
    ///     .unwrap();
    /// f.insert_with_ttl(&3, 99, Duration::from_secs(5)).unwrap();
    /// assert_eq!(f.get(&3).unwrap(), 99);
    /// ```
    pub fn insert_with_ttl<Q>(&self, key: &Q, value: V, ttl: Duration) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::insert(&self.engine, key, value, None, Some(ttl)))
    }

    /// Recomputes `key` now and returns a value computed after this call began (a computation
    /// already running in this process is neither joined nor allowed to overwrite it); see
    /// [`Memoized::refresh`](crate::Memoized::refresh).
    pub fn refresh<Q>(&self, key: &Q) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::refresh(&self.engine, key))
    }

    /// The current unexpired value, without computing, counting or triggering anything.
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        block_on(ops::peek(&self.engine, key))
    }

    /// A snapshot of this function's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.engine.stats.snapshot()
    }

    /// The function's name (its namespace in the store).
    pub fn name(&self) -> &str {
        self.engine.ns.name()
    }
}

impl<K, V, E, S> BlockingLayer<K, V, E> for BlockingMemoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn call(&self, key: &K) -> Result<V, Error<E>> {
        self.get(key)
    }
}
