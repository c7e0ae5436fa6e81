//! The contract every [`Store`] must pass (see "Implementing a Store" in `src/store/mod.rs`),
//! written once over a [`Harness`] and run against [`MemoryStore`] and [`RedisStore`].
//!
//! Each check is a generic async function; `contract_tests!` turns it into one `#[test]` per
//! store (`memory_<check>`, `redis_<check>`). The Redis half starts a private `redis-server` per
//! test (see `tests/support`) and is skipped with one printed line when `redis-server` is not
//! installed, unless `CI` is set, in which case it fails.
//!
//! Where the contract lets a store choose (a non-shared store hands out no locks, an expired
//! entry may be absent or readable), the check asserts what the contract allows and the
//! harness says which choice the store under test made. No assertion is about how long
//! something took: every wait is bounded by `tokio::time::timeout` or a bounded poll and fails
//! with a message naming what did not happen.

#[cfg(feature = "cluster")]
#[path = "support/cluster.rs"]
mod cluster;
mod support;

use herdless::store::{
    LockOutcome, Lookup, MemoryStore, RedisStore, RefreshOutcome, Seen, Written,
};
use herdless::{Clock, Entry, Store, SystemClock, WaitMode};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::RedisServer;

/// The bound of every "this must happen eventually" wait.
const BOUND: Duration = Duration::from_secs(10);
/// The bound of one whole check (a hang fails the test instead of blocking the suite).
const CHECK_BOUND: Duration = Duration::from_secs(60);
/// A TTL long enough that nothing expires during a check unless the check wants it to.
const LONG_TTL: Duration = Duration::from_secs(60);
/// A lease longer than [`BOUND`]: a lock taken with it can only become free again by being
/// released, never by lapsing while a check polls.
const LONG_LEASE: Duration = Duration::from_secs(30);
const LONG_HOLD: Duration = Duration::from_secs(60);
/// A lease that lapses quickly (and, with `max_hold` equal to it, is never renewed).
const SHORT_LEASE: Duration = Duration::from_millis(50);
/// How long polls sleep between attempts.
const POLL: Duration = Duration::from_millis(5);

/// The value type of the suite: a small serde struct, so that Redis round-trips a real record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Val {
    text: String,
    n: u64,
}

fn val(text: &str, n: u64) -> Val {
    Val {
        text: text.to_string(),
        n,
    }
}

fn key(k: &str) -> String {
    k.to_string()
}

/// The engine clock (nanoseconds, monotonic).
fn now() -> u64 {
    SystemClock::new().now()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An entry as the engine writes it: expiring `ttl` from now on the engine clock.
fn entry(v: Val, delta_us: u64, ttl: Duration) -> Entry<Val> {
    Entry {
        value: v,
        delta_us,
        expires_at: now() + nanos(ttl),
        write_id: 0,
    }
}

fn lock_name<V, L>(o: &LockOutcome<V, L>) -> &'static str {
    match o {
        LockOutcome::Acquired(_) => "Acquired",
        LockOutcome::Found(_) => "Found",
        LockOutcome::Busy => "Busy",
        LockOutcome::Local => "Local",
    }
}

fn refresh_name<L>(o: &RefreshOutcome<L>) -> &'static str {
    match o {
        RefreshOutcome::Acquired(_) => "Acquired",
        RefreshOutcome::Local => "Local",
        RefreshOutcome::Skip => "Skip",
    }
}

fn lookup_name<V>(o: &Lookup<V>) -> &'static str {
    match o {
        Lookup::Found(_) => "Found",
        Lookup::Missing => "Missing",
        Lookup::NotLocal => "NotLocal",
    }
}

/// Awaits `f`, failing the check if it does not finish within `bound`.
async fn within<T>(what: &str, bound: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {bound:?}"),
    }
}

/// Builds fresh stores of the kind under test.
trait Harness {
    type S: Store<String, Val>;
    /// A fresh store with a key space of its own, and a second handle on the same data as
    /// another process would hold it (for a shared store: another client of the same server).
    fn pair(&self) -> (Self::S, Self::S);
    /// A fresh store.
    fn store(&self) -> Self::S {
        self.pair().0
    }
    /// Whether an entry past its TTL stays readable (reporting `expires_at <= now`) rather than
    /// disappearing; the contract allows either.
    fn keeps_expired(&self) -> bool;
    /// Whether `get_now` answers without I/O (else it must say `NotLocal`).
    fn answers_locally(&self) -> bool;
    /// Returns once `s` is able to receive wake-ups from other processes (a no-op for stores
    /// without remote wake-ups).
    async fn ready_for_wakeups(&self, s: &Self::S);
}

// ---------------------------------------------------------------------------------------------
// The harnesses.
// ---------------------------------------------------------------------------------------------

struct MemoryHarness;

impl Harness for MemoryHarness {
    type S = MemoryStore<String, Val>;
    fn pair(&self) -> (Self::S, Self::S) {
        let s = MemoryStore::new(1_000).expect("a memory store");
        (s.clone(), s)
    }
    fn keeps_expired(&self) -> bool {
        true // the engine decides expiry; the entry stays until evicted or replaced
    }
    fn answers_locally(&self) -> bool {
        true
    }
    async fn ready_for_wakeups(&self, _s: &Self::S) {}
}

struct RedisHarness {
    server: RedisServer,
    test: &'static str,
    next: AtomicU64,
}

impl RedisHarness {
    /// A harness on a private server, or `None` (test skipped) when `redis-server` is missing
    /// and `CI` is not set.
    fn new_or_skip(test: &'static str) -> Option<Self> {
        let server = support::redis_or_skip()?;
        Some(RedisHarness {
            server,
            test,
            next: AtomicU64::new(0),
        })
    }

    fn build(&self, prefix: &str) -> RedisStore {
        RedisStore::builder(&self.server.url())
            .prefix(prefix)
            // Generous: these checks are about semantics, not about a slow machine failing open.
            .op_timeout(Duration::from_secs(2))
            .build()
            .expect("a redis store")
    }
}

impl Harness for RedisHarness {
    type S = RedisStore;
    fn pair(&self) -> (RedisStore, RedisStore) {
        let prefix = format!(
            "contract-{}-{}",
            self.test,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        (self.build(&prefix), self.build(&prefix))
    }
    fn keeps_expired(&self) -> bool {
        false // Redis drops a key when its PTTL runs out
    }
    fn answers_locally(&self) -> bool {
        false
    }
    async fn ready_for_wakeups(&self, s: &RedisStore) {
        Self::ready_for_wakeups_probe(s).await
    }
}

impl RedisHarness {
    /// Waits (bounded) until the store's pub/sub subscription is live. Observed through the
    /// public counters: with the subscription live, `wait_for_value` first asks the server
    /// whether the value exists (one round trip); without it, it only sleeps.
    async fn ready_for_wakeups_probe(s: &RedisStore) {
        let ns = Store::<String, Val>::namespace(s, "wakeup-probe");
        let probe = key("probe");
        within(
            "the store's pub/sub subscription to go live",
            BOUND,
            async {
                loop {
                    let before = s.stats().round_trips.load(Ordering::SeqCst);
                    Store::<String, Val>::wait_for_value(
                        s,
                        &ns,
                        &probe,
                        Duration::from_millis(1),
                        WaitMode::Async,
                    )
                    .await
                    .expect("probe wait");
                    if s.stats().round_trips.load(Ordering::SeqCst) > before {
                        return;
                    }
                    tokio::time::sleep(POLL).await;
                }
            },
        )
        .await;
    }
}

/// The same Redis store over a private Redis Cluster (3 masters, 3 replicas): one cluster for
/// the whole suite (forming one costs seconds), a fresh prefix per store.
#[cfg(feature = "cluster")]
struct ClusterHarness {
    cluster: cluster::RedisCluster,
    test: &'static str,
    next: AtomicU64,
}

#[cfg(feature = "cluster")]
impl ClusterHarness {
    fn build(&self, prefix: &str) -> RedisStore {
        let seeds = self.cluster.seeds();
        let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
        RedisStore::cluster_builder(&seeds)
            .prefix(prefix)
            .op_timeout(Duration::from_secs(2))
            .build()
            .expect("a cluster store")
    }
}

#[cfg(feature = "cluster")]
impl Harness for ClusterHarness {
    type S = RedisStore;
    fn pair(&self) -> (RedisStore, RedisStore) {
        let prefix = format!(
            "cluster-{}-{}",
            self.test,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        (self.build(&prefix), self.build(&prefix))
    }
    fn keeps_expired(&self) -> bool {
        false
    }
    fn answers_locally(&self) -> bool {
        false
    }
    async fn ready_for_wakeups(&self, s: &RedisStore) {
        // The same observation as for one server: the store's subscription is live.
        let h = RedisHarness::ready_for_wakeups_probe(s);
        h.await
    }
}

/// The disk store: each pair is one fresh directory opened twice, as two processes would (a
/// second open in one process has its own lock file description, so its locks exclude the
/// first's).
#[cfg(feature = "disk")]
struct DiskHarness {
    root: std::path::PathBuf,
    next: AtomicU64,
}

#[cfg(feature = "disk")]
impl DiskHarness {
    fn new(test: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("herdless-contract-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        DiskHarness {
            root,
            next: AtomicU64::new(0),
        }
    }
}

#[cfg(feature = "disk")]
impl Drop for DiskHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(feature = "disk")]
impl Harness for DiskHarness {
    type S = herdless::store::DiskStore;
    fn pair(&self) -> (Self::S, Self::S) {
        let dir = self
            .root
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        let a = herdless::store::DiskStore::open(&dir).expect("a disk store");
        let b = herdless::store::DiskStore::open(&dir).expect("the same disk store again");
        (a, b)
    }
    fn keeps_expired(&self) -> bool {
        true // culled only to make room
    }
    fn answers_locally(&self) -> bool {
        true // a read transaction on the shared map, no I/O
    }
    async fn ready_for_wakeups(&self, _s: &Self::S) {}
}

// ---------------------------------------------------------------------------------------------
// Helpers over any store.
// ---------------------------------------------------------------------------------------------

/// Polls `lock_or_get` until it hands out the lock (bounded), and returns it.
async fn acquire_eventually<S: Store<String, Val>>(
    s: &S,
    ns_name: &str,
    k: &String,
    lease: Duration,
    max_hold: Duration,
    what: &str,
) -> S::Lock {
    let ns = s.namespace(ns_name);
    within(what, BOUND, async {
        loop {
            match s.lock_or_get(&ns, k, lease, max_hold, now()).await {
                Ok(LockOutcome::Acquired(l)) => return l,
                Ok(LockOutcome::Busy) => tokio::time::sleep(POLL).await,
                Ok(o) => panic!(
                    "{what}: lock_or_get said {} instead of Busy/Acquired",
                    lock_name(&o)
                ),
                Err(e) => panic!("{what}: lock_or_get failed: {e}"),
            }
        }
    })
    .await
}

async fn get_value<S: Store<String, Val>>(s: &S, ns_name: &str, k: &String) -> Option<Val> {
    let ns = s.namespace(ns_name);
    s.get(&ns, k, now())
        .await
        .unwrap_or_else(|e| panic!("get {ns_name}/{k}: {e}"))
        .map(|e| e.value)
}

async fn put<S: Store<String, Val>>(s: &S, ns_name: &str, k: &String, v: Val) {
    let ns = s.namespace(ns_name);
    let w = s
        .set(&ns, k, entry(v, 1, LONG_TTL), LONG_TTL, None)
        .await
        .unwrap_or_else(|e| panic!("set {ns_name}/{k}: {e}"));
    assert_eq!(w, Written::Stored, "a write without a lock is stored");
}

// ---------------------------------------------------------------------------------------------
// 1. get / set / expiry.
// ---------------------------------------------------------------------------------------------

async fn get_set_expiry<H: Harness>(h: &H) {
    let s = h.store();
    let ns = s.namespace("getset");
    let k = key("k1");

    let t = now();
    assert_eq!(
        s.get(&ns, &key("missing"), t).await.expect("get missing"),
        None,
        "a key never written is a miss"
    );

    let written = entry(val("one", 1), 1_234, LONG_TTL);
    let w = s
        .set(&ns, &k, written.clone(), LONG_TTL, None)
        .await
        .expect("set");
    assert_eq!(w, Written::Stored);

    let t = now();
    let got = s
        .get(&ns, &k, t)
        .await
        .expect("get")
        .expect("the entry just written");
    assert_eq!(got.value, written.value, "value round-trips");
    assert_eq!(got.delta_us, 1_234, "delta_us round-trips");
    assert!(
        got.expires_at > t && got.expires_at <= t + nanos(LONG_TTL),
        "expires_at {} not within (now, now + ttl] = ({t}, {}]",
        got.expires_at,
        t + nanos(LONG_TTL)
    );

    // An overwrite replaces the entry.
    s.set(&ns, &k, entry(val("two", 2), 99, LONG_TTL), LONG_TTL, None)
        .await
        .expect("overwrite");
    let got = s.get(&ns, &k, now()).await.expect("get").expect("entry");
    assert_eq!(
        (got.value, got.delta_us),
        (val("two", 2), 99),
        "overwrite wins"
    );

    // Expiry: after the TTL an entry is either absent or reports expires_at <= now.
    let short = Duration::from_millis(50);
    let ks = key("short");
    s.set(&ns, &ks, entry(val("brief", 3), 7, short), short, None)
        .await
        .expect("set short");
    let expired = within("the short-lived entry to expire", BOUND, async {
        loop {
            let t = now();
            match s.get(&ns, &ks, t).await.expect("get short") {
                None => return None,
                Some(e) if e.expires_at <= t => return Some(e),
                Some(e) => {
                    assert!(
                        e.expires_at <= t + nanos(short),
                        "a live entry's expires_at {} exceeds now + ttl {}",
                        e.expires_at,
                        t + nanos(short)
                    );
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    })
    .await;
    if h.keeps_expired() {
        let e = expired.expect("this store keeps expired entries readable (the engine decides)");
        assert_eq!(
            (e.value, e.delta_us),
            (val("brief", 3), 7),
            "the stale entry is intact"
        );
    } else {
        assert!(
            expired.is_none(),
            "this store drops expired entries, yet returned {expired:?}"
        );
    }
    // The long-lived entry is untouched by the other one's expiry.
    assert_eq!(get_value(&s, "getset", &k).await, Some(val("two", 2)));
}

// ---------------------------------------------------------------------------------------------
// 2. Namespaces never collide.
// ---------------------------------------------------------------------------------------------

async fn namespaces_never_collide<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let alpha = s.namespace("alpha");
    let beta = s.namespace("beta");
    assert_eq!(
        s.namespace("alpha"),
        alpha,
        "the same name gives the same namespace"
    );
    assert_eq!(alpha.name(), "alpha");
    assert_ne!(alpha, beta, "different names give different namespaces");
    assert_ne!(alpha.id(), beta.id(), "different names get different ids");
    assert_eq!(peer.namespace("alpha").name(), "alpha");

    let k = key("same-key");
    put(&s, "alpha", &k, val("from alpha", 1)).await;
    put(&s, "beta", &k, val("from beta", 2)).await;
    assert_eq!(get_value(&s, "alpha", &k).await, Some(val("from alpha", 1)));
    assert_eq!(get_value(&s, "beta", &k).await, Some(val("from beta", 2)));
    // Another handle on the same data resolves the name to the same entries.
    assert_eq!(
        get_value(&peer, "alpha", &k).await,
        Some(val("from alpha", 1))
    );
    assert_eq!(
        get_value(&peer, "beta", &k).await,
        Some(val("from beta", 2))
    );

    put(&s, "alpha", &key("only-alpha"), val("a", 3)).await;
    assert_eq!(
        get_value(&s, "beta", &key("only-alpha")).await,
        None,
        "a key of one namespace is a miss in another"
    );

    // A name that looks like another name plus a key prefix.
    put(&s, "a", &key("b:c"), val("a / b:c", 4)).await;
    put(&s, "a:b", &key("c"), val("a:b / c", 5)).await;
    put(&s, "a.b", &key("c"), val("a.b / c", 6)).await;
    put(&s, "a", &key("b.c"), val("a / b.c", 7)).await;
    assert_eq!(
        get_value(&s, "a", &key("b:c")).await,
        Some(val("a / b:c", 4))
    );
    assert_eq!(
        get_value(&s, "a:b", &key("c")).await,
        Some(val("a:b / c", 5))
    );
    assert_eq!(
        get_value(&s, "a.b", &key("c")).await,
        Some(val("a.b / c", 6))
    );
    assert_eq!(
        get_value(&s, "a", &key("b.c")).await,
        Some(val("a / b.c", 7))
    );

    // Locks are per namespace too: holding (alpha, k) does not make (beta, k) busy.
    let lk = key("locked");
    let held = s
        .lock_or_get(&alpha, &lk, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("lock alpha");
    let other = s
        .lock_or_get(&beta, &lk, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("lock beta");
    if s.is_shared() {
        assert!(
            matches!(held, LockOutcome::Acquired(_)),
            "alpha: {}",
            lock_name(&held)
        );
        assert!(
            matches!(other, LockOutcome::Acquired(_)),
            "the same key in another namespace must be free, got {}",
            lock_name(&other)
        );
    } else {
        assert!(
            matches!(held, LockOutcome::Local),
            "alpha: {}",
            lock_name(&held)
        );
        assert!(
            matches!(other, LockOutcome::Local),
            "beta: {}",
            lock_name(&other)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. get_now never blocks: it answers from memory or says NotLocal.
// ---------------------------------------------------------------------------------------------

async fn get_now_answers_or_defers<H: Harness>(h: &H) {
    let s = h.store();
    let ns = s.namespace("getnow");
    let k = key("k");

    let before = s.get_now(&ns, &k);
    let written = entry(val("now", 1), 42, LONG_TTL);
    s.set(&ns, &k, written.clone(), LONG_TTL, None)
        .await
        .expect("set");
    let after = s.get_now(&ns, &k);

    if h.answers_locally() {
        assert!(
            matches!(before, Lookup::Missing),
            "before the write: {}",
            lookup_name(&before)
        );
        // The store may number the write (`write_id`); the rest is what was written.
        match after {
            Lookup::Found(e) => assert_eq!(
                (e.value, e.delta_us, e.expires_at),
                (written.value, written.delta_us, written.expires_at),
                "after the write"
            ),
            o => panic!("after the write: {}", lookup_name(&o)),
        }
    } else {
        assert!(
            matches!(before, Lookup::NotLocal),
            "a store needing I/O must defer, got {}",
            lookup_name(&before)
        );
        assert!(
            matches!(after, Lookup::NotLocal),
            "a store needing I/O must defer, got {}",
            lookup_name(&after)
        );
    }
    // Whatever get_now said, `get` finds the entry.
    assert_eq!(get_value(&s, "getnow", &k).await, Some(val("now", 1)));
}

// ---------------------------------------------------------------------------------------------
// 4. Lock exclusivity and release.
// ---------------------------------------------------------------------------------------------

async fn lock_exclusive_and_released<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let ns = s.namespace("locks");
    let pns = peer.namespace("locks");
    let k = key("cold");

    let first = s
        .lock_or_get(&ns, &k, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("first lock_or_get");

    if !s.is_shared() {
        // No cross-process coordination: every hard-miss leader computes (in-process
        // single-flight makes it one per process).
        assert!(
            matches!(first, LockOutcome::Local),
            "first: {}",
            lock_name(&first)
        );
        let second = peer
            .lock_or_get(&pns, &k, LONG_LEASE, LONG_HOLD, now())
            .await
            .expect("second lock_or_get");
        assert!(
            matches!(second, LockOutcome::Local),
            "second: {}",
            lock_name(&second)
        );
        put(&s, "locks", &k, val("computed", 1)).await;
    } else {
        let LockOutcome::Acquired(held) = first else {
            panic!(
                "the first caller on a missing key must acquire, got {}",
                lock_name(&first)
            );
        };
        let second = peer
            .lock_or_get(&pns, &k, LONG_LEASE, LONG_HOLD, now())
            .await
            .expect("second lock_or_get");
        assert!(
            matches!(second, LockOutcome::Busy),
            "another process must see the lock busy, got {}",
            lock_name(&second)
        );
        let again = s
            .lock_or_get(&ns, &k, LONG_LEASE, LONG_HOLD, now())
            .await
            .expect("third lock_or_get");
        assert!(
            matches!(again, LockOutcome::Busy),
            "the lock is exclusive even within one store, got {}",
            lock_name(&again)
        );

        // Dropping without a write releases it (the lease is longer than the poll, so only a
        // release can free it).
        drop(held);
        let taken = acquire_eventually(
            &peer,
            "locks",
            &k,
            LONG_LEASE,
            LONG_HOLD,
            "the dropped lock to be released",
        )
        .await;
        let w = peer
            .set(
                &pns,
                &k,
                entry(val("computed", 1), 5, LONG_TTL),
                LONG_TTL,
                Some(taken),
            )
            .await
            .expect("set with the lock");
        assert_eq!(w, Written::Stored, "a write with a held lock is stored");
    }

    match s
        .lock_or_get(&ns, &k, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("lock_or_get after the write")
    {
        LockOutcome::Found(e) => assert_eq!(e.value, val("computed", 1)),
        o => panic!(
            "after the write lock_or_get must find the value, got {}",
            lock_name(&o)
        ),
    }
    // The write released the lock: an early refresh of the entry just written may take it.
    let seen = Seen::of(
        &s.get(&ns, &k, now())
            .await
            .expect("get")
            .expect("the entry"),
    );
    let r = peer
        .try_lock_refresh(&pns, &k, seen, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("try_lock_refresh after the write");
    if s.is_shared() {
        assert!(
            matches!(r, RefreshOutcome::Acquired(_)),
            "the write with the lock must release it, got {}",
            refresh_name(&r)
        );
    } else {
        assert!(
            matches!(r, RefreshOutcome::Local),
            "got {}",
            refresh_name(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Fenced writes: a holder whose lease lapsed cannot overwrite a newer value.
// ---------------------------------------------------------------------------------------------

async fn fenced_writes<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let ns = s.namespace("fence");
    let pns = peer.namespace("fence");

    if !s.is_shared() {
        // A non-shared store never hands out a lock, so no holder can go stale: fencing is
        // vacuous. Check that it indeed hands none out, and that writes are last-writer-wins.
        let k = key("k");
        let o = s
            .lock_or_get(&ns, &k, SHORT_LEASE, SHORT_LEASE, now())
            .await
            .expect("lock_or_get");
        assert!(matches!(o, LockOutcome::Local), "got {}", lock_name(&o));
        put(&s, "fence", &k, val("older", 1)).await;
        put(&peer, "fence", &k, val("newer", 2)).await;
        assert_eq!(get_value(&s, "fence", &k).await, Some(val("newer", 2)));
        return;
    }

    // (a) The stale holder writes after a newer holder wrote: fenced, the newer value stays.
    let k = key("newer-written");
    let stale = acquire_eventually(&s, "fence", &k, SHORT_LEASE, SHORT_LEASE, "first lock").await;
    let fresh = acquire_eventually(
        &peer,
        "fence",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the short lease to lapse and a second holder to acquire",
    )
    .await;
    let w = peer
        .set(
            &pns,
            &k,
            entry(val("newer", 2), 1, LONG_TTL),
            LONG_TTL,
            Some(fresh),
        )
        .await
        .expect("the new holder's write");
    assert_eq!(w, Written::Stored, "the current holder's write is stored");
    let w = s
        .set(
            &ns,
            &k,
            entry(val("stale", 1), 1, LONG_TTL),
            LONG_TTL,
            Some(stale),
        )
        .await
        .expect("the stale holder's write");
    assert_eq!(
        w,
        Written::Fenced,
        "a newer value exists: the stale write must be fenced"
    );
    assert_eq!(
        get_value(&s, "fence", &k).await,
        Some(val("newer", 2)),
        "the newer value survives the stale holder's write"
    );

    // (b) The stale holder writes while a newer holder still holds the lock: fenced, nothing
    // lands, and the newer holder's write is still stored.
    let k = key("newer-holding");
    let stale = acquire_eventually(&s, "fence", &k, SHORT_LEASE, SHORT_LEASE, "first lock").await;
    let fresh = acquire_eventually(
        &peer,
        "fence",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the short lease to lapse and a second holder to acquire",
    )
    .await;
    let w = s
        .set(
            &ns,
            &k,
            entry(val("stale", 1), 1, LONG_TTL),
            LONG_TTL,
            Some(stale),
        )
        .await
        .expect("the stale holder's write");
    assert_eq!(w, Written::Fenced, "another process holds the lock: fenced");
    assert_eq!(
        get_value(&s, "fence", &k).await,
        None,
        "the fenced write did not land"
    );
    let w = peer
        .set(
            &pns,
            &k,
            entry(val("newer", 2), 1, LONG_TTL),
            LONG_TTL,
            Some(fresh),
        )
        .await
        .expect("the new holder's write");
    assert_eq!(
        w,
        Written::Stored,
        "the stale write did not steal the current holder's lock"
    );
    assert_eq!(get_value(&peer, "fence", &k).await, Some(val("newer", 2)));

    // (c) The lease lapsed but nobody wrote: the store may store or fence, and must say which.
    let k = key("nobody-else");
    let stale = acquire_eventually(&s, "fence", &k, SHORT_LEASE, SHORT_LEASE, "first lock").await;
    // Wait until the lease has lapsed: someone else could take the lock (then drop it unused).
    let probe = acquire_eventually(
        &peer,
        "fence",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the short lease to lapse",
    )
    .await;
    drop(probe); // unused: nobody writes a value
    let w = s
        .set(
            &ns,
            &k,
            entry(val("late", 1), 1, LONG_TTL),
            LONG_TTL,
            Some(stale),
        )
        .await
        .expect("the lapsed holder's write");
    let now_there = get_value(&s, "fence", &k).await;
    match w {
        Written::Stored => assert_eq!(now_there, Some(val("late", 1)), "Stored but not readable"),
        Written::Fenced => assert_eq!(now_there, None, "Fenced but a value landed"),
    }
}

// ---------------------------------------------------------------------------------------------
// 6b. "Replaced since the read" is decided by the write's identity, not by times.
// ---------------------------------------------------------------------------------------------

async fn refresh_judged_by_write_id<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let ns = s.namespace("refresh-id");
    let pns = peer.namespace("refresh-id");
    let k = key("blurred");
    let ttl = Duration::from_secs(20);
    s.set(&ns, &k, entry(val("v1", 1), 10, ttl), ttl, None)
        .await
        .expect("set v1");
    let e = peer.get(&pns, &k, now()).await.expect("get").expect("v1");
    if !s.is_shared() {
        // One process, one clock: the expiry the reader saw is the entry's own, exactly.
        return;
    }
    assert_ne!(e.write_id, 0, "a shared store numbers its writes");
    // The reader's view of the expiry is 50 ms early (its read was slow, or its estimate of
    // the server's clock is off), but nothing replaced the entry: the refresh goes ahead.
    let blurred = Seen {
        expires_at: e.expires_at.saturating_sub(50_000_000),
        write_id: e.write_id,
    };
    let r = peer
        .try_lock_refresh(&pns, &k, blurred, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("try with a blurred expiry");
    let RefreshOutcome::Acquired(lock) = r else {
        panic!(
            "not replaced since the read: the refresh must take the lock, got {}",
            refresh_name(&r)
        );
    };
    // Its write (same TTL, a few ms later) replaces v1 and releases the lock. A reader that saw
    // v1, even one whose view of the expiry is 50 ms late, must now skip: v1 was replaced.
    let w = peer
        .set(&pns, &k, entry(val("v2", 2), 10, ttl), ttl, Some(lock))
        .await
        .expect("refresh write");
    assert_eq!(w, Written::Stored);
    let late = Seen {
        expires_at: e.expires_at + 50_000_000,
        write_id: e.write_id,
    };
    let r = s
        .try_lock_refresh(&ns, &k, late, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("try after the replacement");
    assert!(
        matches!(r, RefreshOutcome::Skip),
        "the entry seen was replaced (same TTL, a few ms later): expected Skip, got {}",
        refresh_name(&r)
    );
    let e2 = s.get(&ns, &k, now()).await.expect("get").expect("v2");
    assert_ne!(e2.write_id, e.write_id, "another write, another write_id");
}

// ---------------------------------------------------------------------------------------------
// 6. try_lock_refresh.
// ---------------------------------------------------------------------------------------------

async fn try_lock_refresh<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let ns = s.namespace("refresh");
    let pns = peer.namespace("refresh");
    let k = key("hot");

    // The entry as a reader saw it. Its TTL is shorter than the replacement's, as when an early
    // refresh replaces an entry part-way through its life.
    let first_ttl = Duration::from_secs(20);
    s.set(&ns, &k, entry(val("v1", 1), 10, first_ttl), first_ttl, None)
        .await
        .expect("set v1");
    let seen = Seen::of(&s.get(&ns, &k, now()).await.expect("get").expect("v1"));

    let first = s
        .try_lock_refresh(&ns, &k, seen, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("first try");
    let held = if s.is_shared() {
        let RefreshOutcome::Acquired(l) = first else {
            panic!(
                "the first refresh of a fresh entry must acquire, got {}",
                refresh_name(&first)
            );
        };
        let second = peer
            .try_lock_refresh(&pns, &k, seen, LONG_LEASE, LONG_HOLD, now())
            .await
            .expect("second try");
        assert!(
            matches!(second, RefreshOutcome::Skip),
            "while another process refreshes: {}",
            refresh_name(&second)
        );
        Some(l)
    } else {
        assert!(
            matches!(first, RefreshOutcome::Local),
            "got {}",
            refresh_name(&first)
        );
        None
    };

    // The refresh lands (with the lock, releasing it).
    let w = s
        .set(&ns, &k, entry(val("v2", 2), 10, LONG_TTL), LONG_TTL, held)
        .await
        .expect("refresh write");
    assert_eq!(w, Written::Stored);
    assert_eq!(get_value(&s, "refresh", &k).await, Some(val("v2", 2)));

    // A reader still holding the old expiry must not refresh again in the same cycle.
    let stale_try = peer
        .try_lock_refresh(&pns, &k, seen, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("try with the old expiry");
    assert!(
        matches!(stale_try, RefreshOutcome::Skip),
        "the entry seen was replaced: expected Skip, got {}",
        refresh_name(&stale_try)
    );

    // A reader that saw the new entry may refresh it (the Skip above was about the old one, and
    // the refresh write released the lock).
    let seen2 = Seen::of(&peer.get(&pns, &k, now()).await.expect("get").expect("v2"));
    let again = peer
        .try_lock_refresh(&pns, &k, seen2, LONG_LEASE, LONG_HOLD, now())
        .await
        .expect("try with the new expiry");
    if s.is_shared() {
        assert!(
            matches!(again, RefreshOutcome::Acquired(_)),
            "got {}",
            refresh_name(&again)
        );
    } else {
        assert!(
            matches!(again, RefreshOutcome::Local),
            "got {}",
            refresh_name(&again)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Waiters are woken.
// ---------------------------------------------------------------------------------------------

/// The longest a single `wait_for_value` may wait; the checks bound the whole wait by less, so
/// finishing in time means the waiter was woken, not that its own deadline passed.
const WAIT_MAX: Duration = Duration::from_secs(5);
const WOKEN_BOUND: Duration = Duration::from_secs(3);

async fn waiters_are_woken<H: Harness>(h: &H) {
    let (s, peer) = h.pair();
    let ns = s.namespace("wake");
    let pns = peer.namespace("wake");

    if !s.is_shared() {
        // No other process can publish: waiting must not hold the caller (it returns at once
        // and the engine asks again).
        within("wait_for_value on a non-shared store", WOKEN_BOUND, async {
            s.wait_for_value(&ns, &key("k"), WAIT_MAX, WaitMode::Async)
                .await
        })
        .await
        .expect("wait_for_value");
        return;
    }

    h.ready_for_wakeups(&s).await;

    // (a) Woken by the holder's write. The waiter re-reads after every return (a wake-up may be
    // only a hint); each single wait may last WAIT_MAX, so finishing within WOKEN_BOUND means
    // it was woken.
    let k = key("written");
    let lock = acquire_eventually(
        &peer,
        "wake",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the writer's lock",
    )
    .await;
    let waiter = {
        let (s, ns, k) = (s.clone(), ns.clone(), k.clone());
        tokio::spawn(async move {
            let mut waits = 0u32;
            loop {
                waits += 1;
                s.wait_for_value(&ns, &k, WAIT_MAX, WaitMode::Async)
                    .await
                    .expect("wait_for_value");
                if let Some(e) = s.get(&ns, &k, now()).await.expect("get after waking") {
                    return (waits, e.value);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = peer
        .set(
            &pns,
            &k,
            entry(val("published", 1), 1, LONG_TTL),
            LONG_TTL,
            Some(lock),
        )
        .await
        .expect("the writer's set");
    assert_eq!(w, Written::Stored);
    let (waits, v) = within("the waiter to be woken by the write", WOKEN_BOUND, waiter)
        .await
        .expect("the waiter task");
    assert_eq!(v, val("published", 1));
    assert!(waits >= 1);

    // (b) Woken when the holder gives up without writing (so that a waiter takes over at once
    // instead of waiting out the lease).
    let k = key("abandoned");
    let lock = acquire_eventually(
        &peer,
        "wake",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the holder's lock",
    )
    .await;
    let waiter = {
        let (s, ns, k) = (s.clone(), ns.clone(), k.clone());
        tokio::spawn(async move { s.wait_for_value(&ns, &k, WAIT_MAX, WaitMode::Async).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(lock);
    within("the waiter to be woken by the release", WOKEN_BOUND, waiter)
        .await
        .expect("the waiter task")
        .expect("wait_for_value");
    // And it can take over.
    let _ = acquire_eventually(
        &s,
        "wake",
        &k,
        LONG_LEASE,
        LONG_HOLD,
        "the waiter to take over",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Errors surface as store errors, untrusted bytes as misses (Redis only).
// ---------------------------------------------------------------------------------------------

// There is no memory variant: a `MemoryStore` has no server to lose and reads only entries it
// wrote itself, so both halves of this check are vacuous for it.

/// A port nothing listens on (bound, read, released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("local_addr").port();
    drop(l);
    port
}

fn assert_store_error<T>(what: &str, r: Result<T, herdless::store::StoreError>) {
    match r {
        Ok(_) => panic!("{what} against a closed port succeeded"),
        Err(e) => assert!(
            !e.message().contains("panicked"),
            "{what}: the store panicked inside: {e}"
        ),
    }
}

/// Writes foreign bytes (or a foreign Redis type) at `vkey` with a raw connection.
fn plant(con: &mut redis::Connection, case: &str, vkey: &[u8]) {
    let cmd = match case {
        "garbage" => redis::cmd("SET")
            .arg(vkey)
            .arg(b"\x00\xffnot a record".as_slice())
            .arg("PX")
            .arg(60_000)
            .clone(),
        // Our magic and version, then a msgpack array header with nothing after it.
        "truncated record" => redis::cmd("SET")
            .arg(vkey)
            .arg(b"HL\x029999999999999999\x92".as_slice())
            .arg("PX")
            .arg(60_000)
            .clone(),
        "garbage without ttl" => redis::cmd("SET")
            .arg(vkey)
            .arg(b"\xc1\xc1\xc1".as_slice())
            .clone(),
        "wrong redis type" => redis::cmd("RPUSH").arg(vkey).arg("a").arg("b").clone(),
        "empty string" => redis::cmd("SET")
            .arg(vkey)
            .arg(b"".as_slice())
            .arg("PX")
            .arg(60_000)
            .clone(),
        other => unreachable!("unknown case {other}"),
    };
    cmd.query::<()>(con)
        .unwrap_or_else(|e| panic!("planting {case}: {e}"));
}

async fn redis_errors_surface(h: &RedisHarness) {
    // (a) Nothing listens: every call is an Err(StoreError), within a bound, never a panic.
    let down = RedisStore::builder(&format!("redis://127.0.0.1:{}/", closed_port()))
        .prefix("contract-down")
        .op_timeout(Duration::from_millis(100))
        .build()
        .expect("building never connects");
    let ns = Store::<String, Val>::namespace(&down, "down");
    let k = key("k");
    for round in 0..2 {
        // The second round runs with the circuit breaker open (it must still be an error).
        let r = within(
            "get against a closed port",
            BOUND,
            Store::<String, Val>::get(&down, &ns, &k, now()),
        )
        .await;
        assert_store_error(&format!("get (round {round})"), r);
        let r = within(
            "set against a closed port",
            BOUND,
            down.set(&ns, &k, entry(val("x", 1), 1, LONG_TTL), LONG_TTL, None),
        )
        .await;
        assert_store_error(&format!("set (round {round})"), r);
        let r = within(
            "lock_or_get against a closed port",
            BOUND,
            Store::<String, Val>::lock_or_get(&down, &ns, &k, LONG_LEASE, LONG_HOLD, now()),
        )
        .await;
        assert_store_error(&format!("lock_or_get (round {round})"), r);
        let r = within(
            "try_lock_refresh against a closed port",
            BOUND,
            Store::<String, Val>::try_lock_refresh(
                &down,
                &ns,
                &k,
                Seen {
                    expires_at: now(),
                    write_id: 0,
                },
                LONG_LEASE,
                LONG_HOLD,
                now(),
            ),
        )
        .await;
        assert_store_error(&format!("try_lock_refresh (round {round})"), r);
    }
    // Waiting on an unreachable store must end by its own bound (Ok or Err, no panic).
    let _ = within(
        "wait_for_value against a closed port",
        BOUND,
        Store::<String, Val>::wait_for_value(
            &down,
            &ns,
            &k,
            Duration::from_millis(50),
            WaitMode::Async,
        ),
    )
    .await;

    // (b) Untrusted bytes at the value key are a miss, and a write replaces them.
    let s = h.store();
    let name = "untrusted";
    let ns = Store::<String, Val>::namespace(&s, name);
    let mut con = h.server.raw();
    let cases = [
        "garbage",
        "truncated record",
        "garbage without ttl",
        "wrong redis type",
        "empty string",
    ];
    let before = s.stats().decode_errors.load(Ordering::SeqCst);
    for (i, what) in cases.into_iter().enumerate() {
        let k = format!("k{i}");
        plant(&mut con, what, &s.value_key(name, &k));
        let got = within(
            "get of untrusted bytes",
            BOUND,
            Store::<String, Val>::get(&s, &ns, &k, now()),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: get must be a miss, not an error: {e}"));
        assert_eq!(got, None, "{what}: undecodable bytes must read as a miss");
        let o = within(
            "lock_or_get on untrusted bytes",
            BOUND,
            Store::<String, Val>::lock_or_get(&s, &ns, &k, LONG_LEASE, LONG_HOLD, now()),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: lock_or_get must treat it as a miss: {e}"));
        let lock = match o {
            LockOutcome::Acquired(l) => Some(l),
            LockOutcome::Local => None,
            o => panic!("{what}: lock_or_get on a miss said {}", lock_name(&o)),
        };
        let w = within(
            "the overwrite of untrusted bytes",
            BOUND,
            s.set(
                &ns,
                &k,
                entry(val(what, i as u64), 1, LONG_TTL),
                LONG_TTL,
                lock,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: overwrite: {e}"));
        assert_eq!(w, Written::Stored, "{what}: the write replaces the bytes");
        assert_eq!(
            get_value(&s, name, &k).await,
            Some(val(what, i as u64)),
            "{what}: the overwrite is readable"
        );
    }
    // A well-formed record of another value type (written through the same store) is
    // undecodable as `Val`: a miss too.
    let k = key("foreign-type");
    Store::<String, u64>::set(
        &s,
        &Store::<String, u64>::namespace(&s, name),
        &k,
        Entry {
            value: 7u64,
            delta_us: 1,
            expires_at: now() + nanos(LONG_TTL),
            write_id: 0,
        },
        LONG_TTL,
        None,
    )
    .await
    .expect("set u64");
    assert_eq!(
        Store::<String, Val>::get(&s, &ns, &k, now())
            .await
            .expect("get as Val"),
        None,
        "a record of another type must read as a miss"
    );
    assert!(
        s.stats().decode_errors.load(Ordering::SeqCst) > before,
        "undecodable records are counted"
    );
}

// ---------------------------------------------------------------------------------------------
// The tests: one per (check, store).
// ---------------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn run_check(name: &str, check: impl Future<Output = ()>) {
    runtime().block_on(async {
        if tokio::time::timeout(CHECK_BOUND, check).await.is_err() {
            panic!("check {name} did not finish within {CHECK_BOUND:?}");
        }
    });
}

macro_rules! contract_tests {
    ($($check:ident => $memory:ident, $redis:ident;)*) => {$(
        #[test]
        fn $memory() {
            let h = MemoryHarness;
            run_check(stringify!($memory), $check(&h));
        }

        #[test]
        fn $redis() {
            let Some(h) = RedisHarness::new_or_skip(stringify!($check)) else { return };
            run_check(stringify!($redis), $check(&h));
        }
    )*};
}

contract_tests! {
    get_set_expiry => memory_get_set_expiry, redis_get_set_expiry;
    namespaces_never_collide => memory_namespaces_never_collide, redis_namespaces_never_collide;
    get_now_answers_or_defers => memory_get_now_answers_or_defers, redis_get_now_answers_or_defers;
    lock_exclusive_and_released => memory_lock_exclusive_and_released, redis_lock_exclusive_and_released;
    fenced_writes => memory_fenced_writes, redis_fenced_writes;
    try_lock_refresh => memory_try_lock_refresh, redis_try_lock_refresh;
    refresh_judged_by_write_id => memory_refresh_judged_by_write_id, redis_refresh_judged_by_write_id;
    waiters_are_woken => memory_waiters_are_woken, redis_waiters_are_woken;
}

/// The whole contract against the disk store.
#[cfg(feature = "disk")]
mod disk {
    use super::*;
    macro_rules! disk_tests {
        ($($check:ident => $test:ident;)*) => {$(
            #[test]
            fn $test() {
                let h = DiskHarness::new(stringify!($check));
                run_check(stringify!($test), $check(&h));
            }
        )*};
    }
    disk_tests! {
        get_set_expiry => disk_get_set_expiry;
        namespaces_never_collide => disk_namespaces_never_collide;
        get_now_answers_or_defers => disk_get_now_answers_or_defers;
        lock_exclusive_and_released => disk_lock_exclusive_and_released;
        fenced_writes => disk_fenced_writes;
        try_lock_refresh => disk_try_lock_refresh;
        refresh_judged_by_write_id => disk_refresh_judged_by_write_id;
        waiters_are_woken => disk_waiters_are_woken;
    }
}

#[test]
fn redis_errors_surface_as_store_errors() {
    let Some(h) = RedisHarness::new_or_skip("errors") else {
        return;
    };
    run_check(
        "redis_errors_surface_as_store_errors",
        redis_errors_surface(&h),
    );
}

/// The whole contract against a cluster store, on one private cluster.
#[cfg(feature = "cluster")]
#[test]
fn cluster_contract_suite() {
    let Some(c) = cluster::cluster_or_skip() else {
        return;
    };
    let mut h = ClusterHarness {
        cluster: c,
        test: "",
        next: AtomicU64::new(0),
    };
    macro_rules! each {
        ($($check:ident),*) => {$(
            h.test = stringify!($check);
            run_check(concat!("cluster_", stringify!($check)), $check(&h));
        )*};
    }
    each!(
        get_set_expiry,
        namespaces_never_collide,
        get_now_answers_or_defers,
        lock_exclusive_and_released,
        fenced_writes,
        try_lock_refresh,
        refresh_judged_by_write_id,
        waiters_are_woken
    );
}
