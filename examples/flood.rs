//! A flood of one-off keys, with automatic β or a fixed β: how long the flood takes (wall time
//! and the flooding thread's CPU time, which a busy machine disturbs less), and the peak RSS.
//! With `hot`, another thread keeps hitting one hot key meanwhile and the slowest of those hits
//! is reported too.
//!
//! ```text
//! cargo run --release --example flood -- auto     # beta_auto(LeadTarget::default())
//! cargo run --release --example flood -- fixed    # beta(1.0)
//! cargo run --release --example flood -- auto 2000000 hot
//! ```
//! Run each mode in its own process: the peak RSS is the process's (`VmHWM`).

use herdless::{memoize_stampede, LeadTarget, MemoryStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A line of `/proc/self/status` in KiB (Linux only; 0 elsewhere).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// This thread's CPU time in ns (`/proc/thread-self/schedstat`; 0 where unavailable).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "auto".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let with_hot = args.next().as_deref() == Some("hot");
    let store = MemoryStore::<u64, u64>::new(100_000).unwrap();
    let builder = memoize_stampede(&store, Duration::from_secs(60)).name("flood");
    let builder = match mode.as_str() {
        "auto" => builder.beta_auto(LeadTarget::default()),
        "fixed" => builder.beta(1.0),
        other => panic!("mode must be auto or fixed, got {other}"),
    };
    let f = builder
        .build_blocking_infallible(|k: &u64| k ^ 0x5a5a)
        .unwrap();
    const HOT: u64 = u64::MAX;
    f.get(&HOT).unwrap();
    let rss_before = status_kib("VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let worst_hit_ns = Arc::new(AtomicU64::new(0));
    let hot_hits = Arc::new(AtomicU64::new(0));
    let hot = with_hot.then(|| {
        let (f, stop, worst, hits) = (
            f.clone(),
            stop.clone(),
            worst_hit_ns.clone(),
            hot_hits.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                f.get(&HOT).unwrap();
                let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                worst.fetch_max(ns, Ordering::Relaxed);
                hits.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    for k in 0..n {
        f.get(&k).unwrap();
    }
    let took = t0.elapsed();
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = hot {
        h.join().unwrap();
    }
    println!(
        "mode={mode} keys={n} flood={:.3}s flood_cpu={:.3}s rss_before={}KiB rss_after={}KiB \
         peak_rss={}KiB hot_hits={} worst_hot_hit={}us",
        took.as_secs_f64(),
        cpu as f64 / 1e9,
        rss_before,
        status_kib("VmRSS:"),
        status_kib("VmHWM:"),
        hot_hits.load(Ordering::Relaxed),
        worst_hit_ns.load(Ordering::Relaxed) / 1000,
    );
}
