//! Every strategy on the same concurrent workload, scaled down from the landing page: 4 threads
//! call a 2 ms function with a 20 ms TTL. Criterion reports the mean call latency; after the
//! group, a summary prints runs per TTL cycle (how often the body really ran).
//!
//! `cargo bench --bench strategies`

use criterion::{criterion_group, criterion_main, Criterion};
use herdless::{barrier, memoize, memoize_stampede, LeadTarget, LocalLock, MemoryStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: u64 = 4;
const COMPUTE: Duration = Duration::from_millis(2);
const TTL: Duration = Duration::from_millis(20);

type Call = Arc<dyn Fn(&u64) -> u64 + Send + Sync>;

fn build(id: &str, runs: Arc<AtomicU64>) -> Call {
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let body = move |k: &u64| {
        runs.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(COMPUTE);
        *k
    };
    let stampede = |beta: f64| {
        let m = memoize_stampede(&store, TTL)
            .beta(beta)
            .build_blocking_infallible(body.clone())
            .unwrap();
        Arc::new(move |k: &u64| m.get(k).unwrap()) as Call
    };
    match id {
        "none" => Arc::new(body),
        "traditional" => {
            let m = memoize(&store, TTL)
                .build_blocking_infallible(body)
                .unwrap();
            Arc::new(move |k: &u64| m.get(k).unwrap())
        }
        "barrier" => {
            let inner = memoize(&store, TTL)
                .name("b")
                .build_blocking_infallible(body)
                .unwrap();
            let outer = memoize(&store, Duration::ZERO)
                .name("b")
                .wrap_blocking(barrier(LocalLock::new()).wrap_blocking(inner))
                .unwrap();
            Arc::new(move |k: &u64| outer.get(k).unwrap())
        }
        "stampede_b1" => stampede(1.0),
        "stampede_b05" => stampede(0.5),
        "stampede_b03" => stampede(0.3),
        "auto" => {
            let m = memoize_stampede(&store, TTL)
                .beta_auto(LeadTarget::default())
                .build_blocking_infallible(body)
                .unwrap();
            Arc::new(move |k: &u64| m.get(k).unwrap())
        }
        _ => unreachable!(),
    }
}

/// Runs `iters` calls spread over the threads; returns the sum of the calls' latencies, so
/// criterion's time per iteration is the mean call latency.
/// The wall time spent inside workloads is added to `busy_ns` (runs per cycle count only the
/// cycles during which callers were calling).
fn workload(call: &Call, iters: u64, busy_ns: &AtomicU64) -> Duration {
    let started = Instant::now();
    let per_thread = iters.div_ceil(THREADS);
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let call = call.clone();
            std::thread::spawn(move || {
                let mut total = Duration::ZERO;
                for _ in 0..per_thread {
                    let t0 = Instant::now();
                    std::hint::black_box(call(&7));
                    total += t0.elapsed();
                }
                total
            })
        })
        .collect();
    let sum: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
    busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    sum.mul_f64(iters as f64 / (per_thread * THREADS) as f64)
}

fn strategies(c: &mut Criterion) {
    let mut g = c.benchmark_group("strategies");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut summary = Vec::new();
    for id in [
        "none",
        "traditional",
        "barrier",
        "stampede_b1",
        "stampede_b05",
        "stampede_b03",
        "auto",
    ] {
        let runs = Arc::new(AtomicU64::new(0));
        let call = build(id, runs.clone());
        let busy_ns = AtomicU64::new(0);
        g.bench_function(id, |b| {
            b.iter_custom(|iters| workload(&call, iters, &busy_ns))
        });
        let cycles = busy_ns.load(Ordering::Relaxed) as f64 / 1e9 / TTL.as_secs_f64();
        summary.push((id, runs.load(Ordering::Relaxed) as f64 / cycles));
    }
    g.finish();
    println!("\nstrategies: body runs per TTL cycle ({THREADS} threads, {COMPUTE:?} compute, {TTL:?} TTL)");
    for (id, per_cycle) in summary {
        println!("  {id:<14} {per_cycle:>8.2}");
    }
}

criterion_group!(benches, strategies);
criterion_main!(benches);
