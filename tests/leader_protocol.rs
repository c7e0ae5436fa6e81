//! The one leader protocol (`src/leader.rs`), findings 1, 6, 8, 11 and 12 of issue 18: every
//! kind of leader (hard miss, background refresh, `refresh()`, a lock-or-get that found a value)
//! closes its flight before a shared write, hands followers back when fenced, shares a read only
//! with callers that joined before it, never undoes a newer write, and cannot hold its callers
//! hostage by never returning.
//!
//! Each test pins one window step by step (hooks in a store, gates in the closure); every wait
//! is bounded.

mod support;

use herdless::store::{LockOutcome, Lookup, Namespace, RefreshOutcome, StoreError, Written};
use herdless::{memoize_stampede, Contention, Entry, ManualClock, MemoryStore, Store};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Runs `f` on its own thread, failing if it does not finish within `bound`.
fn bounded<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("did not finish within {bound:?}"))
}

/// A flag threads wait on, with a bound.
#[derive(Clone, Default)]
struct Signal(Arc<(Mutex<bool>, Condvar)>);

impl Signal {
    fn raise(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
    fn is_raised(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }
    fn wait(&self, what: &str) {
        let g = self.0 .0.lock().unwrap();
        let (_g, t) = self
            .0
             .1
            .wait_timeout_while(g, Duration::from_secs(10), |up| !*up)
            .unwrap();
        assert!(!t.timed_out(), "timed out waiting for {what}");
    }
}

/// A `MemoryStore` that poses as a store other processes share, grants write permits (as Redis
/// does, so the engine trusts it to fence), and can stop a thread at two points: after its
/// `lock_or_get` read (before the reply reaches the caller) and after a `set` landed.
#[derive(Clone)]
struct Hooked {
    inner: MemoryStore<u8, u64>,
    /// `lock_or_get` waits for this before reading (so the test can put a value there first).
    before_read: Arc<Mutex<Option<Signal>>>,
    /// Raised when a hooked `lock_or_get` has begun.
    read_started: Signal,
    /// Raised when a hooked `lock_or_get` has read; the call then waits for `read_go`.
    read_done: Signal,
    read_go: Signal,
    /// The next `set` pauses after it landed: raises `written`, waits for `written_go`.
    pause_after_write: Arc<AtomicBool>,
    written: Signal,
    written_go: Signal,
}

impl Hooked {
    fn new() -> Self {
        Hooked {
            inner: MemoryStore::new(64).unwrap(),
            before_read: Default::default(),
            read_started: Default::default(),
            read_done: Default::default(),
            read_go: Default::default(),
            pause_after_write: Default::default(),
            written: Default::default(),
            written_go: Default::default(),
        }
    }
}

impl Store<u8, u64> for Hooked {
    type Lock = ();
    fn namespace(&self, name: &str) -> Namespace {
        self.inner.namespace(name)
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn get_now<Q>(&self, _ns: &Namespace, _key: &Q) -> Lookup<u64>
    where
        u8: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        Lookup::NotLocal
    }
    async fn get(
        &self,
        ns: &Namespace,
        key: &u8,
        now: u64,
    ) -> Result<Option<Entry<u64>>, StoreError> {
        self.inner.get(ns, key, now).await
    }
    async fn set(
        &self,
        ns: &Namespace,
        key: &u8,
        entry: Entry<u64>,
        ttl: Duration,
        _permit: Option<()>,
    ) -> Result<Written, StoreError> {
        let out = self.inner.set(ns, key, entry, ttl, None).await;
        if self.pause_after_write.swap(false, Ordering::SeqCst) {
            self.written.raise();
            self.written_go.wait("written_go");
        }
        out
    }
    async fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &u8,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<LockOutcome<u64, ()>, StoreError> {
        let hook = self.before_read.lock().unwrap().take();
        if let Some(before) = &hook {
            self.read_started.raise();
            before.wait("the value to read");
        }
        let out = match self
            .inner
            .lock_or_get(ns, key, lease, max_hold, now)
            .await?
        {
            LockOutcome::Found(e) => LockOutcome::Found(e),
            _ => LockOutcome::Acquired(()),
        };
        if hook.is_some() {
            self.read_done.raise();
            self.read_go.wait("read_go");
        }
        Ok(out)
    }
    async fn try_lock_refresh(
        &self,
        _ns: &Namespace,
        _key: &u8,
        _seen: herdless::store::Seen,
        _lease: Duration,
        _max_hold: Duration,
        _now: u64,
    ) -> Result<RefreshOutcome<()>, StoreError> {
        Ok(RefreshOutcome::Acquired(()))
    }
    async fn write_ticket(&self, _ns: &Namespace, _key: &u8) -> Result<Option<()>, StoreError> {
        Ok(Some(()))
    }
    async fn invalidate(&self, ns: &Namespace, key: &u8) -> Result<(), StoreError> {
        self.inner.invalidate(ns, key).await
    }
    async fn invalidate_all(&self, ns: &Namespace) -> Result<(), StoreError> {
        self.inner.invalidate_all(ns).await
    }
}

type Fun<S> = herdless::BlockingMemoized<u8, u64, Infallible, S>;

fn reading<S: Store<u8, u64> + Clone>(store: &S, truth: &Arc<AtomicU64>) -> Fun<S> {
    let t = truth.clone();
    memoize_stampede(store, Duration::from_secs(3600))
        .name("page")
        .beta(0.0)
        .build_blocking_infallible(move |_k: &u8| t.load(Ordering::SeqCst))
        .unwrap()
}

/// Finding 12: a hard-miss leader in process P whose lock-or-get *found* a value (stored by
/// another process) must not hand it to a call that started after another process invalidated
/// it. Steps: C's `get(0)` misses and sends lock-or-get; W stores truth 0; C's read finds it;
/// before the reply reaches C, truth := 1 and W invalidates; a late call in P joins C's flight.
/// Before the fix the late call got C's read (truth 0); now it is handed back and reads anew.
#[test]
fn a_value_found_by_lock_or_get_is_not_handed_to_a_call_after_an_invalidation() {
    bounded(Duration::from_secs(30), || {
        let store = Hooked::new();
        let truth = Arc::new(AtomicU64::new(0));
        let (p, w) = (reading(&store, &truth), reading(&store, &truth));
        let before = Signal::default();
        *store.before_read.lock().unwrap() = Some(before.clone());
        let c = {
            let p = p.clone();
            std::thread::spawn(move || p.get(&0).unwrap())
        };
        store.read_started.wait("C's lock-or-get");
        // W (another process: its own engine) stores truth 0 while C's read is on its way.
        assert_eq!(w.get(&0).unwrap(), 0);
        before.raise();
        store.read_done.wait("C's read");
        truth.store(1, Ordering::SeqCst);
        w.invalidate(&0).unwrap();
        let late = {
            let p = p.clone();
            std::thread::spawn(move || p.get(&0).unwrap())
        };
        // Time for the late call to join C's flight (if it has not, the test proves less but
        // cannot fail wrongly).
        std::thread::sleep(Duration::from_millis(50));
        store.read_go.raise();
        assert_eq!(c.join().unwrap(), 0, "C asked before the invalidation");
        assert_eq!(
            late.join().unwrap(),
            1,
            "a call that started after the invalidation returned got a read that predates it"
        );
    });
}

/// Finding 6: a leader whose write landed just before an `insert` in the same process must not
/// "undo" its write afterwards: that deletes the inserted value. Steps: C's `get(0)` computes
/// truth 0 and its write lands; `insert(0, 5)` returns; C's write reply arrives. Before the fix
/// C then invalidated the key and the inserted 5 was gone.
#[test]
fn an_insert_is_not_undone_by_a_leader_whose_write_landed_before_it() {
    bounded(Duration::from_secs(30), || {
        let store = Hooked::new();
        let truth = Arc::new(AtomicU64::new(0));
        let p = reading(&store, &truth);
        store.pause_after_write.store(true, Ordering::SeqCst);
        let c = {
            let p = p.clone();
            std::thread::spawn(move || p.get(&0).unwrap())
        };
        store.written.wait("C's write landed");
        p.insert(&0, 5).unwrap();
        store.written_go.raise();
        assert_eq!(c.join().unwrap(), 0);
        assert_eq!(
            p.peek(&0),
            Some(5),
            "the inserted value was deleted by an undo"
        );
        assert_eq!(p.get(&0).unwrap(), 5);
    });
}

/// Finding 11: `refresh(&k)` returns a value computed after it was called, not a running
/// computation's older one, and that older computation does not store its result over it.
#[test]
fn refresh_returns_a_value_computed_after_it_was_called() {
    bounded(Duration::from_secs(30), || {
        let store = MemoryStore::<u8, u64>::new(64).unwrap();
        let truth = Arc::new(AtomicU64::new(0));
        let (entered, go) = (Signal::default(), Signal::default());
        let f = {
            let (t, entered, go) = (truth.clone(), entered.clone(), go.clone());
            memoize_stampede(&store, Duration::from_secs(3600))
                .beta(0.0)
                .build_blocking_infallible(move |_k: &u8| {
                    let seen = t.load(Ordering::SeqCst);
                    if seen == 0 {
                        entered.raise();
                        go.wait("go");
                    }
                    seen
                })
                .unwrap()
        };
        let c = {
            let f = f.clone();
            std::thread::spawn(move || f.get(&0).unwrap())
        };
        entered.wait("C computing from truth 0");
        truth.store(1, Ordering::SeqCst);
        let r = {
            let f = f.clone();
            std::thread::spawn(move || f.refresh(&0).unwrap())
        };
        // Before the fix the refresh joined C and waited for it; now it computes at once.
        let refreshed = bounded(Duration::from_secs(5), move || r.join().unwrap());
        assert_eq!(
            refreshed, 1,
            "refresh returned a computation that predates it"
        );
        go.raise();
        assert_eq!(c.join().unwrap(), 0, "C asked before the change");
        assert_eq!(
            f.peek(&0),
            Some(1),
            "the older computation overwrote the refresh"
        );
    });
}

/// Finding 8: a background refresh that never returns. After expiry every caller joins it; they
/// must not all wait out their patience (`WaitTimeout`): once the refresh has run longer than
/// its lease (here the 50 ms minimum) they take over, one computes and the others share its
/// value. Its `max_refreshes` slot is freed too: a later trigger can start another refresh.
#[test]
fn a_background_refresh_that_never_returns_does_not_hold_its_callers() {
    bounded(Duration::from_secs(60), || {
        let clock = ManualClock::new();
        let store = MemoryStore::<u8, u64>::new(64).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let (hang, hung) = (Arc::new(AtomicBool::new(false)), Signal::default());
        let release = Signal::default();
        let f = {
            let (clock, runs, hang, hung, release) = (
                clock.clone(),
                runs.clone(),
                hang.clone(),
                hung.clone(),
                release.clone(),
            );
            memoize_stampede(&store, Duration::from_secs(10))
                .clock(clock.clone())
                .rng_seed(7)
                // δ·β far beyond the TTL: every hit triggers an early refresh.
                .beta(1e6)
                .max_refreshes(1)
                .lease_bounds(Duration::from_millis(50), Duration::from_secs(60))
                .contention(Contention::Wait(Duration::from_secs(20)))
                .build_blocking_infallible(move |_k: &u8| {
                    let n = runs.fetch_add(1, Ordering::SeqCst) as u64;
                    clock.advance(Duration::from_millis(1)); // δ = 1 ms
                    if hang.swap(false, Ordering::SeqCst) {
                        hung.raise();
                        release.wait("the end of the test");
                    }
                    n
                })
                .unwrap()
        };
        assert_eq!(f.get(&0).unwrap(), 0);
        hang.store(true, Ordering::SeqCst);
        // A hit: served at once, and its XFetch draw starts the refresh that hangs.
        assert_eq!(f.get(&0).unwrap(), 0);
        hung.wait("the refresh to hang");
        clock.advance(Duration::from_secs(11)); // the value expires
        let started = Instant::now();
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || f.get(&0))
            })
            .collect();
        let results: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        for r in &results {
            assert!(
                r.is_ok(),
                "a caller got {r:?} instead of a takeover's value"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the callers waited out their patience"
        );
        // The hung refresh still holds the only `max_refreshes` place, but it is past its
        // lease: the next trigger starts another refresh.
        let before = f.stats().early_refreshes_started;
        clock.advance(Duration::from_millis(10));
        f.get(&0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.stats().early_refreshes_started == before {
            assert!(
                Instant::now() < deadline,
                "no refresh started: the hung one holds the slot"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        release.raise();
    });
}

/// Finding 1, across two real processes' stores on a private redis-server: process P's
/// background refresh computes from truth 0; process W changes the truth and invalidates; a
/// call in P that starts after W's invalidate returned must not join the refresh and get
/// truth 0. Before the fix the refresh neither closed its flight before writing nor handed its
/// followers back when its write was fenced.
#[test]
fn a_call_after_another_process_invalidated_does_not_join_a_background_refresh() {
    let Some(server) = support::redis_or_skip() else {
        return;
    };
    let url = server.url();
    bounded(Duration::from_secs(60), move || {
        use herdless::store::RedisStore;
        let truth = Arc::new(AtomicU64::new(0));
        let (hold, entered, go) = (
            Arc::new(AtomicBool::new(false)),
            Signal::default(),
            Signal::default(),
        );
        let build = |hooked: bool| {
            let s = RedisStore::builder(&url).prefix("lp").build().unwrap();
            let (t, hold, entered, go) = (truth.clone(), hold.clone(), entered.clone(), go.clone());
            memoize_stampede(&s, Duration::from_secs(60))
                .name("page")
                .beta(1e9)
                .build_blocking_infallible(move |_k: &String| {
                    let seen = t.load(Ordering::SeqCst);
                    if hooked && hold.swap(false, Ordering::SeqCst) {
                        entered.raise();
                        go.wait("go");
                    }
                    std::thread::sleep(Duration::from_millis(2)); // δ > 0
                    seen
                })
                .unwrap()
        };
        let (p, w) = (build(true), build(false));
        let k = "home".to_string();
        assert_eq!(p.get(&k).unwrap(), 0);
        hold.store(true, Ordering::SeqCst);
        // A hit in P: its draw starts a background refresh, which reads truth 0 and holds.
        assert_eq!(p.get(&k).unwrap(), 0);
        entered.wait("P's refresh computing");
        truth.store(1, Ordering::SeqCst);
        w.invalidate(&k).unwrap();
        assert!(!go.is_raised());
        let late = {
            let (p, k) = (p.clone(), k.clone());
            std::thread::spawn(move || p.get(&k).unwrap())
        };
        std::thread::sleep(Duration::from_millis(100)); // time for it to join the refresh
        go.raise();
        assert_eq!(
            late.join().unwrap(),
            1,
            "a call that started after another process's invalidation returned got the \
             background refresh's value computed from the old data"
        );
    });
}
