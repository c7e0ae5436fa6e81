//! The one engine behind every memoizing layer, async and blocking alike.
//!
//! A call first tries the synchronous hit path ([`Engine::fast`]): one store probe, one cheap
//! clock read, one comparison. Only a value within XFetch reach of its expiry (or a miss) takes
//! the slow path ([`Engine::slow`]), an `async fn` that both facades drive: async callers await
//! it, the blocking facade polls it to completion on the calling thread. What differs between
//! the two is captured by [`WaitMode`] (how to wait) and [`ComputeFn`] (how to run the closure).

use crate::auto::{LeadTarget, RateMeters};
use crate::clock::Clock;
use crate::entry::Entry;
use crate::error::Error;
use crate::lock::local::{FlightMap, Joined, RefreshSlots, Waited};
use crate::lock::WaitMode;
use crate::stats::{bump, Stats};
use crate::store::{LockOutcome, Namespace, Store, Written};
use crate::xfetch::{self, Decision};
use futures::future::BoxFuture;
use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long blocking hitters yield after a flight wakes its waiters.
const HANDOFF_WINDOW_NS: u64 = 5_000_000;

/// What to do on a hard miss while another caller computes the same key.
///
/// ```
/// use herdless::Contention;
/// use std::time::Duration;
/// assert_eq!(Contention::default(), Contention::Wait(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// Wait for the other caller's result, at most this long, then return
    /// [`Error::WaitTimeout`]. The default waits 30 s.
    Wait(Duration),
    /// Wait at most this long, then compute anyway (a second computation, but an answer).
    ComputeAfter(Duration),
    /// Return [`Error::Busy`] at once.
    FailFast,
}

impl Default for Contention {
    fn default() -> Self {
        Contention::Wait(Duration::from_secs(30))
    }
}

/// The innermost callable: the user's closure or an inner layer, type-erased once at build time
/// (the hit path never touches it, so the indirection costs nothing there).
pub(crate) enum ComputeFn<K, V, E> {
    Async(AsyncFn<K, V, E>),
    Blocking(BlockingFn<K, V, E>),
}

pub(crate) type AsyncFn<K, V, E> =
    Arc<dyn Fn(&K) -> BoxFuture<'static, Result<V, Error<E>>> + Send + Sync>;
pub(crate) type BlockingFn<K, V, E> = Arc<dyn Fn(&K) -> Result<V, Error<E>> + Send + Sync>;

impl<K, V, E: Send + Sync + 'static> ComputeFn<K, V, E> {
    /// Wraps the user's async closure; its error becomes the shared [`Error::Compute`].
    pub(crate) fn from_async<F, Fut>(f: F) -> Self
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<V, E>> + Send + 'static,
    {
        use futures::FutureExt;
        ComputeFn::Async(Arc::new(move |k: &K| {
            f(k).map(|r| r.map_err(|e| Error::Compute(Arc::new(e))))
                .boxed()
        }))
    }

    /// Wraps the user's synchronous closure; its error becomes the shared [`Error::Compute`].
    pub(crate) fn from_blocking<F>(f: F) -> Self
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    {
        ComputeFn::Blocking(Arc::new(move |k: &K| {
            f(k).map_err(|e| Error::Compute(Arc::new(e)))
        }))
    }
}

impl<K, V, E> ComputeFn<K, V, E> {
    fn mode(&self) -> WaitMode {
        match self {
            ComputeFn::Async(_) => WaitMode::Async,
            ComputeFn::Blocking(_) => WaitMode::Blocking,
        }
    }
}

/// Where the exponential draws come from.
pub(crate) enum Draws {
    Thread,
    Seeded(Box<Mutex<StdRng>>),
}

impl Draws {
    pub(crate) fn seeded(seed: u64) -> Self {
        Draws::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }
    fn exp1(&self) -> f64 {
        let bits = match self {
            Draws::Thread => rand::rng().next_u64(),
            Draws::Seeded(m) => m.lock().unwrap_or_else(|p| p.into_inner()).next_u64(),
        };
        xfetch::exp1_from_bits(bits)
    }
}

/// Validated configuration of one memoized function.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How long a written value lives; zero = look up, never store.
    pub ttl: Duration,
    /// XFetch β (0 = no early refresh).
    pub beta: f64,
    /// Hard misses coalesce onto one computation per key (false for the plain memoize layer).
    pub single_flight: bool,
    pub contention: Contention,
    pub serve_stale: bool,
    pub refresh_backoff: Duration,
    pub lease_min: Duration,
    pub lease_max: Duration,
    /// Automatic β: aim the XFetch lead at this target from each key's measured rate.
    pub auto: Option<LeadTarget>,
}

/// What the hit path saw.
pub(crate) enum Fast<V> {
    /// A hit; the flag says a hand-off window is open (blocking callers then yield once).
    Hit(V, bool),
    Near(Entry<V>),
    Miss,
    Unknown,
}

pub(crate) struct Engine<K, V, E, S> {
    pub(crate) store: S,
    pub(crate) ns: Namespace,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) draws: Draws,
    pub(crate) compute: ComputeFn<K, V, E>,
    pub(crate) cfg: Config,
    /// `β · E_MAX · 1000` (f64 bits): multiplied by delta (µs) gives XFetch's reach in ns. With
    /// automatic β it is the largest β handed out so far, so the hit path stays conservative.
    reach_ns_per_us: AtomicU64,
    meters: Option<RateMeters<K>>,
    /// How far the cheap clock may lag.
    lag: u64,
    pub(crate) flights: Arc<FlightMap<K, Result<V, Error<E>>>>,
    /// Coarse-clock time until which blocking hitters yield after each hit (see `handed_off`).
    handoff_until: AtomicU64,
    pub(crate) refreshes: RefreshSlots<K>,
    pub(crate) stats: Stats,
}

impl<K, V, E, S> Engine<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(
        store: S,
        ns: Namespace,
        clock: Arc<dyn Clock>,
        draws: Draws,
        compute: ComputeFn<K, V, E>,
        cfg: Config,
    ) -> Self {
        let lag = clock.recent_lag();
        let stats = Stats::new(&ns.name);
        Engine {
            reach_ns_per_us: AtomicU64::new(
                (if cfg.auto.is_some() { 1.0 } else { cfg.beta } * xfetch::E_MAX * 1000.0)
                    .to_bits(),
            ),
            meters: cfg.auto.map(|_| RateMeters::new()),
            lag,
            store,
            ns,
            clock,
            draws,
            compute,
            cfg,
            flights: Arc::new(FlightMap::new()),
            handoff_until: AtomicU64::new(0),
            refreshes: RefreshSlots::new(),
            stats,
        }
    }

    /// The hit path: no allocation, no lock, no precise clock read for values far from expiry.
    #[inline]
    pub(crate) fn fast(&self, key: &K) -> Fast<V> {
        if let Some(m) = &self.meters {
            m.tick(key, self.clock.recent());
        }
        match self.store.get_now(&self.ns, key) {
            None => Fast::Unknown,
            Some(None) => Fast::Miss,
            Some(Some(entry)) => {
                // `recent + lag ≥ now`, so a positive gap here is a positive gap now, and a gap
                // beyond δ·β·E_MAX cannot trigger whatever the draw (xfetch::draw_needed).
                let recent = self.clock.recent();
                let worst_now = recent.saturating_add(self.lag);
                let gap = entry.expires_at.saturating_sub(worst_now);
                let reach = f64::from_bits(self.reach_ns_per_us.load(Ordering::Relaxed));
                if gap > 0 && gap as f64 > entry.delta_us as f64 * reach {
                    self.stats.hit();
                    Fast::Hit(
                        entry.value,
                        self.handoff_until.load(Ordering::Relaxed) > recent,
                    )
                } else {
                    Fast::Near(entry)
                }
            }
        }
    }

    /// Everything that is not a plain hit.
    pub(crate) async fn slow(
        self: &Arc<Self>,
        key: &K,
        seen: Fast<V>,
        contention: Contention,
    ) -> Result<V, Error<E>> {
        bump!(self.stats, slow_calls);
        let now = self.clock.now();
        let entry = match seen {
            Fast::Hit(v, _) => return Ok(v),
            Fast::Near(e) => Some(e),
            Fast::Miss => None,
            Fast::Unknown => match self.store.get(&self.ns, key, now).await {
                Ok(e) => e,
                Err(err) => {
                    bump!(self.stats, store_errors);
                    tracing::debug!(name = %self.ns.name, error = %err, "store read failed; treating as a miss");
                    None
                }
            },
        };
        let mut stale = None;
        if let Some(e) = entry {
            match self.decide(key, &e, now) {
                Decision::Fresh => {
                    bump!(self.stats, slow_hits);
                    return Ok(e.value);
                }
                Decision::RefreshEarly => {
                    bump!(self.stats, slow_hits);
                    self.trigger_refresh(key, e.expires_at, e.delta_us, now);
                    return Ok(e.value);
                }
                Decision::Expired => stale = Some(e.value),
            }
        }
        bump!(self.stats, hard_misses);
        let out = if self.cfg.single_flight {
            self.hard_miss(key, stale, contention).await
        } else {
            self.compute_and_store(key, None).await
        };
        if out.is_err() {
            bump!(self.stats, errors);
        }
        out
    }

    fn decide(&self, key: &K, e: &Entry<V>, now: u64) -> Decision {
        let gap_us = (e.expires_at as f64 - now as f64) / 1000.0;
        let delta = e.delta_us as f64;
        let beta = match (&self.meters, self.cfg.auto) {
            (Some(m), Some(target)) => {
                let b = m.beta(key, now, e.delta_us, target, !self.store.is_shared());
                let reach = b * xfetch::E_MAX * 1000.0;
                self.reach_ns_per_us
                    .fetch_max(reach.to_bits(), Ordering::Relaxed);
                b
            }
            _ => self.cfg.beta,
        };
        if !xfetch::draw_needed(gap_us, delta, beta) {
            return Decision::Fresh;
        }
        xfetch::decide(gap_us, delta, beta, self.draws.exp1())
    }

    /// One computation per key in this process; across processes, the store's lock.
    async fn hard_miss(
        self: &Arc<Self>,
        key: &K,
        mut stale: Option<V>,
        contention: Contention,
    ) -> Result<V, Error<E>> {
        let max_wait = match contention {
            Contention::Wait(d) | Contention::ComputeAfter(d) => Some(d),
            Contention::FailFast => None,
        };
        let deadline = max_wait.map(|d| Instant::now() + d);
        let mut abandoned = false;
        loop {
            match self.flights.join(key) {
                Joined::Leader(leader) => {
                    let (out, computed) = self.lead(key, deadline, contention).await;
                    if abandoned && computed {
                        bump!(self.stats, takeovers);
                    }
                    let followers = leader.finish(out.clone());
                    self.handed_off(followers);
                    return out;
                }
                Joined::Follower(flight) => {
                    if self.cfg.serve_stale {
                        if let Some(v) = stale.take() {
                            bump!(self.stats, stale_served);
                            return Ok(v);
                        }
                    }
                    if contention == Contention::FailFast {
                        return Err(Error::Busy);
                    }
                    tracing::debug!(name = %self.ns.name, "waiting for another caller's computation");
                    let waiting = Instant::now();
                    let waited = flight.wait(self.compute.mode(), deadline).await;
                    self.stats.wait_time(waiting.elapsed());
                    match waited {
                        Waited::Done(out) => {
                            bump!(self.stats, coalesced_waiters);
                            self.compute.mode().hand_off();
                            return out;
                        }
                        Waited::Abandoned => {
                            abandoned = true;
                            tracing::warn!(name = %self.ns.name, "the computation we waited for was abandoned (panic, cancellation, failed refresh); taking over");
                        }
                        Waited::TimedOut => {
                            if let Contention::ComputeAfter(_) = contention {
                                return self.compute_and_store(key, None).await;
                            }
                            return Err(Error::WaitTimeout(max_wait.unwrap_or_default()));
                        }
                    }
                }
            }
        }
    }

    /// The in-process leader of a hard miss: ask the store who computes, then compute or wait.
    async fn lead(
        self: &Arc<Self>,
        key: &K,
        deadline: Option<Instant>,
        contention: Contention,
    ) -> (Result<V, Error<E>>, bool) {
        let mut poll = Duration::from_millis(2);
        let mut waited_remotely = false;
        loop {
            let now = self.clock.now();
            match self
                .store
                .lock_or_get(&self.ns, key, self.lease(None), self.cfg.lease_max, now)
                .await
            {
                Ok(LockOutcome::Found(e)) if e.expires_at > now => return (Ok(e.value), false),
                Ok(LockOutcome::Found(_)) | Ok(LockOutcome::Local) => {
                    return (self.compute_and_store(key, None).await, true)
                }
                Ok(LockOutcome::Acquired(lock)) => {
                    return (self.compute_and_store(key, Some(lock)).await, true)
                }
                Ok(LockOutcome::Busy) => {
                    if !waited_remotely {
                        waited_remotely = true;
                        bump!(self.stats, remote_waits);
                        tracing::debug!(name = %self.ns.name, "another process holds the lock; waiting for its value");
                    }
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    match (left, contention) {
                        (_, Contention::FailFast) => return (Err(Error::Busy), false),
                        (Some(l), Contention::ComputeAfter(_)) if l.is_zero() => {
                            return (self.compute_and_store(key, None).await, true)
                        }
                        (Some(l), _) if l.is_zero() => {
                            let waited = match contention {
                                Contention::Wait(d) => d,
                                _ => Duration::ZERO,
                            };
                            return (Err(Error::WaitTimeout(waited)), false);
                        }
                        _ => {}
                    }
                    // Wake on the holder's publish; re-ask at a growing interval in case the
                    // message is lost or the holder died (its lease then lapses).
                    let wait = crate::lock::jitter(left.map_or(poll, |l| l.min(poll)));
                    if let Err(err) = self
                        .store
                        .wait_for_value(&self.ns, key, wait, self.compute.mode())
                        .await
                    {
                        bump!(self.stats, store_errors);
                        tracing::debug!(name = %self.ns.name, error = %err, "waiting on the store failed");
                        self.compute.mode().sleep(wait).await;
                    }
                    poll = (poll * 2).min(Duration::from_millis(100));
                }
                Err(err) => {
                    bump!(self.stats, store_errors);
                    tracing::debug!(name = %self.ns.name, error = %err, "store lock failed; computing locally");
                    return (self.compute_and_store(key, None).await, true);
                }
            }
        }
    }

    /// A flight just woke `followers` waiters. Blocking callers are threads, and on a saturated
    /// machine a woken thread waits for a time slice behind threads busy serving hits (about
    /// 5 ms each, one after the other, on 2 cores with 10 hot threads). For a few milliseconds
    /// hot blocking callers of this function therefore yield their core after each hit
    /// ([`Engine::yield_if_handing_off`]), so the woken waiters run at once. The window expires
    /// by itself; async callers are untouched. (Closing it as soon as every woken waiter has
    /// returned was tried and is worse: a waiter's own yield then waits for a time slice.) The
    /// cost: a function whose keys see coalesced hard misses more often than every 5 ms keeps
    /// its hot blocking callers yielding (about 1 µs per hit) while that lasts.
    pub(crate) fn handed_off(&self, followers: usize) {
        let mode = self.compute.mode();
        if followers > 0 && mode == WaitMode::Blocking {
            let until = self.clock.recent().saturating_add(HANDOFF_WINDOW_NS);
            self.handoff_until.fetch_max(until, Ordering::Relaxed);
        }
        mode.hand_off();
    }

    /// See [`Engine::handed_off`]: one relaxed load on the blocking hit path.
    #[inline]
    pub(crate) fn yield_if_handing_off(&self) {
        if self.handoff_until.load(Ordering::Relaxed) > self.clock.recent() {
            std::thread::yield_now();
        }
    }

    /// The lease for a distributed lock: a few times the last delta, within the configured bounds.
    pub(crate) fn lease(&self, delta_us: Option<u64>) -> Duration {
        let guess = Duration::from_micros(delta_us.unwrap_or(0).saturating_mul(4));
        guess.clamp(self.cfg.lease_min, self.cfg.lease_max)
    }

    /// Runs the closure, measures delta, stores the value (fenced by `lock` if held).
    pub(crate) async fn compute_and_store(
        &self,
        key: &K,
        lock: Option<S::Lock>,
    ) -> Result<V, Error<E>> {
        bump!(self.stats, computations);
        let t0 = self.clock.now();
        let out = match &self.compute {
            ComputeFn::Async(f) => f(key).await,
            ComputeFn::Blocking(f) => f(key),
        };
        let t1 = self.clock.now();
        self.stats.compute_time(t1.saturating_sub(t0));
        let value = out?;
        if !self.cfg.ttl.is_zero() {
            let entry = Entry {
                value: value.clone(),
                delta_us: t1.saturating_sub(t0).div_ceil(1000),
                expires_at: t1.saturating_add(self.cfg.ttl.as_nanos() as u64),
            };
            match self
                .store
                .set(&self.ns, key, entry, self.cfg.ttl, lock)
                .await
            {
                Ok(Written::Stored) => {}
                Ok(Written::Fenced) => {
                    bump!(self.stats, fenced_writes);
                    tracing::info!(name = %self.ns.name, "lock lost before the write; kept the newer value");
                }
                Err(err) => {
                    bump!(self.stats, store_errors);
                    tracing::debug!(name = %self.ns.name, error = %err, "store write failed");
                }
            }
        }
        self.refreshes.clear_backoff(key);
        Ok(value)
    }
}
