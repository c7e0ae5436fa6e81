//! What `#[herdless::memoized]` functions do at run time: one computation per key under
//! concurrency, errors never cached, separate keys computed separately, the companion.

#![deny(missing_docs)]

use herdless::{memoized, Contention, MemoryStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

static SLOW_SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Squares slowly (documented like any function).
#[memoized(ttl_secs = 60)]
fn slow_square(n: u64) -> u64 {
    SLOW_SQUARE_RUNS.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    n * n
}

#[test]
fn blocking_body_runs_once_for_many_threads() {
    let start = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                slow_square(12)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 144);
    }
    assert_eq!(SLOW_SQUARE_RUNS.load(Ordering::SeqCst), 1);
    let stats = slow_square_memoized().stats();
    assert_eq!(stats.computations, 1);
    assert_eq!(
        slow_square_memoized().name(),
        concat!(module_path!(), "::slow_square")
    );
}

static FETCH_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, PartialEq)]
struct NotFound(u64);

#[memoized(ttl = Duration::from_secs(60), beta = auto, capacity = 100)]
async fn fetch(tenant: String, id: u64) -> Result<String, NotFound> {
    FETCH_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    if id == 0 {
        Err(NotFound(id))
    } else {
        Ok(format!("{tenant}/{id}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_body_runs_once_per_key_and_errors_are_not_cached() {
    let tasks: Vec<_> = (0..32)
        .map(|i| tokio::spawn(fetch("acme".to_string(), 1 + i % 2)))
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), format!("acme/{}", 1 + i % 2));
    }
    // Two different argument tuples: two computations, no more.
    assert_eq!(FETCH_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(fetch_memoized().stats().computations, 2);
    // The companion shares the cache; its key is the tuple of the arguments.
    assert_eq!(
        fetch_memoized().get(&("acme".into(), 1)).await.unwrap(),
        "acme/1"
    );
    assert_eq!(FETCH_RUNS.load(Ordering::SeqCst), 2);

    // Errors come back as the user's type and are not cached.
    assert_eq!(fetch("acme".into(), 0).await, Err(NotFound(0)));
    assert_eq!(fetch("acme".into(), 0).await, Err(NotFound(0)));
    assert_eq!(FETCH_RUNS.load(Ordering::SeqCst), 4);
}

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Fails the first time, succeeds afterwards: the failure must not be served from the cache.
#[memoized(ttl_ms = 60_000, beta = 0.5, name = "behaviour::flaky")]
fn flaky(a: u8, b: u8) -> Result<u16, String> {
    if FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("transient".to_string());
    }
    Ok(u16::from(a) + u16::from(b))
}

#[test]
fn blocking_errors_are_not_cached_and_keys_are_separate() {
    assert_eq!(flaky(1, 2), Err("transient".to_string()));
    assert_eq!(flaky(1, 2), Ok(3));
    assert_eq!(flaky(1, 2), Ok(3));
    assert_eq!(flaky(2, 1), Ok(3));
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(flaky_memoized().name(), "behaviour::flaky");
    assert_eq!(flaky_memoized().get(&(2, 1)).unwrap(), 3);
}

static CONSTANT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[memoized(ttl_secs = 60)]
async fn constant() -> u32 {
    CONSTANT_RUNS.fetch_add(1, Ordering::SeqCst);
    42
}

#[tokio::test]
async fn zero_arguments_use_the_unit_key() {
    assert_eq!(constant().await, 42);
    assert_eq!(constant().await, 42);
    assert_eq!(constant_memoized().get(&()).await.unwrap(), 42);
    assert_eq!(CONSTANT_RUNS.load(Ordering::SeqCst), 1);
}

/// Recursion goes through the cache: each `fib(k)` is computed once.
#[memoized(ttl_secs = 60, capacity = 1_000)]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[test]
fn recursion_is_memoized() {
    assert_eq!(fib(60), 1_548_008_755_920);
    assert_eq!(fib_memoized().stats().computations, 61);
}

/// The key of `product`: `(a, (b, _))`.
type ProductStore = MemoryStore<(u32, (u32, u32)), u64>;

static SHARED: std::sync::LazyLock<ProductStore> =
    std::sync::LazyLock::new(|| MemoryStore::new(100).unwrap());

#[memoized(
    ttl_secs = 60,
    store = SHARED,
    store_type = ProductStore,
    contention = Contention::Wait(Duration::from_secs(5)),
)]
fn product(mut a: u32, (b, _unused): (u32, u32)) -> u64 {
    a += 0;
    u64::from(a) * u64::from(b)
}

#[test]
fn explicit_store_and_patterns() {
    assert_eq!(product(6, (7, 0)), 42);
    assert_eq!(product(6, (7, 0)), 42);
    assert_eq!(product_memoized().stats().computations, 1);
    assert!(!SHARED.is_empty());
}

static SLEEPY_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[memoized(ttl_secs = 60, contention = Contention::FailFast)]
fn sleepy(n: u8) -> u8 {
    SLEEPY_STARTED.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    n
}

#[test]
fn herdless_side_errors_panic_with_an_explanation() {
    let leader = std::thread::spawn(|| sleepy(1));
    while !SLEEPY_STARTED.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let follower = std::thread::spawn(|| sleepy(1)).join();
    let payload = follower.unwrap_err();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap();
    assert!(message.contains("herdless::Error::Busy"), "{message}");
    assert!(message.contains("sleepy_memoized().get(..)"), "{message}");
    assert_eq!(leader.join().unwrap(), 1);
    // The companion returns the error instead.
    assert_eq!(sleepy_memoized().get(&1).unwrap(), 1);
}

static WARM_UPS: AtomicUsize = AtomicUsize::new(0);

/// No argument, no return value: key `()`, value `()`.
#[memoized(ttl_secs = 60)]
pub fn warm_up() {
    WARM_UPS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn unit_function() {
    warm_up();
    warm_up();
    assert_eq!(WARM_UPS.load(Ordering::SeqCst), 1);
}

/// Lint attributes apply to the body too; an `#[expect]` is fulfilled by the body, not by the
/// generated lookup (which does use `verbose`: it is part of the key).
#[memoized(ttl_secs = 60)]
#[expect(unused_variables, reason = "the body ignores `verbose`")]
fn describe(n: u8, verbose: bool) -> String {
    n.to_string()
}

#[test]
fn lint_attributes_reach_the_body() {
    assert_eq!(describe(7, true), "7");
    assert_eq!(describe(7, false), "7");
    assert_eq!(describe_memoized().stats().computations, 2);
}

static GRACE_SECS_RUNS: AtomicUsize = AtomicUsize::new(0);
static GRACE_SECS_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Debug, Clone, PartialEq)]
struct Down;

#[memoized(ttl_ms = 50, beta = 0.0, stale_if_error_secs = 600)]
fn grace_secs(n: u64) -> Result<u64, Down> {
    GRACE_SECS_RUNS.fetch_add(1, Ordering::SeqCst);
    if GRACE_SECS_FAILS.load(Ordering::SeqCst) {
        Err(Down)
    } else {
        Ok(n + 1)
    }
}

#[test]
fn stale_if_error_secs_serves_the_last_value_when_the_recomputation_fails() {
    assert_eq!(grace_secs(1), Ok(2));
    GRACE_SECS_FAILS.store(true, Ordering::SeqCst);
    // Wait (bounded) until the 50 ms value has expired: a call then recomputes.
    let runs = GRACE_SECS_RUNS.load(Ordering::SeqCst);
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(grace_secs(1), Ok(2), "the last value, within the grace");
        if GRACE_SECS_RUNS.load(Ordering::SeqCst) > runs {
            break;
        }
    }
    assert!(
        GRACE_SECS_RUNS.load(Ordering::SeqCst) > runs,
        "never recomputed"
    );
    assert!(grace_secs_memoized().stats().stale_served_on_error >= 1);
    // A key with no last value still fails.
    assert_eq!(grace_secs(7), Err(Down));
}

#[memoized(ttl_ms = 50, beta = 0.0, stale_if_error = Duration::from_secs(600))]
async fn flaky_async(n: u64) -> Result<u64, Down> {
    FLAKY_ASYNC_RUNS.fetch_add(1, Ordering::SeqCst);
    if FLAKY_ASYNC_FAILS.load(Ordering::SeqCst) {
        Err(Down)
    } else {
        Ok(n + 1)
    }
}
static FLAKY_ASYNC_RUNS: AtomicUsize = AtomicUsize::new(0);
static FLAKY_ASYNC_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::test]
async fn stale_if_error_duration_serves_the_last_value_when_the_recomputation_fails() {
    assert_eq!(flaky_async(1).await, Ok(2));
    FLAKY_ASYNC_FAILS.store(true, Ordering::SeqCst);
    let runs = FLAKY_ASYNC_RUNS.load(Ordering::SeqCst);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            flaky_async(1).await,
            Ok(2),
            "the last value, within the grace"
        );
        if FLAKY_ASYNC_RUNS.load(Ordering::SeqCst) > runs {
            break;
        }
    }
    assert!(
        FLAKY_ASYNC_RUNS.load(Ordering::SeqCst) > runs,
        "never recomputed"
    );
    assert!(flaky_async_memoized().stats().stale_served_on_error >= 1);
}

static PER_VALUE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Negative answers (0) are not stored at all; others live an hour.
fn ttl_of(_key: &(u64, bool), value: &u64) -> Duration {
    if *value == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(3600)
    }
}

#[memoized(ttl_secs = 60, ttl_with = ttl_of)]
fn per_value(n: u64, zero: bool) -> u64 {
    PER_VALUE_RUNS.fetch_add(1, Ordering::SeqCst);
    if zero {
        0
    } else {
        n
    }
}

#[test]
fn ttl_with_gives_each_value_its_own_ttl() {
    for _ in 0..3 {
        assert_eq!(per_value(5, false), 5);
    }
    assert_eq!(
        PER_VALUE_RUNS.load(Ordering::SeqCst),
        1,
        "stored for an hour"
    );
    for _ in 0..3 {
        assert_eq!(per_value(5, true), 0);
    }
    assert_eq!(
        PER_VALUE_RUNS.load(Ordering::SeqCst),
        4,
        "a zero TTL from ttl_with: never stored"
    );
}

#[memoized(ttl_secs = 60, name = "behaviour::selfish")]
fn selfish(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        selfish(n) + 1 // a bug: the same key again
    }
}

#[test]
fn recursion_on_the_same_key_panics_at_once_naming_the_function() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(|| selfish(3));
        let _ = tx.send(out.map_err(|p| match p.downcast::<String>() {
            Ok(s) => *s,
            Err(_) => String::new(),
        }));
    });
    // Far below the 30 s the call used to wait for itself.
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the call waits for itself");
    let msg = out.expect_err("recursion on the same key must panic");
    assert!(msg.contains("`behaviour::selfish`"), "{msg}");
}
