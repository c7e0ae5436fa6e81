//! The hit path, side by side with the caches a Rust user would pick instead.
//!
//! One hot `String` key, a 1 KiB `Arc<String>` value, all measured in the same run:
//! `cargo bench --bench hit_path`. Compare ratios, not absolute numbers.
//!
//! - `herdless_stampede_hit` / `_async`: `memoize_stampede` with a fixed β (`.beta(1.0)`: the
//!   lean hit path, no rate meter);
//! - `herdless_auto_hit`: the default builder (automatic β: the rate meter samples one hit in 8);
//! - `herdless_near_hit`: a hit from a `NearStore` tier over a private `redis-server` (started
//!   by `tests/support`; skipped with one line if it is not on PATH), fixed β like
//!   `herdless_stampede_hit`;
//! - `quick_cache_get`, `moka_get_with`: the caches a Rust user would pick instead.

use criterion::{criterion_group, criterion_main, Criterion};
use herdless::{memoize_stampede, MemoryStore};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn value() -> Arc<String> {
    Arc::new("x".repeat(1024))
}

fn hit_path(c: &mut Criterion) {
    let key = "landing_page:/home".to_string();
    let ttl = Duration::from_secs(3600);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("hit_path");

    let store = MemoryStore::<String, Arc<String>>::new(10_000).unwrap();
    let sync_f = memoize_stampede(&store, ttl)
        .name("sync")
        .beta(1.0)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    sync_f.get(&key).unwrap();
    g.bench_function("herdless_stampede_hit", |b| {
        b.iter(|| black_box(sync_f.get(black_box(&key)).unwrap()))
    });

    let async_f = memoize_stampede(&store, ttl)
        .name("async")
        .beta(1.0)
        .build_infallible(|_k: String| std::future::ready(value()))
        .unwrap();
    rt.block_on(async_f.get(&key)).unwrap();
    g.bench_function("herdless_stampede_hit_async", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(async_f.get(black_box(&key)).await.unwrap()) })
    });

    let auto_f = memoize_stampede(&store, ttl)
        .name("auto")
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    auto_f.get(&key).unwrap();
    g.bench_function("herdless_auto_hit", |b| {
        b.iter(|| black_box(auto_f.get(black_box(&key)).unwrap()))
    });

    near_hit(&mut g, &key, ttl);

    let qc = quick_cache::sync::Cache::<String, Arc<String>>::new(10_000);
    qc.insert(key.clone(), value());
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| black_box(qc.get(black_box(&key)).unwrap()))
    });

    let moka_f = moka::future::Cache::<String, Arc<String>>::new(10_000);
    rt.block_on(moka_f.insert(key.clone(), value()));
    g.bench_function("moka_get_with", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                moka_f
                    .get_with_by_ref(black_box(&key), async { value() })
                    .await,
            )
        })
    });
    g.finish();
}

/// A near hit: the value held in the `NearStore` tier, the function as `herdless_stampede_hit`.
fn near_hit(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    key: &String,
    ttl: Duration,
) {
    use herdless::store::{NearStore, RedisStore};
    let Some(server) = support::redis_or_skip() else {
        return;
    };
    let shared = RedisStore::new(&server.url()).unwrap();
    let near = NearStore::builder(&shared)
        .build::<String, Arc<String>>()
        .unwrap();
    let f = memoize_stampede(&near, ttl)
        .name("near")
        .beta(1.0)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    // The write's own announcement drops the copy; the next read keeps it near.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while near.is_empty() && std::time::Instant::now() < deadline {
        f.get(key).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    g.bench_function("herdless_near_hit", |b| {
        b.iter(|| black_box(f.get(black_box(key)).unwrap()))
    });
    drop(server);
}

#[path = "../tests/support/mod.rs"]
mod support;

criterion_group!(benches, hit_path);
criterion_main!(benches);
