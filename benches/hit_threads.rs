//! Hits from two threads at once, beside quick_cache and moka in the same run: two threads on
//! one hot key (everything they touch is shared: the entry, the coarse clock, the hand-off
//! flag; only the hit counter is striped) and two threads on disjoint keys. One thread is the
//! baseline.
//!
//! Four value types: `Arc<String>` through `get` (group `hit_threads`), `u64`
//! (`hit_threads_u64`), a 1 KiB `String` (`hit_threads_string`) and `Arc<String>` through
//! `read` (`hit_threads_arc_read`, herdless alone: the peers have no borrowing read).
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

/// Runs `hit(thread, key)` `iters` times on each of `threads` threads, started together;
/// returns the wall time until the last one is done.
fn run<F: Fn(&String) + Sync + ?Sized>(
    threads: usize,
    keys: &[String],
    iters: u64,
    hit: &F,
) -> Duration {
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

/// (case id, threads, how many keys the threads use)
const CASES: [(&str, usize, usize); 3] = [
    ("1_thread", 1, 1),
    ("2_threads_same_key", 2, 1),
    ("2_threads_disjoint_keys", 2, 2),
];

/// One value type: herdless (the default builder, automatic β) beside quick_cache and moka,
/// each case of one implementation right after the other (1 thread, then 2), so that the
/// cells a scaling figure divides are measured within seconds of each other.
fn bench_value<V: Clone + Send + Sync + 'static>(
    c: &mut Criterion,
    group: &str,
    make: impl Fn() -> V + Send + Sync + Clone + 'static,
) {
    let ttl = Duration::from_secs(3600);
    let keys: Vec<String> = (0..2).map(|i| format!("landing_page:/home/{i}")).collect();
    let store = MemoryStore::<String, V>::new(10_000).unwrap();
    let m = make.clone();
    let herdless_f = memoize_stampede(&store, ttl)
        .name("threads")
        .build_blocking_infallible(move |_k: &String| m())
        .unwrap();
    let qc = quick_cache::sync::Cache::<String, V>::new(10_000);
    let moka_c = moka::sync::Cache::<String, V>::new(10_000);
    for k in &keys {
        herdless_f.get(k).unwrap();
        qc.insert(k.clone(), make());
        moka_c.insert(k.clone(), make());
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
    let mut g = c.benchmark_group(group);
    for (id, hit) in [
        (
            "herdless_stampede_hit",
            &herdless_hit as &(dyn Fn(&String) + Sync),
        ),
        ("quick_cache_get", &qc_hit),
        ("moka_sync_get", &moka_hit),
    ] {
        for (case, threads, n) in CASES {
            g.bench_function(BenchmarkId::new(id, case), |b| {
                b.iter_custom(|iters| run(threads, &keys[..n], iters, hit))
            });
        }
    }
    g.finish();
}

fn hit_threads(c: &mut Criterion) {
    // `Arc<String>` through `get` keeps the group id of earlier runs: `hit_threads`.
    bench_value(c, "hit_threads", || Arc::new("x".repeat(1024)));
    bench_value(c, "hit_threads_u64", || 7u64);
    bench_value(c, "hit_threads_string", || "x".repeat(1024));
    // `Arc<String>` through `read`: the closure borrows the value, no count is written.
    let ttl = Duration::from_secs(3600);
    let keys: Vec<String> = (0..2).map(|i| format!("landing_page:/home/{i}")).collect();
    let store = MemoryStore::<String, Arc<String>>::new(10_000).unwrap();
    let f = memoize_stampede(&store, ttl)
        .name("threads_read")
        .build_blocking_infallible(|_k: &String| Arc::new("x".repeat(1024)))
        .unwrap();
    for k in &keys {
        f.get(k).unwrap();
    }
    let read_hit = |k: &String| {
        black_box(f.read(k, |v| v.len()).unwrap());
    };
    let mut g = c.benchmark_group("hit_threads_arc_read");
    for (case, threads, n) in CASES {
        g.bench_function(BenchmarkId::new("herdless_read_hit", case), |b| {
            b.iter_custom(|iters| run(threads, &keys[..n], iters, &read_hit))
        });
    }
    g.finish();
}

criterion_group!(benches, hit_threads);
criterion_main!(benches);
