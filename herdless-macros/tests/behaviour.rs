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
