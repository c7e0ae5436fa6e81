//! Concurrency semantics of herdless: background refresh, single-flight hard misses (tokio tasks
//! and OS threads), coalesced errors, panics and cancellation, key independence, contention
//! policies, stale serving and the layered DiskCache recipe.
//!
//! Computations that must "take long" block on a gate the test opens after its assertions, so no
//! test depends on timing; every wait is bounded (a bug fails the test instead of hanging it).

use herdless::{
    barrier, memoize, memoize_stampede, BlockingMemoized, Clock, Contention, Error, LocalLock,
    ManualClock, MemoryStore, Store,
};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const BOUND: Duration = Duration::from_secs(20);

/// Polls `cond` (blocking) until it holds; panics after a generous bound.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `cond` from async code until it holds; panics after a generous bound. On a
/// current-thread runtime each round lets every other task run.
async fn wait_until_async(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Runs `f` on a new thread; the result arrives on the returned channel.
fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// An async gate: `pass` waits (bounded) for a permit the test hands out with `open`.
#[derive(Clone)]
struct AsyncGate(Arc<Semaphore>);
impl AsyncGate {
    fn new() -> Self {
        AsyncGate(Arc::new(Semaphore::new(0)))
    }
    async fn pass(&self) {
        tokio::time::timeout(BOUND, self.0.acquire())
            .await
            .expect("gate never opened")
            .unwrap()
            .forget();
    }
    fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

/// A blocking gate for synchronous closures.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<usize>, Condvar)>);
impl Gate {
    fn pass(&self) {
        let (m, c) = &*self.0;
        let g = m.lock().unwrap();
        let (mut g, to) = c.wait_timeout_while(g, BOUND, |p| *p == 0).unwrap();
        assert!(!to.timed_out(), "gate never opened");
        *g -= 1;
    }
    fn open(&self, n: usize) {
        let (m, c) = &*self.0;
        *m.lock().unwrap() += n;
        c.notify_all();
    }
}

#[derive(Debug, PartialEq)]
struct Boom(u64);

type Store64 = MemoryStore<u64, u64>;

// ---------------------------------------------------------------------------------------------
// 3. Early refresh runs in the background, one per key however long it takes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_early_refresh_serves_old_value_while_refresh_blocks_and_is_single_flight() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, String>::new(64).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let gate = AsyncGate::new();
    let (c, n_, g) = (clock.clone(), calls.clone(), gate.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .beta(f64::INFINITY) // every hit triggers
        .clock(clock.clone())
        .rng_seed(3)
        .build(move |_k: u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            let (c, g) = (c.clone(), g.clone());
            async move {
                if n == 0 {
                    c.advance(Duration::from_millis(1));
                } else {
                    g.pass().await; // the refresh blocks until the test opens the gate
                }
                Ok::<_, Infallible>(format!("v{n}"))
            }
        })
        .unwrap();

    assert_eq!(f.get(&1).await.unwrap(), "v0");
    let got = tokio::time::timeout(BOUND, f.get(&1))
        .await
        .expect("the triggering call blocked");
    assert_eq!(
        got.unwrap(),
        "v0",
        "the triggering caller gets the current value"
    );
    wait_until_async("the refresh to start", || {
        f.stats().early_refreshes_started == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for _ in 0..50 {
        let got = tokio::time::timeout(BOUND, f.get(&1))
            .await
            .expect("a hit blocked");
        assert_eq!(got.unwrap(), "v0");
    }
    let s = f.stats();
    assert_eq!(
        s.computations, 2,
        "a second refresh started while the first runs: {s:?}"
    );
    assert_eq!(s.early_refreshes_started, 1);
    assert_eq!(s.early_refreshes_skipped, 50);
    assert_eq!(s.early_refreshes_completed, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    gate.open(1);
    wait_until_async("the refresh to complete", || {
        f.stats().early_refreshes_completed == 1
    })
    .await;
    assert_eq!(
        f.get(&1).await.unwrap(),
        "v1",
        "the refreshed value is served"
    );
    gate.open(100); // let any further refresh finish
}

#[test]
fn blocking_early_refresh_runs_on_a_worker_thread_and_is_single_flight() {
    let clock = ManualClock::new();
    let store = MemoryStore::<u64, String>::new(64).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let gate = Gate::default();
    let (c, n_, g) = (clock.clone(), calls.clone(), gate.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .beta(f64::INFINITY)
        .clock(clock.clone())
        .rng_seed(3)
        .build_blocking_infallible(move |_k: &u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                c.advance(Duration::from_millis(1));
            } else {
                g.pass();
            }
            format!("v{n}")
        })
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), "v0");

    let f2 = f.clone();
    let rx = in_thread(move || (0..51).map(|_| f2.get(&1).unwrap()).collect::<Vec<_>>());
    let got = rx
        .recv_timeout(BOUND)
        .expect("hits blocked on the background refresh");
    assert!(got.iter().all(|v| v == "v0"), "{got:?}");
    wait_until("the refresh to start", || {
        f.stats().early_refreshes_started == 1
    });
    let s = f.stats();
    assert_eq!(s.computations, 2, "{s:?}");
    assert_eq!(s.early_refreshes_started, 1);
    assert_eq!(s.early_refreshes_skipped, 50);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    gate.open(1);
    wait_until("the refresh to complete", || {
        f.stats().early_refreshes_completed == 1
    });
    assert_eq!(f.get(&1).unwrap(), "v1");
    gate.open(100);
}

// ---------------------------------------------------------------------------------------------
// 4. Hard miss: exactly one computation per key
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hard_miss_1000_tokio_tasks_compute_once() {
    const N: usize = 1000;
    let store = MemoryStore::<String, String>::new(64).unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    let (a, r) = (arrived.clone(), runs.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build(move |k: String| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let (a, k) = (a.clone(), k.clone());
            async move {
                // Hold the computation until every caller has arrived.
                wait_until_async("all callers", || a.load(Ordering::SeqCst) == N).await;
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Infallible>(format!("{k}#{n}"))
            }
        })
        .unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (f, a) = (f.clone(), arrived.clone());
            tokio::spawn(async move {
                a.fetch_add(1, Ordering::SeqCst);
                f.get(&"cold".to_string()).await
            })
        })
        .collect();
    let all = tokio::time::timeout(BOUND, futures::future::join_all(tasks))
        .await
        .expect("callers hung");
    for r in all {
        assert_eq!(r.unwrap().unwrap(), "cold#0");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the closure ran more than once"
    );
    let s = f.stats();
    assert_eq!(s.computations, 1);
    assert_eq!(s.calls, N as u64);
    assert_eq!(s.hits + s.hard_misses, N as u64, "{s:?}");
    assert!(s.coalesced_waiters >= 1, "no caller actually waited: {s:?}");
    assert!(s.coalesced_waiters < s.hard_misses);
    assert_eq!(s.errors, 0);
}

#[test]
fn hard_miss_64_threads_blocking_compute_once() {
    const N: usize = 64;
    let store = MemoryStore::<u64, String>::new(64).unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    let (a, r) = (arrived.clone(), runs.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking_infallible(move |k: &u64| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            wait_until("all threads", || a.load(Ordering::SeqCst) == N);
            std::thread::sleep(Duration::from_millis(20)); // widen the overlap; not asserted
            format!("{k}#{n}")
        })
        .unwrap();
    let start = Arc::new(std::sync::Barrier::new(N));
    let (tx, rx) = mpsc::channel();
    for _ in 0..N {
        let (f, a, start, tx) = (f.clone(), arrived.clone(), start.clone(), tx.clone());
        std::thread::spawn(move || {
            start.wait();
            a.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(f.get(&9));
        });
    }
    for _ in 0..N {
        let v = rx.recv_timeout(BOUND).expect("a thread hung");
        assert_eq!(v.unwrap(), "9#0");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the closure ran more than once"
    );
    let s = f.stats();
    assert_eq!(s.computations, 1);
    assert_eq!(s.calls, N as u64);
    assert_eq!(s.hits + s.hard_misses, N as u64);
    assert!(s.coalesced_waiters >= 1, "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Coalesced waiters share the error; it is not cached
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn coalesced_waiters_receive_the_same_error_and_the_next_call_recomputes() {
    let store = Store64::new(64).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let gate = AsyncGate::new();
    let (n_, g) = (calls.clone(), gate.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build(move |_k: u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                if n == 0 {
                    g.pass().await;
                    Err(Boom(n))
                } else {
                    Ok(n)
                }
            }
        })
        .unwrap();
    let spawn = |f: &herdless::Memoized<u64, u64, Boom, Store64>| {
        let f = f.clone();
        tokio::spawn(async move { f.get(&5).await })
    };
    let leader = spawn(&f);
    wait_until_async("the leader", || f.stats().hard_misses == 1).await;
    let waiters: Vec<_> = (0..10).map(|_| spawn(&f)).collect();
    wait_until_async("the waiters", || f.stats().hard_misses == 11).await;
    gate.open(1);

    let leader_err = match tokio::time::timeout(BOUND, leader).await.unwrap().unwrap() {
        Err(Error::Compute(e)) => e,
        other => panic!("leader: expected the closure's error, got {other:?}"),
    };
    assert_eq!(*leader_err, Boom(0));
    for w in waiters {
        match tokio::time::timeout(BOUND, w).await.unwrap().unwrap() {
            Err(Error::Compute(e)) => {
                assert!(
                    Arc::ptr_eq(&e, &leader_err),
                    "waiters must share the leader's error"
                )
            }
            other => panic!("waiter: expected the shared error, got {other:?}"),
        }
    }
    let s = f.stats();
    assert_eq!((s.computations, s.coalesced_waiters, s.errors), (1, 10, 11));
    assert_eq!(f.get(&5).await.unwrap(), 1, "the error was not cached");
    assert_eq!(f.get(&5).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Panics and cancellation never leave waiters hanging nor poison the key
// ---------------------------------------------------------------------------------------------

/// A function whose first computation never finishes on its own (it waits on `gate`) and, if
/// `panic_first`, panics once the gate opens; later computations return their number.
fn first_stuck(
    store: &Store64,
    gate: AsyncGate,
    panic_first: bool,
) -> (
    herdless::Memoized<u64, u64, Infallible, Store64>,
    Arc<AtomicU64>,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let n_ = calls.clone();
    let f = memoize_stampede(store, Duration::from_secs(60))
        .build(move |_k: u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            let g = gate.clone();
            async move {
                if n == 0 {
                    g.pass().await;
                    if panic_first {
                        panic!("computation 0 panics (expected by the test)");
                    }
                }
                Ok::<_, Infallible>(n)
            }
        })
        .unwrap();
    (f, calls)
}

type Calls = tokio::task::JoinHandle<Result<u64, herdless::Error<Infallible>>>;

/// Key 1's leader (stuck in `first_stuck`'s closure) and ten callers waiting behind it.
async fn leader_and_ten_waiters(
    f: &herdless::Memoized<u64, u64, Infallible, Store64>,
) -> (Calls, Vec<Calls>) {
    let f1 = f.clone();
    let leader = tokio::spawn(async move { f1.get(&1).await });
    wait_until_async("the leader", || f.stats().hard_misses == 1).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&1).await })
        })
        .collect();
    wait_until_async("the waiters", || f.stats().hard_misses == 11).await;
    (leader, waiters)
}

// A caller that gives up (aborted task, dropped future, timeout) does not cancel the
// computation it started: the computation runs detached on the runtime, stores its value and
// answers the callers waiting for it. (Before issue 8 the computation was cancelled with the
// caller and a waiter took over, which a storm of short timeouts turned into hundreds of
// restarts; see tests/hardening_engine.rs.)

#[tokio::test(flavor = "current_thread")]
async fn aborting_the_computing_caller_lets_its_computation_answer_the_waiters() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let (f, calls) = first_stuck(&store, gate.clone(), false);
    let (leader, waiters) = leader_and_ten_waiters(&f).await;
    leader.abort();
    assert!(tokio::time::timeout(BOUND, leader)
        .await
        .unwrap()
        .unwrap_err()
        .is_cancelled());
    gate.open(1);
    for w in waiters {
        let v = tokio::time::timeout(BOUND, w)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert_eq!(
            v.unwrap(),
            0,
            "every waiter gets the detached computation's value"
        );
    }
    let s = f.stats();
    assert_eq!(s.takeovers, 0, "{s:?}");
    assert_eq!(s.abandoned_callers, 1, "{s:?}");
    assert_eq!(s.computations, 1);
    assert_eq!(s.errors, 0);
    assert_eq!(f.get(&1).await.unwrap(), 0, "the value was stored");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A failed background refresh is nobody's answer: hard misses that joined its flight (the
/// value expired meanwhile) take over, one computes and the others get its value.
#[tokio::test(flavor = "current_thread")]
async fn takeovers_counts_the_waiter_that_took_over() {
    let clock = ManualClock::new();
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let calls = Arc::new(AtomicU64::new(0));
    let (n_, g_) = (calls.clone(), gate.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .beta(f64::INFINITY)
        .clock(clock.clone())
        .build(move |_k: u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            let g = g_.clone();
            async move {
                if n == 1 {
                    g.pass().await;
                    return Err(Boom(n)); // the refresh fails
                }
                Ok(n)
            }
        })
        .unwrap();
    clock.advance(Duration::from_millis(1));
    assert_eq!(f.get(&1).await.unwrap(), 0);
    assert_eq!(f.get(&1).await.unwrap(), 0); // β = ∞: triggers the refresh
    wait_until_async("the refresh to start", || calls.load(Ordering::SeqCst) == 2).await;
    clock.advance(Duration::from_secs(61)); // the value expires while the refresh runs
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&1).await })
        })
        .collect();
    // The first call was a hard miss too.
    wait_until_async("the waiters", || f.stats().hard_misses == 11).await;
    gate.open(1);
    for w in waiters {
        let v = tokio::time::timeout(BOUND, w).await.unwrap().unwrap();
        assert_eq!(v.unwrap(), 2, "every waiter gets the takeover's value");
    }
    let s = f.stats();
    // One waiter took over (one extra computation); the other nine got its value.
    assert_eq!(s.computations, 3, "{s:?}");
    assert_eq!(s.takeovers, 1, "{s:?}");
    assert_eq!(s.early_refreshes_failed, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_computing_future_mid_compute_does_not_cancel_the_computation() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let (f, calls) = first_stuck(&store, gate.clone(), false);
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let f1 = f.clone();
    // The leader's future is dropped when the cancel signal wins the select (like a timeout).
    let leader = tokio::spawn(async move {
        tokio::select! {
            r = f1.get(&2) => Some(r),
            _ = cancel_rx => None,
        }
    });
    wait_until_async("the leader", || f.stats().hard_misses == 1).await;
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&2).await })
        })
        .collect();
    wait_until_async("the waiters", || f.stats().hard_misses == 9).await;
    cancel_tx.send(()).unwrap();
    assert!(tokio::time::timeout(BOUND, leader)
        .await
        .unwrap()
        .unwrap()
        .is_none());
    gate.open(1);
    for w in waiters {
        let v = tokio::time::timeout(BOUND, w)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert_eq!(v.unwrap(), 0);
    }
    let s = f.stats();
    assert_eq!((s.takeovers, s.abandoned_callers), (0, 1), "{s:?}");
    assert_eq!(f.get(&2).await.unwrap(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_timed_out_caller_leaves_its_computation_to_the_next_call() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let (f, calls) = first_stuck(&store, gate.clone(), false);
    let r = tokio::time::timeout(Duration::from_millis(20), f.get(&3)).await;
    assert!(
        r.is_err(),
        "the first computation never finishes on its own"
    );
    let next = {
        let f = f.clone();
        tokio::spawn(async move { f.get(&3).await })
    };
    wait_until_async("the next call", || f.stats().hard_misses == 2).await;
    gate.open(1);
    let v = tokio::time::timeout(BOUND, next)
        .await
        .expect("the key is poisoned")
        .unwrap();
    assert_eq!(
        v.unwrap(),
        0,
        "the next call joined the running computation"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = f.stats();
    assert_eq!((s.takeovers, s.abandoned_callers), (0, 1), "{s:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_async_computation_gives_its_waiters_panicked() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let (f, calls) = first_stuck(&store, gate.clone(), true);
    let f1 = f.clone();
    let leader = tokio::spawn(async move { f1.get(&4).await });
    wait_until_async("the leader", || f.stats().hard_misses == 1).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&4).await })
        })
        .collect();
    wait_until_async("the waiters", || f.stats().hard_misses == 11).await;
    gate.open(1);
    assert!(tokio::time::timeout(BOUND, leader)
        .await
        .unwrap()
        .unwrap_err()
        .is_panic());
    for w in waiters {
        let v = tokio::time::timeout(BOUND, w)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert!(matches!(v, Err(herdless::Error::Panicked)), "{v:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the panicking closure ran once"
    );
    assert_eq!(f.stats().takeovers, 0);
    assert_eq!(
        f.stats().abandoned_callers,
        0,
        "a panicking caller gave up nothing"
    );
    assert_eq!(f.get(&4).await.unwrap(), 1, "the key is not poisoned");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_blocking_computation_gives_its_waiting_threads_panicked() {
    const N: usize = 8;
    let store = Store64::new(64).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let me: Arc<OnceLock<BlockingMemoized<u64, u64, Infallible, Store64>>> =
        Arc::new(OnceLock::new());
    let (n_, me_) = (calls.clone(), me.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking_infallible(move |_k: &u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                let me = me_.get().expect("handle set");
                wait_until("all threads to miss", || me.stats().hard_misses == N as u64);
                std::thread::sleep(Duration::from_millis(20)); // let them park; not asserted
                panic!("computation 0 panics (expected by the test)");
            }
            n
        })
        .unwrap();
    me.set(f.clone()).ok().unwrap();
    let (tx, rx) = mpsc::channel();
    for _ in 0..N {
        let (f, tx) = (f.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| f.get(&6)));
            let _ = tx.send(r.map_err(|_| "panicked"));
        });
    }
    let mut panicked = 0;
    for _ in 0..N {
        match rx.recv_timeout(BOUND).expect("a thread hung") {
            Err(_) => panicked += 1,
            Ok(v) => assert!(matches!(v, Err(herdless::Error::Panicked)), "{v:?}"),
        }
    }
    assert_eq!(panicked, 1, "only the computing thread sees the panic");
    let s = f.stats();
    assert_eq!(s.takeovers, 0, "{s:?}");
    assert_eq!(
        s.computations, 1,
        "the panicking closure ran once, not once per waiter"
    );
    assert_eq!(f.get(&6).unwrap(), 1, "the key is not poisoned");
    // A lone panicking caller does not poison a key either.
    let calls2 = Arc::new(AtomicU64::new(0));
    let c2 = calls2.clone();
    let g = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking_infallible(move |k: &u64| {
            if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first call panics (expected by the test)");
            }
            *k
        })
        .unwrap();
    let g2 = g.clone();
    let r = in_thread(move || std::panic::catch_unwind(AssertUnwindSafe(|| g2.get(&7))).is_err());
    assert!(r.recv_timeout(BOUND).unwrap());
    let g3 = g.clone();
    let r = in_thread(move || g3.get(&7).unwrap());
    assert_eq!(r.recv_timeout(BOUND).expect("key poisoned"), 7);
}

/// β = ∞ (every hit refreshes), a 1 s backoff, and a closure whose first run takes 1 ms and
/// whose second run (the first refresh) panics; it returns how many runs came before it.
fn refresh_that_panics_once() -> (
    ManualClock,
    Arc<AtomicU64>,
    herdless::BlockingMemoized<u64, u64, Infallible, Store64>,
) {
    let clock = ManualClock::new();
    let store = Store64::new(64).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (c, n_) = (clock.clone(), calls.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .beta(f64::INFINITY)
        .refresh_backoff(Duration::from_secs(1))
        .clock(clock.clone())
        .build_blocking_infallible(move |_k: &u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            match n {
                0 => c.advance(Duration::from_millis(1)),
                1 => panic!("refresh panics (expected by the test)"),
                _ => {}
            }
            n
        })
        .unwrap();
    (clock, calls, f)
}

#[test]
fn a_panicking_background_refresh_keeps_the_value_and_the_key_refreshes_later() {
    let (clock, calls, f) = refresh_that_panics_once();
    assert_eq!(f.get(&1).unwrap(), 0);
    assert_eq!(f.get(&1).unwrap(), 0); // triggers the panicking refresh
    wait_until("the refresh to run", || calls.load(Ordering::SeqCst) == 2);
    assert_eq!(f.get(&1).unwrap(), 0, "the current value is kept");
    // The backoff counts from the failure: let the panicked refresh end before moving time.
    wait_until("the panicked refresh to end", || {
        f.stats().early_refreshes_failed == 1
    });
    clock.advance(Duration::from_secs(2)); // past the backoff, before expiry
    wait_until("a new refresh to complete", || {
        let v = f.get(&1).unwrap();
        assert_ne!(v, 1, "the panicked refresh produced no value");
        f.stats().early_refreshes_completed >= 1
    });
    assert!(
        f.get(&1).unwrap() >= 2,
        "the later refresh's value is served"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Different keys never block each other
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_different_keys_do_not_block_each_other() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let g = gate.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build(move |k: u64| {
            let g = g.clone();
            async move {
                if k == 0 {
                    g.pass().await;
                }
                Ok::<_, Infallible>(k * 10)
            }
        })
        .unwrap();
    let f1 = f.clone();
    let a = tokio::spawn(async move { f1.get(&0).await });
    wait_until_async("key A to start", || f.stats().computations == 1).await;
    for k in 1..=20 {
        let v = tokio::time::timeout(BOUND, f.get(&k))
            .await
            .expect("key B blocked behind key A");
        assert_eq!(v.unwrap(), k * 10);
    }
    assert!(!a.is_finished(), "key A is still computing");
    assert!(matches!(
        f.get_with(&0, Contention::FailFast).await,
        Err(Error::Busy)
    ));
    gate.open(1);
    assert_eq!(
        tokio::time::timeout(BOUND, a)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        0
    );
}

#[test]
fn blocking_different_keys_do_not_block_each_other() {
    let store = Store64::new(64).unwrap();
    let gate = Gate::default();
    let g = gate.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking_infallible(move |k: &u64| {
            if *k == 0 {
                g.pass();
            }
            k * 10
        })
        .unwrap();
    let fa = f.clone();
    let a = in_thread(move || fa.get(&0));
    wait_until("key A to start", || f.stats().computations == 1);
    let fb = f.clone();
    let b = in_thread(move || (1..=20).map(|k| fb.get(&k).unwrap()).collect::<Vec<_>>());
    let got = b.recv_timeout(BOUND).expect("key B blocked behind key A");
    assert_eq!(got, (1..=20).map(|k| k * 10).collect::<Vec<_>>());
    assert!(a.try_recv().is_err(), "key A is still computing");
    assert!(matches!(
        f.get_with(&0, Contention::FailFast),
        Err(Error::Busy)
    ));
    gate.open(1);
    assert_eq!(a.recv_timeout(BOUND).unwrap().unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Contention policies, per-call override, stale serving
// ---------------------------------------------------------------------------------------------

/// A function (with the given builder policy) whose first computation waits on `gate`.
fn gated(
    store: &Store64,
    gate: &AsyncGate,
    policy: Option<Contention>,
) -> herdless::Memoized<u64, u64, Infallible, Store64> {
    let calls = Arc::new(AtomicU64::new(0));
    let g = gate.clone();
    let mut b = memoize_stampede(store, Duration::from_secs(60));
    if let Some(p) = policy {
        b = b.contention(p);
    }
    b.build(move |_k: u64| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let g = g.clone();
        async move {
            if n == 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(100 + n)
        }
    })
    .unwrap()
}

async fn start_leader(
    f: &herdless::Memoized<u64, u64, Infallible, Store64>,
    key: u64,
) -> tokio::task::JoinHandle<Result<u64, Error<Infallible>>> {
    let f1 = f.clone();
    let h = tokio::spawn(async move { f1.get(&key).await });
    wait_until_async("the leader to compute", || f.stats().computations == 1).await;
    h
}

#[tokio::test(flavor = "current_thread")]
async fn fail_fast_returns_busy_at_once_while_another_computes() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let f = gated(&store, &gate, Some(Contention::FailFast));
    let leader = start_leader(&f, 1).await;
    let r = tokio::time::timeout(BOUND, f.get(&1))
        .await
        .expect("fail-fast waited");
    assert!(matches!(r, Err(Error::Busy)), "{r:?}");
    // A per-call override waits instead.
    let f2 = f.clone();
    let waiter = tokio::spawn(async move {
        f2.get_with(&1, Contention::Wait(Duration::from_secs(60)))
            .await
    });
    wait_until_async("the waiter", || f.stats().hard_misses == 3).await;
    gate.open(1);
    assert_eq!(
        tokio::time::timeout(BOUND, leader)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        100
    );
    assert_eq!(
        tokio::time::timeout(BOUND, waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        100
    );
    let s = f.stats();
    assert_eq!((s.computations, s.errors, s.coalesced_waiters), (1, 1, 1));
    assert_eq!(
        f.get(&1).await.unwrap(),
        100,
        "a hit is served under fail-fast"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn get_with_fail_fast_overrides_the_default_wait() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let f = gated(&store, &gate, None);
    let leader = start_leader(&f, 1).await;
    let r = tokio::time::timeout(BOUND, f.get_with(&1, Contention::FailFast))
        .await
        .expect("fail-fast override waited");
    assert!(matches!(r, Err(Error::Busy)), "{r:?}");
    gate.open(1);
    assert_eq!(
        tokio::time::timeout(BOUND, leader)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        100
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bounded_wait_returns_wait_timeout_when_the_computation_outlasts_it() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let d = Duration::from_millis(30);
    let f = gated(&store, &gate, Some(Contention::Wait(d)));
    let leader = start_leader(&f, 1).await;
    let r = tokio::time::timeout(BOUND, f.get(&1))
        .await
        .expect("bounded wait did not end");
    match r {
        Err(Error::WaitTimeout(w)) => assert_eq!(w, d),
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    // Per-call override of the bound.
    let d2 = Duration::from_millis(10);
    match tokio::time::timeout(BOUND, f.get_with(&1, Contention::Wait(d2)))
        .await
        .unwrap()
    {
        Err(Error::WaitTimeout(w)) => assert_eq!(w, d2),
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert_eq!(f.stats().errors, 2);
    gate.open(1);
    assert_eq!(
        tokio::time::timeout(BOUND, leader)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        100
    );
    assert_eq!(f.get(&1).await.unwrap(), 100);
    assert_eq!(f.stats().computations, 1);
}

#[test]
fn blocking_bounded_wait_and_fail_fast() {
    let store = Store64::new(64).unwrap();
    let gate = Gate::default();
    let calls = Arc::new(AtomicU64::new(0));
    let (g, n_) = (gate.clone(), calls.clone());
    let d = Duration::from_millis(30);
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .contention(Contention::Wait(d))
        .build_blocking_infallible(move |_k: &u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                g.pass();
            }
            100 + n
        })
        .unwrap();
    let fa = f.clone();
    let leader = in_thread(move || fa.get(&1));
    wait_until("the leader", || f.stats().computations == 1);
    let fb = f.clone();
    let r = in_thread(move || fb.get(&1))
        .recv_timeout(BOUND)
        .expect("bounded wait hung");
    assert!(matches!(r, Err(Error::WaitTimeout(w)) if w == d), "{r:?}");
    assert!(matches!(
        f.get_with(&1, Contention::FailFast),
        Err(Error::Busy)
    ));
    gate.open(1);
    assert_eq!(leader.recv_timeout(BOUND).unwrap().unwrap(), 100);
    assert_eq!(f.get(&1).unwrap(), 100);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn compute_after_computes_anyway_when_the_wait_runs_out() {
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let f = gated(
        &store,
        &gate,
        Some(Contention::ComputeAfter(Duration::from_millis(10))),
    );
    let leader = start_leader(&f, 1).await;
    let r = tokio::time::timeout(BOUND, f.get(&1))
        .await
        .expect("compute-after hung");
    assert_eq!(r.unwrap(), 101, "the waiter computed its own value");
    gate.open(1);
    assert_eq!(
        tokio::time::timeout(BOUND, leader)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        100
    );
    assert_eq!(f.stats().computations, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn serve_stale_answers_with_the_expired_value_while_another_recomputes() {
    let clock = ManualClock::new();
    let store = Store64::new(64).unwrap();
    let gate = AsyncGate::new();
    let calls = Arc::new(AtomicU64::new(0));
    let (g, n_) = (gate.clone(), calls.clone());
    let build = |stale: bool| {
        let (g, n_) = (g.clone(), n_.clone());
        memoize_stampede(&store, Duration::from_secs(1))
            .name("stale")
            .beta(0.0)
            .serve_stale(stale)
            .contention(Contention::FailFast)
            .clock(clock.clone())
            .build(move |_k: u64| {
                let n = n_.fetch_add(1, Ordering::SeqCst);
                let g = g.clone();
                async move {
                    if n >= 1 {
                        g.pass().await;
                    }
                    Ok::<_, Infallible>(n)
                }
            })
            .unwrap()
    };
    let f = build(true);
    let strict = build(false); // same name, same entries, no stale serving
    assert_eq!(f.get(&1).await.unwrap(), 0);
    clock.advance(Duration::from_secs(1)); // now exactly at expiry: expired
    let f1 = f.clone();
    let leader = tokio::spawn(async move { f1.get(&1).await });
    wait_until_async("the recomputation", || calls.load(Ordering::SeqCst) == 2).await;
    let r = tokio::time::timeout(BOUND, f.get(&1))
        .await
        .expect("stale serving waited");
    assert_eq!(
        r.unwrap(),
        0,
        "the expired value is served while another recomputes"
    );
    assert_eq!(f.stats().stale_served, 1);
    // Without serve_stale nothing expired is ever served (here: fail-fast → Busy).
    let f2 = strict.clone();
    let other = tokio::spawn(async move { f2.get(&1).await });
    wait_until_async("the second leader", || calls.load(Ordering::SeqCst) == 3).await;
    assert!(matches!(strict.get(&1).await, Err(Error::Busy)));
    assert_eq!(strict.stats().stale_served, 0);
    gate.open(2);
    assert_eq!(
        tokio::time::timeout(BOUND, leader)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        1
    );
    let v = tokio::time::timeout(BOUND, other)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(v == 2, "{v}");
    assert!(
        f.get(&1).await.unwrap() >= 1,
        "the fresh value replaces the stale one"
    );
}

// ---------------------------------------------------------------------------------------------
// Layered recipe: memoize(0) ∘ barrier ∘ memoize(ttl)
// ---------------------------------------------------------------------------------------------

#[test]
fn diskcache_recipe_computes_once_for_concurrent_threads() {
    const N: usize = 16;
    let store = MemoryStore::<String, String>::new(64).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (r, a) = (runs.clone(), arrived.clone());
    let inner = memoize(&store, Duration::from_secs(60))
        .name("page")
        .build_blocking_infallible(move |k: &String| {
            r.fetch_add(1, Ordering::SeqCst);
            wait_until("all threads", || a.load(Ordering::SeqCst) == N);
            std::thread::sleep(Duration::from_millis(10)); // widen the overlap; not asserted
            format!("<h1>{k}</h1>")
        })
        .unwrap();
    let locked = barrier(LocalLock::new()).wrap_blocking(inner);
    let page = memoize(&store, Duration::ZERO)
        .name("page")
        .wrap_blocking(locked)
        .unwrap();
    let start = Arc::new(std::sync::Barrier::new(N));
    let (tx, rx) = mpsc::channel();
    for _ in 0..N {
        let (page, a, start, tx) = (page.clone(), arrived.clone(), start.clone(), tx.clone());
        std::thread::spawn(move || {
            start.wait();
            a.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(page.get(&"home".to_string()));
        });
    }
    for _ in 0..N {
        assert_eq!(
            rx.recv_timeout(BOUND).expect("hung").unwrap(),
            "<h1>home</h1>"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the recipe computed more than once"
    );
    // Later calls are answered by the outer optimistic lookup.
    let before = page.stats();
    assert_eq!(page.get(&"home".to_string()).unwrap(), "<h1>home</h1>");
    assert_eq!(page.stats().hits, before.hits + 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diskcache_recipe_computes_once_for_concurrent_tasks() {
    const N: usize = 100;
    let store = MemoryStore::<String, String>::new(64).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (r, a) = (runs.clone(), arrived.clone());
    let inner = memoize(&store, Duration::from_secs(60))
        .name("page")
        .build(move |k: String| {
            r.fetch_add(1, Ordering::SeqCst);
            let (a, k) = (a.clone(), k.clone());
            async move {
                wait_until_async("all tasks", || a.load(Ordering::SeqCst) == N).await;
                Ok::<_, Infallible>(format!("<h1>{k}</h1>"))
            }
        })
        .unwrap();
    let locked = barrier(LocalLock::new()).wrap(inner);
    let page = memoize(&store, Duration::ZERO)
        .name("page")
        .wrap(locked)
        .unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (page, a) = (page.clone(), arrived.clone());
            tokio::spawn(async move {
                a.fetch_add(1, Ordering::SeqCst);
                page.get(&"home".to_string()).await
            })
        })
        .collect();
    for t in tokio::time::timeout(BOUND, futures::future::join_all(tasks))
        .await
        .expect("hung")
    {
        assert_eq!(t.unwrap().unwrap(), "<h1>home</h1>");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the recipe computed more than once"
    );
}

// ---------------------------------------------------------------------------------------------
// A hard miss must not compute while an early refresh of the same key is still running
// ---------------------------------------------------------------------------------------------

#[test]
fn hard_miss_does_not_run_concurrently_with_a_running_refresh() {
    let clock = ManualClock::new();
    let store = Store64::new(64).unwrap();
    let gate = Gate::default();
    let running = Arc::new(AtomicU64::new(0));
    let max_running = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (c, g, run, max, n_) = (
        clock.clone(),
        gate.clone(),
        running.clone(),
        max_running.clone(),
        calls.clone(),
    );
    let f = memoize_stampede(&store, Duration::from_secs(1))
        .beta(f64::INFINITY)
        .clock(clock.clone())
        .build_blocking_infallible(move |_k: &u64| {
            let n = n_.fetch_add(1, Ordering::SeqCst);
            let now = run.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            if n == 0 {
                c.advance(Duration::from_millis(1));
            } else {
                g.pass();
            }
            run.fetch_sub(1, Ordering::SeqCst);
            n
        })
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 0);
    assert_eq!(f.get(&1).unwrap(), 0); // triggers a refresh, which blocks
    wait_until("the refresh to start", || {
        running.load(Ordering::SeqCst) == 1
    });
    let herdless::store::Lookup::Found(entry) =
        Store::get_now(&store, &Store::<u64, u64>::namespace(&store, f.name()), &1)
    else {
        panic!("the entry is stored")
    };
    let expiry = entry.expires_at;
    clock.set(expiry); // the value expires while its refresh still runs
    assert!(clock.now() >= expiry);
    let f2 = f.clone();
    let miss = in_thread(move || f2.get(&1));
    wait_until("the hard miss", || f.stats().hard_misses == 2);
    // Give a buggy second computation time to show up (a correct engine just waits here).
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline && max_running.load(Ordering::SeqCst) < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    gate.open(10);
    let v = miss.recv_timeout(BOUND).expect("hard miss hung").unwrap();
    assert_eq!(
        max_running.load(Ordering::SeqCst),
        1,
        "two computations of one key ran at once (refresh + hard miss)"
    );
    assert_eq!(v, 1, "the hard miss should get the running refresh's value");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_background_refresh_is_counted_as_failed() {
    let (clock, _, f) = refresh_that_panics_once();
    assert_eq!(f.get(&1).unwrap(), 0);
    assert_eq!(f.get(&1).unwrap(), 0);
    // The backoff counts from the failure, so let the panicking refresh end before moving time.
    wait_until("the panicking refresh to end", || {
        f.stats().early_refreshes_failed == 1
    });
    clock.advance(Duration::from_secs(2));
    // Once the panicked refresh has released its slot, a new one can start and complete.
    wait_until("a new refresh to complete", || {
        let _ = f.get(&1);
        f.stats().early_refreshes_completed >= 1
    });
    // No more triggers: wait for the last refresh in flight (if any) to end. Every refresh
    // but the panicking one completes.
    wait_until("refreshes to end", || {
        let s = f.stats();
        s.early_refreshes_completed + 1 == s.early_refreshes_started
    });
    let s = f.stats();
    assert_eq!(
        s.early_refreshes_failed, 1,
        "started = completed + failed must hold after a panicking refresh: {s:?}"
    );
}
