//! The one engine behind every memoizing layer, async and blocking alike.
//!
//! A call first tries the synchronous hit path ([`Engine::fast`]): one store probe, one cheap
//! clock read, one comparison. Only a value within XFetch reach of its expiry (or a miss) takes
//! the slow path ([`Engine::slow`]), an `async fn` that both facades drive: async callers await
//! it, the blocking facade polls it to completion on the calling thread. What differs between
//! the two is captured by [`WaitMode`] (how to wait) and [`ComputeFn`] (how to run the closure).

use crate::auto::{LeadTarget, RateMeters};
use crate::clock::{saturating_nanos, Coarse, EngineClock};
use crate::entry::Entry;
use crate::error::Error;
use crate::fence::Fences;
use crate::flight::{FlightMap, RefreshSlots};
use crate::hot::HotTier;
use crate::layer::ComputeFn;
use crate::stats::{bump, Stats};
use crate::store::contract::{Lookup, Namespace, Store, Written};
use crate::wait::{Contention, WaitMode};
use crate::xfetch::{self, theory};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::any::TypeId;
use std::borrow::{Borrow, Cow};
use std::hash::Hash;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long blocking hitters yield after a flight wakes its waiters.
const HANDOFF_WINDOW_NS: u64 = 5_000_000;

/// Where the exponential draws come from.
pub(crate) enum Draws {
    Thread,
    Seeded(Box<Mutex<StdRng>>),
}

impl Draws {
    pub(crate) fn seeded(seed: u64) -> Self {
        Draws::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }
    pub(crate) fn exp1(&self) -> f64 {
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
    /// Background refreshes of this function that may run at once.
    pub max_refreshes: usize,
    /// How long after expiry a failed recomputation returns the last value instead of its
    /// error (`Builder::stale_if_error`; zero: never).
    pub stale_if_error: Duration,
}

/// A value's own TTL, from its key and value (`Builder::ttl_with`).
pub(crate) type TtlFn<K, V> = Arc<dyn Fn(&K, &V) -> Duration + Send + Sync>;

/// What the hit path saw.
pub(crate) enum Probe<V> {
    /// A value far enough from expiry that no XFetch draw could fire. The facades answer hits
    /// themselves now and never hand one to the slow path; the variant stays until
    /// `miss::slow` drops its arm for it.
    #[allow(dead_code)]
    Hit {
        value: V,
        /// The upper bound of the time the hit was judged at (`recent + lag`): blocking
        /// callers compare it with the hand-off window, [`Engine::handing_off`], without a
        /// second clock read.
        horizon: u64,
    },
    /// A value within XFetch reach of its expiry (or past it): the slow path decides.
    NearExpiry(Entry<V>),
    /// Nothing stored.
    Miss,
    /// The store needs I/O to answer.
    NotLocal,
}

pub(crate) struct Engine<K, V, E, S> {
    pub(crate) store: S,
    pub(crate) ns: Namespace,
    pub(crate) clock: EngineClock,
    pub(crate) draws: Draws,
    pub(crate) compute: ComputeFn<K, V, E>,
    pub(crate) cfg: Config,
    /// Each value's own TTL (`Builder::ttl_with`), else `cfg.ttl` for all.
    ttl_of: Option<TtlFn<K, V>>,
    /// `β · E_MAX · 1000` (f64 bits): multiplied by delta (µs) gives XFetch's reach in ns. With
    /// automatic β it is the largest β handed out so far, so the hit path stays conservative.
    reach_ns_per_us: AtomicU64,
    /// The lean hit path's clock: the system clock's coarse clock when the clock is the system
    /// clock and β is fixed and finite (no rate meters), else a coarse clock that is never
    /// trusted, so the lean path always defers to [`Engine::after_lean`]. The hit path thus
    /// has no branch for the features that are off.
    coarse: &'static Coarse,
    is_lean: bool,
    /// What the hit path reads: `coarse`, or the never-trusted clock while a hand-off window is
    /// open, which sends blocking hitters to [`Engine::after_lean`] to yield there. Only ever
    /// holds `&'static Coarse` pointers.
    lean: AtomicPtr<Coarse>,
    /// `⌈β · E_MAX · 1000⌉` as an integer: the lean path's and the tier's reach (with
    /// automatic β the largest handed out so far, like `reach_ns_per_us`).
    reach_int: AtomicU64,
    /// Each thread's most recently hit entry (see `hot`); filled only if the store keeps
    /// write versions.
    hot: HotTier<K, V>,
    pub(crate) meters: Option<RateMeters<K>>,
    /// How far the cheap clock may lag.
    lag: u64,
    pub(crate) flights: Arc<FlightMap<K, Result<V, Error<E>>>>,
    /// Until when blocking hitters yield after each hit (see `handed_off`), plus `lag`: it is
    /// compared with hit horizons (`recent + lag`).
    handoff_until: AtomicU64,
    pub(crate) refreshes: RefreshSlots<K>,
    pub(crate) fences: Fences,
    pub(crate) stats: Stats,
    /// The `Arc` this engine lives in, for the few cold-path places that keep it beyond the
    /// call (a background refresh, a detached leader): the facades' hit paths then pass a
    /// plain `&Engine` and keep one register fewer across the store probe.
    this: Weak<Self>,
}

impl<K, V, E, S> Engine<K, V, E, S> {
    /// The `Debug` of both facades: the function's name and TTL.
    pub(crate) fn describe(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        facade: &str,
    ) -> std::fmt::Result {
        f.debug_struct(facade)
            .field("name", &self.ns.name())
            .field("ttl", &self.cfg.ttl)
            .finish_non_exhaustive()
    }

    /// A new handle on this engine's `Arc` (the engine is always built in one, by the
    /// builder, and is alive while a method runs on it).
    pub(crate) fn arc(&self) -> Arc<Self> {
        self.this
            .upgrade()
            .expect("an engine is only reached through its live Arc")
    }
}

impl<K, V, E, S> Engine<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    // One caller (the builder), which hands over its validated parts one by one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: S,
        ns: Namespace,
        clock: EngineClock,
        draws: Draws,
        compute: ComputeFn<K, V, E>,
        cfg: Config,
        ttl_of: Option<TtlFn<K, V>>,
        this: Weak<Self>,
    ) -> Self {
        let lag = clock.recent_lag();
        let stats = Stats::new(&ns.name);
        let refreshes = RefreshSlots::with_limit(cfg.max_refreshes);
        let reach = theory::reach(1000.0, if cfg.auto.is_some() { 1.0 } else { cfg.beta });
        // The tier (and the fixed-β lean path) judge hits on the coarse clock, with an integer
        // reach: automatic β too, whose reach only widens (`widen_reach`).
        let lean = clock
            .coarse()
            .filter(|_| cfg.auto.is_some() || cfg.beta.is_finite());
        // Rounded up, so the lean path stays conservative: it never skips a draw that could
        // fire (`as` saturates an infinite or huge reach at u64::MAX).
        let reach_int = reach.ceil() as u64;
        Engine {
            reach_ns_per_us: AtomicU64::new(reach.to_bits()),
            reach_int: AtomicU64::new(reach_int),
            hot: HotTier::new(),
            is_lean: lean.is_some() && cfg.auto.is_none(),
            coarse: lean.unwrap_or_else(Coarse::never),
            lean: AtomicPtr::new(ptr(lean.unwrap_or_else(Coarse::never))),
            meters: cfg.auto.map(|_| RateMeters::new()),
            lag,
            store,
            ns,
            clock,
            draws,
            compute,
            cfg,
            ttl_of,
            flights: Arc::new(FlightMap::new()),
            handoff_until: AtomicU64::new(0),
            refreshes,
            fences: Fences::new(),
            stats,
            this,
        }
    }

    /// The lean path's verdict on an entry found in the store: `Some(horizon)` for a hit
    /// (counted), `None` when [`Engine::after_lean`] must look again (automatic β, in a
    /// hand-off window, near expiry, or a hit due for the periodic clock check, which the hit
    /// path leaves to the cold path so that no value stays live across a call).
    #[inline(always)]
    pub(crate) fn lean_hit(&self, entry: &Entry<V>) -> Option<u64> {
        // The horizon is ≥ now, so a positive gap here is a positive gap now, and a gap beyond
        // δ·β·E_MAX cannot trigger whatever the draw (xfetch::draw_needed). An UNTRUSTED
        // horizon saturates the gap to 0: the slow path reads the precise clock.
        // SAFETY: `lean` only ever holds pointers made from `&'static Coarse` (see `ptr`).
        let coarse = unsafe { &*self.lean.load(Ordering::Relaxed) };
        let horizon = coarse.horizon();
        (self.is_lean
            && beyond_reach(
                entry.delta_us,
                entry.expires_at,
                horizon,
                self.reach_int.load(Ordering::Relaxed),
            )
            && self.stats.try_hit())
        .then_some(horizon)
    }

    /// The tier's hit: `f` on this thread's tier entry for `key` if it is current (no write of
    /// the key returned since it was read), beyond XFetch reach on the coarse clock, no clock
    /// check is due and no hand-off window is open. Counted like a lean hit; writes only lines
    /// of this thread (its stripe, its slot).
    #[inline(always)]
    pub(crate) fn hot_read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.stats.try_hot(|index| {
            // SAFETY: `try_hot` passes the stripe index this thread owns.
            unsafe {
                self.hot.with(index, |e| {
                    // SAFETY: as in `lean_hit`.
                    let coarse = &*self.lean.load(Ordering::Relaxed);
                    let fresh = e.key.borrow() == key
                        && e.current()
                        && beyond_reach(
                            e.delta_us,
                            e.expires_at,
                            coarse.horizon(),
                            self.reach_int.load(Ordering::Relaxed),
                        );
                    if !fresh {
                        return None;
                    }
                    e.unmetered.set(e.unmetered.get() + 1);
                    Some(f(&e.value))
                })
            }
        })
    }

    /// The hit path of both facades: `Ok(value)` for a tier or lean hit, else the store's
    /// lookup for the cold path. The entry is moved out only on a hit, so a hit never copies
    /// it into another enum.
    #[inline(always)]
    pub(crate) fn try_lean<Q>(&self, key: &Q) -> Result<V, Lookup<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.hot_read(key, V::clone) {
            return Ok(value);
        }
        let lookup = self.store.get_now(&self.ns, key);
        if let Lookup::Found(entry) = &lookup {
            if self.lean_hit(entry).is_some() {
                if let Lookup::Found(entry) = lookup {
                    return Ok(entry.value);
                }
                unreachable!("matched just above");
            }
        }
        Err(lookup)
    }

    /// Where [`Engine::lean_hit`] said no: `Ok((value, horizon))` if the call is a hit after
    /// all (the general path, a lean function in a hand-off window, a hit due for a clock
    /// check), else what the slow path gets. A hit here may admit the key into this thread's
    /// tier ([`Engine::admit`]).
    #[inline(never)]
    pub(crate) fn after_lean<Q>(&self, key: &Q, lookup: Lookup<V>) -> Result<(V, u64), Probe<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K> + 'static,
    {
        let out = if self.is_lean {
            self.lean_cold(lookup)
        } else {
            self.general(key, lookup)
        };
        if out.is_ok() {
            self.admit(key);
        }
        out
    }

    /// The fixed-β lean function's cold hit (a hand-off window or a clock check due).
    fn lean_cold(&self, lookup: Lookup<V>) -> Result<(V, u64), Probe<V>> {
        let entry = match lookup {
            Lookup::Found(entry) => entry,
            Lookup::Missing => return Err(Probe::Miss),
            Lookup::NotLocal => return Err(Probe::NotLocal),
        };
        let horizon = self.coarse.horizon();
        if beyond_reach(
            entry.delta_us,
            entry.expires_at,
            horizon,
            self.reach_int.load(Ordering::Relaxed),
        ) && (!self.stats.hit() || self.clock_checked(self.coarse, horizon))
        {
            self.end_handoff_window(horizon);
            Ok((entry.value, horizon))
        } else {
            Err(Probe::NearExpiry(entry))
        }
    }

    /// A cold hit of `key`: admits it into this thread's tier (see `HotTier::admit`: a key
    /// that missed the tier twice in a row, or whose tier entry went stale), if the store keeps
    /// write versions and this thread has a stripe.
    fn admit<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        let (Some(versions), Some(index)) = (self.store.versions(), crate::stats::own_stripe())
        else {
            return;
        };
        let read = || match self.store.get_now(&self.ns, key) {
            Lookup::Found(entry) => Some(entry),
            _ => None,
        };
        // SAFETY: `own_stripe` is the stripe index this thread owns.
        let old = unsafe { self.hot.admit(index, versions, key, read) };
        if let (Some(old), Some(m)) = (old, &self.meters) {
            let n = old.unmetered.get();
            if n > 0 {
                m.record::<K>(&old.key, self.clock.recent(), n);
            }
        }
    }

    /// Any clock, automatic β (rate meters on the hit path), β = ∞.
    fn general<Q>(&self, key: &Q, lookup: Lookup<V>) -> Result<(V, u64), Probe<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K> + 'static,
    {
        if let Some(m) = &self.meters {
            let now = self.clock.recent();
            m.tick(key, now);
            // The tier's hits of this thread, batched: one meter update per cold hit.
            if let Some(index) = crate::stats::own_stripe() {
                // SAFETY: `own_stripe` is the stripe index this thread owns.
                unsafe {
                    self.hot
                        .take_unmetered(index, |k, n| m.record::<K>(k, now, n))
                };
            }
        }
        let entry = match lookup {
            Lookup::Found(entry) => entry,
            Lookup::Missing => return Err(Probe::Miss),
            Lookup::NotLocal => return Err(Probe::NotLocal),
        };
        let recent = self.clock.recent();
        let worst_now = recent.saturating_add(self.lag);
        let gap = entry.expires_at.saturating_sub(worst_now);
        let reach = f64::from_bits(self.reach_ns_per_us.load(Ordering::Relaxed));
        if gap > 0 && gap as f64 > entry.delta_us as f64 * reach {
            // The hit path's count first (this path never ran it for this call: the lean test
            // fails before counting off the lean path); when it says a check is due, the full
            // count decides.
            let checked = self.stats.try_hit()
                || match self.clock.coarse() {
                    Some(coarse) => !self.stats.hit() || self.clock_checked(coarse, worst_now),
                    None => {
                        self.stats.hit();
                        true
                    }
                };
            if checked {
                if !std::ptr::eq(self.coarse, Coarse::never()) {
                    // Automatic β on the system clock: its tier reads `lean` too.
                    self.end_handoff_window(worst_now);
                }
                return Ok((entry.value, worst_now));
            }
        }
        Err(Probe::NearExpiry(entry))
    }

    /// Every [`CHECK_EVERY`](crate::stats::CHECK_EVERY)-th hit of a thread: is the coarse
    /// clock still ticking? If its tick thread is starved or gone (a forked child), the hit
    /// just counted is taken back and the call goes to the slow path, which reads the precise
    /// clock; the clock stays untrusted (every call precise) until the tick thread runs again.
    #[cold]
    #[inline(never)]
    fn clock_checked(&self, coarse: &'static Coarse, horizon: u64) -> bool {
        if coarse.is_stale(horizon) {
            self.stats.unhit();
            false
        } else {
            self.stats.hit_checked();
            true
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
            let until = self
                .clock
                .recent()
                .saturating_add(HANDOFF_WINDOW_NS)
                .saturating_add(self.lag);
            self.handoff_until.fetch_max(until, Ordering::SeqCst);
            // Lean hits now take `after_lean`, whose facade yields: the hit path itself has no
            // branch for the window.
            self.lean.store(ptr(Coarse::never()), Ordering::SeqCst);
        }
        mode.hand_off();
    }

    /// A lean hit in `after_lean` at `horizon`: if no hand-off window is open any more, lean
    /// hits go back to the hit path. The second look closes the race with a window opened
    /// meanwhile (it then stays open).
    fn end_handoff_window(&self, horizon: u64) {
        let coarse = ptr(self.coarse);
        if self.handoff_until.load(Ordering::SeqCst) <= horizon
            && self.lean.load(Ordering::Relaxed) != coarse
        {
            self.lean.store(coarse, Ordering::SeqCst);
            if self.handoff_until.load(Ordering::SeqCst) > horizon {
                self.lean.store(ptr(Coarse::never()), Ordering::SeqCst);
            }
        }
    }

    /// Automatic β handed out `beta` for some key: widen the hit path's reach to cover it, so
    /// the hit path stays conservative (it never skips a draw that could fire).
    pub(crate) fn widen_reach(&self, beta: f64) {
        // Only automatic β widens. The tier's integer reach widens with it, rounded up (and
        // saturated by `as`), so the tier never skips a draw the general path would make.
        let reach = theory::reach(1000.0, beta);
        self.reach_ns_per_us
            .fetch_max(reach.to_bits(), Ordering::Relaxed);
        self.reach_int
            .fetch_max(reach.ceil() as u64, Ordering::Relaxed);
    }

    /// See [`Engine::handed_off`]: is a hand-off window open at a hit's `horizon`? One relaxed
    /// load on the blocking hit path.
    #[inline(always)]
    pub(crate) fn handing_off(&self, horizon: u64) -> bool {
        self.handoff_until.load(Ordering::Relaxed) > horizon
    }

    /// See [`Engine::handed_off`]: yields if a hand-off window is open.
    #[inline]
    pub(crate) fn yield_if_handing_off(&self) {
        if self.handing_off(self.clock.recent().saturating_add(self.lag)) {
            std::thread::yield_now();
        }
    }

    /// How long `value` lives: its own TTL (`Builder::ttl_with`, evaluated once per
    /// computation or insert) or the function's.
    pub(crate) fn ttl_for(&self, key: &K, value: &V) -> Duration {
        match &self.ttl_of {
            Some(f) => f(key, value),
            None => self.cfg.ttl,
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
        self.compute_and_store_fenced(key, lock, || {}).await.0
    }

    /// [`Engine::compute_and_store`], also saying whether the write was fenced off (an
    /// invalidation or a newer value landed while computing: the value may predate the
    /// invalidation, so only the caller that asked before it may have it).
    /// `before_shared_write` runs just before a write to a shared store is sent (the leader
    /// closes its flight to new joiners there; see `Leader::close_to_joiners`).
    pub(crate) async fn compute_and_store_fenced(
        &self,
        key: &K,
        lock: Option<S::Lock>,
        before_shared_write: impl FnOnce(),
    ) -> (Result<V, Error<E>>, bool) {
        let mut fenced = false;
        bump!(self.stats, computations);
        let fence = self.fences.snapshot(key);
        // An unlocked computation on a shared store takes a version ticket first, so its write
        // cannot land over a newer value or an invalidation from another process. Without one
        // (the store is failing) its value is returned but not written.
        let mut unfenced = false;
        let lock = match lock {
            Some(lock) => Some(lock),
            None if self.store.is_shared() && !self.cfg.ttl.is_zero() => {
                match self.store.write_ticket(&self.ns, key).await {
                    Ok(permit) => permit,
                    Err(err) => {
                        bump!(self.stats, store_errors);
                        tracing::debug!(name = %self.ns.name, error = %err, "no write ticket; the value will not be stored");
                        unfenced = true;
                        None
                    }
                }
            }
            None => None,
        };
        let t0 = self.clock.now();
        let out = self.compute.run(key).await;
        let t1 = self.clock.now();
        self.stats.compute_time(t1.saturating_sub(t0));
        let value = match out {
            Ok(v) => v,
            Err(e) => return (Err(e), false),
        };
        // Evaluated once per computation; a zero TTL (the function's, or one `ttl_with` gives
        // this value) means "do not store it".
        let ttl = if self.cfg.ttl.is_zero() {
            Duration::ZERO
        } else {
            self.ttl_for(key, &value)
        };
        if unfenced {
            drop(lock);
        } else if self.fences.snapshot(key) != fence {
            // Invalidated (or replaced by `insert`) while computing: the caller gets the value
            // it asked for, but the store keeps the invalidation.
            bump!(self.stats, fenced_writes);
            fenced = true;
            drop(lock);
        } else if !ttl.is_zero() {
            use futures::FutureExt;
            let entry = Entry {
                value: value.clone(),
                delta_us: t1.saturating_sub(t0).div_ceil(1000),
                expires_at: t1.saturating_add(saturating_nanos(ttl)),
                write_id: 0,
            };
            // A store that answers at once: fence check and write together under the fence
            // lock (see `fence`), so an invalidation never sees the older value land after it.
            // (Such a store may act when its future is created, so that happens under the lock.)
            let permitted = lock.is_some();
            let mut args = Some((entry, lock));
            let mut pending = None;
            let done = if self.store.is_shared() {
                before_shared_write();
                None
            } else {
                let _guard = self.fences.guard(key);
                if self.fences.snapshot(key) != fence {
                    Some(Ok(Written::Fenced))
                } else {
                    let (entry, lock) = args.take().expect("unused");
                    let mut write = Box::pin(self.store.set(&self.ns, key, entry, ttl, lock));
                    let now = (&mut write).now_or_never();
                    if now.is_none() {
                        pending = Some(write);
                    }
                    now
                }
            };
            let written = match (done, pending, args) {
                (Some(w), _, _) => w,
                (None, Some(write), _) => write.await,
                (None, None, Some((entry, lock))) => {
                    self.store.set(&self.ns, key, entry, ttl, lock).await
                }
                (None, None, None) => unreachable!("the write was either made or kept"),
            };
            match written {
                Ok(Written::Stored) if !permitted && self.fences.snapshot(key) != fence => {
                    // An invalidation raced with a write that needed I/O, on a store that does
                    // not fence writes itself: undo it. (A write that carried a permit was
                    // fenced by the store: had the invalidation or an `insert` landed first, the
                    // write would have been refused; it landed first, so the newer operation
                    // replaced it. Undoing it then would delete the newer value.)
                    bump!(self.stats, fenced_writes);
                    fenced = true;
                    let _ = self.store.invalidate(&self.ns, key).await;
                }
                Ok(Written::Stored) if self.fences.snapshot(key) != fence => {
                    // Landed before the newer operation, which replaced it in the store; the
                    // followers must not be handed it (`leader`, rule 2).
                    fenced = true;
                }
                Ok(Written::Stored) => {}
                Ok(Written::Fenced) => {
                    bump!(self.stats, fenced_writes);
                    fenced = true;
                    tracing::info!(name = %self.ns.name, "a newer value or an invalidation landed first; the write was fenced");
                }
                Err(err) => {
                    bump!(self.stats, store_errors);
                    tracing::debug!(name = %self.ns.name, error = %err, "store write failed");
                }
            }
        }
        self.refreshes.clear_backoff(key);
        (Ok(value), fenced)
    }
}

/// The lean path's test: is `entry` further from expiry than XFetch can reach,
/// `horizon + δ·reach < expires_at`? Either product or sum overflowing means no (so an
/// UNTRUSTED horizon, `u64::MAX`, never passes), which is what the saturating form
/// `expires_at − horizon > δ·reach` says, in fewer instructions.
#[inline(always)]
fn beyond_reach(delta_us: u64, expires_at: u64, horizon: u64, reach_int: u64) -> bool {
    (horizon as u128 + delta_us as u128 * reach_int as u128) < expires_at as u128
}

/// The pointer form of a coarse clock, for [`Engine::lean`].
fn ptr(c: &'static Coarse) -> *mut Coarse {
    c as *const Coarse as *mut Coarse
}

/// `key` as a `&K`: borrowed when `Q` is `K` itself (the common call `get(&k)`), an owned copy
/// when it is a borrowed form (`&str` for `String`). Used where the slow path, a store or the
/// rate meters need the owned key type.
#[inline]
pub(crate) fn owned_or_same<K, Q>(key: &Q) -> Cow<'_, K>
where
    K: Borrow<Q> + Clone + 'static,
    Q: ?Sized + ToOwned<Owned = K> + 'static,
{
    if TypeId::of::<Q>() == TypeId::of::<K>() {
        // SAFETY: `Q` and `K` are the same type (equal type ids, both `'static`), so a `&Q` is a
        // `&K`; `K` is sized, so the pointer is thin and the cast keeps its address.
        Cow::Borrowed(unsafe { &*(key as *const Q).cast::<K>() })
    } else {
        Cow::Owned(key.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{memoize_stampede, MemoryStore};
    use std::borrow::Cow;

    #[test]
    fn a_hand_off_window_sends_lean_hits_to_the_cold_path_until_it_closes() {
        let store = MemoryStore::<u32, u32>::new(10).unwrap();
        let f = memoize_stampede(&store, Duration::from_secs(60))
            .build_blocking_infallible(|k: &u32| k + 1)
            .unwrap();
        let e = f.engine();
        let lean = || e.lean.load(Ordering::SeqCst);
        assert_eq!(f.get(&1).unwrap(), 2);
        assert_eq!(
            lean(),
            ptr(e.coarse),
            "a fixed-β system-clock function is lean"
        );
        e.handed_off(1);
        assert_eq!(lean(), ptr(Coarse::never()), "the window is open");
        // Hits still count while the window is open (they just yield).
        let hits = f.stats().hits;
        assert_eq!(f.get(&1).unwrap(), 2);
        assert_eq!(f.stats().hits, hits + 1);
        // The window is 5 ms of coarse time: a hit after that puts the lean path back.
        let closed = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(2));
            f.get(&1).unwrap();
            lean() == ptr(e.coarse)
        });
        assert!(closed, "the window never closed");
        assert_eq!(f.stats().computations, 1);
        assert_eq!(f.stats().slow_calls, 1);
    }

    /// The tier serves a hot key after its first cold hit, with the fixed-β and the default
    /// (automatic β) builder alike, and a write returned ends it at once.
    #[test]
    fn a_hot_key_is_served_from_the_thread_tier_until_a_write() {
        let store = MemoryStore::<String, u32>::new(10).unwrap();
        let fixed = memoize_stampede(&store, Duration::from_secs(60))
            .beta(1.0)
            .build_blocking_infallible(|k: &String| k.len() as u32)
            .unwrap();
        let auto = memoize_stampede(&store, Duration::from_secs(60))
            .build_blocking_infallible(|k: &String| k.len() as u32 + 100)
            .unwrap();
        std::thread::spawn(move || {
            for (f, base) in [(fixed, 0), (auto, 100)] {
                let e = f.engine();
                assert_eq!(f.get("abc").unwrap(), base + 3); // miss
                assert_eq!(e.hot_read("abc", |v| *v), None, "not admitted by a miss");
                assert_eq!(f.get("abc").unwrap(), base + 3); // cold hit: admitted
                let index = crate::stats::own_stripe().expect("a stripe after a hit");
                // SAFETY: this thread owns `index`.
                let held = unsafe { e.hot.with(index, |h| Some(h.key.clone())) };
                assert_eq!(held.as_deref(), Some("abc"));
                let hits = f.stats().hits;
                assert_eq!(e.hot_read("abc", |v| *v), Some(base + 3));
                assert_eq!(f.get("abc").unwrap(), base + 3);
                assert_eq!(f.stats().hits, hits + 2, "tier hits count");
                f.insert("abc", 42).unwrap();
                assert_eq!(e.hot_read("abc", |v| *v), None, "stale after insert");
                assert_eq!(f.get("abc").unwrap(), 42);
                f.invalidate("abc").unwrap();
                assert_eq!(e.hot_read("abc", |v| *v), None, "stale after invalidate");
                assert_eq!(f.get("abc").unwrap(), base + 3);
                assert_eq!(f.stats().computations, 2);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_owned_key_is_borrowed_and_a_borrowed_form_copied() {
        let k = "abc".to_string();
        assert!(
            matches!(owned_or_same::<String, String>(&k), Cow::Borrowed(b) if std::ptr::eq(b, &k))
        );
        assert!(matches!(owned_or_same::<String, str>("abc"), Cow::Owned(o) if o == "abc"));
        assert!(matches!(owned_or_same::<u64, u64>(&7), Cow::Borrowed(&7)));
    }
}
