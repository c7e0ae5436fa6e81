//! Hits in flight together share one pipeline (issue 23, `src/store/redis/coalesce.rs`),
//! against a private `redis-server`: every caller still gets its own key's value, every hit is
//! still one `GETRANGE` on the server, concurrent hits take fewer round trips than hits, a hit
//! alone is sent at once, and a foreign record in a batch is a miss for its own caller only.

mod support;

use herdless::memoize_stampede;
use herdless::store::RedisStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{commandstats, commandstats_delta, redis_or_skip, BOUND};

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

/// One worker thread: the tasks that are ready when a batch opens run before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_hits_share_pipelines_and_each_gets_its_own_value() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let s = store(&server.url());
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&s, Duration::from_secs(3600))
        .name("coalesce")
        .beta(1.0)
        .build_infallible(move |k: String| {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::ready(format!("value of {k}"))
        })
        .unwrap();
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
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&s, Duration::from_secs(3600))
        .name("foreign")
        .beta(1.0)
        .build_infallible(move |k: String| {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::ready(format!("value of {k}"))
        })
        .unwrap();
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
