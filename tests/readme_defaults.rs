//! The README's promise about defaults: `memoize_stampede` chooses β automatically (a hot key
//! is refreshed about one lead before expiry, not right after every write as β = 1 does at a
//! high rate), and `.beta(b)` / `.beta_auto(…)` override it, the later call winning.
//!
//! A manual clock that never moves during the calls, and seeded draws. Right
//! after a write with δ = 200 ms and 1 s left, one call refreshes early with probability
//! `exp(−1 s / (200 ms · β))`: 0.7 % at β = 1, so 5 000 calls all but surely trigger one (the
//! seed makes it certain); automatic β either has no rate yet (no early refresh) or picks a
//! small β for this huge rate (probability ≈ e^(−100)).

use herdless::{memoize_stampede, Builder, LeadTarget, ManualClock, MemoryStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Store = MemoryStore<u32, u64>;

/// Early refreshes started by 5 000 calls right after the first write, for a builder set up by
/// `configure`.
fn early_refreshes(
    configure: impl FnOnce(Builder<u32, u64, Store>) -> Builder<u32, u64, Store>,
) -> u64 {
    let store = Store::new(10).unwrap();
    let clock = ManualClock::new();
    let (c, runs) = (clock.clone(), Arc::new(AtomicU64::new(0)));
    let r = runs.clone();
    let f = configure(memoize_stampede(&store, Duration::from_secs(1)))
        .clock(clock.clone())
        .rng_seed(7)
        .build_blocking_infallible(move |k: &u32| {
            // The first computation takes 200 ms of manual time (δ); refreshes take none, so
            // the clock stays put while the test calls.
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                c.advance(Duration::from_millis(200));
            }
            u64::from(*k)
        })
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 1);
    for _ in 0..5_000 {
        assert_eq!(f.get(&1).unwrap(), 1);
    }
    // A triggered refresh counts itself when its worker thread starts: give it a moment
    // (bounded; a refresh that was never triggered never shows up).
    let deadline = Instant::now() + Duration::from_millis(500);
    while f.stats().early_refreshes_started == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    f.stats().early_refreshes_started
}

#[test]
fn memoize_stampede_defaults_to_automatic_beta() {
    assert_eq!(
        early_refreshes(|b| b),
        0,
        "the default refreshed right after a write, as a fixed β = 1 does"
    );
    assert_eq!(early_refreshes(|b| b.beta_auto(LeadTarget::default())), 0);
}

#[test]
fn a_fixed_beta_overrides_the_default_and_the_later_call_wins() {
    assert!(early_refreshes(|b| b.beta(1.0)) >= 1);
    assert!(early_refreshes(|b| b.beta_auto(LeadTarget::default()).beta(1.0)) >= 1);
    assert_eq!(
        early_refreshes(|b| b.beta(1.0).beta_auto(LeadTarget::default())),
        0
    );
    assert_eq!(early_refreshes(|b| b.beta(0.0)), 0);
}
