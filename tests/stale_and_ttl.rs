//! Issue 22 items 1 and 2: serve stale on error (`stale_if_error`) and per-value TTL
//! (`ttl_with`, `insert_with_ttl`), on the memory store with the manual clock (exact), plus the
//! coalesced-waiter case on real threads (bounded waits).

use herdless::{memoize, memoize_stampede, Contention, ManualClock, MemoryStore};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const S: Duration = Duration::from_secs(1);

/// A backend that fails while `down` is set, counting its runs.
fn backend(
    down: &Arc<AtomicBool>,
    runs: &Arc<AtomicUsize>,
) -> impl Fn(&u32) -> Result<u32, String> + Send + Sync + 'static {
    let (down, runs) = (down.clone(), runs.clone());
    move |k: &u32| {
        let n = runs.fetch_add(1, Ordering::SeqCst) as u32;
        if down.load(Ordering::SeqCst) {
            Err("db down".to_string())
        } else {
            Ok(k * 100 + n)
        }
    }
}

#[test]
fn a_failing_backend_after_expiry_serves_the_old_value_until_the_grace_ends() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let (down, runs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let f = memoize_stampede(&store, 10 * S)
        .clock(clock.clone())
        .beta(0.0)
        .refresh_backoff(2 * S)
        .stale_if_error(30 * S)
        .build_blocking(backend(&down, &runs))
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 100);
    down.store(true, Ordering::SeqCst);
    clock.advance(11 * S); // expired 1 s ago
    assert_eq!(f.get(&1).unwrap(), 100, "the last value, not the error");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "it did try to recompute");
    let st = f.stats();
    assert_eq!(st.stale_served_on_error, 1);
    assert_eq!(st.errors, 1, "the failure is still counted");
    // Within the backoff: the stale value at once, no new attempt.
    clock.advance(S);
    assert_eq!(f.get(&1).unwrap(), 100);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "backed off");
    // After the backoff the next call retries (and fails again: stale again).
    clock.advance(2 * S);
    assert_eq!(f.get(&1).unwrap(), 100);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "retried after the backoff");
    // Past the grace (expired 31 s ago): the error.
    clock.advance(27 * S);
    let err = f.get(&1).unwrap_err();
    assert_eq!(err.compute_error().map(String::as_str), Some("db down"));
    // The backend recovers: a fresh value, and the next failure is stale again.
    down.store(false, Ordering::SeqCst);
    assert_eq!(f.get(&1).unwrap(), 104);
    down.store(true, Ordering::SeqCst);
    clock.advance(10 * S);
    assert_eq!(f.get(&1).unwrap(), 104);
}

#[test]
fn a_panicking_recomputation_within_the_grace_serves_the_old_value() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let panics = Arc::new(AtomicBool::new(false));
    let p = panics.clone();
    let f = memoize_stampede(&store, 10 * S)
        .clock(clock.clone())
        .beta(0.0)
        .stale_if_error(30 * S)
        .build_blocking_infallible(move |k: &u32| {
            if p.load(Ordering::SeqCst) {
                panic!("bug in the backend");
            }
            *k
        })
        .unwrap();
    assert_eq!(f.get(&7).unwrap(), 7);
    panics.store(true, Ordering::SeqCst);
    clock.advance(11 * S);
    assert_eq!(f.get(&7).unwrap(), 7);
    assert_eq!(f.stats().stale_served_on_error, 1);
}

/// Without `stale_if_error` nothing changes: the expired value is not served on error.
#[test]
fn without_the_option_an_error_after_expiry_is_returned() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let (down, runs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let f = memoize_stampede(&store, 10 * S)
        .clock(clock.clone())
        .beta(0.0)
        .build_blocking(backend(&down, &runs))
        .unwrap();
    f.get(&1).unwrap();
    down.store(true, Ordering::SeqCst);
    clock.advance(11 * S);
    assert!(f.get(&1).is_err());
    assert_eq!(f.stats().stale_served_on_error, 0);
}

/// Callers coalesced onto the failed computation get the stale value too, and a caller whose
/// wait runs out (the computation outlasts its patience) gets it as well.
#[test]
fn coalesced_waiters_and_timed_out_waiters_get_the_stale_value() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let down = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Barrier::new(2));
    let slow = Arc::new(AtomicBool::new(false));
    let f = {
        let (down, gate, slow) = (down.clone(), gate.clone(), slow.clone());
        memoize_stampede(&store, 10 * S)
            .clock(clock.clone())
            .beta(0.0)
            .stale_if_error(30 * S)
            .contention(Contention::Wait(Duration::from_secs(10)))
            .build_blocking(move |k: &u32| {
                if slow.swap(false, Ordering::SeqCst) {
                    gate.wait(); // the waiters are in
                    std::thread::sleep(Duration::from_millis(200));
                }
                if down.load(Ordering::SeqCst) {
                    Err("db down".to_string())
                } else {
                    Ok(*k)
                }
            })
            .unwrap()
    };
    assert_eq!(f.get(&3).unwrap(), 3);
    down.store(true, Ordering::SeqCst);
    slow.store(true, Ordering::SeqCst);
    clock.advance(11 * S);
    let leader = {
        let f = f.clone();
        std::thread::spawn(move || f.get(&3))
    };
    gate.wait();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || f.get(&3))
        })
        .collect();
    assert_eq!(leader.join().unwrap().unwrap(), 3);
    for w in waiters {
        assert_eq!(
            w.join().unwrap().unwrap(),
            3,
            "a coalesced waiter got the error"
        );
    }
    assert_eq!(
        f.stats().computations,
        2,
        "one failed recomputation for all"
    );

    // A waiter whose patience runs out before the computation ends.
    let impatient = memoize_stampede(&store, 10 * S)
        .name("impatient")
        .clock(clock.clone())
        .beta(0.0)
        .stale_if_error(30 * S)
        .contention(Contention::Wait(Duration::from_millis(20)))
        .build_blocking_infallible({
            let (gate, slow) = (gate.clone(), slow.clone());
            move |k: &u32| {
                if slow.swap(false, Ordering::SeqCst) {
                    gate.wait();
                    std::thread::sleep(Duration::from_millis(500));
                }
                *k + 1
            }
        })
        .unwrap();
    assert_eq!(impatient.get(&3).unwrap(), 4);
    clock.advance(11 * S);
    slow.store(true, Ordering::SeqCst);
    let leader = {
        let f = impatient.clone();
        std::thread::spawn(move || f.get(&3))
    };
    gate.wait();
    assert_eq!(
        impatient.get(&3).unwrap(),
        4,
        "the timed-out waiter got the stale value"
    );
    assert_eq!(impatient.stats().stale_served_on_error, 1);
    assert_eq!(leader.join().unwrap().unwrap(), 4);
}

#[test]
fn stale_if_error_is_validated() {
    let store = MemoryStore::<u32, u32>::new(16).unwrap();
    let err = memoize(&store, Duration::ZERO)
        .stale_if_error(S)
        .build_blocking_infallible(|k: &u32| *k)
        .unwrap_err();
    assert_eq!(err.field(), "stale_if_error");
    let err = memoize_stampede(&store, S)
        .stale_if_error(Duration::MAX)
        .build_blocking_infallible(|k: &u32| *k)
        .unwrap_err();
    assert_eq!(err.field(), "stale_if_error");
}

/// Two keys with different TTLs expire on their own schedules.
#[test]
fn per_value_ttls_expire_on_their_own_schedules() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&store, 3600 * S)
        .clock(clock.clone())
        .beta(0.0)
        // Key 1 lives 10 s, key 2 lives 100 s.
        .ttl_with(|k: &u32, _v: &u32| if *k == 1 { 10 * S } else { 100 * S })
        .build_blocking_infallible(move |k: &u32| {
            r.fetch_add(1, Ordering::SeqCst);
            *k
        })
        .unwrap();
    f.get(&1).unwrap();
    f.get(&2).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    clock.advance(11 * S);
    f.get(&1).unwrap();
    f.get(&2).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3, "only key 1 expired");
    clock.advance(90 * S); // 101 s: key 2 expired, key 1 (recomputed at 11 s) too
    f.get(&2).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    f.get(&1).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 5);
}

/// XFetch works from each entry's own expiry: with a fixed β and a measured δ, a short-lived key
/// refreshes early near its own expiry while a long-lived one, at the same age, does not.
#[test]
fn xfetch_refreshes_each_key_near_its_own_expiry() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let c = clock.clone();
    let f = memoize_stampede(&store, 3600 * S)
        .clock(clock.clone())
        .beta(1.0)
        .rng_seed(3)
        .ttl_with(|k: &u32, _v: &u32| if *k == 1 { 10 * S } else { 1000 * S })
        .build_blocking_infallible(move |k: &u32| {
            c.advance(Duration::from_millis(500)); // δ = 0.5 s
            *k
        })
        .unwrap();
    f.get(&1).unwrap();
    f.get(&2).unwrap();
    // 9.5 s after key 1's write: 0.5 s before its expiry (one δ), far from key 2's.
    clock.advance(Duration::from_millis(9_000));
    let before = f.stats().early_refreshes_started;
    for _ in 0..200 {
        f.get(&2).unwrap();
    }
    let wait_for_refreshes = |n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while f.stats().early_refreshes_started < n {
            assert!(std::time::Instant::now() < deadline, "no early refresh");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    assert_eq!(
        f.stats().early_refreshes_started,
        before,
        "key 2 (TTL 1000 s) refreshed early at 9 s"
    );
    for _ in 0..200 {
        f.get(&1).unwrap();
    }
    // exp(−1) per call at one δ before expiry: 200 calls trigger with certainty (1 − e⁻²⁰⁰·⁰·³⁷).
    wait_for_refreshes(before + 1);
}

#[test]
fn insert_with_ttl_lives_for_its_own_ttl_and_zero_removes() {
    let (store, clock) = (
        MemoryStore::<u32, u32>::new(16).unwrap(),
        ManualClock::new(),
    );
    let f = memoize_stampede(&store, 3600 * S)
        .clock(clock.clone())
        .beta(0.0)
        .build_blocking_infallible(|k: &u32| *k)
        .unwrap();
    f.insert_with_ttl(&1, 42, 5 * S).unwrap();
    assert_eq!(f.peek(&1), Some(42));
    clock.advance(6 * S);
    assert_eq!(f.peek(&1), None, "expired after its own 5 s");
    assert_eq!(f.get(&1).unwrap(), 1);
    f.insert_with_ttl(&1, 43, Duration::ZERO).unwrap();
    assert_eq!(
        f.peek(&1),
        None,
        "a zero TTL stores nothing and drops the old value"
    );
}
