//! Hits from two threads at once, beside quick_cache and moka in the same run: two threads on
//! one hot key (everything they touch is shared: the entry, the coarse clock, the hand-off
//! flag; only the hit counter is striped) and two threads on disjoint keys. One thread is the
//! baseline.
//!
//! `cargo bench --bench hit_threads`. An iteration is one hit on *each* thread, so perfect
//! scaling keeps the 2-thread time equal to the 1-thread time; scaling from 1 to 2 threads is
//! `2 × t(1) / t(2)` (2.0 is perfect). Needs two idle cores to mean anything: compare the
//! scaling of herdless with that of quick_cache in the same run, not absolute times.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herdless::{memoize_stampede, MemoryStore};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

type Value = Arc<String>;

fn value() -> Value {
    Arc::new("x".repeat(1024))
}

/// Runs `hit(thread, key)` `iters` times on each of `threads` threads, started together;
/// returns the wall time until the last one is done.
fn run<F: Fn(&String) + Sync>(threads: usize, keys: &[String], iters: u64, hit: &F) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start, key) = (&start, &keys[t % keys.len()]);
                s.spawn(move || {
                    start.wait();
                    for _ in 0..iters {
                        hit(black_box(key));
                    }
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for w in workers {
            w.join().unwrap();
        }
        t0.elapsed()
    })
}

fn hit_threads(c: &mut Criterion) {
    let ttl = Duration::from_secs(3600);
    let keys: Vec<String> = (0..2).map(|i| format!("landing_page:/home/{i}")).collect();

    let store = MemoryStore::<String, Value>::new(10_000).unwrap();
    let herdless_f = memoize_stampede(&store, ttl)
        .name("threads")
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    let qc = quick_cache::sync::Cache::<String, Value>::new(10_000);
    let moka_c = moka::sync::Cache::<String, Value>::new(10_000);
    for k in &keys {
        herdless_f.get(k).unwrap();
        qc.insert(k.clone(), value());
        moka_c.insert(k.clone(), value());
    }

    let herdless_hit = |k: &String| {
        black_box(herdless_f.get(k).unwrap());
    };
    let qc_hit = |k: &String| {
        black_box(qc.get(k).unwrap());
    };
    let moka_hit = |k: &String| {
        black_box(moka_c.get(k).unwrap());
    };

    let mut g = c.benchmark_group("hit_threads");
    // (case id, threads, keys the threads use)
    let cases: [(&str, usize, &[String]); 3] = [
        ("1_thread", 1, &keys[..1]),
        ("2_threads_same_key", 2, &keys[..1]),
        ("2_threads_disjoint_keys", 2, &keys[..]),
    ];
    for (case, threads, ks) in cases {
        g.bench_function(BenchmarkId::new("herdless_stampede_hit", case), |b| {
            b.iter_custom(|iters| run(threads, ks, iters, &herdless_hit))
        });
        g.bench_function(BenchmarkId::new("quick_cache_get", case), |b| {
            b.iter_custom(|iters| run(threads, ks, iters, &qc_hit))
        });
        g.bench_function(BenchmarkId::new("moka_sync_get", case), |b| {
            b.iter_custom(|iters| run(threads, ks, iters, &moka_hit))
        });
    }
    g.finish();
}

criterion_group!(benches, hit_threads);
criterion_main!(benches);
