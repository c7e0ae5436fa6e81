//! The hit path, side by side with the caches a Rust user would pick instead.
//!
//! One hot `String` key, a 1 KiB `Arc<String>` value, all measured in the same run:
//! `cargo bench --bench hit_path`. Compare ratios, not absolute numbers.

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
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    sync_f.get(&key).unwrap();
    g.bench_function("herdless_stampede_hit", |b| {
        b.iter(|| black_box(sync_f.get(black_box(&key)).unwrap()))
    });

    let async_f = memoize_stampede(&store, ttl)
        .name("async")
        .build_infallible(|_k: String| std::future::ready(value()))
        .unwrap();
    rt.block_on(async_f.get(&key)).unwrap();
    g.bench_function("herdless_stampede_hit_async", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(async_f.get(black_box(&key)).await.unwrap()) })
    });

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

criterion_group!(benches, hit_path);
criterion_main!(benches);
