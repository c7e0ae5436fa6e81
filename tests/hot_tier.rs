//! The per-thread tier never serves a value older than a write that returned: readers loop on
//! real threads while a writer inserts, invalidates and invalidates everything, and every read
//! that starts after a write returned sees that write or a newer one.
//!
//! The writer publishes the generation of each write once it returned (`done`); a reader loads
//! `done` before each call, so the call starts after that write returned and must return a value
//! of at least that generation. Values carry their generation; the closure computes the
//! generation of the data (`source`), which the writer bumps before each write.

use herdless::{memoize_stampede, MemoryStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: u64 = 3;
const WRITES: u64 = 3000;
const READERS: usize = 3;

#[derive(Clone, Copy)]
enum Via {
    Get,
    Read,
}

fn readers_never_see_a_value_older_than_a_returned_write(beta: Option<f64>, via: Via) {
    let store = MemoryStore::<u64, Arc<(u64, u64)>>::new(1000).unwrap();
    let source = Arc::new(AtomicU64::new(0));
    let s = source.clone();
    let builder = memoize_stampede(&store, Duration::from_secs(3600));
    let builder = match beta {
        Some(b) => builder.beta(b),
        None => builder,
    };
    let f = builder
        .build_blocking_infallible(move |k: &u64| Arc::new((*k, s.load(Ordering::SeqCst))))
        .unwrap();
    // done[k]: the generation of the last write of key k that returned.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (f, done, stop) = (f.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                let mut k = r as u64;
                while !stop.load(Ordering::SeqCst) {
                    // Mostly one key (so the tier holds it), sometimes another.
                    calls += 1;
                    if calls % 4096 == 0 {
                        k = (k + 1) % KEYS;
                    }
                    let floor = done[k as usize].load(Ordering::SeqCst);
                    let (key, gen) = match via {
                        Via::Get => *f.get(&k).unwrap(),
                        Via::Read => f.read(&k, |v: &Arc<(u64, u64)>| **v).unwrap(),
                    };
                    assert_eq!(key, k);
                    assert!(
                        gen >= floor,
                        "key {k}: generation {gen} served after write {floor} returned"
                    );
                }
                calls
            })
        })
        .collect();
    for gen in 1..=WRITES {
        let k = gen % KEYS;
        match gen % 7 {
            // A write through the function.
            0..=2 => {
                // The data changes too: a computation that read the store before this insert
                // and the data after it may still store its value (it is as new).
                source.store(gen, Ordering::SeqCst);
                f.insert(&k, Arc::new((k, gen))).unwrap();
                done[k as usize].store(gen, Ordering::SeqCst);
            }
            // The data changed, then an invalidation.
            3..=5 => {
                source.store(gen, Ordering::SeqCst);
                f.invalidate(&k).unwrap();
                done[k as usize].store(gen, Ordering::SeqCst);
            }
            // Everything at once.
            _ => {
                source.store(gen, Ordering::SeqCst);
                f.invalidate_all().unwrap();
                for d in done.iter() {
                    d.fetch_max(gen, Ordering::SeqCst);
                }
            }
        }
        if gen % 16 == 0 {
            // Let the readers run some hits (and fill their tiers) between writes.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let calls: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(calls > WRITES, "the readers ran ({calls} calls)");
    // The readers were served mostly by hits (the tier and the store), not computations.
    let s = f.stats();
    assert!(s.hits > calls / 2, "{s:?}");
}

#[test]
fn fixed_beta_get() {
    readers_never_see_a_value_older_than_a_returned_write(Some(1.0), Via::Get);
}

#[test]
fn automatic_beta_get() {
    readers_never_see_a_value_older_than_a_returned_write(None, Via::Get);
}

#[test]
fn fixed_beta_read() {
    readers_never_see_a_value_older_than_a_returned_write(Some(1.0), Via::Read);
}

/// The async facade's `read`: the closure sees the value without a clone, a hit and a miss
/// alike, and a write that returned is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_read_sees_every_returned_write() {
    let store = MemoryStore::<String, Arc<String>>::new(100).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(3600))
        .build_infallible(|k: String| async move { Arc::new(format!("v0 {k}")) })
        .unwrap();
    for round in 0..200 {
        let seen = f.read("k", |v: &Arc<String>| v.to_string()).await.unwrap();
        let expected = if round == 0 {
            "v0 k".to_string()
        } else {
            format!("v{round}")
        };
        assert_eq!(seen, expected);
        // Several hits (the tier fills), then a write.
        for _ in 0..5 {
            assert_eq!(f.read("k", |v| v.len()).await.unwrap(), expected.len());
        }
        f.insert("k", Arc::new(format!("v{}", round + 1)))
            .await
            .unwrap();
    }
    assert_eq!(f.stats().computations, 1);
    // The future is Send: it runs on another worker.
    let g = f.clone();
    let len = tokio::spawn(async move { g.read("k", |v| v.len()).await.unwrap() });
    assert_eq!(len.await.unwrap(), "v200".len());
}
