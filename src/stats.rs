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
    /// Calls that found no unexpired value.
    hard_misses,
    /// Executions of the closure (hard misses and refreshes).
    computations,
    /// Calls that waited for another caller's computation and took its result.
    coalesced_waiters,
    /// Calls answered with an expired value because the policy allows it while another computes.
    stale_served,
    /// Calls that returned an error (closure error, fail-fast, wait timeout, panic).
    errors,
    /// Waiters that took over a computation abandoned by a panicking or cancelled caller.
    takeovers,
    /// Store operations that failed or timed out (the call then computes locally: fail-open).
    store_errors,
    /// Writes the store refused because the lock was lost (fencing).
    fenced_writes,
    /// Hard misses that waited for another process's lock holder.
    remote_waits,
}

#[repr(align(128))]
#[derive(Default)]
pub(crate) struct HitCounter(pub(crate) AtomicU64);

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
    #[inline]
    pub(crate) fn hit(&self) {
        self.hits.0.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.m.fast_hits.increment(1);
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
        self.c.snapshot(self.hits.0.load(Ordering::Relaxed))
    }
}
