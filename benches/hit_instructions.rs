//! The hit path in instructions: `hit_path`'s cases under callgrind, where counts do not swing
//! with the machine's load as nanoseconds do.
//!
//! Needs valgrind and the runner of the same version as the `iai-callgrind` dev-dependency:
//! `cargo install iai-callgrind-runner --version 0.16.1`, then
//! `cargo bench --bench hit_instructions`. Each benchmark is one hit, as one criterion iteration
//! of `hit_path` is: one hot `String` key, a 1 KiB `Arc<String>` value, the function built and
//! warmed (miss, then hits) in an uncounted setup. The ids are contracts: compare
//! `herdless_stampede_hit` and `herdless_stampede_hit_async` with `quick_cache_get` (ratios in
//! the README).

use herdless::{memoize_stampede, BlockingMemoized, Memoized, MemoryStore};
use iai_callgrind::{library_benchmark, library_benchmark_group, main};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

type Value = Arc<String>;
type Store = MemoryStore<String, Value>;

fn value() -> Value {
    Arc::new("x".repeat(1024))
}

fn key() -> &'static String {
    Box::leak(Box::new("landing_page:/home".to_string()))
}

const TTL: Duration = Duration::from_secs(3600);

/// Leaked, so that no drop is counted in the measured call.
fn sync_fixture() -> (
    &'static BlockingMemoized<String, Value, Infallible, Store>,
    &'static String,
) {
    let store = Store::new(10_000).unwrap();
    let f = memoize_stampede(&store, TTL)
        .name("sync")
        .beta(1.0) // fixed β: the lean hit path (`herdless_auto_hit` measures the default)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    let k = key();
    for _ in 0..3 {
        f.get(k).unwrap();
    }
    (Box::leak(Box::new(f)), k)
}

#[inline(always)]
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a hit never waits"),
    }
}

fn async_fixture() -> (
    &'static Memoized<String, Value, Infallible, Store>,
    &'static String,
) {
    let store = Store::new(10_000).unwrap();
    let f = memoize_stampede(&store, TTL)
        .name("async")
        .beta(1.0)
        .build_infallible(|_k: String| std::future::ready(value()))
        .unwrap();
    let k = key();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f.get(k)).unwrap();
    for _ in 0..2 {
        poll_once(f.get(k)).unwrap();
    }
    (Box::leak(Box::new(f)), k)
}

/// The default builder: automatic β (its hits are metered in the thread's tier, in batches).
fn auto_fixture() -> (
    &'static BlockingMemoized<String, Value, Infallible, Store>,
    &'static String,
) {
    let store = Store::new(10_000).unwrap();
    let f = memoize_stampede(&store, TTL)
        .name("auto")
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    let k = key();
    for _ in 0..3 {
        f.get(k).unwrap();
    }
    (Box::leak(Box::new(f)), k)
}

/// A private `redis-server` (run under `timeout`, so it is gone shortly after the benchmark even
/// though nothing can stop it from the measured process); its URL. Panics if it is missing.
fn private_redis() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = std::process::Command::new("timeout")
        .args(["300", "redis-server", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the Redis benchmarks need redis-server on PATH");
    // Never waited for: `timeout` ends the server after the run (this process cannot).
    Box::leak(Box::new(server));
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    format!("redis://127.0.0.1:{port}/")
}

/// One thread runs everything (the store's I/O included, `RedisStoreBuilder::runtime`), so the
/// count is all the client-side work of a call: the caller's and the connection's.
fn current_thread() -> &'static tokio::runtime::Runtime {
    Box::leak(Box::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    ))
}

type RawGet = (
    &'static tokio::runtime::Runtime,
    redis::aio::MultiplexedConnection,
);

/// A raw redis-rs `GET` of a 120-byte value (issue 23's shape) on one multiplexed connection.
fn raw_get_fixture() -> RawGet {
    let rt = current_thread();
    let client = redis::Client::open(private_redis().as_str()).unwrap();
    let mut conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    rt.block_on(async {
        redis::cmd("SET")
            .arg("raw")
            .arg("v".repeat(120))
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        for _ in 0..3 {
            redis::cmd("GET")
                .arg("raw")
                .query_async::<Vec<u8>>(&mut conn)
                .await
                .unwrap();
        }
    });
    (rt, conn)
}

type RedisFn = Memoized<String, String, Infallible, herdless::store::RedisStore>;

/// A herdless hit on Redis (default builder, automatic β), the store's I/O on the caller's
/// one-thread runtime, the same 120-byte value.
fn redis_hit_fixture() -> (
    &'static tokio::runtime::Runtime,
    &'static RedisFn,
    &'static String,
) {
    let rt = current_thread();
    let store = herdless::store::RedisStore::builder(&private_redis())
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    let f = memoize_stampede(&store, TTL)
        .name("redis")
        .build_infallible(|_k: String| std::future::ready("v".repeat(120)))
        .unwrap();
    let k = key();
    for _ in 0..4 {
        rt.block_on(f.get(k)).unwrap();
    }
    (rt, Box::leak(Box::new(f)), k)
}

#[cfg(feature = "disk")]
type DiskFn = BlockingMemoized<String, Value, Infallible, herdless::store::DiskStore>;

/// A disk hit (default builder, automatic β): with `tier`, served from the thread's own copy
/// validated by the shared version file; without, an LMDB read transaction.
#[cfg(feature = "disk")]
fn disk_fixture(tier: bool) -> (&'static DiskFn, &'static String) {
    let dir =
        std::env::temp_dir().join(format!("herdless-instr-disk-{}-{tier}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = herdless::store::DiskStore::builder(&dir)
        .thread_tier(tier)
        .build()
        .unwrap();
    let f = memoize_stampede(&store, TTL)
        .name("disk")
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    let k = key();
    for _ in 0..4 {
        f.get(k).unwrap();
    }
    (Box::leak(Box::new(f)), k)
}

#[cfg(feature = "disk")]
fn disk_tier_fixture() -> (&'static DiskFn, &'static String) {
    disk_fixture(true)
}

#[cfg(feature = "disk")]
fn disk_no_tier_fixture() -> (&'static DiskFn, &'static String) {
    disk_fixture(false)
}

type NearFn =
    BlockingMemoized<String, Value, Infallible, herdless::store::NearStore<String, Value>>;

/// A near hit: a `NearStore` over a private `redis-server` (run under `timeout`, so it is gone
/// shortly after the benchmark even though nothing can stop it from the measured process),
/// the value held near. Panics if `redis-server` is missing.
fn near_fixture() -> (&'static NearFn, &'static String) {
    use herdless::store::{NearStore, RedisStore};
    let shared = RedisStore::new(&private_redis()).unwrap();
    let near = NearStore::builder(&shared)
        .build::<String, Value>()
        .unwrap();
    let f = memoize_stampede(&near, TTL)
        .name("near")
        .beta(1.0)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    let k = key();
    while near.is_empty() {
        f.get(k).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        f.get(k).unwrap();
    }
    Box::leak(Box::new(near));
    (Box::leak(Box::new(f)), k)
}

fn quick_cache_fixture() -> (
    &'static quick_cache::sync::Cache<String, Value>,
    &'static String,
) {
    let qc = quick_cache::sync::Cache::<String, Value>::new(10_000);
    let k = key();
    qc.insert(k.clone(), value());
    for _ in 0..3 {
        qc.get(k).unwrap();
    }
    (Box::leak(Box::new(qc)), k)
}

#[library_benchmark]
#[bench::hit(setup = sync_fixture)]
fn herdless_stampede_hit(
    (f, k): (
        &'static BlockingMemoized<String, Value, Infallible, Store>,
        &'static String,
    ),
) -> Value {
    black_box(f.get(black_box(k)).unwrap())
}

#[library_benchmark]
#[bench::hit(setup = async_fixture)]
fn herdless_stampede_hit_async(
    (f, k): (
        &'static Memoized<String, Value, Infallible, Store>,
        &'static String,
    ),
) -> Value {
    black_box(poll_once(f.get(black_box(k))).unwrap())
}

#[library_benchmark]
#[bench::hit(setup = auto_fixture)]
fn herdless_auto_hit(
    (f, k): (
        &'static BlockingMemoized<String, Value, Infallible, Store>,
        &'static String,
    ),
) -> Value {
    black_box(f.get(black_box(k)).unwrap())
}

// `read` on the default builder: the closure borrows the value (no `Arc` count written).
#[library_benchmark]
#[bench::hit(setup = auto_fixture)]
fn herdless_read_hit(
    (f, k): (
        &'static BlockingMemoized<String, Value, Infallible, Store>,
        &'static String,
    ),
) -> usize {
    black_box(f.read(black_box(k), |v| v.len()).unwrap())
}

#[library_benchmark]
#[bench::hit(setup = near_fixture)]
fn herdless_near_hit((f, k): (&'static NearFn, &'static String)) -> Value {
    black_box(f.get(black_box(k)).unwrap())
}

#[library_benchmark]
#[bench::hit(setup = quick_cache_fixture)]
fn quick_cache_get(
    (qc, k): (
        &'static quick_cache::sync::Cache<String, Value>,
        &'static String,
    ),
) -> Value {
    black_box(qc.get(black_box(k)).unwrap())
}

#[library_benchmark]
#[bench::hit(setup = raw_get_fixture)]
fn redis_raw_get((rt, mut conn): RawGet) -> Vec<u8> {
    black_box(rt.block_on(async {
        redis::cmd("GET")
            .arg("raw")
            .query_async::<Vec<u8>>(&mut conn)
            .await
            .unwrap()
    }))
}

#[library_benchmark]
#[bench::hit(setup = redis_hit_fixture)]
fn herdless_redis_hit(
    (rt, f, k): (
        &'static tokio::runtime::Runtime,
        &'static RedisFn,
        &'static String,
    ),
) -> String {
    black_box(rt.block_on(f.get(black_box(k))).unwrap())
}

#[cfg(feature = "disk")]
#[library_benchmark]
#[bench::hit(setup = disk_tier_fixture)]
fn herdless_disk_hit((f, k): (&'static DiskFn, &'static String)) -> Value {
    black_box(f.get(black_box(k)).unwrap())
}

#[cfg(feature = "disk")]
#[library_benchmark]
#[bench::hit(setup = disk_no_tier_fixture)]
fn herdless_disk_hit_no_tier((f, k): (&'static DiskFn, &'static String)) -> Value {
    black_box(f.get(black_box(k)).unwrap())
}

library_benchmark_group!(
    name = hit_instructions;
    benchmarks = herdless_stampede_hit, herdless_stampede_hit_async, herdless_auto_hit,
        herdless_read_hit, herdless_near_hit, quick_cache_get
);

library_benchmark_group!(
    name = redis_instructions;
    benchmarks = redis_raw_get, herdless_redis_hit
);

#[cfg(feature = "disk")]
library_benchmark_group!(
    name = disk_instructions;
    benchmarks = herdless_disk_hit, herdless_disk_hit_no_tier
);

#[cfg(feature = "disk")]
main!(
    library_benchmark_groups = hit_instructions,
    redis_instructions,
    disk_instructions
);
#[cfg(not(feature = "disk"))]
main!(
    library_benchmark_groups = hit_instructions,
    redis_instructions
);
