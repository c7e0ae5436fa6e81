//! Batch loads: a memoized function whose closure computes many keys at once
//! ([`Builder::build_batch`](crate::Builder::build_batch)), called with
//! [`get_many`](BatchMemoized::get_many).
//!
//! A page that shows 100 products asks for 100 keys. One by one that is 100 store round trips
//! and, on a cold cache, 100 backend calls where one `WHERE id IN (…)` would do. `get_many`
//! reads every key in one round trip ([`Store::get_many`]), computes the missing ones in one
//! call of the batch closure (single-flight per key: keys another caller already computes are
//! joined, in this process or, through the store's lock, in another) and writes them in one
//! batched write ([`Store::set_many`]). XFetch triggers among the hits are refreshed together
//! in one background batch. Plain `get` works too, as a batch of one.
//!
//! The files: `load` (the read and the miss plan), `compute` (one closure call, one write, the
//! leader protocol per key), `refresh` (the background batch refresh).

mod compute;
mod load;
mod refresh;

use crate::engine::Engine;
use crate::error::Error;
use crate::layer::ComputeFn;
use crate::memoized::Memoized;
use crate::stats::StatsSnapshot;
use crate::store::contract::{Store, StoreError};
use crate::wait::{block_on, Contention};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

type AsyncBatch<K, V, E> =
    Arc<dyn Fn(Vec<K>) -> BoxFuture<'static, Result<HashMap<K, V>, E>> + Send + Sync>;
type BlockingBatch<K, V, E> = Arc<dyn Fn(&[K]) -> Result<HashMap<K, V>, E> + Send + Sync>;

/// The user's batch closure, type-erased once at build time.
pub(crate) enum BatchFn<K, V, E> {
    Async(AsyncBatch<K, V, E>),
    Blocking(BlockingBatch<K, V, E>),
}

impl<K, V, E> BatchFn<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn from_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        BatchFn::Async(Arc::new(move |keys| f(keys).boxed()))
    }

    pub(crate) fn from_blocking<F>(f: F) -> Self
    where
        F: Fn(&[K]) -> Result<HashMap<K, V>, E> + Send + Sync + 'static,
    {
        BatchFn::Blocking(Arc::new(f))
    }

    /// Runs the closure for `keys` (a blocking closure on the polling thread).
    pub(crate) async fn run(&self, keys: Vec<K>) -> Result<HashMap<K, V>, Error<E>> {
        let out = match self {
            BatchFn::Async(f) => f(keys).await,
            BatchFn::Blocking(f) => f(&keys),
        };
        out.map_err(|e| Error::Compute(Arc::new(e)))
    }

    /// The engine's one-key compute function: the batch closure called with one key (what
    /// `get`, `refresh` and a single key's background refresh run).
    pub(crate) fn per_key(this: &Arc<Self>) -> ComputeFn<K, V, E> {
        let one = |out: Result<HashMap<K, V>, E>, key: &K| match out {
            Ok(mut map) => map.remove(key).ok_or(Error::MissingFromBatch),
            Err(e) => Err(Error::Compute(Arc::new(e))),
        };
        match &**this {
            BatchFn::Async(f) => {
                let f = f.clone();
                ComputeFn::Async(Arc::new(move |key: &K| {
                    let key = key.clone();
                    f(vec![key.clone()]).map(move |out| one(out, &key)).boxed()
                }))
            }
            BatchFn::Blocking(f) => {
                let f = f.clone();
                ComputeFn::Blocking(Arc::new(move |key: &K| {
                    one(f(std::slice::from_ref(key)), key)
                }))
            }
        }
    }
}

/// A memoized function computed in batches ([`Builder::build_batch`](crate::Builder::build_batch)).
/// Cheap to clone; clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::collections::HashMap;
/// use std::time::Duration;
/// let store = MemoryStore::<u64, String>::new(1000).unwrap();
/// let products = memoize_stampede(&store, Duration::from_secs(60))
///     .name("products")
///     .build_batch(|ids: Vec<u64>| async move {
///         // One `SELECT … WHERE id IN (…)` for every missing id.
///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("product {id}"))).collect::<HashMap<_, _>>())
///     })
///     .unwrap();
/// let page = products.get_many(&[3, 1, 2]).await.unwrap();
/// assert_eq!(page, ["product 3", "product 1", "product 2"]);
/// assert_eq!(products.get(&1).await.unwrap(), "product 1"); // a hit now
/// # }
/// ```
pub struct BatchMemoized<K, V, E, S> {
    /// The single-key facade, and through it the engine.
    one: Memoized<K, V, E, S>,
    batch: Arc<BatchFn<K, V, E>>,
}

impl<K, V, E, S> Clone for BatchMemoized<K, V, E, S> {
    fn clone(&self) -> Self {
        BatchMemoized {
            one: self.one.clone(),
            batch: self.batch.clone(),
        }
    }
}

impl<K, V, E, S> std::fmt::Debug for BatchMemoized<K, V, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.one.engine().describe(f, "BatchMemoized")
    }
}

impl<K, V, E, S> BatchMemoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(engine: Arc<Engine<K, V, E, S>>, batch: Arc<BatchFn<K, V, E>>) -> Self {
        BatchMemoized {
            one: Memoized::new(engine),
            batch,
        }
    }

    /// The values of `keys`, in order: one store read for all of them, one call of the batch
    /// closure for the missing ones (keys another caller already computes are joined), one
    /// batched write. The first key that failed fails the call; [`get_many_each`] gives each
    /// key's own outcome.
    ///
    /// [`get_many_each`]: Self::get_many_each
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<V>, Error<E>> {
        self.get_many_each(keys).await.into_iter().collect()
    }

    /// Each key's own outcome, in order: a key the closure left out of its map is
    /// [`Error::MissingFromBatch`] while the others succeed; a failing batch fails each of its
    /// keys (and caches nothing).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, Error, MemoryStore};
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let evens = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_batch(|ks: Vec<u32>| async move {
    ///         Ok::<_, std::io::Error>(ks.into_iter().filter(|k| k % 2 == 0).map(|k| (k, k * 10)).collect::<HashMap<_, _>>())
    ///     })
    ///     .unwrap();
    /// let each = evens.get_many_each(&[2, 3]).await;
    /// assert_eq!(*each[0].as_ref().unwrap(), 20);
    /// assert!(matches!(each[1], Err(Error::MissingFromBatch)));
    /// # }
    /// ```
    pub async fn get_many_each(&self, keys: &[K]) -> Vec<Result<V, Error<E>>> {
        self.get_many_each_with(keys, self.one.engine().cfg.contention)
            .await
    }

    /// [`get_many_each`](Self::get_many_each) with this call's own contention policy (what a
    /// key does while another caller computes it).
    pub async fn get_many_each_with(
        &self,
        keys: &[K],
        contention: Contention,
    ) -> Vec<Result<V, Error<E>>> {
        load::load_many(self.one.engine(), &self.batch, keys, contention).await
    }

    /// The value of one key: a batch of one (the hit path of [`Memoized::get`]).
    pub async fn get(&self, key: &K) -> Result<V, Error<E>> {
        self.one.get(key).await
    }

    /// The same function, one key at a time: `invalidate`, `insert`, `refresh`, `peek`, … of
    /// [`Memoized`], which share this function's entries, flights and counters.
    pub fn as_memoized(&self) -> &Memoized<K, V, E, S> {
        &self.one
    }

    /// Invalidates `key`; see [`Memoized::invalidate`].
    pub async fn invalidate(&self, key: &K) -> Result<(), StoreError> {
        self.one.invalidate(key).await
    }

    /// A snapshot of this function's counters (`computations` counts keys computed, so a batch
    /// of 10 counts 10).
    pub fn stats(&self) -> StatsSnapshot {
        self.one.engine().stats.snapshot()
    }
}

/// The blocking twin of [`BatchMemoized`]
/// ([`Builder::build_batch_blocking`](crate::Builder::build_batch_blocking)): called from plain
/// threads, no runtime needed.
///
/// ```
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::collections::HashMap;
/// use std::time::Duration;
/// let store = MemoryStore::<u32, u32>::new(100).unwrap();
/// let squares = memoize_stampede(&store, Duration::from_secs(60))
///     .build_batch_blocking(|ks: &[u32]| Ok::<_, std::io::Error>(ks.iter().map(|&k| (k, k * k)).collect::<HashMap<_, _>>()))
///     .unwrap();
/// assert_eq!(squares.get_many(&[2, 3, 2]).unwrap(), [4, 9, 4]);
/// assert_eq!(squares.get(&3).unwrap(), 9);
/// assert_eq!(squares.stats().computations, 2);
/// ```
pub struct BlockingBatchMemoized<K, V, E, S> {
    /// The single-key facade, and through it the engine.
    one: crate::BlockingMemoized<K, V, E, S>,
    batch: Arc<BatchFn<K, V, E>>,
}

impl<K, V, E, S> Clone for BlockingBatchMemoized<K, V, E, S> {
    fn clone(&self) -> Self {
        BlockingBatchMemoized {
            one: self.one.clone(),
            batch: self.batch.clone(),
        }
    }
}

impl<K, V, E, S> std::fmt::Debug for BlockingBatchMemoized<K, V, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.one.engine().describe(f, "BlockingBatchMemoized")
    }
}

impl<K, V, E, S> BlockingBatchMemoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(engine: Arc<Engine<K, V, E, S>>, batch: Arc<BatchFn<K, V, E>>) -> Self {
        BlockingBatchMemoized {
            one: crate::BlockingMemoized::new(engine),
            batch,
        }
    }

    /// The values of `keys`, in order; see [`BatchMemoized::get_many`].
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<V>, Error<E>> {
        self.get_many_each(keys).into_iter().collect()
    }

    /// Each key's own outcome; see [`BatchMemoized::get_many_each`].
    pub fn get_many_each(&self, keys: &[K]) -> Vec<Result<V, Error<E>>> {
        self.get_many_each_with(keys, self.one.engine().cfg.contention)
    }

    /// [`get_many_each`](Self::get_many_each) under this call's own contention policy.
    pub fn get_many_each_with(
        &self,
        keys: &[K],
        contention: Contention,
    ) -> Vec<Result<V, Error<E>>> {
        let out = block_on(load::load_many(
            self.one.engine(),
            &self.batch,
            keys,
            contention,
        ));
        self.one.engine().yield_if_handing_off();
        out
    }

    /// The value of one key: a batch of one (the hit path of
    /// [`BlockingMemoized::get`](crate::BlockingMemoized::get)).
    pub fn get(&self, key: &K) -> Result<V, Error<E>> {
        self.one.get(key)
    }

    /// The same function, one key at a time (`invalidate`, `insert`, `refresh`, `peek`, …).
    pub fn as_memoized(&self) -> &crate::BlockingMemoized<K, V, E, S> {
        &self.one
    }

    /// Invalidates `key`; see [`Memoized::invalidate`].
    pub fn invalidate(&self, key: &K) -> Result<(), StoreError> {
        self.one.invalidate(key)
    }

    /// A snapshot of this function's counters (`computations` counts keys computed).
    pub fn stats(&self) -> StatsSnapshot {
        self.one.engine().stats.snapshot()
    }
}
