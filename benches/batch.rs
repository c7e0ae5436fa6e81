//! Batch loads against one key at a time, on memory and on Redis, in one run:
//! `cargo bench --bench batch`.
//!
//! - `batch/memory/get_many_100` vs `batch/memory/100_gets`: 100 warm keys (100-byte values)
//!   through `get_many`, and through 100 sequential `get`s of the same function;
//! - `batch/redis/get_many_100` vs `batch/redis/100_gets`: the same on a private redis-server
//!   (loopback), the store's I/O on the bench's runtime.
//!
//! Before the timings it prints the Redis round trips of each form (the store's own
//! `RedisStats::round_trips`, one per request sent), warm (all hits) and cold (after
//! `invalidate_all`: 100 keys to compute), and the closure calls of the cold run.
//!
//! Starts its own redis-server on a free port (tests/support) and stops it afterwards; without
//! `redis-server` on the PATH only the memory half runs.

use criterion::{criterion_group, criterion_main, Criterion};
use herdless::store::RedisStore;
use herdless::{memoize_stampede, BatchMemoized, Memoized, MemoryStore, Store};
use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "../tests/support/mod.rs"]
mod support;

const N: u64 = 100;
const TTL: Duration = Duration::from_secs(3600);

fn value(k: u64) -> String {
    format!("{k:0>100}")
}

/// The batch form and the one-key form of the same function (same name, same entries).
#[allow(clippy::type_complexity)]
fn functions<S: Store<u64, String>>(
    store: &S,
    calls: Arc<AtomicU64>,
) -> (
    BatchMemoized<u64, String, Infallible, S>,
    Memoized<u64, String, Infallible, S>,
) {
    let c = calls.clone();
    let batch = memoize_stampede(store, TTL)
        .name("products")
        // A fixed β: automatic β starts the fleet heartbeat, whose requests would be counted.
        .beta(1.0)
        .build_batch(move |ks: Vec<u64>| {
            c.fetch_add(1, Ordering::Relaxed);
            async move {
                Ok::<_, Infallible>(
                    ks.into_iter()
                        .map(|k| (k, value(k)))
                        .collect::<HashMap<_, _>>(),
                )
            }
        })
        .unwrap();
    let one = memoize_stampede(store, TTL)
        .name("products")
        .beta(1.0)
        .build(move |k: u64| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(value(k)) }
        })
        .unwrap();
    (batch, one)
}

async fn hundred_gets<S: Store<u64, String>>(
    one: &Memoized<u64, String, Infallible, S>,
    keys: &[u64],
) {
    for k in keys {
        black_box(one.get(k).await.unwrap());
    }
}

fn bench_pair<S: Store<u64, String>>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    batch: &BatchMemoized<u64, String, Infallible, S>,
    one: &Memoized<u64, String, Infallible, S>,
    keys: &[u64],
) {
    rt.block_on(batch.get_many(keys)).unwrap();
    let mut g = c.benchmark_group(group);
    g.bench_function("get_many_100", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(batch.get_many(black_box(keys)).await.unwrap()) })
    });
    g.bench_function("100_gets", |b| {
        b.to_async(rt).iter(|| hundred_gets(one, keys))
    });
    g.finish();
}

/// Round trips (and closure calls) of one `get_many` and of 100 `get`s, warm and cold.
fn count_round_trips(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    calls: &AtomicU64,
    batch: &BatchMemoized<u64, String, Infallible, RedisStore>,
    one: &Memoized<u64, String, Infallible, RedisStore>,
    keys: &[u64],
) {
    let trips = || store.stats().round_trips.load(Ordering::Relaxed);
    let measure = |label: &str, cold: bool, many: bool| {
        if cold {
            rt.block_on(batch.as_memoized().invalidate_all()).unwrap();
        } else {
            rt.block_on(batch.get_many(keys)).unwrap();
        }
        let (t0, c0) = (trips(), calls.load(Ordering::Relaxed));
        if many {
            rt.block_on(batch.get_many(keys)).unwrap();
        } else {
            rt.block_on(hundred_gets(one, keys));
        }
        let (t, c) = (trips() - t0, calls.load(Ordering::Relaxed) - c0);
        println!("batch/redis round trips, {label}: {t} (closure calls: {c})");
        t
    };
    let warm_many = measure("warm get_many_100", false, true);
    let warm_gets = measure("warm 100_gets", false, false);
    let cold_many = measure("cold get_many_100", true, true);
    let cold_gets = measure("cold 100_gets", true, false);
    println!(
        "batch/redis round trips ratio: warm {:.1}x fewer, cold {:.1}x fewer",
        warm_gets as f64 / warm_many.max(1) as f64,
        cold_gets as f64 / cold_many.max(1) as f64
    );
}

fn batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys: Vec<u64> = (0..N).collect();

    let memory = MemoryStore::<u64, String>::new(10_000).unwrap();
    let (batch, one) = functions(&memory, Arc::new(AtomicU64::new(0)));
    bench_pair(c, &rt, "batch/memory", &batch, &one, &keys);

    let Some(server) = support::redis_or_skip() else {
        return;
    };
    let store = RedisStore::builder(&server.url())
        .prefix("bench")
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (batch, one) = functions(&store, calls.clone());
    count_round_trips(&rt, &store, &calls, &batch, &one, &keys);
    bench_pair(c, &rt, "batch/redis", &batch, &one, &keys);
    drop(server);
}

criterion_group!(benches, batch);
criterion_main!(benches);
