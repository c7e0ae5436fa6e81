//! Outages of the Redis store as callers live them, against a private `redis-server` per test:
//! a closed port from the start, a wrong password, a hung server (SIGSTOP), a server killed and
//! restarted under load, a caller waiting on another process's lock when the server hangs, and
//! a blocking call made on a worker thread of the store's own runtime.
//!
//! The contract under test: a refused connection or refused credentials are reported at once
//! and classified as such (not as a timeout), with the URL and never the password; reconnection
//! runs in the background; no call waits longer than `op_timeout` plus its own computation plus
//! scheduling slack; and a blocking call that would deadlock its runtime gets an error instead.
//!
//! Latency bounds here are deliberately loose (`op_timeout + computation + 1 s`): they catch
//! stacked timeouts (several in one call) and hangs, not jitter. Run with `--nocapture` to see
//! the measured figures.

mod support;

use herdless::store::{RedisStore, Store, StoreError, StoreErrorKind};
use herdless::{memoize_stampede, BlockingMemoized, Contention};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::common::acl;
use support::{bounded, exists, free_port, redis_or_skip, wait_until, warm_up, BOUND};

/// Scheduling slack allowed on top of `op_timeout` and the computation (2 shared cores).
const SLACK: Duration = Duration::from_secs(1);

type Blocking = BlockingMemoized<u64, String, Infallible, RedisStore>;

fn value_of(k: &u64) -> String {
    format!("val-{k}")
}

fn memo(s: &RedisStore, name: &str, ttl: Duration, compute: Duration) -> Blocking {
    memoize_stampede(s, ttl)
        .name(name)
        .contention(Contention::Wait(BOUND))
        .build_blocking_infallible(move |k: &u64| {
            if !compute.is_zero() {
                std::thread::sleep(compute);
            }
            value_of(k)
        })
        .unwrap()
}

/// One store operation (a read), straight through the `Store` trait, bounded.
fn read_once(s: &RedisStore, name: &str) -> (Result<(), StoreError>, Duration) {
    let s = s.clone();
    let name = name.to_string();
    bounded("a store read", BOUND, move || {
        let ns = Store::<u64, String>::namespace(&s, &name);
        let t = Instant::now();
        let out = futures::executor::block_on(Store::<u64, String>::get(&s, &ns, &1, 0));
        (out.map(|_| ()), t.elapsed())
    })
}

fn timed(f: &Blocking, k: u64) -> Duration {
    let t = Instant::now();
    assert_eq!(f.get(&k).unwrap(), value_of(&k), "fail-open answer");
    t.elapsed()
}

// =============================================================================================
// Refused connections and refused credentials: reported at once, classified, URL redacted.
// =============================================================================================

#[test]
fn closed_port_is_refused_at_once_not_after_timeouts() {
    let port = free_port(); // nothing listens there
    let url = format!("redis://app:hunter2@127.0.0.1:{port}/");
    // A long op_timeout: a refusal must not wait for it.
    let op = Duration::from_secs(2);
    let s = RedisStore::builder(&url).op_timeout(op).build().unwrap();

    let (out, took) = read_once(&s, "refused");
    let err = out.unwrap_err();
    println!("closed port: one store read failed after {took:?}: {err}");
    assert_eq!(err.kind(), StoreErrorKind::ConnectionRefused, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(took < op, "a refusal waited {took:?} (op_timeout {op:?})");
    assert_eq!(s.stats().timeouts.load(Ordering::SeqCst), 0);

    // Redis down from the start: a fresh store, the first memoized call and the next ones.
    let s = RedisStore::builder(&url).op_timeout(op).build().unwrap();
    let f = memo(&s, "refused-first", Duration::from_secs(60), Duration::ZERO);
    let g = f.clone();
    let (first, worst) = bounded("calls with nothing listening", BOUND, move || {
        let first = timed(&g, 0);
        let worst = (1..20).map(|k| timed(&g, k)).max().unwrap();
        (first, worst)
    });
    println!(
        "closed port, op_timeout {op:?}: first call {first:?}, worst of the next 19 {worst:?}"
    );
    assert!(first < op, "the first call waited {first:?}");
    assert!(worst < op, "a later call waited {worst:?}");
    let st = s.stats();
    assert_eq!(
        st.timeouts.load(Ordering::SeqCst),
        0,
        "refusals are not timeouts"
    );
    assert!(st.errors.load(Ordering::SeqCst) >= 1);
    assert_eq!(f.stats().computations, 20, "each key computed locally once");
}

/// The first-call figure of the issue, with the default settings (printed, loosely bounded).
#[test]
fn closed_port_first_call_with_default_settings() {
    let port = free_port();
    let s = RedisStore::new(&format!("redis://127.0.0.1:{port}/")).unwrap();
    let f = memo(
        &s,
        "refused-default",
        Duration::from_secs(60),
        Duration::ZERO,
    );
    let first = bounded("the first call", BOUND, move || timed(&f, 0));
    println!("closed port, default settings: first call {first:?}");
    assert!(first < Duration::from_millis(250) + SLACK, "{first:?}");
}

#[test]
fn wrong_password_is_an_authentication_error_not_a_timeout() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("secret")
        .query::<()>(&mut con)
        .unwrap();
    let url = format!("redis://:pw-XYZ123@127.0.0.1:{port}/");
    // The default op_timeout (250 ms): a refused password must not be taken for a timeout.
    let op = Duration::from_millis(250);
    let s = RedisStore::new(&url).unwrap();

    // The first read waits (at most op_timeout) for the first connection attempt; on a
    // starved machine that attempt may outlast it, so a Timeout is allowed once, not twice.
    let (mut out, mut took) = read_once(&s, "wrongpass");
    if matches!(&out, Err(e) if e.kind() == StoreErrorKind::Timeout) {
        std::thread::sleep(op);
        (out, took) = read_once(&s, "wrongpass");
    }
    let err = out.unwrap_err();
    println!("wrong password: one store read failed after {took:?}: {err}");
    assert_eq!(err.kind(), StoreErrorKind::Authentication, "{err}");
    assert!(s.stats().auth_failures.load(Ordering::SeqCst) >= 1);
    let text = err.to_string();
    assert!(
        text.contains(&format!("redis://:***@127.0.0.1:{port}")),
        "the message names the URL: {text}"
    );
    assert!(!text.contains("pw-XYZ123"), "{text}");
    assert!(took < op, "an auth failure waited {took:?}");

    let timeouts = s.stats().timeouts.load(Ordering::SeqCst);
    let f = memo(&s, "wrongpass", Duration::from_secs(60), Duration::ZERO);
    let worst = bounded("calls with a wrong password", BOUND, move || {
        (0..10).map(|k| timed(&f, k)).max().unwrap()
    });
    println!("wrong password: worst call {worst:?}");
    assert!(worst < op + SLACK, "{worst:?}");
    assert_eq!(
        s.stats().timeouts.load(Ordering::SeqCst),
        timeouts,
        "WRONGPASS is not a timeout"
    );
}

// =============================================================================================
// No call waits past op_timeout + its computation: SIGSTOP, SIGKILL + restart under load.
// =============================================================================================

/// Threads calling `f` over a few keys until stopped; the slowest call, and calls made.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    worst: Arc<Mutex<Duration>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(f: &Blocking, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let f = f.clone();
                let (stop, calls, worst, failures) =
                    (stop.clone(), calls.clone(), worst.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut n = t as u64;
                    while !stop.load(Ordering::SeqCst) {
                        let k = n % 8;
                        let t0 = Instant::now();
                        match f.get(&k) {
                            Ok(v) if v == value_of(&k) => {}
                            other => failures.lock().unwrap().push(format!("{k}: {other:?}")),
                        }
                        let took = t0.elapsed();
                        let mut w = worst.lock().unwrap();
                        *w = (*w).max(took);
                        drop(w);
                        calls.fetch_add(1, Ordering::SeqCst);
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            calls,
            worst,
            failures,
            threads,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Resets the slowest-call record (so a phase is measured on its own).
    fn take_worst(&self) -> Duration {
        std::mem::take(&mut *self.worst.lock().unwrap())
    }

    fn wait_calls(&self, what: &str, n: u64) {
        let from = self.calls();
        wait_until(what, BOUND, || self.calls() >= from + n);
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let threads = self.threads;
        bounded("the load threads", BOUND, move || {
            threads.into_iter().for_each(|t| t.join().unwrap())
        });
        let f = self.failures.lock().unwrap();
        f.clone()
    }
}

const COMPUTE: Duration = Duration::from_millis(5);

fn outage_store(url: &str, op: Duration) -> RedisStore {
    RedisStore::builder(url)
        .op_timeout(op)
        .circuit_breaker(3, Duration::from_millis(500))
        .build()
        .unwrap()
}

#[test]
fn hung_server_no_call_waits_past_op_timeout() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    // A long op_timeout: waiting twice as long as it for one store call, or paying it twice in
    // one call, exceeds the bound below.
    let op = Duration::from_secs(2);
    let s = outage_store(&server.url(), op);
    warm_up(&s, &mut server.raw(), 1);
    // A short TTL so that calls keep reading, locking and writing.
    let f = memo(&s, "stop", Duration::from_millis(200), COMPUTE);
    let load = Load::start(&f, 4);
    load.wait_calls("load before the pause", 100);
    let before = load.take_worst();

    server.pause();
    std::thread::sleep(op * 2 + Duration::from_secs(1));
    let during = load.take_worst();
    server.resume();
    load.wait_calls("load after the resume", 100);
    std::thread::sleep(Duration::from_millis(500));
    let after = load.take_worst();
    let failures = load.stop();

    let st = s.stats();
    println!(
        "SIGSTOP, op_timeout {op:?}, 4 threads: worst call before {before:?}, during {during:?}, \
         after {after:?}; timeouts {}, errors {}",
        st.timeouts.load(Ordering::SeqCst),
        st.errors.load(Ordering::SeqCst)
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(st.timeouts.load(Ordering::SeqCst) >= 1, "the hang was seen");
    let bound = op + COMPUTE + SLACK;
    assert!(
        during <= bound,
        "a call waited {during:?} (bound {bound:?})"
    );
    assert!(after <= bound, "a call waited {after:?} (bound {bound:?})");
}

#[test]
fn killed_and_restarted_server_under_load_no_call_waits_past_op_timeout() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let op = Duration::from_millis(500);
    let s = outage_store(&server.url(), op);
    warm_up(&s, &mut server.raw(), 1);
    let f = memo(&s, "kill", Duration::from_millis(200), COMPUTE);
    let load = Load::start(&f, 4);
    load.wait_calls("load before the kill", 100);
    let before = load.take_worst();

    server.kill();
    std::thread::sleep(Duration::from_millis(1000));
    let down = load.take_worst();
    server.restart();
    let mut con = support::raw(port);
    wait_until("the store to write to the restarted server", BOUND, || {
        (0..8u64).any(|k| exists(&mut con, &s.value_key("kill", &k)))
    });
    let restart = load.take_worst();
    load.wait_calls("load after the restart", 200);
    let after = load.take_worst();
    let failures = load.stop();

    let st = s.stats();
    println!(
        "SIGKILL + restart, op_timeout {op:?}, 4 threads: worst call before {before:?}, while \
         down {down:?}, until written again {restart:?}, after {after:?}; timeouts {}, errors {}",
        st.timeouts.load(Ordering::SeqCst),
        st.errors.load(Ordering::SeqCst)
    );
    assert!(failures.is_empty(), "{failures:?}");
    // A killed server closes its sockets and a closed port refuses at once: nothing to wait for.
    assert_eq!(
        st.timeouts.load(Ordering::SeqCst),
        0,
        "no call timed out (refusals and dropped connections are reported at once)"
    );
    let bound = op + COMPUTE + SLACK;
    for (phase, w) in [("down", down), ("restart", restart), ("after", after)] {
        assert!(w <= bound, "{phase}: a call waited {w:?} (bound {bound:?})");
    }
}

/// A caller waiting on another process's lock does not stack store timeouts once the server
/// hangs: it computes locally after at most one.
#[test]
fn remote_lock_waiter_computes_locally_once_the_server_hangs() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let op = Duration::from_secs(2);
    let s = outage_store(&server.url(), op);
    let mut con = server.raw();
    warm_up(&s, &mut con, 1);
    let f = memo(&s, "waiter", Duration::from_secs(60), COMPUTE);
    // "Another process" holds the lock of key 7 for a minute.
    let lock = support::lock_key(&s.value_key("waiter", &7u64));
    redis::cmd("SET")
        .arg(&lock)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut con)
        .unwrap();
    let g = f.clone();
    let caller = std::thread::spawn(move || {
        let v = g.get(&7).unwrap();
        (v, Instant::now())
    });
    wait_until("the caller to wait on the remote lock", BOUND, || {
        f.stats().remote_waits >= 1
    });
    std::thread::sleep(Duration::from_millis(50));
    server.pause();
    let paused = Instant::now();
    let (v, done) = bounded("the waiting caller", BOUND, move || caller.join().unwrap());
    let took = done.saturating_duration_since(paused);
    server.resume();
    println!("remote-lock waiter, op_timeout {op:?}: answered {took:?} after the pause");
    assert_eq!(v, value_of(&7));
    let bound = op + COMPUTE + SLACK;
    assert!(took <= bound, "the waiter took {took:?} (bound {bound:?})");
}

// =============================================================================================
// A blocking call on a worker thread of the runtime given to `RedisStoreBuilder::runtime`.
// =============================================================================================

/// How long a blocking call may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(10);

fn on_runtime(url: &str, handle: tokio::runtime::Handle) -> RedisStore {
    RedisStore::builder(url)
        .op_timeout(Duration::from_millis(500))
        .runtime(handle)
        .build()
        .unwrap()
}

/// What a blocking call made on the runtime's own worker saw: the value, the engine's store
/// errors, and the store's count of refused blocking calls.
type Seen = (String, u64, u64);

fn seen(v: String, f: &Blocking, s: &RedisStore) -> Seen {
    (
        v,
        f.stats().store_errors,
        s.stats().blocking_on_store_runtime.load(Ordering::SeqCst),
    )
}

#[test]
fn blocking_call_on_a_current_thread_store_runtime_errors_instead_of_hanging() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (v, store_errors, refused) =
        bounded("a blocking call on the runtime's thread", HANG, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let s = on_runtime(&url, rt.handle().clone());
            let f = memo(&s, "own-rt", Duration::from_secs(60), Duration::ZERO);
            let v = rt.block_on(async { f.get(&1).unwrap() });
            seen(v, &f, &s)
        });
    assert_eq!(v, value_of(&1), "computed locally instead of hanging");
    assert!(store_errors >= 1, "the engine saw the store error");
    assert!(
        refused >= 1,
        "counted in RedisStats::blocking_on_store_runtime"
    );
}

#[test]
fn blocking_call_on_the_only_worker_of_the_store_runtime_errors_instead_of_hanging() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (v, store_errors, refused) =
        bounded("a blocking call on the only worker", HANG, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let s = on_runtime(&url, rt.handle().clone());
            let f = memo(&s, "one-worker", Duration::from_secs(60), Duration::ZERO);
            let g = f.clone();
            let v = rt
                .block_on(rt.spawn(async move { g.get(&1).unwrap() }))
                .unwrap();
            seen(v, &f, &s)
        });
    assert_eq!(v, value_of(&1));
    assert!(store_errors >= 1);
    assert!(refused >= 1);
}

/// The fix the warning names works: the same blocking call in `spawn_blocking` on that runtime
/// uses Redis (no false alarm on the runtime's blocking threads).
#[test]
fn blocking_call_in_spawn_blocking_on_the_store_runtime_uses_redis() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let port = server.port();
    let (v, key, store_errors, refused) =
        bounded("a blocking call in spawn_blocking", HANG, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let s = on_runtime(&url, rt.handle().clone());
            let f = memo(
                &s,
                "spawn-blocking",
                Duration::from_secs(60),
                Duration::ZERO,
            );
            let g = f.clone();
            let v = rt
                .block_on(
                    async move { tokio::task::spawn_blocking(move || g.get(&1).unwrap()).await },
                )
                .unwrap();
            let (v, e, r) = seen(v, &f, &s);
            (v, s.value_key("spawn-blocking", &1u64), e, r)
        });
    assert_eq!(v, value_of(&1));
    assert_eq!(store_errors, 0);
    assert_eq!(refused, 0);
    assert!(
        exists(&mut support::raw(port), &key),
        "the value is in Redis"
    );
}

/// With several workers the blocked worker's freshly spawned task still waits for that worker
/// (Tokio runs a task spawned from a worker on that worker first), so it is refused too.
#[test]
fn blocking_call_on_a_worker_of_a_multi_worker_store_runtime_errors_instead_of_hanging() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (v, store_errors, refused) =
        bounded("a blocking call on one of 4 workers", HANG, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            let s = on_runtime(&url, rt.handle().clone());
            let f = memo(&s, "four-workers", Duration::from_secs(60), Duration::ZERO);
            let g = f.clone();
            let v = rt
                .block_on(rt.spawn(async move { g.get(&1).unwrap() }))
                .unwrap();
            seen(v, &f, &s)
        });
    assert_eq!(v, value_of(&1));
    assert!(store_errors >= 1);
    assert!(refused >= 1);
}

// =============================================================================================
// A waiter whose wait fails computes at once instead of asking again and again.
// =============================================================================================

/// A user that may run the scripts but not `EXISTS` (the one request of a wait): every wait
/// fails while the lock stays busy. The waiter computes instead of re-asking until its
/// patience runs out.
#[test]
fn remote_lock_waiter_computes_when_its_wait_fails() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    acl(
        &mut con,
        &["noexists", "on", ">pw", "~*", "&*", "+@all", "-exists"],
    );
    let s = RedisStore::builder(&format!("redis://noexists:pw@127.0.0.1:{port}/"))
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let f = memoize_stampede(&s, Duration::from_secs(60))
        .name("wait-fails")
        .contention(Contention::Wait(Duration::from_secs(5)))
        .build_blocking_infallible(|k: &u64| value_of(k))
        .unwrap();
    let lock = support::lock_key(&s.value_key("wait-fails", &7u64));
    redis::cmd("SET")
        .arg(&lock)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut con)
        .unwrap();
    let g = f.clone();
    let (out, took) = bounded("the waiting caller", BOUND, move || {
        let t = Instant::now();
        (g.get(&7), t.elapsed())
    });
    println!("remote-lock waiter whose wait fails: {out:?} after {took:?}");
    assert_eq!(out.unwrap(), value_of(&7), "computed instead of timing out");
    assert_eq!(f.stats().computations, 1);
}
