//! `redis_throughput`: calls per second from 1 and from 50 tasks sharing one connection, over
//! 1 000 warm keys with 120-byte values, herdless hits beside raw redis-rs `GET`s in the same
//! run (`cargo bench --bench redis_path -- redis_throughput`). Criterion's `thrpt` line is
//! calls/s; the README reports the ratios.
//!
//! - `raw_get/N`: `GET` on one `MultiplexedConnection`, from N tasks;
//! - `raw_get_pttl/N`: `GET` and `PTTL` pipelined, the same way: what a hit would cost without
//!   the expiry in the record (issue 23's alternative), measured beside the chosen design;
//! - `herdless_redis_hit/N`: `get` of a memoized function (default settings, β automatic) over
//!   one `RedisStore` whose I/O runs on the bench's runtime (`RedisStoreBuilder::runtime`), as
//!   the raw connection's does, from N tasks;
//! - `herdless_redis_hit_private_rt/N`: the same with the default store, whose connection is
//!   driven by its own runtime thread (each reply crosses threads);
//! - `cluster_raw_get/N`, `herdless_cluster_hit/N`: the same on a private 3+3 cluster (the store
//!   on the bench's runtime).

use criterion::{BenchmarkId, Criterion, Throughput};
use herdless::{memoize_stampede, store::RedisStore};
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 1000;
const VALUE_BYTES: usize = 120;
const TASKS: [usize; 2] = [1, 50];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `iters` calls of `call(i)` spread over `tasks` tasks; the time per call, scaled so
/// that criterion's per-iteration time is the time of one call at that concurrency.
fn run<F, Fut>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    call: F,
) where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    for tasks in TASKS {
        g.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let per = (iters as usize).div_ceil(tasks).max(1);
                let call = call.clone();
                let took = rt.block_on(async move {
                    let start = Instant::now();
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let call = call.clone();
                            tokio::spawn(async move {
                                for i in 0..per {
                                    call((t * 7919 + i) % KEYS).await;
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.unwrap();
                    }
                    start.elapsed()
                });
                took.mul_f64(iters as f64 / (per * tasks) as f64)
            })
        });
    }
}

/// The keys of the raw ids, `raw:{i}`.
fn raw_keys() -> Arc<Vec<String>> {
    Arc::new((0..KEYS).map(|i| format!("raw:{{{i}}}")).collect())
}

/// Raw `GET`s of `raw:{i}` on `conn` (written first).
fn raw<C>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    conn: C,
) where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let keys = raw_keys();
    let mut c = conn.clone();
    let ks = keys.clone();
    rt.block_on(async move {
        for k in ks.iter() {
            redis::cmd("SET")
                .arg(k)
                .arg("v".repeat(VALUE_BYTES))
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
    });
    run(g, rt, name, move |i| {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&keys[i])
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(v.len(), VALUE_BYTES);
            black_box(v);
        }
    });
}

/// `GET` + `PTTL` of `raw:{i}` pipelined in one round trip on `conn` (keys written by [`raw`]).
fn raw_get_pttl<C>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    conn: C,
) where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let keys = raw_keys();
    run(g, rt, name, move |i| {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let (v, ttl): (Vec<u8>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&keys[i])
                .cmd("PTTL")
                .arg(&keys[i])
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(v.len(), VALUE_BYTES);
            black_box((v, ttl));
        }
    });
}

/// Memoized hits through `store` (all keys warmed first).
fn hits(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &RedisStore,
) {
    let f = memoize_stampede(store, Duration::from_secs(3600))
        .name("throughput")
        .build_infallible(|_k: String| std::future::ready("v".repeat(VALUE_BYTES)))
        .unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("k{i}")).collect());
    let (f2, ks) = (f.clone(), keys.clone());
    rt.block_on(async move {
        for k in ks.iter() {
            f2.get(k).await.unwrap();
        }
    });
    run(g, rt, name, move |i| {
        let (f, keys) = (f.clone(), keys.clone());
        async move {
            black_box(f.get(&keys[i]).await.unwrap());
        }
    });
}

pub fn redis_throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("redis_throughput");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    if let Some(server) = crate::support::redis_or_skip() {
        let url = server.url();
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = rt
            .block_on(client.get_multiplexed_async_connection())
            .unwrap();
        raw(&mut g, &rt, "raw_get", conn.clone());
        raw_get_pttl(&mut g, &rt, "raw_get_pttl", conn);
        let store = RedisStore::builder(&url)
            .prefix("tp")
            .runtime(rt.handle().clone())
            .build()
            .unwrap();
        hits(&mut g, &rt, "herdless_redis_hit", &store);
        drop(store);
        let private = RedisStore::builder(&url).prefix("tp").build().unwrap();
        hits(&mut g, &rt, "herdless_redis_hit_private_rt", &private);
        drop(private);
        drop(server);
    }
    cluster(&mut g, &rt);
    g.finish();
}

#[cfg(feature = "cluster")]
fn cluster(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
) {
    let Some(cluster) = crate::cluster::cluster_or_skip() else {
        return;
    };
    let seeds = cluster.seeds();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let client = redis::cluster::ClusterClient::new(seeds.clone()).unwrap();
    let conn = rt.block_on(client.get_async_connection()).unwrap();
    raw(g, rt, "cluster_raw_get", conn);
    let store = RedisStore::cluster_builder(&seeds)
        .prefix("tp")
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    hits(g, rt, "herdless_cluster_hit", &store);
    drop(store);
    drop(cluster);
}

#[cfg(not(feature = "cluster"))]
fn cluster(
    _: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    _: &tokio::runtime::Runtime,
) {
}
