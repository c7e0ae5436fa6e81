//! Faults of the Redis store, against a private `redis-server` per test: the server killed
//! mid-load and restarted on the same port, a hung server (SIGSTOP), a server that is down when
//! the store is built, and untrusted bytes at a value key (garbage, truncated, foreign,
//! oversized, wrong Redis type).
//!
//! The contract under test (the failure semantics in the README and `paper-notes.md`): a store outage never becomes an
//! outage of the caller (compute locally, count it, recover by itself), every remote call has a
//! timeout and a circuit breaker stops paying them, and bytes from the store are a miss when
//! they are not a well-formed record of ours, never a panic. Every wait is bounded.

mod support;
use support::common::load;

use herdless::store::RedisStore;
use herdless::{memoize_stampede, BlockingMemoized, Contention};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{bounded, exists, redis_or_skip, wait_until, warm_up, BOUND};

const MAGIC: &[u8] = b"HL\x02";

/// A store that gives up quickly: short timeouts, a breaker that trips fast and re-probes soon.
fn impatient_store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .op_timeout(Duration::from_millis(150))
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .unwrap()
}

type Blocking<K> = BlockingMemoized<K, String, Infallible, RedisStore>;

fn value_of(k: &u64) -> String {
    format!("val-{k}")
}

/// A blocking memoized `value_of` that counts its runs.
fn counted(s: &RedisStore, name: &str, ttl: Duration) -> (Blocking<u64>, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(s, ttl)
        .name(name)
        .contention(Contention::Wait(BOUND))
        .build_blocking_infallible(move |k: &u64| {
            r.fetch_add(1, Ordering::SeqCst);
            value_of(k)
        })
        .unwrap();
    (f, runs)
}

/// Calls fresh keys until one lands in Redis (the store is back), bounded. Returns the key.
fn wait_recovered(f: &Blocking<u64>, s: &RedisStore, port: u16, from: u64) -> u64 {
    let mut k = from;
    let mut con: Option<redis::Connection> = None;
    wait_until("the store to write to the server again", BOUND, || {
        k += 1;
        assert_eq!(
            f.get(&k).unwrap(),
            value_of(&k),
            "fail-open answers while recovering"
        );
        let c = con.get_or_insert_with(|| support::raw(port));
        exists(c, &s.value_key(f.name(), &k))
    });
    k
}

// =============================================================================================
// 4. Server killed mid-load, restarted on the same port.
// =============================================================================================

#[test]
fn server_killed_mid_load_fails_open_and_single_flight_resumes_after_restart() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    // Two stores = two independent clients ("processes"), neither restarted during the test.
    let stores = [impatient_store(&url), impatient_store(&url)];
    warm_up(&stores[0], &mut con, 1);
    warm_up(&stores[1], &mut con, 2);
    drop(con);
    let engines: Vec<_> = (0..2)
        .map(|i| counted(&stores[i], &format!("load{i}"), Duration::from_millis(500)).0)
        .collect();

    // Load: one thread per store cycling over 16 keys (TTL 500 ms, so the store keeps being
    // asked); every answer is checked.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = engines
        .iter()
        .cloned()
        .map(|f| {
            let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let k = n % 16;
                    match f.get(&k) {
                        Ok(v) if v == value_of(&k) => {}
                        other => failures.lock().unwrap().push(format!("{k}: {other:?}")),
                    }
                    calls.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
            })
        })
        .collect();
    let at = |n: u64| {
        let c = calls.clone();
        move || load(&c) >= n
    };
    wait_until("load before the kill", BOUND, at(200));

    server.kill();
    let before = load(&calls);
    wait_until("load during the outage", BOUND, at(before + 200));
    wait_until("both breakers to open", BOUND, || {
        stores
            .iter()
            .all(|s| s.stats().circuit_opens.load(Ordering::SeqCst) >= 1)
    });
    let during = load(&calls) - before;

    server.restart(); // same port, empty, no scripts loaded
    let mut con = server.raw();
    wait_until(
        "both clients to write to the restarted server",
        BOUND,
        || {
            (0..2).all(|i| {
                (0..16u64).any(|k| exists(&mut con, &stores[i].value_key(&format!("load{i}"), &k)))
            })
        },
    );
    // Both stores' pattern subscriptions come back by themselves too (wake-ups resume).
    wait_until("both pub/sub subscriptions to come back", BOUND, || {
        support::pubsub_clients(&mut con) >= 2
    });
    let after = load(&calls);
    wait_until("load after the restart", BOUND, at(after + 100));
    stop.store(true, Ordering::SeqCst);
    bounded("the load threads", BOUND, move || {
        workers.into_iter().for_each(|w| w.join().unwrap())
    });

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "calls failed during the outage: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        during >= 200,
        "calls kept being answered while the server was down"
    );
    for (i, s) in stores.iter().enumerate() {
        let st = s.stats();
        assert!(
            st.errors.load(Ordering::SeqCst) >= 1,
            "store {i} counted the outage"
        );
        assert!(
            st.rejected_open.load(Ordering::SeqCst) >= 1,
            "store {i}'s breaker refused calls"
        );
        let e = engines[i].stats();
        assert!(
            e.store_errors >= 1,
            "engine {i} counted store errors: {e:?}"
        );
    }

    // Distributed single-flight works again, with the same clients: 2 stores × 3 threads on a
    // cold key compute it once, and the value is in Redis.
    let runs = Arc::new(AtomicU64::new(0));
    let cold: Vec<Blocking<String>> = stores
        .iter()
        .map(|s| {
            let r = runs.clone();
            memoize_stampede(s, Duration::from_secs(60))
                .name("after-restart")
                .contention(Contention::Wait(BOUND))
                .build_blocking_infallible(move |k: &String| {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    std::thread::sleep(Duration::from_millis(300));
                    format!("{k}#{n}")
                })
                .unwrap()
        })
        .collect();
    let start = Arc::new(std::sync::Barrier::new(6));
    let values = bounded("the cold-key callers", BOUND, move || {
        let hs: Vec<_> = cold
            .iter()
            .flat_map(|f| (0..3).map(move |_| f.clone()))
            .map(|f| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    f.get(&"cold".to_string())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for v in &values {
        assert_eq!(v.as_ref().unwrap(), "cold#1", "{values:?}");
    }
    assert_eq!(
        load(&runs),
        1,
        "one computation across both clients after the restart"
    );
    assert!(exists(
        &mut con,
        &stores[0].value_key("after-restart", &"cold".to_string())
    ));
}

// =============================================================================================
// 4b. A hung server (SIGSTOP): timeouts, breaker, then recovery on SIGCONT.
// =============================================================================================

#[test]
fn hung_server_times_out_opens_the_breaker_and_recovers() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let s = RedisStore::builder(&server.url())
        .op_timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_millis(300))
        .build()
        .unwrap();
    warm_up(&s, &mut server.raw(), 1);
    let (f, runs) = counted(&s, "hung", Duration::from_secs(60));
    assert_eq!(f.get(&0).unwrap(), value_of(&0));
    assert_eq!(load(&runs), 1);

    server.pause();
    let g = f.clone();
    bounded("calls against a hung server", BOUND, move || {
        for k in 1..=10 {
            assert_eq!(
                g.get(&k).unwrap(),
                value_of(&k),
                "fail-open answer while hung"
            );
        }
    });
    let st = s.stats();
    let (timeouts, opens, rejected) = (
        st.timeouts.load(Ordering::SeqCst),
        st.circuit_opens.load(Ordering::SeqCst),
        st.rejected_open.load(Ordering::SeqCst),
    );
    assert!(timeouts >= 1, "calls to a hung server time out");
    assert!(opens >= 1, "the breaker opened");
    assert!(
        rejected >= 1,
        "the open breaker refused calls instead of paying timeouts"
    );
    assert!(s.circuit_open());
    assert!(f.stats().store_errors >= 1);
    assert_eq!(load(&runs), 11, "each fresh key was computed locally once");

    server.resume();
    let g = f.clone();
    let s2 = s.clone();
    bounded("recovery", BOUND + BOUND, move || {
        wait_recovered(&g, &s2, port, 100)
    });
    assert!(!s.circuit_open(), "the breaker closed again");
    // The value written before the hang is served from Redis again.
    let r = load(&runs);
    assert_eq!(f.get(&0).unwrap(), value_of(&0));
    assert_eq!(load(&runs), r, "a hit, not a recomputation");
}

#[test]
fn server_down_at_build_time_fails_open_then_connects_by_itself() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    server.kill();
    let s = impatient_store(&server.url()); // not an error: it connects in the background
    let (f, runs) = counted(&s, "late", Duration::from_secs(60));
    let g = f.clone();
    bounded("calls with no server", BOUND, move || {
        for k in 0..5 {
            assert_eq!(g.get(&k).unwrap(), value_of(&k));
        }
    });
    assert_eq!(load(&runs), 5);
    assert!(s.stats().errors.load(Ordering::SeqCst) >= 1);
    server.restart();
    let g = f.clone();
    let s2 = s.clone();
    let k = bounded("recovery", BOUND + BOUND, move || {
        wait_recovered(&g, &s2, port, 100)
    });
    let r = load(&runs);
    assert_eq!(f.get(&k).unwrap(), value_of(&k));
    assert_eq!(load(&runs), r, "served from Redis");
}

// =============================================================================================
// 5. Untrusted bytes at the value key.
// =============================================================================================

/// How a value key is spoiled before the first read.
enum Spoil {
    /// `SET key bytes [PX 60000]`
    Bytes(&'static [u8], bool),
    /// `RPUSH key a b`
    List,
    /// `HSET key f v`
    Hash,
}

fn spoil(con: &mut redis::Connection, key: &[u8], how: &Spoil) {
    match how {
        Spoil::Bytes(b, ttl) => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(*b);
            if *ttl {
                c.arg("PX").arg(60_000);
            }
            let _: () = c.query(con).unwrap();
        }
        Spoil::List => {
            let _: i64 = redis::cmd("RPUSH")
                .arg(key)
                .arg("a")
                .arg("b")
                .query(con)
                .unwrap();
        }
        Spoil::Hash => {
            let _: i64 = redis::cmd("HSET")
                .arg(key)
                .arg("f")
                .arg("v")
                .query(con)
                .unwrap();
        }
    }
}

fn redis_type(con: &mut redis::Connection, key: &[u8]) -> String {
    redis::cmd("TYPE").arg(key).query(con).unwrap()
}

/// Checks that the key now holds a herdless record of `value` with a TTL.
fn assert_overwritten(con: &mut redis::Connection, key: &[u8], value: &str, case: &str) {
    assert_eq!(
        redis_type(con, key),
        "string",
        "{case}: overwritten with a string"
    );
    let bytes: Vec<u8> = redis::cmd("GET").arg(key).query(con).unwrap();
    assert!(
        bytes.starts_with(MAGIC),
        "{case}: a herdless record now: {bytes:?}"
    );
    assert!(
        bytes.windows(value.len()).any(|w| w == value.as_bytes()),
        "{case}: the record holds the fresh value"
    );
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(con).unwrap();
    assert!(pttl > 0, "{case}: with a TTL (pttl {pttl})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_bytes_at_the_value_key_are_a_miss_and_get_overwritten() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = RedisStore::builder(&server.url())
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    warm_up(&s, &mut con, 1);
    let runs = Arc::new(AtomicU64::new(0));
    let f = {
        let r = runs.clone();
        memoize_stampede(&s, Duration::from_secs(60))
            .name("g")
            .build_infallible(move |k: String| {
                r.fetch_add(1, Ordering::SeqCst);
                std::future::ready(format!("fresh-{k}"))
            })
            .unwrap()
    };
    let cases: &[(&str, Spoil)] = &[
        (
            "garbage",
            Spoil::Bytes(b"\x00\xffnot a record at all", true),
        ),
        (
            "garbage-no-ttl",
            Spoil::Bytes(b"\x00\xffnot a record at all", false),
        ),
        ("empty", Spoil::Bytes(b"", true)),
        ("magic-only", Spoil::Bytes(b"HL\x02", true)),
        (
            "truncated",
            Spoil::Bytes(b"HL\x029999999999999999\x92\xcd\x01", true),
        ),
        (
            "truncated-junk",
            Spoil::Bytes(b"HL\x029999999999999999\xc1\xc1\xc1junk", true),
        ),
        // Well-formed framing, wrong payload type: (5, 42) where (u64, String) is expected.
        (
            "foreign-payload",
            Spoil::Bytes(b"HL\x029999999999999999\x92\x05\x2a", true),
        ),
        // Not an expiry where the expiry belongs.
        (
            "bad-expiry",
            Spoil::Bytes(b"HL\x02not-an-expiry!!\x92\x05\xa1x", true),
        ),
        // A later version's record: (5, "x") under version 3.
        ("other-version", Spoil::Bytes(b"HL\x03\x92\x05\xa1x", true)),
        ("no-magic", Spoil::Bytes(b"\x92\x05\xa1x", true)),
        ("list", Spoil::List),
        ("hash", Spoil::Hash),
    ];
    for (case, how) in cases {
        let key = case.to_string();
        let vkey = s.value_key("g", &key);
        spoil(&mut con, &vkey, how);
        let (decode0, runs0) = (s.stats().decode_errors.load(Ordering::SeqCst), load(&runs));
        let got = tokio::time::timeout(BOUND, f.get(&key))
            .await
            .expect("hung");
        assert_eq!(
            got.unwrap(),
            format!("fresh-{key}"),
            "{case}: a miss, computed"
        );
        assert_eq!(load(&runs), runs0 + 1, "{case}: computed once");
        let decode1 = s.stats().decode_errors.load(Ordering::SeqCst);
        assert!(decode1 > decode0, "{case}: counted as a decode error");
        assert_overwritten(&mut con, &vkey, &format!("fresh-{key}"), case);
        // And now it is a plain hit.
        assert_eq!(f.get(&key).await.unwrap(), format!("fresh-{key}"));
        assert_eq!(load(&runs), runs0 + 1, "{case}: the overwrite is read back");
        assert_eq!(
            s.stats().decode_errors.load(Ordering::SeqCst),
            decode1,
            "{case}: no new decode error"
        );
    }
    let st = f.stats();
    assert_eq!(st.errors, 0);
    assert_eq!(
        st.store_errors, 0,
        "undecodable data is not a store failure"
    );
    assert_eq!(s.stats().errors.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_is_a_miss_and_gets_overwritten() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let url = server.url();
    let big = RedisStore::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let small = RedisStore::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .max_value_bytes(64)
        .build()
        .unwrap();
    warm_up(&big, &mut con, 1);
    warm_up(&small, &mut con, 2);
    let key = "k".to_string();
    let writer = memoize_stampede(&big, Duration::from_secs(60))
        .name("o")
        .build_infallible(|_k: String| std::future::ready("x".repeat(200)))
        .unwrap();
    assert_eq!(writer.get(&key).await.unwrap().len(), 200);
    let runs = Arc::new(AtomicU64::new(0));
    let reader = {
        let r = runs.clone();
        memoize_stampede(&small, Duration::from_secs(60))
            .name("o")
            .build_infallible(move |_k: String| {
                r.fetch_add(1, Ordering::SeqCst);
                std::future::ready("small".to_string())
            })
            .unwrap()
    };
    let got = tokio::time::timeout(BOUND, reader.get(&key))
        .await
        .expect("hung");
    assert_eq!(
        got.unwrap(),
        "small",
        "a record over max_value_bytes is a miss"
    );
    assert_eq!(load(&runs), 1);
    assert!(small.stats().decode_errors.load(Ordering::SeqCst) >= 1);
    assert_eq!(big.stats().decode_errors.load(Ordering::SeqCst), 0);
    let vkey = small.value_key("o", &key);
    assert_overwritten(&mut con, &vkey, "small", "oversized");
    assert_eq!(reader.get(&key).await.unwrap(), "small");
    assert_eq!(load(&runs), 1, "the overwrite (small enough) is read back");
}

// =============================================================================================
// The circuit breaker's half-open probe, cancelled by its caller.
// =============================================================================================

/// An async caller may be cancelled at any await (a client disconnect drops the handler, a
/// `select!`, a `timeout`). If the cancelled call happened to be the breaker's half-open probe,
/// the breaker must still be able to probe again later, or the store never recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_probe_does_not_wedge_the_breaker_open() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = RedisStore::builder(&server.url())
        .op_timeout(Duration::from_millis(100))
        .circuit_breaker(1, Duration::from_millis(200))
        .build()
        .unwrap();
    warm_up(&s, &mut con, 1);
    let f = memoize_stampede(&s, Duration::from_secs(60))
        .name("probe")
        .build_infallible(|k: u64| std::future::ready(value_of(&k)))
        .unwrap();

    server.pause();
    assert_eq!(
        f.get(&1).await.unwrap(),
        value_of(&1),
        "fail-open while hung"
    );
    assert!(s.circuit_open(), "one failure opens this breaker");
    let opens = s.stats().circuit_opens.load(Ordering::SeqCst);
    // Wait out the cooldown: the next call is let through as the probe (it then hangs).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rt0 = s.stats().round_trips.load(Ordering::SeqCst);
    let probe = {
        let f = f.clone();
        tokio::spawn(async move { f.get(&2).await })
    };
    support::wait_until_async("the probe to be sent", BOUND, || {
        s.stats().round_trips.load(Ordering::SeqCst) > rt0
    })
    .await;
    probe.abort(); // the caller goes away while the probe waits on the hung server
                   // (It may have answered already: a request is bounded by op_timeout, and a caller's
                   // computation runs on as its own task. Either way the probe's outcome must be booked.)
    let _ = probe.await;
    server.resume();

    // The server answers again: within a bound far above the cooldown, the store must write.
    let mut k = 100u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        k += 1;
        assert_eq!(f.get(&k).await.unwrap(), value_of(&k));
        if exists(&mut con, &s.value_key("probe", &k)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store never recovered: circuit_open={}, circuit_opens {} -> {}, rejected_open={}",
            s.circuit_open(),
            opens,
            s.stats().circuit_opens.load(Ordering::SeqCst),
            s.stats().rejected_open.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!s.circuit_open());
}
