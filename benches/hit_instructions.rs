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

type NearFn =
    BlockingMemoized<String, Value, Infallible, herdless::store::NearStore<String, Value>>;

/// A near hit: a `NearStore` over a private `redis-server` (run under `timeout`, so it is gone
/// shortly after the benchmark even though nothing can stop it from the measured process),
/// the value held near. Panics if `redis-server` is missing.
fn near_fixture() -> (&'static NearFn, &'static String) {
    use herdless::store::{NearStore, RedisStore};
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
        .expect("herdless_near_hit needs redis-server on PATH");
    // Never waited for: `timeout` ends the server after the run (this process cannot).
    Box::leak(Box::new(server));
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let shared = RedisStore::new(&format!("redis://127.0.0.1:{port}/")).unwrap();
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

library_benchmark_group!(
    name = hit_instructions;
    benchmarks = herdless_stampede_hit, herdless_stampede_hit_async, herdless_auto_hit,
        herdless_read_hit, herdless_near_hit, quick_cache_get
);

main!(library_benchmark_groups = hit_instructions);
