//! Batch loads (`build_batch`, `get_many`): one closure call for the missing keys, single-flight
//! per key, per-key errors, nothing cached from a failing batch, XFetch triggers refreshed in
//! one background batch; on `MemoryStore` and on a private `redis-server` (one round trip for
//! the reads, keys another process computes joined through its lock).

mod support;

use herdless::store::RedisStore;
use herdless::{memoize_stampede, Error, ManualClock, MemoryStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{redis_or_skip, wait_until, BOUND};

const MIN: Duration = Duration::from_secs(60);

/// What the batch closure was called with, call by call.
#[derive(Default)]
struct Calls(Mutex<Vec<Vec<u32>>>);

impl Calls {
    fn record(&self, keys: &[u32]) {
        let mut ks = keys.to_vec();
        ks.sort();
        self.0.lock().unwrap().push(ks);
    }
    fn all(&self) -> Vec<Vec<u32>> {
        self.0.lock().unwrap().clone()
    }
    /// How many times each key was computed.
    fn per_key(&self) -> HashMap<u32, usize> {
        let mut n = HashMap::new();
        for k in self.all().into_iter().flatten() {
            *n.entry(k).or_default() += 1;
        }
        n
    }
}

#[test]
fn two_concurrent_get_many_with_overlapping_keys_compute_each_key_once() {
    let store = MemoryStore::<u32, u32>::new(1000).unwrap();
    let calls = Arc::new(Calls::default());
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (gate_tx, gate) = mpsc::channel::<()>();
    let (entered_tx, gate) = (Mutex::new(entered_tx), Arc::new(Mutex::new(gate)));
    let c = calls.clone();
    let f = memoize_stampede(&store, MIN)
        .build_batch_blocking(move |ks: &[u32]| {
            c.record(ks);
            entered_tx.lock().unwrap().send(()).unwrap();
            // Held until both calls are in: the second call finds the first one's keys being
            // computed.
            gate.lock().unwrap().recv_timeout(BOUND).expect("gate");
            Ok::<_, String>(ks.iter().map(|&k| (k, k * 100)).collect())
        })
        .unwrap();
    let a = {
        let f = f.clone();
        std::thread::spawn(move || f.get_many(&[1, 2, 3, 4, 5, 6]).unwrap())
    };
    entered.recv_timeout(BOUND).expect("the first batch starts");
    let b = {
        let f = f.clone();
        std::thread::spawn(move || f.get_many(&[4, 5, 6, 7, 8, 9]).unwrap())
    };
    // The second call joins 4..=6 before it computes its own keys (7..=9) in one call.
    entered
        .recv_timeout(BOUND)
        .expect("the second batch starts");
    gate_tx.send(()).unwrap();
    gate_tx.send(()).unwrap();
    assert_eq!(a.join().unwrap(), [100, 200, 300, 400, 500, 600]);
    assert_eq!(b.join().unwrap(), [400, 500, 600, 700, 800, 900]);
    assert_eq!(calls.all(), vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8, 9]]);
    assert!(
        calls.per_key().values().all(|&n| n == 1),
        "{:?}",
        calls.per_key()
    );
    let s = f.stats();
    assert_eq!(s.computations, 9);
    assert_eq!(s.coalesced_waiters, 3);
    // Everything is cached now: no further call.
    assert_eq!(f.get_many(&[9, 1]).unwrap(), [900, 100]);
    assert_eq!(calls.all().len(), 2);
}

#[test]
fn a_failing_batch_fails_each_of_its_keys_and_caches_nothing() {
    let store = MemoryStore::<u32, u32>::new(1000).unwrap();
    let calls = Arc::new(Calls::default());
    let fail = Arc::new(AtomicU64::new(1));
    let (c, fl) = (calls.clone(), fail.clone());
    let f = memoize_stampede(&store, MIN)
        .build_batch_blocking(move |ks: &[u32]| {
            c.record(ks);
            if fl.load(Ordering::SeqCst) == 1 {
                return Err("db down".to_string());
            }
            Ok(ks.iter().map(|&k| (k, k + 1)).collect())
        })
        .unwrap();
    let each = f.get_many_each(&[1, 2, 3]);
    assert_eq!(each.len(), 3);
    for out in &each {
        assert_eq!(
            out.as_ref().unwrap_err().compute_error().unwrap(),
            "db down"
        );
    }
    assert!(f.get_many(&[1, 2, 3]).is_err());
    for k in [1, 2, 3] {
        assert_eq!(f.as_memoized().peek(&k), None, "key {k} was cached");
    }
    assert_eq!(
        calls.all().len(),
        2,
        "errors are never cached: each call retries"
    );
    fail.store(0, Ordering::SeqCst);
    assert_eq!(f.get_many(&[1, 2, 3]).unwrap(), [2, 3, 4]);
    assert_eq!(calls.all().len(), 3);
    assert_eq!(f.stats().errors, 6);
}

#[test]
fn a_key_left_out_of_the_map_is_that_keys_error_and_the_others_are_cached() {
    let store = MemoryStore::<u32, u32>::new(1000).unwrap();
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let f = memoize_stampede(&store, MIN)
        .build_batch_blocking(move |ks: &[u32]| {
            c.record(ks);
            Ok::<_, String>(ks.iter().filter(|&&k| k != 3).map(|&k| (k, k)).collect())
        })
        .unwrap();
    let each = f.get_many_each(&[1, 3, 2]);
    assert_eq!(*each[0].as_ref().unwrap(), 1);
    assert!(matches!(each[1], Err(Error::MissingFromBatch)));
    assert_eq!(*each[2].as_ref().unwrap(), 2);
    assert!(matches!(f.get_many(&[1, 3]), Err(Error::MissingFromBatch)));
    assert_eq!(f.as_memoized().peek(&1), Some(1));
    assert_eq!(f.as_memoized().peek(&3), None);
    // `get` is a batch of one: the same per-key error.
    assert!(matches!(f.get(&3), Err(Error::MissingFromBatch)));
    assert_eq!(calls.all(), vec![vec![1, 2, 3], vec![3], vec![3]]);
}

#[test]
fn xfetch_triggers_among_hits_are_refreshed_in_one_background_batch() {
    let store = MemoryStore::<u32, u32>::new(1000).unwrap();
    let clock = ManualClock::new();
    let calls = Arc::new(Calls::default());
    let (c, ck) = (calls.clone(), clock.clone());
    let f = memoize_stampede(&store, MIN)
        .clock(clock.clone())
        // β = ∞: every hit triggers an early refresh.
        .beta(f64::INFINITY)
        .build_batch_blocking(move |ks: &[u32]| {
            c.record(ks);
            ck.advance(Duration::from_millis(1)); // a measurable δ
            Ok::<_, String>(ks.iter().map(|&k| (k, k)).collect())
        })
        .unwrap();
    assert_eq!(f.get_many(&[1, 2, 3, 4]).unwrap(), [1, 2, 3, 4]);
    clock.advance(Duration::from_secs(1));
    // All four are hits (served at once) and all four trigger: one refresh batch.
    assert_eq!(f.get_many(&[1, 2, 3, 4]).unwrap(), [1, 2, 3, 4]);
    wait_until("the refresh batch", BOUND, || {
        f.stats().early_refreshes_completed == 4
    });
    assert_eq!(calls.all(), vec![vec![1, 2, 3, 4], vec![1, 2, 3, 4]]);
    let s = f.stats();
    assert_eq!(s.early_refreshes_started, 4);
    assert_eq!(s.computations, 8);
}

#[test]
fn a_failed_or_panicking_batch_refresh_counts_each_key_as_failed_and_backs_off() {
    let store = MemoryStore::<u32, u32>::new(1000).unwrap();
    let clock = ManualClock::new();
    let calls = Arc::new(Calls::default());
    // 0: answer, 1: fail, 2: panic.
    let mode = Arc::new(AtomicU64::new(0));
    let (c, ck, m) = (calls.clone(), clock.clone(), mode.clone());
    let f = memoize_stampede(&store, MIN)
        .clock(clock.clone())
        // β = ∞: every hit triggers an early refresh.
        .beta(f64::INFINITY)
        .refresh_backoff(Duration::from_secs(5))
        .build_batch_blocking(move |ks: &[u32]| {
            c.record(ks);
            ck.advance(Duration::from_millis(1)); // a measurable δ
            match m.load(Ordering::SeqCst) {
                1 => Err("down".to_string()),
                2 => panic!("the batch closure panics (expected by this test)"),
                _ => Ok(ks.iter().map(|&k| (k, k)).collect()),
            }
        })
        .unwrap();
    assert_eq!(f.get_many(&[1, 2]).unwrap(), [1, 2]);
    for (round, failing) in [(1, 1), (2, 2)] {
        mode.store(failing, Ordering::SeqCst);
        // Past any backoff, well within the TTL.
        clock.advance(Duration::from_secs(10));
        // Both are hits (served) and both trigger one refresh batch, which fails.
        assert_eq!(f.get_many(&[1, 2]).unwrap(), [1, 2]);
        wait_until("the failed refresh", BOUND, || {
            f.stats().early_refreshes_failed == 2 * round
        });
        // Within the backoff the values are still served and neither key refreshes again.
        let skipped = f.stats().early_refreshes_skipped;
        assert_eq!(f.get_many(&[1, 2]).unwrap(), [1, 2]);
        assert_eq!(f.stats().early_refreshes_skipped, skipped + 2);
        assert_eq!(calls.all().len(), 1 + round as usize);
    }
    // After the backoff a trigger refreshes both again, and this time it succeeds.
    mode.store(0, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    assert_eq!(f.get_many(&[1, 2]).unwrap(), [1, 2]);
    wait_until("the refresh", BOUND, || {
        f.stats().early_refreshes_completed == 2
    });
    let s = f.stats();
    assert_eq!(
        (s.early_refreshes_started, s.early_refreshes_failed),
        (6, 4)
    );
    assert_eq!(calls.all(), vec![vec![1, 2]; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_get_many_mixes_hits_and_misses_in_one_call() {
    let store = MemoryStore::<u32, String>::new(1000).unwrap();
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let f = memoize_stampede(&store, MIN)
        .build_batch(move |ks: Vec<u32>| {
            c.record(&ks);
            async move { Ok::<_, String>(ks.into_iter().map(|k| (k, format!("v{k}"))).collect()) }
        })
        .unwrap();
    assert_eq!(f.get(&2).await.unwrap(), "v2");
    assert_eq!(
        f.get_many(&[1, 2, 3, 1]).await.unwrap(),
        ["v1", "v2", "v3", "v1"]
    );
    assert_eq!(calls.all(), vec![vec![2], vec![1, 3]]);
    assert_eq!(f.stats().computations, 3);
}

fn redis_store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix("batch")
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

type RedisBatch = herdless::BlockingBatchMemoized<u32, String, String, RedisStore>;

/// A batch function on `store` whose closure records its calls and, while `gate` holds a
/// receiver, waits for one message per call before answering.
fn redis_fn(
    store: &RedisStore,
    calls: Arc<Calls>,
    entered: Option<mpsc::Sender<()>>,
    gate: Option<mpsc::Receiver<()>>,
) -> RedisBatch {
    let (entered, gate) = (Mutex::new(entered), Mutex::new(gate));
    memoize_stampede(store, MIN)
        .name("batch_fn")
        // A fixed β: automatic β would start the fleet heartbeat, whose round trips would
        // mix with the ones counted here.
        .beta(1.0)
        .build_batch_blocking(move |ks: &[u32]| {
            calls.record(ks);
            if let Some(tx) = &*entered.lock().unwrap() {
                tx.send(()).unwrap();
            }
            if let Some(rx) = &*gate.lock().unwrap() {
                rx.recv_timeout(BOUND).expect("gate");
            }
            Ok(ks.iter().map(|&k| (k, format!("v{k}"))).collect())
        })
        .unwrap()
}

#[test]
fn on_redis_the_reads_take_one_round_trip_and_the_values_reach_another_process() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (a_store, b_store) = (redis_store(&url), redis_store(&url));
    let (a_calls, b_calls) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    let a = redis_fn(&a_store, a_calls.clone(), None, None);
    let b = redis_fn(&b_store, b_calls.clone(), None, None);
    let keys: Vec<u32> = (0..50).collect();
    let want: Vec<String> = keys.iter().map(|k| format!("v{k}")).collect();
    assert_eq!(a.get_many(&keys).unwrap(), want);
    assert_eq!(
        a_calls.all().len(),
        1,
        "one closure call for 50 missing keys"
    );
    // Another process reads them all in one pipelined round trip, computing nothing.
    // B connects and subscribes first (a generation read before the subscription is up is
    // read again once it is, one extra round trip), then loads the generation.
    support::warm_up(&b_store, &mut server.raw(), 2);
    b.get(&0).unwrap();
    let before = b_store.stats().round_trips.load(Ordering::Relaxed);
    assert_eq!(b.get_many(&keys).unwrap(), want);
    let trips = b_store.stats().round_trips.load(Ordering::Relaxed) - before;
    assert_eq!(trips, 1, "50 hits in one round trip");
    assert!(b_calls.all().is_empty());
    // A key invalidated in A is recomputed by B's next batch, alone.
    a.invalidate(&7).unwrap();
    assert_eq!(b.get_many(&keys).unwrap(), want);
    assert_eq!(b_calls.all(), vec![vec![7]]);
}

#[test]
fn on_redis_keys_another_process_computes_are_joined_through_its_lock() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (a_store, b_store) = (redis_store(&url), redis_store(&url));
    let (a_calls, b_calls) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    let (entered_tx, entered) = mpsc::channel();
    let (gate_tx, gate) = mpsc::channel();
    let a = redis_fn(&a_store, a_calls.clone(), Some(entered_tx), Some(gate));
    let b = redis_fn(&b_store, b_calls.clone(), None, None);
    let a_run = {
        let a = a.clone();
        std::thread::spawn(move || a.get_many(&[1, 2, 3]).unwrap())
    };
    // A holds the locks of 1..=3 while its closure runs.
    entered.recv_timeout(BOUND).expect("A computes");
    let b_run = {
        let b = b.clone();
        std::thread::spawn(move || b.get_many(&[2, 3, 4]).unwrap())
    };
    // B computes 4 itself and waits for A's 2 and 3.
    wait_until("B computes its own key", BOUND, || {
        !b_calls.all().is_empty()
    });
    gate_tx.send(()).unwrap();
    assert_eq!(a_run.join().unwrap(), ["v1", "v2", "v3"]);
    assert_eq!(b_run.join().unwrap(), ["v2", "v3", "v4"]);
    assert_eq!(a_calls.all(), vec![vec![1, 2, 3]]);
    assert_eq!(b_calls.all(), vec![vec![4]]);
    assert!(b.stats().remote_waits >= 2);
}

#[test]
fn on_redis_a_failing_batch_caches_nothing_in_any_process() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (a_store, b_store) = (redis_store(&url), redis_store(&url));
    let a = memoize_stampede(&a_store, MIN)
        .name("batch_fail")
        .build_batch_blocking(|_ks: &[u32]| Err::<HashMap<u32, String>, _>("db down".to_string()))
        .unwrap();
    let b = redis_fn(&b_store, Arc::new(Calls::default()), None, None);
    let each = a.get_many_each(&[1, 2]);
    assert!(each
        .iter()
        .all(|o| o.as_ref().unwrap_err().compute_error().unwrap() == "db down"));
    let b_reader = memoize_stampede(&b_store, MIN)
        .name("batch_fail")
        .build_batch_blocking(|ks: &[u32]| {
            Ok::<_, String>(ks.iter().map(|&k| (k, "b".to_string())).collect())
        })
        .unwrap();
    assert_eq!(b_reader.as_memoized().peek(&1), None);
    assert_eq!(b_reader.get_many(&[1, 2]).unwrap(), ["b", "b"]);
    drop(b);
}
