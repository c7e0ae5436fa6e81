//! Core semantics of herdless, deterministic: the stored record, the XFetch law (pure and through
//! the engine), failed refreshes and their backoff, namespaces, configuration errors, counters.
//!
//! Every test uses a `ManualClock` and, where XFetch draws, a seeded RNG. Async tests run on a
//! current-thread runtime: background refreshes are spawned tasks that only run when the test
//! yields, which makes "the caller was served before the refresh ran" exact. Nothing here asserts
//! a wall-clock duration; every wait is bounded.

use herdless::xfetch::{self, decide, exp1_from_bits, refresh_probability, Decision, E_MAX};
use herdless::{memoize, memoize_stampede, Clock, Entry, Error, ManualClock, MemoryStore, Store};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Lets spawned background refreshes of a current-thread runtime run to completion (bounded).
async fn settle() {
    let h = tokio::runtime::Handle::current();
    for _ in 0..100_000 {
        if h.metrics().num_alive_tasks() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "background refreshes did not finish ({} tasks alive)",
        h.metrics().num_alive_tasks()
    );
}

fn entry_of<V: Clone + Send + Sync + 'static>(
    store: &MemoryStore<u64, V>,
    name: &str,
    key: u64,
) -> Option<Entry<V>> {
    let ns = Store::<u64, V>::namespace(store, name);
    match Store::get_now(store, &ns, &key) {
        herdless::store::Lookup::Found(e) => Some(e),
        herdless::store::Lookup::Missing => None,
        herdless::store::Lookup::NotLocal => panic!("MemoryStore answers synchronously"),
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn negative_beta_is_rejected_naming_beta() {
    let store = MemoryStore::<u64, u64>::new(16).unwrap();
    let err = memoize_stampede(&store, Duration::from_secs(1))
        .beta(-0.5)
        .build_blocking_infallible(|k: &u64| *k)
        .expect_err("negative beta must be rejected");
    assert_eq!(err.field(), "beta");
    assert!(err.to_string().contains("beta"), "{err}");
    // The async builder and the plain memoize builder validate the same way.
    let err = memoize_stampede(&store, Duration::from_secs(1))
        .beta(-1e-9)
        .build_infallible(|k: u64| std::future::ready(k))
        .expect_err("negative beta must be rejected (async)");
    assert_eq!(err.field(), "beta");
    let err = memoize(&store, Duration::from_secs(1))
        .beta(-2.0)
        .build_blocking_infallible(|k: &u64| *k)
        .expect_err("negative beta must be rejected (memoize)");
    assert_eq!(err.field(), "beta");
}

#[test]
fn nan_beta_is_rejected_naming_beta() {
    let store = MemoryStore::<u64, u64>::new(16).unwrap();
    let err = memoize_stampede(&store, Duration::from_secs(1))
        .beta(f64::NAN)
        .build_blocking_infallible(|k: &u64| *k)
        .expect_err("NaN beta must be rejected");
    assert_eq!(err.field(), "beta");
    assert!(err.to_string().contains("beta"), "{err}");
}

#[test]
fn zero_and_infinite_beta_are_valid() {
    let store = MemoryStore::<u64, u64>::new(16).unwrap();
    for beta in [0.0, f64::INFINITY, 1e-12, 1e6] {
        let f = memoize_stampede(&store, Duration::from_secs(1))
            .beta(beta)
            .build_blocking_infallible(|k: &u64| *k + 1)
            .unwrap_or_else(|e| panic!("beta {beta} must be accepted: {e}"));
        assert_eq!(f.get(&1).unwrap(), 2);
    }
}

#[test]
fn zero_ttl_is_rejected_for_memoize_stampede_naming_ttl() {
    let store = MemoryStore::<u64, u64>::new(16).unwrap();
    let err = memoize_stampede(&store, Duration::ZERO)
        .build_blocking_infallible(|k: &u64| *k)
        .expect_err("zero TTL must be rejected by memoize_stampede");
    assert_eq!(err.field(), "ttl");
    assert!(err.to_string().contains("ttl"), "{err}");
    let err = memoize_stampede(&store, Duration::ZERO)
        .build_infallible(|k: u64| std::future::ready(k))
        .expect_err("zero TTL must be rejected by memoize_stampede (async)");
    assert_eq!(err.field(), "ttl");
}

#[test]
fn zero_capacity_store_is_rejected_naming_capacity() {
    let err = MemoryStore::<u64, u64>::new(0).expect_err("capacity 0 must be rejected");
    assert_eq!(err.field(), "capacity");
    assert!(err.to_string().contains("capacity"), "{err}");
    assert!(MemoryStore::<u64, u64>::new(1).is_ok());
}

#[test]
fn memoize_with_zero_ttl_is_valid_looks_up_and_never_stores() {
    let store = MemoryStore::<u64, u64>::new(16).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize(&store, Duration::ZERO)
        .name("zero")
        .build_blocking_infallible(move |k: &u64| {
            r.fetch_add(1, Ordering::SeqCst);
            *k * 10
        })
        .expect("memoize with ttl 0 is valid");
    assert_eq!(f.get(&3).unwrap(), 30);
    assert_eq!(f.get(&3).unwrap(), 30);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "ttl 0 never stores, so every call computes"
    );
    assert!(entry_of(&store, "zero", 3).is_none());
    assert!(store.is_empty());
    // ...but it does look up: a value stored under the same name is served without computing.
    let ns = Store::<u64, u64>::namespace(&store, "zero");
    let e = Entry {
        value: 777,
        delta_us: 1,
        expires_at: u64::MAX,
        write_id: 0,
    };
    futures::executor::block_on(Store::set(&store, &ns, &3, e, Duration::from_secs(1), None))
        .unwrap();
    assert_eq!(f.get(&3).unwrap(), 777);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. The XFetch law, pure
// ---------------------------------------------------------------------------------------------

/// Fraction of `n` seeded draws for which `decide` says RefreshEarly.
fn observed_rate(gap: f64, delta: f64, beta: f64, n: u32, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hits = 0u32;
    for _ in 0..n {
        let e = exp1_from_bits(rng.next_u64());
        assert!(
            (0.0..=E_MAX + 1e-9).contains(&e),
            "draw {e} out of [0, E_MAX]"
        );
        match decide(gap, delta, beta, e) {
            Decision::RefreshEarly => hits += 1,
            Decision::Fresh => {}
            Decision::Expired => panic!("gap {gap} > 0 must never be Expired"),
        }
    }
    hits as f64 / n as f64
}

#[test]
fn xfetch_law_matches_exp_minus_gap_over_delta_beta() {
    const N: u32 = 100_000;
    let mut seed = 0xC0FFEE;
    // (delta, beta) pairs with beta != 1 so that formulas that drop or misplace beta fail.
    for (delta, beta) in [(1000.0, 1.0), (250.0, 2.0), (4000.0, 0.5), (10.0, 3.0)] {
        for ratio in [0.1f64, 0.5, 1.0, 2.0, 4.0] {
            let gap = ratio * delta * beta;
            let expected = (-ratio).exp();
            seed += 1;
            let p = observed_rate(gap, delta, beta, N, seed);
            let se = (expected * (1.0 - expected) / N as f64).sqrt();
            let tol = 4.0 * se;
            assert!(
                (p - expected).abs() <= tol,
                "gap/(δβ) = {ratio} (δ={delta}, β={beta}): observed {p:.5}, law exp(-{ratio}) = {expected:.5}, tolerance {tol:.5}"
            );
            // The tolerance is tight enough to reject plausible wrong formulas.
            for wrong in [
                (-gap * delta * beta).exp(),
                (-gap / delta).exp(),
                (-gap / beta).exp(),
            ] {
                if (wrong - expected).abs() > 1e-3 {
                    assert!(
                        (p - wrong).abs() > tol,
                        "test too weak: wrong law {wrong} indistinguishable at ratio {ratio}"
                    );
                }
            }
            let q = refresh_probability(gap, delta, beta);
            assert!(
                (q - expected).abs() < 1e-12,
                "refresh_probability {q} != {expected}"
            );
        }
    }
}

#[test]
fn xfetch_beta_zero_never_and_beta_infinity_always() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let e = exp1_from_bits(rng.next_u64());
        for gap in [1e-6, 1.0, 1e3, 1e9] {
            assert_eq!(
                decide(gap, 1e9, 0.0, e),
                Decision::Fresh,
                "beta 0 refreshed early"
            );
            assert_eq!(decide(gap, 1.0, f64::INFINITY, e), Decision::RefreshEarly);
            assert_eq!(decide(gap, 0.0, f64::INFINITY, e), Decision::RefreshEarly);
        }
    }
    // Largest possible draw still does not trigger with beta 0.
    assert_eq!(decide(1e-9, 1e12, 0.0, exp1_from_bits(0)), Decision::Fresh);
    assert_eq!(refresh_probability(1.0, 1e9, 0.0), 0.0);
    assert_eq!(refresh_probability(1e12, 1.0, f64::INFINITY), 1.0);
    // No time left is Expired whatever beta and the draw.
    for beta in [0.0, 1.0, f64::INFINITY] {
        assert_eq!(decide(0.0, 5.0, beta, 30.0), Decision::Expired);
        assert_eq!(decide(-1.0, 5.0, beta, 0.0), Decision::Expired);
    }
}

#[test]
fn xfetch_draw_is_exp1_and_skip_cutoff_is_exact() {
    // P(E >= x) = exp(-x): the draw itself is Exp(1) (mean 1).
    let mut rng = StdRng::seed_from_u64(99);
    let n = 100_000;
    let draws: Vec<f64> = (0..n).map(|_| exp1_from_bits(rng.next_u64())).collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    assert!(
        (mean - 1.0).abs() < 4.0 / (n as f64).sqrt(),
        "mean of Exp(1) draws = {mean}"
    );
    assert_eq!(exp1_from_bits(u64::MAX), 0.0);
    assert!((exp1_from_bits(0) - E_MAX).abs() < 1e-9);
    // Beyond delta*beta*E_MAX no draw can trigger; draw_needed agrees with decide.
    let (delta, beta) = (123.0, 1.7);
    let cutoff = delta * beta * E_MAX;
    assert!(!xfetch::draw_needed(cutoff * 1.0001, delta, beta));
    assert_eq!(
        decide(cutoff * 1.0001, delta, beta, exp1_from_bits(0)),
        Decision::Fresh
    );
    assert!(xfetch::draw_needed(cutoff * 0.9999, delta, beta));
    assert_eq!(
        decide(cutoff * 0.9999, delta, beta, exp1_from_bits(0)),
        Decision::RefreshEarly
    );
}

// ---------------------------------------------------------------------------------------------
// 1. The stored record; delta measured at µs precision on the injected clock
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn record_holds_value_delta_and_expiry_and_50us_delta_triggers_early_refresh() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, String>::new(64).unwrap();
    let ttl = Duration::from_millis(10);
    let gen = Arc::new(AtomicU64::new(0));
    let (c, g) = (clock.clone(), gen.clone());
    let f = memoize_stampede(&store, ttl)
        .name("fifty_us")
        .beta(1.0)
        .clock(clock.clone())
        .rng_seed(42)
        .build_infallible(move |k: u64| {
            let n = g.fetch_add(1, Ordering::SeqCst);
            c.advance(Duration::from_micros(50)); // a 50 µs computation
            std::future::ready(format!("{k}-gen{n}"))
        })
        .unwrap();

    let t0 = clock.now();
    assert_eq!(f.get(&1).await.unwrap(), "1-gen0");
    let e = entry_of(&store, "fifty_us", 1).expect("value stored");
    assert_eq!(e.value, "1-gen0");
    assert_eq!(
        e.delta_us, 50,
        "delta must be measured in µs on the injected clock"
    );
    assert_eq!(
        e.expires_at,
        t0 + 50 * US + u64::try_from(ttl.as_nanos()).unwrap()
    );

    // Far from expiry (gap ≫ δβ·E_MAX = 1.8 ms): served, no refresh whatever the draw.
    clock.advance(Duration::from_millis(5));
    for _ in 0..20 {
        assert_eq!(f.get(&1).await.unwrap(), "1-gen0");
    }
    settle().await;
    assert_eq!(f.stats().early_refreshes_started, 0);
    assert_eq!(f.stats().computations, 1);

    // 5 µs before expiry: exp(-5/50) ≈ 0.90 per call. Every call still returns the current
    // value; exactly one refresh runs (the others find the slot taken).
    clock.set(e.expires_at - 5 * US);
    for _ in 0..20 {
        assert_eq!(
            f.get(&1).await.unwrap(),
            "1-gen0",
            "the caller gets the current value"
        );
    }
    assert_eq!(
        f.stats().computations,
        1,
        "the refresh runs in the background, not in the caller"
    );
    settle().await;
    let s = f.stats();
    assert_eq!(
        s.early_refreshes_started, 1,
        "a 50 µs delta must trigger early refresh: {s:?}"
    );
    assert_eq!(s.early_refreshes_completed, 1);
    assert_eq!(s.computations, 2);
    assert!(s.early_refreshes_skipped <= 19);
    // The refresh wrote a new record: new value, its own delta, expiry from its end.
    let refresh_end = e.expires_at - 5 * US + 50 * US;
    let e2 = entry_of(&store, "fifty_us", 1).unwrap();
    assert_eq!(e2.value, "1-gen1");
    assert_eq!(e2.delta_us, 50);
    assert_eq!(
        e2.expires_at,
        refresh_end + u64::try_from(ttl.as_nanos()).unwrap()
    );
    assert_eq!(f.get(&1).await.unwrap(), "1-gen1");
}

#[test]
fn delta_rounds_up_to_whole_microseconds_and_expiry_is_exact() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let c = clock.clone();
    let f = memoize_stampede(&store, Duration::from_secs(2))
        .name("rounding")
        .clock(clock.clone())
        .build_blocking_infallible(move |k: &u64| {
            c.advance(Duration::from_nanos(*k));
            *k
        })
        .unwrap();
    for (nanos, want_us) in [
        (0u64, 0u64),
        (1, 1),
        (999, 1),
        (1000, 1),
        (1001, 2),
        (2_500_000, 2500),
    ] {
        let t0 = clock.now();
        assert_eq!(f.get(&nanos).unwrap(), nanos);
        let e = entry_of(&store, "rounding", nanos).unwrap();
        assert_eq!(e.delta_us, want_us, "{nanos} ns");
        assert_eq!(e.expires_at, t0 + nanos + 2_000_000_000);
    }
}

#[test]
fn value_is_served_until_its_expiry_and_never_at_or_after_it() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let gen = Arc::new(AtomicU64::new(0));
    let (c, g) = (clock.clone(), gen.clone());
    let f = memoize_stampede(&store, Duration::from_secs(1))
        .name("expiry")
        .beta(0.0)
        .clock(clock.clone())
        .build_blocking_infallible(move |_k: &u64| {
            c.advance(Duration::from_millis(3));
            g.fetch_add(1, Ordering::SeqCst)
        })
        .unwrap();
    assert_eq!(f.get(&0).unwrap(), 0);
    let e = entry_of(&store, "expiry", 0).unwrap();
    clock.set(e.expires_at - 1);
    assert_eq!(
        f.get(&0).unwrap(),
        0,
        "1 ns before expiry the value is still served"
    );
    assert_eq!(
        f.stats().early_refreshes_started,
        0,
        "beta 0 never refreshes early"
    );
    clock.set(e.expires_at);
    assert_eq!(
        f.get(&0).unwrap(),
        1,
        "at expiry the value must not be served"
    );
    let s = f.stats();
    assert_eq!((s.hard_misses, s.computations), (2, 2));
}

#[tokio::test(flavor = "current_thread")]
async fn a_triggered_refresh_rechecks_the_entry_and_skips_if_it_was_replaced() {
    let t = flaky(
        "recheck",
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_millis(1),
    );
    let f = &t.f;
    assert_eq!(f.get(&3).await.unwrap(), 0);
    let first = entry_of(&t.store, "recheck", 3).unwrap();
    assert_eq!(f.get(&3).await.unwrap(), 0); // β = ∞: triggers; the task has not run yet
    t.clock.set(first.expires_at); // expires before the refresh task gets to run
    assert_eq!(
        f.get(&3).await.unwrap(),
        1,
        "a hard miss computes a new value"
    );
    let replaced = entry_of(&t.store, "recheck", 3).unwrap();
    assert_ne!(replaced.expires_at, first.expires_at);
    settle().await;
    let s = f.stats();
    assert_eq!(
        s.early_refreshes_started, 0,
        "the refresh must see the entry was replaced: {s:?}"
    );
    assert_eq!(s.early_refreshes_skipped, 1);
    assert_eq!(s.computations, 2);
    assert_eq!(entry_of(&t.store, "recheck", 3).unwrap(), replaced);
}

// ---------------------------------------------------------------------------------------------
// 2. The XFetch law through the engine
// ---------------------------------------------------------------------------------------------

/// Builds a function whose first computation of each key takes exactly `delta_us` on the
/// manual clock (refreshes take no time), then for `n` distinct keys computes the key and calls
/// it once at `gap` before expiry. Returns how many of those calls triggered a refresh.
async fn engine_trigger_count(beta: f64, delta_us: u64, gap_ns: u64, n: u64, seed: u64) -> u64 {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(2 * n + 16).unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let (c, s) = (clock.clone(), seen.clone());
    let name = format!("law-{beta}-{delta_us}-{gap_ns}");
    let f = memoize_stampede(&store, Duration::from_secs(1))
        .name(&name)
        .beta(beta)
        .clock(clock.clone())
        .rng_seed(seed)
        .build_infallible(move |k: u64| {
            if s.lock().unwrap().insert(k) {
                c.advance(Duration::from_micros(delta_us));
            }
            std::future::ready(k)
        })
        .unwrap();
    for k in 0..n {
        assert_eq!(f.get(&k).await.unwrap(), k);
        let e = entry_of(&store, &name, k).unwrap();
        assert_eq!(e.delta_us, delta_us);
        clock.set(e.expires_at - gap_ns);
        assert_eq!(clock.now(), e.expires_at - gap_ns);
        assert_eq!(
            f.get(&k).await.unwrap(),
            k,
            "a triggering call is served the current value"
        );
    }
    settle().await;
    let s = f.stats();
    assert_eq!(s.hard_misses, n);
    assert_eq!(s.hits, n);
    assert_eq!(s.calls, 2 * n);
    assert_eq!(
        s.early_refreshes_skipped, 0,
        "distinct keys never contend: {s:?}"
    );
    assert_eq!(s.early_refreshes_completed, s.early_refreshes_started);
    assert_eq!(s.computations, n + s.early_refreshes_started);
    s.early_refreshes_started + s.early_refreshes_skipped
}

#[tokio::test(flavor = "current_thread")]
async fn engine_triggers_early_refresh_with_probability_exp_minus_gap_over_delta_beta() {
    const N: u64 = 2000;
    let delta_us = 1000u64;
    for (i, (beta, ratio)) in [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0)].into_iter().enumerate() {
        let gap_ns = (ratio * delta_us as f64 * beta * 1000.0) as u64;
        let triggers = engine_trigger_count(beta, delta_us, gap_ns, N, 1000 + i as u64).await;
        let p = triggers as f64 / N as f64;
        let expected = (-ratio).exp();
        let tol = 4.0 * (expected * (1.0 - expected) / N as f64).sqrt();
        assert!(
            (p - expected).abs() <= tol,
            "beta {beta}, gap/(δβ) {ratio}: engine triggered {p:.4}, law {expected:.4} ± {tol:.4}"
        );
        // exp(-gap/δ) (beta ignored) would be outside the tolerance for beta != 1.
        if beta != 1.0 {
            let wrong = (-(gap_ns as f64 / 1000.0) / delta_us as f64).exp();
            assert!((p - wrong).abs() > tol);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn engine_beta_zero_never_refreshes_early_and_beta_infinity_always_does() {
    // beta 0: even 1 µs before expiry with a 1 ms delta, never.
    assert_eq!(engine_trigger_count(0.0, 1000, 1000, 300, 5).await, 0);
    // beta ∞: even 900 ms before expiry with a 1 µs delta, always.
    assert_eq!(
        engine_trigger_count(f64::INFINITY, 1, 900 * MS, 300, 6).await,
        300
    );
    // beta 1 beyond δβ·E_MAX: cannot trigger whatever the draw.
    let beyond = (1000.0 * E_MAX * 1000.0) as u64 + 1000;
    assert_eq!(engine_trigger_count(1.0, 1000, beyond, 300, 7).await, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Errors are never cached; failed refreshes keep the value and back off
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Boom(u64);

#[test]
fn errors_are_not_cached_and_the_next_call_computes_again() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&store, Duration::from_secs(10))
        .name("errors")
        .clock(clock.clone())
        .build_blocking(move |k: &u64| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            if n < 2 {
                Err(Boom(n))
            } else {
                Ok(*k + 100)
            }
        })
        .unwrap();
    match f.get(&1) {
        Err(Error::Compute(e)) => assert_eq!(*e, Boom(0)),
        other => panic!("expected the closure's error, got {other:?}"),
    }
    assert!(
        entry_of(&store, "errors", 1).is_none(),
        "an error must not be stored"
    );
    match f.get(&1) {
        Err(e) => assert_eq!(e.compute_error(), Some(&Boom(1))),
        other => panic!("expected a fresh error from a second computation, got {other:?}"),
    }
    assert_eq!(f.get(&1).unwrap(), 101);
    assert_eq!(f.get(&1).unwrap(), 101);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let s = f.stats();
    assert_eq!(
        (
            s.calls,
            s.hits,
            s.hard_misses,
            s.computations,
            s.errors,
            s.coalesced_waiters
        ),
        (4, 1, 3, 3, 2, 0)
    );
}

/// A function with β = ∞ (every hit triggers a refresh) whose computations take 1 ms on the
/// manual clock (or `refresh_takes` for refreshes) and fail while `fail` is set.
struct Flaky {
    clock: ManualClock,
    store: MemoryStore<u64, u64>,
    fail: Arc<AtomicBool>,
    f: herdless::Memoized<u64, u64, Boom, MemoryStore<u64, u64>>,
}

fn flaky(name: &str, ttl: Duration, backoff: Duration, refresh_takes: Duration) -> Flaky {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let gen = Arc::new(AtomicU64::new(0));
    let (c, fl, g) = (clock.clone(), fail.clone(), gen.clone());
    let f = memoize_stampede(&store, ttl)
        .name(name)
        .beta(f64::INFINITY)
        .refresh_backoff(backoff)
        .clock(clock.clone())
        .rng_seed(1)
        .build(move |_k: u64| {
            let n = g.fetch_add(1, Ordering::SeqCst);
            c.advance(if n == 0 {
                Duration::from_millis(1)
            } else {
                refresh_takes
            });
            let out = if fl.load(Ordering::SeqCst) {
                Err(Boom(n))
            } else {
                Ok(n)
            };
            std::future::ready(out)
        })
        .unwrap();
    Flaky {
        clock,
        store,
        fail,
        f,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn failed_refresh_keeps_value_counts_failure_and_backs_off_on_the_injected_clock() {
    let t = flaky(
        "backoff",
        Duration::from_secs(10),
        Duration::from_secs(1),
        Duration::from_millis(1),
    );
    let f = &t.f;
    assert_eq!(f.get(&7).await.unwrap(), 0);
    let first = entry_of(&t.store, "backoff", 7).unwrap();

    t.fail.store(true, Ordering::SeqCst);
    let trigger_at = t.clock.now();
    assert_eq!(
        f.get(&7).await.unwrap(),
        0,
        "the triggering caller is served the current value"
    );
    settle().await;
    let s = f.stats();
    assert_eq!(
        (
            s.early_refreshes_started,
            s.early_refreshes_failed,
            s.computations
        ),
        (1, 1, 2)
    );
    assert_eq!(
        s.errors, 0,
        "a failed background refresh is not a caller's error"
    );
    assert_eq!(
        entry_of(&t.store, "backoff", 7).unwrap(),
        first,
        "the current value is kept"
    );

    // Within the backoff (on the manual clock) hits keep being served and nothing retriggers.
    for step in [0u64, 200, 500, 998] {
        t.clock.set(trigger_at + step * MS);
        assert_eq!(f.get(&7).await.unwrap(), 0);
        settle().await;
    }
    let s = f.stats();
    assert_eq!(
        (s.early_refreshes_started, s.computations),
        (1, 2),
        "retriggered during backoff"
    );
    assert_eq!(s.early_refreshes_skipped, 4);

    // After the backoff a trigger refreshes again; this time it succeeds.
    t.fail.store(false, Ordering::SeqCst);
    t.clock.set(trigger_at + 1002 * MS);
    assert_eq!(f.get(&7).await.unwrap(), 0);
    settle().await;
    let s = f.stats();
    assert_eq!(
        (s.early_refreshes_started, s.early_refreshes_completed),
        (2, 1)
    );
    assert_eq!(
        f.get(&7).await.unwrap(),
        2,
        "the successful refresh's value is served"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn failed_refresh_serves_value_only_until_expiry() {
    let t = flaky(
        "until_expiry",
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_millis(1),
    );
    let f = &t.f;
    assert_eq!(f.get(&1).await.unwrap(), 0);
    let e = entry_of(&t.store, "until_expiry", 1).unwrap();
    t.fail.store(true, Ordering::SeqCst);
    assert_eq!(f.get(&1).await.unwrap(), 0);
    settle().await;
    assert_eq!(f.stats().early_refreshes_failed, 1);
    t.clock.set(e.expires_at - 1);
    assert_eq!(f.get(&1).await.unwrap(), 0, "kept until expiry");
    t.clock.set(e.expires_at);
    match f.get(&1).await {
        Err(Error::Compute(b)) => assert_eq!(*b, Boom(2)),
        other => panic!("past expiry the old value must not be served; got {other:?}"),
    }
    t.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        f.get(&1).await.unwrap(),
        3,
        "the key is not poisoned by failures"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn refresh_backoff_starts_when_the_refresh_fails() {
    // The refresh takes 2 s on the injected clock and fails; the backoff is 1 s. "After a
    // failed background refresh, no new refresh of that key starts for this long" (Builder::
    // refresh_backoff), so a hit right after the failure must not start another refresh.
    let t = flaky(
        "late_failure",
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let f = &t.f;
    assert_eq!(f.get(&1).await.unwrap(), 0);
    t.fail.store(true, Ordering::SeqCst);
    assert_eq!(f.get(&1).await.unwrap(), 0);
    settle().await;
    assert_eq!(f.stats().early_refreshes_failed, 1);
    // The failure happened 2 s after the trigger; we are right at the failure time.
    assert_eq!(f.get(&1).await.unwrap(), 0);
    settle().await;
    let s = f.stats();
    assert_eq!(
        s.early_refreshes_started, 1,
        "a refresh started 0 s after a failure despite a 1 s backoff: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces, layered recipe (sequential), counters
// ---------------------------------------------------------------------------------------------

#[test]
fn functions_sharing_a_store_are_isolated_by_name_and_share_by_name() {
    let store = MemoryStore::<u64, String>::new(64).unwrap();
    let build = |name: Option<&str>, tag: &'static str, runs: Arc<AtomicU64>| {
        let mut b = memoize_stampede(&store, Duration::from_secs(60));
        if let Some(n) = name {
            b = b.name(n);
        }
        b.build_blocking_infallible(move |k: &u64| {
            runs.fetch_add(1, Ordering::SeqCst);
            format!("{tag}:{k}")
        })
        .unwrap()
    };
    let (ra, rb, ra2, rx, ry) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let a = build(Some("alpha"), "A", ra.clone());
    let b = build(Some("beta"), "B", rb.clone());
    let a2 = build(Some("alpha"), "A2", ra2.clone());
    let x = build(None, "X", rx.clone());
    let y = build(None, "Y", ry.clone());
    assert_eq!(a.name(), "alpha");
    assert_ne!(
        x.name(),
        y.name(),
        "anonymous functions get distinct namespaces"
    );

    assert_eq!(a.get(&1).unwrap(), "A:1");
    assert_eq!(
        b.get(&1).unwrap(),
        "B:1",
        "another name must not see alpha's key"
    );
    assert_eq!(x.get(&1).unwrap(), "X:1");
    assert_eq!(y.get(&1).unwrap(), "Y:1");
    assert_eq!(
        a2.get(&1).unwrap(),
        "A:1",
        "the same name sees the stored value"
    );
    assert_eq!(a2.get(&2).unwrap(), "A2:2");
    assert_eq!(a.get(&2).unwrap(), "A2:2");
    assert_eq!(b.get(&2).unwrap(), "B:2");
    let runs: Vec<u64> = [&ra, &rb, &ra2, &rx, &ry]
        .iter()
        .map(|r| r.load(Ordering::SeqCst))
        .collect();
    assert_eq!(runs, vec![1, 2, 1, 1, 1]);
    assert_eq!(store.len(), 6);
    let ns_a = Store::<u64, String>::namespace(&store, "alpha");
    let ns_b = Store::<u64, String>::namespace(&store, "beta");
    assert_eq!(ns_a, Store::<u64, String>::namespace(&store, "alpha"));
    assert_ne!(ns_a.id(), ns_b.id());
}

#[test]
fn namespaces_do_not_collide_on_awkward_names() {
    let store = MemoryStore::<String, String>::new(64).unwrap();
    let names = ["a", "a:", ":a", "{a}", "a\0b", "a\u{0}", "", "x"];
    let fs: Vec<_> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            let tag = n.to_string();
            memoize_stampede(&store, Duration::from_secs(60))
                .name(n)
                .build_blocking_infallible(move |k: &String| format!("{tag}|{k}"))
                .unwrap()
        })
        .collect();
    for key in ["k", ":k", "{k}", ""] {
        for (f, n) in fs.iter().zip(names.iter().filter(|n| !n.is_empty())) {
            assert_eq!(f.get(&key.to_string()).unwrap(), format!("{n}|{key}"));
        }
    }
    // An empty name is rejected rather than silently shared.
    let err = memoize_stampede(&store, Duration::from_secs(1))
        .name("")
        .build_blocking_infallible(|k: &String| k.clone())
        .expect_err("empty name");
    assert_eq!(err.field(), "name");
}

#[test]
fn stats_counters_add_up_in_a_simple_scenario() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(10))
        .clock(clock.clone())
        .build_blocking(|k: &u64| if *k == 0 { Err(Boom(0)) } else { Ok(*k) })
        .unwrap();
    assert_eq!(f.stats(), Default::default());
    f.get(&1).unwrap(); // miss
    f.get(&1).unwrap(); // hit
    f.get(&2).unwrap(); // miss
    f.get(&1).unwrap(); // hit
    f.get(&0).unwrap_err(); // miss + error
    f.get(&0).unwrap_err(); // miss + error (not cached)
    clock.advance(Duration::from_secs(10));
    f.get(&2).unwrap(); // expired: miss
    let s = f.stats();
    assert_eq!(s.calls, 7);
    assert_eq!(s.hits, 2);
    assert_eq!(s.hard_misses, 5);
    assert_eq!(s.computations, 5);
    assert_eq!(s.errors, 2);
    assert_eq!(s.coalesced_waiters, 0);
    assert_eq!(s.takeovers, 0);
    assert_eq!(s.early_refreshes_started, 0);
    assert_eq!(s.calls, s.hits + s.hard_misses);
}
