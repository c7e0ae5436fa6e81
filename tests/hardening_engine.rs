//! Hardening of the in-process engine (issue 8): per-follower contention policies, bounded
//! background refreshes, bounded rate meters and refresh backoffs, detached computations under
//! a cancellation storm, unrepresentable durations.
//!
//! Every wait is bounded; counts are asserted, never wall-clock durations.

use herdless::{memoize_stampede, MemoryStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(20);

type Store64 = MemoryStore<u64, u64>;

/// 1000 callers, each giving up after 1 ms, around a 50 ms computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_starts_at_most_two_computations() {
    let store = Store64::new(64).unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let s = started.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build(move |k: u64| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::convert::Infallible>(k + 1)
            }
        })
        .unwrap();
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(1), f.get(&7)).await
            })
        })
        .collect();
    for c in callers {
        let _ = tokio::time::timeout(BOUND, c).await.expect("a caller hung");
    }
    let deadline = Instant::now() + BOUND;
    while f.peek(&7).await.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = f.stats();
    println!("computations started: {} ({s:?})", started.load(Ordering::SeqCst));
    assert_eq!(f.peek(&7).await, Some(8), "the computation ran to completion and stored");
    assert!(started.load(Ordering::SeqCst) <= 2, "{} computations", started.load(Ordering::SeqCst));
    assert_eq!(s.computations, started.load(Ordering::SeqCst));
    assert!(s.abandoned_callers >= 900, "the callers that gave up are counted: {s:?}");
    assert_eq!(s.takeovers, 0, "nobody took over: the computation was never abandoned");
    assert_eq!(f.get(&7).await.unwrap(), 8);
}
