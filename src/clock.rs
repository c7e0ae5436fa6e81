//! Time, injected: the engine never reads a clock directly.
//!
//! Times are nanoseconds on a monotonic timeline private to each [`Clock`]. Two readings are
//! offered because a clock read is not free (about 28 ns for `Instant::now()` on the reference
//! VM, more than a whole `quick_cache` hit):
//! - [`Clock::now`] is precise; the engine reads it when a decision depends on it;
//! - [`Clock::recent`] is cheap and may lag `now` by at most [`Clock::recent_lag`]. The hit path
//!   reads it first and only pays for `now` when the value is close to its XFetch window.

use std::sync::atomic::{AtomicU64, Ordering};
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
/// How far behind the coarse clock is assumed to be at worst. A starved tick thread is the only
/// way to exceed it; the margin is 100 ticks.
const COARSE_LAG: Duration = Duration::from_millis(200);

struct Coarse {
    origin: Instant,
    nanos: AtomicU64,
}

fn coarse() -> &'static Coarse {
    static COARSE: OnceLock<&'static Coarse> = OnceLock::new();
    COARSE.get_or_init(|| {
        let c: &'static Coarse = Box::leak(Box::new(Coarse {
            origin: Instant::now(),
            nanos: AtomicU64::new(0),
        }));
        std::thread::Builder::new()
            .name("herdless-clock".into())
            .spawn(move || loop {
                let n = c.origin.elapsed().as_nanos() as u64;
                c.nanos.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(TICK);
            })
            .expect("spawn the herdless-clock thread");
        c
    })
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
        let n = self.inner.origin.elapsed().as_nanos() as u64;
        // Precise readings also push the coarse clock forward, which keeps it fresh when the
        // tick thread is starved and the process is busy.
        self.inner.nanos.fetch_max(n, Ordering::Relaxed);
        n
    }
    #[inline]
    fn recent(&self) -> u64 {
        self.inner.nanos.load(Ordering::Relaxed)
    }
    fn recent_lag(&self) -> u64 {
        COARSE_LAG.as_nanos() as u64
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
