//! Redis hits at the server's limit (issue 23), against a private `redis-server`.
//!
//! Hits in flight together share one pipeline (`src/store/redis/coalesce.rs`): every caller
//! still gets its own key's value, every hit is still one `GETRANGE` on the server, concurrent
//! hits take fewer round trips than hits, a hit alone is sent at once, and a foreign record in
//! a batch is a miss for its own caller only.
//!
//! A runtime calling a store that runs its own gets a connection of its own for its hits
//! (`src/store/redis/conn/local.rs`): it appears after the runtime's first calls, goes away
//! with the runtime (making room for others past the table's 8), and a killed one is replaced
//! while the hits keep being answered.

mod support;

use herdless::memoize_stampede;
use herdless::store::RedisStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{
    bounded, commandstats, commandstats_delta, redis_or_skip, wait_until, warm_up, BOUND,
};

const KEYS: usize = 200;
const TASKS: usize = 50;
const PER_TASK: usize = 40;

fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn key(i: usize) -> String {
    format!("k{i}")
}

/// A memoized function `name` over `s` answering "value of <key>", and its count of runs.
fn counted(
    s: &RedisStore,
    name: &str,
) -> (
    herdless::Memoized<String, String, std::convert::Infallible, RedisStore>,
    Arc<AtomicU64>,
) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(s, Duration::from_secs(3600))
        .name(name)
        .beta(1.0)
        .build_infallible(move |k: String| {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::ready(format!("value of {k}"))
        })
        .unwrap();
    (f, runs)
}

/// One worker thread: the tasks that are ready when a batch opens run before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_hits_share_pipelines_and_each_gets_its_own_value() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = store(&server.url());
    let (f, runs) = counted(&s, "coalesce");
    for i in 0..KEYS {
        f.get(&key(i)).await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), KEYS as u64);

    let before = commandstats(&mut con);
    let trips_before = s.stats().round_trips.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                for n in 0..PER_TASK {
                    let k = key((t * 7919 + n * 31) % KEYS);
                    let v = f.get(&k).await.unwrap();
                    assert_eq!(
                        v,
                        format!("value of {k}"),
                        "a caller got another key's value"
                    );
                }
            })
        })
        .collect();
    tokio::time::timeout(BOUND, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("the hits finished within the bound");
    let hits = (TASKS * PER_TASK) as u64;
    let trips = s.stats().round_trips.load(Ordering::SeqCst) - trips_before;
    let delta = commandstats_delta(&before, &commandstats(&mut con));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        KEYS as u64,
        "no hit became a miss"
    );
    assert_eq!(
        delta.get("getrange").copied().unwrap_or(0),
        hits,
        "every hit is one GETRANGE on the server: {delta:?}"
    );
    assert!(
        trips < hits / 2,
        "{hits} concurrent hits took {trips} round trips: they did not share pipelines"
    );
    // A pipeline carries at most 16 hits (`coalesce::BATCH`).
    assert!(
        trips >= hits / 16,
        "{hits} hits in {trips} round trips: some pipeline carried more than 16"
    );
}

/// Sequential hits have nothing to share: each is its own round trip, sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_hit_alone_is_sent_at_once() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let s = store(&server.url());
    let f = memoize_stampede(&s, Duration::from_secs(3600))
        .name("alone")
        .beta(1.0)
        .build_infallible(|k: String| std::future::ready(k))
        .unwrap();
    for i in 0..10 {
        f.get(&key(i)).await.unwrap();
    }
    let before = s.stats().round_trips.load(Ordering::SeqCst);
    for i in 0..10 {
        assert_eq!(f.get(&key(i)).await.unwrap(), key(i));
    }
    assert_eq!(s.stats().round_trips.load(Ordering::SeqCst) - before, 10);
}

/// A key of another Redis type answers `WRONGTYPE` inside the pipeline: its caller sees a
/// foreign record (a miss, counted) and recomputes; the batch's other callers get their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_foreign_record_in_a_batch_is_a_miss_for_its_caller_only() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = store(&server.url());
    let (f, runs) = counted(&s, "foreign");
    for i in 0..TASKS {
        f.get(&key(i)).await.unwrap();
    }
    // Key 0's record replaced by a list behind herdless's back.
    let value_key = s.value_key("foreign", &key(0));
    let _: () = redis::cmd("DEL").arg(&value_key).query(&mut con).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&value_key)
        .arg("x")
        .query(&mut con)
        .unwrap();
    let errors_before = s.stats().decode_errors.load(Ordering::SeqCst);
    let runs_before = runs.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                let v = f.get(&key(i)).await.unwrap();
                assert_eq!(v, format!("value of {}", key(i)));
            })
        })
        .collect();
    tokio::time::timeout(BOUND, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("the hits finished within the bound");
    assert_eq!(
        runs.load(Ordering::SeqCst) - runs_before,
        1,
        "only the foreign key was recomputed"
    );
    assert!(s.stats().decode_errors.load(Ordering::SeqCst) > errors_before);
}

fn connected_clients(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO clients has connected_clients")
}

/// The id of the newest client connection (the highest `id=` in `CLIENT LIST`).
fn newest_client(con: &mut redis::Connection) -> u64 {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(con).unwrap();
    list.lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .max()
        .expect("CLIENT LIST lists clients")
}

fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The default store runs its own runtime; a service's runtime calling it gets one connection
/// of its own for its hits, which ends with that runtime, and a killed one is replaced.
#[test]
fn a_runtime_calling_the_store_gets_a_connection_of_its_own() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = RedisStore::builder(&server.url())
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    warm_up(&s, &mut con, 1); // the store's own connection and its subscriber
    let base = connected_clients(&mut con);
    let f = memoize_stampede(&s, Duration::from_secs(3600))
        .name("local")
        .beta(1.0)
        .build_infallible(|k: String| std::future::ready(format!("value of {k}")))
        .unwrap();
    // From a task of the runtime, as a service's handlers call it.
    let hit = |rt: &tokio::runtime::Runtime, n: usize| {
        let (k, f) = (key(n % 10), f.clone());
        let v = rt
            .block_on(async move { tokio::spawn(async move { f.get(&k).await }).await })
            .unwrap()
            .unwrap();
        assert_eq!(v, format!("value of {}", key(n % 10)));
    };

    let rt = one_worker();
    let mut n = 0;
    wait_until("the runtime's own connection", BOUND, || {
        n += 1;
        hit(&rt, n);
        connected_clients(&mut con) == base + 1
    });
    // Hits now go over it: the store's connection sees none of them.
    let local_id = newest_client(&mut con);
    for i in 0..20 {
        hit(&rt, i);
    }
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("id={local_id} ")))
        .expect("the runtime's connection is listed");
    assert!(line.contains("cmd=getrange"), "{line}");

    // Killed behind the store's back: hits keep being answered (fail-open, or over the
    // store's connection), and the runtime gets a new connection of its own.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(local_id)
        .query(&mut con)
        .unwrap();
    wait_until("a new connection of the runtime's own", BOUND, || {
        n += 1;
        hit(&rt, n);
        connected_clients(&mut con) == base + 1 && newest_client(&mut con) > local_id
    });

    // The connection's task lives on the runtime: it ends with it.
    drop(rt);
    wait_until("the runtime's connection to close with it", BOUND, || {
        connected_clients(&mut con) == base
    });
    // Other runtimes get their own, one after another, past the table's 8: the entries of
    // runtimes that shut down make room.
    for _ in 0..9 {
        let next = one_worker();
        wait_until("the next runtime's own connection", BOUND, || {
            n += 1;
            hit(&next, n);
            connected_clients(&mut con) == base + 1
        });
        drop(next);
        wait_until("that runtime's connection to close with it", BOUND, || {
            connected_clients(&mut con) == base
        });
    }
}

/// Hits made outside any task (here `Handle::block_on` from two threads, on a current-thread
/// runtime that nobody drives) never wait for a batch task that could not run there: each is
/// sent on its own, and all of them are answered.
#[test]
fn hits_outside_a_task_do_not_wait_for_a_batch() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let s = store(&server.url());
    let f = memoize_stampede(&s, Duration::from_secs(3600))
        .name("outside")
        .beta(1.0)
        .build_infallible(|k: String| std::future::ready(format!("value of {k}")))
        .unwrap();
    // Warmed on a runtime that runs: a miss's waits use the caller's timers, which a runtime
    // nobody drives never fires (tokio's rule, not herdless's); the threads below only hit.
    let warm = one_worker();
    for i in 0..20 {
        warm.block_on(f.get(&key(i))).unwrap();
    }
    drop(warm);
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = idle.handle().clone();
    bounded("hits from two threads outside a task", BOUND, move || {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (f, handle) = (f.clone(), handle.clone());
                std::thread::spawn(move || {
                    for n in 0..300 {
                        let k = key((t * 7 + n) % 20);
                        let v = handle.block_on(f.get(&k)).unwrap();
                        assert_eq!(v, format!("value of {k}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    drop(idle);
}

/// A batch that fails (here: the server paused, so it times out) answers every member with a
/// store error, and each caller fails open: it computes its own value, within the bound, none
/// left waiting for a reply that will not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failed_batch_fails_open_for_every_member() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let s = RedisStore::builder(&server.url())
        .op_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (f, runs) = counted(&s, "failing");
    for i in 0..TASKS {
        f.get(&key(i)).await.unwrap();
    }
    server.pause();
    let trips_before = s.stats().round_trips.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                let v = f.get(&key(i)).await.unwrap();
                assert_eq!(v, format!("value of {}", key(i)));
            })
        })
        .collect();
    let done = tokio::time::timeout(BOUND, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    server.resume();
    done.expect("every member of the failed batches was answered within the bound");
    let trips = s.stats().round_trips.load(Ordering::SeqCst) - trips_before;
    assert!(
        trips < TASKS as u64,
        "the {TASKS} reads did not share pipelines ({trips} round trips)"
    );
    assert!(
        runs.load(Ordering::SeqCst) >= 2 * TASKS as u64,
        "every caller computed its value itself (fail-open)"
    );
    assert!(s.stats().errors.load(Ordering::SeqCst) > 0);
}
