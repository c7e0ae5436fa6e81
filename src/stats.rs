//! Counters per memoized function, and their snapshot.
//!
//! With the `metrics` cargo feature, every counter is also exported through the `metrics` crate
//! (so any exporter, e.g. Prometheus, can scrape it), labelled `function="<name>"`:
//! `herdless_fast_hits_total`, `herdless_slow_hits_total` (hits = fast + slow), and
//! `herdless_<field>_total` for every other [`StatsSnapshot`] field except `calls`/`hits`
//! (calls = fast hits + `slow_calls`), plus the histograms `herdless_compute_seconds` (each
//! execution of the closure) and `herdless_wait_seconds` (each wait for another caller).
//!
//! Counters are relaxed atomics. The hit path touches exactly one (`hits`), on its own cache
//! line, so that concurrent hits do not also fight over the other counters; `calls` is derived.

use std::num::NonZeroU8;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        pub(crate) struct Counters {
            /// Hits decided on the slow path (close to expiry); fast hits have their own line.
            pub(crate) slow_hits: AtomicU64,
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A point-in-time copy of one memoized function's counters.
        ///
        /// ```
        /// use herdless::{memoize_stampede, MemoryStore};
        /// use std::time::Duration;
        /// let store = MemoryStore::<u32, u32>::new(16).unwrap();
        /// let f = memoize_stampede(&store, Duration::from_secs(60))
        ///     .build_blocking_infallible(|k: &u32| k * 2)
        ///     .unwrap();
        /// f.get(&1).unwrap();
        /// f.get(&1).unwrap();
        /// let s = f.stats();
        /// assert_eq!((s.calls, s.hits, s.hard_misses, s.computations), (2, 1, 1, 1));
        /// ```
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            /// Calls answered (hits plus every other outcome).
            pub calls: u64,
            /// Calls served from a stored value without waiting (fresh, or refreshing in the
            /// background).
            pub hits: u64,
            $($(#[$doc])* pub $name: u64,)*
        }

        /// `metrics`-crate handles, one per counter, labelled with the function name.
        #[cfg(feature = "metrics")]
        pub(crate) struct MetricCounters {
            pub(crate) fast_hits: metrics::Counter,
            pub(crate) slow_hits: metrics::Counter,
            $(pub(crate) $name: metrics::Counter,)*
            pub(crate) compute_seconds: metrics::Histogram,
            pub(crate) wait_seconds: metrics::Histogram,
        }

        #[cfg(feature = "metrics")]
        impl MetricCounters {
            fn new(function: &str) -> Self {
                let label = [("function", function.to_string())];
                MetricCounters {
                    fast_hits: metrics::counter!("herdless_fast_hits_total", &label),
                    slow_hits: metrics::counter!("herdless_slow_hits_total", &label),
                    $($name: metrics::counter!(concat!("herdless_", stringify!($name), "_total"), &label),)*
                    compute_seconds: metrics::histogram!("herdless_compute_seconds", &label),
                    wait_seconds: metrics::histogram!("herdless_wait_seconds", &label),
                }
            }
        }

        impl Counters {
            pub(crate) fn snapshot(&self, fast_hits: u64) -> StatsSnapshot {
                let mut s = StatsSnapshot {
                    calls: 0,
                    hits: fast_hits + self.slow_hits.load(Ordering::Relaxed),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                };
                s.calls = fast_hits + s.slow_calls;
                s
            }
        }
    };
}

counters! {
    /// Calls that left the lock-free hit path (near expiry, miss, store lookup).
    slow_calls,
    /// Background refreshes started after an XFetch trigger won the refresh slot (and lock).
    early_refreshes_started,
    /// Background refreshes that stored a new value.
    early_refreshes_completed,
    /// Background refreshes whose computation failed (the current value is kept).
    early_refreshes_failed,
    /// XFetch triggers that found a refresh already running or backing off, and kept serving.
    early_refreshes_skipped,
    /// XFetch triggers skipped because the function already ran its maximum of concurrent
    /// background refreshes (`Builder::max_refreshes`); a later call triggers again.
    early_refreshes_throttled,
    /// Calls that found no unexpired value.
    hard_misses,
    /// Executions of the closure (hard misses and refreshes).
    computations,
    /// Calls that waited for another caller's computation and took its result.
    coalesced_waiters,
    /// Calls answered with an expired value because the policy allows it while another computes.
    stale_served,
    /// Calls answered with the last value because its recomputation failed within the
    /// `stale_if_error` grace (the failure is also counted in `errors`).
    stale_served_on_error,
    /// Calls that returned an error (closure error, fail-fast, wait timeout, panic), and
    /// failed recomputations answered by `stale_if_error`.
    errors,
    /// Waiters that took over a key whose leader left before computing (a cancelled caller
    /// still waiting on another process's lock) or whose background refresh failed.
    takeovers,
    /// Callers that gave up on a hard miss before it was answered (their future was dropped,
    /// e.g. by a timeout). A computation they started runs on and stores its value.
    abandoned_callers,
    /// Store operations that failed or timed out (the call then computes locally: fail-open).
    store_errors,
    /// Writes the store refused because the lock was lost (fencing).
    fenced_writes,
    /// Hard misses that waited for another process's lock holder.
    remote_waits,
    /// `invalidate` and `invalidate_all` calls.
    invalidations,
    /// Values stored by `insert` / `insert_with_delta`.
    inserts,
}

/// One counter per line, grouped and aligned, for logs and debugging output:
///
/// ```text
/// calls                2
///   hits               1
///   slow calls         1
///   hard misses        1
/// computations         1
/// early refreshes
///   started            0
///   completed          0
/// ...
/// fenced writes        0
/// ```
///
/// ```
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<u32, u32>::new(16).unwrap();
/// let f = memoize_stampede(&store, Duration::from_secs(60))
///     .build_blocking_infallible(|k: &u32| k * 2)
///     .unwrap();
/// f.get(&1).unwrap();
/// f.get(&1).unwrap();
/// let text = f.stats().to_string();
/// println!("{text}");
/// assert!(text.lines().any(|l| l.split_whitespace().eq(["computations", "1"])));
/// assert!(text.lines().count() > 10);
/// assert!(text.starts_with("calls                2\n  hits               1\n"));
/// ```
impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (indented?, label, value); `None` is a group heading.
        let rows: [(bool, &str, Option<u64>); 22] = [
            (false, "calls", Some(self.calls)),
            (true, "hits", Some(self.hits)),
            (true, "slow calls", Some(self.slow_calls)),
            (true, "hard misses", Some(self.hard_misses)),
            (false, "computations", Some(self.computations)),
            (false, "early refreshes", None),
            (true, "started", Some(self.early_refreshes_started)),
            (true, "completed", Some(self.early_refreshes_completed)),
            (true, "failed", Some(self.early_refreshes_failed)),
            (true, "skipped", Some(self.early_refreshes_skipped)),
            (true, "throttled", Some(self.early_refreshes_throttled)),
            (false, "coalesced waiters", Some(self.coalesced_waiters)),
            (false, "takeovers", Some(self.takeovers)),
            (false, "abandoned callers", Some(self.abandoned_callers)),
            (false, "stale served", Some(self.stale_served)),
            (true, "on error", Some(self.stale_served_on_error)),
            (false, "remote waits", Some(self.remote_waits)),
            (false, "errors", Some(self.errors)),
            (false, "store errors", Some(self.store_errors)),
            (false, "fenced writes", Some(self.fenced_writes)),
            (false, "invalidations", Some(self.invalidations)),
            (false, "inserts", Some(self.inserts)),
        ];
        let width = rows
            .iter()
            .filter_map(|r| r.2)
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(1);
        let mut first = true;
        for (indented, label, value) in rows {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            let indent = if indented { "  " } else { "" };
            let label = format!("{indent}{label}");
            match value {
                Some(v) => write!(f, "{label:<20} {v:>width$}")?,
                None => f.write_str(&label)?,
            }
        }
        Ok(())
    }
}

/// The hit counter: one stripe per thread, so that a hit costs one increment on a cache line
/// no other thread writes (a `fetch_add` costs ~5 ns here even uncontended, a fifth of a whole
/// cache probe). A thread owns its stripe index for its lifetime; threads beyond [`STRIPES`]
/// share one atomic. Exact: no increment is ever lost.
///
/// The periodic clock check (every [`CHECK_EVERY`] hits of a thread) counts down in the same
/// thread local that holds the stripe's offset, so a hit's whole bookkeeping is one thread-local
/// decrement and one stripe increment. A thread without a stripe of its own (before its first
/// hit, beyond [`STRIPES`], or exiting) addresses one more stripe, the *sentinel*, with its
/// countdown held at 1: its next hit is always due, so it always lands in the cold path, which
/// counts elsewhere. The sentinel is never written, and the hit path needs no bounds test.
pub(crate) struct HitCounter {
    /// Inline rather than boxed: a hit addresses its stripe from the engine pointer it already
    /// holds, without loading another pointer.
    stripes: [Stripe; STRIPES + 1],
    shared: AtomicU64,
}

pub(crate) const STRIPES: usize = 64;
/// Every this many hits of a thread (of all its memoized functions together), the hit path
/// checks that the coarse clock has not frozen (see `clock::Coarse::is_stale`).
pub(crate) const CHECK_EVERY: u64 = 256;

#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicU64);

impl Stripe {
    /// Adds `by` (wrapping). Only the owning thread writes its stripe, so a plain load and
    /// store suffice: no read-modify-write race, and no locked instruction.
    #[inline(always)]
    fn add_owned(&self, by: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }
}

/// This thread's stripe index (or `STRIPES` if all are taken), returned when the thread exits.
struct StripeSlot(usize);

fn free_stripes() -> &'static std::sync::Mutex<Vec<usize>> {
    static FREE: std::sync::OnceLock<std::sync::Mutex<Vec<usize>>> = std::sync::OnceLock::new();
    FREE.get_or_init(|| std::sync::Mutex::new((0..STRIPES).rev().collect()))
}

impl StripeSlot {
    fn acquire() -> Self {
        let mut free = free_stripes().lock().unwrap_or_else(|p| p.into_inner());
        StripeSlot(free.pop().unwrap_or(STRIPES))
    }
}

impl Drop for StripeSlot {
    fn drop(&mut self) {
        // Hits after this (from other thread-local destructors) go to the shared atomic.
        let _ = HOT.try_with(HotCounter::leave_stripe);
        if self.0 < STRIPES {
            // The Mutex orders this thread's last stripe writes before the next owner's.
            free_stripes()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.0);
        }
    }
}

/// The sentinel's offset: what [`HotCounter::offset`] holds for a thread without a stripe.
const SENTINEL: u32 = offset_of_stripe(STRIPES);

/// A thread's hit-path state, in one thread local so that one address serves both fields.
struct HotCounter {
    /// The byte offset of this thread's stripe in `HitCounter::stripes` (index × stripe size,
    /// so that a hit needs no multiply), [`SENTINEL`] until the thread's first cold hit.
    offset: std::cell::Cell<u32>,
    /// Hits until the next clock check. Held due while `offset` is the sentinel, so that
    /// every lean hit of such a thread goes cold.
    countdown: Countdown,
}

impl HotCounter {
    fn leave_stripe(&self) {
        self.offset.set(SENTINEL);
        self.countdown.set_due();
    }
}

/// Hits left until the next clock check, never 0: 1 means due. The lean path only ever moves
/// it from n > 1 to n − 1 (it cannot make it due, let alone 0), and only the cold path's count
/// ([`Countdown::tick`]) starts it over. A slow-path exit that counts nothing therefore leaves
/// a due countdown due: the next hit is checked (issue 19: a countdown left at 0 used to wrap
/// to 255 on the next lean hit, skipping a check and, without a stripe, writing the sentinel).
struct Countdown(std::cell::Cell<NonZeroU8>);

const DUE: NonZeroU8 = NonZeroU8::MIN;

impl Countdown {
    const fn due() -> Self {
        Countdown(std::cell::Cell::new(DUE))
    }
    /// `Some(left)` when not due: the lean path may count a hit, then store `left`.
    #[inline(always)]
    fn get(&self) -> Option<NonZeroU8> {
        NonZeroU8::new(self.0.get().get() - 1)
    }
    #[inline(always)]
    fn set_left(&self, left: NonZeroU8) {
        self.0.set(left);
    }
    fn set_due(&self) {
        self.0.set(DUE);
    }
    /// The cold path's count: true (and starts over at `CHECK_EVERY - 1`, so that a check runs
    /// every 255th hit) when due, else one hit less.
    fn tick(&self) -> bool {
        match self.get() {
            None => {
                self.0
                    .set(NonZeroU8::new((CHECK_EVERY - 1) as u8).expect("CHECK_EVERY > 1"));
                true
            }
            Some(left) => {
                self.0.set(left);
                false
            }
        }
    }
}

thread_local! {
    /// Constant-initialised and without a destructor: a plain load. `SLOT` owns the stripe
    /// index and returns it at thread exit.
    static HOT: HotCounter = const {
        HotCounter {
            offset: std::cell::Cell::new(SENTINEL),
            countdown: Countdown::due(),
        }
    };
    static SLOT: StripeSlot = StripeSlot::acquire();
}

/// The stripe index this thread owns, if any: the index of its slot in every function's tier
/// (`hot::HotTier`), which only this thread touches while it owns the index.
pub(crate) fn own_stripe() -> Option<usize> {
    let offset = HOT.try_with(|hot| hot.offset.get()).unwrap_or(SENTINEL);
    (offset < SENTINEL).then(|| offset as usize / std::mem::size_of::<Stripe>())
}

/// The byte offset of stripe `index` (`STRIPES`: the sentinel).
const fn offset_of_stripe(index: usize) -> u32 {
    (index * std::mem::size_of::<Stripe>()) as u32
}

impl Default for HitCounter {
    fn default() -> Self {
        HitCounter {
            stripes: std::array::from_fn(|_| Stripe::default()),
            shared: AtomicU64::new(0),
        }
    }
}

impl HitCounter {
    /// The hit path: unless a clock check is due on this thread (or it has no stripe), runs
    /// `hit` with this thread's stripe index, and if it answers, counts one hit. A clock check
    /// due, a thread without a stripe or `hit` saying `None`: nothing counted, and the caller's
    /// cold path counts with [`HitCounter::add_one`]. One thread-local compare and decrement
    /// and one increment on this thread's own line; the countdown never reaches 0 here, so a
    /// cold path that does not count leaves the next hit due as well (see [`Countdown`]).
    #[inline(always)]
    pub(crate) fn try_hot<R>(&self, hit: impl FnOnce(usize) -> Option<R>) -> Option<R> {
        HOT.with(|hot| {
            let left = hot.countdown.get()?;
            let out = hit(hot.offset.get() as usize / std::mem::size_of::<Stripe>())?;
            hot.countdown.set_left(left);
            // SAFETY: `offset` only ever holds `offset_of_stripe(i)` for some i ≤ STRIPES (its
            // initial value, `leave_stripe` and `add_one_cold` are its only writers): a whole,
            // aligned `Stripe` inside the array. It is the sentinel only while the countdown
            // is due (`Countdown::due`), which returned just above: the sentinel is never written.
            let s = unsafe {
                &*self
                    .stripes
                    .as_ptr()
                    .cast::<u8>()
                    .add(hot.offset.get() as usize)
                    .cast::<Stripe>()
            };
            s.add_owned(1);
            Some(out)
        })
    }

    /// This thread's own stripe, if it has one (not the sentinel).
    #[inline(always)]
    fn stripe(&self) -> Option<&Stripe> {
        let offset = HOT.with(|hot| hot.offset.get());
        if offset >= SENTINEL {
            return None;
        }
        Some(&self.stripes[offset as usize / std::mem::size_of::<Stripe>()])
    }

    /// Counts one hit; true when a clock check is due: the countdown runs out on this call (the
    /// lean path leaves a due countdown as it is and counts nothing). The
    /// countdown then starts over at `CHECK_EVERY - 1`: a check every 255th hit of a thread,
    /// so never more than [`CHECK_EVERY`] hits between two checks.
    #[inline]
    pub(crate) fn add_one(&self) -> bool {
        match self.stripe() {
            Some(s) => {
                s.add_owned(1);
                HOT.with(|hot| hot.countdown.tick())
            }
            None => self.add_one_cold(),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_one_cold(&self) -> bool {
        if HOT.with(|hot| hot.offset.get()) == SENTINEL {
            // The first cold hit of this thread claims a stripe (a thread beyond STRIPES, or
            // one whose slot is already gone, asks again each time: it is on the cold path).
            let index = SLOT.try_with(|s| s.0).unwrap_or(STRIPES);
            if index < STRIPES {
                HOT.with(|hot| hot.offset.set(offset_of_stripe(index)));
                return self.add_one();
            }
            HOT.with(HotCounter::leave_stripe);
        }
        self.shared.fetch_add(1, Ordering::Relaxed).wrapping_add(1) % CHECK_EVERY == 0
    }

    /// Takes back the hit just counted on this thread (the call was not a hit after all).
    #[cold]
    pub(crate) fn sub_one(&self) {
        match self.stripe() {
            Some(s) => s.add_owned(u64::MAX), // −1, wrapping
            None => {
                self.shared.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn total(&self) -> u64 {
        self.stripes[..STRIPES]
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(self.shared.load(Ordering::Relaxed), u64::wrapping_add)
    }
}

pub(crate) struct Stats {
    pub(crate) hits: HitCounter,
    pub(crate) c: Counters,
    #[cfg(feature = "metrics")]
    pub(crate) m: MetricCounters,
}

/// Counts one event in the snapshot counters and, with the `metrics` feature, in the exported
/// counter of the same name: `bump!(stats, hard_misses)`.
macro_rules! bump {
    ($stats:expr, $name:ident) => {{
        let s: &$crate::stats::Stats = &$stats;
        s.c.$name
            .fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        s.m.$name.increment(1);
    }};
}
pub(crate) use bump;

impl Stats {
    pub(crate) fn new(function: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = function;
        Stats {
            hits: HitCounter::default(),
            c: Counters::default(),
            #[cfg(feature = "metrics")]
            m: MetricCounters::new(function),
        }
    }
    /// The hit path's count of a fast hit (see [`HitCounter::try_hot`]): `None` when `hit`
    /// said no or the caller must check its clock first, in its cold path; nothing is counted.
    #[inline(always)]
    pub(crate) fn try_hot<R>(&self, hit: impl FnOnce(usize) -> Option<R>) -> Option<R> {
        let out = self.hits.try_hot(hit);
        #[cfg(feature = "metrics")]
        if out.is_some() {
            self.m.fast_hits.increment(1);
        }
        out
    }
    /// [`Stats::try_hot`] for a hit already judged: true when counted.
    #[inline(always)]
    pub(crate) fn try_hit(&self) -> bool {
        self.try_hot(|_| Some(())).is_some()
    }
    /// Counts a fast hit; true when the hit path is due to check its clock
    /// ([`CHECK_EVERY`]). The caller then either confirms the hit ([`Stats::hit_checked`]) or
    /// takes it back ([`Stats::unhit`]).
    #[inline]
    pub(crate) fn hit(&self) -> bool {
        let due = self.hits.add_one();
        #[cfg(feature = "metrics")]
        if !due {
            self.m.fast_hits.increment(1);
        }
        due
    }
    /// The hit [`Stats::hit`] said was due for a clock check passed it.
    #[cold]
    pub(crate) fn hit_checked(&self) {
        #[cfg(feature = "metrics")]
        self.m.fast_hits.increment(1);
    }
    /// Takes back the fast hit just counted: the clock check sent the call to the slow path.
    #[cold]
    pub(crate) fn unhit(&self) {
        self.hits.sub_one();
    }
    /// Records how long a computation took (exported with the `metrics` feature).
    #[inline]
    pub(crate) fn compute_time(&self, nanos: u64) {
        #[cfg(feature = "metrics")]
        self.m.compute_seconds.record(nanos as f64 / 1e9);
        #[cfg(not(feature = "metrics"))]
        let _ = nanos;
    }
    /// Records how long a caller waited for another's computation.
    #[inline]
    pub(crate) fn wait_time(&self, waited: std::time::Duration) {
        #[cfg(feature = "metrics")]
        self.m.wait_seconds.record(waited.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = waited;
    }
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        self.c.snapshot(self.hits.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn striped_hits_are_exact_with_more_threads_than_stripes() {
        let c = Arc::new(HitCounter::default());
        let threads: Vec<_> = (0..STRIPES + 36)
            .map(|_| {
                let c = c.clone();
                // All alive at once: some of them share the fallback atomic.
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add_one();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.total(), (STRIPES as u64 + 36) * 1000);
    }

    /// What the hit path does: `try_add_one`, and `add_one` in the cold path when it says no.
    /// Returns (answered on the lean path, a clock check was due).
    fn hit(c: &HitCounter) -> (bool, bool) {
        if c.try_hot(Some).is_some() {
            (true, false)
        } else {
            (false, c.add_one())
        }
    }

    fn sentinel(c: &HitCounter) -> u64 {
        c.stripes[STRIPES].0.load(Ordering::Relaxed)
    }

    #[test]
    fn the_hit_path_counts_exactly_and_checks_the_clock_within_check_every_hits() {
        let c = Arc::new(HitCounter::default());
        let c2 = c.clone();
        // A fresh thread: its first hit claims a stripe in the cold path (and checks).
        let due: Vec<u64> =
            std::thread::spawn(move || (1..=10 * CHECK_EVERY).filter(|_| hit(&c2).1).collect())
                .join()
                .unwrap();
        assert_eq!(c.total(), 10 * CHECK_EVERY);
        // The first hit, then every (CHECK_EVERY − 1)-th: never more than CHECK_EVERY apart.
        let expected: Vec<u64> = (0..)
            .map(|k| 1 + k * (CHECK_EVERY - 1))
            .take_while(|&n| n <= 10 * CHECK_EVERY)
            .collect();
        assert_eq!(due, expected);
        assert_eq!(sentinel(&c), 0, "sentinel written");
    }

    #[test]
    fn threads_without_a_stripe_take_the_cold_path_and_never_write_the_sentinel() {
        let c = Arc::new(HitCounter::default());
        let barrier = Arc::new(std::sync::Barrier::new(STRIPES + 36));
        let threads: Vec<_> = (0..STRIPES + 36)
            .map(|_| {
                let (c, barrier) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait(); // all alive at once: 36 of them get no stripe
                    let lean = (0..1000).filter(|_| hit(&c).0).count();
                    barrier.wait();
                    lean
                })
            })
            .collect();
        let without_stripe = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&lean| lean == 0)
            .count();
        assert_eq!(c.total(), (STRIPES as u64 + 36) * 1000);
        assert!(
            without_stripe >= 36,
            "{without_stripe} threads always took the cold path"
        );
        assert_eq!(sentinel(&c), 0, "sentinel written");
    }

    /// Issue 19: a hit due for a clock check that the cold path does not count (it left for
    /// the slow path: near expiry, a miss) used to leave the countdown at 0; the next lean hit
    /// wrapped it to 255 and skipped the check (and, without a stripe, wrote the sentinel).
    #[test]
    fn a_due_countdown_stays_due_until_the_cold_path_counts() {
        let c = Arc::new(HitCounter::default());
        let c2 = c.clone();
        let due = std::thread::spawn(move || {
            assert!(hit(&c2).1, "a fresh thread's first hit is checked");
            // Up to the next due hit on the lean path.
            let lean = (0..).take_while(|_| c2.try_hot(Some).is_some()).count();
            // That due hit went cold and counted nothing; so do the next ones.
            let still_due = (0..10).all(|_| c2.try_hot(Some).is_none());
            (lean, still_due, hit(&c2).1)
        })
        .join()
        .unwrap();
        assert_eq!(due, (CHECK_EVERY as usize - 2, true, true));
        assert_eq!(c.total(), CHECK_EVERY, "every counted hit, no more");
        assert_eq!(sentinel(&c), 0, "sentinel written");
        // A thread without a stripe is always due and never writes the sentinel.
        assert!((0..1000).all(|_| HitCounter::default().try_hot(Some).is_none()));
    }

    #[test]
    fn stripes_handed_over_between_threads_keep_their_counts() {
        let c = Arc::new(HitCounter::default());
        for _ in 0..3 * STRIPES {
            let c2 = c.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    c2.add_one();
                }
            })
            .join()
            .unwrap();
        }
        assert_eq!(c.total(), 3 * STRIPES as u64 * 10);
    }
}
