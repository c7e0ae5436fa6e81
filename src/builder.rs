//! The builder shared by [`memoize`](crate::memoize) and
//! [`memoize_stampede`](crate::memoize_stampede): configuration, validation, and the `build*` /
//! `wrap*` methods that produce the async and blocking facades.

use crate::auto::LeadTarget;
use crate::batch::{BatchFn, BatchMemoized, BlockingBatchMemoized};
use crate::blocking::BlockingMemoized;
use crate::clock::{Clock, EngineClock};
use crate::engine::{Config, Draws, Engine, TtlFn};
use crate::error::ConfigError;
use crate::flight::DEFAULT_MAX_REFRESHES;
use crate::layer::{BlockingLayer, ComputeFn, Layer};
use crate::memoized::Memoized;
use crate::store::contract::Store;
use crate::wait::Contention;
use futures::FutureExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Configures a memoized function; finish with one of the `build*` or `wrap*` methods.
///
/// ```
/// use herdless::{memoize_stampede, Contention, ManualClock, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<u32, u32>::new(100).unwrap();
/// let f = memoize_stampede(&store, Duration::from_secs(10))
///     .name("squares")
///     .beta(0.5)
///     .contention(Contention::Wait(Duration::from_secs(2)))
///     .refresh_backoff(Duration::from_millis(500))
///     .clock(ManualClock::new())
///     .rng_seed(7)
///     .build_blocking_infallible(|k: &u32| k * k)
///     .unwrap();
/// assert_eq!(f.get(&4).unwrap(), 16);
/// ```
pub struct Builder<K, V, S> {
    store: S,
    ttl: Duration,
    stampede: bool,
    name: Option<String>,
    beta: f64,
    contention: Contention,
    serve_stale: bool,
    refresh_backoff: Duration,
    lease: (Duration, Duration),
    clock: Option<EngineClock>,
    seed: Option<u64>,
    auto: Option<LeadTarget>,
    max_refreshes: usize,
    stale_if_error: Duration,
    ttl_with: Option<TtlFn<K, V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V, S> std::fmt::Debug for Builder<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("beta", &self.beta)
            .field("beta_auto", &self.auto)
            .field("contention", &self.contention)
            .finish_non_exhaustive()
    }
}

/// Refuses a duration the engine cannot hold in u64 nanoseconds.
fn representable(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if u64::try_from(d.as_nanos()).is_err() {
        return Err(ConfigError::new(
            field,
            format!("{d:?} is too long (at most u64::MAX nanoseconds, about 584 years)"),
        ));
    }
    Ok(())
}

fn anonymous_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("anonymous#{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl<K, V, S> Builder<K, V, S>
where
    S: Store<K, V>,
{
    pub(crate) fn new(store: S, ttl: Duration, stampede: bool) -> Self {
        Builder {
            store,
            ttl,
            stampede,
            name: None,
            beta: if stampede { 1.0 } else { 0.0 },
            contention: Contention::default(),
            serve_stale: false,
            refresh_backoff: Duration::from_secs(1),
            lease: (Duration::from_millis(500), Duration::from_secs(60)),
            clock: None,
            seed: None,
            // Automatic β by default: measured on the landing page, β = 1 ran the body 44 times
            // in 10 s against auto's 11 (paper-notes.md, "Default β").
            auto: stampede.then(LeadTarget::default),
            max_refreshes: DEFAULT_MAX_REFRESHES,
            stale_if_error: Duration::ZERO,
            ttl_with: None,
            _types: PhantomData,
        }
    }

    /// The function's name: its namespace in the store. Layers that must see each other's
    /// entries (the outer and inner `memoize` of a barrier recipe) use the same name. Without a
    /// name, the function gets a private anonymous namespace.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// A fixed XFetch β instead of the default automatic one ([`Builder::beta_auto`] with
    /// [`LeadTarget::default`]): larger refreshes earlier. `0` disables early refresh;
    /// `f64::INFINITY` refreshes on every hit. Negative or NaN is rejected. The later of
    /// `beta` and `beta_auto` wins.
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self.auto = None;
        self
    }

    /// Automatic β: measure each key's request rate on the hit path and choose β so that the
    /// expected refresh lead `δβ(ln(rδβ)+γ)` is about `target` (a [`Duration`], or
    /// [`LeadTarget::DeltaMultiple`]; the default [`LeadTarget`] is 1.25 δ). β stays within
    /// [0.01, 10]. With the single-flight refresh this gives about one refresh per TTL at any
    /// rate. This is `memoize_stampede`'s default; the later of `beta` and `beta_auto` wins.
    ///
    /// The first trigger's lead is random (Gumbel, scale `δβ`), so a refresh lands after expiry
    /// with probability `exp(−rδβ·e^(−1/β))`. At high rates the β the target gives is small and
    /// that probability negligible (10⁶ calls/s, δ = 200 ms: β ≈ 0.12); at low rates it is not
    /// (100 calls/s: β ≈ 0.45 would refresh late in about a third of the cycles, and those
    /// callers wait). With a store local to the process, β is therefore raised where needed to
    /// keep late refreshes under 5 % (100 calls/s: β ≈ 0.67, lead ≈ 2.1 δ). A shared store
    /// (Redis) skips that floor: each process meters only its own rate, so the cluster-wide
    /// lead is already `δβ ln N` longer than the target across N processes; a lone process on
    /// Redis at a low rate should give a longer target (`LeadTarget::DeltaMultiple(2.5)`).
    /// [`tune::advise`](crate::tune::advise) reports `late_refresh_probability` for any choice.
    ///
    /// ```
    /// use herdless::{memoize_stampede, LeadTarget, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(1))
    ///     .beta_auto(LeadTarget::default())
    ///     .build_blocking_infallible(|k: &u32| *k)
    ///     .unwrap();
    /// assert_eq!(f.get(&5).unwrap(), 5);
    /// ```
    pub fn beta_auto(mut self, target: impl Into<LeadTarget>) -> Self {
        self.auto = Some(target.into());
        self
    }

    /// What a hard miss does while another caller computes the key (default: wait up to 30 s).
    /// Each call can override it ([`Memoized::get_with`]).
    pub fn contention(mut self, policy: Contention) -> Self {
        self.contention = policy;
        self
    }

    /// While another caller recomputes an expired key, answer with the expired value (if the
    /// store still has it) instead of waiting. Off by default. `MemoryStore` keeps expired
    /// entries until they are evicted or replaced; Redis drops a key at its TTL, so with
    /// `RedisStore` there is never a stale value to serve.
    pub fn serve_stale(mut self, yes: bool) -> Self {
        self.serve_stale = yes;
        self
    }

    /// After a failed background refresh, no new refresh of that key starts for this long
    /// (default 1 s); the current value keeps being served until it expires.
    pub fn refresh_backoff(mut self, backoff: Duration) -> Self {
        self.refresh_backoff = backoff;
        self
    }

    /// Bounds of the distributed lock lease (default 500 ms to 60 s): a lock is taken for a few
    /// times the last computation time within `[min, max]` and renewed while the holder
    /// computes, for at most `max` in all; a computation that outlives `max` loses the lock and
    /// its write is fenced off. Ignored by stores that do not lock across processes.
    pub fn lease_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.lease = (min, max);
        self
    }

    /// At most this many background refreshes of this function run at once (default 16).
    /// Keys written together reach their early window together; past the limit a trigger is
    /// skipped (counted in [`StatsSnapshot::early_refreshes_throttled`](crate::StatsSnapshot))
    /// and the current value is served: XFetch triggers again on a later call, ever more likely
    /// as expiry nears, and at expiry a hard miss computes as usual. It also bounds the worker
    /// threads the blocking facade runs refreshes on. Must be at least 1 (`beta(0.0)` turns
    /// early refresh off).
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(10))
    ///     .max_refreshes(4)
    ///     .build_blocking_infallible(|k: &u32| k + 1)
    ///     .unwrap();
    /// assert_eq!(f.get(&1).unwrap(), 2);
    /// let zero = memoize_stampede(&store, Duration::from_secs(10))
    ///     .max_refreshes(0)
    ///     .build_blocking_infallible(|k: &u32| k + 1);
    /// assert_eq!(zero.unwrap_err().field(), "max_refreshes");
    /// ```
    pub fn max_refreshes(mut self, n: usize) -> Self {
        self.max_refreshes = n;
        self
    }

    /// Replaces the system clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(EngineClock::new(clock));
        self
    }

    /// Serve stale on error (RFC 5861 `stale-if-error`, Varnish's grace mode): for up to `grace`
    /// after a value expired, a recomputation that fails (returns an error, panics, outlasts
    /// the caller's wait, or fails while the store is down) returns the last value instead of
    /// the error. The error is still logged and counted
    /// ([`StatsSnapshot::stale_served_on_error`](crate::StatsSnapshot)); callers coalesced onto
    /// the failed computation get the stale value too; the key then backs off for
    /// [`Builder::refresh_backoff`] (calls meanwhile get the stale value at once) and the next
    /// call after it retries. On a store that removes records by time (Redis) a record
    /// physically outlives its logical expiry by `grace`; reads still report the logical
    /// expiry, so XFetch is unchanged. Every process of one function must use the same
    /// `grace` (it is part of how the record's expiry is read back). Zero (the default) turns
    /// it off.
    ///
    /// ```
    /// use herdless::{memoize_stampede, ManualClock, MemoryStore};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let (store, clock) = (MemoryStore::<u32, u32>::new(16).unwrap(), ManualClock::new());
    /// let down = Arc::new(AtomicBool::new(false));
    /// let d = down.clone();
    /// let f = memoize_stampede(&store, Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .beta(0.0)
    ///     .stale_if_error(Duration::from_secs(60))
    ///     .build_blocking(move |k: &u32| if d.load(Ordering::SeqCst) { Err("db down") } else { Ok(k * 2) })
    ///     .unwrap();
    /// assert_eq!(f.get(&1).unwrap(), 2);
    /// down.store(true, Ordering::SeqCst);
    /// clock.advance(Duration::from_secs(30)); // expired 20 s ago, within the grace
    /// assert_eq!(f.get(&1).unwrap(), 2);
    /// clock.advance(Duration::from_secs(60)); // past the grace: the error
    /// assert!(f.get(&1).is_err());
    /// ```
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.stale_if_error = grace;
        self
    }

    /// Each value's own TTL (moka's `Expiry`, Caffeine's `expireAfter`): `ttl(key, value)` is
    /// evaluated once per computation and replaces the function's TTL for that value; XFetch
    /// and automatic β work from each entry's own expiry. A zero result means "do not store
    /// this value" (a lookup-only answer, as a zero TTL is). [`Memoized::insert`](crate::Memoized::insert)
    /// uses it too; `insert_with_ttl` sets one explicitly.
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, Option<u32>>::new(16).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(3600))
    ///     // A negative answer lives 5 s, a positive one an hour.
    ///     .ttl_with(|_k: &u32, v: &Option<u32>| {
    ///         if v.is_some() { Duration::from_secs(3600) } else { Duration::from_secs(5) }
    ///     })
    ///     .build_blocking_infallible(|k: &u32| (*k < 10).then_some(*k))
    ///     .unwrap();
    /// assert_eq!(f.get(&3).unwrap(), Some(3));
    /// assert_eq!(f.get(&30).unwrap(), None);
    /// ```
    pub fn ttl_with(mut self, ttl: impl Fn(&K, &V) -> Duration + Send + Sync + 'static) -> Self {
        self.ttl_with = Some(std::sync::Arc::new(ttl));
        self
    }

    /// Seeds the XFetch draws, for reproducible tests and simulations.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn validate(&self) -> Result<Config, ConfigError> {
        if self.beta.is_nan() || self.beta < 0.0 {
            return Err(ConfigError::new(
                "beta",
                format!("must be ≥ 0 (0 disables early refresh), got {}", self.beta),
            ));
        }
        if self.stampede && self.ttl.is_zero() {
            return Err(ConfigError::new(
                "ttl",
                "memoize_stampede needs a TTL > 0 (a zero TTL never stores, so nothing could be refreshed)",
            ));
        }
        match self.auto {
            Some(LeadTarget::Fixed(d)) if d.is_zero() => {
                return Err(ConfigError::new(
                    "beta_auto",
                    "the target lead must be positive",
                ))
            }
            Some(LeadTarget::DeltaMultiple(k)) if !(k > 0.0 && k.is_finite()) => {
                return Err(ConfigError::new(
                    "beta_auto",
                    format!("the δ multiple must be positive and finite, got {k}"),
                ))
            }
            Some(_) if !self.stampede => {
                return Err(ConfigError::new(
                    "beta_auto",
                    "only memoize_stampede refreshes early",
                ))
            }
            _ => {}
        }
        if !self.stale_if_error.is_zero() && self.ttl.is_zero() {
            return Err(ConfigError::new(
                "stale_if_error",
                "needs a TTL > 0 (a zero TTL stores nothing to serve when a recomputation fails)",
            ));
        }
        representable("stale_if_error", self.stale_if_error)?;
        if self.max_refreshes == 0 {
            return Err(ConfigError::new(
                "max_refreshes",
                "must be ≥ 1 (use beta(0.0) to turn early refresh off)",
            ));
        }
        // Times are u64 nanoseconds on the engine's clock: a duration beyond that (~584 years)
        // would be cut short silently, so it is refused here instead.
        representable("ttl", self.ttl)?;
        representable("refresh_backoff", self.refresh_backoff)?;
        representable("lease_bounds", self.lease.1)?;
        if let Some(LeadTarget::Fixed(d)) = self.auto {
            representable("beta_auto", d)?;
        }
        if self.name.as_deref() == Some("") {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.lease.0.is_zero() || self.lease.0 > self.lease.1 {
            return Err(ConfigError::new(
                "lease_bounds",
                format!(
                    "need 0 < min ≤ max, got {:?}..{:?}",
                    self.lease.0, self.lease.1
                ),
            ));
        }
        Ok(Config {
            ttl: self.ttl,
            beta: self.beta,
            single_flight: self.stampede,
            contention: self.contention,
            serve_stale: self.serve_stale,
            refresh_backoff: self.refresh_backoff,
            lease_min: self.lease.0,
            lease_max: self.lease.1,
            auto: self.auto,
            max_refreshes: self.max_refreshes,
            stale_if_error: self.stale_if_error,
        })
    }

    fn engine<E>(self, compute: ComputeFn<K, V, E>) -> Result<Arc<Engine<K, V, E, S>>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        let cfg = self.validate()?;
        if self.name.is_none() && self.store.is_shared() {
            // An anonymous name is numbered per process: two services (or two deploys) would
            // share keys by accident. A shared store needs a name that means the same everywhere.
            return Err(ConfigError::new(
                "name",
                "a function on a shared store (RedisStore) needs an explicit, stable name: \
                 call .name(\"…\") (anonymous names differ between processes and deploys)",
            ));
        }
        let name = self.name.unwrap_or_else(anonymous_name);
        let ns = self.store.namespace(&name).with_grace(cfg.stale_if_error);
        let clock = self.clock.unwrap_or_else(EngineClock::system);
        let draws = self.seed.map_or(Draws::Thread, Draws::seeded);
        Ok(Arc::new_cyclic(|this| {
            Engine::new(
                self.store,
                ns,
                clock,
                draws,
                compute,
                cfg,
                self.ttl_with,
                this.clone(),
            )
        }))
    }
}

impl<K, V, S> Builder<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// Memoizes an async closure returning `Result<V, E>`.
    ///
    /// The closure takes the key by value (herdless clones it for each computation), so the
    /// future can own it: `|id: u64| async move { db.user(id).await }` compiles as written.
    /// A function of several arguments takes a tuple key: `|(user, page): (u64, String)| …`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u64, u64>::new(1000).unwrap();
    /// let square = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build(|k: u64| async move { Ok::<_, std::io::Error>(k * k) })
    ///     .unwrap();
    /// assert_eq!(square.get(&12).await.unwrap(), 144);
    /// # }
    /// ```
    pub fn build<E, F, Fut>(self, f: F) -> Result<Memoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let compute = ComputeFn::from_async(f);
        Ok(Memoized::new(self.engine(compute)?))
    }

    /// Memoizes an async closure that cannot fail.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<String, usize>::new(1000).unwrap();
    /// let len = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_infallible(|k: String| async move { k.len() })
    ///     .unwrap();
    /// assert_eq!(len.get(&"four".to_string()).await.unwrap(), 4);
    /// # }
    /// ```
    pub fn build_infallible<F, Fut>(
        self,
        f: F,
    ) -> Result<Memoized<K, V, Infallible, S>, ConfigError>
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        self.build(move |k: K| f(k).map(Ok::<V, Infallible>))
    }

    /// Memoizes another async layer (a [`Memoized`] or a [`Barrier`](crate::Barrier)).
    pub fn wrap<E, L>(self, inner: L) -> Result<Memoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        L: Layer<K, V, E>,
    {
        let compute = ComputeFn::from_layer(inner);
        Ok(Memoized::new(self.engine(compute)?))
    }

    /// Memoizes a plain synchronous closure; the result is called from ordinary threads and
    /// needs no async runtime. Background refreshes run on a worker thread.
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, String>::new(100).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(5))
    ///     .build_blocking(|k: &u32| if *k > 0 { Ok(k.to_string()) } else { Err("zero") })
    ///     .unwrap();
    /// assert_eq!(f.get(&7).unwrap(), "7");
    /// assert_eq!(*f.get(&0).unwrap_err().compute_error().unwrap(), "zero");
    /// ```
    pub fn build_blocking<E, F>(self, f: F) -> Result<BlockingMemoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    {
        let compute = ComputeFn::from_blocking(f);
        Ok(BlockingMemoized::new(self.engine(compute)?))
    }

    /// Memoizes a plain synchronous closure that cannot fail.
    pub fn build_blocking_infallible<F>(
        self,
        f: F,
    ) -> Result<BlockingMemoized<K, V, Infallible, S>, ConfigError>
    where
        F: Fn(&K) -> V + Send + Sync + 'static,
    {
        self.build_blocking(move |k: &K| Ok::<V, Infallible>(f(k)))
    }

    /// Memoizes another blocking layer (a [`BlockingMemoized`] or a
    /// [`BlockingBarrier`](crate::BlockingBarrier)).
    pub fn wrap_blocking<E, L>(self, inner: L) -> Result<BlockingMemoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        L: BlockingLayer<K, V, E>,
    {
        let compute = ComputeFn::from_blocking_layer(inner);
        Ok(BlockingMemoized::new(self.engine(compute)?))
    }
}

/// Batch loads: one closure call computes many keys ([`BatchMemoized::get_many`]).
impl<K, V, S> Builder<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// Memoizes an async batch loader: given the keys to compute, it returns their values in a
    /// map. [`BatchMemoized::get_many`] reads all its keys in one store round trip and computes
    /// the missing ones in one call (each key single-flight: keys another caller computes are
    /// joined); `get` works too, as a batch of one. A key the closure leaves out of its map is
    /// that key's [`Error::MissingFromBatch`](crate::Error::MissingFromBatch); a failing batch
    /// fails each of its keys and caches nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// let store = MemoryStore::<u64, u64>::new(1000).unwrap();
    /// let double = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_batch(|ids: Vec<u64>| async move {
    ///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, id * 2)).collect::<HashMap<_, _>>())
    ///     })
    ///     .unwrap();
    /// assert_eq!(double.get_many(&[1, 2, 3]).await.unwrap(), [2, 4, 6]);
    /// assert_eq!(double.stats().computations, 3);
    /// # }
    /// ```
    pub fn build_batch<E, F, Fut>(self, f: F) -> Result<BatchMemoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        let batch = Arc::new(BatchFn::from_async(f));
        let engine = self.engine(BatchFn::per_key(&batch))?;
        Ok(BatchMemoized::new(engine, batch))
    }

    /// The blocking twin of [`Builder::build_batch`]: a synchronous batch loader, called from
    /// plain threads ([`BlockingBatchMemoized`]).
    ///
    /// ```
    /// use herdless::{memoize_stampede, MemoryStore};
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// let store = MemoryStore::<u64, u64>::new(1000).unwrap();
    /// let double = memoize_stampede(&store, Duration::from_secs(60))
    ///     .build_batch_blocking(|ids: &[u64]| {
    ///         Ok::<_, std::io::Error>(ids.iter().map(|&id| (id, id * 2)).collect::<HashMap<_, _>>())
    ///     })
    ///     .unwrap();
    /// assert_eq!(double.get_many(&[1, 2]).unwrap(), [2, 4]);
    /// ```
    pub fn build_batch_blocking<E, F>(
        self,
        f: F,
    ) -> Result<BlockingBatchMemoized<K, V, E, S>, ConfigError>
    where
        E: Send + Sync + 'static,
        F: Fn(&[K]) -> Result<HashMap<K, V>, E> + Send + Sync + 'static,
    {
        let batch = Arc::new(BatchFn::from_blocking(f));
        let engine = self.engine(BatchFn::per_key(&batch))?;
        Ok(BlockingBatchMemoized::new(engine, batch))
    }
}
