//! Redis paths, side by side with raw redis-rs in the same run: `cargo bench --bench redis_path`.
//!
//! - `herdless_redis_hit`: a memoized hit through `RedisStore` (one round trip: value + PTTL),
//!   its I/O on the bench's runtime (`RedisStoreBuilder::runtime`), like the raw connection's;
//! - `redis_get`: a raw `GET` over the same connection type (`ConnectionManager`);
//! - `herdless_redis_hit_private_rt`: the default store, whose I/O runs on its own runtime
//!   thread (what blocking callers use): one thread hop each way;
//! - `waiter_wakeup`: from the moment the lock winner's computation returns to the moment a
//!   waiter on another connection (another store, as another process would be) returns.
//! - `near_invalidate_propagation`: from the moment `insert` (or `invalidate`) returns in one
//!   store to the moment another store's near tier no longer serves the old value (its own
//!   connection and subscription, as another process would have). Besides criterion's mean, it
//!   prints the median and p99 of every sample.
//!
//! - `redis_throughput` (see `redis_path/throughput.rs`): calls/s from 1 and 50 tasks, herdless
//!   hits against raw `GET`s, single node and cluster.
//!
//! Starts its own redis-server on a free port and stops it afterwards.

use criterion::{criterion_group, criterion_main, Criterion};
use herdless::{memoize_stampede, store::RedisStore};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// A memoized hit of a 1 KiB value through `store`, warmed first.
fn bench_hit(g: &mut Group<'_>, id: &str, rt: &tokio::runtime::Runtime, store: &RedisStore) {
    let value = "x".repeat(1024);
    let key = "landing_page:/home".to_string();
    let f = memoize_stampede(store, Duration::from_secs(3600))
        .name("hit")
        .build_infallible(move |_k: String| std::future::ready(value.clone()))
        .unwrap();
    rt.block_on(f.get(&key)).unwrap();
    g.bench_function(id, |b| {
        b.to_async(rt)
            .iter(|| async { black_box(f.get(black_box(&key)).await.unwrap()) })
    });
}

/// A raw `GET` of a 1 KiB value over `conn` (stored first under `raw`).
fn bench_raw_get<C>(g: &mut Group<'_>, id: &str, rt: &tokio::runtime::Runtime, conn: &C)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let mut c = conn.clone();
    rt.block_on(async {
        redis::cmd("SET")
            .arg("raw")
            .arg("x".repeat(1024))
            .query_async::<()>(&mut c)
            .await
    })
    .unwrap();
    g.bench_function(id, |b| {
        b.to_async(rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg("raw")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v)
            }
        })
    });
}

/// `herdless_cluster_hit` (a memoized hit through a cluster store: one `EVALSHA` to the key's
/// master) against `cluster_get` (a raw redis-rs cluster `GET` of a 1 KiB value), on a private
/// 3-master cluster started by `tests/support/cluster.rs`.
#[cfg(feature = "cluster")]
fn cluster_path(c: &mut Criterion) {
    let Some(cluster) = cluster::cluster_or_skip() else {
        return;
    };
    let seeds = cluster.seeds();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("redis_path");
    let store = RedisStore::cluster_builder(&seeds)
        .prefix("bench")
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    bench_hit(&mut g, "herdless_cluster_hit", &rt, &store);
    let client = redis::cluster::ClusterClient::new(seeds.clone()).unwrap();
    let conn = rt.block_on(client.get_async_connection()).unwrap();
    bench_raw_get(&mut g, "cluster_get", &rt, &conn);
    // Where the time of a cluster hit goes: the same read script herdless runs, sent raw.
    let read = redis::Script::new(
        r#"
local len = redis.pcall('STRLEN', KEYS[1])
if type(len) == 'table' and len.err then return {false, -3} end
if len == 0 then return {false, -2} end
if len > tonumber(ARGV[1]) then return {false, -4, len} end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"#,
    );
    g.bench_function("cluster_read_script", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let read = &read;
            async move {
                let v: redis::Value = read
                    .key("raw")
                    .arg(1 << 20)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v)
            }
        })
    });
    g.finish();
    drop(store);
    drop(cluster);
}

#[cfg(not(feature = "cluster"))]
fn cluster_path(_: &mut Criterion) {}

#[cfg(feature = "cluster")]
#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "redis_path/throughput.rs"]
mod throughput;

fn redis_path(c: &mut Criterion) {
    cluster_path(c);
    let Some(server) = support::redis_or_skip() else {
        return;
    };
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("redis_path");
    let on_bench_rt = RedisStore::builder(&url)
        .prefix("bench")
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    bench_hit(&mut g, "herdless_redis_hit", &rt, &on_bench_rt);
    let private_rt = RedisStore::builder(&url).prefix("bench").build().unwrap();
    bench_hit(&mut g, "herdless_redis_hit_private_rt", &rt, &private_rt);
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = rt
        .block_on(redis::aio::ConnectionManager::new(client))
        .unwrap();
    bench_raw_get(&mut g, "redis_get", &rt, &conn);

    // Winner and waiter use different stores (different connections), like two processes.
    let winner_store = RedisStore::builder(&url).prefix("wake").build().unwrap();
    let waiter_store = RedisStore::builder(&url).prefix("wake").build().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g2 = gate.clone();
    let winner = memoize_stampede(&winner_store, Duration::from_secs(3600))
        .name("wake")
        .build_infallible(move |k: String| {
            let (g2, k) = (g2.clone(), k.clone());
            async move {
                g2.acquire().await.unwrap().forget();
                k
            }
        })
        .unwrap();
    let waiter = memoize_stampede(&waiter_store, Duration::from_secs(3600))
        .name("wake")
        .build_infallible(|k: String| std::future::ready(format!("waiter computed {k}")))
        .unwrap();
    let mut round = 0u64;
    let mut probe = conn.clone();
    g.sample_size(30);
    g.bench_function("waiter_wakeup", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let key = format!("k{round}");
                total += rt.block_on(async {
                    let w = winner.clone();
                    let k = key.clone();
                    let win = tokio::spawn(async move { w.get(&k).await });
                    // Let the winner take the lock, then the waiter start waiting on it.
                    let mut lock_key = winner_store.value_key("wake", &key);
                    *lock_key.last_mut().unwrap() = b'l';
                    for _ in 0..2000 {
                        let held: bool = redis::cmd("EXISTS")
                            .arg(&lock_key)
                            .query_async(&mut probe)
                            .await
                            .unwrap();
                        if held {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    let wt = waiter.clone();
                    let k = key.clone();
                    let wait = tokio::spawn(async move {
                        let r = wt.get(&k).await;
                        (r, Instant::now())
                    });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let released = Instant::now();
                    gate.add_permits(1);
                    let (got, woke) = wait.await.unwrap();
                    assert_eq!(got.unwrap(), key, "the waiter must get the winner's value");
                    win.await.unwrap().unwrap();
                    woke.saturating_duration_since(released)
                });
            }
            total
        })
    });
    near_invalidate_propagation(&mut g, &url, &rt);
    g.finish();
    drop(server);
}

fn near_invalidate_propagation(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    url: &str,
    rt: &tokio::runtime::Runtime,
) {
    use herdless::store::NearStore;
    let writer_store = RedisStore::builder(url).prefix("near").build().unwrap();
    let reader_shared = RedisStore::builder(url).prefix("near").build().unwrap();
    let reader_near = NearStore::builder(&reader_shared)
        .capacity(100)
        .build::<String, u64>()
        .unwrap();
    let writer = memoize_stampede(&writer_store, Duration::from_secs(3600))
        .name("prop")
        .build_infallible(|_k: String| std::future::ready(0u64))
        .unwrap();
    let reader = memoize_stampede(&reader_near, Duration::from_secs(3600))
        .name("prop")
        .build_infallible(|_k: String| std::future::ready(0u64))
        .unwrap();
    let key = "k".to_string();
    let mut round = 0u64;
    let mut samples: Vec<Duration> = Vec::new();
    g.bench_function("near_invalidate_propagation", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let took = rt.block_on(async {
                    // The reader holds the current value near (a read racing the previous
                    // announcement is not kept: read again until it is).
                    if round > 1 {
                        loop {
                            let v = reader.get(&key).await.unwrap();
                            if v == round - 1 && !reader_near.is_empty() {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                    }
                    // An insert (not an invalidate, whose reader would then also run its
                    // closure) measures the propagation alone.
                    writer.insert(&key, round).await.unwrap();
                    let returned = Instant::now();
                    let deadline = returned + Duration::from_secs(5);
                    loop {
                        if reader.get(&key).await.unwrap() == round {
                            break returned.elapsed();
                        }
                        assert!(
                            Instant::now() < deadline,
                            "the change never reached the reader"
                        );
                        tokio::task::yield_now().await;
                    }
                });
                samples.push(took);
                total += took;
            }
            total
        })
    });
    samples.sort();
    if !samples.is_empty() {
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "near_invalidate_propagation: {} samples, median {:?}, p99 {:?}, max {:?}",
            samples.len(),
            at(0.5),
            at(0.99),
            samples[samples.len() - 1]
        );
    }
}

criterion_group!(benches, redis_path, throughput::redis_throughput);
criterion_main!(benches);
