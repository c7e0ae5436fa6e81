//! The cache operations beside `get` (invalidate, invalidate_all, insert, insert_with_delta,
//! refresh, peek) on the in-memory store, through both facades, and the race they must win:
//! an invalidation while a computation of the same key is in flight.

use herdless::{memoize_stampede, MemoryStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

#[test]
fn blocking_operations() {
    let source = Arc::new(AtomicU64::new(1));
    let runs = Arc::new(AtomicU64::new(0));
    let (s, r) = (source.clone(), runs.clone());
    let store = MemoryStore::<String, u64>::new(100).unwrap();
    let f = memoize_stampede(&store, MIN)
        .name("ops")
        .build_blocking_infallible(move |_k: &String| {
            r.fetch_add(1, Ordering::SeqCst);
            s.load(Ordering::SeqCst)
        })
        .unwrap();
    let k = "a".to_string();
    assert_eq!(f.peek(&k), None, "peek never computes");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(f.get(&k).unwrap(), 1);
    source.store(2, Ordering::SeqCst);
    assert_eq!(f.get(&k).unwrap(), 1, "cached until invalidated");
    f.invalidate(&k).unwrap();
    assert_eq!(f.peek(&k), None);
    assert_eq!(f.get(&k).unwrap(), 2);
    f.insert(&k, 40).unwrap();
    assert_eq!(f.get(&k).unwrap(), 40);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "insert does not compute");
    source.store(3, Ordering::SeqCst);
    assert_eq!(f.refresh(&k).unwrap(), 3);
    assert_eq!(f.peek(&k), Some(3));
    f.insert_with_delta(&"b".to_string(), 7, Duration::from_millis(5))
        .unwrap();
    f.invalidate_all().unwrap();
    assert_eq!(f.peek(&k), None);
    assert_eq!(f.peek(&"b".to_string()), None);
    let stats = f.stats();
    assert_eq!(stats.invalidations, 2);
    assert_eq!(stats.inserts, 2);
}

#[tokio::test]
async fn async_operations_and_other_functions_untouched() {
    let store = MemoryStore::<u64, u64>::new(100).unwrap();
    let f = memoize_stampede(&store, MIN)
        .name("f")
        .build_infallible(|k: u64| async move { k + 1 })
        .unwrap();
    let g = memoize_stampede(&store, MIN)
        .name("g")
        .build_infallible(|k: u64| async move { k + 100 })
        .unwrap();
    assert_eq!(f.get(&1).await.unwrap(), 2);
    assert_eq!(g.get(&1).await.unwrap(), 101);
    f.invalidate_all().await.unwrap();
    assert_eq!(f.peek(&1).await, None);
    assert_eq!(
        g.peek(&1).await,
        Some(101),
        "another function's keys survive"
    );
    f.insert(&5, 0).await.unwrap();
    assert_eq!(f.get(&5).await.unwrap(), 0);
    assert_eq!(f.refresh(&5).await.unwrap(), 6);
    f.invalidate(&5).await.unwrap();
    assert_eq!(f.peek(&5).await, None);
    assert!(format!("{f:?}").contains("\"f\""));
}

/// An insert carries δ = 0, so XFetch never refreshes it early at any finite β (documented):
/// near its expiry it is still served without a refresh. (β = ∞ refreshes on every hit, δ or
/// not; this test once used it and passed only when the refresh thread had not yet counted
/// itself by the time of the assertion.)
#[test]
fn inserted_values_do_not_refresh_early() {
    let clock = herdless::ManualClock::new();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let store = MemoryStore::<u64, u64>::new(10).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(1))
        .beta(1e12)
        .clock(clock.clone())
        .build_blocking_infallible(move |k: &u64| {
            r.fetch_add(1, Ordering::SeqCst);
            *k
        })
        .unwrap();
    f.insert(&1, 9).unwrap();
    clock.advance(Duration::from_millis(999));
    assert_eq!(f.get(&1).unwrap(), 9);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(f.stats().early_refreshes_started, 0);
}

/// The race: `invalidate` while a computation of the same key is in flight. The computation
/// read the old data; after `invalidate` returned, its result must never be served from the
/// store. Real threads, many rounds, random interleavings of where the invalidation lands.
#[test]
fn invalidate_during_a_computation_never_resurrects_the_old_value() {
    for round in 0..200u64 {
        let data = Arc::new(AtomicU64::new(round * 10));
        let store = MemoryStore::<u64, u64>::new(10).unwrap();
        let started = Arc::new(Barrier::new(2));
        let (d, st) = (data.clone(), started.clone());
        let first = Arc::new(AtomicU64::new(1));
        let fst = first.clone();
        let f = memoize_stampede(&store, MIN)
            .build_blocking_infallible(move |_k: &u64| {
                let v = d.load(Ordering::SeqCst);
                if fst.swap(0, Ordering::SeqCst) == 1 {
                    st.wait(); // the computation has read the old data
                    std::thread::sleep(Duration::from_micros(round % 7 * 50));
                }
                v
            })
            .unwrap();
        let g = f.clone();
        let computing = std::thread::spawn(move || g.get(&1).unwrap());
        started.wait();
        data.store(round * 10 + 1, Ordering::SeqCst); // the write ...
        if round % 3 == 0 {
            std::thread::yield_now();
        }
        f.invalidate(&1).unwrap(); // ... then the invalidation
        let _old = computing.join().unwrap();
        assert_eq!(
            f.get(&1).unwrap(),
            round * 10 + 1,
            "round {round}: the stale computation's result was served after invalidate returned"
        );
    }
}
