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
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

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

/// β bounds for the automatic mode.
pub(crate) const BETA_MIN: f64 = 0.01;
pub(crate) const BETA_MAX: f64 = 10.0;

/// Solves `δβ(ln(rδβ) + γ) = lead` for β, clamped to `[BETA_MIN, BETA_MAX]`.
///
/// The left side is increasing in β wherever `ln(rδβ) + γ + 1 > 0`; below that (a rate too low
/// for any early refresh to be likely) the largest β is the best one can do.
pub(crate) fn solve_beta(rate_per_s: f64, delta_s: f64, lead_s: f64) -> f64 {
    if !(rate_per_s > 0.0 && delta_s > 0.0 && lead_s > 0.0) {
        return 1.0;
    }
    let lead_of = |b: f64| {
        let x = rate_per_s * delta_s * b;
        delta_s * b * (x.ln() + EULER_GAMMA)
    };
    if lead_of(BETA_MAX) <= lead_s {
        return BETA_MAX;
    }
    // Bisection on [lo, BETA_MAX] where lead_of is increasing; lo is where its slope is zero.
    let mut lo = (-(1.0 + EULER_GAMMA)).exp() / (rate_per_s * delta_s);
    lo = lo.max(BETA_MIN * 1e-3);
    if lead_of(lo) >= lead_s {
        return BETA_MIN;
    }
    let mut hi = BETA_MAX;
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if lead_of(mid) < lead_s {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).clamp(BETA_MIN, BETA_MAX)
}

/// The largest share of cycles whose refresh may land after expiry (callers then wait).
pub(crate) const LATE_REFRESH_BOUND: f64 = 0.05;

/// The smallest β whose refresh lands after expiry with probability at most `epsilon`:
/// `P(G ≤ δ) = exp(−rδβ·e^(−1/β)) ≤ ε` ⟺ `ln(rδ) + ln β − 1/β ≥ ln ln(1/ε)`, increasing in β.
pub(crate) fn beta_for_late_bound(rate_per_s: f64, delta_s: f64, epsilon: f64) -> f64 {
    if !(rate_per_s > 0.0 && delta_s > 0.0 && epsilon > 0.0 && epsilon < 1.0) {
        return BETA_MIN;
    }
    let need = (1.0 / epsilon).ln().ln();
    let f = |b: f64| (rate_per_s * delta_s).ln() + b.ln() - 1.0 / b;
    if f(BETA_MIN) >= need {
        return BETA_MIN;
    }
    if f(BETA_MAX) < need {
        return BETA_MAX;
    }
    let (mut lo, mut hi) = (BETA_MIN, BETA_MAX);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < need {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
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

    #[test]
    fn solved_beta_gives_the_target_lead() {
        for &(r, d, lead) in &[(1e6, 0.2, 0.4), (100.0, 0.2, 0.4), (10.0, 0.01, 0.05)] {
            let b = solve_beta(r, d, lead);
            let got = d * b * ((r * d * b).ln() + EULER_GAMMA);
            assert!(
                (got - lead).abs() < 1e-6 * lead.max(1.0),
                "r={r}: β={b} lead={got}"
            );
        }
    }

    #[test]
    fn late_bound_beta_meets_its_bound() {
        for &(r, d) in &[(100.0, 0.2), (1e4, 0.2), (10.0, 0.05)] {
            let b = beta_for_late_bound(r, d, LATE_REFRESH_BOUND);
            let p_late = (-(r * d * b) * (-1.0 / b).exp()).exp();
            assert!(
                (p_late - LATE_REFRESH_BOUND).abs() < 1e-6,
                "r={r}: β={b} p={p_late}"
            );
        }
        // At high rates the bound is loose: the lead target decides.
        assert!(beta_for_late_bound(1e6, 0.2, LATE_REFRESH_BOUND) < solve_beta(1e6, 0.2, 0.25));
    }

    #[test]
    fn lead_shrinks_beta_as_rate_grows() {
        assert!(solve_beta(1e6, 0.2, 0.4) < solve_beta(1e3, 0.2, 0.4));
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
