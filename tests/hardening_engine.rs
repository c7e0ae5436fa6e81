//! Hardening of the in-process engine (issue 8): per-follower contention policies, bounded
//! background refreshes, bounded rate meters and refresh backoffs, detached computations under
//! a cancellation storm, unrepresentable durations.
//!
//! Every wait is bounded; counts are asserted, never wall-clock durations.

use futures::FutureExt;
use herdless::store::{LockOutcome, Lookup, Namespace, RefreshOutcome, StoreError, Written};
use herdless::{
    memoize_stampede, Contention, Entry, Error, LeadTarget, ManualClock, MemoryStore, Store,
    WaitMode,
};
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_millis(1), f.get(&7)).await },
            )
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
    println!(
        "computations started: {} ({s:?})",
        started.load(Ordering::SeqCst)
    );
    assert_eq!(
        f.peek(&7).await,
        Some(8),
        "the computation ran to completion and stored"
    );
    assert!(
        started.load(Ordering::SeqCst) <= 2,
        "{} computations",
        started.load(Ordering::SeqCst)
    );
    assert_eq!(s.computations, started.load(Ordering::SeqCst));
    assert!(
        s.abandoned_callers >= 900,
        "the callers that gave up are counted: {s:?}"
    );
    assert_eq!(
        s.takeovers, 0,
        "nobody took over: the computation was never abandoned"
    );
    assert_eq!(f.get(&7).await.unwrap(), 8);
}

// ---------------------------------------------------------------------------------------------
// 8.11 Each follower keeps its own contention policy
// ---------------------------------------------------------------------------------------------

/// A `MemoryStore` that plays "another process holds every key's lock" while `busy` is set;
/// while `hold` is set, asking for the lock stalls (so followers can join before the leader
/// hears the answer).
#[derive(Clone)]
struct ContendedStore {
    inner: Store64,
    busy: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
}

impl ContendedStore {
    fn new() -> Self {
        ContendedStore {
            inner: Store64::new(64).unwrap(),
            busy: Arc::new(AtomicBool::new(true)),
            hold: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Store<u64, u64> for ContendedStore {
    type Lock = Infallible;

    fn namespace(&self, name: &str) -> Namespace {
        self.inner.namespace(name)
    }
    fn get_now<Q>(&self, ns: &Namespace, key: &Q) -> Lookup<u64>
    where
        u64: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.inner.get_now(ns, key)
    }
    fn get(
        &self,
        ns: &Namespace,
        key: &u64,
        now: u64,
    ) -> impl Future<Output = Result<Option<Entry<u64>>, StoreError>> + Send {
        self.inner.get(ns, key, now)
    }
    fn set(
        &self,
        ns: &Namespace,
        key: &u64,
        entry: Entry<u64>,
        ttl: Duration,
        lock: Option<Infallible>,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        self.inner.set(ns, key, entry, ttl, lock)
    }
    fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &u64,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<LockOutcome<u64, Infallible>, StoreError>> + Send {
        let (busy, hold) = (self.busy.clone(), self.hold.clone());
        let local = self.inner.lock_or_get(ns, key, lease, max_hold, now);
        async move {
            let deadline = Instant::now() + BOUND;
            while hold.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < deadline,
                    "the test never released the store"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if busy.load(Ordering::SeqCst) {
                return Ok(LockOutcome::Busy);
            }
            local.await
        }
    }
    fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &u64,
        seen: herdless::store::Seen,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<RefreshOutcome<Infallible>, StoreError>> + Send {
        self.inner
            .try_lock_refresh(ns, key, seen, lease, max_hold, now)
    }
    fn invalidate(
        &self,
        ns: &Namespace,
        key: &u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.invalidate(ns, key)
    }
    fn invalidate_all(
        &self,
        ns: &Namespace,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.invalidate_all(ns)
    }
    fn wait_for_value(
        &self,
        _ns: &Namespace,
        _key: &u64,
        max: Duration,
        _mode: WaitMode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        tokio::time::sleep(max).map(Ok)
    }
}

async fn wait_until_async(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A leader with `leader_policy` meets another process's lock while five followers wait
/// behind it with the default 30 s policy; the other process's value never comes, but its lock
/// goes away once the leader has given up. The followers must not get the leader's error.
async fn followers_outlast_a_leader_that_gives_up(leader_policy: Contention) {
    let store = ContendedStore::new();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build(move |k: u64| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(k * 10) }
        })
        .unwrap();
    let leader = {
        let f = f.clone();
        tokio::spawn(async move { f.get_with(&4, leader_policy).await })
    };
    wait_until_async("the leader", || f.stats().hard_misses == 1).await;
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&4).await })
        })
        .collect();
    wait_until_async("the followers", || f.stats().hard_misses == 6).await;
    store.hold.store(false, Ordering::SeqCst);
    let led = tokio::time::timeout(BOUND, leader).await.unwrap().unwrap();
    match leader_policy {
        Contention::FailFast => assert!(matches!(led, Err(Error::Busy)), "{led:?}"),
        _ => assert!(matches!(led, Err(Error::WaitTimeout(_))), "{led:?}"),
    }
    // The other process's lock goes away: a follower (now leading under its own policy) takes
    // it on its next poll and computes.
    store.busy.store(false, Ordering::SeqCst);
    for fo in followers {
        let got = tokio::time::timeout(BOUND, fo)
            .await
            .expect("a follower hung")
            .unwrap();
        assert_eq!(
            got.unwrap(),
            40,
            "a follower got the leader's contention error"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let s = f.stats();
    assert_eq!((s.computations, s.takeovers, s.errors), (1, 0, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_leader_does_not_hand_busy_to_waiting_followers() {
    followers_outlast_a_leader_that_gives_up(Contention::FailFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_wait_leader_does_not_hand_its_timeout_to_waiting_followers() {
    followers_outlast_a_leader_that_gives_up(Contention::Wait(Duration::from_millis(50))).await;
}

// ---------------------------------------------------------------------------------------------
// 8.16 Bounded background refreshes
// ---------------------------------------------------------------------------------------------

/// A blocking gate.
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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn background_refreshes_are_capped_and_the_excess_is_skipped_and_counted() {
    let clock = ManualClock::new();
    let store = Store64::new(1000).unwrap();
    let gate = Gate::default();
    let (refreshing, first) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let (g, rf, fi) = (gate.clone(), refreshing.clone(), first.clone());
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .beta(f64::INFINITY) // every hit triggers
        .max_refreshes(3)
        .clock(clock.clone())
        .build_blocking_infallible(move |k: &u64| {
            if !fi.lock().unwrap().insert(*k) {
                // A refresh: hold its worker thread until the test opens the gate.
                rf.fetch_add(1, Ordering::SeqCst);
                g.pass();
            }
            *k
        })
        .unwrap();
    for k in 0..20 {
        assert_eq!(f.get(&k).unwrap(), k);
    }
    clock.advance(Duration::from_millis(1));
    for k in 0..20 {
        assert_eq!(f.get(&k).unwrap(), k, "the current value is served");
    }
    wait_until("the admitted refreshes to start", || {
        refreshing.load(Ordering::SeqCst) == 3
    });
    let s = f.stats();
    assert_eq!(s.early_refreshes_throttled, 17, "{s:?}");
    std::thread::sleep(Duration::from_millis(50)); // not asserted: give stray threads a chance
    assert_eq!(
        refreshing.load(Ordering::SeqCst),
        3,
        "more refreshes ran than allowed"
    );
    gate.open(3);
    wait_until("the refreshes to end", || {
        f.stats().early_refreshes_completed == 3
    });
    // The pool is free again: a later trigger refreshes.
    gate.open(1);
    f.get(&19).unwrap();
    wait_until("a later refresh", || {
        f.stats().early_refreshes_completed == 4
    });
}

#[test]
fn max_refreshes_of_zero_is_rejected_naming_the_field() {
    let store = Store64::new(10).unwrap();
    let err = memoize_stampede(&store, Duration::from_secs(1))
        .max_refreshes(0)
        .build_blocking_infallible(|k: &u64| *k)
        .unwrap_err();
    assert_eq!(err.field(), "max_refreshes");
}

// ---------------------------------------------------------------------------------------------
// 8.21 Durations that cannot be represented
// ---------------------------------------------------------------------------------------------

#[test]
fn unrepresentable_durations_are_rejected_at_build_time_naming_the_field() {
    let store = Store64::new(10).unwrap();
    let huge = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    let field = |b: herdless::Builder<u64, u64, Store64>| {
        b.build_blocking_infallible(|k: &u64| *k)
            .unwrap_err()
            .field()
    };
    assert_eq!(field(memoize_stampede(&store, huge)), "ttl");
    assert_eq!(field(memoize_stampede(&store, Duration::MAX)), "ttl");
    let one = Duration::from_secs(1);
    assert_eq!(
        field(memoize_stampede(&store, one).refresh_backoff(huge)),
        "refresh_backoff"
    );
    assert_eq!(
        field(memoize_stampede(&store, one).lease_bounds(one, huge)),
        "lease_bounds"
    );
    assert_eq!(
        field(memoize_stampede(&store, one).beta_auto(LeadTarget::Fixed(huge))),
        "beta_auto"
    );
    // The longest representable TTL is fine.
    assert!(memoize_stampede(&store, Duration::from_nanos(u64::MAX))
        .build_blocking_infallible(|k: &u64| *k)
        .is_ok());
}

/// `Contention::Wait(Duration::MAX)` is "wait as long as it takes", not an overflow.
#[test]
fn waiting_forever_behind_another_computation_is_allowed() {
    let store = Store64::new(10).unwrap();
    let gate = Gate::default();
    let g = gate.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .contention(Contention::Wait(Duration::MAX))
        .build_blocking_infallible(move |k: &u64| {
            g.pass();
            *k
        })
        .unwrap();
    let leader = {
        let f = f.clone();
        std::thread::spawn(move || f.get(&5))
    };
    wait_until("the leader", || f.stats().hard_misses == 1);
    let waiter = {
        let f = f.clone();
        std::thread::spawn(move || f.get_with(&5, Contention::Wait(Duration::MAX)))
    };
    wait_until("the waiter", || f.stats().hard_misses == 2);
    gate.open(1);
    assert_eq!(leader.join().unwrap().unwrap(), 5);
    assert_eq!(waiter.join().unwrap().unwrap(), 5);
    assert_eq!(f.stats().computations, 1);
}
