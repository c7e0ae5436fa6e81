//! The async facade: [`Memoized`], a memoized function called with `.await`.

use crate::engine::{owned_or_same, Engine, Probe};
use crate::error::Error;
use crate::layer::Layer;
use crate::miss;
use crate::ops;
use crate::stats::StatsSnapshot;
use crate::store::contract::{Lookup, Store, StoreError};
use crate::wait::Contention;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// An async memoized function. Cheap to clone; clones share everything.
///
/// Calls that wait (a hard miss behind another caller, a bounded wait) use Tokio timers, and
/// background refreshes are spawned on the current Tokio runtime: call it from inside a runtime
/// with the time driver enabled (`#[tokio::main]` has it). Hits need nothing. Plain threads use
/// [`BlockingMemoized`](crate::BlockingMemoized) instead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<String, usize>::new(100).unwrap();
/// let f = memoize_stampede(&store, Duration::from_secs(1))
///     .build_infallible(|k: String| async move { k.len() })
///     .unwrap();
/// let g = f.clone(); // shares everything
/// assert_eq!(f.get(&"abc".to_string()).await.unwrap(), 3);
/// assert_eq!(g.stats().hits, 0);
/// assert_eq!(g.get(&"abc".to_string()).await.unwrap(), 3);
/// assert_eq!(f.stats().hits, 1);
/// # }
/// ```
pub struct Memoized<K, V, E, S> {
    engine: Arc<Engine<K, V, E, S>>,
}

impl<K, V, E, S> std::fmt::Debug for Memoized<K, V, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.engine.describe(f, "Memoized")
    }
}

impl<K, V, E, S> Memoized<K, V, E, S> {
    /// The engine this facade calls (shared with the batch facade built on it).
    pub(crate) fn engine(&self) -> &Arc<Engine<K, V, E, S>> {
        &self.engine
    }
}

impl<K, V, E, S> Clone for Memoized<K, V, E, S> {
    fn clone(&self) -> Self {
        Memoized {
            engine: self.engine.clone(),
        }
    }
}

impl<K, V, E, S> Memoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(engine: Arc<Engine<K, V, E, S>>) -> Self {
        Memoized { engine }
    }

    /// The value for `key`, under the function's contention policy.
    ///
    /// `key` may be any borrowed form of `K` (`&str` for `String`, `&[u8]` for `Vec<u8>`): a hit
    /// looks it up as it is, without building a `K`; a miss makes one owned copy. The future is
    /// a few words: a hit is answered on its first poll, and anything else runs a boxed slow
    /// path.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<String, usize>::new(100).unwrap();
    /// let len = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(|k: String| async move { k.len() })
    ///     .unwrap();
    /// assert_eq!(len.get("bob").await.unwrap(), 3); // &str for a String key
    /// assert_eq!(len.get(&"bob".to_string()).await.unwrap(), 3); // the same entry
    /// assert_eq!(len.stats().computations, 1);
    /// # }
    /// ```
    #[inline(always)]
    pub fn get<'a, Q>(&'a self, key: &'a Q) -> impl Future<Output = Result<V, Error<E>>> + Send + 'a
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        Get::new(self, key, None)
    }

    /// Runs `f` on the value for `key` without cloning it, with the same miss, refresh and
    /// contention behaviour as [`Memoized::get`].
    ///
    /// Why: a hit served from the calling thread's tier writes nothing another core reads,
    /// but `get` then clones the value, and cloning an `Arc<T>` writes its shared count: on one
    /// hot key every core writes that line. `read` borrows instead, so an `Arc` value scales
    /// like a `u64` (`cargo bench --bench hit_threads`; the README has the figures). A hit is
    /// answered on the first poll; on a store probe (a hit not in the tier, a miss) `f` gets
    /// the store's copy.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let store = MemoryStore::<String, Arc<String>>::new(100).unwrap();
    /// let page = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(|k: String| async move { Arc::new(format!("<html>{k}</html>")) })
    ///     .unwrap();
    /// assert_eq!(page.read("home", |html| html.len()).await.unwrap(), 17);
    /// assert_eq!(page.read("home", |html| html.len()).await.unwrap(), 17);
    /// assert_eq!(page.stats().computations, 1);
    /// # }
    /// ```
    pub async fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R + Send) -> Result<R, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        let mut f = Some(f);
        // `f` is taken only on a tier hit, so it is still here on every other path.
        if let Some(Some(out)) = self.engine.hot_read(key, |v| f.take().map(|f| f(v))) {
            return Ok(out);
        }
        let value = Get::new(self, key, None).await?;
        match f.take() {
            Some(f) => Ok(f(&value)),
            None => unreachable!("f ran only on a tier hit"),
        }
    }

    /// The value for `key`, with this call's own contention policy.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, Contention, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u8, u8>::new(10).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(1))
    ///     .build_infallible(|k: u8| async move { k })
    ///     .unwrap();
    /// assert_eq!(f.get_with(&3, Contention::FailFast).await.unwrap(), 3);
    /// # }
    /// ```
    pub fn get_with<'a, Q>(
        &'a self,
        key: &'a Q,
        contention: Contention,
    ) -> impl Future<Output = Result<V, Error<E>>> + Send + 'a
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        Get::new(self, key, Some(contention))
    }

    /// What the lean hit path did not answer: a hit after all (the general path), or the slow
    /// path's future.
    #[inline(never)]
    fn cold<'a, Q>(
        &'a self,
        key: &'a Q,
        lookup: Lookup<V>,
        contention: Option<Contention>,
    ) -> Result<V, BoxFuture<'a, Result<V, Error<E>>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        match self.engine.after_lean(key, lookup) {
            Ok((value, _)) => Ok(value),
            Err(seen) => Err(self.slow(key, seen, contention)),
        }
    }

    /// Everything but a plain hit, boxed: the slow path's state is large, and keeping it out of
    /// `get`'s future keeps a hit from initialising and moving it.
    fn slow<'a, Q>(
        &'a self,
        key: &'a Q,
        seen: Probe<V>,
        contention: Option<Contention>,
    ) -> BoxFuture<'a, Result<V, Error<E>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        let contention = contention.unwrap_or(self.engine.cfg.contention);
        let key = owned_or_same(key);
        async move { miss::slow(&self.engine, &key, seen, contention).await }.boxed()
    }

    /// Invalidates `key`: once this returns, no caller in any process sharing the store gets
    /// the old value from it, no computation of `key` that started before it (in any process)
    /// stores its result (in process: fences; on Redis: the record's version), and a call in
    /// this process that starts after it does not join a computation that started before it.
    /// Call it after writing the data the value was computed from.
    ///
    /// Other processes need no message for this: a computation there that started before the
    /// invalidation either writes after it (then its write is fenced and its waiters compute
    /// anew) or wrote before it, and a computation about to write to a shared store closes
    /// itself to new joiners first, so a call that starts after the invalidation returned
    /// reads the store instead of taking that value. (A near cache adds its own, stated
    /// staleness: see [`NearStore`](crate::store::NearStore).)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let version = Arc::new(AtomicU32::new(1));
    /// let v = version.clone();
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(move |_k: u32| {
    ///         let v = v.load(Ordering::SeqCst);
    ///         async move { v }
    ///     })
    ///     .unwrap();
    /// assert_eq!(f.get(&7).await.unwrap(), 1);
    /// version.store(2, Ordering::SeqCst); // the data changed
    /// f.invalidate(&7).await.unwrap();
    /// assert_eq!(f.get(&7).await.unwrap(), 2);
    /// # }
    /// ```
    pub async fn invalidate<Q>(&self, key: &Q) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::invalidate(&self.engine, key).await
    }

    /// Invalidates every key of this function. On a [`MemoryStore`](crate::MemoryStore) it
    /// scans the cache once. On Redis it is one `INCR` of the function's generation, which every
    /// entry key carries (never a `SCAN` or `KEYS`): this process sees it at once, other
    /// processes when its pub/sub announcement arrives (about a millisecond), or within 1 s if
    /// their subscription is down; the old entries, unreachable, expire by their TTL.
    pub async fn invalidate_all(&self) -> Result<(), StoreError> {
        ops::invalidate_all(&self.engine).await
    }

    /// Stores `value` for `key` with the function's TTL, as if it had been computed. Its δ is
    /// unknown, so it is stored as 0: XFetch does not refresh it early, and the first real
    /// computation (at expiry) measures δ. Use [`insert_with_delta`](Self::insert_with_delta)
    /// when you know how long the value takes to compute.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(|k: u32| async move { k * 10 })
    ///     .unwrap();
    /// f.insert(&3, 99).await.unwrap();
    /// assert_eq!(f.get(&3).await.unwrap(), 99);
    /// assert_eq!(f.stats().computations, 0);
    /// # }
    /// ```
    pub async fn insert<Q>(&self, key: &Q, value: V) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::insert(&self.engine, key, value, None, None).await
    }

    /// Like [`insert`](Self::insert), with the computation time XFetch scales its early
    /// refresh by.
    pub async fn insert_with_delta<Q>(
        &self,
        key: &Q,
        value: V,
        delta: Duration,
    ) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::insert(&self.engine, key, value, Some(delta), None).await
    }

    /// Stores a value computed elsewhere that lives for `ttl` instead of the function's TTL
    /// (or what [`Builder::ttl_with`](crate::Builder::ttl_with) would give it); δ unknown, as
    /// for [`insert`](Self::insert). A zero `ttl` stores nothing, but still fences off any
    /// computation of the key that is running.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(16).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build(|k: u32| async move { Ok::<_, std::io::Error>(k) })
    ///     .unwrap();
    /// f.insert_with_ttl(&3, 99, Duration::from_secs(5)).await.unwrap();
    /// assert_eq!(f.get(&3).await.unwrap(), 99);
    /// # }
    /// ```
    pub async fn insert_with_ttl<Q>(
        &self,
        key: &Q,
        value: V,
        ttl: Duration,
    ) -> Result<(), StoreError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::insert(&self.engine, key, value, None, Some(ttl)).await
    }

    /// Recomputes `key` now and returns a value computed after this call began: a computation
    /// of `key` already running in this process started before it (and may have read older
    /// data), so it is not joined, and its result cannot overwrite this one. Calls that start
    /// while the refresh runs join it.
    pub async fn refresh<Q>(&self, key: &Q) -> Result<V, Error<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::refresh(&self.engine, key).await
    }

    /// The current unexpired value of `key`, if any, without computing, counting or triggering
    /// anything.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(|k: u32| async move { k + 1 })
    ///     .unwrap();
    /// assert_eq!(f.peek(&1).await, None);
    /// f.get(&1).await.unwrap();
    /// assert_eq!(f.peek(&1).await, Some(2));
    /// # }
    /// ```
    pub async fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    {
        ops::peek(&self.engine, key).await
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

/// The future of [`Memoized::get`]: its first poll runs the hit path in place; anything else
/// continues in a boxed slow path. A plain struct rather than an `async` block, so that the
/// caller's poll inlines the hit path.
struct Get<'a, K, V, E, S, Q: ?Sized> {
    f: &'a Memoized<K, V, E, S>,
    key: &'a Q,
    contention: Option<Contention>,
    slow: Option<BoxFuture<'a, Result<V, Error<E>>>>,
}

impl<'a, K, V, E, S, Q: ?Sized> Get<'a, K, V, E, S, Q> {
    #[inline(always)]
    fn new(f: &'a Memoized<K, V, E, S>, key: &'a Q, contention: Option<Contention>) -> Self {
        Get {
            f,
            key,
            contention,
            slow: None,
        }
    }
}

impl<K, V, E, S, Q> Future for Get<'_, K, V, E, S, Q>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
{
    type Output = Result<V, Error<E>>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        if me.slow.is_none() {
            let lookup = match me.f.engine.try_lean(me.key) {
                Ok(value) => return Poll::Ready(Ok(value)),
                Err(lookup) => lookup,
            };
            return match first_cold_poll(me.f, me.key, lookup, me.contention, cx) {
                Ok(ready) => ready,
                Err(slow) => {
                    me.slow = Some(slow);
                    Poll::Pending
                }
            };
        }
        match &mut me.slow {
            Some(slow) => slow.as_mut().poll(cx),
            None => unreachable!("set before the first slow poll"),
        }
    }
}

/// The first poll after the lean path said no: the answer if there is one now (a hit after
/// all, or a slow path that finished at once), else the slow path's future to poll later. Out
/// of line, so that the inlined hit path saves only the registers a hit needs.
#[cold]
#[inline(never)]
#[allow(clippy::type_complexity)]
fn first_cold_poll<'a, K, V, E, S, Q>(
    f: &'a Memoized<K, V, E, S>,
    key: &'a Q,
    lookup: Lookup<V>,
    contention: Option<Contention>,
    cx: &mut Context<'_>,
) -> Result<Poll<Result<V, Error<E>>>, BoxFuture<'a, Result<V, Error<E>>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
{
    match f.cold(key, lookup, contention) {
        Ok(value) => Ok(Poll::Ready(Ok(value))),
        Err(mut slow) => match slow.as_mut().poll(cx) {
            Poll::Ready(out) => Ok(Poll::Ready(out)),
            Poll::Pending => Err(slow),
        },
    }
}

impl<K, V, E, S> Layer<K, V, E> for Memoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn call(&self, key: &K) -> BoxFuture<'static, Result<V, Error<E>>> {
        let this = self.clone();
        let key = key.clone();
        async move { this.get(&key).await }.boxed()
    }
}
