//! Distributed behaviour of the Redis store, against a private `redis-server` per test:
//! single-flight across OS processes, a holder killed or paused past its lease (lease lapse,
//! fencing), clock skew between engines, the round-trip budget of a hard miss and of a hit,
//! pub/sub wake-ups of remote waiters, and the barrier recipe across stores.
//!
//! Multi-process tests re-execute this test binary (`--exact <child test>`) with
//! `HERDLESS_CHILD_PORT`/`HERDLESS_CHILD_ROLE` set; the `child_*` tests return at once when run
//! as ordinary tests. Children report on stdout (`HERDLESS <tag> <payload>`).
//!
//! Computations that must "take long" block on a gate the test opens (a Tokio semaphore in
//! process, a `BLPOP` list across processes), so nothing depends on timing, and every wait is
//! bounded so that a bug fails the test instead of hanging it.

mod support;
use support::common::load;

use herdless::store::RedisStore;
use herdless::{barrier, memoize, memoize_stampede, Clock, Contention, Error, SystemClock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    bounded, channel_key, commandstats, commandstats_delta, exists, field_u64, fields, lock_key,
    raw, raw_with_timeout, redis_or_skip, report, wait_until, wait_until_async, warm_up, ChildEnv,
    ChildProc, BOUND,
};

const SEC: Duration = Duration::from_secs(1);

fn store(url: &str) -> RedisStore {
    // Generous timeouts: these tests are about coordination, not about a slow machine failing
    // open (which would legitimately compute twice).
    RedisStore::builder(url)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

// =============================================================================================
// 1. N processes × M tasks on a cold key: one computation in total.
// =============================================================================================

const PROCS: usize = 4;
const TASKS: usize = 8;

/// Child of [`cold_key_across_processes_computes_once`]: warms up, says READY, waits for the
/// parent's go (`BLPOP go`), then runs `HERDLESS_TASKS` Tokio tasks on the same cold key.
#[test]
fn child_cold_key() {
    let Some(env) = ChildEnv::get() else { return };
    let tasks: usize = env.var("HERDLESS_TASKS").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = env.port;
    let s = store(&env.url());
    warm_up(&s, &mut raw(port), 1);
    let runs = Arc::new(AtomicU64::new(0));
    let pid = std::process::id();
    let f = {
        let runs = runs.clone();
        memoize_stampede(&s, Duration::from_secs(60))
            .name("cold")
            .contention(Contention::Wait(BOUND))
            .build_infallible(move |k: String| {
                runs.fetch_add(1, Ordering::SeqCst);
                let v = format!("{k}@{pid}");
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    v
                }
            })
            .unwrap()
    };
    report("READY", pid);
    let mut con = raw_with_timeout(port, Duration::from_secs(30));
    let go: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("go")
        .arg(20)
        .query(&mut con)
        .unwrap();
    assert!(go.is_some(), "no go from the parent");
    let (ok, values) = rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.get(&"cold-key".to_string()).await })
            })
            .collect();
        let mut ok = 0;
        let mut values = Vec::new();
        for h in handles {
            match tokio::time::timeout(BOUND, h).await {
                Ok(Ok(Ok(v))) => {
                    ok += 1;
                    values.push(v);
                }
                other => values.push(format!("ERR:{other:?}").replace(' ', "_")),
            }
        }
        (ok, values)
    });
    let st = f.stats();
    report(
        "RESULT",
        format!(
            "runs={} ok={ok} computations={} hard_misses={} coalesced={} remote_waits={} store_errors={} values={}",
            load(&runs),
            st.computations,
            st.hard_misses,
            st.coalesced_waiters,
            st.remote_waits,
            st.store_errors,
            values.join("|")
        ),
    );
}

#[test]
fn cold_key_across_processes_computes_once() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut children: Vec<ChildProc> = (0..PROCS)
        .map(|_| {
            ChildProc::spawn(
                "child_cold_key",
                server.port(),
                "cold",
                &[("HERDLESS_TASKS", TASKS.to_string())],
            )
        })
        .collect();
    for c in &mut children {
        c.wait_report("READY", BOUND);
    }
    let mut con = server.raw();
    let _: i64 = redis::cmd("RPUSH")
        .arg("go")
        .arg(vec!["go"; PROCS])
        .query(&mut con)
        .unwrap();

    let mut runs = 0;
    let mut computations = 0;
    let mut remote_waits = 0;
    let mut values = HashSet::new();
    for c in &mut children {
        let r = fields(&c.wait_report("RESULT", BOUND));
        assert_eq!(
            field_u64(&r, "ok"),
            TASKS as u64,
            "every task got a value: {r:?}"
        );
        assert_eq!(field_u64(&r, "store_errors"), 0, "no store errors: {r:?}");
        assert_eq!(field_u64(&r, "hard_misses"), TASKS as u64, "{r:?}");
        runs += field_u64(&r, "runs");
        computations += field_u64(&r, "computations");
        remote_waits += field_u64(&r, "remote_waits");
        values.extend(r["values"].split('|').map(str::to_string));
        c.expect_success(BOUND);
    }
    assert_eq!(
        runs, 1,
        "the closure ran once across {PROCS} processes × {TASKS} tasks"
    );
    assert_eq!(computations, 1);
    assert!(
        remote_waits >= (PROCS - 1) as u64,
        "the other processes waited on the lock"
    );
    assert_eq!(
        values.len(),
        1,
        "every task of every process got the same value: {values:?}"
    );
    let v = values.into_iter().next().unwrap();
    assert!(v.starts_with("cold-key@"), "{v}");

    // The value is in Redis, readable by a fresh client without computing.
    let s = store(&server.url());
    assert!(exists(
        &mut con,
        &s.value_key("cold", &"cold-key".to_string())
    ));
    let reader = memoize_stampede(&s, Duration::from_secs(60))
        .name("cold")
        .build_blocking_infallible(|_k: &String| "recomputed".to_string())
        .unwrap();
    assert_eq!(reader.get(&"cold-key".to_string()).unwrap(), v);
    assert_eq!(reader.stats().computations, 0);
}

// =============================================================================================
// 2 & 3. A holder killed, or paused past its lease.
// =============================================================================================

const LEASE: Duration = Duration::from_millis(300);

/// Child of the holder tests: computes `HERDLESS_KEY` of `HERDLESS_NAME` with a 300 ms lease,
/// reports COMPUTING, then blocks until the parent pushes to `HERDLESS_RELEASE` (or is killed).
/// Reports the value it returned and its fencing counters.
#[test]
fn child_holder() {
    let Some(env) = ChildEnv::get() else { return };
    let port = env.port;
    let s = store(&env.url());
    warm_up(&s, &mut raw(port), 1);
    let release = env.var("HERDLESS_RELEASE");
    let pid = std::process::id();
    let f = memoize_stampede(&s, Duration::from_secs(60))
        .name(&env.var("HERDLESS_NAME"))
        .lease_bounds(LEASE, LEASE)
        .build_blocking_infallible(move |k: &String| {
            report("COMPUTING", k);
            // Poll an idempotent EXISTS (not BLPOP): SIGSTOP/SIGCONT interrupts a blocking read
            // (EINTR), and a retried EXISTS cannot lose the parent's signal.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "never released");
                let released = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut c| redis::cmd("EXISTS").arg(&release).query::<i64>(&mut c));
                if matches!(released, Ok(1)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            format!("child-{pid}")
        })
        .unwrap();
    let v = f.get(&env.var("HERDLESS_KEY")).unwrap();
    let st = f.stats();
    report(
        "RESULT",
        format!(
            "value={v} fenced={} store_fenced={} computations={}",
            st.fenced_writes,
            s.stats().fenced_writes.load(Ordering::SeqCst),
            st.computations
        ),
    );
}

fn counting(
    s: &RedisStore,
    name: &str,
    contention: Contention,
    value: &'static str,
) -> (
    herdless::Memoized<String, String, std::convert::Infallible, RedisStore>,
    Arc<AtomicU64>,
) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(s, Duration::from_secs(60))
        .name(name)
        .lease_bounds(LEASE, LEASE)
        .contention(contention)
        .build_infallible(move |_k: String| {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::ready(value.to_string())
        })
        .unwrap();
    (f, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_lease_lapses_and_a_waiter_computes() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let key = "k".to_string();
    let mut child = ChildProc::spawn(
        "child_holder",
        server.port(),
        "hold",
        &[
            ("HERDLESS_NAME", "killed".into()),
            ("HERDLESS_KEY", key.clone()),
            ("HERDLESS_RELEASE", "never".into()),
        ],
    );
    child.wait_report("COMPUTING", BOUND);
    let mut con = server.raw();
    let s = store(&server.url());
    warm_up(&s, &mut con, 2);
    let vkey = s.value_key("killed", &key);
    let lkey = lock_key(&vkey);
    assert!(
        exists(&mut con, &lkey),
        "the child holds the lock while it computes"
    );

    let (patient, patient_runs) = counting(
        &s,
        "killed",
        Contention::Wait(Duration::from_secs(10)),
        "parent",
    );
    let (impatient, impatient_runs) = counting(
        &s,
        "killed",
        Contention::Wait(Duration::from_millis(50)),
        "impatient",
    );

    let p = {
        let (patient, key) = (patient.clone(), key.clone());
        tokio::spawn(async move { patient.get(&key).await })
    };
    // A caller whose maximum wait is shorter than the holder's hold gives up with WaitTimeout:
    // it neither hangs nor computes.
    let r = tokio::time::timeout(BOUND, impatient.get(&key))
        .await
        .expect("impatient caller hung");
    assert!(
        matches!(r, Err(Error::WaitTimeout(d)) if d == Duration::from_millis(50)),
        "{r:?}"
    );
    assert_eq!(load(&impatient_runs), 0);

    wait_until_async(
        "the patient caller waits on the child's lock",
        BOUND,
        || patient.stats().remote_waits >= 1,
    )
    .await;
    assert!(
        exists(&mut con, &lkey),
        "the live child keeps renewing its lease"
    );
    assert_eq!(
        load(&patient_runs),
        0,
        "nobody computes while the holder is alive"
    );

    child.kill(); // SIGKILL mid-computation: no release, no more renewals.

    let v = tokio::time::timeout(BOUND, p)
        .await
        .expect("the waiter hung after the holder died")
        .unwrap();
    assert_eq!(
        v.unwrap(),
        "parent",
        "the waiter computed once the dead holder's lease lapsed"
    );
    assert_eq!(load(&patient_runs), 1);
    let st = patient.stats();
    assert_eq!(st.computations, 1);
    assert!(st.remote_waits >= 1);
    assert_eq!(st.errors, 0);

    // The stored value is the new computation's, and the lock is free.
    assert!(!exists(&mut con, &lkey));
    let fresh = store(&server.url());
    let (reader, reader_runs) = counting(&fresh, "killed", Contention::Wait(SEC), "reader");
    assert_eq!(reader.get(&key).await.unwrap(), "parent");
    assert_eq!(load(&reader_runs), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_is_fenced_and_the_newer_value_stays() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let key = "k".to_string();
    let mut child = ChildProc::spawn(
        "child_holder",
        server.port(),
        "pause",
        &[
            ("HERDLESS_NAME", "paused".into()),
            ("HERDLESS_KEY", key.clone()),
            ("HERDLESS_RELEASE", "release-paused".into()),
        ],
    );
    child.wait_report("COMPUTING", BOUND);
    let mut con = server.raw();
    let s = store(&server.url());
    warm_up(&s, &mut con, 2);
    let vkey = s.value_key("paused", &key);
    let lkey = lock_key(&vkey);
    assert!(
        exists(&mut con, &lkey),
        "the child holds the lock while it computes"
    );

    child.signal("STOP"); // the holder hangs: no renewals
    wait_until("the paused holder's lease to lapse", BOUND, || {
        !exists(&mut con, &lkey)
    });

    let (f, runs) = counting(
        &s,
        "paused",
        Contention::Wait(Duration::from_secs(10)),
        "parent",
    );
    let v = tokio::time::timeout(BOUND, f.get(&key))
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(v, "parent");
    assert_eq!(load(&runs), 1);
    assert_eq!(
        f.stats().fenced_writes,
        0,
        "the live lock owner's write lands"
    );
    assert!(exists(&mut con, &vkey));

    // The paused holder wakes up and finishes its (now stale) computation.
    child.signal("CONT");
    let _: () = redis::cmd("SET")
        .arg("release-paused")
        .arg("go")
        .query(&mut con)
        .unwrap();
    let r = fields(&child.wait_report("RESULT", BOUND));
    child.expect_success(BOUND);
    assert!(
        r["value"].starts_with("child-"),
        "the holder still answers its own caller: {r:?}"
    );
    assert_eq!(field_u64(&r, "computations"), 1, "{r:?}");
    assert_eq!(
        field_u64(&r, "fenced"),
        1,
        "the resumed holder's write was fenced: {r:?}"
    );
    assert_eq!(field_u64(&r, "store_fenced"), 1, "{r:?}");

    // Redis keeps the newer value.
    let fresh = store(&server.url());
    let (reader, reader_runs) = counting(&fresh, "paused", Contention::Wait(SEC), "reader");
    assert_eq!(reader.get(&key).await.unwrap(), "parent");
    assert_eq!(load(&reader_runs), 0);
    assert!(!exists(&mut con, &lkey));
}

/// A holder whose closure panics releases the distributed lock at once: a remote waiter takes
/// over although the lease is 30 s and the waiter gives up after 5 s. (A lease left to lapse
/// would make the waiter time out.) A holder whose *caller* is cancelled (its future dropped)
/// does not stop computing: the computation runs on detached, keeps the lock and stores its
/// value, which the remote waiter gets without computing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_or_panicking_holder_releases_the_lock_for_remote_waiters() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let (s1, s2) = (store(&server.url()), store(&server.url()));
    warm_up(&s1, &mut con, 1);
    warm_up(&s2, &mut con, 2);
    let long = Duration::from_secs(30);
    for case in ["cancelled", "panicked"] {
        let key = case.to_string();
        let lkey = lock_key(&s1.value_key("release", &key));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let holder = {
            let gate = gate.clone();
            memoize_stampede(&s1, Duration::from_secs(60))
                .name("release")
                .lease_bounds(long, long)
                .build(move |_k: String| {
                    let gate = gate.clone();
                    async move {
                        let _p = gate.acquire().await.unwrap();
                        if case == "panicked" {
                            panic!("the holder's closure panics (expected by the test)");
                        }
                        Ok::<_, std::convert::Infallible>("holder".to_string())
                    }
                })
                .unwrap()
        };
        let waiter = memoize_stampede(&s2, Duration::from_secs(60))
            .name("release")
            .lease_bounds(long, long)
            .contention(Contention::Wait(Duration::from_secs(5)))
            .build_infallible(|_k: String| std::future::ready("waiter".to_string()))
            .unwrap();
        let h = {
            let (holder, key) = (holder.clone(), key.clone());
            tokio::spawn(async move { holder.get(&key).await })
        };
        wait_until("the holder to take the lock", BOUND, || {
            exists(&mut con, &lkey)
        });
        let w = {
            let (waiter, key) = (waiter.clone(), key.clone());
            tokio::spawn(async move { waiter.get(&key).await })
        };
        wait_until_async("the remote waiter to wait", BOUND, || {
            waiter.stats().remote_waits >= 1
        })
        .await;
        if case == "cancelled" {
            h.abort();
            assert!(h.await.unwrap_err().is_cancelled());
            gate.add_permits(1); // the detached computation finishes
        } else {
            gate.add_permits(1);
            assert!(h.await.unwrap_err().is_panic());
        }
        let got = tokio::time::timeout(BOUND, w)
            .await
            .expect("the waiter hung")
            .unwrap();
        let (want, computed) = match case {
            "cancelled" => ("holder", 0), // the holder's computation answered
            _ => ("waiter", 1),           // the remote waiter took over
        };
        assert_eq!(got.unwrap(), want, "{case}");
        assert_eq!(waiter.stats().computations, computed, "{case}");
        let fresh = store(&server.url());
        let (reader, runs) = counting(&fresh, "release", Contention::Wait(SEC), "reader");
        assert_eq!(reader.get(&key).await.unwrap(), want, "{case}");
        assert_eq!(load(&runs), 0);
    }
}

// =============================================================================================
// 6. Clock skew.
// =============================================================================================

/// The system clock shifted by a fixed offset (±5 s around a 10 s base so it never underflows).
struct Skewed {
    base: SystemClock,
    offset_ns: u64,
}

impl Clock for Skewed {
    fn now(&self) -> u64 {
        self.base.now() + self.offset_ns
    }
    fn recent(&self) -> u64 {
        self.base.recent() + self.offset_ns
    }
    fn recent_lag(&self) -> u64 {
        self.base.recent_lag()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_neither_stampedes_early_nor_serves_past_expiry() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    const TTL: Duration = Duration::from_secs(4);
    let mut con = server.raw();
    let version = Arc::new(AtomicU64::new(0));
    let key = "page".to_string();
    // Three "hosts": exact, 5 s ahead, 5 s behind; each with its own store (connection).
    let hosts: Vec<_> = [10u64, 15, 5]
        .into_iter()
        .map(|secs| {
            let s = store(&server.url());
            let v = version.clone();
            let f = memoize_stampede(&s, TTL)
                .name("skew")
                .beta(1.0)
                .clock(Skewed {
                    base: SystemClock::new(),
                    offset_ns: secs * 1_000_000_000,
                })
                .contention(Contention::Wait(BOUND))
                .build_infallible(move |_k: String| {
                    let n = v.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        // delta ≈ 10 ms: XFetch's reach (δ·β·E_MAX) is well under the TTL.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        format!("v{n}")
                    }
                })
                .unwrap();
            (s, f)
        })
        .collect();
    for (s, _) in &hosts {
        warm_up(s, &mut con, 0);
    }
    let (writer, ahead, behind) = (&hosts[0].1, &hosts[1].1, &hosts[2].1);
    assert_eq!(writer.get(&key).await.unwrap(), "v1");

    // While most of the TTL is left, nobody refreshes early and nobody sees a miss, whatever
    // its clock says.
    let vkey = hosts[0].0.value_key("skew", &key);
    for _ in 0..100 {
        for f in [writer, ahead, behind] {
            assert_eq!(f.get(&key).await.unwrap(), "v1");
        }
    }
    let pttl: i64 = redis::cmd("PTTL").arg(&vkey).query(&mut con).unwrap();
    assert!(
        pttl > 1500,
        "the checks above ran with most of the TTL left (pttl {pttl} ms)"
    );
    for (i, f) in [writer, ahead, behind].into_iter().enumerate() {
        let st = f.stats();
        assert_eq!(
            st.early_refreshes_started, 0,
            "host {i} refreshed early: {st:?}"
        );
        assert_eq!(
            st.hard_misses,
            if i == 0 { 1 } else { 0 },
            "host {i}: {st:?}"
        );
    }
    assert_eq!(load(&version), 1);

    // Once the TTL has passed in real time (the key is gone from Redis), nobody serves v1: not
    // even the host whose clock is 5 s behind.
    wait_until("the value to expire in Redis", TTL + BOUND, || {
        !exists(&mut con, &vkey)
    });
    assert_eq!(behind.get(&key).await.unwrap(), "v2");
    assert_eq!(ahead.get(&key).await.unwrap(), "v2");
    assert_eq!(writer.get(&key).await.unwrap(), "v2");
    assert_eq!(load(&version), 2, "one recomputation after expiry");
}

// =============================================================================================
// 7. Round trips: a hard miss by the lock winner costs 3, a hit costs 1.
// =============================================================================================

fn expect_map(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Commands sent by the client itself (not from inside a Lua script).
fn top_level(delta: &HashMap<String, u64>) -> u64 {
    // Every herdless request is a script (EVALSHA, or EVAL/SCRIPT LOAD on NOSCRIPT) except the
    // read (one GETRANGE, issue 23), the plain SET of a lock-less write and the EXISTS of a
    // waiter; the last two do not occur here, so a change in them shows up in the exact map
    // comparison below.
    [
        "getrange",
        "evalsha",
        "eval",
        "evalsha_ro",
        "eval_ro",
        "script|load",
        "exists",
    ]
    .iter()
    .map(|k| delta.get(*k).copied().unwrap_or(0))
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_hard_miss_three_hit_one() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = store(&server.url());
    warm_up(&s, &mut con, 1); // connects and loads the scripts
    let f = memoize_stampede(&s, Duration::from_secs(60))
        .name("rt")
        .beta(1.0) // fixed: automatic β would also count the fleet (a heartbeat every 5 s)
        .build_infallible(|k: String| std::future::ready(format!("v-{k}")))
        .unwrap();
    let b = memoize_stampede(&s, Duration::from_secs(60))
        .name("rt-blocking")
        .beta(1.0)
        .build_blocking_infallible(|k: &String| format!("b-{k}"))
        .unwrap();
    let rt = || s.stats().round_trips.load(Ordering::SeqCst);
    // Each function reads its generation once (the first call of a function in a process).
    assert_eq!(f.get(&"prime".to_string()).await.unwrap(), "v-prime");
    assert_eq!(b.get(&"prime".to_string()).unwrap(), "b-prime");

    // Script bodies run GET/SET/... that INFO counts under their own names: the expected
    // deltas spell out every command, top-level and scripted.
    let hard_miss = expect_map(&[
        ("getrange", 1), // the read: one plain command, bounded by max_value_bytes
        ("evalsha", 2),  // LOCK_OR_GET, WRITE
        ("type", 1),     // LOCK_OR_GET
        ("set", 3),      // the lock (NX PX), the new version counter, the value (PX)
        ("time", 2),     // the new version counter; the record's expiry (server clock)
        ("get", 3),      // the version (ticket); the owner and version checks before the write
        ("del", 1),      // release
        ("incr", 1),     // the write bumps the version
        ("pexpire", 1),  // ... and keeps it
        ("publish", 1),  // wake-up
    ]);
    let hit = expect_map(&[("getrange", 1)]);

    for (i, k) in ["cold-1", "cold-2"].into_iter().enumerate() {
        let k = k.to_string();
        // Async facade.
        let (before, rt0) = (commandstats(&mut con), rt());
        assert_eq!(f.get(&k).await.unwrap(), format!("v-{k}"));
        let (d, n) = (
            commandstats_delta(&before, &commandstats(&mut con)),
            rt() - rt0,
        );
        assert_eq!(n, 3, "hard miss #{i}: round trips counted by the store");
        assert_eq!(
            top_level(&d),
            3,
            "hard miss #{i}: requests seen by the server: {d:?}"
        );
        assert_eq!(d, hard_miss, "hard miss #{i}: commands seen by the server");

        let (before, rt0) = (commandstats(&mut con), rt());
        assert_eq!(f.get(&k).await.unwrap(), format!("v-{k}"));
        let (d, n) = (
            commandstats_delta(&before, &commandstats(&mut con)),
            rt() - rt0,
        );
        assert_eq!(n, 1, "hit #{i}: round trips");
        assert_eq!(top_level(&d), 1, "hit #{i}: {d:?}");
        assert_eq!(d, hit, "hit #{i}: commands seen by the server");

        // Blocking facade: the same engine, the same budget.
        let (before, rt0) = (commandstats(&mut con), rt());
        assert_eq!(b.get(&k).unwrap(), format!("b-{k}"));
        let (d, n) = (
            commandstats_delta(&before, &commandstats(&mut con)),
            rt() - rt0,
        );
        assert_eq!((n, &d), (3, &hard_miss), "blocking hard miss #{i}");
        let (before, rt0) = (commandstats(&mut con), rt());
        assert_eq!(b.get(&k).unwrap(), format!("b-{k}"));
        let (d, n) = (
            commandstats_delta(&before, &commandstats(&mut con)),
            rt() - rt0,
        );
        assert_eq!((n, &d), (1, &hit), "blocking hit #{i}");
    }
    let st = f.stats();
    assert_eq!(
        (st.calls, st.hits, st.hard_misses, st.computations),
        (5, 2, 3, 3)
    );
}

// =============================================================================================
// 8. Pub/sub wake-up of a waiter on another store (connection).
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_wakes_a_remote_waiter_with_the_winners_value() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let (s1, s2) = (store(&server.url()), store(&server.url()));
    warm_up(&s1, &mut con, 1);
    warm_up(&s2, &mut con, 2); // both stores' pattern subscriptions are live
    let key = "k".to_string();
    let vkey = s1.value_key("ps", &key);
    let (lkey, chan) = (lock_key(&vkey), channel_key(&vkey));

    // An observer subscribed like the stores are: proves the winner publishes on the waiter's
    // channel and that the stores' pattern covers it.
    let observer = {
        let mut sub_con = raw_with_timeout(server.port(), Duration::from_secs(30));
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, Vec<u8>)>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ps = sub_con.as_pubsub();
            ps.psubscribe("herdless:{*}:c").unwrap();
            ps.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            ready_tx.send(()).unwrap();
            while let Ok(msg) = ps.get_message() {
                let chan: Vec<u8> = msg.get_channel().unwrap();
                let payload: Vec<u8> = msg.get_payload().unwrap();
                if tx.send((chan, payload)).is_err() {
                    return;
                }
            }
        });
        ready_rx.recv_timeout(BOUND).expect("observer subscribed");
        rx
    };

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let winner = {
        let gate = gate.clone();
        memoize_stampede(&s1, Duration::from_secs(60))
            .name("ps")
            .build_infallible(move |_k: String| {
                let gate = gate.clone();
                async move {
                    let _p = gate.acquire().await.unwrap();
                    "winner".to_string()
                }
            })
            .unwrap()
    };
    let waiter_runs = Arc::new(AtomicU64::new(0));
    let waiter = {
        let r = waiter_runs.clone();
        memoize_stampede(&s2, Duration::from_secs(60))
            .name("ps")
            .contention(Contention::Wait(BOUND))
            .build_infallible(move |_k: String| {
                r.fetch_add(1, Ordering::SeqCst);
                std::future::ready("waiter".to_string())
            })
            .unwrap()
    };

    let w = {
        let winner = winner.clone();
        let key = key.clone();
        tokio::spawn(async move { winner.get(&key).await })
    };
    let mut probe = raw(server.port());
    wait_until_async("the winner to hold the lock", BOUND, || {
        exists(&mut probe, &lkey)
    })
    .await;

    let rt2 = || s2.stats().round_trips.load(Ordering::SeqCst);
    let rt_start = rt2();
    let started = Instant::now();
    let r = {
        let waiter = waiter.clone();
        let key = key.clone();
        tokio::spawn(async move { waiter.get(&key).await })
    };
    wait_until_async("the waiter to wait on the remote lock", BOUND, || {
        waiter.stats().remote_waits >= 1
    })
    .await;
    // Let its poll interval grow to the cap: 1 read + 8 × (lock_or_get + EXISTS re-check).
    wait_until_async("the waiter's backoff to grow", BOUND, || {
        rt2() - rt_start >= 17
    })
    .await;

    let rt_release = rt2();
    gate.add_permits(1);
    let got = tokio::time::timeout(BOUND, r)
        .await
        .expect("the waiter hung")
        .unwrap();
    let waited = started.elapsed();
    let rt_after = rt2() - rt_release;
    let rt_total = rt2() - rt_start;

    assert_eq!(
        got.unwrap(),
        "winner",
        "the waiter returns the winner's value"
    );
    assert_eq!(
        tokio::time::timeout(BOUND, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        "winner"
    );
    let st = waiter.stats();
    assert_eq!(load(&waiter_runs), 0, "the waiter never computed");
    assert_eq!(st.computations, 0);
    assert!(st.remote_waits >= 1, "{st:?}");
    assert_eq!(st.errors, 0);
    // After the publish the waiter needs one request (lock_or_get finds the value), plus at
    // most the two of a poll that was already under way.
    assert!(
        rt_after <= 3,
        "round trips after the winner's write: {rt_after}"
    );
    // It polls with backoff, never spins: at most one poll per jittered 2, 4, … 100 ms step.
    let steps = 7 + waited.as_millis() as u64 / 75;
    assert!(
        rt_total <= 1 + 2 * steps + 3,
        "{rt_total} round trips in {waited:?}"
    );

    let (ch, payload) = observer.recv_timeout(BOUND).expect("the winner published");
    assert_eq!(ch, chan, "published on the key's channel");
    assert_eq!(payload, b"1", "a 'value written' notification");
    println!("pub/sub wake-up: waiter waited {waited:?}, {rt_total} round trips");
}

// =============================================================================================
// The barrier recipe across two stores (two "processes"), with threads.
// =============================================================================================

#[test]
fn barrier_recipe_across_two_stores_computes_once() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let runs = Arc::new(AtomicU64::new(0));
    // memoize(0) ∘ barrier(store.lock("f")) ∘ memoize(ttl), once per store.
    let stacks: Vec<_> = (0..2)
        .map(|i| {
            let s = store(&server.url());
            warm_up(&s, &mut con, i + 1);
            let r = runs.clone();
            let inner = memoize(&s, Duration::from_secs(60))
                .name("f")
                .build_blocking_infallible(move |k: &String| {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    std::thread::sleep(Duration::from_millis(200));
                    format!("{k}#{n}")
                })
                .unwrap();
            let locked = barrier(s.lock("f")).wrap_blocking(inner);
            memoize(&s, Duration::ZERO)
                .name("f")
                .wrap_blocking(locked)
                .unwrap()
        })
        .collect();
    const THREADS: usize = 4;
    let start = Arc::new(std::sync::Barrier::new(2 * THREADS));
    let values = bounded("the barrier callers", BOUND, move || {
        let handles: Vec<_> = stacks
            .iter()
            .flat_map(|f| (0..THREADS).map(move |_| f.clone()))
            .map(|f| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    f.get(&"page".to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for v in &values {
        assert_eq!(v.as_ref().unwrap(), "page#1", "{values:?}");
    }
    assert_eq!(
        load(&runs),
        1,
        "one computation across two stores × {THREADS} threads"
    );
    let s = store(&server.url());
    assert!(exists(&mut con, &s.value_key("f", &"page".to_string())));
}
