//! With the `metrics` feature, herdless's counters reach whatever `metrics` recorder is
//! installed, under the documented names, labelled with the function name.
//! Run: `cargo test --features metrics --test metrics_export` (CI does).
#![cfg(feature = "metrics")]

use herdless::{memoize_stampede, MemoryStore};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts increments per (name, function label); histograms count records.
#[derive(Default, Clone)]
struct Recording(Arc<Mutex<HashMap<(String, String), Arc<Cell>>>>);

impl Recording {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let function = key
            .labels()
            .find(|l| l.key() == "function")
            .map(|l| l.value().to_string())
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .entry((key.name().to_string(), function))
            .or_default()
            .clone()
    }
    fn get(&self, name: &str, function: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(&(name.to_string(), function.to_string()))
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

#[test]
fn counters_and_histograms_are_exported_with_the_function_label() {
    let rec = Recording::default();
    metrics::set_global_recorder(rec.clone()).expect("no other recorder in this test binary");

    let store = MemoryStore::<u32, u32>::new(16).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .name("exported")
        .build_blocking(|k: &u32| if *k == 0 { Err("zero") } else { Ok(k * 2) })
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 2); // hard miss + computation
    assert_eq!(f.get(&1).unwrap(), 2); // fast hit
    assert!(f.get(&0).is_err()); // hard miss + computation + error

    let s = f.stats();
    let pairs = [
        ("herdless_hard_misses_total", s.hard_misses),
        ("herdless_computations_total", s.computations),
        ("herdless_errors_total", s.errors),
        ("herdless_slow_calls_total", s.slow_calls),
        ("herdless_fast_hits_total", 1),
        ("herdless_compute_seconds", 2),
    ];
    for (name, want) in pairs {
        assert_eq!(rec.get(name, "exported"), want, "{name}");
    }
    assert_eq!((s.hard_misses, s.computations, s.errors), (2, 2, 1));
    assert_eq!(rec.get("herdless_hard_misses_total", "another"), 0);
}
