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
//!
//! Memory is bounded: each of the [`SHARDS`] shards meters at most [`SHARD_CAP`] keys. A new
//! key past the cap evicts one by CLOCK (second chance): a meter sampled since the hand last
//! passed it is kept and its mark cleared, so hot keys keep their meters through a flood of
//! one-off keys, and each eviction costs O(1) amortised (every skip consumes a mark that a
//! sample set). A sample never waits for a shard's lock: if a writer holds it, the sample is
//! dropped (the rate is an estimate anyway), so hits never stall behind a flood's inserts.

use crate::xfetch::theory::{beta_for_late_bound, solve_beta, LATE_REFRESH_BOUND};
use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, TryLockError};
use std::time::Duration;

/// Calls per sample.
pub(crate) const SAMPLE: u32 = 8;
const SHARDS: usize = 16;
/// Keys one shard meters at most: 16 × 512 = 8192 metered keys per function (about 100 bytes
/// each plus two copies of the key).
const SHARD_CAP: usize = 512;
/// A rate window closes after this long (or sooner once it holds enough samples).
const WINDOW_NS: u64 = 250_000_000;
/// A window still open after this long was stretched by a quiet spell (too few calls to
/// close it): it closes at the first calls after the spell, and its average is the spell's,
/// not the traffic's now.
const STRETCHED_NS: u64 = 4 * WINDOW_NS;

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
    /// The last window was stretched and measured less than `rate`, which was kept.
    kept: AtomicBool,
    /// The β solved for `rate` and `cached_delta_us` (f64 bits): solving costs ~1 µs, so it is
    /// redone only when the rate window closes or delta changes.
    cached_beta: AtomicU64,
    cached_rate: AtomicU64,
    cached_delta_us: AtomicU64,
    /// Sampled since the CLOCK hand last passed: spared once by the next eviction.
    referenced: AtomicBool,
}

/// One shard's meters and its CLOCK ring (the hand is the front).
struct MeterShard<K> {
    map: HashMap<K, Arc<Meter>>,
    ring: VecDeque<K>,
    /// Ring entries the hand examined (for the amortised-cost test).
    #[cfg(test)]
    examined: u64,
}

type Shard<K> = RwLock<MeterShard<K>>;

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
    fn new(now: u64) -> Self {
        Meter {
            window_start: AtomicU64::new(now),
            count: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            kept: AtomicBool::new(false),
            cached_beta: AtomicU64::new(0),
            cached_rate: AtomicU64::new(0),
            cached_delta_us: AtomicU64::new(0),
            referenced: AtomicBool::new(false),
        }
    }

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
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(MeterShard {
                        map: HashMap::new(),
                        ring: VecDeque::new(),
                        #[cfg(test)]
                        examined: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Counts one call: with probability 1/`SAMPLE` it adds `SAMPLE` to the key's meter. `key`
    /// may be a borrowed form of `K`: only a key's first sample makes an owned copy.
    #[inline]
    pub(crate) fn tick<Q>(&self, key: &Q, now: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
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

    /// Adds `calls` to the key's meter (a sample, or a thread's batch of tier hits).
    pub(crate) fn record<Q>(&self, key: &Q, now: u64, calls: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        let shard = self.shard(key);
        let found = match shard.try_read() {
            Ok(read) => read.map.get(key).cloned(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().map.get(key).cloned(),
            // A writer holds the shard (a new key going in): drop this sample, never wait.
            Err(TryLockError::WouldBlock) => return,
        };
        let meter = match found {
            Some(m) => {
                if !m.referenced.load(Ordering::Relaxed) {
                    m.referenced.store(true, Ordering::Relaxed);
                }
                m
            }
            None => match shard.try_write() {
                Ok(mut write) => write.insert(key, now),
                Err(TryLockError::Poisoned(p)) => p.into_inner().insert(key, now),
                Err(TryLockError::WouldBlock) => return,
            },
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
            // A stretched window that measured less than the last rate keeps that rate for one
            // more window: published, the spell's low average would give the key the large β
            // of a slow key just as its traffic returns, and XFetch would then trigger a
            // refresh on nearly every hit, one right after another, until the next window
            // closed (`tests/network_faults.rs`, when 50 ms of latency ends). The next window
            // publishes whatever it measures, so a key that did slow down shows it one window
            // later.
            let last = f64::from_bits(meter.rate.load(Ordering::Relaxed));
            if elapsed > STRETCHED_NS && rate < last && !meter.kept.swap(true, Ordering::Relaxed) {
                return;
            }
            meter.kept.store(false, Ordering::Relaxed);
            meter.rate.store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// The key's measured rate in calls per second (the open window's if none closed yet).
    #[cfg(test)]
    pub(crate) fn rate(&self, key: &K, now: u64) -> Option<f64> {
        let read = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        read.map.get(key).and_then(|m| m.rate(now))
    }

    /// The β that gives `key` the target lead, for an entry computed in `delta_us`.
    ///
    /// `late_guard`: also keep late refreshes under [`LATE_REFRESH_BOUND`] *from this process's
    /// own calls alone* (its local rate, not scaled by `fleet`). On a shared store the fleet
    /// factor counts every store on the prefix, which overstates the key's rate when only some
    /// processes serve it (sharded routing, idle services on the prefix) and would make β too
    /// small and refreshes late (issue 21 item 5); the guard on the local rate bounds that error
    /// on the early side: a process never refreshes later than it would alone.
    pub(crate) fn beta(
        &self,
        key: &K,
        now: u64,
        delta_us: u64,
        target: LeadTarget,
        late_guard: bool,
        fleet: f64,
    ) -> f64 {
        let read = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        // No rate yet: no basis for a β, so no early refresh (β = 0) until the meter has one.
        let Some(m) = read.map.get(key) else {
            return 0.0;
        };
        let Some(local) = m.rate(now) else {
            return 0.0;
        };
        // The fleet's rate: this process's share times the processes sharing the store.
        let rate = local * fleet.max(1.0);
        let rate_bits = rate.to_bits();
        // The rate moves a little on every call (it is read at `now`): a β solved for a rate
        // within 1/32 of this one is reused. The lead β buys grows with the logarithm of the
        // rate, so it moves by far less than that 3 %; solving anew on every hit cost a
        // noticeable share of a Redis hit's CPU (issue 23's profile).
        let cached_rate = f64::from_bits(m.cached_rate.load(Ordering::Relaxed));
        if rate_bits != 0
            && cached_rate > 0.0
            && (rate - cached_rate).abs() <= cached_rate / 32.0
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
            beta = beta.max(beta_for_late_bound(local, delta_s, LATE_REFRESH_BOUND));
        }
        if rate_bits != 0 {
            m.cached_beta.store(beta.to_bits(), Ordering::Relaxed);
            m.cached_delta_us.store(delta_us, Ordering::Relaxed);
            m.cached_rate.store(rate_bits, Ordering::Relaxed);
        }
        beta
    }
}

impl<K: Hash + Eq + Clone> MeterShard<K> {
    /// The key's meter, created now; past the cap one meter is evicted first.
    fn insert<Q>(&mut self, key: &Q, now: u64) -> Arc<Meter>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        if let Some(m) = self.map.get(key) {
            return m.clone(); // another sampler inserted it meanwhile
        }
        if self.map.len() >= SHARD_CAP {
            self.evict_one();
        }
        let m = Arc::new(Meter::new(now));
        let owned = key.to_owned();
        self.map.insert(owned.clone(), m.clone());
        self.ring.push_back(owned);
        m
    }

    /// CLOCK: spare (and unmark) meters sampled since the hand last passed; evict the first
    /// unmarked one. Within one lap every mark is cleared, so this ends.
    fn evict_one(&mut self) {
        for _ in 0..=self.ring.len() {
            let Some(k) = self.ring.pop_front() else {
                return;
            };
            #[cfg(test)]
            {
                self.examined += 1;
            }
            match self.map.get(&k) {
                Some(m) if m.referenced.swap(false, Ordering::Relaxed) => self.ring.push_back(k),
                _ => {
                    self.map.remove(&k);
                    return;
                }
            }
        }
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
            let auto = m.beta(&7, now, delta_us, target, false, 1.0);
            let advised = crate::tune::beta_for_lead(rate, delta, lead).unwrap();
            assert!(
                (auto - advised).abs() < 1e-9 * advised,
                "δ={delta:?} {target:?}: auto {auto} vs tune {advised}"
            );
            // A fleet of 4 processes sharing the store: β aims at 4 × the local rate.
            let fleet = m.beta(&7, now, delta_us, target, false, 4.0);
            let advised = crate::tune::beta_for_lead(4.0 * rate, delta, lead).unwrap();
            assert!(
                (fleet - advised).abs() < 1e-9 * advised,
                "δ={delta:?} {target:?}: fleet {fleet} vs tune {advised}"
            );
            assert!(
                fleet < auto,
                "a larger fleet needs a smaller β for the same lead"
            );
            // Issue 21 item 5: with the guard, a fleet factor that overstates the key's rate
            // (nine idle stores on the prefix) never takes β below what keeps this process's
            // own late refreshes under the bound.
            let guarded = m.beta(&7, now, delta_us, target, true, 10.0);
            let alone = crate::xfetch::theory::beta_for_late_bound(
                rate,
                delta.as_secs_f64(),
                LATE_REFRESH_BOUND,
            );
            assert!(guarded >= alone * (1.0 - 1e-12), "{guarded} < {alone}");
            let p_late =
                crate::xfetch::theory::late_refresh_probability(rate, delta.as_secs_f64(), guarded);
            assert!(p_late <= LATE_REFRESH_BOUND + 1e-9, "p_late {p_late}");
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

    /// A window stretched by a quiet spell closes at the first calls after it with the spell's
    /// low average: the rate measured before the spell is kept for one more window (else the
    /// large β of a slow key would refresh on nearly every hit as traffic returns), and a key
    /// that did slow down shows its new rate one window later.
    #[test]
    fn a_quiet_spell_does_not_lower_the_rate_as_traffic_returns() {
        let m = RateMeters::<u32>::new();
        let mut t = 0u64;
        let sample = |m: &RateMeters<u32>, t: &mut u64, gap: u64| {
            *t += gap;
            m.record(&7, *t, SAMPLE as u64);
        };
        // 2000 calls/s for 1 s.
        for _ in 0..250 {
            sample(&m, &mut t, 4_000_000);
        }
        let busy = m.rate(&7, t).unwrap();
        assert!((busy - 2000.0).abs() / 2000.0 < 0.05, "rate {busy}");
        // 3 s with one sample a second, then traffic returns: the window that spans the spell
        // closes on the fourth sample, 3 s long, at about 10 calls/s. Kept: still busy.
        for _ in 0..3 {
            sample(&m, &mut t, 1_000_000_000);
        }
        sample(&m, &mut t, 4_000_000);
        assert_eq!(
            m.rate(&7, t),
            Some(busy),
            "the spell's average was published"
        );
        // The next window measures the traffic as it is.
        for _ in 0..70 {
            sample(&m, &mut t, 4_000_000);
        }
        let back = m.rate(&7, t).unwrap();
        assert!((back - 2000.0).abs() / 2000.0 < 0.05, "rate {back}");
        // A key that slows down for good (one sample every 0.8 s: 10 calls/s) shows it after a
        // window that mixes both rates, one kept back, and one published.
        for _ in 0..16 {
            sample(&m, &mut t, 800_000_000);
        }
        let slow = m.rate(&7, t).unwrap();
        assert!((slow - 10.0).abs() / 10.0 < 0.05, "rate {slow}");
    }

    /// A flood of one-off keys (each sampled once) interleaved with a hot key: the meters stay
    /// under the cap, each insert examines O(1) ring entries on average, and the hot key keeps
    /// its meter (and its rate) throughout.
    #[test]
    fn a_flood_of_one_off_keys_is_bounded_and_spares_the_hot_key() {
        const HOT: u64 = u64::MAX;
        let m = RateMeters::<u64>::new();
        let flood = 300_000u64;
        for i in 0..flood {
            let now = i * 1_000; // 1 µs apart: the flood lasts 0.3 s
            m.record(&i, now, SAMPLE as u64);
            if i % 16 == 0 {
                m.record(&HOT, now, SAMPLE as u64);
            }
        }
        let (held, examined): (usize, u64) = m
            .shards
            .iter()
            .map(|s| {
                let s = s.read().unwrap();
                assert_eq!(s.map.len(), s.ring.len());
                (s.map.len(), s.examined)
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!(held <= SHARDS * SHARD_CAP, "{held} meters");
        assert!(
            examined <= 3 * flood,
            "{examined} ring steps for {flood} inserts"
        );
        let hot = m
            .rate(&HOT, flood * 1_000)
            .expect("the hot key lost its meter");
        // 8 calls every 16 µs: 500 000 calls/s.
        assert!((hot - 500_000.0).abs() / 500_000.0 < 0.1, "hot rate {hot}");
    }

    /// A hot key's sample does not wait behind a writer holding its shard (a flood's insert):
    /// it is dropped instead.
    #[test]
    fn a_sample_never_waits_for_a_shard_lock() {
        let m = RateMeters::<u64>::new();
        m.record(&1, 0, SAMPLE as u64);
        let held = m.shard(&1).write().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                m.record(&1, 1_000, SAMPLE as u64);
                let _ = tx.send(());
            });
            let returned = rx.recv_timeout(Duration::from_secs(10));
            drop(held);
            returned.expect("a sample waited for the shard's write lock");
        });
    }
}
