//! The Redis store over a real Redis Cluster (3 masters, 3 replicas, started by the test; see
//! `tests/support/cluster.rs`): keys of many functions spread over every master, a cold key
//! computed once across stores and threads, wake-ups and near-cache announcements across shards,
//! a SIGKILL of the hot key's master under load (failover), and a SIGSTOP of one master that
//! must not slow the keys of the others.
//!
//! Several `RedisStore`s in one test stand for several processes: each has its own connection,
//! subscription and in-process single-flight, so only Redis coordinates them. Every wait is
//! bounded; the failover test prints its figures (`HERDLESS failover …`).
#![cfg(feature = "cluster")]

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use cluster::{cluster_or_skip, RedisCluster};
use herdless::store::{NearStore, RedisStore};
use herdless::{memoize_stampede, BlockingMemoized, Contention, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{bounded, wait_until, BOUND};

fn store(c: &RedisCluster, prefix: &str, op_timeout: Duration) -> RedisStore {
    let seeds = c.seeds();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    RedisStore::cluster_builder(&seeds)
        .prefix(prefix)
        .op_timeout(op_timeout)
        .build()
        .unwrap()
}

/// Makes `s` connect and waits (bounded) until its subscription is live.
fn warm(s: &RedisStore) {
    let f = memoize_stampede(s, Duration::from_secs(60))
        .name("warmup")
        .build_blocking_infallible(|k: &String| k.clone())
        .unwrap();
    wait_until("the cluster store to answer", BOUND, || {
        f.get(&"w".to_string()).is_ok() && s.stats().round_trips.load(Ordering::Relaxed) > 0
    });
    let ns = Store::<String, String>::namespace(s, "probe");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_until("the subscription to go live", BOUND, || {
        // With a live subscription, a wait first asks whether the lock exists (a round trip).
        let before = s.stats().round_trips.load(Ordering::SeqCst);
        rt.block_on(Store::<String, String>::wait_for_value(
            s,
            &ns,
            &"p".to_string(),
            Duration::from_millis(1),
            herdless::WaitMode::Async,
        ))
        .unwrap();
        s.stats().round_trips.load(Ordering::SeqCst) > before
    });
}

/// The master port serving a store key.
fn master_of(c: &RedisCluster, key: &[u8]) -> u16 {
    c.master_of_slot(c.keyslot(key))
}

#[test]
fn keys_of_many_functions_spread_over_every_master() {
    let Some(c) = cluster_or_skip() else { return };
    let s = store(&c, "spread", Duration::from_secs(2));
    warm(&s);
    const FUNCTIONS: usize = 8;
    const KEYS: usize = 60;
    let runs = Arc::new(AtomicUsize::new(0));
    for f in 0..FUNCTIONS {
        let r = runs.clone();
        let m = memoize_stampede(&s, Duration::from_secs(60))
            .name(&format!("fn{f}"))
            .build_blocking_infallible(move |k: &u32| {
                r.fetch_add(1, Ordering::SeqCst);
                k * 2
            })
            .unwrap();
        for k in 0..KEYS as u32 {
            assert_eq!(m.get(&k).unwrap(), k * 2);
            assert_eq!(m.get(&k).unwrap(), k * 2, "second call is a hit");
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), FUNCTIONS * KEYS);
    assert_eq!(s.stats().errors.load(Ordering::Relaxed), 0);
    let masters = c.masters();
    assert_eq!(masters.len(), 3, "three masters");
    let counts: Vec<u64> = masters.iter().map(|&p| c.dbsize(p)).collect();
    let total: u64 = counts.iter().sum();
    println!("HERDLESS spread keys per master {counts:?} (total {total})");
    // A value and a version key per entry, plus the warm-up's.
    assert!(total >= 2 * (FUNCTIONS * KEYS) as u64, "{counts:?}");
    for (p, n) in masters.iter().zip(&counts) {
        assert!(
            *n >= total / 6,
            "master {p} holds {n} of {total} keys: not spread ({counts:?})"
        );
    }
}

#[test]
fn cold_key_computes_once_across_stores_and_threads() {
    let Some(c) = cluster_or_skip() else { return };
    const STORES: usize = 3;
    const THREADS: usize = 4;
    let runs = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut fns = Vec::new();
    for i in 0..STORES {
        let s = if i == 0 {
            // The start-up check of a cluster store passes on a healthy cluster.
            let seeds = c.seeds();
            let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
            RedisStore::cluster_builder(&seeds)
                .prefix("cold")
                .op_timeout(Duration::from_secs(2))
                .connect_blocking()
                .unwrap_or_else(|e| panic!("connect to the cluster: {e}"))
        } else {
            store(&c, "cold", Duration::from_secs(2))
        };
        warm(&s);
        let (r, run, pk) = (runs.clone(), running.clone(), peak.clone());
        let f = memoize_stampede(&s, Duration::from_secs(60))
            .name("cold")
            .contention(Contention::Wait(BOUND))
            .build_blocking_infallible(move |k: &String| {
                r.fetch_add(1, Ordering::SeqCst);
                let now = run.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                run.fetch_sub(1, Ordering::SeqCst);
                format!("v-{k}")
            })
            .unwrap();
        fns.push(Arc::new(f));
    }
    let start = Arc::new(std::sync::Barrier::new(STORES * THREADS));
    let handles: Vec<_> = (0..STORES * THREADS)
        .map(|i| {
            let (f, b) = (fns[i % STORES].clone(), start.clone());
            std::thread::spawn(move || {
                b.wait();
                f.get(&"hot".to_string())
            })
        })
        .collect();
    let out = bounded("the cold-key callers", BOUND, move || {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for r in out {
        assert_eq!(r.unwrap(), "v-hot");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one computation in total");
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

#[test]
fn wakeups_and_near_announcements_cross_every_shard() {
    let Some(c) = cluster_or_skip() else { return };
    let (a, b) = (
        store(&c, "wake", Duration::from_secs(2)),
        store(&c, "wake", Duration::from_secs(2)),
    );
    warm(&a);
    warm(&b);
    // One key per master.
    let mut keys: Vec<(u16, String)> = Vec::new();
    for i in 0.. {
        let k = format!("k{i}");
        let m = master_of(&c, &a.value_key("f", &k));
        if !keys.iter().any(|(p, _)| *p == m) {
            keys.push((m, k));
        }
        if keys.len() == 3 {
            break;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A waiter on store `b` is woken by a write through store `a`, on every shard, long before
    // its wait would end by itself.
    for (port, k) in &keys {
        let (a2, b2, k2) = (a.clone(), b.clone(), k.clone());
        let woken_in = rt.block_on(async move {
            let ns_a = Store::<String, String>::namespace(&a2, "f");
            let ns_b = Store::<String, String>::namespace(&b2, "f");
            let lock = match Store::<String, String>::lock_or_get(
                &a2,
                &ns_a,
                &k2,
                Duration::from_secs(30),
                Duration::from_secs(60),
                herdless::Clock::now(&herdless::SystemClock::new()),
            )
            .await
            .unwrap()
            {
                herdless::store::LockOutcome::Acquired(l) => l,
                _ => panic!("a cold key's lock is free"),
            };
            let k3 = k2.clone();
            let waiter = tokio::spawn(async move {
                let t = Instant::now();
                Store::<String, String>::wait_for_value(
                    &b2,
                    &ns_b,
                    &k3,
                    Duration::from_secs(20),
                    herdless::WaitMode::Async,
                )
                .await
                .unwrap();
                t.elapsed()
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = herdless::Clock::now(&herdless::SystemClock::new());
            let e = herdless::Entry {
                value: "v".to_string(),
                delta_us: 1,
                expires_at: now + 60_000_000_000,
                write_id: 0,
            };
            // The locked write releases the lock and publishes on the entry's channel.
            Store::<String, String>::set(&a2, &ns_a, &k2, e, Duration::from_secs(60), Some(lock))
                .await
                .unwrap();
            tokio::time::timeout(BOUND, waiter).await.unwrap().unwrap()
        });
        assert!(
            woken_in < Duration::from_secs(10),
            "the waiter on master {port}'s key was not woken (waited {woken_in:?})"
        );
    }
    // Near tiers over the cluster: a write through one drops the other's copy on every shard.
    let na: NearStore<String, String> = NearStore::builder(&a).capacity(100).build().unwrap();
    let nb: NearStore<String, String> = NearStore::builder(&b).capacity(100).build().unwrap();
    let version = Arc::new(AtomicU64::new(1));
    let mk = |s: &NearStore<String, String>| -> BlockingMemoized<
        String,
        String,
        std::convert::Infallible,
        NearStore<String, String>,
    > {
        let v = version.clone();
        memoize_stampede(s, Duration::from_secs(60))
            .name("near")
            .beta(0.0)
            .build_blocking_infallible(move |k: &String| {
                format!("{k}@{}", v.load(Ordering::SeqCst))
            })
            .unwrap()
    };
    let (fa, fb) = (mk(&na), mk(&nb));
    for (_, k) in &keys {
        assert_eq!(fa.get(k).unwrap(), format!("{k}@1"));
        assert_eq!(fb.get(k).unwrap(), format!("{k}@1"));
    }
    version.store(2, Ordering::SeqCst);
    for (port, k) in &keys {
        fa.invalidate(k).unwrap();
        wait_until(
            &format!("b's near copy of a key on master {port} to be dropped"),
            BOUND,
            || fb.get(k).unwrap() == format!("{k}@2"),
        );
    }
    // `invalidate_all` through one tier: its generation announcement reaches the other.
    version.store(3, Ordering::SeqCst);
    fa.invalidate_all().unwrap();
    for (port, k) in &keys {
        wait_until(
            &format!("b to drop its copy of a key on master {port} after invalidate_all"),
            BOUND,
            || fb.get(k).unwrap() == format!("{k}@3"),
        );
    }
}

/// One computation: when it started and ended, and how many ran at its start (itself included).
#[derive(Clone, Copy)]
struct Run {
    start: Instant,
    concurrent: usize,
}

/// Calls and computations of a load run.
#[derive(Default)]
struct Record {
    runs: Mutex<Vec<Run>>,
    running: AtomicUsize,
    calls: AtomicU64,
    errors: AtomicU64,
    /// (when the call started, how long it took)
    slow: Mutex<Vec<(Instant, Duration)>>,
}

/// Worker threads over several stores calling `hot` in a loop until `stop`.
fn load(
    fns: &[Arc<BlockingMemoized<String, String, std::convert::Infallible, RedisStore>>],
    threads_per_store: usize,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    rec: Arc<Record>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut hs = Vec::new();
    for f in fns {
        for t in 0..threads_per_store {
            let (f, stop, rec, keys) = (f.clone(), stop.clone(), rec.clone(), keys.clone());
            hs.push(std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let k = &keys[i % keys.len()];
                    i += 1;
                    let t0 = Instant::now();
                    let out = f.get(k);
                    let took = t0.elapsed();
                    rec.calls.fetch_add(1, Ordering::Relaxed);
                    if out.is_err() {
                        rec.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if took >= Duration::from_millis(20) {
                        rec.slow.lock().unwrap().push((t0, took));
                    }
                }
            }));
        }
    }
    hs
}

/// A memoized function whose computations are recorded in `rec`.
fn recorded(
    s: &RedisStore,
    name: &str,
    ttl: Duration,
    compute: Duration,
    rec: Arc<Record>,
) -> Arc<BlockingMemoized<String, String, std::convert::Infallible, RedisStore>> {
    Arc::new(
        memoize_stampede(s, ttl)
            .name(name)
            .build_blocking_infallible(move |k: &String| {
                let c = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
                rec.runs.lock().unwrap().push(Run {
                    start: Instant::now(),
                    concurrent: c,
                });
                std::thread::sleep(compute);
                rec.running.fetch_sub(1, Ordering::SeqCst);
                format!("v-{k}")
            })
            .unwrap(),
    )
}

#[test]
fn sigkill_of_the_hot_masters_fails_over_without_errors() {
    let Some(mut c) = cluster_or_skip() else {
        return;
    };
    const STORES: usize = 3;
    const THREADS: usize = 2;
    let op_timeout = Duration::from_millis(250);
    let compute = Duration::from_millis(100);
    let ttl = Duration::from_secs(1);
    let rec = Arc::new(Record::default());
    let stores: Vec<RedisStore> = (0..STORES)
        .map(|_| store(&c, "failover", op_timeout))
        .collect();
    stores.iter().for_each(warm);
    let fns: Vec<_> = stores
        .iter()
        .map(|s| recorded(s, "hot", ttl, compute, rec.clone()))
        .collect();
    let hot = "hot".to_string();
    let victim = master_of(&c, &stores[0].value_key("hot", &hot));
    let slot = c.keyslot(&stores[0].value_key("hot", &hot));
    // A bystander: its own store, calling keys on the other masters throughout.
    let bystander = store(&c, "failover", op_timeout);
    warm(&bystander);
    let others: Vec<String> = (0..)
        .map(|i| format!("other{i}"))
        .filter(|k| master_of(&c, &bystander.value_key("cold", k)) != victim)
        .take(4)
        .collect();
    let by_rec = Arc::new(Record::default());
    let by_fn = recorded(
        &bystander,
        "cold",
        Duration::from_secs(300),
        Duration::ZERO,
        by_rec.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut hs = load(&fns, THREADS, vec![hot.clone()], stop.clone(), rec.clone());
    hs.extend(load(&[by_fn], 1, others, stop.clone(), by_rec.clone()));
    std::thread::sleep(Duration::from_secs(3));
    let by_errors_before = bystander.stats().errors.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    c.kill(victim);
    // Promotion: a live node names another master for the hot slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted_at = loop {
        if let Some(p) = c.try_master_of_slot(slot) {
            if p != victim {
                break Instant::now();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica was promoted within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    bounded("the load threads", BOUND, move || {
        hs.into_iter().for_each(|h| h.join().unwrap())
    });
    let runs = rec.runs.lock().unwrap().clone();
    let before = runs.iter().filter(|r| r.start < killed_at).count();
    let during = runs
        .iter()
        .filter(|r| r.start >= killed_at && r.start < promoted_at)
        .count();
    let after: Vec<&Run> = runs.iter().filter(|r| r.start >= promoted_at).collect();
    let last_overlap = runs
        .iter()
        .filter(|r| r.concurrent > 1 && r.start >= killed_at)
        .map(|r| r.start)
        .max();
    let peak1_after =
        last_overlap.map_or(Duration::ZERO, |t| t.saturating_duration_since(promoted_at));
    let worst = rec
        .slow
        .lock()
        .unwrap()
        .iter()
        .map(|&(_, d)| d)
        .max()
        .unwrap_or_default();
    let failover = promoted_at - killed_at;
    let peak_before = runs
        .iter()
        .filter(|r| r.start < killed_at)
        .map(|r| r.concurrent)
        .max()
        .unwrap_or(0);
    let peak_during = runs
        .iter()
        .filter(|r| r.start >= killed_at)
        .map(|r| r.concurrent)
        .max()
        .unwrap_or(0);
    println!(
        "HERDLESS failover calls={} errors={} failover_ms={} worst_call_ms={} runs_before={before} \
         (in {:?}, peak {peak_before}) runs_kill_to_promotion={during} runs_after_promotion={} \
         (in 6 s) peak_since_kill={peak_during} peak1_again_after_promotion_ms={} \
         circuit_opens={}",
        rec.calls.load(Ordering::Relaxed),
        rec.errors.load(Ordering::Relaxed),
        failover.as_millis(),
        worst.as_millis(),
        killed_at - t0,
        after.len(),
        peak1_after.as_millis(),
        stores
            .iter()
            .map(|s| s.stats().circuit_opens.load(Ordering::Relaxed))
            .sum::<u64>(),
    );
    assert_eq!(
        rec.errors.load(Ordering::Relaxed),
        0,
        "no caller gets an error"
    );
    assert_eq!(peak_before, 1, "single-flight before the kill");
    // Callers of keys on the other masters never see an error either. (Their requests are not
    // asserted error-free: from the dead master's FAIL flag to the promotion, every node answers
    // CLUSTERDOWN under the default `cluster-require-full-coverage yes`.)
    assert_eq!(by_rec.errors.load(Ordering::Relaxed), 0);
    let by_errors = bystander.stats().errors.load(Ordering::Relaxed) - by_errors_before;
    let by_worst = by_rec
        .slow
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(t, _)| t >= killed_at)
        .map(|&(_, d)| d)
        .max()
        .unwrap_or_default();
    let by_slow: Vec<String> = by_rec
        .slow
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(t, d)| t >= killed_at && d >= Duration::from_millis(100))
        .map(|&(t, d)| format!("{}+{}", (t - killed_at).as_millis(), d.as_millis()))
        .collect();
    println!(
        "HERDLESS failover bystander slow calls (ms after kill + ms): {by_slow:?} (promotion at {} ms)",
        failover.as_millis()
    );
    println!(
        "HERDLESS failover bystander (keys on the other masters): calls={} store_errors={by_errors} \
         worst_call_ms={}",
        by_rec.calls.load(Ordering::Relaxed),
        by_worst.as_millis()
    );
    // Single-flight is back within a few seconds of the promotion: no overlap in the last 3 s.
    assert!(
        peak1_after < Duration::from_secs(3),
        "computations still overlapped {peak1_after:?} after the promotion"
    );
    assert!(
        after
            .iter()
            .any(|r| r.start > promoted_at + Duration::from_secs(3)),
        "the function kept being refreshed after the failover"
    );
    // No call waits longer than the failover, a timeout and its own computation (+ slack).
    let limit = failover + op_timeout + compute + Duration::from_secs(1);
    assert!(worst <= limit, "a call took {worst:?} (limit {limit:?})");
}

#[test]
fn a_paused_master_does_not_slow_the_other_shards() {
    let Some(mut c) = cluster_or_skip() else {
        return;
    };
    let op_timeout = Duration::from_millis(200);
    let s = store(&c, "pause", op_timeout);
    warm(&s);
    let seed0 = c.nodes[0].port;
    // The victim: a master other than the first seed (where the subscription starts).
    let victim = *c
        .masters()
        .iter()
        .find(|&&p| p != seed0)
        .expect("a master besides the first seed");
    // Keys on the other masters (well inside a breaker range of their own master: the ranges
    // next to a master's boundary may straddle two masters), and keys on the victim.
    let mut others = Vec::new();
    let mut victims = Vec::new();
    for i in 0.. {
        let k = format!("k{i}");
        let vk = s.value_key("f", &k);
        let slot = c.keyslot(&vk);
        let m = c.master_of_slot(slot);
        let range = slot / 256;
        let range_pure =
            c.master_of_slot(range * 256) == m && c.master_of_slot(range * 256 + 255) == m;
        if m == victim && victims.len() < 3 {
            victims.push(k);
        } else if m != victim && range_pure && others.len() < 6 {
            others.push(k);
        }
        if victims.len() == 3 && others.len() == 6 {
            break;
        }
    }
    let computed = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = computed.clone();
    let f = Arc::new(
        memoize_stampede(&s, Duration::from_secs(300))
            .name("f")
            .build_blocking_infallible(move |k: &String| {
                r.lock().unwrap().push(k.clone());
                format!("v-{k}")
            })
            .unwrap(),
    );
    for k in others.iter().chain(&victims) {
        f.get(k).unwrap();
    }
    let cached = computed.lock().unwrap().len();
    // Calls on the other shards while the victim is paused, from a few threads, alongside
    // calls on the victim's keys.
    c.pause(victim);
    let paused_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let worst_other = Arc::new(Mutex::new(Duration::ZERO));
    let other_calls = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for t in 0..2 {
        let (f, stop, worst, n, keys) = (
            f.clone(),
            stop.clone(),
            worst_other.clone(),
            other_calls.clone(),
            others.clone(),
        );
        hs.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let k = &keys[i % keys.len()];
                i += 1;
                let t0 = Instant::now();
                assert_eq!(f.get(k).unwrap(), format!("v-{k}"));
                let d = t0.elapsed();
                n.fetch_add(1, Ordering::Relaxed);
                let mut w = worst.lock().unwrap();
                *w = (*w).max(d);
            }
        }));
    }
    for t in 0..3 {
        let (f, stop, keys) = (f.clone(), stop.clone(), victims.clone());
        hs.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                // Fail-open: a value (cached or computed locally), never an error.
                let k = &keys[i % keys.len()];
                i += 1;
                assert_eq!(f.get(k).unwrap(), format!("v-{k}"));
            }
        }));
    }
    // Shorter than the node timeout, so no failover interferes.
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let joined = bounded("the callers", BOUND, move || {
        // Every thread is joined, even after one failed.
        let mut all = true;
        for h in hs {
            all &= h.join().is_ok();
        }
        all
    });
    c.resume(victim);
    assert!(joined, "a caller failed");
    let worst = *worst_other.lock().unwrap();
    let calls = other_calls.load(Ordering::Relaxed);
    let since: Vec<String> = computed.lock().unwrap()[cached..].to_vec();
    let victim_runs = since.len();
    println!(
        "HERDLESS pause other_shard_calls={calls} worst_other_ms={:.2} victim_local_runs={victim_runs} \
         circuit_opens={} rejected_open={} paused_for_ms={}",
        worst.as_secs_f64() * 1e3,
        s.stats().circuit_opens.load(Ordering::Relaxed),
        s.stats().rejected_open.load(Ordering::Relaxed),
        paused_at.elapsed().as_millis()
    );
    assert!(calls > 0);
    // The victim's range stayed open, refusing its calls at once instead of each paying a
    // timeout (one breaker for the whole cluster would be closed again by every success on the
    // other shards, and the victim's callers would keep waiting out timeouts).
    let rejected = s.stats().rejected_open.load(Ordering::Relaxed);
    assert!(
        rejected >= 20,
        "only {rejected} calls were refused by an open breaker: the victim's calls kept paying timeouts"
    );
    // The other shards' keys were served from Redis all along.
    assert!(
        s.circuit_open(),
        "the victim's range opened its breaker (the test paused long enough)"
    );
    // Their latency is printed above, not asserted (a noisy machine); a call that had paid a
    // timeout or been refused by an open breaker would have recomputed its key, which is
    // counted below.
    // Every computation since the pause was of a victim key (computed locally, fail-open).
    assert!(
        since.iter().all(|k| victims.contains(k)),
        "keys on other shards were recomputed while one master was paused: {since:?}"
    );
}

#[test]
fn a_paused_subscription_node_is_left_for_another() {
    let Some(mut c) = cluster_or_skip() else {
        return;
    };
    // Store `b` knows one seed, a replica (pausing a replica starts no failover): its
    // subscription starts there and must move to a node it learnt from the cluster.
    let seed0 = c.replicas()[0];
    let a = store(&c, "hb", Duration::from_millis(250));
    let b = RedisStore::cluster_builder(&[&format!("redis://127.0.0.1:{seed0}/")])
        .prefix("hb")
        .op_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    warm(&a);
    warm(&b);
    let k = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| master_of(&c, &a.value_key("near", k)) != seed0)
        .unwrap();
    // A staleness bound far above the test's bound: only announcements (or a tier dropped on
    // resubscribe) can make `b` see the new value in time.
    let na: NearStore<String, String> = NearStore::builder(&a)
        .capacity(100)
        .max_stale(Duration::from_secs(120))
        .build()
        .unwrap();
    let nb: NearStore<String, String> = NearStore::builder(&b)
        .capacity(100)
        .max_stale(Duration::from_secs(120))
        .build()
        .unwrap();
    let version = Arc::new(AtomicU64::new(1));
    let mk = |s: &NearStore<String, String>| {
        let v = version.clone();
        memoize_stampede(s, Duration::from_secs(300))
            .name("near")
            .beta(0.0)
            .build_blocking_infallible(move |k: &String| {
                format!("{k}@{}", v.load(Ordering::SeqCst))
            })
            .unwrap()
    };
    let (fa, fb) = (mk(&na), mk(&nb));
    assert_eq!(fa.get(&k).unwrap(), format!("{k}@1"));
    assert_eq!(fb.get(&k).unwrap(), format!("{k}@1"));
    c.pause(seed0);
    // Longer than a heartbeat and its answer bound.
    std::thread::sleep(Duration::from_secs(3));
    version.store(2, Ordering::SeqCst);
    fa.invalidate(&k).unwrap();
    wait_until(
        "b to see the new value while its first subscription node is paused",
        Duration::from_secs(15),
        || fb.get(&k).unwrap() == format!("{k}@2"),
    );
    c.resume(seed0);
}

/// Measurement, not a check (`cargo test --test redis_cluster -- --ignored --nocapture`): what a
/// plain `PUBLISH` (what the store's scripts send; Redis Cluster forwards it to every node) costs
/// against a sharded `SPUBLISH` (kept within the channel's shard), from `redis-benchmark`, with
/// and without a subscriber, and how many cluster-bus messages each sends.
#[test]
#[ignore]
fn measure_publish_fanout() {
    let Some(c) = cluster_or_skip() else { return };
    let port = c.masters()[0];
    // A channel in a slot of that master, for SPUBLISH.
    let tag = (0..)
        .map(|i| format!("{{t{i}}}:c"))
        .find(|ch| c.master_of_slot(c.keyslot(ch.as_bytes())) == port)
        .unwrap();
    let bus = |p: u16| -> (u64, u64) {
        let mut con = support::raw(p);
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap();
        let get = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0)
        };
        (
            get("cluster_stats_messages_publish_sent:"),
            get("cluster_stats_messages_publishshard_sent:"),
        )
    };
    for cmd in ["PUBLISH", "SPUBLISH"] {
        let before = bus(port);
        let out = std::process::Command::new("redis-benchmark")
            .args(["-p", &port.to_string(), "-c", "10", "-n", "50000", "-q"])
            .args([cmd, &tag, "1"])
            .output()
            .expect("redis-benchmark");
        let after = bus(port);
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!(
            "HERDLESS publish {cmd}: {} bus messages sent (publish {}, publishshard {})",
            stdout.rsplit('\r').next().unwrap_or_default().trim(),
            after.0 - before.0,
            after.1 - before.1
        );
    }
}

#[test]
fn resharding_the_hot_slot_under_load_is_invisible() {
    let Some(c) = cluster_or_skip() else { return };
    const STORES: usize = 3;
    const THREADS: usize = 2;
    let rec = Arc::new(Record::default());
    let stores: Vec<RedisStore> = (0..STORES)
        .map(|_| store(&c, "reshard", Duration::from_millis(250)))
        .collect();
    stores.iter().for_each(warm);
    let fns: Vec<_> = stores
        .iter()
        .map(|s| {
            recorded(
                s,
                "hot",
                Duration::from_secs(1),
                Duration::from_millis(100),
                rec.clone(),
            )
        })
        .collect();
    let hot = "hot".to_string();
    let vk = stores[0].value_key("hot", &hot);
    let slot = c.keyslot(&vk);
    let from = c.master_of_slot(slot);
    let to = *c.masters().iter().find(|&&m| m != from).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hs = load(&fns, THREADS, vec![hot.clone()], stop.clone(), rec.clone());
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    // Slowly, so that refreshes (lock, write, release) meet every stage of the migration.
    // The TRYAGAIN window (keys moved, slot not yet assigned) is held open for 100 ms, far
    // longer than `redis-cli` keeps it but shorter than a call's timeout: requests must ride
    // it out by retrying, not fail open.
    c.migrate_slot(
        slot,
        from,
        to,
        Duration::from_millis(700),
        Duration::from_millis(100),
    );
    let moved = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    bounded("the load threads", BOUND, move || {
        hs.into_iter().for_each(|h| h.join().unwrap())
    });
    assert_eq!(c.master_of_slot(slot), to, "the slot moved");
    assert!(
        support::exists(&mut support::raw(to), &vk),
        "the hot key lives on its new master"
    );
    let runs = rec.runs.lock().unwrap().clone();
    let peak = runs.iter().map(|r| r.concurrent).max().unwrap_or(0);
    let during = runs
        .iter()
        .filter(|r| r.start >= started && r.start < moved)
        .count();
    let store_errors: u64 = stores
        .iter()
        .map(|s| s.stats().errors.load(Ordering::Relaxed))
        .sum();
    let worst = rec
        .slow
        .lock()
        .unwrap()
        .iter()
        .map(|&(_, d)| d)
        .max()
        .unwrap_or_default();
    println!(
        "HERDLESS reshard calls={} errors={} store_errors={store_errors} runs={} \
         runs_during_migration={during} (in {} ms) peak={peak} worst_call_ms={}",
        rec.calls.load(Ordering::Relaxed),
        rec.errors.load(Ordering::Relaxed),
        runs.len(),
        (moved - started).as_millis(),
        worst.as_millis()
    );
    assert_eq!(
        rec.errors.load(Ordering::Relaxed),
        0,
        "no caller gets an error"
    );
    assert_eq!(
        store_errors, 0,
        "no request failed (each rode out MOVED/ASK/TRYAGAIN)"
    );
    assert_eq!(peak, 1, "single-flight holds throughout the resharding");
}

/// Milliseconds since the Unix epoch (one host: parent and children share the clock).
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Records one computation on the observer server: bumps `running`, appends
/// `<epoch ms>:<running>` to `runs`.
const RUN_START: &str = "local c = redis.call('INCR', 'running') \
     redis.call('RPUSH', 'runs', ARGV[1] .. ':' .. c) return c";

/// Child of [`sigkill_fails_over_across_processes`]: `HERDLESS_TASKS` Tokio tasks call the hot
/// key through a cluster store until the observer (a plain redis-server on `port`) has `stop`.
#[test]
fn child_failover_load() {
    let Some(env) = support::ChildEnv::get() else {
        return;
    };
    let seeds = env.var("HERDLESS_SEEDS");
    let tasks: usize = env.var("HERDLESS_TASKS").parse().unwrap();
    let seeds: Vec<&str> = seeds.split(',').collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = RedisStore::cluster_builder(&seeds)
        .prefix("mp-failover")
        .op_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    warm(&s);
    let observer = redis::Client::open(env.url()).unwrap();
    let obs = rt
        .block_on(observer.get_multiplexed_async_connection())
        .unwrap();
    let f = {
        let obs = obs.clone();
        memoize_stampede(&s, Duration::from_secs(1))
            .name("hot")
            .build_infallible(move |k: String| {
                let mut obs = obs.clone();
                async move {
                    let _: i64 = redis::Script::new(RUN_START)
                        .arg(epoch_ms())
                        .invoke_async(&mut obs)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _: i64 = redis::cmd("DECR")
                        .arg("running")
                        .query_async(&mut obs)
                        .await
                        .unwrap();
                    format!("v-{k}")
                }
            })
            .unwrap()
    };
    support::report("ready", "");
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, errors, worst) = rt.block_on(async {
        let watcher = {
            let (stop, mut obs) = (stop.clone(), obs.clone());
            tokio::spawn(async move {
                loop {
                    let done: bool = redis::cmd("EXISTS")
                        .arg("stop")
                        .query_async(&mut obs)
                        .await
                        .unwrap_or(false);
                    if done {
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (f, stop) = (f.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut calls, mut errors, mut worst) = (0u64, 0u64, Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        if f.get(&"hot".to_string()).await.is_err() {
                            errors += 1;
                        }
                        worst = worst.max(t0.elapsed());
                        calls += 1;
                    }
                    (calls, errors, worst)
                })
            })
            .collect();
        let mut total = (0, 0, Duration::ZERO);
        for h in handles {
            let (c, e, w) = h.await.unwrap();
            total = (total.0 + c, total.1 + e, total.2.max(w));
        }
        watcher.await.unwrap();
        total
    });
    support::report(
        "done",
        format!(
            "calls={calls} errors={errors} worst_ms={}",
            worst.as_millis()
        ),
    );
}

/// The failover of the hot key's master under load from real processes (3 processes × 2 Tokio
/// tasks), counted on a separate observer server.
#[test]
fn sigkill_fails_over_across_processes() {
    let Some(mut c) = cluster_or_skip() else {
        return;
    };
    let observer = support::RedisServer::start();
    let mut obs = observer.raw();
    let op_timeout = Duration::from_millis(250);
    let compute = Duration::from_millis(100);
    let probe = store(&c, "mp-failover", op_timeout);
    let vk = probe.value_key("hot", &"hot".to_string());
    let slot = c.keyslot(&vk);
    let victim = c.master_of_slot(slot);
    let seeds = c.seeds().join(",");
    let mut kids: Vec<support::ChildProc> = (0..3)
        .map(|i| {
            support::ChildProc::spawn(
                "child_failover_load",
                observer.port(),
                &format!("load{i}"),
                &[
                    ("HERDLESS_SEEDS", seeds.clone()),
                    ("HERDLESS_TASKS", "2".into()),
                ],
            )
        })
        .collect();
    for k in &mut kids {
        k.wait_report("ready", Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = epoch_ms();
    c.kill(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted_at = loop {
        if let Some(p) = c.try_master_of_slot(slot) {
            if p != victim {
                break epoch_ms();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica was promoted within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(6));
    let _: () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query(&mut obs)
        .unwrap();
    let (mut calls, mut errors, mut worst) = (0, 0, 0);
    for k in &mut kids {
        let f = support::fields(&k.wait_report("done", BOUND));
        calls += support::field_u64(&f, "calls");
        errors += support::field_u64(&f, "errors");
        worst = worst.max(support::field_u64(&f, "worst_ms"));
        k.expect_success(BOUND);
    }
    let runs: Vec<String> = redis::cmd("LRANGE")
        .arg("runs")
        .arg(0)
        .arg(-1)
        .query(&mut obs)
        .unwrap();
    let runs: Vec<(u64, u64)> = runs
        .iter()
        .filter_map(|r| {
            let (t, c) = r.split_once(':')?;
            Some((t.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    let before: Vec<_> = runs.iter().filter(|r| r.0 < killed_at).collect();
    let during = runs
        .iter()
        .filter(|r| r.0 >= killed_at && r.0 < promoted_at)
        .count();
    let after = runs.iter().filter(|r| r.0 >= promoted_at).count();
    let peak_before = before.iter().map(|r| r.1).max().unwrap_or(0);
    let last_overlap = runs.iter().filter(|r| r.1 > 1).map(|r| r.0).max();
    let peak1_after_ms = last_overlap.map_or(0, |t| t.saturating_sub(promoted_at));
    let failover_ms = promoted_at - killed_at;
    println!(
        "HERDLESS failover (3 processes x 2 tasks) calls={calls} errors={errors} \
         failover_ms={failover_ms} worst_call_ms={worst} runs_before={} (3 s, peak {peak_before}) \
         runs_kill_to_promotion={during} runs_after_promotion={after} (6 s) \
         peak1_again_after_promotion_ms={peak1_after_ms}",
        before.len()
    );
    assert_eq!(errors, 0, "no caller gets an error");
    assert_eq!(peak_before, 1, "single-flight before the kill");
    assert!(
        peak1_after_ms < 3000,
        "computations still overlapped {peak1_after_ms} ms after the promotion"
    );
    let limit = failover_ms + (op_timeout + compute + Duration::from_secs(1)).as_millis() as u64;
    assert!(worst <= limit, "a call took {worst} ms (limit {limit} ms)");
}
