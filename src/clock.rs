//! Time, injected: the engine never reads a clock directly.
//!
//! Times are nanoseconds on a monotonic timeline private to each [`Clock`]. Two readings are
//! offered because a clock read is not free (about 28 ns for `Instant::now()` on the reference
//! VM, more than a whole `quick_cache` hit):
//! - [`Clock::now`] is precise; the engine reads it when a decision depends on it;
//! - [`Clock::recent`] is cheap and may lag `now` by at most [`Clock::recent_lag`]. The hit path
//!   reads it first and only pays for `now` when the value is close to its XFetch window.
//!
//! The system clock's cheap reading comes from one tick thread per process. The engine reads
//! it without dynamic dispatch (`EngineClock`), as one load of `time + lag`, so a hit does no
//! arithmetic on the clock at all. A tick thread that stops (starved past the lag, or absent in
//! a forked child) must not freeze time for the hit path: every 255th hit of a thread (within
//! `stats::CHECK_EVERY` = 256, all its memoized functions together: the countdown sits beside
//! the thread's hit-counter offset) compares the coarse reading with the precise one, a fork
//! handler marks the reading untrusted in the child, and an untrusted reading sends calls to
//! the precise clock (and restarts the tick thread in a child) until the tick thread runs
//! again. At most 254 hits per thread are served on a stale reading before that.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A monotonic clock in nanoseconds.
///
/// ```
/// use herdless::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(std::time::Duration::from_millis(5));
/// assert_eq!(clock.now() - t0, 5_000_000);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Precise monotonic time in nanoseconds.
    fn now(&self) -> u64;
    /// Cheap time in nanoseconds, never ahead of [`Clock::now`] and at most
    /// [`Clock::recent_lag`] behind it.
    fn recent(&self) -> u64 {
        self.now()
    }
    /// The most [`Clock::recent`] may lag [`Clock::now`], in nanoseconds.
    fn recent_lag(&self) -> u64 {
        0
    }
}

/// How often the coarse clock thread ticks.
const TICK: Duration = Duration::from_millis(2);
/// How far behind the coarse clock is assumed to be at worst: 100 ticks. A tick thread starved
/// past it, or gone (a forked child has no threads but the forking one), is caught by the hit
/// path's periodic check ([`Coarse::is_stale`]) or by the fork handler, and the clock then
/// reads the precise time until the tick thread runs again.
const COARSE_LAG: Duration = Duration::from_millis(200);
/// The coarse horizon while it cannot be trusted: it makes every hit-path gap zero, so calls
/// take the slow path, which reads the precise clock.
pub(crate) const UNTRUSTED: u64 = u64::MAX;

/// A coarse clock: a tick thread stores, every [`TICK`], the *horizon* `time + lag`, an upper
/// bound of the precise time for as long as the tick thread keeps up. The hit path compares
/// expiries with the horizon as it is, with one load and no arithmetic. One per process (plus
/// private ones in tests, whose tick thread can be paused).
pub(crate) struct Coarse {
    horizon: AtomicU64,
    /// The most the coarse time (`horizon − lag`) may lag the precise time while the tick
    /// thread is alive.
    pub(crate) lag: u64,
    origin: Instant,
    /// The process whose tick thread keeps `horizon` fresh (a forked child has none).
    ticker_pid: AtomicU32,
    /// Test hook: the tick thread skips its ticks, as if starved.
    paused: AtomicBool,
}

impl Coarse {
    fn start(lag: Duration) -> &'static Coarse {
        let lag = saturating_nanos(lag);
        let c: &'static Coarse = Box::leak(Box::new(Coarse {
            horizon: AtomicU64::new(lag),
            lag,
            origin: Instant::now(),
            ticker_pid: AtomicU32::new(std::process::id()),
            paused: AtomicBool::new(false),
        }));
        c.spawn_ticker();
        c
    }

    /// A coarse clock that is never trusted and never ticks: its horizon makes every lean hit
    /// test fail (engines off the lean path hold it).
    pub(crate) fn never() -> &'static Coarse {
        static NEVER: OnceLock<&'static Coarse> = OnceLock::new();
        NEVER.get_or_init(|| {
            Box::leak(Box::new(Coarse {
                horizon: AtomicU64::new(UNTRUSTED),
                lag: 0,
                origin: Instant::now(),
                // No process has a tick thread for it: `revive` is never reached (its gap
                // test never passes), and would start one otherwise, which is harmless.
                ticker_pid: AtomicU32::new(std::process::id()),
                paused: AtomicBool::new(true),
            }))
        })
    }

    fn spawn_ticker(&'static self) {
        std::thread::Builder::new()
            .name("herdless-clock".into())
            .spawn(move || loop {
                if !self.paused.load(Ordering::Relaxed) {
                    let h = self.elapsed().saturating_add(self.lag);
                    // Not `fetch_max`: a live tick makes an UNTRUSTED clock trusted again.
                    let _ =
                        self.horizon
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                                (cur == UNTRUSTED || cur < h).then_some(h)
                            });
                }
                std::thread::sleep(TICK);
            })
            .expect("spawn the herdless-clock thread");
    }

    #[inline]
    fn elapsed(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The horizon as stored: at least the precise time while the tick thread keeps up, and
    /// [`UNTRUSTED`] while it is known not to.
    #[inline(always)]
    pub(crate) fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Relaxed)
    }

    /// The precise time. It also pushes a trusted horizon forward (which keeps it fresh while
    /// the process is busy and the tick thread starved), and restarts the tick thread in a
    /// forked child.
    #[inline]
    pub(crate) fn now(&'static self) -> u64 {
        let n = self.elapsed();
        let h = n.saturating_add(self.lag);
        // Compare before writing: every hit reads the horizon's line, and a `fetch_max` takes
        // it from every core even when it changes nothing (the tick thread usually keeps the
        // horizon ahead of `h`).
        let cur = self.horizon.load(Ordering::Relaxed);
        let prev = if cur < h {
            self.horizon.fetch_max(h, Ordering::Relaxed)
        } else {
            cur
        };
        if prev == UNTRUSTED {
            self.revive();
        }
        n
    }

    /// The coarse time, or the precise time while the coarse one is untrusted.
    #[inline]
    pub(crate) fn recent(&'static self) -> u64 {
        match self.horizon() {
            UNTRUSTED => self.now(),
            h => h.saturating_sub(self.lag),
        }
    }

    /// True when the tick thread has fallen further behind than `lag` (starved, or gone after
    /// a fork), judged from a `horizon` read just before. The clock is then marked untrusted
    /// until the tick thread runs again.
    #[cold]
    #[inline(never)]
    pub(crate) fn is_stale(&'static self, horizon: u64) -> bool {
        let stale = horizon < self.now();
        if stale {
            self.distrust();
            self.revive();
        }
        stale
    }

    /// Marks the coarse reading untrusted until the tick thread stores a fresh one.
    pub(crate) fn distrust(&self) {
        self.horizon.store(UNTRUSTED, Ordering::Relaxed);
    }

    /// A forked child has no tick thread: start one (once per process).
    #[cold]
    fn revive(&'static self) {
        let me = std::process::id();
        let owner = self.ticker_pid.load(Ordering::Relaxed);
        if owner != me
            && self
                .ticker_pid
                .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.spawn_ticker();
        }
    }

    /// Test hook: pause or resume the tick thread, as a starved one would be.
    #[cfg(test)]
    pub(crate) fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
}

static COARSE: OnceLock<&'static Coarse> = OnceLock::new();

/// The process's coarse clock (started on first use).
pub(crate) fn coarse() -> &'static Coarse {
    COARSE.get_or_init(|| {
        #[cfg(unix)]
        fork::watch();
        Coarse::start(COARSE_LAG)
    })
}

/// A forked child inherits the coarse reading but not the tick thread: mark the reading
/// untrusted in the child, so that its first calls read the precise clock (and restart the
/// tick thread) instead of serving values by a frozen clock.
#[cfg(unix)]
mod fork {
    extern "C" {
        fn pthread_atfork(
            prepare: Option<extern "C" fn()>,
            parent: Option<extern "C" fn()>,
            child: Option<extern "C" fn()>,
        ) -> std::ffi::c_int;
    }

    extern "C" fn in_child() {
        // Async-signal-safe: one atomic load and one atomic store.
        if let Some(c) = super::COARSE.get() {
            c.distrust();
        }
    }

    pub(super) fn watch() {
        // SAFETY: registers a handler that only touches atomics; valid for the whole process.
        unsafe {
            pthread_atfork(None, None, Some(in_child));
        }
    }
}

/// The real monotonic clock (`std::time::Instant`), with a coarse companion updated every 2 ms
/// by one background thread shared by the whole process.
///
/// ```
/// use herdless::{Clock, SystemClock};
/// let clock = SystemClock::new();
/// let a = clock.now();
/// assert!(clock.now() >= a);
/// assert!(clock.recent() <= clock.now());
/// ```
#[derive(Clone, Copy)]
pub struct SystemClock {
    inner: &'static Coarse,
}

impl SystemClock {
    /// The process-wide system clock (starts the tick thread on first use).
    pub fn new() -> Self {
        SystemClock { inner: coarse() }
    }

    /// A system clock with its own tick thread and lag, which a test can pause.
    #[cfg(test)]
    pub(crate) fn private(lag: Duration) -> Self {
        SystemClock {
            inner: Coarse::start(lag),
        }
    }

    #[cfg(test)]
    pub(crate) fn coarse(&self) -> &'static Coarse {
        self.inner
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SystemClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemClock")
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> u64 {
        self.inner.now()
    }
    #[inline]
    fn recent(&self) -> u64 {
        self.inner.recent()
    }
    fn recent_lag(&self) -> u64 {
        self.inner.lag
    }
}

/// The clock an engine holds: any [`Clock`], with the system clock's coarse reading reachable
/// without dynamic dispatch, so the hit path reads it with one load.
#[derive(Clone)]
pub(crate) struct EngineClock {
    dynamic: Arc<dyn Clock>,
    coarse: Option<&'static Coarse>,
}

impl EngineClock {
    pub(crate) fn new<C: Clock>(clock: C) -> Self {
        let coarse = (&clock as &dyn Any)
            .downcast_ref::<SystemClock>()
            .map(|s| s.inner);
        EngineClock {
            dynamic: Arc::new(clock),
            coarse,
        }
    }
    pub(crate) fn system() -> Self {
        Self::new(SystemClock::new())
    }
    /// The system clock's coarse source, when this is the system clock.
    #[inline]
    pub(crate) fn coarse(&self) -> Option<&'static Coarse> {
        self.coarse
    }
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self.coarse {
            Some(c) => c.now(),
            None => self.dynamic.now(),
        }
    }
    #[inline]
    pub(crate) fn recent(&self) -> u64 {
        match self.coarse {
            Some(c) => c.recent(),
            None => self.dynamic.recent(),
        }
    }
    pub(crate) fn recent_lag(&self) -> u64 {
        self.dynamic.recent_lag()
    }
}

/// A clock that only moves when told to: makes XFetch, expiry and delta exact in tests.
///
/// Clones share the same time.
///
/// ```
/// use herdless::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let other = clock.clone();
/// clock.advance(std::time::Duration::from_micros(50));
/// assert_eq!(other.now(), clock.now());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time 1 s (so that "now minus something" never underflows in tests).
    pub fn new() -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }
    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(saturating_nanos(by), Ordering::SeqCst);
    }
    /// Sets the absolute time in nanoseconds (must not go backwards).
    pub fn set(&self, nanos: u64) {
        self.nanos.fetch_max(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
    fn recent(&self) -> u64 {
        (**self).recent()
    }
    fn recent_lag(&self) -> u64 {
        (**self).recent_lag()
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{memoize_stampede, MemoryStore};
    use std::sync::atomic::AtomicU32;

    const LAG: Duration = Duration::from_millis(20);
    type Counted =
        crate::BlockingMemoized<u32, u32, std::convert::Infallible, MemoryStore<u32, u32>>;
    const TTL: Duration = Duration::from_millis(150);

    /// A blocking function on a private system clock, computed once, and a counter of runs.
    fn computed_once(clock: SystemClock) -> (Counted, Arc<AtomicU32>) {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let store = MemoryStore::<u32, u32>::new(10).unwrap();
        let f = memoize_stampede(&store, TTL)
            .clock(clock)
            .build_blocking_infallible(move |_k: &u32| r.fetch_add(1, Ordering::SeqCst) + 1)
            .unwrap();
        assert_eq!(f.get(&1).unwrap(), 1);
        (f, runs)
    }

    /// Calls until the function recomputes; how many calls that took (bounded).
    fn calls_until_recomputed(f: &Counted, runs: &AtomicU32) -> Option<u64> {
        let bound = 4 * crate::stats::CHECK_EVERY;
        (1..=bound).find(|_| {
            f.get(&1).unwrap();
            runs.load(Ordering::SeqCst) == 2
        })
    }

    #[test]
    fn a_starved_tick_thread_stops_serving_expired_values_within_one_check() {
        let clock = SystemClock::private(LAG);
        let coarse = clock.coarse();
        let (f, runs) = computed_once(clock);
        coarse.pause(true);
        // Past the TTL and the lag: the value has expired, the coarse clock has not moved.
        std::thread::sleep(TTL + LAG * 5);
        let calls = calls_until_recomputed(&f, &runs);
        coarse.pause(false);
        let calls = calls.expect("the expired value was served as a hit over and over");
        // At most CHECK_EVERY hits of this thread pass before the clock is checked.
        assert!(calls <= crate::stats::CHECK_EVERY, "{calls} calls");
        assert_eq!(f.stats().computations, 2);
    }

    #[test]
    fn a_distrusted_clock_after_fork_reads_the_precise_time_at_once() {
        let clock = SystemClock::private(LAG);
        let coarse = clock.coarse();
        let (f, runs) = computed_once(clock);
        coarse.pause(true);
        std::thread::sleep(TTL + LAG * 5);
        // What the fork handler does in a child, whose tick thread is gone.
        coarse.distrust();
        assert!(clock.recent() <= clock.now());
        assert_eq!(calls_until_recomputed(&f, &runs), Some(1));
        // A tick makes the coarse clock trusted again: hits are served without the slow path.
        coarse.pause(false);
        let trusted = (0..500).any(|_| {
            std::thread::sleep(TICK);
            coarse.horizon() != UNTRUSTED
        });
        assert!(trusted);
        let slow = f.stats().slow_calls;
        f.get(&1).unwrap();
        assert_eq!(f.stats().slow_calls, slow);
    }

    /// A real fork: the child has no tick thread. The fork handler distrusts the inherited
    /// reading at once, and the child's first precise read starts a tick thread of its own.
    #[cfg(unix)]
    #[test]
    fn a_forked_child_distrusts_the_inherited_clock_and_restarts_its_tick_thread() {
        extern "C" {
            fn fork() -> i32;
            fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
            fn _exit(code: i32) -> !;
        }
        let c = coarse();
        let _ = c.now();
        // SAFETY: the child only touches atomics, sleeps, spawns a thread and exits with
        // `_exit` (no unwinding or exit handlers in a copy of a multi-threaded process).
        let pid = unsafe { fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let distrusted = c.horizon() == UNTRUSTED;
            let _ = c.now(); // revives the tick thread in this process
            let ticking = (0..500).any(|_| {
                std::thread::sleep(TICK);
                c.horizon() != UNTRUSTED
            });
            unsafe {
                _exit(if !distrusted {
                    2
                } else if !ticking {
                    3
                } else {
                    0
                })
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` outlives the call.
        assert_eq!(unsafe { waitpid(pid, &mut status, 0) }, pid);
        // WIFEXITED && WEXITSTATUS: 2 = the child trusted a frozen clock, 3 = no tick thread.
        assert_eq!(status & 0x7f, 0, "the child died by a signal");
        assert_eq!((status >> 8) & 0xff, 0, "child exit code");
    }
}
