//! Automatic β: measure each key's request rate on the hit path, then choose β so that the
//! expected XFetch lead `δβ(ln(rδβ) + γ)` equals a target (by default 1.25 δ).
//!
//! Why: the lead of a fixed β grows with `ln r`. DiskCache's β = 1 at ~70 k calls/s refreshes
//! 2.5 s early on a 1 s TTL, i.e. right after every write. Solving for β from the observed rate
//! keeps the refresh about one target lead before expiry at any rate; with the single-flight
//! refresh slot that is one refresh per TTL.
//!
//! Cost on the hit path: one step of a thread-local xorshift generator; one call in [`SAMPLE`]
//! (at random, so a key's first sample does not wait for every thread's SAMPLE-th call) adds
//! `SAMPLE` to its key's meter (one read-locked shard lookup and one atomic add). Until a key
//! has a rate there is no basis for a β, and it is not refreshed early.

use crate::xfetch::theory::{beta_for_late_bound, solve_beta, LATE_REFRESH_BOUND};
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Calls per sample.
pub(crate) const SAMPLE: u32 = 8;
const SHARDS: usize = 16;
/// A rate window closes after this long (or sooner once it holds enough samples).
const WINDOW_NS: u64 = 250_000_000;

/// The lead time [`beta_auto`](crate::Builder::beta_auto) aims for.
///
/// ```
/// use herdless::LeadTarget;
/// use std::time::Duration;
/// let fixed: LeadTarget = Duration::from_millis(300).into();
/// assert_eq!(fixed, LeadTarget::Fixed(Duration::from_millis(300)));
/// assert_eq!(LeadTarget::default(), LeadTarget::DeltaMultiple(1.25));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeadTarget {
    /// Start refreshing about this long before expiry.
    Fixed(Duration),
    /// Start refreshing about this many computation times (δ) before expiry.
    DeltaMultiple(f64),
}

impl Default for LeadTarget {
    fn default() -> Self {
        // The refresh lands `lead − δ` before expiry and the next cycle is `TTL − (lead − δ)`
        // long: a quarter δ of margin keeps about one refresh per TTL while the Gumbel spread
        // of the first trigger (scale δβ, small at the β this picks) rarely reaches δ.
        LeadTarget::DeltaMultiple(1.25)
    }
}

impl From<Duration> for LeadTarget {
    fn from(d: Duration) -> Self {
        LeadTarget::Fixed(d)
    }
}

struct Meter {
    window_start: AtomicU64,
    count: AtomicU64,
    /// Calls per second measured over the last closed window (f64 bits); 0 = not yet known.
    rate: AtomicU64,
    /// The β solved for `rate` and `cached_delta_us` (f64 bits): solving costs ~1 µs, so it is
    /// redone only when the rate window closes or delta changes.
    cached_beta: AtomicU64,
    cached_rate: AtomicU64,
    cached_delta_us: AtomicU64,
}

type Shard<K> = RwLock<HashMap<K, Arc<Meter>>>;

/// Per-key request rates, sampled.
pub(crate) struct RateMeters<K> {
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
}

thread_local! {
    /// xorshift64 state; seeded from the thread's stack address so threads differ.
    static SAMPLER: Cell<u64> = const { Cell::new(0) };
}

impl Meter {
    fn rate(&self, now: u64) -> Option<f64> {
        let closed = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if closed > 0.0 {
            return Some(closed);
        }
        let elapsed = now.saturating_sub(self.window_start.load(Ordering::Relaxed));
        let count = self.count.load(Ordering::Relaxed);
        (elapsed > 0 && count > 0).then(|| count as f64 / (elapsed as f64 / 1e9))
    }
}

impl<K: Hash + Eq + Clone> RateMeters<K> {
    pub(crate) fn new() -> Self {
        RateMeters {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Shard<K> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Counts one call: with probability 1/`SAMPLE` it adds `SAMPLE` to the key's meter.
    #[inline]
    pub(crate) fn tick(&self, key: &K, now: u64) {
        let due = SAMPLER.with(|c| {
            let mut x = c.get();
            if x == 0 {
                x = (c as *const Cell<u64> as u64) | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.set(x);
            x % SAMPLE as u64 == 0
        });
        if due {
            self.record(key, now, SAMPLE as u64);
        }
    }

    fn record(&self, key: &K, now: u64, calls: u64) {
        let shard = self.shard(key);
        let meter = {
            let read = shard.read().unwrap_or_else(|p| p.into_inner());
            read.get(key).cloned()
        };
        let meter = match meter {
            Some(m) => m,
            None => {
                let mut write = shard.write().unwrap_or_else(|p| p.into_inner());
                if write.len() > 4096 {
                    // Forget keys that have not been sampled for a while.
                    write.retain(|_, m| {
                        now.saturating_sub(m.window_start.load(Ordering::Relaxed))
                            < 10 * WINDOW_NS * 4
                    });
                }
                write
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(Meter {
                            window_start: AtomicU64::new(now),
                            count: AtomicU64::new(0),
                            rate: AtomicU64::new(0),
                            cached_beta: AtomicU64::new(0),
                            cached_rate: AtomicU64::new(0),
                            cached_delta_us: AtomicU64::new(0),
                        })
                    })
                    .clone()
            }
        };
        let count = meter.count.fetch_add(calls, Ordering::Relaxed) + calls;
        let start = meter.window_start.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(start);
        if elapsed >= WINDOW_NS
            && count >= 4 * SAMPLE as u64
            && meter
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let counted = meter.count.swap(0, Ordering::Relaxed);
            let rate = counted as f64 / (elapsed as f64 / 1e9);
            meter.rate.store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// The key's measured rate in calls per second (the open window's if none closed yet).
    #[cfg(test)]
    pub(crate) fn rate(&self, key: &K, now: u64) -> Option<f64> {
        let read = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        read.get(key).and_then(|m| m.rate(now))
    }

    /// The β that gives `key` the target lead, for an entry computed in `delta_us`.
    ///
    /// `late_guard`: also keep late refreshes under [`LATE_REFRESH_BOUND`] (for stores local to
    /// this process; for a shared store this process's rate understates the key's, see
    /// `Builder::beta_auto`).
    pub(crate) fn beta(
        &self,
        key: &K,
        now: u64,
        delta_us: u64,
        target: LeadTarget,
        late_guard: bool,
    ) -> f64 {
        let read = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        // No rate yet: no basis for a β, so no early refresh (β = 0) until the meter has one.
        let Some(m) = read.get(key) else { return 0.0 };
        let Some(rate) = m.rate(now) else { return 0.0 };
        let rate_bits = m.rate.load(Ordering::Relaxed);
        if rate_bits != 0
            && m.cached_rate.load(Ordering::Relaxed) == rate_bits
            && m.cached_delta_us.load(Ordering::Relaxed) == delta_us
        {
            return f64::from_bits(m.cached_beta.load(Ordering::Relaxed));
        }
        let delta_s = delta_us as f64 / 1e6;
        let lead_s = match target {
            LeadTarget::Fixed(d) => d.as_secs_f64(),
            LeadTarget::DeltaMultiple(k) => k * delta_s,
        };
        let mut beta = solve_beta(rate, delta_s, lead_s);
        if late_guard {
            beta = beta.max(beta_for_late_bound(rate, delta_s, LATE_REFRESH_BOUND));
        }
        if rate_bits != 0 {
            m.cached_beta.store(beta.to_bits(), Ordering::Relaxed);
            m.cached_delta_us.store(delta_us, Ordering::Relaxed);
            m.cached_rate.store(rate_bits, Ordering::Relaxed);
        }
        beta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Automatic β and the public advisor solve the same equation: on the same rate, δ and
    /// target lead they choose the same β.
    #[test]
    fn beta_auto_matches_tune_beta_for_lead() {
        let now = 500_000_000;
        for (delta_us, target) in [
            (200_000u64, LeadTarget::DeltaMultiple(1.25)),
            (200_000, LeadTarget::Fixed(Duration::from_millis(600))),
            (5_000, LeadTarget::Fixed(Duration::from_millis(30))),
        ] {
            let delta = Duration::from_micros(delta_us);
            let lead = match target {
                LeadTarget::Fixed(d) => d,
                LeadTarget::DeltaMultiple(k) => delta.mul_f64(k),
            };
            // One meter per case: a meter caches its β per (rate, δ), the target being fixed
            // per function.
            let m = RateMeters::<u32>::new();
            for i in 0..125u64 {
                m.record(&7, i * 4_000_000, SAMPLE as u64);
            }
            let rate = m.rate(&7, now).unwrap();
            let auto = m.beta(&7, now, delta_us, target, false);
            let advised = crate::tune::beta_for_lead(rate, delta, lead).unwrap();
            assert!(
                (auto - advised).abs() < 1e-9 * advised,
                "δ={delta:?} {target:?}: auto {auto} vs tune {advised}"
            );
        }
    }

    #[test]
    fn meter_measures_rate() {
        let m = RateMeters::<u32>::new();
        // 1000 calls over 0.5 s of fake time, recorded in batches as the sampler would.
        for i in 0..125u64 {
            m.record(&7, i * 4_000_000, SAMPLE as u64);
        }
        let r = m.rate(&7, 500_000_000).unwrap();
        assert!((r - 2000.0).abs() / 2000.0 < 0.05, "rate {r}");
    }
}
